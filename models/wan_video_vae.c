/* diffsynth/models/wan_video_vae.py: WanVideoVAE, the Wan2.1 video VAE (z 16, 8x spatial, 4x
 * temporal; VideoVAE_ under `model.`), and WanVideoVAE38, Wan2.2's (z 48, 16x spatial:
 * VideoVAE38_ patchifies by 2 around Encoder3d_38 / Decoder3d_38, whose Down_ / Up_ResidualBlock
 * stages add AvgDown3D / DupUp3D shortcuts). Decode and encode of videos as upstream runs them:
 * causal 3-D convolutions with the two-frame feature cache, the encoder on the first frame
 * alone and then on chunks of 4, the decoder on one latent frame at a time, temporal
 * up/downsampling by the resamplers' time_conv, the per-channel latent mean and std, and
 * WanVideoVAE's spatial tiling.
 *
 * One function per upstream module; every module instance is declared once through
 * models/vae_modules.h with its own prefix and widths. */
#include "models/wan_video_vae.h"

#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/memory_estimate.h"
#include "models/model_class.h"
#include "models/module.h"
#include "models/param_tree.h"
#include "models/vae_modules.h"

#define CACHE_T 2       /* frames a causal conv keeps from the chunk before */

/* VideoVAE_'s defaults, which neither class changes. */
#define LEVELS 4
#define RES_BLOCKS 2
static const int64_t DIM_MULT[LEVELS] = {1, 2, 4, 4};
static const int TEMPORAL_DOWN[LEVELS - 1] = {0, 1, 1};

/* WanVideoVAE38.mean and std. */
static const float MEAN_38[48] = {
    -0.2289f, -0.0052f, -0.1323f, -0.2339f, -0.2799f, 0.0174f,  0.1838f,  0.1557f,
    -0.1382f, 0.0542f,  0.2813f,  0.0891f,  0.1570f,  -0.0098f, 0.0375f,  -0.1825f,
    -0.2246f, -0.1207f, -0.0698f, 0.5109f,  0.2665f,  -0.2108f, -0.2158f, 0.2502f,
    -0.2055f, -0.0322f, 0.1109f,  0.1567f,  -0.0729f, 0.0899f,  -0.2799f, -0.1230f,
    -0.0313f, -0.1649f, 0.0117f,  0.0723f,  -0.2839f, -0.2083f, -0.0520f, 0.3748f,
    0.0152f,  0.1957f,  0.1433f,  -0.2944f, 0.3573f,  -0.0548f, -0.1681f, -0.0667f,
};
static const float STD_38[48] = {
    0.4765f, 1.0364f, 0.4514f, 1.1677f, 0.5313f, 0.4990f, 0.4818f, 0.5013f,
    0.8158f, 1.0344f, 0.5894f, 1.0901f, 0.6885f, 0.6165f, 0.8454f, 0.4978f,
    0.5759f, 0.3523f, 0.7135f, 0.6804f, 0.5833f, 1.4146f, 0.8986f, 0.5659f,
    0.7069f, 0.5338f, 0.4889f, 0.4917f, 0.4069f, 0.4999f, 0.6866f, 0.4093f,
    0.5709f, 0.6065f, 0.6415f, 0.4944f, 0.5726f, 1.2042f, 0.5458f, 1.6887f,
    0.3971f, 1.0600f, 0.3943f, 0.5537f, 0.5444f, 0.4089f, 0.7468f, 0.7744f,
};

/* What tells the two classes apart. */
typedef struct wan_variant {
    const char *class_name, *owner;
    int64_t z_dim, dim, dec_dim; /* the defaults; dec_dim 0: dim */
    int has_dim_kwarg;           /* WanVideoVAE38(z_dim, dim); WanVideoVAE(z_dim) */
    int patch;                   /* patchify's patch size (1: none) */
    /* Encoder3d_38 / Decoder3d_38: Down_ResidualBlock and Up_ResidualBlock stages, each with
     * an AvgDown3D / DupUp3D shortcut, resamplers keeping the width. */
    int stages;
    const float *mean, *std; /* z_dim entries */
} wan_variant;

static const wan_variant VAE21 = {"diffsynth.models.wan_video_vae.WanVideoVAE", "WanVideoVAE",
                                  16, 96, 0, 0, 1, 0, ds__vae_wan21_mean,
                                  ds__vae_wan21_std};
static const wan_variant VAE38 = {"diffsynth.models.wan_video_vae.WanVideoVAE38",
                                  "WanVideoVAE38", 48, 160, 256, 1, 2, 1, MEAN_38, STD_38};

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}

/* ---- The modules ---- */

/* Wan's parameter names: the Sequential indices of ResidualBlock.residual and the heads. */
static const ds__vae_names WAN_NAMES = {
    "residual.0.gamma", "residual.2", "residual.3.gamma", "residual.6", "shortcut",
    "head.0.gamma",     "head.2",     "head",             0,
};

#define GROUPS_MAX 64

/* A Down_ResidualBlock or Up_ResidualBlock of VAE38 (or a level of VAE 2.1's flat
 * downsamples / upsamples): its groups [first, end), and its shortcut's AvgDown3D / DupUp3D(in,
 * out, factor_t, factor_s) (none in VAE 2.1 or an Up block without up_flag). */
typedef struct stage {
    size_t first, end;
    int64_t in, out;
    int factor_t, factor_s, shortcut;
} stage;

/* The instances in upstream's registration order (encoder, conv1, conv2, decoder) and where
 * each part starts; the units in the order the forwards run them: decode's, then encode's. */
typedef struct wan_modules {
    ds__vae_modules m;
    const wan_variant *var;
    int64_t z_dim;
    size_t enc_conv1, enc_mid, enc_head, conv1, conv2, dec_conv1, dec_mid, dec_head;
    stage enc_stages[LEVELS], dec_stages[LEVELS];
} wan_modules;

/* Encoder3d.middle / Decoder3d.middle: ResidualBlock, AttentionBlock, ResidualBlock. */
static int add_middle(wan_modules *v, const char *part, int64_t dim, size_t *index,
                      ds_error *err)
{
    int rc;
    if ((rc = ds__vae_add_residual(&v->m, dim, dim, index, err, "model.%s.middle.0.", part)) !=
            DS_OK ||
        (rc = ds__vae_add_attention(&v->m, dim, NULL, err, "model.%s.middle.1.", part)) !=
            DS_OK ||
        (rc = ds__vae_add_residual(&v->m, dim, dim, NULL, err, "model.%s.middle.2.", part)) !=
            DS_OK)
        return rc;
    return DS_OK;
}

/* Level i of Encoder3d's downsamples or Decoder3d's upsamples (`part`): `blocks` residual
 * blocks from in to out, then the resampler (`resample` 0: none). Encoder3d numbers them on
 * across levels ("downsamples.<k>", k from *k); Encoder3d_38 nests a stage
 * ("downsamples.<i>.downsamples.<j>"), whose resampler keeps the width; Decoder3d's upsampler
 * halves it. */
static int add_level(wan_modules *v, const char *part, int i, int64_t in, int64_t out,
                     int blocks, ds__vae_kind resample, int temporal, int64_t *k,
                     ds_error *err)
{
    char name[64];
    int64_t j = 0, *n = k;
    if (v->var->stages) {
        snprintf(name, sizeof name, "%s.%d.%s", part, i, strchr(part, '.') + 1);
        n = &j;
    } else {
        snprintf(name, sizeof name, "%s", part);
    }
    int rc = DS_OK;
    for (int r = 0; rc == DS_OK && r < blocks; r++, in = out)
        rc = ds__vae_add_residual(&v->m, in, out, NULL, err, "model.%s.%" PRId64 ".", name,
                                  (*n)++);
    int up = resample == DS__VAE_UPSAMPLE;
    int64_t conv_out = up && !v->var->stages ? out / 2 : out;
    int64_t time = temporal ? (up ? 2 * out : out) : 0;
    if (rc == DS_OK && resample)
        rc = ds__vae_add_resample(&v->m, resample, out, conv_out, time, NULL, err,
                                  "model.%s.%" PRId64 ".", name, (*n)++);
    return rc;
}

/* Encoder3d(dim, 2 * z_dim, [1, 2, 4, 4], 2 res blocks, no attention scales) or
 * Encoder3d_38 (its input the 12 channels of the patchified video). */
static int add_encoder(wan_modules *v, int64_t dim, ds_error *err)
{
    int64_t p = v->var->patch, dims[LEVELS + 1] = {dim}, k = 0;
    for (int i = 0; i < LEVELS; i++)
        dims[i + 1] = dim * DIM_MULT[i];
    int rc = ds__vae_add_conv(&v->m, "conv1", dims[0], 3 * p * p, 3, &v->enc_conv1, err,
                              "model.encoder.");
    for (int i = 0; rc == DS_OK && i < LEVELS; i++) {
        int down = i != LEVELS - 1, temporal = down && TEMPORAL_DOWN[i];
        stage *st = &v->enc_stages[i];
        *st = (stage){v->m.count, 0, dims[i], dims[i + 1], temporal ? 2 : 1, down ? 2 : 1,
                      v->var->stages};
        rc = add_level(v, "encoder.downsamples", i, dims[i], dims[i + 1], RES_BLOCKS,
                       down ? DS__VAE_DOWNSAMPLE : 0, temporal, &k, err);
        st->end = v->m.count;
    }
    if (rc == DS_OK)
        rc = add_middle(v, "encoder", dims[LEVELS], &v->enc_mid, err);
    if (rc == DS_OK)
        rc = ds__vae_add_head(&v->m, dims[LEVELS], 2 * v->z_dim, &v->enc_head, err,
                              "model.encoder.");
    return rc;
}

/* Decoder3d(dim, z_dim, [1, 2, 4, 4], 2 res blocks, temperal_upsample [True, True, False]),
 * whose up blocks after the first take the halved width of the upsampler before them, or
 * Decoder3d_38 (no halving; its output the 12 channels unpatchify takes). */
static int add_decoder(wan_modules *v, int64_t dim, ds_error *err)
{
    int64_t p = v->var->patch, dims[LEVELS + 1] = {dim * DIM_MULT[LEVELS - 1]}, k = 0;
    for (int i = 0; i < LEVELS; i++)
        dims[i + 1] = dim * DIM_MULT[LEVELS - 1 - i];
    int rc = ds__vae_add_conv(&v->m, "conv1", dims[0], v->z_dim, 3, &v->dec_conv1, err,
                              "model.decoder.");
    if (rc == DS_OK)
        rc = add_middle(v, "decoder", dims[0], &v->dec_mid, err);
    for (int i = 0; rc == DS_OK && i < LEVELS; i++) {
        int up = i != LEVELS - 1, temporal = up && TEMPORAL_DOWN[LEVELS - 2 - i];
        int64_t in = i > 0 && !v->var->stages ? dims[i] / 2 : dims[i];
        stage *st = &v->dec_stages[i];
        *st = (stage){v->m.count, 0, in, dims[i + 1], temporal ? 2 : 1, up ? 2 : 1,
                      up && v->var->stages};
        rc = add_level(v, "decoder.upsamples", i, in, dims[i + 1], RES_BLOCKS + 1,
                       up ? DS__VAE_UPSAMPLE : 0, temporal, &k, err);
        st->end = v->m.count;
    }
    if (rc == DS_OK)
        rc = ds__vae_add_head(&v->m, dims[LEVELS], 3 * p * p, &v->dec_head, err,
                              "model.decoder.");
    return rc;
}

/* The instances for one class and kwargs; *v is freed by ds__vae_modules_free (also on
 * failure, where it holds nothing). */
static int modules_build(const wan_variant *var, int64_t z_dim, int64_t dim, wan_modules *v,
                         ds_error *err)
{
    memset(v, 0, sizeof *v);
    v->var = var;
    v->z_dim = z_dim;
    int rc = ds__vae_modules_init(&v->m, var->owner, "wan_video_vae", &WAN_NAMES, GROUPS_MAX,
                                  err);
    if (rc == DS_OK)
        rc = add_encoder(v, dim, err);
    if (rc == DS_OK)
        rc = ds__vae_add_conv(&v->m, "conv1", 2 * z_dim, 2 * z_dim, 1, &v->conv1, err, "model.");
    if (rc == DS_OK)
        rc = ds__vae_add_conv(&v->m, "conv2", z_dim, z_dim, 1, &v->conv2, err, "model.");
    if (rc == DS_OK)
        rc = add_decoder(v, var->dec_dim ? var->dec_dim : dim, err);
    if (rc != DS_OK) {
        ds__vae_modules_free(&v->m);
        return rc;
    }
    /* decode: conv2, then the decoder; encode: the encoder, then conv1. */
    ds__vae_order_add(&v->m, v->conv2);
    for (size_t g = v->dec_conv1; g <= v->dec_head; g++)
        ds__vae_order_add(&v->m, g);
    v->m.decode_units = v->m.order_count;
    for (size_t g = v->enc_conv1; g <= v->enc_head; g++)
        ds__vae_order_add(&v->m, g);
    ds__vae_order_add(&v->m, v->conv1);
    return DS_OK;
}

static int read_kwargs(const wan_variant *var, ds_kwargs *kwargs, int64_t *z_dim, int64_t *dim,
                       ds_error *err)
{
    *z_dim = var->z_dim;
    *dim = var->dim;
    int rc;
    if ((rc = ds__kwarg_int_range(kwargs, var->class_name, "z_dim", 1, DS__PARAM_DIM_MAX, z_dim,
                                  err)) != DS_OK ||
        (var->has_dim_kwarg &&
         (rc = ds__kwarg_int_range(kwargs, var->class_name, "dim", 1, DS__PARAM_DIM_MAX / 4,
                                   dim, err)) != DS_OK) ||
        (rc = ds_kwargs_check_all_used(kwargs, err)) != DS_OK)
        return rc;
    return DS_OK;
}

static int declare_variant(const wan_variant *var, ds_kwargs *kwargs, ds_state_dict *params,
                           ds_error *err)
{
    int64_t z_dim, dim;
    wan_modules v;
    int rc = read_kwargs(var, kwargs, &z_dim, &dim, err);
    if (rc == DS_OK && (rc = modules_build(var, z_dim, dim, &v, err)) == DS_OK) {
        rc = ds_module_declare(&v.m.model, NULL, params, err);
        ds__vae_modules_free(&v.m);
    }
    return rc;
}

static int declare_parameters(ds_kwargs *kwargs, ds_state_dict *params, ds_error *err)
{
    return declare_variant(&VAE21, kwargs, params, err);
}

static int declare_parameters38(ds_kwargs *kwargs, ds_state_dict *params, ds_error *err)
{
    return declare_variant(&VAE38, kwargs, params, err);
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
    int first_chunk;              /* Decoder3d_38's first_chunk: the first latent frame */
    size_t kept;                  /* activation bytes the callers of a module hold */
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

/* feat_cache[feat_idx], feat_idx moved on. */
static int cache_slot(wan_run *r, feat_cache **c, ds_error *err)
{
    if (r->idx >= CACHES_MAX)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: more than %d cached convs",
                            r->v->var->owner, CACHES_MAX);
    *c = &r->cache[r->idx++];
    return DS_OK;
}

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
static int cached_conv(void *run, const ds__linear_weights *w, ds_tensor *x, ds_error *err)
{
    wan_run *r = run;
    feat_cache *c = NULL;
    int rc = cache_slot(r, &c, err);
    if (rc != DS_OK)
        return rc;
    ds_tensor next = {0}, y = {0};
    rc = next_cache(r, x, &c->x, &next, err);
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

/* RMS_norm over the channels of x into a new *y, then SiLU when `silu`. */
static int rms_norm(wan_run *r, const ds_tensor *gamma, const ds_tensor *x, int silu,
                    ds_tensor *y, ds_error *err)
{
    int rc = alloc_like(r, x, y, err);
    if (rc == DS_OK && (rc = ds__vae_rms_norm(r->b, gamma, x, silu, y, err)) != DS_OK)
        ds_tensor_free(y);
    return rc;
}

/* ResidualBlock: shortcut(x) + residual(x), the residual's two convs with the cache. */
static int residual_forward(void *run, const ds__vae_residual_weights *w, ds_tensor *x,
                            ds_error *err)
{
    wan_run *r = run;
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
    ds_module_free_all(DS_TENSORS(&h, &t, &u));
    return rc;
}

/* AttentionBlock: the frames of x [B, C, T, H, W] as [B * T, C, H, W] through the attention. */
static int attention_forward(void *run, const ds__vae_attention_weights *w, ds_tensor *x,
                             ds_error *err)
{
    wan_run *r = run;
    ds_tensor f = {0}, y = {0}, back = {0};
    int rc;
    if ((rc = to_frames(r, x, &f, err)) == DS_OK &&
        (rc = ds__vae_attention(r->b, w, &f, &y, err)) == DS_OK &&
        (rc = from_frames(r, &y, x->shape[2], &back, err)) == DS_OK)
        replace(x, &back);
    ds_module_free_all(DS_TENSORS(&f, &y, &back));
    return rc;
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
    ds_module_free_all(DS_TENSORS(&f, &u, &y, &back));
    return rc;
}

/* upsample3d's time_conv: from the second chunk on, the frames doubled (x [B, 2C, T, H, W]
 * with frame 2t from the first C channels of t and 2t + 1 from the others). */
static int upsample_time(wan_run *r, const ds__vae_resample_weights *w, feat_cache *c,
                         ds_tensor *x, ds_error *err)
{
    int rc;
    if (!c->x.data && !c->rep) {
        c->rep = 1;
        return DS_OK;
    }
    ds_tensor next = {0}, y = {0}, zeros = {0}, last = {0}, out = {0};
    int64_t t = x->shape[2];
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
    ds_module_free_all(DS_TENSORS(&next, &y, &zeros, &last, &out));
    return rc;
}

/* downsample3d's time_conv: the first chunk's frames kept as the cache; later chunks convolved
 * (kernel 3, stride 2, no padding) behind the cache's last frame, halving the frames. */
static int downsample_time(wan_run *r, const ds__vae_resample_weights *w, feat_cache *c,
                           ds_tensor *x, ds_error *err)
{
    int rc;
    ds_tensor next = {0}, prev = {0}, joined = {0}, head = {0}, rest = {0}, y = {0};
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
    ds_module_free_all(DS_TENSORS(&next, &prev, &joined, &head, &rest, &y));
    return rc;
}

/* Resample: upsample3d's time_conv before the frames' resampling, downsample3d's after. */
static int resample_forward(void *run, const ds__vae_resample_weights *w, int up,
                            ds_tensor *x, ds_error *err)
{
    wan_run *r = run;
    feat_cache *c = NULL;
    int temporal = w->time_conv.weight.data != NULL, rc = DS_OK;
    /* time_conv's cache slot: nothing between it and the spatial resampling takes one. */
    if (temporal && (rc = cache_slot(r, &c, err)) != DS_OK)
        return rc;
    if (up) {
        if (temporal)
            rc = upsample_time(r, w, c, x, err);
        if (rc == DS_OK)
            rc = resample_frames(r, &w->resample, 1, x, err);
    } else {
        rc = resample_frames(r, &w->resample, 0, x, err);
        if (rc == DS_OK && temporal)
            rc = downsample_time(r, w, c, x, err);
    }
    return rc;
}

/* head: RMS_norm, SiLU, the CausalConv3d with the cache. */
static int head_forward(void *run, const ds__vae_head_weights *w, ds_tensor *x, ds_error *err)
{
    wan_run *r = run;
    ds_tensor t = {0};
    int rc;
    if ((rc = rms_norm(r, &w->norm, x, 1, &t, err)) == DS_OK &&
        (rc = cached_conv(r, &w->conv, &t, err)) == DS_OK)
        replace(x, &t);
    ds_tensor_free(&t);
    return rc;
}

/* The activation bytes alive while module g runs on x with weights w: what the chunk loop
 * keeps (its input, the output joined so far, a stage's shortcut), every feature cache, and a
 * bound on the module's own: x, four tensors of its widest output (doubled frames and pixels
 * after an upsampler), or an attention block's eight of x's size and [S, S] f32 scores. */
static size_t activation_bytes(const wan_run *r, ds__vae_kind kind, const ds_tensor *x,
                               const ds__vae_weights *w)
{
    size_t kept = r->kept;
    for (int i = 0; i < CACHES_MAX; i++)
        kept += r->cache[i].x.data ? (size_t)ds_tensor_nbytes(&r->cache[i].x) : 0;
    uint64_t elem = ds_dtype_size(r->dtype), xn = ds_tensor_numel(x), per_channel = xn /
                                                                         (uint64_t)x->shape[1];
    if (kind == DS__VAE_ATTENTION) {
        uint64_t frames = (uint64_t)(x->shape[0] * x->shape[2]), S = per_channel / frames;
        return kept + (size_t)(8 * xn * elem + frames * S * S * 4);
    }
    const ds_tensor *t = (const ds_tensor *)w;
    int64_t co = x->shape[1];
    for (size_t i = 0; i < sizeof *w / sizeof(ds_tensor); i++)
        if (t[i].ndim >= 4 && t[i].shape[0] > co)
            co = t[i].shape[0];
    uint64_t grow = kind == DS__VAE_UPSAMPLE ? 8 : 1;
    return kept + (size_t)((xn + 4 * (uint64_t)co * per_channel * grow) * elem);
}

/* Module instance g on x, as upstream's Sequentials call each by its class: its weights in,
 * its activations reserved, its forward, its weights out. */
static int module(wan_run *r, size_t g, ds_tensor *x, ds_error *err)
{
    const ds__vae_modules *m = &r->v->m;
    ds__vae_weights w;
    int rc;
    if ((rc = ds__vae_module_begin(&r->run, m, g, r->phase, &w, err)) != DS_OK ||
        (rc = ds__vae_module_reserve(&r->run, m, g, r->phase,
                                     activation_bytes(r, m->kinds[g], x, &w), err)) != DS_OK)
        return rc;
    static const ds__vae_forwards forwards = {cached_conv, residual_forward, attention_forward,
                                              resample_forward, head_forward};
    rc = ds__vae_forward(&forwards, r, m, g, &w, x, err);
    return ds__vae_module_end(&r->run, m, g, r->phase, rc, err);
}

/* Encoder3d.middle / Decoder3d.middle from group `first`. */
static int middle(wan_run *r, size_t first, ds_tensor *x, ds_error *err)
{
    int rc = DS_OK;
    for (size_t g = first; rc == DS_OK && g < first + 3; g++)
        rc = module(r, g, x, err);
    return rc;
}

/* x [B, C, ...] viewed as `ndim` dims `view`, permuted by `perm`, into a new *y of `ndim` dims
 * (its shape from the view and perm) seen as `out_ndim` dims `out_shape`. */
static int permute_view(wan_run *r, const ds_tensor *x, int ndim, const int64_t *view,
                        const int *perm, int out_ndim, const int64_t *out_shape, ds_tensor *y,
                        ds_error *err)
{
    int64_t shape[DS_MAX_DIMS];
    ds_tensor v = ds_module_view(x, ndim, view), p = {0};
    ds_permute_args a = {&v, {0}, &p};
    for (int i = 0; i < ndim; i++) {
        a.perm[i] = perm[i];
        shape[i] = view[perm[i]];
    }
    int rc = alloc_shape(r, ndim, shape, &p, err);
    if (rc == DS_OK && (rc = ds_permute(r->b, NULL, &a, err)) == DS_OK) {
        *y = ds_module_view(&p, out_ndim, out_shape);
        return DS_OK;
    }
    ds_tensor_free(&p);
    return rc;
}

/* patchify(x, 2): "b c f (h q) (w r) -> b (c r q) f h w". */
static int patchify(wan_run *r, const ds_tensor *x, ds_tensor *y, ds_error *err)
{
    const int64_t *s = x->shape, p = r->v->var->patch;
    int64_t h = s[3] / p, w = s[4] / p;
    return permute_view(r, x, 7, SHAPE(s[0], s[1], s[2], h, p, w, p),
                        (const int[]){0, 1, 6, 4, 2, 3, 5}, 5,
                        SHAPE(s[0], s[1] * p * p, s[2], h, w), y, err);
}

/* unpatchify(x, 2): "b (c r q) f h w -> b c f (h q) (w r)". */
static int unpatchify(wan_run *r, const ds_tensor *x, ds_tensor *y, ds_error *err)
{
    const int64_t *s = x->shape, p = r->v->var->patch;
    int64_t c = s[1] / (p * p);
    return permute_view(r, x, 7, SHAPE(s[0], c, p, p, s[2], s[3], s[4]),
                        (const int[]){0, 1, 4, 5, 3, 6, 2}, 5,
                        SHAPE(s[0], c, s[2], s[3] * p, s[4] * p), y, err);
}

/* AvgDown3D: x's frames zero-padded in front to a multiple of factor_t, each
 * factor_t x factor_s x factor_s block folded into the channels, the mean of each run of
 * group_size consecutive channels (upstream's view and mean over dim 2). */
static int avg_down(wan_run *r, const stage *st, const ds_tensor *x, ds_tensor *y,
                    ds_error *err)
{
    const int64_t *s = x->shape;
    int64_t ft = st->factor_t, fs = st->factor_s;
    int64_t pad_t = (ft - s[2] % ft) % ft, T = (s[2] + pad_t) / ft, H = s[3] / fs,
            W = s[4] / fs;
    int64_t group = s[1] * ft * fs * fs / st->out, n = T * H * W;
    ds_tensor padded = {0}, folded = {0}, part = {0}, acc = {0};
    const ds_tensor *in = x;
    int rc = DS_OK;
    if (pad_t) {
        ds_pad_args a = {x, {0, 0, 0, 0, pad_t, 0}, 0.0f, &padded};
        if ((rc = alloc_shape(r, 5, SHAPE(s[0], s[1], s[2] + pad_t, s[3], s[4]), &padded,
                              err)) != DS_OK ||
            (rc = ds_pad(r->b, NULL, &a, err)) != DS_OK)
            goto done;
        in = &padded;
    }
    if ((rc = permute_view(r, in, 8, SHAPE(s[0], s[1], T, ft, H, fs, W, fs),
                           (const int[]){0, 1, 3, 5, 7, 2, 4, 6}, 4,
                           SHAPE(s[0], st->out, group, n), &folded, err)) != DS_OK ||
        (rc = alloc_shape(r, 4, SHAPE(s[0], st->out, 1, n), &acc, err)) != DS_OK ||
        (rc = alloc_like(r, &acc, &part, err)) != DS_OK)
        goto done;
    for (int64_t k = 0; k < group; k++) {
        ds_slice_args sl = {&folded, 2, k, k ? &part : &acc};
        ds_binary_args add = {&acc, &part, DS_BINARY_ADD, &acc};
        if ((rc = ds_slice(r->b, NULL, &sl, err)) != DS_OK ||
            (k && (rc = ds_binary(r->b, NULL, &add, err)) != DS_OK))
            goto done;
    }
    /* 1 / group_size is a power of two here (2, 4, 8): the product is mean's division. */
    ds_scale_args mean = {&acc, 1.0f / (float)group, 0.0f, &acc};
    if (group > 1 && (rc = ds_scale(r->b, NULL, &mean, err)) != DS_OK)
        goto done;
    *y = ds_module_view(&acc, 5, SHAPE(s[0], st->out, T, H, W));
    acc = (ds_tensor){0};
done:
    ds_module_free_all(DS_TENSORS(&padded, &folded, &part, &acc));
    return rc;
}

/* DupUp3D: every channel repeated `repeats` times (repeat_interleave), the copies unfolded into
 * factor_t x factor_s x factor_s blocks of frames and pixels; on the first chunk the first
 * factor_t - 1 frames dropped. */
static int dup_up(wan_run *r, const stage *st, const ds_tensor *x, ds_tensor *y, ds_error *err)
{
    const int64_t *s = x->shape;
    int64_t ft = st->factor_t, fs = st->factor_s, n = s[2] * s[3] * s[4];
    int64_t repeats = st->out * ft * fs * fs / s[1];
    const ds_tensor *copies[8];
    if (repeats > 8)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: DupUp3D repeats %" PRId64 " > 8",
                            r->phase, repeats);
    ds_tensor one = ds_module_view(x, 4, SHAPE(s[0], s[1], 1, n)), rep = {0}, up = {0};
    for (int64_t k = 0; k < repeats; k++)
        copies[k] = &one;
    ds_concat_args c = {copies, (int)repeats, 2, &rep};
    int rc;
    if ((rc = alloc_shape(r, 4, SHAPE(s[0], s[1], repeats, n), &rep, err)) != DS_OK ||
        (rc = ds_concat(r->b, NULL, &c, err)) != DS_OK ||
        (rc = permute_view(r, &rep, 8, SHAPE(s[0], st->out, ft, fs, fs, s[2], s[3], s[4]),
                           (const int[]){0, 1, 5, 2, 6, 3, 7, 4}, 5,
                           SHAPE(s[0], st->out, s[2] * ft, s[3] * fs, s[4] * fs), &up, err)) !=
            DS_OK)
        goto done;
    if (r->first_chunk && ft > 1) {
        rc = frames(r, &up, ft - 1, up.shape[2] - (ft - 1), y, err);
    } else {
        *y = up;
        up = (ds_tensor){0};
    }
done:
    ds_tensor_free(&rep);
    ds_tensor_free(&up);
    return rc;
}

/* Down_ResidualBlock / Up_ResidualBlock: the stage's modules on x plus the shortcut of the x
 * they started from (computed first: it needs no cache and is at most x's size). */
static int stage_forward(wan_run *r, const stage *st, int up, ds_tensor *x, ds_error *err)
{
    ds_tensor shortcut = {0};
    size_t kept = r->kept;
    int rc = DS_OK;
    if (st->shortcut)
        rc = up ? dup_up(r, st, x, &shortcut, err) : avg_down(r, st, x, &shortcut, err);
    if (shortcut.data)
        r->kept += (size_t)ds_tensor_nbytes(&shortcut);
    for (size_t g = st->first; rc == DS_OK && g < st->end; g++)
        rc = module(r, g, x, err);
    r->kept = kept;
    if (rc == DS_OK && st->shortcut) {
        ds_binary_args add = {x, &shortcut, DS_BINARY_ADD, x};
        rc = ds_binary(r->b, NULL, &add, err);
    }
    ds_tensor_free(&shortcut);
    return rc;
}

/* Encoder3d.forward (or Encoder3d_38's) on one chunk with the cache. */
static int encoder3d(wan_run *r, ds_tensor *x, ds_error *err)
{
    const wan_modules *v = r->v;
    r->idx = 0;
    int rc = module(r, v->enc_conv1, x, err);
    for (int i = 0; rc == DS_OK && i < LEVELS; i++)
        rc = stage_forward(r, &v->enc_stages[i], 0, x, err);
    if (rc == DS_OK)
        rc = middle(r, v->enc_mid, x, err);
    if (rc == DS_OK)
        rc = module(r, v->enc_head, x, err);
    return rc;
}

/* Decoder3d.forward (or Decoder3d_38's) on one latent frame with the cache. */
static int decoder3d(wan_run *r, ds_tensor *x, ds_error *err)
{
    const wan_modules *v = r->v;
    r->idx = 0;
    int rc = module(r, v->dec_conv1, x, err);
    if (rc == DS_OK)
        rc = middle(r, v->dec_mid, x, err);
    for (int i = 0; rc == DS_OK && i < LEVELS; i++)
        rc = stage_forward(r, &v->dec_stages[i], 1, x, err);
    if (rc == DS_OK)
        rc = module(r, v->dec_head, x, err);
    return rc;
}

/* VideoVAE_.conv1 / conv2: a CausalConv3d of the whole x, without the cache, into *y. */
static int lone_conv(wan_run *r, size_t g, const ds_tensor *x, ds_tensor *y, ds_error *err)
{
    const ds__vae_modules *m = &r->v->m;
    ds__vae_weights w;
    int rc;
    if ((rc = ds__vae_module_begin(&r->run, m, g, r->phase, &w, err)) != DS_OK ||
        (rc = ds__vae_module_reserve(&r->run, m, g, r->phase,
                                     activation_bytes(r, DS__VAE_CONV, x, &w), err)) != DS_OK)
        return rc;
    return ds__vae_module_end(&r->run, m, g, r->phase,
                              causal_conv(r, &w.conv, x, NULL, UNIT_STRIDE, y, err), err);
}

/* x's chunks through the decoder (one latent frame each) or the encoder (the first frame
 * alone, then 4 at a time), each with the feature cache of the chunk before, joined along time
 * into a new *joined. */
static int run_chunks(wan_run *r, int decode, const ds_tensor *x, ds_tensor *joined,
                      ds_error *err)
{
    int64_t t = x->shape[2];
    ds_tensor chunk = {0}, both = {0};
    int rc = DS_OK;
    clear_cache(r);
    r->chunks = decode ? t : 1 + (t - 1) / 4;
    for (int64_t i = 0; rc == DS_OK && i < r->chunks; i++) {
        int64_t start = decode ? i : i == 0 ? 0 : 1 + 4 * (i - 1), n = decode || !i ? 1 : 4;
        r->first_chunk = i == 0;
        r->kept = ds_tensor_nbytes(x) + (joined->data ? ds_tensor_nbytes(joined) : 0);
        if ((rc = ds_module_cancelled(r->ctx, r->phase, decode ? "latent frame" : "chunk", i,
                                      r->chunks, err)) != DS_OK ||
            (rc = frames(r, x, start, n, &chunk, err)) != DS_OK ||
            (rc = decode ? decoder3d(r, &chunk, err) : encoder3d(r, &chunk, err)) != DS_OK)
            break;
        if (!joined->data)
            replace(joined, &chunk);
        else if ((rc = cat_time(r, joined, &chunk, &both, err)) == DS_OK)
            replace(joined, &both);
        ds_tensor_free(&chunk);
        if (rc == DS_OK && !r->tiled)
            ds_module_progress(r->ctx, r->phase, i, r->chunks);
    }
    ds_tensor_free(&chunk);
    r->kept = 0;
    return rc;
}

/* The class's latent mean and 1 / std. */
static int latent_stats(wan_run *r, ds_tensor *mean, ds_tensor *inv_std, ds_error *err)
{
    const wan_modules *v = r->v;
    return ds__vae_latent_stats(r->b, r->dtype, 5, v->z_dim, v->var->mean, v->var->std, mean,
                                inv_std, err);
}

/* VideoVAE_.decode: z / (1 / std) + mean, conv2, the decoder on each latent frame with the
 * cache, the frames joined (unpatchified for VAE38); then single_decode's clamp to [-1, 1]
 * when `clamp`. Into host tensor out. */
static int decode_video(wan_run *r, const ds_tensor *z, int clamp, ds_tensor *out,
                        ds_error *err)
{
    const wan_modules *v = r->v;
    ds_tensor mean = {0}, inv_std = {0}, x = {0}, joined = {0}, conv = {0}, pixels = {0};
    ds_binary_args div = {z, &inv_std, DS_BINARY_DIV, &x};
    ds_binary_args add = {&x, &mean, DS_BINARY_ADD, &x};
    ds_clamp_args c = {&joined, -1.0f, 1.0f, &joined};
    int rc;
    if ((rc = latent_stats(r, &mean, &inv_std, err)) == DS_OK &&
        (rc = alloc_like(r, z, &x, err)) == DS_OK &&
        (rc = ds_binary(r->b, NULL, &div, err)) == DS_OK &&
        (rc = ds_binary(r->b, NULL, &add, err)) == DS_OK &&
        (rc = lone_conv(r, v->conv2, &x, &conv, err)) == DS_OK &&
        (rc = run_chunks(r, 1, &conv, &joined, err)) == DS_OK &&
        (v->var->patch == 1 || (rc = unpatchify(r, &joined, &pixels, err)) == DS_OK)) {
        if (pixels.data)
            replace(&joined, &pixels);
        if (!clamp || (rc = ds_clamp(r->b, NULL, &c, err)) == DS_OK)
            rc = ds_tensor_download(&joined, out->data, NULL, err);
    }
    ds_module_free_all(DS_TENSORS(&mean, &inv_std, &x, &joined, &conv, &pixels));
    return rc;
}

/* VideoVAE_.encode: (VAE38: the video patchified) the encoder on frame 0, then on frames
 * [1 + 4(i - 1), 1 + 4i), with the cache, the chunks joined; conv1; the first z channels (mu),
 * (mu - mean) * (1 / std). */
static int encode_video(wan_run *r, const ds_tensor *video, ds_tensor *out, ds_error *err)
{
    const wan_modules *v = r->v;
    ds_tensor mean = {0}, inv_std = {0}, joined = {0}, conv = {0}, mu = {0}, patches = {0};
    ds_slice_args first = {&conv, 1, 0, &mu};
    ds_binary_args sub = {&mu, &mean, DS_BINARY_SUB, &mu};
    ds_binary_args mul = {&mu, &inv_std, DS_BINARY_MUL, &mu};
    int rc = latent_stats(r, &mean, &inv_std, err);
    if (rc == DS_OK && v->var->patch > 1 && (rc = patchify(r, video, &patches, err)) == DS_OK)
        video = &patches;
    if (rc == DS_OK && (rc = run_chunks(r, 0, video, &joined, err)) == DS_OK &&
        (rc = lone_conv(r, v->conv1, &joined, &conv, err)) == DS_OK) {
        const int64_t *s = conv.shape;
        if ((rc = alloc_shape(r, 5, SHAPE(s[0], v->z_dim, s[2], s[3], s[4]), &mu, err)) ==
                DS_OK &&
            (rc = ds_slice(r->b, NULL, &first, err)) == DS_OK &&
            (rc = ds_binary(r->b, NULL, &sub, err)) == DS_OK &&
            (rc = ds_binary(r->b, NULL, &mul, err)) == DS_OK)
            rc = ds_tensor_download(&mu, out->data, NULL, err);
    }
    ds_module_free_all(DS_TENSORS(&mean, &inv_std, &joined, &conv, &mu, &patches));
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
 * end left out; into starts unless NULL (counted only). */
static int64_t tile_starts(int64_t length, int64_t size, int64_t stride, int64_t *starts)
{
    int64_t n = 0;
    for (int64_t p = 0; p < length; p += stride)
        if (!(p - stride >= 0 && p - stride + size >= length)) {
            if (starts)
                starts[n] = p;
            n++;
        }
    return n;
}

/* Where the tiles of one tiled decode or encode lie (sizes in latent units when decoding, in
 * pixels when encoding, as WanVideoVAE.encode scales them) and the blend buffers of the batch
 * element in progress: what persists from one tile to the next. */
typedef struct tile_plan {
    int decode;
    int64_t f, size_h, size_w, border_h, border_w;
    int64_t H, W, OW, plane, per_batch; /* input height / width, output width and planes */
    int64_t nh, nw, count;              /* tiles per batch element: nh x nw; count in all */
    int64_t *hs, *ws;                   /* tile origins */
    float *values, *weight, *mh, *mw;   /* sum of tile * mask, sum of masks; one tile's masks */
} tile_plan;

/* The six arrays are parts of one zeroed block that starts at hs. */
static void plan_free(tile_plan *t)
{
    free(t->hs);
    memset(t, 0, sizeof *t);
}

static int plan_init(tile_plan *t, int64_t f, int decode, const ds_wan_video_vae_tiling *tiling,
                     const ds_tensor *in, const ds_tensor *out, const char *phase,
                     ds_error *err)
{
    int64_t size_h = tiling->size_h, size_w = tiling->size_w;
    int64_t stride_h = tiling->stride_h, stride_w = tiling->stride_w;
    if (!decode) {
        size_h *= f, size_w *= f, stride_h *= f, stride_w *= f;
    }
    const int64_t *is = in->shape, *os = out->shape;
    *t = (tile_plan){.decode = decode, .f = f, .size_h = size_h, .size_w = size_w,
                     .H = is[3], .W = is[4], .OW = os[4], .plane = os[3] * os[4]};
    t->per_batch = os[1] * os[2] * t->plane;
    size_t starts_h = (size_t)(t->H / stride_h + 2), starts_w = (size_t)(t->W / stride_w + 2);
    size_t floats = (size_t)t->per_batch + (size_t)t->plane + (size_t)os[3] + (size_t)os[4];
    t->hs = calloc(1, (starts_h + starts_w) * sizeof *t->hs + floats * sizeof *t->values);
    if (!t->hs)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory for the tiles",
                            phase);
    t->ws = t->hs + starts_h;
    t->values = (float *)(t->ws + starts_w);
    t->weight = t->values + t->per_batch;
    t->mh = t->weight + t->plane;
    t->mw = t->mh + os[3];
    t->nh = tile_starts(t->H, size_h, stride_h, t->hs);
    t->nw = tile_starts(t->W, size_w, stride_w, t->ws);
    t->count = is[0] * t->nh * t->nw;
    t->border_h = decode ? (size_h - stride_h) * f : (size_h - stride_h) / f;
    t->border_w = decode ? (size_w - stride_w) * f : (size_w - stride_w) / f;
    return DS_OK;
}

/* Tile `index` (batch element index / (nh * nw)) through VideoVAE_.decode / .encode, weighted
 * by its mask into values and weight; the element's first tile clears them, its last writes
 * values / weight (clamped after decoding) into host tensor out. */
static int plan_tile(wan_run *r, tile_plan *t, int64_t index, const ds_tensor *in,
                     ds_tensor *out, ds_error *err)
{
    const int64_t *is = in->shape, *os = out->shape;
    int64_t per = t->nh * t->nw, b = index / per, k = index % per, f = t->f;
    int64_t H = t->H, W = t->W, OW = t->OW, plane = t->plane;
    int64_t h = t->hs[k / t->nw], w = t->ws[k % t->nw];
    int64_t h1 = h + t->size_h < H ? h + t->size_h : H, w1 = w + t->size_w < W ? w + t->size_w : W;
    int64_t th = t->decode ? (h1 - h) * f : (h1 - h) / f;
    int64_t tw = t->decode ? (w1 - w) * f : (w1 - w) / f;
    int64_t oh = t->decode ? h * f : h / f, ow = t->decode ? w * f : w / f;
    ds_tensor tile_in = {0}, tile_out = {0}, dev = {0}, dev_copy = {0};
    ds_backend *host = r->b;
    int rc = DS_OK;
    if (!host->host_memory && (rc = ds_cpu_fallback_backend(&host, err)) != DS_OK)
        return rc;
    r->tiled = 1;
    if (k == 0) {
        memset(t->values, 0, (size_t)t->per_batch * sizeof *t->values);
        memset(t->weight, 0, (size_t)plane * sizeof *t->weight);
    }
    if ((rc = ds_tensor_alloc(host, in->dtype, 5, SHAPE(1, is[1], is[2], h1 - h, w1 - w),
                              &tile_in, err)) != DS_OK ||
        (rc = ds_tensor_alloc(host, in->dtype, 5, SHAPE(1, os[1], os[2], th, tw), &tile_out,
                              err)) != DS_OK)
        goto done;
    copy_window(in, b, h, w, &tile_in);
    if ((rc = ds_module_input(r->b, &tile_in, &dev_copy, &dev, err)) != DS_OK ||
        (rc = t->decode ? decode_video(r, &dev, 0, &tile_out, err)
                        : encode_video(r, &dev, &tile_out, err)) != DS_OK ||
        (rc = mask_1d(th, h == 0, h + t->size_h >= H, t->border_h, t->mh, err)) != DS_OK ||
        (rc = mask_1d(tw, w == 0, w + t->size_w >= W, t->border_w, t->mw, err)) != DS_OK)
        goto done;
    /* values[.., window] += tile * mask; weight[.., window] += mask, in the dtype. */
    for (int64_t y = 0; y < th; y++)
        for (int64_t x = 0; x < tw; x++) {
            float m = to_dtype(in->dtype, t->mh[y] < t->mw[x] ? t->mh[y] : t->mw[x]);
            int64_t at = (oh + y) * OW + ow + x;
            t->weight[at] = to_dtype(in->dtype, t->weight[at] + m);
            for (int64_t ct = 0; ct < os[1] * os[2]; ct++) {
                float v = (float)ds_load_f64(tile_out.data, in->dtype,
                                             (size_t)((ct * th + y) * tw + x));
                float *acc = &t->values[ct * plane + at];
                *acc = to_dtype(in->dtype, *acc + to_dtype(in->dtype, v * m));
            }
        }
    if (k + 1 == per)
        for (int64_t i = 0; i < t->per_batch; i++) {
            float v = to_dtype(in->dtype, t->values[i] / t->weight[i % plane]);
            if (t->decode)
                v = v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v;
            ds_store_f64(out->data, out->dtype, (size_t)(b * t->per_batch + i), v);
        }
done:
    ds_module_free_all(DS_TENSORS(&tile_in, &tile_out, &dev_copy));
    return rc;
}

/* Tiled decode or encode, batch element by batch element, tile by tile, in one call. */
static int tiled_forward(wan_run *r, int decode, const ds_wan_video_vae_tiling *tiling,
                         const ds_tensor *in, ds_tensor *out, ds_error *err)
{
    tile_plan t;
    int rc = plan_init(&t, 8 * r->v->var->patch, decode, tiling, in, out, r->phase, err);
    for (int64_t i = 0; rc == DS_OK && i < t.count; i++)
        if ((rc = ds_module_cancelled(r->ctx, r->phase, "tile", i, t.count, err)) == DS_OK &&
            (rc = plan_tile(r, &t, i, in, out, err)) == DS_OK)
            ds_module_progress(r->ctx, r->phase, i, t.count);
    plan_free(&t);
    return rc;
}

/* ---- Entry points and steps ---- */

/* The Wan pipeline's tile (30, 52) and stride (15, 26) in latent units. */
const ds_wan_video_vae_tiling ds_wan_video_vae_step_tiling = {30, 52, 15, 26};

static int float_dtype(ds_dtype d) { return d == DS_F32 || d == DS_BF16; }

/* What decode takes ([B, z, T, h, w]) and encode takes ([B, 3, 4k + 1, H, W], H and W
 * multiples of the spatial factor), for messages. */
static const char *expected_input(const wan_variant *var, int decode, char *buf, size_t size)
{
    if (decode)
        snprintf(buf, size, "[B, %" PRId64 ", T, h, w] f32 or bf16", var->z_dim);
    else
        snprintf(buf, size, "[B, 3, 4k + 1, H, W] f32 or bf16 with H and W multiples of %d",
                 8 * var->patch);
    return buf;
}

/* The output shape for `in`: decode [B, 3, 4(T - 1) + 1, fh, fw], encode [B, z, k + 1, H/f,
 * W/f] (f: 8, or 16 for VAE38); INVALID_ARGUMENT when `in` is not an input of that
 * direction. */
static int output_shape(const wan_variant *var, int decode, const ds_tensor *in,
                        int64_t shape[5], ds_error *err)
{
    const char *phase = decode ? "decode" : "encode";
    const int64_t *s = in->shape, f = 8 * var->patch;
    char expected[96];
    if (decode) {
        if (!float_dtype(in->dtype) || in->ndim != 5 || s[0] < 1 || s[1] != var->z_dim ||
            s[2] < 1 || s[3] < 1 || s[4] < 1)
            return ds_module_bad_tensor(phase, "input", "latents", in,
                                        expected_input(var, 1, expected, sizeof expected), err);
        int64_t out[5] = {s[0], 3, 4 * (s[2] - 1) + 1, f * s[3], f * s[4]};
        memcpy(shape, out, sizeof out);
        return DS_OK;
    }
    if (!float_dtype(in->dtype) || in->ndim != 5 || s[0] < 1 || s[1] != 3 || s[2] < 1 ||
        (s[2] - 1) % 4 || s[3] < f || s[4] < f || s[3] % f || s[4] % f)
        return ds_module_bad_tensor(phase, "input", "video", in,
                                    expected_input(var, 0, expected, sizeof expected), err);
    int64_t out[5] = {s[0], var->z_dim, 1 + (s[2] - 1) / 4, s[3] / f, s[4] / f};
    memcpy(shape, out, sizeof out);
    return DS_OK;
}

/* The class of m (its class, else its config's): WanVideoVAE38 or WanVideoVAE; NULL for any
 * other. */
static const wan_variant *variant_of(const ds_loaded_model *m)
{
    const char *name = m->cls ? m->cls->name : m->model_class;
    if (name && strcmp(name, VAE38.class_name) == 0)
        return &VAE38;
    return name && strcmp(name, VAE21.class_name) == 0 ? &VAE21 : NULL;
}

/* What a forward needs from m and the tensors before any work: the class and its kwargs, and
 * in, out and tiling checked against each other. */
static int check_forward(const ds_loaded_model *m, const ds_step_context *ctx, int decode,
                         const ds_wan_video_vae_tiling *tiling, const ds_tensor *in,
                         const ds_tensor *out, const wan_variant **var_out, int64_t *z_dim,
                         int64_t *dim, ds_error *err)
{
    const char *phase = decode ? "decode" : "encode";
    if (!m || !ctx || !ctx->backend || !in || !out || !in->data)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: the model, a backend, the input and the output are required",
                            phase);
    const wan_variant *var = variant_of(m);
    if (!var)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: the model is a %s, expected a %s or a %s", phase,
                            m->cls ? m->cls->name : m->model_class ? m->model_class : "(none)",
                            VAE21.class_name, VAE38.class_name);
    ds_kwargs *kwargs = NULL;
    int64_t want[5];
    int rc = ds_kwargs_parse(m->extra_kwargs_json, var->class_name, &kwargs, err);
    if (rc == DS_OK)
        rc = read_kwargs(var, kwargs, z_dim, dim, err);
    ds_kwargs_free(kwargs);
    if (rc != DS_OK)
        return ds_error_prefix(err, "%s: ", phase);
    if (*z_dim != var->z_dim)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "%s: the model has z_dim %" PRId64 "; upstream's latent mean and "
                            "std have %" PRId64 " channels", phase, *z_dim, var->z_dim);
    if ((rc = output_shape(var, decode, in, want, err)) != DS_OK)
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
    *var_out = var;
    return DS_OK;
}

/* A run of one direction's modules over built instances v: opened on ctx's backend, its
 * direction's units planned with ctx->vram. *out is closed by run_close (also on failure). */
static int run_open(const ds_loaded_model *m, const ds_step_context *ctx, int decode,
                    ds_dtype dtype, const wan_modules *v, wan_run **out, ds_error *err)
{
    const char *phase = decode ? "decode" : "encode";
    wan_run *r = calloc(1, sizeof *r);
    *out = r;
    if (!r)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", phase);
    *r = (wan_run){.v = v, .ctx = ctx, .b = ctx->backend, .dtype = dtype, .phase = phase};
    const ds__vae_modules *mm = &v->m;
    size_t first = decode ? 0 : mm->decode_units;
    size_t units = decode ? mm->decode_units : mm->order_count - mm->decode_units;
    int rc = ds_module_open_ordered(&r->run, &mm->model, mm->order, mm->order_count, m, r->b,
                                    ctx->vram, 0, phase, err);
    if (rc == DS_OK && ctx->vram &&
        (rc = ds_module_plan_range(&r->run, first, units, phase, err)) != DS_OK)
        ds_error_prefix(err, "%s: registering the weights with the VRAM manager: ", phase);
    return rc;
}

static void run_close(wan_run *r)
{
    if (!r)
        return;
    ds_module_close(&r->run);
    clear_cache(r);
    free(r);
}

static int vae_forward(const ds_loaded_model *m, const ds_step_context *ctx, int decode,
                       const ds_wan_video_vae_tiling *tiling, const ds_tensor *in,
                       ds_tensor *out, ds_error *err)
{
    const char *phase = decode ? "decode" : "encode";
    const wan_variant *var;
    int64_t z_dim, dim;
    int rc = check_forward(m, ctx, decode, tiling, in, out, &var, &z_dim, &dim, err);
    if (rc != DS_OK)
        return rc;
    wan_modules v;
    wan_run *r = NULL;
    ds_tensor upload = {0}, input;
    if ((rc = modules_build(var, z_dim, dim, &v, err)) != DS_OK)
        return ds_error_prefix(err, "%s: ", phase);
    if ((rc = run_open(m, ctx, decode, in->dtype, &v, &r, err)) != DS_OK)
        goto done;
    if (tiling)
        rc = tiled_forward(r, decode, tiling, in, out, err);
    else if ((rc = ds_module_input(r->b, in, &upload, &input, err)) == DS_OK)
        rc = decode ? decode_video(r, &input, 1, out, err) : encode_video(r, &input, out, err);
done:
    run_close(r);
    ds_tensor_free(&upload);
    ds__vae_modules_free(&v.m);
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

/* ---- A tiled decode cut at tile boundaries ---- */

struct ds_wan_video_vae_tiles {
    const ds_loaded_model *m;
    ds_tensor latents, video; /* views of the caller's tensors */
    wan_modules v;
    tile_plan plan;
    int64_t next;             /* the next tile */
};

int64_t ds_wan_video_vae_tile_count(const ds_wan_video_vae_tiling *tiling, int64_t batch,
                                    int64_t h, int64_t w)
{
    if (!tiling || batch < 1 || h < 1 || w < 1 || tiling->stride_h < 1 || tiling->stride_w < 1 ||
        tiling->stride_h > tiling->size_h || tiling->stride_w > tiling->size_w)
        return 0;
    return batch * tile_starts(h, tiling->size_h, tiling->stride_h, NULL) *
           tile_starts(w, tiling->size_w, tiling->stride_w, NULL);
}

int ds_wan_video_vae_tiles_begin(const ds_loaded_model *m, const ds_step_context *ctx,
                                 const ds_wan_video_vae_tiling *tiling,
                                 const ds_tensor *latents, ds_tensor *video_out,
                                 ds_wan_video_vae_tiles **out, ds_error *err)
{
    *out = NULL;
    const wan_variant *var;
    int64_t z_dim, dim;
    int rc = tiling ? check_forward(m, ctx, 1, tiling, latents, video_out, &var, &z_dim, &dim,
                                    err)
                    : ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                   "decode: a tiled decode needs its tiling");
    if (rc != DS_OK)
        return rc;
    ds_wan_video_vae_tiles *t = malloc(sizeof *t);
    if (!t)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "decode: out of memory");
    *t = (ds_wan_video_vae_tiles){.m = m, .latents = *latents, .video = *video_out};
    if ((rc = modules_build(var, z_dim, dim, &t->v, err)) != DS_OK) {
        free(t);
        return ds_error_prefix(err, "decode: ");
    }
    if ((rc = plan_init(&t->plan, 8 * var->patch, 1, tiling, latents, video_out, "decode",
                        err)) != DS_OK) {
        ds_wan_video_vae_tiles_free(t);
        return rc;
    }
    *out = t;
    return DS_OK;
}

int64_t ds_wan_video_vae_tiles_count(const ds_wan_video_vae_tiles *t) { return t->plan.count; }

int ds_wan_video_vae_tiles_next(ds_wan_video_vae_tiles *t, const ds_step_context *ctx,
                                ds_error *err)
{
    if (t->next >= t->plan.count)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "decode: all %" PRId64 " tiles are decoded", t->plan.count);
    wan_run *r = NULL;
    int rc = run_open(t->m, ctx, 1, t->latents.dtype, &t->v, &r, err);
    if (rc == DS_OK)
        rc = plan_tile(r, &t->plan, t->next, &t->latents, &t->video, err);
    run_close(r);
    if (rc == DS_OK)
        t->next++;
    return rc;
}

void ds_wan_video_vae_tiles_free(ds_wan_video_vae_tiles *t)
{
    if (!t)
        return;
    plan_free(&t->plan);
    ds__vae_modules_free(&t->v.m);
    free(t);
}

static int step_run(const ds_loaded_model *m, const ds_step_context *ctx, const ds_step_io *in,
                    ds_step_io *out, int decode, ds_error *err)
{
    const wan_variant *var = variant_of(m) ? variant_of(m) : &VAE21;
    static const ds_dtype float_dtypes[] = {DS_F32, DS_BF16};
    const char *phase = decode ? "decode" : "encode";
    const char *in_name = decode ? "latents" : "video", *out_name = decode ? "video" : "latents";
    const char *const known[] = {in_name, "tiled", NULL};
    const ds_tensor *x;
    int64_t shape[5];
    char expected[96];
    int rc;
    if ((rc = ds_step_io_check_names(in, phase, known, err)) != DS_OK ||
        (rc = ds_step_io_require(in, phase, in_name, 0, float_dtypes, 2, 5,
                                 SHAPE(-1, decode ? var->z_dim : 3, -1, -1, -1),
                                 expected_input(var, decode, expected, sizeof expected), &x,
                                 err)) != DS_OK ||
        (rc = output_shape(var, decode, x, shape, err)) != DS_OK)
        return rc;
    ds_backend *cpu = ctx->backend;
    ds_tensor *y;
    if (!cpu->host_memory && (rc = ds_cpu_fallback_backend(&cpu, err)) != DS_OK)
        return rc;
    const ds_step_param *tiled = ds_step_io_param(in, "tiled");
    if (tiled && strcmp(tiled->text, "true") != 0 && strcmp(tiled->text, "false") != 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: parameter \"tiled\" is \"%s\", expected true or false", phase,
                            tiled->text);
    if ((rc = ds_step_io_new_tensor(out, cpu, out_name, x->dtype, 5, shape, &y, err)) != DS_OK)
        return rc;
    return vae_forward(m, ctx, decode,
                       tiled && tiled->number != 0 ? &ds_wan_video_vae_step_tiling : NULL, x, y,
                       err);
}

#define DECODE_USAGE(z, f)                                                                     \
    "decode: latents [B, " #z ", T, h, w] (f32 or bf16; the compute dtype) -> video [B, 3, "      \
    "4(T-1)+1, " #f "h, " #f "w] in latents' dtype, clamped to [-1, 1]; " TILED_USAGE
#define ENCODE_USAGE(z, f)                                                                     \
    "encode: video [B, 3, 4k+1, H, W] (f32 or bf16 in [-1, 1], H and W multiples of " #f       \
    ") -> latents [B, " #z ", k+1, H/" #f ", W/" #f "] in video's dtype; " TILED_USAGE
#define TILED_USAGE                                                                            \
    "tiled (true|false, default false): tiles 30x52, stride 15x26 in latent units"

DS__VAE_STEPS(steps, step_run, DECODE_USAGE(16, 8), ENCODE_USAGE(16, 8),
              ds_memory_wan_video_vae);
DS__VAE_STEPS(steps38, step_run, DECODE_USAGE(48, 16), ENCODE_USAGE(48, 16),
              ds_memory_wan_video_vae);

DS_MODEL_CLASS(ds__wan_video_vae_class, "diffsynth.models.wan_video_vae.WanVideoVAE",
               declare_parameters, steps);
DS_MODEL_CLASS(ds__wan_video_vae38_class, "diffsynth.models.wan_video_vae.WanVideoVAE38",
               declare_parameters38, steps38);
