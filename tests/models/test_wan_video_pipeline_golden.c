/* The whole Wan video pipeline, through its table entry's operations (start / advance / output),
 * against upstream's own WanVideoPipeline.__call__ (tests/golden/
 * make_wan_video_pipeline_golden.py): reduced seeded models (text encoder cut to 1 block at full
 * width, the 1.3B DiT cut to 1 block, the real VAE), the test SentencePiece tokenizer, float32;
 * text-to-video with CFG at a height the pipeline rounds up and upstream's default tiling, and
 * video-to-video at strength 0.7 with small blended tiles, VACE with a video, a mask and a
 * reference image (a VaceWanModel of one layer at the DiT's width), untiled. Then the unit
 * sequence and its progress, cancellation, and the parameter and model checks.
 * With the argument "ti2v": Wan2.2-TI2V-5B (its DiT cut to 1 block at the real width, the real
 * Wan2.2 VAE) against upstream's pipeline set up with that VAE: image-to-video with a seeded
 * input_image (9 frames of 32 x 64), and text-to-video at a height rounded up to a multiple of 32
 * (5 frames); then the checks of input_image and of the DiT / VAE pairing. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "core/safetensors.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "pipeline_golden.h"
#include "pipelines/pipeline.h"
#include "test.h"
#include "tools/golden_model.h"

#define GOLDEN "golden/wan_video_pipeline.safetensors"
#define GOLDEN_TI2V "golden/wan_video_pipeline_ti2v.safetensors"
#define TE_CLASS "diffsynth.models.wan_video_text_encoder.WanTextEncoder"
#define DIT_CLASS "diffsynth.models.wan_video_dit.WanModel"
#define VAE_CLASS "diffsynth.models.wan_video_vae.WanVideoVAE"
#define VAE38_CLASS "diffsynth.models.wan_video_vae.WanVideoVAE38"
#define VACE_CLASS "diffsynth.models.wan_video_vace.VaceWanModel"
#define VACE_KWARGS                                                                              \
    "{\"vace_layers\": [0], \"vace_in_dim\": 96, \"patch_size\": [1, 2, 2], "                \
    "\"has_image_input\": false, \"dim\": 1536, \"num_heads\": 12, \"ffn_dim\": 8960, "         \
    "\"eps\": 1e-06}"
/* The generator scripts' seeds. */
#define TE_SEED 2026
#define DIT_SEED 2025
#define VAE_SEED 2027
/* Wan2.1-T2V-1.3B's row kwargs with num_layers 1, as the script builds the DiT; the shape
 * kwargs that variants share, and those that tell them apart. */
#define DIT_SHAPE_KWARGS                                                                         \
    "\"patch_size\": [1, 2, 2], \"dim\": 1536, \"ffn_dim\": 8960, \"freq_dim\": 256, "           \
    "\"num_heads\": 12, \"num_layers\": 1, \"eps\": 1e-06"
#define DIT_KWARGS                                                                               \
    "{\"has_image_input\": false, \"in_dim\": 16, \"text_dim\": 4096, \"out_dim\": 16, "         \
    DIT_SHAPE_KWARGS "}"
/* Wan2.2-TI2V-5B's row kwargs with num_layers 1. */
#define DIT_TI2V_KWARGS                                                                          \
    "{\"has_image_input\": false, \"patch_size\": [1, 2, 2], \"in_dim\": 48, \"dim\": 3072, "    \
    "\"ffn_dim\": 14336, \"freq_dim\": 256, \"text_dim\": 4096, \"out_dim\": 48, "              \
    "\"num_heads\": 24, \"num_layers\": 1, \"eps\": 1e-06, \"seperated_timestep\": true, "      \
    "\"require_clip_embedding\": false, \"require_vae_embedding\": false, "                     \
    "\"fuse_vae_embedding_in_latents\": true}"
/* The prompts: tests/data/wan_tokenizer/cases.json's English and Chinese cases. */
#define PROMPT "A cat sits on a wooden table next to a window, morning light, soft shadows."
#define NEGATIVE "一只小猫坐在窗边的木桌上，清晨的阳光洒在它身上，画面柔和。"
/* Upstream's float32 pipeline vs ours. */
#define LATENT_BUDGET 1e-4

static ds_backend *cpu;
static ds_safetensors *golden;
static ds_loaded_model text_encoder, dit, vae, vace;
static int models_ready;
static int ti2v; /* the Wan2.2-TI2V-5B models (dit, vae) instead of Wan2.1's, and no vace */
static char tokenizer_dir[1024];
static const ds_pipeline_def *def;

static const ds_tensor_view *golden_view(const char *name)
{
    return test_golden_view(golden, name);
}

static int build_models(void)
{
    ds_golden_model_spec te = {
        .model_class = TE_CLASS,
        .kwargs_json = "{\"vocab\": 700, \"num_layers\": 1}",
        .bounds = ds_golden_bounds_wan_text_encoder,
        .seed = TE_SEED,
    };
    ds_golden_model_spec d = {
        .model_class = DIT_CLASS,
        .kwargs_json = ti2v ? DIT_TI2V_KWARGS : DIT_KWARGS,
        .bounds = ds_golden_bounds_wan_video_dit,
        .seed = DIT_SEED,
    };
    ds_golden_model_spec v = {
        .model_class = ti2v ? VAE38_CLASS : VAE_CLASS,
        .bounds = ds_golden_bounds_qwen_image_vae, /* the same rule: gammas, conv fan_in */
        .seed = VAE_SEED,
    };
    ds_golden_model_spec va = {
        .model_class = VACE_CLASS,
        .kwargs_json = VACE_KWARGS,
        .bounds = ds_golden_bounds_wan_video_dit,
        .seed = DIT_SEED,
    };
    if (ds_golden_model_build(&te, &text_encoder) != 0 || ds_golden_model_build(&d, &dit) != 0 ||
        ds_golden_model_build(&v, &vae) != 0 || (!ti2v && ds_golden_model_build(&va, &vace) != 0))
        return 0;
    /* What a load records and the VACE branch checks (the builder sets the class only). */
    vace.model_class = (char *)VACE_CLASS;
    models_ready = 1;
    return 1;
}

/* Parameter `name` of the run's values, marked given. */
static ds_pipeline_value *param(ds_pipeline_args *a, const char *name)
{
    static ds_pipeline_value unused;
    int i = ds_pipeline_param_index(def, name);
    CHECK_MSG(i >= 0, "no parameter %s", name);
    if (i < 0)
        return &unused;
    a->values[i].given = 1;
    return &a->values[i];
}

static void set_input(ds_pipeline_args *a, const char *name, const ds_tensor *t)
{
    int i = ds_pipeline_input_index(def, name);
    REQUIRE(i >= 0);
    a->inputs[i] = t;
}

/* The table's defaults, the test models, prompts and tokenizer, float32. */
static ds_pipeline_args base_args(void)
{
    ds_pipeline_args a;
    ds_error err;
    memset(&a, 0, sizeof a);
    CHECK_MSG(ds_pipeline_defaults(def, a.values, &err) == DS_OK, "%s", err.message);
    a.models[ds_pipeline_role_index(def, "text_encoder")] = &text_encoder;
    a.models[ds_pipeline_role_index(def, "dit")] = &dit;
    a.models[ds_pipeline_role_index(def, "vae")] = &vae;
    a.prompt = PROMPT;
    a.negative_prompt = NEGATIVE;
    a.tokenizer = tokenizer_dir;
    a.dtype = DS_F32;
    return a;
}

/* Runs a pipeline to the end; returns the last advance's status. */
static int run_all(ds_pipeline_run *run, test_progress_log *log, ds_error *err)
{
    ds_step_context ctx = test_log_context(cpu, log);
    int rc;
    while ((rc = def->advance(run, &ctx, err)) == 1)
        ;
    return rc;
}

/* Cases run so far: each dump gets its own name, some cases share golden tensors. */
static int dumped;

static void check_case(const char *name, const ds_pipeline_args *args)
{
    char key[64];
    ds_error err;
    ds_pipeline_run *run = NULL;
    test_progress_log log = {0};
    REQUIRE(models_ready);
    dumped++;
    int rc = def->start(args, &run, &err);
    CHECK_MSG(rc == DS_OK, "%s: %s", name, err.message);
    if (rc != DS_OK)
        return;
    rc = run_all(run, &log, &err);
    CHECK_MSG(rc == 0, "%s: %s", name, err.message);
    const ds_tensor *video = def->output(run, 0);
    const ds_tensor *latents = def->output(run, 1);
    snprintf(key, sizeof key, "%s_latents", name);
    const ds_tensor_view *want_latents = golden_view(key);
    snprintf(key, sizeof key, "%s_video", name);
    const ds_tensor_view *want_video = golden_view(key);
    REQUIRE(latents && video && want_latents && want_video);
    CHECK(latents->ndim == 5);
    for (int d = 0; d < 5; d++)
        CHECK(latents->shape[d] == want_latents->shape[d]);
    CHECK(video->dtype == DS_U8 && video->ndim == 4);
    for (int d = 0; d < 4; d++)
        CHECK(video->shape[d] == want_video->shape[d]);
    int max_diff;
    double rel = test_pipeline_outputs("wan_video", dumped, name, cpu, latents, want_latents,
                                       "video", video, want_video, 0, LATENT_BUDGET, &max_diff);
    CHECK(rel < LATENT_BUDGET);
    /* Within one 8-bit level: the truncating cast turns a 1e-6 difference into one now and
     * then. */
    CHECK(max_diff <= 1);
    def->free(run);
}

static void test_text_to_video(void)
{
    ds_pipeline_args a = base_args();
    param(&a, "seed")->u = 42;
    param(&a, "steps")->i = 3;
    param(&a, "height")->i = 40; /* rounded up to 48 */
    param(&a, "width")->i = 80;
    param(&a, "num_frames")->i = 9;
    check_case("t2v", &a);
}

static void test_video_to_video(void)
{
    const ds_tensor_view *v = golden_view("v2v_input_video");
    REQUIRE(v);
    ds_tensor video = ds_tensor_wrap(cpu, DS_U8, 4, v->shape, (void *)v->data);
    ds_pipeline_args a = base_args();
    param(&a, "seed")->u = 7;
    param(&a, "steps")->i = 3;
    param(&a, "height")->i = 48;
    param(&a, "width")->i = 64;
    param(&a, "num_frames")->i = 9;
    param(&a, "denoising_strength")->d = 0.7;
    param(&a, "sigma_shift")->d = 3.0;
    param(&a, "tile_size_h")->i = 4;
    param(&a, "tile_size_w")->i = 6;
    param(&a, "tile_stride_h")->i = 2;
    param(&a, "tile_stride_w")->i = 3;
    set_input(&a, "input_video", &video);
    check_case("v2v", &a);
}

static ds_tensor golden_u8(const char *name)
{
    const ds_tensor_view *v = golden_view(name);
    if (!v)
        return (ds_tensor){0};
    return ds_tensor_wrap(cpu, DS_U8, v->ndim, v->shape, (void *)v->data);
}

static void test_vace(void)
{
    ds_tensor video = golden_u8("vace_input_video"), mask = golden_u8("vace_input_mask");
    ds_tensor ref = golden_u8("vace_input_reference");
    REQUIRE(video.data && mask.data && ref.data);
    ds_pipeline_args a = base_args();
    a.models[ds_pipeline_role_index(def, "vace")] = &vace;
    param(&a, "seed")->u = 3;
    param(&a, "steps")->i = 3;
    param(&a, "height")->i = 48;
    param(&a, "width")->i = 64;
    param(&a, "num_frames")->i = 9;
    param(&a, "vace_scale")->d = 0.8;
    param(&a, "tiled")->i = 0;
    set_input(&a, "vace_video", &video);
    set_input(&a, "vace_video_mask", &mask);
    set_input(&a, "vace_reference_image", &ref);
    check_case("vace", &a);
}

/* The unit sequence on a tiny untiled run without CFG: encode, 2 steps, decode. */
static void test_units_and_progress(void)
{
    ds_error err;
    ds_pipeline_args a = base_args();
    param(&a, "steps")->i = 2;
    param(&a, "cfg_scale")->d = 1.0;
    param(&a, "height")->i = 16;
    param(&a, "width")->i = 16;
    param(&a, "num_frames")->i = 2; /* rounded up to 5 */
    param(&a, "tiled")->i = 0;
    ds_pipeline_run *run;
    test_progress_log log = {0};
    REQUIRE(models_ready);
    REQUIRE(def->start(&a, &run, &err) == DS_OK);
    uint64_t done, total;
    def->position(run, &done, &total);
    CHECK(done == 0 && total == 4);
    ds_step_context ctx = test_log_context(cpu, &log);
    CHECK(def->advance(run, &ctx, &err) == 1); /* encode */
    CHECK(def->output(run, 0) == NULL);
    CHECK(def->advance(run, &ctx, &err) == 1); /* step 1 */
    CHECK(def->advance(run, &ctx, &err) == 1); /* step 2 */
    CHECK_MSG(def->advance(run, &ctx, &err) == 0, "%s", err.message); /* decode */
    def->position(run, &done, &total);
    CHECK(done == 4);
    CHECK(def->advance(run, &ctx, &err) == DS_ERR_FAILED_PRECONDITION);
    /* encode 0/1 and 1/1 (one prompt), denoise 1/2 and 2/2, then the VAE's decode chunks. */
    CHECK(log.count >= 5);
    CHECK_STR_EQ(log.phases[0], "encode");
    CHECK(log.done[0] == 0 && log.total[0] == 1);
    CHECK_STR_EQ(log.phases[1], "encode");
    CHECK(log.done[1] == 1);
    CHECK_STR_EQ(log.phases[2], "denoise");
    CHECK(log.done[2] == 1 && log.total[2] == 2);
    CHECK_STR_EQ(log.phases[3], "denoise");
    CHECK(log.done[3] == 2);
    for (int i = 4; i < log.count && i < TEST_PROGRESS_EVENTS; i++)
        CHECK_STR_EQ(log.phases[i], "decode");
    CHECK(log.done[log.count - 1] == log.total[log.count - 1]);
    const ds_tensor *video = def->output(run, 0);
    REQUIRE(video);
    CHECK(video->dtype == DS_U8 && video->ndim == 4 && video->shape[0] == 5 &&
          video->shape[1] == 16 && video->shape[2] == 16 && video->shape[3] == 3);
    CHECK(def->outputs[0].video == 1 && strcmp(def->outputs[0].name, "video") == 0);
    ds_pipeline_result results[DS_PIPELINE_MAX_RESULTS];
    size_t nres = def->results(run, results);
    const ds_pipeline_result *frames = ds_pipeline_result_find(results, nres, "num_frames");
    CHECK(frames && frames->u == 5);
    char where[96];
    def->describe_position(run, where, sizeof where);
    CHECK_STR_EQ(where, "before the decode");
    def->free(run);
}

static void test_cancel(void)
{
    ds_error err;
    ds_pipeline_args a = base_args();
    param(&a, "steps")->i = 3;
    param(&a, "height")->i = 16;
    param(&a, "width")->i = 16;
    param(&a, "num_frames")->i = 1;
    ds_pipeline_run *run;
    test_progress_log log = {.cancel_after = 4}; /* after the first denoising step */
    REQUIRE(models_ready);
    REQUIRE(def->start(&a, &run, &err) == DS_OK);
    CHECK(run_all(run, &log, &err) == DS_ERR_CANCELLED);
    CHECK(def->output(run, 1) == NULL);
    char where[96];
    def->describe_position(run, where, sizeof where);
    CHECK_STR_EQ(where, "after 1 of 3 denoising steps");
    ds_step_context ctx = {.backend = cpu};
    CHECK(def->advance(run, &ctx, &err) == DS_ERR_FAILED_PRECONDITION);
    def->free(run);
}

static void expect_refused(const ds_pipeline_args *a, int code, const char *needle)
{
    ds_error err;
    ds_pipeline_run *run = NULL;
    int rc = def->start(a, &run, &err);
    CHECK_MSG(rc == code, "expected %d, got %d for %s", code, rc, needle);
    if (rc != DS_OK)
        CHECK_CONTAINS(err.message, needle);
    else
        def->free(run);
}

/* The test DiT with the kwargs of another variant: `variant` and DIT_SHAPE_KWARGS (the
 * pipeline reads nothing else before refusing). */
static void refuse_dit(const char *variant, int code, const char *needle)
{
    char kwargs[512];
    snprintf(kwargs, sizeof kwargs, "{%s, %s}", variant, DIT_SHAPE_KWARGS);
    ds_loaded_model other = dit;
    other.extra_kwargs_json = kwargs;
    ds_pipeline_args a = base_args();
    a.models[ds_pipeline_role_index(def, "dit")] = &other;
    expect_refused(&a, code, needle);
}

static void test_checks(void)
{
    ds_error err;
    ds_pipeline_value v;
    const ds_pipeline_param *frames = &def->params[ds_pipeline_param_index(def, "num_frames")];
    CHECK(ds_pipeline_param_parse(def, frames, "0", &v, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "parameter \"num_frames\" is \"0\"");

    ds_pipeline_args a = base_args();
    param(&a, "denoising_strength")->d = 0.5;
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT, "denoising_strength 0.5 below 1 needs input_video");

    uint8_t pixels[2 * 16 * 16 * 3] = {0};
    ds_tensor short_video = ds_tensor_wrap(cpu, DS_U8, 4, (const int64_t[]){2, 16, 16, 3}, pixels);
    a = base_args();
    param(&a, "height")->i = 16;
    param(&a, "width")->i = 16;
    param(&a, "num_frames")->i = 3;
    set_input(&a, "input_video", &short_video);
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT,
                   "input_video is [2, 16, 16, 3] u8, expected [5, 16, 16, 3] u8");

    a = base_args();
    param(&a, "tile_stride_h")->i = 31;
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT, "tile_stride_h x tile_stride_w 31 x 26 exceeds");

    a = base_args();
    a.dtype = DS_F16;
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT, "expected bf16 or f32");

    a = base_args();
    a.models[ds_pipeline_role_index(def, "dit")] = &vae;
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT, "the dit model is a");
    a = base_args();
    a.models[ds_pipeline_role_index(def, "vae")] = NULL;
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT, "needs a vae model");

    uint8_t ref_pixels[16 * 32 * 3] = {0};
    ds_tensor wide_ref = ds_tensor_wrap(cpu, DS_U8, 3, (const int64_t[]){16, 32, 3}, ref_pixels);
    a = base_args();
    param(&a, "height")->i = 16;
    param(&a, "width")->i = 16;
    param(&a, "num_frames")->i = 1;
    set_input(&a, "vace_reference_image", &wide_ref);
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT, "vace_reference_image needs a vace model");
    a.models[ds_pipeline_role_index(def, "vace")] = &vace;
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT,
                   "vace_reference_image is [16, 32, 3] u8, expected [16, 16, 3] u8");
    set_input(&a, "vace_reference_image", NULL);
    param(&a, "num_frames")->i = 5;
    set_input(&a, "vace_video_mask", &short_video);
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT,
                   "vace_video_mask is [2, 16, 16, 3] u8, expected [>= 5, 16, 16, 3] u8");
    a.models[ds_pipeline_role_index(def, "vace")] = &dit;
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT, "the vace model is a");

    /* DiTs of variants whose extra models are missing: only the kwargs are read. */
    refuse_dit("\"has_image_input\": true, \"in_dim\": 36, \"out_dim\": 16, \"text_dim\": 4096",
               DS_ERR_UNIMPLEMENTED, "the CLIP image encoder");
    refuse_dit("\"has_image_input\": false, \"in_dim\": 48, \"out_dim\": 48, \"text_dim\": 4096, "
               "\"seperated_timestep\": true",
               DS_ERR_INVALID_ARGUMENT,
               "the dit model has 48 latent channels, the vae "
               "(diffsynth.models.wan_video_vae.WanVideoVAE) 16: Wan2.2-TI2V-5B's DiT");
    refuse_dit("\"has_image_input\": false, \"in_dim\": 48, \"out_dim\": 16, \"text_dim\": 4096",
               DS_ERR_UNIMPLEMENTED, "takes 48 input channels for 16 latent ones");
    refuse_dit("\"has_image_input\": false, \"in_dim\": 16, \"out_dim\": 16, \"text_dim\": 4096, "
               "\"add_control_adapter\": true",
               DS_ERR_UNIMPLEMENTED, "camera control");
    refuse_dit("\"has_image_input\": false, \"in_dim\": 16, \"out_dim\": 16, \"text_dim\": 2048",
               DS_ERR_INVALID_ARGUMENT,
               "the text encoder's width is 4096, the dit model's text_dim is 2048");

    /* Wan2.1 text-to-video has nothing to fuse an image with (upstream's ImageEmbedderVAE would
     * feed it 20 channels more than its patch embedding takes). */
    uint8_t image_pixels[16 * 16 * 3] = {0};
    ds_tensor image = ds_tensor_wrap(cpu, DS_U8, 3, (const int64_t[]){16, 16, 3}, image_pixels);
    a = base_args();
    param(&a, "height")->i = 16;
    param(&a, "width")->i = 16;
    set_input(&a, "input_image", &image);
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT,
                   "input_image needs a dit model that fuses the image's latents into the first "
                   "frame (fuse_vae_embedding_in_latents");
}

/* ---- Wan2.2-TI2V-5B (argument "ti2v") ---- */

static void test_image_to_video(void)
{
    ds_tensor image = golden_u8("ti2v_input_image");
    REQUIRE(image.data);
    ds_pipeline_args a = base_args();
    param(&a, "seed")->u = 11;
    param(&a, "steps")->i = 3;
    param(&a, "height")->i = 32;
    param(&a, "width")->i = 64;
    param(&a, "num_frames")->i = 9;
    set_input(&a, "input_image", &image);
    check_case("ti2v", &a);
}

static void test_text_to_video_5b(void)
{
    ds_pipeline_args a = base_args();
    param(&a, "seed")->u = 5;
    param(&a, "steps")->i = 3;
    param(&a, "height")->i = 20; /* rounded up to 32: the Wan2.2 VAE's factor */
    param(&a, "width")->i = 64;
    param(&a, "num_frames")->i = 5;
    param(&a, "tiled")->i = 0;
    check_case("t2v5b", &a);
}

/* The encode unit's parts with an input image and no CFG: the prompt, then the image, on a run
 * cut short after the encode. */
static void test_image_progress(void)
{
    ds_error err;
    uint8_t pixels[32 * 32 * 3] = {0};
    ds_tensor image = ds_tensor_wrap(cpu, DS_U8, 3, (const int64_t[]){32, 32, 3}, pixels);
    ds_pipeline_args a = base_args();
    param(&a, "steps")->i = 1;
    param(&a, "cfg_scale")->d = 1.0;
    param(&a, "height")->i = 32;
    param(&a, "width")->i = 32;
    param(&a, "num_frames")->i = 1;
    param(&a, "tiled")->i = 0;
    set_input(&a, "input_image", &image);
    ds_pipeline_run *run;
    test_progress_log log = {0};
    REQUIRE(models_ready);
    REQUIRE(def->start(&a, &run, &err) == DS_OK);
    ds_step_context ctx = test_log_context(cpu, &log);
    CHECK_MSG(def->advance(run, &ctx, &err) == 1, "%s", err.message);
    int encode_events = 0;
    for (int i = 0; i < log.count && i < TEST_PROGRESS_EVENTS; i++)
        if (strcmp(log.phases[i], "encode") == 0) {
            encode_events++;
            CHECK(log.total[i] == 2);
        }
    CHECK(encode_events == 3); /* 0, 1 and 2 of 2 */
    def->free(run);
}

static void test_ti2v_checks(void)
{
    uint8_t pixels[64 * 96 * 3] = {0};
    ds_tensor small = ds_tensor_wrap(cpu, DS_U8, 3, (const int64_t[]){48, 96, 3}, pixels);
    ds_tensor gray = ds_tensor_wrap(cpu, DS_U8, 3, (const int64_t[]){64, 96, 1}, pixels);
    ds_tensor video = ds_tensor_wrap(cpu, DS_U8, 4, (const int64_t[]){1, 64, 96, 3}, pixels);
    ds_tensor floats = ds_tensor_wrap(cpu, DS_F32, 3, (const int64_t[]){32, 32, 3}, pixels);
    ds_pipeline_args a = base_args();
    param(&a, "height")->i = 48; /* rounded up to 64 */
    param(&a, "width")->i = 96;
    set_input(&a, "input_image", &small);
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT,
                   "input_image is [48, 96, 3] u8, expected [64, 96, 3] u8 (the output size "
                   "after rounding up to multiples of 32)");
    set_input(&a, "input_image", &gray);
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT, "input_image is [64, 96, 1] u8, expected");
    set_input(&a, "input_image", &video);
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT, "input_image is [1, 64, 96, 3] u8, expected");
    set_input(&a, "input_image", &floats);
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT, "input_image is [32, 32, 3] f32, expected");

    /* The 5B DiT with the Wan2.1 VAE, and the Wan2.1 DiT with the Wan2.2 VAE (only the classes
     * and kwargs are read before the refusal). */
    ds_loaded_model vae21 = vae;
    vae21.cls = ds_model_class_find(VAE_CLASS);
    REQUIRE(vae21.cls);
    a = base_args();
    a.models[ds_pipeline_role_index(def, "vae")] = &vae21;
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT,
                   "the dit model has 48 latent channels, the vae "
                   "(diffsynth.models.wan_video_vae.WanVideoVAE) 16");
    refuse_dit("\"has_image_input\": false, \"in_dim\": 16, \"out_dim\": 16, \"text_dim\": 4096",
               DS_ERR_INVALID_ARGUMENT,
               "the dit model has 16 latent channels, the vae "
               "(diffsynth.models.wan_video_vae.WanVideoVAE38) 48");

    /* VACE builds its context from the Wan2.1 VAE's latents and 8 x 8 mask blocks. */
    ds_loaded_model vace_model = dit;
    vace_model.cls = ds_model_class_find(VACE_CLASS);
    REQUIRE(vace_model.cls);
    ds_tensor ref = ds_tensor_wrap(cpu, DS_U8, 3, (const int64_t[]){64, 96, 3}, pixels);
    a = base_args();
    param(&a, "height")->i = 64;
    param(&a, "width")->i = 96;
    a.models[ds_pipeline_role_index(def, "vace")] = &vace_model;
    set_input(&a, "vace_reference_image", &ref);
    expect_refused(&a, DS_ERR_INVALID_ARGUMENT,
                   "VACE takes the Wan2.1 VAE's latents (16 channels, 8 x 8 mask blocks); the "
                   "vae model is a diffsynth.models.wan_video_vae.WanVideoVAE38");

    /* Admission sizes the run on the Wan2.2 VAE's grid. */
    ds_error err;
    ds_pipeline_memory_args m = {.threads = 2};
    ds_memory_need need;
    char what[96];
    a = base_args();
    param(&a, "height")->i = 40;
    param(&a, "width")->i = 96;
    param(&a, "num_frames")->i = 9;
    CHECK(def->estimate_memory(&a, &m, &need, what, sizeof what, &err) == DS_OK);
    CHECK_CONTAINS(what, "wan_video 9 frames of 64x96");
}

/* The table as the daemon and the CLI read it. */
static void test_table(void)
{
    CHECK(ds_pipeline_find("wan_video") == def);
    ds_pipeline_value values[DS_PIPELINE_MAX_PARAMS];
    ds_error err;
    REQUIRE(ds_pipeline_defaults(def, values, &err) == DS_OK);
    CHECK(values[ds_pipeline_param_index(def, "steps")].i == 50);
    CHECK(values[ds_pipeline_param_index(def, "height")].i == 480);
    CHECK(values[ds_pipeline_param_index(def, "width")].i == 832);
    CHECK(values[ds_pipeline_param_index(def, "num_frames")].i == 81);
    CHECK(values[ds_pipeline_param_index(def, "cfg_scale")].d == 5.0);
    CHECK(values[ds_pipeline_param_index(def, "sigma_shift")].d == 5.0);
    CHECK(values[ds_pipeline_param_index(def, "tiled")].i == 1);
    CHECK(def->param_count <= DS_PIPELINE_MAX_PARAMS &&
          def->input_count <= DS_PIPELINE_MAX_TENSORS);
    /* The daemon gives the vae role either VAE by id or paths; the other roles one class. */
    const ds_pipeline_role *vae_role = &def->roles[ds_pipeline_role_index(def, "vae")];
    CHECK(ds_pipeline_role_takes(vae_role, VAE_CLASS));
    CHECK(ds_pipeline_role_takes(vae_role, VAE38_CLASS));
    CHECK(!ds_pipeline_role_takes(vae_role, DIT_CLASS));
    CHECK(!ds_pipeline_role_takes(&def->roles[ds_pipeline_role_index(def, "dit")], VAE38_CLASS));
    ds_pipeline_args a = base_args();
    ds_pipeline_memory_args m = {.threads = 2};
    ds_memory_need need;
    char what[96];
    CHECK(def->estimate_memory(&a, &m, &need, what, sizeof what, &err) == DS_OK);
    CHECK_CONTAINS(what, "wan_video 81 frames of 480x832");
    CHECK(need.held >= 81ull * 480 * 832 * 3 && need.peak > 0);
}

int main(int argc, char **argv)
{
    ds_error err;
    char path[1024];
    ti2v = argc > 1 && strcmp(argv[1], "ti2v") == 0;
    test_data_path(path, sizeof path, ti2v ? GOLDEN_TI2V : GOLDEN);
    test_data_path(tokenizer_dir, sizeof tokenizer_dir, "wan_tokenizer");
    def = ds_pipeline_find("wan_video");
    if (!def) {
        fprintf(stderr, "setup: no wan_video pipeline in the table\n");
        return 1;
    }
    if (ds_cpu_backend_create(0, &cpu, &err) != DS_OK ||
        ds_safetensors_open(path, 0, &golden, &err) != DS_OK) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    if (!build_models())
        fprintf(stderr, "setup: could not build the seeded models\n");
    if (ti2v) {
        RUN(test_ti2v_checks);
        RUN(test_image_to_video);
        RUN(test_text_to_video_5b);
        RUN(test_image_progress);
    } else {
        RUN(test_table);
        RUN(test_checks);
        RUN(test_text_to_video);
        RUN(test_video_to_video);
        RUN(test_vace);
        RUN(test_units_and_progress);
        RUN(test_cancel);
    }
    ds_golden_model_free(&text_encoder);
    ds_golden_model_free(&dit);
    ds_golden_model_free(&vae);
    vace.model_class = NULL;
    ds_golden_model_free(&vace);
    ds_safetensors_close(golden);
    ds_backend_destroy(cpu);
    return test_summary();
}
