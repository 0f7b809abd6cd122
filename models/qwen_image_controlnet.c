/* diffsynth/models/qwen_image_controlnet.py: the block-wise ControlNet of Qwen-Image.
 *
 * One input projection for the control latents (plus `additional_in_dim` extra channels, 4 for
 * the inpainting variant: a mask), then one small block per DiT block. The forward pieces run on
 * the op API (kernels/ops.h), called by the DiT's forward after each of its blocks. */
#include "models/qwen_image_controlnet.h"

#include <stdio.h>
#include <string.h>

#include "kernels/ops.h"
#include "models/model_class.h"
#include "models/param_tree.h"
#include "models/weight_set.h"

#define CLASS_NAME DS_QWEN_IMAGE_CONTROLNET_CLASS

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

/* ---- Forward pieces ---- */

#define NORM_EPS 1e-6f /* x_rms and y_rms */
#define OWNER "QwenImageBlockWiseControlNet"

/* A parameter's shape from the loaded tree; NULL when absent. */
static const ds_tensor_view *param(const ds_loaded_model *m, const char *name)
{
    const ds_sd_entry *e = ds_state_dict_find(&m->params, name);
    return e && !e->dict ? &e->tensor : NULL;
}

int ds_qwen_image_controlnet_shape_of(const ds_loaded_model *m,
                                      ds_qwen_image_controlnet_shape *out, ds_error *err)
{
    if (!m || !m->cls || strcmp(m->cls->name, CLASS_NAME) != 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "controlnet: the model is %s, expected a %s",
                            m && m->cls ? m->cls->name : "none", CLASS_NAME);
    /* The declared tree fixes every shape: img_in [dim, in_features], then the blocks. */
    const ds_tensor_view *img_in = param(m, "img_in.weight");
    if (!img_in || img_in->ndim != 2)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "controlnet: parameter \"img_in.weight\" is not loaded");
    out->dim = img_in->shape[0];
    out->in_features = img_in->shape[1];
    out->blocks = 0;
    for (;;) {
        char name[DS__PARAM_NAME_MAX];
        snprintf(name, sizeof name, "controlnet_blocks.%lld.input_proj.weight",
                 (long long)out->blocks);
        if (!param(m, name))
            break;
        out->blocks++;
    }
    return DS_OK;
}

void ds_qwen_image_controlnet_close(ds_qwen_image_controlnet *cn)
{
    ds_tensor_free(&cn->x_normed);
    ds_tensor_free(&cn->y_normed);
    ds_tensor_free(&cn->hidden);
}

int ds_qwen_image_controlnet_open(const ds_loaded_model *m, ds_backend *b, ds_dtype dtype,
                                  int64_t batch, int64_t cond_batch, int64_t tokens,
                                  ds_qwen_image_controlnet *cn, ds_error *err)
{
    memset(cn, 0, sizeof *cn);
    int rc = ds_qwen_image_controlnet_shape_of(m, &cn->shape, err);
    if (rc != DS_OK)
        return rc;
    if (!b || batch < 1 || tokens < 1 || (cond_batch != batch && cond_batch != 1))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "controlnet: batch %lld, conditioning batch %lld, %lld tokens: "
                            "expected a backend, batch >= 1, conditioning batch equal or 1",
                            (long long)batch, (long long)cond_batch, (long long)tokens);
    cn->model = m;
    cn->backend = b;
    int64_t dim = cn->shape.dim;
    if ((rc = ds_tensor_alloc(b, dtype, 3, (const int64_t[]){batch, tokens, dim}, &cn->x_normed,
                              err)) != DS_OK ||
        (rc = ds_tensor_alloc(b, dtype, 3, (const int64_t[]){cond_batch, tokens, dim},
                              &cn->y_normed, err)) != DS_OK ||
        (rc = ds_tensor_alloc(b, dtype, 3, (const int64_t[]){batch, tokens, dim}, &cn->hidden,
                              err)) != DS_OK)
        goto fail;
    return DS_OK;

fail:
    ds_qwen_image_controlnet_close(cn);
    return rc;
}

static int linear(ds_backend *b, const ds_tensor *x, const ds__linear_weights *w,
                  ds_activation act, ds_tensor *y, ds_error *err)
{
    ds_linear_args a = {x, &w->weight, &w->bias, 1.0f, act, y};
    return ds_linear(b, NULL, &a, err);
}

int ds_qwen_image_controlnet_process_conditioning(ds_qwen_image_controlnet *cn,
                                                  const ds_tensor *packed, ds_tensor *cond,
                                                  ds_error *err)
{
    ds__weight_set ws;
    ds__linear_weights img_in;
    ds__weight_set_init(&ws, cn->backend, OWNER);
    int rc = ds__weight_bind_linear(cn->model, &ws, "", "img_in", &img_in, err);
    if (rc == DS_OK)
        rc = linear(cn->backend, packed, &img_in, DS_ACT_NONE, cond, err);
    if (rc != DS_OK)
        ds_error_prefix(err, "controlnet: process_controlnet_conditioning: ");
    ds__weight_set_release(&ws);
    return rc;
}

int ds_qwen_image_controlnet_blockwise_forward(ds_qwen_image_controlnet *cn,
                                               const ds_tensor *img, const ds_tensor *cond,
                                               int64_t block_id, ds_tensor *out, ds_error *err)
{
    if (block_id < 0 || block_id >= cn->shape.blocks)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "controlnet: block %lld of a ControlNet with %lld blocks",
                            (long long)block_id, (long long)cn->shape.blocks);
    char p[DS__PARAM_NAME_MAX];
    snprintf(p, sizeof p, "controlnet_blocks.%lld.", (long long)block_id);
    ds_backend *b = cn->backend;
    ds__weight_set ws;
    ds_tensor x_rms, y_rms;
    ds__linear_weights input_proj, output_proj;
    ds__weight_set_init(&ws, b, OWNER);
    ds_rms_norm_args xn = {img, &x_rms, NORM_EPS, &cn->x_normed};
    ds_rms_norm_args yn = {cond, &y_rms, NORM_EPS, &cn->y_normed};
    /* The conditioning has one row for every image row, or one for all (broadcast). */
    ds_binary_args sum = {&cn->x_normed, &cn->y_normed, DS_BINARY_ADD, &cn->x_normed};
    /* x_rms(img) + y_rms(cond) -> input_proj -> GELU (nn.GELU: the erf form) -> output_proj. */
    int rc;
    if ((rc = ds__weight_bind(cn->model, &ws, p, "x_rms.weight", 0, &x_rms, err)) != DS_OK ||
        (rc = ds__weight_bind(cn->model, &ws, p, "y_rms.weight", 0, &y_rms, err)) != DS_OK ||
        (rc = ds__weight_bind_linear(cn->model, &ws, p, "input_proj", &input_proj, err)) !=
            DS_OK ||
        (rc = ds__weight_bind_linear(cn->model, &ws, p, "output_proj", &output_proj, err)) !=
            DS_OK ||
        (rc = ds_rms_norm(b, NULL, &xn, err)) != DS_OK ||
        (rc = ds_rms_norm(b, NULL, &yn, err)) != DS_OK ||
        (rc = ds_binary(b, NULL, &sum, err)) != DS_OK ||
        (rc = linear(b, &cn->x_normed, &input_proj, DS_ACT_GELU_ERF, &cn->hidden, err)) !=
            DS_OK ||
        (rc = linear(b, &cn->hidden, &output_proj, DS_ACT_NONE, out, err)) != DS_OK)
        ds_error_prefix(err, "controlnet: block %lld: ", (long long)block_id);
    ds__weight_set_release(&ws);
    return rc;
}
