/* A state dict: the ordered mapping from tensor names to tensors that a model file holds, a
 * converter produces and a model class declares.
 *
 * Entries are tensor views (shape, dtype, and a pointer into a mapped file, or NULL when only
 * declared) or nested dicts, which upstream hashes as one "key|..." entry (facts §1.1).
 * Insertion order is kept; putting an existing name replaces its value in place, exactly as
 * Python's dict.update does, so merging shards in order gives "later file wins".
 */
#ifndef DS_CORE_STATE_DICT_H
#define DS_CORE_STATE_DICT_H

#include <stdint.h>

#include "core/dtype.h"
#include "core/error.h"

#define DS_MAX_DIMS 8

typedef struct ds_tensor_view {
    ds_dtype dtype;
    int ndim;                     /* 0 for a scalar */
    int64_t shape[DS_MAX_DIMS];
    int64_t stride[DS_MAX_DIMS];  /* in elements; row-major contiguous unless a checkpoint says otherwise */
    const void *data;             /* first element, inside a mapping the owner keeps alive; NULL when declared only */
    uint64_t nbytes;              /* numel * dtype size */
    int file_index;               /* which file of a multi-file model this view points into; -1 if none */
} ds_tensor_view;

typedef struct ds_state_dict ds_state_dict;

typedef struct ds_sd_entry {
    char *name;                   /* owned */
    ds_state_dict *dict;          /* non-NULL: a nested dict (owned), and `tensor` is unused */
    ds_tensor_view tensor;
} ds_sd_entry;

struct ds_state_dict {
    ds_sd_entry *entries;         /* in insertion order */
    size_t count;
    size_t capacity;
    uint32_t *index;              /* open-addressing table of entry positions + 1; 0 = empty */
    size_t index_size;            /* power of two */
};

void ds_state_dict_init(ds_state_dict *sd);
void ds_state_dict_free(ds_state_dict *sd);   /* frees entries and nested dicts; sd can be reused after init */

ds_state_dict *ds_state_dict_new(void);       /* heap-allocated, initialised; NULL on OOM */
void ds_state_dict_destroy(ds_state_dict *sd); /* free + release the struct itself */

/* Makes room for `count` entries in total, so that building a dict of known size does not
 * rehash. Optional. */
int ds_state_dict_reserve(ds_state_dict *sd, size_t count);

/* Inserts or replaces. `name` is copied. Returns DS_OK or DS_ERR_RESOURCE_EXHAUSTED. */
int ds_state_dict_put_tensor(ds_state_dict *sd, const char *name, const ds_tensor_view *view);
/* Takes ownership of `child` (also on failure, where it is destroyed). */
int ds_state_dict_put_dict(ds_state_dict *sd, const char *name, ds_state_dict *child);

/* NULL when absent. The pointer stays valid until the next put. */
const ds_sd_entry *ds_state_dict_find(const ds_state_dict *sd, const char *name);

/* dict.update: every entry of src is put into dst (nested dicts deep-copied). */
int ds_state_dict_update(ds_state_dict *dst, const ds_state_dict *src);

/* Deep copy. */
int ds_state_dict_copy(ds_state_dict *dst, const ds_state_dict *src);

/* Fills shape/ndim/stride (row-major), nbytes and dtype; data NULL, file_index -1.
 * Fails with INVALID_ARGUMENT if ndim > DS_MAX_DIMS, a dim is negative or the byte count
 * overflows 64 bits. */
int ds_tensor_view_declare(ds_tensor_view *view, ds_dtype dtype, int ndim, const int64_t *shape);

/* Number of elements (product of shape; 1 for scalars). */
uint64_t ds_tensor_view_numel(const ds_tensor_view *view);

/* True when strides are row-major contiguous. */
int ds_tensor_view_is_contiguous(const ds_tensor_view *view);

/* Formats "[3072, 64]" into buf; returns buf. */
char *ds_shape_format(const ds_tensor_view *view, char *buf, size_t size);

/* Counts tensors, recursing into nested dicts. */
size_t ds_state_dict_tensor_count(const ds_state_dict *sd);
uint64_t ds_state_dict_parameter_count(const ds_state_dict *sd);

#endif
