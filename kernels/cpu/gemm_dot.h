/* A linear's GEMM for a few dozen rows, as dot products over the weight in its stored layout.
 *
 * acc[M, N] = x[M, K] @ w[N, K]^T with x in f32 and w in f32 or bf16, read where it lies: no
 * packing pass over the weight and, for bf16, no widening pass (a bf16 value is the top half of
 * an f32, widened in registers by a 16-bit shift). At a few dozen rows such a pass costs a fair
 * share of the GEMM itself; where the processor's bf16 dot products run no faster than f32
 * multiply-adds, this beats both oneDNN's bf16 GEMM and widening for OpenBLAS there
 * (bench/README.md has the measurements). With f32 weights it runs at about the libraries' speed.
 *
 * Each output is one f32 sum in a fixed order that depends on K alone: 16-lane partial sums
 * over blocks of K, each block's lanes added by a fixed tree, the blocks added in order. So a
 * result does not depend on the thread count, and a bf16 weight gives the very bits of the same
 * values stored as f32. AVX-512 only (ds__gemm_dot_available says whether it runs here). */
#ifndef DS_KERNELS_CPU_GEMM_DOT_H
#define DS_KERNELS_CPU_GEMM_DOT_H

#include <stdint.h>

#include "core/error.h"
#include "kernels/backend.h"

typedef struct ds__gemm_dot_problem {
    int64_t m, n, k;
    const float *x; /* [M, K] f32, rows contiguous */
    const void *w;  /* [N, K] in wdtype, rows contiguous */
    ds_dtype wdtype; /* DS_F32 or DS_BF16 */
    float *acc;     /* [M, N] f32, overwritten */
} ds__gemm_dot_problem;

/* Whether the kernel runs on this processor: AVX-512 (F, BW, VL) and not turned off by
 * DS_CPU_GEMM_ISA=avx2|generic (tests use it to take the other paths on any machine). */
int ds__gemm_dot_available(void);

/* Runs g on the backend's pool. DS_OK, or RESOURCE_EXHAUSTED when a worker's scratch could not
 * be allocated (acc is then undefined). Only where ds__gemm_dot_available(). */
int ds__gemm_dot(ds_backend *b, const ds__gemm_dot_problem *g, ds_error *err);

#endif
