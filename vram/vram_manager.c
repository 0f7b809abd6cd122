#include "vram/vram_manager.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "core/float_convert.h"

#define ALIGN 256           /* as the backends align: every tensor of a unit starts aligned */
#define MAX_DEPTH 8
#define MAX_SLOTS (MAX_DEPTH + 1) /* one staging buffer per copy in flight, plus the demand one */
#define CONVERT_CHUNK 16384 /* elements converted through f32 scratch at a time */

typedef struct unit {
    char *name;
    size_t count;
    ds_vram_tensor_source *src; /* names copied; data borrowed (the file) or into `host`. A
                                 * tensor whose `offload` differs from its `dtype` is read from
                                 * the file and rounded through `offload` at every copy. */
    void *host;                 /* the slow tier in host memory (the backend's pinned memory),
                                 * the unit's tensors in their offload dtypes or, for an image,
                                 * exactly the fast tier's bytes; NULL = served from the file */
    size_t host_cap;
    int image;                  /* `host` is laid out as `buffer`: one copy, no conversion */
    int file_served;            /* wanted a host copy, served from the file (host limit) */
    ds_event *copy_done;        /* recorded after a direct copy from an image */
    int direct_pending;         /* that copy issued and not yet known finished */
    size_t *offset;             /* of each tensor in `buffer` */
    ds_tensor *view;            /* tensors in `buffer`, what acquire hands out */
    size_t bytes;               /* fast-tier size */
    size_t cap;                 /* bytes of `buffer`, what residency costs: a reused buffer
                                 * may be somewhat larger than `bytes` */
    size_t slow_bytes;
    void *buffer;               /* backend memory; NULL = not resident */
    int pins;                   /* acquires not yet released */
    int slot;                   /* staging slot whose copy fills `buffer`, -1 once known done */
    ds_event *last_use;         /* recorded on the compute stream at release */
    int use_pending;            /* last_use recorded and not yet waited for */
    double acquired_at;         /* when pins went from 0 to 1 */
} unit;

/* A fast-tier buffer that held an evicted unit, kept for the next unit of the same size so
 * that steady-state paging allocates nothing (the repeated blocks of a model share a few
 * sizes). Its copies and kernels are known finished. Its bytes count in the budget. */
typedef struct spare {
    void *ptr;
    size_t bytes;
} spare;

typedef struct staging {
    void *ptr; /* pinned host memory */
    size_t cap;
    ds_event *done; /* recorded on the copy stream after the copy that reads ptr */
    int busy;
    uint64_t seq;
    unit *owner;
} staging;

struct ds_vram_model {
    ds_vram_manager *mgr;
    char *name;
    const void *owner; /* ds_vram_model_set_owner's key, NULL = none */
    ds_vram_model *partner; /* ds_vram_model_pair: runs interleaved with this one, never idle */
    ds_dtype compute_dtype;
    unit **units;
    size_t n_units, cap_units;
    size_t *dist; /* scratch, cap_units: next-use distance per unit */
    size_t *plan;
    size_t plan_len;
    size_t plan_pos; /* position in plan of the next expected acquire */
    uint64_t last_used;
    size_t fast_bytes, activation_bytes;
    size_t host_bytes, file_bytes; /* slow tier: held in host memory / read from the file */
    uint64_t bytes_moved, loads, prefetches, hits, evictions;
};

struct ds_vram_manager {
    ds_backend *b;
    size_t budget;
    /* ds_vram_set_budget_auto: the budget follows the device's free memory, less `reserve`. */
    int auto_budget;
    size_t reserve;
    int depth;
    ds_stream *copy_stream;
    ds_vram_model **models;
    size_t n_models, cap_models;
    staging slots[MAX_SLOTS];
    int n_slots, max_slots;
    spare *spares;
    size_t n_spares, cap_spares;
    uint64_t seq;
    float *scratch;
    void *round_scratch; /* CONVERT_CHUNK elements of the widest dtype: rounding through offload */
    size_t host_budget;  /* ds_vram_set_host_limit */
    size_t page;
    uint64_t tick;
    ds_vram_stats st;
    ds_vram_observer observer;
    void *observer_ctx;
    /* The CPU backend: its memory is host memory and its calls complete before they return,
     * so units are converted straight into place, without the staging copy. */
    int host_tier;
    /* Recursive: the daemon's loop thread reads stats and removes models while the worker
     * runs; public entry points may call each other. */
    pthread_mutex_t lock;
};

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void notify(ds_vram_manager *m, ds_vram_event_kind kind, const ds_vram_model *model,
                   const unit *u)
{
    if (m->observer)
        m->observer(m->observer_ctx, kind, model->name, u->name, u->bytes);
}

static size_t in_use(const ds_vram_manager *m)
{
    return m->st.resident_bytes + m->st.activation_bytes + m->st.cached_bytes;
}

/* The smallest spare a unit of `bytes` may reuse, or -1 (none, or bytes 0). Up to twice its
 * size: a model's units come in a few sizes (a DiT block's attention and MLPs differ only by
 * their biases, its modulation is 1.5 times as large), and paging one into another's buffer is
 * what keeps steady-state paging free of allocations (page faults on the CPU, cudaMalloc and a
 * synchronising cudaFree on a GPU); the slack is charged to the budget while it is resident. */
static long spare_find(const ds_vram_manager *m, size_t bytes)
{
    long best = -1;
    for (size_t i = 0; bytes && i < m->n_spares; i++) {
        size_t cap = m->spares[i].bytes;
        if (cap >= bytes && cap - bytes <= bytes &&
            (best < 0 || cap < m->spares[best].bytes))
            best = (long)i;
    }
    return best;
}

/* Takes spare i out of the list: its memory goes to the caller (to reuse or free). */
static void *spare_take(ds_vram_manager *m, size_t i)
{
    void *ptr = m->spares[i].ptr;
    m->st.cached_bytes -= m->spares[i].bytes;
    m->spares[i] = m->spares[--m->n_spares];
    return ptr;
}

/* Keeps a settled buffer for reuse; 0 when the list cannot grow (the caller frees it). */
static int spare_put(ds_vram_manager *m, void *ptr, size_t bytes)
{
    if (m->n_spares == m->cap_spares) {
        size_t cap = m->cap_spares ? 2 * m->cap_spares : 16;
        spare *grown = realloc(m->spares, cap * sizeof *grown);
        if (!grown)
            return 0;
        m->spares = grown;
        m->cap_spares = cap;
    }
    m->spares[m->n_spares++] = (spare){ptr, bytes};
    m->st.cached_bytes += bytes;
    return 1;
}

/* A spare to free when room is needed: any but the one a unit of `keep` bytes would reuse
 * (it is about to come in). -1 when none. */
static long spare_victim(const ds_vram_manager *m, size_t keep)
{
    long kept = spare_find(m, keep);
    for (size_t i = 0; i < m->n_spares; i++)
        if ((long)i != kept)
            return (long)i;
    return -1;
}

static void note_peak(ds_vram_manager *m)
{
    if (in_use(m) > m->st.peak_bytes)
        m->st.peak_bytes = in_use(m);
}

static int wait_event(ds_vram_manager *m, ds_event *e, ds_error *err)
{
    double t0 = now_seconds();
    int rc = m->b->event_synchronize(m->b, e, err);
    m->st.wait_seconds += now_seconds() - t0;
    return rc;
}

/* After this the slot's staging may be rewritten and its owner's copy is known complete. */
static int slot_reclaim(ds_vram_manager *m, int i, ds_error *err)
{
    staging *s = &m->slots[i];
    if (!s->busy)
        return DS_OK;
    int rc = wait_event(m, s->done, err);
    if (rc != DS_OK)
        return rc;
    s->busy = 0;
    if (s->owner)
        s->owner->slot = -1;
    s->owner = NULL;
    return DS_OK;
}

/* Waits until neither a copy nor compute-stream work still touches the unit's memory. */
static int unit_settle(ds_vram_manager *m, unit *u, ds_error *err)
{
    if (u->slot >= 0) {
        int rc = slot_reclaim(m, u->slot, err);
        if (rc != DS_OK)
            return rc;
    }
    if (u->direct_pending) {
        int rc = wait_event(m, u->copy_done, err);
        if (rc != DS_OK)
            return rc;
        u->direct_pending = 0;
    }
    if (u->use_pending) {
        int rc = wait_event(m, u->last_use, err);
        if (rc != DS_OK)
            return rc;
        u->use_pending = 0;
    }
    return DS_OK;
}

/* `keep`: the buffer becomes a spare for the next unit of its size (paging within a budget);
 * otherwise it is freed (offload, remove: nothing is about to come in). */
static int unit_evict(ds_vram_model *model, unit *u, int keep, ds_error *err)
{
    ds_vram_manager *m = model->mgr;
    int rc = unit_settle(m, u, err);
    if (rc != DS_OK)
        return ds_error_prefix(err, "vram: evicting unit '%s' of model '%s': ", u->name,
                               model->name);
    if (!keep || !spare_put(m, u->buffer, u->cap))
        m->b->free(m->b, u->buffer);
    u->buffer = NULL;
    model->fast_bytes -= u->cap;
    m->st.resident_bytes -= u->cap;
    model->evictions++;
    m->st.evictions++;
    notify(m, DS_VRAM_EVENT_EVICT, model, u);
    return DS_OK;
}

/* dist[v] = how many acquires from now the plan next uses unit v; SIZE_MAX when it does not. */
static void distances(ds_vram_model *model)
{
    for (size_t v = 0; v < model->n_units; v++)
        model->dist[v] = SIZE_MAX;
    for (size_t j = 0; j < model->plan_len; j++) {
        size_t v = model->plan[(model->plan_pos + j) % model->plan_len];
        if (model->dist[v] == SIZE_MAX)
            model->dist[v] = j;
    }
}

/* The unpinned resident unit of `model` needed furthest in the future, if its distance is more
 * than `after` (SIZE_MAX: any counts; units outside the plan count as furthest). */
static unit *furthest_unit(ds_vram_model *model, size_t after, int any)
{
    distances(model);
    unit *best = NULL;
    size_t best_dist = 0;
    for (size_t v = 0; v < model->n_units; v++) {
        unit *u = model->units[v];
        if (!u->buffer || u->pins)
            continue;
        size_t d = model->dist[v];
        if (!any && d <= after)
            continue;
        if (!best || d > best_dist) {
            best = u;
            best_dist = d;
        }
    }
    return best;
}

/* The policy: idle models first, least recently used first; then the running model's unit
 * needed furthest in the future; then, for a demand, its partner's (the two run interleaved,
 * so the partner is not idle, and their plans' distances do not compare: a prefetch leaves the
 * partner alone). `any`: a demand (every unpinned unit may go); otherwise a prefetch for
 * something needed in `after` acquires, which must not push out sooner needs. */
static unit *pick_victim(ds_vram_manager *m, ds_vram_model *running, int any, size_t after,
                         ds_vram_model **owner)
{
    ds_vram_model *lru = NULL;
    unit *lru_unit = NULL;
    for (size_t i = 0; i < m->n_models; i++) {
        ds_vram_model *x = m->models[i];
        if (x == running || (running && x == running->partner) ||
            (lru && x->last_used >= lru->last_used))
            continue;
        unit *u = furthest_unit(x, 0, 1);
        if (u) {
            lru = x;
            lru_unit = u;
        }
    }
    if (lru) {
        *owner = lru;
        return lru_unit;
    }
    *owner = running;
    unit *u = running ? furthest_unit(running, after, any) : NULL;
    if (!u && any && running && running->partner) {
        *owner = running->partner;
        u = furthest_unit(running->partner, 0, 1);
    }
    return u;
}

static size_t evictable_bytes(const ds_vram_manager *m)
{
    size_t total = 0;
    for (size_t i = 0; i < m->n_models; i++)
        for (size_t v = 0; v < m->models[i]->n_units; v++) {
            const unit *u = m->models[i]->units[v];
            if (u->buffer && !u->pins)
                total += u->cap;
        }
    return total;
}

/* What no eviction can free: acquired units and activations. */
static size_t held_bytes(const ds_vram_manager *m)
{
    return in_use(m) - evictable_bytes(m) - m->st.cached_bytes;
}

/* Room for `need` more bytes, or none when `reuse` (a unit's size, 0 = none) finds a spare to
 * come in. Spares go first, then units by the policy; an evicted unit's buffer
 * becomes a spare, freed in turn unless it is the one to reuse. Returns 1 when there is room, 0
 * when not (nothing was evicted for a demand that cannot fit), negative on a backend error.
 * Budget 0 streams: a demand evicts every unpinned unit and then always fits. */
static int make_room(ds_vram_manager *m, ds_vram_model *running, size_t need, size_t reuse,
                     int demand, size_t after, ds_error *err)
{
    int stream_all = m->budget == 0;
    if (demand && !stream_all) {
        if (need > m->budget || held_bytes(m) > m->budget - need)
            return 0;
    }
    for (;;) {
        size_t want = spare_find(m, reuse) >= 0 ? 0 : need;
        if (!stream_all && in_use(m) <= m->budget && want <= m->budget - in_use(m))
            return 1;
        long s = spare_victim(m, reuse);
        if (s >= 0) {
            m->b->free(m->b, spare_take(m, (size_t)s));
            continue;
        }
        ds_vram_model *owner;
        unit *victim = pick_victim(m, running, demand, after, &owner);
        if (!victim)
            return stream_all && demand ? 1 : 0;
        int rc = unit_evict(owner, victim, 1, err);
        if (rc != DS_OK)
            return rc;
    }
}

static int staging_slot(ds_vram_manager *m, size_t bytes, ds_error *err)
{
    int pick = -1;
    for (int i = 0; i < m->n_slots; i++)
        if (!m->slots[i].busy && (pick < 0 || m->slots[i].cap >= bytes))
            pick = i;
    if (pick < 0 && m->n_slots < m->max_slots) {
        pick = m->n_slots;
        int rc = m->b->event_create(m->b, &m->slots[pick].done, err);
        if (rc != DS_OK)
            return rc;
        m->n_slots++;
    }
    if (pick < 0) {
        for (int i = 0; i < m->n_slots; i++)
            if (pick < 0 || m->slots[i].seq < m->slots[pick].seq)
                pick = i;
        int rc = slot_reclaim(m, pick, err);
        if (rc != DS_OK)
            return rc;
    }
    staging *s = &m->slots[pick];
    if (s->cap < bytes) {
        if (s->ptr) {
            m->b->free_pinned(m->b, s->ptr);
            m->st.staging_bytes -= s->cap;
        }
        s->ptr = NULL;
        s->cap = 0;
        int rc = m->b->alloc_pinned(m->b, bytes, &s->ptr, err);
        if (rc != DS_OK)
            return rc;
        s->cap = bytes;
        m->st.staging_bytes += bytes;
    }
    return pick;
}

static size_t numel(const ds_vram_tensor_source *t)
{
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= (size_t)t->shape[d];
    return n;
}

/* Stored dtype -> `to`, through f32 when they differ, and through the offload dtype on the way
 * when the tensor is read from the file but rests in another dtype (as upstream's `.to` chain
 * rounds it). */
static void convert_into(ds_vram_manager *m, const ds_vram_tensor_source *t, ds_dtype to,
                         void *dst)
{
    size_t n = numel(t);
    size_t in_size = ds_dtype_size(t->dtype), out_size = ds_dtype_size(to);
    int round = t->offload != DS_DTYPE_INVALID && t->offload != t->dtype && t->offload != to;
    if (!round) {
        ds_convert(t->data, t->dtype, n, to, dst);
        return;
    }
    for (size_t i = 0; i < n; i += CONVERT_CHUNK) {
        size_t c = n - i < CONVERT_CHUNK ? n - i : CONVERT_CHUNK;
        ds_convert_to_f32((const char *)t->data + i * in_size, t->dtype, c, m->scratch);
        if (round) {
            ds_convert_from_f32(m->scratch, c, t->offload, m->round_scratch);
            ds_convert_to_f32(m->round_scratch, t->offload, c, m->scratch);
        }
        ds_convert_from_f32(m->scratch, c, to, (char *)dst + i * out_size);
    }
}

/* After a unit was read from the mapped file: its pages may go first when memory is short
 * (MADV_COLD is only a hint, harmless on any memory, unlike MADV_DONTNEED which would zero
 * anonymous pages), so a model served from disk does not keep itself in RAM. */
static void file_pages_cold(const ds_vram_manager *m, const unit *u)
{
#ifdef MADV_COLD
    for (size_t i = 0; i < u->count; i++) {
        uintptr_t begin = (uintptr_t)u->src[i].data;
        uintptr_t end = begin + numel(&u->src[i]) * ds_dtype_size(u->src[i].dtype);
        begin = (begin + m->page - 1) / m->page * m->page;
        end = end / m->page * m->page;
        if (end > begin)
            madvise((void *)begin, end - begin, MADV_COLD);
    }
#else
    (void)m;
    (void)u;
#endif
}

/* u->buffer: the spare that fits it best when one does, else a new allocation. */
static int unit_buffer(ds_vram_manager *m, unit *u, ds_error *err)
{
    long s = spare_find(m, u->bytes);
    if (s >= 0) {
        u->cap = m->spares[s].bytes;
        u->buffer = spare_take(m, (size_t)s);
        m->st.reuses++;
        return DS_OK;
    }
    int rc = m->b->alloc(m->b, u->bytes, &u->buffer, err);
    if (rc != DS_OK) {
        u->buffer = NULL;
        return rc;
    }
    u->cap = u->bytes;
    m->st.allocations++;
    return DS_OK;
}

/* Queues the copy of u->bytes from `from` (pinned) into u->buffer on the copy stream and
 * records `done` after it. On failure the buffer goes, once the stream is idle (the copy may
 * have been queued). */
static int issue_copy(ds_vram_manager *m, unit *u, const void *from, ds_event *done,
                      ds_error *err)
{
    int rc = m->b->copy_to_device(m->b, u->buffer, from, u->bytes, m->copy_stream, err);
    if (rc == DS_OK)
        rc = m->b->event_record(m->b, done, m->copy_stream, err);
    if (rc != DS_OK) {
        ds_error ignored;
        m->b->stream_synchronize(m->b, m->copy_stream, &ignored);
        m->b->free(m->b, u->buffer);
        u->buffer = NULL;
    }
    return rc;
}

/* Allocates the unit's fast-tier memory (room already made) and issues its copy. */
static int start_copy(ds_vram_model *model, unit *u, ds_error *err)
{
    ds_vram_manager *m = model->mgr;
    double t0 = now_seconds();
    if (m->host_tier) {
        int rc = unit_buffer(m, u, err);
        if (rc != DS_OK)
            return rc;
        for (size_t i = 0; i < u->count; i++)
            convert_into(m, &u->src[i], u->src[i].target, (char *)u->buffer + u->offset[i]);
        u->slot = -1;
    } else if (u->image) {
        /* The pinned image is the fast tier's bytes: one transfer, no staging. */
        int rc = unit_buffer(m, u, err);
        if (rc != DS_OK)
            return rc;
        if (!u->copy_done && (rc = m->b->event_create(m->b, &u->copy_done, err)) != DS_OK) {
            m->b->free(m->b, u->buffer);
            u->buffer = NULL;
            return rc;
        }
        if ((rc = issue_copy(m, u, u->host, u->copy_done, err)) != DS_OK)
            return rc;
        u->direct_pending = 1;
        u->slot = -1;
    } else {
        int slot = staging_slot(m, u->bytes, err);
        if (slot < 0)
            return slot;
        staging *s = &m->slots[slot];
        int rc = unit_buffer(m, u, err);
        if (rc != DS_OK)
            return rc;
        for (size_t i = 0; i < u->count; i++)
            convert_into(m, &u->src[i], u->src[i].target, (char *)s->ptr + u->offset[i]);
        if ((rc = issue_copy(m, u, s->ptr, s->done, err)) != DS_OK)
            return rc;
        s->busy = 1;
        s->seq = ++m->seq;
        s->owner = u;
        u->slot = slot;
    }
    if (!u->host)
        file_pages_cold(m, u);
    for (size_t i = 0; i < u->count; i++)
        u->view[i].data = (char *)u->buffer + u->offset[i];
    model->fast_bytes += u->cap;
    m->st.resident_bytes += u->cap;
    model->bytes_moved += u->bytes;
    m->st.bytes_moved += u->bytes;
    note_peak(m);
    m->st.copy_seconds += now_seconds() - t0;
    return DS_OK;
}

int ds_vram_manager_create(ds_backend *b, size_t budget_bytes, int prefetch_depth,
                           ds_vram_manager **out, ds_error *err)
{
    *out = NULL;
    if (!b)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "vram: no backend");
    if (prefetch_depth < 0 || prefetch_depth > MAX_DEPTH)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "vram: prefetch depth %d is outside 0..%d", prefetch_depth,
                            MAX_DEPTH);
    int rc = DS_ERR_RESOURCE_EXHAUSTED;
    ds_vram_manager *m = calloc(1, sizeof *m);
    if (!m)
        return ds_error_set(err, rc, "vram: out of memory creating the manager");
    m->b = b;
    m->host_tier = strcmp(b->name, "cpu") == 0;
    m->budget = budget_bytes;
    m->depth = prefetch_depth;
    m->max_slots = prefetch_depth + 1;
    m->st.budget_bytes = budget_bytes;
    m->host_budget = DS_VRAM_UNLIMITED;
    m->st.host_budget_bytes = DS_VRAM_UNLIMITED;
    long page = sysconf(_SC_PAGESIZE);
    m->page = page > 0 ? (size_t)page : 4096;
    m->scratch = malloc(CONVERT_CHUNK * sizeof *m->scratch);
    m->round_scratch = malloc(CONVERT_CHUNK * sizeof(double));
    if (!m->scratch || !m->round_scratch) {
        ds_error_set(err, rc, "vram: out of memory creating the manager");
        goto fail;
    }
    rc = b->stream_create(b, &m->copy_stream, err);
    if (rc != DS_OK)
        goto fail;
    pthread_mutexattr_t attr;
    if (pthread_mutexattr_init(&attr) != 0 ||
        pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE) != 0 ||
        pthread_mutex_init(&m->lock, &attr) != 0) {
        rc = ds_error_set(err, DS_ERR_INTERNAL, "vram: cannot create the manager's lock");
        b->stream_destroy(b, m->copy_stream);
        goto fail;
    }
    pthread_mutexattr_destroy(&attr);
    *out = m;
    return DS_OK;
fail:
    free(m->scratch);
    free(m->round_scratch);
    free(m);
    return rc;
}

static void set_observer_unlocked(ds_vram_manager *m, ds_vram_observer fn, void *ctx)
{
    m->observer = fn;
    m->observer_ctx = ctx;
}

static void stats_get_unlocked(const ds_vram_manager *m, ds_vram_stats *out) { *out = m->st; }

/* The unit's own memory; its fast-tier buffer is gone already (settled and freed or kept). */
static void unit_free(ds_vram_model *model, unit *u)
{
    if (!u)
        return;
    ds_vram_manager *m = model->mgr;
    if (u->host) {
        m->b->free_pinned(m->b, u->host);
        m->st.host_bytes -= u->host_cap;
        model->host_bytes -= u->host_cap;
    }
    if (u->copy_done)
        m->b->event_destroy(m->b, u->copy_done);
    for (size_t i = 0; i < u->count; i++)
        free((char *)u->src[i].name);
    free(u->src);
    free(u->offset);
    free(u->view);
    free(u->name);
    free(u);
}

static void model_remove_unlocked(ds_vram_model *model)
{
    if (!model)
        return;
    ds_vram_manager *m = model->mgr;
    for (size_t v = 0; v < model->n_units; v++) {
        unit *u = model->units[v];
        ds_error err;
        /* A failed wait leaves nothing better to do than keep the memory: freeing it could
         * let a device still writing it corrupt the next owner. */
        if (u->buffer && unit_evict(model, u, 0, &err) != DS_OK) {
            m->st.resident_bytes -= u->cap;
            u->buffer = NULL;
            /* Nor the image a copy may still read. */
            if (u->host) {
                m->st.host_bytes -= u->host_cap;
                model->host_bytes -= u->host_cap;
                u->host = NULL;
            }
        }
        if (u->last_use)
            m->b->event_destroy(m->b, u->last_use);
        model->file_bytes -= u->host ? 0 : u->slow_bytes;
        unit_free(model, u);
    }
    m->st.activation_bytes -= model->activation_bytes;
    if (model->partner)
        model->partner->partner = NULL;
    for (size_t i = 0; i < m->n_models; i++)
        if (m->models[i] == model) {
            m->models[i] = m->models[--m->n_models];
            break;
        }
    free(model->units);
    free(model->dist);
    free(model->plan);
    free(model->name);
    free(model);
}

void ds_vram_manager_destroy(ds_vram_manager *m)
{
    if (!m)
        return;
    while (m->n_models)
        model_remove_unlocked(m->models[m->n_models - 1]);
    for (int i = 0; i < m->n_slots; i++) {
        ds_error err;
        slot_reclaim(m, i, &err);
        if (m->slots[i].ptr)
            m->b->free_pinned(m->b, m->slots[i].ptr);
        m->b->event_destroy(m->b, m->slots[i].done);
    }
    while (m->n_spares)
        m->b->free(m->b, spare_take(m, m->n_spares - 1));
    free(m->spares);
    m->b->stream_destroy(m->b, m->copy_stream);
    pthread_mutex_destroy(&m->lock);
    free(m->models);
    free(m->scratch);
    free(m->round_scratch);
    free(m);
}

static int model_add_unlocked(ds_vram_manager *m, const char *name, ds_dtype compute_dtype,
                              ds_vram_model **out, ds_error *err)
{
    *out = NULL;
    if (!name || !*name)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "vram: a model needs a name");
    if (compute_dtype != DS_F32 && compute_dtype != DS_BF16 && compute_dtype != DS_F16 &&
        compute_dtype != DS_F8_E4M3)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "vram: model '%s': compute dtype %s is not a weight dtype", name,
                            ds_dtype_name(compute_dtype));
    ds_vram_model *model = calloc(1, sizeof *model);
    if (!model || !(model->name = strdup(name)))
        goto oom;
    if (m->n_models == m->cap_models) {
        size_t cap = m->cap_models ? 2 * m->cap_models : 4;
        ds_vram_model **grown = realloc(m->models, cap * sizeof *grown);
        if (!grown)
            goto oom;
        m->models = grown;
        m->cap_models = cap;
    }
    model->mgr = m;
    model->compute_dtype = compute_dtype;
    model->last_used = m->tick;
    m->models[m->n_models++] = model;
    *out = model;
    return DS_OK;
oom:
    if (model)
        free(model->name);
    free(model);
    return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "vram: out of memory adding model '%s'",
                        name);
}

static int is_float(ds_dtype d)
{
    return d == DS_F32 || d == DS_F64 || d == DS_F16 || d == DS_BF16 || d == DS_F8_E4M3 ||
           d == DS_F8_E5M2;
}

static int unit_add_unlocked(ds_vram_model *model, const char *name,
                             const ds_vram_tensor_source *tensors, size_t count, size_t *index,
                             ds_error *err)
{
    if (!name || !*name)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "vram: model '%s': a unit needs a name",
                            model->name);
    if (count == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "vram: model '%s': unit '%s' has no tensors", model->name, name);
    size_t bytes = 0, slow = 0;
    for (size_t i = 0; i < count; i++) {
        const ds_vram_tensor_source *t = &tensors[i];
        const char *tn = t->name ? t->name : "(unnamed)";
        ds_dtype target = t->target != DS_DTYPE_INVALID ? t->target : model->compute_dtype;
        ds_dtype stored = t->offload != DS_DTYPE_INVALID ? t->offload : t->dtype;
        if (t->ndim < 0 || t->ndim > DS_MAX_DIMS || ds_dtype_size(t->dtype) == 0 || !t->data)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "vram: model '%s', unit '%s', tensor '%s': bad description "
                                "(ndim %d, dtype %s, data %s)",
                                model->name, name, tn, t->ndim, ds_dtype_name(t->dtype),
                                t->data ? "set" : "NULL");
        if (t->dtype != target && !(is_float(t->dtype) && is_float(target)))
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "vram: model '%s', unit '%s', tensor '%s': cannot convert %s to "
                                "%s",
                                model->name, name, tn, ds_dtype_name(t->dtype),
                                ds_dtype_name(target));
        if (stored != t->dtype && (!is_float(t->dtype) || !is_float(stored)))
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "vram: model '%s', unit '%s', tensor '%s': cannot offload %s as "
                                "%s",
                                model->name, name, tn, ds_dtype_name(t->dtype),
                                ds_dtype_name(stored));
        size_t n = 1;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0 || (t->shape[d] && n > SIZE_MAX / 16 / (size_t)t->shape[d]))
                return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                    "vram: model '%s', unit '%s', tensor '%s': bad shape",
                                    model->name, name, tn);
            n *= (size_t)t->shape[d];
        }
        bytes = (bytes + ALIGN - 1) / ALIGN * ALIGN + n * ds_dtype_size(target);
        slow += n * ds_dtype_size(stored);
    }
    if (bytes == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "vram: model '%s': unit '%s' holds no bytes", model->name, name);

    unit *u = calloc(1, sizeof *u);
    if (!u)
        goto oom;
    u->slot = -1;
    u->name = strdup(name);
    u->src = calloc(count, sizeof *u->src);
    u->offset = calloc(count, sizeof *u->offset);
    u->view = calloc(count, sizeof *u->view);
    if (!u->name || !u->src || !u->offset || !u->view)
        goto oom;
    /* The slow tier. A unit asked to rest on disk, or one whose file bytes are already what the
     * fast tier needs on the CPU (the mapping is host memory), is read from the file. Any other
     * gets a host copy while the host limit allows: converted to its offload dtype, or, when
     * that costs at most a quarter more, the exact image of its fast-tier bytes (one transfer
     * per copy on a GPU, straight from pinned memory). Past the limit it is read from the file
     * and rounded through its offload dtype at every copy, which gives the same values. */
    int on_disk = 0, converts = 0;
    size_t off = 0, slow_layout = 0;
    for (size_t i = 0; i < count; i++) {
        ds_vram_tensor_source *t = &u->src[i];
        *t = tensors[i];
        if (t->target == DS_DTYPE_INVALID)
            t->target = model->compute_dtype;
        if (t->offload == DS_DTYPE_INVALID)
            t->offload = t->dtype;
        t->name = strdup(tensors[i].name ? tensors[i].name : "(unnamed)");
        u->count = i + 1;
        if (!t->name)
            goto oom;
        on_disk |= t->disk;
        converts |= t->offload != t->dtype;
        size_t n = numel(t);
        off = (off + ALIGN - 1) / ALIGN * ALIGN;
        u->offset[i] = off;
        off += n * ds_dtype_size(t->target);
        slow_layout = (slow_layout + ALIGN - 1) / ALIGN * ALIGN + n * ds_dtype_size(t->offload);
        u->view[i].dtype = t->target;
        u->view[i].ndim = t->ndim;
        memcpy(u->view[i].shape, t->shape, sizeof t->shape);
        u->view[i].backend = model->mgr->b;
    }
    ds_vram_manager *m = model->mgr;
    if (!on_disk && (converts || !m->host_tier)) {
        size_t room = m->host_budget > m->st.host_bytes ? m->host_budget - m->st.host_bytes : 0;
        /* On a GPU an image is worth more host memory: converting on the host at every copy
         * runs at a fraction of the transfer's rate. So it is preferred while the host limit
         * allows, then the compact offload-dtype layout, then the file. */
        int image = bytes <= slow_layout + slow_layout / 4 || (!m->host_tier && bytes <= room);
        size_t cap = image ? bytes : slow_layout;
        if (cap > room && image && slow_layout < bytes) {
            image = 0;
            cap = slow_layout;
        }
        ds_error ignored;
        if (cap > room || m->b->alloc_pinned(m->b, cap, &u->host, &ignored) != DS_OK) {
            u->host = NULL;
            u->file_served = 1;
        } else {
            u->host_cap = cap;
            u->image = image;
            size_t at = 0;
            for (size_t i = 0; i < count; i++) {
                ds_vram_tensor_source *t = &u->src[i];
                ds_dtype rest = image ? t->target : t->offload;
                at = image ? u->offset[i] : (at + ALIGN - 1) / ALIGN * ALIGN;
                convert_into(m, t, rest, (char *)u->host + at);
                t->data = (char *)u->host + at;
                t->dtype = rest;
                t->offload = rest;
                at += numel(t) * ds_dtype_size(rest);
            }
            m->st.host_bytes += cap;
            model->host_bytes += cap;
            if (m->st.host_bytes > m->st.host_peak_bytes)
                m->st.host_peak_bytes = m->st.host_bytes;
        }
    }
    u->bytes = bytes;
    u->slow_bytes = u->image ? bytes : slow;
    if (model->n_units == model->cap_units) {
        size_t cap = model->cap_units ? 2 * model->cap_units : 16;
        unit **grown = realloc(model->units, cap * sizeof *grown);
        if (!grown)
            goto oom;
        model->units = grown;
        size_t *dist = realloc(model->dist, cap * sizeof *dist);
        if (!dist)
            goto oom;
        model->dist = dist;
        model->cap_units = cap;
    }
    model->units[model->n_units] = u;
    *index = model->n_units++;
    if (!u->host)
        model->file_bytes += u->slow_bytes;
    return DS_OK;
oom:
    unit_free(model, u);
    return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                        "vram: out of memory adding unit '%s' to model '%s'", name, model->name);
}

static int unit_resident_unlocked(const ds_vram_model *model, size_t unit_index)
{
    return unit_index < model->n_units && model->units[unit_index]->buffer != NULL;
}

/* An automatic budget, re-read: what the device has free plus what this manager holds there
 * (its own units, kept buffers and reserved activations are not free but are the budget's),
 * less the reserve; 0 (stream everything) when even that does not cover the reserve. */
static int refresh_budget(ds_vram_manager *m, ds_error *err)
{
    if (!m->auto_budget)
        return DS_OK;
    size_t free_bytes = 0, total_bytes = 0;
    int rc = m->b->mem_info(m->b, &free_bytes, &total_bytes, err);
    if (rc != DS_OK)
        return ds_error_prefix(err, "vram: reading the device's free memory: ");
    size_t mine = in_use(m);
    size_t avail = free_bytes > SIZE_MAX - mine ? SIZE_MAX : free_bytes + mine;
    m->budget = avail > m->reserve ? avail - m->reserve : 0;
    m->st.budget_bytes = m->budget;
    return DS_OK;
}

static int plan_unlocked(ds_vram_model *model, const size_t *order, size_t len, ds_error *err)
{
    for (size_t i = 0; i < len; i++)
        if (order[i] >= model->n_units)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "vram: model '%s': plan position %zu names unit %zu, but the "
                                "model has %zu",
                                model->name, i, order[i], model->n_units);
    size_t *plan = NULL;
    if (len) {
        plan = malloc(len * sizeof *plan);
        if (!plan)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                                "vram: model '%s': out of memory for a plan of %zu", model->name,
                                len);
        memcpy(plan, order, len * sizeof *plan);
    }
    free(model->plan);
    model->plan = plan;
    model->plan_len = len;
    model->plan_pos = 0;
    return DS_OK;
}

/* Copies the plan's next units in while the current one computes, as far as the budget allows
 * without evicting anything needed sooner. Failures only stop the prefetch. */
static void prefetch(ds_vram_model *model)
{
    ds_vram_manager *m = model->mgr;
    if (m->depth == 0 || m->budget == 0 || model->plan_len == 0)
        return;
    size_t ahead = (size_t)m->depth < model->plan_len ? (size_t)m->depth : model->plan_len;
    for (size_t j = 0; j < ahead; j++) {
        unit *u = model->units[model->plan[(model->plan_pos + j) % model->plan_len]];
        if (u->buffer)
            continue;
        ds_error err;
        if (make_room(m, model, u->bytes, u->bytes, 0, j, &err) != 1 ||
            start_copy(model, u, &err) != DS_OK)
            return;
        model->prefetches++;
        m->st.prefetches++;
        notify(m, DS_VRAM_EVENT_PREFETCH, model, u);
    }
}

static int acquire_unlocked(ds_vram_model *model, size_t unit_index, ds_stream *compute,
                            const ds_tensor **tensors, ds_error *err)
{
    *tensors = NULL;
    if (unit_index >= model->n_units)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "vram: model '%s' has no unit %zu (it has %zu)", model->name,
                            unit_index, model->n_units);
    ds_vram_manager *m = model->mgr;
    unit *u = model->units[unit_index];
    /* A pass over the plan starts: other processes may have taken or left device memory. */
    if (model->plan_len && model->plan_pos == 0 && model->plan[0] == unit_index) {
        int rc = refresh_budget(m, err);
        if (rc != DS_OK)
            return rc;
    }
    for (size_t j = 0; j < model->plan_len; j++) {
        size_t q = (model->plan_pos + j) % model->plan_len;
        if (model->plan[q] == unit_index) {
            model->plan_pos = (q + 1) % model->plan_len;
            break;
        }
    }
    if (u->buffer) {
        model->hits++;
        m->st.hits++;
        notify(m, DS_VRAM_EVENT_HIT, model, u);
    } else {
        int room = make_room(m, model, u->bytes, u->bytes, 1, 0, err);
        if (room < 0)
            return room;
        if (room == 0)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                                "vram: unit '%s' of model '%s' needs %zu bytes; the budget is "
                                "%zu bytes, of which %zu are held by acquired units and "
                                "activations",
                                u->name, model->name, u->bytes, m->budget, held_bytes(m));
        int rc = start_copy(model, u, err);
        if (rc != DS_OK)
            return ds_error_prefix(err, "vram: loading unit '%s' of model '%s': ", u->name,
                                   model->name);
        model->loads++;
        m->st.loads++;
        notify(m, DS_VRAM_EVENT_LOAD, model, u);
    }
    ds_event *copied = u->slot >= 0 ? m->slots[u->slot].done
                                    : u->direct_pending ? u->copy_done : NULL;
    if (copied) {
        int rc = m->b->stream_wait_event(m->b, compute, copied, err);
        if (rc != DS_OK)
            return ds_error_prefix(err, "vram: waiting for unit '%s' of model '%s': ", u->name,
                                   model->name);
    }
    if (u->pins++ == 0)
        u->acquired_at = now_seconds();
    model->last_used = ++m->tick;
    prefetch(model);
    *tensors = u->view;
    return DS_OK;
}

static int release_unlocked(ds_vram_model *model, size_t unit_index, ds_stream *compute,
                            ds_error *err)
{
    if (unit_index >= model->n_units || model->units[unit_index]->pins == 0)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "vram: model '%s': release of unit %zu, which is not acquired",
                            model->name, unit_index);
    ds_vram_manager *m = model->mgr;
    unit *u = model->units[unit_index];
    if (!u->last_use) {
        int rc = m->b->event_create(m->b, &u->last_use, err);
        if (rc != DS_OK)
            return rc;
    }
    int rc = m->b->event_record(m->b, u->last_use, compute, err);
    if (rc != DS_OK)
        return ds_error_prefix(err, "vram: releasing unit '%s' of model '%s': ", u->name,
                               model->name);
    u->use_pending = 1;
    if (--u->pins == 0)
        m->st.held_seconds += now_seconds() - u->acquired_at;
    return DS_OK;
}

static int reserve_unlocked(ds_vram_model *model, const char *what, size_t bytes, ds_error *err)
{
    ds_vram_manager *m = model->mgr;
    int room = make_room(m, model, bytes, 0, 1, 0, err);
    if (room < 0)
        return room;
    if (room == 0)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "vram: %s of model '%s' need %zu bytes; the budget is %zu bytes, of "
                            "which %zu are held by acquired units and activations",
                            what, model->name, bytes, m->budget, held_bytes(m));
    model->activation_bytes += bytes;
    m->st.activation_bytes += bytes;
    model->last_used = ++m->tick;
    note_peak(m);
    return DS_OK;
}

static void unreserve_unlocked(ds_vram_model *model, size_t bytes)
{
    if (bytes > model->activation_bytes)
        bytes = model->activation_bytes;
    model->activation_bytes -= bytes;
    model->mgr->st.activation_bytes -= bytes;
}

static int offload_unlocked(ds_vram_model *model, ds_error *err)
{
    for (size_t v = 0; v < model->n_units; v++) {
        unit *u = model->units[v];
        if (u->buffer && !u->pins) {
            int rc = unit_evict(model, u, 0, err);
            if (rc != DS_OK)
                return rc;
        }
    }
    return DS_OK;
}

static void model_stats_get_unlocked(const ds_vram_model *model, ds_vram_model_stats *out)
{
    memset(out, 0, sizeof *out);
    out->unit_count = model->n_units;
    out->fast_bytes = model->fast_bytes;
    for (size_t v = 0; v < model->n_units; v++) {
        out->fast_bytes_total += model->units[v]->bytes;
        out->slow_bytes_total += model->units[v]->slow_bytes;
    }
    out->activation_bytes = model->activation_bytes;
    out->host_bytes = model->host_bytes;
    out->file_bytes = model->file_bytes;
    for (size_t v = 0; v < model->n_units; v++)
        out->file_served_units += model->units[v]->file_served;
    out->bytes_moved = model->bytes_moved;
    out->loads = model->loads;
    out->prefetches = model->prefetches;
    out->hits = model->hits;
    out->evictions = model->evictions;
}

/* ---- Entry points: each under the manager's lock ---- */

static void lock(const ds_vram_manager *m) { pthread_mutex_lock(&((ds_vram_manager *)m)->lock); }
static void unlock(const ds_vram_manager *m)
{
    pthread_mutex_unlock(&((ds_vram_manager *)m)->lock);
}

void ds_vram_set_observer(ds_vram_manager *m, ds_vram_observer fn, void *ctx)
{
    lock(m);
    set_observer_unlocked(m, fn, ctx);
    unlock(m);
}

void ds_vram_stats_get(const ds_vram_manager *m, ds_vram_stats *out)
{
    lock(m);
    stats_get_unlocked(m, out);
    unlock(m);
}

int ds_vram_set_budget(ds_vram_manager *m, size_t budget_bytes, ds_error *err)
{
    lock(m);
    m->auto_budget = 0;
    m->budget = budget_bytes;
    m->st.budget_bytes = budget_bytes;
    /* No model is running: make_room takes the least recently used models' units first. */
    int rc = make_room(m, NULL, 0, 0, 0, 0, err);
    unlock(m);
    return rc < 0 ? rc : DS_OK;
}

int ds_vram_set_budget_auto(ds_vram_manager *m, size_t reserve_bytes, ds_error *err)
{
    if (!m->b->mem_info)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "vram: the %s backend cannot report its free memory; give the "
                            "budget in bytes instead",
                            m->b->name);
    lock(m);
    m->auto_budget = 1;
    m->reserve = reserve_bytes;
    int rc = refresh_budget(m, err);
    if (rc == DS_OK)
        rc = make_room(m, NULL, 0, 0, 0, 0, err);
    unlock(m);
    return rc < 0 ? rc : DS_OK;
}

void ds_vram_set_host_limit(ds_vram_manager *m, size_t bytes)
{
    lock(m);
    m->host_budget = bytes;
    m->st.host_budget_bytes = bytes;
    unlock(m);
}

int ds_vram_model_add(ds_vram_manager *m, const char *name, ds_dtype compute_dtype,
                      ds_vram_model **out, ds_error *err)
{
    lock(m);
    int rc = model_add_unlocked(m, name, compute_dtype, out, err);
    unlock(m);
    return rc;
}

void ds_vram_model_remove(ds_vram_model *model)
{
    if (!model)
        return;
    ds_vram_manager *m = model->mgr;
    lock(m);
    model_remove_unlocked(model);
    unlock(m);
}

ds_dtype ds_vram_model_compute_dtype(const ds_vram_model *model)
{
    return model->compute_dtype; /* set once, at ds_vram_model_add */
}

void ds_vram_model_stats_get(const ds_vram_model *model, ds_vram_model_stats *out)
{
    lock(model->mgr);
    model_stats_get_unlocked(model, out);
    unlock(model->mgr);
}

void ds_vram_model_pair(ds_vram_model *model, ds_vram_model *with)
{
    lock(model->mgr);
    if (with == model)
        with = NULL;
    if (model->partner)
        model->partner->partner = NULL;
    if (with && with->partner)
        with->partner->partner = NULL;
    model->partner = with;
    if (with)
        with->partner = model;
    unlock(model->mgr);
}

void ds_vram_model_set_owner(ds_vram_model *model, const void *owner)
{
    lock(model->mgr);
    model->owner = owner;
    unlock(model->mgr);
}

static ds_vram_model *find_owner(const ds_vram_manager *m, const void *owner)
{
    for (size_t i = 0; owner && i < m->n_models; i++)
        if (m->models[i]->owner == owner)
            return m->models[i];
    return NULL;
}

ds_vram_model *ds_vram_model_find(ds_vram_manager *m, const void *owner)
{
    lock(m);
    ds_vram_model *model = find_owner(m, owner);
    unlock(m);
    return model;
}

int ds_vram_owner_stats(const ds_vram_manager *m, const void *owner, ds_vram_model_stats *out)
{
    lock(m);
    ds_vram_model *model = find_owner(m, owner);
    if (model)
        model_stats_get_unlocked(model, out);
    else
        memset(out, 0, sizeof *out);
    unlock(m);
    return model != NULL;
}

void ds_vram_owner_remove(ds_vram_manager *m, const void *owner)
{
    lock(m);
    model_remove_unlocked(find_owner(m, owner));
    unlock(m);
}

int ds_vram_unit_add(ds_vram_model *model, const char *name, const ds_vram_tensor_source *tensors,
                     size_t count, size_t *index, ds_error *err)
{
    lock(model->mgr);
    int rc = unit_add_unlocked(model, name, tensors, count, index, err);
    unlock(model->mgr);
    return rc;
}

int ds_vram_unit_resident(const ds_vram_model *model, size_t unit)
{
    lock(model->mgr);
    int r = unit_resident_unlocked(model, unit);
    unlock(model->mgr);
    return r;
}

int ds_vram_plan(ds_vram_model *model, const size_t *order, size_t len, ds_error *err)
{
    lock(model->mgr);
    int rc = plan_unlocked(model, order, len, err);
    unlock(model->mgr);
    return rc;
}

int ds_vram_acquire(ds_vram_model *model, size_t unit, ds_stream *compute,
                    const ds_tensor **tensors, ds_error *err)
{
    lock(model->mgr);
    int rc = acquire_unlocked(model, unit, compute, tensors, err);
    unlock(model->mgr);
    return rc;
}

int ds_vram_release(ds_vram_model *model, size_t unit, ds_stream *compute, ds_error *err)
{
    lock(model->mgr);
    int rc = release_unlocked(model, unit, compute, err);
    unlock(model->mgr);
    return rc;
}

int ds_vram_reserve(ds_vram_model *model, const char *what, size_t bytes, ds_error *err)
{
    lock(model->mgr);
    int rc = reserve_unlocked(model, what, bytes, err);
    unlock(model->mgr);
    return rc;
}

void ds_vram_unreserve(ds_vram_model *model, size_t bytes)
{
    lock(model->mgr);
    unreserve_unlocked(model, bytes);
    unlock(model->mgr);
}

int ds_vram_offload(ds_vram_model *model, ds_error *err)
{
    lock(model->mgr);
    int rc = offload_unlocked(model, err);
    unlock(model->mgr);
    return rc;
}
