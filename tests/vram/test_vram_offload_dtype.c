/* A vram_config's offload dtype (issue 5, piece 3): a model whose Load asked for fp8 e4m3 storage
 * keeps its units in the manager's slow tier as fp8, converted once at registration, so every
 * forward computes with the weights rounded through fp8, as upstream's `.to(float8_e4m3fn)`;
 * with preparing_dtype fp8 too, the Linear weights stay fp8 in the fast tier.
 *
 * The golden seeded DiT (one block, bf16) runs through the manager with offload fp8 under budgets
 * 0 and unlimited; the expectation is computed without the manager: a copy of the model whose
 * every weight went bf16 -> e4m3 -> bf16 through the kernels' cast op, run by a plain forward.
 * The outputs must match byte for byte, the units' slow-tier bytes must be half of bf16 storage,
 * and a bf16 offload dtype (the file's own) must change nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/qwen_image_dit.h"
#include "test.h"
#include "tools/golden_model.h"
#include "vram/vram_config.h"
#include "vram/vram_fixture.h"
#include "vram/vram_manager.h"

#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"

static ds_backend *cpu;
static ds_loaded_model plain;   /* bf16 weights, no vram_config */
static ds_loaded_model managed; /* the same weights, vram_config offload fp8 */
static ds_loaded_model rounded; /* the same weights rounded through e4m3 by ds_cast */
static int ready;
static size_t weight_bytes;     /* bf16 bytes of every parameter */
static ds_tensor latents, prompt, timestep;
static ds_tensor want_plain, want_fp8;

static int build(ds_loaded_model *m)
{
    ds_golden_model_spec spec = {.model_class = DIT_CLASS,
                                 .kwargs_json = "{\"num_layers\": 1}",
                                 .bounds = ds_golden_bounds_qwen_image_dit,
                                 .seed = 2024};
    if (ds_golden_model_build(&spec, m) != 0)
        return 0;
    ds_golden_model_to_bf16(m);
    m->model_name = "qwen_image_dit";
    return 1;
}

/* `m` as a copy of `src`'s tree and bf16 data (seeding is the slow part: done once). */
static int clone(const ds_loaded_model *src, ds_loaded_model *m)
{
    ds_error err;
    memset(m, 0, sizeof *m);
    ds_state_dict_init(&m->params);
    if (ds_model_class_declare(src->cls, "{\"num_layers\": 1}", &m->params, &err) != DS_OK)
        return 0;
    m->cls = src->cls;
    m->model_name = src->model_name;
    for (size_t i = 0; i < m->params.count; i++) {
        ds_sd_entry *e = &m->params.entries[i];
        const ds_sd_entry *from = ds_state_dict_find(&src->params, e->name);
        if (!from)
            return 0;
        size_t bytes = ds_tensor_view_numel(&from->tensor) * ds_dtype_size(from->tensor.dtype);
        void *data = malloc(bytes);
        if (!data)
            return 0;
        memcpy(data, from->tensor.data, bytes);
        e->tensor.data = data;
        e->tensor.dtype = from->tensor.dtype;
        e->tensor.nbytes = bytes;
    }
    return 1;
}

/* Every tensor of `m` through e4m3 and back with the kernels' cast op, in place. */
static int round_through_fp8(ds_loaded_model *m, ds_error *err)
{
    for (size_t i = 0; i < m->params.count; i++) {
        ds_sd_entry *e = &m->params.entries[i];
        ds_tensor x = ds_tensor_wrap(cpu, DS_BF16, e->tensor.ndim, e->tensor.shape,
                                     (void *)e->tensor.data);
        ds_tensor f8;
        int rc = ds_tensor_alloc(cpu, DS_F8_E4M3, x.ndim, x.shape, &f8, err);
        if (rc != DS_OK)
            return rc;
        ds_cast_args down = {&x, &f8}, up = {&f8, &x};
        if ((rc = ds_cast(cpu, NULL, &down, err)) == DS_OK)
            rc = ds_cast(cpu, NULL, &up, err);
        ds_tensor_free(&f8);
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

static int input(ds_tensor *t, ds_dtype dtype, int ndim, const int64_t *shape, uint32_t seed)
{
    ds_error err;
    if (ds_tensor_alloc(cpu, dtype, ndim, shape, t, &err) != DS_OK)
        return 0;
    uint64_t n = ds_tensor_numel(t);
    uint16_t *h = t->data;
    uint32_t s = seed * 2654435761u + 1;
    for (uint64_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        h[i] = ds_f32_to_bf16(((float)(s >> 8) / 16777216.0f - 0.5f) * 3.4f);
    }
    return 1;
}

static int run_forward(const ds_loaded_model *m, ds_vram_manager *vram, ds_tensor *out,
                       ds_error *err)
{
    ds_step_context ctx = {.backend = cpu, .vram = vram};
    int rc = ds_tensor_alloc(cpu, DS_BF16, 4, latents.shape, out, err);
    if (rc != DS_OK)
        return rc;
    memset(out->data, 0xff, ds_tensor_nbytes(out));
    rc = ds_qwen_image_dit_forward(m, &ctx, &latents, &prompt, NULL, &timestep, out, err);
    if (rc != DS_OK)
        ds_tensor_free(out);
    return rc;
}

static void test_setup(void)
{
    ds_error err;
    REQUIRE(build(&plain) && clone(&plain, &managed) && clone(&plain, &rounded));
    for (size_t i = 0; i < plain.params.count; i++)
        weight_bytes += ds_tensor_view_numel(&plain.params.entries[i].tensor) * 2;
    int rc = ds_vram_config_parse("{\"offload_dtype\": \"float8_e4m3fn\", "
                                  "\"offload_device\": \"cpu\"}",
                                  DS_BF16, DS_VRAM_DEVICE_CPU, &managed.vram_config, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    REQUIRE(rc == DS_OK && managed.vram_config.managed);
    rc = round_through_fp8(&rounded, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    REQUIRE(rc == DS_OK);
    REQUIRE(input(&latents, DS_BF16, 4, (const int64_t[]){1, 16, 8, 8}, 1));
    REQUIRE(input(&prompt, DS_BF16, 3, (const int64_t[]){1, 8, 3584}, 2));
    REQUIRE(ds_tensor_alloc(cpu, DS_F32, 1, (const int64_t[]){1}, &timestep, &err) == DS_OK);
    *(float *)timestep.data = 500.0f;
    rc = run_forward(&plain, NULL, &want_plain, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    REQUIRE(rc == DS_OK);
    rc = run_forward(&rounded, NULL, &want_fp8, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    REQUIRE(rc == DS_OK);
    /* Not vacuous: fp8 rounding changes the output. */
    CHECK(memcmp(want_plain.data, want_fp8.data, ds_tensor_nbytes(&want_fp8)) != 0);
    ready = 1;
}

/* The fp8-offload model through a manager of `budget`: equal to the rounded model's forward,
 * units half the bf16 bytes in the slow tier. */
static void run_fp8(const char *label, size_t budget)
{
    ds_error err;
    REQUIRE(ready);
    ds_vram_manager *mgr;
    REQUIRE(ds_vram_manager_create(cpu, budget, 2, &mgr, &err) == DS_OK);
    for (int pass = 0; pass < 2; pass++) {
        ds_tensor out;
        int rc = run_forward(&managed, mgr, &out, &err);
        CHECK_MSG(rc == DS_OK, "%s: %s", label, err.message);
        if (rc != DS_OK)
            break;
        CHECK_MSG(memcmp(out.data, want_fp8.data, ds_tensor_nbytes(&want_fp8)) == 0,
                  "%s, pass %d: differs from the forward over fp8-rounded weights", label, pass);
        ds_tensor_free(&out);
    }
    ds_vram_model_stats ms;
    CHECK(ds_vram_owner_stats(mgr, &managed, &ms));
    fprintf(stderr, "  %s: %zu units, slow tier %zu bytes (bf16 %zu), fast tier total %zu\n",
            label, ms.unit_count, ms.slow_bytes_total, weight_bytes, ms.fast_bytes_total);
    CHECK(ms.slow_bytes_total * 2 == weight_bytes);
    /* The fast tier holds the computation's bf16 weights. */
    CHECK(ms.fast_bytes_total >= weight_bytes);
    ds_vram_stats st;
    ds_vram_stats_get(mgr, &st);
    if (budget != DS_VRAM_UNLIMITED && budget != 0)
        CHECK(st.peak_bytes <= budget);
    ds_vram_owner_remove(mgr, &managed);
    managed.release_hook = NULL;
    ds_vram_manager_destroy(mgr);
}

static void test_fp8_budget_0(void) { run_fp8("fp8, budget 0", 0); }
static void test_fp8_unlimited(void) { run_fp8("fp8, unlimited", DS_VRAM_UNLIMITED); }

/* An offload dtype equal to the file's (bf16) keeps the mapped bytes: same output, same bytes. */
static void test_bf16_offload(void)
{
    ds_error err;
    REQUIRE(ready);
    ds_vram_config fp8 = managed.vram_config;
    int rc = ds_vram_config_parse("{\"offload_dtype\": \"bfloat16\", \"offload_device\": \"cpu\"}",
                                  DS_BF16, DS_VRAM_DEVICE_CPU, &managed.vram_config, &err);
    REQUIRE(rc == DS_OK);
    ds_vram_manager *mgr;
    REQUIRE(ds_vram_manager_create(cpu, DS_VRAM_UNLIMITED, 2, &mgr, &err) == DS_OK);
    ds_tensor out;
    rc = run_forward(&managed, mgr, &out, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc == DS_OK) {
        CHECK(memcmp(out.data, want_plain.data, ds_tensor_nbytes(&want_plain)) == 0);
        ds_tensor_free(&out);
    }
    ds_vram_model_stats ms;
    CHECK(ds_vram_owner_stats(mgr, &managed, &ms));
    CHECK(ms.slow_bytes_total == weight_bytes);
    ds_vram_owner_remove(mgr, &managed);
    managed.release_hook = NULL;
    ds_vram_manager_destroy(mgr);
    managed.vram_config = fp8;
}

/* preparing_dtype fp8 as well (upstream's low-VRAM fp8 config): the Linear weights stay fp8 in
 * the fast tier, so a forward moves about half the bytes of the offload-only config, and the
 * output is byte-identical (the kernels' linear casts fp8 to the activations' dtype exactly, as
 * upstream's computation copy does). */
static void test_fp8_fast_tier(void)
{
    ds_error err;
    REQUIRE(ready);
    ds_vram_config offload_only = managed.vram_config;
    int rc = ds_vram_config_parse(FX_FP8_VRAM_CONFIG, DS_BF16, DS_VRAM_DEVICE_CPU,
                                  &managed.vram_config, &err);
    REQUIRE(rc == DS_OK);
    CHECK(ds_vram_config_check_chain(&managed.vram_config, &err) == DS_OK);
    CHECK(ds_vram_config_linear_fast_dtype(&managed.vram_config) == DS_F8_E4M3);
    size_t budgets[] = {0, weight_bytes / 4, DS_VRAM_UNLIMITED};
    for (size_t b = 0; b < sizeof budgets / sizeof budgets[0]; b++) {
        ds_vram_manager *mgr;
        REQUIRE(ds_vram_manager_create(cpu, budgets[b], 2, &mgr, &err) == DS_OK);
        ds_tensor out;
        rc = run_forward(&managed, mgr, &out, &err);
        CHECK_MSG(rc == DS_OK, "budget %zu: %s", budgets[b], err.message);
        if (rc == DS_OK) {
            CHECK_MSG(memcmp(out.data, want_fp8.data, ds_tensor_nbytes(&want_fp8)) == 0,
                      "budget %zu: fp8 fast tier differs from bf16 over fp8-rounded weights",
                      budgets[b]);
            ds_tensor_free(&out);
        }
        ds_vram_model_stats ms;
        CHECK(ds_vram_owner_stats(mgr, &managed, &ms));
        fprintf(stderr, "  fp8 fast tier, budget %zu: fast tier total %zu bytes (bf16 %zu), "
                "moved %llu\n", budgets[b], ms.fast_bytes_total, weight_bytes,
                (unsigned long long)ms.bytes_moved);
        /* Linear weights are nearly all of a DiT's bytes: at most 52 % of bf16 (biases, norms
         * and alignment stay), and every copy moved the fp8 bytes. */
        CHECK(ms.fast_bytes_total * 100 <= weight_bytes * 52);
        if (budgets[b] == DS_VRAM_UNLIMITED)
            CHECK(ms.bytes_moved == ms.fast_bytes_total); /* each unit once, at its fp8 size */
        ds_vram_stats st;
        ds_vram_stats_get(mgr, &st);
        if (budgets[b] != DS_VRAM_UNLIMITED && budgets[b] != 0)
            CHECK(st.peak_bytes <= budgets[b]);
        ds_vram_owner_remove(mgr, &managed);
        managed.release_hook = NULL;
        ds_vram_manager_destroy(mgr);
    }
    managed.vram_config = offload_only;
}

/* Chains of dtypes the two tiers cannot reproduce are refused, naming the fields. */
static void test_chain_refused(void)
{
    ds_error err;
    ds_vram_config cfg;
    REQUIRE(ds_vram_config_parse("{\"offload_dtype\": \"bfloat16\", \"offload_device\": \"cpu\", "
                                 "\"onload_dtype\": \"float16\"}",
                                 DS_BF16, DS_VRAM_DEVICE_CPU, &cfg, &err) == DS_OK);
    CHECK(ds_vram_config_check_chain(&cfg, &err) == DS_ERR_UNIMPLEMENTED);
    CHECK_CONTAINS(err.message, "onload_dtype float16 differs from offload_dtype bfloat16");
    REQUIRE(ds_vram_config_parse("{\"offload_dtype\": \"bfloat16\", \"offload_device\": \"cpu\", "
                                 "\"onload_dtype\": \"float8_e4m3fn\", "
                                 "\"preparing_dtype\": \"float8_e4m3fn\"}",
                                 DS_BF16, DS_VRAM_DEVICE_CPU, &cfg, &err) == DS_OK);
    CHECK(ds_vram_config_check_chain(&cfg, &err) == DS_ERR_UNIMPLEMENTED);
    CHECK_CONTAINS(err.message, "preparing_dtype float8_e4m3fn differs from offload_dtype "
                                "bfloat16 and from computation_dtype bfloat16");
    /* Upstream's disk-offload example: file dtype on disk, bf16 on the device. */
    REQUIRE(ds_vram_config_parse("{\"offload_dtype\": \"disk\", \"offload_device\": \"disk\", "
                                 "\"onload_dtype\": \"disk\", \"onload_device\": \"disk\"}",
                                 DS_BF16, DS_VRAM_DEVICE_CPU, &cfg, &err) == DS_OK);
    CHECK(ds_vram_config_check_chain(&cfg, &err) == DS_OK);
    CHECK(ds_vram_config_linear_fast_dtype(&cfg) == DS_DTYPE_INVALID);
}

/* The manager refuses an offload dtype a tensor cannot take, naming the unit and tensor. */
static void test_offload_refused(void)
{
    ds_error err;
    ds_vram_manager *mgr;
    REQUIRE(ds_vram_manager_create(cpu, DS_VRAM_UNLIMITED, 0, &mgr, &err) == DS_OK);
    ds_vram_model *vm;
    REQUIRE(ds_vram_model_add(mgr, "ints", DS_F32, &vm, &err) == DS_OK);
    int32_t ids[4] = {1, 2, 3, 4};
    ds_vram_tensor_source src = {.name = "ids", .dtype = DS_I32, .ndim = 1, .shape = {4},
                                 .data = ids, .target = DS_I32, .offload = DS_F8_E4M3};
    size_t index;
    CHECK(ds_vram_unit_add(vm, "table", &src, 1, &index, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "unit 'table', tensor 'ids': cannot offload");
    ds_vram_manager_destroy(mgr);
}

int main(void)
{
    ds_error err;
    if (ds_cpu_backend_create(0, &cpu, &err) != DS_OK) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    RUN(test_setup);
    RUN(test_fp8_budget_0);
    RUN(test_fp8_unlimited);
    RUN(test_bf16_offload);
    RUN(test_fp8_fast_tier);
    RUN(test_chain_refused);
    RUN(test_offload_refused);
    ds_tensor_free(&want_plain);
    ds_tensor_free(&want_fp8);
    ds_tensor_free(&latents);
    ds_tensor_free(&prompt);
    ds_tensor_free(&timestep);
    ds_golden_model_free(&plain);
    ds_golden_model_free(&managed);
    ds_golden_model_free(&rounded);
    ds_backend_destroy(cpu);
    return test_summary();
}
