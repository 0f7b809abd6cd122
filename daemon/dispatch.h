/* Requests → handlers (DESIGN §3). Cheap requests (Identify, ListModels, Status, Cancel,
 * ListConfigs, Unload) are answered on the loop thread; Load becomes a job on the worker, and
 * its result enters the pool on the loop thread when the job completes; RunStep is a job too
 * (daemon/run_step.c).
 */
#ifndef DS_DAEMON_DISPATCH_H
#define DS_DAEMON_DISPATCH_H

#include "core/error.h"
#include "daemon/daemon.h"
#include "daemon/server.h"
#include "diffsynth.pb-c.h"

/* Checks an envelope before any handler sees it: a request body is present, every string
 * field of any request is valid UTF-8 (found through the descriptors, so new fields are
 * covered), and its fields are within bounds (paths non-empty and absolute, ids non-empty,
 * names short and printable). NUL bytes inside strings never reach here: the server refuses
 * them on the wire, before protobuf-c's C strings would truncate them. Pure: no daemon state, no I/O. INVALID_ARGUMENT with a message naming the field. */
int ds_dispatch_validate(const Diffsynth__V1__Envelope *env, ds_error *err);

/* Handles one decoded envelope from `conn`: validates, then answers or queues a job. */
void ds_dispatch(ds_daemon *daemon, ds_conn *conn, const Diffsynth__V1__Envelope *env);

/* The server's handlers for `daemon`: each request goes to ds_dispatch, and a connection that
 * closes with jobs in flight has them cancelled. */
ds_server_handlers ds_dispatch_server_handlers(ds_daemon *daemon);

#endif
