/* Key lists: the tensor names and shapes of a real model, as tests/golden/make_keylists.py
 * writes them: one JSON object {"name": [d0, d1, ...], ...} in the model's order. */
#ifndef DS_TESTS_TOOLS_KEYLIST_H
#define DS_TESTS_TOOLS_KEYLIST_H

#include "core/dtype.h"
#include "core/error.h"
#include "core/state_dict.h"

/* Appends every entry of the list at `path` to `out` (initialised) as a declared view of
 * `dtype`, in file order. Duplicate names, non-array values and dims that are not
 * non-negative integers are INVALID_ARGUMENT naming the file and the entry. */
int ds_keylist_load(const char *path, ds_dtype dtype, ds_state_dict *out, ds_error *err);

#endif
