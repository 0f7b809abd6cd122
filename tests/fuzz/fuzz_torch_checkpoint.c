/* Fuzz target: any bytes through the zip reader, the restricted unpickler and the conversion
 * to a state dict. Must never crash, leak or read outside the input. */
#include <stddef.h>
#include <stdint.h>

#include "core/torch_checkpoint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ds_torch_checkpoint *ckpt = NULL;
    ds_error err = {0};
    if (ds_torch_checkpoint_parse("fuzz.pth", data, size, 0, &ckpt, &err) == DS_OK)
        ds_torch_checkpoint_close(ckpt);
    return 0;
}
