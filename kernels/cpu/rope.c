/* Rotary position embedding and the sinusoidal timestep embedding on the CPU (semantics in
 * kernels/backend.h).
 *
 * RoPE walks the rows of x[B, S, H, D] (one head of one token each) split over the pool, in
 * pieces of at most PAIRS rotation pairs: a piece is read whole before its outputs are written,
 * and pieces are disjoint, so y may alias x. */
#include <math.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/ops.h"

#define PAIRS 512
#define GRAIN_ELEMS 16384 /* elements per chunk: enough to amortise waking a worker */

typedef struct rope_job {
    const ds_rope_args *a;
    int64_t seq, heads, dim;
} rope_job;

static void load_f32(const ds_tensor *t, int64_t at, int64_t n, float *buf)
{
    ds_convert_to_f32((const char *)t->data + (size_t)at * ds_dtype_size(t->dtype), t->dtype,
                      (size_t)n, buf);
}

static void store_f32(ds_tensor *t, int64_t at, int64_t n, const float *v)
{
    ds_convert_from_f32(v, (size_t)n, t->dtype,
                        (char *)t->data + (size_t)at * ds_dtype_size(t->dtype));
}

static void rope_range(void *ctx, int64_t begin, int64_t end)
{
    const rope_job *j = ctx;
    const ds_rope_args *a = j->a;
    float in0[2 * PAIRS], in1[PAIRS], out0[2 * PAIRS], out1[PAIRS];
    int64_t half = j->dim / 2;
    for (int64_t r = begin; r < end; r++) {
        int64_t pos = (r / j->heads) % j->seq, at = r * j->dim;
        const float *cs = (const float *)a->cos->data + pos * half;
        const float *sn = (const float *)a->sin->data + pos * half;
        for (int64_t p0 = 0; p0 < half; p0 += PAIRS) {
            int64_t n = half - p0 < PAIRS ? half - p0 : PAIRS;
            if (a->style == DS_ROPE_INTERLEAVED) {
                /* (x[2i], x[2i+1]) * (cos + i sin) as complex numbers. */
                load_f32(a->x, at + 2 * p0, 2 * n, in0);
                for (int64_t i = 0; i < n; i++) {
                    float re = in0[2 * i], im = in0[2 * i + 1], c = cs[p0 + i], s = sn[p0 + i];
                    out0[2 * i] = re * c - im * s;
                    out0[2 * i + 1] = re * s + im * c;
                }
                store_f32(a->y, at + 2 * p0, 2 * n, out0);
            } else {
                /* x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]. */
                load_f32(a->x, at + p0, n, in0);
                load_f32(a->x, at + half + p0, n, in1);
                for (int64_t i = 0; i < n; i++) {
                    float x1 = in0[i], x2 = in1[i], c = cs[p0 + i], s = sn[p0 + i];
                    out0[i] = x1 * c - x2 * s;
                    out1[i] = x2 * c + x1 * s;
                }
                store_f32(a->y, at + p0, n, out0);
                store_f32(a->y, at + half + p0, n, out1);
            }
        }
    }
}

int ds__cpu_rope(ds_backend *b, ds_stream *s, const ds_rope_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    rope_job j = {.a = a, .seq = a->x->shape[1], .heads = a->x->shape[2], .dim = a->x->shape[3]};
    if (j.dim == 0)
        return DS_OK;
    int64_t rows = a->x->shape[0] * j.seq * j.heads;
    ds__cpu_parallel_for(b, rows, 1 + GRAIN_ELEMS / j.dim, rope_range, &j);
    return DS_OK;
}

int ds__cpu_timestep_embedding(ds_backend *b, ds_stream *s, const ds_timestep_embedding_args *a,
                               ds_error *err)
{
    (void)b;
    (void)s;
    (void)err;
    int64_t batch = a->t->shape[0], dim = a->y->shape[1], half = dim / 2;
    double log_period = log((double)a->max_period);
    double denom = (double)half - (double)a->downscale_freq_shift;
    for (int64_t bi = 0; bi < batch; bi++) {
        double t = ds_load_f64(a->t->data, a->t->dtype, (size_t)bi);
        for (int64_t k = 0; k < half; k++) {
            /* diffusers' order: t * exp(exponent), then * scale. */
            double arg = (double)a->scale * (t * exp(-log_period * (double)k / denom));
            double sn = sin(arg), cs = cos(arg);
            size_t row = (size_t)(bi * dim);
            ds_store_f64(a->y->data, a->y->dtype, row + (size_t)k, a->flip_sin_to_cos ? cs : sn);
            ds_store_f64(a->y->data, a->y->dtype, row + (size_t)(half + k),
                         a->flip_sin_to_cos ? sn : cs);
        }
    }
    return DS_OK;
}
