/* State-dict converters by upstream's dotted name
 * ("diffsynth.utils.state_dict_converters.qwen_image_text_encoder.QwenImageTextEncoderStateDictConverter").
 *
 * A converter maps a file's state dict to the names (and, for some upstream converters, the
 * shapes) a model class declares. Tensor data is never touched: entries are views, copied.
 * `rename_only` converters map names one to one, which is what disk offload requires
 * (facts §4.2): upstream applies those to a {name: name} dict to get a rename table.
 */
#ifndef DS_CONVERTERS_CONVERTER_H
#define DS_CONVERTERS_CONVERTER_H

#include <stddef.h>

#include "core/error.h"
#include "core/state_dict.h"

typedef struct ds_converter {
    const char *name;  /* upstream dotted path */
    int rename_only;
    /* `out` is initialised and empty. Entries are produced in the order upstream's function
     * produces them; later writes to the same name replace earlier ones, as in a Python dict. */
    int (*convert)(const ds_state_dict *in, ds_state_dict *out, ds_error *err);
} ds_converter;

/* Puts `entry` (a tensor view or a nested dict, deep-copied) into `out` under `name`, as a
 * Python converter's `state_dict_[name] = state_dict[key]` does. On failure the error names
 * the source entry. */
int ds_converter_put(ds_state_dict *out, const char *name, const ds_sd_entry *entry,
                     ds_error *err);

/* NULL when this build does not implement it. */
const ds_converter *ds_converter_find(const char *name);

extern const ds_converter *const ds_converters[];
extern const size_t ds_converter_count;

#endif
