/* The whole Qwen-Image pipeline against upstream's own QwenImagePipeline.__call__
 * (tests/golden/make_qwen_image_pipeline_golden.py): reduced seeded models (text encoder cut to
 * 1 layer, DiT to 1 block, the real VAE), the real tokenizer, float32; text-to-image with CFG
 * at a size the pipeline rounds up, without CFG, and image-to-image at strength 0.6. Then the
 * unit sequence and its progress, cancellation, and the parameter and model checks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "core/safetensors.h"
#include "kernels/ops.h"
#include "pipeline_golden.h"
#include "pipelines/qwen_image.h"
#include "test.h"
#include "tools/golden_model.h"

#define GOLDEN "golden/qwen_image_pipeline.safetensors"
#define TEXT_ENCODER_CLASS "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder"
#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"
#define VAE_CLASS "diffsynth.models.qwen_image_vae.QwenImageVAE"
#define LM "model.language_model."
#define PROMPT "A red fox in the snow"
/* The generator scripts' seeds. */
#define TEXT_ENCODER_SEED 2025
#define DIT_SEED 2024
#define VAE_SEED 2027
/* Upstream's float32 pipeline vs ours: the budget for the final latents. */
#define LATENT_BUDGET 1e-3

static ds_backend *cpu;
static ds_safetensors *golden;
static ds_loaded_model text_encoder, dit, vae;
static int models_ready;
static char tokenizer_dir[1024];

static const ds_tensor_view *golden_view(const char *name)
{
    return test_golden_view(golden, name);
}

static int keep_text_layer0(const char *name, void *arg)
{
    (void)arg;
    if (strncmp(name, LM, strlen(LM)) != 0)
        return 0;
    const char *rest = name + strlen(LM);
    return strncmp(rest, "layers.", 7) != 0 || atoi(rest + 7) < 1;
}

static int keep_block0(const char *name, void *arg)
{
    (void)arg;
    return strncmp(name, "transformer_blocks.", 19) != 0 || atoi(name + 19) < 1;
}

static int build_models(void)
{
    const ds_tensor_view *ids = golden_view("used_token_ids");
    if (!ids || ids->dtype != DS_I64 || ids->ndim != 1) {
        fprintf(stderr, "setup: the golden file has no used_token_ids\n");
        return 0;
    }
    ds_golden_model_spec te = {
        .model_class = TEXT_ENCODER_CLASS,
        .keep = keep_text_layer0,
        .bounds = ds_golden_bounds_qwen_image_text_encoder,
        .seed = TEXT_ENCODER_SEED,
        .sparse_name = LM "embed_tokens.weight",
        .sparse_rows = (const int64_t *)ids->data,
        .sparse_row_count = (size_t)ids->shape[0],
    };
    ds_golden_model_spec d = {
        .model_class = DIT_CLASS,
        .kwargs_json = "{\"num_layers\": 1}",
        .keep = keep_block0,
        .bounds = ds_golden_bounds_qwen_image_dit,
        .seed = DIT_SEED,
    };
    ds_golden_model_spec v = {
        .model_class = VAE_CLASS,
        .bounds = ds_golden_bounds_qwen_image_vae,
        .seed = VAE_SEED,
    };
    if (ds_golden_model_build(&te, &text_encoder) != 0 || ds_golden_model_build(&d, &dit) != 0 ||
        ds_golden_model_build(&v, &vae) != 0)
        return 0;
    models_ready = 1;
    return 1;
}

static ds_qwen_image_models models(void)
{
    return (ds_qwen_image_models){.text_encoder = &text_encoder, .dit = &dit, .vae = &vae};
}

static ds_qwen_image_params base_params(void)
{
    ds_qwen_image_params p;
    ds_qwen_image_params_default(&p);
    p.prompt = PROMPT;
    p.negative_prompt = "";
    p.tokenizer = tokenizer_dir;
    p.dtype = DS_F32;
    return p;
}

/* Runs a pipeline to the end; returns the last advance's status. */
static int run_all(ds_qwen_image_pipeline *pipe, test_progress_log *log, ds_error *err)
{
    ds_step_context ctx = test_log_context(cpu, log);
    int rc;
    while ((rc = ds_qwen_image_pipeline_advance(pipe, &ctx, err)) == 1)
        ;
    return rc;
}

/* Cases run so far: each dump gets its own name, some cases share golden tensors. */
static int dumped;

static void check_case(const char *name, ds_qwen_image_params params)
{
    char key[64];
    ds_error err;
    ds_qwen_image_models m = models();
    ds_qwen_image_pipeline *pipe = NULL;
    test_progress_log log = {0};
    REQUIRE(models_ready);
    dumped++;
    int rc = ds_qwen_image_pipeline_new(&m, &params, &pipe, &err);
    CHECK_MSG(rc == DS_OK, "%s: %s", name, err.message);
    if (rc != DS_OK)
        return;
    rc = run_all(pipe, &log, &err);
    CHECK_MSG(rc == 0, "%s: %s", name, err.message);
    const ds_tensor *latents = ds_qwen_image_pipeline_latents(pipe);
    const ds_tensor *image = ds_qwen_image_pipeline_image(pipe);
    snprintf(key, sizeof key, "%s_latents", name);
    const ds_tensor_view *want_latents = golden_view(key);
    snprintf(key, sizeof key, "%s_image", name);
    const ds_tensor_view *want_image = golden_view(key);
    REQUIRE(latents && image && want_latents && want_image);
    CHECK(latents->ndim == 4 && latents->shape[2] == want_latents->shape[2] &&
          latents->shape[3] == want_latents->shape[3]);
    CHECK(image->shape[0] == want_image->shape[0] && image->shape[1] == want_image->shape[1]);
    int max_diff;
    double rel = test_pipeline_outputs("qwen_image", dumped, name, cpu, latents, want_latents,
                                       "image", image, want_image, 1, LATENT_BUDGET, &max_diff);
    CHECK(rel < LATENT_BUDGET);
    /* The truncating uint8 cast turns a 1e-6 difference into one level now and then. */
    CHECK(max_diff <= 2);
    ds_qwen_image_pipeline_free(pipe);
}

static void test_text_to_image_cfg(void)
{
    ds_qwen_image_params p = base_params();
    p.seed = 42;
    p.steps = 3;
    p.height = 50; /* rounded up to 64 */
    p.width = 80;
    check_case("t2i", p);
}

static void test_text_to_image_no_cfg(void)
{
    ds_qwen_image_params p = base_params();
    p.seed = 1;
    p.steps = 2;
    p.cfg_scale = 1.0;
    p.height = p.width = 32;
    check_case("nocfg", p);
}

static void test_image_to_image(void)
{
    const ds_tensor_view *v = golden_view("i2i_input_image");
    REQUIRE(v);
    ds_tensor image = ds_tensor_wrap(cpu, DS_U8, 3, v->shape, (void *)v->data);
    ds_qwen_image_params p = base_params();
    p.seed = 0;
    p.steps = 3;
    p.height = 32;
    p.width = 48;
    p.input_image = &image;
    p.denoising_strength = 0.6;
    check_case("i2i", p);
}

/* The given noise replaces the seeded one: upstream's noise for t2i gives upstream's result. */
static void test_initial_noise(void)
{
    const ds_tensor_view *v = golden_view("nocfg_noise");
    REQUIRE(v);
    ds_tensor noise = ds_tensor_wrap(cpu, DS_F32, 4, v->shape, (void *)v->data);
    ds_qwen_image_params p = base_params();
    p.seed = 12345; /* ignored */
    p.steps = 2;
    p.cfg_scale = 1.0;
    p.height = p.width = 32;
    p.initial_noise = &noise;
    check_case("nocfg", p);
}

static void test_units_and_progress(void)
{
    ds_error err;
    ds_qwen_image_models m = models();
    ds_qwen_image_params p = base_params();
    p.steps = 2;
    p.height = p.width = 16;
    ds_qwen_image_pipeline *pipe;
    test_progress_log log = {0};
    REQUIRE(ds_qwen_image_pipeline_new(&m, &p, &pipe, &err) == DS_OK);
    uint64_t done, total;
    ds_qwen_image_pipeline_position(pipe, &done, &total);
    CHECK(done == 0 && total == 4);
    ds_step_context ctx = test_log_context(cpu, &log);
    CHECK(ds_qwen_image_pipeline_advance(pipe, &ctx, &err) == 1); /* encode */
    CHECK(ds_qwen_image_pipeline_latents(pipe) == NULL);
    CHECK(ds_qwen_image_pipeline_advance(pipe, &ctx, &err) == 1); /* step 1 */
    CHECK(ds_qwen_image_pipeline_advance(pipe, &ctx, &err) == 1); /* step 2 */
    CHECK(ds_qwen_image_pipeline_advance(pipe, &ctx, &err) == 0); /* decode */
    ds_qwen_image_pipeline_position(pipe, &done, &total);
    CHECK(done == 4);
    CHECK(ds_qwen_image_pipeline_advance(pipe, &ctx, &err) == DS_ERR_FAILED_PRECONDITION);
    /* encode: 0/2 (start), 1/2 prompt, 2/2 negative prompt; denoise 1/2, 2/2; decode 0/1, 1/1 */
    static const char *const phases[] = {"encode", "encode", "encode", "denoise", "denoise",
                                         "decode", "decode"};
    static const uint64_t dones[] = {0, 1, 2, 1, 2, 0, 1};
    CHECK(log.count == 7);
    for (int i = 0; i < 7 && i < log.count; i++) {
        CHECK_STR_EQ(log.phases[i], phases[i]);
        CHECK(log.done[i] == dones[i]);
    }
    int h, w;
    ds_qwen_image_pipeline_size(pipe, &h, &w);
    CHECK(h == 16 && w == 16 && ds_qwen_image_pipeline_steps(pipe) == 2);
    const ds_tensor *image = ds_qwen_image_pipeline_image(pipe);
    CHECK(image && image->dtype == DS_U8 && image->shape[0] == 16 && image->shape[2] == 3);
    ds_qwen_image_pipeline_free(pipe);
}

static void test_cancel(void)
{
    ds_error err;
    ds_qwen_image_models m = models();
    ds_qwen_image_params p = base_params();
    p.steps = 3;
    p.height = p.width = 16;
    ds_qwen_image_pipeline *pipe;
    test_progress_log log = {.cancel_after = 4}; /* after the first denoising step */
    REQUIRE(ds_qwen_image_pipeline_new(&m, &p, &pipe, &err) == DS_OK);
    CHECK(run_all(pipe, &log, &err) == DS_ERR_CANCELLED);
    CHECK(ds_qwen_image_pipeline_latents(pipe) == NULL);
    ds_step_context ctx = {.backend = cpu};
    CHECK(ds_qwen_image_pipeline_advance(pipe, &ctx, &err) == DS_ERR_FAILED_PRECONDITION);
    ds_qwen_image_pipeline_free(pipe);
}

static void expect_invalid(ds_qwen_image_models m, ds_qwen_image_params p, int code,
                           const char *needle)
{
    ds_error err;
    ds_qwen_image_pipeline *pipe = NULL;
    int rc = ds_qwen_image_pipeline_new(&m, &p, &pipe, &err);
    CHECK_MSG(rc == code, "expected %d, got %d for %s", code, rc, needle);
    if (rc != DS_OK)
        CHECK_CONTAINS(err.message, needle);
    else
        ds_qwen_image_pipeline_free(pipe);
}

static void test_checks(void)
{
    ds_qwen_image_models m = models();
    ds_qwen_image_params p = base_params();
    p.steps = 0;
    expect_invalid(m, p, DS_ERR_INVALID_ARGUMENT, "steps is 0, expected 1..");
    p = base_params();
    p.steps = 1;
    expect_invalid(m, p, DS_ERR_INVALID_ARGUMENT, "1 step at denoising_strength 1 gives NaN");
    p = base_params();
    p.height = 0;
    expect_invalid(m, p, DS_ERR_INVALID_ARGUMENT, "the size is 0 x 1328");
    p = base_params();
    p.denoising_strength = 0.5;
    expect_invalid(m, p, DS_ERR_INVALID_ARGUMENT, "needs an input_image");
    p = base_params();
    p.denoising_strength = 1.5;
    expect_invalid(m, p, DS_ERR_INVALID_ARGUMENT, "denoising_strength is 1.5");
    p = base_params();
    p.cfg_scale = NAN;
    expect_invalid(m, p, DS_ERR_INVALID_ARGUMENT, "cfg_scale");
    p = base_params();
    p.dtype = DS_F16;
    expect_invalid(m, p, DS_ERR_INVALID_ARGUMENT, "expected bf16 or f32");
    p = base_params();
    uint8_t pixels[8 * 8 * 3] = {0};
    ds_tensor small = ds_tensor_wrap(cpu, DS_U8, 3, (const int64_t[]){8, 8, 3}, pixels);
    p.height = p.width = 32;
    p.input_image = &small;
    expect_invalid(m, p, DS_ERR_INVALID_ARGUMENT, "input_image is [8, 8, 3] u8, expected [32, 32, 3]");
    p = base_params();
    p.controlnet_image = &small;
    expect_invalid(m, p, DS_ERR_INVALID_ARGUMENT, "needs a controlnet model");
    p = base_params();
    float noise[4];
    ds_tensor bad_noise = ds_tensor_wrap(cpu, DS_F32, 1, (const int64_t[]){4}, noise);
    p.initial_noise = &bad_noise;
    expect_invalid(m, p, DS_ERR_INVALID_ARGUMENT, "initial_noise is [4] f32, expected [1, 16, 166, 166]");

    p = base_params();
    ds_qwen_image_models swapped = {.text_encoder = &text_encoder, .dit = &vae, .vae = &vae};
    expect_invalid(swapped, p, DS_ERR_INVALID_ARGUMENT, "the dit model is a");
    ds_qwen_image_models missing = {.text_encoder = &text_encoder, .dit = &dit};
    expect_invalid(missing, p, DS_ERR_INVALID_ARGUMENT, "needs a vae model");
}

int main(void)
{
    ds_error err;
    char path[1024];
    test_data_path(path, sizeof path, GOLDEN);
    test_data_path(tokenizer_dir, sizeof tokenizer_dir, "qwen_tokenizer");
    if (ds_cpu_backend_create(0, &cpu, &err) != DS_OK ||
        ds_safetensors_open(path, 0, &golden, &err) != DS_OK) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    if (!build_models())
        fprintf(stderr, "setup: could not build the seeded models\n");
    RUN(test_text_to_image_cfg);
    RUN(test_text_to_image_no_cfg);
    RUN(test_image_to_image);
    RUN(test_initial_noise);
    RUN(test_units_and_progress);
    RUN(test_cancel);
    RUN(test_checks);
    ds_golden_model_free(&text_encoder);
    ds_golden_model_free(&dit);
    ds_golden_model_free(&vae);
    ds_safetensors_close(golden);
    ds_backend_destroy(cpu);
    return test_summary();
}
