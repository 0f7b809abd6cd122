/* A small process-wide cache of built objects keyed by bytes: the oneDNN GEMM and convolution
 * primitives (gemm_onednn.c, conv_onednn.c), which cost far more to create than a small call
 * costs to run, so each shape is built once and reused.
 *
 * Several host threads may run one entry at once (the primitives take their scratchpads from
 * the caller). An entry in use is never evicted; past the capacity the least recently used
 * idle entry is rebuilt for the new key, and when every slot is in use the caller gets a
 * private entry, built for it and destroyed at release. Builds happen under the cache's lock:
 * they are rare (once per shape) and no two threads then build the same entry. */
#ifndef DS_KERNELS_CPU_PRIMITIVE_CACHE_H
#define DS_KERNELS_CPU_PRIMITIVE_CACHE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct ds__primitive_cache_ops {
    const char *name;   /* in errors: "gemm (oneDNN)" */
    size_t key_bytes;   /* keys compare bytewise: callers zero a key before filling it */
    size_t entry_bytes; /* the user's entry, handed to build zeroed */
    /* Fills `entry` for `key`; `ctx` is the acquiring caller's. On failure the cache calls
     * clear on the entry, so build may stop anywhere. */
    int (*build)(void *entry, const void *key, void *ctx, ds_error *err);
    /* Destroys what build made; takes a partly built entry. */
    void (*clear)(void *entry);
} ds__primitive_cache_ops;

typedef struct ds__primitive_cache {
    const ds__primitive_cache_ops *ops;
    size_t capacity;
    pthread_mutex_t lock;
    unsigned char *slots; /* capacity slots, allocated at first use */
    uint64_t clock;
} ds__primitive_cache;

#define DS__PRIMITIVE_CACHE_INIT(ops_, capacity_) \
    {(ops_), (capacity_), PTHREAD_MUTEX_INITIALIZER, NULL, 0}

/* The entry for `key`: found, or built with `ctx`. Every successful acquire is paired with one
 * release of the same entry. */
int ds__primitive_cache_acquire(ds__primitive_cache *c, const void *key, void *ctx, void **entry,
                                ds_error *err);
void ds__primitive_cache_release(ds__primitive_cache *c, void *entry);

/* Entries built in the cache now (idle or in use); private entries are not counted. */
size_t ds__primitive_cache_count(ds__primitive_cache *c);

/* Destroys every entry and frees the slots; no entry may be in use. */
void ds__primitive_cache_destroy(ds__primitive_cache *c);

#endif
