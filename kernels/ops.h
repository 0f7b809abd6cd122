/* The op interface every model calls (DESIGN §4.3): ds_<op>(backend, stream, &args, err).
 *
 * Each call validates the arguments once, for every backend (shapes, dtypes, memory owner; the
 * message names the op and the operand: `linear: weight is [3072, 68] but x has K = 64`), then
 * runs the backend's slot. When the backend lacks the op for these dtypes or shapes
 * (`supports` says no, or the slot is NULL) the op runs on the CPU backend instead: operands
 * are copied to host memory, computed, and the result copied back on the same stream. The
 * fallback is correct and slow; it is never a crash.
 *
 * Tensor helpers allocate on a backend and move data between host and backend memory.
 */
#ifndef DS_KERNELS_OPS_H
#define DS_KERNELS_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"

/* ---- Tensors ---- */

uint64_t ds_tensor_numel(const ds_tensor *t);
size_t ds_tensor_nbytes(const ds_tensor *t);
/* "[2, 4096, 3072] bf16": for messages. Returns buf. */
char *ds_tensor_describe(const ds_tensor *t, char *buf, size_t size);
int ds_tensor_same_shape(const ds_tensor *a, const ds_tensor *b);

/* Allocates uninitialised memory on `b` for a tensor of this dtype and shape. */
int ds_tensor_alloc(ds_backend *b, ds_dtype dtype, int ndim, const int64_t *shape, ds_tensor *out,
                    ds_error *err);
/* Frees memory from ds_tensor_alloc and clears the struct; NULL data is fine. */
void ds_tensor_free(ds_tensor *t);

/* A tensor over existing memory (no ownership): host memory for the CPU backend, device
 * memory for another backend. */
ds_tensor ds_tensor_wrap(ds_backend *b, ds_dtype dtype, int ndim, const int64_t *shape, void *data);

/* Copies between host memory (contiguous, t's dtype and size) and a tensor, and waits for the
 * copy to finish (for tests, tools and the fallback). */
int ds_tensor_upload(ds_tensor *t, const void *host, ds_stream *s, ds_error *err);
int ds_tensor_download(const ds_tensor *t, void *host, ds_stream *s, ds_error *err);

/* The process-wide CPU backend used for fallbacks (created on first use with all CPUs). */
int ds_cpu_fallback_backend(ds_backend **out, ds_error *err);

/* ---- Ops (see backend.h for each one's semantics) ---- */

int ds_linear(ds_backend *b, ds_stream *s, const ds_linear_args *a, ds_error *err);
int ds_batched_matmul(ds_backend *b, ds_stream *s, const ds_batched_matmul_args *a, ds_error *err);
int ds_attention(ds_backend *b, ds_stream *s, const ds_attention_args *a, ds_error *err);
int ds_layer_norm(ds_backend *b, ds_stream *s, const ds_layer_norm_args *a, ds_error *err);
int ds_rms_norm(ds_backend *b, ds_stream *s, const ds_rms_norm_args *a, ds_error *err);
int ds_group_norm(ds_backend *b, ds_stream *s, const ds_group_norm_args *a, ds_error *err);
int ds_channel_rms_norm(ds_backend *b, ds_stream *s, const ds_channel_rms_norm_args *a,
                        ds_error *err);
int ds_softmax(ds_backend *b, ds_stream *s, const ds_softmax_args *a, ds_error *err);
int ds_activate(ds_backend *b, ds_stream *s, const ds_activation_args *a, ds_error *err);
int ds_rope(ds_backend *b, ds_stream *s, const ds_rope_args *a, ds_error *err);
int ds_timestep_embedding(ds_backend *b, ds_stream *s, const ds_timestep_embedding_args *a,
                          ds_error *err);
int ds_binary(ds_backend *b, ds_stream *s, const ds_binary_args *a, ds_error *err);
int ds_modulate(ds_backend *b, ds_stream *s, const ds_modulate_args *a, ds_error *err);
int ds_gated_residual(ds_backend *b, ds_stream *s, const ds_gated_residual_args *a, ds_error *err);
int ds_scale(ds_backend *b, ds_stream *s, const ds_scale_args *a, ds_error *err);
int ds_clamp(ds_backend *b, ds_stream *s, const ds_clamp_args *a, ds_error *err);
int ds_concat(ds_backend *b, ds_stream *s, const ds_concat_args *a, ds_error *err);
int ds_slice(ds_backend *b, ds_stream *s, const ds_slice_args *a, ds_error *err);
int ds_permute(ds_backend *b, ds_stream *s, const ds_permute_args *a, ds_error *err);
int ds_patchify(ds_backend *b, ds_stream *s, const ds_patchify_args *a, ds_error *err);
int ds_unpatchify(ds_backend *b, ds_stream *s, const ds_patchify_args *a, ds_error *err);
int ds_pad(ds_backend *b, ds_stream *s, const ds_pad_args *a, ds_error *err);
int ds_upsample_nearest2x(ds_backend *b, ds_stream *s, const ds_upsample_args *a, ds_error *err);
int ds_embedding(ds_backend *b, ds_stream *s, const ds_embedding_args *a, ds_error *err);
int ds_conv2d(ds_backend *b, ds_stream *s, const ds_conv2d_args *a, ds_error *err);
int ds_conv3d_causal(ds_backend *b, ds_stream *s, const ds_conv3d_args *a, ds_error *err);
int ds_cast(ds_backend *b, ds_stream *s, const ds_cast_args *a, ds_error *err);

/* Validation alone (what the ops above run first); exposed for tests and for backends that
 * want to re-check in debug builds. */
int ds_validate_op(ds_op op, const void *args, ds_error *err);

/* Sees every op call on any backend, with its validated arguments (borrowed for the call),
 * before the op runs, on the calling thread: for tests and tools that check which ops a model
 * calls (e.g. against a backend's `supports`). Process-wide; NULL turns it off. Set it while
 * no op runs. */
typedef void (*ds_op_observer)(void *ctx, const ds_backend *b, ds_op op, const void *args);
void ds_ops_set_observer(ds_op_observer fn, void *ctx);

#endif
