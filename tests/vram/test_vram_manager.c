/* The VRAM manager's policy on the CPU backend: the budget holds (peak counter), eviction
 * follows the policy (idle models LRU first, then furthest-future in the running model), two
 * models share one budget, data is identical whatever the budget, and errors leave it usable. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "vram/vram_fixture.h"
#include "vram/vram_manager.h"

static ds_backend *cpu;

/* ---- an observer that logs events as "EVICT A/blocks.2" ---- */
#define LOG_MAX 256
static char log_lines[LOG_MAX][64];
static int log_count;

static const char *kind_name(ds_vram_event_kind k)
{
    switch (k) {
    case DS_VRAM_EVENT_LOAD: return "LOAD";
    case DS_VRAM_EVENT_PREFETCH: return "PREFETCH";
    case DS_VRAM_EVENT_HIT: return "HIT";
    case DS_VRAM_EVENT_EVICT: return "EVICT";
    }
    return "?";
}

static void observe(void *ctx, ds_vram_event_kind kind, const char *model, const char *unit,
                    size_t bytes)
{
    (void)ctx;
    (void)bytes;
    if (log_count < LOG_MAX)
        snprintf(log_lines[log_count++], sizeof log_lines[0], "%s %s/%s", kind_name(kind), model,
                 unit);
}

/* The evictions logged since `from`, joined by ", ". */
static const char *evictions_since(int from)
{
    static char buf[1024];
    buf[0] = 0;
    for (int i = from; i < log_count; i++)
        if (strncmp(log_lines[i], "EVICT ", 6) == 0) {
            if (buf[0])
                strcat(buf, ", ");
            strcat(buf, log_lines[i] + 6);
        }
    return buf;
}

/* One pass over the model's plan: acquire, check the data, release. Returns failures. */
static int run_pass(fx_model *fx, ds_vram_model *model, size_t activations, ds_error *err)
{
    int bad = 0;
    if (activations && ds_vram_reserve(model, "activations", activations, err) != DS_OK)
        return 1000;
    for (size_t u = 0; u < fx->n; u++) {
        const ds_tensor *t;
        if (ds_vram_acquire(model, fx->index[u], NULL, &t, err) != DS_OK)
            return 1000;
        if (t[0].dtype != fx->compute || t[1].dtype != fx->compute || t[0].shape[0] != fx->rows[u])
            bad++;
        if (fx_unit_sum(t, 2) != fx->expect[u])
            bad++;
        if (ds_vram_release(model, fx->index[u], NULL, err) != DS_OK)
            return 1000;
    }
    if (activations)
        ds_vram_unreserve(model, activations);
    return bad;
}

/* Budgets 0 / 25 / 50 / 100 % of the model and unlimited, with and without prefetch: peak
 * within budget (0 = the largest unit: streaming), data identical, traffic as expected. */
static void test_budget_never_exceeded(void)
{
    fx_model fx;
    fx_make(&fx, 12, DS_F32, 1, 0);
    size_t total = fx_total(&fx), largest = fx_largest(&fx);
    const size_t act = 4096;
    size_t budgets[5] = {0, total / 4 + act, total / 2 + act, total + act, DS_VRAM_UNLIMITED};
    for (int depth = 0; depth <= 3; depth += 3)
        for (int bi = 0; bi < 5; bi++) {
            ds_vram_manager *m = NULL;
            ds_vram_model *model = NULL;
            ds_error err = {0};
            REQUIRE(ds_vram_manager_create(cpu, budgets[bi], depth, &m, &err) == DS_OK);
            REQUIRE(ds_vram_model_add(m, "dit", DS_F32, &model, &err) == DS_OK);
            REQUIRE(fx_register(&fx, model, &err) == DS_OK);
            for (int step = 0; step < 4; step++)
                CHECK_MSG(run_pass(&fx, model, act, &err) == 0, "budget %zu depth %d: %s",
                          budgets[bi], depth, err.message);
            ds_vram_stats st;
            ds_vram_stats_get(m, &st);
            size_t limit = budgets[bi] ? budgets[bi] : largest + act;
            CHECK_MSG(st.peak_bytes <= limit, "budget %zu depth %d: peak %zu", budgets[bi],
                      depth, st.peak_bytes);
            CHECK(st.peak_bytes > 0);
            CHECK(st.copy_seconds > 0 && st.held_seconds > 0);
            if (budgets[bi] >= total + act) {
                /* Everything fits: each unit is copied once and then hit. */
                CHECK(st.bytes_moved == total);
                CHECK(st.evictions == 0);
                CHECK(st.hits + st.loads == 4 * fx.n);
            } else {
                CHECK(st.bytes_moved > total);
                CHECK(st.evictions > 0);
            }
            if (depth > 0 && budgets[bi] != 0)
                CHECK(st.prefetches > 0);
            if (budgets[bi] == 0)
                CHECK(st.prefetches == 0 && st.hits == 0);
            ds_vram_model_stats ms;
            ds_vram_model_stats_get(model, &ms);
            CHECK(ms.unit_count == fx.n && ms.fast_bytes_total == total);
            CHECK(ms.fast_bytes == st.resident_bytes);
            CHECK(ms.slow_bytes_total < total); /* bf16 stored, f32 resident */
            CHECK(st.activation_bytes == 0);
            ds_vram_manager_destroy(m);
        }
    fx_free(&fx);
}

/* Fast-tier dtypes follow the target: bf16 compute halves the bytes; per-tensor targets win. */
static void test_target_dtypes(void)
{
    fx_model fx;
    fx_make(&fx, 3, DS_F16, 2, 0);
    ds_vram_manager *m = NULL;
    ds_vram_model *model = NULL;
    ds_error err = {0};
    REQUIRE(ds_vram_manager_create(cpu, DS_VRAM_UNLIMITED, 1, &m, &err) == DS_OK);
    REQUIRE(ds_vram_model_add(m, "te", DS_F16, &model, &err) == DS_OK);
    REQUIRE(fx_register(&fx, model, &err) == DS_OK);
    CHECK(run_pass(&fx, model, 0, &err) == 0);
    ds_vram_model_stats ms;
    ds_vram_model_stats_get(model, &ms);
    CHECK(ms.fast_bytes_total == fx_total(&fx));

    /* A per-tensor target (an fp8 linear weight kept fp8) overrides the model's dtype. */
    uint8_t w8[32];
    for (int i = 0; i < 32; i++)
        w8[i] = (uint8_t)(i * 7);
    ds_vram_tensor_source t = {.name = "w", .dtype = DS_F8_E4M3, .ndim = 1, .shape = {32},
                               .data = w8, .target = DS_F8_E4M3};
    size_t idx;
    REQUIRE(ds_vram_unit_add(model, "fp8", &t, 1, &idx, &err) == DS_OK);
    const ds_tensor *v;
    REQUIRE(ds_vram_acquire(model, idx, NULL, &v, &err) == DS_OK);
    CHECK(v[0].dtype == DS_F8_E4M3 && memcmp(v[0].data, w8, 32) == 0);
    CHECK(v[0].backend == cpu);
    CHECK(ds_vram_release(model, idx, NULL, &err) == DS_OK);

    /* Integer tensors cannot change dtype. */
    int32_t ids[4] = {0};
    ds_vram_tensor_source bad = {.name = "ids", .dtype = DS_I32, .ndim = 1, .shape = {4},
                                 .data = ids};
    CHECK(ds_vram_unit_add(model, "embed", &bad, 1, &idx, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "tensor 'ids': cannot convert i32 to f16");
    ds_vram_manager_destroy(m);
    fx_free(&fx);
}

/* Four equal units, room for three, no prefetch: the unit needed furthest in the future goes;
 * a unit outside the plan goes before any planned one. */
static void test_furthest_future_within_model(void)
{
    fx_model fx;
    fx_make(&fx, 5, DS_F32, 3, 1); /* equal sizes, so "room for three" is exact */
    ds_vram_manager *m = NULL;
    ds_vram_model *model = NULL;
    ds_error err = {0};
    REQUIRE(ds_vram_manager_create(cpu, 3 * fx.unit_bytes[0], 0, &m, &err) == DS_OK);
    ds_vram_set_observer(m, observe, NULL);
    REQUIRE(ds_vram_model_add(m, "A", DS_F32, &model, &err) == DS_OK);
    /* Units 0..4, with the plan 0..3 below: 4 stays outside it. */
    REQUIRE(fx_register(&fx, model, &err) == DS_OK);
    size_t plan[4] = {0, 1, 2, 3};
    REQUIRE(ds_vram_plan(model, plan, 4, &err) == DS_OK);
    const ds_tensor *t;
    log_count = 0;
    for (size_t u = 0; u < 3; u++) {
        REQUIRE(ds_vram_acquire(model, u, NULL, &t, &err) == DS_OK);
        REQUIRE(ds_vram_release(model, u, NULL, &err) == DS_OK);
    }
    CHECK_STR_EQ(evictions_since(0), "");
    /* Acquiring 3 at plan position 3: next uses are 0 (dist 0), 1 (1), 2 (2) -> evict 2. */
    REQUIRE(ds_vram_acquire(model, 3, NULL, &t, &err) == DS_OK);
    REQUIRE(ds_vram_release(model, 3, NULL, &err) == DS_OK);
    CHECK_STR_EQ(evictions_since(0), "A/blocks.2");
    /* Next step: 0 and 1 hit; 2 then evicts 1 (next use after 3 and 0). */
    int mark = log_count;
    for (size_t u = 0; u < 3; u++) {
        REQUIRE(ds_vram_acquire(model, u, NULL, &t, &err) == DS_OK);
        REQUIRE(ds_vram_release(model, u, NULL, &err) == DS_OK);
    }
    CHECK_STR_EQ(evictions_since(mark), "A/blocks.1");
    CHECK_STR_EQ(log_lines[mark], "HIT A/blocks.0");
    /* Resident: 0, 2, 3. Unit 4 (outside the plan) comes in by evicting... the furthest: 3 is
     * next (dist 0), then 0 (1), then 2 (3 acquires ahead) -> 2. Then, asking for 1, unit 4
     * (never needed by the plan) goes first. */
    mark = log_count;
    REQUIRE(ds_vram_acquire(model, 4, NULL, &t, &err) == DS_OK);
    REQUIRE(ds_vram_release(model, 4, NULL, &err) == DS_OK);
    CHECK_STR_EQ(evictions_since(mark), "A/blocks.2");
    mark = log_count;
    REQUIRE(ds_vram_acquire(model, 1, NULL, &t, &err) == DS_OK);
    REQUIRE(ds_vram_release(model, 1, NULL, &err) == DS_OK);
    CHECK_STR_EQ(evictions_since(mark), "A/blocks.4");
    /* Offload (upstream's, before another model runs) empties the model except what is
     * acquired. */
    REQUIRE(ds_vram_acquire(model, 3, NULL, &t, &err) == DS_OK);
    CHECK(ds_vram_offload(model, &err) == DS_OK);
    CHECK(!ds_vram_unit_resident(model, 0) && !ds_vram_unit_resident(model, 1));
    CHECK(ds_vram_unit_resident(model, 3));
    CHECK(fx_unit_sum(t, 2) == fx.expect[3]);
    REQUIRE(ds_vram_release(model, 3, NULL, &err) == DS_OK);
    ds_vram_manager_destroy(m);
    fx_free(&fx);
}

/* Idle models go before the running one, least recently used model first. */
static void test_lru_across_models(void)
{
    fx_model fx[4];
    ds_vram_model *model[4];
    const char *names[4] = {"A", "B", "C", "D"};
    ds_vram_manager *m = NULL;
    ds_error err = {0};
    for (int i = 0; i < 4; i++)
        fx_make(&fx[i], 2, DS_F32, 10 + (uint32_t)i, 1);
    REQUIRE(ds_vram_manager_create(cpu, 4 * fx[0].unit_bytes[0], 0, &m, &err) == DS_OK);
    ds_vram_set_observer(m, observe, NULL);
    for (int i = 0; i < 4; i++) {
        REQUIRE(ds_vram_model_add(m, names[i], DS_F32, &model[i], &err) == DS_OK);
        REQUIRE(fx_register(&fx[i], model[i], &err) == DS_OK);
    }
    const ds_tensor *t;
    /* A uses both units, then B and C one each: the pool is full (A0 A1 B0 C0). */
    log_count = 0;
    size_t order_model[4] = {0, 0, 1, 2}, order_unit[4] = {0, 1, 0, 0};
    for (int k = 0; k < 4; k++) {
        REQUIRE(ds_vram_acquire(model[order_model[k]], order_unit[k], NULL, &t, &err) == DS_OK);
        REQUIRE(ds_vram_release(model[order_model[k]], order_unit[k], NULL, &err) == DS_OK);
    }
    CHECK_STR_EQ(evictions_since(0), "");
    /* A runs again (hit): now B is the least recently used. D's first unit evicts B's. */
    REQUIRE(ds_vram_acquire(model[0], 0, NULL, &t, &err) == DS_OK);
    REQUIRE(ds_vram_release(model[0], 0, NULL, &err) == DS_OK);
    int mark = log_count;
    REQUIRE(ds_vram_acquire(model[3], 0, NULL, &t, &err) == DS_OK);
    REQUIRE(ds_vram_release(model[3], 0, NULL, &err) == DS_OK);
    CHECK_STR_EQ(evictions_since(mark), "B/blocks.0");
    /* D's second unit: idle models first even though D has a resident unit; C is older than A. */
    mark = log_count;
    REQUIRE(ds_vram_acquire(model[3], 1, NULL, &t, &err) == DS_OK);
    REQUIRE(ds_vram_release(model[3], 1, NULL, &err) == DS_OK);
    CHECK_STR_EQ(evictions_since(mark), "C/blocks.0");
    /* B again: A (used before D) is the least recently used idle model, so both its units go
     * before D's. Within A the furthest-future rule: A last acquired unit 0, so 1 comes next
     * and 0 goes first. */
    mark = log_count;
    REQUIRE(ds_vram_acquire(model[1], 0, NULL, &t, &err) == DS_OK);
    REQUIRE(ds_vram_release(model[1], 0, NULL, &err) == DS_OK);
    REQUIRE(ds_vram_acquire(model[1], 1, NULL, &t, &err) == DS_OK);
    REQUIRE(ds_vram_release(model[1], 1, NULL, &err) == DS_OK);
    CHECK_STR_EQ(evictions_since(mark), "A/blocks.0, A/blocks.1");
    for (int i = 0; i < 4; i++)
        fx_free(&fx[i]);
    ds_vram_manager_destroy(m);
}

/* Two models take turns under a budget that holds about one of them; both stay correct, the
 * budget holds, and removing one returns its bytes. */
static void test_two_models_interleaved(void)
{
    fx_model a, b;
    fx_make(&a, 8, DS_F32, 21, 0);
    fx_make(&b, 6, DS_BF16, 22, 0);
    size_t budget = (fx_total(&a) + fx_total(&b)) / 2;
    ds_vram_manager *m = NULL;
    ds_vram_model *ma = NULL, *mb = NULL;
    ds_error err = {0};
    REQUIRE(ds_vram_manager_create(cpu, budget, 2, &m, &err) == DS_OK);
    REQUIRE(ds_vram_model_add(m, "dit", DS_F32, &ma, &err) == DS_OK);
    REQUIRE(ds_vram_model_add(m, "text_encoder", DS_BF16, &mb, &err) == DS_OK);
    REQUIRE(fx_register(&a, ma, &err) == DS_OK);
    REQUIRE(fx_register(&b, mb, &err) == DS_OK);
    for (int step = 0; step < 5; step++) {
        CHECK_MSG(run_pass(&a, ma, 1024, &err) == 0, "%s", err.message);
        CHECK_MSG(run_pass(&b, mb, 2048, &err) == 0, "%s", err.message);
    }
    ds_vram_stats st;
    ds_vram_stats_get(m, &st);
    CHECK(st.peak_bytes <= budget);
    CHECK(st.evictions > 0 && st.prefetches > 0);
    ds_vram_model_stats sa, sb;
    ds_vram_model_stats_get(ma, &sa);
    ds_vram_model_stats_get(mb, &sb);
    CHECK(sa.fast_bytes + sb.fast_bytes == st.resident_bytes);
    CHECK(sa.loads + sa.hits == 5 * a.n && sb.loads + sb.hits == 5 * b.n);
    ds_vram_model_remove(mb);
    ds_vram_stats_get(m, &st);
    CHECK(st.resident_bytes == sa.fast_bytes);
    CHECK(run_pass(&a, ma, 0, &err) == 0);
    ds_vram_manager_destroy(m);
    fx_free(&a);
    fx_free(&b);
}

/* A unit bigger than the budget, or one that cannot fit beside acquired units and activations,
 * is RESOURCE_EXHAUSTED naming it and its bytes; nothing is evicted and the pool goes on. */
static void test_exhausted_is_an_error(void)
{
    fx_model fx;
    fx_make(&fx, 4, DS_F32, 31, 1);
    ds_vram_manager *m = NULL;
    ds_vram_model *model = NULL;
    ds_error err = {0};
    size_t ub = fx.unit_bytes[0];
    REQUIRE(ds_vram_manager_create(cpu, 2 * ub, 1, &m, &err) == DS_OK);
    REQUIRE(ds_vram_model_add(m, "dit", DS_F32, &model, &err) == DS_OK);
    REQUIRE(fx_register(&fx, model, &err) == DS_OK);
    static float big[40000];
    ds_vram_tensor_source t = {.name = "w", .dtype = DS_F32, .ndim = 1, .shape = {40000},
                               .data = big};
    size_t huge;
    REQUIRE(ds_vram_unit_add(model, "proj_out", &t, 1, &huge, &err) == DS_OK);
    const ds_tensor *v;
    REQUIRE(ds_vram_acquire(model, 0, NULL, &v, &err) == DS_OK);
    REQUIRE(ds_vram_release(model, 0, NULL, &err) == DS_OK);
    ds_vram_stats before, after;
    ds_vram_stats_get(m, &before);
    CHECK(ds_vram_acquire(model, huge, NULL, &v, &err) == DS_ERR_RESOURCE_EXHAUSTED);
    CHECK(v == NULL);
    CHECK_CONTAINS(err.message, "unit 'proj_out' of model 'dit' needs 160000 bytes");
    ds_vram_stats_get(m, &after);
    CHECK(after.evictions == before.evictions && after.resident_bytes == before.resident_bytes);

    /* Two acquired units fill the budget: a third cannot come in until one is released. */
    REQUIRE(ds_vram_acquire(model, 0, NULL, &v, &err) == DS_OK);
    REQUIRE(ds_vram_acquire(model, 1, NULL, &v, &err) == DS_OK);
    CHECK(ds_vram_acquire(model, 2, NULL, &v, &err) == DS_ERR_RESOURCE_EXHAUSTED);
    CHECK_CONTAINS(err.message, "unit 'blocks.2'");
    CHECK(ds_vram_reserve(model, "activations", 1, &err) == DS_ERR_RESOURCE_EXHAUSTED);
    CHECK_CONTAINS(err.message, "activations of model 'dit' need 1 bytes");
    REQUIRE(ds_vram_release(model, 0, NULL, &err) == DS_OK);
    CHECK(ds_vram_acquire(model, 2, NULL, &v, &err) == DS_OK);
    CHECK(fx_unit_sum(v, 2) == fx.expect[2]);
    CHECK(ds_vram_release(model, 2, NULL, &err) == DS_OK);
    CHECK(ds_vram_release(model, 1, NULL, &err) == DS_OK);
    /* Misuse is an error value too. */
    CHECK(ds_vram_release(model, 1, NULL, &err) == DS_ERR_FAILED_PRECONDITION);
    CHECK(ds_vram_acquire(model, 99, NULL, &v, &err) == DS_ERR_INVALID_ARGUMENT);
    size_t bad_plan[2] = {0, 99};
    CHECK(ds_vram_plan(model, bad_plan, 2, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "plan position 1 names unit 99");
    /* Still usable: a whole pass. */
    size_t plan[4] = {0, 1, 2, 3};
    REQUIRE(ds_vram_plan(model, plan, 4, &err) == DS_OK);
    CHECK(run_pass(&fx, model, 0, &err) == 0);
    ds_vram_stats_get(m, &after);
    CHECK(after.peak_bytes <= 2 * ub);
    ds_vram_manager_destroy(m);
    fx_free(&fx);
}

/* ds_vram_set_budget: lowering it evicts idle units until the rest fits, raising it lets a
 * unit that did not fit in; the owner key finds, reports and removes a model. */
static void test_budget_change_and_owners(void)
{
    fx_model a, b;
    fx_make(&a, 4, DS_F32, 41, 1);
    fx_make(&b, 4, DS_F32, 43, 1);
    ds_vram_manager *m = NULL;
    ds_vram_model *ma = NULL, *mb = NULL;
    ds_error err = {0};
    size_t ub = a.unit_bytes[0];
    static int key_a, key_b;
    REQUIRE(ds_vram_manager_create(cpu, DS_VRAM_UNLIMITED, 1, &m, &err) == DS_OK);
    REQUIRE(ds_vram_model_add(m, "A", DS_F32, &ma, &err) == DS_OK);
    REQUIRE(ds_vram_model_add(m, "B", DS_F32, &mb, &err) == DS_OK);
    REQUIRE(fx_register(&a, ma, &err) == DS_OK && fx_register(&b, mb, &err) == DS_OK);
    ds_vram_model_set_owner(ma, &key_a);
    ds_vram_model_set_owner(mb, &key_b);
    CHECK(ds_vram_model_find(m, &key_a) == ma && ds_vram_model_find(m, &key_b) == mb);
    CHECK(ds_vram_model_find(m, NULL) == NULL);
    CHECK(run_pass(&a, ma, 0, &err) == 0 && run_pass(&b, mb, 0, &err) == 0);
    ds_vram_stats st;
    ds_vram_stats_get(m, &st);
    CHECK(st.resident_bytes == 8 * ub);

    /* Down to three units: A (least recently used) goes first, then B's furthest. */
    REQUIRE(ds_vram_set_budget(m, 3 * ub, &err) == DS_OK);
    ds_vram_stats_get(m, &st);
    CHECK(st.budget_bytes == 3 * ub && st.resident_bytes <= 3 * ub);
    ds_vram_model_stats ms;
    CHECK(ds_vram_owner_stats(m, &key_a, &ms) && ms.fast_bytes == 0);
    CHECK(ds_vram_owner_stats(m, &key_b, &ms) && ms.fast_bytes == 3 * ub);
    CHECK(run_pass(&a, ma, 0, &err) == 0);
    ds_vram_stats_get(m, &st);
    CHECK(st.peak_bytes == 8 * ub && st.resident_bytes <= 3 * ub);

    /* Below one unit: acquire fails; raised again, the same manager serves the pass. */
    REQUIRE(ds_vram_set_budget(m, ub - 1, &err) == DS_OK);
    const ds_tensor *v;
    CHECK(ds_vram_acquire(ma, a.index[0], NULL, &v, &err) == DS_ERR_RESOURCE_EXHAUSTED);
    REQUIRE(ds_vram_set_budget(m, 0, &err) == DS_OK);
    ds_vram_stats_get(m, &st);
    CHECK(st.resident_bytes == 0);
    CHECK(run_pass(&b, mb, 0, &err) == 0);

    ds_vram_owner_remove(m, &key_a);
    ds_vram_owner_remove(m, &key_a);
    CHECK(ds_vram_model_find(m, &key_a) == NULL);
    CHECK(!ds_vram_owner_stats(m, &key_a, &ms) && ms.unit_count == 0);
    CHECK(ds_vram_owner_stats(m, &key_b, &ms) && ms.unit_count == 4);
    ds_vram_manager_destroy(m);
    fx_free(&a);
    fx_free(&b);
}

/* Units of one size paged under a budget: after the first pass every copy lands in a kept
 * buffer (no allocation), kept buffers count in the budget, a unit of another size frees them to
 * fit, offload frees instead of keeping, and budget 0 leaves nothing kept. */
static void test_buffers_reused(void)
{
    fx_model fx;
    fx_make(&fx, 8, DS_F32, 51, 1);
    size_t ub = fx.unit_bytes[0];
    const size_t act = 4096;
    for (int depth = 0; depth <= 2; depth += 2)
        for (size_t units = 0; units <= 4; units += 2) {
            size_t budget = units * ub + (units ? act : 0);
            ds_vram_manager *m = NULL;
            ds_vram_model *model = NULL;
            ds_error err = {0};
            REQUIRE(ds_vram_manager_create(cpu, budget, depth, &m, &err) == DS_OK);
            REQUIRE(ds_vram_model_add(m, "dit", DS_F32, &model, &err) == DS_OK);
            REQUIRE(fx_register(&fx, model, &err) == DS_OK);
            ds_vram_stats warm, st;
            CHECK(run_pass(&fx, model, units ? act : 0, &err) == 0);
            ds_vram_stats_get(m, &warm);
            for (int step = 0; step < 3; step++)
                CHECK_MSG(run_pass(&fx, model, units ? act : 0, &err) == 0, "%s", err.message);
            ds_vram_stats_get(m, &st);
            CHECK_MSG(st.allocations == warm.allocations, "budget %zu depth %d: %llu -> %llu",
                      budget, depth, (unsigned long long)warm.allocations,
                      (unsigned long long)st.allocations);
            /* Every copy of the warm passes landed in a kept buffer. */
            uint64_t copies = st.loads + st.prefetches - warm.loads - warm.prefetches;
            CHECK_MSG(copies > 0 && st.reuses - warm.reuses == copies,
                      "budget %zu depth %d: %llu copies, %llu reuses", budget, depth,
                      (unsigned long long)copies, (unsigned long long)(st.reuses - warm.reuses));
            CHECK(st.peak_bytes <= (units ? budget : ub));
            CHECK(st.resident_bytes + st.cached_bytes <= (units ? budget : ub));

            /* A bigger unit: the kept buffers and idle units make way, the budget holds. */
            static float big[3000];
            ds_vram_tensor_source t = {.name = "w", .dtype = DS_F32, .ndim = 1, .shape = {3000},
                                       .data = big};
            size_t other;
            const ds_tensor *v;
            REQUIRE(ds_vram_unit_add(model, "proj_out", &t, 1, &other, &err) == DS_OK);
            REQUIRE(ds_vram_acquire(model, other, NULL, &v, &err) == DS_OK);
            REQUIRE(ds_vram_release(model, other, NULL, &err) == DS_OK);
            ds_vram_stats_get(m, &st);
            CHECK(st.peak_bytes <= (units ? budget : ub));

            CHECK(ds_vram_offload(model, &err) == DS_OK);
            ds_vram_stats_get(m, &st);
            CHECK(st.resident_bytes == 0);
            REQUIRE(ds_vram_set_budget(m, 0, &err) == DS_OK);
            ds_vram_stats_get(m, &st);
            CHECK(st.cached_bytes == 0);
            ds_vram_manager_destroy(m);
        }
    fx_free(&fx);
}

static void test_create_errors(void)
{
    ds_vram_manager *m = NULL;
    ds_vram_model *model = NULL;
    ds_error err = {0};
    CHECK(ds_vram_manager_create(cpu, 0, 9, &m, &err) == DS_ERR_INVALID_ARGUMENT && !m);
    CHECK(ds_vram_manager_create(NULL, 0, 1, &m, &err) == DS_ERR_INVALID_ARGUMENT);
    REQUIRE(ds_vram_manager_create(cpu, 0, 1, &m, &err) == DS_OK);
    CHECK(ds_vram_model_add(m, "x", DS_I32, &model, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "compute dtype i32");
    REQUIRE(ds_vram_model_add(m, "x", DS_F32, &model, &err) == DS_OK);
    size_t idx;
    CHECK(ds_vram_unit_add(model, "empty", NULL, 0, &idx, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "unit 'empty' has no tensors");
    ds_vram_manager_destroy(m);
}

int main(void)
{
    ds_error err = {0};
    if (ds_cpu_backend_create(2, &cpu, &err) != DS_OK) {
        fprintf(stderr, "cpu backend: %s\n", err.message);
        return 1;
    }
    RUN(test_budget_never_exceeded);
    RUN(test_target_dtypes);
    RUN(test_furthest_future_within_model);
    RUN(test_lru_across_models);
    RUN(test_two_models_interleaved);
    RUN(test_exhausted_is_an_error);
    RUN(test_budget_change_and_owners);
    RUN(test_buffers_reused);
    RUN(test_create_errors);
    ds_backend_destroy(cpu);
    return test_summary();
}
