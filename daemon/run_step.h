/* RunStep (DESIGN §3): one step ("forward", ...) of a loaded model on named tensors, run as a
 * job on the device worker.
 *
 * Loop thread: the request is validated (tensor encodings, names, shared-memory names), the
 * model and aux models are looked up and pinned (Unload cannot free them mid-run), shared-memory
 * inputs and the output region are opened, checked and mapped, inline inputs are copied out of
 * the frame, and the job is queued. Worker: the step runs on the daemon's backend, then its
 * outputs are placed, inline or into the output region. Loop thread again: the reply.
 */
#ifndef DS_DAEMON_RUN_STEP_H
#define DS_DAEMON_RUN_STEP_H

#include "core/error.h"
#include "daemon/daemon.h"
#include "daemon/server.h"
#include "diffsynth.pb-c.h"

/* Bounds on one request: far above real use. */
#define DS_RUN_STEP_MAX_TENSORS 1024
#define DS_RUN_STEP_MAX_PARAMS 256
#define DS_RUN_STEP_MAX_AUX 16
#define DS_RUN_STEP_MAX_NAME 256
#define DS_RUN_STEP_MAX_VALUE 4096

/* Pure checks of the request's encoding: names non-empty, short and unique; dtypes known;
 * dims positive, at most DS_MAX_DIMS, byte count without overflow; inline data exactly
 * numel * dtype size, or a shared-memory region of exactly that size. INVALID_ARGUMENT naming
 * the tensor or field. */
int ds_run_step_validate(const Diffsynth__V1__RunStepRequest *req, ds_error *err);

/* Handles a validated RunStep envelope: answers errors at once, or queues the job. */
void ds_run_step_handle(ds_daemon *daemon, ds_conn *conn, const Diffsynth__V1__Envelope *env);

#endif
