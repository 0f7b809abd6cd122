/* Our model hash against upstream's own: tests/data/upstream_hashes.json was written by
 * tests/golden/upstream_hashes.py, which runs DiffSynth-Studio's hash_model_file (torch.load +
 * safetensors) over every fixture file. Where upstream hashes a file we must give the same hash,
 * except for the formats we refuse on purpose (listed below with the error we give instead);
 * where upstream fails, we must fail too, except for the files we read on purpose although
 * upstream cannot (listed below). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model_file.h"
#include "core/model_hash.h"
#include "test.h"

/* Files upstream's torch.load reads but we refuse, each with a clear error: legacy pickles,
 * byte-swapped storages and compressed entries cannot be mapped as views. */
static const struct {
    const char *file;
    const char *error;
} refused_on_purpose[] = {
    {"torch/legacy.pth", "legacy torch.save format"},
    {"torch/big_endian.pth", "big"},
    {"torch/deflated_pickle.pth", "compressed"},
    {"torch/deflated_storage.pth", "compressed"},
};

/* Pickle protocols 4 and 5 are valid torch.save output (pickle_protocol=4) that torch's
 * weights_only unpickler refuses; ours reads them. Their expected hash is upstream's hash
 * function over what an unrestricted torch.load returns ("content_model_hash"). */
static int read_beyond_upstream(const char *file)
{
    return strcmp(file, "torch/protocol4.pth") == 0 || strcmp(file, "torch/protocol5.pth") == 0;
}

static const char *refusal_for(const char *file)
{
    for (size_t i = 0; i < sizeof refused_on_purpose / sizeof refused_on_purpose[0]; i++)
        if (strcmp(refused_on_purpose[i].file, file) == 0)
            return refused_on_purpose[i].error;
    return NULL;
}

static void test_every_fixture_matches_upstream(void)
{
    const char *data = getenv("DS_TEST_DATA");
    REQUIRE(data != NULL);
    char path[1024];
    snprintf(path, sizeof path, "%s/upstream_hashes.json", data);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    REQUIRE(root != NULL);
    const char *file;
    json_t *entry;
    int hashed = 0, failed_both = 0, refused = 0;
    json_object_foreach(root, file, entry)
    {
        snprintf(path, sizeof path, "%s/%s", data, file);
        const char *paths[1] = {path};
        ds_model_files *files = NULL;
        ds_error err;
        int rc = ds_model_files_open(paths, 1, &files, &err);
        const char *upstream_hash = json_string_value(json_object_get(entry, "model_hash"));
        const char *refusal = refusal_for(file);
        if (read_beyond_upstream(file))
            upstream_hash = json_string_value(json_object_get(entry, "content_model_hash"));
        if (refusal) {
            CHECK_MSG(rc != DS_OK, "%s should be refused", file);
            if (rc != DS_OK)
                CHECK_CONTAINS(err.message, refusal);
            refused++;
        } else if (upstream_hash) {
            CHECK_MSG(rc == DS_OK, "%s: %s", file, err.message);
            if (rc == DS_OK) {
                char hex[DS_MODEL_HASH_HEX];
                REQUIRE(ds_model_hash(&files->merged, hex) == DS_OK);
                CHECK_MSG(strcmp(hex, upstream_hash) == 0, "%s: ours %s, upstream %s", file, hex,
                          upstream_hash);
                hashed++;
            }
        } else {
            CHECK_MSG(rc != DS_OK, "%s: upstream fails (%s) but we accepted it", file,
                      json_string_value(json_object_get(entry, "error")));
            failed_both++;
        }
        ds_model_files_close(files);
    }
    json_decref(root);
    fprintf(stderr, "  %d hashed like upstream, %d refused by both, %d refused on purpose\n",
            hashed, failed_both, refused);
    CHECK(hashed >= 15);
}

int main(void)
{
    RUN(test_every_fixture_matches_upstream);
    return test_summary();
}
