/* The daemon's VRAM manager (diffsynthd --vram-limit) with two models and two clients.
 *
 * Two 1-block Qwen-Image DiTs at full width (~0.76 GB of bf16 each, written as sparse files:
 * all-zero weights, no disk) are loaded by two clients; the budget, 0.5 GiB, holds neither
 * model whole, so every step evicts units of its own model and of the other. Both clients run
 * two steps at once, interleaved by the worker. Checks: every step succeeds with the same
 * bytes, Status reports the budget, bytes moved, evictions and a peak within the budget,
 * ListModels reports each model's fast-tier bytes (host memory on the CPU backend) summing to
 * the resident bytes (also asked while the steps run), unloading a model drops its units, and a
 * budget below one unit fails the step with RESOURCE_EXHAUSTED while the daemon stays up.
 *
 * Load's vram_config: a bad one (or a bad torch_dtype) is INVALID_ARGUMENT naming the field and
 * the value; fp8 offload shows in ListModels' vram_config_json (upstream's filled-in config, with
 * torch's dtype names) and, once a step has registered the units, as an "offload cpu f8_e4m3"
 * tier holding half the bf16 bytes; the same files with the same config
 * reuse the entry, with none they are a separate one; a daemon without a VRAM manager refuses a
 * managed config with FAILED_PRECONDITION. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/safetensors_write.h"
#include "core/state_dict.h"
#include "harness.h"
#include "test.h"

#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"
#define LAYERS 1
#define LIMIT_GIB "0.5"
#define LIMIT_BYTES (512ull << 20)
#define STEPS_PER_CLIENT 2
/* A forward under ASan on two busy cores may be silent this long. */
#define STEP_TIMEOUT_MS 300000

static it_env env;
static const char *cli; /* the diffsynth CLI, argv[2] */
static char configs_path[256];
static char model_path[2][256];
static char model_id[2][32];

/* Inputs: 1 x 16 x 8 x 8 latents, 7 prompt tokens, bf16; one f32 timestep. */
static uint16_t latents[16 * 8 * 8], prompt[7 * 3584];
static float timestep[1] = {500.0f};

/* The real DiT key list cut to LAYERS blocks, bf16; `hash` gets its model hash. */
static int dit_keys(ds_state_dict *sd, char hash[33])
{
    if (it_keylist_cut("qwen_image_dit", "transformer_blocks.", LAYERS, sd) != 0)
        return -1;
    return it_state_dict_hash(sd, hash);
}

static ds_state_dict keys; /* the model's tensors, kept for writing more files */

static int write_model(const char *path)
{
    ds_error err;
    if (ds_st_write(path, &keys, 0, keys.count, DS_ST_FILL_SPARSE, 0, &err) != DS_OK) {
        fprintf(stderr, "%s\n", err.message);
        return -1;
    }
    return 0;
}

/* Two files with the same tensors (so the pool keeps two models) and one config. */
static int make_models(void)
{
    char hash[33];
    if (dit_keys(&keys, hash) != 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        snprintf(model_path[i], sizeof model_path[i], "%s/dit_%c.safetensors", env.models,
                 'a' + i);
        if (write_model(model_path[i]) != 0)
            return -1;
    }
    snprintf(configs_path, sizeof configs_path, "%s/configs.json", env.dir);
    char configs[512];
    snprintf(configs, sizeof configs,
             "[{\"model_hash\": \"%s\", \"model_name\": \"qwen_image_dit_small\", "
             "\"model_class\": \"" DIT_CLASS "\", \"extra_kwargs\": {\"num_layers\": %d}}]\n",
             hash, LAYERS);
    return it_write_file(configs_path, configs, strlen(configs));
}

static int load_one(const char *path, const char *client, char *id, size_t id_size)
{
    ds_client *c = it_connect(&env);
    if (!c)
        return -1;
    char *paths[1] = {(char *)path};
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_load_tag;
    req.body.load.paths = paths;
    req.body.load.paths_count = 1;
    req.body.load.client_name = (char *)client;
    int rc = it_call(c, &req, &resp);
    int ok = rc == DS_CLIENT_OK && resp.body.load_result.models_count == 1 &&
             !resp.body.load_result.models[0].reused;
    if (ok)
        snprintf(id, id_size, "%s", resp.body.load_result.models[0].model_id);
    else
        fprintf(stderr, "loading %s failed: %s\n", path,
                rc == DS_CLIENT_OK ? "no model, or an existing one reused" :
                                     ds_client_last_error(c));
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    return ok ? 0 : -1;
}

/* A Load with a vram_config and torch_dtype (NULL: none). Returns the client status; the id
 * and reused flag of the one model on success, the daemon's code and message otherwise. */
typedef struct load_answer {
    int rc;
    int code;
    char message[512];
    char id[32];
    int reused;
} load_answer;

static load_answer load_config(const char *path, const char *client, const char *vram_config,
                               const char *torch_dtype)
{
    load_answer a = {.rc = DS_CLIENT_ECONNECT};
    ds_client *c = it_connect(&env);
    if (!c)
        return a;
    char *paths[1] = {(char *)path};
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_load_tag;
    req.body.load.paths = paths;
    req.body.load.paths_count = 1;
    req.body.load.client_name = (char *)client;
    req.body.load.vram_config_json = (char *)vram_config;
    req.body.load.torch_dtype = (char *)torch_dtype;
    a.rc = it_call(c, &req, &resp);
    if (a.rc == DS_CLIENT_OK && resp.body.load_result.models_count == 1) {
        snprintf(a.id, sizeof a.id, "%s", resp.body.load_result.models[0].model_id);
        a.reused = resp.body.load_result.models[0].reused;
    } else if (a.rc != DS_CLIENT_OK) {
        a.code = (int)ds_client_last_code(c);
        snprintf(a.message, sizeof a.message, "%s", ds_client_last_error(c));
    }
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    return a;
}

static int status(diffsynth_v1_StatusResponse *out)
{
    ds_client *c = it_connect(&env);
    if (!c)
        return -1;
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_status_tag;
    int rc = it_call(c, &req, &resp);
    if (rc == DS_CLIENT_OK)
        *out = resp.body.status_result;
    /* Only scalars are kept: the repeated fields go with the envelope. */
    out->memory = NULL;
    out->memory_count = 0;
    out->model_roots = NULL;
    out->model_roots_count = 0;
    out->version = out->backend = out->socket_path = NULL;
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    return rc == DS_CLIENT_OK ? 0 : -1;
}

/* Each model's "host" tier bytes from ListModels, in model_id order. */
static int host_bytes(uint64_t bytes[2], size_t *models)
{
    ds_client *c = it_connect(&env);
    if (!c)
        return -1;
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_list_models_tag;
    int rc = it_call(c, &req, &resp);
    bytes[0] = bytes[1] = 0;
    *models = 0;
    if (rc == DS_CLIENT_OK) {
        const diffsynth_v1_ListModelsResponse *r = &resp.body.list_models_result;
        *models = r->models_count;
        for (pb_size_t i = 0; i < r->models_count; i++)
            for (int k = 0; k < 2; k++)
                if (strcmp(r->models[i].model_id, model_id[k]) == 0)
                    for (pb_size_t t = 0; t < r->models[i].tiers_count; t++)
                        if (strcmp(r->models[i].tiers[t].tier, "host") == 0)
                            bytes[k] = r->models[i].tiers[t].bytes;
    }
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    return rc == DS_CLIENT_OK ? 0 : -1;
}

typedef struct worker_arg {
    int which;
    int rc[STEPS_PER_CLIENT];
    char error[512];
    void *output[STEPS_PER_CLIENT]; /* malloc'd noise_pred bytes */
    size_t nbytes[STEPS_PER_CLIENT];
} worker_arg;

/* The step's inputs: the latents, prompt embedding and timestep above. */
static void dit_inputs(ds_client_tensor in[3])
{
    const ds_client_tensor inputs[3] = {
        {.name = "latents", .dtype = diffsynth_v1_DType_BF16, .ndim = 4,
         .shape = {1, 16, 8, 8}, .data = latents, .nbytes = sizeof latents},
        {.name = "prompt_emb", .dtype = diffsynth_v1_DType_BF16, .ndim = 3,
         .shape = {1, 7, 3584}, .data = prompt, .nbytes = sizeof prompt},
        {.name = "timestep", .dtype = diffsynth_v1_DType_F32, .ndim = 1, .shape = {1},
         .data = timestep, .nbytes = sizeof timestep},
    };
    memcpy(in, inputs, sizeof inputs);
}

/* One step of model `id` on a new connection, its output dropped. The client's status; a
 * daemon error's code and message go to *code and msg. */
static int dit_step(const char *id, int *code, char *msg, size_t msg_size)
{
    ds_client *c = it_connect(&env);
    if (!c)
        return DS_CLIENT_ECONNECT;
    ds_client_tensor in[3];
    dit_inputs(in);
    ds_client_step_request r = {.model_id = id, .inputs = in, .input_count = 3};
    ds_client_step_result res;
    int rc = ds_client_run_step(c, &r, &res, STEP_TIMEOUT_MS, NULL, NULL, NULL);
    if (rc == DS_CLIENT_OK)
        ds_client_step_result_free(&res);
    if (code)
        *code = ds_client_last_code(c);
    if (msg)
        snprintf(msg, msg_size, "%s", rc == DS_CLIENT_OK ? "" : ds_client_last_error(c));
    ds_client_close(c);
    return rc;
}

static void *worker(void *p)
{
    worker_arg *w = p;
    ds_client *c = it_connect(&env);
    if (!c) {
        w->rc[0] = DS_CLIENT_ECONNECT;
        return NULL;
    }
    ds_client_tensor in[3];
    dit_inputs(in);
    ds_client_step_request r = {.model_id = model_id[w->which], .inputs = in,
                                .input_count = 3};
    for (int s = 0; s < STEPS_PER_CLIENT; s++) {
        ds_client_step_result res;
        w->rc[s] = ds_client_run_step(c, &r, &res, STEP_TIMEOUT_MS, NULL, NULL, NULL);
        if (w->rc[s] != DS_CLIENT_OK) {
            snprintf(w->error, sizeof w->error, "%s", ds_client_last_error(c));
            break;
        }
        if (res.output_count == 1 && (w->output[s] = malloc(res.outputs[0].nbytes))) {
            memcpy(w->output[s], res.outputs[0].data, res.outputs[0].nbytes);
            w->nbytes[s] = res.outputs[0].nbytes;
        }
        ds_client_step_result_free(&res);
    }
    ds_client_close(c);
    return NULL;
}

/* Status and ListModels while the steps run: the loop thread reads the manager the worker is
 * using. Counts the answers; stops when told. */
typedef struct poller_arg {
    volatile int stop;
    int answers, failures;
} poller_arg;

static void *poller(void *p)
{
    poller_arg *a = p;
    while (!a->stop) {
        diffsynth_v1_StatusResponse st = diffsynth_v1_StatusResponse_init_zero;
        uint64_t bytes[2];
        size_t models;
        if (status(&st) == 0 && st.has_vram && st.vram.resident_bytes <= LIMIT_BYTES &&
            host_bytes(bytes, &models) == 0)
            a->answers++;
        else
            a->failures++;
        usleep(20000);
    }
    return NULL;
}

static void test_two_clients_interleaved(void)
{
    worker_arg w[2];
    memset(w, 0, sizeof w);
    pthread_t th[2], poll_th;
    poller_arg poll = {0};
    REQUIRE(pthread_create(&poll_th, NULL, poller, &poll) == 0);
    for (int i = 0; i < 2; i++) {
        w[i].which = i;
        REQUIRE(pthread_create(&th[i], NULL, worker, &w[i]) == 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    poll.stop = 1;
    pthread_join(poll_th, NULL);
    fprintf(stderr, "  %d Status + ListModels answered during the steps\n", poll.answers);
    CHECK(poll.answers > 0 && poll.failures == 0);
    for (int i = 0; i < 2; i++)
        for (int s = 0; s < STEPS_PER_CLIENT; s++) {
            CHECK_MSG(w[i].rc[s] == DS_CLIENT_OK, "client %d step %d: rc %d: %s", i, s,
                      w[i].rc[s], w[i].error);
            CHECK(w[i].output[s] && w[i].nbytes[s] == sizeof latents);
            /* The same (zero) weights and inputs: every step gives the same bytes. */
            if (w[i].output[s] && w[0].output[0])
                CHECK(memcmp(w[i].output[s], w[0].output[0], sizeof latents) == 0);
        }
    for (int i = 0; i < 2; i++)
        for (int s = 0; s < STEPS_PER_CLIENT; s++)
            free(w[i].output[s]);

    diffsynth_v1_StatusResponse st = diffsynth_v1_StatusResponse_init_zero;
    REQUIRE(status(&st) == 0);
    REQUIRE(st.has_vram);
    fprintf(stderr, "  status: budget %llu, resident %llu, peak %llu, moved %llu, loads %llu, "
            "prefetches %llu, hits %llu, evictions %llu, copy %.2f s, wait %.2f s, "
            "compute %.2f s\n",
            (unsigned long long)st.vram.budget_bytes, (unsigned long long)st.vram.resident_bytes,
            (unsigned long long)st.vram.peak_bytes, (unsigned long long)st.vram.bytes_moved,
            (unsigned long long)st.vram.loads, (unsigned long long)st.vram.prefetches,
            (unsigned long long)st.vram.hits, (unsigned long long)st.vram.evictions,
            st.vram.copy_seconds, st.vram.wait_seconds, st.vram.compute_seconds);
    CHECK(st.vram.limited);
    CHECK(st.vram.budget_bytes == LIMIT_BYTES);
    CHECK(st.vram.bytes_moved > 0);
    CHECK(st.vram.evictions > 0);
    CHECK(st.vram.peak_bytes > 0 && st.vram.peak_bytes <= LIMIT_BYTES);
    CHECK(st.vram.resident_bytes <= LIMIT_BYTES);
    CHECK(st.vram.activation_bytes == 0);
    CHECK(st.vram.copy_seconds > 0 && st.vram.compute_seconds > 0);

    uint64_t bytes[2];
    size_t models;
    REQUIRE(host_bytes(bytes, &models) == 0);
    CHECK(models == 2);
    fprintf(stderr, "  host tier: %s %llu, %s %llu\n", model_id[0],
            (unsigned long long)bytes[0], model_id[1], (unsigned long long)bytes[1]);
    CHECK(bytes[0] + bytes[1] == st.vram.resident_bytes);
    CHECK(bytes[0] + bytes[1] > 0);

    /* --log-level debug (the harness's): each eviction is logged with its unit and bytes. */
    char *log = it_read_file(env.log, NULL);
    REQUIRE(log);
    unsigned long long logged = 0;
    for (char *line = log; line && *line;) {
        char *end = strchr(line, '\n');
        if (end)
            *end = '\0';
        logged += strstr(line, "vram: evicted unit 'transformer_blocks.0.") &&
                  strstr(line, "of model 'qwen_image_dit_small' (") && strstr(line, " bytes)");
        line = end ? end + 1 : NULL;
    }
    free(log);
    fprintf(stderr, "  %llu evictions logged of %llu counted\n", logged,
            (unsigned long long)st.vram.evictions);
    CHECK(logged > 0 && logged <= st.vram.evictions);
}

static void test_unload_drops_units(void)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    for (int i = 0; i < 2; i++) {
        diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
        req.which_body = diffsynth_v1_Envelope_unload_tag;
        req.body.unload.model_id = model_id[i];
        req.body.unload.all_references = true;
        CHECK(it_call(c, &req, &resp) == DS_CLIENT_OK);
        ds_client_envelope_free(&resp);
    }
    ds_client_close(c);
    diffsynth_v1_StatusResponse st = diffsynth_v1_StatusResponse_init_zero;
    REQUIRE(status(&st) == 0);
    CHECK(st.has_vram && st.vram.resident_bytes == 0);
    CHECK(st.models == 0);
}

/* Model `id`'s vram_config_json in ListModels, malloc'd; NULL when the model is absent. */
static char *listed_vram_config(const char *id)
{
    ds_client *c = it_connect(&env);
    if (!c)
        return NULL;
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_list_models_tag;
    char *json = NULL;
    if (it_call(c, &req, &resp) == DS_CLIENT_OK) {
        const diffsynth_v1_ListModelsResponse *r = &resp.body.list_models_result;
        for (pb_size_t i = 0; i < r->models_count; i++)
            if (strcmp(r->models[i].model_id, id) == 0)
                json = strdup(r->models[i].vram_config_json ? r->models[i].vram_config_json : "");
    }
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    return json;
}

#define FP8_CONFIG "{\"offload_dtype\": \"float8_e4m3fn\", \"offload_device\": \"cpu\"}"
#define FP8_TIER "offload cpu f8_e4m3"

static void test_load_bad_vram_config(void)
{
    static const struct {
        const char *config, *dtype, *expect;
    } bad[] = {
        {"{\"offload_dtype\": \"float9\", \"offload_device\": \"cpu\"}", NULL,
         "load.vram_config_json: vram_config: offload_dtype 'float9' is not one of"},
        {"{\"offload_device\": \"tpu\"}", NULL, "offload_device 'tpu' is not one of"},
        {"{\"offload_dtypes\": \"fp8\"}", NULL, "unknown field 'offload_dtypes'"},
        {"{\"onload_dtype\": 8}", NULL, "onload_dtype must be a string or null, got"},
        {"[1]", NULL, "vram_config must be a JSON object"},
        {"{", NULL, "vram_config is not valid JSON"},
        {"{\"computation_device\": \"disk\"}", NULL, "computation state cannot be on disk"},
        {NULL, "int8", "load.torch_dtype 'int8' is not one of bfloat16, float32, float16"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        load_answer a = load_config(model_path[0], "bad", bad[i].config, bad[i].dtype);
        CHECK_MSG(a.rc == DS_CLIENT_EDAEMON && a.code == diffsynth_v1_Code_INVALID_ARGUMENT,
                  "case %zu: rc %d code %d", i, a.rc, a.code);
        CHECK_CONTAINS(a.message, bad[i].expect);
    }
    /* Well formed, but a chain of roundings the two tiers do not reproduce. */
    load_answer chain = load_config(model_path[0], "bad",
                                    "{\"offload_dtype\": \"bfloat16\", \"offload_device\": "
                                    "\"cpu\", \"onload_dtype\": \"float16\"}",
                                    "bfloat16");
    CHECK_MSG(chain.rc == DS_CLIENT_EDAEMON && chain.code == diffsynth_v1_Code_UNIMPLEMENTED,
              "chain: rc %d code %d", chain.rc, chain.code);
    CHECK_CONTAINS(chain.message, "load.vram_config_json: vram_config: onload_dtype float16 "
                                  "differs from offload_dtype bfloat16");
    diffsynth_v1_StatusResponse st = diffsynth_v1_StatusResponse_init_zero;
    REQUIRE(status(&st) == 0);
    CHECK(st.models == 0);
}

static void test_load_fp8_vram_config(void)
{
    load_answer fp8 = load_config(model_path[0], "fp8", FP8_CONFIG, "bfloat16");
    CHECK_MSG(fp8.rc == DS_CLIENT_OK, "%s", fp8.message);
    REQUIRE(fp8.rc == DS_CLIENT_OK);
    CHECK(!fp8.reused);
    /* The same config again: the same entry. */
    load_answer again = load_config(model_path[0], "fp8-again", FP8_CONFIG, NULL);
    CHECK(again.rc == DS_CLIENT_OK && again.reused && strcmp(again.id, fp8.id) == 0);
    /* None (and an unmanaged config, which changes nothing): a separate entry, shared. */
    load_answer none = load_config(model_path[0], "none", NULL, NULL);
    CHECK(none.rc == DS_CLIENT_OK && !none.reused && strcmp(none.id, fp8.id) != 0);
    load_answer unmanaged = load_config(model_path[0], "unmanaged",
                                        "{\"onload_dtype\": \"bfloat16\"}", "bfloat16");
    CHECK(unmanaged.rc == DS_CLIENT_OK && unmanaged.reused && strcmp(unmanaged.id, none.id) == 0);

    /* ListModels shows the config, filled in; its offload tier comes once a step has
     * registered the units' bytes. */
    char *listed = listed_vram_config(fp8.id);
    CHECK_MSG(listed && strstr(listed, "\"offload_dtype\": \"float8_e4m3fn\"") &&
                  strstr(listed, "\"offload_device\": \"cpu\"") &&
                  strstr(listed, "\"computation_dtype\": \"bfloat16\""),
              "%s", listed ? listed : "(model not listed)");
    free(listed);
    listed = listed_vram_config(none.id);
    CHECK_MSG(listed && listed[0] == '\0', "%s", listed ? listed : "(model not listed)");
    free(listed);
    CHECK(it_tier_bytes(&env, fp8.id, FP8_TIER) == -1);
    CHECK(it_tier_bytes(&env, none.id, FP8_TIER) == -1);
    char msg[512];
    int rc = dit_step(fp8.id, NULL, msg, sizeof msg);
    CHECK_MSG(rc == DS_CLIENT_OK, "%s", msg);
    uint64_t bf16_bytes = 0;
    for (size_t i = 0; i < keys.count; i++)
        bf16_bytes += keys.entries[i].tensor.nbytes;
    long long slow = it_tier_bytes(&env, fp8.id, FP8_TIER);
    fprintf(stderr, "  %s: %lld bytes (bf16 %llu)\n", FP8_TIER, slow,
            (unsigned long long)bf16_bytes);
    CHECK(slow > 0 && (uint64_t)slow * 2 == bf16_bytes);

    ds_client *c = it_connect(&env);
    REQUIRE(c);
    const char *ids[2] = {fp8.id, none.id};
    for (int i = 0; i < 2; i++) {
        diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
        req.which_body = diffsynth_v1_Envelope_unload_tag;
        req.body.unload.model_id = (char *)ids[i];
        req.body.unload.all_references = true;
        CHECK(it_call(c, &req, &resp) == DS_CLIENT_OK);
        ds_client_envelope_free(&resp);
    }
    ds_client_close(c);
}

/* A second daemon with `extra`, in its own directory holding one model file (its path into
 * `path`), made the current `env` (the main one kept in *saved) until side_daemon_stop. */
static int side_daemon_start(const char *const *extra, it_env *saved, char *path, size_t size)
{
    it_env side;
    it_env_init(&side, env.daemon_exe);
    snprintf(path, size, "%s/dit_a.safetensors", side.models);
    if (write_model(path) != 0 || it_daemon_start(&side, extra) != 0) {
        it_env_cleanup(&side);
        return -1;
    }
    *saved = env;
    env = side;
    return 0;
}

/* Stops the second daemon (it must exit 0), removes its directory, restores the main env. */
static void side_daemon_stop(const it_env *saved)
{
    int exit_status = -1;
    CHECK(it_daemon_stop(&env, &exit_status) == 0 && exit_status == 0);
    it_env_cleanup(&env);
    env = *saved;
}

/* Without --vram-limit there is no manager: a managed config cannot be honoured. */
static void test_vram_config_needs_manager(void)
{
    const char *extra[] = {"--model-configs", configs_path, "--threads", "2", NULL};
    it_env saved;
    char path[256];
    REQUIRE(side_daemon_start(extra, &saved, path, sizeof path) == 0);
    load_answer a = load_config(path, "fp8", FP8_CONFIG, NULL);
    CHECK(a.rc == DS_CLIENT_EDAEMON && a.code == diffsynth_v1_Code_FAILED_PRECONDITION);
    CHECK_CONTAINS(a.message, "runs without a VRAM manager");
    CHECK_CONTAINS(a.message, "--vram-limit");
    load_answer ok = load_config(path, "none", NULL, "float32");
    CHECK_MSG(ok.rc == DS_CLIENT_OK, "%s", ok.message);
    side_daemon_stop(&saved);
}

/* Daemon options that must stop it at start, exit status 2, with `expect` on stderr. */
typedef struct bad_options {
    const char *args[5]; /* NULL-terminated */
    const char *expect;
} bad_options;

static void expect_refused(const bad_options *bad, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        const char *argv[8] = {env.daemon_exe};
        for (int k = 0; bad[i].args[k]; k++)
            argv[k + 1] = bad[i].args[k];
        char *err = NULL;
        int rc = it_run(argv, NULL, 10000, NULL, &err);
        CHECK_MSG(rc == 2, "case %zu (%s): exit %d", i, bad[i].args[0], rc);
        CHECK_CONTAINS(err ? err : "", bad[i].expect);
        free(err);
    }
}

/* --vram-reserve belongs to the default budget of a GPU: refused with --vram-limit or on the
 * CPU, and for a value that is not GiB, exit status 2. */
static void test_vram_reserve_options(void)
{
    static const bad_options bad[] = {
        {{"--vram-reserve", "2", NULL}, "--vram-reserve 2 applies only to the default budget"},
        {{"--vram-reserve", "-1", NULL}, "--vram-reserve wants GiB (0 or more"},
        {{"--vram-reserve", "lots", NULL}, "--vram-reserve wants GiB (0 or more"},
    };
    expect_refused(bad, sizeof bad / sizeof bad[0]);
    const char *with_limit[] = {env.daemon_exe, "--backend", "cuda", "--vram-limit", "1",
                                "--vram-reserve", "2", NULL};
    char *err = NULL;
    CHECK(it_run(with_limit, NULL, 10000, NULL, &err) == 2);
    CHECK_CONTAINS(err ? err : "", "without --vram-limit");
    free(err);
    char *out = NULL;
    const char *help[] = {env.daemon_exe, "--help", NULL};
    CHECK(it_run(help, NULL, 10000, &out, NULL) == 0);
    CHECK_CONTAINS(out ? out : "", "--vram-reserve GIB");
    CHECK_CONTAINS(out ? out : "", "the GPU's free memory less");
    free(out);
}

/* A budget below the largest unit: the step fails with the unit and its bytes, and the
 * daemon goes on answering. */
static void test_budget_below_one_unit(void)
{
    const char *extra[] = {"--model-configs", configs_path, "--threads", "2",
                           "--vram-limit", "0.1", NULL};
    it_env saved;
    char path[256];
    REQUIRE(side_daemon_start(extra, &saved, path, sizeof path) == 0);
    char id[32];
    int loaded = load_one(path, "small", id, sizeof id) == 0;
    CHECK(loaded);
    if (loaded) {
        char msg[512];
        int code = 0;
        int rc = dit_step(id, &code, msg, sizeof msg);
        CHECK(rc == DS_CLIENT_EDAEMON);
        fprintf(stderr, "  0.1 GiB: %s\n", msg);
        CHECK(code == diffsynth_v1_Code_RESOURCE_EXHAUSTED);
        CHECK_CONTAINS(msg, "transformer_blocks.0.modulation");
        CHECK_CONTAINS(msg, "needs 226566144 bytes");
        CHECK(it_status_ok(&env));
    }
    side_daemon_stop(&saved);
}

/* --host-limit: the fp8 copies at rest stay within it (the rest are read from the file), Status
 * and ListModels say so, the step runs; without the VRAM manager, or with a bad value, the
 * daemon refuses to start. */
static void test_host_limit(void)
{
    /* 0.25 GiB: some of the model's 0.38 GB of fp8 copies, not all. */
    const char *extra[] = {"--model-configs", configs_path, "--threads", "2",
                           "--vram-limit", LIMIT_GIB, "--host-limit", "0.25", NULL};
    it_env saved;
    char path[256];
    REQUIRE(side_daemon_start(extra, &saved, path, sizeof path) == 0);
    load_answer fp8 = load_config(path, "fp8", FP8_CONFIG, "bfloat16");
    CHECK_MSG(fp8.rc == DS_CLIENT_OK, "%s", fp8.message);
    if (fp8.rc == DS_CLIENT_OK) {
        char msg[512];
        int rc = dit_step(fp8.id, NULL, msg, sizeof msg);
        CHECK_MSG(rc == DS_CLIENT_OK, "%s", msg);
        diffsynth_v1_StatusResponse st = diffsynth_v1_StatusResponse_init_zero;
        REQUIRE(status(&st) == 0);
        fprintf(stderr, "  --host-limit 0.25: %llu bytes of copies at rest (peak %llu)\n",
                (unsigned long long)st.vram.host_bytes,
                (unsigned long long)st.vram.host_peak_bytes);
        CHECK(st.has_vram && st.vram.host_limited);
        CHECK(st.vram.host_budget_bytes == (256ull << 20));
        CHECK(st.vram.host_bytes > 0 && st.vram.host_bytes <= (256ull << 20));
        CHECK(st.vram.host_peak_bytes <= (256ull << 20));
        /* The model's host tier holds its copies (the fast tier is host memory too here). */
        long long host = it_tier_bytes(&env, fp8.id, "host");
        CHECK(host >= (long long)st.vram.host_bytes);
        char *out = NULL;
        const char *status_cmd[] = {cli, "--socket", env.socket, "status", NULL};
        CHECK(it_run(status_cmd, NULL, 10000, &out, NULL) == 0);
        CHECK_CONTAINS(out ? out : "", "host copies: ");
        CHECK_CONTAINS(out ? out : "", "units past the limit are read from their files");
        free(out);
    }
    side_daemon_stop(&saved);

    static const bad_options bad[] = {
        {{"--host-limit", "1", NULL}, "--host-limit 1 needs the VRAM manager"},
        {{"--vram-limit", "1", "--host-limit", "-2", NULL}, "--host-limit wants GiB (0 or more"},
        {{"--vram-limit", "1", "--host-limit", "x", NULL}, "or none, not \"x\""},
    };
    expect_refused(bad, sizeof bad / sizeof bad[0]);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s DIFFSYNTHD DIFFSYNTH_CLI\n", argv[0]);
        return 2;
    }
    cli = argv[2];
    /* Small, varied inputs: the bits of bf16 values in [0.5, 1). */
    for (size_t i = 0; i < sizeof latents / sizeof latents[0]; i++)
        latents[i] = (uint16_t)(0x3f00 + i % 127);
    for (size_t i = 0; i < sizeof prompt / sizeof prompt[0]; i++)
        prompt[i] = (uint16_t)(0x3f00 + i % 113);
    it_env_init(&env, argv[1]);
    const char *extra[] = {"--model-configs", configs_path, "--threads", "2",
                           "--vram-limit", LIMIT_GIB, NULL};
    if (make_models() != 0 || it_daemon_start(&env, extra) != 0 ||
        load_one(model_path[0], "client-a", model_id[0], sizeof model_id[0]) != 0 ||
        load_one(model_path[1], "client-b", model_id[1], sizeof model_id[1]) != 0) {
        it_dump_log(&env);
        it_env_cleanup(&env);
        ds_state_dict_free(&keys);
        return 1;
    }
    RUN(test_two_clients_interleaved);
    RUN(test_unload_drops_units);
    RUN(test_load_bad_vram_config);
    RUN(test_load_fp8_vram_config);
    int exit_status = -1;
    if (it_daemon_stop(&env, &exit_status) != 0 || exit_status != 0) {
        fprintf(stderr, "FAIL the daemon did not stop cleanly (status %d)\n", exit_status);
        test_failures++;
    }
    RUN(test_budget_below_one_unit);
    RUN(test_vram_config_needs_manager);
    RUN(test_vram_reserve_options);
    RUN(test_host_limit);
    if (test_failures)
        it_dump_log(&env);
    it_env_cleanup(&env);
    ds_state_dict_free(&keys);
    return test_summary();
}
