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
#include "daemon/frame.h"
#include "daemon/list.h"
#include "daemon/shm_region.h"
#include "daemon/message_walk.h"

#define READ_BUFFER_BYTES 65536
#define LISTEN_BACKLOG 128
/* Descriptors received and not yet claimed by a frame. The kernel delivers a frame's
 * descriptors with its first byte and ends a read after them, so a well-behaved client has at
 * most two frames' worth waiting: the frame being completed and the next one begun. */
#define FD_QUEUE_MAX (2 * DS_SHM_MAX_FDS_PER_FRAME)

/* What one peer uid holds across its connections. Shared by the uid's connection structs
 * (each holds a reference until it is freed, after its last job), so bytes of jobs that
 * outlive their connection are still counted. */
typedef struct uid_usage {
    struct uid_usage *next;
    uid_t uid;
    unsigned refs;             /* connection structs pointing here */
    unsigned conns;            /* counted open connections */
    uint64_t unsent_bytes;
    uint64_t inline_bytes;
} uid_usage;

typedef struct inflight_request {
    uint64_t id;
    uint64_t inline_bytes;
} inflight_request;

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
    inflight_request *requests; /* the `inflight` requests queued or running, max_inflight slots */
    uid_usage *usage;
    uint64_t unsent_bytes;     /* queued replies not yet written to the socket */
    uint64_t inline_bytes;     /* inline payload of the requests in flight */
    uint64_t last_activity_ms; /* bytes received, a reply written or a job ended (uv_now) */
    uint64_t frame_started_ms; /* first byte of the frame being received */
    ds_frame_decoder decoder;
    /* Received with SCM_RIGHTS (oldest first), each frame claims Envelope.fd_count of them. */
    int fd_queue[FD_QUEUE_MAX];
    unsigned fd_queued;
    /* The claimed descriptors of the frame being dispatched; closed once dispatch returns. */
    int frame_fds[DS_SHM_MAX_FDS_PER_FRAME];
    unsigned frame_fd_count;
    /* Received bytes not yet decoded: reading paused in the middle of a read, and the rest
     * waits here until the client has taken enough replies. */
    size_t held_off, held_len;
    char read_buffer[READ_BUFFER_BYTES];
};

struct ds_server {
    uv_loop_t *loop;
    uv_pipe_t listener;
    int listening;
    int closing;
    unsigned handles;          /* open handles (listener + connections) */
    ds_server_options options; /* options.socket_path points at socket_path */
    ds_server_handlers handlers;
    ds_conn *conns;
    unsigned conn_count;       /* counted connections open now */
    unsigned next_conn_id;
    uid_usage *uids;
    uv_timer_t sweep;          /* closes idle and stalled connections */
    int sweeping;
    char socket_path[];        /* the caller's path, copied with the server */
};

typedef struct write_req {
    uv_write_t req;
    ds_conn *conn;
    uint8_t *data;
    size_t len;
} write_req;

static void conn_close(ds_conn *conn);
static void resume_reading(ds_conn *conn);
static void process_input(ds_conn *conn);

void ds_server_options_default(ds_server_options *o)
{
    memset(o, 0, sizeof *o);
    o->max_frame_bytes = DS_FRAME_DEFAULT_MAX;
    o->max_connections = DS_DEFAULT_MAX_CONNECTIONS;
    o->max_inflight = DS_DEFAULT_MAX_INFLIGHT;
    o->idle_timeout_ms = (uint64_t)DS_DEFAULT_IDLE_TIMEOUT_S * 1000;
    o->frame_timeout_ms = (uint64_t)DS_DEFAULT_FRAME_TIMEOUT_S * 1000;
    o->max_unsent_bytes = DS_DEFAULT_MAX_UNSENT_BYTES;
    o->max_unsent_bytes_per_uid = DS_DEFAULT_MAX_UNSENT_BYTES_PER_UID;
    o->max_queued_inline_bytes = DS_DEFAULT_MAX_QUEUED_INLINE_BYTES;
    o->max_queued_inline_bytes_per_uid = DS_DEFAULT_MAX_QUEUED_INLINE_BYTES_PER_UID;
}

static void server_maybe_free(ds_server *server)
{
    if (!server->closing || server->handles > 0)
        return;
    while (server->uids) {
        uid_usage *next = server->uids->next;
        free(server->uids);
        server->uids = next;
    }
    free(server);
}

/* --- per-uid accounting --------------------------------------------------------------------- */

static uid_usage *usage_acquire(ds_server *server, uid_t uid)
{
    for (uid_usage *u = server->uids; u; u = u->next) {
        if (u->uid == uid) {
            u->refs++;
            return u;
        }
    }
    uid_usage *u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    u->uid = uid;
    u->refs = 1;
    u->next = server->uids;
    server->uids = u;
    return u;
}

static void usage_release(ds_server *server, uid_usage *usage)
{
    if (--usage->refs > 0)
        return;
    for (uid_usage **p = &server->uids; *p; p = &(*p)->next) {
        if (*p == usage) {
            *p = usage->next;
            break;
        }
    }
    free(usage);
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

static int over_unsent_limit(const ds_conn *conn)
{
    const ds_server_options *o = &conn->server->options;
    return conn->unsent_bytes > o->max_unsent_bytes ||
           (conn->usage && conn->usage->unsent_bytes > o->max_unsent_bytes_per_uid);
}

/* Low water: half of each limit, so a reader that keeps up does not flap between paused and
 * reading on every reply. A connection that has taken all its replies reads again whatever its
 * uid's total: the bytes that hold the total up are other connections', which stay paused, and
 * a client of that uid that keeps up must not wait for one that does not. */
static int below_unsent_low_water(const ds_conn *conn)
{
    const ds_server_options *o = &conn->server->options;
    if (conn->unsent_bytes > o->max_unsent_bytes / 2)
        return 0;
    return conn->unsent_bytes == 0 || !conn->usage ||
           conn->usage->unsent_bytes <= o->max_unsent_bytes_per_uid / 2;
}

static void maybe_resume(ds_conn *conn)
{
    if (!conn->reading_paused || !conn->open || conn->close_after_flush ||
        !below_unsent_low_water(conn))
        return;
    conn->reading_paused = 0;
    /* A partial frame's clock restarts: the pause was ours, not the client's. */
    conn->frame_started_ms = uv_now(conn->server->loop);
    process_input(conn);
    if (!conn->reading_paused && conn->open && !conn->close_after_flush)
        resume_reading(conn);
}

static void on_write(uv_write_t *req, int status)
{
    write_req *wr = (write_req *)req;
    ds_conn *conn = wr->conn;
    size_t len = wr->len;
    free(wr->data);
    free(wr);
    conn->pending_writes--;
    conn->unsent_bytes -= len;
    int uid_drained = 0;
    if (conn->usage) {
        uint64_t low = conn->server->options.max_unsent_bytes_per_uid / 2;
        uid_drained = conn->usage->unsent_bytes > low && conn->usage->unsent_bytes - len <= low;
        conn->usage->unsent_bytes -= len;
    }
    if (status < 0 && conn->open) {
        ds_log_info("%s: write failed (%s); closing", conn->label, uv_strerror(status));
        conn_close(conn);
        return;
    }
    if (!conn->open)
        return;
    conn->last_activity_ms = uv_now(conn->server->loop);
    if (conn->close_after_flush && conn->pending_writes == 0) {
        conn_close(conn);
        return;
    }
    if (!uid_drained) {
        maybe_resume(conn);
        return;
    }
    /* The uid's total fell below its low water: any of its connections paused for that total
     * may read again. The list stays intact here: connections leave it only when their
     * handle's close callback runs. */
    for (ds_conn *c = conn->server->conns; c; c = c->next)
        if (c->usage == conn->usage)
            maybe_resume(c);
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
    wr->len = len;
    uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
    int rc = uv_write(&wr->req, (uv_stream_t *)&conn->pipe, &buf, 1, on_write);
    if (rc != 0) {
        free(data);
        free(wr);
        ds_log_info("%s: cannot write (%s); closing", conn->label, uv_strerror(rc));
        conn_close(conn);
        return;
    }
    if (conn->unsent_bytes == 0)
        conn->last_activity_ms = uv_now(conn->server->loop);
    conn->pending_writes++;
    conn->unsent_bytes += len;
    if (conn->usage)
        conn->usage->unsent_bytes += len;
    /* A client that sends requests but never reads replies must not grow our memory without
     * bound: stop reading from it until it catches up. */
    if (!conn->reading_paused && over_unsent_limit(conn)) {
        conn->reading_paused = 1;
        uv_read_stop((uv_stream_t *)&conn->pipe);
        ds_log_debug("%s: %llu reply bytes unread (%llu for uid %u): reading paused",
                     conn->label, (unsigned long long)conn->unsent_bytes,
                     (unsigned long long)(conn->usage ? conn->usage->unsent_bytes : 0),
                     (unsigned)conn->uid);
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
    if (conn->usage)
        usage_release(conn->server, conn->usage);
    free(conn->requests);
    free(conn);
}

int ds_conn_request_in_flight(const ds_conn *conn, uint64_t request_id)
{
    for (unsigned i = 0; i < conn->inflight; i++)
        if (conn->requests[i].id == request_id)
            return 1;
    return 0;
}

/* RESOURCE_EXHAUSTED when a request's `bytes` inline bytes, with the `held` of `whose`
 * requests in flight, pass `limit` (`option`, `limit_owner`'s). */
static int inline_limit(uint64_t request_id, uint64_t bytes, uint64_t held, uint64_t limit,
                        const char *whose, const char *limit_owner, const char *option,
                        ds_error *err)
{
    if (bytes == 0 || held + bytes <= limit)
        return DS_OK;
    return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                        "request %llu carries %llu inline bytes; with the %llu of %s requests in "
                        "flight that passes %s limit of %llu bytes (%s): pass large tensors "
                        "through shared memory, or wait for a request to finish",
                        (unsigned long long)request_id, (unsigned long long)bytes,
                        (unsigned long long)held, whose, limit_owner, (unsigned long long)limit,
                        option);
}

int ds_conn_begin_job(ds_conn *conn, const Diffsynth__V1__Envelope *env, ds_error *err)
{
    const ds_server_options *o = &conn->server->options;
    unsigned limit = o->max_inflight;
    if (conn->inflight >= limit)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "this connection already has %u requests queued or running (the "
                            "limit); wait for one to finish",
                            limit);
    if (ds_conn_request_in_flight(conn, env->request_id))
        return ds_error_set(err, DS_ERR_ALREADY_EXISTS,
                            "request id %llu is already in flight on this connection; give each "
                            "request its own id (an id is free again once its reply arrived)",
                            (unsigned long long)env->request_id);
    uint64_t bytes = ds_message_bytes_total(&env->base);
    char uid_requests[32];
    snprintf(uid_requests, sizeof uid_requests, "uid %u's", (unsigned)conn->uid);
    int rc = inline_limit(env->request_id, bytes, conn->inline_bytes, o->max_queued_inline_bytes,
                          "this connection's", "its", "--max-queued-inline-bytes", err);
    if (rc == DS_OK && conn->usage)
        rc = inline_limit(env->request_id, bytes, conn->usage->inline_bytes,
                          o->max_queued_inline_bytes_per_uid, uid_requests, "the uid's",
                          "--max-queued-inline-bytes-per-uid", err);
    if (rc != DS_OK)
        return rc;
    conn->requests[conn->inflight++] = (inflight_request){env->request_id, bytes};
    conn->inline_bytes += bytes;
    if (conn->usage)
        conn->usage->inline_bytes += bytes;
    return DS_OK;
}

void ds_conn_end_job(ds_conn *conn, uint64_t request_id)
{
    for (unsigned i = 0; i < conn->inflight; i++) {
        if (conn->requests[i].id != request_id)
            continue;
        uint64_t bytes = conn->requests[i].inline_bytes;
        conn->inline_bytes -= bytes;
        if (conn->usage)
            conn->usage->inline_bytes -= bytes;
        conn->requests[i] = conn->requests[--conn->inflight];
        if (conn->open)
            conn->last_activity_ms = uv_now(conn->server->loop);
        return;
    }
    ds_log_error("%s: request %llu ended but was not in flight", conn->label,
                 (unsigned long long)request_id);
}

static void on_conn_closed(uv_handle_t *handle)
{
    ds_conn *conn = (ds_conn *)handle;
    ds_server *server = conn->server;
    DS_LIST_UNLINK(server->conns, conn);
    if (conn->counted) {
        server->conn_count--;
        conn->usage->conns--;
    }
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
    const ds_server_handlers *h = &conn->server->handlers;
    if (conn->inflight > 0)
        h->on_close_with_jobs(h->ctx, conn);
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
    if (claim_frame_fds(conn, env->fd_count) != 0) {
        diffsynth__v1__envelope__free_unpacked(env, NULL);
        return;
    }
    /* Only the wire shows a NUL inside a string; the unpacked C string would end there. */
    if (ds_wire_check_strings_nul(&diffsynth__v1__envelope__descriptor, frame, len, &err) !=
        DS_OK) {
        ds_log_debug("%s: request %llu refused: %s", conn->label,
                     (unsigned long long)env->request_id, err.message);
        ds_conn_send_error(conn, env->request_id, err.code, err.message);
    } else {
        const ds_server_handlers *h = &conn->server->handlers;
        h->on_request(h->ctx, conn, env);
    }
    /* Whatever a request uses it has mapped by now. */
    for (unsigned i = 0; i < conn->frame_fd_count; i++)
        close(conn->frame_fds[i]);
    conn->frame_fd_count = 0;
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

/* Decodes the held bytes of the last read, frame by frame, until they are used up, the
 * connection closes, or reading pauses (the rest waits for maybe_resume). */
static void process_input(ds_conn *conn)
{
    /* The dispatch of one frame may close the connection (a failed write): stop then. */
    while (conn->held_len > 0 && conn->open && !conn->close_after_flush &&
           !conn->reading_paused) {
        size_t consumed;
        const uint8_t *frame = NULL;
        size_t frame_len = 0;
        int was_partial = ds_frame_decoder_partial(&conn->decoder);
        int rc = ds_frame_decoder_feed(&conn->decoder,
                                       (const uint8_t *)conn->read_buffer + conn->held_off,
                                       conn->held_len, &consumed, &frame, &frame_len);
        conn->held_off += consumed;
        conn->held_len -= consumed;
        if (rc == DS_FRAME_READY) {
            handle_frame(conn, frame, frame_len);
            ds_frame_decoder_trim(&conn->decoder);
        } else if (rc == DS_FRAME_NEED_MORE) {
            if (!was_partial)
                conn->frame_started_ms = uv_now(conn->server->loop);
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

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    ds_conn *conn = (ds_conn *)stream;
    (void)buf;
    if (nread < 0) {
        if (nread != UV_EOF)
            ds_log_info("%s: read failed: %s", conn->label, uv_strerror((int)nread));
        /* Replies still queued cannot reach a peer that is gone. */
        conn_close(conn);
        return;
    }
    if (receive_fds(conn) != 0)
        return;
    if (nread == 0)
        return;
    conn->last_activity_ms = uv_now(conn->server->loop);
    /* on_alloc handed out the whole buffer: nothing is held while reading is on. */
    conn->held_off = 0;
    conn->held_len = (size_t)nread;
    process_input(conn);
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
    conn->last_activity_ms = uv_now(server->loop);
    ds_frame_decoder_init(&conn->decoder, server->options.max_frame_bytes);
    DS_LIST_PUSH_FRONT(server->conns, conn);
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
    conn->usage = usage_acquire(server, cred.uid);
    conn->requests = calloc(server->options.max_inflight, sizeof *conn->requests);
    if (!conn->usage || !conn->requests) {
        ds_log_error("%s: out of memory accepting the connection; closing", conn->label);
        conn_close(conn);
        return;
    }

    char message[200];
    int code = DS_OK;
    if (server->conn_count >= server->options.max_connections) {
        code = DS_ERR_UNAVAILABLE;
        snprintf(message, sizeof message,
                 "the daemon already has %u connections (its limit, --max-connections); try "
                 "again later",
                 server->options.max_connections);
    } else if (conn->usage->conns >= server->options.max_connections_per_uid) {
        code = DS_ERR_RESOURCE_EXHAUSTED;
        snprintf(message, sizeof message,
                 "uid %u already has %u connections open (the limit per uid, "
                 "--max-connections-per-uid); close one first",
                 (unsigned)cred.uid, conn->usage->conns);
    }
    if (code != DS_OK) {
        /* The client learns why before the close. */
        ds_log_warn("%s: refused: %s", conn->label, message);
        conn->close_after_flush = 1;
        ds_conn_send_error(conn, 0, code, message);
        if (conn->open && conn->pending_writes == 0)
            conn_close(conn);
        return;
    }
    conn->counted = 1;
    conn->usage->conns++;
    server->conn_count++;
    ds_log_info("%s: connected", conn->label);
    resume_reading(conn);
}

/* --- timeouts ------------------------------------------------------------------------------- */

/* Closes, with a reason, what holds a slot without using it: a connection idle past
 * idle_timeout, one whose replies have gone unread that long, one with a frame begun and not
 * finished within frame_timeout. */
static void sweep_conn(ds_conn *conn, uint64_t now)
{
    const ds_server_options *o = &conn->server->options;
    if (!conn->open)
        return;
    char message[200];
    uint64_t quiet = now - conn->last_activity_ms;
    /* Also a connection waiting to flush its last error: a client that never reads would
     * keep it forever. */
    if (o->idle_timeout_ms && conn->unsent_bytes > 0 && quiet > o->idle_timeout_ms) {
        /* Nothing can be written to a client that does not read, not even the reason. */
        ds_log_info("%s: %llu reply bytes unread for %llu ms (--idle-timeout); closing",
                    conn->label, (unsigned long long)conn->unsent_bytes,
                    (unsigned long long)quiet);
        conn_close(conn);
        return;
    }
    if (!conn->counted || conn->close_after_flush)
        return;
    if (o->frame_timeout_ms && !conn->reading_paused && ds_frame_decoder_partial(&conn->decoder) &&
        now - conn->frame_started_ms > o->frame_timeout_ms) {
        const ds_frame_decoder *dec = &conn->decoder;
        if (dec->header_have < DS_FRAME_HEADER_BYTES)
            snprintf(message, sizeof message,
                     "a frame begun %llu ms ago is still incomplete (%zu of its 4 header bytes "
                     "arrived; --frame-timeout is %llu ms)",
                     (unsigned long long)(now - conn->frame_started_ms), dec->header_have,
                     (unsigned long long)o->frame_timeout_ms);
        else
            snprintf(message, sizeof message,
                     "a frame begun %llu ms ago is still incomplete (%zu of %u bytes arrived; "
                     "--frame-timeout is %llu ms)",
                     (unsigned long long)(now - conn->frame_started_ms), dec->buf_have,
                     (unsigned)dec->length, (unsigned long long)o->frame_timeout_ms);
        fail_stream(conn, DS_ERR_DEADLINE_EXCEEDED, message);
        return;
    }
    if (o->idle_timeout_ms && conn->inflight == 0 && conn->unsent_bytes == 0 &&
        !ds_frame_decoder_partial(&conn->decoder) && quiet > o->idle_timeout_ms) {
        snprintf(message, sizeof message,
                 "closing an idle connection: no request for %llu ms (--idle-timeout is %llu ms)",
                 (unsigned long long)quiet, (unsigned long long)o->idle_timeout_ms);
        fail_stream(conn, DS_ERR_UNAVAILABLE, message);
    }
}

static void on_sweep(uv_timer_t *timer)
{
    ds_server *server = timer->data;
    uint64_t now = uv_now(server->loop);
    /* Closing only marks connections; they leave the list in their close callback. */
    for (ds_conn *conn = server->conns; conn; conn = conn->next)
        sweep_conn(conn, now);
}

static void on_sweep_closed(uv_handle_t *handle)
{
    ds_server *server = handle->data;
    server->handles--;
    server_maybe_free(server);
}

/* A tenth of the shortest timeout, within [10 ms, 1 s]: a connection closes at most that
 * late. */
static uint64_t sweep_period(const ds_server_options *o)
{
    uint64_t shortest = UINT64_MAX;
    if (o->idle_timeout_ms)
        shortest = o->idle_timeout_ms;
    if (o->frame_timeout_ms && o->frame_timeout_ms < shortest)
        shortest = o->frame_timeout_ms;
    uint64_t period = shortest / 10;
    return period < 10 ? 10 : period > 1000 ? 1000 : period;
}

/* --- server --------------------------------------------------------------------------------- */

int ds_server_start(uv_loop_t *loop, const ds_server_options *options,
                    const ds_server_handlers *handlers, ds_server **out, ds_error *err)
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

    size_t path_size = strlen(path) + 1;
    ds_server *server = malloc(sizeof *server + path_size);
    if (!server)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory starting the server");
    *server = (ds_server){.loop = loop, .options = *options, .handlers = *handlers};
    memcpy(server->socket_path, path, path_size);
    server->options.socket_path = server->socket_path;
    if (server->options.max_connections_per_uid == 0) {
        unsigned quarter = server->options.max_connections / 4;
        server->options.max_connections_per_uid = quarter ? quarter : 1;
    }

    rc = uv_pipe_init(loop, &server->listener, 0);
    if (rc != 0) {
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
    if (options->idle_timeout_ms || options->frame_timeout_ms) {
        uint64_t period = sweep_period(options);
        if (uv_timer_init(loop, &server->sweep) == 0) {
            server->sweep.data = server;
            server->handles++;
            server->sweeping = 1;
            uv_timer_start(&server->sweep, on_sweep, period, period);
        } else {
            ds_log_warn("cannot start the connection timeouts' timer: connections never time out");
        }
    }
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
    if (server->sweeping) {
        server->sweeping = 0;
        uv_close((uv_handle_t *)&server->sweep, on_sweep_closed);
    }
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
