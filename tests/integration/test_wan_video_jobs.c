/* The Wan video pipeline through the daemon with real (reduced) models beside an image job: a
 * wan_video job and a qwen_image job from two clients take turns unit by unit (the video's
 * decode tile by tile), and a video job cancelled at its first decode tile ends CANCELLED
 * between tiles while the daemon goes on serving.
 *
 * The models are the harness's header-only sets (zero weights: every unit runs its full
 * computation; the numbers are not the point here): Wan2.1-T2V-1.3B's UMT5 text encoder and
 * DiT cut to one block, the real Wan2.1 VAE, the small SentencePiece model; Qwen-Image's text
 * encoder and DiT cut to one block and its real VAE. Videos are 5 frames of 64 x 64 decoded in
 * 2 x 2 overlapping tiles (6 x 6 latents, stride 4), 2 steps, cfg_scale 1. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "test.h"

/* A unit under ASan on two busy cores (the UMT5 layer over 512 tokens is the slowest) may keep
 * a client waiting this long between frames. */
#define RUN_TIMEOUT_MS 300000
#define MAX_EVENTS 512
#define VIDEO_TILES 4

static it_env env;
static it_wan_video_set wan;
static it_qwen_image_set qwen;

typedef struct event {
    char phase[16];
    uint64_t done, total;
    uint64_t at_ms; /* when the client received it */
} event;

typedef struct job {
    const char *pipeline;
    const ds_client_step_param *params;
    size_t param_count;
    const ds_client_pipeline_model *models;
    size_t model_count;
    const char *video_format;
    ds_client_cancel_flag *cancel; /* raised at the first "decode" event when set */
    struct job *start_at_first_denoise; /* started from this job's first "denoise" event */
    event ev[MAX_EVENTS];
    int count, denoise_seen, decode_seen;
    ds_client_pipeline_result res;
    int rc, code;
    char error[512];
    pthread_t thread;
    int started;
} job;

static void *job_main(void *p);

static void on_progress(const diffsynth_v1_Progress *p, uint64_t request_id, void *user)
{
    (void)request_id;
    job *j = user;
    const char *phase = p->phase ? p->phase : "";
    if (j->count < MAX_EVENTS) {
        event *e = &j->ev[j->count++];
        snprintf(e->phase, sizeof e->phase, "%s", phase);
        e->done = p->done;
        e->total = p->total;
        e->at_ms = it_now_ms();
    }
    if (strcmp(phase, "denoise") == 0 && ++j->denoise_seen == 1 && j->start_at_first_denoise) {
        job *next = j->start_at_first_denoise;
        next->started = pthread_create(&next->thread, NULL, job_main, next) == 0;
    }
    if (strcmp(phase, "decode") == 0 && ++j->decode_seen == 1 && j->cancel)
        ds_client_cancel_flag_raise(j->cancel);
}

static void *job_main(void *p)
{
    job *j = p;
    ds_client *c = it_connect(&env);
    if (!c) {
        j->rc = DS_CLIENT_ECONNECT;
        return NULL;
    }
    ds_client_pipeline_request r = {
        .pipeline = j->pipeline,
        .prompt = "a red fox running through the snow",
        .params = j->params,
        .param_count = j->param_count,
        .models = j->models,
        .model_count = j->model_count,
        .named_outputs = j->video_format != NULL,
        .video_format = j->video_format,
        .cancel = j->cancel,
    };
    j->rc = ds_client_run_pipeline(c, &r, &j->res, RUN_TIMEOUT_MS, on_progress, j, NULL);
    if (j->rc != DS_CLIENT_OK) {
        j->code = ds_client_last_code(c);
        snprintf(j->error, sizeof j->error, "%s", ds_client_last_error(c));
    }
    ds_client_close(c);
    return NULL;
}

static const ds_client_step_param video_params[] = {
    {"num_frames", "5"},   {"height", "64"},      {"width", "64"},
    {"steps", "2"},        {"cfg_scale", "1"},    {"seed", "42"},
    {"tile_size_h", "6"},  {"tile_size_w", "6"},  {"tile_stride_h", "4"},
    {"tile_stride_w", "4"},
};
#define VIDEO_PARAM_COUNT (sizeof video_params / sizeof video_params[0])

static const ds_client_step_param image_params[] = {
    {"height", "64"}, {"width", "64"}, {"steps", "3"}, {"cfg_scale", "1"}, {"seed", "7"}};

static ds_client_pipeline_model wan_models[3], qwen_models[3];
static const char *wan_paths[3], *qwen_paths[3];

static void set_models(void)
{
    static const char *const roles[] = {"text_encoder", "dit", "vae"};
    wan_paths[0] = wan.text_encoder, wan_paths[1] = wan.dit, wan_paths[2] = wan.vae;
    qwen_paths[0] = qwen.text_encoder, qwen_paths[1] = qwen.dit, qwen_paths[2] = qwen.vae;
    for (int i = 0; i < 3; i++) {
        wan_models[i] = (ds_client_pipeline_model){.role = roles[i], .paths = &wan_paths[i],
                                                    .path_count = 1};
        qwen_models[i] = (ds_client_pipeline_model){.role = roles[i], .paths = &qwen_paths[i],
                                                     .path_count = 1};
    }
}

static void video_job(job *j)
{
    memset(j, 0, sizeof *j);
    j->pipeline = "wan_video";
    j->params = video_params;
    j->param_count = VIDEO_PARAM_COUNT;
    j->models = wan_models;
    j->model_count = 3;
    j->video_format = "frames";
}

/* Each "decode" event is one tile, counted 1..VIDEO_TILES of VIDEO_TILES. */
static void check_decode_events(const job *j, int expect)
{
    int seen = 0;
    for (int i = 0; i < j->count; i++) {
        if (strcmp(j->ev[i].phase, "decode") != 0)
            continue;
        seen++;
        CHECK_MSG(j->ev[i].done == (uint64_t)seen && j->ev[i].total == VIDEO_TILES,
                  "decode event %d: %llu of %llu", seen, (unsigned long long)j->ev[i].done,
                  (unsigned long long)j->ev[i].total);
    }
    CHECK_MSG(seen == expect, "%d decode events, expected %d", seen, expect);
}

/* How many of b's unit events arrived strictly between two of a's: each such event is a unit
 * of b that ran while a was between units. */
static int events_inside(const job *a, const job *b)
{
    if (a->count < 2)
        return 0;
    uint64_t first = a->ev[0].at_ms, last = a->ev[a->count - 1].at_ms;
    int n = 0;
    for (int i = 0; i < b->count; i++)
        n += b->ev[i].at_ms > first && b->ev[i].at_ms < last;
    return n;
}

/* The image job starts at the video's first step: the two take turns, the image's units
 * landing between the video's (its steps and its decode tiles) and the other way round. */
static void test_video_and_image_interleave(void)
{
    static job video, image;
    video_job(&video);
    memset(&image, 0, sizeof image);
    image.pipeline = "qwen_image";
    image.params = image_params;
    image.param_count = sizeof image_params / sizeof image_params[0];
    image.models = qwen_models;
    image.model_count = 3;
    video.start_at_first_denoise = &image;
    REQUIRE(pthread_create(&video.thread, NULL, job_main, &video) == 0);
    pthread_join(video.thread, NULL);
    if (image.started)
        pthread_join(image.thread, NULL);
    CHECK_MSG(image.started, "the image job never started (no denoise event from the video)");
    CHECK_MSG(video.rc == DS_CLIENT_OK, "video job: rc %d: %s", video.rc, video.error);
    CHECK_MSG(image.rc == DS_CLIENT_OK, "image job: rc %d: %s", image.rc, image.error);
    if (video.rc != DS_CLIENT_OK || image.rc != DS_CLIENT_OK)
        goto done;
    check_decode_events(&video, VIDEO_TILES);
    int image_in_video = events_inside(&video, &image);
    int video_in_image = events_inside(&image, &video);
    fprintf(stderr, "  %d image events arrived between video events, %d video events between "
                    "image events; queued %.2f s (video) and %.2f s (image)\n",
            image_in_video, video_in_image, video.res.queue_s, image.res.queue_s);
    for (int i = 0; i < video.count; i++)
        fprintf(stderr, "    video %6llu ms %s %llu/%llu\n",
                (unsigned long long)(video.ev[i].at_ms - video.ev[0].at_ms), video.ev[i].phase,
                (unsigned long long)video.ev[i].done, (unsigned long long)video.ev[i].total);
    for (int i = 0; i < image.count; i++)
        fprintf(stderr, "    image %6llu ms %s %llu/%llu\n",
                (unsigned long long)(image.ev[i].at_ms - video.ev[0].at_ms), image.ev[i].phase,
                (unsigned long long)image.ev[i].done, (unsigned long long)image.ev[i].total);
    CHECK_MSG(image_in_video > 0, "no unit of the image job ran between the video's units");
    CHECK_MSG(video_in_image > 0, "no unit of the video job ran between the image's units");
    /* Both waited for the other's units at their boundaries. */
    CHECK_MSG(video.res.queue_s > 0.0 && image.res.queue_s > 0.0,
              "queued %.3f s (video), %.3f s (image)", video.res.queue_s, image.res.queue_s);
    /* The video's frames came back: 5 x 64 x 64 RGB. */
    CHECK(video.res.output_count >= 1 && strcmp(video.res.outputs[0].name, "video") == 0 &&
          video.res.outputs[0].nbytes == (size_t)5 * 64 * 64 * 3);
done:
    ds_client_pipeline_result_free(&video.res);
    ds_client_pipeline_result_free(&image.res);
}

/* Cancelled when the first decode tile is reported: CANCELLED between tiles, with where it
 * stopped; the daemon then runs the next job to the end. */
static void test_cancel_mid_decode(void)
{
    static job video, after;
    video_job(&video);
    video.cancel = ds_client_cancel_flag_new();
    REQUIRE(video.cancel);
    job_main(&video);
    CHECK_MSG(video.rc == DS_CLIENT_EDAEMON && video.code == diffsynth_v1_Code_CANCELLED,
              "rc %d code %d: %s", video.rc, video.code, video.error);
    CHECK_CONTAINS(video.error, "cancelled after 1 of 4 decode tiles");
    check_decode_events(&video, 1);
    ds_client_pipeline_result_free(&video.res);
    ds_client_cancel_flag_free(video.cancel);

    CHECK_MSG(it_status_ok(&env), "the daemon stopped answering after the cancel");
    /* A short untiled clip (one frame, one step) on the same models runs to the end. */
    static const ds_client_step_param short_params[] = {
        {"num_frames", "1"}, {"height", "64"}, {"width", "64"}, {"steps", "1"},
        {"cfg_scale", "1"},  {"tiled", "0"}};
    video_job(&after);
    after.params = short_params;
    after.param_count = sizeof short_params / sizeof short_params[0];
    job_main(&after);
    CHECK_MSG(after.rc == DS_CLIENT_OK, "the next video job: rc %d: %s", after.rc, after.error);
    CHECK(after.rc != DS_CLIENT_OK ||
          (after.res.output_count >= 1 && after.res.outputs[0].nbytes == (size_t)64 * 64 * 3));
    ds_client_pipeline_result_free(&after.res);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIFFSYNTHD\n", argv[0]);
        return 2;
    }
    it_env_init(&env, argv[1]);
    if (it_make_wan_video_set(&env, &wan) != 0 || it_make_qwen_image_set(&env, &qwen) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    set_models();
    const char *extra[] = {"--model-configs", wan.configs, "--model-configs", qwen.configs,
                           "--threads", "2", NULL};
    if (it_daemon_start(&env, extra) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    RUN(test_video_and_image_interleave);
    RUN(test_cancel_mid_decode);
    return it_finish(&env, test_failures);
}
