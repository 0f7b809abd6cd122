/* Compute backends: one table of function pointers per backend (DESIGN §4.3, §8).
 *
 * Callers never call a slot directly: kernels/ops.h validates shapes and dtypes once, for every
 * backend, then calls the slot, or falls back to the CPU backend when the backend's `supports`
 * says no (copying operands to host memory and the result back). So a slot may assume its
 * arguments are valid as documented in ops.h, and a backend may leave an op slot NULL: the
 * fallback covers it.
 *
 * Tensors are contiguous, row-major and live in one backend's memory (`backend`). Arithmetic is
 * fp32 (fp64 where an op says so) whatever the storage dtype; storage dtypes are converted on
 * the fly, rounding to nearest even when results are stored.
 *
 * Streams order work on a backend: ops and copies issued on one stream run in issue order; work
 * on different streams may overlap. NULL is the backend's default stream. Events mark a point in
 * a stream that another stream or the host can wait for. On the CPU backend every call completes
 * before it returns, so streams and events are trivially satisfied.
 */
#ifndef DS_KERNELS_BACKEND_H
#define DS_KERNELS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/error.h"
#include "core/state_dict.h" /* DS_MAX_DIMS */

typedef struct ds_backend ds_backend;
typedef struct ds_stream ds_stream; /* opaque, backend-specific */
typedef struct ds_event ds_event;   /* opaque, backend-specific */

typedef struct ds_tensor {
    ds_dtype dtype;
    int ndim;
    int64_t shape[DS_MAX_DIMS];
    void *data;          /* contiguous row-major, in `backend`'s memory */
    ds_backend *backend; /* who allocated `data` (or whose memory it is); never NULL for op operands */
} ds_tensor;

/* Activations, also used as fused GEMM epilogues. */
typedef enum ds_activation {
    DS_ACT_NONE = 0,
    DS_ACT_SILU,         /* x * sigmoid(x) */
    DS_ACT_GELU_ERF,     /* 0.5 x (1 + erf(x / sqrt 2)) */
    DS_ACT_GELU_TANH,    /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
    DS_ACT_GELU_SIGMOID, /* x * sigmoid(1.702 x): Qwen-Image's MLP */
    DS_ACT_COUNT
} ds_activation;

typedef enum ds_op {
    DS_OP_LINEAR = 0,
    DS_OP_BATCHED_MATMUL,
    DS_OP_ATTENTION,
    DS_OP_LAYER_NORM,
    DS_OP_RMS_NORM,
    DS_OP_GROUP_NORM,
    DS_OP_CHANNEL_RMS_NORM,
    DS_OP_SOFTMAX,
    DS_OP_ACTIVATION,
    DS_OP_ROPE,
    DS_OP_TIMESTEP_EMBEDDING,
    DS_OP_BINARY,
    DS_OP_MODULATE,
    DS_OP_GATED_RESIDUAL,
    DS_OP_SCALE,
    DS_OP_CLAMP,
    DS_OP_CONCAT,
    DS_OP_SLICE,
    DS_OP_PERMUTE,
    DS_OP_PATCHIFY,
    DS_OP_UNPATCHIFY,
    DS_OP_PAD,
    DS_OP_UPSAMPLE_NEAREST2X,
    DS_OP_EMBEDDING,
    DS_OP_CONV2D,
    DS_OP_CONV3D_CAUSAL,
    DS_OP_CAST,
    DS_OP_COUNT
} ds_op;

const char *ds_op_name(ds_op op);
const char *ds_activation_name(ds_activation act);

/* ---- Op arguments. Shapes use the letters of the comment; every tensor is contiguous. ---- */

/* y[..., N] = act(x[..., K] @ weight[N, K]^T * weight_scale + bias[N]).
 * x, y: f32/bf16/f16. weight: f32/bf16/f16/f8_e4m3/f8_e5m2 (fp8 storage is dequantised as
 * value * weight_scale; weight_scale is 1 for other dtypes). bias: NULL or f32/bf16/f16. */
typedef struct ds_linear_args {
    const ds_tensor *x;
    const ds_tensor *weight;
    const ds_tensor *bias;
    float weight_scale;
    ds_activation epilogue;
    ds_tensor *y;
} ds_linear_args;

/* y[B, M, N] = alpha * op(a)[B, M, K] @ op(b)[B, K, N], op = transpose when the flag is set
 * (a stored [B, K, M], b stored [B, N, K]). f32/bf16/f16. */
typedef struct ds_batched_matmul_args {
    const ds_tensor *a;
    const ds_tensor *b;
    int transpose_a;
    int transpose_b;
    float alpha;
    ds_tensor *y;
} ds_batched_matmul_args;

/* Scaled dot-product attention in the layout linear projections produce:
 * q[B, Sq, Hq, D], k/v[B, Sk, Hkv, D], out[B, Sq, Hq, D]; Hq % Hkv == 0 (grouped-query: query
 * head h uses kv head h / (Hq / Hkv)). Any D (the CUDA backend's fused kernel takes 64 and 128
 * in bf16/f16; other cases run as bounded GEMM passes there).
 * scale: usually 1/sqrt(D). causal: query i sees keys j <= i + (Sk - Sq) (aligned at the end,
 * as PyTorch's is_causal for Sq == Sk). key_mask: NULL or u8/bool [B, Sk], nonzero = attend.
 * A query row whose keys are all masked gets zeros. Never materialises [Sq, Sk]. */
typedef struct ds_attention_args {
    const ds_tensor *q;
    const ds_tensor *k;
    const ds_tensor *v;
    const ds_tensor *key_mask;
    float scale;
    int causal;
    ds_tensor *out;
} ds_attention_args;

/* Over the last dim C: y = (x - mean) / sqrt(var + eps) * weight + bias (population variance).
 * weight, bias: NULL (no affine) or [C]. */
typedef struct ds_layer_norm_args {
    const ds_tensor *x;
    const ds_tensor *weight;
    const ds_tensor *bias;
    float eps;
    ds_tensor *y;
} ds_layer_norm_args;

/* Over the last dim C: y = x * rsqrt(mean(x^2) + eps) * weight. weight: NULL or [C]. Per-head
 * RMSNorm is this with x viewed as [..., H, D] and C = D. */
typedef struct ds_rms_norm_args {
    const ds_tensor *x;
    const ds_tensor *weight;
    float eps;
    ds_tensor *y;
} ds_rms_norm_args;

/* x[B, C, *spatial]: normalise each of `groups` channel groups over (C/groups) * spatial, then
 * per-channel weight[C] and bias[C] (each may be NULL). */
typedef struct ds_group_norm_args {
    const ds_tensor *x;
    int groups;
    const ds_tensor *weight;
    const ds_tensor *bias;
    float eps;
    ds_tensor *y;
} ds_group_norm_args;

/* The Wan/Qwen-Image VAE's RMS_norm: x[B, C, *spatial], for every spatial position
 * y = x / max(||x[:, c]||_2 over C, eps) * sqrt(C) * gamma[C] (+ bias[C] if not NULL);
 * F.normalize semantics, eps 1e-12 upstream. */
typedef struct ds_channel_rms_norm_args {
    const ds_tensor *x;
    const ds_tensor *gamma;
    const ds_tensor *bias;
    float eps;
    ds_tensor *y;
} ds_channel_rms_norm_args;

/* Softmax over the last dim, computed with the max subtracted. */
typedef struct ds_softmax_args {
    const ds_tensor *x;
    ds_tensor *y;
} ds_softmax_args;

typedef struct ds_activation_args {
    const ds_tensor *x;
    ds_activation activation;
    ds_tensor *y;
} ds_activation_args;

typedef enum ds_rope_style {
    DS_ROPE_INTERLEAVED = 0, /* pairs (x[2i], x[2i+1]) as complex numbers: Qwen-Image, Wan */
    DS_ROPE_HALF_SPLIT = 1,  /* pairs (x[i], x[i + D/2]): rotate_half, Qwen2.5 / HF Llama */
} ds_rope_style;

/* x[B, S, H, D] rotated per position s and pair i by the angle whose cos/sin are
 * cos[S, D/2], sin[S, D/2] (f32, precomputed by the model: multi-axis tables are just columns
 * filled from different position axes). Computed in fp32. y may alias x. */
typedef struct ds_rope_args {
    const ds_tensor *x;
    const ds_tensor *cos;
    const ds_tensor *sin;
    ds_rope_style style;
    ds_tensor *y;
} ds_rope_args;

/* Sinusoidal timestep embedding (diffusers get_timestep_embedding): t[B] (f32 or f64),
 * half = dim/2, exponent_k = -ln(max_period) * k / (half - downscale_freq_shift),
 * arg = scale * t * exp(exponent_k); y[B, dim] = [sin(arg), cos(arg)], or [cos, sin] when
 * flip_sin_to_cos; computed in fp64 and stored in y's dtype. dim even. */
typedef struct ds_timestep_embedding_args {
    const ds_tensor *t;
    int flip_sin_to_cos;
    float downscale_freq_shift;
    float scale;
    float max_period;
    ds_tensor *y;
} ds_timestep_embedding_args;

typedef enum ds_binary_op {
    DS_BINARY_ADD = 0,
    DS_BINARY_SUB,
    DS_BINARY_MUL,
    DS_BINARY_DIV,
} ds_binary_op;

/* y = a (op) b, b broadcast to a's shape with NumPy rules (b.ndim <= a.ndim; aligned from the
 * right, each dim of b equal to a's or 1). y has a's shape; y may alias a. */
typedef struct ds_binary_args {
    const ds_tensor *a;
    const ds_tensor *b;
    ds_binary_op op;
    ds_tensor *y;
} ds_binary_args;

/* y = x * (1 + scale) + shift, scale and shift broadcast to x (NumPy rules), e.g. x[B, S, C]
 * with scale/shift[B, 1, C]. y may alias x. */
typedef struct ds_modulate_args {
    const ds_tensor *x;
    const ds_tensor *scale;
    const ds_tensor *shift;
    ds_tensor *y;
} ds_modulate_args;

/* out = x + gate * y_in, gate broadcast to x; y_in has x's shape. out may alias x. */
typedef struct ds_gated_residual_args {
    const ds_tensor *x;
    const ds_tensor *gate;
    const ds_tensor *y_in;
    ds_tensor *out;
} ds_gated_residual_args;

/* y = x * alpha + beta. */
typedef struct ds_scale_args {
    const ds_tensor *x;
    float alpha;
    float beta;
    ds_tensor *y;
} ds_scale_args;

/* y = min(max(x, lo), hi); NaN stays NaN. */
typedef struct ds_clamp_args {
    const ds_tensor *x;
    float lo;
    float hi;
    ds_tensor *y;
} ds_clamp_args;

/* y = concatenation of inputs[0..count) along `axis`; all other dims equal. */
typedef struct ds_concat_args {
    const ds_tensor *const *inputs;
    int count;
    int axis;
    ds_tensor *y;
} ds_concat_args;

/* y = x[..., start:start + y.shape[axis], ...] along `axis` (split = several slices). */
typedef struct ds_slice_args {
    const ds_tensor *x;
    int axis;
    int64_t start;
    ds_tensor *y;
} ds_slice_args;

/* y = x.permute(perm): y.shape[i] = x.shape[perm[i]]. Transpose is a permute. */
typedef struct ds_permute_args {
    const ds_tensor *x;
    int perm[DS_MAX_DIMS];
    ds_tensor *y;
} ds_permute_args;

/* Qwen-Image latent packing with patch p: x[B, C, H, W] -> y[B, (H/p)(W/p), C*p*p],
 * token (h, w) row-major, channel index c*p*p + i*p + j ("B C (H P) (W Q) -> B (H W) (C P Q)").
 * Unpatchify is the inverse, with H and W given by y's shape. */
typedef struct ds_patchify_args {
    const ds_tensor *x;
    int patch;
    ds_tensor *y;
} ds_patchify_args;

/* y = constant pad of x: pad[2*i] elements before and pad[2*i+1] after dim i (both >= 0). */
typedef struct ds_pad_args {
    const ds_tensor *x;
    int64_t pad[2 * DS_MAX_DIMS];
    float value;
    ds_tensor *y;
} ds_pad_args;

/* Nearest (exact) upsampling ×2 of the last two dims: x[..., H, W] -> y[..., 2H, 2W]. */
typedef struct ds_upsample_args {
    const ds_tensor *x;
    ds_tensor *y;
} ds_upsample_args;

/* y[N..., C] = table[ids[N...], :]; ids i32/i64; an id outside [0, V) is INVALID_ARGUMENT
 * (checked by the backend, which reports the first bad position). */
typedef struct ds_embedding_args {
    const ds_tensor *ids;
    const ds_tensor *table;
    ds_tensor *y;
} ds_embedding_args;

/* 2-D convolution, groups 1: x[B, Cin, H, W], weight[Cout, Cin, KH, KW], bias NULL or [Cout],
 * padding (top, bottom, left, right) with zeros, stride (sh, sw), dilation 1.
 * y[B, Cout, (H + pt + pb - KH)/sh + 1, (W + pl + pr - KW)/sw + 1]. */
typedef struct ds_conv2d_args {
    const ds_tensor *x;
    const ds_tensor *weight;
    const ds_tensor *bias;
    int pad[4];
    int stride[2];
    ds_tensor *y;
} ds_conv2d_args;

/* Causal 3-D convolution (Wan/Qwen-Image VAE CausalConv3d): x[B, Cin, T, H, W],
 * weight[Cout, Cin, KT, KH, KW], bias NULL or [Cout]; time is padded with `cache` frames first
 * (cache[B, Cin, TC, H, W] holds the previous chunk's last frames, or NULL) and then with zeros
 * up to KT - 1 frames in front and none behind; space with zeros by pad_h / pad_w on both sides;
 * stride (st, sh, sw). y[B, Cout, T', H', W'] by the usual formula. */
typedef struct ds_conv3d_args {
    const ds_tensor *x;
    const ds_tensor *weight;
    const ds_tensor *bias;
    const ds_tensor *cache;
    int pad_h;
    int pad_w;
    int stride[3];
    ds_tensor *y;
} ds_conv3d_args;

/* y = x converted to y's dtype, round to nearest even, exactly as PyTorch's `.to()` (checked
 * against torch 2.15): f16 / bf16 / f8_e5m2 overflow to ±inf once |x| rounds past the largest
 * finite value (65504, ~3.39e38, 57344); f8_e4m3 (the "fn" variant: no infinities) SATURATES
 * to ±448 for every larger |x|, infinities included; NaN stays NaN (0x7F for e4m3).
 * Integer dtypes are not cast targets. */
typedef struct ds_cast_args {
    const ds_tensor *x;
    ds_tensor *y;
} ds_cast_args;

/* ---- The backend table ---- */

struct ds_backend {
    const char *name; /* "cpu", "cuda" */
    void *impl;       /* backend-private state */
    /* Nonzero when the backend's memory is host memory: host tensors (inputs, mapped weights)
     * are operands as they are, with no upload or download. */
    int host_memory;

    /* Memory. alloc returns device memory (host memory on the CPU backend), 256-byte aligned. */
    int (*alloc)(ds_backend *b, size_t bytes, void **ptr, ds_error *err);
    void (*free)(ds_backend *b, void *ptr);
    /* Page-locked host memory for fast, asynchronous host<->device copies (plain aligned host
     * memory on the CPU backend). */
    int (*alloc_pinned)(ds_backend *b, size_t bytes, void **ptr, ds_error *err);
    void (*free_pinned)(ds_backend *b, void *ptr);
    /* Copies; asynchronous on the stream where the backend can be (host memory must then be
     * pinned and stay valid until the stream passes this point). */
    int (*copy_to_device)(ds_backend *b, void *dst, const void *src, size_t bytes, ds_stream *s,
                          ds_error *err);
    int (*copy_to_host)(ds_backend *b, void *dst, const void *src, size_t bytes, ds_stream *s,
                        ds_error *err);
    int (*copy_device)(ds_backend *b, void *dst, const void *src, size_t bytes, ds_stream *s,
                       ds_error *err);
    /* Sets bytes to a repeated 32-bit pattern (used to poison outputs in tests and to zero). */
    int (*fill32)(ds_backend *b, void *dst, uint32_t pattern, size_t bytes, ds_stream *s,
                  ds_error *err);

    /* Streams and events. */
    int (*stream_create)(ds_backend *b, ds_stream **out, ds_error *err);
    void (*stream_destroy)(ds_backend *b, ds_stream *s);
    int (*stream_synchronize)(ds_backend *b, ds_stream *s, ds_error *err);
    int (*event_create)(ds_backend *b, ds_event **out, ds_error *err);
    void (*event_destroy)(ds_backend *b, ds_event *e);
    int (*event_record)(ds_backend *b, ds_event *e, ds_stream *s, ds_error *err);
    int (*stream_wait_event)(ds_backend *b, ds_stream *s, ds_event *e, ds_error *err);
    /* Optional (NULL when the backend has no memory of its own, as the CPU's): the device's
     * free and total bytes now, for the whole device (other processes included). The VRAM
     * manager's default budget is read from it. */
    int (*mem_info)(ds_backend *b, size_t *free_bytes, size_t *total_bytes, ds_error *err);
    int (*event_synchronize)(ds_backend *b, ds_event *e, ds_error *err);

    /* Whether the backend runs `op` for these dtypes (in the op's argument order: inputs, then
     * outputs; NULL operands skipped) and, for shape-dependent limits, these args (may be NULL:
     * "for some shapes"). Required. */
    int (*supports)(const ds_backend *b, ds_op op, const void *args);

    /* Ops: arguments already validated by kernels/ops.c. Optional (NULL = not supported). */
    int (*linear)(ds_backend *b, ds_stream *s, const ds_linear_args *a, ds_error *err);
    int (*batched_matmul)(ds_backend *b, ds_stream *s, const ds_batched_matmul_args *a,
                          ds_error *err);
    int (*attention)(ds_backend *b, ds_stream *s, const ds_attention_args *a, ds_error *err);
    int (*layer_norm)(ds_backend *b, ds_stream *s, const ds_layer_norm_args *a, ds_error *err);
    int (*rms_norm)(ds_backend *b, ds_stream *s, const ds_rms_norm_args *a, ds_error *err);
    int (*group_norm)(ds_backend *b, ds_stream *s, const ds_group_norm_args *a, ds_error *err);
    int (*channel_rms_norm)(ds_backend *b, ds_stream *s, const ds_channel_rms_norm_args *a,
                            ds_error *err);
    int (*softmax)(ds_backend *b, ds_stream *s, const ds_softmax_args *a, ds_error *err);
    int (*activation)(ds_backend *b, ds_stream *s, const ds_activation_args *a, ds_error *err);
    int (*rope)(ds_backend *b, ds_stream *s, const ds_rope_args *a, ds_error *err);
    int (*timestep_embedding)(ds_backend *b, ds_stream *s, const ds_timestep_embedding_args *a,
                              ds_error *err);
    int (*binary)(ds_backend *b, ds_stream *s, const ds_binary_args *a, ds_error *err);
    int (*modulate)(ds_backend *b, ds_stream *s, const ds_modulate_args *a, ds_error *err);
    int (*gated_residual)(ds_backend *b, ds_stream *s, const ds_gated_residual_args *a,
                          ds_error *err);
    int (*scale)(ds_backend *b, ds_stream *s, const ds_scale_args *a, ds_error *err);
    int (*clamp)(ds_backend *b, ds_stream *s, const ds_clamp_args *a, ds_error *err);
    int (*concat)(ds_backend *b, ds_stream *s, const ds_concat_args *a, ds_error *err);
    int (*slice)(ds_backend *b, ds_stream *s, const ds_slice_args *a, ds_error *err);
    int (*permute)(ds_backend *b, ds_stream *s, const ds_permute_args *a, ds_error *err);
    int (*patchify)(ds_backend *b, ds_stream *s, const ds_patchify_args *a, ds_error *err);
    int (*unpatchify)(ds_backend *b, ds_stream *s, const ds_patchify_args *a, ds_error *err);
    int (*pad)(ds_backend *b, ds_stream *s, const ds_pad_args *a, ds_error *err);
    int (*upsample_nearest2x)(ds_backend *b, ds_stream *s, const ds_upsample_args *a,
                              ds_error *err);
    int (*embedding)(ds_backend *b, ds_stream *s, const ds_embedding_args *a, ds_error *err);
    int (*conv2d)(ds_backend *b, ds_stream *s, const ds_conv2d_args *a, ds_error *err);
    int (*conv3d_causal)(ds_backend *b, ds_stream *s, const ds_conv3d_args *a, ds_error *err);
    int (*cast)(ds_backend *b, ds_stream *s, const ds_cast_args *a, ds_error *err);

    /* Releases the backend and `impl`. */
    void (*destroy)(ds_backend *b);
};

/* The CPU backend (always built): oneDNN and OpenBLAS GEMMs (kernels/cpu/matmul.c picks per shape
 * and processor) and a fixed pool of `threads` worker threads
 * (0 = the number of online CPUs). Results are deterministic for a given thread count. */
int ds_cpu_backend_create(int threads, ds_backend **out, ds_error *err);

/* The CUDA backend on `device` (built with -Dcuda=enabled/auto when CUDA is found).
 * UNAVAILABLE when this build has no CUDA or no usable device exists; callers then use the CPU. */
int ds_cuda_backend_create(int device, ds_backend **out, ds_error *err);

/* Both are valid on NULL. */
void ds_backend_destroy(ds_backend *b);

#endif
