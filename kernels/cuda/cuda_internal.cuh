/* Shared by the CUDA backend's files (host side): the backend's private state, streams with
 * their scratch memory, the checked-call macros and each file's entry points.
 *
 * One file per op family: cuda_backend.cu (table, memory, streams, events, supports),
 * cuda_gemm.cu (cuBLASLt linear and batched matmul, and the GEMM that convolutions use),
 * cuda_attention.cu, cuda_fused.cu (norms, elementwise, RoPE, casts), cuda_movement.cu (data
 * movement, embedding, convolutions); their host logic that tests check without a GPU is C:
 * cuda_supports.c (what runs on the GPU, in which form) and cuda_gemm_chain.c (the order GEMM
 * forms are tried in). Slots may assume kernels/ops.c validated their
 * arguments and that `supports` said yes. Every slot runs on its stream without synchronising
 * (embedding alone waits, to report bad ids). */
#ifndef DS_KERNELS_CUDA_INTERNAL_CUH
#define DS_KERNELS_CUDA_INTERNAL_CUH

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <mutex>

#include <cublasLt.h>
#include <cuda_runtime.h>

extern "C" {
#include "kernels/backend.h"
#include "kernels/ops.h"
#include "kernels/cuda/cuda_gemm_chain.h"
#include "kernels/cuda/cuda_supports.h"
}

/* Records "<call> failed at <file>:<line>: <library error>" in err and returns the status:
 * RESOURCE_EXHAUSTED for out-of-memory, INTERNAL otherwise. Never aborts. Clears CUDA's
 * last-error state so a recoverable error (an allocation) does not poison later checks. */
int ds__cuda_error(ds_error *err, cudaError_t e, const char *call, const char *file, int line);
int ds__cublas_error(ds_error *err, cublasStatus_t st, const char *call, const char *file, int line);

/* Both need a `ds_error *err` in scope and return from the enclosing function on failure. */
#define DS_CUDA_CHECK(call)                                                                        \
    do {                                                                                           \
        cudaError_t ds_cuda_e_ = (call);                                                           \
        if (ds_cuda_e_ != cudaSuccess)                                                             \
            return ds__cuda_error(err, ds_cuda_e_, #call, __FILE__, __LINE__);                     \
    } while (0)

#define DS_CUBLAS_CHECK(call)                                                                      \
    do {                                                                                           \
        cublasStatus_t ds_cublas_s_ = (call);                                                      \
        if (ds_cublas_s_ != CUBLAS_STATUS_SUCCESS)                                                 \
            return ds__cublas_error(err, ds_cublas_s_, #call, __FILE__, __LINE__);                 \
    } while (0)

/* After every kernel launch: a bad configuration or a missing kernel image shows here. */
#define DS_KERNEL_CHECK(name)                                                                      \
    do {                                                                                           \
        cudaError_t ds_cuda_e_ = cudaGetLastError();                                               \
        if (ds_cuda_e_ != cudaSuccess)                                                             \
            return ds__cuda_error(err, ds_cuda_e_, name " kernel launch", __FILE__, __LINE__);     \
    } while (0)

/* Propagates a ds status from a helper. */
#define DS_TRY(expr)                                                                               \
    do {                                                                                           \
        int ds_try_rc_ = (expr);                                                                   \
        if (ds_try_rc_ != DS_OK)                                                                   \
            return ds_try_rc_;                                                                     \
    } while (0)

/* cuBLASLt workspace per stream: enough for every heuristic's choice at our sizes. */
#define DS_CUDA_WORKSPACE_BYTES ((size_t)32 << 20)

/* A stream with what work on it needs: the cuBLASLt workspace and a grow-only scratch buffer,
 * both used only by work queued on this stream, so concurrent streams never share them.
 * `lock` is held while an op queues work, so host threads sharing a stream (the default one)
 * cannot grow the scratch under each other. */
struct ds_stream {
    cudaStream_t stream;
    void *workspace;        /* DS_CUDA_WORKSPACE_BYTES, allocated on the first GEMM */
    void *scratch;          /* stream-ordered allocation when the device has memory pools */
    size_t scratch_bytes;
    void *pinned;           /* 16 bytes of page-locked host memory (embedding's error flag) */
    std::mutex lock;
};

struct ds_event {
    cudaEvent_t event;
};

typedef struct ds__cuda_gemm_cache ds__cuda_gemm_cache;

typedef struct ds__cuda {
    int device;
    int cc_major, cc_minor;
    int sm_count;
    int mem_pools;            /* cudaMallocAsync usable */
    int fp8_compute;          /* DS_CUDA_FP8_COMPUTE=1: fp8 weights run as fp8 GEMMs (see cuda_gemm.cu) */
    cublasLtHandle_t lt;
    ds_stream *default_stream;
    ds__cuda_gemm_cache *gemm_cache;
} ds__cuda;

static inline ds__cuda *ds__cuda_of(const ds_backend *b) { return (ds__cuda *)b->impl; }

/* Makes the backend's device current for this host thread and resolves NULL to the default
 * stream. */
int ds__cuda_enter(ds_backend *b, ds_stream *s, ds_stream **out, ds_error *err);

/* A scratch region of at least `bytes` for work queued on s (caller holds s->lock). Valid
 * until the next ds__cuda_scratch call on s: an op asks once and carves its pieces. */
int ds__cuda_scratch(ds__cuda *c, ds_stream *s, size_t bytes, void **out, ds_error *err);
/* Rounds a scratch piece up so the next one stays 256-byte aligned. */
static inline size_t ds__cuda_round_up(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

/* Blocks for a launch over n items with `threads` per block, capped so grid-stride loops
 * cover the rest (enough blocks in flight to saturate the memory system). */
unsigned ds__cuda_blocks(const ds__cuda *c, uint64_t n, unsigned threads);

/* Largest power of two <= 16 dividing every value (addresses and byte counts). */
unsigned ds__cuda_alignment(uintptr_t a, uintptr_t b, uintptr_t c, uintptr_t d);

/* ---- GEMM (cuda_gemm.cu) ---- */

/* One cuBLASLt problem in its own column-major terms: for each of `batch` matrices,
 * D[m, n] = alpha * op(A)[m, k] op(B)[k, n] + beta * D (+ bias[m], with activation per epi).
 * A is stored rows_a x cols_a (m x k, or k x m when trans_a) with leading dim lda, same for
 * B; strides are in elements between batch matrices (0 = shared). */
typedef struct ds__gemm {
    int64_t m, n, k;
    int batch;
    const void *a; ds_dtype a_dtype; int trans_a; int64_t lda; int64_t stride_a;
    const void *b; ds_dtype b_dtype; int trans_b; int64_t ldb; int64_t stride_b;
    void *d; ds_dtype d_dtype; int64_t ldd; int64_t stride_d;
    float alpha, beta;
    const void *bias;          /* d_dtype, length m; NULL = none */
    int gelu;                  /* cuBLASLt's tanh-GELU epilogue */
    const float *b_scale;      /* device scalar scaling fp8 B (NULL = 1) */
} ds__gemm;

/* Runs the GEMM through cuBLASLt with a cached heuristic choice; where cuBLASLt has no
 * algorithm (any failed lookup or cublasLtMatmul: cuda_gemm_chain.h) returns
 * DS_ERR_UNIMPLEMENTED without queueing anything, so the caller can try another form. */
int ds__cuda_gemm_lt(ds__cuda *c, ds_stream *s, const ds__gemm *g, ds_error *err);
/* The same problem with cuBLASLt if it can, else a plain tiled kernel (any shape, any
 * alignment; no bias or epilogue: those must be NULL/0). */
int ds__cuda_gemm_any(ds__cuda *c, ds_stream *s, const ds__gemm *g, ds_error *err);
int ds__cuda_gemm_cache_create(ds__cuda *c, ds_error *err);
void ds__cuda_gemm_cache_destroy(ds__cuda *c);

int ds__cuda_linear(ds_backend *b, ds_stream *s, const ds_linear_args *a, ds_error *err);
int ds__cuda_batched_matmul(ds_backend *b, ds_stream *s, const ds_batched_matmul_args *a,
                            ds_error *err);

/* ---- Attention (cuda_attention.cu) ---- */

int ds__cuda_attention_init(ds__cuda *c, ds_error *err);
int ds__cuda_attention(ds_backend *b, ds_stream *s, const ds_attention_args *a, ds_error *err);

/* ---- Fused elementwise and row kernels (cuda_fused.cu) ---- */

/* y[i] = act(x[i] + bias[i % n]) over rows x n elements, any float dtypes (x may be y, NULL
 * reads as zeros, bias may be NULL); the GEMMs' unfused epilogue. */
int ds__cuda_bias_act(ds__cuda *c, ds_stream *s, const void *x, ds_dtype x_dtype, const void *bias,
                      ds_dtype bias_dtype, ds_activation act, void *y, ds_dtype y_dtype,
                      int64_t rows, int64_t n, ds_error *err);
/* y[b, ch, i] = value[ch] for y [batch, channels, inner] (a convolution's bias, before its
 * GEMM accumulates onto it). */
int ds__cuda_fill_channels(ds__cuda *c, ds_stream *s, const void *value, ds_dtype value_dtype,
                           void *y, ds_dtype y_dtype, int64_t batch, int64_t channels,
                           int64_t inner, ds_error *err);
/* dst = src converted, n elements, between the dtypes ds_cast takes (same rounding). */
int ds__cuda_convert(ds__cuda *c, ds_stream *s, const void *src, ds_dtype src_dtype, void *dst,
                     ds_dtype dst_dtype, uint64_t n, ds_error *err);

int ds__cuda_layer_norm(ds_backend *b, ds_stream *s, const ds_layer_norm_args *a, ds_error *err);
int ds__cuda_rms_norm(ds_backend *b, ds_stream *s, const ds_rms_norm_args *a, ds_error *err);
int ds__cuda_group_norm(ds_backend *b, ds_stream *s, const ds_group_norm_args *a, ds_error *err);
int ds__cuda_channel_rms_norm(ds_backend *b, ds_stream *s, const ds_channel_rms_norm_args *a,
                              ds_error *err);
int ds__cuda_softmax(ds_backend *b, ds_stream *s, const ds_softmax_args *a, ds_error *err);
int ds__cuda_activation(ds_backend *b, ds_stream *s, const ds_activation_args *a, ds_error *err);
int ds__cuda_rope(ds_backend *b, ds_stream *s, const ds_rope_args *a, ds_error *err);
int ds__cuda_timestep_embedding(ds_backend *b, ds_stream *s, const ds_timestep_embedding_args *a,
                                ds_error *err);
int ds__cuda_binary(ds_backend *b, ds_stream *s, const ds_binary_args *a, ds_error *err);
int ds__cuda_modulate(ds_backend *b, ds_stream *s, const ds_modulate_args *a, ds_error *err);
int ds__cuda_gated_residual(ds_backend *b, ds_stream *s, const ds_gated_residual_args *a,
                            ds_error *err);
int ds__cuda_scale(ds_backend *b, ds_stream *s, const ds_scale_args *a, ds_error *err);
int ds__cuda_clamp(ds_backend *b, ds_stream *s, const ds_clamp_args *a, ds_error *err);
int ds__cuda_cast(ds_backend *b, ds_stream *s, const ds_cast_args *a, ds_error *err);

/* ---- Data movement and convolutions (cuda_movement.cu) ---- */

int ds__cuda_concat(ds_backend *b, ds_stream *s, const ds_concat_args *a, ds_error *err);
int ds__cuda_slice(ds_backend *b, ds_stream *s, const ds_slice_args *a, ds_error *err);
int ds__cuda_permute(ds_backend *b, ds_stream *s, const ds_permute_args *a, ds_error *err);
int ds__cuda_patchify(ds_backend *b, ds_stream *s, const ds_patchify_args *a, ds_error *err);
int ds__cuda_unpatchify(ds_backend *b, ds_stream *s, const ds_patchify_args *a, ds_error *err);
int ds__cuda_pad(ds_backend *b, ds_stream *s, const ds_pad_args *a, ds_error *err);
int ds__cuda_upsample_nearest2x(ds_backend *b, ds_stream *s, const ds_upsample_args *a,
                                ds_error *err);
int ds__cuda_embedding(ds_backend *b, ds_stream *s, const ds_embedding_args *a, ds_error *err);
int ds__cuda_conv2d(ds_backend *b, ds_stream *s, const ds_conv2d_args *a, ds_error *err);
int ds__cuda_conv3d_causal(ds_backend *b, ds_stream *s, const ds_conv3d_args *a, ds_error *err);

/* Fills bytes with a repeated 32-bit pattern (little-endian, from dst). */
int ds__cuda_fill32(ds__cuda *c, ds_stream *s, void *dst, uint32_t pattern, size_t bytes,
                    ds_error *err);
/* The fill kernel's address, to ask the runtime at creation whether this build's code runs on
 * the device. */
const void *ds__cuda_probe_kernel(void);

#endif
