/* Writes safetensors files for tests and for ds-make-model: the header exactly as the
 * safetensors library lays it out (8-byte little-endian length, compact JSON, padded with
 * spaces to a multiple of 8), then the data region. */
#ifndef DS_TESTS_TOOLS_SAFETENSORS_WRITER_H
#define DS_TESTS_TOOLS_SAFETENSORS_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/state_dict.h"

typedef enum ds_st_fill {
    /* Header only; the file is extended to full size with ftruncate, leaving a hole that
     * reads as zeros and takes no disk space. */
    DS_ST_FILL_SPARSE = 1,
    /* Seeded pseudo-random f32 samples ~ N(0, 0.02), rounded to nearest-even in the
     * tensor's dtype (as torch's f32 .to(dtype) does). A tensor's values depend only on the
     * seed and its name, so sharding does not change them. Floating-point dtypes only. */
    DS_ST_FILL_RANDOM = 2,
} ds_st_fill;

/* Writes entries [begin, end) of `tensors` (name, dtype and shape from each view; nested
 * dicts are refused) in that order to `path`. */
int ds_st_write(const char *path, const ds_state_dict *tensors, size_t begin, size_t end,
                ds_st_fill fill, uint64_t seed, ds_error *err);

/* Writes all of `tensors` as one file (shards == 1: `out`, with ".safetensors" appended unless
 * it already ends so) or as `shards` files split in order by tensor count, named like
 * upstream shards: "<out>-00001-of-00004.safetensors" (a trailing ".safetensors" on `out` is
 * dropped first). *paths gets a malloc'd array of *count malloc'd paths; free with
 * ds_st_paths_free. */
int ds_st_write_model(const char *out, const ds_state_dict *tensors, int shards, ds_st_fill fill,
                      uint64_t seed, char ***paths, size_t *count, ds_error *err);
void ds_st_paths_free(char **paths, size_t count);

/* Bit pattern of x rounded to nearest-even in a binary float format with the given field
 * widths (bf16: 8, 7; f16: 5, 10; f8_e4m3fn: 4, 3, finite_only; f8_e5m2: 5, 2), saturating
 * at the largest finite value. */
uint32_t ds_st_encode_small_float(double x, int exponent_bits, int mantissa_bits,
                                  int finite_only);

#endif
