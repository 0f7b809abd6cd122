#include "daemon/shm_region.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/dtype.h"
#include "core/fault_guard.h"
#include "core/state_dict.h"

int ds_shm_check_name(const char *what, const char *name, ds_error *err)
{
    size_t len = strlen(name);
    if (len < 2 || name[0] != '/')
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s.name \"%.256s\" is not a shared-memory name like \"/diffsynth-1-0\"",
                            what, name);
    if (len > NAME_MAX)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s.name has %zu bytes, at most %d",
                            what, len, NAME_MAX);
    for (size_t i = 1; i < len; i++)
        if (name[i] == '/' || (unsigned char)name[i] < 0x20 || name[i] == 0x7F)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s.name has a '/' or a control character at byte %zu", what, i);
    return DS_OK;
}

static int check_bounds(const char *what, uint64_t offset, uint64_t size, ds_error *err)
{
    if (size == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s.size is 0", what);
    if (offset > UINT64_MAX - size)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: offset %llu + size %llu overflows", what,
                            (unsigned long long)offset, (unsigned long long)size);
    return DS_OK;
}

/* Checks that the object `st` holds the region, maps it and guards the mapping. */
static int map_region(const char *what, const char *object, int fd, uint64_t offset,
                      uint64_t size, const struct stat *st, int writable, ds_shm_mapping *out,
                      ds_error *err)
{
    if (st->st_size < 0 || offset + size > (uint64_t)st->st_size)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: region [%llu, %llu) lies outside %s of %lld bytes", what,
                            (unsigned long long)offset, (unsigned long long)(offset + size),
                            object, (long long)st->st_size);
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t aligned = offset - offset % page;
    uint64_t length = offset - aligned + size;
    if (length > SIZE_MAX)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: region of %llu bytes is too large",
                            what, (unsigned long long)size);
    void *base = mmap(NULL, (size_t)length, writable ? PROT_READ | PROT_WRITE : PROT_READ,
                      MAP_SHARED, fd, (off_t)aligned);
    if (base == MAP_FAILED)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: cannot map %llu bytes of %s: %s",
                            what, (unsigned long long)length, object, strerror(errno));
    snprintf(out->label, sizeof out->label, "%s: %s", what, object);
    int rc = ds_fault_guard_add(base, (size_t)length, &out->faulted, &out->guard_slot, err);
    if (rc != DS_OK) {
        munmap(base, (size_t)length);
        out->guard_slot = -1;
        return ds_error_prefix(err, "%s: ", what);
    }
    out->base = base;
    out->length = (size_t)length;
    out->data = (uint8_t *)base + (offset - aligned);
    out->size = size;
    return DS_OK;
}

int ds_shm_map(const char *what, const char *name, uid_t uid, uint64_t offset, uint64_t size,
               int writable, ds_shm_mapping *out, ds_error *err)
{
    memset(out, 0, sizeof *out);
    out->guard_slot = -1;
    int rc = ds_shm_check_name(what, name, err);
    if (rc != DS_OK)
        return rc;
    if ((rc = check_bounds(what, offset, size, err)) != DS_OK)
        return rc;
    char object[NAME_MAX + 32];
    snprintf(object, sizeof object, "shared-memory object \"%s\"", name);

    /* O_NOFOLLOW: /dev/shm entries are the client's to create; a symlink there is not ours to
     * follow. */
    int fd = shm_open(name, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW, 0);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT)
            return ds_error_set(err, DS_ERR_NOT_FOUND,
                                "%s: shared-memory object \"%s\" does not exist", what, name);
        return ds_error_set(err, DS_ERR_PERMISSION_DENIED,
                            "%s: cannot open shared-memory object \"%s\" %s: %s", what, name,
                            writable ? "read-write" : "read-only", strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = ds_error_set(err, DS_ERR_INTERNAL, "%s: fstat of \"%s\": %s", what, name,
                          strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "%s: \"%s\" is not a shared-memory object", what, name);
        goto fail;
    }
    if (st.st_uid != uid) {
        rc = ds_error_set(err, DS_ERR_PERMISSION_DENIED,
                          "%s: shared-memory object \"%s\" is owned by uid %u, not by the "
                          "client's uid %u",
                          what, name, (unsigned)st.st_uid, (unsigned)uid);
        goto fail;
    }
    rc = map_region(what, object, fd, offset, size, &st, writable, out, err);
fail:
    close(fd);
    return rc;
}

int ds_shm_map_fd(const char *what, int fd, uint64_t offset, uint64_t size, int writable,
                  ds_shm_mapping *out, ds_error *err)
{
    memset(out, 0, sizeof *out);
    out->guard_slot = -1;
    int rc = check_bounds(what, offset, size, err);
    if (rc != DS_OK)
        return rc;
    struct stat st;
    if (fstat(fd, &st) != 0)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: fstat of the passed descriptor: %s", what,
                            strerror(errno));
    if (!S_ISREG(st.st_mode))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: the passed descriptor is not a memfd (not a regular file)", what);
    /* Without F_SEAL_SHRINK the client could still shrink it under us. */
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: the passed memfd is not sealed against shrinking: create it with "
                            "MFD_ALLOW_SEALING and add F_SEAL_SHRINK (fcntl F_ADD_SEALS)%s",
                            what, seals < 0 ? " (it does not support seals)" : "");
    if (writable) {
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || (flags & O_ACCMODE) != O_RDWR)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: the passed memfd is not open for writing", what);
        if (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: the passed memfd is sealed against writes; outputs are "
                                "written into it",
                                what);
    }
    return map_region(what, "the passed memfd", fd, offset, size, &st, writable, out, err);
}

int ds_shm_check_region(const char *what, const Diffsynth__V1__SharedRegion *region,
                        ds_error *err)
{
    if (!region->name[0])
        return DS_OK;
    return ds_shm_check_name(what, region->name, err);
}

int ds_shm_map_region(const char *what, const Diffsynth__V1__SharedRegion *region, uid_t uid,
                      const int *fds, size_t fd_count, int writable, ds_shm_mapping *out,
                      ds_error *err)
{
    if (region->name[0])
        return ds_shm_map(what, region->name, uid, region->offset, region->size, writable, out,
                          err);
    memset(out, 0, sizeof *out);
    out->guard_slot = -1;
    if (region->fd_index >= fd_count)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: no shared-memory name and fd_index %u, but the frame carries %zu "
                            "file descriptors (Envelope.fd_count)",
                            what, (unsigned)region->fd_index, fd_count);
    return ds_shm_map_fd(what, fds[region->fd_index], region->offset, region->size, writable, out,
                         err);
}

int ds_shm_check_intact(const ds_shm_mapping *m, ds_error *err)
{
    if (!m->base || !atomic_load(&m->faulted))
        return DS_OK;
    return ds_error_set(err, DS_ERR_DATA_LOSS,
                        "%s shrank while the request used it (a read or write past its new end "
                        "faulted); the request's data is lost",
                        m->label);
}

void ds_shm_unmap(ds_shm_mapping *m)
{
    if (m->base) {
        ds_fault_guard_remove(m->guard_slot);
        munmap(m->base, m->length);
    }
    memset(m, 0, sizeof *m);
    m->guard_slot = -1;
}

int ds_shm_check_output_region(const char *what, const Diffsynth__V1__SharedRegion *region,
                               ds_error *err)
{
    int rc = ds_shm_check_region(what, region, err);
    if (rc == DS_OK && region->size == 0)
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s.size is 0", what);
    return rc;
}

int ds_shm_map_output_region(const char *what, const Diffsynth__V1__SharedRegion *region,
                             uid_t uid, const int *fds, size_t fd_count, ds_shm_mapping *out,
                             uint64_t *offset, uint32_t *fd_index, char **name, ds_error *err)
{
    int rc = ds_shm_map_region(what, region, uid, fds, fd_count, 1, out, err);
    if (rc != DS_OK)
        return rc;
    *offset = region->offset;
    *fd_index = region->fd_index;
    if (!(*name = strdup(region->name)))
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    return DS_OK;
}

int ds_shm_check_tensor(const char *what, const Diffsynth__V1__Tensor *t, size_t min_dims,
                        ds_error *err)
{
    int dtype = (int)t->dtype;
    size_t elem = (dtype > 0 && dtype < (int)DS_DTYPE_COUNT) ? ds_dtype_size((ds_dtype)dtype) : 0;
    if (elem == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: dtype %d is not a known DType",
                            what, dtype);
    if (t->n_shape < min_dims || t->n_shape > DS_MAX_DIMS)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s has %zu dims, expected %zu to %d",
                            what, t->n_shape, min_dims, DS_MAX_DIMS);
    uint64_t bytes = elem;
    for (size_t d = 0; d < t->n_shape; d++) {
        int64_t dim = t->shape[d];
        if (dim <= 0)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: dim %zu is %lld; every dim must be positive", what, d,
                                (long long)dim);
        if (bytes > SIZE_MAX / (uint64_t)dim)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: the shape's byte count overflows", what);
        bytes *= (uint64_t)dim;
    }
    if (!t->shm) {
        if (t->data.len != bytes)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: %zu bytes of data, its dtype and shape need %llu", what,
                                t->data.len, (unsigned long long)bytes);
        return DS_OK;
    }
    char region[DS_ERROR_MESSAGE_MAX];
    snprintf(region, sizeof region, "%s shm", what);
    int rc = ds_shm_check_region(region, t->shm, err);
    if (rc != DS_OK)
        return rc;
    if (t->data.len != 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s has both inline data and a shared-memory region", what);
    if (t->shm->size != bytes)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: shared-memory region has %llu bytes, its dtype and shape need "
                            "%llu",
                            what, (unsigned long long)t->shm->size, (unsigned long long)bytes);
    return DS_OK;
}
