/* Deterministic pseudo-random weights, the C twin of tests/golden/seeded_weights.py: golden
 * files of full-width models store only inputs and outputs, and the tests regenerate the
 * weights bit for bit.
 *
 * Element i of the tensor named `name` (flat, row-major) is
 *     u   = (splitmix64(fnv1a64(name) ^ (seed * 0x9E3779B97F4A7C15) + i) >> 40) / 2^24
 *     val = (2u - 1) * bound + center          (each step rounded to float32)
 * u has 24 bits, so it is exact in float32 in both languages; the float32 steps after it are
 * the same IEEE operations numpy performs, so the values match exactly. */
#ifndef DS_TESTS_TOOLS_SEEDED_WEIGHTS_H
#define DS_TESTS_TOOLS_SEEDED_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

uint64_t ds_seeded_fnv1a64(const char *text);
uint64_t ds_seeded_splitmix64(uint64_t x);

/* Fills out[0..count) with the values of tensor `name`. `bound` is rounded to float32 first,
 * as numpy's np.float32(bound) does. */
void ds_seeded_fill(const char *name, uint64_t seed, double bound, float center, float *out,
                    size_t count);
/* Elements first..first+count of tensor `name` (a slice of ds_seeded_fill's values). */
void ds_seeded_fill_range(const char *name, uint64_t seed, double bound, float center,
                          uint64_t first, float *out, size_t count);

#endif
