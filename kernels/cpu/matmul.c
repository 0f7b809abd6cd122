/* GEMMs on the CPU: linear (x @ W^T with bias and activation epilogue) and batched matmul.
 *
 * Two GEMM libraries: oneDNN's matmul (gemm_onednn.c, when built with it) and OpenBLAS. bf16
 * operands go to oneDNN as they are, accumulating in f32, where the processor's bf16 rate makes
 * that faster than widening them to f32 (bf16_via_onednn); fp8 weights are converted to bf16 on
 * the way. f32 GEMMs go to whichever library was faster for the shape's class when measured
 * (f32_via_onednn). Under f32 activations a weight of another dtype is widened whole and runs
 * the GEMM the same weight stored f32 runs, so a weight converted to f32 once (the VRAM manager's
 * fast tier) gives what widening it at every call gives. bf16 activations of a few dozen rows
 * (text tokens) run on our own dot-product kernel where the processor has AVX-512 (gemm_dot.c):
 * it reads bf16 weights where they lie, without the libraries' packing or a widening pass. The
 * choice depends only on shapes, dtypes, the processor and the build, so results are
 * deterministic for a given thread count.
 *
 * Every GEMM is issued from the calling thread and cut into one single-threaded part per worker
 * of our pool (gemm_parts.c: neither library's own threads are used, whose idle workers would
 * spin on the cores the pool's next op needs); our pool also does the passes around it (dtype
 * conversions, bias + activation + store). The cut depends only on the shape and the thread
 * count, so results are deterministic for a given thread count. */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/gemm_dot.h"
#include "kernels/cpu/gemm_info.h"
#include "kernels/cpu/gemm_parts.h"
#include "kernels/ops.h"

/* A converted block of weight rows stays under about this many bytes (32 MiB), so converting a
 * large bf16/fp8 weight never doubles its footprint. */
#define WEIGHT_BLOCK_BYTES ((int64_t)32 << 20)
/* Elements per chunk in conversion passes: enough to amortise waking a worker. */
#define CONVERT_GRAIN 32768

typedef struct convert_job {
    const void *src;
    ds_dtype dtype;
    float *dst;
} convert_job;

static void convert_range(void *ctx, int64_t begin, int64_t end)
{
    const convert_job *j = ctx;
    const char *src = (const char *)j->src + (size_t)begin * ds_dtype_size(j->dtype);
    ds_convert_to_f32(src, j->dtype, (size_t)(end - begin), j->dst + begin);
}

static void to_f32(ds_backend *b, const void *src, ds_dtype dtype, int64_t n, float *dst)
{
    convert_job j = {src, dtype, dst};
    ds__cpu_parallel_for(b, n, CONVERT_GRAIN, convert_range, &j);
}

/* f32 view of a tensor: its own data when it is f32, else a converted copy in *owned. */
static int as_f32(ds_backend *b, const char *op, const char *name, const ds_tensor *t,
                  const float **out, float **owned, ds_error *err)
{
    *owned = NULL;
    if (t->dtype == DS_F32) {
        *out = t->data;
        return DS_OK;
    }
    int64_t n = (int64_t)ds_tensor_numel(t);
    *owned = malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!*owned)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory converting %s (%lld "
                            "elements) to f32", op, name, (long long)n);
    to_f32(b, t->data, t->dtype, n, *owned);
    *out = *owned;
    return DS_OK;
}

/* ---- linear ---- */

typedef struct epilogue_job {
    float *acc;          /* [M, N] f32 result of the GEMM (y itself when y is f32) */
    float scale;         /* applied first, when the GEMM did not */
    const float *bias;   /* [N] or NULL */
    ds_activation act;
    int64_t n;
    void *y;
    ds_dtype ydtype;
} epilogue_job;

/* Bias, activation and the store into y's dtype in one pass over each row while it is in
 * cache. */
static void epilogue_rows(void *ctx, int64_t begin, int64_t end)
{
    const epilogue_job *j = ctx;
    size_t esize = ds_dtype_size(j->ydtype);
    for (int64_t r = begin; r < end; r++) {
        float *row = j->acc + r * j->n;
        if (j->scale != 1.0f)
            for (int64_t c = 0; c < j->n; c++)
                row[c] *= j->scale;
        if (j->bias)
            for (int64_t c = 0; c < j->n; c++)
                row[c] += j->bias[c];
        ds__cpu_activate_row(row, j->n, j->act);
        if (j->ydtype != DS_F32)
            ds_convert_from_f32(row, (size_t)j->n, j->ydtype, (char *)j->y + (size_t)(r * j->n) * esize);
    }
}

typedef struct fill_bias_job {
    float *acc;
    const float *bias;
    int64_t n;
} fill_bias_job;

static void fill_bias_rows(void *ctx, int64_t begin, int64_t end)
{
    const fill_bias_job *j = ctx;
    for (int64_t r = begin; r < end; r++)
        memcpy(j->acc + r * j->n, j->bias, (size_t)j->n * sizeof(float));
}

/* acc[M, N] = the bias in every row, for a GEMM that adds its product (beta = 1): the bias then
 * costs a write of the result instead of the epilogue's read and write of all of it. */
static void fill_bias(ds_backend *b, float *acc, const float *bias, int64_t m, int64_t n)
{
    fill_bias_job j = {acc, bias, n};
    ds__cpu_parallel_for(b, m, 16384 / n + 1, fill_bias_rows, &j);
}

/* ---- few-row linear ----
 *
 * With one to a few rows of x (the modulation linears on temb, a single token), sgemm spends its
 * time packing the whole weight for almost no arithmetic, and a bf16 weight would first be
 * widened in full. Here each worker streams its own block of weight rows once (f32 and bf16
 * weights eight rows at a time, bf16 widened in registers; other dtypes one row at a time,
 * widened into its scratch) and takes the dot products with every x row while those rows are in
 * cache: the weight is read exactly once, which is all this shape costs. Each output is one
 * fixed-order sum, so results do not depend on the thread count. */
#define SMALL_M_MAX 4
#define SMALL_M_GRAIN 16 /* weight rows per chunk */

typedef float v8f __attribute__((vector_size(32)));

static float dot_f32(const float *a, const float *b, int64_t k)
{
    v8f acc0 = {0}, acc1 = {0};
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        v8f a0, a1, b0, b1;
        memcpy(&a0, a + i, sizeof a0);
        memcpy(&a1, a + i + 8, sizeof a1);
        memcpy(&b0, b + i, sizeof b0);
        memcpy(&b1, b + i + 8, sizeof b1);
        acc0 += a0 * b0;
        acc1 += a1 * b1;
    }
    acc0 += acc1;
    float sum = 0.0f;
    for (int l = 0; l < 8; l++)
        sum += acc0[l];
    for (; i < k; i++)
        sum += a[i] * b[i];
    return sum;
}

typedef uint16_t v8u16 __attribute__((vector_size(16)));
typedef uint32_t v8u32 __attribute__((vector_size(32)));

typedef struct small_m_job {
    const float *x;   /* [m, k] f32 */
    const void *w;    /* [n, k] in wdtype */
    ds_dtype wdtype;
    int64_t m, n, k;
    float alpha;
    float *acc;       /* [m, n] */
    int failed;       /* a worker's scratch allocation failed */
} small_m_job;

/* DOT_ROWS weight rows' dot products with one x row, interleaved so that as many weight streams
 * are in flight at once (eight: the 1-row f32 modulation linear of a DiT at 3072 -> 18432 took
 * 17.9 ms one row at a time, 10.3 ms four at a time, 8.1 ms eight at a time, 2 threads): one
 * stream leaves the memory system idle between its prefetches, and this shape is nothing but
 * the weight's bytes (a DiT's modulation weight is 226 MB in f32). Each row's sum is dot_f32's
 * (with bf16 weights widened in registers: a 16-bit shift), operation for operation, so
 * results are the same as one row at a time. Compiled twice, for AVX2 (the 8-float vectors in
 * one register) and for any x86-64. */
#define DOT_ROWS 8
#define DOT_ROWS_BODY(WT, LOAD8, LOAD1)                                                            \
    {                                                                                              \
        v8f acc[DOT_ROWS][2] = {{{0}}};                                                            \
        int64_t i = 0;                                                                             \
        for (; i + 16 <= k; i += 16) {                                                             \
            v8f a0, a1;                                                                            \
            memcpy(&a0, a + i, sizeof a0);                                                         \
            memcpy(&a1, a + i + 8, sizeof a1);                                                     \
            for (int q = 0; q < DOT_ROWS; q++) {                                                   \
                v8f b0, b1;                                                                        \
                LOAD8(&b0, (const WT *)w[q] + i);                                                  \
                LOAD8(&b1, (const WT *)w[q] + i + 8);                                              \
                acc[q][0] += a0 * b0;                                                              \
                acc[q][1] += a1 * b1;                                                              \
            }                                                                                      \
        }                                                                                          \
        for (int q = 0; q < DOT_ROWS; q++) {                                                       \
            v8f s8 = acc[q][0] + acc[q][1];                                                        \
            float sum = 0.0f;                                                                      \
            for (int l = 0; l < 8; l++)                                                            \
                sum += s8[l];                                                                      \
            for (int64_t t = i; t < k; t++)                                                        \
                sum += a[t] * LOAD1(((const WT *)w[q])[t]);                                        \
            out[q] = sum;                                                                          \
        }                                                                                          \
    }

/* (Through a pointer: a vector return value would change the ABI between the two builds.) */
static inline __attribute__((always_inline)) void load8_f32(v8f *v, const float *p)
{
    memcpy(v, p, sizeof *v);
}

/* bf16 is the top half of an f32: widening is a 16-bit shift in registers. */
static inline __attribute__((always_inline)) void load8_bf16(v8f *v, const uint16_t *p)
{
    v8u16 h;
    memcpy(&h, p, sizeof h);
    v8u32 bits = __builtin_convertvector(h, v8u32) << 16;
    memcpy(v, &bits, sizeof *v);
}

static inline __attribute__((always_inline)) float load1_f32(float x) { return x; }

static inline __attribute__((always_inline)) float load1_bf16(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float w;
    memcpy(&w, &bits, sizeof w);
    return w;
}

__attribute__((target("avx2"))) static void dot_rows_f32_avx2(const float *a, const void *const *w,
                                                              int64_t k, float *out)
DOT_ROWS_BODY(float, load8_f32, load1_f32)

static void dot_rows_f32_generic(const float *a, const void *const *w, int64_t k, float *out)
DOT_ROWS_BODY(float, load8_f32, load1_f32)

__attribute__((target("avx2"))) static void dot_rows_bf16_avx2(const float *a, const void *const *w,
                                                               int64_t k, float *out)
DOT_ROWS_BODY(uint16_t, load8_bf16, load1_bf16)

static void dot_rows_bf16_generic(const float *a, const void *const *w, int64_t k, float *out)
DOT_ROWS_BODY(uint16_t, load8_bf16, load1_bf16)

#undef DOT_ROWS_BODY

typedef void (*dot_rows_fn)(const float *a, const void *const *w, int64_t k, float *out);

static int have_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}

static void small_m_rows(void *ctx, int64_t begin, int64_t end)
{
    small_m_job *j = ctx;
    size_t wsize = ds_dtype_size(j->wdtype);
    if (j->wdtype == DS_BF16 || j->wdtype == DS_F32) {
        int avx2 = have_avx2();
        dot_rows_fn dot_rows = j->wdtype == DS_BF16
                                   ? (avx2 ? dot_rows_bf16_avx2 : dot_rows_bf16_generic)
                                   : (avx2 ? dot_rows_f32_avx2 : dot_rows_f32_generic);
        for (int64_t c = begin; c < end; c += DOT_ROWS) {
            int rows = end - c < DOT_ROWS ? (int)(end - c) : DOT_ROWS;
            /* A short last group repeats its last row; those sums are dropped. */
            const void *w[DOT_ROWS];
            for (int q = 0; q < DOT_ROWS; q++) {
                int64_t row = c + (q < rows ? q : rows - 1);
                w[q] = (const char *)j->w + (size_t)(row * j->k) * wsize;
            }
            for (int64_t r = 0; r < j->m; r++) {
                float out[DOT_ROWS];
                dot_rows(j->x + r * j->k, w, j->k, out);
                for (int q = 0; q < rows; q++)
                    j->acc[r * j->n + c + q] = j->alpha * out[q];
            }
        }
        return;
    }
    float *wrow = ds__cpu_scratch((size_t)j->k * sizeof(float));
    if (!wrow) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t c = begin; c < end; c++) {
        const float *w = (const float *)((const char *)j->w + (size_t)(c * j->k) * wsize);
        ds_convert_to_f32(w, j->wdtype, (size_t)j->k, wrow);
        for (int64_t r = 0; r < j->m; r++)
            j->acc[r * j->n + c] = j->alpha * dot_f32(j->x + r * j->k, wrow, j->k);
    }
}

/* The rules below are the faster side of measurements of both libraries on each shape class at
 * model widths (K and N 3072 to 18944, 2 threads, bench/README.md): few rows (5 to a few dozen:
 * text tokens, small images), square (hundreds), tall (thousands of tokens). They depend on the
 * shape and the processor alone, never on a timing taken at run time, so a shape always takes
 * the same path and its results stay bit-identical from run to run. */

/* From this many rows up, OpenBLAS's f32 GEMM keeps up with oneDNN's or beats it. */
#define F32_ONEDNN_MAX_M 1023
/* Where bf16 dot products only match the f32 rate, a bf16 GEMM still wins up to this many rows:
 * there it costs about what the f32 GEMM does, and it skips widening the whole weight to f32,
 * which at few rows costs as much as the GEMM itself. */
#define BF16_AS_F32_MAX_M 48

#ifdef DS_HAVE_ONEDNN
/* Whether an f32 GEMM with M rows runs on oneDNN rather than OpenBLAS. */
static int f32_via_onednn(int64_t m)
{
    return m <= F32_ONEDNN_MAX_M;
}
#endif

/* Whether a GEMM of bf16 operands with M rows runs on oneDNN in bf16 (else both operands are
 * widened to f32). */
static int bf16_via_onednn(int64_t m)
{
#ifdef DS_HAVE_ONEDNN
    switch (ds__onednn_bf16_rate()) {
    case DS__BF16_FAST: return 1;
    case DS__BF16_AS_F32: return m <= BF16_AS_F32_MAX_M;
    default: return 0;
    }
#else
    (void)m;
    return 0;
#endif
}

/* acc[M, N] (row stride ldc) = alpha * x[M, K] @ w[N, K]^T + beta * acc in f32 through
 * OpenBLAS. */
static int sgemm_xwt(ds_backend *b, int64_t m, int64_t n, int64_t k, float alpha, const float *x,
                     const float *w, float beta, float *acc, int64_t ldc, ds_error *err)
{
    ds__gemm_part g = {.batch = 1, .m = m, .n = n, .k = k, .lda = k, .ldb = k, .ldc = ldc,
                       .sa = m * k, .sb = n * k, .sc = m * ldc, .trans_a = 0, .trans_b = 1,
                       .esize = sizeof(float), .alpha = alpha, .beta = beta, .a = x, .b = w,
                       .c = acc};
    return ds__openblas_sgemm(b, &g, err);
}

/* Whether an f32 GEMM with M rows runs on oneDNN (else OpenBLAS). `widened`: the weight is a
 * block just widened to f32 from another dtype; those stay on OpenBLAS, which was faster on
 * them in every measurement (bench/README.md). */
static int f32_gemm_on_onednn(int64_t m, int widened)
{
#ifdef DS_HAVE_ONEDNN
    return !widened && f32_via_onednn(m);
#else
    (void)m;
    (void)widened;
    return 0;
#endif
}

/* acc[M, N] (row stride ldc) = x[M, K] @ w[N, K]^T with x and w both `dtype` (f32, or bf16 when
 * oneDNN is built), times alpha when *scaled is set on return (else the caller scales); `widened`
 * as for f32_gemm_on_onednn. `accumulate`: add to what acc holds (only where the GEMM runs on
 * OpenBLAS, which takes it as beta = 1 for free). */
static int gemm_xwt(ds_backend *b, ds_dtype dtype, int64_t m, int64_t n, int64_t k, float alpha,
                    const void *x, const void *w, int widened, int accumulate, float *acc,
                    int64_t ldc, int *scaled, ds_error *err)
{
#ifdef DS_HAVE_ONEDNN
    if (dtype == DS_BF16 || f32_gemm_on_onednn(m, widened)) {
        /* Scales are left to the epilogue: they differ per fp8 weight, and one primitive per
         * scale would crowd the cache. */
        *scaled = 0;
        ds__gemm g = {1, m, n, k, ldc, 0, 1, dtype, 1.0f, x, w, acc};
        return ds__onednn_gemm(b, &g, err);
    }
#else
    (void)widened;
#endif
    (void)dtype;
    *scaled = 1;
    return sgemm_xwt(b, m, n, k, alpha, x, w, accumulate ? 1.0f : 0.0f, acc, ldc, err);
}

/* Weight rows per converted block: an even split of the weight into blocks of at most
 * WEIGHT_BLOCK_BYTES in `esize`-byte elements, rounded up to whole register tiles. A weight
 * stored in the compute dtype runs in the same blocks as a converted one, so an fp8 weight and
 * its bf16 rounding give bit-identical results. */
static int64_t block_rows(int64_t n, int64_t k, size_t esize)
{
    int64_t per = WEIGHT_BLOCK_BYTES / (int64_t)esize / k;
    if (per >= n)
        return n;
    if (per < 64)
        return per < 1 ? 1 : per;
    int64_t blocks = (n + per - 1) / per;
    int64_t rows = (n + blocks - 1) / blocks;
    rows = (rows + 63) / 64 * 64;
    return rows > per ? per - per % 64 : rows;
}

/* Up to this many rows a linear with bf16 activations runs on the dot-product kernel where it
 * is available: from 5 to 128 rows it took 0.66 to 0.95 of the time of the path before it
 * (oneDNN in bf16 up to 48 rows, both operands widened for OpenBLAS above), at 160 rows 1.10
 * (bench/README.md).
 * With f32 activations the libraries' f32 GEMMs keep up with it, and those stay: a weight widened
 * per call and its copy converted to f32 once must take the same path to give the same bits.
 * The rule depends on M and x's dtype alone, so a bf16 weight and an fp8 weight of the same
 * values take the same kernel and give the same bits. */
#define DOT_MAX_M 128

/* Whether a linear of M rows with x of this dtype runs on the dot-product kernel. Where
 * oneDNN's bf16 GEMM is faster than f32 multiply-adds, bf16 stays there. */
static int linear_on_dot_kernel(int64_t m, ds_dtype x)
{
    if (x != DS_BF16 || m <= SMALL_M_MAX || m > DOT_MAX_M || !ds__gemm_dot_available())
        return 0;
#ifdef DS_HAVE_ONEDNN
    if (ds__onednn_bf16_rate() == DS__BF16_FAST)
        return 0;
#endif
    return 1;
}

/* The compute dtype of a linear's GEMM with M rows: bf16 when x is bf16, the weight's values are
 * exact in bf16 (bf16 or fp8) and bf16_via_onednn says so; f32 otherwise (both operands
 * widened). */
static ds_dtype linear_compute_dtype(ds_dtype x, ds_dtype w, int64_t m)
{
    if (x == DS_BF16 && (w == DS_BF16 || w == DS_F8_E4M3 || w == DS_F8_E5M2) && bf16_via_onednn(m))
        return DS_BF16;
    return DS_F32;
}

typedef struct convert_bf16_job {
    const void *src;
    ds_dtype dtype;
    uint16_t *dst;
} convert_bf16_job;

static void convert_bf16_range(void *ctx, int64_t begin, int64_t end)
{
    const convert_bf16_job *j = ctx;
    size_t esize = ds_dtype_size(j->dtype);
    ds_convert((const char *)j->src + (size_t)begin * esize, j->dtype, (size_t)(end - begin),
               DS_BF16, j->dst + begin);
}

/* The weight w [N, K] widened whole to f32 into the calling thread's staging slot (kept from
 * call to call, so its pages stay mapped); NULL with err set when it cannot be allocated. */
static const float *widen_whole(ds_backend *b, const ds_tensor *w, ds_error *err)
{
    int64_t n = w->shape[0], k = w->shape[1];
    float *staging = NULL;
    if ((uint64_t)n * (uint64_t)k <= SIZE_MAX / sizeof(float))
        staging = ds__cpu_scratch_slot(DS__CPU_SCRATCH_GEMM_STAGING,
                                       (size_t)(n * k) * sizeof(float));
    if (!staging) {
        ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "linear: out of memory widening a [%lld, "
                     "%lld] %s weight to f32", (long long)n, (long long)k, ds_dtype_name(w->dtype));
        return NULL;
    }
    to_f32(b, w->data, w->dtype, n * k, staging);
    return staging;
}

const char *ds_cpu_linear_path(int64_t m, ds_dtype x, ds_dtype w)
{
    if (m <= SMALL_M_MAX)
        return "few-row kernel, f32 (weight read once)";
    if (linear_on_dot_kernel(m, x))
        return w == DS_F32 || w == DS_BF16 ? "dot-product kernel, f32 (AVX-512; weight read as stored)"
                                           : "dot-product kernel, f32 (AVX-512; weight widened whole per call)";
    if (linear_compute_dtype(x, w, m) == DS_BF16)
        return w == DS_BF16 ? "onednn bf16" : "onednn bf16 (fp8 weight converted per block)";
    if (w != DS_F32 && x != DS_F32)
        return "openblas f32 (x and weight widened per call, per block)";
    if (w != DS_F32)
        return f32_gemm_on_onednn(m, 0) ? "onednn f32 (weight widened whole per call)"
                                        : "openblas f32 (weight widened whole per call)";
    return f32_gemm_on_onednn(m, 0) ? "onednn f32" : "openblas f32";
}

int ds__cpu_linear(ds_backend *b, ds_stream *s, const ds_linear_args *a, ds_error *err)
{
    (void)s;
    const ds_tensor *w = a->weight;
    int64_t n = w->shape[0], k = w->shape[1];
    if (n == 0 || ds_tensor_numel(a->y) == 0)
        return DS_OK;
    int64_t m = (int64_t)(ds_tensor_numel(a->y) / (uint64_t)n);
    if (n > INT_MAX || k > INT_MAX)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "linear: weight [%lld, %lld] exceeds "
                            "BLAS's int dimensions", (long long)n, (long long)k);

    const void *xc = NULL;
    const float *xf = NULL;
    float *x_owned = NULL, *acc_owned = NULL, *bias_f32 = NULL;
    void *w_block = NULL; /* the calling thread's staging scratch: not freed here */
    int rc = DS_OK;
    float *acc;
    float scale = 1.0f; /* what the epilogue still has to apply */
    int prefill = 0;    /* acc started as the bias rows and the GEMM added to them */
    if (a->y->dtype == DS_F32) {
        acc = a->y->data;
    } else {
        acc_owned = malloc((size_t)(m * n) * sizeof(float));
        if (!acc_owned) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "linear: out of memory for a [%lld, "
                              "%lld] f32 result", (long long)m, (long long)n);
            goto done;
        }
        acc = acc_owned;
    }
    if (a->bias) {
        bias_f32 = malloc((size_t)n * sizeof(float));
        if (!bias_f32) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "linear: out of memory");
            goto done;
        }
        ds_convert_to_f32(a->bias->data, a->bias->dtype, (size_t)n, bias_f32);
    }

    int dot = linear_on_dot_kernel(m, a->x->dtype);
    ds_dtype cd = m <= SMALL_M_MAX || dot ? DS_F32 : linear_compute_dtype(a->x->dtype, w->dtype, m);
    if (k == 0) {
        memset(acc, 0, (size_t)(m * n) * sizeof(float));
    } else if (cd == DS_BF16) {
        xc = a->x->data;
        size_t wsize = ds_dtype_size(w->dtype);
        int64_t rows = block_rows(n, k, sizeof(uint16_t));
        if (w->dtype != DS_BF16) {
            w_block = ds__cpu_scratch_slot(DS__CPU_SCRATCH_GEMM_STAGING,
                                           (size_t)(rows * k) * sizeof(uint16_t));
            if (!w_block) {
                rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "linear: out of memory for %lld "
                                  "weight rows in bf16", (long long)rows);
                goto done;
            }
        }
        int scaled = 0;
        for (int64_t n0 = 0; n0 < n && rc == DS_OK; n0 += rows) {
            int64_t nb = n - n0 < rows ? n - n0 : rows;
            const void *wb = (const char *)w->data + (size_t)(n0 * k) * wsize;
            if (w_block) {
                convert_bf16_job j = {wb, w->dtype, w_block};
                ds__cpu_parallel_for(b, nb * k, CONVERT_GRAIN, convert_bf16_range, &j);
                wb = w_block;
            }
            rc = gemm_xwt(b, DS_BF16, m, nb, k, a->weight_scale, xc, wb, 0, 0, acc + n0, n,
                          &scaled, err);
        }
        if (rc != DS_OK)
            goto done;
        if (!scaled)
            scale = a->weight_scale;
    } else {
        rc = as_f32(b, "linear", "x", a->x, &xf, &x_owned, err);
        if (rc != DS_OK)
            goto done;
        /* fp8 (and any) weight scale is applied as the GEMM's alpha where the GEMM takes it:
         * y = scale * (x @ W^T). */
        float alpha = a->weight_scale;
        int scaled = 1;
        if (m <= SMALL_M_MAX) {
            small_m_job j = {xf, w->data, w->dtype, m, n, k, alpha, acc, 0};
            ds__cpu_parallel_for(b, n, SMALL_M_GRAIN, small_m_rows, &j);
            if (j.failed) {
                rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "linear: out of memory for a "
                                  "%lld-element weight row in f32", (long long)k);
                goto done;
            }
        } else if (dot) {
            /* Weights other than f32 and bf16 (f16, fp8) are widened whole first: exact, so they
             * give the bits of their values stored f32 or bf16. */
            const void *wd = w->data;
            ds_dtype wdtype = w->dtype;
            if (wdtype != DS_F32 && wdtype != DS_BF16) {
                if (!(wd = widen_whole(b, w, err))) {
                    rc = DS_ERR_RESOURCE_EXHAUSTED;
                    goto done;
                }
                wdtype = DS_F32;
            }
            ds__gemm_dot_problem g = {m, n, k, xf, wd, wdtype, acc};
            rc = ds__gemm_dot(b, &g, err);
            scaled = 0;
        } else if (w->dtype == DS_F32 || a->x->dtype == DS_F32) {
            /* f32 activations: a weight of another dtype is widened whole and runs the very GEMM
             * a weight stored f32 of this shape runs (the library by the rows, one call over all
             * N), so widening per call, a copy converted once to f32 and an f32 file give the
             * same bits. The staging copy is the whole weight in f32, kept per calling thread:
             * up to the largest Linear of the configs served, 283 MB for Wan2.1 14B's FFN
             * (13824 x 5120), 272 MB for Qwen2.5-VL's MLP (18944 x 3584). */
            const void *wf = w->data;
            if (w->dtype != DS_F32 && !(wf = widen_whole(b, w, err))) {
                rc = DS_ERR_RESOURCE_EXHAUSTED;
                goto done;
            }
            prefill = bias_f32 && !f32_gemm_on_onednn(m, 0);
            if (prefill)
                fill_bias(b, acc, bias_f32, m, n);
            rc = gemm_xwt(b, DS_F32, m, n, k, alpha, xf, wf, 0, prefill, acc, n, &scaled,
                          err);
        } else {
            /* Activations widened too (bf16 where bf16_via_onednn declined, f16): the weight in
             * blocks of rows on OpenBLAS, as measured fastest for this case. */
            int64_t rows = block_rows(n, k, sizeof(float));
            w_block = ds__cpu_scratch_slot(DS__CPU_SCRATCH_GEMM_STAGING,
                                           (size_t)(rows * k) * sizeof(float));
            if (!w_block) {
                rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "linear: out of memory for %lld "
                                  "weight rows in f32", (long long)rows);
                goto done;
            }
            size_t wsize = ds_dtype_size(w->dtype);
            prefill = bias_f32 && !f32_gemm_on_onednn(m, 1);
            if (prefill)
                fill_bias(b, acc, bias_f32, m, n);
            for (int64_t n0 = 0; n0 < n && rc == DS_OK; n0 += rows) {
                int64_t nb = n - n0 < rows ? n - n0 : rows;
                to_f32(b, (const char *)w->data + (size_t)(n0 * k) * wsize, w->dtype, nb * k, w_block);
                rc = gemm_xwt(b, DS_F32, m, nb, k, alpha, xf, w_block, 1, prefill, acc + n0, n,
                              &scaled, err);
            }
        }
        if (rc != DS_OK)
            goto done;
        if (!scaled)
            scale = alpha;
    }

    const float *bias_left = prefill ? NULL : bias_f32;
    if (scale != 1.0f || bias_left || a->epilogue != DS_ACT_NONE || a->y->dtype != DS_F32) {
        epilogue_job j = {acc, scale, bias_left, a->epilogue, n, a->y->data, a->y->dtype};
        int64_t grain = 16384 / n + 1;
        ds__cpu_parallel_for(b, m, grain, epilogue_rows, &j);
    }
done:
    free(x_owned);
    free(acc_owned);
    free(bias_f32);
    return rc;
}

/* ---- batched matmul ---- */

typedef struct store_job {
    const float *src;
    void *dst;
    ds_dtype dtype;
} store_job;

static void store_range(void *ctx, int64_t begin, int64_t end)
{
    const store_job *j = ctx;
    ds_convert_from_f32(j->src + begin, (size_t)(end - begin), j->dtype,
                        (char *)j->dst + (size_t)begin * ds_dtype_size(j->dtype));
}

int ds__cpu_batched_matmul(ds_backend *b, ds_stream *s, const ds_batched_matmul_args *a,
                           ds_error *err)
{
    (void)s;
    int64_t batch = a->a->shape[0];
    int64_t m = a->y->shape[1], n = a->y->shape[2];
    int64_t k = a->transpose_a ? a->a->shape[1] : a->a->shape[2];
    if (batch == 0 || m == 0 || n == 0)
        return DS_OK;
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "batched_matmul: [%lld, %lld] x [%lld, "
                            "%lld] exceeds BLAS's int dimensions", (long long)m, (long long)k,
                            (long long)k, (long long)n);

    const float *af = NULL, *bf = NULL;
    float *a_owned = NULL, *b_owned = NULL, *y_owned = NULL;
    int rc = DS_OK;
    float *yf;
    if (a->y->dtype == DS_F32) {
        yf = a->y->data;
    } else {
        y_owned = malloc((size_t)(batch * m * n) * sizeof(float));
        if (!y_owned) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "batched_matmul: out of memory");
            goto done;
        }
        yf = y_owned;
    }
    if (k == 0) {
        memset(yf, 0, (size_t)(batch * m * n) * sizeof(float));
#ifdef DS_HAVE_ONEDNN
    } else if ((a->a->dtype == DS_BF16 && a->b->dtype == DS_BF16 && bf16_via_onednn(m)) ||
               f32_via_onednn(m)) {
        /* bf16 operands go as they are where bf16_via_onednn says so; anything else is widened
         * to f32 first. */
        ds_dtype cd = a->a->dtype == DS_BF16 && a->b->dtype == DS_BF16 && bf16_via_onednn(m)
                          ? DS_BF16 : DS_F32;
        const void *ap = a->a->data, *bp = a->b->data;
        if (cd == DS_F32) {
            rc = as_f32(b, "batched_matmul", "a", a->a, &af, &a_owned, err);
            if (rc == DS_OK)
                rc = as_f32(b, "batched_matmul", "b", a->b, &bf, &b_owned, err);
            if (rc != DS_OK)
                goto done;
            ap = af;
            bp = bf;
        }
        ds__gemm g = {batch, m, n, k, n, a->transpose_a, a->transpose_b, cd, a->alpha, ap, bp, yf};
        rc = ds__onednn_gemm(b, &g, err);
        if (rc != DS_OK)
            goto done;
#endif
    } else {
        rc = as_f32(b, "batched_matmul", "a", a->a, &af, &a_owned, err);
        if (rc == DS_OK)
            rc = as_f32(b, "batched_matmul", "b", a->b, &bf, &b_owned, err);
        if (rc != DS_OK)
            goto done;
        /* Row-major leading dims are the stored row lengths: a is [M, K] or [K, M] (transposed),
         * b is [K, N] or [N, K]. */
        ds__gemm_part g = {.batch = batch, .m = m, .n = n, .k = k,
                           .lda = a->transpose_a ? m : k, .ldb = a->transpose_b ? k : n,
                           .ldc = n, .sa = m * k, .sb = k * n, .sc = m * n,
                           .trans_a = a->transpose_a, .trans_b = a->transpose_b,
                           .esize = sizeof(float), .alpha = a->alpha, .beta = 0.0f, .a = af,
                           .b = bf, .c = yf};
        rc = ds__openblas_sgemm(b, &g, err);
        if (rc != DS_OK)
            goto done;
    }
    if (y_owned) {
        store_job j = {y_owned, a->y->data, a->y->dtype};
        ds__cpu_parallel_for(b, batch * m * n, CONVERT_GRAIN, store_range, &j);
    }
done:
    free(a_owned);
    free(b_owned);
    free(y_owned);
    return rc;
}
