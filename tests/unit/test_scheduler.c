/* The job scheduler: jobs that yield run in turns, round robin with the others; turns go round
 * robin between uids, then between one uid's connections, whatever order the jobs came in; the
 * per-uid cap; a job cancelled between turns (queued) or during one completes exactly once with
 * CANCELLED; the queued and running counts and the queue time summed over waits. A real libuv loop on this thread,
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
    int resubmit;        /* submissions left after this one, made from complete() */
} test_job;

static uv_loop_t loop;
static ds_scheduler *sched;
static char turn_log[MAX_LOG];
static atomic_int log_len;
static int completed;
static int jobs_expected;
static int jobs_expected_extra; /* completions of resubmitted jobs, beyond one per job */
static uv_async_t cancel_async; /* the worker asks the loop to cancel `cancel_target` */
static test_job *cancel_target;
static size_t queued_at_cancel, running_at_cancel;

/* Handshakes between the worker and the other threads. What the turns' sleeps would give on an
 * idle machine (the submitting thread checks the counts before the first turn ends; the loop
 * cancels, or resubmits a finished job, within the next turn) a loaded one does not: a thread
 * can be off the CPU longer than a turn, and the order of turns would change. */
static atomic_int gate_open;         /* run_jobs' checks after submitting are done */
static atomic_int cancel_pending;    /* the worker asked the loop to cancel; not done yet */
static atomic_int resubmit_pending;  /* a job finished that complete() will submit again */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waits until *flag == want; gives up after 30 s, and the turn log then shows what went wrong. */
static void await_flag(atomic_int *flag, int want)
{
    for (int i = 0; i < 30000 && atomic_load(flag) != want; i++)
        sleep_ms(1);
}

static int job_run(ds_job *job)
{
    test_job *t = (test_job *)job;
    await_flag(&gate_open, 1);
    await_flag(&resubmit_pending, 0);
    int n = atomic_fetch_add(&log_len, 1);
    if (n < MAX_LOG - 1)
        turn_log[n] = t->name;
    /* The loop cancels during this turn: what is queued now stays queued. */
    if (t->signal_in_turn && (int)t->turns_run + 1 == t->signal_in_turn) {
        atomic_store(&cancel_pending, 1);
        uv_async_send(&cancel_async);
        await_flag(&cancel_pending, 0);
    }
    sleep_ms(t->sleep_ms);
    t->turns_run++;
    if (t->turns >= 0 && (int)t->turns_run >= t->turns) {
        if (t->resubmit > 0)
            atomic_store(&resubmit_pending, 1);
        return DS_OK;
    }
    return DS_JOB_YIELD;
}

static void job_complete(ds_job *job)
{
    test_job *t = (test_job *)job;
    t->completions++;
    t->status = job->status;
    snprintf(t->message, sizeof t->message, "%.127s", job->error.message);
    t->queue_s = job->queue_s;
    if (t->resubmit > 0) {
        t->resubmit--;
        t->turns_run = 0;
        ds_scheduler_submit(sched, job);
        atomic_store(&resubmit_pending, 0);
    }
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
    atomic_store(&cancel_pending, 0);
}

static void init_job(test_job *t, char name, uint64_t id, int turns, int sleep)
{
    memset(t, 0, sizeof *t);
    t->name = name;
    t->turns = turns;
    t->sleep_ms = sleep;
    t->job.kind = DS_JOB_RUN_PIPELINE;
    t->job.request_id = id;
    t->job.run = job_run;
    t->job.complete = job_complete;
}

/* Checks made after the jobs are submitted, before the loop runs (NULL: none). */
static void (*after_submit)(void);
static size_t max_jobs_per_uid = DS_DEFAULT_MAX_JOBS_PER_UID;

/* Runs the loop until every submitted job completed and the scheduler stopped. Jobs without an
 * owner get one shared owner. */
static void run_jobs(test_job **jobs, int count)
{
    ds_error err;
    REQUIRE(uv_loop_init(&loop) == 0);
    REQUIRE(uv_async_init(&loop, &cancel_async, on_cancel_async) == 0);
    REQUIRE(ds_scheduler_new(&loop, &sched, &err) == DS_OK);
    ds_scheduler_set_max_jobs_per_uid(sched, max_jobs_per_uid);
    memset(turn_log, 0, sizeof turn_log);
    atomic_store(&log_len, 0);
    completed = 0;
    jobs_expected = count + jobs_expected_extra;
    atomic_store(&gate_open, 0);
    for (int i = 0; i < count; i++) {
        if (!jobs[i]->job.owner)
            jobs[i]->job.owner = &loop;
        ds_scheduler_submit(sched, &jobs[i]->job);
    }
    CHECK(ds_scheduler_queued(sched) + ds_scheduler_running(sched) == (size_t)count);
    if (after_submit)
        after_submit();
    atomic_store(&gate_open, 1);
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

/* One client queues six jobs, another one job after them: the second client's job takes the
 * second turn, not the seventh. */
static void test_other_client_next(void)
{
    static test_job many[6], one;
    static int owner_many, owner_one;
    test_job *jobs[7];
    for (int i = 0; i < 6; i++) {
        init_job(&many[i], (char)('a' + i), (uint64_t)i + 1, 1, 5);
        many[i].job.owner = &owner_many;
        many[i].job.uid = 1000;
        jobs[i] = &many[i];
    }
    init_job(&one, 'Y', 1, 1, 5);
    one.job.owner = &owner_one;
    one.job.uid = 1001;
    jobs[6] = &one;
    run_jobs(jobs, 7);
    CHECK_STR_EQ(turn_log, "aYbcdef");
    /* It waited for a's turn, and less than b, which waited for a's turn and Y's. An
     * upper bound in seconds would hold only while no thread is off the CPU for long. */
    CHECK_MSG(one.queue_s >= 0.0045 && one.queue_s < many[1].queue_s, "queued %.4f s, b %.4f s",
              one.queue_s, many[1].queue_s);
}

/* Turns alternate between uids first, then between the connections of a uid: uid 1 with
 * connections a and b (three jobs each), uid 2 with connection c (three jobs), submitted a's,
 * b's, c's. A pipeline of three turns counts as three queued turns of its connection. */
static void test_uid_then_connection(void)
{
    static test_job a[3], b, c[3];
    static int conn_a, conn_b, conn_c;
    test_job *jobs[7];
    int n = 0;
    for (int i = 0; i < 3; i++) {
        init_job(&a[i], 'a', (uint64_t)i + 1, 1, 3);
        a[i].job.owner = &conn_a;
        a[i].job.uid = 1;
        jobs[n++] = &a[i];
    }
    init_job(&b, 'b', 1, 3, 3); /* one job, three turns */
    b.job.owner = &conn_b;
    b.job.uid = 1;
    jobs[n++] = &b;
    for (int i = 0; i < 3; i++) {
        init_job(&c[i], 'c', (uint64_t)i + 1, 1, 3);
        c[i].job.owner = &conn_c;
        c[i].job.uid = 2;
        jobs[n++] = &c[i];
    }
    run_jobs(jobs, n);
    /* uid 1 (a), uid 2, uid 1 (b: a just ran), uid 2, uid 1 (a), uid 2, then uid 1 alone. */
    CHECK_STR_EQ(turn_log, "acbcacbab");
    CHECK(b.turns_run == 3 && b.status == DS_OK);
}

/* A client that submits its next job only once the last one finished has nothing queued
 * between its jobs: it must still get one turn per round, not the next turn every time. */
static void test_one_at_a_time(void)
{
    static test_job a[6], b[6], x;
    static int conn_a, conn_b, conn_x;
    test_job *jobs[13];
    int n = 0;
    for (int i = 0; i < 6; i++) {
        init_job(&a[i], 'A', (uint64_t)i + 1, 1, 30);
        a[i].job.owner = &conn_a;
        a[i].job.uid = 1;
        jobs[n++] = &a[i];
    }
    for (int i = 0; i < 6; i++) {
        init_job(&b[i], 'B', (uint64_t)i + 1, 1, 30);
        b[i].job.owner = &conn_b;
        b[i].job.uid = 2;
        jobs[n++] = &b[i];
    }
    init_job(&x, 'X', 1, 1, 30);
    x.job.owner = &conn_x;
    x.job.uid = 3;
    x.resubmit = 3;
    jobs[n++] = &x;
    jobs_expected_extra = 3;
    run_jobs(jobs, n);
    jobs_expected_extra = 0;
    CHECK_STR_EQ(turn_log, "ABXABXABXABXABAB");
    CHECK(x.completions == 4 && x.status == DS_OK);
}

static void check_uid_cap(void)
{
    ds_error err;
    ds_error_clear(&err);
    CHECK(ds_scheduler_uid_jobs(sched, 7) == 2);
    CHECK(ds_scheduler_admit(sched, 7, &err) == DS_ERR_RESOURCE_EXHAUSTED);
    CHECK_STR_EQ(err.message, "uid 7 has 2 jobs queued or running, the most one uid may have "
                              "(--max-jobs-per-uid 2); wait for some to finish");
    ds_error_clear(&err);
    CHECK(ds_scheduler_admit(sched, 8, &err) == DS_OK);
}

/* The per-uid cap counts queued and running jobs of every connection of the uid. */
static void test_uid_cap(void)
{
    static test_job x, y;
    static int conn_x, conn_y;
    init_job(&x, 'x', 1, 1, 20);
    init_job(&y, 'y', 1, 1, 20);
    x.job.owner = &conn_x;
    y.job.owner = &conn_y;
    x.job.uid = y.job.uid = 7;
    test_job *jobs[] = {&x, &y};
    max_jobs_per_uid = 2;
    after_submit = check_uid_cap;
    run_jobs(jobs, 2);
    after_submit = NULL;
    max_jobs_per_uid = DS_DEFAULT_MAX_JOBS_PER_UID;
    CHECK(x.status == DS_OK && y.status == DS_OK);
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
    RUN(test_other_client_next);
    RUN(test_uid_then_connection);
    RUN(test_one_at_a_time);
    RUN(test_uid_cap);
    RUN(test_cancel_yielded);
    RUN(test_cancel_running);
    RUN(test_cancel_before_start);
    return test_summary();
}
