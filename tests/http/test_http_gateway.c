/* diffsynth-http against a real daemon serving the Qwen-Image pipeline on cut, sparse models
 * (the integration harness's set): this program starts both, and a Python script (stdlib only,
 * tests/http/gateway_test.py) drives the gateway over HTTP in phases while the daemon is up,
 * down, restarted without models, and loaded again. The daemon it is given for that is
 * diffsynthd-video-test (meson.build), whose model-free test_video pipeline makes clips.
 *
 * With --clients it runs tests/http/clients_test.py instead: the official `openai` package and
 * `webuiapi` from PyPI in a private venv under the build folder (exit 77 when PyPI cannot be
 * reached). With --load, tests/http/load_test.py: 32 clients x 4 requests, memory bounded.
 * With --page, tests/http/page_test.py: the web page in headless chromium (selenium). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "test.h"

#define SCRIPT_TIMEOUT_MS 900000
#define GATEWAY_START_MS 30000
#define API_KEY "test-key-1234567890"

static it_env env;
static it_qwen_image_set set;
static const char *gateway_exe, *script_dir;
static const char *daemon_extra[3];

typedef struct gateway {
    pid_t pid;
    int port;
    char url[64];
    char log[200];
} gateway;

static gateway open_gw, keyed_gw;

/* A port the kernel has just handed out and released: free unless something takes it in
 * between, which a test machine does not. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static bool port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static int gateway_start(gateway *g, const char *name, const char *const *extra)
{
    g->port = free_port();
    if (g->port <= 0)
        return -1;
    snprintf(g->url, sizeof g->url, "http://127.0.0.1:%d", g->port);
    snprintf(g->log, sizeof g->log, "%s/%s.log", env.dir, name);
    char listen[32];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", g->port);
    const char *argv[32] = {gateway_exe, "--listen", listen, "--socket", env.socket};
    int argc = 5;
    for (size_t i = 0; extra && extra[i] && argc < 31; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    g->pid = fork();
    if (g->pid == 0) {
        FILE *log = freopen(g->log, "a", stderr);
        (void)log;
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    for (uint64_t start = it_now_ms(); it_now_ms() - start < GATEWAY_START_MS;) {
        if (port_open(g->port))
            return 0;
        int status;
        if (waitpid(g->pid, &status, WNOHANG) == g->pid) {
            fprintf(stderr, "%s exited at start\n", name);
            g->pid = 0;
            return -1;
        }
        usleep(20000);
    }
    return -1;
}

static void dump(const char *path)
{
    char *text = it_read_file(path, NULL);
    fprintf(stderr, "--- %s ---\n%s\n", path, text ? text : "(none)");
    free(text);
}

/* SIGTERM: a gateway stops cleanly (exit 0) even with requests and jobs in flight. */
static void gateway_stop(gateway *g)
{
    if (g->pid <= 0)
        return;
    kill(g->pid, SIGTERM);
    int status = -1;
    CHECK_MSG(it_wait_pid(g->pid, 30000, &status) == 0 && status == 0,
              "gateway %s did not stop cleanly (status %d)", g->url, status);
    if (status != 0)
        dump(g->log);
    g->pid = 0;
}

/* Runs the script's `phase` with the gateways' URLs; its exit status. */
static int script(const char *file, const char *phase)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", script_dir, file);
    const char *argv[] = {"/usr/bin/env", "python3", path, phase, open_gw.url, keyed_gw.url,
                          API_KEY, NULL};
    char *out = NULL, *err = NULL;
    int status = it_run(argv, NULL, SCRIPT_TIMEOUT_MS, &out, &err);
    fprintf(stderr, "--- %s %s (exit %d) ---\n%s%s", file, phase, status, out ? out : "",
            err ? err : "");
    free(out);
    free(err);
    return status;
}

static int load_models(void)
{
    char *te[] = {set.text_encoder}, *dit[] = {set.dit}, *vae[] = {set.vae};
    char id[32];
    return it_load(&env, te, 1, id, sizeof id) == 0 && it_load(&env, dit, 1, id, sizeof id) == 0 &&
                   it_load(&env, vae, 1, id, sizeof id) == 0
               ? 0
               : -1;
}

static void test_gateway(void)
{
    int status = script("gateway_test.py", "main");
    CHECK_MSG(status == 0, "the main phase failed (exit %d)", status);
    CHECK_MSG(it_daemon_alive(&env) && it_status_ok(&env), "the daemon was harmed");

    /* The daemon goes away: liveness stays, readiness and work answer 503. */
    REQUIRE(it_daemon_stop(&env, NULL) == 0);
    status = script("gateway_test.py", "down");
    CHECK_MSG(status == 0, "the down phase failed (exit %d)", status);

    /* Back without models: ready only once the required model is loaded again; the gateway
     * reconnects on its own. */
    REQUIRE(it_daemon_start(&env, daemon_extra) == 0);
    status = script("gateway_test.py", "unloaded");
    CHECK_MSG(status == 0, "the unloaded phase failed (exit %d)", status);
    REQUIRE(load_models() == 0);
    status = script("gateway_test.py", "up");
    CHECK_MSG(status == 0, "the up phase failed (exit %d)", status);
}

static void test_load(void)
{
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)keyed_gw.pid);
    setenv("DS_GATEWAY_PID", pid, 1);
    snprintf(pid, sizeof pid, "%d", (int)env.pid);
    setenv("DS_DAEMON_PID", pid, 1);
    int status = script("load_test.py", "load");
    CHECK_MSG(status == 0, "the load test failed (exit %d)", status);
    CHECK_MSG(it_daemon_alive(&env) && it_status_ok(&env), "the daemon was harmed");
}

/* A script that may skip: 77 ends the test as skipped, after stopping what it started. */
static void optional_script(const char *file, const char *phase)
{
    int status = script(file, phase);
    if (status == 77) {
        fprintf(stderr, "SKIP: %s could not run here (see above)\n", file);
        gateway_stop(&open_gw);
        gateway_stop(&keyed_gw);
        it_daemon_stop(&env, NULL);
        it_env_cleanup(&env);
        exit(77);
    }
    CHECK_MSG(status == 0, "%s failed (exit %d)", file, status);
}

static void test_clients(void) { optional_script("clients_test.py", "clients"); }

static void test_page(void) { optional_script("page_test.py", "page"); }

int main(int argc, char **argv)
{
    const char *mode = argc > 5 ? argv[5] : "";
    if (argc < 5) {
        fprintf(stderr, "usage: %s DIFFSYNTHD DIFFSYNTH DIFFSYNTH_HTTP SCRIPT_DIR [--clients|--load|--page]\n",
                argv[0]);
        return 2;
    }
    gateway_exe = argv[3];
    script_dir = argv[4];
    it_env_init(&env, argv[1]);
    if (it_make_qwen_image_set(&env, &set) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    daemon_extra[0] = "--model-configs";
    daemon_extra[1] = set.configs;
    if (it_daemon_start(&env, daemon_extra) != 0 || load_models() != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    /* A small body cap and job limit, so that the hostile and load cases reach them. */
    const char *open_args[] = {"--max-body", "2097152", "--max-jobs", "3", "--keep-jobs", "8",
                               "--require-model", "qwen_image_dit", NULL};
    const char *keyed_args[] = {"--api-key", API_KEY, "--cors", "http://example.org", NULL};
    if (gateway_start(&open_gw, "gateway", open_args) != 0 ||
        gateway_start(&keyed_gw, "gateway-keyed", keyed_args) != 0) {
        fprintf(stderr, "the gateways did not start\n");
        dump(open_gw.log);
        dump(keyed_gw.log);
        it_env_cleanup(&env);
        return 1;
    }
    if (strcmp(mode, "--clients") == 0)
        RUN(test_clients);
    else if (strcmp(mode, "--load") == 0)
        RUN(test_load);
    else if (strcmp(mode, "--page") == 0)
        RUN(test_page);
    else
        RUN(test_gateway);
    gateway_stop(&open_gw);
    gateway_stop(&keyed_gw);
    if (test_failures) {
        dump(open_gw.log);
        it_dump_log(&env);
    }
    if (it_daemon_alive(&env))
        it_daemon_stop(&env, NULL);
    it_env_cleanup(&env);
    return test_summary();
}
