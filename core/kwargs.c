#include "core/kwargs.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

struct ds_kwargs {
    char *owner;         /* the class name without its module path */
    json_t *object;
    size_t count;
    const char **names;  /* in the JSON's order, pointing into object's keys */
    json_t **values;
    unsigned char *used;
};

const char *ds__json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "real";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    case JSON_NULL: return "null";
    }
    return "unknown";
}

void ds_kwargs_free(ds_kwargs *kwargs)
{
    if (!kwargs)
        return;
    json_decref(kwargs->object);
    free(kwargs->owner);
    free(kwargs->names);
    free(kwargs->values);
    free(kwargs->used);
    free(kwargs);
}

int ds_kwargs_parse(const char *json, const char *owner, ds_kwargs **out, ds_error *err)
{
    *out = NULL;
    int rc = DS_ERR_RESOURCE_EXHAUSTED;
    ds_kwargs *kw = calloc(1, sizeof *kw);
    if (!kw)
        return ds_error_set(err, rc, "%s: out of memory parsing extra_kwargs", owner);
    /* Python names the class by its own name, not its module path. */
    const char *dot = strrchr(owner, '.');
    kw->owner = strdup(dot ? dot + 1 : owner);
    if (!kw->owner) {
        ds_error_set(err, rc, "%s: out of memory parsing extra_kwargs", owner);
        goto fail;
    }
    if (json) {
        json_error_t jerr;
        kw->object = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
        if (!kw->object) {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "%s: extra_kwargs is not valid JSON: %s (column %d)", owner,
                              jerr.text, jerr.column);
            goto fail;
        }
    } else {
        kw->object = json_object();
        if (!kw->object) {
            ds_error_set(err, rc, "%s: out of memory parsing extra_kwargs", owner);
            goto fail;
        }
    }
    if (!json_is_object(kw->object)) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "%s: extra_kwargs must be a JSON object, got %s", owner,
                          ds__json_type_name(kw->object));
        goto fail;
    }
    kw->count = json_object_size(kw->object);
    size_t n = kw->count ? kw->count : 1;
    kw->names = calloc(n, sizeof *kw->names);
    kw->values = calloc(n, sizeof *kw->values);
    kw->used = calloc(n, 1);
    if (!kw->names || !kw->values || !kw->used) {
        ds_error_set(err, rc, "%s: out of memory parsing extra_kwargs", owner);
        goto fail;
    }
    /* jansson keeps insertion order, so "the first unused" is the first in the text. */
    size_t i = 0;
    const char *key;
    json_t *value;
    json_object_foreach(kw->object, key, value) {
        kw->names[i] = key;
        kw->values[i] = value;
        i++;
    }
    *out = kw;
    return DS_OK;
fail:
    ds_kwargs_free(kw);
    return rc;
}

/* The value for name, marked used; NULL when absent. */
static json_t *take(ds_kwargs *kw, const char *name)
{
    for (size_t i = 0; i < kw->count; i++) {
        if (strcmp(kw->names[i], name) == 0) {
            kw->used[i] = 1;
            return kw->values[i];
        }
    }
    return NULL;
}

static int type_error(const ds_kwargs *kw, const char *name, const char *expected,
                      const json_t *got, ds_error *err)
{
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                        "%s: keyword argument '%s' must be %s, got %s", kw->owner, name,
                        expected, ds__json_type_name(got));
}

int ds_kwargs_int(ds_kwargs *kwargs, const char *name, int64_t *value, ds_error *err)
{
    json_t *v = take(kwargs, name);
    if (!v)
        return DS_OK;
    if (!json_is_integer(v))
        return type_error(kwargs, name, "an integer", v, err);
    *value = (int64_t)json_integer_value(v);
    return DS_OK;
}

int ds_kwargs_bool(ds_kwargs *kwargs, const char *name, int *value, ds_error *err)
{
    json_t *v = take(kwargs, name);
    if (!v)
        return DS_OK;
    if (!json_is_boolean(v))
        return type_error(kwargs, name, "a boolean", v, err);
    *value = json_is_true(v);
    return DS_OK;
}

int ds_kwargs_double(ds_kwargs *kwargs, const char *name, double *value, ds_error *err)
{
    json_t *v = take(kwargs, name);
    if (!v)
        return DS_OK;
    if (!json_is_number(v))
        return type_error(kwargs, name, "a number", v, err);
    *value = json_number_value(v);
    return DS_OK;
}

int ds_kwargs_int_list(ds_kwargs *kwargs, const char *name, int64_t *values, int *count,
                       ds_error *err)
{
    json_t *v = take(kwargs, name);
    if (!v)
        return DS_OK;
    if (!json_is_array(v))
        return type_error(kwargs, name, "a list of integers", v, err);
    size_t n = json_array_size(v);
    if (*count < 0 || n > (size_t)*count)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: keyword argument '%s' has %zu values, at most %d supported",
                            kwargs->owner, name, n, *count < 0 ? 0 : *count);
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get(v, i);
        if (!json_is_integer(item))
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: keyword argument '%s'[%zu] must be an integer, got %s",
                                kwargs->owner, name, i, ds__json_type_name(item));
    }
    for (size_t i = 0; i < n; i++)
        values[i] = (int64_t)json_integer_value(json_array_get(v, i));
    *count = (int)n;
    return DS_OK;
}

int ds_kwargs_check_all_used(const ds_kwargs *kwargs, ds_error *err)
{
    for (size_t i = 0; i < kwargs->count; i++)
        if (!kwargs->used[i])
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s.__init__() got an unexpected keyword argument '%s'",
                                kwargs->owner, kwargs->names[i]);
    return DS_OK;
}

int ds_kwargs_read(const char *json, const char *owner, ds_kwargs_reader read, void *config,
                   ds_error *err)
{
    ds_kwargs *kw = NULL;
    int rc = ds_kwargs_parse(json, owner, &kw, err);
    if (rc == DS_OK)
        rc = read(kw, config, err);
    ds_kwargs_free(kw);
    return rc;
}
