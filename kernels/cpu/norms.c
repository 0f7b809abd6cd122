/* Normalisations and softmax on the CPU: layer norm, RMS norm, group norm, the VAE's channel
 * RMS norm and softmax (semantics in kernels/backend.h).
 *
 * Rows are split over the pool and walked in pieces of PIECE elements: f32 operands are read in
 * place, other dtypes converted into stack buffers, so no op needs scratch memory and none can
 * fail. Statistics (sums, sums of squares) accumulate in f64 with several independent partial
 * sums, and variances are two-pass (mean first, then squared deviations), so neither a long row
 * nor a large mean costs accuracy; the normalisation itself is f32 as upstream computes it. */
#include <math.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/ops.h"

#define PIECE 1024
#define GRAIN_ELEMS 16384 /* elements per chunk: enough to amortise waking a worker */

static int64_t rows_grain(int64_t width) { return 1 + GRAIN_ELEMS / (width + 1); }

/* n elements of t starting at element `at`, as f32: in place when t is f32, else in buf. */
static const float *load(const ds_tensor *t, int64_t at, int64_t n, float *buf)
{
    if (t->dtype == DS_F32)
        return (const float *)t->data + at;
    ds_convert_to_f32((const char *)t->data + (size_t)at * ds_dtype_size(t->dtype), t->dtype,
                      (size_t)n, buf);
    return buf;
}

static void store(ds_tensor *t, int64_t at, int64_t n, const float *v)
{
    ds_convert_from_f32(v, (size_t)n, t->dtype,
                        (char *)t->data + (size_t)at * ds_dtype_size(t->dtype));
}

/* Sum of x[0..n) and of (x - center)^2, in f64 with four partial sums each. */
static void accumulate(const float *x, int64_t n, double center, double *sum, double *sq)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0, q0 = 0, q1 = 0, q2 = 0, q3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        double a = x[i], b = x[i + 1], c = x[i + 2], d = x[i + 3];
        s0 += a;
        s1 += b;
        s2 += c;
        s3 += d;
        a -= center;
        b -= center;
        c -= center;
        d -= center;
        q0 += a * a;
        q1 += b * b;
        q2 += c * c;
        q3 += d * d;
    }
    for (; i < n; i++) {
        double a = x[i];
        s0 += a;
        a -= center;
        q0 += a * a;
    }
    *sum += (s0 + s1) + (s2 + s3);
    *sq += (q0 + q1) + (q2 + q3);
}

/* Mean and population variance of `count` contiguous elements of x from `at`: two passes. */
static void moments(const ds_tensor *x, int64_t at, int64_t count, double *mean, double *var)
{
    float buf[PIECE];
    double sum = 0, sq = 0;
    for (int64_t p = 0; p < count; p += PIECE) {
        int64_t n = count - p < PIECE ? count - p : PIECE;
        accumulate(load(x, at + p, n, buf), n, 0.0, &sum, &sq);
    }
    double m = count ? sum / (double)count : 0.0;
    sum = 0;
    sq = 0;
    for (int64_t p = 0; p < count; p += PIECE) {
        int64_t n = count - p < PIECE ? count - p : PIECE;
        accumulate(load(x, at + p, n, buf), n, m, &sum, &sq);
    }
    *mean = m;
    *var = count ? sq / (double)count : 0.0;
}

/* ---- Layer norm and RMS norm: one row of the last dim at a time ---- */

typedef struct row_job {
    const ds_tensor *x, *weight, *bias;
    ds_tensor *y;
    int64_t width;
    float eps;
    int rms; /* RMS norm: no mean, no bias */
} row_job;

static void row_norm_range(void *ctx, int64_t begin, int64_t end)
{
    const row_job *j = ctx;
    float xb[PIECE], wb[PIECE], bb[PIECE], out[PIECE];
    int64_t c = j->width;
    for (int64_t r = begin; r < end; r++) {
        int64_t at = r * c;
        double mean = 0, var = 0;
        if (j->rms) {
            double sum = 0, sq = 0;
            for (int64_t p = 0; p < c; p += PIECE) {
                int64_t n = c - p < PIECE ? c - p : PIECE;
                accumulate(load(j->x, at + p, n, xb), n, 0.0, &sum, &sq);
            }
            var = c ? sq / (double)c : 0.0; /* mean(x^2) */
        } else {
            moments(j->x, at, c, &mean, &var);
        }
        float fmean = (float)mean, rstd = (float)(1.0 / sqrt(var + (double)j->eps));
        for (int64_t p = 0; p < c; p += PIECE) {
            int64_t n = c - p < PIECE ? c - p : PIECE;
            const float *x = load(j->x, at + p, n, xb);
            for (int64_t i = 0; i < n; i++)
                out[i] = (x[i] - fmean) * rstd;
            if (j->weight) {
                const float *w = load(j->weight, p, n, wb);
                for (int64_t i = 0; i < n; i++)
                    out[i] *= w[i];
            }
            if (j->bias) {
                const float *b = load(j->bias, p, n, bb);
                for (int64_t i = 0; i < n; i++)
                    out[i] += b[i];
            }
            store(j->y, at + p, n, out);
        }
    }
}

static void run_rows(ds_backend *b, row_job *j)
{
    int64_t c = j->x->shape[j->x->ndim - 1];
    j->width = c;
    int64_t rows = c ? (int64_t)(ds_tensor_numel(j->x) / (uint64_t)c) : 0;
    ds__cpu_parallel_for(b, rows, rows_grain(c), row_norm_range, j);
}

int ds__cpu_layer_norm(ds_backend *b, ds_stream *s, const ds_layer_norm_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    row_job j = {.x = a->x, .weight = a->weight, .bias = a->bias, .y = a->y, .eps = a->eps};
    run_rows(b, &j);
    return DS_OK;
}

int ds__cpu_rms_norm(ds_backend *b, ds_stream *s, const ds_rms_norm_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    row_job j = {.x = a->x, .weight = a->weight, .y = a->y, .eps = a->eps, .rms = 1};
    run_rows(b, &j);
    return DS_OK;
}

/* ---- Group norm: a group's channels are contiguous in x[B, C, *spatial] ---- */

typedef struct group_job {
    const ds_group_norm_args *a;
    int64_t channels, spatial, per_group; /* channels per group */
} group_job;

static void group_range(void *ctx, int64_t begin, int64_t end)
{
    const group_job *j = ctx;
    const ds_group_norm_args *a = j->a;
    float xb[PIECE], out[PIECE];
    int64_t groups = a->groups, hw = j->spatial;
    for (int64_t it = begin; it < end; it++) {
        int64_t g = it % groups;
        int64_t at = it * j->per_group * hw; /* (b * groups + g) * per_group * hw */
        double mean, var;
        moments(a->x, at, j->per_group * hw, &mean, &var);
        float fmean = (float)mean, rstd = (float)(1.0 / sqrt(var + (double)a->eps));
        for (int64_t ci = 0; ci < j->per_group; ci++) {
            int64_t ch = g * j->per_group + ci;
            float w = a->weight ? (float)ds_load_f64(a->weight->data, a->weight->dtype, (size_t)ch) : 1.0f;
            float bias = a->bias ? (float)ds_load_f64(a->bias->data, a->bias->dtype, (size_t)ch) : 0.0f;
            float scale = rstd * w;
            for (int64_t p = 0; p < hw; p += PIECE) {
                int64_t n = hw - p < PIECE ? hw - p : PIECE;
                int64_t pos = at + ci * hw + p;
                const float *x = load(a->x, pos, n, xb);
                for (int64_t i = 0; i < n; i++)
                    out[i] = (x[i] - fmean) * scale + bias;
                store(a->y, pos, n, out);
            }
        }
    }
}

static int64_t spatial_size(const ds_tensor *x)
{
    int64_t hw = 1;
    for (int i = 2; i < x->ndim; i++)
        hw *= x->shape[i];
    return hw;
}

int ds__cpu_group_norm(ds_backend *b, ds_stream *s, const ds_group_norm_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    group_job j = {.a = a, .channels = a->x->shape[1], .spatial = spatial_size(a->x)};
    j.per_group = j.channels / a->groups;
    int64_t items = a->x->shape[0] * a->groups;
    ds__cpu_parallel_for(b, items, rows_grain(j.per_group * j.spatial), group_range, &j);
    return DS_OK;
}

/* ---- Channel RMS norm: the norm runs over C at each spatial position ---- */

/* Positions per work item: a piece of each channel's row is contiguous, so the sums of squares
 * accumulate over C into a [CH_SPAN] buffer with unit-stride reads. */
#define CH_SPAN 256

typedef struct chan_job {
    const ds_channel_rms_norm_args *a;
    int64_t channels, spatial, spans; /* spans of CH_SPAN positions per batch */
} chan_job;

static void chan_range(void *ctx, int64_t begin, int64_t end)
{
    const chan_job *j = ctx;
    const ds_channel_rms_norm_args *a = j->a;
    float xb[CH_SPAN], out[CH_SPAN], inv[CH_SPAN];
    double sq[CH_SPAN];
    int64_t c = j->channels, hw = j->spatial;
    double root_c = sqrt((double)c);
    for (int64_t it = begin; it < end; it++) {
        int64_t bi = it / j->spans, s0 = (it % j->spans) * CH_SPAN;
        int64_t n = hw - s0 < CH_SPAN ? hw - s0 : CH_SPAN;
        int64_t base = bi * c * hw + s0;
        for (int64_t i = 0; i < n; i++)
            sq[i] = 0.0;
        for (int64_t ch = 0; ch < c; ch++) {
            const float *x = load(a->x, base + ch * hw, n, xb);
            for (int64_t i = 0; i < n; i++)
                sq[i] += (double)x[i] * x[i];
        }
        /* F.normalize: divide by max(||x||, eps), so an all-zero column stays zero. */
        for (int64_t i = 0; i < n; i++) {
            double norm = sqrt(sq[i]);
            inv[i] = (float)(root_c / (norm > (double)a->eps ? norm : (double)a->eps));
        }
        for (int64_t ch = 0; ch < c; ch++) {
            float g = (float)ds_load_f64(a->gamma->data, a->gamma->dtype, (size_t)ch);
            float bias = a->bias ? (float)ds_load_f64(a->bias->data, a->bias->dtype, (size_t)ch) : 0.0f;
            const float *x = load(a->x, base + ch * hw, n, xb);
            for (int64_t i = 0; i < n; i++)
                out[i] = x[i] * inv[i] * g + bias;
            store(a->y, base + ch * hw, n, out);
        }
    }
}

int ds__cpu_channel_rms_norm(ds_backend *b, ds_stream *s, const ds_channel_rms_norm_args *a,
                             ds_error *err)
{
    (void)s;
    (void)err;
    chan_job j = {.a = a, .channels = a->x->shape[1], .spatial = spatial_size(a->x)};
    j.spans = (j.spatial + CH_SPAN - 1) / CH_SPAN;
    int64_t items = a->x->shape[0] * j.spans;
    ds__cpu_parallel_for(b, items, rows_grain(j.channels * CH_SPAN), chan_range, &j);
    return DS_OK;
}

/* ---- Softmax over the last dim ---- */

typedef struct softmax_job {
    const ds_softmax_args *a;
    int64_t width;
} softmax_job;

static void softmax_range(void *ctx, int64_t begin, int64_t end)
{
    const softmax_job *j = ctx;
    const ds_tensor *xt = j->a->x;
    ds_tensor *yt = j->a->y;
    float xb[PIECE], out[PIECE];
    int64_t c = j->width;
    for (int64_t r = begin; r < end; r++) {
        int64_t at = r * c;
        float mx = -INFINITY;
        for (int64_t p = 0; p < c; p += PIECE) {
            int64_t n = c - p < PIECE ? c - p : PIECE;
            const float *x = load(xt, at + p, n, xb);
            for (int64_t i = 0; i < n; i++)
                mx = x[i] > mx ? x[i] : mx;
        }
        double sum = 0;
        for (int64_t p = 0; p < c; p += PIECE) {
            int64_t n = c - p < PIECE ? c - p : PIECE;
            const float *x = load(xt, at + p, n, xb);
            for (int64_t i = 0; i < n; i++)
                sum += expf(x[i] - mx);
        }
        float inv = (float)(1.0 / sum);
        for (int64_t p = 0; p < c; p += PIECE) {
            int64_t n = c - p < PIECE ? c - p : PIECE;
            const float *x = load(xt, at + p, n, xb);
            for (int64_t i = 0; i < n; i++)
                out[i] = expf(x[i] - mx) * inv;
            store(yt, at + p, n, out);
        }
    }
}

int ds__cpu_softmax(ds_backend *b, ds_stream *s, const ds_softmax_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    softmax_job j = {.a = a, .width = a->x->shape[a->x->ndim - 1]};
    int64_t rows = j.width ? (int64_t)(ds_tensor_numel(a->x) / (uint64_t)j.width) : 0;
    ds__cpu_parallel_for(b, rows, rows_grain(j.width * 4), softmax_range, &j);
    return DS_OK;
}
