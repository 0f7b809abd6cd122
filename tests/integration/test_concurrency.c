/* Many clients at once on one daemon: 50 threads, each with its own connection and client
 * name, 20 requests each (Status, Identify, ListModels, and Load + Unload of one shared
 * controlnet file). Every reply must be the right one, no reference may leak, the daemon must
 * stay up and log no errors. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "test.h"

#define THREADS 50
#define REQUESTS 20
#define CN_HASH "073bce9cf969e317e5662cd570c3e79c"
#define VAE_HASH "ed4ea5824d55ec3107b09815e318123a"

static it_env env;
static char **cn, **vae;
static size_t cn_n, vae_n;

typedef struct worker {
    pthread_t thread;
    int index;
    char name[32];
    int failures;
    int answered;
    char first_failure[512];
} worker;

static pthread_barrier_t start_gate;

static void fail(worker *w, const char *fmt, const char *detail, int rc)
{
    if (w->failures++ == 0)
        snprintf(w->first_failure, sizeof w->first_failure, "%s: %s (status %d)", fmt,
                 detail ? detail : "", rc);
}

static bool str_is(const char *s, const char *expected)
{
    return s && strcmp(s, expected) == 0;
}

static void *run_worker(void *arg)
{
    worker *w = arg;
    pthread_barrier_wait(&start_gate);
    ds_client *c = it_connect(&env);
    if (!c) {
        fail(w, "connect", NULL, 0);
        return NULL;
    }
    char model_id[64] = "";
    for (int i = 0; i < REQUESTS; i++) {
        diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
        int kind = (i + w->index) % 5;
        /* An unload needs the id of this thread's last load. */
        if (kind == 4 && !model_id[0])
            kind = 0;
        switch (kind) {
        case 0: req.which_body = diffsynth_v1_Envelope_status_tag; break;
        case 1:
            req.which_body = diffsynth_v1_Envelope_identify_tag;
            req.body.identify.paths = (i % 2) ? cn : vae;
            req.body.identify.paths_count = 1;
            break;
        case 2: req.which_body = diffsynth_v1_Envelope_list_models_tag; break;
        case 3:
            req.which_body = diffsynth_v1_Envelope_load_tag;
            req.body.load.paths = cn;
            req.body.load.paths_count = (pb_size_t)cn_n;
            req.body.load.client_name = w->name;
            break;
        default:
            req.which_body = diffsynth_v1_Envelope_unload_tag;
            req.body.unload.model_id = model_id;
            req.body.unload.client_name = w->name;
            break;
        }
        int rc = it_call(c, &req, &resp);
        if (rc != DS_CLIENT_OK) {
            fail(w, "request failed", ds_client_last_error(c), rc);
            continue;
        }
        w->answered++;
        switch (kind) {
        case 0:
            if (resp.which_body != diffsynth_v1_Envelope_status_result_tag ||
                !str_is(resp.body.status_result.backend, "cpu"))
                fail(w, "Status reply", NULL, 0);
            break;
        case 1:
            if (resp.which_body != diffsynth_v1_Envelope_identify_result_tag ||
                !str_is(resp.body.identify_result.model_hash, (i % 2) ? CN_HASH : VAE_HASH))
                fail(w, "Identify reply", resp.body.identify_result.model_hash, 0);
            break;
        case 2:
            if (resp.which_body != diffsynth_v1_Envelope_list_models_result_tag ||
                resp.body.list_models_result.models_count > 1)
                fail(w, "ListModels reply", NULL, 0);
            break;
        case 3: {
            const diffsynth_v1_LoadResponse *r = &resp.body.load_result;
            if (resp.which_body != diffsynth_v1_Envelope_load_result_tag || r->models_count != 1 ||
                !str_is(r->model_hash, CN_HASH) ||
                !str_is(r->models[0].model_name, "qwen_image_blockwise_controlnet")) {
                fail(w, "Load reply", NULL, 0);
                break;
            }
            bool mine = false;
            for (pb_size_t k = 0; k < r->models[0].clients_count; k++)
                mine = mine || str_is(r->models[0].clients[k], w->name);
            if (!mine)
                fail(w, "Load reply does not list the client", w->name, 0);
            snprintf(model_id, sizeof model_id, "%s", r->models[0].model_id);
            break;
        }
        default:
            if (resp.which_body != diffsynth_v1_Envelope_unload_result_tag ||
                !str_is(resp.body.unload_result.model_id, model_id))
                fail(w, "Unload reply", model_id, 0);
            model_id[0] = '\0';
            break;
        }
        ds_client_envelope_free(&resp);
    }
    /* The last load of a thread whose requests ended on it. */
    if (model_id[0]) {
        diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
        req.which_body = diffsynth_v1_Envelope_unload_tag;
        req.body.unload.model_id = model_id;
        req.body.unload.client_name = w->name;
        int rc = it_call(c, &req, &resp);
        if (rc != DS_CLIENT_OK)
            fail(w, "final unload", ds_client_last_error(c), rc);
        ds_client_envelope_free(&resp);
    }
    ds_client_close(c);
    return NULL;
}

static void test_many_clients(void)
{
    static worker workers[THREADS];
    uint64_t t0 = it_now_ms();
    REQUIRE(pthread_barrier_init(&start_gate, NULL, THREADS + 1) == 0);
    for (int i = 0; i < THREADS; i++) {
        workers[i].index = i;
        snprintf(workers[i].name, sizeof workers[i].name, "it-thread-%02d", i);
        REQUIRE(pthread_create(&workers[i].thread, NULL, run_worker, &workers[i]) == 0);
    }
    pthread_barrier_wait(&start_gate);
    int failures = 0, answered = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(workers[i].thread, NULL);
        failures += workers[i].failures;
        answered += workers[i].answered;
        if (workers[i].failures)
            fprintf(stderr, "%s: %d failures, first: %s\n", workers[i].name, workers[i].failures,
                    workers[i].first_failure);
    }
    pthread_barrier_destroy(&start_gate);
    fprintf(stderr, "%d requests answered in %llu ms\n", answered,
            (unsigned long long)(it_now_ms() - t0));
    CHECK(failures == 0);
    CHECK_MSG(answered == THREADS * REQUESTS, "%d answered", answered);

    /* Every load was paired with an unload of the same client: nothing may be left. */
    char *snap = it_pool_snapshot(&env);
    CHECK_MSG(snap && !snap[0], "references left in the pool:\n%s", snap ? snap : "?");
    free(snap);
}

static void test_still_alive(void)
{
    CHECK(it_daemon_alive(&env));
    CHECK(it_status_ok(&env));
}

/* The daemon's own error lines: a log line is "<time> <level> <message>". */
static void test_log_clean(void)
{
    char *log = it_read_file(env.log, NULL);
    REQUIRE(log);
    int errors = 0;
    for (char *line = log; line && *line;) {
        char *end = strchr(line, '\n');
        if (end)
            *end = '\0';
        char level[16] = "";
        if (sscanf(line, "%*s %15s", level) == 1 &&
            (strcmp(level, "error") == 0 || strstr(line, "AddressSanitizer") ||
             strstr(line, "runtime error"))) {
            fprintf(stderr, "daemon log: %s\n", line);
            errors++;
        }
        line = end ? end + 1 : NULL;
    }
    CHECK(errors == 0);
    free(log);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIFFSYNTHD [DIFFSYNTH]\n", argv[0]);
        return 2;
    }
    it_env_init(&env, argv[1]);
    if (it_make_model(&env, "qwen_image_blockwise_controlnet", "cn", 1, &cn, &cn_n) != 0 ||
        it_make_model(&env, "qwen_image_vae", "vae", 1, &vae, &vae_n) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    /* Debug logging of 1000 requests costs more than the requests: info is enough here. */
    const char *extra[] = {"--log-level", "info", NULL};
    if (it_daemon_start(&env, extra) != 0) {
        it_env_cleanup(&env);
        return 1;
    }

    RUN(test_many_clients);
    RUN(test_still_alive);

    int status = -1;
    if (it_daemon_stop(&env, &status) != 0 || status != 0) {
        fprintf(stderr, "FAIL the daemon did not stop cleanly (status %d)\n", status);
        test_failures++;
    }
    RUN(test_log_clean);
    if (test_failures)
        it_dump_log(&env);
    ds_st_paths_free(cn, cn_n);
    ds_st_paths_free(vae, vae_n);
    it_env_cleanup(&env);
    return test_summary();
}
