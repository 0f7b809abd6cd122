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
#include "models/model_class.h"
#include "models/module.h"
#include "models/param_tree.h"
#include "models/weight_set.h"
#include "vram/vram_manager.h"

#define CLASS_NAME "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder"

enum {
    /* text config */
    HIDDEN = 3584,
    LAYERS = 28,
    HEADS = 28,
    KV_HEADS = 4,
    HEAD_DIM = 128,
    INTERMEDIATE = 18944,
    VOCAB = 152064,
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

/* The language model's parameters outside the layers. */
typedef struct text_weights {
    ds_tensor embed_tokens; /* [152064, 3584] */
    ds_tensor norm;         /* [3584]: the final RMSNorm */
} text_weights;

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
static const char *const norm_units[] = {"norm"};

#define NO_UNIT DS_MODULE_NO_UNIT
#define LAYER(f) offsetof(layer_weights, f)
#define TEXT(f) offsetof(text_weights, f)
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
    {"embed_tokens", DS_MODULE_EMBEDDING, 2, {VOCAB, HIDDEN}, NO_UNIT, TEXT(embed_tokens), 0},
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
static const ds_module text_norm_modules[] = {NORM("norm", HIDDEN, 0, TEXT(norm))};
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
    [TEXT_NORM] = {LM, 0, text_norm_modules, 1, norm_units, 1},
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
    ds_tensor embedded; /* [B, S, 3584] host: the gathered embedding (non-CPU backends) */
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
    ds_tensor result;   /* [B, S, 3584]: the final norm's output (non-CPU backends) */
} te_state;

static void state_free(te_state *s)
{
    ds_tensor *all[] = {&s->embedded, &s->key_mask, &s->cos,  &s->sin, &s->h,
                        &s->x,        &s->q,        &s->k,    &s->v,   &s->attn,
                        &s->out,      &s->gate,     &s->up,   &s->result};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        ds_tensor_free(all[i]);
}

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}

static int is_mask_dtype(ds_dtype d)
{
    return d == DS_I64 || d == DS_I32 || d == DS_U8 || d == DS_BOOL;
}

static int check_inputs(const ds_tensor *ids, const ds_tensor *mask, const ds_tensor *hidden,
                        ds_error *err)
{
    char expected[128];
    if (!ids || !hidden)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: input_ids and the output are required");
    if ((ids->dtype != DS_I64 && ids->dtype != DS_I32) || ids->ndim != 2 || ids->shape[0] < 1 ||
        ids->shape[1] < 1 || !ids->data)
        return ds_module_bad_tensor("forward", "input", "input_ids", ids, "[B, S] i64 or i32 token ids, B and S >= 1", err);
    int64_t B = ids->shape[0], S = ids->shape[1];
    snprintf(expected, sizeof expected, "[%lld, %lld] i64, i32, u8 or bool (input_ids' shape)",
             (long long)B, (long long)S);
    if (mask && (!is_mask_dtype(mask->dtype) || mask->ndim != 2 || mask->shape[0] != B ||
                 mask->shape[1] != S || !mask->data))
        return ds_module_bad_tensor("forward", "input", "attention_mask", mask, expected, err);
    snprintf(expected, sizeof expected, "[%lld, %lld, %d] f32 or bf16", (long long)B,
             (long long)S, HIDDEN);
    if ((hidden->dtype != DS_F32 && hidden->dtype != DS_BF16) || hidden->ndim != 3 ||
        hidden->shape[0] != B || hidden->shape[1] != S || hidden->shape[2] != HIDDEN ||
        !hidden->data)
        return ds_module_bad_tensor("forward", "output", "hidden_states", hidden, expected, err);
    return DS_OK;
}

/* Every id a row of the embedding table (`vocab` rows), before any compute. */
static int check_ids(const ds_tensor *ids, int64_t vocab, ds_error *err)
{
    uint64_t n = ds_tensor_numel(ids);
    for (uint64_t i = 0; i < n; i++) {
        int64_t id = ids->dtype == DS_I64 ? ((const int64_t *)ids->data)[i]
                                          : ((const int32_t *)ids->data)[i];
        if (id < 0 || id >= vocab)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "forward: input \"input_ids\"[%llu, %llu] is %lld, outside the "
                                "vocabulary (ids 0..%lld)",
                                (unsigned long long)(i / (uint64_t)ids->shape[1]),
                                (unsigned long long)(i % (uint64_t)ids->shape[1]), (long long)id,
                                (long long)(vocab - 1));
    }
    return DS_OK;
}

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
    if (!mask)
        return DS_OK;
    uint64_t n = ds_tensor_numel(mask);
    size_t esize = ds_dtype_size(mask->dtype);
    uint8_t *keep = malloc(n ? n : 1);
    if (!keep)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, OWNER ": out of memory");
    int padded = 0;
    for (uint64_t i = 0; i < n; i++) {
        const unsigned char *e = (const unsigned char *)mask->data + i * esize;
        uint8_t nonzero = 0;
        for (size_t k = 0; k < esize; k++)
            nonzero |= e[k] != 0;
        keep[i] = nonzero;
        padded |= !nonzero;
    }
    int rc = DS_OK;
    if (padded &&
        (rc = ds_tensor_alloc(b, DS_U8, 2, mask->shape, &s->key_mask, err)) == DS_OK)
        rc = ds_tensor_upload(&s->key_mask, keep, NULL, err);
    free(keep);
    return rc;
}

/* The gather of a model whose vram_config rests its weights in another dtype (fp8 offload):
 * upstream's embedding module holds the table rounded through that dtype, so the gathered rows
 * are, exactly: gathered in f32 (exact from any stored dtype), rounded through `offload`, then
 * converted to y's dtype. Rounding only the rows gathered equals rounding the table. */
static int embed_rounded(ds_backend *cpu, const ds_tensor *ids, const ds_tensor *table,
                         ds_dtype offload, ds_tensor *y, ds_error *err)
{
    ds_tensor wide;
    int rc = ds_tensor_alloc(cpu, DS_F32, y->ndim, y->shape, &wide, err);
    if (rc != DS_OK)
        return rc;
    ds_embedding_args a = {ids, table, &wide};
    size_t n = (size_t)ds_tensor_numel(&wide);
    void *narrow = malloc(n ? n * ds_dtype_size(offload) : 1);
    if (!narrow)
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                          OWNER ": out of memory rounding %zu embedded values", n);
    else if ((rc = ds_embedding(cpu, NULL, &a, err)) == DS_OK) {
        ds_convert_from_f32(wide.data, n, offload, narrow);
        ds_convert_to_f32(narrow, offload, n, wide.data);
        ds_convert_from_f32(wide.data, n, y->dtype, y->data);
    }
    free(narrow);
    ds_tensor_free(&wide);
    return rc;
}

/* embed_tokens(input_ids) into s->h. The gather runs on the host, where the table is a view
 * of the file: a device would otherwise need the whole 152064-row table (1 GB in bf16) for a
 * few hundred rows. */
static int embed(const ds_loaded_model *m, ds_backend *b, const ds_tensor *input_ids,
                 te_state *s, ds_error *err)
{
    ds_backend *cpu = b;
    ds__weight_set host_set;
    text_weights tw;
    int rc;
    if (!b->host_memory && (rc = ds_cpu_fallback_backend(&cpu, err)) != DS_OK)
        return rc;
    ds__weight_set_init(&host_set, cpu, OWNER);
    ds_tensor ids = ds_tensor_wrap(cpu, input_ids->dtype, 2, input_ids->shape, input_ids->data);
    ds_tensor *y = &s->h;
    if (!b->host_memory) {
        if ((rc = ds_tensor_alloc(cpu, s->h.dtype, 3, s->h.shape, &s->embedded, err)) != DS_OK)
            goto done;
        y = &s->embedded;
    }
    if ((rc = ds_module_bind(&modules, m, &host_set, TEXT_EMBED, 0, DS_MODULE_NO_UNIT, &tw,
                             err)) != DS_OK)
        goto done;
    const ds_tensor *table = &tw.embed_tokens;
    ds_dtype offload = ds__weight_offload_dtype(m, table->dtype);
    if (offload != DS_DTYPE_INVALID && offload != table->dtype) {
        rc = embed_rounded(cpu, &ids, table, offload, y, err);
    } else {
        ds_embedding_args a = {&ids, table, y};
        rc = ds_embedding(cpu, NULL, &a, err);
    }
    if (rc != DS_OK)
        goto done;
    if (!b->host_memory)
        rc = ds_tensor_upload(&s->h, s->embedded.data, NULL, err);
done:
    ds__weight_set_release(&host_set);
    return rc;
}

static int linear(ds_backend *b, const ds_tensor *x, const ds_tensor *weight,
                  const ds_tensor *bias, ds_activation act, ds_tensor *y, ds_error *err)
{
    ds_linear_args a = {x, weight, bias, 1.0f, act, y};
    return ds_linear(b, NULL, &a, err);
}

/* Qwen2_5_VLAttention: q/k/v projections (with biases), half-split RoPE on q and k, causal
 * grouped-query attention (28 query heads over 4 kv heads) with the padding mask, o_proj. */
static int self_attention(ds_backend *b, const layer_weights *w, te_state *s, ds_error *err)
{
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

/* Qwen2MLP: down_proj(SiLU(gate_proj(x)) * up_proj(x)) into s->out. */
static int mlp(ds_backend *b, const layer_weights *w, te_state *s, ds_error *err)
{
    ds_binary_args glu = {&s->gate, &s->up, DS_BINARY_MUL, &s->gate};
    int rc;
    if ((rc = linear(b, &s->x, &w->gate, NULL, DS_ACT_SILU, &s->gate, err)) != DS_OK ||
        (rc = linear(b, &s->x, &w->up, NULL, DS_ACT_NONE, &s->up, err)) != DS_OK ||
        (rc = ds_binary(b, NULL, &glu, err)) != DS_OK ||
        (rc = linear(b, &s->gate, &w->down, NULL, DS_ACT_NONE, &s->out, err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* Qwen2_5_VLDecoderLayer.forward: h += self_attn(input_layernorm(h));
 * h += mlp(post_attention_layernorm(h)), the engine switching units between the two. */
static int decoder_layer(ds_backend *b, ds_module_run *r, int64_t i, te_state *s, ds_error *err)
{
    layer_weights w;
    ds_rms_norm_args n1 = {&s->h, &w.input_norm, RMS_EPS, &s->x};
    ds_rms_norm_args n2 = {&s->h, &w.post_norm, RMS_EPS, &s->x};
    ds_binary_args residual = {&s->h, &s->out, DS_BINARY_ADD, &s->h};
    int rc;
    if ((rc = ds_module_use(r, TEXT_LAYERS, i, SELF_ATTN, &w, err)) != DS_OK ||
        (rc = ds_rms_norm(b, NULL, &n1, err)) != DS_OK ||
        (rc = self_attention(b, &w, s, err)) != DS_OK ||
        (rc = ds_binary(b, NULL, &residual, err)) != DS_OK ||
        (rc = ds_module_use(r, TEXT_LAYERS, i, MLP, &w, err)) != DS_OK ||
        (rc = ds_rms_norm(b, NULL, &n2, err)) != DS_OK ||
        (rc = mlp(b, &w, s, err)) != DS_OK ||
        (rc = ds_binary(b, NULL, &residual, err)) != DS_OK)
        return rc;
    return ds_module_done(r, err);
}

/* Bytes of the activations on the compute backend (not the host-side gathered embedding). */
static size_t state_bytes(te_state *s)
{
    ds_tensor *const all[] = {&s->key_mask, &s->cos, &s->sin,  &s->h,    &s->x,
                              &s->q,        &s->k,   &s->v,    &s->attn, &s->out,
                              &s->gate,     &s->up,  &s->result};
    return ds_module_bytes(all, sizeof all / sizeof all[0]);
}

int ds_qwen_image_text_encoder_forward(const ds_loaded_model *m, const ds_step_context *ctx,
                                       const ds_tensor *input_ids,
                                       const ds_tensor *attention_mask, ds_tensor *hidden_out,
                                       ds_error *err)
{
    te_state s;
    text_weights tw;
    ds_module_run run;
    memset(&s, 0, sizeof s);
    memset(&run, 0, sizeof run);
    int rc = check_inputs(input_ids, attention_mask, hidden_out, err);
    if (rc != DS_OK)
        return rc;
    if (!m || !ctx || !ctx->backend)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "forward: no model or no backend");
    int64_t layers = ds_module_count(&modules, m, TEXT_LAYERS);
    const ds_tensor_view *table =
        ds_module_find(&modules, m, TEXT_EMBED, 0, TEXT(embed_tokens));
    if (layers == 0 || !table || table->ndim != 2)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "forward: " OWNER ": the loaded tree has no %s",
                            layers == 0 ? "decoder layers" : "token embedding");
    if ((rc = check_ids(input_ids, table->shape[0], err)) != DS_OK)
        return rc;
    ds_backend *b = ctx->backend;
    int64_t B = input_ids->shape[0], S = input_ids->shape[1];
    ds_dtype dtype = hidden_out->dtype;
    if ((rc = ds_module_open(&run, &modules, m, b, ctx->vram, 1, "forward", err)) != DS_OK)
        return rc;

    /* The activations share the budget with the weights. */
    ds_tensor result;
    if ((rc = alloc_state(b, dtype, B, S, &s, err)) != DS_OK ||
        (rc = rope_tables(S, dtype, &s, err)) != DS_OK ||
        (rc = key_mask(b, attention_mask, &s, err)) != DS_OK ||
        (rc = embed(m, b, input_ids, &s, err)) != DS_OK ||
        (rc = ds_module_output(b, hidden_out, &s.result, &result, err)) != DS_OK ||
        (rc = ds_module_reserve(&run, "forward: activations", state_bytes(&s), err)) != DS_OK)
        goto done;

    /* The decoder layers, cancellable between any two. */
    for (int64_t i = 0; i < layers; i++) {
        if ((rc = ds_module_cancelled(ctx, "forward", "layer", i, layers, err)) != DS_OK)
            goto done;
        if ((rc = decoder_layer(b, &run, i, &s, err)) != DS_OK) {
            ds_error_prefix(err, "forward: layer %lld: ", (long long)i);
            goto done;
        }
        ds_module_progress(ctx, "forward", i, layers);
    }

    /* The final norm: hidden_states[-1] in upstream's output. */
    ds_rms_norm_args norm = {&s.h, &tw.norm, RMS_EPS, &result};
    if ((rc = ds_module_use(&run, TEXT_NORM, 0, 0, &tw, err)) == DS_OK &&
        (rc = ds_rms_norm(b, NULL, &norm, err)) == DS_OK &&
        (rc = ds_module_done(&run, err)) == DS_OK)
        rc = ds_module_deliver(b, &result, hidden_out, err);
done:
    ds_module_close(&run);
    state_free(&s);
    return rc;
}

/* ---- The "forward" step ---- */

/* Parameter "dtype", else the stored embedding's dtype when f32, else bf16 (the header). */
int ds_qwen_image_text_encoder_step_dtype(const ds_loaded_model *m, const ds_step_io *in,
                                          const char *step, ds_dtype *out, ds_error *err)
{
    const ds_step_param *p = ds_step_io_param(in, "dtype");
    if (p) {
        if (strcmp(p->text, "float32") == 0 || strcmp(p->text, "f32") == 0)
            *out = DS_F32;
        else if (strcmp(p->text, "bfloat16") == 0 || strcmp(p->text, "bf16") == 0)
            *out = DS_BF16;
        else
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: parameter \"dtype\" is \"%s\", expected float32 or "
                                "bfloat16", step, p->text);
        return DS_OK;
    }
    const ds_tensor_view *e = ds_module_find(&modules, m, TEXT_EMBED, 0, TEXT(embed_tokens));
    *out = e && e->dtype == DS_F32 ? DS_F32 : DS_BF16;
    return DS_OK;
}

static int forward_step(const ds_loaded_model *m, const ds_step_context *ctx, const ds_step_io *in,
                        ds_step_io *out, ds_error *err)
{
    static const char *const known[] = {"input_ids", "attention_mask", "dtype", NULL};
    static const ds_dtype id_dtypes[] = {DS_I64, DS_I32};
    static const ds_dtype mask_dtypes[] = {DS_I64, DS_I32, DS_U8, DS_BOOL};
    const ds_tensor *ids, *mask;
    char expected[128];
    ds_dtype dtype = DS_BF16;
    int rc;
    if ((rc = ds_step_io_check_names(in, "forward", known, err)) != DS_OK ||
        (rc = ds_step_io_require(in, "forward", "input_ids", 0, id_dtypes, 2, 2, SHAPE(-1, -1),
                                 "[B, S] i64 or i32 token ids", &ids, err)) != DS_OK)
        return rc;
    if (ids->shape[0] < 1 || ids->shape[1] < 1)
        return ds_module_bad_tensor("forward", "input", "input_ids", ids, "[B, S] i64 or i32 token ids, B and S >= 1", err);
    snprintf(expected, sizeof expected, "[%lld, %lld] i64, i32, u8 or bool (input_ids' shape)",
             (long long)ids->shape[0], (long long)ids->shape[1]);
    if ((rc = ds_step_io_require(in, "forward", "attention_mask", 1, mask_dtypes, 4, 2,
                                 ids->shape, expected, &mask, err)) != DS_OK ||
        (rc = ds_qwen_image_text_encoder_step_dtype(m, in, "forward", &dtype, err)) != DS_OK)
        return rc;

    ds_backend *cpu = ctx->backend;
    ds_tensor *hidden;
    if (!cpu->host_memory && (rc = ds_cpu_fallback_backend(&cpu, err)) != DS_OK)
        return rc;
    if ((rc = ds_step_io_new_tensor(out, cpu, "hidden_states", dtype, 3,
                                    SHAPE(ids->shape[0], ids->shape[1], HIDDEN), &hidden, err)) !=
        DS_OK)
        return rc;
    return ds_qwen_image_text_encoder_forward(m, ctx, ids, mask, hidden, err);
}

static const ds_model_step steps[] = {
    {
        .name = "forward",
        .run = forward_step,
        .usage = "forward: input_ids [B, S] (i64 or i32), attention_mask [B, S] (optional; 0 = "
                 "padding), dtype (float32 or bfloat16; default bfloat16, float32 for a float32 "
                 "checkpoint) -> hidden_states [B, S, 3584], after the final norm",
    },
};

DS_MODEL_CLASS(ds__qwen_image_text_encoder_class, CLASS_NAME, declare_parameters, steps);
