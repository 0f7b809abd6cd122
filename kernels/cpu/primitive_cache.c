/* Slots are one block: each a head, the key and the entry, each part aligned for any object, so
 * an entry's head is found from the entry's address alone (release takes only the entry). */
#include "kernels/cpu/primitive_cache.h"

#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct slot_head {
    int built;   /* the entry holds a built object for the key */
    int users;   /* callers running it now: never evicted while > 0 */
    int owned;   /* a private entry outside the slots, freed at release */
    uint64_t last_use;
} slot_head;

static size_t round_up(size_t n)
{
    size_t a = alignof(max_align_t);
    return (n + a - 1) / a * a;
}

static size_t head_bytes(void) { return round_up(sizeof(slot_head)); }

static size_t slot_bytes(const ds__primitive_cache_ops *ops)
{
    return head_bytes() + round_up(ops->key_bytes) + round_up(ops->entry_bytes);
}

static void *key_of(const ds__primitive_cache_ops *ops, slot_head *h)
{
    (void)ops;
    return (unsigned char *)h + head_bytes();
}

static void *entry_of(const ds__primitive_cache_ops *ops, slot_head *h)
{
    return (unsigned char *)h + head_bytes() + round_up(ops->key_bytes);
}

static slot_head *head_of(const ds__primitive_cache_ops *ops, void *entry)
{
    return (slot_head *)((unsigned char *)entry - round_up(ops->key_bytes) - head_bytes());
}

static slot_head *slot(ds__primitive_cache *c, size_t i)
{
    return (slot_head *)(c->slots + i * slot_bytes(c->ops));
}

static void empty(const ds__primitive_cache_ops *ops, slot_head *h)
{
    void *e = entry_of(ops, h);
    if (h->built)
        ops->clear(e);
    memset(e, 0, ops->entry_bytes);
    h->built = 0;
}

/* Builds `key` into the emptied slot `h`. */
static int build_into(const ds__primitive_cache_ops *ops, slot_head *h, const void *key,
                      void *ctx, ds_error *err)
{
    memcpy(key_of(ops, h), key, ops->key_bytes);
    void *e = entry_of(ops, h);
    int rc = ops->build(e, key, ctx, err);
    if (rc != DS_OK) {
        ops->clear(e);
        memset(e, 0, ops->entry_bytes);
        return rc;
    }
    h->built = 1;
    return DS_OK;
}

int ds__primitive_cache_acquire(ds__primitive_cache *c, const void *key, void *ctx, void **entry,
                                ds_error *err)
{
    const ds__primitive_cache_ops *ops = c->ops;
    *entry = NULL;
    pthread_mutex_lock(&c->lock);
    if (!c->slots)
        c->slots = calloc(c->capacity, slot_bytes(ops));
    slot_head *victim = NULL;
    for (size_t i = 0; c->slots && i < c->capacity; i++) {
        slot_head *h = slot(c, i);
        if (h->built && memcmp(key_of(ops, h), key, ops->key_bytes) == 0) {
            h->users++;
            h->last_use = ++c->clock;
            pthread_mutex_unlock(&c->lock);
            *entry = entry_of(ops, h);
            return DS_OK;
        }
        /* An empty slot first, else the idle entry used longest ago. */
        if (h->users == 0 &&
            (!victim || (victim->built && (!h->built || h->last_use < victim->last_use))))
            victim = h;
    }
    if (victim) {
        empty(ops, victim);
        int rc = build_into(ops, victim, key, ctx, err);
        if (rc == DS_OK) {
            victim->users = 1;
            victim->last_use = ++c->clock;
            *entry = entry_of(ops, victim);
        }
        pthread_mutex_unlock(&c->lock);
        return rc;
    }
    pthread_mutex_unlock(&c->lock);
    /* Every slot busy (or none could be allocated): a private entry for this caller. */
    slot_head *own = calloc(1, slot_bytes(ops));
    if (!own)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory for a primitive",
                            ops->name);
    own->owned = 1;
    int rc = build_into(ops, own, key, ctx, err);
    if (rc != DS_OK) {
        free(own);
        return rc;
    }
    *entry = entry_of(ops, own);
    return DS_OK;
}

void ds__primitive_cache_release(ds__primitive_cache *c, void *entry)
{
    slot_head *h = head_of(c->ops, entry);
    if (h->owned) {
        empty(c->ops, h);
        free(h);
        return;
    }
    pthread_mutex_lock(&c->lock);
    h->users--;
    pthread_mutex_unlock(&c->lock);
}

size_t ds__primitive_cache_count(ds__primitive_cache *c)
{
    size_t n = 0;
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; c->slots && i < c->capacity; i++)
        n += slot(c, i)->built != 0;
    pthread_mutex_unlock(&c->lock);
    return n;
}

void ds__primitive_cache_destroy(ds__primitive_cache *c)
{
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; c->slots && i < c->capacity; i++)
        empty(c->ops, slot(c, i));
    free(c->slots);
    c->slots = NULL;
    c->clock = 0;
    pthread_mutex_unlock(&c->lock);
}
