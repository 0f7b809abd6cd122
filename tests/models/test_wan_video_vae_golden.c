/* The Wan video VAEs' untiled decode and encode against upstream's own classes: WanVideoVAE
 * (tests/golden/make_wan_video_vae_golden.py), then WanVideoVAE38 (make_wan_video_vae_golden.py 38,
 * the same cases at 16x: latents [1, 48, 3, 4, 6] to 9 frames of 64 x 96, the same video,
 * tiles 4 x 4, stride 2 x 2: 2 tiles across the width). Argument 0 or 1 picks one.
 * WanVideoVAE: the real config (127 M parameters), weights and
 * inputs regenerated bit for bit by tests/tools/seeded_weights.c, float32: 3 latent frames
 * decoded to 9 frames of 64 x 96 (the feature cache across latent frames, both temporal
 * upsamplers), 5 frames encoded to 2 latent frames (the first frame alone, then a chunk of 4
 * through both temporal downsamplers); both again tiled (tile 4 x 6, stride 2 x 3 in latent
 * units: 3 x 3 overlapping tiles blended). Also: the parameter tree, with upstream's converter
 * undone, hashes to the Wan2.1 VAE file's hash; the steps equal the direct calls; the input
 * checks; progress and cancellation. Both classes: decode and encode through a VRAM manager at
 * budgets 0, half the weights and unlimited are byte-identical to the calls without one, on
 * smaller inputs (2 latent frames of 2 x 3 and 1 x 2 — the first frame and one through the
 * feature cache —, 5 frames of 16 x 24 and 16 x 32): four more 9-frame 64 x 96 decodes would
 * take most of the test's time (under ASan, past its timeout), and the manager's streaming of
 * units does not depend on the frame size. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/model_hash.h"
#include "core/safetensors.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "models/wan_video_vae.h"
#include "golden_test.h"
#include "test.h"
#include "tools/golden_model.h"
#include "tools/seeded_weights.h"
#include "vram/vram_manager.h"

#define SEED 2027
#define TOLERANCE 1e-4

typedef int (*vae_call)(const ds_loaded_model *m, const ds_step_context *ctx,
                        const ds_wan_video_vae_tiling *tiling, const ds_tensor *in,
                        ds_tensor *out, ds_error *err);

/* One class (both run through ds_wan_video_vae_decode / _encode): its golden file, seeded
 * inputs, tree and the golden script's tiles; the inputs of the VRAM budget checks. */
typedef struct variant {
    const char *model_class, *golden, *latents_name, *video_name, *hash;
    int64_t latents_shape[5], video_shape[5];
    int64_t vram_latents_shape[5], vram_video_shape[5];
    size_t tree_count;
    ds_wan_video_vae_tiling tiles;
    uint64_t decode_tiles, encode_tiles;
} variant;

static const variant variants[] = {
    {"diffsynth.models.wan_video_vae.WanVideoVAE", "golden/wan_video_vae.safetensors",
     "wan_vae.latents", "wan_vae.video", "ccc42284ea13e1ad04693284c7a09be6",
     {1, 16, 3, 8, 12}, {1, 3, 5, 64, 96}, {1, 16, 2, 2, 3}, {1, 3, 5, 16, 24}, 194,
     {4, 6, 2, 3}, 9, 9},
    {"diffsynth.models.wan_video_vae.WanVideoVAE38", "golden/wan_video_vae38.safetensors",
     "wan_vae38.latents", "wan_vae38.video", "e1de6c02cdac79f8b739f4d3698cd216",
     {1, 48, 3, 4, 6}, {1, 3, 5, 64, 96}, {1, 48, 2, 1, 2}, {1, 3, 5, 16, 32}, 196,
     {4, 4, 2, 2}, 2, 2},
};

static const variant *var;
static ds_backend *cpu;
static ds_safetensors *golden;
static ds_loaded_model model;
static int model_ready;
static ds_tensor latents, video; /* the seeded inputs */
static const char *data_root;

static ds_tensor golden_tensor(const char *name)
{
    const ds_sd_entry *e = ds_state_dict_find(&golden->tensors, name);
    if (!e) {
        fprintf(stderr, "golden tensor %s missing\n", name);
        exit(1);
    }
    const ds_tensor_view *v = &e->tensor;
    return ds_tensor_wrap(cpu, v->dtype, v->ndim, v->shape, (void *)v->data);
}

/* A seeded input, as the golden script makes it. */
static int seeded(const char *name, double bound, const int64_t shape[5], ds_tensor *out)
{
    ds_error err;
    if (ds_tensor_alloc(cpu, DS_F32, 5, shape, out, &err) != DS_OK)
        return 0;
    ds_seeded_fill(name, SEED, bound, 0.0f, out->data, (size_t)ds_tensor_numel(out));
    return 1;
}

static int progress_calls;
static uint64_t progress_last, progress_total;

static void on_progress(void *user, const char *phase, uint64_t done, uint64_t total)
{
    (void)user;
    (void)phase;
    progress_calls++;
    progress_last = done;
    progress_total = total;
}

static int cancel_at(void *user)
{
    int *left = user;
    return (*left)-- <= 0;
}

static double run_case(int decode, const ds_wan_video_vae_tiling *tiling, const char *want,
                       ds_tensor *out)
{
    ds_error err;
    ds_step_context ctx = {.backend = cpu, .progress = on_progress};
    ds_tensor w = golden_tensor(want);
    if (ds_tensor_alloc(cpu, DS_F32, 5, w.shape, out, &err) != DS_OK)
        return -1;
    progress_calls = 0;
    double start = test_now();
    int rc = decode ? ds_wan_video_vae_decode(&model, &ctx, tiling, &latents, out, &err)
                    : ds_wan_video_vae_encode(&model, &ctx, tiling, &video, out, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc != DS_OK)
        return -1;
    double rel = test_rel_l2(out, &w);
    fprintf(stderr, "  %s -> %s: %.2f s, relative L2 error vs upstream %.3e\n",
            decode ? "decode" : "encode", want, test_now() - start, rel);
    return rel;
}

/* Upstream's config row hashes the original file's keys: the tree without "model.". */
static void test_tree_hash(void)
{
    ds_state_dict tree, raw;
    ds_error err;
    ds_state_dict_init(&tree);
    ds_state_dict_init(&raw);
    const ds_model_class *cls = ds_model_class_find(var->model_class);
    REQUIRE(cls);
    REQUIRE(ds_model_class_declare(cls, NULL, &tree, &err) == DS_OK);
    CHECK(tree.count == var->tree_count);
    for (size_t i = 0; i < tree.count; i++) {
        REQUIRE(strncmp(tree.entries[i].name, "model.", 6) == 0);
        ds_state_dict_put_tensor(&raw, tree.entries[i].name + 6, &tree.entries[i].tensor);
    }
    char hash[DS_MODEL_HASH_HEX];
    REQUIRE(ds_model_hash(&raw, hash) == DS_OK);
    CHECK_STR_EQ(hash, var->hash);
    ds_state_dict_free(&tree);
    ds_state_dict_free(&raw);
}

static void test_decode_f32(void)
{
    REQUIRE(model_ready);
    ds_tensor out;
    double rel = run_case(1, NULL, "decode_f32", &out);
    CHECK_MSG(rel >= 0 && rel < TOLERANCE, "relative L2 %.3e", rel);
    CHECK(progress_calls == 3 && progress_last == 3 && progress_total == 3);
    ds_tensor_free(&out);
}

static void test_decode_tiled_f32(void)
{
    REQUIRE(model_ready);
    ds_tensor out;
    double rel = run_case(1, &var->tiles, "decode_tiled_f32", &out);
    CHECK_MSG(rel >= 0 && rel < TOLERANCE, "relative L2 %.3e", rel);
    CHECK(progress_calls == (int)var->decode_tiles && progress_last == var->decode_tiles &&
          progress_total == var->decode_tiles);
    /* The blend differs from the untiled decode: the tiles really overlap. */
    ds_tensor untiled = golden_tensor("decode_f32");
    CHECK(test_rel_l2(&out, &untiled) > 10 * TOLERANCE);
    /* Tile by tile (the pipeline's decode units): byte-identical to the one call, with no
     * progress of its own. */
    ds_error err;
    ds_tensor by_tile = {0};
    ds_wan_video_vae_tiles *tiles = NULL;
    ds_step_context ctx = {.backend = cpu, .progress = on_progress};
    CHECK((uint64_t)ds_wan_video_vae_tile_count(&var->tiles, 1, latents.shape[3],
                                                latents.shape[4]) ==
          var->decode_tiles);
    REQUIRE(ds_tensor_alloc(cpu, DS_F32, 5, out.shape, &by_tile, &err) == DS_OK);
    int rc = ds_wan_video_vae_tiles_begin(&model, &ctx, &var->tiles, &latents, &by_tile, &tiles,
                                          &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc == DS_OK) {
        CHECK((uint64_t)ds_wan_video_vae_tiles_count(tiles) == var->decode_tiles);
        progress_calls = 0;
        for (int64_t i = 0; rc == DS_OK && i < ds_wan_video_vae_tiles_count(tiles); i++)
            rc = ds_wan_video_vae_tiles_next(tiles, &ctx, &err);
        CHECK_MSG(rc == DS_OK, "%s", err.message);
        CHECK(progress_calls == 0);
        CHECK(memcmp(by_tile.data, out.data, ds_tensor_nbytes(&out)) == 0);
        CHECK(ds_wan_video_vae_tiles_next(tiles, &ctx, &err) == DS_ERR_FAILED_PRECONDITION);
    }
    ds_wan_video_vae_tiles_free(tiles);
    ds_tensor_free(&by_tile);
    ds_tensor_free(&out);
}

static void test_encode_tiled_f32(void)
{
    REQUIRE(model_ready);
    ds_tensor out;
    double rel = run_case(0, &var->tiles, "encode_tiled_f32", &out);
    CHECK_MSG(rel >= 0 && rel < TOLERANCE, "relative L2 %.3e", rel);
    CHECK(progress_calls == (int)var->encode_tiles && progress_total == var->encode_tiles);
    ds_tensor_free(&out);
}

static void test_encode_f32(void)
{
    REQUIRE(model_ready);
    ds_tensor out;
    double rel = run_case(0, NULL, "encode_f32", &out);
    CHECK_MSG(rel >= 0 && rel < TOLERANCE, "relative L2 %.3e", rel);
    CHECK(progress_calls == 2 && progress_last == 2 && progress_total == 2);
    ds_tensor_free(&out);
}

/* The "encode" step: a named input, a new output equal to the direct call's; with
 * tiled=true the pipeline's 30 x 52 tiles cover this video in one tile, which blends to the
 * untiled result bit for bit. */
static void run_encode_step(const char *tiled, ds_tensor *copy)
{
    REQUIRE(model_ready);
    const ds_model_class *cls = ds_model_class_find(var->model_class);
    REQUIRE(cls);
    const ds_model_step *step = ds_model_step_find(cls->steps, cls->step_count, "encode");
    REQUIRE(step);
    ds_step_io in, out;
    ds_error err;
    ds_step_io_init(&in);
    ds_step_io_init(&out);
    REQUIRE(ds_step_io_add_tensor(&in, "video", video, NULL, &err) == DS_OK);
    if (tiled)
        REQUIRE(ds_step_io_add_param(&in, "tiled", tiled, &err) == DS_OK);
    ds_step_context ctx = {.backend = cpu};
    REQUIRE(step->run(&model, &ctx, &in, &out, &err) == DS_OK);
    const ds_tensor *got = ds_step_io_tensor(&out, "latents");
    ds_tensor w = golden_tensor("encode_f32");
    REQUIRE(got && ds_tensor_same_shape(got, &w));
    CHECK(test_rel_l2(got, &w) < TOLERANCE);
    REQUIRE(ds_tensor_alloc(cpu, DS_F32, 5, got->shape, copy, &err) == DS_OK);
    memcpy(copy->data, got->data, ds_tensor_nbytes(got));
    ds_step_io_free(&in);
    ds_step_io_free(&out);
}

static void test_step_matches_direct_call(void)
{
    REQUIRE(model_ready);
    ds_tensor untiled = {0}, tiled = {0};
    run_encode_step(NULL, &untiled);
    run_encode_step("true", &tiled);
    CHECK(untiled.data && tiled.data &&
          memcmp(untiled.data, tiled.data, ds_tensor_nbytes(&untiled)) == 0);
    ds_tensor_free(&untiled);
    ds_tensor_free(&tiled);
}

/* The VRAM checks' input, seeded as the golden input of that name but in the variant's vram
 * shape, and the call's result on it without a manager. */
static void vram_reference(int decode, ds_tensor *in, ds_tensor *ref)
{
    const int64_t *shape = decode ? var->vram_latents_shape : var->vram_video_shape;
    ds_error err;
    const int64_t f = var->video_shape[3] / var->latents_shape[3], z = var->latents_shape[1];
    const int64_t out_shape[5] = {
        1, decode ? 3 : z, decode ? 4 * (shape[2] - 1) + 1 : (shape[2] - 1) / 4 + 1,
        decode ? shape[3] * f : shape[3] / f, decode ? shape[4] * f : shape[4] / f};
    ds_step_context ctx = {.backend = cpu};
    REQUIRE(seeded(decode ? var->latents_name : var->video_name, decode ? 2.0 : 1.0, shape, in));
    REQUIRE(ds_tensor_alloc(cpu, DS_F32, 5, out_shape, ref, &err) == DS_OK);
    double start = test_now();
    int rc = decode ? ds_wan_video_vae_decode(&model, &ctx, NULL, in, ref, &err)
                    : ds_wan_video_vae_encode(&model, &ctx, NULL, in, ref, &err);
    CHECK_MSG(rc == DS_OK, "without a manager: %s", err.message);
    fprintf(stderr, "  %s without a manager: %.2f s\n", decode ? "decode" : "encode",
            test_now() - start);
}

/* Decode and encode with the weights streamed through a VRAM manager at budgets 0, half the
 * weights and unlimited: byte-identical to the call without one, the peak within the budget. */
static void run_vram_budgets(int decode)
{
    REQUIRE(model_ready);
    ds_error err;
    ds_tensor out = {0}, in = {0}, ref = {0};
    ds_step_context ctx = {.backend = cpu};
    vram_reference(decode, &in, &ref);
    vae_call call = decode ? ds_wan_video_vae_decode : ds_wan_video_vae_encode;
    REQUIRE(in.data && ref.data);
    REQUIRE(ds_tensor_alloc(cpu, DS_F32, 5, ref.shape, &out, &err) == DS_OK);
    size_t weights = 0;
    for (size_t i = 0; i < model.params.count; i++)
        weights += model.params.entries[i].tensor.nbytes;
    const size_t budgets[3] = {0, weights / 2, DS_VRAM_UNLIMITED};
    ds_vram_manager *mgr = NULL;
    REQUIRE(ds_vram_manager_create(cpu, 0, 2, &mgr, &err) == DS_OK);
    for (int i = 0; i < 3; i++) {
        REQUIRE(ds_vram_set_budget(mgr, budgets[i], &err) == DS_OK);
        ctx.vram = mgr;
        memset(out.data, 0, ds_tensor_nbytes(&out));
        double start = test_now();
        int rc = call(&model, &ctx, NULL, &in, &out, &err);
        CHECK_MSG(rc == DS_OK, "budget %zu: %s", budgets[i], err.message);
        CHECK_MSG(memcmp(out.data, ref.data, ds_tensor_nbytes(&ref)) == 0,
                  "budget %zu: not byte-identical", budgets[i]);
        ds_vram_stats st;
        ds_vram_stats_get(mgr, &st);
        if (i == 1)
            CHECK_MSG(st.peak_bytes <= budgets[i], "peak %zu of %zu", st.peak_bytes,
                      budgets[i]);
        CHECK(st.activation_bytes == 0);
        fprintf(stderr, "  %s, budget %zu: %.2f s, peak %zu bytes, loads %llu\n",
                decode ? "decode" : "encode", budgets[i], test_now() - start, st.peak_bytes,
                (unsigned long long)st.loads);
    }
    /* The model's units were adopted by this manager: take them back before it goes (as the
     * pool does when a model leaves), or the next manager's adoption reaches into freed memory. */
    if (model.release_hook) {
        model.release_hook(model.release_hook_ctx, &model);
        model.release_hook = NULL;
    }
    ds_vram_manager_destroy(mgr);
    ds_tensor_free(&out);
    ds_tensor_free(&in);
    ds_tensor_free(&ref);
}

static void test_vram_decode(void) { run_vram_budgets(1); }
static void test_vram_encode(void) { run_vram_budgets(0); }

static void test_input_checks(void)
{
    REQUIRE(model_ready);
    ds_error err;
    ds_step_context ctx = {.backend = cpu};
    ds_tensor four = {0}, out = {0};
    /* 4 frames: not 4k + 1. */
    REQUIRE(seeded("wan_vae.video", 1.0, (const int64_t[]){1, 3, 4, 64, 96}, &four));
    REQUIRE(ds_tensor_alloc(cpu, DS_F32, 5, (const int64_t[]){1, 16, 1, 8, 12}, &out, &err) ==
            DS_OK);
    CHECK(ds_wan_video_vae_encode(&model, &ctx, NULL, &four, &out, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "encode: input \"video\"");
    CHECK_CONTAINS(err.message, "4k + 1");
    /* A decode output of the wrong frame count. */
    CHECK(ds_wan_video_vae_decode(&model, &ctx, NULL, &latents, &four, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "decode: output \"video\"");
    CHECK_CONTAINS(err.message, "[1, 3, 9, 64, 96]");
    /* A stride past the tile. */
    static const ds_wan_video_vae_tiling bad = {4, 6, 5, 3};
    CHECK(ds_wan_video_vae_encode(&model, &ctx, &bad, &video, &out, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "encode: tile 4 x 6, stride 5 x 3");
    ds_tensor_free(&four);
    ds_tensor_free(&out);
}

static void test_cancelled(void)
{
    REQUIRE(model_ready);
    ds_error err;
    int left = 1;
    ds_step_context ctx = {.backend = cpu, .cancelled = cancel_at, .user = &left};
    ds_tensor out;
    REQUIRE(ds_tensor_alloc(cpu, DS_F32, 5, (const int64_t[]){1, 3, 9, 64, 96}, &out, &err) ==
            DS_OK);
    CHECK(ds_wan_video_vae_decode(&model, &ctx, NULL, &latents, &out, &err) ==
          DS_ERR_CANCELLED);
    CHECK_CONTAINS(err.message, "decode: cancelled before latent frame 1 of 3");
    ds_tensor_free(&out);
}

/* A model of a class other than the two: INVALID_ARGUMENT naming it. */
static void test_wrong_class(void)
{
    REQUIRE(model_ready);
    ds_error err;
    ds_step_context ctx = {.backend = cpu};
    ds_tensor out = {0};
    ds_loaded_model other = model;
    other.cls = ds_model_class_find("diffsynth.models.qwen_image_vae.QwenImageVAE");
    REQUIRE(other.cls);
    REQUIRE(ds_tensor_alloc(cpu, DS_F32, 5, golden_tensor("decode_f32").shape, &out, &err) ==
            DS_OK);
    CHECK(ds_wan_video_vae_decode(&other, &ctx, NULL, &latents, &out, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message,
                   "decode: the model is a diffsynth.models.qwen_image_vae.QwenImageVAE");
    ds_tensor_free(&out);
}

/* Every case of one class, on its golden file and its seeded model. */
static void run_variant(const variant *v)
{
    ds_error err;
    char path[1024];
    var = v;
    snprintf(path, sizeof path, "%s/%s", data_root, v->golden);
    if (ds_safetensors_open(path, 0, &golden, &err) != DS_OK) {
        CHECK_MSG(0, "%s", err.message);
        return;
    }
    fprintf(stderr, "%s\n", v->model_class);
    RUN(test_tree_hash);
    ds_golden_model_spec spec = {
        .model_class = v->model_class,
        .bounds = ds_golden_bounds_qwen_image_vae, /* the same rule: gammas, conv fan_in */
        .seed = SEED,
    };
    double start = test_now();
    model_ready = ds_golden_model_build(&spec, &model) == 0 &&
                  seeded(v->latents_name, 2.0, v->latents_shape, &latents) &&
                  seeded(v->video_name, 1.0, v->video_shape, &video);
    fprintf(stderr, "  seeded f32 weights and inputs: %.2f s\n", test_now() - start);
    RUN(test_decode_f32);
    RUN(test_encode_f32);
    RUN(test_decode_tiled_f32);
    RUN(test_encode_tiled_f32);
    RUN(test_step_matches_direct_call);
    RUN(test_vram_decode);
    RUN(test_vram_encode);
    RUN(test_wrong_class);
    if (v == &variants[0]) {
        RUN(test_input_checks);
        RUN(test_cancelled);
    }
    if (model_ready)
        ds_golden_model_free(&model);
    model_ready = 0;
    ds_tensor_free(&latents);
    ds_tensor_free(&video);
    ds_safetensors_close(golden);
    golden = NULL;
}

/* argv[1]: the class's index in variants (meson runs each as its own test); none: all. */
int main(int argc, char **argv)
{
    ds_error err;
    const char *root = getenv("DS_TEST_DATA");
    size_t count = sizeof variants / sizeof variants[0], first = 0, end = count;
    data_root = root ? root : "tests/data";
    if (argc > 1) {
        first = (size_t)strtoul(argv[1], NULL, 10);
        end = first + 1;
        if (first >= count) {
            fprintf(stderr, "no class %s (0..%zu)\n", argv[1], count - 1);
            return 1;
        }
    }
    if (ds_cpu_backend_create(0, &cpu, &err) != DS_OK) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    for (size_t i = first; i < end; i++)
        run_variant(&variants[i]);
    cpu->destroy(cpu);
    return test_summary();
}
