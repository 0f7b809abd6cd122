/* The order in which the CUDA backend tries the forms of one GEMM, and what counts as "this
 * form has no algorithm here": pure host logic with no CUDA call, built into every build so
 * the CPU test suite checks it (tests/kernels/test_gemm_chain.c), with a process-wide test
 * hook that makes cuBLASLt's answers whatever a test needs.
 *
 * Forms, best first: cuBLASLt with the bias / GELU epilogue fused, cuBLASLt with the epilogue
 * run afterwards by an elementwise kernel, and a plain tiled kernel that takes any shape. A
 * form that has no algorithm queues nothing, so the next one starts from clean operands.
 *
 * cuBLASLt says "no algorithm" in many ways: NOT_SUPPORTED from the heuristic lookup, but
 * also INVALID_VALUE (an epilogue / type pairing some shapes lack), no result, a result whose
 * state is not success, or a cublasLtMatmul that refuses the algorithm the lookup chose. All
 * of them mean the same to us: cache "no algorithm" for the problem and try the next form. A
 * real fault (a broken context) then shows in the plain kernel's launch check, with its own
 * message. */
#ifndef DS_KERNELS_CUDA_GEMM_CHAIN_H
#define DS_KERNELS_CUDA_GEMM_CHAIN_H

#include <stdint.h>

#include "core/error.h"

typedef enum ds__gemm_form {
    DS_GEMM_FORM_LT_FUSED = 0, /* cuBLASLt, bias / GELU fused into its epilogue */
    DS_GEMM_FORM_LT,           /* cuBLASLt, epilogue (if any) by a kernel afterwards */
    DS_GEMM_FORM_PLAIN,        /* the plain tiled kernel, epilogue afterwards */
    DS_GEMM_FORM_COUNT
} ds__gemm_form;

const char *ds__gemm_form_name(ds__gemm_form form);

/* One try of `form`: DS_OK when the GEMM is queued, DS_ERR_UNIMPLEMENTED when the form has no
 * algorithm for it (nothing queued), any other status is an error. */
typedef int (*ds__gemm_try_fn)(void *ctx, ds__gemm_form form, ds_error *err);

/* Tries the forms from `first` on until one is queued (or fails with a real error); *used is
 * the form that ran. The plain kernel has no "no algorithm": its DS_ERR_UNIMPLEMENTED (a
 * shape beyond its grid) is returned as is. */
int ds__gemm_chain_run(ds__gemm_form first, ds__gemm_try_fn try_form, void *ctx,
                       ds__gemm_form *used, ds_error *err);

/* Whether a cublasLtMatmulAlgoGetHeuristic answer is an algorithm: `status` and
 * `result_state` are cublasStatus_t values (0 = success), `returned` the result count. The
 * test hook's forced status, when set, replaces `status`. Counts the lookup. */
int ds__gemm_lookup_found(int status, int returned, int result_state);

/* 0 normally; with the test hook set, the failing cublasStatus_t that cublasLtMatmul is to
 * "return" instead of being called. */
int ds__gemm_forced_matmul_failure(void);
/* Counts a cublasLtMatmul that failed (the problem is then cached as "no algorithm"). */
void ds__gemm_note_matmul_failure(void);

/* Test hook, process-wide: every later heuristic lookup answers `lookup_status` (negative:
 * cuBLASLt's own answer) and every later cublasLtMatmul "fails" with `matmul_status` without
 * running (0: runs normally). ds__gemm_test_force(-1, 0) turns it off. */
void ds__gemm_test_force(int lookup_status, int matmul_status);

/* What the chain did since the last reset, for tests. */
typedef struct ds__gemm_stats {
    uint64_t lookups;          /* heuristic lookups made (cache misses) */
    uint64_t matmul_failures;  /* cublasLtMatmul calls that failed, real or forced */
    uint64_t used[DS_GEMM_FORM_COUNT];
} ds__gemm_stats;

void ds__gemm_stats_get(ds__gemm_stats *out);
void ds__gemm_stats_reset(void);

#endif
