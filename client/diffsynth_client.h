/* libdiffsynth-client: a thin C client for diffsynthd.
 *
 * It speaks the contract in proto/diffsynth.proto over the daemon's Unix socket: each frame is a
 * 4-byte little-endian length followed by one serialized Envelope. Messages are the nanopb types
 * of diffsynth.pb.h (generated with fallback_type:FT_POINTER, so strings, bytes and repeated
 * fields are pointers). The library links nothing of the daemon.
 *
 * Ownership: envelopes you SEND stay yours; the library only reads them (string fields may point
 * at your own storage, const or not). Envelopes the library RETURNS to you were decoded into
 * malloc'd memory and are yours to release with ds_client_envelope_free. Strings returned by
 * ds_client_last_error and ds_client_socket_path belong to the client and live until the next
 * call on it or ds_client_close.
 *
 * Errors: every fallible function returns DS_CLIENT_OK (0) or a negative ds_client_status and
 * records a message for ds_client_last_error. An Error reply from the daemon is
 * DS_CLIENT_EDAEMON; its proto Code is ds_client_last_code and its message ds_client_last_error.
 *
 * Threads: a ds_client is not thread-safe. Use one ds_client per thread (or lock around every
 * call). Different clients share no state. Progress callbacks run on the calling thread, inside
 * ds_client_call.
 */
#ifndef DS_CLIENT_DIFFSYNTH_CLIENT_H
#define DS_CLIENT_DIFFSYNTH_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diffsynth.pb.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds_client ds_client;

typedef enum ds_client_status {
    DS_CLIENT_OK = 0,
    DS_CLIENT_EDAEMON = -1,     /* the daemon answered with an Error (see ds_client_last_code) */
    DS_CLIENT_ECONNECT = -2,    /* the socket could not be reached (no daemon, wrong path, denied) */
    DS_CLIENT_ECLOSED = -3,     /* the daemon closed the connection */
    DS_CLIENT_ETIMEDOUT = -4,   /* nothing arrived in time; the connection stays usable */
    DS_CLIENT_EFRAME = -5,      /* a frame over the size limit or one that does not decode */
    DS_CLIENT_EIO = -6,         /* read or write failed */
    DS_CLIENT_EINVAL = -7,      /* bad argument, or the client is not connected */
    DS_CLIENT_ENOMEM = -8,
    DS_CLIENT_EPROTO = -9,      /* a well-formed reply that breaks the contract (wrong type, ...) */
} ds_client_status;

/* Default cap on one frame's payload, the same as the daemon's default. */
#define DS_CLIENT_DEFAULT_MAX_FRAME ((uint32_t)64 << 20)

/* Frames of other requests that ds_client_call keeps for later before it gives up. */
#define DS_CLIENT_MAX_PENDING 256

/* Creates an unconnected client. Returns NULL only when memory ran out. Release with
 * ds_client_close. */
ds_client *ds_client_new(void);

/* Connects to the daemon's socket; socket_path NULL means ds_default_socket_path
 * ($DIFFSYNTH_SOCKET, then $XDG_RUNTIME_DIR/diffsynthd.sock, then /tmp/diffsynthd-<uid>.sock).
 * Fails with DS_CLIENT_ECONNECT, naming the path and the reason. */
int ds_client_connect(ds_client *client, const char *socket_path);

/* Closes the connection, drops pending frames and frees the client. NULL is allowed. */
void ds_client_close(ds_client *client);

/* The path connected to (or last tried); "" before any ds_client_connect. Owned by the client. */
const char *ds_client_socket_path(const ds_client *client);

/* The connected socket's file descriptor, for poll()-based event loops; -1 when not connected.
 * Owned by the client: do not read from it or close it. */
int ds_client_fd(const ds_client *client);

/* Caps the payload size of frames in both directions (default DS_CLIENT_DEFAULT_MAX_FRAME,
 * at most UINT32_MAX). A received length over the cap fails with DS_CLIENT_EFRAME without
 * allocating, and the connection is then unusable (the stream cannot be resynchronised). */
int ds_client_set_max_frame(ds_client *client, uint64_t max_bytes);

/* A fresh request id: 1, 2, 3, ... per client, never 0. */
uint64_t ds_client_next_id(ds_client *client);

/* Message of the last failure; "" when none. Owned by the client. */
const char *ds_client_last_error(const ds_client *client);

/* The proto Code (diffsynth_v1_Code) of the last daemon Error reply; 0 (OK) when the last failure
 * was not a daemon Error. */
int ds_client_last_code(const ds_client *client);

/* "NOT_FOUND" etc. for a proto Code; "UNKNOWN" for numbers outside the table. Static storage. */
const char *ds_client_code_name(int code);

/* Encodes `envelope` and writes it as one frame, retrying partial writes and EINTR. A request
 * normally carries an id from ds_client_next_id. */
int ds_client_send(ds_client *client, const diffsynth_v1_Envelope *envelope);

/* Receives the next frame into *out: first those ds_client_call set aside (oldest first), then
 * from the socket. timeout_ms < 0 waits without limit, 0 only takes what has already arrived.
 * DS_CLIENT_ETIMEDOUT keeps a partly read frame for the next call. On success *out is yours:
 * release it with ds_client_envelope_free. On failure *out is zeroed. */
int ds_client_recv(ds_client *client, diffsynth_v1_Envelope *out, int timeout_ms);

/* Called for each Progress event of the request ds_client_call waits on. `progress` is valid
 * only during the call. The callback may itself use the client (e.g. ds_client_cancel). */
typedef void (*ds_client_progress_fn)(const diffsynth_v1_Progress *progress, uint64_t request_id,
                                      void *user);

/* Sends `request` and waits for its reply. request->request_id 0 is replaced by
 * ds_client_next_id (the request is not modified: a copy is sent). Frames of other request ids
 * are kept for ds_client_recv (at most DS_CLIENT_MAX_PENDING); Progress events of this request
 * go to on_progress (may be NULL). timeout_ms bounds each silence, not the whole call: a long
 * load that keeps reporting progress does not time out. An Error reply for this request, or one
 * with request_id 0 (the daemon could not decode a frame), gives DS_CLIENT_EDAEMON. A reply of
 * the wrong kind (every request kind X has the reply X_result) gives DS_CLIENT_EPROTO. On
 * success *response holds the reply and is yours: release it with ds_client_envelope_free. On
 * failure *response is zeroed. */
int ds_client_call(ds_client *client, const diffsynth_v1_Envelope *request,
                   diffsynth_v1_Envelope *response, int timeout_ms,
                   ds_client_progress_fn on_progress, void *user);

/* Asks the daemon to cancel request `target_request_id` of this connection and waits for the
 * answer; *found (may be NULL) tells whether it was still queued or running. */
int ds_client_cancel(ds_client *client, uint64_t target_request_id, int timeout_ms, bool *found);

/* Releases what the library decoded into *envelope and zeroes it. NULL is allowed. */
void ds_client_envelope_free(diffsynth_v1_Envelope *envelope);

/* Makes `path` absolute against the current working directory, lexically: "./" segments are
 * dropped, nothing else is resolved (no realpath: the daemon resolves and checks model roots
 * itself, and the file may live where only the daemon can see it). *out is malloc'd and yours
 * to free(). */
int ds_client_absolute_path(ds_client *client, const char *path, char **out);

#ifdef __cplusplus
}
#endif

#endif
