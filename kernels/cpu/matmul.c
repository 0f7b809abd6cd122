/* GEMMs on the CPU: linear (x @ W^T with bias and activation epilogue) and batched matmul.
 *
 * Every sgemm is issued from the calling thread with OpenBLAS's own threads (the count set in
 * cpu_backend.c), never from inside one of our parallel regions: OpenBLAS splits one large GEMM
 * well, and two thread pools nested inside each other would oversubscribe the cores. Our pool
 * does the passes around it (dtype conversions, bias + activation + store). OpenBLAS splits
 * the M and N dimensions, not K, so results do not depend on its thread count. */
#include <cblas.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/ops.h"

/* A converted block of weight rows stays under this many floats (32 MiB), so converting a large
 * bf16/fp8 weight never doubles its footprint in f32. */
#define WEIGHT_BLOCK_FLOATS ((int64_t)8 << 20)
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
        if (j->bias)
            for (int64_t c = 0; c < j->n; c++)
                row[c] += j->bias[c];
        ds__cpu_activate_row(row, j->n, j->act);
        if (j->ydtype != DS_F32)
            ds_convert_from_f32(row, (size_t)j->n, j->ydtype, (char *)j->y + (size_t)(r * j->n) * esize);
    }
}

/* ---- few-row linear ----
 *
 * With one to a few rows of x (the modulation linears on temb, a single token), sgemm spends its
 * time packing the whole weight for almost no arithmetic, and a bf16 weight would first be
 * widened in full. Here each worker streams its own block of weight rows once, widening one row
 * at a time into its scratch, and takes the dot products with every x row while that weight row
 * is in cache: the weight is read exactly once, which is all this shape costs. Each output is
 * one fixed-order sum, so results do not depend on the thread count. */
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

/* bf16 is the top half of an f32: widening is a 16-bit shift, done here in registers instead of
 * through a scratch row (the most common weight dtype; converting first halved the speed). */
typedef uint16_t v8u16 __attribute__((vector_size(16)));
typedef uint32_t v8u32 __attribute__((vector_size(32)));

static float dot_f32_bf16(const float *a, const uint16_t *b, int64_t k)
{
    v8f acc0 = {0}, acc1 = {0};
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        v8f a0, a1;
        v8u16 h0, h1;
        memcpy(&a0, a + i, sizeof a0);
        memcpy(&a1, a + i + 8, sizeof a1);
        memcpy(&h0, b + i, sizeof h0);
        memcpy(&h1, b + i + 8, sizeof h1);
        v8u32 w0 = __builtin_convertvector(h0, v8u32) << 16;
        v8u32 w1 = __builtin_convertvector(h1, v8u32) << 16;
        v8f b0, b1;
        memcpy(&b0, &w0, sizeof b0);
        memcpy(&b1, &w1, sizeof b1);
        acc0 += a0 * b0;
        acc1 += a1 * b1;
    }
    acc0 += acc1;
    float sum = 0.0f;
    for (int l = 0; l < 8; l++)
        sum += acc0[l];
    for (; i < k; i++) {
        uint32_t bits = (uint32_t)b[i] << 16;
        float w;
        memcpy(&w, &bits, sizeof w);
        sum += a[i] * w;
    }
    return sum;
}

typedef struct small_m_job {
    const float *x;   /* [m, k] f32 */
    const void *w;    /* [n, k] in wdtype */
    ds_dtype wdtype;
    int64_t m, n, k;
    float alpha;
    float *acc;       /* [m, n] */
    int failed;       /* a worker's scratch allocation failed */
} small_m_job;

static void small_m_rows(void *ctx, int64_t begin, int64_t end)
{
    small_m_job *j = ctx;
    size_t wsize = ds_dtype_size(j->wdtype);
    if (j->wdtype == DS_BF16) {
        for (int64_t c = begin; c < end; c++) {
            const uint16_t *w = (const uint16_t *)j->w + c * j->k;
            for (int64_t r = 0; r < j->m; r++)
                j->acc[r * j->n + c] = j->alpha * dot_f32_bf16(j->x + r * j->k, w, j->k);
        }
        return;
    }
    float *wrow = NULL;
    if (j->wdtype != DS_F32) {
        wrow = ds__cpu_scratch((size_t)j->k * sizeof(float));
        if (!wrow) {
            __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
            return;
        }
    }
    for (int64_t c = begin; c < end; c++) {
        const float *w = (const float *)((const char *)j->w + (size_t)(c * j->k) * wsize);
        if (wrow) {
            ds_convert_to_f32(w, j->wdtype, (size_t)j->k, wrow);
            w = wrow;
        }
        for (int64_t r = 0; r < j->m; r++)
            j->acc[r * j->n + c] = j->alpha * dot_f32(j->x + r * j->k, w, j->k);
    }
}

/* acc[M, N] (row stride ldc) = alpha * x[M, K] @ w[N, K]^T, with M split where it exceeds
 * BLAS's int. */
static void gemm_xwt(int64_t m, int64_t n, int64_t k, float alpha, const float *x, const float *w,
                     float *acc, int64_t ldc)
{
    const int64_t most = INT_MAX / 2;
    for (int64_t m0 = 0; m0 < m; m0 += most) {
        int64_t mb = m - m0 < most ? m - m0 : most;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)mb, (int)n, (int)k, alpha,
                    x + m0 * k, (int)k, w, (int)k, 0.0f, acc + m0 * ldc, (int)ldc);
    }
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

    const float *xf = NULL;
    float *x_owned = NULL, *acc_owned = NULL, *w_block = NULL, *bias_f32 = NULL;
    int rc = DS_OK;
    float *acc;
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

    if (k == 0) {
        memset(acc, 0, (size_t)(m * n) * sizeof(float));
    } else {
        rc = as_f32(b, "linear", "x", a->x, &xf, &x_owned, err);
        if (rc != DS_OK)
            goto done;
        /* fp8 (and any) weight scale is applied as sgemm's alpha: y = scale * (x @ W^T). */
        float alpha = a->weight_scale;
        if (m <= SMALL_M_MAX) {
            small_m_job j = {xf, w->data, w->dtype, m, n, k, alpha, acc, 0};
            ds__cpu_parallel_for(b, n, SMALL_M_GRAIN, small_m_rows, &j);
            if (j.failed) {
                rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "linear: out of memory for a "
                                  "%lld-element weight row in f32", (long long)k);
                goto done;
            }
        } else if (w->dtype == DS_F32) {
            gemm_xwt(m, n, k, alpha, xf, w->data, acc, n);
        } else {
            int64_t rows = WEIGHT_BLOCK_FLOATS / k;
            if (rows >= n)
                rows = n;
            else if (rows >= 64)
                rows -= rows % 64; /* whole register tiles for OpenBLAS's kernels */
            else if (rows < 1)
                rows = 1;
            w_block = malloc((size_t)(rows * k) * sizeof(float));
            if (!w_block) {
                rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "linear: out of memory for %lld "
                                  "weight rows in f32", (long long)rows);
                goto done;
            }
            size_t wsize = ds_dtype_size(w->dtype);
            for (int64_t n0 = 0; n0 < n; n0 += rows) {
                int64_t nb = n - n0 < rows ? n - n0 : rows;
                to_f32(b, (const char *)w->data + (size_t)(n0 * k) * wsize, w->dtype, nb * k, w_block);
                gemm_xwt(m, nb, k, alpha, xf, w_block, acc + n0, n);
            }
        }
    }

    if (bias_f32 || a->epilogue != DS_ACT_NONE || a->y->dtype != DS_F32) {
        epilogue_job j = {acc, bias_f32, a->epilogue, n, a->y->data, a->y->dtype};
        int64_t grain = 16384 / n + 1;
        ds__cpu_parallel_for(b, m, grain, epilogue_rows, &j);
    }
done:
    free(x_owned);
    free(acc_owned);
    free(w_block);
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
    } else {
        rc = as_f32(b, "batched_matmul", "a", a->a, &af, &a_owned, err);
        if (rc == DS_OK)
            rc = as_f32(b, "batched_matmul", "b", a->b, &bf, &b_owned, err);
        if (rc != DS_OK)
            goto done;
        /* Row-major leading dims are the stored row lengths: a is [M, K] or [K, M] (transposed),
         * b is [K, N] or [N, K]. */
        int lda = (int)(a->transpose_a ? m : k), ldb = (int)(a->transpose_b ? k : n);
        for (int64_t i = 0; i < batch; i++)
            cblas_sgemm(CblasRowMajor, a->transpose_a ? CblasTrans : CblasNoTrans,
                        a->transpose_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, a->alpha,
                        af + i * m * k, lda, bf + i * k * n, ldb, 0.0f, yf + i * m * n, (int)n);
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
