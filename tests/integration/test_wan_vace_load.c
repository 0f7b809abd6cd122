/* One Load of a Wan VACE file set (the base DiT and the VACE branch in one file, as upstream's
 * Wan2.1-VACE files are) through the daemon: two pool models, one per config row sharing the
 * file's hash (WanModel through WanVideoDiTStateDictConverter, VaceWanModel through
 * VaceWanModelDictConverter), on one mapping that the pool counts once. Both serve RunStep (the
 * DiT's forward with the branch as its aux model of role "vace"); dropping either model leaves
 * the other working on the mapping they shared.
 *
 * The model is small (width 24, two blocks, both VACE layers) with seeded random f32 weights:
 * the numbers are the golden test's business, this test checks the pool and the wiring. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/model_hash.h"
#include "harness.h"
#include "test.h"

#define DIT_CLASS "diffsynth.models.wan_video_dit.WanModel"
#define VACE_CLASS "diffsynth.models.wan_video_vace.VaceWanModel"
#define CONV "diffsynth.utils.state_dict_converters."
#define DIT_NAME "wan_video_dit"
#define VACE_NAME "wan_video_vace"

enum { DIM = 24, FFN = 32, LAYERS = 2, IN_DIM = 4, TEXT_DIM = 8, FREQ_DIM = 8, VACE_IN = 6 };
/* Inputs: batch 1, 2 latent frames of 4 x 6 (2 x 3 tokens each), 3 text tokens. */
enum { F = 2, H = 4, W = 6, L = 3 };

static it_env env;
static char model_path[256], configs_path[256];
static float latents[IN_DIM * F * H * W], context[L * TEXT_DIM], vace_ctx[VACE_IN * F * H * W];
static float timestep[1] = {700.0f};

static int put(ds_state_dict *sd, const char *name, int ndim, const int64_t *shape)
{
    ds_tensor_view v;
    if (ds_tensor_view_declare(&v, DS_F32, ndim, shape) != DS_OK)
        return -1;
    return ds_state_dict_put_tensor(sd, name, &v) == DS_OK ? 0 : -1;
}

static int put_linear(ds_state_dict *sd, const char *name, int64_t out, int64_t in)
{
    char w[128], b[128];
    snprintf(w, sizeof w, "%s.weight", name);
    snprintf(b, sizeof b, "%s.bias", name);
    return put(sd, w, 2, (const int64_t[]){out, in}) || put(sd, b, 1, (const int64_t[]){out});
}

/* DiTBlock's parameters under `prefix` (upstream's wan_video_dit.py), VaceWanAttentionBlock's
 * projections with `vace`. */
static int put_block(ds_state_dict *sd, const char *prefix, int vace, int first)
{
    static const char *const linears[] = {"self_attn.q", "self_attn.k", "self_attn.v",
                                          "self_attn.o", "cross_attn.q", "cross_attn.k",
                                          "cross_attn.v", "cross_attn.o"};
    static const char *const norms[] = {"self_attn.norm_q.weight", "self_attn.norm_k.weight",
                                        "cross_attn.norm_q.weight", "cross_attn.norm_k.weight",
                                        "norm3.weight", "norm3.bias"};
    char name[128];
    int rc = 0;
    snprintf(name, sizeof name, "%smodulation", prefix);
    rc |= put(sd, name, 3, (const int64_t[]){1, 6, DIM});
    for (size_t i = 0; i < sizeof linears / sizeof linears[0]; i++) {
        snprintf(name, sizeof name, "%s%s", prefix, linears[i]);
        rc |= put_linear(sd, name, DIM, DIM);
    }
    for (size_t i = 0; i < sizeof norms / sizeof norms[0]; i++) {
        snprintf(name, sizeof name, "%s%s", prefix, norms[i]);
        rc |= put(sd, name, 1, (const int64_t[]){DIM});
    }
    snprintf(name, sizeof name, "%sffn.0", prefix);
    rc |= put_linear(sd, name, FFN, DIM);
    snprintf(name, sizeof name, "%sffn.2", prefix);
    rc |= put_linear(sd, name, DIM, FFN);
    if (vace) {
        snprintf(name, sizeof name, "%safter_proj", prefix);
        rc |= put_linear(sd, name, DIM, DIM);
        if (first) {
            snprintf(name, sizeof name, "%sbefore_proj", prefix);
            rc |= put_linear(sd, name, DIM, DIM);
        }
    }
    return rc;
}

/* The file and two config rows with its hash: the DiT and the VACE branch. */
static int make_model(void)
{
    ds_state_dict sd;
    ds_state_dict_init(&sd);
    int rc = put(&sd, "patch_embedding.weight", 5, (const int64_t[]){DIM, IN_DIM, 1, 2, 2}) ||
             put(&sd, "patch_embedding.bias", 1, (const int64_t[]){DIM}) ||
             put_linear(&sd, "text_embedding.0", DIM, TEXT_DIM) ||
             put_linear(&sd, "text_embedding.2", DIM, DIM) ||
             put_linear(&sd, "time_embedding.0", DIM, FREQ_DIM) ||
             put_linear(&sd, "time_embedding.2", DIM, DIM) ||
             put_linear(&sd, "time_projection.1", 6 * DIM, DIM) ||
             put(&sd, "vace_patch_embedding.weight", 5,
                 (const int64_t[]){DIM, VACE_IN, 1, 2, 2}) ||
             put(&sd, "vace_patch_embedding.bias", 1, (const int64_t[]){DIM});
    char prefix[64];
    for (int i = 0; !rc && i < LAYERS; i++) {
        snprintf(prefix, sizeof prefix, "blocks.%d.", i);
        rc = put_block(&sd, prefix, 0, 0);
        snprintf(prefix, sizeof prefix, "vace_blocks.%d.", i);
        rc = rc || put_block(&sd, prefix, 1, i == 0);
    }
    rc = rc || put(&sd, "head.modulation", 3, (const int64_t[]){1, 2, DIM}) ||
         put_linear(&sd, "head.head", IN_DIM * 4, DIM);
    char hash[DS_MODEL_HASH_HEX];
    ds_error err = {0};
    snprintf(model_path, sizeof model_path, "%s/wan_vace_small.safetensors", env.models);
    if (!rc && (ds_model_hash(&sd, hash) != DS_OK ||
                ds_st_write(model_path, &sd, 0, sd.count, DS_ST_FILL_RANDOM, 15, &err) != DS_OK))
        rc = -1;
    ds_state_dict_free(&sd);
    if (rc) {
        fprintf(stderr, "writing the VACE model: %s\n", err.message);
        return -1;
    }
    char configs[2048];
    snprintf(configs, sizeof configs,
             "[{\"model_hash\": \"%s\", \"model_name\": \"" DIT_NAME "\", "
             "\"model_class\": \"" DIT_CLASS "\", "
             "\"state_dict_converter\": \"" CONV "wan_video_dit.WanVideoDiTStateDictConverter\", "
             "\"extra_kwargs\": {\"has_image_input\": false, \"patch_size\": [1, 2, 2], "
             "\"in_dim\": %d, \"dim\": %d, \"ffn_dim\": %d, \"freq_dim\": %d, \"text_dim\": %d, "
             "\"out_dim\": %d, \"num_heads\": 2, \"num_layers\": %d, \"eps\": 1e-06}},\n"
             " {\"model_hash\": \"%s\", \"model_name\": \"" VACE_NAME "\", "
             "\"model_class\": \"" VACE_CLASS "\", "
             "\"state_dict_converter\": \"" CONV "wan_video_vace.VaceWanModelDictConverter\", "
             "\"extra_kwargs\": {\"vace_layers\": [0, 1], \"vace_in_dim\": %d, "
             "\"patch_size\": [1, 2, 2], \"has_image_input\": false, \"dim\": %d, "
             "\"num_heads\": 2, \"ffn_dim\": %d, \"eps\": 1e-06}}]\n",
             hash, IN_DIM, DIM, FFN, FREQ_DIM, TEXT_DIM, IN_DIM, LAYERS, hash, VACE_IN, DIM, FFN);
    snprintf(configs_path, sizeof configs_path, "%s/configs.json", env.dir);
    return it_write_file(configs_path, configs, strlen(configs));
}

static void fill_inputs(void)
{
    uint32_t s = 99;
    float *all[] = {latents, context, vace_ctx};
    size_t n[] = {sizeof latents / 4, sizeof context / 4, sizeof vace_ctx / 4};
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < n[k]; i++) {
            s = s * 1103515245u + 12345u;
            all[k][i] = (float)((s >> 8) & 0xFFFF) / 32768.0f - 1.0f;
        }
}

/* The DiT's forward, with the VACE branch when vace_id is set; the noise_pred's bytes into
 * out. Returns the client status; *code the daemon's error code. */
static int forward(const char *dit_id, const char *vace_id, float *out, int *code,
                   char *message, size_t message_size)
{
    ds_client *c = it_connect(&env);
    if (!c)
        return -1;
    ds_client_tensor in[4] = {
        {"latents", diffsynth_v1_DType_F32, 5, {1, IN_DIM, F, H, W}, latents, sizeof latents},
        {"timestep", diffsynth_v1_DType_F32, 1, {1}, timestep, sizeof timestep},
        {"context", diffsynth_v1_DType_F32, 3, {1, L, TEXT_DIM}, context, sizeof context},
        {"vace_context", diffsynth_v1_DType_F32, 5, {1, VACE_IN, F, H, W}, vace_ctx,
         sizeof vace_ctx},
    };
    ds_client_aux_model aux = {"vace", vace_id};
    ds_client_step_request r = {.model_id = dit_id, .inputs = in, .input_count = vace_id ? 4 : 3,
                                .aux_models = vace_id ? &aux : NULL, .aux_count = vace_id != 0};
    ds_client_step_result res;
    int rc = ds_client_run_step(c, &r, &res, IT_CALL_TIMEOUT_MS, NULL, NULL, NULL);
    *code = ds_client_last_code(c);
    snprintf(message, message_size, "%s", ds_client_last_error(c));
    if (rc == DS_CLIENT_OK) {
        CHECK(res.output_count == 1 && res.outputs[0].nbytes == sizeof latents);
        if (res.output_count == 1 && res.outputs[0].nbytes == sizeof latents)
            memcpy(out, res.outputs[0].data, sizeof latents);
    }
    ds_client_step_result_free(&res);
    ds_client_close(c);
    return rc;
}

static int forward_ok(const char *dit_id, const char *vace_id, float *out)
{
    int code = 0;
    char message[1024];
    int rc = forward(dit_id, vace_id, out, &code, message, sizeof message);
    CHECK_MSG(rc == DS_CLIENT_OK, "forward (dit %s, vace %s): %d %s", dit_id,
              vace_id ? vace_id : "none", rc, message);
    return rc == DS_CLIENT_OK;
}

static int load_set(diffsynth_v1_Envelope *resp)
{
    ds_client *c = it_connect(&env);
    if (!c)
        return -1;
    char *paths[] = {model_path};
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.which_body = diffsynth_v1_Envelope_load_tag;
    req.body.load.paths = paths;
    req.body.load.paths_count = 1;
    req.body.load.client_name = "it-wan";
    int rc = it_call(c, &req, resp);
    CHECK_MSG(rc == DS_CLIENT_OK, "load: %s", ds_client_last_error(c));
    ds_client_close(c);
    return rc;
}

static void unload(const char *id)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_unload_tag;
    req.body.unload.model_id = (char *)id;
    req.body.unload.client_name = "it-wan";
    CHECK_MSG(it_call(c, &req, &resp) == DS_CLIENT_OK, "unload %s: %s", id,
              ds_client_last_error(c));
    ds_client_envelope_free(&resp);
    ds_client_close(c);
}

static uint64_t tier(const diffsynth_v1_TierBytes *t, pb_size_t n, const char *name)
{
    for (pb_size_t i = 0; i < n; i++)
        if (strcmp(t[i].tier, name) == 0)
            return t[i].bytes;
    return UINT64_MAX;
}

/* The daemon's "disk" tier: the mapped bytes of every model, a shared mapping once. */
static uint64_t daemon_disk_bytes(uint32_t *models)
{
    *models = UINT32_MAX;
    ds_client *c = it_connect(&env);
    if (!c)
        return UINT64_MAX;
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_status_tag;
    if (it_call(c, &req, &resp) != DS_CLIENT_OK) {
        ds_client_close(c);
        return UINT64_MAX;
    }
    const diffsynth_v1_StatusResponse *s = &resp.body.status_result;
    uint64_t bytes = tier(s->memory, s->memory_count, "disk");
    *models = s->models;
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    return bytes;
}

static int differs(const float *a, const float *b)
{
    return memcmp(a, b, sizeof latents) != 0;
}

static int finite_nonzero(const float *x)
{
    int nonzero = 0;
    for (size_t i = 0; i < sizeof latents / 4; i++) {
        if (!isfinite(x[i]))
            return 0;
        nonzero |= x[i] != 0.0f;
    }
    return nonzero;
}

static void test_two_models_one_mapping(void)
{
    struct stat st;
    REQUIRE(stat(model_path, &st) == 0);
    diffsynth_v1_Envelope resp;
    REQUIRE(load_set(&resp) == DS_CLIENT_OK);
    const diffsynth_v1_LoadResponse *lr = &resp.body.load_result;
    REQUIRE(lr->models_count == 2);
    CHECK(lr->skipped_count == 0);
    char dit_id[32] = "", vace_id[32] = "";
    for (pb_size_t i = 0; i < lr->models_count; i++) {
        const diffsynth_v1_LoadedModel *m = &lr->models[i];
        CHECK(m->paths_count == 1 && strcmp(m->paths[0], model_path) == 0);
        /* Each model accounts for the whole file it maps. */
        CHECK_MSG(tier(m->tiers, m->tiers_count, "disk") == (uint64_t)st.st_size,
                  "%s: disk tier %llu, file %lld bytes", m->model_name,
                  (unsigned long long)tier(m->tiers, m->tiers_count, "disk"),
                  (long long)st.st_size);
        if (strcmp(m->model_class, DIT_CLASS) == 0)
            snprintf(dit_id, sizeof dit_id, "%s", m->model_id);
        else if (strcmp(m->model_class, VACE_CLASS) == 0)
            snprintf(vace_id, sizeof vace_id, "%s", m->model_id);
    }
    CHECK(lr->models[0].tensor_count != lr->models[1].tensor_count);
    ds_client_envelope_free(&resp);
    REQUIRE(dit_id[0] && vace_id[0]);

    /* Two models, one mapping: the daemon's disk tier holds the file once. */
    uint32_t models = 0;
    uint64_t disk = daemon_disk_bytes(&models);
    CHECK(models == 2);
    CHECK_MSG(disk == (uint64_t)st.st_size, "daemon disk tier %llu, the file has %lld bytes",
              (unsigned long long)disk, (long long)st.st_size);

    static float plain[sizeof latents / 4], hinted[sizeof latents / 4],
        again[sizeof latents / 4];
    REQUIRE(forward_ok(dit_id, NULL, plain));
    REQUIRE(forward_ok(dit_id, vace_id, hinted));
    CHECK(finite_nonzero(plain) && finite_nonzero(hinted));
    CHECK_MSG(differs(plain, hinted), "the VACE hints changed nothing");

    /* Without the DiT, the branch keeps the mapping: loading the set again reuses it (same
     * config, same file) next to a fresh DiT, and the pair computes what it did. */
    unload(dit_id);
    disk = daemon_disk_bytes(&models);
    CHECK(models == 1 && disk == (uint64_t)st.st_size);
    REQUIRE(load_set(&resp) == DS_CLIENT_OK);
    lr = &resp.body.load_result;
    REQUIRE(lr->models_count == 2);
    char dit2[32] = "";
    for (pb_size_t i = 0; i < lr->models_count; i++) {
        const diffsynth_v1_LoadedModel *m = &lr->models[i];
        if (strcmp(m->model_class, VACE_CLASS) == 0)
            CHECK_MSG(m->reused && strcmp(m->model_id, vace_id) == 0,
                      "the VACE branch %s was not reused (reused %d)", m->model_id, m->reused);
        else
            snprintf(dit2, sizeof dit2, "%s", m->model_id);
    }
    ds_client_envelope_free(&resp);
    REQUIRE(dit2[0] && strcmp(dit2, dit_id) != 0);
    REQUIRE(forward_ok(dit2, vace_id, again));
    CHECK_MSG(!differs(again, hinted), "DiT + VACE after the reload differ from the first run");

    /* The branch's second reference (the reload took one) and then its last: the DiT alone
     * computes what it did before. */
    unload(vace_id);
    unload(vace_id);
    disk = daemon_disk_bytes(&models);
    CHECK(models == 1 && disk == (uint64_t)st.st_size);
    REQUIRE(forward_ok(dit2, NULL, again));
    CHECK_MSG(!differs(again, plain), "the DiT alone after the VACE branch left differs");
    int code = 0;
    char message[1024];
    CHECK(forward(dit2, vace_id, again, &code, message, sizeof message) == DS_CLIENT_EDAEMON);
    CHECK_CONTAINS(message, vace_id);
    unload(dit2);
    disk = daemon_disk_bytes(&models);
    CHECK(models == 0 && disk == 0);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIFFSYNTHD [DIFFSYNTH]\n", argv[0]);
        return 2;
    }
    it_env_init(&env, argv[1]);
    fill_inputs();
    const char *extra[] = {"--model-configs", configs_path, "--threads", "2", NULL};
    if (make_model() != 0 || it_daemon_start(&env, extra) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    RUN(test_two_models_one_mapping);
    return it_finish(&env, test_failures);
}
