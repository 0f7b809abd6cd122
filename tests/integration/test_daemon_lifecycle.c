/* Start, refuse to start, and stop: the socket file's mode, a second daemon on a live socket,
 * a stale socket, a path that is not a socket, shutdown by signal with jobs in flight (they
 * drain, then the daemon exits 0 and removes its socket), and the command line. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "test.h"

#define EXIT_TIMEOUT_MS 30000
#define DRAIN_LOADS 60 /* below the 64 requests a connection may have in flight */

static it_env env;
static char **dit;
static size_t dit_n;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static bool path_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static void reset(void);

static bool wait_gone(const char *path, int timeout_ms)
{
    uint64_t deadline = it_now_ms() + (uint64_t)timeout_ms;
    while (path_exists(path)) {
        if (it_now_ms() >= deadline)
            return false;
        sleep_ms(2);
    }
    return true;
}

/* Runs the daemon on env.socket as a second process; returns its exit status. */
static int run_daemon(const char *const *extra, char **out, char **err)
{
    const char *argv[32] = {env.daemon_exe, "--socket", env.socket, "--model-root", env.models};
    int argc = 5;
    for (size_t i = 0; extra && extra[i] && argc < 31; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    return it_run(argv, NULL, EXIT_TIMEOUT_MS, out, err);
}

static void test_socket_mode(void)
{
    REQUIRE(it_daemon_start(&env, NULL) == 0);
    struct stat st;
    REQUIRE(stat(env.socket, &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK_MSG((st.st_mode & 07777) == 0600, "mode %o", (unsigned)(st.st_mode & 07777));
    CHECK(st.st_uid == getuid());
    int status = -1;
    CHECK(it_daemon_stop(&env, &status) == 0 && status == 0);
    CHECK_MSG(!path_exists(env.socket), "the socket outlived the daemon");

    const char *group[] = {"--socket-group-access", NULL};
    REQUIRE(it_daemon_start(&env, group) == 0);
    REQUIRE(stat(env.socket, &st) == 0);
    CHECK_MSG((st.st_mode & 07777) == 0660, "mode %o", (unsigned)(st.st_mode & 07777));
    CHECK(it_daemon_stop(&env, &status) == 0 && status == 0);
}

static void test_second_daemon(void)
{
    REQUIRE(it_daemon_start(&env, NULL) == 0);
    char *out = NULL, *err = NULL;
    int status = run_daemon(NULL, &out, &err);
    CHECK_MSG(status > 0 && status < 128, "second daemon exited with %d", status);
    CHECK_CONTAINS(err, "already listening");
    free(out);
    free(err);
    /* The first one is untouched. */
    CHECK(path_exists(env.socket));
    CHECK(it_daemon_alive(&env));
    CHECK(it_status_ok(&env));
    CHECK(it_daemon_stop(&env, &status) == 0 && status == 0);
}

static void test_stale_socket(void)
{
    /* A socket file nobody listens on, as a crashed daemon leaves it. */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t n = strlen(env.socket);
    REQUIRE(n < sizeof addr.sun_path);
    memcpy(addr.sun_path, env.socket, n + 1);
    REQUIRE(bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0);
    close(fd);
    struct stat st;
    REQUIRE(stat(env.socket, &st) == 0 && S_ISSOCK(st.st_mode));
    REQUIRE(it_daemon_start(&env, NULL) == 0);
    CHECK(it_status_ok(&env));
    int status = -1;
    CHECK(it_daemon_stop(&env, &status) == 0 && status == 0);
}

static void test_not_a_socket(void)
{
    REQUIRE(it_write_file(env.socket, "precious", 8) == 0);
    char *err = NULL;
    int status = run_daemon(NULL, NULL, &err);
    CHECK_MSG(status > 0 && status < 128, "daemon on a regular file exited with %d", status);
    CHECK_CONTAINS(err, env.socket);
    free(err);
    size_t len = 0;
    char *kept = it_read_file(env.socket, &len);
    CHECK_MSG(kept && len == 8 && memcmp(kept, "precious", 8) == 0,
              "the file at the socket path was changed");
    free(kept);
    unlink(env.socket);

    REQUIRE(mkdir(env.socket, 0755) == 0);
    status = run_daemon(NULL, NULL, NULL);
    CHECK_MSG(status > 0 && status < 128, "daemon on a directory exited with %d", status);
    CHECK(rmdir(env.socket) == 0);
}

static diffsynth_v1_Envelope load_request(ds_client *c)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.request_id = ds_client_next_id(c);
    req.which_body = diffsynth_v1_Envelope_load_tag;
    req.body.load.paths = dit;
    req.body.load.paths_count = (pb_size_t)dit_n;
    req.body.load.client_name = "it-drain";
    return req;
}

/* Sends DRAIN_LOADS loads of the DiT and a Status behind them; returns jobs queued + running
 * as that Status saw them (the loads were all dispatched by then), or -1. */
static int queue_loads(ds_client *c)
{
    for (int i = 0; i < DRAIN_LOADS; i++) {
        diffsynth_v1_Envelope req = load_request(c);
        if (ds_client_send(c, &req) != DS_CLIENT_OK)
            return -1;
    }
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_status_tag;
    if (it_call(c, &req, &resp) != DS_CLIENT_OK)
        return -1;
    int jobs = (int)(resp.body.status_result.jobs_queued + resp.body.status_result.jobs_running);
    ds_client_envelope_free(&resp);
    return jobs;
}

/* Receives until every load has its reply, and the reply to request `status_id` unless that is
 * 0; counts results and CANCELLED errors, and sets *status_code to the Status reply's error code
 * (0: a result; -1: none came). */
static void collect_replies(ds_client *c, uint64_t status_id, int *status_code, int *results,
                            int *cancelled, int *other)
{
    *results = *cancelled = *other = 0;
    if (status_code)
        *status_code = -1;
    while (*results + *cancelled + *other < DRAIN_LOADS || (status_id && *status_code == -1)) {
        diffsynth_v1_Envelope in;
        int rc = ds_client_recv(c, &in, EXIT_TIMEOUT_MS);
        if (rc != DS_CLIENT_OK) {
            if (!status_id || *status_code != -1)
                fprintf(stderr, "recv after %d replies: %s\n",
                        *results + *cancelled + *other, ds_client_last_error(c));
            return;
        }
        if (status_id && in.request_id == status_id)
            *status_code =
                in.which_body == diffsynth_v1_Envelope_error_tag ? (int)in.body.error.code : 0;
        else if (in.which_body == diffsynth_v1_Envelope_load_result_tag &&
                 in.body.load_result.models_count == 1)
            (*results)++;
        else if (in.which_body == diffsynth_v1_Envelope_error_tag &&
                 in.body.error.code == diffsynth_v1_Code_CANCELLED)
            (*cancelled)++;
        else if (in.which_body != diffsynth_v1_Envelope_event_tag) {
            fprintf(stderr, "unexpected reply kind %u (%s)\n", (unsigned)in.which_body,
                    in.which_body == diffsynth_v1_Envelope_error_tag && in.body.error.message
                        ? in.body.error.message
                        : "");
            (*other)++;
        }
        ds_client_envelope_free(&in);
    }
}

/* Shutting down with loads in flight races with the loads: once the first is done the others
 * take milliseconds each, and on a busy machine the worker can finish them all before the
 * daemon handles a signal, or before a request sent during the drain reaches it. Such an
 * attempt shows nothing (the daemon's log tells which it was) and is made again. */
#define ATTEMPTS 3
static bool attempt_proved;

/* The daemon's log from its last "shutting down after Q queued and R running jobs" line (the
 * first signal of the last daemon) on, malloc'd, with Q and R; NULL when there is none. */
static char *log_since_shutdown(unsigned *queued, unsigned *running)
{
    char *log = it_read_file(env.log, NULL);
    const char *needle = "shutting down after ";
    char *last = NULL;
    for (char *at = log ? strstr(log, needle) : NULL; at; at = strstr(at + 1, needle))
        last = at;
    char *out = NULL;
    if (last && sscanf(last + strlen(needle), "%u queued and %u running jobs", queued,
                       running) == 2)
        out = strdup(last);
    free(log);
    return out;
}

/* Waits until every thread of `pid` is stopped (SIGSTOP taken): /proc/PID/task/T/stat. */
static bool wait_stopped(pid_t pid)
{
    uint64_t deadline = it_now_ms() + EXIT_TIMEOUT_MS;
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    while (it_now_ms() < deadline) {
        DIR *d = opendir(dir);
        if (!d)
            return false;
        bool all = true;
        int threads = 0;
        for (struct dirent *e; (e = readdir(d));) {
            if (e->d_name[0] == '.')
                continue;
            char path[384];
            snprintf(path, sizeof path, "%s/%s/stat", dir, e->d_name);
            char *stat = it_read_file(path, NULL);
            const char *paren = stat ? strrchr(stat, ')') : NULL;
            all = all && paren && paren[1] == ' ' && (paren[2] == 'T' || paren[2] == 't');
            threads++;
            free(stat);
        }
        closedir(d);
        if (all && threads > 0)
            return true;
        sleep_ms(2);
    }
    return false;
}

static void sigterm_drains_attempt(void)
{
    attempt_proved = false;
    REQUIRE(it_daemon_start(&env, NULL) == 0);
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    REQUIRE(queue_loads(c) >= 0);
    pid_t pid = env.pid;
    REQUIRE(kill(pid, SIGTERM) == 0);
    /* Listening stops at once: the socket goes, new clients are turned away. */
    CHECK_MSG(wait_gone(env.socket, EXIT_TIMEOUT_MS), "the socket is still there");
    ds_client *late = ds_client_new();
    CHECK(ds_client_connect(late, env.socket) == DS_CLIENT_ECONNECT);
    ds_client_close(late);
    /* A new request on an open connection is refused, not queued. The drain lasts a few
     * hundred ms: the daemon is stopped while the request is sent, so that it finds the
     * request first when it continues, however long this process was off the CPU. */
    REQUIRE(kill(pid, SIGSTOP) == 0);
    bool stopped = wait_stopped(pid);
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.which_body = diffsynth_v1_Envelope_status_tag;
    req.request_id = ds_client_next_id(c);
    bool sent = stopped && ds_client_send(c, &req) == DS_CLIENT_OK;
    REQUIRE(kill(pid, SIGCONT) == 0);
    int status_code = -1, results = 0, cancelled = 0, other = 0;
    if (sent)
        collect_replies(c, req.request_id, &status_code, &results, &cancelled, &other);
    ds_client_close(c);
    int status = -1;
    CHECK_MSG(it_wait_pid(pid, EXIT_TIMEOUT_MS, &status) == 0, "the daemon did not exit");
    CHECK_MSG(status == 0, "exit status %d", status);
    env.pid = 0;
    CHECK(!path_exists(env.socket));
    unsigned queued = 0, running = 0;
    char *log = log_since_shutdown(&queued, &running);
    CHECK_MSG(log, "the daemon logged no shutdown");
    CHECK_CONTAINS(log, "diffsynthd stopped");
    char read_it[64];
    snprintf(read_it, sizeof read_it, "request %llu status\n", (unsigned long long)req.request_id);
    /* Unanswered and unread: the daemon had drained and left before the stop, or just after. */
    if (log && (status_code != -1 || strstr(log, read_it))) {
        CHECK_MSG(queued + running > 0, "the daemon had no job in flight at the signal");
        CHECK_MSG(status_code == diffsynth_v1_Code_UNAVAILABLE, "the Status got code %d",
                  status_code);
        /* Every queued load still gets its result. */
        CHECK_MSG(results == DRAIN_LOADS, "%d results, %d cancelled, %d other", results,
                  cancelled, other);
        attempt_proved = true;
    }
    free(log);
}

static void test_sigterm_drains(void)
{
    attempt_proved = false;
    for (int attempt = 1; attempt <= ATTEMPTS && !attempt_proved && !test_case_failed;
         attempt++) {
        if (attempt > 1)
            fprintf(stderr, "  attempt %d: the loads were done before the Status reached the "
                            "daemon\n", attempt);
        reset();
        sigterm_drains_attempt();
    }
    CHECK_MSG(attempt_proved || test_case_failed,
              "in %d attempts the daemon never drained loads when a request came", ATTEMPTS);
}

static void second_signal_attempt(void)
{
    attempt_proved = false;
    REQUIRE(it_daemon_start(&env, NULL) == 0);
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    REQUIRE(queue_loads(c) >= 0);
    pid_t pid = env.pid;
    /* Both signals reach the stopped daemon and are handled one right after the other when it
     * continues, however long this process is kept off the CPU. Two different signals: the
     * same one twice would merge into one while pending. */
    REQUIRE(kill(pid, SIGSTOP) == 0);
    bool stopped = wait_stopped(pid);
    CHECK(kill(pid, SIGINT) == 0 && kill(pid, SIGTERM) == 0);
    REQUIRE(kill(pid, SIGCONT) == 0);
    REQUIRE(stopped);
    int results, cancelled, other;
    collect_replies(c, 0, NULL, &results, &cancelled, &other);
    CHECK_MSG(results + cancelled == DRAIN_LOADS && other == 0,
              "%d results, %d cancelled, %d other", results, cancelled, other);
    ds_client_close(c);
    int status = -1;
    CHECK_MSG(it_wait_pid(pid, EXIT_TIMEOUT_MS, &status) == 0, "the daemon did not exit");
    CHECK_MSG(status == 0, "exit status %d", status);
    env.pid = 0;
    CHECK(!path_exists(env.socket));
    /* With loads queued at the first signal, the second, handled right after it, finds some
     * still queued (the running one may end meanwhile, and the next start). */
    unsigned queued = 0, running = 0;
    char *log = log_since_shutdown(&queued, &running);
    CHECK_MSG(log, "the daemon logged no shutdown");
    if (log && queued >= 2) {
        CHECK_MSG(cancelled > 0, "nothing was cancelled (%d results)", results);
        attempt_proved = true;
    }
    free(log);
}

static void test_second_signal_cancels(void)
{
    attempt_proved = false;
    for (int attempt = 1; attempt <= ATTEMPTS && !attempt_proved && !test_case_failed;
         attempt++) {
        if (attempt > 1)
            fprintf(stderr, "  attempt %d: no load was queued when the signals came\n", attempt);
        reset();
        second_signal_attempt();
    }
    CHECK_MSG(attempt_proved || test_case_failed,
              "in %d attempts no load was queued when the signals came", ATTEMPTS);
}

static void test_command_line(void)
{
    const char *help[] = {env.daemon_exe, "--help", NULL};
    char *out = NULL, *err = NULL;
    CHECK(it_run(help, NULL, EXIT_TIMEOUT_MS, &out, &err) == 0);
    const char *options[] = {"--socket PATH",       "--socket-group-access", "--model-root DIR",
                             "--model-configs FILE", "--max-frame-bytes N",   "--max-connections N",
                             "--log-level LEVEL",   "--help",                "--version"};
    for (size_t i = 0; i < sizeof options / sizeof options[0]; i++)
        CHECK_CONTAINS(out, options[i]);
    /* And every option the daemon parses, as its source declares them, so that a new one
     * cannot go undocumented. */
    char main_c[512];
    const char *root = getenv("DS_SOURCE_ROOT");
    snprintf(main_c, sizeof main_c, "%s/daemon/main.c", root ? root : ".");
    char *source = it_read_file(main_c, NULL);
    CHECK_MSG(source, "cannot read %s", main_c);
    const char *table = source ? strstr(source, "struct option longopts[]") : NULL;
    const char *table_end = table ? strstr(table, "};") : NULL;
    size_t declared = 0;
    for (const char *p = table; p && p < table_end && (p = strstr(p, "{\"")) && p < table_end;
         p++) {
        char name[64], flag[80];
        if (sscanf(p, "{\"%63[a-z-]\"", name) != 1)
            continue;
        snprintf(flag, sizeof flag, "--%s", name);
        CHECK_CONTAINS(out, flag);
        declared++;
    }
    CHECK_MSG(declared >= 9, "found %zu options in %s", declared, main_c);
    free(source);
    CHECK_CONTAINS(out, "listening on PATH");
    free(out);
    free(err);

    const char *version[] = {env.daemon_exe, "--version", NULL};
    CHECK(it_run(version, NULL, EXIT_TIMEOUT_MS, &out, NULL) == 0);
    CHECK_STR_EQ(out, "diffsynthd " DS_VERSION "\n");
    free(out);

    /* Usage errors exit 2 and never create the socket. */
    char missing_dir[256], bad_configs[256];
    snprintf(missing_dir, sizeof missing_dir, "%s/no-such-dir", env.dir);
    snprintf(bad_configs, sizeof bad_configs, "%s/bad-configs.json", env.dir);
    REQUIRE(it_write_file(bad_configs, "[{\"model_hash\": \"xyz\"}]", 23) == 0);
    const char *const bad[][4] = {
        {"--bogus", NULL},
        {"--max-frame-bytes", "0", NULL},
        {"--max-frame-bytes", "12abc", NULL},
        {"--max-connections", "-1", NULL},
        {"--max-connections-per-uid", "300", NULL},  /* above the global 256 */
        {"--idle-timeout", "-1", NULL},
        {"--frame-timeout", "soon", NULL},
        {"--max-unsent-bytes", "0", NULL},
        {"--max-queued-inline-bytes-per-uid", "1e9", NULL},
        {"--log-level", "loud", NULL},
        {"--model-root", missing_dir, NULL},
        {"--model-configs", bad_configs, NULL},
        {"unexpected-argument", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *e = NULL;
        int status = run_daemon(bad[i], NULL, &e);
        CHECK_MSG(status == 2, "%s %s: exit %d (%s)", bad[i][0], bad[i][1] ? bad[i][1] : "",
                  status, e ? e : "");
        CHECK_MSG(e && e[0], "%s: nothing said on stderr", bad[i][0]);
        CHECK_MSG(!path_exists(env.socket), "%s: socket created", bad[i][0]);
        free(e);
    }
}

/* A case that stopped early may leave its daemon behind: the next one needs the socket. */
static void reset(void)
{
    if (env.pid > 0) {
        kill(env.pid, SIGKILL);
        int status;
        it_wait_pid(env.pid, EXIT_TIMEOUT_MS, &status);
        env.pid = 0;
    }
    unlink(env.socket);
}

#define RUN_ALONE(fn)                                                                        \
    do {                                                                                      \
        RUN(fn);                                                                              \
        reset();                                                                              \
    } while (0)

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIFFSYNTHD [DIFFSYNTH]\n", argv[0]);
        return 2;
    }
    it_env_init(&env, argv[1]);
    if (it_make_model(&env, "qwen_image_dit", "dit", 9, &dit, &dit_n) != 0) {
        it_env_cleanup(&env);
        return 1;
    }

    RUN_ALONE(test_socket_mode);
    RUN_ALONE(test_second_daemon);
    RUN_ALONE(test_stale_socket);
    RUN_ALONE(test_not_a_socket);
    RUN_ALONE(test_sigterm_drains);
    RUN_ALONE(test_second_signal_cancels);
    RUN_ALONE(test_command_line);

    if (test_failures)
        it_dump_log(&env);
    ds_st_paths_free(dit, dit_n);
    it_env_cleanup(&env);
    return test_summary();
}
