/* The job scheduler: jobs that yield run in turns, round robin with the others; a job cancelled
 * between turns (queued) or during one completes exactly once with CANCELLED; the queued and
 * running counts and the queue time summed over waits. A real libuv loop on this thread,
 * the scheduler's worker on its own. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "daemon/scheduler.h"
#include "test.h"

#define MAX_LOG 256

typedef struct test_job {
    ds_job job;          /* first: the scheduler hands us &job */
    char name;           /* written to the turn log */
    int turns;           /* turns to run: yields turns - 1 times (< 0: until cancelled) */
    int sleep_ms;        /* per turn */
    int completions;
    int status;
    char message[128];
    unsigned turns_run;
    double queue_s;
    int signal_in_turn;  /* > 0: at the start of this turn, wake the loop to cancel */
} test_job;

static uv_loop_t loop;
static ds_scheduler *sched;
static char turn_log[MAX_LOG];
static atomic_int log_len;
static int completed;
static int jobs_expected;
static uv_async_t cancel_async; /* the worker asks the loop to cancel `cancel_target` */
static test_job *cancel_target;
static size_t queued_at_cancel, running_at_cancel;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int job_run(ds_job *job)
{
    test_job *t = (test_job *)job;
    int n = atomic_fetch_add(&log_len, 1);
    if (n < MAX_LOG - 1)
        turn_log[n] = t->name;
    /* The loop cancels while this turn sleeps: what is queued now stays queued. */
    if (t->signal_in_turn && (int)t->turns_run + 1 == t->signal_in_turn)
        uv_async_send(&cancel_async);
    sleep_ms(t->sleep_ms);
    t->turns_run++;
    if (t->turns >= 0 && (int)t->turns_run >= t->turns)
        return DS_OK;
    return DS_JOB_YIELD;
}

static void job_complete(ds_job *job)
{
    test_job *t = (test_job *)job;
    t->completions++;
    t->status = job->status;
    snprintf(t->message, sizeof t->message, "%.127s", job->error.message);
    t->queue_s = job->queue_s;
    if (++completed == jobs_expected) {
        uv_close((uv_handle_t *)&cancel_async, NULL);
        ds_scheduler_stop(sched);
    }
}

static void on_cancel_async(uv_async_t *handle)
{
    (void)handle;
    if (!cancel_target)
        return;
    queued_at_cancel = ds_scheduler_queued(sched);
    running_at_cancel = ds_scheduler_running(sched);
    CHECK(ds_scheduler_cancel(sched, cancel_target->job.owner, cancel_target->job.request_id) == 1);
    cancel_target = NULL;
}

static void init_job(test_job *t, char name, uint64_t id, int turns, int sleep)
{
    memset(t, 0, sizeof *t);
    t->name = name;
    t->turns = turns;
    t->sleep_ms = sleep;
    t->job.kind = DS_JOB_RUN_PIPELINE;
    t->job.request_id = id;
    t->job.owner = &loop;
    t->job.run = job_run;
    t->job.complete = job_complete;
}

/* Runs the loop until every submitted job completed and the scheduler stopped. */
static void run_jobs(test_job **jobs, int count)
{
    ds_error err;
    REQUIRE(uv_loop_init(&loop) == 0);
    REQUIRE(uv_async_init(&loop, &cancel_async, on_cancel_async) == 0);
    REQUIRE(ds_scheduler_new(&loop, &sched, &err) == DS_OK);
    memset(turn_log, 0, sizeof turn_log);
    atomic_store(&log_len, 0);
    completed = 0;
    jobs_expected = count;
    for (int i = 0; i < count; i++) {
        jobs[i]->job.owner = &loop;
        ds_scheduler_submit(sched, &jobs[i]->job);
    }
    CHECK(ds_scheduler_queued(sched) + ds_scheduler_running(sched) == (size_t)count);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
}

static void test_round_robin(void)
{
    static test_job a, b, c;
    init_job(&a, 'A', 1, 4, 5);
    init_job(&b, 'B', 2, 2, 5);
    init_job(&c, 'C', 3, 1, 5);
    test_job *jobs[] = {&a, &b, &c};
    run_jobs(jobs, 3);
    /* Each turn goes to the tail: A B C A B A A. */
    CHECK_STR_EQ(turn_log, "ABCABAA");
    CHECK(a.completions == 1 && b.completions == 1 && c.completions == 1);
    CHECK(a.status == DS_OK && b.status == DS_OK && c.status == DS_OK);
    CHECK(a.turns_run == 4 && b.turns_run == 2 && c.turns_run == 1);
    /* Summed over every wait, each at least the 5 ms turns run meanwhile: A waited for B and
     * C, then B; B for A, then C and A; C for A and B. */
    CHECK_MSG(a.queue_s >= 0.0145 && b.queue_s >= 0.0145 && c.queue_s >= 0.0095,
              "queued: A %.4f s, B %.4f s, C %.4f s", a.queue_s, b.queue_s, c.queue_s);
}

/* Cancelled while waiting for its next turn: removed from the queue, CANCELLED once. */
static void test_cancel_yielded(void)
{
    static test_job endless, slow;
    init_job(&endless, 'E', 1, -1, 1);
    init_job(&slow, 'S', 2, 4, 100);
    slow.signal_in_turn = 2;
    cancel_target = &endless;
    test_job *jobs[] = {&endless, &slow};
    run_jobs(jobs, 2);
    CHECK(endless.completions == 1 && slow.completions == 1);
    CHECK_MSG(endless.status == DS_ERR_CANCELLED, "status %d", endless.status);
    CHECK_STR_EQ(endless.message, "cancelled");
    CHECK_MSG(endless.turns_run == 2, "ran %u turns", endless.turns_run);
    CHECK_STR_EQ(turn_log, "ESESSS");
    CHECK(slow.status == DS_OK && slow.turns_run == 4);
    /* At the cancel: the slow job running, the endless one queued. */
    CHECK_MSG(queued_at_cancel == 1 && running_at_cancel == 1, "%zu queued, %zu running",
              queued_at_cancel, running_at_cancel);
}

/* Cancelled during a turn and yielding anyway: it ends at that boundary. */
static void test_cancel_running(void)
{
    static test_job endless;
    init_job(&endless, 'E', 1, -1, 100);
    endless.signal_in_turn = 2;
    cancel_target = &endless;
    test_job *jobs[] = {&endless};
    run_jobs(jobs, 1);
    CHECK(endless.completions == 1);
    CHECK_MSG(endless.status == DS_ERR_CANCELLED, "status %d", endless.status);
    CHECK_STR_EQ(endless.message, "cancelled");
    CHECK_MSG(endless.turns_run == 2, "ran %u turns", endless.turns_run);
    CHECK_MSG(queued_at_cancel == 0 && running_at_cancel == 1, "%zu queued, %zu running",
              queued_at_cancel, running_at_cancel);
}

/* Cancelled before its first turn: the message says so. */
static void test_cancel_before_start(void)
{
    static test_job first, second;
    init_job(&first, 'F', 1, 2, 100);
    init_job(&second, 'G', 2, 1, 1);
    first.signal_in_turn = 1;
    cancel_target = &second;
    test_job *jobs[] = {&first, &second};
    run_jobs(jobs, 2);
    CHECK(first.status == DS_OK && first.turns_run == 2 && second.completions == 1);
    CHECK(second.status == DS_ERR_CANCELLED && second.turns_run == 0);
    CHECK_STR_EQ(second.message, "cancelled before it started");
    CHECK_STR_EQ(turn_log, "FF");
}

int main(void)
{
    RUN(test_round_robin);
    RUN(test_cancel_yielded);
    RUN(test_cancel_running);
    RUN(test_cancel_before_start);
    return test_summary();
}
