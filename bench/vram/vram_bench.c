/* bench/vram: what a VRAM budget costs. One forward of the Qwen-Image DiT at the golden test's
 * size (2 blocks at full width) on the CPU backend, timed without a manager (weights used in
 * place), through a manager with no limit (every unit copied in once, then resident), and
 * under budgets of 100 %, 50 %, 25 % and 0 of the weight bytes, where units are evicted and
 * copied in again every forward. The anchor is the unlimited manager in the same process
 * (DESIGN §7): the ratio budget / unlimited is the price of the budget. Each configuration has
 * its own manager and its own model struct over the same weight buffers, and the forwards run
 * in rounds of one per configuration. One JSON line per configuration, then one with the
 * ratios.
 *
 * usage: vram_bench [--threads N] [--dtype bf16|f32] [--layers N] [--height H --width W]
 *                   [--text-tokens L] [--warmup N] [--repeats N] [--prefetch N]
 *   defaults: all CPUs, bf16 (the weights, inputs and compute), 2 layers, 256 x 256 (256 image
 *   tokens), 32 text tokens, 1 warm-up, 3 timed forwards, prefetch 2. The ratios use the
 *   fastest forward of each configuration (other work on a shared machine only adds time);
 *   the medians are printed too.
 *
 * The weights are a tiled table of uniform values (bench/qwen_image_dit/dit_bench.c's fill),
 * built in memory as the class's declared tree; every output is checked bit-identical to the
 * run without a manager. Exit status: 0 measured, 1 any error. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "models/qwen_image_dit.h"
#include "vram/vram_manager.h"

#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"
#define PATTERN 65521

typedef struct options {
    int threads;
    ds_dtype dtype;
    int layers;
    int height, width, text_tokens;
    int warmup, repeats, prefetch;
} options;

/* One measured configuration: `percent` of the weight bytes, -1 = no limit, -2 = no manager. */
typedef struct config {
    const char *name;
    int percent;
} config;

static const config configs[] = {
    {"none", -2}, {"unlimited", -1}, {"100%", 100}, {"50%", 50}, {"25%", 25}, {"0", 0},
};
#define CONFIGS (sizeof configs / sizeof configs[0])

static double now_s(void)
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

/* The fill table, twice over so a tile starting anywhere in the first copy runs PATTERN
 * values without wrapping: weights in [-0.02, 0.02], norm weights 1 + that. */
static float pattern_f32[2 * PATTERN];
static uint16_t pattern_bf16[2 * PATTERN];

static void make_pattern(float center)
{
    uint64_t state = 0x5EED;
    for (int i = 0; i < PATTERN; i++) {
        double u = (double)(splitmix(&state) >> 11) * 0x1.0p-53;
        float v = (float)((2.0 * u - 1.0) * 0.02) + center;
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

static void free_model(ds_loaded_model *m)
{
    for (size_t i = 0; i < m->params.count; i++)
        free((void *)m->params.entries[i].tensor.data);
    ds_state_dict_free(&m->params);
}

/* The class's tree for o->layers blocks, stored in o->dtype; *bytes gets the weight bytes. */
static int build_model(const options *o, ds_loaded_model *m, size_t *bytes, ds_error *err)
{
    char kwargs[64];
    const ds_model_class *cls = ds_model_class_find(DIT_CLASS);
    memset(m, 0, sizeof *m);
    ds_state_dict_init(&m->params);
    if (!cls)
        return ds_error_set(err, DS_ERR_NOT_FOUND, "model class %s is not registered", DIT_CLASS);
    snprintf(kwargs, sizeof kwargs, "{\"num_layers\": %d}", o->layers);
    int rc = ds_model_class_declare(cls, kwargs, &m->params, err);
    if (rc != DS_OK)
        return rc;
    m->cls = cls;
    m->model_name = "qwen_image_dit";
    size_t es = ds_dtype_size(o->dtype);
    *bytes = 0;
    for (int pass = 0; pass < 2; pass++) {
        make_pattern(pass ? 1.0f : 0.0f);
        for (size_t i = 0; i < m->params.count; i++) {
            ds_sd_entry *e = &m->params.entries[i];
            int norm = e->tensor.ndim == 1 && strstr(e->name, "norm") != NULL;
            if (norm != pass)
                continue;
            uint64_t n = ds_tensor_view_numel(&e->tensor);
            void *data = malloc(n * es);
            if (!data) {
                free_model(m);
                return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for %s",
                                    e->name);
            }
            tile(data, o->dtype, n, fnv1a(e->name));
            e->tensor.data = data;
            e->tensor.dtype = o->dtype;
            e->tensor.nbytes = n * es;
            *bytes += n * es;
        }
    }
    return DS_OK;
}

static int input_tensor(ds_backend *cpu, ds_dtype dtype, int ndim, const int64_t *shape,
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

static int parse_int(const char *s, int min, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < min || v > 1 << 20)
        return 0;
    *out = (int)v;
    return 1;
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.threads = 0, .dtype = DS_BF16, .layers = 2, .height = 256, .width = 256,
                   .text_tokens = 32, .warmup = 1, .repeats = 3, .prefetch = 2};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = v != NULL;
        if (ok && strcmp(a, "--threads") == 0)
            ok = parse_int(v, 0, &o->threads);
        else if (ok && strcmp(a, "--dtype") == 0)
            ok = strcmp(v, "bf16") == 0 ? (o->dtype = DS_BF16, 1)
                 : strcmp(v, "f32") == 0 ? (o->dtype = DS_F32, 1) : 0;
        else if (ok && strcmp(a, "--layers") == 0)
            ok = parse_int(v, 0, &o->layers);
        else if (ok && strcmp(a, "--height") == 0)
            ok = parse_int(v, 16, &o->height) && o->height % 16 == 0;
        else if (ok && strcmp(a, "--width") == 0)
            ok = parse_int(v, 16, &o->width) && o->width % 16 == 0;
        else if (ok && strcmp(a, "--text-tokens") == 0)
            ok = parse_int(v, 1, &o->text_tokens);
        else if (ok && strcmp(a, "--warmup") == 0)
            ok = parse_int(v, 0, &o->warmup);
        else if (ok && strcmp(a, "--repeats") == 0)
            ok = parse_int(v, 1, &o->repeats);
        else if (ok && strcmp(a, "--prefetch") == 0)
            ok = parse_int(v, 0, &o->prefetch) && o->prefetch <= 8;
        else
            ok = 0;
        if (!ok) {
            fprintf(stderr, "vram_bench: bad option %s %s\n", a, v ? v : "");
            return 0;
        }
        i++;
    }
    return 1;
}

typedef struct result {
    size_t budget, peak;
    double *samples; /* the timed forwards, sorted once measured */
    double moved_per_forward, copy_s_per_forward, wait_s_per_forward;
    double allocs_per_forward; /* fast-tier allocations: 0 once kept buffers are reused */
    int identical;
} result;

/* Another model on the same weight buffers (the class's tree again, each view pointing where
 * `from`'s does), so that each configuration keeps its own registration and residency. */
static int share_model(const options *o, const ds_loaded_model *from, ds_loaded_model *m,
                       ds_error *err)
{
    char kwargs[64];
    memset(m, 0, sizeof *m);
    ds_state_dict_init(&m->params);
    snprintf(kwargs, sizeof kwargs, "{\"num_layers\": %d}", o->layers);
    int rc = ds_model_class_declare(from->cls, kwargs, &m->params, err);
    if (rc != DS_OK)
        return rc;
    m->cls = from->cls;
    m->model_name = from->model_name;
    for (size_t i = 0; i < m->params.count; i++)
        m->params.entries[i].tensor = from->params.entries[i].tensor;
    return DS_OK;
}

static int forward_once(const ds_loaded_model *model, ds_backend *cpu, ds_vram_manager *mgr,
                        const ds_tensor in[3], ds_tensor *noise, double *seconds, ds_error *err)
{
    ds_step_context ctx = {.backend = cpu, .vram = mgr};
    /* An output left unwritten is no measurement: poison it first. */
    memset(noise->data, 0xff, ds_tensor_nbytes(noise));
    double start = now_s();
    int rc = ds_qwen_image_dit_forward(model, &ctx, &in[0], &in[1], NULL, &in[2], noise, err);
    *seconds = now_s() - start;
    return rc;
}

static void print_result(const options *o, const config *c, const result *r,
                         size_t weight_bytes)
{
    printf("{\"bench\": \"vram\", \"model\": \"QwenImageDiT\", \"layers\": %d, \"dtype\": "
           "\"%s\", \"image_tokens\": %d, \"text_tokens\": %d, \"budget\": \"%s\", "
           "\"budget_bytes\": %.0f, \"weight_bytes\": %zu, \"median_ms\": %.3f, "
           "\"min_ms\": %.3f, \"peak_bytes\": %zu, \"moved_bytes_per_forward\": %.0f, "
           "\"copy_ms_per_forward\": %.3f, \"wait_ms_per_forward\": %.3f, "
           "\"allocations_per_forward\": %.1f, \"bit_identical\": %s}\n",
           o->layers, ds_dtype_name(o->dtype), (o->height / 16) * (o->width / 16),
           o->text_tokens, c->name, r->budget == DS_VRAM_UNLIMITED ? -1.0 : (double)r->budget,
           weight_bytes, r->samples[o->repeats / 2] * 1e3, r->samples[0] * 1e3, r->peak,
           r->moved_per_forward, r->copy_s_per_forward * 1e3, r->wait_s_per_forward * 1e3,
           r->allocs_per_forward, r->identical ? "true" : "false");
}

int main(int argc, char **argv)
{
    options o;
    if (!parse_args(argc, argv, &o))
        return 2;
    ds_error err;
    ds_backend *cpu = NULL;
    ds_loaded_model models[CONFIGS];
    ds_vram_manager *mgrs[CONFIGS] = {0};
    ds_vram_stats before[CONFIGS];
    size_t weight_bytes = 0, built = 0;
    ds_tensor in[3] = {{0}}, noise = {0};
    void *reference = NULL;
    result res[CONFIGS];
    int code = 1;
    memset(models, 0, sizeof models);
    memset(res, 0, sizeof res);
    if (ds_cpu_backend_create(o.threads, &cpu, &err) != DS_OK ||
        build_model(&o, &models[0], &weight_bytes, &err) != DS_OK)
        goto fail;
    for (built = 1; built < CONFIGS; built++)
        if (share_model(&o, &models[0], &models[built], &err) != DS_OK)
            goto fail;
    const int64_t lat_shape[4] = {1, 16, o.height / 8, o.width / 8};
    const int64_t emb_shape[3] = {1, o.text_tokens, 3584};
    if (input_tensor(cpu, o.dtype, 4, lat_shape, 1, &in[0], &err) != DS_OK ||
        input_tensor(cpu, o.dtype, 3, emb_shape, 2, &in[1], &err) != DS_OK ||
        ds_tensor_alloc(cpu, DS_F32, 1, (const int64_t[]){1}, &in[2], &err) != DS_OK ||
        ds_tensor_alloc(cpu, o.dtype, 4, lat_shape, &noise, &err) != DS_OK)
        goto fail;
    *(float *)in[2].data = 500.0f;
    reference = malloc(ds_tensor_nbytes(&noise));
    for (size_t i = 0; i < CONFIGS; i++) {
        int percent = configs[i].percent;
        res[i].samples = calloc((size_t)o.repeats, sizeof *res[i].samples);
        res[i].identical = 1;
        res[i].budget = percent == -1 ? DS_VRAM_UNLIMITED
                        : percent >= 0 ? weight_bytes / 100 * (size_t)percent : 0;
        if (!reference || !res[i].samples) {
            ds_error_set(&err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto fail;
        }
        if (percent != -2 &&
            ds_vram_manager_create(cpu, res[i].budget, o.prefetch, &mgrs[i], &err) != DS_OK)
            goto fail;
    }
    /* Rounds of one forward per configuration, each on its own model and manager, so that a
     * burst of other work on a shared machine hits every configuration alike. */
    for (int r = -o.warmup; r < o.repeats; r++)
        for (size_t i = 0; i < CONFIGS; i++) {
            if (r == 0 && mgrs[i])
                ds_vram_stats_get(mgrs[i], &before[i]);
            double t;
            if (forward_once(&models[i], cpu, mgrs[i], in, &noise, &t, &err) != DS_OK) {
                ds_error_prefix(&err, "budget %s: ", configs[i].name);
                goto fail;
            }
            if (r >= 0)
                res[i].samples[r] = t;
            if (i == 0 && r == -o.warmup)
                memcpy(reference, noise.data, ds_tensor_nbytes(&noise));
            else
                res[i].identical &= memcmp(noise.data, reference, ds_tensor_nbytes(&noise)) == 0;
        }
    for (size_t i = 0; i < CONFIGS; i++) {
        result *r = &res[i];
        qsort(r->samples, (size_t)o.repeats, sizeof *r->samples, compare_double);
        if (mgrs[i]) {
            ds_vram_stats after;
            ds_vram_stats_get(mgrs[i], &after);
            r->peak = after.peak_bytes;
            r->moved_per_forward = (double)(after.bytes_moved - before[i].bytes_moved) / o.repeats;
            r->copy_s_per_forward = (after.copy_seconds - before[i].copy_seconds) / o.repeats;
            r->wait_s_per_forward = (after.wait_seconds - before[i].wait_seconds) / o.repeats;
            r->allocs_per_forward =
                (double)(after.allocations - before[i].allocations) / o.repeats;
        }
        print_result(&o, &configs[i], r, weight_bytes);
    }
    /* The fastest of the repeats: on a shared machine other work only ever adds time. */
    double anchor = res[1].samples[0];
    printf("{\"bench\": \"vram\", \"summary\": true, \"anchor\": \"unlimited\", "
           "\"statistic\": \"min\", \"slowdown\": {\"none\": %.3f, \"100%%\": %.3f, "
           "\"50%%\": %.3f, \"25%%\": %.3f, \"0\": %.3f}}\n",
           res[0].samples[0] / anchor, res[2].samples[0] / anchor, res[3].samples[0] / anchor,
           res[4].samples[0] / anchor, res[5].samples[0] / anchor);
    fflush(stdout);
    code = 0;
    for (size_t i = 1; i < CONFIGS; i++)
        if (!res[i].identical) {
            fprintf(stderr, "vram_bench: budget %s changed the output\n", configs[i].name);
            code = 1;
        }
    goto out;
fail:
    fprintf(stderr, "vram_bench: %s\n", err.message);
out:
    /* Managers first: they hold copies; the models share model 0's buffers. */
    for (size_t i = 0; i < CONFIGS; i++) {
        ds_vram_manager_destroy(mgrs[i]);
        free(res[i].samples);
    }
    free(reference);
    for (int i = 0; i < 3; i++)
        ds_tensor_free(&in[i]);
    ds_tensor_free(&noise);
    for (size_t i = 1; i < built; i++)
        ds_state_dict_free(&models[i].params);
    free_model(&models[0]);
    ds_backend_destroy(cpu);
    return code;
}
