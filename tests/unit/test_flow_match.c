/* diffusion/flow_match.c against upstream's FlowMatchScheduler itself: the "Qwen-Image"
 * template (tests/golden/make_flow_match_golden.py): the float32 sigmas and timesteps bit for bit
 * for the pipeline's sizes, strengths and explicit mus; step and add_noise bit for bit in f32
 * and bf16. The "Wan" template's sigmas and timesteps (make_flow_match_wan_golden.py). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "core/safetensors.h"
#include "diffusion/flow_match.h"
#include "test.h"

static ds_safetensors *golden, *golden_wan;

static const ds_tensor_view *golden_view(const char *name)
{
    const ds_sd_entry *e = ds_state_dict_find(&golden->tensors, name);
    if (!e)
        fprintf(stderr, "golden tensor %s is missing\n", name);
    return e ? &e->tensor : NULL;
}

/* Same bits, element by element; NaN == NaN only when both are NaN (the 1-step schedule). */
static int floats_match(const float *got, const ds_tensor_view *want, int count, const char *what)
{
    if (!want || want->dtype != DS_F32 || want->nbytes != (uint64_t)count * 4) {
        fprintf(stderr, "%s: golden tensor has the wrong size\n", what);
        return 0;
    }
    const float *w = want->data;
    for (int i = 0; i < count; i++) {
        int same = isnan(w[i]) ? isnan(got[i]) : memcmp(&got[i], &w[i], 4) == 0;
        if (!same) {
            fprintf(stderr, "%s[%d]: got %.9g, want %.9g\n", what, i, got[i], w[i]);
            return 0;
        }
    }
    return 1;
}

static int schedule_matches(int steps, double strength, int64_t len, const double *mu,
                            const char *key)
{
    ds_flow_match s;
    ds_error err;
    if (ds_flow_match_qwen_image(steps, strength, len, mu, &s, &err) != DS_OK) {
        fprintf(stderr, "%s: %s\n", key, err.message);
        return 0;
    }
    char name[128];
    snprintf(name, sizeof name, "sigmas.%s", key);
    int ok = s.count == steps && floats_match(s.sigmas, golden_view(name), steps, name);
    snprintf(name, sizeof name, "timesteps.%s", key);
    ok = ok && floats_match(s.timesteps, golden_view(name), steps, name);
    ds_flow_match_free(&s);
    return ok;
}

static const int steps_list[] = {1, 2, 7, 30, 40, 50};

static void test_schedules(void)
{
    /* (H // 16) * (W // 16) for 1024², 1328², 64², 512x768; 0: no length, mu 0.8. */
    const int64_t lens[] = {0, 4096, 6889, 16, 1536};
    const int strengths[] = {100, 60};
    for (size_t n = 0; n < sizeof steps_list / sizeof steps_list[0]; n++)
        for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++)
            for (size_t s = 0; s < 2; s++) {
                char key[64];
                snprintf(key, sizeof key, "n%d.l%lld.st%d", steps_list[n], (long long)lens[l],
                         strengths[s]);
                CHECK_MSG(schedule_matches(steps_list[n], strengths[s] / 100.0, lens[l], NULL,
                                           key),
                          "%s", key);
            }
}

static void test_explicit_mu(void)
{
    const double mus[] = {0.3, 1.1, 2.5};
    for (size_t n = 0; n < sizeof steps_list / sizeof steps_list[0]; n++)
        for (size_t m = 0; m < 3; m++) {
            char key[64];
            snprintf(key, sizeof key, "n%d.mu%d.st100", steps_list[n], (int)lround(mus[m] * 100));
            /* The length is ignored when mu is given. */
            CHECK_MSG(schedule_matches(steps_list[n], 1.0, 4096, &mus[m], key), "%s", key);
        }
}

/* facts §5.4's values: the first sigma stays 1, the last becomes 0.02. */
static void test_schedule_shape(void)
{
    ds_flow_match s;
    ds_error err;
    REQUIRE(ds_flow_match_qwen_image(30, 1.0, 4096, NULL, &s, &err) == DS_OK);
    CHECK(s.count == 30);
    CHECK(s.sigmas[0] == 1.0f);
    CHECK(fabs(s.sigmas[1] - 0.982251) < 1e-6);
    CHECK(fabs(s.sigmas[28] - 0.083384) < 1e-6);
    CHECK(fabs(s.sigmas[29] - 0.02) < 1e-6);
    CHECK(s.timesteps[0] == 1000.0f);
    ds_flow_match_free(&s);
    ds_flow_match_free(&s);
    CHECK(s.sigmas == NULL && s.timesteps == NULL && s.count == 0);
    ds_flow_match_free(NULL);
    /* Upstream's own edge case: one step at strength 1 divides 0 by 0. */
    REQUIRE(ds_flow_match_qwen_image(1, 1.0, 4096, NULL, &s, &err) == DS_OK);
    CHECK(isnan(s.sigmas[0]) && isnan(s.timesteps[0]));
    ds_flow_match_free(&s);
}

static const int step_indices[] = {0, 1, 15, 28, 29};

static int buffer_matches(const void *got, const ds_tensor_view *want, size_t bytes,
                          const char *what)
{
    if (!want || want->nbytes != bytes) {
        fprintf(stderr, "%s: golden tensor has the wrong size\n", what);
        return 0;
    }
    size_t es = want->dtype == DS_F32 ? 4 : 2;
    for (size_t i = 0; i < bytes; i += es)
        if (memcmp((const char *)got + i, (const char *)want->data + i, es) != 0) {
            fprintf(stderr, "%s: element %zu differs\n", what, i / es);
            return 0;
        }
    return 1;
}

static void run_step_golden(ds_dtype dtype, const char *key)
{
    ds_flow_match s;
    ds_error err;
    REQUIRE(ds_flow_match_qwen_image(30, 1.0, 4096, NULL, &s, &err) == DS_OK);
    char name[64];
    snprintf(name, sizeof name, "step.%s.x", key);
    const ds_tensor_view *x = golden_view(name);
    snprintf(name, sizeof name, "step.%s.v", key);
    const ds_tensor_view *v = golden_view(name);
    if (!x || !v || x->dtype != dtype) {
        CHECK(0);
        ds_flow_match_free(&s);
        return;
    }
    size_t count = (size_t)(x->nbytes / ds_dtype_size(dtype));
    void *sample = malloc(x->nbytes);
    REQUIRE(sample);
    for (size_t k = 0; k < sizeof step_indices / sizeof step_indices[0]; k++) {
        memcpy(sample, x->data, x->nbytes);
        CHECK(ds_flow_match_step(&s, step_indices[k], dtype, v->data, sample, count, &err) ==
              DS_OK);
        snprintf(name, sizeof name, "step.%s.i%d", key, step_indices[k]);
        CHECK_MSG(buffer_matches(sample, golden_view(name), x->nbytes, name), "%s", name);
    }
    free(sample);
    ds_flow_match_free(&s);
}

static void test_step_f32(void) { run_step_golden(DS_F32, "f32"); }
static void test_step_bf16(void) { run_step_golden(DS_BF16, "bf16"); }

static void run_add_noise_golden(ds_dtype dtype, const char *key)
{
    ds_flow_match s;
    ds_error err;
    REQUIRE(ds_flow_match_qwen_image(30, 0.6, 4096, NULL, &s, &err) == DS_OK);
    char name[64];
    snprintf(name, sizeof name, "add_noise.%s.x0", key);
    const ds_tensor_view *x0 = golden_view(name);
    snprintf(name, sizeof name, "add_noise.%s.noise", key);
    const ds_tensor_view *noise = golden_view(name);
    if (!x0 || !noise || x0->dtype != dtype) {
        CHECK(0);
        ds_flow_match_free(&s);
        return;
    }
    size_t count = (size_t)(x0->nbytes / ds_dtype_size(dtype));
    void *out = malloc(x0->nbytes);
    REQUIRE(out);
    for (size_t k = 0; k < sizeof step_indices / sizeof step_indices[0]; k++) {
        CHECK(ds_flow_match_add_noise(&s, step_indices[k], dtype, x0->data, noise->data, out,
                                      count, &err) == DS_OK);
        snprintf(name, sizeof name, "add_noise.%s.i%d", key, step_indices[k]);
        CHECK_MSG(buffer_matches(out, golden_view(name), x0->nbytes, name), "%s", name);
    }
    /* In place over the original, as the pipeline may call it. */
    memcpy(out, x0->data, x0->nbytes);
    CHECK(ds_flow_match_add_noise(&s, 0, dtype, out, noise->data, out, count, &err) == DS_OK);
    snprintf(name, sizeof name, "add_noise.%s.i0", key);
    CHECK(buffer_matches(out, golden_view(name), x0->nbytes, name));
    free(out);
    ds_flow_match_free(&s);
}

static void test_add_noise_f32(void) { run_add_noise_golden(DS_F32, "f32"); }
static void test_add_noise_bf16(void) { run_add_noise_golden(DS_BF16, "bf16"); }

/* The "Wan" template against tests/golden/make_flow_match_wan_golden.py, bit for bit. */
static void test_wan_schedules(void)
{
    const int steps[] = {1, 2, 3, 30, 50};
    const double shifts[] = {5.0, 3.0, 1.0, 12.5};
    const int strengths[] = {100, 70};
    REQUIRE(golden_wan);
    ds_safetensors *qwen = golden;
    golden = golden_wan;
    for (size_t n = 0; n < sizeof steps / sizeof steps[0]; n++)
        for (size_t h = 0; h < sizeof shifts / sizeof shifts[0]; h++)
            for (size_t t = 0; t < 2; t++) {
                char key[64], name[96];
                snprintf(key, sizeof key, "n%d.sh%d.st%d", steps[n], (int)lround(shifts[h] * 100),
                         strengths[t]);
                ds_flow_match s;
                ds_error err;
                int ok = ds_flow_match_wan(steps[n], strengths[t] / 100.0, shifts[h], &s, &err) ==
                         DS_OK;
                CHECK_MSG(ok, "%s: %s", key, err.message);
                if (!ok)
                    continue;
                snprintf(name, sizeof name, "sigmas.%s", key);
                CHECK_MSG(s.count == steps[n] &&
                              floats_match(s.sigmas, golden_view(name), steps[n], name),
                          "%s", name);
                snprintf(name, sizeof name, "timesteps.%s", key);
                CHECK_MSG(floats_match(s.timesteps, golden_view(name), steps[n], name), "%s",
                          name);
                ds_flow_match_free(&s);
            }
    golden = qwen;
    ds_flow_match s = {0};
    ds_error err;
    CHECK(ds_flow_match_wan(0, 1.0, 5.0, &s, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "num_inference_steps 0 is outside [1, 10000]");
    CHECK(ds_flow_match_wan(3, 0.0, 5.0, &s, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "denoising_strength 0 is outside (0, 1]");
    CHECK(ds_flow_match_wan(3, 1.0, NAN, &s, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "shift nan is not finite");
    CHECK(s.count == 0 && s.sigmas == NULL);
}

static void test_bad_schedule_arguments(void)
{
    ds_flow_match s = {0};
    ds_error err;
    CHECK(ds_flow_match_qwen_image(0, 1.0, 4096, NULL, &s, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "num_inference_steps 0 is outside [1, 10000]");
    CHECK(s.count == 0 && s.sigmas == NULL);
    CHECK(ds_flow_match_qwen_image(10001, 1.0, 4096, NULL, &s, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "num_inference_steps 10001");
    CHECK(ds_flow_match_qwen_image(30, 0.0, 4096, NULL, &s, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "denoising_strength 0 is outside (0, 1]");
    CHECK(ds_flow_match_qwen_image(30, 1.5, 4096, NULL, &s, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "denoising_strength 1.5 is outside (0, 1]");
    CHECK(ds_flow_match_qwen_image(30, NAN, 4096, NULL, &s, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "denoising_strength nan");
    double mu = INFINITY;
    CHECK(ds_flow_match_qwen_image(30, 1.0, 4096, &mu, &s, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "exponential_shift_mu inf is not finite");
    CHECK(ds_flow_match_qwen_image(30, 1.0, 4096, NULL, NULL, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "out is NULL");
}

static void test_bad_step_arguments(void)
{
    ds_flow_match s;
    ds_error err;
    float x[4] = {0}, v[4] = {0};
    REQUIRE(ds_flow_match_qwen_image(3, 1.0, 16, NULL, &s, &err) == DS_OK);
    CHECK(ds_flow_match_step(&s, 3, DS_F32, v, x, 4, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "flow match step: step index 3 is outside [0, 3)");
    CHECK(ds_flow_match_step(&s, -1, DS_F32, v, x, 4, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "step index -1");
    CHECK(ds_flow_match_step(&s, 0, DS_F16, v, x, 4, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "flow match step: dtype f16 is not supported (expected f32 or bf16)");
    CHECK(ds_flow_match_step(&s, 0, DS_F32, NULL, x, 4, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "flow match step: model_output is NULL");
    CHECK(ds_flow_match_step(&s, 0, DS_F32, v, NULL, 4, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "sample is NULL");
    CHECK(ds_flow_match_add_noise(&s, 0, DS_F32, x, NULL, x, 4, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "flow match add_noise: noise is NULL");
    CHECK(ds_flow_match_add_noise(&s, 0, DS_F32, x, v, NULL, 4, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "flow match add_noise: out is NULL");
    CHECK(ds_flow_match_add_noise(&s, 7, DS_BF16, x, v, x, 4, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "flow match add_noise: step index 7 is outside [0, 3)");
    CHECK(ds_flow_match_step(&s, 0, DS_F32, NULL, NULL, 0, &err) == DS_OK);
    ds_flow_match_free(&s);
    CHECK(ds_flow_match_step(&s, 0, DS_F32, v, x, 4, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "flow match step: no schedule");
    CHECK(ds_flow_match_step(NULL, 0, DS_F32, v, x, 4, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "no schedule");
}

int main(void)
{
    ds_error err;
    const char *root = getenv("DS_TEST_DATA");
    char path[1024];
    snprintf(path, sizeof path, "%s/golden/flow_match.safetensors", root ? root : "tests/data");
    if (ds_safetensors_open(path, 0, &golden, &err) != DS_OK) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    snprintf(path, sizeof path, "%s/golden/flow_match_wan.safetensors",
             root ? root : "tests/data");
    if (ds_safetensors_open(path, 0, &golden_wan, &err) != DS_OK) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    RUN(test_schedules);
    RUN(test_explicit_mu);
    RUN(test_schedule_shape);
    RUN(test_step_f32);
    RUN(test_step_bf16);
    RUN(test_add_noise_f32);
    RUN(test_add_noise_bf16);
    RUN(test_wan_schedules);
    RUN(test_bad_schedule_arguments);
    RUN(test_bad_step_arguments);
    ds_safetensors_close(golden);
    ds_safetensors_close(golden_wan);
    return test_summary();
}
