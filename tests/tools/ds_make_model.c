/* ds-make-model: writes safetensors files from a key list, to stand in for real model files
 * (README demo, identification and load tests). Sparse files cost no disk space, so even a
 * 40 GB DiT is written in milliseconds. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "tools/keylist.h"
#include "tools/safetensors_writer.h"

static void usage(FILE *f)
{
    fputs("usage: ds-make-model --keys LIST.json --out PATH [options]\n"
          "\n"
          "Writes a model as safetensors from a key list ({\"name\": [d0, d1, ...], ...}, in\n"
          "order), and prints each file written.\n"
          "\n"
          "  --keys FILE      key list JSON (tests/data/keylists/*.json)\n"
          "  --out PATH       output file (\".safetensors\" is appended if missing), or the\n"
          "                   shard prefix with --shards\n"
          "  --dtype D        tensor dtype: bf16 (default), f32, f16, f64, f8_e4m3, f8_e5m2,\n"
          "                   or an integer dtype with --fill sparse\n"
          "  --shards N       split in order into N files PATH-0000i-of-0000N.safetensors\n"
          "  --fill MODE      sparse (default): header only, data left as a hole (zeros);\n"
          "                   random: seeded values ~ N(0, 0.02)\n"
          "  --seed S         seed for --fill random (default 0)\n"
          "  -h, --help       this text\n",
          f);
}

static int parse_u64(const char *s, uint64_t *out)
{
    if (!*s || *s == '-')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"keys", required_argument, NULL, 'k'},  {"out", required_argument, NULL, 'o'},
        {"dtype", required_argument, NULL, 'd'}, {"shards", required_argument, NULL, 's'},
        {"fill", required_argument, NULL, 'f'},  {"seed", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
    };
    const char *keys = NULL, *out = NULL;
    ds_dtype dtype = DS_BF16;
    uint64_t shards = 1, seed = 0;
    ds_st_fill fill = DS_ST_FILL_SPARSE;
    int opt;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case 'k':
            keys = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'd':
            dtype = ds_dtype_parse(optarg);
            if (dtype == DS_DTYPE_INVALID) {
                fprintf(stderr, "ds-make-model: unknown dtype \"%s\"\n", optarg);
                return 2;
            }
            break;
        case 's':
            if (parse_u64(optarg, &shards) != 0 || shards < 1 || shards > 99999) {
                fprintf(stderr, "ds-make-model: --shards wants 1..99999, got \"%s\"\n", optarg);
                return 2;
            }
            break;
        case 'f':
            if (strcmp(optarg, "sparse") == 0) {
                fill = DS_ST_FILL_SPARSE;
            } else if (strcmp(optarg, "random") == 0) {
                fill = DS_ST_FILL_RANDOM;
            } else {
                fprintf(stderr, "ds-make-model: --fill wants sparse or random, got \"%s\"\n",
                        optarg);
                return 2;
            }
            break;
        case 'r':
            if (parse_u64(optarg, &seed) != 0) {
                fprintf(stderr, "ds-make-model: --seed wants an unsigned integer, got \"%s\"\n",
                        optarg);
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || !keys || !out) {
        fprintf(stderr, "ds-make-model: %s\n",
                optind != argc ? "unexpected positional argument" : "--keys and --out are required");
        usage(stderr);
        return 2;
    }

    ds_error err;
    ds_error_clear(&err);
    ds_state_dict tensors;
    ds_state_dict_init(&tensors);
    char **paths = NULL;
    size_t count = 0;
    int rc = ds_keylist_load(keys, dtype, &tensors, &err);
    if (rc == DS_OK)
        rc = ds_st_write_model(out, &tensors, (int)shards, fill, seed, &paths, &count, &err);
    if (rc != DS_OK)
        fprintf(stderr, "ds-make-model: %s\n", err.message);
    for (size_t i = 0; i < count; i++)
        printf("%s\n", paths[i]);
    ds_st_paths_free(paths, count);
    ds_state_dict_free(&tensors);
    return rc == DS_OK ? 0 : 1;
}
