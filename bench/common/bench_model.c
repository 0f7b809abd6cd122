#include "bench/common/bench_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/model_class.h"

#define PATTERN 65521 /* values in the fill table (a prime, so tensors start out of phase) */

double bench_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(double *samples, int n)
{
    qsort(samples, (size_t)n, sizeof *samples, compare_double);
    return samples[n / 2];
}

void bench_print_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static uint64_t splitmix(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* The fill table: PATTERN uniform values in [-1, 1), f32 and bf16, repeated once more so that
 * a tile starting anywhere in the first copy runs PATTERN values without wrapping. */
static float pattern_f32[2 * PATTERN];
static uint16_t pattern_bf16[2 * PATTERN];

static void make_pattern(float scale, float center)
{
    uint64_t state = 0x5EED;
    for (int i = 0; i < PATTERN; i++) {
        double u = (double)(splitmix(&state) >> 11) * 0x1.0p-53;
        float v = (float)((2.0 * u - 1.0) * scale) + center;
        pattern_f32[i] = pattern_f32[i + PATTERN] = v;
        pattern_bf16[i] = pattern_bf16[i + PATTERN] = ds_f32_to_bf16(v);
    }
}

/* Fills n elements of `dtype` at dst from the current table, starting at `phase`. */
static void tile(void *dst, ds_dtype dtype, uint64_t n, uint64_t phase)
{
    size_t es = ds_dtype_size(dtype);
    const char *src = dtype == DS_BF16 ? (const char *)pattern_bf16 : (const char *)pattern_f32;
    char *out = dst;
    size_t start = (size_t)(phase % PATTERN);
    while (n > 0) {
        uint64_t chunk = n < PATTERN ? n : PATTERN;
        memcpy(out, src + start * es, (size_t)chunk * es);
        out += chunk * es;
        n -= chunk;
    }
}

static int is_norm_weight(const char *name, const ds_tensor_view *v)
{
    return v->ndim == 1 && strstr(name, "norm") != NULL;
}

void bench_model_free(ds_loaded_model *m)
{
    for (size_t i = 0; i < m->params.count; i++)
        free((void *)m->params.entries[i].tensor.data);
    ds_state_dict_free(&m->params);
}

int bench_model_build(const char *model_class, const char *kwargs_json, ds_dtype dtype,
                      ds_loaded_model *m, char *msg, size_t size)
{
    ds_error err;
    const ds_model_class *cls = ds_model_class_find(model_class);
    memset(m, 0, sizeof *m);
    ds_state_dict_init(&m->params);
    if (!cls) {
        snprintf(msg, size, "model class %s is not registered", model_class);
        return 0;
    }
    if (ds_model_class_declare(cls, kwargs_json, &m->params, &err) != DS_OK) {
        snprintf(msg, size, "declare: %.200s", err.message);
        ds_state_dict_free(&m->params);
        return 0;
    }
    m->cls = cls;
    size_t es = ds_dtype_size(dtype);
    for (int pass = 0; pass < 2; pass++) {
        /* Pass 0: weights and biases (centre 0); pass 1: norm weights (centre 1). */
        make_pattern(0.02f, pass ? 1.0f : 0.0f);
        for (size_t i = 0; i < m->params.count; i++) {
            ds_sd_entry *e = &m->params.entries[i];
            if (is_norm_weight(e->name, &e->tensor) != pass)
                continue;
            uint64_t n = ds_tensor_view_numel(&e->tensor);
            void *data = malloc(n * es);
            if (!data) {
                snprintf(msg, size, "out of memory for %s (%llu elements)", e->name,
                         (unsigned long long)n);
                bench_model_free(m);
                return 0;
            }
            tile(data, dtype, n, fnv1a(e->name));
            e->tensor.data = data;
            e->tensor.dtype = dtype;
            e->tensor.nbytes = n * es;
        }
    }
    return 1;
}

int bench_input_tensor(ds_backend *cpu, ds_dtype dtype, int ndim, const int64_t *shape,
                       uint64_t seed, ds_tensor *out, ds_error *err)
{
    int rc = ds_tensor_alloc(cpu, dtype, ndim, shape, out, err);
    if (rc != DS_OK)
        return rc;
    size_t n = (size_t)ds_tensor_numel(out);
    for (size_t i = 0; i < n; i++) {
        double u = (double)(splitmix(&seed) >> 11) * 0x1.0p-53;
        float v = (float)((2.0 * u - 1.0) * sqrt(3.0));
        if (dtype == DS_BF16)
            ((uint16_t *)out->data)[i] = ds_f32_to_bf16(v);
        else
            ((float *)out->data)[i] = v;
    }
    return DS_OK;
}
