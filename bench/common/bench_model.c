#include "bench/common/bench_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/common/bench_util.h"
#include "core/float_convert.h"
#include "models/model_class.h"

#define PATTERN 65521 /* a prime, so tensors tiled at different phases start out of step */
#define LM "model.language_model."

/* Twice over, so that a tile starting anywhere in the first copy runs PATTERN values without
 * wrapping. One table per process, rebuilt per centre: benches build models one at a time. */
static float pattern_f32[2 * PATTERN];
static uint16_t pattern_bf16[2 * PATTERN];

static void make_pattern(float scale, float center)
{
    uint64_t state = 0x5EED;
    for (int i = 0; i < PATTERN; i++) {
        float v = (float)((2.0 * ds_bench_uniform(&state) - 1.0) * scale) + center;
        pattern_f32[i] = pattern_f32[i + PATTERN] = v;
        pattern_bf16[i] = pattern_bf16[i + PATTERN] = ds_f32_to_bf16(v);
    }
}

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

/* Scales that multiply a normalised value: centred on 1 so that activations keep their size
 * through the blocks. */
static int is_norm_weight(const char *name, const ds_tensor_view *v)
{
    size_t len = strlen(name);
    return (v->ndim == 1 && strstr(name, "norm") != NULL) ||
           (len > 6 && strcmp(name + len - 6, ".gamma") == 0);
}

int ds_bench_keep_text_layers(const char *name, int layers)
{
    if (strncmp(name, LM, strlen(LM)) != 0)
        return 0;
    const char *rest = name + strlen(LM);
    return strncmp(rest, "layers.", 7) != 0 || atoi(rest + 7) < layers;
}

void ds_bench_free_model(ds_loaded_model *m)
{
    for (size_t i = 0; i < m->params.count; i++)
        free((void *)m->params.entries[i].tensor.data);
    ds_state_dict_free(&m->params);
    free(m->extra_kwargs_json);
    m->extra_kwargs_json = NULL;
}

int ds_bench_build_model(const char *cls_name, const char *kwargs, ds_bench_keep_fn keep,
                         int keep_arg, ds_dtype dtype, ds_loaded_model *m, size_t *bytes,
                         ds_error *err)
{
    ds_state_dict full;
    const ds_model_class *cls = ds_model_class_find(cls_name);
    size_t filled = 0;
    memset(m, 0, sizeof *m);
    ds_state_dict_init(&m->params);
    ds_state_dict_init(&full);
    if (!cls)
        return ds_error_set(err, DS_ERR_NOT_FOUND, "model class %s is not registered", cls_name);
    int rc = ds_model_class_declare(cls, kwargs, &full, err);
    if (rc != DS_OK)
        goto fail;
    m->cls = cls;
    /* What a load records: the forwards and the pipelines read the model's kwargs there. */
    if (kwargs && !(m->extra_kwargs_json = strdup(kwargs))) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for the kwargs of %s",
                          cls_name);
        goto fail;
    }
    for (size_t i = 0; i < full.count; i++) {
        if (keep && !keep(full.entries[i].name, keep_arg))
            continue;
        rc = ds_state_dict_put_tensor(&m->params, full.entries[i].name, &full.entries[i].tensor);
        if (rc != DS_OK) {
            ds_error_set(err, rc, "out of memory for the tree of %s", cls_name);
            goto fail;
        }
    }
    ds_state_dict_free(&full);
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
                rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                                  "out of memory for %s of %s (%llu elements)", e->name, cls_name,
                                  (unsigned long long)n);
                goto fail;
            }
            tile(data, dtype, n, ds_bench_fnv1a(e->name));
            e->tensor.data = data;
            e->tensor.dtype = dtype;
            e->tensor.nbytes = n * es;
            filled += n * es;
        }
    }
    if (bytes)
        *bytes = filled;
    return DS_OK;
fail:
    ds_state_dict_free(&full);
    ds_bench_free_model(m);
    memset(m, 0, sizeof *m);
    return rc;
}

int ds_bench_input_tensor(ds_backend *cpu, ds_dtype dtype, int ndim, const int64_t *shape,
                          uint64_t seed, ds_tensor *out, ds_error *err)
{
    int rc = ds_tensor_alloc(cpu, dtype, ndim, shape, out, err);
    if (rc != DS_OK)
        return rc;
    size_t n = (size_t)ds_tensor_numel(out);
    for (size_t i = 0; i < n; i++) {
        float v = (float)((2.0 * ds_bench_uniform(&seed) - 1.0) * sqrt(3.0));
        if (dtype == DS_BF16)
            ((uint16_t *)out->data)[i] = ds_f32_to_bf16(v);
        else
            ((float *)out->data)[i] = v;
    }
    return DS_OK;
}
