#include "kernels/cuda/cuda_gemm_chain.h"

#include <stdatomic.h>

/* Relaxed atomics: the hook is set by a test between calls, and the counters are read after
 * the calls they count have returned. */
static atomic_int forced_lookup = -1;
static atomic_int forced_matmul = 0;
static atomic_uint_fast64_t lookups;
static atomic_uint_fast64_t matmul_failures;
static atomic_uint_fast64_t used[DS_GEMM_FORM_COUNT];

const char *ds__gemm_form_name(ds__gemm_form form)
{
    switch (form) {
    case DS_GEMM_FORM_LT_FUSED: return "cuBLASLt with fused epilogue";
    case DS_GEMM_FORM_LT: return "cuBLASLt";
    case DS_GEMM_FORM_PLAIN: return "plain kernel";
    case DS_GEMM_FORM_COUNT: break;
    }
    return "unknown GEMM form";
}

int ds__gemm_chain_run(ds__gemm_form first, ds__gemm_try_fn try_form, void *ctx,
                       ds__gemm_form *used_out, ds_error *err)
{
    for (int f = first; f < DS_GEMM_FORM_COUNT; f++) {
        int rc = try_form(ctx, (ds__gemm_form)f, err);
        if (rc == DS_ERR_UNIMPLEMENTED && f != DS_GEMM_FORM_PLAIN)
            continue;
        if (rc == DS_OK) {
            *used_out = (ds__gemm_form)f;
            atomic_fetch_add_explicit(&used[f], 1, memory_order_relaxed);
        }
        return rc;
    }
    return ds_error_set(err, DS_ERR_INTERNAL, "GEMM: first form %d is not a form", (int)first);
}

int ds__gemm_lookup_found(int status, int returned, int result_state)
{
    atomic_fetch_add_explicit(&lookups, 1, memory_order_relaxed);
    int forced = atomic_load_explicit(&forced_lookup, memory_order_relaxed);
    if (forced >= 0)
        status = forced;
    return status == 0 && returned > 0 && result_state == 0;
}

int ds__gemm_forced_matmul_failure(void)
{
    return atomic_load_explicit(&forced_matmul, memory_order_relaxed);
}

void ds__gemm_note_matmul_failure(void)
{
    atomic_fetch_add_explicit(&matmul_failures, 1, memory_order_relaxed);
}

void ds__gemm_test_force(int lookup_status, int matmul_status)
{
    atomic_store_explicit(&forced_lookup, lookup_status, memory_order_relaxed);
    atomic_store_explicit(&forced_matmul, matmul_status, memory_order_relaxed);
}

void ds__gemm_stats_get(ds__gemm_stats *out)
{
    out->lookups = atomic_load_explicit(&lookups, memory_order_relaxed);
    out->matmul_failures = atomic_load_explicit(&matmul_failures, memory_order_relaxed);
    for (int f = 0; f < DS_GEMM_FORM_COUNT; f++)
        out->used[f] = atomic_load_explicit(&used[f], memory_order_relaxed);
}

void ds__gemm_stats_reset(void)
{
    atomic_store_explicit(&lookups, 0, memory_order_relaxed);
    atomic_store_explicit(&matmul_failures, 0, memory_order_relaxed);
    for (int f = 0; f < DS_GEMM_FORM_COUNT; f++)
        atomic_store_explicit(&used[f], 0, memory_order_relaxed);
}
