#include "daemon/reply.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/log.h"
#include "diffsynth.pb-c.h"

void *ds_request_job_new(ds_daemon *d, ds_conn *conn, uint64_t request_id, size_t size,
                         const char *what)
{
    void *job = calloc(1, size);
    if (!job) {
        char message[96];
        snprintf(message, sizeof message, "out of memory queueing %s", what);
        ds_reply_error(d, conn, request_id, DS_ERR_RESOURCE_EXHAUSTED, message);
    }
    return job;
}

void ds_request_submit(ds_daemon *d, ds_conn *conn, uint64_t request_id, ds_job *job,
                       ds_job_kind kind, int (*run)(ds_job *job),
                       void (*progress)(ds_job *job, const ds_job_progress *progress),
                       void (*complete)(ds_job *job))
{
    ds_conn_ref(conn);
    job->kind = kind;
    job->request_id = request_id;
    job->owner = conn;
    job->uid = (unsigned)ds_conn_uid(conn);
    job->run = run;
    job->progress = progress;
    job->complete = complete;
    ds_scheduler_submit(d->scheduler, job);
}

void ds_reply_error(ds_daemon *d, ds_conn *conn, uint64_t request_id, int status,
                    const char *message)
{
    d->requests_served++;
    ds_log_debug("%s: request %llu failed: %s: %s", ds_conn_describe(conn),
                 (unsigned long long)request_id, ds_status_name(status), message);
    ds_conn_send_error(conn, request_id, status, message);
}

void ds_reply_progress(ds_conn *conn, uint64_t request_id, const ds_job_progress *p)
{
    if (!ds_conn_is_open(conn))
        return;
    Diffsynth__V1__Progress progress = DIFFSYNTH__V1__PROGRESS__INIT;
    progress.phase = (char *)p->phase;
    progress.done = p->done;
    progress.total = p->total;
    progress.elapsed_s = p->elapsed_s;
    progress.eta_s = p->eta_s;
    progress.message = (char *)p->message;
    Diffsynth__V1__Event event = DIFFSYNTH__V1__EVENT__INIT;
    event.kind_case = DIFFSYNTH__V1__EVENT__KIND_PROGRESS;
    event.progress = &progress;
    Diffsynth__V1__Envelope out = DIFFSYNTH__V1__ENVELOPE__INIT;
    out.request_id = request_id;
    out.body_case = DIFFSYNTH__V1__ENVELOPE__BODY_EVENT;
    out.event = &event;
    ds_conn_send(conn, &out);
}
