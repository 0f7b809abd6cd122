#include "tools/keylist.h"

#include <jansson.h>

int ds_keylist_load(const char *path, ds_dtype dtype, ds_state_dict *out, ds_error *err)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root && jerr.line < 1)
        return ds_error_set(err, DS_ERR_NOT_FOUND, "%s: %s", path, jerr.text);
    if (!root)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s:%d: %s", path, jerr.line,
                            jerr.text);
    int rc = DS_OK;
    if (!json_is_object(root)) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: not a JSON object", path);
        goto done;
    }
    const char *name;
    json_t *shape;
    json_object_foreach(root, name, shape) {
        if (!json_is_array(shape) || json_array_size(shape) > DS_MAX_DIMS) {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "%s: %s: shape must be an array of at most %d dims", path, name,
                              DS_MAX_DIMS);
            goto done;
        }
        int64_t dims[DS_MAX_DIMS];
        size_t i;
        json_t *d;
        json_array_foreach(shape, i, d) {
            if (!json_is_integer(d) || json_integer_value(d) < 0) {
                rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                  "%s: %s: dim %zu is not a non-negative integer", path, name, i);
                goto done;
            }
            dims[i] = json_integer_value(d);
        }
        ds_tensor_view view;
        if (ds_tensor_view_declare(&view, dtype, (int)json_array_size(shape), dims) != DS_OK) {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: %s: tensor too large", path,
                              name);
            goto done;
        }
        if (ds_state_dict_put_tensor(out, name, &view) != DS_OK) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", path);
            goto done;
        }
    }
done:
    json_decref(root);
    return rc;
}
