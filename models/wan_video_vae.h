/* The Wan video VAEs of diffsynth.models.wan_video_vae: WanVideoVAE (Wan2.1: z 16, 8x spatial)
 * and WanVideoVAE38 (Wan2.2: z 48, 16x spatial through patchify 2, its stages' AvgDown3D /
 * DupUp3D shortcuts), which inherits upstream's decode and encode. Both run through the same
 * calls (the model's class picks; f = 8 or 16, z = 16 or 48 below): untiled (single_decode /
 * single_encode) or tiled, as the "decode" and "encode" steps of each class and as plain C
 * entry points. Videos are [B, C, T, H, W]; the encoder takes the first frame alone and then
 * chunks of 4, the decoder one latent frame at a time, each causal conv keeping upstream's
 * two-frame feature cache across them. Both compute on ctx->backend, poll ctx->cancelled
 * between chunks (CANCELLED) and report ("decode" | "encode", chunk, chunks) progress (tiles
 * instead of chunks when tiled); with ctx->vram each module instance is one unit of the manager
 * and each module's activations are reserved in its budget. The model's z_dim must be the
 * class's (upstream's fixed mean/std); a model of another class is INVALID_ARGUMENT, as is a
 * tensor of the wrong shape (named, with what was expected). */
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
 * rows/columns (f times that in pixels when decoding). NULL: untiled. */
typedef struct ds_wan_video_vae_tiling {
    int64_t size_h, size_w, stride_h, stride_w;
} ds_wan_video_vae_tiling;

/* The tiles of the "decode" and "encode" steps' tiled=true: the Wan pipeline's defaults. */
extern const ds_wan_video_vae_tiling ds_wan_video_vae_step_tiling;

/* single_decode (or tiled_decode): latents / (1 / std) + mean, conv2, the decoder (VAE38:
 * unpatchify), clamp to [-1, 1].
 *   latents   [B, z, T, h, w] f32 or bf16 (its dtype is the compute dtype)
 *   video_out [B, 3, 4(T - 1) + 1, fh, fw] in latents' dtype, caller's memory, written */
int ds_wan_video_vae_decode(const ds_loaded_model *m, const ds_step_context *ctx,
                            const ds_wan_video_vae_tiling *tiling, const ds_tensor *latents,
                            ds_tensor *video_out, ds_error *err);

/* The tiled decode above cut at tile boundaries, so that a caller can run each tile as a
 * unit of its own and nothing but the model is held between tiles: begin checks as decode does
 * and keeps views of latents and video_out (both host memory, alive until free); each next
 * decodes one tile on ctx (its backend and VRAM manager, borrowed for that call only) into the
 * blend, and the last tile of a batch element writes that element of video_out. The result is
 * bit for bit the one-call decode's. Tiles are neither cancelled nor reported here: the caller
 * does both between tiles. */
typedef struct ds_wan_video_vae_tiles ds_wan_video_vae_tiles;

/* The tiles a tiled decode of latents [batch, z, T, h, w] runs; 0 for a tiling decode
 * refuses. */
int64_t ds_wan_video_vae_tile_count(const ds_wan_video_vae_tiling *tiling, int64_t batch,
                                    int64_t h, int64_t w);
/* *out is owned by the caller (ds_wan_video_vae_tiles_free); NULL on failure. */
int ds_wan_video_vae_tiles_begin(const ds_loaded_model *m, const ds_step_context *ctx,
                                 const ds_wan_video_vae_tiling *tiling,
                                 const ds_tensor *latents, ds_tensor *video_out,
                                 ds_wan_video_vae_tiles **out, ds_error *err);
int64_t ds_wan_video_vae_tiles_count(const ds_wan_video_vae_tiles *t);
/* Decodes the next tile; FAILED_PRECONDITION after the last. */
int ds_wan_video_vae_tiles_next(ds_wan_video_vae_tiles *t, const ds_step_context *ctx,
                                ds_error *err);
void ds_wan_video_vae_tiles_free(ds_wan_video_vae_tiles *t);

/* single_encode (or tiled_encode): (VAE38: patchify) the encoder, conv1, the first z channels,
 * (mu - mean) * (1 / std).
 *   video       [B, 3, 4k + 1, H, W] f32 or bf16 in [-1, 1], H and W multiples of f
 *   latents_out [B, z, k + 1, H/f, W/f] in video's dtype */
int ds_wan_video_vae_encode(const ds_loaded_model *m, const ds_step_context *ctx,
                            const ds_wan_video_vae_tiling *tiling, const ds_tensor *video,
                            ds_tensor *latents_out, ds_error *err);

#endif
