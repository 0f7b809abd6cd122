/* Attention on the GPU in two forms (cuda_supports.c picks one for the arguments, and says
 * which fall back to the CPU: mixed q/k/v dtypes).
 *
 * The flash kernel: bf16 and f16, head dims 64 and 128.
 *
 * One CTA of 4 warps takes 64 queries of one (batch, head); each warp owns 16 query rows and
 * keeps its Q fragments, its output accumulator and the running max / sum of its rows in
 * registers. Key/value tiles of 64 rows are staged in shared memory by cp.async, two stages
 * deep, rows padded by 16 bytes so ldmatrix reads are free of bank conflicts. Both products
 * run on tensor cores (mma.sync m16n8k16, f32 accumulation): S = Q K^T takes K fragments from
 * ldmatrix, and the probabilities P, converted to 16-bit in registers, are directly the A
 * operand of O += P V (the accumulator layout of m16n8 equals the A layout of m16k16), with V
 * fragments from ldmatrix.trans. The softmax is the online one in f32, in base 2 with
 * scale * log2(e) folded into the scores; a row that sees no key keeps a zero sum and is
 * written as zeros. Keys past Sk are zero-filled in shared memory (so 0 * garbage never makes
 * a NaN) and masked to -inf together with causal and key-mask exclusions; tiles that need no
 * masking skip that work (a key mask is first reduced to one flag per key tile, so an all-ones
 * mask costs nothing per score), and causal CTAs stop at their last visible tile.
 *
 * The matmul form: every other head dim (the VAE's single 384-wide head) and f32. Per (batch,
 * head) and per pass of query rows (as many as keep the pass's scores within a bounded
 * scratch), cuBLASLt computes the f32 scores Q K^T, one kernel turns each row into
 * probabilities (scale, causal and key mask, max subtracted; stored in the inputs' dtype, as
 * the flash kernel's P), and a second GEMM writes P V into out. Nothing of size Sq x Sk is
 * ever allocated. */
#include "cuda_internal.cuh"
#include "cuda_device.cuh"

#include <type_traits>

#define ATT_BM 64      /* queries per CTA */
#define ATT_BN 64      /* keys per tile */
#define ATT_WARPS 4
#define ATT_PAD 8      /* elements of padding per shared-memory row */

namespace {

struct att_args {
    const void *q, *k, *v;
    void *o;
    const uint8_t *mask; /* [B, Sk] or NULL */
    const uint8_t *tile_masked; /* [B, key tiles]: nonzero where the tile masks some key */
    int64_t key_tiles;
    int64_t sq, sk;
    int hq, group;       /* group = Hq / Hkv */
    int64_t q_row, kv_row; /* elements between consecutive positions */
    float scale_log2;
    int causal;
    int64_t causal_offset; /* Sk - Sq */
};

template <int D>
constexpr int att_smem_bytes()
{
    return 2 /* K, V */ * 2 /* stages */ * ATT_BN * (D + ATT_PAD) * 2;
}

} // namespace

__device__ __forceinline__ uint32_t smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, int bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t &r0, uint32_t &r1, uint32_t &r2,
                                            uint32_t &r3)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t &r0, uint32_t &r1,
                                                  uint32_t &r2, uint32_t &r3)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

/* d += a b for one m16n8k16 tile; T picks bf16 or f16 inputs. */
template <typename T>
__device__ __forceinline__ void mma16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                     "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                     "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

/* Two f32 values as a 16-bit pair, the first in the low half (the lower column). */
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi)
{
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
    } else {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
    }
}

template <int D, typename T>
__global__ void __launch_bounds__(ATT_WARPS * 32) flash_attention_kernel(att_args p)
{
    constexpr int ROW = D + ATT_PAD;             /* shared-memory row, in elements */
    constexpr int TILE = ATT_BN * ROW;           /* one K or V stage */
    constexpr int CHUNKS = ATT_BN * D / 8;       /* 16-byte pieces per tile */
    extern __shared__ __align__(16) unsigned char att_smem[];
    T *ks = reinterpret_cast<T *>(att_smem);     /* [2][ATT_BN][ROW] */
    T *vs = ks + 2 * TILE;                       /* [2][ATT_BN][ROW] */

    const int tid = threadIdx.x, warp = tid / 32, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const int64_t batch = blockIdx.z;
    const int h = blockIdx.y, hk = h / p.group;
    const int64_t m0 = (int64_t)blockIdx.x * ATT_BM;

    const T *qb = static_cast<const T *>(p.q) + (batch * p.sq * p.hq + h) * (int64_t)D;
    const T *kb = static_cast<const T *>(p.k) + (batch * p.sk * (p.hq / p.group) + hk) * (int64_t)D;
    const T *vb = static_cast<const T *>(p.v) + (batch * p.sk * (p.hq / p.group) + hk) * (int64_t)D;
    T *ob = static_cast<T *>(p.o) + (batch * p.sq * p.hq + h) * (int64_t)D;
    const uint8_t *maskb = p.mask ? p.mask + batch * p.sk : NULL;

    /* This thread's rows: r0 = g, r1 = g + 8 of the warp's 16. */
    const int64_t row0 = m0 + warp * 16 + g, row1 = row0 + 8;

    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        int c0 = kk * 16 + 2 * t, c1 = c0 + 8;
        qf[kk][0] = row0 < p.sq ? *reinterpret_cast<const uint32_t *>(qb + row0 * p.q_row + c0) : 0u;
        qf[kk][1] = row1 < p.sq ? *reinterpret_cast<const uint32_t *>(qb + row1 * p.q_row + c0) : 0u;
        qf[kk][2] = row0 < p.sq ? *reinterpret_cast<const uint32_t *>(qb + row0 * p.q_row + c1) : 0u;
        qf[kk][3] = row1 < p.sq ? *reinterpret_cast<const uint32_t *>(qb + row1 * p.q_row + c1) : 0u;
    }

    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++)
        o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};

    /* Tiles this CTA needs: all of them, or up to the last key its last row may see. */
    int64_t tiles = (p.sk + ATT_BN - 1) / ATT_BN;
    if (p.causal) {
        int64_t last_row = m0 + ATT_BM - 1 < p.sq - 1 ? m0 + ATT_BM - 1 : p.sq - 1;
        int64_t last_key = last_row + p.causal_offset;
        int64_t limit = last_key < 0 ? 0 : last_key / ATT_BN + 1;
        if (limit < tiles)
            tiles = limit;
    }

    auto load_tile = [&](int64_t tile, int stage) {
        const int64_t key0 = tile * ATT_BN;
        for (int c = tid; c < CHUNKS; c += ATT_WARPS * 32) {
            int r = c / (D / 8), col = (c % (D / 8)) * 8;
            int64_t key = key0 + r;
            int ok = key < p.sk;
            int64_t src = ok ? key * p.kv_row + col : 0;
            cp_async16(smem_addr(ks + stage * TILE + r * ROW + col), kb + src, ok ? 16 : 0);
            cp_async16(smem_addr(vs + stage * TILE + r * ROW + col), vb + src, ok ? 16 : 0);
        }
    };

    if (tiles > 0)
        load_tile(0, 0);
    cp_async_commit();

    for (int64_t tile = 0; tile < tiles; tile++) {
        const int stage = (int)(tile & 1);
        if (tile + 1 < tiles) {
            load_tile(tile + 1, stage ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        const T *kt = ks + stage * TILE;
        const T *vt = vs + stage * TILE;
        const int64_t key0 = tile * ATT_BN;

        /* S = Q K^T for this warp's 16 rows and the tile's 64 keys: 8 n-tiles of 8 keys. */
        float s[ATT_BN / 8][4];
#pragma unroll
        for (int i = 0; i < ATT_BN / 8; i++)
            s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
            for (int np = 0; np < ATT_BN / 16; np++) {
                int mi = lane >> 3, r = lane & 7;
                int key_row = np * 16 + r + (mi >> 1) * 8;
                int dcol = kk * 16 + (mi & 1) * 8;
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4(smem_addr(kt + key_row * ROW + dcol), b0, b1, b2, b3);
                mma16816<T>(s[2 * np], qf[kk], b0, b1);
                mma16816<T>(s[2 * np + 1], qf[kk], b2, b3);
            }
        }

        const int need_mask = key0 + ATT_BN > p.sk ||
                              (maskb != NULL && p.tile_masked[batch * p.key_tiles + tile]) ||
                              (p.causal && key0 + ATT_BN - 1 > m0 + p.causal_offset);
#pragma unroll
        for (int nt = 0; nt < ATT_BN / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float v = s[nt][e] * p.scale_log2;
                if (need_mask) {
                    int64_t key = key0 + nt * 8 + 2 * t + (e & 1);
                    int64_t row = e < 2 ? row0 : row1;
                    bool visible = key < p.sk && (!p.causal || key <= row + p.causal_offset) &&
                                   (maskb == NULL || maskb[key] != 0);
                    if (!visible)
                        v = -INFINITY;
                }
                s[nt][e] = v;
            }
        }

        /* Online softmax per row; a row's 4 owners (one quad) agree on its max. */
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float mx = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < ATT_BN / 8; nt++)
                mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            float m_new = fmaxf(mrow[r], mx);
            float m_use = m_new == -INFINITY ? 0.0f : m_new; /* nothing seen yet: all p are 0 */
            float corr = exp2f(mrow[r] - m_use);
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < ATT_BN / 8; nt++) {
                s[nt][2 * r] = exp2f(s[nt][2 * r] - m_use);
                s[nt][2 * r + 1] = exp2f(s[nt][2 * r + 1] - m_use);
                sum += s[nt][2 * r] + s[nt][2 * r + 1];
            }
            lrow[r] = lrow[r] * corr + sum;
            mrow[r] = m_new;
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++) {
                o[dt][2 * r] *= corr;
                o[dt][2 * r + 1] *= corr;
            }
        }

        /* O += P V: P's accumulator layout is the A layout, 16 keys per k-step. */
#pragma unroll
        for (int kk = 0; kk < ATT_BN / 16; kk++) {
            uint32_t a[4];
            a[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
            a[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
            a[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            a[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                int mi = lane >> 3, r = lane & 7;
                int key_row = kk * 16 + r + (mi & 1) * 8;
                int dcol = dp * 16 + (mi >> 1) * 8;
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4_trans(smem_addr(vt + key_row * ROW + dcol), b0, b1, b2, b3);
                mma16816<T>(o[2 * dp], a, b0, b1);
                mma16816<T>(o[2 * dp + 1], a, b2, b3);
            }
        }
        /* The next iteration's copy overwrites this stage's buffers. */
        __syncthreads();
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        float l = lrow[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        int64_t row = r ? row1 : row0;
        if (row < p.sq) {
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++) {
                uint32_t v = pack2<T>(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
                *reinterpret_cast<uint32_t *>(ob + row * p.q_row + dt * 8 + 2 * t) = v;
            }
        }
    }
}

/* tile_masked[b, t] = whether key tile t of batch item b masks any key: a mask that is all
 * ones (the DiT's whenever no prompt is padded) then costs one flag per tile instead of a byte
 * load per score. One warp per (b, t). */
__global__ void mask_tiles_kernel(const uint8_t *mask, int64_t sk, int64_t tiles, int64_t total,
                                  uint8_t *tile_masked)
{
    const int lane = threadIdx.x & 31;
    for (int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; w < total;
         w += (int64_t)gridDim.x * blockDim.x / 32) {
        int64_t b = w / tiles, key0 = (w - b * tiles) * ATT_BN;
        int masked = 0;
        for (int64_t j = key0 + lane; j < key0 + ATT_BN && j < sk; j += 32)
            masked |= mask[b * sk + j] == 0;
        masked = __any_sync(0xffffffffu, masked);
        if (lane == 0)
            tile_masked[w] = (uint8_t)masked;
    }
}

int ds__cuda_attention_init(ds__cuda *c, ds_error *err)
{
    (void)c;
    DS_CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<64, __nv_bfloat16>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       att_smem_bytes<64>()));
    DS_CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<64, __half>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       att_smem_bytes<64>()));
    DS_CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<128, __nv_bfloat16>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       att_smem_bytes<128>()));
    DS_CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<128, __half>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       att_smem_bytes<128>()));
    return DS_OK;
}

/* ---- The matmul form ---- */

namespace {

struct probs_args {
    const float *s;       /* [rows, sk] scores, unscaled */
    void *p;              /* [rows, sk] probabilities, p_dt */
    int p_dt;
    const uint8_t *mask;  /* [sk] of this batch item, or NULL */
    int64_t sk;
    int64_t row0;         /* query index of row 0 */
    float scale_log2;
    int causal;
    int64_t causal_offset;
};

} // namespace

__device__ __forceinline__ float block_reduce(float v, bool is_max, float *shared)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = is_max ? dsk::warp_max(v) : dsk::warp_sum(v);
    __syncthreads(); /* shared may still hold the previous reduction's partials */
    if (lane == 0)
        shared[warp] = v;
    __syncthreads();
    float r = is_max ? -INFINITY : 0.0f;
    for (int w = 0; w < warps; w++)
        r = is_max ? fmaxf(r, shared[w]) : r + shared[w];
    return r;
}

/* One block per query row: p = exp2(s * scale_log2 - max) / sum over the visible keys, 0 for
 * the others, and all zeros when no key is visible (the flash kernel's rule). */
__global__ void attention_probs_kernel(probs_args a)
{
    __shared__ float partial[32];
    const int64_t row = blockIdx.x;
    const float *s = a.s + row * a.sk;
    const int64_t q = a.row0 + row;
    int64_t visible_end = a.sk;
    if (a.causal) {
        int64_t last = q + a.causal_offset; /* last visible key */
        visible_end = last < 0 ? 0 : (last + 1 < a.sk ? last + 1 : a.sk);
    }
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < visible_end; j += blockDim.x)
        if (!a.mask || a.mask[j])
            mx = fmaxf(mx, s[j] * a.scale_log2);
    mx = block_reduce(mx, true, partial);
    float sum = 0.0f;
    if (mx != -INFINITY)
        for (int64_t j = threadIdx.x; j < visible_end; j += blockDim.x)
            if (!a.mask || a.mask[j])
                sum += exp2f(s[j] * a.scale_log2 - mx);
    sum = block_reduce(sum, false, partial);
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int64_t j = threadIdx.x; j < a.sk; j += blockDim.x) {
        bool on = j < visible_end && (!a.mask || a.mask[j]) && sum > 0.0f;
        dsk::store(a.p, a.p_dt, row * a.sk + j, on ? exp2f(s[j] * a.scale_log2 - mx) * inv : 0.0f);
    }
}

static int attention_matmul(ds__cuda *c, ds_stream *st, const ds_attention_args *a, ds_error *err)
{
    int64_t batch = a->q->shape[0], sq = a->q->shape[1], hq = a->q->shape[2], d = a->q->shape[3];
    int64_t sk = a->k->shape[1], hkv = a->k->shape[2], group = hq / hkv;
    ds_dtype dt = a->q->dtype, od = a->out->dtype;
    size_t es = ds_dtype_size(dt), os = ds_dtype_size(od);
    if (sk == 0) /* no key at all: every row sees none */
        return ds__cuda_fill32(c, st, a->out->data, 0, ds_tensor_nbytes(a->out), err);
    int64_t rows = ds__cuda_attention_rows_per_pass(sq, sk, dt);
    size_t s_bytes = ds__cuda_round_up((size_t)(rows * sk) * sizeof(float));
    void *scratch;
    DS_TRY(ds__cuda_scratch(c, st, s_bytes + (size_t)(rows * sk) * es, &scratch, err));
    float *scores = (float *)scratch;
    void *probs = (char *)scratch + s_bytes;
    int64_t q_row = hq * d, kv_row = hkv * d;
    for (int64_t bi = 0; bi < batch; bi++)
        for (int64_t h = 0; h < hq; h++) {
            int64_t hk = h / group;
            const char *qb = (const char *)a->q->data + (size_t)((bi * sq * hq + h) * d) * es;
            const char *kb = (const char *)a->k->data + (size_t)((bi * sk * hkv + hk) * d) * es;
            const char *vb = (const char *)a->v->data + (size_t)((bi * sk * hkv + hk) * d) * es;
            char *ob = (char *)a->out->data + (size_t)((bi * sq * hq + h) * d) * os;
            for (int64_t r0 = 0; r0 < sq; r0 += rows) {
                int64_t n = sq - r0 < rows ? sq - r0 : rows;
                /* scores^T (sk x n, column-major) = K Q^T: our row-major [sk, d] K is a
                 * column-major d x sk matrix, taken transposed. */
                ds__gemm g;
                memset(&g, 0, sizeof g);
                g.m = sk;
                g.n = n;
                g.k = d;
                g.batch = 1;
                g.a = kb;
                g.a_dtype = dt;
                g.trans_a = 1;
                g.lda = kv_row;
                g.b = qb + (size_t)(r0 * q_row) * es;
                g.b_dtype = dt;
                g.ldb = q_row;
                g.d = scores;
                g.d_dtype = DS_F32;
                g.ldd = sk;
                g.alpha = 1.0f;
                DS_TRY(ds__cuda_gemm_any(c, st, &g, err));

                probs_args pa;
                memset(&pa, 0, sizeof pa);
                pa.s = scores;
                pa.p = probs;
                pa.p_dt = dt;
                pa.mask = a->key_mask ? (const uint8_t *)a->key_mask->data + bi * sk : NULL;
                pa.sk = sk;
                pa.row0 = r0;
                pa.scale_log2 = a->scale * 1.4426950408889634f;
                pa.causal = a->causal != 0;
                pa.causal_offset = sk - sq;
                attention_probs_kernel<<<(unsigned)n, 256, 0, st->stream>>>(pa);
                DS_KERNEL_CHECK("attention_probs");

                /* out^T (d x n, column-major, leading dim q_row) = V^T P^T: V is a
                 * column-major d x sk matrix, P a column-major sk x n one. */
                memset(&g, 0, sizeof g);
                g.m = d;
                g.n = n;
                g.k = sk;
                g.batch = 1;
                g.a = vb;
                g.a_dtype = dt;
                g.lda = kv_row;
                g.b = probs;
                g.b_dtype = dt;
                g.ldb = sk;
                g.d = ob + (size_t)(r0 * q_row) * os;
                g.d_dtype = od;
                g.ldd = q_row;
                g.alpha = 1.0f;
                DS_TRY(ds__cuda_gemm_any(c, st, &g, err));
            }
        }
    return DS_OK;
}

int ds__cuda_attention(ds_backend *b, ds_stream *s, const ds_attention_args *a, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    int64_t batch = a->q->shape[0], sq = a->q->shape[1], hq = a->q->shape[2], d = a->q->shape[3];
    int64_t sk = a->k->shape[1], hkv = a->k->shape[2];
    if (batch == 0 || sq == 0 || hq == 0)
        return DS_OK;
    if (ds__cuda_attention_form_for(a) == DS_CUDA_ATTENTION_MATMUL) {
        std::lock_guard<std::mutex> guard(st->lock);
        return attention_matmul(ds__cuda_of(b), st, a, err);
    }
    att_args p;
    memset(&p, 0, sizeof p);
    p.q = a->q->data;
    p.k = a->k->data;
    p.v = a->v->data;
    p.o = a->out->data;
    p.mask = a->key_mask ? (const uint8_t *)a->key_mask->data : NULL;
    std::unique_lock<std::mutex> guard(st->lock, std::defer_lock);
    if (p.mask) {
        ds__cuda *c = ds__cuda_of(b);
        p.key_tiles = (sk + ATT_BN - 1) / ATT_BN;
        int64_t total = batch * p.key_tiles;
        if (total > 0) {
            void *flags;
            guard.lock();
            DS_TRY(ds__cuda_scratch(c, st, (size_t)total, &flags, err));
            mask_tiles_kernel<<<ds__cuda_blocks(c, (uint64_t)total * 32, 256), 256, 0, st->stream>>>(
                p.mask, sk, p.key_tiles, total, (uint8_t *)flags);
            DS_KERNEL_CHECK("mask_tiles");
            p.tile_masked = (const uint8_t *)flags;
        }
    }
    p.sq = sq;
    p.sk = sk;
    p.hq = (int)hq;
    p.group = (int)(hq / hkv);
    p.q_row = hq * d;
    p.kv_row = hkv * d;
    p.scale_log2 = a->scale * 1.4426950408889634f;
    p.causal = a->causal != 0;
    p.causal_offset = sk - sq;
    dim3 grid((unsigned)((sq + ATT_BM - 1) / ATT_BM), (unsigned)hq, (unsigned)batch);
    dim3 block(ATT_WARPS * 32);
    int bf16 = a->q->dtype == DS_BF16;
    if (d == 64 && bf16)
        flash_attention_kernel<64, __nv_bfloat16><<<grid, block, att_smem_bytes<64>(), st->stream>>>(p);
    else if (d == 64)
        flash_attention_kernel<64, __half><<<grid, block, att_smem_bytes<64>(), st->stream>>>(p);
    else if (bf16)
        flash_attention_kernel<128, __nv_bfloat16><<<grid, block, att_smem_bytes<128>(), st->stream>>>(p);
    else
        flash_attention_kernel<128, __half><<<grid, block, att_smem_bytes<128>(), st->stream>>>(p);
    DS_KERNEL_CHECK("flash_attention");
    return DS_OK;
}
