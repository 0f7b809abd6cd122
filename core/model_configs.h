/* The model-config table: upstream's MODEL_CONFIGS (diffsynth/configs/model_configs.py, all 207
 * entries, in upstream order), the rows diffsynthd adds for layouts upstream names but has no
 * row for (after upstream's; tools/gen_model_configs.py), plus entries added at runtime from
 * JSON files.
 *
 * A JSON file holds an array of objects with upstream's keys:
 *   {"model_hash": "<32 hex>", "model_name": "...", "model_class": "diffsynth.models....",
 *    "state_dict_converter": "..." (optional), "extra_kwargs": {...} (optional),
 *    "quant_config": {...} (optional)}
 * Unknown keys, a malformed hash or a missing required key are errors naming the file and the
 * entry's index.
 */
#ifndef DS_CORE_MODEL_CONFIGS_H
#define DS_CORE_MODEL_CONFIGS_H

#include <stddef.h>

#include "core/error.h"

typedef struct ds_model_config {
    char model_hash[33];
    const char *model_name;
    const char *model_class;
    const char *state_dict_converter;  /* NULL: none */
    const char *extra_kwargs_json;     /* NULL: absent (upstream prints null); else compact JSON */
    const char *quant_config_json;     /* NULL: none */
    const char *source;                /* "builtin" or the JSON file's path */
} ds_model_config;

/* Upstream's table and our added rows, compiled in. */
extern const ds_model_config ds_builtin_model_configs[];
extern const size_t ds_builtin_model_config_count;

typedef struct ds_config_table ds_config_table;

/* A table holding the builtin entries. */
int ds_config_table_new(ds_config_table **out, ds_error *err);
void ds_config_table_free(ds_config_table *table);

/* Appends the entries of a JSON file (all or nothing). */
int ds_config_table_add_file(ds_config_table *table, const char *path, ds_error *err);
/* Same for JSON text already in memory; `source` is recorded in each entry. */
int ds_config_table_add_json(ds_config_table *table, const char *json, size_t len,
                             const char *source, ds_error *err);

size_t ds_config_table_count(const ds_config_table *table);
const ds_model_config *ds_config_table_at(const ds_config_table *table, size_t index);

/* Every entry whose hash equals `hash`, in table order (upstream loads all of them).
 * Writes up to `max` pointers into out and returns the number of matches (may exceed max). */
size_t ds_config_table_match(const ds_config_table *table, const char *hash,
                             const ds_model_config **out, size_t max);

#endif
