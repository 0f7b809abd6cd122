/* The primitive cache (kernels/cpu/primitive_cache.c) with a stand-in build that counts what it
 * makes and destroys: hits, least-recently-used eviction of idle entries only, private entries
 * when every slot is in use, failed builds leaving nothing behind, and every built object
 * destroyed exactly once. The oneDNN GEMM and convolution paths keep their primitives in it;
 * test_matmul and test_conv run those through it on real shapes. */
#include <stdint.h>
#include <string.h>

#include "kernels/cpu/primitive_cache.h"
#include "test.h"

typedef struct fake_key {
    int64_t shape[2];
} fake_key;

typedef struct fake_entry {
    int64_t made_for; /* the key's first dim, 0 when cleared */
    int serial;
} fake_entry;

static int builds, clears, live, fail_next;

static int fake_build(void *ve, const void *vk, void *ctx, ds_error *err)
{
    (void)ctx;
    fake_entry *e = ve;
    const fake_key *k = vk;
    CHECK(e->made_for == 0 && e->serial == 0); /* handed over zeroed */
    e->made_for = k->shape[0];
    e->serial = ++builds;
    live++;
    if (fail_next) {
        fail_next = 0;
        return ds_error_set(err, DS_ERR_INTERNAL, "stand-in build failed for %lld",
                            (long long)k->shape[0]);
    }
    return DS_OK;
}

static void fake_clear(void *ve)
{
    fake_entry *e = ve;
    if (e->made_for) {
        clears++;
        live--;
    }
    e->made_for = 0;
}

static const ds__primitive_cache_ops ops = {"stand-in", sizeof(fake_key), sizeof(fake_entry),
                                            fake_build, fake_clear};

static fake_key key(int64_t a)
{
    fake_key k;
    memset(&k, 0, sizeof k);
    k.shape[0] = a;
    k.shape[1] = a * 10;
    return k;
}

static void reset_counts(void) { builds = clears = live = fail_next = 0; }

static fake_entry *get(ds__primitive_cache *c, int64_t a)
{
    fake_key k = key(a);
    void *e = NULL;
    ds_error err = {0};
    if (ds__primitive_cache_acquire(c, &k, NULL, &e, &err) != DS_OK)
        return NULL;
    return e;
}

static void test_hit_and_lru(void)
{
    reset_counts();
    ds__primitive_cache c = DS__PRIMITIVE_CACHE_INIT(&ops, 3);
    int64_t order[] = {1, 2, 3};
    for (int i = 0; i < 3; i++) {
        fake_entry *e = get(&c, order[i]);
        REQUIRE(e && e->made_for == order[i]);
        ds__primitive_cache_release(&c, e);
    }
    CHECK(builds == 3 && ds__primitive_cache_count(&c) == 3);
    /* A hit builds nothing and makes 1 the most recent: 2 is now the oldest. */
    fake_entry *e1 = get(&c, 1);
    REQUIRE(e1 && e1->serial == 1);
    ds__primitive_cache_release(&c, e1);
    CHECK(builds == 3);
    fake_entry *e4 = get(&c, 4);
    REQUIRE(e4 && e4->made_for == 4);
    ds__primitive_cache_release(&c, e4);
    CHECK(builds == 4 && clears == 1);
    fake_entry *again1 = get(&c, 1), *again3 = get(&c, 3);
    CHECK(again1 && again1->serial == 1); /* kept */
    CHECK(again3 && again3->serial == 3); /* kept */
    if (again1)
        ds__primitive_cache_release(&c, again1);
    if (again3)
        ds__primitive_cache_release(&c, again3);
    fake_entry *again2 = get(&c, 2); /* evicted: built anew */
    CHECK(again2 && again2->serial == 5);
    if (again2)
        ds__primitive_cache_release(&c, again2);
    CHECK(builds == 5 && clears == 2);
    ds__primitive_cache_destroy(&c);
    CHECK(live == 0 && clears == builds);
}

static void test_busy_entries_stay(void)
{
    reset_counts();
    ds__primitive_cache c = DS__PRIMITIVE_CACHE_INIT(&ops, 2);
    fake_entry *a = get(&c, 1), *b = get(&c, 2);
    REQUIRE(a && b);
    /* Both slots in use: a third key gets a private entry, and the busy ones stay intact. */
    fake_entry *p = get(&c, 3);
    REQUIRE(p && p->made_for == 3);
    CHECK(a->made_for == 1 && b->made_for == 2);
    CHECK(ds__primitive_cache_count(&c) == 2);
    /* A second user of a busy key shares its entry. */
    fake_entry *a2 = get(&c, 1);
    CHECK(a2 == a);
    ds__primitive_cache_release(&c, p); /* private: destroyed now */
    CHECK(live == 2 && clears == 1);
    if (a2)
        ds__primitive_cache_release(&c, a2);
    ds__primitive_cache_release(&c, a);
    /* Only key 1's slot is idle now (2 is still in use, though older): key 4 takes it. */
    fake_entry *d = get(&c, 4);
    REQUIRE(d && d->made_for == 4);
    CHECK(b->made_for == 2);
    ds__primitive_cache_release(&c, d);
    ds__primitive_cache_release(&c, b);
    ds__primitive_cache_destroy(&c);
    CHECK(live == 0 && clears == builds);
}

static void test_failed_build_leaves_nothing(void)
{
    reset_counts();
    ds__primitive_cache c = DS__PRIMITIVE_CACHE_INIT(&ops, 2);
    fake_key k = key(7);
    void *e = (void *)&k;
    ds_error err = {0};
    fail_next = 1;
    CHECK(ds__primitive_cache_acquire(&c, &k, NULL, &e, &err) == DS_ERR_INTERNAL);
    CHECK(e == NULL);
    CHECK(strstr(err.message, "stand-in build failed for 7") != NULL);
    CHECK(live == 0 && ds__primitive_cache_count(&c) == 0);
    /* The same key builds fine next time, in a slot. */
    fake_entry *ok = get(&c, 7);
    REQUIRE(ok && ok->made_for == 7);
    CHECK(ds__primitive_cache_count(&c) == 1);
    /* A private build that fails is freed too (both slots busy). */
    fake_entry *other = get(&c, 8);
    REQUIRE(other);
    fail_next = 1;
    fake_key k9 = key(9);
    CHECK(ds__primitive_cache_acquire(&c, &k9, NULL, &e, &err) == DS_ERR_INTERNAL);
    CHECK(live == 2);
    ds__primitive_cache_release(&c, ok);
    ds__primitive_cache_release(&c, other);
    ds__primitive_cache_destroy(&c);
    CHECK(live == 0 && clears == builds);
}

/* Keys equal in their first field but not their second must not share an entry. */
static void test_whole_key_compared(void)
{
    reset_counts();
    ds__primitive_cache c = DS__PRIMITIVE_CACHE_INIT(&ops, 4);
    fake_key k1 = key(5), k2 = key(5);
    k2.shape[1] = 51;
    void *e1 = NULL, *e2 = NULL;
    ds_error err = {0};
    REQUIRE(ds__primitive_cache_acquire(&c, &k1, NULL, &e1, &err) == DS_OK);
    REQUIRE(ds__primitive_cache_acquire(&c, &k2, NULL, &e2, &err) == DS_OK);
    CHECK(e1 != e2 && builds == 2);
    ds__primitive_cache_release(&c, e1);
    ds__primitive_cache_release(&c, e2);
    ds__primitive_cache_destroy(&c);
    CHECK(live == 0);
}

int main(void)
{
    RUN(test_hit_and_lru);
    RUN(test_busy_entries_stay);
    RUN(test_failed_build_leaves_nothing);
    RUN(test_whole_key_compared);
    return test_summary();
}
