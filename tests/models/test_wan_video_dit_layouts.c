/* One Wan video DiT, two file layouts: diffusers' WanTransformer3DModel's names and
 * DiffSynth's, the second made from the first by upstream's own WanVideoDiTFromDiffusers
 * (tests/golden/make_wan_video_dit_layouts.py). Loaded through our converters, both give the
 * same parameters and one forward step of each is bit for bit the same, in f32 and bf16. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model_file.h"
#include "kernels/ops.h"
#include "models/model_loader.h"
#include "models/wan_video_dit.h"
#include "test.h"

#define CONV "diffsynth.utils.state_dict_converters.wan_video_dit."
#define KWARGS                                                                                  \
    "{\"has_image_input\": false, \"patch_size\": [1, 2, 2], \"in_dim\": 4, \"dim\": 24, "     \
    "\"ffn_dim\": 32, \"freq_dim\": 8, \"text_dim\": 8, \"out_dim\": 4, \"num_heads\": 2, "    \
    "\"num_layers\": 2, \"eps\": 1e-06}"

enum { B = 2, C = 4, F = 3, H = 4, W = 6, L = 5, TEXT_DIM = 8 };

static ds_backend *cpu;

static ds_loaded_model *load(const char *file, const char *converter)
{
    const char *root = getenv("DS_TEST_DATA");
    char path[1024];
    snprintf(path, sizeof path, "%s/golden/%s", root ? root : "tests/data", file);
    const char *paths[] = {path};
    ds_model_config config = {.model_name = file,
                              .model_class = "diffsynth.models.wan_video_dit.WanModel",
                              .state_dict_converter = converter, .extra_kwargs_json = KWARGS,
                              .source = "test"};
    ds_model_files *files = NULL;
    ds_loaded_model *m = NULL;
    ds_error err;
    if (ds_model_files_open(paths, 1, &files, &err) != DS_OK ||
        ds_model_load(&config, files, &m, &err) != DS_OK) {
        fprintf(stderr, "%s: %s\n", file, err.message);
        ds_model_files_close(files);
        return NULL;
    }
    return m;
}

static void fill(ds_tensor *t, uint32_t seed)
{
    float *x = t->data;
    for (uint64_t i = 0; i < ds_tensor_numel(t); i++) {
        seed = seed * 1103515245u + 12345u;
        x[i] = (float)((seed >> 8) & 0xFFFF) / 32768.0f - 1.0f;
    }
}

/* noise_pred of `m` on the seeded inputs in `dtype`, into out (allocated here). */
static int forward(const ds_loaded_model *m, ds_dtype dtype, ds_tensor *out)
{
    ds_error err;
    ds_tensor lat32 = {0}, ctx32 = {0}, lat = {0}, ctx = {0}, t = {0};
    const int64_t lat_shape[] = {B, C, F, H, W}, ctx_shape[] = {B, L, TEXT_DIM}, t_shape[] = {B};
    ds_cast_args c1 = {&lat32, &lat}, c2 = {&ctx32, &ctx};
    ds_wan_video_dit_inputs in = {.latents = &lat, .timestep = &t, .context = &ctx,
                                  .vace_scale = 1.0f};
    ds_step_context sc = {.backend = cpu};
    int rc;
    memset(out, 0, sizeof *out);
    if ((rc = ds_tensor_alloc(cpu, DS_F32, 5, lat_shape, &lat32, &err)) == DS_OK &&
        (rc = ds_tensor_alloc(cpu, DS_F32, 3, ctx_shape, &ctx32, &err)) == DS_OK &&
        (rc = ds_tensor_alloc(cpu, dtype, 5, lat_shape, &lat, &err)) == DS_OK &&
        (rc = ds_tensor_alloc(cpu, dtype, 3, ctx_shape, &ctx, &err)) == DS_OK &&
        (rc = ds_tensor_alloc(cpu, DS_F32, 1, t_shape, &t, &err)) == DS_OK &&
        (rc = ds_tensor_alloc(cpu, dtype, 5, lat_shape, out, &err)) == DS_OK) {
        fill(&lat32, 7);
        fill(&ctx32, 11);
        ((float *)t.data)[0] = 875.0f;
        ((float *)t.data)[1] = 120.5f;
        if ((rc = ds_cast(cpu, NULL, &c1, &err)) == DS_OK &&
            (rc = ds_cast(cpu, NULL, &c2, &err)) == DS_OK)
            rc = ds_wan_video_dit_forward(m, &sc, &in, out, &err);
    }
    CHECK_MSG(rc == DS_OK, "%s %s: %s", m->model_name, ds_dtype_name(dtype), err.message);
    ds_tensor_free(&lat32);
    ds_tensor_free(&ctx32);
    ds_tensor_free(&lat);
    ds_tensor_free(&ctx);
    ds_tensor_free(&t);
    return rc;
}

static void test_layouts_agree(void)
{
    ds_loaded_model *native = load("wan_video_dit_native_layout.safetensors", NULL);
    ds_loaded_model *diffusers =
        load("wan_video_dit_diffusers_layout.safetensors", CONV "WanVideoDiTFromDiffusers");
    REQUIRE(native && diffusers);
    /* Two layouts indeed (the files' key sets differ), one parameter set. */
    CHECK(strcmp(native->model_hash, diffusers->model_hash) != 0);
    REQUIRE(native->params.count == diffusers->params.count);
    for (size_t i = 0; i < native->params.count; i++) {
        const ds_sd_entry *a = &native->params.entries[i];
        const ds_sd_entry *b = ds_state_dict_find(&diffusers->params, a->name);
        CHECK_MSG(b && b->tensor.nbytes == a->tensor.nbytes &&
                      memcmp(a->tensor.data, b->tensor.data, a->tensor.nbytes) == 0,
                  "parameter %s differs between the layouts", a->name);
    }
    const ds_dtype dtypes[] = {DS_F32, DS_BF16};
    for (size_t k = 0; k < 2; k++) {
        ds_tensor x = {0}, y = {0};
        if (forward(native, dtypes[k], &x) == DS_OK && forward(diffusers, dtypes[k], &y) == DS_OK) {
            int nonzero = 0;
            for (size_t i = 0; i < ds_tensor_nbytes(&x); i++)
                nonzero |= ((const unsigned char *)x.data)[i] != 0;
            CHECK_MSG(nonzero, "%s: the native layout's output is all zero",
                      ds_dtype_name(dtypes[k]));
            CHECK_MSG(memcmp(x.data, y.data, ds_tensor_nbytes(&x)) == 0,
                      "%s: the two layouts' outputs differ", ds_dtype_name(dtypes[k]));
        }
        ds_tensor_free(&x);
        ds_tensor_free(&y);
    }
    ds_loaded_model_free(native);
    ds_loaded_model_free(diffusers);
}

int main(void)
{
    ds_error err;
    if (ds_cpu_backend_create(0, &cpu, &err) != DS_OK) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    RUN(test_layouts_agree);
    ds_backend_destroy(cpu);
    return test_summary();
}
