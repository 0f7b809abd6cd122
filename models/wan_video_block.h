/* DiTBlock of diffsynth/models/wan_video_dit.py, shared by WanModel and VaceWanModel (whose
 * VaceWanAttentionBlock is a DiTBlock with projections around it): the block's module entries,
 * one forward's sizes and activations, and the block's forward on the op API. */
#ifndef DS_MODELS_WAN_VIDEO_BLOCK_H
#define DS_MODELS_WAN_VIDEO_BLOCK_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "kernels/backend.h"
#include "models/module.h"
#include "models/weight_set.h"

/* The spatial patch; the temporal one is 1. */
#define DS__WAN_PATCH 2

/* A block's transfer units, in the order its forward uses them. */
enum { DS__WAN_SELF_ATTN, DS__WAN_CROSS_ATTN, DS__WAN_FFN, DS__WAN_BLOCK_UNITS };
extern const char *const ds__wan_block_units[DS__WAN_BLOCK_UNITS];

/* DiTBlock's parameters (with VaceWanAttentionBlock's after_proj). */
typedef struct ds__wan_block_weights {
    ds_tensor modulation;        /* [1, 6, dim] */
    ds__linear_weights sa_q, sa_k, sa_v, sa_o;
    ds_tensor sa_norm_q, sa_norm_k; /* [dim]: RMSNorm over the whole width */
    ds__linear_weights ca_q, ca_k, ca_v, ca_o;
    ds_tensor ca_norm_q, ca_norm_k;
    ds__linear_weights ca_k_img, ca_v_img;
    ds_tensor ca_norm_k_img;
    ds_tensor norm3_w, norm3_b;  /* LayerNorm with affine before the cross-attention */
    ds__linear_weights ffn_1;    /* [ffn_dim, dim] */
    ds__linear_weights ffn_2;    /* [dim, ffn_dim] */
    ds__linear_weights after_proj; /* VACE blocks only: [dim, dim] */
} ds__wan_block_weights;


#define DS__WAN_BLOCK(f) offsetof(ds__wan_block_weights, f)
#define DS__WAN_LINEAR(name, out, in, unit, field, when) \
    {name, DS_MODULE_LINEAR, 2, {out, in}, unit, field, when}
#define DS__WAN_VEC(name, n, unit, field, when) {name, DS_MODULE_NORM, 1, {n}, unit, field, when}
/* A LayerNorm's bias, by its full name. */
#define DS__WAN_BIAS(name, n, unit, field, when) \
    {name, DS_MODULE_TENSOR, 1, {n}, unit, field, when}

/* SelfAttention's and CrossAttention's shared entries: q, k, v, o and the q/k RMSNorms of the
 * attention named `attn` ("self_attn"), in unit `unit`, into fields f##_q ... f##_norm_k. */
#define DS__WAN_ATTENTION_MODULES(attn, unit, f, dim)                                           \
    DS__WAN_LINEAR(attn ".q", (dim), (dim), unit, DS__WAN_BLOCK(f##_q), 0),                     \
    DS__WAN_LINEAR(attn ".k", (dim), (dim), unit, DS__WAN_BLOCK(f##_k), 0),                     \
    DS__WAN_LINEAR(attn ".v", (dim), (dim), unit, DS__WAN_BLOCK(f##_v), 0),                     \
    DS__WAN_LINEAR(attn ".o", (dim), (dim), unit, DS__WAN_BLOCK(f##_o), 0),                     \
    DS__WAN_VEC(attn ".norm_q", (dim), unit, DS__WAN_BLOCK(f##_norm_q), 0),                     \
    DS__WAN_VEC(attn ".norm_k", (dim), unit, DS__WAN_BLOCK(f##_norm_k), 0)

/* DiTBlock's module entries in state_dict order (its own modulation first); dim and ffn are
 * shape entries (DS_MODULE_DIM), image the `when` of the CLIP keys. */
#define DS__WAN_BLOCK_MODULES(dim, ffn, image) \
    {"modulation", DS_MODULE_TENSOR, 3, {1, 6, (dim)}, DS__WAN_SELF_ATTN,                        \
     DS__WAN_BLOCK(modulation), 0},                                                              \
    DS__WAN_ATTENTION_MODULES("self_attn", DS__WAN_SELF_ATTN, sa, dim),                          \
    DS__WAN_ATTENTION_MODULES("cross_attn", DS__WAN_CROSS_ATTN, ca, dim),                        \
    DS__WAN_LINEAR("cross_attn.k_img", (dim), (dim), DS__WAN_CROSS_ATTN, DS__WAN_BLOCK(ca_k_img), \
           (image)),                                                                            \
    DS__WAN_LINEAR("cross_attn.v_img", (dim), (dim), DS__WAN_CROSS_ATTN, DS__WAN_BLOCK(ca_v_img), \
           (image)),                                                                            \
    DS__WAN_VEC("cross_attn.norm_k_img", (dim), DS__WAN_CROSS_ATTN, DS__WAN_BLOCK(ca_norm_k_img), \
        (image)),                                                                               \
    DS__WAN_VEC("norm3", (dim), DS__WAN_CROSS_ATTN, DS__WAN_BLOCK(norm3_w), 0),                 \
    DS__WAN_BIAS("norm3.bias", (dim), DS__WAN_CROSS_ATTN, DS__WAN_BLOCK(norm3_b), 0),           \
    DS__WAN_LINEAR("ffn.0", (ffn), (dim), DS__WAN_FFN, DS__WAN_BLOCK(ffn_1), 0),                \
    DS__WAN_LINEAR("ffn.2", (dim), (ffn), DS__WAN_FFN, DS__WAN_BLOCK(ffn_2), 0),

typedef struct ds__wan_dims {
    int64_t batch, frames, grid_h, grid_w; /* B and the token grid f x h x w */
    int64_t tokens;      /* N = f h w */
    int64_t text_len;    /* L */
    int64_t clip_tokens; /* CLIP rows into img_emb: 257, or 514 (two frames) with its pos_emb */
    int64_t ctx_len;     /* the cross-attention's text keys: L, and with 514 CLIP rows the
                          * second frame's 257 too (upstream splits off only the first 257) */
    int64_t mod_rows;    /* R: rows of the time conditioning (B, or 1 with per-token time) */
    int64_t mod_tokens;  /* S: 1, or N with per-token time */
    int64_t dim, heads, head_dim, ffn_dim, in_dim, out_dim, text_dim, freq_dim;
    float eps;
    int image;           /* CLIP tokens in the cross-attention */
    ds_dtype dtype;
} ds__wan_dims;

typedef struct ds__wan_state {
    ds_tensor time_host;   /* [R * S] f32: the timestep per conditioning row */
    ds_tensor cos, sin;    /* [N, head_dim / 2] f32: 3-D RoPE */
    ds_tensor latents_dev, y_dev, context_dev, clip_dev; /* uploads (non-host backends) */
    ds_tensor x_cat;       /* [B, in_dim, F, H, W]: latents with y concatenated */
    ds_tensor packed;      /* [B, N, in_dim * 4] */
    ds_tensor x;           /* [B, N, dim]: the token stream */
    ds_tensor ctx_hidden;  /* [B, L, dim] */
    ds_tensor ctx;         /* [B, ctx_len, dim]: the cross-attention's context */
    ds_tensor clip_a, clip_b; /* [B, 257, 1280] */
    ds_tensor clip_c;      /* [B, 257, dim] */
    ds_tensor img;         /* [B, 257, dim]: img_emb(clip_feature), the first 257 rows */
    ds_tensor img_all;     /* [B, 514, dim]: img_emb(clip_feature) with pos_emb */
    ds_tensor text;        /* [B, L, dim]: text_embedding(context) with pos_emb */
    ds_tensor freq;        /* [R S, freq_dim] */
    ds_tensor t_hidden;    /* [R S, dim] */
    ds_tensor t;           /* [R S, dim]: time_embedding */
    ds_tensor t_silu;      /* [R S, dim] */
    ds_tensor t_mod;       /* [R, S, 6, dim]: time_projection */
    ds_tensor mod_sum;     /* [R, S, 6, dim]: block modulation + t_mod */
    ds_tensor mod[6];      /* [R, S, 1, dim] each */
    ds_tensor head_t;      /* [R, S, 2, dim]: t twice, + head modulation */
    ds_tensor head_mod[2]; /* [R, S, 1, dim]: shift, scale */
    ds_tensor xn;          /* [B, N, dim]: normed (and modulated) stream */
    ds_tensor q, k, v;     /* [B, N, dim] */
    ds_tensor attn;        /* [B, N, dim] */
    ds_tensor attn_img;    /* [B, N, dim] */
    ds_tensor y;           /* [B, N, dim]: a sublayer's output */
    ds_tensor kc, vc;      /* [B, ctx_len, dim] */
    ds_tensor ki, vi;      /* [B, 257, dim] */
    ds_tensor hidden;      /* [B, N, ffn_dim] */
    ds_tensor head_out;    /* [B, N, out_dim * 4], layout (1, 2, 2, c) */
    ds_tensor head_perm;   /* [B, N, out_dim, 2, 2] */
    ds_tensor noise;       /* [B, out_dim, F, H, W] (non-host backends) */
} ds__wan_state;


#define DS__WAN_STATE_TENSORS 48

/* Every tensor of the state, for freeing and counting; returns how many. */
size_t ds__wan_state_tensors(ds__wan_state *s, ds_tensor **out);

int ds__wan_linear(ds_backend *b, const ds_tensor *x, const ds__linear_weights *w,
                   ds_activation act, ds_tensor *y, ds_error *err);
/* (modulation + sum_in).chunk(n) along axis 2 into parts [R, S, 1, dim]; sum may be sum_in. */
int ds__wan_add_and_chunk(ds_backend *b, const ds_tensor *sum_in, const ds_tensor *modulation,
                          ds_tensor *sum, int n, ds_tensor *parts, ds_error *err);
/* modulate(LayerNorm(x) without affine, shift, scale), shift and scale [R, S, 1, dim]. */
int ds__wan_norm_modulate(ds_backend *b, const ds__wan_dims *d, const ds_tensor *x,
                          const ds_tensor *shift, const ds_tensor *scale, ds_tensor *y,
                          ds_error *err);
/* Conv3d with kernel = stride = (1, 2, 2) of x [B, C, F, H, W] into out [B, N, dim], through
 * packed [B, N, 4 C]. */
int ds__wan_patch_embedding(ds_backend *b, const ds__wan_dims *d, const ds__linear_weights *conv,
                            const ds_tensor *x, ds_tensor *packed, ds_tensor *out,
                            ds_error *err);
/* DiTBlock.forward on the stream x [B, N, dim] with s's context, t_mod and RoPE, using
 * copy `index` of `group` (whose units are ds__wan_block_units) through r; the FFN unit is
 * still held on return (a VACE block's after_proj is in it). */
int ds__wan_block(ds_backend *b, ds_module_run *r, size_t group, int64_t index,
                  const ds__wan_dims *d, ds__wan_state *s, ds_tensor *x,
                  ds__wan_block_weights *w, ds_error *err);

#endif
