#include "pipelines/unit_runner.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "models/model_class.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int ds__unit_runner_advance(ds__unit_runner *u, const ds__unit_ops *ops, void *run,
                            const ds_step_context *ctx, ds_error *err)
{
    if (u->failed)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "%s: the pipeline failed earlier and cannot continue", u->pipeline);
    int last = u->steps + 1;
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

void ds__unit_runner_position(const ds__unit_runner *u, uint64_t *done, uint64_t *total)
{
    *done = (uint64_t)u->next_unit;
    *total = (uint64_t)u->steps + 2;
}

void ds__unit_runner_describe(const ds__unit_runner *u, char *buf, size_t size)
{
    uint64_t done = 0, total = 0;
    if (u)
        ds__unit_runner_position(u, &done, &total);
    if (!u || done == 0)
        snprintf(buf, size, "before the prompt was encoded");
    else if (done + 1 < total)
        snprintf(buf, size, "after %llu of %llu denoising steps", (unsigned long long)(done - 1),
                 (unsigned long long)(total - 2));
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
