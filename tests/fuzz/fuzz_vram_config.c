/* A client's vram_config JSON, any bytes: parsed with each default computation device. A
 * config that parses must write out as JSON and read back to the same placements (the
 * writer's documented contract). Nothing may crash, read out of bounds or leak. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vram/vram_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int same_place(const ds_vram_place *a, const ds_vram_place *b)
{
    return a->device == b->device && a->dtype == b->dtype && a->disk_dtype == b->disk_dtype;
}

static int same_config(const ds_vram_config *a, const ds_vram_config *b)
{
    return same_place(&a->offload, &b->offload) && same_place(&a->onload, &b->onload) &&
           same_place(&a->preparing, &b->preparing) &&
           same_place(&a->computation, &b->computation);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *json = malloc(size + 1);
    if (!json)
        return 0;
    memcpy(json, data, size);
    json[size] = '\0';
    static const ds_vram_device devices[] = {DS_VRAM_DEVICE_CPU, DS_VRAM_DEVICE_CUDA};
    for (size_t d = 0; d < 2; d++) {
        ds_vram_config cfg, back;
        ds_error err;
        if (ds_vram_config_parse(json, DS_BF16, devices[d], &cfg, &err) != DS_OK)
            continue;
        ds_vram_config_whole_model(&cfg);
        char out[1024];
        if (ds_vram_config_to_json(&cfg, out, sizeof out, &err) != DS_OK) {
            fprintf(stderr, "fuzz_vram_config: parsed config does not write: %s\n",
                    err.message);
            abort();
        }
        if (ds_vram_config_parse(out, DS_BF16, devices[d], &back, &err) != DS_OK ||
            !same_config(&cfg, &back)) {
            fprintf(stderr, "fuzz_vram_config: %s does not read back to the same config\n", out);
            abort();
        }
        ds_vram_config_check_chain(&cfg, &err);
    }
    free(json);
    return 0;
}
