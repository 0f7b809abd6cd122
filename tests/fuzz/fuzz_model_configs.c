/* A `--model-configs` JSON file, any bytes, appended to the builtin table: all or nothing.
 * A rejected file must leave the table as it was; an accepted one adds entries whose hashes
 * are 32 lowercase hex digits and whose required strings are set. Nothing may crash or leak. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model_configs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_entry(const ds_model_config *c, size_t i)
{
    int ok = strlen(c->model_hash) == 32 && c->model_name && c->model_class && c->source;
    for (size_t k = 0; ok && k < 32; k++)
        ok = (c->model_hash[k] >= '0' && c->model_hash[k] <= '9') ||
             (c->model_hash[k] >= 'a' && c->model_hash[k] <= 'f');
    if (!ok) {
        fprintf(stderr, "fuzz_model_configs: entry %zu accepted malformed\n", i);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ds_config_table *table = NULL;
    ds_error err;
    if (ds_config_table_new(&table, &err) != DS_OK)
        return 0;
    size_t before = ds_config_table_count(table);
    int rc = ds_config_table_add_json(table, (const char *)data, size, "fuzz.json", &err);
    size_t after = ds_config_table_count(table);
    if (rc != DS_OK && after != before) {
        fprintf(stderr, "fuzz_model_configs: a rejected file changed the table (%zu -> %zu)\n",
                before, after);
        abort();
    }
    for (size_t i = before; i < after; i++) {
        const ds_model_config *c = ds_config_table_at(table, i);
        check_entry(c, i);
        const ds_model_config *match[1];
        if (ds_config_table_match(table, c->model_hash, match, 1) == 0) {
            fprintf(stderr, "fuzz_model_configs: entry %zu's hash matches nothing\n", i);
            abort();
        }
    }
    ds_config_table_free(table);
    return 0;
}
