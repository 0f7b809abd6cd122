#include "core/zip.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define EOCD_SIG 0x06054b50u
#define EOCD_SIZE 22u
#define EOCD_MAX_COMMENT 65535u
#define ZIP64_LOCATOR_SIG 0x07064b50u
#define ZIP64_LOCATOR_SIZE 20u
#define ZIP64_EOCD_SIG 0x06064b50u
#define ZIP64_EOCD_SIZE 56u
#define CENTRAL_SIG 0x02014b50u
#define CENTRAL_SIZE 46u
#define LOCAL_SIG 0x04034b50u
#define LOCAL_SIZE 30u
#define ZIP64_EXTRA_ID 0x0001u
#define FLAG_ENCRYPTED 0x0001u

/* Entry names in messages are cut here so that a hostile name cannot fill the message. */
#define NAME_SHOWN 200

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

/* True when [offset, offset + len) lies inside [0, limit). */
static int range_ok(uint64_t offset, uint64_t len, uint64_t limit)
{
    return offset <= limit && len <= limit - offset;
}

typedef struct directory {
    uint64_t count;
    uint64_t offset;
    uint64_t size;
    uint64_t end;   /* where the directory must end: the first end-of-directory record */
} directory;

static int find_eocd(const char *name, const uint8_t *image, uint64_t size, uint64_t *eocd,
                     ds_error *err)
{
    if (size < EOCD_SIZE)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: not a zip archive: %" PRIu64 " bytes is too short for an end of "
                            "central directory record",
                            name, size);
    uint64_t last = size - EOCD_SIZE;
    uint64_t first = last > EOCD_MAX_COMMENT ? last - EOCD_MAX_COMMENT : 0;
    for (uint64_t pos = last + 1; pos-- > first;) {
        if (rd32(image + pos) == EOCD_SIG && rd16(image + pos + 20) <= size - pos - EOCD_SIZE) {
            *eocd = pos;
            return DS_OK;
        }
    }
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                        "%s: not a zip archive: no end of central directory record in the last "
                        "%" PRIu64 " bytes",
                        name, size - first);
}

static int read_zip64_eocd(const char *name, const uint8_t *image, uint64_t eocd, directory *dir,
                           ds_error *err)
{
    const uint8_t *loc = image + eocd - ZIP64_LOCATOR_SIZE;
    uint64_t record = rd64(loc + 8);
    if (rd32(loc + 4) != 0 || rd32(loc + 16) > 1)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: multi-disk zip archives are not supported", name);
    uint64_t locator = eocd - ZIP64_LOCATOR_SIZE;
    if (!range_ok(record, ZIP64_EOCD_SIZE, locator))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: zip64 end of central directory offset %" PRIu64
                            " is out of range (locator at %" PRIu64 ")",
                            name, record, locator);
    const uint8_t *r = image + record;
    if (rd32(r) != ZIP64_EOCD_SIG)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: no zip64 end of central directory record at offset %" PRIu64,
                            name, record);
    if (rd32(r + 16) != 0 || rd32(r + 20) != 0 || rd64(r + 24) != rd64(r + 32))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: multi-disk zip archives are not supported", name);
    dir->count = rd64(r + 32);
    dir->size = rd64(r + 40);
    dir->offset = rd64(r + 48);
    dir->end = record;
    return DS_OK;
}

static int read_directory_location(const char *name, const uint8_t *image, uint64_t size,
                                   directory *dir, ds_error *err)
{
    uint64_t eocd = 0;
    int rc = find_eocd(name, image, size, &eocd, err);
    if (rc != DS_OK)
        return rc;
    const uint8_t *e = image + eocd;
    if (eocd >= ZIP64_LOCATOR_SIZE && rd32(e - ZIP64_LOCATOR_SIZE) == ZIP64_LOCATOR_SIG) {
        rc = read_zip64_eocd(name, image, eocd, dir, err);
        if (rc != DS_OK)
            return rc;
    } else {
        if (rd16(e + 4) != 0 || rd16(e + 6) != 0 || rd16(e + 8) != rd16(e + 10))
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: multi-disk zip archives are not supported", name);
        dir->count = rd16(e + 10);
        dir->size = rd32(e + 12);
        dir->offset = rd32(e + 16);
        dir->end = eocd;
    }
    if (!range_ok(dir->offset, dir->size, dir->end))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: zip central directory (offset %" PRIu64 ", %" PRIu64
                            " bytes) does not end before its end record at offset %" PRIu64,
                            name, dir->offset, dir->size, dir->end);
    if (dir->count > dir->size / CENTRAL_SIZE)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: zip central directory claims %" PRIu64
                            " entries but has only %" PRIu64 " bytes",
                            name, dir->count, dir->size);
    return DS_OK;
}

/* Replaces the 0xFFFFFFFF / 0xFFFF placeholders of a central header with the values of its
 * ZIP64 extra field, which lists them in this fixed order, only those that are placeholders. */
static int apply_zip64_extra(const char *name, size_t index, const uint8_t *extra, size_t len,
                             uint64_t *uncompressed, uint64_t *compressed, uint64_t *local,
                             uint32_t *disk, ds_error *err)
{
    size_t pos = 0;
    while (len - pos >= 4) {
        uint16_t id = rd16(extra + pos), field_len = rd16(extra + pos + 2);
        pos += 4;
        if (field_len > len - pos)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: zip entry %zu: extra field runs past its header", name,
                                index);
        if (id == ZIP64_EXTRA_ID) {
            const uint8_t *f = extra + pos;
            size_t left = field_len;
            uint64_t *wide[3] = {uncompressed, compressed, local};
            for (int i = 0; i < 3; i++) {
                if (*wide[i] != UINT32_MAX)
                    continue;
                if (left < 8)
                    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                        "%s: zip entry %zu: zip64 extra field too short", name,
                                        index);
                *wide[i] = rd64(f);
                f += 8;
                left -= 8;
            }
            if (*disk == UINT16_MAX) {
                if (left < 4)
                    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                        "%s: zip entry %zu: zip64 extra field too short", name,
                                        index);
                *disk = rd32(f);
            }
            return DS_OK;
        }
        pos += field_len;
    }
    return DS_OK;
}

static int read_entry(const char *name, const uint8_t *image, uint64_t size, const directory *dir,
                      uint64_t *pos, size_t index, ds__zip_entry *entry, ds_error *err)
{
    uint64_t dir_end = dir->offset + dir->size;
    if (!range_ok(*pos, CENTRAL_SIZE, dir_end) || rd32(image + *pos) != CENTRAL_SIG)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: zip central directory entry %zu at offset %" PRIu64
                            " is missing or truncated",
                            name, index, *pos);
    const uint8_t *c = image + *pos;
    uint16_t flags = rd16(c + 8);
    uint16_t name_len = rd16(c + 28), extra_len = rd16(c + 30), comment_len = rd16(c + 32);
    uint64_t total = (uint64_t)CENTRAL_SIZE + name_len + extra_len + comment_len;
    if (!range_ok(*pos, total, dir_end))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: zip central directory entry %zu at offset %" PRIu64
                            " runs past the directory",
                            name, index, *pos);
    entry->name = (const char *)c + CENTRAL_SIZE;
    entry->name_len = name_len;
    entry->method = rd16(c + 10);
    entry->compressed_size = rd32(c + 20);
    entry->uncompressed_size = rd32(c + 24);
    uint64_t local = rd32(c + 42);
    uint32_t disk = rd16(c + 34);
    int shown = name_len < NAME_SHOWN ? name_len : NAME_SHOWN;
    int rc = apply_zip64_extra(name, index, c + CENTRAL_SIZE + name_len, extra_len,
                               &entry->uncompressed_size, &entry->compressed_size, &local, &disk,
                               err);
    if (rc != DS_OK)
        return rc;
    *pos += total;
    if (disk != 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: zip entry \"%.*s\" is on disk %u: multi-disk zip archives are "
                            "not supported",
                            name, shown, entry->name, disk);
    if (flags & FLAG_ENCRYPTED)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: zip entry \"%.*s\" is encrypted", name, shown, entry->name);
    if (entry->method == 0 && entry->compressed_size != entry->uncompressed_size)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: zip entry \"%.*s\" is stored but its sizes differ (%" PRIu64
                            " compressed, %" PRIu64 " uncompressed)",
                            name, shown, entry->name, entry->compressed_size,
                            entry->uncompressed_size);

    if (!range_ok(local, LOCAL_SIZE, size) || rd32(image + local) != LOCAL_SIG)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: zip entry \"%.*s\": no local header at offset %" PRIu64
                            " (file size %" PRIu64 ")",
                            name, shown, entry->name, local, size);
    const uint8_t *l = image + local;
    uint16_t local_name_len = rd16(l + 26), local_extra_len = rd16(l + 28);
    uint64_t data = local + LOCAL_SIZE + local_name_len + local_extra_len;
    if (data > size)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: zip entry \"%.*s\": local header at offset %" PRIu64
                            " (name %u bytes, extra %u bytes) runs past the end of the file "
                            "(size %" PRIu64 ")",
                            name, shown, entry->name, local, local_name_len, local_extra_len,
                            size);
    if (local_name_len != name_len || memcmp(l + LOCAL_SIZE, entry->name, name_len) != 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: zip entry \"%.*s\": the local header at offset %" PRIu64
                            " names a different file",
                            name, shown, entry->name, local);
    if (!range_ok(data, entry->compressed_size, size))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: zip entry \"%.*s\": data (offset %" PRIu64 ", %" PRIu64
                            " bytes) runs past the end of the file (size %" PRIu64 ")",
                            name, shown, entry->name, data, entry->compressed_size, size);
    entry->data_offset = data;
    return DS_OK;
}

static int compare_names(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c != 0)
        return c;
    return alen < blen ? -1 : alen > blen;
}

static int compare_positions(const void *a, const void *b, void *arg)
{
    const ds__zip_entry *entries = arg;
    const ds__zip_entry *x = &entries[*(const size_t *)a], *y = &entries[*(const size_t *)b];
    return compare_names(x->name, x->name_len, y->name, y->name_len);
}

int ds__zip_open(ds__zip *zip, const char *name, const uint8_t *image, uint64_t size,
                 ds_error *err)
{
    memset(zip, 0, sizeof *zip);
    directory dir = {0};
    int rc = read_directory_location(name, image, size, &dir, err);
    if (rc != DS_OK)
        return rc;
    size_t count = (size_t)dir.count;
    zip->image = image;
    zip->size = size;
    zip->entries = calloc(count ? count : 1, sizeof *zip->entries);
    zip->sorted = calloc(count ? count : 1, sizeof *zip->sorted);
    if (!zip->entries || !zip->sorted) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                          "%s: out of memory for %zu zip entries", name, count);
        goto fail;
    }
    uint64_t pos = dir.offset;
    for (size_t i = 0; i < count; i++) {
        rc = read_entry(name, image, size, &dir, &pos, i, &zip->entries[i], err);
        if (rc != DS_OK)
            goto fail;
        zip->sorted[i] = i;
    }
    zip->count = count;
    qsort_r(zip->sorted, count, sizeof *zip->sorted, compare_positions, zip->entries);
    for (size_t i = 1; i < count; i++) {
        const ds__zip_entry *a = &zip->entries[zip->sorted[i - 1]];
        const ds__zip_entry *b = &zip->entries[zip->sorted[i]];
        if (compare_names(a->name, a->name_len, b->name, b->name_len) == 0) {
            int shown = a->name_len < NAME_SHOWN ? (int)a->name_len : NAME_SHOWN;
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "%s: zip entry \"%.*s\" appears more than once", name, shown,
                              a->name);
            goto fail;
        }
    }
    return DS_OK;

fail:
    ds__zip_close(zip);
    return rc;
}

void ds__zip_close(ds__zip *zip)
{
    free(zip->entries);
    free(zip->sorted);
    memset(zip, 0, sizeof *zip);
}

const ds__zip_entry *ds__zip_find(const ds__zip *zip, const char *name, size_t len)
{
    size_t lo = 0, hi = zip->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const ds__zip_entry *e = &zip->entries[zip->sorted[mid]];
        int c = compare_names(e->name, e->name_len, name, len);
        if (c == 0)
            return e;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int ds__zip_stored_data(const ds__zip *zip, const char *name, const ds__zip_entry *entry,
                        const uint8_t **data, ds_error *err)
{
    if (entry->method != 0) {
        int shown = entry->name_len < NAME_SHOWN ? (int)entry->name_len : NAME_SHOWN;
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: zip entry \"%.*s\" is compressed (method %u); only stored "
                            "entries can be read (torch.save never compresses)",
                            name, shown, entry->name, entry->method);
    }
    *data = zip->image + entry->data_offset;
    return DS_OK;
}
