#include "core/dtype.h"

#include <string.h>
#include <strings.h>

typedef struct dtype_info {
    size_t size;
    const char *name;
    const char *safetensors;
    const char *torch;
    const char *torch_storage;
} dtype_info;

static const dtype_info infos[DS_DTYPE_COUNT] = {
    [DS_DTYPE_INVALID] = {0, "invalid", "", "", ""},
    [DS_F32] = {4, "f32", "F32", "float32", "FloatStorage"},
    [DS_F16] = {2, "f16", "F16", "float16", "HalfStorage"},
    [DS_BF16] = {2, "bf16", "BF16", "bfloat16", "BFloat16Storage"},
    [DS_F8_E4M3] = {1, "f8_e4m3", "F8_E4M3", "float8_e4m3fn", "Float8_e4m3fnStorage"},
    [DS_F8_E5M2] = {1, "f8_e5m2", "F8_E5M2", "float8_e5m2", "Float8_e5m2Storage"},
    [DS_F64] = {8, "f64", "F64", "float64", "DoubleStorage"},
    [DS_I64] = {8, "i64", "I64", "int64", "LongStorage"},
    [DS_I32] = {4, "i32", "I32", "int32", "IntStorage"},
    [DS_I16] = {2, "i16", "I16", "int16", "ShortStorage"},
    [DS_I8] = {1, "i8", "I8", "int8", "CharStorage"},
    [DS_U8] = {1, "u8", "U8", "uint8", "ByteStorage"},
    [DS_BOOL] = {1, "bool", "BOOL", "bool", "BoolStorage"},
};

size_t ds_dtype_size(ds_dtype dtype)
{
    return (dtype > 0 && dtype < DS_DTYPE_COUNT) ? infos[dtype].size : 0;
}

const char *ds_dtype_name(ds_dtype dtype)
{
    return (dtype > 0 && dtype < DS_DTYPE_COUNT) ? infos[dtype].name : "invalid";
}

const char *ds_dtype_safetensors_name(ds_dtype dtype)
{
    return (dtype > 0 && dtype < DS_DTYPE_COUNT) ? infos[dtype].safetensors : "";
}

ds_dtype ds_dtype_from_safetensors(const char *name, size_t len)
{
    for (int d = 1; d < DS_DTYPE_COUNT; d++) {
        const char *s = infos[d].safetensors;
        if (strlen(s) == len && memcmp(s, name, len) == 0)
            return (ds_dtype)d;
    }
    return DS_DTYPE_INVALID;
}

ds_dtype ds_dtype_from_torch_storage(const char *name)
{
    for (int d = 1; d < DS_DTYPE_COUNT; d++)
        if (strcmp(infos[d].torch_storage, name) == 0)
            return (ds_dtype)d;
    return DS_DTYPE_INVALID;
}

ds_dtype ds_dtype_parse(const char *name)
{
    if (strncmp(name, "torch.", 6) == 0)
        name += 6;
    for (int d = 1; d < DS_DTYPE_COUNT; d++) {
        if (strcasecmp(infos[d].name, name) == 0 || strcmp(infos[d].safetensors, name) == 0 ||
            strcmp(infos[d].torch, name) == 0)
            return (ds_dtype)d;
    }
    return DS_DTYPE_INVALID;
}
