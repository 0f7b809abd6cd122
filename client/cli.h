/* Internal interface of the `diffsynth` CLI: shared between cli.c (entry point, options, help,
 * connection, errors, progress), cli_commands.c (one function per command) and cli_json.c
 * (responses as JSON). Not installed. */
#ifndef DS_CLIENT_CLI_H
#define DS_CLIENT_CLI_H

#include <stdbool.h>
#include <stddef.h>

#include "client/diffsynth_client.h"
#include "client/pyjson.h"

/* Exit statuses, documented in the global help. */
enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_DAEMON_ERROR = 1,
    CLI_EXIT_USAGE = 2,
    CLI_EXIT_UNREACHABLE = 3,
};

typedef struct cli_ctx {
    const char *socket_path;  /* --socket; NULL = the default order */
    ds_client *client;        /* connected on first use */
    bool json;                /* --json of the running command */
    bool progress_tty;        /* stderr is a terminal: draw one bar updated in place */
    bool progress_drawn;      /* a bar is on screen and needs its line ended */
} cli_ctx;

typedef struct cli_command {
    const char *name;
    const char *summary;  /* one line for the global help */
    const char *help;     /* the command's --help text, from its usage line on */
    int (*run)(cli_ctx *ctx, int argc, char **argv);  /* argv[0] is the command name */
} cli_command;

extern const cli_command cli_commands[];
extern const size_t cli_command_count;

const cli_command *cli_find_command(const char *name);

/* `help [COMMAND]`, in cli.c beside the texts it prints. */
int cli_run_help(cli_ctx *ctx, int argc, char **argv);

/* One command-line option of a command; exactly one of `value` and `flag` is set. */
typedef struct cli_option {
    const char *name;    /* "--client" */
    const char **value;  /* takes an argument ("--client NAME" or "--client=NAME") */
    bool *flag;
} cli_option;

/* Parses a command's arguments: --json, --help and --socket are understood for every command;
 * `opts` adds the command's own. Positional arguments are moved to the front of argv[1..] and
 * counted in *npos. Returns -1 to go on, or the exit status to end with (after --help, or a
 * usage error already reported). */
int cli_parse(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv, const cli_option *opts,
              size_t nopts, int *npos);

/* Reports a usage error for `cmd` (NULL: the global one) and returns CLI_EXIT_USAGE. */
int cli_usage_error(const cli_command *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Connects ctx->client unless it already is; returns a ds_client status, prints nothing. */
int cli_connect(cli_ctx *ctx);

/* Sends `request` and waits for the reply, drawing progress on stderr. Returns a ds_client
 * status; nothing is printed. */
int cli_call(cli_ctx *ctx, const diffsynth_v1_Envelope *request, diffsynth_v1_Envelope *response);

/* Progress display for calls made without cli_call: pass cli_on_progress with ctx as user, then
 * cli_end_progress once the call returns. */
void cli_on_progress(const diffsynth_v1_Progress *p, uint64_t request_id, void *user);
void cli_end_progress(cli_ctx *ctx);

/* `run-step` (cli_run_step.c) and its help text. */
int cli_run_step(cli_ctx *ctx, int argc, char **argv);
extern const char cli_run_step_help[];

/* `generate` (cli_generate.c) and its help text. */
int cli_generate(cli_ctx *ctx, int argc, char **argv);
extern const char cli_generate_help[];

/* `tokenize` (cli_tokenize.c) and its help text; runs locally, without the daemon. */
int cli_tokenize(cli_ctx *ctx, int argc, char **argv);
extern const char cli_tokenize_help[];

/* Prints the failure `status` of the last client call to stderr (`error: CODE_NAME: message`
 * for a daemon Error; how to start the daemon when it cannot be reached) and returns the exit
 * status for it. */
int cli_report(cli_ctx *ctx, int status);

/* Writes the finished document and a newline to stdout; CLI_EXIT_OK, or 1 if it failed. */
int cli_print_doc(pyjson_writer *w, pyjson_buf *buf);

/* Human-readable sizes and counts: "1.13 B", "3.2 GiB". */
void cli_format_count(unsigned long long n, char *out, size_t size);
void cli_format_bytes(unsigned long long n, char *out, size_t size);

/* JSON of responses (cli_json.c). Field names are the proto's; *_json fields become embedded
 * JSON values named without the suffix (null when empty); enums are their names. */
void cli_json_identify(pyjson_writer *w, const diffsynth_v1_IdentifyResponse *r);
void cli_json_load(pyjson_writer *w, const diffsynth_v1_LoadResponse *r);
void cli_json_unload(pyjson_writer *w, const diffsynth_v1_UnloadResponse *r);
void cli_json_models(pyjson_writer *w, const diffsynth_v1_ListModelsResponse *r);
void cli_json_status(pyjson_writer *w, const diffsynth_v1_StatusResponse *r);
/* Only entries whose model_name contains `name_filter` (NULL: all). */
void cli_json_configs(pyjson_writer *w, const diffsynth_v1_ListConfigsResponse *r,
                      const char *name_filter);

/* nanopb leaves absent strings NULL. */
static inline const char *cli_str(const char *s)
{
    return s ? s : "";
}

#endif
