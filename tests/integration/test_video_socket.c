/* RunPipeline's video path over the socket, on diffsynthd-video-test: diffsynthd with one more
 * pipeline, test_video (video_daemon/test_video_pipeline.c), whose frames are
 * tools/video_probe.c's smooth frames. The MP4 the daemon sends decodes (libavformat, opened
 * here on the file) to the frames' count, size and fps within PSNR 35 dB; lossless WebP and raw
 * frames come back exact, through the shared-memory region when large; video inputs are
 * checked by name; a video job is cancelled mid-run; `diffsynth pipelines` and `diffsynth
 * generate` show and write videos. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/video_read.h"
#include "core/video_write.h"
#include "harness.h"
#include "test.h"
#include "tools/video_probe.h"

#define RUN_TIMEOUT_MS 120000

static it_env env;
static const char *cli;

typedef struct video_request {
    const char *format;
    double fps;
    int quality;
    bool lossless;
    bool named_outputs;
    const ds_client_step_param *params;
    size_t param_count;
    const ds_client_tensor *inputs;
    size_t input_count;
    ds_client_cancel_flag *cancel;
    ds_client_progress_fn on_progress;
} video_request;

static int run(ds_client *c, const video_request *v, ds_client_pipeline_result *res)
{
    ds_client_pipeline_request r = {
        .pipeline = "test_video",
        .prompt = "frames",
        .params = v->params,
        .param_count = v->param_count,
        .inputs = v->inputs,
        .input_count = v->input_count,
        .named_outputs = v->named_outputs,
        .video_format = v->format,
        .fps = v->fps,
        .video_quality = v->quality,
        .video_lossless = v->lossless,
        .cancel = v->cancel,
    };
    return ds_client_run_pipeline(c, &r, res, RUN_TIMEOUT_MS, v->on_progress, v->cancel, NULL);
}

static const ds_client_tensor *output(const ds_client_pipeline_result *res, const char *name)
{
    for (size_t i = 0; i < res->output_count; i++)
        if (strcmp(res->outputs[i].name, name) == 0)
            return &res->outputs[i];
    return NULL;
}

/* The last progress event's phase and message. */
static char last_phase[32], last_message[32];

static void note_phase(const diffsynth_v1_Progress *p, uint64_t request_id, void *user)
{
    (void)request_id;
    (void)user;
    snprintf(last_phase, sizeof last_phase, "%s", p->phase ? p->phase : "");
    snprintf(last_message, sizeof last_message, "%s", p->message ? p->message : "");
}

static const ds_client_step_param size_9x64x96[] = {
    {"num_frames", "9"}, {"height", "64"}, {"width", "96"}, {"seed", "77"}};

static void test_mp4(void)
{
    if (!ds_video_mp4_supported()) {
        printf("# this build writes no MP4: the case is skipped\n");
        return;
    }
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    ds_client_pipeline_result res;
    video_request v = {.fps = 24, .named_outputs = true, .params = size_9x64x96,
                       .param_count = 4, .on_progress = note_phase};
    int rc = run(c, &v, &res);
    CHECK_MSG(rc == DS_CLIENT_OK, "%s", ds_client_last_error(c));
    /* The encode had a turn of its own, announced after the decode. */
    CHECK_STR_EQ(last_phase, "video");
    CHECK_STR_EQ(last_message, "mp4");
    const ds_client_tensor *video = output(&res, "video"), *lat = output(&res, "latents");
    REQUIRE(rc == DS_CLIENT_OK && video && lat);
    CHECK(video->dtype == diffsynth_v1_DType_U8 && video->ndim == 1 &&
          (size_t)video->shape[0] == video->nbytes);
    CHECK(lat->dtype == diffsynth_v1_DType_F32 && lat->nbytes == 4 &&
          *(const float *)lat->data == 77.0f);
    char path[256];
    snprintf(path, sizeof path, "%s/reply.mp4", env.dir);
    REQUIRE(it_write_file(path, video->data, video->nbytes) == 0);
#if DS_HAVE_FFMPEG
    ds_probed_video p;
    CHECK(ds_probe_video_file(path, &p) == 0);
    CHECK_MSG(p.frames == 9 && p.width == 96 && p.height == 64, "%u frames of %u x %u",
              p.frames, p.width, p.height);
    CHECK_MSG(p.rate.num == 24 && p.rate.den == 1, "rate %d/%d", p.rate.num, p.rate.den);
    uint8_t *frames = ds_test_smooth_frames(9, 64, 96);
    if (frames && p.frames == 9) {
        size_t fb = (size_t)64 * 96 * 3;
        for (int i = 0; i < 9; i++) {
            double q = ds_test_psnr(frames + i * fb, p.rgb + i * fb, fb);
            CHECK_MSG(q >= 35.0, "frame %d PSNR %.2f dB", i, q);
        }
    }
    free(frames);
    free(p.rgb);
#endif
    ds_client_pipeline_result_free(&res);
    ds_client_close(c);
}

static void test_webp_and_raw_frames(void)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    uint8_t *frames = ds_test_smooth_frames(9, 64, 96);
    REQUIRE(frames);
    size_t n = (size_t)9 * 64 * 96 * 3;

    ds_client_pipeline_result res;
    video_request v = {.format = "webp", .lossless = true, .named_outputs = true,
                       .params = size_9x64x96, .param_count = 4};
    int rc = run(c, &v, &res);
    CHECK_MSG(rc == DS_CLIENT_OK, "%s", ds_client_last_error(c));
    const ds_client_tensor *video = output(&res, "video");
    if (rc == DS_CLIENT_OK && video) {
        ds_video d;
        ds_error err;
        rc = ds_video_decode(video->data, video->nbytes, "reply.webp",
                             DS_VIDEO_READ_DEFAULT_MAX_BYTES, &d, &err);
        CHECK_MSG(rc == DS_OK, "%s", err.message);
        CHECK(rc != DS_OK || (d.t == 9 && d.height == 64 && d.width == 96 &&
                              memcmp(d.rgb, frames, n) == 0));
        ds_video_free(&d);
    }
    ds_client_pipeline_result_free(&res);

    /* Raw frames: 166 KB, past the client's inline limit, so through the output region. */
    v = (video_request){.format = "frames", .named_outputs = true, .params = size_9x64x96,
                        .param_count = 4, .on_progress = note_phase};
    rc = run(c, &v, &res);
    CHECK_MSG(rc == DS_CLIENT_OK, "%s", ds_client_last_error(c));
    CHECK_STR_EQ(last_phase, "decode"); /* nothing to encode */
    video = output(&res, "video");
    if (rc == DS_CLIENT_OK && video) {
        CHECK(video->dtype == diffsynth_v1_DType_U8 && video->ndim == 4);
        CHECK(video->shape[0] == 9 && video->shape[1] == 64 && video->shape[2] == 96 &&
              video->shape[3] == 3);
        CHECK(video->nbytes == n && memcmp(video->data, frames, n) == 0);
    }
    ds_client_pipeline_result_free(&res);

    /* A video input comes back as the frames, unchanged. */
    for (size_t i = 0; i < n; i += 7)
        frames[i] ^= 0x5a;
    ds_client_tensor in = {.name = "input_video", .dtype = diffsynth_v1_DType_U8, .ndim = 4,
                           .shape = {9, 64, 96, 3}, .data = frames, .nbytes = n};
    v.inputs = &in;
    v.input_count = 1;
    v.param_count = 0;
    rc = run(c, &v, &res);
    CHECK_MSG(rc == DS_CLIENT_OK, "%s", ds_client_last_error(c));
    video = output(&res, "video");
    CHECK(rc != DS_CLIENT_OK || (video && video->nbytes == n &&
                                 memcmp(video->data, frames, n) == 0));
    ds_client_pipeline_result_free(&res);
    free(frames);
    ds_client_close(c);
}

static void expect_error(const video_request *v, int code, const char *needle)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    ds_client_pipeline_result res;
    int rc = run(c, v, &res);
    CHECK_MSG(rc == DS_CLIENT_EDAEMON && ds_client_last_code(c) == code,
              "rc %d code %s (wanted %s): %s", rc, ds_client_code_name(ds_client_last_code(c)),
              ds_client_code_name(code), ds_client_last_error(c));
    CHECK_CONTAINS(ds_client_last_error(c), needle);
    ds_client_pipeline_result_free(&res);
    ds_client_close(c);
}

static void test_bad_requests(void)
{
    expect_error(&(video_request){0}, diffsynth_v1_Code_INVALID_ARGUMENT,
                 "run_pipeline.named_outputs is false, but test_video's output \"video\" (a "
                 "video)");
    expect_error(&(video_request){.named_outputs = true, .format = "gif"},
                 diffsynth_v1_Code_INVALID_ARGUMENT, "run_pipeline.video_format \"gif\"");
    expect_error(&(video_request){.named_outputs = true, .fps = 5000},
                 diffsynth_v1_Code_INVALID_ARGUMENT, "run_pipeline.fps 5000");
    expect_error(&(video_request){.named_outputs = true, .format = "webp", .quality = 101},
                 diffsynth_v1_Code_INVALID_ARGUMENT, "run_pipeline.video_quality 101");

    static uint8_t pixels[2 * 4 * 4 * 4];
    static const struct {
        int dtype, ndim;
        int64_t shape[4];
        size_t bytes;
        const char *needle;
    } bad[] = {
        {diffsynth_v1_DType_U8, 3, {4, 4, 3}, 48, "run_pipeline.input_video has 3 dims, expected 4"},
        {diffsynth_v1_DType_U8, 4, {0, 4, 4, 3}, 0, "run_pipeline.input_video has 0 frames"},
        {diffsynth_v1_DType_U8, 4, {2, 4, 4, 4}, 128, "run_pipeline.input_video has 4 channels"},
        {diffsynth_v1_DType_F32, 4, {1, 2, 2, 3}, 48, "run_pipeline.input_video: dtype 1, expected U8"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ds_client_tensor in = {.name = "input_video", .dtype = bad[i].dtype, .ndim = bad[i].ndim,
                               .data = pixels, .nbytes = bad[i].bytes};
        memcpy(in.shape, bad[i].shape, sizeof bad[i].shape);
        expect_error(&(video_request){.named_outputs = true, .format = "frames", .inputs = &in,
                                      .input_count = 1},
                     diffsynth_v1_Code_INVALID_ARGUMENT, bad[i].needle);
    }
}

/* The third denoising step raises the cancel flag (user). */
static void cancel_at_step_3(const diffsynth_v1_Progress *p, uint64_t request_id, void *user)
{
    (void)request_id;
    if (p->phase && strcmp(p->phase, "denoise") == 0 && p->done >= 3)
        ds_client_cancel_flag_raise(user);
}

/* Cancelled while its steps run: CANCELLED at a unit boundary, and the daemon goes on. The
 * steps after the third last 20 s, which this process, however busy the machine, has to raise
 * the flag in; a cancelled job ends after the step that sees it. */
static void test_cancel(void)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    ds_client_cancel_flag *flag = ds_client_cancel_flag_new();
    REQUIRE(flag);
    static const ds_client_step_param slow[] = {{"steps", "1000"}, {"step_ms", "20"}};
    video_request v = {.named_outputs = true, .params = slow, .param_count = 2, .cancel = flag,
                       .on_progress = cancel_at_step_3};
    ds_client_pipeline_result res;
    int rc = run(c, &v, &res);
    CHECK_MSG(rc == DS_CLIENT_EDAEMON && ds_client_last_code(c) == diffsynth_v1_Code_CANCELLED,
              "rc %d: %s", rc, ds_client_last_error(c));
    CHECK_CONTAINS(ds_client_last_error(c), "cancelled after ");
    CHECK_CONTAINS(ds_client_last_error(c), " of 1002 units");
    ds_client_pipeline_result_free(&res);
    ds_client_cancel_flag_free(flag);
    ds_client_close(c);
    CHECK(it_status_ok(&env));
}

/* The video file or PNG folder at `path` holds exactly `frames` ([t, 32, 48, 3]). */
static void check_exact(const char *path, const uint8_t *frames, uint32_t t)
{
    ds_video d;
    ds_error e;
    int rc = ds_video_read_file(path, DS_VIDEO_READ_DEFAULT_MAX_BYTES, &d, &e);
    CHECK_MSG(rc == DS_OK, "%s", e.message);
    CHECK_MSG(rc != DS_OK || (d.t == t && d.height == 32 && d.width == 48 &&
                              memcmp(d.rgb, frames, (size_t)t * 32 * 48 * 3) == 0),
              "%s: %u frames of %u x %u, or other pixels", path, d.t, d.width, d.height);
    ds_video_free(&d);
}

static void test_cli(void)
{
    char *out = NULL, *err = NULL;
    const char *pipelines[] = {cli, "--socket", env.socket, "pipelines", NULL};
    int status = it_run(pipelines, NULL, RUN_TIMEOUT_MS, &out, &err);
    CHECK_MSG(status == 0, "pipelines: exit %d: %s", status, err ? err : "");
    CHECK_CONTAINS(out, "test_video: ");
    CHECK_CONTAINS(out, "(video: sent as an MP4 or WebP file, or raw frames)");
    CHECK_CONTAINS(out, "(video: read from a video file or a folder of PNGs)");
    free(out);
    free(err);

    /* -o's extension picks the file; the report says what was written. */
    char mp4[256], webp[256], folder[256];
    snprintf(mp4, sizeof mp4, "%s/cli.mp4", env.dir);
    snprintf(webp, sizeof webp, "%s/cli.webp", env.dir);
    snprintf(folder, sizeof folder, "%s/cli_frames/", env.dir);
    if (ds_video_mp4_supported()) {
        const char *gen[] = {cli, "--socket", env.socket, "generate", "--pipeline", "test_video",
                             "--prompt", "x", "--frames", "9", "--height", "32", "--width",
                             "48", "--fps", "12", "-o", mp4, NULL};
        status = it_run(gen, NULL, RUN_TIMEOUT_MS, &out, &err);
        CHECK_MSG(status == 0, "generate -o cli.mp4: exit %d\nstderr: %s", status,
                  err ? err : "");
        CHECK_CONTAINS(out, "(48 x 32, mp4, 9 frames at 12 fps, 2 steps;");
        ds_video d;
        ds_error e;
        int rc = ds_video_read_file(mp4, DS_VIDEO_READ_DEFAULT_MAX_BYTES, &d, &e);
        CHECK_MSG(rc == DS_OK, "%s", e.message);
        CHECK(rc != DS_OK || (d.t == 9 && d.width == 48 && d.height == 32 && d.fps == 12.0));
        ds_video_free(&d);
        free(out);
        free(err);
    }
    uint8_t *frames = ds_test_smooth_frames(5, 32, 48);
    REQUIRE(frames);
    const char *lossless[] = {cli, "--socket", env.socket, "generate", "--pipeline",
                              "test_video", "--prompt", "x", "--lossless", "-o", webp, NULL};
    status = it_run(lossless, NULL, RUN_TIMEOUT_MS, &out, &err);
    CHECK_MSG(status == 0, "generate -o cli.webp: exit %d\nstderr: %s", status, err ? err : "");
    check_exact(webp, frames, 5);
    free(out);
    free(err);

    /* A folder of PNG frames from raw frames, then the same folder as an input video: the
     * pipeline gives it back, written to a second folder. */
    const char *pngs[] = {cli, "--socket", env.socket, "generate", "--pipeline", "test_video",
                          "--prompt", "x", "--json", "-o", folder, NULL};
    status = it_run(pngs, NULL, RUN_TIMEOUT_MS, &out, &err);
    CHECK_MSG(status == 0, "generate -o cli_frames/: exit %d\nstderr: %s", status,
              err ? err : "");
    CHECK_CONTAINS(out, "\"format\": \"png\"");
    CHECK_CONTAINS(out, "\"frames\": 5");
    check_exact(folder, frames, 5);
    free(out);
    free(err);
    char again[256];
    snprintf(again, sizeof again, "%s/cli_again", env.dir);
    const char *echo[] = {cli, "--socket", env.socket, "generate", "--pipeline", "test_video",
                          "--prompt", "x", "--input-video", folder, "-o", again, NULL};
    status = it_run(echo, NULL, RUN_TIMEOUT_MS, &out, &err);
    CHECK_MSG(status == 0, "--input-video cli_frames/: exit %d\nstderr: %s", status,
              err ? err : "");
    check_exact(again, frames, 5);
    free(out);
    free(err);

    /* A folder that already holds frames: refused before the run (which would take 1000 s). */
    const char *full[] = {cli, "--socket", env.socket, "generate", "--pipeline", "test_video",
                          "--prompt", "x", "--param", "steps=1000", "--param", "step_ms=1000",
                          "-o", folder, NULL};
    status = it_run(full, NULL, RUN_TIMEOUT_MS, &out, &err);
    CHECK_MSG(status == 1, "-o a folder of PNGs: exit %d", status);
    CHECK_CONTAINS(err, "the folder already holds PNG files");
    free(out);
    free(err);

    /* A file that is not a video: refused here, naming the option and the file. */
    char notes[256];
    snprintf(notes, sizeof notes, "%s/notes.mp4", env.dir);
    REQUIRE(it_write_file(notes, "plain text", 10) == 0);
    const char *bad[] = {cli, "--socket", env.socket, "generate", "--pipeline", "test_video",
                         "--prompt", "x", "--input-video", notes, "-o", webp, NULL};
    status = it_run(bad, NULL, RUN_TIMEOUT_MS, &out, &err);
    CHECK_MSG(status == 1, "a text file as --input-video: exit %d", status);
    CHECK_CONTAINS(err, "error: --input-video ");
    CHECK_CONTAINS(err, "notes.mp4");
    free(out);
    free(err);
    free(frames);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s DIFFSYNTHD_VIDEO_TEST DIFFSYNTH\n", argv[0]);
        return 2;
    }
    cli = argv[2];
    unsetenv("DIFFSYNTH_SOCKET");
    it_env_init(&env, argv[1]);
    if (it_daemon_start(&env, NULL) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    RUN(test_mp4);
    RUN(test_webp_and_raw_frames);
    RUN(test_bad_requests);
    RUN(test_cancel);
    RUN(test_cli);
    int status = -1;
    if (it_daemon_stop(&env, &status) != 0 || status != 0)
        CHECK_MSG(0, "the daemon exited with %d", status);
    it_env_cleanup(&env);
    return test_summary();
}
