/* The state-dict converters this build implements (core/families.def), found by upstream's
 * dotted name. */
#include <string.h>

#include "converters/converter.h"

#define DS_CONVERTER(stem, var) extern const ds_converter var;
#include "core/families.def"

const ds_converter *const ds_converters[] = {
#define DS_CONVERTER(stem, var) &var,
#include "core/families.def"
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
