/* RunStep over the socket: request checks (unknown model, a class without steps, malformed
 * tensors, shared-memory regions), cancel of a queued step, and the transport of a real step
 * (a 0-layer Qwen-Image DiT "forward"): inline and shared-memory paths give identical bytes,
 * and two clients at once get identical results. Exits 77 after the checks when this build's
 * DiT class has no "forward" step yet. */
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "harness.h"
#include "test.h"
#include "tools/keylist.h"

static it_env env;
static char configs_path[256];
static char **dit, **vae, **te;
static size_t dit_n, vae_n, te_n;
static char dit_id[32], vae_id[32], te_id[32];
static int dit_has_forward = -1;

static void check_unharmed(void) { CHECK_MSG(it_status_ok(&env), "the daemon stopped answering"); }

/* Writes the DiT key list without its transformer blocks (num_layers 0), bf16 random values,
 * and a config naming that key set's hash. */
static int make_dit0(void)
{
    const char *data = getenv("DS_TEST_DATA");
    char list[512], out[512];
    snprintf(list, sizeof list, "%s/keylists/qwen_image_dit.json", data ? data : "tests/data");
    snprintf(out, sizeof out, "%s/dit0", env.models);
    ds_state_dict full, sd0;
    ds_state_dict_init(&full);
    ds_state_dict_init(&sd0);
    ds_error err;
    int rc = ds_keylist_load(list, DS_BF16, &full, &err);
    it_tensor *keys = calloc(full.count ? full.count : 1, sizeof *keys);
    size_t nkeys = 0;
    for (size_t i = 0; rc == DS_OK && i < full.count; i++) {
        const ds_sd_entry *e = &full.entries[i];
        if (strncmp(e->name, "transformer_blocks.", 19) == 0)
            continue;
        rc = ds_state_dict_put_tensor(&sd0, e->name, &e->tensor);
        keys[nkeys].name = e->name;
        keys[nkeys].ndim = e->tensor.ndim;
        for (int d = 0; d < e->tensor.ndim && d < 4; d++)
            keys[nkeys].shape[d] = e->tensor.shape[d];
        nkeys++;
    }
    char hash[33];
    if (rc == DS_OK)
        rc = it_model_hash(keys, nkeys, hash) == 0 ? DS_OK : -1;
    if (rc == DS_OK)
        rc = ds_st_write_model(out, &sd0, 1, DS_ST_FILL_RANDOM, 1, &dit, &dit_n, &err);
    free(keys);
    ds_state_dict_free(&sd0);
    ds_state_dict_free(&full);
    if (rc != DS_OK) {
        fprintf(stderr, "writing the 0-layer DiT: %s\n", err.message);
        return -1;
    }
    snprintf(configs_path, sizeof configs_path, "%s/configs.json", env.dir);
    char configs[512];
    snprintf(configs, sizeof configs,
             "[{\"model_hash\": \"%s\", \"model_name\": \"qwen_image_dit_0_layers\", "
             "\"model_class\": \"diffsynth.models.qwen_image_dit.QwenImageDiT\", "
             "\"extra_kwargs\": {\"num_layers\": 0}}]",
             hash);
    return it_write_file(configs_path, configs, strlen(configs));
}

/* A one-tensor RunStep envelope with inline data (len bytes, maybe not what the shape needs). */
static void one_tensor(diffsynth_v1_Envelope *req, diffsynth_v1_Tensor *t, const char *model,
                       const char *name, int dtype, const int64_t *shape, int ndim,
                       pb_bytes_array_t *data)
{
    memset(req, 0, sizeof *req);
    memset(t, 0, sizeof *t);
    req->which_body = diffsynth_v1_Envelope_run_step_tag;
    req->body.run_step.model_id = (char *)model;
    req->body.run_step.inputs = t;
    req->body.run_step.inputs_count = 1;
    t->name = (char *)name;
    t->dtype = (diffsynth_v1_DType)dtype;
    t->shape = (int64_t *)shape;
    t->shape_count = (pb_size_t)ndim;
    t->data = data;
}

static void expect_code(diffsynth_v1_Envelope *req, int code, const char *needle)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    diffsynth_v1_Envelope resp;
    int rc = it_call(c, req, &resp);
    CHECK_MSG(rc == DS_CLIENT_EDAEMON && ds_client_last_code(c) == code, "rc %d code %s: %s", rc,
              ds_client_code_name(ds_client_last_code(c)), ds_client_last_error(c));
    CHECK_CONTAINS(ds_client_last_error(c), needle);
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    check_unharmed();
}

static pb_bytes_array_t *bytes_of(size_t n)
{
    pb_bytes_array_t *b = calloc(1, sizeof *b + n);
    b->size = (pb_size_t)n;
    return b;
}

static void test_unknown_model(void)
{
    int64_t shape[] = {2};
    pb_bytes_array_t *b = bytes_of(8);
    diffsynth_v1_Envelope req;
    diffsynth_v1_Tensor t;
    one_tensor(&req, &t, "m999", "x", diffsynth_v1_DType_F32, shape, 1, b);
    expect_code(&req, 5 /* NOT_FOUND */, "no model m999");
    free(b);
}

/* The VAE's steps are decode and encode: the default "forward" is not one of them. */
static void test_unknown_step(void)
{
    int64_t shape[] = {2};
    pb_bytes_array_t *b = bytes_of(8);
    diffsynth_v1_Envelope req;
    diffsynth_v1_Tensor t;
    one_tensor(&req, &t, vae_id, "x", diffsynth_v1_DType_F32, shape, 1, b);
    expect_code(&req, 3 /* INVALID_ARGUMENT */,
                "has no step \"forward\"; its steps: decode, encode");
    free(b);
}

static void test_malformed_tensors(void)
{
    diffsynth_v1_Envelope req;
    diffsynth_v1_Tensor t;
    int64_t shape[] = {2, 3};
    pb_bytes_array_t *b = bytes_of(20);
    one_tensor(&req, &t, vae_id, "x", diffsynth_v1_DType_F32, shape, 2, b);
    expect_code(&req, 3, "input \"x\": 20 bytes of data, its dtype and shape need 24");
    int64_t zero[] = {2, 0};
    one_tensor(&req, &t, vae_id, "x", diffsynth_v1_DType_F32, zero, 2, b);
    expect_code(&req, 3, "dim 1 is 0");
    int64_t neg[] = {-5, 2};
    one_tensor(&req, &t, vae_id, "x", diffsynth_v1_DType_F32, neg, 2, b);
    expect_code(&req, 3, "dim 0 is -5");
    int64_t huge[] = {INT64_MAX, INT64_MAX, 4};
    one_tensor(&req, &t, vae_id, "x", diffsynth_v1_DType_F32, huge, 3, b);
    expect_code(&req, 3, "overflows");
    int64_t five[] = {5};
    one_tensor(&req, &t, vae_id, "x", 99, five, 1, b);
    expect_code(&req, 3, "dtype 99 is not a known DType");
    one_tensor(&req, &t, vae_id, "", diffsynth_v1_DType_F32, five, 1, b);
    expect_code(&req, 3, "inputs[0].name is empty");
    diffsynth_v1_Tensor two[2];
    memset(two, 0, sizeof two);
    for (int i = 0; i < 2; i++) {
        two[i].name = "dup";
        two[i].dtype = diffsynth_v1_DType_U8;
        two[i].shape = five;
        two[i].shape_count = 1;
        two[i].data = bytes_of(5);
    }
    memset(&req, 0, sizeof req);
    req.which_body = diffsynth_v1_Envelope_run_step_tag;
    req.body.run_step.model_id = vae_id;
    req.body.run_step.inputs = two;
    req.body.run_step.inputs_count = 2;
    expect_code(&req, 3, "input \"dup\" is given twice");
    free(two[0].data);
    free(two[1].data);
    free(b);
}

static void test_shm_regions(void)
{
    char name[64];
    snprintf(name, sizeof name, "/diffsynth-it-%d", (int)getpid());
    shm_unlink(name);
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(ftruncate(fd, 16) == 0);
    diffsynth_v1_Envelope req;
    diffsynth_v1_Tensor t;
    int64_t shape[] = {16};
    one_tensor(&req, &t, vae_id, "x", diffsynth_v1_DType_F32, shape, 1, NULL);
    t.has_shm = true;
    t.shm.name = name;
    t.shm.size = 64;
    expect_code(&req, 3, "lies outside shared-memory object");
    int64_t four[] = {4};
    t.shape = four;
    t.shm.size = 16;
    t.shm.offset = 4096;
    expect_code(&req, 3, "lies outside shared-memory object");
    t.shm.offset = UINT64_MAX - 8;
    expect_code(&req, 3, "overflows");
    t.shm.offset = 0;
    t.shm.name = "/diffsynth-it-does-not-exist";
    expect_code(&req, 5, "does not exist");
    t.shm.name = "no-slash";
    expect_code(&req, 3, "is not a shared-memory name");
    t.shm.name = name;
    t.shm.size = 8;
    expect_code(&req, 3, "shared-memory region has 8 bytes, its dtype and shape need 16");
    /* A sound region gets past the transport checks to the model's own error. */
    t.shm.size = 16;
    expect_code(&req, 3, "has no step \"forward\"");
    /* An output region outside its object. */
    req.body.run_step.has_output_region = true;
    req.body.run_step.output_region.name = name;
    req.body.run_step.output_region.size = 1024;
    expect_code(&req, 3, "lies outside shared-memory object");
    close(fd);
    shm_unlink(name);
}

/* --- the real step ---------------------------------------------------------------------- */

#define H 8
#define W 8
#define L 8
#define TEXT_DIM 3584

static uint16_t latents[16 * H * W], prompt[L * TEXT_DIM];
static float timestep[1] = {500.0f};

static uint16_t bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

static void fill_inputs(void)
{
    unsigned s = 1;
    for (size_t i = 0; i < sizeof latents / 2; i++) {
        s = s * 1103515245u + 12345u;
        latents[i] = bf16((float)((s >> 8) & 0xFFFF) / 32768.0f - 1.0f);
    }
    for (size_t i = 0; i < sizeof prompt / 2; i++) {
        s = s * 1103515245u + 12345u;
        prompt[i] = bf16((float)((s >> 8) & 0xFFFF) / 65536.0f - 0.5f);
    }
}

static void step_request(ds_client_step_request *r, ds_client_tensor in[3], size_t inline_limit)
{
    memset(r, 0, sizeof *r);
    memset(in, 0, 3 * sizeof *in);
    in[0] = (ds_client_tensor){"latents", diffsynth_v1_DType_BF16, 4, {1, 16, H, W}, latents,
                               sizeof latents};
    in[1] = (ds_client_tensor){"prompt_emb", diffsynth_v1_DType_BF16, 3, {1, L, TEXT_DIM}, prompt,
                               sizeof prompt};
    in[2] = (ds_client_tensor){"timestep", diffsynth_v1_DType_F32, 1, {1}, timestep,
                               sizeof timestep};
    r->model_id = dit_id;
    r->inputs = in;
    r->input_count = 3;
    r->inline_limit = inline_limit;
}

static int run(size_t inline_limit, ds_client_step_result *res, int *code)
{
    ds_client *c = it_connect(&env);
    if (!c)
        return -1;
    ds_client_step_request r;
    ds_client_tensor in[3];
    step_request(&r, in, inline_limit);
    int rc = ds_client_run_step(c, &r, res, IT_CALL_TIMEOUT_MS, NULL, NULL, NULL);
    *code = ds_client_last_code(c);
    if (rc != DS_CLIENT_OK && *code != 12)
        fprintf(stderr, "run_step: %s\n", ds_client_last_error(c));
    ds_client_close(c);
    return rc;
}

static void check_noise_pred(const ds_client_step_result *r)
{
    REQUIRE(r->output_count == 1);
    const ds_client_tensor *t = &r->outputs[0];
    CHECK_STR_EQ(t->name, "noise_pred");
    CHECK(t->dtype == diffsynth_v1_DType_BF16);
    CHECK(t->ndim == 4 && t->shape[0] == 1 && t->shape[1] == 16 && t->shape[2] == H &&
          t->shape[3] == W);
    REQUIRE(t->nbytes == sizeof latents);
    const uint16_t *v = t->data;
    size_t bad = 0;
    for (size_t i = 0; i < t->nbytes / 2; i++)
        bad += (v[i] & 0x7F80) == 0x7F80;
    CHECK_MSG(bad == 0, "%zu non-finite values", bad);
}

static void test_forward_inline_and_shm(void)
{
    ds_client_step_result a = {0}, b = {0};
    int code = 0;
    int rc = run(0, &a, &code);
    if (rc == DS_CLIENT_EDAEMON && code == 12) {
        dit_has_forward = 0;
        return;
    }
    dit_has_forward = 1;
    REQUIRE(rc == DS_CLIENT_OK);
    check_noise_pred(&a);
    CHECK(a.compute_s >= 0 && a.queue_s >= 0);
    REQUIRE(run(1, &b, &code) == DS_CLIENT_OK);
    check_noise_pred(&b);
    CHECK(a.output_count == 1 && b.output_count == 1 &&
          memcmp(a.outputs[0].data, b.outputs[0].data, a.outputs[0].nbytes) == 0);
    ds_client_step_result_free(&a);
    ds_client_step_result_free(&b);
    check_unharmed();
}

static void test_forward_bad_input(void)
{
    if (dit_has_forward != 1)
        return;
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    ds_client_step_request r;
    ds_client_tensor in[3];
    step_request(&r, in, 0);
    in[0].shape[1] = 8;
    in[0].nbytes /= 2;
    ds_client_step_result res;
    int rc = ds_client_run_step(c, &r, &res, IT_CALL_TIMEOUT_MS, NULL, NULL, NULL);
    CHECK(rc == DS_CLIENT_EDAEMON && ds_client_last_code(c) == 3);
    CHECK_CONTAINS(ds_client_last_error(c), "\"latents\"");
    ds_client_close(c);
    check_unharmed();
}

typedef struct worker_arg {
    ds_client_step_result res;
    int rc;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *w = p;
    int code;
    w->rc = run(0, &w->res, &code);
    return NULL;
}

static void test_two_clients(void)
{
    if (dit_has_forward != 1)
        return;
    worker_arg w[2];
    memset(w, 0, sizeof w);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        REQUIRE(pthread_create(&th[i], NULL, worker, &w[i]) == 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    CHECK(w[0].rc == DS_CLIENT_OK && w[1].rc == DS_CLIENT_OK);
    if (w[0].rc == DS_CLIENT_OK && w[1].rc == DS_CLIENT_OK)
        CHECK(memcmp(w[0].res.outputs[0].data, w[1].res.outputs[0].data,
                     w[0].res.outputs[0].nbytes) == 0);
    ds_client_step_result_free(&w[0].res);
    ds_client_step_result_free(&w[1].res);
}

/* Two steps on one connection, the second cancelled at once: it is still queued behind the
 * first, so it completes CANCELLED and the first is unaffected. */
static void test_cancel_queued(void)
{
    if (dit_has_forward != 1)
        return;
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    static int64_t lshape[] = {1, 16, H, W}, pshape[] = {1, L, TEXT_DIM}, tshape[] = {1};
    pb_bytes_array_t *lb = bytes_of(sizeof latents), *pb = bytes_of(sizeof prompt),
                     *tb = bytes_of(sizeof timestep);
    memcpy(lb->bytes, latents, sizeof latents);
    memcpy(pb->bytes, prompt, sizeof prompt);
    memcpy(tb->bytes, timestep, sizeof timestep);
    diffsynth_v1_Tensor in[3] = {
        {.name = "latents", .dtype = diffsynth_v1_DType_BF16, .shape_count = 4, .shape = lshape, .data = lb},
        {.name = "prompt_emb", .dtype = diffsynth_v1_DType_BF16, .shape_count = 3, .shape = pshape, .data = pb},
        {.name = "timestep", .dtype = diffsynth_v1_DType_F32, .shape_count = 1, .shape = tshape, .data = tb},
    };
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.which_body = diffsynth_v1_Envelope_run_step_tag;
    req.body.run_step.model_id = dit_id;
    req.body.run_step.inputs = in;
    req.body.run_step.inputs_count = 3;
    uint64_t first = ds_client_next_id(c), second = ds_client_next_id(c);
    req.request_id = first;
    REQUIRE(ds_client_send(c, &req) == DS_CLIENT_OK);
    req.request_id = second;
    REQUIRE(ds_client_send(c, &req) == DS_CLIENT_OK);
    bool found = false;
    REQUIRE(ds_client_cancel(c, second, IT_CALL_TIMEOUT_MS, &found) == DS_CLIENT_OK);
    int got_first = 0, got_second = 0;
    for (int i = 0; i < 64 && !(got_first && got_second); i++) {
        diffsynth_v1_Envelope env_in;
        if (ds_client_recv(c, &env_in, IT_CALL_TIMEOUT_MS) != DS_CLIENT_OK)
            break;
        if (env_in.request_id == first && env_in.which_body != diffsynth_v1_Envelope_event_tag) {
            CHECK(env_in.which_body == diffsynth_v1_Envelope_run_step_result_tag);
            got_first = 1;
        } else if (env_in.request_id == second &&
                   env_in.which_body != diffsynth_v1_Envelope_event_tag) {
            if (found)
                CHECK_MSG(env_in.which_body == diffsynth_v1_Envelope_error_tag &&
                              env_in.body.error.code == diffsynth_v1_Code_CANCELLED,
                          "second step: body %u", (unsigned)env_in.which_body);
            else
                printf("note: the second step had finished before its cancel arrived\n");
            got_second = 1;
        }
        ds_client_envelope_free(&env_in);
    }
    CHECK(got_first && got_second);
    free(lb);
    free(pb);
    free(tb);
    ds_client_close(c);
    check_unharmed();
}

/* encode_prompt reads a tokenizer folder the client may name: the daemon holds it to the model
 * roots as it does model files, before anything is read or computed. */
static void test_tokenizer_folder_confined(void)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    char inside[600];
    snprintf(inside, sizeof inside, "%s/no-tokenizer-here", env.models);
    const struct {
        const char *folder;
        int code;
        const char *needle;
    } cases[] = {
        {"/etc", 7 /* PERMISSION_DENIED */, "parameter \"tokenizer\": /etc is outside the model roots"},
        {"relative/dir", 3 /* INVALID_ARGUMENT */, "is not an absolute path"},
        {inside, 5 /* NOT_FOUND */, "no-tokenizer-here"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ds_client_step_param params[] = {{"prompt", "a cat"}, {"tokenizer", cases[i].folder}};
        ds_client_step_request r = {.model_id = te_id, .step = "encode_prompt", .params = params,
                                    .param_count = 2};
        ds_client_step_result res;
        int rc = ds_client_run_step(c, &r, &res, 60000, NULL, NULL, NULL);
        CHECK_MSG(rc == DS_CLIENT_EDAEMON && ds_client_last_code(c) == cases[i].code,
                  "%s: rc %d code %s: %s", cases[i].folder, rc,
                  ds_client_code_name(ds_client_last_code(c)), ds_client_last_error(c));
        CHECK_CONTAINS(ds_client_last_error(c), cases[i].needle);
        ds_client_step_result_free(&res);
    }
    ds_client_close(c);
    check_unharmed();
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIFFSYNTHD [DIFFSYNTH]\n", argv[0]);
        return 2;
    }
    it_env_init(&env, argv[1]);
    if (make_dit0() != 0 || it_make_model(&env, "qwen_image_vae", "vae", 1, &vae, &vae_n) != 0 ||
        it_make_model(&env, "qwen_image_text_encoder_raw", "te", 1, &te, &te_n) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    const char *extra[] = {"--model-configs", configs_path, "--threads", "2", NULL};
    if (it_daemon_start(&env, extra) != 0 ||
        it_load(&env, vae, vae_n, vae_id, sizeof vae_id) != 0 ||
        it_load(&env, dit, dit_n, dit_id, sizeof dit_id) != 0 ||
        it_load(&env, te, te_n, te_id, sizeof te_id) != 0) {
        it_dump_log(&env);
        it_env_cleanup(&env);
        return 1;
    }
    fill_inputs();
    RUN(test_unknown_model);
    RUN(test_unknown_step);
    RUN(test_malformed_tensors);
    RUN(test_shm_regions);
    RUN(test_forward_inline_and_shm);
    RUN(test_forward_bad_input);
    RUN(test_two_clients);
    RUN(test_cancel_queued);
    RUN(test_tokenizer_folder_confined);

    int status = -1;
    if (it_daemon_stop(&env, &status) != 0 || status != 0) {
        fprintf(stderr, "FAIL the daemon did not stop cleanly (status %d)\n", status);
        test_failures++;
    }
    if (test_failures)
        it_dump_log(&env);
    ds_st_paths_free(dit, dit_n);
    ds_st_paths_free(vae, vae_n);
    ds_st_paths_free(te, te_n);
    it_env_cleanup(&env);
    if (test_failures == 0 && dit_has_forward == 0) {
        printf("SKIP the DiT class has no \"forward\" step in this build: the success path, "
               "cancel and two-client checks did not run\n");
        return 77;
    }
    return test_summary();
}
