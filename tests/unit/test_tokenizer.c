/* The Qwen2 tokenizer against Hugging Face `tokenizers`: every shared case and every extra
 * golden case (tests/golden/make_tokenizer_cases.py) encodes to the same ids and decodes to the
 * same text; the vocab.json + merges.txt layout gives the same ids; malformed files fail with
 * messages naming the file and the field. */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenizers/qwen_tokenizer.h"
#include "test.h"

static char data_dir[4096];
static ds_qwen_tokenizer *qwen;  /* loaded once from tests/data/qwen_tokenizer */

static json_t *load_cases(const char *name)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", data_dir, name);
    json_error_t jerr;
    json_t *cases = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!cases)
        fprintf(stderr, "%s: %s\n", path, jerr.text);
    return cases;
}

/* Encodes `text` and compares with the JSON array `want`; prints the first difference. */
static int encode_matches(const ds_qwen_tokenizer *tok, const char *text, size_t len,
                          const json_t *want)
{
    int32_t *ids = NULL;
    size_t count = 0;
    ds_error err = {0};
    if (ds_qwen_tokenizer_encode(tok, text, len, &ids, &count, &err) != DS_OK) {
        fprintf(stderr, "encode \"%.60s\": %s\n", text, err.message);
        return 0;
    }
    int ok = count == json_array_size(want);
    for (size_t i = 0; ok && i < count; i++)
        ok = ids[i] == json_integer_value(json_array_get(want, i));
    if (!ok) {
        fprintf(stderr, "encode \"%.60s\": got", text);
        for (size_t i = 0; i < count && i < 40; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, " (%zu ids), want %zu ids\n", count, json_array_size(want));
    }
    free(ids);
    return ok;
}

static void test_shared_cases(void)
{
    json_t *cases = load_cases("cases.json");
    REQUIRE(cases && json_array_size(cases) > 0);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const json_t *text = json_object_get(c, "text");
        CHECK_MSG(encode_matches(qwen, json_string_value(text), json_string_length(text),
                                 json_object_get(c, "ids")),
                  "shared case %zu", i);
    }
    json_decref(cases);
}

static void check_decode(const json_t *ids_json, bool skip, const json_t *want, size_t index)
{
    size_t n = json_array_size(ids_json);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    for (size_t k = 0; k < n; k++)
        ids[k] = (int32_t)json_integer_value(json_array_get(ids_json, k));
    char *text = NULL;
    size_t len = 0;
    ds_error err = {0};
    int rc = ds_qwen_tokenizer_decode(qwen, ids, n, skip, &text, &len, &err);
    CHECK_MSG(rc == DS_OK, "case %zu: %s", index, err.message);
    CHECK_MSG(rc == DS_OK && len == json_string_length(want) &&
                  memcmp(text, json_string_value(want), len) == 0,
              "case %zu: decode(skip_special=%d) gave \"%s\", want \"%s\"", index, skip,
              text ? text : "", json_string_value(want));
    free(text);
    free(ids);
}

/* Unicode classes, NFC, whitespace runs, special tokens, long text; decode as HF does. */
static void test_extra_golden_cases(void)
{
    json_t *cases = load_cases("extra_cases.json");
    REQUIRE(cases && json_array_size(cases) > 100);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const json_t *text = json_object_get(c, "text");
        const json_t *ids = json_object_get(c, "ids");
        if (json_is_string(text))
            CHECK_MSG(encode_matches(qwen, json_string_value(text), json_string_length(text), ids),
                      "extra case %zu", i);
        check_decode(ids, true, json_object_get(c, "decoded"), i);
        check_decode(ids, false, json_object_get(c, "decoded_special"), i);
    }
    json_decref(cases);
}

/* Text already in NFC comes back byte for byte, special tokens included. */
static void test_round_trip(void)
{
    static const char *const texts[] = {
        "", "a cat", "  leading and trailing spaces  ", "line one\nline two\r\n\nline four",
        "<|im_start|>system\nDescribe the image.<|im_end|>\n<|im_start|>user\nhi<|im_end|>",
        "emoji 🐱🚀 café 一只可爱的小猫 \t\v\f", "embedded\0nul",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        size_t n = i == 6 ? 12 : strlen(texts[i]);
        int32_t *ids = NULL;
        size_t count = 0;
        char *back = NULL;
        size_t len = 0;
        ds_error err = {0};
        CHECK(ds_qwen_tokenizer_encode(qwen, texts[i], n, &ids, &count, &err) == DS_OK);
        CHECK(ds_qwen_tokenizer_decode(qwen, ids, count, false, &back, &len, &err) == DS_OK);
        CHECK_MSG(back && len == n && memcmp(back, texts[i], n) == 0, "text %zu came back as \"%s\"",
                  i, back ? back : "");
        free(ids);
        free(back);
    }
}

static void test_special_ids_and_errors(void)
{
    CHECK(ds_qwen_tokenizer_added_token_id(qwen, "<|im_start|>") == 151644);
    CHECK(ds_qwen_tokenizer_added_token_id(qwen, "<|im_end|>") == 151645);
    CHECK(ds_qwen_tokenizer_added_token_id(qwen, "<|nope|>") == -1);
    CHECK(ds_qwen_tokenizer_vocab_size(qwen) == 151669);

    int32_t *ids = (int32_t *)1;
    size_t count = 1;
    ds_error err = {0};
    CHECK(ds_qwen_tokenizer_encode(qwen, "ab\xC3(", 4, &ids, &count, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "not valid UTF-8 at byte 2");
    CHECK(ids == NULL && count == 0);

    int32_t bad[] = {64, 200000};
    char *text = NULL;
    size_t len = 0;
    CHECK(ds_qwen_tokenizer_decode(qwen, bad, 2, true, &text, &len, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "ids[1] = 200000 names no token");
    CHECK(text == NULL);
}

/* The header promises concurrent encodes: each thread must get HF's ids for every case. */
static void *encode_cases(void *cases)
{
    size_t i, bad = 0;
    json_t *c;
    json_array_foreach((json_t *)cases, i, c) {
        const json_t *text = json_object_get(c, "text");
        if (json_is_string(text) && !encode_matches(qwen, json_string_value(text),
                                                    json_string_length(text),
                                                    json_object_get(c, "ids")))
            bad++;
    }
    return (void *)bad;
}

static void test_concurrent_encode(void)
{
    json_t *cases = load_cases("extra_cases.json");
    REQUIRE(cases);
    pthread_t threads[4];
    for (int i = 0; i < 4; i++)
        REQUIRE(pthread_create(&threads[i], NULL, encode_cases, cases) == 0);
    for (int i = 0; i < 4; i++) {
        void *bad = NULL;
        pthread_join(threads[i], &bad);
        CHECK(bad == NULL);
    }
    json_decref(cases);
}

/* ---- other layouts and malformed files ------------------------------------------------- */

static char tmp_root[] = "/tmp/ds-test-tokenizer-XXXXXX";

static void write_file(const char *dir, const char *name, const char *content)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(content, f);
        fclose(f);
    }
}

static void make_dir(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", tmp_root, name);
    mkdir(out, 0700);
}

/* The slow tokenizer's files, written from tokenizer.json: the same ids must come out. */
static void test_vocab_and_merges_layout(void)
{
    char dir[4200], path[4300];
    make_dir(dir, sizeof dir, "slow");
    snprintf(path, sizeof path, "%s/tokenizer.json", data_dir);
    json_t *root = json_load_file(path, 0, NULL);
    REQUIRE(root);
    json_t *model = json_object_get(root, "model");
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    CHECK(json_dump_file(json_object_get(model, "vocab"), path, JSON_COMPACT) == 0);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    FILE *f = fopen(path, "wb");
    REQUIRE(f);
    fputs("#version: 0.2\n", f);
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(model, "merges"), i, m)
        fprintf(f, "%s %s\n", json_string_value(json_array_get(m, 0)),
                json_string_value(json_array_get(m, 1)));
    fclose(f);
    json_decref(root);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", data_dir);
    json_t *config = json_load_file(path, 0, NULL);
    REQUIRE(config);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    CHECK(json_dump_file(config, path, 0) == 0);
    json_decref(config);

    ds_qwen_tokenizer *slow = NULL;
    ds_error err = {0};
    REQUIRE(ds_qwen_tokenizer_load(dir, &slow, &err) == DS_OK);
    json_t *cases = load_cases("cases.json");
    json_t *c;
    json_array_foreach(cases, i, c) {
        const json_t *text = json_object_get(c, "text");
        CHECK_MSG(encode_matches(slow, json_string_value(text), json_string_length(text),
                                 json_object_get(c, "ids")),
                  "case %zu through vocab.json + merges.txt", i);
    }
    json_decref(cases);
    ds_qwen_tokenizer_free(slow);
}

/* A small valid tokenizer.json: the 256 byte tokens, merges "a b" -> "ab", "ab c" -> "abc",
 * and one special token; each malformed variant below changes one thing. */
static json_t *tiny_tokenizer(void)
{
    json_t *vocab = json_object();
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        int cp = printable ? b : 256 + n++;
        char s[4];
        if (cp < 0x80) {
            s[0] = (char)cp;
            s[1] = '\0';
        } else {
            s[0] = (char)(0xC0 | (cp >> 6));
            s[1] = (char)(0x80 | (cp & 0x3F));
            s[2] = '\0';
        }
        json_object_set_new(vocab, s, json_integer(b));
    }
    json_object_set_new(vocab, "ab", json_integer(256));
    json_object_set_new(vocab, "abc", json_integer(257));
    return json_pack(
        "{s:[{s:i,s:s,s:b,s:b,s:b,s:b,s:b}],s:{s:s},s:{s:s,s:[{s:s,s:{s:s},s:s,s:b},{s:s,s:b,s:b}]},"
        "s:{s:s},s:{s:s,s:o,s:[s,s]}}",
        "added_tokens", "id", 258, "content", "<|x|>", "special", 1, "normalized", 0, "lstrip", 0,
        "rstrip", 0, "single_word", 0, "normalizer", "type", "NFC", "pre_tokenizer", "type",
        "Sequence", "pretokenizers", "type", "Split", "pattern", "Regex", "\\p{L}+|\\p{N}|\\s+",
        "behavior", "Isolated", "invert", 0, "type", "ByteLevel", "add_prefix_space", 0,
        "use_regex", 0, "decoder", "type", "ByteLevel", "model", "type", "BPE", "vocab", vocab,
        "merges", "a b", "ab c");
}

/* Writes `root` as DIR/tokenizer.json in a fresh folder and loads it. */
static int load_variant(const char *name, json_t *root, ds_error *err)
{
    char dir[4200], path[4300];
    make_dir(dir, sizeof dir, name);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    json_dump_file(root, path, JSON_COMPACT);
    json_decref(root);
    ds_qwen_tokenizer *tok = NULL;
    int rc = ds_qwen_tokenizer_load(dir, &tok, err);
    if (rc == DS_OK) {
        int32_t *ids = NULL;
        size_t count = 0;
        ds_error e2 = {0};
        /* The tiny tokenizer itself must work: "abc ab<|x|>" -> abc, " ", ab, <|x|>. */
        if (ds_qwen_tokenizer_encode(tok, "abc ab<|x|>", 11, &ids, &count, &e2) != DS_OK ||
            count != 4 || ids[0] != 257 || ids[1] != ' ' || ids[2] != 256 || ids[3] != 258)
            rc = ds_error_set(err, DS_ERR_INTERNAL, "the tiny tokenizer encoded wrongly");
        free(ids);
    }
    ds_qwen_tokenizer_free(tok);
    return rc;
}

static void test_malformed_files(void)
{
    ds_error err = {0};
    ds_qwen_tokenizer *tok = NULL;
    char dir[4200];

    CHECK(load_variant("ok", tiny_tokenizer(), &err) == DS_OK);

    CHECK(ds_qwen_tokenizer_load("/nonexistent/tokenizer", &tok, &err) == DS_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.message, "/nonexistent/tokenizer");
    make_dir(dir, sizeof dir, "empty");
    CHECK(ds_qwen_tokenizer_load(dir, &tok, &err) == DS_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.message, "neither tokenizer.json nor vocab.json + merges.txt");
    CHECK(tok == NULL);

    make_dir(dir, sizeof dir, "truncated");
    write_file(dir, "tokenizer.json", "{\"model\": {\"vocab\": {\"a\": 1,");
    CHECK(ds_qwen_tokenizer_load(dir, &tok, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "tokenizer.json: not valid JSON");

    json_t *t = tiny_tokenizer();
    json_object_set_new(json_object_get(t, "model"), "vocab", json_array());
    CHECK(load_variant("vocab-array", t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "model.vocab: expected an object of token -> id, got array");

    t = tiny_tokenizer();
    json_object_set_new(json_object_get(json_object_get(t, "model"), "vocab"), "abc", json_string("x"));
    CHECK(load_variant("vocab-string-id", t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "token \"abc\": expected an id in [0, 2^31 - 1), got string");

    t = tiny_tokenizer();
    json_object_set_new(json_object_get(json_object_get(t, "model"), "vocab"), "abc", json_integer(256));
    CHECK(load_variant("vocab-duplicate-id", t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "both have id 256");

    t = tiny_tokenizer();
    json_object_del(json_object_get(json_object_get(t, "model"), "vocab"), "a");
    CHECK(load_variant("vocab-missing-byte", t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "no token for byte 0x61");

    t = tiny_tokenizer();
    json_array_append_new(json_object_get(json_object_get(t, "model"), "merges"), json_string("abc"));
    CHECK(load_variant("merge-no-space", t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "model.merges[2]: expected \"LEFT RIGHT\" with one space");

    t = tiny_tokenizer();
    json_array_append_new(json_object_get(json_object_get(t, "model"), "merges"), json_string("q zz"));
    CHECK(load_variant("merge-unknown", t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "model.merges[2]: token \"zz\" is not in the vocabulary");

    t = tiny_tokenizer();
    json_array_append_new(json_object_get(json_object_get(t, "model"), "merges"), json_string("b c"));
    CHECK(load_variant("merge-result-unknown", t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "the merge of \"b\" and \"c\" is not in the vocabulary");

    t = tiny_tokenizer();
    json_object_set_new(json_object_get(t, "normalizer"), "type", json_string("NFKC"));
    CHECK(load_variant("nfkc", t, &err) == DS_ERR_UNIMPLEMENTED);
    CHECK_CONTAINS(err.message, "normalizer: only NFC (or none) is implemented, got NFKC");

    t = tiny_tokenizer();
    json_object_set_new(json_array_get(json_object_get(t, "added_tokens"), 0), "lstrip", json_true());
    CHECK(load_variant("lstrip", t, &err) == DS_ERR_UNIMPLEMENTED);
    CHECK_CONTAINS(err.message, "added_tokens[0]: \"lstrip\": true is not implemented");

    t = tiny_tokenizer();
    json_object_set_new(json_array_get(json_object_get(t, "added_tokens"), 0), "content", json_string(""));
    CHECK(load_variant("empty-added", t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "added_tokens[0]: \"content\" must be a non-empty string");

    t = tiny_tokenizer();
    json_t *split = json_array_get(json_object_get(json_object_get(t, "pre_tokenizer"), "pretokenizers"), 0);
    json_object_set_new(json_object_get(split, "pattern"), "Regex", json_string("(\\p{L}"));
    CHECK(load_variant("bad-regex", t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "pre_tokenizer.pretokenizers[0].pattern: the regex does not compile");

    t = tiny_tokenizer();
    json_object_set_new(json_object_get(t, "model"), "type", json_string("WordPiece"));
    CHECK(load_variant("wordpiece", t, &err) == DS_ERR_UNIMPLEMENTED);
    CHECK_CONTAINS(err.message, "model.type: only BPE is implemented, got WordPiece");

    make_dir(dir, sizeof dir, "bad-merges-txt");
    write_file(dir, "vocab.json", "{\"a\": 0}");
    write_file(dir, "merges.txt", "#version: 0.2\na b c\n");
    CHECK(ds_qwen_tokenizer_load(dir, &tok, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "vocab.json: no token for byte 0x00");

    make_dir(dir, sizeof dir, "bad-config");
    write_file(dir, "vocab.json", "{}");
    write_file(dir, "merges.txt", "");
    write_file(dir, "tokenizer_config.json", "{\"added_tokens_decoder\": {\"x\": {\"content\": \"<a>\"}}}");
    CHECK(ds_qwen_tokenizer_load(dir, &tok, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "tokenizer_config.json: added_tokens_decoder[\"x\"]: expected an id");
}

int main(void)
{
    const char *data = getenv("DS_TEST_DATA");
    snprintf(data_dir, sizeof data_dir, "%s/qwen_tokenizer", data ? data : "tests/data");
    ds_error err = {0};
    if (ds_qwen_tokenizer_load(data_dir, &qwen, &err) != DS_OK) {
        fprintf(stderr, "cannot load %s: %s\n", data_dir, err.message);
        return 1;
    }
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_shared_cases);
    RUN(test_extra_golden_cases);
    RUN(test_round_trip);
    RUN(test_special_ids_and_errors);
    RUN(test_concurrent_encode);
    RUN(test_vocab_and_merges_layout);
    RUN(test_malformed_files);
    ds_qwen_tokenizer_free(qwen);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmp_root);
    return test_summary();
}
