/* libdiffsynth-client: RunStep, with shared memory for tensors nanopb cannot carry inline. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_internal.h"

size_t ds_client_dtype_size(int dtype)
{
    switch (dtype) {
    case diffsynth_v1_DType_F32: case diffsynth_v1_DType_I32: return 4;
    case diffsynth_v1_DType_F16: case diffsynth_v1_DType_BF16: case diffsynth_v1_DType_I16: return 2;
    case diffsynth_v1_DType_F64: case diffsynth_v1_DType_I64: return 8;
    case diffsynth_v1_DType_F8_E4M3: case diffsynth_v1_DType_F8_E5M2: case diffsynth_v1_DType_I8:
    case diffsynth_v1_DType_U8: case diffsynth_v1_DType_BOOL: return 1;
    default: return 0;
    }
}

void ds_client_step_result_free(ds_client_step_result *result)
{
    if (!result)
        return;
    for (size_t i = 0; i < result->output_count; i++) {
        free((char *)result->outputs[i].name);
        free((void *)result->outputs[i].data);
    }
    free(result->outputs);
    memset(result, 0, sizeof *result);
}


static void free_request(diffsynth_v1_RunStepRequest *r)
{
    for (pb_size_t i = 0; r->inputs && i < r->inputs_count; i++)
        free(r->inputs[i].data);
    free(r->inputs);
    free(r->params);
    free(r->aux_models);
}

static int check_request(ds_client *c, const ds_client_step_request *req)
{
    if (!req->model_id || !req->model_id[0])
        return ds__client_fail(c, DS_CLIENT_EINVAL, "run_step: no model id");
    if (req->input_count > (pb_size_t)-1 || req->param_count > (pb_size_t)-1 ||
        req->aux_count > (pb_size_t)-1)
        return ds__client_fail(c, DS_CLIENT_EINVAL, "run_step: too many inputs, params or aux models");
    for (size_t i = 0; i < req->input_count; i++) {
        const ds_client_tensor *t = &req->inputs[i];
        if (!t->name || t->ndim < 0 || t->ndim > DS_CLIENT_MAX_DIMS || (!t->data && t->nbytes))
            return ds__client_fail(c, DS_CLIENT_EINVAL,
                                   "run_step: input %zu has no name, a bad rank or no data", i);
    }
    for (size_t i = 0; i < req->param_count; i++)
        if (!req->params[i].name || !req->params[i].value)
            return ds__client_fail(c, DS_CLIENT_EINVAL, "run_step: param %zu has no name or value", i);
    for (size_t i = 0; i < req->aux_count; i++)
        if (!req->aux_models[i].role || !req->aux_models[i].model_id)
            return ds__client_fail(c, DS_CLIENT_EINVAL, "run_step: aux model %zu has no role or id", i);
    return DS_CLIENT_OK;
}

/* Copies the reply's outputs out of the frame or the object, checking what the daemon says
 * against what the object holds. */
static int take_outputs(ds_client *c, const diffsynth_v1_RunStepResponse *r, const ds__client_shm *o,
                        uint64_t out_offset, ds_client_step_result *result)
{
    result->queue_s = r->queue_s;
    result->compute_s = r->compute_s;
    if (r->outputs_count == 0)
        return DS_CLIENT_OK;
    result->outputs = calloc(r->outputs_count, sizeof *result->outputs);
    if (!result->outputs)
        return ds__client_fail(c, DS_CLIENT_ENOMEM, "out of memory for the outputs");
    for (pb_size_t i = 0; i < r->outputs_count; i++) {
        const diffsynth_v1_Tensor *t = &r->outputs[i];
        int rc = ds__client_take_tensor(c, t->name ? t->name : "", t, o, out_offset, 0,
                                        &result->outputs[i]);
        if (rc)
            return rc;
        result->output_count = i + 1;
    }
    return DS_CLIENT_OK;
}

int ds_client_run_step(ds_client *client, const ds_client_step_request *request,
                       ds_client_step_result *result, int timeout_ms,
                       ds_client_progress_fn on_progress, void *user, uint64_t *request_id_out)
{
    if (!client || !request || !result)
        return DS_CLIENT_EINVAL;
    memset(result, 0, sizeof *result);
    int rc = check_request(client, request);
    if (rc)
        return rc;
    size_t limit = ds__client_inline_limit(request->inline_limit);
    uint64_t in_bytes = 0;
    for (size_t i = 0; i < request->input_count; i++)
        if (request->inputs[i].nbytes > limit)
            in_bytes = ds__client_align_up(in_bytes, DS__CLIENT_SHM_ALIGN) +
                       request->inputs[i].nbytes;
    uint64_t out_offset = ds__client_align_up(in_bytes, 4096);
    uint64_t capacity = request->output_capacity ? request->output_capacity
                                                 : DS_CLIENT_DEFAULT_OUTPUT_CAPACITY;

    ds__client_shm shm = {.fd = -1};
    diffsynth_v1_Envelope env = diffsynth_v1_Envelope_init_zero, resp;
    memset(&resp, 0, sizeof resp);
    diffsynth_v1_RunStepRequest *r = &env.body.run_step;
    env.which_body = diffsynth_v1_Envelope_run_step_tag;
    if ((rc = ds__client_shm_create(client, &shm, out_offset + capacity)))
        goto done;

    r->model_id = (char *)request->model_id;
    r->step = (char *)(request->step ? request->step : "");
    r->inputs = calloc(request->input_count ? request->input_count : 1, sizeof *r->inputs);
    r->params = calloc(request->param_count ? request->param_count : 1, sizeof *r->params);
    r->aux_models = calloc(request->aux_count ? request->aux_count : 1, sizeof *r->aux_models);
    if (!r->inputs || !r->params || !r->aux_models) {
        rc = ds__client_fail(client, DS_CLIENT_ENOMEM, "out of memory building the request");
        goto done;
    }
    uint64_t cursor = 0;
    for (size_t i = 0; i < request->input_count; i++) {
        const ds_client_tensor *t = &request->inputs[i];
        diffsynth_v1_Tensor *m = &r->inputs[i];
        r->inputs_count = (pb_size_t)(i + 1);
        m->name = (char *)t->name;
        m->dtype = (diffsynth_v1_DType)t->dtype;
        m->shape_count = (pb_size_t)t->ndim;
        m->shape = (int64_t *)t->shape;
        if (t->nbytes > limit) {
            cursor = ds__client_align_up(cursor, DS__CLIENT_SHM_ALIGN);
            memcpy(shm.map + cursor, t->data, t->nbytes);
            m->has_shm = true;
            m->shm.name = shm.name;
            m->shm.offset = cursor;
            m->shm.size = t->nbytes;
            cursor += t->nbytes;
        } else if (t->nbytes > 0) {
            m->data = malloc(PB_BYTES_ARRAY_T_ALLOCSIZE(t->nbytes));
            if (!m->data) {
                rc = ds__client_fail(client, DS_CLIENT_ENOMEM, "out of memory building the request");
                goto done;
            }
            m->data->size = (pb_size_t)t->nbytes;
            memcpy(m->data->bytes, t->data, t->nbytes);
        }
    }
    for (size_t i = 0; i < request->param_count; i++) {
        r->params[i].name = (char *)request->params[i].name;
        r->params[i].value = (char *)request->params[i].value;
    }
    r->params_count = (pb_size_t)request->param_count;
    for (size_t i = 0; i < request->aux_count; i++) {
        r->aux_models[i].role = (char *)request->aux_models[i].role;
        r->aux_models[i].model_id = (char *)request->aux_models[i].model_id;
    }
    r->aux_models_count = (pb_size_t)request->aux_count;
    r->has_output_region = true;
    r->output_region.name = shm.name;
    r->output_region.offset = out_offset;
    r->output_region.size = capacity;
    r->max_inline_output_bytes = limit;

    env.request_id = ds_client_next_id(client);
    if (request_id_out)
        *request_id_out = env.request_id;
    rc = ds__client_call_fds(client, &env, &shm.fd, 1, &resp, timeout_ms, on_progress, user);
    if (rc)
        goto done;
    rc = take_outputs(client, &resp.body.run_step_result, &shm, out_offset, result);
    if (rc)
        ds_client_step_result_free(result);

done:
    ds_client_envelope_free(&resp);
    free_request(r);
    ds__client_shm_destroy(&shm);
    return rc;
}
