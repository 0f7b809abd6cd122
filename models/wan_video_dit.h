/* The Wan video DiT's forward pass: upstream's pipeline model function model_fn_wan_video on
 * the text-to-video path (with CLIP image tokens and the per-token timestep of Wan2.2-TI2V),
 * as the "forward" step of diffsynth.models.wan_video_dit.WanModel and as a C entry point. */
#ifndef DS_MODELS_WAN_VIDEO_DIT_H
#define DS_MODELS_WAN_VIDEO_DIT_H

#include "core/error.h"
#include "kernels/backend.h"
#include "models/model_loader.h"
#include "models/model_step.h"

/* WanModel's constructor kwargs, checked. */
typedef struct ds_wan_video_dit_config {
    int64_t dim, ffn_dim, num_heads, num_layers, in_dim, out_dim, text_dim, freq_dim;
    double eps;
    int has_image_input, has_image_pos_emb, has_ref_conv, add_control_adapter;
    int64_t in_dim_control_adapter;
    int seperated_timestep, require_vae_embedding, require_clip_embedding;
    int fuse_vae_embedding_in_latents;
} ds_wan_video_dit_config;

/* The kwargs of a loaded WanModel, as its forward reads them: what a pipeline asks of the DiT
 * before it runs (its channels, text width, the inputs its variant needs). INVALID_ARGUMENT for
 * a model of another class or kwargs the class refuses. */
int ds_wan_video_dit_config_of(const ds_loaded_model *dit, ds_wan_video_dit_config *c,
                               ds_error *err);

/* One forward's inputs, all host tensors (borrowed). The latents' dtype (f32 or bf16) is the
 * compute dtype; every other float input has it too, except the timestep. */
typedef struct ds_wan_video_dit_inputs {
    const ds_tensor *latents;      /* [B, out_dim, F, H, W], H and W even */
    const ds_tensor *timestep;     /* [B] or [1] f32 / f64, 0..1000 */
    const ds_tensor *context;      /* [B, L, text_dim]: the text encoder's output */
    const ds_tensor *clip_feature; /* [B, 257, 1280] (has_image_input models; [B, 514, 1280],
                                    * two frames', with has_image_pos_emb), else NULL */
    const ds_tensor *y;            /* [B, in_dim - out_dim, F, H, W] (require_vae_embedding
                                    * models whose in_dim exceeds out_dim), else NULL */
    /* The pipeline's fuse_vae_embedding_in_latents: with a seperated_timestep model, the
     * first latent frame's tokens get timestep 0 and the others `timestep` ([1]). */
    int fuse_vae_embedding_in_latents;
    /* The VACE branch: a loaded VaceWanModel of the DiT's width whose vace_layers are DiT
     * blocks, its context [B, vace_in_dim, F, H, W] (latents' dtype), and the hints' scale
     * (upstream's vace_scale). NULL model: none. */
    const ds_loaded_model *vace;
    const ds_tensor *vace_context;
    float vace_scale;
} ds_wan_video_dit_inputs;

/* noise_pred [B, out_dim, F, H, W] (latents' dtype, the caller's memory) =
 * model_fn_wan_video(dit, vace, latents, timestep, context, clip_feature, y, vace_context,
 * vace_scale, fuse_vae_embedding_in_latents). Computes on ctx->backend, streaming weights through
 * ctx->vram when set, polls ctx->cancelled between blocks and reports ("forward", block,
 * blocks). INVALID_ARGUMENT names the tensor and what was expected. */
int ds_wan_video_dit_forward(const ds_loaded_model *m, const ds_step_context *ctx,
                             const ds_wan_video_dit_inputs *in, ds_tensor *noise_pred_out,
                             ds_error *err);

#endif
