/* Requests → handlers (DESIGN §3). Cheap requests (Identify, ListModels, Status, Cancel,
 * ListConfigs, Unload) are answered on the loop thread; Load becomes a job on the worker, and
 * its result enters the pool on the loop thread when the job completes; RunStep is a job too
 * (daemon/run_step.c).
 */
#ifndef DS_DAEMON_DISPATCH_H
#define DS_DAEMON_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/model_configs.h"
#include "daemon/admission.h"
#include "daemon/identify_cache.h"
#include "daemon/paths.h"
#include "daemon/pool.h"
#include "daemon/scheduler.h"
#include "daemon/server.h"
#include "diffsynth.pb-c.h"
#include "kernels/backend.h"
#include "vram/vram_manager.h"

/* Bounds on what one request may name: far above real use, low enough that no request can
 * make the daemon do unbounded work. */
#define DS_MAX_PATHS_PER_REQUEST 1024
#define DS_MAX_CLIENT_NAME 256

/* Everything the handlers share. Owned by main; touched only on the loop thread, except
 * `configs` and `roots`, which are immutable once the server starts and read by the worker. */
struct ds_daemon {
    const ds_config_table *configs;
    ds_model_roots roots;
    ds_pool *pool;
    ds_scheduler *scheduler;
    ds_server *server;
    const char *socket_path;
    uint64_t max_frame_bytes;
    uint64_t started_monotonic_ms;
    uint64_t requests_served;
    int shutting_down;         /* new requests get UNAVAILABLE */
    ds_identify_cache identify_cache;
    /* Where steps compute, and the CPU backend whose host memory holds step inputs and outputs
     * (the same backend unless --backend cuda). Created at start, used by the worker only. */
    ds_backend *backend;
    ds_backend *host_backend;
    /* --vram-limit: the pool's manager over `backend`, passed to every step (NULL: none, the
     * weights are used in place). Run by the worker; the loop thread only reads its stats and,
     * through a model's release hook, drops unloaded models (both under its lock). */
    ds_vram_manager *vram;
    int vram_limited;          /* --vram-limit gave a number (not "none") */
    /* RunStep and RunPipeline memory reserved until their replies (--request-memory-limit). */
    ds_admission admission;
};

/* Checks an envelope before any handler sees it: a request body is present, every string
 * field of any request is valid UTF-8 (found through the descriptors, so new fields are
 * covered), and its fields are within bounds (paths non-empty and absolute, ids non-empty,
 * names short and printable). NUL bytes inside strings never reach here: the server refuses
 * them on the wire, before protobuf-c's C strings would truncate them. Pure: no daemon state, no I/O. INVALID_ARGUMENT with a message naming the field. */
int ds_dispatch_validate(const Diffsynth__V1__Envelope *env, ds_error *err);

/* Handles one decoded envelope from `conn`: validates, then answers or queues a job. */
void ds_dispatch(ds_daemon *daemon, ds_conn *conn, const Diffsynth__V1__Envelope *env);

/* For the job handlers (Load here, RunStep, RunPipeline): counts the request as served, logs
 * the failure at debug level and sends the Error reply. */
void ds_dispatch_reply_error(ds_daemon *daemon, ds_conn *conn, uint64_t request_id, int status,
                             const char *message);
/* Sends a job's progress as an Event on its request id, when the connection is still open. */
void ds_dispatch_send_progress(ds_conn *conn, uint64_t request_id, const ds_job_progress *p);

/* Milliseconds of CLOCK_MONOTONIC / of the wall clock. */
uint64_t ds_monotonic_ms(void);
uint64_t ds_wall_ms(void);

#endif
