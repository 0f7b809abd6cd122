/* What the model benches share: the clock, the median, JSON strings, and a class's declared
 * tree built in memory with cheap deterministic weights (a fixed table of uniform values in
 * [-0.02, 0.02] tiled at a per-tensor offset, 1-D norm weights 1 + that), which times like
 * real weights (no zeros, no denormals) and fills tens of GB at memcpy speed. */
#ifndef DS_BENCH_COMMON_BENCH_MODEL_H
#define DS_BENCH_COMMON_BENCH_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/backend.h"
#include "models/model_loader.h"

/* CLOCK_MONOTONIC in seconds. */
double bench_now_s(void);
/* Sorts samples[0..n) ascending and returns samples[n / 2]. */
double bench_median(double *samples, int n);
/* s as a JSON string literal on stdout. */
void bench_print_json_string(const char *s);

/* The tree of `model_class` for `kwargs_json`, every tensor in `dtype` in its own malloc'd
 * buffer. 0 and a message in msg on failure. Free with bench_model_free. */
int bench_model_build(const char *model_class, const char *kwargs_json, ds_dtype dtype,
                      ds_loaded_model *m, char *msg, size_t size);
void bench_model_free(ds_loaded_model *m);

/* A host tensor of unit-variance uniform values from `seed`. */
int bench_input_tensor(ds_backend *cpu, ds_dtype dtype, int ndim, const int64_t *shape,
                       uint64_t seed, ds_tensor *out, ds_error *err);

#endif
