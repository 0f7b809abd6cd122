/* DiffSynth-compatible model hash: byte-for-byte upstream's hash_model_file (facts §1.1).
 *
 * Each tensor contributes "name:d0_d1_..." (shape joined by "_", "name:" for a scalar) and
 * "name"; a nested dict contributes one "name|<its own string>" entry. The entries are sorted
 * by unsigned byte order, joined with ",", and MD5-hashed as lowercase hex. Dtypes never count.
 */
#ifndef DS_CORE_MODEL_HASH_H
#define DS_CORE_MODEL_HASH_H

#include <stddef.h>

#include "core/error.h"
#include "core/state_dict.h"

#define DS_MODEL_HASH_HEX 33 /* 32 hex digits + NUL */

/* The string upstream hashes. *out is malloc'd (NUL-terminated), *len excludes the NUL. */
int ds_model_keys_string(const ds_state_dict *sd, int with_shape, char **out, size_t *len);

/* MD5 of the keys string with shapes, as 32 lowercase hex digits + NUL. */
int ds_model_hash(const ds_state_dict *sd, char hex[DS_MODEL_HASH_HEX]);

#endif
