/* Which GEMM libraries the CPU backend runs on this machine, for benchmarks and logs: a timing
 * means little later without knowing whether oneDNN's bf16 kernels or OpenBLAS's f32 ones ran. */
#ifndef DS_KERNELS_CPU_GEMM_INFO_H
#define DS_KERNELS_CPU_GEMM_INFO_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"

/* Writes one line such as "onednn 2.6.3 isa avx512_core_bf16 (bf16 native); openblas 0.3.21
 * core SkylakeX" into buf (truncated to size) and returns buf. Call after creating a CPU
 * backend: OpenBLAS's core is chosen then. */
char *ds_cpu_gemm_info(char *buf, size_t size);

/* Which path the CPU backend's linear takes for M rows of x in dtype x and a weight stored as w,
 * e.g. "openblas f32" or "onednn bf16": the backend's fixed rule of the shape, the dtypes, the
 * processor and the build, so a benchmark row can say what it timed. */
const char *ds_cpu_linear_path(int64_t m, ds_dtype x, ds_dtype w);

#endif
