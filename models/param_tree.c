#include "models/param_tree.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>

int ds__param(ds_state_dict *params, const char *prefix, const char *name, int ndim,
              const int64_t *shape, ds_error *err)
{
    char full[DS__PARAM_NAME_MAX];
    int n = snprintf(full, sizeof full, "%s%s", prefix, name);
    if (n < 0 || (size_t)n >= sizeof full)
        return ds_error_set(err, DS_ERR_INTERNAL, "parameter name too long: %s%s", prefix, name);
    ds_tensor_view view;
    if (ds_tensor_view_declare(&view, DS_F32, ndim, shape) != DS_OK)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "parameter %s: shape is invalid or too large", full);
    if (ds_state_dict_put_tensor(params, full, &view) != DS_OK)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory declaring %s", full);
    return DS_OK;
}

int ds__param_linear(ds_state_dict *params, const char *prefix, const char *name, int64_t out,
                     int64_t in, int bias, ds_error *err)
{
    char sub[DS__PARAM_NAME_MAX];
    int n = snprintf(sub, sizeof sub, "%s.weight", name);
    if (n < 0 || (size_t)n >= sizeof sub)
        return ds_error_set(err, DS_ERR_INTERNAL, "parameter name too long: %s", name);
    int rc = ds__param(params, prefix, sub, 2, (const int64_t[]){out, in}, err);
    if (rc != DS_OK || !bias)
        return rc;
    snprintf(sub, sizeof sub, "%s.bias", name);
    return ds__param(params, prefix, sub, 1, &out, err);
}

int ds__param_conv(ds_state_dict *params, const char *prefix, const char *name, int64_t out,
                   int64_t in, int nk, const int64_t *kernel, ds_error *err)
{
    if (nk < 0 || nk > DS_MAX_DIMS - 2)
        return ds_error_set(err, DS_ERR_INTERNAL, "conv %s%s: %d kernel dims", prefix, name, nk);
    int64_t shape[DS_MAX_DIMS] = {out, in};
    for (int i = 0; i < nk; i++)
        shape[2 + i] = kernel[i];
    char sub[DS__PARAM_NAME_MAX];
    int n = snprintf(sub, sizeof sub, "%s.weight", name);
    if (n < 0 || (size_t)n >= sizeof sub)
        return ds_error_set(err, DS_ERR_INTERNAL, "parameter name too long: %s", name);
    int rc = ds__param(params, prefix, sub, 2 + nk, shape, err);
    if (rc != DS_OK)
        return rc;
    snprintf(sub, sizeof sub, "%s.bias", name);
    return ds__param(params, prefix, sub, 1, &out, err);
}

int ds__param_vector(ds_state_dict *params, const char *prefix, const char *name, int64_t n,
                     ds_error *err)
{
    return ds__param(params, prefix, name, 1, &n, err);
}

int ds__param_prefix(char *buf, ds_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, DS__PARAM_NAME_MAX, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= DS__PARAM_NAME_MAX)
        return ds_error_set(err, DS_ERR_INTERNAL, "parameter prefix too long: %s", fmt);
    return DS_OK;
}

int ds__kwarg_int_range(ds_kwargs *kwargs, const char *owner, const char *name, int64_t min,
                        int64_t max, int64_t *value, ds_error *err)
{
    int rc = ds_kwargs_int(kwargs, name, value, err);
    if (rc != DS_OK)
        return rc;
    if (*value < min || *value > max)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: %s must be between %" PRId64 " and %" PRId64 ", got %" PRId64,
                            owner, name, min, max, *value);
    return DS_OK;
}

int ds__kwarg_int_list(ds_kwargs *kwargs, const char *name, int64_t *values, int capacity,
                       int *count, int *present, ds_error *err)
{
    /* ds_kwargs_int_list leaves everything untouched for an absent kwarg, so an absent kwarg
     * and a list of exactly `capacity` values look alike by the count. Reading twice into
     * buffers pre-filled differently tells them apart: a given list overwrites both alike. */
    int64_t a[DS__PARAM_LIST_MAX], b[DS__PARAM_LIST_MAX];
    if (capacity < 1 || capacity > DS__PARAM_LIST_MAX)
        return ds_error_set(err, DS_ERR_INTERNAL, "list kwarg %s: capacity %d", name, capacity);
    int na = capacity, nb = capacity;
    a[0] = 0;
    b[0] = 1;
    int rc;
    if ((rc = ds_kwargs_int_list(kwargs, name, a, &na, err)) != DS_OK ||
        (rc = ds_kwargs_int_list(kwargs, name, b, &nb, err)) != DS_OK)
        return rc;
    *present = na != capacity || a[0] == b[0];
    if (*present) {
        for (int i = 0; i < na; i++)
            values[i] = a[i];
        *count = na;
    }
    return DS_OK;
}
