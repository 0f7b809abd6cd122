/* diffsynth/models/qwen_image_controlnet.py: the block-wise ControlNet of Qwen-Image.
 *
 * One input projection for the control latents (plus `additional_in_dim` extra channels, 4 for
 * the inpainting variant: a mask), then one small block per DiT block. The forward pieces run on
 * the op API (kernels/ops.h), called by the DiT's forward after each of its blocks. */
#include "models/qwen_image_controlnet.h"

#include <stdio.h>
#include <stdlib.h>
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
    if (cn->vram) {
        ds_vram_unreserve(cn->vram, cn->reserved);
        ds_vram_model_pair(cn->vram, NULL);
        cn->vram = NULL;
        cn->reserved = 0;
    }
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

/* ---- Streaming the weights through a VRAM manager ---- */

/* A unit's parameters, in the order acquire hands them out: img_in's weight and bias, or a
 * block's x_rms, y_rms, input_proj weight and bias, output_proj weight and bias. */
typedef struct unit_param {
    const char *name;
    int linear_weight;
} unit_param;

static const unit_param img_in_params[] = {{"img_in.weight", 1}, {"img_in.bias", 0}};
static const unit_param block_params[] = {
    {"x_rms.weight", 0},        {"y_rms.weight", 0},        {"input_proj.weight", 1},
    {"input_proj.bias", 0},     {"output_proj.weight", 1},  {"output_proj.bias", 0},
};
#define BLOCK_PARAMS (sizeof block_params / sizeof block_params[0])

/* The unit's tensors as the manager's sources. Each keeps the dtype ds__weight_bind gives it
 * (ds__weight_operand_dtype), so both paths run the same kernels on the same values. */
static int unit_sources(const ds_loaded_model *m, const char *prefix, const unit_param *params,
                        size_t count, ds_vram_tensor_source *src, ds_error *err)
{
    for (size_t i = 0; i < count; i++) {
        char full[DS__PARAM_NAME_MAX];
        snprintf(full, sizeof full, "%s%s", prefix, params[i].name);
        int rc = ds__weight_vram_source(m, OWNER, full, params[i].linear_weight, &src[i], err);
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

/* The model's units in `mgr`, registered once: 0 = img_in, 1 + i = controlnet_blocks.i. */
static int vram_register(const ds_loaded_model *m, int64_t blocks, ds_vram_manager *mgr,
                         ds_vram_model **out, ds_error *err)
{
    *out = ds_vram_model_find(mgr, m);
    if (*out)
        return DS_OK;
    ds_vram_tensor_source src[BLOCK_PARAMS];
    ds_vram_model *vm = NULL;
    size_t index;
    int rc = ds_vram_model_add(mgr, m->model_name ? m->model_name : "qwen_image_blockwise_controlnet",
                               DS_F32, &vm, err);
    if (rc != DS_OK)
        goto fail;
    if ((rc = unit_sources(m, "", img_in_params, 2, src, err)) != DS_OK ||
        (rc = ds_vram_unit_add(vm, "img_in", src, 2, &index, err)) != DS_OK)
        goto fail;
    for (int64_t i = 0; i < blocks; i++) {
        char prefix[DS__PARAM_NAME_MAX];
        snprintf(prefix, sizeof prefix, "controlnet_blocks.%lld.", (long long)i);
        if ((rc = unit_sources(m, prefix, block_params, BLOCK_PARAMS, src, err)) != DS_OK)
            goto fail;
        prefix[strlen(prefix) - 1] = 0; /* the unit's name: no trailing dot */
        if ((rc = ds_vram_unit_add(vm, prefix, src, BLOCK_PARAMS, &index, err)) != DS_OK)
            goto fail;
    }
    ds__weight_set_vram_adopt(vm, m, mgr);
    *out = vm;
    return DS_OK;
fail:
    ds_vram_model_remove(vm);
    return ds_error_prefix(err, "controlnet: registering the weights with the VRAM manager: ");
}

int ds_qwen_image_controlnet_stream(ds_qwen_image_controlnet *cn, ds_vram_manager *mgr,
                                    ds_vram_model *beside, int64_t blocks, ds_error *err)
{
    if (!cn->model || !mgr || cn->vram || blocks < 0 || blocks > cn->shape.blocks)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "controlnet: streaming %lld of %lld blocks needs an open ControlNet "
                            "not yet streamed and a manager",
                            (long long)blocks, (long long)cn->shape.blocks);
    ds_vram_model *vm;
    int rc = vram_register(cn->model, cn->shape.blocks, mgr, &vm, err);
    if (rc != DS_OK)
        return rc;
    size_t n = (size_t)blocks + 1;
    size_t *plan = malloc(n * sizeof *plan);
    if (!plan)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "controlnet: out of memory planning %zu units", n);
    for (size_t k = 0; k < n; k++)
        plan[k] = k;
    rc = ds_vram_plan(vm, plan, n, err);
    free(plan);
    if (rc != DS_OK)
        return rc;
    size_t bytes = ds_tensor_nbytes(&cn->x_normed) + ds_tensor_nbytes(&cn->y_normed) +
                   ds_tensor_nbytes(&cn->hidden);
    if ((rc = ds_vram_reserve(vm, "controlnet: activations", bytes, err)) != DS_OK)
        return rc;
    cn->vram = vm;
    cn->reserved = bytes;
    ds_vram_model_pair(vm, beside);
    return DS_OK;
}

/* A unit's weights into t[0..count): acquired from the manager (held until unit_end), or
 * without one bound into `ws` as views or uploads. */
static int unit_begin(ds_qwen_image_controlnet *cn, size_t index, const char *prefix,
                      const unit_param *params, size_t count, ds__weight_set *ws, ds_tensor *t,
                      ds_error *err)
{
    if (cn->vram) {
        const ds_tensor *held;
        int rc = ds_vram_acquire(cn->vram, index, NULL, &held, err);
        if (rc == DS_OK)
            memcpy(t, held, count * sizeof *t);
        return rc;
    }
    for (size_t i = 0; i < count; i++) {
        int rc = ds__weight_bind(cn->model, ws, prefix, params[i].name, params[i].linear_weight,
                                 &t[i], err);
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

/* Ends a successful unit_begin; `rc` is the work's status, kept when it is an error. */
static int unit_end(ds_qwen_image_controlnet *cn, size_t index, ds__weight_set *ws, int rc,
                    ds_error *err)
{
    ds__weight_set_release(ws);
    if (!cn->vram)
        return rc;
    ds_error ignored;
    int rel = ds_vram_release(cn->vram, index, NULL, rc == DS_OK ? err : &ignored);
    return rc != DS_OK ? rc : rel;
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
    ds_tensor t[2];
    ds__weight_set_init(&ws, cn->backend, OWNER);
    int rc = unit_begin(cn, 0, "", img_in_params, 2, &ws, t, err);
    if (rc == DS_OK) {
        ds__linear_weights img_in = {t[0], t[1]};
        rc = unit_end(cn, 0, &ws, linear(cn->backend, packed, &img_in, DS_ACT_NONE, cond, err),
                      err);
    }
    ds__weight_set_release(&ws);
    if (rc != DS_OK)
        ds_error_prefix(err, "controlnet: process_controlnet_conditioning: ");
    return rc;
}

/* BlockWiseControlBlock on its weights t (block_params' order): x_rms(img) + y_rms(cond) ->
 * input_proj -> GELU (nn.GELU: the erf form) -> output_proj. */
static int block_compute(ds_qwen_image_controlnet *cn, const ds_tensor *img,
                         const ds_tensor *cond, const ds_tensor *t, ds_tensor *out, ds_error *err)
{
    ds_backend *b = cn->backend;
    ds__linear_weights input_proj = {t[2], t[3]}, output_proj = {t[4], t[5]};
    ds_rms_norm_args xn = {img, &t[0], NORM_EPS, &cn->x_normed};
    ds_rms_norm_args yn = {cond, &t[1], NORM_EPS, &cn->y_normed};
    /* The conditioning has one row for every image row, or one for all (broadcast). */
    ds_binary_args sum = {&cn->x_normed, &cn->y_normed, DS_BINARY_ADD, &cn->x_normed};
    int rc;
    if ((rc = ds_rms_norm(b, NULL, &xn, err)) != DS_OK ||
        (rc = ds_rms_norm(b, NULL, &yn, err)) != DS_OK ||
        (rc = ds_binary(b, NULL, &sum, err)) != DS_OK ||
        (rc = linear(b, &cn->x_normed, &input_proj, DS_ACT_GELU_ERF, &cn->hidden, err)) !=
            DS_OK ||
        (rc = linear(b, &cn->hidden, &output_proj, DS_ACT_NONE, out, err)) != DS_OK)
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
    char p[DS__PARAM_NAME_MAX];
    snprintf(p, sizeof p, "controlnet_blocks.%lld.", (long long)block_id);
    size_t unit = 1 + (size_t)block_id;
    ds__weight_set ws;
    ds_tensor t[BLOCK_PARAMS];
    ds__weight_set_init(&ws, cn->backend, OWNER);
    int rc = unit_begin(cn, unit, p, block_params, BLOCK_PARAMS, &ws, t, err);
    if (rc == DS_OK)
        rc = unit_end(cn, unit, &ws, block_compute(cn, img, cond, t, out, err), err);
    ds__weight_set_release(&ws);
    if (rc != DS_OK)
        ds_error_prefix(err, "controlnet: block %lld: ", (long long)block_id);
    return rc;
}
