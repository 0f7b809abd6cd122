/* diffsynth/models/qwen_image_dit.py: the Qwen-Image MMDiT (facts §6).
 *
 * Width, heads, text width and patch channels are fixed in upstream's constructor; only the
 * depth and the two Qwen-Image-Layered switches are kwargs. The RoPE tables are plain
 * attributes, and the LayerNorms have no affine parameters, so neither appears here. */
#include "models/model_class.h"
#include "models/param_tree.h"

#define CLASS_NAME "diffsynth.models.qwen_image_dit.QwenImageDiT"

enum {
    DIM = 3072,       /* model width */
    HEAD_DIM = 128,   /* 24 heads */
    TEXT_DIM = 3584,  /* Qwen2.5-VL hidden size */
    PATCH_DIM = 64,   /* 16 latent channels x 2x2 patch */
    FREQ_DIM = 256,   /* sinusoidal timestep channels */
};

/* QwenImageTransformerBlock, in its registration order: img_mod, attn, img_mlp, txt_mod, txt_mlp. */
static int declare_block(ds_state_dict *params, const char *prefix, ds_error *err)
{
    static const char *const attn_linears_a[] = {"attn.to_q", "attn.to_k", "attn.to_v"};
    static const char *const attn_linears_b[] = {"attn.add_q_proj", "attn.add_k_proj",
                                                 "attn.add_v_proj"};
    int rc;
    if ((rc = ds__param_linear(params, prefix, "img_mod.1", 6 * DIM, DIM, 1, err)) != DS_OK)
        return rc;
    for (int i = 0; i < 3; i++)
        if ((rc = ds__param_linear(params, prefix, attn_linears_a[i], DIM, DIM, 1, err)) != DS_OK)
            return rc;
    if ((rc = ds__param_vector(params, prefix, "attn.norm_q.weight", HEAD_DIM, err)) != DS_OK ||
        (rc = ds__param_vector(params, prefix, "attn.norm_k.weight", HEAD_DIM, err)) != DS_OK)
        return rc;
    for (int i = 0; i < 3; i++)
        if ((rc = ds__param_linear(params, prefix, attn_linears_b[i], DIM, DIM, 1, err)) != DS_OK)
            return rc;
    if ((rc = ds__param_vector(params, prefix, "attn.norm_added_q.weight", HEAD_DIM, err)) !=
            DS_OK ||
        (rc = ds__param_vector(params, prefix, "attn.norm_added_k.weight", HEAD_DIM, err)) !=
            DS_OK ||
        (rc = ds__param_linear(params, prefix, "attn.to_out.0", DIM, DIM, 1, err)) != DS_OK ||
        (rc = ds__param_linear(params, prefix, "attn.to_add_out", DIM, DIM, 1, err)) != DS_OK ||
        (rc = ds__param_linear(params, prefix, "img_mlp.net.0.proj", 4 * DIM, DIM, 1, err)) !=
            DS_OK ||
        (rc = ds__param_linear(params, prefix, "img_mlp.net.2", DIM, 4 * DIM, 1, err)) != DS_OK ||
        (rc = ds__param_linear(params, prefix, "txt_mod.1", 6 * DIM, DIM, 1, err)) != DS_OK ||
        (rc = ds__param_linear(params, prefix, "txt_mlp.net.0.proj", 4 * DIM, DIM, 1, err)) !=
            DS_OK ||
        (rc = ds__param_linear(params, prefix, "txt_mlp.net.2", DIM, 4 * DIM, 1, err)) != DS_OK)
        return rc;
    return DS_OK;
}

static int declare_parameters(ds_kwargs *kwargs, ds_state_dict *params, ds_error *err)
{
    int64_t num_layers = 60;
    int use_layer3d_rope = 0, use_additional_t_cond = 0;
    int rc;
    /* use_layer3d_rope only swaps the RoPE implementation, which holds no parameters. */
    if ((rc = ds__kwarg_int_range(kwargs, CLASS_NAME, "num_layers", 0, DS__PARAM_LAYERS_MAX,
                                  &num_layers, err)) != DS_OK ||
        (rc = ds_kwargs_bool(kwargs, "use_layer3d_rope", &use_layer3d_rope, err)) != DS_OK ||
        (rc = ds_kwargs_bool(kwargs, "use_additional_t_cond", &use_additional_t_cond, err)) !=
            DS_OK ||
        (rc = ds_kwargs_check_all_used(kwargs, err)) != DS_OK)
        return rc;

    if ((rc = ds__param_linear(params, "time_text_embed.timestep_embedder.", "linear_1", DIM,
                               FREQ_DIM, 1, err)) != DS_OK ||
        (rc = ds__param_linear(params, "time_text_embed.timestep_embedder.", "linear_2", DIM,
                               DIM, 1, err)) != DS_OK)
        return rc;
    if (use_additional_t_cond &&
        (rc = ds__param(params, "time_text_embed.", "addition_t_embedding.weight", 2,
                        (const int64_t[]){2, DIM}, err)) != DS_OK)
        return rc;
    if ((rc = ds__param_vector(params, "", "txt_norm.weight", TEXT_DIM, err)) != DS_OK ||
        (rc = ds__param_linear(params, "", "img_in", DIM, PATCH_DIM, 1, err)) != DS_OK ||
        (rc = ds__param_linear(params, "", "txt_in", DIM, TEXT_DIM, 1, err)) != DS_OK)
        return rc;
    for (int64_t i = 0; i < num_layers; i++) {
        char prefix[DS__PARAM_NAME_MAX];
        if ((rc = ds__param_prefix(prefix, err, "transformer_blocks.%lld.", (long long)i)) !=
                DS_OK ||
            (rc = declare_block(params, prefix, err)) != DS_OK)
            return rc;
    }
    if ((rc = ds__param_linear(params, "", "norm_out.linear", 2 * DIM, DIM, 1, err)) != DS_OK ||
        (rc = ds__param_linear(params, "", "proj_out", PATCH_DIM, DIM, 1, err)) != DS_OK)
        return rc;
    return DS_OK;
}

const ds_model_class ds__qwen_image_dit_class = {
    .name = CLASS_NAME,
    .declare_parameters = declare_parameters,
};
