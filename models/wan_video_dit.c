/* diffsynth/models/wan_video_dit.py: WanModel, the Wan video DiT.
 *
 * Every shape comes from the constructor's kwargs (the config table's rows differ in width,
 * depth, input channels and optional parts). The RoPE tables are plain attributes and norm1,
 * norm2 and the head's norm have no affine parameters, so none of them appears here.
 *
 * The forward pass is the pipeline's model_fn_wan_video on the text-to-video path, one function
 * per upstream module, on the op API (kernels/ops.h). */
#include "models/wan_video_dit.h"

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
#include "models/wan_video_block.h"
#include "models/wan_video_vace.h"
#include "models/weight_set.h"

#define CLASS_NAME "diffsynth.models.wan_video_dit.WanModel"

enum {
    CLIP_DIM = 1280,    /* the CLIP image encoder's width (img_emb's input) */
    CLIP_TOKENS = 257,  /* CrossAttention splits this many context rows off as the image's */
    CLIP_POS_TOKENS = 514,
    REF_CHANNELS = 16,  /* ref_conv's input: one latent frame */
    PATCH = DS__WAN_PATCH,
};

/* What the kwargs decide (ds_module dims). */
enum {
    KW_DIM, KW_SIX_DIM, KW_FFN, KW_LAYERS, KW_IN_DIM, KW_HEAD_OUT, KW_TEXT_DIM,
    KW_FREQ_DIM, KW_IMAGE, KW_IMAGE_POS, KW_REF_CONV, KW_CONTROL, KW_CONTROL_IN, KW_COUNT
};

typedef ds_wan_video_dit_config wan_config;

/* Parameters outside the blocks used before them. */
typedef struct input_weights {
    ds__linear_weights patch_embedding; /* Conv3d [dim, in_dim, 1, 2, 2] */
    ds__linear_weights text_1;          /* [dim, text_dim] */
    ds__linear_weights text_2;          /* [dim, dim] */
    ds__linear_weights time_1;          /* [dim, freq_dim] */
    ds__linear_weights time_2;          /* [dim, dim] */
    ds__linear_weights time_projection; /* [6 dim, dim] */
    ds_tensor clip_ln1_w, clip_ln1_b;   /* img_emb.proj.0: LayerNorm(1280) */
    ds__linear_weights clip_1;          /* img_emb.proj.1: [1280, 1280] */
    ds__linear_weights clip_2;          /* img_emb.proj.3: [dim, 1280] */
    ds_tensor clip_ln2_w, clip_ln2_b;   /* img_emb.proj.4: LayerNorm(dim) */
    ds_tensor clip_pos;                 /* img_emb.emb_pos [1, 514, 1280] */
    ds__linear_weights ref_conv;        /* declared only */
    ds__linear_weights control_conv;    /* declared only (SimpleAdapter) */
    ds__linear_weights control_res1;
    ds__linear_weights control_res2;
} input_weights;

typedef struct output_weights {
    ds_tensor modulation;   /* head.modulation [1, 2, dim] */
    ds__linear_weights head; /* [out_dim * 4, dim] */
} output_weights;

enum { INPUTS, BLOCKS, OUTPUTS };
static const char *const input_units[] = {"input"};
static const char *const output_units[] = {"head"};

#define IN(f) offsetof(input_weights, f)
#define OUT(f) offsetof(output_weights, f)
#define D(i) DS_MODULE_DIM(i)
#define LINEAR(name, out, in, unit, field, when) \
    {name, DS_MODULE_LINEAR, 2, {out, in}, unit, field, when}
#define VEC(name, n, unit, field, when) {name, DS_MODULE_NORM, 1, {n}, unit, field, when}
/* A LayerNorm's bias, by its full name. */
#define BIAS(name, n, unit, field, when) {name, DS_MODULE_TENSOR, 1, {n}, unit, field, when}
#define COUNT(a) (sizeof a / sizeof a[0])

/* The modules used before the blocks. img_emb is registered after the head upstream; it is
 * declared here, with the inputs it is used with (the hash sorts the names). ref_conv and the
 * control adapter take inputs this forward does not, so they are declared only. */
static const ds_module input_modules[] = {
    {"patch_embedding", DS_MODULE_CONV, 5, {D(KW_DIM), D(KW_IN_DIM), 1, PATCH, PATCH}, 0,
     IN(patch_embedding), 0},
    LINEAR("text_embedding.0", D(KW_DIM), D(KW_TEXT_DIM), 0, IN(text_1), 0),
    LINEAR("text_embedding.2", D(KW_DIM), D(KW_DIM), 0, IN(text_2), 0),
    LINEAR("time_embedding.0", D(KW_DIM), D(KW_FREQ_DIM), 0, IN(time_1), 0),
    LINEAR("time_embedding.2", D(KW_DIM), D(KW_DIM), 0, IN(time_2), 0),
    LINEAR("time_projection.1", D(KW_SIX_DIM), D(KW_DIM), 0, IN(time_projection), 0),
    {"img_emb.emb_pos", DS_MODULE_TENSOR, 3, {1, CLIP_POS_TOKENS, CLIP_DIM}, 0, IN(clip_pos),
     DS_MODULE_IF(KW_IMAGE_POS)},
    VEC("img_emb.proj.0", CLIP_DIM, 0, IN(clip_ln1_w), DS_MODULE_IF(KW_IMAGE)),
    BIAS("img_emb.proj.0.bias", CLIP_DIM, 0, IN(clip_ln1_b), DS_MODULE_IF(KW_IMAGE)),
    LINEAR("img_emb.proj.1", CLIP_DIM, CLIP_DIM, 0, IN(clip_1), DS_MODULE_IF(KW_IMAGE)),
    LINEAR("img_emb.proj.3", D(KW_DIM), CLIP_DIM, 0, IN(clip_2), DS_MODULE_IF(KW_IMAGE)),
    VEC("img_emb.proj.4", D(KW_DIM), 0, IN(clip_ln2_w), DS_MODULE_IF(KW_IMAGE)),
    BIAS("img_emb.proj.4.bias", D(KW_DIM), 0, IN(clip_ln2_b), DS_MODULE_IF(KW_IMAGE)),
    {"ref_conv", DS_MODULE_CONV, 4, {D(KW_DIM), REF_CHANNELS, PATCH, PATCH}, DS_MODULE_NO_UNIT,
     IN(ref_conv), DS_MODULE_IF(KW_REF_CONV)},
    {"control_adapter.conv", DS_MODULE_CONV, 4, {D(KW_DIM), D(KW_CONTROL_IN), PATCH, PATCH},
     DS_MODULE_NO_UNIT, IN(control_conv), DS_MODULE_IF(KW_CONTROL)},
    {"control_adapter.residual_blocks.0.conv1", DS_MODULE_CONV, 4, {D(KW_DIM), D(KW_DIM), 3, 3},
     DS_MODULE_NO_UNIT, IN(control_res1), DS_MODULE_IF(KW_CONTROL)},
    {"control_adapter.residual_blocks.0.conv2", DS_MODULE_CONV, 4, {D(KW_DIM), D(KW_DIM), 3, 3},
     DS_MODULE_NO_UNIT, IN(control_res2), DS_MODULE_IF(KW_CONTROL)},
};

static const ds_module block_modules[] = {
    DS__WAN_BLOCK_MODULES(D(KW_DIM), D(KW_FFN), DS_MODULE_IF(KW_IMAGE))
};

static const ds_module output_modules[] = {
    {"head.modulation", DS_MODULE_TENSOR, 3, {1, 2, D(KW_DIM)}, 0, OUT(modulation), 0},
    LINEAR("head.head", D(KW_HEAD_OUT), D(KW_DIM), 0, OUT(head), 0),
};

static const ds_module_group groups[] = {
    [INPUTS] = {"", 0, input_modules, COUNT(input_modules), input_units, COUNT(input_units)},
    [BLOCKS] = {"blocks.%lld.", D(KW_LAYERS), block_modules, COUNT(block_modules),
                ds__wan_block_units, DS__WAN_BLOCK_UNITS},
    [OUTPUTS] = {"", 0, output_modules, COUNT(output_modules), output_units,
                 COUNT(output_units)},
};

static const ds_module_model modules = {"WanModel", "wan_video_dit", groups, COUNT(groups)};

/* Kwargs of WanModel's constructor that change the model in ways this build does not run. */
static const char *const unimplemented_kwargs[] = {
    "wantodance_enable_music_inject", "wantodance_music_inject_layers",
    "wantodance_enable_refimage",     "wantodance_enable_refface",
    "wantodance_enable_global",       "wantodance_enable_dynamicfps",
    "wantodance_enable_unimodel",
};

static int dim_kwarg(ds_kwargs *kw, const char *name, int required, int64_t *v, ds_error *err)
{
    int64_t value = -1;
    int rc = ds_kwargs_int(kw, name, &value, err);
    if (rc != DS_OK)
        return rc;
    if (value == -1 && required)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: missing required keyword argument \"%s\"", CLASS_NAME, name);
    if (value == -1)
        return DS_OK;
    if (value < 1 || value > DS__PARAM_DIM_MAX)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: %s must be between 1 and %lld, got %lld", CLASS_NAME, name,
                            (long long)DS__PARAM_DIM_MAX, (long long)value);
    *v = value;
    return DS_OK;
}

/* Reads and checks every kwarg (WanModel's constructor has no defaults for the shapes) into a
 * wan_config. */
static int read_config(ds_kwargs *kw, void *config, ds_error *err)
{
    wan_config *c = config;
    *c = (wan_config){.in_dim_control_adapter = 24, .require_vae_embedding = 1,
                      .require_clip_embedding = 1};
    int64_t patch[3] = {0};
    int patch_count = 0, patch_present = 0, rc;
    /* A wantodance switch that is off changes nothing; one that is on is refused. */
    for (size_t i = 0; i < COUNT(unimplemented_kwargs); i++) {
        int64_t layers[DS__PARAM_LIST_MAX];
        int n = 0, present = 0, on = 0;
        if (strcmp(unimplemented_kwargs[i], "wantodance_music_inject_layers") == 0)
            rc = ds__kwarg_int_list(kw, unimplemented_kwargs[i], layers, DS__PARAM_LIST_MAX, &n,
                                    &present, err);
        else
            rc = ds_kwargs_bool(kw, unimplemented_kwargs[i], &on, err);
        if (rc != DS_OK)
            return rc;
        if (on)
            return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                                "%s: keyword argument \"%s\" (WanToDance) is not implemented",
                                CLASS_NAME, unimplemented_kwargs[i]);
    }
    if ((rc = dim_kwarg(kw, "dim", 1, &c->dim, err)) != DS_OK ||
        (rc = dim_kwarg(kw, "in_dim", 1, &c->in_dim, err)) != DS_OK ||
        (rc = dim_kwarg(kw, "ffn_dim", 1, &c->ffn_dim, err)) != DS_OK ||
        (rc = dim_kwarg(kw, "out_dim", 1, &c->out_dim, err)) != DS_OK ||
        (rc = dim_kwarg(kw, "text_dim", 1, &c->text_dim, err)) != DS_OK ||
        (rc = dim_kwarg(kw, "freq_dim", 1, &c->freq_dim, err)) != DS_OK ||
        (rc = dim_kwarg(kw, "num_heads", 1, &c->num_heads, err)) != DS_OK ||
        (rc = dim_kwarg(kw, "in_dim_control_adapter", 0, &c->in_dim_control_adapter, err)) !=
            DS_OK)
        return rc;
    c->num_layers = -1;
    if ((rc = ds_kwargs_int(kw, "num_layers", &c->num_layers, err)) != DS_OK)
        return rc;
    if (c->num_layers == -1)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: missing required keyword argument \"num_layers\"", CLASS_NAME);
    if ((rc = ds__kwarg_int_range(kw, CLASS_NAME, "num_layers", 0, DS__PARAM_LAYERS_MAX,
                                  &c->num_layers, err)) != DS_OK)
        return rc;
    c->eps = -1.0;
    if ((rc = ds_kwargs_double(kw, "eps", &c->eps, err)) != DS_OK)
        return rc;
    if (!(c->eps > 0.0) || !isfinite(c->eps))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: keyword argument \"eps\" is required and must be a positive "
                            "number", CLASS_NAME);
    c->has_image_input = -1;
    if ((rc = ds_kwargs_bool(kw, "has_image_input", &c->has_image_input, err)) != DS_OK ||
        (rc = ds_kwargs_bool(kw, "has_image_pos_emb", &c->has_image_pos_emb, err)) != DS_OK ||
        (rc = ds_kwargs_bool(kw, "has_ref_conv", &c->has_ref_conv, err)) != DS_OK ||
        (rc = ds_kwargs_bool(kw, "add_control_adapter", &c->add_control_adapter, err)) != DS_OK ||
        (rc = ds_kwargs_bool(kw, "seperated_timestep", &c->seperated_timestep, err)) != DS_OK ||
        (rc = ds_kwargs_bool(kw, "require_vae_embedding", &c->require_vae_embedding, err)) !=
            DS_OK ||
        (rc = ds_kwargs_bool(kw, "require_clip_embedding", &c->require_clip_embedding, err)) !=
            DS_OK ||
        (rc = ds_kwargs_bool(kw, "fuse_vae_embedding_in_latents",
                             &c->fuse_vae_embedding_in_latents, err)) != DS_OK ||
        (rc = ds__kwarg_int_list(kw, "patch_size", patch, 3, &patch_count, &patch_present,
                                 err)) != DS_OK)
        return rc;
    if (c->has_image_input < 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: missing required keyword argument \"has_image_input\"",
                            CLASS_NAME);
    if (!patch_present)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: missing required keyword argument \"patch_size\"", CLASS_NAME);
    if (patch_count != 3 || patch[0] != 1 || patch[1] != PATCH || patch[2] != PATCH)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "%s: keyword argument \"patch_size\" other than [1, 2, 2] is not "
                            "implemented", CLASS_NAME);
    if (c->dim % c->num_heads)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: dim %lld is not a multiple of num_heads %lld", CLASS_NAME,
                            (long long)c->dim, (long long)c->num_heads);
    if (c->dim / c->num_heads < 6 || (c->dim / c->num_heads) % 2)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: head dim %lld (dim / num_heads) must be even and at least 6",
                            CLASS_NAME, (long long)(c->dim / c->num_heads));
    return ds_kwargs_check_all_used(kw, err);
}

static void config_dims(const wan_config *c, int64_t dims[KW_COUNT])
{
    dims[KW_DIM] = c->dim;
    dims[KW_SIX_DIM] = 6 * c->dim;
    dims[KW_FFN] = c->ffn_dim;
    dims[KW_LAYERS] = c->num_layers;
    dims[KW_IN_DIM] = c->in_dim;
    dims[KW_HEAD_OUT] = c->out_dim * PATCH * PATCH;
    dims[KW_TEXT_DIM] = c->text_dim;
    dims[KW_FREQ_DIM] = c->freq_dim;
    dims[KW_IMAGE] = c->has_image_input;
    dims[KW_IMAGE_POS] = c->has_image_input && c->has_image_pos_emb;
    dims[KW_REF_CONV] = c->has_ref_conv;
    dims[KW_CONTROL] = c->add_control_adapter;
    dims[KW_CONTROL_IN] = c->in_dim_control_adapter * 64; /* after an 8x8 pixel unshuffle */
}

static int declare_parameters(ds_kwargs *kwargs, ds_state_dict *params, ds_error *err)
{
    wan_config c;
    int64_t dims[KW_COUNT];
    int rc = read_config(kwargs, &c, err);
    if (rc != DS_OK)
        return rc;
    config_dims(&c, dims);
    return ds_module_declare(&modules, dims, params, err);
}

int ds_wan_video_dit_config_of(const ds_loaded_model *dit, ds_wan_video_dit_config *c,
                               ds_error *err)
{
    if (!dit->cls || strcmp(dit->cls->name, CLASS_NAME) != 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "the model is a %s, expected a %s",
                            dit->cls ? dit->cls->name : "(class not implemented)", CLASS_NAME);
    return ds_kwargs_read(dit->extra_kwargs_json, CLASS_NAME, read_config, c, err);
}

/* ---- Forward pass ---- */

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}

/* ---- RoPE (precompute_freqs_cis_3d) ---- */

/* Token (f, h, w): the head's pairs split frame / height / width as head_dim - 2 (head_dim / 3),
 * head_dim / 3, head_dim / 3 channels; pair j of an axis of c channels turns by
 * pos / 10000^(2j / c). Upstream computes the angles and the rotation in float64; the angle's
 * cos and sin are kept in f32 here. */
static int rope_tables(const ds__wan_dims *d, ds__wan_state *s, ds_error *err)
{
    int64_t pairs = d->head_dim / 2, n = d->tokens;
    int64_t axis_dim[3] = {d->head_dim - 2 * (d->head_dim / 3), d->head_dim / 3,
                           d->head_dim / 3};
    float *host = malloc((size_t)(2 * n * pairs) * sizeof *host);
    if (!host)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "WanModel: out of memory for RoPE");
    float *cs = host, *sn = host + n * pairs;
    for (int64_t f = 0; f < d->frames; f++)
        for (int64_t h = 0; h < d->grid_h; h++)
            for (int64_t w = 0; w < d->grid_w; w++) {
                int64_t tok = (f * d->grid_h + h) * d->grid_w + w, col = 0;
                const int64_t pos[3] = {f, h, w};
                for (int a = 0; a < 3; a++)
                    for (int64_t j = 0; j < axis_dim[a] / 2; j++, col++) {
                        double freq = 1.0 / pow(10000.0, (double)(2 * j) / (double)axis_dim[a]);
                        double angle = (double)pos[a] * freq;
                        cs[tok * pairs + col] = (float)cos(angle);
                        sn[tok * pairs + col] = (float)sin(angle);
                    }
            }
    int rc = ds_tensor_upload(&s->cos, cs, NULL, err);
    if (rc == DS_OK)
        rc = ds_tensor_upload(&s->sin, sn, NULL, err);
    free(host);
    return rc;
}

/* ---- Modules ---- */

static int layer_norm(ds_backend *b, const ds_tensor *x, const ds_tensor *w, const ds_tensor *bias,
                      float eps, ds_tensor *y, ds_error *err)
{
    ds_layer_norm_args a = {x, w, bias, eps, y};
    return ds_layer_norm(b, NULL, &a, err);
}

/* img_emb (MLP): with pos_emb, x + emb_pos first; LayerNorm, Linear, GELU (erf), Linear,
 * LayerNorm. */
static int image_embedding(ds_backend *b, const ds__wan_dims *d, const input_weights *w,
                           const ds_tensor *clip, ds__wan_state *s, ds_error *err)
{
    ds_binary_args pos = {clip, &w->clip_pos, DS_BINARY_ADD, &s->clip_b};
    ds_tensor *out = d->clip_tokens == CLIP_TOKENS ? &s->img : &s->img_all;
    int rc;
    if (d->clip_tokens != CLIP_TOKENS) {
        if ((rc = ds_binary(b, NULL, &pos, err)) != DS_OK)
            return rc;
        clip = &s->clip_b;
    }
    if ((rc = layer_norm(b, clip, &w->clip_ln1_w, &w->clip_ln1_b, 1e-5f, &s->clip_a, err)) !=
            DS_OK ||
        (rc = ds__wan_linear(b, &s->clip_a, &w->clip_1, DS_ACT_GELU_ERF, &s->clip_b, err)) !=
            DS_OK ||
        (rc = ds__wan_linear(b, &s->clip_b, &w->clip_2, DS_ACT_NONE, &s->clip_c, err)) != DS_OK ||
        (rc = layer_norm(b, &s->clip_c, &w->clip_ln2_w, &w->clip_ln2_b, 1e-5f, out, err)) !=
            DS_OK ||
        d->clip_tokens == CLIP_TOKENS)
        return rc;
    /* CrossAttention takes the first 257 rows as the image's and the rest, the second frame's
     * rows before the text, as its context. */
    ds_slice_args first = {&s->img_all, 1, 0, &s->img};
    ds_slice_args second = {&s->img_all, 1, CLIP_TOKENS, &s->ki};
    const ds_tensor *parts[] = {&s->ki, &s->text};
    ds_concat_args cat = {parts, 2, 1, &s->ctx};
    if ((rc = ds_slice(b, NULL, &first, err)) != DS_OK ||
        (rc = ds_slice(b, NULL, &second, err)) != DS_OK)
        return rc;
    return ds_concat(b, NULL, &cat, err);
}

/* sinusoidal_embedding_1d ([cos | sin], in the compute dtype), time_embedding and
 * time_projection: t [R S, dim] and t_mod [R, S, 6, dim]. */
static int time_embedding(ds_backend *b, const ds__wan_dims *d, const input_weights *w,
                          ds__wan_state *s, ds_error *err)
{
    ds_timestep_embedding_args te = {&s->time_host, 1, 0.0f, 1.0f, 10000.0f, &s->freq};
    ds_activation_args act = {&s->t, DS_ACT_SILU, &s->t_silu};
    ds_tensor mod2 = ds_module_view(&s->t_mod, 2, SHAPE(d->mod_rows * d->mod_tokens, 6 * d->dim));
    int rc;
    if ((rc = ds_timestep_embedding(b, NULL, &te, err)) != DS_OK ||
        (rc = ds__wan_linear(b, &s->freq, &w->time_1, DS_ACT_SILU, &s->t_hidden, err)) != DS_OK ||
        (rc = ds__wan_linear(b, &s->t_hidden, &w->time_2, DS_ACT_NONE, &s->t, err)) != DS_OK ||
        (rc = ds_activate(b, NULL, &act, err)) != DS_OK)
        return rc;
    return ds__wan_linear(b, &s->t_silu, &w->time_projection, DS_ACT_NONE, &mod2, err);
}

/* Head: modulate(norm(x), shift, scale) with (modulation + t).chunk(2), then head; the result
 * unpatchified "b (f h w) (x y z c) -> b c (f x) (h y) (w z)". Its unit is held around it. */
static int head(ds_backend *b, ds_module_run *run, const ds__wan_dims *d, ds__wan_state *s,
                ds_tensor *noise, ds_error *err)
{
    output_weights w;
    ds_tensor t4 = ds_module_view(&s->t, 4, SHAPE(d->mod_rows, d->mod_tokens, 1, d->dim));
    const ds_tensor *twice[] = {&t4, &t4};
    ds_concat_args cat = {twice, 2, 2, &s->head_t};
    ds_tensor out5 = ds_module_view(&s->head_out, 5,
                                    SHAPE(d->batch, d->tokens, PATCH, PATCH, d->out_dim));
    ds_permute_args perm = {&out5, {0, 1, 4, 2, 3}, &s->head_perm};
    ds_tensor packed = ds_module_view(&s->head_perm, 3,
                                      SHAPE(d->batch, d->tokens, d->out_dim * PATCH * PATCH));
    ds_tensor stacked = ds_module_view(noise, 4, SHAPE(d->batch, d->out_dim,
                                                       d->frames * d->grid_h * PATCH,
                                                       d->grid_w * PATCH));
    ds_patchify_args unpack = {&stacked, PATCH, &packed};
    int rc;
    if ((rc = ds_module_use(run, OUTPUTS, 0, 0, &w, err)) != DS_OK ||
        (rc = ds_concat(b, NULL, &cat, err)) != DS_OK ||
        (rc = ds__wan_add_and_chunk(b, &s->head_t, &w.modulation, &s->head_t, 2, s->head_mod,
                                    err)) != DS_OK ||
        (rc = ds__wan_norm_modulate(b, d, &s->x, &s->head_mod[0], &s->head_mod[1], &s->xn, err)) !=
            DS_OK ||
        (rc = ds__wan_linear(b, &s->xn, &w.head, DS_ACT_NONE, &s->head_out, err)) != DS_OK ||
        (rc = ds_permute(b, NULL, &perm, err)) != DS_OK ||
        (rc = ds_unpatchify(b, NULL, &unpack, err)) != DS_OK)
        return rc;
    return ds_module_done(run, err);
}

/* ---- Inputs ---- */

static int float_dtype(ds_dtype t)
{
    return t == DS_F32 || t == DS_BF16;
}

/* Checks the inputs against the model; fills dims. */
static int check_inputs(const wan_config *c, const ds_wan_video_dit_inputs *in,
                        const ds_tensor *out, ds__wan_dims *d, ds_error *err)
{
    char expected[192];
    const ds_tensor *lat = in->latents;
    if (!lat || !in->timestep || !in->context || !out)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: latents, timestep, context and the output are required");
    snprintf(expected, sizeof expected,
             "[B, %lld, F, H, W] f32 or bf16 with H and W even (out_dim channels; patch size "
             "[1, 2, 2])", (long long)c->out_dim);
    if (!float_dtype(lat->dtype) || lat->ndim != 5 || lat->shape[0] < 1 ||
        lat->shape[1] != c->out_dim || lat->shape[2] < 1 || lat->shape[3] < PATCH ||
        lat->shape[4] < PATCH || lat->shape[3] % PATCH || lat->shape[4] % PATCH || !lat->data)
        return ds_module_bad_tensor("forward", "input", "latents", lat, expected, err);
    *d = (ds__wan_dims){.batch = lat->shape[0], .frames = lat->shape[2],
                    .grid_h = lat->shape[3] / PATCH, .grid_w = lat->shape[4] / PATCH,
                    .dim = c->dim, .heads = c->num_heads, .head_dim = c->dim / c->num_heads,
                    .ffn_dim = c->ffn_dim, .in_dim = c->in_dim, .out_dim = c->out_dim,
                    .text_dim = c->text_dim, .freq_dim = c->freq_dim, .eps = (float)c->eps,
                    .dtype = lat->dtype};
    d->tokens = d->frames * d->grid_h * d->grid_w;
    const char *dn = ds_dtype_name(d->dtype);

    snprintf(expected, sizeof expected, "[%lld, L, %lld] %s (latents' batch and dtype; text_dim)",
             (long long)d->batch, (long long)c->text_dim, dn);
    const ds_tensor *ctx = in->context;
    if (ctx->dtype != d->dtype || ctx->ndim != 3 || ctx->shape[0] != d->batch ||
        ctx->shape[1] < 1 || ctx->shape[2] != c->text_dim || !ctx->data)
        return ds_module_bad_tensor("forward", "input", "context", ctx, expected, err);
    d->text_len = ctx->shape[1];

    /* y is concatenated to the latents only when the model asks for it and has room. */
    int64_t y_channels = c->require_vae_embedding ? c->in_dim - c->out_dim : 0;
    if (c->in_dim != c->out_dim + y_channels)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: this WanModel takes %lld input channels and returns %lld "
                            "(in_dim %lld, out_dim %lld, require_vae_embedding %s): no input "
                            "fills the difference",
                            (long long)c->in_dim, (long long)c->out_dim, (long long)c->in_dim,
                            (long long)c->out_dim, c->require_vae_embedding ? "true" : "false");
    if (y_channels > 0) {
        snprintf(expected, sizeof expected, "[%lld, %lld, %lld, %lld, %lld] %s (in_dim - out_dim "
                 "channels; latents' batch, frames, height, width and dtype)",
                 (long long)d->batch, (long long)y_channels, (long long)lat->shape[2],
                 (long long)lat->shape[3], (long long)lat->shape[4], dn);
        const ds_tensor *y = in->y;
        if (!y)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "forward: input \"y\" is required: this WanModel has in_dim %lld "
                                "and out_dim %lld, expected %s",
                                (long long)c->in_dim, (long long)c->out_dim, expected);
        if (y->dtype != d->dtype || y->ndim != 5 || y->shape[0] != d->batch ||
            y->shape[1] != y_channels || y->shape[2] != lat->shape[2] ||
            y->shape[3] != lat->shape[3] || y->shape[4] != lat->shape[4] || !y->data)
            return ds_module_bad_tensor("forward", "input", "y", y, expected, err);
    } else if (in->y) {
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: input \"y\" given, but this WanModel takes none (in_dim "
                            "%lld, out_dim %lld, require_vae_embedding %s)",
                            (long long)c->in_dim, (long long)c->out_dim,
                            c->require_vae_embedding ? "true" : "false");
    }

    d->image = c->has_image_input;
    d->clip_tokens = c->has_image_pos_emb ? CLIP_POS_TOKENS : CLIP_TOKENS;
    d->ctx_len = d->text_len + (d->image ? d->clip_tokens - CLIP_TOKENS : 0);
    if (c->has_image_input) {
        snprintf(expected, sizeof expected, "[%lld, %lld, %d] %s (latents' batch and dtype%s)",
                 (long long)d->batch, (long long)d->clip_tokens, CLIP_DIM, dn,
                 c->has_image_pos_emb ? "; has_image_pos_emb: two frames' tokens" : "");
        const ds_tensor *clip = in->clip_feature;
        if (!clip)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "forward: input \"clip_feature\" is required by a WanModel with "
                                "has_image_input, expected %s", expected);
        if (!c->require_clip_embedding)
            return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                                "forward: has_image_input with require_clip_embedding false is "
                                "not implemented");
        if (clip->dtype != d->dtype || clip->ndim != 3 || clip->shape[0] != d->batch ||
            clip->shape[1] != d->clip_tokens || clip->shape[2] != CLIP_DIM || !clip->data)
            return ds_module_bad_tensor("forward", "input", "clip_feature", clip, expected, err);
    } else if (in->clip_feature) {
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: input \"clip_feature\" given, but this WanModel has no "
                            "image input (has_image_input false)");
    }

    const ds_tensor *t = in->timestep;
    int per_token = c->seperated_timestep && in->fuse_vae_embedding_in_latents;
    if (in->fuse_vae_embedding_in_latents && !c->seperated_timestep)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: fuse_vae_embedding_in_latents needs a WanModel with "
                            "seperated_timestep");
    snprintf(expected, sizeof expected, "%s f32 or f64",
             per_token ? "[1] (one timestep; the first frame's tokens get 0)"
                       : (d->batch == 1 ? "[1]" : "[B] or [1]"));
    if ((t->dtype != DS_F32 && t->dtype != DS_F64) || t->ndim != 1 ||
        (t->shape[0] != 1 && (per_token || t->shape[0] != d->batch)) || !t->data)
        return ds_module_bad_tensor("forward", "input", "timestep", t, expected, err);
    d->mod_rows = per_token ? 1 : d->batch;
    d->mod_tokens = per_token ? d->tokens : 1;

    if (out->dtype != d->dtype || !ds_tensor_same_shape(out, lat) || !out->data)
        return ds_module_bad_tensor("forward", "output", "noise_pred", out,
                                    "latents' shape and dtype", err);
    return DS_OK;
}

/* The VACE model against the DiT, its context against the latents. */
static int check_vace(const wan_config *c, const ds_wan_video_dit_inputs *in,
                      const ds__wan_dims *d, ds__wan_vace_config *vc, ds_error *err)
{
    char expected[192];
    int rc;
    if (!in->vace) {
        if (in->vace_context)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "forward: \"vace_context\" given without a VACE model");
        return DS_OK;
    }
    if ((rc = ds__wan_vace_config_of(in->vace, vc, err)) != DS_OK)
        return ds_error_prefix(err, "forward: aux model \"vace\": ");
    if (vc->dim != c->dim || vc->num_heads != c->num_heads || vc->ffn_dim != c->ffn_dim ||
        vc->eps != c->eps)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: the VACE model (dim %lld, num_heads %lld, ffn_dim %lld) "
                            "does not match the DiT (dim %lld, num_heads %lld, ffn_dim %lld)",
                            (long long)vc->dim, (long long)vc->num_heads,
                            (long long)vc->ffn_dim, (long long)c->dim, (long long)c->num_heads,
                            (long long)c->ffn_dim);
    if (vc->layers[vc->layer_count - 1] >= c->num_layers)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: the VACE model's vace_layers reach block %lld, the DiT has "
                            "%lld blocks", (long long)vc->layers[vc->layer_count - 1],
                            (long long)c->num_layers);
    if (!isfinite(in->vace_scale))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: vace_scale must be a finite number");
    const ds_tensor *lat = in->latents, *v = in->vace_context;
    snprintf(expected, sizeof expected,
             "[%lld, %lld, %lld, %lld, %lld] %s (vace_in_dim channels; latents' batch, frames, "
             "height, width and dtype)", (long long)d->batch, (long long)vc->in_dim,
             (long long)lat->shape[2], (long long)lat->shape[3], (long long)lat->shape[4],
             ds_dtype_name(d->dtype));
    if (!v)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: input \"vace_context\" is required with a VACE model, "
                            "expected %s", expected);
    if (v->dtype != d->dtype || v->ndim != 5 || v->shape[0] != d->batch ||
        v->shape[1] != vc->in_dim || v->shape[2] != lat->shape[2] ||
        v->shape[3] != lat->shape[3] || v->shape[4] != lat->shape[4] || !v->data)
        return ds_module_bad_tensor("forward", "input", "vace_context", v, expected, err);
    return DS_OK;
}

/* After DiT block i: x = x + hint * vace_scale for the VACE layer i. Upstream rounds the
 * scaled hint to the compute dtype before the sum, so the two stay separate; at scale 1 the
 * product is exact and skipped. */
static int add_hint(ds_backend *b, const ds__wan_vace_config *vc, float scale, int64_t block,
                    ds_tensor *hints, ds__wan_state *s, ds_error *err)
{
    for (int n = 0; n < vc->layer_count; n++) {
        if (vc->layers[n] != block)
            continue;
        ds_scale_args scaled = {&hints[n], scale, 0.0f, &hints[n]};
        ds_binary_args add = {&s->x, &hints[n], DS_BINARY_ADD, &s->x};
        int rc;
        if ((scale != 1.0f && (rc = ds_scale(b, NULL, &scaled, err)) != DS_OK) ||
            (rc = ds_binary(b, NULL, &add, err)) != DS_OK)
            return rc;
    }
    return DS_OK;
}

/* The timestep per conditioning row, rounded to the compute dtype as the pipeline passes it
 * (timestep.to(torch_dtype)); per token, the first frame's h w tokens get 0. */
static int upload_time(const ds__wan_dims *d, const ds_tensor *timestep, ds_backend *b,
                       ds__wan_state *s, ds_error *err)
{
    int64_t rows = d->mod_rows * d->mod_tokens;
    float *tv = malloc((size_t)rows * sizeof *tv);
    if (!tv)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "WanModel: out of memory");
    for (int64_t i = 0; i < rows; i++) {
        size_t k = timestep->shape[0] == 1 ? 0 : (size_t)i;
        float v = (float)ds_load_f64(timestep->data, timestep->dtype, k);
        if (d->mod_tokens > 1 && i < d->grid_h * d->grid_w)
            v = 0.0f;
        if (d->dtype == DS_BF16)
            v = ds_bf16_to_f32(ds_f32_to_bf16(v));
        tv[i] = v;
    }
    int rc = ds_tensor_alloc(b, DS_F32, 1, SHAPE(rows), &s->time_host, err);
    if (rc == DS_OK)
        rc = ds_tensor_upload(&s->time_host, tv, NULL, err);
    free(tv);
    return rc;
}

static int alloc_state(const ds__wan_dims *d, ds_backend *b, ds__wan_state *s, ds_error *err)
{
    int64_t B = d->batch, N = d->tokens, L = d->text_len, R = d->mod_rows, S = d->mod_tokens;
    int64_t D = d->dim;
    ds_dtype t = d->dtype;
    int rc;
    if ((rc = ds_module_alloc(b, DS_F32, 2, SHAPE(N, d->head_dim / 2),
                              DS_TENSORS(&s->cos, &s->sin), err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, N, d->in_dim * PATCH * PATCH),
                              DS_TENSORS(&s->packed), err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, N, D),
                              DS_TENSORS(&s->x, &s->xn, &s->q, &s->k, &s->v, &s->attn, &s->y),
                              err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, L, D), DS_TENSORS(&s->ctx_hidden), err)) !=
            DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, d->ctx_len, D),
                              DS_TENSORS(&s->ctx, &s->kc, &s->vc), err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 2, SHAPE(R * S, d->freq_dim), DS_TENSORS(&s->freq), err)) !=
            DS_OK ||
        (rc = ds_module_alloc(b, t, 2, SHAPE(R * S, D),
                              DS_TENSORS(&s->t_hidden, &s->t, &s->t_silu), err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 4, SHAPE(R, S, 6, D), DS_TENSORS(&s->t_mod, &s->mod_sum),
                              err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 4, SHAPE(R, S, 2, D), DS_TENSORS(&s->head_t), err)) !=
            DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, N, d->ffn_dim), DS_TENSORS(&s->hidden), err)) !=
            DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, N, d->out_dim * PATCH * PATCH),
                              DS_TENSORS(&s->head_out), err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 5, SHAPE(B, N, d->out_dim, PATCH, PATCH),
                              DS_TENSORS(&s->head_perm), err)) != DS_OK)
        return rc;
    for (int i = 0; i < 6; i++)
        if ((rc = ds_module_alloc(b, t, 4, SHAPE(R, S, 1, D), DS_TENSORS(&s->mod[i]), err)) !=
            DS_OK)
            return rc;
    for (int i = 0; i < 2; i++)
        if ((rc = ds_module_alloc(b, t, 4, SHAPE(R, S, 1, D), DS_TENSORS(&s->head_mod[i]),
                                  err)) != DS_OK)
            return rc;
    int64_t C = d->clip_tokens;
    if (d->image &&
        ((rc = ds_module_alloc(b, t, 3, SHAPE(B, C, CLIP_DIM), DS_TENSORS(&s->clip_a, &s->clip_b),
                               err)) != DS_OK ||
         (rc = ds_module_alloc(b, t, 3, SHAPE(B, C, D), DS_TENSORS(&s->clip_c), err)) != DS_OK ||
         (rc = ds_module_alloc(b, t, 3, SHAPE(B, CLIP_TOKENS, D),
                               DS_TENSORS(&s->img, &s->ki, &s->vi), err)) != DS_OK ||
         (rc = ds_module_alloc(b, t, 3, SHAPE(B, N, D), DS_TENSORS(&s->attn_img), err)) != DS_OK))
        return rc;
    if (d->image && C != CLIP_TOKENS &&
        ((rc = ds_module_alloc(b, t, 3, SHAPE(B, C, D), DS_TENSORS(&s->img_all), err)) != DS_OK ||
         (rc = ds_module_alloc(b, t, 3, SHAPE(B, L, D), DS_TENSORS(&s->text), err)) != DS_OK))
        return rc;
    return DS_OK;
}

/* x_in: the latents, or (with y) their concatenation with y along the channels. */
static int model_input(const ds__wan_dims *d, const ds_wan_video_dit_inputs *in, ds_backend *b,
                       ds__wan_state *s, ds_tensor *x_in, ds_error *err)
{
    int rc = ds_module_input(b, in->latents, &s->latents_dev, x_in, err);
    if (rc != DS_OK || !in->y)
        return rc;
    ds_tensor lat = *x_in, y;
    if ((rc = ds_module_input(b, in->y, &s->y_dev, &y, err)) != DS_OK ||
        (rc = ds_module_alloc(b, d->dtype, 5,
                              SHAPE(d->batch, d->in_dim, d->frames, d->grid_h * PATCH,
                                    d->grid_w * PATCH),
                              DS_TENSORS(&s->x_cat), err)) != DS_OK)
        return rc;
    const ds_tensor *parts[] = {&lat, &y};
    ds_concat_args cat = {parts, 2, 1, &s->x_cat};
    *x_in = s->x_cat;
    return ds_concat(b, NULL, &cat, err);
}

/* One turn of model_fn_wan_video's block loop: DiT block i, then the VACE hint of layer i if
 * there is one; cancellable before it, reported after it. */
static int dit_block(ds_backend *b, const ds_step_context *ctx, ds_module_run *run, int64_t i,
                     int64_t blocks, const ds__wan_dims *d, ds__wan_state *s,
                     const ds_wan_video_dit_inputs *in, const ds__wan_vace_config *vc,
                     ds_tensor *hints, ds_error *err)
{
    ds__wan_block_weights w;
    int rc = ds_module_cancelled(ctx, "forward", "block", i, blocks, err);
    if (rc != DS_OK)
        return rc;
    if ((rc = ds__wan_block(b, run, BLOCKS, i, d, s, &s->x, &w, err)) != DS_OK ||
        (rc = ds_module_done(run, err)) != DS_OK ||
        (in->vace && (rc = add_hint(b, vc, in->vace_scale, i, hints, s, err)) != DS_OK))
        return ds_error_prefix(err, "forward: block %lld: ", (long long)i);
    ds_module_progress(ctx, "forward", i, blocks);
    return DS_OK;
}

int ds_wan_video_dit_forward(const ds_loaded_model *m, const ds_step_context *ctx,
                             const ds_wan_video_dit_inputs *in, ds_tensor *noise_pred_out,
                             ds_error *err)
{
    wan_config c;
    ds__wan_dims d;
    ds__wan_state s;
    ds_module_run run;
    input_weights iw;
    ds__wan_vace_config vc = {0};
    ds_tensor hints[DS__WAN_VACE_LAYERS_MAX];
    memset(hints, 0, sizeof hints);
    memset(&s, 0, sizeof s);
    memset(&run, 0, sizeof run);
    ds_tensor *state[DS__WAN_STATE_TENSORS];
    size_t state_count = ds__wan_state_tensors(&s, state);
    if (!m || !ctx || !ctx->backend || !in)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "forward: no model, inputs or backend");
    /* The loaded model's kwargs, read as at load. */
    int rc = ds_kwargs_read(m->extra_kwargs_json, CLASS_NAME, read_config, &c, err);
    if (rc != DS_OK || (rc = check_inputs(&c, in, noise_pred_out, &d, err)) != DS_OK ||
        (rc = check_vace(&c, in, &d, &vc, err)) != DS_OK)
        return rc;
    ds_backend *b = ctx->backend;
    if ((rc = ds_module_open(&run, &modules, m, b, ctx->vram, 1, "forward", err)) != DS_OK)
        return rc;
    int64_t blocks = run.counts[BLOCKS];

    ds_tensor x_in, context, clip, noise;
    if ((rc = alloc_state(&d, b, &s, err)) != DS_OK ||
        (rc = model_input(&d, in, b, &s, &x_in, err)) != DS_OK ||
        (rc = ds_module_input(b, in->context, &s.context_dev, &context, err)) != DS_OK ||
        (d.image &&
         (rc = ds_module_input(b, in->clip_feature, &s.clip_dev, &clip, err)) != DS_OK) ||
        (rc = upload_time(&d, in->timestep, b, &s, err)) != DS_OK ||
        (rc = rope_tables(&d, &s, err)) != DS_OK ||
        (rc = ds_module_output(b, noise_pred_out, &s.noise, &noise, err)) != DS_OK ||
        (rc = ds_module_reserve(&run, "forward: activations",
                                     ds_module_bytes(state, state_count), err)) != DS_OK)
        goto done;
    for (int n = 0; n < vc.layer_count; n++)
        if ((rc = ds_module_alloc(b, d.dtype, 3, (const int64_t[]){d.batch, d.tokens, d.dim},
                                  DS_TENSORS(&hints[n]), err)) != DS_OK ||
            (rc = ds_module_reserve(&run, "forward: VACE hints", ds_tensor_nbytes(&hints[n]),
                                    err)) != DS_OK)
            goto done;

    /* t, t_mod; context = text_embedding(context); the CLIP tokens (with pos_emb, the second
     * frame's joining the context); patchify. */
    if ((rc = ds_module_use(&run, INPUTS, 0, 0, &iw, err)) != DS_OK ||
        (rc = time_embedding(b, &d, &iw, &s, err)) != DS_OK ||
        (rc = ds__wan_linear(b, &context, &iw.text_1, DS_ACT_GELU_TANH, &s.ctx_hidden, err)) !=
            DS_OK ||
        (rc = ds__wan_linear(b, &s.ctx_hidden, &iw.text_2, DS_ACT_NONE,
                             d.ctx_len == d.text_len ? &s.ctx : &s.text, err)) != DS_OK ||
        (d.image && (rc = image_embedding(b, &d, &iw, &clip, &s, err)) != DS_OK) ||
        (rc = ds__wan_patch_embedding(b, &d, &iw.patch_embedding, &x_in, &s.packed, &s.x, err)) !=
            DS_OK ||
        (rc = ds_module_done(&run, err)) != DS_OK)
        goto done;
    if (in->vace && (rc = ds__wan_vace_hints(in->vace, ctx, &d, &s, in->vace_context, hints,
                                             err)) != DS_OK)
        goto done;

    for (int64_t i = 0; rc == DS_OK && i < blocks; i++)
        rc = dit_block(b, ctx, &run, i, blocks, &d, &s, in, &vc, hints, err);
    if (rc == DS_OK && (rc = head(b, &run, &d, &s, &noise, err)) == DS_OK)
        rc = ds_module_deliver(b, &noise, noise_pred_out, err);
done:
    ds_module_close(&run);
    ds_module_free_n(state, state_count);
    for (int n = 0; n < DS__WAN_VACE_LAYERS_MAX; n++)
        ds_tensor_free(&hints[n]);
    return rc;
}

/* ---- The "forward" step ---- */

/* A boolean step parameter: absent (default 0), or true / false / 1 / 0. */
static int bool_param(const ds_step_io *in, const char *name, int *value, ds_error *err)
{
    const ds_step_param *p = ds_step_io_param(in, name);
    if (!p)
        return DS_OK;
    if (p->number != 0.0 && p->number != 1.0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: parameter \"%s\" is \"%s\", expected true or false", name,
                            p->text);
    *value = p->number != 0.0;
    return DS_OK;
}

/* The step's VACE branch: the aux model of role "vace", the input "vace_context" and the
 * parameter "vace_scale" (default 1, as model_fn_wan_video's). */
static int step_vace(const ds_step_context *ctx, const ds_step_io *in,
                     ds_wan_video_dit_inputs *args, ds_error *err)
{
    static const ds_dtype float_dtypes[] = {DS_F32, DS_BF16};
    const ds_step_param *scale = ds_step_io_param(in, "vace_scale");
    for (size_t i = 0; i < ctx->aux_count; i++) {
        const char *role = ctx->aux[i].role;
        if (!role || strcmp(role, "vace") != 0)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "forward: aux model of role \"%s\": a WanModel step takes only "
                                "\"vace\"", role ? role : "(none)");
        if (args->vace)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "forward: more than one model of role \"vace\"");
        args->vace = ctx->aux[i].model;
    }
    int rc = ds_step_io_require(in, "forward", "vace_context", 1, float_dtypes, 2, 5,
                                SHAPE(-1, -1, -1, -1, -1),
                                "[B, vace_in_dim, F, H, W] in latents' dtype",
                                &args->vace_context, err);
    if (rc != DS_OK)
        return rc;
    if (!args->vace && scale)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: \"vace_scale\" given without a model of role \"vace\"");
    return ds_step_param_finite(scale, "forward", &args->vace_scale, err);
}

static int forward_step(const ds_loaded_model *m, const ds_step_context *ctx,
                        const ds_step_io *in, ds_step_io *out, ds_error *err)
{
    static const char *const known[] = {"latents", "timestep", "context", "clip_feature", "y",
                                        "fuse_vae_embedding_in_latents", "vace_context",
                                        "vace_scale", NULL};
    static const ds_dtype float_dtypes[] = {DS_F32, DS_BF16};
    static const ds_dtype time_dtypes[] = {DS_F32, DS_F64};
    ds_wan_video_dit_inputs args = {.vace_scale = 1.0f};
    int rc;
    if ((rc = ds_step_io_check_names(in, "forward", known, err)) != DS_OK ||
        (rc = ds_step_io_require(in, "forward", "latents", 0, float_dtypes, 2, 5,
                                 SHAPE(-1, -1, -1, -1, -1),
                                 "[B, out_dim, F, H, W] f32 or bf16 with H and W even",
                                 &args.latents, err)) != DS_OK ||
        (rc = ds_step_io_require(in, "forward", "timestep", 0, time_dtypes, 2, 1, SHAPE(-1),
                                 "[B] or [1] f32 or f64", &args.timestep, err)) != DS_OK ||
        (rc = ds_step_io_require(in, "forward", "context", 0, &args.latents->dtype, 1, 3,
                                 SHAPE(-1, -1, -1), "[B, L, text_dim] in latents' dtype",
                                 &args.context, err)) != DS_OK ||
        (rc = ds_step_io_require(in, "forward", "clip_feature", 1, &args.latents->dtype, 1, 3,
                                 SHAPE(-1, -1, -1), "[B, 257 or 514, 1280] in latents' dtype",
                                 &args.clip_feature, err)) != DS_OK ||
        (rc = ds_step_io_require(in, "forward", "y", 1, &args.latents->dtype, 1, 5,
                                 SHAPE(-1, -1, -1, -1, -1),
                                 "[B, in_dim - out_dim, F, H, W] in latents' dtype", &args.y,
                                 err)) != DS_OK ||
        (rc = bool_param(in, "fuse_vae_embedding_in_latents",
                         &args.fuse_vae_embedding_in_latents, err)) != DS_OK)
        return rc;
    if ((rc = step_vace(ctx, in, &args, err)) != DS_OK)
        return rc;

    ds_backend *cpu = ctx->backend;
    ds_tensor *noise_pred;
    if (!cpu->host_memory && (rc = ds_cpu_fallback_backend(&cpu, err)) != DS_OK)
        return rc;
    if ((rc = ds_step_io_new_tensor(out, cpu, "noise_pred", args.latents->dtype, 5,
                                    args.latents->shape, &noise_pred, err)) != DS_OK)
        return rc;
    return ds_wan_video_dit_forward(m, ctx, &args, noise_pred, err);
}

static const ds_model_step steps[] = {
    {
        .name = "forward",
        .usage = "forward: latents [B, out_dim, F, H, W] (f32 or bf16, H and W even), timestep "
                 "[B] or [1] (0..1000), context [B, L, text_dim] (latents' dtype); clip_feature "
                 "[B, 257, 1280] (has_image_input models; [B, 514, 1280] with "
                 "has_image_pos_emb), y [B, in_dim - out_dim, F, H, W] (image-to-video models), "
                 "fuse_vae_embedding_in_latents (seperated_timestep models: the first frame at "
                 "timestep 0); with an aux model of role \"vace\" (a VaceWanModel): "
                 "vace_context [B, vace_in_dim, F, H, W], vace_scale (default 1) -> noise_pred "
                 "[B, out_dim, F, H, W]",
        .run = forward_step,
        .memory = ds_memory_wan_video_dit_forward,
    },
};

DS_MODEL_CLASS(ds__wan_video_dit_class, CLASS_NAME, declare_parameters, steps);
