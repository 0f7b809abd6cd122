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
#include "models/model_class.h"
#include "models/module.h"
#include "models/param_tree.h"
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

/* The encoder's parameters outside the blocks. */
typedef struct top_weights {
    ds_tensor token_embedding; /* [vocab, 4096] */
    ds_tensor norm;            /* [4096] */
} top_weights;

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
static const char *const norm_units[] = {"norm"};

#define NO_UNIT DS_MODULE_NO_UNIT
#define BLOCK(f) offsetof(block_weights, f)
#define TOP(f) offsetof(top_weights, f)
#define LINEAR_NO_BIAS(name, out, in, unit, field) \
    {name, DS_MODULE_LINEAR_NO_BIAS, 2, {out, in}, unit, field, 0}
#define NORM(name, n, unit, field) {name, DS_MODULE_NORM, 1, {n}, unit, field, 0}
#define COUNT(a) (sizeof a / sizeof a[0])

#define D_MODEL DS_MODULE_DIM(KW_DIM)
#define D_ATTN DS_MODULE_DIM(KW_DIM_ATTN)
#define D_FFN DS_MODULE_DIM(KW_DIM_FFN)

static const ds_module embed_modules[] = {
    {"token_embedding", DS_MODULE_EMBEDDING, 2, {DS_MODULE_DIM(KW_VOCAB), D_MODEL}, NO_UNIT,
     TOP(token_embedding), 0},
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
static const ds_module norm_modules[] = {NORM("norm", D_MODEL, 0, TOP(norm))};

static const ds_module_group groups[] = {
    [EMBED] = {"", 0, embed_modules, COUNT(embed_modules), NULL, 0},
    [BLOCKS] = {"blocks.%lld.", DS_MODULE_DIM(KW_LAYERS), block_modules, COUNT(block_modules),
                block_units, COUNT(block_units)},
    [NORM_GROUP] = {"", 0, norm_modules, 1, norm_units, 1},
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
    const ds_tensor_view *e = ds_module_find(&modules, m, EMBED, 0, TOP(token_embedding));
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
    ds_tensor embedded; /* [B, S, 4096] host: the gathered embedding (non-CPU backends) */
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
    ds_tensor result;   /* [B, S, 4096]: the final norm's output (non-CPU backends) */
} te_state;

#define STATE_TENSORS(s)                                                                       \
    &(s)->buckets, &(s)->key_bias, &(s)->pos_rows, &(s)->pos_bias, &(s)->h, &(s)->x, &(s)->q,   \
        &(s)->k, &(s)->v, &(s)->qh, &(s)->kh, &(s)->vh, &(s)->scores, &(s)->oh, &(s)->attn,    \
        &(s)->out, &(s)->gate, &(s)->up, &(s)->result

static void state_free(te_state *s)
{
    ds_tensor *all[] = {&s->embedded, STATE_TENSORS(s)};
    for (size_t i = 0; i < COUNT(all); i++)
        ds_tensor_free(all[i]);
}

/* Bytes of the activations on the compute backend. */
static size_t state_bytes(te_state *s)
{
    ds_tensor *const all[] = {STATE_TENSORS(s)};
    return ds_module_bytes(all, COUNT(all));
}

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}

static int is_mask_dtype(ds_dtype d)
{
    return d == DS_I64 || d == DS_I32 || d == DS_U8 || d == DS_BOOL;
}

static int check_inputs(const ds_tensor *ids, const ds_tensor *mask, const ds_tensor *hidden,
                        int64_t dim, ds_error *err)
{
    char expected[128];
    if (!ids || !hidden)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "forward: input_ids and the output are required");
    if ((ids->dtype != DS_I64 && ids->dtype != DS_I32) || ids->ndim != 2 || ids->shape[0] < 1 ||
        ids->shape[1] < 1 || !ids->data)
        return ds_module_bad_tensor("forward", "input", "input_ids", ids,
                                    "[B, S] i64 or i32 token ids, B and S >= 1", err);
    int64_t B = ids->shape[0], S = ids->shape[1];
    snprintf(expected, sizeof expected, "[%lld, %lld] i64, i32, u8 or bool (input_ids' shape)",
             (long long)B, (long long)S);
    if (mask && (!is_mask_dtype(mask->dtype) || mask->ndim != 2 || mask->shape[0] != B ||
                 mask->shape[1] != S || !mask->data))
        return ds_module_bad_tensor("forward", "input", "attention_mask", mask, expected, err);
    snprintf(expected, sizeof expected, "[%lld, %lld, %lld] f32 or bf16", (long long)B,
             (long long)S, (long long)dim);
    if ((hidden->dtype != DS_F32 && hidden->dtype != DS_BF16) || hidden->ndim != 3 ||
        hidden->shape[0] != B || hidden->shape[1] != S || hidden->shape[2] != dim ||
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
    if (!mask)
        return DS_OK;
    uint64_t n = ds_tensor_numel(mask);
    size_t esize = ds_dtype_size(mask->dtype);
    float *bias = malloc((n ? n : 1) * sizeof *bias);
    if (!bias)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, OWNER ": out of memory");
    float lowest = dtype == DS_BF16 ? ds_bf16_to_f32(0xff7f) : -FLT_MAX;
    int padded = 0;
    for (uint64_t i = 0; i < n; i++) {
        const unsigned char *e = (const unsigned char *)mask->data + i * esize;
        uint8_t nonzero = 0;
        for (size_t k = 0; k < esize; k++)
            nonzero |= e[k] != 0;
        bias[i] = nonzero ? 0.0f : lowest;
        padded |= !nonzero;
    }
    int rc = DS_OK;
    if (padded) {
        void *typed = dtype == DS_F32 ? (void *)bias : malloc((size_t)n * ds_dtype_size(dtype));
        if (!typed)
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, OWNER ": out of memory");
        else {
            if (typed != bias)
                ds_convert_from_f32(bias, (size_t)n, dtype, typed);
            if ((rc = ds_tensor_alloc(b, dtype, 4, SHAPE(mask->shape[0], 1, 1, mask->shape[1]),
                                      &s->key_bias, err)) == DS_OK)
                rc = ds_tensor_upload(&s->key_bias, typed, NULL, err);
            if (typed != bias)
                free(typed);
        }
    }
    free(bias);
    return rc;
}

/* token_embedding(ids) into s->h, gathered on the host where the table is a view of the file
 * (a device would otherwise need all 256384 rows for a few hundred). A vram_config that rests
 * the weights in another dtype rounds the gathered rows through it, as upstream's embedding
 * module holds the table so rounded. */
static int embed(const ds_loaded_model *m, ds_backend *b, const ds_tensor *input_ids,
                 te_state *s, ds_error *err)
{
    ds_backend *cpu = b;
    ds__weight_set host_set;
    top_weights tw;
    int rc;
    if (!b->host_memory && (rc = ds_cpu_fallback_backend(&cpu, err)) != DS_OK)
        return rc;
    ds__weight_set_init(&host_set, cpu, OWNER);
    ds_tensor ids = ds_tensor_wrap(cpu, input_ids->dtype, 2, input_ids->shape, input_ids->data);
    ds_tensor wide = {0};
    ds_tensor *y = &s->h;
    if (!b->host_memory) {
        if ((rc = ds_tensor_alloc(cpu, s->h.dtype, 3, s->h.shape, &s->embedded, err)) != DS_OK)
            goto done;
        y = &s->embedded;
    }
    if ((rc = ds_module_bind(&modules, m, &host_set, EMBED, 0, DS_MODULE_NO_UNIT, &tw, err)) !=
        DS_OK)
        goto done;
    ds_dtype offload = ds__weight_offload_dtype(m, tw.token_embedding.dtype);
    int rounded = offload != DS_DTYPE_INVALID && offload != tw.token_embedding.dtype;
    if (rounded && (rc = ds_tensor_alloc(cpu, DS_F32, 3, y->shape, &wide, err)) != DS_OK)
        goto done;
    ds_embedding_args a = {&ids, &tw.token_embedding, rounded ? &wide : y};
    if ((rc = ds_embedding(cpu, NULL, &a, err)) != DS_OK)
        goto done;
    if (rounded) {
        size_t n = (size_t)ds_tensor_numel(&wide);
        void *narrow = malloc(n * ds_dtype_size(offload));
        if (!narrow) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                              OWNER ": out of memory rounding %zu embedded values", n);
            goto done;
        }
        ds_convert_from_f32(wide.data, n, offload, narrow);
        ds_convert_to_f32(narrow, offload, n, wide.data);
        ds_convert_from_f32(wide.data, n, y->dtype, y->data);
        free(narrow);
    }
    if (!b->host_memory)
        rc = ds_tensor_upload(&s->h, s->embedded.data, NULL, err);
done:
    ds_tensor_free(&wide);
    ds__weight_set_release(&host_set);
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
static int relative_embedding(ds_backend *b, const block_weights *w, te_state *s, ds_error *err)
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

/* T5Attention.forward(x, mask, pos_bias): per head softmax(q k^T + pos_bias + mask) v, without
 * the 1/sqrt(d) scaling (T5's), then o. */
static int attention(ds_backend *b, const block_weights *w, te_state *s, ds_error *err)
{
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
    if ((rc = linear(b, &s->x, &w->q, DS_ACT_NONE, &s->q, err)) != DS_OK ||
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
static int feed_forward(ds_backend *b, const block_weights *w, te_state *s, ds_error *err)
{
    ds_binary_args glu = {&s->up, &s->gate, DS_BINARY_MUL, &s->gate};
    int rc;
    if ((rc = linear(b, &s->x, &w->fc1, DS_ACT_NONE, &s->up, err)) != DS_OK ||
        (rc = linear(b, &s->x, &w->gate, DS_ACT_GELU_TANH, &s->gate, err)) != DS_OK ||
        (rc = ds_binary(b, NULL, &glu, err)) != DS_OK ||
        (rc = linear(b, &s->gate, &w->fc2, DS_ACT_NONE, &s->out, err)) != DS_OK)
        return rc;
    return DS_OK;
}

/* T5SelfAttention.forward: x += attn(norm1(x), mask, pos_embedding(S, S));
 * x += ffn(norm2(x)). (fp16_clamp acts on float16 only, never used here.) */
static int self_attention_block(ds_backend *b, ds_module_run *r, int64_t i, te_state *s,
                                ds_error *err)
{
    block_weights w;
    ds_rms_norm_args n1 = {&s->h, &w.norm1, NORM_EPS, &s->x};
    ds_rms_norm_args n2 = {&s->h, &w.norm2, NORM_EPS, &s->x};
    ds_binary_args residual = {&s->h, &s->out, DS_BINARY_ADD, &s->h};
    int rc;
    if ((rc = ds_module_use(r, BLOCKS, i, ATTN, &w, err)) != DS_OK ||
        (rc = relative_embedding(b, &w, s, err)) != DS_OK ||
        (rc = ds_rms_norm(b, NULL, &n1, err)) != DS_OK ||
        (rc = attention(b, &w, s, err)) != DS_OK ||
        (rc = ds_binary(b, NULL, &residual, err)) != DS_OK ||
        (rc = ds_module_use(r, BLOCKS, i, FFN, &w, err)) != DS_OK ||
        (rc = ds_rms_norm(b, NULL, &n2, err)) != DS_OK ||
        (rc = feed_forward(b, &w, s, err)) != DS_OK ||
        (rc = ds_binary(b, NULL, &residual, err)) != DS_OK)
        return rc;
    return ds_module_done(r, err);
}

/* WanTextEncoder.forward(ids, mask). */
int ds_wan_text_encoder_forward(const ds_loaded_model *m, const ds_step_context *ctx,
                                const ds_tensor *input_ids, const ds_tensor *attention_mask,
                                ds_tensor *hidden_out, ds_error *err)
{
    te_state s;
    top_weights tw;
    ds_module_run run;
    memset(&s, 0, sizeof s);
    memset(&run, 0, sizeof run);
    te_dims d;
    if (!m || !ctx || !ctx->backend)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "forward: no model or no backend");
    int64_t blocks = ds_module_count(&modules, m, BLOCKS);
    const ds_tensor_view *table = ds_module_find(&modules, m, EMBED, 0, TOP(token_embedding));
    if (blocks == 0 || !tree_dims(m, &d))
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "forward: " OWNER ": the loaded tree has no %s",
                            blocks == 0 ? "blocks" : "token embedding or block 0");
    int rc = check_inputs(input_ids, attention_mask, hidden_out, d.dim, err);
    if (rc != DS_OK)
        return rc;
    if ((rc = check_ids(input_ids, table->shape[0], err)) != DS_OK)
        return rc;
    ds_backend *b = ctx->backend;
    int64_t B = input_ids->shape[0], S = input_ids->shape[1];
    ds_dtype dtype = hidden_out->dtype;
    if ((rc = ds_module_open(&run, &modules, m, b, ctx->vram, 1, "forward", err)) != DS_OK)
        return rc;

    ds_tensor result;
    if ((rc = alloc_state(b, dtype, &d, B, S, &s, err)) != DS_OK ||
        (rc = bucket_table(S, &s, err)) != DS_OK ||
        (rc = key_bias(b, dtype, attention_mask, &s, err)) != DS_OK ||
        (rc = embed(m, b, input_ids, &s, err)) != DS_OK ||
        (rc = ds_module_output(b, hidden_out, &s.result, &result, err)) != DS_OK ||
        (rc = ds_module_reserve(&run, "forward: activations", state_bytes(&s), err)) != DS_OK)
        goto done;

    for (int64_t i = 0; i < blocks; i++) {
        if ((rc = ds_module_cancelled(ctx, "forward", "block", i, blocks, err)) != DS_OK)
            goto done;
        if ((rc = self_attention_block(b, &run, i, &s, err)) != DS_OK) {
            ds_error_prefix(err, "forward: block %lld: ", (long long)i);
            goto done;
        }
        ds_module_progress(ctx, "forward", i, blocks);
    }

    ds_rms_norm_args norm = {&s.h, &tw.norm, NORM_EPS, &result};
    if ((rc = ds_module_use(&run, NORM_GROUP, 0, 0, &tw, err)) == DS_OK &&
        (rc = ds_rms_norm(b, NULL, &norm, err)) == DS_OK &&
        (rc = ds_module_done(&run, err)) == DS_OK)
        rc = ds_module_deliver(b, &result, hidden_out, err);
done:
    ds_module_close(&run);
    state_free(&s);
    return rc;
}

/* ---- Steps ---- */

int ds_wan_text_encoder_step_dtype(const ds_loaded_model *m, const ds_step_io *in,
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
    const ds_tensor_view *e = ds_module_find(&modules, m, EMBED, 0, TOP(token_embedding));
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
        return ds_module_bad_tensor("forward", "input", "input_ids", ids,
                                    "[B, S] i64 or i32 token ids, B and S >= 1", err);
    snprintf(expected, sizeof expected, "[%lld, %lld] i64, i32, u8 or bool (input_ids' shape)",
             (long long)ids->shape[0], (long long)ids->shape[1]);
    if ((rc = ds_step_io_require(in, "forward", "attention_mask", 1, mask_dtypes, 4, 2,
                                 ids->shape, expected, &mask, err)) != DS_OK ||
        (rc = ds_wan_text_encoder_step_dtype(m, in, "forward", &dtype, err)) != DS_OK)
        return rc;
    ds_backend *cpu = ctx->backend;
    ds_tensor *hidden;
    int64_t dim = ds_wan_text_encoder_dim(m);
    if (dim == 0)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "forward: " OWNER
                            ": the loaded tree has no token embedding or block 0");
    if (!cpu->host_memory && (rc = ds_cpu_fallback_backend(&cpu, err)) != DS_OK)
        return rc;
    if ((rc = ds_step_io_new_tensor(out, cpu, "hidden_states", dtype, 3,
                                    SHAPE(ids->shape[0], ids->shape[1], dim), &hidden, err)) !=
        DS_OK)
        return rc;
    return ds_wan_text_encoder_forward(m, ctx, ids, mask, hidden, err);
}

static const ds_model_step steps[] = {
    {
        .name = "forward",
        .run = forward_step,
        .usage = "forward: input_ids [B, S] (i64 or i32), attention_mask [B, S] (optional; 0 = "
                 "padding), dtype (float32 or bfloat16; default bfloat16, float32 for a float32 "
                 "checkpoint) -> hidden_states [B, S, dim] (4096), after the final norm",
    },
};

DS_MODEL_CLASS(ds__wan_video_text_encoder_class, CLASS_NAME, declare_parameters, steps);
