/* GEMMs through cuBLASLt: linear, batched matmul, and the helper convolutions use.
 *
 * Row-major to cuBLASLt's column-major: a row-major [R, C] matrix is a column-major [C, R]
 * one with the same memory, so linear computes y^T = W x^T: A = weight (stored [N, K], seen as
 * column-major K x N, op T), B = x (column-major K x M, op N), D = y^T (column-major N x M),
 * m = N, n = M, k = K. The bias is then a vector over D's rows, as cuBLASLt's BIAS epilogue
 * wants.
 *
 * Types: bf16 x bf16 and f16 x f16 with CUBLAS_COMPUTE_32F and f32 scale; f32 x f32 with
 * CUBLAS_COMPUTE_32F (full f32, TF32 off: results match the CPU within f32 budgets). Operands
 * of different dtypes are converted on the GPU into scratch first: fp8 weights widen exactly
 * to x's bf16/f16 (weight_scale becomes alpha); any other mix computes in f32. D is y itself
 * when cuBLASLt can write y's dtype for these inputs (bf16/f16 -> same or f32, f32 -> f32),
 * else an f32 scratch that the epilogue kernel converts.
 *
 * Epilogues: BIAS and GELU_BIAS (cuBLASLt's GELU is the tanh form, used only for GELU_TANH
 * and 16-bit outputs) when the bias has D's dtype; SiLU, erf-GELU and sigmoid-GELU, and any
 * bias cuBLASLt cannot take, run in one elementwise kernel after the GEMM. Where cuBLASLt
 * finds no algorithm (odd alignments, an epilogue / type pairing it lacks, an algorithm that
 * fails to run) the unfused form is tried, then a plain tiled kernel that takes any shape
 * (cuda_gemm_chain.h). A problem's descriptors and layouts are built once and cached with its
 * algorithm (or its "none"): a call sets only its bias and scale pointers.
 *
 * fp8 tensor-core GEMMs (opt-in, DS_CUDA_FP8_COMPUTE=1 at backend creation, sm_89+): x is
 * quantised to e4m3 with one per-tensor scale (amax / 448) and the GEMM runs e4m3/e5m2 weight
 * x e4m3 activation ("TN", the only fp8 layout cuBLASLt has) with the scale as B's scale
 * pointer. That changes the op's result by the activations' quantisation error (a few percent
 * relative), which the op's contract (x @ (weight * scale)^T) does not allow, hence opt-in. */
#include "cuda_internal.cuh"
#include "cuda_device.cuh"

#include <new>
#include <stdlib.h>

/* ---- cuBLASLt: descriptors and algorithm, cached per problem ---- */

static cudaDataType_t cuda_type(ds_dtype d)
{
    switch (d) {
    case DS_BF16: return CUDA_R_16BF;
    case DS_F16: return CUDA_R_16F;
    case DS_F8_E4M3: return CUDA_R_8F_E4M3;
    case DS_F8_E5M2: return CUDA_R_8F_E5M2;
    default: return CUDA_R_32F;
    }
}

static uint16_t pointer_alignment(const void *p)
{
    uintptr_t v = (uintptr_t)p;
    uint16_t al = 256;
    while (al > 1 && (v & (al - 1)))
        al >>= 1;
    return al;
}

namespace {

/* Everything a descriptor or the heuristic's answer depends on; the data pointers only
 * through their alignment. */
struct gemm_key {
    int64_t m, n, k, lda, ldb, ldd, stride_a, stride_b, stride_d;
    int32_t batch;
    int8_t a_dtype, b_dtype, d_dtype, trans_a, trans_b, epilogue, has_beta, has_b_scale;
    uint16_t align_a, align_b, align_d, align_bias;
};

/* The descriptors of one problem: built once, reused by every call of it (only the bias and
 * scale pointers change, set on each call under the cache lock). */
struct lt_descs {
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    void release()
    {
        if (ld)
            cublasLtMatrixLayoutDestroy(ld);
        if (lb)
            cublasLtMatrixLayoutDestroy(lb);
        if (la)
            cublasLtMatrixLayoutDestroy(la);
        if (op)
            cublasLtMatmulDescDestroy(op);
        op = NULL;
        la = lb = ld = NULL;
    }
};

struct gemm_entry {
    gemm_key key;
    cublasLtMatmulAlgo_t algo;
    lt_descs descs; /* kept while found */
    int found;      /* 0: cuBLASLt has no algorithm for this problem */
    int used;
};

} // namespace

#define GEMM_CACHE_SIZE 256

/* `lock` is held from the lookup through cublasLtMatmul's enqueue: the cached descriptors take
 * each call's pointers, and an entry is replaced only when no call is using it. */
struct ds__cuda_gemm_cache {
    std::mutex lock;
    gemm_entry entries[GEMM_CACHE_SIZE];
    int next; /* round-robin replacement once full */
};

int ds__cuda_gemm_cache_create(ds__cuda *c, ds_error *err)
{
    c->gemm_cache = new (std::nothrow) ds__cuda_gemm_cache();
    if (!c->gemm_cache)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "CUDA GEMM cache: out of memory");
    return DS_OK;
}

void ds__cuda_gemm_cache_destroy(ds__cuda *c)
{
    if (c->gemm_cache)
        for (int i = 0; i < GEMM_CACHE_SIZE; i++)
            c->gemm_cache->entries[i].descs.release();
    delete c->gemm_cache;
    c->gemm_cache = NULL;
}

/* Caller holds cache->lock. */
static gemm_entry *cache_find(ds__cuda_gemm_cache *cache, const gemm_key *key)
{
    for (int i = 0; i < GEMM_CACHE_SIZE; i++) {
        gemm_entry *e = &cache->entries[i];
        if (e->used && memcmp(&e->key, key, sizeof *key) == 0)
            return e;
    }
    return NULL;
}

/* A slot for a new key, its previous problem's descriptors released. Caller holds the lock. */
static gemm_entry *cache_slot(ds__cuda_gemm_cache *cache, const gemm_key *key)
{
    gemm_entry *e = &cache->entries[cache->next];
    cache->next = (cache->next + 1) % GEMM_CACHE_SIZE;
    e->descs.release();
    e->key = *key;
    e->found = 0;
    e->used = 1;
    return e;
}

static int make_layout(cublasLtMatrixLayout_t *l, ds_dtype dt, int64_t rows, int64_t cols, int64_t ld,
                       int batch, int64_t stride, ds_error *err)
{
    DS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(l, cuda_type(dt), (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        int32_t count = batch;
        DS_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                         &count, sizeof count));
        DS_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
            *l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
    }
    return DS_OK;
}

static int make_descs(const ds__gemm *g, cublasLtEpilogue_t epi, lt_descs *d, ds_error *err)
{
    cublasOperation_t ta = g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t tb = g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    DS_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    DS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    DS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    DS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    if (g->bias) {
        int32_t bias_type = (int32_t)cuda_type(g->d_dtype);
        DS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                       &bias_type, sizeof bias_type));
    }
    DS_TRY(make_layout(&d->la, g->a_dtype, g->trans_a ? g->k : g->m, g->trans_a ? g->m : g->k,
                       g->lda, g->batch, g->stride_a, err));
    DS_TRY(make_layout(&d->lb, g->b_dtype, g->trans_b ? g->n : g->k, g->trans_b ? g->k : g->n,
                       g->ldb, g->batch, g->stride_b, err));
    DS_TRY(make_layout(&d->ld, g->d_dtype, g->m, g->n, g->ldd, g->batch, g->stride_d, err));
    return DS_OK;
}

/* This call's pointers on the (possibly shared) descriptor. */
static int set_pointers(const ds__gemm *g, const lt_descs *d, ds_error *err)
{
    if (g->bias)
        DS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                       &g->bias, sizeof g->bias));
    if (g->b_scale)
        DS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                                       &g->b_scale, sizeof g->b_scale));
    return DS_OK;
}

/* The heuristic's first choice for the problem, or found = 0 (cuda_gemm_chain.h: every failed
 * lookup is an answer, not an error). */
static int lookup(ds__cuda *c, const gemm_key *key, const lt_descs *d, cublasLtMatmulAlgo_t *algo,
                  int *found, ds_error *err)
{
    struct pref_holder {
        cublasLtMatmulPreference_t p = NULL;
        ~pref_holder()
        {
            if (p)
                cublasLtMatmulPreferenceDestroy(p);
        }
    } pref;
    uint64_t ws = DS_CUDA_WORKSPACE_BYTES;
    uint32_t al_a = key->align_a, al_b = key->align_b, al_d = key->align_d;
    DS_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.p));
    DS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    DS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a));
    DS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b));
    DS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof al_d));
    DS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof al_d));
    cublasLtMatmulHeuristicResult_t result;
    int returned = 0;
    memset(&result, 0, sizeof result);
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(c->lt, d->op, d->la, d->lb, d->ld, d->ld,
                                                       pref.p, 1, &result, &returned);
    *found = ds__gemm_lookup_found((int)st, returned, (int)result.state);
    if (*found)
        *algo = result.algo;
    return DS_OK;
}

int ds__cuda_gemm_lt(ds__cuda *c, ds_stream *s, const ds__gemm *g, ds_error *err)
{
    cublasLtEpilogue_t epi = g->bias ? (g->gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                                     : (g->gelu ? CUBLASLT_EPILOGUE_GELU : CUBLASLT_EPILOGUE_DEFAULT);
    gemm_key key;
    memset(&key, 0, sizeof key);
    key.m = g->m;
    key.n = g->n;
    key.k = g->k;
    key.lda = g->lda;
    key.ldb = g->ldb;
    key.ldd = g->ldd;
    key.batch = g->batch;
    if (g->batch > 1) {
        key.stride_a = g->stride_a;
        key.stride_b = g->stride_b;
        key.stride_d = g->stride_d;
    }
    key.a_dtype = (int8_t)g->a_dtype;
    key.b_dtype = (int8_t)g->b_dtype;
    key.d_dtype = (int8_t)g->d_dtype;
    key.trans_a = (int8_t)(g->trans_a != 0);
    key.trans_b = (int8_t)(g->trans_b != 0);
    key.epilogue = (int8_t)epi;
    key.has_beta = (int8_t)(g->beta != 0.0f);
    key.has_b_scale = (int8_t)(g->b_scale != NULL);
    key.align_a = pointer_alignment(g->a);
    key.align_b = pointer_alignment(g->b);
    key.align_d = pointer_alignment(g->d);
    key.align_bias = g->bias ? pointer_alignment(g->bias) : 0;

    if (!s->workspace)
        DS_CUDA_CHECK(cudaMalloc(&s->workspace, DS_CUDA_WORKSPACE_BYTES));

    std::lock_guard<std::mutex> guard(c->gemm_cache->lock);
    gemm_entry *e = cache_find(c->gemm_cache, &key);
    if (!e) {
        lt_descs d;
        cublasLtMatmulAlgo_t algo;
        int found = 0;
        int rc = make_descs(g, epi, &d, err);
        if (rc == DS_OK)
            rc = set_pointers(g, &d, err);
        if (rc == DS_OK)
            rc = lookup(c, &key, &d, &algo, &found, err);
        if (rc != DS_OK) {
            d.release();
            return rc;
        }
        e = cache_slot(c->gemm_cache, &key);
        e->found = found;
        if (found) {
            e->algo = algo;
            e->descs = d;
        } else {
            d.release();
        }
    }
    if (!e->found)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "cuBLASLt has no algorithm for [%lld x %lld x %lld] %s x %s -> %s "
                            "(epilogue %d)", (long long)g->m, (long long)g->n, (long long)g->k,
                            ds_dtype_name(g->a_dtype), ds_dtype_name(g->b_dtype),
                            ds_dtype_name(g->d_dtype), (int)epi);

    DS_TRY(set_pointers(g, &e->descs, err));
    const lt_descs *d = &e->descs;
    int forced = ds__gemm_forced_matmul_failure();
    cublasStatus_t mst =
        forced ? (cublasStatus_t)forced
               : cublasLtMatmul(c->lt, d->op, &g->alpha, g->a, d->la, g->b, d->lb, &g->beta, g->d,
                                d->ld, g->d, d->ld, &e->algo, s->workspace,
                                DS_CUDA_WORKSPACE_BYTES, s->stream);
    if (mst != CUBLAS_STATUS_SUCCESS) {
        /* The chosen algorithm does not run this problem: remember that, and leave the CUDA
         * error state clean for the next form's launch check. */
        (void)cudaGetLastError();
        ds__gemm_note_matmul_failure();
        e->found = 0;
        e->descs.release();
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "cublasLtMatmul for [%lld x %lld x %lld] %s x %s -> %s (epilogue %d): "
                            "status %d: %s", (long long)g->m, (long long)g->n, (long long)g->k,
                            ds_dtype_name(g->a_dtype), ds_dtype_name(g->b_dtype),
                            ds_dtype_name(g->d_dtype), (int)epi, (int)mst,
                            cublasLtGetStatusString(mst));
    }
    return DS_OK;
}

/* ---- The plain tiled GEMM (any shape and alignment) ---- */

namespace {

struct simt_args {
    int64_t m, n, k;
    int batch;
    const void *a; int a_dtype; int trans_a; int64_t lda; int64_t stride_a;
    const void *b; int b_dtype; int trans_b; int64_t ldb; int64_t stride_b;
    void *d; int d_dtype; int64_t ldd; int64_t stride_d;
    float alpha, beta;
    const float *b_scale;
};

} // namespace

#define SIMT_TILE 16

__global__ void simt_gemm_kernel(simt_args p)
{
    __shared__ float as[SIMT_TILE][SIMT_TILE + 1];
    __shared__ float bs[SIMT_TILE][SIMT_TILE + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    float scale = p.alpha * (p.b_scale ? *p.b_scale : 1.0f);
    for (int64_t z = blockIdx.z; z < p.batch; z += gridDim.z)
        for (int64_t j0 = (int64_t)blockIdx.y * SIMT_TILE; j0 < p.n; j0 += (int64_t)gridDim.y * SIMT_TILE) {
            int64_t i0 = (int64_t)blockIdx.x * SIMT_TILE;
            int64_t i = i0 + tx, j = j0 + ty;
            float acc = 0.0f;
            for (int64_t l0 = 0; l0 < p.k; l0 += SIMT_TILE) {
                /* as[l][i'] = A(i0 + i', l0 + l), bs[l][j'] = B(l0 + l, j0 + j'). */
                int64_t ai = i0 + tx, al = l0 + ty;
                float av = 0.0f, bv = 0.0f;
                if (ai < p.m && al < p.k)
                    av = dsk::load(p.a, p.a_dtype, z * p.stride_a +
                                   (p.trans_a ? al + ai * p.lda : ai + al * p.lda));
                int64_t bl = l0 + tx, bj = j0 + ty;
                if (bl < p.k && bj < p.n)
                    bv = dsk::load(p.b, p.b_dtype, z * p.stride_b +
                                   (p.trans_b ? bj + bl * p.ldb : bl + bj * p.ldb));
                as[ty][tx] = av;
                bs[tx][ty] = bv;
                __syncthreads();
#pragma unroll
                for (int l = 0; l < SIMT_TILE; l++)
                    acc += as[l][tx] * bs[l][ty];
                __syncthreads();
            }
            if (i < p.m && j < p.n) {
                int64_t off = z * p.stride_d + i + j * p.ldd;
                float v = scale * acc;
                if (p.beta != 0.0f)
                    v += p.beta * dsk::load(p.d, p.d_dtype, off);
                dsk::store(p.d, p.d_dtype, off, v);
            }
        }
}

static int simt_gemm(ds__cuda *c, ds_stream *s, const ds__gemm *g, ds_error *err)
{
    (void)c;
    simt_args p = {g->m, g->n, g->k, g->batch,
                   g->a, g->a_dtype, g->trans_a, g->lda, g->stride_a,
                   g->b, g->b_dtype, g->trans_b, g->ldb, g->stride_b,
                   g->d, g->d_dtype, g->ldd, g->stride_d,
                   g->alpha, g->beta, g->b_scale};
    int64_t gx = (g->m + SIMT_TILE - 1) / SIMT_TILE, gy = (g->n + SIMT_TILE - 1) / SIMT_TILE;
    if (gx > 0x7fffffff)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED, "GEMM with %lld rows is too large",
                            (long long)g->m);
    dim3 grid((unsigned)gx, (unsigned)(gy < 65535 ? gy : 65535),
              (unsigned)(g->batch < 65535 ? g->batch : 65535));
    simt_gemm_kernel<<<grid, dim3(SIMT_TILE, SIMT_TILE), 0, s->stream>>>(p);
    DS_KERNEL_CHECK("simt_gemm");
    return DS_OK;
}

namespace {

/* One GEMM as the chain tries it: the fused form uses g as given, the others drop its bias
 * and GELU (the caller then applies them). */
struct chain_ctx {
    ds__cuda *c;
    ds_stream *s;
    const ds__gemm *g;
};

} // namespace

static int try_form(void *ctx, ds__gemm_form form, ds_error *err)
{
    chain_ctx *x = (chain_ctx *)ctx;
    ds__gemm g = *x->g;
    if (form != DS_GEMM_FORM_LT_FUSED) {
        g.bias = NULL;
        g.gelu = 0;
    }
    if (form == DS_GEMM_FORM_PLAIN)
        return simt_gemm(x->c, x->s, &g, err);
    return ds__cuda_gemm_lt(x->c, x->s, &g, err);
}

/* Runs g in the best form that has an algorithm, starting with its fused epilogue when it has
 * one; *used says which ran. */
static int gemm_chain(ds__cuda *c, ds_stream *s, const ds__gemm *g, ds__gemm_form *used,
                      ds_error *err)
{
    chain_ctx ctx = {c, s, g};
    ds__gemm_form first = (g->bias || g->gelu) ? DS_GEMM_FORM_LT_FUSED : DS_GEMM_FORM_LT;
    return ds__gemm_chain_run(first, try_form, &ctx, used, err);
}

int ds__cuda_gemm_any(ds__cuda *c, ds_stream *s, const ds__gemm *g, ds_error *err)
{
    ds__gemm_form used;
    return gemm_chain(c, s, g, &used, err);
}

/* ---- Shared planning ---- */

static int is_fp8(ds_dtype d) { return d == DS_F8_E4M3 || d == DS_F8_E5M2; }

/* ---- fp8 activations (opt-in) ---- */

__global__ void amax_kernel(const void *x, int dt, int64_t n, unsigned int *amax)
{
    float m = 0.0f;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        m = fmaxf(m, fabsf(dsk::load(x, dt, i)));
    m = dsk::warp_max(m);
    /* Non-negative floats order like their bit patterns. */
    if ((threadIdx.x & 31) == 0)
        atomicMax(amax, __float_as_uint(m));
}

__global__ void quantise_e4m3_kernel(const void *x, int dt, int64_t n, const unsigned int *amax,
                                     uint8_t *q, float *scale_out)
{
    float amax_f = __uint_as_float(*amax);
    float scale = (amax_f > 0.0f && isfinite(amax_f)) ? amax_f / 448.0f : 1.0f;
    if (blockIdx.x == 0 && threadIdx.x == 0)
        *scale_out = scale;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        q[i] = dsk::f32_to_e4m3(dsk::load(x, dt, i) / scale);
}

/* Returns DS_ERR_UNIMPLEMENTED (nothing queued but the quantisation) when cuBLASLt has no fp8
 * kernel for this problem; the caller then takes the exact path. */
static int linear_fp8(ds__cuda *c, ds_stream *s, const ds_linear_args *a, int64_t m, int64_t n,
                      int64_t k, ds_error *err)
{
    size_t qbytes = ds__cuda_round_up((size_t)(m * k));
    void *scratch;
    DS_TRY(ds__cuda_scratch(c, s, qbytes + 256, &scratch, err));
    uint8_t *q = (uint8_t *)scratch;
    unsigned int *amax = (unsigned int *)((char *)scratch + qbytes);
    float *scale = (float *)((char *)scratch + qbytes + 16);
    DS_CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof *amax, s->stream));
    unsigned blocks = ds__cuda_blocks(c, (uint64_t)(m * k), 256);
    amax_kernel<<<blocks, 256, 0, s->stream>>>(a->x->data, a->x->dtype, m * k, amax);
    DS_KERNEL_CHECK("amax");
    quantise_e4m3_kernel<<<blocks, 256, 0, s->stream>>>(a->x->data, a->x->dtype, m * k, amax, q, scale);
    DS_KERNEL_CHECK("quantise_e4m3");
    ds__gemm g;
    memset(&g, 0, sizeof g);
    g.m = n;
    g.n = m;
    g.k = k;
    g.batch = 1;
    g.a = a->weight->data;
    g.a_dtype = a->weight->dtype;
    g.trans_a = 1;
    g.lda = k;
    g.b = q;
    g.b_dtype = DS_F8_E4M3;
    g.ldb = k;
    g.d = a->y->data;
    g.d_dtype = a->y->dtype;
    g.ldd = n;
    g.alpha = a->weight_scale;
    g.b_scale = scale;
    DS_TRY(ds__cuda_gemm_lt(c, s, &g, err));
    if (a->bias || a->epilogue != DS_ACT_NONE)
        DS_TRY(ds__cuda_bias_act(c, s, a->y->data, a->y->dtype, a->bias ? a->bias->data : NULL,
                                 a->bias ? a->bias->dtype : DS_F32, a->epilogue, a->y->data,
                                 a->y->dtype, m, n, err));
    return DS_OK;
}

/* ---- linear ---- */

int ds__cuda_linear(ds_backend *b, ds_stream *s, const ds_linear_args *a, ds_error *err)
{
    ds__cuda *c = ds__cuda_of(b);
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    std::lock_guard<std::mutex> guard(st->lock);

    int64_t n = a->weight->shape[0], k = a->weight->shape[1];
    int64_t m = (int64_t)(ds_tensor_numel(a->x) / (uint64_t)(k ? k : 1));
    if (k == 0)
        m = (int64_t)(ds_tensor_numel(a->y) / (uint64_t)(n ? n : 1));
    if (m == 0 || n == 0)
        return DS_OK;
    const void *bias = a->bias ? a->bias->data : NULL;
    ds_dtype bias_dt = a->bias ? a->bias->dtype : DS_F32;
    if (k == 0) /* an empty sum: y = act(bias) */
        return ds__cuda_bias_act(c, st, NULL, DS_F32, bias, bias_dt, a->epilogue, a->y->data,
                                 a->y->dtype, m, n, err);

    ds_dtype xd = a->x->dtype, wd = a->weight->dtype, yd = a->y->dtype;
    if (c->fp8_compute && is_fp8(wd)) {
        int rc = linear_fp8(c, st, a, m, n, k, err);
        if (rc != DS_ERR_UNIMPLEMENTED)
            return rc;
    }

    ds_dtype cd;
    if (xd == wd)
        cd = xd;
    else if (is_fp8(wd) && (xd == DS_BF16 || xd == DS_F16))
        cd = xd; /* every e4m3/e5m2 value is exact in bf16 and f16 */
    else
        cd = DS_F32;
    int direct_d = ds__cuda_gemm_d_type_ok(cd, yd);
    size_t es = ds_dtype_size(cd);
    size_t x_bytes = xd == cd ? 0 : ds__cuda_round_up((size_t)(m * k) * es);
    size_t w_bytes = wd == cd ? 0 : ds__cuda_round_up((size_t)(n * k) * es);
    size_t d_bytes = direct_d ? 0 : ds__cuda_round_up((size_t)(m * n) * sizeof(float));
    char *scratch = NULL;
    if (x_bytes + w_bytes + d_bytes) {
        void *p;
        DS_TRY(ds__cuda_scratch(c, st, x_bytes + w_bytes + d_bytes, &p, err));
        scratch = (char *)p;
    }
    const void *xa = a->x->data, *wa = a->weight->data;
    if (x_bytes) {
        DS_TRY(ds__cuda_convert(c, st, a->x->data, xd, scratch, cd, (uint64_t)(m * k), err));
        xa = scratch;
    }
    if (w_bytes) {
        DS_TRY(ds__cuda_convert(c, st, a->weight->data, wd, scratch + x_bytes, cd,
                                (uint64_t)(n * k), err));
        wa = scratch + x_bytes;
    }
    void *d = direct_d ? a->y->data : (void *)(scratch + x_bytes + w_bytes);
    ds_dtype dd = direct_d ? yd : DS_F32;

    ds__gemm g;
    memset(&g, 0, sizeof g);
    g.m = n;
    g.n = m;
    g.k = k;
    g.batch = 1;
    g.a = wa;
    g.a_dtype = cd;
    g.trans_a = 1;
    g.lda = k;
    g.b = xa;
    g.b_dtype = cd;
    g.ldb = k;
    g.d = d;
    g.d_dtype = dd;
    g.ldd = n;
    g.alpha = a->weight_scale;
    int fuse_bias = bias && bias_dt == dd;
    /* cuBLASLt's GELU may use a fast tanh: good to 16-bit outputs, not to f32 budgets. */
    int fuse_gelu = a->epilogue == DS_ACT_GELU_TANH && (!bias || fuse_bias) && dd != DS_F32;
    g.bias = fuse_bias ? bias : NULL;
    g.gelu = fuse_gelu;
    ds__gemm_form used;
    DS_TRY(gemm_chain(c, st, &g, &used, err));
    if (used != DS_GEMM_FORM_LT_FUSED)
        fuse_bias = fuse_gelu = 0;

    ds_activation post_act = fuse_gelu ? DS_ACT_NONE : a->epilogue;
    const void *post_bias = fuse_bias ? NULL : bias;
    if (post_act != DS_ACT_NONE || post_bias || !direct_d)
        return ds__cuda_bias_act(c, st, d, dd, post_bias, bias_dt, post_act, a->y->data, yd, m, n,
                                 err);
    return DS_OK;
}

/* ---- batched matmul ---- */

int ds__cuda_batched_matmul(ds_backend *b, ds_stream *s, const ds_batched_matmul_args *a,
                            ds_error *err)
{
    ds__cuda *c = ds__cuda_of(b);
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    std::lock_guard<std::mutex> guard(st->lock);

    int64_t batch = a->a->shape[0];
    int64_t m = a->y->shape[1], n = a->y->shape[2];
    int64_t k = a->transpose_a ? a->a->shape[1] : a->a->shape[2];
    if (batch == 0 || m == 0 || n == 0)
        return DS_OK;
    if (k == 0)
        return ds__cuda_fill32(c, st, a->y->data, 0, ds_tensor_nbytes(a->y), err);
    if (batch > 0x7fffffff)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED, "batched_matmul: %lld matrices exceed "
                            "cuBLASLt's batch count", (long long)batch);

    ds_dtype ad = a->a->dtype, bd = a->b->dtype, yd = a->y->dtype;
    ds_dtype cd = ad == bd ? ad : DS_F32;
    int direct_d = ds__cuda_gemm_d_type_ok(cd, yd);
    size_t es = ds_dtype_size(cd);
    uint64_t na = ds_tensor_numel(a->a), nb = ds_tensor_numel(a->b), ny = ds_tensor_numel(a->y);
    size_t a_bytes = ad == cd ? 0 : ds__cuda_round_up((size_t)na * es);
    size_t b_bytes = bd == cd ? 0 : ds__cuda_round_up((size_t)nb * es);
    size_t d_bytes = direct_d ? 0 : ds__cuda_round_up((size_t)ny * sizeof(float));
    char *scratch = NULL;
    if (a_bytes + b_bytes + d_bytes) {
        void *p;
        DS_TRY(ds__cuda_scratch(c, st, a_bytes + b_bytes + d_bytes, &p, err));
        scratch = (char *)p;
    }
    const void *pa = a->a->data, *pb = a->b->data;
    if (a_bytes) {
        DS_TRY(ds__cuda_convert(c, st, a->a->data, ad, scratch, cd, na, err));
        pa = scratch;
    }
    if (b_bytes) {
        DS_TRY(ds__cuda_convert(c, st, a->b->data, bd, scratch + a_bytes, cd, nb, err));
        pb = scratch + a_bytes;
    }
    void *d = direct_d ? a->y->data : (void *)(scratch + a_bytes + b_bytes);
    ds_dtype dd = direct_d ? yd : DS_F32;

    /* y^T (N x M, column-major) = op(b)^T op(a)^T: cuBLASLt's A is our b, its B our a. */
    ds__gemm g;
    memset(&g, 0, sizeof g);
    g.m = n;
    g.n = m;
    g.k = k;
    g.batch = (int)batch;
    g.a = pb;
    g.a_dtype = cd;
    g.trans_a = a->transpose_b;
    g.lda = a->transpose_b ? k : n;
    g.stride_a = k * n;
    g.b = pa;
    g.b_dtype = cd;
    g.trans_b = a->transpose_a;
    g.ldb = a->transpose_a ? m : k;
    g.stride_b = m * k;
    g.d = d;
    g.d_dtype = dd;
    g.ldd = n;
    g.stride_d = m * n;
    g.alpha = a->alpha;
    DS_TRY(ds__cuda_gemm_any(c, st, &g, err));
    if (!direct_d)
        return ds__cuda_convert(c, st, d, DS_F32, a->y->data, yd, ny, err);
    return DS_OK;
}
