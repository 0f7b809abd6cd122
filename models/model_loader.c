/* Identification, suggestions and loading of model files against the config table (facts §2). */
#include "models/model_loader.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How many names of each kind a fit report lists before it only counts. */
#define REPORT_LIST_MAX 20
/* Longest single item (a name, or a name with two shapes) kept for the report. */
#define REPORT_ITEM_BYTES 320

int ds_config_is_implemented(const ds_model_config *config)
{
    if (!ds_model_class_find(config->model_class))
        return 0;
    if (config->state_dict_converter && !ds_converter_find(config->state_dict_converter))
        return 0;
    return 1;
}

/* Upstream formats `path` with str(): a plain path for one file, a list repr for several. */
static void files_label(const ds_model_files *files, char *buf, size_t size)
{
    if (files->count == 1) {
        snprintf(buf, size, "%s", files->files[0].path);
        return;
    }
    size_t used = 0;
    for (size_t i = 0; i < files->count && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s'%s'", i ? ", " : "[",
                                 files->files[i].path);
    if (used < size)
        snprintf(buf + used, size - used, "%s]", files->count ? "" : "[");
}

int ds_identify_files(const ds_config_table *table, const ds_model_files *files,
                      ds_identification *out, ds_error *err)
{
    memset(out, 0, sizeof *out);
    int rc = ds_model_hash(&files->merged, out->model_hash);
    if (rc != DS_OK) {
        char label[1024];
        files_label(files, label, sizeof label);
        return ds_error_set(err, rc, "cannot compute the model hash of %s", label);
    }
    out->tensor_count = ds_state_dict_tensor_count(&files->merged);
    size_t capacity = ds_config_table_count(table);
    if (capacity == 0)
        return DS_OK;
    out->configs = malloc(capacity * sizeof *out->configs);
    if (!out->configs)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory matching configs");
    out->config_count = ds_config_table_match(table, out->model_hash, out->configs, capacity);
    if (out->config_count == 0) {
        free(out->configs);
        out->configs = NULL;
    }
    return DS_OK;
}

void ds_identification_free(ds_identification *ident)
{
    if (!ident)
        return;
    free(ident->configs);
    ident->configs = NULL;
    ident->config_count = 0;
}

/* --- suggestions ------------------------------------------------------------------------- */

/* One declared tree per (class, kwargs) and one converted dict per converter, so a table
 * with many rows for one class costs one declaration. */
typedef struct tree_entry {
    const ds_model_class *cls;
    const char *kwargs_json;
    int refused;
    ds_state_dict tree;
} tree_entry;

typedef struct converted_entry {
    const ds_converter *converter;
    int failed;
    ds_state_dict dict;
} converted_entry;

typedef struct candidate {
    ds_config_suggestion suggestion;
    size_t order;
} candidate;

static int same_kwargs(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static int by_shared_desc(const void *pa, const void *pb)
{
    const candidate *a = pa, *b = pb;
    if (a->suggestion.shared_names != b->suggestion.shared_names)
        return a->suggestion.shared_names > b->suggestion.shared_names ? -1 : 1;
    return a->order < b->order ? -1 : a->order > b->order;
}

/* The cached tree for the config, declaring it on first use. NULL with *rc == DS_OK when the
 * class refuses the kwargs (the config cannot be a suggestion). */
static const ds_state_dict *cached_tree(tree_entry *trees, size_t *tree_count,
                                        const ds_model_class *cls, const char *kwargs_json,
                                        int *rc, ds_error *err)
{
    *rc = DS_OK;
    for (size_t i = 0; i < *tree_count; i++)
        if (trees[i].cls == cls && same_kwargs(trees[i].kwargs_json, kwargs_json))
            return trees[i].refused ? NULL : &trees[i].tree;
    tree_entry *t = &trees[(*tree_count)++];
    t->cls = cls;
    t->kwargs_json = kwargs_json;
    ds_state_dict_init(&t->tree);
    ds_error local;
    ds_error_clear(&local);
    int r = ds_model_class_declare(cls, kwargs_json, &t->tree, &local);
    if (r == DS_ERR_RESOURCE_EXHAUSTED) {
        *rc = ds_error_set(err, r, "%s", local.message);
        return NULL;
    }
    t->refused = r != DS_OK;
    return t->refused ? NULL : &t->tree;
}

static const ds_state_dict *cached_conversion(converted_entry *convs, size_t *conv_count,
                                              const ds_converter *converter,
                                              const ds_state_dict *merged, int *rc, ds_error *err)
{
    *rc = DS_OK;
    for (size_t i = 0; i < *conv_count; i++)
        if (convs[i].converter == converter)
            return convs[i].failed ? NULL : &convs[i].dict;
    converted_entry *c = &convs[(*conv_count)++];
    c->converter = converter;
    ds_state_dict_init(&c->dict);
    ds_error local;
    ds_error_clear(&local);
    int r = converter->convert(merged, &c->dict, &local);
    if (r == DS_ERR_RESOURCE_EXHAUSTED) {
        *rc = ds_error_set(err, r, "%s", local.message);
        return NULL;
    }
    c->failed = r != DS_OK;
    return c->failed ? NULL : &c->dict;
}

int ds_suggest_configs(const ds_config_table *table, const ds_model_files *files,
                       ds_config_suggestion *out, size_t max, size_t *count, ds_error *err)
{
    *count = 0;
    size_t n = ds_config_table_count(table);
    if (n == 0)
        return DS_OK;
    tree_entry *trees = calloc(n, sizeof *trees);
    converted_entry *convs = calloc(n, sizeof *convs);
    candidate *cands = calloc(n, sizeof *cands);
    size_t tree_count = 0, conv_count = 0, cand_count = 0;
    int rc = DS_OK;
    if (!trees || !convs || !cands) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory ranking configs");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const ds_model_config *config = ds_config_table_at(table, i);
        if (!ds_config_is_implemented(config))
            continue;
        const ds_state_dict *tree =
            cached_tree(trees, &tree_count, ds_model_class_find(config->model_class),
                        config->extra_kwargs_json, &rc, err);
        if (rc != DS_OK)
            goto done;
        if (!tree)
            continue;
        const ds_state_dict *source = &files->merged;
        if (config->state_dict_converter) {
            source = cached_conversion(convs, &conv_count,
                                       ds_converter_find(config->state_dict_converter),
                                       &files->merged, &rc, err);
            if (rc != DS_OK)
                goto done;
            if (!source)
                continue;
        }
        size_t shared = 0;
        for (size_t k = 0; k < source->count; k++)
            if (ds_state_dict_find(tree, source->entries[k].name))
                shared++;
        if (shared == 0)
            continue;
        cands[cand_count++] = (candidate){
            .suggestion = {.config = config, .shared_names = shared, .config_names = tree->count},
            .order = i,
        };
    }
    qsort(cands, cand_count, sizeof *cands, by_shared_desc);
    for (size_t i = 0; i < cand_count && i < max; i++)
        out[(*count)++] = cands[i].suggestion;
done:
    for (size_t i = 0; trees && i < tree_count; i++)
        ds_state_dict_free(&trees[i].tree);
    for (size_t i = 0; convs && i < conv_count; i++)
        ds_state_dict_free(&convs[i].dict);
    free(trees);
    free(convs);
    free(cands);
    return rc;
}

/* --- loading ----------------------------------------------------------------------------- */

/* One kind of misfit between a state dict and a tree: a count and the first few items. */
typedef struct misfit {
    const char *title;
    size_t count;
    size_t kept;
    char items[REPORT_LIST_MAX][REPORT_ITEM_BYTES];
} misfit;

static void misfit_add(misfit *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void misfit_add(misfit *m, const char *fmt, ...)
{
    m->count++;
    if (m->kept == REPORT_LIST_MAX)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->items[m->kept++], REPORT_ITEM_BYTES, fmt, ap);
    va_end(ap);
}

static int is_float(ds_dtype dtype)
{
    return dtype == DS_F32 || dtype == DS_F16 || dtype == DS_BF16 || dtype == DS_F64 ||
           dtype == DS_F8_E4M3 || dtype == DS_F8_E5M2;
}

static int same_shape(const ds_tensor_view *a, const ds_tensor_view *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

/* Appends the kinds' items to body, sharing what a ds_error can hold between the kinds that
 * have any, so that every kind shows its first names and how many more there are. */
static void format_misfits(const misfit *kinds, int nkinds, size_t budget, char *body,
                           size_t size)
{
    int nonempty = 0;
    for (int k = 0; k < nkinds; k++)
        nonempty += kinds[k].count > 0;
    size_t used = 0;
    body[0] = '\0';
    for (int k = 0; k < nkinds && nonempty; k++) {
        const misfit *m = &kinds[k];
        if (!m->count)
            continue;
        size_t start = used, share = budget / (size_t)nonempty;
        used += (size_t)snprintf(body + used, size - used, "\n  %s (%zu):", m->title, m->count);
        if (used >= size)
            return;
        size_t shown = 0;
        /* 32 bytes stay free for the "... and N more" line. */
        while (shown < m->kept && used - start + strlen(m->items[shown]) + 5 + 32 <= share &&
               used + strlen(m->items[shown]) + 5 < size) {
            used += (size_t)snprintf(body + used, size - used, "\n    %s", m->items[shown]);
            shown++;
        }
        if (m->count > shown)
            used += (size_t)snprintf(body + used, size - used, "\n    ... and %zu more",
                                     m->count - shown);
        if (used >= size)
            return;
    }
}

/* Checks `source` against `tree` as load_state_dict(strict=True) does, plus what binding
 * views needs (contiguous data, a float dtype for float parameters). */
static int check_fit(const ds_model_config *config, const ds_model_files *files,
                     const ds_state_dict *source, const ds_state_dict *tree, ds_error *err)
{
    misfit *kinds = calloc(4, sizeof *kinds);
    if (!kinds)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory checking %s",
                            config->model_name);
    kinds[0].title = "missing";
    kinds[1].title = "unexpected";
    kinds[2].title = "wrong shape";
    kinds[3].title = "unusable";
    misfit *missing = &kinds[0], *unexpected = &kinds[1], *shape = &kinds[2],
           *unusable = &kinds[3];

    for (size_t i = 0; i < tree->count; i++) {
        const ds_sd_entry *e = ds_state_dict_find(source, tree->entries[i].name);
        if (!e || e->dict)
            misfit_add(missing, "%s", tree->entries[i].name);
    }
    for (size_t i = 0; i < source->count; i++) {
        const ds_sd_entry *e = &source->entries[i];
        const ds_sd_entry *want = ds_state_dict_find(tree, e->name);
        if (e->dict) {
            misfit_add(unexpected, "%s (a nested dict)", e->name);
            continue;
        }
        if (!want) {
            misfit_add(unexpected, "%s", e->name);
            continue;
        }
        char got[160], expected[160];
        if (!same_shape(&e->tensor, &want->tensor))
            misfit_add(shape, "%s: file has %s, class expects %s", e->name,
                       ds_shape_format(&e->tensor, got, sizeof got),
                       ds_shape_format(&want->tensor, expected, sizeof expected));
        else if (is_float(want->tensor.dtype) && !is_float(e->tensor.dtype))
            misfit_add(unusable, "%s: file stores %s, class expects a floating-point tensor",
                       e->name, ds_dtype_name(e->tensor.dtype));
        else if (!ds_tensor_view_is_contiguous(&e->tensor))
            misfit_add(unusable, "%s: not contiguous in the file (only views are bound)",
                       e->name);
    }
    int rc = DS_OK;
    if (missing->count || unexpected->count || shape->count || unusable->count) {
        char label[1024];
        files_label(files, label, sizeof label);
        char head[DS_ERROR_MESSAGE_MAX];
        int n = snprintf(head, sizeof head,
                         "state dict of %s does not fit model_class %s (model_name %s): "
                         "%zu missing, %zu unexpected, %zu wrong shape, %zu unusable",
                         label, config->model_class, config->model_name, missing->count,
                         unexpected->count, shape->count, unusable->count);
        size_t head_len = n < 0 ? 0 : (size_t)n < sizeof head ? (size_t)n : sizeof head - 1;
        char body[DS_ERROR_MESSAGE_MAX];
        size_t budget = DS_ERROR_MESSAGE_MAX - 1 > head_len ? DS_ERROR_MESSAGE_MAX - 1 - head_len
                                                            : 0;
        format_misfits(kinds, 4, budget, body, sizeof body);
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s%s", head, body);
    }
    free(kinds);
    return rc;
}

static char *dup_or_null(const char *s, int *oom)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *oom = 1;
    return d;
}

int ds_model_load(const ds_model_config *config, ds_model_files *files, ds_loaded_model **out,
                  ds_error *err)
{
    *out = NULL;
    const ds_model_class *cls = ds_model_class_find(config->model_class);
    if (!cls)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "model class \"%s\" is not implemented in this build",
                            config->model_class);
    const ds_converter *converter = NULL;
    if (config->state_dict_converter) {
        converter = ds_converter_find(config->state_dict_converter);
        if (!converter)
            return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                                "state dict converter \"%s\" is not implemented in this build",
                                config->state_dict_converter);
    }

    ds_state_dict converted;
    ds_state_dict_init(&converted);
    ds_loaded_model *m = calloc(1, sizeof *m);
    int rc;
    if (!m) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory loading %s",
                          config->model_name);
        goto fail;
    }
    ds_state_dict_init(&m->params);
    m->cls = cls;
    m->converter = converter;

    rc = ds_model_class_declare(cls, config->extra_kwargs_json, &m->params, err);
    if (rc != DS_OK)
        goto fail;
    const ds_state_dict *source = &files->merged;
    if (converter) {
        rc = converter->convert(&files->merged, &converted, err);
        if (rc != DS_OK) {
            ds_error_prefix(err, "converting with %s: ", converter->name);
            goto fail;
        }
        source = &converted;
    }
    rc = check_fit(config, files, source, &m->params, err);
    if (rc != DS_OK)
        goto fail;

    for (size_t i = 0; i < m->params.count; i++) {
        ds_tensor_view *param = &m->params.entries[i].tensor;
        const ds_tensor_view *file = &ds_state_dict_find(source, m->params.entries[i].name)->tensor;
        /* The file's dtype stays: casting to a compute dtype belongs to the VRAM layer. */
        param->dtype = file->dtype;
        memcpy(param->stride, file->stride, sizeof param->stride);
        param->data = file->data;
        param->nbytes = file->nbytes;
        param->file_index = file->file_index;
    }

    int oom = 0;
    m->model_name = dup_or_null(config->model_name, &oom);
    m->model_class = dup_or_null(config->model_class, &oom);
    m->state_dict_converter = dup_or_null(config->state_dict_converter, &oom);
    m->extra_kwargs_json = dup_or_null(config->extra_kwargs_json, &oom);
    if (oom || ds_model_hash(&files->merged, m->model_hash) != DS_OK) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory loading %s",
                          config->model_name);
        goto fail;
    }
    m->tensor_count = m->params.count;
    m->parameter_count = ds_state_dict_parameter_count(&m->params);
    m->files = files;
    ds_state_dict_free(&converted);
    *out = m;
    return DS_OK;

fail:
    ds_state_dict_free(&converted);
    ds_loaded_model_free(m);
    return rc;
}

void ds_loaded_model_free(ds_loaded_model *model)
{
    if (!model)
        return;
    if (model->release_hook)
        model->release_hook(model->release_hook_ctx, model);
    free(model->model_name);
    free(model->model_class);
    free(model->state_dict_converter);
    free(model->extra_kwargs_json);
    ds_state_dict_free(&model->params);
    if (model->files)
        ds_model_files_close(model->files);
    free(model);
}

ds_verify_result ds_config_verify(const ds_model_config *config,
                                  char computed[DS_MODEL_HASH_HEX], ds_error *err)
{
    computed[0] = '\0';
    const ds_model_class *cls = ds_model_class_find(config->model_class);
    if (!cls || config->state_dict_converter)
        return DS_VERIFY_NOT_APPLICABLE;
    ds_state_dict tree;
    ds_state_dict_init(&tree);
    int declared = ds_model_class_declare(cls, config->extra_kwargs_json, &tree, err);
    /* A variant the class does not build (a kwarg it refuses as unimplemented) is no
     * disagreement with upstream. */
    if (declared == DS_ERR_UNIMPLEMENTED)
        return DS_VERIFY_NOT_APPLICABLE;
    if (declared != DS_OK)
        return DS_VERIFY_ERROR;
    int rc = ds_model_hash(&tree, computed);
    ds_state_dict_free(&tree);
    if (rc != DS_OK) {
        computed[0] = '\0';
        ds_error_set(err, rc, "cannot hash the parameter tree of %s", config->model_class);
        return DS_VERIFY_ERROR;
    }
    return strcmp(computed, config->model_hash) == 0 ? DS_VERIFY_MATCH : DS_VERIFY_MISMATCH;
}

static void auto_progress(const ds_auto_load_hooks *h, const char *phase, uint64_t done,
                          uint64_t total, const char *message)
{
    if (h && h->progress)
        h->progress(h->user, phase, done, total, message);
}

static int auto_cancelled(const ds_auto_load_hooks *h, size_t done, size_t total, ds_error *err)
{
    if (h && h->cancelled && h->cancelled(h->user))
        return ds_error_set(err, DS_ERR_CANCELLED, "cancelled after loading %zu of %zu models",
                            done, total);
    return DS_OK;
}

static void auto_drop_models(ds_auto_load *out)
{
    for (size_t i = 0; i < out->model_count; i++)
        ds_loaded_model_free(out->models[i]);
    out->model_count = 0;
}

int ds_auto_load_model(const ds_config_table *table, const int *fds, const char *const *paths,
                       size_t count,
                       const char *model_class, const ds_auto_load_hooks *hooks,
                       ds_auto_load *out, ds_error *err)
{
    memset(out, 0, sizeof *out);
    ds_model_files *files = NULL;
    ds_identification ident = {0};
    const ds_model_config **to_load = NULL;
    size_t to_load_count = 0;

    auto_progress(hooks, "identify", 0, 1, NULL);
    int rc = ds_model_files_open_fds(fds, paths, count, &files, err);
    if (rc != DS_OK)
        return rc;
    rc = ds_identify_files(table, files, &ident, err);
    if (rc != DS_OK) {
        ds_model_files_close(files);
        return rc;
    }
    memcpy(out->model_hash, ident.model_hash, sizeof out->model_hash);
    auto_progress(hooks, "identify", 1, 1, out->model_hash);
    out->matched = ident.configs; /* the array is ours now */
    out->matched_count = ident.config_count;
    ident.configs = NULL;
    if (out->matched_count == 0) {
        ds_model_files_close(files);
        return DS_OK;
    }

    to_load = calloc(out->matched_count, sizeof *to_load);
    out->skipped = calloc(out->matched_count, sizeof *out->skipped);
    out->models = calloc(out->matched_count, sizeof *out->models);
    if (!to_load || !out->skipped || !out->models) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory loading %zu configs",
                          out->matched_count);
        goto done;
    }
    for (size_t i = 0; i < out->matched_count; i++) {
        const ds_model_config *c = out->matched[i];
        if (model_class && strcmp(c->model_class, model_class) != 0)
            continue;
        if (ds_config_is_implemented(c))
            to_load[to_load_count++] = c;
        else
            out->skipped[out->skipped_count++] = c;
        if (model_class)
            break;
    }

    for (size_t i = 0; i < to_load_count; i++) {
        if ((rc = auto_cancelled(hooks, i, to_load_count, err)) != DS_OK)
            goto done;
        auto_progress(hooks, "load", i, to_load_count, to_load[i]->model_name);
        /* Each model holds its own reference to the one mapping. */
        rc = ds_model_load(to_load[i], ds_model_files_retain(files),
                           &out->models[out->model_count], err);
        if (rc != DS_OK) {
            ds_model_files_close(files);
            out->failed = to_load[i];
            goto done;
        }
        out->model_count++;
    }
    /* A cancel that arrived during the last load still wins: the client was told it was found. */
    if (to_load_count && (rc = auto_cancelled(hooks, to_load_count, to_load_count, err)) != DS_OK)
        goto done;
    if (to_load_count)
        auto_progress(hooks, "load", to_load_count, to_load_count, NULL);
    rc = DS_OK;

done:
    if (rc != DS_OK)
        auto_drop_models(out);
    ds_model_files_close(files);
    free(to_load);
    return rc;
}

void ds_auto_load_free(ds_auto_load *result)
{
    auto_drop_models(result);
    free(result->models);
    free(result->skipped);
    free((void *)result->matched);
    memset(result, 0, sizeof *result);
}
