#include "core/state_dict.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

void ds_state_dict_init(ds_state_dict *sd) { memset(sd, 0, sizeof *sd); }

void ds_state_dict_free(ds_state_dict *sd)
{
    for (size_t i = 0; i < sd->count; i++) {
        free(sd->entries[i].name);
        if (sd->entries[i].dict)
            ds_state_dict_destroy(sd->entries[i].dict);
    }
    free(sd->entries);
    free(sd->index);
    ds_state_dict_init(sd);
}

ds_state_dict *ds_state_dict_new(void)
{
    ds_state_dict *sd = malloc(sizeof *sd);
    if (sd)
        ds_state_dict_init(sd);
    return sd;
}

void ds_state_dict_destroy(ds_state_dict *sd)
{
    if (!sd)
        return;
    ds_state_dict_free(sd);
    free(sd);
}

static size_t slot_of(const ds_state_dict *sd, const char *name, size_t len)
{
    size_t mask = sd->index_size - 1;
    size_t slot = (size_t)XXH3_64bits(name, len) & mask;
    for (;;) {
        uint32_t pos = sd->index[slot];
        if (pos == 0 || strcmp(sd->entries[pos - 1].name, name) == 0)
            return slot;
        slot = (slot + 1) & mask;
    }
}

static int grow_index(ds_state_dict *sd)
{
    size_t size = sd->index_size ? sd->index_size * 2 : 64;
    uint32_t *index = calloc(size, sizeof *index);
    if (!index)
        return DS_ERR_RESOURCE_EXHAUSTED;
    free(sd->index);
    sd->index = index;
    sd->index_size = size;
    for (size_t i = 0; i < sd->count; i++) {
        const char *name = sd->entries[i].name;
        sd->index[slot_of(sd, name, strlen(name))] = (uint32_t)(i + 1);
    }
    return DS_OK;
}

int ds_state_dict_reserve(ds_state_dict *sd, size_t count)
{
    if (count > UINT32_MAX - 1)
        return DS_ERR_RESOURCE_EXHAUSTED;
    if (count > sd->capacity) {
        ds_sd_entry *entries = realloc(sd->entries, count * sizeof *entries);
        if (!entries)
            return DS_ERR_RESOURCE_EXHAUSTED;
        sd->entries = entries;
        sd->capacity = count;
    }
    while ((count + 1) * 2 > sd->index_size)
        if (grow_index(sd) != DS_OK)
            return DS_ERR_RESOURCE_EXHAUSTED;
    return DS_OK;
}

/* Finds the entry for name, creating an empty one if absent. */
static ds_sd_entry *entry_for(ds_state_dict *sd, const char *name)
{
    if ((sd->count + 1) * 2 > sd->index_size && grow_index(sd) != DS_OK)
        return NULL;
    size_t len = strlen(name);
    size_t slot = slot_of(sd, name, len);
    if (sd->index[slot])
        return &sd->entries[sd->index[slot] - 1];
    if (sd->count == sd->capacity) {
        size_t capacity = sd->capacity ? sd->capacity * 2 : 16;
        ds_sd_entry *entries = realloc(sd->entries, capacity * sizeof *entries);
        if (!entries)
            return NULL;
        sd->entries = entries;
        sd->capacity = capacity;
    }
    ds_sd_entry *entry = &sd->entries[sd->count];
    memset(entry, 0, sizeof *entry);
    entry->name = malloc(len + 1);
    if (!entry->name)
        return NULL;
    memcpy(entry->name, name, len + 1);
    sd->index[slot] = (uint32_t)(++sd->count);
    return entry;
}

int ds_state_dict_put_tensor(ds_state_dict *sd, const char *name, const ds_tensor_view *view)
{
    ds_sd_entry *entry = entry_for(sd, name);
    if (!entry)
        return DS_ERR_RESOURCE_EXHAUSTED;
    if (entry->dict) {
        ds_state_dict_destroy(entry->dict);
        entry->dict = NULL;
    }
    entry->tensor = *view;
    return DS_OK;
}

int ds_state_dict_put_dict(ds_state_dict *sd, const char *name, ds_state_dict *child)
{
    ds_sd_entry *entry = entry_for(sd, name);
    if (!entry) {
        ds_state_dict_destroy(child);
        return DS_ERR_RESOURCE_EXHAUSTED;
    }
    if (entry->dict)
        ds_state_dict_destroy(entry->dict);
    entry->dict = child;
    memset(&entry->tensor, 0, sizeof entry->tensor);
    return DS_OK;
}

const ds_sd_entry *ds_state_dict_find(const ds_state_dict *sd, const char *name)
{
    if (sd->count == 0)
        return NULL;
    uint32_t pos = sd->index[slot_of(sd, name, strlen(name))];
    return pos ? &sd->entries[pos - 1] : NULL;
}

int ds_state_dict_update(ds_state_dict *dst, const ds_state_dict *src)
{
    for (size_t i = 0; i < src->count; i++) {
        const ds_sd_entry *e = &src->entries[i];
        int rc;
        if (e->dict) {
            ds_state_dict *child = ds_state_dict_new();
            if (!child)
                return DS_ERR_RESOURCE_EXHAUSTED;
            rc = ds_state_dict_copy(child, e->dict);
            if (rc != DS_OK) {
                ds_state_dict_destroy(child);
                return rc;
            }
            rc = ds_state_dict_put_dict(dst, e->name, child);
        } else {
            rc = ds_state_dict_put_tensor(dst, e->name, &e->tensor);
        }
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

int ds_state_dict_copy(ds_state_dict *dst, const ds_state_dict *src)
{
    ds_state_dict_init(dst);
    int rc = ds_state_dict_update(dst, src);
    if (rc != DS_OK)
        ds_state_dict_free(dst);
    return rc;
}

int ds_tensor_view_declare(ds_tensor_view *view, ds_dtype dtype, int ndim, const int64_t *shape)
{
    memset(view, 0, sizeof *view);
    view->file_index = -1;
    view->dtype = dtype;
    if (ndim < 0 || ndim > DS_MAX_DIMS)
        return DS_ERR_INVALID_ARGUMENT;
    view->ndim = ndim;
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return DS_ERR_INVALID_ARGUMENT;
        view->shape[i] = shape[i];
        if (shape[i] != 0 && numel > UINT64_MAX / (uint64_t)shape[i])
            return DS_ERR_INVALID_ARGUMENT;
        numel *= (uint64_t)shape[i];
    }
    /* Strides are bounded separately: an empty tensor ([0, 2^32, 2^32]) has numel 0 but strides
     * that would overflow int64. */
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        view->stride[i] = stride;
        int64_t dim = shape[i] ? shape[i] : 1;
        if (i > 0 && stride > INT64_MAX / dim)
            return DS_ERR_INVALID_ARGUMENT;
        stride *= dim;
    }
    size_t esize = ds_dtype_size(dtype);
    if (esize && numel > UINT64_MAX / esize)
        return DS_ERR_INVALID_ARGUMENT;
    view->nbytes = numel * esize;
    return DS_OK;
}

uint64_t ds_tensor_view_numel(const ds_tensor_view *view)
{
    uint64_t numel = 1;
    for (int i = 0; i < view->ndim; i++)
        numel *= (uint64_t)view->shape[i];
    return numel;
}

int ds_tensor_view_is_contiguous(const ds_tensor_view *view)
{
    int64_t expected = 1;
    for (int i = view->ndim - 1; i >= 0; i--) {
        if (view->shape[i] != 1 && view->stride[i] != expected)
            return 0;
        expected *= view->shape[i];
    }
    return 1;
}

char *ds_shape_format(const ds_tensor_view *view, char *buf, size_t size)
{
    size_t used = 0;
    used += (size_t)snprintf(buf + used, size - used, "[");
    for (int i = 0; i < view->ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", i ? ", " : "",
                                 (long long)view->shape[i]);
    if (used < size)
        snprintf(buf + used, size - used, "]");
    return buf;
}

size_t ds_state_dict_tensor_count(const ds_state_dict *sd)
{
    size_t n = 0;
    for (size_t i = 0; i < sd->count; i++)
        n += sd->entries[i].dict ? ds_state_dict_tensor_count(sd->entries[i].dict) : 1;
    return n;
}

uint64_t ds_state_dict_parameter_count(const ds_state_dict *sd)
{
    uint64_t n = 0;
    for (size_t i = 0; i < sd->count; i++)
        n += sd->entries[i].dict ? ds_state_dict_parameter_count(sd->entries[i].dict)
                                 : ds_tensor_view_numel(&sd->entries[i].tensor);
    return n;
}
