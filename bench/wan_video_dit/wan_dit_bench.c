/* bench/wan_video_dit: one forward of the Wan video DiT (ds_wan_video_dit_forward, the
 * pipeline's model_fn_wan_video on the text-to-video path), timed, one JSON line.
 * upstream_anchor.py takes the same arguments and times upstream DiffSynth-Studio's own
 * WanModel + model_fn_wan_video, so run.sh prints ours / upstream measured in the same run.
 *
 * usage: wan_dit_bench [options]
 *   --backend cpu|cuda   (default cpu)
 *   --threads N          CPU worker threads (0 = all CPUs; ignored by cuda)
 *   --dtype f32|bf16     weights, inputs and compute (default f32)
 *   --layers N           blocks (default 2; Wan2.1-T2V-1.3B has 30) at the 1.3B width
 *   --frames F --height H --width W   the latent video (default 5 x 32 x 32: 1280 tokens);
 *                        H and W even; latents [1, 16, F, H, W]
 *   --text-tokens L      context [1, L, 4096] (default 512, the pipeline's padded prompt)
 *   --warmup N --repeats N   untimed, then timed forwards; the median is reported
 *
 * The weights are bench/common's deterministic fill of the class's declared tree for
 * Wan2.1-T2V-1.3B's kwargs with num_layers N. On a backend other than the CPU the forward
 * uploads them block by block inside every call, and that is part of the time. flops: the
 * forward's multiply-adds x 2 (every Linear and the attentions' two products).
 * Exit status: 0 measured, 77 backend unavailable, 1 any other error. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/common/bench_model.h"
#include "bench/common/bench_util.h"
#include "core/dtype.h"
#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/wan_video_dit.h"

#define WAN_CLASS "diffsynth.models.wan_video_dit.WanModel"
/* Wan2.1-T2V-1.3B's row (9269f8db...) but num_layers. */
#define WAN_1_3B_KWARGS                                                                          \
    "{\"has_image_input\": false, \"patch_size\": [1, 2, 2], \"in_dim\": 16, \"dim\": 1536, "  \
    "\"ffn_dim\": 8960, \"freq_dim\": 256, \"text_dim\": 4096, \"out_dim\": 16, "              \
    "\"num_heads\": 12, \"num_layers\": %d, \"eps\": 1e-06}"
#define DIM 1536.0
#define FFN 8960.0
#define TEXT_DIM 4096.0

typedef struct options {
    const char *backend;
    int threads;
    ds_dtype dtype;
    int layers, frames, height, width, text_tokens;
    int warmup, repeats;
} options;

static int64_t tokens(const options *o)
{
    return (int64_t)o->frames * (o->height / 2) * (o->width / 2);
}

/* Multiply-adds x 2 of one forward (see the header). */
static double forward_flops(const options *o)
{
    double n = (double)tokens(o), l = o->text_tokens, d = DIM;
    double per_block = 2.0 * n * d * (4 * d + 2 * d + 2 * FFN) /* self q k v o, cross q o, FFN */
                       + 2.0 * l * d * 2 * d                    /* cross k v */
                       + 4.0 * n * n * d + 4.0 * n * l * d;     /* the two attentions */
    double outer = 2.0 * n * 64 * d + 2.0 * l * (TEXT_DIM * d + d * d) + 2.0 * n * d * 64;
    return o->layers * per_block + outer;
}

static void print_head(const options *o, const char *status)
{
    printf("{\"impl\": \"ours\", \"backend\": ");
    ds_bench_print_json_string(o->backend);
    printf(", \"model\": \"WanModel-1.3B\", \"layers\": %d, \"dtype\": \"%s\", \"frames\": %d, "
           "\"height\": %d, \"width\": %d, \"tokens\": %lld, \"text_tokens\": %d, "
           "\"threads\": %d, \"status\": \"%s\"",
           o->layers, ds_dtype_name(o->dtype), o->frames, o->height, o->width,
           (long long)tokens(o), o->text_tokens, o->threads, status);
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
    *o = (options){.backend = "cpu", .dtype = DS_F32, .layers = 2, .frames = 5, .height = 32,
                   .width = 32, .text_tokens = 512, .warmup = 1, .repeats = 5};
    struct { const char *name; int *value; } ints[] = {
        {"--threads", &o->threads}, {"--layers", &o->layers}, {"--frames", &o->frames},
        {"--height", &o->height}, {"--width", &o->width}, {"--text-tokens", &o->text_tokens},
        {"--warmup", &o->warmup}, {"--repeats", &o->repeats},
    };
    for (int i = 1; i < argc; i += 2) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        size_t j = 0;
        if (!v)
            return 0;
        while (j < sizeof ints / sizeof ints[0] && strcmp(k, ints[j].name) != 0)
            j++;
        if (j < sizeof ints / sizeof ints[0])
            *ints[j].value = atoi(v);
        else if (strcmp(k, "--backend") == 0)
            o->backend = v;
        else if (strcmp(k, "--dtype") == 0 && (strcmp(v, "f32") == 0 || strcmp(v, "bf16") == 0))
            o->dtype = strcmp(v, "f32") == 0 ? DS_F32 : DS_BF16;
        else
            return 0;
    }
    return o->layers >= 1 && o->frames >= 1 && o->height >= 2 && o->width >= 2 &&
           o->height % 2 == 0 && o->width % 2 == 0 && o->text_tokens >= 1 && o->warmup >= 0 &&
           o->repeats >= 1 && o->threads >= 0;
}

/* The timed forwards into samples; the output's finiteness into *finite. */
static int measure(const options *o, ds_backend *b, ds_backend *cpu, const ds_loaded_model *m,
                   double *samples, int *finite, ds_error *err)
{
    const int64_t lat_shape[5] = {1, 16, o->frames, o->height, o->width};
    const int64_t ctx_shape[3] = {1, o->text_tokens, 4096};
    float t_value = 500.0f;
    ds_tensor t = ds_tensor_wrap(cpu, DS_F32, 1, (const int64_t[]){1}, &t_value);
    ds_tensor lat = {0}, ctx = {0}, noise = {0};
    ds_wan_video_dit_inputs in = {.latents = &lat, .timestep = &t, .context = &ctx,
                                  .vace_scale = 1.0f};
    ds_step_context sc = {.backend = b};
    int rc;
    if ((rc = ds_bench_input_tensor(cpu, o->dtype, 5, lat_shape, 1, &lat, err)) != DS_OK ||
        (rc = ds_bench_input_tensor(cpu, o->dtype, 3, ctx_shape, 2, &ctx, err)) != DS_OK ||
        (rc = ds_tensor_alloc(cpu, o->dtype, 5, lat_shape, &noise, err)) != DS_OK)
        goto out;
    for (int r = -o->warmup; r < o->repeats; r++) {
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
    *finite = 1;
    for (uint64_t i = 0; i < ds_tensor_numel(&noise) && *finite; i++)
        *finite = isfinite(ds_load_f64(noise.data, noise.dtype, i));
out:
    ds_tensor_free(&lat);
    ds_tensor_free(&ctx);
    ds_tensor_free(&noise);
    return rc;
}

int main(int argc, char **argv)
{
    options o;
    if (!parse_args(argc, argv, &o)) {
        fprintf(stderr, "usage: wan_dit_bench [--backend cpu|cuda] [--threads N] "
                        "[--dtype f32|bf16] [--layers N] [--frames F] [--height H] [--width W] "
                        "[--text-tokens L] [--warmup N] [--repeats N]\n");
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

    int code = 1, finite = 0;
    char kwargs[512];
    ds_loaded_model model;
    double *samples = calloc((size_t)o.repeats, sizeof *samples);
    double build_start = ds_bench_now_s();
    snprintf(kwargs, sizeof kwargs, WAN_1_3B_KWARGS, o.layers);
    if (!samples || ds_bench_build_model(WAN_CLASS, kwargs, NULL, 0, o.dtype, &model, NULL,
                                         &err) != DS_OK) {
        code = report_failure(&o, "error", samples ? err.message : "out of memory", 1);
        goto out;
    }
    fprintf(stderr, "wan_dit_bench: %d layers built in %.1f s\n", o.layers,
            ds_bench_now_s() - build_start);
    if (measure(&o, b, cpu, &model, samples, &finite, &err) != DS_OK) {
        code = report_failure(&o, "error", err.message, 1);
    } else {
        double median = ds_bench_median(samples, (size_t)o.repeats), flops = forward_flops(&o);
        print_head(&o, finite ? "ok" : "bad_output");
        printf(", \"warmup\": %d, \"repeats\": %d, \"median_ms\": %.3f, \"min_ms\": %.3f, "
               "\"flops\": %.6g, \"tflops\": %.6g, \"weights\": \"%s\", "
               "\"timing\": \"monotonic clock around one forward + stream synchronize\"}\n",
               o.warmup, o.repeats, median * 1e3, samples[0] * 1e3, flops,
               flops / median * 1e-12,
               b == cpu ? "host, in place" : "host, uploaded block by block in every forward");
        fflush(stdout);
        code = finite ? 0 : 1;
    }
    ds_bench_free_model(&model);
out:
    free(samples);
    if (cpu != b)
        ds_backend_destroy(cpu);
    ds_backend_destroy(b);
    return code;
}
