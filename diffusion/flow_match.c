#include "diffusion/flow_match.h"

#include <math.h>
#include <stdlib.h>

#include "core/float_convert.h"

/* _calculate_shift_qwen_image's defaults: mu grows linearly from 0.5 at 256 image tokens to 0.9
 * at 8192. */
#define BASE_SEQ_LEN 256.0
#define MAX_SEQ_LEN 8192.0
#define BASE_SHIFT 0.5
#define MAX_SHIFT 0.9
#define DEFAULT_MU 0.8
#define SHIFT_TERMINAL 0.02
#define NUM_TRAIN_TIMESTEPS 1000.0f

/* torch.linspace(start, end, n)[i] in float32: PyTorch's CPU kernel counts from the nearer end,
 * and its multiply-add is fused (see the header). */
static float linspace_at(float start, float end, float step, int64_t n, int64_t i)
{
    if (i < n / 2)
        return fmaf(step, (float)i, start);
    return fmaf(-step, (float)(n - i - 1), end);
}

/* Validates the common arguments, allocates the arrays and fills sigmas with
 * linspace(strength, 0, steps + 1)[:-1], as the Qwen-Image and Wan templates both begin. */
static int begin_schedule(int steps, double denoising_strength, ds_flow_match *out,
                          ds_error *err)
{
    if (!out)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "flow match: out is NULL");
    out->count = 0;
    out->sigmas = NULL;
    out->timesteps = NULL;
    if (steps < 1 || steps > DS_FLOW_MATCH_MAX_STEPS)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "flow match: num_inference_steps %d is outside [1, %d]", steps,
                            DS_FLOW_MATCH_MAX_STEPS);
    if (!(denoising_strength > 0.0 && denoising_strength <= 1.0))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "flow match: denoising_strength %g is outside (0, 1]",
                            denoising_strength);
    float *sigmas = malloc((size_t)steps * sizeof *sigmas);
    float *timesteps = malloc((size_t)steps * sizeof *timesteps);
    if (!sigmas || !timesteps) {
        free(sigmas);
        free(timesteps);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "flow match: out of memory for %d steps", steps);
    }
    float start = (float)denoising_strength;
    int64_t n = (int64_t)steps + 1;
    float step = (0.0f - start) / (float)(n - 1);
    for (int i = 0; i < steps; i++)
        sigmas[i] = linspace_at(start, 0.0f, step, n, i);
    out->count = steps;
    out->sigmas = sigmas;
    out->timesteps = timesteps;
    return DS_OK;
}

int ds_flow_match_qwen_image(int steps, double denoising_strength, int64_t dynamic_shift_len,
                             const double *exponential_shift_mu, ds_flow_match *out,
                             ds_error *err)
{
    if (out)
        *out = (ds_flow_match){0};
    if (exponential_shift_mu && !isfinite(*exponential_shift_mu))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "flow match: exponential_shift_mu %g is not finite",
                            *exponential_shift_mu);
    int rc = begin_schedule(steps, denoising_strength, out, err);
    if (rc != DS_OK)
        return rc;

    /* The Python scalars are doubles; torch rounds each to float32 where it meets a tensor. */
    double mu = DEFAULT_MU;
    if (exponential_shift_mu) {
        mu = *exponential_shift_mu;
    } else if (dynamic_shift_len > 0) {
        double m = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ_LEN - BASE_SEQ_LEN);
        double b = BASE_SHIFT - m * BASE_SEQ_LEN;
        mu = (double)dynamic_shift_len * m + b;
    }
    float exp_mu = (float)exp(mu);
    float *sigmas = out->sigmas;

    /* exp(mu) / (exp(mu) + (1 / sigmas - 1)): Python's scalar-over-tensor divisions are
     * reciprocal(tensor) * scalar. */
    for (int i = 0; i < steps; i++) {
        float t = (1.0f / sigmas[i] - 1.0f) + exp_mu;
        sigmas[i] = (1.0f / t) * exp_mu;
    }

    /* Shift terminal: 1 - (1 - sigmas) / ((1 - sigmas[-1]) / (1 - 0.02)). */
    float scale = (1.0f - sigmas[steps - 1]) / (float)(1.0 - SHIFT_TERMINAL);
    for (int i = 0; i < steps; i++) {
        sigmas[i] = 1.0f - (1.0f - sigmas[i]) / scale;
        out->timesteps[i] = sigmas[i] * NUM_TRAIN_TIMESTEPS;
    }
    return DS_OK;
}

int ds_flow_match_wan(int steps, double denoising_strength, double shift, ds_flow_match *out,
                      ds_error *err)
{
    if (out)
        *out = (ds_flow_match){0};
    if (!isfinite(shift))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "flow match: shift %g is not finite",
                            shift);
    int rc = begin_schedule(steps, denoising_strength, out, err);
    if (rc != DS_OK)
        return rc;
    /* shift * sigmas / (1 + (shift - 1) * sigmas): each Python scalar rounded to float32 where
     * it meets the tensor, (shift - 1) computed in double first. */
    float s = (float)shift, s1 = (float)(shift - 1.0);
    for (int i = 0; i < steps; i++) {
        float x = out->sigmas[i];
        out->sigmas[i] = (s * x) / (s1 * x + 1.0f);
        out->timesteps[i] = out->sigmas[i] * NUM_TRAIN_TIMESTEPS;
    }
    return DS_OK;
}

void ds_flow_match_free(ds_flow_match *s)
{
    if (s) {
        free(s->sigmas);
        free(s->timesteps);
        *s = (ds_flow_match){0};
    }
}

static int check_call(const char *what, const ds_flow_match *s, int index, ds_dtype dtype,
                      const void *a, const char *a_name, const void *b, const char *b_name,
                      const void *c, size_t count, ds_error *err)
{
    if (!s || s->count < 1 || !s->sigmas)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "flow match %s: no schedule", what);
    if (index < 0 || index >= s->count)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "flow match %s: step index %d is outside [0, %d)", what, index,
                            s->count);
    if (dtype != DS_F32 && dtype != DS_BF16)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "flow match %s: dtype %s is not supported (expected f32 or bf16)",
                            what, ds_dtype_name(dtype));
    if (count > 0 && (!a || !b || !c))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "flow match %s: %s is NULL", what,
                            !a ? a_name : !b ? b_name : "out");
    return DS_OK;
}

int ds_flow_match_step(const ds_flow_match *s, int index, ds_dtype dtype, const void *model_output,
                       void *sample, size_t count, ds_error *err)
{
    int rc = check_call("step", s, index, dtype, model_output, "model_output", sample, "sample",
                        sample, count, err);
    if (rc != DS_OK)
        return rc;
    float sigma = s->sigmas[index];
    float sigma_next = index + 1 < s->count ? s->sigmas[index + 1] : 0.0f;
    float delta = sigma_next - sigma;
    if (dtype == DS_F32) {
        const float *v = model_output;
        float *x = sample;
        for (size_t i = 0; i < count; i++)
            x[i] = x[i] + v[i] * delta;
        return DS_OK;
    }
    /* bf16 * 0-d float32: the product is taken in float with the unrounded delta, then rounded;
     * the sum is rounded again. */
    const uint16_t *v = model_output;
    uint16_t *x = sample;
    for (size_t i = 0; i < count; i++) {
        float update = ds_bf16_to_f32(ds_f32_to_bf16(ds_bf16_to_f32(v[i]) * delta));
        x[i] = ds_f32_to_bf16(ds_bf16_to_f32(x[i]) + update);
    }
    return DS_OK;
}

int ds_flow_match_add_noise(const ds_flow_match *s, int index, ds_dtype dtype, const void *original,
                            const void *noise, void *out, size_t count, ds_error *err)
{
    int rc = check_call("add_noise", s, index, dtype, original, "original", noise, "noise", out,
                        count, err);
    if (rc != DS_OK)
        return rc;
    float sigma = s->sigmas[index];
    float keep = 1.0f - sigma;
    if (dtype == DS_F32) {
        const float *x0 = original, *n = noise;
        float *y = out;
        for (size_t i = 0; i < count; i++)
            y[i] = keep * x0[i] + sigma * n[i];
        return DS_OK;
    }
    /* A 0-d float32 tensor on the left of a bf16 product is cast to bf16 before the multiply. */
    float keep_bf = ds_bf16_to_f32(ds_f32_to_bf16(keep));
    float sigma_bf = ds_bf16_to_f32(ds_f32_to_bf16(sigma));
    const uint16_t *x0 = original, *n = noise;
    uint16_t *y = out;
    for (size_t i = 0; i < count; i++) {
        float a = ds_bf16_to_f32(ds_f32_to_bf16(keep_bf * ds_bf16_to_f32(x0[i])));
        float b = ds_bf16_to_f32(ds_f32_to_bf16(sigma_bf * ds_bf16_to_f32(n[i])));
        y[i] = ds_f32_to_bf16(a + b);
    }
    return DS_OK;
}
