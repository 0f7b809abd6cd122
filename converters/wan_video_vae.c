/* diffsynth/utils/state_dict_converters/wan_video_vae.py, for WanVideoVAE and WanVideoVAE38
 * alike: the original .pth files keep the weights under "model_state"; upstream takes that
 * dict when it is there and puts every key under "model." (the classes wrap VideoVAE_ as
 * `self.model`). On a flat dict (a safetensors file, or the {name: name} dict upstream builds a
 * disk-offload rename table from) it is a one-to-one rename. */
#include <stdlib.h>
#include <string.h>

#include "converters/converter.h"

#define PREFIX "model."

static int convert(const ds_state_dict *in, ds_state_dict *out, ds_error *err)
{
    const ds_sd_entry *wrapped = ds_state_dict_find(in, "model_state");
    if (wrapped) {
        /* Python would iterate the tensor itself and fail on "model." + a tensor. */
        if (!wrapped->dict)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "\"model_state\" is a tensor, expected the dict of the model's "
                                "weights");
        in = wrapped->dict;
    }
    for (size_t i = 0; i < in->count; i++) {
        const ds_sd_entry *e = &in->entries[i];
        size_t len = strlen(e->name);
        char *name = malloc(len + sizeof PREFIX);
        if (!name)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory renaming %s",
                                e->name);
        memcpy(name, PREFIX, sizeof PREFIX - 1);
        memcpy(name + sizeof PREFIX - 1, e->name, len + 1);
        int rc;
        if (e->dict) {
            ds_state_dict *child = ds_state_dict_new();
            rc = child ? ds_state_dict_copy(child, e->dict) : DS_ERR_RESOURCE_EXHAUSTED;
            if (rc == DS_OK)
                rc = ds_state_dict_put_dict(out, name, child);
            else
                ds_state_dict_destroy(child);
        } else {
            rc = ds_state_dict_put_tensor(out, name, &e->tensor);
        }
        free(name);
        if (rc != DS_OK)
            return ds_error_set(err, rc, "out of memory converting %s", e->name);
    }
    return DS_OK;
}

const ds_converter ds__wan_video_vae_converter = {
    .name = "diffsynth.utils.state_dict_converters.wan_video_vae.WanVideoVAEStateDictConverter",
    .rename_only = 1,
    .convert = convert,
};
