/* The model classes this build implements (core/families.def), found by upstream's dotted name. */
#include <string.h>

#include "models/model_class.h"

#define DS_MODEL(stem, var) extern const ds_model_class var;
#include "core/families.def"

const ds_model_class *const ds_model_classes[] = {
#define DS_MODEL(stem, var) &var,
#include "core/families.def"
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
