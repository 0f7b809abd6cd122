/* Memory admission: the ledger (alone too large, too large beside the admitted requests, the
 * held bytes summed and the largest peak counted once, release) and the estimates' arithmetic
 * (saturation instead of wrap-around on hostile shapes, growth with the size, a step without a
 * bound refused, every step of this build bounded, the Wan text encoder's and VAEs'), and the
 * budget of the weights kept converted under RLIMIT_AS. The estimates against real allocations:
 * tests/integration/test_memory_admission.c. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "daemon/admission.h"
#include "kernels/backend.h"
#include "models/memory_estimate.h"
#include "models/model_class.h"
#include "pipelines/pipeline.h"
#include "test.h"

#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"
#define VAE_CLASS "diffsynth.models.qwen_image_vae.QwenImageVAE"

static void test_alone_too_large(void)
{
    ds_admission a;
    ds_admission_init(&a, 1000, "--request-memory-limit 0.000001", 2);
    ds_admission_ticket t = {0};
    ds_error err;
    ds_error_clear(&err);
    ds_memory_need need = {.held = 900, .peak = 200};
    CHECK(ds_admission_reserve(&a, &t, "run_step forward of m1", need, UINT64_MAX, &err) ==
          DS_ERR_RESOURCE_EXHAUSTED);
    CHECK_CONTAINS(err.message, "run_step forward of m1 needs an estimated 1100 bytes");
    CHECK_CONTAINS(err.message, "900 held until the reply, 200 more while a unit runs");
    CHECK_CONTAINS(err.message, "more than the request memory limit of 1000 bytes");
    CHECK_CONTAINS(err.message, "--request-memory-limit 0.000001");
    CHECK(!t.active && a.count == 0 && a.held == 0);
}

static void test_beside_admitted(void)
{
    ds_admission a;
    ds_admission_init(&a, 1000, "test", 2);
    ds_admission_ticket t1 = {0}, t2 = {0}, t3 = {0}, t4 = {0};
    ds_error err;
    ds_error_clear(&err);
    /* 300 + 300 held, the larger peak 200 once: 800. */
    CHECK(ds_admission_reserve(&a, &t1, "a", (ds_memory_need){300, 200}, UINT64_MAX, &err) ==
          DS_OK);
    CHECK(ds_admission_reserve(&a, &t2, "b", (ds_memory_need){300, 100}, UINT64_MAX, &err) ==
          DS_OK);
    /* 700 held, peak 300: exactly the limit. */
    CHECK(ds_admission_reserve(&a, &t3, "c", (ds_memory_need){100, 300}, UINT64_MAX, &err) ==
          DS_OK);
    CHECK(a.count == 3 && a.held == 700);
    CHECK(ds_admission_reserve(&a, &t4, "d", (ds_memory_need){1, 0}, UINT64_MAX, &err) ==
          DS_ERR_RESOURCE_EXHAUSTED);
    CHECK_CONTAINS(err.message, "d needs an estimated 1 bytes");
    CHECK_CONTAINS(err.message, "with the 3 requests admitted before it (700 bytes held");
    CHECK_CONTAINS(err.message, "try again when they have finished");
    /* The largest peak leaves: d fits (601 held + 200). */
    ds_admission_release(&a, &t3);
    CHECK(a.count == 2 && a.held == 600 && !t3.active);
    CHECK(ds_admission_reserve(&a, &t4, "d", (ds_memory_need){1, 0}, UINT64_MAX, &err) == DS_OK);
    ds_admission_release(&a, &t3); /* inactive: nothing happens */
    ds_admission_release(&a, &t1);
    ds_admission_release(&a, &t2);
    ds_admission_release(&a, &t4);
    CHECK(a.count == 0 && a.held == 0 && a.head == NULL);
}

static void test_device_budget(void)
{
    ds_admission a;
    ds_admission_init(&a, UINT64_MAX, "none", 2);
    ds_admission_ticket t = {0};
    ds_error err;
    ds_error_clear(&err);
    CHECK(ds_admission_reserve(&a, &t, "x", (ds_memory_need){10, 5000}, 4096, &err) ==
          DS_ERR_RESOURCE_EXHAUSTED);
    CHECK_CONTAINS(err.message, "x needs an estimated 5000 bytes");
    CHECK_CONTAINS(err.message, "more than the VRAM budget of 4096 bytes");
    /* No host limit: anything fits there. */
    CHECK(ds_admission_reserve(&a, &t, "x", (ds_memory_need){UINT64_MAX / 2, 5000}, UINT64_MAX,
                               &err) == DS_OK);
    ds_admission_release(&a, &t);
}

static void test_estimates_arithmetic(void)
{
    /* A hostile shape saturates. */
    CHECK(ds_memory_dit_forward(INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX, DS_F32, 16, 0) ==
          UINT64_MAX);
    CHECK(ds_memory_text_encoder(INT64_MAX, INT64_MAX, DS_BF16, 16) == UINT64_MAX);
    /* Four times the latent pixels: more than three times the bound (per-token terms
     * dominate past the fixed slack). */
    uint64_t small = ds_memory_dit_forward(1, 128, 128, 64, DS_F32, 2, 0);
    uint64_t large = ds_memory_dit_forward(1, 256, 256, 64, DS_F32, 2, 0);
    CHECK_MSG(large > 3 * small, "%llu vs %llu", (unsigned long long)large,
              (unsigned long long)small);
    /* At least the image tokens' preallocated f32 streams: 16 widths of 3072 per token. */
    CHECK(small >= (uint64_t)64 * 64 * 16 * 3072 * 4);
    /* bf16 state is half, but the f32 staging of linears comes on top. */
    CHECK(ds_memory_dit_forward(1, 128, 128, 64, DS_BF16, 2, 0) < small);
    /* More threads, more attention scratch. */
    CHECK(ds_memory_dit_forward(1, 128, 128, 64, DS_F32, 64, 0) > small);
    CHECK(ds_memory_dit_forward(1, 128, 128, 64, DS_F32, 2, 17) > small);
}

static void test_unknown_step(void)
{
    ds_loaded_model m;
    memset(&m, 0, sizeof m);
    m.model_name = "qwen_image_dit";
    m.model_class = DIT_CLASS;
    ds_memory_need need;
    ds_error err;
    ds_error_clear(&err);
    const ds_model_step backward = {.name = "backward"};
    CHECK(ds_memory_step(&m, &backward, NULL, 0, 2, &need, &err) == DS_ERR_UNIMPLEMENTED);
    CHECK_STR_EQ(err.message, "qwen_image_dit (" DIT_CLASS "): step \"backward\" has no memory "
                              "bound in this build, so the daemon cannot admit it");
    int64_t lat[4] = {2, 16, 64, 32};
    ds_memory_input in[] = {{"latents", DS_F32, 4, lat}};
    /* The bound the class's own step declares. */
    const ds_model_class *cls = ds_model_class_find(DIT_CLASS);
    REQUIRE(cls);
    const ds_model_step *forward = ds_model_step_find(cls->steps, cls->step_count, "forward");
    REQUIRE(forward);
    CHECK(ds_memory_step(&m, forward, in, 1, 2, &need, &err) == DS_OK);
    /* The input once, the noise prediction twice (the output and its encoding in the reply). */
    uint64_t bytes = 2 * 16 * 64 * 32 * 4;
    CHECK(need.held == 3 * bytes);
    CHECK(need.peak == ds_memory_dit_forward(2, 64, 32, 0, DS_F32, 2, 0));
}

/* m as a loaded model named `name` whose parameters are declared from `cls`'s tree with `kwargs`
 * (JSON or NULL), without weights. Returns whether the declaration succeeded. */
static int declare_model(ds_loaded_model *m, char *name, const char *cls, const char *kwargs)
{
    memset(m, 0, sizeof *m);
    m->model_name = name;
    ds_state_dict_init(&m->params);
    ds_error err;
    ds_error_clear(&err);
    return ds_model_class_declare(ds_model_class_find(cls), kwargs, &m->params, &err) == DS_OK;
}

/* The VAE's widths come from its declared parameters. Upstream's decoder runs its last level
 * (the image's size) at 96 channels after an upsampler fed 192: at least four 96-wide
 * activations of the image live at once, and nothing at that size is wider than two 192-wide
 * ones; the levels below are four times smaller each. */
static void test_vae_levels(void)
{
    ds_loaded_model m;
    REQUIRE(declare_model(&m, "qwen_image_vae", VAE_CLASS, NULL));
    m.model_class = VAE_CLASS;
    ds_error err;
    ds_error_clear(&err);
    uint64_t decode = 0, encode = 0;
    const int64_t side = 256; /* latents; a 2048 x 2048 image */
    uint64_t image = (uint64_t)side * side * 64;
    REQUIRE(ds_memory_vae(&m, 1, 1, side, side, DS_F32, 2, &decode, &err) == DS_OK);
    CHECK_MSG(decode >= image * 4 * 96 * 4, "decode %llu", (unsigned long long)decode);
    /* The last level, plus the level below (a quarter) and the fixed terms. */
    CHECK_MSG(decode <= image * 384 * 4 + (image / 4) * 768 * 4 + ((uint64_t)1 << 30),
              "decode %llu", (unsigned long long)decode);
    /* The encoder starts at 96 channels at the image's size, too. */
    REQUIRE(ds_memory_vae(&m, 0, 1, side, side, DS_F32, 2, &encode, &err) == DS_OK);
    CHECK_MSG(encode >= image * 4 * 96 * 4, "encode %llu", (unsigned long long)encode);
    CHECK_MSG(encode <= image * 384 * 4 + ((uint64_t)1 << 30), "encode %llu",
              (unsigned long long)encode);
    /* A model without the VAE's names is refused by name. */
    ds_loaded_model other;
    memset(&other, 0, sizeof other);
    other.model_name = "not_a_vae";
    ds_state_dict_init(&other.params);
    CHECK(ds_memory_vae(&other, 1, 1, 8, 8, DS_F32, 2, &decode, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "not_a_vae has no decoder convolutions");
    ds_state_dict_free(&m.params);
}

/* The daemon refuses a RunStep without a bound: every step a class or a pipeline declares
 * has one, so none is refused for that. */
static void test_every_step_bounded(void)
{
    size_t steps = 0;
    for (size_t i = 0; i < ds_model_class_count; i++) {
        const ds_model_class *cls = ds_model_classes[i];
        for (size_t k = 0; k < cls->step_count; k++, steps++)
            CHECK_MSG(cls->steps[k].memory, "%s: step \"%s\" has no memory bound", cls->name,
                      cls->steps[k].name);
    }
    for (size_t i = 0; i < ds_pipeline_count; i++)
        for (size_t k = 0; k < ds_pipelines[i]->class_step_count; k++, steps++)
            CHECK_MSG(ds_pipelines[i]->class_steps[k].step.memory,
                      "%s: step \"%s\" the pipeline %s adds has no memory bound",
                      ds_pipelines[i]->class_steps[k].model_class,
                      ds_pipelines[i]->class_steps[k].step.name, ds_pipelines[i]->name);
    /* The Qwen-Image and Wan DiTs, text encoders and VAEs, two encode_prompt. */
    CHECK_MSG(steps >= 12, "%zu steps", steps);
}

/* The Wan text encoder's bound at the widths of its declared tree: at least the per-token
 * activations and every head's scores of the forward, both dtypes' when asked for either,
 * saturating on a hostile shape. */
static void test_wan_text_encoder(void)
{
    ds_loaded_model m;
    REQUIRE(declare_model(&m, "wan_video_text_encoder",
                          "diffsynth.models.wan_video_text_encoder.WanTextEncoder",
                          "{\"num_layers\": 1}"));
    ds_error err;
    ds_error_clear(&err);
    uint64_t f32 = 0, bf16 = 0, either = 0, hidden = 0;
    REQUIRE(ds_memory_wan_text_encoder(&m, 1, 512, DS_F32, &f32, &hidden, &err) == DS_OK);
    CHECK(hidden == (uint64_t)512 * 4096 * 4);
    /* h, x, out, q, k, v, attn, four per-head copies, gate and up; 64 heads' scores. */
    CHECK(f32 >= (uint64_t)512 * (11 * 4096 + 2 * 10240) * 4 + (uint64_t)64 * 512 * 512 * 4);
    REQUIRE(ds_memory_wan_text_encoder(&m, 1, 512, DS_BF16, &bf16, &hidden, &err) == DS_OK);
    CHECK(hidden == (uint64_t)512 * 4096 * 2 && bf16 < f32);
    REQUIRE(ds_memory_wan_text_encoder(&m, 1, 512, DS_DTYPE_INVALID, &either, &hidden, &err) ==
            DS_OK);
    CHECK(either == f32 && hidden == (uint64_t)512 * 4096 * 4);
    REQUIRE(ds_memory_wan_text_encoder(&m, INT64_MAX, INT64_MAX, DS_F32, &f32, &hidden, &err) ==
            DS_OK);
    CHECK(f32 == UINT64_MAX && hidden == UINT64_MAX);
    ds_loaded_model other;
    memset(&other, 0, sizeof other);
    other.model_name = "not_t5";
    ds_state_dict_init(&other.params);
    CHECK(ds_memory_wan_text_encoder(&other, 1, 8, DS_F32, &f32, &hidden, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "not_t5: the parameters do not look like a WanTextEncoder's");
    ds_state_dict_free(&m.params);
}

/* The Wan VAEs' bounds from their declared trees: at least the decoder's widest level (96
 * channels at the output's size, WanVideoVAE38's 256 at half of it) four frames at a time
 * and the encoder's first level; growing with the frames; the tiles' bound below the whole
 * frame's for a large frame; saturating on a hostile shape. */
static void test_wan_vae(void)
{
    static const struct {
        const char *cls;
        int64_t z, f, top, top_px; /* top: the widest last-level width, at top_px per latent */
    } vaes[] = {{"diffsynth.models.wan_video_vae.WanVideoVAE", 16, 8, 96, 64},
                {"diffsynth.models.wan_video_vae.WanVideoVAE38", 48, 16, 256, 64}};
    for (size_t v = 0; v < sizeof vaes / sizeof vaes[0]; v++) {
        ds_loaded_model m;
        REQUIRE(declare_model(&m, "wan_video_vae", vaes[v].cls, NULL));
        ds_error err;
        ds_error_clear(&err);
        uint64_t decode = 0, encode = 0, longer = 0, tiled = 0, out = 0;
        const int64_t h = 60, w = 104; /* latents of 480 x 832 (Wan2.1) */
        REQUIRE(ds_memory_wan_vae(&m, 1, 1, 3, h, w, NULL, DS_F32, 2, &decode, &out, &err) ==
                DS_OK);
        CHECK(out == (uint64_t)3 * 9 * h * w * vaes[v].f * vaes[v].f * 4);
        uint64_t top = (uint64_t)4 * h * w * vaes[v].top_px * vaes[v].top * 4;
        CHECK_MSG(decode >= 4 * top, "%s decode %llu", vaes[v].cls, (unsigned long long)decode);
        REQUIRE(ds_memory_wan_vae(&m, 1, 1, 21, h, w, NULL, DS_F32, 2, &longer, &out, &err) ==
                DS_OK);
        CHECK(longer > decode);
        REQUIRE(ds_memory_wan_vae(&m, 1, 1, 3, h, w, &ds_wan_video_vae_step_tiling, DS_F32, 2,
                                  &tiled, &out, &err) == DS_OK);
        CHECK_MSG(tiled < decode, "%llu vs %llu", (unsigned long long)tiled,
                  (unsigned long long)decode);
        REQUIRE(ds_memory_wan_vae(&m, 0, 1, 9, h * vaes[v].f, w * vaes[v].f, NULL, DS_BF16, 2,
                                  &encode, &out, &err) == DS_OK);
        CHECK(out == (uint64_t)vaes[v].z * 3 * h * w * 2);
        CHECK(encode >= (uint64_t)4 * 4 * h * w * vaes[v].f * vaes[v].f * 96 * 2);
        REQUIRE(ds_memory_wan_vae(&m, 1, INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX, NULL,
                                  DS_F32, 2, &decode, &out, &err) == DS_OK);
        CHECK(decode == UINT64_MAX && out == UINT64_MAX);
        ds_state_dict_free(&m.params);
    }
    ds_loaded_model other;
    memset(&other, 0, sizeof other);
    other.model_name = "not_a_vae";
    ds_state_dict_init(&other.params);
    uint64_t peak, out;
    ds_error err;
    CHECK(ds_memory_wan_vae(&other, 1, 1, 1, 8, 8, NULL, DS_F32, 2, &peak, &out, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "not_a_vae: the parameters do not look like a Wan VAE's decoder");
}

/* This process's mapped address space, from /proc/self/status. */
static uint64_t vm_size(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    uint64_t kb = 0;
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmSize:", 7) == 0)
            kb = strtoull(line + 7, NULL, 10);
    if (f)
        fclose(f);
    return kb * 1024;
}

static size_t convert_budget(ds_vram_manager *m)
{
    ds_vram_stats st;
    ds_vram_stats_get(m, &st);
    return st.budget_bytes;
}

/* Under RLIMIT_AS the copies kept converted get only the address space beyond the request
 * memory limit; without room they get none (the forwards then convert per call). */
static void test_convert_budget_address_space(void)
{
    ds_backend *b = NULL;
    ds_vram_manager *m = NULL;
    ds_error err = {0};
    REQUIRE(ds_cpu_backend_create(1, &b, &err) == DS_OK);
    REQUIRE(ds_vram_manager_create(b, DS_VRAM_UNLIMITED, 0, &m, &err) == DS_OK);
    struct rlimit saved;
    REQUIRE(getrlimit(RLIMIT_AS, &saved) == 0);
    const uint64_t gib = (uint64_t)1 << 30;
    uint64_t mapped = vm_size();
    REQUIRE(mapped > 0);
    struct rlimit tight = saved;
    tight.rlim_cur = mapped + 2 * gib;
    if (saved.rlim_cur != RLIM_INFINITY && saved.rlim_cur < tight.rlim_cur) {
        fprintf(stderr, "  skipped: RLIMIT_AS is already below 2 GiB past the mapped space\n");
        goto done;
    }
    REQUIRE(setrlimit(RLIMIT_AS, &tight) == 0);
    /* 2 GiB of room, 1.5 promised to requests: about 0.5 GiB (less what maps meanwhile). */
    ds_admission_fit_convert_budget(m, DS_VRAM_UNLIMITED, 3 * gib / 2);
    size_t half = convert_budget(m);
    ds_admission_fit_convert_budget(m, DS_VRAM_UNLIMITED, 3 * gib);
    size_t none = convert_budget(m);
    ds_admission_fit_convert_budget(m, (size_t)64 << 20, gib);
    size_t configured = convert_budget(m);
    ds_admission_fit_convert_budget(m, DS_VRAM_UNLIMITED, UINT64_MAX);
    size_t no_request_room = convert_budget(m);
    setrlimit(RLIMIT_AS, &saved);
    CHECK_MSG(half > gib / 4 && half <= gib / 2, "budget %zu", half);
    CHECK(none == 0);
    CHECK(configured == (size_t)64 << 20);
    CHECK(no_request_room == 0);
    /* No address-space limit (where the hard limit allows lifting it): the configured budget. */
    if (saved.rlim_cur == RLIM_INFINITY) {
        ds_admission_fit_convert_budget(m, DS_VRAM_UNLIMITED, 3 * gib);
        CHECK(convert_budget(m) == DS_VRAM_UNLIMITED);
    }
done:
    ds_vram_manager_destroy(m);
    b->destroy(b);
}

int main(void)
{
    RUN(test_alone_too_large);
    RUN(test_beside_admitted);
    RUN(test_device_budget);
    RUN(test_estimates_arithmetic);
    RUN(test_unknown_step);
    RUN(test_vae_levels);
    RUN(test_every_step_bounded);
    RUN(test_wan_text_encoder);
    RUN(test_wan_vae);
    RUN(test_convert_budget_address_space);
    return test_summary();
}
