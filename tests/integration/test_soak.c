/* Soak: eight client processes hammer one daemon for a bounded time with pipelines and steps,
 * cancelling some, dropping their connections in the middle of others, and being killed with
 * SIGKILL at random by the parent (which starts a new client in each one's place). Meanwhile
 * every job that completes must give the right bytes. Afterwards the daemon reports no jobs,
 * still holds the same models, a fixed-seed image and a fixed-input step give the same bytes as
 * before the soak, and its resident memory grew by less than RSS_GROWTH_LIMIT_MB.
 *
 * Models (as test_run_pipeline's, header-only: zero weights, so the numbers are not checked
 * against upstream here, only that they do not change): the Qwen-Image DiT and text encoder
 * cut to one block each and registered with --model-configs, the real VAE key list, and
 * tests/data/qwen_tokenizer. Images are 16 x 16 (the smallest), 2 steps, cfg_scale 1.
 *
 * DS_SOAK_SECONDS overrides the soak's length (default SOAK_SECONDS). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/image_png.h"
#include "core/model_hash.h"
#include "harness.h"
#include "test.h"
#include "tools/keylist.h"

#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"
#define TE_CLASS "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder"
#define TE_CONVERTER                                                                              \
    "diffsynth.utils.state_dict_converters.qwen_image_text_encoder."                              \
    "QwenImageTextEncoderStateDictConverter"
#define CLIENTS 8
#define SOAK_SECONDS 40
/* Per-reply silence a client allows: eight clients share two busy cores under ASan. */
#define CALL_TIMEOUT_MS 180000
/* After the soak, how long clients may take to finish and the daemon to drain its queue. */
#define DRAIN_MS 180000
/* Anonymous resident memory (RssAnon: the heap and thread stacks, not the mapped model files,
 * whose clean pages the kernel drops and maps back at will) the daemon may gain between the
 * warm-up and the end of the soak. Everything a request allocates is freed when it ends, so
 * growth is allocator slack and caches that reach a steady state during the warm-up; ASan's
 * quarantine of freed blocks is held to QUARANTINE_MB for the daemon so that it does not count
 * as growth. */
#define RSS_GROWTH_LIMIT_MB 96
#define QUARANTINE_MB 16
/* The VAE decode step's input: latents [1, 16, LAT, LAT]. */
#define LAT 2

static it_env env;
static char configs_path[256];
static char te_path[256], dit_path[256], vae_path[256];
static char vae_id[32];

/* What every client compares its results with. */
static uint8_t *ref_png;
static size_t ref_png_size;
static uint8_t *ref_latents;
static size_t ref_latents_size;
static float step_input[16 * LAT * LAT];
static uint8_t *ref_step;
static size_t ref_step_size;

/* --- the model set (as test_run_pipeline's) ------------------------------------------------- */

static int make_dirs(void)
{
    static const char *const sub[] = {"Qwen-Image", "Qwen-Image/text_encoder",
                                      "Qwen-Image/transformer", "Qwen-Image/vae",
                                      "Qwen-Image/tokenizer"};
    char path[256];
    for (size_t i = 0; i < sizeof sub / sizeof sub[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", env.models, sub[i]);
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "mkdir %s: %s\n", path, strerror(errno));
            return -1;
        }
    }
    return 0;
}

static int make_tokenizer(void)
{
    const char *data = getenv("DS_TEST_DATA");
    static const char *const names[] = {"tokenizer.json", "tokenizer_config.json"};
    for (size_t i = 0; i < 2; i++) {
        char from[512], to[512];
        snprintf(from, sizeof from, "%s/qwen_tokenizer/%s", data ? data : "tests/data", names[i]);
        snprintf(to, sizeof to, "%s/Qwen-Image/tokenizer/%s", env.models, names[i]);
        size_t len = 0;
        char *bytes = it_read_file(from, &len);
        int rc = bytes ? it_write_file(to, bytes, len) : -1;
        free(bytes);
        if (rc != 0) {
            fprintf(stderr, "cannot copy %s to %s\n", from, to);
            return -1;
        }
    }
    return 0;
}

/* Key list `stem` without the blocks `prefix`<i>. for i >= 1, sparse bf16 at `path`. */
static int write_cut(const char *stem, const char *prefix, const char *path,
                     char hash[DS_MODEL_HASH_HEX])
{
    const char *data = getenv("DS_TEST_DATA");
    char list[512];
    snprintf(list, sizeof list, "%s/keylists/%s.json", data ? data : "tests/data", stem);
    ds_state_dict full, cut;
    ds_state_dict_init(&full);
    ds_state_dict_init(&cut);
    ds_error err;
    int rc = ds_keylist_load(list, DS_BF16, &full, &err);
    size_t skip = strlen(prefix);
    for (size_t i = 0; rc == DS_OK && i < full.count; i++) {
        const ds_sd_entry *e = &full.entries[i];
        if (strncmp(e->name, prefix, skip) == 0 && strtol(e->name + skip, NULL, 10) > 0)
            continue;
        rc = ds_state_dict_put_tensor(&cut, e->name, &e->tensor);
    }
    if (rc == DS_OK && ds_model_hash(&cut, hash) != DS_OK)
        rc = ds_error_set(&err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory hashing %s", stem);
    if (rc == DS_OK)
        rc = ds_st_write(path, &cut, 0, cut.count, DS_ST_FILL_SPARSE, 0, &err);
    if (rc != DS_OK)
        fprintf(stderr, "writing %s cut to one block: %s\n", stem, err.message);
    ds_state_dict_free(&cut);
    ds_state_dict_free(&full);
    return rc == DS_OK ? 0 : -1;
}

static int make_models(void)
{
    if (make_dirs() != 0 || make_tokenizer() != 0)
        return -1;
    char dit_hash[DS_MODEL_HASH_HEX], te_hash[DS_MODEL_HASH_HEX];
    snprintf(dit_path, sizeof dit_path, "%s/Qwen-Image/transformer/model.safetensors", env.models);
    snprintf(te_path, sizeof te_path, "%s/Qwen-Image/text_encoder/model.safetensors", env.models);
    if (write_cut("qwen_image_dit", "transformer_blocks.", dit_path, dit_hash) != 0 ||
        write_cut("qwen_image_text_encoder_raw", "model.layers.", te_path, te_hash) != 0)
        return -1;
    snprintf(configs_path, sizeof configs_path, "%s/configs.json", env.dir);
    char configs[1024];
    snprintf(configs, sizeof configs,
             "[{\"model_hash\": \"%s\", \"model_name\": \"qwen_image_dit\", "
             "\"model_class\": \"" DIT_CLASS "\", \"extra_kwargs\": {\"num_layers\": 1}},\n"
             " {\"model_hash\": \"%s\", \"model_name\": \"qwen_image_text_encoder\", "
             "\"model_class\": \"" TE_CLASS "\", \"state_dict_converter\": \"" TE_CONVERTER "\", "
             "\"extra_kwargs\": {\"num_hidden_layers\": 1}}]\n",
             dit_hash, te_hash);
    if (it_write_file(configs_path, configs, strlen(configs)) != 0)
        return -1;
    char **paths = NULL;
    size_t count = 0;
    if (it_make_model(&env, "qwen_image_vae", "Qwen-Image/vae/model", 1, &paths, &count) != 0)
        return -1;
    snprintf(vae_path, sizeof vae_path, "%s", paths[0]);
    ds_st_paths_free(paths, count);
    return 0;
}

/* --- requests ------------------------------------------------------------------------------- */

/* The fixed request every "same bytes" check uses; `steps` "2". */
static const ds_client_step_param ref_params[] = {
    {"height", "16"}, {"width", "16"}, {"steps", "2"}, {"cfg_scale", "1"}, {"seed", "1234"},
};
#define REF_COUNT (sizeof ref_params / sizeof ref_params[0])

static int run_ref_pipeline(ds_client *c, ds_client_pipeline_result *res,
                            ds_client_cancel_flag *cancel, ds_client_progress_fn on_progress,
                            void *user)
{
    ds_client_pipeline_request r = {
        .prompt = "a lighthouse at dusk",
        .params = ref_params,
        .param_count = REF_COUNT,
        .cancel = cancel,
    };
    return ds_client_run_pipeline(c, &r, res, CALL_TIMEOUT_MS, on_progress, user, NULL);
}

static int run_decode_step(ds_client *c, ds_client_step_result *res)
{
    ds_client_tensor in = {.name = "latents", .dtype = diffsynth_v1_DType_F32, .ndim = 4,
                           .shape = {1, 16, LAT, LAT}, .data = step_input,
                           .nbytes = sizeof step_input};
    ds_client_step_request r = {.model_id = vae_id, .step = "decode", .inputs = &in,
                                .input_count = 1};
    return ds_client_run_step(c, &r, res, CALL_TIMEOUT_MS, NULL, NULL, NULL);
}

static uint8_t *dup_bytes(const void *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (copy)
        memcpy(copy, data, size);
    return copy;
}

/* --- one client process --------------------------------------------------------------------- */

/* What the clients got, counted in memory shared with the parent. */
typedef struct soak_counts {
    atomic_long steps_ok, pipelines_ok, cancelled, dropped, refused, cheap;
} soak_counts;
static soak_counts *counts;

typedef struct client_state {
    int id;
    ds_client *c;
    int drop_connection;  /* shut the socket at the first denoise event */
    ds_client_cancel_flag *cancel;
    int cancel_at_event;  /* raise `cancel` at this progress event (0: never) */
    int events;
} client_state;

static void on_progress(const diffsynth_v1_Progress *p, uint64_t request_id, void *user)
{
    (void)p;
    (void)request_id;
    client_state *s = user;
    s->events++;
    if (s->cancel_at_event && s->events == s->cancel_at_event)
        ds_client_cancel_flag_raise(s->cancel);
    if (s->drop_connection && s->events == 2)
        shutdown(ds_client_fd(s->c), SHUT_RDWR);
}

#define FAIL_CHILD(...)                                                                           \
    do {                                                                                          \
        fprintf(stderr, "client %d: ", id);                                                       \
        fprintf(stderr, __VA_ARGS__);                                                             \
        fputc('\n', stderr);                                                                      \
        _exit(1);                                                                                 \
    } while (0)

/* Refusals a loaded daemon may give a client without anything being wrong. */
static int is_load_refusal(ds_client *c)
{
    int code = ds_client_last_code(c);
    return code == diffsynth_v1_Code_RESOURCE_EXHAUSTED || code == diffsynth_v1_Code_UNAVAILABLE;
}

static void client_main(int id, unsigned seed, uint64_t deadline_ms)
{
    srand(seed);
    client_state s = {.id = id};
    while (it_now_ms() < deadline_ms) {
        s.c = it_connect(&env);
        if (!s.c)
            FAIL_CHILD("cannot connect");
        /* A few requests per connection, then a fresh one. */
        int on_this = 1 + rand() % 4;
        for (int k = 0; k < on_this && it_now_ms() < deadline_ms; k++) {
            int action = rand() % 100;
            s.events = 0;
            s.drop_connection = 0;
            s.cancel_at_event = 0;
            if (action < 30) {
                /* The fixed step: the same bytes as before the soak. */
                ds_client_step_result res;
                int rc = run_decode_step(s.c, &res);
                if (rc == DS_CLIENT_EDAEMON && is_load_refusal(s.c)) {
                    atomic_fetch_add(&counts->refused, 1);
                    continue;
                }
                if (rc != DS_CLIENT_OK)
                    FAIL_CHILD("decode step: rc %d: %s", rc, ds_client_last_error(s.c));
                atomic_fetch_add(&counts->steps_ok, 1);
                if (res.output_count != 1 || res.outputs[0].nbytes != ref_step_size ||
                    memcmp(res.outputs[0].data, ref_step, ref_step_size) != 0)
                    FAIL_CHILD("decode step: the output differs from the reference");
                ds_client_step_result_free(&res);
            } else if (action < 85) {
                /* The fixed pipeline, cancelled at a random event in three cases of ten, or its
                 * connection dropped in two. */
                int variant = rand() % 10;
                s.cancel = ds_client_cancel_flag_new();
                if (!s.cancel)
                    FAIL_CHILD("out of memory");
                if (variant < 3)
                    s.cancel_at_event = 1 + rand() % 4;
                else if (variant < 5)
                    s.drop_connection = 1;
                ds_client_pipeline_result res;
                int rc = run_ref_pipeline(s.c, &res, s.cancel, on_progress, &s);
                ds_client_cancel_flag_free(s.cancel);
                s.cancel = NULL;
                if (s.drop_connection) {
                    /* Whatever came back, the connection is gone: start a new one. */
                    atomic_fetch_add(&counts->dropped, 1);
                    ds_client_pipeline_result_free(&res);
                    break;
                }
                if (rc == DS_CLIENT_EDAEMON && is_load_refusal(s.c)) {
                    atomic_fetch_add(&counts->refused, 1);
                    continue;
                }
                if (rc == DS_CLIENT_EDAEMON && s.cancel_at_event &&
                    ds_client_last_code(s.c) == diffsynth_v1_Code_CANCELLED) {
                    atomic_fetch_add(&counts->cancelled, 1);
                    continue;
                }
                if (rc != DS_CLIENT_OK)
                    FAIL_CHILD("pipeline: rc %d (%s): %s", rc,
                               ds_client_code_name(ds_client_last_code(s.c)),
                               ds_client_last_error(s.c));
                if (res.png_size != ref_png_size || memcmp(res.png, ref_png, ref_png_size) != 0 ||
                    res.latents.nbytes != ref_latents_size ||
                    memcmp(res.latents.data, ref_latents, ref_latents_size) != 0)
                    FAIL_CHILD("pipeline: the image or latents differ from the reference");
                atomic_fetch_add(&counts->pipelines_ok, 1);
                ds_client_pipeline_result_free(&res);
            } else {
                /* A cheap request between the heavy ones. */
                diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
                req.which_body = action < 93 ? diffsynth_v1_Envelope_status_tag
                                             : diffsynth_v1_Envelope_list_models_tag;
                int rc = it_call(s.c, &req, &resp);
                if (rc != DS_CLIENT_OK && !(rc == DS_CLIENT_EDAEMON && is_load_refusal(s.c)))
                    FAIL_CHILD("status/list: rc %d: %s", rc, ds_client_last_error(s.c));
                if (rc == DS_CLIENT_OK) {
                    atomic_fetch_add(&counts->cheap, 1);
                    ds_client_envelope_free(&resp);
                }
            }
        }
        ds_client_close(s.c);
        s.c = NULL;
    }
    _exit(0);
}

/* --- the parent ----------------------------------------------------------------------------- */

static long rss_anon_kb(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    char *text = it_read_file(path, NULL);
    const char *line = text ? strstr(text, "RssAnon:") : NULL;
    long kb = line ? strtol(line + 8, NULL, 10) : -1;
    free(text);
    return kb;
}

static int jobs_now(unsigned *queued, unsigned *running)
{
    ds_client *c = it_connect(&env);
    if (!c)
        return -1;
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_status_tag;
    int rc = it_call(c, &req, &resp);
    if (rc == DS_CLIENT_OK) {
        *queued = resp.body.status_result.jobs_queued;
        *running = resp.body.status_result.jobs_running;
        ds_client_envelope_free(&resp);
    }
    ds_client_close(c);
    return rc == DS_CLIENT_OK ? 0 : -1;
}

/* Loads the three models through a first pipeline run (from paths) and records the reference
 * image, latents and step output. */
static int warm_up(void)
{
    free(ref_png);
    free(ref_latents);
    free(ref_step);
    ref_png = ref_latents = ref_step = NULL;
    ds_client *c = it_connect(&env);
    if (!c)
        return -1;
    const char *te[] = {te_path}, *dit[] = {dit_path}, *vae[] = {vae_path};
    ds_client_pipeline_model models[] = {
        {.role = "text_encoder", .paths = te, .path_count = 1},
        {.role = "dit", .paths = dit, .path_count = 1},
        {.role = "vae", .paths = vae, .path_count = 1},
    };
    ds_client_pipeline_request r = {.prompt = "a lighthouse at dusk", .params = ref_params,
                                    .param_count = REF_COUNT, .models = models, .model_count = 3};
    ds_client_pipeline_result res;
    int rc = ds_client_run_pipeline(c, &r, &res, CALL_TIMEOUT_MS, NULL, NULL, NULL);
    if (rc != DS_CLIENT_OK) {
        fprintf(stderr, "warm-up pipeline: %s\n", ds_client_last_error(c));
        ds_client_close(c);
        return -1;
    }
    ref_png = dup_bytes(res.png, res.png_size);
    ref_png_size = res.png_size;
    ref_latents = dup_bytes(res.latents.data, res.latents.nbytes);
    ref_latents_size = res.latents.nbytes;
    ds_client_pipeline_result_free(&res);
    ds_client_close(c);

    char *pool = it_pool_snapshot(&env);
    for (const char *line = pool; line && *line;) {
        char rid[32], rname[128];
        if (sscanf(line, "%31s %127s", rid, rname) == 2 && strcmp(rname, "qwen_image_vae") == 0)
            snprintf(vae_id, sizeof vae_id, "%s", rid);
        line = strchr(line, '\n');
        line = line ? line + 1 : NULL;
    }
    free(pool);
    if (!vae_id[0]) {
        fprintf(stderr, "no qwen_image_vae in the pool after the warm-up\n");
        return -1;
    }
    for (size_t i = 0; i < sizeof step_input / sizeof step_input[0]; i++)
        step_input[i] = (float)((int)(i * 37 % 23) - 11) / 7.0f;
    c = it_connect(&env);
    if (!c)
        return -1;
    ds_client_step_result step;
    rc = run_decode_step(c, &step);
    if (rc != DS_CLIENT_OK || step.output_count != 1) {
        fprintf(stderr, "warm-up decode step: %s\n", ds_client_last_error(c));
        ds_client_close(c);
        return -1;
    }
    ref_step = dup_bytes(step.outputs[0].data, step.outputs[0].nbytes);
    ref_step_size = step.outputs[0].nbytes;
    ds_client_step_result_free(&step);
    ds_client_close(c);
    return ref_png && ref_latents && ref_step ? 0 : -1;
}

static pid_t spawn_client(int id, unsigned seed, uint64_t deadline_ms)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        client_main(id, seed, deadline_ms);
    return pid;
}

/* Each client gets its own id and its own random sequence. */
static pid_t spawn_next(int *next_id, unsigned seed, uint64_t deadline_ms)
{
    int id = (*next_id)++;
    return spawn_client(id, seed + (unsigned)id * 7919u, deadline_ms);
}

static void test_soak(void)
{
    counts = mmap(NULL, sizeof *counts, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(counts != MAP_FAILED);
    memset(counts, 0, sizeof *counts);
    REQUIRE(warm_up() == 0);
    /* The same requests once more, so that caches and allocator arenas reach their steady
     * state before the baseline is taken. */
    REQUIRE(warm_up() == 0);
    char *pool_before = it_pool_snapshot(&env);
    REQUIRE(pool_before);
    long rss_before = rss_anon_kb(env.pid);

    const char *seconds_text = getenv("DS_SOAK_SECONDS");
    int seconds = seconds_text ? atoi(seconds_text) : SOAK_SECONDS;
    if (seconds <= 0)
        seconds = SOAK_SECONDS;
    uint64_t start = it_now_ms(), deadline = start + (uint64_t)seconds * 1000;
    unsigned seed = (unsigned)time(NULL);
    printf("# soak: %d clients for %d s, seed %u\n", CLIENTS, seconds, seed);
    srand(seed);
    pid_t pids[CLIENTS];
    int next_id = 0;
    for (int i = 0; i < CLIENTS; i++)
        pids[i] = spawn_next(&next_id, seed, deadline);
    int killed = 0, clean = 0, failed = 0;
    uint64_t next_kill = start + 2000 + (uint64_t)(rand() % 4000);
    while (it_now_ms() < deadline) {
        usleep(100000);
        for (int i = 0; i < CLIENTS; i++) {
            int status;
            if (pids[i] > 0 && waitpid(pids[i], &status, WNOHANG) == pids[i]) {
                if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
                    clean++;
                } else {
                    failed++;
                    fprintf(stderr, "FAIL client process %d ended with status %d\n", (int)pids[i],
                            status);
                }
                pids[i] = spawn_next(&next_id, seed, deadline);
            }
        }
        if (it_now_ms() >= next_kill) {
            int victim = rand() % CLIENTS;
            if (pids[victim] > 0) {
                kill(pids[victim], SIGKILL);
                waitpid(pids[victim], NULL, 0);
                killed++;
                pids[victim] = spawn_next(&next_id, seed, deadline);
            }
            next_kill = it_now_ms() + 2000 + (uint64_t)(rand() % 4000);
        }
        if (!it_daemon_alive(&env))
            break;
    }
    /* Clients finish the request they are in, then exit. */
    for (int i = 0; i < CLIENTS; i++) {
        int status = -1;
        if (pids[i] <= 0)
            continue;
        if (it_wait_pid(pids[i], DRAIN_MS, &status) != 0) {
            kill(pids[i], SIGKILL);
            waitpid(pids[i], NULL, 0);
            failed++;
            fprintf(stderr, "FAIL client process %d did not finish its last request\n",
                    (int)pids[i]);
        } else if (status == 0) {
            clean++;
        } else {
            failed++;
            fprintf(stderr, "FAIL client process %d ended with status %d\n", (int)pids[i], status);
        }
    }
    printf("# soak: %d client processes ended cleanly, %d killed, %d failed, %d spawned\n",
           clean, killed, failed, next_id);
    printf("# soak: %ld pipelines and %ld steps gave the reference bytes; %ld cancelled, %ld "
           "connections dropped mid-pipeline, %ld refused for load, %ld status/list calls\n",
           atomic_load(&counts->pipelines_ok), atomic_load(&counts->steps_ok),
           atomic_load(&counts->cancelled), atomic_load(&counts->dropped),
           atomic_load(&counts->refused), atomic_load(&counts->cheap));
    CHECK(failed == 0);
    /* A soak in which nothing completed would prove nothing (on a very busy machine a killed
     * client may take its only pipeline with it, so either kind counts). */
    CHECK(atomic_load(&counts->pipelines_ok) + atomic_load(&counts->steps_ok) > 0);
    CHECK_MSG(it_daemon_alive(&env), "the daemon died during the soak");
    if (!it_daemon_alive(&env)) {
        free(pool_before);
        return;
    }

    /* Jobs of killed and disconnected clients are cancelled or finish: none may remain. */
    unsigned queued = 99, running = 99;
    for (uint64_t t0 = it_now_ms(); it_now_ms() - t0 < DRAIN_MS; usleep(200000))
        if (jobs_now(&queued, &running) == 0 && queued == 0 && running == 0)
            break;
    CHECK_MSG(queued == 0 && running == 0, "after the soak: %u jobs queued, %u running", queued,
              running);

    char *pool_after = it_pool_snapshot(&env);
    CHECK_MSG(pool_after && strcmp(pool_before, pool_after) == 0,
              "the pool changed:\nbefore:\n%s\nafter:\n%s", pool_before,
              pool_after ? pool_after : "(no answer)");
    free(pool_before);
    free(pool_after);

    /* The fixed-seed image and the fixed step give the bytes they gave before. */
    uint8_t *png = ref_png, *latents = ref_latents, *step = ref_step;
    size_t png_size = ref_png_size, latents_size = ref_latents_size, step_size = ref_step_size;
    ref_png = ref_latents = ref_step = NULL;
    CHECK(warm_up() == 0);
    CHECK_MSG(ref_png && png_size == ref_png_size && memcmp(png, ref_png, png_size) == 0,
              "the fixed-seed image changed");
    CHECK_MSG(ref_latents && latents_size == ref_latents_size &&
                  memcmp(latents, ref_latents, latents_size) == 0,
              "the fixed-seed latents changed");
    CHECK_MSG(ref_step && step_size == ref_step_size && memcmp(step, ref_step, step_size) == 0,
              "the fixed step's output changed");
    free(png);
    free(latents);
    free(step);

    long rss_after = rss_anon_kb(env.pid);
    printf("# daemon RssAnon: %ld KiB after the warm-up, %ld KiB after the soak (limit +%d MiB)\n",
           rss_before, rss_after, RSS_GROWTH_LIMIT_MB);
    CHECK(rss_before > 0 && rss_after > 0);
    CHECK_MSG(rss_after - rss_before < (long)RSS_GROWTH_LIMIT_MB * 1024,
              "the daemon grew by %ld KiB", rss_after - rss_before);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIFFSYNTHD [DIFFSYNTH]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    it_env_init(&env, argv[1]);
    if (make_models() != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    /* Freed blocks kept by ASan would read as growth; the daemon inherits this. */
    const char *asan = getenv("ASAN_OPTIONS");
    char options[512];
    snprintf(options, sizeof options, "%s%squarantine_size_mb=%d", asan ? asan : "",
             asan && asan[0] ? ":" : "", QUARANTINE_MB);
    setenv("ASAN_OPTIONS", options, 1);
    const char *extra[] = {"--model-configs", configs_path, "--threads", "2", NULL};
    if (it_daemon_start(&env, extra) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    RUN(test_soak);

    int status = -1;
    if (it_daemon_stop(&env, &status) != 0 || status != 0) {
        fprintf(stderr, "FAIL the daemon did not stop cleanly (status %d)\n", status);
        test_failures++;
    }
    if (test_failures)
        it_dump_log(&env);
    it_env_cleanup(&env);
    free(ref_png);
    free(ref_latents);
    free(ref_step);
    return test_summary();
}
