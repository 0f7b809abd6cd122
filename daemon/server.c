#include "daemon/server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/log.h"
#include "daemon/dispatch.h"
#include "daemon/frame.h"
#include "daemon/shm_region.h"

#define READ_BUFFER_BYTES 65536
#define LISTEN_BACKLOG 128
/* Descriptors received and not yet claimed by a frame. The kernel delivers a frame's
 * descriptors with its first byte and ends a read after them, so a well-behaved client has at
 * most two frames' worth waiting: the frame being completed and the next one begun. */
#define FD_QUEUE_MAX (2 * DS_SHM_MAX_FDS_PER_FRAME)

struct ds_conn {
    uv_pipe_t pipe;            /* first: the handle's address is the connection's */
    ds_server *server;
    ds_conn *prev, *next;      /* the server's list of connections */
    unsigned id;
    uid_t uid;
    pid_t pid;
    char label[80];
    int refs;                  /* the open handle + one per job */
    int open;                  /* replies can still be written */
    int counted;               /* counts against max_connections (not a refused extra) */
    int close_after_flush;     /* close once every queued write has completed */
    int reading_paused;        /* too many reply bytes queued: wait for the client to read */
    size_t pending_writes;
    unsigned inflight;
    ds_frame_decoder decoder;
    /* Received with SCM_RIGHTS (oldest first), each frame claims Envelope.fd_count of them. */
    int fd_queue[FD_QUEUE_MAX];
    unsigned fd_queued;
    /* The claimed descriptors of the frame being dispatched; closed once dispatch returns. */
    int frame_fds[DS_SHM_MAX_FDS_PER_FRAME];
    unsigned frame_fd_count;
    char read_buffer[READ_BUFFER_BYTES];
};

struct ds_server {
    uv_loop_t *loop;
    uv_pipe_t listener;
    int listening;
    int closing;
    unsigned handles;          /* open handles (listener + connections) */
    ds_server_options options;
    char *socket_path;
    ds_daemon *daemon;
    ds_conn *conns;
    unsigned conn_count;       /* counted connections open now */
    unsigned next_conn_id;
};

typedef struct write_req {
    uv_write_t req;
    ds_conn *conn;
    uint8_t *data;
} write_req;

static void conn_close(ds_conn *conn);
static void resume_reading(ds_conn *conn);

static void server_maybe_free(ds_server *server)
{
    if (!server->closing || server->handles > 0)
        return;
    free(server->socket_path);
    free(server);
}

/* --- socket file ---------------------------------------------------------------------------- */

/* A path that exists must be a socket nobody answers on; such a stale socket is removed. */
static int check_existing(const char *path, ds_error *err)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return DS_OK;
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION, "cannot check %s: %s", path,
                            strerror(errno));
    }
    if (!S_ISSOCK(st.st_mode))
        return ds_error_set(err, DS_ERR_ALREADY_EXISTS,
                            "%s exists and is not a socket; refusing to replace it", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return ds_error_set(err, DS_ERR_INTERNAL, "socket(): %s", strerror(errno));
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memcpy(addr.sun_path, path, strlen(path) + 1);
    int rc = connect(fd, (struct sockaddr *)&addr, sizeof addr);
    int e = errno;
    close(fd);
    if (rc == 0)
        return ds_error_set(err, DS_ERR_ALREADY_EXISTS,
                            "another diffsynthd is already listening on %s", path);
    if (e == ECONNREFUSED) {
        if (unlink(path) != 0 && errno != ENOENT)
            return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                                "cannot remove the stale socket %s: %s", path, strerror(errno));
        ds_log_info("removed stale socket %s (no daemon answered on it)", path);
        return DS_OK;
    }
    if (e == ENOENT)
        return DS_OK;
    return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                        "%s exists and cannot be probed (%s); refusing to replace it", path,
                        strerror(e));
}

static void on_listener_closed(uv_handle_t *handle)
{
    ds_server *server = handle->data;
    server->handles--;
    server_maybe_free(server);
}

/* --- writes --------------------------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status)
{
    write_req *wr = (write_req *)req;
    ds_conn *conn = wr->conn;
    free(wr->data);
    free(wr);
    conn->pending_writes--;
    if (status < 0 && conn->open) {
        ds_log_info("%s: write failed (%s); closing", conn->label, uv_strerror(status));
        conn_close(conn);
        return;
    }
    if (!conn->open)
        return;
    if (conn->close_after_flush && conn->pending_writes == 0) {
        conn_close(conn);
        return;
    }
    uv_stream_t *stream = (uv_stream_t *)&conn->pipe;
    if (conn->reading_paused &&
        uv_stream_get_write_queue_size(stream) < conn->server->options.max_frame_bytes / 2) {
        conn->reading_paused = 0;
        if (!conn->close_after_flush)
            resume_reading(conn);
    }
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void resume_reading(ds_conn *conn)
{
    if (uv_read_start((uv_stream_t *)&conn->pipe, on_alloc, on_read) != 0)
        conn_close(conn);
}

void ds_conn_send(ds_conn *conn, const Diffsynth__V1__Envelope *env)
{
    if (!conn->open)
        return;
    ds_error err;
    uint8_t *data;
    size_t len;
    if (ds_frame_pack(env, &data, &len, &err) != DS_OK) {
        ds_log_error("%s: cannot send reply to request %llu: %s", conn->label,
                     (unsigned long long)env->request_id, err.message);
        if (env->body_case != DIFFSYNTH__V1__ENVELOPE__BODY_ERROR)
            ds_conn_send_error(conn, env->request_id, err.code, err.message);
        return;
    }
    write_req *wr = malloc(sizeof *wr);
    if (!wr) {
        free(data);
        ds_log_error("%s: out of memory queueing a reply; closing", conn->label);
        conn_close(conn);
        return;
    }
    wr->conn = conn;
    wr->data = data;
    uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
    int rc = uv_write(&wr->req, (uv_stream_t *)&conn->pipe, &buf, 1, on_write);
    if (rc != 0) {
        free(data);
        free(wr);
        ds_log_info("%s: cannot write (%s); closing", conn->label, uv_strerror(rc));
        conn_close(conn);
        return;
    }
    conn->pending_writes++;
    /* A client that sends requests but never reads replies must not grow our memory without
     * bound: stop reading from it until it catches up. */
    if (!conn->reading_paused &&
        uv_stream_get_write_queue_size((uv_stream_t *)&conn->pipe) >
            conn->server->options.max_frame_bytes) {
        conn->reading_paused = 1;
        uv_read_stop((uv_stream_t *)&conn->pipe);
    }
}

void ds_conn_send_error(ds_conn *conn, uint64_t request_id, int status, const char *message)
{
    Diffsynth__V1__Error error = DIFFSYNTH__V1__ERROR__INIT;
    error.code = (Diffsynth__V1__Code)(-status);
    error.message = (char *)message;
    Diffsynth__V1__Envelope env = DIFFSYNTH__V1__ENVELOPE__INIT;
    env.request_id = request_id;
    env.body_case = DIFFSYNTH__V1__ENVELOPE__BODY_ERROR;
    env.error = &error;
    ds_conn_send(conn, &env);
}

/* An error about the stream itself: reply, then close once it is written. */
static void fail_stream(ds_conn *conn, int status, const char *message)
{
    ds_log_info("%s: %s; closing", conn->label, message);
    uv_read_stop((uv_stream_t *)&conn->pipe);
    conn->close_after_flush = 1;
    ds_conn_send_error(conn, 0, status, message);
    if (conn->open && conn->pending_writes == 0)
        conn_close(conn);
}

/* --- connections ---------------------------------------------------------------------------- */

int ds_conn_is_open(const ds_conn *conn) { return conn->open; }
uid_t ds_conn_uid(const ds_conn *conn) { return conn->uid; }
pid_t ds_conn_pid(const ds_conn *conn) { return conn->pid; }
const char *ds_conn_describe(const ds_conn *conn) { return conn->label; }

void ds_conn_ref(ds_conn *conn) { conn->refs++; }

const int *ds_conn_frame_fds(const ds_conn *conn, size_t *count)
{
    *count = conn->frame_fd_count;
    return conn->frame_fds;
}

static void close_queued_fds(ds_conn *conn)
{
    for (unsigned i = 0; i < conn->fd_queued; i++)
        close(conn->fd_queue[i]);
    conn->fd_queued = 0;
}

void ds_conn_unref(ds_conn *conn)
{
    if (--conn->refs > 0)
        return;
    ds_frame_decoder_free(&conn->decoder);
    free(conn);
}

int ds_conn_begin_job(ds_conn *conn, ds_error *err)
{
    unsigned limit = conn->server->options.max_inflight;
    if (conn->inflight >= limit)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "this connection already has %u requests queued or running (the "
                            "limit); wait for one to finish",
                            limit);
    conn->inflight++;
    return DS_OK;
}

void ds_conn_end_job(ds_conn *conn) { conn->inflight--; }

static void on_conn_closed(uv_handle_t *handle)
{
    ds_conn *conn = (ds_conn *)handle;
    ds_server *server = conn->server;
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        server->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    if (conn->counted)
        server->conn_count--;
    server->handles--;
    close_queued_fds(conn);
    ds_conn_unref(conn);
    server_maybe_free(server);
}

static void conn_close(ds_conn *conn)
{
    if (!conn->open)
        return;
    conn->open = 0;
    uv_read_stop((uv_stream_t *)&conn->pipe);
    if (conn->counted)
        ds_log_info("%s: disconnected", conn->label);
    /* Its queued jobs go now; a running one stops at its next checkpoint. Either way the
     * completion sees the connection closed and drops the result. */
    ds_daemon *daemon = conn->server->daemon;
    if (conn->inflight > 0 && daemon->scheduler)
        ds_scheduler_cancel_owner(daemon->scheduler, conn);
    uv_close((uv_handle_t *)&conn->pipe, on_conn_closed);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    ds_conn *conn = (ds_conn *)handle;
    *buf = uv_buf_init(conn->read_buffer, sizeof conn->read_buffer);
}

/* Takes the frame's descriptors off the queue. A frame whose descriptors are not there has
 * lost its pairing with them: the stream cannot be trusted any more. */
static int claim_frame_fds(ds_conn *conn, uint32_t want)
{
    char message[160];
    if (want > DS_SHM_MAX_FDS_PER_FRAME) {
        snprintf(message, sizeof message,
                 "a frame declares %u file descriptors (Envelope.fd_count), at most %d", want,
                 DS_SHM_MAX_FDS_PER_FRAME);
        fail_stream(conn, DS_ERR_INVALID_ARGUMENT, message);
        return -1;
    }
    if (want > conn->fd_queued) {
        snprintf(message, sizeof message,
                 "a frame declares %u file descriptors (Envelope.fd_count) but %u arrived with "
                 "it (SCM_RIGHTS)",
                 want, conn->fd_queued);
        fail_stream(conn, DS_ERR_INVALID_ARGUMENT, message);
        return -1;
    }
    memcpy(conn->frame_fds, conn->fd_queue, want * sizeof *conn->fd_queue);
    conn->frame_fd_count = want;
    conn->fd_queued -= want;
    memmove(conn->fd_queue, conn->fd_queue + want, conn->fd_queued * sizeof *conn->fd_queue);
    return 0;
}

static void handle_frame(ds_conn *conn, const uint8_t *frame, size_t len)
{
    ds_error err;
    Diffsynth__V1__Envelope *env = ds_frame_unpack(frame, len, &err);
    if (!env) {
        fail_stream(conn, err.code, err.message);
        return;
    }
    if (claim_frame_fds(conn, env->fd_count) == 0) {
        ds_dispatch(conn->server->daemon, conn, env);
        /* Whatever a request uses it has mapped by now. */
        for (unsigned i = 0; i < conn->frame_fd_count; i++)
            close(conn->frame_fds[i]);
        conn->frame_fd_count = 0;
    }
    diffsynth__v1__envelope__free_unpacked(env, NULL);
}

static void on_fd_handle_closed(uv_handle_t *handle) { free(handle); }

/* Moves the descriptors libuv received with the last read (IPC mode: recvmsg) onto our queue.
 * libuv hands them out only through a handle, so each goes through a short-lived pipe handle
 * and is duplicated off it. libuv's recvmsg has room for 64 descriptors; the kernel closes any
 * beyond (MSG_CTRUNC), which only a client past FD_QUEUE_MAX can cause, and that client's
 * connection fails here or when its frame finds its descriptors missing. Returns -1 after
 * failing the stream. */
static int receive_fds(ds_conn *conn)
{
    uv_pipe_t *pipe = &conn->pipe;
    while (uv_pipe_pending_count(pipe) > 0) {
        uv_pipe_t *carrier = malloc(sizeof *carrier);
        if (!carrier || uv_pipe_init(conn->server->loop, carrier, 0) != 0) {
            free(carrier);
            fail_stream(conn, DS_ERR_RESOURCE_EXHAUSTED, "out of memory receiving descriptors");
            return -1;
        }
        uv_os_fd_t fd = -1;
        int dup_fd = -1;
        if (uv_accept((uv_stream_t *)pipe, (uv_stream_t *)carrier) == 0 &&
            uv_fileno((uv_handle_t *)carrier, &fd) == 0)
            dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        uv_close((uv_handle_t *)carrier, on_fd_handle_closed);
        if (dup_fd < 0) {
            fail_stream(conn, DS_ERR_RESOURCE_EXHAUSTED, "cannot receive a file descriptor");
            return -1;
        }
        if (conn->fd_queued == FD_QUEUE_MAX) {
            close(dup_fd);
            char message[160];
            snprintf(message, sizeof message,
                     "more than %d file descriptors arrived that no frame claims "
                     "(Envelope.fd_count)",
                     FD_QUEUE_MAX);
            fail_stream(conn, DS_ERR_INVALID_ARGUMENT, message);
            return -1;
        }
        conn->fd_queue[conn->fd_queued++] = dup_fd;
    }
    return 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    ds_conn *conn = (ds_conn *)stream;
    if (nread < 0) {
        if (nread != UV_EOF)
            ds_log_info("%s: read failed: %s", conn->label, uv_strerror((int)nread));
        /* Replies still queued cannot reach a peer that is gone. */
        conn_close(conn);
        return;
    }
    if (receive_fds(conn) != 0)
        return;
    const uint8_t *data = (const uint8_t *)buf->base;
    size_t left = (size_t)nread;
    /* The dispatch of one frame may close the connection (a failed write): stop then. */
    while (left > 0 && conn->open && !conn->close_after_flush) {
        size_t consumed;
        const uint8_t *frame = NULL;
        size_t frame_len = 0;
        int rc = ds_frame_decoder_feed(&conn->decoder, data, left, &consumed, &frame, &frame_len);
        data += consumed;
        left -= consumed;
        if (rc == DS_FRAME_READY) {
            handle_frame(conn, frame, frame_len);
        } else if (rc == DS_FRAME_TOO_LARGE) {
            char message[160];
            snprintf(message, sizeof message, "frame of %u bytes exceeds the %llu-byte limit",
                     conn->decoder.length,
                     (unsigned long long)conn->server->options.max_frame_bytes);
            fail_stream(conn, DS_ERR_RESOURCE_EXHAUSTED, message);
        } else if (rc < 0) {
            fail_stream(conn, DS_ERR_RESOURCE_EXHAUSTED, "out of memory reading a frame");
        }
    }
}

static void on_connection(uv_stream_t *listener, int status)
{
    ds_server *server = listener->data;
    if (status < 0) {
        ds_log_warn("accept failed: %s", uv_strerror(status));
        return;
    }
    ds_conn *conn = calloc(1, sizeof *conn);
    if (!conn) {
        ds_log_error("out of memory accepting a connection");
        return;
    }
    /* IPC mode: libuv reads with recvmsg and keeps the descriptors a client passes with a
     * frame (sealed memfds, SCM_RIGHTS). */
    if (uv_pipe_init(server->loop, &conn->pipe, 1) != 0) {
        free(conn);
        return;
    }
    conn->server = server;
    conn->id = ++server->next_conn_id;
    conn->refs = 1;
    conn->open = 1;
    ds_frame_decoder_init(&conn->decoder, server->options.max_frame_bytes);
    conn->next = server->conns;
    if (server->conns)
        server->conns->prev = conn;
    server->conns = conn;
    server->handles++;
    snprintf(conn->label, sizeof conn->label, "conn %u", conn->id);

    int rc = uv_accept(listener, (uv_stream_t *)&conn->pipe);
    if (rc != 0) {
        ds_log_warn("accept failed: %s", uv_strerror(rc));
        conn_close(conn);
        return;
    }
    uv_os_fd_t fd;
    struct ucred cred;
    socklen_t cred_len = sizeof cred;
    if (uv_fileno((uv_handle_t *)&conn->pipe, &fd) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) != 0) {
        ds_log_warn("%s: cannot read the peer's credentials (%s); closing", conn->label,
                    strerror(errno));
        conn_close(conn);
        return;
    }
    conn->uid = cred.uid;
    conn->pid = cred.pid;
    snprintf(conn->label, sizeof conn->label, "conn %u (uid %u, pid %d)", conn->id,
             (unsigned)cred.uid, (int)cred.pid);

    if (server->conn_count >= server->options.max_connections) {
        char message[160];
        snprintf(message, sizeof message,
                 "the daemon already has %u connections (its limit); try again later",
                 server->options.max_connections);
        ds_log_warn("%s: refused: %s", conn->label, message);
        conn->close_after_flush = 1;
        ds_conn_send_error(conn, 0, DS_ERR_UNAVAILABLE, message);
        if (conn->open && conn->pending_writes == 0)
            conn_close(conn);
        return;
    }
    conn->counted = 1;
    server->conn_count++;
    ds_log_info("%s: connected", conn->label);
    resume_reading(conn);
}

/* --- server --------------------------------------------------------------------------------- */

int ds_server_start(uv_loop_t *loop, const ds_server_options *options, ds_daemon *daemon,
                    ds_server **out, ds_error *err)
{
    const char *path = options->socket_path;
    struct sockaddr_un addr;
    if (!path || !path[0])
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "empty socket path");
    if (strlen(path) >= sizeof addr.sun_path)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "socket path %s is %zu bytes long; Unix sockets allow at most %zu",
                            path, strlen(path), sizeof addr.sun_path - 1);
    int rc = check_existing(path, err);
    if (rc != DS_OK)
        return rc;

    ds_server *server = calloc(1, sizeof *server);
    if (!server)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory starting the server");
    server->loop = loop;
    server->options = *options;
    server->daemon = daemon;
    server->socket_path = strdup(path);
    if (!server->socket_path) {
        free(server);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory starting the server");
    }
    server->options.socket_path = server->socket_path;

    rc = uv_pipe_init(loop, &server->listener, 0);
    if (rc != 0) {
        free(server->socket_path);
        free(server);
        return ds_error_set(err, DS_ERR_INTERNAL, "uv_pipe_init: %s", uv_strerror(rc));
    }
    server->listener.data = server;
    server->handles = 1;

    /* The socket file is born 0600: there is no moment when another user could connect. */
    mode_t old_mask = umask(0177);
    rc = uv_pipe_bind(&server->listener, path);
    umask(old_mask);
    int status = DS_OK;
    if (rc != 0) {
        /* libuv reports a missing directory as EACCES: name the real cause. */
        char dir[sizeof addr.sun_path];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        struct stat st;
        if (slash && slash != dir && (*slash = '\0', stat(dir, &st) != 0) && errno == ENOENT)
            status = ds_error_set(err, DS_ERR_NOT_FOUND,
                                  "cannot bind %s: the directory %s does not exist", path, dir);
        else
            status = ds_error_set(err,
                                  rc == UV_EADDRINUSE ? DS_ERR_ALREADY_EXISTS : DS_ERR_UNAVAILABLE,
                                  "cannot bind %s: %s", path, uv_strerror(rc));
        goto fail;
    }
    mode_t mode = options->group_access ? 0660 : 0600;
    if (chmod(path, mode) != 0) {
        status = ds_error_set(err, DS_ERR_UNAVAILABLE, "cannot set mode %o on %s: %s", mode, path,
                              strerror(errno));
        unlink(path);
        goto fail;
    }
    rc = uv_listen((uv_stream_t *)&server->listener, LISTEN_BACKLOG, on_connection);
    if (rc != 0) {
        status = ds_error_set(err, DS_ERR_UNAVAILABLE, "cannot listen on %s: %s", path,
                              uv_strerror(rc));
        unlink(path);
        goto fail;
    }
    server->listening = 1;
    *out = server;
    return DS_OK;

fail:
    /* The listener closes asynchronously; the server frees itself once it has. */
    server->closing = 1;
    uv_close((uv_handle_t *)&server->listener, on_listener_closed);
    return status;
}

void ds_server_stop_listening(ds_server *server)
{
    if (!server->listening)
        return;
    server->listening = 0;
    if (unlink(server->socket_path) != 0 && errno != ENOENT)
        ds_log_warn("cannot remove %s: %s", server->socket_path, strerror(errno));
    uv_close((uv_handle_t *)&server->listener, on_listener_closed);
}

void ds_server_close(ds_server *server)
{
    ds_server_stop_listening(server);
    server->closing = 1;
    ds_conn *conn = server->conns;
    while (conn) {
        ds_conn *next = conn->next;
        if (conn->open) {
            if (conn->pending_writes == 0) {
                conn_close(conn);
            } else {
                conn->close_after_flush = 1;
                uv_read_stop((uv_stream_t *)&conn->pipe);
            }
        }
        conn = next;
    }
    server_maybe_free(server);
}

unsigned ds_server_connection_count(const ds_server *server) { return server->conn_count; }
