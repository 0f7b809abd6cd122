/* The Qwen-Image Blockwise ControlNet path against upstream's own output (tests/golden/
 * make_qwen_image_controlnet_golden.py): the 2-block DiT of the DiT golden with two 2-block
 * ControlNets (a: 16 conditioning channels, scale 1; b: the inpainting config, 17 channels,
 * scale 0.75), every weight regenerated bit for bit by tests/tools/seeded_weights.c, float32
 * and bfloat16 runs; then a batch of 2 sharing one conditioning, and the step's ControlNet input
 * checks.
 *
 * The models are built in memory (each class's declared tree, every view pointing at a seeded
 * buffer), as ds_model_load binds views into a file. The f32 weights (2.9 GB for the DiT,
 * 0.3 GB for the ControlNets) are converted to bf16 in place for the bf16 runs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/float_convert.h"
#include "core/safetensors.h"
#include "kernels/ops.h"
#include "models/qwen_image_controlnet.h"
#include "models/qwen_image_dit.h"
#include "golden_test.h"
#include "test.h"
#include "tools/golden_model.h"
#include "tools/seeded_weights.h"

#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"
#define DIT_SEED 2024
#define GOLDEN "golden/qwen_image_controlnet_2layers.safetensors"

typedef struct seeded_model {
    ds_loaded_model model; /* params bound to seeded buffers */
    int ready;             /* 1: f32 weights, 2: bf16 weights */
} seeded_model;

/* The script's two ControlNets. */
typedef struct controlnet_case {
    const char *key;    /* "a", "b": the golden tensors' suffix */
    uint64_t seed;
    const char *kwargs; /* the class's extra_kwargs */
    float scale;
    seeded_model net;
} controlnet_case;

static ds_backend *cpu;
static ds_safetensors *golden;
static seeded_model dit;
static controlnet_case cases[2] = {
    {.key = "a", .seed = 2025, .kwargs = "{\"num_layers\": 2}", .scale = 1.0f},
    {.key = "b", .seed = 2026, .kwargs = "{\"num_layers\": 2, \"additional_in_dim\": 4}",
     .scale = 0.75f},
};

static void free_model(seeded_model *sm)
{
    ds_golden_model_free(&sm->model);
    sm->ready = 0;
}

/* The class's tree for these kwargs; with `fill`, every tensor filled with its seeded values
 * (without, the tree alone: enough for checks that run before any compute). */
static int build_model(seeded_model *sm, const char *class_name, const char *kwargs,
                       uint64_t seed, int fill)
{
    ds_golden_model_spec spec = {
        .model_class = class_name,
        .kwargs_json = kwargs,
        .bounds = ds_golden_bounds_qwen_image_dit,
        .seed = seed,
        .declare_only = !fill,
    };
    memset(sm, 0, sizeof *sm);
    if (ds_golden_model_build(&spec, &sm->model) != 0)
        return 0;
    sm->ready = 1;
    return 1;
}

static void model_to_bf16(seeded_model *sm)
{
    ds_golden_model_to_bf16(&sm->model);
    sm->ready = 2;
}

static int golden_has(const char *name)
{
    return ds_state_dict_find(&golden->tensors, name) != NULL;
}

static ds_tensor golden_tensor(const char *name)
{
    return test_golden_tensor(cpu, golden, name);
}

/* The forward with ControlNet `c` on golden inputs of `dtype` ("" or "_bf16"); out allocated
 * here (the caller frees it). */
static int run_forward(const controlnet_case *c, const char *suffix, ds_tensor *out,
                       ds_error *err)
{
    char name[64];
    ds_step_context ctx = {.backend = cpu};
    snprintf(name, sizeof name, "latents%s", suffix);
    ds_tensor lat = golden_tensor(name);
    snprintf(name, sizeof name, "prompt_emb%s", suffix);
    ds_tensor emb = golden_tensor(name);
    snprintf(name, sizeof name, "conditioning_%s%s", c->key, suffix);
    ds_tensor cond = golden_tensor(name);
    ds_tensor t = golden_tensor("timestep");
    ds_qwen_image_dit_controlnet opt = {&c->net.model, &cond, c->scale};
    int rc = ds_tensor_alloc(cpu, lat.dtype, lat.ndim, lat.shape, out, err);
    if (rc != DS_OK)
        return rc;
    double start = test_now();
    rc = ds_qwen_image_dit_forward_controlnet(&dit.model, &ctx, &lat, &emb, NULL, &t, &opt, out,
                                              err);
    fprintf(stderr, "  forward with ControlNet %s (%s): %.2f s\n", c->key,
            ds_dtype_name(lat.dtype), test_now() - start);
    return rc;
}

/* ControlNet a in f32 through the entry point: upstream's result, and not the plain one. */
static void test_f32_golden_a(void)
{
    ds_error err;
    ds_tensor noise;
    REQUIRE(dit.ready == 1 && cases[0].net.ready == 1);
    int rc = run_forward(&cases[0], "", &noise, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    REQUIRE(rc == DS_OK);
    ds_tensor want = golden_tensor("noise_pred_a_f32");
    ds_tensor plain = golden_tensor("noise_pred_plain_f32");
    double rel = test_rel_l2(&noise, &want), moved = test_rel_l2(&noise, &plain);
    fprintf(stderr, "  a: f32 relative L2 error vs upstream: %.3e (vs no ControlNet: %.3e; "
            "upstream's own: %.3e)\n", rel, moved, test_rel_l2(&want, &plain));
    CHECK(rel < 1e-4);
    CHECK(moved > 1e-2);
    ds_tensor_free(&noise);
}

/* A golden tensor repeated along the batch: [2, ...] in malloc'd memory (*buf). */
static ds_tensor doubled(const char *name, void **buf)
{
    ds_tensor g = golden_tensor(name);
    size_t bytes = ds_tensor_nbytes(&g);
    *buf = malloc(2 * bytes);
    if (*buf) {
        memcpy(*buf, g.data, bytes);
        memcpy((char *)*buf + bytes, g.data, bytes);
    }
    g.shape[0] = 2;
    g.data = *buf;
    return g;
}

/* The CFG batch with one conditioning for both rows (torch broadcasts it in x + y): each half
 * is the batch-1 result. */
static void test_batch2_shared_conditioning(void)
{
    ds_error err;
    REQUIRE(dit.ready == 1 && cases[0].net.ready == 1);
    void *lat_buf, *emb_buf;
    ds_tensor lat = doubled("latents", &lat_buf), emb = doubled("prompt_emb", &emb_buf);
    ds_tensor cond = golden_tensor("conditioning_a"), t = golden_tensor("timestep"), noise;
    ds_qwen_image_dit_controlnet opt = {&cases[0].net.model, &cond, 1.0f};
    ds_step_context ctx = {.backend = cpu};
    int rc = lat_buf && emb_buf ? DS_OK : DS_ERR_RESOURCE_EXHAUSTED;
    if (rc == DS_OK)
        rc = ds_tensor_alloc(cpu, lat.dtype, lat.ndim, lat.shape, &noise, &err);
    if (rc != DS_OK) {
        free(lat_buf);
        free(emb_buf);
    }
    REQUIRE(rc == DS_OK);
    double start = test_now();
    rc = ds_qwen_image_dit_forward_controlnet(&dit.model, &ctx, &lat, &emb, NULL, &t, &opt,
                                              &noise, &err);
    fprintf(stderr, "  forward with ControlNet a (f32, batch 2): %.2f s\n", test_now() - start);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc == DS_OK) {
        ds_tensor want = golden_tensor("noise_pred_a_f32");
        ds_tensor second = noise;
        second.shape[0] = 1;
        second.data = (char *)noise.data + ds_tensor_nbytes(&want);
        noise.shape[0] = 1;
        double r0 = test_rel_l2(&noise, &want), r1 = test_rel_l2(&second, &want);
        noise.shape[0] = 2;
        fprintf(stderr, "  batch 2 vs upstream batch 1: %.3e, %.3e\n", r0, r1);
        CHECK(r0 < 1e-4 && r1 < 1e-4);
    }
    ds_tensor_free(&noise);
    free(lat_buf);
    free(emb_buf);
}

static int add_step_inputs(ds_step_io *in, const char *cond_name, const char *scale,
                           ds_error *err)
{
    int rc = ds_step_io_add_tensor(in, "latents", golden_tensor("latents"), NULL, err);
    if (rc == DS_OK)
        rc = ds_step_io_add_tensor(in, "prompt_emb", golden_tensor("prompt_emb"), NULL, err);
    if (rc == DS_OK)
        rc = ds_step_io_add_tensor(in, "timestep", golden_tensor("timestep"), NULL, err);
    if (rc == DS_OK && cond_name)
        rc = ds_step_io_add_tensor(in, "controlnet_conditioning", golden_tensor(cond_name), NULL,
                                   err);
    if (rc == DS_OK && scale)
        rc = ds_step_io_add_param(in, "controlnet_scale", scale, err);
    return rc;
}

/* The "forward" step with `controlnet` as the aux model of role "controlnet" (NULL: none).
 * On success *out holds the outputs (the caller frees them). */
static int run_step(const ds_loaded_model *controlnet, const char *cond_name, const char *scale,
                    ds_step_io *out, ds_error *err)
{
    const ds_model_step *step = ds_model_step_find(dit.model.cls->steps,
                                                   dit.model.cls->step_count, "forward");
    if (!step)
        return DS_ERR_NOT_FOUND;
    ds_step_aux_model aux = {"controlnet", controlnet};
    ds_step_context ctx = {.backend = cpu, .aux = controlnet ? &aux : NULL,
                           .aux_count = controlnet ? 1 : 0};
    ds_step_io in;
    ds_step_io_init(&in);
    ds_step_io_init(out);
    int rc = add_step_inputs(&in, cond_name, scale, err);
    if (rc == DS_OK)
        rc = step->run(&dit.model, &ctx, &in, out, err);
    ds_step_io_free(&in);
    return rc;
}

/* ControlNet b (the inpainting config, 17 channels) at scale 0.75 through the step. */
static void test_f32_golden_b_step(void)
{
    ds_error err;
    ds_step_io out;
    REQUIRE(dit.ready == 1 && cases[1].net.ready == 1);
    double start = test_now();
    int rc = run_step(&cases[1].net.model, "conditioning_b", "0.75", &out, &err);
    fprintf(stderr, "  step forward with ControlNet b (f32): %.2f s\n", test_now() - start);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    const ds_tensor *noise = ds_step_io_tensor(&out, "noise_pred");
    CHECK(rc != DS_OK || (noise && noise->dtype == DS_F32));
    if (rc == DS_OK && noise) {
        ds_tensor want = golden_tensor("noise_pred_b_f32");
        ds_tensor plain = golden_tensor("noise_pred_plain_f32");
        double rel = test_rel_l2(noise, &want), moved = test_rel_l2(noise, &plain);
        fprintf(stderr, "  b: f32 relative L2 error vs upstream: %.3e (vs no ControlNet: "
                "%.3e)\n", rel, moved);
        CHECK(rel < 1e-4);
        CHECK(moved > 1e-2);
    }
    ds_step_io_free(&out);
}

/* Every way the step's ControlNet inputs can be wrong fails before any compute. */
static void test_step_checks(void)
{
    ds_error err;
    ds_step_io out;
    seeded_model one_block;
    REQUIRE(dit.ready && cases[0].net.ready && cases[1].net.ready);
    const ds_loaded_model *a = &cases[0].net.model, *b = &cases[1].net.model;

    CHECK(run_step(a, NULL, NULL, &out, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"controlnet_conditioning\"");
    ds_step_io_free(&out);
    CHECK(run_step(NULL, "conditioning_a", NULL, &out, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"controlnet_conditioning\" given without");
    ds_step_io_free(&out);
    CHECK(run_step(NULL, NULL, "0.5", &out, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"controlnet_scale\"");
    ds_step_io_free(&out);
    /* 16 channels for the 17-channel (inpainting) ControlNet, and the other way round. */
    CHECK(run_step(b, "conditioning_a", NULL, &out, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"controlnet_conditioning\"");
    CHECK_CONTAINS(err.message, "17");
    ds_step_io_free(&out);
    CHECK(run_step(a, "conditioning_b", NULL, &out, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "[1, 16, 6, 8]");
    ds_step_io_free(&out);
    /* The conditioning's dtype follows the latents'. */
    CHECK(run_step(a, "conditioning_a_bf16", NULL, &out, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "f32");
    ds_step_io_free(&out);
    CHECK(run_step(a, "conditioning_a", "strong", &out, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"strong\"");
    ds_step_io_free(&out);
    /* A model of another class in the role. */
    CHECK(run_step(&dit.model, "conditioning_a", NULL, &out, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "QwenImageBlockWiseControlNet");
    ds_step_io_free(&out);
    /* Fewer ControlNet blocks than DiT blocks: upstream would index past its blocks. */
    REQUIRE(build_model(&one_block, DS_QWEN_IMAGE_CONTROLNET_CLASS, "{\"num_layers\": 1}", 0,
                        0));
    CHECK(run_step(&one_block.model, "conditioning_a", NULL, &out, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "1 blocks, fewer than the DiT's 2");
    ds_step_io_free(&out);
    free_model(&one_block);
}

static void test_bf16_golden(void)
{
    ds_error err;
    REQUIRE(dit.ready && cases[0].net.ready && cases[1].net.ready);
    double start = test_now();
    model_to_bf16(&dit);
    for (int i = 0; i < 2; i++)
        model_to_bf16(&cases[i].net);
    fprintf(stderr, "  weights to bf16: %.2f s\n", test_now() - start);
    for (int i = 0; i < 2; i++) {
        char name[64];
        ds_tensor noise;
        int rc = run_forward(&cases[i], "_bf16", &noise, &err);
        CHECK_MSG(rc == DS_OK, "%s", err.message);
        if (rc != DS_OK)
            continue;
        CHECK(noise.dtype == DS_BF16);
        snprintf(name, sizeof name, "noise_pred_%s_bf16", cases[i].key);
        ds_tensor want = golden_tensor(name);
        snprintf(name, sizeof name, "noise_pred_%s_f32", cases[i].key);
        ds_tensor want_f32 = golden_tensor(name);
        double rel = test_rel_l2(&noise, &want);
        fprintf(stderr, "  %s: bf16 relative L2 error vs upstream bf16: %.3e (vs upstream f32: "
                "%.3e, upstream bf16 vs f32: %.3e)\n", cases[i].key, rel,
                test_rel_l2(&noise, &want_f32), test_rel_l2(&want, &want_f32));
        CHECK(rel < 2e-2);
        ds_tensor_free(&noise);
    }
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
    if (!golden_has("noise_pred_a_f32") || !golden_has("conditioning_b_bf16")) {
        fprintf(stderr, "setup: %s lacks the expected tensors\n", path);
        return 1;
    }
    double start = test_now();
    if (!build_model(&dit, DIT_CLASS, "{\"num_layers\": 2}", DIT_SEED, 1))
        fprintf(stderr, "setup: could not build the seeded DiT\n");
    for (int i = 0; i < 2; i++)
        if (!build_model(&cases[i].net, DS_QWEN_IMAGE_CONTROLNET_CLASS, cases[i].kwargs,
                         cases[i].seed, 1))
            fprintf(stderr, "setup: could not build the seeded ControlNet %s\n", cases[i].key);
    fprintf(stderr, "  seeded f32 weights: %.2f s\n", test_now() - start);
    RUN(test_f32_golden_a);
    RUN(test_f32_golden_b_step);
    RUN(test_batch2_shared_conditioning);
    RUN(test_step_checks);
    RUN(test_bf16_golden);
    if (dit.ready)
        free_model(&dit);
    for (int i = 0; i < 2; i++)
        if (cases[i].net.ready)
            free_model(&cases[i].net);
    ds_safetensors_close(golden);
    ds_backend_destroy(cpu);
    return test_summary();
}
