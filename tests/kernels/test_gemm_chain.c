/* The CUDA backend's GEMM fallback chain (kernels/cuda/cuda_gemm_chain.c), without a GPU: a
 * stand-in for cuda_gemm.cu's cuBLASLt try (lookup, cache, matmul) driven through the test
 * hook, for every lookup status cuBLASLt can answer and for a failing matmul. Each must end
 * in the next form with the "no algorithm" answer cached; only a real error stops the chain.
 * test_cuda_backend.c forces the same statuses through the real cuBLASLt path on a GPU. */
#include <stdio.h>
#include <string.h>

#include "kernels/cuda/cuda_gemm_chain.h"
#include "test.h"

/* cublasStatus_t values (cublas_api.h), written out: this test builds without CUDA. */
enum {
    ST_SUCCESS = 0,
    ST_NOT_INITIALIZED = 1,
    ST_ALLOC_FAILED = 3,
    ST_INVALID_VALUE = 7,
    ST_ARCH_MISMATCH = 8,
    ST_MAPPING_ERROR = 11,
    ST_EXECUTION_FAILED = 13,
    ST_INTERNAL_ERROR = 14,
    ST_NOT_SUPPORTED = 15,
};

/* One cached answer per (problem, fused?), as cuda_gemm.cu keys its cache by epilogue. */
typedef struct fake_gemm {
    int cached[2];         /* 0 unknown, 1 found, -1 none */
    int tries[DS_GEMM_FORM_COUNT];
    int plain_status;      /* what the plain kernel returns */
    int queued;            /* forms that queued work */
} fake_gemm;

/* cuda_gemm.cu's ds__cuda_gemm_lt, with cuBLASLt always answering "found" unless the hook
 * says otherwise. */
static int fake_try(void *ctx, ds__gemm_form form, ds_error *err)
{
    fake_gemm *g = ctx;
    g->tries[form]++;
    if (form == DS_GEMM_FORM_PLAIN) {
        if (g->plain_status == DS_OK)
            g->queued++;
        return g->plain_status == DS_OK
                   ? DS_OK
                   : ds_error_set(err, g->plain_status, "plain kernel: status %d", g->plain_status);
    }
    int fused = form == DS_GEMM_FORM_LT_FUSED;
    if (!g->cached[fused])
        g->cached[fused] = ds__gemm_lookup_found(ST_SUCCESS, 1, ST_SUCCESS) ? 1 : -1;
    if (g->cached[fused] < 0)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED, "no algorithm");
    int failed = ds__gemm_forced_matmul_failure();
    if (failed) {
        ds__gemm_note_matmul_failure();
        g->cached[fused] = -1;
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED, "matmul status %d", failed);
    }
    g->queued++;
    return DS_OK;
}

static void run_chain(fake_gemm *g, ds__gemm_form first, int want_rc, ds__gemm_form want_used)
{
    ds_error err;
    ds__gemm_form used = DS_GEMM_FORM_COUNT;
    int rc = ds__gemm_chain_run(first, fake_try, g, &used, &err);
    CHECK_MSG(rc == want_rc, "rc %d, want %d (%s)", rc, want_rc, rc ? err.message : "");
    if (rc == DS_OK)
        CHECK_MSG(used == want_used, "used %s, want %s", ds__gemm_form_name(used),
                  ds__gemm_form_name(want_used));
}

static void test_found_runs_first_form(void)
{
    ds__gemm_test_force(-1, 0);
    ds__gemm_stats_reset();
    fake_gemm g = {0};
    run_chain(&g, DS_GEMM_FORM_LT_FUSED, DS_OK, DS_GEMM_FORM_LT_FUSED);
    run_chain(&g, DS_GEMM_FORM_LT_FUSED, DS_OK, DS_GEMM_FORM_LT_FUSED);
    CHECK(g.tries[DS_GEMM_FORM_LT] == 0 && g.tries[DS_GEMM_FORM_PLAIN] == 0 && g.queued == 2);
    fake_gemm u = {0};
    run_chain(&u, DS_GEMM_FORM_LT, DS_OK, DS_GEMM_FORM_LT);
    CHECK(u.tries[DS_GEMM_FORM_LT_FUSED] == 0);
    ds__gemm_stats stats;
    ds__gemm_stats_get(&stats);
    CHECK(stats.lookups == 2);
    CHECK(stats.used[DS_GEMM_FORM_LT_FUSED] == 2 && stats.used[DS_GEMM_FORM_LT] == 1);
}

/* Every status but success, from the lookup, ends in the plain kernel, with both cuBLASLt
 * forms' "none" cached: the second call makes no lookup. */
static void test_every_lookup_failure_falls_through(void)
{
    static const int statuses[] = {ST_NOT_SUPPORTED, ST_INVALID_VALUE, ST_ARCH_MISMATCH,
                                   ST_EXECUTION_FAILED, ST_INTERNAL_ERROR, ST_NOT_INITIALIZED,
                                   ST_ALLOC_FAILED, ST_MAPPING_ERROR};
    for (size_t i = 0; i < sizeof statuses / sizeof *statuses; i++) {
        ds__gemm_test_force(statuses[i], 0);
        ds__gemm_stats_reset();
        fake_gemm g = {0};
        run_chain(&g, DS_GEMM_FORM_LT_FUSED, DS_OK, DS_GEMM_FORM_PLAIN);
        run_chain(&g, DS_GEMM_FORM_LT_FUSED, DS_OK, DS_GEMM_FORM_PLAIN);
        ds__gemm_stats stats;
        ds__gemm_stats_get(&stats);
        CHECK_MSG(stats.lookups == 2, "status %d: %llu lookups, want 2 (one per form, cached)",
                  statuses[i], (unsigned long long)stats.lookups);
        CHECK_MSG(g.cached[0] == -1 && g.cached[1] == -1 && g.queued == 2,
                  "status %d: cached %d/%d, %d queued", statuses[i], g.cached[0], g.cached[1],
                  g.queued);
        CHECK(stats.used[DS_GEMM_FORM_PLAIN] == 2);
    }
    ds__gemm_test_force(-1, 0);
}

/* A lookup that succeeds without a usable result is "no algorithm" too. */
static void test_empty_or_bad_result_is_no_algorithm(void)
{
    ds__gemm_test_force(-1, 0);
    CHECK(ds__gemm_lookup_found(ST_SUCCESS, 1, ST_SUCCESS));
    CHECK(!ds__gemm_lookup_found(ST_SUCCESS, 0, ST_SUCCESS));
    CHECK(!ds__gemm_lookup_found(ST_SUCCESS, 1, ST_NOT_SUPPORTED));
    CHECK(!ds__gemm_lookup_found(ST_INVALID_VALUE, 1, ST_SUCCESS));
    ds__gemm_test_force(ST_NOT_SUPPORTED, 0);
    CHECK(!ds__gemm_lookup_found(ST_SUCCESS, 1, ST_SUCCESS));
    ds__gemm_test_force(-1, 0);
}

/* A matmul that fails after a found algorithm: the unfused form, then the plain kernel, and
 * the failure is remembered (no second matmul try on the next call). */
static void test_failing_matmul_falls_through_and_is_cached(void)
{
    ds__gemm_test_force(-1, ST_EXECUTION_FAILED);
    ds__gemm_stats_reset();
    fake_gemm g = {0};
    run_chain(&g, DS_GEMM_FORM_LT_FUSED, DS_OK, DS_GEMM_FORM_PLAIN);
    ds__gemm_stats stats;
    ds__gemm_stats_get(&stats);
    CHECK(stats.matmul_failures == 2);
    run_chain(&g, DS_GEMM_FORM_LT_FUSED, DS_OK, DS_GEMM_FORM_PLAIN);
    ds__gemm_stats_get(&stats);
    CHECK_MSG(stats.matmul_failures == 2 && stats.lookups == 2,
              "%llu matmul failures, %llu lookups after the cached call",
              (unsigned long long)stats.matmul_failures, (unsigned long long)stats.lookups);
    ds__gemm_test_force(-1, 0);
}

/* A real error from a form is returned, not hidden by the next form; the plain kernel's
 * "too large" is an error too (nothing after it). */
static void test_real_errors_stop_the_chain(void)
{
    ds__gemm_test_force(ST_NOT_SUPPORTED, 0);
    fake_gemm g = {0};
    g.plain_status = DS_ERR_INTERNAL;
    run_chain(&g, DS_GEMM_FORM_LT, DS_ERR_INTERNAL, DS_GEMM_FORM_PLAIN);
    fake_gemm h = {0};
    h.plain_status = DS_ERR_UNIMPLEMENTED;
    run_chain(&h, DS_GEMM_FORM_LT, DS_ERR_UNIMPLEMENTED, DS_GEMM_FORM_PLAIN);
    CHECK(h.tries[DS_GEMM_FORM_PLAIN] == 1 && h.queued == 0);
    ds__gemm_test_force(-1, 0);
}

int main(void)
{
    RUN(test_found_runs_first_form);
    RUN(test_every_lookup_failure_falls_through);
    RUN(test_empty_or_bad_result_is_no_algorithm);
    RUN(test_failing_matmul_falls_through_and_is_cached);
    RUN(test_real_errors_stop_the_chain);
    return test_summary();
}
