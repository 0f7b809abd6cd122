/* diffsynth/models/wan_video_vae.py: WanVideoVAE, the Wan2.1 video VAE (z 16, 8x spatial, 4x
 * temporal; VideoVAE_ under `model.`), decode and encode of videos as upstream runs them
 * untiled: causal 3-D convolutions with the two-frame feature cache, the encoder on the first
 * frame alone and then on chunks of 4, the decoder on one latent frame at a time, temporal
 * up/downsampling by the resamplers' time_conv, the per-channel latent mean and std.
 *
 * One function per upstream module; every module instance is declared once through the module
 * engine with its own prefix and widths. */
#include "models/wan_video_vae.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "models/module.h"
#include "models/param_tree.h"

#define CLASS_NAME "diffsynth.models.wan_video_vae.WanVideoVAE"
#define OWNER "WanVideoVAE"
#define LATENT_CHANNELS 16
#define NORM_EPS 1e-12f /* F.normalize's default eps, RMS_norm's */
#define CACHE_T 2       /* frames a causal conv keeps from the chunk before */

/* VideoVAE_'s defaults, which WanVideoVAE does not change. */
#define BASE_DIM 96
#define LEVELS 4
#define RES_BLOCKS 2
static const int64_t DIM_MULT[LEVELS] = {1, 2, 4, 4};
static const int TEMPORAL_DOWN[LEVELS - 1] = {0, 1, 1};

/* WanVideoVAE.mean and std. */
static const float LATENT_MEAN[LATENT_CHANNELS] = {
    -0.7571f, -0.7089f, -0.9113f, 0.1075f, -0.1745f, 0.9653f, -0.1517f, 1.5508f,
    0.4134f,  -0.0715f, 0.5517f,  -0.3632f, -0.1922f, -0.9497f, 0.2503f, -0.2921f,
};
static const float LATENT_STD[LATENT_CHANNELS] = {
    2.8184f, 1.4541f, 2.3275f, 2.6558f, 1.2196f, 1.7708f, 2.6052f, 2.0743f,
    3.2687f, 2.1526f, 2.8652f, 1.5579f, 1.6382f, 1.1253f, 2.8251f, 1.9160f,
};

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}
#define DIMS(...) ((const int64_t[]){__VA_ARGS__})
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- The modules ---- */

typedef struct residual_weights {
    ds_tensor norm1;                 /* residual.0 */
    ds__linear_weights conv1;        /* residual.2 */
    ds_tensor norm2;                 /* residual.3 */
    ds__linear_weights conv2;        /* residual.6 */
    ds__linear_weights shortcut;     /* zeroed when the widths agree */
} residual_weights;

typedef struct attention_weights {
    ds_tensor norm;
    ds__linear_weights to_qkv, proj; /* 1x1 Conv2d run as Linears over the channels */
} attention_weights;

typedef struct resample_weights {
    ds__linear_weights resample, time_conv; /* time_conv zeroed in the 2-D modes */
} resample_weights;

typedef struct head_weights {
    ds_tensor norm;
    ds__linear_weights conv;
} head_weights;

#define DIM DS_MODULE_DIM

/* ResidualBlock(in, out): dims in, out, whether a shortcut projects in to out. */
enum { RES_IN, RES_OUT, RES_SHORTCUT };
static const ds_module residual_modules[] = {
    {"residual.0.gamma", DS_MODULE_TENSOR, 4, {DIM(RES_IN), 1, 1, 1}, 0,
     offsetof(residual_weights, norm1), 0},
    {"residual.2", DS_MODULE_CONV, 5, {DIM(RES_OUT), DIM(RES_IN), 3, 3, 3}, 0,
     offsetof(residual_weights, conv1), 0},
    {"residual.3.gamma", DS_MODULE_TENSOR, 4, {DIM(RES_OUT), 1, 1, 1}, 0,
     offsetof(residual_weights, norm2), 0},
    {"residual.6", DS_MODULE_CONV, 5, {DIM(RES_OUT), DIM(RES_OUT), 3, 3, 3}, 0,
     offsetof(residual_weights, conv2), 0},
    {"shortcut", DS_MODULE_CONV, 5, {DIM(RES_OUT), DIM(RES_IN), 1, 1, 1}, 0,
     offsetof(residual_weights, shortcut), DS_MODULE_IF(RES_SHORTCUT)},
};

/* AttentionBlock(dim): dims dim, 3 * dim. */
enum { ATTN_DIM, ATTN_QKV };
static const ds_module attention_modules[] = {
    {"norm.gamma", DS_MODULE_TENSOR, 3, {DIM(ATTN_DIM), 1, 1}, 0,
     offsetof(attention_weights, norm), 0},
    {"to_qkv", DS_MODULE_CONV_LINEAR, 4, {DIM(ATTN_QKV), DIM(ATTN_DIM), 1, 1}, 0,
     offsetof(attention_weights, to_qkv), 0},
    {"proj", DS_MODULE_CONV_LINEAR, 4, {DIM(ATTN_DIM), DIM(ATTN_DIM), 1, 1}, 0,
     offsetof(attention_weights, proj), 0},
};

/* Resample(dim, mode): the Conv2d at index 1 of a Sequential behind an Upsample or a
 * ZeroPad2d; the 3D modes' temporal conv. dims: dim, the Conv2d's output (dim / 2 upsampling),
 * time_conv's output (0: a 2D mode, none). */
enum { RS_DIM, RS_OUT, RS_TIME };
static const ds_module resample_modules[] = {
    {"resample.1", DS_MODULE_CONV, 4, {DIM(RS_OUT), DIM(RS_DIM), 3, 3}, 0,
     offsetof(resample_weights, resample), 0},
    {"time_conv", DS_MODULE_CONV, 5, {DIM(RS_TIME), DIM(RS_DIM), 3, 1, 1}, 0,
     offsetof(resample_weights, time_conv), DS_MODULE_IF(RS_TIME)},
};

/* Encoder3d / Decoder3d.head: RMS_norm, SiLU, CausalConv3d. dims: in, out. */
enum { HEAD_IN, HEAD_OUT };
static const ds_module head_modules[] = {
    {"head.0.gamma", DS_MODULE_TENSOR, 4, {DIM(HEAD_IN), 1, 1, 1}, 0,
     offsetof(head_weights, norm), 0},
    {"head.2", DS_MODULE_CONV, 5, {DIM(HEAD_OUT), DIM(HEAD_IN), 3, 3, 3}, 0,
     offsetof(head_weights, conv), 0},
};

/* A CausalConv3d alone (conv1 of the encoder, the decoder and VideoVAE_, conv2): dims out, in,
 * kernel. */
enum { CONV_OUT, CONV_IN, CONV_K };
static const ds_module conv1_module[] = {
    {"conv1", DS_MODULE_CONV, 5, {DIM(CONV_OUT), DIM(CONV_IN), DIM(CONV_K), DIM(CONV_K),
                                   DIM(CONV_K)}, 0, 0, 0}};
static const ds_module conv2_module[] = {
    {"conv2", DS_MODULE_CONV, 5, {DIM(CONV_OUT), DIM(CONV_IN), DIM(CONV_K), DIM(CONV_K),
                                   DIM(CONV_K)}, 0, 0, 0}};

#undef DIM

static const char *const whole_unit[] = {""};
static const char *const head_unit[] = {"head"};
static const char *const conv1_unit[] = {"conv1"};
static const char *const conv2_unit[] = {"conv2"};

typedef enum block_kind {
    BLOCK_CONV,
    BLOCK_RESIDUAL,
    BLOCK_ATTENTION,
    BLOCK_DOWNSAMPLE,
    BLOCK_UPSAMPLE,
    BLOCK_HEAD,
} block_kind;

#define MODULES_PER_GROUP 5
#define GROUPS_MAX 64

/* The instances in upstream's registration order (encoder, conv1, conv2, decoder), where each
 * part starts, and the units in the order the forwards run them: decode's, then encode's. */
typedef struct wan_modules {
    ds_module_model model;
    ds_module_group groups[GROUPS_MAX];
    block_kind kinds[GROUPS_MAX];
    ds_module modules[GROUPS_MAX * MODULES_PER_GROUP];
    char prefixes[GROUPS_MAX][64];
    size_t count;
    ds_module_unit_ref order[GROUPS_MAX];
    size_t order_count, decode_units;
    size_t enc_conv1, enc_down, enc_down_end, enc_head; /* middle: enc_down_end .. + 3 */
    size_t conv1, conv2;
    size_t dec_conv1, dec_up, dec_up_end, dec_head;     /* middle: dec_conv1 + 1 .. + 3 */
} wan_modules;

static int add_group(wan_modules *v, block_kind kind, const ds_module *tmpl, size_t n,
                     const int64_t *dims, const char *const *units, ds_error *err,
                     const char *fmt, ...) __attribute__((format(printf, 8, 9)));

static int add_group(wan_modules *v, block_kind kind, const ds_module *tmpl, size_t n,
                     const int64_t *dims, const char *const *units, ds_error *err,
                     const char *fmt, ...)
{
    if (v->count == GROUPS_MAX)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: module table overflow", OWNER);
    size_t g = v->count++;
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(v->prefixes[g], sizeof v->prefixes[g], fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= sizeof v->prefixes[g])
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: module name too long", OWNER);
    ds_module *mods = &v->modules[g * MODULES_PER_GROUP];
    size_t count;
    ds_module_instance(tmpl, n, dims, mods, &count);
    v->groups[g] = (ds_module_group){v->prefixes[g], 0, mods, count, units, 1};
    v->kinds[g] = kind;
    return DS_OK;
}

static int add_residual(wan_modules *v, const char *part, int64_t i, int64_t in, int64_t out,
                        ds_error *err)
{
    return add_group(v, BLOCK_RESIDUAL, residual_modules, COUNT(residual_modules),
                     DIMS(in, out, in != out), whole_unit, err, "model.%s.%" PRId64 ".", part, i);
}

static int add_attention(wan_modules *v, const char *part, int64_t i, int64_t dim, ds_error *err)
{
    return add_group(v, BLOCK_ATTENTION, attention_modules, COUNT(attention_modules),
                     DIMS(dim, 3 * dim), whole_unit, err, "model.%s.%" PRId64 ".", part, i);
}

/* Encoder3d.middle / Decoder3d.middle: ResidualBlock, AttentionBlock, ResidualBlock. */
static int add_middle(wan_modules *v, const char *part, int64_t dim, ds_error *err)
{
    char name[32];
    snprintf(name, sizeof name, "%s.middle", part);
    int rc;
    if ((rc = add_residual(v, name, 0, dim, dim, err)) != DS_OK ||
        (rc = add_attention(v, name, 1, dim, err)) != DS_OK ||
        (rc = add_residual(v, name, 2, dim, dim, err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* Encoder3d(dim 96, 2 * z_dim, [1, 2, 4, 4], 2 res blocks, no attention scales). */
static int add_encoder(wan_modules *v, int64_t z_dim, ds_error *err)
{
    int64_t dims[LEVELS + 1] = {BASE_DIM};
    for (int i = 0; i < LEVELS; i++)
        dims[i + 1] = BASE_DIM * DIM_MULT[i];
    v->enc_conv1 = v->count;
    int rc = add_group(v, BLOCK_CONV, conv1_module, 1, DIMS(dims[0], 3, 3), conv1_unit, err,
                       "model.encoder.");
    int64_t k = 0;
    v->enc_down = v->count;
    for (int i = 0; rc == DS_OK && i < LEVELS; i++) {
        int64_t in = dims[i], out = dims[i + 1];
        for (int r = 0; rc == DS_OK && r < RES_BLOCKS; r++, in = out)
            rc = add_residual(v, "encoder.downsamples", k++, in, out, err);
        if (rc == DS_OK && i != LEVELS - 1)
            rc = add_group(v, BLOCK_DOWNSAMPLE, resample_modules, COUNT(resample_modules),
                           DIMS(out, out, TEMPORAL_DOWN[i] ? out : 0), whole_unit, err,
                           "model.encoder.downsamples.%" PRId64 ".", k++);
    }
    v->enc_down_end = v->count;
    if (rc == DS_OK)
        rc = add_middle(v, "encoder", dims[LEVELS], err);
    v->enc_head = v->count;
    if (rc == DS_OK)
        rc = add_group(v, BLOCK_HEAD, head_modules, COUNT(head_modules),
                       DIMS(dims[LEVELS], 2 * z_dim), head_unit, err, "model.encoder.");
    return rc;
}

/* Decoder3d(dim 96, z_dim, [1, 2, 4, 4], 2 res blocks, temperal_upsample [True, True, False]);
 * the up blocks after the first take the halved width of the upsampler before them. */
static int add_decoder(wan_modules *v, int64_t z_dim, ds_error *err)
{
    int64_t dims[LEVELS + 1] = {BASE_DIM * DIM_MULT[LEVELS - 1]};
    for (int i = 0; i < LEVELS; i++)
        dims[i + 1] = BASE_DIM * DIM_MULT[LEVELS - 1 - i];
    v->dec_conv1 = v->count;
    int rc = add_group(v, BLOCK_CONV, conv1_module, 1, DIMS(dims[0], z_dim, 3), conv1_unit, err,
                       "model.decoder.");
    if (rc == DS_OK)
        rc = add_middle(v, "decoder", dims[0], err);
    int64_t k = 0;
    v->dec_up = v->count;
    for (int i = 0; rc == DS_OK && i < LEVELS; i++) {
        int64_t in = i > 0 ? dims[i] / 2 : dims[i], out = dims[i + 1];
        for (int r = 0; rc == DS_OK && r < RES_BLOCKS + 1; r++, in = out)
            rc = add_residual(v, "decoder.upsamples", k++, in, out, err);
        if (rc == DS_OK && i != LEVELS - 1) {
            int temporal = TEMPORAL_DOWN[LEVELS - 2 - i];
            rc = add_group(v, BLOCK_UPSAMPLE, resample_modules, COUNT(resample_modules),
                           DIMS(out, out / 2, temporal ? 2 * out : 0), whole_unit, err,
                           "model.decoder.upsamples.%" PRId64 ".", k++);
        }
    }
    v->dec_up_end = v->count;
    v->dec_head = v->count;
    if (rc == DS_OK)
        rc = add_group(v, BLOCK_HEAD, head_modules, COUNT(head_modules),
                       DIMS(dims[LEVELS], 3), head_unit, err, "model.decoder.");
    return rc;
}

static int modules_build(int64_t z_dim, wan_modules *v, ds_error *err)
{
    memset(v, 0, sizeof *v);
    int rc = add_encoder(v, z_dim, err);
    v->conv1 = v->count;
    if (rc == DS_OK)
        rc = add_group(v, BLOCK_CONV, conv1_module, 1, DIMS(2 * z_dim, 2 * z_dim, 1), conv1_unit,
                       err, "model.");
    v->conv2 = v->count;
    if (rc == DS_OK)
        rc = add_group(v, BLOCK_CONV, conv2_module, 1, DIMS(z_dim, z_dim, 1), conv2_unit, err,
                       "model.");
    if (rc == DS_OK)
        rc = add_decoder(v, z_dim, err);
    if (rc != DS_OK)
        return rc;
    /* decode: conv2, then the decoder; encode: the encoder, then conv1. */
    v->order[v->order_count++] = (ds_module_unit_ref){v->conv2, 0, 0};
    for (size_t g = v->dec_conv1; g <= v->dec_head; g++)
        v->order[v->order_count++] = (ds_module_unit_ref){g, 0, 0};
    v->decode_units = v->order_count;
    for (size_t g = v->enc_conv1; g <= v->enc_head; g++)
        v->order[v->order_count++] = (ds_module_unit_ref){g, 0, 0};
    v->order[v->order_count++] = (ds_module_unit_ref){v->conv1, 0, 0};
    v->model = (ds_module_model){OWNER, "wan_video_vae", v->groups, v->count};
    return DS_OK;
}

static int read_kwargs(ds_kwargs *kwargs, int64_t *z_dim, ds_error *err)
{
    *z_dim = LATENT_CHANNELS;
    int rc;
    if ((rc = ds__kwarg_int_range(kwargs, CLASS_NAME, "z_dim", 1, DS__PARAM_DIM_MAX, z_dim,
                                  err)) != DS_OK ||
        (rc = ds_kwargs_check_all_used(kwargs, err)) != DS_OK)
        return rc;
    return DS_OK;
}

static int declare_parameters(ds_kwargs *kwargs, ds_state_dict *params, ds_error *err)
{
    int64_t z_dim;
    int rc = read_kwargs(kwargs, &z_dim, err);
    if (rc != DS_OK)
        return rc;
    wan_modules *v = malloc(sizeof *v);
    if (!v)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", OWNER);
    if ((rc = modules_build(z_dim, v, err)) == DS_OK)
        rc = ds_module_declare(&v->model, NULL, params, err);
    free(v);
    return rc;
}

/* ---- The forward passes ---- */

/* The feature cache of one causal conv: the last CACHE_T frames of its input in the chunk
 * before (fewer after a one-frame first chunk), or upstream's "Rep" marker for an upsampler's
 * time_conv that has seen only the first chunk. */
typedef struct feat_cache {
    ds_tensor x;
    int rep;
} feat_cache;

#define CACHES_MAX 64

typedef struct wan_run {
    ds_module_run run;
    const wan_modules *v;
    const ds_step_context *ctx;
    ds_backend *b;
    ds_dtype dtype;
    const char *phase;
    feat_cache cache[CACHES_MAX]; /* by upstream's feat_idx: causal convs in call order */
    int idx;                      /* feat_idx within the chunk */
    int64_t chunks;
    int tiled;                    /* progress counts tiles, not chunks */
} wan_run;

/* VideoVAE_.clear_cache: every decode and encode (each tile's too) starts without one. */
static void clear_cache(wan_run *r)
{
    for (int i = 0; i < CACHES_MAX; i++) {
        ds_tensor_free(&r->cache[i].x);
        r->cache[i].rep = 0;
    }
}

static int alloc_shape(wan_run *r, int ndim, const int64_t *shape, ds_tensor *out,
                       ds_error *err)
{
    return ds_tensor_alloc(r->b, r->dtype, ndim, shape, out, err);
}

static int alloc_like(wan_run *r, const ds_tensor *x, ds_tensor *out, ds_error *err)
{
    return ds_tensor_alloc(r->b, r->dtype, x->ndim, x->shape, out, err);
}

/* *x becomes y, the old one freed. */
static void replace(ds_tensor *x, ds_tensor *y)
{
    ds_tensor_free(x);
    *x = *y;
    *y = (ds_tensor){0};
}

/* Frames [start, start + n) of x [B, C, T, H, W] into a new *y. */
static int frames(wan_run *r, const ds_tensor *x, int64_t start, int64_t n, ds_tensor *y,
                  ds_error *err)
{
    const int64_t *s = x->shape;
    ds_slice_args a = {x, 2, start, y};
    int rc = alloc_shape(r, 5, SHAPE(s[0], s[1], n, s[3], s[4]), y, err);
    if (rc == DS_OK && (rc = ds_slice(r->b, NULL, &a, err)) != DS_OK)
        ds_tensor_free(y);
    return rc;
}

/* a and b joined along time into a new *y. */
static int cat_time(wan_run *r, const ds_tensor *a, const ds_tensor *b, ds_tensor *y,
                    ds_error *err)
{
    const int64_t *s = a->shape;
    const ds_tensor *in[2] = {a, b};
    ds_concat_args c = {in, 2, 2, y};
    int rc = alloc_shape(r, 5, SHAPE(s[0], s[1], s[2] + b->shape[2], s[3], s[4]), y, err);
    if (rc == DS_OK && (rc = ds_concat(r->b, NULL, &c, err)) != DS_OK)
        ds_tensor_free(y);
    return rc;
}

/* [B, C, T, H, W] <-> [B * T, C, H, W] (upstream's rearrange for the per-frame modules). */
static int to_frames(wan_run *r, const ds_tensor *x, ds_tensor *y, ds_error *err)
{
    const int64_t *s = x->shape;
    ds_tensor p = {0};
    ds_permute_args a = {x, {0, 2, 1, 3, 4}, &p};
    int rc = alloc_shape(r, 5, SHAPE(s[0], s[2], s[1], s[3], s[4]), &p, err);
    if (rc == DS_OK && (rc = ds_permute(r->b, NULL, &a, err)) == DS_OK) {
        *y = ds_module_view(&p, 4, SHAPE(s[0] * s[2], s[1], s[3], s[4]));
        return DS_OK;
    }
    ds_tensor_free(&p);
    return rc;
}

static int from_frames(wan_run *r, const ds_tensor *x, int64_t t, ds_tensor *y, ds_error *err)
{
    const int64_t *s = x->shape;
    ds_tensor v = ds_module_view(x, 5, SHAPE(s[0] / t, t, s[1], s[2], s[3]));
    ds_permute_args a = {&v, {0, 2, 1, 3, 4}, y};
    int rc = alloc_shape(r, 5, SHAPE(s[0] / t, s[1], t, s[2], s[3]), y, err);
    if (rc == DS_OK && (rc = ds_permute(r->b, NULL, &a, err)) != DS_OK)
        ds_tensor_free(y);
    return rc;
}

/* CausalConv3d (weight [Co, Ci, KT, KH, KW], spatial padding KH / 2) of x after `cache`'s frames
 * (NULL: none), zeros in front up to KT - 1 frames, into a new *y. */
static int causal_conv(wan_run *r, const ds__linear_weights *w, const ds_tensor *x,
                       const ds_tensor *cache, const int stride[3], ds_tensor *y, ds_error *err)
{
    const int64_t *xs = x->shape, *ks = w->weight.shape;
    int64_t tc = cache ? cache->shape[2] : 0;
    int64_t pad_t = ks[2] - 1 > tc ? ks[2] - 1 - tc : 0;
    int64_t t = (xs[2] + tc + pad_t - ks[2]) / stride[0] + 1;
    int64_t h = (xs[3] + 2 * (ks[3] / 2) - ks[3]) / stride[1] + 1;
    int64_t wd = (xs[4] + 2 * (ks[4] / 2) - ks[4]) / stride[2] + 1;
    ds_conv3d_args a = {x, &w->weight, &w->bias, cache, (int)(ks[3] / 2), (int)(ks[4] / 2),
                        {stride[0], stride[1], stride[2]}, y};
    int rc = alloc_shape(r, 5, SHAPE(xs[0], ks[0], t, h, wd), y, err);
    if (rc == DS_OK && (rc = ds_conv3d_causal(r->b, NULL, &a, err)) != DS_OK)
        ds_tensor_free(y);
    return rc;
}

static const int UNIT_STRIDE[3] = {1, 1, 1};

/* What feat_cache[idx] becomes after a chunk whose conv input is x: its last CACHE_T frames,
 * with the cache's last frame in front when the chunk had one frame and a cache exists. */
static int next_cache(wan_run *r, const ds_tensor *x, const ds_tensor *old, ds_tensor *out,
                      ds_error *err)
{
    int64_t t = x->shape[2], n = t < CACHE_T ? t : CACHE_T;
    ds_tensor last = {0}, prev = {0};
    int rc = frames(r, x, t - n, n, &last, err);
    if (rc != DS_OK || n >= CACHE_T || !old || !old->data) {
        *out = last;
        return rc;
    }
    if ((rc = frames(r, old, old->shape[2] - 1, 1, &prev, err)) == DS_OK)
        rc = cat_time(r, &prev, &last, out, err);
    ds_tensor_free(&prev);
    ds_tensor_free(&last);
    return rc;
}

/* A CausalConv3d called with the feature cache, as upstream's modules call theirs: the conv
 * sees the cache of the chunk before, the cache becomes this chunk's. *x is replaced. */
static int cached_conv(wan_run *r, const ds__linear_weights *w, ds_tensor *x, ds_error *err)
{
    if (r->idx >= CACHES_MAX)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: more than %d cached convs", OWNER,
                            CACHES_MAX);
    feat_cache *c = &r->cache[r->idx++];
    ds_tensor next = {0}, y = {0};
    int rc = next_cache(r, x, &c->x, &next, err);
    if (rc == DS_OK)
        rc = causal_conv(r, w, x, c->x.data ? &c->x : NULL, UNIT_STRIDE, &y, err);
    if (rc != DS_OK) {
        ds_tensor_free(&next);
        return rc;
    }
    replace(&c->x, &next);
    replace(x, &y);
    return DS_OK;
}

int ds__wan_vae_rms_norm(ds_backend *b, const ds_tensor *gamma, const ds_tensor *x, int silu,
                         ds_tensor *y, ds_error *err)
{
    ds_tensor g1 = ds_module_view(gamma, 1, SHAPE(gamma->shape[0]));
    ds_channel_rms_norm_args n = {x, &g1, NULL, NORM_EPS, y};
    ds_activation_args act = {y, DS_ACT_SILU, y};
    int rc;
    if ((rc = ds_channel_rms_norm(b, NULL, &n, err)) != DS_OK ||
        (silu && (rc = ds_activate(b, NULL, &act, err)) != DS_OK))
        return rc;
    return DS_OK;
}

/* RMS_norm over the channels of x into a new *y, then SiLU when `silu`. */
static int rms_norm(wan_run *r, const ds_tensor *gamma, const ds_tensor *x, int silu,
                    ds_tensor *y, ds_error *err)
{
    int rc = alloc_like(r, x, y, err);
    if (rc == DS_OK && (rc = ds__wan_vae_rms_norm(r->b, gamma, x, silu, y, err)) != DS_OK)
        ds_tensor_free(y);
    return rc;
}

static int module_end(wan_run *r, size_t g, int rc, ds_error *err)
{
    rc = ds_module_end(&r->run, rc, err);
    if (rc != DS_OK) {
        const ds_module_group *grp = &r->v->groups[g];
        return ds_error_prefix(err, "%s: %s%s: ", r->phase, grp->prefix,
                               grp->units[0]);
    }
    return DS_OK;
}

static int module_begin(wan_run *r, size_t g, void *w, size_t size, ds_error *err)
{
    memset(w, 0, size);
    int rc = ds_module_use(&r->run, g, 0, 0, w, err);
    return rc == DS_OK ? DS_OK : module_end(r, g, rc, err);
}

/* ResidualBlock: shortcut(x) + residual(x), the residual's two convs with the cache. */
static int residual_forward(wan_run *r, const residual_weights *w, ds_tensor *x, ds_error *err)
{
    ds_tensor h = {0}, t = {0}, u = {0};
    int rc = DS_OK;
    if (w->shortcut.weight.data)
        rc = causal_conv(r, &w->shortcut, x, NULL, UNIT_STRIDE, &h, err);
    if (rc == DS_OK && (rc = rms_norm(r, &w->norm1, x, 1, &t, err)) == DS_OK &&
        (rc = cached_conv(r, &w->conv1, &t, err)) == DS_OK &&
        (rc = rms_norm(r, &w->norm2, &t, 1, &u, err)) == DS_OK &&
        (rc = cached_conv(r, &w->conv2, &u, err)) == DS_OK) {
        ds_binary_args add = {&u, h.data ? &h : x, DS_BINARY_ADD, &u};
        if ((rc = ds_binary(r->b, NULL, &add, err)) == DS_OK)
            replace(x, &u);
    }
    ds_tensor_free(&h);
    ds_tensor_free(&t);
    ds_tensor_free(&u);
    return rc;
}

static int residual_block(wan_run *r, size_t g, ds_tensor *x, ds_error *err)
{
    residual_weights w;
    int rc = module_begin(r, g, &w, sizeof w, err);
    if (rc != DS_OK)
        return rc;
    return module_end(r, g, residual_forward(r, &w, x, err), err);
}

int ds__wan_vae_attention(ds_backend *b, const ds_tensor *gamma,
                          const ds__linear_weights *to_qkv, const ds__linear_weights *proj,
                          const ds_tensor *x, ds_tensor *out, ds_error *err)
{
    ds_dtype dt = x->dtype;
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3], S = H * W;
    ds_tensor n = {0}, p = {0}, qkv = {0}, q = {0}, k = {0}, v = {0}, o = {0}, pr = {0},
              y = {0};
    int rc;
    ds_tensor w_qkv = ds_module_view(&to_qkv->weight, 2, SHAPE(3 * C, C));
    ds_tensor w_proj = ds_module_view(&proj->weight, 2, SHAPE(C, C));

    /* Channels last: [B, C, H, W] -> [B, H * W, C], the layout of the linears and attention. */
    ds_permute_args to_last = {&n, {0, 2, 3, 1}, &p};
    if ((rc = ds_tensor_alloc(b, dt, 4, x->shape, &n, err)) != DS_OK ||
        (rc = ds__wan_vae_rms_norm(b, gamma, x, 0, &n, err)) != DS_OK ||
        (rc = ds_tensor_alloc(b, dt, 4, SHAPE(B, H, W, C), &p, err)) != DS_OK ||
        (rc = ds_permute(b, NULL, &to_last, err)) != DS_OK)
        goto done;
    ds_tensor_free(&n);
    ds_tensor p3 = ds_module_view(&p, 3, SHAPE(B, S, C));
    ds_linear_args lin_qkv = {&p3, &w_qkv, &to_qkv->bias, 1.0f, DS_ACT_NONE, &qkv};
    if ((rc = ds_tensor_alloc(b, dt, 3, SHAPE(B, S, 3 * C), &qkv, err)) != DS_OK ||
        (rc = ds_linear(b, NULL, &lin_qkv, err)) != DS_OK)
        goto done;
    ds_tensor_free(&p);

    /* Upstream chunks the [.., S, 3C] projection into q, k, v along channels. */
    ds_tensor *parts[3] = {&q, &k, &v};
    for (int i = 0; i < 3; i++) {
        if ((rc = ds_tensor_alloc(b, dt, 4, SHAPE(B, S, 1, C), parts[i], err)) != DS_OK)
            goto done;
        ds_tensor part3 = ds_module_view(parts[i], 3, SHAPE(B, S, C));
        ds_slice_args s = {&qkv, 2, i * C, &part3};
        if ((rc = ds_slice(b, NULL, &s, err)) != DS_OK)
            goto done;
    }
    ds_tensor_free(&qkv);
    ds_attention_args at = {&q, &k, &v, NULL, 1.0f / sqrtf((float)C), 0, &o};
    if ((rc = ds_tensor_alloc(b, dt, 4, SHAPE(B, S, 1, C), &o, err)) != DS_OK ||
        (rc = ds_attention(b, NULL, &at, err)) != DS_OK)
        goto done;
    ds_tensor_free(&q);
    ds_tensor_free(&k);
    ds_tensor_free(&v);

    ds_tensor o3 = ds_module_view(&o, 3, SHAPE(B, S, C));
    ds_linear_args lin_proj = {&o3, &w_proj, &proj->bias, 1.0f, DS_ACT_NONE, &pr};
    if ((rc = ds_tensor_alloc(b, dt, 3, SHAPE(B, S, C), &pr, err)) != DS_OK ||
        (rc = ds_linear(b, NULL, &lin_proj, err)) != DS_OK)
        goto done;
    ds_tensor_free(&o);
    ds_tensor pr4 = ds_module_view(&pr, 4, SHAPE(B, H, W, C));
    ds_permute_args to_first = {&pr4, {0, 3, 1, 2}, &y};
    ds_binary_args add = {&y, x, DS_BINARY_ADD, &y};
    if ((rc = ds_tensor_alloc(b, dt, 4, x->shape, &y, err)) != DS_OK ||
        (rc = ds_permute(b, NULL, &to_first, err)) != DS_OK ||
        (rc = ds_binary(b, NULL, &add, err)) != DS_OK)
        goto done;
    *out = y;
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

/* AttentionBlock: the frames of x [B, C, T, H, W] as [B * T, C, H, W] through the attention. */
static int attention_forward(wan_run *r, const attention_weights *w, ds_tensor *x,
                             ds_error *err)
{
    ds_tensor f = {0}, y = {0}, back = {0};
    int rc;
    if ((rc = to_frames(r, x, &f, err)) == DS_OK &&
        (rc = ds__wan_vae_attention(r->b, &w->norm, &w->to_qkv, &w->proj, &f, &y, err)) ==
            DS_OK &&
        (rc = from_frames(r, &y, x->shape[2], &back, err)) == DS_OK)
        replace(x, &back);
    ds_tensor_free(&f);
    ds_tensor_free(&y);
    ds_tensor_free(&back);
    return rc;
}

static int attention_block(wan_run *r, size_t g, ds_tensor *x, ds_error *err)
{
    attention_weights w;
    int rc = module_begin(r, g, &w, sizeof w, err);
    if (rc != DS_OK)
        return rc;
    return module_end(r, g, attention_forward(r, &w, x, err), err);
}

/* Resample.resample on every frame: upsample (nearest-exact x2, then the 3x3 Conv2d halving
 * the channels) or downsample (ZeroPad2d((0, 1, 0, 1)), then the 3x3 stride-2 Conv2d). */
static int resample_frames(wan_run *r, const ds__linear_weights *w, int up, ds_tensor *x,
                           ds_error *err)
{
    static const int up_pad[4] = {1, 1, 1, 1}, down_pad[4] = {0, 1, 0, 1};
    int64_t T = x->shape[2];
    ds_tensor f = {0}, u = {0}, y = {0}, back = {0};
    int rc = to_frames(r, x, &f, err);
    const ds_tensor *in = &f;
    if (rc == DS_OK && up) {
        const int64_t *s = f.shape;
        ds_upsample_args a = {&f, &u};
        if ((rc = alloc_shape(r, 4, SHAPE(s[0], s[1], 2 * s[2], 2 * s[3]), &u, err)) == DS_OK)
            rc = ds_upsample_nearest2x(r->b, NULL, &a, err);
        in = &u;
    }
    if (rc == DS_OK) {
        const int *pad = up ? up_pad : down_pad;
        int stride = up ? 1 : 2;
        const int64_t *s = in->shape, *ks = w->weight.shape;
        int64_t oh = (s[2] + pad[0] + pad[1] - ks[2]) / stride + 1;
        int64_t ow = (s[3] + pad[2] + pad[3] - ks[3]) / stride + 1;
        ds_conv2d_args a = {in, &w->weight, &w->bias, {pad[0], pad[1], pad[2], pad[3]},
                            {stride, stride}, &y};
        if ((rc = alloc_shape(r, 4, SHAPE(s[0], ks[0], oh, ow), &y, err)) == DS_OK &&
            (rc = ds_conv2d(r->b, NULL, &a, err)) == DS_OK &&
            (rc = from_frames(r, &y, T, &back, err)) == DS_OK)
            replace(x, &back);
    }
    ds_tensor_free(&f);
    ds_tensor_free(&u);
    ds_tensor_free(&y);
    ds_tensor_free(&back);
    return rc;
}

/* upsample3d's time_conv: from the second chunk on, the frames doubled (x [B, 2C, T, H, W]
 * with frame 2t from the first C channels of t and 2t + 1 from the others). */
static int upsample_time(wan_run *r, const resample_weights *w, ds_tensor *x, ds_error *err)
{
    if (r->idx >= CACHES_MAX)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: more than %d cached convs", OWNER,
                            CACHES_MAX);
    feat_cache *c = &r->cache[r->idx++];
    if (!c->x.data && !c->rep) {
        c->rep = 1;
        return DS_OK;
    }
    ds_tensor next = {0}, y = {0}, zeros = {0}, last = {0}, out = {0};
    int64_t t = x->shape[2];
    int rc;
    if (t < CACHE_T && c->rep) {
        /* The "Rep" marker: zeros stand in front of the single frame. */
        if ((rc = frames(r, x, t - 1, 1, &last, err)) == DS_OK &&
            (rc = alloc_like(r, &last, &zeros, err)) == DS_OK) {
            ds_scale_args zero = {&last, 0.0f, 0.0f, &zeros};
            if ((rc = ds_scale(r->b, NULL, &zero, err)) == DS_OK)
                rc = cat_time(r, &zeros, &last, &next, err);
        }
    } else {
        rc = next_cache(r, x, c->rep ? NULL : &c->x, &next, err);
    }
    if (rc == DS_OK)
        rc = causal_conv(r, &w->time_conv, x, c->rep ? NULL : &c->x, UNIT_STRIDE, &y, err);
    if (rc == DS_OK) {
        const int64_t *s = y.shape;
        int64_t C = s[1] / 2, hw = s[3] * s[4];
        ds_tensor v = ds_module_view(&y, 5, SHAPE(s[0], 2, C, s[2], hw));
        ds_permute_args p = {&v, {0, 2, 3, 1, 4}, &out};
        if ((rc = alloc_shape(r, 5, SHAPE(s[0], C, s[2], 2, hw), &out, err)) == DS_OK &&
            (rc = ds_permute(r->b, NULL, &p, err)) == DS_OK) {
            out = ds_module_view(&out, 5, SHAPE(s[0], C, 2 * s[2], s[3], s[4]));
            replace(x, &out);
            replace(&c->x, &next);
            c->rep = 0;
        }
    }
    ds_tensor_free(&next);
    ds_tensor_free(&y);
    ds_tensor_free(&zeros);
    ds_tensor_free(&last);
    ds_tensor_free(&out);
    return rc;
}

/* downsample3d's time_conv: the first chunk's frames kept as the cache; later chunks convolved
 * (kernel 3, stride 2, no padding) behind the cache's last frame, halving the frames. */
static int downsample_time(wan_run *r, const resample_weights *w, ds_tensor *x, ds_error *err)
{
    if (r->idx >= CACHES_MAX)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: more than %d cached convs", OWNER,
                            CACHES_MAX);
    feat_cache *c = &r->cache[r->idx++];
    ds_tensor next = {0}, prev = {0}, joined = {0}, head = {0}, rest = {0}, y = {0};
    int rc;
    if (!c->x.data) {
        if ((rc = frames(r, x, 0, x->shape[2], &next, err)) == DS_OK)
            replace(&c->x, &next);
        return rc;
    }
    int64_t t = x->shape[2];
    if (t < 2)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: a temporal downsampler got a chunk of %" PRId64 " frame(s), "
                            "expected at least 2", r->phase, t);
    /* The kernel pads the front with its cache: two frames of cat(cache[-1:], x) as the cache
     * leave no zeros, the stride-2 windows where upstream's unpadded conv puts them. */
    static const int stride[3] = {2, 1, 1};
    if ((rc = frames(r, x, t - 1, 1, &next, err)) == DS_OK &&
        (rc = frames(r, &c->x, c->x.shape[2] - 1, 1, &prev, err)) == DS_OK &&
        (rc = cat_time(r, &prev, x, &joined, err)) == DS_OK &&
        (rc = frames(r, &joined, 0, 2, &head, err)) == DS_OK &&
        (rc = frames(r, &joined, 2, t - 1, &rest, err)) == DS_OK &&
        (rc = causal_conv(r, &w->time_conv, &rest, &head, stride, &y, err)) == DS_OK) {
        replace(x, &y);
        replace(&c->x, &next);
    }
    ds_tensor_free(&next);
    ds_tensor_free(&prev);
    ds_tensor_free(&joined);
    ds_tensor_free(&head);
    ds_tensor_free(&rest);
    ds_tensor_free(&y);
    return rc;
}

static int resample(wan_run *r, size_t g, ds_tensor *x, ds_error *err)
{
    resample_weights w;
    int rc = module_begin(r, g, &w, sizeof w, err);
    if (rc != DS_OK)
        return rc;
    int up = r->v->kinds[g] == BLOCK_UPSAMPLE, temporal = w.time_conv.weight.data != NULL;
    if (up) {
        if (temporal)
            rc = upsample_time(r, &w, x, err);
        if (rc == DS_OK)
            rc = resample_frames(r, &w.resample, 1, x, err);
    } else {
        rc = resample_frames(r, &w.resample, 0, x, err);
        if (rc == DS_OK && temporal)
            rc = downsample_time(r, &w, x, err);
    }
    return module_end(r, g, rc, err);
}

/* A CausalConv3d group run with the cache (Encoder3d / Decoder3d.conv1). */
static int conv_block(wan_run *r, size_t g, ds_tensor *x, ds_error *err)
{
    ds__linear_weights w;
    int rc = module_begin(r, g, &w, sizeof w, err);
    if (rc != DS_OK)
        return rc;
    return module_end(r, g, cached_conv(r, &w, x, err), err);
}

/* head: RMS_norm, SiLU, the CausalConv3d with the cache. */
static int head(wan_run *r, size_t g, ds_tensor *x, ds_error *err)
{
    head_weights w;
    ds_tensor t = {0};
    int rc = module_begin(r, g, &w, sizeof w, err);
    if (rc != DS_OK)
        return rc;
    if ((rc = rms_norm(r, &w.norm, x, 1, &t, err)) == DS_OK &&
        (rc = cached_conv(r, &w.conv, &t, err)) == DS_OK)
        replace(x, &t);
    ds_tensor_free(&t);
    return module_end(r, g, rc, err);
}

static int middle(wan_run *r, size_t first, ds_tensor *x, ds_error *err)
{
    int rc;
    if ((rc = residual_block(r, first, x, err)) != DS_OK ||
        (rc = attention_block(r, first + 1, x, err)) != DS_OK ||
        (rc = residual_block(r, first + 2, x, err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* One group of Encoder3d.downsamples / Decoder3d.upsamples, told apart by class as upstream's
 * Sequential calls each. */
static int block(wan_run *r, size_t g, ds_tensor *x, ds_error *err)
{
    switch (r->v->kinds[g]) {
    case BLOCK_RESIDUAL:
        return residual_block(r, g, x, err);
    case BLOCK_ATTENTION:
        return attention_block(r, g, x, err);
    default:
        return resample(r, g, x, err);
    }
}

/* Encoder3d.forward on one chunk with the cache. */
static int encoder3d(wan_run *r, ds_tensor *x, ds_error *err)
{
    const wan_modules *v = r->v;
    r->idx = 0;
    int rc = conv_block(r, v->enc_conv1, x, err);
    for (size_t g = v->enc_down; rc == DS_OK && g < v->enc_down_end; g++)
        rc = block(r, g, x, err);
    if (rc == DS_OK)
        rc = middle(r, v->enc_down_end, x, err);
    if (rc == DS_OK)
        rc = head(r, v->enc_head, x, err);
    return rc;
}

/* Decoder3d.forward on one latent frame with the cache. */
static int decoder3d(wan_run *r, ds_tensor *x, ds_error *err)
{
    const wan_modules *v = r->v;
    r->idx = 0;
    int rc = conv_block(r, v->dec_conv1, x, err);
    if (rc == DS_OK)
        rc = middle(r, v->dec_conv1 + 1, x, err);
    for (size_t g = v->dec_up; rc == DS_OK && g < v->dec_up_end; g++)
        rc = block(r, g, x, err);
    if (rc == DS_OK)
        rc = head(r, v->dec_head, x, err);
    return rc;
}

/* The latent mean and 1 / std as [1, 16, 1, 1, 1] in the compute dtype: upstream builds them
 * in f32 (1 / std rounded there) and casts both to the input's dtype. */
static int latent_stats(wan_run *r, ds_tensor *mean, ds_tensor *inv_std, ds_error *err)
{
    float m[LATENT_CHANNELS], inv[LATENT_CHANNELS];
    uint16_t m16[LATENT_CHANNELS], inv16[LATENT_CHANNELS];
    for (int i = 0; i < LATENT_CHANNELS; i++) {
        m[i] = LATENT_MEAN[i];
        inv[i] = 1.0f / LATENT_STD[i];
        m16[i] = ds_f32_to_bf16(m[i]);
        inv16[i] = ds_f32_to_bf16(inv[i]);
    }
    int bf16 = r->dtype == DS_BF16, rc;
    const int64_t *shape = SHAPE(1, LATENT_CHANNELS, 1, 1, 1);
    if ((rc = alloc_shape(r, 5, shape, mean, err)) != DS_OK ||
        (rc = alloc_shape(r, 5, shape, inv_std, err)) != DS_OK ||
        (rc = ds_tensor_upload(mean, bf16 ? (const void *)m16 : m, NULL, err)) != DS_OK ||
        (rc = ds_tensor_upload(inv_std, bf16 ? (const void *)inv16 : inv, NULL, err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* VideoVAE_.decode: z / (1 / std) + mean, conv2, the decoder on each latent frame with the
 * cache, the frames joined; then single_decode's clamp to [-1, 1] when `clamp`. Into host
 * tensor out. */
static int decode_video(wan_run *r, const ds_tensor *z, int clamp, ds_tensor *out,
                        ds_error *err)
{
    const wan_modules *v = r->v;
    ds_tensor mean = {0}, inv_std = {0}, x = {0}, chunk = {0}, joined = {0}, conv = {0};
    ds__linear_weights w;
    int rc;
    clear_cache(r);
    if ((rc = latent_stats(r, &mean, &inv_std, err)) != DS_OK ||
        (rc = alloc_like(r, z, &x, err)) != DS_OK)
        goto done;
    ds_binary_args div = {z, &inv_std, DS_BINARY_DIV, &x};
    ds_binary_args add = {&x, &mean, DS_BINARY_ADD, &x};
    if ((rc = ds_binary(r->b, NULL, &div, err)) != DS_OK ||
        (rc = ds_binary(r->b, NULL, &add, err)) != DS_OK ||
        (rc = module_begin(r, v->conv2, &w, sizeof w, err)) != DS_OK)
        goto done;
    rc = module_end(r, v->conv2, causal_conv(r, &w, &x, NULL, UNIT_STRIDE, &conv, err), err);
    r->chunks = z->shape[2];
    for (int64_t i = 0; rc == DS_OK && i < r->chunks; i++) {
        if ((rc = ds_module_cancelled(r->ctx, r->phase, "latent frame", i, r->chunks, err)) !=
                DS_OK ||
            (rc = frames(r, &conv, i, 1, &chunk, err)) != DS_OK ||
            (rc = decoder3d(r, &chunk, err)) != DS_OK)
            break;
        if (!joined.data) {
            replace(&joined, &chunk);
        } else {
            ds_tensor both;
            if ((rc = cat_time(r, &joined, &chunk, &both, err)) != DS_OK)
                break;
            replace(&joined, &both);
            ds_tensor_free(&chunk);
        }
        if (!r->tiled)
            ds_module_progress(r->ctx, r->phase, i, r->chunks);
    }
    if (rc == DS_OK) {
        ds_clamp_args c = {&joined, -1.0f, 1.0f, &joined};
        if (!clamp || (rc = ds_clamp(r->b, NULL, &c, err)) == DS_OK)
            rc = ds_tensor_download(&joined, out->data, NULL, err);
    }
done:
    ds_tensor_free(&mean);
    ds_tensor_free(&inv_std);
    ds_tensor_free(&x);
    ds_tensor_free(&chunk);
    ds_tensor_free(&joined);
    ds_tensor_free(&conv);
    return rc;
}

/* VideoVAE_.encode: the encoder on frame 0, then on frames [1 + 4(i - 1), 1 + 4i), with the
 * cache, the chunks joined; conv1; the first z channels (mu), (mu - mean) * (1 / std). */
static int encode_video(wan_run *r, const ds_tensor *video, ds_tensor *out, ds_error *err)
{
    const wan_modules *v = r->v;
    ds_tensor mean = {0}, inv_std = {0}, chunk = {0}, joined = {0}, conv = {0}, mu = {0};
    ds__linear_weights w;
    int64_t t = video->shape[2];
    clear_cache(r);
    int rc = latent_stats(r, &mean, &inv_std, err);
    r->chunks = 1 + (t - 1) / 4;
    for (int64_t i = 0; rc == DS_OK && i < r->chunks; i++) {
        int64_t start = i == 0 ? 0 : 1 + 4 * (i - 1), n = i == 0 ? 1 : 4;
        if ((rc = ds_module_cancelled(r->ctx, r->phase, "chunk", i, r->chunks, err)) != DS_OK ||
            (rc = frames(r, video, start, n, &chunk, err)) != DS_OK ||
            (rc = encoder3d(r, &chunk, err)) != DS_OK)
            break;
        if (!joined.data) {
            replace(&joined, &chunk);
        } else {
            ds_tensor both;
            if ((rc = cat_time(r, &joined, &chunk, &both, err)) != DS_OK)
                break;
            replace(&joined, &both);
            ds_tensor_free(&chunk);
        }
        if (!r->tiled)
            ds_module_progress(r->ctx, r->phase, i, r->chunks);
    }
    if (rc == DS_OK && (rc = module_begin(r, v->conv1, &w, sizeof w, err)) == DS_OK)
        rc = module_end(r, v->conv1, causal_conv(r, &w, &joined, NULL, UNIT_STRIDE, &conv, err),
                        err);
    if (rc == DS_OK) {
        const int64_t *s = conv.shape;
        ds_slice_args first = {&conv, 1, 0, &mu};
        ds_binary_args sub = {&mu, &mean, DS_BINARY_SUB, &mu};
        ds_binary_args mul = {&mu, &inv_std, DS_BINARY_MUL, &mu};
        if ((rc = alloc_shape(r, 5, SHAPE(s[0], LATENT_CHANNELS, s[2], s[3], s[4]), &mu, err)) ==
                DS_OK &&
            (rc = ds_slice(r->b, NULL, &first, err)) == DS_OK &&
            (rc = ds_binary(r->b, NULL, &sub, err)) == DS_OK &&
            (rc = ds_binary(r->b, NULL, &mul, err)) == DS_OK)
            rc = ds_tensor_download(&mu, out->data, NULL, err);
    }
    ds_tensor_free(&mean);
    ds_tensor_free(&inv_std);
    ds_tensor_free(&chunk);
    ds_tensor_free(&joined);
    ds_tensor_free(&conv);
    ds_tensor_free(&mu);
    return rc;
}


/* ---- Spatial tiling (WanVideoVAE.tiled_decode / tiled_encode) ---- */

/* build_1d_mask: ones, ramps (k + 1) / border over the first and last `border` entries where
 * the tile does not touch the video's edge, the right ramp written last. */
static int mask_1d(int64_t length, int left_bound, int right_bound, int64_t border, float *m,
                   ds_error *err)
{
    for (int64_t i = 0; i < length; i++)
        m[i] = 1.0f;
    if ((!left_bound || !right_bound) && border > length)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "a tile of %" PRId64 " is narrower than its blend ramp of %" PRId64
                            " (tile size minus stride); upstream fails on it too",
                            length, border);
    for (int64_t k = 0; k < border && !left_bound; k++)
        m[k] = (float)(k + 1) / (float)border;
    for (int64_t k = 0; k < border && !right_bound; k++)
        m[length - 1 - k] = (float)(k + 1) / (float)border;
    return DS_OK;
}

/* Rounds v to dtype (upstream's tensors are in the video's dtype). */
static float to_dtype(ds_dtype d, float v)
{
    return d == DS_BF16 ? ds_bf16_to_f32(ds_f32_to_bf16(v)) : v;
}

/* Copies the [h0, h1) x [w0, w1) window of batch element b of host tensor `in` [B, C, T, H, W]
 * into host tensor `tile` [1, C, T, h1 - h0, w1 - w0]. */
static void copy_window(const ds_tensor *in, int64_t b, int64_t h0, int64_t w0,
                        const ds_tensor *tile)
{
    const int64_t *s = in->shape, *ts = tile->shape;
    size_t e = ds_dtype_size(in->dtype);
    const char *src = in->data;
    char *dst = tile->data;
    for (int64_t c = 0; c < s[1] * s[2]; c++)
        for (int64_t y = 0; y < ts[3]; y++) {
            const char *row = src + ((((size_t)b * (size_t)(s[1] * s[2]) + (size_t)c) *
                                          (size_t)s[3] + (size_t)(h0 + y)) * (size_t)s[4] +
                                     (size_t)w0) * e;
            memcpy(dst + (((size_t)c * (size_t)ts[3] + (size_t)y) * (size_t)ts[4]) * e, row,
                   (size_t)ts[4] * e);
        }
}

/* Upstream's tasks: tile origins every stride, those whose previous tile already reaches the
 * end left out. */
static int64_t tile_starts(int64_t length, int64_t size, int64_t stride, int64_t *starts)
{
    int64_t n = 0;
    for (int64_t p = 0; p < length; p += stride)
        if (!(p - stride >= 0 && p - stride + size >= length))
            starts[n++] = p;
    return n;
}

/* Tiled decode (sizes in latent units, the output blended in pixels) or encode (sizes given in
 * latent units, scaled to pixels as WanVideoVAE.encode scales them), batch element by batch
 * element: each tile through VideoVAE_.decode / .encode, weighted by its mask into values and
 * weight, then values / weight (and the clamp after decoding). */
static int tiled_forward(wan_run *r, int decode, const ds_wan_video_vae_tiling *tiling,
                         const ds_tensor *in, ds_tensor *out, ds_error *err)
{
    const int64_t f = 8;
    int64_t size_h = tiling->size_h, size_w = tiling->size_w;
    int64_t stride_h = tiling->stride_h, stride_w = tiling->stride_w;
    if (!decode) {
        size_h *= f, size_w *= f, stride_h *= f, stride_w *= f;
    }
    const int64_t *is = in->shape, *os = out->shape;
    int64_t H = is[3], W = is[4], OH = os[3], OW = os[4];
    int64_t plane = OH * OW, per_batch = os[1] * os[2] * plane;
    int64_t *hs = malloc((size_t)(H / stride_h + 2) * sizeof *hs);
    int64_t *ws = malloc((size_t)(W / stride_w + 2) * sizeof *ws);
    float *values = calloc((size_t)per_batch, sizeof *values);
    float *weight = calloc((size_t)plane, sizeof *weight);
    float *mh = malloc((size_t)OH * sizeof *mh), *mw = malloc((size_t)OW * sizeof *mw);
    ds_tensor tile_in = {0}, tile_out = {0}, dev = {0}, dev_copy = {0};
    int rc = DS_OK;
    if (!hs || !ws || !values || !weight || !mh || !mw) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory for the tiles",
                          r->phase);
        goto done;
    }
    int64_t nh = tile_starts(H, size_h, stride_h, hs), nw = tile_starts(W, size_w, stride_w, ws);
    int64_t border_h = decode ? (size_h - stride_h) * f : (size_h - stride_h) / f;
    int64_t border_w = decode ? (size_w - stride_w) * f : (size_w - stride_w) / f;
    ds_backend *host = r->b;
    if (!host->host_memory && (rc = ds_cpu_fallback_backend(&host, err)) != DS_OK)
        goto done;
    r->tiled = 1;
    for (int64_t b = 0; rc == DS_OK && b < is[0]; b++) {
        memset(values, 0, (size_t)per_batch * sizeof *values);
        memset(weight, 0, (size_t)plane * sizeof *weight);
        for (int64_t k = 0; rc == DS_OK && k < nh * nw; k++) {
            int64_t h = hs[k / nw], w = ws[k % nw];
            int64_t h1 = h + size_h < H ? h + size_h : H, w1 = w + size_w < W ? w + size_w : W;
            int64_t th = decode ? (h1 - h) * f : (h1 - h) / f;
            int64_t tw = decode ? (w1 - w) * f : (w1 - w) / f;
            int64_t oh = decode ? h * f : h / f, ow = decode ? w * f : w / f;
            if ((rc = ds_module_cancelled(r->ctx, r->phase, "tile", b * nh * nw + k,
                                          is[0] * nh * nw, err)) != DS_OK ||
                (rc = ds_tensor_alloc(host, in->dtype, 5,
                                      SHAPE(1, is[1], is[2], h1 - h, w1 - w), &tile_in, err)) !=
                    DS_OK ||
                (rc = ds_tensor_alloc(host, in->dtype, 5, SHAPE(1, os[1], os[2], th, tw),
                                      &tile_out, err)) != DS_OK)
                break;
            copy_window(in, b, h, w, &tile_in);
            if ((rc = ds_module_input(r->b, &tile_in, &dev_copy, &dev, err)) != DS_OK ||
                (rc = decode ? decode_video(r, &dev, 0, &tile_out, err)
                             : encode_video(r, &dev, &tile_out, err)) != DS_OK ||
                (rc = mask_1d(th, h == 0, h + size_h >= H, border_h, mh, err)) != DS_OK ||
                (rc = mask_1d(tw, w == 0, w + size_w >= W, border_w, mw, err)) != DS_OK)
                break;
            /* values[.., window] += tile * mask; weight[.., window] += mask, in the dtype. */
            for (int64_t y = 0; y < th; y++)
                for (int64_t x = 0; x < tw; x++) {
                    float m = to_dtype(in->dtype, mh[y] < mw[x] ? mh[y] : mw[x]);
                    int64_t at = (oh + y) * OW + ow + x;
                    weight[at] = to_dtype(in->dtype, weight[at] + m);
                    for (int64_t ct = 0; ct < os[1] * os[2]; ct++) {
                        float v = (float)ds_load_f64(tile_out.data, in->dtype,
                                                     (size_t)((ct * th + y) * tw + x));
                        float *acc = &values[ct * plane + at];
                        *acc = to_dtype(in->dtype, *acc + to_dtype(in->dtype, v * m));
                    }
                }
            ds_tensor_free(&tile_in);
            ds_tensor_free(&tile_out);
            ds_tensor_free(&dev_copy);
            ds_module_progress(r->ctx, r->phase, b * nh * nw + k, is[0] * nh * nw);
        }
        for (int64_t i = 0; rc == DS_OK && i < per_batch; i++) {
            float v = to_dtype(in->dtype, values[i] / weight[i % plane]);
            if (decode)
                v = v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v;
            ds_store_f64(out->data, out->dtype, (size_t)(b * per_batch + i), v);
        }
    }
done:
    ds_tensor_free(&tile_in);
    ds_tensor_free(&tile_out);
    ds_tensor_free(&dev_copy);
    free(hs);
    free(ws);
    free(values);
    free(weight);
    free(mh);
    free(mw);
    return rc;
}

/* ---- Entry points and steps ---- */

static int float_dtype(ds_dtype d) { return d == DS_F32 || d == DS_BF16; }

#define LATENTS_EXPECTED "[B, 16, T, h, w] f32 or bf16"
#define VIDEO_EXPECTED                                                                         \
    "[B, 3, 4k + 1, H, W] f32 or bf16 with H and W multiples of 8"

/* The output shape for `in`: decode [B, 3, 4(T - 1) + 1, 8h, 8w], encode [B, 16, k + 1, H/8,
 * W/8]; INVALID_ARGUMENT when `in` is not an input of that direction. */
static int output_shape(int decode, const ds_tensor *in, int64_t shape[5], ds_error *err)
{
    const char *phase = decode ? "decode" : "encode";
    const int64_t *s = in->shape;
    if (decode) {
        if (!float_dtype(in->dtype) || in->ndim != 5 || s[0] < 1 || s[1] != LATENT_CHANNELS ||
            s[2] < 1 || s[3] < 1 || s[4] < 1)
            return ds_module_bad_tensor(phase, "input", "latents", in, LATENTS_EXPECTED, err);
        int64_t out[5] = {s[0], 3, 4 * (s[2] - 1) + 1, 8 * s[3], 8 * s[4]};
        memcpy(shape, out, sizeof out);
        return DS_OK;
    }
    if (!float_dtype(in->dtype) || in->ndim != 5 || s[0] < 1 || s[1] != 3 || s[2] < 1 ||
        (s[2] - 1) % 4 || s[3] < 8 || s[4] < 8 || s[3] % 8 || s[4] % 8)
        return ds_module_bad_tensor(phase, "input", "video", in, VIDEO_EXPECTED, err);
    int64_t out[5] = {s[0], LATENT_CHANNELS, 1 + (s[2] - 1) / 4, s[3] / 8, s[4] / 8};
    memcpy(shape, out, sizeof out);
    return DS_OK;
}

static int vae_forward(const ds_loaded_model *m, const ds_step_context *ctx, int decode,
                       const ds_wan_video_vae_tiling *tiling, const ds_tensor *in,
                       ds_tensor *out, ds_error *err)
{
    const char *phase = decode ? "decode" : "encode";
    if (!m || !ctx || !ctx->backend || !in || !out || !in->data)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: the model, a backend, the input and the output are required",
                            phase);
    ds_kwargs *kwargs = NULL;
    int64_t z_dim, want[5];
    int rc = ds_kwargs_parse(m->extra_kwargs_json, CLASS_NAME, &kwargs, err);
    if (rc == DS_OK)
        rc = read_kwargs(kwargs, &z_dim, err);
    ds_kwargs_free(kwargs);
    if (rc != DS_OK)
        return ds_error_prefix(err, "%s: ", phase);
    if (z_dim != LATENT_CHANNELS)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "%s: the model has z_dim %" PRId64 "; upstream's latent mean and "
                            "std have %d channels", phase, z_dim, LATENT_CHANNELS);
    if ((rc = output_shape(decode, in, want, err)) != DS_OK)
        return rc;
    if (tiling && (tiling->size_h < 1 || tiling->size_w < 1 || tiling->stride_h < 1 ||
                   tiling->stride_w < 1 || tiling->stride_h > tiling->size_h ||
                   tiling->stride_w > tiling->size_w))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: tile %" PRId64 " x %" PRId64 ", stride %" PRId64 " x %" PRId64
                            ": expected sizes >= 1 and strides in 1..size", phase,
                            tiling->size_h, tiling->size_w, tiling->stride_h, tiling->stride_w);
    ds_tensor want_t = {.dtype = in->dtype, .ndim = 5};
    memcpy(want_t.shape, want, sizeof want);
    if (out->dtype != in->dtype || !ds_tensor_same_shape(out, &want_t) || !out->data) {
        char expected[160], got[128];
        snprintf(expected, sizeof expected, "%s (from the input: its batch and dtype)",
                 ds_tensor_describe(&want_t, got, sizeof got));
        return ds_module_bad_tensor(phase, "output", decode ? "video" : "latents", out,
                                    expected, err);
    }

    wan_modules *v = malloc(sizeof *v);
    wan_run *r = calloc(1, sizeof *r);
    ds_tensor upload = {0}, input;
    if (!v || !r) {
        free(v);
        free(r);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", phase);
    }
    *r = (wan_run){.v = v, .ctx = ctx, .b = ctx->backend, .dtype = in->dtype, .phase = phase};
    if ((rc = modules_build(z_dim, v, err)) != DS_OK) {
        free(v);
        free(r);
        return ds_error_prefix(err, "%s: ", phase);
    }
    size_t first = decode ? 0 : v->decode_units;
    size_t units = decode ? v->decode_units : v->order_count - v->decode_units;
    if ((rc = ds_module_open_ordered(&r->run, &v->model, v->order, v->order_count, m, r->b,
                                     ctx->vram, 0, phase, err)) != DS_OK)
        goto done;
    if (ctx->vram && (rc = ds_module_plan_range(&r->run, first, units, phase, err)) != DS_OK) {
        ds_error_prefix(err, "%s: registering the weights with the VRAM manager: ", phase);
        goto done;
    }
    if (tiling)
        rc = tiled_forward(r, decode, tiling, in, out, err);
    else if ((rc = ds_module_input(r->b, in, &upload, &input, err)) == DS_OK)
        rc = decode ? decode_video(r, &input, 1, out, err) : encode_video(r, &input, out, err);
done:
    ds_module_close(&r->run);
    ds_tensor_free(&upload);
    clear_cache(r);
    free(v);
    free(r);
    return rc;
}

int ds_wan_video_vae_decode(const ds_loaded_model *m, const ds_step_context *ctx,
                            const ds_wan_video_vae_tiling *tiling, const ds_tensor *latents,
                            ds_tensor *video_out, ds_error *err)
{
    return vae_forward(m, ctx, 1, tiling, latents, video_out, err);
}

int ds_wan_video_vae_encode(const ds_loaded_model *m, const ds_step_context *ctx,
                            const ds_wan_video_vae_tiling *tiling, const ds_tensor *video,
                            ds_tensor *latents_out, ds_error *err)
{
    return vae_forward(m, ctx, 0, tiling, video, latents_out, err);
}

static int step_run(const ds_loaded_model *m, const ds_step_context *ctx, const ds_step_io *in,
                    ds_step_io *out, int decode, ds_error *err)
{
    static const ds_dtype float_dtypes[] = {DS_F32, DS_BF16};
    const char *phase = decode ? "decode" : "encode";
    const char *in_name = decode ? "latents" : "video", *out_name = decode ? "video" : "latents";
    const char *const known[] = {in_name, "tiled", NULL};
    const ds_tensor *x;
    int64_t shape[5];
    int rc;
    if ((rc = ds_step_io_check_names(in, phase, known, err)) != DS_OK ||
        (rc = ds_step_io_require(in, phase, in_name, 0, float_dtypes, 2, 5,
                                 SHAPE(-1, decode ? LATENT_CHANNELS : 3, -1, -1, -1),
                                 decode ? LATENTS_EXPECTED : VIDEO_EXPECTED, &x, err)) !=
            DS_OK ||
        (rc = output_shape(decode, x, shape, err)) != DS_OK)
        return rc;
    ds_backend *cpu = ctx->backend;
    ds_tensor *y;
    if (!cpu->host_memory && (rc = ds_cpu_fallback_backend(&cpu, err)) != DS_OK)
        return rc;
    /* tiled=true: the Wan pipeline's tile (30, 52) and stride (15, 26) in latent units. */
    const ds_step_param *tiled = ds_step_io_param(in, "tiled");
    static const ds_wan_video_vae_tiling pipeline_tiles = {30, 52, 15, 26};
    if (tiled && strcmp(tiled->text, "true") != 0 && strcmp(tiled->text, "false") != 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: parameter \"tiled\" is \"%s\", expected true or false", phase,
                            tiled->text);
    if ((rc = ds_step_io_new_tensor(out, cpu, out_name, x->dtype, 5, shape, &y, err)) != DS_OK)
        return rc;
    return vae_forward(m, ctx, decode, tiled && tiled->number != 0 ? &pipeline_tiles : NULL, x,
                       y, err);
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
        .usage = "decode: latents [B, 16, T, h, w] (f32 or bf16; the compute dtype) -> video "
                 "[B, 3, 4(T-1)+1, 8h, 8w] in latents' dtype, clamped to [-1, 1]; tiled (true|false, "
                 "default false): tiles 30x52, stride 15x26 in latent units",
        .run = decode_step,
    },
    {
        .name = "encode",
        .usage = "encode: video [B, 3, 4k+1, H, W] (f32 or bf16 in [-1, 1], H and W multiples "
                 "of 8) -> latents [B, 16, k+1, H/8, W/8] in video's dtype; tiled (true|false, default "
                 "false): tiles 30x52, stride 15x26 in latent units",
        .run = encode_step,
    },
};

DS_MODEL_CLASS(ds__wan_video_vae_class, CLASS_NAME, declare_parameters, steps);
