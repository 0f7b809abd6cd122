/* `diffsynth`: the command-line client of diffsynthd. Entry point, options, help, the
 * connection, error reporting and progress display; commands live in cli_commands.c. */
#include "client/cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/default_socket.h"

#ifndef DS_VERSION
#define DS_VERSION "unknown"
#endif

/* Progress bar width in characters, between the brackets. */
#define BAR_WIDTH 30

static void print_global_help(FILE *out)
{
    char path[256];
    const char *now = ds_default_socket_path(path, sizeof path);
    fprintf(out,
            "usage: diffsynth [--socket PATH] COMMAND [options]\n"
            "\n"
            "Talks to diffsynthd, the daemon that identifies, loads and serves DiffSynth models.\n"
            "\n"
            "commands:\n");
    for (size_t i = 0; i < cli_command_count; i++)
        fprintf(out, "  %-10s %s\n", cli_commands[i].name, cli_commands[i].summary);
    fprintf(out,
            "\n"
            "options:\n"
            "  --socket PATH  the daemon's socket. Default, first that is set:\n"
            "                 $DIFFSYNTH_SOCKET, $XDG_RUNTIME_DIR/diffsynthd.sock,\n"
            "                 /tmp/diffsynthd-<uid>.sock (here: %s)\n"
            "  --help         this help; `diffsynth help COMMAND` or `diffsynth COMMAND --help`\n"
            "                 for a command\n"
            "  --version      print the version\n"
            "\n"
            "Every command takes --json to print its result as JSON on stdout.\n"
            "Exit status: 0 ok, 1 the daemon answered an error, 2 usage error,\n"
            "3 cannot reach the daemon.\n",
            now ? now : "(too long)");
}

static void print_command_help(FILE *out, const cli_command *cmd)
{
    fprintf(out, "%s\n\n%s", cmd->summary, cmd->help);
    fprintf(out, "\ncommon options:\n"
                 "  --json         print the result as JSON on stdout\n"
                 "  --socket PATH  the daemon's socket (see diffsynth --help)\n"
                 "  --help         this help\n");
}

const cli_command *cli_find_command(const char *name)
{
    for (size_t i = 0; i < cli_command_count; i++)
        if (strcmp(cli_commands[i].name, name) == 0)
            return &cli_commands[i];
    return NULL;
}

int cli_usage_error(const cli_command *cmd, const char *fmt, ...)
{
    va_list ap;
    fputs("diffsynth: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (cmd)
        fprintf(stderr, "\nsee `diffsynth %s --help`\n", cmd->name);
    else
        fputs("\nsee `diffsynth --help`\n", stderr);
    return CLI_EXIT_USAGE;
}

/* Matches "--name" or "--name=value"; *inline_value is set for the second form. */
static bool option_is(const char *arg, const char *name, const char **inline_value)
{
    size_t n = strlen(name);
    if (strncmp(arg, name, n) != 0)
        return false;
    if (arg[n] == '\0') {
        *inline_value = NULL;
        return true;
    }
    if (arg[n] == '=') {
        *inline_value = arg + n + 1;
        return true;
    }
    return false;
}

int cli_parse(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv, const cli_option *opts,
              size_t nopts, int *npos)
{
    bool help = false;
    bool only_positional = false;
    int pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = NULL;
        if (only_positional || arg[0] != '-' || arg[1] == '\0') {
            argv[1 + pos++] = argv[i];
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            only_positional = true;
            continue;
        }
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            help = true;
            continue;
        }
        if (strcmp(arg, "--json") == 0) {
            ctx->json = true;
            continue;
        }
        const char **target = NULL;
        bool *flag = NULL;
        const char *name = NULL;
        if (option_is(arg, "--socket", &value)) {
            target = &ctx->socket_path;
            name = "--socket";
        }
        for (size_t k = 0; !name && k < nopts; k++) {
            if (option_is(arg, opts[k].name, &value)) {
                target = opts[k].value;
                flag = opts[k].flag;
                name = opts[k].name;
            }
        }
        if (!name)
            return cli_usage_error(cmd, "%s: unknown option %s", cmd->name, arg);
        if (flag) {
            if (value)
                return cli_usage_error(cmd, "%s: %s takes no value", cmd->name, name);
            *flag = true;
            continue;
        }
        if (!value) {
            if (i + 1 >= argc)
                return cli_usage_error(cmd, "%s: %s needs a value", cmd->name, name);
            value = argv[++i];
        }
        *target = value;
    }
    if (help) {
        print_command_help(stdout, cmd);
        return CLI_EXIT_OK;
    }
    *npos = pos;
    return -1;
}

void cli_end_progress(cli_ctx *ctx)
{
    if (ctx->progress_drawn) {
        fputc('\n', stderr);
        ctx->progress_drawn = false;
    }
}

void cli_on_progress(const diffsynth_v1_Progress *p, uint64_t request_id, void *user)
{
    cli_ctx *ctx = user;
    (void)request_id;
    const char *phase = cli_str(p->phase);
    const char *message = cli_str(p->message);
    char eta[32] = "";
    if (p->eta_s >= 0)
        snprintf(eta, sizeof eta, " eta %.0fs", p->eta_s);
    if (!ctx->progress_tty) {
        fprintf(stderr, "progress: %s %llu/%llu%s%s%s\n", phase, (unsigned long long)p->done,
                (unsigned long long)p->total, eta, message[0] ? " " : "", message);
        return;
    }
    char bar[BAR_WIDTH + 1];
    int percent = 0;
    int filled = 0;
    if (p->total > 0) {
        unsigned long long done = p->done < p->total ? p->done : p->total;
        percent = (int)(done * 100 / p->total);
        filled = (int)(done * BAR_WIDTH / p->total);
    }
    for (int i = 0; i < BAR_WIDTH; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[BAR_WIDTH] = '\0';
    /* \r and erase-line keep the bar on one line, updated in place. */
    fprintf(stderr, "\r\033[K%s [%s] %3d%% %llu/%llu%s%s%.60s", phase, bar, percent,
            (unsigned long long)p->done, (unsigned long long)p->total, eta,
            message[0] ? " " : "", message);
    fflush(stderr);
    ctx->progress_drawn = true;
}

int cli_connect(cli_ctx *ctx)
{
    if (!ctx->client) {
        ctx->client = ds_client_new();
        if (!ctx->client)
            return DS_CLIENT_ENOMEM;
    }
    if (ds_client_fd(ctx->client) >= 0)
        return DS_CLIENT_OK;
    return ds_client_connect(ctx->client, ctx->socket_path);
}

int cli_call(cli_ctx *ctx, const diffsynth_v1_Envelope *request, diffsynth_v1_Envelope *response)
{
    memset(response, 0, sizeof *response);
    int rc = cli_connect(ctx);
    if (rc)
        return rc;
    rc = ds_client_call(ctx->client, request, response, -1, cli_on_progress, ctx);
    cli_end_progress(ctx);
    return rc;
}

int cli_report(cli_ctx *ctx, int status)
{
    const char *msg = ctx->client ? ds_client_last_error(ctx->client) : "out of memory";
    switch (status) {
    case DS_CLIENT_OK:
        return CLI_EXIT_OK;
    case DS_CLIENT_EDAEMON:
        fprintf(stderr, "error: %s: %s\n", ds_client_code_name(ds_client_last_code(ctx->client)),
                msg);
        return CLI_EXIT_DAEMON_ERROR;
    case DS_CLIENT_ECONNECT:
        fprintf(stderr,
                "error: %s\n"
                "Is diffsynthd running? Start it with `diffsynthd &`, or point this command at\n"
                "its socket with --socket PATH (or $DIFFSYNTH_SOCKET).\n",
                msg);
        return CLI_EXIT_UNREACHABLE;
    case DS_CLIENT_ECLOSED:
    case DS_CLIENT_EIO:
        fprintf(stderr, "error: %s\n", msg);
        return CLI_EXIT_UNREACHABLE;
    default:
        fprintf(stderr, "error: %s\n", msg);
        return CLI_EXIT_DAEMON_ERROR;
    }
}

int cli_print_doc(pyjson_writer *w, pyjson_buf *buf)
{
    int rc = CLI_EXIT_OK;
    if (pyjson_writer_finish(w) != 0) {
        fputs("error: cannot write the JSON output (out of memory)\n", stderr);
        rc = CLI_EXIT_DAEMON_ERROR;
    } else {
        fwrite(buf->data, 1, buf->len, stdout);
        fputc('\n', stdout);
    }
    pyjson_buf_free(buf);
    return rc;
}

void cli_format_count(unsigned long long n, char *out, size_t size)
{
    if (n >= 1000000000ULL)
        snprintf(out, size, "%.2f B", (double)n / 1e9);
    else if (n >= 1000000ULL)
        snprintf(out, size, "%.2f M", (double)n / 1e6);
    else if (n >= 1000ULL)
        snprintf(out, size, "%.2f K", (double)n / 1e3);
    else
        snprintf(out, size, "%llu", n);
}

void cli_format_bytes(unsigned long long n, char *out, size_t size)
{
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (n < 1024) {
        snprintf(out, size, "%llu B", n);
        return;
    }
    double v = (double)n / 1024.0;
    size_t u = 0;
    while (v >= 1024.0 && u + 1 < sizeof units / sizeof units[0]) {
        v /= 1024.0;
        u++;
    }
    snprintf(out, size, "%.1f %s", v, units[u]);
}

int main(int argc, char **argv)
{
    cli_ctx ctx = {0};
    ctx.progress_tty = isatty(STDERR_FILENO);
    int i = 1;
    for (; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = NULL;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            print_global_help(stdout);
            return CLI_EXIT_OK;
        }
        if (strcmp(arg, "--version") == 0) {
            printf("diffsynth %s\n", DS_VERSION);
            return CLI_EXIT_OK;
        }
        if (option_is(arg, "--socket", &value)) {
            if (!value) {
                if (i + 1 >= argc)
                    return cli_usage_error(NULL, "--socket needs a value");
                value = argv[++i];
            }
            ctx.socket_path = value;
            continue;
        }
        if (arg[0] == '-')
            return cli_usage_error(NULL, "unknown option %s", arg);
        break;
    }
    if (i >= argc) {
        print_global_help(stderr);
        return CLI_EXIT_USAGE;
    }
    const cli_command *cmd = cli_find_command(argv[i]);
    if (!cmd)
        return cli_usage_error(NULL, "unknown command %s", argv[i]);
    int rc = cmd->run(&ctx, argc - i, argv + i);
    ds_client_close(ctx.client);
    if (fflush(stdout) != 0 && rc == CLI_EXIT_OK)
        rc = CLI_EXIT_DAEMON_ERROR;
    return rc;
}

int cli_run_help(cli_ctx *ctx, int argc, char **argv)
{
    const cli_command *self = cli_find_command("help");
    int npos = 0;
    int rc = cli_parse(ctx, self, argc, argv, NULL, 0, &npos);
    if (rc >= 0)
        return rc;
    if (npos == 0) {
        print_global_help(stdout);
        return CLI_EXIT_OK;
    }
    if (npos > 1)
        return cli_usage_error(self, "help: one command at a time");
    const cli_command *cmd = cli_find_command(argv[1]);
    if (!cmd)
        return cli_usage_error(NULL, "unknown command %s", argv[1]);
    print_command_help(stdout, cmd);
    return CLI_EXIT_OK;
}
