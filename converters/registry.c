/* The state-dict converters this build implements, found by upstream's dotted name. */
#include <string.h>

#include "converters/converter.h"

extern const ds_converter ds__qwen_image_text_encoder_converter;
extern const ds_converter ds__wan_video_vae_converter;

const ds_converter *const ds_converters[] = {
    &ds__qwen_image_text_encoder_converter,
    &ds__wan_video_vae_converter,
};
const size_t ds_converter_count = sizeof ds_converters / sizeof ds_converters[0];

const ds_converter *ds_converter_find(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < ds_converter_count; i++)
        if (strcmp(ds_converters[i]->name, name) == 0)
            return ds_converters[i];
    return NULL;
}
