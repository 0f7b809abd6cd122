/* libdiffsynth-client: the shared memory (a sealed memfd) of one RunStep or RunPipeline call,
 * and the copy of a reply tensor out of the frame or that memory. nanopb's 16-bit sizes cannot
 * carry large tensors inline, so both calls move them through memory the client creates. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client/client_internal.h"

size_t ds__client_inline_limit(size_t requested)
{
    return requested == 0 || requested > DS_CLIENT_MAX_INLINE ? DS_CLIENT_MAX_INLINE : requested;
}

uint64_t ds__client_align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

int ds__client_shm_create(ds_client *c, ds__client_shm *o, uint64_t size)
{
    o->name[0] = '\0';
    o->fd = memfd_create("diffsynth-tensors", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (o->fd < 0)
        return ds__client_fail(c, DS_CLIENT_EIO, "cannot create a memfd for the tensors: %s",
                               strerror(errno));
    if (size > (uint64_t)SIZE_MAX || ftruncate(o->fd, (off_t)size) != 0)
        return ds__client_fail(c, DS_CLIENT_ENOMEM, "cannot size the tensors' memfd to %llu "
                               "bytes: %s", (unsigned long long)size, strerror(errno));
    /* The daemon refuses a region that could shrink under it (a fault there would be its
     * SIGBUS); sealed, its size is fixed for everyone who holds it. */
    if (fcntl(o->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
        return ds__client_fail(c, DS_CLIENT_EIO, "cannot seal the tensors' memfd: %s",
                               strerror(errno));
    void *map = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, o->fd, 0);
    if (map == MAP_FAILED)
        return ds__client_fail(c, DS_CLIENT_ENOMEM, "cannot map the tensors' memfd (%llu bytes): "
                               "%s", (unsigned long long)size, strerror(errno));
    o->map = map;
    o->size = size;
    return DS_CLIENT_OK;
}

void ds__client_shm_destroy(ds__client_shm *o)
{
    if (o->map)
        munmap(o->map, (size_t)o->size);
    if (o->fd >= 0)
        close(o->fd);
    o->map = NULL;
    o->fd = -1;
}

int ds__client_take_tensor(ds_client *c, const char *name, const diffsynth_v1_Tensor *t,
                           const ds__client_shm *o, uint64_t out_offset, int min_dims,
                           ds_client_tensor *out)
{
    size_t elem = ds_client_dtype_size(t->dtype);
    if (elem == 0 || t->shape_count < (pb_size_t)min_dims || t->shape_count > DS_CLIENT_MAX_DIMS)
        return ds__client_fail(c, DS_CLIENT_EPROTO, "output \"%s\" has dtype %d and %u dims", name,
                               (int)t->dtype, (unsigned)t->shape_count);
    uint64_t bytes = elem;
    for (pb_size_t d = 0; d < t->shape_count; d++) {
        if (t->shape[d] < 0 || (t->shape[d] > 0 && bytes > UINT64_MAX / (uint64_t)t->shape[d]))
            return ds__client_fail(c, DS_CLIENT_EPROTO, "output \"%s\" has a bad shape", name);
        bytes *= (uint64_t)t->shape[d];
        out->shape[d] = t->shape[d];
    }
    const unsigned char *src;
    if (t->has_shm) {
        if (!o || strcmp(t->shm.name ? t->shm.name : "", o->name) != 0 || t->shm.fd_index != 0 ||
            t->shm.size != bytes ||
            t->shm.offset < out_offset || t->shm.offset > o->size ||
            bytes > o->size - t->shm.offset)
            return ds__client_fail(c, DS_CLIENT_EPROTO,
                                   "output \"%s\" points outside this call's output region", name);
        src = o->map + t->shm.offset;
    } else {
        size_t have = t->data ? t->data->size : 0;
        if (have != bytes)
            return ds__client_fail(c, DS_CLIENT_EPROTO,
                                   "output \"%s\" has %zu bytes of data, its shape needs %llu", name,
                                   have, (unsigned long long)bytes);
        src = t->data ? t->data->bytes : NULL;
    }
    void *copy = malloc(bytes ? (size_t)bytes : 1);
    char *name_copy = strdup(name);
    if (!copy || !name_copy) {
        free(copy);
        free(name_copy);
        return ds__client_fail(c, DS_CLIENT_ENOMEM, "out of memory for output \"%s\"", name);
    }
    if (bytes)
        memcpy(copy, src, (size_t)bytes);
    out->name = name_copy;
    out->dtype = t->dtype;
    out->ndim = (int)t->shape_count;
    out->data = copy;
    out->nbytes = (size_t)bytes;
    return DS_CLIENT_OK;
}
