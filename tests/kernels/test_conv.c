/* conv2d and conv3d_causal against float64 references written here as plain loops over the
 * padded input (upstream's definitions: F.pad then an unpadded convolution; for the causal conv
 * the time axis is [zeros, cache frames, x frames] with KT - 1 frames in front, as
 * QwenImageCausalConv3d.forward concatenates the cache and pads the rest, facts §7.2). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_test.h"
#include "test.h"

static size_t numel(int ndim, const int64_t *shape)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    return n;
}

/* ---- conv2d ---- */

typedef struct conv2d_case {
    int64_t b, cin, h, w, cout, kh, kw;
    int pad[4];    /* top, bottom, left, right */
    int stride[2];
    int bias;
    ds_dtype x_dtype, w_dtype, y_dtype;
} conv2d_case;

static void ref_conv2d(const conv2d_case *c, const double *x, const double *w, const double *bias,
                       int64_t oh, int64_t ow, double *y)
{
    for (int64_t b = 0; b < c->b; b++)
        for (int64_t co = 0; co < c->cout; co++)
            for (int64_t i = 0; i < oh; i++)
                for (int64_t j = 0; j < ow; j++) {
                    double acc = bias ? bias[co] : 0.0;
                    for (int64_t ci = 0; ci < c->cin; ci++)
                        for (int64_t ki = 0; ki < c->kh; ki++)
                            for (int64_t kj = 0; kj < c->kw; kj++) {
                                int64_t ih = i * c->stride[0] - c->pad[0] + ki;
                                int64_t iw = j * c->stride[1] - c->pad[2] + kj;
                                if (ih < 0 || ih >= c->h || iw < 0 || iw >= c->w)
                                    continue;
                                acc += w[((co * c->cin + ci) * c->kh + ki) * c->kw + kj] *
                                       x[((b * c->cin + ci) * c->h + ih) * c->w + iw];
                            }
                    y[((b * c->cout + co) * oh + i) * ow + j] = acc;
                }
}

static void run_conv2d(const conv2d_case *c)
{
    int64_t oh = (c->h + c->pad[0] + c->pad[1] - c->kh) / c->stride[0] + 1;
    int64_t ow = (c->w + c->pad[2] + c->pad[3] - c->kw) / c->stride[1] + 1;
    const int64_t xs[] = {c->b, c->cin, c->h, c->w}, ws[] = {c->cout, c->cin, c->kh, c->kw};
    const int64_t bs[] = {c->cout}, ys[] = {c->b, c->cout, oh, ow};
    double *xv = kt_randn(numel(4, xs), 1.0);
    double *wv = kt_randn(numel(4, ws), 1.0 / sqrt((double)(c->cin * c->kh * c->kw)));
    double *bv = c->bias ? kt_randn((size_t)c->cout, 1.0) : NULL;
    ds_tensor x, w, bias, y;
    REQUIRE(kt_tensor(c->x_dtype, 4, xs, xv, &x));
    REQUIRE(kt_tensor(c->w_dtype, 4, ws, wv, &w));
    if (bv)
        REQUIRE(kt_tensor(c->w_dtype, 1, bs, bv, &bias));
    REQUIRE(kt_tensor(c->y_dtype, 4, ys, NULL, &y));
    size_t n = numel(4, ys);
    double *ref = malloc(n * sizeof *ref);
    ref_conv2d(c, xv, wv, bv, oh, ow, ref);
    ds_error err;
    ds_conv2d_args a = {&x, &w, bv ? &bias : NULL, {c->pad[0], c->pad[1], c->pad[2], c->pad[3]},
                        {c->stride[0], c->stride[1]}, &y};
    CHECK_MSG(ds_conv2d(kt.backend, NULL, &a, &err) == DS_OK, "%s", err.message);
    double *got = kt_read(&y);
    char what[256];
    snprintf(what, sizeof what,
             "conv2d x[%lld,%lld,%lld,%lld] %s w %lldx%lld %s pad (%d,%d,%d,%d) stride (%d,%d) "
             "bias %d y %s",
             (long long)c->b, (long long)c->cin, (long long)c->h, (long long)c->w,
             ds_dtype_name(c->x_dtype), (long long)c->kh, (long long)c->kw,
             ds_dtype_name(c->w_dtype), c->pad[0], c->pad[1], c->pad[2], c->pad[3], c->stride[0],
             c->stride[1], c->bias, ds_dtype_name(c->y_dtype));
    CHECK(kt_compare(what, got, ref, n, kt_budget(c->y_dtype)));
    free(got);
    free(ref);
    free(xv);
    free(wv);
    free(bv);
    ds_tensor_free(&x);
    ds_tensor_free(&w);
    if (c->bias)
        ds_tensor_free(&bias);
    ds_tensor_free(&y);
}

static void test_conv2d_3x3(void)
{
    static const ds_dtype dts[] = {DS_F32, DS_BF16, DS_F16};
    for (int d = 0; d < 3; d++) {
        ds_dtype t = dts[d];
        conv2d_case same = {2, 5, 9, 11, 7, 3, 3, {1, 1, 1, 1}, {1, 1}, 1, t, t, t};
        run_conv2d(&same);
        conv2d_case valid = {1, 3, 17, 13, 4, 3, 3, {0, 0, 0, 0}, {1, 1}, 0, t, t, t};
        run_conv2d(&valid);
        /* The VAE's downsample: ZeroPad2d(0, 1, 0, 1) folded into the conv, then stride 2. */
        conv2d_case down = {1, 6, 9, 8, 6, 3, 3, {0, 1, 0, 1}, {2, 2}, 1, t, t, t};
        run_conv2d(&down);
        conv2d_case down_same = {2, 4, 16, 15, 5, 3, 3, {1, 1, 1, 1}, {2, 2}, 0, t, t, t};
        run_conv2d(&down_same);
    }
}

/* Non-square kernels, unequal strides and every pad different: a swapped kh/kw, stride or
 * pad side gives a different answer here. */
static void test_conv2d_asymmetric(void)
{
    conv2d_case a = {2, 3, 11, 7, 5, 3, 2, {2, 0, 1, 3}, {2, 1}, 1, DS_F32, DS_F32, DS_F32};
    run_conv2d(&a);
    conv2d_case b = {1, 4, 5, 13, 3, 2, 3, {0, 2, 3, 0}, {1, 3}, 0, DS_F32, DS_F32, DS_F32};
    run_conv2d(&b);
    conv2d_case c = {1, 2, 1, 1, 3, 3, 3, {1, 1, 1, 1}, {1, 1}, 1, DS_F32, DS_F32, DS_F32};
    run_conv2d(&c); /* a 1×1 image: only the kernel's centre ever sees data */
    conv2d_case d = {1, 3, 6, 6, 2, 1, 1, {1, 0, 0, 2}, {1, 1}, 1, DS_BF16, DS_BF16, DS_BF16};
    run_conv2d(&d); /* 1×1 kernel with padding: the border is the bias alone */
}

static void test_conv2d_1x1(void)
{
    static const ds_dtype dts[] = {DS_F32, DS_BF16, DS_F16};
    for (int d = 0; d < 3; d++) {
        ds_dtype t = dts[d];
        conv2d_case plain = {2, 17, 7, 9, 33, 1, 1, {0, 0, 0, 0}, {1, 1}, 1, t, t, t};
        run_conv2d(&plain);
        conv2d_case nobias = {1, 3, 1, 127, 1, 1, 1, {0, 0, 0, 0}, {1, 1}, 0, t, t, t};
        run_conv2d(&nobias);
        conv2d_case strided = {1, 5, 9, 7, 4, 1, 1, {0, 0, 0, 0}, {2, 2}, 1, t, t, t};
        run_conv2d(&strided);
    }
}

/* Operands of different dtypes: each is converted on its own. */
static void test_conv2d_mixed_dtypes(void)
{
    conv2d_case a = {1, 4, 7, 9, 5, 3, 3, {1, 1, 1, 1}, {1, 1}, 1, DS_BF16, DS_F32, DS_F16};
    run_conv2d(&a);
    conv2d_case b = {1, 4, 7, 9, 5, 3, 3, {1, 1, 1, 1}, {1, 1}, 1, DS_F16, DS_BF16, DS_F32};
    run_conv2d(&b);
    conv2d_case c = {1, 6, 5, 5, 3, 1, 1, {0, 0, 0, 0}, {1, 1}, 0, DS_F32, DS_F16, DS_BF16};
    run_conv2d(&c);
}

/* Images whose im2col matrix exceeds one chunk (16 MiB), so output positions are processed in
 * several GEMMs, including a ragged last chunk. */
static void test_conv2d_chunked(void)
{
    conv2d_case a = {1, 64, 97, 95, 8, 3, 3, {1, 1, 1, 1}, {1, 1}, 1, DS_F32, DS_F32, DS_F32};
    run_conv2d(&a);
    conv2d_case b = {2, 128, 61, 67, 8, 3, 3, {1, 1, 1, 1}, {1, 1}, 1, DS_BF16, DS_BF16, DS_BF16};
    run_conv2d(&b);
}

/* ---- conv3d_causal ---- */

typedef struct conv3d_case {
    int64_t b, cin, t, h, w, cout, kt, kh, kw;
    int64_t tc;    /* cache frames (0: no cache) */
    int pad_h, pad_w;
    int stride[3];
    int bias;
    ds_dtype x_dtype, w_dtype, y_dtype, cache_dtype;
} conv3d_case;

/* x's frame sequence after causal padding: frame v of [zeros, cache, x] for (b, ci), or NULL
 * for a zero frame. */
static const double *padded_frame(const conv3d_case *c, const double *x, const double *cache,
                                  int64_t b, int64_t ci, int64_t v)
{
    int64_t front = c->kt - 1, plane = c->h * c->w;
    if (v < front - c->tc)
        return NULL;
    if (v < front)
        return cache + ((b * c->cin + ci) * c->tc + (v - (front - c->tc))) * plane;
    return x + ((b * c->cin + ci) * c->t + (v - front)) * plane;
}

static void ref_conv3d(const conv3d_case *c, const double *x, const double *cache,
                       const double *w, const double *bias, int64_t ot, int64_t oh, int64_t ow,
                       double *y)
{
    for (int64_t b = 0; b < c->b; b++)
        for (int64_t co = 0; co < c->cout; co++)
            for (int64_t t = 0; t < ot; t++)
                for (int64_t i = 0; i < oh; i++)
                    for (int64_t j = 0; j < ow; j++) {
                        double acc = bias ? bias[co] : 0.0;
                        for (int64_t ci = 0; ci < c->cin; ci++)
                            for (int64_t kt = 0; kt < c->kt; kt++) {
                                const double *f = padded_frame(c, x, cache, b, ci,
                                                               t * c->stride[0] + kt);
                                if (!f)
                                    continue;
                                for (int64_t ki = 0; ki < c->kh; ki++)
                                    for (int64_t kj = 0; kj < c->kw; kj++) {
                                        int64_t ih = i * c->stride[1] - c->pad_h + ki;
                                        int64_t iw = j * c->stride[2] - c->pad_w + kj;
                                        if (ih < 0 || ih >= c->h || iw < 0 || iw >= c->w)
                                            continue;
                                        acc += w[(((co * c->cin + ci) * c->kt + kt) * c->kh + ki) *
                                                     c->kw + kj] *
                                               f[ih * c->w + iw];
                                    }
                            }
                        y[(((b * c->cout + co) * ot + t) * oh + i) * ow + j] = acc;
                    }
}

static void run_conv3d(const conv3d_case *c)
{
    int64_t ot = (c->t - 1) / c->stride[0] + 1;
    int64_t oh = (c->h + 2 * c->pad_h - c->kh) / c->stride[1] + 1;
    int64_t ow = (c->w + 2 * c->pad_w - c->kw) / c->stride[2] + 1;
    const int64_t xs[] = {c->b, c->cin, c->t, c->h, c->w};
    const int64_t cs[] = {c->b, c->cin, c->tc, c->h, c->w};
    const int64_t ws[] = {c->cout, c->cin, c->kt, c->kh, c->kw};
    const int64_t bs[] = {c->cout}, ys[] = {c->b, c->cout, ot, oh, ow};
    double *xv = kt_randn(numel(5, xs), 1.0);
    double *cv = c->tc ? kt_randn(numel(5, cs), 1.0) : NULL;
    double *wv = kt_randn(numel(5, ws), 1.0 / sqrt((double)(c->cin * c->kt * c->kh * c->kw)));
    double *bv = c->bias ? kt_randn((size_t)c->cout, 1.0) : NULL;
    ds_tensor x, cache, w, bias, y;
    REQUIRE(kt_tensor(c->x_dtype, 5, xs, xv, &x));
    if (cv)
        REQUIRE(kt_tensor(c->cache_dtype, 5, cs, cv, &cache));
    REQUIRE(kt_tensor(c->w_dtype, 5, ws, wv, &w));
    if (bv)
        REQUIRE(kt_tensor(c->w_dtype, 1, bs, bv, &bias));
    REQUIRE(kt_tensor(c->y_dtype, 5, ys, NULL, &y));
    size_t n = numel(5, ys);
    double *ref = malloc(n * sizeof *ref);
    ref_conv3d(c, xv, cv, wv, bv, ot, oh, ow, ref);
    ds_error err;
    ds_conv3d_args a = {&x, &w, bv ? &bias : NULL, cv ? &cache : NULL, c->pad_h, c->pad_w,
                        {c->stride[0], c->stride[1], c->stride[2]}, &y};
    CHECK_MSG(ds_conv3d_causal(kt.backend, NULL, &a, &err) == DS_OK, "%s", err.message);
    double *got = kt_read(&y);
    char what[256];
    snprintf(what, sizeof what,
             "conv3d x[%lld,%lld,%lld,%lld,%lld] %s k %lldx%lldx%lld cache %lld pad (%d,%d) "
             "stride (%d,%d,%d) bias %d y %s",
             (long long)c->b, (long long)c->cin, (long long)c->t, (long long)c->h,
             (long long)c->w, ds_dtype_name(c->x_dtype), (long long)c->kt, (long long)c->kh,
             (long long)c->kw, (long long)c->tc, c->pad_h, c->pad_w, c->stride[0], c->stride[1],
             c->stride[2], c->bias, ds_dtype_name(c->y_dtype));
    CHECK(kt_compare(what, got, ref, n, kt_budget(c->y_dtype)));
    free(got);
    free(ref);
    free(xv);
    free(cv);
    free(wv);
    free(bv);
    ds_tensor_free(&x);
    if (c->tc)
        ds_tensor_free(&cache);
    ds_tensor_free(&w);
    if (c->bias)
        ds_tensor_free(&bias);
    ds_tensor_free(&y);
}

static void test_conv3d_causal(void)
{
    static const ds_dtype dts[] = {DS_F32, DS_BF16, DS_F16};
    for (int d = 0; d < 3; d++) {
        ds_dtype t = dts[d];
        conv3d_case video = {2, 3, 4, 7, 6, 5, 3, 3, 3, 0, 1, 1, {1, 1, 1}, 1, t, t, t, t};
        run_conv3d(&video);
        conv3d_case image = {1, 4, 1, 9, 7, 3, 3, 3, 3, 0, 1, 1, {1, 1, 1}, 0, t, t, t, t};
        run_conv3d(&image);
        conv3d_case pointwise = {1, 5, 3, 5, 7, 6, 1, 1, 1, 0, 0, 0, {1, 1, 1}, 1, t, t, t, t};
        run_conv3d(&pointwise);
    }
    /* KT 1 with a spatial kernel; the time_conv shape (3, 1, 1). */
    conv3d_case spatial = {1, 3, 3, 6, 5, 4, 1, 3, 3, 0, 1, 1, {1, 1, 1}, 1, DS_F32, DS_F32,
                           DS_F32, DS_F32};
    run_conv3d(&spatial);
    conv3d_case temporal = {1, 4, 5, 3, 4, 8, 3, 1, 1, 0, 0, 0, {1, 1, 1}, 1, DS_BF16, DS_BF16,
                            DS_BF16, DS_BF16};
    run_conv3d(&temporal);
}

/* Cache frames go between the zero frames and x, oldest first: with one cached frame the
 * sequence is [0, c0, x0, ...], with two [c0, c1, x0, ...]. Reversing them, or putting zeros
 * after the cache, gives a different answer. */
static void test_conv3d_cache(void)
{
    for (int64_t tc = 1; tc <= 2; tc++) {
        conv3d_case a = {2, 3, 3, 5, 6, 4, 3, 3, 3, tc, 1, 1, {1, 1, 1}, 1, DS_F32, DS_F32,
                         DS_F32, DS_F32};
        run_conv3d(&a);
        conv3d_case one = {1, 4, 1, 7, 5, 3, 3, 3, 3, tc, 1, 1, {1, 1, 1}, 0, DS_BF16, DS_BF16,
                           DS_BF16, DS_BF16};
        run_conv3d(&one);
        /* A cache stored in another dtype than x. */
        conv3d_case mixed = {1, 3, 2, 4, 5, 2, 3, 3, 3, tc, 1, 1, {1, 1, 1}, 1, DS_BF16, DS_F32,
                             DS_F16, DS_F32};
        run_conv3d(&mixed);
        conv3d_case strided = {1, 3, 5, 7, 8, 4, 3, 3, 3, tc, 1, 1, {2, 2, 2}, 1, DS_F32, DS_F32,
                               DS_F32, DS_F32};
        run_conv3d(&strided);
    }
}

static void test_conv3d_strides(void)
{
    conv3d_case t2 = {1, 3, 5, 6, 7, 4, 3, 3, 3, 0, 1, 1, {2, 1, 1}, 1, DS_F32, DS_F32, DS_F32,
                      DS_F32};
    run_conv3d(&t2);
    conv3d_case s2 = {1, 3, 3, 9, 8, 4, 3, 3, 3, 0, 1, 1, {1, 2, 2}, 0, DS_F32, DS_F32, DS_F32,
                      DS_F32};
    run_conv3d(&s2);
    conv3d_case all = {2, 2, 6, 7, 9, 3, 3, 3, 3, 0, 0, 1, {2, 2, 3}, 1, DS_BF16, DS_BF16,
                       DS_BF16, DS_BF16};
    run_conv3d(&all);
    conv3d_case t3 = {1, 2, 7, 4, 4, 2, 3, 1, 1, 0, 0, 0, {3, 1, 1}, 0, DS_F16, DS_F16, DS_F16,
                      DS_F16};
    run_conv3d(&t3);
}

/* Several im2col chunks over several frames: the first chunk lies in frame 0 (two taps see
 * only zero frames), later ones straddle frames 0-1 and 1-2 (one tap, then none). */
static void test_conv3d_chunked(void)
{
    conv3d_case a = {1, 64, 3, 56, 56, 4, 3, 3, 3, 0, 1, 1, {1, 1, 1}, 1, DS_F32, DS_F32, DS_F32,
                     DS_F32};
    run_conv3d(&a);
    conv3d_case b = {1, 64, 2, 56, 56, 4, 3, 3, 3, 1, 1, 1, {1, 1, 1}, 0, DS_BF16, DS_BF16,
                     DS_BF16, DS_BF16};
    run_conv3d(&b);
}

/* Widths like the VAEs' (multiples of 16, where the CPU backend's oneDNN path cuts the output
 * channels into one part per thread), and one that is not (its channel blocks padded): with a
 * cache, an image, the temporal stride-2 downsampler, a strided conv2d. */
static void test_conv_wide_channels(void)
{
    conv3d_case cached = {1, 32, 2, 6, 5, 64, 3, 3, 3, 2, 1, 1, {1, 1, 1}, 1, DS_F32, DS_F32,
                          DS_F32, DS_F32};
    run_conv3d(&cached);
    conv3d_case image = {2, 48, 1, 5, 7, 96, 3, 3, 3, 0, 1, 1, {1, 1, 1}, 1, DS_BF16, DS_BF16,
                         DS_BF16, DS_BF16};
    run_conv3d(&image);
    conv3d_case padded = {1, 20, 3, 4, 6, 32, 3, 3, 3, 1, 1, 1, {1, 1, 1}, 0, DS_F32, DS_BF16,
                          DS_F32, DS_BF16};
    run_conv3d(&padded);
    conv3d_case down = {1, 32, 3, 4, 4, 32, 3, 1, 1, 2, 0, 0, {2, 1, 1}, 1, DS_F32, DS_F32,
                        DS_F32, DS_F32};
    run_conv3d(&down);
    conv2d_case strided = {3, 32, 9, 8, 64, 3, 3, {0, 1, 0, 1}, {2, 2}, 1, DS_F32, DS_F32,
                           DS_F32};
    run_conv2d(&strided);
}

/* Facts §7.2: with T = 1 and no cache, a 3×3×3 causal conv equals a 3×3 conv2d with the last
 * temporal slice of the weight, weight[:, :, 2]. Both ops run here on the same data and are
 * compared with each other and with a conv2d reference built from that slice alone. */
static void test_conv3d_image_is_conv2d(void)
{
    const int64_t cin = 6, cout = 5, h = 11, w = 9;
    const int64_t xs5[] = {1, cin, 1, h, w}, xs4[] = {1, cin, h, w};
    const int64_t ws5[] = {cout, cin, 3, 3, 3}, ws4[] = {cout, cin, 3, 3};
    const int64_t bs[] = {cout}, ys5[] = {1, cout, 1, h, w}, ys4[] = {1, cout, h, w};
    size_t nx = (size_t)(cin * h * w), nw5 = (size_t)(cout * cin * 27), ny = (size_t)(cout * h * w);
    double *xv = kt_randn(nx, 1.0);
    double *wv5 = kt_randn(nw5, 1.0 / sqrt((double)(cin * 27)));
    double *bv = kt_randn((size_t)cout, 1.0);
    double *wv4 = malloc((size_t)(cout * cin * 9) * sizeof *wv4);
    for (int64_t o = 0; o < cout * cin; o++)
        for (int64_t k = 0; k < 9; k++)
            wv4[o * 9 + k] = wv5[o * 27 + 2 * 9 + k];
    ds_tensor x5, x4, w5, w4, bias, y5, y4;
    REQUIRE(kt_tensor(DS_F32, 5, xs5, xv, &x5));
    REQUIRE(kt_tensor(DS_F32, 4, xs4, xv, &x4));
    REQUIRE(kt_tensor(DS_F32, 5, ws5, wv5, &w5));
    REQUIRE(kt_tensor(DS_F32, 4, ws4, wv4, &w4));
    REQUIRE(kt_tensor(DS_F32, 1, bs, bv, &bias));
    REQUIRE(kt_tensor(DS_F32, 5, ys5, NULL, &y5));
    REQUIRE(kt_tensor(DS_F32, 4, ys4, NULL, &y4));
    ds_error err;
    ds_conv3d_args a3 = {&x5, &w5, &bias, NULL, 1, 1, {1, 1, 1}, &y5};
    CHECK_MSG(ds_conv3d_causal(kt.backend, NULL, &a3, &err) == DS_OK, "%s", err.message);
    ds_conv2d_args a2 = {&x4, &w4, &bias, {1, 1, 1, 1}, {1, 1}, &y4};
    CHECK_MSG(ds_conv2d(kt.backend, NULL, &a2, &err) == DS_OK, "%s", err.message);
    conv2d_case c = {1, cin, h, w, cout, 3, 3, {1, 1, 1, 1}, {1, 1}, 1, DS_F32, DS_F32, DS_F32};
    double *ref = malloc(ny * sizeof *ref);
    ref_conv2d(&c, xv, wv4, bv, h, w, ref);
    double *got3 = kt_read(&y5), *got2 = kt_read(&y4);
    CHECK(kt_compare("conv3d T=1 vs conv2d reference on weight[:, :, 2]", got3, ref, ny,
                     kt_budget(DS_F32)));
    CHECK(kt_compare("conv3d T=1 vs our conv2d on weight[:, :, 2]", got3, got2, ny,
                     kt_budget(DS_F32)));
    free(got3);
    free(got2);
    free(ref);
    free(xv);
    free(wv5);
    free(wv4);
    free(bv);
    ds_tensor_free(&x5);
    ds_tensor_free(&x4);
    ds_tensor_free(&w5);
    ds_tensor_free(&w4);
    ds_tensor_free(&bias);
    ds_tensor_free(&y5);
    ds_tensor_free(&y4);
}

int main(int argc, char **argv)
{
    kt_init(argc, argv);
    RUN(test_conv2d_3x3);
    RUN(test_conv2d_asymmetric);
    RUN(test_conv2d_1x1);
    RUN(test_conv2d_mixed_dtypes);
    RUN(test_conv2d_chunked);
    RUN(test_conv3d_causal);
    RUN(test_conv3d_cache);
    RUN(test_conv3d_strides);
    RUN(test_conv3d_chunked);
    RUN(test_conv_wide_channels);
    RUN(test_conv3d_image_is_conv2d);
    kt_finish();
    return test_summary();
}
