/* Shared by the CPU backend's files: one file per op family (matmul.c, elementwise.c,
 * attention.c, norms.c, rope.c, movement.c, conv.c), the backend table in cpu_backend.c.
 *
 * Every op function has the backend slot's signature and may assume kernels/ops.c validated its
 * arguments. Work is split over the backend's thread pool with ds__cpu_parallel_for; a split
 * that depends only on the sizes and the thread count keeps results deterministic for a given
 * thread count. Storage dtypes are converted to f32 row by row (core/float_convert.h). */
#ifndef DS_KERNELS_CPU_INTERNAL_H
#define DS_KERNELS_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"

/* Runs fn(ctx, begin, end) over [0, n) split into contiguous chunks, one per worker (at most
 * `threads` chunks; chunks of at least `grain` items), and waits for all of them. The calling
 * thread works too. Chunk boundaries depend only on n, grain and the thread count. */
typedef void (*ds__cpu_range_fn)(void *ctx, int64_t begin, int64_t end);
void ds__cpu_parallel_for(ds_backend *b, int64_t n, int64_t grain, ds__cpu_range_fn fn, void *ctx);

/* Worker threads of this backend (>= 1). */
int ds__cpu_threads(const ds_backend *b);

/* A per-thread scratch buffer of at least `bytes`, valid until the same thread asks again
 * (grows as needed; NULL on out of memory). For row conversion buffers inside parallel loops. */
void *ds__cpu_scratch(size_t bytes);

/* Per-thread scratch slots: ds__cpu_scratch is the ROWS slot (row buffers; also the scratchpad of
 * a oneDNN GEMM part on the thread that runs it); GEMM_STAGING holds a linear's weight converted
 * for the GEMM, so its pages stay mapped from one call to the next instead of faulting in anew
 * every call (a block of up to 32 MiB, or a whole weight widened to f32 under f32 activations:
 * up to the largest such Linear, 283 MB for Wan2.1 14B's FFN; per calling thread, kept until
 * the thread exits or the backend is destroyed). */
enum { DS__CPU_SCRATCH_ROWS = 0, DS__CPU_SCRATCH_GEMM_STAGING = 1, DS__CPU_SCRATCH_SLOTS = 2 };
void *ds__cpu_scratch_slot(int slot, size_t bytes);

/* v[i] = act(v[i]) in place for n floats (elementwise.c; also linear's epilogue). */
void ds__cpu_activate_row(float *v, int64_t n, ds_activation act);

/* One GEMM, or `batch` of them back to back: c[i][M, N] (row stride ldc; batches m * ldc apart)
 * = alpha * op(a)[i][M, K] @ op(b)[i][K, N], op(a) stored [K, M] when trans_a, op(b) stored
 * [N, K] when trans_b (a linear's weight), batches m * k and k * n elements apart. a and b are
 * both `dtype` (f32 or bf16); c is f32. (gemm_onednn.c, built with DS_HAVE_ONEDNN.) */
typedef struct ds__gemm {
    int64_t batch, m, n, k, ldc;
    int trans_a, trans_b;
    ds_dtype dtype;
    float alpha;
    const void *a, *b;
    float *c;
} ds__gemm;
int ds__onednn_gemm(ds_backend *b, const ds__gemm *g, ds_error *err);
/* "onednn 2.6.3 isa avx512_core_bf16": the library and the ISA its kernels use here. */
void ds__onednn_describe(char *buf, size_t size);
/* What oneDNN's bf16 GEMMs run at here: no bf16 instructions (emulated: slower than widening to
 * f32), bf16 dot products at the f32 multiply-add rate, or faster than f32. */
typedef enum ds__bf16_rate { DS__BF16_NONE, DS__BF16_AS_F32, DS__BF16_FAST } ds__bf16_rate;
ds__bf16_rate ds__onednn_bf16_rate(void);

/* One convolution as conv.c describes it to its two engines: a conv3d over x's t frames behind
 * `front` frames of time padding (zeros, then the last tc of which are the cache's frames), a
 * conv2d as one frame with kt 1 and front 0. */
typedef struct ds__conv_problem {
    int64_t batch, cin, cout;
    int64_t t, h, w;       /* x's frames and spatial size */
    int64_t kt, kh, kw;
    int64_t st, sh, sw;
    int64_t front;         /* frames in front of x: zeros, then the cache's tc frames */
    int64_t pad_top, pad_left;
    int64_t ot, oh, ow;
    const void *x;
    ds_dtype x_dtype;
    const void *cache;     /* [B, Cin, tc, H, W] or NULL */
    ds_dtype cache_dtype;
    int64_t tc;
    const ds_tensor *weight, *bias;
    const ds_tensor *y;
} ds__conv_problem;
/* Whether oneDNN's convolution takes p (dtypes, padding it expresses, memory bound), and the
 * convolution itself (conv_onednn.c, built with DS_HAVE_ONEDNN); `op` names it in errors. */
int ds__onednn_conv_supported(const ds__conv_problem *p);
int ds__onednn_conv(ds_backend *b, const ds__conv_problem *p, const char *op, ds_error *err);

int ds__cpu_linear(ds_backend *b, ds_stream *s, const ds_linear_args *a, ds_error *err);
int ds__cpu_batched_matmul(ds_backend *b, ds_stream *s, const ds_batched_matmul_args *a, ds_error *err);
int ds__cpu_attention(ds_backend *b, ds_stream *s, const ds_attention_args *a, ds_error *err);
int ds__cpu_layer_norm(ds_backend *b, ds_stream *s, const ds_layer_norm_args *a, ds_error *err);
int ds__cpu_rms_norm(ds_backend *b, ds_stream *s, const ds_rms_norm_args *a, ds_error *err);
int ds__cpu_group_norm(ds_backend *b, ds_stream *s, const ds_group_norm_args *a, ds_error *err);
int ds__cpu_channel_rms_norm(ds_backend *b, ds_stream *s, const ds_channel_rms_norm_args *a, ds_error *err);
int ds__cpu_softmax(ds_backend *b, ds_stream *s, const ds_softmax_args *a, ds_error *err);
int ds__cpu_activation(ds_backend *b, ds_stream *s, const ds_activation_args *a, ds_error *err);
int ds__cpu_rope(ds_backend *b, ds_stream *s, const ds_rope_args *a, ds_error *err);
int ds__cpu_timestep_embedding(ds_backend *b, ds_stream *s, const ds_timestep_embedding_args *a, ds_error *err);
int ds__cpu_binary(ds_backend *b, ds_stream *s, const ds_binary_args *a, ds_error *err);
int ds__cpu_modulate(ds_backend *b, ds_stream *s, const ds_modulate_args *a, ds_error *err);
int ds__cpu_gated_residual(ds_backend *b, ds_stream *s, const ds_gated_residual_args *a, ds_error *err);
int ds__cpu_scale(ds_backend *b, ds_stream *s, const ds_scale_args *a, ds_error *err);
int ds__cpu_clamp(ds_backend *b, ds_stream *s, const ds_clamp_args *a, ds_error *err);
int ds__cpu_concat(ds_backend *b, ds_stream *s, const ds_concat_args *a, ds_error *err);
int ds__cpu_slice(ds_backend *b, ds_stream *s, const ds_slice_args *a, ds_error *err);
int ds__cpu_permute(ds_backend *b, ds_stream *s, const ds_permute_args *a, ds_error *err);
int ds__cpu_patchify(ds_backend *b, ds_stream *s, const ds_patchify_args *a, ds_error *err);
int ds__cpu_unpatchify(ds_backend *b, ds_stream *s, const ds_patchify_args *a, ds_error *err);
int ds__cpu_pad(ds_backend *b, ds_stream *s, const ds_pad_args *a, ds_error *err);
int ds__cpu_upsample_nearest2x(ds_backend *b, ds_stream *s, const ds_upsample_args *a, ds_error *err);
int ds__cpu_embedding(ds_backend *b, ds_stream *s, const ds_embedding_args *a, ds_error *err);
int ds__cpu_conv2d(ds_backend *b, ds_stream *s, const ds_conv2d_args *a, ds_error *err);
int ds__cpu_conv3d_causal(ds_backend *b, ds_stream *s, const ds_conv3d_args *a, ds_error *err);
int ds__cpu_cast(ds_backend *b, ds_stream *s, const ds_cast_args *a, ds_error *err);

#endif
