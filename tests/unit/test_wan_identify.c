/* Identification of the Wan file sets as upstream does it, with header-only sparse safetensors
 * built from key lists that tests/golden/make_keylists.py took from upstream's and diffusers'
 * classes, sharded as the real repositories are (one list per shard). The hashes, names,
 * classes and converters checked are upstream's config rows (plus our Diffusers-layout row);
 * the converters' outputs are checked against other upstream rows and the classes' trees. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "converters/converter.h"
#include "core/model_configs.h"
#include "core/model_file.h"
#include "core/model_hash.h"
#include "models/model_loader.h"
#include "test.h"
#include "tools/keylist.h"
#include "tools/safetensors_writer.h"

#define WAN_MODEL "diffsynth.models.wan_video_dit.WanModel"
#define VACE_MODEL "diffsynth.models.wan_video_vace.VaceWanModel"
#define CONV "diffsynth.utils.state_dict_converters."
#define DIT_CONVERTER CONV "wan_video_dit.WanVideoDiTStateDictConverter"
#define DIFFUSERS_CONVERTER CONV "wan_video_dit.WanVideoDiTFromDiffusers"
#define VACE_CONVERTER CONV "wan_video_vace.VaceWanModelDictConverter"

#define T2V_1_3B "9269f8db9040a9d860eaca435be61814"
#define T2V_14B "aafcfd9672c3a2456dc46e1cb6e52c70"
#define TI2V_5B "1f5ab7703c6fc803fdded85ff040c316"
#define VACE_14B "7a513e1f257a861512b1afd387a8ecd9"
#define DIFFUSERS_1_3B "b0a133b5687c7d054175e5bfa66ef5fd"
/* hash_state_dict_keys(VaceWanModel(**row 24 extra_kwargs).state_dict()), upstream 2.1.12. */
#define VACE_14B_BRANCH "3b2726384e4f64837bdf216eea3f310d"
#define VACE_1_3B "a61453409b67cd3246cf0c3bebad47ba"
/* hash_state_dict_keys(VaceWanModel().state_dict()): row 22 has no kwargs. */
#define VACE_1_3B_BRANCH "14d1b2c32a04ce597deb613976f17563"

#define MAX_FILES 64

static char tmpdir[256];
static char *written[MAX_FILES];
static size_t written_count;
static char *dirs[16];
static size_t dir_count;
static ds_config_table *table;

typedef struct file_set {
    char *paths[8];
    size_t count;
} file_set;

/* Writes keylists/<stem>.json (shards == 1) or keylists/<stem>-0000k-of-0000n.json as
 * diffusion_pytorch_model[-0000k-of-0000n].safetensors in a fresh folder, f32 as the real
 * files are. */
static int make_set(const char *stem, int shards, file_set *set)
{
    const char *data = getenv("DS_TEST_DATA");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, stem);
    if (mkdir(dir, 0700) != 0 || dir_count >= 16) {
        perror(dir);
        return 0;
    }
    dirs[dir_count++] = strdup(dir);
    set->count = 0;
    for (int k = 1; k <= shards && k <= 8; k++) {
        char suffix[32] = "", list[512], path[600];
        if (shards > 1)
            snprintf(suffix, sizeof suffix, "-%05d-of-%05d", k, shards);
        snprintf(list, sizeof list, "%s/keylists/%s%s.json", data ? data : "tests/data", stem,
                 suffix);
        snprintf(path, sizeof path, "%s/diffusion_pytorch_model%s.safetensors", dir, suffix);
        ds_state_dict sd;
        ds_state_dict_init(&sd);
        ds_error err;
        int rc = ds_keylist_load(list, DS_F32, &sd, &err);
        if (rc == DS_OK)
            rc = ds_st_write(path, &sd, 0, sd.count, DS_ST_FILL_SPARSE, 0, &err);
        ds_state_dict_free(&sd);
        if (rc != DS_OK) {
            fprintf(stderr, "%s\n", err.message);
            return 0;
        }
        if (written_count < MAX_FILES)
            written[written_count++] = strdup(path);
        set->paths[set->count++] = written[written_count - 1];
    }
    return (int)set->count == shards;
}

static ds_model_files *open_set(const file_set *set, int reversed)
{
    const char *order[8];
    for (size_t i = 0; i < set->count; i++)
        order[i] = set->paths[reversed ? set->count - 1 - i : i];
    ds_model_files *files = NULL;
    ds_error err;
    if (ds_model_files_open(order, set->count, &files, &err) != DS_OK)
        fprintf(stderr, "open: %s\n", err.message);
    return files;
}

/* Identifies the set; checks the hash, tensor and parameter counts and the number of configs.
 * Returns the identification (caller frees) with the files in *files_out (caller closes). */
static int identify(const file_set *set, int reversed, const char *hash, size_t tensors,
                    uint64_t params, size_t configs, ds_identification *ident,
                    ds_model_files **files_out)
{
    ds_model_files *files = open_set(set, reversed);
    if (!files)
        return 0;
    ds_error err;
    if (ds_identify_files(table, files, ident, &err) != DS_OK) {
        fprintf(stderr, "identify: %s\n", err.message);
        ds_model_files_close(files);
        return 0;
    }
    CHECK_STR_EQ(ident->model_hash, hash);
    CHECK_MSG(ident->tensor_count == tensors, "%s: %zu tensors", hash, ident->tensor_count);
    CHECK_MSG(ds_state_dict_parameter_count(&files->merged) == params, "%s: %llu params", hash,
              (unsigned long long)ds_state_dict_parameter_count(&files->merged));
    CHECK_MSG(ident->config_count == configs, "%s: %zu configs", hash, ident->config_count);
    *files_out = files;
    return ident->config_count == configs;
}

static void check_config(const ds_model_config *c, const char *name, const char *cls,
                         const char *converter)
{
    CHECK_STR_EQ(c->model_name, name);
    CHECK_STR_EQ(c->model_class, cls);
    if (converter)
        CHECK_STR_EQ(c->state_dict_converter, converter);
    else
        CHECK(c->state_dict_converter == NULL);
}

/* The single config of upstream's table with this hash. */
static const ds_model_config *row(const char *hash)
{
    const ds_model_config *m[2];
    return ds_config_table_match(table, hash, m, 2) == 1 ? m[0] : NULL;
}

/* Runs the config's converter on the files; checks every output is a view of the same
 * tensor in the files (renamed, never copied) and returns the output's hash in `hash`.
 * from[i] names the source of output i; NULL when the converter keeps names. */
static void convert(const ds_model_config *c, const ds_model_files *files, const char *const *from,
                    ds_state_dict *out, char hash[DS_MODEL_HASH_HEX])
{
    const ds_converter *conv = ds_converter_find(c->state_dict_converter);
    ds_state_dict_init(out);
    hash[0] = 0;
    REQUIRE(conv);
    ds_error err;
    REQUIRE(conv->convert(&files->merged, out, &err) == DS_OK);
    size_t copied = 0;
    for (size_t i = 0; i < out->count; i++) {
        const char *name = from ? from[i] : out->entries[i].name;
        const ds_sd_entry *src = ds_state_dict_find(&files->merged, name);
        if (!src || src->tensor.data != out->entries[i].tensor.data ||
            src->tensor.file_index != out->entries[i].tensor.file_index)
            copied++;
    }
    CHECK_MSG(copied == 0, "%s: %zu outputs are not views of their source", c->model_name,
              copied);
    REQUIRE(ds_model_hash(out, hash) == DS_OK);
}

static void test_t2v_1_3b(void)
{
    file_set set;
    REQUIRE(make_set("wan2.1_t2v_1.3b", 1, &set));
    ds_identification ident;
    ds_model_files *files;
    REQUIRE(identify(&set, 0, T2V_1_3B, 825, 1418996800ull, 1, &ident, &files));
    check_config(ident.configs[0], "wan_video_dit", WAN_MODEL, NULL);
    CHECK_CONTAINS(ident.configs[0]->extra_kwargs_json, "\"dim\": 1536");
    ds_identification_free(&ident);
    ds_model_files_close(files);
}

/* Six shards, in either order (upstream's glob order is arbitrary). */
static void test_t2v_14b(void)
{
    file_set set;
    REQUIRE(make_set("wan2.1_t2v_14b", 6, &set));
    for (int reversed = 0; reversed < 2; reversed++) {
        ds_identification ident;
        ds_model_files *files;
        REQUIRE(identify(&set, reversed, T2V_14B, 1095, 14288491584ull, 1, &ident, &files));
        check_config(ident.configs[0], "wan_video_dit", WAN_MODEL, NULL);
        CHECK_CONTAINS(ident.configs[0]->extra_kwargs_json, "\"dim\": 5120");
        CHECK(files->count == 6);
        ds_identification_free(&ident);
        ds_model_files_close(files);
    }
}

static void test_ti2v_5b(void)
{
    file_set set;
    REQUIRE(make_set("wan2.2_ti2v_5b", 3, &set));
    ds_identification ident;
    ds_model_files *files;
    REQUIRE(identify(&set, 1, TI2V_5B, 825, 4999787712ull, 1, &ident, &files));
    check_config(ident.configs[0], "wan_video_dit", WAN_MODEL, NULL);
    CHECK_CONTAINS(ident.configs[0]->extra_kwargs_json, "\"seperated_timestep\": true");
    CHECK_CONTAINS(ident.configs[0]->extra_kwargs_json, "\"in_dim\": 48");
    ds_identification_free(&ident);
    ds_model_files_close(files);
}

/* One set of files, two models: the base DiT and the VACE branch, each through its own row
 * and converter, which split the file's names between them. */
static void test_vace_14b_two_models(void)
{
    file_set set;
    REQUIRE(make_set("wan2.1_vace_14b", 7, &set));
    ds_identification ident;
    ds_model_files *files;
    REQUIRE(identify(&set, 0, VACE_14B, 1331, 17337592896ull, 2, &ident, &files));
    const ds_model_config *dit = ident.configs[0], *vace = ident.configs[1];
    check_config(dit, "wan_video_dit", WAN_MODEL, DIT_CONVERTER);
    check_config(vace, "wan_video_vace", VACE_MODEL, VACE_CONVERTER);
    CHECK_CONTAINS(vace->extra_kwargs_json, "\"vace_layers\": [0, 5, 10, 15, 20, 25, 30, 35]");

    /* The DiT part is exactly a Wan2.1-T2V-14B file: upstream's row for it has the same
     * kwargs and no converter, so its hash is that of WanModel's tree with these kwargs. */
    const ds_model_config *t2v = row(T2V_14B);
    REQUIRE(t2v);
    CHECK_STR_EQ(dit->extra_kwargs_json, t2v->extra_kwargs_json);
    ds_state_dict dit_sd, vace_sd;
    char hash[DS_MODEL_HASH_HEX];
    convert(dit, files, NULL, &dit_sd, hash);
    CHECK_STR_EQ(hash, T2V_14B);
    CHECK(dit_sd.count == 1095);
    convert(vace, files, NULL, &vace_sd, hash);
    CHECK_STR_EQ(hash, VACE_14B_BRANCH);
    CHECK(vace_sd.count == 236);
    CHECK(ds_state_dict_parameter_count(&vace_sd) == 3049101312ull);
    /* Disjoint, and together the whole file set. */
    size_t shared = 0;
    for (size_t i = 0; i < vace_sd.count; i++)
        shared += ds_state_dict_find(&dit_sd, vace_sd.entries[i].name) != NULL;
    CHECK(shared == 0);
    CHECK(dit_sd.count + vace_sd.count == files->merged.count);
    /* 8 branch blocks; only the first has before_proj (VaceWanAttentionBlock block_id 0). */
    CHECK(ds_state_dict_find(&vace_sd, "vace_blocks.7.after_proj.weight") != NULL);
    CHECK(ds_state_dict_find(&vace_sd, "vace_blocks.8.after_proj.weight") == NULL);
    CHECK(ds_state_dict_find(&vace_sd, "vace_blocks.0.before_proj.weight") != NULL);
    CHECK(ds_state_dict_find(&vace_sd, "vace_blocks.1.before_proj.weight") == NULL);
    ds_state_dict_free(&dit_sd);
    ds_state_dict_free(&vace_sd);
    ds_identification_free(&ident);
    ds_model_files_close(files);
}

/* The 1.3B VACE file: one file, two models; the branch's row has no kwargs, so the class's
 * defaults (15 blocks at layers 0, 2, ..., 28) must give its tree. */
static void test_vace_1_3b_two_models(void)
{
    file_set set;
    REQUIRE(make_set("wan2.1_vace_1.3b", 1, &set));
    ds_identification ident;
    ds_model_files *files;
    REQUIRE(identify(&set, 0, VACE_1_3B, 1264, 2153972032ull, 2, &ident, &files));
    const ds_model_config *dit = ident.configs[0], *vace = ident.configs[1];
    check_config(dit, "wan_video_dit", WAN_MODEL, DIT_CONVERTER);
    check_config(vace, "wan_video_vace", VACE_MODEL, VACE_CONVERTER);
    CHECK(vace->extra_kwargs_json == NULL);
    const ds_model_config *t2v = row(T2V_1_3B);
    REQUIRE(t2v);
    CHECK_STR_EQ(dit->extra_kwargs_json, t2v->extra_kwargs_json);
    ds_state_dict dit_sd, vace_sd;
    char hash[DS_MODEL_HASH_HEX];
    convert(dit, files, NULL, &dit_sd, hash);
    CHECK_STR_EQ(hash, T2V_1_3B);
    convert(vace, files, NULL, &vace_sd, hash);
    CHECK_STR_EQ(hash, VACE_1_3B_BRANCH);
    CHECK(vace_sd.count == 439);
    CHECK(ds_state_dict_parameter_count(&vace_sd) == 734975232ull);
    CHECK(dit_sd.count + vace_sd.count == files->merged.count);
    CHECK(ds_state_dict_find(&vace_sd, "vace_blocks.14.after_proj.weight") != NULL);
    CHECK(ds_state_dict_find(&vace_sd, "vace_blocks.15.after_proj.weight") == NULL);
    ds_state_dict_free(&dit_sd);
    ds_state_dict_free(&vace_sd);
    ds_identification_free(&ident);
    ds_model_files_close(files);
}

/* diffusers' layout of Wan2.1-T2V-1.3B: our added row, the native row's kwargs, and the
 * converter gives the native file's names (and so upstream's native hash). */
static void test_t2v_1_3b_diffusers(void)
{
    file_set set;
    REQUIRE(make_set("wan2.1_t2v_1.3b_diffusers", 1, &set));
    ds_identification ident;
    ds_model_files *files;
    REQUIRE(identify(&set, 0, DIFFUSERS_1_3B, 825, 1418996800ull, 1, &ident, &files));
    const ds_model_config *c = ident.configs[0];
    check_config(c, "wan_video_dit", WAN_MODEL, DIFFUSERS_CONVERTER);
    CHECK_STR_EQ(c->source, "builtin");
    const ds_model_config *native = row(T2V_1_3B);
    REQUIRE(native);
    CHECK_STR_EQ(c->extra_kwargs_json, native->extra_kwargs_json);

    /* Every diffusers name maps to one native name, in file order. */
    const char *from[825];
    REQUIRE(files->merged.count == 825);
    for (size_t i = 0; i < 825; i++)
        from[i] = files->merged.entries[i].name;
    ds_state_dict out;
    char hash[DS_MODEL_HASH_HEX];
    convert(c, files, from, &out, hash);
    CHECK_STR_EQ(hash, T2V_1_3B);
    CHECK(out.count == 825);
    CHECK(ds_state_dict_find(&out, "head.modulation") != NULL);
    CHECK(ds_state_dict_find(&out, "blocks.29.norm3.weight") != NULL);
    ds_state_dict_free(&out);
    ds_identification_free(&ident);
    ds_model_files_close(files);
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/ds-wan-identify-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    ds_error err;
    if (ds_config_table_new(&table, &err) != DS_OK) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    RUN(test_t2v_1_3b);
    RUN(test_t2v_14b);
    RUN(test_ti2v_5b);
    RUN(test_vace_14b_two_models);
    RUN(test_vace_1_3b_two_models);
    RUN(test_t2v_1_3b_diffusers);
    ds_config_table_free(table);
    for (size_t i = 0; i < written_count; i++) {
        if (unlink(written[i]) != 0)
            perror(written[i]);
        free(written[i]);
    }
    for (size_t i = 0; i < dir_count; i++) {
        if (rmdir(dirs[i]) != 0)
            perror(dirs[i]);
        free(dirs[i]);
    }
    if (rmdir(tmpdir) != 0)
        perror(tmpdir);
    return test_summary();
}
