/* Elementwise, broadcast and row-reduction kernels: norms, softmax, activations, RoPE, the
 * timestep embedding, binary ops, modulate, gated residual, scale, clamp and casts.
 *
 * All of these are bandwidth-bound: the elementwise ops share one kernel that reads up to
 * three operands (the first with the output's shape, the other two NumPy-broadcast through
 * collapsed shape/stride descriptors passed by value) and writes one, 8 elements per thread
 * with 16-byte accesses where sizes and alignment allow; 32-bit index arithmetic below 2^31
 * elements. Row reductions (rms_norm, layer_norm, softmax) give each row one warp, so a row's
 * sums stay in shuffles; the second pass over a row hits L1/L2. Arithmetic is f32, stored
 * rounding to nearest even (cuda_device.cuh). */
#include "cuda_internal.cuh"
#include "cuda_device.cuh"

#include <math.h>

namespace {

/* An operand broadcast to the output: its offset for output element i is
 * sum over d of ((i / inner_d) % dim[d]) * stride[d], with the output's dims collapsed where
 * the operand is uniformly "same" or "broadcast" (stride 0). nd == 0: one element. */
struct bcast {
    int nd;
    int64_t dim[DS_MAX_DIMS];
    int64_t stride[DS_MAX_DIMS];
};

enum ew_op { EW_CAST, EW_BIAS_ACT, EW_SCALE, EW_CLAMP, EW_ADD, EW_SUB, EW_MUL, EW_DIV, EW_MODULATE,
             EW_GATED };

struct ew_args {
    int op;
    int act;
    float alpha, beta;
    int64_t n;
    const void *x; int x_dt; /* the output's shape; NULL reads zeros */
    const void *u; int u_dt; bcast ub;
    const void *v; int v_dt; bcast vb;
    void *y; int y_dt;
};

} // namespace

static bcast make_bcast(const int64_t *out, int out_nd, const int64_t *in, int in_nd)
{
    bcast b;
    memset(&b, 0, sizeof b);
    int64_t in_stride = 1;
    int last = -1; /* 0 broadcast, 1 same: the category of the run being built */
    /* From the innermost dim outwards, building runs; reversed at the end. */
    int64_t dims[DS_MAX_DIMS], strides[DS_MAX_DIMS];
    int nd = 0;
    for (int i = 1; i <= out_nd; i++) {
        int64_t od = out[out_nd - i];
        int64_t id = i <= in_nd ? in[in_nd - i] : 1;
        if (od == 1)
            continue;
        int cat = id == od ? 1 : 0;
        if (nd > 0 && cat == last) {
            dims[nd - 1] *= od;
        } else {
            dims[nd] = od;
            strides[nd] = cat ? in_stride : 0;
            nd++;
            last = cat;
        }
        in_stride *= id;
    }
    b.nd = nd;
    for (int i = 0; i < nd; i++) {
        b.dim[i] = dims[nd - 1 - i];
        b.stride[i] = strides[nd - 1 - i];
    }
    return b;
}

template <typename IDX>
__device__ __forceinline__ int64_t bcast_offset(const bcast &b, IDX i)
{
    int64_t off = 0;
    for (int d = b.nd - 1; d > 0; d--) {
        IDX dim = (IDX)b.dim[d];
        IDX q = i / dim;
        off += (int64_t)(i - q * dim) * b.stride[d];
        i = q;
    }
    if (b.nd > 0)
        off += (int64_t)i * b.stride[0];
    return off;
}

template <int W, typename IDX>
__device__ __forceinline__ void load_bcast(const void *p, int dt, const bcast &b, IDX i, float v[W])
{
    int64_t off = bcast_offset<IDX>(b, i);
    if constexpr (W == 8) {
        if (b.nd > 0 && b.stride[b.nd - 1] == 1) {
            dsk::load8(p, dt, off, v);
        } else {
            float s = dsk::load(p, dt, off);
#pragma unroll
            for (int j = 0; j < 8; j++)
                v[j] = s;
        }
    } else {
        v[0] = dsk::load(p, dt, off);
    }
}

__device__ __forceinline__ float ew_apply(const ew_args &p, float x, float u, float v)
{
    switch (p.op) {
    case EW_CAST: return x;
    case EW_BIAS_ACT: return dsk::activate(x + u, p.act);
    case EW_SCALE: return x * p.alpha + p.beta;
    case EW_CLAMP: return x != x ? x : fminf(fmaxf(x, p.alpha), p.beta);
    case EW_ADD: return x + u;
    case EW_SUB: return x - u;
    case EW_MUL: return x * u;
    case EW_DIV: return x / u;
    case EW_MODULATE: return x * (1.0f + u) + v;
    case EW_GATED: return x + u * v;
    default: return x;
    }
}

template <int W, typename IDX>
__device__ __forceinline__ void ew_elements(const ew_args &p, IDX i)
{
    float xv[W], uv[W], vv[W], out[W];
    if (p.x) {
        dsk::loadv<W>(p.x, p.x_dt, (int64_t)i, xv);
    } else {
#pragma unroll
        for (int j = 0; j < W; j++)
            xv[j] = 0.0f;
    }
    if (p.u) {
        load_bcast<W, IDX>(p.u, p.u_dt, p.ub, i, uv);
    } else {
#pragma unroll
        for (int j = 0; j < W; j++)
            uv[j] = 0.0f;
    }
    if (p.v) {
        load_bcast<W, IDX>(p.v, p.v_dt, p.vb, i, vv);
    } else {
#pragma unroll
        for (int j = 0; j < W; j++)
            vv[j] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < W; j++)
        out[j] = ew_apply(p, xv[j], uv[j], vv[j]);
    dsk::storev<W>(p.y, p.y_dt, (int64_t)i, out);
}

template <int V, typename IDX>
__global__ void ew_kernel(ew_args p)
{
    IDX n = (IDX)p.n;
    IDX stride = (IDX)gridDim.x * blockDim.x * V;
    for (IDX base = ((IDX)blockIdx.x * blockDim.x + threadIdx.x) * V; base < n; base += stride) {
        if (V == 8 && base + 8 <= n) {
            ew_elements<8, IDX>(p, base);
        } else {
            for (IDX j = base; j < base + V && j < n; j++)
                ew_elements<1, IDX>(p, j);
        }
    }
}

/* 8-element accesses need the base aligned to min(16, 8 * element size). */
static int vec_aligned(const void *p, ds_dtype dt)
{
    size_t need = 8 * ds_dtype_size(dt);
    if (need > 16)
        need = 16;
    return ((uintptr_t)p % need) == 0;
}

static int bcast_vec_ok(const void *p, ds_dtype dt, const bcast &b)
{
    if (!p || b.nd == 0)
        return 1;
    if (b.dim[b.nd - 1] % 8 != 0)
        return 0;
    return b.stride[b.nd - 1] == 0 || vec_aligned(p, dt);
}

static int ew_launch(ds__cuda *c, ds_stream *s, const ew_args &p, ds_error *err)
{
    if (p.n == 0)
        return DS_OK;
    int vec = p.n % 8 == 0 && (!p.x || vec_aligned(p.x, (ds_dtype)p.x_dt)) &&
              vec_aligned(p.y, (ds_dtype)p.y_dt) && bcast_vec_ok(p.u, (ds_dtype)p.u_dt, p.ub) &&
              bcast_vec_ok(p.v, (ds_dtype)p.v_dt, p.vb);
    int small = p.n < ((int64_t)1 << 31);
    unsigned blocks = ds__cuda_blocks(c, (uint64_t)(vec ? p.n / 8 : p.n), 256);
    if (vec && small)
        ew_kernel<8, uint32_t><<<blocks, 256, 0, s->stream>>>(p);
    else if (vec)
        ew_kernel<8, uint64_t><<<blocks, 256, 0, s->stream>>>(p);
    else if (small)
        ew_kernel<1, uint32_t><<<blocks, 256, 0, s->stream>>>(p);
    else
        ew_kernel<1, uint64_t><<<blocks, 256, 0, s->stream>>>(p);
    DS_KERNEL_CHECK("elementwise");
    return DS_OK;
}

static ew_args ew_unary(int op, const ds_tensor *x, const ds_tensor *y)
{
    ew_args p;
    memset(&p, 0, sizeof p);
    p.op = op;
    p.n = (int64_t)ds_tensor_numel(y);
    p.x = x->data;
    p.x_dt = x->dtype;
    p.y = y->data;
    p.y_dt = y->dtype;
    return p;
}

static void ew_set_u(ew_args *p, const ds_tensor *out, const ds_tensor *u)
{
    p->u = u->data;
    p->u_dt = u->dtype;
    p->ub = make_bcast(out->shape, out->ndim, u->shape, u->ndim);
}

static void ew_set_v(ew_args *p, const ds_tensor *out, const ds_tensor *v)
{
    p->v = v->data;
    p->v_dt = v->dtype;
    p->vb = make_bcast(out->shape, out->ndim, v->shape, v->ndim);
}

/* ---- Entry points of the elementwise family ---- */

int ds__cuda_bias_act(ds__cuda *c, ds_stream *s, const void *x, ds_dtype x_dtype, const void *bias,
                      ds_dtype bias_dtype, ds_activation act, void *y, ds_dtype y_dtype,
                      int64_t rows, int64_t n, ds_error *err)
{
    ew_args p;
    memset(&p, 0, sizeof p);
    p.op = EW_BIAS_ACT;
    p.act = act;
    p.n = rows * n;
    p.x = x;
    p.x_dt = x_dtype;
    p.y = y;
    p.y_dt = y_dtype;
    if (bias) {
        int64_t out_shape[2] = {rows, n}, bias_shape[1] = {n};
        p.u = bias;
        p.u_dt = bias_dtype;
        p.ub = make_bcast(out_shape, 2, bias_shape, 1);
    }
    return ew_launch(c, s, p, err);
}

int ds__cuda_fill_channels(ds__cuda *c, ds_stream *s, const void *value, ds_dtype value_dtype,
                           void *y, ds_dtype y_dtype, int64_t batch, int64_t channels,
                           int64_t inner, ds_error *err)
{
    ew_args p;
    memset(&p, 0, sizeof p);
    p.op = EW_BIAS_ACT;
    p.act = DS_ACT_NONE;
    p.n = batch * channels * inner;
    p.y = y;
    p.y_dt = y_dtype;
    int64_t out_shape[3] = {batch, channels, inner}, value_shape[2] = {channels, 1};
    p.u = value;
    p.u_dt = value_dtype;
    p.ub = make_bcast(out_shape, 3, value_shape, 2);
    return ew_launch(c, s, p, err);
}

int ds__cuda_convert(ds__cuda *c, ds_stream *s, const void *src, ds_dtype src_dtype, void *dst,
                     ds_dtype dst_dtype, uint64_t n, ds_error *err)
{
    if (src_dtype == dst_dtype) {
        if (n && src != dst)
            DS_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * ds_dtype_size(src_dtype),
                                          cudaMemcpyDeviceToDevice, s->stream));
        return DS_OK;
    }
    ew_args p;
    memset(&p, 0, sizeof p);
    p.op = EW_CAST;
    p.n = (int64_t)n;
    p.x = src;
    p.x_dt = src_dtype;
    p.y = dst;
    p.y_dt = dst_dtype;
    return ew_launch(c, s, p, err);
}

int ds__cuda_cast(ds_backend *b, ds_stream *s, const ds_cast_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    return ds__cuda_convert(ds__cuda_of(b), st, a->x->data, a->x->dtype, a->y->data, a->y->dtype,
                            ds_tensor_numel(a->x), err);
}

int ds__cuda_activation(ds_backend *b, ds_stream *s, const ds_activation_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    ew_args p = ew_unary(EW_BIAS_ACT, a->x, a->y);
    p.act = a->activation;
    return ew_launch(ds__cuda_of(b), st, p, err);
}

int ds__cuda_scale(ds_backend *b, ds_stream *s, const ds_scale_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    ew_args p = ew_unary(EW_SCALE, a->x, a->y);
    p.alpha = a->alpha;
    p.beta = a->beta;
    return ew_launch(ds__cuda_of(b), st, p, err);
}

int ds__cuda_clamp(ds_backend *b, ds_stream *s, const ds_clamp_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    ew_args p = ew_unary(EW_CLAMP, a->x, a->y);
    p.alpha = a->lo;
    p.beta = a->hi;
    return ew_launch(ds__cuda_of(b), st, p, err);
}

int ds__cuda_binary(ds_backend *b, ds_stream *s, const ds_binary_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    static const int ops[] = {EW_ADD, EW_SUB, EW_MUL, EW_DIV};
    ew_args p = ew_unary(ops[a->op], a->a, a->y);
    ew_set_u(&p, a->a, a->b);
    return ew_launch(ds__cuda_of(b), st, p, err);
}

int ds__cuda_modulate(ds_backend *b, ds_stream *s, const ds_modulate_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    ew_args p = ew_unary(EW_MODULATE, a->x, a->y);
    ew_set_u(&p, a->x, a->scale);
    ew_set_v(&p, a->x, a->shift);
    return ew_launch(ds__cuda_of(b), st, p, err);
}

int ds__cuda_gated_residual(ds_backend *b, ds_stream *s, const ds_gated_residual_args *a,
                            ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    ew_args p = ew_unary(EW_GATED, a->x, a->out);
    ew_set_u(&p, a->x, a->gate);
    ew_set_v(&p, a->x, a->y_in);
    return ew_launch(ds__cuda_of(b), st, p, err);
}

/* ---- Row reductions: one warp per row ---- */

#define ROW_WARPS 4

enum row_op { ROW_RMS, ROW_LAYER, ROW_SOFTMAX };

namespace {

struct row_args {
    int op;
    const void *x; int x_dt;
    const void *w; int w_dt; /* NULL = 1 */
    const void *b; int b_dt; /* NULL = 0 */
    void *y; int y_dt;
    int64_t rows, cols;
    float eps;
};

} // namespace

template <int V>
__global__ void row_kernel(row_args p)
{
    int64_t row = (int64_t)blockIdx.x * ROW_WARPS + threadIdx.x / 32;
    if (row >= p.rows)
        return; /* the whole warp leaves together: no block-wide barrier below */
    int lane = threadIdx.x & 31;
    int64_t base = row * p.cols;
    float v[V];

    /* First pass: the statistic the second pass needs. */
    float center = 0.0f, factor = 1.0f;
    if (p.op == ROW_SOFTMAX) {
        float m = -INFINITY;
        for (int64_t c = lane * V; c < p.cols; c += 32 * V) {
            dsk::loadv<V>(p.x, p.x_dt, base + c, v);
#pragma unroll
            for (int j = 0; j < V; j++)
                m = fmaxf(m, v[j]);
        }
        center = dsk::warp_max(m);
        float sum = 0.0f;
        for (int64_t c = lane * V; c < p.cols; c += 32 * V) {
            dsk::loadv<V>(p.x, p.x_dt, base + c, v);
#pragma unroll
            for (int j = 0; j < V; j++)
                sum += expf(v[j] - center);
        }
        factor = 1.0f / dsk::warp_sum(sum);
    } else {
        if (p.op == ROW_LAYER) {
            float sum = 0.0f;
            for (int64_t c = lane * V; c < p.cols; c += 32 * V) {
                dsk::loadv<V>(p.x, p.x_dt, base + c, v);
#pragma unroll
                for (int j = 0; j < V; j++)
                    sum += v[j];
            }
            center = dsk::warp_sum(sum) / (float)p.cols;
        }
        float ss = 0.0f;
        for (int64_t c = lane * V; c < p.cols; c += 32 * V) {
            dsk::loadv<V>(p.x, p.x_dt, base + c, v);
#pragma unroll
            for (int j = 0; j < V; j++) {
                float d = v[j] - center;
                ss += d * d;
            }
        }
        factor = 1.0f / sqrtf(dsk::warp_sum(ss) / (float)p.cols + p.eps);
    }

    for (int64_t c = lane * V; c < p.cols; c += 32 * V) {
        float w[V], bb[V], out[V];
        dsk::loadv<V>(p.x, p.x_dt, base + c, v);
        if (p.w) {
            dsk::loadv<V>(p.w, p.w_dt, c, w);
        } else {
#pragma unroll
            for (int j = 0; j < V; j++)
                w[j] = 1.0f;
        }
        if (p.b) {
            dsk::loadv<V>(p.b, p.b_dt, c, bb);
        } else {
#pragma unroll
            for (int j = 0; j < V; j++)
                bb[j] = 0.0f;
        }
#pragma unroll
        for (int j = 0; j < V; j++)
            out[j] = p.op == ROW_SOFTMAX ? expf(v[j] - center) * factor
                                         : (v[j] - center) * factor * w[j] + bb[j];
        dsk::storev<V>(p.y, p.y_dt, base + c, out);
    }
}

static int row_launch(ds__cuda *c, ds_stream *s, const row_args &p, ds_error *err)
{
    (void)c;
    if (p.rows == 0 || p.cols == 0)
        return DS_OK;
    int vec = p.cols % 8 == 0 && vec_aligned(p.x, (ds_dtype)p.x_dt) &&
              vec_aligned(p.y, (ds_dtype)p.y_dt) && (!p.w || vec_aligned(p.w, (ds_dtype)p.w_dt)) &&
              (!p.b || vec_aligned(p.b, (ds_dtype)p.b_dt));
    int64_t blocks = (p.rows + ROW_WARPS - 1) / ROW_WARPS;
    if (blocks > 0x7fffffff)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED, "%lld rows exceed one launch",
                            (long long)p.rows);
    if (vec)
        row_kernel<8><<<(unsigned)blocks, ROW_WARPS * 32, 0, s->stream>>>(p);
    else
        row_kernel<1><<<(unsigned)blocks, ROW_WARPS * 32, 0, s->stream>>>(p);
    DS_KERNEL_CHECK("row reduction");
    return DS_OK;
}

static row_args row_of(int op, const ds_tensor *x, const ds_tensor *y)
{
    row_args p;
    memset(&p, 0, sizeof p);
    p.op = op;
    p.x = x->data;
    p.x_dt = x->dtype;
    p.y = y->data;
    p.y_dt = y->dtype;
    p.cols = x->ndim ? x->shape[x->ndim - 1] : 1;
    p.rows = p.cols ? (int64_t)(ds_tensor_numel(x) / (uint64_t)p.cols) : 0;
    return p;
}

int ds__cuda_rms_norm(ds_backend *b, ds_stream *s, const ds_rms_norm_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    row_args p = row_of(ROW_RMS, a->x, a->y);
    if (a->weight) {
        p.w = a->weight->data;
        p.w_dt = a->weight->dtype;
    }
    p.eps = a->eps;
    return row_launch(ds__cuda_of(b), st, p, err);
}

int ds__cuda_layer_norm(ds_backend *b, ds_stream *s, const ds_layer_norm_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    row_args p = row_of(ROW_LAYER, a->x, a->y);
    if (a->weight) {
        p.w = a->weight->data;
        p.w_dt = a->weight->dtype;
    }
    if (a->bias) {
        p.b = a->bias->data;
        p.b_dt = a->bias->dtype;
    }
    p.eps = a->eps;
    return row_launch(ds__cuda_of(b), st, p, err);
}

int ds__cuda_softmax(ds_backend *b, ds_stream *s, const ds_softmax_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    return row_launch(ds__cuda_of(b), st, row_of(ROW_SOFTMAX, a->x, a->y), err);
}

/* ---- Group norm: partial sums, per-group statistics, then one elementwise pass ---- */

#define GN_CHUNK 16384
#define GN_THREADS 256

/* partial[(g * chunks + ch) * 2 + {0, 1}] = sum and sum of squares (f64: a group can hold
 * millions of elements, and E[x^2] - E[x]^2 needs the headroom) of one chunk of group g. */
__global__ void gn_partial_kernel(const void *x, int dt, int64_t groups, int64_t len, int64_t chunks,
                                  double *partial)
{
    __shared__ double sh[2][GN_THREADS / 32];
    for (int64_t g = blockIdx.y; g < groups; g += gridDim.y) {
        int64_t begin = (int64_t)blockIdx.x * GN_CHUNK;
        int64_t end = begin + GN_CHUNK < len ? begin + GN_CHUNK : len;
        double sum = 0.0, sq = 0.0;
        for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
            double v = dsk::load(x, dt, g * len + i);
            sum += v;
            sq += v * v;
        }
        sum = dsk::warp_sum_d(sum);
        sq = dsk::warp_sum_d(sq);
        int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
        if (lane == 0) {
            sh[0][warp] = sum;
            sh[1][warp] = sq;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            double ts = 0.0, tq = 0.0;
            for (int w = 0; w < GN_THREADS / 32; w++) {
                ts += sh[0][w];
                tq += sh[1][w];
            }
            partial[(g * chunks + blockIdx.x) * 2] = ts;
            partial[(g * chunks + blockIdx.x) * 2 + 1] = tq;
        }
        __syncthreads();
    }
}

__global__ void gn_stats_kernel(const double *partial, int64_t groups, int64_t chunks, int64_t len,
                                float eps, float2 *stats)
{
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
         g += (int64_t)gridDim.x * blockDim.x) {
        double sum = 0.0, sq = 0.0;
        for (int64_t ch = 0; ch < chunks; ch++) {
            sum += partial[(g * chunks + ch) * 2];
            sq += partial[(g * chunks + ch) * 2 + 1];
        }
        double mean = sum / (double)len;
        double var = sq / (double)len - mean * mean;
        if (var < 0.0)
            var = 0.0;
        stats[g] = make_float2((float)mean, (float)(1.0 / sqrt(var + (double)eps)));
    }
}

namespace {

struct gn_apply_args {
    const void *x; int x_dt;
    const void *w; int w_dt;
    const void *b; int b_dt;
    void *y; int y_dt;
    const float2 *stats;
    int64_t n, channels, spatial, group_channels;
};

} // namespace

template <int V>
__global__ void gn_apply_kernel(gn_apply_args p)
{
    int64_t stride = (int64_t)gridDim.x * blockDim.x * V;
    for (int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * V; i < p.n; i += stride) {
        /* V divides spatial, so the V elements share a channel. */
        int64_t bc = i / p.spatial;
        int64_t ch = bc % p.channels;
        int64_t g = (bc / p.channels) * (p.channels / p.group_channels) + ch / p.group_channels;
        float2 st = p.stats[g];
        float w = p.w ? dsk::load(p.w, p.w_dt, ch) : 1.0f;
        float bb = p.b ? dsk::load(p.b, p.b_dt, ch) : 0.0f;
        float v[V];
        dsk::loadv<V>(p.x, p.x_dt, i, v);
#pragma unroll
        for (int j = 0; j < V; j++)
            v[j] = (v[j] - st.x) * st.y * w + bb;
        dsk::storev<V>(p.y, p.y_dt, i, v);
    }
}

int ds__cuda_group_norm(ds_backend *b, ds_stream *s, const ds_group_norm_args *a, ds_error *err)
{
    ds__cuda *c = ds__cuda_of(b);
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    std::lock_guard<std::mutex> guard(st->lock);

    int64_t batch = a->x->shape[0], channels = a->x->shape[1];
    uint64_t n = ds_tensor_numel(a->x);
    if (n == 0)
        return DS_OK;
    int64_t spatial = (int64_t)(n / (uint64_t)(batch * channels));
    int64_t groups = batch * a->groups;
    int64_t group_channels = channels / a->groups;
    int64_t len = group_channels * spatial;
    int64_t chunks = (len + GN_CHUNK - 1) / GN_CHUNK;
    size_t partial_bytes = ds__cuda_round_up((size_t)(groups * chunks) * 2 * sizeof(double));
    void *scratch;
    DS_TRY(ds__cuda_scratch(c, st, partial_bytes + (size_t)groups * sizeof(float2), &scratch, err));
    double *partial = (double *)scratch;
    float2 *stats = (float2 *)((char *)scratch + partial_bytes);
    if (chunks > 0x7fffffff)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED, "group_norm: groups of %lld elements are "
                            "too large", (long long)len);

    dim3 grid((unsigned)chunks, (unsigned)(groups < 65535 ? groups : 65535));
    gn_partial_kernel<<<grid, GN_THREADS, 0, st->stream>>>(a->x->data, a->x->dtype, groups, len,
                                                           chunks, partial);
    DS_KERNEL_CHECK("group_norm partial sums");
    gn_stats_kernel<<<ds__cuda_blocks(c, (uint64_t)groups, 128), 128, 0, st->stream>>>(
        partial, groups, chunks, len, a->eps, stats);
    DS_KERNEL_CHECK("group_norm statistics");

    gn_apply_args p;
    memset(&p, 0, sizeof p);
    p.x = a->x->data;
    p.x_dt = a->x->dtype;
    if (a->weight) {
        p.w = a->weight->data;
        p.w_dt = a->weight->dtype;
    }
    if (a->bias) {
        p.b = a->bias->data;
        p.b_dt = a->bias->dtype;
    }
    p.y = a->y->data;
    p.y_dt = a->y->dtype;
    p.stats = stats;
    p.n = (int64_t)n;
    p.channels = channels;
    p.spatial = spatial;
    p.group_channels = group_channels;
    int vec = spatial % 8 == 0 && vec_aligned(p.x, a->x->dtype) && vec_aligned(p.y, a->y->dtype);
    unsigned blocks = ds__cuda_blocks(c, vec ? n / 8 : n, 256);
    if (vec)
        gn_apply_kernel<8><<<blocks, 256, 0, st->stream>>>(p);
    else
        gn_apply_kernel<1><<<blocks, 256, 0, st->stream>>>(p);
    DS_KERNEL_CHECK("group_norm apply");
    return DS_OK;
}

/* ---- Channel RMS norm: one thread per (batch, position), looping over channels ---- */

namespace {

struct crms_args {
    const void *x; int x_dt;
    const void *g; int g_dt;
    const void *b; int b_dt;
    void *y; int y_dt;
    int64_t positions, channels, spatial;
    float eps;
};

} // namespace

__global__ void channel_rms_kernel(crms_args p)
{
    float root_c = sqrtf((float)p.channels);
    for (int64_t pos = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; pos < p.positions;
         pos += (int64_t)gridDim.x * blockDim.x) {
        int64_t bi = pos / p.spatial, sp = pos % p.spatial;
        int64_t base = bi * p.channels * p.spatial + sp;
        float ss = 0.0f;
        for (int64_t ch = 0; ch < p.channels; ch++) {
            float v = dsk::load(p.x, p.x_dt, base + ch * p.spatial);
            ss += v * v;
        }
        float scale = root_c / fmaxf(sqrtf(ss), p.eps);
        for (int64_t ch = 0; ch < p.channels; ch++) {
            int64_t at = base + ch * p.spatial;
            float v = dsk::load(p.x, p.x_dt, at) * scale * dsk::load(p.g, p.g_dt, ch);
            if (p.b)
                v += dsk::load(p.b, p.b_dt, ch);
            dsk::store(p.y, p.y_dt, at, v);
        }
    }
}

int ds__cuda_channel_rms_norm(ds_backend *b, ds_stream *s, const ds_channel_rms_norm_args *a,
                              ds_error *err)
{
    ds__cuda *c = ds__cuda_of(b);
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    uint64_t n = ds_tensor_numel(a->x);
    if (n == 0)
        return DS_OK;
    crms_args p;
    memset(&p, 0, sizeof p);
    p.x = a->x->data;
    p.x_dt = a->x->dtype;
    p.g = a->gamma->data;
    p.g_dt = a->gamma->dtype;
    if (a->bias) {
        p.b = a->bias->data;
        p.b_dt = a->bias->dtype;
    }
    p.y = a->y->data;
    p.y_dt = a->y->dtype;
    p.channels = a->x->shape[1];
    p.spatial = (int64_t)(n / (uint64_t)(a->x->shape[0] * p.channels));
    p.positions = a->x->shape[0] * p.spatial;
    p.eps = a->eps;
    channel_rms_kernel<<<ds__cuda_blocks(c, (uint64_t)p.positions, 256), 256, 0, st->stream>>>(p);
    DS_KERNEL_CHECK("channel_rms_norm");
    return DS_OK;
}

/* ---- RoPE: one thread per rotated pair ---- */

namespace {

struct rope_args {
    const void *x; int x_dt;
    const float *cos, *sin;
    void *y; int y_dt;
    int64_t pairs, seq, heads, dim;
    int half_split;
};

} // namespace

__global__ void rope_kernel(rope_args p)
{
    int64_t half = p.dim / 2;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.pairs;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t row = i / half, k = i % half;
        int64_t pos = (row / p.heads) % p.seq;
        int64_t e0 = row * p.dim + (p.half_split ? k : 2 * k);
        int64_t e1 = e0 + (p.half_split ? half : 1);
        float c = p.cos[pos * half + k], sn = p.sin[pos * half + k];
        float x0 = dsk::load(p.x, p.x_dt, e0), x1 = dsk::load(p.x, p.x_dt, e1);
        dsk::store(p.y, p.y_dt, e0, x0 * c - x1 * sn);
        dsk::store(p.y, p.y_dt, e1, x1 * c + x0 * sn);
    }
}

int ds__cuda_rope(ds_backend *b, ds_stream *s, const ds_rope_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    rope_args p;
    memset(&p, 0, sizeof p);
    p.x = a->x->data;
    p.x_dt = a->x->dtype;
    p.cos = (const float *)a->cos->data;
    p.sin = (const float *)a->sin->data;
    p.y = a->y->data;
    p.y_dt = a->y->dtype;
    p.seq = a->x->shape[1];
    p.heads = a->x->shape[2];
    p.dim = a->x->shape[3];
    p.pairs = (int64_t)(ds_tensor_numel(a->x) / 2);
    p.half_split = a->style == DS_ROPE_HALF_SPLIT;
    if (p.pairs == 0)
        return DS_OK;
    rope_kernel<<<ds__cuda_blocks(ds__cuda_of(b), (uint64_t)p.pairs, 256), 256, 0, st->stream>>>(p);
    DS_KERNEL_CHECK("rope");
    return DS_OK;
}

/* ---- Timestep embedding (f64 arithmetic, as the CPU does) ---- */

__device__ __forceinline__ void store_f64(void *p, int dt, int64_t i, double v)
{
    switch (dt) {
    case DS_F32: static_cast<float *>(p)[i] = (float)v; break;
    case DS_BF16: static_cast<__nv_bfloat16 *>(p)[i] = __double2bfloat16(v); break;
    case DS_F16: static_cast<__half *>(p)[i] = __double2half(v); break;
    case DS_F64: static_cast<double *>(p)[i] = v; break;
    default: dsk::store(p, dt, i, (float)v); break;
    }
}

__global__ void timestep_kernel(const void *t, int t_dt, int64_t batch, int64_t dim, int flip,
                                double denom, double scale, double log_period, void *y, int y_dt)
{
    int64_t half = dim / 2;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < batch * dim;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t bi = i / dim, j = i % dim;
        int64_t k = j < half ? j : j - half;
        double tv = t_dt == DS_F64 ? static_cast<const double *>(t)[bi]
                                   : (double)static_cast<const float *>(t)[bi];
        /* diffusers' order: t * exp(exponent), then * scale. */
        double arg = scale * (tv * exp(-log_period * (double)k / denom));
        int want_sin = (j < half) != (flip != 0);
        store_f64(y, y_dt, i, want_sin ? sin(arg) : cos(arg));
    }
}

int ds__cuda_timestep_embedding(ds_backend *b, ds_stream *s, const ds_timestep_embedding_args *a,
                                ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    int64_t batch = a->t->shape[0], dim = a->y->shape[1];
    if (batch == 0)
        return DS_OK;
    double denom = (double)(dim / 2) - (double)a->downscale_freq_shift;
    timestep_kernel<<<ds__cuda_blocks(ds__cuda_of(b), (uint64_t)(batch * dim), 256), 256, 0,
                      st->stream>>>(a->t->data, a->t->dtype, batch, dim, a->flip_sin_to_cos, denom,
                                    (double)a->scale, log((double)a->max_period), a->y->data,
                                    a->y->dtype);
    DS_KERNEL_CHECK("timestep_embedding");
    return DS_OK;
}
