/* libdiffsynth-client: RunPipeline, with shared memory for what nanopb cannot carry inline and
 * a cancel flag that a signal handler may set. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/client_internal.h"

#define DEFAULT_PIPELINE "qwen_image"
/* Inputs in the shared-memory object start at multiples of this (as RunStep's do). */

struct ds_client_cancel_flag {
    atomic_int requested; /* lock-free on every platform we build for: signal-safe */
};

ds_client_cancel_flag *ds_client_cancel_flag_new(void)
{
    ds_client_cancel_flag *c = malloc(sizeof *c);
    if (c)
        atomic_init(&c->requested, 0);
    return c;
}

void ds_client_cancel_flag_free(ds_client_cancel_flag *cancel) { free(cancel); }

void ds_client_cancel_flag_raise(ds_client_cancel_flag *cancel)
{
    if (cancel)
        atomic_store(&cancel->requested, 1);
}

bool ds_client_cancel_flag_raised(const ds_client_cancel_flag *cancel)
{
    return cancel && atomic_load(&((ds_client_cancel_flag *)cancel)->requested) != 0;
}

void ds_client_pipeline_result_free(ds_client_pipeline_result *result)
{
    if (!result)
        return;
    free(result->png);
    free((char *)result->latents.name);
    free((void *)result->latents.data);
    for (size_t i = 0; i < result->output_count; i++) {
        free((char *)result->outputs[i].name);
        free((void *)result->outputs[i].data);
    }
    free(result->outputs);
    for (size_t i = 0; i < result->result_count; i++)
        free(result->results[i].name);
    free(result->results);
    memset(result, 0, sizeof *result);
}


static int check_tensor(ds_client *c, const char *field, const ds_client_tensor *t)
{
    if (!t)
        return DS_CLIENT_OK;
    if (t->ndim < 1 || t->ndim > DS_CLIENT_MAX_DIMS || (!t->data && t->nbytes))
        return ds__client_fail(c, DS_CLIENT_EINVAL, "run_pipeline: %s has a bad rank or no data",
                               field);
    return DS_CLIENT_OK;
}

static int check_request(ds_client *c, const ds_client_pipeline_request *req)
{
    if (req->model_count > (pb_size_t)-1 || req->param_count > (pb_size_t)-1)
        return ds__client_fail(c, DS_CLIENT_EINVAL, "run_pipeline: too many models or params");
    for (size_t i = 0; i < req->model_count; i++) {
        const ds_client_pipeline_model *m = &req->models[i];
        if (!m->role || m->path_count > (pb_size_t)-1 || (m->path_count && !m->paths))
            return ds__client_fail(c, DS_CLIENT_EINVAL,
                                   "run_pipeline: model %zu has no role or a bad path list", i);
        for (size_t k = 0; k < m->path_count; k++)
            if (!m->paths[k])
                return ds__client_fail(c, DS_CLIENT_EINVAL, "run_pipeline: model %zu path %zu is NULL",
                                       i, k);
    }
    for (size_t i = 0; i < req->param_count; i++)
        if (!req->params[i].name || !req->params[i].value)
            return ds__client_fail(c, DS_CLIENT_EINVAL,
                                   "run_pipeline: param %zu has no name or value", i);
    int rc;
    if ((rc = check_tensor(c, "input_image", req->input_image)) ||
        (rc = check_tensor(c, "controlnet_image", req->controlnet_image)) ||
        (rc = check_tensor(c, "initial_noise", req->initial_noise)))
        return rc;
    if (req->input_count > (pb_size_t)-1 || (req->input_count && !req->inputs))
        return ds__client_fail(c, DS_CLIENT_EINVAL, "run_pipeline: a bad input list");
    for (size_t i = 0; i < req->input_count; i++) {
        if (!req->inputs[i].name)
            return ds__client_fail(c, DS_CLIENT_EINVAL, "run_pipeline: input %zu has no name", i);
        if ((rc = check_tensor(c, req->inputs[i].name, &req->inputs[i])))
            return rc;
    }
    return DS_CLIENT_OK;
}

/* Fills one optional tensor of the request: inline up to `limit` bytes, else copied into the
 * object at *cursor. */
static int put_tensor(ds_client *c, const ds_client_tensor *t, size_t limit, ds__client_shm *o,
                      uint64_t *cursor, bool *has, diffsynth_v1_Tensor *m)
{
    if (!t)
        return DS_CLIENT_OK;
    *has = true;
    m->name = "";
    m->dtype = (diffsynth_v1_DType)t->dtype;
    m->shape_count = (pb_size_t)t->ndim;
    m->shape = (int64_t *)t->shape;
    if (t->nbytes > limit) {
        *cursor = ds__client_align_up(*cursor, DS__CLIENT_SHM_ALIGN);
        memcpy(o->map + *cursor, t->data, t->nbytes);
        m->has_shm = true;
        m->shm.name = o->name;
        m->shm.offset = *cursor;
        m->shm.size = t->nbytes;
        *cursor += t->nbytes;
    } else if (t->nbytes > 0) {
        m->data = malloc(PB_BYTES_ARRAY_T_ALLOCSIZE(t->nbytes));
        if (!m->data)
            return ds__client_fail(c, DS_CLIENT_ENOMEM, "out of memory building the request");
        m->data->size = (pb_size_t)t->nbytes;
        memcpy(m->data->bytes, t->data, t->nbytes);
    }
    return DS_CLIENT_OK;
}

static uint64_t shm_bytes(const ds_client_tensor *t, size_t limit, uint64_t bytes)
{
    return t && t->nbytes > limit
               ? ds__client_align_up(bytes, DS__CLIENT_SHM_ALIGN) + t->nbytes
               : bytes;
}

static void free_request(diffsynth_v1_RunPipelineRequest *r)
{
    free(r->input_image.data);
    free(r->controlnet_image.data);
    free(r->initial_noise.data);
    for (pb_size_t i = 0; r->inputs && i < r->inputs_count; i++)
        free(r->inputs[i].data);
    free(r->inputs);
    free(r->models);
    free(r->params);
}

/* An output of the reply (see ds__client_take_tensor); NULL-safe on `has`. */
static int take_output(ds_client *c, const char *name, bool has, const diffsynth_v1_Tensor *t,
                       const ds__client_shm *o, uint64_t out_offset, ds_client_tensor *out)
{
    if (!has)
        return ds__client_fail(c, DS_CLIENT_EPROTO, "the reply has no \"%s\"", name);
    return ds__client_take_tensor(c, name, t, o, out_offset, 1, out);
}

static int take_result(ds_client *c, const diffsynth_v1_RunPipelineResponse *r, bool named,
                       const ds__client_shm *o, uint64_t out_offset, ds_client_pipeline_result *result)
{
    int rc;
    if (r->results_count) {
        result->results = calloc(r->results_count, sizeof *result->results);
        if (!result->results)
            return ds__client_fail(c, DS_CLIENT_ENOMEM, "out of memory for the results");
        for (pb_size_t i = 0; i < r->results_count; i++) {
            ds_client_pipeline_scalar *x = &result->results[result->result_count++];
            if (!(x->name = strdup(r->results[i].name ? r->results[i].name : "")))
                return ds__client_fail(c, DS_CLIENT_ENOMEM, "out of memory for the results");
            x->is_integer = r->results[i].is_integer;
            x->integer = r->results[i].integer;
            x->number = r->results[i].number;
        }
    }
    result->seed = r->seed;
    result->steps = r->steps;
    result->height = r->height;
    result->width = r->width;
    result->queue_s = r->queue_s;
    result->encode_s = r->encode_s;
    result->denoise_s = r->denoise_s;
    result->decode_s = r->decode_s;
    if (named) {
        if (r->outputs_count == 0)
            return ds__client_fail(c, DS_CLIENT_EPROTO, "the reply has no outputs");
        result->outputs = calloc(r->outputs_count, sizeof *result->outputs);
        if (!result->outputs)
            return ds__client_fail(c, DS_CLIENT_ENOMEM, "out of memory for the outputs");
        for (pb_size_t i = 0; i < r->outputs_count; i++) {
            const char *name = r->outputs[i].name ? r->outputs[i].name : "";
            if ((rc = ds__client_take_tensor(c, name, &r->outputs[i], o, out_offset, 1,
                                             &result->outputs[i])))
                return rc;
            result->output_count++;
        }
        return DS_CLIENT_OK;
    }
    ds_client_tensor png = {0};
    rc = take_output(c, "png", r->has_png, &r->png, o, out_offset, &png);
    if (rc)
        return rc;
    free((char *)png.name);
    result->png = (uint8_t *)png.data;
    result->png_size = png.nbytes;
    if (png.dtype != diffsynth_v1_DType_U8 || png.ndim != 1)
        return ds__client_fail(c, DS_CLIENT_EPROTO, "output \"png\" is not a [n] u8 tensor");
    return take_output(c, "latents", r->has_latents, &r->latents, o, out_offset,
                       &result->latents);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for the reply to request `id`, passing its progress on. With a cancel flag the wait
 * runs in short slices so that a flag set by a signal handler is seen soon; the Cancel request
 * then goes out from this thread, and its own reply is consumed here. */
static int wait_reply(ds_client *c, uint64_t id, ds_client_cancel_flag *cancel, int timeout_ms,
                      ds_client_progress_fn on_progress, void *user, diffsynth_v1_Envelope *out)
{
    uint64_t cancel_id = 0;
    int64_t last_frame = now_ms();
    for (;;) {
        if (!cancel_id && ds_client_cancel_flag_raised(cancel)) {
            diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
            req.request_id = cancel_id = ds_client_next_id(c);
            req.which_body = diffsynth_v1_Envelope_cancel_tag;
            req.body.cancel.target_request_id = id;
            int rc = ds_client_send(c, &req);
            if (rc)
                return rc;
        }
        int slice = cancel && !cancel_id ? DS_CLIENT_CANCEL_POLL_MS : timeout_ms;
        if (timeout_ms >= 0) {
            int64_t left = last_frame + timeout_ms - now_ms();
            if (left < 0)
                left = 0;
            if (slice < 0 || slice > left)
                slice = (int)left;
        }
        diffsynth_v1_Envelope env;
        int rc = ds_client_recv(c, &env, slice);
        if (rc == DS_CLIENT_ETIMEDOUT) {
            if (timeout_ms >= 0 && now_ms() - last_frame >= timeout_ms)
                return ds__client_fail(c, DS_CLIENT_ETIMEDOUT,
                                       "no reply from diffsynthd within %d ms", timeout_ms);
            continue;
        }
        if (rc)
            return rc;
        last_frame = now_ms();
        bool undecodable = env.request_id == 0 && env.which_body == diffsynth_v1_Envelope_error_tag;
        if (env.request_id != id && !undecodable) {
            /* The Cancel's own answer, or a frame of a request this call does not own. */
            ds_client_envelope_free(&env);
            continue;
        }
        if (env.which_body == diffsynth_v1_Envelope_event_tag) {
            if (on_progress && env.body.event.which_kind == diffsynth_v1_Event_progress_tag)
                on_progress(&env.body.event.kind.progress, id, user);
            ds_client_envelope_free(&env);
            continue;
        }
        if (env.which_body == diffsynth_v1_Envelope_error_tag) {
            ds__client_daemon_error(c, &env.body.error);
            ds_client_envelope_free(&env);
            return DS_CLIENT_EDAEMON;
        }
        if (env.which_body != diffsynth_v1_Envelope_run_pipeline_result_tag) {
            pb_size_t got = env.which_body;
            ds_client_envelope_free(&env);
            return ds__client_fail(c, DS_CLIENT_EPROTO,
                                   "daemon answered request %llu (run_pipeline) with body %u",
                                   (unsigned long long)id, (unsigned)got);
        }
        *out = env;
        return DS_CLIENT_OK;
    }
}

int ds_client_run_pipeline(ds_client *client, const ds_client_pipeline_request *request,
                           ds_client_pipeline_result *result, int timeout_ms,
                           ds_client_progress_fn on_progress, void *user, uint64_t *request_id_out)
{
    if (!client || !request || !result)
        return DS_CLIENT_EINVAL;
    memset(result, 0, sizeof *result);
    int rc = check_request(client, request);
    if (rc)
        return rc;
    size_t limit = ds__client_inline_limit(request->inline_limit);
    uint64_t in_bytes = shm_bytes(request->input_image, limit, 0);
    in_bytes = shm_bytes(request->controlnet_image, limit, in_bytes);
    in_bytes = shm_bytes(request->initial_noise, limit, in_bytes);
    for (size_t i = 0; i < request->input_count; i++)
        in_bytes = shm_bytes(&request->inputs[i], limit, in_bytes);
    uint64_t out_offset = ds__client_align_up(in_bytes, 4096);
    uint64_t capacity = request->output_capacity ? request->output_capacity
                                                 : DS_CLIENT_DEFAULT_OUTPUT_CAPACITY;

    ds__client_shm shm = {.fd = -1};
    diffsynth_v1_Envelope env = diffsynth_v1_Envelope_init_zero, resp;
    memset(&resp, 0, sizeof resp);
    diffsynth_v1_RunPipelineRequest *r = &env.body.run_pipeline;
    env.which_body = diffsynth_v1_Envelope_run_pipeline_tag;
    if ((rc = ds__client_shm_create(client, &shm, out_offset + capacity)))
        goto done;

    r->pipeline = (char *)(request->pipeline ? request->pipeline : DEFAULT_PIPELINE);
    r->prompt = (char *)(request->prompt ? request->prompt : "");
    r->negative_prompt = (char *)(request->negative_prompt ? request->negative_prompt : "");
    r->dtype = (char *)(request->dtype ? request->dtype : "");
    r->tokenizer = (char *)(request->tokenizer ? request->tokenizer : "");
    r->models = calloc(request->model_count ? request->model_count : 1, sizeof *r->models);
    r->params = calloc(request->param_count ? request->param_count : 1, sizeof *r->params);
    if (!r->models || !r->params) {
        rc = ds__client_fail(client, DS_CLIENT_ENOMEM, "out of memory building the request");
        goto done;
    }
    for (size_t i = 0; i < request->model_count; i++) {
        const ds_client_pipeline_model *m = &request->models[i];
        r->models[i].role = (char *)m->role;
        r->models[i].model_id = (char *)(m->model_id ? m->model_id : "");
        r->models[i].paths = (char **)m->paths;
        r->models[i].paths_count = (pb_size_t)m->path_count;
    }
    r->models_count = (pb_size_t)request->model_count;
    for (size_t i = 0; i < request->param_count; i++) {
        r->params[i].name = (char *)request->params[i].name;
        r->params[i].value = (char *)request->params[i].value;
    }
    r->params_count = (pb_size_t)request->param_count;
    uint64_t cursor = 0;
    if ((rc = put_tensor(client, request->input_image, limit, &shm, &cursor, &r->has_input_image,
                         &r->input_image)) ||
        (rc = put_tensor(client, request->controlnet_image, limit, &shm, &cursor,
                         &r->has_controlnet_image, &r->controlnet_image)) ||
        (rc = put_tensor(client, request->initial_noise, limit, &shm, &cursor,
                         &r->has_initial_noise, &r->initial_noise)))
        goto done;
    if (request->input_count) {
        r->inputs = calloc(request->input_count, sizeof *r->inputs);
        if (!r->inputs) {
            rc = ds__client_fail(client, DS_CLIENT_ENOMEM, "out of memory building the request");
            goto done;
        }
        for (size_t i = 0; i < request->input_count; i++) {
            bool has = false;
            if ((rc = put_tensor(client, &request->inputs[i], limit, &shm, &cursor, &has,
                                 &r->inputs[i])))
                goto done;
            r->inputs[i].name = (char *)request->inputs[i].name;
            r->inputs_count = (pb_size_t)(i + 1);
        }
    }
    r->named_outputs = request->named_outputs;
    r->video_format = (char *)(request->video_format ? request->video_format : "");
    r->fps = request->fps;
    r->video_quality = request->video_quality;
    r->video_lossless = request->video_lossless;
    r->has_output_region = true;
    r->output_region.name = shm.name;
    r->output_region.offset = out_offset;
    r->output_region.size = capacity;
    r->max_inline_output_bytes = limit;

    env.request_id = ds_client_next_id(client);
    if (request_id_out)
        *request_id_out = env.request_id;
    if ((rc = ds_client_send_fds(client, &env, &shm.fd, 1)))
        goto done;
    rc = wait_reply(client, env.request_id, request->cancel, timeout_ms, on_progress, user, &resp);
    if (rc)
        goto done;
    rc = take_result(client, &resp.body.run_pipeline_result, request->named_outputs, &shm,
                     out_offset, result);
    if (rc)
        ds_client_pipeline_result_free(result);

done:
    ds_client_envelope_free(&resp);
    free_request(r);
    ds__client_shm_destroy(&shm);
    return rc;
}
