/* bench/wan_video: the whole Wan2.1 text-to-video pipeline (the wan_video table entry,
 * pipelines/wan_video.c: prompt and negative prompt encoding, N denoising steps with CFG, the
 * tiled VAE decode, RGB8 frames), timed end to end, one JSON line. upstream_anchor.py takes the
 * same arguments and times upstream DiffSynth-Studio's own WanVideoPipeline.__call__ on the same
 * reduced models, so run.sh can print ours / upstream measured in the same run (DESIGN §7).
 *
 * usage: wan_pipeline_bench [options]
 *   --backend cpu|cuda   (default cpu)
 *   --threads N          CPU worker threads (0 = all CPUs; ignored by cuda)
 *   --dtype f32|bf16     weights and compute dtype (default f32)
 *   --te-layers N        UMT5 text encoder blocks at full width (default 1; released: 24)
 *   --vocab N            the text encoder's vocabulary rows (default 700: the test
 *                        SentencePiece model's; released: 256384)
 *   --dit-layers N       Wan2.1-T2V-1.3B DiT blocks at full width (default 1; released: 30)
 *   --frames N --height H --width W  the video (default 9 frames of 128 x 128)
 *   --steps N            denoising steps (default 4)
 *   --cfg X              cfg_scale (default 5, upstream's; 1 skips the negative pass)
 *   --tokenizer DIR      the folder with spiece.model (default tests/data/wan_tokenizer)
 *   --vram-limit GIB     weights streamed through a VRAM manager with this budget (default: on
 *                        the CPU no manager, on another backend one without a limit)
 *   --warmup N           untimed runs first (default 1; the first loads the tokenizer)
 *   --repeats N          timed runs; the median is reported (default 3)
 *
 * The prompt and negative prompt are tests/data/wan_tokenizer/cases.json's English and Chinese
 * cases (the golden test's), seed 0, upstream's default tiling (tile 30 x 52, stride 15 x 26 in
 * latent units: one tile up to 240 x 416 pixels). The models are the classes' declared trees
 * built in memory, every tensor filled from bench/common's table of uniform values in
 * [-0.02, 0.02] (norm weights and the VAE's RMS gammas: 1 + that), as upstream_anchor.py fills
 * upstream's; model building and tokenizer loading are outside the timing on both sides.
 * Phases: the pipeline's own encode_s / denoise_s / decode_s results (the decode includes the
 * RGB8 conversion).
 * Memory: alloc_peak_bytes is the most that was live at once through the backend's alloc slot
 * (bench/common/alloc_tracker.h); with a manager, vram_peak_bytes is the manager's own peak
 * (weights resident and activations reserved). On the CPU without a manager the weights are the
 * bench's own host memory, so alloc_peak_bytes counts working memory only.
 * Exit status: 0 measured, 77 backend unavailable, 1 any other error; every outcome prints its
 * JSON line. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/common/alloc_tracker.h"
#include "bench/common/bench_model.h"
#include "bench/common/bench_util.h"
#include "core/dtype.h"
#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "pipelines/pipeline.h"
#include "vram/vram_config.h"
#include "vram/vram_manager.h"

#define TE_CLASS "diffsynth.models.wan_video_text_encoder.WanTextEncoder"
#define DIT_CLASS "diffsynth.models.wan_video_dit.WanModel"
#define VAE_CLASS "diffsynth.models.wan_video_vae.WanVideoVAE"
/* Wan2.1-T2V-1.3B's config row with num_layers left to the bench. */
#define DIT_KWARGS                                                                               \
    "{\"has_image_input\": false, \"patch_size\": [1, 2, 2], \"in_dim\": 16, \"dim\": 1536, "    \
    "\"ffn_dim\": 8960, \"freq_dim\": 256, \"text_dim\": 4096, \"out_dim\": 16, "                \
    "\"num_heads\": 12, \"num_layers\": %d, \"eps\": 1e-06}"
#define PROMPT "A cat sits on a wooden table next to a window, morning light, soft shadows."
#define NEGATIVE "一只小猫坐在窗边的木桌上，清晨的阳光洒在它身上，画面柔和。"

typedef struct options {
    const char *backend;
    int threads;
    ds_dtype dtype;
    int te_layers, vocab, dit_layers;
    int frames, height, width, steps;
    double cfg;
    const char *tokenizer;
    double vram_limit_gib; /* < 0: none given */
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
    printf(", \"model\": \"WanVideoPipeline\", \"te_layers\": %d, \"vocab\": %d, "
           "\"dit_layers\": %d, \"dtype\": \"%s\", \"frames\": %d, \"height\": %d, "
           "\"width\": %d, \"steps\": %d, \"cfg\": %g, \"threads\": %d, \"status\": \"%s\"",
           o->te_layers, o->vocab, o->dit_layers, ds_dtype_name(o->dtype), o->frames, o->height,
           o->width, o->steps, o->cfg, o->threads, status);
    if (o->vram_limit_gib >= 0)
        printf(", \"vram_limit_gib\": %g", o->vram_limit_gib);
    ds_bench_print_gemm(o->backend);
}

static int report_failure(const options *o, const char *status, const char *message, int code)
{
    print_head(o, status);
    return ds_bench_end_with_message(message, code);
}

static void usage(void)
{
    fprintf(stderr, "usage: wan_pipeline_bench [--backend cpu|cuda] [--threads N] "
                    "[--dtype f32|bf16] [--te-layers N] [--vocab N] [--dit-layers N] "
                    "[--frames N] [--height H] [--width W] [--steps N] [--cfg X] "
                    "[--tokenizer DIR] [--vram-limit GIB] [--warmup N] [--repeats N]\n");
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.backend = "cpu", .dtype = DS_F32, .te_layers = 1, .vocab = 700,
                   .dit_layers = 1, .frames = 9, .height = 128, .width = 128, .steps = 4,
                   .cfg = 5.0, .tokenizer = "tests/data/wan_tokenizer", .vram_limit_gib = -1,
                   .warmup = 1, .repeats = 3};
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
        } else if (strcmp(k, "--te-layers") == 0)
            o->te_layers = atoi(v);
        else if (strcmp(k, "--vocab") == 0)
            o->vocab = atoi(v);
        else if (strcmp(k, "--dit-layers") == 0)
            o->dit_layers = atoi(v);
        else if (strcmp(k, "--frames") == 0)
            o->frames = atoi(v);
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
        else if (strcmp(k, "--vram-limit") == 0)
            o->vram_limit_gib = atof(v);
        else
            return 0;
    }
    return o->te_layers >= 1 && o->vocab >= 700 && o->dit_layers >= 1 && o->frames >= 1 &&
           o->height >= 16 && o->width >= 16 && o->steps >= 1 && isfinite(o->cfg) &&
           o->warmup >= 0 && o->repeats >= 1 && o->threads >= 0 &&
           (o->vram_limit_gib < 0 || o->vram_limit_gib >= 0);
}

/* Parameter `name` of args, set from text as a client's request would. */
static int set_param(const ds_pipeline_def *def, ds_pipeline_args *a, const char *name,
                     const char *text, ds_error *err)
{
    int i = ds_pipeline_param_index(def, name);
    if (i < 0)
        return ds_error_set(err, DS_ERR_INTERNAL, "wan_video has no parameter %s", name);
    return ds_pipeline_param_parse(def, &def->params[i], text, &a->values[i], err);
}

/* One pipeline call, as upstream's pipe(...): start, every unit, the frames. */
static int run_pipeline(const ds_pipeline_def *def, const ds_pipeline_args *args,
                        const ds_step_context *ctx, sample *s, int *finite, ds_error *err)
{
    ds_pipeline_run *run = NULL;
    double start = ds_bench_now_s();
    int rc = def->start(args, &run, err);
    while (rc == DS_OK && (rc = def->advance(run, ctx, err)) == 1)
        rc = DS_OK;
    s->total = ds_bench_now_s() - start;
    if (rc == 0) {
        ds_pipeline_result results[DS_PIPELINE_MAX_RESULTS];
        size_t n = def->results(run, results);
        const ds_pipeline_result *e = ds_pipeline_result_find(results, n, "encode_s");
        const ds_pipeline_result *d = ds_pipeline_result_find(results, n, "denoise_s");
        const ds_pipeline_result *v = ds_pipeline_result_find(results, n, "decode_s");
        s->encode = e ? e->d : 0;
        s->denoise = d ? d->d : 0;
        s->decode = v ? v->d : 0;
        const ds_tensor *latents = def->output(run, (size_t)1);
        size_t count = latents ? (size_t)ds_tensor_numel(latents) : 0;
        *finite = latents != NULL;
        for (size_t i = 0; i < count && *finite; i++)
            *finite = isfinite(ds_load_f64(latents->data, latents->dtype, i));
    }
    if (run)
        def->free(run);
    return rc;
}

int main(int argc, char **argv)
{
    options o;
    if (!parse_args(argc, argv, &o)) {
        usage();
        return 2;
    }
    const ds_pipeline_def *def = ds_pipeline_find("wan_video");
    if (!def)
        return report_failure(&o, "error", "this build has no wan_video pipeline", 1);
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
    char te_kwargs[96], dit_kwargs[320], text[32];
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
    double build_start = ds_bench_now_s();
    snprintf(te_kwargs, sizeof te_kwargs, "{\"vocab\": %d, \"num_layers\": %d}", o.vocab,
             o.te_layers);
    snprintf(dit_kwargs, sizeof dit_kwargs, DIT_KWARGS, o.dit_layers);
    size_t te_bytes = 0, dit_bytes = 0, vae_bytes = 0;
    if (ds_bench_build_model(TE_CLASS, te_kwargs, NULL, 0, o.dtype, &te, &te_bytes, &err) !=
            DS_OK ||
        ds_bench_build_model(DIT_CLASS, dit_kwargs, NULL, 0, o.dtype, &dit, &dit_bytes, &err) !=
            DS_OK ||
        ds_bench_build_model(VAE_CLASS, NULL, NULL, 0, o.dtype, &vae, &vae_bytes, &err) != DS_OK) {
        code = report_failure(&o, "error", err.message, 1);
        goto out;
    }
    uint64_t weight_bytes = te_bytes + dit_bytes + vae_bytes;
    fprintf(stderr, "wan_pipeline_bench: models built in %.1f s (%.2f GB of weights)\n",
            ds_bench_now_s() - build_start, (double)weight_bytes * 1e-9);
    size_t budget = DS_VRAM_UNLIMITED;
    if (o.vram_limit_gib >= 0 && ds_vram_limit_bytes(o.vram_limit_gib, &budget, &err) != DS_OK) {
        code = report_failure(&o, "error", err.message, 1);
        goto out;
    }
    if ((strcmp(o.backend, "cpu") != 0 || o.vram_limit_gib >= 0) &&
        ds_vram_manager_create(b, budget, 2, &mgr, &err) != DS_OK) {
        code = report_failure(&o, "error", err.message, 1);
        goto out;
    }

    ds_pipeline_args args;
    memset(&args, 0, sizeof args);
    if (ds_pipeline_defaults(def, args.values, &err) != DS_OK) {
        code = report_failure(&o, "error", err.message, 1);
        goto out;
    }
    args.models[ds_pipeline_role_index(def, "text_encoder")] = &te;
    args.models[ds_pipeline_role_index(def, "dit")] = &dit;
    args.models[ds_pipeline_role_index(def, "vae")] = &vae;
    args.prompt = PROMPT;
    args.negative_prompt = NEGATIVE;
    args.tokenizer = o.tokenizer;
    args.dtype = o.dtype;
    static const char *const names[] = {"seed", "steps", "cfg_scale", "num_frames", "height",
                                        "width"};
    const double values[] = {0, o.steps, o.cfg, o.frames, o.height, o.width};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(text, sizeof text, "%.17g", values[i]);
        if (set_param(def, &args, names[i], text, &err) != DS_OK) {
            code = report_failure(&o, "error", err.message, 1);
            goto out;
        }
    }

    ds_step_context ctx = {.backend = b, .vram = mgr};
    int finite = 1;
    for (int r = -o.warmup; r < o.repeats; r++) {
        sample s = {0};
        int ok = 1;
        if (run_pipeline(def, &args, &ctx, &s, &ok, &err) != 0) {
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
    size_t alloc_peak = ds_bench_alloc_peak(&lost);
    print_head(&o, finite ? "ok" : "bad_output");
    printf(", \"warmup\": %d, \"repeats\": %d, \"median_ms\": %.3f, \"min_ms\": %.3f, "
           "\"encode_ms\": %.3f, \"denoise_ms\": %.3f, \"decode_ms\": %.3f, "
           "\"weight_bytes\": %llu, \"alloc_peak_bytes\": %zu%s",
           o.warmup, o.repeats, median->total * 1e3, samples[0].total * 1e3,
           median->encode * 1e3, median->denoise * 1e3, median->decode * 1e3,
           (unsigned long long)weight_bytes, alloc_peak,
           lost ? ", \"alloc_peak_note\": \"a lower bound (the table could not grow)\"" : "");
    if (mgr) {
        ds_vram_stats st;
        ds_vram_stats_get(mgr, &st);
        printf(", \"vram_peak_bytes\": %zu", st.peak_bytes);
    }
    printf(", \"memory\": \"alloc_peak_bytes: most bytes live at once through the backend's "
           "alloc slot (weights copied in, activations; not op scratch)\", \"timing\": "
           "\"monotonic clock around start + every advance (encode, %d steps, decode tiles + "
           "RGB8); phases from the pipeline's encode_s / denoise_s / decode_s of the median "
           "run\"}\n",
           o.steps);
    fflush(stdout);
    code = finite ? 0 : 1;
out:
    /* The manager first: it holds the weights' device copies and points at the host ones. */
    ds_vram_manager_destroy(mgr);
    ds_bench_free_model(&te);
    ds_bench_free_model(&dit);
    ds_bench_free_model(&vae);
    free(samples);
    ds_bench_untrack_allocations(b);
    ds_backend_destroy(b);
    return code;
}
