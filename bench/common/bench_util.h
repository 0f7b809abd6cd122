/* bench/common/bench_util: the small helpers every benchmark program shares (timer, order
 * statistics, JSON output, the deterministic generator), so that the benches time and report
 * alike and a fix lands in all of them. libc only, for benches that link nothing else. */
#ifndef DS_BENCH_UTIL_H
#define DS_BENCH_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"

/* CLOCK_MONOTONIC in seconds. */
double ds_bench_now_s(void);

/* qsort comparator for doubles, ascending. */
int ds_bench_compare_double(const void *a, const void *b);

/* Sorts samples[0..n) in place and returns samples[n / 2] (NaN for n = 0): the upper median
 * for even counts, which the Python anchors take the same way so both sides report one
 * statistic. */
double ds_bench_median(double *samples, size_t n);

/* Writes s to stdout as a JSON string literal (quotes, escapes). */
void ds_bench_print_json_string(const char *s);

/* `, "key": v` with printf format fmt, or `, "key": null` where v is NaN (not measured). */
void ds_bench_print_number(const char *key, double v, const char *fmt);

/* Closes a JSON line opened by a bench's header with `, "message": MESSAGE}`, flushes stdout
 * and returns code: the tail of every failure report. */
int ds_bench_end_with_message(const char *message, int code);

/* Parses a model bench's --dtype: f32 / float32 or bf16 / bfloat16 (the upstream anchors' names
 * too). Returns 1 and sets *out, or 0 for anything else. */
int ds_bench_parse_dtype(const char *s, ds_dtype *out);

/* The options every model bench takes, in one place: --backend, --threads, --dtype, --warmup and
 * --repeats with value v. Returns 1 when k is one of them (the value stored), 0 when it is not,
 * -1 for a --dtype it does not know. */
int ds_bench_common_option(const char *k, const char *v, const char **backend, int *threads,
                           ds_dtype *dtype, int *warmup, int *repeats);

/* SplitMix64: the benches' one generator, seeded per tensor so values do not depend on order. */
uint64_t ds_bench_splitmix(uint64_t *state);

/* A uniform double in [0, 1) from the generator (53 bits). */
double ds_bench_uniform(uint64_t *state);

/* FNV-1a of a NUL-terminated string: a tensor name's seed or tile phase. */
uint64_t ds_bench_fnv1a(const char *s);

#endif
