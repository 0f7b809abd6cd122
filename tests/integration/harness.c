#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <md5.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "core/model_hash.h"
#include "core/state_dict.h"
#include "tools/keylist.h"

uint64_t it_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* --- files ---------------------------------------------------------------------------------- */

char *it_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, used = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t n = fread(buf + used, 1, cap - used - 1, f);
        used += n;
        if (n == 0)
            break;
        if (cap - used < 2) {
            char *grown = realloc(buf, cap * 2);
            if (!grown) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf) {
        buf[used] = '\0';
        if (len)
            *len = used;
    }
    return buf;
}

int it_write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return close(fd);
}

/* --- environment ---------------------------------------------------------------------------- */

void it_env_init(it_env *env, const char *daemon_exe)
{
    memset(env, 0, sizeof *env);
    env->daemon_exe = daemon_exe;
    /* Short and under /tmp: Unix socket paths are limited to 107 bytes. */
    char templ[] = "/tmp/ds-it-XXXXXX";
    char real[PATH_MAX];
    if (!mkdtemp(templ) || !realpath(templ, real) || strlen(real) >= sizeof env->dir) {
        fprintf(stderr, "cannot create a temporary directory: %s\n", strerror(errno));
        exit(1);
    }
    snprintf(env->dir, sizeof env->dir, "%s", real);
    snprintf(env->models, sizeof env->models, "%s/models", env->dir);
    snprintf(env->socket, sizeof env->socket, "%s/d.sock", env->dir);
    snprintf(env->log, sizeof env->log, "%s/daemon.log", env->dir);
    if (mkdir(env->models, 0755) != 0) {
        fprintf(stderr, "cannot create %s: %s\n", env->models, strerror(errno));
        exit(1);
    }
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

int it_finish(it_env *env, int failures)
{
    int status = -1;
    if (it_daemon_stop(env, &status) != 0 || status != 0) {
        fprintf(stderr, "FAIL the daemon did not stop cleanly (status %d)\n", status);
        failures++;
    }
    if (failures)
        it_dump_log(env);
    it_env_cleanup(env);
    return failures ? 1 : 0;
}

void it_env_cleanup(it_env *env)
{
    if (env->pid > 0) {
        kill(env->pid, SIGKILL);
        int status;
        it_wait_pid(env->pid, IT_STOP_TIMEOUT_MS, &status);
        env->pid = 0;
    }
    if (getenv("DS_IT_KEEP")) {
        fprintf(stderr, "kept %s\n", env->dir);
        return;
    }
    if (env->dir[0])
        nftw(env->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void it_dump_log(const it_env *env)
{
    char *text = it_read_file(env->log, NULL);
    fprintf(stderr, "----- daemon log %s -----\n%s\n----- end of daemon log -----\n", env->log,
            text ? text : "(unreadable)");
    free(text);
}

/* --- processes ------------------------------------------------------------------------------ */

static int decode_status(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

int it_wait_pid(pid_t pid, int timeout_ms, int *status)
{
    uint64_t deadline = it_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        int raw;
        pid_t r = waitpid(pid, &raw, WNOHANG);
        if (r == pid) {
            *status = decode_status(raw);
            return 0;
        }
        if (r < 0 && errno != EINTR)
            return -1;
        if (it_now_ms() >= deadline)
            return -1;
        sleep_ms(5);
    }
}

bool it_daemon_alive(it_env *env)
{
    if (env->pid <= 0)
        return false;
    int raw;
    pid_t r = waitpid(env->pid, &raw, WNOHANG);
    if (r == env->pid) {
        fprintf(stderr, "the daemon (pid %d) exited with status %d\n", (int)env->pid,
                decode_status(raw));
        env->pid = 0;
        return false;
    }
    return true;
}

int it_daemon_start(it_env *env, const char *const *extra)
{
    const char *argv[64];
    int argc = 0;
    argv[argc++] = env->daemon_exe;
    argv[argc++] = "--socket";
    argv[argc++] = env->socket;
    argv[argc++] = "--model-root";
    argv[argc++] = env->models;
    argv[argc++] = "--log-level";
    argv[argc++] = "debug";
    for (size_t i = 0; extra && extra[i] && argc < 63; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;

    int log_fd = open(env->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) {
        fprintf(stderr, "cannot open %s: %s\n", env->log, strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(log_fd);
        return -1;
    }
    if (pid == 0) {
        int null_fd = open("/dev/null", O_RDWR);
        dup2(null_fd, STDIN_FILENO);
        dup2(null_fd, STDOUT_FILENO);
        dup2(log_fd, STDERR_FILENO);
        if (env->daemon_address_space) {
            struct rlimit rl = {env->daemon_address_space, env->daemon_address_space};
            if (setrlimit(RLIMIT_AS, &rl) != 0) {
                fprintf(stderr, "setrlimit(RLIMIT_AS): %s\n", strerror(errno));
                _exit(127);
            }
        }
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(log_fd);
    env->pid = pid;

    uint64_t deadline = it_now_ms() + IT_START_TIMEOUT_MS;
    while (it_now_ms() < deadline) {
        if (!it_daemon_alive(env)) {
            it_dump_log(env);
            return -1;
        }
        struct stat st;
        if (stat(env->socket, &st) == 0 && S_ISSOCK(st.st_mode) && it_status_ok(env))
            return 0;
        sleep_ms(10);
    }
    fprintf(stderr, "the daemon did not answer Status on %s within %d ms\n", env->socket,
            IT_START_TIMEOUT_MS);
    it_dump_log(env);
    kill(pid, SIGKILL);
    int status;
    it_wait_pid(pid, IT_STOP_TIMEOUT_MS, &status);
    env->pid = 0;
    return -1;
}

int it_daemon_stop(it_env *env, int *exit_status)
{
    if (env->pid <= 0)
        return -1;
    kill(env->pid, SIGTERM);
    int status;
    if (it_wait_pid(env->pid, IT_STOP_TIMEOUT_MS, &status) != 0) {
        fprintf(stderr, "the daemon did not exit within %d ms of SIGTERM\n", IT_STOP_TIMEOUT_MS);
        kill(env->pid, SIGKILL);
        it_wait_pid(env->pid, IT_STOP_TIMEOUT_MS, &status);
        env->pid = 0;
        it_dump_log(env);
        return -1;
    }
    env->pid = 0;
    if (status != 0) {
        fprintf(stderr, "the daemon exited with status %d\n", status);
        it_dump_log(env);
    }
    if (exit_status)
        *exit_status = status;
    return 0;
}

/* Drains a pipe into a growing buffer; returns 0 at EOF, 1 when more may come. */
static int drain(int fd, char **buf, size_t *len, size_t *cap)
{
    char chunk[4096];
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n < 0)
        return errno == EINTR || errno == EAGAIN ? 1 : 0;
    if (n == 0)
        return 0;
    if (*len + (size_t)n + 1 > *cap) {
        size_t cap2 = (*cap ? *cap * 2 : 8192) + (size_t)n;
        char *grown = realloc(*buf, cap2);
        if (!grown)
            return 0;
        *buf = grown;
        *cap = cap2;
    }
    memcpy(*buf + *len, chunk, (size_t)n);
    *len += (size_t)n;
    (*buf)[*len] = '\0';
    return 1;
}

int it_run(const char *const *argv, const char *cwd, int timeout_ms, char **out, char **err)
{
    int out_pipe[2], err_pipe[2];
    if (out)
        *out = NULL;
    if (err)
        *err = NULL;
    if (pipe2(out_pipe, O_CLOEXEC) != 0)
        return -1;
    if (pipe2(err_pipe, O_CLOEXEC) != 0) {
        close(out_pipe[0]);
        close(out_pipe[1]);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int null_fd = open("/dev/null", O_RDONLY);
        dup2(null_fd, STDIN_FILENO);
        dup2(out_pipe[1], STDOUT_FILENO);
        dup2(err_pipe[1], STDERR_FILENO);
        if (cwd && chdir(cwd) != 0)
            _exit(126);
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(out_pipe[1]);
    close(err_pipe[1]);
    char *bufs[2] = {NULL, NULL};
    size_t lens[2] = {0, 0}, caps[2] = {0, 0};
    int open_fds[2] = {out_pipe[0], err_pipe[0]};
    uint64_t deadline = it_now_ms() + (uint64_t)timeout_ms;
    bool timed_out = false;
    while (open_fds[0] >= 0 || open_fds[1] >= 0) {
        uint64_t now = it_now_ms();
        if (now >= deadline) {
            timed_out = true;
            break;
        }
        struct pollfd pfd[2];
        for (int i = 0; i < 2; i++)
            pfd[i] = (struct pollfd){.fd = open_fds[i], .events = POLLIN};
        int n = poll(pfd, 2, (int)(deadline - now));
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2; i++) {
            if (open_fds[i] >= 0 && (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))) {
                if (!drain(open_fds[i], &bufs[i], &lens[i], &caps[i])) {
                    close(open_fds[i]);
                    open_fds[i] = -1;
                }
            }
        }
    }
    for (int i = 0; i < 2; i++)
        if (open_fds[i] >= 0)
            close(open_fds[i]);
    int status = -1;
    if (timed_out) {
        fprintf(stderr, "%s ran past %d ms; killed\n", argv[0], timeout_ms);
        kill(pid, SIGKILL);
        it_wait_pid(pid, IT_STOP_TIMEOUT_MS, &status);
        status = -1;
    } else if (it_wait_pid(pid, timeout_ms, &status) != 0) {
        kill(pid, SIGKILL);
        it_wait_pid(pid, IT_STOP_TIMEOUT_MS, &status);
        status = -1;
    }
    for (int i = 0; i < 2; i++)
        if (!bufs[i])
            bufs[i] = calloc(1, 1);
    if (out)
        *out = bufs[0];
    else
        free(bufs[0]);
    if (err)
        *err = bufs[1];
    else
        free(bufs[1]);
    return status;
}

/* --- client --------------------------------------------------------------------------------- */

ds_client *it_connect(const it_env *env)
{
    ds_client *c = ds_client_new();
    if (!c)
        return NULL;
    if (ds_client_connect(c, env->socket) != DS_CLIENT_OK) {
        fprintf(stderr, "connect %s: %s\n", env->socket, ds_client_last_error(c));
        ds_client_close(c);
        return NULL;
    }
    return c;
}

int it_call(ds_client *c, diffsynth_v1_Envelope *req, diffsynth_v1_Envelope *resp)
{
    if (req->request_id == 0)
        req->request_id = ds_client_next_id(c);
    return ds_client_call(c, req, resp, IT_CALL_TIMEOUT_MS, NULL, NULL);
}

long long it_tier_bytes(const it_env *env, const char *id, const char *tier)
{
    ds_client *c = it_connect(env);
    if (!c)
        return -1;
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_list_models_tag;
    long long bytes = -1;
    if (it_call(c, &req, &resp) == DS_CLIENT_OK) {
        const diffsynth_v1_ListModelsResponse *r = &resp.body.list_models_result;
        for (pb_size_t i = 0; i < r->models_count; i++)
            if (strcmp(r->models[i].model_id, id) == 0)
                for (pb_size_t t = 0; t < r->models[i].tiers_count; t++)
                    if (strcmp(r->models[i].tiers[t].tier, tier) == 0)
                        bytes = (long long)r->models[i].tiers[t].bytes;
    }
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    return bytes;
}

bool it_status_ok(const it_env *env)
{
    ds_client *c = ds_client_new();
    if (!c)
        return false;
    bool ok = false;
    if (ds_client_connect(c, env->socket) == DS_CLIENT_OK) {
        diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
        req.which_body = diffsynth_v1_Envelope_status_tag;
        if (it_call(c, &req, &resp) == DS_CLIENT_OK) {
            ok = resp.which_body == diffsynth_v1_Envelope_status_result_tag;
            ds_client_envelope_free(&resp);
        }
    }
    ds_client_close(c);
    return ok;
}

/* Appends printf output to a malloc'd string. */
static void append(char **s, size_t *len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void append(char **s, size_t *len, const char *fmt, ...)
{
    if (!*s)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *piece = NULL;
    int n = vasprintf(&piece, fmt, ap);
    va_end(ap);
    char *grown = n < 0 ? NULL : realloc(*s, *len + (size_t)n + 1);
    if (!grown) {
        free(piece);
        free(*s);
        *s = NULL;
        return;
    }
    memcpy(grown + *len, piece, (size_t)n + 1);
    *len += (size_t)n;
    *s = grown;
    free(piece);
}

char *it_pool_snapshot(const it_env *env)
{
    ds_client *c = it_connect(env);
    if (!c)
        return NULL;
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_list_models_tag;
    int rc = it_call(c, &req, &resp);
    if (rc != DS_CLIENT_OK) {
        fprintf(stderr, "ListModels: %s\n", ds_client_last_error(c));
        ds_client_close(c);
        return NULL;
    }
    char *s = calloc(1, 1);
    size_t len = 0;
    const diffsynth_v1_ListModelsResponse *r = &resp.body.list_models_result;
    for (pb_size_t i = 0; i < r->models_count; i++) {
        const diffsynth_v1_LoadedModel *m = &r->models[i];
        append(&s, &len, "%s %s %s [", m->model_id ? m->model_id : "",
               m->model_name ? m->model_name : "", m->model_hash ? m->model_hash : "");
        for (pb_size_t k = 0; k < m->clients_count; k++)
            append(&s, &len, "%s%s", k ? "," : "", m->clients[k]);
        append(&s, &len, "] [");
        for (pb_size_t k = 0; k < m->paths_count; k++)
            append(&s, &len, "%s%s", k ? "," : "", m->paths[k]);
        append(&s, &len, "]\n");
    }
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    return s;
}

/* --- model files ---------------------------------------------------------------------------- */

int it_make_model(const it_env *env, const char *stem, const char *name, int shards,
                  char ***paths, size_t *count)
{
    const char *data = getenv("DS_TEST_DATA");
    char list[PATH_MAX], out[PATH_MAX];
    snprintf(list, sizeof list, "%s/keylists/%s.json", data ? data : "tests/data", stem);
    snprintf(out, sizeof out, "%s/%s", env->models, name);
    ds_state_dict sd;
    ds_state_dict_init(&sd);
    ds_error err;
    *paths = NULL;
    *count = 0;
    int rc = ds_keylist_load(list, DS_BF16, &sd, &err);
    if (rc == DS_OK)
        rc = ds_st_write_model(out, &sd, shards, DS_ST_FILL_SPARSE, 0, paths, count, &err);
    ds_state_dict_free(&sd);
    if (rc != DS_OK) {
        fprintf(stderr, "writing %s from %s: %s\n", out, list, err.message);
        return -1;
    }
    return 0;
}

int it_write_tensors(const char *path, const it_tensor *tensors, size_t count, ds_st_fill fill)
{
    ds_state_dict sd;
    ds_state_dict_init(&sd);
    ds_error err;
    int rc = DS_OK;
    for (size_t i = 0; i < count && rc == DS_OK; i++) {
        ds_tensor_view view;
        rc = ds_tensor_view_declare(&view, DS_F32, tensors[i].ndim, tensors[i].shape);
        if (rc == DS_OK)
            rc = ds_state_dict_put_tensor(&sd, tensors[i].name, &view);
    }
    if (rc == DS_OK)
        rc = ds_st_write(path, &sd, 0, sd.count, fill, 1, &err);
    else
        snprintf(err.message, sizeof err.message, "cannot declare the tensors");
    ds_state_dict_free(&sd);
    if (rc != DS_OK) {
        fprintf(stderr, "writing %s: %s\n", path, err.message);
        return -1;
    }
    return 0;
}

static int compare_strings(const void *a, const void *b)
{
    /* strcmp compares as unsigned char: Python's code-point order on UTF-8. */
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int it_model_hash(const it_tensor *tensors, size_t count, char hex[33])
{
    char **items = calloc(count * 2 + 1, sizeof *items);
    int rc = items ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < count; i++) {
        char dims[128] = "";
        size_t used = 0;
        for (int d = 0; d < tensors[i].ndim && used < sizeof dims; d++)
            used += (size_t)snprintf(dims + used, sizeof dims - used, "%s%lld", d ? "_" : "",
                                     (long long)tensors[i].shape[d]);
        if (asprintf(&items[2 * i], "%s:%s", tensors[i].name, dims) < 0 ||
            !(items[2 * i + 1] = strdup(tensors[i].name)))
            rc = -1;
    }
    if (rc == 0) {
        qsort(items, count * 2, sizeof *items, compare_strings);
        MD5_CTX ctx;
        MD5Init(&ctx);
        for (size_t i = 0; i < count * 2; i++) {
            if (i)
                MD5Update(&ctx, (const uint8_t *)",", 1);
            MD5Update(&ctx, (const uint8_t *)items[i], strlen(items[i]));
        }
        uint8_t digest[MD5_DIGEST_LENGTH];
        MD5Final(digest, &ctx);
        for (int i = 0; i < MD5_DIGEST_LENGTH; i++)
            snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    }
    for (size_t i = 0; items && i < count * 2; i++)
        free(items[i]);
    free(items);
    return rc;
}

/* --- raw sockets ---------------------------------------------------------------------------- */

int it_raw_connect(const char *socket_path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket_path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int it_raw_write(int fd, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int it_encode_frame(const diffsynth_v1_Envelope *env, uint8_t **out, size_t *len)
{
    size_t size;
    if (!pb_get_encoded_size(&size, diffsynth_v1_Envelope_fields, env) || size > UINT32_MAX)
        return -1;
    uint8_t *buf = malloc(4 + size);
    if (!buf)
        return -1;
    pb_ostream_t stream = pb_ostream_from_buffer(buf + 4, size);
    if (!pb_encode(&stream, diffsynth_v1_Envelope_fields, env)) {
        free(buf);
        return -1;
    }
    for (int i = 0; i < 4; i++)
        buf[i] = (uint8_t)(size >> (8 * i));
    *out = buf;
    *len = 4 + size;
    return 0;
}

/* Reads exactly len bytes before the deadline: 0, 1 on EOF before the first byte, -1. */
static int read_exact(int fd, uint8_t *buf, size_t len, uint64_t deadline)
{
    size_t have = 0;
    while (have < len) {
        uint64_t now = it_now_ms();
        if (now >= deadline)
            return -1;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int n = poll(&pfd, 1, (int)(deadline - now));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        ssize_t r = recv(fd, buf + have, len - have, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return have == 0 ? 1 : -1;
        if (r < 0)
            return -1;
        have += (size_t)r;
    }
    return 0;
}

int it_raw_read_frame(int fd, diffsynth_v1_Envelope *env, int timeout_ms)
{
    memset(env, 0, sizeof *env);
    uint64_t deadline = it_now_ms() + (uint64_t)timeout_ms;
    uint8_t header[4];
    int rc = read_exact(fd, header, 4, deadline);
    if (rc != 0)
        return rc;
    uint32_t len = (uint32_t)header[0] | (uint32_t)header[1] << 8 | (uint32_t)header[2] << 16 |
                   (uint32_t)header[3] << 24;
    if (len > (64u << 20))
        return -1;
    uint8_t *body = malloc(len ? len : 1);
    if (!body)
        return -1;
    if (read_exact(fd, body, len, deadline) != 0) {
        free(body);
        return -1;
    }
    pb_istream_t stream = pb_istream_from_buffer(body, len);
    bool ok = pb_decode(&stream, diffsynth_v1_Envelope_fields, env);
    free(body);
    if (!ok) {
        /* pb_decode has already released what it allocated. */
        memset(env, 0, sizeof *env);
        return -1;
    }
    return 0;
}

bool it_raw_wait_eof(int fd, int timeout_ms)
{
    uint64_t deadline = it_now_ms() + (uint64_t)timeout_ms;
    uint8_t buf[4096];
    for (;;) {
        uint64_t now = it_now_ms();
        if (now >= deadline)
            return false;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int n = poll(&pfd, 1, (int)(deadline - now));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return true;
        if (r < 0 && errno != EINTR)
            return false;
    }
}

int it_keylist_cut(const char *stem, const char *prefix, long blocks, ds_state_dict *out)
{
    const char *data = getenv("DS_TEST_DATA");
    char list[512];
    snprintf(list, sizeof list, "%s/keylists/%s.json", data ? data : "tests/data", stem);
    ds_state_dict full;
    ds_state_dict_init(&full);
    ds_state_dict_init(out);
    ds_error err;
    int rc = ds_keylist_load(list, DS_BF16, &full, &err);
    size_t skip = strlen(prefix);
    for (size_t i = 0; rc == DS_OK && i < full.count; i++) {
        const ds_sd_entry *e = &full.entries[i];
        if (strncmp(e->name, prefix, skip) == 0 && strtol(e->name + skip, NULL, 10) >= blocks)
            continue;
        rc = ds_state_dict_put_tensor(out, e->name, &e->tensor);
    }
    if (rc != DS_OK)
        fprintf(stderr, "cutting key list %s to %ld blocks: %s\n", stem, blocks, err.message);
    ds_state_dict_free(&full);
    return rc == DS_OK ? 0 : -1;
}

int it_state_dict_hash(const ds_state_dict *sd, char hex[33])
{
    it_tensor *keys = calloc(sd->count ? sd->count : 1, sizeof *keys);
    if (!keys)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < sd->count && rc == 0; i++) {
        const ds_sd_entry *e = &sd->entries[i];
        if (e->tensor.ndim > 4) {
            fprintf(stderr, "%s has %d dims; it_model_hash takes at most 4\n", e->name,
                    e->tensor.ndim);
            rc = -1;
        }
        keys[i].name = e->name;
        keys[i].ndim = e->tensor.ndim;
        for (int d = 0; d < e->tensor.ndim && d < 4; d++)
            keys[i].shape[d] = e->tensor.shape[d];
    }
    if (rc == 0)
        rc = it_model_hash(keys, sd->count, hex);
    free(keys);
    return rc;
}

int it_write_cut(const char *stem, const char *prefix, const char *path, char hash[33])
{
    ds_state_dict cut;
    if (it_keylist_cut(stem, prefix, 1, &cut) != 0)
        return -1;
    ds_error err;
    int rc = DS_OK;
    if (ds_model_hash(&cut, hash) != DS_OK)
        rc = ds_error_set(&err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory hashing %s", stem);
    if (rc == DS_OK)
        rc = ds_st_write(path, &cut, 0, cut.count, DS_ST_FILL_SPARSE, 0, &err);
    if (rc != DS_OK)
        fprintf(stderr, "writing %s cut to one block: %s\n", stem, err.message);
    ds_state_dict_free(&cut);
    return rc == DS_OK ? 0 : -1;
}

int it_load(const it_env *env, char **paths, size_t n, char *id, size_t id_size)
{
    ds_client *c = it_connect(env);
    if (!c)
        return -1;
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_load_tag;
    req.body.load.paths = paths;
    req.body.load.paths_count = (pb_size_t)n;
    int rc = it_call(c, &req, &resp);
    if (rc == DS_CLIENT_OK && resp.body.load_result.models_count > 0)
        snprintf(id, id_size, "%s", resp.body.load_result.models[0].model_id);
    else
        fprintf(stderr, "load failed: %s\n", ds_client_last_error(c));
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    return rc == DS_CLIENT_OK ? 0 : -1;
}

static int make_dirs(const it_env *env)
{
    static const char *const sub[] = {"Qwen-Image", "Qwen-Image/text_encoder",
                                      "Qwen-Image/transformer", "Qwen-Image/vae",
                                      "Qwen-Image/tokenizer"};
    char path[256];
    for (size_t i = 0; i < sizeof sub / sizeof sub[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", env->models, sub[i]);
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "mkdir %s: %s\n", path, strerror(errno));
            return -1;
        }
    }
    return 0;
}

static int copy_tokenizer(const char *dir)
{
    const char *data = getenv("DS_TEST_DATA");
    static const char *const names[] = {"tokenizer.json", "tokenizer_config.json"};
    for (size_t i = 0; i < 2; i++) {
        char from[512], to[512];
        snprintf(from, sizeof from, "%s/qwen_tokenizer/%s", data ? data : "tests/data", names[i]);
        snprintf(to, sizeof to, "%s/%s", dir, names[i]);
        size_t len = 0;
        char *text = it_read_file(from, &len);
        int rc = text ? it_write_file(to, text, len) : -1;
        free(text);
        if (rc != 0) {
            fprintf(stderr, "cannot copy %s\n", from);
            return -1;
        }
    }
    return 0;
}

int it_make_qwen_image_set(const it_env *env, it_qwen_image_set *out)
{
    char dit_hash[DS_MODEL_HASH_HEX], te_hash[DS_MODEL_HASH_HEX];
    snprintf(out->dit, sizeof out->dit, "%s/Qwen-Image/transformer/model.safetensors",
             env->models);
    snprintf(out->text_encoder, sizeof out->text_encoder,
             "%s/Qwen-Image/text_encoder/model.safetensors", env->models);
    snprintf(out->tokenizer, sizeof out->tokenizer, "%s/Qwen-Image/tokenizer", env->models);
    snprintf(out->configs, sizeof out->configs, "%s/configs.json", env->dir);
    if (make_dirs(env) != 0 || copy_tokenizer(out->tokenizer) != 0 ||
        it_write_cut("qwen_image_dit", "transformer_blocks.", out->dit, dit_hash) != 0 ||
        it_write_cut("qwen_image_text_encoder_raw", "model.layers.", out->text_encoder,
                     te_hash) != 0)
        return -1;
    char **paths = NULL;
    size_t count = 0;
    if (it_make_model(env, "qwen_image_vae", "Qwen-Image/vae/model", 1, &paths, &count) != 0)
        return -1;
    snprintf(out->vae, sizeof out->vae, "%s", paths[0]);
    ds_st_paths_free(paths, count);
    char configs[1024];
    snprintf(configs, sizeof configs,
             "[{\"model_hash\": \"%s\", \"model_name\": \"qwen_image_dit\", "
             "\"model_class\": \"diffsynth.models.qwen_image_dit.QwenImageDiT\", "
             "\"extra_kwargs\": {\"num_layers\": 1}},\n"
             " {\"model_hash\": \"%s\", \"model_name\": \"qwen_image_text_encoder\", "
             "\"model_class\": "
             "\"diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder\", "
             "\"state_dict_converter\": \"diffsynth.utils.state_dict_converters."
             "qwen_image_text_encoder.QwenImageTextEncoderStateDictConverter\", "
             "\"extra_kwargs\": {\"num_hidden_layers\": 1}}]\n",
             dit_hash, te_hash);
    return it_write_file(out->configs, configs, strlen(configs));
}

int it_make_wan_video_set(const it_env *env, it_wan_video_set *out)
{
    static const char *const sub[] = {"Wan2.1", "Wan2.1/google", "Wan2.1/google/umt5-xxl"};
    char path[512], dit_hash[DS_MODEL_HASH_HEX], te_hash[DS_MODEL_HASH_HEX];
    for (size_t i = 0; i < sizeof sub / sizeof sub[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", env->models, sub[i]);
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "mkdir %s: %s\n", path, strerror(errno));
            return -1;
        }
    }
    const char *data = getenv("DS_TEST_DATA");
    char from[512];
    snprintf(from, sizeof from, "%s/wan_tokenizer/spiece.model", data ? data : "tests/data");
    snprintf(path, sizeof path, "%s/Wan2.1/google/umt5-xxl/spiece.model", env->models);
    size_t len = 0;
    char *model = it_read_file(from, &len);
    int rc = model ? it_write_file(path, model, len) : -1;
    free(model);
    if (rc != 0) {
        fprintf(stderr, "cannot copy %s\n", from);
        return -1;
    }
    snprintf(out->text_encoder, sizeof out->text_encoder,
             "%s/Wan2.1/models_t5_umt5-xxl-enc-bf16.safetensors", env->models);
    snprintf(out->dit, sizeof out->dit, "%s/Wan2.1/diffusion_pytorch_model.safetensors",
             env->models);
    snprintf(out->configs, sizeof out->configs, "%s/wan_configs.json", env->dir);
    if (it_write_cut("wan2.1_text_encoder", "blocks.", out->text_encoder, te_hash) != 0 ||
        it_write_cut("wan2.1_t2v_1.3b", "blocks.", out->dit, dit_hash) != 0)
        return -1;
    char **paths = NULL;
    size_t count = 0;
    if (it_make_model(env, "wan2.1_vae", "Wan2.1/Wan2.1_VAE", 1, &paths, &count) != 0)
        return -1;
    snprintf(out->vae, sizeof out->vae, "%s", paths[0]);
    ds_st_paths_free(paths, count);
    char configs[1536];
    snprintf(configs, sizeof configs,
             "[{\"model_hash\": \"%s\", \"model_name\": \"wan_video_text_encoder\", "
             "\"model_class\": \"diffsynth.models.wan_video_text_encoder.WanTextEncoder\", "
             "\"extra_kwargs\": {\"num_layers\": 1}},\n"
             " {\"model_hash\": \"%s\", \"model_name\": \"wan_video_dit\", "
             "\"model_class\": \"diffsynth.models.wan_video_dit.WanModel\", "
             "\"extra_kwargs\": {\"has_image_input\": false, \"patch_size\": [1, 2, 2], "
             "\"in_dim\": 16, \"dim\": 1536, \"ffn_dim\": 8960, \"freq_dim\": 256, "
             "\"text_dim\": 4096, \"out_dim\": 16, \"num_heads\": 12, \"num_layers\": 1, "
             "\"eps\": 1e-6}}]\n",
             te_hash, dit_hash);
    return it_write_file(out->configs, configs, strlen(configs));
}

int it_pool_id(const char *snapshot, const char *name, char *id, size_t size)
{
    for (const char *line = snapshot; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char row[1024], rid[32], rname[128];
        snprintf(row, sizeof row, "%.*s", (int)len, line);
        if (sscanf(row, "%31s %127s", rid, rname) == 2 && strcmp(rname, name) == 0) {
            snprintf(id, size, "%s", rid);
            return 0;
        }
        line = end ? end + 1 : NULL;
    }
    return -1;
}
