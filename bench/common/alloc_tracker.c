#include "bench/common/alloc_tracker.h"

#include <pthread.h>
#include <stdlib.h>

typedef struct alloc_tracker {
    int (*alloc)(ds_backend *b, size_t bytes, void **ptr, ds_error *err); /* the backend's own */
    void (*free)(ds_backend *b, void *ptr);
    pthread_mutex_t lock;
    void **ptrs;    /* live allocations, unordered */
    size_t *sizes;
    size_t count, capacity;
    size_t live, peak;
    int lost;       /* the table could not grow: sizes of later frees unknown, peak a floor */
} alloc_tracker;

static alloc_tracker tracker = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int tracked_alloc(ds_backend *b, size_t bytes, void **ptr, ds_error *err)
{
    int rc = tracker.alloc(b, bytes, ptr, err);
    if (rc != DS_OK)
        return rc;
    pthread_mutex_lock(&tracker.lock);
    if (tracker.count == tracker.capacity) {
        size_t cap = tracker.capacity ? 2 * tracker.capacity : 256;
        void **p = realloc(tracker.ptrs, cap * sizeof *p);
        if (p)
            tracker.ptrs = p;
        size_t *s = p ? realloc(tracker.sizes, cap * sizeof *s) : NULL;
        if (s) {
            tracker.sizes = s;
            tracker.capacity = cap;
        }
    }
    if (tracker.count < tracker.capacity) {
        tracker.ptrs[tracker.count] = *ptr;
        tracker.sizes[tracker.count++] = bytes;
        tracker.live += bytes;
        if (tracker.live > tracker.peak)
            tracker.peak = tracker.live;
    } else {
        tracker.lost = 1;
    }
    pthread_mutex_unlock(&tracker.lock);
    return DS_OK;
}

static void tracked_free(ds_backend *b, void *ptr)
{
    pthread_mutex_lock(&tracker.lock);
    /* From the newest: activations are mostly freed in reverse order of allocation. */
    for (size_t i = tracker.count; i-- > 0;)
        if (tracker.ptrs[i] == ptr) {
            tracker.live -= tracker.sizes[i];
            tracker.ptrs[i] = tracker.ptrs[--tracker.count];
            tracker.sizes[i] = tracker.sizes[tracker.count];
            break;
        }
    pthread_mutex_unlock(&tracker.lock);
    tracker.free(b, ptr);
}

void ds_bench_track_allocations(ds_backend *b)
{
    tracker.alloc = b->alloc;
    tracker.free = b->free;
    b->alloc = tracked_alloc;
    b->free = tracked_free;
}

void ds_bench_untrack_allocations(ds_backend *b)
{
    if (tracker.alloc) {
        b->alloc = tracker.alloc;
        b->free = tracker.free;
    }
    free(tracker.ptrs);
    free(tracker.sizes);
}

size_t ds_bench_alloc_peak(int *lost)
{
    pthread_mutex_lock(&tracker.lock);
    size_t peak = tracker.peak;
    if (lost)
        *lost = tracker.lost;
    pthread_mutex_unlock(&tracker.lock);
    return peak;
}
