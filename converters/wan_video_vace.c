/* diffsynth/utils/state_dict_converters/wan_video_vace.py
 *
 * A VACE checkpoint holds the base DiT and the VACE branch in one set of files; the branch's
 * config row reads the same files and keeps only the branch, whose every parameter name
 * starts with "vace" (vace_blocks.*, vace_patch_embedding.*). Names are kept as they are. */
#include <string.h>

#include "converters/converter.h"

static int convert(const ds_state_dict *in, ds_state_dict *out, ds_error *err)
{
    for (size_t i = 0; i < in->count; i++) {
        const ds_sd_entry *e = &in->entries[i];
        if (strncmp(e->name, "vace", 4) != 0)
            continue;
        int rc = ds_converter_put(out, e->name, e, err);
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

const ds_converter ds__vace_wan_model_dict_converter = {
    .name = "diffsynth.utils.state_dict_converters.wan_video_vace.VaceWanModelDictConverter",
    .rename_only = 1,
    .convert = convert,
};
