/* diffsynth/models/qwen_image_controlnet.py: the block-wise ControlNet of Qwen-Image.
 *
 * One input projection for the control latents (plus `additional_in_dim` extra channels, 4 for
 * the inpainting variant: a mask), then one small block per DiT block. */
#include "models/model_class.h"
#include "models/param_tree.h"

#define CLASS_NAME "diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet"

/* BlockWiseControlBlock(dim): two RMSNorms with a weight, two Linears around a GELU. */
static int declare_block(ds_state_dict *params, const char *prefix, int64_t dim, ds_error *err)
{
    int rc;
    if ((rc = ds__param_vector(params, prefix, "x_rms.weight", dim, err)) != DS_OK ||
        (rc = ds__param_vector(params, prefix, "y_rms.weight", dim, err)) != DS_OK ||
        (rc = ds__param_linear(params, prefix, "input_proj", dim, dim, 1, err)) != DS_OK ||
        (rc = ds__param_linear(params, prefix, "output_proj", dim, dim, 1, err)) != DS_OK)
        return rc;
    return DS_OK;
}

static int declare_parameters(ds_kwargs *kwargs, ds_state_dict *params, ds_error *err)
{
    int64_t num_layers = 60, in_dim = 64, additional_in_dim = 0, dim = 3072;
    int rc;
    if ((rc = ds__kwarg_int_range(kwargs, CLASS_NAME, "num_layers", 0, DS__PARAM_LAYERS_MAX,
                                  &num_layers, err)) != DS_OK ||
        (rc = ds__kwarg_int_range(kwargs, CLASS_NAME, "in_dim", 0, DS__PARAM_DIM_MAX, &in_dim,
                                  err)) != DS_OK ||
        (rc = ds__kwarg_int_range(kwargs, CLASS_NAME, "additional_in_dim", 0, DS__PARAM_DIM_MAX,
                                  &additional_in_dim, err)) != DS_OK ||
        (rc = ds__kwarg_int_range(kwargs, CLASS_NAME, "dim", 1, DS__PARAM_DIM_MAX, &dim, err)) !=
            DS_OK ||
        (rc = ds_kwargs_check_all_used(kwargs, err)) != DS_OK)
        return rc;
    if (in_dim + additional_in_dim < 1)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: in_dim + additional_in_dim must be positive, got %lld",
                            CLASS_NAME, (long long)(in_dim + additional_in_dim));

    if ((rc = ds__param_linear(params, "", "img_in", dim, in_dim + additional_in_dim, 1, err)) !=
        DS_OK)
        return rc;
    for (int64_t i = 0; i < num_layers; i++) {
        char prefix[DS__PARAM_NAME_MAX];
        if ((rc = ds__param_prefix(prefix, err, "controlnet_blocks.%lld.", (long long)i)) != DS_OK ||
            (rc = declare_block(params, prefix, dim, err)) != DS_OK)
            return rc;
    }
    return DS_OK;
}

const ds_model_class ds__qwen_image_blockwise_controlnet_class = {
    .name = CLASS_NAME,
    .declare_parameters = declare_parameters,
};
