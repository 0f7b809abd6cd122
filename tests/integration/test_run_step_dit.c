/* RunStep on the real Qwen-Image DiT through the daemon.
 *
 * Two models are written into the test's directory and registered with --model-configs:
 *   - the golden 2-block DiT (tests/data/golden/qwen_image_dit_2layers.safetensors): its
 *     seeded weights (tests/tools/seeded_weights.c, seed 2024, the generator's bounds)
 *     rounded to bf16 as torch's .to(bfloat16) does, ~1.4 GB;
 *   - a DEEP_LAYERS-block DiT whose data region is a hole (all-zero weights, no disk), slow
 *     enough per block for a cancel to land mid-step.
 * Checks: the golden forward from two clients at once against upstream's bf16 output (and
 * bit-identical between them), the same weights at f32 kept converted by the CPU default (the
 * model's host tier), progress events, cancel of a running step, a client leaving
 * mid-step, bad shapes and dtypes, and `diffsynth run-step` end to end. Every model file is removed at the end, also
 * when the test is killed (SIGTERM from meson's timeout) or crashes. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/float_convert.h"
#include "core/safetensors.h"
#include "core/safetensors_write.h"
#include "harness.h"
#include "test.h"
#include "tools/seeded_weights.h"

#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"
#define SEED 2024
#define GOLDEN_LAYERS 2
#define DEEP_LAYERS 6
/* upstream bf16 vs our bf16: the C-vs-upstream budget with bf16 weights */
#define BF16_BUDGET 2e-2
/* A forward under ASan on two busy cores may be silent (between progress events) this long. */
#define STEP_TIMEOUT_MS 300000
#define CLI_TIMEOUT_MS 600000
#define MAX_EVENTS 64

static it_env env;
static const char *cli;
static char configs_path[256];
static char golden_model[256], deep_model[256];
static char golden_id[32], deep_id[32];
static ds_safetensors *golden; /* the reference file: inputs and upstream's outputs */

/* --- cleanup, also on a signal ------------------------------------------------------------ */

/* Async-signal-safe: the big file goes first, then the daemon. */
static void remove_models_now(void)
{
    if (golden_model[0])
        unlink(golden_model);
    if (deep_model[0])
        unlink(deep_model);
}

static int keep_dir; /* $DS_IT_KEEP, read before any signal can arrive */

static void on_fatal_signal(int sig)
{
    remove_models_now();
    if (env.pid > 0)
        kill(env.pid, SIGKILL);
    if (!keep_dir) {
        /* What else the test writes; the CLI's input files may still be there. */
        static const char *const names[] = {"in_latents.safetensors", "in_timestep.safetensors",
                                            "in_odd.safetensors", "noise.safetensors"};
        char path[256];
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            size_t n = strlen(env.dir), k = strlen(names[i]);
            if (n + 1 + k < sizeof path) {
                memcpy(path, env.dir, n);
                path[n] = '/';
                memcpy(path + n + 1, names[i], k + 1);
                unlink(path);
            }
        }
        unlink(configs_path);
        unlink(env.socket);
        unlink(env.log);
        rmdir(env.models);
        rmdir(env.dir);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_cleanup(void)
{
    keep_dir = getenv("DS_IT_KEEP") != NULL;
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGSEGV, SIGBUS, SIGABRT, SIGFPE};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        signal(sigs[i], on_fatal_signal);
    atexit(remove_models_now);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* --- writing the models ------------------------------------------------------------------- */

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* The generator script's weight_bounds (as in tests/models/test_qwen_image_dit_golden.c):
 * 1/sqrt(fan_in) for Linear weights and their biases, centre 1 and bound 0.1 for the RMSNorm
 * weights. */
static void bounds(const ds_state_dict *sd, const char *name, const ds_tensor_view *v,
                   double *bound, float *center)
{
    *center = 0.0f;
    if (ends_with(name, "norm_q.weight") || ends_with(name, "norm_k.weight") ||
        ends_with(name, "norm_added_q.weight") || ends_with(name, "norm_added_k.weight") ||
        strcmp(name, "txt_norm.weight") == 0) {
        *bound = 0.1;
        *center = 1.0f;
        return;
    }
    int64_t fan_in = 1;
    if (v->ndim == 2) {
        fan_in = v->shape[1];
    } else {
        char weight[256];
        snprintf(weight, sizeof weight, "%.*s.weight", (int)(strlen(name) - strlen(".bias")),
                 name);
        const ds_sd_entry *w = ds_state_dict_find(sd, weight);
        if (w)
            fan_in = w->tensor.shape[1];
    }
    *bound = 1.0 / sqrt((double)fan_in);
}

/* The real DiT key list cut to `layers` blocks, bf16; `hash` gets its model hash. */
static int dit_keys(int layers, ds_state_dict *sd, char hash[33])
{
    if (it_keylist_cut("qwen_image_dit", "transformer_blocks.", layers, sd) != 0)
        return -1;
    return it_state_dict_hash(sd, hash);
}

/* Seeding ~700M values takes seconds: tensors are shared out among this many threads. */
#define FILL_THREADS 2

typedef struct fill_job {
    const ds_state_dict *sd;
    const uint64_t *offsets; /* per tensor, in the file */
    int fd;
    int first;
    int rc;
} fill_job;

static void *fill_worker(void *p)
{
    fill_job *job = p;
    float *f = NULL;
    uint16_t *h = NULL;
    size_t cap = 0;
    for (size_t i = (size_t)job->first; job->rc == 0 && i < job->sd->count; i += FILL_THREADS) {
        const ds_sd_entry *e = &job->sd->entries[i];
        size_t n = (size_t)ds_tensor_view_numel(&e->tensor);
        if (n > cap) {
            free(f);
            free(h);
            f = malloc(n * sizeof *f);
            h = malloc(n * sizeof *h);
            cap = n;
            if (!f || !h) {
                job->rc = -1;
                break;
            }
        }
        double bound;
        float center;
        bounds(job->sd, e->name, &e->tensor, &bound, &center);
        ds_seeded_fill(e->name, SEED, bound, center, f, n);
        for (size_t k = 0; k < n; k++)
            h[k] = ds_f32_to_bf16(f[k]);
        size_t bytes = n * sizeof *h;
        for (size_t done = 0; job->rc == 0 && done < bytes;) {
            ssize_t w = pwrite(job->fd, (const char *)h + done, bytes - done,
                               (off_t)(job->offsets[i] + done));
            if (w <= 0 && errno != EINTR)
                job->rc = -1;
            else if (w > 0)
                done += (size_t)w;
        }
    }
    free(f);
    free(h);
    return NULL;
}

/* Fills the hole of a file ds_st_write laid out (tensors in `sd` order, back to back after
 * the header) with each tensor's seeded values rounded to bf16. */
static int fill_seeded(const char *path, const ds_state_dict *sd)
{
    ds_error err;
    uint8_t *header = NULL;
    uint64_t header_size = 0;
    if (ds_safetensors_read_header(path, &header, &header_size, NULL, &err) != DS_OK) {
        fprintf(stderr, "%s\n", err.message);
        return -1;
    }
    free(header);
    uint64_t *offsets = calloc(sd->count ? sd->count : 1, sizeof *offsets);
    int fd = open(path, O_WRONLY);
    if (!offsets || fd < 0) {
        free(offsets);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    uint64_t offset = 8 + header_size;
    for (size_t i = 0; i < sd->count; i++) {
        offsets[i] = offset;
        offset += ds_tensor_view_numel(&sd->entries[i].tensor) * 2;
    }
    fill_job jobs[FILL_THREADS];
    pthread_t th[FILL_THREADS];
    int started = 0, rc = 0;
    for (int t = 0; t < FILL_THREADS; t++) {
        jobs[t] = (fill_job){sd, offsets, fd, t, 0};
        if (pthread_create(&th[t], NULL, fill_worker, &jobs[t]) != 0) {
            rc = -1;
            break;
        }
        started++;
    }
    for (int t = 0; t < started; t++) {
        pthread_join(th[t], NULL);
        rc |= jobs[t].rc;
    }
    if (close(fd) != 0)
        rc = -1;
    free(offsets);
    if (rc != 0)
        fprintf(stderr, "writing the seeded weights into %s failed\n", path);
    return rc;
}

/* Writes both models and the configs file naming their hashes. */
static int make_models(void)
{
    char golden_hash[33], deep_hash[33];
    ds_state_dict sd;
    ds_error err;
    double wall = now_s(), cpu = cpu_s();
    snprintf(golden_model, sizeof golden_model, "%s/dit_golden.safetensors", env.models);
    snprintf(deep_model, sizeof deep_model, "%s/dit_deep.safetensors", env.models);
    int rc = dit_keys(GOLDEN_LAYERS, &sd, golden_hash);
    if (rc == 0 && ds_st_write(golden_model, &sd, 0, sd.count, DS_ST_FILL_SPARSE, 0, &err) != DS_OK) {
        fprintf(stderr, "%s\n", err.message);
        rc = -1;
    }
    if (rc == 0)
        rc = fill_seeded(golden_model, &sd);
    ds_state_dict_free(&sd);
    fprintf(stderr, "  golden model written: %.2f s (cpu %.2f s)\n", now_s() - wall,
            cpu_s() - cpu);
    if (rc == 0)
        rc = dit_keys(DEEP_LAYERS, &sd, deep_hash);
    if (rc == 0) {
        if (ds_st_write(deep_model, &sd, 0, sd.count, DS_ST_FILL_SPARSE, 0, &err) != DS_OK) {
            fprintf(stderr, "%s\n", err.message);
            rc = -1;
        }
        ds_state_dict_free(&sd);
    }
    if (rc != 0)
        return -1;
    snprintf(configs_path, sizeof configs_path, "%s/configs.json", env.dir);
    char configs[1024];
    snprintf(configs, sizeof configs,
             "[{\"model_hash\": \"%s\", \"model_name\": \"qwen_image_dit_golden\", "
             "\"model_class\": \"" DIT_CLASS "\", \"extra_kwargs\": {\"num_layers\": %d}},\n"
             " {\"model_hash\": \"%s\", \"model_name\": \"qwen_image_dit_deep\", "
             "\"model_class\": \"" DIT_CLASS "\", \"extra_kwargs\": {\"num_layers\": %d}}]\n",
             golden_hash, GOLDEN_LAYERS, deep_hash, DEEP_LAYERS);
    return it_write_file(configs_path, configs, strlen(configs));
}

static int load_one(const char *path, const char *want_name, char *id, size_t id_size)
{
    ds_client *c = it_connect(&env);
    if (!c)
        return -1;
    char *paths[1] = {(char *)path};
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_load_tag;
    req.body.load.paths = paths;
    req.body.load.paths_count = 1;
    int rc = it_call(c, &req, &resp);
    int ok = rc == DS_CLIENT_OK && resp.body.load_result.models_count == 1 &&
             strcmp(resp.body.load_result.models[0].model_name, want_name) == 0;
    if (ok)
        snprintf(id, id_size, "%s", resp.body.load_result.models[0].model_id);
    else
        fprintf(stderr, "loading %s as %s failed: %s\n", path, want_name,
                rc == DS_CLIENT_OK ? "another model or none" : ds_client_last_error(c));
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    return ok ? 0 : -1;
}

/* --- golden data -------------------------------------------------------------------------- */

static const ds_tensor_view *golden_view(const char *name)
{
    const ds_sd_entry *e = ds_state_dict_find(&golden->tensors, name);
    return e && !e->dict ? &e->tensor : NULL;
}

static ds_client_tensor golden_input(const char *input, const char *golden_name)
{
    const ds_tensor_view *v = golden_view(golden_name);
    ds_client_tensor t = {.name = input, .dtype = (int)v->dtype, .ndim = v->ndim,
                          .data = v->data, .nbytes = (size_t)v->nbytes};
    for (int d = 0; d < v->ndim; d++)
        t.shape[d] = v->shape[d];
    return t;
}

/* The golden bf16 inputs: latents_bf16, prompt_emb_bf16, timestep (f32). */
static void golden_inputs(ds_client_tensor in[3])
{
    in[0] = golden_input("latents", "latents_bf16");
    in[1] = golden_input("prompt_emb", "prompt_emb_bf16");
    in[2] = golden_input("timestep", "timestep");
}

/* Relative L2 error of bf16 `got` against the golden tensor `want_name`; +inf on a size
 * mismatch or a non-finite value. */
static double rel_l2_bf16(const void *got, size_t nbytes, const char *want_name)
{
    const ds_tensor_view *want = golden_view(want_name);
    uint64_t n = ds_tensor_view_numel(want);
    if (nbytes != n * 2)
        return INFINITY;
    const uint16_t *g = got;
    double num = 0, den = 0;
    for (uint64_t i = 0; i < n; i++) {
        double a = ds_bf16_to_f32(g[i]), b = ds_load_f64(want->data, want->dtype, i);
        if (!isfinite(a))
            return INFINITY;
        num += (a - b) * (a - b);
        den += b * b;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* --- progress ----------------------------------------------------------------------------- */

typedef struct progress_log {
    uint64_t done[MAX_EVENTS];
    uint64_t total[MAX_EVENTS];
    double elapsed[MAX_EVENTS];
    int count;
    int other_phase;       /* events of a phase other than "forward" */
    ds_client *client;     /* cancel_after > 0: cancel through it after that many events */
    int cancel_after;
    int cancel_rc;
    bool cancel_found;
} progress_log;

static void on_progress(const diffsynth_v1_Progress *p, uint64_t request_id, void *user)
{
    progress_log *log = user;
    if (!p->phase || strcmp(p->phase, "forward") != 0) {
        log->other_phase++;
        return;
    }
    if (log->count < MAX_EVENTS) {
        log->done[log->count] = p->done;
        log->total[log->count] = p->total;
        log->elapsed[log->count] = p->elapsed_s;
    }
    log->count++;
    if (log->cancel_after > 0 && log->count == log->cancel_after)
        log->cancel_rc = ds_client_cancel(log->client, request_id, IT_CALL_TIMEOUT_MS,
                                          &log->cancel_found);
}

/* Events 1..total in order, each with that total, the time since the step started growing. */
static void check_progress(const progress_log *log, int total)
{
    CHECK_MSG(log->count == total, "%d forward events, expected %d", log->count, total);
    CHECK_MSG(log->other_phase == 0, "%d events of another phase", log->other_phase);
    for (int i = 0; i < log->count && i < MAX_EVENTS; i++)
        CHECK_MSG(log->done[i] == (uint64_t)i + 1 && log->total[i] == (uint64_t)total,
                  "event %d is %llu/%llu, expected %d/%d", i, (unsigned long long)log->done[i],
                  (unsigned long long)log->total[i], i + 1, total);
    for (int i = 1; i < log->count && i < MAX_EVENTS; i++)
        CHECK_MSG(log->elapsed[i] >= log->elapsed[i - 1] && log->elapsed[0] >= 0,
                  "elapsed_s %.3f after %.3f", log->elapsed[i], log->elapsed[i - 1]);
}

static void check_unharmed(void) { CHECK_MSG(it_status_ok(&env), "the daemon stopped answering"); }

/* --- 1 and 3: the golden step from two clients at once, with progress --------------------- */

typedef struct worker_arg {
    ds_client_step_result res;
    progress_log log;
    int rc;
    char error[512];
    double wall_s;
} worker_arg;

static void *golden_worker(void *p)
{
    worker_arg *w = p;
    double start = now_s();
    ds_client *c = it_connect(&env);
    if (!c) {
        w->rc = DS_CLIENT_ECONNECT;
        return NULL;
    }
    ds_client_tensor in[3];
    golden_inputs(in);
    ds_client_step_request r = {.model_id = golden_id, .inputs = in, .input_count = 3};
    w->rc = ds_client_run_step(c, &r, &w->res, STEP_TIMEOUT_MS, on_progress, &w->log, NULL);
    if (w->rc != DS_CLIENT_OK)
        snprintf(w->error, sizeof w->error, "%s", ds_client_last_error(c));
    ds_client_close(c);
    w->wall_s = now_s() - start;
    return NULL;
}

static void check_noise_pred(const ds_client_step_result *res, const char *who)
{
    REQUIRE(res->output_count == 1);
    const ds_client_tensor *t = &res->outputs[0];
    CHECK_STR_EQ(t->name, "noise_pred");
    CHECK(t->dtype == diffsynth_v1_DType_BF16);
    const ds_tensor_view *want = golden_view("noise_pred_bf16");
    CHECK(t->ndim == 4);
    for (int d = 0; d < 4 && t->ndim == 4; d++)
        CHECK(t->shape[d] == want->shape[d]);
    double rel = rel_l2_bf16(t->data, t->nbytes, "noise_pred_bf16");
    fprintf(stderr, "  %s: noise_pred relative L2 vs upstream bf16: %.3e (queued %.2f s, "
            "computed %.2f s)\n", who, rel, res->queue_s, res->compute_s);
    CHECK_MSG(rel < BF16_BUDGET, "%s: relative L2 %.3e", who, rel);
}

static void test_golden_two_clients(void)
{
    worker_arg w[2];
    memset(w, 0, sizeof w);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        REQUIRE(pthread_create(&th[i], NULL, golden_worker, &w[i]) == 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
        CHECK_MSG(w[i].rc == DS_CLIENT_OK, "client %d: rc %d: %s", i, w[i].rc, w[i].error);
        if (w[i].rc != DS_CLIENT_OK)
            continue;
        char who[32];
        snprintf(who, sizeof who, "client %d (%.2f s)", i, w[i].wall_s);
        check_noise_pred(&w[i].res, who);
        check_progress(&w[i].log, GOLDEN_LAYERS);
    }
    if (w[0].rc == DS_CLIENT_OK && w[1].rc == DS_CLIENT_OK && w[0].res.output_count == 1 &&
        w[1].res.output_count == 1)
        CHECK_MSG(w[0].res.outputs[0].nbytes == w[1].res.outputs[0].nbytes &&
                      memcmp(w[0].res.outputs[0].data, w[1].res.outputs[0].data,
                             w[0].res.outputs[0].nbytes) == 0,
                  "the two clients got different bytes");
    ds_client_step_result_free(&w[0].res);
    ds_client_step_result_free(&w[1].res);
    check_unharmed();
}

/* --- The CPU default converts once: bf16 weights at f32 ---------------------------------- */

/* One golden step with the f32 inputs (latents, prompt_emb): noise_pred f32 into *res. */
static int f32_step(ds_client_step_result *res, char *error, size_t size)
{
    ds_client *c = it_connect(&env);
    if (!c)
        return DS_CLIENT_ECONNECT;
    ds_client_tensor in[3] = {golden_input("latents", "latents"),
                              golden_input("prompt_emb", "prompt_emb"),
                              golden_input("timestep", "timestep")};
    ds_client_step_request r = {.model_id = golden_id, .inputs = in, .input_count = 3};
    int rc = ds_client_run_step(c, &r, res, STEP_TIMEOUT_MS, NULL, NULL, NULL);
    if (rc != DS_CLIENT_OK)
        snprintf(error, size, "%s", ds_client_last_error(c));
    ds_client_close(c);
    return rc;
}

/* The daemon runs without --vram-limit, its CPU default: a bf16 step leaves the golden model's
 * weights in place (no host tier bytes); an f32 step from its bf16 file keeps the Linear weights
 * converted to f32 in host memory (the host tier grows past the file's bytes by about half), a
 * second f32 step gives the same bytes, within the bf16 weights' budget of upstream's f32
 * output; the next bf16 step drops the converted copies again. That the copies are made once and
 * give the bytes of the per-call widening is the vram tests' (test_vram_dit). */
static void test_f32_converted_once(void)
{
    long long disk = it_tier_bytes(&env, golden_id, "disk");
    CHECK_MSG(it_tier_bytes(&env, golden_id, "host") == 0, "host tier %lld before an f32 step",
              it_tier_bytes(&env, golden_id, "host"));
    ds_client_step_result res[2];
    memset(res, 0, sizeof res);
    char error[512];
    for (int i = 0; i < 2; i++) {
        int rc = f32_step(&res[i], error, sizeof error);
        CHECK_MSG(rc == DS_CLIENT_OK, "f32 step %d: rc %d: %s", i, rc, error);
        if (rc != DS_CLIENT_OK)
            goto done;
        long long host = it_tier_bytes(&env, golden_id, "host");
        fprintf(stderr, "  f32 step %d: computed %.2f s, host tier %lld bytes, disk %lld\n", i,
                res[i].compute_s, host, disk);
        CHECK_MSG(disk > 0 && host > disk + disk / 2 && host < 2 * disk + (64 << 20),
                  "f32 step %d: host tier %lld bytes, disk %lld", i, host, disk);
    }
    REQUIRE(res[0].output_count == 1 && res[1].output_count == 1);
    const ds_client_tensor *t = &res[0].outputs[0];
    const ds_tensor_view *want = golden_view("noise_pred_f32");
    REQUIRE(want && t->dtype == diffsynth_v1_DType_F32 && t->nbytes == want->nbytes);
    CHECK(res[1].outputs[0].nbytes == t->nbytes &&
          memcmp(res[1].outputs[0].data, t->data, t->nbytes) == 0);
    double num = 0, den = 0;
    for (size_t i = 0; i < t->nbytes / 4; i++) {
        double a = ((const float *)t->data)[i], b = ds_load_f64(want->data, want->dtype, i);
        num += (a - b) * (a - b);
        den += b * b;
    }
    double rel = den > 0 ? sqrt(num / den) : INFINITY;
    fprintf(stderr, "  f32 noise_pred relative L2 vs upstream f32: %.3e\n", rel);
    CHECK(rel < BF16_BUDGET);

    worker_arg w;
    memset(&w, 0, sizeof w);
    golden_worker(&w);
    CHECK_MSG(w.rc == DS_CLIENT_OK, "bf16 step: rc %d: %s", w.rc, w.error);
    if (w.rc == DS_CLIENT_OK)
        check_noise_pred(&w.res, "bf16 after f32");
    ds_client_step_result_free(&w.res);
    CHECK(it_tier_bytes(&env, golden_id, "host") == 0);
done:
    ds_client_step_result_free(&res[0]);
    ds_client_step_result_free(&res[1]);
    check_unharmed();
}

/* --- 2 and 3: cancel of a running step, then a full one on the same model ------------------ */

static void test_cancel_running(void)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    ds_client_tensor in[3];
    golden_inputs(in);
    ds_client_step_request r = {.model_id = deep_id, .inputs = in, .input_count = 3};
    progress_log log = {.client = c, .cancel_after = 1, .cancel_rc = -100};
    ds_client_step_result res;
    double start = now_s();
    int rc = ds_client_run_step(c, &r, &res, STEP_TIMEOUT_MS, on_progress, &log, NULL);
    fprintf(stderr, "  cancelled step: %.2f s, %d of %d progress events\n", now_s() - start,
            log.count, DEEP_LAYERS);
    CHECK_MSG(log.cancel_rc == DS_CLIENT_OK && log.cancel_found,
              "cancel: rc %d found %d (%s)", log.cancel_rc, (int)log.cancel_found,
              ds_client_last_error(c));
    CHECK_MSG(rc == DS_CLIENT_EDAEMON && ds_client_last_code(c) == diffsynth_v1_Code_CANCELLED,
              "rc %d code %s: %s", rc, ds_client_code_name(ds_client_last_code(c)),
              ds_client_last_error(c));
    CHECK_CONTAINS(ds_client_last_error(c), "cancelled before block");
    CHECK_MSG(log.count >= 1 && log.count < DEEP_LAYERS, "%d progress events", log.count);
    for (int i = 0; i < log.count && i < MAX_EVENTS; i++)
        CHECK(log.done[i] == (uint64_t)i + 1 && log.total[i] == DEEP_LAYERS);
    ds_client_step_result_free(&res);
    ds_client_close(c);
    check_unharmed();

    /* The same model, run to the end: every block reports, in order. */
    c = it_connect(&env);
    REQUIRE(c);
    memset(&log, 0, sizeof log);
    start = now_s();
    rc = ds_client_run_step(c, &r, &res, STEP_TIMEOUT_MS, on_progress, &log, NULL);
    fprintf(stderr, "  full step of the %d-block model: %.2f s\n", DEEP_LAYERS, now_s() - start);
    CHECK_MSG(rc == DS_CLIENT_OK, "rc %d: %s", rc, ds_client_last_error(c));
    if (rc == DS_CLIENT_OK) {
        check_progress(&log, DEEP_LAYERS);
        CHECK(res.output_count == 1 && strcmp(res.outputs[0].name, "noise_pred") == 0 &&
              res.outputs[0].nbytes == golden_view("latents_bf16")->nbytes);
        /* All-zero weights: proj_out's output is exactly zero. */
        size_t nonzero = 0;
        const uint16_t *v = res.output_count ? res.outputs[0].data : NULL;
        for (size_t i = 0; v && i < res.outputs[0].nbytes / 2; i++)
            nonzero += (v[i] & 0x7FFF) != 0;
        CHECK_MSG(nonzero == 0, "%zu nonzero values from all-zero weights", nonzero);
    }
    ds_client_step_result_free(&res);
    ds_client_close(c);
    check_unharmed();
}

/* A client that leaves mid-step: its running step is cancelled at the next block boundary
 * (the daemon logs the dropped CANCELLED result), not run to the end, and the worker is free
 * for the next step. Raw socket: the client library offers no way to vanish mid-call. */
static pb_bytes_array_t *bytes_copy(const void *data, size_t n)
{
    pb_bytes_array_t *b = malloc(PB_BYTES_ARRAY_T_ALLOCSIZE(n));
    if (b) {
        b->size = (pb_size_t)n;
        memcpy(b->bytes, data, n);
    }
    return b;
}

static void test_client_leaves(void)
{
    ds_client_tensor in[3];
    golden_inputs(in);
    diffsynth_v1_Tensor t[3];
    memset(t, 0, sizeof t);
    int ok = 1;
    for (int i = 0; i < 3; i++) {
        t[i].name = (char *)in[i].name;
        t[i].dtype = (diffsynth_v1_DType)in[i].dtype;
        t[i].shape = in[i].shape;
        t[i].shape_count = (pb_size_t)in[i].ndim;
        t[i].data = bytes_copy(in[i].data, in[i].nbytes);
        ok &= t[i].data != NULL;
    }
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.request_id = 77;
    req.which_body = diffsynth_v1_Envelope_run_step_tag;
    req.body.run_step.model_id = deep_id;
    req.body.run_step.inputs = t;
    req.body.run_step.inputs_count = 3;
    uint8_t *frame = NULL;
    size_t len = 0;
    int fd = -1;
    if (ok)
        ok = it_encode_frame(&req, &frame, &len) == 0;
    if (ok)
        ok = (fd = it_raw_connect(env.socket)) >= 0 && it_raw_write(fd, frame, len) == 0;
    CHECK(ok);
    /* Wait until the step reports its first block: it is running. */
    int events = 0;
    while (ok) {
        diffsynth_v1_Envelope e;
        if (it_raw_read_frame(fd, &e, STEP_TIMEOUT_MS) != 0) {
            CHECK_MSG(0, "no progress event arrived");
            break;
        }
        int is_event = e.request_id == 77 && e.which_body == diffsynth_v1_Envelope_event_tag;
        int other = e.which_body != diffsynth_v1_Envelope_event_tag;
        ds_client_envelope_free(&e);
        if (is_event) {
            events++;
            break;
        }
        if (other) {
            CHECK_MSG(0, "the step ended before any progress event");
            break;
        }
    }
    if (fd >= 0)
        close(fd);
    free(frame);
    for (int i = 0; i < 3; i++)
        free(t[i].data);
    REQUIRE(events == 1);

    /* The next step waits only for the abandoned one to stop. */
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    golden_inputs(in);
    ds_client_step_request r = {.model_id = golden_id, .inputs = in, .input_count = 3};
    ds_client_step_result res;
    int rc = ds_client_run_step(c, &r, &res, STEP_TIMEOUT_MS, NULL, NULL, NULL);
    CHECK_MSG(rc == DS_CLIENT_OK, "rc %d: %s", rc, ds_client_last_error(c));
    if (rc == DS_CLIENT_OK)
        check_noise_pred(&res, "after a client left");
    ds_client_step_result_free(&res);
    ds_client_close(c);
    char *log = it_read_file(env.log, NULL);
    CHECK_CONTAINS(log, "request 77 finished (CANCELLED) after its client left");
    free(log);
    check_unharmed();
}

/* --- 4: bad shapes, names and dtypes -------------------------------------------------------- */

static uint16_t scratch[16 * 8 * 8 + 7 * 3584];

/* Runs the golden inputs with input `which` replaced by `t` (data: zeros of its size) and
 * expects INVALID_ARGUMENT containing both needles. */
static void expect_invalid(int which, ds_client_tensor t, const char *needle1, const char *needle2)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    ds_client_tensor in[3];
    golden_inputs(in);
    size_t numel = 1;
    for (int d = 0; d < t.ndim; d++)
        numel *= (size_t)t.shape[d];
    t.nbytes = numel * ds_client_dtype_size(t.dtype);
    REQUIRE(t.nbytes <= sizeof scratch);
    t.data = scratch;
    in[which] = t;
    ds_client_step_request r = {.model_id = golden_id, .inputs = in, .input_count = 3};
    ds_client_step_result res;
    int rc = ds_client_run_step(c, &r, &res, STEP_TIMEOUT_MS, NULL, NULL, NULL);
    CHECK_MSG(rc == DS_CLIENT_EDAEMON && ds_client_last_code(c) == diffsynth_v1_Code_INVALID_ARGUMENT,
              "rc %d code %s: %s", rc, ds_client_code_name(ds_client_last_code(c)),
              ds_client_last_error(c));
    CHECK_CONTAINS(ds_client_last_error(c), needle1);
    CHECK_CONTAINS(ds_client_last_error(c), needle2);
    ds_client_step_result_free(&res);
    ds_client_close(c);
    check_unharmed();
}

static void test_bad_inputs(void)
{
    ds_client_tensor odd = {"latents", diffsynth_v1_DType_BF16, 4, {1, 16, 5, 8}, NULL, 0};
    expect_invalid(0, odd, "input \"latents\" is", "[B, 16, H, W] f32 or bf16 with H and W even");
    ds_client_tensor narrow = {"prompt_emb", diffsynth_v1_DType_BF16, 3, {1, 7, 3583}, NULL, 0};
    expect_invalid(1, narrow, "input \"prompt_emb\" is", "expected [1, L, 3584] bf16");
    ds_client_tensor renamed = golden_input("latent", "latents_bf16");
    expect_invalid(0, renamed, "unknown input \"latent\"", "accepted: latents");
    ds_client_tensor f16 = {"latents", diffsynth_v1_DType_F16, 4, {1, 16, 6, 8}, NULL, 0};
    expect_invalid(0, f16, "input \"latents\" is", "expected [B, 16, H, W] f32 or bf16");
    /* prompt_emb must follow latents' dtype. */
    ds_client_tensor f32_prompt = {"prompt_emb", diffsynth_v1_DType_F32, 3, {1, 2, 3584}, NULL, 0};
    expect_invalid(1, f32_prompt, "input \"prompt_emb\" is", "expected [1, L, 3584] bf16");
    ds_client_tensor bad_time = {"timestep", diffsynth_v1_DType_I64, 1, {1}, NULL, 0};
    expect_invalid(2, bad_time, "input \"timestep\" is", "expected [1] or [1] f32 or f64");
}

/* --- 5: the CLI ------------------------------------------------------------------------------ */

static int write_input(const char *path, const char *golden_name, const char *as)
{
    const ds_tensor_view *v = golden_view(golden_name);
    ds_st_out_tensor t = {as, v->dtype, v->ndim, v->shape, v->data, (size_t)v->nbytes};
    ds_error err;
    if (ds_safetensors_write(path, &t, 1, &err) != DS_OK) {
        fprintf(stderr, "%s\n", err.message);
        return -1;
    }
    return 0;
}

static void test_cli(void)
{
    char lat[256], ts[256], out[256], odd[256], bad_out[256], prompt_spec[1100];
    snprintf(lat, sizeof lat, "%s/in_latents.safetensors", env.dir);
    snprintf(ts, sizeof ts, "%s/in_timestep.safetensors", env.dir);
    snprintf(out, sizeof out, "%s/noise.safetensors", env.dir);
    snprintf(odd, sizeof odd, "%s/in_odd.safetensors", env.dir);
    snprintf(bad_out, sizeof bad_out, "%s/never.safetensors", env.dir);
    REQUIRE(write_input(lat, "latents_bf16", "x") == 0);
    REQUIRE(write_input(ts, "timestep", "timestep") == 0);
    /* prompt_emb straight from the golden file, picked by name (FILE:TENSOR). */
    snprintf(prompt_spec, sizeof prompt_spec, "prompt_emb=%s:prompt_emb_bf16", golden->path);
    char latents_arg[300], timestep_arg[300];
    snprintf(latents_arg, sizeof latents_arg, "latents=%s", lat);
    snprintf(timestep_arg, sizeof timestep_arg, "timestep=%s", ts);

    const char *argv[] = {cli, "--socket", env.socket, "run-step", golden_id,
                          "--input", latents_arg, "--input", prompt_spec,
                          "--input", timestep_arg, "--output", out, NULL};
    char *so = NULL, *se = NULL;
    double start = now_s();
    int status = it_run(argv, NULL, CLI_TIMEOUT_MS, &so, &se);
    fprintf(stderr, "  diffsynth run-step: %.2f s\n", now_s() - start);
    CHECK_MSG(status == 0, "exit %d\nstdout: %s\nstderr: %s", status, so ? so : "",
              se ? se : "");
    CHECK_CONTAINS(so, "noise_pred [1, 16, 6, 8]");
    CHECK_CONTAINS(so, "wrote 1 tensor to");
    CHECK_CONTAINS(se, "progress: forward 1/2");
    CHECK_CONTAINS(se, "progress: forward 2/2");
    free(so);
    free(se);
    ds_safetensors *st = NULL;
    ds_error err;
    if (status == 0) {
        int rc = ds_safetensors_open(out, 0, &st, &err);
        CHECK_MSG(rc == DS_OK, "%s", err.message);
    }
    if (st) {
        const ds_sd_entry *e = ds_state_dict_find(&st->tensors, "noise_pred");
        CHECK(st->tensors.count == 1 && e && !e->dict);
        if (e && !e->dict) {
            CHECK(e->tensor.dtype == DS_BF16 && e->tensor.ndim == 4);
            double rel = rel_l2_bf16(e->tensor.data, (size_t)e->tensor.nbytes, "noise_pred_bf16");
            fprintf(stderr, "  CLI noise_pred relative L2 vs upstream bf16: %.3e\n", rel);
            CHECK_MSG(rel < BF16_BUDGET, "relative L2 %.3e", rel);
        }
        ds_safetensors_close(st);
    }

    /* A bad shape: the daemon's message on stderr, a non-zero exit, no output file. */
    const ds_tensor_view *v = golden_view("latents_bf16");
    int64_t shape[4] = {1, 16, 5, 8};
    ds_st_out_tensor t = {"latents", DS_BF16, 4, shape, v->data, 16 * 5 * 8 * 2};
    REQUIRE(ds_safetensors_write(odd, &t, 1, &err) == DS_OK);
    snprintf(latents_arg, sizeof latents_arg, "latents=%s", odd);
    argv[12] = bad_out;
    status = it_run(argv, NULL, CLI_TIMEOUT_MS, &so, &se);
    CHECK_MSG(status == 1, "exit %d", status);
    CHECK_CONTAINS(se, "error: INVALID_ARGUMENT: forward: input \"latents\" is");
    CHECK_CONTAINS(se, "H and W even");
    CHECK(access(bad_out, F_OK) != 0);
    free(so);
    free(se);
    check_unharmed();
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s DIFFSYNTHD DIFFSYNTH\n", argv[0]);
        return 2;
    }
    cli = argv[2];
    const char *root = getenv("DS_TEST_DATA");
    char path[1024];
    ds_error err;
    snprintf(path, sizeof path, "%s/golden/qwen_image_dit_2layers.safetensors",
             root ? root : "tests/data");
    if (ds_safetensors_open(path, 0, &golden, &err) != DS_OK) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    static const char *const needed[] = {"latents_bf16", "prompt_emb_bf16", "timestep",
                                         "noise_pred_bf16", "latents", "prompt_emb",
                                         "noise_pred_f32"};
    for (size_t i = 0; i < sizeof needed / sizeof needed[0]; i++)
        if (!golden_view(needed[i])) {
            fprintf(stderr, "%s has no tensor \"%s\"\n", path, needed[i]);
            ds_safetensors_close(golden);
            return 1;
        }
    double wall = now_s();
    it_env_init(&env, argv[1]);
    install_cleanup();
    const char *extra[] = {"--model-configs", configs_path, "--threads", "2", NULL};
    if (make_models() != 0 || it_daemon_start(&env, extra) != 0 ||
        load_one(golden_model, "qwen_image_dit_golden", golden_id, sizeof golden_id) != 0 ||
        load_one(deep_model, "qwen_image_dit_deep", deep_id, sizeof deep_id) != 0) {
        it_dump_log(&env);
        it_env_cleanup(&env);
        ds_safetensors_close(golden);
        return 1;
    }
    RUN(test_golden_two_clients);
    RUN(test_f32_converted_once);
    RUN(test_cancel_running);
    RUN(test_client_leaves);
    RUN(test_bad_inputs);
    RUN(test_cli);

    int status = -1;
    if (it_daemon_stop(&env, &status) != 0 || status != 0) {
        fprintf(stderr, "FAIL the daemon did not stop cleanly (status %d)\n", status);
        test_failures++;
    }
    if (test_failures)
        it_dump_log(&env);
    it_env_cleanup(&env);
    remove_models_now();
    ds_safetensors_close(golden);
    fprintf(stderr, "  whole test: %.2f s\n", now_s() - wall);
    return test_summary();
}
