/* Convolutions on the CPU backend: conv2d and the VAE's causal conv3d, both as
 * im2col + cblas_sgemm over one shared description (a conv2d is a conv3d with one frame, KT 1
 * and no time padding). Built with oneDNN, the spatial kernels go to its direct convolution
 * instead (conv_onednn.c), which runs them in about half this path's time; what it does not
 * take (f16, paddings it cannot express, copies too large) and 1×1×1 convs stay here.
 *
 * For each batch item, the flattened output positions P = T' * H' * W' are cut into chunks;
 * a chunk's columns col[K, n] (K = KT * Cin * KH * KW) are built in parallel over K, then
 * y[Cout, chunk] = W[Cout, K] @ col. The chunk is sized so that col (and the f32 output staging
 * when y is not f32) stays under CHUNK_BYTES: a 1024 × 1024 VAE decode never holds the whole
 * image's im2col matrix.
 *
 * K is ordered time tap first (the f32 weight copy is reordered to [Cout, KT, Cin, KH, KW]) so
 * that the taps that only ever see the causal zero frames in a chunk are a prefix of K that the
 * GEMM skips: an image (T = 1, no cache) through a 3×3×3 conv costs a 3×3 conv2d, not three.
 *
 * Threading: each chunk's GEMM is one ds__openblas_sgemm, cut into single-threaded parts over
 * our pool (gemm_parts.c: columns of the chunk), and im2col, the weight conversion and the
 * bias/store epilogue go through ds__cpu_parallel_for. One large GEMM per chunk keeps
 * OpenBLAS's blocking efficient (Cout and K are hundreds to thousands, a part's columns
 * thousands), and the cut depends only on the sizes and the thread count, so results are
 * deterministic for a given thread count. */
#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/gemm_parts.h"

#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"

/* Upper bound on im2col plus output staging per chunk. */
#define CHUNK_BYTES ((int64_t)16 << 20)
/* Fewer columns than this make the GEMM inefficient; only reached when K alone is huge. */
#define MIN_CHUNK_COLS 16

typedef ds__conv_problem conv_problem;

/* ceil(a / b) for b > 0 and any sign of a. */
static int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }
/* floor(a / b) for b > 0 and any sign of a. */
static int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* dst[i] = src[first + i * stride] as f32, for count elements of dtype (f32, bf16 or f16). */
static void gather_row(float *dst, const void *src, ds_dtype dtype, int64_t first, int64_t stride,
                       int64_t count)
{
    switch (dtype) {
    case DS_F32: {
        const float *s = (const float *)src + first;
        if (stride == 1)
            memcpy(dst, s, (size_t)count * sizeof *dst);
        else
            for (int64_t i = 0; i < count; i++)
                dst[i] = s[i * stride];
        return;
    }
    case DS_BF16: {
        const uint16_t *s = (const uint16_t *)src + first;
        for (int64_t i = 0; i < count; i++)
            dst[i] = ds_bf16_to_f32(s[i * stride]);
        return;
    }
    default: {
        const uint16_t *s = (const uint16_t *)src + first;
        for (int64_t i = 0; i < count; i++)
            dst[i] = ds_f16_to_f32(s[i * stride]);
        return;
    }
    }
}

typedef struct im2col_ctx {
    const conv_problem *p;
    int64_t item;   /* batch index */
    int64_t n0, n;  /* the chunk's output positions */
    int64_t k0;     /* first row of K built (the taps before it are all zero frames) */
    float *col;     /* [K - k0, n] */
} im2col_ctx;

static void im2col_range(void *vctx, int64_t begin, int64_t end)
{
    const im2col_ctx *c = vctx;
    const conv_problem *p = c->p;
    int64_t plane = p->h * p->w;
    for (int64_t k = c->k0 + begin; k < c->k0 + end; k++) {
        int64_t kw = k % p->kw, rest = k / p->kw;
        int64_t kh = rest % p->kh;
        rest /= p->kh;
        int64_t ci = rest % p->cin, kt = rest / p->cin;
        /* Output columns whose input column iw = ow * sw - pad_left + kw lies inside [0, W). */
        int64_t ow_lo = ceil_div(p->pad_left - kw, p->sw);
        int64_t ow_hi = floor_div(p->w - 1 + p->pad_left - kw, p->sw) + 1;
        if (ow_lo < 0)
            ow_lo = 0;
        if (ow_hi > p->ow)
            ow_hi = p->ow;
        float *dst = c->col + (k - c->k0) * c->n;
        int64_t pos = c->n0, stop = c->n0 + c->n;
        while (pos < stop) {
            int64_t ow0 = pos % p->ow, rowi = pos / p->ow;
            int64_t oh = rowi % p->oh, ot = rowi / p->oh;
            int64_t ow1 = ow0 + (stop - pos) < p->ow ? ow0 + (stop - pos) : p->ow;
            int64_t seg = ow1 - ow0;
            /* The padded time axis: zeros, then the cache's frames, then x's. */
            int64_t tv = ot * p->st + kt;
            int64_t ih = oh * p->sh - p->pad_top + kh;
            const void *src = NULL;
            ds_dtype dtype = p->x_dtype;
            if (ih >= 0 && ih < p->h && tv >= p->front - p->tc) {
                if (tv < p->front) {
                    int64_t f = tv - (p->front - p->tc);
                    src = (const char *)p->cache +
                          (size_t)(((c->item * p->cin + ci) * p->tc + f) * plane + ih * p->w) *
                              ds_dtype_size(p->cache_dtype);
                    dtype = p->cache_dtype;
                } else {
                    int64_t f = tv - p->front;
                    src = (const char *)p->x +
                          (size_t)(((c->item * p->cin + ci) * p->t + f) * plane + ih * p->w) *
                              ds_dtype_size(p->x_dtype);
                }
            }
            int64_t lo = ow_lo > ow0 ? ow_lo : ow0, hi = ow_hi < ow1 ? ow_hi : ow1;
            if (!src || lo >= hi) {
                memset(dst, 0, (size_t)seg * sizeof *dst);
            } else {
                memset(dst, 0, (size_t)(lo - ow0) * sizeof *dst);
                gather_row(dst + (lo - ow0), src, dtype, lo * p->sw - p->pad_left + kw, p->sw,
                           hi - lo);
                memset(dst + (hi - ow0), 0, (size_t)(ow1 - hi) * sizeof *dst);
            }
            dst += seg;
            pos += seg;
        }
    }
}

/* Pure 1×1×1 conv without stride or padding: col row ci is x[item, ci, n0 : n0 + n]. */
static void convert_cols_range(void *vctx, int64_t begin, int64_t end)
{
    const im2col_ctx *c = vctx;
    const conv_problem *p = c->p;
    int64_t positions = p->t * p->h * p->w;
    for (int64_t ci = begin; ci < end; ci++)
        gather_row(c->col + ci * c->n, p->x, p->x_dtype, (c->item * p->cin + ci) * positions + c->n0,
                   1, c->n);
}

typedef struct epilogue_ctx {
    const conv_problem *p;
    int64_t item, n0, n;
    const float *out;  /* [Cout, n] with leading dimension ld */
    int64_t ld;
    const float *bias; /* [Cout] or NULL */
} epilogue_ctx;

/* y[item, co, n0 : n0 + n] = out[co] + bias[co] in y's dtype (in place when y is f32 and out
 * points into it). */
static void epilogue_range(void *vctx, int64_t begin, int64_t end)
{
    const epilogue_ctx *c = vctx;
    const conv_problem *p = c->p;
    int64_t positions = p->ot * p->oh * p->ow;
    size_t es = ds_dtype_size(p->y->dtype);
    for (int64_t co = begin; co < end; co++) {
        const float *src = c->out + co * c->ld;
        size_t at = (size_t)((c->item * p->cout + co) * positions + c->n0);
        float b = c->bias ? c->bias[co] : 0.0f;
        if (p->y->dtype == DS_F32) {
            float *dst = (float *)p->y->data + at;
            for (int64_t i = 0; i < c->n; i++)
                dst[i] = src[i] + b;
        } else if (p->y->dtype == DS_BF16) {
            uint16_t *dst = (uint16_t *)((char *)p->y->data + at * es);
            for (int64_t i = 0; i < c->n; i++)
                dst[i] = ds_f32_to_bf16(src[i] + b);
        } else {
            uint16_t *dst = (uint16_t *)((char *)p->y->data + at * es);
            for (int64_t i = 0; i < c->n; i++)
                dst[i] = ds_f32_to_f16(src[i] + b);
        }
    }
}

typedef struct weight_ctx {
    const conv_problem *p;
    float *dst;
} weight_ctx;

/* dst[co, kt, ci, kh, kw] = weight[co, ci, kt, kh, kw] as f32. */
static void weight_range(void *vctx, int64_t begin, int64_t end)
{
    const weight_ctx *c = vctx;
    const conv_problem *p = c->p;
    const ds_tensor *w = p->weight;
    size_t es = ds_dtype_size(w->dtype);
    int64_t taps = p->kh * p->kw;
    for (int64_t co = begin; co < end; co++)
        for (int64_t ci = 0; ci < p->cin; ci++)
            for (int64_t kt = 0; kt < p->kt; kt++) {
                int64_t from = ((co * p->cin + ci) * p->kt + kt) * taps;
                int64_t to = ((co * p->kt + kt) * p->cin + ci) * taps;
                ds_convert_to_f32((const char *)w->data + (size_t)from * es, w->dtype,
                                  (size_t)taps, c->dst + to);
            }
}

#ifdef DS_HAVE_ONEDNN
/* oneDNN's direct convolution beats im2col + sgemm on the VAEs' spatial kernels (measured over
 * whole Wan and Qwen-Image decodes, 1 and 2 threads); a 1×1×1 conv without padding or stride
 * is a plain GEMM on x itself, no columns to build. */
static int conv_via_onednn(const conv_problem *p)
{
    if (p->kt * p->kh * p->kw == 1 && p->front == 0 && p->pad_top == 0 && p->pad_left == 0 &&
        p->st == 1 && p->sh == 1 && p->sw == 1)
        return 0;
    return ds__onednn_conv_supported(p);
}
#endif

static int run_conv(ds_backend *b, const conv_problem *p, const char *op, ds_error *err)
{
    int64_t K = p->cin * p->kt * p->kh * p->kw;
    int64_t positions = p->ot * p->oh * p->ow;
    if (p->batch == 0 || p->cout == 0 || positions == 0)
        return DS_OK;
#ifdef DS_HAVE_ONEDNN
    if (conv_via_onednn(p))
        return ds__onednn_conv(b, p, op, err);
#endif
    int direct = p->kt == 1 && p->kh == 1 && p->kw == 1 && p->st == 1 && p->sh == 1 &&
                 p->sw == 1 && p->front == 0 && p->pad_top == 0 && p->pad_left == 0 &&
                 p->oh == p->h && p->ow == p->w;
    if (K > INT_MAX || p->cout > INT_MAX)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: Cout %" PRId64 " or Cin * kernel size %" PRId64 " exceeds the "
                            "GEMM's int range", op, p->cout, K);
    /* cblas takes int leading dimensions: x or y as the GEMM's own operands need positions to
     * fit, otherwise every chunk goes through the (bounded) buffers. */
    int fits = positions <= INT_MAX;
    int direct_x = direct && fits && p->x_dtype == DS_F32; /* B is x itself: no columns */
    int staged = !fits || p->y->dtype != DS_F32; /* sgemm writes f32 staging, then converts */

    int64_t per_col = (direct_x ? 0 : K) + (staged ? p->cout : 0);
    int64_t chunk = positions;
    if (per_col > 0 && chunk > CHUNK_BYTES / (per_col * (int64_t)sizeof(float))) {
        chunk = CHUNK_BYTES / (per_col * (int64_t)sizeof(float));
        if (chunk < MIN_CHUNK_COLS)
            chunk = MIN_CHUNK_COLS;
        if (chunk > positions)
            chunk = positions;
    }

    int rc = DS_OK;
    float *wf = NULL, *bias = NULL, *col = NULL, *stage = NULL;
    const float *w32 = p->weight->data;
    if (p->weight->dtype != DS_F32 || p->kt > 1) {
        if ((uint64_t)(p->cout * K) > SIZE_MAX / sizeof *wf - 1)
            goto oom;
        wf = malloc((size_t)(p->cout * K) * sizeof *wf + 1);
        if (!wf)
            goto oom;
        weight_ctx wc = {p, wf};
        ds__cpu_parallel_for(b, p->cout, 1 + (1 << 14) / (K + 1), weight_range, &wc);
        w32 = wf;
    }
    int64_t per_tap = p->cin * p->kh * p->kw; /* rows of K per time tap */
    if (p->bias) {
        bias = malloc((size_t)p->cout * sizeof *bias);
        if (!bias)
            goto oom;
        ds_convert_to_f32(p->bias->data, p->bias->dtype, (size_t)p->cout, bias);
    }
    if (!direct_x && K > 0) {
        col = malloc((size_t)(K * chunk) * sizeof *col);
        if (!col)
            goto oom;
    }
    if (staged) {
        stage = malloc((size_t)(p->cout * chunk) * sizeof *stage);
        if (!stage)
            goto oom;
    }

    for (int64_t item = 0; item < p->batch; item++) {
        for (int64_t n0 = 0; n0 < positions; n0 += chunk) {
            int64_t n = positions - n0 < chunk ? positions - n0 : chunk;
            /* Tap kt of output frame ot reads padded frame ot * st + kt, a zero frame below
             * front - tc; taps that do so even for the chunk's last frame are skipped. */
            int64_t ot_last = (n0 + n - 1) / (p->oh * p->ow);
            int64_t zero_taps = p->front - p->tc - ot_last * p->st;
            if (zero_taps < 0)
                zero_taps = 0;
            int64_t k0 = zero_taps * per_tap, keff = K - k0;
            const float *bmat = col;
            int64_t ldb = n;
            if (keff > 0) {
                im2col_ctx ic = {p, item, n0, n, k0, col};
                if (direct_x) {
                    bmat = (const float *)p->x + item * p->cin * positions + n0;
                    ldb = positions;
                } else if (direct) {
                    ds__cpu_parallel_for(b, K, 1 + (1 << 14) / n, convert_cols_range, &ic);
                } else {
                    ds__cpu_parallel_for(b, keff, 1 + (1 << 14) / n, im2col_range, &ic);
                }
            }
            float *out;
            int64_t ldc;
            if (staged) {
                out = stage;
                ldc = n;
            } else {
                out = (float *)p->y->data + item * p->cout * positions + n0;
                ldc = positions;
            }
            if (keff > 0) {
                ds__gemm_part g = {.batch = 1, .m = p->cout, .n = n, .k = keff, .lda = K,
                                   .ldb = ldb, .ldc = ldc, .sa = 0, .sb = 0, .sc = 0,
                                   .esize = sizeof(float), .alpha = 1.0f, .a = w32 + k0,
                                   .b = bmat, .c = out};
                rc = ds__openblas_sgemm(b, &g, err);
                if (rc != DS_OK)
                    goto done;
            } else {
                for (int64_t co = 0; co < p->cout; co++)
                    memset(out + co * ldc, 0, (size_t)n * sizeof *out);
            }
            if (staged || bias) {
                epilogue_ctx ec = {p, item, n0, n, out, ldc, bias};
                ds__cpu_parallel_for(b, p->cout, 1 + (1 << 14) / n, epilogue_range, &ec);
            }
        }
    }
    goto done;
oom:
    rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                      "%s: out of memory for the f32 weights or a %" PRId64 "-column im2col chunk "
                      "(K %" PRId64 ", Cout %" PRId64 ")", op, chunk, K, p->cout);
done:
    free(wf);
    free(bias);
    free(col);
    free(stage);
    return rc;
}

int ds__cpu_conv2d(ds_backend *b, ds_stream *s, const ds_conv2d_args *a, ds_error *err)
{
    (void)s;
    const int64_t *xs = a->x->shape, *ws = a->weight->shape, *ys = a->y->shape;
    conv_problem p = {
        .batch = xs[0], .cin = xs[1], .cout = ws[0],
        .t = 1, .h = xs[2], .w = xs[3],
        .kt = 1, .kh = ws[2], .kw = ws[3],
        .st = 1, .sh = a->stride[0], .sw = a->stride[1],
        .front = 0, .pad_top = a->pad[0], .pad_left = a->pad[2],
        .ot = 1, .oh = ys[2], .ow = ys[3],
        .x = a->x->data, .x_dtype = a->x->dtype,
        .cache = NULL, .cache_dtype = a->x->dtype, .tc = 0,
        .weight = a->weight, .bias = a->bias, .y = a->y,
    };
    return run_conv(b, &p, "conv2d", err);
}

int ds__cpu_conv3d_causal(ds_backend *b, ds_stream *s, const ds_conv3d_args *a, ds_error *err)
{
    (void)s;
    const int64_t *xs = a->x->shape, *ws = a->weight->shape, *ys = a->y->shape;
    conv_problem p = {
        .batch = xs[0], .cin = xs[1], .cout = ws[0],
        .t = xs[2], .h = xs[3], .w = xs[4],
        .kt = ws[2], .kh = ws[3], .kw = ws[4],
        .st = a->stride[0], .sh = a->stride[1], .sw = a->stride[2],
        .front = ws[2] - 1, .pad_top = a->pad_h, .pad_left = a->pad_w,
        .ot = ys[2], .oh = ys[3], .ow = ys[4],
        .x = a->x->data, .x_dtype = a->x->dtype,
        .cache = a->cache ? a->cache->data : NULL,
        .cache_dtype = a->cache ? a->cache->dtype : a->x->dtype,
        .tc = a->cache ? a->cache->shape[2] : 0,
        .weight = a->weight, .bias = a->bias, .y = a->y,
    };
    return run_conv(b, &p, "conv3d_causal", err);
}
