#include "daemon/run_pipeline.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/image_png.h"
#include "core/log.h"
#include "daemon/daemon.h"
#include "daemon/paths.h"
#include "daemon/reply.h"
#include "daemon/shm_region.h"
#include "daemon/video_output.h"
#include "kernels/ops.h"
#include "pipelines/pipeline.h"

/* Room in a reply frame for everything but the outputs' data, as RunStep reserves. */
#define REPLY_RESERVE_BYTES 4096
#define PER_OUTPUT_OVERHEAD 128
/* Outputs in the region start at multiples of this, so a client may use them in place. */
#define OUTPUT_ALIGN 64

/* A role of the pipeline's table (pipelines/pipeline.h). A role left out of the request is the
 * one loaded model named `model_name` (only the required roles are looked up that way); a model
 * named by id or loaded from paths must be of `model_class` (or the role's `also_class`). */
typedef struct role_slot {
    ds_pool_model *entry;    /* pinned; NULL until known */
    char **paths;            /* names of the files to load on the worker, or NULL */
    int *fds;                /* the files, opened beneath the model roots */
    size_t path_count;
    ds_loaded_model *loaded; /* the worker's load, until the pool takes it */
} role_slot;

typedef struct output_slot {
    const void *data; /* the PNG or video file (owned below) or the run's tensor */
    uint64_t bytes;
    int in_region;
    uint64_t offset;
} output_slot;

typedef struct pipeline_job {
    ds_job job; /* first: the scheduler hands us &job */
    ds_daemon *daemon;
    ds_conn *conn;
    const ds_pipeline_def *def;
    char *client;           /* holds the references to models loaded for this request */
    role_slot slots[DS_PIPELINE_MAX_ROLES];
    char *prompt;
    char *negative_prompt;
    char *tokenizer;
    ds_pipeline_args args;
    int seed_drawn;         /* a parameter without a default was drawn for this request */
    ds_tensor inputs[DS_PIPELINE_MAX_TENSORS];
    void *input_owned[DS_PIPELINE_MAX_TENSORS];
    ds_shm_mapping input_maps[DS_PIPELINE_MAX_TENSORS];
    ds_pipeline_run *run;
    ds_video_output video; /* how outputs declared as video are sent */
    int units_done;        /* the pipeline's last unit ran; its outputs are encoded next turn */
    /* Outputs, placed by the worker's last turn. */
    uint8_t *encoded[DS_PIPELINE_MAX_TENSORS]; /* PNG or video file bytes */
    output_slot outputs[DS_PIPELINE_MAX_TENSORS];
    ds_shm_mapping out_map;
    char *out_region_name;
    uint32_t out_region_fd_index;
    uint64_t out_region_offset;
    uint64_t max_inline;
    int named_outputs; /* the request wants RunPipelineResponse.outputs */
    /* Timing: queue time of earlier submissions, the turn running now, the repeated turns. */
    double queue_before_s;
    double turn_started_s;
    double repeated_turns_s;
    unsigned repeated_turns;
    double final_turns_s; /* the last phase's turns so far (a tiled decode takes several) */
    ds_admission_ticket admitted; /* the run's memory, reserved until the reply */
} pipeline_job;

/* Seconds per output pixel of the last run's final phase (the decode), for the ETA of the
 * next ones (0: none yet). */
static _Atomic double final_s_per_pixel;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* --- parameters ----------------------------------------------------------------------------- */

/* Applies the request's parameters over the pipeline's defaults. A parameter without a default
 * and left out stays not given (the caller draws it). */
static int parse_params(const ds_pipeline_def *def, const Diffsynth__V1__RunPipelineRequest *req,
                        ds_pipeline_value *values, ds_error *err)
{
    int rc = ds_pipeline_defaults(def, values, err);
    if (rc != DS_OK)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s", err->message);
    for (size_t i = 0; i < req->n_params; i++) {
        const char *name = req->params[i]->name;
        int k = ds_pipeline_param_index(def, name);
        if (k < 0) {
            char names[512];
            ds_pipeline_param_names(def, names, sizeof names);
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "unknown parameter \"%.64s\"; %s takes: %s", name, def->name,
                                names);
        }
        if ((rc = ds_pipeline_param_parse(def, &def->params[k], req->params[i]->value,
                                          &values[k], err)) != DS_OK)
            return rc;
    }
    return DS_OK;
}

/* --- validation (pure) ---------------------------------------------------------------------- */

static int printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7F)
            return 0;
    return 1;
}

static int check_model(const ds_pipeline_def *def, size_t i, const Diffsynth__V1__PipelineModel *m,
                       ds_error *err)
{
    int r = ds_pipeline_role_index(def, m->role);
    if (r < 0) {
        char names[256];
        ds_pipeline_role_names(def, names, sizeof names);
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.models[%zu].role \"%.64s\" is not a role of %s; "
                            "roles: %s",
                            i, printable(m->role) ? m->role : "(unprintable)", def->name, names);
    }
    int has_id = m->model_id[0] != '\0';
    if (has_id && m->n_paths)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.models[%zu] (role \"%s\") gives both a model_id and paths: "
                            "give one",
                            i, m->role);
    if (!has_id && !m->n_paths)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.models[%zu] (role \"%s\") gives neither a model_id nor "
                            "paths (leave the role out to use the loaded %s)",
                            i, m->role, def->roles[r].model_name);
    if (has_id && (strlen(m->model_id) >= DS_MODEL_ID_MAX || !printable(m->model_id)))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.models[%zu].model_id is not a model id; ids are like "
                            "\"m1\"",
                            i);
    if (m->n_paths > DS_MAX_PATHS_PER_REQUEST)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.models[%zu].paths has %zu entries, at most %d", i,
                            m->n_paths, DS_MAX_PATHS_PER_REQUEST);
    for (size_t k = 0; k < m->n_paths; k++)
        if (m->paths[k][0] != '/')
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "run_pipeline.models[%zu].paths[%zu] \"%.512s\" is not absolute "
                                "(the daemon does not know the client's working directory)",
                                i, k, m->paths[k]);
    return DS_OK;
}

static int check_tensor(const char *field, const Diffsynth__V1__Tensor *t, ds_error *err)
{
    char what[64];
    snprintf(what, sizeof what, "run_pipeline.%s", field);
    return ds_shm_check_tensor(what, t, 1, err);
}

/* The request's tensor for the pipeline's input `name`: from `inputs` by name, else the
 * message's own field of that name (older clients). */
static const Diffsynth__V1__Tensor *legacy_input(const Diffsynth__V1__RunPipelineRequest *req,
                                                 const char *name);

static const Diffsynth__V1__Tensor *request_input(const Diffsynth__V1__RunPipelineRequest *req,
                                                  const char *name)
{
    for (size_t i = 0; i < req->n_inputs; i++)
        if (strcmp(req->inputs[i]->name, name) == 0)
            return req->inputs[i];
    return legacy_input(req, name);
}

static const Diffsynth__V1__Tensor *legacy_input(const Diffsynth__V1__RunPipelineRequest *req,
                                                 const char *name)
{
    if (strcmp(name, "input_image") == 0)
        return req->input_image;
    if (strcmp(name, "controlnet_image") == 0)
        return req->controlnet_image;
    if (strcmp(name, "initial_noise") == 0)
        return req->initial_noise;
    return NULL;
}

int ds_run_pipeline_validate(const Diffsynth__V1__RunPipelineRequest *req, ds_error *err)
{
    const ds_pipeline_def *def = ds_pipeline_find(req->pipeline);
    if (!def) {
        char names[256];
        ds_pipeline_list_names(names, sizeof names);
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.pipeline \"%.64s\" is not a known pipeline; known "
                            "pipelines: %s",
                            printable(req->pipeline) ? req->pipeline : "(unprintable)", names);
    }
    if (req->n_models > DS_RUN_PIPELINE_MAX_MODELS)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "run_pipeline has %zu models, at most %d",
                            req->n_models, DS_RUN_PIPELINE_MAX_MODELS);
    for (size_t i = 0; i < req->n_models; i++) {
        int rc = check_model(def, i, req->models[i], err);
        if (rc != DS_OK)
            return rc;
        for (size_t k = 0; k < i; k++)
            if (strcmp(req->models[k]->role, req->models[i]->role) == 0)
                return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                    "role \"%s\" is given twice (run_pipeline.models[%zu] and "
                                    "[%zu])",
                                    req->models[i]->role, k, i);
    }
    if (req->n_params > DS_RUN_PIPELINE_MAX_PARAMS)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "run_pipeline has %zu params, at most %d",
                            req->n_params, DS_RUN_PIPELINE_MAX_PARAMS);
    for (size_t i = 0; i < req->n_params; i++) {
        const char *name = req->params[i]->name;
        if (!name[0] || !printable(name))
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "run_pipeline.params[%zu].name is empty or unprintable", i);
        if (strlen(req->params[i]->value) > DS_RUN_PIPELINE_MAX_VALUE)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "parameter \"%.64s\" has a value of %zu bytes, at most %d", name,
                                strlen(req->params[i]->value), DS_RUN_PIPELINE_MAX_VALUE);
        for (size_t k = 0; k < i; k++)
            if (strcmp(req->params[k]->name, name) == 0)
                return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                    "parameter \"%.64s\" is given twice", name);
    }
    ds_pipeline_value values[DS_PIPELINE_MAX_PARAMS];
    int rc = parse_params(def, req, values, err);
    if (rc != DS_OK)
        return rc;
    ds_dtype dtype;
    if ((rc = ds_pipeline_dtype_parse(def, req->dtype, &dtype, err)) != DS_OK)
        return rc;
    if (req->n_inputs > DS_PIPELINE_MAX_TENSORS)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "run_pipeline has %zu inputs, at most %d",
                            req->n_inputs, DS_PIPELINE_MAX_TENSORS);
    for (size_t i = 0; i < req->n_inputs; i++) {
        const char *name = req->inputs[i]->name;
        if (ds_pipeline_input_index(def, name) < 0) {
            char names[256] = "";
            size_t used = 0;
            for (size_t k = 0; k < def->input_count && used < sizeof names; k++) {
                int n = snprintf(names + used, sizeof names - used, "%s%s", k ? ", " : "",
                                 def->inputs[k].name);
                used += n > 0 ? (size_t)n : 0;
            }
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "run_pipeline.inputs[%zu] \"%.64s\" is not an input of %s; "
                                "inputs: %s",
                                i, printable(name) ? name : "(unprintable)", def->name, names);
        }
        if (legacy_input(req, name))
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "input \"%s\" is given twice (run_pipeline.inputs[%zu] and "
                                "run_pipeline.%s)",
                                name, i, name);
        for (size_t k = 0; k < i; k++)
            if (strcmp(req->inputs[k]->name, name) == 0)
                return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                    "input \"%s\" is given twice (run_pipeline.inputs[%zu] and "
                                    "[%zu])",
                                    name, k, i);
    }
    for (size_t i = 0; i < def->input_count; i++) {
        const Diffsynth__V1__Tensor *t = request_input(req, def->inputs[i].name);
        if (t && def->inputs[i].video &&
            (rc = ds_video_output_check_input(def->inputs[i].name, t, err)) != DS_OK)
            return rc;
        if (t && (rc = check_tensor(def->inputs[i].name, t, err)) != DS_OK)
            return rc;
    }
    /* The video settings are checked for every pipeline, so a client's mistake shows on the
     * first request, whichever pipeline it names. */
    ds_video_output video;
    if ((rc = ds_video_output_parse(req, &video, err)) != DS_OK)
        return rc;
    for (size_t i = 0; i < def->output_count; i++) {
        if (!def->outputs[i].video)
            continue;
        if (!req->named_outputs)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "run_pipeline.named_outputs is false, but %s's output \"%s\" "
                                "(a video) has no field of its own in RunPipelineResponse; set "
                                "named_outputs",
                                def->name, def->outputs[i].name);
        if ((rc = ds_video_output_check_supported(&video, err)) != DS_OK)
            return rc;
    }
    if (req->tokenizer[0] && req->tokenizer[0] != '/')
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.tokenizer \"%.512s\" is not an absolute path",
                            req->tokenizer);
    if (req->output_region)
        return ds_shm_check_output_region("run_pipeline.output_region", req->output_region, err);
    return DS_OK;
}

/* --- the job -------------------------------------------------------------------------------- */

static void free_paths(role_slot *s)
{
    ds_opened_paths opened = {s->paths, s->fds, s->path_count};
    ds_opened_paths_free(&opened);
    s->paths = NULL;
    s->fds = NULL;
    s->path_count = 0;
}

static void job_free(pipeline_job *pj)
{
    ds_admission_release(&pj->daemon->admission, &pj->admitted);
    if (pj->run)
        pj->def->free(pj->run);
    for (int r = 0; r < DS_PIPELINE_MAX_ROLES; r++) {
        role_slot *s = &pj->slots[r];
        if (s->entry)
            ds_pool_unpin(s->entry);
        ds_loaded_model_free(s->loaded);
        free_paths(s);
    }
    for (int i = 0; i < DS_PIPELINE_MAX_TENSORS; i++) {
        free(pj->input_owned[i]);
        ds_shm_unmap(&pj->input_maps[i]);
        free(pj->encoded[i]);
    }
    ds_shm_unmap(&pj->out_map);
    /* The strings copied out of the request. */
    char *copies[] = {pj->out_region_name, pj->prompt, pj->negative_prompt, pj->tokenizer,
                      pj->client};
    for (size_t i = 0; i < sizeof copies / sizeof copies[0]; i++)
        free(copies[i]);
    free(pj);
}

static int pipeline_cancelled(void *user) { return ds_job_cancelled(user); }

/* Seconds the last phase (the decode) of this job will take: the last run's pace scaled to
 * this output, or (before any) one repeated unit's time, which is the same order. */
static double final_estimate(const pipeline_job *pj, double mean_unit_s)
{
    double rate = atomic_load(&final_s_per_pixel);
    return rate > 0 ? rate * pj->def->output_pixels(pj->run) : mean_unit_s;
}

/* The pipeline's progress, with an ETA of this job's own compute: the mean repeated unit so
 * far times the units left, plus the last phase. */
static void pipeline_progress(void *user, const char *phase, uint64_t done, uint64_t total)
{
    pipeline_job *pj = user;
    const ds_pipeline_def *def = pj->def;
    const char *first = def->phases[0], *last = def->phases[def->phase_count - 1];
    double in_turn = now_s() - pj->turn_started_s;
    double eta = -1.0;
    if (strcmp(phase, def->repeated_phase) == 0 && done > 0 && total >= done) {
        double mean = (pj->repeated_turns_s + in_turn) / (double)(pj->repeated_turns + 1);
        eta = mean * (double)(total - done) + final_estimate(pj, mean);
    } else if (strcmp(phase, last) == 0) {
        double mean = pj->repeated_turns ? pj->repeated_turns_s / pj->repeated_turns : in_turn;
        eta = done >= total ? 0.0
                            : fmax(final_estimate(pj, mean) - pj->final_turns_s - in_turn, 0.0);
    } else if (strcmp(phase, first) != 0) {
        /* Phases inside a unit (a model's own blocks) keep the scheduler's pace estimate. */
        ds_job_report(&pj->job, phase, done, total, NULL);
        return;
    }
    ds_job_report_eta(&pj->job, phase, done, total, eta, NULL);
}

/* A tokenizer folder named by the client obeys the model roots, as model files do. */
static int pipeline_check_path(void *user, const char *path, ds_error *err)
{
    return ds_model_roots_check(&((const pipeline_job *)user)->daemon->roots, path, err);
}

/* Where each output goes: inline while the reply frame has room and each is within the
 * client's inline limit, else into the output region (copied here, off the loop thread). */
static int place_output(pipeline_job *pj, const char *name, output_slot *o, uint64_t *inline_used,
                        uint64_t *region_used, ds_error *err)
{
    uint64_t bytes = o->bytes;
    uint64_t cap = pj->daemon->max_frame_bytes;
    uint64_t budget = cap > REPLY_RESERVE_BYTES ? cap - REPLY_RESERVE_BYTES : 0;
    uint64_t cost = bytes + PER_OUTPUT_OVERHEAD;
    if ((pj->max_inline == 0 || bytes <= pj->max_inline) && cost <= budget - *inline_used) {
        *inline_used += cost;
        return DS_OK;
    }
    uint64_t start = (*region_used + OUTPUT_ALIGN - 1) / OUTPUT_ALIGN * OUTPUT_ALIGN;
    const ds_shm_mapping *m = &pj->out_map;
    if (!m->base)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "output \"%s\" (%llu bytes) does not fit inline (frame cap %llu "
                            "bytes%s) and the request has no output_region",
                            name, (unsigned long long)bytes, (unsigned long long)cap,
                            pj->max_inline ? ", or the request's inline limit" : "");
    if (start > m->size || bytes > m->size - start)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "output \"%s\" (%llu bytes) does not fit inline and the output_region "
                            "of %llu bytes has only %llu left",
                            name, (unsigned long long)bytes, (unsigned long long)m->size,
                            (unsigned long long)(start < m->size ? m->size - start : 0));
    memcpy(m->data + start, o->data, bytes);
    o->in_region = 1;
    o->offset = start;
    *region_used = start + bytes;
    return DS_OK;
}

/* After the last unit: the images PNG-encoded, the videos encoded as the request asks, then
 * every output placed in table order. */
static int finish(pipeline_job *pj, ds_error *err)
{
    const ds_pipeline_def *def = pj->def;
    uint64_t inline_used = 0, region_used = 0;
    for (size_t i = 0; i < def->output_count; i++) {
        const ds_tensor *t = def->output(pj->run, i);
        output_slot *o = &pj->outputs[i];
        if (!t)
            return ds_error_set(err, DS_ERR_INTERNAL, "the pipeline finished without its %s",
                                def->outputs[i].name);
        if (def->outputs[i].png) {
            if (t->ndim != 3 || t->dtype != DS_U8 || t->shape[2] != 3)
                return ds_error_set(err, DS_ERR_INTERNAL,
                                    "the pipeline finished without an [H, W, 3] u8 image for %s",
                                    def->outputs[i].name);
            size_t size = 0;
            int rc = ds_png_encode_rgb8(t->data, (uint32_t)t->shape[1], (uint32_t)t->shape[0],
                                        &pj->encoded[i], &size, err);
            if (rc != DS_OK)
                return rc;
            o->data = pj->encoded[i];
            o->bytes = size;
        } else if (def->outputs[i].video) {
            const uint8_t *data;
            size_t size;
            int rc = ds_video_output_encode(def->outputs[i].name, t, &pj->video, &pj->encoded[i],
                                            &data, &size, err);
            if (rc != DS_OK)
                return rc;
            o->data = data;
            o->bytes = size;
        } else {
            o->data = t->data;
            o->bytes = ds_tensor_nbytes(t);
        }
        int rc = place_output(pj, def->outputs[i].name, o, &inline_used, &region_used, err);
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

/* DATA_LOSS when a model file or a client's region faulted during the turn: what the unit
 * computed from zeros is garbage, whatever it returned. Overwrites err only then. */
static int check_intact(const pipeline_job *pj, ds_error *err)
{
    ds_error lost;
    int rc = DS_OK;
    for (int r = 0; rc == DS_OK && r < DS_PIPELINE_MAX_ROLES; r++)
        if (pj->slots[r].entry)
            rc = ds_pool_check_faults(pj->slots[r].entry, &lost);
    for (int i = 0; rc == DS_OK && i < DS_PIPELINE_MAX_TENSORS; i++)
        rc = ds_shm_check_intact(&pj->input_maps[i], &lost);
    if (rc == DS_OK)
        rc = ds_shm_check_intact(&pj->out_map, &lost);
    if (rc != DS_OK)
        *err = lost;
    return rc;
}

/* Whether an output is a video the request wants as a file (raw frames need no encoding). */
static int encodes_video(const pipeline_job *pj)
{
    for (size_t i = 0; i < pj->def->output_count; i++)
        if (pj->def->outputs[i].video && !pj->video.raw)
            return 1;
    return 0;
}

/* The turn after the last unit: the outputs encoded and placed. */
static int encode_turn(pipeline_job *pj)
{
    ds_job *job = &pj->job;
    if (encodes_video(pj))
        ds_job_report(job, "video", 0, 1, ds_video_format_name(pj->video.write.format));
    int rc = finish(pj, &job->error);
    if (check_intact(pj, &job->error) != DS_OK)
        return job->error.code;
    return rc;
}

/* One unit per turn, then the outputs. */
static int pipeline_run(ds_job *job)
{
    pipeline_job *pj = (pipeline_job *)job;
    const ds_pipeline_def *def = pj->def;
    if (pj->units_done)
        return encode_turn(pj);
    uint64_t done, total;
    def->position(pj->run, &done, &total);
    ds_step_context ctx = {
        .backend = pj->daemon->backend,
        .cancelled = pipeline_cancelled,
        .progress = pipeline_progress,
        .user = pj,
        .vram = pj->daemon->vram,
        .convert = pj->daemon->convert,
        .check_path = pipeline_check_path,
    };
    pj->turn_started_s = now_s();
    if (pj->daemon->convert)
        ds_admission_fit_convert_budget(pj->daemon->convert, pj->daemon->convert_limit,
                                        pj->daemon->admission.limit);
    /* Before every unit: a file rewritten in place since the last one would silently change
     * the weights the next unit reads (a waiting request, or one between two steps). */
    for (size_t r = 0; r < def->role_count; r++)
        if (pj->slots[r].entry && ds_pool_check_fresh(pj->slots[r].entry, &job->error) != DS_OK)
            return job->error.code;
    int rc = def->advance(pj->run, &ctx, &job->error);
    double took = now_s() - pj->turn_started_s;
    if (check_intact(pj, &job->error) != DS_OK)
        return job->error.code;
    if (rc < 0)
        return rc;
    uint64_t final_units = def->final_units ? def->final_units(pj->run) : 1;
    if (done > 0 && done + final_units < total) {
        pj->repeated_turns_s += took;
        pj->repeated_turns++;
    } else if (done > 0) {
        pj->final_turns_s += took;
        if (done + 1 == total)
            atomic_store(&final_s_per_pixel, pj->final_turns_s / def->output_pixels(pj->run));
    }
    if (rc > 0)
        return DS_JOB_YIELD;
    pj->units_done = 1;
    /* A video file takes seconds to encode: a turn of its own, so other jobs' units run
     * between the decode and the encode as between any two units. */
    if (encodes_video(pj))
        return DS_JOB_YIELD;
    return encode_turn(pj);
}

/* --- loading roles given as paths (worker) --------------------------------------------------- */

/* Identifies the files and loads the config of the role's class: a role names one model. */
static int load_role(pipeline_job *pj, size_t r, ds_error *err)
{
    role_slot *s = &pj->slots[r];
    const ds_pipeline_role *role = &pj->def->roles[r];
    const char *const *paths = (const char *const *)s->paths;
    ds_auto_load result;
    int rc = ds_auto_load_model(pj->daemon->configs, s->fds, paths, s->path_count,
                                role->model_class,
                                NULL, &result, err);
    /* Files of the role's second class: loaded as that class instead. */
    int other = 0;
    for (size_t i = 0; rc == DS_OK && role->also_class && !result.model_count &&
                       !result.skipped_count && i < result.matched_count;
         i++)
        other |= strcmp(result.matched[i]->model_class, role->also_class) == 0;
    if (other) {
        ds_auto_load_free(&result);
        rc = ds_auto_load_model(pj->daemon->configs, s->fds, paths, s->path_count,
                                role->also_class, NULL, &result, err);
    }
    if (rc != DS_OK) {
        if (result.failed)
            ds_error_prefix(err, "loading the %s (%s): ", role->role, result.failed->model_name);
    } else if (result.model_count == 1) {
        s->loaded = result.models[0];
        result.model_count = 0;
    } else if (result.skipped_count) {
        const ds_model_config *pick = result.skipped[0];
        rc = ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                          "the %s's files match %s (%s), which this build does not implement",
                          role->role, pick->model_name, pick->model_class);
    } else {
        char *label = ds_python_str_paths(paths, s->path_count);
        if (result.matched_count == 0)
            rc = ds_error_set(err, DS_ERR_NOT_FOUND,
                              "the %s: Cannot detect the model type. File: %s. Model hash: %s",
                              role->role, label ? label : "(out of memory)", result.model_hash);
        else
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "the %s's files %s are a %s (%s), not a %s", role->role,
                              label ? label : "(out of memory)", result.matched[0]->model_name,
                              result.matched[0]->model_class, role->model_class);
        free(label);
    }
    ds_auto_load_free(&result);
    return rc;
}

static int load_run(ds_job *job)
{
    pipeline_job *pj = (pipeline_job *)job;
    uint64_t to_load = 0, loaded = 0;
    for (size_t r = 0; r < pj->def->role_count; r++)
        to_load += pj->slots[r].paths != NULL;
    for (size_t r = 0; r < pj->def->role_count; r++) {
        if (!pj->slots[r].paths)
            continue;
        if (ds_job_cancelled(job))
            return ds_error_set(&job->error, DS_ERR_CANCELLED,
                                "cancelled after loading %llu of %llu models",
                                (unsigned long long)loaded, (unsigned long long)to_load);
        ds_job_report(job, "load", loaded, to_load, pj->def->roles[r].role);
        int rc = load_role(pj, r, &job->error);
        if (rc != DS_OK)
            return rc;
        loaded++;
    }
    ds_job_report(job, "load", to_load, to_load, NULL);
    return DS_OK;
}

/* --- replies (loop thread) ------------------------------------------------------------------ */

static void pipeline_job_progress(ds_job *job, const ds_job_progress *p)
{
    ds_reply_progress(((pipeline_job *)job)->conn, job->request_id, p);
}

/* Ends the request: the job leaves the connection's accounting and is freed. */
static void job_end(pipeline_job *pj)
{
    ds_conn_end_job(pj->conn, pj->job.request_id);
    ds_conn_unref(pj->conn);
    job_free(pj);
}

static void set_output(Diffsynth__V1__Tensor *t, Diffsynth__V1__SharedRegion *region,
                       const pipeline_job *pj, const char *name, ds_dtype dtype, size_t ndim,
                       int64_t *shape, const output_slot *o)
{
    diffsynth__v1__tensor__init(t);
    t->name = (char *)name;
    t->dtype = (Diffsynth__V1__DType)dtype;
    t->n_shape = ndim;
    t->shape = shape;
    if (o->in_region) {
        diffsynth__v1__shared_region__init(region);
        region->name = pj->out_region_name;
        region->fd_index = pj->out_region_fd_index;
        region->offset = pj->out_region_offset + o->offset;
        region->size = o->bytes;
        t->shm = region;
    } else {
        t->data.data = (uint8_t *)o->data;
        t->data.len = o->bytes;
    }
}

static uint64_t result_u(const ds_pipeline_result *r, size_t n, const char *name)
{
    const ds_pipeline_result *x = ds_pipeline_result_find(r, n, name);
    return x ? (x->is_integer ? x->u : (uint64_t)x->d) : 0;
}

static double result_d(const ds_pipeline_result *r, size_t n, const char *name)
{
    const ds_pipeline_result *x = ds_pipeline_result_find(r, n, name);
    return x ? (x->is_integer ? (double)x->u : x->d) : 0.0;
}

static void pipeline_complete(ds_job *job)
{
    pipeline_job *pj = (pipeline_job *)job;
    const ds_pipeline_def *def = pj->def;
    ds_daemon *d = pj->daemon;
    ds_conn *conn = pj->conn;
    if (!ds_conn_is_open(conn)) {
        ds_log_debug("request %llu finished (%s) after its client left; result dropped",
                     (unsigned long long)job->request_id, ds_status_name(job->status));
        job_end(pj);
        return;
    }
    if (job->status == DS_ERR_CANCELLED) {
        char where[96];
        def->describe_position(pj->run, where, sizeof where);
        char message[160];
        snprintf(message, sizeof message, "cancelled %s", where);
        ds_reply_error(d, conn, job->request_id, DS_ERR_CANCELLED, message);
        job_end(pj);
        return;
    }
    if (job->status != DS_OK) {
        ds_reply_error(d, conn, job->request_id, job->status, job->error.message);
        job_end(pj);
        return;
    }
    Diffsynth__V1__Tensor tensors[DS_PIPELINE_MAX_TENSORS];
    Diffsynth__V1__SharedRegion regions[DS_PIPELINE_MAX_TENSORS];
    int64_t shapes[DS_PIPELINE_MAX_TENSORS][DS_MAX_DIMS];
    Diffsynth__V1__Tensor *named[DS_PIPELINE_MAX_TENSORS];
    Diffsynth__V1__RunPipelineResponse res = DIFFSYNTH__V1__RUN_PIPELINE_RESPONSE__INIT;
    for (size_t i = 0; i < def->output_count; i++) {
        const ds_pipeline_tensor *spec = &def->outputs[i];
        const output_slot *o = &pj->outputs[i];
        if (spec->png || (spec->video && !pj->video.raw)) {
            shapes[i][0] = (int64_t)o->bytes;
            set_output(&tensors[i], &regions[i], pj, spec->name, DS_U8, 1, shapes[i], o);
        } else {
            const ds_tensor *t = def->output(pj->run, i);
            for (int k = 0; k < t->ndim; k++)
                shapes[i][k] = t->shape[k];
            set_output(&tensors[i], &regions[i], pj, spec->name, t->dtype, (size_t)t->ndim,
                       shapes[i], o);
        }
        /* Older clients read the outputs from the reply's fields of their names. */
        if (pj->named_outputs)
            named[res.n_outputs++] = &tensors[i];
        else if (strcmp(spec->name, "png") == 0)
            res.png = &tensors[i];
        else if (strcmp(spec->name, "latents") == 0)
            res.latents = &tensors[i];
    }
    res.outputs = named;
    ds_pipeline_result results[DS_PIPELINE_MAX_RESULTS];
    size_t n = def->results(pj->run, results);
    Diffsynth__V1__PipelineResult result_msgs[DS_PIPELINE_MAX_RESULTS];
    Diffsynth__V1__PipelineResult *result_ptrs[DS_PIPELINE_MAX_RESULTS];
    for (size_t i = 0; i < n; i++) {
        diffsynth__v1__pipeline_result__init(&result_msgs[i]);
        result_msgs[i].name = (char *)results[i].name;
        result_msgs[i].is_integer = results[i].is_integer;
        result_msgs[i].integer = results[i].u;
        result_msgs[i].number = results[i].d;
        result_ptrs[i] = &result_msgs[i];
    }
    res.results = result_ptrs;
    res.n_results = n;
    res.seed = result_u(results, n, "seed");
    res.steps = (uint32_t)result_u(results, n, "steps");
    res.height = (uint32_t)result_u(results, n, "height");
    res.width = (uint32_t)result_u(results, n, "width");
    res.queue_s = pj->queue_before_s + job->queue_s;
    res.encode_s = result_d(results, n, "encode_s");
    res.denoise_s = result_d(results, n, "denoise_s");
    res.decode_s = result_d(results, n, "decode_s");
    Diffsynth__V1__Envelope out = DIFFSYNTH__V1__ENVELOPE__INIT;
    out.request_id = job->request_id;
    out.body_case = DIFFSYNTH__V1__ENVELOPE__BODY_RUN_PIPELINE_RESULT;
    out.run_pipeline_result = &res;
    d->requests_served++;
    char summary[512];
    size_t used = 0;
    summary[0] = '\0';
    for (size_t i = 0; i < n && used < sizeof summary; i++) {
        int k = results[i].is_integer
                    ? snprintf(summary + used, sizeof summary - used, "%s%s %llu", i ? ", " : "",
                               results[i].name, (unsigned long long)results[i].u)
                    : snprintf(summary + used, sizeof summary - used, "%s%s %.2f", i ? ", " : "",
                               results[i].name, results[i].d);
        used += k > 0 ? (size_t)k : 0;
    }
    ds_log_info("%s: request %llu: %s: %s%s, queued %.2f s", ds_conn_describe(conn),
                (unsigned long long)job->request_id, def->name, summary,
                pj->seed_drawn ? " (seed drawn)" : "", res.queue_s);
    ds_conn_send(conn, &out);
    job_end(pj);
}

/* Reserves the run's estimated memory (the pipeline's estimate_memory) before its units are
 * queued; needs the model of the pipeline's estimate_role. */
static int admit(pipeline_job *pj, ds_error *err)
{
    ds_daemon *d = pj->daemon;
    const ds_pipeline_def *def = pj->def;
    ds_pipeline_memory_args m = {.threads = d->admission.threads};
    for (size_t i = 0; i < def->input_count; i++)
        if (pj->input_owned[i])
            m.inline_bytes += ds_tensor_nbytes(&pj->inputs[i]);
    pj->args.models[def->estimate_role] = pj->slots[def->estimate_role].entry->model;
    ds_memory_need need;
    char what[96];
    int rc = def->estimate_memory(&pj->args, &m, &need, what, sizeof what, err);
    if (rc != DS_OK)
        return rc;
    return ds_admission_reserve(&d->admission, &pj->admitted, what, need,
                                ds_daemon_device_budget(d), err);
}

/* Sets up the pipeline over the pinned models and queues its units. */
static int start_pipeline(pipeline_job *pj, ds_error *err)
{
    for (size_t r = 0; r < pj->def->role_count; r++)
        pj->args.models[r] = pj->slots[r].entry ? pj->slots[r].entry->model : NULL;
    int rc = pj->def->start(&pj->args, &pj->run, err);
    if (rc != DS_OK)
        return rc;
    pj->job.kind = DS_JOB_RUN_PIPELINE;
    pj->job.run = pipeline_run;
    pj->job.complete = pipeline_complete;
    ds_scheduler_submit(pj->daemon->scheduler, &pj->job);
    return DS_OK;
}

/* Only one reference per client for models a pipeline loads: a second request naming the same
 * files reuses the model and must not pile up references. */
static void drop_extra_reference(ds_daemon *d, ds_pool_model *e, uid_t uid, const char *client)
{
    if (ds_pool_references(e, uid, client) > 1) {
        ds_pool_unref_result ignored;
        ds_error err;
        ds_pool_unref(d->pool, e->id, uid, 0, client, 0, &ignored, &err);
    }
}

/* The models loaded for the request enter the pool (loop thread), then the pipeline starts. */
static void load_complete(ds_job *job)
{
    pipeline_job *pj = (pipeline_job *)job;
    ds_daemon *d = pj->daemon;
    ds_error err;
    ds_error_clear(&err);
    int rc = job->status;
    if (!ds_conn_is_open(pj->conn)) {
        job_end(pj);
        return;
    }
    if (rc == DS_OK && ds_job_cancelled(job))
        rc = ds_error_set(&job->error, DS_ERR_CANCELLED, "cancelled while loading its models");
    if (rc != DS_OK) {
        ds_reply_error(d, pj->conn, job->request_id, rc, job->error.message);
        job_end(pj);
        return;
    }
    for (size_t r = 0; r < pj->def->role_count; r++) {
        role_slot *s = &pj->slots[r];
        if (!s->loaded)
            continue;
        ds_loaded_model *model = s->loaded;
        s->loaded = NULL;
        int reused = 0;
        rc = ds_pool_insert(d->pool, model, ds_conn_uid(pj->conn), pj->client, ds_wall_ms(),
                            &s->entry, &reused, &err);
        if (rc != DS_OK) {
            s->entry = NULL;
            ds_reply_error(d, pj->conn, job->request_id, rc, err.message);
            job_end(pj);
            return;
        }
        ds_pool_pin(s->entry);
        if (reused)
            drop_extra_reference(d, s->entry, ds_conn_uid(pj->conn), pj->client);
        ds_log_info("%s %s %s for %s (pipeline role %s)", reused ? "reused" : "loaded",
                    s->entry->id, s->entry->model->model_name, pj->client, pj->def->roles[r].role);
    }
    pj->queue_before_s += job->queue_s;
    /* A VAE named by paths is known only now: the run is admitted before its units queue. */
    if ((!pj->admitted.active && (rc = admit(pj, &err)) != DS_OK) ||
        (rc = start_pipeline(pj, &err)) != DS_OK) {
        ds_reply_error(d, pj->conn, job->request_id, rc, err.message);
        job_end(pj);
    }
}

/* --- the request (loop thread) -------------------------------------------------------------- */

/* The one loaded model of the role's name. */
static int find_by_name(ds_daemon *d, const ds_pipeline_role *role, ds_pool_model **out,
                        ds_error *err)
{
    size_t found = 0;
    char ids[256];
    size_t used = 0;
    ids[0] = '\0';
    ds_pool_model *stale = NULL;
    for (size_t i = 0; i < ds_pool_count(d->pool); i++) {
        ds_pool_model *e = ds_pool_at(d->pool, i);
        if (strcmp(e->model->model_name, role->model_name) != 0)
            continue;
        /* A model known to be stale is not a candidate: its reload may stand beside it. */
        if (e->model->files && ds_model_files_is_stale(e->model->files)) {
            stale = e;
            continue;
        }
        if (found++ == 0)
            *out = e;
        if (used < sizeof ids) {
            int n = snprintf(ids + used, sizeof ids - used, "%s%s", found > 1 ? ", " : "", e->id);
            used += n > 0 ? (size_t)n : 0;
        }
    }
    if (found == 1)
        return DS_OK;
    *out = NULL;
    if (found == 0 && stale)
        return ds_pool_check_fresh(stale, err);
    if (found == 0)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "no model for the %s: no %s is loaded; load one (diffsynth load FILE...) "
                            "or name it in the request (role \"%s\" with a model_id or paths)",
                            role->role, role->model_name, role->role);
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                        "several loaded models could be the %s: %s (each a %s); pass the one to use "
                        "by model id (role \"%s\")",
                        role->role, ids, role->model_name, role->role);
}

static int find_by_id(ds_daemon *d, const ds_pipeline_role *role, const char *id,
                      ds_pool_model **out, ds_error *err)
{
    ds_pool_model *e = ds_pool_find(d->pool, id);
    if (!e)
        return ds_error_set(err, DS_ERR_NOT_FOUND, "no model %s in the pool (role \"%s\")", id,
                            role->role);
    if (!ds_pipeline_role_takes(role, e->model->model_class))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "model %s is a %s (%s) and cannot be the %s, which must be a %s%s%s",
                            id, e->model->model_name, e->model->model_class, role->role,
                            role->model_class, role->also_class ? " or a " : "",
                            role->also_class ? role->also_class : "");
    *out = e;
    return DS_OK;
}

static int resolve_paths(ds_daemon *d, role_slot *s, const Diffsynth__V1__PipelineModel *m,
                         ds_error *err)
{
    ds_opened_paths opened;
    int rc = ds_model_roots_open_all(&d->roots, m->paths, m->n_paths, &opened, err);
    if (rc != DS_OK) {
        ds_error_prefix(err, "the %s: ", m->role);
        return rc;
    }
    s->paths = opened.names;
    s->fds = opened.fds;
    s->path_count = opened.count;
    return DS_OK;
}

static int find_models(pipeline_job *pj, const Diffsynth__V1__RunPipelineRequest *req,
                       ds_error *err)
{
    ds_daemon *d = pj->daemon;
    const ds_pipeline_def *def = pj->def;
    const Diffsynth__V1__PipelineModel *given[DS_PIPELINE_MAX_ROLES] = {0};
    for (size_t i = 0; i < req->n_models; i++)
        given[ds_pipeline_role_index(def, req->models[i]->role)] = req->models[i];
    /* The roles the request names first: their errors are about what the client sent. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t r = 0; r < def->role_count; r++) {
            role_slot *s = &pj->slots[r];
            const ds_pipeline_role *role = &def->roles[r];
            const Diffsynth__V1__PipelineModel *m = given[r];
            ds_pool_model *e = NULL;
            int rc = DS_OK;
            if (pass == 0 && m && m->model_id[0])
                rc = find_by_id(d, role, m->model_id, &e, err);
            else if (pass == 0 && m)
                rc = resolve_paths(d, s, m, err);
            else if (pass == 1 && !m && role->required)
                rc = find_by_name(d, role, &e, err);
            if (rc != DS_OK)
                return rc;
            if (e) {
                ds_pool_pin(e);
                s->entry = e;
                if ((rc = ds_pool_check_fresh(e, err)) != DS_OK)
                    return rc;
            }
        }
    }
    for (size_t i = 0; i < def->input_count; i++) {
        const char *needs = def->inputs[i].needs_role;
        int r = needs ? ds_pipeline_role_index(def, needs) : -1;
        if (r >= 0 && request_input(req, def->inputs[i].name) && !given[r])
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "run_pipeline.%s needs a %s: name one in models (role \"%s\", a "
                                "model_id or paths)",
                                def->inputs[i].name, def->roles[r].model_name, needs);
    }
    return DS_OK;
}

/* The optional tensors: shared memory mapped read-only, inline data copied out of the frame
 * (which is freed when dispatch returns). */
static int take_images(pipeline_job *pj, const Diffsynth__V1__RunPipelineRequest *req,
                       const ds_conn *conn, ds_error *err)
{
    size_t fd_count;
    const int *fds = ds_conn_frame_fds(conn, &fd_count);
    const ds_pipeline_def *def = pj->def;
    for (size_t i = 0; i < def->input_count; i++) {
        const char *name = def->inputs[i].name;
        const Diffsynth__V1__Tensor *t = request_input(req, name);
        if (!t)
            continue;
        int64_t shape[DS_MAX_DIMS];
        for (size_t k = 0; k < t->n_shape; k++)
            shape[k] = t->shape[k];
        void *data;
        if (t->shm) {
            char what[64];
            snprintf(what, sizeof what, "run_pipeline.%s", name);
            int rc = ds_shm_map_region(what, t->shm, ds_conn_uid(conn), fds, fd_count, 0,
                                       &pj->input_maps[i], err);
            if (rc != DS_OK)
                return rc;
            data = pj->input_maps[i].data;
        } else {
            pj->input_owned[i] = malloc(t->data.len);
            if (!pj->input_owned[i])
                return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                                    "out of memory for run_pipeline.%s (%zu bytes)", name,
                                    t->data.len);
            memcpy(pj->input_owned[i], t->data.data, t->data.len);
            data = pj->input_owned[i];
        }
        pj->inputs[i] = ds_tensor_wrap(pj->daemon->host_backend, (ds_dtype)t->dtype,
                                       (int)t->n_shape, shape, data);
        pj->args.inputs[i] = &pj->inputs[i];
    }
    return DS_OK;
}

static int take_request(pipeline_job *pj, const Diffsynth__V1__RunPipelineRequest *req,
                        const ds_conn *conn, ds_error *err)
{
    const ds_pipeline_def *def = pj->def;
    ds_pipeline_args *a = &pj->args;
    int rc;
    if ((rc = parse_params(def, req, a->values, err)) != DS_OK ||
        (rc = ds_pipeline_dtype_parse(def, req->dtype, &a->dtype, err)) != DS_OK)
        return rc;
    for (size_t i = 0; i < def->param_count; i++) {
        if (def->params[i].default_value || a->values[i].given)
            continue;
        /* Reported back in the reply, so the image can be made again. */
        uint64_t drawn;
        if (getrandom(&drawn, sizeof drawn, 0) != (ssize_t)sizeof drawn)
            return ds_error_set(err, DS_ERR_INTERNAL, "cannot draw a random %s: %s",
                                def->params[i].name, strerror(errno));
        a->values[i].u = drawn;
        a->values[i].i = (int64_t)(drawn >> 1);
        a->values[i].d = (double)drawn;
        pj->seed_drawn = 1;
    }
    pj->prompt = strdup(req->prompt);
    pj->negative_prompt = strdup(req->negative_prompt);
    pj->tokenizer = req->tokenizer[0] ? strdup(req->tokenizer) : NULL;
    if (!pj->prompt || !pj->negative_prompt || (req->tokenizer[0] && !pj->tokenizer))
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for the prompt");
    a->prompt = pj->prompt;
    a->negative_prompt = pj->negative_prompt;
    a->tokenizer = pj->tokenizer;
    if ((rc = take_images(pj, req, conn, err)) != DS_OK)
        return rc;
    if (req->output_region) {
        size_t fd_count;
        const int *fds = ds_conn_frame_fds(conn, &fd_count);
        rc = ds_shm_map_output_region("run_pipeline.output_region", req->output_region,
                                      ds_conn_uid(conn), fds, fd_count, &pj->out_map,
                                      &pj->out_region_offset, &pj->out_region_fd_index,
                                      &pj->out_region_name, err);
        if (rc != DS_OK)
            return rc;
    }
    pj->max_inline = req->max_inline_output_bytes;
    pj->named_outputs = req->named_outputs;
    if ((rc = ds_video_output_parse(req, &pj->video, err)) != DS_OK)
        return rc;
    return DS_OK;
}

void ds_run_pipeline_handle(ds_daemon *d, ds_conn *conn, const Diffsynth__V1__Envelope *env)
{
    const Diffsynth__V1__RunPipelineRequest *req = env->run_pipeline;
    pipeline_job *pj = ds_request_job_new(d, conn, env->request_id, sizeof *pj, "the pipeline");
    if (!pj)
        return;
    pj->daemon = d;
    pj->def = ds_pipeline_find(req->pipeline); /* validated */
    ds_error err;
    ds_error_clear(&err);
    int rc;
    char client[32];
    snprintf(client, sizeof client, "uid:%u", (unsigned)ds_conn_uid(conn));
    if (!(pj->client = strdup(client))) {
        rc = ds_error_set(&err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto fail;
    }
    /* The transport (shared memory) first, then the models: as RunStep does. */
    if ((rc = take_request(pj, req, conn, &err)) != DS_OK ||
        (rc = find_models(pj, req, &err)) != DS_OK ||
        (pj->slots[pj->def->estimate_role].entry && (rc = admit(pj, &err)) != DS_OK) ||
        (rc = ds_scheduler_admit(d->scheduler, (unsigned)ds_conn_uid(conn), &err)) != DS_OK ||
        (rc = ds_conn_begin_job(conn, env, &err)) != DS_OK)
        goto fail;

    pj->conn = conn;
    ds_conn_ref(conn);
    pj->job.request_id = env->request_id;
    pj->job.owner = conn;
    pj->job.uid = (unsigned)ds_conn_uid(conn);
    pj->job.progress = pipeline_job_progress;
    int need_load = 0;
    for (size_t r = 0; r < pj->def->role_count; r++)
        need_load |= pj->slots[r].paths != NULL;
    if (need_load) {
        pj->job.kind = DS_JOB_LOAD;
        pj->job.run = load_run;
        pj->job.complete = load_complete;
        ds_scheduler_submit(d->scheduler, &pj->job);
        return;
    }
    if ((rc = start_pipeline(pj, &err)) != DS_OK) {
        ds_reply_error(d, conn, env->request_id, rc, err.message);
        job_end(pj);
    }
    return;

fail:
    ds_reply_error(d, conn, env->request_id, rc, err.message);
    job_free(pj);
}

/* --- ListPipelines (loop thread) ------------------------------------------------------------ */

static const char *const param_types[] = {
    [DS_PIPELINE_INT] = "int",
    [DS_PIPELINE_UINT64] = "uint64",
    [DS_PIPELINE_NUMBER] = "number",
};

static void tensor_info(Diffsynth__V1__PipelineTensor *m, const ds_pipeline_tensor *t)
{
    diffsynth__v1__pipeline_tensor__init(m);
    m->name = (char *)t->name;
    m->help = (char *)t->help;
    m->needs_role = (char *)(t->needs_role ? t->needs_role : "");
    m->png = t->png;
    m->video = t->video;
}

/* The messages of one pipeline, pointing into its table; `store` holds them. */
typedef struct info_store {
    Diffsynth__V1__PipelineInfo info;
    Diffsynth__V1__PipelineRole roles[DS_PIPELINE_MAX_ROLES], *role_ptrs[DS_PIPELINE_MAX_ROLES];
    Diffsynth__V1__PipelineParam params[DS_PIPELINE_MAX_PARAMS],
        *param_ptrs[DS_PIPELINE_MAX_PARAMS];
    Diffsynth__V1__PipelineTensor inputs[DS_PIPELINE_MAX_TENSORS],
        *input_ptrs[DS_PIPELINE_MAX_TENSORS];
    Diffsynth__V1__PipelineTensor outputs[DS_PIPELINE_MAX_TENSORS],
        *output_ptrs[DS_PIPELINE_MAX_TENSORS];
    char *dtypes[DS_PIPELINE_MAX_TENSORS];
    char *phases[DS_PIPELINE_MAX_TENSORS];
} info_store;

static void pipeline_info(info_store *s, const ds_pipeline_def *def)
{
    Diffsynth__V1__PipelineInfo *m = &s->info;
    diffsynth__v1__pipeline_info__init(m);
    m->name = (char *)def->name;
    m->summary = (char *)def->summary;
    m->size_multiple = (uint32_t)def->size_multiple;
    for (size_t i = 0; i < def->role_count; i++) {
        Diffsynth__V1__PipelineRole *r = &s->roles[i];
        diffsynth__v1__pipeline_role__init(r);
        r->role = (char *)def->roles[i].role;
        r->model_name = (char *)def->roles[i].model_name;
        r->model_class = (char *)def->roles[i].model_class;
        r->required = def->roles[i].required;
        s->role_ptrs[i] = r;
    }
    m->roles = s->role_ptrs;
    m->n_roles = def->role_count;
    for (size_t i = 0; i < def->param_count; i++) {
        const ds_pipeline_param *p = &def->params[i];
        Diffsynth__V1__PipelineParam *q = &s->params[i];
        diffsynth__v1__pipeline_param__init(q);
        q->name = (char *)p->name;
        q->type = (char *)param_types[p->type];
        q->min = p->type == DS_PIPELINE_UINT64 ? 0.0 : p->min;
        q->max = p->type == DS_PIPELINE_UINT64 ? 18446744073709551615.0 : p->max;
        q->min_exclusive = p->min_exclusive;
        q->has_default = p->default_value != NULL;
        q->default_value = (char *)(p->default_value ? p->default_value : "");
        q->help = (char *)p->help;
        s->param_ptrs[i] = q;
    }
    m->params = s->param_ptrs;
    m->n_params = def->param_count;
    for (size_t i = 0; i < def->input_count; i++) {
        tensor_info(&s->inputs[i], &def->inputs[i]);
        s->input_ptrs[i] = &s->inputs[i];
    }
    m->inputs = s->input_ptrs;
    m->n_inputs = def->input_count;
    for (size_t i = 0; i < def->output_count; i++) {
        tensor_info(&s->outputs[i], &def->outputs[i]);
        s->output_ptrs[i] = &s->outputs[i];
    }
    m->outputs = s->output_ptrs;
    m->n_outputs = def->output_count;
    for (size_t i = 0; i < def->dtype_count && i < DS_PIPELINE_MAX_TENSORS; i++)
        s->dtypes[m->n_dtypes++] = (char *)def->dtypes[i].name;
    m->dtypes = s->dtypes;
    for (size_t i = 0; i < def->phase_count && i < DS_PIPELINE_MAX_TENSORS; i++)
        s->phases[m->n_phases++] = (char *)def->phases[i];
    m->phases = s->phases;
}

void ds_list_pipelines_handle(ds_daemon *d, ds_conn *conn, const Diffsynth__V1__Envelope *env)
{
    info_store *stores = calloc(ds_pipeline_count, sizeof *stores);
    Diffsynth__V1__PipelineInfo **infos = calloc(ds_pipeline_count, sizeof *infos);
    if (!stores || !infos) {
        free(stores);
        free(infos);
        ds_reply_error(d, conn, env->request_id, DS_ERR_RESOURCE_EXHAUSTED,
                                "out of memory listing the pipelines");
        return;
    }
    for (size_t i = 0; i < ds_pipeline_count; i++) {
        pipeline_info(&stores[i], ds_pipelines[i]);
        infos[i] = &stores[i].info;
    }
    Diffsynth__V1__ListPipelinesResponse res = DIFFSYNTH__V1__LIST_PIPELINES_RESPONSE__INIT;
    res.pipelines = infos;
    res.n_pipelines = ds_pipeline_count;
    Diffsynth__V1__Envelope out = DIFFSYNTH__V1__ENVELOPE__INIT;
    out.request_id = env->request_id;
    out.body_case = DIFFSYNTH__V1__ENVELOPE__BODY_LIST_PIPELINES_RESULT;
    out.list_pipelines_result = &res;
    d->requests_served++;
    ds_conn_send(conn, &out);
    free(infos);
    free(stores);
}
