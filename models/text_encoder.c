#include "models/text_encoder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/weight_set.h"

#define EMBEDDING offsetof(ds_text_encoder_weights, embedding)

const char *const ds_text_encoder_norm_units[1] = {"norm"};

static int is_mask_dtype(ds_dtype d)
{
    return d == DS_I64 || d == DS_I32 || d == DS_U8 || d == DS_BOOL;
}

static int check_tensors(const ds_tensor *ids, const ds_tensor *mask, const ds_tensor *hidden,
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

static int check(const ds_text_encoder *te, const ds_loaded_model *m,
                 const ds_step_context *ctx, const ds_tensor *input_ids,
                 const ds_tensor *attention_mask, const ds_tensor *hidden_out, int64_t dim,
                 ds_error *err)
{
    if (!m || !ctx || !ctx->backend)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "forward: no model or no backend");
    int64_t layers = ds_module_count(te->modules, m, te->layer_group);
    const ds_tensor_view *table = ds_module_find(te->modules, m, te->embed_group, 0, EMBEDDING);
    if (layers == 0)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "forward: %s: the loaded tree has no %ss", te->modules->owner,
                            te->piece);
    if (!table || table->ndim != 2)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "forward: %s: the loaded tree has no token embedding",
                            te->modules->owner);
    int rc = check_tensors(input_ids, attention_mask, hidden_out, dim, err);
    if (rc != DS_OK)
        return rc;
    return check_ids(input_ids, table->shape[0], err);
}

int ds_text_encoder_keep(const ds_tensor *attention_mask, uint8_t **keep, int *padded,
                         ds_error *err)
{
    uint64_t n = ds_tensor_numel(attention_mask);
    size_t esize = ds_dtype_size(attention_mask->dtype);
    uint8_t *flags = malloc(n ? n : 1);
    if (!flags)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "forward: out of memory reading attention_mask");
    *padded = 0;
    for (uint64_t i = 0; i < n; i++) {
        const unsigned char *e = (const unsigned char *)attention_mask->data + i * esize;
        uint8_t nonzero = 0;
        for (size_t k = 0; k < esize; k++)
            nonzero |= e[k] != 0;
        flags[i] = nonzero;
        *padded |= !nonzero;
    }
    *keep = flags;
    return DS_OK;
}

/* The gather of a model whose vram_config rests its weights in another dtype (fp8 offload):
 * gathered in f32 (exact from any stored dtype), rounded through `offload`, then converted to
 * y's dtype. Rounding only the rows gathered equals rounding the table. */
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
                          "forward: out of memory rounding %zu embedded values", n);
    else if ((rc = ds_embedding(cpu, NULL, &a, err)) == DS_OK) {
        ds_convert_from_f32(wide.data, n, offload, narrow);
        ds_convert_to_f32(narrow, offload, n, wide.data);
        ds_convert_from_f32(wide.data, n, y->dtype, y->data);
    }
    free(narrow);
    ds_tensor_free(&wide);
    return rc;
}

/* embedding(input_ids) into h, on the host. */
static int embed(const ds_text_encoder *te, const ds_loaded_model *m, ds_backend *b,
                 const ds_tensor *input_ids, ds_tensor *h, ds_error *err)
{
    ds_backend *cpu = b;
    ds__weight_set host_set;
    ds_text_encoder_weights tw;
    ds_tensor staging = {0};
    int rc;
    if (!b->host_memory && (rc = ds_cpu_fallback_backend(&cpu, err)) != DS_OK)
        return rc;
    ds__weight_set_init(&host_set, cpu, te->modules->owner);
    ds_tensor ids = ds_tensor_wrap(cpu, input_ids->dtype, 2, input_ids->shape, input_ids->data);
    ds_tensor *y = h;
    if (!b->host_memory) {
        if ((rc = ds_tensor_alloc(cpu, h->dtype, 3, h->shape, &staging, err)) != DS_OK)
            goto done;
        y = &staging;
    }
    if ((rc = ds_module_bind(te->modules, m, &host_set, te->embed_group, 0, DS_MODULE_NO_UNIT,
                             &tw, err)) != DS_OK)
        goto done;
    ds_dtype offload = ds__weight_offload_dtype(m, tw.embedding.dtype);
    if (offload != DS_DTYPE_INVALID && offload != tw.embedding.dtype) {
        rc = embed_rounded(cpu, &ids, &tw.embedding, offload, y, err);
    } else {
        ds_embedding_args a = {&ids, &tw.embedding, y};
        rc = ds_embedding(cpu, NULL, &a, err);
    }
    if (rc == DS_OK && !b->host_memory)
        rc = ds_tensor_upload(h, staging.data, NULL, err);
done:
    ds_tensor_free(&staging);
    ds__weight_set_release(&host_set);
    return rc;
}

static int linear(ds_backend *b, const ds_tensor *x, const ds_tensor *weight, ds_activation act,
                  ds_tensor *y, ds_error *err)
{
    ds_linear_args a = {x, weight, NULL, 1.0f, act, y};
    return ds_linear(b, NULL, &a, err);
}

int ds_text_encoder_gated_mlp(ds_backend *b, const ds_tensor *x, const ds_tensor *gate_weight,
                              ds_activation act, const ds_tensor *up_weight,
                              const ds_tensor *down_weight, ds_tensor *gate, ds_tensor *up,
                              ds_tensor *out, ds_error *err)
{
    ds_binary_args glu = {gate, up, DS_BINARY_MUL, gate};
    int rc;
    if ((rc = linear(b, x, gate_weight, act, gate, err)) != DS_OK ||
        (rc = linear(b, x, up_weight, DS_ACT_NONE, up, err)) != DS_OK ||
        (rc = ds_binary(b, NULL, &glu, err)) != DS_OK)
        return rc;
    return linear(b, gate, down_weight, DS_ACT_NONE, out, err);
}

#define AT(state, offset) ((void *)((char *)(state) + (offset)))

/* Copy i of the layers, its branches in order, each after its unit is made usable. */
static int layer(const ds_text_encoder *te, ds_backend *b, ds_module_run *r, int64_t i,
                 void *state, ds_error *err)
{
    ds_tensor *h = AT(state, te->residual), *x = AT(state, te->normed);
    void *w = AT(state, te->layer_weights);
    ds_binary_args residual = {h, AT(state, te->branch_out), DS_BINARY_ADD, h};
    int rc;
    for (size_t k = 0; k < te->branch_count; k++) {
        const ds_text_encoder_branch *br = &te->branches[k];
        ds_rms_norm_args norm = {h, AT(w, br->norm), te->norm_eps, x};
        if ((rc = ds_module_use(r, te->layer_group, i, br->unit, w, err)) != DS_OK ||
            (rc = ds_rms_norm(b, NULL, &norm, err)) != DS_OK ||
            (rc = br->run(b, w, state, err)) != DS_OK ||
            (rc = ds_binary(b, NULL, &residual, err)) != DS_OK)
            return rc;
    }
    return ds_module_done(r, err);
}

static int run(const ds_text_encoder *te, const ds_loaded_model *m, const ds_step_context *ctx,
               const ds_tensor *input_ids, void *state, ds_tensor *hidden_out, ds_error *err)
{
    ds_tensor *h = AT(state, te->residual);
    ds_backend *b = ctx->backend;
    int64_t layers = ds_module_count(te->modules, m, te->layer_group);
    ds_text_encoder_weights tw;
    ds_module_run run;
    ds_tensor result_copy = {0}, result;
    memset(&run, 0, sizeof run);
    int rc = ds_module_open_compute(&run, te->modules, m, b, ctx->vram, ctx->convert,
                                    hidden_out->dtype, 1, "forward", err);
    if (rc != DS_OK)
        return rc;
    if ((rc = embed(te, m, b, input_ids, h, err)) != DS_OK ||
        (rc = ds_module_output(b, hidden_out, &result_copy, &result, err)) != DS_OK ||
        (rc = ds_module_reserve(&run, "forward: activations",
                                te->state_bytes(state) +
                                    ds_module_bytes(DS_TENSORS(&result_copy), 1),
                                err)) != DS_OK)
        goto done;

    for (int64_t i = 0; i < layers; i++) {
        if ((rc = ds_module_cancelled(ctx, "forward", te->piece, i, layers, err)) != DS_OK)
            goto done;
        if ((rc = layer(te, b, &run, i, state, err)) != DS_OK) {
            ds_error_prefix(err, "forward: %s %lld: ", te->piece, (long long)i);
            goto done;
        }
        ds_module_progress(ctx, "forward", i, layers);
    }

    /* The final norm: hidden_states[-1] in upstream's output. */
    ds_rms_norm_args norm = {h, &tw.norm, te->norm_eps, &result};
    if ((rc = ds_module_use(&run, te->norm_group, 0, 0, &tw, err)) == DS_OK &&
        (rc = ds_rms_norm(b, NULL, &norm, err)) == DS_OK &&
        (rc = ds_module_done(&run, err)) == DS_OK)
        rc = ds_module_deliver(b, &result, hidden_out, err);
done:
    ds_module_close(&run);
    ds_tensor_free(&result_copy);
    return rc;
}

int ds_text_encoder_forward(const ds_text_encoder *te, const ds_loaded_model *m,
                            const ds_step_context *ctx, const ds_tensor *input_ids,
                            const ds_tensor *attention_mask, ds_tensor *hidden_out, int64_t dim,
                            void *state, ds_error *err)
{
    int rc = check(te, m, ctx, input_ids, attention_mask, hidden_out, dim, err);
    if (rc == DS_OK && (rc = te->prepare(ctx->backend, m, input_ids, attention_mask,
                                         hidden_out->dtype, state, err)) == DS_OK)
        rc = run(te, m, ctx, input_ids, state, hidden_out, err);
    te->state_free(state);
    return rc;
}

int ds_text_encoder_step_dtype(const ds_text_encoder *te, const ds_loaded_model *m,
                               const ds_step_io *in, const char *step, ds_dtype *out,
                               ds_error *err)
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
    const ds_tensor_view *e = ds_module_find(te->modules, m, te->embed_group, 0, EMBEDDING);
    *out = e && e->dtype == DS_F32 ? DS_F32 : DS_BF16;
    return DS_OK;
}

int ds_text_encoder_forward_step(const ds_text_encoder *te, ds_text_encoder_forward_fn forward,
                                 int64_t dim, const ds_loaded_model *m,
                                 const ds_step_context *ctx, const ds_step_io *in,
                                 ds_step_io *out, ds_error *err)
{
    static const char *const known[] = {"input_ids", "attention_mask", "dtype", NULL};
    static const ds_dtype id_dtypes[] = {DS_I64, DS_I32};
    static const ds_dtype mask_dtypes[] = {DS_I64, DS_I32, DS_U8, DS_BOOL};
    static const char ids_expected[] = "[B, S] i64 or i32 token ids";
    const ds_tensor *ids, *mask;
    char expected[128];
    ds_dtype dtype = DS_BF16;
    int rc;
    if ((rc = ds_step_io_check_names(in, "forward", known, err)) != DS_OK ||
        (rc = ds_step_io_require(in, "forward", "input_ids", 0, id_dtypes, 2, 2,
                                 (const int64_t[]){-1, -1}, ids_expected, &ids, err)) != DS_OK)
        return rc;
    if (ids->shape[0] < 1 || ids->shape[1] < 1)
        return ds_module_bad_tensor("forward", "input", "input_ids", ids,
                                    "[B, S] i64 or i32 token ids, B and S >= 1", err);
    snprintf(expected, sizeof expected, "[%lld, %lld] i64, i32, u8 or bool (input_ids' shape)",
             (long long)ids->shape[0], (long long)ids->shape[1]);
    if ((rc = ds_step_io_require(in, "forward", "attention_mask", 1, mask_dtypes, 4, 2,
                                 ids->shape, expected, &mask, err)) != DS_OK ||
        (rc = ds_text_encoder_step_dtype(te, m, in, "forward", &dtype, err)) != DS_OK)
        return rc;
    ds_backend *cpu = ctx->backend;
    ds_tensor *hidden;
    if (!cpu->host_memory && (rc = ds_cpu_fallback_backend(&cpu, err)) != DS_OK)
        return rc;
    if ((rc = ds_step_io_new_tensor(out, cpu, "hidden_states", dtype, 3,
                                    (const int64_t[]){ids->shape[0], ids->shape[1], dim},
                                    &hidden, err)) != DS_OK)
        return rc;
    return forward(m, ctx, ids, mask, hidden, err);
}
