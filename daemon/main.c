/* diffsynthd: options, startup, signals and shutdown. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "core/fault_guard.h"
#include "core/log.h"
#include "core/model_configs.h"
#include "daemon/dispatch.h"
#include "daemon/frame.h"
#include "daemon/pool.h"
#include "daemon/scheduler.h"
#include "daemon/server.h"
#include "proto/default_socket.h"
#include "vram/vram_config.h"

/* Exit codes: 0 after a clean shutdown, 1 when the daemon could not start (socket in use,
 * bind failure), 2 for a bad command line or a bad --model-configs file. */
#define EXIT_STARTUP 1
#define EXIT_USAGE 2
/* Byte limits: sums of them must not overflow 64 bits. */
#define BYTES_OPTION_MAX ((uint64_t)1 << 62)

typedef struct app {
    ds_daemon daemon;
    uv_signal_t sigint;
    uv_signal_t sigterm;
    int signals_open;
} app;

static void usage(FILE *out)
{
    fprintf(out,
"Usage: diffsynthd [OPTION]...\n"
"\n"
"The DiffSynth model daemon. It listens on a Unix socket, identifies model files by\n"
"DiffSynth-Studio's model hash, loads them into one shared model pool and serves every\n"
"local process that connects (the `diffsynth` CLI, UIs, scripts) over the protobuf API in\n"
"diffsynth.proto. Model files are mapped, not copied; only files inside the model roots\n"
"are accepted.\n"
"\n"
"Options:\n"
"  --socket PATH            listen on PATH (default: see below)\n"
"  --socket-group-access    make the socket mode 0660 so the owner's group may connect\n"
"                           (default: 0600, the owner only)\n"
"  --model-root DIR         accept model files under DIR; repeatable\n"
"                           (default: the working directory at start)\n"
"  --model-configs FILE     add the model configs of a JSON file to the builtin table;\n"
"                           repeatable (format: an array of objects with upstream's keys\n"
"                           model_hash, model_name, model_class, state_dict_converter,\n"
"                           extra_kwargs, quant_config)\n"
"  --max-frame-bytes N      refuse request frames longer than N bytes and close the\n"
"                           connection (default: %llu, at most %llu)\n"
"  --max-connections N      refuse connections beyond N open ones (default: %d)\n"
"  --max-connections-per-uid N\n"
"                           refuse a peer uid's connections beyond N open ones, so one\n"
"                           uid cannot take every slot (default: a quarter of\n"
"                           --max-connections, at least 1; at most --max-connections)\n"
"  --idle-timeout SECONDS   close a connection with no request in flight and nothing\n"
"                           received for SECONDS, or whose replies went unread that long\n"
"                           (fractions allowed; 0 = never; default: %d)\n"
"  --frame-timeout SECONDS  close a connection that began a frame and did not finish it\n"
"                           within SECONDS (0 = never; default: %d)\n"
"  --max-unsent-bytes N     stop reading a connection while more than N bytes of its\n"
"                           replies are unread; read again below N/2 (default: %llu)\n"
"  --max-unsent-bytes-per-uid N\n"
"                           the same for all of one uid's connections together\n"
"                           (default: %llu)\n"
"  --max-queued-inline-bytes N\n"
"                           refuse a request whose inline tensor bytes would bring its\n"
"                           connection's queued and running requests past N bytes\n"
"                           (RESOURCE_EXHAUSTED; default: %llu)\n"
"  --max-queued-inline-bytes-per-uid N\n"
"                           the same for all of one uid's connections together\n"
"                           (default: %llu)\n"
"  --backend cpu|cuda       where model steps compute (default: cpu); cuda uses GPU 0 and\n"
"                           refuses to start when this build or machine has no usable GPU\n"
"  --threads N              CPU threads for compute (default: 0 = every online CPU)\n"
"  --vram-limit GIB         stream weights through one memory budget for all models, in GiB\n"
"                           (fractions allowed; 0 = hold only the weights being computed;\n"
"                           none = no limit): device memory, or host memory on the CPU.\n"
"                           Default with --backend cuda: the GPU's free memory less\n"
"                           --vram-reserve, re-read before every pass over a model (other\n"
"                           processes share the GPU). Default on the CPU: the weights are\n"
"                           used in place, no budget (those a forward converts kept\n"
"                           converted within --convert-limit)\n"
"  --vram-reserve GIB       with --backend cuda and no --vram-limit: device memory left\n"
"                           free for others and for what the budget does not count\n"
"                           (default: 1)\n"
"  --host-limit GIB         host memory for the weights' copies at rest (the slow tier:\n"
"                           upstream's offload_device cpu, converted to offload_dtype, and\n"
"                           on a GPU pinned for fast copies); a unit past it is read from\n"
"                           its file at every copy instead, with the same values (default:\n"
"                           half the machine's memory with --backend cuda, where the copies\n"
"                           are pinned; none = no limit on the CPU). Needs the VRAM manager\n"
"  --convert-limit GIB      on the CPU without --vram-limit: host memory for weights kept\n"
"                           converted to the compute dtype (a bf16 file run at f32),\n"
"                           converted once at a model's first forward instead of at every\n"
"                           matmul, when all of that model's so converted fit in it (models\n"
"                           that fit alone but not together take turns: an idle one's are\n"
"                           dropped first); a model past it is converted at every call,\n"
"                           with the same results. Weights already in the compute dtype\n"
"                           are used in place and take none of it (default: half the\n"
"                           machine's memory; 0 = convert at every call; none = no limit).\n"
"                           Under RLIMIT_AS they also take only the address space beyond\n"
"                           the request memory limit, re-read before every unit\n"
"  --request-memory-limit GIB\n"
"                           memory for the requests' own data (inputs, activations,\n"
"                           outputs; not the weights): each RunStep and RunPipeline is\n"
"                           estimated before it is queued and refused when it would not fit\n"
"                           beside those already admitted (default: half of the memory\n"
"                           available at start, within the cgroup and RLIMIT_AS; none = no\n"
"                           limit)\n"
"  --max-jobs-per-uid N     jobs one user may have queued or running, all connections\n"
"                           together (default: %d; 0 = no cap); jobs take turns round robin\n"
"                           between users, then between a user's connections\n"
"  --log-level LEVEL        debug, info, warn or error (default: info); logs go to stderr\n"
"  --help                   print this help and exit\n"
"  --version                print the version and exit\n"
"\n"
"Socket path, first that applies: --socket, $DIFFSYNTH_SOCKET,\n"
"$XDG_RUNTIME_DIR/diffsynthd.sock, /tmp/diffsynthd-<uid>.sock. A stale socket nobody\n"
"listens on is replaced; the daemon refuses to start when another one is listening.\n"
"\n"
"Once ready it prints \"diffsynthd: listening on PATH\" to stderr. SIGINT or SIGTERM stops\n"
"it: running and queued jobs finish, new requests are refused, then it exits 0; a second\n"
"signal cancels the jobs still running. Exit status 1: could not start; 2: bad options or\n"
"a bad --model-configs file.\n"
"\n"
"Example:\n"
"  diffsynthd --model-root ~/models --socket /run/user/1000/diffsynthd.sock &\n"
"  diffsynth load ~/models/Qwen/Qwen-Image/vae/diffusion_pytorch_model.safetensors\n",
            (unsigned long long)DS_FRAME_DEFAULT_MAX, (unsigned long long)DS_FRAME_MAX_CAP,
            DS_DEFAULT_MAX_CONNECTIONS, DS_DEFAULT_IDLE_TIMEOUT_S, DS_DEFAULT_FRAME_TIMEOUT_S,
            (unsigned long long)DS_DEFAULT_MAX_UNSENT_BYTES,
            (unsigned long long)DS_DEFAULT_MAX_UNSENT_BYTES_PER_UID,
            (unsigned long long)DS_DEFAULT_MAX_QUEUED_INLINE_BYTES,
            (unsigned long long)DS_DEFAULT_MAX_QUEUED_INLINE_BYTES_PER_UID,
            DS_DEFAULT_MAX_JOBS_PER_UID);
}

static int parse_u64(const char *option, const char *text, uint64_t min, uint64_t max,
                     uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (!text[0] || *end || errno || text[0] == '-' || v < min || v > max) {
        fprintf(stderr, "diffsynthd: %s wants a whole number from %llu to %llu, not \"%s\"\n",
                option, (unsigned long long)min, (unsigned long long)max, text);
        return -1;
    }
    *out = v;
    return 0;
}

/* A duration in seconds (fractions allowed, 0 = never) as milliseconds. */
static int parse_seconds(const char *option, const char *text, uint64_t *ms)
{
    char *end;
    errno = 0;
    double s = strtod(text, &end);
    /* A day at most: longer is "never" in all but name. */
    if (!text[0] || *end || errno || !(s >= 0 && s <= 86400)) {
        fprintf(stderr, "diffsynthd: %s wants seconds from 0 to 86400 (fractions allowed), "
                "not \"%s\"\n", option, text);
        return -1;
    }
    *ms = (uint64_t)(s * 1000 + 0.5);
    if (s > 0 && *ms == 0)
        *ms = 1;
    return 0;
}

/* A GiB option (--vram-limit, --vram-reserve, --host-limit) as bytes; "none" = no limit where
 * `none_ok`. */
static int parse_gib(const char *option, const char *text, int none_ok, size_t *bytes)
{
    if (none_ok && strcmp(text, "none") == 0) {
        *bytes = DS_VRAM_UNLIMITED;
        return 0;
    }
    char *end;
    errno = 0;
    double gib = strtod(text, &end);
    ds_error err;
    if (!text[0] || *end || errno || gib < 0 || ds_vram_limit_bytes(gib, bytes, &err) != DS_OK) {
        fprintf(stderr, "diffsynthd: %s wants GiB (0 or more, fractions allowed)%s, not \"%s\"\n",
                option, none_ok ? " or none" : "", text);
        return -1;
    }
    return 0;
}

/* --log-level debug shows each eviction: which unit of which model, and its bytes. Called
 * under the manager's lock on whichever thread made room, so it only logs. */
static void log_vram_event(void *ctx, ds_vram_event_kind kind, const char *model, const char *unit,
                           size_t bytes)
{
    (void)ctx;
    if (kind == DS_VRAM_EVENT_EVICT)
        ds_log_debug("vram: evicted unit '%s' of model '%s' (%zu bytes)", unit, model, bytes);
}

static void on_handle_closed(uv_handle_t *handle) { (void)handle; }

/* The drain is over (or there was nothing to drain): flush and close everything. */
static void finish(void *arg)
{
    app *a = arg;
    ds_daemon *d = &a->daemon;
    ds_scheduler_stop(d->scheduler);
    d->scheduler = NULL;
    ds_server_close(d->server);
    d->server = NULL;
    if (a->signals_open) {
        a->signals_open = 0;
        uv_close((uv_handle_t *)&a->sigint, on_handle_closed);
        uv_close((uv_handle_t *)&a->sigterm, on_handle_closed);
    }
}

static void on_signal(uv_signal_t *handle, int signum)
{
    app *a = handle->data;
    ds_daemon *d = &a->daemon;
    if (d->shutting_down) {
        ds_log_warn("%s again: cancelling the jobs still queued or running",
                    strsignal(signum));
        ds_scheduler_cancel_owner(d->scheduler, NULL);
        return;
    }
    d->shutting_down = 1;
    size_t queued = ds_scheduler_queued(d->scheduler);
    size_t running = ds_scheduler_running(d->scheduler);
    ds_log_info("%s: shutting down after %zu queued and %zu running jobs", strsignal(signum),
                queued, running);
    ds_server_stop_listening(d->server);
    if (ds_scheduler_idle(d->scheduler))
        finish(a);
    else
        ds_scheduler_on_idle(d->scheduler, finish, a);
}

/* The request memory limit: --request-memory-limit's bytes (SIZE_MAX: "none"), or by default
 * half of what the machine, the cgroup and RLIMIT_AS leave at start; the estimates assume the
 * compute threads --threads asks for. */
static void init_admission(ds_daemon *d, const char *text, size_t bytes, int threads)
{
    char source[128];
    uint64_t limit = bytes == DS_VRAM_UNLIMITED ? UINT64_MAX : bytes;
    if (text)
        snprintf(source, sizeof source, "--request-memory-limit %s", text);
    else
        limit = ds_admission_default_limit(source, sizeof source);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    ds_admission_init(&d->admission, limit, source,
                      threads > 0 ? threads : (cpus > 0 ? (int)cpus : 1));
}

int main(int argc, char **argv)
{
    enum {
        OPT_SOCKET = 256,
        OPT_GROUP,
        OPT_ROOT,
        OPT_CONFIGS,
        OPT_MAX_FRAME,
        OPT_MAX_CONN,
        OPT_MAX_CONN_UID,
        OPT_IDLE_TIMEOUT,
        OPT_FRAME_TIMEOUT,
        OPT_MAX_UNSENT,
        OPT_MAX_UNSENT_UID,
        OPT_MAX_INLINE,
        OPT_MAX_INLINE_UID,
        OPT_LOG,
        OPT_BACKEND,
        OPT_THREADS,
        OPT_VRAM_LIMIT,
        OPT_VRAM_RESERVE,
        OPT_HOST_LIMIT,
        OPT_CONVERT_LIMIT,
        OPT_REQUEST_MEMORY,
        OPT_MAX_JOBS_PER_UID,
        OPT_HELP,
        OPT_VERSION,
    };
    static const struct option longopts[] = {
        {"socket", required_argument, NULL, OPT_SOCKET},
        {"socket-group-access", no_argument, NULL, OPT_GROUP},
        {"model-root", required_argument, NULL, OPT_ROOT},
        {"model-configs", required_argument, NULL, OPT_CONFIGS},
        {"max-frame-bytes", required_argument, NULL, OPT_MAX_FRAME},
        {"max-connections", required_argument, NULL, OPT_MAX_CONN},
        {"max-connections-per-uid", required_argument, NULL, OPT_MAX_CONN_UID},
        {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
        {"frame-timeout", required_argument, NULL, OPT_FRAME_TIMEOUT},
        {"max-unsent-bytes", required_argument, NULL, OPT_MAX_UNSENT},
        {"max-unsent-bytes-per-uid", required_argument, NULL, OPT_MAX_UNSENT_UID},
        {"max-queued-inline-bytes", required_argument, NULL, OPT_MAX_INLINE},
        {"max-queued-inline-bytes-per-uid", required_argument, NULL, OPT_MAX_INLINE_UID},
        {"log-level", required_argument, NULL, OPT_LOG},
        {"backend", required_argument, NULL, OPT_BACKEND},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"vram-limit", required_argument, NULL, OPT_VRAM_LIMIT},
        {"vram-reserve", required_argument, NULL, OPT_VRAM_RESERVE},
        {"host-limit", required_argument, NULL, OPT_HOST_LIMIT},
        {"convert-limit", required_argument, NULL, OPT_CONVERT_LIMIT},
        {"request-memory-limit", required_argument, NULL, OPT_REQUEST_MEMORY},
        {"max-jobs-per-uid", required_argument, NULL, OPT_MAX_JOBS_PER_UID},
        {"help", no_argument, NULL, OPT_HELP},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };

    ds_server_options server_opts;
    ds_server_options_default(&server_opts);
    const char **roots = calloc((size_t)argc, sizeof *roots);
    const char **config_files = calloc((size_t)argc, sizeof *config_files);
    size_t root_count = 0, config_file_count = 0;
    if (!roots || !config_files) {
        fprintf(stderr, "diffsynthd: out of memory\n");
        return EXIT_STARTUP;
    }
    int status = EXIT_USAGE;
    int use_cuda = 0;
    int threads = 0;
    int use_vram = 0;
    size_t vram_budget = DS_VRAM_UNLIMITED;
    const char *reserve_text = NULL;
    size_t vram_reserve = (size_t)1 << 30;
    const char *host_limit_text = NULL;
    size_t host_limit = DS_VRAM_UNLIMITED;
    const char *convert_limit_text = NULL;
    size_t convert_limit = DS_VRAM_UNLIMITED;
    const char *request_memory_text = NULL;
    size_t request_memory = DS_VRAM_UNLIMITED;
    uint64_t max_jobs_per_uid = DS_DEFAULT_MAX_JOBS_PER_UID;
    int opt;
    uint64_t value;
    ds_log_level level;
    int longindex = 0;
    while ((opt = getopt_long(argc, argv, "", longopts, &longindex)) != -1) {
        char name[64]; /* the option as given, for messages */
        snprintf(name, sizeof name, "--%s", longopts[longindex].name);
        switch (opt) {
        case OPT_SOCKET: server_opts.socket_path = optarg; break;
        case OPT_GROUP: server_opts.group_access = 1; break;
        case OPT_ROOT: roots[root_count++] = optarg; break;
        case OPT_CONFIGS: config_files[config_file_count++] = optarg; break;
        case OPT_MAX_FRAME:
            if (parse_u64("--max-frame-bytes", optarg, 1, DS_FRAME_MAX_CAP, &value) != 0)
                goto out_args;
            server_opts.max_frame_bytes = value;
            break;
        case OPT_MAX_CONN:
        case OPT_MAX_CONN_UID:
            if (parse_u64(name, optarg, 1, 65536, &value) != 0)
                goto out_args;
            *(opt == OPT_MAX_CONN ? &server_opts.max_connections
                                  : &server_opts.max_connections_per_uid) = (unsigned)value;
            break;
        case OPT_IDLE_TIMEOUT:
        case OPT_FRAME_TIMEOUT:
            if (parse_seconds(name, optarg,
                              opt == OPT_IDLE_TIMEOUT ? &server_opts.idle_timeout_ms
                                                      : &server_opts.frame_timeout_ms) != 0)
                goto out_args;
            break;
        case OPT_MAX_UNSENT:
        case OPT_MAX_UNSENT_UID:
        case OPT_MAX_INLINE:
        case OPT_MAX_INLINE_UID: {
            uint64_t *limit = opt == OPT_MAX_UNSENT       ? &server_opts.max_unsent_bytes
                              : opt == OPT_MAX_UNSENT_UID ? &server_opts.max_unsent_bytes_per_uid
                              : opt == OPT_MAX_INLINE     ? &server_opts.max_queued_inline_bytes
                                              : &server_opts.max_queued_inline_bytes_per_uid;
            if (parse_u64(name, optarg, 1, BYTES_OPTION_MAX, limit) != 0)
                goto out_args;
            break;
        }
        case OPT_LOG:
            if (ds_log_level_parse(optarg, &level) != 0) {
                fprintf(stderr, "diffsynthd: --log-level wants debug, info, warn or error, not \"%s\"\n",
                        optarg);
                goto out_args;
            }
            ds_log_set_level(level);
            break;
        case OPT_BACKEND:
            if (strcmp(optarg, "cpu") == 0 || strcmp(optarg, "cuda") == 0) {
                use_cuda = strcmp(optarg, "cuda") == 0;
            } else {
                fprintf(stderr, "diffsynthd: --backend wants cpu or cuda, not \"%s\"\n", optarg);
                goto out_args;
            }
            break;
        case OPT_THREADS:
            if (parse_u64("--threads", optarg, 0, 4096, &value) != 0)
                goto out_args;
            threads = (int)value;
            break;
        case OPT_VRAM_LIMIT:
            if (parse_gib("--vram-limit", optarg, 1, &vram_budget) != 0)
                goto out_args;
            use_vram = 1;
            break;
        case OPT_VRAM_RESERVE:
            if (parse_gib("--vram-reserve", optarg, 0, &vram_reserve) != 0)
                goto out_args;
            reserve_text = optarg;
            break;
        case OPT_HOST_LIMIT:
        case OPT_REQUEST_MEMORY:
            if (parse_gib(name, optarg, 1,
                          opt == OPT_HOST_LIMIT ? &host_limit : &request_memory) != 0)
                goto out_args;
            *(opt == OPT_HOST_LIMIT ? &host_limit_text : &request_memory_text) = optarg;
            break;
        case OPT_CONVERT_LIMIT:
            if (parse_gib("--convert-limit", optarg, 1, &convert_limit) != 0)
                goto out_args;
            convert_limit_text = optarg;
            break;
        case OPT_MAX_JOBS_PER_UID:
            if (parse_u64("--max-jobs-per-uid", optarg, 0, 1u << 20, &value) != 0)
                goto out_args;
            max_jobs_per_uid = value;
            break;
        case OPT_HELP:
            usage(stdout);
            status = 0;
            goto out_args;
        case OPT_VERSION:
            printf("diffsynthd %s\n", DS_VERSION);
            status = 0;
            goto out_args;
        default:
            fprintf(stderr, "Try 'diffsynthd --help'.\n");
            goto out_args;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "diffsynthd: unexpected argument \"%s\"\nTry 'diffsynthd --help'.\n",
                argv[optind]);
        goto out_args;
    }
    if (server_opts.max_connections_per_uid == 0) {
        unsigned quarter = server_opts.max_connections / 4;
        server_opts.max_connections_per_uid = quarter ? quarter : 1;
    }
    if (server_opts.max_connections_per_uid > server_opts.max_connections) {
        fprintf(stderr, "diffsynthd: --max-connections-per-uid %u is above --max-connections "
                "%u\n", server_opts.max_connections_per_uid, server_opts.max_connections);
        goto out_args;
    }
    if (reserve_text && (use_vram || !use_cuda)) {
        fprintf(stderr, "diffsynthd: --vram-reserve %s applies only to the default budget of "
                "--backend cuda, without --vram-limit\n", reserve_text);
        goto out_args;
    }
    if (host_limit_text && !use_vram && !use_cuda) {
        fprintf(stderr, "diffsynthd: --host-limit %s needs the VRAM manager: give --vram-limit "
                "too (the CPU backend runs without one by default)\n", host_limit_text);
        goto out_args;
    }

    if (convert_limit_text && (use_vram || use_cuda)) {
        fprintf(stderr, "diffsynthd: --convert-limit %s applies only to the CPU backend without "
                "--vram-limit (a VRAM manager converts within its own budget)\n",
                convert_limit_text);
        goto out_args;
    }

    /* A client that vanishes mid-write must cost an EPIPE, not the process. */
    signal(SIGPIPE, SIG_IGN);

    app a;
    memset(&a, 0, sizeof a);
    ds_daemon *d = &a.daemon;
    ds_model_roots_init(&d->roots);
    ds_config_table *table = NULL;
    ds_error err;
    ds_error_clear(&err);
    uv_loop_t loop;
    int loop_open = 0;
    char socket_buf[4096];
    char *roots_text = NULL;

    if (ds_config_table_new(&table, &err) != DS_OK) {
        fprintf(stderr, "diffsynthd: %s\n", err.message);
        status = EXIT_STARTUP;
        goto out;
    }
    for (size_t i = 0; i < config_file_count; i++) {
        if (ds_config_table_add_file(table, config_files[i], &err) != DS_OK) {
            fprintf(stderr, "diffsynthd: --model-configs %s: %s\n", config_files[i], err.message);
            status = EXIT_USAGE;
            goto out;
        }
    }
    d->configs = table;

    if (root_count == 0) {
        char *cwd = getcwd(NULL, 0);
        if (!cwd || ds_model_roots_add(&d->roots, cwd, &err) != DS_OK) {
            fprintf(stderr, "diffsynthd: cannot use the working directory as model root: %s\n",
                    cwd ? err.message : strerror(errno));
            free(cwd);
            status = EXIT_STARTUP;
            goto out;
        }
        free(cwd);
    }
    for (size_t i = 0; i < root_count; i++) {
        if (ds_model_roots_add(&d->roots, roots[i], &err) != DS_OK) {
            fprintf(stderr, "diffsynthd: --model-root: %s\n", err.message);
            status = EXIT_USAGE;
            goto out;
        }
    }

    if (!server_opts.socket_path) {
        server_opts.socket_path = ds_default_socket_path(socket_buf, sizeof socket_buf);
        if (!server_opts.socket_path) {
            fprintf(stderr, "diffsynthd: the default socket path is too long; use --socket\n");
            status = EXIT_USAGE;
            goto out;
        }
    }
    d->socket_path = server_opts.socket_path;
    d->max_frame_bytes = server_opts.max_frame_bytes;
    d->started_monotonic_ms = ds_monotonic_ms();

    int rc = uv_loop_init(&loop);
    if (rc != 0) {
        fprintf(stderr, "diffsynthd: uv_loop_init: %s\n", uv_strerror(rc));
        status = EXIT_STARTUP;
        goto out;
    }
    loop_open = 1;
    status = EXIT_STARTUP;
    /* Before any model file or client region is mapped: a file or object shrinking under us
     * then fails the request that touched it, not the daemon. */
    if (ds_fault_guard_install(&err) != DS_OK) {
        fprintf(stderr, "diffsynthd: %s\n", err.message);
        goto out;
    }
    /* Step inputs and outputs live in host memory of the CPU backend even when steps compute
     * on the GPU, so the CPU backend always exists. */
    if (ds_cpu_backend_create(threads, &d->host_backend, &err) != DS_OK) {
        fprintf(stderr, "diffsynthd: cannot create the CPU backend: %s\n", err.message);
        goto out;
    }
    d->backend = d->host_backend;
    if (use_cuda) {
        if (ds_cuda_backend_create(0, &d->backend, &err) != DS_OK) {
            d->backend = NULL;
            fprintf(stderr, "diffsynthd: --backend cuda: %s\n", err.message);
            goto out;
        }
    }
    /* A device with memory of its own gets a budget by default: its free memory, less the
     * reserve. */
    int auto_budget = !use_vram && d->backend->mem_info;
    if (use_vram || auto_budget) {
        /* Two units ahead: the next block's first phases copy while this one computes. */
        if (ds_vram_manager_create(d->backend, vram_budget, 2, &d->vram, &err) != DS_OK ||
            (auto_budget && ds_vram_set_budget_auto(d->vram, vram_reserve, &err) != DS_OK)) {
            fprintf(stderr, "diffsynthd: %s: %s\n", use_vram ? "--vram-limit" : "the VRAM budget",
                    err.message);
            goto out;
        }
        d->vram_limited = auto_budget || vram_budget != DS_VRAM_UNLIMITED;
        /* On a GPU the copies at rest are pinned, which the kernel can never page out: by
         * default they may take half the machine's memory, the rest is left to the system. */
        if (!host_limit_text && d->backend != d->host_backend) {
            long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
            if (pages > 0 && page > 0)
                host_limit = (size_t)pages / 2 * (size_t)page;
        }
        ds_vram_set_host_limit(d->vram, host_limit);
        ds_vram_set_observer(d->vram, log_vram_event, NULL);
    } else if (d->backend == d->host_backend) {
        /* Without a VRAM manager the CPU uses weights in place, so only those a forward would
         * convert at every matmul (bf16 files at f32) need memory of their own: a manager whose
         * budget holds nothing else keeps them converted. Its default leaves half the machine
         * to the mapped files, the requests and the system, as the GPU's pinned copies do; a
         * model past it is converted per call as before. */
        if (!convert_limit_text) {
            long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
            if (pages > 0 && page > 0)
                convert_limit = (size_t)pages / 2 * (size_t)page;
        }
        if (convert_limit != 0 &&
            ds_vram_manager_create(d->backend, convert_limit, 0, &d->convert, &err) != DS_OK) {
            fprintf(stderr, "diffsynthd: --convert-limit: %s\n", err.message);
            goto out;
        }
        if (d->convert)
            ds_vram_set_observer(d->convert, log_vram_event, NULL);
        d->convert_limit = convert_limit;
    }
    if (ds_pool_new(&d->pool, &err) != DS_OK ||
        ds_scheduler_new(&loop, &d->scheduler, &err) != DS_OK) {
        fprintf(stderr, "diffsynthd: %s\n", err.message);
        goto out;
    }
    ds_scheduler_set_max_jobs_per_uid(d->scheduler, (size_t)max_jobs_per_uid);
    init_admission(d, request_memory_text, request_memory, threads);
    ds_server_handlers handlers = ds_dispatch_server_handlers(d);
    if (ds_server_start(&loop, &server_opts, &handlers, &d->server, &err) != DS_OK) {
        fprintf(stderr, "diffsynthd: %s\n", err.message);
        goto out;
    }
    a.sigint.data = &a;
    a.sigterm.data = &a;
    if (uv_signal_init(&loop, &a.sigint) != 0 || uv_signal_init(&loop, &a.sigterm) != 0 ||
        uv_signal_start(&a.sigint, on_signal, SIGINT) != 0 ||
        uv_signal_start(&a.sigterm, on_signal, SIGTERM) != 0) {
        fprintf(stderr, "diffsynthd: cannot install signal handlers\n");
        a.signals_open = 1;
        finish(&a);
        goto out;
    }
    a.signals_open = 1;

    roots_text = ds_model_roots_describe(&d->roots);
    size_t config_count = ds_config_table_count(table);
    ds_log_info("diffsynthd %s, backend %s, pid %d", DS_VERSION, d->backend->name, (int)getpid());
    if (auto_budget) {
        ds_vram_stats vs;
        ds_vram_stats_get(d->vram, &vs);
        ds_log_info("vram limit: the device's free memory less %zu bytes, re-read before each "
                    "pass (now %zu bytes)", vram_reserve, vs.budget_bytes);
    } else if (d->vram && d->vram_limited)
        ds_log_info("vram limit: %zu bytes (%s memory)", vram_budget,
                    d->backend == d->host_backend ? "host" : "device");
    else if (d->vram)
        ds_log_info("vram limit: none (weights stream through the manager, never evicted)");
    if (d->convert && convert_limit == DS_VRAM_UNLIMITED)
        ds_log_info("convert limit: none (weights a forward converts are kept converted)");
    else if (d->convert)
        ds_log_info("convert limit: %zu bytes of host memory for weights kept converted to the "
                    "compute dtype", convert_limit);
    else if (d->backend == d->host_backend && !d->vram)
        ds_log_info("convert limit: 0 (weights in another dtype are converted at every call)");
    if (d->vram && host_limit != DS_VRAM_UNLIMITED)
        ds_log_info("host limit: %zu bytes for the weights' copies at rest; units past it are "
                    "read from their files", host_limit);
    if (d->admission.limit == UINT64_MAX)
        ds_log_info("request memory limit: none (%s)", d->admission.limit_source);
    else
        ds_log_info("request memory limit: %llu bytes (%s); at most %llu jobs per uid",
                    (unsigned long long)d->admission.limit, d->admission.limit_source,
                    (unsigned long long)max_jobs_per_uid);
    ds_log_info("model roots: %s%s", roots_text ? roots_text : "?",
                root_count == 0 ? " (the working directory; use --model-root to choose)" : "");
    ds_log_info("model configs: %zu (%zu builtin + %zu from %zu file%s)", config_count,
                ds_builtin_model_config_count, config_count - ds_builtin_model_config_count,
                config_file_count, config_file_count == 1 ? "" : "s");
    ds_log_info("socket %s (mode %s), max frame %llu bytes, max %u connections (%u per uid), "
                "idle timeout %llu ms, frame timeout %llu ms",
                d->socket_path, server_opts.group_access ? "0660" : "0600",
                (unsigned long long)server_opts.max_frame_bytes, server_opts.max_connections,
                server_opts.max_connections_per_uid,
                (unsigned long long)server_opts.idle_timeout_ms,
                (unsigned long long)server_opts.frame_timeout_ms);
    /* The readiness line scripts wait for: printed even when the log level hides info. */
    if (ds_log_get_level() <= DS_LOG_INFO)
        ds_log_info("diffsynthd: listening on %s", d->socket_path);
    else
        fprintf(stderr, "diffsynthd: listening on %s\n", d->socket_path);

    uv_run(&loop, UV_RUN_DEFAULT);
    ds_log_info("diffsynthd stopped");
    status = 0;

out:
    if (loop_open) {
        /* After a failed start: stop what was started and let the handles close. */
        if (d->server)
            ds_server_close(d->server);
        if (d->scheduler)
            ds_scheduler_stop(d->scheduler);
        uv_run(&loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&loop) != 0)
            ds_log_warn("event loop closed with handles still open");
    }
    ds_pool_free(d->pool);
    /* After the pool: freeing a model drops its units from the manager. */
    ds_vram_manager_destroy(d->vram);
    ds_vram_manager_destroy(d->convert);
    /* After the worker is joined: nothing computes any more. */
    if (d->backend != d->host_backend)
        ds_backend_destroy(d->backend);
    ds_backend_destroy(d->host_backend);
    ds_config_table_free(table);
    ds_model_roots_free(&d->roots);
    free(roots_text);
out_args:
    free(roots);
    free(config_files);
    return status;
}
