/* One GEMM cut into one single-threaded part per worker of the CPU backend's pool
 * (gemm_parts.c says why and how). */
#ifndef DS_KERNELS_CPU_GEMM_PARTS_H
#define DS_KERNELS_CPU_GEMM_PARTS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/cpu_internal.h"

/* c[i][M, N] (row stride ldc) = alpha * op(a)[i][M, K] @ op(b)[i][K, N] (+ beta * c), for
 * `batch` matrices sa, sb and sc elements apart; op(a) stored [K, M] when trans_a, op(b)
 * stored [N, K] when trans_b; lda and ldb the stored row lengths. a and b hold elements of
 * esize bytes; c is f32. A part keeps its whole GEMM's strides. */
typedef struct ds__gemm_part {
    int64_t batch, m, n, k, lda, ldb, ldc, sa, sb, sc;
    int trans_a, trans_b;
    size_t esize;
    float alpha, beta;
    const void *a, *b;
    float *c;
} ds__gemm_part;

/* Computes one part on the calling thread with the library's single-threaded kernels. */
typedef int (*ds__gemm_part_fn)(void *ctx, const ds__gemm_part *part, ds_error *err);

/* Runs `whole` as parts over b's pool (or whole on the calling thread where it is too small to
 * cut, or the pool has one thread); the first part's error is returned. */
int ds__gemm_run_parts(ds_backend *b, const ds__gemm_part *whole, ds__gemm_part_fn fn, void *ctx,
                       ds_error *err);

/* `g` in f32 (esize 4) through OpenBLAS's single-threaded sgemm, cut into parts as above
 * (gemm_openblas.c). beta = 1 adds the product to what c holds. Fails only for want of memory
 * to track the parts. */
int ds__openblas_sgemm(ds_backend *b, const ds__gemm_part *g, ds_error *err);

#endif
