/* diffsynth/models/qwen_image_vae.py: the Qwen-Image VAE, a Wan2.1-style 3D causal VAE
 * (facts §7). The latent mean/std are attributes, not parameters. */
#include <inttypes.h>

#include "models/model_class.h"
#include "models/param_tree.h"

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

const ds_model_class ds__qwen_image_vae_class = {
    .name = CLASS_NAME,
    .declare_parameters = declare_parameters,
};
