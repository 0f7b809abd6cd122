/* Read-only zip archives over a memory image, as written by torch.save (PyTorchStreamWriter).
 *
 * Only what a checkpoint needs: the central directory (ZIP64 records and extra fields
 * included), each entry's name, method and sizes, and where its data starts according to its
 * LOCAL header (whose name and extra lengths may differ from the central copy: torch pads the
 * local extra field so that storages start 64-byte aligned). Every offset and length is checked
 * against the image size before use. Multi-disk and encrypted archives are rejected.
 *
 * Entry data is returned as a pointer into the image, so only stored (method 0) entries are
 * readable; compressed entries are listed but reading one is an error naming it. torch.save
 * never compresses, and zlib is not a dependency of core.
 */
#ifndef DS_CORE_ZIP_H
#define DS_CORE_ZIP_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct ds__zip_entry {
    const char *name;          /* into the image, NOT NUL-terminated; name_len bytes */
    size_t name_len;
    uint16_t method;           /* 0 stored, 8 deflate, ... */
    uint64_t compressed_size;
    uint64_t uncompressed_size;
    uint64_t data_offset;      /* first data byte, from the local header; data fits in the image */
} ds__zip_entry;

typedef struct ds__zip {
    const uint8_t *image;
    uint64_t size;
    ds__zip_entry *entries;    /* central directory order; owned */
    size_t count;
    size_t *sorted;            /* entry positions sorted by name, for lookup; owned */
} ds__zip;

/* Parses the directory of `image`. `name` is used in messages. Duplicate entry names are
 * rejected (which copy a reader sees would be arbitrary). On failure *zip holds nothing. */
int ds__zip_open(ds__zip *zip, const char *name, const uint8_t *image, uint64_t size,
                 ds_error *err);
void ds__zip_close(ds__zip *zip);

/* The entry named exactly `name` (`len` bytes), or NULL. */
const ds__zip_entry *ds__zip_find(const ds__zip *zip, const char *name, size_t len);

/* Points *data at the entry's bytes (uncompressed_size of them). Fails with INVALID_ARGUMENT,
 * naming the file and entry, when the entry is compressed. */
int ds__zip_stored_data(const ds__zip *zip, const char *name, const ds__zip_entry *entry,
                        const uint8_t **data, ds_error *err);

#endif
