#include "models/model_step.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"

void ds_step_io_init(ds_step_io *io) { memset(io, 0, sizeof *io); }

void ds_step_io_free(ds_step_io *io)
{
    for (size_t i = 0; i < io->tensor_count; i++) {
        free(io->tensors[i].name);
        free(io->tensors[i].owned);
    }
    for (size_t i = 0; i < io->param_count; i++) {
        free(io->params[i].name);
        free(io->params[i].text);
    }
    free(io->tensors);
    free(io->params);
    ds_step_io_init(io);
}

/* Grows an array of `size`-byte items to hold one more. */
static int reserve_one(void **items, size_t *capacity, size_t count, size_t size)
{
    if (count < *capacity)
        return 1;
    size_t want = *capacity ? *capacity * 2 : 8;
    void *grown = realloc(*items, want * size);
    if (!grown)
        return 0;
    *items = grown;
    *capacity = want;
    return 1;
}

int ds_step_io_add_tensor(ds_step_io *io, const char *name, ds_tensor tensor, void *owned,
                          ds_error *err)
{
    if (ds_step_io_tensor(io, name))
        return ds_error_set(err, DS_ERR_ALREADY_EXISTS, "tensor \"%s\" is given twice", name);
    char *copy = strdup(name);
    if (!copy || !reserve_one((void **)&io->tensors, &io->tensor_capacity, io->tensor_count,
                              sizeof *io->tensors)) {
        free(copy);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory adding tensor \"%s\"",
                            name);
    }
    io->tensors[io->tensor_count++] = (ds_step_tensor){copy, tensor, owned};
    return DS_OK;
}

int ds_step_io_new_tensor(ds_step_io *io, ds_backend *cpu, const char *name, ds_dtype dtype,
                          int ndim, const int64_t *shape, ds_tensor **out, ds_error *err)
{
    ds_tensor t = ds_tensor_wrap(cpu, dtype, ndim, shape, NULL);
    size_t bytes = ds_tensor_nbytes(&t);
    void *data = malloc(bytes ? bytes : 1);
    if (!data)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "out of memory for output \"%s\" (%zu bytes)", name, bytes);
    t.data = data;
    int rc = ds_step_io_add_tensor(io, name, t, data, err);
    if (rc != DS_OK) {
        free(data);
        return rc;
    }
    *out = &io->tensors[io->tensor_count - 1].tensor;
    return DS_OK;
}

int ds_step_io_add_param(ds_step_io *io, const char *name, const char *text, ds_error *err)
{
    if (ds_step_io_param(io, name))
        return ds_error_set(err, DS_ERR_ALREADY_EXISTS, "parameter \"%s\" is given twice", name);
    double number = NAN;
    if (strcmp(text, "true") == 0) {
        number = 1;
    } else if (strcmp(text, "false") == 0) {
        number = 0;
    } else {
        char *end;
        errno = 0;
        double v = strtod(text, &end);
        if (end != text && *end == '\0' && errno == 0)
            number = v;
    }
    char *name_copy = strdup(name), *text_copy = strdup(text);
    if (!name_copy || !text_copy ||
        !reserve_one((void **)&io->params, &io->param_capacity, io->param_count,
                     sizeof *io->params)) {
        free(name_copy);
        free(text_copy);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "out of memory adding parameter \"%s\"", name);
    }
    io->params[io->param_count++] = (ds_step_param){name_copy, number, text_copy};
    return DS_OK;
}

const ds_tensor *ds_step_io_tensor(const ds_step_io *io, const char *name)
{
    for (size_t i = 0; i < io->tensor_count; i++)
        if (strcmp(io->tensors[i].name, name) == 0)
            return &io->tensors[i].tensor;
    return NULL;
}

const ds_step_param *ds_step_io_param(const ds_step_io *io, const char *name)
{
    for (size_t i = 0; i < io->param_count; i++)
        if (strcmp(io->params[i].name, name) == 0)
            return &io->params[i];
    return NULL;
}

int ds_step_param_finite(const ds_step_param *p, const char *phase, float *value, ds_error *err)
{
    if (!p)
        return DS_OK;
    if (!isfinite(p->number))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: parameter \"%s\" is \"%s\", expected a finite number", phase,
                            p->name, p->text);
    *value = (float)p->number;
    return DS_OK;
}

static int is_known(const char *const *known, const char *name)
{
    for (size_t i = 0; known[i]; i++)
        if (strcmp(known[i], name) == 0)
            return 1;
    return 0;
}

static void list_names(const char *const *known, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; known[i] && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%s", i ? ", " : "", known[i]);
}

/* INVALID_ARGUMENT when `name`, an input or a parameter (`what`), is not in `known`. */
static int check_name(const char *step, const char *what, const char *name,
                      const char *const *known, ds_error *err)
{
    char accepted[512];
    if (is_known(known, name))
        return DS_OK;
    list_names(known, accepted, sizeof accepted);
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: unknown %s \"%s\" (accepted: %s)", step,
                        what, name, accepted);
}

int ds_step_io_check_names(const ds_step_io *in, const char *step, const char *const *known,
                           ds_error *err)
{
    int rc = DS_OK;
    for (size_t i = 0; rc == DS_OK && i < in->tensor_count; i++)
        rc = check_name(step, "input", in->tensors[i].name, known, err);
    for (size_t i = 0; rc == DS_OK && i < in->param_count; i++)
        rc = check_name(step, "parameter", in->params[i].name, known, err);
    return rc;
}

int ds_step_io_require(const ds_step_io *in, const char *step, const char *name, int optional,
                       const ds_dtype *dtypes, size_t dtype_count, int ndim, const int64_t *shape,
                       const char *expected, const ds_tensor **out, ds_error *err)
{
    const ds_tensor *t = ds_step_io_tensor(in, name);
    *out = NULL;
    if (!t) {
        if (optional)
            return DS_OK;
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: missing input \"%s\", expected %s",
                            step, name, expected);
    }
    int ok = 0;
    for (size_t i = 0; i < dtype_count; i++)
        ok |= t->dtype == dtypes[i];
    ok = ok && t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = shape[d] < 0 || t->shape[d] == shape[d];
    if (!ok) {
        char got[128];
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: input \"%s\" is %s, expected %s",
                            step, name, ds_tensor_describe(t, got, sizeof got), expected);
    }
    *out = t;
    return DS_OK;
}

const ds_model_step *ds_model_step_find(const ds_model_step *steps, size_t count, const char *name)
{
    for (size_t i = 0; i < count; i++)
        if (strcmp(steps[i].name, name) == 0)
            return &steps[i];
    return NULL;
}
