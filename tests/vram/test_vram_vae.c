/* The Qwen-Image VAE's decode and encode streamed through the VRAM manager: the golden seeded
 * model (the full real config, seed 2027, f32, as tests/models/test_qwen_image_vae_golden.c
 * builds it) decodes the golden latents [1, 16, 8, 8] and encodes the golden image
 * [1, 3, 64, 64] under budgets of 0, 25 %, 50 % and 100 % of its units' bytes and unlimited.
 * Every output must equal the call without a manager byte for byte; the peak (units,
 * activations, kept buffers) must stay within a non-zero budget. A budget below the largest
 * unit fails with RESOURCE_EXHAUSTED naming it, and the manager keeps working; a vram_config
 * offload dtype (bf16) rounds the weights through it as upstream's does. One manager
 * serves every run, its budget changed between them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "core/safetensors.h"
#include "kernels/ops.h"
#include "models/qwen_image_vae.h"
#include "golden_test.h"
#include "test.h"
#include "vram/release_hook_check.h"
#include "tools/golden_model.h"
#include "vram/vram_config.h"
#include "vram/vram_manager.h"

#define VAE_CLASS "diffsynth.models.qwen_image_vae.QwenImageVAE"
#define SEED 2027
#define GOLDEN "golden/qwen_image_vae.safetensors"
/* Units: decode's 21 layers, then encode's 17 (the golden test's progress counts). */
#define DECODE_UNITS 21
#define ENCODE_UNITS 17
#define MID_UNIT "decoder.mid_block.resnets.0."

static ds_backend *cpu;
static ds_safetensors *golden;
static ds_loaded_model model;
static int model_ready;
static size_t unit_bytes; /* every parameter but the resamplers' time_conv (never run) */
static size_t mid_bytes;  /* the decoder's first mid-block residual: a largest unit */
static ds_tensor decoded, encoded; /* the calls without a manager */
static ds_vram_manager *mgr;

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int build_model(void)
{
    ds_golden_model_spec spec = {
        .model_class = VAE_CLASS,
        .bounds = ds_golden_bounds_qwen_image_vae,
        .seed = SEED,
    };
    if (ds_golden_model_build(&spec, &model) != 0)
        return 0;
    for (size_t i = 0; i < model.params.count; i++) {
        const ds_sd_entry *e = &model.params.entries[i];
        if (strstr(e->name, "time_conv."))
            continue;
        unit_bytes += e->tensor.nbytes;
        if (starts_with(e->name, MID_UNIT))
            mid_bytes += e->tensor.nbytes;
    }
    model_ready = 1;
    return 1;
}

static ds_tensor golden_tensor(const char *name)
{
    return test_golden_tensor(cpu, golden, name);
}

/* decode of "latents" or encode of "image" with `vram` (NULL: none) into *out (allocated here,
 * the golden output's shape). */
static int run_call(int decode, ds_vram_manager *vram, ds_tensor *out, ds_error *err)
{
    ds_step_context ctx = {.backend = cpu, .vram = vram};
    ds_tensor x = golden_tensor(decode ? "latents" : "image");
    ds_tensor want = golden_tensor(decode ? "decode_f32" : "encode_f32");
    if (!x.data || !want.data)
        return ds_error_set(err, DS_ERR_NOT_FOUND, "golden tensors missing");
    int rc = ds_tensor_alloc(cpu, DS_F32, 4, want.shape, out, err);
    if (rc != DS_OK)
        return rc;
    rc = decode ? ds_qwen_image_vae_decode(&model, &ctx, &x, out, err)
                : ds_qwen_image_vae_encode(&model, &ctx, &x, out, err);
    if (rc != DS_OK)
        ds_tensor_free(out);
    return rc;
}

static void test_reference(void)
{
    ds_error err;
    REQUIRE(model_ready);
    for (int decode = 1; decode >= 0; decode--) {
        ds_tensor *ref = decode ? &decoded : &encoded;
        int rc = run_call(decode, NULL, ref, &err);
        CHECK_MSG(rc == DS_OK, "%s", err.message);
        REQUIRE(rc == DS_OK);
        ds_tensor want = golden_tensor(decode ? "decode_f32" : "encode_f32");
        double rel = ds_golden_rel_l2(ref, &want);
        fprintf(stderr, "  no manager: %s, relative L2 vs upstream %.3e\n",
                decode ? "decode" : "encode", rel);
        CHECK(rel < 1e-4);
    }
}

/* Decode then encode under `budget` on the shared manager: bit-identical, peak within it. */
static void run_budget(const char *label, size_t budget)
{
    ds_error err;
    REQUIRE(decoded.data && encoded.data);
    if (!mgr)
        REQUIRE(ds_vram_manager_create(cpu, budget, 2, &mgr, &err) == DS_OK);
    REQUIRE(ds_vram_set_budget(mgr, budget, &err) == DS_OK);
    for (int decode = 1; decode >= 0; decode--) {
        const ds_tensor *ref = decode ? &decoded : &encoded;
        ds_vram_stats before, st;
        ds_vram_stats_get(mgr, &before);
        ds_tensor out;
        int rc = run_call(decode, mgr, &out, &err);
        CHECK_MSG(rc == DS_OK, "%s %s: %s", label, decode ? "decode" : "encode", err.message);
        REQUIRE(rc == DS_OK);
        CHECK(memcmp(out.data, ref->data, ds_tensor_nbytes(ref)) == 0);
        ds_tensor_free(&out);
        ds_vram_stats_get(mgr, &st);
        fprintf(stderr,
                "  %-9s %s: peak %zu of %zu bytes, moved %llu, loads %llu, prefetches %llu, "
                "hits %llu, evictions %llu\n",
                label, decode ? "decode" : "encode", st.peak_bytes, budget,
                (unsigned long long)(st.bytes_moved - before.bytes_moved),
                (unsigned long long)(st.loads - before.loads),
                (unsigned long long)(st.prefetches - before.prefetches),
                (unsigned long long)(st.hits - before.hits),
                (unsigned long long)(st.evictions - before.evictions));
        if (budget != 0)
            CHECK(st.peak_bytes <= budget);
        CHECK(st.activation_bytes == 0);
    }
}

static void test_budget_0(void) { run_budget("0", 0); }
static void test_budget_25(void) { run_budget("25 %", unit_bytes / 4); }
static void test_budget_50(void) { run_budget("50 %", unit_bytes / 2); }
static void test_budget_100(void) { run_budget("100 %", unit_bytes); }

static void test_unlimited(void)
{
    run_budget("unlimited", DS_VRAM_UNLIMITED);
    ds_vram_model_stats ms;
    REQUIRE(ds_vram_owner_stats(mgr, &model, &ms));
    CHECK(ms.unit_count == DECODE_UNITS + ENCODE_UNITS);
    CHECK(ms.slow_bytes_total == unit_bytes);
    CHECK(ms.fast_bytes == ms.fast_bytes_total);
}

/* A budget one byte below the largest unit: the call fails naming the unit, holds nothing
 * afterwards, and the next call under a budget that fits succeeds (run before the larger
 * budgets, whose peaks would exceed that one). */
static void test_too_small(void)
{
    ds_error err;
    REQUIRE(mgr && mid_bytes > 0);
    REQUIRE(ds_vram_set_budget(mgr, mid_bytes - 1, &err) == DS_OK);
    for (int decode = 1; decode >= 0; decode--) {
        ds_tensor out;
        int rc = run_call(decode, mgr, &out, &err);
        CHECK(rc == DS_ERR_RESOURCE_EXHAUSTED);
        if (rc == DS_OK) {
            ds_tensor_free(&out);
            continue;
        }
        CHECK_CONTAINS(err.message, decode ? "decode: " MID_UNIT : "encode: encoder.down_blocks.");
        ds_vram_stats st;
        ds_vram_stats_get(mgr, &st);
        CHECK(st.activation_bytes == 0);
        CHECK(st.resident_bytes + st.cached_bytes < mid_bytes);
    }
    run_budget("after", unit_bytes / 4);
}

/* The model's release hook (run by ds_loaded_model_free) drops its units. */
static void test_release_hook(void) { check_release_hook(mgr, &model); }

/* A vram_config offload dtype (bf16 storage of the f32 weights) rounds every unit through it:
 * decode under budget 0 equals the call without a manager on weights rounded to bf16 and back,
 * and differs from the f32 decode. Runs last: it rounds the model's weights in place. */
static void test_offload_bf16(void)
{
    ds_error err;
    REQUIRE(mgr && decoded.data && !model.release_hook);
    int rc = ds_vram_config_parse("{\"offload_dtype\": \"bfloat16\", \"offload_device\": \"cpu\"}",
                                  DS_F32, DS_VRAM_DEVICE_CPU, &model.vram_config, &err);
    REQUIRE(rc == DS_OK && model.vram_config.managed);
    REQUIRE(ds_vram_set_budget(mgr, 0, &err) == DS_OK);
    ds_tensor managed, rounded;
    rc = run_call(1, mgr, &managed, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    REQUIRE(rc == DS_OK);
    ds_vram_model_stats ms;
    CHECK(ds_vram_owner_stats(mgr, &model, &ms));
    CHECK(ms.slow_bytes_total == unit_bytes / 2);
    REQUIRE(model.release_hook);
    model.release_hook(model.release_hook_ctx, &model);
    model.release_hook = NULL;
    for (size_t i = 0; i < model.params.count; i++) {
        ds_sd_entry *e = &model.params.entries[i];
        float *v = (float *)e->tensor.data;
        for (uint64_t k = 0; k < ds_tensor_view_numel(&e->tensor); k++)
            v[k] = ds_bf16_to_f32(ds_f32_to_bf16(v[k]));
    }
    rc = run_call(1, NULL, &rounded, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc == DS_OK) {
        CHECK(memcmp(managed.data, rounded.data, ds_tensor_nbytes(&rounded)) == 0);
        CHECK(memcmp(managed.data, decoded.data, ds_tensor_nbytes(&decoded)) != 0);
        ds_tensor_free(&rounded);
    }
    ds_tensor_free(&managed);
}

int main(void)
{
    ds_error err;
    const char *root = getenv("DS_TEST_DATA");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", root ? root : "tests/data", GOLDEN);
    if (ds_cpu_backend_create(0, &cpu, &err) != DS_OK ||
        ds_safetensors_open(path, 0, &golden, &err) != DS_OK) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    if (!build_model())
        fprintf(stderr, "setup: could not build the seeded model\n");
    fprintf(stderr, "  seeded f32 weights: units %zu bytes, largest unit %zu bytes\n", unit_bytes,
            mid_bytes);
    RUN(test_reference);
    /* Budgets rising: the peak counts since the manager's creation. */
    RUN(test_budget_0);
    RUN(test_too_small);
    RUN(test_budget_25);
    RUN(test_budget_50);
    RUN(test_budget_100);
    RUN(test_unlimited);
    RUN(test_release_hook);
    RUN(test_offload_bf16);
    ds_vram_manager_destroy(mgr);
    ds_tensor_free(&decoded);
    ds_tensor_free(&encoded);
    if (model_ready)
        ds_golden_model_free(&model);
    ds_safetensors_close(golden);
    ds_backend_destroy(cpu);
    return test_summary();
}
