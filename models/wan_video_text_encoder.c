/* diffsynth/models/wan_video_text_encoder.py: WanTextEncoder, the UMT5-XXL encoder (facts
 * §1.3): a token embedding, 24 T5SelfAttention blocks (T5 layer norm, attention without
 * scaling plus a per-block relative position bias, gated-GELU feed-forward), a final T5 layer
 * norm. Upstream's `shared_pos` is False for Wan: every block owns its T5RelativeEmbedding and
 * the encoder has none of its own. Dropout is the identity at inference.
 *
 * The forward runs on the op API (kernels/ops.h), one function per upstream module. */
#include "models/wan_video_text_encoder.h"

#include <float.h>
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

#define CLASS_NAME "diffsynth.models.wan_video_text_encoder.WanTextEncoder"
#define OWNER "WanTextEncoder"

enum {
    VOCAB = 256384,
    DIM = 4096,
    DIM_ATTN = 4096,
    DIM_FFN = 10240,
    HEADS = 64,
    LAYERS = 24,
    BUCKETS = 32,
    MAX_DIST = 128,
};

/* T5SelfAttention's parameters. */
typedef struct block_weights {
    ds_tensor norm1;   /* [4096] */
    ds_tensor q;       /* [4096, 4096], no bias */
    ds_tensor k;
    ds_tensor v;
    ds_tensor o;
    ds_tensor norm2;   /* [4096] */
    ds_tensor gate;    /* [10240, 4096]: ffn.gate.0 */
    ds_tensor fc1;     /* [10240, 4096] */
    ds_tensor fc2;     /* [4096, 10240] */
    ds_tensor pos;     /* [32, 64]: pos_embedding.embedding */
} block_weights;

enum { KW_VOCAB, KW_DIM, KW_DIM_ATTN, KW_DIM_FFN, KW_HEADS, KW_LAYERS, KW_COUNT };

/* Groups in registration order: token_embedding, blocks, norm.
 *
 * Transfer units, as upstream's VRAM map wraps Linear, T5LayerNorm and T5RelativeEmbedding:
 * each block in two, its attention (norm1, q/k/v/o and the position bias table: 134 MB in
 * bf16) and its feed-forward (norm2, gate, fc1, fc2: 252 MB in bf16), then the final norm. The token embedding (256384 rows, 2 GB in bf16) is no unit: its few rows are
 * gathered on the host from the mapped file, as the Qwen text encoder does. */
enum { EMBED, BLOCKS, NORM_GROUP };
enum { ATTN, FFN };
static const char *const block_units[] = {"attn", "ffn"};

#define NO_UNIT DS_MODULE_NO_UNIT
#define BLOCK(f) offsetof(block_weights, f)
#define LINEAR_NO_BIAS(name, out, in, unit, field) \
    {name, DS_MODULE_LINEAR_NO_BIAS, 2, {out, in}, unit, field, 0}
#define NORM(name, n, unit, field) {name, DS_MODULE_NORM, 1, {n}, unit, field, 0}
#define COUNT(a) (sizeof a / sizeof a[0])

#define D_MODEL DS_MODULE_DIM(KW_DIM)
#define D_ATTN DS_MODULE_DIM(KW_DIM_ATTN)
#define D_FFN DS_MODULE_DIM(KW_DIM_FFN)

static const ds_module embed_modules[] = {
    DS_TEXT_ENCODER_EMBEDDING("token_embedding", DS_MODULE_DIM(KW_VOCAB), D_MODEL),
};
static const ds_module block_modules[] = {
    NORM("norm1", D_MODEL, ATTN, BLOCK(norm1)),
    LINEAR_NO_BIAS("attn.q", D_ATTN, D_MODEL, ATTN, BLOCK(q)),
    LINEAR_NO_BIAS("attn.k", D_ATTN, D_MODEL, ATTN, BLOCK(k)),
    LINEAR_NO_BIAS("attn.v", D_ATTN, D_MODEL, ATTN, BLOCK(v)),
    LINEAR_NO_BIAS("attn.o", D_MODEL, D_ATTN, ATTN, BLOCK(o)),
    NORM("norm2", D_MODEL, FFN, BLOCK(norm2)),
    LINEAR_NO_BIAS("ffn.gate.0", D_FFN, D_MODEL, FFN, BLOCK(gate)),
    LINEAR_NO_BIAS("ffn.fc1", D_FFN, D_MODEL, FFN, BLOCK(fc1)),
    LINEAR_NO_BIAS("ffn.fc2", D_MODEL, D_FFN, FFN, BLOCK(fc2)),
    {"pos_embedding.embedding", DS_MODULE_EMBEDDING, 2, {BUCKETS, DS_MODULE_DIM(KW_HEADS)}, ATTN,
     BLOCK(pos), 0},
};
static const ds_module norm_modules[] = {DS_TEXT_ENCODER_NORM("norm", D_MODEL)};

static const ds_module_group groups[] = {
    [EMBED] = {"", 0, embed_modules, COUNT(embed_modules), NULL, 0},
    [BLOCKS] = {"blocks.%lld.", DS_MODULE_DIM(KW_LAYERS), block_modules, COUNT(block_modules),
                block_units, COUNT(block_units)},
    [NORM_GROUP] = {"", 0, norm_modules, 1, ds_text_encoder_norm_units, 1},
};

static const ds_module_model modules = {OWNER, "wan_video_text_encoder", groups, COUNT(groups)};

/* Upstream's constructor arguments vocab, dim, dim_attn, dim_ffn, num_heads and num_layers
 * (num_buckets and shared_pos stay Wan's: 32, False). No upstream config passes any, so its
 * tree and hash are the defaults'; reduced models (tests) register them with --model-configs.
 * Upstream asserts dim_attn % num_heads == 0; so does this. */
static int declare_parameters(ds_kwargs *kwargs, ds_state_dict *params, ds_error *err)
{
    static const struct {
        const char *name;
        int64_t max;
    } kw[KW_COUNT] = {
        [KW_VOCAB] = {"vocab", VOCAB},         [KW_DIM] = {"dim", DIM},
        [KW_DIM_ATTN] = {"dim_attn", DIM_ATTN}, [KW_DIM_FFN] = {"dim_ffn", DIM_FFN},
        [KW_HEADS] = {"num_heads", HEADS},     [KW_LAYERS] = {"num_layers", LAYERS},
    };
    int64_t dims[KW_COUNT];
    int rc;
    for (int i = 0; i < KW_COUNT; i++) {
        dims[i] = kw[i].max;
        if ((rc = ds__kwarg_int_range(kwargs, CLASS_NAME, kw[i].name, 1, kw[i].max, &dims[i],
                                      err)) != DS_OK)
            return rc;
    }
    if ((rc = ds_kwargs_check_all_used(kwargs, err)) != DS_OK)
        return rc;
    if (dims[KW_DIM_ATTN] % dims[KW_HEADS] != 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: dim_attn %lld is not a multiple of num_heads %lld", CLASS_NAME,
                            (long long)dims[KW_DIM_ATTN], (long long)dims[KW_HEADS]);
    return ds_module_declare(&modules, dims, params, err);
}

/* The widths of a loaded tree (the kwargs it was declared with). */
typedef struct te_dims {
    int64_t dim, dim_attn, dim_ffn, heads, head_dim;
} te_dims;

static int tree_dims(const ds_loaded_model *m, te_dims *d)
{
    const ds_tensor_view *e =
        ds_module_find(&modules, m, EMBED, 0, offsetof(ds_text_encoder_weights, embedding));
    const ds_tensor_view *q = ds_module_find(&modules, m, BLOCKS, 0, BLOCK(q));
    const ds_tensor_view *g = ds_module_find(&modules, m, BLOCKS, 0, BLOCK(gate));
    const ds_tensor_view *p = ds_module_find(&modules, m, BLOCKS, 0, BLOCK(pos));
    if (!e || !q || !g || !p || e->ndim != 2 || q->ndim != 2 || g->ndim != 2 || p->ndim != 2 ||
        p->shape[1] < 1 || q->shape[0] % p->shape[1] != 0)
        return 0;
    *d = (te_dims){e->shape[1], q->shape[0], g->shape[0], p->shape[1], q->shape[0] / p->shape[1]};
    return 1;
}

int64_t ds_wan_text_encoder_dim(const ds_loaded_model *m)
{
    te_dims d;
    return m && tree_dims(m, &d) ? d.dim : 0;
}

/* ---- Forward pass ---- */

#define NORM_EPS 1e-6f

/* Activations on the compute backend in the compute dtype unless noted. */
typedef struct te_state {
    ds_tensor buckets;  /* [S, S] i32: relative position bucket of (query, key) */
    ds_tensor key_bias; /* [B, 1, 1, S]: 0, or the dtype's lowest where the key is padding;
                         * no data when every key is valid */
    ds_tensor pos_rows; /* [S, S, 64]: the block's bias gathered per (query, key) */
    ds_tensor pos_bias; /* [1, 64, S, S] */
    ds_tensor h;        /* [B, S, 4096]: the residual stream */
    ds_tensor x;        /* [B, S, 4096]: the normed input of the attention or the FFN */
    ds_tensor q;        /* [B, S, 4096] = [B, S, 64, 64] */
    ds_tensor k;
    ds_tensor v;
    ds_tensor qh;       /* [B, 64, S, 64]: per-head layout */
    ds_tensor kh;
    ds_tensor vh;
    ds_tensor scores;   /* [B, 64, S, S] */
    ds_tensor oh;       /* [B, 64, S, 64] */
    ds_tensor attn;     /* [B, S, 64, 64] */
    ds_tensor out;      /* [B, S, 4096]: attn.o or ffn.fc2 output */
    ds_tensor gate;     /* [B, S, 10240] */
    ds_tensor up;       /* [B, S, 10240]: fc1 */
    block_weights block; /* the block's, as the engine made them usable */
} te_state;

#define STATE_TENSORS(s)                                                                       \
    &(s)->buckets, &(s)->key_bias, &(s)->pos_rows, &(s)->pos_bias, &(s)->h, &(s)->x, &(s)->q,   \
        &(s)->k, &(s)->v, &(s)->qh, &(s)->kh, &(s)->vh, &(s)->scores, &(s)->oh, &(s)->attn,    \
        &(s)->out, &(s)->gate, &(s)->up

static void state_free(void *state)
{
    te_state *s = state;
    ds_tensor *all[] = {STATE_TENSORS(s)};
    for (size_t i = 0; i < COUNT(all); i++)
        ds_tensor_free(all[i]);
}

/* Bytes of the activations on the compute backend. */
static size_t state_bytes(void *state)
{
    te_state *s = state;
    ds_tensor *const all[] = {STATE_TENSORS(s)};
    return ds_module_bytes(all, COUNT(all));
}

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}
#define STATE(f) offsetof(te_state, f)

static int alloc_state(ds_backend *b, ds_dtype t, const te_dims *d, int64_t B, int64_t S,
                       te_state *s, ds_error *err)
{
    int rc;
    if ((rc = ds_module_alloc(b, DS_I32, 2, SHAPE(S, S), DS_TENSORS(&s->buckets), err)) !=
            DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(S, S, d->heads), DS_TENSORS(&s->pos_rows),
                              err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 4, SHAPE(1, d->heads, S, S), DS_TENSORS(&s->pos_bias),
                              err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, S, d->dim), DS_TENSORS(&s->h, &s->x, &s->out),
                              err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, S, d->dim_attn),
                              DS_TENSORS(&s->q, &s->k, &s->v, &s->attn), err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 4, SHAPE(B, d->heads, S, d->head_dim),
                              DS_TENSORS(&s->qh, &s->kh, &s->vh, &s->oh), err)) != DS_OK ||
        (rc = ds_module_alloc(b, t, 4, SHAPE(B, d->heads, S, S), DS_TENSORS(&s->scores), err)) !=
            DS_OK ||
        (rc = ds_module_alloc(b, t, 3, SHAPE(B, S, d->dim_ffn), DS_TENSORS(&s->gate, &s->up),
                              err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* Upstream computes the large-distance bucket in float32 (torch.log of the float distance,
 * divided by the Python float log(max_dist / max_exact)) and truncates; the same roundings
 * here give the same buckets. */
int32_t ds_wan_text_encoder_relative_bucket(int64_t relative_position)
{
    const int32_t half = BUCKETS / 2, max_exact = half / 2;
    int32_t bucket = relative_position > 0 ? half : 0;
    int64_t distance = relative_position < 0 ? -relative_position : relative_position;
    if (distance < max_exact)
        return bucket + (int32_t)distance;
    float scaled = logf((float)distance / (float)max_exact) /
                   (float)log((double)MAX_DIST / max_exact) * (float)(half - max_exact);
    int64_t large = max_exact + (int64_t)scaled;
    return bucket + (int32_t)(large < half - 1 ? large : half - 1);
}

/* The (query, key) buckets of T5RelativeEmbedding.forward(S, S): the same for every block. */
static int bucket_table(int64_t S, te_state *s, ds_error *err)
{
    int32_t *host = malloc((size_t)(S * S) * sizeof *host);
    if (!host)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            OWNER ": out of memory for the position buckets");
    for (int64_t i = 0; i < S; i++)
        for (int64_t j = 0; j < S; j++)
            host[i * S + j] = ds_wan_text_encoder_relative_bucket(j - i);
    int rc = ds_tensor_upload(&s->buckets, host, NULL, err);
    free(host);
    return rc;
}

/* The mask's part of T5Attention's attn_bias: upstream fills it with the dtype's lowest value
 * where a key is padding, which leaves those keys a zero weight; added to the scores here it
 * does the same. None when no key is padding. */
static int key_bias(ds_backend *b, ds_dtype dtype, const ds_tensor *mask, te_state *s,
                    ds_error *err)
{
    uint8_t *keep;
    int padded;
    if (!mask)
        return DS_OK;
    int rc = ds_text_encoder_keep(mask, &keep, &padded, err);
    if (rc != DS_OK || !padded) {
        free(keep);
        return rc;
    }
    size_t n = (size_t)ds_tensor_numel(mask), esize = ds_dtype_size(dtype);
    float values[2] = {dtype == DS_BF16 ? ds_bf16_to_f32(0xff7f) : -FLT_MAX, 0.0f};
    unsigned char typed[2 * sizeof(float)]; /* lowest, then zero, in `dtype` */
    ds_convert_from_f32(values, 2, dtype, typed);
    unsigned char *bias = malloc(n * esize);
    if (!bias) {
        free(keep);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, OWNER ": out of memory");
    }
    for (size_t i = 0; i < n; i++)
        memcpy(bias + i * esize, typed + (keep[i] ? esize : 0), esize);
    if ((rc = ds_tensor_alloc(b, dtype, 4, SHAPE(mask->shape[0], 1, 1, mask->shape[1]),
                              &s->key_bias, err)) == DS_OK)
        rc = ds_tensor_upload(&s->key_bias, bias, NULL, err);
    free(bias);
    free(keep);
    return rc;
}

/* The activations at the loaded tree's widths, and what every block shares: the position
 * buckets (each block gathers its own bias from them), the mask as a bias. */
static int prepare(ds_backend *b, const ds_loaded_model *m, const ds_tensor *input_ids,
                   const ds_tensor *attention_mask, ds_dtype dtype, void *state, ds_error *err)
{
    te_state *s = state;
    te_dims d;
    int64_t S = input_ids->shape[1];
    int rc = tree_dims(m, &d) ? DS_OK
                              : ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                                             "forward: " OWNER ": the loaded tree has no token "
                                             "embedding or block 0");
    if (rc == DS_OK &&
        (rc = alloc_state(b, dtype, &d, input_ids->shape[0], S, s, err)) == DS_OK &&
        (rc = bucket_table(S, s, err)) == DS_OK)
        rc = key_bias(b, dtype, attention_mask, s, err);
    return rc;
}

static int linear(ds_backend *b, const ds_tensor *x, const ds_tensor *weight, ds_activation act,
                  ds_tensor *y, ds_error *err)
{
    ds_linear_args a = {x, weight, NULL, 1.0f, act, y};
    return ds_linear(b, NULL, &a, err);
}

static int permute(ds_backend *b, const ds_tensor *x, int p0, int p1, int p2, int p3,
                   ds_tensor *y, ds_error *err)
{
    ds_permute_args a = {x, {p0, p1, p2, p3}, y};
    return ds_permute(b, NULL, &a, err);
}

/* T5RelativeEmbedding.forward(S, S): embedding(buckets) [S, S, 64], as [1, 64, S, S]. */
static int relative_embedding(ds_backend *b, const block_weights *w, te_state *s,
                              ds_error *err)
{
    int64_t S = s->buckets.shape[0], H = s->pos_bias.shape[1];
    ds_embedding_args gather = {&s->buckets, &w->pos, &s->pos_rows};
    ds_tensor bias3 = ds_module_view(&s->pos_bias, 3, SHAPE(H, S, S));
    ds_permute_args a = {&s->pos_rows, {2, 0, 1}, &bias3};
    int rc;
    if ((rc = ds_embedding(b, NULL, &gather, err)) != DS_OK ||
        (rc = ds_permute(b, NULL, &a, err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* T5Attention.forward(x, mask, pos_embedding(S, S)): per head softmax(q k^T + pos_bias + mask)
 * v, without the 1/sqrt(d) scaling (T5's), then o. */
static int attention(ds_backend *b, const void *weights, void *state, ds_error *err)
{
    const block_weights *w = weights;
    te_state *s = state;
    int64_t B = s->h.shape[0], S = s->h.shape[1], H = s->qh.shape[1], D = s->qh.shape[3];
    int64_t BH = B * H;
    ds_tensor q4 = ds_module_view(&s->q, 4, SHAPE(B, S, H, D));
    ds_tensor k4 = ds_module_view(&s->k, 4, SHAPE(B, S, H, D));
    ds_tensor v4 = ds_module_view(&s->v, 4, SHAPE(B, S, H, D));
    ds_tensor a4 = ds_module_view(&s->attn, 4, SHAPE(B, S, H, D));
    ds_tensor qh = ds_module_view(&s->qh, 3, SHAPE(BH, S, D));
    ds_tensor kh = ds_module_view(&s->kh, 3, SHAPE(BH, S, D));
    ds_tensor vh = ds_module_view(&s->vh, 3, SHAPE(BH, S, D));
    ds_tensor oh = ds_module_view(&s->oh, 3, SHAPE(BH, S, D));
    ds_tensor scores = ds_module_view(&s->scores, 3, SHAPE(BH, S, S));
    ds_batched_matmul_args qk = {&qh, &kh, 0, 1, 1.0f, &scores};
    ds_binary_args pos = {&s->scores, &s->pos_bias, DS_BINARY_ADD, &s->scores};
    ds_binary_args masked = {&s->scores, &s->key_bias, DS_BINARY_ADD, &s->scores};
    ds_softmax_args softmax = {&s->scores, &s->scores};
    ds_batched_matmul_args pv = {&scores, &vh, 0, 0, 1.0f, &oh};
    int rc;
    if ((rc = relative_embedding(b, w, s, err)) != DS_OK ||
        (rc = linear(b, &s->x, &w->q, DS_ACT_NONE, &s->q, err)) != DS_OK ||
        (rc = linear(b, &s->x, &w->k, DS_ACT_NONE, &s->k, err)) != DS_OK ||
        (rc = linear(b, &s->x, &w->v, DS_ACT_NONE, &s->v, err)) != DS_OK ||
        (rc = permute(b, &q4, 0, 2, 1, 3, &s->qh, err)) != DS_OK ||
        (rc = permute(b, &k4, 0, 2, 1, 3, &s->kh, err)) != DS_OK ||
        (rc = permute(b, &v4, 0, 2, 1, 3, &s->vh, err)) != DS_OK ||
        (rc = ds_batched_matmul(b, NULL, &qk, err)) != DS_OK ||
        (rc = ds_binary(b, NULL, &pos, err)) != DS_OK ||
        (s->key_bias.data && (rc = ds_binary(b, NULL, &masked, err)) != DS_OK) ||
        (rc = ds_softmax(b, NULL, &softmax, err)) != DS_OK ||
        (rc = ds_batched_matmul(b, NULL, &pv, err)) != DS_OK ||
        (rc = permute(b, &s->oh, 0, 2, 1, 3, &a4, err)) != DS_OK ||
        (rc = linear(b, &s->attn, &w->o, DS_ACT_NONE, &s->out, err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* T5FeedForward.forward: fc2(fc1(x) * gelu_tanh(gate(x))). */
static int feed_forward(ds_backend *b, const void *weights, void *state, ds_error *err)
{
    const block_weights *w = weights;
    te_state *s = state;
    return ds_text_encoder_gated_mlp(b, &s->x, &w->gate, DS_ACT_GELU_TANH, &w->fc1, &w->fc2,
                                     &s->gate, &s->up, &s->out, err);
}

/* T5SelfAttention.forward: x += attn(norm1(x), mask, pos_embedding(S, S));
 * x += ffn(norm2(x)). (fp16_clamp acts on float16 only, never used here.) */
static const ds_text_encoder_branch self_attention_block[] = {
    {ATTN, BLOCK(norm1), attention},
    {FFN, BLOCK(norm2), feed_forward},
};

/* T5Encoder: token_embedding, the blocks, norm. */
static const ds_text_encoder encoder = {
    .modules = &modules, .embed_group = EMBED, .layer_group = BLOCKS, .norm_group = NORM_GROUP,
    .piece = "block", .norm_eps = NORM_EPS, .branches = self_attention_block,
    .branch_count = COUNT(self_attention_block), .residual = STATE(h), .normed = STATE(x),
    .branch_out = STATE(out), .layer_weights = STATE(block), .prepare = prepare,
    .state_bytes = state_bytes, .state_free = state_free,
};

/* WanTextEncoder.forward(ids, mask). */
int ds_wan_text_encoder_forward(const ds_loaded_model *m, const ds_step_context *ctx,
                                const ds_tensor *input_ids, const ds_tensor *attention_mask,
                                ds_tensor *hidden_out, ds_error *err)
{
    te_state s;
    te_dims d = {0};
    memset(&s, 0, sizeof s);
    if (m && !tree_dims(m, &d))
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "forward: " OWNER ": the loaded tree has no token embedding or "
                            "block 0");
    return ds_text_encoder_forward(&encoder, m, ctx, input_ids, attention_mask, hidden_out,
                                   d.dim, &s, err);
}

/* ---- Steps ---- */

int ds_wan_text_encoder_step_dtype(const ds_loaded_model *m, const ds_step_io *in,
                                   const char *step, ds_dtype *out, ds_error *err)
{
    return ds_text_encoder_step_dtype(&encoder, m, in, step, out, err);
}

static int forward_step(const ds_loaded_model *m, const ds_step_context *ctx, const ds_step_io *in,
                        ds_step_io *out, ds_error *err)
{
    int64_t dim = ds_wan_text_encoder_dim(m);
    if (dim == 0)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "forward: " OWNER
                            ": the loaded tree has no token embedding or block 0");
    return ds_text_encoder_forward_step(&encoder, ds_wan_text_encoder_forward, dim, m, ctx, in,
                                        out, err);
}

static const ds_model_step steps[] = {
    {.name = "forward", .run = forward_step,
     .usage = DS_TEXT_ENCODER_FORWARD_USAGE("[B, S, dim] (4096)"),
     .memory = ds_memory_wan_video_text_encoder},
};

DS_MODEL_CLASS(ds__wan_video_text_encoder_class, CLASS_NAME, declare_parameters, steps);
