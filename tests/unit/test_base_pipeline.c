/* diffusion/base_pipeline.c against upstream's BasePipeline helpers themselves (tests/golden/
 * make_base_pipeline_golden.py): the CFG combination, vae_output_to_image (with NaN, infinities
 * and the clip edges) and preprocess_image, bit for bit in f32 and bf16. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/safetensors.h"
#include "kernels/ops.h"
#include "diffusion/base_pipeline.h"
#include "test.h"

static ds_safetensors *golden;
static ds_backend *cpu;

static const ds_tensor_view *golden_view(const char *name)
{
    const ds_sd_entry *e = ds_state_dict_find(&golden->tensors, name);
    if (!e)
        fprintf(stderr, "golden tensor %s is missing\n", name);
    return e ? &e->tensor : NULL;
}

static int same_elements(const void *got, const ds_tensor_view *want, size_t es, const char *what)
{
    for (size_t i = 0; i < want->nbytes; i += es)
        if (memcmp((const char *)got + i, (const char *)want->data + i, es) != 0) {
            fprintf(stderr, "%s: element %zu differs\n", what, i / es);
            return 0;
        }
    return 1;
}

static void run_cfg(ds_dtype dtype, const char *key)
{
    char name[64];
    snprintf(name, sizeof name, "cfg.%s.posi", key);
    const ds_tensor_view *posi = golden_view(name);
    snprintf(name, sizeof name, "cfg.%s.nega", key);
    const ds_tensor_view *nega = golden_view(name);
    REQUIRE(posi && nega && posi->dtype == dtype);
    size_t es = ds_dtype_size(dtype), count = (size_t)(posi->nbytes / es);
    void *out = malloc(posi->nbytes);
    REQUIRE(out);
    const double scales[] = {4.0, 7.5, 3.3, 1.7};
    ds_error err;
    for (size_t k = 0; k < 4; k++) {
        snprintf(name, sizeof name, "cfg.%s.c%d", key, (int)lround(scales[k] * 10));
        const ds_tensor_view *want = golden_view(name);
        CHECK(ds_cfg_combine(dtype, posi->data, nega->data, scales[k], out, count, &err) ==
              DS_OK);
        CHECK_MSG(want && same_elements(out, want, es, name), "%s", name);
        /* In place over either input. */
        memcpy(out, posi->data, posi->nbytes);
        CHECK(ds_cfg_combine(dtype, out, nega->data, scales[k], out, count, &err) == DS_OK);
        CHECK_MSG(want && same_elements(out, want, es, name), "%s aliasing posi", name);
        memcpy(out, nega->data, nega->nbytes);
        CHECK(ds_cfg_combine(dtype, posi->data, out, scales[k], out, count, &err) == DS_OK);
        CHECK_MSG(want && same_elements(out, want, es, name), "%s aliasing nega", name);
    }
    free(out);
}

static void test_cfg_f32(void) { run_cfg(DS_F32, "f32"); }
static void test_cfg_bf16(void) { run_cfg(DS_BF16, "bf16"); }

static void run_vae_output(ds_dtype dtype, const char *key)
{
    char name[64];
    snprintf(name, sizeof name, "vae.%s.in", key);
    const ds_tensor_view *in = golden_view(name);
    snprintf(name, sizeof name, "vae.%s.out", key);
    const ds_tensor_view *want = golden_view(name);
    REQUIRE(in && want && in->dtype == dtype && in->ndim == 4 && want->ndim == 3);
    ds_tensor image = ds_tensor_wrap(cpu, dtype, 4, in->shape, (void *)in->data);
    uint8_t *rgb = malloc((size_t)want->nbytes);
    REQUIRE(rgb);
    ds_error err;
    CHECK(ds_vae_output_to_image(&image, rgb, &err) == DS_OK);
    CHECK_MSG(same_elements(rgb, want, 1, name), "%s", name);
    free(rgb);
}

static void test_vae_output_f32(void) { run_vae_output(DS_F32, "f32"); }
static void test_vae_output_bf16(void) { run_vae_output(DS_BF16, "bf16"); }

static void test_preprocess(void)
{
    const ds_tensor_view *rgb = golden_view("pre.rgb");
    REQUIRE(rgb && rgb->ndim == 3);
    const ds_dtype dtypes[] = {DS_F32, DS_BF16};
    const char *keys[] = {"pre.f32", "pre.bf16"};
    for (int d = 0; d < 2; d++) {
        const ds_tensor_view *want = golden_view(keys[d]);
        REQUIRE(want && want->dtype == dtypes[d] && want->ndim == 4);
        void *out = malloc((size_t)want->nbytes);
        REQUIRE(out);
        ds_error err;
        CHECK(ds_preprocess_image(rgb->data, rgb->shape[0], rgb->shape[1], dtypes[d], out,
                                  &err) == DS_OK);
        CHECK_MSG(same_elements(out, want, ds_dtype_size(dtypes[d]), keys[d]), "%s", keys[d]);
        free(out);
    }
}

static void test_bad_arguments(void)
{
    ds_error err;
    float a[2] = {0}, b[2] = {0}, o[2];
    CHECK(ds_cfg_combine(DS_F16, a, b, 4.0, o, 2, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "cfg combine: dtype f16 is not supported (expected f32 or bf16)");
    CHECK(ds_cfg_combine(DS_F32, a, b, NAN, o, 2, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "cfg combine: cfg_scale nan is not finite");
    CHECK(ds_cfg_combine(DS_F32, a, NULL, 4.0, o, 2, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "cfg combine: nega is NULL");

    float pixels[1 * 3 * 2 * 2] = {0};
    uint8_t rgb[12];
    int64_t good[4] = {1, 3, 2, 2};
    ds_tensor image = ds_tensor_wrap(cpu, DS_F32, 4, good, pixels);
    CHECK(ds_vae_output_to_image(&image, rgb, &err) == DS_OK);
    CHECK(rgb[0] == 127); /* (0 + 1) * 127.5 truncates */
    int64_t batch2[4] = {2, 3, 2, 2};
    image = ds_tensor_wrap(cpu, DS_F32, 4, batch2, pixels);
    CHECK(ds_vae_output_to_image(&image, rgb, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "vae_output_to_image: image shape [2, 3, 2, 2] is not [1, 3, H, W]");
    int64_t three[3] = {3, 2, 2};
    image = ds_tensor_wrap(cpu, DS_F32, 3, three, pixels);
    CHECK(ds_vae_output_to_image(&image, rgb, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "image shape [3, 2, 2] is not [1, 3, H, W]");
    int64_t four_ch[4] = {1, 4, 1, 3};
    image = ds_tensor_wrap(cpu, DS_F32, 4, four_ch, pixels);
    CHECK(ds_vae_output_to_image(&image, rgb, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "[1, 4, 1, 3]");
    image = ds_tensor_wrap(cpu, DS_F16, 4, good, pixels);
    CHECK(ds_vae_output_to_image(&image, rgb, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "vae_output_to_image: image dtype f16 is not supported");
    image = ds_tensor_wrap(cpu, DS_F32, 4, good, pixels);
    CHECK(ds_vae_output_to_image(&image, NULL, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "vae_output_to_image: rgb is NULL");
    CHECK(ds_vae_output_to_image(NULL, rgb, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "vae_output_to_image: image is NULL");

    uint8_t in[12] = {0};
    CHECK(ds_preprocess_image(in, 2, 2, DS_F16, o, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "preprocess_image: dtype f16 is not supported");
    CHECK(ds_preprocess_image(in, 0, 2, DS_F32, o, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "preprocess_image: size 0 x 2 is not positive");
    CHECK(ds_preprocess_image(in, INT64_MAX / 2, 4, DS_F32, o, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "does not fit in memory");
    CHECK(ds_preprocess_image(NULL, 2, 2, DS_F32, o, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "preprocess_image: rgb is NULL");
}

int main(void)
{
    ds_error err;
    const char *root = getenv("DS_TEST_DATA");
    char path[1024];
    snprintf(path, sizeof path, "%s/golden/base_pipeline.safetensors",
             root ? root : "tests/data");
    if (ds_cpu_backend_create(0, &cpu, &err) != DS_OK ||
        ds_safetensors_open(path, 0, &golden, &err) != DS_OK) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    RUN(test_cfg_f32);
    RUN(test_cfg_bf16);
    RUN(test_vae_output_f32);
    RUN(test_vae_output_bf16);
    RUN(test_preprocess);
    RUN(test_bad_arguments);
    ds_safetensors_close(golden);
    ds_backend_destroy(cpu);
    return test_summary();
}
