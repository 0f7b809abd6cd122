/* Identification and loading of full-size models, with header-only sparse safetensors built
 * from the real key lists: the hashes and names checked here are upstream's. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/model_configs.h"
#include "core/model_file.h"
#include "models/model_loader.h"
#include "test.h"
#include "tools/keylist.h"
#include "tools/safetensors_writer.h"

#define CONTROLNET_CLASS "diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet"

static char tmpdir[256];
static char *written[64];
static size_t written_count;
static ds_config_table *table;

/* Writes keylists/<stem>.json as `shards` sparse files named <serial>-<stem>... in tmpdir;
 * `edit`, when set, changes the list first. Returns the paths (borrowed; removed at exit). */
static char **make_model(const char *stem, ds_dtype dtype, int shards,
                         void (*edit)(ds_state_dict *), size_t *count)
{
    const char *data = getenv("DS_TEST_DATA");
    char list[512], out[512];
    snprintf(list, sizeof list, "%s/keylists/%s.json", data ? data : "tests/data", stem);
    static int serial;
    snprintf(out, sizeof out, "%s/%d-%s", tmpdir, serial++, stem);
    ds_state_dict sd;
    ds_state_dict_init(&sd);
    ds_error err;
    char **paths = NULL;
    *count = 0;
    if (ds_keylist_load(list, dtype, &sd, &err) != DS_OK) {
        fprintf(stderr, "%s\n", err.message);
        return NULL;
    }
    if (edit)
        edit(&sd);
    if (ds_st_write_model(out, &sd, shards, DS_ST_FILL_SPARSE, 0, &paths, count, &err) != DS_OK)
        fprintf(stderr, "%s\n", err.message);
    ds_state_dict_free(&sd);
    for (size_t i = 0; paths && i < *count && written_count < 64; i++)
        written[written_count++] = paths[i];
    free(paths);
    return *count ? &written[written_count - *count] : NULL;
}

static ds_model_files *open_files(char **paths, size_t count, int reversed)
{
    const char *order[16];
    for (size_t i = 0; i < count && i < 16; i++)
        order[i] = paths[reversed ? count - 1 - i : i];
    ds_model_files *files = NULL;
    ds_error err;
    if (ds_model_files_open(order, count, &files, &err) != DS_OK)
        fprintf(stderr, "open: %s\n", err.message);
    return files;
}

/* Identifies the files; checks the hash and the single matching config's name and class. */
static const ds_model_config *identify(char **paths, size_t count, int reversed,
                                       const char *hash, const char *name, const char *cls)
{
    ds_model_files *files = open_files(paths, count, reversed);
    if (!files)
        return NULL;
    ds_identification ident;
    ds_error err;
    const ds_model_config *config = NULL;
    if (ds_identify_files(table, files, &ident, &err) != DS_OK) {
        fprintf(stderr, "identify: %s\n", err.message);
        ds_model_files_close(files);
        return NULL;
    }
    CHECK_STR_EQ(ident.model_hash, hash);
    CHECK_MSG(ident.tensor_count == files->merged.count, "tensor_count %zu", ident.tensor_count);
    CHECK_MSG(ident.config_count == 1, "%s: %zu configs", hash, ident.config_count);
    if (ident.config_count >= 1) {
        config = ident.configs[0];
        CHECK_STR_EQ(config->model_name, name);
        CHECK_STR_EQ(config->model_class, cls);
    }
    ds_identification_free(&ident);
    ds_model_files_close(files);
    return config;
}

/* Loads config from freshly opened files and checks the counts of the bound tree. */
static void load_and_check(const ds_model_config *config, char **paths, size_t count,
                           size_t tensors, uint64_t params, ds_dtype dtype)
{
    ds_model_files *files = open_files(paths, count, 0);
    REQUIRE(files);
    ds_loaded_model *model = NULL;
    ds_error err;
    ds_error_clear(&err);
    int rc = ds_model_load(config, files, &model, &err);
    CHECK_MSG(rc == DS_OK, "%s: %s", config->model_name, err.message);
    if (rc != DS_OK) {
        ds_model_files_close(files);
        return;
    }
    CHECK(model->files == files);
    CHECK_STR_EQ(model->model_name, config->model_name);
    CHECK_STR_EQ(model->model_hash, config->model_hash);
    CHECK_MSG(model->tensor_count == tensors, "%zu tensors", model->tensor_count);
    CHECK_MSG(model->parameter_count == params, "%llu params",
              (unsigned long long)model->parameter_count);
    size_t bad = 0;
    for (size_t i = 0; i < model->params.count; i++) {
        const ds_tensor_view *v = &model->params.entries[i].tensor;
        if (!v->data || v->dtype != dtype || v->file_index < 0 || (size_t)v->file_index >= count ||
            v->nbytes != ds_tensor_view_numel(v) * ds_dtype_size(dtype))
            bad++;
    }
    CHECK_MSG(bad == 0, "%zu unbound or wrong views", bad);
    ds_loaded_model_free(model);
}

static void test_qwen_image_dit(void)
{
    size_t n;
    char **paths = make_model("qwen_image_dit", DS_BF16, 9, NULL, &n);
    REQUIRE(paths && n == 9);
    const ds_model_config *c = identify(paths, n, 0, "0319a1cb19835fb510907dd3367c95ff",
                                        "qwen_image_dit",
                                        "diffsynth.models.qwen_image_dit.QwenImageDiT");
    REQUIRE(c);
    CHECK(c->extra_kwargs_json == NULL && c->state_dict_converter == NULL);
    CHECK(identify(paths, n, 1, "0319a1cb19835fb510907dd3367c95ff", "qwen_image_dit",
                   "diffsynth.models.qwen_image_dit.QwenImageDiT") == c);
    load_and_check(c, paths, n, 1933, 20430401088ull, DS_BF16);
}

static void test_qwen_image_dit_layered(void)
{
    size_t n;
    char **paths = make_model("qwen_image_dit_layered", DS_BF16, 2, NULL, &n);
    REQUIRE(paths);
    const ds_model_config *c = identify(paths, n, 1, "8dc8cda05de16c73afa755e2c1ce2839",
                                        "qwen_image_dit",
                                        "diffsynth.models.qwen_image_dit.QwenImageDiT");
    REQUIRE(c);
    CHECK_CONTAINS(c->extra_kwargs_json, "use_additional_t_cond");
    load_and_check(c, paths, n, 1934, 20430401088ull + 2 * 3072, DS_BF16);
}

static void test_qwen_image_vae(void)
{
    size_t n;
    char **paths = make_model("qwen_image_vae", DS_F32, 1, NULL, &n);
    REQUIRE(paths && n == 1);
    const ds_model_config *c = identify(paths, n, 0, "ed4ea5824d55ec3107b09815e318123a",
                                        "qwen_image_vae",
                                        "diffsynth.models.qwen_image_vae.QwenImageVAE");
    REQUIRE(c);
    load_and_check(c, paths, n, 194, 126892531ull, DS_F32);
}

static void test_qwen_image_text_encoder(void)
{
    size_t n;
    char **paths = make_model("qwen_image_text_encoder_raw", DS_BF16, 4, NULL, &n);
    REQUIRE(paths && n == 4);
    const ds_model_config *c =
        identify(paths, n, 1, "8004730443f55db63092006dd9f7110e", "qwen_image_text_encoder",
                 "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder");
    REQUIRE(c);
    CHECK_CONTAINS(c->state_dict_converter, "QwenImageTextEncoderStateDictConverter");
    CHECK(ds_config_is_implemented(c));
    load_and_check(c, paths, n, 729, 8292166656ull, DS_BF16);
}

static void test_controlnets(void)
{
    size_t n;
    char **paths = make_model("qwen_image_blockwise_controlnet", DS_BF16, 1, NULL, &n);
    REQUIRE(paths);
    const ds_model_config *c = identify(paths, n, 0, "073bce9cf969e317e5662cd570c3e79c",
                                        "qwen_image_blockwise_controlnet", CONTROLNET_CLASS);
    REQUIRE(c);
    CHECK(c->extra_kwargs_json == NULL);
    load_and_check(c, paths, n, 362, 3072ull * 65 + 60ull * (2 * 3072 + 2 * (3072 * 3072 + 3072)),
                   DS_BF16);

    paths = make_model("qwen_image_blockwise_controlnet_inpaint", DS_BF16, 1, NULL, &n);
    REQUIRE(paths);
    c = identify(paths, n, 0, "a9e54e480a628f0b956a688a81c33bab",
                 "qwen_image_blockwise_controlnet", CONTROLNET_CLASS);
    REQUIRE(c);
    CHECK_CONTAINS(c->extra_kwargs_json, "additional_in_dim");
    load_and_check(c, paths, n, 362,
                   3072ull * 69 + 60ull * (2 * 3072 + 2 * (3072 * 3072 + 3072)), DS_BF16);
}

/* Wan2.1-T2V-1.3B (one file, no converter) loads as WanModel: 12 input tensors, 30 blocks of
 * 27, the head's 3; 1.42 B parameters (facts §2). */
static void test_wan_t2v_1_3b(void)
{
    size_t n;
    char **paths = make_model("wan2.1_t2v_1.3b", DS_BF16, 1, NULL, &n);
    REQUIRE(paths);
    const ds_model_config *c = identify(paths, n, 0, "9269f8db9040a9d860eaca435be61814",
                                        "wan_video_dit", "diffsynth.models.wan_video_dit.WanModel");
    REQUIRE(c);
    CHECK(ds_config_is_implemented(c));
    load_and_check(c, paths, n, 12 + 30 * 27 + 3, 1418996800ull, DS_BF16);
}

/* A known class with a converter this build lacks is refused before anything is touched. */
static void test_converter_not_implemented(void)
{
    const ds_model_config config = {
        .model_hash = "073bce9cf969e317e5662cd570c3e79c",
        .model_name = "qwen_image_blockwise_controlnet",
        .model_class = CONTROLNET_CLASS,
        .state_dict_converter = "diffsynth.utils.state_dict_converters.nope.NopeConverter",
        .source = "test",
    };
    CHECK(!ds_config_is_implemented(&config));
    size_t n;
    char **paths = make_model("qwen_image_blockwise_controlnet", DS_BF16, 1, NULL, &n);
    REQUIRE(paths);
    ds_model_files *files = open_files(paths, n, 0);
    REQUIRE(files);
    ds_loaded_model *model = NULL;
    ds_error err;
    CHECK(ds_model_load(&config, files, &model, &err) == DS_ERR_UNIMPLEMENTED);
    CHECK_CONTAINS(err.message, "state dict converter \"diffsynth.utils.state_dict_converters."
                                "nope.NopeConverter\" is not implemented in this build");
    ds_model_files_close(files);
}

/* One tensor with a wrong shape and one renamed: a broken or foreign controlnet. */
static void break_controlnet(ds_state_dict *sd)
{
    ds_state_dict edited;
    ds_state_dict_init(&edited);
    for (size_t i = 0; i < sd->count; i++) {
        ds_tensor_view v = sd->entries[i].tensor;
        const char *name = sd->entries[i].name;
        if (strcmp(name, "controlnet_blocks.5.input_proj.weight") == 0)
            ds_tensor_view_declare(&v, v.dtype, 2, (const int64_t[]){3072, 3000});
        if (strcmp(name, "controlnet_blocks.7.x_rms.weight") == 0)
            name = "controlnet_blocks.7.x_norm.weight";
        ds_state_dict_put_tensor(&edited, name, &v);
    }
    ds_state_dict_free(sd);
    *sd = edited;
}

static void test_broken_controlnet(void)
{
    size_t n;
    char **paths = make_model("qwen_image_blockwise_controlnet", DS_BF16, 1, break_controlnet, &n);
    REQUIRE(paths);
    ds_model_files *files = open_files(paths, n, 0);
    REQUIRE(files);
    ds_identification ident;
    ds_error err;
    REQUIRE(ds_identify_files(table, files, &ident, &err) == DS_OK);
    CHECK(ident.config_count == 0 && ident.configs == NULL);
    ds_identification_free(&ident);

    ds_config_suggestion sug[8];
    size_t count = 0;
    REQUIRE(ds_suggest_configs(table, files, sug, 8, &count, &err) == DS_OK);
    REQUIRE(count >= 2);
    /* Both controlnet rows share all 361 names; the tie goes to table order (row 3 first). */
    CHECK_STR_EQ(sug[0].config->model_name, "qwen_image_blockwise_controlnet");
    CHECK(sug[0].config->extra_kwargs_json == NULL);
    CHECK(sug[0].shared_names == 361 && sug[0].config_names == 362);
    CHECK_STR_EQ(sug[1].config->model_name, "qwen_image_blockwise_controlnet");
    CHECK(sug[1].shared_names == 361);
    for (size_t i = 2; i < count; i++)
        CHECK(sug[i].shared_names < 361 && sug[i].shared_names > 0);
    size_t one = 0;
    REQUIRE(ds_suggest_configs(table, files, sug, 1, &one, &err) == DS_OK);
    CHECK(one == 1);

    ds_loaded_model *model = NULL;
    const ds_model_config *row3 = sug[0].config;
    CHECK(ds_model_load(row3, files, &model, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(model == NULL);
    CHECK_CONTAINS(err.message, "1 missing, 1 unexpected, 1 wrong shape");
    CHECK_CONTAINS(err.message, "controlnet_blocks.7.x_rms.weight");
    CHECK_CONTAINS(err.message, "controlnet_blocks.7.x_norm.weight");
    CHECK_CONTAINS(err.message, "controlnet_blocks.5.input_proj.weight: file has [3072, 3000], "
                                "class expects [3072, 3072]");
    CHECK_CONTAINS(err.message, CONTROLNET_CLASS);
    CHECK_CONTAINS(err.message, paths[0]);
    ds_model_files_close(files);
}

/* The hash ignores dtypes, so an integer file identifies; binding it to float parameters is
 * refused by name. */
static void test_integer_controlnet_refused(void)
{
    size_t n;
    char **paths = make_model("qwen_image_blockwise_controlnet", DS_I16, 1, NULL, &n);
    REQUIRE(paths);
    const ds_model_config *c = identify(paths, n, 0, "073bce9cf969e317e5662cd570c3e79c",
                                        "qwen_image_blockwise_controlnet", CONTROLNET_CLASS);
    REQUIRE(c);
    ds_model_files *files = open_files(paths, n, 0);
    REQUIRE(files);
    ds_loaded_model *model = NULL;
    ds_error err;
    CHECK(ds_model_load(c, files, &model, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "362 unusable");
    CHECK_CONTAINS(err.message, "img_in.weight: file stores i16, class expects a floating-point");
    CHECK_CONTAINS(err.message, "... and 342 more");
    ds_model_files_close(files);
}

/* The one loader (ds_auto_load_model): what Load and a pipeline's roles given as paths run. */
typedef struct load_events {
    int identify_done, loads, cancel_after;
    char last_message[64];
} load_events;

static int events_cancelled(void *user)
{
    load_events *e = user;
    return e->cancel_after >= 0 && e->loads > e->cancel_after;
}

static void events_progress(void *user, const char *phase, uint64_t done, uint64_t total,
                            const char *message)
{
    load_events *e = user;
    if (strcmp(phase, "identify") == 0 && done == 1 && total == 1)
        e->identify_done++;
    if (strcmp(phase, "load") == 0 && done < total)
        e->loads++;
    snprintf(e->last_message, sizeof e->last_message, "%s", message ? message : "");
}

static void test_auto_load(void)
{
    size_t n;
    char **paths = make_model("qwen_image_blockwise_controlnet", DS_BF16, 1, NULL, &n);
    REQUIRE(paths);
    const char *const *p = (const char *const *)paths;
    ds_error err;
    ds_auto_load r;
    load_events ev = {.cancel_after = -1};
    ds_auto_load_hooks hooks = {events_cancelled, events_progress, &ev};

    REQUIRE(ds_auto_load_model(table, NULL, p, n, NULL, &hooks, &r, &err) == DS_OK);
    CHECK_STR_EQ(r.model_hash, "073bce9cf969e317e5662cd570c3e79c");
    CHECK(r.matched_count == 1 && r.model_count == 1 && r.skipped_count == 0);
    if (r.model_count == 1) {
        CHECK_STR_EQ(r.models[0]->model_class, CONTROLNET_CLASS);
        CHECK(r.models[0]->tensor_count == 362);
    }
    CHECK(ev.identify_done == 1 && ev.loads == 1);
    CHECK_STR_EQ(ev.last_message, ""); /* the closing "load" n/n event */
    ds_auto_load_free(&r);
    CHECK(r.models == NULL && r.model_count == 0);

    /* A role of another class: the files match, nothing is chosen. */
    REQUIRE(ds_auto_load_model(table, NULL, p, n, "diffsynth.models.qwen_image_dit.QwenImageDiT", NULL,
                               &r, &err) == DS_OK);
    CHECK(r.matched_count == 1 && r.model_count == 0 && r.skipped_count == 0);
    ds_auto_load_free(&r);

    /* Of the role's class: one model. */
    REQUIRE(ds_auto_load_model(table, NULL, p, n, CONTROLNET_CLASS, NULL, &r, &err) == DS_OK);
    CHECK(r.model_count == 1);
    ds_auto_load_free(&r);

    /* A cancel during the (last) load wins, and no model is left. */
    ev = (load_events){.cancel_after = 0};
    CHECK(ds_auto_load_model(table, NULL, p, n, NULL, &hooks, &r, &err) == DS_ERR_CANCELLED);
    CHECK_CONTAINS(err.message, "cancelled after loading 1 of 1 models");
    CHECK(r.model_count == 0);
    ds_auto_load_free(&r);

    /* Unknown files: nothing matched, the hash still reported. */
    paths = make_model("qwen_image_blockwise_controlnet", DS_BF16, 1, break_controlnet, &n);
    REQUIRE(paths);
    REQUIRE(ds_auto_load_model(table, NULL, (const char *const *)paths, n, NULL, NULL, &r, &err) ==
            DS_OK);
    CHECK(r.matched_count == 0 && r.model_count == 0 && r.model_hash[0] != '\0');
    char unknown_hash[DS_MODEL_HASH_HEX];
    memcpy(unknown_hash, r.model_hash, sizeof unknown_hash);
    ds_auto_load_free(&r);

    /* Known (a row added for that hash) but of a class this build lacks: skipped, not loaded. */
    ds_config_table *extended;
    REQUIRE(ds_config_table_new(&extended, &err) == DS_OK);
    char json[256];
    int len = snprintf(json, sizeof json,
                       "[{\"model_hash\": \"%s\", \"model_name\": \"future_model\", "
                       "\"model_class\": \"diffsynth.models.future.FutureModel\"}]",
                       unknown_hash);
    REQUIRE(ds_config_table_add_json(extended, json, (size_t)len, "test", &err) == DS_OK);
    REQUIRE(ds_auto_load_model(extended, NULL, (const char *const *)paths, n, NULL, NULL, &r,
                               &err) == DS_OK);
    CHECK(r.matched_count == 1 && r.model_count == 0 && r.skipped_count == 1);
    ds_auto_load_free(&r);
    ds_config_table_free(extended);
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/ds-identify-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    ds_error err;
    if (ds_config_table_new(&table, &err) != DS_OK) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    RUN(test_qwen_image_dit);
    RUN(test_qwen_image_dit_layered);
    RUN(test_qwen_image_vae);
    RUN(test_qwen_image_text_encoder);
    RUN(test_controlnets);
    RUN(test_wan_t2v_1_3b);
    RUN(test_converter_not_implemented);
    RUN(test_broken_controlnet);
    RUN(test_integer_controlnet_refused);
    RUN(test_auto_load);
    ds_config_table_free(table);
    for (size_t i = 0; i < written_count; i++) {
        if (unlink(written[i]) != 0)
            perror(written[i]);
        free(written[i]);
    }
    if (rmdir(tmpdir) != 0)
        perror(tmpdir);
    return test_summary();
}
