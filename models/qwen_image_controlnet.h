/* The Qwen-Image Blockwise ControlNet's forward pieces
 * (diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet), as the DiT's forward
 * runs them: the conditioning is projected once, then after DiT block i the image stream gets
 * scale * controlnet_blocks[i](image, conditioning) added (upstream's model_fn_qwen_image). */
#ifndef DS_MODELS_QWEN_IMAGE_CONTROLNET_H
#define DS_MODELS_QWEN_IMAGE_CONTROLNET_H

#include <stdint.h>

#include "core/error.h"
#include "kernels/backend.h"
#include "models/model_loader.h"
#include "models/module.h"
#include "vram/vram_manager.h"

#define DS_QWEN_IMAGE_CONTROLNET_CLASS \
    "diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet"

/* What a loaded ControlNet's parameter tree says about its config. */
typedef struct ds_qwen_image_controlnet_shape {
    int64_t in_features; /* img_in's input: in_dim + additional_in_dim (64, or 68 with a mask) */
    int64_t dim;         /* width: the DiT's, 3072 */
    int64_t blocks;      /* controlnet_blocks */
} ds_qwen_image_controlnet_shape;

/* INVALID_ARGUMENT when `m` is not a loaded QwenImageBlockWiseControlNet. */
int ds_qwen_image_controlnet_shape_of(const ds_loaded_model *m,
                                      ds_qwen_image_controlnet_shape *out, ds_error *err);

/* One forward's use of a ControlNet: the model, where it computes, and its activations. */
typedef struct ds_qwen_image_controlnet {
    const ds_loaded_model *model;         /* borrowed */
    ds_backend *backend;                  /* borrowed */
    ds_qwen_image_controlnet_shape shape;
    ds_tensor x_normed; /* [B, N, dim]: x_rms(img), then x_rms(img) + y_rms(cond) */
    ds_tensor y_normed; /* [Bc, N, dim]: y_rms(cond) */
    ds_tensor hidden;   /* [B, N, dim]: GELU(input_proj(x_normed)) */
    ds_module_run run;     /* its weights: bound, or streamed once ds_qwen_image_controlnet_stream ran */
    ds_vram_model *vram;   /* ds_qwen_image_controlnet_stream's model, NULL = not streamed */
    size_t reserved;       /* activation bytes reserved in it */
} ds_qwen_image_controlnet;

/* Checks the model and allocates the activations for `batch` image rows, `cond_batch`
 * conditioning rows (batch or 1: one conditioning for every row, as torch broadcasts it) and
 * `tokens` image tokens, in `dtype` (f32 or bf16) on `b`. On failure nothing is held. */
int ds_qwen_image_controlnet_open(const ds_loaded_model *m, ds_backend *b, ds_dtype dtype,
                                  int64_t batch, int64_t cond_batch, int64_t tokens,
                                  ds_qwen_image_controlnet *cn, ds_error *err);
/* Streams the weights through `mgr` from now on (after open, before the first forward piece),
 * as the DiT streams its own: units "img_in" and "controlnet_blocks.<i>", registered on first
 * use and keyed to the model (dropped when it is freed), planned as img_in then blocks
 * 0..blocks-1 (the DiT's blocks: the ones this step uses), the activations reserved in the same
 * budget, and the model paired with `beside` (the DiT's, or NULL) for the step. Results are
 * bit-identical to the unmanaged path. RESOURCE_EXHAUSTED when the activations do not fit. */
int ds_qwen_image_controlnet_stream(ds_qwen_image_controlnet *cn, ds_vram_manager *mgr,
                                    ds_vram_model *beside, int64_t blocks, ds_error *err);
/* Frees the activations (returns their reservation, ends the pairing); a zeroed struct is
 * fine. */
void ds_qwen_image_controlnet_close(ds_qwen_image_controlnet *cn);

/* process_controlnet_conditioning: cond[Bc, N, dim] = img_in(packed), packed[Bc, N, in_features]
 * being the 2x2-packed conditioning latents (ds_patchify). Tensors on cn->backend. */
int ds_qwen_image_controlnet_process_conditioning(ds_qwen_image_controlnet *cn,
                                                  const ds_tensor *packed, ds_tensor *cond,
                                                  ds_error *err);

/* blockwise_forward(img, cond, block_id): BlockWiseControlBlock block_id,
 * out = output_proj(GELU(input_proj(x_rms(img) + y_rms(cond)))), img and out [B, N, dim],
 * cond [Bc, N, dim] from process_conditioning. out must not alias img. */
int ds_qwen_image_controlnet_blockwise_forward(ds_qwen_image_controlnet *cn,
                                               const ds_tensor *img, const ds_tensor *cond,
                                               int64_t block_id, ds_tensor *out, ds_error *err);

#endif
