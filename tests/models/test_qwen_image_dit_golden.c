/* The Qwen-Image DiT forward against upstream's own output (tests/golden/
 * make_qwen_image_dit_golden.py): 2 blocks at full width, weights regenerated bit for bit by
 * tests/tools/seeded_weights.c, float32 and bfloat16 runs; then batch 2 (the CFG batch), a
 * padded prompt mask, the step's input checks, progress and cancellation.
 *
 * The model is built in memory (the class's declared tree, each view pointing at a seeded
 * buffer), as ds_model_load binds views into a file; the f32 weights are 2.9 GB and are
 * converted to bf16 in place for the bf16 run, so the peak stays near 3 GB. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/float_convert.h"
#include "core/safetensors.h"
#include "kernels/ops.h"
#include "models/qwen_image_dit.h"
#include "golden_test.h"
#include "test.h"
#include "tools/golden_model.h"
#include "tools/seeded_weights.h"

#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"
#define SEED 2024
#define GOLDEN "golden/qwen_image_dit_2layers.safetensors"

static ds_backend *cpu;
static ds_safetensors *golden;
static ds_loaded_model model;   /* params bound to the buffers below */
static int model_ready;         /* 1: f32 weights, 2: bf16 weights */
static ds_tensor noise_b1_f32;  /* the batch-1 f32 result, for the batch-2 check (owned) */

static void free_model(void)
{
    ds_golden_model_free(&model);
    model_ready = 0;
}

/* The 2-block tree, every tensor filled with its seeded f32 values. */
static int build_model(void)
{
    ds_golden_model_spec spec = {
        .model_class = DIT_CLASS,
        .kwargs_json = "{\"num_layers\": 2}",
        .bounds = ds_golden_bounds_qwen_image_dit,
        .seed = SEED,
    };
    if (ds_golden_model_build(&spec, &model) != 0)
        return 0;
    model_ready = 1;
    return 1;
}

static void model_to_bf16(void)
{
    ds_golden_model_to_bf16(&model);
    model_ready = 2;
}

static const ds_tensor_view *golden_view(const char *name)
{
    const ds_sd_entry *e = ds_state_dict_find(&golden->tensors, name);
    return e ? &e->tensor : NULL;
}

static ds_tensor golden_tensor(const char *name)
{
    const ds_tensor_view *v = golden_view(name);
    return ds_tensor_wrap(cpu, v->dtype, v->ndim, v->shape, (void *)v->data);
}

static test_progress progress;

/* Runs the forward on golden inputs; out is allocated here (caller frees its data). */
static int run_forward(const char *latents, const char *prompt, ds_tensor *out, ds_error *err)
{
    ds_step_context ctx = {.backend = cpu, .progress = test_on_forward, .user = &progress};
    ds_tensor lat = golden_tensor(latents), emb = golden_tensor(prompt);
    ds_tensor t = golden_tensor("timestep");
    int rc = ds_tensor_alloc(cpu, lat.dtype, lat.ndim, lat.shape, out, err);
    if (rc != DS_OK)
        return rc;
    double start = test_now();
    rc = ds_qwen_image_dit_forward(&model, &ctx, &lat, &emb, NULL, &t, out, err);
    fprintf(stderr, "  forward (%s): %.2f s\n", ds_dtype_name(lat.dtype), test_now() - start);
    return rc;
}

static void test_seeded_weights_match_python(void)
{
    /* Bit patterns printed by tests/golden/seeded_weights.py for seed 2024. */
    static const uint32_t img_in[3] = {0x3d8e384c, 0xbdbef93e, 0xbdfc50dc};
    static const uint32_t norm_q[3] = {0x3f882353, 0x3f69e7f6, 0x3f684f39};
    float v[3];
    ds_seeded_fill("img_in.weight", SEED, 1.0 / sqrt(64.0), 0.0f, v, 3);
    for (int i = 0; i < 3; i++)
        CHECK(ds__f32_bits(v[i]) == img_in[i]);
    ds_seeded_fill("transformer_blocks.1.attn.norm_q.weight", SEED, 0.1, 1.0f, v, 3);
    for (int i = 0; i < 3; i++)
        CHECK(ds__f32_bits(v[i]) == norm_q[i]);
}

static void test_f32_golden(void)
{
    ds_error err;
    REQUIRE(model_ready == 1);
    progress = (test_progress){0};
    int rc = run_forward("latents", "prompt_emb", &noise_b1_f32, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    REQUIRE(rc == DS_OK);
    ds_tensor want = golden_tensor("noise_pred_f32");
    double rel = test_rel_l2_at(&noise_b1_f32, 0, &want, 0, 0);
    fprintf(stderr, "  f32 relative L2 error vs upstream: %.3e\n", rel);
    CHECK(rel < 1e-4);
    CHECK(progress.calls == 2 && progress.last == 2 && progress.total == 2);
}

/* Fills one step input by duplicating a golden tensor along the batch. */
static int add_doubled(ds_step_io *in, const char *name, const char *golden_name, void **buf,
                       ds_error *err)
{
    ds_tensor g = golden_tensor(golden_name);
    size_t bytes = ds_tensor_nbytes(&g);
    *buf = malloc(2 * bytes);
    if (!*buf)
        return DS_ERR_RESOURCE_EXHAUSTED;
    memcpy(*buf, g.data, bytes);
    memcpy((char *)*buf + bytes, g.data, bytes);
    g.shape[0] = 2;
    g.data = *buf;
    return ds_step_io_add_tensor(in, name, g, NULL, err);
}

/* The CFG batch through the step interface: both halves equal the batch-1 result. */
static void test_batch2_step(void)
{
    ds_error err;
    REQUIRE(model_ready == 1 && noise_b1_f32.data);
    const ds_model_step *step = ds_model_step_find(model.cls->steps, model.cls->step_count,
                                                   "forward");
    REQUIRE(step);
    ds_step_io in, out;
    ds_step_io_init(&in);
    ds_step_io_init(&out);
    void *lat = NULL, *emb = NULL;
    int64_t mask_data[2 * 7];
    for (int i = 0; i < 14; i++)
        mask_data[i] = 1;
    double t_data[1] = {982.25};
    ds_tensor mask = ds_tensor_wrap(cpu, DS_I64, 2, (const int64_t[]){2, 7}, mask_data);
    ds_tensor t = ds_tensor_wrap(cpu, DS_F64, 1, (const int64_t[]){1}, t_data);
    int rc = add_doubled(&in, "latents", "latents", &lat, &err);
    if (rc == DS_OK)
        rc = add_doubled(&in, "prompt_emb", "prompt_emb", &emb, &err);
    if (rc == DS_OK)
        rc = ds_step_io_add_tensor(&in, "prompt_emb_mask", mask, NULL, &err);
    if (rc == DS_OK)
        rc = ds_step_io_add_tensor(&in, "timestep", t, NULL, &err);
    CHECK(rc == DS_OK);
    ds_step_context ctx = {.backend = cpu};
    double start = test_now();
    if (rc == DS_OK)
        rc = step->run(&model, &ctx, &in, &out, &err);
    fprintf(stderr, "  forward (f32, batch 2): %.2f s\n", test_now() - start);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    const ds_tensor *noise = ds_step_io_tensor(&out, "noise_pred");
    CHECK(noise && noise->ndim == 4 && noise->shape[0] == 2 && noise->dtype == DS_F32);
    if (rc == DS_OK && noise) {
        size_t half = ds_tensor_numel(&noise_b1_f32);
        double r0 = test_rel_l2_at(noise, 0, &noise_b1_f32, 0, 0);
        double r1 = test_rel_l2_at(noise, half, &noise_b1_f32, 0, 0);
        fprintf(stderr, "  batch 2 vs batch 1: %.3e, %.3e\n", r0, r1);
        CHECK(r0 < 1e-5 && r1 < 1e-5);
    }
    ds_step_io_free(&in);
    ds_step_io_free(&out);
    free(lat);
    free(emb);
}

/* A step run on golden inputs with one change; returns the status and the message. */
static int run_step_with(const char *rename_latents, int64_t latent_h, int64_t prompt_width,
                         ds_error *err)
{
    const ds_model_step *step = ds_model_step_find(model.cls->steps, model.cls->step_count,
                                                   "forward");
    if (!step)
        return DS_ERR_NOT_FOUND;
    ds_step_io in, out;
    ds_step_io_init(&in);
    ds_step_io_init(&out);
    ds_tensor lat = golden_tensor("latents"), emb = golden_tensor("prompt_emb");
    ds_tensor t = golden_tensor("timestep");
    lat.shape[2] = latent_h;   /* fewer rows of the same buffer: only the check looks */
    emb.shape[2] = prompt_width;
    int rc = ds_step_io_add_tensor(&in, rename_latents, lat, NULL, err);
    if (rc == DS_OK)
        rc = ds_step_io_add_tensor(&in, "prompt_emb", emb, NULL, err);
    if (rc == DS_OK)
        rc = ds_step_io_add_tensor(&in, "timestep", t, NULL, err);
    ds_step_context ctx = {.backend = cpu};
    if (rc == DS_OK)
        rc = step->run(&model, &ctx, &in, &out, err);
    ds_step_io_free(&in);
    ds_step_io_free(&out);
    return rc;
}

static void test_input_checks(void)
{
    ds_error err;
    REQUIRE(model_ready);
    CHECK(run_step_with("latent", 6, 3584, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"latent\"");
    CHECK(run_step_with("latents", 5, 3584, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"latents\"");
    CHECK_CONTAINS(err.message, "H and W even");
    CHECK(run_step_with("latents", 6, 3583, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"prompt_emb\"");
    CHECK_CONTAINS(err.message, "3584");
}

/* A masked text key must not reach any other token: masking the last prompt token gives the
 * result of the prompt without it (the other text tokens keep their RoPE positions). */
static void test_padding_mask(void)
{
    ds_error err;
    REQUIRE(model_ready == 1);
    ds_step_context ctx = {.backend = cpu};
    ds_tensor lat = golden_tensor("latents"), emb = golden_tensor("prompt_emb");
    ds_tensor t = golden_tensor("timestep"), masked, truncated;
    uint8_t mask_data[7] = {1, 1, 1, 1, 1, 1, 0};
    ds_tensor mask = ds_tensor_wrap(cpu, DS_U8, 2, (const int64_t[]){1, 7}, mask_data);
    ds_tensor emb6 = emb;
    emb6.shape[1] = 6;
    REQUIRE(ds_tensor_alloc(cpu, lat.dtype, lat.ndim, lat.shape, &masked, &err) == DS_OK);
    REQUIRE(ds_tensor_alloc(cpu, lat.dtype, lat.ndim, lat.shape, &truncated, &err) == DS_OK);
    int rc = ds_qwen_image_dit_forward(&model, &ctx, &lat, &emb, &mask, &t, &masked, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc == DS_OK)
        rc = ds_qwen_image_dit_forward(&model, &ctx, &lat, &emb6, NULL, &t, &truncated, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc == DS_OK) {
        double rel = test_rel_l2_at(&masked, 0, &truncated, 0, 0);
        double moved = test_rel_l2_at(&masked, 0, &noise_b1_f32, 0, 0);
        fprintf(stderr, "  masked vs truncated prompt: %.3e (vs unmasked: %.3e)\n", rel, moved);
        CHECK(rel < 1e-5);
        CHECK(moved > 1e-3);
    }
    ds_tensor_free(&masked);
    ds_tensor_free(&truncated);
}

static void test_cancelled(void)
{
    ds_error err;
    REQUIRE(model_ready);
    ds_step_context ctx = {.backend = cpu, .cancelled = test_always_cancelled};
    ds_tensor lat = golden_tensor("latents"), emb = golden_tensor("prompt_emb");
    ds_tensor t = golden_tensor("timestep"), out;
    REQUIRE(ds_tensor_alloc(cpu, lat.dtype, lat.ndim, lat.shape, &out, &err) == DS_OK);
    CHECK(ds_qwen_image_dit_forward(&model, &ctx, &lat, &emb, NULL, &t, &out, &err) ==
          DS_ERR_CANCELLED);
    CHECK_CONTAINS(err.message, "cancelled");
    ds_tensor_free(&out);
}

static void test_bf16_golden(void)
{
    ds_error err;
    REQUIRE(model_ready);
    double start = test_now();
    model_to_bf16();
    fprintf(stderr, "  weights to bf16: %.2f s\n", test_now() - start);
    ds_tensor noise;
    int rc = run_forward("latents_bf16", "prompt_emb_bf16", &noise, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    REQUIRE(rc == DS_OK);
    CHECK(noise.dtype == DS_BF16);
    ds_tensor want = golden_tensor("noise_pred_bf16"), want_f32 = golden_tensor("noise_pred_f32");
    double rel = test_rel_l2_at(&noise, 0, &want, 0, 0);
    fprintf(stderr, "  bf16 relative L2 error vs upstream bf16: %.3e (vs upstream f32: %.3e, "
            "upstream bf16 vs f32: %.3e)\n", rel, test_rel_l2_at(&noise, 0, &want_f32, 0, 0),
            test_rel_l2_at(&want, 0, &want_f32, 0, 0));
    CHECK(rel < 2e-2);
    ds_tensor_free(&noise);
}

int main(void)
{
    ds_error err;
    const char *root = getenv("DS_TEST_DATA");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", root ? root : "tests/data", GOLDEN);
    if (ds_cpu_backend_create(0, &cpu, &err) != DS_OK ||
        ds_safetensors_open(path, 0, &golden, &err) != DS_OK) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    RUN(test_seeded_weights_match_python);
    double start = test_now();
    if (!build_model())
        fprintf(stderr, "setup: could not build the seeded model\n");
    fprintf(stderr, "  seeded f32 weights: %.2f s\n", test_now() - start);
    RUN(test_f32_golden);
    RUN(test_batch2_step);
    RUN(test_padding_mask);
    RUN(test_input_checks);
    RUN(test_cancelled);
    RUN(test_bf16_golden);
    ds_tensor_free(&noise_b1_f32);
    if (model_ready)
        free_model();
    ds_safetensors_close(golden);
    ds_backend_destroy(cpu);
    return test_summary();
}
