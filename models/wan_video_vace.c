/* diffsynth/models/wan_video_vace.py: VaceWanModel, the VACE branch of the Wan video DiT.
 *
 * Its blocks are the DiT's blocks (VaceWanAttentionBlock subclasses DiTBlock) with an output
 * projection each, and an input projection on the block of DiT layer 0; its patch embedding
 * takes the VACE context (VAE latents of the masked video and the mask). Only the DiT's
 * forward runs it (a hint per listed layer), so the class has no step of its own. */
#include "models/wan_video_vace.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "kernels/ops.h"
#include "models/model_class.h"
#include "models/module.h"
#include "models/param_tree.h"

#define CLASS_NAME "diffsynth.models.wan_video_vace.VaceWanModel"

/* KW_IMAGE: has_image_input, always 0 here (refused otherwise). */
enum { KW_DIM, KW_FFN, KW_LAYERS, KW_IN_DIM, KW_IMAGE, KW_COUNT };

typedef struct patch_weights {
    ds__linear_weights patch_embedding; /* Conv3d [dim, vace_in_dim, 1, 2, 2] */
} patch_weights;

typedef struct before_weights {
    ds__linear_weights before_proj; /* [dim, dim]: the block of DiT layer 0 */
} before_weights;

enum { PATCH_GROUP, BEFORE_GROUP, BLOCKS };
static const char *const patch_units[] = {"patch_embedding"};
static const char *const before_units[] = {"before_proj"};

#define D(i) DS_MODULE_DIM(i)
#define COUNT(a) (sizeof a / sizeof a[0])

static const ds_module patch_modules[] = {
    {"vace_patch_embedding", DS_MODULE_CONV, 5, {D(KW_DIM), D(KW_IN_DIM), 1, DS__WAN_PATCH,
     DS__WAN_PATCH}, 0, offsetof(patch_weights, patch_embedding), 0},
};

static const ds_module before_modules[] = {
    DS__WAN_LINEAR("before_proj", D(KW_DIM), D(KW_DIM), 0,
                   offsetof(before_weights, before_proj), 0),
};

/* VaceWanAttentionBlock: DiTBlock's modules, then after_proj (used right after the FFN). */
static const ds_module block_modules[] = {
    DS__WAN_BLOCK_MODULES(D(KW_DIM), D(KW_FFN), DS_MODULE_IF(KW_IMAGE))
    DS__WAN_LINEAR("after_proj", D(KW_DIM), D(KW_DIM), DS__WAN_FFN, DS__WAN_BLOCK(after_proj), 0),
};

/* In the order a forward uses them; upstream registers the blocks first (the hash sorts). */
static const ds_module_group groups[] = {
    [PATCH_GROUP] = {"", 0, patch_modules, COUNT(patch_modules), patch_units,
                     COUNT(patch_units)},
    [BEFORE_GROUP] = {"vace_blocks.0.", 0, before_modules, COUNT(before_modules), before_units,
                      COUNT(before_units)},
    [BLOCKS] = {"vace_blocks.%lld.", D(KW_LAYERS), block_modules, COUNT(block_modules),
                ds__wan_block_units, DS__WAN_BLOCK_UNITS},
};

static const ds_module_model modules = {"VaceWanModel", "wan_video_vace", groups,
                                        COUNT(groups)};

/* Reads and checks the kwargs into a ds__wan_vace_config. */
static int read_config(ds_kwargs *kw, void *config, ds_error *err)
{
    ds__wan_vace_config *c = config;
    *c = (ds__wan_vace_config){.layer_count = 15, .in_dim = 96, .dim = 1536, .num_heads = 12,
                               .ffn_dim = 8960, .eps = 1e-6};
    for (int i = 0; i < 15; i++)
        c->layers[i] = 2 * i;
    int64_t patch[3] = {1, DS__WAN_PATCH, DS__WAN_PATCH};
    int patch_count = 3, patch_present = 0, present = 0, rc;
    if ((rc = ds__kwarg_int_list(kw, "vace_layers", c->layers, DS__WAN_VACE_LAYERS_MAX,
                                 &c->layer_count, &present, err)) != DS_OK ||
        (rc = ds__kwarg_int_range(kw, CLASS_NAME, "vace_in_dim", 1, DS__PARAM_DIM_MAX,
                                  &c->in_dim, err)) != DS_OK ||
        (rc = ds__kwarg_int_range(kw, CLASS_NAME, "dim", 1, DS__PARAM_DIM_MAX, &c->dim, err)) !=
            DS_OK ||
        (rc = ds__kwarg_int_range(kw, CLASS_NAME, "num_heads", 1, DS__PARAM_DIM_MAX,
                                  &c->num_heads, err)) != DS_OK ||
        (rc = ds__kwarg_int_range(kw, CLASS_NAME, "ffn_dim", 1, DS__PARAM_DIM_MAX, &c->ffn_dim,
                                  err)) != DS_OK ||
        (rc = ds_kwargs_double(kw, "eps", &c->eps, err)) != DS_OK ||
        (rc = ds_kwargs_bool(kw, "has_image_input", &c->has_image_input, err)) != DS_OK ||
        (rc = ds__kwarg_int_list(kw, "patch_size", patch, 3, &patch_count, &patch_present,
                                 err)) != DS_OK ||
        (rc = ds_kwargs_check_all_used(kw, err)) != DS_OK)
        return rc;
    if (patch_count != 3 || patch[0] != 1 || patch[1] != DS__WAN_PATCH ||
        patch[2] != DS__WAN_PATCH)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "%s: keyword argument \"patch_size\" other than [1, 2, 2] is not "
                            "implemented", CLASS_NAME);
    if (c->has_image_input)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "%s: keyword argument \"has_image_input\" true is not implemented",
                            CLASS_NAME);
    /* Upstream's forward starts the stream at the block of layer 0 (the one with before_proj)
     * and takes the blocks in list order. */
    if (c->layer_count < 1 || c->layers[0] != 0)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "%s: keyword argument \"vace_layers\" must start with 0 (the block "
                            "with before_proj)", CLASS_NAME);
    for (int i = 1; i < c->layer_count; i++)
        if (c->layers[i] <= c->layers[i - 1])
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: keyword argument \"vace_layers\" must increase, got %lld "
                                "after %lld", CLASS_NAME, (long long)c->layers[i],
                                (long long)c->layers[i - 1]);
    if (!(c->eps > 0.0) || !isfinite(c->eps))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: keyword argument \"eps\" must be a positive number", CLASS_NAME);
    if (c->dim % c->num_heads || (c->dim / c->num_heads) % 2)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: dim %lld must split into num_heads %lld heads of even width",
                            CLASS_NAME, (long long)c->dim, (long long)c->num_heads);
    return DS_OK;
}

static int declare_parameters(ds_kwargs *kwargs, ds_state_dict *params, ds_error *err)
{
    ds__wan_vace_config c;
    int rc = read_config(kwargs, &c, err);
    if (rc != DS_OK)
        return rc;
    int64_t dims[KW_COUNT] = {[KW_DIM] = c.dim, [KW_FFN] = c.ffn_dim,
                              [KW_LAYERS] = c.layer_count, [KW_IN_DIM] = c.in_dim,
                              [KW_IMAGE] = 0};
    return ds_module_declare(&modules, dims, params, err);
}

int ds__wan_vace_config_of(const ds_loaded_model *vace, ds__wan_vace_config *c, ds_error *err)
{
    if (!vace->model_class || strcmp(vace->model_class, CLASS_NAME) != 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "the model is a %s, expected a %s",
                            vace->model_class ? vace->model_class : "(no class)", CLASS_NAME);
    return ds_kwargs_read(vace->extra_kwargs_json, CLASS_NAME, read_config, c, err);
}

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}

int ds__wan_vace_hints(const ds_loaded_model *vace, const ds_step_context *ctx,
                       const ds__wan_dims *d, ds__wan_state *s, const ds_tensor *vace_context,
                       ds_tensor *hints, ds_error *err)
{
    ds_backend *b = ctx->backend;
    ds_module_run run;
    ds_tensor upload = {0}, packed = {0}, c = {0}, context;
    int rc = ds_module_open(&run, &modules, vace, b, ctx->vram, 1, "forward: VACE", err);
    if (rc != DS_OK)
        return rc;
    int64_t blocks = run.counts[BLOCKS];
    if ((rc = ds_module_input(b, vace_context, &upload, &context, err)) != DS_OK ||
        (rc = ds_module_alloc(b, d->dtype, 3,
                              SHAPE(d->batch, d->tokens,
                                    vace_context->shape[1] * DS__WAN_PATCH * DS__WAN_PATCH),
                              DS_TENSORS(&packed), err)) != DS_OK ||
        (rc = ds_module_alloc(b, d->dtype, 3, SHAPE(d->batch, d->tokens, d->dim),
                              DS_TENSORS(&c), err)) != DS_OK ||
        (rc = ds_module_reserve(&run, "forward: VACE activations",
                                ds_module_bytes(DS_TENSORS(&upload, &packed, &c), 3), err)) !=
            DS_OK)
        goto done;

    /* c = before_proj(vace_patch_embedding(vace_context)) + x. */
    patch_weights pw;
    before_weights bw;
    ds_binary_args add_x = {&s->y, &s->x, DS_BINARY_ADD, &c};
    if ((rc = ds_module_use(&run, PATCH_GROUP, 0, 0, &pw, err)) != DS_OK ||
        (rc = ds__wan_patch_embedding(b, d, &pw.patch_embedding, &context, &packed, &c, err)) !=
            DS_OK ||
        (rc = ds_module_use(&run, BEFORE_GROUP, 0, 0, &bw, err)) != DS_OK ||
        (rc = ds__wan_linear(b, &c, &bw.before_proj, DS_ACT_NONE, &s->y, err)) != DS_OK ||
        (rc = ds_binary(b, NULL, &add_x, err)) != DS_OK ||
        (rc = ds_module_done(&run, err)) != DS_OK)
        goto done;

    /* Each block carries c on; its after_proj(c) is the hint of its layer. */
    for (int64_t n = 0; n < blocks; n++) {
        ds__wan_block_weights w;
        if ((rc = ds_module_cancelled(ctx, "forward", "VACE block", n, blocks, err)) != DS_OK)
            goto done;
        if ((rc = ds__wan_block(b, &run, BLOCKS, n, d, s, &c, &w, err)) != DS_OK ||
            (rc = ds__wan_linear(b, &c, &w.after_proj, DS_ACT_NONE, &hints[n], err)) != DS_OK ||
            (rc = ds_module_done(&run, err)) != DS_OK) {
            ds_error_prefix(err, "forward: VACE block %lld: ", (long long)n);
            goto done;
        }
    }
done:
    ds_module_close(&run);
    ds_tensor_free(&upload);
    ds_tensor_free(&packed);
    ds_tensor_free(&c);
    return rc;
}

const ds_model_class ds__wan_video_vace_class = {
    .name = CLASS_NAME,
    .declare_parameters = declare_parameters,
};
