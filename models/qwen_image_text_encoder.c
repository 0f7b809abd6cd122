/* diffsynth/models/qwen_image_text_encoder.py: Qwen2.5-VL-7B as Qwen-Image's text encoder
 * (facts §8). Upstream wraps transformers' Qwen2_5_VLModel (`model.visual`, then
 * `model.language_model`) and adds its own `lm_head`; the configuration is fixed in its
 * constructor, which takes no arguments. The rotary tables are non-persistent buffers and do
 * not appear in the state dict. */
#include "models/model_class.h"
#include "models/param_tree.h"

#define CLASS_NAME "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder"

enum {
    /* text config */
    HIDDEN = 3584,
    LAYERS = 28,
    HEADS = 28,
    KV_HEADS = 4,
    HEAD_DIM = 128,
    INTERMEDIATE = 18944,
    VOCAB = 152064,
    /* vision config */
    V_DEPTH = 32,
    V_HIDDEN = 1280,
    V_INTERMEDIATE = 3420,
    V_PATCH = 14,
    V_TEMPORAL_PATCH = 2,
    V_IN_CHANNELS = 3,
    V_MERGE = 2, /* spatial_merge_size: the merger sees 2x2 patches at once */
    V_OUT = 3584,
};

/* Qwen2_5_VisionTransformerPretrainedModel: patch_embed, blocks, merger. */
static int declare_visual(ds_state_dict *params, ds_error *err)
{
    int rc = ds__param(params, "model.visual.", "patch_embed.proj.weight", 5,
                       (const int64_t[]){V_HIDDEN, V_IN_CHANNELS, V_TEMPORAL_PATCH, V_PATCH,
                                         V_PATCH},
                       err);
    if (rc != DS_OK)
        return rc;
    for (int i = 0; i < V_DEPTH; i++) {
        char p[DS__PARAM_NAME_MAX];
        if ((rc = ds__param_prefix(p, err, "model.visual.blocks.%d.", i)) != DS_OK ||
            (rc = ds__param_vector(params, p, "norm1.weight", V_HIDDEN, err)) != DS_OK ||
            (rc = ds__param_vector(params, p, "norm2.weight", V_HIDDEN, err)) != DS_OK ||
            (rc = ds__param_linear(params, p, "attn.qkv", 3 * V_HIDDEN, V_HIDDEN, 1, err)) !=
                DS_OK ||
            (rc = ds__param_linear(params, p, "attn.proj", V_HIDDEN, V_HIDDEN, 1, err)) != DS_OK ||
            (rc = ds__param_linear(params, p, "mlp.gate_proj", V_INTERMEDIATE, V_HIDDEN, 1,
                                   err)) != DS_OK ||
            (rc = ds__param_linear(params, p, "mlp.up_proj", V_INTERMEDIATE, V_HIDDEN, 1, err)) !=
                DS_OK ||
            (rc = ds__param_linear(params, p, "mlp.down_proj", V_HIDDEN, V_INTERMEDIATE, 1,
                                   err)) != DS_OK)
            return rc;
    }
    const int64_t merged = V_HIDDEN * V_MERGE * V_MERGE;
    if ((rc = ds__param_vector(params, "model.visual.", "merger.ln_q.weight", V_HIDDEN, err)) !=
            DS_OK ||
        (rc = ds__param_linear(params, "model.visual.", "merger.mlp.0", merged, merged, 1, err)) !=
            DS_OK ||
        (rc = ds__param_linear(params, "model.visual.", "merger.mlp.2", V_OUT, merged, 1, err)) !=
            DS_OK)
        return rc;
    return DS_OK;
}

/* Qwen2_5_VLTextModel: embed_tokens, layers (self_attn, mlp, the two norms), norm. */
static int declare_language_model(ds_state_dict *params, ds_error *err)
{
    int rc = ds__param(params, "model.language_model.", "embed_tokens.weight", 2,
                       (const int64_t[]){VOCAB, HIDDEN}, err);
    if (rc != DS_OK)
        return rc;
    for (int i = 0; i < LAYERS; i++) {
        char p[DS__PARAM_NAME_MAX];
        if ((rc = ds__param_prefix(p, err, "model.language_model.layers.%d.", i)) != DS_OK ||
            (rc = ds__param_linear(params, p, "self_attn.q_proj", HEADS * HEAD_DIM, HIDDEN, 1,
                                   err)) != DS_OK ||
            (rc = ds__param_linear(params, p, "self_attn.k_proj", KV_HEADS * HEAD_DIM, HIDDEN, 1,
                                   err)) != DS_OK ||
            (rc = ds__param_linear(params, p, "self_attn.v_proj", KV_HEADS * HEAD_DIM, HIDDEN, 1,
                                   err)) != DS_OK ||
            (rc = ds__param_linear(params, p, "self_attn.o_proj", HIDDEN, HEADS * HEAD_DIM, 0,
                                   err)) != DS_OK ||
            (rc = ds__param_linear(params, p, "mlp.gate_proj", INTERMEDIATE, HIDDEN, 0, err)) !=
                DS_OK ||
            (rc = ds__param_linear(params, p, "mlp.up_proj", INTERMEDIATE, HIDDEN, 0, err)) !=
                DS_OK ||
            (rc = ds__param_linear(params, p, "mlp.down_proj", HIDDEN, INTERMEDIATE, 0, err)) !=
                DS_OK ||
            (rc = ds__param_vector(params, p, "input_layernorm.weight", HIDDEN, err)) != DS_OK ||
            (rc = ds__param_vector(params, p, "post_attention_layernorm.weight", HIDDEN, err)) !=
                DS_OK)
            return rc;
    }
    return ds__param_vector(params, "model.language_model.", "norm.weight", HIDDEN, err);
}

static int declare_parameters(ds_kwargs *kwargs, ds_state_dict *params, ds_error *err)
{
    int rc;
    if ((rc = ds_kwargs_check_all_used(kwargs, err)) != DS_OK ||
        (rc = declare_visual(params, err)) != DS_OK ||
        (rc = declare_language_model(params, err)) != DS_OK ||
        (rc = ds__param_linear(params, "", "lm_head", VOCAB, HIDDEN, 0, err)) != DS_OK)
        return rc;
    return DS_OK;
}

const ds_model_class ds__qwen_image_text_encoder_class = {
    .name = CLASS_NAME,
    .declare_parameters = declare_parameters,
};
