/* libdiffsynth-client: framing, request/reply matching and errors over nanopb. */
#include "client/diffsynth_client.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "client/client_internal.h"
#include "proto/default_socket.h"

/* Growth step of the receive buffer: most replies fit, big ones grow it to their length. */
#define READ_CHUNK 65536

struct ds_client {
    int fd;
    /* Set after a failure that leaves the byte stream out of step (oversized length, EOF, I/O
     * error): later calls fail with the same status instead of misreading the stream. */
    int broken_status;
    uint64_t next_id;
    uint32_t max_frame;
    int last_code;
    char *error;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    unsigned char *rbuf;   /* bytes read but not yet consumed: partial and whole frames */
    size_t rlen;
    size_t rcap;
    diffsynth_v1_Envelope *pending;  /* frames ds_client_call set aside, oldest first */
    size_t pending_count;
};

static const char *const code_names[] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *ds_client_code_name(int code)
{
    if (code < 0 || (size_t)code >= sizeof code_names / sizeof code_names[0])
        return "UNKNOWN";
    return code_names[code];
}

static const char *body_name(pb_size_t tag)
{
    switch (tag) {
    case diffsynth_v1_Envelope_error_tag: return "error";
    case diffsynth_v1_Envelope_event_tag: return "event";
    case diffsynth_v1_Envelope_identify_tag: return "identify";
    case diffsynth_v1_Envelope_identify_result_tag: return "identify_result";
    case diffsynth_v1_Envelope_load_tag: return "load";
    case diffsynth_v1_Envelope_load_result_tag: return "load_result";
    case diffsynth_v1_Envelope_unload_tag: return "unload";
    case diffsynth_v1_Envelope_unload_result_tag: return "unload_result";
    case diffsynth_v1_Envelope_list_models_tag: return "list_models";
    case diffsynth_v1_Envelope_list_models_result_tag: return "list_models_result";
    case diffsynth_v1_Envelope_status_tag: return "status";
    case diffsynth_v1_Envelope_status_result_tag: return "status_result";
    case diffsynth_v1_Envelope_cancel_tag: return "cancel";
    case diffsynth_v1_Envelope_cancel_result_tag: return "cancel_result";
    case diffsynth_v1_Envelope_list_configs_tag: return "list_configs";
    case diffsynth_v1_Envelope_list_configs_result_tag: return "list_configs_result";
    case diffsynth_v1_Envelope_list_pipelines_tag: return "list_pipelines";
    case diffsynth_v1_Envelope_list_pipelines_result_tag: return "list_pipelines_result";
    case diffsynth_v1_Envelope_run_step_tag: return "run_step";
    case diffsynth_v1_Envelope_run_step_result_tag: return "run_step_result";
    case diffsynth_v1_Envelope_run_pipeline_tag: return "run_pipeline";
    case diffsynth_v1_Envelope_run_pipeline_result_tag: return "run_pipeline_result";
    case 0: return "an empty body";
    default: return "an unknown body";
    }
}

static int record(ds_client *c, int status, bool broken, const char *fmt, va_list ap)
{
    char *msg = NULL;
    free(c->error);
    c->error = vasprintf(&msg, fmt, ap) >= 0 ? msg : NULL;
    c->last_code = 0;
    if (broken)
        c->broken_status = status;
    return status;
}

static int fail(ds_client *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(ds_client *c, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    record(c, status, false, fmt, ap);
    va_end(ap);
    return status;
}

int ds__client_fail(ds_client *c, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    record(c, status, false, fmt, ap);
    va_end(ap);
    return status;
}

int ds__client_daemon_error(ds_client *c, const diffsynth_v1_Error *e)
{
    fail(c, DS_CLIENT_EDAEMON, "%s", e->message ? e->message : "");
    c->last_code = (int)e->code;
    return DS_CLIENT_EDAEMON;
}

/* Records a failure after which the byte stream cannot be trusted. */
static int fail_broken(ds_client *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail_broken(ds_client *c, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    record(c, status, true, fmt, ap);
    va_end(ap);
    return status;
}

ds_client *ds_client_new(void)
{
    ds_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->fd = -1;
    c->max_frame = DS_CLIENT_DEFAULT_MAX_FRAME;
    return c;
}

static void drop_pending(ds_client *c)
{
    for (size_t i = 0; i < c->pending_count; i++)
        pb_release(diffsynth_v1_Envelope_fields, &c->pending[i]);
    c->pending_count = 0;
}

static void disconnect(ds_client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->broken_status = 0;
    c->rlen = 0;
    drop_pending(c);
}

int ds_client_connect(ds_client *client, const char *socket_path)
{
    if (!client)
        return DS_CLIENT_EINVAL;
    disconnect(client);
    char buf[sizeof client->path];
    const char *path = socket_path;
    if (!path) {
        path = ds_default_socket_path(buf, sizeof buf);
        if (!path)
            return fail(client, DS_CLIENT_EINVAL,
                        "default socket path is longer than the %zu bytes a Unix socket allows",
                        sizeof buf - 1);
    }
    size_t len = strlen(path);
    if (len == 0)
        return fail(client, DS_CLIENT_EINVAL, "empty socket path");
    if (len >= sizeof client->path)
        return fail(client, DS_CLIENT_EINVAL,
                    "socket path %s is %zu bytes long; a Unix socket path holds at most %zu", path,
                    len, sizeof client->path - 1);
    memcpy(client->path, path, len + 1);

    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, len + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail(client, DS_CLIENT_ECONNECT, "cannot create a socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        int e = errno;
        close(fd);
        return fail(client, DS_CLIENT_ECONNECT, "cannot connect to diffsynthd at %s: %s",
                    client->path, strerror(e));
    }
    client->fd = fd;
    return DS_CLIENT_OK;
}

void ds_client_close(ds_client *client)
{
    if (!client)
        return;
    disconnect(client);
    free(client->pending);
    free(client->rbuf);
    free(client->error);
    free(client);
}

const char *ds_client_socket_path(const ds_client *client)
{
    return client ? client->path : "";
}

int ds_client_fd(const ds_client *client)
{
    return client ? client->fd : -1;
}

int ds_client_set_max_frame(ds_client *client, uint64_t max_bytes)
{
    if (!client)
        return DS_CLIENT_EINVAL;
    if (max_bytes == 0 || max_bytes > UINT32_MAX)
        return fail(client, DS_CLIENT_EINVAL, "max frame size %llu outside 1..%u",
                    (unsigned long long)max_bytes, UINT32_MAX);
    client->max_frame = (uint32_t)max_bytes;
    return DS_CLIENT_OK;
}

uint64_t ds_client_next_id(ds_client *client)
{
    if (++client->next_id == 0)
        client->next_id = 1;
    return client->next_id;
}

const char *ds_client_last_error(const ds_client *client)
{
    return client && client->error ? client->error : "";
}

int ds_client_last_code(const ds_client *client)
{
    return client ? client->last_code : 0;
}

void ds_client_envelope_free(diffsynth_v1_Envelope *envelope)
{
    if (!envelope)
        return;
    pb_release(diffsynth_v1_Envelope_fields, envelope);
    memset(envelope, 0, sizeof *envelope);
}

static int check_usable(ds_client *c)
{
    if (c->fd < 0)
        return fail(c, DS_CLIENT_EINVAL, "not connected to diffsynthd");
    /* The message of the failure that broke the stream is kept as it was. */
    if (c->broken_status)
        return c->broken_status;
    return DS_CLIENT_OK;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is ready for `events` or the deadline (-1: none) passes. Returns 1 ready,
 * 0 timed out, -1 error (errno set). */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int timeout = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left < 0)
                left = 0;
            timeout = left > INT_MAX ? INT_MAX : (int)left;
        }
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, timeout);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        return r > 0 ? 1 : 0;
    }
}

/* Writes the frame; the descriptors ride on its first byte, so they go with the first send
 * that moves any data (sendmsg), and never twice. */
static int write_all(ds_client *c, const unsigned char *data, size_t len, const int *fds,
                     size_t fd_count)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * DS_CLIENT_MAX_FDS)];
    } control;
    size_t off = 0;
    while (off < len) {
        ssize_t n;
        if (off == 0 && fd_count > 0) {
            struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
            struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
            memset(&control, 0, sizeof control);
            msg.msg_control = control.buf;
            msg.msg_controllen = CMSG_SPACE(sizeof(int) * fd_count);
            struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
            cmsg->cmsg_level = SOL_SOCKET;
            cmsg->cmsg_type = SCM_RIGHTS;
            cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fd_count);
            memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * fd_count);
            n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
        } else {
            n = send(c->fd, data + off, len - off, MSG_NOSIGNAL);
        }
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(c->fd, POLLOUT, -1) < 0)
                return fail_broken(c, DS_CLIENT_EIO, "waiting to write to %s: %s", c->path,
                                   strerror(errno));
            continue;
        }
        if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
            return fail_broken(c, DS_CLIENT_ECLOSED,
                               "daemon closed the connection (sent %zu of %zu bytes)", off, len);
        return fail_broken(c, DS_CLIENT_EIO, "writing to %s: %s", c->path,
                           n < 0 ? strerror(errno) : "no progress");
    }
    return DS_CLIENT_OK;
}

int ds_client_send(ds_client *client, const diffsynth_v1_Envelope *envelope)
{
    return ds_client_send_fds(client, envelope, NULL, 0);
}

int ds_client_send_fds(ds_client *client, const diffsynth_v1_Envelope *request, const int *fds,
                       size_t fd_count)
{
    if (!client || !request || (fd_count > 0 && !fds))
        return DS_CLIENT_EINVAL;
    if (fd_count > DS_CLIENT_MAX_FDS)
        return fail(client, DS_CLIENT_EINVAL, "%zu file descriptors for one frame, at most %d",
                    fd_count, DS_CLIENT_MAX_FDS);
    int rc = check_usable(client);
    if (rc)
        return rc;
    diffsynth_v1_Envelope copy = *request;
    copy.fd_count = (uint32_t)fd_count;
    const diffsynth_v1_Envelope *envelope = &copy;
    size_t size = 0;
    if (!pb_get_encoded_size(&size, diffsynth_v1_Envelope_fields, envelope))
        return fail(client, DS_CLIENT_EINVAL, "cannot encode %s request: a field is invalid",
                    body_name(envelope->which_body));
    if (size > client->max_frame)
        return fail(client, DS_CLIENT_EFRAME, "frame of %zu bytes exceeds limit of %u bytes", size,
                    client->max_frame);
    unsigned char *frame = malloc(size + 4);
    if (!frame)
        return fail(client, DS_CLIENT_ENOMEM, "out of memory for a frame of %zu bytes", size);
    for (int i = 0; i < 4; i++)
        frame[i] = (unsigned char)(size >> (8 * i));
    pb_ostream_t os = pb_ostream_from_buffer(frame + 4, size);
    if (!pb_encode(&os, diffsynth_v1_Envelope_fields, envelope) || os.bytes_written != size) {
        free(frame);
        return fail(client, DS_CLIENT_EINVAL, "cannot encode %s request: %s",
                    body_name(envelope->which_body), PB_GET_ERROR(&os));
    }
    rc = write_all(client, frame, size + 4, fds, fd_count);
    free(frame);
    return rc;
}

static int reserve_read(ds_client *c, size_t need)
{
    if (need <= c->rcap)
        return DS_CLIENT_OK;
    size_t cap = need < READ_CHUNK ? READ_CHUNK : need;
    unsigned char *buf = realloc(c->rbuf, cap);
    if (!buf)
        return fail(c, DS_CLIENT_ENOMEM, "out of memory for a frame of %zu bytes", need - 4);
    c->rbuf = buf;
    c->rcap = cap;
    return DS_CLIENT_OK;
}

/* Reads the next frame from the socket. Bytes already buffered are used first; a timeout leaves
 * a partial frame in the buffer for the next call. */
static int read_frame(ds_client *c, diffsynth_v1_Envelope *out, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        size_t need = 4;
        if (c->rlen >= 4) {
            uint32_t len = (uint32_t)c->rbuf[0] | (uint32_t)c->rbuf[1] << 8 |
                           (uint32_t)c->rbuf[2] << 16 | (uint32_t)c->rbuf[3] << 24;
            if (len > c->max_frame)
                return fail_broken(c, DS_CLIENT_EFRAME,
                                   "frame of %u bytes exceeds limit of %u bytes", len, c->max_frame);
            need = 4 + (size_t)len;
            if (c->rlen >= need) {
                pb_istream_t is = pb_istream_from_buffer(c->rbuf + 4, len);
                bool ok = pb_decode(&is, diffsynth_v1_Envelope_fields, out);
                const char *why = PB_GET_ERROR(&is);
                memmove(c->rbuf, c->rbuf + need, c->rlen - need);
                c->rlen -= need;
                if (!ok) {
                    /* nanopb released what it had allocated; the frame boundary is intact. */
                    memset(out, 0, sizeof *out);
                    return fail(c, DS_CLIENT_EFRAME, "malformed frame of %u bytes: %s", len, why);
                }
                return DS_CLIENT_OK;
            }
        }
        int rc = reserve_read(c, need);
        if (rc)
            return rc;
        int ready = wait_fd(c->fd, POLLIN, deadline);
        if (ready < 0)
            return fail_broken(c, DS_CLIENT_EIO, "waiting for %s: %s", c->path, strerror(errno));
        if (ready == 0)
            return fail(c, DS_CLIENT_ETIMEDOUT, "no reply from diffsynthd within %d ms", timeout_ms);
        ssize_t n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
        if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (n < 0 && errno == ECONNRESET)
            n = 0;
        if (n < 0)
            return fail_broken(c, DS_CLIENT_EIO, "reading from %s: %s", c->path, strerror(errno));
        if (n == 0) {
            if (c->rlen == 0)
                return fail_broken(c, DS_CLIENT_ECLOSED, "daemon closed the connection");
            return fail_broken(c, DS_CLIENT_ECLOSED,
                               "daemon closed the connection in the middle of a frame "
                               "(%zu of %zu bytes received)", c->rlen, need);
        }
        c->rlen += (size_t)n;
    }
}

int ds_client_recv(ds_client *client, diffsynth_v1_Envelope *out, int timeout_ms)
{
    if (!client || !out)
        return DS_CLIENT_EINVAL;
    memset(out, 0, sizeof *out);
    if (client->pending_count > 0) {
        *out = client->pending[0];
        client->pending_count--;
        memmove(client->pending, client->pending + 1, client->pending_count * sizeof *out);
        return DS_CLIENT_OK;
    }
    int rc = check_usable(client);
    if (rc)
        return rc;
    return read_frame(client, out, timeout_ms);
}

/* A frame that answers request `id`: one with that id, or an Error about an undecodable frame. */
static bool is_for(const diffsynth_v1_Envelope *env, uint64_t id)
{
    return env->request_id == id ||
           (env->request_id == 0 && env->which_body == diffsynth_v1_Envelope_error_tag);
}

static bool take_pending(ds_client *c, uint64_t id, diffsynth_v1_Envelope *out)
{
    for (size_t i = 0; i < c->pending_count; i++) {
        if (!is_for(&c->pending[i], id))
            continue;
        *out = c->pending[i];
        c->pending_count--;
        memmove(c->pending + i, c->pending + i + 1, (c->pending_count - i) * sizeof *out);
        return true;
    }
    return false;
}

static int push_pending(ds_client *c, diffsynth_v1_Envelope *env)
{
    if (c->pending_count >= DS_CLIENT_MAX_PENDING) {
        uint64_t id = env->request_id;
        ds_client_envelope_free(env);
        return fail(c, DS_CLIENT_EPROTO,
                    "%d frames of other requests are waiting unread; dropped one for request %llu "
                    "(receive them with ds_client_recv)",
                    DS_CLIENT_MAX_PENDING, (unsigned long long)id);
    }
    if (!c->pending) {
        c->pending = calloc(DS_CLIENT_MAX_PENDING, sizeof *c->pending);
        if (!c->pending) {
            ds_client_envelope_free(env);
            return fail(c, DS_CLIENT_ENOMEM, "out of memory for pending frames");
        }
    }
    c->pending[c->pending_count++] = *env;
    memset(env, 0, sizeof *env);
    return DS_CLIENT_OK;
}

/* The reply kind the contract pairs with a request kind (X -> X_result), or 0 when the library
 * does not know the request kind and accepts any reply. */
static pb_size_t reply_tag(pb_size_t request_tag)
{
    if (request_tag >= diffsynth_v1_Envelope_identify_tag &&
        request_tag <= diffsynth_v1_Envelope_list_pipelines_tag && request_tag % 2 == 0)
        return request_tag + 1;
    if (request_tag == diffsynth_v1_Envelope_run_step_tag)
        return diffsynth_v1_Envelope_run_step_result_tag;
    if (request_tag == diffsynth_v1_Envelope_run_pipeline_tag)
        return diffsynth_v1_Envelope_run_pipeline_result_tag;
    return 0;
}

int ds_client_call(ds_client *client, const diffsynth_v1_Envelope *request,
                   diffsynth_v1_Envelope *response, int timeout_ms,
                   ds_client_progress_fn on_progress, void *user)
{
    return ds__client_call_fds(client, request, NULL, 0, response, timeout_ms, on_progress, user);
}

int ds__client_call_fds(ds_client *client, const diffsynth_v1_Envelope *request, const int *fds,
                        size_t fd_count, diffsynth_v1_Envelope *response, int timeout_ms,
                        ds_client_progress_fn on_progress, void *user)
{
    if (!client || !request || !response)
        return DS_CLIENT_EINVAL;
    memset(response, 0, sizeof *response);
    diffsynth_v1_Envelope req = *request;
    if (req.request_id == 0)
        req.request_id = ds_client_next_id(client);
    uint64_t id = req.request_id;
    int rc = ds_client_send_fds(client, &req, fds, fd_count);
    if (rc)
        return rc;
    for (;;) {
        diffsynth_v1_Envelope env;
        memset(&env, 0, sizeof env);
        if (!take_pending(client, id, &env)) {
            rc = check_usable(client);
            if (rc)
                return rc;
            rc = read_frame(client, &env, timeout_ms);
            if (rc)
                return rc;
            if (!is_for(&env, id)) {
                rc = push_pending(client, &env);
                if (rc)
                    return rc;
                continue;
            }
        }
        if (env.which_body == diffsynth_v1_Envelope_event_tag) {
            if (on_progress && env.body.event.which_kind == diffsynth_v1_Event_progress_tag)
                on_progress(&env.body.event.kind.progress, id, user);
            ds_client_envelope_free(&env);
            continue;
        }
        if (env.which_body == diffsynth_v1_Envelope_error_tag) {
            ds__client_daemon_error(client, &env.body.error);
            ds_client_envelope_free(&env);
            return DS_CLIENT_EDAEMON;
        }
        pb_size_t want = reply_tag(req.which_body);
        if (want && env.which_body != want) {
            pb_size_t got = env.which_body;
            ds_client_envelope_free(&env);
            return fail(client, DS_CLIENT_EPROTO, "daemon answered request %llu (%s) with %s",
                        (unsigned long long)id, body_name(req.which_body), body_name(got));
        }
        *response = env;
        return DS_CLIENT_OK;
    }
}

int ds_client_cancel(ds_client *client, uint64_t target_request_id, int timeout_ms, bool *found)
{
    if (!client)
        return DS_CLIENT_EINVAL;
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    diffsynth_v1_Envelope resp;
    req.which_body = diffsynth_v1_Envelope_cancel_tag;
    req.body.cancel.target_request_id = target_request_id;
    int rc = ds_client_call(client, &req, &resp, timeout_ms, NULL, NULL);
    if (rc)
        return rc;
    if (found)
        *found = resp.body.cancel_result.found;
    ds_client_envelope_free(&resp);
    return DS_CLIENT_OK;
}

int ds_client_absolute_path(ds_client *client, const char *path, char **out)
{
    if (!client || !path || !out)
        return DS_CLIENT_EINVAL;
    *out = NULL;
    if (!path[0])
        return fail(client, DS_CLIENT_EINVAL, "empty path");
    char *cwd = NULL;
    if (path[0] != '/') {
        cwd = getcwd(NULL, 0);
        if (!cwd)
            return fail(client, DS_CLIENT_EINVAL, "cannot make %s absolute: getcwd: %s", path,
                        strerror(errno));
    }
    size_t cwd_len = cwd ? strlen(cwd) : 0;
    size_t path_len = strlen(path);
    char *joined = malloc(cwd_len + path_len + 2);
    char *result = malloc(cwd_len + path_len + 2);
    if (!joined || !result) {
        free(cwd);
        free(joined);
        free(result);
        return fail(client, DS_CLIENT_ENOMEM, "out of memory");
    }
    snprintf(joined, cwd_len + path_len + 2, "%s/%s", cwd ? cwd : "", path);
    free(cwd);

    /* Lexical clean-up only: drop "." segments and repeated slashes, keep ".." (it may cross a
     * symlink, which only the daemon's realpath can settle). */
    size_t o = 0;
    for (const char *s = joined; *s;) {
        while (*s == '/')
            s++;
        const char *seg = s;
        while (*s && *s != '/')
            s++;
        size_t n = (size_t)(s - seg);
        if (n == 0 || (n == 1 && seg[0] == '.'))
            continue;
        result[o++] = '/';
        memcpy(result + o, seg, n);
        o += n;
    }
    if (o == 0)
        result[o++] = '/';
    result[o] = '\0';
    free(joined);
    *out = result;
    return DS_CLIENT_OK;
}
