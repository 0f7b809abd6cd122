/* bench/text_encoder: Qwen-Image prompt encoding (the pipeline's ds_qwen_image_encode_prompt,
 * which the "encode_prompt" step runs: template, tokenizer, Qwen2.5-VL forward, 34-token drop),
 * timed, one JSON line.
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

#include "bench/common/bench_model.h"
#include "bench/common/bench_util.h"
#include "core/dtype.h"
#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "models/qwen_image_text_encoder.h"
#include "pipelines/qwen_image.h"

#define TE_CLASS "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder"
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

static void print_head(const options *o, const char *status)
{
    printf("{\"impl\": \"ours\", \"backend\": ");
    ds_bench_print_json_string(o->backend);
    printf(", \"model\": \"QwenImageTextEncoder\", \"layers\": %d, \"dtype\": \"%s\", "
           "\"prompt_tokens\": 60, \"threads\": %d, \"status\": \"%s\"",
           o->layers, ds_dtype_name(o->dtype), o->threads, status);
    ds_bench_print_gemm(o->backend);
}

static int report_failure(const options *o, const char *status, const char *message, int code)
{
    print_head(o, status);
    return ds_bench_end_with_message(message, code);
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
        int common = ds_bench_common_option(k, v, &o->backend, &o->threads, &o->dtype,
                                            &o->warmup, &o->repeats);
        if (common != 0) {
            if (common < 0)
                return 0;
        } else if (strcmp(k, "--layers") == 0)
            o->layers = atoi(v);
        else if (strcmp(k, "--tokenizer") == 0)
            o->tokenizer = v;
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
    int rc = ds_bench_backend_create(o.backend, o.threads, &b, &err);
    if (rc == DS_ERR_INVALID_ARGUMENT) {
        usage();
        return 2;
    }
    if (rc == DS_ERR_UNAVAILABLE)
        return report_failure(&o, "unavailable", err.message, 77);
    if (rc != DS_OK)
        return report_failure(&o, "error", err.message, 1);

    int code = 1;
    ds_loaded_model model;
    double *samples = calloc((size_t)o.repeats, sizeof *samples);
    double build_start = ds_bench_now_s();
    if (!samples) {
        code = report_failure(&o, "error", "out of memory for the samples", 1);
        ds_backend_destroy(b);
        return code;
    }
    if (ds_bench_build_model(TE_CLASS, NULL, ds_bench_keep_text_layers, o.layers, o.dtype, &model,
                             NULL, &err) != DS_OK) {
        code = report_failure(&o, "error", err.message, 1);
        free(samples);
        ds_backend_destroy(b);
        return code;
    }
    fprintf(stderr, "te_bench: %d layers built in %.1f s\n", o.layers, ds_bench_now_s() - build_start);
    ds_step_context ctx = {.backend = b};
    int64_t L = 0;
    int finite = 1;
    for (int r = -o.warmup; r < o.repeats; r++) {
        ds_step_io out;
        ds_step_io_init(&out);
        double start = ds_bench_now_s();
        rc = ds_qwen_image_encode_prompt(&model, &ctx, PROMPT, o.tokenizer, o.dtype, &out, &err);
        double t = ds_bench_now_s() - start;
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
    double median = ds_bench_median(samples, (size_t)o.repeats);
    print_head(&o, finite ? "ok" : "bad_output");
    printf(", \"encoded_tokens\": %lld, \"warmup\": %d, \"repeats\": %d, \"median_ms\": %.3f, "
           "\"min_ms\": %.3f, \"timing\": \"monotonic clock around one encode_prompt step "
           "(tokenize, forward, drop; tokenizer cached)\"}\n",
           (long long)L, o.warmup, o.repeats, median * 1e3, samples[0] * 1e3);
    fflush(stdout);
    code = finite ? 0 : 1;
out:
    ds_bench_free_model(&model);
    free(samples);
    ds_backend_destroy(b);
    return code;
}
