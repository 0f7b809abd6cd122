/* `diffsynth tokenize` as a user runs it: a folder with spiece.model prints exactly the ids of
 * the Hugging Face T5 tokenizer on upstream's cleaned text (tests/data/wan_tokenizer/cases.json),
 * --json adds that cleaned text; a Qwen2 folder still gives its own ids; options that only
 * Qwen2 folders have are refused for a SentencePiece folder. argv[1]: the CLI. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "integration/harness.h"
#include "test.h"

static const char *cli;
static char data_dir[4096], wan_dir[4200], qwen_dir[4200];
static json_t *cases;

/* "1 2 3\n" of the JSON id array. */
static char *ids_line(const json_t *ids)
{
    size_t cap = json_array_size(ids) * 12 + 2, n = 0;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    for (size_t i = 0; i < json_array_size(ids); i++)
        n += (size_t)snprintf(s + n, cap - n, i ? " %lld" : "%lld",
                              json_integer_value(json_array_get(ids, i)));
    snprintf(s + n, cap - n, "\n");
    return s;
}

static void test_ids_as_upstream(void)
{
    size_t i, run = 0;
    json_t *c;
    json_array_foreach(cases, i, c) {
        json_t *text = json_object_get(c, "text");
        /* argv cannot carry a NUL; the library test covers those cases. */
        if (strlen(json_string_value(text)) != json_string_length(text))
            continue;
        const char *argv[] = {cli, "tokenize", "--tokenizer", wan_dir, json_string_value(text),
                              NULL};
        char *out = NULL, *err = NULL, *want = ids_line(json_object_get(c, "ids"));
        int rc = it_run(argv, NULL, 30000, &out, &err);
        CHECK_MSG(rc == 0, "case %zu: exit %d: %s", i, rc, err ? err : "");
        CHECK_STR_EQ(out, want);
        run++;
        free(out);
        free(err);
        free(want);
    }
    CHECK_MSG(run + 2 >= json_array_size(cases), "only %zu cases ran", run);
}

static void test_json_has_cleaned_text(void)
{
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        json_t *text = json_object_get(c, "text");
        if (strlen(json_string_value(text)) != json_string_length(text) || i % 4)
            continue;
        const char *argv[] = {cli, "tokenize", "--tokenizer", wan_dir, "--json",
                              json_string_value(text), NULL};
        char *out = NULL;
        CHECK(it_run(argv, NULL, 30000, &out, NULL) == 0);
        json_error_t jerr;
        json_t *doc = out ? json_loads(out, 0, &jerr) : NULL;
        CHECK_MSG(doc != NULL, "case %zu: not JSON: %s", i, out ? out : "(none)");
        if (doc) {
            CHECK(json_equal(json_object_get(doc, "ids"), json_object_get(c, "ids")));
            CHECK(json_integer_value(json_object_get(doc, "count")) ==
                  json_integer_value(json_object_get(c, "length")));
            CHECK(json_equal(json_object_get(doc, "cleaned_text"), json_object_get(c, "clean")));
        }
        json_decref(doc);
        free(out);
    }
}

/* The Qwen2 folder beside it: still Qwen2's ids, without a cleaned text. */
static void test_qwen_folder_unchanged(void)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/cases.json", qwen_dir);
    json_error_t jerr;
    json_t *qcases = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    REQUIRE(qcases != NULL);
    json_t *c = json_array_get(qcases, 3);
    const char *text = json_string_value(json_object_get(c, "text"));
    REQUIRE(text && *text);
    const char *argv[] = {cli, "tokenize", "--tokenizer", qwen_dir, "--json", text, NULL};
    char *out = NULL;
    CHECK(it_run(argv, NULL, 30000, &out, NULL) == 0);
    json_t *doc = out ? json_loads(out, 0, &jerr) : NULL;
    CHECK(doc && json_equal(json_object_get(doc, "ids"), json_object_get(c, "ids")));
    CHECK(doc && !json_object_get(doc, "cleaned_text"));
    json_decref(doc);
    json_decref(qcases);
    free(out);
}

static void test_refusals(void)
{
    const char *decode[] = {cli, "tokenize", "--tokenizer", wan_dir, "--decode", "1", NULL};
    char *err = NULL;
    CHECK(it_run(decode, NULL, 30000, NULL, &err) == 2);
    CHECK_CONTAINS(err, "spiece.model");
    free(err);

    const char *bad_utf8[] = {cli, "tokenize", "--tokenizer", wan_dir, "ok \xff", NULL};
    CHECK(it_run(bad_utf8, NULL, 30000, NULL, &err) == 1);
    CHECK_CONTAINS(err, "INVALID_ARGUMENT: text is not valid UTF-8: bad sequence at byte 3");
    free(err);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIFFSYNTH_CLI\n", argv[0]);
        return 1;
    }
    cli = argv[1];
    const char *data = getenv("DS_TEST_DATA");
    snprintf(data_dir, sizeof data_dir, "%s", data ? data : "tests/data");
    snprintf(wan_dir, sizeof wan_dir, "%s/wan_tokenizer", data_dir);
    snprintf(qwen_dir, sizeof qwen_dir, "%s/qwen_tokenizer", data_dir);
    char path[4300];
    snprintf(path, sizeof path, "%s/cases.json", wan_dir);
    json_error_t jerr;
    json_t *doc = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!doc) {
        fprintf(stderr, "%s: %s\n", path, jerr.text);
        return 1;
    }
    cases = json_incref(json_object_get(doc, "cases"));
    json_decref(doc);
    RUN(test_ids_as_upstream);
    RUN(test_json_has_cleaned_text);
    RUN(test_qwen_folder_unchanged);
    RUN(test_refusals);
    json_decref(cases);
    return test_summary();
}
