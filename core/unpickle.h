/* A restricted unpickler for the pickles torch.save writes (protocols 2-5).
 *
 * It builds plain values (None, bool, int, float, str, bytes, tuple, list, dict, set) and,
 * through the only globals it knows, tensors:
 *   collections.OrderedDict                    -> a dict
 *   torch._utils._rebuild_tensor_v2 / _v3 / _rebuild_tensor -> a tensor view into a storage
 *   torch._utils._rebuild_parameter            -> the tensor it wraps
 *   torch.<X>Storage, torch.storage.UntypedStorage, torch.<dtype>   (arguments of the above)
 * Any other global is rejected where it is named, so nothing is ever looked up or run: REDUCE
 * "calls" only these, implemented here in C. Storages come from persistent ids
 * ('storage', storage_type, key, location, numel) resolved through a callback.
 *
 * Limits: the value stack, marks, memo and object count are bounded, lengths are checked
 * against the remaining input, and integers must fit in 64 bits. Dict keys may be scalars,
 * str, bytes, flat tuples of those, or allowed objects (by identity); torch only uses str.
 * Messages give the byte offset of the opcode inside the pickle; the caller prefixes the file
 * and entry.
 */
#ifndef DS_CORE_UNPICKLE_H
#define DS_CORE_UNPICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/state_dict.h"

#define DS__UNPICKLE_MAX_DEPTH 64          /* nesting of values walked recursively */
#define DS__UNPICKLE_MAX_MARKS 256         /* open MARKs at once */
#define DS__UNPICKLE_MAX_STACK (1u << 20)  /* values on the stack */
#define DS__UNPICKLE_MAX_OBJECTS (1u << 22) /* ~20 per tensor in torch.save pickles */

typedef enum ds__py_kind {
    DS__PY_NONE,
    DS__PY_BOOL,
    DS__PY_INT,
    DS__PY_FLOAT,
    DS__PY_STR,
    DS__PY_BYTES,
    DS__PY_TUPLE,
    DS__PY_LIST,
    DS__PY_DICT,
    DS__PY_SET,
    DS__PY_FROZENSET,
    DS__PY_GLOBAL,   /* one of the allowed globals, not yet called */
    DS__PY_STORAGE,
    DS__PY_TENSOR,
} ds__py_kind;

typedef struct ds__py ds__py;

struct ds__py {
    ds__py_kind kind;
    union {
        int64_t i;                      /* BOOL (0/1), INT */
        double f;                       /* FLOAT */
        struct {                        /* STR (UTF-8), BYTES: a NUL-terminated copy */
            char *data;
            size_t len;
        } str;
        struct {                        /* TUPLE, LIST, SET, FROZENSET */
            ds__py **items;
            size_t count, cap;
            uint64_t hash;              /* a tuple's, once used as a dict key */
            int hashed;
        } seq;
        struct {                        /* DICT: insertion order, keys unique (Python's ==) */
            ds__py **keys;
            ds__py **values;
            uint64_t *hashes;           /* of each key */
            size_t count, cap;
            uint32_t *index;            /* str-key hash table of positions + 1; 0 = empty */
            size_t index_size;
        } dict;
        struct {                        /* GLOBAL */
            int id;                     /* internal to unpickle.c */
            ds_dtype dtype;             /* storage classes and dtypes */
        } global;
        struct {                        /* STORAGE */
            ds_dtype dtype;             /* DS_U8 for an untyped storage */
            const uint8_t *data;
            uint64_t nbytes;
        } storage;
        ds_tensor_view *tensor;         /* TENSOR (owned; kept out of line to keep values
                                           small): file_index -1, the caller sets it */
    };
};

/* Finds the bytes of storage `key` (the third field of a persistent id). On failure fills err
 * with a message that names the key. */
typedef int (*ds__storage_resolver)(void *ctx, const char *key, const uint8_t **data,
                                    uint64_t *size, ds_error *err);

/* Owns every value made while unpickling. */
typedef struct ds__unpickled ds__unpickled;

/* Unpickles `pickle` up to its STOP opcode. The result's values stay valid until
 * ds__unpickled_free. On failure *out is NULL. */
int ds__unpickle(const uint8_t *pickle, size_t size, ds__storage_resolver resolve, void *ctx,
                 ds__unpickled **out, ds_error *err);

const ds__py *ds__unpickled_root(const ds__unpickled *u);
void ds__unpickled_free(ds__unpickled *u);

/* Python's type name of a value, for messages: "int", "list", "NoneType", "torch.Tensor", ... */
const char *ds__py_type_name(const ds__py *v);

#endif
