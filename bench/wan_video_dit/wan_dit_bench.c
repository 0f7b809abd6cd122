/* bench/wan_video_dit: one forward of the Wan video DiT (ds_wan_video_dit_forward, the
 * pipeline's model_fn_wan_video on the text-to-video path), timed, one JSON line.
 * upstream_anchor.py takes the same arguments and times upstream DiffSynth-Studio's own
 * WanModel + model_fn_wan_video, so run.sh prints ours / upstream measured in the same run.
 *
 * usage: wan_dit_bench [options]
 *   --backend cpu|cuda   (default cpu)
 *   --threads N          CPU worker threads (0 = all CPUs; ignored by cuda)
 *   --dtype f32|bf16     weights, inputs and compute (default f32)
 *   --model 1.3b|14b     the config row: Wan2.1-T2V-1.3B (dim 1536, ffn 8960, 12 heads, 30
 *                        blocks) or Wan2.1-T2V-14B (dim 5120, ffn 13824, 40 heads, 40 blocks)
 *   --layers N           blocks (default 2) at the row's width
 *   --frames F --height H --width W   the latent video (default 5 x 32 x 32: 1280 tokens);
 *                        H and W even; latents [1, 16, F, H, W]
 *   --text-tokens L      context [1, L, 4096] (default 512, the pipeline's padded prompt)
 *   --warmup N --repeats N   untimed, then timed forwards; the median is reported
 *   --vram-gib G|unlimited   run through a VRAM manager with this budget (GiB, as upstream's
 *                        vram_limit; 0 streams every unit), the step context's `vram`
 *   --vram-config JSON   upstream's eight vram_config fields (ds_vram_config_parse; the
 *                        computation pair defaults to --dtype on the backend's device), set on
 *                        the model: offload / onload / preparing float8_e4m3fn keep the
 *                        manager's slow tier and the Linear weights' fast tier in fp8
 *   --prefetch N         the manager's prefetch depth (default 2)
 *
 * The weights are bench/common's deterministic fill of the class's declared tree for the row's
 * kwargs with num_layers N. Without --vram-gib, a backend other than the CPU uploads them block
 * by block inside every call, and that is part of the time; with it, the warm-up copies in
 * what the budget holds and each timed forward copies the rest again (an unlimited manager
 * keeps every unit resident after the warm-up and no copy at rest in host memory). Device
 * memory: every allocation through the backend's alloc slot is counted (alloc_peak_bytes over
 * the timed forwards, bench/common/alloc_tracker.h), and the manager's own peak and the bytes
 * it copied per forward are printed. flops: the forward's multiply-adds x 2 (every Linear and
 * the attentions' two products).
 * Exit status: 0 measured, 77 backend unavailable, 1 any other error, 2 bad options. */
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
#include "models/wan_video_dit.h"
#include "vram/vram_config.h"
#include "vram/vram_manager.h"

#define WAN_CLASS "diffsynth.models.wan_video_dit.WanModel"
#define TEXT_DIM 4096.0

/* The config rows (upstream's table) whose kwargs differ only in width, FFN and heads. */
typedef struct wan_size {
    const char *name; /* --model */
    const char *model;
    int dim, ffn, heads;
} wan_size;

static const wan_size sizes[] = {
    {"1.3b", "WanModel-1.3B", 1536, 8960, 12},  /* Wan2.1-T2V-1.3B, 9269f8db... */
    {"14b", "WanModel-14B", 5120, 13824, 40},   /* Wan2.1-T2V-14B, aafcfd96... */
};

#define WAN_KWARGS                                                                                \
    "{\"has_image_input\": false, \"patch_size\": [1, 2, 2], \"in_dim\": 16, \"dim\": %d, "    \
    "\"ffn_dim\": %d, \"freq_dim\": 256, \"text_dim\": 4096, \"out_dim\": 16, "                \
    "\"num_heads\": %d, \"num_layers\": %d, \"eps\": 1e-06}"

typedef struct options {
    const char *backend;
    int threads;
    ds_dtype dtype;
    const wan_size *size;
    int layers, frames, height, width, text_tokens;
    int warmup, repeats;
    int managed;          /* --vram-gib given */
    size_t budget;        /* its bytes; DS_VRAM_UNLIMITED */
    const char *vram_gib; /* as given, for the JSON line */
    const char *vram_config;
    int prefetch;
} options;

static int64_t tokens(const options *o)
{
    return (int64_t)o->frames * (o->height / 2) * (o->width / 2);
}

/* Multiply-adds x 2 of one forward (see the header). */
static double forward_flops(const options *o)
{
    double n = (double)tokens(o), l = o->text_tokens, d = o->size->dim, ffn = o->size->ffn;
    double per_block = 2.0 * n * d * (4 * d + 2 * d + 2 * ffn) /* self q k v o, cross q o, FFN */
                       + 2.0 * l * d * 2 * d                    /* cross k v */
                       + 4.0 * n * n * d + 4.0 * n * l * d;     /* the two attentions */
    double outer = 2.0 * n * 64 * d + 2.0 * l * (TEXT_DIM * d + d * d) + 2.0 * n * d * 64;
    return o->layers * per_block + outer;
}

static void print_head(const options *o, const char *status)
{
    printf("{\"impl\": \"ours\", \"backend\": ");
    ds_bench_print_json_string(o->backend);
    printf(", \"model\": \"%s\", \"layers\": %d, \"dtype\": \"%s\", \"frames\": %d, "
           "\"height\": %d, \"width\": %d, \"tokens\": %lld, \"text_tokens\": %d, "
           "\"threads\": %d, \"vram_limit_gib\": ",
           o->size->model, o->layers, ds_dtype_name(o->dtype), o->frames, o->height, o->width,
           (long long)tokens(o), o->text_tokens, o->threads);
    if (!o->managed)
        printf("null");
    else if (o->budget == DS_VRAM_UNLIMITED)
        printf("\"unlimited\"");
    else
        printf("%s", o->vram_gib);
    printf(", \"vram_config\": ");
    if (o->vram_config)
        ds_bench_print_json_string(o->vram_config);
    else
        printf("null");
    printf(", \"status\": \"%s\"", status);
    ds_bench_print_gemm(o->backend);
}

static int report_failure(const options *o, const char *status, const char *message, int code)
{
    print_head(o, status);
    printf(", \"message\": ");
    ds_bench_print_json_string(message);
    printf("}\n");
    fflush(stdout);
    return code;
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.backend = "cpu", .dtype = DS_F32, .size = &sizes[0], .layers = 2,
                   .frames = 5, .height = 32, .width = 32, .text_tokens = 512, .warmup = 1,
                   .repeats = 5, .prefetch = 2};
    struct { const char *name; int *value; } ints[] = {
        {"--threads", &o->threads}, {"--layers", &o->layers}, {"--frames", &o->frames},
        {"--height", &o->height}, {"--width", &o->width}, {"--text-tokens", &o->text_tokens},
        {"--warmup", &o->warmup}, {"--repeats", &o->repeats}, {"--prefetch", &o->prefetch},
    };
    for (int i = 1; i < argc; i += 2) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        size_t j = 0;
        if (!v)
            return 0;
        while (j < sizeof ints / sizeof ints[0] && strcmp(k, ints[j].name) != 0)
            j++;
        if (j < sizeof ints / sizeof ints[0]) {
            *ints[j].value = atoi(v);
        } else if (strcmp(k, "--backend") == 0) {
            o->backend = v;
        } else if (strcmp(k, "--dtype") == 0 &&
                   (strcmp(v, "f32") == 0 || strcmp(v, "bf16") == 0)) {
            o->dtype = strcmp(v, "f32") == 0 ? DS_F32 : DS_BF16;
        } else if (strcmp(k, "--model") == 0) {
            size_t m = 0;
            while (m < sizeof sizes / sizeof sizes[0] && strcmp(v, sizes[m].name) != 0)
                m++;
            if (m == sizeof sizes / sizeof sizes[0])
                return 0;
            o->size = &sizes[m];
        } else if (strcmp(k, "--vram-gib") == 0) {
            o->managed = 1;
            o->vram_gib = v;
            if (strcmp(v, "unlimited") == 0) {
                o->budget = DS_VRAM_UNLIMITED;
            } else {
                char *end;
                double gib = strtod(v, &end);
                ds_error ignored;
                if (end == v || *end || !(gib >= 0) ||
                    ds_vram_limit_bytes(gib, &o->budget, &ignored) != DS_OK)
                    return 0;
            }
        } else if (strcmp(k, "--vram-config") == 0) {
            o->vram_config = v;
        } else {
            return 0;
        }
    }
    return o->layers >= 1 && o->frames >= 1 && o->height >= 2 && o->width >= 2 &&
           o->height % 2 == 0 && o->width % 2 == 0 && o->text_tokens >= 1 && o->warmup >= 0 &&
           o->repeats >= 1 && o->threads >= 0 && o->prefetch >= 0 && o->prefetch <= 8 &&
           (!o->vram_config || o->managed);
}

/* What the timed forwards used (the warm-up excluded). */
typedef struct memory {
    size_t alloc_peak;     /* most bytes live at once through the backend's alloc slot */
    int alloc_lost;        /* the tracker lost count: alloc_peak is a lower bound */
    size_t vram_peak;      /* the manager's peak (resident + activations + cached) */
    double moved, copy_s;  /* the manager's bytes copied in and copy time, per forward */
} memory;

/* The timed forwards into samples; the output's finiteness into *finite, the memory they used
 * into *mem. */
static int measure(const options *o, ds_backend *b, ds_backend *cpu, const ds_loaded_model *m,
                   ds_vram_manager *mgr, double *samples, int *finite, memory *mem,
                   ds_error *err)
{
    const int64_t lat_shape[5] = {1, 16, o->frames, o->height, o->width};
    const int64_t ctx_shape[3] = {1, o->text_tokens, 4096};
    float t_value = 500.0f;
    ds_tensor t = ds_tensor_wrap(cpu, DS_F32, 1, (const int64_t[]){1}, &t_value);
    ds_tensor lat = {0}, ctx = {0}, noise = {0};
    ds_wan_video_dit_inputs in = {.latents = &lat, .timestep = &t, .context = &ctx,
                                  .vace_scale = 1.0f};
    ds_step_context sc = {.backend = b, .vram = mgr};
    ds_vram_stats before = {0}, after = {0};
    int rc;
    if ((rc = ds_bench_input_tensor(cpu, o->dtype, 5, lat_shape, 1, &lat, err)) != DS_OK ||
        (rc = ds_bench_input_tensor(cpu, o->dtype, 3, ctx_shape, 2, &ctx, err)) != DS_OK ||
        (rc = ds_tensor_alloc(cpu, o->dtype, 5, lat_shape, &noise, err)) != DS_OK)
        goto out;
    for (int r = -o->warmup; r < o->repeats; r++) {
        if (r == 0) {
            ds_bench_alloc_reset_peak();
            if (mgr)
                ds_vram_stats_get(mgr, &before);
        }
        /* An output left unwritten is no measurement: poison it before every call. */
        memset(noise.data, 0xff, ds_tensor_nbytes(&noise));
        double start = ds_bench_now_s();
        rc = ds_wan_video_dit_forward(m, &sc, &in, &noise, err);
        if (rc == DS_OK && b->stream_synchronize)
            rc = b->stream_synchronize(b, NULL, err);
        if (rc != DS_OK)
            goto out;
        if (r >= 0)
            samples[r] = ds_bench_now_s() - start;
    }
    mem->alloc_peak = ds_bench_alloc_peak(&mem->alloc_lost);
    if (mgr) {
        ds_vram_stats_get(mgr, &after);
        mem->vram_peak = after.peak_bytes;
        mem->moved = (double)(after.bytes_moved - before.bytes_moved) / o->repeats;
        mem->copy_s = (after.copy_seconds - before.copy_seconds) / o->repeats;
    }
    *finite = 1;
    for (uint64_t i = 0; i < ds_tensor_numel(&noise) && *finite; i++)
        *finite = isfinite(ds_load_f64(noise.data, noise.dtype, i));
out:
    ds_tensor_free(&lat);
    ds_tensor_free(&ctx);
    ds_tensor_free(&noise);
    return rc;
}

static const char *weights_note(const options *o, const ds_backend *b, const ds_backend *cpu)
{
    if (o->managed)
        return o->budget == DS_VRAM_UNLIMITED
                   ? "host; a VRAM manager with no limit: copied in once (warm-up), then resident"
                   : "host; a VRAM manager under the budget: what it does not hold is copied in "
                     "again every forward";
    return b == cpu ? "host, in place" : "host, uploaded block by block in every forward";
}

int main(int argc, char **argv)
{
    options o;
    if (!parse_args(argc, argv, &o)) {
        fprintf(stderr, "usage: wan_dit_bench [--backend cpu|cuda] [--threads N] "
                        "[--dtype f32|bf16] [--model 1.3b|14b] [--layers N] [--frames F] "
                        "[--height H] [--width W] [--text-tokens L] [--warmup N] [--repeats N] "
                        "[--vram-gib G|unlimited [--vram-config JSON] [--prefetch N]]\n");
        return 2;
    }
    ds_error err;
    ds_backend *b = NULL, *cpu = NULL;
    int rc = strcmp(o.backend, "cuda") == 0 ? ds_cuda_backend_create(0, &b, &err)
                                            : ds_cpu_backend_create(o.threads, &b, &err);
    if (rc == DS_ERR_UNAVAILABLE)
        return report_failure(&o, "unavailable", err.message, 77);
    if (rc != DS_OK)
        return report_failure(&o, "error", err.message, 1);
    /* Host tensors (the step's inputs and output) belong to a CPU backend. */
    if (b->host_memory)
        cpu = b;
    else if (ds_cpu_backend_create(1, &cpu, &err) != DS_OK) {
        ds_backend_destroy(b);
        return report_failure(&o, "error", err.message, 1);
    }
    ds_bench_track_allocations(b);

    int code = 1, finite = 0, built = 0;
    char kwargs[512];
    ds_loaded_model model;
    ds_vram_manager *mgr = NULL;
    ds_vram_config vcfg = {0};
    memory mem = {0};
    size_t weight_bytes = 0;
    double *samples = calloc((size_t)o.repeats, sizeof *samples);
    if (!samples) {
        code = report_failure(&o, "error", "out of memory", 1);
        goto out;
    }
    if (o.vram_config &&
        ds_vram_config_parse(o.vram_config, o.dtype,
                             b == cpu ? DS_VRAM_DEVICE_CPU : DS_VRAM_DEVICE_CUDA, &vcfg,
                             &err) != DS_OK) {
        ds_error_prefix(&err, "--vram-config: ");
        code = report_failure(&o, "error", err.message, 2);
        goto out;
    }
    double build_start = ds_bench_now_s();
    snprintf(kwargs, sizeof kwargs, WAN_KWARGS, o.size->dim, o.size->ffn, o.size->heads,
             o.layers);
    if (ds_bench_build_model(WAN_CLASS, kwargs, NULL, 0, o.dtype, &model, &weight_bytes,
                             &err) != DS_OK) {
        code = report_failure(&o, "error", err.message, 1);
        goto out;
    }
    built = 1;
    model.vram_config = vcfg;
    fprintf(stderr, "wan_dit_bench: %s, %d layers, %.2f GB of weights built in %.1f s\n",
            o.size->model, o.layers, (double)weight_bytes * 1e-9, ds_bench_now_s() - build_start);
    if (o.managed) {
        if (ds_vram_manager_create(b, o.budget, o.prefetch, &mgr, &err) != DS_OK) {
            code = report_failure(&o, "error", err.message, 1);
            goto out;
        }
        /* Resident after one copy: a pinned image of every unit at rest would only double the
         * host memory this process needs. */
        if (o.budget == DS_VRAM_UNLIMITED)
            ds_vram_set_host_limit(mgr, 0);
    }
    if (measure(&o, b, cpu, &model, mgr, samples, &finite, &mem, &err) != DS_OK) {
        code = report_failure(&o, "error", err.message, 1);
        goto out;
    }
    double median = ds_bench_median(samples, (size_t)o.repeats), flops = forward_flops(&o);
    print_head(&o, finite ? "ok" : "bad_output");
    printf(", \"warmup\": %d, \"repeats\": %d, \"median_ms\": %.3f, \"min_ms\": %.3f, "
           "\"flops\": %.6g, \"tflops\": %.6g, \"weight_bytes\": %zu, \"alloc_peak_bytes\": %zu",
           o.warmup, o.repeats, median * 1e3, samples[0] * 1e3, flops, flops / median * 1e-12,
           weight_bytes, mem.alloc_peak);
    if (mem.alloc_lost)
        printf(", \"alloc_peak_note\": \"a lower bound (the table could not grow)\"");
    ds_bench_print_device_used(b);
    if (mgr) {
        printf(", \"prefetch\": %d, \"vram_peak_bytes\": %zu", o.prefetch, mem.vram_peak);
        ds_bench_print_number("moved_bytes_per_forward", mem.moved, "%.0f");
        ds_bench_print_number("copy_ms_per_forward", mem.copy_s * 1e3, "%.3f");
    }
    printf(", \"weights\": ");
    ds_bench_print_json_string(weights_note(&o, b, cpu));
    printf(", \"memory\": \"alloc_peak_bytes: most bytes live at once through the backend's "
           "alloc slot over the timed forwards (weights copied in, activations; not the ops' "
           "scratch); device_used_bytes: the device's used memory after them, scratch and the "
           "CUDA context included\", \"timing\": \"monotonic clock around one forward + stream "
           "synchronize\"}\n");
    fflush(stdout);
    code = finite ? 0 : 1;
out:
    /* The manager first: it holds the weights' device copies and points at the host ones. */
    ds_vram_manager_destroy(mgr);
    if (built)
        ds_bench_free_model(&model);
    free(samples);
    ds_bench_untrack_allocations(b);
    if (cpu != b)
        ds_backend_destroy(cpu);
    ds_backend_destroy(b);
    return code;
}
