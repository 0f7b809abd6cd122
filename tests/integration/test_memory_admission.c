/* Memory admission and fair turns, through a real daemon:
 *   - RunPipeline 8192 x 8192 x 1000 steps is refused with RESOURCE_EXHAUSTED naming its size
 *     and the limit (it used to get the daemon killed by the kernel), and so is a valid-shaped
 *     DiT RunStep with 56 MiB of latents, sent inline in one frame as a careless client would,
 *     and a Wan VAE decode of 81 frames of 960 x 1664;
 *     meanwhile another client's small pipeline completes with the same latents as alone;
 *   - a small job of one client, behind six pipelines queued by another, waits about one unit
 *     per turn, not for the six pipelines;
 *   - what admitted requests hold adds up: under a --request-memory-limit of one pipeline's
 *     peak and 2.5 times its held bytes, a third pipeline is refused while two are admitted,
 *     and admitted once they are gone;
 *   - the estimates the daemon admits with are upper bounds of what it really allocates: its
 *     peak anonymous memory while a DiT step or a pipeline runs, sampled from /proc, for a few
 *     sizes, is below the estimate, and the estimate is not absurdly above it; for the Wan
 *     steps (the text encoder's forward, the VAEs' decode and encode) within WAN_MAX_RATIO
 *     of it. Weights are not in the estimates: what the CPU default keeps converted (the
 *     first f32 DiT step converts the bf16 weights once) is read from Status's host tier
 *     and taken off the growth.
 * The daemon runs under RLIMIT_AS, so a request the estimates let through by mistake fails an
 * allocation instead of the kernel killing the process (not under AddressSanitizer, whose
 * shadow memory needs the whole address space; the RSS checks are skipped there too, its
 * allocator keeps freed memory in quarantine).
 *
 * The models are those of test_run_pipeline: header-only safetensors (zero weights) of the DiT
 * and text encoder cut to one block, the real VAE key list, the test tokenizer; and the Wan
 * text encoder cut to one block and the real Wan2.1 and Wan2.2 VAE key lists
 * (it_make_wan_video_set, it_make_model). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "test.h"

#define RUN_TIMEOUT_MS 600000
/* The daemon's address space: the mapped models (~3.5 GB of holes, 4 GB more with the Wan
 * text encoder and VAEs) and room for the requests the estimates admit. */
#define ADDRESS_SPACE ((uint64_t)12 << 30)
#define FAIR_JOBS 6
#define FAIR_STEPS 2

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

/* The Wan steps' estimates may be at most this many times the measured peak. */
#define WAN_MAX_RATIO 3.0

static it_env env;
static it_qwen_image_set set;
static it_wan_video_set wan;
static char dit_id[32], wan_te_id[32], wan_vae_id[32], wan_vae38_id[32];
static uint8_t *reference_latents;
static size_t reference_size;

/* --- helpers ------------------------------------------------------------------------------- */

static const ds_client_step_param small_params[] = {
    {"height", "64"}, {"width", "64"}, {"steps", "2"}, {"cfg_scale", "1"}, {"seed", "42"},
};
#define SMALL_COUNT (sizeof small_params / sizeof small_params[0])

static int run_pipeline(ds_client *c, const ds_client_step_param *params, size_t count,
                        const ds_client_pipeline_model *models, size_t model_count,
                        ds_client_pipeline_result *res)
{
    ds_client_pipeline_request r = {
        .prompt = "a red bicycle",
        .params = params,
        .param_count = count,
        .models = models,
        .model_count = model_count,
    };
    return ds_client_run_pipeline(c, &r, res, RUN_TIMEOUT_MS, NULL, NULL, NULL);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* --- a small run for reference: also loads the models into the pool -------------------------- */

static void test_reference_run(void)
{
    const char *te[] = {set.text_encoder}, *dit[] = {set.dit}, *vae[] = {set.vae};
    ds_client_pipeline_model models[] = {
        {"text_encoder", NULL, te, 1}, {"dit", NULL, dit, 1}, {"vae", NULL, vae, 1}};
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    ds_client_pipeline_result res;
    int rc = run_pipeline(c, small_params, SMALL_COUNT, models, 3, &res);
    REQUIRE(rc == DS_CLIENT_OK || (fprintf(stderr, "%s\n", ds_client_last_error(c)), 0));
    reference_size = res.latents.nbytes;
    reference_latents = malloc(reference_size);
    REQUIRE(reference_latents);
    memcpy(reference_latents, res.latents.data, reference_size);
    ds_client_pipeline_result_free(&res);
    ds_client_close(c);
    char *pool = it_pool_snapshot(&env);
    REQUIRE(pool && it_pool_id(pool, "qwen_image_dit", dit_id, sizeof dit_id) == 0);
    free(pool);
}

/* --- refusals, while another client's job completes ---------------------------------------- */

typedef struct bystander {
    pthread_t thread;
    int rc;
    char error[256];
    int same_latents;
} bystander;

static void *bystander_main(void *p)
{
    bystander *b = p;
    ds_client *c = it_connect(&env);
    if (!c) {
        b->rc = DS_CLIENT_ECONNECT;
        return NULL;
    }
    ds_client_pipeline_result res;
    b->rc = run_pipeline(c, small_params, SMALL_COUNT, NULL, 0, &res);
    if (b->rc == DS_CLIENT_OK) {
        b->same_latents = res.latents.nbytes == reference_size &&
                          memcmp(res.latents.data, reference_latents, reference_size) == 0;
        ds_client_pipeline_result_free(&res);
    } else {
        snprintf(b->error, sizeof b->error, "%s", ds_client_last_error(c));
    }
    ds_client_close(c);
    return NULL;
}

static void test_huge_pipeline_refused(void)
{
    static const ds_client_step_param huge[] = {
        {"height", "8192"}, {"width", "8192"}, {"steps", "1000"}, {"seed", "1"}};
    bystander b = {0};
    REQUIRE(pthread_create(&b.thread, NULL, bystander_main, &b) == 0);
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    ds_client_pipeline_result res;
    double start = now_s();
    int rc = run_pipeline(c, huge, 4, NULL, 0, &res);
    double took = now_s() - start;
    CHECK(rc == DS_CLIENT_EDAEMON);
    CHECK(ds_client_last_code(c) == diffsynth_v1_Code_RESOURCE_EXHAUSTED);
    const char *message = ds_client_last_error(c);
    fprintf(stderr, "  8192x8192: %s\n", message);
    CHECK_CONTAINS(message, "qwen_image 8192x8192");
    CHECK_CONTAINS(message, "bytes");
    CHECK_CONTAINS(message, "request memory limit");
    /* Refused at once, not after running anything. */
    CHECK_MSG(took < 10.0, "the refusal took %.2f s", took);
    if (rc == DS_CLIENT_OK)
        ds_client_pipeline_result_free(&res);
    ds_client_close(c);
    pthread_join(b.thread, NULL);
    CHECK_MSG(b.rc == DS_CLIENT_OK, "the other client's job: rc %d: %s", b.rc, b.error);
    CHECK_MSG(b.same_latents, "the other client's latents differ from the run alone");
    CHECK(it_daemon_alive(&env) && it_status_ok(&env));
}

/* The Envelope of a DiT forward on latents [1, 16, H, W] f32 with all inputs inline, encoded by
 * hand: the client library's nanopb cannot hold a `bytes` field this large, the daemon's
 * decoder can (up to its frame cap). Proto field numbers from proto/diffsynth.proto. */
static void put_varint(uint8_t **p, uint64_t v)
{
    while (v >= 0x80) {
        *(*p)++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *(*p)++ = (uint8_t)v;
}

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* A Tensor message: name (1), dtype (2), shape (3, packed), data (4). Returns its length; with
 * out, writes it there (data zero). */
static size_t tensor_message(uint8_t *out, const char *name, int ndim, const int64_t *shape)
{
    uint64_t numel = 1, shape_len = 0;
    for (int i = 0; i < ndim; i++) {
        numel *= (uint64_t)shape[i];
        shape_len += varint_len((uint64_t)shape[i]);
    }
    uint64_t data = numel * 4;
    size_t len = 1 + varint_len(strlen(name)) + strlen(name) + 2 + 1 + varint_len(shape_len) +
                 shape_len + 1 + varint_len(data) + data;
    if (out) {
        uint8_t *p = out;
        *p++ = 0x0A;
        put_varint(&p, strlen(name));
        memcpy(p, name, strlen(name));
        p += strlen(name);
        *p++ = 0x10;
        *p++ = 1; /* DTYPE_F32 */
        *p++ = 0x1A;
        put_varint(&p, shape_len);
        for (int i = 0; i < ndim; i++)
            put_varint(&p, (uint64_t)shape[i]);
        *p++ = 0x22;
        put_varint(&p, data);
        memset(p, 0, data);
    }
    return len;
}

static void test_huge_dit_step_refused(void)
{
    /* 56 MiB of f32 latents: 896 x 1024 latent pixels, a 7168 x 8192 image. */
    const int64_t lat[4] = {1, 16, 896, 1024}, prompt[3] = {1, 8, 3584}, t[1] = {1};
    size_t lat_len = tensor_message(NULL, "latents", 4, lat);
    size_t prompt_len = tensor_message(NULL, "prompt_emb", 3, prompt);
    size_t t_len = tensor_message(NULL, "timestep", 1, t);
    size_t id_len = strlen(dit_id);
    /* RunStepRequest: model_id (1), step (2), inputs (3). */
    size_t body = 1 + varint_len(id_len) + id_len + 1 + 1 + 7 + 1 + varint_len(lat_len) +
                  lat_len + 1 + varint_len(prompt_len) + prompt_len + 1 + varint_len(t_len) +
                  t_len;
    fprintf(stderr, "  inline RunStep frame: %zu bytes\n", body);
    uint8_t *frame = malloc(4 + 16 + body);
    REQUIRE(frame);
    uint8_t *p = frame + 4;
    *p++ = 0x08; /* request_id (1) */
    put_varint(&p, 77);
    /* Envelope.run_step is field 40: tag (40 << 3) | 2. */
    put_varint(&p, (40 << 3) | 2);
    put_varint(&p, body);
    *p++ = 0x0A;
    put_varint(&p, id_len);
    memcpy(p, dit_id, id_len);
    p += id_len;
    *p++ = 0x12;
    *p++ = 7;
    memcpy(p, "forward", 7);
    p += 7;
    *p++ = 0x1A;
    put_varint(&p, lat_len);
    p += tensor_message(p, "latents", 4, lat);
    *p++ = 0x1A;
    put_varint(&p, prompt_len);
    p += tensor_message(p, "prompt_emb", 3, prompt);
    *p++ = 0x1A;
    put_varint(&p, t_len);
    p += tensor_message(p, "timestep", 1, t);
    uint32_t len = (uint32_t)(p - frame - 4);
    frame[0] = (uint8_t)len;
    frame[1] = (uint8_t)(len >> 8);
    frame[2] = (uint8_t)(len >> 16);
    frame[3] = (uint8_t)(len >> 24);

    bystander b = {0};
    REQUIRE(pthread_create(&b.thread, NULL, bystander_main, &b) == 0);
    int fd = it_raw_connect(env.socket);
    REQUIRE(fd >= 0);
    CHECK(it_raw_write(fd, frame, 4 + (size_t)len) == 0);
    free(frame);
    diffsynth_v1_Envelope reply;
    memset(&reply, 0, sizeof reply);
    int rc = it_raw_read_frame(fd, &reply, RUN_TIMEOUT_MS);
    CHECK_MSG(rc == 0, "no reply to the inline RunStep (rc %d)", rc);
    if (rc == 0) {
        CHECK(reply.request_id == 77);
        CHECK(reply.which_body == diffsynth_v1_Envelope_error_tag);
        if (reply.which_body == diffsynth_v1_Envelope_error_tag) {
            const char *message = reply.body.error.message ? reply.body.error.message : "";
            fprintf(stderr, "  56 MiB latents: %s\n", message);
            CHECK(reply.body.error.code == diffsynth_v1_Code_RESOURCE_EXHAUSTED);
            char what[64];
            snprintf(what, sizeof what, "run_step forward of %s needs an estimated", dit_id);
            CHECK_CONTAINS(message, what);
            CHECK_CONTAINS(message, "request memory limit");
        }
        ds_client_envelope_free(&reply);
    }
    close(fd);
    pthread_join(b.thread, NULL);
    CHECK_MSG(b.rc == DS_CLIENT_OK, "the other client's job: rc %d: %s", b.rc, b.error);
    CHECK_MSG(b.same_latents, "the other client's latents differ from the run alone");
    CHECK(it_daemon_alive(&env) && it_status_ok(&env));
}

/* --- fair turns ------------------------------------------------------------------------------ */

/* Jobs queued plus running, from Status on a fresh connection; -1 when Status fails. */
static int jobs_in_flight(void)
{
    ds_client *c = it_connect(&env);
    if (!c)
        return -1;
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_status_tag;
    int jobs = -1;
    if (it_call(c, &req, &resp) == DS_CLIENT_OK) {
        jobs = (int)(resp.body.status_result.jobs_queued + resp.body.status_result.jobs_running);
        ds_client_envelope_free(&resp);
    }
    ds_client_close(c);
    return jobs;
}

static void test_small_job_waits_one_turn(void)
{
    static const ds_client_step_param many_params[] = {
        {"height", "64"}, {"width", "64"}, {"steps", "2"}, {"cfg_scale", "1"}, {"seed", "5"}};
    ds_client *busy = it_connect(&env);
    REQUIRE(busy);
    uint64_t ids[FAIR_JOBS];
    for (int i = 0; i < FAIR_JOBS; i++) {
        diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
        diffsynth_v1_StepParam params[5];
        for (int k = 0; k < 5; k++) {
            params[k].name = (char *)many_params[k].name;
            params[k].value = (char *)many_params[k].value;
        }
        req.which_body = diffsynth_v1_Envelope_run_pipeline_tag;
        req.request_id = ids[i] = ds_client_next_id(busy);
        req.body.run_pipeline.pipeline = "qwen_image";
        req.body.run_pipeline.prompt = "busy";
        req.body.run_pipeline.negative_prompt = "";
        req.body.run_pipeline.dtype = "";
        req.body.run_pipeline.tokenizer = "";
        req.body.run_pipeline.params = params;
        req.body.run_pipeline.params_count = 5;
        REQUIRE(ds_client_send(busy, &req) == DS_CLIENT_OK);
    }
    /* The busy client's jobs queued, the first started (and at most that one done: each takes
     * four units), before the small job comes: a fixed pause would not tell, on a busy
     * machine, and a small job that came first would pass without showing anything. */
    int in_flight = -1;
    for (uint64_t until = it_now_ms() + IT_CALL_TIMEOUT_MS;
         (in_flight = jobs_in_flight()) >= 0 && in_flight < FAIR_JOBS - 1 && it_now_ms() < until;) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    CHECK_MSG(in_flight >= FAIR_JOBS - 1, "%d of the busy client's %d jobs in flight", in_flight,
              FAIR_JOBS);

    ds_client *small = it_connect(&env);
    REQUIRE(small);
    static const ds_client_step_param two_steps[] = {
        {"height", "64"}, {"width", "64"}, {"steps", "2"}, {"cfg_scale", "1"}, {"seed", "9"}};
    ds_client_pipeline_result res;
    int rc = run_pipeline(small, two_steps, 5, NULL, 0, &res);
    CHECK_MSG(rc == DS_CLIENT_OK, "the small job: %s", ds_client_last_error(small));
    double small_queue = rc == DS_CLIENT_OK ? res.queue_s : -1.0;
    if (rc == DS_CLIENT_OK)
        ds_client_pipeline_result_free(&res);
    ds_client_close(small);

    int done = 0;
    double unit_s = 0.0, busy_s = 0.0;
    while (done < FAIR_JOBS) {
        diffsynth_v1_Envelope env_in;
        memset(&env_in, 0, sizeof env_in);
        if (ds_client_recv(busy, &env_in, RUN_TIMEOUT_MS) != DS_CLIENT_OK) {
            CHECK_MSG(0, "the busy client's replies stopped after %d of %d", done, FAIR_JOBS);
            break;
        }
        if (env_in.which_body == diffsynth_v1_Envelope_run_pipeline_result_tag) {
            const diffsynth_v1_RunPipelineResponse *r = &env_in.body.run_pipeline_result;
            double unit = (r->encode_s + r->denoise_s + r->decode_s) / (FAIR_STEPS + 2);
            unit_s = unit > unit_s ? unit : unit_s;
            busy_s += r->encode_s + r->denoise_s + r->decode_s;
            done++;
        } else if (env_in.which_body == diffsynth_v1_Envelope_error_tag) {
            CHECK_MSG(0, "a busy job failed: %s", env_in.body.error.message);
            done++;
        }
        ds_client_envelope_free(&env_in);
    }
    ds_client_close(busy);
    /* The small job's four units each waited for one unit of the busy client (and the first
     * for the unit running when it came): about five units, where first in first out makes it
     * wait for all six pipelines, twenty-four units. */
    fprintf(stderr, "  small job queued %.3f s; the busy client's units took up to %.3f s, "
                    "%.3f s in all\n",
            small_queue, unit_s, busy_s);
    CHECK_MSG(small_queue >= 0.0 && small_queue <= 10.0 * unit_s + 0.5,
              "the small job waited %.3f s, units take up to %.3f s", small_queue, unit_s);
    CHECK_MSG(small_queue < 0.5 * busy_s, "the small job waited %.3f s of the busy client's "
              "%.3f s of work", small_queue, busy_s);
}

/* --- reservations add up -------------------------------------------------------------------- */

/* The daemon's last "admitted WHAT: H bytes held, P more" line. */
static int admitted_need(const it_env *e, const char *what, uint64_t *held, uint64_t *peak)
{
    char *log = it_read_file(e->log, NULL);
    if (!log)
        return -1;
    char needle[128];
    snprintf(needle, sizeof needle, "admitted %s: ", what);
    int found = -1;
    for (char *at = strstr(log, needle); at; at = strstr(at + 1, needle)) {
        unsigned long long h = 0, p = 0;
        if (sscanf(at + strlen(needle), "%llu bytes held, %llu more", &h, &p) == 2) {
            *held = h;
            *peak = p;
            found = 0;
        }
    }
    free(log);
    return found;
}

static void send_pipeline(ds_client *c, uint64_t id, const char *steps)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    diffsynth_v1_StepParam params[] = {
        {"height", "64"}, {"width", "64"}, {"steps", (char *)steps}, {"cfg_scale", "1"},
        {"seed", "8"}};
    req.which_body = diffsynth_v1_Envelope_run_pipeline_tag;
    req.request_id = id;
    req.body.run_pipeline.pipeline = "qwen_image";
    req.body.run_pipeline.prompt = "reserve";
    req.body.run_pipeline.negative_prompt = "";
    req.body.run_pipeline.dtype = "";
    req.body.run_pipeline.tokenizer = "";
    req.body.run_pipeline.params = params;
    req.body.run_pipeline.params_count = 5;
    CHECK(ds_client_send(c, &req) == DS_CLIENT_OK);
}

/* Units run one at a time, so peaks do not add up, but what requests hold until their replies
 * does. A second daemon gets a limit of one pipeline's peak plus two and a half times its held
 * bytes (both read from what the first daemon logged for the same request): two long pipelines
 * are admitted, a third is refused while they hold their reservations, and once they are gone
 * (their connection closed) the same request is admitted again. */
static void test_reservations_add_up(void)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    send_pipeline(c, 1, "2");
    diffsynth_v1_Envelope in;
    pb_size_t body;
    do {
        memset(&in, 0, sizeof in);
        REQUIRE(ds_client_recv(c, &in, RUN_TIMEOUT_MS) == DS_CLIENT_OK);
        body = in.which_body;
        ds_client_envelope_free(&in);
    } while (body == diffsynth_v1_Envelope_event_tag);
    CHECK(body == diffsynth_v1_Envelope_run_pipeline_result_tag);
    ds_client_close(c);
    uint64_t held = 0, peak = 0;
    const char *what = "qwen_image 64x64 (height x width), bf16";
    REQUIRE(admitted_need(&env, what, &held, &peak) == 0 && held > 0);
    char limit[64];
    snprintf(limit, sizeof limit, "%.9f", ((double)peak + 2.5 * (double)held) / 1073741824.0);

    static it_env limited;
    it_env_init(&limited, env.daemon_exe);
    const char *extra[] = {"--model-configs", set.configs, "--model-root", env.models,
                           "--threads", "2", "--request-memory-limit", limit, NULL};
    REQUIRE(it_daemon_start(&limited, extra) == 0);
    /* Loads the models by paths, then runs: the reference of what one pipeline reserves. */
    const char *te[] = {set.text_encoder}, *dit[] = {set.dit}, *vae[] = {set.vae};
    ds_client_pipeline_model models[] = {
        {"text_encoder", NULL, te, 1}, {"dit", NULL, dit, 1}, {"vae", NULL, vae, 1}};
    ds_client_pipeline_request r = {.prompt = "reserve", .models = models, .model_count = 3,
                                    .params = small_params, .param_count = SMALL_COUNT};
    ds_client_pipeline_result res;
    c = it_connect(&limited);
    REQUIRE(c);
    int rc = ds_client_run_pipeline(c, &r, &res, RUN_TIMEOUT_MS, NULL, NULL, NULL);
    CHECK_MSG(rc == DS_CLIENT_OK, "loading the models: %s", ds_client_last_error(c));
    if (rc == DS_CLIENT_OK)
        ds_client_pipeline_result_free(&res);
    uint64_t held2 = 0, peak2 = 0;
    CHECK(admitted_need(&limited, what, &held2, &peak2) == 0 && held2 == held && peak2 == peak);

    /* Two long runs, then a third: refused at once. */
    send_pipeline(c, 11, "50");
    send_pipeline(c, 12, "50");
    send_pipeline(c, 13, "2");
    int refused = 0;
    uint64_t deadline = it_now_ms() + RUN_TIMEOUT_MS;
    while (!refused && it_now_ms() < deadline) {
        memset(&in, 0, sizeof in);
        if (ds_client_recv(c, &in, RUN_TIMEOUT_MS) != DS_CLIENT_OK)
            break;
        if (in.which_body == diffsynth_v1_Envelope_error_tag) {
            const char *message = in.body.error.message ? in.body.error.message : "";
            CHECK_MSG(in.request_id == 13, "request %llu failed: %s",
                      (unsigned long long)in.request_id, message);
            if (in.request_id == 13) {
                refused = 1;
                fprintf(stderr, "  third pipeline: %s\n", message);
                CHECK(in.body.error.code == diffsynth_v1_Code_RESOURCE_EXHAUSTED);
                CHECK_CONTAINS(message, "with the 2 requests admitted before it");
                CHECK_CONTAINS(message, "try again when they have finished");
            }
        } else if (in.which_body != diffsynth_v1_Envelope_event_tag) {
            CHECK_MSG(0, "request %llu finished before the third was refused",
                      (unsigned long long)in.request_id);
            break;
        }
        ds_client_envelope_free(&in);
    }
    CHECK(refused);
    /* Leaving cancels the two long runs; their reservations go with them. */
    ds_client_close(c);
    c = it_connect(&limited);
    REQUIRE(c);
    deadline = it_now_ms() + RUN_TIMEOUT_MS;
    do {
        rc = ds_client_run_pipeline(c, &r, &res, RUN_TIMEOUT_MS, NULL, NULL, NULL);
        if (rc == DS_CLIENT_OK)
            break;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    } while (strstr(ds_client_last_error(c), "try again") && it_now_ms() < deadline);
    CHECK_MSG(rc == DS_CLIENT_OK, "after the others left: %s", ds_client_last_error(c));
    if (rc == DS_CLIENT_OK)
        ds_client_pipeline_result_free(&res);
    ds_client_close(c);
    int status = -1;
    CHECK(it_daemon_stop(&limited, &status) == 0 && status == 0);
    if (test_case_failed)
        it_dump_log(&limited);
    it_env_cleanup(&limited);
}

/* --- estimates against the real peak ------------------------------------------------------- */

/* RssAnon of the daemon in bytes; 0 when unreadable. */
static uint64_t daemon_rss_anon(void)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)env.pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    uint64_t kb = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "RssAnon:", 8) == 0) {
            kb = strtoull(line + 8, NULL, 10);
            break;
        }
    fclose(f);
    return kb * 1024;
}

typedef struct sampler {
    pthread_t thread;
    volatile int stop;
    uint64_t peak;
} sampler;

static void *sampler_main(void *p)
{
    sampler *s = p;
    struct timespec ts = {0, 1000000L};
    while (!s->stop) {
        uint64_t v = daemon_rss_anon();
        if (v > s->peak)
            s->peak = v;
        nanosleep(&ts, NULL);
    }
    return NULL;
}

/* The daemon's last "admitted WHAT: H bytes held, P more" line: H + P. */
static uint64_t admitted_bytes(const char *what)
{
    char *log = it_read_file(env.log, NULL);
    if (!log)
        return 0;
    char needle[128];
    snprintf(needle, sizeof needle, "admitted %s: ", what);
    uint64_t total = 0;
    for (char *at = strstr(log, needle); at; at = strstr(at + 1, needle)) {
        unsigned long long held = 0, peak = 0;
        if (sscanf(at + strlen(needle), "%llu bytes held, %llu more", &held, &peak) == 2)
            total = held + peak;
    }
    free(log);
    return total;
}

/* The daemon's "host" tier in Status: weights it keeps in host memory of its own, here the
 * copies its CPU default keeps converted (the DiT's bf16 weights at f32), which are weights and
 * so outside the estimates. 0 when Status fails. */
static uint64_t host_tier_bytes(void)
{
    ds_client *c = it_connect(&env);
    if (!c)
        return 0;
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_status_tag;
    uint64_t bytes = 0;
    if (it_call(c, &req, &resp) == DS_CLIENT_OK) {
        const diffsynth_v1_StatusResponse *r = &resp.body.status_result;
        for (pb_size_t t = 0; t < r->memory_count; t++)
            if (strcmp(r->memory[t].tier, "host") == 0)
                bytes = r->memory[t].bytes;
    }
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    return bytes;
}

/* The estimate covers the peak and is at most max_ratio times it. `weights`: bytes of weights
 * the run added to the daemon's host tier (converted once), taken off its growth. */
static void check_ratio(const char *what, uint64_t estimate, uint64_t before, uint64_t peak,
                        uint64_t weights, double max_ratio)
{
    uint64_t actual = peak > before + weights ? peak - before - weights : 0;
    if (weights)
        fprintf(stderr, "  %-40s %.1f MiB of weights converted once, not counted\n", what,
                (double)weights / 1048576.0);
    double ratio = actual ? (double)estimate / (double)actual : 0.0;
    fprintf(stderr, "  %-40s estimate %8.1f MiB, peak %8.1f MiB above idle, ratio %.2f\n", what,
            (double)estimate / 1048576.0, (double)actual / 1048576.0, ratio);
    CHECK_MSG(estimate > 0 && actual > 0, "%s: no estimate or no growth", what);
    CHECK_MSG(estimate >= actual, "%s: the estimate %llu is below the peak %llu", what,
              (unsigned long long)estimate, (unsigned long long)actual);
    CHECK_MSG(ratio <= max_ratio, "%s: the estimate is %.1f times the peak, at most %.1f "
              "expected", what, ratio, max_ratio);
}

/* DiT forward inputs of latents [1, 16, side, side] and a prompt of text_len tokens in f32 (or
 * bf16); the data is zero (calloc'd, freed by free_step_inputs). */
static void step_inputs_as(ds_client_tensor in[3], int64_t side, int64_t text_len, int bf16)
{
    static float timestep = 500.0f;
    size_t size = bf16 ? 2 : 4;
    int dtype = bf16 ? diffsynth_v1_DType_BF16 : diffsynth_v1_DType_F32;
    size_t lat_bytes = (size_t)(16 * side * side) * size;
    size_t prompt_bytes = (size_t)(text_len * 3584) * size;
    in[0] = (ds_client_tensor){"latents", dtype, 4, {1, 16, side, side}, calloc(1, lat_bytes),
                               lat_bytes};
    in[1] = (ds_client_tensor){"prompt_emb", dtype, 3, {1, text_len, 3584},
                               calloc(1, prompt_bytes), prompt_bytes};
    in[2] = (ds_client_tensor){"timestep", diffsynth_v1_DType_F32, 1, {1}, &timestep,
                               sizeof timestep};
}

static void step_inputs(ds_client_tensor in[3], int64_t side, int64_t text_len)
{
    step_inputs_as(in, side, text_len, 0);
}

static void free_step_inputs(ds_client_tensor in[3])
{
    free((void *)in[0].data);
    free((void *)in[1].data);
}

/* Runs `step` of model `id` while sampling the daemon's memory, then checks the estimate it
 * was admitted with against the growth (check_ratio). */
static void measure_step(ds_client *c, const char *id, const char *step,
                         const ds_client_tensor *inputs, size_t input_count,
                         const ds_client_step_param *params, size_t param_count,
                         const char *label, double max_ratio)
{
    ds_client_step_request req = {.model_id = id, .step = step, .inputs = inputs,
                                  .input_count = input_count, .params = params,
                                  .param_count = param_count};
    ds_client_step_result res;
    sampler s = {0};
    uint64_t host_before = host_tier_bytes();
    uint64_t before = daemon_rss_anon();
    s.peak = before;
    REQUIRE(pthread_create(&s.thread, NULL, sampler_main, &s) == 0);
    int rc = ds_client_run_step(c, &req, &res, RUN_TIMEOUT_MS, NULL, NULL, NULL);
    s.stop = 1;
    pthread_join(s.thread, NULL);
    CHECK_MSG(rc == DS_CLIENT_OK, "%s: %s", label, ds_client_last_error(c));
    if (rc == DS_CLIENT_OK)
        ds_client_step_result_free(&res);
    char what[128];
    snprintf(what, sizeof what, "run_step %s of %s", step, id);
    uint64_t host_after = host_tier_bytes();
    check_ratio(label, admitted_bytes(what), before, s.peak,
                host_after > host_before ? host_after - host_before : 0, max_ratio);
}

static void measure_dit_step(ds_client *c, int64_t side, int64_t text_len)
{
    ds_client_tensor inputs[3];
    step_inputs(inputs, side, text_len);
    REQUIRE(inputs[0].data && inputs[1].data);
    char label[64];
    snprintf(label, sizeof label, "DiT forward, latents %lldx%lld, %lld tokens", (long long)side,
             (long long)side, (long long)text_len);
    /* Small runs are dominated by the fixed slack; large ones by the per-token terms. */
    measure_step(c, dit_id, "forward", inputs, 3, NULL, 0, label, 12.0);
    free_step_inputs(inputs);
}


/* The Wan text encoder (one block at full width) over `tokens` zero ids. */
static void measure_wan_text_encoder(ds_client *c, int64_t tokens, const char *dtype)
{
    size_t bytes = (size_t)tokens * sizeof(int64_t);
    ds_client_tensor ids = {"input_ids", diffsynth_v1_DType_I64, 2, {1, tokens},
                            calloc(1, bytes), bytes};
    REQUIRE(ids.data);
    const ds_client_step_param params[] = {{"dtype", dtype}};
    char label[96];
    snprintf(label, sizeof label, "Wan text encoder, %lld tokens, %s", (long long)tokens, dtype);
    measure_step(c, wan_te_id, "forward", &ids, 1, params, 1, label, WAN_MAX_RATIO);
    free((void *)ids.data);
}

/* A Wan VAE's decode of zero latents [1, z, T, h, w] or encode of a zero video
 * [1, 3, T, h, w], in f32 or bf16 (the compute dtype is the input's). */
static void measure_wan_vae(ds_client *c, const char *id, const char *name, int decode,
                            int64_t z, int64_t T, int64_t h, int64_t w, int bf16)
{
    int64_t channels = decode ? z : 3;
    size_t bytes = (size_t)(channels * T * h * w) * (bf16 ? 2 : 4);
    ds_client_tensor x = {decode ? "latents" : "video",
                          bf16 ? diffsynth_v1_DType_BF16 : diffsynth_v1_DType_F32,
                          5,
                          {1, channels, T, h, w},
                          calloc(1, bytes),
                          bytes};
    REQUIRE(x.data);
    char label[96];
    snprintf(label, sizeof label, "%s %s [%lld, %lld, %lld], %s", name,
             decode ? "decode" : "encode", (long long)T, (long long)h, (long long)w,
             bf16 ? "bf16" : "f32");
    measure_step(c, id, decode ? "decode" : "encode", &x, 1, NULL, 0, label, WAN_MAX_RATIO);
    free((void *)x.data);
}

static void measure_pipeline(ds_client *c, const char *side)
{
    const ds_client_step_param params[] = {
        {"height", side}, {"width", side}, {"steps", "2"}, {"cfg_scale", "1"}, {"seed", "3"}};
    sampler s = {0};
    uint64_t host_before = host_tier_bytes();
    uint64_t before = daemon_rss_anon();
    s.peak = before;
    REQUIRE(pthread_create(&s.thread, NULL, sampler_main, &s) == 0);
    ds_client_pipeline_result res;
    int rc = run_pipeline(c, params, 5, NULL, 0, &res);
    s.stop = 1;
    pthread_join(s.thread, NULL);
    CHECK_MSG(rc == DS_CLIENT_OK, "pipeline %s: %s", side, ds_client_last_error(c));
    if (rc == DS_CLIENT_OK)
        ds_client_pipeline_result_free(&res);
    char what[128], label[64];
    snprintf(what, sizeof what, "qwen_image %sx%s (height x width), bf16", side, side);
    snprintf(label, sizeof label, "pipeline %sx%s, bf16", side, side);
    uint64_t host_after = host_tier_bytes();
    check_ratio(label, admitted_bytes(what), before, s.peak,
                host_after > host_before ? host_after - host_before : 0, 12.0);
}

static void test_estimates_bound_peak(void)
{
    if (UNDER_ASAN) {
        fprintf(stderr, "  skipped under AddressSanitizer (its allocator keeps freed memory)\n");
        return;
    }
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    /* Growing sizes, each larger than anything run before (the reference run is 64 x 64): what
     * the allocator and the compute threads kept from an earlier run cannot hide this one's
     * growth. */
    measure_dit_step(c, 48, 32);
    measure_dit_step(c, 96, 64);
    measure_dit_step(c, 128, 64);
    /* A bf16 step drops what the f32 ones kept converted (the pipelines run in bf16 and would
     * free it in the middle of a measurement). */
    ds_client_tensor inputs[3];
    step_inputs_as(inputs, 48, 32, 1);
    REQUIRE(inputs[0].data && inputs[1].data);
    ds_client_step_request req = {.model_id = dit_id, .inputs = inputs, .input_count = 3};
    ds_client_step_result res;
    int rc = ds_client_run_step(c, &req, &res, RUN_TIMEOUT_MS, NULL, NULL, NULL);
    CHECK_MSG(rc == DS_CLIENT_OK, "bf16 DiT step: %s", ds_client_last_error(c));
    if (rc == DS_CLIENT_OK)
        ds_client_step_result_free(&res);
    free_step_inputs(inputs);
    CHECK(host_tier_bytes() == 0);
    measure_pipeline(c, "256");
    measure_pipeline(c, "512");
    ds_client_close(c);
}

/* The Wan steps' bounds, through the same daemon: the text encoder's forward (its bound takes
 * the larger of both compute dtypes: checked under each) and both VAEs' decode and encode, in
 * f32 and bf16, on shapes whose activations stand well above the fixed slack. Shrinking a
 * bound's largest term (the scores, the decoder's caches) fails these checks. */
static void test_wan_estimates_bound_peak(void)
{
    if (UNDER_ASAN) {
        fprintf(stderr, "  skipped under AddressSanitizer (its allocator keeps freed memory)\n");
        return;
    }
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    measure_wan_text_encoder(c, 512, "bfloat16");
    measure_wan_text_encoder(c, 512, "float32");
    measure_wan_text_encoder(c, 1024, "bfloat16");
    measure_wan_vae(c, wan_vae_id, "Wan2.1 VAE", 1, 16, 2, 16, 16, 0);
    measure_wan_vae(c, wan_vae_id, "Wan2.1 VAE", 0, 16, 5, 128, 128, 0);
    measure_wan_vae(c, wan_vae38_id, "Wan2.2 VAE", 1, 48, 2, 8, 8, 0);
    measure_wan_vae(c, wan_vae38_id, "Wan2.2 VAE", 0, 48, 5, 192, 192, 0);
    measure_wan_vae(c, wan_vae_id, "Wan2.1 VAE", 1, 16, 3, 24, 24, 1);
    measure_wan_vae(c, wan_vae38_id, "Wan2.2 VAE", 0, 48, 9, 160, 160, 1);
    ds_client_close(c);
}

/* A Wan VAE decode whose bound exceeds the request memory limit (the decoder's caches and
 * activations for 81 frames of 960 x 1664, many times the machine's memory) is refused at once
 * by name, before it runs; the daemon stays up. */
static void test_huge_wan_vae_step_refused(void)
{
    const int64_t shape[5] = {1, 16, 21, 120, 208};
    size_t bytes = (size_t)(16 * 21 * 120 * 208) * 4;
    ds_client_tensor x = {"latents", diffsynth_v1_DType_F32, 5, {0}, calloc(1, bytes), bytes};
    memcpy(x.shape, shape, sizeof shape);
    REQUIRE(x.data);
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    ds_client_step_request req = {.model_id = wan_vae_id, .step = "decode", .inputs = &x,
                                  .input_count = 1};
    ds_client_step_result res;
    double start = now_s();
    int rc = ds_client_run_step(c, &req, &res, RUN_TIMEOUT_MS, NULL, NULL, NULL);
    double took = now_s() - start;
    CHECK(rc == DS_CLIENT_EDAEMON);
    CHECK(ds_client_last_code(c) == diffsynth_v1_Code_RESOURCE_EXHAUSTED);
    const char *message = ds_client_last_error(c);
    fprintf(stderr, "  Wan VAE decode of 960x1664: %s\n", message);
    char what[96];
    snprintf(what, sizeof what, "run_step decode of %s needs an estimated", wan_vae_id);
    CHECK_CONTAINS(message, what);
    CHECK_CONTAINS(message, "request memory limit");
    CHECK_MSG(took < 10.0, "the refusal took %.2f s", took);
    if (rc == DS_CLIENT_OK)
        ds_client_step_result_free(&res);
    ds_client_close(c);
    free((void *)x.data);
    CHECK(it_daemon_alive(&env) && it_status_ok(&env));
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIFFSYNTHD [DIFFSYNTH]\n", argv[0]);
        return 2;
    }
    it_env_init(&env, argv[1]);
    if (it_make_qwen_image_set(&env, &set) != 0 || it_make_wan_video_set(&env, &wan) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    if (!UNDER_ASAN)
        env.daemon_address_space = ADDRESS_SPACE;
    else
        fprintf(stderr, "  AddressSanitizer: the daemon runs without RLIMIT_AS\n");
    /* Large blocks straight from mmap and back on free, so the daemon's resident memory follows
     * what it holds (glibc otherwise keeps freed blocks up to 32 MiB in its heap). */
    setenv("MALLOC_MMAP_THRESHOLD_", "131072", 1);
    const char *extra[] = {"--model-configs", set.configs, "--model-configs", wan.configs,
                           "--threads", "2", NULL};
    char *wan_te[] = {wan.text_encoder}, *wan_vae[] = {wan.vae}, **vae38 = NULL;
    size_t vae38_count = 0;
    int ready = it_make_model(&env, "wan2.2_vae", "wan-vae38", 1, &vae38, &vae38_count) == 0 &&
                it_daemon_start(&env, extra) == 0 &&
                it_load(&env, wan_te, 1, wan_te_id, sizeof wan_te_id) == 0 &&
                it_load(&env, wan_vae, 1, wan_vae_id, sizeof wan_vae_id) == 0 &&
                it_load(&env, vae38, vae38_count, wan_vae38_id, sizeof wan_vae38_id) == 0;
    ds_st_paths_free(vae38, vae38_count);
    if (!ready) {
        it_env_cleanup(&env);
        return 1;
    }
    RUN(test_reference_run);
    RUN(test_estimates_bound_peak);
    RUN(test_wan_estimates_bound_peak);
    RUN(test_huge_pipeline_refused);
    RUN(test_huge_dit_step_refused);
    RUN(test_huge_wan_vae_step_refused);
    RUN(test_small_job_waits_one_turn);
    RUN(test_reservations_add_up);

    int status = -1;
    if (it_daemon_stop(&env, &status) != 0 || status != 0) {
        fprintf(stderr, "FAIL the daemon did not stop cleanly (status %d)\n", status);
        test_failures++;
    }
    if (test_failures)
        it_dump_log(&env);
    free(reference_latents);
    it_env_cleanup(&env);
    return test_summary();
}
