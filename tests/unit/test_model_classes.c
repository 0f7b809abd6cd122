/* Model classes against upstream: every implemented config without a converter must declare
 * a tree whose DiffSynth hash is the config's model_hash; the text encoder's tree must equal
 * the real checkpoint's key list after upstream's converter. */
#include <stdlib.h>
#include <string.h>

#include "core/model_configs.h"
#include "core/model_hash.h"
#include "models/model_loader.h"
#include "test.h"
#include "tools/keylist.h"

#define TE_CLASS "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder"
#define TE_CONVERTER                                                                          \
    "diffsynth.utils.state_dict_converters.qwen_image_text_encoder."                          \
    "QwenImageTextEncoderStateDictConverter"
#define WAN_TE_CLASS "diffsynth.models.wan_video_text_encoder.WanTextEncoder"
#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"
#define VAE_CLASS "diffsynth.models.qwen_image_vae.QwenImageVAE"
#define WAN_CLASS "diffsynth.models.wan_video_dit.WanModel"
#define VACE_CLASS "diffsynth.models.wan_video_vace.VaceWanModel"
#define CONTROLNET_CLASS "diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet"

static char *data_path(const char *rel)
{
    const char *root = getenv("DS_TEST_DATA");
    char *path = NULL;
    if (asprintf(&path, "%s/%s", root ? root : "tests/data", rel) < 0)
        return NULL;
    return path;
}

/* Declares cls with kwargs; returns the status, the tree in *tree (caller frees). */
static int declare(const char *cls_name, const char *kwargs, ds_state_dict *tree, ds_error *err)
{
    ds_state_dict_init(tree);
    ds_error_clear(err);
    const ds_model_class *cls = ds_model_class_find(cls_name);
    if (!cls)
        return DS_ERR_NOT_FOUND;
    return ds_model_class_declare(cls, kwargs, tree, err);
}

/* Upstream's qwen_image table rows 0, 2, 3, 4, 10, 11 and the Wan text encoder's row are the
 * implemented configs without a converter; their hashes are upstream's, not ours. */
static void test_verify_builtin_configs(void)
{
    static const char *const expected[] = {
        "0319a1cb19835fb510907dd3367c95ff", "ed4ea5824d55ec3107b09815e318123a",
        "073bce9cf969e317e5662cd570c3e79c", "a9e54e480a628f0b956a688a81c33bab",
        "8dc8cda05de16c73afa755e2c1ce2839", "44b39ddc499e027cfb24f7878d7416b9",
        "9c8818c2cbea55eca56c7b447df170da",
    };
    enum { N = sizeof expected / sizeof expected[0] };
    int seen[N] = {0};
    size_t verified = 0;
    for (size_t i = 0; i < ds_builtin_model_config_count; i++) {
        const ds_model_config *c = &ds_builtin_model_configs[i];
        /* WanModel's rows have a test of their own (test_wan_model_rows). */
        if (!ds_config_is_implemented(c) || c->state_dict_converter ||
            strcmp(c->model_class, WAN_CLASS) == 0)
            continue;
        char computed[DS_MODEL_HASH_HEX];
        ds_error err;
        ds_error_clear(&err);
        ds_verify_result r = ds_config_verify(c, computed, &err);
        CHECK_MSG(r == DS_VERIFY_MATCH, "%s %s: result %d, computed %s, expected %s (%s)",
                  c->model_name, c->extra_kwargs_json ? c->extra_kwargs_json : "null", r,
                  computed, c->model_hash, err.message);
        for (int k = 0; k < N; k++)
            if (strcmp(c->model_hash, expected[k]) == 0)
                seen[k]++;
        verified++;
    }
    CHECK_MSG(verified == N, "verified %zu configs", verified);
    for (int k = 0; k < N; k++)
        CHECK_MSG(seen[k] == 1, "%s seen %d times", expected[k], seen[k]);
}

static void test_verify_not_applicable(void)
{
    char computed[DS_MODEL_HASH_HEX];
    ds_error err;
    for (size_t i = 0; i < ds_builtin_model_config_count; i++) {
        const ds_model_config *c = &ds_builtin_model_configs[i];
        if (strcmp(c->model_name, "qwen_image_text_encoder") == 0 ||
            (strcmp(c->model_name, "wan_video_dit") == 0 &&
             (c->state_dict_converter || strcmp(c->model_class, WAN_CLASS) != 0))) {
            CHECK(ds_config_verify(c, computed, &err) == DS_VERIFY_NOT_APPLICABLE);
            CHECK_STR_EQ(computed, "");
        }
    }
}

/* Counts from the facts file (each verified against upstream). */
static void test_tree_sizes(void)
{
    static const struct {
        const char *cls, *kwargs;
        size_t tensors;
        uint64_t params;
    } cases[] = {
        {DIT_CLASS, NULL, 1933, 20430401088ull},
        {DIT_CLASS, "{\"use_layer3d_rope\": true, \"use_additional_t_cond\": true}", 1934,
         20430401088ull + 2 * 3072},
        {VAE_CLASS, NULL, 194, 126892531ull},
        /* Counted with upstream's VaceWanModel on the meta device: the class defaults (1.3B)
         * and the Wan2.1-VACE-14B row. */
        {VACE_CLASS, NULL, 439, 734975232ull},
        {VACE_CLASS,
         "{\"vace_layers\": [0, 5, 10, 15, 20, 25, 30, 35], \"vace_in_dim\": 96, \"patch_size\": "
         "[1, 2, 2], \"has_image_input\": false, \"dim\": 5120, \"num_heads\": 40, "
         "\"ffn_dim\": 13824, \"eps\": 1e-06}",
         236, 3049101312ull},
        {TE_CLASS, NULL, 729, 8292166656ull},
        /* Facts §1.3: 5.68 B, the embedding 1.05 B of it. */
        {WAN_TE_CLASS, NULL, 242, 5680910336ull},
        {WAN_TE_CLASS, "{\"vocab\": 700, \"num_layers\": 2}", 22,
         700ull * 4096 + 2 * 192948224ull + 4096},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ds_state_dict tree;
        ds_error err;
        REQUIRE(declare(cases[i].cls, cases[i].kwargs, &tree, &err) == DS_OK);
        CHECK_MSG(tree.count == cases[i].tensors, "%s: %zu tensors", cases[i].cls, tree.count);
        CHECK_MSG(ds_state_dict_parameter_count(&tree) == cases[i].params, "%s: %llu params",
                  cases[i].cls, (unsigned long long)ds_state_dict_parameter_count(&tree));
        for (size_t k = 0; k < tree.count; k++)
            CHECK(tree.entries[k].tensor.dtype == DS_F32 && !tree.entries[k].tensor.data);
        ds_state_dict_free(&tree);
    }
}

/* Upstream registers a block's modules in this order (qwen_image_dit.py); the first names
 * must follow it, whatever the hash (which sorts) says. */
static void test_dit_module_order(void)
{
    ds_state_dict tree;
    ds_error err;
    REQUIRE(declare(DIT_CLASS, "{\"num_layers\": 1}", &tree, &err) == DS_OK);
    static const char *const first[] = {
        "time_text_embed.timestep_embedder.linear_1.weight",
        "time_text_embed.timestep_embedder.linear_1.bias",
        "time_text_embed.timestep_embedder.linear_2.weight",
        "time_text_embed.timestep_embedder.linear_2.bias",
        "txt_norm.weight",
        "img_in.weight",
        "img_in.bias",
        "txt_in.weight",
        "txt_in.bias",
        "transformer_blocks.0.img_mod.1.weight",
        "transformer_blocks.0.img_mod.1.bias",
        "transformer_blocks.0.attn.to_q.weight",
    };
    REQUIRE(tree.count == 13 + 32);
    for (size_t i = 0; i < sizeof first / sizeof first[0]; i++)
        CHECK_STR_EQ(tree.entries[i].name, first[i]);
    CHECK_STR_EQ(tree.entries[tree.count - 1].name, "proj_out.bias");
    ds_state_dict_free(&tree);
}

/* Spelling out every default must give upstream's hash too: the list kwargs are read, not
 * ignored. */
static void test_vae_explicit_defaults(void)
{
    ds_state_dict tree;
    ds_error err;
    REQUIRE(declare(VAE_CLASS,
                    "{\"base_dim\": 96, \"z_dim\": 16, \"dim_mult\": [1, 2, 4, 4], "
                    "\"num_res_blocks\": 2, \"attn_scales\": [], "
                    "\"temperal_downsample\": [0, 1, 1], \"dropout\": 0.0, "
                    "\"image_channels\": 3}",
                    &tree, &err) == DS_OK);
    char hash[DS_MODEL_HASH_HEX];
    REQUIRE(ds_model_hash(&tree, hash) == DS_OK);
    CHECK_STR_EQ(hash, "ed4ea5824d55ec3107b09815e318123a");
    ds_state_dict_free(&tree);

    /* A different temporal pattern changes only which resamplers have a time_conv. */
    REQUIRE(declare(VAE_CLASS, "{\"temperal_downsample\": [0, 0, 0]}", &tree, &err) == DS_OK);
    CHECK(tree.count == 194 - 8); /* two encoder, two decoder time_convs */
    CHECK(!ds_state_dict_find(&tree, "encoder.down_blocks.5.time_conv.weight"));
    CHECK(ds_state_dict_find(&tree, "encoder.down_blocks.5.resample.1.weight"));
    ds_state_dict_free(&tree);
}

static void test_kwargs_errors(void)
{
    ds_state_dict tree;
    ds_error err;
    CHECK(declare(DIT_CLASS, "{\"num_layers\": 2, \"num_heads\": 24}", &tree, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "unexpected keyword argument 'num_heads'");
    CHECK(tree.count == 0);
    ds_state_dict_free(&tree);

    CHECK(declare(DIT_CLASS, "{\"num_layers\": \"60\"}", &tree, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "num_layers");
    CHECK(declare(DIT_CLASS, "{\"use_layer3d_rope\": 1}", &tree, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "use_layer3d_rope");
    CHECK(declare(DIT_CLASS, "{\"num_layers\": -1}", &tree, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "num_layers");
    CHECK(declare(CONTROLNET_CLASS, "{\"dim\": 0}", &tree, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "dim");
    CHECK(declare(CONTROLNET_CLASS, "{\"dim\": 4611686018427387904}", &tree, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK(declare(TE_CLASS, "{\"hidden_size\": 3584}", &tree, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "unexpected keyword argument 'hidden_size'");
    CHECK(declare(TE_CLASS, "{\"num_hidden_layers\": 0}", &tree, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "num_hidden_layers");
    CHECK(declare(TE_CLASS, "{\"num_hidden_layers\": 29}", &tree, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK(declare(VAE_CLASS, "{\"dim_mult\": []}", &tree, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "dim_mult");
    CHECK(declare(VAE_CLASS, "{\"temperal_downsample\": [0]}", &tree, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "temperal_downsample");
    CHECK(declare(VAE_CLASS, "{\"dim_mult\": [1, 0, 4, 4]}", &tree, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK(declare(VAE_CLASS, "{\"base_dim\": 16777216, \"dim_mult\": [1, 2, 4, 4]}", &tree,
                  &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(declare(VAE_CLASS, "[1, 2]", &tree, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(tree.count == 0);
    ds_state_dict_free(&tree);
}

/* Our text encoder takes num_hidden_layers (reduced configs for tests and the demo): each layer
 * is 12 tensors, the default is the released 28. */
static void test_text_encoder_depth(void)
{
    ds_state_dict full, one;
    ds_error err;
    REQUIRE(declare(TE_CLASS, NULL, &full, &err) == DS_OK);
    REQUIRE(declare(TE_CLASS, "{\"num_hidden_layers\": 1}", &one, &err) == DS_OK);
    CHECK(full.count - one.count == 27 * 12);
    CHECK(ds_state_dict_find(&one, "model.language_model.layers.0.mlp.up_proj.weight") != NULL);
    CHECK(ds_state_dict_find(&one, "model.language_model.layers.1.mlp.up_proj.weight") == NULL);
    CHECK(ds_state_dict_find(&one, "lm_head.weight") != NULL);
    ds_state_dict_free(&full);
    ds_state_dict_free(&one);
}

/* A list exactly as long as the class reads must count as given, one longer is refused. */
static void test_vae_list_capacity(void)
{
    ds_state_dict tree;
    ds_error err;
    CHECK(declare(VAE_CLASS,
                  "{\"base_dim\": 4, \"dim_mult\": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1], "
                  "\"temperal_downsample\": [0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}",
                  &tree, &err) == DS_OK);
    CHECK(ds_state_dict_find(&tree, "encoder.down_blocks.46.conv2.weight") != NULL);
    CHECK(ds_state_dict_find(&tree, "decoder.up_blocks.15.resnets.2.conv2.weight") != NULL);
    ds_state_dict_free(&tree);
    CHECK(declare(VAE_CLASS,
                  "{\"base_dim\": 4, \"dim_mult\": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1], "
                  "\"temperal_downsample\": [0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}",
                  &tree, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "dim_mult");
    ds_state_dict_free(&tree);
}

static void put_scalar_vector(ds_state_dict *sd, const char *name, int64_t n)
{
    ds_tensor_view v;
    ds_tensor_view_declare(&v, DS_F32, 1, &n);
    ds_state_dict_put_tensor(sd, name, &v);
}

/* Upstream's converter uses str.replace, which rewrites every "model." in a key. */
static void test_text_encoder_replace_semantics(void)
{
    const ds_converter *conv = ds_converter_find(TE_CONVERTER);
    REQUIRE(conv);
    CHECK(conv->rename_only == 1);
    ds_state_dict in, out;
    ds_state_dict_init(&in);
    ds_state_dict_init(&out);
    put_scalar_vector(&in, "model.layers.0.model.x", 1);
    put_scalar_vector(&in, "visual.model.y", 2);
    put_scalar_vector(&in, "lm_head.weight", 3);
    put_scalar_vector(&in, "other.model.z", 4);
    put_scalar_vector(&in, "model.model.model.", 5);
    put_scalar_vector(&in, "submodel.w", 6);
    ds_state_dict *child = ds_state_dict_new();
    put_scalar_vector(child, "inner", 7);
    ds_state_dict_put_dict(&in, "model.nested", child);
    ds_error err;
    REQUIRE(conv->convert(&in, &out, &err) == DS_OK);
    static const char *const expected[] = {
        "model.language_model.layers.0.model.language_model.x",
        "model.visual.model.y",
        "lm_head.weight",
        "other.model.z",
        "model.language_model.model.language_model.model.language_model.",
        "submodel.w",
        "model.language_model.nested",
    };
    REQUIRE(out.count == 7);
    for (size_t i = 0; i < out.count; i++) {
        CHECK_STR_EQ(out.entries[i].name, expected[i]);
        if (i < 6)
            CHECK(out.entries[i].tensor.shape[0] == (int64_t)i + 1);
    }
    CHECK(out.entries[6].dict && out.entries[6].dict->count == 1);
    ds_state_dict_free(&in);
    ds_state_dict_free(&out);
}

/* Upstream's Wan VAE converter: "model_state" unwrapped when there, every key under "model.". */
static void test_wan_video_vae_converter(void)
{
    const ds_converter *conv = ds_converter_find("diffsynth.utils.state_dict_converters."
                                                 "wan_video_vae.WanVideoVAEStateDictConverter");
    REQUIRE(conv);
    CHECK(conv->rename_only == 1);
    ds_state_dict in, out;
    ds_error err;
    ds_state_dict_init(&in);
    ds_state_dict_init(&out);
    /* A flat dict (the converted safetensors): renamed one to one, in order. */
    put_scalar_vector(&in, "encoder.conv1.weight", 1);
    put_scalar_vector(&in, "decoder.head.0.gamma", 2);
    REQUIRE(conv->convert(&in, &out, &err) == DS_OK);
    REQUIRE(out.count == 2);
    CHECK_STR_EQ(out.entries[0].name, "model.encoder.conv1.weight");
    CHECK_STR_EQ(out.entries[1].name, "model.decoder.head.0.gamma");
    CHECK(out.entries[1].tensor.shape[0] == 2);
    ds_state_dict_free(&in);
    ds_state_dict_free(&out);

    /* The original .pth: {"model_state": {...}}, the wrapper's siblings dropped. */
    ds_state_dict_init(&in);
    ds_state_dict_init(&out);
    put_scalar_vector(&in, "step", 3);
    ds_state_dict *child = ds_state_dict_new();
    REQUIRE(child);
    put_scalar_vector(child, "conv1.bias", 4);
    put_scalar_vector(child, "conv2.bias", 5);
    ds_state_dict_put_dict(&in, "model_state", child);
    REQUIRE(conv->convert(&in, &out, &err) == DS_OK);
    REQUIRE(out.count == 2);
    CHECK_STR_EQ(out.entries[0].name, "model.conv1.bias");
    CHECK_STR_EQ(out.entries[1].name, "model.conv2.bias");
    CHECK(out.entries[0].tensor.shape[0] == 4 && out.entries[1].tensor.shape[0] == 5);
    ds_state_dict_free(&in);
    ds_state_dict_free(&out);

    /* "model_state" as a tensor is no dict of weights. */
    ds_state_dict_init(&in);
    ds_state_dict_init(&out);
    put_scalar_vector(&in, "model_state", 6);
    CHECK(conv->convert(&in, &out, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"model_state\" is a tensor");
    ds_state_dict_free(&in);
    ds_state_dict_free(&out);
}

/* The raw Qwen2.5-VL-7B key list (hash = upstream's config row 1) converted by upstream's
 * converter must be exactly the class's tree. */
static void test_text_encoder_tree_equals_converted_checkpoint(void)
{
    char *path = data_path("keylists/qwen_image_text_encoder_raw.json");
    REQUIRE(path);
    ds_state_dict raw, converted, tree;
    ds_state_dict_init(&raw);
    ds_state_dict_init(&converted);
    ds_error err;
    int rc = ds_keylist_load(path, DS_BF16, &raw, &err);
    free(path);
    REQUIRE(rc == DS_OK);
    char hash[DS_MODEL_HASH_HEX];
    REQUIRE(ds_model_hash(&raw, hash) == DS_OK);
    CHECK_STR_EQ(hash, "8004730443f55db63092006dd9f7110e");

    const ds_converter *conv = ds_converter_find(TE_CONVERTER);
    REQUIRE(conv);
    REQUIRE(conv->convert(&raw, &converted, &err) == DS_OK);
    REQUIRE(declare(TE_CLASS, NULL, &tree, &err) == DS_OK);
    CHECK_MSG(converted.count == tree.count, "converted %zu, tree %zu", converted.count,
              tree.count);
    size_t mismatches = 0;
    for (size_t i = 0; i < converted.count; i++) {
        const ds_sd_entry *c = &converted.entries[i];
        const ds_sd_entry *t = ds_state_dict_find(&tree, c->name);
        int ok = t && t->tensor.ndim == c->tensor.ndim;
        for (int d = 0; ok && d < t->tensor.ndim; d++)
            ok = t->tensor.shape[d] == c->tensor.shape[d];
        if (!ok && mismatches++ < 5)
            fprintf(stderr, "  converted %s not in the tree with that shape\n", c->name);
    }
    CHECK(mismatches == 0);
    ds_state_dict_free(&raw);
    ds_state_dict_free(&converted);
    ds_state_dict_free(&tree);
}

/* Entries added at runtime go through the same checks: a depth that does not give the
 * recorded hash is a MISMATCH, kwargs the class refuses are an ERROR. */
static void test_verify_runtime_entries(void)
{
    ds_config_table *table = NULL;
    ds_error err;
    REQUIRE(ds_config_table_new(&table, &err) == DS_OK);
    static const char json[] =
        "[{\"model_hash\": \"0319a1cb19835fb510907dd3367c95ff\", \"model_name\": \"shallow\","
        "  \"model_class\": \"" DIT_CLASS "\", \"extra_kwargs\": {\"num_layers\": 2}},"
        " {\"model_hash\": \"0319a1cb19835fb510907dd3367c95ff\", \"model_name\": \"bogus\","
        "  \"model_class\": \"" DIT_CLASS "\", \"extra_kwargs\": {\"heads\": 2}}]";
    REQUIRE(ds_config_table_add_json(table, json, sizeof json - 1, "test", &err) == DS_OK);
    size_t n = ds_config_table_count(table);
    REQUIRE(n == ds_builtin_model_config_count + 2);
    char computed[DS_MODEL_HASH_HEX];
    CHECK(ds_config_verify(ds_config_table_at(table, n - 2), computed, &err) ==
          DS_VERIFY_MISMATCH);
    CHECK(strlen(computed) == 32 && strcmp(computed, "0319a1cb19835fb510907dd3367c95ff") != 0);
    ds_error_clear(&err);
    CHECK(ds_config_verify(ds_config_table_at(table, n - 1), computed, &err) == DS_VERIFY_ERROR);
    CHECK_CONTAINS(err.message, "unexpected keyword argument 'heads'");
    CHECK_STR_EQ(computed, "");
    ds_config_table_free(table);
}

/* WanTextEncoder takes its constructor's widths and depth, within UMT5-XXL's, and refuses
 * what upstream's class would not build or what its forward does not run. */
static void test_wan_text_encoder_kwargs(void)
{
    ds_state_dict tree;
    ds_error err;
    REQUIRE(declare(WAN_TE_CLASS,
                    "{\"vocab\": 32, \"dim\": 64, \"dim_attn\": 64, \"dim_ffn\": 160, "
                    "\"num_heads\": 4, \"num_layers\": 2}",
                    &tree, &err) == DS_OK);
    const ds_sd_entry *pos = ds_state_dict_find(&tree, "blocks.1.pos_embedding.embedding.weight");
    CHECK(tree.count == 22 && pos && pos->tensor.shape[0] == 32 && pos->tensor.shape[1] == 4);
    ds_state_dict_free(&tree);
    CHECK(declare(WAN_TE_CLASS, "{\"dim_attn\": 64, \"num_heads\": 5}", &tree, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "not a multiple of num_heads");
    CHECK(declare(WAN_TE_CLASS, "{\"num_layers\": 25}", &tree, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "num_layers");
    CHECK(declare(WAN_TE_CLASS, "{\"shared_pos\": true}", &tree, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "shared_pos");
}

/* Every WanModel row of the table: without a converter its tree hashes to the row's
 * model_hash (upstream's hashes, not ours); with one (the file holds more than the DiT) the
 * tree still declares; WanToDance's switches are refused by name. */
static void test_wan_model_rows(void)
{
    size_t verified = 0, converted = 0, refused = 0;
    for (size_t i = 0; i < ds_builtin_model_config_count; i++) {
        const ds_model_config *c = &ds_builtin_model_configs[i];
        if (strcmp(c->model_class, WAN_CLASS) != 0)
            continue;
        char computed[DS_MODEL_HASH_HEX];
        ds_error err;
        ds_error_clear(&err);
        if (c->extra_kwargs_json &&
            strstr(c->extra_kwargs_json, "\"wantodance_enable_global\": true")) {
            CHECK(ds_config_verify(c, computed, &err) == DS_VERIFY_NOT_APPLICABLE);
            CHECK(err.code == DS_ERR_UNIMPLEMENTED);
            CHECK_MSG(strstr(err.message, "wantodance_enable_music_inject") != NULL, "%s",
                      err.message);
            refused++;
        } else if (c->state_dict_converter) {
            ds_state_dict tree;
            CHECK_MSG(declare(WAN_CLASS, c->extra_kwargs_json, &tree, &err) == DS_OK, "%s: %s",
                      c->model_hash, err.message);
            ds_state_dict_free(&tree);
            converted++;
        } else {
            ds_verify_result r = ds_config_verify(c, computed, &err);
            CHECK_MSG(r == DS_VERIFY_MATCH, "%s %s: result %d, computed %s (%s)", c->model_hash,
                      c->extra_kwargs_json, r, computed, err.message);
            verified++;
        }
    }
    /* Rows 10-20, 27-29 and 31 of the facts table; 2, 6, 21, 23, 25 (and any row added
     * beyond upstream's table, such as a Diffusers layout) have converters; 34. */
    CHECK_MSG(verified == 15, "verified %zu WanModel rows", verified);
    CHECK_MSG(converted >= 5, "declared %zu converted WanModel rows", converted);
    CHECK_MSG(refused == 1, "refused %zu WanModel rows", refused);
}

/* Kwargs the class does not run are refused by name, never ignored. */
static void test_wan_model_kwargs(void)
{
    static const char *const base = "\"dim\": 64, \"in_dim\": 16, \"ffn_dim\": 128, "
                                     "\"out_dim\": 16, \"text_dim\": 32, \"freq_dim\": 256, "
                                     "\"eps\": 1e-06, \"num_heads\": 4, \"num_layers\": 1, "
                                     "\"has_image_input\": false";
    static const struct {
        const char *extra;
        int code;
        const char *needle;
    } cases[] = {
        {", \"patch_size\": [1, 2, 2]", DS_OK, NULL},
        {", \"patch_size\": [1, 4, 4]", DS_ERR_UNIMPLEMENTED, "patch_size"},
        {", \"patch_size\": [1, 2, 2], \"wantodance_enable_refface\": true",
         DS_ERR_UNIMPLEMENTED, "wantodance_enable_refface"},
        {", \"patch_size\": [1, 2, 2], \"wantodance_enable_refface\": false", DS_OK, NULL},
        {", \"patch_size\": [1, 2, 2], \"vace_layers\": [0]", DS_ERR_INVALID_ARGUMENT,
         "vace_layers"},
        {"", DS_ERR_INVALID_ARGUMENT, "patch_size"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char json[1024];
        snprintf(json, sizeof json, "{%s%s}", base, cases[i].extra);
        ds_state_dict tree;
        ds_error err;
        int rc = declare(WAN_CLASS, json, &tree, &err);
        CHECK_MSG(rc == cases[i].code, "%s: %d (%s)", cases[i].extra, rc, err.message);
        if (cases[i].needle)
            CHECK_MSG(strstr(err.message, cases[i].needle) != NULL, "%s", err.message);
        if (rc == DS_OK) {
            /* The inputs, one block (modulation, two attentions, norm3, FFN), the head. */
            CHECK_MSG(tree.count == 12 + 27 + 3, "%zu tensors", tree.count);
            ds_state_dict_free(&tree);
        }
    }
}

/* VACE layers the forward cannot run are refused at declaration. */
static void test_vace_kwargs(void)
{
    static const struct {
        const char *json;
        int code;
        const char *needle;
    } cases[] = {
        {"{\"vace_layers\": [2, 4]}", DS_ERR_UNIMPLEMENTED, "must start with 0"},
        {"{\"vace_layers\": [0, 4, 4]}", DS_ERR_INVALID_ARGUMENT, "must increase"},
        {"{\"has_image_input\": true}", DS_ERR_UNIMPLEMENTED, "has_image_input"},
        {"{\"num_layers\": 2}", DS_ERR_INVALID_ARGUMENT, "num_layers"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ds_state_dict tree;
        ds_error err;
        int rc = declare(VACE_CLASS, cases[i].json, &tree, &err);
        CHECK_MSG(rc == cases[i].code, "%s: %d (%s)", cases[i].json, rc, err.message);
        CHECK_MSG(strstr(err.message, cases[i].needle) != NULL, "%s", err.message);
    }
    /* The one block with before_proj is the first. */
    ds_state_dict tree;
    ds_error err;
    REQUIRE(declare(VACE_CLASS, NULL, &tree, &err) == DS_OK);
    CHECK(ds_state_dict_find(&tree, "vace_blocks.0.before_proj.weight") != NULL);
    CHECK(ds_state_dict_find(&tree, "vace_blocks.1.before_proj.weight") == NULL);
    CHECK(ds_state_dict_find(&tree, "vace_blocks.14.after_proj.bias") != NULL);
    ds_state_dict_free(&tree);
}

static void test_registry(void)
{
    /* One class per DS_MODEL line of the list, so that a new family changes no test here. */
    size_t listed = 0
#define DS_MODEL(stem, var) +1
#include "core/families.def"
        ;
    CHECK(ds_model_class_count == listed && listed >= 9);
    CHECK(ds_model_class_find(WAN_TE_CLASS) != NULL);
    CHECK(ds_model_class_find(VACE_CLASS) != NULL);
    CHECK(ds_model_class_find("diffsynth.models.wan_video_vae.WanVideoVAE") != NULL);
    CHECK(ds_model_class_find("diffsynth.models.wan_video_vae.WanVideoVAE38") != NULL);
    for (size_t i = 0; i < ds_model_class_count; i++)
        CHECK(ds_model_class_find(ds_model_classes[i]->name) == ds_model_classes[i]);
    CHECK(ds_model_class_find(WAN_CLASS) != NULL);
    CHECK(ds_model_class_find("QwenImageDiT") == NULL);
    CHECK(ds_converter_find(TE_CONVERTER) != NULL);
    /* Converters are found by upstream's full dotted path only. */
    CHECK(ds_converter_find("QwenImageTextEncoderStateDictConverter") == NULL);
}

int main(void)
{
    RUN(test_wan_text_encoder_kwargs);
    RUN(test_registry);
    RUN(test_wan_video_vae_converter);
    RUN(test_verify_builtin_configs);
    RUN(test_wan_model_rows);
    RUN(test_wan_model_kwargs);
    RUN(test_vace_kwargs);
    RUN(test_verify_not_applicable);
    RUN(test_verify_runtime_entries);
    RUN(test_tree_sizes);
    RUN(test_dit_module_order);
    RUN(test_vae_explicit_defaults);
    RUN(test_kwargs_errors);
    RUN(test_text_encoder_depth);
    RUN(test_vae_list_capacity);
    RUN(test_text_encoder_replace_semantics);
    RUN(test_text_encoder_tree_equals_converted_checkpoint);
    return test_summary();
}
