/* Layer norm, RMS norm (full width and per head), group norm, the VAE's channel RMS norm and
 * softmax against float64 references written from the formulas in kernels/backend.h (the
 * PyTorch definitions), computed from the inputs as rounded to their storage dtype.
 *
 * The interface does not promise that y may alias x for these ops, so no case runs in place. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_test.h"
#include "test.h"

static const ds_dtype dtypes[] = {DS_F32, DS_BF16, DS_F16};

static size_t numel(int nd, const int64_t *shape)
{
    size_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= (size_t)shape[i];
    return n;
}

static void check_output(const char *what, const ds_tensor *y, const double *ref, double budget)
{
    double *got = kt_read(y);
    CHECK(kt_compare(what, got, ref, (size_t)ds_tensor_numel(y), budget));
    free(got);
}

/* An optional per-channel parameter around `center` (1 for scales, 0 for shifts), rounded to
 * dtype; *t is cleared and NULL returned when the operand is absent. */
static double *param(int present, ds_dtype dtype, int64_t c, double center, ds_tensor *t)
{
    memset(t, 0, sizeof *t);
    if (!present)
        return NULL;
    double *v = kt_randn((size_t)c, 0.5);
    for (int64_t i = 0; i < c; i++)
        v[i] += center;
    if (!kt_tensor(dtype, 1, &c, v, t)) {
        test_case_failed = 1;
        free(v);
        return NULL;
    }
    return v;
}

static const char *dtype_or_none(const double *v, ds_dtype d) { return v ? ds_dtype_name(d) : "none"; }

/* ---- references (f64) ---- */

static void ref_row_norm(const double *x, const double *w, const double *b, size_t rows, size_t c,
                         double eps, int rms, double *y)
{
    for (size_t r = 0; r < rows; r++) {
        const double *xr = x + r * c;
        double mean = 0, var = 0;
        if (!rms) {
            for (size_t i = 0; i < c; i++)
                mean += xr[i];
            mean /= (double)c;
        }
        for (size_t i = 0; i < c; i++)
            var += (xr[i] - mean) * (xr[i] - mean);
        var /= (double)c; /* population variance, or mean(x^2) for RMS */
        double rstd = 1.0 / sqrt(var + eps);
        for (size_t i = 0; i < c; i++)
            y[r * c + i] = (xr[i] - mean) * rstd * (w ? w[i] : 1.0) + (b ? b[i] : 0.0);
    }
}

static void ref_group_norm(const double *x, const double *w, const double *b, size_t batch,
                           size_t ch, size_t hw, size_t groups, double eps, double *y)
{
    size_t per = ch / groups, len = per * hw;
    for (size_t bi = 0; bi < batch; bi++)
        for (size_t g = 0; g < groups; g++) {
            size_t at = (bi * ch + g * per) * hw;
            double mean = 0, var = 0;
            for (size_t i = 0; i < len; i++)
                mean += x[at + i];
            mean /= (double)len;
            for (size_t i = 0; i < len; i++)
                var += (x[at + i] - mean) * (x[at + i] - mean);
            var /= (double)len;
            double rstd = 1.0 / sqrt(var + eps);
            for (size_t i = 0; i < len; i++) {
                size_t c = g * per + i / hw;
                y[at + i] = (x[at + i] - mean) * rstd * (w ? w[c] : 1.0) + (b ? b[c] : 0.0);
            }
        }
}

static void ref_channel_rms(const double *x, const double *g, const double *b, size_t batch,
                            size_t ch, size_t hw, double eps, double *y)
{
    for (size_t bi = 0; bi < batch; bi++)
        for (size_t p = 0; p < hw; p++) {
            size_t base = bi * ch * hw + p;
            double sq = 0;
            for (size_t c = 0; c < ch; c++)
                sq += x[base + c * hw] * x[base + c * hw];
            double scale = sqrt((double)ch) / fmax(sqrt(sq), eps);
            for (size_t c = 0; c < ch; c++)
                y[base + c * hw] = x[base + c * hw] * scale * g[c] + (b ? b[c] : 0.0);
        }
}

static void ref_softmax(const double *x, size_t rows, size_t c, double *y)
{
    for (size_t r = 0; r < rows; r++) {
        const double *xr = x + r * c;
        double mx = -INFINITY, sum = 0;
        for (size_t i = 0; i < c; i++)
            mx = fmax(mx, xr[i]);
        for (size_t i = 0; i < c; i++)
            sum += exp(xr[i] - mx);
        for (size_t i = 0; i < c; i++)
            y[r * c + i] = exp(xr[i] - mx) / sum;
    }
}

/* ---- layer norm / RMS norm ---- */

enum { AFFINE_NONE, AFFINE_WEIGHT, AFFINE_BOTH, AFFINE_BIAS, AFFINE_MODES };

/* xv: x's values (rounded in place). rms: RMS norm (bias must be absent). */
static void row_norm_case(int rms, ds_dtype xd, ds_dtype yd, ds_dtype wd, int affine, int nd,
                          const int64_t *shape, double *xv, float eps)
{
    size_t n = numel(nd, shape), c = (size_t)shape[nd - 1], rows = c ? n / c : 0;
    ds_tensor x, y, w, b;
    REQUIRE(kt_tensor(xd, nd, shape, xv, &x));
    REQUIRE(kt_tensor(yd, nd, shape, NULL, &y));
    double *wv = param(affine == AFFINE_WEIGHT || affine == AFFINE_BOTH, wd, (int64_t)c, 1.0, &w);
    double *bv = param(!rms && (affine == AFFINE_BOTH || affine == AFFINE_BIAS), wd, (int64_t)c, 0.0, &b);
    ds_error err;
    int rc;
    if (rms) {
        ds_rms_norm_args a = {&x, wv ? &w : NULL, eps, &y};
        rc = ds_rms_norm(kt.backend, NULL, &a, &err);
    } else {
        ds_layer_norm_args a = {&x, wv ? &w : NULL, bv ? &b : NULL, eps, &y};
        rc = ds_layer_norm(kt.backend, NULL, &a, &err);
    }
    char desc[128], what[256];
    snprintf(what, sizeof what, "%s x %s -> %s, weight %s, bias %s, eps %g",
             rms ? "rms_norm" : "layer_norm", ds_tensor_describe(&x, desc, sizeof desc),
             ds_dtype_name(yd), dtype_or_none(wv, wd), dtype_or_none(bv, wd), (double)eps);
    CHECK_MSG(rc == DS_OK, "%s: %s", what, err.message);
    double *ref = malloc(n * sizeof *ref);
    ref_row_norm(xv, wv, bv, rows, c, (double)eps, rms, ref);
    check_output(what, &y, ref, kt_budget(yd));
    free(ref);
    free(wv);
    free(bv);
    ds_tensor_free(&x);
    ds_tensor_free(&y);
    ds_tensor_free(&w);
    ds_tensor_free(&b);
}

/* Widths 1 and 3 (degenerate statistics), 127 (no vector multiple), 1500 (longer than one
 * conversion piece), 3072 (a DiT hidden size); 257 rows split unevenly over the thread pool. */
static const struct {
    int nd;
    int64_t shape[4];
} row_shapes[] = {
    {1, {1}}, {2, {3, 1}}, {2, {5, 3}}, {3, {2, 17, 127}}, {2, {257, 127}}, {2, {4, 1500}},
    {2, {13, 3072}},
};
#define N_ROW_SHAPES (sizeof row_shapes / sizeof row_shapes[0])

static const float model_eps[] = {1e-6f, 1e-5f, 1e-12f};

static void test_layer_norm(void)
{
    int k = 0;
    for (size_t si = 0; si < N_ROW_SHAPES; si++)
        for (int xi = 0; xi < 3; xi++)
            for (int affine = 0; affine < AFFINE_MODES; affine++, k++) {
                size_t n = numel(row_shapes[si].nd, row_shapes[si].shape);
                double *xv = kt_randn(n, 1.5);
                row_norm_case(0, dtypes[xi], dtypes[(xi + si) % 3], dtypes[k % 3], affine,
                              row_shapes[si].nd, row_shapes[si].shape, xv, model_eps[k % 3]);
                free(xv);
            }
}

/* Inputs where a shortcut in the statistics shows: a mean far from zero (one-pass
 * E[x^2] - E[x]^2 in f32 cancels), a variance near eps (eps dropped or misplaced), and
 * constant rows (variance exactly 0: the output is the bias, never NaN). */
static void test_layer_norm_conditioning(void)
{
    int64_t shape[2] = {6, 3072};
    size_t n = 6 * 3072;
    for (int xi = 0; xi < 2; xi++) {
        double *xv = kt_randn(n, 1.0);
        for (size_t i = 0; i < n; i++)
            xv[i] += 10.0;
        row_norm_case(0, dtypes[xi], DS_F32, DS_F32, AFFINE_BOTH, 2, shape, xv, 1e-6f);
        free(xv);

        xv = kt_randn(n, 1e-3);
        row_norm_case(0, dtypes[xi], DS_F32, DS_BF16, AFFINE_WEIGHT, 2, shape, xv, 1e-6f);
        free(xv);

        xv = kt_randn(n, 1.0);
        for (size_t i = 0; i < 3072; i++) {
            xv[i] = 0.0;
            xv[3 * 3072 + i] = 2.0;
        }
        row_norm_case(0, dtypes[xi], DS_F32, DS_F32, AFFINE_BOTH, 2, shape, xv, 1e-5f);
        free(xv);
    }
}

static void test_rms_norm(void)
{
    int k = 0;
    for (size_t si = 0; si < N_ROW_SHAPES; si++)
        for (int xi = 0; xi < 3; xi++)
            for (int with_w = 0; with_w < 2; with_w++, k++) {
                size_t n = numel(row_shapes[si].nd, row_shapes[si].shape);
                double *xv = kt_randn(n, 1.5);
                row_norm_case(1, dtypes[xi], dtypes[(xi + si + with_w) % 3], dtypes[k % 3],
                              with_w ? AFFINE_WEIGHT : AFFINE_NONE, row_shapes[si].nd,
                              row_shapes[si].shape, xv, model_eps[k % 3]);
                free(xv);
            }
}

/* Query/key norm: x[B, S, H, D] with one weight[D] shared by every head, so a kernel that
 * indexed the weight by the flat channel h * D + d reads past it or uses the wrong scales. */
static void test_rms_norm_per_head(void)
{
    static const int64_t shapes[][4] = {{2, 17, 3, 128}, {1, 5, 24, 128}, {3, 7, 5, 64}};
    for (int si = 0; si < 3; si++)
        for (int xi = 0; xi < 3; xi++)
            for (int wi = 0; wi < 2; wi++) {
                size_t n = numel(4, shapes[si]);
                double *xv = kt_randn(n, 2.0);
                row_norm_case(1, dtypes[xi], dtypes[xi], dtypes[wi], AFFINE_WEIGHT, 4, shapes[si],
                              xv, 1e-6f);
                free(xv);
            }
    /* Zero rows (padding tokens): 0 * rsqrt(eps) = 0. Tiny rows: eps dominates mean(x^2). */
    int64_t shape[4] = {1, 4, 2, 128};
    double *xv = kt_randn(1024, 1.0);
    for (int i = 0; i < 128; i++) {
        xv[i] = 0.0;
        xv[5 * 128 + i] *= 1e-3;
    }
    row_norm_case(1, DS_F32, DS_F32, DS_F32, AFFINE_WEIGHT, 4, shape, xv, 1e-6f);
    free(xv);
}

/* ---- group norm ---- */

static void group_norm_case(ds_dtype xd, ds_dtype yd, ds_dtype wd, int with_w, int with_b, int nd,
                            const int64_t *shape, int groups, double channel_offset, float eps)
{
    size_t n = numel(nd, shape), batch = (size_t)shape[0], ch = (size_t)shape[1];
    size_t hw = n / (batch * ch);
    double *xv = kt_randn(n, 1.0);
    /* Channels of one group with different means: the group's variance must include them. */
    for (size_t i = 0; i < n; i++)
        xv[i] += channel_offset * (double)((i / hw) % ch % 5) - channel_offset;
    ds_tensor x, y, w, b;
    REQUIRE(kt_tensor(xd, nd, shape, xv, &x));
    REQUIRE(kt_tensor(yd, nd, shape, NULL, &y));
    double *wv = param(with_w, wd, (int64_t)ch, 1.0, &w);
    double *bv = param(with_b, wd, (int64_t)ch, 0.0, &b);
    ds_group_norm_args a = {&x, groups, wv ? &w : NULL, bv ? &b : NULL, eps, &y};
    ds_error err;
    int rc = ds_group_norm(kt.backend, NULL, &a, &err);
    char desc[128], what[256];
    snprintf(what, sizeof what, "group_norm x %s, %d groups -> %s, weight %s, bias %s, eps %g",
             ds_tensor_describe(&x, desc, sizeof desc), groups, ds_dtype_name(yd),
             dtype_or_none(wv, wd), dtype_or_none(bv, wd), (double)eps);
    CHECK_MSG(rc == DS_OK, "%s: %s", what, err.message);
    double *ref = malloc(n * sizeof *ref);
    ref_group_norm(xv, wv, bv, batch, ch, hw, (size_t)groups, (double)eps, ref);
    check_output(what, &y, ref, kt_budget(yd));
    free(ref);
    free(xv);
    free(wv);
    free(bv);
    ds_tensor_free(&x);
    ds_tensor_free(&y);
    ds_tensor_free(&w);
    ds_tensor_free(&b);
}

static void test_group_norm(void)
{
    /* VAE/UNet shapes (32 groups, 2-D and [B, C, T, H, W] spatial), a group longer than one
     * conversion piece, 1-D and no spatial dims, one group and one channel per group, and
     * 93 items that split unevenly over the pool. */
    static const struct {
        int nd;
        int64_t shape[5];
        int groups;
    } cases[] = {
        {4, {2, 64, 9, 11}, 32},  {5, {1, 128, 3, 8, 10}, 32}, {4, {1, 64, 33, 31}, 32},
        {3, {3, 6, 5}, 3},        {2, {3, 6}, 3},              {4, {2, 12, 7, 7}, 1},
        {4, {2, 12, 7, 7}, 12},   {4, {3, 93, 16, 16}, 31},    {5, {2, 64, 1, 5, 3}, 32},
    };
    int k = 0;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
        for (int xi = 0; xi < 3; xi++)
            for (int affine = 0; affine < 3; affine++, k++)
                group_norm_case(dtypes[xi], dtypes[(xi + ci) % 3], dtypes[k % 3], affine >= 1,
                                affine == 2, cases[ci].nd, cases[ci].shape, cases[ci].groups,
                                (ci % 2) ? 3.0 : 0.0, k % 2 ? 1e-5f : 1e-6f);
    int64_t shape[4] = {1, 64, 8, 8};
    group_norm_case(DS_F32, DS_F32, DS_F32, 0, 1, 4, shape, 32, 0.0, 1e-6f); /* bias alone */
}

/* ---- channel RMS norm ---- */

/* `zero_pos`: set every channel at spatial position 0 to zero (norm 0 < eps: y = bias).
 * `scale`: the input's standard deviation (near eps exercises the max). */
static void channel_rms_case(ds_dtype xd, ds_dtype yd, ds_dtype gd, int with_b, int nd,
                             const int64_t *shape, double scale, int zero_pos, float eps)
{
    size_t n = numel(nd, shape), batch = (size_t)shape[0], ch = (size_t)shape[1];
    size_t hw = n / (batch * ch);
    double *xv = kt_randn(n, scale);
    if (zero_pos)
        for (size_t i = 0; i < n; i += hw)
            xv[i] = 0.0;
    ds_tensor x, y, g, b;
    REQUIRE(kt_tensor(xd, nd, shape, xv, &x));
    REQUIRE(kt_tensor(yd, nd, shape, NULL, &y));
    double *gv = param(1, gd, (int64_t)ch, 1.0, &g);
    double *bv = param(with_b, gd, (int64_t)ch, 0.0, &b);
    REQUIRE(gv);
    ds_channel_rms_norm_args a = {&x, &g, bv ? &b : NULL, eps, &y};
    ds_error err;
    int rc = ds_channel_rms_norm(kt.backend, NULL, &a, &err);
    char desc[128], what[256];
    snprintf(what, sizeof what, "channel_rms_norm x %s (std %g%s) -> %s, gamma %s, bias %s, eps %g",
             ds_tensor_describe(&x, desc, sizeof desc), scale, zero_pos ? ", a zero column" : "",
             ds_dtype_name(yd), ds_dtype_name(gd), dtype_or_none(bv, gd), (double)eps);
    CHECK_MSG(rc == DS_OK, "%s: %s", what, err.message);
    double *ref = malloc(n * sizeof *ref);
    ref_channel_rms(xv, gv, bv, batch, ch, hw, (double)eps, ref);
    check_output(what, &y, ref, kt_budget(yd));
    free(ref);
    free(xv);
    free(gv);
    free(bv);
    ds_tensor_free(&x);
    ds_tensor_free(&y);
    ds_tensor_free(&g);
    ds_tensor_free(&b);
}

static void test_channel_rms_norm(void)
{
    /* Images [B, C, H, W] and videos [B, C, T, H, W] as the Wan/Qwen-Image VAE has them; 600
     * positions span several blocks of positions, the last one partial; C = 1; no spatial dims. */
    static const struct {
        int nd;
        int64_t shape[5];
    } cases[] = {
        {4, {1, 96, 17, 13}}, {5, {2, 32, 3, 9, 11}}, {4, {1, 16, 20, 30}}, {3, {3, 1, 5}},
        {2, {2, 3}},          {5, {1, 384, 2, 4, 5}},
    };
    int k = 0;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
        for (int xi = 0; xi < 3; xi++)
            for (int with_b = 0; with_b < 2; with_b++, k++)
                channel_rms_case(dtypes[xi], dtypes[(xi + ci + with_b) % 3], dtypes[k % 2], with_b,
                                 cases[ci].nd, cases[ci].shape, 1.5, ci != 4, 1e-12f);
    /* Norms straddling eps: F.normalize divides by max(||x||, eps), not ||x|| + eps nor
     * sqrt(||x||^2 + eps). */
    int64_t shape[4] = {2, 3, 7, 9};
    for (int xi = 0; xi < 2; xi++)
        for (int with_b = 0; with_b < 2; with_b++)
            channel_rms_case(dtypes[xi], DS_F32, DS_F32, with_b, 4, shape, 5e-7, 1, 1e-6f);
}

/* ---- softmax ---- */

static void softmax_case(ds_dtype xd, ds_dtype yd, int nd, const int64_t *shape, double *xv)
{
    size_t n = numel(nd, shape), c = (size_t)shape[nd - 1];
    ds_tensor x, y;
    REQUIRE(kt_tensor(xd, nd, shape, xv, &x));
    REQUIRE(kt_tensor(yd, nd, shape, NULL, &y));
    ds_softmax_args a = {&x, &y};
    ds_error err;
    int rc = ds_softmax(kt.backend, NULL, &a, &err);
    char desc[128], what[256];
    snprintf(what, sizeof what, "softmax x %s -> %s", ds_tensor_describe(&x, desc, sizeof desc),
             ds_dtype_name(yd));
    CHECK_MSG(rc == DS_OK, "%s: %s", what, err.message);
    double *ref = malloc(n * sizeof *ref);
    ref_softmax(xv, n / c, c, ref);
    check_output(what, &y, ref, kt_budget(yd));
    free(ref);
    ds_tensor_free(&x);
    ds_tensor_free(&y);
}

static void test_softmax(void)
{
    /* 257 rows of 33 split unevenly over the pool; width 1 is all ones. */
    static const struct {
        int nd;
        int64_t shape[4];
    } cases[] = {
        {1, {1}}, {2, {4, 1}}, {2, {5, 3}}, {3, {2, 17, 127}}, {2, {257, 33}}, {2, {3, 1500}},
        {2, {13, 3072}}, {4, {1, 2, 9, 17}},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
        for (int xi = 0; xi < 3; xi++) {
            double *xv = kt_randn(numel(cases[ci].nd, cases[ci].shape), 3.0);
            softmax_case(dtypes[xi], dtypes[(xi + ci) % 3], cases[ci].nd, cases[ci].shape, xv);
            free(xv);
        }
}

/* Logits of magnitude 1000: exp(1000) overflows and exp(-1000) underflows to 0 in any float
 * format, so only a max-subtracted softmax gives finite results. Masked logits (-inf) get 0. */
static void test_softmax_large_inputs(void)
{
    enum { ROWS = 5, W = 37 };
    int64_t shape[2] = {ROWS, W};
    for (int xi = 0; xi < 3; xi++)
        for (int yi = 0; yi < 3; yi++) {
            double *xv = kt_randn(ROWS * W, 2.0);
            for (int i = 0; i < W; i++) {
                xv[0 * W + i] += 1000.0;                          /* all near +1000 */
                xv[1 * W + i] -= 1000.0;                          /* all near -1000 */
                xv[2 * W + i] = i % 2 ? 1000.0 - i : -1000.0 + i; /* both signs */
                if (i % 3 == 0)
                    xv[3 * W + i] = -INFINITY; /* a mask */
            }
            xv[4 * W + 7] = 1000.0; /* one dominant logit: the row is one-hot */
            softmax_case(dtypes[xi], dtypes[yi], 2, shape, xv);
            free(xv);
        }
}

/* ---- validation (covered in depth by test_ops_validation) ---- */

static void test_rejects_bad_parameters(void)
{
    int64_t xs[4] = {1, 4, 3, 128}, ws[1] = {3 * 128}, img[4] = {1, 48, 4, 4};
    ds_tensor x, y, w, xi, yi;
    REQUIRE(kt_tensor(DS_BF16, 4, xs, NULL, &x) && kt_tensor(DS_BF16, 4, xs, NULL, &y) &&
            kt_tensor(DS_F32, 1, ws, NULL, &w) && kt_tensor(DS_F32, 4, img, NULL, &xi) &&
            kt_tensor(DS_F32, 4, img, NULL, &yi));
    ds_error err;
    memset(&err, 0, sizeof err);
    /* A per-head norm given the full-width weight [H * D]. */
    ds_rms_norm_args rn = {&x, &w, 1e-6f, &y};
    int rc = ds_rms_norm(kt.backend, NULL, &rn, &err);
    CHECK(rc == DS_ERR_INVALID_ARGUMENT);
    CHECK(strncmp(err.message, "rms_norm: ", 10) == 0);
    CHECK_CONTAINS(err.message, "weight");
    CHECK_CONTAINS(err.message, "[128]");

    memset(&err, 0, sizeof err);
    ds_group_norm_args gn = {&xi, 32, NULL, NULL, 1e-6f, &yi};
    rc = ds_group_norm(kt.backend, NULL, &gn, &err);
    CHECK(rc == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "group_norm: ");
    CHECK_CONTAINS(err.message, "32 groups do not divide the 48 channels");
    ds_tensor_free(&x);
    ds_tensor_free(&y);
    ds_tensor_free(&w);
    ds_tensor_free(&xi);
    ds_tensor_free(&yi);
}

int main(int argc, char **argv)
{
    kt_init(argc, argv);
    RUN(test_layer_norm);
    RUN(test_layer_norm_conditioning);
    RUN(test_rms_norm);
    RUN(test_rms_norm_per_head);
    RUN(test_group_norm);
    RUN(test_channel_rms_norm);
    RUN(test_softmax);
    RUN(test_softmax_large_inputs);
    RUN(test_rejects_bad_parameters);
    kt_finish();
    return test_summary();
}
