/* bench/qwen_image: the whole Qwen-Image text-to-image pipeline (pipelines/qwen_image.h:
 * prompt and negative prompt encoding, N denoising steps with CFG, VAE decode, pixel
 * conversion), timed end to end, one JSON line. upstream_anchor.py takes the same arguments and
 * times upstream DiffSynth-Studio's own QwenImagePipeline.__call__ on the same reduced models, so
 * run.sh can print ours / upstream measured in the same run (DESIGN §7).
 *
 * usage: pipeline_bench [options]
 *   --backend cpu|cuda   (default cpu)
 *   --threads N          CPU worker threads (0 = all CPUs; ignored by cuda)
 *   --dtype f32|bf16     weights and compute dtype (default f32)
 *   --te-layers N        text encoder decoder layers, full width (default 1; released: 28)
 *   --dit-layers N       DiT blocks, full width (default 1; released: 60)
 *   --height H --width W image size in pixels (default 256 x 256)
 *   --steps N            denoising steps (default 4)
 *   --cfg X              cfg_scale (default 4; 1 skips the negative pass)
 *   --tokenizer DIR      the tokenizer folder (default tests/data/qwen_tokenizer)
 *   --warmup N           untimed pipeline runs first (default 1; the first loads the tokenizer)
 *   --repeats N          timed runs; the median is reported (default 3)
 *
 * The prompt is te_bench's 60-token prompt, the negative prompt "" (upstream's default), seed 0.
 * The models are the classes' declared trees (the text tower of the text encoder cut to N layers,
 * the DiT declared with N blocks, the real VAE) built in memory, every tensor filled from a fixed
 * table of uniform values in [-0.02, 0.02] (norm weights and the VAE's RMS gammas: 1 + that),
 * which times like real weights and fills a 60-block model at memcpy speed; model building and
 * tokenizer loading are outside the timing, as they are on upstream's side.
 *
 * On the CPU backend the weights are used in place. On another backend the run goes through a
 * VRAM manager without a limit, so the weights are copied to the device once (in the warm-up)
 * and stay there, as upstream's "basic" configuration keeps every model on the GPU.
 * Memory: every allocation made through the backend's alloc slot (weights the manager copies
 * in, activations, outputs; not the ops' internal scratch nor the BLAS workspace) is counted by
 * interposing the slot; alloc_peak_bytes is the most that was live at once, the counterpart of
 * torch.cuda.max_memory_allocated. With a manager, vram_peak_bytes is its own peak (weights and
 * reserved activations). On the CPU backend the weights are the bench's own host memory, so
 * alloc_peak_bytes counts working memory only.
 * Exit status: 0 measured, 77 backend unavailable, 1 any other error; every outcome prints its
 * JSON line. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/dtype.h"
#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "pipelines/qwen_image.h"
#include "vram/vram_manager.h"

#define TE_CLASS "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder"
#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"
#define VAE_CLASS "diffsynth.models.qwen_image_vae.QwenImageVAE"
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
    int te_layers, dit_layers;
    int height, width, steps;
    double cfg;
    const char *tokenizer;
    int warmup, repeats;
} options;

/* One timed run: the whole call and the pipeline's own phase split. */
typedef struct sample {
    double total, encode, denoise, decode;
} sample;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int compare_sample(const void *a, const void *b)
{
    double x = ((const sample *)a)->total, y = ((const sample *)b)->total;
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
    printf(", \"model\": \"QwenImagePipeline\", \"te_layers\": %d, \"dit_layers\": %d, "
           "\"dtype\": \"%s\", \"height\": %d, \"width\": %d, \"steps\": %d, \"cfg\": %g, "
           "\"prompt_tokens\": 60, \"threads\": %d, \"status\": \"%s\"",
           o->te_layers, o->dit_layers, ds_dtype_name(o->dtype), o->height, o->width, o->steps,
           o->cfg, o->threads, status);
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

/* ---- allocation tracking: the backend's alloc/free slots, interposed ---- */

typedef struct alloc_tracker {
    int (*alloc)(ds_backend *b, size_t bytes, void **ptr, ds_error *err); /* the backend's own */
    void (*free)(ds_backend *b, void *ptr);
    pthread_mutex_t lock;
    void **ptrs;    /* live allocations, unordered */
    size_t *sizes;
    size_t count, capacity;
    size_t live, peak;
    int lost;       /* the table could not grow: sizes of later frees unknown, peak a floor */
} alloc_tracker;

static alloc_tracker tracker = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int tracked_alloc(ds_backend *b, size_t bytes, void **ptr, ds_error *err)
{
    int rc = tracker.alloc(b, bytes, ptr, err);
    if (rc != DS_OK)
        return rc;
    pthread_mutex_lock(&tracker.lock);
    if (tracker.count == tracker.capacity) {
        size_t cap = tracker.capacity ? 2 * tracker.capacity : 256;
        void **p = realloc(tracker.ptrs, cap * sizeof *p);
        if (p)
            tracker.ptrs = p;
        size_t *s = p ? realloc(tracker.sizes, cap * sizeof *s) : NULL;
        if (s) {
            tracker.sizes = s;
            tracker.capacity = cap;
        }
    }
    if (tracker.count < tracker.capacity) {
        tracker.ptrs[tracker.count] = *ptr;
        tracker.sizes[tracker.count++] = bytes;
        tracker.live += bytes;
        if (tracker.live > tracker.peak)
            tracker.peak = tracker.live;
    } else {
        tracker.lost = 1;
    }
    pthread_mutex_unlock(&tracker.lock);
    return DS_OK;
}

static void tracked_free(ds_backend *b, void *ptr)
{
    pthread_mutex_lock(&tracker.lock);
    /* From the newest: activations are mostly freed in reverse order of allocation. */
    for (size_t i = tracker.count; i-- > 0;)
        if (tracker.ptrs[i] == ptr) {
            tracker.live -= tracker.sizes[i];
            tracker.ptrs[i] = tracker.ptrs[--tracker.count];
            tracker.sizes[i] = tracker.sizes[tracker.count];
            break;
        }
    pthread_mutex_unlock(&tracker.lock);
    tracker.free(b, ptr);
}

static void track_allocations(ds_backend *b)
{
    tracker.alloc = b->alloc;
    tracker.free = b->free;
    b->alloc = tracked_alloc;
    b->free = tracked_free;
}

static void untrack_allocations(ds_backend *b)
{
    if (tracker.alloc) {
        b->alloc = tracker.alloc;
        b->free = tracker.free;
    }
    free(tracker.ptrs);
    free(tracker.sizes);
}

/* ---- models ---- */

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

/* Scales that multiply a normalised value: centred on 1 so that activations keep their size
 * through the blocks (upstream_anchor.py applies the same rule to the same names). */
static int is_norm_weight(const char *name, const ds_tensor_view *v)
{
    size_t len = strlen(name);
    return (v->ndim == 1 && strstr(name, "norm") != NULL) ||
           (len > 6 && strcmp(name + len - 6, ".gamma") == 0);
}

static void free_model(ds_loaded_model *m)
{
    for (size_t i = 0; i < m->params.count; i++)
        free((void *)m->params.entries[i].tensor.data);
    ds_state_dict_free(&m->params);
}

/* Text-tower tensors of layers below *layers, the embedding and the final norm. */
static int keep_text_layers(const char *name, int layers)
{
    if (strncmp(name, LM, strlen(LM)) != 0)
        return 0;
    const char *rest = name + strlen(LM);
    return strncmp(rest, "layers.", 7) != 0 || atoi(rest + 7) < layers;
}

/* The declared tree of `cls_name` (with `kwargs`), the text encoder's cut to `text_layers`
 * (0: every tensor kept), every tensor filled in `dtype`. Returns the bytes filled, 0 with a
 * message on failure. */
static uint64_t build_model(const char *cls_name, const char *kwargs, int text_layers,
                            ds_dtype dtype, ds_loaded_model *m, char *msg, size_t size)
{
    ds_error err;
    ds_state_dict full;
    const ds_model_class *cls = ds_model_class_find(cls_name);
    uint64_t bytes = 0;
    memset(m, 0, sizeof *m);
    ds_state_dict_init(&m->params);
    ds_state_dict_init(&full);
    if (!cls || ds_model_class_declare(cls, kwargs, &full, &err) != DS_OK) {
        snprintf(msg, size, "declare %s: %.200s", cls_name,
                 cls ? err.message : "class not registered");
        goto fail;
    }
    m->cls = cls;
    for (size_t i = 0; i < full.count; i++)
        if ((text_layers == 0 || keep_text_layers(full.entries[i].name, text_layers)) &&
            ds_state_dict_put_tensor(&m->params, full.entries[i].name, &full.entries[i].tensor) !=
                DS_OK) {
            snprintf(msg, size, "out of memory for the tree of %s", cls_name);
            goto fail;
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
                snprintf(msg, size, "out of memory for %s (%llu elements)", e->name,
                         (unsigned long long)n);
                goto fail;
            }
            tile(data, dtype, n, fnv1a(e->name));
            e->tensor.data = data;
            e->tensor.dtype = dtype;
            e->tensor.nbytes = n * es;
            bytes += n * es;
        }
    }
    return bytes;
fail:
    ds_state_dict_free(&full);
    free_model(m);
    return 0;
}

/* ---- the run ---- */

static void usage(void)
{
    fprintf(stderr, "usage: pipeline_bench [--backend cpu|cuda] [--threads N] [--dtype f32|bf16] "
                    "[--te-layers N] [--dit-layers N] [--height H] [--width W] [--steps N] "
                    "[--cfg X] [--tokenizer DIR] [--warmup N] [--repeats N]\n");
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.backend = "cpu", .dtype = DS_F32, .te_layers = 1, .dit_layers = 1,
                   .height = 256, .width = 256, .steps = 4, .cfg = 4.0,
                   .tokenizer = "tests/data/qwen_tokenizer", .warmup = 1, .repeats = 3};
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
        } else if (strcmp(k, "--te-layers") == 0)
            o->te_layers = atoi(v);
        else if (strcmp(k, "--dit-layers") == 0)
            o->dit_layers = atoi(v);
        else if (strcmp(k, "--height") == 0)
            o->height = atoi(v);
        else if (strcmp(k, "--width") == 0)
            o->width = atoi(v);
        else if (strcmp(k, "--steps") == 0)
            o->steps = atoi(v);
        else if (strcmp(k, "--cfg") == 0)
            o->cfg = atof(v);
        else if (strcmp(k, "--tokenizer") == 0)
            o->tokenizer = v;
        else if (strcmp(k, "--warmup") == 0)
            o->warmup = atoi(v);
        else if (strcmp(k, "--repeats") == 0)
            o->repeats = atoi(v);
        else
            return 0;
    }
    return o->te_layers >= 1 && o->dit_layers >= 1 && o->height >= 16 && o->width >= 16 &&
           o->steps >= 1 && isfinite(o->cfg) && o->warmup >= 0 && o->repeats >= 1 &&
           o->threads >= 0;
}

/* One pipeline call, as upstream's pipe(...): set up, every unit, the image. */
static int run_pipeline(const options *o, const ds_qwen_image_models *models,
                        const ds_step_context *ctx, sample *s, int *finite, ds_error *err)
{
    ds_qwen_image_params params;
    ds_qwen_image_params_default(&params);
    params.prompt = PROMPT;
    params.negative_prompt = "";
    params.tokenizer = o->tokenizer;
    params.seed = 0;
    params.steps = o->steps;
    params.cfg_scale = o->cfg;
    params.height = o->height;
    params.width = o->width;
    params.dtype = o->dtype;
    ds_qwen_image_pipeline *pipe = NULL;
    double start = now_s();
    int rc = ds_qwen_image_pipeline_new(models, &params, &pipe, err);
    while (rc == DS_OK && (rc = ds_qwen_image_pipeline_advance(pipe, ctx, err)) == 1)
        rc = DS_OK;
    s->total = now_s() - start;
    if (rc == 0) {
        ds_qwen_image_pipeline_times(pipe, &s->encode, &s->denoise, &s->decode);
        const ds_tensor *latents = ds_qwen_image_pipeline_latents(pipe);
        size_t n = (size_t)ds_tensor_numel(latents);
        *finite = 1;
        for (size_t i = 0; i < n && *finite; i++)
            *finite = isfinite(ds_load_f64(latents->data, latents->dtype, i));
    }
    ds_qwen_image_pipeline_free(pipe);
    return rc;
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
    track_allocations(b);

    int code = 1;
    char msg[320];
    char kwargs[64];
    ds_loaded_model te, dit, vae;
    ds_vram_manager *mgr = NULL;
    memset(&te, 0, sizeof te);
    memset(&dit, 0, sizeof dit);
    memset(&vae, 0, sizeof vae);
    sample *samples = calloc((size_t)o.repeats, sizeof *samples);
    if (!samples) {
        code = report_failure(&o, "error", "out of memory", 1);
        goto out;
    }
    double build_start = now_s();
    snprintf(kwargs, sizeof kwargs, "{\"num_layers\": %d}", o.dit_layers);
    uint64_t te_bytes = build_model(TE_CLASS, NULL, o.te_layers, o.dtype, &te, msg, sizeof msg);
    uint64_t dit_bytes =
        te_bytes ? build_model(DIT_CLASS, kwargs, 0, o.dtype, &dit, msg, sizeof msg) : 0;
    uint64_t vae_bytes =
        dit_bytes ? build_model(VAE_CLASS, NULL, 0, o.dtype, &vae, msg, sizeof msg) : 0;
    if (!vae_bytes) {
        code = report_failure(&o, "error", msg, 1);
        goto out;
    }
    uint64_t weight_bytes = te_bytes + dit_bytes + vae_bytes;
    fprintf(stderr, "pipeline_bench: models built in %.1f s (%.2f GB of weights)\n",
            now_s() - build_start, (double)weight_bytes * 1e-9);
    if (strcmp(o.backend, "cpu") != 0 &&
        ds_vram_manager_create(b, DS_VRAM_UNLIMITED, 2, &mgr, &err) != DS_OK) {
        code = report_failure(&o, "error", err.message, 1);
        goto out;
    }

    ds_qwen_image_models models = {.text_encoder = &te, .dit = &dit, .vae = &vae};
    ds_step_context ctx = {.backend = b, .vram = mgr};
    int finite = 1;
    for (int r = -o.warmup; r < o.repeats; r++) {
        sample s = {0};
        int ok = 1;
        if (run_pipeline(&o, &models, &ctx, &s, &ok, &err) != 0) {
            code = report_failure(&o, "error", err.message, 1);
            goto out;
        }
        finite = finite && ok;
        if (r >= 0)
            samples[r] = s;
    }
    qsort(samples, (size_t)o.repeats, sizeof *samples, compare_sample);
    const sample *median = &samples[o.repeats / 2];
    print_head(&o, finite ? "ok" : "bad_output");
    printf(", \"warmup\": %d, \"repeats\": %d, \"median_ms\": %.3f, \"min_ms\": %.3f, "
           "\"encode_ms\": %.3f, \"denoise_ms\": %.3f, \"decode_ms\": %.3f, "
           "\"weight_bytes\": %llu, \"alloc_peak_bytes\": %zu%s",
           o.warmup, o.repeats, median->total * 1e3, samples[0].total * 1e3,
           median->encode * 1e3, median->denoise * 1e3, median->decode * 1e3,
           (unsigned long long)weight_bytes, tracker.peak,
           tracker.lost ? ", \"alloc_peak_note\": \"a lower bound (the table could not grow)\""
                        : "");
    if (mgr) {
        ds_vram_stats st;
        ds_vram_stats_get(mgr, &st);
        printf(", \"vram_peak_bytes\": %zu", st.peak_bytes);
    }
    printf(", \"memory\": \"alloc_peak_bytes: most bytes live at once through the backend's "
           "alloc slot (weights copied in, activations; not op scratch)\", \"timing\": "
           "\"monotonic clock around pipeline new + every advance (encode, %d steps, decode + "
           "RGB8); phases from ds_qwen_image_pipeline_times of the median run\"}\n",
           o.steps);
    fflush(stdout);
    code = finite ? 0 : 1;
out:
    /* The manager first: it holds the weights' device copies and points at the host ones. */
    ds_vram_manager_destroy(mgr);
    free_model(&te);
    free_model(&dit);
    free_model(&vae);
    free(samples);
    untrack_allocations(b);
    ds_backend_destroy(b);
    return code;
}
