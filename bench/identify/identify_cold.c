/* bench/identify, cold path: what the daemon does on an identify-cache miss (map and parse every
 * header, merge, hash, match), in-process, so the ratio shows the work itself without the cache.
 *
 * usage: identify_cold REPEATS PATH...
 * Prints one JSON line like identify_bench. */
#include <stdio.h>
#include <stdlib.h>

#include "bench/common/bench_util.h"
#include "core/model_configs.h"
#include "core/model_file.h"
#include "models/model_loader.h"

int main(int argc, char **argv)
{
    if (argc < 3 || atoi(argv[1]) < 1) {
        fprintf(stderr, "usage: %s REPEATS PATH...\n", argv[0]);
        return 2;
    }
    int repeats = atoi(argv[1]);
    ds_error err;
    ds_config_table *table;
    if (ds_config_table_new(&table, &err) != DS_OK) {
        fprintf(stderr, "identify_cold: %s\n", err.message);
        return 1;
    }
    double *times = calloc((size_t)repeats, sizeof *times);
    char hash[DS_MODEL_HASH_HEX] = "";
    for (int i = 0; i < repeats; i++) {
        double start = ds_bench_now_s();
        ds_model_files *files;
        ds_identification ident = {0};
        if (ds_model_files_open((const char *const *)argv + 2, (size_t)(argc - 2), &files, &err) !=
                DS_OK ||
            ds_identify_files(table, files, &ident, &err) != DS_OK) {
            fprintf(stderr, "identify_cold: %s\n", err.message);
            return 1;
        }
        ds_model_files_close(files);
        times[i] = ds_bench_now_s() - start;
        snprintf(hash, sizeof hash, "%s", ident.model_hash);
        ds_identification_free(&ident);
    }
    qsort(times, (size_t)repeats, sizeof *times, ds_bench_compare_double);
    printf("{\"model_hash\": \"%s\", \"median_s\": %.9f, \"min_s\": %.9f, \"repeats\": %d}\n", hash,
           times[repeats / 2], times[0], repeats);
    free(times);
    ds_config_table_free(table);
    return 0;
}
