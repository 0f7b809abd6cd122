/* Identification results by file-set fingerprint (core/fingerprint.h), so identifying the same
 * files again costs a few header reads instead of a map, a parse and an MD5. A fixed number of
 * entries, least recently used evicted. Loop thread only. */
#ifndef DS_DAEMON_IDENTIFY_CACHE_H
#define DS_DAEMON_IDENTIFY_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "core/fingerprint.h"
#include "core/model_hash.h"

#define DS_IDENTIFY_CACHE_ENTRIES 256

typedef struct ds_identify_cache_entry {
    ds_fingerprint key;
    char model_hash[DS_MODEL_HASH_HEX];
    size_t tensor_count;
    uint64_t last_used;   /* 0 = empty slot */
} ds_identify_cache_entry;

typedef struct ds_identify_cache {
    ds_identify_cache_entry entries[DS_IDENTIFY_CACHE_ENTRIES];
    uint64_t clock;
    uint64_t hits;
    uint64_t misses;
} ds_identify_cache;

/* Returns the entry for key (refreshing its age) or NULL, counting a hit or a miss. */
const ds_identify_cache_entry *ds_identify_cache_find(ds_identify_cache *cache,
                                                      const ds_fingerprint *key);

void ds_identify_cache_put(ds_identify_cache *cache, const ds_fingerprint *key,
                           const char *model_hash, size_t tensor_count);

#endif
