/* The Qwen-Image DiT's forward pass (facts §6.2): upstream's pipeline model function
 * model_fn_qwen_image on the text-to-image path, as the "forward" step of
 * diffsynth.models.qwen_image_dit.QwenImageDiT and as a plain C entry point for tests. */
#ifndef DS_MODELS_QWEN_IMAGE_DIT_H
#define DS_MODELS_QWEN_IMAGE_DIT_H

#include "core/error.h"
#include "kernels/backend.h"
#include "models/model_loader.h"
#include "models/model_step.h"

/* noise_pred = model_fn_qwen_image(latents, timestep, prompt_emb, prompt_emb_mask).
 *
 * All tensors are host tensors (data in host memory, borrowed):
 *   latents     [B, 16, H, W] f32 or bf16, H and W even; its dtype is the compute dtype
 *   prompt_emb  [B, L, 3584], latents' dtype
 *   prompt_mask NULL, or [B, L] i64 / i32 / u8 / bool: text keys where it is 0 are masked
 *               (all ones, or NULL: no mask)
 *   timestep    [B] or [1] f32 / f64: the scheduler's timestep (0..1000), divided by 1000
 *               inside as upstream does, after rounding to the compute dtype as the pipeline
 *               does
 *   noise_pred_out [B, 16, H, W] in latents' dtype: the caller's memory, written
 * Computes on ctx->backend (weights of a non-CPU backend are uploaded block by block), polls
 * ctx->cancelled between blocks (CANCELLED) and reports ("forward", block, blocks) progress.
 * INVALID_ARGUMENT names the tensor and the expected shape; UNIMPLEMENTED for the
 * Qwen-Image-Layered variant (use_additional_t_cond). */
int ds_qwen_image_dit_forward(const ds_loaded_model *m, const ds_step_context *ctx,
                              const ds_tensor *latents, const ds_tensor *prompt_emb,
                              const ds_tensor *prompt_mask, const ds_tensor *timestep,
                              ds_tensor *noise_pred_out, ds_error *err);

/* A Blockwise ControlNet for one forward: upstream's blockwise_controlnet with one
 * ControlNetInput that is active at this step (the caller applies start/end). */
typedef struct ds_qwen_image_dit_controlnet {
    /* A loaded QwenImageBlockWiseControlNet of the DiT's width, with at least as many blocks as
     * the DiT (upstream indexes its blocks by the DiT's block index). Borrowed. */
    const ds_loaded_model *model;
    /* [B or 1, C, H, W] host tensor in latents' dtype, latents' H and W, with 4 C = the
     * ControlNet's img_in input (C = 16: VAE latents of the control image; 17: the inpainting
     * variant's latents and mask). Packed 2x2 as the latents are. Borrowed. */
    const ds_tensor *conditioning;
    float scale; /* ControlNetInput.scale; upstream's default is 1 */
} ds_qwen_image_dit_controlnet;

/* ds_qwen_image_dit_forward with a ControlNet (NULL: none, the same as the above): after
 * DiT block i, image += scale * controlnet_blocks[i](image, img_in(packed conditioning)), as
 * model_fn_qwen_image does. INVALID_ARGUMENT names a conditioning that does not fit (shape,
 * dtype, channels for this ControlNet) and a ControlNet that does not fit the DiT. */
int ds_qwen_image_dit_forward_controlnet(const ds_loaded_model *m, const ds_step_context *ctx,
                                         const ds_tensor *latents, const ds_tensor *prompt_emb,
                                         const ds_tensor *prompt_mask, const ds_tensor *timestep,
                                         const ds_qwen_image_dit_controlnet *controlnet,
                                         ds_tensor *noise_pred_out, ds_error *err);

#endif
