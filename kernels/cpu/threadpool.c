#include "kernels/cpu/threadpool.h"

#include <pthread.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_internal.h"

/* One job at a time: a caller publishes (fn, ctx, n, chunks) under `lock`, bumps `generation`
 * and wakes the workers; worker w runs chunk w (the caller runs chunk 0) and the last one to
 * finish wakes the caller. Chunk i is [n*i/chunks, n*(i+1)/chunks): it depends on n, grain and
 * the thread count only, never on timing, so results are deterministic. */
struct ds__cpu_pool {
    int threads;
    int started;                 /* workers running (threads - 1 once created) */
    pthread_t *workers;
    pthread_mutex_t run_lock;    /* serialises callers from several host threads */
    pthread_mutex_t lock;        /* guards everything below */
    pthread_cond_t wake;         /* workers: a new generation or stop */
    pthread_cond_t done;         /* caller: pending reached 0 */
    unsigned long generation;
    int stop;
    ds__cpu_range_fn fn;
    void *ctx;
    int64_t n;
    int chunks;
    int pending;                 /* workers of this generation still running their chunk */
};

/* Set while a thread runs a chunk: a parallel_for issued from inside one runs its chunks
 * serially on that thread instead of deadlocking on run_lock. */
static __thread int in_parallel_region;

typedef struct worker_arg {
    ds__cpu_pool *pool;
    int index;
} worker_arg;

static void run_chunk(ds__cpu_range_fn fn, void *ctx, int64_t n, int chunks, int i)
{
    int64_t begin = n * i / chunks, end = n * (i + 1) / chunks;
    if (begin < end)
        fn(ctx, begin, end);
}

static void *worker_main(void *p)
{
    worker_arg *arg = p;
    ds__cpu_pool *pool = arg->pool;
    int index = arg->index;
    free(arg);
    in_parallel_region = 1;
    /* Generation 0 is the pool's state at creation; reading pool->generation here instead would
     * miss a job published before this thread first took the lock, and its caller would wait
     * forever for this worker's chunk. */
    unsigned long seen = 0;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (!pool->stop && pool->generation == seen)
            pthread_cond_wait(&pool->wake, &pool->lock);
        if (pool->stop)
            break;
        seen = pool->generation;
        if (index >= pool->chunks)
            continue;
        ds__cpu_range_fn fn = pool->fn;
        void *ctx = pool->ctx;
        int64_t n = pool->n;
        int chunks = pool->chunks;
        pthread_mutex_unlock(&pool->lock);
        run_chunk(fn, ctx, n, chunks, index);
        pthread_mutex_lock(&pool->lock);
        if (--pool->pending == 0)
            pthread_cond_signal(&pool->done);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

static void stop_workers(ds__cpu_pool *pool)
{
    pthread_mutex_lock(&pool->lock);
    pool->stop = 1;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->started; i++)
        pthread_join(pool->workers[i], NULL);
    pool->started = 0;
}

int ds__cpu_pool_create(int threads, ds__cpu_pool **out, ds_error *err)
{
    *out = NULL;
    if (threads < 1)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "cpu backend: %d threads", threads);
    ds__cpu_pool *pool = calloc(1, sizeof *pool);
    if (!pool)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "cpu backend: out of memory");
    pool->threads = threads;
    pthread_mutex_init(&pool->run_lock, NULL);
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    int rc = DS_OK;
    if (threads > 1) {
        pool->workers = calloc((size_t)threads - 1, sizeof *pool->workers);
        if (!pool->workers) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "cpu backend: out of memory");
            goto fail;
        }
    }
    for (int i = 1; i < threads; i++) {
        worker_arg *arg = malloc(sizeof *arg);
        if (!arg) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "cpu backend: out of memory");
            goto fail;
        }
        arg->pool = pool;
        arg->index = i;
        int prc = pthread_create(&pool->workers[i - 1], NULL, worker_main, arg);
        if (prc != 0) {
            free(arg);
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                              "cpu backend: cannot start worker thread %d of %d (error %d)", i,
                              threads - 1, prc);
            goto fail;
        }
        pool->started++;
    }
    *out = pool;
    return DS_OK;
fail:
    ds__cpu_pool_destroy(pool);
    return rc;
}

void ds__cpu_pool_destroy(ds__cpu_pool *pool)
{
    if (!pool)
        return;
    stop_workers(pool);
    pthread_cond_destroy(&pool->done);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->lock);
    pthread_mutex_destroy(&pool->run_lock);
    free(pool->workers);
    free(pool);
}

int ds__cpu_threads(const ds_backend *b)
{
    const ds__cpu_pool *pool = b->impl;
    return pool->threads;
}

void ds__cpu_parallel_for(ds_backend *b, int64_t n, int64_t grain, ds__cpu_range_fn fn, void *ctx)
{
    ds__cpu_pool *pool = b->impl;
    if (n <= 0)
        return;
    if (grain < 1)
        grain = 1;
    int64_t most = n / grain;
    int chunks = most < pool->threads ? (int)(most < 1 ? 1 : most) : pool->threads;
    if (chunks == 1) {
        fn(ctx, 0, n);
        return;
    }
    if (in_parallel_region) {
        for (int i = 0; i < chunks; i++)
            run_chunk(fn, ctx, n, chunks, i);
        return;
    }
    pthread_mutex_lock(&pool->run_lock);
    pthread_mutex_lock(&pool->lock);
    pool->fn = fn;
    pool->ctx = ctx;
    pool->n = n;
    pool->chunks = chunks;
    pool->pending = chunks - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);

    in_parallel_region = 1;
    run_chunk(fn, ctx, n, chunks, 0);
    in_parallel_region = 0;

    pthread_mutex_lock(&pool->lock);
    while (pool->pending > 0)
        pthread_cond_wait(&pool->done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
    pthread_mutex_unlock(&pool->run_lock);
}

/* ---- Per-thread scratch ---- */

typedef struct scratch {
    void *data[DS__CPU_SCRATCH_SLOTS];
    size_t capacity[DS__CPU_SCRATCH_SLOTS];
} scratch;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok;

static void scratch_free(void *p)
{
    scratch *s = p;
    for (int i = 0; i < DS__CPU_SCRATCH_SLOTS; i++)
        free(s->data[i]);
    free(s);
}

static void scratch_make_key(void) { scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0; }

void *ds__cpu_scratch_slot(int slot, size_t bytes)
{
    pthread_once(&scratch_once, scratch_make_key);
    if (!scratch_key_ok || slot < 0 || slot >= DS__CPU_SCRATCH_SLOTS)
        return NULL;
    scratch *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s || pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    if (s->capacity[slot] >= bytes && s->data[slot])
        return s->data[slot];
    /* Row buffers grow geometrically so a thread that converts ever longer rows reallocates
     * rarely; GEMM staging blocks come in a few fixed sizes and are large, so they take what is
     * asked. 64-byte alignment for vector loads. */
    size_t want = bytes;
    if (slot == DS__CPU_SCRATCH_ROWS && bytes < s->capacity[slot] * 2)
        want = s->capacity[slot] * 2;
    if (want > SIZE_MAX - 63)
        return NULL;
    want = (want + 63) & ~(size_t)63;
    if (want == 0)
        want = 64;
    void *data = aligned_alloc(64, want);
    if (!data)
        return NULL;
    free(s->data[slot]);
    s->data[slot] = data;
    s->capacity[slot] = want;
    return data;
}

void *ds__cpu_scratch(size_t bytes)
{
    return ds__cpu_scratch_slot(DS__CPU_SCRATCH_ROWS, bytes);
}

void ds__cpu_scratch_release(void)
{
    pthread_once(&scratch_once, scratch_make_key);
    if (!scratch_key_ok)
        return;
    scratch *s = pthread_getspecific(scratch_key);
    if (s) {
        pthread_setspecific(scratch_key, NULL);
        scratch_free(s);
    }
}
