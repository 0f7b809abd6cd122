#include "daemon/run_step.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "daemon/daemon.h"
#include "daemon/paths.h"
#include "daemon/reply.h"
#include "daemon/shm_region.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "models/memory_estimate.h"
#include "models/model_step.h"
#include "pipelines/pipeline.h"

#define DEFAULT_STEP "forward"
#define STEP_NAME_MAX 64
/* Room in a reply frame for everything but the outputs' data (envelope, timings), and per
 * output for its name, dtype, shape and shm fields. Generous: an overestimate only sends an
 * output through the region that would just have fitted inline. */
#define REPLY_RESERVE_BYTES 4096
#define PER_OUTPUT_OVERHEAD 128
/* Outputs in the region start at multiples of this, so a client may use them in place. */
#define OUTPUT_ALIGN 64

typedef struct run_step_job {
    ds_job job; /* first: the scheduler hands us &job */
    ds_daemon *daemon;
    ds_conn *conn;
    ds_pool_model *entry;
    ds_pool_model **aux_entries; /* pinned, aux_count */
    ds_step_aux_model *aux;      /* roles owned via aux_roles */
    char **aux_roles;
    size_t aux_count;
    const ds_model_step *step;
    char step_name[STEP_NAME_MAX];
    ds_step_io in;
    ds_step_io out;
    ds_shm_mapping *input_maps;
    size_t input_map_count;
    ds_shm_mapping out_map;
    char *out_region_name;
    uint32_t out_region_fd_index;
    uint64_t out_region_offset;
    uint64_t max_inline;
    /* Per output, after the worker placed it: in the region at region offset + *_offset. */
    unsigned char *in_region;
    uint64_t *region_offset;
    double submitted_s;
    double queue_s;
    double compute_s;
    ds_admission_ticket admitted; /* the step's memory, reserved until the reply */
} run_step_job;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* --- validation (pure) --------------------------------------------------------------------- */

static int check_name(const char *what, const char *name, ds_error *err)
{
    size_t len = strlen(name);
    if (len == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s is empty", what);
    if (len > DS_RUN_STEP_MAX_NAME)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s has %zu bytes, at most %d", what,
                            len, DS_RUN_STEP_MAX_NAME);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7F)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s has a control character at byte %zu", what, i);
    return DS_OK;
}

static int check_tensor(size_t index, const Diffsynth__V1__Tensor *t, ds_error *err)
{
    char what[DS_RUN_STEP_MAX_NAME + 16];
    snprintf(what, sizeof what, "run_step.inputs[%zu].name", index);
    int rc = check_name(what, t->name, err);
    if (rc != DS_OK)
        return rc;
    snprintf(what, sizeof what, "input \"%s\"", t->name);
    return ds_shm_check_tensor(what, t, 0, err);
}

int ds_run_step_validate(const Diffsynth__V1__RunStepRequest *req, ds_error *err)
{
    int rc = ds_pool_check_id("run_step.model_id", req->model_id, err);
    if (rc != DS_OK)
        return rc;
    if (strlen(req->step) >= STEP_NAME_MAX)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "run_step.step has %zu bytes, at most %d",
                            strlen(req->step), STEP_NAME_MAX - 1);
    if (req->n_inputs > DS_RUN_STEP_MAX_TENSORS)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "run_step has %zu inputs, at most %d",
                            req->n_inputs, DS_RUN_STEP_MAX_TENSORS);
    if (req->n_params > DS_RUN_STEP_MAX_PARAMS)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "run_step has %zu params, at most %d",
                            req->n_params, DS_RUN_STEP_MAX_PARAMS);
    if (req->n_aux_models > DS_RUN_STEP_MAX_AUX)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_step has %zu aux_models, at most %d", req->n_aux_models,
                            DS_RUN_STEP_MAX_AUX);
    for (size_t i = 0; i < req->n_inputs; i++) {
        if ((rc = check_tensor(i, req->inputs[i], err)) != DS_OK)
            return rc;
        /* Quadratic, but bounded by DS_RUN_STEP_MAX_TENSORS and done once per request. */
        for (size_t k = 0; k < i; k++)
            if (strcmp(req->inputs[k]->name, req->inputs[i]->name) == 0)
                return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                    "input \"%s\" is given twice (inputs[%zu] and inputs[%zu])",
                                    req->inputs[i]->name, k, i);
    }
    char what[64];
    for (size_t i = 0; i < req->n_params; i++) {
        snprintf(what, sizeof what, "run_step.params[%zu].name", i);
        if ((rc = check_name(what, req->params[i]->name, err)) != DS_OK)
            return rc;
        if (strlen(req->params[i]->value) > DS_RUN_STEP_MAX_VALUE)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "parameter \"%s\" has a value of %zu bytes, at most %d",
                                req->params[i]->name, strlen(req->params[i]->value),
                                DS_RUN_STEP_MAX_VALUE);
        for (size_t k = 0; k < i; k++)
            if (strcmp(req->params[k]->name, req->params[i]->name) == 0)
                return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "parameter \"%s\" is given twice",
                                    req->params[i]->name);
    }
    for (size_t i = 0; i < req->n_aux_models; i++) {
        snprintf(what, sizeof what, "run_step.aux_models[%zu].role", i);
        if ((rc = check_name(what, req->aux_models[i]->role, err)) != DS_OK)
            return rc;
        const char *aux_id = req->aux_models[i]->model_id;
        if (!aux_id[0] || strlen(aux_id) >= DS_MODEL_ID_MAX)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "run_step.aux_models[%zu].model_id \"%.64s\" is not a model id", i,
                                aux_id);
        for (size_t k = 0; k < i; k++)
            if (strcmp(req->aux_models[k]->role, req->aux_models[i]->role) == 0)
                return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "aux role \"%s\" is given twice",
                                    req->aux_models[i]->role);
    }
    if (req->output_region)
        return ds_shm_check_output_region("run_step.output_region", req->output_region, err);
    return DS_OK;
}

/* --- the job ------------------------------------------------------------------------------- */

static void job_free(run_step_job *sj)
{
    ds_admission_release(&sj->daemon->admission, &sj->admitted);
    ds_step_io_free(&sj->in);
    ds_step_io_free(&sj->out);
    for (size_t i = 0; i < sj->input_map_count; i++)
        ds_shm_unmap(&sj->input_maps[i]);
    free(sj->input_maps);
    ds_shm_unmap(&sj->out_map);
    free(sj->out_region_name);
    for (size_t i = 0; i < sj->aux_count; i++) {
        if (sj->aux_entries && sj->aux_entries[i])
            ds_pool_unpin(sj->aux_entries[i]);
        if (sj->aux_roles)
            free(sj->aux_roles[i]);
    }
    free(sj->aux_entries);
    free(sj->aux_roles);
    free(sj->aux);
    if (sj->entry)
        ds_pool_unpin(sj->entry);
    free(sj->in_region);
    free(sj->region_offset);
    free(sj);
}

static int step_cancelled(void *user) { return ds_job_cancelled(user); }

static void step_progress(void *user, const char *phase, uint64_t done, uint64_t total)
{
    ds_job_report(user, phase, done, total, NULL);
}

/* Decides, on the worker, where each output goes: inline while the reply frame has room and
 * the output is within the client's inline limit, else into the output region (copied here,
 * off the loop thread). */
static int place_outputs(run_step_job *sj, ds_error *err)
{
    size_t n = sj->out.tensor_count;
    if (n == 0)
        return DS_OK;
    sj->in_region = calloc(n, sizeof *sj->in_region);
    sj->region_offset = calloc(n, sizeof *sj->region_offset);
    if (!sj->in_region || !sj->region_offset)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory placing the outputs");
    uint64_t cap = sj->daemon->max_frame_bytes;
    uint64_t budget = cap > REPLY_RESERVE_BYTES ? cap - REPLY_RESERVE_BYTES : 0;
    uint64_t inline_used = 0, region_used = 0;
    for (size_t i = 0; i < n; i++) {
        const ds_step_tensor *t = &sj->out.tensors[i];
        uint64_t bytes = ds_tensor_nbytes(&t->tensor);
        uint64_t cost = bytes + strlen(t->name) + PER_OUTPUT_OVERHEAD;
        int fits_inline = (sj->max_inline == 0 || bytes <= sj->max_inline) &&
                          cost <= budget - inline_used;
        if (fits_inline) {
            inline_used += cost;
            continue;
        }
        uint64_t start = (region_used + OUTPUT_ALIGN - 1) / OUTPUT_ALIGN * OUTPUT_ALIGN;
        if (!sj->out_map.base || start > sj->out_map.size || bytes > sj->out_map.size - start) {
            char desc[128];
            if (!sj->out_map.base)
                return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                                    "%s: output \"%s\" (%s, %llu bytes) does not fit inline "
                                    "(frame cap %llu bytes%s) and the request has no "
                                    "output_region",
                                    sj->step_name, t->name,
                                    ds_tensor_describe(&t->tensor, desc, sizeof desc),
                                    (unsigned long long)bytes, (unsigned long long)cap,
                                    sj->max_inline ? ", or the request's inline limit" : "");
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                                "%s: output \"%s\" (%s, %llu bytes) does not fit inline and the "
                                "output_region of %llu bytes has only %llu left",
                                sj->step_name, t->name,
                                ds_tensor_describe(&t->tensor, desc, sizeof desc),
                                (unsigned long long)bytes, (unsigned long long)sj->out_map.size,
                                (unsigned long long)(start < sj->out_map.size
                                                         ? sj->out_map.size - start
                                                         : 0));
        }
        memcpy(sj->out_map.data + start, t->tensor.data, bytes);
        sj->in_region[i] = 1;
        sj->region_offset[i] = start;
        region_used = start + bytes;
    }
    return DS_OK;
}

/* Folders a step reads on a client's word (a tokenizer folder) obey the same model roots as
 * model files: resolved, then compared component-wise with each root. */
static int step_check_path(void *user, const char *path, ds_error *err)
{
    return ds_model_roots_check(&((const run_step_job *)user)->daemon->roots, path, err);
}

/* The models' files are still what was loaded: checked when the request is accepted and
 * again when it starts to run, since it may have waited in the queue. */
static int check_fresh(const run_step_job *sj, ds_error *err)
{
    int rc = ds_pool_check_fresh(sj->entry, err);
    for (size_t i = 0; rc == DS_OK && i < sj->aux_count; i++)
        rc = ds_pool_check_fresh(sj->aux_entries[i], err);
    return rc;
}

static int check_intact(const run_step_job *sj, ds_error *err)
{
    int rc = ds_pool_check_faults(sj->entry, err);
    for (size_t i = 0; rc == DS_OK && i < sj->aux_count; i++)
        rc = ds_pool_check_faults(sj->aux_entries[i], err);
    for (size_t i = 0; rc == DS_OK && i < sj->input_map_count; i++)
        rc = ds_shm_check_intact(&sj->input_maps[i], err);
    if (rc == DS_OK)
        rc = ds_shm_check_intact(&sj->out_map, err);
    return rc;
}

static int run_step_run(ds_job *job)
{
    run_step_job *sj = (run_step_job *)job;
    double started = now_s();
    sj->queue_s = started - sj->submitted_s;
    ds_step_context ctx = {
        .backend = sj->daemon->backend,
        .cancelled = step_cancelled,
        .progress = step_progress,
        .user = job,
        .aux = sj->aux,
        .aux_count = sj->aux_count,
        .vram = sj->daemon->vram,
        .convert = sj->daemon->convert,
        .check_path = step_check_path,
    };
    int rc = check_fresh(sj, &job->error);
    if (rc != DS_OK)
        return rc;
    if (sj->daemon->convert)
        ds_admission_fit_convert_budget(sj->daemon->convert, sj->daemon->convert_limit,
                                        sj->daemon->admission.limit);
    rc = sj->step->run(sj->entry->model, &ctx, &sj->in, &sj->out, &job->error);
    sj->compute_s = now_s() - started;
    if (rc == DS_OK)
        rc = place_outputs(sj, &job->error);
    /* A fault on a model file or a client's region made the step read zeros (or write into
     * them): whatever it returned, the request failed. */
    ds_error lost;
    if (check_intact(sj, &lost) != DS_OK) {
        job->error = lost;
        return lost.code;
    }
    return rc;
}

static void run_step_progress(ds_job *job, const ds_job_progress *p)
{
    ds_reply_progress(((run_step_job *)job)->conn, job->request_id, p);
}

/* Loop thread. The reply's tensors point into the job's outputs: nothing is copied again. */
static void run_step_complete(ds_job *job)
{
    run_step_job *sj = (run_step_job *)job;
    ds_daemon *d = sj->daemon;
    ds_conn *conn = sj->conn;
    size_t n = sj->out.tensor_count;
    Diffsynth__V1__Tensor *tensors = NULL, **tensor_ptrs = NULL;
    Diffsynth__V1__SharedRegion *regions = NULL;

    if (!ds_conn_is_open(conn)) {
        ds_log_debug("request %llu finished (%s) after its client left; result dropped",
                     (unsigned long long)job->request_id, ds_status_name(job->status));
        goto done;
    }
    if (job->status != DS_OK) {
        ds_reply_error(d, conn, job->request_id, job->status, job->error.message);
        goto done;
    }
    tensors = calloc(n ? n : 1, sizeof *tensors);
    tensor_ptrs = calloc(n ? n : 1, sizeof *tensor_ptrs);
    regions = calloc(n ? n : 1, sizeof *regions);
    if (!tensors || !tensor_ptrs || !regions) {
        ds_reply_error(d, conn, job->request_id, DS_ERR_RESOURCE_EXHAUSTED,
                                "out of memory building the reply");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        ds_step_tensor *st = &sj->out.tensors[i];
        Diffsynth__V1__Tensor *t = &tensors[i];
        diffsynth__v1__tensor__init(t);
        t->name = st->name;
        t->dtype = (Diffsynth__V1__DType)st->tensor.dtype;
        t->n_shape = (size_t)st->tensor.ndim;
        t->shape = st->tensor.shape;
        size_t bytes = ds_tensor_nbytes(&st->tensor);
        if (sj->in_region[i]) {
            diffsynth__v1__shared_region__init(&regions[i]);
            regions[i].name = sj->out_region_name;
            regions[i].fd_index = sj->out_region_fd_index;
            regions[i].offset = sj->out_region_offset + sj->region_offset[i];
            regions[i].size = bytes;
            t->shm = &regions[i];
        } else {
            t->data.data = st->tensor.data;
            t->data.len = bytes;
        }
        tensor_ptrs[i] = t;
    }
    Diffsynth__V1__RunStepResponse res = DIFFSYNTH__V1__RUN_STEP_RESPONSE__INIT;
    res.outputs = tensor_ptrs;
    res.n_outputs = n;
    res.queue_s = sj->queue_s;
    res.compute_s = sj->compute_s;
    Diffsynth__V1__Envelope out = DIFFSYNTH__V1__ENVELOPE__INIT;
    out.request_id = job->request_id;
    out.body_case = DIFFSYNTH__V1__ENVELOPE__BODY_RUN_STEP_RESULT;
    out.run_step_result = &res;
    d->requests_served++;
    ds_log_debug("%s: request %llu: %s of %s done in %.3f s (queued %.3f s), %zu outputs",
                 ds_conn_describe(conn), (unsigned long long)job->request_id, sj->step_name,
                 sj->entry->id, sj->compute_s, sj->queue_s, n);
    ds_conn_send(conn, &out);

done:
    free(tensors);
    free(tensor_ptrs);
    free(regions);
    ds_conn_end_job(conn, job->request_id);
    ds_conn_unref(conn);
    job_free(sj);
}

/* --- the request --------------------------------------------------------------------------- */

/* Reserves the step's estimated memory (models/memory_estimate.h) from the inputs' declared
 * shapes: refused before anything runs when it cannot fit. */
static int admit(run_step_job *sj, const Diffsynth__V1__RunStepRequest *req, ds_error *err)
{
    ds_daemon *d = sj->daemon;
    ds_memory_input *inputs = calloc(req->n_inputs ? req->n_inputs : 1, sizeof *inputs);
    if (!inputs)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory admitting the step");
    for (size_t i = 0; i < req->n_inputs; i++) {
        const Diffsynth__V1__Tensor *t = req->inputs[i];
        inputs[i] = (ds_memory_input){t->name, (ds_dtype)t->dtype, (int)t->n_shape, t->shape};
    }
    ds_memory_need need;
    int rc = ds_memory_step(sj->entry->model, sj->step, inputs, req->n_inputs,
                            d->admission.threads, &need, err);
    free(inputs);
    if (rc != DS_OK)
        return rc;
    char what[DS_MODEL_ID_MAX + STEP_NAME_MAX + 32];
    snprintf(what, sizeof what, "run_step %s of %s", sj->step_name, sj->entry->id);
    return ds_admission_reserve(&d->admission, &sj->admitted, what, need,
                                ds_daemon_device_budget(d), err);
}

/* "forward, encode_prompt" for messages: the class's steps, then those pipelines add to it. */
static void list_steps(const ds_model_class *cls, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < cls->step_count && used < size; i++) {
        int k = snprintf(buf + used, size - used, "%s%s", i ? ", " : "", cls->steps[i].name);
        if (k < 0)
            break;
        used += (size_t)k;
    }
    ds_pipeline_class_step_names(cls->name, buf, size);
}

static int find_step(const ds_pool_model *entry, const char *name, const ds_model_step **out,
                     ds_error *err)
{
    const ds_loaded_model *m = entry->model;
    const ds_model_class *cls = ds_model_class_find(m->model_class);
    if (!cls || cls->step_count == 0)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "model %s (%s, class %s) has no steps in this build: it can be "
                            "loaded and listed but not run",
                            entry->id, m->model_name, m->model_class);
    *out = ds_model_step_find(cls->steps, cls->step_count, name);
    if (!*out)
        *out = ds_pipeline_class_step_find(cls->name, name);
    if (!*out) {
        char steps[512];
        list_steps(cls, steps, sizeof steps);
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "model %s (%s) has no step \"%s\"; its steps: %s", entry->id,
                            m->model_name, name, steps);
    }
    return DS_OK;
}

static int add_inputs(run_step_job *sj, const Diffsynth__V1__RunStepRequest *req,
                      const ds_conn *conn, ds_error *err)
{
    size_t fd_count;
    const int *fds = ds_conn_frame_fds(conn, &fd_count);
    ds_backend *host = sj->daemon->host_backend;
    size_t shm_count = 0;
    for (size_t i = 0; i < req->n_inputs; i++)
        shm_count += req->inputs[i]->shm != NULL;
    if (shm_count) {
        sj->input_maps = calloc(shm_count, sizeof *sj->input_maps);
        if (!sj->input_maps)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory mapping inputs");
    }
    for (size_t i = 0; i < req->n_inputs; i++) {
        const Diffsynth__V1__Tensor *t = req->inputs[i];
        int64_t shape[DS_MAX_DIMS];
        for (size_t d = 0; d < t->n_shape; d++)
            shape[d] = t->shape[d];
        void *data, *owned = NULL;
        if (t->shm) {
            char what[DS_RUN_STEP_MAX_NAME + 32];
            snprintf(what, sizeof what, "input \"%s\"", t->name);
            ds_shm_mapping *m = &sj->input_maps[sj->input_map_count];
            int rc = ds_shm_map_region(what, t->shm, ds_conn_uid(conn), fds, fd_count, 0, m, err);
            if (rc != DS_OK)
                return rc;
            sj->input_map_count++;
            data = m->data;
        } else {
            /* The frame is freed when dispatch returns: the step needs its own copy. */
            owned = malloc(t->data.len ? t->data.len : 1);
            if (!owned)
                return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                                    "out of memory for input \"%s\" (%zu bytes)", t->name,
                                    t->data.len);
            memcpy(owned, t->data.data, t->data.len);
            data = owned;
        }
        ds_tensor tensor = ds_tensor_wrap(host, (ds_dtype)t->dtype, (int)t->n_shape, shape, data);
        int rc = ds_step_io_add_tensor(&sj->in, t->name, tensor, owned, err);
        if (rc != DS_OK) {
            free(owned);
            return rc;
        }
    }
    for (size_t i = 0; i < req->n_params; i++) {
        int rc = ds_step_io_add_param(&sj->in, req->params[i]->name, req->params[i]->value, err);
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

static int add_aux(run_step_job *sj, ds_daemon *d, const Diffsynth__V1__RunStepRequest *req,
                   ds_error *err)
{
    size_t n = req->n_aux_models;
    if (n == 0)
        return DS_OK;
    sj->aux_entries = calloc(n, sizeof *sj->aux_entries);
    sj->aux_roles = calloc(n, sizeof *sj->aux_roles);
    sj->aux = calloc(n, sizeof *sj->aux);
    if (!sj->aux_entries || !sj->aux_roles || !sj->aux)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for aux models");
    for (size_t i = 0; i < n; i++) {
        const Diffsynth__V1__AuxModel *a = req->aux_models[i];
        ds_pool_model *e = ds_pool_find(d->pool, a->model_id);
        if (!e)
            return ds_error_set(err, DS_ERR_NOT_FOUND, "aux model %s (role \"%s\") is not in the pool",
                                a->model_id, a->role);
        sj->aux_roles[i] = strdup(a->role);
        if (!sj->aux_roles[i])
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for aux models");
        ds_pool_pin(e);
        sj->aux_entries[i] = e;
        sj->aux_count = i + 1;
        sj->aux[i] = (ds_step_aux_model){sj->aux_roles[i], e->model};
    }
    return DS_OK;
}

void ds_run_step_handle(ds_daemon *d, ds_conn *conn, const Diffsynth__V1__Envelope *env)
{
    const Diffsynth__V1__RunStepRequest *req = env->run_step;
    ds_error err;
    ds_error_clear(&err);
    int rc;
    run_step_job *sj = ds_request_job_new(d, conn, env->request_id, sizeof *sj, "the step");
    if (!sj)
        return;
    sj->daemon = d;
    ds_step_io_init(&sj->in);
    ds_step_io_init(&sj->out);
    snprintf(sj->step_name, sizeof sj->step_name, "%s", req->step[0] ? req->step : DEFAULT_STEP);

    if ((rc = add_inputs(sj, req, conn, &err)) != DS_OK)
        goto fail;
    if (req->output_region) {
        size_t fd_count;
        const int *fds = ds_conn_frame_fds(conn, &fd_count);
        rc = ds_shm_map_output_region("output_region", req->output_region, ds_conn_uid(conn), fds,
                                      fd_count, &sj->out_map, &sj->out_region_offset,
                                      &sj->out_region_fd_index, &sj->out_region_name, &err);
        if (rc != DS_OK)
            goto fail;
    }
    sj->max_inline = req->max_inline_output_bytes;
    /* The transport (shared memory above) is checked before the model, so a client learns
     * about a bad region whatever model it names. */
    ds_pool_model *entry = ds_pool_find(d->pool, req->model_id);
    if (!entry) {
        rc = ds_error_set(&err, DS_ERR_NOT_FOUND, "no model %s in the pool", req->model_id);
        goto fail;
    }
    if ((rc = find_step(entry, sj->step_name, &sj->step, &err)) != DS_OK)
        goto fail;
    ds_pool_pin(entry);
    sj->entry = entry;
    if ((rc = add_aux(sj, d, req, &err)) != DS_OK || (rc = check_fresh(sj, &err)) != DS_OK ||
        (rc = admit(sj, req, &err)) != DS_OK)
        goto fail;
    if ((rc = ds_scheduler_admit(d->scheduler, (unsigned)ds_conn_uid(conn), &err)) != DS_OK ||
        (rc = ds_conn_begin_job(conn, env, &err)) != DS_OK)
        goto fail;

    sj->conn = conn;
    sj->submitted_s = now_s();
    ds_request_submit(d, conn, env->request_id, &sj->job, DS_JOB_RUN_STEP, run_step_run,
                      run_step_progress, run_step_complete);
    return;

fail:
    ds_reply_error(d, conn, env->request_id, rc, err.message);
    job_free(sj);
}
