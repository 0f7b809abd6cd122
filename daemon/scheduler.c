#include "daemon/scheduler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/list.h"

/* A progress event on its way from the worker to the loop. */
typedef struct notice {
    struct notice *next;
    ds_job *job;
    ds_job_progress progress;
} notice;

struct ds_scheduler {
    uv_loop_t *loop;
    uv_async_t async;
    uv_thread_t worker;
    int worker_started;

    uv_mutex_t lock;           /* guards everything below */
    uv_cond_t wake;
    ds_job *queue_head;        /* queued jobs in the order they entered the queue */
    ds_job *queue_tail;
    size_t queued;
    uint64_t turns_given;      /* turns handed out so far (ds_job.uid_turn's clock) */
    size_t max_jobs_per_uid;   /* 0: no cap */
    ds_job *running;
    int stopping;
    notice *notices_head;      /* FIFO of progress events for the loop */
    notice *notices_tail;
    ds_job *done_head;         /* FIFO of finished jobs, linked through job->next, so that */
    ds_job *done_tail;         /* finishing never needs memory */
    size_t undelivered;        /* finished jobs whose complete() has not run yet */

    void (*idle_fn)(void *arg);
    void *idle_arg;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A newly submitted job joins its uid's and its owner's place in the rotation: the stamps of
 * their jobs already queued or running. A uid or owner with none joins just before the one
 * served last: after everyone already waiting, so that a client which submits its next job as
 * soon as the last one finished still gets one turn per round, not every other turn. Service
 * stamps are even (2 x the turn), arrival stamps odd. Caller holds the lock. */
static void adopt_stamps(ds_job *job, const ds_job *q, int *uid_found, int *owner_found)
{
    if (!*uid_found && q->uid == job->uid) {
        job->uid_turn = q->uid_turn;
        *uid_found = 1;
    }
    if (!*owner_found && q->owner == job->owner) {
        job->owner_turn = q->owner_turn;
        *owner_found = 1;
    }
}

static void join_rotation(ds_scheduler *sched, ds_job *job)
{
    int uid_found = 0, owner_found = 0;
    job->uid_turn = job->owner_turn = sched->turns_given ? 2 * sched->turns_given - 1 : 0;
    if (sched->running)
        adopt_stamps(job, sched->running, &uid_found, &owner_found);
    for (const ds_job *q = sched->queue_head; q && !(uid_found && owner_found); q = q->next)
        adopt_stamps(job, q, &uid_found, &owner_found);
}

/* Takes the next turn's job off the queue: the uid served longest ago, then its owner served
 * longest ago, then that owner's job first in the queue; then stamps the uid and the owner as
 * served now. A linear scan: the queue holds at most connections x in-flight jobs, and a turn
 * (a denoising step, a RunStep) costs far more. Caller holds the lock; the queue is not empty. */
static ds_job *take_next(ds_scheduler *sched)
{
    ds_job *best = NULL, *best_prev = NULL, *prev = NULL;
    for (ds_job *q = sched->queue_head; q; prev = q, q = q->next)
        if (!best || q->uid_turn < best->uid_turn ||
            (q->uid_turn == best->uid_turn && q->owner_turn < best->owner_turn)) {
            best = q;
            best_prev = prev;
        }
    if (best_prev)
        best_prev->next = best->next;
    else
        sched->queue_head = best->next;
    if (sched->queue_tail == best)
        sched->queue_tail = best_prev;
    best->next = NULL;
    sched->queued--;
    uint64_t turn = 2 * ++sched->turns_given;
    best->uid_turn = best->owner_turn = turn;
    for (ds_job *q = sched->queue_head; q; q = q->next) {
        if (q->uid == best->uid)
            q->uid_turn = turn;
        if (q->owner == best->owner)
            q->owner_turn = turn;
    }
    return best;
}

/* Caller holds the lock. */
static void enqueue(ds_scheduler *sched, ds_job *job)
{
    job->queued_at_s = now_s();
    DS_FIFO_PUSH(sched->queue_head, sched->queue_tail, job);
    sched->queued++;
}

/* Caller holds the lock. */
static void push_notice(ds_scheduler *sched, notice *n)
{
    DS_FIFO_PUSH(sched->notices_head, sched->notices_tail, n);
}

static void worker_main(void *arg)
{
    ds_scheduler *sched = arg;
    uv_mutex_lock(&sched->lock);
    for (;;) {
        while (!sched->queue_head && !sched->stopping)
            uv_cond_wait(&sched->wake, &sched->lock);
        if (!sched->queue_head)
            break;
        ds_job *job = take_next(sched);
        sched->running = job;
        uv_mutex_unlock(&sched->lock);

        double now = now_s();
        job->queue_s += now - job->queued_at_s;
        /* A job submitted again (in stages) keeps its first start: elapsed times span it all. */
        if (job->turns++ == 0 && job->started_s == 0.0)
            job->started_s = now;
        if (job->turns == 1)
            job->phase_started_s = now;
        if (ds_job_cancelled(job))
            job->status = ds_error_set(&job->error, DS_ERR_CANCELLED, "cancelled");
        else
            job->status = job->run(job);

        uv_mutex_lock(&sched->lock);
        sched->running = NULL;
        if (job->status == DS_JOB_YIELD) {
            /* A cancel that arrived during the turn ends the job at this boundary rather than
             * after a wait in the queue. */
            if (!ds_job_cancelled(job)) {
                enqueue(sched, job);
                continue;
            }
            job->status = ds_error_set(&job->error, DS_ERR_CANCELLED, "cancelled");
        }
        sched->undelivered++;
        DS_FIFO_PUSH(sched->done_head, sched->done_tail, job);
        uv_mutex_unlock(&sched->lock);
        uv_async_send(&sched->async);
        uv_mutex_lock(&sched->lock);
    }
    uv_mutex_unlock(&sched->lock);
}

/* Progress first, then completions: a job posts all its progress before it finishes, so each
 * job's events still arrive before its result. */
static void deliver(ds_scheduler *sched)
{
    uv_mutex_lock(&sched->lock);
    notice *n = sched->notices_head;
    ds_job *done = sched->done_head;
    sched->notices_head = sched->notices_tail = NULL;
    sched->done_head = sched->done_tail = NULL;
    uv_mutex_unlock(&sched->lock);

    while (n) {
        notice *next = n->next;
        if (n->job->progress)
            n->job->progress(n->job, &n->progress);
        free(n);
        n = next;
    }
    int completed = done != NULL;
    while (done) {
        ds_job *job = done;
        done = job->next;
        uv_mutex_lock(&sched->lock);
        sched->undelivered--;
        uv_mutex_unlock(&sched->lock);
        job->complete(job);
    }
    if (completed && sched->idle_fn && ds_scheduler_idle(sched))
        sched->idle_fn(sched->idle_arg);
}

static void on_async(uv_async_t *handle) { deliver(handle->data); }

int ds_scheduler_new(uv_loop_t *loop, ds_scheduler **out, ds_error *err)
{
    ds_scheduler *sched = calloc(1, sizeof *sched);
    if (!sched)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory creating the scheduler");
    sched->loop = loop;
    sched->max_jobs_per_uid = DS_DEFAULT_MAX_JOBS_PER_UID;
    int rc = uv_mutex_init(&sched->lock);
    if (rc != 0)
        goto fail_mutex;
    if ((rc = uv_cond_init(&sched->wake)) != 0)
        goto fail_cond;
    if ((rc = uv_async_init(loop, &sched->async, on_async)) != 0)
        goto fail_async;
    sched->async.data = sched;
    if ((rc = uv_thread_create(&sched->worker, worker_main, sched)) != 0) {
        uv_close((uv_handle_t *)&sched->async, NULL);
        /* The handle's memory must outlive its close: run the loop once to finish it. */
        uv_run(loop, UV_RUN_NOWAIT);
        goto fail_async;
    }
    sched->worker_started = 1;
    *out = sched;
    return DS_OK;

fail_async:
    uv_cond_destroy(&sched->wake);
fail_cond:
    uv_mutex_destroy(&sched->lock);
fail_mutex:
    free(sched);
    return ds_error_set(err, DS_ERR_INTERNAL, "cannot start the worker thread: %s", uv_strerror(rc));
}

void ds_scheduler_on_idle(ds_scheduler *sched, void (*fn)(void *arg), void *arg)
{
    sched->idle_fn = fn;
    sched->idle_arg = arg;
}

void ds_scheduler_set_max_jobs_per_uid(ds_scheduler *sched, size_t max_jobs)
{
    sched->max_jobs_per_uid = max_jobs;
}

/* Caller holds the lock. */
static size_t count_uid(const ds_scheduler *sched, unsigned uid)
{
    size_t n = sched->running && sched->running->uid == uid;
    for (const ds_job *q = sched->queue_head; q; q = q->next)
        n += q->uid == uid;
    return n;
}

size_t ds_scheduler_uid_jobs(ds_scheduler *sched, unsigned uid)
{
    uv_mutex_lock(&sched->lock);
    size_t n = count_uid(sched, uid);
    uv_mutex_unlock(&sched->lock);
    return n;
}

int ds_scheduler_admit(ds_scheduler *sched, unsigned uid, ds_error *err)
{
    size_t n = ds_scheduler_uid_jobs(sched, uid);
    if (sched->max_jobs_per_uid && n >= sched->max_jobs_per_uid)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "uid %u has %zu jobs queued or running, the most one uid may have "
                            "(--max-jobs-per-uid %zu); wait for some to finish",
                            uid, n, sched->max_jobs_per_uid);
    return DS_OK;
}

void ds_scheduler_submit(ds_scheduler *sched, ds_job *job)
{
    job->sched = sched;
    job->status = DS_OK;
    ds_error_clear(&job->error);
    atomic_store(&job->cancel, 0);
    job->phase[0] = '\0';
    job->queue_s = 0.0;
    job->turns = 0;
    uv_mutex_lock(&sched->lock);
    join_rotation(sched, job);
    enqueue(sched, job);
    uv_cond_signal(&sched->wake);
    uv_mutex_unlock(&sched->lock);
}

/* Removes matching queued jobs (owner NULL = any; by_id: only request_id) into a private list
 * and flags a matching running job. Returns how many matched. */
static int cancel_matching(ds_scheduler *sched, const void *owner, int by_id, uint64_t request_id)
{
    ds_job *removed = NULL, **removed_tail = &removed;
    int found = 0;
    uv_mutex_lock(&sched->lock);
    ds_job **link = &sched->queue_head;
    ds_job *prev = NULL;
    while (*link) {
        ds_job *job = *link;
        int match = (!owner || job->owner == owner) && (!by_id || job->request_id == request_id);
        if (match) {
            *link = job->next;
            if (sched->queue_tail == job)
                sched->queue_tail = prev;
            sched->queued--;
            job->next = NULL;
            *removed_tail = job;
            removed_tail = &job->next;
            found++;
            if (by_id)
                break;
        } else {
            prev = job;
            link = &job->next;
        }
    }
    ds_job *running = sched->running;
    if (running && (!by_id || !found) && (!owner || running->owner == owner) &&
        (!by_id || running->request_id == request_id)) {
        atomic_store(&running->cancel, 1);
        found++;
    }
    uv_mutex_unlock(&sched->lock);

    /* Complete outside the lock: complete() may submit or cancel again. */
    while (removed) {
        ds_job *job = removed;
        removed = job->next;
        job->status = ds_error_set(&job->error, DS_ERR_CANCELLED,
                                   job->turns ? "cancelled" : "cancelled before it started");
        job->complete(job);
    }
    return found;
}

int ds_scheduler_cancel(ds_scheduler *sched, const void *owner, uint64_t request_id)
{
    return cancel_matching(sched, owner, 1, request_id) > 0;
}

void ds_scheduler_cancel_owner(ds_scheduler *sched, const void *owner)
{
    cancel_matching(sched, owner, 0, 0);
}

int ds_job_cancelled(const ds_job *job) { return atomic_load(&job->cancel) != 0; }

/* eta_s NaN: the phase's own pace. */
static void report(ds_job *job, const char *phase, uint64_t done, uint64_t total, double eta_s,
                   const char *message)
{
    ds_scheduler *sched = job->sched;
    notice *n = calloc(1, sizeof *n);
    if (!n)
        return; /* progress is advisory: dropping one under memory pressure is harmless */
    double now = now_s();
    if (strcmp(job->phase, phase) != 0) {
        snprintf(job->phase, sizeof job->phase, "%s", phase);
        job->phase_started_s = now;
    }
    if (isnan(eta_s))
        eta_s = done > 0 && total >= done
                    ? (now - job->phase_started_s) / (double)done * (double)(total - done)
                    : -1.0;
    n->job = job;
    snprintf(n->progress.phase, sizeof n->progress.phase, "%s", phase);
    n->progress.done = done;
    n->progress.total = total;
    n->progress.elapsed_s = now - job->started_s;
    n->progress.eta_s = eta_s;
    if (message)
        snprintf(n->progress.message, sizeof n->progress.message, "%s", message);
    uv_mutex_lock(&sched->lock);
    push_notice(sched, n);
    uv_mutex_unlock(&sched->lock);
    uv_async_send(&sched->async);
}

void ds_job_report(ds_job *job, const char *phase, uint64_t done, uint64_t total,
                   const char *message)
{
    report(job, phase, done, total, NAN, message);
}

void ds_job_report_eta(ds_job *job, const char *phase, uint64_t done, uint64_t total,
                       double eta_s, const char *message)
{
    report(job, phase, done, total, isnan(eta_s) ? -1.0 : eta_s, message);
}

size_t ds_scheduler_queued(ds_scheduler *sched)
{
    uv_mutex_lock(&sched->lock);
    size_t n = sched->queued;
    uv_mutex_unlock(&sched->lock);
    return n;
}

size_t ds_scheduler_running(ds_scheduler *sched)
{
    uv_mutex_lock(&sched->lock);
    size_t n = sched->running ? 1 : 0;
    uv_mutex_unlock(&sched->lock);
    return n;
}

int ds_scheduler_idle(ds_scheduler *sched)
{
    uv_mutex_lock(&sched->lock);
    int idle = !sched->queue_head && !sched->running && sched->undelivered == 0;
    uv_mutex_unlock(&sched->lock);
    return idle;
}

static void on_closed(uv_handle_t *handle)
{
    ds_scheduler *sched = handle->data;
    uv_cond_destroy(&sched->wake);
    uv_mutex_destroy(&sched->lock);
    free(sched);
}

void ds_scheduler_stop(ds_scheduler *sched)
{
    uv_mutex_lock(&sched->lock);
    sched->stopping = 1;
    uv_cond_signal(&sched->wake);
    uv_mutex_unlock(&sched->lock);
    if (sched->worker_started)
        uv_thread_join(&sched->worker);
    sched->idle_fn = NULL;
    deliver(sched);
    uv_close((uv_handle_t *)&sched->async, on_closed);
}
