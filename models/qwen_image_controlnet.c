/* diffsynth/models/qwen_image_controlnet.py: the block-wise ControlNet of Qwen-Image.
 *
 * One input projection for the control latents (plus `additional_in_dim` extra channels, 4 for
 * the inpainting variant: a mask), then one small block per DiT block. The forward pieces run on
 * the op API (kernels/ops.h), called by the DiT's forward after each of its blocks. */
#include "models/qwen_image_controlnet.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "models/model_class.h"
#include "models/module.h"
#include "models/param_tree.h"
#include "models/weight_set.h"

#define CLASS_NAME DS_QWEN_IMAGE_CONTROLNET_CLASS

/* What the kwargs decide (ds_module dims). */
enum { KW_LAYERS, KW_IN_FEATURES, KW_DIM, KW_COUNT };

typedef struct input_weights {
    ds__linear_weights img_in; /* [dim, in_dim + additional_in_dim] */
} input_weights;

/* BlockWiseControlBlock(dim): two RMSNorms with a weight, two Linears around a GELU. */
typedef struct block_weights {
    ds_tensor x_rms;                /* [dim] */
    ds_tensor y_rms;                /* [dim] */
    ds__linear_weights input_proj;  /* [dim, dim] */
    ds__linear_weights output_proj; /* [dim, dim] */
} block_weights;

/* The groups, each one transfer unit per copy: "img_in", "controlnet_blocks.<i>". */
enum { IMG_IN, BLOCKS };
static const char *const img_in_units[] = {"img_in"};
static const char *const block_units[] = {""};

#define DIM_KW DS_MODULE_DIM(KW_DIM)
static const ds_module input_modules[] = {
    {"img_in", DS_MODULE_LINEAR, 2, {DIM_KW, DS_MODULE_DIM(KW_IN_FEATURES)}, 0,
     offsetof(input_weights, img_in), 0},
};
static const ds_module block_modules[] = {
    {"x_rms", DS_MODULE_NORM, 1, {DIM_KW}, 0, offsetof(block_weights, x_rms), 0},
    {"y_rms", DS_MODULE_NORM, 1, {DIM_KW}, 0, offsetof(block_weights, y_rms), 0},
    {"input_proj", DS_MODULE_LINEAR, 2, {DIM_KW, DIM_KW}, 0, offsetof(block_weights, input_proj),
     0},
    {"output_proj", DS_MODULE_LINEAR, 2, {DIM_KW, DIM_KW}, 0,
     offsetof(block_weights, output_proj), 0},
};
static const ds_module_group groups[] = {
    [IMG_IN] = {"", 0, input_modules, 1, img_in_units, 1},
    [BLOCKS] = {"controlnet_blocks.%lld.", DS_MODULE_DIM(KW_LAYERS), block_modules,
                sizeof block_modules / sizeof block_modules[0], block_units, 1},
};
static const ds_module_model modules = {"QwenImageBlockWiseControlNet",
                                        "qwen_image_blockwise_controlnet", groups, 2};

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
    const int64_t dims[KW_COUNT] = {[KW_LAYERS] = num_layers,
                                    [KW_IN_FEATURES] = in_dim + additional_in_dim,
                                    [KW_DIM] = dim};
    return ds_module_declare(&modules, dims, params, err);
}

const ds_model_class ds__qwen_image_blockwise_controlnet_class = {
    .name = CLASS_NAME,
    .declare_parameters = declare_parameters,
};

/* ---- Forward pieces ---- */

#define NORM_EPS 1e-6f /* x_rms and y_rms */
#define OWNER "QwenImageBlockWiseControlNet"

int ds_qwen_image_controlnet_shape_of(const ds_loaded_model *m,
                                      ds_qwen_image_controlnet_shape *out, ds_error *err)
{
    if (!m || !m->cls || strcmp(m->cls->name, CLASS_NAME) != 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "controlnet: the model is %s, expected a %s",
                            m && m->cls ? m->cls->name : "none", CLASS_NAME);
    /* The declared tree fixes every shape: img_in [dim, in_features], then the blocks. */
    const ds_tensor_view *img_in =
        ds_module_find(&modules, m, IMG_IN, 0, offsetof(input_weights, img_in));
    if (!img_in || img_in->ndim != 2)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "controlnet: parameter \"img_in.weight\" is not loaded");
    out->dim = img_in->shape[0];
    out->in_features = img_in->shape[1];
    out->blocks = ds_module_count(&modules, m, BLOCKS);
    return DS_OK;
}

void ds_qwen_image_controlnet_close(ds_qwen_image_controlnet *cn)
{
    if (cn->vram) {
        ds_vram_unreserve(cn->vram, cn->reserved);
        ds_vram_model_pair(cn->vram, NULL);
        cn->vram = NULL;
        cn->reserved = 0;
    }
    ds_tensor_free(&cn->x_normed);
    ds_tensor_free(&cn->y_normed);
    ds_tensor_free(&cn->hidden);
    ds_module_close(&cn->run);
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
    if ((rc = ds_module_open(&cn->run, &modules, m, b, NULL, 0, "controlnet", err)) != DS_OK)
        goto fail;
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

/* ---- Streaming the weights through a VRAM manager ---- */

int ds_qwen_image_controlnet_stream(ds_qwen_image_controlnet *cn, ds_vram_manager *mgr,
                                    ds_vram_model *beside, int64_t blocks, ds_error *err)
{
    if (!cn->model || !mgr || cn->vram || blocks < 0 || blocks > cn->shape.blocks)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "controlnet: streaming %lld of %lld blocks needs an open ControlNet "
                            "not yet streamed and a manager",
                            (long long)blocks, (long long)cn->shape.blocks);
    /* The run opened without a manager gives way to one that streams. */
    ds_module_close(&cn->run);
    int rc = ds_module_open(&cn->run, &modules, cn->model, cn->backend, mgr, 0, "controlnet",
                            err);
    if (rc != DS_OK ||
        (rc = ds_module_plan(&cn->run, (size_t)blocks + 1, "controlnet", err)) != DS_OK)
        return rc;
    ds_vram_model *vm = cn->run.vram;
    size_t bytes = ds_tensor_nbytes(&cn->x_normed) + ds_tensor_nbytes(&cn->y_normed) +
                   ds_tensor_nbytes(&cn->hidden);
    if ((rc = ds_vram_reserve(vm, "controlnet: activations", bytes, err)) != DS_OK)
        return rc;
    cn->vram = vm;
    cn->reserved = bytes;
    ds_vram_model_pair(vm, beside);
    return DS_OK;
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
    input_weights w;
    int rc = ds_module_use(&cn->run, IMG_IN, 0, 0, &w, err);
    if (rc == DS_OK)
        rc = linear(cn->backend, packed, &w.img_in, DS_ACT_NONE, cond, err);
    rc = ds_module_end(&cn->run, rc, err);
    if (rc != DS_OK)
        ds_error_prefix(err, "controlnet: process_controlnet_conditioning: ");
    return rc;
}

/* BlockWiseControlBlock.forward: x_rms(img) + y_rms(cond) -> input_proj -> GELU (nn.GELU: the
 * erf form) -> output_proj. */
static int control_block(ds_qwen_image_controlnet *cn, const ds_tensor *img,
                         const ds_tensor *cond, const block_weights *w, ds_tensor *out,
                         ds_error *err)
{
    ds_backend *b = cn->backend;
    ds_rms_norm_args xn = {img, &w->x_rms, NORM_EPS, &cn->x_normed};
    ds_rms_norm_args yn = {cond, &w->y_rms, NORM_EPS, &cn->y_normed};
    /* The conditioning has one row for every image row, or one for all (broadcast). */
    ds_binary_args sum = {&cn->x_normed, &cn->y_normed, DS_BINARY_ADD, &cn->x_normed};
    int rc;
    if ((rc = ds_rms_norm(b, NULL, &xn, err)) != DS_OK ||
        (rc = ds_rms_norm(b, NULL, &yn, err)) != DS_OK ||
        (rc = ds_binary(b, NULL, &sum, err)) != DS_OK ||
        (rc = linear(b, &cn->x_normed, &w->input_proj, DS_ACT_GELU_ERF, &cn->hidden, err)) !=
            DS_OK ||
        (rc = linear(b, &cn->hidden, &w->output_proj, DS_ACT_NONE, out, err)) != DS_OK)
        return rc;
    return DS_OK;
}

int ds_qwen_image_controlnet_blockwise_forward(ds_qwen_image_controlnet *cn,
                                               const ds_tensor *img, const ds_tensor *cond,
                                               int64_t block_id, ds_tensor *out, ds_error *err)
{
    if (block_id < 0 || block_id >= cn->shape.blocks)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "controlnet: block %lld of a ControlNet with %lld blocks",
                            (long long)block_id, (long long)cn->shape.blocks);
    block_weights w;
    int rc = ds_module_use(&cn->run, BLOCKS, block_id, 0, &w, err);
    if (rc == DS_OK)
        rc = control_block(cn, img, cond, &w, out, err);
    rc = ds_module_end(&cn->run, rc, err);
    if (rc != DS_OK)
        ds_error_prefix(err, "controlnet: block %lld: ", (long long)block_id);
    return rc;
}
