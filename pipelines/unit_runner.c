#include "pipelines/unit_runner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "diffusion/base_pipeline.h"
#include "models/model_class.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int decode_units(const ds__unit_runner *u)
{
    return u->decode_units > 1 ? u->decode_units : 1;
}

int ds__unit_runner_advance(ds__unit_runner *u, const ds__unit_ops *ops, void *run,
                            const ds_step_context *ctx, ds_error *err)
{
    if (u->failed)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "%s: the pipeline failed earlier and cannot continue", u->pipeline);
    int last = u->steps + decode_units(u);
    if (u->next_unit > last)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "%s: the pipeline has already finished", u->pipeline);
    int rc = ds__unit_cancelled(ctx, u->pipeline, err);
    double start = now_s();
    if (rc == DS_OK) {
        if (u->next_unit == 0)
            rc = ops->encode(run, ctx, err);
        else if (u->next_unit <= u->steps)
            rc = ops->denoise(run, ctx, u->next_unit - 1, err);
        else
            rc = ops->decode(run, ctx, err);
    }
    double spent = now_s() - start;
    if (u->next_unit == 0)
        u->encode_s += spent;
    else if (u->next_unit <= u->steps)
        u->denoise_s += spent;
    else
        u->decode_s += spent;
    if (rc != DS_OK) {
        u->failed = 1;
        return rc;
    }
    u->next_unit++;
    return u->next_unit <= last ? 1 : 0;
}

size_t ds__unit_align(size_t bytes) { return (bytes + 63) / 64 * 64; }

int ds__denoise_state_init(ds__denoise_state *s, const char *pipeline, const char *prompt,
                           const char *negative_prompt, const char *tokenizer, ds_dtype dtype,
                           double cfg_scale, size_t latent_count, ds_error *err)
{
    memset(s, 0, sizeof *s);
    ds_step_io_init(&s->prompt_posi);
    ds_step_io_init(&s->prompt_nega);
    s->dtype = dtype;
    s->cfg_scale = cfg_scale;
    s->latent_count = latent_count;
    if (!negative_prompt)
        negative_prompt = "";
    /* The three strings share one block, and so do the latents and the predictions. */
    size_t posi = strlen(prompt) + 1, nega = strlen(negative_prompt) + 1;
    size_t tok = tokenizer ? strlen(tokenizer) + 1 : 0;
    size_t part = ds__unit_align(latent_count * ds_dtype_size(dtype));
    int sides = cfg_scale != 1.0 ? 2 : 1;
    s->prompt = malloc(posi + nega + tok);
    s->latents = malloc(part * (size_t)(1 + sides));
    if (!s->prompt || !s->latents)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory for %zu latents",
                            pipeline, latent_count);
    s->negative_prompt = s->prompt + posi;
    s->tokenizer = tokenizer ? s->negative_prompt + nega : NULL;
    memcpy(s->prompt, prompt, posi);
    memcpy(s->negative_prompt, negative_prompt, nega);
    if (tokenizer)
        memcpy(s->tokenizer, tokenizer, tok);
    s->pred_posi = (char *)s->latents + part;
    s->pred_nega = sides == 2 ? (char *)s->pred_posi + part : NULL;
    return DS_OK;
}

void ds__denoise_state_free(ds__denoise_state *s)
{
    ds_flow_match_free(&s->schedule);
    ds_step_io_free(&s->prompt_posi);
    ds_step_io_free(&s->prompt_nega);
    free(s->prompt); /* and negative_prompt and tokenizer */
    free(s->latents); /* and the predictions */
    memset(s, 0, sizeof *s);
}

int ds__unit_cfg_denoise(ds__denoise_state *s, const char *pipeline, ds__predict_fn predict,
                         void *run, const ds_step_context *ctx, int index, float timestep,
                         ds_error *err)
{
    int rc;
    if ((rc = predict(run, ctx, &s->prompt_posi, timestep, s->pred_posi, err)) != DS_OK)
        return rc;
    if (s->cfg_scale != 1.0) {
        if ((rc = ds__unit_cancelled(ctx, pipeline, err)) != DS_OK ||
            (rc = predict(run, ctx, &s->prompt_nega, timestep, s->pred_nega, err)) != DS_OK ||
            (rc = ds_cfg_combine(s->dtype, s->pred_posi, s->pred_nega, s->cfg_scale,
                                 s->pred_posi, s->latent_count, err)) != DS_OK)
            return rc;
    }
    if ((rc = ds_flow_match_step(&s->schedule, index, s->dtype, s->pred_posi, s->latents,
                                 s->latent_count, err)) != DS_OK)
        return rc;
    ds__unit_report(ctx, "denoise", (uint64_t)index + 1, (uint64_t)s->schedule.count);
    return DS_OK;
}

void ds__unit_runner_position(const ds__unit_runner *u, uint64_t *done, uint64_t *total)
{
    *done = (uint64_t)u->next_unit;
    *total = (uint64_t)u->steps + 1 + (uint64_t)decode_units(u);
}

void ds__unit_runner_describe(const ds__unit_runner *u, char *buf, size_t size)
{
    uint64_t done = 0, total = 0;
    if (u)
        ds__unit_runner_position(u, &done, &total);
    if (!u || done == 0)
        snprintf(buf, size, "before the prompt was encoded");
    else if (done <= (uint64_t)u->steps)
        snprintf(buf, size, "after %llu of %d denoising steps", (unsigned long long)(done - 1),
                 u->steps);
    else if (done > (uint64_t)u->steps + 1 && done < total)
        snprintf(buf, size, "after %llu of %d decode tiles",
                 (unsigned long long)(done - 1 - (uint64_t)u->steps), decode_units(u));
    else
        snprintf(buf, size, "before the decode");
}

ds_step_context ds__unit_inner_context(const ds_step_context *ctx)
{
    ds_step_context inner = *ctx;
    inner.progress = NULL;
    inner.aux = NULL;
    inner.aux_count = 0;
    return inner;
}

void ds__unit_report(const ds_step_context *ctx, const char *phase, uint64_t done,
                     uint64_t total)
{
    if (ctx->progress)
        ctx->progress(ctx->user, phase, done, total);
}

int ds__unit_cancelled(const ds_step_context *ctx, const char *pipeline, ds_error *err)
{
    if (ctx->cancelled && ctx->cancelled(ctx->user))
        return ds_error_set(err, DS_ERR_CANCELLED, "%s: cancelled", pipeline);
    return DS_OK;
}

int ds__unit_check_model(const ds_loaded_model *m, const char *pipeline, const char *role,
                         const char *cls, ds_error *err)
{
    if (!m)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: the pipeline needs a %s model (%s)", pipeline, role, cls);
    if (!m->cls || strcmp(m->cls->name, cls) != 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: the %s model is a %s (%s), expected %s", pipeline, role,
                            m->model_name ? m->model_name : "model",
                            m->cls ? m->cls->name : "class not implemented", cls);
    return DS_OK;
}
