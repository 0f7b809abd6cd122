/* What every converter does with a kept entry: put it, under its new name, into the output. */
#include "converters/converter.h"

int ds_converter_put(ds_state_dict *out, const char *name, const ds_sd_entry *entry,
                     ds_error *err)
{
    int rc;
    if (entry->dict) {
        ds_state_dict *child = ds_state_dict_new();
        rc = child ? ds_state_dict_copy(child, entry->dict) : DS_ERR_RESOURCE_EXHAUSTED;
        if (rc == DS_OK)
            rc = ds_state_dict_put_dict(out, name, child);
        else
            ds_state_dict_destroy(child);
    } else {
        rc = ds_state_dict_put_tensor(out, name, &entry->tensor);
    }
    if (rc != DS_OK)
        return ds_error_set(err, rc, "out of memory converting %s to %s", entry->name, name);
    return DS_OK;
}
