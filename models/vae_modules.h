/* The modules Wan's causal 3-D VAE is built from (diffsynth/models/wan_video_vae.py:
 * ResidualBlock, AttentionBlock, Resample, the heads and lone CausalConv3d), which
 * WanVideoVAE, WanVideoVAE38 and QwenImageVAE (the same architecture under other parameter
 * names) declare and bind through one table builder: each module instance is a group of the
 * module engine (models/module.h) with its own prefix and widths, one transfer unit. Also the
 * per-module plumbing of their forwards (weights in, activations reserved, failures named)
 * and the pieces they compute alike: RMS_norm, AttentionBlock, the latent mean and 1 / std. */
#ifndef DS_MODELS_VAE_MODULES_H
#define DS_MODELS_VAE_MODULES_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "kernels/backend.h"
#include "models/model_step.h"
#include "models/module.h"
#include "models/param_tree.h"
#include "models/weight_set.h"

/* The weights of one instance, as its forward finds them. */
typedef struct ds__vae_residual_weights {
    ds_tensor norm1;
    ds__linear_weights conv1;
    ds_tensor norm2;
    ds__linear_weights conv2, shortcut; /* shortcut zeroed when the widths agree */
} ds__vae_residual_weights;

typedef struct ds__vae_attention_weights {
    ds_tensor norm;
    ds__linear_weights to_qkv, proj; /* 1x1 Conv2d run as Linears over the channels */
} ds__vae_attention_weights;

typedef struct ds__vae_resample_weights {
    ds__linear_weights resample, time_conv; /* time_conv zeroed in the 2-D modes */
} ds__vae_resample_weights;

typedef struct ds__vae_head_weights {
    ds_tensor norm;
    ds__linear_weights conv;
} ds__vae_head_weights;

typedef union ds__vae_weights {
    ds__vae_residual_weights residual;
    ds__vae_attention_weights attention;
    ds__vae_resample_weights resample;
    ds__vae_head_weights head;
    ds__linear_weights conv;
} ds__vae_weights;

/* Which upstream module an instance is: the forwards tell what a Sequential holds apart by
 * it, as upstream's do by class. */
typedef enum ds__vae_kind {
    DS__VAE_CONV,
    DS__VAE_RESIDUAL,
    DS__VAE_ATTENTION,
    DS__VAE_DOWNSAMPLE,
    DS__VAE_UPSAMPLE,
    DS__VAE_HEAD,
} ds__vae_kind;

/* What one family calls the parameters: Wan's Sequential indices ("residual.0.gamma", "head.2")
 * or Qwen-Image's names ("norm1.gamma", "conv_out"). */
typedef struct ds__vae_names {
    const char *norm1, *conv1, *norm2, *conv2, *shortcut; /* a residual block's */
    const char *head_norm, *head_conv, *head_unit;        /* a head's, and its unit's name */
    int time_conv_unit; /* 0, or DS_MODULE_NO_UNIT where the forward never runs time_conv */
} ds__vae_names;

/* A model's instances in upstream's registration order, and its transfer units in the order
 * the forwards run them (decode's first `decode_units`, then encode's). */
typedef struct ds__vae_modules {
    const ds__vae_names *names;
    ds_module_model model;
    ds_module_group *groups;
    ds__vae_kind *kinds;
    ds_module *modules;
    const char **unit_names; /* each group's one unit */
    char (*prefixes)[DS__PARAM_NAME_MAX];
    size_t count, capacity;
    ds_module_unit_ref *order;
    size_t order_count, decode_units;
} ds__vae_modules;

/* Room for `capacity` instances; `owner` and `vram_name` as ds_module_model's. */
int ds__vae_modules_init(ds__vae_modules *v, const char *owner, const char *vram_name,
                         const ds__vae_names *names, size_t capacity, ds_error *err);
void ds__vae_modules_free(ds__vae_modules *v);

/* Appends group g to the units' order. */
void ds__vae_order_add(ds__vae_modules *v, size_t g);

/* Each declares one instance under the prefix `fmt` and stores its group index in *index
 * (NULL: not wanted).
 *   residual(in, out): a shortcut conv where in != out
 *   attention(dim)
 *   resample(kind, dim, out, time): the Conv2d dim -> out, time_conv dim -> time (0: none)
 *   head(in, out): RMS_norm(in), SiLU, CausalConv3d(in, out, 3)
 *   conv(name, out, in, k): a CausalConv3d alone, its own unit `name` */
int ds__vae_add_residual(ds__vae_modules *v, int64_t in, int64_t out, size_t *index,
                         ds_error *err, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
int ds__vae_add_attention(ds__vae_modules *v, int64_t dim, size_t *index, ds_error *err,
                          const char *fmt, ...) __attribute__((format(printf, 5, 6)));
int ds__vae_add_resample(ds__vae_modules *v, ds__vae_kind kind, int64_t dim, int64_t out,
                         int64_t time, size_t *index, ds_error *err, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));
int ds__vae_add_head(ds__vae_modules *v, int64_t in, int64_t out, size_t *index, ds_error *err,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));
int ds__vae_add_conv(ds__vae_modules *v, const char *name, int64_t out, int64_t in, int64_t k,
                     size_t *index, ds_error *err, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));

/* Instance g's weights into the zeroed *w: acquired from the manager or bound. A failure
 * goes through ds__vae_module_end. */
int ds__vae_module_begin(ds_module_run *run, const ds__vae_modules *v, size_t g,
                         const char *phase, ds__vae_weights *w, ds_error *err);

/* With a manager, `bytes` of activations reserved while instance g runs (replacing the
 * previous module's reservation). A failure goes through ds__vae_module_end. */
int ds__vae_module_reserve(ds_module_run *run, const ds__vae_modules *v, size_t g,
                           const char *phase, size_t bytes, ds_error *err);

/* Releases (or unbinds) instance g's weights; a failure `rc` is prefixed with the phase and
 * the instance's name. */
int ds__vae_module_end(ds_module_run *run, const ds__vae_modules *v, size_t g,
                       const char *phase, int rc, ds_error *err);

/* One family's forward of each kind of module, on its own run state `run`: a CausalConv3d
 * alone, the blocks, a resampler (up: Upsample, else a downsampler), a head. Each replaces *x
 * by its output. */
typedef struct ds__vae_forwards {
    int (*conv)(void *run, const ds__linear_weights *w, ds_tensor *x, ds_error *err);
    int (*residual)(void *run, const ds__vae_residual_weights *w, ds_tensor *x, ds_error *err);
    int (*attention)(void *run, const ds__vae_attention_weights *w, ds_tensor *x,
                     ds_error *err);
    int (*resample)(void *run, const ds__vae_resample_weights *w, int up, ds_tensor *x,
                    ds_error *err);
    int (*head)(void *run, const ds__vae_head_weights *w, ds_tensor *x, ds_error *err);
} ds__vae_forwards;

/* Instance g's forward by its kind, as upstream's Sequentials call each module by its class. */
int ds__vae_forward(const ds__vae_forwards *f, void *run, const ds__vae_modules *v, size_t g,
                    const ds__vae_weights *w, ds_tensor *x, ds_error *err);

/* RMS_norm(images) over the channels of x [B, C, ...] into y (allocated, x's shape), then SiLU
 * when `silu`: x / max(||x||, 1e-12) * sqrt(C) * gamma. */
int ds__vae_rms_norm(ds_backend *b, const ds_tensor *gamma, const ds_tensor *x, int silu,
                     ds_tensor *y, ds_error *err);

/* AttentionBlock on frames x [N, C, H, W] (in x's dtype): RMS_norm, to_qkv (the 1x1 conv as a
 * Linear over channels), one head of dim C over the H * W positions (SDPA's scale 1/sqrt(C)),
 * proj, plus x: into a new *out (the caller frees). */
int ds__vae_attention(ds_backend *b, const ds__vae_attention_weights *w, const ds_tensor *x,
                      ds_tensor *out, ds_error *err);

/* The mean and 1 / std of the z latent channels as [1, z, 1, ...] (ndim dims) in `dtype`, new
 * tensors on b: upstream builds them in f32 (1 / std rounded there) and casts both to the
 * input's dtype. z <= 64. */
int ds__vae_latent_stats(ds_backend *b, ds_dtype dtype, int ndim, int64_t z, const float *mean,
                         const float *std, ds_tensor *mean_out, ds_tensor *inv_std_out,
                         ds_error *err);

/* Defines `var`, a VAE class's steps table: "decode" and "encode" with their usage lines, run
 * by `step(m, ctx, in, out, decode, err)` with the direction (wrappers var##_decode and
 * var##_encode), both bounded by `memory_fn` (NULL: the daemon cannot admit them). */
#define DS__VAE_STEPS(var, step, decode_usage, encode_usage, memory_fn)                        \
    static int var##_decode(const ds_loaded_model *m, const ds_step_context *ctx,              \
                            const ds_step_io *in, ds_step_io *out, ds_error *err)              \
    {                                                                                          \
        return step(m, ctx, in, out, 1, err);                                                  \
    }                                                                                          \
    static int var##_encode(const ds_loaded_model *m, const ds_step_context *ctx,              \
                            const ds_step_io *in, ds_step_io *out, ds_error *err)              \
    {                                                                                          \
        return step(m, ctx, in, out, 0, err);                                                  \
    }                                                                                          \
    static const ds_model_step var[] = {                                                       \
        {.name = "decode", .usage = decode_usage, .run = var##_decode,                         \
         .memory = memory_fn},                                                                 \
        {.name = "encode", .usage = encode_usage, .run = var##_encode,                         \
         .memory = memory_fn},                                                                 \
    }

/* WanVideoVAE's (and QwenImageVAE's) per-channel latent mean and std, 16 each. */
extern const float ds__vae_wan21_mean[16], ds__vae_wan21_std[16];

#endif
