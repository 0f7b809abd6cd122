/* The CLI's --json output: each response as one JSON object, written with pyjson so that
 * strings from the daemon are escaped exactly as Python would and embedded JSON is re-indented. */
#include "client/cli.h"

#include <string.h>

/* Empty proto strings mean "none". */
static void string_or_null(pyjson_writer *w, const char *s)
{
    if (s && s[0])
        pyjson_string(w, s);
    else
        pyjson_null(w);
}

static void string_list(pyjson_writer *w, char *const *items, pb_size_t count)
{
    pyjson_begin_array(w);
    for (pb_size_t i = 0; i < count; i++)
        pyjson_string(w, cli_str(items[i]));
    pyjson_end_array(w);
}

static void tiers(pyjson_writer *w, const diffsynth_v1_TierBytes *t, pb_size_t count)
{
    pyjson_begin_array(w);
    for (pb_size_t i = 0; i < count; i++) {
        pyjson_begin_object(w);
        pyjson_key(w, "tier");
        pyjson_string(w, cli_str(t[i].tier));
        pyjson_key(w, "bytes");
        pyjson_uint(w, t[i].bytes);
        pyjson_end_object(w);
    }
    pyjson_end_array(w);
}

/* Embedded JSON from the daemon; if it does not parse, its text is kept as a string rather
 * than dropped. */
static void embedded_json(pyjson_writer *w, const char *json)
{
    if (!json || !json[0]) {
        pyjson_null(w);
        return;
    }
    pyjson_buf probe = {0};
    bool valid = pyjson_reformat(&probe, json, strlen(json), PYJSON_COMPACT, 0) == 0;
    pyjson_buf_free(&probe);
    if (valid)
        pyjson_raw(w, json);
    else
        pyjson_string(w, json);
}

static void model_config(pyjson_writer *w, const diffsynth_v1_ModelConfig *c)
{
    pyjson_begin_object(w);
    pyjson_key(w, "model_hash");
    pyjson_string(w, cli_str(c->model_hash));
    pyjson_key(w, "model_name");
    pyjson_string(w, cli_str(c->model_name));
    pyjson_key(w, "model_class");
    pyjson_string(w, cli_str(c->model_class));
    pyjson_key(w, "state_dict_converter");
    string_or_null(w, c->state_dict_converter);
    pyjson_key(w, "extra_kwargs");
    embedded_json(w, c->extra_kwargs_json);
    pyjson_key(w, "implemented");
    pyjson_bool(w, c->implemented);
    pyjson_key(w, "quant_config");
    embedded_json(w, c->quant_config_json);
    pyjson_key(w, "source");
    pyjson_string(w, cli_str(c->source));
    pyjson_end_object(w);
}

static void loaded_model(pyjson_writer *w, const diffsynth_v1_LoadedModel *m)
{
    pyjson_begin_object(w);
    pyjson_key(w, "model_id");
    pyjson_string(w, cli_str(m->model_id));
    pyjson_key(w, "model_name");
    pyjson_string(w, cli_str(m->model_name));
    pyjson_key(w, "model_class");
    pyjson_string(w, cli_str(m->model_class));
    pyjson_key(w, "state_dict_converter");
    string_or_null(w, m->state_dict_converter);
    pyjson_key(w, "extra_kwargs");
    embedded_json(w, m->extra_kwargs_json);
    pyjson_key(w, "paths");
    string_list(w, m->paths, m->paths_count);
    pyjson_key(w, "model_hash");
    pyjson_string(w, cli_str(m->model_hash));
    pyjson_key(w, "parameter_count");
    pyjson_uint(w, m->parameter_count);
    pyjson_key(w, "tensor_count");
    pyjson_uint(w, m->tensor_count);
    pyjson_key(w, "tiers");
    tiers(w, m->tiers, m->tiers_count);
    pyjson_key(w, "clients");
    string_list(w, m->clients, m->clients_count);
    pyjson_key(w, "reused");
    pyjson_bool(w, m->reused);
    pyjson_key(w, "loaded_at_unix_ms");
    pyjson_uint(w, m->loaded_at_unix_ms);
    pyjson_key(w, "vram_config");
    embedded_json(w, m->vram_config_json);
    pyjson_end_object(w);
}

void cli_json_identify(pyjson_writer *w, const diffsynth_v1_IdentifyResponse *r)
{
    pyjson_begin_object(w);
    pyjson_key(w, "model_hash");
    pyjson_string(w, cli_str(r->model_hash));
    pyjson_key(w, "files");
    string_list(w, r->files, r->files_count);
    pyjson_key(w, "configs");
    pyjson_begin_array(w);
    for (pb_size_t i = 0; i < r->configs_count; i++) {
        const diffsynth_v1_ModelConfig *c = &r->configs[i];
        pyjson_begin_object(w);
        pyjson_key(w, "model_name");
        pyjson_string(w, cli_str(c->model_name));
        pyjson_key(w, "model_class");
        pyjson_string(w, cli_str(c->model_class));
        pyjson_key(w, "state_dict_converter");
        string_or_null(w, c->state_dict_converter);
        pyjson_key(w, "extra_kwargs");
        embedded_json(w, c->extra_kwargs_json);
        pyjson_key(w, "implemented");
        pyjson_bool(w, c->implemented);
        pyjson_end_object(w);
    }
    pyjson_end_array(w);
    pyjson_key(w, "tensor_count");
    pyjson_uint(w, r->tensor_count);
    if (r->closest_count > 0) {
        pyjson_key(w, "closest");
        pyjson_begin_array(w);
        for (pb_size_t i = 0; i < r->closest_count; i++) {
            const diffsynth_v1_ConfigSuggestion *s = &r->closest[i];
            pyjson_begin_object(w);
            pyjson_key(w, "model_name");
            pyjson_string(w, cli_str(s->config.model_name));
            pyjson_key(w, "model_class");
            pyjson_string(w, cli_str(s->config.model_class));
            pyjson_key(w, "model_hash");
            pyjson_string(w, cli_str(s->config.model_hash));
            pyjson_key(w, "shared_names");
            pyjson_uint(w, s->shared_names);
            pyjson_key(w, "config_names");
            pyjson_uint(w, s->config_names);
            pyjson_end_object(w);
        }
        pyjson_end_array(w);
    }
    pyjson_end_object(w);
}

void cli_json_load(pyjson_writer *w, const diffsynth_v1_LoadResponse *r)
{
    pyjson_begin_object(w);
    pyjson_key(w, "model_hash");
    pyjson_string(w, cli_str(r->model_hash));
    pyjson_key(w, "files");
    string_list(w, r->files, r->files_count);
    pyjson_key(w, "models");
    pyjson_begin_array(w);
    for (pb_size_t i = 0; i < r->models_count; i++)
        loaded_model(w, &r->models[i]);
    pyjson_end_array(w);
    pyjson_key(w, "skipped");
    pyjson_begin_array(w);
    for (pb_size_t i = 0; i < r->skipped_count; i++)
        model_config(w, &r->skipped[i]);
    pyjson_end_array(w);
    pyjson_end_object(w);
}

void cli_json_unload(pyjson_writer *w, const diffsynth_v1_UnloadResponse *r)
{
    pyjson_begin_object(w);
    pyjson_key(w, "model_id");
    pyjson_string(w, cli_str(r->model_id));
    pyjson_key(w, "remaining_references");
    pyjson_uint(w, r->remaining_references);
    pyjson_key(w, "freed");
    pyjson_bool(w, r->freed);
    pyjson_end_object(w);
}

void cli_json_models(pyjson_writer *w, const diffsynth_v1_ListModelsResponse *r)
{
    pyjson_begin_object(w);
    pyjson_key(w, "models");
    pyjson_begin_array(w);
    for (pb_size_t i = 0; i < r->models_count; i++)
        loaded_model(w, &r->models[i]);
    pyjson_end_array(w);
    pyjson_end_object(w);
}

void cli_json_status(pyjson_writer *w, const diffsynth_v1_StatusResponse *r)
{
    pyjson_begin_object(w);
    pyjson_key(w, "version");
    pyjson_string(w, cli_str(r->version));
    pyjson_key(w, "backend");
    pyjson_string(w, cli_str(r->backend));
    pyjson_key(w, "uptime_ms");
    pyjson_uint(w, r->uptime_ms);
    pyjson_key(w, "clients");
    pyjson_uint(w, r->clients);
    pyjson_key(w, "models");
    pyjson_uint(w, r->models);
    pyjson_key(w, "memory");
    tiers(w, r->memory, r->memory_count);
    pyjson_key(w, "jobs_queued");
    pyjson_uint(w, r->jobs_queued);
    pyjson_key(w, "jobs_running");
    pyjson_uint(w, r->jobs_running);
    pyjson_key(w, "pid");
    pyjson_uint(w, r->pid);
    pyjson_key(w, "socket_path");
    pyjson_string(w, cli_str(r->socket_path));
    pyjson_key(w, "model_roots");
    string_list(w, r->model_roots, r->model_roots_count);
    pyjson_key(w, "config_count");
    pyjson_uint(w, r->config_count);
    pyjson_key(w, "max_frame_bytes");
    pyjson_uint(w, r->max_frame_bytes);
    pyjson_key(w, "requests_served");
    pyjson_uint(w, r->requests_served);
    pyjson_key(w, "vram");
    if (!r->has_vram) {
        pyjson_null(w);
    } else {
        const diffsynth_v1_VramStatus *v = &r->vram;
        pyjson_begin_object(w);
        pyjson_key(w, "limited");
        pyjson_bool(w, v->limited);
        pyjson_key(w, "budget_bytes");
        pyjson_uint(w, v->budget_bytes);
        pyjson_key(w, "resident_bytes");
        pyjson_uint(w, v->resident_bytes);
        pyjson_key(w, "activation_bytes");
        pyjson_uint(w, v->activation_bytes);
        pyjson_key(w, "peak_bytes");
        pyjson_uint(w, v->peak_bytes);
        pyjson_key(w, "bytes_moved");
        pyjson_uint(w, v->bytes_moved);
        pyjson_key(w, "loads");
        pyjson_uint(w, v->loads);
        pyjson_key(w, "prefetches");
        pyjson_uint(w, v->prefetches);
        pyjson_key(w, "hits");
        pyjson_uint(w, v->hits);
        pyjson_key(w, "evictions");
        pyjson_uint(w, v->evictions);
        pyjson_key(w, "copy_seconds");
        pyjson_double(w, v->copy_seconds);
        pyjson_key(w, "wait_seconds");
        pyjson_double(w, v->wait_seconds);
        pyjson_key(w, "compute_seconds");
        pyjson_double(w, v->compute_seconds);
        pyjson_key(w, "host_limited");
        pyjson_bool(w, v->host_limited);
        pyjson_key(w, "host_budget_bytes");
        pyjson_uint(w, v->host_budget_bytes);
        pyjson_key(w, "host_bytes");
        pyjson_uint(w, v->host_bytes);
        pyjson_key(w, "host_peak_bytes");
        pyjson_uint(w, v->host_peak_bytes);
        pyjson_end_object(w);
    }
    pyjson_end_object(w);
}

static const char *verify_name(diffsynth_v1_VerifyResult v)
{
    switch (v) {
    case diffsynth_v1_VerifyResult_VERIFY_NOT_REQUESTED: return "VERIFY_NOT_REQUESTED";
    case diffsynth_v1_VerifyResult_VERIFY_MATCH: return "VERIFY_MATCH";
    case diffsynth_v1_VerifyResult_VERIFY_MISMATCH: return "VERIFY_MISMATCH";
    case diffsynth_v1_VerifyResult_VERIFY_NOT_APPLICABLE: return "VERIFY_NOT_APPLICABLE";
    case diffsynth_v1_VerifyResult_VERIFY_ERROR: return "VERIFY_ERROR";
    }
    return "VERIFY_UNKNOWN";
}

void cli_json_configs(pyjson_writer *w, const diffsynth_v1_ListConfigsResponse *r,
                      const char *name_filter)
{
    pyjson_begin_object(w);
    pyjson_key(w, "entries");
    pyjson_begin_array(w);
    for (pb_size_t i = 0; i < r->entries_count; i++) {
        const diffsynth_v1_ConfigEntry *e = &r->entries[i];
        if (name_filter && !strstr(cli_str(e->config.model_name), name_filter))
            continue;
        pyjson_begin_object(w);
        pyjson_key(w, "config");
        model_config(w, &e->config);
        pyjson_key(w, "verify");
        pyjson_string(w, verify_name(e->verify));
        pyjson_key(w, "computed_hash");
        string_or_null(w, e->computed_hash);
        pyjson_key(w, "detail");
        string_or_null(w, e->detail);
        pyjson_end_object(w);
    }
    pyjson_end_array(w);
    pyjson_end_object(w);
}
