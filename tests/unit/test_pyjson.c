/* pyjson against Python's own json.dumps / str(). Every expected string below was printed by
 * python3 (3.11) from the expression in the comment above it, then pasted as a C literal. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client/pyjson.h"
#include "test.h"

static void check_reformat(const char *input, int indent, const char *expected)
{
    pyjson_buf b = {0};
    int rc = pyjson_reformat(&b, input, strlen(input), indent, 0);
    CHECK_MSG(rc == 0, "reformat of %s failed", input);
    CHECK_STR_EQ(b.data, expected);
    pyjson_buf_free(&b);
}

/* The dict upstream prints after loading a model, with extra_kwargs as the daemon sends it. */
static char *loaded_model(const char *name, const char *cls, const char *kwargs_json)
{
    pyjson_buf b = {0};
    pyjson_writer w;
    pyjson_writer_init(&w, &b, 4);
    pyjson_begin_object(&w);
    pyjson_key(&w, "model_name");
    pyjson_string(&w, name);
    pyjson_key(&w, "model_class");
    pyjson_string(&w, cls);
    pyjson_key(&w, "extra_kwargs");
    pyjson_raw(&w, kwargs_json);
    pyjson_end_object(&w);
    if (pyjson_writer_finish(&w) != 0) {
        pyjson_buf_free(&b);
        return NULL;
    }
    return b.data;
}

static void test_loaded_model_dict(void)
{
    char *s = loaded_model("qwen_image_text_encoder",
                           "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder", NULL);
    /* json.dumps({"model_name": "qwen_image_text_encoder", "model_class": "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder", "extra_kwargs": None}, indent=4) */
    CHECK_STR_EQ(s, "{\n    \"model_name\": \"qwen_image_text_encoder\",\n    \"model_class\": \"diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder\",\n    \"extra_kwargs\": null\n}");
    free(s);

    /* The daemon's JSON text is compact and writes the float its own way: both must normalise. */
    s = loaded_model("wan_video_vace", "diffsynth.models.wan_video_vace.VaceWanModel",
                     "{\"vace_layers\":[0,5,10],\"eps\":1E-6,\"has_image_input\":false}");
    /* json.dumps({"model_name": "wan_video_vace", "model_class": "diffsynth.models.wan_video_vace.VaceWanModel", "extra_kwargs": {"vace_layers": [0, 5, 10], "eps": 1e-06, "has_image_input": False}}, indent=4) */
    CHECK_STR_EQ(s, "{\n    \"model_name\": \"wan_video_vace\",\n    \"model_class\": \"diffsynth.models.wan_video_vace.VaceWanModel\",\n    \"extra_kwargs\": {\n        \"vace_layers\": [\n            0,\n            5,\n            10\n        ],\n        \"eps\": 1e-06,\n        \"has_image_input\": false\n    }\n}");
    free(s);
}

static void test_nested_kwargs_compact(void)
{
    /* json.dumps({"vace_layers": [0, 5, 10], "eps": 1e-06, "has_image_input": False}) */
    const char *expected = "{\"vace_layers\": [0, 5, 10], \"eps\": 1e-06, \"has_image_input\": false}";
    check_reformat("{ \"vace_layers\" : [ 0 , 5 , 10 ] ,\n\t\"eps\" : 0.000001 , \"has_image_input\" : false }",
                   PYJSON_COMPACT, expected);
    check_reformat("{\"vace_layers\":[0,5,10],\"eps\":1e-06,\"has_image_input\":false}", PYJSON_COMPACT,
                   expected);
}

static void test_floats(void)
{
    /* json.dumps([1e-06, 0.1, 2.5, 1e16, 123456789012345678.0, 1e-05, 4.0, 0.0001, 1.5e20, -0.0, 1e15, 1e100, 5e-324, 1.7976931348623157e308, 0.30000000000000004, 100.0, 1e22, -2.5e-7, 12345.678]) */
    check_reformat("[1e-6, 0.1, 2.5, 1e16, 123456789012345678.0, 0.00001, 4.0, 1e-4, 1.5e20, -0.0, 1e15, "
                   "1e100, 5e-324, 1.7976931348623157e308, 0.30000000000000004, 100.0, 1e22, -2.5e-7, "
                   "12345.678]",
                   PYJSON_COMPACT,
                   "[1e-06, 0.1, 2.5, 1e+16, 1.2345678901234568e+17, 1e-05, 4.0, 0.0001, 1.5e+20, -0.0, 1000000000000000.0, 1e+100, 5e-324, 1.7976931348623157e+308, 0.30000000000000004, 100.0, 1e+22, -2.5e-07, 12345.678]");

    static const struct {
        double v;
        const char *repr;
    } cases[] = {
        /* json.dumps(x) for each x */
        {1e-06, "1e-06"}, {0.1, "0.1"}, {2.5, "2.5"}, {1e16, "1e+16"},
        {123456789012345678.0, "1.2345678901234568e+17"}, {1e-05, "1e-05"}, {4.0, "4.0"},
        {0.0001, "0.0001"}, {1.5e20, "1.5e+20"}, {1e15, "1000000000000000.0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[32];
        pyjson_format_double(cases[i].v, out);
        CHECK_STR_EQ(out, cases[i].repr);
    }

    /* json.dumps([float("inf"), float("-inf"), float("nan")]) */
    pyjson_buf b = {0};
    pyjson_writer w;
    pyjson_writer_init(&w, &b, PYJSON_COMPACT);
    pyjson_begin_array(&w);
    pyjson_double(&w, INFINITY);
    pyjson_double(&w, -INFINITY);
    pyjson_double(&w, NAN);
    pyjson_end_array(&w);
    CHECK(pyjson_writer_finish(&w) == 0);
    CHECK_STR_EQ(b.data, "[Infinity, -Infinity, NaN]");
    pyjson_buf_free(&b);
}

static void test_unicode_and_controls(void)
{
    /* json.dumps("caf\u00e9 \u6f22\u5b57 \U0001f600 \"q\" back\\slash \n\r\t\b\f \x01\x1f\x7f /") */
    const char *in = "caf\xc3\xa9 \xe6\xbc\xa2\xe5\xad\x97 \xf0\x9f\x98\x80 \"q\" back\\slash \n\r\t\b\f \x01\x1f\x7f /";
    pyjson_buf b = {0};
    CHECK(pyjson_quote(&b, in, strlen(in)) == 0);
    CHECK_STR_EQ(b.data, "\"caf\\u00e9 \\u6f22\\u5b57 \\ud83d\\ude00 \\\"q\\\" back\\\\slash \\n\\r\\t\\b\\f \\u0001\\u001f\\u007f /\"");
    pyjson_buf_free(&b);

    /* json.dumps(b"a\xffb\xc3".decode("utf-8", "surrogateescape")) */
    CHECK(pyjson_quote(&b, "a\xff" "b\xc3", 4) == 0);
    CHECK_STR_EQ(b.data, "\"a\\udcffb\\udcc3\"");
    pyjson_buf_free(&b);

    /* An embedded NUL is a character like any other. json.dumps("a\x00b") */
    CHECK(pyjson_quote(&b, "a\0b", 3) == 0);
    CHECK_STR_EQ(b.data, "\"a\\u0000b\"");
    pyjson_buf_free(&b);

    /* json.dumps(json.loads('{"s": "a\\u00e9\\ud83d\\ude00\\/\\u0041\\ud800x", "n": -0, "r": 1E-6, "t": 0.000001, "u": 1e400, "v": [NaN, -Infinity]}')) */
    check_reformat("{\"s\": \"a\\u00e9\\ud83d\\ude00\\/\\u0041\\ud800x\", \"n\": -0, \"r\": 1E-6, "
                   "\"t\": 0.000001, \"u\": 1e400, \"v\": [NaN, -Infinity]}",
                   PYJSON_COMPACT,
                   "{\"s\": \"a\\u00e9\\ud83d\\ude00/A\\ud800x\", \"n\": 0, \"r\": 1e-06, \"t\": 1e-06, \"u\": Infinity, \"v\": [NaN, -Infinity]}");
    /* Raw UTF-8 inside a string token is escaped like the \u form. json.dumps("caf\u00e9") */
    check_reformat("\"caf\xc3\xa9\"", 4, "\"caf\\u00e9\"");
}

static void test_empty_containers_and_indents(void)
{
    const char *in = "{\"a\":{},\"b\":[ ],\"c\":[{}],\"d\":{\"e\":[]}}";
    /* json.dumps({"a": {}, "b": [], "c": [{}], "d": {"e": []}}, indent=4) */
    check_reformat(in, 4, "{\n    \"a\": {},\n    \"b\": [],\n    \"c\": [\n        {}\n    ],\n    \"d\": {\n        \"e\": []\n    }\n}");
    /* json.dumps({"a": {}, "b": [], "c": [{}], "d": {"e": []}}) */
    check_reformat(in, PYJSON_COMPACT, "{\"a\": {}, \"b\": [], \"c\": [{}], \"d\": {\"e\": []}}");
    /* json.dumps({"num_mode": 10, "mode_dict": {"canny": 0, "tile": 1}, "big": 18446744073709551615, "neg": -12}, indent=2) */
    check_reformat("{\"num_mode\":10,\"mode_dict\":{\"canny\":0,\"tile\":1},\"big\":18446744073709551615,\"neg\":-12}",
                   2, "{\n  \"num_mode\": 10,\n  \"mode_dict\": {\n    \"canny\": 0,\n    \"tile\": 1\n  },\n  \"big\": 18446744073709551615,\n  \"neg\": -12\n}");
    /* json.dumps([[1, [2, [3]]], True, None], indent=0) */
    check_reformat("[[1,[2,[3]]],true,null]", 0, "[\n[\n1,\n[\n2,\n[\n3\n]\n]\n],\ntrue,\nnull\n]");
}

static void test_load_banner_paths(void)
{
    pyjson_buf b = {0};
    pyjson_writer w;
    pyjson_writer_init(&w, &b, 4);
    pyjson_begin_array(&w);
    pyjson_string(&w, "models/a.safetensors");
    pyjson_string(&w, "models/b.safetensors");
    pyjson_end_array(&w);
    CHECK(pyjson_writer_finish(&w) == 0);
    /* json.dumps(["models/a.safetensors", "models/b.safetensors"], indent=4) */
    CHECK_STR_EQ(b.data, "[\n    \"models/a.safetensors\",\n    \"models/b.safetensors\"\n]");
    pyjson_buf_free(&b);

    pyjson_writer_init(&w, &b, 4);
    pyjson_string(&w, "models/Qwen/model.safetensors");
    CHECK(pyjson_writer_finish(&w) == 0);
    /* json.dumps("models/Qwen/model.safetensors", indent=4) */
    CHECK_STR_EQ(b.data, "\"models/Qwen/model.safetensors\"");
    pyjson_buf_free(&b);
}

static void test_py_str_list(void)
{
    const char *items[] = {"/a/b.safetensors", "/it's/x", "caf\xc3\xa9", "tab\there",
                           "q\"d", "both'\"", "bs\\x", "\x7f\x01"};
    pyjson_buf b = {0};
    CHECK(pyjson_py_str_list(&b, items, 8, true) == 0);
    /* str(["/a/b.safetensors", "/it's/x", "caf\u00e9", "tab\there", "q\"d", "both'\"", "bs\\x", "\x7f\x01"]) */
    CHECK_STR_EQ(b.data, "['/a/b.safetensors', \"/it's/x\", 'caf\xc3\xa9', 'tab\\there', 'q\"d', 'both\\'\"', 'bs\\\\x', '\\x7f\\x01']");
    pyjson_buf_free(&b);
    /* f"{path}" with a single str path: the string itself */
    CHECK(pyjson_py_str_list(&b, items, 1, true) == 0);
    CHECK_STR_EQ(b.data, "/a/b.safetensors");
    pyjson_buf_free(&b);
    /* str(["/a/b.safetensors"]) */
    CHECK(pyjson_py_str_list(&b, items, 1, false) == 0);
    CHECK_STR_EQ(b.data, "['/a/b.safetensors']");
    pyjson_buf_free(&b);
}

static void test_malformed_rejected(void)
{
    static const char *bad[] = {
        "", "{", "{\"a\":}", "[1,]", "{\"a\" 1}", "\"abc", "01", "1.", "-", "1e", "{} x",
        "\"a\nb\"", "\"\\x\"", "\"\\u12\"", "[tru]", "{1:2}", "\"\xff\"", "[1 2]", "nan",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pyjson_buf b = {0};
        CHECK(pyjson_append_str(&b, "keep") == 0);
        CHECK_MSG(pyjson_reformat(&b, bad[i], strlen(bad[i]), 4, 0) != 0, "accepted %s", bad[i]);
        CHECK_STR_EQ(b.data, "keep");
        pyjson_buf_free(&b);
    }
    /* Nesting beyond the limit fails instead of recursing without bound. */
    char deep[2 * PYJSON_MAX_DEPTH + 8];
    size_t n = 0;
    for (int i = 0; i < PYJSON_MAX_DEPTH + 2; i++)
        deep[n++] = '[';
    for (int i = 0; i < PYJSON_MAX_DEPTH + 2; i++)
        deep[n++] = ']';
    pyjson_buf b = {0};
    CHECK(pyjson_reformat(&b, deep, n, PYJSON_COMPACT, 0) != 0);
    pyjson_buf_free(&b);
}

static void test_writer_misuse(void)
{
    pyjson_buf b = {0};
    pyjson_writer w;
    pyjson_writer_init(&w, &b, PYJSON_COMPACT);
    pyjson_begin_object(&w);
    pyjson_key(&w, "a");
    pyjson_end_object(&w);
    CHECK(pyjson_writer_finish(&w) != 0);
    pyjson_buf_free(&b);

    pyjson_writer_init(&w, &b, PYJSON_COMPACT);
    pyjson_begin_array(&w);
    CHECK(pyjson_writer_finish(&w) != 0);
    pyjson_buf_free(&b);
}

int main(void)
{
    RUN(test_loaded_model_dict);
    RUN(test_nested_kwargs_compact);
    RUN(test_floats);
    RUN(test_unicode_and_controls);
    RUN(test_empty_containers_and_indents);
    RUN(test_load_banner_paths);
    RUN(test_py_str_list);
    RUN(test_malformed_rejected);
    RUN(test_writer_misuse);
    return test_summary();
}
