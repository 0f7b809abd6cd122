#include "daemon/dispatch.h"

#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "daemon/message_walk.h"
#include "daemon/reply.h"
#include "daemon/run_pipeline.h"
#include "daemon/run_step.h"
#include "models/model_loader.h"

#define MAX_SUGGESTIONS 5

/* --- reply arena ---------------------------------------------------------------------------
 * A reply is a tree of small protobuf-c structs; building it in an arena makes freeing it one
 * call and lets a builder check for out-of-memory once, at the end. */

typedef struct arena_block {
    struct arena_block *next;
    size_t used;
    size_t cap;
    alignas(max_align_t) unsigned char data[];
} arena_block;

typedef struct arena {
    arena_block *head;
    int oom;
} arena;

static void *arena_alloc(arena *a, size_t size)
{
    size = (size + alignof(max_align_t) - 1) & ~(alignof(max_align_t) - 1);
    arena_block *b = a->head;
    if (!b || b->cap - b->used < size) {
        size_t cap = size > 16384 ? size : 16384;
        b = malloc(sizeof *b + cap);
        if (!b) {
            a->oom = 1;
            return NULL;
        }
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
    }
    void *p = b->data + b->used;
    b->used += size;
    memset(p, 0, size);
    return p;
}

/* NULL becomes proto3's empty string, which protobuf-c expects for an unset string. */
static char *arena_str(arena *a, const char *s)
{
    if (!s || !s[0])
        return (char *)protobuf_c_empty_string;
    size_t n = strlen(s) + 1;
    char *copy = arena_alloc(a, n);
    if (copy)
        memcpy(copy, s, n);
    return copy ? copy : (char *)protobuf_c_empty_string;
}

static void *arena_array(arena *a, size_t count, size_t size)
{
    if (count == 0)
        return NULL;
    if (count > SIZE_MAX / size) {
        a->oom = 1;
        return NULL;
    }
    return arena_alloc(a, count * size);
}

static void arena_free(arena *a)
{
    while (a->head) {
        arena_block *next = a->head->next;
        free(a->head);
        a->head = next;
    }
}

/* A message of `desc`'s type from the arena, initialized; NULL when the arena is out. */
static void *arena_msg(arena *a, const ProtobufCMessageDescriptor *desc)
{
    void *m = arena_alloc(a, desc->sizeof_message);
    if (m)
        protobuf_c_message_init(desc, m);
    return m;
}

/* --- replies ------------------------------------------------------------------------------ */

/* Sends `body`, built (from arena `a`), as the reply to request_id: the message of the
 * envelope's oneof case `body_case`, set through that field's descriptor as the encoder reads
 * it. An error instead when building ran out of memory. */
static void reply(ds_daemon *d, ds_conn *conn, arena *a, uint64_t request_id,
                  Diffsynth__V1__Envelope__BodyCase body_case, void *body)
{
    if (a->oom) {
        ds_reply_error(d, conn, request_id, DS_ERR_RESOURCE_EXHAUSTED,
                       "out of memory building the reply");
        return;
    }
    Diffsynth__V1__Envelope out = DIFFSYNTH__V1__ENVELOPE__INIT;
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(
        &diffsynth__v1__envelope__descriptor, (unsigned)body_case);
    out.request_id = request_id;
    out.body_case = body_case;
    *(void **)((char *)&out + f->offset) = body;
    d->requests_served++;
    ds_conn_send(conn, &out);
}

/* The strings a config and a loaded model both carry (what upstream prints of a loaded model),
 * from `from` (ds_model_config or ds_loaded_model) into message `m` (ModelConfig or
 * LoadedModel), which name them alike. */
#define COPY_MODEL_STRINGS(a, m, from)                                                       \
    do {                                                                                     \
        (m)->model_name = arena_str(a, (from)->model_name);                                  \
        (m)->model_class = arena_str(a, (from)->model_class);                                \
        (m)->state_dict_converter = arena_str(a, (from)->state_dict_converter);              \
        (m)->extra_kwargs_json = arena_str(a, (from)->extra_kwargs_json);                    \
    } while (0)

static Diffsynth__V1__ModelConfig *config_msg(arena *a, const ds_model_config *c)
{
    Diffsynth__V1__ModelConfig *m = arena_msg(a, &diffsynth__v1__model_config__descriptor);
    if (!m)
        return NULL;
    m->model_hash = arena_str(a, c->model_hash);
    COPY_MODEL_STRINGS(a, m, c);
    m->implemented = ds_config_is_implemented(c);
    m->quant_config_json = arena_str(a, c->quant_config_json);
    m->source = arena_str(a, c->source);
    return m;
}

static Diffsynth__V1__TierBytes *tier_msg(arena *a, const char *tier, uint64_t bytes)
{
    Diffsynth__V1__TierBytes *t = arena_msg(a, &diffsynth__v1__tier_bytes__descriptor);
    if (!t)
        return NULL;
    t->tier = (char *)tier;
    t->bytes = bytes;
    return t;
}

/* The three tiers in a fixed order: the mapped files; host memory: the slow tier's copies at
 * rest (`host`), plus the fast tier on the CPU backend; device memory: the fast tier on a GPU
 * (0 without a manager). */
static Diffsynth__V1__TierBytes **tiers_msg(arena *a, const ds_daemon *d, uint64_t disk,
                                            uint64_t fast, uint64_t host, size_t *count)
{
    /* Room for a fourth: a model's offload tier (offload_tier_msg). */
    Diffsynth__V1__TierBytes **tiers = arena_array(a, 4, sizeof *tiers);
    *count = 0;
    if (!tiers)
        return NULL;
    int on_host = !d->backend || d->backend == d->host_backend;
    tiers[0] = tier_msg(a, "disk", disk);
    tiers[1] = tier_msg(a, "host", (on_host ? fast : 0) + host);
    tiers[2] = tier_msg(a, "device", on_host ? 0 : fast);
    *count = 3;
    return tiers;
}

/* A managed model's offload tier, "offload cpu f8_e4m3" (where and in which dtype the units
 * rest), with the units' bytes there; absent until a step has registered them, since the
 * config itself is in LoadedModel.vram_config_json. */
static void offload_tier_msg(arena *a, const ds_loaded_model *model, uint64_t slow,
                             Diffsynth__V1__TierBytes **tiers, size_t *count)
{
    const ds_vram_config *c = &model->vram_config;
    if (!tiers || !c->managed || slow == 0)
        return;
    char name[96];
    snprintf(name, sizeof name, "offload %s %s", ds_vram_device_name(c->offload.device),
             c->offload.disk_dtype ? "disk" : ds_dtype_name(c->offload.dtype));
    char *copy = arena_str(a, name);
    if (copy && (tiers[*count] = tier_msg(a, copy, slow)))
        (*count)++;
}

static Diffsynth__V1__LoadedModel *loaded_model_msg(arena *a, const ds_daemon *d,
                                                    const ds_pool_model *e, int reused)
{
    const ds_loaded_model *model = e->model;
    Diffsynth__V1__LoadedModel *m = arena_msg(a, &diffsynth__v1__loaded_model__descriptor);
    if (!m)
        return NULL;
    m->model_id = arena_str(a, e->id);
    COPY_MODEL_STRINGS(a, m, model);
    size_t nfiles = model->files ? model->files->count : 0;
    m->paths = arena_array(a, nfiles, sizeof *m->paths);
    if (m->paths) {
        for (size_t i = 0; i < nfiles; i++)
            m->paths[i] = arena_str(a, model->files->files[i].path);
        m->n_paths = nfiles;
    }
    m->model_hash = arena_str(a, model->model_hash);
    m->parameter_count = model->parameter_count;
    m->tensor_count = model->tensor_count > UINT32_MAX ? UINT32_MAX : (uint32_t)model->tensor_count;
    ds_vram_model_stats vs = {0};
    if (d->vram || d->convert)
        ds_vram_owner_stats(d->vram ? d->vram : d->convert, model, &vs);
    m->tiers = tiers_msg(a, d, ds_pool_model_disk_bytes(e), vs.fast_bytes, vs.host_bytes,
                         &m->n_tiers);
    offload_tier_msg(a, model, vs.slow_bytes_total, m->tiers, &m->n_tiers);
    m->clients = arena_array(a, e->client_count, sizeof *m->clients);
    if (m->clients) {
        for (size_t i = 0; i < e->client_count; i++)
            m->clients[i] = arena_str(a, e->clients[i]);
        m->n_clients = e->client_count;
    }
    m->reused = reused;
    m->loaded_at_unix_ms = e->loaded_at_unix_ms;
    const char *stale = ds_pool_stale_reason(e);
    if (stale)
        m->stale = arena_str(a, stale);
    if (model->vram_config.managed) {
        char json[512];
        ds_error err = {0};
        /* A config the Load parsed is always filled in and fits 512 bytes; should that ever
         * break, the listing still answers, without the field, and the log says why. */
        if (ds_vram_config_to_json(&model->vram_config, json, sizeof json, &err) == DS_OK)
            m->vram_config_json = arena_str(a, json);
        else
            ds_log_error("model %s: %s", e->id, err.message);
    }
    return m;
}

static char **strings_msg(arena *a, const char *const *items, size_t count, size_t *n_out)
{
    char **out = arena_array(a, count, sizeof *out);
    *n_out = 0;
    if (!out)
        return NULL;
    for (size_t i = 0; i < count; i++)
        out[i] = arena_str(a, items[i]);
    *n_out = count;
    return out;
}

/* "1.1 B", "482", "3.5 M": parameter counts as a person reads them. */
static void format_count(uint64_t n, char *buf, size_t size)
{
    if (n >= 1000000000ull)
        snprintf(buf, size, "%.1f B", (double)n / 1e9);
    else if (n >= 1000000ull)
        snprintf(buf, size, "%.1f M", (double)n / 1e6);
    else if (n >= 1000ull)
        snprintf(buf, size, "%.1f K", (double)n / 1e3);
    else
        snprintf(buf, size, "%llu", (unsigned long long)n);
}

/* --- validation --------------------------------------------------------------------------- */

static const char *body_name(Diffsynth__V1__Envelope__BodyCase body)
{
    switch (body) {
    case DIFFSYNTH__V1__ENVELOPE__BODY_ERROR: return "error";
    case DIFFSYNTH__V1__ENVELOPE__BODY_EVENT: return "event";
    case DIFFSYNTH__V1__ENVELOPE__BODY_IDENTIFY: return "identify";
    case DIFFSYNTH__V1__ENVELOPE__BODY_IDENTIFY_RESULT: return "identify_result";
    case DIFFSYNTH__V1__ENVELOPE__BODY_LOAD: return "load";
    case DIFFSYNTH__V1__ENVELOPE__BODY_LOAD_RESULT: return "load_result";
    case DIFFSYNTH__V1__ENVELOPE__BODY_UNLOAD: return "unload";
    case DIFFSYNTH__V1__ENVELOPE__BODY_UNLOAD_RESULT: return "unload_result";
    case DIFFSYNTH__V1__ENVELOPE__BODY_LIST_MODELS: return "list_models";
    case DIFFSYNTH__V1__ENVELOPE__BODY_LIST_MODELS_RESULT: return "list_models_result";
    case DIFFSYNTH__V1__ENVELOPE__BODY_STATUS: return "status";
    case DIFFSYNTH__V1__ENVELOPE__BODY_STATUS_RESULT: return "status_result";
    case DIFFSYNTH__V1__ENVELOPE__BODY_CANCEL: return "cancel";
    case DIFFSYNTH__V1__ENVELOPE__BODY_CANCEL_RESULT: return "cancel_result";
    case DIFFSYNTH__V1__ENVELOPE__BODY_LIST_CONFIGS: return "list_configs";
    case DIFFSYNTH__V1__ENVELOPE__BODY_LIST_CONFIGS_RESULT: return "list_configs_result";
    case DIFFSYNTH__V1__ENVELOPE__BODY_LIST_PIPELINES: return "list_pipelines";
    case DIFFSYNTH__V1__ENVELOPE__BODY_LIST_PIPELINES_RESULT: return "list_pipelines_result";
    case DIFFSYNTH__V1__ENVELOPE__BODY_RUN_STEP: return "run_step";
    case DIFFSYNTH__V1__ENVELOPE__BODY_RUN_STEP_RESULT: return "run_step_result";
    case DIFFSYNTH__V1__ENVELOPE__BODY_RUN_PIPELINE: return "run_pipeline";
    case DIFFSYNTH__V1__ENVELOPE__BODY_RUN_PIPELINE_RESULT: return "run_pipeline_result";
    default: return NULL;
    }
}

static int check_paths(const char *what, char **paths, size_t count, ds_error *err)
{
    if (count == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s.paths is empty: name at least one file",
                            what);
    if (count > DS_MAX_PATHS_PER_REQUEST)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s.paths has %zu entries, at most %d",
                            what, count, DS_MAX_PATHS_PER_REQUEST);
    for (size_t i = 0; i < count; i++) {
        if (!paths[i][0])
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s.paths[%zu] is empty", what, i);
        if (paths[i][0] != '/')
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s.paths[%zu] \"%.512s\" is not absolute (the daemon does not "
                                "know the client's working directory)",
                                what, i, paths[i]);
    }
    return DS_OK;
}

static int check_client_name(const char *what, const char *name, ds_error *err)
{
    size_t len = strlen(name);
    if (len > DS_MAX_CLIENT_NAME)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s.client_name has %zu bytes, at most %d",
                            what, len, DS_MAX_CLIENT_NAME);
    /* Names are logged and listed: no control characters. */
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7F)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s.client_name has a control character at byte %zu", what, i);
    return DS_OK;
}

int ds_dispatch_validate(const Diffsynth__V1__Envelope *env, ds_error *err)
{
    const char *name = body_name(env->body_case);
    if (env->body_case == DIFFSYNTH__V1__ENVELOPE__BODY__NOT_SET || !name)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "envelope of request %llu has no request body",
                            (unsigned long long)env->request_id);
    switch (env->body_case) {
    case DIFFSYNTH__V1__ENVELOPE__BODY_IDENTIFY:
    case DIFFSYNTH__V1__ENVELOPE__BODY_LOAD:
    case DIFFSYNTH__V1__ENVELOPE__BODY_UNLOAD:
    case DIFFSYNTH__V1__ENVELOPE__BODY_LIST_MODELS:
    case DIFFSYNTH__V1__ENVELOPE__BODY_STATUS:
    case DIFFSYNTH__V1__ENVELOPE__BODY_CANCEL:
    case DIFFSYNTH__V1__ENVELOPE__BODY_LIST_CONFIGS:
    case DIFFSYNTH__V1__ENVELOPE__BODY_LIST_PIPELINES:
    case DIFFSYNTH__V1__ENVELOPE__BODY_RUN_STEP:
    case DIFFSYNTH__V1__ENVELOPE__BODY_RUN_PIPELINE:
        break;
    default:
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "envelope body \"%s\" is not a request (the daemon sends those)", name);
    }
    if (env->request_id == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "request_id 0 is reserved for errors about undecodable frames: "
                            "give every request a non-zero id");
    int rc = ds_message_check_strings(&env->base, err);
    if (rc != DS_OK)
        return rc;

    switch (env->body_case) {
    case DIFFSYNTH__V1__ENVELOPE__BODY_IDENTIFY:
        return check_paths("identify", env->identify->paths, env->identify->n_paths, err);
    case DIFFSYNTH__V1__ENVELOPE__BODY_LOAD:
        rc = check_paths("load", env->load->paths, env->load->n_paths, err);
        return rc != DS_OK ? rc : check_client_name("load", env->load->client_name, err);
    case DIFFSYNTH__V1__ENVELOPE__BODY_UNLOAD:
        rc = ds_pool_check_id("unload.model_id", env->unload->model_id, err);
        return rc != DS_OK ? rc : check_client_name("unload", env->unload->client_name, err);
    case DIFFSYNTH__V1__ENVELOPE__BODY_CANCEL:
        if (env->cancel->target_request_id == 0)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "cancel.target_request_id is 0; no request has that id");
        return DS_OK;
    case DIFFSYNTH__V1__ENVELOPE__BODY_RUN_STEP:
        return ds_run_step_validate(env->run_step, err);
    case DIFFSYNTH__V1__ENVELOPE__BODY_RUN_PIPELINE:
        return ds_run_pipeline_validate(env->run_pipeline, err);
    default:
        return DS_OK;
    }
}

/* --- Identify ------------------------------------------------------------------------------ */

/* Identification of a fingerprinted file set seen before: the model hash from the cache, the
 * configs matched now (the table can grow). NOT_FOUND = not cached; other codes are the errors
 * reading headers, which are the errors a full identify would report too. */
static int identify_from_cache(ds_daemon *d, const ds_fingerprint *fingerprint,
                               ds_identification *out, ds_error *err)
{
    const ds_identify_cache_entry *hit = ds_identify_cache_find(&d->identify_cache, fingerprint);
    if (!hit)
        return DS_ERR_NOT_FOUND;
    memcpy(out->model_hash, hit->model_hash, DS_MODEL_HASH_HEX);
    out->tensor_count = hit->tensor_count;
    size_t n = ds_config_table_match(d->configs, out->model_hash, NULL, 0);
    if (n == 0)
        return DS_OK;
    out->configs = malloc(n * sizeof *out->configs);
    if (!out->configs)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    out->config_count = ds_config_table_match(d->configs, out->model_hash, out->configs, n);
    return DS_OK;
}

static void handle_identify(ds_daemon *d, ds_conn *conn, const Diffsynth__V1__Envelope *env)
{
    const Diffsynth__V1__IdentifyRequest *req = env->identify;
    ds_error err;
    ds_error_clear(&err);
    ds_opened_paths paths = {0};
    ds_model_files *files = NULL;
    ds_identification ident = {0};
    ds_config_suggestion suggestions[MAX_SUGGESTIONS];
    size_t suggestion_count = 0;
    arena a = {0};

    ds_fingerprint fingerprint;
    int have_fingerprint = 0, cache_hit = 0;
    int rc = ds_model_roots_open_all(&d->roots, req->paths, req->n_paths, &paths, &err);
    if (rc == DS_OK) {
        /* A set that cannot be fingerprinted (torch files, unreadable headers) takes the full
         * path, which reports any error precisely. */
        ds_error fingerprint_err;
        have_fingerprint = ds_fingerprint_files_fds(paths.fds, (const char *const *)paths.names,
                                                    paths.count, &fingerprint,
                                                    &fingerprint_err) == DS_OK;
        if (have_fingerprint) {
            rc = identify_from_cache(d, &fingerprint, &ident, &err);
            cache_hit = rc == DS_OK;
            if (rc == DS_ERR_NOT_FOUND)
                rc = DS_OK;
        }
    }
    if (rc == DS_OK && (!cache_hit || ident.config_count == 0)) {
        /* A miss (or a hit without a match, which needs the files for suggestions). */
        ds_identification_free(&ident);
        rc = ds_model_files_open_fds(paths.fds, (const char *const *)paths.names, paths.count,
                                     &files, &err);
        if (rc == DS_OK)
            rc = ds_identify_files(d->configs, files, &ident, &err);
        if (rc == DS_OK && have_fingerprint)
            ds_identify_cache_put(&d->identify_cache, &fingerprint, ident.model_hash,
                                  ident.tensor_count);
    }
    if (rc == DS_OK && ident.config_count == 0)
        rc = ds_suggest_configs(d->configs, files, suggestions, MAX_SUGGESTIONS, &suggestion_count,
                                &err);
    if (rc != DS_OK) {
        ds_reply_error(d, conn, env->request_id, rc, err.message);
        goto done;
    }

    Diffsynth__V1__IdentifyResponse res = DIFFSYNTH__V1__IDENTIFY_RESPONSE__INIT;
    res.model_hash = arena_str(&a, ident.model_hash);
    res.files = strings_msg(&a, (const char *const *)paths.names, paths.count, &res.n_files);
    res.configs = arena_array(&a, ident.config_count, sizeof *res.configs);
    if (res.configs) {
        for (size_t i = 0; i < ident.config_count; i++)
            res.configs[i] = config_msg(&a, ident.configs[i]);
        res.n_configs = ident.config_count;
    }
    res.tensor_count = ident.tensor_count > UINT32_MAX ? UINT32_MAX : (uint32_t)ident.tensor_count;
    res.closest = arena_array(&a, suggestion_count, sizeof *res.closest);
    if (res.closest) {
        for (size_t i = 0; i < suggestion_count; i++) {
            Diffsynth__V1__ConfigSuggestion *s =
                arena_msg(&a, &diffsynth__v1__config_suggestion__descriptor);
            if (!s)
                break;
            s->config = config_msg(&a, suggestions[i].config);
            s->shared_names = (uint32_t)suggestions[i].shared_names;
            s->config_names = (uint32_t)suggestions[i].config_names;
            res.closest[i] = s;
        }
        res.n_closest = suggestion_count;
    }
    reply(d, conn, &a, env->request_id, DIFFSYNTH__V1__ENVELOPE__BODY_IDENTIFY_RESULT, &res);

done:
    arena_free(&a);
    ds_identification_free(&ident);
    ds_model_files_close(files);
    ds_opened_paths_free(&paths);
}

/* --- Load (a job) -------------------------------------------------------------------------- */

typedef struct load_job {
    ds_job job;
    ds_daemon *daemon;
    ds_conn *conn;
    char **given;                   /* paths as the client sent them, for upstream's message */
    size_t given_count;
    ds_opened_paths paths;
    char *client;
    uid_t uid;                      /* the peer's, who owns the references the load takes */
    ds_vram_config vram_config; /* the request's, when managed; else all zero (none) */
    /* Results, filled by the worker. */
    char model_hash[DS_MODEL_HASH_HEX];
    ds_loaded_model **models;
    size_t model_count;
    const ds_model_config **skipped;
    size_t skipped_count;
} load_job;

static void load_job_free(load_job *lj)
{
    for (size_t i = 0; i < lj->model_count; i++)
        ds_loaded_model_free(lj->models[i]);
    free(lj->models);
    free(lj->skipped);
    for (size_t i = 0; i < lj->given_count; i++)
        free(lj->given[i]);
    free(lj->given);
    ds_opened_paths_free(&lj->paths);
    free(lj->client);
    free(lj);
}

/* Upstream's sentence for files no config matches (model_loader.py). */
static int cannot_detect(load_job *lj, ds_error *err)
{
    char *label = ds_python_str_paths((const char *const *)lj->given, lj->given_count);
    ds_error_set(err, DS_ERR_NOT_FOUND, "Cannot detect the model type. File: %s. Model hash: %s",
                 label ? label : "(out of memory)", lj->model_hash);
    free(label);
    return DS_ERR_NOT_FOUND;
}

static int none_implemented(load_job *lj, ds_error *err)
{
    char list[2048];
    size_t used = 0;
    list[0] = '\0';
    for (size_t i = 0; i < lj->skipped_count && used < sizeof list; i++) {
        const ds_model_config *c = lj->skipped[i];
        int n = snprintf(list + used, sizeof list - used, "%s%s (%s%s%s)", i ? ", " : "",
                         c->model_name, c->model_class,
                         c->state_dict_converter ? " with converter " : "",
                         c->state_dict_converter ? c->state_dict_converter : "");
        if (n < 0)
            break;
        used += (size_t)n;
    }
    return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                        "model hash %s matches %zu config(s) but this build implements none of "
                        "them: %s",
                        lj->model_hash, lj->skipped_count, list);
}

static int load_cancelled(void *user) { return ds_job_cancelled(user); }

static void load_report(void *user, const char *phase, uint64_t done, uint64_t total,
                        const char *message)
{
    ds_job_report(user, phase, done, total, message);
}

static int load_run(ds_job *job)
{
    load_job *lj = (load_job *)job;
    ds_error *err = &job->error;
    ds_auto_load result;
    ds_auto_load_hooks hooks = {.cancelled = load_cancelled, .progress = load_report, .user = job};
    int rc = ds_auto_load_model(lj->daemon->configs, lj->paths.fds,
                                (const char *const *)lj->paths.names,
                                lj->paths.count, NULL, &hooks, &result, err);
    memcpy(lj->model_hash, result.model_hash, sizeof lj->model_hash);
    if (rc != DS_OK) {
        if (result.failed)
            ds_error_prefix(err, "loading %s (%s): ", result.failed->model_name,
                            result.failed->model_class);
        goto done;
    }
    if (result.matched_count == 0) {
        rc = cannot_detect(lj, err);
        goto done;
    }
    /* The models and the skipped configs move to the job. */
    lj->skipped = result.skipped;
    lj->skipped_count = result.skipped_count;
    lj->models = result.models;
    lj->model_count = result.model_count;
    result.skipped = NULL;
    result.models = NULL;
    result.skipped_count = result.model_count = 0;
    if (lj->model_count == 0) {
        rc = none_implemented(lj, err);
        goto done;
    }
    for (size_t i = 0; i < lj->model_count; i++)
        lj->models[i]->vram_config = lj->vram_config;

done:
    ds_auto_load_free(&result);
    return rc;
}

static void load_progress(ds_job *job, const ds_job_progress *p)
{
    ds_reply_progress(((load_job *)job)->conn, job->request_id, p);
}

static void log_loaded(const ds_pool_model *e, int reused, const char *client)
{
    const ds_loaded_model *m = e->model;
    char params[32];
    format_count(m->parameter_count, params, sizeof params);
    char from[1024];
    size_t used = 0;
    from[0] = '\0';
    for (size_t i = 0; m->files && i < m->files->count && used < sizeof from; i++) {
        int n = snprintf(from + used, sizeof from - used, "%s%s", i ? ", " : "",
                         m->files->files[i].path);
        if (n < 0)
            break;
        used += (size_t)n;
    }
    ds_log_info("%s %s %s from %s (%zu tensors, %s params) for %s", reused ? "reused" : "loaded",
                e->id, m->model_name, from, m->tensor_count, params, client);
}

/* Runs on the loop thread: the only place a load touches the pool. */
static void load_complete(ds_job *job)
{
    load_job *lj = (load_job *)job;
    ds_daemon *d = lj->daemon;
    ds_conn *conn = lj->conn;
    arena a = {0};

    if (!ds_conn_is_open(conn)) {
        ds_log_debug("request %llu finished (%s) after its client left; result dropped",
                     (unsigned long long)job->request_id, ds_status_name(job->status));
        goto done;
    }
    if (job->status != DS_OK) {
        if (job->status != DS_ERR_CANCELLED)
            ds_log_info("load for %s failed: %s", lj->client, job->error.message);
        ds_reply_error(d, conn, job->request_id, job->status, job->error.message);
        goto done;
    }

    Diffsynth__V1__LoadResponse res = DIFFSYNTH__V1__LOAD_RESPONSE__INIT;
    res.model_hash = arena_str(&a, lj->model_hash);
    res.files = strings_msg(&a, (const char *const *)lj->paths.names, lj->paths.count, &res.n_files);
    res.models = arena_array(&a, lj->model_count, sizeof *res.models);
    ds_pool_model **inserted = arena_array(&a, lj->model_count, sizeof *inserted);
    size_t inserted_count = 0;
    ds_error err;
    if (a.oom) {
        ds_reply_error(d, conn, job->request_id, DS_ERR_RESOURCE_EXHAUSTED,
                                "out of memory adding the models to the pool");
        goto done;
    }
    for (size_t i = 0; i < lj->model_count; i++) {
        int reused = 0;
        ds_loaded_model *model = lj->models[i];
        lj->models[i] = NULL;
        int rc = ds_pool_insert(d->pool, model, lj->uid, lj->client, ds_wall_ms(), &inserted[i],
                                &reused, &err);
        if (rc != DS_OK) {
            /* Undo this request's references so the pool is as it was. */
            for (size_t k = 0; k < inserted_count; k++) {
                ds_pool_unref_result ignored;
                ds_error unref_err;
                ds_pool_unref(d->pool, inserted[k]->id, lj->uid, 0, lj->client, 0, &ignored,
                              &unref_err);
            }
            ds_reply_error(d, conn, job->request_id, rc, err.message);
            goto done;
        }
        inserted_count++;
        log_loaded(inserted[i], reused, lj->client);
        res.models[i] = loaded_model_msg(&a, d, inserted[i], reused);
    }
    res.n_models = lj->model_count;
    res.skipped = arena_array(&a, lj->skipped_count, sizeof *res.skipped);
    if (res.skipped) {
        for (size_t i = 0; i < lj->skipped_count; i++)
            res.skipped[i] = config_msg(&a, lj->skipped[i]);
        res.n_skipped = lj->skipped_count;
    }
    reply(d, conn, &a, job->request_id, DIFFSYNTH__V1__ENVELOPE__BODY_LOAD_RESULT, &res);

done:
    arena_free(&a);
    ds_conn_end_job(conn, job->request_id);
    ds_conn_unref(conn);
    load_job_free(lj);
}

static char *default_client(ds_conn *conn, const char *given)
{
    if (given && given[0])
        return strdup(given);
    char buf[32];
    snprintf(buf, sizeof buf, "uid:%u", (unsigned)ds_conn_uid(conn));
    return strdup(buf);
}

/* LoadRequest.torch_dtype: the computation dtype a vram_config without one gets. */
static int parse_torch_dtype(const char *s, ds_dtype *out, ds_error *err)
{
    if (!s || !s[0]) {
        *out = DS_BF16;
        return DS_OK;
    }
    const char *name = strncmp(s, "torch.", 6) == 0 ? s + 6 : s;
    if (strcmp(name, "bfloat16") == 0 || strcmp(name, "bf16") == 0)
        *out = DS_BF16;
    else if (strcmp(name, "float32") == 0 || strcmp(name, "fp32") == 0)
        *out = DS_F32;
    else if (strcmp(name, "float16") == 0 || strcmp(name, "fp16") == 0)
        *out = DS_F16;
    else
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "load.torch_dtype '%s' is not one of bfloat16, float32, float16", s);
    return DS_OK;
}

/* The request's vram_config, parsed with upstream's fill-in. Only a managed config (both
 * offload fields given) changes how the model runs, so an unmanaged one is kept as none: the
 * pool then reuses the same entry for it as for a Load without one. A managed config needs the
 * daemon's VRAM manager (the units it describes live there). */
static int load_vram_config(const ds_daemon *d, const Diffsynth__V1__LoadRequest *req,
                            ds_vram_config *out, ds_error *err)
{
    memset(out, 0, sizeof *out);
    ds_dtype comp = DS_BF16;
    int rc = parse_torch_dtype(req->torch_dtype, &comp, err);
    if (rc != DS_OK)
        return rc;
    const char *json = req->vram_config_json && req->vram_config_json[0] ? req->vram_config_json
                                                                         : NULL;
    int on_host = !d->backend || d->backend == d->host_backend;
    ds_vram_config cfg;
    rc = ds_vram_config_parse(json, comp, on_host ? DS_VRAM_DEVICE_CPU : DS_VRAM_DEVICE_CUDA, &cfg,
                              err);
    if (rc != DS_OK)
        return ds_error_prefix(err, "load.vram_config_json: ");
    if (!cfg.managed)
        return DS_OK;
    if (!d->vram)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "load.vram_config_json: offload_dtype and offload_device ask for VRAM "
                            "management, but this daemon runs without a VRAM manager (start "
                            "diffsynthd with --vram-limit GIB, or --vram-limit none)");
    rc = ds_vram_config_check_chain(&cfg, err);
    if (rc != DS_OK)
        return ds_error_prefix(err, "load.vram_config_json: ");
    *out = cfg;
    return DS_OK;
}

static void handle_load(ds_daemon *d, ds_conn *conn, const Diffsynth__V1__Envelope *env)
{
    const Diffsynth__V1__LoadRequest *req = env->load;
    load_job *lj = ds_request_job_new(d, conn, env->request_id, sizeof *lj, "the load");
    if (!lj)
        return;
    ds_error err;
    ds_error_clear(&err);
    int rc = load_vram_config(d, req, &lj->vram_config, &err);
    if (rc != DS_OK) {
        ds_reply_error(d, conn, env->request_id, rc, err.message);
        load_job_free(lj);
        return;
    }
    rc = ds_model_roots_open_all(&d->roots, req->paths, req->n_paths, &lj->paths, &err);
    if (rc != DS_OK) {
        ds_reply_error(d, conn, env->request_id, rc, err.message);
        load_job_free(lj);
        return;
    }
    lj->given = calloc(req->n_paths, sizeof *lj->given);
    lj->client = default_client(conn, req->client_name);
    int oom = !lj->given || !lj->client;
    for (size_t i = 0; !oom && i < req->n_paths; i++) {
        oom = !(lj->given[i] = strdup(req->paths[i]));
        lj->given_count = i + 1;
    }
    if (oom) {
        ds_reply_error(d, conn, env->request_id, DS_ERR_RESOURCE_EXHAUSTED,
                                "out of memory queueing the load");
        load_job_free(lj);
        return;
    }
    rc = ds_scheduler_admit(d->scheduler, (unsigned)ds_conn_uid(conn), &err);
    if (rc == DS_OK)
        rc = ds_conn_begin_job(conn, env, &err);
    if (rc != DS_OK) {
        ds_reply_error(d, conn, env->request_id, rc, err.message);
        load_job_free(lj);
        return;
    }
    lj->daemon = d;
    lj->conn = conn;
    lj->uid = ds_conn_uid(conn);
    ds_request_submit(d, conn, env->request_id, &lj->job, DS_JOB_LOAD, load_run, load_progress,
                      load_complete);
}

/* --- cheap requests ------------------------------------------------------------------------ */

static void handle_unload(ds_daemon *d, ds_conn *conn, const Diffsynth__V1__Envelope *env)
{
    const Diffsynth__V1__UnloadRequest *req = env->unload;
    char *client = default_client(conn, req->client_name);
    if (!client) {
        ds_reply_error(d, conn, env->request_id, DS_ERR_RESOURCE_EXHAUSTED,
                                "out of memory");
        return;
    }
    char name[256] = "";
    ds_pool_model *entry = ds_pool_find(d->pool, req->model_id);
    if (entry)
        snprintf(name, sizeof name, "%s", entry->model->model_name);
    ds_pool_unref_result result;
    ds_error err;
    /* The daemon's own uid administers the pool; every other uid owns only what it took. */
    uid_t uid = ds_conn_uid(conn);
    int rc = ds_pool_unref(d->pool, req->model_id, uid, uid == geteuid(), client,
                           req->all_references, &result, &err);
    if (rc != DS_OK) {
        ds_reply_error(d, conn, env->request_id, rc, err.message);
        free(client);
        return;
    }
    ds_log_info("unloaded %s %s for %s of uid %u%s (%zu references left%s)", req->model_id, name,
                client, (unsigned)uid, req->all_references ? ", all references" : "",
                result.remaining,
                result.freed     ? ", freed"
                : result.removed ? ", freed when its running job ends"
                                 : "");
    Diffsynth__V1__UnloadResponse res = DIFFSYNTH__V1__UNLOAD_RESPONSE__INIT;
    res.model_id = req->model_id;
    res.remaining_references = (uint32_t)result.remaining;
    res.freed = result.removed;
    arena a = {0};
    reply(d, conn, &a, env->request_id, DIFFSYNTH__V1__ENVELOPE__BODY_UNLOAD_RESULT, &res);
    free(client);
}

static void handle_list_models(ds_daemon *d, ds_conn *conn, const Diffsynth__V1__Envelope *env)
{
    arena a = {0};
    size_t n = ds_pool_count(d->pool);
    Diffsynth__V1__ListModelsResponse res = DIFFSYNTH__V1__LIST_MODELS_RESPONSE__INIT;
    res.models = arena_array(&a, n, sizeof *res.models);
    if (res.models) {
        for (size_t i = 0; i < n; i++)
            res.models[i] = loaded_model_msg(&a, d, ds_pool_at(d->pool, i), 0);
        res.n_models = n;
    }
    reply(d, conn, &a, env->request_id, DIFFSYNTH__V1__ENVELOPE__BODY_LIST_MODELS_RESULT, &res);
    arena_free(&a);
}

static void handle_status(ds_daemon *d, ds_conn *conn, const Diffsynth__V1__Envelope *env)
{
    arena a = {0};
    Diffsynth__V1__StatusResponse res = DIFFSYNTH__V1__STATUS_RESPONSE__INIT;
    res.version = DS_VERSION;
    res.backend = d->backend ? (char *)d->backend->name : "cpu";
    res.uptime_ms = ds_monotonic_ms() - d->started_monotonic_ms;
    res.clients = d->server ? ds_server_connection_count(d->server) : 0;
    res.models = (uint32_t)ds_pool_count(d->pool);
    Diffsynth__V1__VramStatus vram = DIFFSYNTH__V1__VRAM_STATUS__INIT;
    ds_vram_stats vs = {0};
    if (d->vram) {
        ds_vram_stats_get(d->vram, &vs);
        vram.limited = d->vram_limited;
        vram.budget_bytes = d->vram_limited ? vs.budget_bytes : 0;
        vram.resident_bytes = vs.resident_bytes;
        vram.activation_bytes = vs.activation_bytes;
        vram.peak_bytes = vs.peak_bytes;
        vram.bytes_moved = vs.bytes_moved;
        vram.loads = vs.loads;
        vram.prefetches = vs.prefetches;
        vram.hits = vs.hits;
        vram.evictions = vs.evictions;
        vram.copy_seconds = vs.copy_seconds;
        vram.wait_seconds = vs.wait_seconds;
        vram.compute_seconds = vs.held_seconds;
        vram.host_limited = vs.host_budget_bytes != DS_VRAM_UNLIMITED;
        vram.host_budget_bytes = vram.host_limited ? vs.host_budget_bytes : 0;
        vram.host_bytes = vs.host_bytes;
        vram.host_peak_bytes = vs.host_peak_bytes;
        res.vram = &vram;
    }
    /* Weights kept converted on the CPU (no VRAM manager) are host memory too. */
    if (d->convert)
        ds_vram_stats_get(d->convert, &vs);
    res.memory = tiers_msg(&a, d, ds_pool_disk_bytes(d->pool), vs.resident_bytes, vs.host_bytes,
                           &res.n_memory);
    res.jobs_queued = (uint32_t)ds_scheduler_queued(d->scheduler);
    res.jobs_running = (uint32_t)ds_scheduler_running(d->scheduler);
    res.pid = (uint32_t)getpid();
    res.socket_path = arena_str(&a, d->socket_path);
    res.model_roots = strings_msg(&a, (const char *const *)d->roots.dirs, d->roots.count,
                                  &res.n_model_roots);
    res.config_count = (uint32_t)ds_config_table_count(d->configs);
    res.max_frame_bytes = d->max_frame_bytes;
    /* This request counts as served once answered. */
    res.requests_served = d->requests_served + 1;
    reply(d, conn, &a, env->request_id, DIFFSYNTH__V1__ENVELOPE__BODY_STATUS_RESULT, &res);
    arena_free(&a);
}

static void handle_cancel(ds_daemon *d, ds_conn *conn, const Diffsynth__V1__Envelope *env)
{
    uint64_t target = env->cancel->target_request_id;
    int found = ds_scheduler_cancel(d->scheduler, conn, target);
    ds_log_debug("%s: cancel of request %llu: %s", ds_conn_describe(conn),
                 (unsigned long long)target, found ? "found" : "not queued or running");
    Diffsynth__V1__CancelResponse res = DIFFSYNTH__V1__CANCEL_RESPONSE__INIT;
    res.found = found;
    arena a = {0};
    reply(d, conn, &a, env->request_id, DIFFSYNTH__V1__ENVELOPE__BODY_CANCEL_RESULT, &res);
}

static Diffsynth__V1__ConfigEntry *config_entry_msg(arena *a, const ds_model_config *c, int verify)
{
    Diffsynth__V1__ConfigEntry *e = arena_msg(a, &diffsynth__v1__config_entry__descriptor);
    if (!e)
        return NULL;
    e->config = config_msg(a, c);
    if (!verify)
        return e;
    char computed[DS_MODEL_HASH_HEX];
    char detail[DS_ERROR_MESSAGE_MAX];
    ds_error err;
    ds_error_clear(&err);
    ds_verify_result v = ds_config_verify(c, computed, &err);
    detail[0] = '\0';
    switch (v) {
    case DS_VERIFY_MATCH:
        e->verify = DIFFSYNTH__V1__VERIFY_RESULT__VERIFY_MATCH;
        break;
    case DS_VERIFY_MISMATCH:
        e->verify = DIFFSYNTH__V1__VERIFY_RESULT__VERIFY_MISMATCH;
        snprintf(detail, sizeof detail, "the parameter tree of %s hashes to %s, not %s",
                 c->model_class, computed, c->model_hash);
        break;
    case DS_VERIFY_NOT_APPLICABLE:
        e->verify = DIFFSYNTH__V1__VERIFY_RESULT__VERIFY_NOT_APPLICABLE;
        snprintf(detail, sizeof detail, "%s",
                 !ds_model_class_find(c->model_class)
                     ? "the class is not implemented in this build"
                     : "the config has a state dict converter: the file's names are not the "
                       "class's");
        break;
    case DS_VERIFY_ERROR:
        e->verify = DIFFSYNTH__V1__VERIFY_RESULT__VERIFY_ERROR;
        snprintf(detail, sizeof detail, "%s", err.message);
        break;
    }
    e->computed_hash = arena_str(a, computed);
    e->detail = arena_str(a, detail);
    return e;
}

static void handle_list_configs(ds_daemon *d, ds_conn *conn, const Diffsynth__V1__Envelope *env)
{
    arena a = {0};
    int verify = env->list_configs->verify;
    size_t n = ds_config_table_count(d->configs);
    Diffsynth__V1__ListConfigsResponse res = DIFFSYNTH__V1__LIST_CONFIGS_RESPONSE__INIT;
    res.entries = arena_array(&a, n, sizeof *res.entries);
    if (res.entries) {
        for (size_t i = 0; i < n; i++)
            res.entries[i] = config_entry_msg(&a, ds_config_table_at(d->configs, i), verify);
        res.n_entries = n;
    }
    reply(d, conn, &a, env->request_id, DIFFSYNTH__V1__ENVELOPE__BODY_LIST_CONFIGS_RESULT, &res);
    arena_free(&a);
}

void ds_dispatch(ds_daemon *d, ds_conn *conn, const Diffsynth__V1__Envelope *env)
{
    ds_error err;
    ds_error_clear(&err);
    int rc = ds_dispatch_validate(env, &err);
    if (rc != DS_OK) {
        ds_reply_error(d, conn, env->request_id, rc, err.message);
        return;
    }
    ds_log_debug("%s: request %llu %s", ds_conn_describe(conn), (unsigned long long)env->request_id,
                 body_name(env->body_case));
    /* One id, one request: a second one in flight would share its replies and its cancel. */
    if (ds_conn_request_in_flight(conn, env->request_id)) {
        char message[200];
        snprintf(message, sizeof message,
                 "request id %llu is already in flight on this connection; give each request "
                 "its own id (an id is free again once its reply arrived)",
                 (unsigned long long)env->request_id);
        ds_reply_error(d, conn, env->request_id, DS_ERR_ALREADY_EXISTS, message);
        return;
    }
    if (d->shutting_down) {
        ds_reply_error(d, conn, env->request_id, DS_ERR_UNAVAILABLE,
                                "daemon is shutting down");
        return;
    }
    switch (env->body_case) {
    case DIFFSYNTH__V1__ENVELOPE__BODY_IDENTIFY: handle_identify(d, conn, env); break;
    case DIFFSYNTH__V1__ENVELOPE__BODY_LOAD: handle_load(d, conn, env); break;
    case DIFFSYNTH__V1__ENVELOPE__BODY_UNLOAD: handle_unload(d, conn, env); break;
    case DIFFSYNTH__V1__ENVELOPE__BODY_LIST_MODELS: handle_list_models(d, conn, env); break;
    case DIFFSYNTH__V1__ENVELOPE__BODY_STATUS: handle_status(d, conn, env); break;
    case DIFFSYNTH__V1__ENVELOPE__BODY_CANCEL: handle_cancel(d, conn, env); break;
    case DIFFSYNTH__V1__ENVELOPE__BODY_LIST_CONFIGS: handle_list_configs(d, conn, env); break;
    case DIFFSYNTH__V1__ENVELOPE__BODY_LIST_PIPELINES: ds_list_pipelines_handle(d, conn, env); break;
    case DIFFSYNTH__V1__ENVELOPE__BODY_RUN_STEP: ds_run_step_handle(d, conn, env); break;
    case DIFFSYNTH__V1__ENVELOPE__BODY_RUN_PIPELINE: ds_run_pipeline_handle(d, conn, env); break;
    default: break;
    }
}

static void on_request(void *ctx, ds_conn *conn, const Diffsynth__V1__Envelope *env)
{
    ds_dispatch(ctx, conn, env);
}

/* Its queued jobs go now; a running one stops at its next checkpoint. Either way the
 * completion sees the connection closed and drops the result. */
static void on_close_with_jobs(void *ctx, ds_conn *conn)
{
    ds_daemon *d = ctx;
    if (d->scheduler)
        ds_scheduler_cancel_owner(d->scheduler, conn);
}

ds_server_handlers ds_dispatch_server_handlers(ds_daemon *d)
{
    return (ds_server_handlers){.on_request = on_request,
                                .on_close_with_jobs = on_close_with_jobs,
                                .ctx = d};
}
