/* The Wan tokenizer against the Hugging Face T5 fast tokenizer converted from the same
 * spiece.model (tests/golden/make_wan_tokenizer_cases.py): every case gives the same ids,
 * padding and mask at seq_len 512, including prompts cut at 512; shorter seq_lens cut the same
 * way; missing and malformed models fail with the path in the message. */
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test.h"
#include "tokenizers/wan_tokenizer.h"

static char model_dir[4096];
static json_t *cases;
static ds_wan_tokenizer *wan;

static int setup(void)
{
    const char *data = getenv("DS_TEST_DATA");
    snprintf(model_dir, sizeof model_dir, "%s/wan_tokenizer", data ? data : "tests/data");
    char path[4200];
    snprintf(path, sizeof path, "%s/cases.json", model_dir);
    json_error_t jerr;
    json_t *doc = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!doc) {
        fprintf(stderr, "%s: %s\n", path, jerr.text);
        return -1;
    }
    if (json_integer_value(json_object_get(doc, "seq_len")) != DS_WAN_TOKENIZER_SEQ_LEN) {
        fprintf(stderr, "%s: seq_len is not %d\n", path, DS_WAN_TOKENIZER_SEQ_LEN);
        json_decref(doc);
        return -1;
    }
    cases = json_incref(json_object_get(doc, "cases"));
    json_decref(doc);
    ds_error err = {0};
    if (ds_wan_tokenizer_load(model_dir, &wan, &err) != DS_OK) {
        fprintf(stderr, "load %s: %s\n", model_dir, err.message);
        return -1;
    }
    return json_is_array(cases) && json_array_size(cases) > 0 ? 0 : -1;
}

/* Whether ids[0..count) equals the JSON array `want`; prints the first difference. */
static int ids_equal(size_t index, const int32_t *ids, size_t count, const json_t *want)
{
    if (count != json_array_size(want)) {
        fprintf(stderr, "case %zu: %zu ids, want %zu\n", index, count, json_array_size(want));
        return 0;
    }
    for (size_t i = 0; i < count; i++) {
        if (ids[i] != json_integer_value(json_array_get(want, i))) {
            fprintf(stderr, "case %zu: id %zu is %d, want %lld\n", index, i, ids[i],
                    json_integer_value(json_array_get(want, i)));
            return 0;
        }
    }
    return 1;
}

static void test_special_ids(void)
{
    CHECK(ds_wan_tokenizer_eos_id(wan) == 1);
    CHECK(ds_wan_tokenizer_pad_id(wan) == 0);
}

static void test_ids_match_hugging_face(void)
{
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        json_t *text = json_object_get(c, "text");
        int32_t *ids = NULL;
        size_t count = 0, clean_len = 0;
        char *clean = NULL;
        ds_error err = {0};
        int rc = ds_wan_tokenizer_encode(wan, json_string_value(text), json_string_length(text),
                                         DS_WAN_TOKENIZER_SEQ_LEN, &ids, &count, &clean,
                                         &clean_len, &err);
        CHECK_MSG(rc == DS_OK, "case %zu: %s", i, err.message);
        if (rc != DS_OK)
            continue;
        CHECK(ids_equal(i, ids, count, json_object_get(c, "ids")));
        CHECK(clean_len == strlen(clean));
        CHECK_STR_EQ(clean, json_string_value(json_object_get(c, "clean")));
        free(ids);
        free(clean);
    }
}

static void test_padding_and_mask(void)
{
    int32_t ids[DS_WAN_TOKENIZER_SEQ_LEN], mask[DS_WAN_TOKENIZER_SEQ_LEN];
    size_t i, cut = 0;
    json_t *c;
    json_array_foreach(cases, i, c) {
        json_t *text = json_object_get(c, "text"), *want = json_object_get(c, "ids");
        size_t length = 0;
        ds_error err = {0};
        int rc = ds_wan_tokenizer_encode_padded(wan, json_string_value(text),
                                                json_string_length(text),
                                                DS_WAN_TOKENIZER_SEQ_LEN, ids, mask, &length,
                                                &err);
        CHECK_MSG(rc == DS_OK, "case %zu: %s", i, err.message);
        if (rc != DS_OK)
            continue;
        CHECK(length == (size_t)json_integer_value(json_object_get(c, "length")));
        CHECK(ids_equal(i, ids, length, want));
        int ok = 1;
        for (size_t k = 0; k < DS_WAN_TOKENIZER_SEQ_LEN; k++)
            ok &= mask[k] == (k < length) && (k < length || ids[k] == 0);
        CHECK_MSG(ok, "case %zu: padding or mask wrong", i);
        cut += length == DS_WAN_TOKENIZER_SEQ_LEN;
    }
    CHECK_MSG(cut >= 2, "want prompts longer than seq_len in the cases, got %zu", cut);
}

/* A shorter seq_len keeps the first seq_len - 1 ids and </s>, as Hugging Face truncates. */
static void test_short_seq_len(void)
{
    json_t *c = json_array_get(cases, 0), *want = json_object_get(c, "ids");
    json_t *text = json_object_get(c, "text");
    REQUIRE(json_array_size(want) > 8);
    for (size_t seq_len = 1; seq_len <= 8; seq_len++) {
        int32_t *ids = NULL;
        size_t count = 0;
        ds_error err = {0};
        REQUIRE(ds_wan_tokenizer_encode(wan, json_string_value(text), json_string_length(text),
                                        seq_len, &ids, &count, NULL, NULL, &err) == DS_OK);
        CHECK(count == seq_len);
        for (size_t k = 0; k + 1 < count; k++)
            CHECK(ids[k] == json_integer_value(json_array_get(want, k)));
        CHECK(ids[count - 1] == 1);
        free(ids);
    }
    int32_t *ids = NULL;
    size_t count = 0;
    ds_error err = {0};
    CHECK(ds_wan_tokenizer_encode(wan, "a", 1, 0, &ids, &count, NULL, NULL, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "seq_len");
}

static void *encode_all(void *arg)
{
    int *bad = arg;
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        json_t *text = json_object_get(c, "text");
        int32_t *ids = NULL;
        size_t count = 0;
        ds_error err = {0};
        if (ds_wan_tokenizer_encode(wan, json_string_value(text), json_string_length(text),
                                    DS_WAN_TOKENIZER_SEQ_LEN, &ids, &count, NULL, NULL,
                                    &err) != DS_OK ||
            !ids_equal(i, ids, count, json_object_get(c, "ids")))
            (*bad)++;
        free(ids);
    }
    return NULL;
}

/* One loaded tokenizer serves several threads (the daemon shares it between jobs). */
static void test_threads(void)
{
    pthread_t t[4];
    int bad[4] = {0};
    for (int k = 0; k < 4; k++)
        REQUIRE(pthread_create(&t[k], NULL, encode_all, &bad[k]) == 0);
    for (int k = 0; k < 4; k++) {
        pthread_join(t[k], NULL);
        CHECK(bad[k] == 0);
    }
}

static void test_load_errors(void)
{
    ds_wan_tokenizer *tok = NULL;
    ds_error err = {0};
    CHECK(!ds_wan_tokenizer_dir_has_model("/nonexistent-folder"));
    CHECK(ds_wan_tokenizer_dir_has_model(model_dir));
    CHECK(ds_wan_tokenizer_load("/nonexistent-folder", &tok, &err) == DS_ERR_NOT_FOUND);
    CHECK(tok == NULL);
    CHECK_CONTAINS(err.message, "/nonexistent-folder/spiece.model");

    char dir[] = "/tmp/ds-wan-tok-XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    char path[64];
    snprintf(path, sizeof path, "%s/spiece.model", dir);
    FILE *f = fopen(path, "wb");
    REQUIRE(f != NULL);
    fputs("this is not a model", f);
    fclose(f);
    ds_error_clear(&err);
    CHECK(ds_wan_tokenizer_load(dir, &tok, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(tok == NULL);
    CHECK_CONTAINS(err.message, path);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    if (setup() != 0)
        return 1;
    RUN(test_special_ids);
    RUN(test_ids_match_hugging_face);
    RUN(test_padding_and_mask);
    RUN(test_short_seq_len);
    RUN(test_threads);
    RUN(test_load_errors);
    ds_wan_tokenizer_free(wan);
    json_decref(cases);
    return test_summary();
}
