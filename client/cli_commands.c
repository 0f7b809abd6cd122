/* The CLI's commands. Human output of `load` and `identify` mirrors upstream DiffSynth-Studio's
 * ModelPool messages byte for byte (facts §2); everything else is ours. */
#include "client/cli.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Closest configs shown after "Cannot detect the model type". */
#define CLOSEST_SHOWN 5
/* Distinct memory tiers given a column in `models`. */
#define MAX_TIER_COLUMNS 8

/* ---- helpers ---- */

/* LoadedModel.vram_config_json, which the daemon writes with upstream's eight keys, as the
 * `models` column "offload,onload,preparing,computation", each "dtype/device" with short dtype
 * names: "fp8/cpu,bf16/cuda,bf16/cuda,bf16/cuda". Text in another shape is shown as is. */
static void format_vram_config(const char *json, pyjson_buf *out)
{
    static const char *const states[4] = {"offload", "onload", "preparing", "computation"};
    static const char *const long_names[5] = {"float8_e4m3fn", "bfloat16", "float32", "float16",
                                              "disk"};
    static const char *const short_names[5] = {"fp8", "bf16", "fp32", "fp16", "disk"};
    pyjson_buf b = {0};
    for (int i = 0; i < 8; i++) {
        char key[40];
        snprintf(key, sizeof key, "\"%s_%s\": \"", states[i / 2], i % 2 ? "device" : "dtype");
        const char *v = strstr(json, key);
        const char *end = v ? strchr(v += strlen(key), '"') : NULL;
        if (!end || end - v >= 32) {
            pyjson_buf_free(&b);
            pyjson_append_str(out, json);
            return;
        }
        char value[32];
        memcpy(value, v, (size_t)(end - v));
        value[end - v] = '\0';
        const char *shown = value;
        for (int k = 0; i % 2 == 0 && k < 5; k++)
            if (strcmp(value, long_names[k]) == 0)
                shown = short_names[k];
        pyjson_append_str(&b, i == 0 ? "" : i % 2 ? "/" : ",");
        pyjson_append_str(&b, shown);
    }
    pyjson_append_str(out, b.data ? b.data : "");
    if (b.oom)
        out->oom = true;
    pyjson_buf_free(&b);
}

/* Absolute forms of the user's paths (the daemon's cwd is not ours). NULL after reporting. */
static char **absolute_paths(cli_ctx *ctx, char **paths, int n)
{
    if (!ctx->client && !(ctx->client = ds_client_new())) {
        fputs("error: out of memory\n", stderr);
        return NULL;
    }
    char **out = calloc((size_t)n, sizeof *out);
    if (!out) {
        fputs("error: out of memory\n", stderr);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (ds_client_absolute_path(ctx->client, paths[i], &out[i]) != DS_CLIENT_OK) {
            fprintf(stderr, "error: %s\n", ds_client_last_error(ctx->client));
            for (int k = 0; k < i; k++)
                free(out[k]);
            free(out);
            return NULL;
        }
    }
    return out;
}

static void free_paths(char **paths, int n)
{
    if (!paths)
        return;
    for (int i = 0; i < n; i++)
        free(paths[i]);
    free(paths);
}

/* nanopb counts repeated fields in pb_size_t. */
static int check_path_count(const cli_command *cmd, int n)
{
    if (n == 0)
        return cli_usage_error(cmd, "%s: give at least one model file", cmd->name);
    if ((unsigned)n > (pb_size_t)-1)
        return cli_usage_error(cmd, "%s: at most %u files", cmd->name, (unsigned)(pb_size_t)-1);
    return -1;
}

static void print_closest(FILE *out, const diffsynth_v1_IdentifyResponse *r)
{
    if (r->closest_count == 0)
        return;
    fputs("Closest known configs by shared tensor names:\n", out);
    for (pb_size_t i = 0; i < r->closest_count && i < CLOSEST_SHOWN; i++) {
        const diffsynth_v1_ConfigSuggestion *s = &r->closest[i];
        fprintf(out, "  %s (%s) shares %u of %u tensor names\n", cli_str(s->config.model_name),
                cli_str(s->config.model_class), (unsigned)s->shared_names,
                (unsigned)s->config_names);
    }
}

/* Embedded JSON text on one line as Python prints it; the raw text if it does not parse. */
static void print_compact_json(FILE *out, const char *json)
{
    if (!json || !json[0]) {
        fputs("null", out);
        return;
    }
    pyjson_buf b = {0};
    if (pyjson_reformat(&b, json, strlen(json), PYJSON_COMPACT, 0) == 0)
        fputs(b.data, out);
    else
        fputs(json, out);
    pyjson_buf_free(&b);
}

/* ---- identify ---- */

static int run_identify(cli_ctx *ctx, int argc, char **argv)
{
    const cli_command *self = cli_find_command("identify");
    int npos = 0;
    int rc = cli_parse(ctx, self, argc, argv, NULL, 0, &npos);
    if (rc >= 0)
        return rc;
    if ((rc = check_path_count(self, npos)) >= 0)
        return rc;
    char **paths = absolute_paths(ctx, argv + 1, npos);
    if (!paths)
        return CLI_EXIT_DAEMON_ERROR;

    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_identify_tag;
    req.body.identify.paths_count = (pb_size_t)npos;
    req.body.identify.paths = paths;
    int st = cli_call(ctx, &req, &resp);
    if (st != DS_CLIENT_OK) {
        free_paths(paths, npos);
        return cli_report(ctx, st);
    }
    const diffsynth_v1_IdentifyResponse *r = &resp.body.identify_result;
    bool matched = r->configs_count > 0;
    if (ctx->json) {
        pyjson_buf b = {0};
        pyjson_writer w;
        pyjson_writer_init(&w, &b, PYJSON_COMPACT);
        cli_json_identify(&w, r);
        rc = cli_print_doc(&w, &b);
    } else if (!matched) {
        /* Upstream's sentence, formatting the path with str(): a list prints as its repr. */
        pyjson_buf b = {0};
        bool use_files = r->files_count > 0;
        pyjson_py_str_list(&b, (const char *const *)(use_files ? r->files : paths),
                           use_files ? r->files_count : (size_t)npos, true);
        printf("Cannot detect the model type. File: %s. Model hash: %s\n", b.data ? b.data : "",
               cli_str(r->model_hash));
        pyjson_buf_free(&b);
        print_closest(stdout, r);
        rc = CLI_EXIT_OK;
    } else {
        printf("Model hash: %s\n", cli_str(r->model_hash));
        for (pb_size_t i = 0; i < r->files_count; i++)
            printf("%s%s\n", i == 0 ? "Files: " : "       ", cli_str(r->files[i]));
        printf("Tensors: %u\n", (unsigned)r->tensor_count);
        for (pb_size_t i = 0; i < r->configs_count; i++) {
            const diffsynth_v1_ModelConfig *c = &r->configs[i];
            printf("Config %u of %u: %s\n", (unsigned)i + 1, (unsigned)r->configs_count,
                   cli_str(c->model_name));
            printf("  class: %s\n", cli_str(c->model_class));
            printf("  converter: %s\n",
                   c->state_dict_converter && c->state_dict_converter[0] ? c->state_dict_converter
                                                                         : "none");
            fputs("  extra_kwargs: ", stdout);
            print_compact_json(stdout, c->extra_kwargs_json);
            printf("\n  implemented: %s\n", c->implemented ? "yes" : "no");
        }
        rc = CLI_EXIT_OK;
    }
    ds_client_envelope_free(&resp);
    free_paths(paths, npos);
    if (rc == CLI_EXIT_OK && !matched)
        rc = CLI_EXIT_DAEMON_ERROR;
    return rc;
}

/* ---- load ---- */

/* Upstream prints json.dumps(path, indent=4) of what it was given: a one-element list has
 * already been collapsed to its string. */
static int print_loading_banner(char **typed, int n)
{
    pyjson_buf b = {0};
    pyjson_writer w;
    pyjson_writer_init(&w, &b, 4);
    if (n == 1) {
        pyjson_string(&w, typed[0]);
    } else {
        pyjson_begin_array(&w);
        for (int i = 0; i < n; i++)
            pyjson_string(&w, typed[i]);
        pyjson_end_array(&w);
    }
    if (pyjson_writer_finish(&w) != 0) {
        pyjson_buf_free(&b);
        fputs("error: out of memory\n", stderr);
        return -1;
    }
    printf("Loading models from: %s\n", b.data);
    pyjson_buf_free(&b);
    fflush(stdout);
    return 0;
}

static int print_loaded_model(const diffsynth_v1_LoadedModel *m)
{
    pyjson_buf b = {0};
    pyjson_writer w;
    pyjson_writer_init(&w, &b, 4);
    pyjson_begin_object(&w);
    pyjson_key(&w, "model_name");
    pyjson_string(&w, cli_str(m->model_name));
    pyjson_key(&w, "model_class");
    pyjson_string(&w, cli_str(m->model_class));
    pyjson_key(&w, "extra_kwargs");
    pyjson_raw(&w, m->extra_kwargs_json);
    pyjson_end_object(&w);
    if (pyjson_writer_finish(&w) != 0) {
        pyjson_buf_free(&b);
        fprintf(stderr, "error: model %s has malformed extra_kwargs: %s\n", cli_str(m->model_id),
                cli_str(m->extra_kwargs_json));
        return -1;
    }
    printf("Loaded model: %s\n", b.data);
    pyjson_buf_free(&b);

    char params[32];
    cli_format_count(m->parameter_count, params, sizeof params);
    printf("  -> model id %s: %u tensors, %s parameters, mapped from %u file%s%s\n",
           cli_str(m->model_id), (unsigned)m->tensor_count, params, (unsigned)m->paths_count,
           m->paths_count == 1 ? "" : "s", m->reused ? " (reused)" : "");
    return 0;
}

/* After upstream's "Cannot detect the model type" sentence: which configs come closest. */
static void explain_unknown_hash(cli_ctx *ctx, char **paths, int n)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_identify_tag;
    req.body.identify.paths_count = (pb_size_t)n;
    req.body.identify.paths = paths;
    if (cli_call(ctx, &req, &resp) != DS_CLIENT_OK)
        return;
    print_closest(stderr, &resp.body.identify_result);
    ds_client_envelope_free(&resp);
}

static int run_load(cli_ctx *ctx, int argc, char **argv)
{
    const cli_command *self = cli_find_command("load");
    const char *client_name = NULL, *vram_config = NULL, *torch_dtype = NULL;
    const cli_option opts[] = {{"--client", &client_name, NULL},
                               {"--vram-config", &vram_config, NULL},
                               {"--torch-dtype", &torch_dtype, NULL}};
    int npos = 0;
    int rc = cli_parse(ctx, self, argc, argv, opts, 3, &npos);
    if (rc >= 0)
        return rc;
    if ((rc = check_path_count(self, npos)) >= 0)
        return rc;
    char **paths = absolute_paths(ctx, argv + 1, npos);
    if (!paths)
        return CLI_EXIT_DAEMON_ERROR;
    /* Connect first: the banner promises a load that an absent daemon cannot start. */
    int st = cli_connect(ctx);
    if (st != DS_CLIENT_OK) {
        free_paths(paths, npos);
        return cli_report(ctx, st);
    }
    if (!ctx->json && print_loading_banner(argv + 1, npos) != 0) {
        free_paths(paths, npos);
        return CLI_EXIT_DAEMON_ERROR;
    }

    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_load_tag;
    req.body.load.paths_count = (pb_size_t)npos;
    req.body.load.paths = paths;
    req.body.load.client_name = (char *)client_name;
    req.body.load.vram_config_json = (char *)vram_config;
    req.body.load.torch_dtype = (char *)torch_dtype;
    st = cli_call(ctx, &req, &resp);
    if (st != DS_CLIENT_OK) {
        rc = cli_report(ctx, st);
        if (st == DS_CLIENT_EDAEMON &&
            ds_client_last_code(ctx->client) == diffsynth_v1_Code_NOT_FOUND &&
            strncmp(ds_client_last_error(ctx->client), "Cannot detect the model type", 28) == 0)
            explain_unknown_hash(ctx, paths, npos);
        free_paths(paths, npos);
        return rc;
    }
    const diffsynth_v1_LoadResponse *r = &resp.body.load_result;
    rc = CLI_EXIT_OK;
    if (ctx->json) {
        pyjson_buf b = {0};
        pyjson_writer w;
        pyjson_writer_init(&w, &b, PYJSON_COMPACT);
        cli_json_load(&w, r);
        rc = cli_print_doc(&w, &b);
    } else {
        for (pb_size_t i = 0; i < r->models_count; i++)
            if (print_loaded_model(&r->models[i]) != 0)
                rc = CLI_EXIT_DAEMON_ERROR;
        for (pb_size_t i = 0; i < r->skipped_count; i++)
            printf("Skipped model: %s (%s): not implemented in this build\n",
                   cli_str(r->skipped[i].model_name), cli_str(r->skipped[i].model_class));
    }
    ds_client_envelope_free(&resp);
    free_paths(paths, npos);
    return rc;
}

/* ---- unload ---- */

static int run_unload(cli_ctx *ctx, int argc, char **argv)
{
    const cli_command *self = cli_find_command("unload");
    const char *client_name = NULL;
    bool all = false;
    const cli_option opts[] = {{"--client", &client_name, NULL}, {"--all", NULL, &all}};
    int npos = 0;
    int rc = cli_parse(ctx, self, argc, argv, opts, 2, &npos);
    if (rc >= 0)
        return rc;
    if (npos != 1)
        return cli_usage_error(self, "unload: give exactly one MODEL_ID");

    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_unload_tag;
    req.body.unload.model_id = argv[1];
    req.body.unload.client_name = (char *)client_name;
    req.body.unload.all_references = all;
    int st = cli_call(ctx, &req, &resp);
    if (st != DS_CLIENT_OK)
        return cli_report(ctx, st);
    const diffsynth_v1_UnloadResponse *r = &resp.body.unload_result;
    rc = CLI_EXIT_OK;
    if (ctx->json) {
        pyjson_buf b = {0};
        pyjson_writer w;
        pyjson_writer_init(&w, &b, PYJSON_COMPACT);
        cli_json_unload(&w, r);
        rc = cli_print_doc(&w, &b);
    } else if (r->freed) {
        printf("Unloaded model %s: no references remain, model freed\n", cli_str(r->model_id));
    } else {
        printf("Unloaded model %s: %u reference%s remain%s\n", cli_str(r->model_id),
               (unsigned)r->remaining_references, r->remaining_references == 1 ? "" : "s",
               r->remaining_references == 1 ? "s" : "");
    }
    ds_client_envelope_free(&resp);
    return rc;
}

/* ---- models ---- */

/* A table of malloc'd cells printed with aligned columns (the last one unpadded). */
typedef struct table {
    char **cells;
    size_t cols;
    size_t rows;
    size_t cap_rows;
    bool oom;
} table;

static void table_add_row(table *t)
{
    if (t->oom)
        return;
    if (t->rows == t->cap_rows) {
        size_t cap = t->cap_rows ? t->cap_rows * 2 : 16;
        char **cells = realloc(t->cells, cap * t->cols * sizeof *cells);
        if (!cells) {
            t->oom = true;
            return;
        }
        t->cells = cells;
        t->cap_rows = cap;
    }
    memset(t->cells + t->rows * t->cols, 0, t->cols * sizeof *t->cells);
    t->rows++;
}

static void table_set(table *t, size_t col, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void table_set(table *t, size_t col, const char *fmt, ...)
{
    if (t->oom)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) {
        t->oom = true;
        s = NULL;
    }
    va_end(ap);
    t->cells[(t->rows - 1) * t->cols + col] = s;
}

static int table_print_free(table *t)
{
    int rc = t->oom ? -1 : 0;
    if (!t->oom) {
        size_t width[16] = {0};
        for (size_t r = 0; r < t->rows; r++)
            for (size_t c = 0; c < t->cols; c++) {
                const char *s = t->cells[r * t->cols + c];
                size_t len = s ? strlen(s) : 0;
                if (len > width[c])
                    width[c] = len;
            }
        for (size_t r = 0; r < t->rows; r++) {
            for (size_t c = 0; c < t->cols; c++) {
                const char *s = cli_str(t->cells[r * t->cols + c]);
                if (c + 1 == t->cols)
                    printf("%s\n", s);
                else
                    printf("%-*s  ", (int)width[c], s);
            }
        }
    }
    for (size_t i = 0; i < t->rows * t->cols; i++)
        free(t->cells[i]);
    free(t->cells);
    return rc;
}

static int run_models(cli_ctx *ctx, int argc, char **argv)
{
    const cli_command *self = cli_find_command("models");
    int npos = 0;
    int rc = cli_parse(ctx, self, argc, argv, NULL, 0, &npos);
    if (rc >= 0)
        return rc;
    if (npos != 0)
        return cli_usage_error(self, "models: unexpected argument %s", argv[1]);
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_list_models_tag;
    int st = cli_call(ctx, &req, &resp);
    if (st != DS_CLIENT_OK)
        return cli_report(ctx, st);
    const diffsynth_v1_ListModelsResponse *r = &resp.body.list_models_result;
    rc = CLI_EXIT_OK;
    if (ctx->json) {
        pyjson_buf b = {0};
        pyjson_writer w;
        pyjson_writer_init(&w, &b, PYJSON_COMPACT);
        cli_json_models(&w, r);
        rc = cli_print_doc(&w, &b);
    } else if (r->models_count == 0) {
        puts("No models loaded.");
    } else {
        /* One column per memory tier any model reports, in order of first appearance. */
        const char *tier_names[MAX_TIER_COLUMNS];
        size_t ntiers = 0;
        for (pb_size_t i = 0; i < r->models_count; i++)
            for (pb_size_t k = 0; k < r->models[i].tiers_count; k++) {
                const char *name = cli_str(r->models[i].tiers[k].tier);
                size_t j = 0;
                while (j < ntiers && strcmp(tier_names[j], name) != 0)
                    j++;
                if (j == ntiers && ntiers < MAX_TIER_COLUMNS)
                    tier_names[ntiers++] = name;
            }
        /* A VRAM column only when some model was loaded with a vram_config. */
        int with_config = 0;
        for (pb_size_t i = 0; i < r->models_count; i++)
            if (r->models[i].vram_config_json && r->models[i].vram_config_json[0])
                with_config = 1;
        size_t last = 5 + ntiers + (size_t)with_config;
        table t = {.cols = last + 1};
        table_add_row(&t);
        table_set(&t, 0, "ID");
        table_set(&t, 1, "NAME");
        table_set(&t, 2, "PARAMS");
        table_set(&t, 3, "TENSORS");
        for (size_t j = 0; j < ntiers; j++)
            table_set(&t, 4 + j, "%s", tier_names[j]);
        table_set(&t, 4 + ntiers, "CLIENTS");
        if (with_config)
            table_set(&t, 5 + ntiers, "VRAM CONFIG");
        table_set(&t, last, "PATHS");
        for (pb_size_t i = 0; i < r->models_count; i++) {
            const diffsynth_v1_LoadedModel *m = &r->models[i];
            char params[32];
            cli_format_count(m->parameter_count, params, sizeof params);
            table_add_row(&t);
            table_set(&t, 0, "%s", cli_str(m->model_id));
            table_set(&t, 1, "%s", cli_str(m->model_name));
            table_set(&t, 2, "%s", params);
            table_set(&t, 3, "%u", (unsigned)m->tensor_count);
            for (size_t j = 0; j < ntiers; j++) {
                unsigned long long bytes = 0;
                for (pb_size_t k = 0; k < m->tiers_count; k++)
                    if (strcmp(cli_str(m->tiers[k].tier), tier_names[j]) == 0)
                        bytes += m->tiers[k].bytes;
                char size[32];
                cli_format_bytes(bytes, size, sizeof size);
                table_set(&t, 4 + j, "%s", size);
            }
            pyjson_buf clients = {0}, paths = {0}, config = {0};
            for (pb_size_t k = 0; k < m->clients_count; k++) {
                pyjson_append_str(&clients, k ? "," : "");
                pyjson_append_str(&clients, cli_str(m->clients[k]));
            }
            /* Sharded models have many long paths: the first names the model, --json has all. */
            if (m->paths_count > 0)
                pyjson_append_str(&paths, cli_str(m->paths[0]));
            if (m->paths_count > 1) {
                char more[48];
                snprintf(more, sizeof more, " (+%u more files)", (unsigned)(m->paths_count - 1));
                pyjson_append_str(&paths, more);
            }
            if (m->vram_config_json && m->vram_config_json[0])
                format_vram_config(m->vram_config_json, &config);
            table_set(&t, 4 + ntiers, "%s", clients.data ? clients.data : "-");
            if (with_config)
                table_set(&t, 5 + ntiers, "%s", config.data ? config.data : "-");
            table_set(&t, last, "%s", paths.data ? paths.data : "-");
            if (clients.oom || paths.oom || config.oom)
                t.oom = true;
            pyjson_buf_free(&clients);
            pyjson_buf_free(&paths);
            pyjson_buf_free(&config);
        }
        if (table_print_free(&t) != 0) {
            fputs("error: out of memory\n", stderr);
            rc = CLI_EXIT_DAEMON_ERROR;
        }
    }
    ds_client_envelope_free(&resp);
    return rc;
}

/* ---- status ---- */

/* The VRAM manager's lines of `status`. */
static void print_vram(const diffsynth_v1_VramStatus *v)
{
    char size[32];
    if (v->limited) {
        cli_format_bytes(v->budget_bytes, size, sizeof size);
        printf("vram budget: %s (%llu bytes)\n", size, (unsigned long long)v->budget_bytes);
    } else {
        printf("vram budget: none\n");
    }
    cli_format_bytes(v->resident_bytes, size, sizeof size);
    printf("vram resident: %s (%llu bytes)\n", size, (unsigned long long)v->resident_bytes);
    cli_format_bytes(v->peak_bytes, size, sizeof size);
    printf("vram peak: %s (%llu bytes)\n", size, (unsigned long long)v->peak_bytes);
    cli_format_bytes(v->bytes_moved, size, sizeof size);
    printf("vram moved: %s (%llu bytes; %llu loads, %llu prefetches, %llu hits, %llu evictions)\n",
           size, (unsigned long long)v->bytes_moved, (unsigned long long)v->loads,
           (unsigned long long)v->prefetches, (unsigned long long)v->hits,
           (unsigned long long)v->evictions);
    printf("vram time: copying %.3f s, waiting %.3f s, computing %.3f s\n", v->copy_seconds,
           v->wait_seconds, v->compute_seconds);
    char peak[32];
    cli_format_bytes(v->host_bytes, size, sizeof size);
    cli_format_bytes(v->host_peak_bytes, peak, sizeof peak);
    if (v->host_limited) {
        char limit[32];
        cli_format_bytes(v->host_budget_bytes, limit, sizeof limit);
        printf("host copies: %s of %s (peak %s; units past the limit are read from their "
               "files)\n", size, limit, peak);
    } else {
        printf("host copies: %s (peak %s; no --host-limit)\n", size, peak);
    }
}

static int run_status(cli_ctx *ctx, int argc, char **argv)
{
    const cli_command *self = cli_find_command("status");
    int npos = 0;
    int rc = cli_parse(ctx, self, argc, argv, NULL, 0, &npos);
    if (rc >= 0)
        return rc;
    if (npos != 0)
        return cli_usage_error(self, "status: unexpected argument %s", argv[1]);
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_status_tag;
    int st = cli_call(ctx, &req, &resp);
    if (st != DS_CLIENT_OK)
        return cli_report(ctx, st);
    const diffsynth_v1_StatusResponse *r = &resp.body.status_result;
    rc = CLI_EXIT_OK;
    if (ctx->json) {
        pyjson_buf b = {0};
        pyjson_writer w;
        pyjson_writer_init(&w, &b, PYJSON_COMPACT);
        cli_json_status(&w, r);
        rc = cli_print_doc(&w, &b);
    } else {
        unsigned long long up = r->uptime_ms / 1000;
        printf("version: %s\n", cli_str(r->version));
        printf("backend: %s\n", cli_str(r->backend));
        printf("pid: %u\n", (unsigned)r->pid);
        printf("socket: %s\n", cli_str(r->socket_path));
        printf("uptime: %lluh %02llum %02llus\n", up / 3600, up / 60 % 60, up % 60);
        printf("clients: %u\n", (unsigned)r->clients);
        printf("models: %u\n", (unsigned)r->models);
        printf("jobs queued: %u\n", (unsigned)r->jobs_queued);
        printf("jobs running: %u\n", (unsigned)r->jobs_running);
        printf("requests served: %llu\n", (unsigned long long)r->requests_served);
        printf("configs: %u\n", (unsigned)r->config_count);
        printf("max frame: %llu bytes\n", (unsigned long long)r->max_frame_bytes);
        for (pb_size_t i = 0; i < r->memory_count; i++) {
            char size[32];
            cli_format_bytes(r->memory[i].bytes, size, sizeof size);
            printf("memory %s: %s (%llu bytes)\n", cli_str(r->memory[i].tier), size,
                   (unsigned long long)r->memory[i].bytes);
        }
        if (r->has_vram)
            print_vram(&r->vram);
        for (pb_size_t i = 0; i < r->model_roots_count; i++)
            printf("model root: %s\n", cli_str(r->model_roots[i]));
    }
    ds_client_envelope_free(&resp);
    return rc;
}

/* ---- configs ---- */

static int run_configs(cli_ctx *ctx, int argc, char **argv)
{
    const cli_command *self = cli_find_command("configs");
    bool verify = false;
    const char *name = NULL;
    const cli_option opts[] = {{"--verify", NULL, &verify}, {"--name", &name, NULL}};
    int npos = 0;
    int rc = cli_parse(ctx, self, argc, argv, opts, 2, &npos);
    if (rc >= 0)
        return rc;
    if (npos != 0)
        return cli_usage_error(self, "configs: unexpected argument %s", argv[1]);
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_list_configs_tag;
    req.body.list_configs.verify = verify;
    int st = cli_call(ctx, &req, &resp);
    if (st != DS_CLIENT_OK)
        return cli_report(ctx, st);
    const diffsynth_v1_ListConfigsResponse *r = &resp.body.list_configs_result;
    bool bad = false;
    size_t name_width = 0, class_width = 0;
    for (pb_size_t i = 0; i < r->entries_count; i++) {
        const diffsynth_v1_ConfigEntry *e = &r->entries[i];
        if (name && !strstr(cli_str(e->config.model_name), name))
            continue;
        if (e->verify == diffsynth_v1_VerifyResult_VERIFY_MISMATCH ||
            e->verify == diffsynth_v1_VerifyResult_VERIFY_ERROR)
            bad = true;
        size_t nw = strlen(cli_str(e->config.model_name));
        size_t cw = strlen(cli_str(e->config.model_class));
        name_width = nw > name_width ? nw : name_width;
        class_width = cw > class_width ? cw : class_width;
    }
    rc = CLI_EXIT_OK;
    if (ctx->json) {
        pyjson_buf b = {0};
        pyjson_writer w;
        pyjson_writer_init(&w, &b, PYJSON_COMPACT);
        cli_json_configs(&w, r, name);
        rc = cli_print_doc(&w, &b);
    } else {
        for (pb_size_t i = 0; i < r->entries_count; i++) {
            const diffsynth_v1_ConfigEntry *e = &r->entries[i];
            if (name && !strstr(cli_str(e->config.model_name), name))
                continue;
            printf("%s  %-*s  %-*s  %s", cli_str(e->config.model_hash), (int)name_width,
                   cli_str(e->config.model_name), (int)class_width, cli_str(e->config.model_class),
                   e->config.implemented ? "implemented" : "not implemented");
            if (verify) {
                switch (e->verify) {
                case diffsynth_v1_VerifyResult_VERIFY_MATCH: fputs("  OK", stdout); break;
                case diffsynth_v1_VerifyResult_VERIFY_MISMATCH:
                    printf("  MISMATCH computed %s", cli_str(e->computed_hash));
                    break;
                case diffsynth_v1_VerifyResult_VERIFY_ERROR:
                    printf("  ERROR %s", cli_str(e->detail));
                    break;
                default: fputs("  -", stdout); break;
                }
            }
            fputc('\n', stdout);
        }
    }
    ds_client_envelope_free(&resp);
    if (rc == CLI_EXIT_OK && verify && bad)
        rc = CLI_EXIT_DAEMON_ERROR;
    return rc;
}

/* ---- pipelines ---- */

/* "int in 1..1000", "number in (0, 1]", "number", "uint64". */
static void describe_range(const diffsynth_v1_PipelineParam *p, char *buf, size_t size)
{
    const char *type = cli_str(p->type);
    if (strcmp(type, "uint64") == 0 || (isinf(p->min) && isinf(p->max)))
        snprintf(buf, size, "%s", type);
    else if (strcmp(type, "int") == 0)
        snprintf(buf, size, "%s in %.0f..%.0f", type, p->min, p->max);
    else
        snprintf(buf, size, "%s in %c%g, %g]", type, p->min_exclusive ? '(' : '[', p->min,
                 p->max);
}

static void json_tensors(pyjson_writer *w, const diffsynth_v1_PipelineTensor *t, pb_size_t n)
{
    pyjson_begin_array(w);
    for (pb_size_t i = 0; i < n; i++) {
        pyjson_begin_object(w);
        pyjson_key(w, "name");
        pyjson_string(w, cli_str(t[i].name));
        pyjson_key(w, "help");
        pyjson_string(w, cli_str(t[i].help));
        pyjson_key(w, "needs_role");
        if (cli_str(t[i].needs_role)[0])
            pyjson_string(w, t[i].needs_role);
        else
            pyjson_null(w);
        pyjson_key(w, "png");
        pyjson_bool(w, t[i].png);
        pyjson_key(w, "video");
        pyjson_bool(w, t[i].video);
        pyjson_end_object(w);
    }
    pyjson_end_array(w);
}

static void json_strings(pyjson_writer *w, char **items, pb_size_t n)
{
    pyjson_begin_array(w);
    for (pb_size_t i = 0; i < n; i++)
        pyjson_string(w, cli_str(items[i]));
    pyjson_end_array(w);
}

static void json_pipelines(pyjson_writer *w, const diffsynth_v1_ListPipelinesResponse *r)
{
    pyjson_begin_object(w);
    pyjson_key(w, "pipelines");
    pyjson_begin_array(w);
    for (pb_size_t i = 0; i < r->pipelines_count; i++) {
        const diffsynth_v1_PipelineInfo *p = &r->pipelines[i];
        pyjson_begin_object(w);
        pyjson_key(w, "name");
        pyjson_string(w, cli_str(p->name));
        pyjson_key(w, "summary");
        pyjson_string(w, cli_str(p->summary));
        pyjson_key(w, "roles");
        pyjson_begin_array(w);
        for (pb_size_t k = 0; k < p->roles_count; k++) {
            pyjson_begin_object(w);
            pyjson_key(w, "role");
            pyjson_string(w, cli_str(p->roles[k].role));
            pyjson_key(w, "model_name");
            pyjson_string(w, cli_str(p->roles[k].model_name));
            pyjson_key(w, "model_class");
            pyjson_string(w, cli_str(p->roles[k].model_class));
            pyjson_key(w, "required");
            pyjson_bool(w, p->roles[k].required);
            pyjson_end_object(w);
        }
        pyjson_end_array(w);
        pyjson_key(w, "params");
        pyjson_begin_array(w);
        for (pb_size_t k = 0; k < p->params_count; k++) {
            const diffsynth_v1_PipelineParam *q = &p->params[k];
            pyjson_begin_object(w);
            pyjson_key(w, "name");
            pyjson_string(w, cli_str(q->name));
            pyjson_key(w, "type");
            pyjson_string(w, cli_str(q->type));
            /* null, not Infinity, for an open end: plain JSON parsers refuse Infinity. */
            pyjson_key(w, "min");
            if (isinf(q->min))
                pyjson_null(w);
            else
                pyjson_double(w, q->min);
            pyjson_key(w, "max");
            if (isinf(q->max))
                pyjson_null(w);
            else
                pyjson_double(w, q->max);
            pyjson_key(w, "min_exclusive");
            pyjson_bool(w, q->min_exclusive);
            pyjson_key(w, "default");
            if (q->has_default)
                pyjson_string(w, cli_str(q->default_value));
            else
                pyjson_null(w);
            pyjson_key(w, "help");
            pyjson_string(w, cli_str(q->help));
            pyjson_end_object(w);
        }
        pyjson_end_array(w);
        pyjson_key(w, "inputs");
        json_tensors(w, p->inputs, p->inputs_count);
        pyjson_key(w, "outputs");
        json_tensors(w, p->outputs, p->outputs_count);
        pyjson_key(w, "dtypes");
        json_strings(w, p->dtypes, p->dtypes_count);
        pyjson_key(w, "phases");
        json_strings(w, p->phases, p->phases_count);
        pyjson_key(w, "size_multiple");
        pyjson_uint(w, p->size_multiple);
        pyjson_end_object(w);
    }
    pyjson_end_array(w);
    pyjson_end_object(w);
}

static void print_tensors(const char *title, const diffsynth_v1_PipelineTensor *t, pb_size_t n,
                          int is_output)
{
    printf("  %s:\n", title);
    for (pb_size_t i = 0; i < n; i++) {
        printf("    %-18s %s", cli_str(t[i].name), cli_str(t[i].help));
        if (cli_str(t[i].needs_role)[0])
            printf(" (needs the %s role)", t[i].needs_role);
        if (t[i].png)
            printf(" (sent as a PNG file)");
        if (t[i].video)
            printf(" (video: %s)", is_output ? "sent as an MP4 or WebP file, or raw frames"
                                             : "read from a video file or a folder of PNGs");
        fputc('\n', stdout);
    }
}

static int run_pipelines(cli_ctx *ctx, int argc, char **argv)
{
    const cli_command *self = cli_find_command("pipelines");
    int npos = 0;
    int rc = cli_parse(ctx, self, argc, argv, NULL, 0, &npos);
    if (rc >= 0)
        return rc;
    if (npos != 0)
        return cli_usage_error(self, "pipelines: unexpected argument %s", argv[1]);
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_list_pipelines_tag;
    int st = cli_call(ctx, &req, &resp);
    if (st != DS_CLIENT_OK)
        return cli_report(ctx, st);
    const diffsynth_v1_ListPipelinesResponse *r = &resp.body.list_pipelines_result;
    rc = CLI_EXIT_OK;
    if (ctx->json) {
        pyjson_buf b = {0};
        pyjson_writer w;
        pyjson_writer_init(&w, &b, PYJSON_COMPACT);
        json_pipelines(&w, r);
        rc = cli_print_doc(&w, &b);
    } else {
        for (pb_size_t i = 0; i < r->pipelines_count; i++) {
            const diffsynth_v1_PipelineInfo *p = &r->pipelines[i];
            printf("%s%s: %s\n", i ? "\n" : "", cli_str(p->name), cli_str(p->summary));
            printf("  roles:\n");
            for (pb_size_t k = 0; k < p->roles_count; k++)
                printf("    %-18s %s, %s\n", cli_str(p->roles[k].role),
                       cli_str(p->roles[k].model_name),
                       p->roles[k].required ? "required" : "optional");
            printf("  parameters:\n");
            for (pb_size_t k = 0; k < p->params_count; k++) {
                const diffsynth_v1_PipelineParam *q = &p->params[k];
                char range[64];
                describe_range(q, range, sizeof range);
                printf("    %-18s %-20s default %-8s %s\n", cli_str(q->name), range,
                       q->has_default ? cli_str(q->default_value) : "random", cli_str(q->help));
            }
            print_tensors("inputs", p->inputs, p->inputs_count, 0);
            print_tensors("outputs", p->outputs, p->outputs_count, 1);
            printf("  dtypes:");
            for (pb_size_t k = 0; k < p->dtypes_count; k++)
                printf("%s %s%s", k ? "," : "", cli_str(p->dtypes[k]), k ? "" : " (default)");
            printf("\n  phases:");
            for (pb_size_t k = 0; k < p->phases_count; k++)
                printf("%s %s", k ? "," : "", cli_str(p->phases[k]));
            if (p->size_multiple)
                printf("\n  sizes: multiples of %u are used as given with any of its models",
                       (unsigned)p->size_multiple);
            fputc('\n', stdout);
        }
    }
    ds_client_envelope_free(&resp);
    return rc;
}

const cli_command cli_commands[] = {
    {"identify", "Show which model configs match these files (reads headers only)",
     "usage: diffsynth identify PATH... [--json]\n"
     "\n"
     "One model may span several files (shards); later files win on duplicate tensor names.\n"
     "Prints the model hash and every matching config. When none matches, prints upstream's\n"
     "\"Cannot detect the model type\" sentence and the closest known configs, and exits 1.\n",
     run_identify},
    {"load", "Load models from files into the daemon's pool",
     "usage: diffsynth load PATH... [--client NAME] [--vram-config JSON] [--torch-dtype D]\n"
     "                     [--json]\n"
     "\n"
     "Loads every implemented config that matches the files, as upstream's ModelPool does.\n"
     "Relative paths are made absolute here; the daemon resolves them and checks its model roots.\n"
     "  --client NAME       who holds the reference (default: uid:<your uid>)\n"
     "  --vram-config JSON  upstream's vram_config: {\"offload_dtype\": \"float8_e4m3fn\",\n"
     "                      \"offload_device\": \"cpu\", ...} (the eight {offload,onload,\n"
     "                      preparing,computation}_{dtype,device} keys). With both offload keys\n"
     "                      the weights are kept in the offload dtype (e.g. fp8) and streamed\n"
     "                      through the daemon's VRAM manager; the same files loaded with another\n"
     "                      config are a separate model\n"
     "  --torch-dtype D     the computation dtype the config falls back on: bfloat16 (default),\n"
     "                      float32, float16\n",
     run_load},
    {"unload", "Drop a reference to a loaded model",
     "usage: diffsynth unload MODEL_ID [--client NAME] [--all] [--json]\n"
     "\n"
     "  --client NAME  which of your uid's references to drop (default: uid:<your uid>);\n"
     "                 references belong to the uid that took them: only that uid or the\n"
     "                 daemon's own uid may drop one\n"
     "  --all          drop every reference and free the model (the daemon's uid only)\n",
     run_unload},
    {"models", "List the models in the daemon's pool",
     "usage: diffsynth models [--json]\n"
     "\n"
     "One row per model: id, name, parameters, tensors, bytes in each memory tier, clients\n"
     "holding references, and the files it was loaded from.\n",
     run_models},
    {"status", "Show the daemon's status",
     "usage: diffsynth status [--json]\n", run_status},
    {"configs", "List the model-config table, optionally hash-verified",
     "usage: diffsynth configs [--verify] [--name SUBSTR] [--json]\n"
     "\n"
     "One line per config: hash, name, class, whether this build implements it.\n"
     "  --verify       check that each implemented class without converter hashes to its\n"
     "                 config's model_hash (OK / MISMATCH computed HASH / ERROR / -);\n"
     "                 exits 1 if any MISMATCH or ERROR\n"
     "  --name SUBSTR  only configs whose model_name contains SUBSTR\n",
     run_configs},
    {"pipelines", "List the pipelines the daemon runs: roles, parameters, inputs, outputs",
     "usage: diffsynth pipelines [--json]\n"
     "\n"
     "For each pipeline: the models it takes by role, its parameters with their ranges and\n"
     "defaults (the limits the daemon checks), its input and output tensors, its compute\n"
     "dtypes and progress phases. In --json, min and max are null for an open end.\n",
     run_pipelines},
    {"run-step", "Run one step of a loaded model on tensors from safetensors files",
     cli_run_step_help, cli_run_step},
    {"generate", "Generate an image or a video with a pipeline (default qwen_image)",
     cli_generate_help, cli_generate},
    {"tokenize", "Token ids of a prompt with a model's tokenizer, Qwen2 or Wan (no daemon needed)",
     cli_tokenize_help, cli_tokenize},
    {"help", "Show help for a command",
     "usage: diffsynth help [COMMAND]\n", cli_run_help},
};

const size_t cli_command_count = sizeof cli_commands / sizeof cli_commands[0];
