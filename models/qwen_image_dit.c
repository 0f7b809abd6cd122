/* diffsynth/models/qwen_image_dit.py: the Qwen-Image MMDiT (facts §6).
 *
 * Width, heads, text width and patch channels are fixed in upstream's constructor; only the
 * depth and the two Qwen-Image-Layered switches are kwargs. The RoPE tables are plain
 * attributes, and the LayerNorms have no affine parameters, so neither appears here.
 *
 * The forward pass is the pipeline's model_fn_qwen_image on the text-to-image path (facts
 * §6.2), one function per upstream module, on the op API (kernels/ops.h). */
#include "models/qwen_image_dit.h"

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
#include "models/qwen_image_controlnet.h"
#include "models/weight_set.h"
#include "vram/vram_manager.h"

#define CLASS_NAME "diffsynth.models.qwen_image_dit.QwenImageDiT"

enum {
    DIM = 3072,       /* model width */
    HEAD_DIM = 128,   /* 24 heads */
    TEXT_DIM = 3584,  /* Qwen2.5-VL hidden size */
    PATCH_DIM = 64,   /* 16 latent channels x 2x2 patch */
    FREQ_DIM = 256,   /* sinusoidal timestep channels */
    HEADS = DIM / HEAD_DIM,
    MLP_DIM = 4 * DIM,
    LATENT_CHANNELS = 16,
    PATCH = 2,
    ROPE_PAIRS = HEAD_DIM / 2, /* one rotation angle per pair of a head's channels */
};

/* QwenImageTransformerBlock's parameters. */
typedef struct block_weights {
    ds__linear_weights img_mod;     /* [18432, 3072]: shift, scale, gate (attention), then (MLP) */
    ds__linear_weights to_q;        /* [3072, 3072]: image stream projections */
    ds__linear_weights to_k;
    ds__linear_weights to_v;
    ds_tensor norm_q;               /* [128]: per-head RMSNorm of image q */
    ds_tensor norm_k;               /* [128]: image k */
    ds__linear_weights add_q;       /* [3072, 3072]: text stream projections */
    ds__linear_weights add_k;
    ds__linear_weights add_v;
    ds_tensor norm_added_q;         /* [128]: text q */
    ds_tensor norm_added_k;         /* [128]: text k */
    ds__linear_weights to_out;      /* [3072, 3072]: image attention output */
    ds__linear_weights to_add_out;  /* [3072, 3072]: text attention output */
    ds__linear_weights img_mlp_in;  /* [12288, 3072] */
    ds__linear_weights img_mlp_out; /* [3072, 12288] */
    ds__linear_weights txt_mod;     /* [18432, 3072]: the same as img_mod for the text stream */
    ds__linear_weights txt_mlp_in;  /* [12288, 3072] */
    ds__linear_weights txt_mlp_out; /* [3072, 12288] */
} block_weights;

/* The parameters outside the blocks. */
typedef struct outer_weights {
    ds__linear_weights time_1;   /* [3072, 256]: timestep_embedder.linear_1 */
    ds__linear_weights time_2;   /* [3072, 3072]: timestep_embedder.linear_2 */
    ds_tensor addition_t;        /* [2, 3072]: Qwen-Image-Layered only, never bound */
    ds_tensor txt_norm;          /* [3584]: RMSNorm of the prompt embedding */
    ds__linear_weights img_in;   /* [3072, 64] */
    ds__linear_weights txt_in;   /* [3072, 3584] */
    ds__linear_weights norm_out; /* [6144, 3072]: final scale, shift */
    ds__linear_weights proj_out; /* [64, 3072] */
} outer_weights;

/* What the kwargs decide (ds_module dims). */
enum { KW_LAYERS, KW_ADDITIONAL_T_COND, KW_COUNT };

/* The module groups, in registration order, and each group's transfer units: the weights one
 * stretch of the forward uses, so that no unit is much larger than what that stretch needs (a
 * whole block is half of a 2-block model). */
enum { INPUTS, BLOCKS, OUTPUTS };
enum { MODULATION, ATTENTION, IMG_MLP, TXT_MLP };
static const char *const input_units[] = {"input"};
static const char *const block_units[] = {"modulation", "attention", "img_mlp", "txt_mlp"};
static const char *const output_units[] = {"output"};

#define OUTER(f) offsetof(outer_weights, f)
#define BLOCK(f) offsetof(block_weights, f)
#define LINEAR(name, out, in, unit, field) {name, DS_MODULE_LINEAR, 2, {out, in}, unit, field, 0}
#define NORM(name, n, unit, field) {name, DS_MODULE_NORM, 1, {n}, unit, field, 0}
#define COUNT(a) (sizeof a / sizeof a[0])

/* The RoPE tables are plain attributes and the LayerNorms have no affine parameters, so
 * neither appears. addition_t_embedding (Qwen-Image-Layered) is declared, never run. */
static const ds_module input_modules[] = {
    LINEAR("time_text_embed.timestep_embedder.linear_1", DIM, FREQ_DIM, 0, OUTER(time_1)),
    LINEAR("time_text_embed.timestep_embedder.linear_2", DIM, DIM, 0, OUTER(time_2)),
    {"time_text_embed.addition_t_embedding", DS_MODULE_EMBEDDING, 2, {2, DIM}, DS_MODULE_NO_UNIT,
     OUTER(addition_t), DS_MODULE_IF(KW_ADDITIONAL_T_COND)},
    NORM("txt_norm", TEXT_DIM, 0, OUTER(txt_norm)),
    LINEAR("img_in", DIM, PATCH_DIM, 0, OUTER(img_in)),
    LINEAR("txt_in", DIM, TEXT_DIM, 0, OUTER(txt_in)),
};

/* QwenImageTransformerBlock: img_mod, attn, img_mlp, txt_mod, txt_mlp. */
static const ds_module block_modules[] = {
    LINEAR("img_mod.1", 6 * DIM, DIM, MODULATION, BLOCK(img_mod)),
    LINEAR("attn.to_q", DIM, DIM, ATTENTION, BLOCK(to_q)),
    LINEAR("attn.to_k", DIM, DIM, ATTENTION, BLOCK(to_k)),
    LINEAR("attn.to_v", DIM, DIM, ATTENTION, BLOCK(to_v)),
    NORM("attn.norm_q", HEAD_DIM, ATTENTION, BLOCK(norm_q)),
    NORM("attn.norm_k", HEAD_DIM, ATTENTION, BLOCK(norm_k)),
    LINEAR("attn.add_q_proj", DIM, DIM, ATTENTION, BLOCK(add_q)),
    LINEAR("attn.add_k_proj", DIM, DIM, ATTENTION, BLOCK(add_k)),
    LINEAR("attn.add_v_proj", DIM, DIM, ATTENTION, BLOCK(add_v)),
    NORM("attn.norm_added_q", HEAD_DIM, ATTENTION, BLOCK(norm_added_q)),
    NORM("attn.norm_added_k", HEAD_DIM, ATTENTION, BLOCK(norm_added_k)),
    LINEAR("attn.to_out.0", DIM, DIM, ATTENTION, BLOCK(to_out)),
    LINEAR("attn.to_add_out", DIM, DIM, ATTENTION, BLOCK(to_add_out)),
    LINEAR("img_mlp.net.0.proj", MLP_DIM, DIM, IMG_MLP, BLOCK(img_mlp_in)),
    LINEAR("img_mlp.net.2", DIM, MLP_DIM, IMG_MLP, BLOCK(img_mlp_out)),
    LINEAR("txt_mod.1", 6 * DIM, DIM, MODULATION, BLOCK(txt_mod)),
    LINEAR("txt_mlp.net.0.proj", MLP_DIM, DIM, TXT_MLP, BLOCK(txt_mlp_in)),
    LINEAR("txt_mlp.net.2", DIM, MLP_DIM, TXT_MLP, BLOCK(txt_mlp_out)),
};

static const ds_module output_modules[] = {
    LINEAR("norm_out.linear", 2 * DIM, DIM, 0, OUTER(norm_out)),
    LINEAR("proj_out", PATCH_DIM, DIM, 0, OUTER(proj_out)),
};

static const ds_module_group groups[] = {
    [INPUTS] = {"", 0, input_modules, COUNT(input_modules), input_units, COUNT(input_units)},
    [BLOCKS] = {"transformer_blocks.%lld.", DS_MODULE_DIM(KW_LAYERS), block_modules,
                COUNT(block_modules), block_units, COUNT(block_units)},
    [OUTPUTS] = {"", 0, output_modules, COUNT(output_modules), output_units,
                 COUNT(output_units)},
};

static const ds_module_model modules = {"QwenImageDiT", "qwen_image_dit", groups, COUNT(groups)};

static int declare_parameters(ds_kwargs *kwargs, ds_state_dict *params, ds_error *err)
{
    int64_t dims[KW_COUNT] = {[KW_LAYERS] = 60};
    int use_layer3d_rope = 0, use_additional_t_cond = 0;
    int rc;
    /* use_layer3d_rope only swaps the RoPE implementation, which holds no parameters. */
    if ((rc = ds__kwarg_int_range(kwargs, CLASS_NAME, "num_layers", 0, DS__PARAM_LAYERS_MAX,
                                  &dims[KW_LAYERS], err)) != DS_OK ||
        (rc = ds_kwargs_bool(kwargs, "use_layer3d_rope", &use_layer3d_rope, err)) != DS_OK ||
        (rc = ds_kwargs_bool(kwargs, "use_additional_t_cond", &use_additional_t_cond, err)) !=
            DS_OK ||
        (rc = ds_kwargs_check_all_used(kwargs, err)) != DS_OK)
        return rc;
    dims[KW_ADDITIONAL_T_COND] = use_additional_t_cond;
    return ds_module_declare(&modules, dims, params, err);
}
/* ---- Forward pass ---- */

#define NORM_EPS 1e-6f /* every LayerNorm and RMSNorm of the model */
#define ROPE_THETA 10000.0f

/* Sizes of one forward call. */
typedef struct dit_dims {
    int64_t batch;     /* B */
    int64_t grid_h;    /* H / 2: token rows (latent rows are even) */
    int64_t grid_w;    /* W / 2: token columns */
    int64_t text_len;  /* L: prompt tokens */
    int64_t image_len; /* N = grid_h * grid_w: image tokens */
    int64_t seq_len;   /* L + N: the joint attention sequence, text first */
    ds_dtype dtype;    /* compute dtype: the latents' */
} dit_dims;

/* Activations, all on the compute backend in the compute dtype unless noted. */
typedef struct dit_state {
    ds_tensor timestep;     /* [B] f32: timestep / 1000, rounded as upstream */
    ds_tensor key_mask;     /* [B, L + N] u8, or no data when every key is valid */
    ds_tensor img_cos;      /* [N, 64] f32: RoPE of the image tokens */
    ds_tensor img_sin;      /* [N, 64] f32 */
    ds_tensor txt_cos;      /* [L, 64] f32: RoPE of the text tokens */
    ds_tensor txt_sin;      /* [L, 64] f32 */
    ds_tensor latents;      /* [B, 16, H, W]: upload of the input (non-CPU backends) */
    ds_tensor prompt;       /* [B, L, 3584]: upload of the input (non-CPU backends) */
    ds_tensor prompt_normed;/* [B, L, 3584]: txt_norm(prompt_emb) */
    ds_tensor packed;       /* [B, N, 64]: 2x2-packed latents, later proj_out's output */
    ds_tensor temb_freq;    /* [B, 256]: sinusoidal timestep embedding */
    ds_tensor temb_hidden;  /* [B, 3072]: SiLU(linear_1(temb_freq)) */
    ds_tensor temb;         /* [B, 3072]: the conditioning */
    ds_tensor temb_silu;    /* [B, 3072]: SiLU(temb), the input of every modulation linear */
    ds_tensor image;        /* [B, N, 3072]: image stream */
    ds_tensor text;         /* [B, L, 3072]: text stream */
    ds_tensor mod;          /* [B, 6, 3072]: one stream's modulation linear output */
    ds_tensor img_mod[6];   /* [B, 1, 3072] each: shift, scale, gate (attention), (MLP) */
    ds_tensor txt_mod[6];   /* [B, 1, 3072] each: the same for text */
    ds_tensor img_x;        /* [B, N, 3072]: normed and modulated image stream */
    ds_tensor txt_x;        /* [B, L, 3072]: normed and modulated text stream */
    ds_tensor img_raw;      /* [B, N, 24, 128]: q or k projection before its RMSNorm */
    ds_tensor txt_raw;      /* [B, L, 24, 128] */
    ds_tensor img_q;        /* [B, N, 24, 128] */
    ds_tensor img_k;        /* [B, N, 24, 128] */
    ds_tensor img_v;        /* [B, N, 24, 128] */
    ds_tensor txt_q;        /* [B, L, 24, 128] */
    ds_tensor txt_k;        /* [B, L, 24, 128] */
    ds_tensor txt_v;        /* [B, L, 24, 128] */
    ds_tensor q;            /* [B, L + N, 24, 128]: joint [text, image] */
    ds_tensor k;            /* [B, L + N, 24, 128] */
    ds_tensor v;            /* [B, L + N, 24, 128] */
    ds_tensor attn;         /* [B, L + N, 24, 128]: attention output */
    ds_tensor img_attn;     /* [B, N, 24, 128]: its image part */
    ds_tensor txt_attn;     /* [B, L, 24, 128]: its text part */
    ds_tensor img_out;      /* [B, N, 3072]: attention or MLP output of the image stream */
    ds_tensor txt_out;      /* [B, L, 3072] */
    ds_tensor img_hidden;   /* [B, N, 12288]: MLP hidden layer */
    ds_tensor txt_hidden;   /* [B, L, 12288] */
    ds_tensor out_mod;      /* [B, 2, 3072]: norm_out's linear output */
    ds_tensor out_scale;    /* [B, 1, 3072] */
    ds_tensor out_shift;    /* [B, 1, 3072] */
    ds_tensor noise;        /* [B, 16, H, W]: the result (non-CPU backends) */
    ds_tensor cn_input;     /* [Bc, C, H, W]: upload of the ControlNet conditioning (non-CPU) */
    ds_tensor cn_packed;    /* [Bc, N, 4 C]: its 2x2 packing */
    ds_tensor cn_cond;      /* [Bc, N, 3072]: img_in of that, the same for every block */
} dit_state;

#define STATE_TENSORS 56

/* Every tensor of the state, for freeing and counting; returns how many. */
static size_t state_tensors(dit_state *s, ds_tensor **out)
{
    ds_tensor *all[] = {
        &s->timestep, &s->key_mask, &s->img_cos, &s->img_sin, &s->txt_cos, &s->txt_sin,
        &s->latents, &s->prompt, &s->prompt_normed, &s->packed, &s->temb_freq, &s->temb_hidden,
        &s->temb, &s->temb_silu, &s->image, &s->text, &s->mod, &s->img_x, &s->txt_x,
        &s->img_raw, &s->txt_raw, &s->img_q, &s->img_k, &s->img_v, &s->txt_q, &s->txt_k,
        &s->txt_v, &s->q, &s->k, &s->v, &s->attn, &s->img_attn, &s->txt_attn, &s->img_out,
        &s->txt_out, &s->img_hidden, &s->txt_hidden, &s->out_mod, &s->out_scale, &s->out_shift,
        &s->noise, &s->cn_input, &s->cn_packed, &s->cn_cond,
    };
    size_t n = 0;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        out[n++] = all[i];
    for (int i = 0; i < 6; i++) {
        out[n++] = &s->img_mod[i];
        out[n++] = &s->txt_mod[i];
    }
    return n;
}

static void state_free(dit_state *s)
{
    ds_tensor *all[STATE_TENSORS];
    size_t n = state_tensors(s, all);
    for (size_t i = 0; i < n; i++)
        ds_tensor_free(all[i]);
}

/* Bytes the state holds in the compute backend's memory (inputs used in place hold none). */
static size_t state_bytes(dit_state *s)
{
    ds_tensor *all[STATE_TENSORS];
    return ds_module_bytes(all, state_tensors(s, all));
}

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}


static int linear(ds_backend *b, const ds_tensor *x, const ds__linear_weights *w, ds_activation act,
                  ds_tensor *y, ds_error *err)
{
    ds_linear_args a = {x, &w->weight, &w->bias, 1.0f, act, y};
    return ds_linear(b, NULL, &a, err);
}

/* x[B, S, 3072] -> LayerNorm (no affine) -> * (1 + scale) + shift. */
static int norm_modulate(ds_backend *b, const ds_tensor *x, const ds_tensor *shift,
                         const ds_tensor *scale, ds_tensor *y, ds_error *err)
{
    ds_layer_norm_args ln = {x, NULL, NULL, NORM_EPS, y};
    ds_modulate_args mod = {y, scale, shift, y};
    int rc = ds_layer_norm(b, NULL, &ln, err);
    return rc != DS_OK ? rc : ds_modulate(b, NULL, &mod, err);
}

/* Splits a [B, n * 3072] modulation linear output, viewed [B, n, 3072], into n [B, 1, 3072]
 * parts, in upstream's chunk order. */
static int split_mod(ds_backend *b, const ds_tensor *mod, int n, ds_tensor *parts, ds_error *err)
{
    ds_tensor whole = ds_module_view(mod, 3, SHAPE(mod->shape[0], n, DIM));
    for (int i = 0; i < n; i++) {
        ds_slice_args a = {&whole, 1, i, &parts[i]};
        int rc = ds_slice(b, NULL, &a, err);
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

/* ---- RoPE tables (QwenEmbedRope, scale_rope=True) ---- */

/* One token's 64 angles: 8 frame pairs, 28 height pairs, 28 width pairs (axes_dim 16, 56, 56).
 * Upstream builds freq = 1 / theta^(2j/d) and angle = pos * freq in float32 (torch.polar over
 * float32), so the angle is rounded exactly as there before its cos and sin. */
static void rope_row(float *cos_row, float *sin_row, int64_t pos_frame, int64_t pos_h,
                     int64_t pos_w)
{
    static const int axes_dim[3] = {16, 56, 56};
    const int64_t pos[3] = {pos_frame, pos_h, pos_w};
    int col = 0;
    for (int a = 0; a < 3; a++) {
        int d = axes_dim[a];
        for (int j = 0; j < d / 2; j++, col++) {
            float exponent = (float)(2 * j) / (float)d;
            float freq = 1.0f / powf(ROPE_THETA, exponent);
            float angle = (float)pos[a] * freq;
            cos_row[col] = (float)cos((double)angle);
            sin_row[col] = (float)sin((double)angle);
        }
    }
}

/* Image token (y, x) of the grid_h x grid_w grid is centred: height position
 * y - (grid_h - grid_h / 2), width x - (grid_w - grid_w / 2), frame 0. Text token j sits after
 * the image's largest half extent, on all three axes: max(grid_h / 2, grid_w / 2) + j. */
static int rope_tables(const dit_dims *d, dit_state *s, ds_error *err)
{
    int64_t n = d->image_len, l = d->text_len;
    float *host = malloc((size_t)(2 * (n + l) * ROPE_PAIRS) * sizeof *host);
    if (!host)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "QwenImageDiT: out of memory for RoPE");
    float *img_cos = host, *img_sin = img_cos + n * ROPE_PAIRS;
    float *txt_cos = img_sin + n * ROPE_PAIRS, *txt_sin = txt_cos + l * ROPE_PAIRS;
    for (int64_t y = 0; y < d->grid_h; y++)
        for (int64_t x = 0; x < d->grid_w; x++) {
            int64_t t = y * d->grid_w + x;
            rope_row(img_cos + t * ROPE_PAIRS, img_sin + t * ROPE_PAIRS, 0,
                     y - (d->grid_h - d->grid_h / 2), x - (d->grid_w - d->grid_w / 2));
        }
    int64_t text_start = d->grid_h / 2 > d->grid_w / 2 ? d->grid_h / 2 : d->grid_w / 2;
    for (int64_t j = 0; j < l; j++)
        rope_row(txt_cos + j * ROPE_PAIRS, txt_sin + j * ROPE_PAIRS, text_start + j,
                 text_start + j, text_start + j);
    int rc;
    if ((rc = ds_tensor_upload(&s->img_cos, img_cos, NULL, err)) != DS_OK ||
        (rc = ds_tensor_upload(&s->img_sin, img_sin, NULL, err)) != DS_OK ||
        (rc = ds_tensor_upload(&s->txt_cos, txt_cos, NULL, err)) != DS_OK ||
        (rc = ds_tensor_upload(&s->txt_sin, txt_sin, NULL, err)) != DS_OK) {
        free(host);
        return rc;
    }
    free(host);
    return DS_OK;
}

/* ---- Modules ---- */

/* time_text_embed(timestep / 1000, dtype): the 256-channel sinusoid [cos | sin] at scale 1000,
 * stored in the compute dtype (upstream's .to(dtype)), then linear_1 -> SiLU -> linear_2. */
static int timestep_embedder(ds_backend *b, const outer_weights *w, dit_state *s, ds_error *err)
{
    ds_timestep_embedding_args te = {&s->timestep, 1, 0.0f, 1000.0f, 10000.0f, &s->temb_freq};
    int rc;
    if ((rc = ds_timestep_embedding(b, NULL, &te, err)) != DS_OK ||
        (rc = linear(b, &s->temb_freq, &w->time_1, DS_ACT_SILU, &s->temb_hidden, err)) != DS_OK ||
        (rc = linear(b, &s->temb_hidden, &w->time_2, DS_ACT_NONE, &s->temb, err)) != DS_OK)
        return rc;
    /* Every consumer of temb (img_mod, txt_mod, norm_out) applies SiLU first: do it once. */
    ds_activation_args act = {&s->temb, DS_ACT_SILU, &s->temb_silu};
    return ds_activate(b, NULL, &act, err);
}

/* One q or k projection: linear, per-head RMSNorm, RoPE; [B, S, 3072] -> [B, S, 24, 128]. */
static int project_qk(ds_backend *b, const ds_tensor *x, const ds__linear_weights *proj,
                      const ds_tensor *norm, const ds_tensor *cos, const ds_tensor *sin,
                      ds_tensor *raw, ds_tensor *out, ds_error *err)
{
    ds_tensor raw3 = ds_module_view(raw, 3, SHAPE(raw->shape[0], raw->shape[1], DIM));
    ds_rms_norm_args rn = {raw, norm, NORM_EPS, out};
    ds_rope_args rope = {out, cos, sin, DS_ROPE_INTERLEAVED, out};
    int rc;
    if ((rc = linear(b, x, proj, DS_ACT_NONE, &raw3, err)) != DS_OK ||
        (rc = ds_rms_norm(b, NULL, &rn, err)) != DS_OK)
        return rc;
    return ds_rope(b, NULL, &rope, err);
}

/* QwenDoubleStreamAttention: both streams projected to 24 heads, q and k RMS-normed and
 * rotated, one attention over [text, image], split back, and each part projected out. */
static int block_attention(ds_backend *b, const dit_dims *d, const block_weights *w,
                           dit_state *s, ds_error *err)
{
    int64_t B = d->batch, N = d->image_len, L = d->text_len;
    ds_tensor img_v3 = ds_module_view(&s->img_v, 3, SHAPE(B, N, DIM));
    ds_tensor txt_v3 = ds_module_view(&s->txt_v, 3, SHAPE(B, L, DIM));
    int rc;
    if ((rc = project_qk(b, &s->img_x, &w->to_q, &w->norm_q, &s->img_cos, &s->img_sin,
                         &s->img_raw, &s->img_q, err)) != DS_OK ||
        (rc = project_qk(b, &s->img_x, &w->to_k, &w->norm_k, &s->img_cos, &s->img_sin,
                         &s->img_raw, &s->img_k, err)) != DS_OK ||
        (rc = linear(b, &s->img_x, &w->to_v, DS_ACT_NONE, &img_v3, err)) != DS_OK ||
        (rc = project_qk(b, &s->txt_x, &w->add_q, &w->norm_added_q, &s->txt_cos, &s->txt_sin,
                         &s->txt_raw, &s->txt_q, err)) != DS_OK ||
        (rc = project_qk(b, &s->txt_x, &w->add_k, &w->norm_added_k, &s->txt_cos, &s->txt_sin,
                         &s->txt_raw, &s->txt_k, err)) != DS_OK ||
        (rc = linear(b, &s->txt_x, &w->add_v, DS_ACT_NONE, &txt_v3, err)) != DS_OK)
        return rc;

    /* The joint sequence puts text first, as upstream's torch.cat([txt, img]). */
    const ds_tensor *qs[] = {&s->txt_q, &s->img_q}, *ks[] = {&s->txt_k, &s->img_k},
                    *vs[] = {&s->txt_v, &s->img_v};
    ds_concat_args cq = {qs, 2, 1, &s->q}, ck = {ks, 2, 1, &s->k}, cv = {vs, 2, 1, &s->v};
    ds_attention_args at = {&s->q, &s->k, &s->v, s->key_mask.data ? &s->key_mask : NULL,
                            1.0f / sqrtf((float)HEAD_DIM), 0, &s->attn};
    ds_slice_args st = {&s->attn, 1, 0, &s->txt_attn}, si = {&s->attn, 1, L, &s->img_attn};
    if ((rc = ds_concat(b, NULL, &cq, err)) != DS_OK ||
        (rc = ds_concat(b, NULL, &ck, err)) != DS_OK ||
        (rc = ds_concat(b, NULL, &cv, err)) != DS_OK ||
        (rc = ds_attention(b, NULL, &at, err)) != DS_OK ||
        (rc = ds_slice(b, NULL, &st, err)) != DS_OK ||
        (rc = ds_slice(b, NULL, &si, err)) != DS_OK)
        return rc;

    ds_tensor img_attn3 = ds_module_view(&s->img_attn, 3, SHAPE(B, N, DIM));
    ds_tensor txt_attn3 = ds_module_view(&s->txt_attn, 3, SHAPE(B, L, DIM));
    if ((rc = linear(b, &img_attn3, &w->to_out, DS_ACT_NONE, &s->img_out, err)) != DS_OK ||
        (rc = linear(b, &txt_attn3, &w->to_add_out, DS_ACT_NONE, &s->txt_out, err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* x += gate * MLP(LN(x) * (1 + scale) + shift), MLP = Linear -> x sigmoid(1.702 x) -> Linear. */
static int stream_mlp(ds_backend *b, ds_tensor *x, const ds_tensor *mod,
                      const ds__linear_weights *in, const ds__linear_weights *out,
                      ds_tensor *normed, ds_tensor *hidden, ds_tensor *y, ds_error *err)
{
    ds_gated_residual_args res = {x, &mod[5], y, x};
    int rc;
    if ((rc = norm_modulate(b, x, &mod[3], &mod[4], normed, err)) != DS_OK ||
        (rc = linear(b, normed, in, DS_ACT_GELU_SIGMOID, hidden, err)) != DS_OK ||
        (rc = linear(b, hidden, out, DS_ACT_NONE, y, err)) != DS_OK)
        return rc;
    return ds_gated_residual(b, NULL, &res, err);
}

/* QwenImageTransformerBlock.forward, the engine making each unit's weights usable just before
 * their first use (modulation, attention, img_mlp, txt_mlp). */
static int transformer_block(ds_backend *b, ds_module_run *r, int64_t i, const dit_dims *d,
                             dit_state *s, ds_error *err)
{
    block_weights w;
    ds_tensor mod2 = ds_module_view(&s->mod, 2, SHAPE(d->batch, 6 * DIM));
    ds_gated_residual_args img_res = {&s->image, &s->img_mod[2], &s->img_out, &s->image};
    ds_gated_residual_args txt_res = {&s->text, &s->txt_mod[2], &s->txt_out, &s->text};
    int rc;
    /* img_mod(temb), txt_mod(temb): [shift, scale, gate] for the attention, then the MLP. */
    if ((rc = ds_module_use(r, BLOCKS, i, MODULATION, &w, err)) != DS_OK ||
        (rc = linear(b, &s->temb_silu, &w.img_mod, DS_ACT_NONE, &mod2, err)) != DS_OK ||
        (rc = split_mod(b, &s->mod, 6, s->img_mod, err)) != DS_OK ||
        (rc = linear(b, &s->temb_silu, &w.txt_mod, DS_ACT_NONE, &mod2, err)) != DS_OK ||
        (rc = split_mod(b, &s->mod, 6, s->txt_mod, err)) != DS_OK)
        return rc;
    /* image += img_gate * attn(img_norm1(image) modulated); text likewise, in the same attn. */
    if ((rc = ds_module_use(r, BLOCKS, i, ATTENTION, &w, err)) != DS_OK ||
        (rc = norm_modulate(b, &s->image, &s->img_mod[0], &s->img_mod[1], &s->img_x, err)) !=
            DS_OK ||
        (rc = norm_modulate(b, &s->text, &s->txt_mod[0], &s->txt_mod[1], &s->txt_x, err)) !=
            DS_OK ||
        (rc = block_attention(b, d, &w, s, err)) != DS_OK ||
        (rc = ds_gated_residual(b, NULL, &img_res, err)) != DS_OK ||
        (rc = ds_gated_residual(b, NULL, &txt_res, err)) != DS_OK)
        return rc;
    /* image += img_gate_2 * img_mlp(img_norm2(image) modulated), then text. */
    if ((rc = ds_module_use(r, BLOCKS, i, IMG_MLP, &w, err)) != DS_OK ||
        (rc = stream_mlp(b, &s->image, s->img_mod, &w.img_mlp_in, &w.img_mlp_out, &s->img_x,
                         &s->img_hidden, &s->img_out, err)) != DS_OK ||
        (rc = ds_module_use(r, BLOCKS, i, TXT_MLP, &w, err)) != DS_OK ||
        (rc = stream_mlp(b, &s->text, s->txt_mod, &w.txt_mlp_in, &w.txt_mlp_out, &s->txt_x,
                         &s->txt_hidden, &s->txt_out, err)) != DS_OK)
        return rc;
    return ds_module_done(r, err);
}
/* norm_out (AdaLayerNorm single: scale first, then shift) and proj_out, then the 2x2
 * unpacking into noise [B, 16, H, W]. */
static int norm_out_forward(ds_backend *b, const dit_dims *d, const outer_weights *w,
                            dit_state *s, ds_tensor *noise, ds_error *err)
{
    ds_tensor mod2 = ds_module_view(&s->out_mod, 2, SHAPE(d->batch, 2 * DIM));
    ds_tensor parts[2] = {s->out_scale, s->out_shift};
    ds_patchify_args up = {noise, PATCH, &s->packed};
    int rc;
    if ((rc = linear(b, &s->temb_silu, &w->norm_out, DS_ACT_NONE, &mod2, err)) != DS_OK ||
        (rc = split_mod(b, &s->out_mod, 2, parts, err)) != DS_OK ||
        (rc = norm_modulate(b, &s->image, &parts[1], &parts[0], &s->img_x, err)) != DS_OK ||
        (rc = linear(b, &s->img_x, &w->proj_out, DS_ACT_NONE, &s->packed, err)) != DS_OK)
        return rc;
    return ds_unpatchify(b, NULL, &up, err);
}

/* ---- Inputs ---- */

/* latents' message, shared by the step and the entry point. */
#define LATENTS_EXPECTED "[B, 16, H, W] f32 or bf16 with H and W even"

static int is_int_mask(ds_dtype d)
{
    return d == DS_I64 || d == DS_I32 || d == DS_U8 || d == DS_BOOL;
}

/* Shapes and dtypes of the forward's inputs and output; fills dims. */
static int check_inputs(const ds_tensor *latents, const ds_tensor *prompt_emb,
                        const ds_tensor *prompt_mask, const ds_tensor *timestep,
                        const ds_tensor *noise_pred, dit_dims *d, ds_error *err)
{
    char expected[128];
    if (!latents || !prompt_emb || !timestep || !noise_pred)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: latents, prompt_emb, timestep and the output are required");
    const int64_t *ls = latents->shape;
    if ((latents->dtype != DS_F32 && latents->dtype != DS_BF16) || latents->ndim != 4 ||
        ls[1] != LATENT_CHANNELS || ls[0] < 1 || ls[2] < 2 || ls[3] < 2 || ls[2] % 2 ||
        ls[3] % 2)
        return ds_module_bad_tensor("forward", "input", "latents", latents, LATENTS_EXPECTED, err);
    *d = (dit_dims){.batch = ls[0], .grid_h = ls[2] / 2, .grid_w = ls[3] / 2,
                    .dtype = latents->dtype};
    d->image_len = d->grid_h * d->grid_w;

    const char *dn = ds_dtype_name(d->dtype);
    snprintf(expected, sizeof expected, "[%lld, L, %d] %s (latents' batch and dtype)",
             (long long)d->batch, TEXT_DIM, dn);
    if (prompt_emb->dtype != d->dtype || prompt_emb->ndim != 3 ||
        prompt_emb->shape[0] != d->batch || prompt_emb->shape[1] < 1 ||
        prompt_emb->shape[2] != TEXT_DIM)
        return ds_module_bad_tensor("forward", "input", "prompt_emb", prompt_emb, expected, err);
    d->text_len = prompt_emb->shape[1];
    d->seq_len = d->text_len + d->image_len;

    snprintf(expected, sizeof expected, "[%lld, %lld] i64, i32, u8 or bool", (long long)d->batch,
             (long long)d->text_len);
    if (prompt_mask && (!is_int_mask(prompt_mask->dtype) || prompt_mask->ndim != 2 ||
                        prompt_mask->shape[0] != d->batch ||
                        prompt_mask->shape[1] != d->text_len))
        return ds_module_bad_tensor("forward", "input", "prompt_emb_mask", prompt_mask, expected, err);

    snprintf(expected, sizeof expected, "[%lld] or [1] f32 or f64", (long long)d->batch);
    if ((timestep->dtype != DS_F32 && timestep->dtype != DS_F64) || timestep->ndim != 1 ||
        (timestep->shape[0] != d->batch && timestep->shape[0] != 1))
        return ds_module_bad_tensor("forward", "input", "timestep", timestep, expected, err);

    if (noise_pred->dtype != d->dtype || !ds_tensor_same_shape(noise_pred, latents) ||
        !noise_pred->data)
        return ds_module_bad_tensor("forward", "input", "noise_pred", noise_pred, "latents' shape and dtype", err);
    return DS_OK;
}

/* What the pipeline feeds the model: the timestep cast to the compute dtype
 * (timestep.to(torch_dtype)), then divided by 1000 in that dtype (model_fn_qwen_image). */
static float model_timestep(double t, ds_dtype dtype)
{
    float f = (float)t;
    if (dtype == DS_BF16) {
        f = ds_bf16_to_f32(ds_f32_to_bf16(f));
        return ds_bf16_to_f32(ds_f32_to_bf16(f / 1000.0f));
    }
    return f / 1000.0f;
}

/* timestep / 1000 per batch row, and the attention key mask when the prompt has padding. */
static int upload_conditions(const dit_dims *d, const ds_tensor *timestep,
                             const ds_tensor *prompt_mask, ds_backend *b, dit_state *s,
                             ds_error *err)
{
    float *tv = malloc((size_t)d->batch * sizeof *tv);
    if (!tv)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "QwenImageDiT: out of memory");
    for (int64_t i = 0; i < d->batch; i++)
        tv[i] = model_timestep(ds_load_f64(timestep->data, timestep->dtype,
                                           timestep->shape[0] == 1 ? 0 : (size_t)i),
                               d->dtype);
    int rc = ds_tensor_alloc(b, DS_F32, 1, SHAPE(d->batch), &s->timestep, err);
    if (rc == DS_OK)
        rc = ds_tensor_upload(&s->timestep, tv, NULL, err);
    free(tv);
    if (rc != DS_OK || !prompt_mask)
        return rc;

    uint64_t count = (uint64_t)(d->batch * d->text_len);
    size_t esize = ds_dtype_size(prompt_mask->dtype);
    int padded = 0;
    for (uint64_t i = 0; i < count && !padded; i++) {
        const unsigned char *e = (const unsigned char *)prompt_mask->data + i * esize;
        int nonzero = 0;
        for (size_t k = 0; k < esize; k++)
            nonzero |= e[k] != 0;
        padded = !nonzero;
    }
    if (!padded)
        return DS_OK; /* all ones: the same as no mask, and the attention runs unmasked */

    /* Text keys follow the mask; image keys are always valid. */
    uint8_t *mask = malloc((size_t)(d->batch * d->seq_len));
    if (!mask)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "QwenImageDiT: out of memory");
    for (int64_t bi = 0; bi < d->batch; bi++)
        for (int64_t j = 0; j < d->seq_len; j++) {
            uint8_t keep = 1;
            if (j < d->text_len) {
                const unsigned char *e = (const unsigned char *)prompt_mask->data +
                                         (size_t)(bi * d->text_len + j) * esize;
                keep = 0;
                for (size_t k = 0; k < esize; k++)
                    keep |= e[k] != 0;
            }
            mask[bi * d->seq_len + j] = keep;
        }
    rc = ds_tensor_alloc(b, DS_U8, 2, SHAPE(d->batch, d->seq_len), &s->key_mask, err);
    if (rc == DS_OK)
        rc = ds_tensor_upload(&s->key_mask, mask, NULL, err);
    free(mask);
    return rc;
}

/* Every activation, in the compute dtype unless noted. */
static int alloc_state(const dit_dims *d, ds_backend *b, dit_state *s, ds_error *err)
{
    int64_t B = d->batch, N = d->image_len, L = d->text_len, S = d->seq_len;
    ds_dtype t = d->dtype;
    int rc;
    if ((rc = ds_module_alloc(b, DS_F32, 2, SHAPE(N, ROPE_PAIRS),
                              DS_TENSORS(&s->img_cos, &s->img_sin), err)) != DS_OK ||
        (rc = ds_module_alloc(b, DS_F32, 2, SHAPE(L, ROPE_PAIRS),
                              DS_TENSORS(&s->txt_cos, &s->txt_sin), err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, L, TEXT_DIM), DS_TENSORS(&s->prompt_normed),
                              err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, N, PATCH_DIM), DS_TENSORS(&s->packed), err)) !=
            DS_OK ||
        (rc = ds_module_alloc(b, t, 2, SHAPE(B, FREQ_DIM), DS_TENSORS(&s->temb_freq), err)) !=
            DS_OK ||
        (rc = ds_module_alloc(b, t, 2, SHAPE(B, DIM),
                              DS_TENSORS(&s->temb_hidden, &s->temb, &s->temb_silu), err)) !=
            DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, N, DIM),
                              DS_TENSORS(&s->image, &s->img_x, &s->img_out), err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, L, DIM),
                              DS_TENSORS(&s->text, &s->txt_x, &s->txt_out), err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, 6, DIM), DS_TENSORS(&s->mod), err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 4, SHAPE(B, N, HEADS, HEAD_DIM),
                              DS_TENSORS(&s->img_raw, &s->img_q, &s->img_k, &s->img_v,
                                         &s->img_attn),
                              err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 4, SHAPE(B, L, HEADS, HEAD_DIM),
                              DS_TENSORS(&s->txt_raw, &s->txt_q, &s->txt_k, &s->txt_v,
                                         &s->txt_attn),
                              err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 4, SHAPE(B, S, HEADS, HEAD_DIM),
                              DS_TENSORS(&s->q, &s->k, &s->v, &s->attn), err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, N, MLP_DIM), DS_TENSORS(&s->img_hidden), err)) !=
            DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, L, MLP_DIM), DS_TENSORS(&s->txt_hidden), err)) !=
            DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, 2, DIM), DS_TENSORS(&s->out_mod), err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, 1, DIM), DS_TENSORS(&s->out_scale, &s->out_shift),
                              err)) != DS_OK)
        return rc;
    for (int i = 0; i < 6; i++)
        if ((rc = ds_module_alloc(b, t, 3, SHAPE(B, 1, DIM),
                                  DS_TENSORS(&s->img_mod[i], &s->txt_mod[i]), err)) != DS_OK)
            return rc;
    return DS_OK;
}

/* controlnet_conditioning's message: latents' batch (or 1), H, W and dtype, and `channels`. */
static void conditioning_expected(const ds_tensor *latents, int64_t channels, char *buf,
                                  size_t size)
{
    char batch[32] = "1";
    if (latents->shape[0] != 1)
        snprintf(batch, sizeof batch, "%lld or 1", (long long)latents->shape[0]);
    snprintf(buf, size,
             "[%s, %lld, %lld, %lld] %s (latents' batch or 1, H, W and dtype; %lld channels for "
             "this ControlNet)",
             batch, (long long)channels, (long long)latents->shape[2],
             (long long)latents->shape[3], ds_dtype_name(latents->dtype), (long long)channels);
}

/* The ControlNet against the DiT, its conditioning against the latents. */
static int check_controlnet(const ds_loaded_model *m, const ds_qwen_image_dit_controlnet *cn,
                            const ds_tensor *latents, ds_qwen_image_controlnet_shape *shape,
                            ds_error *err)
{
    char expected[192];
    if (!cn->model || !cn->conditioning)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: a ControlNet needs both the model and the input "
                            "\"controlnet_conditioning\"");
    if (ds_qwen_image_controlnet_shape_of(cn->model, shape, err) != DS_OK)
        return ds_error_prefix(err, "forward: ");
    if (shape->dim != DIM || shape->in_features % (PATCH * PATCH) != 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: the ControlNet has width %lld and img_in takes %lld "
                            "features, expected width %d and a multiple of %d features",
                            (long long)shape->dim, (long long)shape->in_features, DIM,
                            PATCH * PATCH);
    int64_t blocks = ds_module_count(&modules, m, BLOCKS);
    if (shape->blocks < blocks)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: the ControlNet has %lld blocks, fewer than the DiT's %lld "
                            "(ControlNet block i follows DiT block i)",
                            (long long)shape->blocks, (long long)blocks);
    if (!isfinite(cn->scale))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: controlnet_scale must be a finite number");

    const ds_tensor *c = cn->conditioning;
    const int64_t *ls = latents->shape;
    int64_t channels = shape->in_features / (PATCH * PATCH);
    conditioning_expected(latents, channels, expected, sizeof expected);
    if (c->dtype != latents->dtype || c->ndim != 4 || (c->shape[0] != ls[0] && c->shape[0] != 1) ||
        c->shape[1] != channels || c->shape[2] != ls[2] || c->shape[3] != ls[3] || !c->data)
        return ds_module_bad_tensor("forward", "input", "controlnet_conditioning", c, expected, err);
    return DS_OK;
}

/* process_controlnet_conditioning: cn_cond = img_in(pack(conditioning)), before the blocks.
 * With a manager (the DiT's run streams) the ControlNet streams its weights beside the DiT's
 * and the conditioning's activations join the run's reservation. */
static int controlnet_begin(const ds_qwen_image_dit_controlnet *opt, const dit_dims *d,
                            ds_backend *b, ds_vram_manager *mgr, ds_module_run *run,
                            int64_t blocks, dit_state *s, ds_qwen_image_controlnet *cn,
                            ds_error *err)
{
    const ds_tensor *host = opt->conditioning;
    int64_t cond_batch = host->shape[0], features = host->shape[1] * PATCH * PATCH;
    ds_tensor input;
    ds_patchify_args pack = {&input, PATCH, &s->cn_packed};
    int rc;
    if ((rc = ds_qwen_image_controlnet_open(opt->model, b, d->dtype, d->batch, cond_batch,
                                            d->image_len, cn, err)) != DS_OK ||
        (rc = ds_module_input(b, host, &s->cn_input, &input, err)) != DS_OK ||
        (rc = ds_tensor_alloc(b, d->dtype, 3, SHAPE(cond_batch, d->image_len, features),
                              &s->cn_packed, err)) != DS_OK ||
        (rc = ds_tensor_alloc(b, d->dtype, 3, SHAPE(cond_batch, d->image_len, DIM), &s->cn_cond,
                              err)) != DS_OK)
        return rc;
    /* The ControlNet streams beside the DiT through the pool's manager; a DiT whose weights
     * are only kept converted (ds_step_context.convert) leaves it bound from its tree. */
    if (mgr) {
        size_t bytes = ds_tensor_nbytes(&s->cn_packed) + ds_tensor_nbytes(&s->cn_cond) +
                       (s->cn_input.data ? ds_tensor_nbytes(&s->cn_input) : 0);
        if ((rc = ds_module_reserve(run, "forward: ControlNet activations", bytes, err)) !=
                DS_OK ||
            (rc = ds_qwen_image_controlnet_stream(cn, mgr, run->vram, blocks, err)) != DS_OK)
            return rc;
    }
    if ((rc = ds_patchify(b, NULL, &pack, err)) != DS_OK ||
        (rc = ds_qwen_image_controlnet_process_conditioning(cn, &s->cn_packed, &s->cn_cond,
                                                            err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* After DiT block i: image += scale * controlnet_blocks[i](image, cn_cond). Upstream rounds the
 * scaled residual to the compute dtype before the sum (res = output * scale; image + res), so
 * the two steps stay separate; at scale 1 the product is exact and skipped. */
static int controlnet_residual(ds_backend *b, ds_qwen_image_controlnet *cn, float scale,
                               int64_t block, dit_state *s, ds_error *err)
{
    ds_scale_args scaled = {&s->img_out, scale, 0.0f, &s->img_out};
    ds_binary_args add = {&s->image, &s->img_out, DS_BINARY_ADD, &s->image};
    int rc;
    if ((rc = ds_qwen_image_controlnet_blockwise_forward(cn, &s->image, &s->cn_cond, block,
                                                         &s->img_out, err)) != DS_OK ||
        (scale != 1.0f && (rc = ds_scale(b, NULL, &scaled, err)) != DS_OK) ||
        (rc = ds_binary(b, NULL, &add, err)) != DS_OK)
        return rc;
    return DS_OK;
}

int ds_qwen_image_dit_forward(const ds_loaded_model *m, const ds_step_context *ctx,
                              const ds_tensor *latents, const ds_tensor *prompt_emb,
                              const ds_tensor *prompt_mask, const ds_tensor *timestep,
                              ds_tensor *noise_pred_out, ds_error *err)
{
    return ds_qwen_image_dit_forward_controlnet(m, ctx, latents, prompt_emb, prompt_mask,
                                                timestep, NULL, noise_pred_out, err);
}

int ds_qwen_image_dit_forward_controlnet(const ds_loaded_model *m, const ds_step_context *ctx,
                                         const ds_tensor *latents, const ds_tensor *prompt_emb,
                                         const ds_tensor *prompt_mask, const ds_tensor *timestep,
                                         const ds_qwen_image_dit_controlnet *controlnet,
                                         ds_tensor *noise_pred_out, ds_error *err)
{
    dit_dims d = {0};
    dit_state s;
    outer_weights ow;
    ds_module_run run;
    ds_qwen_image_controlnet cn;
    ds_qwen_image_controlnet_shape cn_shape;
    memset(&s, 0, sizeof s);
    memset(&cn, 0, sizeof cn);
    memset(&run, 0, sizeof run);
    int rc = check_inputs(latents, prompt_emb, prompt_mask, timestep, noise_pred_out, &d, err);
    if (rc != DS_OK)
        return rc;
    if (!m || !ctx || !ctx->backend)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "forward: no model or no backend");
    if (controlnet && (rc = check_controlnet(m, controlnet, latents, &cn_shape, err)) != DS_OK)
        return rc;
    if (ds_module_find(&modules, m, INPUTS, 0, OUTER(addition_t)))
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "forward: the Qwen-Image-Layered DiT (use_additional_t_cond, layer "
                            "3D RoPE) is not implemented");
    ds_backend *b = ctx->backend;
    if ((rc = ds_module_open_compute(&run, &modules, m, b, ctx->vram, ctx->convert, d.dtype, 1,
                                     "forward", err)) != DS_OK)
        return rc;
    int64_t blocks = run.counts[BLOCKS];

    /* The activations share the budget with the weights. */
    ds_tensor lat, prompt, noise;
    if ((rc = alloc_state(&d, b, &s, err)) != DS_OK ||
        (rc = ds_module_input(b, latents, &s.latents, &lat, err)) != DS_OK ||
        (rc = ds_module_input(b, prompt_emb, &s.prompt, &prompt, err)) != DS_OK ||
        (rc = upload_conditions(&d, timestep, prompt_mask, b, &s, err)) != DS_OK ||
        (rc = rope_tables(&d, &s, err)) != DS_OK ||
        (rc = ds_module_output(b, noise_pred_out, &s.noise, &noise, err)) != DS_OK ||
        (rc = ds_module_reserve(&run, "forward: activations", state_bytes(&s), err)) != DS_OK)
        goto done;

    /* Inputs: image = img_in(pack(latents)); text = txt_in(txt_norm(prompt_emb)); temb. */
    ds_patchify_args pack = {&lat, PATCH, &s.packed};
    ds_rms_norm_args txt_norm = {&prompt, &ow.txt_norm, NORM_EPS, &s.prompt_normed};
    if ((rc = ds_module_use(&run, INPUTS, 0, 0, &ow, err)) != DS_OK ||
        (rc = ds_patchify(b, NULL, &pack, err)) != DS_OK ||
        (rc = linear(b, &s.packed, &ow.img_in, DS_ACT_NONE, &s.image, err)) != DS_OK ||
        (rc = ds_rms_norm(b, NULL, &txt_norm, err)) != DS_OK ||
        (rc = linear(b, &s.prompt_normed, &ow.txt_in, DS_ACT_NONE, &s.text, err)) != DS_OK ||
        (rc = timestep_embedder(b, &ow, &s, err)) != DS_OK ||
        (rc = ds_module_done(&run, err)) != DS_OK)
        goto done;
    if (controlnet && (rc = controlnet_begin(controlnet, &d, b, ctx->vram, &run, blocks, &s, &cn,
                                             err)) != DS_OK)
        goto done;

    /* The transformer blocks, cancellable between any two. */
    for (int64_t i = 0; i < blocks; i++) {
        if ((rc = ds_module_cancelled(ctx, "forward", "block", i, blocks, err)) != DS_OK)
            goto done;
        rc = transformer_block(b, &run, i, &d, &s, err);
        if (rc == DS_OK && controlnet)
            rc = controlnet_residual(b, &cn, controlnet->scale, i, &s, err);
        if (rc != DS_OK) {
            ds_error_prefix(err, "forward: block %lld: ", (long long)i);
            goto done;
        }
        ds_module_progress(ctx, "forward", i, blocks);
    }

    /* Output: norm_out, proj_out, unpack to [B, 16, H, W]. */
    if ((rc = ds_module_use(&run, OUTPUTS, 0, 0, &ow, err)) == DS_OK &&
        (rc = norm_out_forward(b, &d, &ow, &s, &noise, err)) == DS_OK &&
        (rc = ds_module_done(&run, err)) == DS_OK)
        rc = ds_module_deliver(b, &noise, noise_pred_out, err);
done:
    ds_module_close(&run);
    ds_qwen_image_controlnet_close(&cn);
    state_free(&s);
    return rc;
}

/* ---- The "forward" step ---- */

/* The step's ControlNet: the aux model of role "controlnet", the input
 * "controlnet_conditioning" and the parameter "controlnet_scale" (default 1, as upstream's
 * ControlNetInput). Either of the first two without the other is an error; so is a scale
 * with neither. */
static int step_controlnet(const ds_step_context *ctx, const ds_step_io *in,
                           const ds_tensor *latents, ds_qwen_image_dit_controlnet *out,
                           ds_error *err)
{
    const ds_step_param *scale = ds_step_io_param(in, "controlnet_scale");
    int rc;
    for (size_t i = 0; i < ctx->aux_count; i++) {
        if (!ctx->aux[i].role || strcmp(ctx->aux[i].role, "controlnet") != 0)
            continue;
        if (out->model)
            return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                                "forward: more than one model of role \"controlnet\" (one "
                                "Blockwise ControlNet per step is implemented)");
        out->model = ctx->aux[i].model;
    }
    if (!out->model) {
        if (ds_step_io_tensor(in, "controlnet_conditioning") || scale)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "forward: \"%s\" given without a model of role \"controlnet\"",
                                scale ? "controlnet_scale" : "controlnet_conditioning");
        return DS_OK;
    }

    ds_qwen_image_controlnet_shape shape;
    if ((rc = ds_qwen_image_controlnet_shape_of(out->model, &shape, err)) != DS_OK)
        return ds_error_prefix(err, "forward: aux model \"controlnet\": ");
    int64_t channels = shape.in_features / (PATCH * PATCH);
    char expected[192];
    conditioning_expected(latents, channels, expected, sizeof expected);
    if ((rc = ds_step_io_require(in, "forward", "controlnet_conditioning", 0, &latents->dtype, 1,
                                 4, SHAPE(-1, channels, latents->shape[2], latents->shape[3]),
                                 expected, &out->conditioning, err)) != DS_OK)
        return rc;
    if (out->conditioning->shape[0] != latents->shape[0] && out->conditioning->shape[0] != 1)
        return ds_module_bad_tensor("forward", "input", "controlnet_conditioning", out->conditioning, expected, err);
    return ds_step_param_finite(scale, "forward", &out->scale, err);
}

static int forward_step(const ds_loaded_model *m, const ds_step_context *ctx, const ds_step_io *in,
                        ds_step_io *out, ds_error *err)
{
    static const char *const known[] = {"latents", "prompt_emb", "prompt_emb_mask", "timestep",
                                        "controlnet_conditioning", "controlnet_scale", NULL};
    static const ds_dtype float_dtypes[] = {DS_F32, DS_BF16};
    static const ds_dtype mask_dtypes[] = {DS_I64, DS_I32, DS_U8, DS_BOOL};
    static const ds_dtype time_dtypes[] = {DS_F32, DS_F64};
    const ds_tensor *latents, *prompt_emb, *mask, *timestep;
    char expected[128];
    int rc;
    if ((rc = ds_step_io_check_names(in, "forward", known, err)) != DS_OK ||
        (rc = ds_step_io_require(in, "forward", "latents", 0, float_dtypes, 2, 4,
                                 SHAPE(-1, LATENT_CHANNELS, -1, -1), LATENTS_EXPECTED, &latents,
                                 err)) != DS_OK)
        return rc;
    if (latents->shape[2] % 2 || latents->shape[3] % 2 || latents->shape[2] < 2 ||
        latents->shape[3] < 2 || latents->shape[0] < 1)
        return ds_module_bad_tensor("forward", "input", "latents", latents, LATENTS_EXPECTED, err);
    int64_t batch = latents->shape[0];
    snprintf(expected, sizeof expected, "[%lld, L, %d] %s (latents' batch and dtype)",
             (long long)batch, TEXT_DIM, ds_dtype_name(latents->dtype));
    if ((rc = ds_step_io_require(in, "forward", "prompt_emb", 0, &latents->dtype, 1, 3,
                                 SHAPE(batch, -1, TEXT_DIM), expected, &prompt_emb, err)) != DS_OK)
        return rc;
    snprintf(expected, sizeof expected, "[%lld, %lld] i64, i32, u8 or bool", (long long)batch,
             (long long)prompt_emb->shape[1]);
    if ((rc = ds_step_io_require(in, "forward", "prompt_emb_mask", 1, mask_dtypes, 4, 2,
                                 SHAPE(batch, prompt_emb->shape[1]), expected, &mask, err)) !=
        DS_OK)
        return rc;
    snprintf(expected, sizeof expected, "[%lld] or [1] f32 or f64", (long long)batch);
    if ((rc = ds_step_io_require(in, "forward", "timestep", 0, time_dtypes, 2, 1, SHAPE(-1),
                                 expected, &timestep, err)) != DS_OK)
        return rc;

    ds_qwen_image_dit_controlnet controlnet = {.scale = 1.0f};
    if ((rc = step_controlnet(ctx, in, latents, &controlnet, err)) != DS_OK)
        return rc;

    ds_backend *cpu = ctx->backend;
    ds_tensor *noise_pred;
    if (!cpu->host_memory && (rc = ds_cpu_fallback_backend(&cpu, err)) != DS_OK)
        return rc;
    if ((rc = ds_step_io_new_tensor(out, cpu, "noise_pred", latents->dtype, 4, latents->shape,
                                    &noise_pred, err)) != DS_OK)
        return rc;
    return ds_qwen_image_dit_forward_controlnet(m, ctx, latents, prompt_emb, mask, timestep,
                                                controlnet.model ? &controlnet : NULL, noise_pred,
                                                err);
}

static const ds_model_step steps[] = {
    {
        .name = "forward",
        .run = forward_step,
        .memory = ds_memory_qwen_image_dit_forward,
        .usage = "forward: latents [B, 16, H, W] (f32 or bf16, H and W even), prompt_emb "
                 "[B, L, 3584] (latents' dtype), prompt_emb_mask [B, L] (optional), timestep [B] "
                 "or [1] (0..1000); with an aux model of role \"controlnet\" (a "
                 "QwenImageBlockWiseControlNet): controlnet_conditioning [B or 1, C, H, W] "
                 "(C = 16, or 17 with an inpaint mask), controlnet_scale (default 1) -> "
                 "noise_pred [B, 16, H, W]",
    },
};

DS_MODEL_CLASS(ds__qwen_image_dit_class, CLASS_NAME, declare_parameters, steps);
