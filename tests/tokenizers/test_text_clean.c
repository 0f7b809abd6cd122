/* ftfy.fix_text and upstream's Wan prompt cleaning against Python: every case of
 * tests/data/wan_tokenizer/cases.json (written by tests/golden/make_wan_tokenizer_cases.py with
 * ftfy, html and regex themselves) gives the same text; invalid UTF-8 is refused with its
 * offset. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "tokenizers/ftfy.h"
#include "tokenizers/text_clean.h"

static json_t *cases;

static int load_cases(void)
{
    const char *data = getenv("DS_TEST_DATA");
    char path[4096];
    snprintf(path, sizeof path, "%s/wan_tokenizer/cases.json", data ? data : "tests/data");
    json_error_t jerr;
    json_t *doc = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!doc) {
        fprintf(stderr, "%s: %s\n", path, jerr.text);
        return -1;
    }
    cases = json_incref(json_object_get(doc, "cases"));
    json_decref(doc);
    return json_is_array(cases) && json_array_size(cases) > 0 ? 0 : -1;
}

/* Prints the strings with C escapes, so that control characters show. */
static void print_escaped(const char *label, const char *s, size_t len)
{
    fprintf(stderr, "  %s \"", label);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || c == '"' || c == '\\')
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
    }
    fputs("\"\n", stderr);
}

typedef int (*text_fn)(const char *, size_t, char **, size_t *, ds_error *);

/* Runs fn on every case's "text" and compares with its `field`; returns the mismatch count. */
static int compare_all(text_fn fn, const char *field)
{
    int bad = 0;
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        json_t *text = json_object_get(c, "text"), *want = json_object_get(c, field);
        char *got = NULL;
        size_t got_len = 0;
        ds_error err = {0};
        int rc = fn(json_string_value(text), json_string_length(text), &got, &got_len, &err);
        if (rc != DS_OK) {
            fprintf(stderr, "case %zu: %s: %s\n", i, ds_status_name(rc), err.message);
            bad++;
        } else if (got_len != json_string_length(want) ||
                   memcmp(got, json_string_value(want), got_len) != 0) {
            fprintf(stderr, "case %zu: %s differs\n", i, field);
            print_escaped("text:", json_string_value(text), json_string_length(text));
            print_escaped("got: ", got, got_len);
            print_escaped("want:", json_string_value(want), json_string_length(want));
            bad++;
        }
        free(got);
    }
    return bad;
}

static void test_ftfy_matches_python(void)
{
    CHECK(compare_all(ds_ftfy_fix_text, "ftfy") == 0);
}

static void test_clean_matches_upstream(void)
{
    CHECK(compare_all(ds_text_clean_whitespace, "clean") == 0);
}

/* The corpus covers what the port claims: each fix changes at least one case. */
static void test_corpus_exercises_each_fix(void)
{
    static const char *const needles[] = {
        "&hellip;", "&EACUTE;", "&#x2019;", "\xef\xac\x81" /* ﬁ */, "\xef\xbc\x8c" /* ， */,
        "\xe2\x80\x9c" /* “ */, "\r\n", "\x1b[", "\x7f", "\xc2\x85" /* U+0085 */,
        "e\xcc\x81" /* e + combining acute */, "<i>",
    };
    for (size_t k = 0; k < sizeof needles / sizeof needles[0]; k++) {
        int changed = 0;
        size_t i;
        json_t *c;
        json_array_foreach(cases, i, c) {
            json_t *text = json_object_get(c, "text"), *fixed = json_object_get(c, "ftfy");
            if (memmem(json_string_value(text), json_string_length(text), needles[k],
                       strlen(needles[k])) &&
                !json_equal(text, fixed))
                changed = 1;
        }
        CHECK_MSG(changed, "no case fixes text containing needle %zu", k);
    }
}

static void test_invalid_utf8(void)
{
    static const struct {
        const char *text;
        size_t len;
        const char *where;
    } bad[] = {
        {"ok \xff", 4, "byte 3"},
        {"\xc3", 1, "byte 0"},
        {"a\xed\xa0\x80", 4, "byte 1"},   /* a surrogate */
        {"ab\xc0\xaf", 4, "byte 2"},      /* an overlong '/' */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *out = NULL;
        size_t len = 0;
        ds_error err = {0};
        CHECK(ds_text_clean_whitespace(bad[i].text, bad[i].len, &out, &len, &err) ==
              DS_ERR_INVALID_ARGUMENT);
        CHECK(out == NULL);
        CHECK_CONTAINS(err.message, "not valid UTF-8");
        CHECK_CONTAINS(err.message, bad[i].where);
        ds_error_clear(&err);
        CHECK(ds_ftfy_fix_text(bad[i].text, bad[i].len, &out, &len, &err) ==
              DS_ERR_INVALID_ARGUMENT);
        CHECK_CONTAINS(err.message, bad[i].where);
    }
}

/* NULs are text like any other: removed as control characters, not an end of string. */
static void test_embedded_nul(void)
{
    char *out = NULL;
    size_t len = 0;
    ds_error err = {0};
    REQUIRE(ds_text_clean_whitespace("a\0b  c", 6, &out, &len, &err) == DS_OK);
    CHECK(len == 4);
    CHECK_STR_EQ(out, "ab c");
    free(out);
}

int main(void)
{
    if (load_cases() != 0)
        return 1;
    RUN(test_ftfy_matches_python);
    RUN(test_clean_matches_upstream);
    RUN(test_corpus_exercises_each_fix);
    RUN(test_invalid_utf8);
    RUN(test_embedded_nul);
    json_decref(cases);
    return test_summary();
}
