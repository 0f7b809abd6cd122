/* bench/kernels: one op through the public op API (kernels/ops.h) on the CPU or CUDA backend,
 * timed, one JSON line per measurement. torch_anchor.py takes the same arguments and times
 * PyTorch's equivalent, so run_cpu.sh / run_gpu.sh can print ours / anchor ratios measured in the
 * same run (DESIGN §7).
 *
 * usage: kernels_bench --backend cpu|cuda --op OP [options]
 *   --threads N         CPU worker threads (0 = all CPUs; ignored by cuda)
 *   --dtype DT          activations / outputs: f32, bf16, f16 (default f32)
 *   --weight-dtype DT   linear weight storage (default: --dtype)
 *   --warmup N          untimed runs first, at least one per operand set (default 1)
 *   --repeats N         timed samples; the median is reported (default 5)
 *   --iters N           op calls per sample, then one synchronize (default 1)
 *   --sets N            distinct operand sets cycled through, so that repeated calls do not
 *                       read the same memory from cache (default 1)
 *   linear:             --m TOKENS --k IN --n OUT [--bias]   y[M,N] = x[M,K] W[N,K]^T (+ b)
 *   attention:          --batch B --seq S --heads H --head-dim D [--causal]
 *   rms_norm, modulate, gated_residual:  --tokens S --dim C    (x[1,S,C])
 *   copy:               --bytes N   (device-to-device copy through the backend's copy_device)
 *
 * The op API has no timed events, so a sample is CLOCK_MONOTONIC around `iters` calls followed
 * by stream_synchronize: with iters large enough the one synchronize is noise. Outputs are
 * poisoned with NaN first and checked finite at the end (a copy: equal to its source), so an op
 * that wrote nothing is reported as bad_output rather than fast. Exit status: 0 measured, 77 backend unavailable,
 * 3 the backend does not run this op natively (ds_<op> would fall back to the CPU, which is not
 * what we want to time), 1 any other error; every outcome prints its JSON line. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/common/bench_backend.h"
#include "bench/common/bench_util.h"
#include "core/dtype.h"
#include "core/float_convert.h"
#include "kernels/cpu/gemm_info.h"
#include "kernels/ops.h"

#define MAX_SETS 16

typedef struct options {
    const char *backend;
    const char *op;
    int threads;
    ds_dtype dtype;
    ds_dtype weight_dtype;
    int warmup, repeats, iters, sets;
    int64_t m, k, n;
    int bias;
    int64_t batch, seq, heads, head_dim;
    int causal;
    int64_t tokens, dim;
    int64_t bytes;
} options;

/* Every operand of one call, so that `sets` of them can be cycled through. */
typedef struct operand_set {
    ds_tensor t[5];
    int count;
} operand_set;

typedef struct bench {
    options o;
    ds_backend *b;
    operand_set sets[MAX_SETS];
    char shape[160];
    double flops; /* per call */
    double bytes; /* per call: every input read once, every output written once */
} bench;

/* The fields every line starts with. */
static void print_head(const bench *x, const char *status)
{
    printf("{\"impl\": \"ours\", \"backend\": ");
    ds_bench_print_json_string(x->o.backend);
    printf(", \"op\": ");
    ds_bench_print_json_string(x->o.op);
    printf(", \"dtype\": \"%s\", \"weight_dtype\": \"%s\", \"shape\": ", ds_dtype_name(x->o.dtype),
           ds_dtype_name(x->o.weight_dtype));
    ds_bench_print_json_string(x->shape);
    printf(", \"threads\": %d, \"status\": \"%s\"", x->o.threads, status);
    /* Which GEMM kernels run (oneDNN's ISA, OpenBLAS's core): a row means little later
     * without it, and a DYNAMIC_ARCH OpenBLAS that does not recognise the CPU falls back to
     * generic kernels several times slower. */
    ds_bench_print_gemm(x->o.backend);
    if (strcmp(x->o.backend, "cpu") == 0 && strcmp(x->o.op, "linear") == 0) {
        printf(", \"gemm_path\": ");
        ds_bench_print_json_string(ds_cpu_linear_path(x->o.m, x->o.dtype, x->o.weight_dtype));
    }
}

static int report_failure(const bench *x, const char *status, const char *message, int code)
{
    print_head(x, status);
    return ds_bench_end_with_message(message, code);
}

/* Uniform values of standard deviation `stddev` (never zeros: METHOD.md, zeros time faster
 * than real data on some hardware), stored in t's dtype. */
static int fill_random(ds_tensor *t, double stddev, uint64_t seed, ds_error *err)
{
    size_t n = (size_t)ds_tensor_numel(t), esize = ds_dtype_size(t->dtype);
    unsigned char *host = malloc(ds_tensor_nbytes(t) + 1);
    float chunk[4096];
    if (!host)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of host memory for %zu values", n);
    double half_width = stddev * sqrt(3.0);
    for (size_t i = 0; t->dtype == DS_U8 && i < n; i++)
        host[i] = (unsigned char)(ds_bench_splitmix(&seed) >> 56);
    for (size_t i = 0; t->dtype != DS_U8 && i < n; i += 4096) {
        size_t len = n - i < 4096 ? n - i : 4096;
        for (size_t j = 0; j < len; j++)
            chunk[j] = (float)(half_width * ((double)(ds_bench_splitmix(&seed) >> 11) * 0x1p-52 - 1.0));
        ds_convert_from_f32(chunk, len, t->dtype, host + i * esize);
    }
    int rc = ds_tensor_upload(t, host, NULL, err);
    free(host);
    return rc;
}

static int make_tensor(bench *x, operand_set *set, ds_dtype dtype, int ndim, const int64_t *shape,
                       double stddev, uint64_t seed, ds_error *err)
{
    ds_tensor *t = &set->t[set->count];
    int rc = ds_tensor_alloc(x->b, dtype, ndim, shape, t, err);
    if (rc != DS_OK)
        return rc;
    set->count++;
    if (stddev > 0)
        return fill_random(t, stddev, seed, err);
    /* Outputs: NaN everywhere (all-ones bytes, in every float dtype), so what the op does not
     * write is caught by check_output. fill32 takes whole 32-bit words only. */
    size_t bytes = ds_tensor_nbytes(t);
    if (bytes % 4 == 0) {
        rc = x->b->fill32(x->b, t->data, 0xFFFFFFFFu, bytes, NULL, err);
        return rc == DS_OK ? x->b->stream_synchronize(x->b, NULL, err) : rc;
    }
    unsigned char *host = malloc(bytes);
    if (!host)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of host memory for %zu bytes", bytes);
    memset(host, 0xFF, bytes);
    rc = ds_tensor_upload(t, host, NULL, err);
    free(host);
    return rc;
}

/* Whether the output of set `set` was written: every element finite (outputs start as NaN), or
 * for a copy, every byte equal to the source. */
static int check_output(const operand_set *set, int is_copy, int *ok, ds_error *err)
{
    const ds_tensor *out = &set->t[set->count - 1];
    size_t n = (size_t)ds_tensor_numel(out), bytes = ds_tensor_nbytes(out);
    unsigned char *host = malloc(bytes + 1), *src = is_copy ? malloc(bytes + 1) : NULL;
    int rc = DS_OK;
    *ok = 0;
    if (!host || (is_copy && !src))
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of host memory for %zu bytes", bytes);
    if (rc == DS_OK)
        rc = ds_tensor_download(out, host, NULL, err);
    if (rc == DS_OK && is_copy)
        rc = ds_tensor_download(&set->t[0], src, NULL, err);
    if (rc == DS_OK) {
        *ok = 1;
        if (is_copy)
            *ok = memcmp(host, src, bytes) == 0;
        for (size_t i = 0; !is_copy && *ok && i < n; i++)
            *ok = isfinite(ds_load_f64(host, out->dtype, i));
    }
    free(host);
    free(src);
    return rc;
}

/* Operands for set i; the last tensor of each set is the output. */
static int setup_set(bench *x, int i, ds_error *err)
{
    const options *o = &x->o;
    operand_set *set = &x->sets[i];
    uint64_t seed = 0x5EEDull * (uint64_t)(i + 1);
    int rc;
    if (strcmp(o->op, "linear") == 0) {
        int64_t xs[2] = {o->m, o->k}, ws[2] = {o->n, o->k}, bs[1] = {o->n}, ys[2] = {o->m, o->n};
        double w_std = 1.0 / sqrt((double)o->k);
        if ((rc = make_tensor(x, set, o->dtype, 2, xs, 1.0, seed + 1, err)) != DS_OK ||
            (rc = make_tensor(x, set, o->weight_dtype, 2, ws, w_std, seed + 2, err)) != DS_OK ||
            (o->bias && (rc = make_tensor(x, set, o->dtype, 1, bs, 0.5, seed + 3, err)) != DS_OK))
            return rc;
        return make_tensor(x, set, o->dtype, 2, ys, 0, 0, err);
    }
    if (strcmp(o->op, "attention") == 0) {
        int64_t s[4] = {o->batch, o->seq, o->heads, o->head_dim};
        for (int j = 0; j < 3; j++)
            if ((rc = make_tensor(x, set, o->dtype, 4, s, 1.0, seed + (uint64_t)j, err)) != DS_OK)
                return rc;
        return make_tensor(x, set, o->dtype, 4, s, 0, 0, err);
    }
    int64_t xs[3] = {1, o->tokens, o->dim}, cs[3] = {1, 1, o->dim}, ws[1] = {o->dim};
    if (strcmp(o->op, "rms_norm") == 0) {
        if ((rc = make_tensor(x, set, o->dtype, 3, xs, 1.0, seed + 1, err)) != DS_OK ||
            (rc = make_tensor(x, set, o->dtype, 1, ws, 1.0, seed + 2, err)) != DS_OK)
            return rc;
    } else if (strcmp(o->op, "modulate") == 0 || strcmp(o->op, "gated_residual") == 0) {
        /* modulate: x, scale, shift; gated_residual: x, gate, y_in. */
        int gated = strcmp(o->op, "gated_residual") == 0;
        if ((rc = make_tensor(x, set, o->dtype, 3, xs, 1.0, seed + 1, err)) != DS_OK ||
            (rc = make_tensor(x, set, o->dtype, 3, cs, 0.5, seed + 2, err)) != DS_OK ||
            (rc = make_tensor(x, set, o->dtype, 3, gated ? xs : cs, 0.5, seed + 3, err)) != DS_OK)
            return rc;
    } else if (strcmp(o->op, "copy") == 0) {
        int64_t bs[1] = {o->bytes};
        if ((rc = make_tensor(x, set, DS_U8, 1, bs, 1.0, seed + 1, err)) != DS_OK)
            return rc;
        return make_tensor(x, set, DS_U8, 1, bs, 0, 0, err);
    }
    return make_tensor(x, set, o->dtype, 3, xs, 0, 0, err);
}

/* One call on operand set i. With check_support it only asks the backend whether it runs the
 * op itself: 1 yes, 0 no. */
static int call(bench *x, int i, int check_support, ds_error *err)
{
    ds_backend *b = x->b;
    ds_tensor *t = x->sets[i].t;
    const options *o = &x->o;
    if (strcmp(o->op, "linear") == 0) {
        ds_linear_args a = {.x = &t[0], .weight = &t[1], .bias = o->bias ? &t[2] : NULL,
                            .weight_scale = 1.0f, .epilogue = DS_ACT_NONE,
                            .y = &t[o->bias ? 3 : 2]};
        return check_support ? b->linear && b->supports(b, DS_OP_LINEAR, &a)
                             : ds_linear(b, NULL, &a, err);
    }
    if (strcmp(o->op, "attention") == 0) {
        ds_attention_args a = {.q = &t[0], .k = &t[1], .v = &t[2], .key_mask = NULL,
                               .scale = (float)(1.0 / sqrt((double)o->head_dim)),
                               .causal = o->causal, .out = &t[3]};
        return check_support ? b->attention && b->supports(b, DS_OP_ATTENTION, &a)
                             : ds_attention(b, NULL, &a, err);
    }
    if (strcmp(o->op, "rms_norm") == 0) {
        ds_rms_norm_args a = {.x = &t[0], .weight = &t[1], .eps = 1e-6f, .y = &t[2]};
        return check_support ? b->rms_norm && b->supports(b, DS_OP_RMS_NORM, &a)
                             : ds_rms_norm(b, NULL, &a, err);
    }
    if (strcmp(o->op, "modulate") == 0) {
        ds_modulate_args a = {.x = &t[0], .scale = &t[1], .shift = &t[2], .y = &t[3]};
        return check_support ? b->modulate && b->supports(b, DS_OP_MODULATE, &a)
                             : ds_modulate(b, NULL, &a, err);
    }
    if (strcmp(o->op, "gated_residual") == 0) {
        ds_gated_residual_args a = {.x = &t[0], .gate = &t[1], .y_in = &t[2], .out = &t[3]};
        return check_support ? b->gated_residual && b->supports(b, DS_OP_GATED_RESIDUAL, &a)
                             : ds_gated_residual(b, NULL, &a, err);
    }
    /* copy */
    return check_support ? 1 : b->copy_device(b, t[1].data, t[0].data, (size_t)o->bytes, NULL, err);
}

/* Work per call and a readable shape, from the options alone. */
static void describe(bench *x)
{
    const options *o = &x->o;
    double in = (double)ds_dtype_size(o->dtype), wsz = (double)ds_dtype_size(o->weight_dtype);
    if (strcmp(o->op, "linear") == 0) {
        x->flops = 2.0 * (double)o->m * (double)o->n * (double)o->k;
        x->bytes = in * (double)(o->m * o->k + o->m * o->n + (o->bias ? o->n : 0)) +
                   wsz * (double)(o->n * o->k);
        snprintf(x->shape, sizeof x->shape, "x[%lld,%lld] w[%lld,%lld]%s", (long long)o->m,
                 (long long)o->k, (long long)o->n, (long long)o->k, o->bias ? " +bias" : "");
    } else if (strcmp(o->op, "attention") == 0) {
        double s = (double)o->seq;
        x->flops = 4.0 * (double)o->batch * (double)o->heads * s * s * (double)o->head_dim *
                   (o->causal ? 0.5 : 1.0);
        x->bytes = 4.0 * in * (double)(o->batch * o->seq * o->heads * o->head_dim);
        snprintf(x->shape, sizeof x->shape, "B%lld S%lld H%lld D%lld%s", (long long)o->batch,
                 (long long)o->seq, (long long)o->heads, (long long)o->head_dim,
                 o->causal ? " causal" : "");
    } else if (strcmp(o->op, "copy") == 0) {
        x->flops = 0;
        x->bytes = 2.0 * (double)o->bytes;
        snprintf(x->shape, sizeof x->shape, "%lld bytes", (long long)o->bytes);
    } else {
        double big = (double)(o->tokens * o->dim), small = (double)o->dim;
        x->flops = 0;
        if (strcmp(o->op, "rms_norm") == 0)
            x->bytes = in * (2 * big + small);
        else if (strcmp(o->op, "modulate") == 0)
            x->bytes = in * (2 * big + 2 * small);
        else
            x->bytes = in * (3 * big + small);
        snprintf(x->shape, sizeof x->shape, "x[1,%lld,%lld]", (long long)o->tokens,
                 (long long)o->dim);
    }
}

static int parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi)
        return 0;
    *out = v;
    return 1;
}

static int parse_args(int argc, char **argv, options *o, char *msg, size_t size)
{
    *o = (options){.backend = "cpu", .op = "", .dtype = DS_F32, .weight_dtype = DS_DTYPE_INVALID,
                   .warmup = 1, .repeats = 5, .iters = 1, .sets = 1, .m = 4096, .k = 3072,
                   .n = 3072, .batch = 1, .seq = 4096, .heads = 24, .head_dim = 128,
                   .tokens = 8192, .dim = 3072, .bytes = 1 << 30};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t num = 0;
        if (strcmp(a, "--bias") == 0) {
            o->bias = 1;
            continue;
        }
        if (strcmp(a, "--causal") == 0) {
            o->causal = 1;
            continue;
        }
        if (!v) {
            snprintf(msg, size, "%s needs a value", a);
            return 0;
        }
        i++;
        if (strcmp(a, "--backend") == 0)
            o->backend = v;
        else if (strcmp(a, "--op") == 0)
            o->op = v;
        else if (strcmp(a, "--dtype") == 0 || strcmp(a, "--weight-dtype") == 0) {
            ds_dtype d = ds_dtype_parse(v);
            if (d != DS_F32 && d != DS_BF16 && d != DS_F16) {
                snprintf(msg, size, "%s: %s is not one of f32, bf16, f16", a, v);
                return 0;
            }
            *(strcmp(a, "--dtype") == 0 ? &o->dtype : &o->weight_dtype) = d;
        } else {
            struct {
                const char *name;
                int64_t lo, hi;
                int64_t *dst64;
                int *dst;
            } ints[] = {
                {"--threads", 0, 4096, NULL, &o->threads}, {"--warmup", 0, 1000, NULL, &o->warmup},
                {"--repeats", 1, 1000, NULL, &o->repeats}, {"--iters", 1, 100000, NULL, &o->iters},
                {"--sets", 1, MAX_SETS, NULL, &o->sets},   {"--m", 1, 1 << 20, &o->m, NULL},
                {"--k", 1, 1 << 20, &o->k, NULL},          {"--n", 1, 1 << 20, &o->n, NULL},
                {"--batch", 1, 1024, &o->batch, NULL},     {"--seq", 1, 1 << 20, &o->seq, NULL},
                {"--heads", 1, 1024, &o->heads, NULL},     {"--head-dim", 1, 1024, &o->head_dim, NULL},
                {"--tokens", 1, 1 << 24, &o->tokens, NULL}, {"--dim", 1, 1 << 20, &o->dim, NULL},
                {"--bytes", 4, (int64_t)1 << 36, &o->bytes, NULL},
            };
            size_t j = 0;
            while (j < sizeof ints / sizeof ints[0] && strcmp(a, ints[j].name) != 0)
                j++;
            if (j == sizeof ints / sizeof ints[0]) {
                snprintf(msg, size, "unknown option %s", a);
                return 0;
            }
            if (!parse_int(v, ints[j].lo, ints[j].hi, &num)) {
                snprintf(msg, size, "%s: %s is not an integer in [%lld, %lld]", a, v,
                         (long long)ints[j].lo, (long long)ints[j].hi);
                return 0;
            }
            if (ints[j].dst64)
                *ints[j].dst64 = num;
            else
                *ints[j].dst = (int)num;
        }
    }
    if (o->weight_dtype == DS_DTYPE_INVALID)
        o->weight_dtype = o->dtype;
    const char *ops[] = {"linear", "attention", "rms_norm", "modulate", "gated_residual", "copy"};
    for (size_t j = 0; j < sizeof ops / sizeof ops[0]; j++)
        if (strcmp(o->op, ops[j]) == 0)
            return 1;
    snprintf(msg, size, "--op must be one of linear, attention, rms_norm, modulate, "
             "gated_residual, copy (got '%s')", o->op);
    return 0;
}

int main(int argc, char **argv)
{
    bench x;
    memset(&x, 0, sizeof x);
    char msg[256];
    if (!parse_args(argc, argv, &x.o, msg, sizeof msg)) {
        fprintf(stderr, "kernels_bench: %s\n", msg);
        return 2;
    }
    describe(&x);

    ds_error err;
    int rc = ds_bench_backend_create(x.o.backend, x.o.threads, &x.b, &err);
    if (rc == DS_ERR_INVALID_ARGUMENT) {
        fprintf(stderr, "kernels_bench: %s\n", err.message);
        return 2;
    }
    if (rc == DS_ERR_UNAVAILABLE)
        return report_failure(&x, "unavailable", err.message, 77);
    if (rc != DS_OK)
        return report_failure(&x, "error", err.message, 1);

    int code = 1;
    double *samples = calloc((size_t)x.o.repeats, sizeof *samples);
    if (!samples) {
        code = report_failure(&x, "error", "out of memory", 1);
        goto done;
    }
    for (int i = 0; i < x.o.sets; i++) {
        if (setup_set(&x, i, &err) != DS_OK) {
            code = report_failure(&x, "error", err.message, 1);
            goto done;
        }
    }
    if (!call(&x, 0, 1, &err)) {
        code = report_failure(&x, "unsupported", "the backend does not run this op for these "
                              "dtypes and shapes itself (ds_ops would fall back to the CPU)", 3);
        goto done;
    }

    int next = 0;
    for (int r = -1; r < x.o.repeats; r++) {
        /* r == -1: warm-up (library handles, code paths, page faults on fresh memory), over
         * every operand set at least once, so that every output is checked. */
        int calls = r < 0 ? (x.o.warmup > x.o.sets ? x.o.warmup : x.o.sets) : x.o.iters;
        double start = ds_bench_now_s();
        for (int c = 0; c < calls; c++) {
            if (call(&x, next, 0, &err) != DS_OK) {
                code = report_failure(&x, "error", err.message, 1);
                goto done;
            }
            next = (next + 1) % x.o.sets;
        }
        if (x.b->stream_synchronize(x.b, NULL, &err) != DS_OK) {
            code = report_failure(&x, "error", err.message, 1);
            goto done;
        }
        if (r >= 0)
            samples[r] = (ds_bench_now_s() - start) / calls;
    }
    double median = ds_bench_median(samples, (size_t)x.o.repeats);

    int ok = 1;
    for (int i = 0; ok && i < x.o.sets; i++) {
        if (check_output(&x.sets[i], strcmp(x.o.op, "copy") == 0, &ok, &err) != DS_OK) {
            code = report_failure(&x, "error", err.message, 1);
            goto done;
        }
    }
    /* A sample of an op that left outputs unwritten is no measurement. */
    print_head(&x, ok ? "ok" : "bad_output");
    printf(", \"warmup\": %d, \"repeats\": %d, \"iters\": %d, \"sets\": %d, \"median_ms\": %.6f, "
           "\"min_ms\": %.6f, \"flops\": %.6g, \"bytes\": %.6g, \"tflops\": %.6g, \"gbps\": %.6g, "
           "\"timing\": \"monotonic clock around iters calls + stream "
           "synchronize\"}\n",
           x.o.warmup, x.o.repeats, x.o.iters, x.o.sets, median * 1e3, samples[0] * 1e3, x.flops,
           x.bytes, x.flops / median * 1e-12, x.bytes / median * 1e-9);
    code = ok ? 0 : 1;

done:
    for (int i = 0; i < MAX_SETS; i++)
        for (int j = 0; j < x.sets[i].count; j++)
            ds_tensor_free(&x.sets[i].t[j]);
    free(samples);
    ds_backend_destroy(x.b);
    return code;
}
