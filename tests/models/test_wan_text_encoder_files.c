/* Wan's text encoder from its files. Upstream ships models_t5_umt5-xxl-enc-bf16.pth, a torch
 * zip checkpoint, and DiffSynth-Studio/Wan-Series-Converted-Safetensors the same state dict as
 * safetensors; both load alike:
 *   - tests/data/torch/wan_text_encoder_small.pth (tests/golden/make_wan_text_encoder_pth.py:
 *     a real torch.save of WanTextEncoder with its constructor's widths reduced, in bf16) loads
 *     through the restricted unpickler and its forward matches upstream's on it;
 *   - the same tensors written here as safetensors load to a model whose forward equals the
 *     .pth one byte for byte, with the same model hash;
 *   - a header-only full-size safetensors of the class's tree is identified by upstream's hash
 *     9c8818c2cbea55eca56c7b447df170da as wan_video_text_encoder and loads. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/float_convert.h"
#include "core/model_configs.h"
#include "core/model_file.h"
#include "core/safetensors.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "models/model_loader.h"
#include "models/wan_video_text_encoder.h"
#include "golden_test.h"
#include "test.h"
#include "tools/safetensors_writer.h"

#define TE_CLASS "diffsynth.models.wan_video_text_encoder.WanTextEncoder"
#define TE_HASH "9c8818c2cbea55eca56c7b447df170da"

static ds_backend *cpu;
static ds_safetensors *golden;
static char tmpdir[] = "/tmp/ds-wan-te-files-XXXXXX";

static const ds_model_config reduced = {
    .model_hash = "",
    .model_name = "wan_video_text_encoder",
    .model_class = TE_CLASS,
    .extra_kwargs_json = "{\"vocab\": 32, \"dim\": 64, \"dim_attn\": 64, \"dim_ffn\": 160, "
                         "\"num_heads\": 4, \"num_layers\": 2}",
    .source = "test",
};

static char *data_path(const char *rel)
{
    const char *root = getenv("DS_TEST_DATA");
    char *path = NULL;
    if (asprintf(&path, "%s/%s", root ? root : "tests/data", rel) < 0)
        return NULL;
    return path;
}

static ds_tensor golden_tensor(const char *name)
{
    return test_golden_tensor(cpu, golden, name);
}

static ds_loaded_model *load(const char *path, const ds_model_config *config)
{
    ds_model_files *files = NULL;
    ds_loaded_model *m = NULL;
    ds_error err;
    const char *paths[] = {path};
    if (ds_model_files_open(paths, 1, &files, &err) != DS_OK) {
        fprintf(stderr, "open %s: %s\n", path, err.message);
        return NULL;
    }
    if (ds_model_load(config, files, &m, &err) != DS_OK) {
        fprintf(stderr, "load %s: %s\n", path, err.message);
        ds_model_files_close(files);
        return NULL;
    }
    return m;
}

/* The golden ids through the model in bf16; out allocated here. */
static int forward(const ds_loaded_model *m, ds_tensor *out, ds_error *err)
{
    ds_tensor ids = golden_tensor("ids"), mask = golden_tensor("mask");
    ds_step_context ctx = {.backend = cpu};
    int rc = ds_tensor_alloc(cpu, DS_BF16, 3,
                             (const int64_t[]){1, ids.shape[1], 64}, out,
                             err);
    if (rc == DS_OK && (rc = ds_wan_text_encoder_forward(m, &ctx, &ids, &mask, out, err)) != DS_OK)
        ds_tensor_free(out);
    return rc;
}

/* The loaded tensors as one safetensors file, in the tree's order (the converted file's
 * layout: the same names, shapes and bf16 data). */
static int write_safetensors(const ds_loaded_model *m, const char *path)
{
    size_t cap = 1 << 16, len = 0;
    char *json = malloc(cap);
    uint64_t offset = 0;
    if (!json)
        return -1;
    len += (size_t)snprintf(json + len, cap - len, "{");
    for (size_t i = 0; i < m->params.count; i++) {
        const ds_tensor_view *v = &m->params.entries[i].tensor;
        if (v->dtype != DS_BF16 || !ds_tensor_view_is_contiguous(v))
            return free(json), -1;
        len += (size_t)snprintf(json + len, cap - len, "%s\"%s\":{\"dtype\":\"BF16\",\"shape\":[",
                                i ? "," : "", m->params.entries[i].name);
        for (int d = 0; d < v->ndim; d++)
            len += (size_t)snprintf(json + len, cap - len, "%s%lld", d ? "," : "",
                                    (long long)v->shape[d]);
        len += (size_t)snprintf(json + len, cap - len, "],\"data_offsets\":[%llu,%llu]}",
                                (unsigned long long)offset,
                                (unsigned long long)(offset + v->nbytes));
        offset += v->nbytes;
        if (len + 512 > cap)
            return free(json), -1;
    }
    len += (size_t)snprintf(json + len, cap - len, "}");
    while (len % 8)
        json[len++] = ' ';
    FILE *f = fopen(path, "wb");
    uint64_t header = len;
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(header >> (8 * i));
    int ok = f && fwrite(le, 1, 8, f) == 8 && fwrite(json, 1, len, f) == len;
    for (size_t i = 0; ok && i < m->params.count; i++) {
        const ds_tensor_view *v = &m->params.entries[i].tensor;
        ok = fwrite(v->data, 1, v->nbytes, f) == v->nbytes;
    }
    if (f && fclose(f) != 0)
        ok = 0;
    free(json);
    return ok ? 0 : -1;
}

static void test_pth_and_safetensors(void)
{
    ds_error err;
    char *pth = data_path("torch/wan_text_encoder_small.pth");
    REQUIRE(pth);
    ds_loaded_model *from_pth = load(pth, &reduced);
    free(pth);
    REQUIRE(from_pth);
    CHECK(from_pth->tensor_count == 22);
    CHECK(from_pth->params.entries[0].tensor.dtype == DS_BF16);

    ds_tensor a, b;
    int rc = forward(from_pth, &a, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    REQUIRE(rc == DS_OK);
    ds_tensor want = golden_tensor("hidden_bf16");
    double num = 0, den = 0;
    for (uint64_t i = 0; i < ds_tensor_numel(&want); i++) {
        double x = ds_load_f64(a.data, DS_BF16, i), y = ds_load_f64(want.data, DS_BF16, i);
        num += (x - y) * (x - y);
        den += y * y;
    }
    fprintf(stderr, "  .pth forward vs upstream (bf16): relative L2 %.3e\n", sqrt(num / den));
    CHECK(sqrt(num / den) < 2e-2);

    char st[512];
    snprintf(st, sizeof st, "%s/converted.safetensors", tmpdir);
    REQUIRE(write_safetensors(from_pth, st) == 0);
    ds_loaded_model *from_st = load(st, &reduced);
    REQUIRE(from_st);
    CHECK_STR_EQ(from_st->model_hash, from_pth->model_hash);
    rc = forward(from_st, &b, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc == DS_OK) {
        CHECK(memcmp(a.data, b.data, ds_tensor_nbytes(&a)) == 0);
        ds_tensor_free(&b);
    }
    ds_tensor_free(&a);
    ds_loaded_model_free(from_st);
    ds_loaded_model_free(from_pth);
    unlink(st);
}

static void test_full_size_identified(void)
{
    ds_error err;
    ds_state_dict tree;
    ds_state_dict_init(&tree);
    const ds_model_class *cls = ds_model_class_find(TE_CLASS);
    REQUIRE(cls && ds_model_class_declare(cls, NULL, &tree, &err) == DS_OK);
    for (size_t i = 0; i < tree.count; i++) {
        ds_tensor_view *v = &tree.entries[i].tensor;
        int64_t shape[DS_MAX_DIMS];
        memcpy(shape, v->shape, sizeof shape);
        REQUIRE(ds_tensor_view_declare(v, DS_BF16, v->ndim, shape) == DS_OK);
    }
    char out[512], **paths = NULL;
    size_t count = 0;
    snprintf(out, sizeof out, "%s/umt5", tmpdir);
    int rc = ds_st_write_model(out, &tree, 1, DS_ST_FILL_SPARSE, 0, &paths, &count, &err);
    ds_state_dict_free(&tree);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    REQUIRE(rc == DS_OK && count == 1);

    ds_config_table *table = NULL;
    ds_model_files *files = NULL;
    ds_identification ident;
    REQUIRE(ds_config_table_new(&table, &err) == DS_OK);
    REQUIRE(ds_model_files_open((const char *const *)paths, 1, &files, &err) == DS_OK);
    rc = ds_identify_files(table, files, &ident, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc == DS_OK) {
        CHECK_STR_EQ(ident.model_hash, TE_HASH);
        CHECK(ident.config_count == 1);
        if (ident.config_count == 1) {
            CHECK_STR_EQ(ident.configs[0]->model_name, "wan_video_text_encoder");
            ds_loaded_model *m = NULL;
            rc = ds_model_load(ident.configs[0], files, &m, &err);
            CHECK_MSG(rc == DS_OK, "%s", err.message);
            if (rc == DS_OK) {
                files = NULL; /* the model owns them */
                CHECK(m->tensor_count == 242);
                CHECK(m->parameter_count == 5680910336ull);
                ds_loaded_model_free(m);
            }
        }
        ds_identification_free(&ident);
    }
    if (files)
        ds_model_files_close(files);
    ds_config_table_free(table);
    unlink(paths[0]);
    ds_st_paths_free(paths, count);
}

int main(void)
{
    ds_error err;
    char *path = data_path("golden/wan_text_encoder_pth.safetensors");
    if (!path || ds_cpu_backend_create(0, &cpu, &err) != DS_OK ||
        ds_safetensors_open(path, 0, &golden, &err) != DS_OK || !mkdtemp(tmpdir)) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    free(path);
    RUN(test_pth_and_safetensors);
    RUN(test_full_size_identified);
    rmdir(tmpdir);
    ds_safetensors_close(golden);
    ds_backend_destroy(cpu);
    return test_summary();
}
