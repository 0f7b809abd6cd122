#include "bench/common/bench_backend.h"

#include <stdio.h>
#include <string.h>

#include "bench/common/bench_util.h"
#include "kernels/cpu/gemm_info.h"

int ds_bench_backend_create(const char *name, int threads, ds_backend **out, ds_error *err)
{
    if (strcmp(name, "cuda") == 0)
        return ds_cuda_backend_create(0, out, err);
    if (strcmp(name, "cpu") == 0)
        return ds_cpu_backend_create(threads, out, err);
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "--backend %s: expected cpu or cuda", name);
}

void ds_bench_print_gemm(const char *backend)
{
    if (strcmp(backend, "cpu") != 0)
        return;
    char gemm[256];
    printf(", \"gemm\": ");
    ds_bench_print_json_string(ds_cpu_gemm_info(gemm, sizeof gemm));
}

void ds_bench_print_device_used(ds_backend *b)
{
    size_t free_bytes = 0, total_bytes = 0;
    ds_error ignored;
    if (b->mem_info && b->mem_info(b, &free_bytes, &total_bytes, &ignored) == DS_OK &&
        total_bytes >= free_bytes)
        printf(", \"device_used_bytes\": %zu", total_bytes - free_bytes);
}
