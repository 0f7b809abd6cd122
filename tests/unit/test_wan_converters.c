/* The Wan state-dict converters on key lists: the expected outputs (names, order, which input
 * each comes from) are what upstream's Python functions return for the same inputs, and the
 * real Diffusers key list must convert to the native file's key list. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "converters/converter.h"
#include "core/model_hash.h"
#include "test.h"
#include "tools/keylist.h"

#define PREFIX "diffsynth.utils.state_dict_converters."
#define NATIVE PREFIX "wan_video_dit.WanVideoDiTStateDictConverter"
#define DIFFUSERS PREFIX "wan_video_dit.WanVideoDiTFromDiffusers"
#define VACE PREFIX "wan_video_vace.VaceWanModelDictConverter"

typedef struct out_entry {
    const char *name;
    int64_t from; /* 1-based position of the input entry the value comes from */
} out_entry;

/* Input i (0-based) is a vector of length i + 1, so an output's shape says where it came from. */
static void make_input(ds_state_dict *in, const char *const *names, size_t count)
{
    ds_state_dict_init(in);
    for (size_t i = 0; i < count; i++) {
        ds_tensor_view v;
        int64_t n = (int64_t)i + 1;
        REQUIRE(ds_tensor_view_declare(&v, DS_F32, 1, &n) == DS_OK);
        REQUIRE(ds_state_dict_put_tensor(in, names[i], &v) == DS_OK);
    }
}

static void check_convert(const char *converter, const char *const *names, size_t count,
                          const out_entry *expected, size_t expected_count)
{
    const ds_converter *conv = ds_converter_find(converter);
    REQUIRE(conv);
    CHECK(conv->rename_only == 1);
    ds_state_dict in, out;
    make_input(&in, names, count);
    ds_state_dict_init(&out);
    ds_error err;
    REQUIRE(conv->convert(&in, &out, &err) == DS_OK);
    CHECK_MSG(out.count == expected_count, "%s: %zu entries, expected %zu", converter, out.count,
              expected_count);
    for (size_t i = 0; i < out.count && i < expected_count; i++) {
        CHECK_STR_EQ(out.entries[i].name, expected[i].name);
        CHECK_MSG(out.entries[i].tensor.shape[0] == expected[i].from,
                  "%s: from %lld, expected %lld", expected[i].name,
                  (long long)out.entries[i].tensor.shape[0], (long long)expected[i].from);
    }
    ds_state_dict_free(&in);
    ds_state_dict_free(&out);
}

static const char *const mixed_names[] = {
    "model.blocks.0.self_attn.q.weight", "vace_blocks.0.after_proj.weight",
    "model.vace_blocks.1.x", "vacex", "xvace.y", "pose_patch_embedding.weight",
    "face_adapter.fuser_blocks.0.w", "face_adaptermore.w", "face_encoder",
    "motion_encoder.enc.0.w", "model.face_encoder.w", "model.model.head.w", "blocks.1.w",
    "model.blocks.1.w", "head.head.weight", "model.",
};
#define MIXED_COUNT (sizeof mixed_names / sizeof mixed_names[0])

/* python: WanVideoDiTStateDictConverter({n: i + 1 for i, n in enumerate(mixed_names)}) =
 * [('blocks.0.self_attn.q.weight', 1), ('vace_blocks.1.x', 3), ('xvace.y', 5),
 *  ('face_adaptermore.w', 8), ('face_encoder.w', 11), ('model.head.w', 12), ('blocks.1.w', 14),
 *  ('head.head.weight', 15), ('', 16)]
 * "vace" and the animate modules are tested before "model." is stripped, the strip happens
 * once, and a later name that lands on an earlier one replaces its value in place. */
static void test_native(void)
{
    static const out_entry expected[] = {
        {"blocks.0.self_attn.q.weight", 1}, {"vace_blocks.1.x", 3}, {"xvace.y", 5},
        {"face_adaptermore.w", 8}, {"face_encoder.w", 11}, {"model.head.w", 12},
        {"blocks.1.w", 14}, {"head.head.weight", 15}, {"", 16},
    };
    check_convert(NATIVE, mixed_names, MIXED_COUNT, expected,
                  sizeof expected / sizeof expected[0]);
}

/* python: VaceWanModelDictConverter(same) =
 * [('vace_blocks.0.after_proj.weight', 2), ('vacex', 4)] */
static void test_vace(void)
{
    static const out_entry expected[] = {{"vace_blocks.0.after_proj.weight", 2}, {"vacex", 4}};
    check_convert(VACE, mixed_names, MIXED_COUNT, expected, sizeof expected / sizeof expected[0]);
}

/* python: WanVideoDiTFromDiffusers({n: i + 1 for i, n in enumerate(names)}) =
 * [('blocks.7.self_attn.q.weight', 1), ('blocks.0.cross_attn.k_img.bias', 2),
 *  ('blocks.x.ffn.2.bias', 3), ('blocks..norm3.weight', 4), ('blocks.12.modulation', 5),
 *  ('head.modulation', 6), ('head.head.weight', 10), ('img_emb.proj.4.bias', 11),
 *  ('time_projection.1.bias', 14), ('blocks.04.norm3.bias', 15)]
 * The block index is any second component, copied as written; a table name under another
 * first component ("other.5...") or with more components is dropped. */
static void test_diffusers_names(void)
{
    static const char *const names[] = {
        "blocks.7.attn1.to_q.weight", "blocks.0.attn2.add_k_proj.bias",
        "blocks.x.ffn.net.2.bias", "blocks..norm2.weight", "blocks.12.scale_shift_table",
        "scale_shift_table", "rope.freqs", "blocks.3.unknown", "foo", "proj_out.weight",
        "condition_embedder.image_embedder.norm2.bias", "other.5.attn1.to_q.weight",
        "blocks.4.attn1.to_q.weight.extra", "condition_embedder.time_proj.bias",
        "blocks.04.norm2.bias", "x.0",
    };
    static const out_entry expected[] = {
        {"blocks.7.self_attn.q.weight", 1}, {"blocks.0.cross_attn.k_img.bias", 2},
        {"blocks.x.ffn.2.bias", 3}, {"blocks..norm3.weight", 4}, {"blocks.12.modulation", 5},
        {"head.modulation", 6}, {"head.head.weight", 10}, {"img_emb.proj.4.bias", 11},
        {"time_projection.1.bias", 14}, {"blocks.04.norm3.bias", 15},
    };
    check_convert(DIFFUSERS, names, sizeof names / sizeof names[0], expected,
                  sizeof expected / sizeof expected[0]);
}

/* Nested dicts (from .pth checkpoints) are carried over whole under the new name. */
static void test_nested_dict_kept(void)
{
    const ds_converter *conv = ds_converter_find(NATIVE);
    REQUIRE(conv);
    ds_state_dict in, out;
    ds_state_dict_init(&in);
    ds_state_dict_init(&out);
    ds_state_dict *child = ds_state_dict_new();
    REQUIRE(child);
    ds_tensor_view v;
    int64_t n = 3;
    REQUIRE(ds_tensor_view_declare(&v, DS_F32, 1, &n) == DS_OK);
    REQUIRE(ds_state_dict_put_tensor(child, "inner", &v) == DS_OK);
    REQUIRE(ds_state_dict_put_dict(&in, "model.extra", child) == DS_OK);
    ds_error err;
    REQUIRE(conv->convert(&in, &out, &err) == DS_OK);
    REQUIRE(out.count == 1);
    CHECK_STR_EQ(out.entries[0].name, "extra");
    REQUIRE(out.entries[0].dict && out.entries[0].dict->count == 1);
    CHECK(out.entries[0].dict->entries[0].tensor.shape[0] == 3);
    ds_state_dict_free(&in);
    ds_state_dict_free(&out);
}

static int load(const char *stem, ds_state_dict *sd)
{
    const char *root = getenv("DS_TEST_DATA");
    char path[512];
    snprintf(path, sizeof path, "%s/keylists/%s.json", root ? root : "tests/data", stem);
    ds_state_dict_init(sd);
    ds_error err;
    int rc = ds_keylist_load(path, DS_F32, sd, &err);
    if (rc != DS_OK)
        fprintf(stderr, "%s\n", err.message);
    return rc;
}

/* diffusers' own WanTransformer3DModel key list at the 1.3B config, converted, is the native
 * Wan2.1-T2V-1.3B file's key list: the same names with the same shapes, and so upstream's
 * hash of that file. */
static void test_diffusers_1_3b_is_native(void)
{
    ds_state_dict diffusers, native, out;
    REQUIRE(load("wan2.1_t2v_1.3b_diffusers", &diffusers) == DS_OK);
    REQUIRE(load("wan2.1_t2v_1.3b", &native) == DS_OK);
    ds_state_dict_init(&out);
    ds_error err;
    REQUIRE(ds_converter_find(DIFFUSERS)->convert(&diffusers, &out, &err) == DS_OK);
    CHECK(out.count == 825 && native.count == 825);
    size_t bad = 0;
    for (size_t i = 0; i < out.count; i++) {
        const ds_sd_entry *o = &out.entries[i];
        const ds_sd_entry *n = ds_state_dict_find(&native, o->name);
        int ok = n && n->tensor.ndim == o->tensor.ndim;
        for (int d = 0; ok && d < n->tensor.ndim; d++)
            ok = n->tensor.shape[d] == o->tensor.shape[d];
        if (!ok && bad++ < 5)
            fprintf(stderr, "  converted %s not in the native list with that shape\n", o->name);
    }
    CHECK(bad == 0);
    char hash[DS_MODEL_HASH_HEX];
    REQUIRE(ds_model_hash(&diffusers, hash) == DS_OK);
    CHECK_STR_EQ(hash, "b0a133b5687c7d054175e5bfa66ef5fd");
    REQUIRE(ds_model_hash(&out, hash) == DS_OK);
    CHECK_STR_EQ(hash, "9269f8db9040a9d860eaca435be61814");
    /* The native file needs no converter, and the native converter leaves it alone. */
    ds_state_dict again;
    ds_state_dict_init(&again);
    REQUIRE(ds_converter_find(NATIVE)->convert(&native, &again, &err) == DS_OK);
    REQUIRE(ds_model_hash(&again, hash) == DS_OK);
    CHECK_STR_EQ(hash, "9269f8db9040a9d860eaca435be61814");
    ds_state_dict_free(&again);
    ds_state_dict_free(&diffusers);
    ds_state_dict_free(&native);
    ds_state_dict_free(&out);
}

static void test_registry(void)
{
    const char *const names[] = {NATIVE, DIFFUSERS, VACE};
    for (size_t i = 0; i < 3; i++) {
        const ds_converter *c = ds_converter_find(names[i]);
        REQUIRE(c);
        CHECK_STR_EQ(c->name, names[i]);
    }
    CHECK(ds_converter_find("WanVideoDiTStateDictConverter") == NULL);
    CHECK(ds_converter_find(PREFIX "wan_video_dit.WanVideoDiTFromDiffusersX") == NULL);
}

int main(void)
{
    RUN(test_registry);
    RUN(test_native);
    RUN(test_vace);
    RUN(test_diffusers_names);
    RUN(test_nested_dict_kept);
    RUN(test_diffusers_1_3b_is_native);
    return test_summary();
}
