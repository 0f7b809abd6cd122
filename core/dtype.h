/* Element types of stored and computed tensors. */
#ifndef DS_CORE_DTYPE_H
#define DS_CORE_DTYPE_H

#include <stddef.h>

typedef enum ds_dtype {
    DS_DTYPE_INVALID = 0,
    DS_F32 = 1,
    DS_F16 = 2,
    DS_BF16 = 3,
    DS_F8_E4M3 = 4, /* float8_e4m3fn: no infinities, 0x7F/0xFF are NaN, max 448 */
    DS_F8_E5M2 = 5,
    DS_F64 = 6,
    DS_I64 = 7,
    DS_I32 = 8,
    DS_I16 = 9,
    DS_I8 = 10,
    DS_U8 = 11,
    DS_BOOL = 12,
    DS_DTYPE_COUNT
} ds_dtype;
/* The numbers equal proto DType's, so conversion is a cast. */

/* Bytes per element; 0 for DS_DTYPE_INVALID. */
size_t ds_dtype_size(ds_dtype dtype);

/* Short name as our CLI prints it: "f32", "bf16", "f8_e4m3", ... */
const char *ds_dtype_name(ds_dtype dtype);

/* Safetensors header names ("F32", "BF16", "F8_E4M3", ...); DS_DTYPE_INVALID when unknown.
 * `len` lets callers pass a slice of the header without copying. */
ds_dtype ds_dtype_from_safetensors(const char *name, size_t len);
const char *ds_dtype_safetensors_name(ds_dtype dtype);

/* PyTorch storage class names ("FloatStorage", "BFloat16Storage", "Float8_e4m3fnStorage", ...)
 * as pickled by torch.save; DS_DTYPE_INVALID when unknown. */
ds_dtype ds_dtype_from_torch_storage(const char *name);

/* Accepts our names, safetensors names and torch names ("float32", "bfloat16", "float8_e4m3fn"). */
ds_dtype ds_dtype_parse(const char *name);

#endif
