/* bench/text_encoder: Qwen-Image prompt encoding (the text encoder's "encode_prompt" step:
 * template, tokenizer, Qwen2.5-VL forward, 34-token drop), timed, one JSON line.
 * upstream_anchor.py takes the same arguments and times upstream DiffSynth-Studio's own
 * QwenImageUnit_PromptEmbedder.process on its own QwenImageTextEncoder, so run.sh can print
 * ours / upstream measured in the same run (DESIGN §7).
 *
 * usage: te_bench [options]
 *   --backend cpu|cuda   (default cpu)
 *   --threads N          CPU worker threads (0 = all CPUs; ignored by cuda)
 *   --dtype f32|bf16     weights and compute (default f32)
 *   --layers N           decoder layers (default 2; the released model has 28), full width
 *   --tokenizer DIR      the tokenizer folder (default tests/data/qwen_tokenizer)
 *   --warmup N           untimed calls first (default 1; the first loads the tokenizer)
 *   --repeats N          timed calls; the median is reported (default 5)
 *
 * The prompt is fixed: 60 prompt tokens (65 encoded after the drop, 99 through the encoder),
 * the "long" case of tests/golden/make_qwen_image_encode_prompt_golden.py. The model is the
 * class's declared text tower cut to N layers, in memory, every tensor filled from a fixed table
 * of uniform values in [-0.02, 0.02] (norm weights: 1 + that), which times like real weights.
 * Upstream loads its tokenizer once in from_pretrained; ours is loaded by the first call and
 * cached, so the warm-up keeps both sides' timings to the encoding itself.
 * Exit status: 0 measured, 77 backend unavailable, 1 any other error; every outcome prints its
 * JSON line. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/dtype.h"
#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "models/qwen_image_text_encoder.h"

#define TE_CLASS "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder"
#define LM "model.language_model."
#define PATTERN 65521 /* values in the fill table (a prime, so tensors start out of phase) */
#define PROMPT                                                                                    \
    "A cozy reading nook by a tall window at dusk, warm lamplight on a worn leather armchair, a " \
    "knitted blanket, a stack of books with gold lettering, a sleeping tabby cat, rain streaks "  \
    "on the glass, film grain, shallow depth of field, muted colors"

typedef struct options {
    const char *backend;
    int threads;
    ds_dtype dtype;
    int layers;
    const char *tokenizer;
    int warmup, repeats;
} options;

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

static void print_json_string(const char *s)
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

static void print_head(const options *o, const char *status)
{
    printf("{\"impl\": \"ours\", \"backend\": ");
    print_json_string(o->backend);
    printf(", \"model\": \"QwenImageTextEncoder\", \"layers\": %d, \"dtype\": \"%s\", "
           "\"prompt_tokens\": 60, \"threads\": %d, \"status\": \"%s\"",
           o->layers, ds_dtype_name(o->dtype), o->threads, status);
}

static int report_failure(const options *o, const char *status, const char *message, int code)
{
    print_head(o, status);
    printf(", \"message\": ");
    print_json_string(message);
    printf("}\n");
    fflush(stdout);
    return code;
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

/* The fill table, repeated once more so that a tile starting anywhere in the first copy runs
 * PATTERN values without wrapping. */
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

/* Text-tower tensors of layers below `layers`, the embedding and the final norm. */
static int kept(const char *name, int layers)
{
    if (strncmp(name, LM, strlen(LM)) != 0)
        return 0;
    const char *rest = name + strlen(LM);
    return strncmp(rest, "layers.", 7) != 0 || atoi(rest + 7) < layers;
}

static int build_model(const options *o, ds_loaded_model *m, char *msg, size_t size)
{
    ds_error err;
    ds_state_dict full;
    const ds_model_class *cls = ds_model_class_find(TE_CLASS);
    memset(m, 0, sizeof *m);
    ds_state_dict_init(&m->params);
    ds_state_dict_init(&full);
    if (!cls || ds_model_class_declare(cls, NULL, &full, &err) != DS_OK) {
        snprintf(msg, size, "declare: %.200s", cls ? err.message : "class not registered");
        goto fail;
    }
    m->cls = cls;
    for (size_t i = 0; i < full.count; i++)
        if (kept(full.entries[i].name, o->layers) &&
            ds_state_dict_put_tensor(&m->params, full.entries[i].name, &full.entries[i].tensor) !=
                DS_OK) {
            snprintf(msg, size, "out of memory for the tree");
            goto fail;
        }
    ds_state_dict_free(&full);
    size_t es = ds_dtype_size(o->dtype);
    for (int pass = 0; pass < 2; pass++) {
        /* Pass 0: weights and biases (centre 0); pass 1: norm weights (centre 1). */
        make_pattern(0.02f, pass ? 1.0f : 0.0f);
        for (size_t i = 0; i < m->params.count; i++) {
            ds_sd_entry *e = &m->params.entries[i];
            if ((e->tensor.ndim == 1 && strstr(e->name, "norm") != NULL) != pass)
                continue;
            uint64_t n = ds_tensor_view_numel(&e->tensor);
            void *data = malloc(n * es);
            if (!data) {
                snprintf(msg, size, "out of memory for %s", e->name);
                goto fail;
            }
            tile(data, o->dtype, n, fnv1a(e->name));
            e->tensor.data = data;
            e->tensor.dtype = o->dtype;
            e->tensor.nbytes = n * es;
        }
    }
    return 1;
fail:
    ds_state_dict_free(&full);
    free_model(m);
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: te_bench [--backend cpu|cuda] [--threads N] [--dtype f32|bf16] "
                    "[--layers N] [--tokenizer DIR] [--warmup N] [--repeats N]\n");
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.backend = "cpu", .dtype = DS_F32, .layers = 2,
                   .tokenizer = "tests/data/qwen_tokenizer", .warmup = 1, .repeats = 5};
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (i + 1 >= argc)
            return 0;
        const char *v = argv[++i];
        if (strcmp(k, "--backend") == 0)
            o->backend = v;
        else if (strcmp(k, "--threads") == 0)
            o->threads = atoi(v);
        else if (strcmp(k, "--dtype") == 0) {
            if (strcmp(v, "f32") == 0 || strcmp(v, "float32") == 0)
                o->dtype = DS_F32;
            else if (strcmp(v, "bf16") == 0 || strcmp(v, "bfloat16") == 0)
                o->dtype = DS_BF16;
            else
                return 0;
        } else if (strcmp(k, "--layers") == 0)
            o->layers = atoi(v);
        else if (strcmp(k, "--tokenizer") == 0)
            o->tokenizer = v;
        else if (strcmp(k, "--warmup") == 0)
            o->warmup = atoi(v);
        else if (strcmp(k, "--repeats") == 0)
            o->repeats = atoi(v);
        else
            return 0;
    }
    return o->layers >= 1 && o->warmup >= 0 && o->repeats >= 1 && o->threads >= 0;
}

int main(int argc, char **argv)
{
    options o;
    if (!parse_args(argc, argv, &o)) {
        usage();
        return 2;
    }
    ds_error err;
    ds_backend *b = NULL;
    int rc;
    if (strcmp(o.backend, "cuda") == 0)
        rc = ds_cuda_backend_create(0, &b, &err);
    else if (strcmp(o.backend, "cpu") == 0)
        rc = ds_cpu_backend_create(o.threads, &b, &err);
    else {
        usage();
        return 2;
    }
    if (rc == DS_ERR_UNAVAILABLE)
        return report_failure(&o, "unavailable", err.message, 77);
    if (rc != DS_OK)
        return report_failure(&o, "error", err.message, 1);

    int code = 1;
    char msg[256];
    ds_loaded_model model;
    double *samples = calloc((size_t)o.repeats, sizeof *samples);
    double build_start = now_s();
    if (!samples || !build_model(&o, &model, msg, sizeof msg)) {
        code = report_failure(&o, "error", samples ? msg : "out of memory", 1);
        free(samples);
        ds_backend_destroy(b);
        return code;
    }
    fprintf(stderr, "te_bench: %d layers built in %.1f s\n", o.layers, now_s() - build_start);
    const ds_model_step *step =
        ds_model_step_find(model.cls->steps, model.cls->step_count, "encode_prompt");
    ds_step_io in;
    ds_step_io_init(&in);
    if (!step || ds_step_io_add_param(&in, "prompt", PROMPT, &err) != DS_OK ||
        ds_step_io_add_param(&in, "tokenizer", o.tokenizer, &err) != DS_OK ||
        ds_step_io_add_param(&in, "dtype", o.dtype == DS_F32 ? "float32" : "bfloat16", &err) !=
            DS_OK) {
        code = report_failure(&o, "error", step ? err.message : "no encode_prompt step", 1);
        goto out;
    }
    ds_step_context ctx = {.backend = b};
    int64_t L = 0;
    int finite = 1;
    for (int r = -o.warmup; r < o.repeats; r++) {
        ds_step_io out;
        ds_step_io_init(&out);
        double start = now_s();
        rc = step->run(&model, &ctx, &in, &out, &err);
        double t = now_s() - start;
        const ds_tensor *emb = ds_step_io_tensor(&out, "prompt_emb");
        if (rc == DS_OK && emb) {
            L = emb->shape[1];
            size_t n = (size_t)ds_tensor_numel(emb);
            for (size_t i = 0; i < n && finite; i++)
                finite = isfinite(ds_load_f64(emb->data, emb->dtype, i));
        }
        ds_step_io_free(&out);
        if (rc != DS_OK) {
            code = report_failure(&o, "error", err.message, 1);
            goto out;
        }
        if (r >= 0)
            samples[r] = t;
    }
    qsort(samples, (size_t)o.repeats, sizeof *samples, compare_double);
    print_head(&o, finite ? "ok" : "bad_output");
    printf(", \"encoded_tokens\": %lld, \"warmup\": %d, \"repeats\": %d, \"median_ms\": %.3f, "
           "\"min_ms\": %.3f, \"timing\": \"monotonic clock around one encode_prompt step "
           "(tokenize, forward, drop; tokenizer cached)\"}\n",
           (long long)L, o.warmup, o.repeats, samples[o.repeats / 2] * 1e3, samples[0] * 1e3);
    fflush(stdout);
    code = finite ? 0 : 1;
out:
    ds_step_io_free(&in);
    free_model(&model);
    free(samples);
    ds_backend_destroy(b);
    return code;
}
