/* The replies every request handler sends the same way (dispatch's Load, RunStep,
 * RunPipeline): a failed request's Error and a running job's progress Events.
 */
#ifndef DS_DAEMON_REPLY_H
#define DS_DAEMON_REPLY_H

#include <stdint.h>

#include "daemon/daemon.h"
#include "daemon/scheduler.h"
#include "daemon/server.h"

/* Counts the request as served, logs the failure at debug level and sends the Error reply. */
void ds_reply_error(ds_daemon *daemon, ds_conn *conn, uint64_t request_id, int status,
                    const char *message);
/* Sends a job's progress as an Event on its request id, when the connection is still open. */
void ds_reply_progress(ds_conn *conn, uint64_t request_id, const ds_job_progress *p);

#endif
