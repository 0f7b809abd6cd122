/* What every request handler that queues a job does the same way (dispatch's Load, RunStep,
 * RunPipeline): allocate and submit the job on the connection's behalf, reply a failed
 * request's Error and a running job's progress Events.
 */
#ifndef DS_DAEMON_REPLY_H
#define DS_DAEMON_REPLY_H

#include <stdint.h>

#include "daemon/daemon.h"
#include "daemon/scheduler.h"
#include "daemon/server.h"

/* A zeroed job struct of `size` bytes for request `request_id`; NULL after replying
 * RESOURCE_EXHAUSTED "out of memory queueing <what>". */
void *ds_request_job_new(ds_daemon *daemon, ds_conn *conn, uint64_t request_id, size_t size,
                         const char *what);
/* Submits `job` for request `request_id` on `conn` with its kind and callbacks: the connection
 * owns it (its uid's turns) and holds a reference for it, which the job's completion drops. */
void ds_request_submit(ds_daemon *daemon, ds_conn *conn, uint64_t request_id, ds_job *job,
                       ds_job_kind kind, int (*run)(ds_job *job),
                       void (*progress)(ds_job *job, const ds_job_progress *progress),
                       void (*complete)(ds_job *job));

/* Counts the request as served, logs the failure at debug level and sends the Error reply. */
void ds_reply_error(ds_daemon *daemon, ds_conn *conn, uint64_t request_id, int status,
                    const char *message);
/* Sends a job's progress as an Event on its request id, when the connection is still open. */
void ds_reply_progress(ds_conn *conn, uint64_t request_id, const ds_job_progress *p);

#endif
