/* vram_config: upstream's fill-in rules (core/vram/layers.py set_dtype_and_device,
 * models/model_loader.py need_to_enable_vram_management, base_pipeline.py
 * download_and_load_models, layers.py fill_vram_config) and precise parse errors. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "test.h"
#include "vram/vram_config.h"

static int place_is(ds_vram_place p, ds_vram_device dev, ds_dtype dt, int disk)
{
    return p.device == dev && p.disk_dtype == disk && (disk || p.dtype == dt);
}

/* No fields: the pipeline's computation pair everywhere, unmanaged. */
static void test_no_config(void)
{
    ds_vram_config c;
    ds_error err = {0};
    REQUIRE(ds_vram_config_parse(NULL, DS_BF16, DS_VRAM_DEVICE_CUDA, &c, &err) == DS_OK);
    CHECK(!c.managed);
    CHECK(place_is(c.computation, DS_VRAM_DEVICE_CUDA, DS_BF16, 0));
    CHECK(place_is(c.offload, DS_VRAM_DEVICE_CUDA, DS_BF16, 0));
    CHECK(place_is(c.onload, DS_VRAM_DEVICE_CUDA, DS_BF16, 0));
    CHECK(place_is(c.preparing, DS_VRAM_DEVICE_CUDA, DS_BF16, 0));
    REQUIRE(ds_vram_config_parse("{}", DS_F16, DS_VRAM_DEVICE_CPU, &c, &err) == DS_OK);
    CHECK(!c.managed && place_is(c.onload, DS_VRAM_DEVICE_CPU, DS_F16, 0));
}

/* Management needs both offload fields; one alone is ignored, as upstream. */
static void test_managed_needs_both_offload_fields(void)
{
    ds_vram_config c;
    ds_error err = {0};
    REQUIRE(ds_vram_config_parse("{\"offload_dtype\": \"disk\", \"onload_dtype\": \"fp8\"}",
                                 DS_BF16, DS_VRAM_DEVICE_CUDA, &c, &err) == DS_OK);
    CHECK(!c.managed);
    CHECK(place_is(c.onload, DS_VRAM_DEVICE_CUDA, DS_BF16, 0));
    REQUIRE(ds_vram_config_parse("{\"offload_device\": \"cpu\"}", DS_BF16, DS_VRAM_DEVICE_CUDA,
                                 &c, &err) == DS_OK);
    CHECK(!c.managed);
    CHECK(place_is(c.offload, DS_VRAM_DEVICE_CUDA, DS_BF16, 0));
}

/* The docs' "CPU offload" row with only offload given: the rest become computation's. */
static void test_cpu_offload_fill(void)
{
    ds_vram_config c;
    ds_error err = {0};
    REQUIRE(ds_vram_config_parse("{\"offload_dtype\": \"torch.bfloat16\", \"offload_device\": "
                                 "\"cpu\"}",
                                 DS_BF16, DS_VRAM_DEVICE_CUDA, &c, &err) == DS_OK);
    CHECK(c.managed);
    CHECK(place_is(c.offload, DS_VRAM_DEVICE_CPU, DS_BF16, 0));
    CHECK(place_is(c.onload, DS_VRAM_DEVICE_CUDA, DS_BF16, 0));
    CHECK(place_is(c.preparing, DS_VRAM_DEVICE_CUDA, DS_BF16, 0));
    CHECK(place_is(c.computation, DS_VRAM_DEVICE_CUDA, DS_BF16, 0));
}

/* The docs' "Disk offload" and Qwen-Image quick-start rows; a "disk" dtype without a device
 * puts the state on disk, any other dtype without a device on the computation device. */
static void test_disk_offload_fill(void)
{
    ds_vram_config c;
    ds_error err = {0};
    REQUIRE(ds_vram_config_parse("{\"offload_dtype\": \"disk\", \"offload_device\": \"disk\", "
                                 "\"onload_dtype\": \"disk\", \"preparing_dtype\": "
                                 "\"float8_e4m3fn\", \"computation_dtype\": \"bfloat16\"}",
                                 DS_F32, DS_VRAM_DEVICE_CUDA, &c, &err) == DS_OK);
    CHECK(c.managed);
    CHECK(place_is(c.offload, DS_VRAM_DEVICE_DISK, DS_DTYPE_INVALID, 1));
    CHECK(place_is(c.onload, DS_VRAM_DEVICE_DISK, DS_DTYPE_INVALID, 1));
    CHECK(place_is(c.preparing, DS_VRAM_DEVICE_CUDA, DS_F8_E4M3, 0));
    CHECK(place_is(c.computation, DS_VRAM_DEVICE_CUDA, DS_BF16, 0));

    REQUIRE(ds_vram_config_parse("{\"offload_dtype\": \"disk\", \"offload_device\": \"disk\", "
                                 "\"onload_dtype\": \"fp8\", \"onload_device\": \"cpu\", "
                                 "\"preparing_dtype\": \"fp8\", \"preparing_device\": \"cuda:0\"}",
                                 DS_BF16, DS_VRAM_DEVICE_CUDA, &c, &err) == DS_OK);
    CHECK(place_is(c.onload, DS_VRAM_DEVICE_CPU, DS_F8_E4M3, 0));
    CHECK(place_is(c.preparing, DS_VRAM_DEVICE_CUDA, DS_F8_E4M3, 0));
    /* An explicit device wins over the "disk" dtype rule. */
    REQUIRE(ds_vram_config_parse("{\"offload_dtype\": \"disk\", \"offload_device\": \"cpu\"}",
                                 DS_BF16, DS_VRAM_DEVICE_CUDA, &c, &err) == DS_OK);
    CHECK(place_is(c.offload, DS_VRAM_DEVICE_CPU, DS_DTYPE_INVALID, 1));
    /* A computation pair given explicitly beats the pipeline's. */
    REQUIRE(ds_vram_config_parse("{\"offload_dtype\": \"fp8\", \"offload_device\": \"cpu\", "
                                 "\"computation_device\": \"cpu\", \"computation_dtype\": null}",
                                 DS_F16, DS_VRAM_DEVICE_CUDA, &c, &err) == DS_OK);
    CHECK(place_is(c.computation, DS_VRAM_DEVICE_CPU, DS_F16, 0));
    CHECK(place_is(c.onload, DS_VRAM_DEVICE_CPU, DS_F16, 0));
}

static void test_whole_model(void)
{
    ds_vram_config c;
    ds_error err = {0};
    REQUIRE(ds_vram_config_parse("{\"offload_dtype\": \"fp8\", \"offload_device\": \"cpu\", "
                                 "\"onload_dtype\": \"fp8\", \"onload_device\": \"cpu\"}",
                                 DS_BF16, DS_VRAM_DEVICE_CUDA, &c, &err) == DS_OK);
    CHECK(ds_vram_config_whole_model(&c) == 1);
    CHECK(place_is(c.onload, DS_VRAM_DEVICE_CUDA, DS_BF16, 0));
    CHECK(place_is(c.offload, DS_VRAM_DEVICE_CPU, DS_F8_E4M3, 0));
    CHECK(ds_vram_config_whole_model(&c) == 0);
}

static void expect_error(const char *json, const char *needle)
{
    ds_vram_config c;
    ds_error err = {0};
    CHECK(ds_vram_config_parse(json, DS_BF16, DS_VRAM_DEVICE_CUDA, &c, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, needle);
    CHECK(!c.managed && c.computation.device == DS_VRAM_DEVICE_UNSET);
}

static void test_errors(void)
{
    expect_error("{\"offload_dtype\": \"bf16\", \"offload_dtype\": \"bf16\"}", "not valid JSON");
    expect_error("[1]", "must be a JSON object, got array");
    expect_error("{\"onload_dtyp\": \"bf16\"}", "unknown field 'onload_dtyp'");
    expect_error("{\"onload_dtype\": 16}", "onload_dtype must be a string or null, got integer");
    expect_error("{\"preparing_dtype\": \"int8\"}", "preparing_dtype 'int8' is not one of");
    expect_error("{\"onload_device\": \"tpu\"}", "onload_device 'tpu'");
    expect_error("{\"onload_device\": \"cuda:\"}", "onload_device 'cuda:'");
    expect_error("{\"computation_device\": \"disk\"}", "computation state cannot be on disk");
    expect_error("{\"computation_dtype\": \"disk\"}", "computation state cannot be on disk");
}

/* The docs' table of configurations (facts §4.4), "Basic" aside (no config): each parses,
 * writes with torch's names and parses back to the same config. */
static void test_to_json_round_trip(void)
{
    static const struct {
        const char *json;
        const char *expect;
    } rows[] = {
        {"{\"offload_dtype\": \"bf16\", \"offload_device\": \"cpu\", \"onload_dtype\": "
         "\"bf16\", \"onload_device\": \"cuda\", \"preparing_dtype\": \"bf16\", "
         "\"preparing_device\": \"cuda\"}",
         "{\"offload_dtype\": \"bfloat16\", \"offload_device\": \"cpu\", \"onload_dtype\": "
         "\"bfloat16\", \"onload_device\": \"cuda\", \"preparing_dtype\": \"bfloat16\", "
         "\"preparing_device\": \"cuda\", \"computation_dtype\": \"bfloat16\", "
         "\"computation_device\": \"cuda\"}"},
        {"{\"offload_dtype\": \"torch.float8_e4m3fn\", \"offload_device\": \"cpu\", "
         "\"onload_dtype\": \"fp8\", \"onload_device\": \"cuda\", \"preparing_dtype\": "
         "\"fp8\", \"preparing_device\": \"cuda\", \"computation_dtype\": \"bf16\", "
         "\"computation_device\": \"cuda\"}",
         "{\"offload_dtype\": \"float8_e4m3fn\", \"offload_device\": \"cpu\", "
         "\"onload_dtype\": \"float8_e4m3fn\", \"onload_device\": \"cuda\", "
         "\"preparing_dtype\": \"float8_e4m3fn\", \"preparing_device\": \"cuda\", "
         "\"computation_dtype\": \"bfloat16\", \"computation_device\": \"cuda\"}"},
        {"{\"offload_dtype\": \"fp8\", \"offload_device\": \"cpu\", \"onload_dtype\": "
         "\"fp8\", \"onload_device\": \"cpu\", \"preparing_dtype\": \"fp8\", "
         "\"preparing_device\": \"cuda\"}",
         NULL},
        {"{\"offload_dtype\": \"disk\", \"offload_device\": \"disk\", \"onload_dtype\": "
         "\"disk\", \"onload_device\": \"disk\", \"preparing_dtype\": \"fp8\", "
         "\"preparing_device\": \"cuda\"}",
         "{\"offload_dtype\": \"disk\", \"offload_device\": \"disk\", \"onload_dtype\": "
         "\"disk\", \"onload_device\": \"disk\", \"preparing_dtype\": \"float8_e4m3fn\", "
         "\"preparing_device\": \"cuda\", \"computation_dtype\": \"bfloat16\", "
         "\"computation_device\": \"cuda\"}"},
        {"{\"offload_dtype\": \"disk\", \"offload_device\": \"disk\", \"onload_dtype\": "
         "\"disk\", \"onload_device\": \"disk\"}",
         NULL},
        {"{\"offload_dtype\": \"disk\", \"offload_device\": \"disk\", \"onload_dtype\": "
         "\"fp8\", \"onload_device\": \"cpu\", \"preparing_dtype\": \"fp8\", "
         "\"preparing_device\": \"cuda\"}",
         NULL},
        /* Not a docs row: float32 and float16 names, and a config left unmanaged. */
        {"{\"offload_dtype\": \"fp32\", \"offload_device\": \"cpu\", \"onload_dtype\": "
         "\"float16\"}",
         NULL},
        {NULL, NULL},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        ds_vram_config a, b;
        ds_error err = {0};
        char json[512];
        REQUIRE(ds_vram_config_parse(rows[i].json, DS_BF16, DS_VRAM_DEVICE_CUDA, &a, &err) ==
                DS_OK);
        CHECK_MSG(ds_vram_config_to_json(&a, json, sizeof json, &err) == DS_OK, "row %zu: %s", i,
                  err.message);
        if (rows[i].expect)
            CHECK_MSG(strcmp(json, rows[i].expect) == 0, "row %zu: %s", i, json);
        CHECK_MSG(ds_vram_config_parse(json, DS_F32, DS_VRAM_DEVICE_CPU, &b, &err) == DS_OK,
                  "row %zu: %s", i, err.message);
        /* Written in full, every config reads back as managed (both offload fields are
         * there); an unmanaged one is all computation, so its places still match. */
        CHECK_MSG(memcmp(&a.offload, &b.offload, sizeof a.offload) == 0 &&
                      memcmp(&a.onload, &b.onload, sizeof a.onload) == 0 &&
                      memcmp(&a.preparing, &b.preparing, sizeof a.preparing) == 0 &&
                      memcmp(&a.computation, &b.computation, sizeof a.computation) == 0,
                  "row %zu: %s", i, json);
        CHECK_MSG(b.managed == 1, "row %zu", i);
    }
}

static void test_to_json_errors(void)
{
    ds_vram_config c;
    ds_error err = {0};
    REQUIRE(ds_vram_config_parse("{\"offload_dtype\": \"fp8\", \"offload_device\": \"cpu\"}",
                                 DS_BF16, DS_VRAM_DEVICE_CUDA, &c, &err) == DS_OK);
    char small[64];
    CHECK(ds_vram_config_to_json(&c, small, sizeof small, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "the buffer has 64");
    CHECK_CONTAINS(err.message, "the JSON needs 235 bytes");
    char json[235];
    CHECK(ds_vram_config_to_json(&c, json, sizeof json, &err) == DS_OK);
    CHECK(strlen(json) == 234);
    ds_vram_config bad = c;
    bad.onload.device = DS_VRAM_DEVICE_UNSET;
    CHECK(ds_vram_config_to_json(&bad, json, sizeof json, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "onload_device is not filled in");
    bad = c;
    bad.preparing.dtype = DS_DTYPE_INVALID;
    CHECK(ds_vram_config_to_json(&bad, json, sizeof json, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "preparing_dtype");
    CHECK_CONTAINS(err.message, "is not a weight dtype");
}

static void test_limit(void)
{
    size_t b = 1;
    ds_error err = {0};
    CHECK(ds_vram_limit_bytes(-1, &b, &err) == DS_OK && b == SIZE_MAX);
    CHECK(ds_vram_limit_bytes(0, &b, &err) == DS_OK && b == 0);
    CHECK(ds_vram_limit_bytes(15.5, &b, &err) == DS_OK && b == (size_t)16642998272u);
    CHECK(ds_vram_limit_bytes(NAN, &b, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "vram_limit");
}

int main(void)
{
    RUN(test_no_config);
    RUN(test_managed_needs_both_offload_fields);
    RUN(test_cpu_offload_fill);
    RUN(test_disk_offload_fill);
    RUN(test_whole_model);
    RUN(test_errors);
    RUN(test_to_json_round_trip);
    RUN(test_to_json_errors);
    RUN(test_limit);
    return test_summary();
}
