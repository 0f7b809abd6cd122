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
 *   --weights-dtype D    the weights' dtype when it differs from --dtype (bf16 files at f32)
 *   --convert-limit GIB  on the CPU, as diffsynthd's option of that name: host memory for
 *                        weights kept converted to --dtype, converted once in the warm-up
 *                        instead of at every matmul (default, the daemon's: half the machine's
 *                        memory; 0 = converted at every call; none = no limit)
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
 * On the CPU backend the weights are used in place, as diffsynthd's default uses them; those a
 * forward would convert (--weights-dtype other than --dtype) are kept converted within
 * --convert-limit, as the daemon keeps them. output_fnv1a64 is a hash of the last call's final
 * latents, so two ways of holding the weights can be shown to compute the same bits. On another
 * backend the run goes through a
 * VRAM manager without a limit, so the weights are copied to the device once (in the warm-up)
 * and stay there, as upstream's "basic" configuration keeps every model on the GPU.
 * Memory: every allocation made through the backend's alloc slot (weights the manager copies
 * in, activations, outputs; not the ops' internal scratch nor the BLAS workspace) is counted by
 * interposing the slot; alloc_peak_bytes is the most that was live at once, the counterpart of
 * torch.cuda.max_memory_allocated. With a manager, vram_peak_bytes is its own peak (weights and
 * reserved activations). On the CPU backend the weights are the bench's own host memory, so
 * alloc_peak_bytes counts working memory, plus the weights kept converted (converted_bytes).
 * Exit status: 0 measured, 77 backend unavailable, 1 any other error; every outcome prints its
 * JSON line. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/common/alloc_tracker.h"
#include "bench/common/bench_model.h"
#include "bench/common/bench_util.h"
#include "core/dtype.h"
#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "pipelines/qwen_image.h"
#include "vram/vram_config.h"
#include "vram/vram_manager.h"

#define TE_CLASS "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder"
#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"
#define VAE_CLASS "diffsynth.models.qwen_image_vae.QwenImageVAE"
#define PROMPT                                                                                    \
    "A cozy reading nook by a tall window at dusk, warm lamplight on a worn leather armchair, a " \
    "knitted blanket, a stack of books with gold lettering, a sleeping tabby cat, rain streaks "  \
    "on the glass, film grain, shallow depth of field, muted colors"

typedef struct options {
    const char *backend;
    int threads;
    ds_dtype dtype;
    ds_dtype weights_dtype; /* DS_DTYPE_INVALID: dtype */
    size_t convert_limit;   /* bytes; DS_VRAM_UNLIMITED: none */
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

static int compare_sample(const void *a, const void *b)
{
    double x = ((const sample *)a)->total, y = ((const sample *)b)->total;
    return (x > y) - (x < y);
}

static void print_head(const options *o, const char *status)
{
    printf("{\"impl\": \"ours\", \"backend\": ");
    ds_bench_print_json_string(o->backend);
    printf(", \"model\": \"QwenImagePipeline\", \"te_layers\": %d, \"dit_layers\": %d, "
           "\"dtype\": \"%s\", \"height\": %d, \"width\": %d, \"steps\": %d, \"cfg\": %g, "
           "\"prompt_tokens\": 60, \"threads\": %d, \"weights_dtype\": \"%s\", "
           "\"status\": \"%s\"",
           o->te_layers, o->dit_layers, ds_dtype_name(o->dtype), o->height, o->width, o->steps,
           o->cfg, o->threads,
           ds_dtype_name(o->weights_dtype != DS_DTYPE_INVALID ? o->weights_dtype : o->dtype),
           status);
    ds_bench_print_gemm(o->backend);
}

static int report_failure(const options *o, const char *status, const char *message, int code)
{
    print_head(o, status);
    return ds_bench_end_with_message(message, code);
}

/* ---- models ---- */


/* ---- the run ---- */

static void usage(void)
{
    fprintf(stderr, "usage: pipeline_bench [--backend cpu|cuda] [--threads N] [--dtype f32|bf16] "
                    "[--weights-dtype f32|bf16] [--convert-limit GIB|none] [--te-layers N] "
                    "[--dit-layers N] [--height H] [--width W] [--steps N] [--cfg X] "
                    "[--tokenizer DIR] [--warmup N] [--repeats N]\n");
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.backend = "cpu", .dtype = DS_F32, .te_layers = 1, .dit_layers = 1,
                   .height = 256, .width = 256, .steps = 4, .cfg = 4.0,
                   .tokenizer = "tests/data/qwen_tokenizer", .warmup = 1, .repeats = 3,
                   .weights_dtype = DS_DTYPE_INVALID, .convert_limit = DS_VRAM_UNLIMITED};
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0)
        o->convert_limit = (size_t)pages / 2 * (size_t)page;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (i + 1 >= argc)
            return 0;
        const char *v = argv[++i];
        int common = ds_bench_common_option(k, v, &o->backend, &o->threads, &o->dtype,
                                            &o->warmup, &o->repeats);
        if (common != 0) {
            if (common < 0)
                return 0;
        } else if (strcmp(k, "--weights-dtype") == 0) {
            if (!ds_bench_parse_dtype(v, &o->weights_dtype))
                return 0;
        } else if (strcmp(k, "--convert-limit") == 0) {
            char *end;
            double gib = strtod(v, &end);
            ds_error err;
            if (strcmp(v, "none") == 0)
                o->convert_limit = DS_VRAM_UNLIMITED;
            else if (!v[0] || *end || !(gib >= 0) ||
                     ds_vram_limit_bytes(gib, &o->convert_limit, &err) != DS_OK)
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
        else
            return 0;
    }
    return o->te_layers >= 1 && o->dit_layers >= 1 && o->height >= 16 && o->width >= 16 &&
           o->steps >= 1 && isfinite(o->cfg) && o->warmup >= 0 && o->repeats >= 1 &&
           o->threads >= 0;
}

/* One pipeline call, as upstream's pipe(...): set up, every unit, the image. *hash: FNV-1a of
 * the final latents' bytes. */
static int run_pipeline(const options *o, const ds_qwen_image_models *models,
                        const ds_step_context *ctx, sample *s, int *finite, uint64_t *hash,
                        ds_error *err)
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
    double start = ds_bench_now_s();
    int rc = ds_qwen_image_pipeline_new(models, &params, &pipe, err);
    while (rc == DS_OK && (rc = ds_qwen_image_pipeline_advance(pipe, ctx, err)) == 1)
        rc = DS_OK;
    s->total = ds_bench_now_s() - start;
    if (rc == 0) {
        ds_qwen_image_pipeline_times(pipe, &s->encode, &s->denoise, &s->decode);
        const ds_tensor *latents = ds_qwen_image_pipeline_latents(pipe);
        size_t n = (size_t)ds_tensor_numel(latents);
        *finite = 1;
        for (size_t i = 0; i < n && *finite; i++)
            *finite = isfinite(ds_load_f64(latents->data, latents->dtype, i));
        *hash = 0xcbf29ce484222325u;
        for (size_t i = 0; i < ds_tensor_nbytes(latents); i++)
            *hash = (*hash ^ ((const unsigned char *)latents->data)[i]) * 0x100000001b3u;
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
    int rc = ds_bench_backend_create(o.backend, o.threads, &b, &err);
    if (rc == DS_ERR_INVALID_ARGUMENT) {
        usage();
        return 2;
    }
    if (rc == DS_ERR_UNAVAILABLE)
        return report_failure(&o, "unavailable", err.message, 77);
    if (rc != DS_OK)
        return report_failure(&o, "error", err.message, 1);
    ds_bench_track_allocations(b);

    int code = 1;
    char kwargs[64];
    ds_loaded_model te, dit, vae;
    ds_vram_manager *mgr = NULL, *conv = NULL;
    memset(&te, 0, sizeof te);
    memset(&dit, 0, sizeof dit);
    memset(&vae, 0, sizeof vae);
    sample *samples = calloc((size_t)o.repeats, sizeof *samples);
    if (!samples) {
        code = report_failure(&o, "error", "out of memory", 1);
        goto out;
    }
    double build_start = ds_bench_now_s();
    snprintf(kwargs, sizeof kwargs, "{\"num_layers\": %d}", o.dit_layers);
    size_t te_bytes = 0, dit_bytes = 0, vae_bytes = 0;
    ds_dtype wdt = o.weights_dtype != DS_DTYPE_INVALID ? o.weights_dtype : o.dtype;
    if (ds_bench_build_model(TE_CLASS, NULL, ds_bench_keep_text_layers, o.te_layers, wdt, &te,
                             &te_bytes, &err) != DS_OK ||
        ds_bench_build_model(DIT_CLASS, kwargs, NULL, 0, wdt, &dit, &dit_bytes, &err) != DS_OK ||
        ds_bench_build_model(VAE_CLASS, NULL, NULL, 0, wdt, &vae, &vae_bytes, &err) != DS_OK) {
        code = report_failure(&o, "error", err.message, 1);
        goto out;
    }
    uint64_t weight_bytes = te_bytes + dit_bytes + vae_bytes;
    fprintf(stderr, "pipeline_bench: models built in %.1f s (%.2f GB of weights)\n",
            ds_bench_now_s() - build_start, (double)weight_bytes * 1e-9);
    int cpu = strcmp(o.backend, "cpu") == 0;
    if ((!cpu && ds_vram_manager_create(b, DS_VRAM_UNLIMITED, 2, &mgr, &err) != DS_OK) ||
        (cpu && o.convert_limit != 0 &&
         ds_vram_manager_create(b, o.convert_limit, 0, &conv, &err) != DS_OK)) {
        code = report_failure(&o, "error", err.message, 1);
        goto out;
    }

    ds_qwen_image_models models = {.text_encoder = &te, .dit = &dit, .vae = &vae};
    ds_step_context ctx = {.backend = b, .vram = mgr, .convert = conv};
    int finite = 1;
    uint64_t hash = 0;
    for (int r = -o.warmup; r < o.repeats; r++) {
        sample s = {0};
        int ok = 1;
        if (run_pipeline(&o, &models, &ctx, &s, &ok, &hash, &err) != 0) {
            code = report_failure(&o, "error", err.message, 1);
            goto out;
        }
        finite = finite && ok;
        if (r >= 0)
            samples[r] = s;
    }
    qsort(samples, (size_t)o.repeats, sizeof *samples, compare_sample);
    const sample *median = &samples[o.repeats / 2];
    int lost = 0;
    print_head(&o, finite ? "ok" : "bad_output");
    printf(", \"warmup\": %d, \"repeats\": %d, \"median_ms\": %.3f, \"min_ms\": %.3f, "
           "\"encode_ms\": %.3f, \"denoise_ms\": %.3f, \"decode_ms\": %.3f, "
           "\"weight_bytes\": %llu, \"alloc_peak_bytes\": %zu%s",
           o.warmup, o.repeats, median->total * 1e3, samples[0].total * 1e3,
           median->encode * 1e3, median->denoise * 1e3, median->decode * 1e3,
           (unsigned long long)weight_bytes, ds_bench_alloc_peak(&lost),
           lost ? ", \"alloc_peak_note\": \"a lower bound (the table could not grow)\""
                        : "");
    if (mgr) {
        ds_vram_stats st;
        ds_vram_stats_get(mgr, &st);
        printf(", \"vram_peak_bytes\": %zu", st.peak_bytes);
    }
    ds_vram_stats cs = {0};
    if (conv)
        ds_vram_stats_get(conv, &cs);
    if (cpu && o.convert_limit == DS_VRAM_UNLIMITED)
        printf(", \"convert_limit\": \"none\"");
    else if (cpu)
        printf(", \"convert_limit\": %zu", o.convert_limit);
    printf(", \"converted_bytes\": %zu, \"conversions\": %llu, \"output_fnv1a64\": \"%016llx\"",
           cs.resident_bytes, (unsigned long long)cs.loads, (unsigned long long)hash);
    printf(", \"memory\": \"alloc_peak_bytes: most bytes live at once through the backend's "
           "alloc slot (weights copied in, activations; not op scratch)\", \"timing\": "
           "\"monotonic clock around pipeline new + every advance (encode, %d steps, decode + "
           "RGB8); phases from ds_qwen_image_pipeline_times of the median run\"}\n",
           o.steps);
    fflush(stdout);
    code = finite ? 0 : 1;
out:
    /* The managers first: they hold copies of the weights and point at the host ones. */
    ds_vram_manager_destroy(mgr);
    ds_vram_manager_destroy(conv);
    ds_bench_free_model(&te);
    ds_bench_free_model(&dit);
    ds_bench_free_model(&vae);
    free(samples);
    ds_bench_untrack_allocations(b);
    ds_backend_destroy(b);
    return code;
}
