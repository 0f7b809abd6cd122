/* `diffsynth run-step`: tensors from safetensors files in, the step's outputs to one
 * safetensors file out. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/cli.h"
#include "core/safetensors.h"
#include "core/safetensors_write.h"

const char cli_run_step_help[] =
    "usage: diffsynth run-step MODEL_ID [--step NAME] --input NAME=FILE[:TENSOR]...\n"
    "                          [--param KEY=VALUE...] [--aux ROLE=MODEL_ID...]\n"
    "                          --output OUT.safetensors [--json]\n"
    "\n"
    "Runs one step of a loaded model (see `diffsynth models` for ids) and writes every output\n"
    "tensor to OUT.safetensors. Prints the outputs and the time spent queued and computing;\n"
    "progress goes to stderr.\n"
    "  --step NAME               the step to run (default: forward)\n"
    "  --input NAME=FILE         input NAME is the only tensor of the safetensors FILE;\n"
    "  --input NAME=FILE:TENSOR  or its tensor TENSOR. Repeatable.\n"
    "  --param KEY=VALUE         a scalar parameter, as text. Repeatable.\n"
    "  --aux ROLE=MODEL_ID       another loaded model the step uses (e.g. controlnet=m3).\n"
    "  --output FILE             where the outputs go (required)\n"
    "Large tensors travel through shared memory, not the socket.\n"
    "\n"
    "example:\n"
    "  diffsynth run-step m1 --input latents=lat.safetensors --input prompt_emb=p.safetensors \\\n"
    "      --input timestep=t.safetensors --output noise.safetensors\n";

#define MAX_REPEAT 256

typedef struct kv_list {
    char *key[MAX_REPEAT];
    char *value[MAX_REPEAT];
    size_t count;
} kv_list;

/* Takes "--opt K=V" / "--opt=K=V" out of argv into `list`; returns the usage status on error,
 * -1 to go on. */
static int take_repeated(const cli_command *cmd, int *argc, char **argv, const char *opt,
                         kv_list *list)
{
    size_t n = strlen(opt);
    int out = 1;
    for (int i = 1; i < *argc; i++) {
        char *arg = argv[i];
        char *value = NULL;
        if (strcmp(arg, "--") == 0) {
            while (i < *argc)
                argv[out++] = argv[i++];
            break;
        }
        if (strncmp(arg, opt, n) == 0 && arg[n] == '\0') {
            if (i + 1 >= *argc)
                return cli_usage_error(cmd, "run-step: %s needs a value", opt);
            value = argv[++i];
        } else if (strncmp(arg, opt, n) == 0 && arg[n] == '=') {
            value = arg + n + 1;
        } else {
            argv[out++] = arg;
            continue;
        }
        char *eq = strchr(value, '=');
        if (!eq || eq == value)
            return cli_usage_error(cmd, "run-step: %s wants NAME=VALUE, not \"%s\"", opt, value);
        if (list->count >= MAX_REPEAT)
            return cli_usage_error(cmd, "run-step: at most %d %s options", MAX_REPEAT, opt);
        *eq = '\0';
        list->key[list->count] = value;
        list->value[list->count++] = eq + 1;
    }
    *argc = out;
    return -1;
}

typedef struct opened {
    ds_safetensors *files[MAX_REPEAT];
    size_t count;
} opened;

/* Finds the tensor an --input names: FILE holding one tensor, or FILE:TENSOR. */
static int open_input(const char *name, const char *spec, opened *op, ds_client_tensor *out)
{
    char *path = strdup(spec);
    if (!path) {
        fputs("error: out of memory\n", stderr);
        return -1;
    }
    ds_error err;
    ds_safetensors *st = NULL;
    const char *pick = NULL;
    if (ds_safetensors_open(path, 0, &st, &err) != DS_OK) {
        /* Maybe FILE:TENSOR. */
        char *colon = strrchr(path, ':');
        ds_error err2;
        if (colon && (*colon = '\0', ds_safetensors_open(path, 0, &st, &err2) == DS_OK)) {
            pick = spec + (colon - path) + 1;
        } else {
            fprintf(stderr, "error: --input %s: %s\n", name, err.message);
            free(path);
            return -1;
        }
    }
    op->files[op->count++] = st;
    const ds_sd_entry *e = NULL;
    if (pick) {
        e = ds_state_dict_find(&st->tensors, pick);
        if (!e || e->dict) {
            fprintf(stderr, "error: --input %s: %s has no tensor \"%s\"\n", name, path, pick);
            free(path);
            return -1;
        }
    } else if (st->tensors.count != 1) {
        fprintf(stderr,
                "error: --input %s: %s holds %zu tensors; pick one with %s=%s:TENSOR\n", name,
                path, st->tensors.count, name, path);
        free(path);
        return -1;
    } else {
        e = &st->tensors.entries[0];
    }
    free(path);
    const ds_tensor_view *v = &e->tensor;
    out->name = name;
    out->dtype = (int)v->dtype;
    out->ndim = v->ndim;
    for (int d = 0; d < v->ndim; d++)
        out->shape[d] = v->shape[d];
    out->data = v->data;
    out->nbytes = (size_t)v->nbytes;
    return 0;
}

static void print_shape(FILE *f, const ds_client_tensor *t)
{
    fputc('[', f);
    for (int d = 0; d < t->ndim; d++)
        fprintf(f, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    fputc(']', f);
}

int cli_run_step(cli_ctx *ctx, int argc, char **argv)
{
    const cli_command *self = cli_find_command("run-step");
    kv_list inputs = {0}, params = {0}, aux = {0};
    int rc;
    if ((rc = take_repeated(self, &argc, argv, "--input", &inputs)) >= 0 ||
        (rc = take_repeated(self, &argc, argv, "--param", &params)) >= 0 ||
        (rc = take_repeated(self, &argc, argv, "--aux", &aux)) >= 0)
        return rc;
    const char *step = NULL, *output = NULL;
    cli_option opts[] = {{"--step", &step, NULL}, {"--output", &output, NULL}};
    int npos = 0;
    rc = cli_parse(ctx, self, argc, argv, opts, sizeof opts / sizeof opts[0], &npos);
    if (rc >= 0)
        return rc;
    if (npos != 1)
        return cli_usage_error(self, "run-step: give exactly one MODEL_ID");
    if (!output)
        return cli_usage_error(self, "run-step: --output FILE is required");

    opened op = {0};
    ds_client_tensor tensors[MAX_REPEAT];
    ds_client_step_param ps[MAX_REPEAT];
    ds_client_aux_model ax[MAX_REPEAT];
    ds_client_step_result res = {0};
    int status = CLI_EXIT_DAEMON_ERROR;
    for (size_t i = 0; i < inputs.count; i++)
        if (open_input(inputs.key[i], inputs.value[i], &op, &tensors[i]) != 0)
            goto done;
    for (size_t i = 0; i < params.count; i++)
        ps[i] = (ds_client_step_param){params.key[i], params.value[i]};
    for (size_t i = 0; i < aux.count; i++)
        ax[i] = (ds_client_aux_model){aux.key[i], aux.value[i]};
    ds_client_step_request req = {
        .model_id = argv[1],
        .step = step,
        .inputs = tensors,
        .input_count = inputs.count,
        .params = ps,
        .param_count = params.count,
        .aux_models = ax,
        .aux_count = aux.count,
    };
    int st = cli_connect(ctx);
    if (st == DS_CLIENT_OK)
        st = ds_client_run_step(ctx->client, &req, &res, -1, cli_on_progress, ctx, NULL);
    cli_end_progress(ctx);
    if (st != DS_CLIENT_OK) {
        status = cli_report(ctx, st);
        goto done;
    }
    ds_st_out_tensor outs[MAX_REPEAT];
    size_t n = res.output_count < MAX_REPEAT ? res.output_count : MAX_REPEAT;
    for (size_t i = 0; i < n; i++) {
        const ds_client_tensor *t = &res.outputs[i];
        outs[i] = (ds_st_out_tensor){t->name, (ds_dtype)t->dtype, t->ndim, t->shape, t->data,
                                     t->nbytes};
    }
    ds_error err;
    if (ds_safetensors_write(output, outs, n, &err) != DS_OK) {
        fprintf(stderr, "error: %s\n", err.message);
        goto done;
    }
    if (ctx->json) {
        pyjson_buf b = {0};
        pyjson_writer w;
        pyjson_writer_init(&w, &b, PYJSON_COMPACT);
        pyjson_begin_object(&w);
        pyjson_key(&w, "output");
        pyjson_string(&w, output);
        pyjson_key(&w, "outputs");
        pyjson_begin_array(&w);
        for (size_t i = 0; i < n; i++) {
            const ds_client_tensor *t = &res.outputs[i];
            pyjson_begin_object(&w);
            pyjson_key(&w, "name");
            pyjson_string(&w, t->name);
            pyjson_key(&w, "dtype");
            pyjson_string(&w, ds_dtype_name((ds_dtype)t->dtype));
            pyjson_key(&w, "shape");
            pyjson_begin_array(&w);
            for (int d = 0; d < t->ndim; d++)
                pyjson_int(&w, t->shape[d]);
            pyjson_end_array(&w);
            pyjson_end_object(&w);
        }
        pyjson_end_array(&w);
        pyjson_key(&w, "queue_s");
        pyjson_double(&w, res.queue_s);
        pyjson_key(&w, "compute_s");
        pyjson_double(&w, res.compute_s);
        pyjson_end_object(&w);
        status = cli_print_doc(&w, &b);
    } else {
        for (size_t i = 0; i < n; i++) {
            const ds_client_tensor *t = &res.outputs[i];
            printf("%s ", t->name);
            print_shape(stdout, t);
            printf(" %s\n", ds_dtype_name((ds_dtype)t->dtype));
        }
        printf("wrote %zu tensor%s to %s (queued %.3f s, computed %.3f s)\n", n,
               n == 1 ? "" : "s", output, res.queue_s, res.compute_s);
        status = CLI_EXIT_OK;
    }

done:
    ds_client_step_result_free(&res);
    for (size_t i = 0; i < op.count; i++)
        ds_safetensors_close(op.files[i]);
    return status;
}
