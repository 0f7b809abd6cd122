#include "pipelines/prompt_embedder.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *cached(const ds__tokenizer_cache *c, const char *dir)
{
    for (size_t i = 0; i < DS__TOKENIZER_CACHE_SLOTS; i++)
        if (c->slots[i].dir && strcmp(c->slots[i].dir, dir) == 0)
            return c->slots[i].tok;
    return NULL;
}

/* The load runs outside the lock so that a slow load does not hold up steps whose tokenizer is
 * cached; two first calls racing on one folder both load and the later one frees its copy. */
int ds__tokenizer_cache_get(ds__tokenizer_cache *c, const char *dir, const char *origin,
                            const void **out, void **owned, ds_error *err)
{
    char canonical[PATH_MAX];
    *owned = NULL;
    if (!realpath(dir, canonical))
        return ds_error_set(err, errno == ENOENT ? DS_ERR_NOT_FOUND : DS_ERR_PERMISSION_DENIED,
                            "encode_prompt: tokenizer folder %s (%s): %s", dir, origin,
                            strerror(errno));
    pthread_mutex_lock(&c->lock);
    void *hit = cached(c, canonical);
    pthread_mutex_unlock(&c->lock);
    if (hit) {
        *out = hit;
        return DS_OK;
    }

    void *tok = NULL;
    int rc = c->load(canonical, &tok, err);
    if (rc != DS_OK) {
        ds_error_prefix(err, "encode_prompt: tokenizer folder %s (%s): ", dir, origin);
        return rc;
    }
    char *key = strdup(canonical);
    pthread_mutex_lock(&c->lock);
    hit = cached(c, canonical);
    for (size_t i = 0; !hit && key && i < DS__TOKENIZER_CACHE_SLOTS; i++)
        if (!c->slots[i].dir) {
            c->slots[i].dir = key;
            c->slots[i].tok = tok;
            key = NULL;
            hit = tok;
            tok = NULL;
        }
    pthread_mutex_unlock(&c->lock);
    free(key);
    if (hit) {
        if (tok)
            c->free(tok);
        *out = hit;
    } else {
        *out = tok;
        *owned = tok;
    }
    return DS_OK;
}

static int param_dir(const ds_step_context *ctx, const char *param, char *dir, size_t cap,
                     ds_error *err)
{
    if (!param[0])
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "encode_prompt: parameter \"tokenizer\" is empty");
    if (snprintf(dir, cap, "%s", param) >= (int)cap)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "encode_prompt: parameter \"tokenizer\" is longer than %zu bytes",
                            cap - 1);
    if (ctx->check_path) {
        int rc = ctx->check_path(ctx->user, dir, err);
        if (rc != DS_OK) {
            ds_error_prefix(err, "encode_prompt: parameter \"tokenizer\": ");
            return rc;
        }
    }
    return DS_OK;
}

int ds__tokenizer_dir(const ds_loaded_model *m, const ds_step_context *ctx, const char *param,
                      int levels_up, const char *subdir, const char *layout, char *dir,
                      size_t cap, const char **origin, ds_error *err)
{
    if (param) {
        *origin = "the \"tokenizer\" parameter";
        return param_dir(ctx, param, dir, cap, err);
    }
    *origin = layout;
    if (!m->files || m->files->count == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "encode_prompt: the model has no files to find the tokenizer folder "
                            "beside; give the \"tokenizer\" parameter");
    char file[PATH_MAX];
    const char *path = m->files->files[0].path;
    if (!realpath(path, file))
        return ds_error_set(err, DS_ERR_NOT_FOUND,
                            "encode_prompt: cannot resolve the model file %s to find the "
                            "tokenizer folder beside it: %s",
                            path, strerror(errno));
    for (int cut = 0; cut < levels_up; cut++) {
        char *slash = strrchr(file, '/');
        if (slash == file || !slash)
            return ds_error_set(err, DS_ERR_NOT_FOUND,
                                "encode_prompt: the model file %s has no parent folder to hold "
                                "%s/; give the \"tokenizer\" parameter",
                                path, subdir);
        *slash = '\0';
    }
    if (snprintf(dir, cap, "%s/%s", file, subdir) >= (int)cap)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "encode_prompt: the tokenizer folder beside %s is too long a path",
                            path);
    return DS_OK;
}

int ds__encode_prompt_step(const ds_loaded_model *m, const ds_step_context *ctx,
                           const ds_step_io *in, ds_step_io *out, ds__step_dtype_reader read_dtype,
                           ds__prompt_encoder encode, ds_error *err)
{
    static const char *const known[] = {"prompt", "tokenizer", "dtype", NULL};
    int rc = ds_step_io_check_names(in, "encode_prompt", known, err);
    if (rc != DS_OK)
        return rc;
    const ds_step_param *p = ds_step_io_param(in, "prompt");
    if (!p)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "encode_prompt: parameter \"prompt\" is required (the text to "
                            "encode; it may be empty)");
    if (in->tensor_count > 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "encode_prompt: takes no tensors, got \"%s\"", in->tensors[0].name);
    const ds_step_param *t = ds_step_io_param(in, "tokenizer");
    ds_dtype dtype = DS_BF16;
    if ((rc = read_dtype(m, in, "encode_prompt", &dtype, err)) != DS_OK)
        return rc;
    return encode(m, ctx, p->text, t ? t->text : NULL, dtype, out, err);
}
