/* diffsynth/models/qwen_image_vae.py: the Qwen-Image VAE, a Wan2.1-style 3D causal VAE
 * (facts §7). The latent mean/std are attributes, not parameters.
 *
 * The forward passes are upstream's decode and encode of images (one frame, no feature cache),
 * one function per upstream module, on the op API (kernels/ops.h). */
#include "models/qwen_image_vae.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "models/memory_estimate.h"
#include "models/model_class.h"
#include "models/module.h"
#include "models/param_tree.h"
#include "models/vae_modules.h"
#include "models/weight_set.h"
#include "vram/vram_manager.h"

#define CLASS_NAME "diffsynth.models.qwen_image_vae.QwenImageVAE"

/* Longest dim_mult / temperal_downsample / attn_scales list accepted. */
#define MAX_LEVELS 16
#define MAX_RES_BLOCKS 1000

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

/* ---- The modules ----
 *
 * Each upstream module instance is a group of the module table, declared once under its own
 * prefix with the widths of where it sits (models/vae_modules.h). Every instance is one transfer
 * unit, the largest a residual block of the widest level (~32 MB in f32), so a budget of a few
 * such blocks streams the whole VAE. The resamplers' time_conv never runs on one frame and is
 * no unit. */

static const ds__vae_names QWEN_NAMES = {
    "norm1.gamma", "conv1", "norm2.gamma", "conv2", "conv_shortcut",
    "norm_out.gamma", "conv_out", "", DS_MODULE_NO_UNIT,
};

/* The model's instances for one config, with where each part of the structure starts.
 * Encoder3d: conv_in, down_blocks [down, down_end), mid_block (attentions.0, resnets.0,
 * resnets.1 from mid), the head. Decoder3d: conv_in, mid_block, up_blocks[i] (its resnets,
 * then its upsampler) from dec_up[i], the head. */
typedef struct vae_modules {
    ds__vae_modules m;
    size_t enc_conv_in, enc_down, enc_down_end, enc_mid, enc_head, quant_conv, post_quant_conv;
    size_t dec_conv_in, dec_mid, dec_up[MAX_LEVELS], dec_head;
    int levels;
    int64_t up_resnets;
} vae_modules;

/* QwenImageMidBlock(dim, num_layers=1): `attentions` is registered before `resnets`. */
static int add_mid(vae_modules *v, const char *part, int64_t dim, size_t *index, ds_error *err)
{
    int rc = ds__vae_add_attention(&v->m, dim, index, err, "%s.mid_block.attentions.0.", part);
    for (int i = 0; rc == DS_OK && i < 2; i++)
        rc = ds__vae_add_residual(&v->m, dim, dim, NULL, err, "%s.mid_block.resnets.%d.", part,
                                  i);
    return rc;
}

/* QwenImageEncoder3d(base_dim, 2 * z_dim, ...). */
static int add_encoder(vae_modules *v, const vae_config *c, ds_error *err)
{
    int64_t dims[MAX_LEVELS + 1];
    dims[0] = c->base_dim;
    for (int i = 0; i < c->levels; i++)
        dims[i + 1] = c->base_dim * c->dim_mult[i];
    int rc = ds__vae_add_conv(&v->m, "conv_in", dims[0], c->image_channels, 3, &v->enc_conv_in,
                              err, "encoder.");
    int64_t block = 0;
    double scale = 1.0;
    v->enc_down = v->m.count;
    for (int i = 0; rc == DS_OK && i < c->levels; i++) {
        int64_t in = dims[i], out = dims[i + 1];
        for (int64_t r = 0; rc == DS_OK && r < c->num_res_blocks; r++, in = out) {
            rc = ds__vae_add_residual(&v->m, in, out, NULL, err,
                                      "encoder.down_blocks.%" PRId64 ".", block++);
            if (rc == DS_OK && has_attention(c, scale))
                rc = ds__vae_add_attention(&v->m, out, NULL, err,
                                           "encoder.down_blocks.%" PRId64 ".", block++);
        }
        if (rc == DS_OK && i != c->levels - 1) {
            rc = ds__vae_add_resample(&v->m, DS__VAE_DOWNSAMPLE, out, out,
                                      c->temperal_downsample[i] ? out : 0, NULL, err,
                                      "encoder.down_blocks.%" PRId64 ".", block++);
            scale /= 2.0;
        }
    }
    v->enc_down_end = v->m.count;
    int64_t top = dims[c->levels];
    if (rc == DS_OK)
        rc = add_mid(v, "encoder", top, &v->enc_mid, err);
    if (rc == DS_OK)
        rc = ds__vae_add_head(&v->m, top, 2 * c->z_dim, &v->enc_head, err, "encoder.");
    return rc;
}

/* QwenImageDecoder3d(base_dim, z_dim, ..., temperal_upsample = temperal_downsample[::-1]).
 * Its up blocks take no attention, whatever attn_scales says. */
static int add_decoder(vae_modules *v, const vae_config *c, ds_error *err)
{
    int64_t dims[MAX_LEVELS + 1];
    dims[0] = c->base_dim * c->dim_mult[c->levels - 1];
    for (int i = 0; i < c->levels; i++)
        dims[i + 1] = c->base_dim * c->dim_mult[c->levels - 1 - i];
    int rc = ds__vae_add_conv(&v->m, "conv_in", dims[0], c->z_dim, 3, &v->dec_conv_in, err,
                              "decoder.");
    if (rc == DS_OK)
        rc = add_mid(v, "decoder", dims[0], &v->dec_mid, err);
    for (int i = 0; rc == DS_OK && i < c->levels; i++) {
        /* Every up block but the first follows an upsampler that halved the width. */
        int64_t in = i > 0 ? dims[i] / 2 : dims[i], out = dims[i + 1];
        v->dec_up[i] = v->m.count;
        for (int64_t r = 0; rc == DS_OK && r < c->num_res_blocks + 1; r++, in = out)
            rc = ds__vae_add_residual(&v->m, in, out, NULL, err,
                                      "decoder.up_blocks.%d.resnets.%" PRId64 ".", i, r);
        if (rc == DS_OK && i != c->levels - 1) {
            int temporal = c->temperal_downsample[c->temporal_count - 1 - i] != 0;
            rc = ds__vae_add_resample(&v->m, DS__VAE_UPSAMPLE, out, out / 2,
                                      temporal ? 2 * out : 0, NULL, err,
                                      "decoder.up_blocks.%d.upsamplers.0.", i);
        }
    }
    if (rc == DS_OK)
        rc = ds__vae_add_head(&v->m, dims[c->levels], c->image_channels, &v->dec_head, err,
                              "decoder.");
    return rc;
}

/* The mid block runs resnets.0, attentions.0, resnets.1. */
static void order_mid(vae_modules *v, size_t mid)
{
    ds__vae_order_add(&v->m, mid + 1);
    ds__vae_order_add(&v->m, mid);
    ds__vae_order_add(&v->m, mid + 2);
}

/* The instances for config c, and the units' order: decode (post_quant_conv, then Decoder3d),
 * then encode (Encoder3d, then quant_conv). */
static int modules_build(const vae_config *c, vae_modules *v, ds_error *err)
{
    memset(v, 0, sizeof *v);
    v->levels = c->levels;
    v->up_resnets = c->num_res_blocks + 1;
    int rc = ds__vae_modules_init(&v->m, "QwenImageVAE", "qwen_image_vae", &QWEN_NAMES,
                                  16 + 4 * (size_t)c->levels * ((size_t)c->num_res_blocks + 2),
                                  err);
    if (rc == DS_OK)
        rc = add_encoder(v, c, err);
    if (rc == DS_OK)
        rc = ds__vae_add_conv(&v->m, "quant_conv", 2 * c->z_dim, 2 * c->z_dim, 1,
                              &v->quant_conv, err, "%s", "");
    if (rc == DS_OK)
        rc = ds__vae_add_conv(&v->m, "post_quant_conv", c->z_dim, c->z_dim, 1,
                              &v->post_quant_conv, err, "%s", "");
    if (rc == DS_OK)
        rc = add_decoder(v, c, err);
    if (rc != DS_OK) {
        ds__vae_modules_free(&v->m);
        return rc;
    }
    ds__vae_order_add(&v->m, v->post_quant_conv);
    ds__vae_order_add(&v->m, v->dec_conv_in);
    order_mid(v, v->dec_mid);
    for (size_t g = v->dec_up[0]; g < v->dec_head; g++)
        ds__vae_order_add(&v->m, g);
    ds__vae_order_add(&v->m, v->dec_head);
    v->m.decode_units = v->m.order_count;
    ds__vae_order_add(&v->m, v->enc_conv_in);
    for (size_t g = v->enc_down; g < v->enc_down_end; g++)
        ds__vae_order_add(&v->m, g);
    order_mid(v, v->enc_mid);
    ds__vae_order_add(&v->m, v->enc_head);
    ds__vae_order_add(&v->m, v->quant_conv);
    return DS_OK;
}

static int declare_parameters(ds_kwargs *kwargs, ds_state_dict *params, ds_error *err)
{
    vae_config c;
    vae_modules v;
    int rc = read_kwargs(kwargs, &c, err);
    if (rc != DS_OK || (rc = modules_build(&c, &v, err)) != DS_OK)
        return rc;
    rc = ds_module_declare(&v.m.model, NULL, params, err);
    ds__vae_modules_free(&v.m);
    return rc;
}

/* ---- Forward pass ---- */

#define LATENT_CHANNELS 16

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}

/* One decode or encode call. */
typedef struct vae_run {
    ds_module_run run;
    const vae_modules *v;
    const ds_step_context *ctx;
    ds_backend *b;
    ds_dtype dtype;     /* compute dtype: the input's */
    const char *phase;  /* "decode" or "encode", for messages and progress */
    int x_owned;        /* the activation is ours to free (not the caller's input) */
    size_t done, total; /* units run, and in all this call: its progress */
} vae_run;

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

/* The latent mean and 1 / std, alive through the whole call. */
static size_t stats_bytes(const vae_run *r)
{
    return 2 * LATENT_CHANNELS * ds_dtype_size(r->dtype);
}

/* A bound on the activation bytes alive while a module runs on x with its weights `w` (a
 * struct of tensors, `size` bytes): x, at most three tensors of the widest of its input and
 * output (the output at the upsampled size), the last temporal tap sliced from a 3x3x3 weight,
 * and the latent stats; an attention block holds at most eight of x's size and the kernel's
 * [S, S] f32 scores. */
static size_t module_bytes(const vae_run *r, ds__vae_kind kind, const ds_tensor *x, const void *w,
                           size_t size)
{
    _Static_assert(sizeof(ds__linear_weights) == 2 * sizeof(ds_tensor),
                   "weights structs are arrays of tensors");
    const ds_tensor *t = w;
    size_t n = size / sizeof(ds_tensor);
    uint64_t elem = ds_dtype_size(r->dtype), xn = ds_tensor_numel(x);
    uint64_t B = (uint64_t)x->shape[0], S = (uint64_t)(x->shape[2] * x->shape[3]);
    if (kind == DS__VAE_ATTENTION)
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
    uint64_t act = B * (uint64_t)co * S * (kind == DS__VAE_UPSAMPLE ? 4 : 1);
    return (size_t)((xn + 3 * act) * elem + tap) + stats_bytes(r);
}

/* Where they go: the unit released (or unbound), a failure named after the module, progress. */
static int module_end(vae_run *r, size_t g, int rc, ds_error *err)
{
    if ((rc = ds__vae_module_end(&r->run, &r->v->m, g, r->phase, rc, err)) != DS_OK)
        return rc;
    ds_module_progress(r->ctx, r->phase, (int64_t)r->done++, (int64_t)r->total);
    return DS_OK;
}

/* Where a module's weights come in: cancellable before it; its unit acquired (or bound) into
 * *w and its activations reserved. */
static int module_begin(vae_run *r, size_t g, const ds_tensor *x, ds__vae_weights *w,
                        ds_error *err)
{
    const ds__vae_modules *m = &r->v->m;
    int rc;
    if ((rc = ds_module_cancelled(r->ctx, r->phase, "block", (int64_t)r->done,
                                  (int64_t)r->total, err)) != DS_OK ||
        (rc = ds__vae_module_begin(&r->run, m, g, r->phase, w, err)) != DS_OK ||
        (rc = ds__vae_module_reserve(&r->run, m, g, r->phase,
                                     module_bytes(r, m->kinds[g], x, w, sizeof *w), err)) !=
            DS_OK)
        return rc;
    return DS_OK;
}

/* A QwenImageCausalConv3d weight [Co, Ci, KT, KH, KW] runs on one frame as the 2-D conv of its
 * last temporal tap: CausalConv3d pads time by KT - 1 zero frames in front only, so the other
 * taps see zeros; its spatial padding is KH / 2 (upstream's padding=1 for 3x3x3, 0 for 1x1x1).
 * An nn.Conv2d weight [Co, Ci, KH, KW] runs with `pad` (top, bottom, left, right) and `stride`.
 * The result is a new *y. */
static int conv(vae_run *r, const ds__linear_weights *cw, const ds_tensor *x, const int pad2d[4],
                int stride, ds_tensor *y, ds_error *err)
{
    const ds_tensor *w = &cw->weight;
    ds_tensor tap = {0};
    int rc = DS_OK;
    int pad[4] = {pad2d[0], pad2d[1], pad2d[2], pad2d[3]};
    ds_tensor w2 = *w;
    if (w->ndim == 5) {
        const int64_t *ws = w->shape;
        int64_t shape4[4] = {ws[0], ws[1], ws[3], ws[4]};
        if (ws[2] > 1) {
            ds_slice_args last = {w, 2, ws[2] - 1, &tap};
            if ((rc = ds_tensor_alloc(r->b, w->dtype, 5, SHAPE(ws[0], ws[1], 1, ws[3], ws[4]),
                                      &tap, err)) != DS_OK ||
                (rc = ds_slice(r->b, NULL, &last, err)) != DS_OK)
                goto done;
            w2 = ds_module_view(&tap, 4, shape4);
        } else {
            w2 = ds_module_view(w, 4, shape4);
        }
        pad[0] = pad[1] = (int)(ws[3] / 2);
        pad[2] = pad[3] = (int)(ws[4] / 2);
        stride = 1;
    }
    const int64_t *xs = x->shape, *ks = w2.shape;
    int64_t oh = (xs[2] + pad[0] + pad[1] - ks[2]) / stride + 1;
    int64_t ow = (xs[3] + pad[2] + pad[3] - ks[3]) / stride + 1;
    ds_conv2d_args a = {x, &w2, &cw->bias, {pad[0], pad[1], pad[2], pad[3]}, {stride, stride}, y};
    if ((rc = alloc4(r, xs[0], ks[0], oh, ow, y, err)) != DS_OK ||
        (rc = ds_conv2d(r->b, NULL, &a, err)) != DS_OK)
        ds_tensor_free(y);
done:
    ds_tensor_free(&tap);
    return rc;
}

static const int NO_PAD[4] = {0, 0, 0, 0};

/* Replaces *x by the result of a conv of it. */
static int conv_replace(vae_run *r, const ds__linear_weights *w, ds_tensor *x, const int pad[4],
                        int stride, ds_error *err)
{
    ds_tensor y;
    int rc = conv(r, w, x, pad, stride, &y, err);
    if (rc != DS_OK)
        return rc;
    replace(r, x, &y);
    return DS_OK;
}

/* QwenImageRMS_norm (gamma [C, 1, 1(, 1)]) of x into y, then SiLU when `silu`: Wan's. */
static int rms_norm(vae_run *r, const ds_tensor *gamma, const ds_tensor *x, int silu,
                    ds_tensor *y, ds_error *err)
{
    return ds__vae_rms_norm(r->b, gamma, x, silu, y, err);
}

/* A QwenImageCausalConv3d alone (conv_in, quant_conv, post_quant_conv) on one frame. */
static int lone_conv(void *run, const ds__linear_weights *w, ds_tensor *x, ds_error *err)
{
    return conv_replace(run, w, x, NO_PAD, 1, err);
}

/* QwenImageResidualBlock: shortcut(x) + conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))); dropout is
 * the identity at inference. At most three activations are alive at once. */
static int residual_forward(void *run, const ds__vae_residual_weights *w, ds_tensor *x,
                            ds_error *err)
{
    vae_run *r = run;
    ds_tensor t = {0}, u = {0}, v = {0}, h = {0};
    int rc;
    if ((rc = alloc_like(r, x, &t, err)) != DS_OK ||
        (rc = rms_norm(r, &w->norm1, x, 1, &t, err)) != DS_OK ||
        (rc = conv(r, &w->conv1, &t, NO_PAD, 1, &u, err)) != DS_OK)
        goto fail;
    ds_tensor_free(&t);
    if ((rc = alloc_like(r, &u, &t, err)) != DS_OK ||
        (rc = rms_norm(r, &w->norm2, &u, 1, &t, err)) != DS_OK)
        goto fail;
    ds_tensor_free(&u);
    if ((rc = conv(r, &w->conv2, &t, NO_PAD, 1, &v, err)) != DS_OK)
        goto fail;
    ds_tensor_free(&t);
    const ds_tensor *skip = x;
    if (w->shortcut.weight.data) {
        if ((rc = conv(r, &w->shortcut, x, NO_PAD, 1, &h, err)) != DS_OK)
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
    ds_module_free_all(DS_TENSORS(&t, &u, &v, &h));
    return rc;
}

/* QwenImageAttentionBlock on one frame: Wan's AttentionBlock on [B, C, H, W]. */
static int attention_forward(void *run, const ds__vae_attention_weights *w, ds_tensor *x,
                             ds_error *err)
{
    vae_run *r = run;
    ds_tensor y;
    int rc = ds__vae_attention(r->b, w, x, &y, err);
    if (rc == DS_OK)
        replace(r, x, &y);
    return rc;
}

/* QwenImageResample on one frame (time_conv needs the feature cache of a second frame):
 * upsample: nearest-exact x2 (for a factor of 2 the same source pixel as nearest; upstream
 * upsamples in f32 and casts back, which copies values exactly), then the 3x3 Conv2d that
 * halves the channels; downsample: ZeroPad2d((0, 1, 0, 1)), then the 3x3 stride-2 Conv2d. */
static int resample_forward(void *run, const ds__vae_resample_weights *w, int up,
                            ds_tensor *x, ds_error *err)
{
    vae_run *r = run;
    static const int up_pad[4] = {1, 1, 1, 1}, down_pad[4] = {0, 1, 0, 1};
    if (!up)
        return conv_replace(r, &w->resample, x, down_pad, 2, err);
    ds_tensor t;
    const int64_t *xs = x->shape;
    ds_upsample_args a = {x, &t};
    int rc;
    if ((rc = alloc4(r, xs[0], xs[1], 2 * xs[2], 2 * xs[3], &t, err)) != DS_OK)
        return rc;
    if ((rc = ds_upsample_nearest2x(r->b, NULL, &a, err)) != DS_OK) {
        ds_tensor_free(&t);
        return rc;
    }
    replace(r, x, &t);
    return conv_replace(r, &w->resample, x, up_pad, 1, err);
}

/* Encoder3d / Decoder3d's head: norm_out, SiLU, conv_out. */
static int head_forward(void *run, const ds__vae_head_weights *w, ds_tensor *x,
                        ds_error *err)
{
    vae_run *r = run;
    ds_tensor t;
    int rc = alloc_like(r, x, &t, err);
    if (rc != DS_OK)
        return rc;
    if ((rc = rms_norm(r, &w->norm, x, 1, &t, err)) != DS_OK) {
        ds_tensor_free(&t);
        return rc;
    }
    replace(r, x, &t);
    return conv_replace(r, &w->conv, x, NO_PAD, 1, err);
}

/* Module instance g on x, told apart by class as upstream's Sequentials call each: a
 * QwenImageCausalConv3d alone (conv_in, quant_conv, post_quant_conv), a residual or attention
 * block, a resampler or a head. */
static int module(vae_run *r, size_t g, ds_tensor *x, ds_error *err)
{
    ds__vae_weights w;
    int rc = module_begin(r, g, x, &w, err);
    if (rc != DS_OK)
        return rc;
    static const ds__vae_forwards forwards = {lone_conv, residual_forward, attention_forward,
                                              resample_forward, head_forward};
    return module_end(r, g, ds__vae_forward(&forwards, r, &r->v->m, g, &w, x, err), err);
}

/* QwenImageMidBlock(num_layers=1): resnets[0], then attentions[0] and resnets[1]. */
static int mid_block(vae_run *r, size_t mid, ds_tensor *x, ds_error *err)
{
    int rc;
    if ((rc = module(r, mid + 1, x, err)) != DS_OK || (rc = module(r, mid, x, err)) != DS_OK ||
        (rc = module(r, mid + 2, x, err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* QwenImageEncoder3d.forward: conv_in, the down blocks, the mid block, the head. */
static int encoder3d(vae_run *r, ds_tensor *x, ds_error *err)
{
    const vae_modules *v = r->v;
    int rc = module(r, v->enc_conv_in, x, err);
    for (size_t g = v->enc_down; rc == DS_OK && g < v->enc_down_end; g++)
        rc = module(r, g, x, err);
    if (rc == DS_OK)
        rc = mid_block(r, v->enc_mid, x, err);
    if (rc == DS_OK)
        rc = module(r, v->enc_head, x, err);
    return rc;
}

/* QwenImageUpBlock i: its resnets, then its upsampler (all but the last). */
static int up_block(vae_run *r, int i, ds_tensor *x, ds_error *err)
{
    const vae_modules *v = r->v;
    size_t g = v->dec_up[i];
    int rc = DS_OK;
    for (int64_t k = 0; rc == DS_OK && k < v->up_resnets; k++)
        rc = module(r, g++, x, err);
    if (rc == DS_OK && i != v->levels - 1)
        rc = module(r, g, x, err);
    return rc;
}

/* QwenImageDecoder3d.forward: conv_in, the mid block, the up blocks, the head. */
static int decoder3d(vae_run *r, ds_tensor *x, ds_error *err)
{
    const vae_modules *v = r->v;
    int rc = module(r, v->dec_conv_in, x, err);
    if (rc == DS_OK)
        rc = mid_block(r, v->dec_mid, x, err);
    for (int i = 0; rc == DS_OK && i < v->levels; i++)
        rc = up_block(r, i, x, err);
    if (rc == DS_OK)
        rc = module(r, v->dec_head, x, err);
    return rc;
}

/* mean and the stored 1 / std as [1, 16, 1, 1] in the compute dtype. */
static int latent_stats(vae_run *r, ds_tensor *mean, ds_tensor *inv_std, ds_error *err)
{
    return ds__vae_latent_stats(r->b, r->dtype, 4, LATENT_CHANNELS, ds__vae_wan21_mean,
                                ds__vae_wan21_std, mean, inv_std, err);
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

static int vae_forward(const ds_loaded_model *m, const ds_step_context *ctx, int decode,
                       const ds_tensor *in, ds_tensor *out, ds_error *err)
{
    const char *phase = decode ? "decode" : "encode";
    const char *in_name = decode ? "latents" : "image", *out_name = decode ? "image" : "latents";
    vae_config c;
    vae_modules v = {0};
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

    vae_run r = {.v = &v, .ctx = ctx, .b = ctx->backend, .dtype = in->dtype, .phase = phase};
    ds_tensor upload = {0}, x = {0}, z = {0}, mean = {0}, inv_std = {0}, input;
    char what[64];
    snprintf(what, sizeof what, "%s: input", phase);
    if ((rc = modules_build(&c, &v, err)) != DS_OK)
        return ds_error_prefix(err, "%s: ", phase);
    /* This direction's units, in the order they run, are the manager's plan: the other
     * direction's are the first evicted and prefetch follows the modules about to run. */
    const ds__vae_modules *mm = &v.m;
    size_t first = decode ? 0 : mm->decode_units;
    r.total = decode ? mm->decode_units : mm->order_count - mm->decode_units;
    if ((rc = ds_module_open_ordered(&r.run, &mm->model, mm->order, mm->order_count, m, r.b,
                                     ctx->vram, 0, phase, err)) != DS_OK)
        goto done;
    if (ctx->vram && (rc = ds_module_plan_range(&r.run, first, r.total, phase, err)) != DS_OK) {
        ds_error_prefix(err, "%s: registering the weights with the VRAM manager: ", phase);
        goto done;
    }
    /* Before the modules: the stats, the input's upload and (decode) its scaled copy. */
    if ((rc = ds_module_reserve_set(&r.run, what,
                                    (decode ? 2 : 1) * ds_tensor_nbytes(in) + stats_bytes(&r),
                                    err)) != DS_OK ||
        (rc = latent_stats(&r, &mean, &inv_std, err)) != DS_OK ||
        (rc = ds_module_input(r.b, in, &upload, &input, err)) != DS_OK)
        goto done;

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

    if (decode) {
        if ((rc = module(&r, v.post_quant_conv, &x, err)) != DS_OK ||
            (rc = decoder3d(&r, &x, err)) != DS_OK)
            goto done;
    } else if ((rc = encoder3d(&r, &x, err)) != DS_OK ||
               (rc = module(&r, v.quant_conv, &x, err)) != DS_OK) {
        goto done;
    }

    ds_tensor *result = &x;
    if (!decode) {
        /* quant_conv's first 16 channels (the mean of the posterior), then (z - mean) / std as
         * upstream's (z - mean) * (1 / std). */
        ds_slice_args first = {&x, 1, 0, &z};
        ds_binary_args sub = {&z, &mean, DS_BINARY_SUB, &z};
        ds_binary_args mul = {&z, &inv_std, DS_BINARY_MUL, &z};
        snprintf(what, sizeof what, "%s: output", phase);
        if ((rc = ds_module_reserve_set(&r.run, what,
                                        ds_tensor_nbytes(&x) + ds_tensor_nbytes(out) +
                                            stats_bytes(&r),
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
    ds_module_close(&r.run);
    ds_tensor_free(&upload);
    if (r.x_owned)
        ds_tensor_free(&x);
    ds_module_free_all(DS_TENSORS(&z, &mean, &inv_std));
    ds__vae_modules_free(&v.m);
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

DS__VAE_STEPS(steps, step_run,
              "decode: latents [B, 16, h, w] (f32 or bf16; the compute dtype) -> image [B, C, 8h, "
              "8w] in latents' dtype (C = the model's image_channels; values around [-1, 1], not "
              "clamped)",
              "encode: image [B, C, H, W] (f32 or bf16 in [-1, 1], C = the model's image_channels, "
              "H and W multiples of 8) -> latents [B, 16, H/8, W/8] in image's dtype",
              ds_memory_qwen_image_vae);

DS_MODEL_CLASS(ds__qwen_image_vae_class, CLASS_NAME, declare_parameters, steps);
