/* The manager over an instrumented backend whose streams really are asynchronous: the CPU
 * backend's table with copies, "kernels" and event signals queued on per-stream worker threads
 * that sleep before each task. free / free_pinned report any allocation that a queued or running
 * task still reads or writes; a copy reports staging rewritten between its issue and its run,
 * and a copy into memory that a queued or running kernel still reads (a kept buffer reused too
 * early).
 * Freed memory is poisoned and quarantined until the test ends, so a late reader gets a wrong
 * checksum and a late writer corrupts nothing but the quarantine. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test.h"
#include "vram/vram_fixture.h"
#include "vram/vram_manager.h"

/* ---- the instrumented backend ---- */

enum { TASK_COPY, TASK_SUM, TASK_SIGNAL, TASK_WAIT };

typedef struct task {
    int kind;
    void *dst;
    const void *src;
    size_t bytes;
    uint64_t src_hash; /* TASK_COPY: the source's contents at issue */
    const ds_tensor *tensors; /* TASK_SUM: the unit's tensors, summed into *sum */
    size_t count;
    uint64_t *sum;
    struct ds_event *ev;
    uint64_t gen;
    struct task *next;
} task;

struct ds_stream {
    pthread_t thread;
    task *head, *tail, *running;
    int stop;
};

struct ds_event {
    uint64_t recorded, done;
};

#define MAX_STREAMS 4
#define MAX_ALLOCS 256
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static struct ds_stream *streams[MAX_STREAMS];
static struct {
    void *ptr;
    size_t bytes;
} allocs[MAX_ALLOCS];
static ds_backend *cpu;
static ds_backend inst;
static int delay_us = 300;
static int free_violations, staging_violations, reuse_violations, waits_on_pending;

typedef struct parked {
    void *ptr;
    int pinned;
    struct parked *next;
} parked;
static parked *quarantine;

static void pause_us(int us)
{
    struct timespec ts = {0, (long)us * 1000};
    nanosleep(&ts, NULL);
}

static int overlaps(const void *a, size_t an, const void *b, size_t bn)
{
    const char *x = a, *y = b;
    return an && bn && x < y + bn && y < x + an;
}

static int task_touches(const task *t, const void *p, size_t n)
{
    if (!t)
        return 0;
    if (t->kind == TASK_COPY)
        return overlaps(t->dst, t->bytes, p, n) || overlaps(t->src, t->bytes, p, n);
    if (t->kind == TASK_SUM)
        for (size_t i = 0; i < t->count; i++)
            if (overlaps(t->tensors[i].data, 1, p, n))
                return 1;
    return 0;
}

/* Called with mu held. */
static int in_flight(const void *p, size_t n)
{
    for (int s = 0; s < MAX_STREAMS; s++) {
        if (!streams[s])
            continue;
        if (task_touches(streams[s]->running, p, n))
            return 1;
        for (const task *t = streams[s]->head; t; t = t->next)
            if (task_touches(t, p, n))
                return 1;
    }
    return 0;
}

/* Called with mu held: whether a queued or running kernel reads [p, p + n). */
static int read_in_flight(const void *p, size_t n)
{
    for (int s = 0; s < MAX_STREAMS; s++) {
        if (!streams[s])
            continue;
        const task *r = streams[s]->running;
        if (r && r->kind == TASK_SUM && task_touches(r, p, n))
            return 1;
        for (const task *t = streams[s]->head; t; t = t->next)
            if (t->kind == TASK_SUM && task_touches(t, p, n))
                return 1;
    }
    return 0;
}

static void *worker(void *arg)
{
    struct ds_stream *s = arg;
    pthread_mutex_lock(&mu);
    for (;;) {
        while (!s->head && !s->stop)
            pthread_cond_wait(&cv, &mu);
        if (!s->head)
            break;
        task *t = s->head;
        s->head = t->next;
        if (!s->head)
            s->tail = NULL;
        s->running = t;
        if (t->kind == TASK_WAIT) {
            while (t->ev->done < t->gen)
                pthread_cond_wait(&cv, &mu);
        } else if (t->kind == TASK_SIGNAL) {
            if (t->gen > t->ev->done)
                t->ev->done = t->gen;
        } else {
            pthread_mutex_unlock(&mu);
            pause_us(delay_us);
            if (t->kind == TASK_COPY) {
                if (fx_hash(14695981039346656037ull, t->src, t->bytes) != t->src_hash)
                    __atomic_add_fetch(&staging_violations, 1, __ATOMIC_SEQ_CST);
                memcpy(t->dst, t->src, t->bytes);
            } else {
                *t->sum = fx_unit_sum(t->tensors, t->count);
            }
            pthread_mutex_lock(&mu);
        }
        s->running = NULL;
        free(t);
        pthread_cond_broadcast(&cv);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void enqueue(struct ds_stream *s, task *t)
{
    pthread_mutex_lock(&mu);
    t->next = NULL;
    if (s->tail)
        s->tail->next = t;
    else
        s->head = t;
    s->tail = t;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static void record_alloc(void *p, size_t n)
{
    pthread_mutex_lock(&mu);
    for (int i = 0; i < MAX_ALLOCS; i++)
        if (!allocs[i].ptr) {
            allocs[i].ptr = p;
            allocs[i].bytes = n;
            break;
        }
    pthread_mutex_unlock(&mu);
}

/* Checks and forgets an allocation; poisons and parks it (freed by flush_quarantine). */
static void check_free(void *p, int pinned)
{
    parked *q = malloc(sizeof *q);
    if (q) {
        q->ptr = p;
        q->pinned = pinned;
    }
    pthread_mutex_lock(&mu);
    for (int i = 0; i < MAX_ALLOCS; i++)
        if (allocs[i].ptr == p) {
            if (in_flight(p, allocs[i].bytes))
                free_violations++;
            memset(p, 0xA5, allocs[i].bytes);
            allocs[i].ptr = NULL;
            break;
        }
    if (q) {
        q->next = quarantine;
        quarantine = q;
    }
    pthread_mutex_unlock(&mu);
    if (!q)
        (pinned ? cpu->free_pinned : cpu->free)(cpu, p);
}

/* Streams all stopped: nothing can touch parked memory any more. */
static void flush_quarantine(void)
{
    while (quarantine) {
        parked *q = quarantine;
        quarantine = q->next;
        (q->pinned ? cpu->free_pinned : cpu->free)(cpu, q->ptr);
        free(q);
    }
}

/* The fake device's memory for mem_info: `fake_free` is what it has free when this process
 * holds nothing (its capacity less other processes' use); what i_alloc holds (device_live)
 * is taken from it. */
static size_t fake_free, fake_total, device_live;
static int mem_info_calls;

static int i_alloc(ds_backend *b, size_t n, void **p, ds_error *err)
{
    (void)b;
    int rc = cpu->alloc(cpu, n, p, err);
    if (rc == DS_OK) {
        record_alloc(*p, n);
        pthread_mutex_lock(&mu);
        device_live += n;
        pthread_mutex_unlock(&mu);
    }
    return rc;
}

static void i_free(ds_backend *b, void *p)
{
    (void)b;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < MAX_ALLOCS; i++)
        if (allocs[i].ptr == p)
            device_live -= allocs[i].bytes;
    pthread_mutex_unlock(&mu);
    check_free(p, 0);
}

static int i_mem_info(ds_backend *b, size_t *free_bytes, size_t *total_bytes, ds_error *err)
{
    (void)b;
    (void)err;
    pthread_mutex_lock(&mu);
    *free_bytes = fake_free > device_live ? fake_free - device_live : 0;
    *total_bytes = fake_total;
    mem_info_calls++;
    pthread_mutex_unlock(&mu);
    return DS_OK;
}

static int i_alloc_pinned(ds_backend *b, size_t n, void **p, ds_error *err)
{
    (void)b;
    int rc = cpu->alloc_pinned(cpu, n, p, err);
    if (rc == DS_OK)
        record_alloc(*p, n);
    return rc;
}

static void i_free_pinned(ds_backend *b, void *p)
{
    (void)b;
    check_free(p, 1);
}

static int i_copy(ds_backend *b, void *dst, const void *src, size_t n, ds_stream *s,
                  ds_error *err)
{
    (void)b;
    (void)err;
    if (!s) {
        memcpy(dst, src, n);
        return DS_OK;
    }
    task *t = calloc(1, sizeof *t);
    if (!t)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    t->kind = TASK_COPY;
    t->dst = dst;
    t->src = src;
    t->bytes = n;
    t->src_hash = fx_hash(14695981039346656037ull, src, n);
    pthread_mutex_lock(&mu);
    if (read_in_flight(dst, n))
        reuse_violations++;
    pthread_mutex_unlock(&mu);
    enqueue(s, t);
    return DS_OK;
}

static int i_stream_create(ds_backend *b, ds_stream **out, ds_error *err)
{
    (void)b;
    struct ds_stream *s = calloc(1, sizeof *s);
    if (!s)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    pthread_mutex_lock(&mu);
    for (int i = 0; i < MAX_STREAMS; i++)
        if (!streams[i]) {
            streams[i] = s;
            break;
        }
    pthread_mutex_unlock(&mu);
    pthread_create(&s->thread, NULL, worker, s);
    *out = s;
    return DS_OK;
}

static void i_stream_destroy(ds_backend *b, ds_stream *s)
{
    (void)b;
    pthread_mutex_lock(&mu);
    s->stop = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(s->thread, NULL);
    pthread_mutex_lock(&mu);
    for (int i = 0; i < MAX_STREAMS; i++)
        if (streams[i] == s)
            streams[i] = NULL;
    pthread_mutex_unlock(&mu);
    free(s);
}

static int i_stream_synchronize(ds_backend *b, ds_stream *s, ds_error *err)
{
    (void)b;
    (void)err;
    if (!s)
        return DS_OK;
    pthread_mutex_lock(&mu);
    while (s->head || s->running)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return DS_OK;
}

static int i_event_create(ds_backend *b, ds_event **out, ds_error *err)
{
    (void)b;
    *out = calloc(1, sizeof **out);
    return *out ? DS_OK : ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
}

static void i_event_destroy(ds_backend *b, ds_event *e)
{
    (void)b;
    free(e);
}

static int i_event_record(ds_backend *b, ds_event *e, ds_stream *s, ds_error *err)
{
    (void)b;
    pthread_mutex_lock(&mu);
    uint64_t gen = ++e->recorded;
    if (!s)
        e->done = gen; /* the default stream is the host: everything before is done */
    pthread_mutex_unlock(&mu);
    if (!s)
        return DS_OK;
    task *t = calloc(1, sizeof *t);
    if (!t)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    t->kind = TASK_SIGNAL;
    t->ev = e;
    t->gen = gen;
    enqueue(s, t);
    return DS_OK;
}

static int i_event_synchronize(ds_backend *b, ds_event *e, ds_error *err)
{
    (void)b;
    (void)err;
    pthread_mutex_lock(&mu);
    uint64_t target = e->recorded;
    while (e->done < target)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return DS_OK;
}

static int i_stream_wait_event(ds_backend *b, ds_stream *s, ds_event *e, ds_error *err)
{
    pthread_mutex_lock(&mu);
    uint64_t target = e->recorded;
    if (e->done < target)
        waits_on_pending++;
    pthread_mutex_unlock(&mu);
    if (!s)
        return i_event_synchronize(b, e, err);
    task *t = calloc(1, sizeof *t);
    if (!t)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    t->kind = TASK_WAIT;
    t->ev = e;
    t->gen = target;
    enqueue(s, t);
    return DS_OK;
}

/* A "kernel" on stream s reading the unit's tensors later. */
static void launch_sum(ds_stream *s, const ds_tensor *tensors, size_t count, uint64_t *sum)
{
    task *t = calloc(1, sizeof *t);
    t->kind = TASK_SUM;
    t->tensors = tensors;
    t->count = count;
    t->sum = sum;
    enqueue(s, t);
}

static void make_instrumented(void)
{
    inst = *cpu;
    inst.name = "instrumented";
    inst.alloc = i_alloc;
    inst.free = i_free;
    inst.alloc_pinned = i_alloc_pinned;
    inst.free_pinned = i_free_pinned;
    inst.copy_to_device = i_copy;
    inst.copy_to_host = i_copy;
    inst.copy_device = i_copy;
    inst.stream_create = i_stream_create;
    inst.stream_destroy = i_stream_destroy;
    inst.stream_synchronize = i_stream_synchronize;
    inst.event_create = i_event_create;
    inst.event_destroy = i_event_destroy;
    inst.event_record = i_event_record;
    inst.stream_wait_event = i_stream_wait_event;
    inst.event_synchronize = i_event_synchronize;
    inst.mem_info = i_mem_info;
    inst.destroy = NULL;
}

/* ---- tests ---- */

/* Three passes over every unit of fx, each unit's "kernel" queued on `compute` behind the copy
 * it waits for; returns how many sums differ from the fixture's (-1: a call failed). */
static int three_passes(const fx_model *fx, ds_vram_model *model, ds_stream *compute)
{
    ds_error err = {0};
    uint64_t sums[3][FX_MAX_UNITS];
    memset(sums, 0, sizeof sums);
    for (int step = 0; step < 3; step++)
        for (size_t u = 0; u < fx->n; u++) {
            const ds_tensor *t;
            if (ds_vram_acquire(model, u, compute, &t, &err) != DS_OK) {
                fprintf(stderr, "  acquire: %s\n", err.message);
                return -1;
            }
            launch_sum(compute, t, 2, &sums[step][u]);
            if (ds_vram_release(model, u, compute, &err) != DS_OK) {
                fprintf(stderr, "  release: %s\n", err.message);
                return -1;
            }
        }
    if (inst.stream_synchronize(&inst, compute, &err) != DS_OK)
        return -1;
    int wrong = 0;
    for (int step = 0; step < 3; step++)
        for (size_t u = 0; u < fx->n; u++)
            wrong += sums[step][u] != fx->expect[u];
    return wrong;
}

/* Three passes over 10 units on an asynchronous compute stream, each unit's "kernel" queued
 * behind the copy it waits for, under several budgets and prefetch depths, with units of mixed
 * sizes and of one size (whose buffers are reused). Sums match, nothing was freed, reused or
 * overwritten while in use, and the compute stream did wait on in-flight copies. */
static void never_freed_in_use(int equal)
{
    fx_model fx;
    fx_make(&fx, 10, DS_F32, 41, equal);
    size_t total = fx_total(&fx);
    size_t budgets[4] = {0, total / 4, total / 2, DS_VRAM_UNLIMITED};
    for (int depth = 0; depth <= 2; depth += 2)
        for (int bi = 0; bi < 4; bi++) {
            free_violations = staging_violations = reuse_violations = waits_on_pending = 0;
            ds_vram_manager *m = NULL;
            ds_vram_model *model = NULL;
            ds_stream *compute = NULL;
            ds_error err = {0};
            REQUIRE(ds_vram_manager_create(&inst, budgets[bi], depth, &m, &err) == DS_OK);
            /* Units of mixed sizes go through pinned staging (no copies at rest); equal ones
             * are copied from their pinned images. */
            if (!equal)
                ds_vram_set_host_limit(m, 0);
            REQUIRE(inst.stream_create(&inst, &compute, &err) == DS_OK);
            REQUIRE(ds_vram_model_add(m, "dit", DS_F32, &model, &err) == DS_OK);
            REQUIRE(fx_register(&fx, model, &err) == DS_OK);
            int wrong = three_passes(&fx, model, compute);
            CHECK_MSG(wrong == 0, "budget %zu depth %d: %d sums differ", budgets[bi], depth,
                      wrong);
            ds_vram_stats st;
            ds_vram_stats_get(m, &st);
            if (budgets[bi])
                CHECK(st.peak_bytes <= budgets[bi]);
            else
                CHECK(st.peak_bytes <= fx_largest(&fx));
            ds_vram_manager_destroy(m);
            inst.stream_destroy(&inst, compute);
            flush_quarantine();
            CHECK_MSG(free_violations == 0, "budget %zu depth %d: %d frees in use", budgets[bi],
                      depth, free_violations);
            CHECK(staging_violations == 0);
            CHECK_MSG(reuse_violations == 0, "budget %zu depth %d: %d buffers reused in use",
                      budgets[bi], depth, reuse_violations);
            CHECK(waits_on_pending > 0);
            if (budgets[bi] != DS_VRAM_UNLIMITED)
                CHECK(st.evictions > 0 && st.wait_seconds > 0);
            if (equal && budgets[bi] != DS_VRAM_UNLIMITED)
                CHECK_MSG(st.reuses > 0 && st.allocations < 3 * fx.n,
                          "budget %zu depth %d: %llu reuses, %llu allocations", budgets[bi],
                          depth, (unsigned long long)st.reuses,
                          (unsigned long long)st.allocations);
        }
    fx_free(&fx);
}

static void test_never_freed_in_use(void)
{
    never_freed_in_use(0);
    never_freed_in_use(1);
}

/* Units that rest in host memory as the exact image of their fast-tier bytes (bf16 compute: the
 * f32 bias converts at registration) are copied straight from that pinned image, with no
 * staging, and nothing may free the image or the unit while a queued copy or kernel uses it.
 * With a host limit of 0 the same units are served from the "file" through staging, with the
 * same bytes. */
static void test_direct_copies(void)
{
    fx_model fx;
    fx_make(&fx, 10, DS_BF16, 43, 1);
    size_t total = fx_total(&fx);
    size_t budgets[2] = {0, total / 4};
    for (int limited = 0; limited <= 1; limited++)
        for (int bi = 0; bi < 2; bi++) {
            free_violations = staging_violations = reuse_violations = waits_on_pending = 0;
            ds_vram_manager *m = NULL;
            ds_vram_model *model = NULL;
            ds_stream *compute = NULL;
            ds_error err = {0};
            REQUIRE(ds_vram_manager_create(&inst, budgets[bi], 2, &m, &err) == DS_OK);
            if (limited)
                ds_vram_set_host_limit(m, 0);
            REQUIRE(inst.stream_create(&inst, &compute, &err) == DS_OK);
            REQUIRE(ds_vram_model_add(m, "dit", DS_BF16, &model, &err) == DS_OK);
            REQUIRE(fx_register(&fx, model, &err) == DS_OK);
            int wrong = three_passes(&fx, model, compute);
            CHECK_MSG(wrong == 0, "limited %d budget %zu: %d sums differ", limited, budgets[bi],
                      wrong);
            ds_vram_stats st;
            ds_vram_stats_get(m, &st);
            ds_vram_model_stats ms;
            ds_vram_model_stats_get(model, &ms);
            if (limited) {
                CHECK(st.host_bytes == 0 && ms.file_served_units == fx.n);
                CHECK(st.staging_bytes > 0);
            } else {
                CHECK_MSG(st.host_bytes >= total && st.staging_bytes == 0,
                          "host %zu (units %zu), staging %zu", st.host_bytes, total,
                          st.staging_bytes);
                CHECK(ms.file_bytes == 0);
            }
            CHECK(st.bytes_moved >= 3 * total);
            ds_vram_manager_destroy(m);
            inst.stream_destroy(&inst, compute);
            flush_quarantine();
            CHECK_MSG(free_violations == 0, "limited %d budget %zu: %d frees in use", limited,
                      budgets[bi], free_violations);
            CHECK(staging_violations == 0);
            CHECK(reuse_violations == 0);
            CHECK(waits_on_pending > 0);
        }
    fx_free(&fx);
}

/* f32 compute doubles the bf16 weights: an image costs about twice the compact layout, which
 * on a GPU is still preferred while the host limit has room (no host conversion per copy).
 * Unlimited: every unit an image, no staging. A limit of half the images: images first, then
 * the compact layout or the file, converted through staging, with the same sums. */
static void test_image_preferred(void)
{
    fx_model fx;
    fx_make(&fx, 10, DS_F32, 44, 0);
    size_t total = fx_total(&fx);
    size_t limits[2] = {DS_VRAM_UNLIMITED, total / 2};
    for (int li = 0; li < 2; li++) {
        free_violations = staging_violations = reuse_violations = 0;
        ds_vram_manager *m = NULL;
        ds_vram_model *model = NULL;
        ds_stream *compute = NULL;
        ds_error err = {0};
        REQUIRE(ds_vram_manager_create(&inst, total / 4, 2, &m, &err) == DS_OK);
        ds_vram_set_host_limit(m, limits[li]);
        REQUIRE(inst.stream_create(&inst, &compute, &err) == DS_OK);
        REQUIRE(ds_vram_model_add(m, "dit", DS_F32, &model, &err) == DS_OK);
        REQUIRE(fx_register(&fx, model, &err) == DS_OK);
        int wrong = three_passes(&fx, model, compute);
        CHECK_MSG(wrong == 0, "limit %zu: %d sums differ", limits[li], wrong);
        ds_vram_stats st;
        ds_vram_stats_get(m, &st);
        fprintf(stderr, "  f32 images, host limit %zu: host %zu of units %zu, staging %zu\n",
                limits[li], st.host_bytes, total, st.staging_bytes);
        if (li == 0)
            CHECK(st.host_bytes == total && st.staging_bytes == 0);
        else
            CHECK(st.host_bytes <= total / 2 && st.host_bytes > 0 && st.staging_bytes > 0);
        ds_vram_manager_destroy(m);
        inst.stream_destroy(&inst, compute);
        flush_quarantine();
        CHECK(free_violations == 0 && staging_violations == 0 && reuse_violations == 0);
    }
    fx_free(&fx);
}

/* Offload right after release, while the slow kernel that reads the unit is still queued: the
 * manager must wait for it. */
static void test_offload_waits_for_kernel(void)
{
    fx_model fx;
    fx_make(&fx, 2, DS_F32, 42, 0);
    free_violations = 0;
    ds_vram_manager *m = NULL;
    ds_vram_model *model = NULL;
    ds_stream *compute = NULL;
    ds_error err = {0};
    REQUIRE(ds_vram_manager_create(&inst, DS_VRAM_UNLIMITED, 1, &m, &err) == DS_OK);
    REQUIRE(inst.stream_create(&inst, &compute, &err) == DS_OK);
    REQUIRE(ds_vram_model_add(m, "vae", DS_F32, &model, &err) == DS_OK);
    REQUIRE(fx_register(&fx, model, &err) == DS_OK);
    uint64_t sum[4] = {0};
    const ds_tensor *t;
    delay_us = 20000;
    REQUIRE(ds_vram_acquire(model, 0, compute, &t, &err) == DS_OK);
    launch_sum(compute, t, 2, &sum[0]);
    launch_sum(compute, t, 2, &sum[1]);
    REQUIRE(ds_vram_release(model, 0, compute, &err) == DS_OK);
    CHECK(ds_vram_offload(model, &err) == DS_OK);
    CHECK(!ds_vram_unit_resident(model, 0));
    /* Removing the model right after a prefetch was issued waits for that copy too. */
    REQUIRE(ds_vram_acquire(model, 0, compute, &t, &err) == DS_OK);
    REQUIRE(ds_vram_release(model, 0, compute, &err) == DS_OK);
    CHECK(ds_vram_unit_resident(model, 1));
    ds_vram_model_remove(model);
    delay_us = 300;
    REQUIRE(inst.stream_synchronize(&inst, compute, &err) == DS_OK);
    CHECK(sum[0] == fx.expect[0] && sum[1] == fx.expect[0]);
    CHECK(free_violations == 0);
    ds_vram_stats st;
    ds_vram_stats_get(m, &st);
    CHECK(st.wait_seconds > 0.01);
    CHECK(st.resident_bytes == 0);
    ds_vram_manager_destroy(m);
    inst.stream_destroy(&inst, compute);
    flush_quarantine();
    fx_free(&fx);
}

/* The automatic budget (diffsynthd without --vram-limit on a GPU): the device's free memory
 * plus the manager's own, less the reserve, re-read at the start of every pass, so memory that
 * another process takes or gives back between passes moves the budget. */
static void test_auto_budget(void)
{
    fx_model fx;
    fx_make(&fx, 8, DS_F32, 43, 1);
    size_t total = fx_total(&fx), reserve = 4096;
    fake_total = 64 * total;
    fake_free = total + reserve; /* the whole model would fit */
    free_violations = 0;
    ds_vram_manager *m = NULL;
    ds_vram_model *model = NULL;
    ds_stream *compute = NULL;
    ds_error err = {0};
    REQUIRE(ds_vram_manager_create(&inst, DS_VRAM_UNLIMITED, 2, &m, &err) == DS_OK);
    REQUIRE(inst.stream_create(&inst, &compute, &err) == DS_OK);
    REQUIRE(ds_vram_model_add(m, "dit", DS_F32, &model, &err) == DS_OK);
    REQUIRE(fx_register(&fx, model, &err) == DS_OK);
    mem_info_calls = 0;
    REQUIRE(ds_vram_set_budget_auto(m, reserve, &err) == DS_OK);
    ds_vram_stats st;
    ds_vram_stats_get(m, &st);
    CHECK(st.budget_bytes == total);
    CHECK(mem_info_calls == 1);
    /* Passes while another process holds half the model's bytes, then a quarter, then none,
     * twice: the budget follows at the start of each pass. */
    size_t others[4] = {total / 2, total / 4, 0, 0};
    uint64_t evictions_before = 0;
    for (int pass = 0; pass < 4; pass++) {
        fake_free = total + reserve - others[pass];
        uint64_t sums[FX_MAX_UNITS] = {0};
        for (size_t u = 0; u < fx.n; u++) {
            const ds_tensor *t;
            REQUIRE(ds_vram_acquire(model, u, compute, &t, &err) == DS_OK);
            if (u == 0) {
                ds_vram_stats_get(m, &st);
                CHECK_MSG(st.budget_bytes == total - others[pass], "pass %d: budget %zu", pass,
                          st.budget_bytes);
            }
            launch_sum(compute, t, 2, &sums[u]);
            REQUIRE(ds_vram_release(model, u, compute, &err) == DS_OK);
        }
        REQUIRE(inst.stream_synchronize(&inst, compute, &err) == DS_OK);
        for (size_t u = 0; u < fx.n; u++)
            CHECK_MSG(sums[u] == fx.expect[u], "pass %d unit %zu", pass, u);
        ds_vram_stats_get(m, &st);
        CHECK_MSG(st.resident_bytes + st.cached_bytes <= total - others[pass],
                  "pass %d: %zu resident", pass, st.resident_bytes + st.cached_bytes);
        if (pass == 0)
            CHECK(st.evictions > evictions_before);
        if (pass == 3) {
            CHECK(st.evictions == evictions_before);
            for (size_t u = 0; u < fx.n; u++)
                CHECK_MSG(ds_vram_unit_resident(model, u), "unit %zu", u);
        }
        evictions_before = st.evictions;
    }
    CHECK(mem_info_calls == 5);
    /* A reserve larger than the free memory and the manager's own together: budget 0, every
     * pass streams. */
    REQUIRE(ds_vram_set_budget_auto(m, 4 * total, &err) == DS_OK);
    ds_vram_stats_get(m, &st);
    CHECK(st.budget_bytes == 0);
    /* A fixed budget again: mem_info is no longer read. */
    REQUIRE(ds_vram_set_budget(m, DS_VRAM_UNLIMITED, &err) == DS_OK);
    int calls = mem_info_calls;
    const ds_tensor *t;
    REQUIRE(ds_vram_acquire(model, 0, compute, &t, &err) == DS_OK);
    REQUIRE(ds_vram_release(model, 0, compute, &err) == DS_OK);
    CHECK(mem_info_calls == calls);
    REQUIRE(inst.stream_synchronize(&inst, compute, &err) == DS_OK);
    CHECK(free_violations == 0);
    ds_vram_manager_destroy(m);
    inst.stream_destroy(&inst, compute);
    flush_quarantine();
    fx_free(&fx);
}

/* The CPU backend has no memory of its own to read. */
static void test_auto_budget_needs_mem_info(void)
{
    ds_vram_manager *m = NULL;
    ds_error err = {0};
    REQUIRE(ds_vram_manager_create(cpu, DS_VRAM_UNLIMITED, 0, &m, &err) == DS_OK);
    CHECK(ds_vram_set_budget_auto(m, 0, &err) == DS_ERR_FAILED_PRECONDITION);
    CHECK_CONTAINS(err.message, "the cpu backend cannot report its free memory");
    ds_vram_manager_destroy(m);
}

int main(void)
{
    ds_error err = {0};
    if (ds_cpu_backend_create(2, &cpu, &err) != DS_OK) {
        fprintf(stderr, "cpu backend: %s\n", err.message);
        return 1;
    }
    make_instrumented();
    RUN(test_never_freed_in_use);
    RUN(test_offload_waits_for_kernel);
    RUN(test_direct_copies);
    RUN(test_image_preferred);
    RUN(test_auto_budget);
    RUN(test_auto_budget_needs_mem_info);
    ds_backend_destroy(cpu);
    return test_summary();
}
