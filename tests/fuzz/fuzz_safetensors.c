/* Any byte string through the safetensors parser: it must fail cleanly or succeed, never
 * crash, read out of bounds or leak. */
#include <stddef.h>
#include <stdint.h>

#include "core/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ds_safetensors *st = NULL;
    ds_error err;
    if (ds_safetensors_parse("fuzz.safetensors", data, size, 0, &st, &err) == DS_OK)
        ds_safetensors_close(st);
    return 0;
}
