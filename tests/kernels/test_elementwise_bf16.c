/* The CPU elementwise engine's fused bf16 loops (kernels/cpu/elementwise_bf16.c) against its
 * generic path with scalar conversions: the same bits on every vector width this processor has
 * (NaNs compared as NaN: x86 keeps either operand's payload when both are NaN, and a compiler
 * may swap the operands of + and *), over sizes that leave tails of every length, broadcast
 * operands widened once, left in place, or repeated, output in place, and raw bit patterns
 * (NaN, inf, subnormals, overflow). Normal inputs are also checked element by element against a
 * float64 reference. The fused-call counter shows which path each case took, so a case that
 * silently fell back to the generic path fails instead of comparing it with itself. CPU only:
 * it switches the backend's internal paths. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernel_test.h"
#include "kernels/cpu/elementwise_bf16.h"
#include "test.h"

enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_MODULATE, OP_GATED, OP_COUNT };
static const char *const op_names[OP_COUNT] = {"add", "sub", "mul", "div", "modulate",
                                               "gated_residual"};

typedef struct operand_spec {
    ds_dtype dtype;
    int ndim;
    int64_t shape[3];
} operand_spec;

typedef struct op_case {
    int op;
    operand_spec in[3]; /* in[0] has the output's shape */
    ds_dtype ydtype;
    int alias;          /* the output is in[0] itself */
    int fused;          /* whether the fused loop must run */
} op_case;

static int nin_of(int op) { return op >= OP_MODULATE ? 3 : 2; }

static size_t numel(const operand_spec *s)
{
    size_t n = 1;
    for (int i = 0; i < s->ndim; i++)
        n *= (size_t)s->shape[i];
    return n;
}

static uint64_t rng = 0x243F6A8885A308D3ull;

static uint64_t next_bits(void)
{
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef enum inputs { NORMAL, RAW_BITS, CANCEL } inputs;

/* Host bytes of an operand: normal(0, 1) values rounded to the dtype, or random bit patterns. */
static void *make_input(const operand_spec *s, int raw_bits)
{
    size_t n = numel(s), es = ds_dtype_size(s->dtype);
    unsigned char *h = malloc(n * es + 1);
    if (raw_bits) {
        for (size_t i = 0; i < n * es; i++)
            h[i] = (unsigned char)next_bits();
        return h;
    }
    double *v = kt_randn(n, 1.0);
    for (size_t i = 0; i < n; i++)
        ds_store_f64(h, s->dtype, i, v[i]);
    free(v);
    return h;
}

static int call_op(int op, ds_tensor *t, ds_tensor *y, ds_error *err)
{
    if (op < OP_MODULATE) {
        ds_binary_args a = {&t[0], &t[1], (ds_binary_op)op, y};
        return ds_binary(kt.backend, NULL, &a, err);
    }
    if (op == OP_MODULATE) {
        ds_modulate_args a = {&t[0], &t[1], &t[2], y};
        return ds_modulate(kt.backend, NULL, &a, err);
    }
    ds_gated_residual_args a = {&t[0], &t[1], &t[2], y};
    return ds_gated_residual(kt.backend, NULL, &a, err);
}

/* Runs the case on the current paths: *bytes is the output's (malloc'd), NULL on failure. */
static void run_case(const op_case *c, void *const *host, void **bytes)
{
    int nin = nin_of(c->op);
    ds_tensor t[3], y;
    ds_error err;
    for (int k = 0; k < nin; k++) {
        REQUIRE(kt_tensor(c->in[k].dtype, c->in[k].ndim, c->in[k].shape, NULL, &t[k]));
        REQUIRE(ds_tensor_upload(&t[k], host[k], NULL, &err) == DS_OK);
    }
    if (!c->alias)
        REQUIRE(kt_tensor(c->ydtype, c->in[0].ndim, c->in[0].shape, NULL, &y));
    ds_tensor *out = c->alias ? &t[0] : &y;
    *bytes = NULL;
    int rc = call_op(c->op, t, out, &err);
    CHECK_MSG(rc == DS_OK, "%s: %s", op_names[c->op], err.message);
    if (rc == DS_OK) {
        *bytes = malloc(ds_tensor_nbytes(out) + 1);
        REQUIRE(ds_tensor_download(out, *bytes, NULL, &err) == DS_OK);
    }
    for (int k = 0; k < nin; k++)
        ds_tensor_free(&t[k]);
    if (!c->alias)
        ds_tensor_free(&y);
}

static void describe(const op_case *c, char *buf, size_t size)
{
    int len = snprintf(buf, size, "%s", op_names[c->op]);
    for (int k = 0; k < nin_of(c->op); k++) {
        len += snprintf(buf + len, size - (size_t)len, " %s[", ds_dtype_name(c->in[k].dtype));
        for (int d = 0; d < c->in[k].ndim; d++)
            len += snprintf(buf + len, size - (size_t)len, "%s%lld", d ? "," : "",
                            (long long)c->in[k].shape[d]);
        len += snprintf(buf + len, size - (size_t)len, "]");
    }
    snprintf(buf + len, size - (size_t)len, " -> %s%s", ds_dtype_name(c->ydtype),
             c->alias ? " in place" : "");
}

/* Index into operand k of output element `flat` (NumPy broadcasting, right-aligned). */
static size_t bidx(const operand_spec *out, const operand_spec *in, size_t flat)
{
    size_t idx = 0, mul = 1;
    for (int i = out->ndim - 1; i >= 0; i--) {
        size_t coord = flat % (size_t)out->shape[i];
        flat /= (size_t)out->shape[i];
        int j = i - (out->ndim - in->ndim);
        if (j < 0)
            continue;
        if (in->shape[j] != 1)
            idx += coord * mul;
        mul *= (size_t)in->shape[j];
    }
    return idx;
}

/* Element i's reference in float64, and the magnitude its f32 roundings are relative to. */
static double reference(const op_case *c, void *const *host, size_t i, double *mag)
{
    double v[3] = {0, 0, 0};
    for (int k = 0; k < nin_of(c->op); k++)
        v[k] = ds_load_f64(host[k], c->in[k].dtype, bidx(&c->in[0], &c->in[k], i));
    switch (c->op) {
    case OP_ADD: *mag = fabs(v[0]) + fabs(v[1]); return v[0] + v[1];
    case OP_SUB: *mag = fabs(v[0]) + fabs(v[1]); return v[0] - v[1];
    case OP_MUL: *mag = fabs(v[0] * v[1]); return v[0] * v[1];
    case OP_DIV: *mag = fabs(v[0] / v[1]); return v[0] / v[1];
    case OP_MODULATE:
        *mag = fabs(v[0]) * (1.0 + fabs(v[1])) + fabs(v[2]);
        return v[0] * (1.0 + v[1]) + v[2];
    default: *mag = fabs(v[0]) + fabs(v[1] * v[2]); return v[0] + v[1] * v[2];
    }
}

/* Bits of element i equal; where two operands of the element are NaN, both NaN will do. Returns
 * the number of mismatches (the first one printed). */
static size_t compare_bits(const char *what, const op_case *c, void *const *host,
                           const void *want, const void *got, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double w = ds_load_f64(want, c->ydtype, i), g = ds_load_f64(got, c->ydtype, i);
        int same = c->ydtype == DS_BF16 ? ((const uint16_t *)want)[i] == ((const uint16_t *)got)[i]
                                        : ((const uint32_t *)want)[i] == ((const uint32_t *)got)[i];
        if (same)
            continue;
        int nans = 0;
        for (int k = 0; k < nin_of(c->op); k++)
            nans += isnan(ds_load_f64(host[k], c->in[k].dtype, bidx(&c->in[0], &c->in[k], i)));
        if (nans >= 2 && isnan(w) && isnan(g))
            continue;
        if (bad++ == 0)
            fprintf(stderr, "  %s: element %zu: generic %.9g, fused %.9g\n", what, i, w, g);
    }
    return bad;
}

static const int isas[] = {DS__CONVERT_SCALAR, DS__CONVERT_AVX2, DS__CONVERT_AVX512};
static const char *const isa_names[] = {"scalar", "avx2", "avx512"};

static void use_best_conversions(void)
{
    if (!ds__convert_use_isa(DS__CONVERT_AVX512) && !ds__convert_use_isa(DS__CONVERT_AVX2))
        ds__convert_use_isa(DS__CONVERT_SCALAR);
}

/* CANCEL: the addend (modulate's shift, gated residual's x; a full-size f32 operand) is minus
 * the product the op adds it to, rounded to f32, so that the generic path's result is exactly
 * zero while a multiply-add fused into one rounding would leave the product's rounding error. */
static void cancel_addend(const op_case *c, void *const *host)
{
    int k = c->op == OP_MODULATE ? 2 : 0, p = c->op == OP_MODULATE ? 0 : 1;
    const operand_spec *out = &c->in[0];
    for (size_t i = 0; i < numel(out); i++) {
        float u = (float)ds_load_f64(host[p], c->in[p].dtype, bidx(out, &c->in[p], i));
        float v = (float)ds_load_f64(host[p + 1], c->in[p + 1].dtype, bidx(out, &c->in[p + 1], i));
        ((float *)host[k])[i] = c->op == OP_MODULATE ? -(u * (1.0f + v)) : -(u * v);
    }
}

static void check_case(const op_case *c, inputs kind)
{
    char what[256];
    describe(c, what, sizeof what);
    int nin = nin_of(c->op);
    int raw_bits = kind == RAW_BITS;
    void *host[3] = {NULL, NULL, NULL};
    for (int k = 0; k < nin; k++)
        host[k] = make_input(&c->in[k], raw_bits);
    if (kind == CANCEL)
        cancel_addend(c, host);
    size_t n = numel(&c->in[0]);

    /* The oracle: the generic path on scalar conversions. */
    REQUIRE(ds__ew_bf16_use_isa(DS__EW_BF16_OFF));
    REQUIRE(ds__convert_use_isa(DS__CONVERT_SCALAR));
    int64_t before = ds__ew_bf16_calls();
    void *want, *got;
    run_case(c, host, &want);
    CHECK_MSG(ds__ew_bf16_calls() == before, "%s: the generic run took a fused loop", what);
    use_best_conversions();

    for (size_t p = 0; want && p < sizeof isas / sizeof isas[0]; p++) {
        if (!ds__ew_bf16_use_isa(isas[p]))
            continue;
        before = ds__ew_bf16_calls();
        run_case(c, host, &got);
        int64_t took = ds__ew_bf16_calls() - before;
        CHECK_MSG(took == c->fused, "%s (%s): fused loop taken %lld times, expected %d", what,
                  isa_names[p], (long long)took, c->fused);
        if (got) {
            char label[300];
            snprintf(label, sizeof label, "%s (%s%s)", what, isa_names[p],
                     raw_bits ? ", raw bits" : kind == CANCEL ? ", cancelling" : "");
            size_t bad = compare_bits(label, c, host, want, got, n);
            CHECK_MSG(bad == 0, "%s: %zu of %zu elements differ from the generic path", label,
                      bad, n);
        }
        free(got);
    }

    if (want && !raw_bits) {
        /* Rounding to bf16 (half an ulp: at most 2^-8 relative) over f32 arithmetic (a few 2^-24 of
         * the operands' magnitude, which is what cancellation leaves). */
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            double mag, ref = reference(c, host, i, &mag);
            double got = ds_load_f64(want, c->ydtype, i);
            double tol = (c->ydtype == DS_BF16 ? 0x1p-8 : 0x1p-24) * fabs(ref) + 0x1p-21 * mag;
            if (!(fabs(got - ref) <= tol) && bad++ == 0)
                fprintf(stderr, "  %s: element %zu: %.9g, float64 %.9g\n", what, i, got, ref);
        }
        CHECK_MSG(bad == 0, "%s: %zu of %zu elements off the float64 reference", what, bad, n);
    }
    if (!ds__ew_bf16_use_isa(DS__CONVERT_AVX512) && !ds__ew_bf16_use_isa(DS__CONVERT_AVX2))
        ds__ew_bf16_use_isa(DS__CONVERT_SCALAR);
    free(want);
    for (int k = 0; k < nin; k++)
        free(host[k]);
}

#define SPEC(dt, ...) {dt, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), {__VA_ARGS__}}

/* Row lengths around the vector widths (8, 16): every tail length of both is somewhere. */
static const int64_t widths[] = {1, 5, 7, 8, 9, 15, 16, 17, 23, 31, 33, 47, 255};

static void test_modulate(void)
{
    for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++) {
        int64_t C = widths[w];
        op_case cases[] = {
            /* the DiT's form: per-sample rows over the tokens */
            {OP_MODULATE, {SPEC(DS_BF16, 2, 5, C), SPEC(DS_BF16, 2, 1, C), SPEC(DS_BF16, 2, 1, C)},
             DS_BF16, 0, 1},
            /* a rank-1 scale, an f32 shift, in place */
            {OP_MODULATE, {SPEC(DS_BF16, 2, 5, C), SPEC(DS_BF16, C), SPEC(DS_F32, 1, 1, C)},
             DS_BF16, 1, 1},
            /* one value per token (repeated along the row) */
            {OP_MODULATE, {SPEC(DS_BF16, 2, 5, C), SPEC(DS_BF16, 2, 5, 1), SPEC(DS_F32, 1)},
             DS_BF16, 0, 1},
            /* full-size parameters: nothing broadcast, nothing widened */
            {OP_MODULATE, {SPEC(DS_BF16, 3, C), SPEC(DS_BF16, 3, C), SPEC(DS_BF16, 3, C)},
             DS_BF16, 0, 1},
            /* not fused: an f16 input, an f32 output */
            {OP_MODULATE, {SPEC(DS_F16, 2, 5, C), SPEC(DS_BF16, 2, 1, C), SPEC(DS_BF16, 2, 1, C)},
             DS_BF16, 0, 0},
            {OP_MODULATE, {SPEC(DS_BF16, 2, 5, C), SPEC(DS_BF16, 2, 1, C), SPEC(DS_BF16, 2, 1, C)},
             DS_F32, 0, 0},
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            check_case(&cases[i], NORMAL);
            check_case(&cases[i], RAW_BITS);
        }
    }
}

static void test_gated_residual(void)
{
    for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++) {
        int64_t C = widths[w];
        op_case cases[] = {
            {OP_GATED, {SPEC(DS_BF16, 2, 5, C), SPEC(DS_BF16, 2, 1, C), SPEC(DS_BF16, 2, 5, C)},
             DS_BF16, 0, 1},
            {OP_GATED, {SPEC(DS_BF16, 2, 5, C), SPEC(DS_F32, 1), SPEC(DS_F32, 2, 5, C)},
             DS_BF16, 1, 1},
            {OP_GATED, {SPEC(DS_BF16, 2, 5, C), SPEC(DS_BF16, 2, 5, C), SPEC(DS_BF16, 2, 5, C)},
             DS_BF16, 0, 1},
            /* not fused: a full-size f16 operand */
            {OP_GATED, {SPEC(DS_BF16, 2, 5, C), SPEC(DS_BF16, C), SPEC(DS_F16, 2, 5, C)},
             DS_BF16, 0, 0},
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            check_case(&cases[i], NORMAL);
            check_case(&cases[i], RAW_BITS);
        }
    }
}

static void test_binary(void)
{
    for (int op = OP_ADD; op <= OP_DIV; op++)
        for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++) {
            int64_t C = widths[w];
            op_case cases[] = {
                {op, {SPEC(DS_BF16, 3, 4, C), SPEC(DS_BF16, C)}, DS_BF16, 0, 1},
                {op, {SPEC(DS_BF16, 3, 4, C), SPEC(DS_BF16, 3, 4, C)}, DS_BF16, 1, 1},
                {op, {SPEC(DS_BF16, 3, 4, C), SPEC(DS_F32, 4, 1)}, DS_BF16, 0, 1},
                {op, {SPEC(DS_BF16, 3, 4, C), SPEC(DS_F32, 3, 4, C)}, DS_BF16, 0, 1},
                {op, {SPEC(DS_F32, 3, 4, C), SPEC(DS_BF16, C)}, DS_BF16, 0, 1},
                /* not fused: an f32 output */
                {op, {SPEC(DS_BF16, 3, 4, C), SPEC(DS_BF16, C)}, DS_F32, 0, 0},
            };
            for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
                check_case(&cases[i], NORMAL);
                check_case(&cases[i], RAW_BITS);
            }
        }
}

/* Outputs large enough to be split over the pool's threads mid-row, and broadcast operands
 * above the size the engine widens: a contiguous bf16 row read in place by the fused loop, and
 * a bf16 value per row, which only the generic path repeats. */
static void test_large(void)
{
    op_case cases[] = {
        {OP_MODULATE, {SPEC(DS_BF16, 1, 37, 3075), SPEC(DS_BF16, 1, 1, 3075),
                       SPEC(DS_BF16, 1, 1, 3075)}, DS_BF16, 0, 1},
        {OP_GATED, {SPEC(DS_BF16, 1, 37, 3075), SPEC(DS_BF16, 1, 1, 3075),
                    SPEC(DS_BF16, 1, 37, 3075)}, DS_BF16, 1, 1},
        {OP_ADD, {SPEC(DS_BF16, 2, 70001), SPEC(DS_BF16, 70001)}, DS_BF16, 0, 1},
        {OP_MUL, {SPEC(DS_BF16, 70001, 3), SPEC(DS_BF16, 70001, 1)}, DS_BF16, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        check_case(&cases[i], NORMAL);
        check_case(&cases[i], RAW_BITS);
    }
}

/* x * (1 + scale) + shift and x + gate * y each round the product before adding, as the generic
 * path does: inputs where that rounding is all that is left of the result. */
static void test_no_contraction(void)
{
    op_case cases[] = {
        {OP_MODULATE, {SPEC(DS_BF16, 5, 37), SPEC(DS_F32, 5, 37), SPEC(DS_F32, 5, 37)},
         DS_BF16, 0, 1},
        {OP_MODULATE, {SPEC(DS_F32, 4, 3, 33), SPEC(DS_F32, 4, 1, 33), SPEC(DS_F32, 4, 3, 33)},
         DS_BF16, 0, 1},
        {OP_GATED, {SPEC(DS_F32, 5, 37), SPEC(DS_F32, 1, 37), SPEC(DS_BF16, 5, 37)},
         DS_BF16, 0, 1},
        {OP_GATED, {SPEC(DS_F32, 5, 37), SPEC(DS_F32, 5, 37), SPEC(DS_F32, 5, 37)},
         DS_BF16, 0, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_case(&cases[i], CANCEL);
}

int main(int argc, char **argv)
{
    kt_init(argc, argv);
    if (strcmp(kt.backend_name, "cpu") != 0) {
        fprintf(stderr, "skipped: the fused loops are the CPU backend's\n");
        kt_finish();
        return 77;
    }
    RUN(test_modulate);
    RUN(test_gated_residual);
    RUN(test_binary);
    RUN(test_large);
    RUN(test_no_contraction);
    kt_finish();
    return test_summary();
}
