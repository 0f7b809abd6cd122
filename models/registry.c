/* The model classes this build implements, found by upstream's dotted name. */
#include <string.h>

#include "models/model_class.h"

extern const ds_model_class ds__qwen_image_blockwise_controlnet_class;
extern const ds_model_class ds__qwen_image_dit_class;
extern const ds_model_class ds__qwen_image_text_encoder_class;
extern const ds_model_class ds__qwen_image_vae_class;
extern const ds_model_class ds__wan_video_vae_class;

const ds_model_class *const ds_model_classes[] = {
    &ds__qwen_image_blockwise_controlnet_class,
    &ds__qwen_image_dit_class,
    &ds__qwen_image_text_encoder_class,
    &ds__qwen_image_vae_class,
    &ds__wan_video_vae_class,
};
const size_t ds_model_class_count = sizeof ds_model_classes / sizeof ds_model_classes[0];

const ds_model_class *ds_model_class_find(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < ds_model_class_count; i++)
        if (strcmp(ds_model_classes[i]->name, name) == 0)
            return ds_model_classes[i];
    return NULL;
}

int ds_model_class_declare(const ds_model_class *cls, const char *kwargs_json,
                           ds_state_dict *params, ds_error *err)
{
    ds_kwargs *kwargs = NULL;
    int rc = ds_kwargs_parse(kwargs_json, cls->name, &kwargs, err);
    if (rc != DS_OK)
        return rc;
    rc = cls->declare_parameters(kwargs, params, err);
    ds_kwargs_free(kwargs);
    if (rc != DS_OK)
        ds_state_dict_free(params); /* a refused tree is never half-declared */
    return rc;
}
