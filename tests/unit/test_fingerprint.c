/* File-set fingerprints (the identify cache key) and the daemon's identify cache: the key must
 * change whenever what identification computes could change, and only be reused when it could
 * not. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fingerprint.h"
#include "daemon/identify_cache.h"
#include "test.h"

static char dir[] = "/tmp/ds-fingerprint-XXXXXX";

/* A valid safetensors file: the header text then `data_size` zero bytes. */
static void write_file(const char *name, const char *header, size_t data_size)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    uint64_t n = strlen(header);
    uint8_t len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)(n >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(header, 1, n, f);
    for (size_t i = 0; i < data_size; i++)
        fputc(0, f);
    fclose(f);
}

static int fingerprint(const char *a, const char *b, ds_fingerprint *out)
{
    char pa[256], pb[256];
    snprintf(pa, sizeof pa, "%s/%s", dir, a);
    snprintf(pb, sizeof pb, "%s/%s", dir, b ? b : "");
    const char *paths[2] = {pa, pb};
    ds_error err;
    return ds_fingerprint_files(paths, b ? 2 : 1, out, &err);
}

static const char *header_a = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
static const char *header_b = "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";

static void test_same_content_same_key(void)
{
    write_file("a.safetensors", header_a, 4);
    write_file("a_copy.safetensors", header_a, 4);
    ds_fingerprint x, y;
    REQUIRE(fingerprint("a.safetensors", NULL, &x) == DS_OK);
    REQUIRE(fingerprint("a_copy.safetensors", NULL, &y) == DS_OK);
    CHECK(ds_fingerprint_equal(&x, &y));
}

static void test_changes_change_the_key(void)
{
    ds_fingerprint base, other;
    write_file("a.safetensors", header_a, 4);
    REQUIRE(fingerprint("a.safetensors", NULL, &base) == DS_OK);

    write_file("b.safetensors", header_b, 4);
    REQUIRE(fingerprint("b.safetensors", NULL, &other) == DS_OK);
    CHECK(!ds_fingerprint_equal(&base, &other));

    /* Same header, different data size: open() would reject it, so it must not hit. */
    write_file("a_long.safetensors", header_a, 8);
    REQUIRE(fingerprint("a_long.safetensors", NULL, &other) == DS_OK);
    CHECK(!ds_fingerprint_equal(&base, &other));

    /* File order decides which duplicate wins the merge. */
    ds_fingerprint ab, ba;
    REQUIRE(fingerprint("a.safetensors", "b.safetensors", &ab) == DS_OK);
    REQUIRE(fingerprint("b.safetensors", "a.safetensors", &ba) == DS_OK);
    CHECK(!ds_fingerprint_equal(&ab, &ba));
    CHECK(!ds_fingerprint_equal(&ab, &base));
}

static void test_not_cacheable_and_errors(void)
{
    ds_fingerprint fp;
    write_file("model.pth", "not a zip", 0);
    CHECK(fingerprint("model.pth", NULL, &fp) == DS_ERR_UNIMPLEMENTED);
    CHECK(fingerprint("missing.safetensors", NULL, &fp) == DS_ERR_NOT_FOUND);
    write_file("short.safetensors", "", 0);
    CHECK(fingerprint("short.safetensors", NULL, &fp) == DS_ERR_INVALID_ARGUMENT);
}

static void test_cache_hits_and_evicts_least_recent(void)
{
    static ds_identify_cache cache;
    memset(&cache, 0, sizeof cache);
    ds_fingerprint keys[DS_IDENTIFY_CACHE_ENTRIES + 1];
    for (size_t i = 0; i <= DS_IDENTIFY_CACHE_ENTRIES; i++)
        keys[i] = (ds_fingerprint){.low = i * 7919u + 1, .high = i};
    CHECK(ds_identify_cache_find(&cache, &keys[0]) == NULL);
    for (size_t i = 0; i < DS_IDENTIFY_CACHE_ENTRIES; i++)
        ds_identify_cache_put(&cache, &keys[i], "0bbf59d9c4e0b8258498955c8f645abc", i);
    /* Touch entry 0 so entry 1 becomes the least recently used. */
    const ds_identify_cache_entry *hit = ds_identify_cache_find(&cache, &keys[0]);
    REQUIRE(hit != NULL);
    CHECK_STR_EQ(hit->model_hash, "0bbf59d9c4e0b8258498955c8f645abc");
    CHECK(hit->tensor_count == 0);
    ds_identify_cache_put(&cache, &keys[DS_IDENTIFY_CACHE_ENTRIES], "d41d8cd98f00b204e9800998ecf8427e",
                          99);
    CHECK(ds_identify_cache_find(&cache, &keys[1]) == NULL);
    CHECK(ds_identify_cache_find(&cache, &keys[0]) != NULL);
    hit = ds_identify_cache_find(&cache, &keys[DS_IDENTIFY_CACHE_ENTRIES]);
    REQUIRE(hit != NULL);
    CHECK(hit->tensor_count == 99);
    /* Putting an existing key updates it in place. */
    ds_identify_cache_put(&cache, &keys[2], "d41d8cd98f00b204e9800998ecf8427e", 5);
    hit = ds_identify_cache_find(&cache, &keys[2]);
    REQUIRE(hit != NULL);
    CHECK(hit->tensor_count == 5);
    CHECK(cache.hits == 4 && cache.misses == 2);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_same_content_same_key);
    RUN(test_changes_change_the_key);
    RUN(test_not_cacheable_and_errors);
    RUN(test_cache_hits_and_evicts_least_recent);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return test_summary();
}
