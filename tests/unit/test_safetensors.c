/* The safetensors reader: files written by the real `safetensors` package
 * (tests/golden/make_safetensors_fixtures.py), hand-built images for every rule of the format,
 * and a corpus of malformed images, each failing with its own specific message. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/safetensors.h"
#include "test.h"

static char tmpdir[] = "/tmp/test_safetensors.XXXXXX";

/* 8-byte little-endian length, the header, then data_size bytes 0, 1, 2, ... */
static uint8_t *make_image_n(const char *header, size_t header_len, size_t data_size,
                             size_t *size)
{
    *size = 8 + header_len + data_size;
    uint8_t *img = malloc(*size);
    for (int i = 0; i < 8; i++)
        img[i] = (uint8_t)((uint64_t)header_len >> (8 * i));
    memcpy(img + 8, header, header_len);
    for (size_t i = 0; i < data_size; i++)
        img[8 + header_len + i] = (uint8_t)i;
    return img;
}

static uint8_t *make_image(const char *header, size_t data_size, size_t *size)
{
    return make_image_n(header, strlen(header), data_size, size);
}

static char *write_temp(const char *name, const uint8_t *bytes, size_t size)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        return NULL;
    if (size && fwrite(bytes, 1, size, f) != size) {
        fclose(f);
        return NULL;
    }
    fclose(f);
    return path;
}

static float f32_at(const void *data, size_t i)
{
    float v;
    memcpy(&v, (const uint8_t *)data + 4 * i, 4);
    return v;
}

static const ds_tensor_view *tensor(const ds_safetensors *st, const char *name)
{
    const ds_sd_entry *e = ds_state_dict_find(&st->tensors, name);
    return e ? &e->tensor : NULL;
}

/* ---- files written by the reference writer ------------------------------------------- */

static ds_safetensors *open_fixture(const char *file, int file_index)
{
    const char *root = getenv("DS_TEST_DATA");
    char path[1024];
    snprintf(path, sizeof path, "%s/safetensors/%s", root ? root : "tests/data", file);
    ds_safetensors *st = NULL;
    ds_error err = {0};
    int rc = ds_safetensors_open(path, file_index, &st, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    return st;
}

static void check_shape(const ds_tensor_view *v, ds_dtype dtype, int ndim, const int64_t *shape,
                        uint64_t nbytes)
{
    CHECK(v->dtype == dtype);
    CHECK(v->ndim == ndim);
    for (int i = 0; i < ndim && i < v->ndim; i++)
        CHECK(v->shape[i] == shape[i]);
    CHECK(v->nbytes == nbytes);
    CHECK(ds_tensor_view_is_contiguous(v));
    CHECK(v->file_index == 7);
}

static void test_reference_writer_file(void)
{
    ds_safetensors *st = open_fixture("mixed.safetensors", 7);
    REQUIRE(st);
    CHECK(st->map != NULL);
    CHECK(st->file_size == 1094);
    CHECK(st->header_size == 984);
    CHECK(st->data == st->map + 8 + 984);
    CHECK(st->data_size == 102);
    CHECK(st->tensors.count == 15);

    /* Header order, as the writer laid it out. */
    const char *header = (const char *)st->map + 8;
    size_t last = 0;
    for (size_t i = 0; i < st->tensors.count; i++) {
        char key[256];
        snprintf(key, sizeof key, "\"%s\":{\"dtype\"", st->tensors.entries[i].name);
        if (strcmp(st->tensors.entries[i].name, "blocks.0.attn\"q\"") == 0)
            snprintf(key, sizeof key, "\"blocks.0.attn\\\"q\\\"\":{");
        const char *at = memmem(header, st->header_size, key, strlen(key));
        CHECK_MSG(at && (size_t)(at - header) > last, "%s", st->tensors.entries[i].name);
        if (at)
            last = (size_t)(at - header);
    }

    REQUIRE(st->metadata_count == 2);
    CHECK_STR_EQ(st->metadata_keys[0], "format");
    CHECK_STR_EQ(st->metadata_values[0], "pt");
    CHECK_STR_EQ(st->metadata_keys[1], "note");
    CHECK_STR_EQ(st->metadata_values[1], "caf\xc3\xa9 \"quoted\"\n");

    const ds_tensor_view *v;
    REQUIRE((v = tensor(st, "w.f32")));
    check_shape(v, DS_F32, 2, (int64_t[]){2, 3}, 24);
    CHECK(v->stride[0] == 3 && v->stride[1] == 1);
    for (int i = 0; i < 6; i++)
        CHECK(f32_at(v->data, (size_t)i) == (float)i - 2.5f);

    REQUIRE((v = tensor(st, "w.f16")));
    check_shape(v, DS_F16, 2, (int64_t[]){2, 2}, 8);
    CHECK(memcmp(v->data, (uint16_t[]){0x3C00, 0xC000, 0x3800, 0x7BFF}, 8) == 0);

    REQUIRE((v = tensor(st, "w.bf16")));
    check_shape(v, DS_BF16, 1, (int64_t[]){4}, 8);
    CHECK(memcmp(v->data, (uint16_t[]){0x3F80, 0xC020, 0x3E20, 0x4380}, 8) == 0);

    REQUIRE((v = tensor(st, "w.f8_e4m3")));
    check_shape(v, DS_F8_E4M3, 1, (int64_t[]){3}, 3);
    CHECK(memcmp(v->data, (uint8_t[]){0x38, 0xB0, 0x7E}, 3) == 0);

    REQUIRE((v = tensor(st, "w.f8_e5m2")));
    check_shape(v, DS_F8_E5M2, 1, (int64_t[]){2}, 2);
    CHECK(memcmp(v->data, (uint8_t[]){0x40, 0xB4}, 2) == 0);

    REQUIRE((v = tensor(st, "w.f64")));
    check_shape(v, DS_F64, 0, NULL, 8);
    double d;
    memcpy(&d, v->data, 8);
    CHECK(d == 3.25);
    CHECK(ds_tensor_view_numel(v) == 1);

    REQUIRE((v = tensor(st, "ids")));
    check_shape(v, DS_I64, 1, (int64_t[]){3}, 24);
    CHECK(memcmp(v->data, (int64_t[]){1, -2, INT64_C(1) << 40}, 24) == 0);

    REQUIRE((v = tensor(st, "i32")));
    check_shape(v, DS_I32, 2, (int64_t[]){2, 1}, 8);
    CHECK(memcmp(v->data, (int32_t[]){-7, 9}, 8) == 0);

    REQUIRE((v = tensor(st, "i16")));
    check_shape(v, DS_I16, 1, (int64_t[]){1}, 2);
    CHECK(memcmp(v->data, (int16_t[]){-300}, 2) == 0);

    REQUIRE((v = tensor(st, "i8")));
    check_shape(v, DS_I8, 1, (int64_t[]){2}, 2);
    CHECK(memcmp(v->data, (int8_t[]){-128, 127}, 2) == 0);

    REQUIRE((v = tensor(st, "u8")));
    check_shape(v, DS_U8, 1, (int64_t[]){3}, 3);
    CHECK(memcmp(v->data, (uint8_t[]){255, 0, 7}, 3) == 0);

    REQUIRE((v = tensor(st, "mask")));
    check_shape(v, DS_BOOL, 1, (int64_t[]){2}, 2);
    CHECK(memcmp(v->data, (uint8_t[]){1, 0}, 2) == 0);

    REQUIRE((v = tensor(st, "empty")));
    check_shape(v, DS_F32, 2, (int64_t[]){0, 4}, 0);
    CHECK(v->data == st->data + 36);

    REQUIRE((v = tensor(st, "blocks.0.attn\"q\"")));
    CHECK(f32_at(v->data, 0) == 5.0f);
    REQUIRE((v = tensor(st, "\xc3\xa9mbed.\xf0\x9f\x98\x80")));
    CHECK(f32_at(v->data, 0) == 6.0f);
    ds_safetensors_close(st);
}

static void test_reference_writer_empty_file(void)
{
    ds_safetensors *st = open_fixture("empty.safetensors", 0);
    REQUIRE(st);
    CHECK(st->header_size == 8); /* "{}" padded with six spaces */
    CHECK(st->tensors.count == 0);
    CHECK(st->metadata_count == 0);
    CHECK(st->data_size == 0);
    ds_safetensors_close(st);
}

/* ---- hand-built valid images --------------------------------------------------------- */

static ds_safetensors *parse_ok(const char *header, size_t data_size)
{
    size_t size;
    uint8_t *img = make_image(header, data_size, &size);
    ds_safetensors *st = NULL;
    ds_error err = {0};
    int rc = ds_safetensors_parse("ok.safetensors", img, size, 3, &st, &err);
    CHECK_MSG(rc == DS_OK, "%s\n  header: %s", err.message, header);
    /* The views point into img; callers only inspect metadata, so it can go. */
    free(img);
    return st;
}

static void test_whitespace_and_field_order(void)
{
    ds_safetensors *st =
        parse_ok(" \t\r\n{ \"b\" : { \"shape\" : [ 2 , 1 ] , \"data_offsets\" : [ 0 , 8 ] ,"
                 " \"dtype\" : \"F32\" } ,\n\"a\":{\"data_offsets\":[8,10],\"dtype\":\"BF16\","
                 "\"shape\":[1]}\t}        ",
                 10);
    REQUIRE(st);
    REQUIRE(st->tensors.count == 2);
    CHECK_STR_EQ(st->tensors.entries[0].name, "b");
    CHECK_STR_EQ(st->tensors.entries[1].name, "a");
    const ds_tensor_view *b = &st->tensors.entries[0].tensor;
    CHECK(b->ndim == 2 && b->shape[0] == 2 && b->shape[1] == 1);
    CHECK(b->stride[0] == 1 && b->stride[1] == 1);
    CHECK(b->data == st->data && b->file_index == 3);
    CHECK(st->tensors.entries[1].tensor.data == st->data + 8);
    ds_safetensors_close(st);
}

static void test_header_order_not_offset_order(void)
{
    ds_safetensors *st = parse_ok("{\"z\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]},"
                                  "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
                                  "\"m\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                                  3);
    REQUIRE(st);
    REQUIRE(st->tensors.count == 3);
    CHECK_STR_EQ(st->tensors.entries[0].name, "z");
    CHECK_STR_EQ(st->tensors.entries[1].name, "a");
    CHECK_STR_EQ(st->tensors.entries[2].name, "m");
    CHECK(st->tensors.entries[0].tensor.data == st->data + 2);
    ds_safetensors_close(st);
}

static void test_string_escapes(void)
{
    ds_safetensors *st = parse_ok(
        "{\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\u20AC\\ud83d\\ude00\":"
        "{\"d\\u0074ype\":\"F\\u0033\\u0032\",\"shape\":[],\"data_offsets\":[0,4]},"
        "\"__metadata__\":{\"k\\u00e9y\":\"v\\\\al\"}}",
        4);
    REQUIRE(st);
    REQUIRE(st->tensors.count == 1);
    CHECK_STR_EQ(st->tensors.entries[0].name,
                 "a\"b\\c/d\b\f\n\r\t\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    CHECK(st->tensors.entries[0].tensor.dtype == DS_F32);
    REQUIRE(st->metadata_count == 1);
    CHECK_STR_EQ(st->metadata_keys[0], "k\xc3\xa9y");
    CHECK_STR_EQ(st->metadata_values[0], "v\\al");
    ds_safetensors_close(st);
}

static void test_zero_size_tensors_share_offsets(void)
{
    ds_safetensors *st = parse_ok("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                                  "\"c\":{\"dtype\":\"F16\",\"shape\":[3,0],\"data_offsets\":[8,8]},"
                                  "\"d\":{\"dtype\":\"I8\",\"shape\":[0],\"data_offsets\":[8,8]}}",
                                  8);
    REQUIRE(st);
    CHECK(st->tensors.count == 4);
    ds_safetensors_close(st);
}

static void test_limits_accepted(void)
{
    /* Largest dim allowed; the tensor is empty so it needs no bytes. */
    ds_safetensors *st = parse_ok("{\"a\":{\"dtype\":\"F32\",\"shape\":[0,9223372036854775807],"
                                  "\"data_offsets\":[0,0]}}",
                                  0);
    REQUIRE(st);
    CHECK(st->tensors.entries[0].tensor.shape[1] == INT64_MAX);
    ds_safetensors_close(st);
    st = parse_ok("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,2],\"data_offsets\":[0,2]}}",
                  2);
    REQUIRE(st);
    CHECK(st->tensors.entries[0].tensor.ndim == 8);
    ds_safetensors_close(st);
    st = parse_ok("{}", 0);
    REQUIRE(st);
    CHECK(st->tensors.count == 0);
    ds_safetensors_close(st);
    /* The crate reads "__metadata__": null as no metadata. */
    st = parse_ok("{\"__metadata__\":null}", 0);
    REQUIRE(st);
    CHECK(st->metadata_count == 0);
    ds_safetensors_close(st);
    st = parse_ok("{\"__metadata__\":{}}", 0);
    REQUIRE(st);
    ds_safetensors_close(st);
}

/* ---- malformed images ---------------------------------------------------------------- */

#define T(offsets) "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":" offsets "}"

typedef struct bad_case {
    const char *header;
    size_t data_size;
    const char *needle;
} bad_case;

static const bad_case bad_cases[] = {
    /* not JSON, or not well formed */
    {"{\"a\":", 0, "expected '{' starting the tensor's {dtype, shape, data_offsets}, found the end of the header"},
    {"{\"a\" " T("[0,8]") "}", 8, "malformed JSON at header byte 5: expected ':', found '{'"},
    {"{\"a\":" T("[0,8]") ",}", 8, "expected a tensor name string, found '}'"},
    {"{'a':" T("[0,8]") "}", 8, "expected a tensor name string, found '''"},
    {"{\"a\":{\"dtype\":\"F32\" \"shape\":[2],\"data_offsets\":[0,8]}}", 8,
     "tensor \"a\": malformed JSON at header byte 20: expected ',' or '}', found '\"'"},
    {"{\"abc", 0, "expected a closing '\"', found the end of the header"},
    {"{\"a\":" T("[0,8]"), 8, "expected ',' or '}', found the end of the header"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,],\"data_offsets\":[0,8]}}", 8,
     "expected a non-negative integer, found ']'"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2 3],\"data_offsets\":[0,8]}}", 8,
     "expected ',' or ']', found '3'"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}}", 8,
     "expected nothing but whitespace after the header object, found '}'"},
    /* not an object */
    {"[1,2]", 0, "the header must be a JSON object, found '['"},
    {"\"a\"", 0, "the header must be a JSON object, found '\"'"},
    {"        ", 0, "the header must be a JSON object, found the end of the header"},
    {"{\"a\":[0,8]}", 8, "tensor \"a\": malformed JSON at header byte 5: expected '{' starting"},
    /* trailing garbage */
    {"{}x", 0, "expected nothing but whitespace after the header object, found 'x'"},
    {"{} {}", 0, "after the header object, found '{'"},
    /* dtype */
    {"{\"a\":{\"dtype\":\"F128\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
     "tensor \"a\": unknown dtype \"F128\""},
    {"{\"a\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype \"f32\""},
    {"{\"a\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
     "expected a dtype string, found '4'"},
    /* sizes */
    {"{\"blocks.0.w\":{\"dtype\":\"F32\",\"shape\":[4,3],\"data_offsets\":[0,40]}}", 40,
     "bad.safetensors: tensor \"blocks.0.w\": shape [4, 3] × F32 needs 48 bytes but data_offsets "
     "span 40"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,2],\"data_offsets\":[0,8]}}", 8,
     "tensor \"a\": shape [4294967296, 4294967296, 2] has more than 2^63-1 elements"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0,4294967296,4294967296],\"data_offsets\":[0,0]}}", 0,
     "shape [0, 4294967296, 4294967296] has more than 2^63-1 elements"},
    {"{\"a\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,8]}}", 8,
     "shape [2305843009213693952] × F64 needs more than 2^64-1 bytes"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
     "tensor \"a\": shape has a negative number"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8,
     "tensor \"a\": shape has more than 8 entries"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8,
     "expected '[' starting shape, found '2'"},
    /* numbers */
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8,
     "shape has a non-integer number"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2e0],\"data_offsets\":[0,8]}}", 8,
     "shape has a non-integer number"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[+2],\"data_offsets\":[0,8]}}", 8,
     "expected a non-negative integer, found '+'"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[02],\"data_offsets\":[0,8]}}", 8,
     "expected a number without leading zeros, found '0'"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,9223372036854775808]}}", 8,
     "data_offsets has a number above 2^63-1"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551624]}}", 8,
     "data_offsets has a number above 2^63-1"},
    /* offsets */
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8,
     "tensor \"a\": data_offsets [8, 0] have begin > end"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
     "tensor \"a\": data_offsets [0, 16] end beyond the data region of 8 bytes"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8,
     "data_offsets has 1 entries, expected 2 [begin, end]"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8,
     "data_offsets has more than 2 entries"},
    /* layout */
    {"{\"a\":" T("[0,8]") ",\"b\":" T("[4,12]") "}", 12,
     "tensor \"b\": data_offsets [4, 12] overlap tensor \"a\" [0, 8]"},
    {"{\"a\":" T("[0,8]") ",\"b\":" T("[0,8]") "}", 8,
     "tensor \"b\": data_offsets [0, 8] overlap tensor \"a\" [0, 8]"},
    {"{\"a\":" T("[0,8]") ",\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 8,
     "tensor \"z\": data_offsets [4, 4] overlap tensor \"a\" [0, 8]"},
    {"{\"a\":" T("[0,8]") ",\"b\":" T("[12,20]") "}", 20,
     "tensor \"b\": data_offsets [12, 20] leave a gap after tensor \"a\" [0, 8]"},
    {"{\"a\":" T("[4,12]") "}", 12, "the first tensor must start at byte 0"},
    {"{\"a\":" T("[0,8]") "}", 12,
     "tensors cover 8 bytes but the data region has 12 (trailing bytes after the last tensor)"},
    {"{}", 4, "tensors cover 0 bytes but the data region has 4"},
    /* names */
    {"{\"a\":" T("[0,8]") ",\"a\":" T("[8,16]") "}", 16, "tensor \"a\": duplicate name"},
    {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, "\"__metadata__\": duplicate name"},
    /* metadata */
    {"{\"__metadata__\":{\"k\":1}}", 0, "\"__metadata__\": value of \"k\" must be a string, found '1'"},
    {"{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", 0, "value of \"k\" must be a string, found '{'"},
    {"{\"__metadata__\":{\"k\":null}}", 0, "value of \"k\" must be a string, found 'n'"},
    {"{\"__metadata__\":\"x\"}", 0, "expected '{' starting an object of string values, found '\"'"},
    {"{\"__metadata__\":{\"k\":\"1\",\"j\":\"2\",\"k\":\"3\"}}", 0,
     "\"__metadata__\": duplicate key \"k\""},
    /* fields */
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "tensor \"a\": missing field \"data_offsets\""},
    {"{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "tensor \"a\": missing field \"dtype\""},
    {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "tensor \"a\": missing field \"shape\""},
    {"{\"a\":{}}", 8, "tensor \"a\": missing field \"dtype\""},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"offsets\":[0,8]}}", 8,
     "tensor \"a\": unknown field \"offsets\" (expected dtype, shape, data_offsets)"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
     "tensor \"a\": field \"shape\" appears twice"},
    /* strings */
    {"{\"a\\x\":" T("[0,8]") "}", 8, "expected one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u, found 'x'"},
    {"{\"a\\ud800\":" T("[0,8]") "}", 8, "expected \\u and a low surrogate after a high surrogate"},
    {"{\"a\\ud800\\u0041\":" T("[0,8]") "}", 8, "expected a low surrogate after a high surrogate"},
    {"{\"a\\udc00\":" T("[0,8]") "}", 8, "expected a code point, not a lone low surrogate"},
    {"{\"a\\u12\":" T("[0,8]") "}", 8, "expected 4 hex digits after \\u"},
    {"{\"a\\u0000\":" T("[0,8]") "}", 8, "expected a string without NUL characters"},
    {"{\"a\tb\":" T("[0,8]") "}", 8, "expected no raw control characters in a string, found byte 0x09"},
    {"{\"a\xff\":" T("[0,8]") "}", 8, "expected valid UTF-8 in a string, found byte 0xff"},
    {"{\"a\xc0\x80\":" T("[0,8]") "}", 8, "expected valid UTF-8 in a string, found byte 0xc0"},
    {"{\"a\xed\xa0\x80\":" T("[0,8]") "}", 8, "expected valid UTF-8 in a string, found byte 0xed"},
    {"{\"a\xf4\x90\x80\x80\":" T("[0,8]") "}", 8, "expected valid UTF-8 in a string"},
    {"{\"a\xe2\x82\":" T("[0,8]") "}", 8, "expected valid UTF-8 in a string, found byte 0xe2"},
    {"{\"__metadata__\":{\"k\":\"\xe2\x82\"}}", 0, "expected valid UTF-8 in a string"},
};

static void test_malformed_headers(void)
{
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        size_t size;
        uint8_t *img = make_image(c->header, c->data_size, &size);
        ds_safetensors *st = (ds_safetensors *)1;
        ds_error err = {0};
        int rc = ds_safetensors_parse("bad.safetensors", img, size, 0, &st, &err);
        CHECK_MSG(rc == DS_ERR_INVALID_ARGUMENT, "case %zu (%s): rc %d", i, c->header, rc);
        CHECK_MSG(err.code == DS_ERR_INVALID_ARGUMENT, "case %zu", i);
        CHECK(st == NULL);
        CHECK_MSG(strncmp(err.message, "bad.safetensors: ", 17) == 0, "case %zu: %s", i,
                  err.message);
        CHECK_MSG(strstr(err.message, c->needle) != NULL, "case %zu\n  got:    %s\n  wanted: %s",
                  i, err.message, c->needle);
        free(img);
    }
}

static void expect_bytes_error(const uint8_t *img, size_t size, const char *needle)
{
    ds_safetensors *st = NULL;
    ds_error err = {0};
    int rc = ds_safetensors_parse("bad.safetensors", img, size, 0, &st, &err);
    CHECK(rc == DS_ERR_INVALID_ARGUMENT);
    CHECK(st == NULL);
    CHECK_CONTAINS(err.message, "bad.safetensors: ");
    CHECK_CONTAINS(err.message, needle);
}

static void test_bad_lengths(void)
{
    uint8_t img[32] = {0};
    expect_bytes_error(img, 0, "file is 0 bytes, too short for the 8-byte header length");
    expect_bytes_error(img, 5, "file is 5 bytes, too short");
    expect_bytes_error(img, 16, "header length is 0");
    img[0] = 25; /* 8 + 25 > 32 */
    expect_bytes_error(img, 32, "header length 25 runs past the end of the file (32 bytes, so at "
                                "most 24 header bytes)");
    memset(img, 0xFF, 8);
    expect_bytes_error(img, 32, "header length 18446744073709551615 exceeds the limit of "
                                "104857600 bytes");
    uint64_t n = DS_SAFETENSORS_MAX_HEADER + 1u;
    for (int i = 0; i < 8; i++)
        img[i] = (uint8_t)(n >> (8 * i));
    expect_bytes_error(img, 32, "header length 104857601 exceeds the limit");

    /* NUL padding is not JSON whitespace; the crate's serde_json refuses it too. */
    size_t size;
    uint8_t *padded = make_image_n("{}\0\0\0", 5, 0, &size);
    expect_bytes_error(padded, size, "after the header object, found byte 0x00");
    free(padded);
}

static void test_long_and_odd_names_in_messages(void)
{
    size_t name_len = 100000;
    char *header = malloc(name_len + 128);
    header[0] = '{';
    header[1] = '"';
    memset(header + 2, 'n', name_len);
    strcpy(header + 2 + name_len, "\":{\"dtype\":\"X\",\"shape\":[],\"data_offsets\":[0,0]}}");
    size_t size;
    uint8_t *img = make_image(header, 0, &size);
    ds_safetensors *st = NULL;
    ds_error err = {0};
    CHECK(ds_safetensors_parse("bad.safetensors", img, size, 0, &st, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "nnnn...\": unknown dtype \"X\"");
    CHECK(strlen(err.message) < 400);
    free(img);
    free(header);

    img = make_image("{\"a\\nb\\u0001\\\"\":{\"dtype\":\"X\",\"shape\":[],\"data_offsets\":[0,0]}}",
                     0, &size);
    CHECK(ds_safetensors_parse("bad.safetensors", img, size, 0, &st, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "tensor \"a\\x0ab\\x01\\\"\": unknown dtype");
    free(img);
}

/* ---- files --------------------------------------------------------------------------- */

static void test_open_maps_file(void)
{
    const char *header = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}   ";
    size_t size;
    uint8_t *img = make_image(header, 8, &size);
    float values[2] = {1.5f, -3.0f};
    memcpy(img + size - 8, values, 8);
    char *path = write_temp("ok.safetensors", img, size);
    REQUIRE(path);
    ds_safetensors *st = NULL;
    ds_error err = {0};
    int rc = ds_safetensors_open(path, 2, &st, &err);
    REQUIRE(rc == DS_OK);
    CHECK_STR_EQ(st->path, path);
    CHECK(st->map != NULL && st->file_size == size);
    CHECK(st->header_size == strlen(header));
    const ds_tensor_view *v = tensor(st, "w");
    REQUIRE(v);
    CHECK(v->data == st->map + 8 + strlen(header));
    CHECK(f32_at(v->data, 0) == 1.5f && f32_at(v->data, 1) == -3.0f);
    CHECK(v->file_index == 2);
    ds_safetensors_close(st);

    uint8_t *hdr = NULL;
    uint64_t hdr_size = 0;
    REQUIRE(ds_safetensors_read_header(path, &hdr, &hdr_size, NULL, &err) == DS_OK);
    CHECK(hdr_size == strlen(header));
    CHECK(memcmp(hdr, header, hdr_size) == 0);
    free(hdr);
    free(img);
}

/* Through a descriptor the name is only a label: the file open before its path was replaced is
 * the one read, and the descriptor stays the caller's. */
static void test_open_fd_reads_the_descriptor(void)
{
    const char *header = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}       ";
    size_t size;
    uint8_t *img = make_image(header, 4, &size);
    float first = 2.5f, second = -7.0f;
    memcpy(img + size - 4, &first, 4);
    char *path = write_temp("fd.safetensors", img, size);
    REQUIRE(path);
    char name[256];
    snprintf(name, sizeof name, "%s", path);
    int fd = open(name, O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    memcpy(img + size - 4, &second, 4);
    char *other = write_temp("fd_other.safetensors", img, size);
    REQUIRE(other && rename(other, name) == 0);

    ds_safetensors *st = NULL;
    ds_error err;
    REQUIRE(ds_safetensors_open_fd(fd, name, 0, &st, &err) == DS_OK);
    CHECK_STR_EQ(st->path, name);
    const ds_tensor_view *v = tensor(st, "w");
    CHECK(v && f32_at(v->data, 0) == 2.5f);
    ds_safetensors_close(st);
    uint8_t *hdr = NULL;
    uint64_t hdr_size = 0, file_size = 0;
    CHECK(ds_safetensors_read_header_fd(fd, name, &hdr, &hdr_size, &file_size, &err) == DS_OK);
    CHECK(hdr_size == strlen(header) && file_size == size);
    free(hdr);
    CHECK(fcntl(fd, F_GETFD) >= 0);
    close(fd);
    /* By name, the replacement is what is read. */
    REQUIRE(ds_safetensors_open(name, 0, &st, &err) == DS_OK);
    v = tensor(st, "w");
    CHECK(v && f32_at(v->data, 0) == -7.0f);
    ds_safetensors_close(st);
    unlink(name);
    free(img);
}

static void test_open_errors(void)
{
    ds_safetensors *st = (ds_safetensors *)1;
    ds_error err = {0};
    char path[512];

    snprintf(path, sizeof path, "%s/missing.safetensors", tmpdir);
    CHECK(ds_safetensors_open(path, 0, &st, &err) == DS_ERR_NOT_FOUND);
    CHECK(st == NULL);
    CHECK_CONTAINS(err.message, path);
    CHECK_CONTAINS(err.message, strerror(ENOENT));

    CHECK(ds_safetensors_open(tmpdir, 0, &st, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "is a directory");

    char *empty = write_temp("empty.safetensors", NULL, 0);
    REQUIRE(empty);
    CHECK(ds_safetensors_open(empty, 0, &st, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "empty.safetensors: file is 0 bytes");

    snprintf(path, sizeof path, "%s/fifo.safetensors", tmpdir);
    REQUIRE(mkfifo(path, 0600) == 0);
    CHECK(ds_safetensors_open(path, 0, &st, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "not a regular file");
    unlink(path);

    uint8_t bad[16] = {9};
    char *trunc = write_temp("trunc.safetensors", bad, sizeof bad);
    REQUIRE(trunc);
    CHECK(ds_safetensors_open(trunc, 0, &st, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "trunc.safetensors: header length 9 runs past the end");
    uint8_t *hdr = (uint8_t *)1;
    uint64_t hdr_size = 1;
    CHECK(ds_safetensors_read_header(trunc, &hdr, &hdr_size, NULL, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(hdr == NULL && hdr_size == 0);
    CHECK_CONTAINS(err.message, "header length 9 runs past the end");

    /* read_header checks lengths only: a header that is not JSON still comes back. */
    size_t size;
    uint8_t *img = make_image("not json", 0, &size);
    char *notjson = write_temp("notjson.safetensors", img, size);
    REQUIRE(notjson);
    CHECK(ds_safetensors_read_header(notjson, &hdr, &hdr_size, NULL, &err) == DS_OK);
    CHECK(hdr_size == 8 && memcmp(hdr, "not json", 8) == 0);
    free(hdr);
    CHECK(ds_safetensors_open(notjson, 0, &st, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "must be a JSON object, found 'n'");
    free(img);

    if (geteuid() != 0) { /* root reads anything */
        char *secret = write_temp("secret.safetensors", bad, sizeof bad);
        REQUIRE(secret);
        chmod(secret, 0);
        CHECK(ds_safetensors_open(secret, 0, &st, &err) == DS_ERR_PERMISSION_DENIED);
        CHECK_CONTAINS(err.message, strerror(EACCES));
    }
    ds_safetensors_close(NULL);
}

static void remove_tmpdir(void)
{
    const char *names[] = {"ok.safetensors", "empty.safetensors", "trunc.safetensors",
                           "notjson.safetensors", "secret.safetensors"};
    char path[512];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", tmpdir, names[i]);
        unlink(path);
    }
    rmdir(tmpdir);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_reference_writer_file);
    RUN(test_reference_writer_empty_file);
    RUN(test_whitespace_and_field_order);
    RUN(test_header_order_not_offset_order);
    RUN(test_string_escapes);
    RUN(test_zero_size_tensors_share_offsets);
    RUN(test_limits_accepted);
    RUN(test_malformed_headers);
    RUN(test_bad_lengths);
    RUN(test_long_and_odd_names_in_messages);
    RUN(test_open_maps_file);
    RUN(test_open_fd_reads_the_descriptor);
    RUN(test_open_errors);
    remove_tmpdir();
    return test_summary();
}
