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
#include "kernels/ops.h"
#include "models/memory_estimate.h"
#include "models/qwen_image_pipeline.h"

#define PIPELINE_NAME "qwen_image"
/* Room in a reply frame for everything but the two outputs' data, as RunStep reserves. */
#define REPLY_RESERVE_BYTES 4096
#define PER_OUTPUT_OVERHEAD 128
/* Outputs in the region start at multiples of this, so a client may use them in place. */
#define OUTPUT_ALIGN 64

/* The models a Qwen-Image pipeline runs. A role left out of the request is the one loaded model
 * named `model_name` (only the required roles are looked up that way); a model named by id or
 * loaded from paths must be of `model_class`. */
typedef struct role_info {
    const char *role;
    const char *model_name;
    const char *model_class;
    int required;
} role_info;

enum { ROLE_TEXT_ENCODER, ROLE_DIT, ROLE_VAE, ROLE_CONTROLNET, ROLE_COUNT };

static const role_info roles[ROLE_COUNT] = {
    {"text_encoder", "qwen_image_text_encoder",
     "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder", 1},
    {"dit", "qwen_image_dit", "diffsynth.models.qwen_image_dit.QwenImageDiT", 1},
    {"vae", "qwen_image_vae", "diffsynth.models.qwen_image_vae.QwenImageVAE", 1},
    {"controlnet", "qwen_image_blockwise_controlnet",
     "diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet", 0},
};
#define ROLE_LIST "text_encoder, dit, vae, controlnet"

#define PARAM_LIST "seed, steps, cfg_scale, height, width, denoising_strength, controlnet_scale"

/* The optional tensors of the request. */
enum { IMG_INPUT, IMG_CONTROLNET, IMG_NOISE, IMG_COUNT };
static const char *const image_fields[IMG_COUNT] = {"input_image", "controlnet_image",
                                                    "initial_noise"};

typedef struct role_slot {
    ds_pool_model *entry;    /* pinned; NULL until known */
    char **paths;            /* names of the files to load on the worker, or NULL */
    int *fds;                /* the files, opened beneath the model roots */
    size_t path_count;
    ds_loaded_model *loaded; /* the worker's load, until the pool takes it */
} role_slot;

typedef struct pipeline_job {
    ds_job job; /* first: the scheduler hands us &job */
    ds_daemon *daemon;
    ds_conn *conn;
    char *client;           /* holds the references to models loaded for this request */
    role_slot slots[ROLE_COUNT];
    char *prompt;
    char *negative_prompt;
    char *tokenizer;
    ds_qwen_image_params params;
    int seed_drawn;         /* the request gave no seed */
    ds_tensor images[IMG_COUNT];
    void *image_owned[IMG_COUNT];
    ds_shm_mapping image_maps[IMG_COUNT];
    ds_qwen_image_pipeline *pipe;
    /* Outputs, placed by the worker's last turn. */
    uint8_t *png;
    size_t png_size;
    ds_shm_mapping out_map;
    char *out_region_name;
    uint32_t out_region_fd_index;
    uint64_t out_region_offset;
    uint64_t max_inline;
    int png_in_region, latents_in_region;
    uint64_t png_offset, latents_offset;
    /* Timing: queue time of earlier submissions, the turn running now, the denoising turns. */
    double queue_before_s;
    double turn_started_s;
    double denoise_turns_s;
    unsigned denoise_turns;
    ds_admission_ticket admitted; /* the run's memory, reserved until the reply */
} pipeline_job;

/* Seconds per output pixel of the last decode, for the ETA of the next ones (0: none yet). */
static _Atomic double decode_s_per_pixel;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* --- parameters ----------------------------------------------------------------------------- */

/* Decimal, optionally signed, nothing else: no blanks, no "0x", no trailing text. */
static int plain_integer(const char *text)
{
    const char *p = text + (text[0] == '-');
    if (!*p)
        return 0;
    for (; *p; p++)
        if (!isdigit((unsigned char)*p))
            return 0;
    return 1;
}

static int parse_int(const char *name, const char *text, long lo, long hi, int *out, ds_error *err)
{
    errno = 0;
    long long v = plain_integer(text) ? strtoll(text, NULL, 10) : 0;
    if (!plain_integer(text) || errno == ERANGE || v < lo || v > hi)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "parameter \"%s\" is \"%.64s\": expected an integer in %ld..%ld", name,
                            text, lo, hi);
    *out = (int)v;
    return DS_OK;
}

static int parse_seed(const char *text, uint64_t *out, ds_error *err)
{
    errno = 0;
    int ok = plain_integer(text) && text[0] != '-';
    unsigned long long v = ok ? strtoull(text, NULL, 10) : 0;
    if (!ok || errno == ERANGE)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "parameter \"seed\" is \"%.64s\": expected an unsigned 64-bit integer "
                            "(0..18446744073709551615)",
                            text);
    *out = (uint64_t)v;
    return DS_OK;
}

/* A finite number; with `positive_fraction`, in (0, 1]. */
static int parse_number(const char *name, const char *text, int positive_fraction, double *out,
                        ds_error *err)
{
    char *end = NULL;
    errno = 0;
    double v = text[0] && !isspace((unsigned char)text[0]) ? strtod(text, &end) : NAN;
    int ok = end && !*end && end != text && isfinite(v) && errno != ERANGE;
    if (ok && positive_fraction)
        ok = v > 0.0 && v <= 1.0;
    if (!ok)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "parameter \"%s\" is \"%.64s\": expected %s",
                            name, text, positive_fraction ? "a number in (0, 1]" : "a finite number");
    *out = v;
    return DS_OK;
}

/* Applies the request's parameters over upstream's defaults. *seed_given says whether the
 * request chose the seed. */
static int parse_params(const Diffsynth__V1__RunPipelineRequest *req, ds_qwen_image_params *p,
                        int *seed_given, ds_error *err)
{
    *seed_given = 0;
    for (size_t i = 0; i < req->n_params; i++) {
        const char *name = req->params[i]->name;
        const char *value = req->params[i]->value;
        int rc;
        if (strcmp(name, "seed") == 0) {
            rc = parse_seed(value, &p->seed, err);
            *seed_given = 1;
        } else if (strcmp(name, "steps") == 0) {
            rc = parse_int(name, value, 1, 1000, &p->steps, err);
        } else if (strcmp(name, "height") == 0) {
            rc = parse_int(name, value, 16, 8192, &p->height, err);
        } else if (strcmp(name, "width") == 0) {
            rc = parse_int(name, value, 16, 8192, &p->width, err);
        } else if (strcmp(name, "cfg_scale") == 0) {
            rc = parse_number(name, value, 0, &p->cfg_scale, err);
        } else if (strcmp(name, "denoising_strength") == 0) {
            rc = parse_number(name, value, 1, &p->denoising_strength, err);
        } else if (strcmp(name, "controlnet_scale") == 0) {
            rc = parse_number(name, value, 0, &p->controlnet_scale, err);
        } else {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "unknown parameter \"%.64s\"; " PIPELINE_NAME " takes: " PARAM_LIST,
                              name);
        }
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

static int parse_dtype(const char *text, ds_dtype *out, ds_error *err)
{
    if (!text[0] || strcmp(text, "bfloat16") == 0 || strcmp(text, "bf16") == 0) {
        *out = DS_BF16;
        return DS_OK;
    }
    if (strcmp(text, "float32") == 0 || strcmp(text, "f32") == 0) {
        *out = DS_F32;
        return DS_OK;
    }
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                        "run_pipeline.dtype \"%.64s\" is not a compute dtype of " PIPELINE_NAME
                        ": \"bfloat16\" (default, also \"bf16\") or \"float32\" (\"f32\")",
                        text);
}

/* --- validation (pure) ---------------------------------------------------------------------- */

static int role_index(const char *role)
{
    for (int r = 0; r < ROLE_COUNT; r++)
        if (strcmp(roles[r].role, role) == 0)
            return r;
    return -1;
}

static int printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7F)
            return 0;
    return 1;
}

static int check_model(size_t i, const Diffsynth__V1__PipelineModel *m, ds_error *err)
{
    if (role_index(m->role) < 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.models[%zu].role \"%.64s\" is not a role of " PIPELINE_NAME
                            "; roles: " ROLE_LIST,
                            i, printable(m->role) ? m->role : "(unprintable)");
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
                            i, m->role, roles[role_index(m->role)].model_name);
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
    int dtype = (int)t->dtype;
    size_t elem = (dtype > 0 && dtype < (int)DS_DTYPE_COUNT) ? ds_dtype_size((ds_dtype)dtype) : 0;
    if (elem == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.%s: dtype %d is not a known DType", field, dtype);
    if (t->n_shape == 0 || t->n_shape > DS_MAX_DIMS)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.%s has %zu dims, expected 1 to %d", field, t->n_shape,
                            DS_MAX_DIMS);
    uint64_t bytes = elem;
    for (size_t d = 0; d < t->n_shape; d++) {
        int64_t dim = t->shape[d];
        if (dim <= 0)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "run_pipeline.%s: dim %zu is %lld; every dim must be positive",
                                field, d, (long long)dim);
        if (bytes > SIZE_MAX / (uint64_t)dim)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "run_pipeline.%s: the shape's byte count overflows", field);
        bytes *= (uint64_t)dim;
    }
    if (t->shm) {
        char what[64];
        snprintf(what, sizeof what, "run_pipeline.%s.shm", field);
        int rc = ds_shm_check_region(what, t->shm, err);
        if (rc != DS_OK)
            return rc;
        if (t->data.len != 0)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "run_pipeline.%s has both inline data and a shared-memory region",
                                field);
        if (t->shm->size != bytes)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "run_pipeline.%s: shared-memory region has %llu bytes, its dtype "
                                "and shape need %llu",
                                field, (unsigned long long)t->shm->size, (unsigned long long)bytes);
    } else if (t->data.len != bytes) {
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.%s: %zu bytes of data, its dtype and shape need %llu",
                            field, t->data.len, (unsigned long long)bytes);
    }
    return DS_OK;
}

static const Diffsynth__V1__Tensor *request_image(const Diffsynth__V1__RunPipelineRequest *req,
                                                  int which)
{
    switch (which) {
    case IMG_INPUT: return req->input_image;
    case IMG_CONTROLNET: return req->controlnet_image;
    default: return req->initial_noise;
    }
}

int ds_run_pipeline_validate(const Diffsynth__V1__RunPipelineRequest *req, ds_error *err)
{
    if (strcmp(req->pipeline, PIPELINE_NAME) != 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.pipeline \"%.64s\" is not a known pipeline; known "
                            "pipelines: " PIPELINE_NAME,
                            printable(req->pipeline) ? req->pipeline : "(unprintable)");
    if (req->n_models > DS_RUN_PIPELINE_MAX_MODELS)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "run_pipeline has %zu models, at most %d",
                            req->n_models, DS_RUN_PIPELINE_MAX_MODELS);
    for (size_t i = 0; i < req->n_models; i++) {
        int rc = check_model(i, req->models[i], err);
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
    ds_qwen_image_params params;
    ds_qwen_image_params_default(&params);
    int seed_given;
    int rc = parse_params(req, &params, &seed_given, err);
    if (rc != DS_OK)
        return rc;
    ds_dtype dtype;
    if ((rc = parse_dtype(req->dtype, &dtype, err)) != DS_OK)
        return rc;
    for (int i = 0; i < IMG_COUNT; i++) {
        const Diffsynth__V1__Tensor *t = request_image(req, i);
        if (t && (rc = check_tensor(image_fields[i], t, err)) != DS_OK)
            return rc;
    }
    if (req->tokenizer[0] && req->tokenizer[0] != '/')
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.tokenizer \"%.512s\" is not an absolute path",
                            req->tokenizer);
    if (req->output_region) {
        rc = ds_shm_check_region("run_pipeline.output_region", req->output_region, err);
        if (rc != DS_OK)
            return rc;
        if (req->output_region->size == 0)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "run_pipeline.output_region.size is 0");
    }
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
    ds_qwen_image_pipeline_free(pj->pipe);
    for (int r = 0; r < ROLE_COUNT; r++) {
        role_slot *s = &pj->slots[r];
        if (s->entry)
            ds_pool_unpin(s->entry);
        ds_loaded_model_free(s->loaded);
        free_paths(s);
    }
    for (int i = 0; i < IMG_COUNT; i++) {
        free(pj->image_owned[i]);
        ds_shm_unmap(&pj->image_maps[i]);
    }
    ds_shm_unmap(&pj->out_map);
    free(pj->out_region_name);
    free(pj->png);
    free(pj->prompt);
    free(pj->negative_prompt);
    free(pj->tokenizer);
    free(pj->client);
    free(pj);
}

static int pipeline_cancelled(void *user) { return ds_job_cancelled(user); }

/* Seconds the decode of this job's image will take: the last decode's pace scaled to this
 * size, or (before any decode) one denoising step's time, which is the same order. */
static double decode_estimate(const pipeline_job *pj, double mean_step_s)
{
    int h, w;
    ds_qwen_image_pipeline_size(pj->pipe, &h, &w);
    double rate = atomic_load(&decode_s_per_pixel);
    return rate > 0 ? rate * (double)h * (double)w : mean_step_s;
}

/* The pipeline's progress, with an ETA of this job's own compute: the mean denoising step so
 * far times the steps left, plus the decode. */
static void pipeline_progress(void *user, const char *phase, uint64_t done, uint64_t total)
{
    pipeline_job *pj = user;
    double in_turn = now_s() - pj->turn_started_s;
    double eta = -1.0;
    if (strcmp(phase, "denoise") == 0 && done > 0 && total >= done) {
        double mean = (pj->denoise_turns_s + in_turn) / (double)(pj->denoise_turns + 1);
        eta = mean * (double)(total - done) + decode_estimate(pj, mean);
    } else if (strcmp(phase, "decode") == 0) {
        double mean = pj->denoise_turns ? pj->denoise_turns_s / pj->denoise_turns : in_turn;
        eta = done >= total ? 0.0 : fmax(decode_estimate(pj, mean) - in_turn, 0.0);
    } else if (strcmp(phase, "encode") != 0) {
        /* Phases inside a unit (a model's own blocks) keep the scheduler's pace estimate. */
        ds_job_report(&pj->job, phase, done, total, NULL);
        return;
    }
    ds_job_report_eta(&pj->job, phase, done, total, eta, NULL);
}

/* A tokenizer folder named by the client obeys the model roots, as model files do. */
static int pipeline_check_path(void *user, const char *path, ds_error *err)
{
    const pipeline_job *pj = (const pipeline_job *)user;
    const ds_model_roots *roots = &pj->daemon->roots;
    char resolved[PATH_MAX];
    if (path[0] != '/')
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s is not an absolute path", path);
    if (!realpath(path, resolved))
        return ds_error_set(err, DS_ERR_NOT_FOUND, "%s: %s", path, strerror(errno));
    for (size_t i = 0; i < roots->count; i++)
        if (ds_path_is_under(roots->dirs[i], resolved))
            return DS_OK;
    char *described = ds_model_roots_describe(roots);
    int rc = ds_error_set(err, DS_ERR_PERMISSION_DENIED, "%s is outside the model roots: %s", path,
                          described ? described : "(none)");
    free(described);
    return rc;
}

/* Where the PNG and the latents go: inline while the reply frame has room and each is within
 * the client's inline limit, else into the output region (copied here, off the loop thread). */
static int place_output(pipeline_job *pj, const char *name, const void *data, uint64_t bytes,
                        uint64_t *inline_used, uint64_t *region_used, int *in_region,
                        uint64_t *offset, ds_error *err)
{
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
    memcpy(m->data + start, data, bytes);
    *in_region = 1;
    *offset = start;
    *region_used = start + bytes;
    return DS_OK;
}

/* After the last unit: the PNG, then both outputs placed. */
static int finish(pipeline_job *pj, ds_error *err)
{
    const ds_tensor *image = ds_qwen_image_pipeline_image(pj->pipe);
    const ds_tensor *latents = ds_qwen_image_pipeline_latents(pj->pipe);
    if (!image || !latents || image->ndim != 3 || image->dtype != DS_U8 || image->shape[2] != 3)
        return ds_error_set(err, DS_ERR_INTERNAL,
                            "the pipeline finished without an [H, W, 3] u8 image and latents");
    int rc = ds_png_encode_rgb8(image->data, (uint32_t)image->shape[1], (uint32_t)image->shape[0],
                                &pj->png, &pj->png_size, err);
    if (rc != DS_OK)
        return rc;
    uint64_t inline_used = 0, region_used = 0;
    rc = place_output(pj, "png", pj->png, pj->png_size, &inline_used, &region_used,
                      &pj->png_in_region, &pj->png_offset, err);
    if (rc != DS_OK)
        return rc;
    return place_output(pj, "latents", latents->data, ds_tensor_nbytes(latents), &inline_used,
                        &region_used, &pj->latents_in_region, &pj->latents_offset, err);
}

/* DATA_LOSS when a model file or a client's region faulted during the turn: what the unit
 * computed from zeros is garbage, whatever it returned. Overwrites err only then. */
static int check_intact(const pipeline_job *pj, ds_error *err)
{
    ds_error lost;
    int rc = DS_OK;
    for (int r = 0; rc == DS_OK && r < ROLE_COUNT; r++)
        if (pj->slots[r].entry)
            rc = ds_pool_check_faults(pj->slots[r].entry, &lost);
    for (int i = 0; rc == DS_OK && i < IMG_COUNT; i++)
        rc = ds_shm_check_intact(&pj->image_maps[i], &lost);
    if (rc == DS_OK)
        rc = ds_shm_check_intact(&pj->out_map, &lost);
    if (rc != DS_OK)
        *err = lost;
    return rc;
}

/* One unit per turn. */
static int pipeline_run(ds_job *job)
{
    pipeline_job *pj = (pipeline_job *)job;
    uint64_t done, total;
    ds_qwen_image_pipeline_position(pj->pipe, &done, &total);
    ds_step_context ctx = {
        .backend = pj->daemon->backend,
        .cancelled = pipeline_cancelled,
        .progress = pipeline_progress,
        .user = pj,
        .vram = pj->daemon->vram,
        .check_path = pipeline_check_path,
    };
    pj->turn_started_s = now_s();
    /* Before every unit: a file rewritten in place since the last one would silently change
     * the weights the next unit reads (a waiting request, or one between two steps). */
    for (int r = 0; r < ROLE_COUNT; r++)
        if (pj->slots[r].entry && ds_pool_check_fresh(pj->slots[r].entry, &job->error) != DS_OK)
            return job->error.code;
    int rc = ds_qwen_image_pipeline_advance(pj->pipe, &ctx, &job->error);
    double took = now_s() - pj->turn_started_s;
    if (check_intact(pj, &job->error) != DS_OK)
        return job->error.code;
    if (rc < 0)
        return rc;
    if (done > 0 && done + 1 < total) {
        pj->denoise_turns_s += took;
        pj->denoise_turns++;
    } else if (done + 1 == total) {
        int h, w;
        ds_qwen_image_pipeline_size(pj->pipe, &h, &w);
        atomic_store(&decode_s_per_pixel, took / ((double)h * (double)w));
    }
    if (rc > 0)
        return DS_JOB_YIELD;
    rc = finish(pj, &job->error);
    if (check_intact(pj, &job->error) != DS_OK)
        return job->error.code;
    return rc;
}

/* Which unit a job stopped at, for the CANCELLED message. */
static void describe_position(const pipeline_job *pj, char *buf, size_t size)
{
    uint64_t done = 0, total = 0;
    if (pj->pipe)
        ds_qwen_image_pipeline_position(pj->pipe, &done, &total);
    if (!pj->pipe || done == 0)
        snprintf(buf, size, "before the prompt was encoded");
    else if (done + 1 < total)
        snprintf(buf, size, "after %llu of %llu denoising steps", (unsigned long long)(done - 1),
                 (unsigned long long)(total - 2));
    else
        snprintf(buf, size, "before the decode");
}

/* --- loading roles given as paths (worker) --------------------------------------------------- */

/* Identifies the files and loads the config of the role's class: a role names one model. */
static int load_role(pipeline_job *pj, int r, ds_error *err)
{
    role_slot *s = &pj->slots[r];
    const role_info *role = &roles[r];
    const char *const *paths = (const char *const *)s->paths;
    ds_model_files *files = NULL;
    ds_identification ident = {0};
    int rc = ds_model_files_open_fds(s->fds, paths, s->path_count, &files, err);
    if (rc == DS_OK)
        rc = ds_identify_files(pj->daemon->configs, files, &ident, err);
    if (rc != DS_OK)
        goto done;
    const ds_model_config *pick = NULL;
    for (size_t i = 0; i < ident.config_count && !pick; i++)
        if (strcmp(ident.configs[i]->model_class, role->model_class) == 0)
            pick = ident.configs[i];
    if (!pick) {
        char *label = ds_python_str_paths(paths, s->path_count);
        if (ident.config_count == 0) {
            rc = ds_error_set(err, DS_ERR_NOT_FOUND,
                              "the %s: Cannot detect the model type. File: %s. Model hash: %s",
                              role->role, label ? label : "(out of memory)", ident.model_hash);
        } else {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "the %s's files %s are a %s (%s), not a %s", role->role,
                              label ? label : "(out of memory)", ident.configs[0]->model_name,
                              ident.configs[0]->model_class, role->model_class);
        }
        free(label);
        goto done;
    }
    if (!ds_config_is_implemented(pick)) {
        rc = ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                          "the %s's files match %s (%s), which this build does not implement",
                          role->role, pick->model_name, pick->model_class);
        goto done;
    }
    rc = ds_model_load(pick, files, &s->loaded, err);
    if (rc != DS_OK) {
        ds_error_prefix(err, "loading the %s (%s): ", role->role, pick->model_name);
        goto done;
    }
    files = NULL; /* the model owns them now */

done:
    ds_model_files_close(files);
    ds_identification_free(&ident);
    return rc;
}

static int load_run(ds_job *job)
{
    pipeline_job *pj = (pipeline_job *)job;
    uint64_t to_load = 0, loaded = 0;
    for (int r = 0; r < ROLE_COUNT; r++)
        to_load += pj->slots[r].paths != NULL;
    for (int r = 0; r < ROLE_COUNT; r++) {
        if (!pj->slots[r].paths)
            continue;
        if (ds_job_cancelled(job))
            return ds_error_set(&job->error, DS_ERR_CANCELLED,
                                "cancelled after loading %llu of %llu models",
                                (unsigned long long)loaded, (unsigned long long)to_load);
        ds_job_report(job, "load", loaded, to_load, roles[r].role);
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
                       int64_t *shape, void *data, uint64_t bytes, int in_region, uint64_t offset)
{
    diffsynth__v1__tensor__init(t);
    t->name = (char *)name;
    t->dtype = (Diffsynth__V1__DType)dtype;
    t->n_shape = ndim;
    t->shape = shape;
    if (in_region) {
        diffsynth__v1__shared_region__init(region);
        region->name = pj->out_region_name;
        region->fd_index = pj->out_region_fd_index;
        region->offset = pj->out_region_offset + offset;
        region->size = bytes;
        t->shm = region;
    } else {
        t->data.data = data;
        t->data.len = bytes;
    }
}

static void pipeline_complete(ds_job *job)
{
    pipeline_job *pj = (pipeline_job *)job;
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
        describe_position(pj, where, sizeof where);
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
    const ds_tensor *latents = ds_qwen_image_pipeline_latents(pj->pipe);
    int height, width;
    ds_qwen_image_pipeline_size(pj->pipe, &height, &width);
    double encode_s, denoise_s, decode_s;
    ds_qwen_image_pipeline_times(pj->pipe, &encode_s, &denoise_s, &decode_s);

    Diffsynth__V1__Tensor png, lat;
    Diffsynth__V1__SharedRegion png_region, lat_region;
    int64_t png_shape[1] = {(int64_t)pj->png_size};
    int64_t lat_shape[DS_MAX_DIMS];
    for (int k = 0; k < latents->ndim; k++)
        lat_shape[k] = latents->shape[k];
    set_output(&png, &png_region, pj, "png", DS_U8, 1, png_shape, pj->png, pj->png_size,
               pj->png_in_region, pj->png_offset);
    set_output(&lat, &lat_region, pj, "latents", latents->dtype, (size_t)latents->ndim, lat_shape,
               latents->data, ds_tensor_nbytes(latents), pj->latents_in_region, pj->latents_offset);
    Diffsynth__V1__RunPipelineResponse res = DIFFSYNTH__V1__RUN_PIPELINE_RESPONSE__INIT;
    res.png = &png;
    res.latents = &lat;
    res.seed = ds_qwen_image_pipeline_seed(pj->pipe);
    res.steps = (uint32_t)ds_qwen_image_pipeline_steps(pj->pipe);
    res.height = (uint32_t)height;
    res.width = (uint32_t)width;
    res.queue_s = pj->queue_before_s + job->queue_s;
    res.encode_s = encode_s;
    res.denoise_s = denoise_s;
    res.decode_s = decode_s;
    Diffsynth__V1__Envelope out = DIFFSYNTH__V1__ENVELOPE__INIT;
    out.request_id = job->request_id;
    out.body_case = DIFFSYNTH__V1__ENVELOPE__BODY_RUN_PIPELINE_RESULT;
    out.run_pipeline_result = &res;
    d->requests_served++;
    ds_log_info("%s: request %llu: %s %dx%d, %u steps, seed %llu%s: encode %.2f s, denoise %.2f s, "
                "decode %.2f s, queued %.2f s",
                ds_conn_describe(conn), (unsigned long long)job->request_id, PIPELINE_NAME, width,
                height, res.steps, (unsigned long long)res.seed, pj->seed_drawn ? " (drawn)" : "",
                encode_s, denoise_s, decode_s, res.queue_s);
    ds_conn_send(conn, &out);
    job_end(pj);
}

/* The ControlNet conditioning's channels the estimate assumes: the inpainting variant's 17
 * (16 latent channels and the mask), the wider of the two. */
#define CONTROLNET_CHANNELS_MAX 17

/* Reserves the run's estimated memory (models/memory_estimate.h) from its size, dtype, prompts
 * and images, before its units are queued; needs the VAE (its widths). */
static int admit(pipeline_job *pj, ds_error *err)
{
    ds_daemon *d = pj->daemon;
    const ds_qwen_image_params *p = &pj->params;
    uint64_t inline_bytes = 0;
    for (int i = 0; i < IMG_COUNT; i++)
        if (pj->image_owned[i])
            inline_bytes += ds_tensor_nbytes(&pj->images[i]);
    ds_memory_pipeline_args a = {
        .vae = pj->slots[ROLE_VAE].entry->model,
        /* The pipeline rounds the size up to multiples of 16. */
        .height = ((int64_t)p->height + 15) / 16 * 16,
        .width = ((int64_t)p->width + 15) / 16 * 16,
        .dtype = p->dtype,
        .prompt_bytes = p->prompt ? strlen(p->prompt) : 0,
        .negative_prompt_bytes = p->negative_prompt ? strlen(p->negative_prompt) : 0,
        .cfg = p->cfg_scale != 1.0,
        .input_image = p->input_image != NULL,
        .controlnet_image = p->controlnet_image != NULL,
        .controlnet_channels = p->controlnet_image ? CONTROLNET_CHANNELS_MAX : 0,
        .inline_bytes = inline_bytes,
        .threads = d->admission.threads,
    };
    ds_memory_need need;
    int rc = ds_memory_qwen_image_pipeline(&a, &need, err);
    if (rc != DS_OK)
        return rc;
    uint64_t device_budget = UINT64_MAX;
    if (d->vram && d->backend != d->host_backend) {
        ds_vram_stats vs;
        ds_vram_stats_get(d->vram, &vs);
        if (vs.budget_bytes != DS_VRAM_UNLIMITED)
            device_budget = vs.budget_bytes;
    }
    char what[96];
    snprintf(what, sizeof what, PIPELINE_NAME " %lldx%lld (height x width), %s",
             (long long)a.height, (long long)a.width, ds_dtype_name(p->dtype));
    return ds_admission_reserve(&d->admission, &pj->admitted, what, need, device_budget, err);
}

/* Sets up the pipeline over the pinned models and queues its units. */
static int start_pipeline(pipeline_job *pj, ds_error *err)
{
    ds_qwen_image_models models = {
        .text_encoder = pj->slots[ROLE_TEXT_ENCODER].entry->model,
        .dit = pj->slots[ROLE_DIT].entry->model,
        .vae = pj->slots[ROLE_VAE].entry->model,
        .controlnet = pj->slots[ROLE_CONTROLNET].entry ? pj->slots[ROLE_CONTROLNET].entry->model
                                                       : NULL,
    };
    int rc = ds_qwen_image_pipeline_new(&models, &pj->params, &pj->pipe, err);
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
    for (int r = 0; r < ROLE_COUNT; r++) {
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
                    s->entry->id, s->entry->model->model_name, pj->client, roles[r].role);
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
static int find_by_name(ds_daemon *d, int r, ds_pool_model **out, ds_error *err)
{
    const role_info *role = &roles[r];
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

static int find_by_id(ds_daemon *d, int r, const char *id, ds_pool_model **out, ds_error *err)
{
    const role_info *role = &roles[r];
    ds_pool_model *e = ds_pool_find(d->pool, id);
    if (!e)
        return ds_error_set(err, DS_ERR_NOT_FOUND, "no model %s in the pool (role \"%s\")", id,
                            role->role);
    if (strcmp(e->model->model_class, role->model_class) != 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "model %s is a %s (%s) and cannot be the %s, which must be a %s", id,
                            e->model->model_name, e->model->model_class, role->role,
                            role->model_class);
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
    const Diffsynth__V1__PipelineModel *given[ROLE_COUNT] = {0};
    for (size_t i = 0; i < req->n_models; i++)
        given[role_index(req->models[i]->role)] = req->models[i];
    /* The roles the request names first: their errors are about what the client sent. */
    for (int pass = 0; pass < 2; pass++) {
        for (int r = 0; r < ROLE_COUNT; r++) {
            role_slot *s = &pj->slots[r];
            const Diffsynth__V1__PipelineModel *m = given[r];
            ds_pool_model *e = NULL;
            int rc = DS_OK;
            if (pass == 0 && m && m->model_id[0])
                rc = find_by_id(d, r, m->model_id, &e, err);
            else if (pass == 0 && m)
                rc = resolve_paths(d, s, m, err);
            else if (pass == 1 && !m && roles[r].required)
                rc = find_by_name(d, r, &e, err);
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
    if (req->controlnet_image && !given[ROLE_CONTROLNET])
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.controlnet_image needs a Blockwise ControlNet: name one in "
                            "models (role \"controlnet\", a model_id or paths)");
    return DS_OK;
}

/* The optional tensors: shared memory mapped read-only, inline data copied out of the frame
 * (which is freed when dispatch returns). */
static int take_images(pipeline_job *pj, const Diffsynth__V1__RunPipelineRequest *req,
                       const ds_conn *conn, ds_error *err)
{
    size_t fd_count;
    const int *fds = ds_conn_frame_fds(conn, &fd_count);
    for (int i = 0; i < IMG_COUNT; i++) {
        const Diffsynth__V1__Tensor *t = request_image(req, i);
        if (!t)
            continue;
        int64_t shape[DS_MAX_DIMS];
        for (size_t k = 0; k < t->n_shape; k++)
            shape[k] = t->shape[k];
        void *data;
        if (t->shm) {
            char what[64];
            snprintf(what, sizeof what, "run_pipeline.%s", image_fields[i]);
            int rc = ds_shm_map_region(what, t->shm, ds_conn_uid(conn), fds, fd_count, 0,
                                       &pj->image_maps[i], err);
            if (rc != DS_OK)
                return rc;
            data = pj->image_maps[i].data;
        } else {
            pj->image_owned[i] = malloc(t->data.len);
            if (!pj->image_owned[i])
                return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                                    "out of memory for run_pipeline.%s (%zu bytes)",
                                    image_fields[i], t->data.len);
            memcpy(pj->image_owned[i], t->data.data, t->data.len);
            data = pj->image_owned[i];
        }
        pj->images[i] = ds_tensor_wrap(pj->daemon->host_backend, (ds_dtype)t->dtype,
                                       (int)t->n_shape, shape, data);
    }
    pj->params.input_image = req->input_image ? &pj->images[IMG_INPUT] : NULL;
    pj->params.controlnet_image = req->controlnet_image ? &pj->images[IMG_CONTROLNET] : NULL;
    pj->params.initial_noise = req->initial_noise ? &pj->images[IMG_NOISE] : NULL;
    return DS_OK;
}

static int take_request(pipeline_job *pj, const Diffsynth__V1__RunPipelineRequest *req,
                        const ds_conn *conn, ds_error *err)
{
    ds_qwen_image_params *p = &pj->params;
    ds_qwen_image_params_default(p);
    int seed_given, rc;
    if ((rc = parse_params(req, p, &seed_given, err)) != DS_OK ||
        (rc = parse_dtype(req->dtype, &p->dtype, err)) != DS_OK)
        return rc;
    if (!seed_given) {
        /* Reported back in the reply, so the image can be made again. */
        if (getrandom(&p->seed, sizeof p->seed, 0) != (ssize_t)sizeof p->seed)
            return ds_error_set(err, DS_ERR_INTERNAL, "cannot draw a random seed: %s",
                                strerror(errno));
        pj->seed_drawn = 1;
    }
    pj->prompt = strdup(req->prompt);
    pj->negative_prompt = strdup(req->negative_prompt);
    pj->tokenizer = req->tokenizer[0] ? strdup(req->tokenizer) : NULL;
    if (!pj->prompt || !pj->negative_prompt || (req->tokenizer[0] && !pj->tokenizer))
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for the prompt");
    p->prompt = pj->prompt;
    p->negative_prompt = pj->negative_prompt;
    p->tokenizer = pj->tokenizer;
    if ((rc = take_images(pj, req, conn, err)) != DS_OK)
        return rc;
    if (req->output_region) {
        const Diffsynth__V1__SharedRegion *r = req->output_region;
        size_t fd_count;
        const int *fds = ds_conn_frame_fds(conn, &fd_count);
        rc = ds_shm_map_region("run_pipeline.output_region", r, ds_conn_uid(conn), fds, fd_count,
                               1, &pj->out_map, err);
        if (rc != DS_OK)
            return rc;
        pj->out_region_offset = r->offset;
        pj->out_region_fd_index = r->fd_index;
        if (!(pj->out_region_name = strdup(r->name)))
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    pj->max_inline = req->max_inline_output_bytes;
    return DS_OK;
}

void ds_run_pipeline_handle(ds_daemon *d, ds_conn *conn, const Diffsynth__V1__Envelope *env)
{
    const Diffsynth__V1__RunPipelineRequest *req = env->run_pipeline;
    ds_error err;
    ds_error_clear(&err);
    int rc;
    pipeline_job *pj = calloc(1, sizeof *pj);
    if (!pj) {
        ds_reply_error(d, conn, env->request_id, DS_ERR_RESOURCE_EXHAUSTED,
                                "out of memory queueing the pipeline");
        return;
    }
    pj->daemon = d;
    char client[32];
    snprintf(client, sizeof client, "uid:%u", (unsigned)ds_conn_uid(conn));
    if (!(pj->client = strdup(client))) {
        rc = ds_error_set(&err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
        goto fail;
    }
    /* The transport (shared memory) first, then the models: as RunStep does. */
    if ((rc = take_request(pj, req, conn, &err)) != DS_OK ||
        (rc = find_models(pj, req, &err)) != DS_OK ||
        (pj->slots[ROLE_VAE].entry && (rc = admit(pj, &err)) != DS_OK) ||
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
    for (int r = 0; r < ROLE_COUNT; r++)
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
