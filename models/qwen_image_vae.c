/* diffsynth/models/qwen_image_vae.py: the Qwen-Image VAE, a Wan2.1-style 3D causal VAE
 * (facts §7). The latent mean/std are attributes, not parameters.
 *
 * The forward passes are upstream's decode and encode of images (one frame, no feature cache),
 * one function per upstream module, on the op API (kernels/ops.h). */
#include "models/qwen_image_vae.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "models/module.h"
#include "models/param_tree.h"
#include "models/weight_set.h"
#include "vram/vram_manager.h"

#define CLASS_NAME "diffsynth.models.qwen_image_vae.QwenImageVAE"

/* Longest dim_mult / temperal_downsample / attn_scales list accepted. */
#define MAX_LEVELS 16
#define MAX_RES_BLOCKS 1000

static const int64_t K333[3] = {3, 3, 3};
static const int64_t K111[3] = {1, 1, 1};
static const int64_t K33[2] = {3, 3};
static const int64_t K11[2] = {1, 1};
static const int64_t K311[3] = {3, 1, 1};

typedef enum resample_mode {
    UPSAMPLE_2D,
    UPSAMPLE_3D,
    DOWNSAMPLE_2D,
    DOWNSAMPLE_3D,
} resample_mode;

/* QwenImageRMS_norm(dim, images=False).gamma: [dim, 1, 1, 1]; images=True: [dim, 1, 1]. */
static int declare_rms(ds_state_dict *params, const char *prefix, const char *name, int64_t dim,
                       int images, ds_error *err)
{
    return ds__param(params, prefix, name, images ? 3 : 4, (const int64_t[]){dim, 1, 1, 1}, err);
}

/* QwenImageResidualBlock: norm1, conv1, norm2, conv2, and a 1x1x1 shortcut when widths differ. */
static int declare_residual(ds_state_dict *params, const char *prefix, int64_t in, int64_t out,
                            ds_error *err)
{
    int rc;
    if ((rc = declare_rms(params, prefix, "norm1.gamma", in, 0, err)) != DS_OK ||
        (rc = ds__param_conv(params, prefix, "conv1", out, in, 3, K333, err)) != DS_OK ||
        (rc = declare_rms(params, prefix, "norm2.gamma", out, 0, err)) != DS_OK ||
        (rc = ds__param_conv(params, prefix, "conv2", out, out, 3, K333, err)) != DS_OK)
        return rc;
    if (in != out && (rc = ds__param_conv(params, prefix, "conv_shortcut", out, in, 3, K111,
                                          err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* QwenImageAttentionBlock: a per-frame single-head attention with 1x1 Conv2d projections. */
static int declare_attention(ds_state_dict *params, const char *prefix, int64_t dim, ds_error *err)
{
    int rc;
    if ((rc = declare_rms(params, prefix, "norm.gamma", dim, 1, err)) != DS_OK ||
        (rc = ds__param_conv(params, prefix, "to_qkv", 3 * dim, dim, 2, K11, err)) != DS_OK ||
        (rc = ds__param_conv(params, prefix, "proj", dim, dim, 2, K11, err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* QwenImageResample: the Conv2d sits at index 1 of a Sequential behind an Upsample or a
 * ZeroPad2d; the 3D modes add a temporal conv. */
static int declare_resample(ds_state_dict *params, const char *prefix, int64_t dim,
                            resample_mode mode, ds_error *err)
{
    int up = mode == UPSAMPLE_2D || mode == UPSAMPLE_3D;
    int rc = ds__param_conv(params, prefix, "resample.1", up ? dim / 2 : dim, dim, 2, K33, err);
    if (rc != DS_OK)
        return rc;
    if (mode == UPSAMPLE_3D)
        return ds__param_conv(params, prefix, "time_conv", dim * 2, dim, 3, K311, err);
    if (mode == DOWNSAMPLE_3D)
        return ds__param_conv(params, prefix, "time_conv", dim, dim, 3, K311, err);
    return DS_OK;
}

/* QwenImageMidBlock(num_layers=1): `attentions` is registered before `resnets`. */
static int declare_mid(ds_state_dict *params, const char *prefix, int64_t dim, ds_error *err)
{
    char sub[DS__PARAM_NAME_MAX];
    int rc;
    if ((rc = ds__param_prefix(sub, err, "%sattentions.0.", prefix)) != DS_OK ||
        (rc = declare_attention(params, sub, dim, err)) != DS_OK)
        return rc;
    for (int i = 0; i < 2; i++)
        if ((rc = ds__param_prefix(sub, err, "%sresnets.%d.", prefix, i)) != DS_OK ||
            (rc = declare_residual(params, sub, dim, dim, err)) != DS_OK)
            return rc;
    return DS_OK;
}

typedef struct vae_config {
    int64_t base_dim, z_dim, num_res_blocks, image_channels;
    int64_t dim_mult[MAX_LEVELS];
    int levels;
    int64_t attn_scales[MAX_LEVELS];
    int attn_scale_count;
    int64_t temperal_downsample[MAX_LEVELS];
    int temporal_count;
} vae_config;

/* Upstream matches `scale in attn_scales`, with scale 1.0, 0.5, 0.25, ... per level. */
static int has_attention(const vae_config *c, double scale)
{
    for (int i = 0; i < c->attn_scale_count; i++)
        if ((double)c->attn_scales[i] == scale)
            return 1;
    return 0;
}

/* QwenImageEncoder3d(base_dim, 2 * z_dim, ...). */
static int declare_encoder(ds_state_dict *params, const vae_config *c, ds_error *err)
{
    char prefix[DS__PARAM_NAME_MAX];
    int64_t dims[MAX_LEVELS + 1];
    dims[0] = c->base_dim;
    for (int i = 0; i < c->levels; i++)
        dims[i + 1] = c->base_dim * c->dim_mult[i];

    int rc = ds__param_conv(params, "encoder.", "conv_in", dims[0], c->image_channels, 3, K333,
                            err);
    if (rc != DS_OK)
        return rc;
    int64_t block = 0;
    double scale = 1.0;
    for (int i = 0; i < c->levels; i++) {
        int64_t in = dims[i], out = dims[i + 1];
        for (int64_t r = 0; r < c->num_res_blocks; r++) {
            if ((rc = ds__param_prefix(prefix, err, "encoder.down_blocks.%" PRId64 ".",
                                       block++)) != DS_OK ||
                (rc = declare_residual(params, prefix, in, out, err)) != DS_OK)
                return rc;
            if (has_attention(c, scale) &&
                ((rc = ds__param_prefix(prefix, err, "encoder.down_blocks.%" PRId64 ".",
                                        block++)) != DS_OK ||
                 (rc = declare_attention(params, prefix, out, err)) != DS_OK))
                return rc;
            in = out;
        }
        if (i != c->levels - 1) {
            resample_mode mode = c->temperal_downsample[i] ? DOWNSAMPLE_3D : DOWNSAMPLE_2D;
            if ((rc = ds__param_prefix(prefix, err, "encoder.down_blocks.%" PRId64 ".",
                                       block++)) != DS_OK ||
                (rc = declare_resample(params, prefix, out, mode, err)) != DS_OK)
                return rc;
            scale /= 2.0;
        }
    }
    int64_t top = dims[c->levels];
    if ((rc = declare_mid(params, "encoder.mid_block.", top, err)) != DS_OK ||
        (rc = declare_rms(params, "encoder.", "norm_out.gamma", top, 0, err)) != DS_OK ||
        (rc = ds__param_conv(params, "encoder.", "conv_out", 2 * c->z_dim, top, 3, K333, err)) !=
            DS_OK)
        return rc;
    return DS_OK;
}

/* QwenImageDecoder3d(base_dim, z_dim, ..., temperal_upsample = temperal_downsample[::-1]).
 * Its up blocks take no attention, whatever attn_scales says. */
static int declare_decoder(ds_state_dict *params, const vae_config *c, ds_error *err)
{
    char prefix[DS__PARAM_NAME_MAX];
    int64_t dims[MAX_LEVELS + 1];
    dims[0] = c->base_dim * c->dim_mult[c->levels - 1];
    for (int i = 0; i < c->levels; i++)
        dims[i + 1] = c->base_dim * c->dim_mult[c->levels - 1 - i];

    int rc;
    if ((rc = ds__param_conv(params, "decoder.", "conv_in", dims[0], c->z_dim, 3, K333, err)) !=
            DS_OK ||
        (rc = declare_mid(params, "decoder.mid_block.", dims[0], err)) != DS_OK)
        return rc;
    for (int i = 0; i < c->levels; i++) {
        /* Every up block but the first follows an upsampler that halved the width. */
        int64_t in = i > 0 ? dims[i] / 2 : dims[i], out = dims[i + 1];
        for (int64_t r = 0; r < c->num_res_blocks + 1; r++) {
            if ((rc = ds__param_prefix(prefix, err,
                                       "decoder.up_blocks.%d.resnets.%" PRId64 ".", i, r)) !=
                    DS_OK ||
                (rc = declare_residual(params, prefix, in, out, err)) != DS_OK)
                return rc;
            in = out;
        }
        if (i != c->levels - 1) {
            int temporal = (int)c->temperal_downsample[c->temporal_count - 1 - i] != 0;
            if ((rc = ds__param_prefix(prefix, err, "decoder.up_blocks.%d.upsamplers.0.", i)) !=
                    DS_OK ||
                (rc = declare_resample(params, prefix, out, temporal ? UPSAMPLE_3D : UPSAMPLE_2D,
                                       err)) != DS_OK)
                return rc;
        }
    }
    int64_t last = dims[c->levels];
    if ((rc = declare_rms(params, "decoder.", "norm_out.gamma", last, 0, err)) != DS_OK ||
        (rc = ds__param_conv(params, "decoder.", "conv_out", c->image_channels, last, 3, K333,
                             err)) != DS_OK)
        return rc;
    return DS_OK;
}

static int read_kwargs(ds_kwargs *kwargs, vae_config *c, ds_error *err)
{
    *c = (vae_config){
        .base_dim = 96,
        .z_dim = 16,
        .num_res_blocks = 2,
        .image_channels = 3,
        .dim_mult = {1, 2, 4, 4},
        .levels = 4,
        .temperal_downsample = {0, 1, 1},
        .temporal_count = 3,
    };
    double dropout = 0.0; /* dropout layers hold no parameters */
    int present, rc;
    if ((rc = ds__kwarg_int_range(kwargs, CLASS_NAME, "base_dim", 1, DS__PARAM_DIM_MAX,
                                  &c->base_dim, err)) != DS_OK ||
        (rc = ds__kwarg_int_range(kwargs, CLASS_NAME, "z_dim", 1, DS__PARAM_DIM_MAX, &c->z_dim,
                                  err)) != DS_OK ||
        (rc = ds__kwarg_int_list(kwargs, "dim_mult", c->dim_mult, MAX_LEVELS, &c->levels,
                                 &present, err)) != DS_OK ||
        (rc = ds__kwarg_int_range(kwargs, CLASS_NAME, "num_res_blocks", 0, MAX_RES_BLOCKS,
                                  &c->num_res_blocks, err)) != DS_OK ||
        /* Upstream compares float scales; ds_kwargs reads integer lists, which covers [] and
         * [1] (the only integral scale a level can have). */
        (rc = ds__kwarg_int_list(kwargs, "attn_scales", c->attn_scales, MAX_LEVELS,
                                 &c->attn_scale_count, &present, err)) != DS_OK ||
        /* Python bools are ints: 0/1 lists are what upstream's truthiness test sees. */
        (rc = ds__kwarg_int_list(kwargs, "temperal_downsample", c->temperal_downsample,
                                 MAX_LEVELS, &c->temporal_count, &present, err)) != DS_OK ||
        (rc = ds_kwargs_double(kwargs, "dropout", &dropout, err)) != DS_OK ||
        (rc = ds__kwarg_int_range(kwargs, CLASS_NAME, "image_channels", 1, DS__PARAM_DIM_MAX,
                                  &c->image_channels, err)) != DS_OK ||
        (rc = ds_kwargs_check_all_used(kwargs, err)) != DS_OK)
        return rc;

    if (c->levels < 1)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: dim_mult must not be empty",
                            CLASS_NAME);
    for (int i = 0; i < c->levels; i++)
        if (c->dim_mult[i] < 1 || c->dim_mult[i] > DS__PARAM_DIM_MAX / c->base_dim)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: dim_mult[%d] = %" PRId64 " gives a width outside 1..%" PRId64,
                                CLASS_NAME, i, c->dim_mult[i], DS__PARAM_DIM_MAX);
    /* Upstream indexes temperal_downsample[i] for every level but the last. */
    if (c->temporal_count < c->levels - 1)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: temperal_downsample has %d entries, dim_mult needs %d",
                            CLASS_NAME, c->temporal_count, c->levels - 1);
    return DS_OK;
}

static int declare_parameters(ds_kwargs *kwargs, ds_state_dict *params, ds_error *err)
{
    vae_config c;
    int rc;
    if ((rc = read_kwargs(kwargs, &c, err)) != DS_OK ||
        (rc = declare_encoder(params, &c, err)) != DS_OK ||
        (rc = ds__param_conv(params, "", "quant_conv", 2 * c.z_dim, 2 * c.z_dim, 3, K111, err)) !=
            DS_OK ||
        (rc = ds__param_conv(params, "", "post_quant_conv", c.z_dim, c.z_dim, 3, K111, err)) !=
            DS_OK ||
        (rc = declare_decoder(params, &c, err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* ---- Forward pass ---- */

#define LATENT_CHANNELS 16
#define NORM_EPS 1e-12f /* F.normalize's default eps, RMS_norm's */

/* QwenImageVAE.mean and the std it stores the inverse of (facts §5.6). */
static const float LATENT_MEAN[LATENT_CHANNELS] = {
    -0.7571f, -0.7089f, -0.9113f, 0.1075f, -0.1745f, 0.9653f, -0.1517f, 1.5508f,
    0.4134f,  -0.0715f, 0.5517f,  -0.3632f, -0.1922f, -0.9497f, 0.2503f, -0.2921f,
};
static const float LATENT_STD[LATENT_CHANNELS] = {
    2.8184f, 1.4541f, 2.3275f, 2.6558f, 1.2196f, 1.7708f, 2.6052f, 2.0743f,
    3.2687f, 2.1526f, 2.8652f, 1.5579f, 1.6382f, 1.1253f, 2.8251f, 1.9160f,
};

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}

/* What runs, in order: upstream's module sequence for one direction. */
typedef enum layer_kind {
    LAYER_CONV,       /* a causal conv alone: conv_in, quant_conv, post_quant_conv */
    LAYER_RESIDUAL,   /* QwenImageResidualBlock */
    LAYER_ATTENTION,  /* QwenImageAttentionBlock */
    LAYER_UPSAMPLE,   /* QwenImageResample upsample2d/3d: time_conv skipped without a cache */
    LAYER_DOWNSAMPLE, /* QwenImageResample downsample2d/3d: the same */
    LAYER_HEAD,       /* norm_out, SiLU, conv_out */
} layer_kind;

typedef struct vae_layer {
    layer_kind kind;
    char prefix[DS__PARAM_NAME_MAX]; /* the module's path with a trailing dot; a conv's name */
} vae_layer;

typedef struct vae_plan {
    vae_layer *layers;
    size_t count, capacity;
} vae_plan;

static int plan_add(vae_plan *p, layer_kind kind, ds_error *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int plan_add(vae_plan *p, layer_kind kind, ds_error *err, const char *fmt, ...)
{
    if (p->count == p->capacity)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: layer plan overflow", CLASS_NAME);
    vae_layer *l = &p->layers[p->count++];
    l->kind = kind;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(l->prefix, sizeof l->prefix, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof l->prefix)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: module name too long", CLASS_NAME);
    return DS_OK;
}

static int plan_mid(vae_plan *p, const char *part, ds_error *err)
{
    int rc;
    if ((rc = plan_add(p, LAYER_RESIDUAL, err, "%s.mid_block.resnets.0.", part)) != DS_OK ||
        (rc = plan_add(p, LAYER_ATTENTION, err, "%s.mid_block.attentions.0.", part)) != DS_OK ||
        (rc = plan_add(p, LAYER_RESIDUAL, err, "%s.mid_block.resnets.1.", part)) != DS_OK)
        return rc;
    return DS_OK;
}

/* The module sequences of decode (post_quant_conv, decoder) and encode (encoder, quant_conv),
 * numbered as declare_decoder / declare_encoder number them. */
static int plan_build(const vae_config *c, int decode, vae_plan *p, ds_error *err)
{
    p->count = 0;
    p->capacity = 8 + (size_t)c->levels * (2 * (size_t)c->num_res_blocks + 2);
    p->layers = malloc(p->capacity * sizeof *p->layers);
    if (!p->layers)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory for %zu layers",
                            CLASS_NAME, p->capacity);
    int rc;
    if (decode) {
        if ((rc = plan_add(p, LAYER_CONV, err, "post_quant_conv")) != DS_OK ||
            (rc = plan_add(p, LAYER_CONV, err, "decoder.conv_in")) != DS_OK ||
            (rc = plan_mid(p, "decoder", err)) != DS_OK)
            return rc;
        for (int i = 0; i < c->levels; i++) {
            for (int64_t r = 0; r < c->num_res_blocks + 1; r++)
                if ((rc = plan_add(p, LAYER_RESIDUAL, err,
                                   "decoder.up_blocks.%d.resnets.%" PRId64 ".", i, r)) != DS_OK)
                    return rc;
            if (i != c->levels - 1 &&
                (rc = plan_add(p, LAYER_UPSAMPLE, err, "decoder.up_blocks.%d.upsamplers.0.",
                               i)) != DS_OK)
                return rc;
        }
        return plan_add(p, LAYER_HEAD, err, "decoder.");
    }
    if ((rc = plan_add(p, LAYER_CONV, err, "encoder.conv_in")) != DS_OK)
        return rc;
    int64_t block = 0;
    double scale = 1.0;
    for (int i = 0; i < c->levels; i++) {
        for (int64_t r = 0; r < c->num_res_blocks; r++) {
            if ((rc = plan_add(p, LAYER_RESIDUAL, err, "encoder.down_blocks.%" PRId64 ".",
                               block++)) != DS_OK)
                return rc;
            if (has_attention(c, scale) &&
                (rc = plan_add(p, LAYER_ATTENTION, err, "encoder.down_blocks.%" PRId64 ".",
                               block++)) != DS_OK)
                return rc;
        }
        if (i != c->levels - 1) {
            if ((rc = plan_add(p, LAYER_DOWNSAMPLE, err, "encoder.down_blocks.%" PRId64 ".",
                               block++)) != DS_OK)
                return rc;
            scale /= 2.0;
        }
    }
    if ((rc = plan_mid(p, "encoder", err)) != DS_OK ||
        (rc = plan_add(p, LAYER_HEAD, err, "encoder.")) != DS_OK ||
        (rc = plan_add(p, LAYER_CONV, err, "quant_conv")) != DS_OK)
        return rc;
    return DS_OK;
}

/* ---- Streaming the weights through a VRAM manager ----
 *
 * Units: one per layer of a plan (a conv, a residual block, an attention block, a resampler's
 * 2-D conv, the head), the largest a residual block of the widest level (~32 MB in f32), so a
 * budget of a few such blocks streams the whole VAE. The resamplers' time_conv never runs on
 * one frame and is no unit. Both directions' units are registered together on first use (the
 * decode plan's layers, then the encode plan's), keyed to the loaded model; each call sets its
 * direction's order as the model's plan, so the other direction's units are the first evicted
 * and prefetch follows the layers about to run. */

/* One tensor of a unit: its name after the layer's prefix, and whether it is a Linear's weight
 * (the attention's 1x1 projections, bound as linears). */
typedef struct vae_slot {
    const char *name;
    int linear_weight;
} vae_slot;

static const vae_slot conv_slots[] = {{".weight", 0}, {".bias", 0}};
/* The shortcut's pair last: a block whose widths agree has none. */
static const vae_slot residual_slots[] = {
    {"norm1.gamma", 0},          {"conv1.weight", 0}, {"conv1.bias", 0},
    {"norm2.gamma", 0},          {"conv2.weight", 0}, {"conv2.bias", 0},
    {"conv_shortcut.weight", 0}, {"conv_shortcut.bias", 0},
};
static const vae_slot attention_slots[] = {
    {"norm.gamma", 0},  {"to_qkv.weight", 1}, {"to_qkv.bias", 0},
    {"proj.weight", 1}, {"proj.bias", 0},
};
static const vae_slot resample_slots[] = {{"resample.1.weight", 0}, {"resample.1.bias", 0}};
static const vae_slot head_slots[] = {
    {"norm_out.gamma", 0}, {"conv_out.weight", 0}, {"conv_out.bias", 0}};

/* The tensors layer `l` binds: *count of `slots`. */
static const vae_slot *layer_slots(const ds_loaded_model *m, const vae_layer *l, size_t *count)
{
    switch (l->kind) {
    case LAYER_CONV:
        *count = 2;
        return conv_slots;
    case LAYER_RESIDUAL: {
        char shortcut[DS__PARAM_NAME_MAX + 32];
        snprintf(shortcut, sizeof shortcut, "%sconv_shortcut.weight", l->prefix);
        *count = ds_state_dict_find(&m->params, shortcut) ? 8 : 6;
        return residual_slots;
    }
    case LAYER_ATTENTION:
        *count = sizeof attention_slots / sizeof attention_slots[0];
        return attention_slots;
    case LAYER_UPSAMPLE:
    case LAYER_DOWNSAMPLE:
        *count = 2;
        return resample_slots;
    case LAYER_HEAD:
        break;
    }
    /* LAYER_HEAD: norm_out and conv_out under the decoder's or encoder's prefix. */
    *count = sizeof head_slots / sizeof head_slots[0];
    return head_slots;
}

/* One decode or encode call. */
typedef struct vae_run {
    const ds_loaded_model *m;
    ds_backend *b;
    ds_dtype dtype;     /* compute dtype: the input's */
    const char *phase;  /* "decode" or "encode", for messages and progress */
    ds__weight_set ws;  /* the current layer's weights, released after it (no manager) */
    int x_owned;        /* the activation is ours to free (not the caller's input) */
    ds_vram_model *vm;  /* the manager's registration; NULL: weights bound directly */
    size_t held;        /* the unit acquired now; SIZE_MAX: none */
    size_t reserved;    /* activation bytes reserved in the manager now */
    const vae_layer *layer;        /* the layer running now (its unit's names) */
    const vae_slot *slots;         /* its unit's tensors, `slot_count` of them ... */
    size_t slot_count;
    const ds_tensor *unit_tensors; /* ... resident while held */
    size_t unit_base;   /* unit index of the plan's first layer */
} vae_run;

/* Parameter prefix + name as an operand: the acquired unit's tensor of that name under a
 * manager, else bound directly (a view on the CPU, a per-layer copy elsewhere). */
static int bind(vae_run *r, const char *prefix, const char *name, int linear_weight,
                ds_tensor *out, ds_error *err)
{
    if (!r->unit_tensors)
        return ds__weight_bind(r->m, &r->ws, prefix, name, linear_weight, out, err);
    char want[2 * DS__PARAM_NAME_MAX + 32], have[2 * DS__PARAM_NAME_MAX];
    snprintf(want, sizeof want, "%s%s", prefix, name);
    for (size_t i = 0; i < r->slot_count; i++) {
        snprintf(have, sizeof have, "%s%s", r->layer->prefix, r->slots[i].name);
        if (strcmp(have, want) == 0) {
            *out = r->unit_tensors[i];
            return DS_OK;
        }
    }
    return ds_error_set(err, DS_ERR_INTERNAL, "%s: \"%s\" is not in the unit of %s", r->phase,
                        want, r->layer->prefix);
}

/* The activation *x becomes y: the old one is freed unless it is the caller's input. */
static void replace(vae_run *r, ds_tensor *x, ds_tensor *y)
{
    if (r->x_owned)
        ds_tensor_free(x);
    *x = *y;
    r->x_owned = 1;
}

/* A [B, C, H, W] activation in the compute dtype. */
static int alloc4(vae_run *r, int64_t b, int64_t c, int64_t h, int64_t w, ds_tensor *out,
                  ds_error *err)
{
    return ds_tensor_alloc(r->b, r->dtype, 4, SHAPE(b, c, h, w), out, err);
}

static int alloc_like(vae_run *r, const ds_tensor *x, ds_tensor *out, ds_error *err)
{
    return ds_tensor_alloc(r->b, r->dtype, x->ndim, x->shape, out, err);
}

/* Convolution `name` (prefix + name + ".weight" / ".bias") of x into a new tensor *y.
 * A QwenImageCausalConv3d weight [Co, Ci, KT, KH, KW] runs on one frame as the 2-D conv of its
 * last temporal tap: CausalConv3d pads time by KT - 1 zero frames in front only, so the other
 * taps see zeros; its spatial padding is KH / 2 (upstream's padding=1 for 3x3x3, 0 for 1x1x1).
 * An nn.Conv2d weight [Co, Ci, KH, KW] runs with `pad` (top, bottom, left, right) and `stride`. */
static int conv(vae_run *r, const char *prefix, const char *name, const ds_tensor *x,
                const int pad2d[4], int stride, ds_tensor *y, ds_error *err)
{
    char part[DS__PARAM_NAME_MAX + 32];
    ds_tensor w, bias, tap = {0};
    int rc;
    snprintf(part, sizeof part, "%s.weight", name);
    if ((rc = bind(r, prefix, part, 0, &w, err)) != DS_OK)
        return rc;
    snprintf(part, sizeof part, "%s.bias", name);
    if ((rc = bind(r, prefix, part, 0, &bias, err)) != DS_OK)
        return rc;
    int pad[4] = {pad2d[0], pad2d[1], pad2d[2], pad2d[3]};
    ds_tensor w2 = w;
    if (w.ndim == 5) {
        const int64_t *ws = w.shape;
        int64_t shape4[4] = {ws[0], ws[1], ws[3], ws[4]};
        if (ws[2] > 1) {
            ds_slice_args last = {&w, 2, ws[2] - 1, &tap};
            if ((rc = ds_tensor_alloc(r->b, w.dtype, 5, SHAPE(ws[0], ws[1], 1, ws[3], ws[4]),
                                      &tap, err)) != DS_OK ||
                (rc = ds_slice(r->b, NULL, &last, err)) != DS_OK)
                goto done;
            w2 = ds_module_view(&tap, 4, shape4);
        } else {
            w2 = ds_module_view(&w, 4, shape4);
        }
        pad[0] = pad[1] = (int)(ws[3] / 2);
        pad[2] = pad[3] = (int)(ws[4] / 2);
        stride = 1;
    }
    const int64_t *xs = x->shape, *ks = w2.shape;
    int64_t oh = (xs[2] + pad[0] + pad[1] - ks[2]) / stride + 1;
    int64_t ow = (xs[3] + pad[2] + pad[3] - ks[3]) / stride + 1;
    ds_conv2d_args a = {x, &w2, &bias, {pad[0], pad[1], pad[2], pad[3]}, {stride, stride}, y};
    if ((rc = alloc4(r, xs[0], ks[0], oh, ow, y, err)) != DS_OK ||
        (rc = ds_conv2d(r->b, NULL, &a, err)) != DS_OK)
        ds_tensor_free(y);
done:
    ds_tensor_free(&tap);
    return rc;
}

static const int NO_PAD[4] = {0, 0, 0, 0};

/* QwenImageRMS_norm (gamma [C, 1, 1(, 1)]) of x into y, then SiLU when `silu`. */
static int rms_norm(vae_run *r, const char *prefix, const char *name, const ds_tensor *x,
                    int silu, ds_tensor *y, ds_error *err)
{
    ds_tensor gamma;
    int rc = bind(r, prefix, name, 0, &gamma, err);
    if (rc != DS_OK)
        return rc;
    ds_tensor g1 = ds_module_view(&gamma, 1, SHAPE(gamma.shape[0]));
    ds_channel_rms_norm_args n = {x, &g1, NULL, NORM_EPS, y};
    ds_activation_args act = {y, DS_ACT_SILU, y};
    if ((rc = ds_channel_rms_norm(r->b, NULL, &n, err)) != DS_OK ||
        (silu && (rc = ds_activate(r->b, NULL, &act, err)) != DS_OK))
        return rc;
    return DS_OK;
}

/* QwenImageResidualBlock: shortcut(x) + conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))); dropout is
 * the identity at inference. At most three activations are alive at once. */
static int residual(vae_run *r, const char *prefix, ds_tensor *x, ds_error *err)
{
    ds_tensor t = {0}, u = {0}, v = {0}, h = {0};
    char shortcut[DS__PARAM_NAME_MAX + 32];
    int rc;
    if ((rc = alloc_like(r, x, &t, err)) != DS_OK ||
        (rc = rms_norm(r, prefix, "norm1.gamma", x, 1, &t, err)) != DS_OK ||
        (rc = conv(r, prefix, "conv1", &t, NO_PAD, 1, &u, err)) != DS_OK)
        goto fail;
    ds_tensor_free(&t);
    if ((rc = alloc_like(r, &u, &t, err)) != DS_OK ||
        (rc = rms_norm(r, prefix, "norm2.gamma", &u, 1, &t, err)) != DS_OK)
        goto fail;
    ds_tensor_free(&u);
    if ((rc = conv(r, prefix, "conv2", &t, NO_PAD, 1, &v, err)) != DS_OK)
        goto fail;
    ds_tensor_free(&t);
    snprintf(shortcut, sizeof shortcut, "%sconv_shortcut.weight", prefix);
    const ds_tensor *skip = x;
    if (ds_state_dict_find(&r->m->params, shortcut)) {
        if ((rc = conv(r, prefix, "conv_shortcut", x, NO_PAD, 1, &h, err)) != DS_OK)
            goto fail;
        skip = &h;
    }
    ds_binary_args add = {&v, skip, DS_BINARY_ADD, &v};
    if ((rc = ds_binary(r->b, NULL, &add, err)) != DS_OK)
        goto fail;
    ds_tensor_free(&h);
    replace(r, x, &v);
    return DS_OK;
fail:
    ds_tensor_free(&t);
    ds_tensor_free(&u);
    ds_tensor_free(&v);
    ds_tensor_free(&h);
    return rc;
}

/* QwenImageAttentionBlock on one frame: RMS_norm, to_qkv (a 1x1 conv: a linear over channels
 * at every position), one head of dim C over the H * W positions (SDPA's scale 1/sqrt(C)),
 * proj, and the residual. */
static int attention(vae_run *r, const char *prefix, ds_tensor *x, ds_error *err)
{
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3], S = H * W;
    ds_tensor n = {0}, p = {0}, qkv = {0}, q = {0}, k = {0}, v = {0}, o = {0}, pr = {0},
              y = {0};
    ds__linear_weights to_qkv, proj;
    int rc;
    if ((rc = bind(r, prefix, "to_qkv.weight", 1, &to_qkv.weight, err)) != DS_OK ||
        (rc = bind(r, prefix, "to_qkv.bias", 0, &to_qkv.bias, err)) != DS_OK ||
        (rc = bind(r, prefix, "proj.weight", 1, &proj.weight, err)) != DS_OK ||
        (rc = bind(r, prefix, "proj.bias", 0, &proj.bias, err)) != DS_OK)
        return rc;
    ds_tensor w_qkv = ds_module_view(&to_qkv.weight, 2, SHAPE(3 * C, C));
    ds_tensor w_proj = ds_module_view(&proj.weight, 2, SHAPE(C, C));

    /* Channels last: [B, C, H, W] -> [B, H * W, C], the layout of the linears and attention. */
    ds_permute_args to_last = {&n, {0, 2, 3, 1}, &p};
    if ((rc = alloc_like(r, x, &n, err)) != DS_OK ||
        (rc = rms_norm(r, prefix, "norm.gamma", x, 0, &n, err)) != DS_OK ||
        (rc = ds_tensor_alloc(r->b, r->dtype, 4, SHAPE(B, H, W, C), &p, err)) != DS_OK ||
        (rc = ds_permute(r->b, NULL, &to_last, err)) != DS_OK)
        goto done;
    ds_tensor_free(&n);
    ds_tensor p3 = ds_module_view(&p, 3, SHAPE(B, S, C));
    ds_linear_args lin_qkv = {&p3, &w_qkv, &to_qkv.bias, 1.0f, DS_ACT_NONE, &qkv};
    if ((rc = ds_tensor_alloc(r->b, r->dtype, 3, SHAPE(B, S, 3 * C), &qkv, err)) != DS_OK ||
        (rc = ds_linear(r->b, NULL, &lin_qkv, err)) != DS_OK)
        goto done;
    ds_tensor_free(&p);

    /* Upstream chunks the [.., S, 3C] projection into q, k, v along channels. */
    ds_tensor *parts[3] = {&q, &k, &v};
    for (int i = 0; i < 3; i++) {
        ds_slice_args s = {&qkv, 2, i * C, parts[i]};
        if ((rc = ds_tensor_alloc(r->b, r->dtype, 4, SHAPE(B, S, 1, C), parts[i], err)) !=
                DS_OK)
            goto done;
        ds_tensor part3 = ds_module_view(parts[i], 3, SHAPE(B, S, C));
        s.y = &part3;
        if ((rc = ds_slice(r->b, NULL, &s, err)) != DS_OK)
            goto done;
    }
    ds_tensor_free(&qkv);
    ds_attention_args at = {&q, &k, &v, NULL, 1.0f / sqrtf((float)C), 0, &o};
    if ((rc = ds_tensor_alloc(r->b, r->dtype, 4, SHAPE(B, S, 1, C), &o, err)) != DS_OK ||
        (rc = ds_attention(r->b, NULL, &at, err)) != DS_OK)
        goto done;
    ds_tensor_free(&q);
    ds_tensor_free(&k);
    ds_tensor_free(&v);

    ds_tensor o3 = ds_module_view(&o, 3, SHAPE(B, S, C));
    ds_linear_args lin_proj = {&o3, &w_proj, &proj.bias, 1.0f, DS_ACT_NONE, &pr};
    if ((rc = ds_tensor_alloc(r->b, r->dtype, 3, SHAPE(B, S, C), &pr, err)) != DS_OK ||
        (rc = ds_linear(r->b, NULL, &lin_proj, err)) != DS_OK)
        goto done;
    ds_tensor_free(&o);
    ds_tensor pr4 = ds_module_view(&pr, 4, SHAPE(B, H, W, C));
    ds_permute_args to_first = {&pr4, {0, 3, 1, 2}, &y};
    ds_binary_args add = {&y, x, DS_BINARY_ADD, &y};
    if ((rc = alloc_like(r, x, &y, err)) != DS_OK ||
        (rc = ds_permute(r->b, NULL, &to_first, err)) != DS_OK ||
        (rc = ds_binary(r->b, NULL, &add, err)) != DS_OK)
        goto done;
    replace(r, x, &y);
    y = (ds_tensor){0};
done:
    ds_tensor_free(&n);
    ds_tensor_free(&p);
    ds_tensor_free(&qkv);
    ds_tensor_free(&q);
    ds_tensor_free(&k);
    ds_tensor_free(&v);
    ds_tensor_free(&o);
    ds_tensor_free(&pr);
    ds_tensor_free(&y);
    return rc;
}

/* Replaces *x by the result of a conv of it. */
static int conv_replace(vae_run *r, const char *prefix, const char *name, ds_tensor *x,
                        const int pad[4], int stride, ds_error *err)
{
    ds_tensor y;
    int rc = conv(r, prefix, name, x, pad, stride, &y, err);
    if (rc != DS_OK)
        return rc;
    replace(r, x, &y);
    return DS_OK;
}

/* upsample2d: nearest-exact x2 (for a factor of 2 the same source pixel as nearest; upstream
 * upsamples in f32 and casts back, which copies values exactly), then the 3x3 Conv2d that
 * halves the channels. */
static int upsample(vae_run *r, const char *prefix, ds_tensor *x, ds_error *err)
{
    static const int pad[4] = {1, 1, 1, 1};
    ds_tensor up;
    const int64_t *xs = x->shape;
    ds_upsample_args a = {x, &up};
    int rc;
    if ((rc = alloc4(r, xs[0], xs[1], 2 * xs[2], 2 * xs[3], &up, err)) != DS_OK)
        return rc;
    if ((rc = ds_upsample_nearest2x(r->b, NULL, &a, err)) != DS_OK) {
        ds_tensor_free(&up);
        return rc;
    }
    replace(r, x, &up);
    return conv_replace(r, prefix, "resample.1", x, pad, 1, err);
}

/* One layer of the plan on the activation *x. */
static int run_layer(vae_run *r, const vae_layer *l, ds_tensor *x, ds_error *err)
{
    /* downsample: ZeroPad2d((0, 1, 0, 1)), then the 3x3 stride-2 Conv2d. */
    static const int down_pad[4] = {0, 1, 0, 1};
    ds_tensor t;
    int rc;
    switch (l->kind) {
    case LAYER_CONV:
        return conv_replace(r, "", l->prefix, x, NO_PAD, 1, err);
    case LAYER_RESIDUAL:
        return residual(r, l->prefix, x, err);
    case LAYER_ATTENTION:
        return attention(r, l->prefix, x, err);
    case LAYER_UPSAMPLE:
        return upsample(r, l->prefix, x, err);
    case LAYER_DOWNSAMPLE:
        return conv_replace(r, l->prefix, "resample.1", x, down_pad, 2, err);
    case LAYER_HEAD:
        if ((rc = alloc_like(r, x, &t, err)) != DS_OK)
            return rc;
        if ((rc = rms_norm(r, l->prefix, "norm_out.gamma", x, 1, &t, err)) == DS_OK) {
            replace(r, x, &t);
            return conv_replace(r, l->prefix, "conv_out", x, NO_PAD, 1, err);
        }
        ds_tensor_free(&t);
        return rc;
    }
    return ds_error_set(err, DS_ERR_INTERNAL, "%s: unknown layer kind", r->phase);
}

/* Replaces the activation bytes reserved in the manager (none without one) by `bytes`. */
static int reserve(vae_run *r, const char *what, size_t bytes, ds_error *err)
{
    if (!r->vm)
        return DS_OK;
    ds_vram_unreserve(r->vm, r->reserved);
    r->reserved = 0;
    int rc = ds_vram_reserve(r->vm, what, bytes, err);
    if (rc == DS_OK)
        r->reserved = bytes;
    return rc;
}

/* The latent mean and 1 / std, alive through the whole call. */
static size_t stats_bytes(const vae_run *r)
{
    return 2 * LATENT_CHANNELS * ds_dtype_size(r->dtype);
}

/* A bound on the activation bytes alive while layer `l` runs on x with its unit's `n` tensors
 * `t`: x, at most three tensors of the widest of its input and output (the output at the
 * upsampled size), the last temporal tap sliced from a 3x3x3 weight, and the latent stats; an
 * attention block holds at most eight of x's size and the kernel's [S, S] f32 scores. */
static size_t layer_bytes(const vae_run *r, const vae_layer *l, const ds_tensor *x,
                          const ds_tensor *t, size_t n)
{
    uint64_t elem = ds_dtype_size(r->dtype), xn = ds_tensor_numel(x);
    uint64_t B = (uint64_t)x->shape[0], S = (uint64_t)(x->shape[2] * x->shape[3]);
    if (l->kind == LAYER_ATTENTION)
        return (size_t)(8 * xn * elem + B * S * S * 4) + stats_bytes(r);
    int64_t co = x->shape[1];
    uint64_t tap = 0;
    for (size_t i = 0; i < n; i++) {
        if (t[i].ndim >= 4 && t[i].shape[0] > co)
            co = t[i].shape[0];
        if (t[i].ndim == 5 && t[i].shape[2] > 1 &&
            ds_tensor_nbytes(&t[i]) / (uint64_t)t[i].shape[2] > tap)
            tap = ds_tensor_nbytes(&t[i]) / (uint64_t)t[i].shape[2];
    }
    uint64_t act = B * (uint64_t)co * S * (l->kind == LAYER_UPSAMPLE ? 4 : 1);
    return (size_t)((xn + 3 * act) * elem + tap) + stats_bytes(r);
}

/* Acquires layer i's unit (the plan's i-th) and reserves the layer's activations. */
static int unit_begin(vae_run *r, const vae_layer *l, size_t i, const ds_tensor *x,
                      ds_error *err)
{
    const ds_tensor *t;
    int rc = ds_vram_acquire(r->vm, r->unit_base + i, NULL, &t, err);
    if (rc != DS_OK)
        return rc;
    r->held = r->unit_base + i;
    r->layer = l;
    r->slots = layer_slots(r->m, l, &r->slot_count);
    r->unit_tensors = t;
    char what[DS__PARAM_NAME_MAX + 32];
    snprintf(what, sizeof what, "%s: activations of %s", r->phase, l->prefix);
    return reserve(r, what, layer_bytes(r, l, x, t, r->slot_count), err);
}

/* Releases the unit held now, if any. */
static int unit_end(vae_run *r, ds_error *err)
{
    if (r->held == SIZE_MAX)
        return DS_OK;
    size_t unit = r->held;
    r->held = SIZE_MAX;
    r->unit_tensors = NULL;
    return ds_vram_release(r->vm, unit, NULL, err);
}

/* The plan over *x, cancellable before each layer, with progress after each. */
static int run_plan(vae_run *r, const ds_step_context *ctx, const vae_plan *p, ds_tensor *x,
                    ds_error *err)
{
    for (size_t i = 0; i < p->count; i++) {
        if (ctx->cancelled && ctx->cancelled(ctx->user))
            return ds_error_set(err, DS_ERR_CANCELLED, "%s: cancelled before block %zu of %zu",
                                r->phase, i, p->count);
        int rc = r->vm ? unit_begin(r, &p->layers[i], i, x, err) : DS_OK;
        if (rc == DS_OK)
            rc = run_layer(r, &p->layers[i], x, err);
        ds__weight_set_release(&r->ws);
        if (rc == DS_OK)
            rc = unit_end(r, err);
        if (rc != DS_OK)
            return ds_error_prefix(err, "%s: %s: ", r->phase, p->layers[i].prefix);
        if (ctx->progress)
            ctx->progress(ctx->user, r->phase, (uint64_t)(i + 1), (uint64_t)p->count);
    }
    return DS_OK;
}

/* mean and the stored 1 / std as [1, 16, 1, 1] in the compute dtype: upstream builds them in
 * f32 (1 / std rounded there) and casts both to the input's dtype. */
static int latent_stats(vae_run *r, ds_tensor *mean, ds_tensor *inv_std, ds_error *err)
{
    float m[LATENT_CHANNELS], inv[LATENT_CHANNELS];
    uint16_t m16[LATENT_CHANNELS], inv16[LATENT_CHANNELS];
    for (int i = 0; i < LATENT_CHANNELS; i++) {
        m[i] = LATENT_MEAN[i];
        inv[i] = 1.0f / LATENT_STD[i];
        m16[i] = ds_f32_to_bf16(m[i]);
        inv16[i] = ds_f32_to_bf16(inv[i]);
    }
    int bf16 = r->dtype == DS_BF16;
    int rc;
    if ((rc = alloc4(r, 1, LATENT_CHANNELS, 1, 1, mean, err)) != DS_OK ||
        (rc = alloc4(r, 1, LATENT_CHANNELS, 1, 1, inv_std, err)) != DS_OK ||
        (rc = ds_tensor_upload(mean, bf16 ? (const void *)m16 : m, NULL, err)) != DS_OK ||
        (rc = ds_tensor_upload(inv_std, bf16 ? (const void *)inv16 : inv, NULL, err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* The model's config from its kwargs, checked against what the forward supports. */
static int model_config(const ds_loaded_model *m, const char *phase, vae_config *c,
                        ds_error *err)
{
    ds_kwargs *kwargs = NULL;
    int rc = ds_kwargs_parse(m->extra_kwargs_json, CLASS_NAME, &kwargs, err);
    if (rc == DS_OK)
        rc = read_kwargs(kwargs, c, err);
    ds_kwargs_free(kwargs);
    if (rc != DS_OK)
        return ds_error_prefix(err, "%s: ", phase);
    if (c->z_dim != LATENT_CHANNELS)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "%s: the model has z_dim %" PRId64 "; upstream's latent mean and "
                            "std have %d channels", phase, c->z_dim, LATENT_CHANNELS);
    return DS_OK;
}

static int float_dtype(ds_dtype d) { return d == DS_F32 || d == DS_BF16; }

/* latents' expectation, for the entry point and the step. */
#define LATENTS_EXPECTED "[B, 16, h, w] f32 or bf16"

/* image's expectation for a model of `channels` image channels and downsampling `factor`. */
static void image_expected(int64_t channels, int64_t factor, char *buf, size_t size)
{
    snprintf(buf, size, "[B, %" PRId64 ", H, W] f32 or bf16 with H and W multiples of %" PRId64,
             channels, factor);
}

/* Layer l's tensors as the manager's sources. Each keeps the dtype the direct path binds
 * (ds__weight_operand_dtype), so both paths run the same kernels on the same values. */
static int unit_sources(const ds_loaded_model *m, const vae_layer *l, ds_vram_tensor_source *src,
                        size_t *count, ds_error *err)
{
    const vae_slot *slots = layer_slots(m, l, count);
    for (size_t i = 0; i < *count; i++) {
        char full[2 * DS__PARAM_NAME_MAX];
        snprintf(full, sizeof full, "%s%s", l->prefix, slots[i].name);
        int rc = ds__weight_vram_source(m, "QwenImageVAE", full, slots[i].linear_weight,
                                        &src[i], err);
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

/* The model's units in the call's manager, registered on first use (keyed to the loaded
 * model): the decode plan's layers, then the encode plan's. The model's release hook drops them
 * when it is freed. */
static int vram_register(const ds_loaded_model *m, ds_vram_manager *mgr, const vae_plan *plans[2],
                         ds_vram_model **out, ds_error *err)
{
    *out = ds_vram_model_find(mgr, m);
    if (*out)
        return DS_OK;
    ds_vram_tensor_source src[sizeof residual_slots / sizeof residual_slots[0]];
    ds_vram_model *vm = NULL;
    int rc = ds_vram_model_add(mgr, m->model_name ? m->model_name : "qwen_image_vae", DS_F32,
                               &vm, err);
    for (int d = 0; d < 2 && rc == DS_OK; d++)
        for (size_t i = 0; i < plans[d]->count && rc == DS_OK; i++) {
            const vae_layer *l = &plans[d]->layers[i];
            char name[DS__PARAM_NAME_MAX];
            size_t count, index;
            /* The module's path without its trailing dot. */
            size_t len = strlen(l->prefix);
            snprintf(name, sizeof name, "%.*s",
                     (int)(len && l->prefix[len - 1] == '.' ? len - 1 : len), l->prefix);
            if ((rc = unit_sources(m, l, src, &count, err)) == DS_OK)
                rc = ds_vram_unit_add(vm, name, src, count, &index, err);
        }
    if (rc != DS_OK) {
        ds_vram_model_remove(vm);
        return rc;
    }
    ds__weight_set_vram_adopt(vm, m, mgr);
    *out = vm;
    return DS_OK;
}

/* Registers the units (both directions' plans) when needed and makes this direction's layers,
 * in order, the model's plan. */
static int vram_setup(vae_run *r, ds_vram_manager *mgr, const vae_config *c, int decode,
                      const vae_plan *plan, ds_error *err)
{
    vae_plan other = {0};
    size_t *order = malloc((plan->count ? plan->count : 1) * sizeof *order);
    int rc = order ? plan_build(c, !decode, &other, err)
                   : ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                                  "out of memory planning %zu units", plan->count);
    if (rc == DS_OK) {
        const vae_plan *plans[2] = {decode ? plan : &other, decode ? &other : plan};
        rc = vram_register(r->m, mgr, plans, &r->vm, err);
        r->unit_base = decode ? 0 : other.count;
    }
    if (rc == DS_OK) {
        for (size_t i = 0; i < plan->count; i++)
            order[i] = r->unit_base + i;
        rc = ds_vram_plan(r->vm, order, plan->count, err);
    }
    free(order);
    free(other.layers);
    if (rc != DS_OK) {
        r->vm = NULL;
        return ds_error_prefix(err, "%s: registering the weights with the VRAM manager: ",
                               r->phase);
    }
    return DS_OK;
}

/* Both directions: checks, the plan, the input's upload and scaling, the output's download. */
static int vae_forward(const ds_loaded_model *m, const ds_step_context *ctx, int decode,
                       const ds_tensor *in, ds_tensor *out, ds_error *err)
{
    const char *phase = decode ? "decode" : "encode";
    const char *in_name = decode ? "latents" : "image", *out_name = decode ? "image" : "latents";
    vae_config c;
    vae_plan plan = {0};
    char expected[160], got[128];
    if (!m || !ctx || !ctx->backend || !in || !out)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: the model, a backend, the input and the output are required",
                            phase);
    int rc = model_config(m, phase, &c, err);
    if (rc != DS_OK)
        return rc;
    int64_t factor = (int64_t)1 << (c.levels - 1);

    /* The input, then the output it implies. */
    const int64_t *is = in->shape;
    if (decode) {
        if (!float_dtype(in->dtype) || in->ndim != 4 || is[0] < 1 || is[1] != LATENT_CHANNELS ||
            is[2] < 1 || is[3] < 1 || !in->data)
            return ds_module_bad_tensor(phase, "input", in_name, in, LATENTS_EXPECTED, err);
    } else {
        image_expected(c.image_channels, factor, expected, sizeof expected);
        if (!float_dtype(in->dtype) || in->ndim != 4 || is[0] < 1 ||
            is[1] != c.image_channels || is[2] < factor || is[3] < factor ||
            is[2] % factor || is[3] % factor || !in->data)
            return ds_module_bad_tensor(phase, "input", in_name, in, expected, err);
    }
    int64_t want[4] = {is[0], decode ? c.image_channels : LATENT_CHANNELS,
                       decode ? is[2] * factor : is[2] / factor,
                       decode ? is[3] * factor : is[3] / factor};
    ds_tensor want_t = {.dtype = in->dtype, .ndim = 4};
    memcpy(want_t.shape, want, sizeof want);
    snprintf(expected, sizeof expected, "%s (from input \"%s\": its batch and dtype)",
             ds_tensor_describe(&want_t, got, sizeof got), in_name);
    if (out->dtype != in->dtype || !ds_tensor_same_shape(out, &want_t) || !out->data)
        return ds_module_bad_tensor(phase, "output", out_name, out, expected, err);

    vae_run r = {.m = m, .b = ctx->backend, .dtype = in->dtype, .phase = phase,
                 .held = SIZE_MAX};
    ds__weight_set_init(&r.ws, r.b, "QwenImageVAE");
    ds_tensor upload = {0}, x = {0}, z = {0}, mean = {0}, inv_std = {0}, input = *in;
    char what[64];
    snprintf(what, sizeof what, "%s: input", phase);
    /* Before the layers: the stats, the input's upload and (decode) its scaled copy. */
    if ((rc = plan_build(&c, decode, &plan, err)) != DS_OK ||
        (ctx->vram && (rc = vram_setup(&r, ctx->vram, &c, decode, &plan, err)) != DS_OK) ||
        (rc = reserve(&r, what, (decode ? 2 : 1) * ds_tensor_nbytes(in) + stats_bytes(&r),
                      err)) != DS_OK ||
        (rc = latent_stats(&r, &mean, &inv_std, err)) != DS_OK)
        goto done;
    input.backend = r.b;
    if (!r.b->host_memory) {
        if ((rc = ds_tensor_alloc(r.b, in->dtype, 4, is, &upload, err)) != DS_OK ||
            (rc = ds_tensor_upload(&upload, in->data, NULL, err)) != DS_OK)
            goto done;
        input = upload;
    }

    if (decode) {
        /* x / (1 / std) + mean, each step rounded to the compute dtype as upstream's. */
        ds_binary_args div = {&input, &inv_std, DS_BINARY_DIV, &x};
        ds_binary_args add = {&x, &mean, DS_BINARY_ADD, &x};
        r.x_owned = 1;
        if ((rc = alloc_like(&r, &input, &x, err)) != DS_OK ||
            (rc = ds_binary(r.b, NULL, &div, err)) != DS_OK ||
            (rc = ds_binary(r.b, NULL, &add, err)) != DS_OK)
            goto done;
        ds_tensor_free(&upload);
    } else {
        /* The encoder's conv_in reads the input where it is. */
        x = input;
        r.x_owned = upload.data != NULL;
        upload = (ds_tensor){0};
    }

    if ((rc = run_plan(&r, ctx, &plan, &x, err)) != DS_OK)
        goto done;

    ds_tensor *result = &x;
    if (!decode) {
        /* quant_conv's first 16 channels (the mean of the posterior), then (z - mean) / std as
         * upstream's (z - mean) * (1 / std). */
        ds_slice_args first = {&x, 1, 0, &z};
        ds_binary_args sub = {&z, &mean, DS_BINARY_SUB, &z};
        ds_binary_args mul = {&z, &inv_std, DS_BINARY_MUL, &z};
        snprintf(what, sizeof what, "%s: output", phase);
        if ((rc = reserve(&r, what,
                          ds_tensor_nbytes(&x) + ds_tensor_nbytes(out) + stats_bytes(&r),
                          err)) != DS_OK ||
            (rc = alloc4(&r, want[0], want[1], want[2], want[3], &z, err)) != DS_OK ||
            (rc = ds_slice(r.b, NULL, &first, err)) != DS_OK ||
            (rc = ds_binary(r.b, NULL, &sub, err)) != DS_OK ||
            (rc = ds_binary(r.b, NULL, &mul, err)) != DS_OK)
            goto done;
        result = &z;
    }
    rc = ds_tensor_download(result, out->data, NULL, err);
done:
    if (r.held != SIZE_MAX) {
        ds_error ignored;
        unit_end(&r, &ignored);
    }
    if (r.vm)
        ds_vram_unreserve(r.vm, r.reserved);
    ds__weight_set_release(&r.ws);
    ds_tensor_free(&upload);
    if (r.x_owned)
        ds_tensor_free(&x);
    ds_tensor_free(&z);
    ds_tensor_free(&mean);
    ds_tensor_free(&inv_std);
    free(plan.layers);
    return rc;
}

int ds_qwen_image_vae_decode(const ds_loaded_model *m, const ds_step_context *ctx,
                             const ds_tensor *latents, ds_tensor *image_out, ds_error *err)
{
    return vae_forward(m, ctx, 1, latents, image_out, err);
}

int ds_qwen_image_vae_encode(const ds_loaded_model *m, const ds_step_context *ctx,
                             const ds_tensor *image, ds_tensor *latents_out, ds_error *err)
{
    return vae_forward(m, ctx, 0, image, latents_out, err);
}

/* ---- The "decode" and "encode" steps ---- */

static int step_run(const ds_loaded_model *m, const ds_step_context *ctx, const ds_step_io *in,
                    ds_step_io *out, int decode, ds_error *err)
{
    static const ds_dtype float_dtypes[] = {DS_F32, DS_BF16};
    const char *phase = decode ? "decode" : "encode";
    const char *in_name = decode ? "latents" : "image", *out_name = decode ? "image" : "latents";
    const char *const known[] = {in_name, NULL};
    char expected[160];
    vae_config c;
    const ds_tensor *x;
    int rc;
    if ((rc = ds_step_io_check_names(in, phase, known, err)) != DS_OK ||
        (rc = model_config(m, phase, &c, err)) != DS_OK)
        return rc;
    int64_t factor = (int64_t)1 << (c.levels - 1);
    if (decode)
        snprintf(expected, sizeof expected, "%s", LATENTS_EXPECTED);
    else
        image_expected(c.image_channels, factor, expected, sizeof expected);
    if ((rc = ds_step_io_require(in, phase, in_name, 0, float_dtypes, 2, 4,
                                 SHAPE(-1, decode ? LATENT_CHANNELS : c.image_channels, -1, -1),
                                 expected, &x, err)) != DS_OK)
        return rc;
    const int64_t *xs = x->shape;
    if (xs[0] < 1 || xs[2] < 1 || xs[3] < 1 ||
        (!decode && (xs[2] % factor || xs[3] % factor)))
        return ds_module_bad_tensor(phase, "input", in_name, x, expected, err);
    int64_t shape[4] = {xs[0], decode ? c.image_channels : LATENT_CHANNELS,
                        decode ? xs[2] * factor : xs[2] / factor,
                        decode ? xs[3] * factor : xs[3] / factor};
    ds_backend *cpu = ctx->backend;
    ds_tensor *y;
    if (!cpu->host_memory && (rc = ds_cpu_fallback_backend(&cpu, err)) != DS_OK)
        return rc;
    if ((rc = ds_step_io_new_tensor(out, cpu, out_name, x->dtype, 4, shape, &y, err)) != DS_OK)
        return rc;
    return vae_forward(m, ctx, decode, x, y, err);
}

static int decode_step(const ds_loaded_model *m, const ds_step_context *ctx, const ds_step_io *in,
                       ds_step_io *out, ds_error *err)
{
    return step_run(m, ctx, in, out, 1, err);
}

static int encode_step(const ds_loaded_model *m, const ds_step_context *ctx, const ds_step_io *in,
                       ds_step_io *out, ds_error *err)
{
    return step_run(m, ctx, in, out, 0, err);
}

static const ds_model_step steps[] = {
    {
        .name = "decode",
        .usage = "decode: latents [B, 16, h, w] (f32 or bf16; the compute dtype) -> image "
                 "[B, C, 8h, 8w] in latents' dtype (C = the model's image_channels; values "
                 "around [-1, 1], not clamped)",
        .run = decode_step,
    },
    {
        .name = "encode",
        .usage = "encode: image [B, C, H, W] (f32 or bf16 in [-1, 1], C = the model's "
                 "image_channels, H and W multiples of 8) -> latents [B, 16, H/8, W/8] in "
                 "image's dtype",
        .run = encode_step,
    },
};

DS_MODEL_CLASS(ds__qwen_image_vae_class, CLASS_NAME, declare_parameters, steps);
