/* The config table against upstream's MODEL_CONFIGS (facts §3) and runtime JSON additions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/model_configs.h"
#include "test.h"

/* MODEL_CONFIGS starts with stable_diffusion_xl_series (20) and stable_diffusion_series (3). */
#define QWEN_FIRST 23
#define WAN_FIRST 35
#define FLUX_FIRST 69
/* Upstream's MODEL_CONFIGS, then the rows diffsynthd adds (tools/gen_model_configs.py). */
#define UPSTREAM 207
#define BUILTIN (UPSTREAM + 1)

static void test_builtin_counts(void)
{
    CHECK(ds_builtin_model_config_count == BUILTIN);
    size_t converters = 0, extra = 0, quant = 0;
    for (size_t i = 0; i < ds_builtin_model_config_count; i++) {
        const ds_model_config *c = &ds_builtin_model_configs[i];
        converters += c->state_dict_converter != NULL;
        extra += c->extra_kwargs_json != NULL;
        quant += c->quant_config_json != NULL;
        CHECK_STR_EQ(c->source, "builtin");
        CHECK(strlen(c->model_hash) == 32);
        CHECK(strncmp(c->model_class, "diffsynth.models.", 17) == 0);
    }
    CHECK(converters == 128 + 1);
    CHECK(extra == 76 + 1);
    CHECK(quant == 15);
}

static void test_distinct_and_shared_hashes(void)
{
    ds_config_table *table = NULL;
    ds_error err = {0};
    REQUIRE(ds_config_table_new(&table, &err) == DS_OK);
    CHECK(ds_config_table_count(table) == BUILTIN);
    size_t distinct = 0, shared = 0, biggest = 0, in_shared = 0;
    for (size_t i = 0; i < ds_config_table_count(table); i++) {
        const ds_model_config *c = ds_config_table_at(table, i);
        const ds_model_config *m[8];
        size_t n = ds_config_table_match(table, c->model_hash, m, 8);
        REQUIRE(n >= 1 && n <= 8);
        /* The first match is the first entry with this hash: count each hash once. */
        if (m[0] != c)
            continue;
        distinct++;
        if (n > 1) {
            shared++;
            in_shared += n;
        }
        if (n > biggest)
            biggest = n;
        for (size_t k = 1; k < n; k++)
            CHECK(m[k] > m[k - 1]);
    }
    CHECK(distinct == 169 + 1);
    CHECK(shared == 18);
    CHECK(biggest == 7);
    /* Upstream's 207 entries over 169 hashes: the 18 shared hashes hold 207 - (169 - 18)
     * entries; the added row has a hash of its own. */
    CHECK(in_shared == 207 - (169 - 18));
    CHECK(ds_config_table_at(table, BUILTIN) == NULL);
    ds_config_table_free(table);
}

typedef struct expected {
    const char *hash, *name, *cls, *converter, *extra;
} expected;

static void check_entry(const ds_model_config *c, const expected *e)
{
    CHECK_STR_EQ(c->model_hash, e->hash);
    CHECK_STR_EQ(c->model_name, e->name);
    CHECK_STR_EQ(c->model_class, e->cls);
    if (e->converter)
        CHECK_STR_EQ(c->state_dict_converter, e->converter);
    else
        CHECK(c->state_dict_converter == NULL);
    if (e->extra)
        CHECK_STR_EQ(c->extra_kwargs_json, e->extra);
    else
        CHECK(c->extra_kwargs_json == NULL);
    CHECK(c->quant_config_json == NULL);
}

#define M "diffsynth.models."
#define C "diffsynth.utils.state_dict_converters."

static void test_qwen_image_series(void)
{
    static const expected rows[12] = {
        {"0319a1cb19835fb510907dd3367c95ff", "qwen_image_dit", M "qwen_image_dit.QwenImageDiT",
         NULL, NULL},
        {"8004730443f55db63092006dd9f7110e", "qwen_image_text_encoder",
         M "qwen_image_text_encoder.QwenImageTextEncoder",
         C "qwen_image_text_encoder.QwenImageTextEncoderStateDictConverter", NULL},
        {"ed4ea5824d55ec3107b09815e318123a", "qwen_image_vae", M "qwen_image_vae.QwenImageVAE",
         NULL, NULL},
        {"073bce9cf969e317e5662cd570c3e79c", "qwen_image_blockwise_controlnet",
         M "qwen_image_controlnet.QwenImageBlockWiseControlNet", NULL, NULL},
        {"a9e54e480a628f0b956a688a81c33bab", "qwen_image_blockwise_controlnet",
         M "qwen_image_controlnet.QwenImageBlockWiseControlNet", NULL,
         "{\"additional_in_dim\": 4}"},
        {"469c78b61e3e31bc9eec0d0af3d3f2f8", "siglip2_image_encoder",
         M "siglip2_image_encoder.Siglip2ImageEncoder", NULL, NULL},
        {"5722b5c873720009de96422993b15682", "dinov3_image_encoder",
         M "dinov3_image_encoder.DINOv3ImageEncoder", C "dino_v3.DINOv3StateDictConverter", NULL},
        {"a166c33455cdbd89c0888a3645ca5c0f", "qwen_image_image2lora_coarse",
         M "qwen_image_image2lora.QwenImageImage2LoRAModel", NULL, NULL},
        {"a5476e691767a4da6d3a6634a10f7408", "qwen_image_image2lora_fine",
         M "qwen_image_image2lora.QwenImageImage2LoRAModel", NULL,
         "{\"residual_length\": 1376, \"residual_mid_dim\": 64}"},
        {"0aad514690602ecaff932c701cb4b0bb", "qwen_image_image2lora_style",
         M "qwen_image_image2lora.QwenImageImage2LoRAModel", NULL,
         "{\"compress_dim\": 64, \"use_residual\": false}"},
        {"8dc8cda05de16c73afa755e2c1ce2839", "qwen_image_dit", M "qwen_image_dit.QwenImageDiT",
         NULL, "{\"use_layer3d_rope\": true, \"use_additional_t_cond\": true}"},
        {"44b39ddc499e027cfb24f7878d7416b9", "qwen_image_vae", M "qwen_image_vae.QwenImageVAE",
         NULL, "{\"image_channels\": 4}"},
    };
    for (size_t i = 0; i < 12; i++)
        check_entry(&ds_builtin_model_configs[QWEN_FIRST + i], &rows[i]);
}

static void test_wan_and_flux_spot_checks(void)
{
    static const expected wan_t2v_1_3b = {
        "9269f8db9040a9d860eaca435be61814", "wan_video_dit", M "wan_video_dit.WanModel", NULL,
        "{\"has_image_input\": false, \"patch_size\": [1, 2, 2], \"in_dim\": 16, \"dim\": 1536, "
        "\"ffn_dim\": 8960, \"freq_dim\": 256, \"text_dim\": 4096, \"out_dim\": 16, "
        "\"num_heads\": 12, \"num_layers\": 30, \"eps\": 1e-06}"};
    check_entry(&ds_builtin_model_configs[WAN_FIRST + 9], &wan_t2v_1_3b);
    /* The added Diffusers-layout row: the same model and kwargs, read through the rename
     * table; its hash is that of diffusers' own key set (tests/data/keylists). */
    expected diffusers = wan_t2v_1_3b;
    diffusers.hash = "b0a133b5687c7d054175e5bfa66ef5fd";
    diffusers.converter = C "wan_video_dit.WanVideoDiTFromDiffusers";
    check_entry(&ds_builtin_model_configs[UPSTREAM], &diffusers);
    /* Tuples in upstream's literal become JSON lists. */
    const ds_model_config *vace = &ds_builtin_model_configs[WAN_FIRST + 23];
    CHECK_STR_EQ(vace->model_hash, "7a513e1f257a861512b1afd387a8ecd9");
    CHECK_STR_EQ(vace->model_name, "wan_video_vace");
    CHECK_STR_EQ(vace->extra_kwargs_json,
                 "{\"vace_layers\": [0, 5, 10, 15, 20, 25, 30, 35], \"vace_in_dim\": 96, "
                 "\"patch_size\": [1, 2, 2], \"has_image_input\": false, \"dim\": 5120, "
                 "\"num_heads\": 40, \"ffn_dim\": 13824, \"eps\": 1e-06}");
    const ds_model_config *flux = &ds_builtin_model_configs[FLUX_FIRST];
    CHECK_STR_EQ(flux->model_hash, "a29710fea6dddb0314663ee823598e50");
    CHECK_STR_EQ(flux->model_name, "flux_dit");
    CHECK_STR_EQ(flux->state_dict_converter, C "flux_dit.FluxDiTStateDictConverter");
    const ds_model_config *step1x = &ds_builtin_model_configs[FLUX_FIRST + 26];
    CHECK_STR_EQ(step1x->extra_kwargs_json, "{\"disable_guidance_embedder\": true}");
}

static void test_flux_ae_matches_encoder_then_decoder(void)
{
    ds_config_table *table = NULL;
    ds_error err = {0};
    REQUIRE(ds_config_table_new(&table, &err) == DS_OK);
    const ds_model_config *m[4];
    size_t n = ds_config_table_match(table, "21ea55f476dfc4fd135587abb59dfe5d", m, 4);
    REQUIRE(n == 2);
    CHECK_STR_EQ(m[0]->model_name, "flux_vae_encoder");
    CHECK_STR_EQ(m[0]->model_class, M "flux_vae.FluxVAEEncoder");
    CHECK_STR_EQ(m[0]->state_dict_converter, C "flux_vae.FluxVAEEncoderStateDictConverter");
    CHECK_STR_EQ(m[1]->model_name, "flux_vae_decoder");
    CHECK_STR_EQ(m[1]->model_class, M "flux_vae.FluxVAEDecoder");
    /* A short out array still reports how many matched. */
    CHECK(ds_config_table_match(table, "21ea55f476dfc4fd135587abb59dfe5d", m, 1) == 2);
    CHECK(m[0] == ds_config_table_at(table, FLUX_FIRST + 5));
    /* CLIP text encoder: shared by stable_diffusion_text_encoder (earlier) and flux. */
    n = ds_config_table_match(table, "94eefa3dac9cec93cb1ebaf1747d7b78", m, 4);
    REQUIRE(n == 2);
    CHECK_STR_EQ(m[0]->model_name, "stable_diffusion_text_encoder");
    CHECK_STR_EQ(m[1]->model_name, "flux_text_encoder_clip");
    CHECK(ds_config_table_match(table, "00000000000000000000000000000000", m, 4) == 0);
    CHECK(ds_config_table_match(table, "0319a1cb19835fb510907dd3367c95f", m, 4) == 0);
    CHECK(ds_config_table_match(table, "0319a1cb19835fb510907dd3367c95ffx", m, 4) == 0);
    CHECK(ds_config_table_match(table, "0319a1cb19835fb510907dd3367c95ff", m, 4) == 1);
    ds_config_table_free(table);
}

static const char good_json[] =
    "[{\"model_hash\": \"0123456789abcdef0123456789abcdef\", \"model_name\": \"my_dit\",\n"
    "  \"model_class\": \"diffsynth.models.qwen_image_dit.QwenImageDiT\",\n"
    "  \"extra_kwargs\": {\"num_layers\": 2, \"eps\": 1e-06, \"dims\": [1, 2], \"z\": null}},\n"
    " {\"model_hash\": \"21ea55f476dfc4fd135587abb59dfe5d\", \"model_name\": \"my_vae\",\n"
    "  \"model_class\": \"diffsynth.models.flux_vae.FluxVAEDecoder\",\n"
    "  \"state_dict_converter\": \"my.Converter\",\n"
    "  \"quant_config\": {\"method\": \"x\", \"load_prequantized\": true}}]";

static void test_runtime_add(void)
{
    ds_config_table *table = NULL;
    ds_error err = {0};
    REQUIRE(ds_config_table_new(&table, &err) == DS_OK);
    REQUIRE(ds_config_table_add_json(table, good_json, strlen(good_json), "mine.json", &err) ==
            DS_OK);
    CHECK(ds_config_table_count(table) == BUILTIN + 2);
    const ds_model_config *c = ds_config_table_at(table, BUILTIN);
    REQUIRE(c);
    CHECK_STR_EQ(c->model_name, "my_dit");
    CHECK_STR_EQ(c->source, "mine.json");
    CHECK(c->state_dict_converter == NULL && c->quant_config_json == NULL);
    CHECK_STR_EQ(c->extra_kwargs_json,
                 "{\"num_layers\":2,\"eps\":9.9999999999999995e-7,\"dims\":[1,2],\"z\":null}");
    const ds_model_config *m[4];
    CHECK(ds_config_table_match(table, "0123456789abcdef0123456789abcdef", m, 4) == 1 && m[0] == c);
    /* A runtime entry joins the builtin ones with its hash, after them. */
    REQUIRE(ds_config_table_match(table, "21ea55f476dfc4fd135587abb59dfe5d", m, 4) == 3);
    CHECK_STR_EQ(m[0]->model_name, "flux_vae_encoder");
    CHECK_STR_EQ(m[1]->model_name, "flux_vae_decoder");
    CHECK_STR_EQ(m[2]->model_name, "my_vae");
    CHECK_STR_EQ(m[2]->state_dict_converter, "my.Converter");
    CHECK_STR_EQ(m[2]->quant_config_json, "{\"method\":\"x\",\"load_prequantized\":true}");

    /* Enough entries to grow the storage and the hash index; every one stays findable. */
    char *big = malloc(400 * 200);
    REQUIRE(big);
    size_t len = 0;
    big[len++] = '[';
    for (int i = 0; i < 400; i++)
        len += (size_t)sprintf(big + len,
                               "%s{\"model_hash\":\"%032x\",\"model_name\":\"n%d\","
                               "\"model_class\":\"c\"}",
                               i ? "," : "", i + 1, i);
    big[len++] = ']';
    CHECK(ds_config_table_add_json(table, big, len, "big.json", &err) == DS_OK);
    free(big);
    CHECK(ds_config_table_count(table) == BUILTIN + 2 + 400);
    for (int i = 0; i < 400; i++) {
        char hash[33];
        snprintf(hash, sizeof hash, "%032x", i + 1);
        char name[16];
        snprintf(name, sizeof name, "n%d", i);
        if (ds_config_table_match(table, hash, m, 4) != 1 || strcmp(m[0]->model_name, name)) {
            CHECK_MSG(0, "runtime entry %d not found", i);
            break;
        }
    }
    CHECK(ds_config_table_match(table, "0319a1cb19835fb510907dd3367c95ff", m, 4) == 1);
    ds_config_table_free(table);
}

/* Each bad file: the exact message, INVALID_ARGUMENT, and the table unchanged. */
static void check_bad(ds_config_table *table, const char *json, const char *message)
{
    ds_error err = {0};
    size_t before = ds_config_table_count(table);
    CHECK(ds_config_table_add_json(table, json, strlen(json), "configs.json", &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK(err.code == DS_ERR_INVALID_ARGUMENT);
    CHECK_STR_EQ(err.message, message);
    CHECK(ds_config_table_count(table) == before);
}

#define OK_ENTRY "{\"model_hash\":\"0123456789abcdef0123456789abcdef\",\"model_name\":\"a\",\"model_class\":\"b\"}"

static void test_runtime_errors(void)
{
    ds_config_table *table = NULL;
    ds_error err = {0};
    REQUIRE(ds_config_table_new(&table, &err) == DS_OK);
    check_bad(table,
              "[" OK_ENTRY "," OK_ENTRY "," OK_ENTRY ","
              "{\"model_hash\":\"xyz\",\"model_name\":\"a\",\"model_class\":\"b\"}]",
              "configs.json: entry 3: \"model_hash\" must be 32 lowercase hex digits, got \"xyz\"");
    check_bad(table, "[{\"model_hash\":\"0123456789ABCDEF0123456789abcdef\",\"model_name\":\"a\","
                     "\"model_class\":\"b\"}]",
              "configs.json: entry 0: \"model_hash\" must be 32 lowercase hex digits, got "
              "\"0123456789ABCDEF0123456789abcdef\"");
    check_bad(table, "[" OK_ENTRY ",{\"model_hash\":\"0123456789abcdef0123456789abcdef\","
                     "\"model_class\":\"b\"}]",
              "configs.json: entry 1: missing required key \"model_name\"");
    check_bad(table, "[{\"model_hash\":\"0123456789abcdef0123456789abcdef\",\"model_name\":\"a\","
                     "\"model_class\":\"b\",\"extra_kwarg\":{}}]",
              "configs.json: entry 0: unknown key \"extra_kwarg\" (expected model_hash, "
              "model_name, model_class, state_dict_converter, extra_kwargs, quant_config)");
    check_bad(table, "[{\"model_hash\":\"0123456789abcdef0123456789abcdef\",\"model_name\":7,"
                     "\"model_class\":\"b\"}]",
              "configs.json: entry 0: \"model_name\" must be a string, got integer");
    check_bad(table, "[{\"model_hash\":\"0123456789abcdef0123456789abcdef\",\"model_name\":\"a\","
                     "\"model_class\":[\"b\"]}]",
              "configs.json: entry 0: \"model_class\" must be a string, got array");
    check_bad(table, "[{\"model_hash\":\"0123456789abcdef0123456789abcdef\",\"model_name\":\"a\","
                     "\"model_class\":\"b\",\"state_dict_converter\":null}]",
              "configs.json: entry 0: \"state_dict_converter\" must be a string, got null");
    check_bad(table, "[{\"model_hash\":\"0123456789abcdef0123456789abcdef\",\"model_name\":\"a\","
                     "\"model_class\":\"b\",\"extra_kwargs\":[1]}]",
              "configs.json: entry 0: \"extra_kwargs\" must be an object, got array");
    check_bad(table, "[" OK_ENTRY ",{\"model_hash\":\"0123456789abcdef0123456789abcdef\","
                     "\"model_name\":\"a\",\"model_class\":\"b\",\"quant_config\":\"nf4\"}]",
              "configs.json: entry 1: \"quant_config\" must be an object, got string");
    check_bad(table, "[" OK_ENTRY ",5]", "configs.json: entry 1: expected an object, got integer");
    check_bad(table, "{\"model_hash\":\"0123456789abcdef0123456789abcdef\"}",
              "configs.json: expected a JSON array of config objects, got object");
    ds_error e2 = {0};
    CHECK(ds_config_table_add_json(table, "[" OK_ENTRY ",", 2 + strlen(OK_ENTRY), "configs.json",
                                   &e2) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(e2.message, "configs.json: line 1 column");
    CHECK(ds_config_table_count(table) == BUILTIN);
    ds_config_table_free(table);
}

static void test_add_file(void)
{
    char dir[] = "/tmp/test_model_configs.XXXXXX";
    REQUIRE(mkdtemp(dir));
    char path[512];
    snprintf(path, sizeof path, "%s/configs.json", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs(good_json, f);
    fclose(f);

    ds_config_table *table = NULL;
    ds_error err = {0};
    REQUIRE(ds_config_table_new(&table, &err) == DS_OK);
    CHECK(ds_config_table_add_file(table, path, &err) == DS_OK);
    CHECK(ds_config_table_count(table) == BUILTIN + 2);
    CHECK_STR_EQ(ds_config_table_at(table, BUILTIN + 1)->source, path);

    f = fopen(path, "w");
    REQUIRE(f);
    fputs("[" OK_ENTRY ",{\"model_hash\":\"xyz\",\"model_name\":\"a\",\"model_class\":\"b\"}]", f);
    fclose(f);
    CHECK(ds_config_table_add_file(table, path, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "/configs.json: entry 1: \"model_hash\" must be 32 lowercase");
    CHECK(ds_config_table_count(table) == BUILTIN + 2);
    unlink(path);

    CHECK(ds_config_table_add_file(table, path, &err) == DS_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.message, path);
    CHECK(ds_config_table_add_file(table, dir, &err) == DS_ERR_INVALID_ARGUMENT);
    rmdir(dir);
    ds_config_table_free(table);
}

int main(void)
{
    RUN(test_builtin_counts);
    RUN(test_distinct_and_shared_hashes);
    RUN(test_qwen_image_series);
    RUN(test_wan_and_flux_spot_checks);
    RUN(test_flux_ae_matches_encoder_then_decoder);
    RUN(test_runtime_add);
    RUN(test_runtime_errors);
    RUN(test_add_file);
    return test_summary();
}
