/* The job scheduler (DESIGN §3, §4.9): one queue served by one worker thread, the "device
 * worker". The CPU backend has one; a GPU adds its own worker behind the same job interface.
 *
 * A job may run in turns: run() returning DS_JOB_YIELD puts it back at the tail of the queue,
 * so long jobs (pipelines, one denoising step per turn) interleave with each other and with the
 * jobs queued behind them. Between turns the job is an ordinary queued job: counted in
 * ds_scheduler_queued, and cancelled there like one that never ran.
 *
 * Each turn goes round robin between clients, not first in first out over jobs: first between
 * peer uids, then between the connections (owners) of the chosen uid, then, within one owner,
 * to its job that has waited longest in the queue. So one client queueing many jobs delays
 * another client's job by at most one turn per other client (about one unit: a denoising step,
 * one RunStep), however long its own queue is. A client that had nothing queued or running
 * joins the round after every client already waiting and before the one served last, so coming
 * back from idle (one job at a time) never earns more than one turn per round.
 *
 * A job runs on the worker and completes on the loop thread. The worker reports progress and
 * completion through a mutex-protected queue and a uv_async_t: libuv may coalesce several
 * uv_async_send calls into one callback, so the callback drains the whole queue, in order.
 * Every job completes exactly once, also when it was cancelled while queued.
 */
#ifndef DS_DAEMON_SCHEDULER_H
#define DS_DAEMON_SCHEDULER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/error.h"

typedef enum ds_job_kind {
    DS_JOB_LOAD = 1,
    DS_JOB_RUN_STEP = 2,
    DS_JOB_RUN_PIPELINE = 3,
} ds_job_kind;

/* run()'s "more work remains": queue me again (a positive value, never a ds_status). */
#define DS_JOB_YIELD 1

#define DS_PROGRESS_PHASE_MAX 32
#define DS_PROGRESS_MESSAGE_MAX 256

typedef struct ds_job_progress {
    char phase[DS_PROGRESS_PHASE_MAX];
    uint64_t done;
    uint64_t total;
    double elapsed_s;     /* since the job started running */
    double eta_s;         /* < 0 when unknown */
    char message[DS_PROGRESS_MESSAGE_MAX];
} ds_job_progress;

typedef struct ds_scheduler ds_scheduler;
typedef struct ds_job ds_job;

struct ds_job {
    /* Set by the creator before submitting. */
    ds_job_kind kind;
    uint64_t request_id;
    void *owner;          /* who asked (a connection); the scheduler only compares it */
    unsigned uid;         /* the owner's peer uid: turns are shared between uids first */
    /* Worker thread: DS_OK, a negative ds_status, or DS_JOB_YIELD to run again later. */
    int (*run)(ds_job *job);
    void (*progress)(ds_job *job, const ds_job_progress *progress); /* loop thread; may be NULL */
    void (*complete)(ds_job *job);  /* loop thread, exactly once; may free the job */

    /* Results, valid in complete(). */
    int status;           /* run()'s return, or DS_ERR_CANCELLED if cancelled before it ran */
    ds_error error;       /* filled by run() when status < 0 */
    double queue_s;       /* seconds spent queued, all turns together (also valid in run()) */
    unsigned turns;       /* run() calls so far */

    /* Set by ds_scheduler_cancel*; run() polls it with ds_job_cancelled at checkpoints. */
    atomic_int cancel;

    /* Scheduler state: zero before the first submission (jobs are calloc'd). */
    ds_scheduler *sched;
    ds_job *next;
    double started_s;         /* the first turn's start */
    double phase_started_s;
    double queued_at_s;       /* when it last entered the queue */
    /* When this job's uid, and its owner, last got a turn (2 x the scheduler's turn count), or
     * joined the rotation with nothing queued or running (odd: just before the turn served
     * last); every job of one uid or owner carries the same value. */
    uint64_t uid_turn;
    uint64_t owner_turn;
    char phase[DS_PROGRESS_PHASE_MAX];
};

/* Starts the worker. `loop` must be the loop thread's loop. */
int ds_scheduler_new(uv_loop_t *loop, ds_scheduler **out, ds_error *err);

/* Called on the loop thread after a completion leaves the scheduler with nothing queued,
 * running or undelivered (how shutdown knows the drain is over). */
void ds_scheduler_on_idle(ds_scheduler *sched, void (*fn)(void *arg), void *arg);

/* Jobs one uid may have queued or running at once, all its connections together: beyond it
 * ds_scheduler_admit refuses. */
#define DS_DEFAULT_MAX_JOBS_PER_UID 256

/* Sets the per-uid cap (loop thread, before the first submission); 0 = no cap. */
void ds_scheduler_set_max_jobs_per_uid(ds_scheduler *sched, size_t max_jobs);

/* Checks, before a new request is queued, that its uid is below the per-uid cap: DS_OK, or
 * RESOURCE_EXHAUSTED naming the uid, its count and the cap. Loop thread; the request must be
 * submitted in the same callback (nothing else submits meanwhile). A job submitted again in
 * stages is not checked again. */
int ds_scheduler_admit(ds_scheduler *sched, unsigned uid, ds_error *err);

/* Queued or running jobs of `uid`. */
size_t ds_scheduler_uid_jobs(ds_scheduler *sched, unsigned uid);

/* Queues a job (loop thread). The scheduler does not own it: complete() disposes of it. A job
 * may be submitted again from its complete() (a job in stages); each submission completes
 * exactly once. */
void ds_scheduler_submit(ds_scheduler *sched, ds_job *job);

/* Cancels the job of `owner` with this request id. A queued job (also one that yielded) is
 * removed and completes with DS_ERR_CANCELLED before this returns; a running one gets its
 * cancel flag set, and if it yields anyway it completes with DS_ERR_CANCELLED instead of
 * running again.
 * Returns 1 when the job was found, 0 otherwise. */
int ds_scheduler_cancel(ds_scheduler *sched, const void *owner, uint64_t request_id);
/* The same for every job of `owner` (a connection that went away), or of everyone (NULL). */
void ds_scheduler_cancel_owner(ds_scheduler *sched, const void *owner);

/* Worker side: true once the job was asked to stop. */
int ds_job_cancelled(const ds_job *job);
/* Worker side: posts a progress event; `message` may be NULL. The ETA assumes the rest of
 * the phase runs at the pace of its part done so far. */
void ds_job_report(ds_job *job, const char *phase, uint64_t done, uint64_t total,
                   const char *message);
/* The same with the job's own estimate of the seconds left (< 0: unknown). */
void ds_job_report_eta(ds_job *job, const char *phase, uint64_t done, uint64_t total,
                       double eta_s, const char *message);

size_t ds_scheduler_queued(ds_scheduler *sched);
size_t ds_scheduler_running(ds_scheduler *sched);
int ds_scheduler_idle(ds_scheduler *sched);

/* Lets the worker finish the queue, joins it, delivers what it left, and closes the async
 * handle (loop thread). The scheduler frees itself once the handle has closed, so the loop
 * must run afterwards (uv_run until it returns). */
void ds_scheduler_stop(ds_scheduler *sched);

#endif
