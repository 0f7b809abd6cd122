/* Writing safetensors files: the header as the safetensors library lays it out (8-byte
 * little-endian length, compact JSON, padded with spaces to a multiple of 8), then each
 * tensor's bytes in order. For tools that save results (the CLI's run-step). */
#ifndef DS_CORE_SAFETENSORS_WRITE_H
#define DS_CORE_SAFETENSORS_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/error.h"
#include "core/state_dict.h"

typedef struct ds_st_out_tensor {
    const char *name;
    ds_dtype dtype;
    int ndim;
    const int64_t *shape;
    const void *data;   /* numel * dtype size bytes */
    size_t nbytes;
} ds_st_out_tensor;

/* Writes the tensors to `path` as ds_output_write does (a regular file replaced atomically; a
 * FIFO, character device or "-" written directly; nothing else replaced).
 * INVALID_ARGUMENT for an unknown dtype, a rank over DS_MAX_DIMS or nbytes that does not match
 * the shape; duplicate names are refused. */
int ds_safetensors_write(const char *path, const ds_st_out_tensor *tensors, size_t count,
                         ds_error *err);

#endif
