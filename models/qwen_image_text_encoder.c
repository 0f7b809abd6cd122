/* diffsynth/models/qwen_image_text_encoder.py: Qwen2.5-VL-7B as Qwen-Image's text encoder
 * (facts §8). Upstream wraps transformers' Qwen2_5_VLModel (`model.visual`, then
 * `model.language_model`) and adds its own `lm_head`; the configuration is fixed in its
 * constructor, which takes no arguments. The rotary tables are non-persistent buffers and do
 * not appear in the state dict.
 *
 * The forward pass is the text path only (transformers' Qwen2_5_VLTextModel), on the op API
 * (kernels/ops.h): what encode_prompt runs for text-to-image. */
#include "models/qwen_image_text_encoder.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/memory_estimate.h"
#include "models/model_class.h"
#include "models/module.h"
#include "models/param_tree.h"
#include "models/text_encoder.h"
#include "models/weight_set.h"
#include "vram/vram_manager.h"

#define CLASS_NAME "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder"

enum {
    /* text config (transformers' names) */
    HIDDEN = 3584,        /* hidden_size */
    LAYERS = 28,          /* num_hidden_layers */
    HEADS = 28,           /* num_attention_heads */
    KV_HEADS = 4,         /* num_key_value_heads */
    HEAD_DIM = 128,       /* hidden_size / num_attention_heads */
    INTERMEDIATE = 18944, /* intermediate_size */
    VOCAB = 152064,       /* vocab_size */
    /* vision config */
    V_DEPTH = 32,          /* blocks */
    V_HIDDEN = 1280,       /* width */
    V_INTERMEDIATE = 3420, /* MLP width */
    V_PATCH = 14,          /* spatial patch side */
    V_TEMPORAL_PATCH = 2,  /* frames per patch */
    V_IN_CHANNELS = 3,     /* RGB */
    V_MERGE = 2, /* spatial_merge_size: the merger sees 2x2 patches at once */
    V_OUT = 3584,
    V_MERGED = V_HIDDEN * V_MERGE * V_MERGE, /* the merger's input: 2x2 patches */
};

#define OWNER "QwenImageTextEncoder"
#define LM "model.language_model."

/* Qwen2_5_VLDecoderLayer's parameters. */
typedef struct layer_weights {
    ds__linear_weights q;    /* [3584, 3584], bias [3584] */
    ds__linear_weights k;    /* [512, 3584], bias [512] */
    ds__linear_weights v;    /* [512, 3584], bias [512] */
    ds_tensor o;             /* [3584, 3584]: o_proj, no bias */
    ds_tensor gate;          /* [18944, 3584]: mlp.gate_proj, no bias */
    ds_tensor up;            /* [18944, 3584]: mlp.up_proj */
    ds_tensor down;          /* [3584, 18944]: mlp.down_proj */
    ds_tensor input_norm;    /* [3584]: input_layernorm */
    ds_tensor post_norm;     /* [3584]: post_attention_layernorm */
} layer_weights;

/* What the kwargs decide (ds_module dims). */
enum { KW_LAYERS, KW_COUNT };

/* The module groups, in registration order: model.visual (declared, never run), then
 * model.language_model, then lm_head (declared, never run).
 *
 * Transfer units: each decoder layer in two (its attention, ~58 MB in bf16, and its MLP,
 * ~407 MB: one unit of the whole 466 MB layer would not fit budgets near half a layer's
 * weights), then the final norm; the plan is that order. The embedding table is not a unit:
 * the direct path gathers its few rows on the host from the mapped file (embed), and paging the
 * whole table (152064 rows, 1 GB in bf16, 2 GB in f32) into the fast tier for a few hundred
 * rows would cost more budget than every layer unit together; so both paths gather on the
 * host. */
enum { VISUAL_PATCH, VISUAL_BLOCKS, VISUAL_MERGER, TEXT_EMBED, TEXT_LAYERS, TEXT_NORM, LM_HEAD };
enum { SELF_ATTN, MLP };
static const char *const layer_units[] = {"self_attn", "mlp"};

#define NO_UNIT DS_MODULE_NO_UNIT
#define LAYER(f) offsetof(layer_weights, f)
#define LINEAR(name, out, in, unit, field) {name, DS_MODULE_LINEAR, 2, {out, in}, unit, field, 0}
#define LINEAR_NO_BIAS(name, out, in, unit, field) \
    {name, DS_MODULE_LINEAR_NO_BIAS, 2, {out, in}, unit, field, 0}
#define NORM(name, n, unit, field) {name, DS_MODULE_NORM, 1, {n}, unit, field, 0}
#define COUNT(a) (sizeof a / sizeof a[0])

/* Qwen2_5_VisionTransformerPretrainedModel: patch_embed (a Conv3d without bias), blocks,
 * merger. */
static const ds_module visual_patch_modules[] = {
    {"patch_embed.proj.weight", DS_MODULE_TENSOR, 5,
     {V_HIDDEN, V_IN_CHANNELS, V_TEMPORAL_PATCH, V_PATCH, V_PATCH}, NO_UNIT, 0, 0},
};
static const ds_module visual_block_modules[] = {
    NORM("norm1", V_HIDDEN, NO_UNIT, 0),
    NORM("norm2", V_HIDDEN, NO_UNIT, 0),
    LINEAR("attn.qkv", 3 * V_HIDDEN, V_HIDDEN, NO_UNIT, 0),
    LINEAR("attn.proj", V_HIDDEN, V_HIDDEN, NO_UNIT, 0),
    LINEAR("mlp.gate_proj", V_INTERMEDIATE, V_HIDDEN, NO_UNIT, 0),
    LINEAR("mlp.up_proj", V_INTERMEDIATE, V_HIDDEN, NO_UNIT, 0),
    LINEAR("mlp.down_proj", V_HIDDEN, V_INTERMEDIATE, NO_UNIT, 0),
};
static const ds_module visual_merger_modules[] = {
    NORM("merger.ln_q", V_HIDDEN, NO_UNIT, 0),
    LINEAR("merger.mlp.0", V_MERGED, V_MERGED, NO_UNIT, 0),
    LINEAR("merger.mlp.2", V_OUT, V_MERGED, NO_UNIT, 0),
};

/* Qwen2_5_VLTextModel: embed_tokens, layers (self_attn, mlp, the two norms), norm. */
static const ds_module text_embed_modules[] = {
    DS_TEXT_ENCODER_EMBEDDING("embed_tokens", VOCAB, HIDDEN),
};
static const ds_module text_layer_modules[] = {
    LINEAR("self_attn.q_proj", HEADS * HEAD_DIM, HIDDEN, SELF_ATTN, LAYER(q)),
    LINEAR("self_attn.k_proj", KV_HEADS * HEAD_DIM, HIDDEN, SELF_ATTN, LAYER(k)),
    LINEAR("self_attn.v_proj", KV_HEADS * HEAD_DIM, HIDDEN, SELF_ATTN, LAYER(v)),
    LINEAR_NO_BIAS("self_attn.o_proj", HIDDEN, HEADS * HEAD_DIM, SELF_ATTN, LAYER(o)),
    LINEAR_NO_BIAS("mlp.gate_proj", INTERMEDIATE, HIDDEN, MLP, LAYER(gate)),
    LINEAR_NO_BIAS("mlp.up_proj", INTERMEDIATE, HIDDEN, MLP, LAYER(up)),
    LINEAR_NO_BIAS("mlp.down_proj", HIDDEN, INTERMEDIATE, MLP, LAYER(down)),
    NORM("input_layernorm", HIDDEN, SELF_ATTN, LAYER(input_norm)),
    NORM("post_attention_layernorm", HIDDEN, MLP, LAYER(post_norm)),
};
static const ds_module text_norm_modules[] = {DS_TEXT_ENCODER_NORM("norm", HIDDEN)};
static const ds_module lm_head_modules[] = {LINEAR_NO_BIAS("lm_head", VOCAB, HIDDEN, NO_UNIT, 0)};

static const ds_module_group groups[] = {
    [VISUAL_PATCH] = {"model.visual.", 0, visual_patch_modules, 1, NULL, 0},
    [VISUAL_BLOCKS] = {"model.visual.blocks.%lld.", V_DEPTH, visual_block_modules,
                       COUNT(visual_block_modules), NULL, 0},
    [VISUAL_MERGER] = {"model.visual.", 0, visual_merger_modules, COUNT(visual_merger_modules),
                       NULL, 0},
    [TEXT_EMBED] = {LM, 0, text_embed_modules, 1, NULL, 0},
    [TEXT_LAYERS] = {LM "layers.%lld.", DS_MODULE_DIM(KW_LAYERS), text_layer_modules,
                     COUNT(text_layer_modules), layer_units, COUNT(layer_units)},
    [TEXT_NORM] = {LM, 0, text_norm_modules, 1, ds_text_encoder_norm_units, 1},
    [LM_HEAD] = {"", 0, lm_head_modules, 1, NULL, 0},
};

static const ds_module_model modules = {OWNER, "qwen_image_text_encoder", groups, COUNT(groups)};

/* Upstream's class takes no kwargs (its depth comes from the released config). Ours accepts
 * `num_hidden_layers` (transformers' name for the text depth, default 28) so that reduced
 * models registered with --model-configs (tests, the demo) load; no upstream config passes
 * it, so every upstream tree and hash is unchanged. */
static int declare_parameters(ds_kwargs *kwargs, ds_state_dict *params, ds_error *err)
{
    int64_t dims[KW_COUNT] = {[KW_LAYERS] = LAYERS};
    int rc;
    if ((rc = ds__kwarg_int_range(kwargs, CLASS_NAME, "num_hidden_layers", 1, LAYERS,
                                  &dims[KW_LAYERS], err)) != DS_OK ||
        (rc = ds_kwargs_check_all_used(kwargs, err)) != DS_OK)
        return rc;
    return ds_module_declare(&modules, dims, params, err);
}

/* ---- Forward pass (the text path) ---- */

#define RMS_EPS 1e-6f
#define ROPE_THETA 1000000.0f

enum {
    Q_DIM = HEADS * HEAD_DIM,     /* 3584 */
    KV_DIM = KV_HEADS * HEAD_DIM, /* 512 */
    ROPE_PAIRS = HEAD_DIM / 2,    /* one rotation angle per (i, i + 64) pair of a head */
};

/* Activations on the compute backend in the compute dtype unless noted. */
typedef struct te_state {
    ds_tensor key_mask; /* [B, S] u8, or no data when every key is valid */
    ds_tensor cos;      /* [S, 64] f32: RoPE of positions 0..S-1 */
    ds_tensor sin;      /* [S, 64] f32 */
    ds_tensor h;        /* [B, S, 3584]: the residual stream */
    ds_tensor x;        /* [B, S, 3584]: RMS-normed input of the attention or the MLP */
    ds_tensor q;        /* [B, S, 28, 128] */
    ds_tensor k;        /* [B, S, 4, 128] */
    ds_tensor v;        /* [B, S, 4, 128] */
    ds_tensor attn;     /* [B, S, 28, 128]: attention output */
    ds_tensor out;      /* [B, S, 3584]: o_proj or down_proj output */
    ds_tensor gate;     /* [B, S, 18944]: SiLU(gate_proj(x)), then times up_proj(x) */
    ds_tensor up;       /* [B, S, 18944] */
    layer_weights layer; /* the layer's, as the engine made them usable */
} te_state;

static void state_free(void *state)
{
    te_state *s = state;
    ds_tensor *all[] = {&s->key_mask, &s->cos, &s->sin,  &s->h,   &s->x,   &s->q,
                        &s->k,        &s->v,   &s->attn, &s->out, &s->gate, &s->up};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        ds_tensor_free(all[i]);
}

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}
#define STATE(f) offsetof(te_state, f)

/* Every activation; S tokens per row, compute dtype t. */
static int alloc_state(ds_backend *b, ds_dtype t, int64_t B, int64_t S, te_state *s,
                       ds_error *err)
{
    int rc;
    if ((rc = ds_module_alloc(b, DS_F32, 2, SHAPE(S, ROPE_PAIRS), DS_TENSORS(&s->cos, &s->sin),
                              err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, S, HIDDEN), DS_TENSORS(&s->h, &s->x, &s->out),
                              err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 4, SHAPE(B, S, HEADS, HEAD_DIM), DS_TENSORS(&s->q, &s->attn),
                              err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 4, SHAPE(B, S, KV_HEADS, HEAD_DIM),
                              DS_TENSORS(&s->k, &s->v), err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, S, INTERMEDIATE), DS_TENSORS(&s->gate, &s->up),
                              err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* Qwen2_5_VLRotaryEmbedding for text: all three M-RoPE position axes hold the same position,
 * so the mrope_section split [16, 24, 24] picks equal angles and it is plain 1-D RoPE.
 * Upstream computes inv_freq = 1 / theta^(2j / 128) and angle = pos * inv_freq in float32, and
 * casts cos and sin to the compute dtype before rotating; the tables reproduce both roundings. */
static int rope_tables(int64_t S, ds_dtype dtype, te_state *s, ds_error *err)
{
    float *host = malloc((size_t)(2 * S * ROPE_PAIRS) * sizeof *host);
    if (!host)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, OWNER ": out of memory for RoPE");
    float *cos_t = host, *sin_t = host + S * ROPE_PAIRS;
    for (int j = 0; j < ROPE_PAIRS; j++) {
        float inv_freq = 1.0f / powf(ROPE_THETA, (float)(2 * j) / (float)HEAD_DIM);
        for (int64_t p = 0; p < S; p++) {
            float angle = (float)p * inv_freq;
            float c = (float)cos((double)angle), sn = (float)sin((double)angle);
            if (dtype == DS_BF16) {
                c = ds_bf16_to_f32(ds_f32_to_bf16(c));
                sn = ds_bf16_to_f32(ds_f32_to_bf16(sn));
            }
            cos_t[p * ROPE_PAIRS + j] = c;
            sin_t[p * ROPE_PAIRS + j] = sn;
        }
    }
    int rc = ds_tensor_upload(&s->cos, cos_t, NULL, err);
    if (rc == DS_OK)
        rc = ds_tensor_upload(&s->sin, sin_t, NULL, err);
    free(host);
    return rc;
}

/* The padding mask as attention key mask, only when some key is padding (no mask otherwise:
 * the plain causal attention). */
static int key_mask(ds_backend *b, const ds_tensor *mask, te_state *s, ds_error *err)
{
    uint8_t *keep;
    int padded;
    if (!mask)
        return DS_OK;
    int rc = ds_text_encoder_keep(mask, &keep, &padded, err);
    if (rc != DS_OK)
        return rc;
    if (padded && (rc = ds_tensor_alloc(b, DS_U8, 2, mask->shape, &s->key_mask, err)) == DS_OK)
        rc = ds_tensor_upload(&s->key_mask, keep, NULL, err);
    free(keep);
    return rc;
}

/* The activations, and what every layer shares: the RoPE tables, the key mask. */
static int prepare(ds_backend *b, const ds_loaded_model *m, const ds_tensor *input_ids,
                   const ds_tensor *attention_mask, ds_dtype dtype, void *state, ds_error *err)
{
    te_state *s = state;
    int64_t S = input_ids->shape[1];
    int rc;
    (void)m; /* the widths are fixed; the layer count is the engine's */
    if ((rc = alloc_state(b, dtype, input_ids->shape[0], S, s, err)) != DS_OK ||
        (rc = rope_tables(S, dtype, s, err)) != DS_OK)
        return rc;
    return key_mask(b, attention_mask, s, err);
}

static int linear(ds_backend *b, const ds_tensor *x, const ds_tensor *weight,
                  const ds_tensor *bias, ds_activation act, ds_tensor *y, ds_error *err)
{
    ds_linear_args a = {x, weight, bias, 1.0f, act, y};
    return ds_linear(b, NULL, &a, err);
}

/* Qwen2MLP: down_proj(SiLU(gate_proj(x)) * up_proj(x)) into s->out. */
static int mlp(ds_backend *b, const void *weights, void *state, ds_error *err)
{
    const layer_weights *w = weights;
    te_state *s = state;
    return ds_text_encoder_gated_mlp(b, &s->x, &w->gate, DS_ACT_SILU, &w->up, &w->down, &s->gate,
                                     &s->up, &s->out, err);
}

/* Qwen2_5_VLAttention: q/k/v projections (with biases), half-split RoPE on q and k, causal
 * grouped-query attention (28 query heads over 4 kv heads) with the padding mask, o_proj. */
static int self_attention(ds_backend *b, const void *weights, void *state, ds_error *err)
{
    const layer_weights *w = weights;
    te_state *s = state;
    int64_t B = s->h.shape[0], S = s->h.shape[1];
    ds_tensor q3 = ds_module_view(&s->q, 3, SHAPE(B, S, Q_DIM)), k3 = ds_module_view(&s->k, 3, SHAPE(B, S, KV_DIM));
    ds_tensor v3 = ds_module_view(&s->v, 3, SHAPE(B, S, KV_DIM));
    ds_tensor attn3 = ds_module_view(&s->attn, 3, SHAPE(B, S, Q_DIM));
    ds_rope_args rq = {&s->q, &s->cos, &s->sin, DS_ROPE_HALF_SPLIT, &s->q};
    ds_rope_args rk = {&s->k, &s->cos, &s->sin, DS_ROPE_HALF_SPLIT, &s->k};
    ds_attention_args at = {&s->q, &s->k, &s->v, s->key_mask.data ? &s->key_mask : NULL,
                            1.0f / sqrtf((float)HEAD_DIM), 1, &s->attn};
    int rc;
    if ((rc = linear(b, &s->x, &w->q.weight, &w->q.bias, DS_ACT_NONE, &q3, err)) != DS_OK ||
        (rc = linear(b, &s->x, &w->k.weight, &w->k.bias, DS_ACT_NONE, &k3, err)) != DS_OK ||
        (rc = linear(b, &s->x, &w->v.weight, &w->v.bias, DS_ACT_NONE, &v3, err)) != DS_OK ||
        (rc = ds_rope(b, NULL, &rq, err)) != DS_OK || (rc = ds_rope(b, NULL, &rk, err)) != DS_OK ||
        (rc = ds_attention(b, NULL, &at, err)) != DS_OK ||
        (rc = linear(b, &attn3, &w->o, NULL, DS_ACT_NONE, &s->out, err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* Qwen2_5_VLDecoderLayer.forward: h += self_attn(input_layernorm(h));
 * h += mlp(post_attention_layernorm(h)). */
static const ds_text_encoder_branch decoder_layer[] = {
    {SELF_ATTN, LAYER(input_norm), self_attention},
    {MLP, LAYER(post_norm), mlp},
};

/* Bytes of the activations on the compute backend. */
static size_t state_bytes(void *state)
{
    te_state *s = state;
    ds_tensor *const all[] = {&s->key_mask, &s->cos, &s->sin,  &s->h,   &s->x,   &s->q,
                              &s->k,        &s->v,   &s->attn, &s->out, &s->gate, &s->up};
    return ds_module_bytes(all, sizeof all / sizeof all[0]);
}

/* Qwen2_5_VLTextModel: embed_tokens, the decoder layers, norm. */
static const ds_text_encoder encoder = {
    .modules = &modules, .embed_group = TEXT_EMBED, .layer_group = TEXT_LAYERS,
    .norm_group = TEXT_NORM, .piece = "layer", .norm_eps = RMS_EPS, .branches = decoder_layer,
    .branch_count = COUNT(decoder_layer), .residual = STATE(h), .normed = STATE(x),
    .branch_out = STATE(out), .layer_weights = STATE(layer), .prepare = prepare,
    .state_bytes = state_bytes, .state_free = state_free,
};

int ds_qwen_image_text_encoder_forward(const ds_loaded_model *m, const ds_step_context *ctx,
                                       const ds_tensor *input_ids,
                                       const ds_tensor *attention_mask, ds_tensor *hidden_out,
                                       ds_error *err)
{
    te_state s;
    memset(&s, 0, sizeof s);
    return ds_text_encoder_forward(&encoder, m, ctx, input_ids, attention_mask, hidden_out,
                                   HIDDEN, &s, err);
}

/* ---- The "forward" step ---- */

int ds_qwen_image_text_encoder_step_dtype(const ds_loaded_model *m, const ds_step_io *in,
                                          const char *step, ds_dtype *out, ds_error *err)
{
    return ds_text_encoder_step_dtype(&encoder, m, in, step, out, err);
}

static int forward_step(const ds_loaded_model *m, const ds_step_context *ctx, const ds_step_io *in,
                        ds_step_io *out, ds_error *err)
{
    return ds_text_encoder_forward_step(&encoder, ds_qwen_image_text_encoder_forward, HIDDEN, m,
                                        ctx, in, out, err);
}

static const ds_model_step steps[] = {
    {.name = "forward", .run = forward_step,
     .usage = DS_TEXT_ENCODER_FORWARD_USAGE("[B, S, 3584]"),
     .memory = ds_memory_qwen_image_text_encoder},
};

DS_MODEL_CLASS(ds__qwen_image_text_encoder_class, CLASS_NAME, declare_parameters, steps);
