/* A DiT + Blockwise ControlNet forward streamed through the VRAM manager (issue 5): both
 * models page their weights as units through one budget, the ControlNet's blocks beside the
 * DiT's. A 2-block DiT at full width and a 3-block ControlNet (the DiT uses two of its blocks),
 * bf16 weights from a fixed generator, run without a manager, then under budgets of 0, 25 %,
 * 50 % and 100 % of both models' weight bytes and unlimited: every output equals the unmanaged
 * one byte for byte, the peak (units, kept buffers and activations) stays within each budget,
 * and the ControlNet's units really went through the manager. A budget below the largest unit
 * fails with RESOURCE_EXHAUSTED, returns every reservation, and the manager serves the next run.
 *
 * One manager serves every run, its budget raised between them (a model is registered in one
 * manager at a time); budgets rise, so the lifetime peak is each run's. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "models/qwen_image_controlnet.h"
#include "models/qwen_image_dit.h"
#include "test.h"
#include "vram/vram_manager.h"

#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"

static ds_backend *cpu;
static ds_loaded_model dit, net; /* params bound to malloc'd bf16 buffers */
static int ready;
static size_t weight_bytes;      /* stored bytes of both models */
static ds_tensor latents, prompt, timestep, conditioning;
static ds_tensor reference;      /* the forward without a manager */
static ds_vram_manager *mgr;

static uint64_t splitmix(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in center +- bound, rounded to bf16. */
static void fill_bf16(uint16_t *out, uint64_t n, uint64_t seed, float bound, float center)
{
    for (uint64_t i = 0; i < n; i++) {
        double u = (double)(splitmix(&seed) >> 11) * 0x1.0p-53;
        out[i] = ds_f32_to_bf16(center + (float)(2.0 * u - 1.0) * bound);
    }
}

static void free_model(ds_loaded_model *m)
{
    for (size_t i = 0; i < m->params.count; i++)
        free((void *)m->params.entries[i].tensor.data);
    ds_state_dict_free(&m->params);
}

/* The class's tree for `kwargs`, weights in +-0.02 and norm weights 1 +- 0.1, bf16. */
static int build(ds_loaded_model *m, const char *cls_name, const char *name, const char *kwargs,
                 uint64_t seed)
{
    ds_error err;
    const ds_model_class *cls = ds_model_class_find(cls_name);
    memset(m, 0, sizeof *m);
    ds_state_dict_init(&m->params);
    if (!cls || ds_model_class_declare(cls, kwargs, &m->params, &err) != DS_OK)
        return 0;
    m->cls = cls;
    m->model_name = (char *)name;
    for (size_t i = 0; i < m->params.count; i++) {
        ds_sd_entry *e = &m->params.entries[i];
        uint64_t n = ds_tensor_view_numel(&e->tensor);
        uint16_t *data = malloc(n * 2);
        if (!data)
            return 0;
        int norm = e->tensor.ndim == 1 && (strstr(e->name, "norm") || strstr(e->name, "rms"));
        fill_bf16(data, n, seed + i, norm ? 0.1f : 0.02f, norm ? 1.0f : 0.0f);
        e->tensor.data = data;
        e->tensor.dtype = DS_BF16;
        e->tensor.nbytes = n * 2;
        weight_bytes += n * 2;
    }
    return 1;
}

static int input(ds_tensor *t, ds_dtype dtype, int ndim, const int64_t *shape, uint64_t seed)
{
    ds_error err;
    if (ds_tensor_alloc(cpu, dtype, ndim, shape, t, &err) != DS_OK)
        return 0;
    fill_bf16(t->data, (uint64_t)ds_tensor_numel(t), seed, 1.7f, 0.0f);
    return 1;
}

static void test_build(void)
{
    REQUIRE(build(&dit, DIT_CLASS, "qwen_image_dit", "{\"num_layers\": 2}", 7));
    REQUIRE(build(&net, DS_QWEN_IMAGE_CONTROLNET_CLASS, "qwen_image_blockwise_controlnet",
                  "{\"num_layers\": 3}", 1000));
    REQUIRE(input(&latents, DS_BF16, 4, (const int64_t[]){1, 16, 8, 8}, 1));
    REQUIRE(input(&prompt, DS_BF16, 3, (const int64_t[]){1, 8, 3584}, 2));
    REQUIRE(input(&conditioning, DS_BF16, 4, (const int64_t[]){1, 16, 8, 8}, 3));
    ds_error err;
    REQUIRE(ds_tensor_alloc(cpu, DS_F32, 1, (const int64_t[]){1}, &timestep, &err) == DS_OK);
    *(float *)timestep.data = 500.0f;
    ready = 1;
}

/* The forward with the ControlNet at scale 0.75 (or without it), `vram` NULL: no manager. */
static int run_forward(ds_vram_manager *vram, int with_controlnet, ds_tensor *out,
                       ds_error *err)
{
    ds_step_context ctx = {.backend = cpu, .vram = vram};
    ds_qwen_image_dit_controlnet cn = {.model = &net, .conditioning = &conditioning,
                                       .scale = 0.75f};
    int rc = ds_tensor_alloc(cpu, DS_BF16, 4, latents.shape, out, err);
    if (rc != DS_OK)
        return rc;
    memset(out->data, 0xff, ds_tensor_nbytes(out));
    rc = ds_qwen_image_dit_forward_controlnet(&dit, &ctx, &latents, &prompt, NULL, &timestep,
                                              with_controlnet ? &cn : NULL, out, err);
    if (rc != DS_OK)
        ds_tensor_free(out);
    return rc;
}

static void test_reference(void)
{
    ds_error err;
    REQUIRE(ready);
    int rc = run_forward(NULL, 1, &reference, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    REQUIRE(rc == DS_OK);
    /* Finite, and the ControlNet changes it. */
    uint64_t n = (uint64_t)ds_tensor_numel(&reference);
    int finite = 1;
    for (uint64_t i = 0; i < n; i++)
        finite &= isfinite(ds_load_f64(reference.data, DS_BF16, i));
    CHECK(finite);
    ds_tensor plain;
    REQUIRE(run_forward(NULL, 0, &plain, &err) == DS_OK);
    CHECK(memcmp(plain.data, reference.data, ds_tensor_nbytes(&plain)) != 0);
    ds_tensor_free(&plain);
}

/* A budget below the DiT's largest unit: RESOURCE_EXHAUSTED, every reservation returned (the
 * DiT's and the ControlNet's), the manager usable afterwards. */
static void test_budget_too_small(void)
{
    ds_error err;
    REQUIRE(reference.data);
    REQUIRE(ds_vram_manager_create(cpu, 96u << 20, 2, &mgr, &err) == DS_OK);
    ds_tensor out;
    int rc = run_forward(mgr, 1, &out, &err);
    CHECK(rc == DS_ERR_RESOURCE_EXHAUSTED);
    CHECK_CONTAINS(err.message, "unit 'transformer_blocks.0.modulation'");
    ds_vram_stats st;
    ds_vram_stats_get(mgr, &st);
    CHECK(st.activation_bytes == 0);
    CHECK(st.peak_bytes <= 96u << 20);
    /* The ControlNet was registered and streamed its img_in before the blocks failed. */
    ds_vram_model_stats ms;
    CHECK(ds_vram_owner_stats(mgr, &net, &ms) && ms.unit_count == 4 && ms.loads == 1);
}

/* One run under `budget`: bit-identical, peak within the budget, the ControlNet streamed. */
static void run_budget(const char *label, size_t budget)
{
    ds_error err;
    REQUIRE(mgr && reference.data);
    REQUIRE(ds_vram_set_budget(mgr, budget, &err) == DS_OK);
    ds_vram_model_stats before, after;
    ds_vram_owner_stats(mgr, &net, &before);
    ds_tensor out;
    int rc = run_forward(mgr, 1, &out, &err);
    CHECK_MSG(rc == DS_OK, "%s: %s", label, err.message);
    if (rc != DS_OK)
        return;
    CHECK_MSG(memcmp(out.data, reference.data, ds_tensor_nbytes(&out)) == 0,
              "%s: the output differs from the unmanaged forward", label);
    ds_tensor_free(&out);
    ds_vram_stats st;
    ds_vram_stats_get(mgr, &st);
    REQUIRE(ds_vram_owner_stats(mgr, &net, &after));
    fprintf(stderr, "  %-9s peak %zu of %zu bytes; ControlNet: %llu loads, %llu hits, %llu "
            "evictions\n",
            label, st.peak_bytes, budget, (unsigned long long)(after.loads - before.loads),
            (unsigned long long)(after.hits - before.hits),
            (unsigned long long)(after.evictions - before.evictions));
    if (budget != 0 && budget != DS_VRAM_UNLIMITED)
        CHECK_MSG(st.peak_bytes <= budget, "%s: peak %zu", label, st.peak_bytes);
    CHECK(st.activation_bytes == 0);
    /* img_in and the two blocks the DiT uses were acquired, through a copy or a hit. */
    CHECK(after.loads + after.prefetches + after.hits - before.loads - before.prefetches -
              before.hits >= 3);
}

static void test_budgets(void)
{
    run_budget("0", 0);
    run_budget("25%", weight_bytes / 4);
    run_budget("50%", weight_bytes / 2);
    run_budget("100%", weight_bytes);
    run_budget("unlimited", DS_VRAM_UNLIMITED);
    /* Unlimited, a second step: everything is resident, nothing is copied. */
    ds_vram_stats before, after;
    ds_vram_stats_get(mgr, &before);
    run_budget("again", DS_VRAM_UNLIMITED);
    ds_vram_stats_get(mgr, &after);
    CHECK(after.bytes_moved == before.bytes_moved);
    /* The DiT alone afterwards: the pairing ended with the step, the output is the DiT's. */
    ds_error err;
    ds_tensor plain, managed;
    REQUIRE(run_forward(NULL, 0, &plain, &err) == DS_OK);
    REQUIRE(run_forward(mgr, 0, &managed, &err) == DS_OK);
    CHECK(memcmp(plain.data, managed.data, ds_tensor_nbytes(&plain)) == 0);
    ds_tensor_free(&plain);
    ds_tensor_free(&managed);
}

int main(void)
{
    ds_error err;
    if (ds_cpu_backend_create(2, &cpu, &err) != DS_OK) {
        fprintf(stderr, "cpu backend: %s\n", err.message);
        return 1;
    }
    RUN(test_build);
    RUN(test_reference);
    RUN(test_budget_too_small);
    RUN(test_budgets);
    /* The manager first: its units point into the models' buffers. The models' release hooks
     * point at it, so they go too (the models are not freed through ds_loaded_model_free). */
    ds_vram_manager_destroy(mgr);
    dit.release_hook = net.release_hook = NULL;
    ds_tensor_free(&reference);
    ds_tensor_free(&latents);
    ds_tensor_free(&prompt);
    ds_tensor_free(&conditioning);
    ds_tensor_free(&timestep);
    free_model(&dit);
    free_model(&net);
    ds_backend_destroy(cpu);
    return test_summary();
}
