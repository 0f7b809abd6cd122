/* bench/common/bench_backend: the backend a bench names with --backend, and the line that says
 * which GEMM libraries ran on it. Kernels only (no models), so that kernels_bench links where
 * only the kernels are built (tests/device/build_direct.sh). */
#ifndef DS_BENCH_BACKEND_H
#define DS_BENCH_BACKEND_H

#include "core/error.h"
#include "kernels/backend.h"

/* Creates the backend a bench names with --backend: "cpu" with `threads` workers (0: all CPUs)
 * or "cuda" (device 0). DS_ERR_INVALID_ARGUMENT for another name; DS_ERR_UNAVAILABLE where the
 * build or the machine has no such device. */
int ds_bench_backend_create(const char *name, int threads, ds_backend **out, ds_error *err);

/* `, "gemm": "..."` (ds_cpu_gemm_info) where backend is "cpu", nothing otherwise: a row can be
 * read later only knowing whether oneDNN or OpenBLAS ran. Call after creating the backend. */
void ds_bench_print_gemm(const char *backend);

/* `, "device_used_bytes": N` (the device's total less its free bytes now, this process's context,
 * kept buffers and the ops' scratch included, other processes too) where the backend has
 * memory of its own, nothing otherwise: the cross-check of a bench's alloc-slot peak, which
 * the ops' internal scratch escapes. */
void ds_bench_print_device_used(ds_backend *b);

#endif
