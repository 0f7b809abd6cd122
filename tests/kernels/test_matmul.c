/* linear and batched_matmul against float64 references computed here with plain loops. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_test.h"
#include "kernels/cpu/gemm_info.h"
#include "test.h"

static double act_ref(double x, ds_activation act)
{
    switch (act) {
    case DS_ACT_SILU: return x / (1.0 + exp(-x));
    case DS_ACT_GELU_ERF: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case DS_ACT_GELU_TANH: return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case DS_ACT_GELU_SIGMOID: return x / (1.0 + exp(-1.702 * x));
    default: return x;
    }
}

/* One linear case: x [lead, M, K] (or [M, K] when lead is 0) of xd, weight [N, K] of wd,
 * bias [N] of bd (DS_DTYPE_INVALID = none), y of x's dtype. */
static void linear_case(ds_dtype xd, ds_dtype wd, float wscale, ds_dtype bd, ds_activation act,
                        int64_t lead, int64_t m, int64_t k, int64_t n)
{
    int64_t rows = (lead ? lead : 1) * m;
    int64_t xshape[3], yshape[3], wshape[2] = {n, k}, bshape[1] = {n};
    int nd = lead ? 3 : 2;
    if (lead) {
        xshape[0] = yshape[0] = lead;
        xshape[1] = yshape[1] = m;
    } else {
        xshape[0] = yshape[0] = m;
    }
    xshape[nd - 1] = k;
    yshape[nd - 1] = n;

    double *xv = kt_randn((size_t)(rows * k), 1.0);
    /* fp8 weights hold values of a few units, as quantised checkpoints do (e4m3's max is 448). */
    double *wv = kt_randn((size_t)(n * k), (wd == DS_F8_E4M3 || wd == DS_F8_E5M2) ? 4.0 : 1.0 / sqrt((double)k));
    double *bv = kt_randn((size_t)n, 0.5);
    ds_tensor x, w, bias, y;
    memset(&bias, 0, sizeof bias);
    int ok = kt_tensor(xd, nd, xshape, xv, &x) && kt_tensor(wd, 2, wshape, wv, &w) &&
             (bd == DS_DTYPE_INVALID || kt_tensor(bd, 1, bshape, bv, &bias)) &&
             kt_tensor(xd, nd, yshape, NULL, &y);
    CHECK(ok);
    if (ok) {
        ds_linear_args a = {&x, &w, bd == DS_DTYPE_INVALID ? NULL : &bias, wscale, act, &y};
        ds_error err;
        int rc = ds_linear(kt.backend, NULL, &a, &err);
        CHECK_MSG(rc == DS_OK, "%s", err.message);
        double *ref = malloc((size_t)(rows * n) * sizeof *ref);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < n; c++) {
                double acc = 0;
                for (int64_t i = 0; i < k; i++)
                    acc += xv[r * k + i] * wv[c * k + i] * wscale;
                if (bd != DS_DTYPE_INVALID)
                    acc += bv[c];
                ref[r * n + c] = act_ref(acc, act);
            }
        double *got = kt_read(&y);
        char what[200];
        snprintf(what, sizeof what, "linear x %s w %s (scale %g) bias %s %s [%lld x %lld x %lld]",
                 ds_dtype_name(xd), ds_dtype_name(wd), (double)wscale,
                 bd == DS_DTYPE_INVALID ? "none" : ds_dtype_name(bd), ds_activation_name(act),
                 (long long)rows, (long long)k, (long long)n);
        /* Storing a near-zero output in bf16/f16 adds its rounding to the budget's own. */
        CHECK(kt_compare(what, got, ref, (size_t)(rows * n), kt_budget(xd)));
        free(got);
        free(ref);
    }
    ds_tensor_free(&x);
    ds_tensor_free(&w);
    ds_tensor_free(&bias);
    ds_tensor_free(&y);
    free(xv);
    free(wv);
    free(bv);
}

static const ds_dtype act_dtypes[] = {DS_F32, DS_BF16, DS_F16};
static const ds_dtype weight_dtypes[] = {DS_F32, DS_BF16, DS_F16, DS_F8_E4M3, DS_F8_E5M2};

static float scale_for(ds_dtype wd)
{
    /* e4m3 checkpoints carry a per-tensor scale; e5m2 runs with 1 so both paths are covered. */
    return wd == DS_F8_E4M3 ? 0.5f : 1.0f;
}

/* Every dtype combination, bias or not, every epilogue, over shapes that use each odd size
 * (M 1/3/17, K 1/5/67, N 1/9/130); N != K everywhere so a transposed weight cannot pass. */
static void test_linear_dtypes_and_epilogues(void)
{
    static const int64_t shapes[][3] = {{1, 1, 9}, {3, 5, 130}, {17, 67, 1}, {3, 67, 9},
                                        {17, 5, 130}, {1, 67, 130}};
    int idx = 0;
    for (size_t xi = 0; xi < 3; xi++)
        for (size_t wi = 0; wi < 5; wi++)
            for (int bias = 0; bias < 2; bias++)
                for (int act = 0; act < DS_ACT_COUNT; act++) {
                    const int64_t *s = shapes[idx++ % 6];
                    ds_dtype bd = bias ? act_dtypes[(xi + wi) % 3] : DS_DTYPE_INVALID;
                    linear_case(act_dtypes[xi], weight_dtypes[wi], scale_for(weight_dtypes[wi]), bd,
                                (ds_activation)act, 0, s[0], s[1], s[2]);
                }
}

static void test_linear_all_odd_shapes(void)
{
    static const int64_t ms[] = {1, 3, 17}, ks[] = {1, 5, 67}, ns[] = {1, 9, 130};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            for (int l = 0; l < 3; l++) {
                linear_case(DS_F32, DS_F32, 1.0f, DS_F32, DS_ACT_NONE, 0, ms[i], ks[j], ns[l]);
                linear_case(DS_BF16, DS_F8_E4M3, 0.5f, DS_BF16, DS_ACT_GELU_TANH, 0, ms[i], ks[j], ns[l]);
            }
}

/* Leading dims [2, 3, K]: rows are flattened over all of them. */
static void test_linear_leading_dims(void)
{
    linear_case(DS_F32, DS_BF16, 1.0f, DS_F32, DS_ACT_SILU, 2, 3, 67, 9);
    linear_case(DS_F16, DS_F16, 1.0f, DS_DTYPE_INVALID, DS_ACT_GELU_SIGMOID, 4, 17, 5, 130);
}

static void test_linear_large(void)
{
    linear_case(DS_F32, DS_F32, 1.0f, DS_F32, DS_ACT_NONE, 0, 257, 384, 320);
    linear_case(DS_F32, DS_F32, 1.0f, DS_DTYPE_INVALID, DS_ACT_NONE, 0, 257, 384, 320);
    linear_case(DS_BF16, DS_BF16, 1.0f, DS_BF16, DS_ACT_GELU_SIGMOID, 0, 257, 384, 320);
    linear_case(DS_F32, DS_F8_E4M3, 0.5f, DS_F32, DS_ACT_GELU_ERF, 0, 257, 384, 320);
    linear_case(DS_F16, DS_F8_E5M2, 1.0f, DS_F16, DS_ACT_SILU, 0, 257, 384, 320);
    /* From 1024 rows f32 runs on OpenBLAS, which adds its product to the bias rows (beta = 1):
     * the bias must stay unscaled, the activation still apply, with f32 and widened weights. */
    linear_case(DS_F32, DS_F32, 0.5f, DS_F32, DS_ACT_GELU_TANH, 0, 1030, 67, 130);
    linear_case(DS_F32, DS_F32, 1.0f, DS_BF16, DS_ACT_NONE, 0, 1030, 67, 130);
    linear_case(DS_F32, DS_BF16, 0.5f, DS_F32, DS_ACT_NONE, 0, 1030, 67, 130);
    /* The few-row path (M <= 4: modulation linears on temb) at model-like K with a vector tail,
     * and M = 5, the first shape that goes through sgemm again. */
    linear_case(DS_F32, DS_F32, 1.0f, DS_F32, DS_ACT_NONE, 0, 1, 3077, 301);
    linear_case(DS_BF16, DS_BF16, 1.0f, DS_BF16, DS_ACT_SILU, 0, 2, 3077, 301);
    linear_case(DS_F32, DS_F8_E4M3, 0.5f, DS_F32, DS_ACT_GELU_SIGMOID, 0, 4, 1030, 257);
    linear_case(DS_F16, DS_F16, 1.0f, DS_DTYPE_INVALID, DS_ACT_NONE, 0, 5, 1030, 257);
    /* Every row-count class the CPU backend tells apart (few rows, dozens, hundreds, thousands:
     * they may run on different GEMM libraries), f32 and bf16, and fp8 weights at thousands. */
    static const int64_t rows[] = {6, 48, 49, 300, 1023, 1024, 1100};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        linear_case(DS_F32, DS_F32, 1.0f, DS_F32, DS_ACT_NONE, 0, rows[i], 67, 33);
        linear_case(DS_BF16, DS_BF16, 1.0f, DS_BF16, DS_ACT_GELU_ERF, 0, rows[i], 67, 33);
    }
    linear_case(DS_BF16, DS_F8_E4M3, 0.5f, DS_F32, DS_ACT_NONE, 0, 1100, 67, 33);
    linear_case(DS_F32, DS_BF16, 1.0f, DS_DTYPE_INVALID, DS_ACT_SILU, 0, 1100, 67, 33);
}

/* The same call twice gives bit-identical output (deterministic for a thread count). */
static void test_linear_deterministic(void)
{
    int64_t xs[2] = {257, 384}, ws[2] = {320, 384}, bs[1] = {320};
    double *xv = kt_randn(257 * 384, 1.0), *wv = kt_randn(320 * 384, 0.05), *bv = kt_randn(320, 1.0);
    ds_tensor x, w, bias, y1, y2;
    REQUIRE(kt_tensor(DS_BF16, 2, xs, xv, &x) && kt_tensor(DS_BF16, 2, ws, wv, &w) &&
            kt_tensor(DS_F32, 1, bs, bv, &bias));
    int64_t ys[2] = {257, 320};
    REQUIRE(kt_tensor(DS_F32, 2, ys, NULL, &y1) && kt_tensor(DS_F32, 2, ys, NULL, &y2));
    ds_error err;
    ds_linear_args a = {&x, &w, &bias, 1.0f, DS_ACT_GELU_TANH, &y1};
    CHECK(ds_linear(kt.backend, NULL, &a, &err) == DS_OK);
    a.y = &y2;
    CHECK(ds_linear(kt.backend, NULL, &a, &err) == DS_OK);
    double *g1 = kt_read(&y1), *g2 = kt_read(&y2);
    CHECK(memcmp(g1, g2, 257 * 320 * sizeof *g1) == 0);
    free(g1);
    free(g2);
    ds_tensor_free(&x);
    ds_tensor_free(&w);
    ds_tensor_free(&bias);
    ds_tensor_free(&y1);
    ds_tensor_free(&y2);
    free(xv);
    free(wv);
    free(bv);
}

/* A large fp8 weight (over the backend's 32 MiB conversion block in bf16, so it is converted and
 * multiplied in several blocks of rows) within budget, and bit-identical to the same values
 * stored as bf16: a model whose weights stay fp8 in the fast tier must compute exactly what the
 * bf16 rounding of them computes (tests/vram relies on it). Also M = 5, the first row count past
 * the few-row path, in bf16. */
static void test_linear_fp8_blocks_match_bf16(void)
{
    const int64_t m = 8, k = 4096, n = 4160;
    linear_case(DS_BF16, DS_F8_E4M3, 0.5f, DS_BF16, DS_ACT_GELU_TANH, 0, m, k, n);
    linear_case(DS_BF16, DS_BF16, 1.0f, DS_F32, DS_ACT_NONE, 0, 5, 1030, 257);
    if (strcmp(kt.backend_name, "cpu") != 0)
        return;
    int64_t xs[2] = {m, k}, ws[2] = {n, k}, ys[2] = {m, n};
    double *xv = kt_randn((size_t)(m * k), 1.0), *wv = kt_randn((size_t)(n * k), 4.0);
    ds_tensor x, w8, w16, y8, y16;
    /* kt_tensor rounds wv to e4m3 in place, so the bf16 tensor holds the same values. */
    REQUIRE(kt_tensor(DS_BF16, 2, xs, xv, &x) && kt_tensor(DS_F8_E4M3, 2, ws, wv, &w8) &&
            kt_tensor(DS_BF16, 2, ws, wv, &w16) && kt_tensor(DS_BF16, 2, ys, NULL, &y8) &&
            kt_tensor(DS_BF16, 2, ys, NULL, &y16));
    ds_error err;
    ds_linear_args a = {&x, &w8, NULL, 1.0f, DS_ACT_NONE, &y8};
    CHECK_MSG(ds_linear(kt.backend, NULL, &a, &err) == DS_OK, "%s", err.message);
    a.weight = &w16;
    a.y = &y16;
    CHECK_MSG(ds_linear(kt.backend, NULL, &a, &err) == DS_OK, "%s", err.message);
    CHECK(memcmp(y8.data, y16.data, ds_tensor_nbytes(&y8)) == 0);
    ds_tensor_free(&x);
    ds_tensor_free(&w8);
    ds_tensor_free(&w16);
    ds_tensor_free(&y8);
    ds_tensor_free(&y16);
    free(xv);
    free(wv);
}

/* One widened-vs-f32 comparison: x [m, k] f32 through `narrow` (a weight of another dtype,
 * widened during the call) and through `same` and `shifted` (the same values stored f32, at a
 * 64-byte-aligned address and 4 bytes past one, as a copy converted once and an f32 file's
 * mapping hold them): all three results bit-identical. */
static void widened_case(const ds_tensor *narrow, const ds_tensor *same, const ds_tensor *shifted,
                         const ds_tensor *bias, ds_activation act, int64_t m)
{
    int64_t n = narrow->shape[0], k = narrow->shape[1], xs[2] = {m, k}, ys[2] = {m, n};
    double *xv = kt_randn((size_t)(m * k), 1.0);
    ds_tensor x, y[3];
    REQUIRE(kt_tensor(DS_F32, 2, xs, xv, &x) && kt_tensor(DS_F32, 2, ys, NULL, &y[0]) &&
            kt_tensor(DS_F32, 2, ys, NULL, &y[1]) && kt_tensor(DS_F32, 2, ys, NULL, &y[2]));
    const ds_tensor *w[3] = {narrow, same, shifted};
    static const char *what[3] = {"widened", "f32", "f32 at an unaligned address"};
    ds_error err;
    for (int i = 0; i < 3; i++) {
        ds_linear_args a = {&x, w[i], bias, 1.0f, act, &y[i]};
        CHECK_MSG(ds_linear(kt.backend, NULL, &a, &err) == DS_OK, "%s", err.message);
    }
    for (int i = 1; i < 3; i++)
        CHECK_MSG(memcmp(y[0].data, y[i].data, ds_tensor_nbytes(&y[0])) == 0,
                  "%s weight [%lld, %lld], %lld rows (%s): results differ from the %s weight's "
                  "(%s)", ds_dtype_name(narrow->dtype), (long long)n, (long long)k, (long long)m,
                  ds_cpu_linear_path(m, DS_F32, narrow->dtype), what[i],
                  ds_cpu_linear_path(m, DS_F32, DS_F32));
    ds_tensor_free(&x);
    for (int i = 0; i < 3; i++)
        ds_tensor_free(&y[i]);
    free(xv);
}

/* f32 activations with a bf16, f16 or fp8 weight (widened to f32 during the call) and the same
 * values stored as f32 (a weight converted once when loaded, an f32 file) give bit-identical
 * results at every row-count class: few rows, oneDNN's and OpenBLAS's f32 ranges. The weight is
 * over 32 MiB in f32, where a widened weight used to be multiplied block by block. */
static void test_linear_widened_matches_f32(void)
{
    if (strcmp(kt.backend_name, "cpu") != 0)
        return;
    const int64_t k = 1024, n = 8200;
    static const int64_t rows[] = {1, 2, 3, 4, 32, 256, 1100, 4096};
    static const ds_dtype narrow[] = {DS_BF16, DS_F16, DS_F8_E4M3};
    int64_t ws[2] = {n, k}, bs[1] = {n};
    float *shifted_data = malloc((size_t)(n * k + 16) * sizeof(float));
    REQUIRE(shifted_data);
    for (size_t d = 0; d < sizeof narrow / sizeof narrow[0]; d++) {
        double *wv = kt_randn((size_t)(n * k), 0.05), *bv = kt_randn((size_t)n, 1.0);
        ds_tensor w_narrow, w32, bias;
        /* kt_tensor rounds wv to the narrow dtype in place, so the f32 tensors hold its values. */
        REQUIRE(kt_tensor(narrow[d], 2, ws, wv, &w_narrow) && kt_tensor(DS_F32, 2, ws, wv, &w32) &&
                kt_tensor(DS_BF16, 1, bs, bv, &bias));
        /* malloc's alignment (16) plus one float: 4 bytes past a 16-byte boundary. */
        float *unaligned = shifted_data + 1;
        memcpy(unaligned, w32.data, ds_tensor_nbytes(&w32));
        ds_tensor w_shifted = ds_tensor_wrap(kt.backend, DS_F32, 2, ws, unaligned);
        for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
            /* The largest row counts in bf16 only (the common case), to keep the test short. */
            if (rows[i] > 256 && narrow[d] != DS_BF16)
                continue;
            widened_case(&w_narrow, &w32, &w_shifted, i % 2 ? &bias : NULL,
                         i % 2 ? DS_ACT_GELU_TANH : DS_ACT_NONE, rows[i]);
        }
        ds_tensor_free(&w_narrow);
        ds_tensor_free(&w32);
        ds_tensor_free(&bias);
        free(wv);
        free(bv);
    }
    free(shifted_data);
}

/* The row counts that run on the dot-product kernel where the processor has it (bf16
 * activations of a few dozen rows: text tokens), over its edges: rows not a multiple of its
 * 6-row tile, weight rows not a multiple of 4, K shorter than a vector, with a vector tail, and
 * past its 1024-element block with a tail; bf16, fp8, f16 and f32 weights; and the last row
 * count it takes and the first it leaves to the libraries. */
static void test_linear_dot_kernel_shapes(void)
{
    static const int64_t ms[] = {5, 7, 12, 13, 65}, ks[] = {5, 16, 17, 1030, 2063},
                         ns[] = {1, 3, 4, 5, 67};
    static const ds_dtype wds[] = {DS_BF16, DS_F8_E4M3, DS_BF16, DS_F16, DS_F32};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
        for (size_t j = 0; j < sizeof ks / sizeof ks[0]; j++)
            for (size_t l = 0; l < sizeof ns / sizeof ns[0]; l++) {
                size_t c = i + j + l;
                ds_dtype wd = wds[c % 5];
                linear_case(DS_BF16, wd, scale_for(wd), c % 2 ? DS_F32 : DS_DTYPE_INVALID,
                            DS_ACT_NONE, 0, ms[i], ks[j], ns[l]);
            }
    linear_case(DS_BF16, DS_BF16, 1.0f, DS_F32, DS_ACT_SILU, 0, 128, 1030, 67);
    linear_case(DS_BF16, DS_BF16, 1.0f, DS_BF16, DS_ACT_NONE, 0, 129, 1030, 67);
}

/* A linear's result does not depend on the backend's thread count at the row counts of the
 * few-row and dot-product kernels (each output is one sum in an order fixed by K): 1, 2 and 3
 * threads give the same bits. */
static void test_linear_thread_count_independent(void)
{
    if (strcmp(kt.backend_name, "cpu") != 0)
        return;
    static const int64_t rows[] = {3, 32, 65};
    const int64_t k = 2063, n = 389;
    int64_t ws[2] = {n, k};
    double *wv = kt_randn((size_t)(n * k), 0.05);
    ds_tensor w;
    REQUIRE(kt_tensor(DS_BF16, 2, ws, wv, &w));
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        /* Without AVX-512 the dozens of rows run on a library, which promises no such thing. */
        const char *path = ds_cpu_linear_path(rows[r], DS_BF16, DS_BF16);
        if (!strstr(path, "few-row") && !strstr(path, "dot-product"))
            continue;
        int64_t m = rows[r], xs[2] = {m, k}, ys[2] = {m, n};
        double *xv = kt_randn((size_t)(m * k), 1.0);
        ds_tensor x;
        REQUIRE(kt_tensor(DS_BF16, 2, xs, xv, &x));
        void *first = NULL;
        for (int threads = 1; threads <= 3; threads++) {
            ds_backend *b = NULL;
            ds_error err;
            REQUIRE(ds_cpu_backend_create(threads, &b, &err) == DS_OK);
            ds_tensor y;
            REQUIRE(kt_tensor(DS_BF16, 2, ys, NULL, &y));
            ds_linear_args a = {&x, &w, NULL, 1.0f, DS_ACT_NONE, &y};
            CHECK_MSG(ds_linear(b, NULL, &a, &err) == DS_OK, "%s", err.message);
            if (!first) {
                first = malloc(ds_tensor_nbytes(&y));
                REQUIRE(first);
                memcpy(first, y.data, ds_tensor_nbytes(&y));
            } else {
                CHECK_MSG(memcmp(first, y.data, ds_tensor_nbytes(&y)) == 0,
                          "%lld rows (%s): %d threads differ from 1", (long long)m,
                          ds_cpu_linear_path(m, DS_BF16, DS_BF16), threads);
            }
            ds_tensor_free(&y);
            ds_backend_destroy(b);
        }
        free(first);
        ds_tensor_free(&x);
        free(xv);
    }
    ds_tensor_free(&w);
    free(wv);
}

/* More distinct GEMM shapes than the backend keeps prepared at once, twice over: every one
 * still computes its own product after others took its place. */
static void test_linear_many_shapes(void)
{
    for (int round = 0; round < 2; round++)
        for (int64_t n = 1; n <= 130; n++)
            linear_case(n % 2 ? DS_BF16 : DS_F32, n % 2 ? DS_BF16 : DS_F32, 1.0f, DS_DTYPE_INVALID,
                        DS_ACT_NONE, 0, 6, 8 + n % 5, n);
}

/* ---- batched matmul ---- */

static void bmm_case(ds_dtype ad, ds_dtype bd, ds_dtype yd, int ta, int tb, float alpha,
                     int64_t batch, int64_t m, int64_t k, int64_t n)
{
    int64_t ashape[3] = {batch, ta ? k : m, ta ? m : k};
    int64_t bshape[3] = {batch, tb ? n : k, tb ? k : n};
    int64_t yshape[3] = {batch, m, n};
    double *av = kt_randn((size_t)(batch * m * k), 1.0), *bv = kt_randn((size_t)(batch * k * n), 1.0);
    ds_tensor a, b, y;
    int ok = kt_tensor(ad, 3, ashape, av, &a) && kt_tensor(bd, 3, bshape, bv, &b) &&
             kt_tensor(yd, 3, yshape, NULL, &y);
    CHECK(ok);
    if (ok) {
        ds_batched_matmul_args args = {&a, &b, ta, tb, alpha, &y};
        ds_error err;
        int rc = ds_batched_matmul(kt.backend, NULL, &args, &err);
        CHECK_MSG(rc == DS_OK, "%s", err.message);
        double *ref = malloc((size_t)(batch * m * n) * sizeof *ref);
        for (int64_t p = 0; p < batch; p++)
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < n; j++) {
                    double acc = 0;
                    for (int64_t l = 0; l < k; l++) {
                        double x = ta ? av[(p * k + l) * m + i] : av[(p * m + i) * k + l];
                        double z = tb ? bv[(p * n + j) * k + l] : bv[(p * k + l) * n + j];
                        acc += x * z;
                    }
                    ref[(p * m + i) * n + j] = alpha * acc;
                }
        double *got = kt_read(&y);
        char what[160];
        snprintf(what, sizeof what, "batched_matmul %s x %s -> %s ta %d tb %d [%lld: %lld x %lld x %lld]",
                 ds_dtype_name(ad), ds_dtype_name(bd), ds_dtype_name(yd), ta, tb, (long long)batch,
                 (long long)m, (long long)k, (long long)n);
        double budget = fmax(fmax(kt_budget(ad), kt_budget(bd)), kt_budget(yd));
        CHECK(kt_compare(what, got, ref, (size_t)(batch * m * n), budget));
        free(got);
        free(ref);
    }
    ds_tensor_free(&a);
    ds_tensor_free(&b);
    ds_tensor_free(&y);
    free(av);
    free(bv);
}

static void test_batched_matmul(void)
{
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            /* M, K, N all different so any mixed-up transpose or leading dim shows. */
            bmm_case(DS_F32, DS_F32, DS_F32, ta, tb, 0.75f, 3, 5, 7, 4);
            bmm_case(DS_F32, DS_F32, DS_F32, ta, tb, -2.0f, 2, 17, 33, 9);
            bmm_case(DS_BF16, DS_BF16, DS_BF16, ta, tb, 0.125f, 3, 5, 7, 4);
            bmm_case(DS_F16, DS_F32, DS_F16, ta, tb, 1.0f, 2, 1, 3, 127);
            bmm_case(DS_F32, DS_BF16, DS_F32, ta, tb, 0.5f, 1, 127, 1, 3);
            /* Attention-like sizes: bf16 operands with an f32 result, one and several batches. */
            bmm_case(DS_BF16, DS_BF16, DS_F32, ta, tb, 0.088f, 1, 96, 128, 80);
            bmm_case(DS_BF16, DS_BF16, DS_BF16, ta, tb, 1.0f, 3, 33, 64, 40);
            bmm_case(DS_F32, DS_F32, DS_F32, ta, tb, 0.5f, 2, 1030, 9, 7);
            bmm_case(DS_BF16, DS_BF16, DS_F32, ta, tb, 1.0f, 1, 1030, 9, 7);
        }
}

/* The CPU backend cuts a GEMM into one part per thread (columns in whole multiples of 64, whole
 * matrices of a batch, or rows where the columns are too few), on oneDNN and on OpenBLAS: 3 and
 * 4 threads give parts with short tails, each cut checked against the reference. */
static void test_gemm_parts(void)
{
    if (strcmp(kt.backend_name, "cpu") != 0)
        return;
    ds_backend *shared = kt.backend;
    static const int thread_counts[] = {3, 4};
    for (size_t t = 0; t < sizeof thread_counts / sizeof thread_counts[0]; t++) {
        ds_error err;
        int rc = ds_cpu_backend_create(thread_counts[t], &kt.backend, &err);
        CHECK_MSG(rc == DS_OK, "%s", err.message);
        if (rc != DS_OK)
            break;
        /* columns: 300 = 128 + 128 + 44 with 3 threads */
        linear_case(DS_F32, DS_F32, 1.0f, DS_F32, DS_ACT_NONE, 0, 70, 256, 300);
        linear_case(DS_BF16, DS_BF16, 1.0f, DS_BF16, DS_ACT_NONE, 0, 40, 512, 700);
        /* rows: 100 columns are too few for 64 per thread */
        linear_case(DS_F32, DS_F32, 1.0f, DS_DTYPE_INVALID, DS_ACT_NONE, 0, 203, 512, 100);
        /* OpenBLAS (thousands of rows; bf16 widened past oneDNN's bf16 rows where the
         * processor's bf16 rate is the f32 one), the bias added by beta = 1 in every part */
        linear_case(DS_F32, DS_F32, 0.5f, DS_F32, DS_ACT_NONE, 0, 1100, 64, 300);
        linear_case(DS_F32, DS_F32, 1.0f, DS_F32, DS_ACT_SILU, 0, 1100, 96, 100);
        linear_case(DS_BF16, DS_BF16, 1.0f, DS_BF16, DS_ACT_NONE, 0, 300, 128, 260);
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                /* batches: 5 = 2 + 2 + 1 with 3 threads */
                bmm_case(DS_F32, DS_F32, DS_F32, ta, tb, 0.5f, 5, 64, 72, 68);
                /* fewer batches than threads: columns within each */
                bmm_case(DS_F32, DS_F32, DS_F32, ta, tb, 1.0f, 2, 33, 128, 260);
                bmm_case(DS_BF16, DS_BF16, DS_F32, ta, tb, 1.0f, 2, 40, 128, 200);
                /* one batch, few columns: rows */
                bmm_case(DS_F32, DS_F32, DS_F32, ta, tb, 2.0f, 1, 301, 160, 50);
                /* OpenBLAS: batches, columns, rows */
                bmm_case(DS_F32, DS_F32, DS_F32, ta, tb, 0.5f, 4, 1030, 16, 40);
                bmm_case(DS_F32, DS_F32, DS_F32, ta, tb, 1.0f, 1, 1030, 24, 200);
                bmm_case(DS_F32, DS_F32, DS_F32, ta, tb, 1.0f, 1, 1030, 24, 70);
            }
        ds_backend_destroy(kt.backend);
    }
    kt.backend = shared;
}

int main(int argc, char **argv)
{
    kt_init(argc, argv);
    RUN(test_linear_dtypes_and_epilogues);
    RUN(test_linear_all_odd_shapes);
    RUN(test_linear_leading_dims);
    RUN(test_linear_large);
    RUN(test_linear_deterministic);
    RUN(test_linear_fp8_blocks_match_bf16);
    RUN(test_linear_widened_matches_f32);
    RUN(test_linear_many_shapes);
    RUN(test_linear_dot_kernel_shapes);
    RUN(test_linear_thread_count_independent);
    RUN(test_batched_matmul);
    RUN(test_gemm_parts);
    kt_finish();
    return test_summary();
}
