/* bench/qwen_image_dit: one forward of the Qwen-Image DiT (ds_qwen_image_dit_forward, the
 * pipeline's model_fn_qwen_image on the text-to-image path), timed, one JSON line.
 * upstream_anchor.py takes the same arguments and times upstream DiffSynth-Studio's own
 * QwenImageDiT + model_fn_qwen_image, so run.sh can print ours / upstream measured in the same
 * run (DESIGN §7).
 *
 * usage: dit_bench [options]
 *   --backend cpu|cuda   (default cpu)
 *   --threads N          CPU worker threads (0 = all CPUs; ignored by cuda)
 *   --dtype f32|bf16     weights, inputs and compute (default f32)
 *   --weights-dtype D    the weights' dtype when it differs from --dtype (bf16 files at f32)
 *   --vram-limit none    run through a VRAM manager without a limit (CPU: Linear weights of
 *                        another dtype are converted once, in the warm-up; default: no manager)
 *   --layers N           transformer blocks (default 2; the released model has 60)
 *   --height H --width W image size in pixels, multiples of 16 (default 256 x 256: 256 image
 *                        tokens); latents are [1, 16, H/8, W/8]
 *   --text-tokens L      prompt_emb [1, L, 3584] (default 32)
 *   --warmup N           untimed forwards first (default 1)
 *   --repeats N          timed forwards; the median is reported (default 5)
 *
 * output_fnv1a64 is a hash of the last forward's output bytes, so two builds (or two ways of
 * holding the weights) can be shown to compute the same bits.
 *
 * The model is the class's declared tree (ds_model_class_declare with {"num_layers": N}) built
 * in memory, every view pointing at a buffer of cheap deterministic values: a fixed table of
 * uniform values in [-0.02, 0.02] tiled at a per-tensor offset (norm weights: 1 + that), which
 * times like real weights (no zeros, no denormals) and fills 40 GB of a 60-layer model at memcpy
 * speed. Inputs are uniform in [-1.7, 1.7] (unit variance); the timestep is 500.
 *
 * On the CPU backend the weights are used in place; on another backend the forward uploads them
 * block by block inside every call (models/weight_set.h), and that upload is part of the time,
 * as it is of a step the daemon runs. flops: the forward's multiply-adds x 2 (every Linear and
 * the attention's two products, 4 S^2 D per block), for TFLOP/s against the GEMM ceiling.
 * Exit status: 0 measured, 77 backend unavailable, 1 any other error; every outcome prints its
 * JSON line. */
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
#include "models/model_class.h"
#include "models/qwen_image_dit.h"
#include "vram/vram_manager.h"

#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"
#define DIM 3072.0
#define TEXT_DIM 3584.0

typedef struct options {
    const char *backend;
    int threads;
    ds_dtype dtype;
    ds_dtype weights_dtype; /* DS_DTYPE_INVALID: dtype */
    int vram;               /* through a manager without a limit */
    int layers;
    int height, width, text_tokens;
    int warmup, repeats;
} options;

static int64_t image_tokens(const options *o) { return (int64_t)(o->height / 16) * (o->width / 16); }

/* Multiply-adds x 2 of one forward at batch 1 (see the header). */
static double forward_flops(const options *o)
{
    double si = (double)image_tokens(o), st = o->text_tokens, s = si + st, d = DIM;
    double per_block = 2.0 * s * d * (3 * d + d + 4 * d + 4 * d) /* qkv, out, MLP up + down */
                       + 4.0 * s * s * d                           /* QK^T and PV */
                       + 2.0 * 2.0 * d * 6 * d;                    /* img_mod, txt_mod */
    double outer = 2.0 * si * 64 * d + 2.0 * st * TEXT_DIM * d     /* img_in, txt_in */
                   + 2.0 * (256 * d + d * d) + 2.0 * d * 2 * d     /* timestep MLP, norm_out */
                   + 2.0 * si * d * 64;                            /* proj_out */
    return o->layers * per_block + outer;
}

static void print_head(const options *o, const char *status)
{
    printf("{\"impl\": \"ours\", \"backend\": ");
    ds_bench_print_json_string(o->backend);
    printf(", \"model\": \"QwenImageDiT\", \"layers\": %d, \"dtype\": \"%s\", \"height\": %d, "
           "\"width\": %d, \"image_tokens\": %lld, \"text_tokens\": %d, \"threads\": %d, "
           "\"status\": \"%s\"",
           o->layers, ds_dtype_name(o->dtype), o->height, o->width,
           (long long)image_tokens(o), o->text_tokens, o->threads, status);
    ds_bench_print_gemm(o->backend);
}

static int report_failure(const options *o, const char *status, const char *message, int code)
{
    print_head(o, status);
    return ds_bench_end_with_message(message, code);
}


static void usage(void)
{
    fprintf(stderr, "usage: dit_bench [--backend cpu|cuda] [--threads N] [--dtype f32|bf16] "
                    "[--weights-dtype f32|bf16] [--vram-limit none] [--layers N] [--height H] "
                    "[--width W] [--text-tokens L] [--warmup N] [--repeats N]\n");
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.backend = "cpu", .dtype = DS_F32, .layers = 2, .height = 256, .width = 256,
                   .text_tokens = 32, .warmup = 1, .repeats = 5};
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
        } else if (strcmp(k, "--vram-limit") == 0) {
            if (strcmp(v, "none") != 0)
                return 0;
            o->vram = 1;
        } else if (strcmp(k, "--layers") == 0)
            o->layers = atoi(v);
        else if (strcmp(k, "--height") == 0)
            o->height = atoi(v);
        else if (strcmp(k, "--width") == 0)
            o->width = atoi(v);
        else if (strcmp(k, "--text-tokens") == 0)
            o->text_tokens = atoi(v);
        else
            return 0;
    }
    return o->layers >= 1 && o->height >= 16 && o->width >= 16 && o->height % 16 == 0 &&
           o->width % 16 == 0 && o->text_tokens >= 1 && o->warmup >= 0 && o->repeats >= 1 &&
           o->threads >= 0;
}

int main(int argc, char **argv)
{
    options o;
    if (!parse_args(argc, argv, &o)) {
        usage();
        return 2;
    }
    ds_error err;
    ds_backend *b = NULL, *cpu = NULL;
    int rc = ds_bench_backend_create(o.backend, o.threads, &b, &err);
    if (rc == DS_ERR_INVALID_ARGUMENT) {
        usage();
        return 2;
    }
    if (rc == DS_ERR_UNAVAILABLE)
        return report_failure(&o, "unavailable", err.message, 77);
    if (rc != DS_OK)
        return report_failure(&o, "error", err.message, 1);
    /* Host tensors (the step's inputs and output) belong to a CPU backend. */
    if (strcmp(o.backend, "cpu") == 0)
        cpu = b;
    else if (ds_cpu_backend_create(1, &cpu, &err) != DS_OK) {
        ds_backend_destroy(b);
        return report_failure(&o, "error", err.message, 1);
    }

    int code = 1;
    char kwargs[64];
    ds_loaded_model model;
    ds_tensor lat = {0}, emb = {0}, noise = {0};
    ds_vram_manager *mgr = NULL;
    double *samples = calloc((size_t)o.repeats, sizeof *samples);
    double build_start = ds_bench_now_s();
    snprintf(kwargs, sizeof kwargs, "{\"num_layers\": %d}", o.layers);
    if (!samples) {
        code = report_failure(&o, "error", "out of memory for the samples", 1);
        goto out_backend;
    }
    ds_dtype wdt = o.weights_dtype != DS_DTYPE_INVALID ? o.weights_dtype : o.dtype;
    if (ds_bench_build_model(DIT_CLASS, kwargs, NULL, 0, wdt, &model, NULL, &err) != DS_OK) {
        code = report_failure(&o, "error", err.message, 1);
        free(samples);
        goto out_backend;
    }
    fprintf(stderr, "dit_bench: %d layers built in %.1f s\n", o.layers, ds_bench_now_s() - build_start);

    const int64_t lat_shape[4] = {1, 16, o.height / 8, o.width / 8};
    const int64_t emb_shape[3] = {1, o.text_tokens, 3584};
    float t_value = 500.0f;
    ds_tensor t = ds_tensor_wrap(cpu, DS_F32, 1, (const int64_t[]){1}, &t_value);
    if (ds_bench_input_tensor(cpu, o.dtype, 4, lat_shape, 1, &lat, &err) != DS_OK ||
        ds_bench_input_tensor(cpu, o.dtype, 3, emb_shape, 2, &emb, &err) != DS_OK ||
        ds_tensor_alloc(cpu, o.dtype, 4, lat_shape, &noise, &err) != DS_OK) {
        code = report_failure(&o, "error", err.message, 1);
        goto out;
    }
    if (o.vram && ds_vram_manager_create(b, DS_VRAM_UNLIMITED, 2, &mgr, &err) != DS_OK) {
        code = report_failure(&o, "error", err.message, 1);
        goto out;
    }
    ds_step_context ctx = {.backend = b, .vram = mgr};
    for (int r = -o.warmup; r < o.repeats; r++) {
        /* An output left unwritten is no measurement: poison it before every call. */
        memset(noise.data, 0xff, ds_tensor_nbytes(&noise));
        double start = ds_bench_now_s();
        rc = ds_qwen_image_dit_forward(&model, &ctx, &lat, &emb, NULL, &t, &noise, &err);
        if (rc == DS_OK && b->stream_synchronize)
            rc = b->stream_synchronize(b, NULL, &err);
        if (rc != DS_OK) {
            code = report_failure(&o, "error", err.message, 1);
            goto out;
        }
        if (r >= 0)
            samples[r] = ds_bench_now_s() - start;
    }
    int finite = 1;
    size_t n = (size_t)ds_tensor_numel(&noise);
    for (size_t i = 0; i < n && finite; i++)
        finite = isfinite(ds_load_f64(noise.data, noise.dtype, i));
    uint64_t hash = 0xcbf29ce484222325u;
    for (size_t i = 0; i < ds_tensor_nbytes(&noise); i++)
        hash = (hash ^ ((const unsigned char *)noise.data)[i]) * 0x100000001b3u;
    double median = ds_bench_median(samples, (size_t)o.repeats), flops = forward_flops(&o);
    print_head(&o, finite ? "ok" : "bad_output");
    printf(", \"warmup\": %d, \"repeats\": %d, \"median_ms\": %.3f, \"min_ms\": %.3f, "
           "\"flops\": %.6g, \"tflops\": %.6g, \"weights\": \"%s\", \"weights_dtype\": \"%s\", "
           "\"output_fnv1a64\": \"%016llx\", "
           "\"timing\": \"monotonic clock around one forward + stream synchronize\"}\n",
           o.warmup, o.repeats, median * 1e3, samples[0] * 1e3, flops, flops / median * 1e-12,
           mgr ? "through a VRAM manager without a limit"
               : b == cpu ? "host, in place" : "host, uploaded block by block in every forward",
           ds_dtype_name(wdt), (unsigned long long)hash);
    fflush(stdout);
    code = finite ? 0 : 1;

out:
    ds_tensor_free(&lat);
    ds_tensor_free(&emb);
    ds_tensor_free(&noise);
    ds_bench_free_model(&model);
    ds_vram_manager_destroy(mgr);
    free(samples);
out_backend:
    if (cpu != b)
        ds_backend_destroy(cpu);
    ds_backend_destroy(b);
    return code;
}
