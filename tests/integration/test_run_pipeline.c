/* RunPipeline through the daemon: the Qwen-Image pipeline on a small model set, from the client
 * library and from `diffsynth generate`.
 *
 * The models are header-only safetensors (the data region is a hole: zero weights, which is
 * enough to run every unit and check the plumbing, not the numbers) laid out as upstream's
 * Qwen/Qwen-Image folder, so the text encoder finds tokenizer/ beside its folder:
 *   Qwen-Image/text_encoder/model.safetensors  the text encoder key list cut to 1 layer and
 *   Qwen-Image/transformer/model.safetensors   the DiT key list cut to 1 block, registered
 *                                               with --model-configs under the real names
 *   Qwen-Image/vae/model.safetensors           the real VAE key list
 *   Qwen-Image/tokenizer/                      tests/data/qwen_tokenizer
 * Images are 64 x 64 with cfg_scale 1 (no negative pass) and 1-3 steps, except where a job
 * must last: the cancelled one and the long one of the two interleaved clients. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/image_png.h"
#include "harness.h"
#include "test.h"

/* A pipeline unit under ASan on two busy cores (the 28-layer text encoder is the slowest) may
 * keep a client waiting this long between frames. */
#define RUN_TIMEOUT_MS 600000
#define MAX_EVENTS 4096
#define LONG_STEPS 1000

static it_env env;
static const char *cli;
static it_qwen_image_set set;

/* --- helpers ------------------------------------------------------------------------------- */

static int copy_file(const char *from, const char *to)
{
    size_t len = 0;
    char *data = it_read_file(from, &len);
    if (!data) {
        fprintf(stderr, "cannot read %s\n", from);
        return -1;
    }
    int rc = it_write_file(to, data, len);
    free(data);
    return rc;
}

/* --- running a pipeline --------------------------------------------------------------------- */

typedef struct event {
    char phase[16];
    uint64_t done, total;
    double elapsed_s, eta_s;
} event;

typedef struct progress_log {
    event ev[MAX_EVENTS];
    int count;
    /* Raise `cancel` once this many "denoise" events arrived (0: never). */
    int cancel_after_denoise;
    int denoise_seen;
    ds_client_cancel_flag *cancel;
    /* Called once at the first "denoise" event (the interleaving test starts client B). */
    void (*on_first_denoise)(void *arg);
    void *arg;
} progress_log;

static void on_progress(const diffsynth_v1_Progress *p, uint64_t request_id, void *user)
{
    (void)request_id;
    progress_log *log = user;
    const char *phase = p->phase ? p->phase : "";
    if (log->count < MAX_EVENTS) {
        event *e = &log->ev[log->count++];
        snprintf(e->phase, sizeof e->phase, "%s", phase);
        e->done = p->done;
        e->total = p->total;
        e->elapsed_s = p->elapsed_s;
        e->eta_s = p->eta_s;
    }
    if (strcmp(phase, "denoise") != 0)
        return;
    if (++log->denoise_seen == 1 && log->on_first_denoise)
        log->on_first_denoise(log->arg);
    if (log->cancel_after_denoise && log->denoise_seen == log->cancel_after_denoise)
        ds_client_cancel_flag_raise(log->cancel);
}

typedef struct request_spec {
    const char *pipeline;
    const char *prompt;
    const ds_client_step_param *params;
    size_t param_count;
    const ds_client_pipeline_model *models;
    size_t model_count;
    const char *dtype;
    const char *video_format;
    double fps;
    bool named_outputs;
} request_spec;

/* Small images, few steps, no negative pass: what most cases run. */
static const ds_client_step_param quick_params[] = {
    {"height", "64"}, {"width", "64"}, {"steps", "2"}, {"cfg_scale", "1"}, {"seed", "42"},
};
#define QUICK_COUNT (sizeof quick_params / sizeof quick_params[0])

static int run_pipeline(ds_client *c, const request_spec *spec, ds_client_pipeline_result *res,
                        progress_log *log, uint64_t *id)
{
    ds_client_pipeline_request r = {
        .pipeline = spec->pipeline,
        .prompt = spec->prompt ? spec->prompt : "a red bicycle",
        .params = spec->params,
        .param_count = spec->param_count,
        .models = spec->models,
        .model_count = spec->model_count,
        .dtype = spec->dtype,
        .cancel = log ? log->cancel : NULL,
        .video_format = spec->video_format,
        .fps = spec->fps,
        .named_outputs = spec->named_outputs,
    };
    return ds_client_run_pipeline(c, &r, res, RUN_TIMEOUT_MS, log ? on_progress : NULL, log, id);
}

static void expect_error(const request_spec *spec, int code, const char *needle)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    ds_client_pipeline_result res;
    int rc = run_pipeline(c, spec, &res, NULL, NULL);
    CHECK_MSG(rc == DS_CLIENT_EDAEMON && ds_client_last_code(c) == code,
              "rc %d code %s (wanted %s): %s", rc, ds_client_code_name(ds_client_last_code(c)),
              ds_client_code_name(code), ds_client_last_error(c));
    CHECK_CONTAINS(ds_client_last_error(c), needle);
    ds_client_pipeline_result_free(&res);
    ds_client_close(c);
}

/* A PNG of the asked size: decoded here with core's reader. */
static void check_png(const uint8_t *png, size_t size, uint32_t width, uint32_t height)
{
    REQUIRE(png && size > 8);
    CHECK(memcmp(png, "\x89PNG\r\n\x1a\n", 8) == 0);
    uint8_t *rgb = NULL;
    uint32_t w = 0, h = 0;
    ds_error err;
    int rc = ds_png_decode_rgb8(png, size, &rgb, &w, &h, &err);
    CHECK_MSG(rc == DS_OK, "decoding the PNG: %s", err.message);
    CHECK_MSG(w == width && h == height, "PNG is %u x %u, expected %u x %u", w, h, width, height);
    free(rgb);
}

static void check_unharmed(void) { CHECK_MSG(it_status_ok(&env), "the daemon stopped answering"); }

/* Jobs queued and running now, from Status. */
static void jobs_now(unsigned *queued, unsigned *running)
{
    *queued = *running = 99;
    ds_client *c = it_connect(&env);
    if (!c)
        return;
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_status_tag;
    if (it_call(c, &req, &resp) == DS_CLIENT_OK) {
        *queued = resp.body.status_result.jobs_queued;
        *running = resp.body.status_result.jobs_running;
    }
    ds_client_envelope_free(&resp);
    ds_client_close(c);
}

/* --- bad requests --------------------------------------------------------------------------- */

static void test_bad_requests(void)
{
    static const struct {
        ds_client_step_param param;
        const char *needle;
    } bad_params[] = {
        {{"height", "0"}, "parameter \"height\" is \"0\": expected an integer in 16..8192"},
        {{"width", "9000"}, "parameter \"width\" is \"9000\": expected an integer in 16..8192"},
        {{"steps", "0"}, "parameter \"steps\" is \"0\": expected an integer in 1..1000"},
        {{"steps", "2.5"}, "parameter \"steps\" is \"2.5\": expected an integer in 1..1000"},
        {{"seed", "-1"}, "parameter \"seed\" is \"-1\": expected an unsigned 64-bit integer"},
        {{"seed", "18446744073709551616"}, "expected an unsigned 64-bit integer"},
        {{"cfg_scale", "nan"}, "parameter \"cfg_scale\" is \"nan\": expected a finite number"},
        {{"denoising_strength", "0"}, "\"denoising_strength\" is \"0\": expected a number in (0, 1]"},
        {{"denoising_strength", "1.5"}, "expected a number in (0, 1]"},
        {{"strength", "0.5"}, "unknown parameter \"strength\"; qwen_image takes: seed, steps, "
                              "cfg_scale, height, width, denoising_strength, controlnet_scale"},
    };
    for (size_t i = 0; i < sizeof bad_params / sizeof bad_params[0]; i++) {
        request_spec spec = {.params = &bad_params[i].param, .param_count = 1};
        expect_error(&spec, diffsynth_v1_Code_INVALID_ARGUMENT, bad_params[i].needle);
    }
    ds_client_step_param twice[] = {{"steps", "2"}, {"steps", "3"}};
    expect_error(&(request_spec){.params = twice, .param_count = 2},
                 diffsynth_v1_Code_INVALID_ARGUMENT, "parameter \"steps\" is given twice");

    expect_error(&(request_spec){.pipeline = "flux"}, diffsynth_v1_Code_INVALID_ARGUMENT,
                 "run_pipeline.pipeline \"flux\" is not a known pipeline; known pipelines: "
                 "qwen_image");
    expect_error(&(request_spec){.dtype = "float16"}, diffsynth_v1_Code_INVALID_ARGUMENT,
                 "run_pipeline.dtype \"float16\" is not a compute dtype");
    /* The video settings are checked whichever pipeline a request names. */
    expect_error(&(request_spec){.video_format = "avi"}, diffsynth_v1_Code_INVALID_ARGUMENT,
                 "run_pipeline.video_format \"avi\" is not one of mp4, webp, frames");
    expect_error(&(request_spec){.video_format = "webp", .fps = -2},
                 diffsynth_v1_Code_INVALID_ARGUMENT, "run_pipeline.fps -2 is not in (0, 1000]");

    ds_client_pipeline_model unknown_id = {.role = "dit", .model_id = "m99"};
    expect_error(&(request_spec){.models = &unknown_id, .model_count = 1},
                 diffsynth_v1_Code_NOT_FOUND, "no model m99 in the pool (role \"dit\")");
    ds_client_pipeline_model unknown_role = {.role = "unet", .model_id = "m1"};
    expect_error(&(request_spec){.models = &unknown_role, .model_count = 1},
                 diffsynth_v1_Code_INVALID_ARGUMENT,
                 "role \"unet\" is not a role of qwen_image; roles: text_encoder, dit, vae, "
                 "controlnet");
    const char *paths[] = {set.dit};
    ds_client_pipeline_model both = {.role = "dit", .model_id = "m1", .paths = paths,
                                     .path_count = 1};
    expect_error(&(request_spec){.models = &both, .model_count = 1},
                 diffsynth_v1_Code_INVALID_ARGUMENT, "gives both a model_id and paths");
    ds_client_pipeline_model neither = {.role = "vae"};
    expect_error(&(request_spec){.models = &neither, .model_count = 1},
                 diffsynth_v1_Code_INVALID_ARGUMENT, "gives neither a model_id nor paths");
    ds_client_pipeline_model dup[] = {{.role = "dit", .model_id = "m1"},
                                      {.role = "dit", .model_id = "m2"}};
    expect_error(&(request_spec){.models = dup, .model_count = 2},
                 diffsynth_v1_Code_INVALID_ARGUMENT, "role \"dit\" is given twice");
    const char *outside[] = {"/etc/hostname"};
    ds_client_pipeline_model escape = {.role = "vae", .paths = outside, .path_count = 1};
    expect_error(&(request_spec){.models = &escape, .model_count = 1},
                 diffsynth_v1_Code_PERMISSION_DENIED, "outside the model roots");

    /* Nothing is loaded yet: every role left out is missing. */
    expect_error(&(request_spec){0}, diffsynth_v1_Code_FAILED_PRECONDITION,
                 "no model for the text_encoder: no qwen_image_text_encoder is loaded");
    check_unharmed();
}

/* --- the first run loads its models from paths ---------------------------------------------- */

static char te_id[32], dit_id[32], vae_id[32];

/* Phases in order: load..., encode..., denoise 1..steps, decode...; elapsed never decreasing. */
static void check_events(const progress_log *log, int steps, int with_load)
{
    int i = 0, n = log->count;
    if (with_load) {
        CHECK_MSG(n > 0 && strcmp(log->ev[0].phase, "load") == 0, "first event %s",
                  n ? log->ev[0].phase : "(none)");
        while (i < n && strcmp(log->ev[i].phase, "load") == 0)
            i++;
    }
    int encode = 0;
    while (i < n && strcmp(log->ev[i].phase, "encode") == 0)
        i++, encode++;
    CHECK_MSG(encode > 0, "no encode events (event %d is %s)", i, i < n ? log->ev[i].phase : "-");
    for (int s = 1; s <= steps; s++, i++) {
        CHECK_MSG(i < n && strcmp(log->ev[i].phase, "denoise") == 0 &&
                      log->ev[i].done == (uint64_t)s && log->ev[i].total == (uint64_t)steps,
                  "event %d is %s %llu/%llu, expected denoise %d/%d", i,
                  i < n ? log->ev[i].phase : "-", i < n ? (unsigned long long)log->ev[i].done : 0,
                  i < n ? (unsigned long long)log->ev[i].total : 0, s, steps);
        if (i < n)
            CHECK_MSG(log->ev[i].eta_s >= 0, "denoise %d has no ETA", s);
    }
    int decode = 0;
    while (i < n && strcmp(log->ev[i].phase, "decode") == 0)
        i++, decode++;
    CHECK_MSG(decode > 0 && i == n, "after the steps: %d decode events, then %d others", decode,
              n - i);
    for (int k = 1; k < n; k++)
        CHECK_MSG(log->ev[k].elapsed_s >= log->ev[k - 1].elapsed_s, "elapsed_s %.3f after %.3f",
                  log->ev[k].elapsed_s, log->ev[k - 1].elapsed_s);
}

static void test_generate_from_paths(void)
{
    const char *te[] = {set.text_encoder}, *dit[] = {set.dit}, *vae[] = {set.vae};
    ds_client_pipeline_model models[] = {
        {.role = "text_encoder", .paths = te, .path_count = 1},
        {.role = "dit", .paths = dit, .path_count = 1},
        {.role = "vae", .paths = vae, .path_count = 1},
    };
    request_spec spec = {.params = quick_params, .param_count = QUICK_COUNT, .models = models,
                         .model_count = 3};
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    static progress_log log;
    memset(&log, 0, sizeof log);
    ds_client_pipeline_result res;
    uint64_t started = it_now_ms();
    int rc = run_pipeline(c, &spec, &res, &log, NULL);
    CHECK_MSG(rc == DS_CLIENT_OK, "rc %d: %s", rc, ds_client_last_error(c));
    if (rc == DS_CLIENT_OK) {
        fprintf(stderr, "  64x64, 2 steps: %.2f s (encode %.2f, denoise %.2f, decode %.2f, queued "
                        "%.2f), png %zu bytes\n",
                (double)(it_now_ms() - started) / 1000.0, res.encode_s, res.denoise_s,
                res.decode_s, res.queue_s, res.png_size);
        check_png(res.png, res.png_size, 64, 64);
        CHECK(res.seed == 42 && res.steps == 2 && res.height == 64 && res.width == 64);
        CHECK(res.latents.dtype == diffsynth_v1_DType_BF16 && res.latents.ndim == 4 &&
              res.latents.shape[0] == 1 && res.latents.shape[1] == 16 &&
              res.latents.shape[2] == 8 && res.latents.shape[3] == 8);
        check_events(&log, 2, 1);
    }
    ds_client_pipeline_result_free(&res);

    /* The models stay in the pool, one reference each for this uid, also after a second
     * request naming the same files. */
    rc = run_pipeline(c, &spec, &res, NULL, NULL);
    CHECK_MSG(rc == DS_CLIENT_OK, "second run: rc %d: %s", rc, ds_client_last_error(c));
    ds_client_pipeline_result_free(&res);
    ds_client_close(c);
    char *pool = it_pool_snapshot(&env);
    REQUIRE(pool);
    CHECK_MSG(it_pool_id(pool, "qwen_image_text_encoder", te_id, sizeof te_id) == 0 &&
                  it_pool_id(pool, "qwen_image_dit", dit_id, sizeof dit_id) == 0 &&
                  it_pool_id(pool, "qwen_image_vae", vae_id, sizeof vae_id) == 0,
              "pool after the run:\n%s", pool);
    size_t rows = 0;
    for (const char *p = pool; *p; p++)
        rows += *p == '\n';
    CHECK_MSG(rows == 3, "pool has %zu rows:\n%s", rows, pool);
    char uid_ref[64];
    snprintf(uid_ref, sizeof uid_ref, "[uid:%u]", (unsigned)getuid());
    for (char *line = strtok(pool, "\n"); line; line = strtok(NULL, "\n"))
        CHECK_CONTAINS(line, uid_ref);
    free(pool);
}

/* --- by id, by name, and their errors ------------------------------------------------------- */

static void test_models_by_id_and_name(void)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    ds_client_pipeline_model by_id[] = {
        {.role = "text_encoder", .model_id = te_id},
        {.role = "dit", .model_id = dit_id},
        {.role = "vae", .model_id = vae_id},
    };
    ds_client_step_param params[] = {{"height", "60"}, {"width", "50"}, {"steps", "2"},
                                     {"cfg_scale", "1"}};
    request_spec spec = {.params = params, .param_count = 4, .models = by_id, .model_count = 3,
                         .dtype = "float32"};
    ds_client_pipeline_result res;
    int rc = run_pipeline(c, &spec, &res, NULL, NULL);
    CHECK_MSG(rc == DS_CLIENT_OK, "by id: rc %d: %s", rc, ds_client_last_error(c));
    if (rc == DS_CLIENT_OK) {
        /* Rounded up to multiples of 16; the seed drawn by the daemon is reported. */
        CHECK(res.height == 64 && res.width == 64 && res.steps == 2);
        check_png(res.png, res.png_size, 64, 64);
        CHECK(res.latents.dtype == diffsynth_v1_DType_F32);
        fprintf(stderr, "  drawn seed %llu\n", (unsigned long long)res.seed);
    }
    ds_client_pipeline_result_free(&res);
    ds_client_close(c);

    ds_client_pipeline_model wrong_class = {.role = "dit", .model_id = vae_id};
    char needle[128];
    snprintf(needle, sizeof needle, "model %s is a qwen_image_vae", vae_id);
    expect_error(&(request_spec){.models = &wrong_class, .model_count = 1},
                 diffsynth_v1_Code_INVALID_ARGUMENT, needle);
}

/* --- image-to-image and the request's tensors ------------------------------------------------ */

static void test_input_tensors(void)
{
    static uint8_t rgb[64 * 64 * 3];
    for (size_t i = 0; i < sizeof rgb; i++)
        rgb[i] = (uint8_t)(i * 7);
    ds_client_tensor image = {.dtype = diffsynth_v1_DType_U8, .ndim = 3, .shape = {64, 64, 3},
                              .data = rgb, .nbytes = sizeof rgb};
    ds_client_step_param params[] = {{"height", "64"}, {"width", "64"}, {"steps", "3"},
                                     {"cfg_scale", "1"}, {"denoising_strength", "0.6"}};
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    /* inline_limit 1: the image travels through shared memory. */
    ds_client_pipeline_request r = {.prompt = "a boat", .params = params, .param_count = 5,
                                    .input_image = &image, .inline_limit = 1};
    ds_client_pipeline_result res;
    int rc = ds_client_run_pipeline(c, &r, &res, RUN_TIMEOUT_MS, NULL, NULL, NULL);
    CHECK_MSG(rc == DS_CLIENT_OK, "image-to-image: rc %d: %s", rc, ds_client_last_error(c));
    if (rc == DS_CLIENT_OK)
        check_png(res.png, res.png_size, 64, 64);
    ds_client_pipeline_result_free(&res);

    /* The pipeline checks the image against the output size. */
    ds_client_tensor small = image;
    small.shape[0] = small.shape[1] = 32;
    small.nbytes = 32 * 32 * 3;
    r.input_image = &small;
    r.inline_limit = 0;
    rc = ds_client_run_pipeline(c, &r, &res, RUN_TIMEOUT_MS, NULL, NULL, NULL);
    CHECK(rc == DS_CLIENT_EDAEMON && ds_client_last_code(c) == diffsynth_v1_Code_INVALID_ARGUMENT);
    CHECK_CONTAINS(ds_client_last_error(c),
                   "qwen_image: input_image is [32, 32, 3] u8, expected [64, 64, 3] u8");
    ds_client_pipeline_result_free(&res);

    /* The daemon checks the encoding before anything else. */
    ds_client_tensor short_data = image;
    short_data.nbytes = 100;
    r.input_image = &short_data;
    rc = ds_client_run_pipeline(c, &r, &res, RUN_TIMEOUT_MS, NULL, NULL, NULL);
    CHECK(rc == DS_CLIENT_EDAEMON && ds_client_last_code(c) == diffsynth_v1_Code_INVALID_ARGUMENT);
    CHECK_CONTAINS(ds_client_last_error(c),
                   "run_pipeline.input_image: 100 bytes of data, its dtype and shape need 12288");
    ds_client_pipeline_result_free(&res);

    /* Strength below 1 without an image, noise of the wrong dtype. */
    r.input_image = NULL;
    rc = ds_client_run_pipeline(c, &r, &res, RUN_TIMEOUT_MS, NULL, NULL, NULL);
    CHECK(rc == DS_CLIENT_EDAEMON && ds_client_last_code(c) == diffsynth_v1_Code_INVALID_ARGUMENT);
    CHECK_CONTAINS(ds_client_last_error(c), "below 1 needs an input_image");
    ds_client_pipeline_result_free(&res);
    static float noise[16 * 8 * 8];
    ds_client_tensor f32_noise = {.dtype = diffsynth_v1_DType_F32, .ndim = 4,
                                  .shape = {1, 16, 8, 8}, .data = noise, .nbytes = sizeof noise};
    r.initial_noise = &f32_noise;
    r.param_count = 4;
    rc = ds_client_run_pipeline(c, &r, &res, RUN_TIMEOUT_MS, NULL, NULL, NULL);
    CHECK(rc == DS_CLIENT_EDAEMON && ds_client_last_code(c) == diffsynth_v1_Code_INVALID_ARGUMENT);
    CHECK_CONTAINS(ds_client_last_error(c), "qwen_image: initial_noise is [1, 16, 8, 8] f32");
    ds_client_pipeline_result_free(&res);
    /* In the compute dtype it replaces the seeded noise. */
    r.dtype = "float32";
    rc = ds_client_run_pipeline(c, &r, &res, RUN_TIMEOUT_MS, NULL, NULL, NULL);
    CHECK_MSG(rc == DS_CLIENT_OK, "initial_noise: rc %d: %s", rc, ds_client_last_error(c));
    ds_client_pipeline_result_free(&res);
    ds_client_close(c);
}

/* --- a prompt over the tokenizer's limit ---------------------------------------------------- */

static void test_prompt_too_long(void)
{
    size_t words = 5000;
    char *prompt = malloc(words * 2 + 1);
    REQUIRE(prompt);
    for (size_t i = 0; i < words; i++)
        memcpy(prompt + 2 * i, "a ", 2);
    prompt[words * 2] = '\0';
    request_spec spec = {.prompt = prompt, .params = quick_params, .param_count = QUICK_COUNT};
    expect_error(&spec, diffsynth_v1_Code_INVALID_ARGUMENT, "4096");
    free(prompt);
    check_unharmed();
}

/* --- cancel mid-denoise ----------------------------------------------------------------------- */

static void test_cancel_mid_denoise(void)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    static progress_log log;
    memset(&log, 0, sizeof log);
    log.cancel = ds_client_cancel_flag_new();
    log.cancel_after_denoise = 2;
    REQUIRE(log.cancel);
    char steps[16];
    snprintf(steps, sizeof steps, "%d", LONG_STEPS);
    ds_client_step_param params[] = {{"height", "64"}, {"width", "64"}, {"steps", steps},
                                     {"cfg_scale", "1"}, {"seed", "1"}};
    request_spec spec = {.params = params, .param_count = 5};
    ds_client_pipeline_result res;
    int rc = run_pipeline(c, &spec, &res, &log, NULL);
    CHECK_MSG(rc == DS_CLIENT_EDAEMON && ds_client_last_code(c) == diffsynth_v1_Code_CANCELLED,
              "rc %d code %s: %s", rc, ds_client_code_name(ds_client_last_code(c)),
              ds_client_last_error(c));
    CHECK_CONTAINS(ds_client_last_error(c), "cancelled after ");
    CHECK_CONTAINS(ds_client_last_error(c), "denoising steps");
    CHECK_MSG(log.denoise_seen >= 2 && log.denoise_seen < LONG_STEPS,
              "%d denoise events before the cancel took", log.denoise_seen);
    ds_client_pipeline_result_free(&res);
    ds_client_cancel_flag_free(log.cancel);

    /* The connection and the daemon stay usable, with nothing left queued or running. */
    spec = (request_spec){.params = quick_params, .param_count = QUICK_COUNT};
    rc = run_pipeline(c, &spec, &res, NULL, NULL);
    CHECK_MSG(rc == DS_CLIENT_OK, "after the cancel: rc %d: %s", rc, ds_client_last_error(c));
    ds_client_pipeline_result_free(&res);
    ds_client_close(c);
    unsigned queued, running;
    jobs_now(&queued, &running);
    CHECK_MSG(queued == 0 && running == 0, "%u queued, %u running", queued, running);
}

/* --- two clients interleave --------------------------------------------------------------- */

typedef struct client_run {
    request_spec spec;
    progress_log log;
    ds_client_pipeline_result res;
    int rc;
    char error[512];
    uint64_t finished_ms;
    pthread_t thread;
    struct client_run *start_at_first_step; /* started when this run's first step is done */
} client_run;

static void *client_main(void *p)
{
    client_run *r = p;
    ds_client *c = it_connect(&env);
    if (!c) {
        r->rc = DS_CLIENT_ECONNECT;
        return NULL;
    }
    r->rc = run_pipeline(c, &r->spec, &r->res, &r->log, NULL);
    r->finished_ms = it_now_ms();
    if (r->rc != DS_CLIENT_OK)
        snprintf(r->error, sizeof r->error, "%s", ds_client_last_error(c));
    ds_client_close(c);
    return NULL;
}

static void start_short(void *arg)
{
    client_run *r = arg;
    if (pthread_create(&r->thread, NULL, client_main, r) != 0)
        r->rc = -100;
}

static void test_two_clients_interleave(void)
{
    static client_run a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    b.rc = -101; /* until its thread ran */
    static const ds_client_step_param long_params[] = {
        {"height", "64"}, {"width", "64"}, {"steps", "12"}, {"cfg_scale", "1"}, {"seed", "3"}};
    a.spec = (request_spec){.params = long_params, .param_count = 5, .prompt = "long"};
    b.spec = (request_spec){.params = quick_params, .param_count = QUICK_COUNT, .prompt = "short"};
    a.log.on_first_denoise = start_short;
    a.log.arg = &b;
    REQUIRE(pthread_create(&a.thread, NULL, client_main, &a) == 0);
    pthread_join(a.thread, NULL);
    if (b.rc != -100 && a.log.denoise_seen > 0)
        pthread_join(b.thread, NULL);
    CHECK_MSG(a.rc == DS_CLIENT_OK, "long job: rc %d: %s", a.rc, a.error);
    CHECK_MSG(b.rc == DS_CLIENT_OK, "short job: rc %d: %s", b.rc, b.error);
    if (a.rc == DS_CLIENT_OK && b.rc == DS_CLIENT_OK) {
        fprintf(stderr, "  short job (2 steps) done %.2f s before the long one (12 steps); "
                        "queued %.2f s vs %.2f s\n",
                (double)((int64_t)a.finished_ms - (int64_t)b.finished_ms) / 1000.0,
                b.res.queue_s, a.res.queue_s);
        CHECK_MSG(b.finished_ms < a.finished_ms,
                  "the short job started second finished after the long one");
        check_events(&a.log, 12, 0);
        check_events(&b.log, 2, 0);
        /* Round robin: the long job waited for the short one's units, at its step boundaries. */
        CHECK_MSG(a.res.queue_s > 0.0, "the long job never waited");
    }
    ds_client_pipeline_result_free(&a.res);
    ds_client_pipeline_result_free(&b.res);
    unsigned queued, running;
    jobs_now(&queued, &running);
    CHECK_MSG(queued == 0 && running == 0, "%u queued, %u running", queued, running);
}

/* Inputs and outputs by name (ListPipelines' tables): the same run as through the message's
 * own fields, byte for byte, with every scalar result reported. */
static void test_named_tensors(void)
{
    static uint8_t rgb[64 * 64 * 3];
    for (size_t i = 0; i < sizeof rgb; i++)
        rgb[i] = (uint8_t)(i * 11);
    ds_client_tensor image = {.dtype = diffsynth_v1_DType_U8, .ndim = 3, .shape = {64, 64, 3},
                              .data = rgb, .nbytes = sizeof rgb};
    ds_client_step_param params[] = {{"height", "64"}, {"width", "64"}, {"steps", "2"},
                                     {"cfg_scale", "1"}, {"denoising_strength", "0.6"},
                                     {"seed", "42"}};
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    ds_client_pipeline_request r = {.prompt = "a boat", .params = params, .param_count = 6,
                                    .input_image = &image};
    ds_client_pipeline_result old, named;
    int rc = ds_client_run_pipeline(c, &r, &old, RUN_TIMEOUT_MS, NULL, NULL, NULL);
    CHECK_MSG(rc == DS_CLIENT_OK, "fields: rc %d: %s", rc, ds_client_last_error(c));
    CHECK(old.output_count == 0 && old.result_count == 7);

    ds_client_tensor by_name = image;
    by_name.name = "input_image";
    r.input_image = NULL;
    r.inputs = &by_name;
    r.input_count = 1;
    r.named_outputs = true;
    r.inline_limit = 1; /* the image through shared memory, the outputs into the region */
    rc = ds_client_run_pipeline(c, &r, &named, RUN_TIMEOUT_MS, NULL, NULL, NULL);
    CHECK_MSG(rc == DS_CLIENT_OK, "named: rc %d: %s", rc, ds_client_last_error(c));
    if (rc == DS_CLIENT_OK && old.png) {
        CHECK(named.png == NULL && named.output_count == 2);
        CHECK_STR_EQ(named.outputs[0].name, "png");
        CHECK_STR_EQ(named.outputs[1].name, "latents");
        CHECK(named.outputs[0].nbytes == old.png_size &&
              memcmp(named.outputs[0].data, old.png, old.png_size) == 0);
        CHECK(named.outputs[1].nbytes == old.latents.nbytes &&
              memcmp(named.outputs[1].data, old.latents.data, old.latents.nbytes) == 0);
        CHECK(named.result_count == 7);
        CHECK_STR_EQ(named.results[0].name, "seed");
        CHECK(named.results[0].is_integer && named.results[0].integer == 42);
        CHECK_STR_EQ(named.results[3].name, "width");
        CHECK(named.results[3].integer == 64);
        CHECK_STR_EQ(named.results[6].name, "decode_s");
        CHECK(!named.results[6].is_integer && named.results[6].number >= 0.0);
    }
    ds_client_pipeline_result_free(&old);
    ds_client_pipeline_result_free(&named);

    /* Names the pipeline does not declare, or given both ways, are refused up front. */
    by_name.name = "mask";
    rc = ds_client_run_pipeline(c, &r, &named, RUN_TIMEOUT_MS, NULL, NULL, NULL);
    CHECK(rc == DS_CLIENT_EDAEMON && ds_client_last_code(c) == diffsynth_v1_Code_INVALID_ARGUMENT);
    CHECK_CONTAINS(ds_client_last_error(c),
                   "run_pipeline.inputs[0] \"mask\" is not an input of qwen_image; inputs: "
                   "input_image, controlnet_image, initial_noise");
    ds_client_pipeline_result_free(&named);
    by_name.name = "input_image";
    r.input_image = &image;
    rc = ds_client_run_pipeline(c, &r, &named, RUN_TIMEOUT_MS, NULL, NULL, NULL);
    CHECK(rc == DS_CLIENT_EDAEMON && ds_client_last_code(c) == diffsynth_v1_Code_INVALID_ARGUMENT);
    CHECK_CONTAINS(ds_client_last_error(c), "input \"input_image\" is given twice");
    ds_client_pipeline_result_free(&named);
    ds_client_close(c);
}

/* --- the CLI -------------------------------------------------------------------------------- */

static void test_cli_generate(void)
{
    char out[256], latents[256];
    snprintf(out, sizeof out, "%s/out.png", env.dir);
    snprintf(latents, sizeof latents, "%s/latents.safetensors", env.dir);
    const char *argv[] = {cli, "--socket", env.socket, "generate", "--prompt", "a lighthouse",
                          "--seed", "7", "--steps", "2", "--cfg-scale", "1", "--height", "64",
                          "--width", "64", "--tokenizer", set.tokenizer, "--save-latents",
                          latents, "-o", out, "--json", NULL};
    char *sout = NULL, *serr = NULL;
    int status = it_run(argv, NULL, RUN_TIMEOUT_MS, &sout, &serr);
    CHECK_MSG(status == 0, "exit %d\nstdout: %s\nstderr: %s", status, sout ? sout : "",
              serr ? serr : "");
    CHECK_CONTAINS(sout, "\"seed\": 7");
    CHECK_CONTAINS(sout, out);
    /* Not a terminal: plain progress lines. */
    CHECK_CONTAINS(serr, "denoise 2/2");
    size_t len = 0;
    char *png = it_read_file(out, &len);
    CHECK_MSG(png, "%s was not written", out);
    if (png)
        check_png((const uint8_t *)png, len, 64, 64);
    free(png);
    CHECK_MSG(access(latents, R_OK) == 0, "%s was not written", latents);
    free(sout);
    free(serr);
    unlink(out);
    unlink(latents);

    /* --models: the files are identified here and sent by role. */
    /* --param: any parameter the pipeline declares, by name. */
    const char *argv2[] = {cli, "--socket", env.socket, "generate", "--prompt", "x", "--param",
                           "steps=2", "--cfg-scale", "1", "--height", "32", "--width", "48",
                           "--models", set.text_encoder, set.dit, set.vae, "-o", out, NULL};
    status = it_run(argv2, NULL, RUN_TIMEOUT_MS, &sout, &serr);
    CHECK_MSG(status == 0, "--models: exit %d\nstdout: %s\nstderr: %s", status, sout ? sout : "",
              serr ? serr : "");
    CHECK_CONTAINS(sout, "seed ");
    png = it_read_file(out, &len);
    if (png)
        check_png((const uint8_t *)png, len, 48, 32);
    free(png);
    free(sout);
    free(serr);
    unlink(out);

    /* --input-image: decoded here; its size is the output size unless given. */
    char in_png[256];
    snprintf(in_png, sizeof in_png, "%s/in.png", env.dir);
    static uint8_t rgb[32 * 48 * 3];
    for (size_t i = 0; i < sizeof rgb; i++)
        rgb[i] = (uint8_t)(i * 13);
    uint8_t *encoded = NULL;
    size_t encoded_size = 0;
    ds_error err;
    REQUIRE(ds_png_encode_rgb8(rgb, 48, 32, &encoded, &encoded_size, &err) == DS_OK);
    REQUIRE(it_write_file(in_png, encoded, encoded_size) == 0);
    free(encoded);
    const char *argv5[] = {cli, "--socket", env.socket, "generate", "--prompt", "x", "--steps",
                           "2", "--cfg-scale", "1", "--input-image", in_png,
                           "--denoising-strength", "0.5", "-o", out, NULL};
    status = it_run(argv5, NULL, RUN_TIMEOUT_MS, &sout, &serr);
    CHECK_MSG(status == 0, "--input-image: exit %d\nstdout: %s\nstderr: %s", status,
              sout ? sout : "", serr ? serr : "");
    png = it_read_file(out, &len);
    if (png)
        check_png((const uint8_t *)png, len, 48, 32);
    free(png);
    free(sout);
    free(serr);
    unlink(out);
    /* Not a PNG: refused here, naming the file. */
    const char *argv6[] = {cli, "--socket", env.socket, "generate", "--prompt", "x",
                           "--input-image", set.configs, "--denoising-strength", "0.5", "-o",
                           out, NULL};
    status = it_run(argv6, NULL, RUN_TIMEOUT_MS, &sout, &serr);
    CHECK_MSG(status == 1, "a JSON file as --input-image: exit %d", status);
    CHECK_CONTAINS(serr, "error: --input-image ");
    CHECK_CONTAINS(serr, set.configs);
    free(sout);
    free(serr);
    unlink(in_png);

    /* The pipeline and its parameters are the daemon's (ListPipelines). */
    const char *argv7[] = {cli, "--socket", env.socket, "generate", "--pipeline", "flux",
                           "--prompt", "x", "-o", out, NULL};
    status = it_run(argv7, NULL, RUN_TIMEOUT_MS, &sout, &serr);
    CHECK_MSG(status == 1, "--pipeline flux: exit %d", status);
    CHECK_CONTAINS(serr, "error: the daemon has no pipeline \"flux\"; it has: qwen_image");
    free(sout);
    free(serr);
    const char *argv8[] = {cli, "--socket", env.socket, "generate", "--prompt", "x", "--param",
                           "strength=0.5", "-o", out, NULL};
    status = it_run(argv8, NULL, RUN_TIMEOUT_MS, &sout, &serr);
    CHECK_MSG(status == 2, "--param strength: exit %d", status);
    CHECK_CONTAINS(serr, "--param strength: expected NAME=VALUE with NAME one of the qwen_image "
                         "pipeline's: seed, steps, cfg_scale, height, width, denoising_strength, "
                         "controlnet_scale");
    free(sout);
    free(serr);

    /* Usage errors: exit 2 with a hint. */
    const char *argv3[] = {cli, "--socket", env.socket, "generate", "--prompt", "x", NULL};
    status = it_run(argv3, NULL, RUN_TIMEOUT_MS, &sout, &serr);
    CHECK_MSG(status == 2, "without -o: exit %d", status);
    CHECK_CONTAINS(serr, "-o");
    free(sout);
    free(serr);
    const char *argv4[] = {cli, "--socket", env.socket, "generate", "--prompt", "x", "--steps", "0",
                           "-o", out, NULL};
    status = it_run(argv4, NULL, RUN_TIMEOUT_MS, &sout, &serr);
    CHECK_MSG(status == 1, "--steps 0: exit %d", status);
    CHECK_CONTAINS(serr, "error: INVALID_ARGUMENT: parameter \"steps\" is \"0\"");
    free(sout);
    free(serr);
}

/* Reads a FIFO to its end on a thread while the CLI writes it. */
typedef struct fifo_reader {
    const char *path;
    char *data;
    size_t len;
} fifo_reader;

static void *read_fifo(void *arg)
{
    fifo_reader *r = arg;
    int fd = open(r->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 0;
    for (;;) {
        if (r->len == cap) {
            cap = cap ? cap * 2 : 65536;
            char *grown = realloc(r->data, cap);
            if (!grown)
                break;
            r->data = grown;
        }
        ssize_t n = read(fd, r->data + r->len, cap - r->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        r->len += (size_t)n;
    }
    close(fd);
    return NULL;
}

/* Runs the CLI with its stdout in `stdout_path`; returns its exit status, stderr in *serr. */
static int run_cli_stdout_to(const char *const *argv, const char *stdout_path, char **serr)
{
    char errlog[256];
    snprintf(errlog, sizeof errlog, "%s/cli_stderr.txt", env.dir);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int out = open(stdout_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int errfd = open(errlog, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int devnull = open("/dev/null", O_RDONLY);
        if (out < 0 || errfd < 0 || devnull < 0)
            _exit(127);
        dup2(devnull, 0);
        dup2(out, 1);
        dup2(errfd, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int status = -1;
    if (it_wait_pid(pid, RUN_TIMEOUT_MS, &status) != 0)
        status = -1;
    *serr = it_read_file(errlog, NULL);
    unlink(errlog);
    return status;
}

/* Leftover temporaries of an atomic write (".NAME.XXXXXX") in the test's folder. */
static int temporaries_left(const char *name)
{
    char pattern[256];
    snprintf(pattern, sizeof pattern, ".%s.", name);
    DIR *dir = opendir(env.dir);
    if (!dir)
        return -1;
    int found = 0;
    struct dirent *ent;
    while ((ent = readdir(dir)))
        found += strncmp(ent->d_name, pattern, strlen(pattern)) == 0;
    closedir(dir);
    return found;
}

/* Where -o points decides how the image is written: a regular file is replaced atomically and
 * keeps its mode; a FIFO, a character device or "-" is written directly and stays what it is;
 * a write error (ENOSPC on /dev/full) is reported; a folder is refused and left alone. */
static void test_cli_output_targets(void)
{
#define GEN_ARGS(o)                                                                               \
    {cli, "--socket", env.socket, "generate", "--prompt", "x", "--seed", "3", "--steps", "2",      \
     "--cfg-scale", "1", "--height", "32", "--width", "32", "--tokenizer", set.tokenizer, "-o",   \
     (o), NULL}
    char *sout = NULL, *serr = NULL;
    size_t len = 0;

    /* An existing regular file, mode 0640: replaced whole, mode kept, nothing left beside it. */
    char out[256];
    snprintf(out, sizeof out, "%s/kept_mode.png", env.dir);
    REQUIRE(it_write_file(out, "old", 3) == 0);
    REQUIRE(chmod(out, 0640) == 0);
    const char *argv1[] = GEN_ARGS(out);
    int status = it_run(argv1, NULL, RUN_TIMEOUT_MS, &sout, &serr);
    CHECK_MSG(status == 0, "regular file: exit %d\nstderr: %s", status, serr ? serr : "");
    char *png = it_read_file(out, &len);
    if (png)
        check_png((const uint8_t *)png, len, 32, 32);
    free(png);
    struct stat st;
    CHECK(stat(out, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0640);
    CHECK_MSG(temporaries_left("kept_mode.png") == 0, "a temporary file was left beside %s", out);
    free(sout);
    free(serr);
    unlink(out);

    /* /dev/full: ENOSPC reported, and the device node is still a character device. */
    if (stat("/dev/full", &st) == 0 && S_ISCHR(st.st_mode)) {
        const char *argv2[] = GEN_ARGS("/dev/full");
        status = it_run(argv2, NULL, RUN_TIMEOUT_MS, &sout, &serr);
        CHECK_MSG(status == 1, "/dev/full: exit %d\nstdout: %s\nstderr: %s", status,
                  sout ? sout : "", serr ? serr : "");
        CHECK_CONTAINS(serr, "cannot write /dev/full: No space left on device");
        CHECK(stat("/dev/full", &st) == 0 && S_ISCHR(st.st_mode));
        free(sout);
        free(serr);
    } else {
        printf("# /dev/full is not a character device here: its case is skipped\n");
    }

    /* A FIFO: the reader gets the whole PNG, the FIFO stays a FIFO. */
    char fifo[256];
    snprintf(fifo, sizeof fifo, "%s/image.fifo", env.dir);
    REQUIRE(mkfifo(fifo, 0600) == 0);
    fifo_reader reader = {.path = fifo};
    pthread_t thread;
    REQUIRE(pthread_create(&thread, NULL, read_fifo, &reader) == 0);
    const char *argv3[] = GEN_ARGS(fifo);
    status = it_run(argv3, NULL, RUN_TIMEOUT_MS, &sout, &serr);
    if (status != 0) {
        /* Unblock the reader if the CLI never opened the FIFO. */
        int fd = open(fifo, O_WRONLY | O_NONBLOCK);
        if (fd >= 0)
            close(fd);
    }
    pthread_join(thread, NULL);
    CHECK_MSG(status == 0, "FIFO: exit %d\nstderr: %s", status, serr ? serr : "");
    if (reader.data)
        check_png((const uint8_t *)reader.data, reader.len, 32, 32);
    else
        CHECK_MSG(0, "nothing came through the FIFO");
    CHECK(lstat(fifo, &st) == 0 && S_ISFIFO(st.st_mode));
    free(reader.data);
    free(sout);
    free(serr);
    unlink(fifo);

    /* "-": the PNG on stdout, the report on stderr. */
    char captured[256];
    snprintf(captured, sizeof captured, "%s/stdout.bin", env.dir);
    const char *argv4[] = GEN_ARGS("-");
    status = run_cli_stdout_to(argv4, captured, &serr);
    CHECK_MSG(status == 0, "-: exit %d\nstderr: %s", status, serr ? serr : "");
    CHECK_CONTAINS(serr, "wrote - (32 x 32");
    png = it_read_file(captured, &len);
    if (png)
        check_png((const uint8_t *)png, len, 32, 32);
    free(png);
    free(serr);
    unlink(captured);

    /* A folder is not replaced. */
    char folder[256];
    snprintf(folder, sizeof folder, "%s/a_folder", env.dir);
    REQUIRE(mkdir(folder, 0755) == 0);
    const char *argv5[] = GEN_ARGS(folder);
    status = it_run(argv5, NULL, RUN_TIMEOUT_MS, &sout, &serr);
    CHECK_MSG(status == 1, "a folder: exit %d", status);
    CHECK_CONTAINS(serr, "is a folder: not replaced");
    CHECK(stat(folder, &st) == 0 && S_ISDIR(st.st_mode));
    free(sout);
    free(serr);
    rmdir(folder);
#undef GEN_ARGS
}

/* Ctrl-C: the CLI sends Cancel, waits for the daemon's answer and exits 130. */
static void test_cli_interrupt(void)
{
    char out[256], errlog[256];
    snprintf(out, sizeof out, "%s/never.png", env.dir);
    snprintf(errlog, sizeof errlog, "%s/cli_stderr.txt", env.dir);
    char steps[16];
    snprintf(steps, sizeof steps, "%d", LONG_STEPS);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int fd = open(errlog, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int devnull = open("/dev/null", O_RDWR);
        if (fd < 0 || devnull < 0)
            _exit(127);
        dup2(devnull, 0);
        dup2(devnull, 1);
        dup2(fd, 2);
        execl(cli, cli, "--socket", env.socket, "generate", "--prompt", "x", "--steps", steps,
              "--cfg-scale", "1", "--height", "64", "--width", "64", "-o", out, (char *)NULL);
        _exit(127);
    }
    /* Interrupt once the first step is reported. */
    int seen = 0;
    for (uint64_t start = it_now_ms(); !seen && it_now_ms() - start < RUN_TIMEOUT_MS;) {
        char *text = it_read_file(errlog, NULL);
        seen = text && strstr(text, "denoise 1/");
        free(text);
        if (!seen) {
            int status;
            if (waitpid(pid, &status, WNOHANG) == pid) {
                pid = -1;
                break;
            }
            usleep(50000);
        }
    }
    CHECK_MSG(seen, "the CLI reported no denoising step");
    int status = -1;
    if (pid > 0) {
        kill(pid, SIGINT);
        CHECK_MSG(it_wait_pid(pid, RUN_TIMEOUT_MS, &status) == 0, "the CLI did not exit");
    }
    char *text = it_read_file(errlog, NULL);
    CHECK_MSG(status == 130, "exit %d, stderr:\n%s", status, text ? text : "");
    CHECK_CONTAINS(text, "cancelled");
    free(text);
    CHECK(access(out, F_OK) != 0);
    unlink(errlog);
    unsigned queued, running;
    jobs_now(&queued, &running);
    CHECK_MSG(queued == 0 && running == 0, "%u queued, %u running", queued, running);
}

/* Two loaded models of one role's name: the request must say which. */
static void test_ambiguous_role(void)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    /* The same files under another client name are deduplicated; a copy is a new model. */
    char copy[256];
    snprintf(copy, sizeof copy, "%s/Qwen-Image/vae/copy.safetensors", env.models);
    REQUIRE(copy_file(set.vae, copy) == 0);
    char *paths[1] = {copy};
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_load_tag;
    req.body.load.paths = paths;
    req.body.load.paths_count = 1;
    int rc = it_call(c, &req, &resp);
    CHECK_MSG(rc == DS_CLIENT_OK, "loading the copy: %s", ds_client_last_error(c));
    char copy_id[32] = "";
    if (rc == DS_CLIENT_OK && resp.body.load_result.models_count == 1)
        snprintf(copy_id, sizeof copy_id, "%s", resp.body.load_result.models[0].model_id);
    ds_client_envelope_free(&resp);
    char needle[128];
    snprintf(needle, sizeof needle, "several loaded models could be the vae: %s, %s", vae_id,
             copy_id);
    expect_error(&(request_spec){.params = quick_params, .param_count = QUICK_COUNT},
                 diffsynth_v1_Code_INVALID_ARGUMENT, needle);

    diffsynth_v1_Envelope un = diffsynth_v1_Envelope_init_zero;
    un.which_body = diffsynth_v1_Envelope_unload_tag;
    un.body.unload.model_id = copy_id;
    un.body.unload.all_references = true;
    rc = it_call(c, &un, &resp);
    CHECK_MSG(rc == DS_CLIENT_OK, "unloading the copy: %s", ds_client_last_error(c));
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    unlink(copy);
}

/* --- a model file rewritten while a pipeline runs ---------------------------------------- */

/* The same bytes written again over the VAE's last ones: only its modification time changes. */
static void rewrite_vae(void *arg)
{
    int *done = arg;
    struct stat st;
    int fd = open(set.vae, O_WRONLY | O_CLOEXEC);
    uint8_t zero[4] = {0};
    *done = fd >= 0 && fstat(fd, &st) == 0 &&
            pwrite(fd, zero, sizeof zero, st.st_size - (off_t)sizeof zero) == sizeof zero;
    if (fd >= 0)
        close(fd);
}

/* The next unit after the rewrite finds the VAE stale and stops the pipeline before the
 * decode; the stale model is no candidate by name any more, and loading the file again by path
 * gives a fresh one that works. */
static void test_model_rewritten_mid_pipeline(void)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    static progress_log log;
    memset(&log, 0, sizeof log);
    int rewritten = 0;
    log.on_first_denoise = rewrite_vae;
    log.arg = &rewritten;
    char steps[16];
    snprintf(steps, sizeof steps, "%d", LONG_STEPS);
    ds_client_step_param params[] = {{"height", "64"}, {"width", "64"}, {"steps", steps},
                                     {"cfg_scale", "1"}, {"seed", "1"}};
    request_spec spec = {.params = params, .param_count = 5};
    ds_client_pipeline_result res;
    int rc = run_pipeline(c, &spec, &res, &log, NULL);
    CHECK(rewritten);
    CHECK_MSG(rc == DS_CLIENT_EDAEMON &&
                  ds_client_last_code(c) == diffsynth_v1_Code_FAILED_PRECONDITION,
              "rc %d code %s: %s", rc, ds_client_code_name(ds_client_last_code(c)),
              ds_client_last_error(c));
    CHECK_CONTAINS(ds_client_last_error(c), "is stale");
    CHECK_CONTAINS(ds_client_last_error(c), set.vae);
    CHECK_CONTAINS(ds_client_last_error(c), "modified in place");
    CHECK_MSG(log.denoise_seen < LONG_STEPS, "%d denoise events", log.denoise_seen);
    ds_client_pipeline_result_free(&res);

    spec = (request_spec){.params = quick_params, .param_count = QUICK_COUNT};
    rc = run_pipeline(c, &spec, &res, NULL, NULL);
    CHECK_MSG(rc == DS_CLIENT_EDAEMON &&
                  ds_client_last_code(c) == diffsynth_v1_Code_FAILED_PRECONDITION,
              "rc %d: %s", rc, ds_client_last_error(c));
    CHECK_CONTAINS(ds_client_last_error(c), "is stale");
    ds_client_pipeline_result_free(&res);

    const char *vae[] = {set.vae};
    ds_client_pipeline_model fresh = {.role = "vae", .paths = vae, .path_count = 1};
    spec.models = &fresh;
    spec.model_count = 1;
    rc = run_pipeline(c, &spec, &res, NULL, NULL);
    CHECK_MSG(rc == DS_CLIENT_OK, "after loading the VAE again: rc %d: %s", rc,
              ds_client_last_error(c));
    ds_client_pipeline_result_free(&res);
    ds_client_close(c);
    check_unharmed();
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s DIFFSYNTHD DIFFSYNTH\n", argv[0]);
        return 2;
    }
    cli = argv[2];
    it_env_init(&env, argv[1]);
    if (it_make_qwen_image_set(&env, &set) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    const char *extra[] = {"--model-configs", set.configs, "--threads", "2", NULL};
    if (it_daemon_start(&env, extra) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    RUN(test_bad_requests);
    RUN(test_generate_from_paths);
    RUN(test_models_by_id_and_name);
    RUN(test_input_tensors);
    RUN(test_named_tensors);
    RUN(test_prompt_too_long);
    RUN(test_ambiguous_role);
    RUN(test_cancel_mid_denoise);
    RUN(test_two_clients_interleave);
    RUN(test_cli_generate);
    RUN(test_cli_output_targets);
    RUN(test_cli_interrupt);
    RUN(test_model_rewritten_mid_pipeline);

    int status = -1;
    if (it_daemon_stop(&env, &status) != 0 || status != 0) {
        fprintf(stderr, "FAIL the daemon did not stop cleanly (status %d)\n", status);
        test_failures++;
    }
    if (test_failures)
        it_dump_log(&env);
    it_env_cleanup(&env);
    return test_summary();
}
