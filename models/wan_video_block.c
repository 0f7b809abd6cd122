/* DiTBlock (diffsynth/models/wan_video_dit.py) on the op API, shared by WanModel and
 * VaceWanModel. */
#include "models/wan_video_block.h"

#include <math.h>

#include "kernels/ops.h"

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}

const char *const ds__wan_block_units[DS__WAN_BLOCK_UNITS] = {"self_attn", "cross_attn", "ffn"};

size_t ds__wan_state_tensors(ds__wan_state *s, ds_tensor **out)
{
    ds_tensor *all[] = {
        &s->time_host, &s->cos, &s->sin, &s->latents_dev, &s->y_dev, &s->context_dev,
        &s->clip_dev, &s->x_cat, &s->packed, &s->x, &s->ctx_hidden, &s->ctx, &s->clip_a,
        &s->clip_b, &s->clip_c, &s->img, &s->img_all, &s->text, &s->freq, &s->t_hidden, &s->t,
        &s->t_silu, &s->t_mod, &s->mod_sum, &s->head_t, &s->xn, &s->q, &s->k, &s->v, &s->attn,
        &s->attn_img, &s->y, &s->kc, &s->vc, &s->ki, &s->vi, &s->hidden, &s->head_out,
        &s->head_perm, &s->noise,
    };
    size_t n = 0;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        out[n++] = all[i];
    for (int i = 0; i < 6; i++)
        out[n++] = &s->mod[i];
    for (int i = 0; i < 2; i++)
        out[n++] = &s->head_mod[i];
    return n;
}

int ds__wan_linear(ds_backend *b, const ds_tensor *x, const ds__linear_weights *w,
                   ds_activation act, ds_tensor *y, ds_error *err)
{
    ds_linear_args a = {x, &w->weight, &w->bias, 1.0f, act, y};
    return ds_linear(b, NULL, &a, err);
}

static int layer_norm(ds_backend *b, const ds_tensor *x, const ds_tensor *w, const ds_tensor *bias,
                      float eps, ds_tensor *y, ds_error *err)
{
    ds_layer_norm_args a = {x, w, bias, eps, y};
    return ds_layer_norm(b, NULL, &a, err);
}

/* modulate(norm(x), shift, scale): LayerNorm without affine, then x * (1 + scale) + shift. */
int ds__wan_norm_modulate(ds_backend *b, const ds__wan_dims *d, const ds_tensor *x,
                          const ds_tensor *shift, const ds_tensor *scale, ds_tensor *y,
                          ds_error *err)
{
    ds_tensor sh = ds_module_view(shift, 3, SHAPE(d->mod_rows, d->mod_tokens, d->dim));
    ds_tensor sc = ds_module_view(scale, 3, SHAPE(d->mod_rows, d->mod_tokens, d->dim));
    ds_modulate_args mod = {y, &sc, &sh, y};
    int rc = layer_norm(b, x, NULL, NULL, d->eps, y, err);
    return rc != DS_OK ? rc : ds_modulate(b, NULL, &mod, err);
}

/* x += gate * y, the gate one [R, S, 1, dim] chunk of the modulation. */
static int gate(ds_backend *b, const ds__wan_dims *d, ds_tensor *x, const ds_tensor *g,
                const ds_tensor *y, ds_error *err)
{
    ds_tensor g3 = ds_module_view(g, 3, SHAPE(d->mod_rows, d->mod_tokens, d->dim));
    ds_gated_residual_args a = {x, &g3, y, x};
    return ds_gated_residual(b, NULL, &a, err);
}

int ds__wan_add_and_chunk(ds_backend *b, const ds_tensor *sum_in, const ds_tensor *modulation,
                          ds_tensor *sum, int n, ds_tensor *parts, ds_error *err)
{
    ds_binary_args add = {sum_in, modulation, DS_BINARY_ADD, sum};
    int rc = ds_binary(b, NULL, &add, err);
    for (int i = 0; rc == DS_OK && i < n; i++) {
        ds_slice_args a = {sum, 2, i, &parts[i]};
        rc = ds_slice(b, NULL, &a, err);
    }
    return rc;
}

/* q = RoPE(norm_q(q(x))) viewed in heads; the RMSNorm spans the whole width. */
static int project_rope(ds_backend *b, const ds__wan_dims *d, const ds_tensor *x,
                        const ds__linear_weights *proj, const ds_tensor *norm, ds__wan_state *s,
                        ds_tensor *out, ds_error *err)
{
    ds_rms_norm_args rn = {out, norm, d->eps, out};
    ds_tensor heads = ds_module_view(out, 4, SHAPE(d->batch, d->tokens, d->heads, d->head_dim));
    ds_rope_args rope = {&heads, &s->cos, &s->sin, DS_ROPE_INTERLEAVED, &heads};
    int rc;
    if ((rc = ds__wan_linear(b, x, proj, DS_ACT_NONE, out, err)) != DS_OK ||
        (rc = ds_rms_norm(b, NULL, &rn, err)) != DS_OK)
        return rc;
    return ds_rope(b, NULL, &rope, err);
}

/* flash_attention(q, k, v, num_heads) on [B, S, dim] tensors. */
static int attention(ds_backend *b, const ds__wan_dims *d, const ds_tensor *q, const ds_tensor *k,
                     const ds_tensor *v, ds_tensor *out, ds_error *err)
{
    ds_tensor q4 = ds_module_view(q, 4, SHAPE(q->shape[0], q->shape[1], d->heads, d->head_dim));
    ds_tensor k4 = ds_module_view(k, 4, SHAPE(k->shape[0], k->shape[1], d->heads, d->head_dim));
    ds_tensor v4 = ds_module_view(v, 4, SHAPE(v->shape[0], v->shape[1], d->heads, d->head_dim));
    ds_tensor o4 = ds_module_view(out, 4,
                                  SHAPE(out->shape[0], out->shape[1], d->heads, d->head_dim));
    ds_attention_args a = {&q4, &k4, &v4, NULL, 1.0f / sqrtf((float)d->head_dim), 0, &o4};
    return ds_attention(b, NULL, &a, err);
}

/* SelfAttention: o(attn(RoPE(norm_q(q(x))), RoPE(norm_k(k(x))), v(x))). */
static int self_attention(ds_backend *b, const ds__wan_dims *d, const ds__wan_block_weights *w,
                          ds__wan_state *s, ds_error *err)
{
    int rc;
    if ((rc = project_rope(b, d, &s->xn, &w->sa_q, &w->sa_norm_q, s, &s->q, err)) != DS_OK ||
        (rc = project_rope(b, d, &s->xn, &w->sa_k, &w->sa_norm_k, s, &s->k, err)) != DS_OK ||
        (rc = ds__wan_linear(b, &s->xn, &w->sa_v, DS_ACT_NONE, &s->v, err)) != DS_OK ||
        (rc = attention(b, d, &s->q, &s->k, &s->v, &s->attn, err)) != DS_OK)
        return rc;
    return ds__wan_linear(b, &s->attn, &w->sa_o, DS_ACT_NONE, &s->y, err);
}

/* CrossAttention: the text keys, and (has_image_input) the CLIP tokens' keys in a second
 * attention whose output is added. */
static int cross_attention(ds_backend *b, const ds__wan_dims *d, const ds__wan_block_weights *w,
                           ds__wan_state *s, ds_error *err)
{
    ds_rms_norm_args nq = {&s->q, &w->ca_norm_q, d->eps, &s->q};
    ds_rms_norm_args nk = {&s->kc, &w->ca_norm_k, d->eps, &s->kc};
    int rc;
    if ((rc = ds__wan_linear(b, &s->xn, &w->ca_q, DS_ACT_NONE, &s->q, err)) != DS_OK ||
        (rc = ds_rms_norm(b, NULL, &nq, err)) != DS_OK ||
        (rc = ds__wan_linear(b, &s->ctx, &w->ca_k, DS_ACT_NONE, &s->kc, err)) != DS_OK ||
        (rc = ds_rms_norm(b, NULL, &nk, err)) != DS_OK ||
        (rc = ds__wan_linear(b, &s->ctx, &w->ca_v, DS_ACT_NONE, &s->vc, err)) != DS_OK ||
        (rc = attention(b, d, &s->q, &s->kc, &s->vc, &s->attn, err)) != DS_OK)
        return rc;
    if (d->image) {
        ds_rms_norm_args ni = {&s->ki, &w->ca_norm_k_img, d->eps, &s->ki};
        ds_binary_args add = {&s->attn, &s->attn_img, DS_BINARY_ADD, &s->attn};
        if ((rc = ds__wan_linear(b, &s->img, &w->ca_k_img, DS_ACT_NONE, &s->ki, err)) != DS_OK ||
            (rc = ds_rms_norm(b, NULL, &ni, err)) != DS_OK ||
            (rc = ds__wan_linear(b, &s->img, &w->ca_v_img, DS_ACT_NONE, &s->vi, err)) != DS_OK ||
            (rc = attention(b, d, &s->q, &s->ki, &s->vi, &s->attn_img, err)) != DS_OK ||
            (rc = ds_binary(b, NULL, &add, err)) != DS_OK)
            return rc;
    }
    return ds__wan_linear(b, &s->attn, &w->ca_o, DS_ACT_NONE, &s->y, err);
}

/* DiTBlock.forward, the engine making each unit's weights usable before their first use. */
int ds__wan_block(ds_backend *b, ds_module_run *r, size_t group, int64_t index,
                  const ds__wan_dims *d, ds__wan_state *s, ds_tensor *x,
                  ds__wan_block_weights *w, ds_error *err)
{
    ds_binary_args add = {x, &s->y, DS_BINARY_ADD, x};
    int rc;
    /* shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp. */
    if ((rc = ds_module_use(r, group, index, DS__WAN_SELF_ATTN, w, err)) != DS_OK ||
        (rc = ds__wan_add_and_chunk(b, &s->t_mod, &w->modulation, &s->mod_sum, 6, s->mod, err)) !=
            DS_OK ||
        (rc = ds__wan_norm_modulate(b, d, x, &s->mod[0], &s->mod[1], &s->xn, err)) != DS_OK ||
        (rc = self_attention(b, d, w, s, err)) != DS_OK ||
        (rc = gate(b, d, x, &s->mod[2], &s->y, err)) != DS_OK)
        return rc;
    /* x = x + cross_attn(norm3(x), context). */
    if ((rc = ds_module_use(r, group, index, DS__WAN_CROSS_ATTN, w, err)) != DS_OK ||
        (rc = layer_norm(b, x, &w->norm3_w, &w->norm3_b, d->eps, &s->xn, err)) != DS_OK ||
        (rc = cross_attention(b, d, w, s, err)) != DS_OK ||
        (rc = ds_binary(b, NULL, &add, err)) != DS_OK)
        return rc;
    /* x = x + gate_mlp * ffn(modulate(norm2(x), shift_mlp, scale_mlp)). */
    if ((rc = ds_module_use(r, group, index, DS__WAN_FFN, w, err)) != DS_OK ||
        (rc = ds__wan_norm_modulate(b, d, x, &s->mod[3], &s->mod[4], &s->xn, err)) != DS_OK ||
        (rc = ds__wan_linear(b, &s->xn, &w->ffn_1, DS_ACT_GELU_TANH, &s->hidden, err)) != DS_OK ||
        (rc = ds__wan_linear(b, &s->hidden, &w->ffn_2, DS_ACT_NONE, &s->y, err)) != DS_OK)
        return rc;
    return gate(b, d, x, &s->mod[5], &s->y, err);
}

/* Conv3d with kernel = stride = (1, 2, 2) is the 2x2 packing of the frames stacked along the
 * height, then a linear with the kernel flattened (c, i, j) as the packing's channels are. */
int ds__wan_patch_embedding(ds_backend *b, const ds__wan_dims *d, const ds__linear_weights *conv,
                            const ds_tensor *x, ds_tensor *packed, ds_tensor *out,
                            ds_error *err)
{
    int64_t channels = x->shape[1];
    ds_tensor stacked = ds_module_view(x, 4, SHAPE(d->batch, channels,
                                                   d->frames * d->grid_h * DS__WAN_PATCH,
                                                   d->grid_w * DS__WAN_PATCH));
    ds_patchify_args pack = {&stacked, DS__WAN_PATCH, packed};
    ds__linear_weights flat = *conv;
    flat.weight = ds_module_view(&conv->weight, 2,
                                 SHAPE(d->dim, channels * DS__WAN_PATCH * DS__WAN_PATCH));
    int rc = ds_patchify(b, NULL, &pack, err);
    return rc != DS_OK ? rc : ds__wan_linear(b, packed, &flat, DS_ACT_NONE, out, err);
}
