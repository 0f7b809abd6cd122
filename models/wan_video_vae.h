/* The Wan2.1 video VAE (diffsynth.models.wan_video_vae.WanVideoVAE): upstream's decode and
 * encode, untiled (single_decode / single_encode) or tiled, as the "decode" and "encode" steps of the class and as plain
 * C entry points. Videos are [B, C, T, H, W]; the encoder takes the first frame alone and then
 * chunks of 4, the decoder one latent frame at a time, each causal conv keeping upstream's
 * two-frame feature cache across them. Both compute on ctx->backend, poll ctx->cancelled
 * between chunks (CANCELLED) and report ("decode" | "encode", chunk, chunks) progress (tiles
 * instead of chunks when tiled); with
 * ctx->vram each module instance is one unit of the manager. The model's z_dim must be 16
 * (upstream's fixed mean/std). INVALID_ARGUMENT names the tensor, what it is and what was
 * expected. */
#ifndef DS_MODELS_WAN_VIDEO_VAE_H
#define DS_MODELS_WAN_VIDEO_VAE_H

#include <stdint.h>

#include "core/error.h"
#include "kernels/backend.h"
#include "models/model_loader.h"
#include "models/model_step.h"
#include "models/weight_set.h"

/* WanVideoVAE's spatial tiling, in latent units (the Wan pipeline's: tile 30 x 52, stride
 * 15 x 26): tiles every stride, overlaps blended with linear ramps over size - stride latent
 * rows/columns (8 times that in pixels when decoding). NULL: untiled. */
typedef struct ds_wan_video_vae_tiling {
    int64_t size_h, size_w, stride_h, stride_w;
} ds_wan_video_vae_tiling;

/* single_decode (or tiled_decode): latents / (1 / std) + mean, conv2, the decoder, clamp to [-1, 1].
 *   latents   [B, 16, T, h, w] f32 or bf16 (its dtype is the compute dtype)
 *   video_out [B, 3, 4(T - 1) + 1, 8h, 8w] in latents' dtype, caller's memory, written */
int ds_wan_video_vae_decode(const ds_loaded_model *m, const ds_step_context *ctx,
                            const ds_wan_video_vae_tiling *tiling, const ds_tensor *latents,
                            ds_tensor *video_out, ds_error *err);

/* single_encode (or tiled_encode): the encoder, conv1, the first 16 channels, (mu - mean) * (1 / std).
 *   video       [B, 3, 4k + 1, H, W] f32 or bf16 in [-1, 1], H and W multiples of 8
 *   latents_out [B, 16, k + 1, H/8, W/8] in video's dtype */
int ds_wan_video_vae_encode(const ds_loaded_model *m, const ds_step_context *ctx,
                            const ds_wan_video_vae_tiling *tiling, const ds_tensor *video,
                            ds_tensor *latents_out, ds_error *err);

/* ---- The modules the Qwen-Image VAE shares (its frames are [B, C, H, W] images) ---- */

/* RMS_norm(images) over the channels of x [B, C, ...] into y (allocated, x's shape), then SiLU
 * when `silu`: x / max(||x||, 1e-12) * sqrt(C) * gamma. */
int ds__wan_vae_rms_norm(ds_backend *b, const ds_tensor *gamma, const ds_tensor *x, int silu,
                         ds_tensor *y, ds_error *err);

/* AttentionBlock on frames x [N, C, H, W] (in x's dtype): RMS_norm, to_qkv (the 1x1 conv as a
 * Linear over channels), one head of dim C over the H * W positions (SDPA's scale 1/sqrt(C)),
 * proj, plus x: into a new *out (the caller frees). */
int ds__wan_vae_attention(ds_backend *b, const ds_tensor *gamma,
                          const ds__linear_weights *to_qkv, const ds__linear_weights *proj,
                          const ds_tensor *x, ds_tensor *out, ds_error *err);

#endif
