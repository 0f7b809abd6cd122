/* The socket server (DESIGN §3, §4.8): the listening Unix socket, connections, reads through
 * the frame decoder, and queued writes. Everything here runs on the loop thread.
 *
 * A connection is reference-counted: the open socket holds one reference and every job working
 * for the connection holds one, so a client may disconnect mid-request: the job finishes (or
 * is cancelled), sees the connection closed, and drops its result.
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

typedef struct ds_server_options {
    const char *socket_path;
    int group_access;          /* 0660 instead of 0600 */
    uint64_t max_frame_bytes;
    unsigned max_connections;
    unsigned max_inflight;     /* queued or running jobs per connection */
} ds_server_options;

typedef struct ds_server ds_server;
typedef struct ds_conn ds_conn;
typedef struct ds_daemon ds_daemon;

/* Binds and listens. Refuses a path that exists and is not a socket, or a socket another
 * process accepts connections on; removes a stale socket nobody listens on. The socket file
 * is mode 0600 (0660 with group_access) before anyone can connect. */
int ds_server_start(uv_loop_t *loop, const ds_server_options *options, ds_daemon *daemon,
                    ds_server **out, ds_error *err);

/* Stops accepting and unlinks the socket; open connections stay until ds_server_close. */
void ds_server_stop_listening(ds_server *server);
/* Closes every connection once its queued writes are flushed; frees the server when the last
 * handle has closed (the loop must run). */
void ds_server_close(ds_server *server);

unsigned ds_server_connection_count(const ds_server *server);

/* Connection API used by dispatch. */
void ds_conn_send(ds_conn *conn, const Diffsynth__V1__Envelope *env);
void ds_conn_send_error(ds_conn *conn, uint64_t request_id, int status, const char *message);
int ds_conn_is_open(const ds_conn *conn);
uid_t ds_conn_uid(const ds_conn *conn);
pid_t ds_conn_pid(const ds_conn *conn);
/* "conn 7 (uid 1000, pid 4242)": for logs. */
const char *ds_conn_describe(const ds_conn *conn);
/* The file descriptors passed with the frame being dispatched (SCM_RIGHTS; its
 * Envelope.fd_count), borrowed: valid only until ds_dispatch returns, when the server closes
 * them. A request maps what it needs before then. */
const int *ds_conn_frame_fds(const ds_conn *conn, size_t *count);
void ds_conn_ref(ds_conn *conn);
void ds_conn_unref(ds_conn *conn);
/* In-flight accounting for jobs: RESOURCE_EXHAUSTED (err says so) when the connection is at
 * its limit. */
int ds_conn_begin_job(ds_conn *conn, ds_error *err);
void ds_conn_end_job(ds_conn *conn);

#endif
