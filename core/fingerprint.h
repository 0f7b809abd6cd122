/* Fingerprints of model file sets, the cache key for identification (DESIGN §4.1).
 *
 * For safetensors, what identification computes (the validated tensor list, and so the model
 * hash) is decided by each file's header bytes and its size alone: open() checks the header and
 * that the tensor ranges tile the rest of the file exactly. So XXH3-128 over, per file in order,
 * its position, size, header length and header bytes is a key that changes whenever the answer
 * could. Computing it reads only the headers (pread), never maps the data.
 *
 * Torch checkpoints have no such header (the pickle sits anywhere in the zip), so sets that
 * contain one are not fingerprinted: the caller takes the full path.
 */
#ifndef DS_CORE_FINGERPRINT_H
#define DS_CORE_FINGERPRINT_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct ds_fingerprint {
    uint64_t low;
    uint64_t high;
} ds_fingerprint;

/* DS_OK with *out set; UNIMPLEMENTED when a path is not a safetensors file (not cacheable);
 * otherwise the error reading a header (the same one open() would report). */
int ds_fingerprint_files(const char *const *paths, size_t count, ds_fingerprint *out,
                         ds_error *err);
/* The same through open descriptors (the caller's, not closed); paths[i] names fds[i]. */
int ds_fingerprint_files_fds(const int *fds, const char *const *paths, size_t count,
                             ds_fingerprint *out, ds_error *err);

static inline int ds_fingerprint_equal(const ds_fingerprint *a, const ds_fingerprint *b)
{
    return a->low == b->low && a->high == b->high;
}

#endif
