/* What the CUDA backend runs on the GPU, and in which form: pure host logic over dtypes, shapes
 * and addresses, with no CUDA call, built into every build (with or without CUDA).
 *
 * The backend's `supports` slot is ds__cuda_supports; the .cu files take their compute dtypes
 * and attention form from here too, so the answer and the work agree. Nothing depends on the
 * device: this build carries sm_90 code only, and a GPU that cannot run it is refused at
 * backend creation. So tests can ask, without a GPU, whether an op a pipeline calls at its
 * real sizes runs on the GPU or falls back to the CPU (tensors need shapes, dtypes and a data
 * address, never data). */
#ifndef DS_KERNELS_CUDA_SUPPORTS_H
#define DS_KERNELS_CUDA_SUPPORTS_H

#include "kernels/backend.h"

/* Whether the CUDA backend runs `op` on these arguments (already validated by kernels/ops.c);
 * args NULL: "for some arguments". */
int ds__cuda_supports(ds_op op, const void *args);

/* Whether cuBLASLt (CUBLAS_COMPUTE_32F) writes D of dtype `out` from A/B of dtype `in`. */
int ds__cuda_gemm_d_type_ok(ds_dtype in, ds_dtype out);

/* The dtype a convolution computes in: the weight's when the input (and the cache, if any)
 * has it, else f32, into which every operand converts exactly. */
ds_dtype ds__cuda_conv_compute_dtype(const ds_tensor *x, const ds_tensor *cache,
                                     const ds_tensor *weight);

typedef enum ds__cuda_attention_form {
    DS_CUDA_ATTENTION_CPU = 0, /* not on the GPU: the CPU fallback runs it */
    DS_CUDA_ATTENTION_FLASH,   /* the fused kernel: bf16/f16, head dim 64 or 128 */
    DS_CUDA_ATTENTION_MATMUL,  /* any head dim: scores by cuBLASLt, softmax, then P V */
} ds__cuda_attention_form;

ds__cuda_attention_form ds__cuda_attention_form_for(const ds_attention_args *a);

/* The matmul form's query rows per pass: its f32 scores and 16/32-bit probabilities for
 * rows x sk stay within DS_CUDA_ATTENTION_SCRATCH bytes (at least one row). */
#define DS_CUDA_ATTENTION_SCRATCH ((size_t)256 << 20)
int64_t ds__cuda_attention_rows_per_pass(int64_t sq, int64_t sk, ds_dtype dtype);

#endif
