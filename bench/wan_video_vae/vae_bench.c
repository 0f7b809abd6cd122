/* bench/wan_video_vae: the Wan2.1 VAE's decode (ds_wan_video_vae_decode), untiled or with the
 * Wan pipeline's tiles, timed, one JSON line. upstream_anchor.py takes the same arguments and
 * times upstream DiffSynth-Studio's own WanVideoVAE on the same seeded weights and latents, so
 * run.sh (CPU) and run_gpu.sh (GPU) print ours / upstream measured in the same run (DESIGN §7).
 *
 * usage: vae_bench [options]
 *   --backend cpu|cuda   (default cpu)
 *   --threads N          CPU worker threads (0 = all CPUs; ignored by cuda)
 *   --dtype f32|bf16     weights, latents and compute (default f32; the Wan pipeline's is bf16)
 *   --frames T           latent frames (default 3: 9 video frames; 21: 81 frames)
 *   --size S             video height and width, a multiple of 8 (default 128)
 *   --height H --width W video size, multiples of 8 (instead of --size; 480 x 832: latents
 *                        60 x 104)
 *   --tiled              the Wan pipeline's tiling (tile 30 x 52, stride 15 x 26 in latent
 *                        units: upstream's WanVideoVAE.decode(tiled=True)); default untiled
 *                        (single_decode)
 *   --warmup N           untimed decodes first (default 0)
 *   --repeats N          timed decodes; the median is reported (default 1: one decode of 9
 *                        frames at 128 x 128 already takes tens of seconds on a small CPU)
 *   --vram-gib G|unlimited|none   the VRAM manager the decode runs through (GiB, as
 *                        upstream's vram_limit); default unlimited on a device (the weights
 *                        copied in once, in the first decode, then resident, as upstream keeps
 *                        the VAE on the GPU), none on the CPU (weights used in place)
 * The model is the real config with tests/tools' seeded weights (make_wan_video_vae_golden.py's
 * bounds; bf16: rounded from them, as torch's .to(bfloat16)), the latents seeded
 * "wan_vae.bench_latents" within 2. Device memory: every allocation through the backend's alloc
 * slot over the timed decodes is counted (alloc_peak_bytes: the weights the manager holds,
 * activations, tiles; the counterpart of torch.cuda.max_memory_allocated after a
 * reset_peak_memory_stats), and the manager's own peak (vram_peak_bytes).
 * Exit status 0 measured, 77 backend unavailable, 1 any other error, 2 bad options; every
 * outcome but bad options prints its JSON line. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/common/alloc_tracker.h"
#include "bench/common/bench_model.h"
#include "bench/common/bench_util.h"
#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/wan_video_vae.h"
#include "tools/golden_model.h"
#include "tools/seeded_weights.h"
#include "vram/vram_config.h"
#include "vram/vram_manager.h"

typedef struct options {
    const char *backend;
    int threads;
    ds_dtype dtype;
    int64_t frames, height, width;
    int tiled, warmup, repeats;
    const char *vram_gib; /* NULL: the backend's default */
    int managed;
    size_t budget;
} options;

static int parse_int64(const char *s, int64_t min, int64_t max, int64_t *out)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || v < min || v > max)
        return 0;
    *out = v;
    return 1;
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.backend = "cpu", .dtype = DS_F32, .frames = 3, .height = 128, .width = 128,
                   .repeats = 1};
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t n = 0, size = 0;
        if (strcmp(k, "--tiled") == 0) {
            o->tiled = 1;
            continue;
        }
        int ok = v != NULL;
        if (ok && strcmp(k, "--backend") == 0)
            ok = strcmp(v, "cpu") == 0 || strcmp(v, "cuda") == 0 ? (o->backend = v, 1) : 0;
        else if (ok && strcmp(k, "--threads") == 0)
            ok = parse_int64(v, 0, 4096, &n) ? (o->threads = (int)n, 1) : 0;
        else if (ok && strcmp(k, "--dtype") == 0)
            ok = ds_bench_parse_dtype(v, &o->dtype);
        else if (ok && strcmp(k, "--frames") == 0)
            ok = parse_int64(v, 1, 1024, &o->frames);
        else if (ok && strcmp(k, "--size") == 0)
            ok = parse_int64(v, 8, 1 << 16, &size) ? (o->height = o->width = size, 1) : 0;
        else if (ok && strcmp(k, "--height") == 0)
            ok = parse_int64(v, 8, 1 << 16, &o->height);
        else if (ok && strcmp(k, "--width") == 0)
            ok = parse_int64(v, 8, 1 << 16, &o->width);
        else if (ok && strcmp(k, "--warmup") == 0)
            ok = parse_int64(v, 0, 100, &n) ? (o->warmup = (int)n, 1) : 0;
        else if (ok && strcmp(k, "--repeats") == 0)
            ok = parse_int64(v, 1, 100, &n) ? (o->repeats = (int)n, 1) : 0;
        else if (ok && strcmp(k, "--vram-gib") == 0)
            o->vram_gib = v;
        else
            ok = 0;
        if (!ok || o->height % 8 || o->width % 8) {
            fprintf(stderr, "vae_bench: bad option %s %s\n", k, v ? v : "");
            return 0;
        }
        i++;
    }
    return 1;
}

/* --vram-gib against the backend: unlimited by default on a device, none on the CPU. */
static int parse_budget(options *o, int device)
{
    const char *v = o->vram_gib ? o->vram_gib : device ? "unlimited" : "none";
    o->managed = strcmp(v, "none") != 0;
    o->budget = DS_VRAM_UNLIMITED;
    if (!o->managed || strcmp(v, "unlimited") == 0)
        return 1;
    char *end;
    double gib = strtod(v, &end);
    ds_error ignored;
    return end != v && !*end && gib >= 0 && ds_vram_limit_bytes(gib, &o->budget, &ignored) == DS_OK;
}

static void print_head(const options *o, const char *status)
{
    printf("{\"side\": \"ours\", \"backend\": ");
    ds_bench_print_json_string(o->backend);
    printf(", \"model\": \"WanVideoVAE\", \"dtype\": \"%s\", \"threads\": %d, \"frames\": %lld, "
           "\"latent_frames\": %lld, \"size\": %lld, \"height\": %lld, \"width\": %lld, "
           "\"tiled\": %s, \"vram_limit_gib\": ",
           ds_dtype_name(o->dtype), o->threads, (long long)(4 * (o->frames - 1) + 1),
           (long long)o->frames, (long long)o->height, (long long)o->height,
           (long long)o->width, o->tiled ? "true" : "false");
    if (!o->managed)
        printf("null");
    else if (o->budget == DS_VRAM_UNLIMITED)
        printf("\"unlimited\"");
    else
        printf("%s", o->vram_gib);
    printf(", \"status\": \"%s\"", status);
    ds_bench_print_gemm(o->backend);
}

static int report_failure(const options *o, const char *status, const char *message, int code)
{
    print_head(o, status);
    return ds_bench_end_with_message(message, code);
}

int main(int argc, char **argv)
{
    options o;
    if (!parse_args(argc, argv, &o)) {
        fprintf(stderr, "usage: vae_bench [--backend cpu|cuda] [--threads N] [--dtype f32|bf16] "
                        "[--frames T] [--size S | --height H --width W] [--tiled] [--warmup N] "
                        "[--repeats N] [--vram-gib G|unlimited|none]\n");
        return 2;
    }
    ds_error err;
    ds_backend *b = NULL, *cpu = NULL;
    int rc = ds_bench_backend_create(o.backend, o.threads, &b, &err);
    if (!parse_budget(&o, rc == DS_OK && !b->host_memory)) {
        fprintf(stderr, "vae_bench: bad --vram-gib %s\n", o.vram_gib);
        ds_backend_destroy(b);
        return 2;
    }
    if (rc == DS_ERR_UNAVAILABLE)
        return report_failure(&o, "unavailable", err.message, 77);
    if (rc != DS_OK)
        return report_failure(&o, "error", err.message, 1);
    /* Host tensors (the latents and the video) belong to a CPU backend. */
    if (b->host_memory)
        cpu = b;
    else if (ds_cpu_backend_create(1, &cpu, &err) != DS_OK) {
        ds_backend_destroy(b);
        return report_failure(&o, "error", err.message, 1);
    }
    ds_bench_track_allocations(b);

    int code = 1, built = 0, finite = 1;
    ds_loaded_model model;
    ds_vram_manager *mgr = NULL;
    ds_tensor latents = {0}, video = {0};
    float *seeded = NULL;
    double *times = calloc((size_t)o.repeats, sizeof *times);
    ds_golden_model_spec spec = {
        .model_class = "diffsynth.models.wan_video_vae.WanVideoVAE",
        .bounds = ds_golden_bounds_qwen_image_vae,
        .seed = 2027,
    };
    /* The Wan pipeline's tiles (pipelines/wan_video's tile_size / tile_stride defaults). */
    static const ds_wan_video_vae_tiling tiles = {30, 52, 15, 26};
    const int64_t zs[5] = {1, 16, o.frames, o.height / 8, o.width / 8};
    const int64_t vs[5] = {1, 3, 4 * (o.frames - 1) + 1, o.height, o.width};
    if (!times) {
        code = report_failure(&o, "error", "out of memory", 1);
        goto out;
    }
    if (ds_tensor_alloc(cpu, o.dtype, 5, zs, &latents, &err) != DS_OK ||
        ds_tensor_alloc(cpu, o.dtype, 5, vs, &video, &err) != DS_OK) {
        code = report_failure(&o, "error", err.message, 1);
        goto out;
    }
    double build_start = ds_bench_now_s();
    if (ds_golden_model_build(&spec, &model) != 0) {
        code = report_failure(&o, "error", "building the seeded model failed (stderr)", 1);
        goto out;
    }
    built = 1;
    if (o.dtype == DS_BF16)
        ds_golden_model_to_bf16(&model);
    size_t n = (size_t)ds_tensor_numel(&latents);
    seeded = malloc(n * sizeof *seeded);
    if (!seeded) {
        code = report_failure(&o, "error", "out of memory", 1);
        goto out;
    }
    ds_seeded_fill("wan_vae.bench_latents", 2027, 2.0, 0.0f, seeded, n);
    ds_convert_from_f32(seeded, n, o.dtype, latents.data);
    fprintf(stderr, "vae_bench: model and latents built in %.1f s\n",
            ds_bench_now_s() - build_start);
    if (o.managed) {
        if (ds_vram_manager_create(b, o.budget, 2, &mgr, &err) != DS_OK) {
            code = report_failure(&o, "error", err.message, 1);
            goto out;
        }
        /* Resident after one copy: no pinned image of the weights at rest. */
        if (o.budget == DS_VRAM_UNLIMITED)
            ds_vram_set_host_limit(mgr, 0);
    }
    ds_step_context ctx = {.backend = b, .vram = mgr};
    for (int r = -o.warmup; r < o.repeats; r++) {
        if (r == 0)
            ds_bench_alloc_reset_peak();
        /* An output left unwritten is no measurement: poison it before every call. */
        memset(video.data, 0xff, ds_tensor_nbytes(&video));
        double start = ds_bench_now_s();
        rc = ds_wan_video_vae_decode(&model, &ctx, o.tiled ? &tiles : NULL, &latents, &video,
                                     &err);
        if (rc == DS_OK && b->stream_synchronize)
            rc = b->stream_synchronize(b, NULL, &err);
        if (rc != DS_OK) {
            code = report_failure(&o, "error", err.message, 1);
            goto out;
        }
        if (r >= 0)
            times[r] = ds_bench_now_s() - start;
    }
    for (uint64_t i = 0; i < ds_tensor_numel(&video) && finite; i++)
        finite = isfinite(ds_load_f64(video.data, video.dtype, i));
    int lost = 0;
    size_t peak = ds_bench_alloc_peak(&lost);
    double median = ds_bench_median(times, (size_t)o.repeats);
    print_head(&o, finite ? "ok" : "bad_output");
    printf(", \"warmup\": %d, \"repeats\": %d, \"median_s\": %.3f, \"min_s\": %.3f, "
           "\"alloc_peak_bytes\": %zu",
           o.warmup, o.repeats, median, times[0], peak);
    if (lost)
        printf(", \"alloc_peak_note\": \"a lower bound (the table could not grow)\"");
    ds_bench_print_device_used(b);
    if (mgr) {
        ds_vram_stats st;
        ds_vram_stats_get(mgr, &st);
        printf(", \"vram_peak_bytes\": %zu", st.peak_bytes);
    }
    printf(", \"memory\": \"alloc_peak_bytes: most bytes live at once through the backend's "
           "alloc slot over the timed decodes (weights copied in, activations, tiles; not the "
           "ops' scratch); device_used_bytes: the device's used memory after them, scratch and "
           "the CUDA context included\", \"timing\": \"monotonic clock around one decode + stream "
           "synchronize\"}\n");
    fflush(stdout);
    code = finite ? 0 : 1;
out:
    /* The manager first: it holds the weights' device copies and points at the host ones. */
    ds_vram_manager_destroy(mgr);
    if (built)
        ds_golden_model_free(&model);
    free(seeded);
    free(times);
    ds_tensor_free(&latents);
    ds_tensor_free(&video);
    ds_bench_untrack_allocations(b);
    if (cpu != b)
        ds_backend_destroy(cpu);
    ds_backend_destroy(b);
    return code;
}
