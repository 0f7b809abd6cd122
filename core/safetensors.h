/* Safetensors files: mapped read-only, header parsed and validated strictly.
 *
 * Layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data region.
 * The JSON maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
 * relative to the data region) plus an optional "__metadata__" object of string -> string.
 *
 * Validation (each failure names the file and, where there is one, the tensor):
 *   - file at least 8 bytes; N > 0, N <= DS_SAFETENSORS_MAX_HEADER and 8 + N <= file size;
 *   - the header is one JSON object, well formed, nothing but whitespace after it;
 *   - every tensor has exactly the three fields, a known dtype, non-negative integer dims
 *     (at most DS_MAX_DIMS), and numel * dtype size == end - begin without overflow;
 *   - begin <= end, and the tensors' byte ranges, sorted, tile the data region exactly from 0 to
 *     its end: no overlap, no gap, no trailing bytes (the safetensors crate's own rule, so we accept
 *     exactly the files upstream's safe_open accepts);
 *   - duplicate tensor names are rejected; "__metadata__" values must be strings (null = none).
 * Tensor data is never read here: views point into the mapping.
 */
#ifndef DS_CORE_SAFETENSORS_H
#define DS_CORE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/state_dict.h"

#define DS_SAFETENSORS_MAX_HEADER (100u * 1024u * 1024u) /* same cap as the safetensors crate */

typedef struct ds_safetensors {
    char *path;                  /* as given to open; owned */
    const uint8_t *map;          /* whole file, PROT_READ */
    uint64_t file_size;
    uint64_t header_size;        /* N */
    const uint8_t *data;         /* map + 8 + N */
    uint64_t data_size;
    ds_state_dict tensors;       /* in header order; views with file_index set by the caller's index */
    char **metadata_keys;        /* __metadata__, owned; metadata_count pairs */
    char **metadata_values;
    size_t metadata_count;
} ds_safetensors;

/* Maps and validates `path`. `file_index` is stored in every view. On failure *out is NULL and
 * err names the file (and tensor). Codes: NOT_FOUND / PERMISSION_DENIED for open errors,
 * INVALID_ARGUMENT for malformed content. */
int ds_safetensors_open(const char *path, int file_index, ds_safetensors **out, ds_error *err);
/* The same for a file already open for reading: `fd` stays the caller's (the mapping does not
 * need it); `path` is the name recorded and used in messages. Nothing is resolved by name. */
int ds_safetensors_open_fd(int fd, const char *path, int file_index, ds_safetensors **out,
                           ds_error *err);

/* Validates an in-memory image of a safetensors file (used by open and by the fuzz target).
 * `bytes` must outlive the result; nothing is mapped. `name` is used in messages. */
int ds_safetensors_parse(const char *name, const uint8_t *bytes, uint64_t size, int file_index,
                         ds_safetensors **out, ds_error *err);

/* Reads just the header (pread, no mapping of the data region) and returns its bytes and the
 * file's size, for fingerprinting: the two together decide everything open() checks.
 * *header is malloc'd, caller frees. Performs the length checks only. file_size may be NULL. */
int ds_safetensors_read_header(const char *path, uint8_t **header, uint64_t *header_size,
                               uint64_t *file_size, ds_error *err);
/* The same through an open descriptor (the caller's; read with pread, offset untouched). */
int ds_safetensors_read_header_fd(int fd, const char *path, uint8_t **header,
                                  uint64_t *header_size, uint64_t *file_size, ds_error *err);

void ds_safetensors_close(ds_safetensors *st);

#endif
