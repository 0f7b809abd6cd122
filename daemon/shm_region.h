/* Client-created POSIX shared-memory regions (DESIGN §4.6): how large tensors cross the socket.
 *
 * The client creates the object, names it in a request, and unlinks it after the reply. The
 * daemon trusts nothing about it: the name must be a plain "/name", the object must be a
 * regular file owned by the connecting uid (SO_PEERCRED), and offset + size must lie inside
 * it without overflow. Inputs are mapped read-only, output regions read-write.
 *
 * A client that shrinks its object after these checks makes the daemon's next access to the
 * missing pages raise SIGBUS. Only the object's owner can do that, and the owner is the peer's
 * uid, which may signal the daemon anyway; so this is not a boundary we defend.
 */
#ifndef DS_DAEMON_SHM_REGION_H
#define DS_DAEMON_SHM_REGION_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/error.h"

typedef struct ds_shm_mapping {
    void *base;       /* the mmap'd pages (page-aligned); NULL when nothing is mapped */
    size_t length;    /* of the mapping */
    uint8_t *data;    /* first byte of the region: base + (offset % page size) */
    uint64_t size;    /* bytes of the region */
} ds_shm_mapping;

/* Checks a region's name without any I/O: "/name", 2..255 bytes, no other '/', printable.
 * `what` names the field in the message ("inputs[2].shm"). INVALID_ARGUMENT. */
int ds_shm_check_name(const char *what, const char *name, ds_error *err);

/* Opens `name` (O_RDONLY, or O_RDWR when `writable`), checks owner == `uid` and the bounds,
 * and maps [offset, offset + size). Codes: NOT_FOUND (no such object), PERMISSION_DENIED
 * (another owner, or not openable), INVALID_ARGUMENT (not a regular object, size 0, region
 * outside the object). `what` names the field in messages. On failure *out is zeroed. */
int ds_shm_map(const char *what, const char *name, uid_t uid, uint64_t offset, uint64_t size,
               int writable, ds_shm_mapping *out, ds_error *err);

/* Unmaps; a zeroed mapping is fine. */
void ds_shm_unmap(ds_shm_mapping *m);

#endif
