/* Harness for the kernels and gpu suites: every op case builds random inputs, computes a float64
 * reference in the test itself, runs the op on the backend under test and compares.
 *
 * Each test program takes `--backend cpu` (the kernels suite) or `--backend cuda` (the gpu
 * suite: exits 77, "skipped", when no CUDA device is usable). Inputs are rounded to their storage
 * dtype first, and the reference uses those rounded values, so only the op's own error counts.
 * Outputs are poisoned (NaN bit patterns) before each run, so an element the op never writes
 * fails the comparison. */
#ifndef DS_TESTS_KERNEL_TEST_H
#define DS_TESTS_KERNEL_TEST_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"

typedef struct kt_env {
    ds_backend *backend;   /* under test */
    const char *backend_name;
    uint64_t seed;         /* advanced by every random draw */
} kt_env;

extern kt_env kt;

/* Parses --backend, creates it (exit 77 if unavailable) and seeds the generator. Returns 0 or
 * exits. */
void kt_init(int argc, char **argv);
void kt_finish(void);

/* n normal(0, stddev) draws / uniform in [lo, hi) draws (malloc'd; caller frees). */
double *kt_randn(size_t n, double stddev);
double *kt_uniform(size_t n, double lo, double hi);

/* A tensor on the backend under test holding `values` stored as `dtype`; `values` is
 * overwritten with what was actually stored (rounded to the dtype). values may be NULL for an
 * output tensor, which is then poisoned. Fails the current test (REQUIRE-style) on error. */
int kt_tensor(ds_dtype dtype, int ndim, const int64_t *shape, double *values, ds_tensor *out);
/* Fills with a NaN pattern of the tensor's dtype (for outputs). */
void kt_poison(ds_tensor *t);
/* Downloads and widens to f64 (malloc'd; caller frees). */
double *kt_read(const ds_tensor *t);

/* Default error budget for an output stored as dtype, computed in fp32:
 * f32 1e-5, f16 2e-3, bf16 1e-2 (relative L2), fp8 e4m3 7e-2, e5m2 1.3e-1. */
double kt_budget(ds_dtype dtype);

/* Compares got against ref: returns 0 (after printing what, the first bad index, the relative
 * L2 error and the max abs error) on any NaN or Inf where ref is finite, or on relative L2 error
 * ||got - ref|| / max(||ref||, tiny) above budget; 1 when they match. Use as
 * CHECK(kt_compare(...)) in a test (test.h). */
int kt_compare(const char *what, const double *got, const double *ref, size_t n, double budget);

#endif
