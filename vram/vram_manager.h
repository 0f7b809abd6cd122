/* The VRAM manager: every byte of fast memory the daemon's weights use, under one budget for
 * the whole pool (DESIGN §4.4).
 *
 * A model registers its transfer units (e.g. one transformer block): each unit is a list of
 * tensors in the slow tier and the dtype each must have in the fast tier. The slow tier is
 * host memory or the mapped file (upstream's offload_device cpu or disk). A unit that rests in
 * host memory gets one copy there at registration, in the backend's pinned memory: its tensors
 * converted to their offload dtype (e.g. fp8), or exactly the bytes the fast tier will hold (an
 * image), so that a GPU copy is one transfer from pinned memory with no conversion or staging.
 * An image is taken when it costs at most a quarter more than the offload dtype, and on a GPU
 * whenever the host limit has room for it (host conversion at every copy runs far below the
 * transfer rate); otherwise the compact layout. On the CPU backend a unit whose file bytes already are
 * its fast-tier bytes is read from the mapping (it is host memory). Host memory is budgeted too
 * (ds_vram_set_host_limit): a unit that does not fit, or one asked to rest on disk, is read
 * from the mapped file at every copy and rounded through its offload dtype on the way, so the
 * values are the same whichever tier it rests in. acquire() makes a unit resident in the backend's memory
 * (converting on the host into pinned staging, then one copy per unit), release() lets it be
 * evicted once the work issued on the compute stream has finished with it. On the CPU backend
 * the fast tier is an ordinary host allocation in the target dtype, converted into directly
 * (no staging), so the same logic and the same byte counts run on every machine.
 *
 * Policy. A plan (the order a forward acquires units, repeated every step) lets the manager
 * (a) prefetch the next `prefetch_depth` units on its own copy stream while the current one
 * computes, the compute stream waiting on an event rather than the host on a sync, and (b) when
 * room is needed, evict first the units of idle models (least recently used model first), then,
 * within the running model, the unit whose next use is furthest in the future (units outside
 * the plan first). Acquired units are never evicted. A prefetch only evicts units needed later
 * than the one it brings in, and is skipped when there is no such room.
 *
 * Budget: resident units + reserved activations + kept buffers never exceed `budget_bytes`; a
 * demand that cannot fit once everything evictable is gone fails with RESOURCE_EXHAUSTED naming
 * the unit and the bytes, and the manager stays usable. Budget 0 is upstream's vram_limit=0,
 * "stream everything": every acquire (or reserve) first evicts every unit not acquired, there is
 * no prefetch, and the units being used right now are always allowed in, so the peak is what one
 * step holds at once.
 *
 * Buffers are reused: an evicted unit's buffer is kept (counted in the budget) for the next unit
 * of the same or a smaller size (down to half its size; the slack is charged as resident), so paging a model whose blocks repeat allocates little once warm; kept buffers are
 * freed first when room is needed, and offload/remove free rather than keep.
 *
 * Never freed or reused too early: before a unit's memory is freed or kept the manager waits for
 * its copy and for the compute-stream point recorded at its last release; before pinned staging
 * is reused, for the copy that reads it.
 *
 * Threading: one thread (the device worker) runs the models; other threads (the daemon's loop
 * thread) may read stats and remove models whose units are not acquired. Every entry point
 * takes the manager's lock, so such a call may wait for one unit's conversion on the worker.
 */
#ifndef DS_VRAM_VRAM_MANAGER_H
#define DS_VRAM_VRAM_MANAGER_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "kernels/backend.h"

#define DS_VRAM_UNLIMITED SIZE_MAX

typedef struct ds_vram_manager ds_vram_manager;
typedef struct ds_vram_model ds_vram_model;

/* One tensor of a unit as registered. */
typedef struct ds_vram_tensor_source {
    const char *name;    /* copied */
    ds_dtype dtype;      /* stored dtype of `data` */
    int ndim;
    int64_t shape[DS_MAX_DIMS];
    const void *data;    /* host memory (the mmap), borrowed: valid until the model is removed */
    ds_dtype target;     /* dtype in the fast tier; DS_DTYPE_INVALID = the model's default.
                          * Float dtypes convert among themselves; others must equal `dtype`. */
    ds_dtype offload;    /* dtype the slow tier keeps (upstream's offload_dtype): DS_DTYPE_INVALID
                          * or `dtype` = `data` as it is; another float dtype = converted once,
                          * at registration, into host memory the manager owns (e.g. fp8
                          * storage of bf16 weights), which every copy then starts from, so
                          * the values are rounded through it as upstream's `.to` does. */
    int disk;            /* rests on disk (offload_device "disk"): never copied into host memory,
                          * `data` (the mapping) is read at every copy. One tensor so marked
                          * puts its whole unit there. */
} ds_vram_tensor_source;

typedef enum ds_vram_event_kind {
    DS_VRAM_EVENT_LOAD,     /* copied in on demand by acquire */
    DS_VRAM_EVENT_PREFETCH, /* copied in ahead of use on the copy stream */
    DS_VRAM_EVENT_HIT,      /* acquire found it resident (or its prefetch in flight) */
    DS_VRAM_EVENT_EVICT,    /* freed to make room, or by offload/remove */
} ds_vram_event_kind;

/* Called synchronously from inside the manager (logs, tests); must not call the manager. */
typedef void (*ds_vram_observer)(void *ctx, ds_vram_event_kind kind, const char *model,
                                 const char *unit, size_t bytes);

typedef struct ds_vram_stats {
    size_t budget_bytes;      /* as created; DS_VRAM_UNLIMITED for none */
    size_t resident_bytes;    /* fast tier: units allocated, all models */
    size_t activation_bytes;  /* reserved by ds_vram_reserve */
    size_t cached_bytes;      /* fast tier holding no unit: buffers of evicted units kept for
                               * the next unit that fits (they count in the budget) */
    size_t peak_bytes;        /* max of resident + activation + cached since creation */
    size_t staging_bytes;     /* pinned host staging currently allocated (not in the budget) */
    uint64_t bytes_moved;     /* host -> fast tier */
    uint64_t loads, prefetches, hits, evictions;
    uint64_t allocations;     /* fast-tier buffers allocated for units */
    uint64_t reuses;          /* units copied into a kept buffer instead */
    double copy_seconds;      /* host time converting into staging and issuing copies */
    double wait_seconds;      /* host time blocked waiting for copies or kernels to finish */
    double held_seconds;      /* host time units spent acquired: the compute time on the CPU
                               * backend, only the issue time on an asynchronous one */
    size_t host_budget_bytes; /* ds_vram_set_host_limit; DS_VRAM_UNLIMITED for none */
    size_t host_bytes;        /* slow tier copies in host memory, all models (not in `budget`) */
    size_t host_peak_bytes;
} ds_vram_stats;

typedef struct ds_vram_model_stats {
    size_t unit_count;
    size_t fast_bytes;       /* resident now, this model */
    size_t fast_bytes_total; /* resident size if every unit were resident */
    size_t slow_bytes_total; /* the units' bytes in the slow tier (in their offload dtypes, or
                              * their fast-tier bytes for an image) */
    size_t host_bytes;       /* of which held in host memory (allocated, with alignment) */
    size_t file_bytes;       /* of which read from the mapped file at every copy */
    size_t file_served_units; /* units that wanted a host copy but did not fit the host limit */
    size_t activation_bytes;
    uint64_t bytes_moved, loads, prefetches, hits, evictions;
} ds_vram_model_stats;

/* A manager over backend `b` (borrowed; outlives the manager). budget_bytes: DS_VRAM_UNLIMITED,
 * 0 (stream everything) or a byte budget. prefetch_depth: units copied ahead, 0..8. Creates its
 * copy stream. *out owned by the caller: ds_vram_manager_destroy. */
int ds_vram_manager_create(ds_backend *b, size_t budget_bytes, int prefetch_depth,
                           ds_vram_manager **out, ds_error *err);
/* Waits for outstanding copies and kernels on every unit, frees everything, removes every model
 * (their handles become invalid). NULL is fine. */
void ds_vram_manager_destroy(ds_vram_manager *m);
void ds_vram_set_observer(ds_vram_manager *m, ds_vram_observer fn, void *ctx);
void ds_vram_stats_get(const ds_vram_manager *m, ds_vram_stats *out);
/* Replaces the budget (same meanings as at creation). Units not acquired are evicted, least
 * recently used model first, until resident + activations fit; acquired ones stay, so use may
 * exceed a lowered budget until they are released. Peak and counters are kept. */
int ds_vram_set_budget(ds_vram_manager *m, size_t budget_bytes, ds_error *err);
/* A budget that follows the device, which other processes share: the device's free memory
 * (the backend's mem_info) plus what this manager holds there, less `reserve_bytes` (0 =
 * stream everything when that leaves nothing). Read now, then again whenever a model starts a
 * pass over its plan (acquires the plan's first unit); Stats show the last value. Evicts like
 * ds_vram_set_budget; a later ds_vram_set_budget returns to a fixed budget. FAILED_PRECONDITION
 * when the backend has no mem_info (the CPU); errors of mem_info pass through. */
int ds_vram_set_budget_auto(ds_vram_manager *m, size_t reserve_bytes, ds_error *err);

/* Host memory the slow tier's copies may take (diffsynthd --host-limit), DS_VRAM_UNLIMITED by
 * default. Applies to units registered afterwards: copies made already stay until their model
 * is removed, and a unit past the limit is served from the file for as long as it is
 * registered. */
void ds_vram_set_host_limit(ds_vram_manager *m, size_t bytes);

/* Registers a model (name copied, for messages) whose units default to `compute_dtype` in the
 * fast tier. *out belongs to the manager: ds_vram_model_remove or the manager's destroy. */
int ds_vram_model_add(ds_vram_manager *m, const char *name, ds_dtype compute_dtype,
                      ds_vram_model **out, ds_error *err);
/* Waits for its outstanding work, frees its units; NULL is fine. Its units must not be acquired. */
void ds_vram_model_remove(ds_vram_model *model);
void ds_vram_model_stats_get(const ds_vram_model *model, ds_vram_model_stats *out);
/* The compute dtype the model was registered with (ds_vram_model_add). */
ds_dtype ds_vram_model_compute_dtype(const ds_vram_model *model);

/* Pairs two models of one manager that run interleaved in one step (a ControlNet beside its
 * DiT): while one runs the other is not idle, so its units are evicted after the running
 * model's own (by a demand; never by a prefetch) rather than first. `with` NULL unpairs; a
 * model has one partner at a time (pairing replaces earlier pairs of either). */
void ds_vram_model_pair(ds_vram_model *model, ds_vram_model *with);

/* A key naming who registered the model (a forward keys its units to its loaded model), so
 * that it registers once per manager and others can find, list or drop it. NULL = none. */
void ds_vram_model_set_owner(ds_vram_model *model, const void *owner);
/* The model registered with this owner key; NULL when none (or owner NULL). */
ds_vram_model *ds_vram_model_find(ds_vram_manager *m, const void *owner);
/* That model's stats into *out (zeros when none); returns whether it exists. */
int ds_vram_owner_stats(const ds_vram_manager *m, const void *owner, ds_vram_model_stats *out);
/* ds_vram_model_remove of that model, if any: before the owner's weights go away. */
void ds_vram_owner_remove(ds_vram_manager *m, const void *owner);

/* Adds a transfer unit of `count` tensors (copied descriptions; data borrowed). Its index (0, 1,
 * ... in registration order) goes to *index. INVALID_ARGUMENT for a bad shape or an impossible
 * dtype conversion, naming the unit and tensor. */
int ds_vram_unit_add(ds_vram_model *model, const char *name, const ds_vram_tensor_source *tensors,
                     size_t count, size_t *index, ds_error *err);
/* Whether the unit is resident (or being copied in) now. */
int ds_vram_unit_resident(const ds_vram_model *model, size_t unit);

/* The order units are acquired in one pass (indices, repeats allowed), assumed to repeat every
 * pass. Replaces any earlier plan; an empty plan turns prediction and prefetch off. */
int ds_vram_plan(ds_vram_model *model, const size_t *order, size_t len, ds_error *err);

/* Makes `unit` resident and points *tensors at its `count` tensors in the backend's memory, in
 * their target dtypes, valid until the matching release. Work on `compute` (NULL = default
 * stream) issued afterwards sees the data: the stream waits on the copy's event. Acquires nest.
 * RESOURCE_EXHAUSTED when the unit cannot fit (nothing changes); then prefetches the next units. */
int ds_vram_acquire(ds_vram_model *model, size_t unit, ds_stream *compute,
                    const ds_tensor **tensors, ds_error *err);
/* Ends one acquire. `compute` is the stream whose issued work used the unit: the unit is not
 * freed until that work is done. */
int ds_vram_release(ds_vram_model *model, size_t unit, ds_stream *compute, ds_error *err);

/* Activations in flight count against the same budget: reserve evicts like an acquire does and
 * fails with RESOURCE_EXHAUSTED naming `what`; unreserve returns the bytes. */
int ds_vram_reserve(ds_vram_model *model, const char *what, size_t bytes, ds_error *err);
void ds_vram_unreserve(ds_vram_model *model, size_t bytes);

/* Upstream's offload(): every unit of the model not acquired leaves the fast tier (the pipeline
 * does this to models it is not about to run). */
int ds_vram_offload(ds_vram_model *model, ds_error *err);

#endif
