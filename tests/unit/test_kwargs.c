/* Constructor kwargs: typed reads, strict types, and Python's unexpected-keyword message. */
#include <stdint.h>
#include <string.h>

#include "core/kwargs.h"
#include "test.h"

static void test_absent_keeps_defaults(void)
{
    ds_kwargs *kw = NULL;
    ds_error err = {0};
    REQUIRE(ds_kwargs_parse(NULL, "QwenImageDiT", &kw, &err) == DS_OK);
    int64_t layers = 60;
    int flag = 0;
    double eps = 1e-6;
    int64_t list[3] = {1, 2, 2};
    int count = 3;
    CHECK(ds_kwargs_int(kw, "num_layers", &layers, &err) == DS_OK);
    CHECK(ds_kwargs_bool(kw, "use_layer3d_rope", &flag, &err) == DS_OK);
    CHECK(ds_kwargs_double(kw, "eps", &eps, &err) == DS_OK);
    CHECK(ds_kwargs_int_list(kw, "patch_size", list, &count, &err) == DS_OK);
    CHECK(layers == 60 && flag == 0 && eps == 1e-6 && count == 3 && list[2] == 2);
    CHECK(ds_kwargs_check_all_used(kw, &err) == DS_OK);
    ds_kwargs_free(kw);
}

/* Strings as upstream's json.dumps writes them (wan_series entry 9, qwen_image_series entry 10). */
static void test_reads_upstream_values(void)
{
    ds_kwargs *kw = NULL;
    ds_error err = {0};
    REQUIRE(ds_kwargs_parse("{\"has_image_input\": false, \"patch_size\": [1, 2, 2], \"in_dim\": 16, "
                            "\"dim\": 1536, \"eps\": 1e-06, \"use_layer3d_rope\": true}",
                            "diffsynth.models.wan_video_dit.WanModel", &kw, &err) == DS_OK);
    int has_image = 1, rope = 0;
    int64_t in_dim = 0, dim = 0, patch[3] = {0};
    int count = 3;
    double eps = 0;
    CHECK(ds_kwargs_bool(kw, "has_image_input", &has_image, &err) == DS_OK && has_image == 0);
    CHECK(ds_kwargs_bool(kw, "use_layer3d_rope", &rope, &err) == DS_OK && rope == 1);
    CHECK(ds_kwargs_int(kw, "in_dim", &in_dim, &err) == DS_OK && in_dim == 16);
    CHECK(ds_kwargs_int(kw, "dim", &dim, &err) == DS_OK && dim == 1536);
    CHECK(ds_kwargs_double(kw, "eps", &eps, &err) == DS_OK && eps == 1e-6);
    CHECK(ds_kwargs_int_list(kw, "patch_size", patch, &count, &err) == DS_OK);
    CHECK(count == 3 && patch[0] == 1 && patch[1] == 2 && patch[2] == 2);
    CHECK(ds_kwargs_check_all_used(kw, &err) == DS_OK);
    ds_kwargs_free(kw);
}

static void test_double_accepts_integer(void)
{
    ds_kwargs *kw = NULL;
    ds_error err = {0};
    REQUIRE(ds_kwargs_parse("{\"scale\": 2}", "X", &kw, &err) == DS_OK);
    double scale = 0;
    CHECK(ds_kwargs_double(kw, "scale", &scale, &err) == DS_OK && scale == 2.0);
    ds_kwargs_free(kw);
}

static void test_strict_types(void)
{
    ds_kwargs *kw = NULL;
    ds_error err = {0};
    REQUIRE(ds_kwargs_parse("{\"a\": 4.0, \"b\": 1, \"c\": \"x\", \"d\": [1, 2.5], \"e\": 7, "
                            "\"f\": null}",
                            "diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet",
                            &kw, &err) == DS_OK);
    int64_t i = 5;
    int b = 0;
    double d = 0;
    int64_t list[4];
    int count = 4;
    CHECK(ds_kwargs_int(kw, "a", &i, &err) == DS_ERR_INVALID_ARGUMENT && i == 5);
    CHECK(err.code == DS_ERR_INVALID_ARGUMENT);
    CHECK_STR_EQ(err.message, "QwenImageBlockWiseControlNet: keyword argument 'a' must be an "
                              "integer, got real");
    CHECK(ds_kwargs_bool(kw, "b", &b, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "'b' must be a boolean, got integer");
    CHECK(ds_kwargs_double(kw, "c", &d, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "'c' must be a number, got string");
    CHECK(ds_kwargs_int_list(kw, "d", list, &count, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "'d'[1] must be an integer, got real");
    CHECK(count == 4);
    count = 4;
    CHECK(ds_kwargs_int_list(kw, "e", list, &count, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "'e' must be a list of integers, got integer");
    CHECK(ds_kwargs_int(kw, "f", &i, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "got null");
    ds_kwargs_free(kw);
}

static void test_list_capacity(void)
{
    ds_kwargs *kw = NULL;
    ds_error err = {0};
    REQUIRE(ds_kwargs_parse("{\"vace_layers\": [0, 5, 10, 15, 20, 25, 30, 35]}", "VaceWanModel",
                            &kw, &err) == DS_OK);
    int64_t small[4];
    int count = 4;
    CHECK(ds_kwargs_int_list(kw, "vace_layers", small, &count, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "'vace_layers' has 8 values, at most 4 supported");
    int64_t big[16];
    count = 16;
    CHECK(ds_kwargs_int_list(kw, "vace_layers", big, &count, &err) == DS_OK);
    CHECK(count == 8 && big[0] == 0 && big[7] == 35);
    ds_kwargs_free(kw);
}

static void test_unexpected_keyword(void)
{
    ds_kwargs *kw = NULL;
    ds_error err = {0};
    REQUIRE(ds_kwargs_parse("{\"additional_in_dim\": 4, \"foo\": 1, \"bar\": 2}",
                            "diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet",
                            &kw, &err) == DS_OK);
    int64_t dim = 0;
    CHECK(ds_kwargs_int(kw, "additional_in_dim", &dim, &err) == DS_OK && dim == 4);
    CHECK(ds_kwargs_check_all_used(kw, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(err.code == DS_ERR_INVALID_ARGUMENT);
    /* The first one in the text, as Python reports it. */
    CHECK_STR_EQ(err.message, "QwenImageBlockWiseControlNet.__init__() got an unexpected "
                              "keyword argument 'foo'");
    ds_kwargs_free(kw);
}

static void test_bad_json(void)
{
    ds_kwargs *kw = NULL;
    ds_error err = {0};
    CHECK(ds_kwargs_parse("[1, 2]", "X", &kw, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(kw == NULL);
    CHECK_CONTAINS(err.message, "X: extra_kwargs must be a JSON object, got array");
    CHECK(ds_kwargs_parse("{\"a\": ", "X", &kw, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "X: extra_kwargs is not valid JSON");
    CHECK(ds_kwargs_parse("{\"a\": 1, \"a\": 2}", "X", &kw, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(kw == NULL);
}

int main(void)
{
    RUN(test_absent_keeps_defaults);
    RUN(test_reads_upstream_values);
    RUN(test_double_accepts_integer);
    RUN(test_strict_types);
    RUN(test_list_capacity);
    RUN(test_unexpected_keyword);
    RUN(test_bad_json);
    return test_summary();
}
