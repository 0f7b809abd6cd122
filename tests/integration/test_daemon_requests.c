/* Every request kind against a real daemon, through the client library. Expected hashes,
 * names, classes and kwargs are upstream's (facts §1.2, §3); expected messages are upstream's
 * (facts §2). Model files are header-only sparse safetensors built from the real key lists.
 * After every bad request the daemon must still answer Status and its pool must be exactly as
 * it was. */
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "test.h"

#define DIT_HASH "0319a1cb19835fb510907dd3367c95ff"
#define VAE_HASH "ed4ea5824d55ec3107b09815e318123a"
#define TE_HASH "8004730443f55db63092006dd9f7110e"
#define CN_HASH "073bce9cf969e317e5662cd570c3e79c"
#define CN_INPAINT_HASH "a9e54e480a628f0b956a688a81c33bab"
#define DIT_LAYERED_HASH "8dc8cda05de16c73afa755e2c1ce2839"
#define VAE_LAYERED_HASH "44b39ddc499e027cfb24f7878d7416b9"
#define WAN_HASH "9269f8db9040a9d860eaca435be61814"
#define WAN_TE_HASH "9c8818c2cbea55eca56c7b447df170da"  /* models_t5_umt5-xxl-enc-bf16.pth */
#define WAN_VAE_HASH "ccc42284ea13e1ad04693284c7a09be6" /* Wan2.1_VAE.pth */
#define WAN_VAE38_HASH "e1de6c02cdac79f8b739f4d3698cd216" /* Wan2.2_VAE.pth */
/* facts §1.2 test vectors */
#define AB_HASH "0bbf59d9c4e0b8258498955c8f645abc"       /* {"a.weight":[4,3], "a.bias":[4]} */
#define XY_HASH "89c7f7795f4b25b523280442253443f7"       /* {"x":[1], "x.y":[2]} */
#define TWO_FILES_HASH "59c3ce341dc3ef3b607f6c51593baab1" /* [{"a":[1]}, {"b":[2],"a":[3]}] */

#define CN_CLASS "diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet"
#define TE_CONVERTER                                                                           \
    "diffsynth.utils.state_dict_converters.qwen_image_text_encoder."                           \
    "QwenImageTextEncoderStateDictConverter"
#define BUILTIN_CONFIGS 208

static it_env env;
static char **dit, **vae, **te, **cn, **cn_inpaint, **wan, **wan_te, **wan_vae, **wan_vae38;
static size_t dit_n, vae_n, te_n, cn_n, cn_inpaint_n, wan_n, wan_te_n, wan_vae_n, wan_vae38_n;
static char ab_path[256], two_a[256], two_b[256], xy_path[256], outside[256], link_out[256];
static char malformed[256], configs_path[256];
/* The pool before the bad requests, which must leave it untouched. */
static char *pool_before;

/* --- requests ----------------------------------------------------------------------------- */

static int request(diffsynth_v1_Envelope *req, diffsynth_v1_Envelope *resp, int *code,
                   char *message, size_t message_size)
{
    ds_client *c = it_connect(&env);
    if (!c) {
        memset(resp, 0, sizeof *resp);
        return DS_CLIENT_ECONNECT;
    }
    int rc = it_call(c, req, resp);
    if (code)
        *code = ds_client_last_code(c);
    if (message)
        snprintf(message, message_size, "%s", ds_client_last_error(c));
    ds_client_close(c);
    return rc;
}

static int identify(char **paths, size_t n, diffsynth_v1_Envelope *resp)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.which_body = diffsynth_v1_Envelope_identify_tag;
    req.body.identify.paths = paths;
    req.body.identify.paths_count = (pb_size_t)n;
    int rc = request(&req, resp, NULL, NULL, 0);
    CHECK_MSG(rc != DS_CLIENT_OK || resp->which_body == diffsynth_v1_Envelope_identify_result_tag,
              "reply kind %u", (unsigned)resp->which_body);
    return rc;
}

static int load(char **paths, size_t n, const char *client, diffsynth_v1_Envelope *resp)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.which_body = diffsynth_v1_Envelope_load_tag;
    req.body.load.paths = paths;
    req.body.load.paths_count = (pb_size_t)n;
    req.body.load.client_name = (char *)client;
    return request(&req, resp, NULL, NULL, 0);
}

static int unload(const char *id, const char *client, diffsynth_v1_Envelope *resp)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.which_body = diffsynth_v1_Envelope_unload_tag;
    req.body.unload.model_id = (char *)id;
    req.body.unload.client_name = (char *)client;
    return request(&req, resp, NULL, NULL, 0);
}

/* Sends `req` and checks that it fails with `code` and a message containing `needle`, or
 * equal to it when `exact`. */
static void expect_error(diffsynth_v1_Envelope *req, int code, const char *needle, bool exact)
{
    diffsynth_v1_Envelope resp;
    int got_code = 0;
    char message[8192];
    int rc = request(req, &resp, &got_code, message, sizeof message);
    CHECK_MSG(rc == DS_CLIENT_EDAEMON, "status %d, expected an Error reply", rc);
    CHECK_MSG(got_code == code, "code %s, expected %s (%s)", ds_client_code_name(got_code),
              ds_client_code_name(code), message);
    if (exact)
        CHECK_STR_EQ(message, needle);
    else
        CHECK_CONTAINS(message, needle);
    ds_client_envelope_free(&resp);
}

static void expect_path_error(int body, char **paths, size_t n, int code, const char *needle,
                              bool exact)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.which_body = (pb_size_t)body;
    if (body == diffsynth_v1_Envelope_identify_tag) {
        req.body.identify.paths = paths;
        req.body.identify.paths_count = (pb_size_t)n;
    } else {
        req.body.load.paths = paths;
        req.body.load.paths_count = (pb_size_t)n;
        req.body.load.client_name = "it-bad";
    }
    expect_error(&req, code, needle, exact);
}

/* After a bad request: the daemon answers and the pool is as it was. */
static void check_unharmed(void)
{
    CHECK_MSG(it_daemon_alive(&env), "the daemon died");
    CHECK_MSG(it_status_ok(&env), "Status failed after a bad request");
    char *now = it_pool_snapshot(&env);
    CHECK_MSG(now && pool_before && strcmp(now, pool_before) == 0,
              "the pool changed:\nbefore:\n%s\nafter:\n%s", pool_before ? pool_before : "?",
              now ? now : "?");
    free(now);
}

static bool str_is(const char *s, const char *expected)
{
    return s && strcmp(s, expected) == 0;
}

static bool str_empty(const char *s)
{
    return !s || !s[0];
}

/* extra_kwargs_json parsed and compared as JSON, so formatting is free. */
static void check_kwargs(const char *json_text, const char *expected)
{
    json_error_t error;
    json_t *want = json_loads(expected, 0, &error);
    json_t *got = json_text && json_text[0] ? json_loads(json_text, 0, &error) : NULL;
    CHECK_MSG(want && got && json_equal(want, got), "extra_kwargs %s, expected %s",
              json_text ? json_text : "(absent)", expected);
    json_decref(want);
    json_decref(got);
}

static size_t keylist_size(const char *stem)
{
    char path[512];
    const char *data = getenv("DS_TEST_DATA");
    snprintf(path, sizeof path, "%s/keylists/%s.json", data ? data : "tests/data", stem);
    json_error_t error;
    json_t *root = json_load_file(path, 0, &error);
    size_t n = json_object_size(root);
    json_decref(root);
    return n;
}

/* --- the hash used for expectations is upstream's (facts §1.2) ----------------------------- */

static void test_hash_vectors(void)
{
    char hex[33];
    const it_tensor ab[] = {{"a.weight", 2, {4, 3}}, {"a.bias", 1, {4}}};
    REQUIRE(it_model_hash(ab, 2, hex) == 0);
    CHECK_STR_EQ(hex, AB_HASH);
    const it_tensor xy[] = {{"x", 1, {1}}, {"x.y", 1, {2}}};
    REQUIRE(it_model_hash(xy, 2, hex) == 0);
    CHECK_STR_EQ(hex, XY_HASH);
    const it_tensor mixed[] = {
        {"w", 0, {0}}, {"B", 1, {1}}, {"a_b", 1, {5}}, {"a.b", 1, {6}}, {"b.c", 3, {2, 3, 4}}};
    REQUIRE(it_model_hash(mixed, 5, hex) == 0);
    CHECK_STR_EQ(hex, "3be663fbce652ac820d36b0034174974");
}

/* --- good requests -------------------------------------------------------------------------- */

static void test_status(void)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_status_tag;
    REQUIRE(request(&req, &resp, NULL, NULL, 0) == DS_CLIENT_OK);
    REQUIRE(resp.which_body == diffsynth_v1_Envelope_status_result_tag);
    const diffsynth_v1_StatusResponse *s = &resp.body.status_result;
    CHECK_STR_EQ(s->version, DS_VERSION);
    CHECK_STR_EQ(s->backend, "cpu");
    CHECK_MSG(s->pid == (uint32_t)env.pid, "pid %u, spawned %d", (unsigned)s->pid, (int)env.pid);
    CHECK_STR_EQ(s->socket_path, env.socket);
    CHECK_MSG(s->model_roots_count == 1, "%u roots", (unsigned)s->model_roots_count);
    if (s->model_roots_count == 1)
        CHECK_STR_EQ(s->model_roots[0], env.models);
    CHECK_MSG(s->config_count == BUILTIN_CONFIGS + 1, "config_count %u", (unsigned)s->config_count);
    CHECK(s->clients >= 1);
    CHECK(s->max_frame_bytes == DS_CLIENT_DEFAULT_MAX_FRAME);
    CHECK(s->requests_served >= 1);
    ds_client_envelope_free(&resp);
}

/* One matching config with the given name, class and converter (NULL: none). */
static void check_identified(char **paths, size_t n, const char *hash, size_t tensors,
                             const char *name, const char *cls, const char *converter,
                             const char *kwargs, bool implemented)
{
    diffsynth_v1_Envelope resp;
    REQUIRE(identify(paths, n, &resp) == DS_CLIENT_OK);
    const diffsynth_v1_IdentifyResponse *r = &resp.body.identify_result;
    CHECK_STR_EQ(r->model_hash, hash);
    CHECK_MSG(r->tensor_count == tensors, "%s: tensor_count %u, expected %zu", name,
              (unsigned)r->tensor_count, tensors);
    CHECK_MSG(r->files_count == n, "%u files", (unsigned)r->files_count);
    for (pb_size_t i = 0; i < r->files_count && i < n; i++)
        CHECK_STR_EQ(r->files[i], paths[i]);
    CHECK_MSG(r->configs_count == 1, "%s: %u configs", name, (unsigned)r->configs_count);
    CHECK(r->closest_count == 0);
    if (r->configs_count >= 1) {
        const diffsynth_v1_ModelConfig *c = &r->configs[0];
        CHECK_STR_EQ(c->model_hash, hash);
        CHECK_STR_EQ(c->model_name, name);
        CHECK_STR_EQ(c->model_class, cls);
        if (converter)
            CHECK_STR_EQ(c->state_dict_converter, converter);
        else
            CHECK_MSG(str_empty(c->state_dict_converter), "converter %s", c->state_dict_converter);
        if (kwargs)
            check_kwargs(c->extra_kwargs_json, kwargs);
        else
            CHECK_MSG(str_empty(c->extra_kwargs_json), "extra_kwargs %s", c->extra_kwargs_json);
        CHECK_MSG(c->implemented == implemented, "%s: implemented %d", name, c->implemented);
        CHECK_STR_EQ(c->source, "builtin");
    }
    ds_client_envelope_free(&resp);
}

static void test_identify_dit(void)
{
    REQUIRE(dit_n == 9);
    /* facts §1.2: 3866 entries, two per tensor. */
    check_identified(dit, dit_n, DIT_HASH, 1933, "qwen_image_dit",
                     "diffsynth.models.qwen_image_dit.QwenImageDiT", NULL, NULL, true);
    /* Shard order does not change the hash (facts §1.3). */
    char *reversed[9];
    for (size_t i = 0; i < 9; i++)
        reversed[i] = dit[8 - i];
    diffsynth_v1_Envelope resp;
    REQUIRE(identify(reversed, 9, &resp) == DS_CLIENT_OK);
    CHECK_STR_EQ(resp.body.identify_result.model_hash, DIT_HASH);
    ds_client_envelope_free(&resp);
    /* One shard alone is some other, unknown model. */
    REQUIRE(identify(dit, 1, &resp) == DS_CLIENT_OK);
    CHECK(resp.body.identify_result.configs_count == 0);
    CHECK(!str_is(resp.body.identify_result.model_hash, DIT_HASH));
    ds_client_envelope_free(&resp);
}

static void test_identify_vae(void)
{
    check_identified(vae, vae_n, VAE_HASH, 194, "qwen_image_vae",
                     "diffsynth.models.qwen_image_vae.QwenImageVAE", NULL, NULL, true);
}

static void test_identify_text_encoder(void)
{
    REQUIRE(te_n == 4);
    check_identified(te, te_n, TE_HASH, 729, "qwen_image_text_encoder",
                     "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder",
                     TE_CONVERTER, NULL, true);
}

static void test_identify_controlnets(void)
{
    size_t tensors = keylist_size("qwen_image_blockwise_controlnet");
    CHECK(tensors > 0);
    check_identified(cn, cn_n, CN_HASH, tensors, "qwen_image_blockwise_controlnet", CN_CLASS,
                     NULL, NULL, true);
    check_identified(cn_inpaint, cn_inpaint_n, CN_INPAINT_HASH,
                     keylist_size("qwen_image_blockwise_controlnet_inpaint"),
                     "qwen_image_blockwise_controlnet", CN_CLASS, NULL,
                     "{\"additional_in_dim\": 4}", true);
}

static void test_identify_wan(void)
{
    /* W(1536,16,8960,12,30,F), facts §3 wan_series #9. */
    check_identified(wan, wan_n, WAN_HASH, 825, "wan_video_dit",
                     "diffsynth.models.wan_video_dit.WanModel", NULL,
                     "{\"has_image_input\": false, \"patch_size\": [1, 2, 2], \"in_dim\": 16, "
                     "\"dim\": 1536, \"ffn_dim\": 8960, \"freq_dim\": 256, \"text_dim\": 4096, "
                     "\"out_dim\": 16, \"num_heads\": 12, \"num_layers\": 30, \"eps\": 1e-6}",
                     true);
    /* The UMT5 text encoder and the Wan2.1 and Wan2.2 VAEs, with upstream's names and shapes (the .pth
     * files' keys) in safetensors: the hash is over names and shapes, so they identify as the
     * real files do. */
    check_identified(wan_te, wan_te_n, WAN_TE_HASH, 242, "wan_video_text_encoder",
                     "diffsynth.models.wan_video_text_encoder.WanTextEncoder", NULL, NULL, true);
    check_identified(wan_vae, wan_vae_n, WAN_VAE_HASH, 194, "wan_video_vae",
                     "diffsynth.models.wan_video_vae.WanVideoVAE",
                     "diffsynth.utils.state_dict_converters.wan_video_vae."
                     "WanVideoVAEStateDictConverter",
                     NULL, true);
    check_identified(wan_vae38, wan_vae38_n, WAN_VAE38_HASH, 196, "wan_video_vae",
                     "diffsynth.models.wan_video_vae.WanVideoVAE38",
                     "diffsynth.utils.state_dict_converters.wan_video_vae."
                     "WanVideoVAEStateDictConverter",
                     NULL, true);
}

static void test_identify_runtime_config(void)
{
    char *paths[] = {xy_path};
    diffsynth_v1_Envelope resp;
    REQUIRE(identify(paths, 1, &resp) == DS_CLIENT_OK);
    const diffsynth_v1_IdentifyResponse *r = &resp.body.identify_result;
    CHECK_STR_EQ(r->model_hash, XY_HASH);
    CHECK(r->tensor_count == 2);
    CHECK_MSG(r->configs_count == 1, "%u configs", (unsigned)r->configs_count);
    if (r->configs_count == 1) {
        CHECK_STR_EQ(r->configs[0].model_name, "it_runtime_model");
        CHECK_STR_EQ(r->configs[0].model_class, "it.runtime.RuntimeModel");
        CHECK_STR_EQ(r->configs[0].source, configs_path);
        check_kwargs(r->configs[0].extra_kwargs_json, "{\"width\": 3}");
        CHECK(!r->configs[0].implemented);
    }
    ds_client_envelope_free(&resp);
}

/* A file rewritten in place is a new model: nothing remembered about the old one may answer,
 * even when the size and the modification time are the same. */
static void test_identify_after_rewrite(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/rewritten.safetensors", env.models);
    const it_tensor before[] = {{"a.weight", 2, {4, 3}}, {"a.bias", 1, {4}}};
    const it_tensor after[] = {{"a.weight", 2, {3, 4}}, {"a.bias", 1, {4}}};
    char after_hash[33];
    REQUIRE(it_model_hash(after, 2, after_hash) == 0);
    REQUIRE(it_write_tensors(path, before, 2, DS_ST_FILL_RANDOM) == 0);
    struct stat st;
    REQUIRE(stat(path, &st) == 0);
    char *paths[] = {path};
    diffsynth_v1_Envelope resp;
    for (int i = 0; i < 2; i++) {
        REQUIRE(identify(paths, 1, &resp) == DS_CLIENT_OK);
        CHECK_STR_EQ(resp.body.identify_result.model_hash, AB_HASH);
        ds_client_envelope_free(&resp);
    }
    REQUIRE(it_write_tensors(path, after, 2, DS_ST_FILL_RANDOM) == 0);
    struct stat st2;
    REQUIRE(stat(path, &st2) == 0);
    CHECK(st2.st_size == st.st_size);
    const struct timespec times[2] = {st.st_atim, st.st_mtim};
    CHECK(utimensat(AT_FDCWD, path, times, 0) == 0);
    REQUIRE(identify(paths, 1, &resp) == DS_CLIENT_OK);
    CHECK_STR_EQ(resp.body.identify_result.model_hash, after_hash);
    ds_client_envelope_free(&resp);
    unlink(path);
}

static void test_load_reuse_unload(void)
{
    diffsynth_v1_Envelope resp;
    REQUIRE(load(cn, cn_n, "it-a", &resp) == DS_CLIENT_OK);
    REQUIRE(resp.which_body == diffsynth_v1_Envelope_load_result_tag);
    const diffsynth_v1_LoadResponse *r = &resp.body.load_result;
    CHECK_STR_EQ(r->model_hash, CN_HASH);
    CHECK(r->skipped_count == 0);
    REQUIRE(r->models_count == 1);
    char id[64];
    snprintf(id, sizeof id, "%s", r->models[0].model_id ? r->models[0].model_id : "");
    CHECK(id[0]);
    CHECK(!r->models[0].reused);
    CHECK_STR_EQ(r->models[0].model_name, "qwen_image_blockwise_controlnet");
    CHECK_STR_EQ(r->models[0].model_class, CN_CLASS);
    CHECK(r->models[0].tensor_count == keylist_size("qwen_image_blockwise_controlnet"));
    CHECK(r->models[0].paths_count == 1 && str_is(r->models[0].paths[0], cn[0]));
    CHECK(r->models[0].clients_count == 1 && str_is(r->models[0].clients[0], "it-a"));
    ds_client_envelope_free(&resp);

    char *snap = it_pool_snapshot(&env);
    char want[1024];
    snprintf(want, sizeof want, "%s qwen_image_blockwise_controlnet %s [it-a] [%s]\n", id,
             CN_HASH, cn[0]);
    CHECK_CONTAINS(snap, want);
    free(snap);

    REQUIRE(load(cn, cn_n, "it-b", &resp) == DS_CLIENT_OK);
    r = &resp.body.load_result;
    REQUIRE(r->models_count == 1);
    CHECK_STR_EQ(r->models[0].model_id, id);
    CHECK(r->models[0].reused);
    CHECK(r->models[0].clients_count == 2);
    ds_client_envelope_free(&resp);
    snap = it_pool_snapshot(&env);
    snprintf(want, sizeof want, "%s qwen_image_blockwise_controlnet %s [it-a,it-b] [%s]\n", id,
             CN_HASH, cn[0]);
    CHECK_CONTAINS(snap, want);
    free(snap);

    REQUIRE(unload(id, "it-a", &resp) == DS_CLIENT_OK);
    REQUIRE(resp.which_body == diffsynth_v1_Envelope_unload_result_tag);
    CHECK_STR_EQ(resp.body.unload_result.model_id, id);
    CHECK(resp.body.unload_result.remaining_references == 1);
    CHECK(!resp.body.unload_result.freed);
    ds_client_envelope_free(&resp);

    REQUIRE(unload(id, "it-b", &resp) == DS_CLIENT_OK);
    CHECK(resp.body.unload_result.remaining_references == 0);
    CHECK(resp.body.unload_result.freed);
    ds_client_envelope_free(&resp);

    snap = it_pool_snapshot(&env);
    CHECK_MSG(snap && !strstr(snap, id), "still listed after the last unload:\n%s", snap);
    free(snap);

    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.which_body = diffsynth_v1_Envelope_unload_tag;
    req.body.unload.model_id = id;
    req.body.unload.client_name = "it-a";
    expect_error(&req, diffsynth_v1_Code_NOT_FOUND, id, false);
}

static void test_list_configs(void)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_list_configs_tag;
    REQUIRE(request(&req, &resp, NULL, NULL, 0) == DS_CLIENT_OK);
    const diffsynth_v1_ListConfigsResponse *r = &resp.body.list_configs_result;
    REQUIRE(r->entries_count == BUILTIN_CONFIGS + 1);
    /* Upstream's order: sdxl (20) and sd (3) come first, then the 12 qwen_image entries. */
    CHECK_STR_EQ(r->entries[23].config.model_hash, DIT_HASH);
    CHECK_STR_EQ(r->entries[24].config.model_hash, TE_HASH);
    CHECK_STR_EQ(r->entries[34].config.model_hash, VAE_LAYERED_HASH);
    for (size_t i = 0; i < BUILTIN_CONFIGS; i++) {
        CHECK_STR_EQ(r->entries[i].config.source, "builtin");
        CHECK(r->entries[i].verify == diffsynth_v1_VerifyResult_VERIFY_NOT_REQUESTED);
    }
    CHECK_STR_EQ(r->entries[BUILTIN_CONFIGS].config.model_name, "it_runtime_model");
    CHECK_STR_EQ(r->entries[BUILTIN_CONFIGS].config.source, configs_path);
    ds_client_envelope_free(&resp);
}

static void test_list_configs_verify(void)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_list_configs_tag;
    req.body.list_configs.verify = true;
    REQUIRE(request(&req, &resp, NULL, NULL, 0) == DS_CLIENT_OK);
    const diffsynth_v1_ListConfigsResponse *r = &resp.body.list_configs_result;
    REQUIRE(r->entries_count == BUILTIN_CONFIGS + 1);
    /* Configs without converter whose classes this build has (the Qwen-Image ones and
     * Wan2.1-T2V-1.3B's WanModel). */
    const char *must_match[] = {DIT_HASH,         VAE_HASH,         CN_HASH, CN_INPAINT_HASH,
                                DIT_LAYERED_HASH, VAE_LAYERED_HASH, WAN_HASH};
    int matched[7] = {0};
    for (pb_size_t i = 0; i < r->entries_count; i++) {
        const diffsynth_v1_ConfigEntry *e = &r->entries[i];
        CHECK_MSG(e->verify != diffsynth_v1_VerifyResult_VERIFY_MISMATCH &&
                      e->verify != diffsynth_v1_VerifyResult_VERIFY_ERROR,
                  "%s %s: verify %d (%s)", e->config.model_hash, e->config.model_name,
                  (int)e->verify, e->detail ? e->detail : "");
        for (int k = 0; k < 7; k++) {
            if (!str_is(e->config.model_hash, must_match[k]))
                continue;
            matched[k]++;
            CHECK_MSG(e->verify == diffsynth_v1_VerifyResult_VERIFY_MATCH, "%s: verify %d (%s)",
                      must_match[k], (int)e->verify, e->detail ? e->detail : "");
            CHECK_STR_EQ(e->computed_hash, must_match[k]);
        }
        if (str_is(e->config.model_hash, TE_HASH) ||
            str_is(e->config.model_name, "it_runtime_model"))
            CHECK_MSG(e->verify == diffsynth_v1_VerifyResult_VERIFY_NOT_APPLICABLE,
                      "%s: verify %d", e->config.model_name, (int)e->verify);
    }
    for (int k = 0; k < 7; k++)
        CHECK_MSG(matched[k] == 1, "%s appears %d times", must_match[k], matched[k]);
    ds_client_envelope_free(&resp);
}

static void test_cancel_unknown(void)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    bool found = true;
    CHECK(ds_client_cancel(c, 987654321, IT_CALL_TIMEOUT_MS, &found) == DS_CLIENT_OK);
    CHECK(!found);
    ds_client_close(c);
}

/* --- bad requests --------------------------------------------------------------------------- */

static void keep_a_model(void)
{
    diffsynth_v1_Envelope resp;
    REQUIRE(load(vae, vae_n, "it-keep", &resp) == DS_CLIENT_OK);
    REQUIRE(resp.body.load_result.models_count == 1);
    ds_client_envelope_free(&resp);
    pool_before = it_pool_snapshot(&env);
    CHECK_CONTAINS(pool_before, "qwen_image_vae " VAE_HASH " [it-keep]");
}

static void test_load_unimplemented(void)
{
    char *paths[] = {xy_path};
    expect_path_error(diffsynth_v1_Envelope_load_tag, paths, 1, diffsynth_v1_Code_UNIMPLEMENTED,
                      "it_runtime_model", false);
    check_unharmed();
}

static void test_load_unknown(void)
{
    char *paths[] = {ab_path};
    char want[512];
    snprintf(want, sizeof want, "Cannot detect the model type. File: %s. Model hash: %s",
             ab_path, AB_HASH);
    expect_path_error(diffsynth_v1_Envelope_load_tag, paths, 1, diffsynth_v1_Code_NOT_FOUND, want,
                      true);
    check_unharmed();
    /* Identify is not an error: no configs, the hash, nothing in common with any config. */
    diffsynth_v1_Envelope resp;
    REQUIRE(identify(paths, 1, &resp) == DS_CLIENT_OK);
    CHECK_STR_EQ(resp.body.identify_result.model_hash, AB_HASH);
    CHECK(resp.body.identify_result.configs_count == 0);
    ds_client_envelope_free(&resp);
}

static void test_load_unknown_two_files(void)
{
    char *paths[] = {two_a, two_b};
    char want[1024];
    /* Python's str() of a list of paths (facts §2). */
    snprintf(want, sizeof want,
             "Cannot detect the model type. File: ['%s', '%s']. Model hash: %s", two_a, two_b,
             TWO_FILES_HASH);
    expect_path_error(diffsynth_v1_Envelope_load_tag, paths, 2, diffsynth_v1_Code_NOT_FOUND, want,
                      true);
    check_unharmed();
}

static void test_outside_roots(void)
{
    char *paths[] = {outside};
    expect_path_error(diffsynth_v1_Envelope_load_tag, paths, 1,
                      diffsynth_v1_Code_PERMISSION_DENIED, outside, false);
    expect_path_error(diffsynth_v1_Envelope_identify_tag, paths, 1,
                      diffsynth_v1_Code_PERMISSION_DENIED, outside, false);
    /* A link inside the root to a file outside it is resolved first. */
    char *linked[] = {link_out};
    expect_path_error(diffsynth_v1_Envelope_load_tag, linked, 1,
                      diffsynth_v1_Code_PERMISSION_DENIED, "outside the model roots", false);
    /* ".." out of the root. */
    char dotdot[512];
    snprintf(dotdot, sizeof dotdot, "%s/../outside.safetensors", env.models);
    char *up[] = {dotdot};
    expect_path_error(diffsynth_v1_Envelope_identify_tag, up, 1,
                      diffsynth_v1_Code_PERMISSION_DENIED, "outside the model roots", false);
    check_unharmed();
}

static void test_relative_path(void)
{
    /* The client library sends paths as given; only the CLI makes them absolute. */
    char *paths[] = {"models/vae.safetensors"};
    expect_path_error(diffsynth_v1_Envelope_load_tag, paths, 1,
                      diffsynth_v1_Code_INVALID_ARGUMENT, "not absolute", false);
    expect_path_error(diffsynth_v1_Envelope_identify_tag, paths, 1,
                      diffsynth_v1_Code_INVALID_ARGUMENT, "not absolute", false);
    char *empty[] = {""};
    expect_path_error(diffsynth_v1_Envelope_load_tag, empty, 1,
                      diffsynth_v1_Code_INVALID_ARGUMENT, "empty", false);
    expect_path_error(diffsynth_v1_Envelope_load_tag, NULL, 0,
                      diffsynth_v1_Code_INVALID_ARGUMENT, "paths", false);
    check_unharmed();
}

static void test_missing_file(void)
{
    char missing[512];
    snprintf(missing, sizeof missing, "%s/no-such-model.safetensors", env.models);
    char *paths[] = {missing};
    expect_path_error(diffsynth_v1_Envelope_load_tag, paths, 1, diffsynth_v1_Code_NOT_FOUND,
                      missing, false);
    expect_path_error(diffsynth_v1_Envelope_identify_tag, paths, 1, diffsynth_v1_Code_NOT_FOUND,
                      missing, false);
    /* A missing second shard fails the whole load. */
    char *two[] = {cn[0], missing};
    expect_path_error(diffsynth_v1_Envelope_load_tag, two, 2, diffsynth_v1_Code_NOT_FOUND,
                      missing, false);
    check_unharmed();
}

static void test_malformed_file(void)
{
    char *paths[] = {malformed};
    expect_path_error(diffsynth_v1_Envelope_load_tag, paths, 1,
                      diffsynth_v1_Code_INVALID_ARGUMENT, malformed, false);
    expect_path_error(diffsynth_v1_Envelope_identify_tag, paths, 1,
                      diffsynth_v1_Code_INVALID_ARGUMENT, malformed, false);
    /* Good shards beside a bad one: still nothing enters the pool. */
    char *mixed[] = {cn[0], malformed};
    expect_path_error(diffsynth_v1_Envelope_load_tag, mixed, 2,
                      diffsynth_v1_Code_INVALID_ARGUMENT, malformed, false);
    check_unharmed();
}

static void test_bad_unload(void)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.which_body = diffsynth_v1_Envelope_unload_tag;
    req.body.unload.model_id = "m999999";
    expect_error(&req, diffsynth_v1_Code_NOT_FOUND, "m999999", false);
    req.body.unload.model_id = "";
    expect_error(&req, diffsynth_v1_Code_INVALID_ARGUMENT, "model_id", false);
    /* A client that holds no reference cannot drop someone else's. */
    char *snap = pool_before ? strdup(pool_before) : NULL;
    REQUIRE(snap);
    char *space = strchr(snap, ' ');
    REQUIRE(space);
    *space = '\0';
    req.body.unload.model_id = snap;
    req.body.unload.client_name = "it-stranger";
    expect_error(&req, diffsynth_v1_Code_FAILED_PRECONDITION, "it-keep", false);
    free(snap);
    req.body.unload.model_id = "m1";
    req.body.unload.client_name = "bad\nname";
    expect_error(&req, diffsynth_v1_Code_INVALID_ARGUMENT, "client_name", false);
    check_unharmed();
}

/* --- a role that takes two classes ---------------------------------------------------------- */

/* wan_video's vae role takes the Wan2.2 VAE (WanVideoVAE38) beside the Wan2.1 one, by id and by
 * paths. Runs last: the models a run loads from paths stay in the pool. */
static void test_wan_vae38_role(void)
{
    static const ds_client_step_param small[] = {
        {"height", "32"}, {"width", "32"}, {"num_frames", "1"}, {"steps", "1"}};
    ds_client_pipeline_result res;
    diffsynth_v1_Envelope resp;
    REQUIRE(load(wan_vae38, wan_vae38_n, "it-vae38", &resp) == DS_CLIENT_OK);
    REQUIRE(resp.which_body == diffsynth_v1_Envelope_load_result_tag &&
            resp.body.load_result.models_count == 1);
    char id[64];
    snprintf(id, sizeof id, "%s", resp.body.load_result.models[0].model_id);
    ds_client_envelope_free(&resp);

    /* By id: taken; the roles left out are what is missing then. */
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    ds_client_pipeline_model by_id = {.role = "vae", .model_id = id};
    ds_client_pipeline_request r = {.pipeline = "wan_video", .models = &by_id, .model_count = 1,
                                    .prompt = "x", .params = small, .param_count = 4,
                                    .named_outputs = true};
    CHECK(ds_client_run_pipeline(c, &r, &res, 120000, NULL, NULL, NULL) == DS_CLIENT_EDAEMON);
    CHECK(ds_client_last_code(c) == diffsynth_v1_Code_FAILED_PRECONDITION);
    CHECK_CONTAINS(ds_client_last_error(c), "no model for the text_encoder");

    /* By paths: loaded as WanVideoVAE38, then the pipeline pairs it with the Wan2.1 DiT. */
    ds_client_pipeline_model by_paths[] = {
        {.role = "text_encoder", .paths = (const char *const *)wan_te, .path_count = wan_te_n},
        {.role = "dit", .paths = (const char *const *)wan, .path_count = wan_n},
        {.role = "vae", .paths = (const char *const *)wan_vae38, .path_count = wan_vae38_n},
    };
    r.models = by_paths;
    r.model_count = 3;
    CHECK(ds_client_run_pipeline(c, &r, &res, 120000, NULL, NULL, NULL) == DS_CLIENT_EDAEMON);
    CHECK(ds_client_last_code(c) == diffsynth_v1_Code_INVALID_ARGUMENT);
    CHECK_CONTAINS(ds_client_last_error(c),
                   "the dit model has 16 latent channels, the vae "
                   "(diffsynth.models.wan_video_vae.WanVideoVAE38) 48");
    ds_client_close(c);
    CHECK(unload(id, "it-vae38", &resp) == DS_CLIENT_OK);
    ds_client_envelope_free(&resp);
}

/* --- setup ---------------------------------------------------------------------------------- */

static int make_all(void)
{
    /* Upstream's layout: transformer/diffusion_pytorch_model-0000i-of-00009.safetensors. */
    char sub[512];
    snprintf(sub, sizeof sub, "%s/transformer", env.models);
    if (mkdir(sub, 0755) != 0 ||
        it_make_model(&env, "qwen_image_dit", "transformer/diffusion_pytorch_model", 9, &dit,
                      &dit_n) != 0)
        return -1;
    if (it_make_model(&env, "qwen_image_vae", "vae", 1, &vae, &vae_n) != 0 ||
        it_make_model(&env, "qwen_image_text_encoder_raw", "model", 4, &te, &te_n) != 0 ||
        it_make_model(&env, "qwen_image_blockwise_controlnet", "cn", 1, &cn, &cn_n) != 0 ||
        it_make_model(&env, "qwen_image_blockwise_controlnet_inpaint", "cn-inpaint", 1,
                      &cn_inpaint, &cn_inpaint_n) != 0 ||
        it_make_model(&env, "wan2.1_t2v_1.3b", "wan", 1, &wan, &wan_n) != 0 ||
        it_make_model(&env, "wan2.1_text_encoder", "wan-te", 1, &wan_te, &wan_te_n) != 0 ||
        it_make_model(&env, "wan2.1_vae", "wan-vae", 1, &wan_vae, &wan_vae_n) != 0 ||
        it_make_model(&env, "wan2.2_vae", "wan-vae38", 1, &wan_vae38, &wan_vae38_n) != 0)
        return -1;

    snprintf(ab_path, sizeof ab_path, "%s/unknown.safetensors", env.models);
    const it_tensor ab[] = {{"a.weight", 2, {4, 3}}, {"a.bias", 1, {4}}};
    snprintf(two_a, sizeof two_a, "%s/two-a.safetensors", env.models);
    const it_tensor a[] = {{"a", 1, {1}}};
    snprintf(two_b, sizeof two_b, "%s/two-b.safetensors", env.models);
    const it_tensor b[] = {{"b", 1, {2}}, {"a", 1, {3}}};
    snprintf(xy_path, sizeof xy_path, "%s/runtime.safetensors", env.models);
    const it_tensor xy[] = {{"x", 1, {1}}, {"x.y", 1, {2}}};
    snprintf(outside, sizeof outside, "%s/outside.safetensors", env.dir);
    snprintf(link_out, sizeof link_out, "%s/link-out.safetensors", env.models);
    if (it_write_tensors(ab_path, ab, 2, DS_ST_FILL_RANDOM) != 0 ||
        it_write_tensors(two_a, a, 1, DS_ST_FILL_RANDOM) != 0 ||
        it_write_tensors(two_b, b, 2, DS_ST_FILL_RANDOM) != 0 ||
        it_write_tensors(xy_path, xy, 2, DS_ST_FILL_RANDOM) != 0 ||
        it_write_tensors(outside, ab, 2, DS_ST_FILL_RANDOM) != 0 || symlink(outside, link_out) != 0)
        return -1;

    /* A header length that fits the file, and a header that is not JSON. */
    snprintf(malformed, sizeof malformed, "%s/malformed.safetensors", env.models);
    const char bad[] = "\x10\0\0\0\0\0\0\0{not json at al";
    if (it_write_file(malformed, bad, sizeof bad - 1) != 0)
        return -1;

    snprintf(configs_path, sizeof configs_path, "%s/configs.json", env.dir);
    const char *configs = "[{\"model_hash\": \"" XY_HASH "\", \"model_name\": "
                          "\"it_runtime_model\", \"model_class\": \"it.runtime.RuntimeModel\", "
                          "\"extra_kwargs\": {\"width\": 3}}]";
    return it_write_file(configs_path, configs, strlen(configs));
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIFFSYNTHD [DIFFSYNTH]\n", argv[0]);
        return 2;
    }
    it_env_init(&env, argv[1]);
    if (make_all() != 0) {
        fprintf(stderr, "cannot write the model files\n");
        it_env_cleanup(&env);
        return 1;
    }
    const char *extra[] = {"--model-configs", configs_path, NULL};
    if (it_daemon_start(&env, extra) != 0) {
        it_env_cleanup(&env);
        return 1;
    }

    RUN(test_hash_vectors);
    RUN(test_status);
    RUN(test_identify_dit);
    RUN(test_identify_vae);
    RUN(test_identify_text_encoder);
    RUN(test_identify_controlnets);
    RUN(test_identify_wan);
    RUN(test_identify_runtime_config);
    RUN(test_identify_after_rewrite);
    RUN(test_load_reuse_unload);
    RUN(test_list_configs);
    RUN(test_list_configs_verify);
    RUN(test_cancel_unknown);

    RUN(keep_a_model);
    RUN(test_load_unimplemented);
    RUN(test_load_unknown);
    RUN(test_load_unknown_two_files);
    RUN(test_outside_roots);
    RUN(test_relative_path);
    RUN(test_missing_file);
    RUN(test_malformed_file);
    RUN(test_bad_unload);
    RUN(test_wan_vae38_role);

    int status = -1;
    if (it_daemon_stop(&env, &status) != 0 || status != 0) {
        fprintf(stderr, "FAIL the daemon did not stop cleanly (status %d)\n", status);
        test_failures++;
    }
    if (test_failures)
        it_dump_log(&env);
    free(pool_before);
    ds_st_paths_free(dit, dit_n);
    ds_st_paths_free(vae, vae_n);
    ds_st_paths_free(te, te_n);
    ds_st_paths_free(cn, cn_n);
    ds_st_paths_free(cn_inpaint, cn_inpaint_n);
    ds_st_paths_free(wan, wan_n);
    ds_st_paths_free(wan_te, wan_te_n);
    ds_st_paths_free(wan_vae, wan_vae_n);
    ds_st_paths_free(wan_vae38, wan_vae38_n);
    it_env_cleanup(&env);
    return test_summary();
}
