/* The Qwen-Image VAE's image path (facts §5.6, §7.2): upstream's QwenImageVAE.decode and
 * .encode without tiling, as the "decode" and "encode" steps of
 * diffsynth.models.qwen_image_vae.QwenImageVAE and as plain C entry points for the pipeline.
 *
 * Images run as one frame (T = 1, no feature cache), so every causal 3x3x3 conv is the 2-D conv
 * of its last temporal tap and the resamplers' time_conv never runs, exactly as upstream
 * computes it. Both entry points compute on ctx->backend, poll ctx->cancelled between blocks
 * (CANCELLED) and report ("decode" | "encode", block, blocks) progress. Without ctx->vram each
 * block's weights are bound as views on the CPU and uploaded block by block elsewhere. With it
 * they page through the manager: one unit per block (a conv, a residual or attention block, a
 * resampler's conv, norm_out + conv_out), both directions' units registered on the first call
 * and keyed to the model (dropped by its release hook), the call's direction set as the plan;
 * each block's activations are reserved in the budget while it runs, the slow tier keeps the
 * model's vram_config offload dtype, and the outputs equal the direct path's bit for bit under
 * any budget. A block that cannot fit fails with RESOURCE_EXHAUSTED naming its unit.
 * Activations are freed as soon as the next block has consumed them. The model's z_dim must
 * be 16 (upstream's fixed mean/std). INVALID_ARGUMENT names the tensor, what it is and what
 * was expected. */
#ifndef DS_MODELS_QWEN_IMAGE_VAE_H
#define DS_MODELS_QWEN_IMAGE_VAE_H

#include "core/error.h"
#include "kernels/backend.h"
#include "models/model_loader.h"
#include "models/model_step.h"

/* vae.decode(latents): latents*std+mean (upstream divides by its stored 1/std), post_quant_conv,
 * decoder; no clamp. Host tensors, borrowed:
 *   latents   [B, 16, h, w] f32 or bf16 (its dtype is the compute dtype)
 *   image_out [B, C, 8h, 8w] in latents' dtype (C = the model's image_channels), caller's memory, written */
int ds_qwen_image_vae_decode(const ds_loaded_model *m, const ds_step_context *ctx,
                             const ds_tensor *latents, ds_tensor *image_out, ds_error *err);

/* vae.encode(image): encoder, quant_conv, first 16 channels, (z - mean) / std as upstream computes it.
 *   image       [B, C, H, W] f32 or bf16 in [-1, 1], H and W multiples of 8
 *   latents_out [B, 16, H/8, W/8] in image's dtype */
int ds_qwen_image_vae_encode(const ds_loaded_model *m, const ds_step_context *ctx,
                             const ds_tensor *image, ds_tensor *latents_out, ds_error *err);

#endif
