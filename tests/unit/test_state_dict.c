/* The ordered state dict: Python dict semantics (insertion order, in-place replace, update)
 * and tensor view declaration. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/state_dict.h"
#include "test.h"

static ds_tensor_view view1(int64_t n)
{
    ds_tensor_view v;
    ds_tensor_view_declare(&v, DS_F32, 1, &n);
    return v;
}

static void test_put_find_order(void)
{
    ds_state_dict sd;
    ds_state_dict_init(&sd);
    CHECK(ds_state_dict_find(&sd, "a") == NULL);
    ds_tensor_view a = view1(1), b = view1(2), c = view1(3), a2 = view1(9);
    CHECK(ds_state_dict_put_tensor(&sd, "a", &a) == DS_OK);
    CHECK(ds_state_dict_put_tensor(&sd, "b", &b) == DS_OK);
    CHECK(ds_state_dict_put_tensor(&sd, "c", &c) == DS_OK);
    /* Replacing keeps the original position, as d["a"] = ... does in Python. */
    CHECK(ds_state_dict_put_tensor(&sd, "a", &a2) == DS_OK);
    REQUIRE(sd.count == 3);
    CHECK_STR_EQ(sd.entries[0].name, "a");
    CHECK_STR_EQ(sd.entries[1].name, "b");
    CHECK_STR_EQ(sd.entries[2].name, "c");
    const ds_sd_entry *e = ds_state_dict_find(&sd, "a");
    REQUIRE(e);
    CHECK(e->tensor.shape[0] == 9 && e->dict == NULL);
    CHECK(ds_state_dict_find(&sd, "b")->tensor.shape[0] == 2);
    CHECK(ds_state_dict_find(&sd, "") == NULL);
    CHECK(ds_state_dict_find(&sd, "ab") == NULL);
    ds_state_dict_free(&sd);
    CHECK(sd.count == 0 && sd.entries == NULL);
}

static void test_many_entries(void)
{
    ds_state_dict sd;
    ds_state_dict_init(&sd);
    ds_tensor_view v = view1(4);
    char name[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof name, "blocks.%d.w", i);
        v.shape[0] = i;
        REQUIRE(ds_state_dict_put_tensor(&sd, name, &v) == DS_OK);
    }
    CHECK(sd.count == 5000);
    int bad = 0;
    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof name, "blocks.%d.w", i);
        const ds_sd_entry *e = ds_state_dict_find(&sd, name);
        bad += !e || e->tensor.shape[0] != i || strcmp(sd.entries[i].name, name) != 0;
    }
    CHECK(bad == 0);
    CHECK(ds_state_dict_tensor_count(&sd) == 5000);
    ds_state_dict_free(&sd);
}

static void test_update_is_dict_update(void)
{
    ds_state_dict dst, src;
    ds_state_dict_init(&dst);
    ds_state_dict_init(&src);
    ds_tensor_view v1 = view1(1), v2 = view1(2), v3 = view1(3);
    REQUIRE(ds_state_dict_put_tensor(&dst, "a", &v1) == DS_OK);
    REQUIRE(ds_state_dict_put_tensor(&dst, "x", &v1) == DS_OK);
    REQUIRE(ds_state_dict_put_tensor(&src, "b", &v2) == DS_OK);
    REQUIRE(ds_state_dict_put_tensor(&src, "a", &v3) == DS_OK);
    CHECK(ds_state_dict_update(&dst, &src) == DS_OK);
    /* {"a":1,"x":1}.update({"b":2,"a":3}) == {"a":3,"x":1,"b":2} */
    REQUIRE(dst.count == 3);
    CHECK_STR_EQ(dst.entries[0].name, "a");
    CHECK(dst.entries[0].tensor.shape[0] == 3);
    CHECK_STR_EQ(dst.entries[1].name, "x");
    CHECK_STR_EQ(dst.entries[2].name, "b");
    CHECK(src.count == 2);
    ds_state_dict_free(&dst);
    ds_state_dict_free(&src);
}

static void test_nested_copy(void)
{
    ds_state_dict sd, copy;
    ds_state_dict_init(&sd);
    ds_state_dict *child = ds_state_dict_new();
    REQUIRE(child);
    ds_tensor_view v = view1(5), w = view1(6);
    REQUIRE(ds_state_dict_put_tensor(child, "inner", &v) == DS_OK);
    REQUIRE(ds_state_dict_put_dict(&sd, "outer", child) == DS_OK);
    REQUIRE(ds_state_dict_put_tensor(&sd, "t", &w) == DS_OK);
    REQUIRE(ds_state_dict_copy(&copy, &sd) == DS_OK);
    const ds_sd_entry *e = ds_state_dict_find(&copy, "outer");
    REQUIRE(e && e->dict);
    CHECK(e->dict != child);
    CHECK(ds_state_dict_find(e->dict, "inner")->tensor.shape[0] == 5);
    CHECK(ds_state_dict_tensor_count(&copy) == 2);
    CHECK(ds_state_dict_parameter_count(&copy) == 11);
    /* The copy is independent: freeing the original leaves it intact. */
    ds_state_dict_free(&sd);
    CHECK(ds_state_dict_find(ds_state_dict_find(&copy, "outer")->dict, "inner") != NULL);
    /* A tensor replacing a nested dict (and back) keeps the position. */
    REQUIRE(ds_state_dict_put_tensor(&copy, "outer", &w) == DS_OK);
    CHECK(copy.entries[0].dict == NULL && copy.entries[0].tensor.shape[0] == 6);
    ds_state_dict *again = ds_state_dict_new();
    REQUIRE(again);
    REQUIRE(ds_state_dict_put_dict(&copy, "t", again) == DS_OK);
    CHECK(copy.count == 2 && copy.entries[1].dict == again);
    ds_state_dict_free(&copy);
}

static void test_declare(void)
{
    ds_tensor_view v;
    int64_t shape[3] = {3072, 64, 2};
    REQUIRE(ds_tensor_view_declare(&v, DS_BF16, 2, shape) == DS_OK);
    CHECK(v.ndim == 2 && v.shape[0] == 3072 && v.shape[1] == 64);
    CHECK(v.stride[0] == 64 && v.stride[1] == 1);
    CHECK(v.nbytes == 3072 * 64 * 2);
    CHECK(v.data == NULL && v.file_index == -1 && v.dtype == DS_BF16);
    CHECK(ds_tensor_view_numel(&v) == 3072 * 64);
    char buf[64];
    CHECK_STR_EQ(ds_shape_format(&v, buf, sizeof buf), "[3072, 64]");

    REQUIRE(ds_tensor_view_declare(&v, DS_F32, 0, NULL) == DS_OK);
    CHECK(v.ndim == 0 && v.nbytes == 4 && ds_tensor_view_numel(&v) == 1);
    CHECK_STR_EQ(ds_shape_format(&v, buf, sizeof buf), "[]");

    int64_t zero[2] = {0, 5};
    REQUIRE(ds_tensor_view_declare(&v, DS_F32, 2, zero) == DS_OK);
    CHECK(v.nbytes == 0);

    int64_t neg[2] = {4, -1};
    CHECK(ds_tensor_view_declare(&v, DS_F32, 2, neg) == DS_ERR_INVALID_ARGUMENT);
    int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    CHECK(ds_tensor_view_declare(&v, DS_F32, 9, nine) == DS_ERR_INVALID_ARGUMENT);
    CHECK(ds_tensor_view_declare(&v, DS_F32, -1, nine) == DS_ERR_INVALID_ARGUMENT);
    CHECK(ds_tensor_view_declare(&v, DS_F32, 8, nine) == DS_OK);
    /* 2^62 elements of 4 bytes overflow 64 bits of bytes; 2^32 * 2^32 overflows elements. */
    int64_t huge[1] = {INT64_C(1) << 62};
    CHECK(ds_tensor_view_declare(&v, DS_F32, 1, huge) == DS_ERR_INVALID_ARGUMENT);
    CHECK(ds_tensor_view_declare(&v, DS_U8, 1, huge) == DS_OK);
    int64_t wide[3] = {INT64_C(1) << 32, INT64_C(1) << 32, 2};
    CHECK(ds_tensor_view_declare(&v, DS_U8, 3, wide) == DS_ERR_INVALID_ARGUMENT);
}

static void test_contiguous(void)
{
    ds_tensor_view v;
    int64_t shape[3] = {2, 3, 4};
    REQUIRE(ds_tensor_view_declare(&v, DS_F32, 3, shape) == DS_OK);
    CHECK(ds_tensor_view_is_contiguous(&v));
    /* A transpose of the last two dims. */
    v.shape[1] = 4;
    v.shape[2] = 3;
    v.stride[1] = 1;
    v.stride[2] = 4;
    CHECK(!ds_tensor_view_is_contiguous(&v));
    /* Size-1 dims may carry any stride. */
    int64_t ones[3] = {1, 5, 1};
    REQUIRE(ds_tensor_view_declare(&v, DS_F32, 3, ones) == DS_OK);
    v.stride[0] = 999;
    v.stride[2] = 7;
    CHECK(ds_tensor_view_is_contiguous(&v));
    v.stride[1] = 2;
    CHECK(!ds_tensor_view_is_contiguous(&v));
}

int main(void)
{
    RUN(test_put_find_order);
    RUN(test_many_entries);
    RUN(test_update_is_dict_update);
    RUN(test_nested_copy);
    RUN(test_declare);
    RUN(test_contiguous);
    return test_summary();
}
