/* The VACE branch of the Wan video DiT (diffsynth/models/wan_video_vace.py), run by the DiT's
 * forward: its hints, added to the DiT's stream after the blocks listed in vace_layers. */
#ifndef DS_MODELS_WAN_VIDEO_VACE_H
#define DS_MODELS_WAN_VIDEO_VACE_H

#include "core/error.h"
#include "models/model_loader.h"
#include "models/model_step.h"
#include "models/wan_video_block.h"

#define DS__WAN_VACE_LAYERS_MAX 64

/* A loaded VaceWanModel's kwargs. */
typedef struct ds__wan_vace_config {
    int64_t layers[DS__WAN_VACE_LAYERS_MAX]; /* vace_layers: DiT block indices, increasing */
    int layer_count;
    int64_t in_dim, dim, num_heads, ffn_dim;
    double eps;
    int has_image_input;
} ds__wan_vace_config;

int ds__wan_vace_config_of(const ds_loaded_model *vace, ds__wan_vace_config *c, ds_error *err);

/* VaceWanModel.forward: hints[n] [B, N, dim] for vace_layers[n], from vace_context
 * [B, in_dim, F, H, W] (a host tensor in the compute dtype, checked by the caller), the DiT's
 * stream s->x after the patch embedding, its text context, t_mod and RoPE in s. hints are
 * allocated by the caller. The branch's weights stream through ctx->vram like the DiT's. */
int ds__wan_vace_hints(const ds_loaded_model *vace, const ds_step_context *ctx,
                       const ds__wan_dims *d, ds__wan_state *s, const ds_tensor *vace_context,
                       ds_tensor *hints, ds_error *err);

#endif
