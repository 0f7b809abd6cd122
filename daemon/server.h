/* The socket server (DESIGN §3, §4.8): the listening Unix socket, connections, reads through
 * the frame decoder, and queued writes. Everything here runs on the loop thread.
 *
 * A connection is reference-counted: the open socket holds one reference and every job working
 * for the connection holds one, so a client may disconnect mid-request: the job finishes (or
 * is cancelled), sees the connection closed, and drops its result.
 *
 * What a client can make the daemon hold is counted against its connection and its peer uid
 * (slots, unread reply bytes, inline bytes of requests in flight), and connections that hold a
 * slot without using it time out; the limits are ds_server_options.
 */
#ifndef DS_DAEMON_SERVER_H
#define DS_DAEMON_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "core/error.h"
#include "diffsynth.pb-c.h"

#define DS_DEFAULT_MAX_CONNECTIONS 256
#define DS_DEFAULT_MAX_INFLIGHT 64
/* A connection with no request in flight and nothing received for this long is closed, and
 * so is one whose replies have gone unread that long. */
#define DS_DEFAULT_IDLE_TIMEOUT_S 300
/* A frame begun must be complete within this: a client trickling bytes (slowloris) cannot
 * hold a connection slot by never finishing one. */
#define DS_DEFAULT_FRAME_TIMEOUT_S 30
#define DS_DEFAULT_MAX_UNSENT_BYTES ((uint64_t)16 << 20)
#define DS_DEFAULT_MAX_UNSENT_BYTES_PER_UID ((uint64_t)64 << 20)
#define DS_DEFAULT_MAX_QUEUED_INLINE_BYTES ((uint64_t)256 << 20)
#define DS_DEFAULT_MAX_QUEUED_INLINE_BYTES_PER_UID ((uint64_t)1 << 30)

typedef struct ds_server_options {
    const char *socket_path;
    int group_access;          /* 0660 instead of 0600 */
    uint64_t max_frame_bytes;
    unsigned max_connections;
    /* Open connections one peer uid may hold, below max_connections so that one uid cannot
     * take every slot; 0 = a quarter of max_connections (at least 1). */
    unsigned max_connections_per_uid;
    unsigned max_inflight;     /* queued or running jobs per connection */
    uint64_t idle_timeout_ms;  /* 0 = never */
    uint64_t frame_timeout_ms; /* 0 = never */
    /* Reply bytes queued and not yet taken by the client: past the limit (of the connection,
     * or of all the uid's connections together) the connection is no longer read until they
     * drain below half of it. A single reply larger than the limit is still sent whole. */
    uint64_t max_unsent_bytes;
    uint64_t max_unsent_bytes_per_uid;
    /* Inline payload (bytes fields, tensors) of queued and running requests: a request that
     * would pass the limit of its connection or uid is refused with RESOURCE_EXHAUSTED. */
    uint64_t max_queued_inline_bytes;
    uint64_t max_queued_inline_bytes_per_uid;
} ds_server_options;

/* options with every limit at its default (socket path unset). */
void ds_server_options_default(ds_server_options *options);

typedef struct ds_server ds_server;
typedef struct ds_conn ds_conn;

/* What the server hands up, on the loop thread: the layer above (the dispatcher) sets these at
 * start, so the server knows nothing of requests' meaning. */
typedef struct ds_server_handlers {
    /* One decoded request, its strings checked for NUL on the wire; `env` is borrowed for the
     * call. */
    void (*on_request)(void *ctx, ds_conn *conn, const Diffsynth__V1__Envelope *env);
    /* `conn` closed while jobs of its were queued or running (ds_conn_begin_job without its
     * ds_conn_end_job): they should stop. */
    void (*on_close_with_jobs)(void *ctx, ds_conn *conn);
    void *ctx;
} ds_server_handlers;

/* Binds and listens. Refuses a path that exists and is not a socket, or a socket another
 * process accepts connections on; removes a stale socket nobody listens on. The socket file
 * is mode 0600 (0660 with group_access) before anyone can connect. */
int ds_server_start(uv_loop_t *loop, const ds_server_options *options,
                    const ds_server_handlers *handlers, ds_server **out, ds_error *err);

/* Stops accepting and unlinks the socket; open connections stay until ds_server_close. */
void ds_server_stop_listening(ds_server *server);
/* Closes every connection once its queued writes are flushed; frees the server when the last
 * handle has closed (the loop must run). */
void ds_server_close(ds_server *server);

unsigned ds_server_connection_count(const ds_server *server);

/* Connection API used by the request handlers. */
void ds_conn_send(ds_conn *conn, const Diffsynth__V1__Envelope *env);
void ds_conn_send_error(ds_conn *conn, uint64_t request_id, int status, const char *message);
int ds_conn_is_open(const ds_conn *conn);
uid_t ds_conn_uid(const ds_conn *conn);
pid_t ds_conn_pid(const ds_conn *conn);
/* "conn 7 (uid 1000, pid 4242)": for logs. */
const char *ds_conn_describe(const ds_conn *conn);
/* The file descriptors passed with the frame being dispatched (SCM_RIGHTS; its
 * Envelope.fd_count), borrowed: valid only until on_request returns, when the server closes
 * them. A request maps what it needs before then. */
const int *ds_conn_frame_fds(const ds_conn *conn, size_t *count);
void ds_conn_ref(ds_conn *conn);
void ds_conn_unref(ds_conn *conn);
/* In-flight accounting for the job `env` asks for, called just before it is queued.
 * RESOURCE_EXHAUSTED (err says which limit) when the connection has max_inflight requests
 * queued or running, or when the request's inline bytes would pass the connection's or the
 * uid's queued-inline limit; ALREADY_EXISTS when its request id is already in flight. Each
 * success is matched by exactly one ds_conn_end_job with the same request id. */
int ds_conn_begin_job(ds_conn *conn, const Diffsynth__V1__Envelope *env, ds_error *err);
void ds_conn_end_job(ds_conn *conn, uint64_t request_id);
/* True while a job with this request id is queued or running for the connection: a second
 * request with the same id is refused, so replies and cancels name one request only. */
int ds_conn_request_in_flight(const ds_conn *conn, uint64_t request_id);

#endif
