/* Data movement (concat, slice, permute, patchify/unpatchify, pad, nearest upsampling),
 * embedding gathers and convolutions.
 *
 * Movement keeps the dtype, so it moves bytes: concat and slice are strided 2-D copies in the
 * widest unit (up to 16 bytes) that every address and pitch allows; permute first drops unit
 * dims and merges dims that stay adjacent, then either gathers contiguous runs (when the last
 * dim stays last) or transposes 32 x 32 tiles through shared memory (reads and writes both
 * coalesced). Patchify and unpatchify are 6-dim permutes.
 *
 * Convolutions are im2col into scratch (bounded, chunked over output positions) plus a
 * cuBLASLt GEMM per batch and chunk: y_b[Cout, P] = W[Cout, K] col[K, P] in row-major terms,
 * written straight into y (a column-major [P, Cout] matrix with leading dim P). A 1x1, stride 1,
 * unpadded convolution multiplies x directly. The bias is written into y first and the GEMM
 * accumulates onto it (beta = 1), so the result is rounded once. The GEMM runs in the weight's
 * dtype when the input (and cache) share it, else in f32 with the weight converted into scratch
 * once per call and im2col widening the input (cuda_supports.c decides, so `supports` and the
 * work agree). */
#include "cuda_internal.cuh"
#include "cuda_device.cuh"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>

extern "C" {
#include "core/float_convert.h"
}

/* ---- Strided 2-D copies ---- */

template <typename U>
__global__ void copy2d_kernel(char *dst, int64_t dpitch, const char *src, int64_t spitch,
                              int64_t units, int64_t rows)
{
    int64_t total = units * rows;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / units, u = i - r * units;
        reinterpret_cast<U *>(dst + r * dpitch)[u] = reinterpret_cast<const U *>(src + r * spitch)[u];
    }
}

/* rows x width bytes from src (pitch spitch) to dst (pitch dpitch). */
static int copy2d(ds__cuda *c, ds_stream *s, void *dst, int64_t dpitch, const void *src,
                  int64_t spitch, int64_t width, int64_t rows, ds_error *err)
{
    if (width == 0 || rows == 0)
        return DS_OK;
    if (rows == 1 || (dpitch == width && spitch == width)) {
        DS_CUDA_CHECK(cudaMemcpyAsync(dst, src, (size_t)(width * rows), cudaMemcpyDeviceToDevice,
                                      s->stream));
        return DS_OK;
    }
    unsigned al = ds__cuda_alignment((uintptr_t)dst | (uintptr_t)dpitch, (uintptr_t)src,
                                     (uintptr_t)spitch, (uintptr_t)width);
    int64_t units = width / al;
    unsigned blocks = ds__cuda_blocks(c, (uint64_t)(units * rows), 256);
    char *d = (char *)dst;
    const char *sp = (const char *)src;
    switch (al) {
    case 16: copy2d_kernel<uint4><<<blocks, 256, 0, s->stream>>>(d, dpitch, sp, spitch, units, rows); break;
    case 8: copy2d_kernel<uint2><<<blocks, 256, 0, s->stream>>>(d, dpitch, sp, spitch, units, rows); break;
    case 4: copy2d_kernel<uint32_t><<<blocks, 256, 0, s->stream>>>(d, dpitch, sp, spitch, units, rows); break;
    case 2: copy2d_kernel<uint16_t><<<blocks, 256, 0, s->stream>>>(d, dpitch, sp, spitch, units, rows); break;
    default: copy2d_kernel<uint8_t><<<blocks, 256, 0, s->stream>>>(d, dpitch, sp, spitch, units, rows); break;
    }
    DS_KERNEL_CHECK("copy2d");
    return DS_OK;
}

/* Elements before / from `axis` on. */
static int64_t outer_of(const ds_tensor *t, int axis)
{
    int64_t n = 1;
    for (int i = 0; i < axis; i++)
        n *= t->shape[i];
    return n;
}

static int64_t inner_of(const ds_tensor *t, int axis)
{
    int64_t n = 1;
    for (int i = axis + 1; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

int ds__cuda_concat(ds_backend *b, ds_stream *s, const ds_concat_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    int64_t es = (int64_t)ds_dtype_size(a->y->dtype);
    int64_t outer = outer_of(a->y, a->axis), inner = inner_of(a->y, a->axis) * es;
    int64_t y_pitch = a->y->shape[a->axis] * inner, offset = 0;
    for (int i = 0; i < a->count; i++) {
        const ds_tensor *x = a->inputs[i];
        int64_t width = x->shape[a->axis] * inner;
        DS_TRY(copy2d(ds__cuda_of(b), st, (char *)a->y->data + offset, y_pitch, x->data, width, width,
                      outer, err));
        offset += width;
    }
    return DS_OK;
}

int ds__cuda_slice(ds_backend *b, ds_stream *s, const ds_slice_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    int64_t es = (int64_t)ds_dtype_size(a->x->dtype);
    int64_t outer = outer_of(a->x, a->axis), inner = inner_of(a->x, a->axis) * es;
    int64_t width = a->y->shape[a->axis] * inner;
    return copy2d(ds__cuda_of(b), st, a->y->data, width,
                  (const char *)a->x->data + a->start * inner, a->x->shape[a->axis] * inner, width,
                  outer, err);
}

/* ---- Permute ---- */

namespace {

/* Output dims and, for each, the input stride (in units) of the input dim it takes. */
struct gather_args {
    int nd;
    int64_t osz[DS_MAX_DIMS];
    int64_t istride[DS_MAX_DIMS];
    int64_t total;
};

/* A: the input's innermost dim (contiguous in x); P: the dim that is innermost in y. Tiles of
 * 32 x 32 over (P, A) for every combination of the remaining dims. */
struct transpose_args {
    int64_t sa, sp;       /* sizes of A and P */
    int64_t in_p, out_a;  /* input stride of P, output stride of A */
    int nr;
    int64_t rsz[DS_MAX_DIMS], rin[DS_MAX_DIMS], rout[DS_MAX_DIMS];
    int64_t nrest;
};

} // namespace

template <typename U>
__global__ void gather_kernel(const U *src, U *dst, gather_args p)
{
    for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < p.total;
         o += (int64_t)gridDim.x * blockDim.x) {
        int64_t rem = o, off = 0;
        for (int d = p.nd - 1; d >= 0; d--) {
            int64_t q = rem / p.osz[d];
            off += (rem - q * p.osz[d]) * p.istride[d];
            rem = q;
        }
        dst[o] = src[off];
    }
}

template <typename T>
__global__ void transpose_kernel(const T *src, T *dst, transpose_args p)
{
    __shared__ T tile[32][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    for (int64_t r = blockIdx.z; r < p.nrest; r += gridDim.z) {
        int64_t rem = r, in_base = 0, out_base = 0;
        for (int d = p.nr - 1; d >= 0; d--) {
            int64_t q = rem / p.rsz[d], idx = rem - q * p.rsz[d];
            in_base += idx * p.rin[d];
            out_base += idx * p.rout[d];
            rem = q;
        }
        for (int64_t p0 = (int64_t)blockIdx.y * 32; p0 < p.sp; p0 += (int64_t)gridDim.y * 32)
            for (int64_t a0 = (int64_t)blockIdx.x * 32; a0 < p.sa; a0 += (int64_t)gridDim.x * 32) {
                for (int j = ty; j < 32; j += 8) {
                    int64_t pp = p0 + j, aa = a0 + tx;
                    if (pp < p.sp && aa < p.sa)
                        tile[j][tx] = src[in_base + pp * p.in_p + aa];
                }
                __syncthreads();
                for (int j = ty; j < 32; j += 8) {
                    int64_t aa = a0 + j, pp = p0 + tx;
                    if (aa < p.sa && pp < p.sp)
                        dst[out_base + aa * p.out_a + pp] = tile[tx][j];
                }
                __syncthreads();
            }
    }
}

static unsigned grid_dim(int64_t n, int64_t cap) { return (unsigned)(n < 1 ? 1 : (n < cap ? n : cap)); }

/* dst = src.permute(perm) for a contiguous [shape] tensor of `es`-byte elements. */
static int permute_raw(ds__cuda *c, ds_stream *s, const void *src, void *dst, int64_t es, int nd,
                       const int64_t *shape, const int *perm, ds_error *err)
{
    int64_t total = 1;
    for (int i = 0; i < nd; i++)
        total *= shape[i];
    if (total == 0)
        return DS_OK;

    /* Drop unit dims, then merge output neighbours that are input neighbours too. */
    int keep_index[DS_MAX_DIMS];
    int kept = 0;
    for (int i = 0; i < nd; i++)
        keep_index[i] = shape[i] > 1 ? kept++ : -1;
    int q[DS_MAX_DIMS], nq = 0;
    for (int i = 0; i < nd; i++)
        if (keep_index[perm[i]] >= 0)
            q[nq++] = keep_index[perm[i]];
    int64_t ksz[DS_MAX_DIMS];
    for (int i = 0; i < nd; i++)
        if (keep_index[i] >= 0)
            ksz[keep_index[i]] = shape[i];
    /* Groups of the output order: group g starts at output position start[g]. */
    int first[DS_MAX_DIMS], ng = 0;
    int64_t gsz[DS_MAX_DIMS];
    for (int i = 0; i < nq; i++) {
        if (i > 0 && q[i] == q[i - 1] + 1) {
            gsz[ng - 1] *= ksz[q[i]];
        } else {
            first[ng] = q[i];
            gsz[ng] = ksz[q[i]];
            ng++;
        }
    }
    if (ng <= 1) {
        DS_CUDA_CHECK(cudaMemcpyAsync(dst, src, (size_t)(total * es), cudaMemcpyDeviceToDevice,
                                      s->stream));
        return DS_OK;
    }
    /* Renumber the groups in input order: in_dim[g] = rank of first[g]. */
    int gperm[DS_MAX_DIMS];
    int64_t isz[DS_MAX_DIMS];
    for (int g = 0; g < ng; g++) {
        int rank = 0;
        for (int h = 0; h < ng; h++)
            rank += first[h] < first[g];
        gperm[g] = rank;
        isz[rank] = gsz[g];
    }
    int64_t istride[DS_MAX_DIMS], ostride[DS_MAX_DIMS];
    istride[ng - 1] = 1;
    for (int d = ng - 2; d >= 0; d--)
        istride[d] = istride[d + 1] * isz[d + 1];
    ostride[ng - 1] = 1;
    for (int i = ng - 2; i >= 0; i--)
        ostride[i] = ostride[i + 1] * isz[gperm[i + 1]];

    if (gperm[ng - 1] == ng - 1) {
        /* The innermost run stays innermost: copy it in the widest unit it allows. */
        int64_t run_bytes = isz[ng - 1] * es;
        unsigned u = ds__cuda_alignment((uintptr_t)src, (uintptr_t)dst, (uintptr_t)run_bytes, 0);
        gather_args p;
        memset(&p, 0, sizeof p);
        p.nd = ng;
        for (int i = 0; i < ng; i++) {
            int d = gperm[i];
            p.osz[i] = d == ng - 1 ? run_bytes / u : isz[d];
            p.istride[i] = d == ng - 1 ? 1 : istride[d] * es / u;
        }
        p.total = total * es / u;
        unsigned blocks = ds__cuda_blocks(c, (uint64_t)p.total, 256);
        switch (u) {
        case 16: gather_kernel<uint4><<<blocks, 256, 0, s->stream>>>((const uint4 *)src, (uint4 *)dst, p); break;
        case 8: gather_kernel<uint2><<<blocks, 256, 0, s->stream>>>((const uint2 *)src, (uint2 *)dst, p); break;
        case 4: gather_kernel<uint32_t><<<blocks, 256, 0, s->stream>>>((const uint32_t *)src, (uint32_t *)dst, p); break;
        case 2: gather_kernel<uint16_t><<<blocks, 256, 0, s->stream>>>((const uint16_t *)src, (uint16_t *)dst, p); break;
        default: gather_kernel<uint8_t><<<blocks, 256, 0, s->stream>>>((const uint8_t *)src, (uint8_t *)dst, p); break;
        }
        DS_KERNEL_CHECK("permute gather");
        return DS_OK;
    }

    transpose_args p;
    memset(&p, 0, sizeof p);
    int dim_a = ng - 1, dim_p = gperm[ng - 1];
    int64_t ostr_in[DS_MAX_DIMS];
    for (int i = 0; i < ng; i++)
        ostr_in[gperm[i]] = ostride[i];
    p.sa = isz[dim_a];
    p.sp = isz[dim_p];
    p.in_p = istride[dim_p];
    p.out_a = ostr_in[dim_a];
    p.nrest = 1;
    for (int d = 0; d < ng; d++) {
        if (d == dim_a || d == dim_p)
            continue;
        p.rsz[p.nr] = isz[d];
        p.rin[p.nr] = istride[d];
        p.rout[p.nr] = ostr_in[d];
        p.nrest *= isz[d];
        p.nr++;
    }
    dim3 grid(grid_dim((p.sa + 31) / 32, 65535), grid_dim((p.sp + 31) / 32, 65535),
              grid_dim(p.nrest, 65535));
    dim3 block(32, 8);
    switch (es) {
    case 8: transpose_kernel<uint64_t><<<grid, block, 0, s->stream>>>((const uint64_t *)src, (uint64_t *)dst, p); break;
    case 4: transpose_kernel<uint32_t><<<grid, block, 0, s->stream>>>((const uint32_t *)src, (uint32_t *)dst, p); break;
    case 2: transpose_kernel<uint16_t><<<grid, block, 0, s->stream>>>((const uint16_t *)src, (uint16_t *)dst, p); break;
    default: transpose_kernel<uint8_t><<<grid, block, 0, s->stream>>>((const uint8_t *)src, (uint8_t *)dst, p); break;
    }
    DS_KERNEL_CHECK("permute transpose");
    return DS_OK;
}

int ds__cuda_permute(ds_backend *b, ds_stream *s, const ds_permute_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    return permute_raw(ds__cuda_of(b), st, a->x->data, a->y->data,
                       (int64_t)ds_dtype_size(a->x->dtype), a->x->ndim, a->x->shape, a->perm, err);
}

int ds__cuda_patchify(ds_backend *b, ds_stream *s, const ds_patchify_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    const int64_t *xs = a->x->shape;
    int64_t p = a->patch;
    /* [B, C, H/p, p, W/p, p] -> [B, H/p, W/p, C, p, p] */
    int64_t shape[6] = {xs[0], xs[1], xs[2] / p, p, xs[3] / p, p};
    static const int perm[6] = {0, 2, 4, 1, 3, 5};
    return permute_raw(ds__cuda_of(b), st, a->x->data, a->y->data,
                       (int64_t)ds_dtype_size(a->x->dtype), 6, shape, perm, err);
}

int ds__cuda_unpatchify(ds_backend *b, ds_stream *s, const ds_patchify_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    const int64_t *xs = a->x->shape;
    int64_t p = a->patch;
    /* [B, H/p, W/p, C, p, p] -> [B, C, H/p, p, W/p, p] */
    int64_t shape[6] = {xs[0], xs[2] / p, xs[3] / p, xs[1], p, p};
    static const int perm[6] = {0, 3, 1, 4, 2, 5};
    return permute_raw(ds__cuda_of(b), st, a->y->data, a->x->data,
                       (int64_t)ds_dtype_size(a->x->dtype), 6, shape, perm, err);
}

/* ---- Pad ---- */

namespace {

struct pad_args {
    int nd;
    int64_t ysz[DS_MAX_DIMS], xsz[DS_MAX_DIMS], before[DS_MAX_DIMS];
    int64_t total;
    uint64_t value; /* the element's bytes, little-endian */
};

} // namespace

template <typename T>
__global__ void pad_kernel(const T *x, T *y, pad_args p)
{
    T value;
    memcpy(&value, &p.value, sizeof value);
    for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < p.total;
         o += (int64_t)gridDim.x * blockDim.x) {
        int64_t rem = o, off = 0, stride = 1;
        bool inside = true;
        for (int d = p.nd - 1; d >= 0; d--) {
            int64_t q = rem / p.ysz[d];
            int64_t xi = rem - q * p.ysz[d] - p.before[d];
            inside = inside && xi >= 0 && xi < p.xsz[d];
            off += xi * stride;
            stride *= p.xsz[d];
            rem = q;
        }
        y[o] = inside ? x[off] : value;
    }
}

/* The pad value stored as `dtype`, as the CPU backend does: integers truncated toward zero
 * and saturated, bool nonzero, floats rounded to nearest even. */
static uint64_t pad_pattern(ds_dtype dtype, float value)
{
    unsigned char out[8] = {0};
    double v = value, lo = 0, hi = 0;
    switch (dtype) {
    case DS_I64: lo = -0x1p63; hi = 0x1p63 - 1024; break;
    case DS_I32: lo = INT32_MIN; hi = INT32_MAX; break;
    case DS_I16: lo = INT16_MIN; hi = INT16_MAX; break;
    case DS_I8: lo = INT8_MIN; hi = INT8_MAX; break;
    case DS_U8: lo = 0; hi = UINT8_MAX; break;
    case DS_BOOL: out[0] = v != 0; break;
    default: ds_store_f64(out, dtype, 0, v); break;
    }
    if (hi > lo) {
        v = isnan(v) ? 0 : trunc(v);
        ds_store_f64(out, dtype, 0, v < lo ? lo : v > hi ? hi : v);
    }
    uint64_t bits;
    memcpy(&bits, out, sizeof bits);
    return bits;
}

int ds__cuda_pad(ds_backend *b, ds_stream *s, const ds_pad_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    pad_args p;
    memset(&p, 0, sizeof p);
    p.nd = a->x->ndim;
    for (int i = 0; i < p.nd; i++) {
        p.ysz[i] = a->y->shape[i];
        p.xsz[i] = a->x->shape[i];
        p.before[i] = a->pad[2 * i];
    }
    p.total = (int64_t)ds_tensor_numel(a->y);
    p.value = pad_pattern(a->y->dtype, a->value);
    if (p.total == 0)
        return DS_OK;
    unsigned blocks = ds__cuda_blocks(ds__cuda_of(b), (uint64_t)p.total, 256);
    switch (ds_dtype_size(a->y->dtype)) {
    case 8: pad_kernel<uint64_t><<<blocks, 256, 0, st->stream>>>((const uint64_t *)a->x->data, (uint64_t *)a->y->data, p); break;
    case 4: pad_kernel<uint32_t><<<blocks, 256, 0, st->stream>>>((const uint32_t *)a->x->data, (uint32_t *)a->y->data, p); break;
    case 2: pad_kernel<uint16_t><<<blocks, 256, 0, st->stream>>>((const uint16_t *)a->x->data, (uint16_t *)a->y->data, p); break;
    default: pad_kernel<uint8_t><<<blocks, 256, 0, st->stream>>>((const uint8_t *)a->x->data, (uint8_t *)a->y->data, p); break;
    }
    DS_KERNEL_CHECK("pad");
    return DS_OK;
}

/* ---- Nearest upsampling x2: one thread per input element writes its 2 x 2 block ---- */

template <typename T>
__global__ void upsample_kernel(const T *x, T *y, int64_t n, int64_t w)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        /* Input row r (over all leading dims and H) becomes output rows 2r and 2r + 1. */
        int64_t r = i / w, col = i - r * w;
        T v = x[i];
        T *o = y + (2 * r) * (2 * w) + 2 * col;
        o[0] = v;
        o[1] = v;
        o[2 * w] = v;
        o[2 * w + 1] = v;
    }
}

int ds__cuda_upsample_nearest2x(ds_backend *b, ds_stream *s, const ds_upsample_args *a,
                                ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    int64_t n = (int64_t)ds_tensor_numel(a->x), w = a->x->shape[a->x->ndim - 1];
    if (n == 0)
        return DS_OK;
    unsigned blocks = ds__cuda_blocks(ds__cuda_of(b), (uint64_t)n, 256);
    switch (ds_dtype_size(a->x->dtype)) {
    case 8: upsample_kernel<uint64_t><<<blocks, 256, 0, st->stream>>>((const uint64_t *)a->x->data, (uint64_t *)a->y->data, n, w); break;
    case 4: upsample_kernel<uint32_t><<<blocks, 256, 0, st->stream>>>((const uint32_t *)a->x->data, (uint32_t *)a->y->data, n, w); break;
    case 2: upsample_kernel<uint16_t><<<blocks, 256, 0, st->stream>>>((const uint16_t *)a->x->data, (uint16_t *)a->y->data, n, w); break;
    default: upsample_kernel<uint8_t><<<blocks, 256, 0, st->stream>>>((const uint8_t *)a->x->data, (uint8_t *)a->y->data, n, w); break;
    }
    DS_KERNEL_CHECK("upsample_nearest2x");
    return DS_OK;
}

/* ---- Embedding ---- */

namespace {

struct embedding_args {
    const void *ids; int ids64;
    const void *table; int t_dt;
    void *y; int y_dt;
    int64_t vocab, width, n; /* n = ids * width */
    unsigned long long *bad; /* smallest flat position of an id outside [0, vocab) */
};

} // namespace

template <int V>
__global__ void embedding_kernel(embedding_args p)
{
    for (int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * V; i < p.n;
         i += (int64_t)gridDim.x * blockDim.x * V) {
        int64_t r = i / p.width, col = i - r * p.width;
        int64_t id = p.ids64 ? static_cast<const int64_t *>(p.ids)[r]
                             : (int64_t) static_cast<const int32_t *>(p.ids)[r];
        float v[V];
        if (id < 0 || id >= p.vocab) {
            if (col == 0)
                atomicMin(p.bad, (unsigned long long)r);
#pragma unroll
            for (int j = 0; j < V; j++)
                v[j] = 0.0f;
        } else {
            dsk::loadv<V>(p.table, p.t_dt, id * p.width + col, v);
        }
        dsk::storev<V>(p.y, p.y_dt, i, v);
    }
}

static int vec8_aligned(const void *p, ds_dtype dt)
{
    size_t need = 8 * ds_dtype_size(dt);
    return ((uintptr_t)p % (need > 16 ? 16 : need)) == 0;
}

int ds__cuda_embedding(ds_backend *b, ds_stream *s, const ds_embedding_args *a, ds_error *err)
{
    ds__cuda *c = ds__cuda_of(b);
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    std::lock_guard<std::mutex> guard(st->lock);
    embedding_args p;
    memset(&p, 0, sizeof p);
    p.ids = a->ids->data;
    p.ids64 = a->ids->dtype == DS_I64;
    p.table = a->table->data;
    p.t_dt = a->table->dtype;
    p.y = a->y->data;
    p.y_dt = a->y->dtype;
    p.vocab = a->table->shape[0];
    p.width = a->table->shape[1];
    int64_t count = (int64_t)ds_tensor_numel(a->ids);
    p.n = count * p.width;
    if (p.n == 0)
        return DS_OK;
    void *scratch;
    DS_TRY(ds__cuda_scratch(c, st, 256, &scratch, err));
    p.bad = (unsigned long long *)scratch;
    DS_CUDA_CHECK(cudaMemsetAsync(p.bad, 0xFF, sizeof *p.bad, st->stream));
    int vec = p.width % 8 == 0 && vec8_aligned(p.table, a->table->dtype) &&
              vec8_aligned(p.y, a->y->dtype);
    unsigned blocks = ds__cuda_blocks(c, (uint64_t)(vec ? p.n / 8 : p.n), 256);
    if (vec)
        embedding_kernel<8><<<blocks, 256, 0, st->stream>>>(p);
    else
        embedding_kernel<1><<<blocks, 256, 0, st->stream>>>(p);
    DS_KERNEL_CHECK("embedding");

    /* The one op that waits: a bad id must come back as INVALID_ARGUMENT from this call. */
    unsigned long long *flag = (unsigned long long *)st->pinned;
    DS_CUDA_CHECK(cudaMemcpyAsync(flag, p.bad, sizeof *flag, cudaMemcpyDeviceToHost, st->stream));
    DS_CUDA_CHECK(cudaStreamSynchronize(st->stream));
    unsigned long long pos = *flag;
    if (pos == ~0ull)
        return DS_OK;
    size_t id_size = ds_dtype_size(a->ids->dtype);
    int64_t *id_value = (int64_t *)((char *)st->pinned + 8);
    *id_value = 0;
    DS_CUDA_CHECK(cudaMemcpyAsync(id_value, (const char *)a->ids->data + pos * id_size, id_size,
                                  cudaMemcpyDeviceToHost, st->stream));
    DS_CUDA_CHECK(cudaStreamSynchronize(st->stream));
    int64_t id = *id_value;
    if (id_size == 4) {
        int32_t narrow;
        memcpy(&narrow, id_value, sizeof narrow);
        id = narrow;
    }
    /* The position as an index into ids' shape. */
    char where[160];
    size_t used = 0;
    unsigned long long rem = pos;
    int64_t coord[DS_MAX_DIMS];
    for (int d = a->ids->ndim - 1; d >= 0; d--) {
        coord[d] = (int64_t)(rem % (unsigned long long)a->ids->shape[d]);
        rem /= (unsigned long long)a->ids->shape[d];
    }
    where[0] = '\0';
    for (int d = 0; d < a->ids->ndim && used < sizeof where; d++)
        used += (size_t)snprintf(where + used, sizeof where - used, "%s%" PRId64, d ? ", " : "",
                                 coord[d]);
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                        "embedding: ids[%s] is %" PRId64 ", outside the table's %" PRId64
                        " rows (valid ids are 0..%" PRId64 ")",
                        where, id, p.vocab, p.vocab - 1);
}

/* ---- Convolutions ---- */

namespace {

struct im2col_args {
    const void *x; int x_dt;          /* one batch item: [Cin, T, H, W] */
    const void *cache; int c_dt;      /* [Cin, TC, H, W] or NULL */
    void *col; int col_dt;            /* [K, pc] */
    int64_t cin, t, h, w, tc;
    int64_t kt, kh, kw;
    int64_t ot, oh, ow;
    int64_t st, sh, sw;
    int64_t front;                    /* virtual frames before x: zeros, then the cache's tc */
    int64_t pad_top, pad_left;
    int64_t p0, pc, k;
};

} // namespace

__global__ void im2col_kernel(im2col_args p)
{
    int64_t total = p.k * p.pc;
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        int64_t kidx = idx / p.pc, pp = idx - kidx * p.pc, pos = p.p0 + pp;
        int64_t ow_i = pos % p.ow, rest = pos / p.ow;
        int64_t oh_i = rest % p.oh, ot_i = rest / p.oh;
        int64_t kw_i = kidx % p.kw, r2 = kidx / p.kw;
        int64_t kh_i = r2 % p.kh, r3 = r2 / p.kh;
        int64_t kt_i = r3 % p.kt, ci = r3 / p.kt;
        int64_t tv = ot_i * p.st + kt_i;
        int64_t ih = oh_i * p.sh - p.pad_top + kh_i, iw = ow_i * p.sw - p.pad_left + kw_i;
        float v = 0.0f;
        if (ih >= 0 && ih < p.h && iw >= 0 && iw < p.w) {
            if (tv >= p.front)
                v = dsk::load(p.x, p.x_dt, ((ci * p.t + (tv - p.front)) * p.h + ih) * p.w + iw);
            else if (tv >= p.front - p.tc)
                v = dsk::load(p.cache, p.c_dt,
                              ((ci * p.tc + (tv - (p.front - p.tc))) * p.h + ih) * p.w + iw);
        }
        dsk::store(p.col, p.col_dt, idx, v);
    }
}

namespace {

/* One convolution in the shared 3-D form (2-D: T = KT = 1, front 0). */
struct conv_problem {
    const ds_tensor *x, *weight, *bias, *cache, *y;
    int64_t batch, cin, cout, t, h, w, tc;
    int64_t kt, kh, kw, ot, oh, ow, st, sh, sw;
    int64_t front, pad_top, pad_left;
};

} // namespace

/* Scratch for one chunk of im2col: bounded so large images do not need gigabytes. */
#define CONV_COL_BYTES ((size_t)256 << 20)

static int run_conv(ds_backend *b, ds_stream *s, const conv_problem *cp, const char *name,
                    ds_error *err)
{
    ds__cuda *c = ds__cuda_of(b);
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    std::lock_guard<std::mutex> guard(st->lock);
    int64_t positions = cp->ot * cp->oh * cp->ow;
    int64_t k = cp->cin * cp->kt * cp->kh * cp->kw;
    if (cp->batch == 0 || cp->cout == 0 || positions == 0)
        return DS_OK;
    /* An input (or cache) whose dtype differs from the weight's would lose precision rounded
     * to the weight's dtype: then everything computes in f32, the weight converted once. */
    ds_dtype cd = ds__cuda_conv_compute_dtype(cp->x, cp->cache, cp->weight), yd = cp->y->dtype;
    size_t es = ds_dtype_size(cd), ys = ds_dtype_size(yd);
    if (cp->bias)
        DS_TRY(ds__cuda_fill_channels(c, st, cp->bias->data, cp->bias->dtype, cp->y->data, yd,
                                      cp->batch, cp->cout, positions, err));
    else
        DS_TRY(ds__cuda_fill32(c, st, cp->y->data, 0, ds_tensor_nbytes(cp->y), err));
    if (k == 0)
        return DS_OK;

    int direct = cp->kt == 1 && cp->kh == 1 && cp->kw == 1 && cp->st == 1 && cp->sh == 1 &&
                 cp->sw == 1 && cp->pad_top == 0 && cp->pad_left == 0 && cp->front == 0 &&
                 cp->x->dtype == cd && cp->oh == cp->h && cp->ow == cp->w;
    int64_t chunk = positions;
    size_t w_bytes = cp->weight->dtype == cd ? 0 : ds__cuda_round_up((size_t)(cp->cout * k) * es);
    size_t col_bytes = 0;
    if (!direct) {
        int64_t fit = (int64_t)(CONV_COL_BYTES / ((size_t)k * es));
        if (fit < 1)
            fit = 1;
        if (fit < chunk)
            chunk = fit >= 8 ? fit - fit % 8 : fit;
        col_bytes = (size_t)(k * chunk) * es;
    }
    void *col = NULL;
    const void *weight = cp->weight->data;
    if (w_bytes + col_bytes) {
        void *p;
        DS_TRY(ds__cuda_scratch(c, st, w_bytes + col_bytes, &p, err));
        col = (char *)p + w_bytes;
        if (w_bytes) {
            DS_TRY(ds__cuda_convert(c, st, cp->weight->data, cp->weight->dtype, p, cd,
                                    (uint64_t)(cp->cout * k), err));
            weight = p;
        }
    }
    size_t x_item = (size_t)(cp->cin * cp->t * cp->h * cp->w) * ds_dtype_size(cp->x->dtype);
    size_t cache_item = cp->cache ? (size_t)(cp->cin * cp->tc * cp->h * cp->w) *
                                        ds_dtype_size(cp->cache->dtype)
                                  : 0;
    for (int64_t bi = 0; bi < cp->batch; bi++) {
        const char *xb = (const char *)cp->x->data + bi * x_item;
        char *yb = (char *)cp->y->data + (size_t)(bi * cp->cout * positions) * ys;
        for (int64_t p0 = 0; p0 < positions; p0 += chunk) {
            int64_t pc = positions - p0 < chunk ? positions - p0 : chunk;
            ds__gemm g;
            memset(&g, 0, sizeof g);
            g.m = pc;
            g.n = cp->cout;
            g.k = k;
            g.batch = 1;
            if (direct) {
                g.a = xb + (size_t)p0 * es;
                g.lda = positions;
            } else {
                im2col_args ip;
                memset(&ip, 0, sizeof ip);
                ip.x = xb;
                ip.x_dt = cp->x->dtype;
                ip.cache = cp->cache ? (const char *)cp->cache->data + bi * cache_item : NULL;
                ip.c_dt = cp->cache ? cp->cache->dtype : cp->x->dtype;
                ip.col = col;
                ip.col_dt = cd;
                ip.cin = cp->cin;
                ip.t = cp->t;
                ip.h = cp->h;
                ip.w = cp->w;
                ip.tc = cp->tc;
                ip.kt = cp->kt;
                ip.kh = cp->kh;
                ip.kw = cp->kw;
                ip.ot = cp->ot;
                ip.oh = cp->oh;
                ip.ow = cp->ow;
                ip.st = cp->st;
                ip.sh = cp->sh;
                ip.sw = cp->sw;
                ip.front = cp->front;
                ip.pad_top = cp->pad_top;
                ip.pad_left = cp->pad_left;
                ip.p0 = p0;
                ip.pc = pc;
                ip.k = k;
                im2col_kernel<<<ds__cuda_blocks(c, (uint64_t)(k * pc), 256), 256, 0, st->stream>>>(ip);
                DS_KERNEL_CHECK("im2col");
                g.a = col;
                g.lda = pc;
            }
            g.a_dtype = cd;
            g.b = weight;
            g.b_dtype = cd;
            g.ldb = k;
            g.d = yb + (size_t)p0 * ys;
            g.d_dtype = yd;
            g.ldd = positions;
            g.alpha = 1.0f;
            g.beta = 1.0f;
            int rc = ds__cuda_gemm_any(c, st, &g, err);
            if (rc != DS_OK)
                return ds_error_prefix(err, "%s: ", name);
        }
    }
    return DS_OK;
}

int ds__cuda_conv2d(ds_backend *b, ds_stream *s, const ds_conv2d_args *a, ds_error *err)
{
    const int64_t *xs = a->x->shape, *ws = a->weight->shape, *ys = a->y->shape;
    conv_problem p;
    memset(&p, 0, sizeof p);
    p.x = a->x;
    p.weight = a->weight;
    p.bias = a->bias;
    p.y = a->y;
    p.batch = xs[0];
    p.cin = xs[1];
    p.cout = ws[0];
    p.t = 1;
    p.h = xs[2];
    p.w = xs[3];
    p.kt = 1;
    p.kh = ws[2];
    p.kw = ws[3];
    p.ot = 1;
    p.oh = ys[2];
    p.ow = ys[3];
    p.st = 1;
    p.sh = a->stride[0];
    p.sw = a->stride[1];
    p.pad_top = a->pad[0];
    p.pad_left = a->pad[2];
    return run_conv(b, s, &p, "conv2d", err);
}

int ds__cuda_conv3d_causal(ds_backend *b, ds_stream *s, const ds_conv3d_args *a, ds_error *err)
{
    const int64_t *xs = a->x->shape, *ws = a->weight->shape, *ys = a->y->shape;
    conv_problem p;
    memset(&p, 0, sizeof p);
    p.x = a->x;
    p.weight = a->weight;
    p.bias = a->bias;
    p.cache = a->cache;
    p.y = a->y;
    p.batch = xs[0];
    p.cin = xs[1];
    p.cout = ws[0];
    p.t = xs[2];
    p.h = xs[3];
    p.w = xs[4];
    p.tc = a->cache ? a->cache->shape[2] : 0;
    p.kt = ws[2];
    p.kh = ws[3];
    p.kw = ws[4];
    p.ot = ys[2];
    p.oh = ys[3];
    p.ow = ys[4];
    p.st = a->stride[0];
    p.sh = a->stride[1];
    p.sw = a->stride[2];
    p.front = ws[2] - 1;
    p.pad_top = a->pad_h;
    p.pad_left = a->pad_w;
    return run_conv(b, s, &p, "conv3d_causal", err);
}
