/* The slow tier's two homes (issue 5, "Host RAM is a budgeted tier too"): units whose offload
 * dtype differs from the file's rest in host memory, converted once, while the host limit
 * allows; past it, or when the config asks for disk, they are read from the mapped file at
 * every copy and rounded through the offload dtype on the way. Whichever tier a unit rests in,
 * the fast tier must receive the same bytes: the file's values rounded through the offload
 * dtype (fp8 e4m3 here), then converted to the fast tier's dtype. The expected bytes are built
 * here from the fixture's raw values, not by the manager. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "vram/vram_fixture.h"
#include "vram/vram_manager.h"

static ds_backend *cpu;
static fx_model fx;
static uint64_t rounded[FX_MAX_UNITS]; /* each unit's fast-tier checksum after fp8 rounding */

/* x (n values of dtype `from`) through e4m3 into `to`, checksummed into h. */
static uint64_t hash_rounded(uint64_t h, const void *x, ds_dtype from, size_t n, ds_dtype to)
{
    float *f = malloc(n * sizeof *f);
    unsigned char *q = malloc(n);
    void *out = malloc(n * ds_dtype_size(to));
    ds_convert_to_f32(x, from, n, f);
    ds_convert_from_f32(f, n, DS_F8_E4M3, q);
    ds_convert_to_f32(q, DS_F8_E4M3, n, f);
    ds_convert_from_f32(f, n, to, out);
    h = fx_hash(h, out, n * ds_dtype_size(to));
    free(f);
    free(q);
    free(out);
    return h;
}

static void make_expectations(void)
{
    for (size_t u = 0; u < fx.n; u++) {
        uint64_t h = 14695981039346656037ull;
        h = hash_rounded(h, fx.weight[u], DS_BF16, (size_t)fx.rows[u] * 64, fx.compute);
        h = hash_rounded(h, fx.bias[u], DS_F32, 64, fx.compute);
        rounded[u] = h;
    }
}

/* Registers the fixture with offload e4m3 (and `disk`), plan 0..n-1. */
static int register_fp8(ds_vram_model *model, int offload_fp8, int disk, ds_error *err)
{
    char name[32];
    for (size_t u = 0; u < fx.n; u++) {
        ds_vram_tensor_source t[2];
        memset(t, 0, sizeof t);
        t[0] = (ds_vram_tensor_source){.name = "weight", .dtype = DS_BF16, .ndim = 2,
                                       .shape = {fx.rows[u], 64}, .data = fx.weight[u]};
        t[1] = (ds_vram_tensor_source){.name = "bias", .dtype = DS_F32, .ndim = 1,
                                       .shape = {64}, .data = fx.bias[u]};
        for (int i = 0; i < 2; i++) {
            t[i].offload = offload_fp8 ? DS_F8_E4M3 : DS_DTYPE_INVALID;
            t[i].disk = disk;
        }
        snprintf(name, sizeof name, "blocks.%zu", u);
        int rc = ds_vram_unit_add(model, name, t, 2, &fx.index[u], err);
        if (rc != DS_OK)
            return rc;
    }
    return ds_vram_plan(model, fx.index, fx.n, err);
}

/* Two passes over every unit; returns how many checksums differ from `want`. */
static int run_passes(ds_vram_model *model, const uint64_t *want)
{
    int wrong = 0;
    ds_error err;
    for (int pass = 0; pass < 2; pass++)
        for (size_t u = 0; u < fx.n; u++) {
            const ds_tensor *t;
            if (ds_vram_acquire(model, fx.index[u], NULL, &t, &err) != DS_OK) {
                fprintf(stderr, "  acquire: %s\n", err.message);
                return -1;
            }
            wrong += fx_unit_sum(t, 2) != want[u];
            ds_vram_release(model, fx.index[u], NULL, &err);
        }
    return wrong;
}

typedef struct outcome {
    int wrong;
    ds_vram_model_stats ms;
    ds_vram_stats st;
} outcome;

static outcome run_case(size_t budget, size_t host_limit, int offload_fp8, int disk)
{
    outcome o;
    memset(&o, 0, sizeof o);
    ds_error err;
    ds_vram_manager *m;
    ds_vram_model *model;
    if (ds_vram_manager_create(cpu, budget, 2, &m, &err) != DS_OK ||
        (ds_vram_set_host_limit(m, host_limit), 0) ||
        ds_vram_model_add(m, "dit", fx.compute, &model, &err) != DS_OK ||
        register_fp8(model, offload_fp8, disk, &err) != DS_OK) {
        fprintf(stderr, "  setup: %s\n", err.message);
        o.wrong = -1;
        return o;
    }
    o.wrong = run_passes(model, offload_fp8 ? rounded : fx.expect);
    ds_vram_model_stats_get(model, &o.ms);
    ds_vram_stats_get(m, &o.st);
    ds_vram_manager_destroy(m);
    return o;
}

/* No host limit: every unit's fp8 copy rests in host memory, none is read from the file. */
static void test_host_copies(void)
{
    size_t budgets[] = {0, fx_total(&fx) / 3, DS_VRAM_UNLIMITED};
    for (size_t b = 0; b < 3; b++) {
        outcome o = run_case(budgets[b], DS_VRAM_UNLIMITED, 1, 0);
        CHECK_MSG(o.wrong == 0, "budget %zu: %d units differ from the fp8-rounded values",
                  budgets[b], o.wrong);
        CHECK(o.ms.host_bytes > 0 && o.ms.file_bytes == 0 && o.ms.file_served_units == 0);
        CHECK(o.st.host_bytes == o.ms.host_bytes && o.st.host_peak_bytes == o.ms.host_bytes);
        /* e4m3 storage: one byte per value, alignment aside. */
        CHECK(o.ms.slow_bytes_total < fx_total(&fx));
    }
}

/* A host limit that holds about half the copies: the first units fit, the rest are served from
 * the file and rounded on the way, with the same bytes in the fast tier. */
static void test_host_limit(void)
{
    outcome all = run_case(DS_VRAM_UNLIMITED, DS_VRAM_UNLIMITED, 1, 0);
    REQUIRE(all.wrong == 0);
    size_t limit = all.ms.host_bytes / 2;
    size_t budgets[] = {0, fx_total(&fx) / 3, DS_VRAM_UNLIMITED};
    for (size_t b = 0; b < 3; b++) {
        outcome o = run_case(budgets[b], limit, 1, 0);
        CHECK_MSG(o.wrong == 0, "budget %zu: %d units differ", budgets[b], o.wrong);
        CHECK(o.ms.host_bytes > 0 && o.ms.host_bytes <= limit);
        CHECK(o.st.host_peak_bytes <= limit);
        CHECK_MSG(o.ms.file_served_units > 0 && o.ms.file_served_units < fx.n,
                  "%zu of %zu units served from the file", o.ms.file_served_units, fx.n);
        CHECK(o.ms.file_bytes > 0);
    }
    outcome none = run_case(fx_total(&fx) / 3, 0, 1, 0);
    CHECK(none.wrong == 0);
    CHECK(none.ms.host_bytes == 0 && none.st.host_peak_bytes == 0);
    CHECK(none.ms.file_served_units == fx.n);
    CHECK(none.ms.file_bytes == none.ms.slow_bytes_total);
}

/* offload_device "disk": read from the file at every copy even with host memory to spare. */
static void test_disk(void)
{
    outcome o = run_case(fx_total(&fx) / 3, DS_VRAM_UNLIMITED, 1, 1);
    CHECK(o.wrong == 0);
    CHECK(o.ms.host_bytes == 0 && o.ms.file_served_units == 0);
    CHECK(o.ms.file_bytes == o.ms.slow_bytes_total);
    outcome plain = run_case(fx_total(&fx) / 3, DS_VRAM_UNLIMITED, 0, 1);
    CHECK(plain.wrong == 0 && plain.ms.host_bytes == 0);
}

/* On the CPU backend a unit that needs no conversion is used from the mapping: no copy. */
static void test_mapping_is_host(void)
{
    outcome o = run_case(DS_VRAM_UNLIMITED, DS_VRAM_UNLIMITED, 0, 0);
    CHECK(o.wrong == 0);
    CHECK(o.ms.host_bytes == 0 && o.ms.file_served_units == 0);
    CHECK(o.ms.file_bytes == o.ms.slow_bytes_total);
}

/* Removing a model gives its host memory back: a later model's units fit again. */
static void test_host_freed(void)
{
    outcome all = run_case(DS_VRAM_UNLIMITED, DS_VRAM_UNLIMITED, 1, 0);
    ds_error err;
    ds_vram_manager *m;
    REQUIRE(ds_vram_manager_create(cpu, DS_VRAM_UNLIMITED, 0, &m, &err) == DS_OK);
    ds_vram_set_host_limit(m, all.ms.host_bytes);
    for (int round = 0; round < 2; round++) {
        ds_vram_model *model;
        REQUIRE(ds_vram_model_add(m, "dit", fx.compute, &model, &err) == DS_OK);
        REQUIRE(register_fp8(model, 1, 0, &err) == DS_OK);
        ds_vram_model_stats ms;
        ds_vram_model_stats_get(model, &ms);
        CHECK_MSG(ms.file_served_units == 0, "round %d: %zu units past the limit", round,
                  ms.file_served_units);
        CHECK(run_passes(model, rounded) == 0);
        ds_vram_model_remove(model);
        ds_vram_stats st;
        ds_vram_stats_get(m, &st);
        CHECK(st.host_bytes == 0);
    }
    ds_vram_manager_destroy(m);
}

int main(void)
{
    ds_error err;
    if (ds_cpu_backend_create(1, &cpu, &err) != DS_OK) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    fx_make(&fx, 10, DS_BF16, 7, 0);
    make_expectations();
    RUN(test_host_copies);
    RUN(test_host_limit);
    RUN(test_disk);
    RUN(test_mapping_is_host);
    RUN(test_host_freed);
    fx_free(&fx);
    ds_backend_destroy(cpu);
    return test_summary();
}
