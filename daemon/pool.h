/* The ModelPool: every model the daemon holds, shared by all clients.
 *
 * Mutated only on the loop thread. A model has references (one per Load, each taken by a peer
 * uid under a client name, which is only a label inside that uid) and pins (one per job using it right now). Dropping the last reference takes the
 * model out of the pool at once (listings, lookups and deduplication no longer see it), but
 * its memory is released only when the last pin goes, so a running job never loses its
 * weights. Model ids ("m1", "m2", ...) are never reused within one pool's life.
 */
#ifndef DS_DAEMON_POOL_H
#define DS_DAEMON_POOL_H

#include <stddef.h>
#include <stdint.h>

#include <sys/types.h>

#include "core/error.h"
#include "models/model_loader.h"

#define DS_MODEL_ID_MAX 24

typedef struct ds_pool_model {
    char id[DS_MODEL_ID_MAX];
    ds_loaded_model *model;     /* owned */
    char **clients;             /* one owned name per reference, in the order taken */
    uid_t *client_uids;         /* the uid that took each reference */
    size_t client_count;
    size_t client_cap;
    unsigned pins;              /* jobs using the model now */
    uint64_t loaded_at_unix_ms;
} ds_pool_model;

typedef struct ds_pool ds_pool;

int ds_pool_new(ds_pool **out, ds_error *err);
/* Frees every model in the pool: only for shutdown, after every job has completed (a model
 * that left the pool while pinned belongs to its pins until then). */
void ds_pool_free(ds_pool *pool);

/* Adds `model` with one reference taken by `uid` under the name `client`. If the pool already holds a model with the
 * same config (hash, name, class, converter, kwargs) and the same vram_config loaded from the
 * same files (device, inode, size, mtime, in the same order), `model` is freed, a reference is
 * added to the existing one and *reused is set. A different vram_config (e.g. fp8 offload next
 * to none) is a separate entry: its units differ in dtype and bytes, and each entry keeps its
 * own units in the VRAM manager. Takes ownership of `model` in every case (freed on failure). */
int ds_pool_insert(ds_pool *pool, ds_loaded_model *model, uid_t uid, const char *client,
                   uint64_t now_unix_ms, ds_pool_model **out, int *reused, ds_error *err);

/* References to `entry` that `uid` holds under the name `client`. */
size_t ds_pool_references(const ds_pool_model *entry, uid_t uid, const char *client);

/* NULL when no model with this id is in the pool. */
ds_pool_model *ds_pool_find(ds_pool *pool, const char *id);

/* Models in the pool, in insertion order. */
size_t ds_pool_count(const ds_pool *pool);
ds_pool_model *ds_pool_at(ds_pool *pool, size_t index);

typedef struct ds_pool_unref_result {
    size_t remaining;   /* references left */
    int removed;        /* none left: the model left the pool */
    int freed;          /* ... and its memory was released now (it was not pinned) */
} ds_pool_unref_result;

/* Drops the most recent reference `uid` took under the name `client`, or every reference when
 * `all` is set. A reference belongs to the uid that took it: `privileged` (the daemon's own
 * uid) may drop one of any uid's (its own first) and may use `all`; anyone else gets
 * PERMISSION_DENIED, naming the owner's uid, for a name only another uid holds, and for `all`.
 * NOT_FOUND: no such id. FAILED_PRECONDITION: nobody holds a reference under that name (the
 * message lists who does). */
int ds_pool_unref(ds_pool *pool, const char *id, uid_t uid, int privileged, const char *client,
                  int all, ds_pool_unref_result *result, ds_error *err);

/* A job pins a model it is about to use and unpins it when done (loop thread, both). */
void ds_pool_pin(ds_pool_model *entry);
/* Releases the model's memory if this was the last pin of a model that left the pool. */
void ds_pool_unpin(ds_pool_model *entry);

/* Before a job uses a model (loop thread or worker): FAILED_PRECONDITION when its files changed
 * since the load (ds_model_files_check): "model m1 is stale: FILE changed since it was
 * loaded: ...; reload it". A stale model stays stale; Load does not reuse it. */
int ds_pool_check_fresh(const ds_pool_model *entry, ds_error *err);

/* After a job used a model (any thread): DATA_LOSS naming the file when a read of one of its
 * files faulted meanwhile (the file shrank: what the job computed is garbage). The model is
 * stale from then on. */
int ds_pool_check_faults(const ds_pool_model *entry, ds_error *err);

/* Why the model is stale (checking its files now, as ds_pool_check_fresh), or NULL when it is
 * not. The text lives as long as the model. */
const char *ds_pool_stale_reason(const ds_pool_model *entry);

/* Bytes of the mapped files of every model in the pool ("disk" tier), a mapping shared by
 * several models (one file set holding two) once. */
uint64_t ds_pool_disk_bytes(const ds_pool *pool);
uint64_t ds_pool_model_disk_bytes(const ds_pool_model *entry);

/* A model id a request names, as `field`: INVALID_ARGUMENT when it is empty or longer than any
 * id the pool gives ("m1", "m2", ...). */
int ds_pool_check_id(const char *field, const char *id, ds_error *err);

#endif
