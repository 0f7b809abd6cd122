/* Client-created POSIX shared-memory regions (DESIGN §4.6): how large tensors cross the socket.
 *
 * The client creates the object, names it in a request, and unlinks it after the reply. The
 * daemon trusts nothing about it: the name must be a plain "/name", the object must be a
 * regular file owned by the connecting uid (SO_PEERCRED), and offset + size must lie inside
 * it without overflow. Inputs are mapped read-only, output regions read-write.
 *
 * Clients of this version pass a memfd instead (SCM_RIGHTS with the frame): it must be sealed
 * against shrinking (F_SEAL_SHRINK), so its pages cannot vanish under us. A named object has no
 * such seal: its owner can shrink it after these checks (with --socket-group-access, a less
 * privileged user could so kill a root daemon with SIGBUS). Every mapping is therefore under
 * the fault guard (core/fault_guard.h): a fault turns its pages into zeros and sets `faulted`,
 * and the request that used it fails with DATA_LOSS (ds_shm_check_intact).
 */
#ifndef DS_DAEMON_SHM_REGION_H
#define DS_DAEMON_SHM_REGION_H

#include <stdatomic.h>
#include <stddef.h>
#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/error.h"
#include "diffsynth.pb-c.h"

/* Filled in place and registered with the fault guard by address: never copy a mapping. */
typedef struct ds_shm_mapping {
    void *base;       /* the mmap'd pages (page-aligned); NULL when nothing is mapped */
    size_t length;    /* of the mapping */
    uint8_t *data;    /* first byte of the region: base + (offset % page size) */
    uint64_t size;    /* bytes of the region */
    atomic_int faulted;  /* set by the SIGBUS guard when the object shrank under us */
    int guard_slot;   /* -1 when not guarded */
    char label[NAME_MAX + 160];  /* the field and the object, for messages */
} ds_shm_mapping;

/* The most descriptors one frame may carry (SCM_RIGHTS): more close the connection. */
#define DS_SHM_MAX_FDS_PER_FRAME 8

/* Checks a region's name without any I/O: "/name", 2..255 bytes, no other '/', printable.
 * `what` names the field in the message ("inputs[2].shm"). INVALID_ARGUMENT. */
int ds_shm_check_name(const char *what, const char *name, ds_error *err);

/* Opens `name` (O_RDONLY, or O_RDWR when `writable`), checks owner == `uid` and the bounds,
 * and maps [offset, offset + size). Codes: NOT_FOUND (no such object), PERMISSION_DENIED
 * (another owner, or not openable), INVALID_ARGUMENT (not a regular object, size 0, region
 * outside the object). `what` names the field in messages. On failure *out is zeroed. */
int ds_shm_map(const char *what, const char *name, uid_t uid, uint64_t offset, uint64_t size,
               int writable, ds_shm_mapping *out, ds_error *err);

/* Maps [offset, offset + size) of a memfd the client passed with the frame (`fd` stays the
 * caller's to close). The memfd must carry F_SEAL_SHRINK (F_GET_SEALS), be a regular file, and
 * hold the region; INVALID_ARGUMENT naming `what` otherwise. Output regions (`writable`) need a
 * descriptor opened read-write and no write seal. */
int ds_shm_map_fd(const char *what, int fd, uint64_t offset, uint64_t size, int writable,
                  ds_shm_mapping *out, ds_error *err);

/* Checks a request's SharedRegion without I/O: a memfd's (empty name; its index is checked
 * when mapping) or a named object's name (ds_shm_check_name). INVALID_ARGUMENT. */
int ds_shm_check_region(const char *what, const Diffsynth__V1__SharedRegion *region,
                        ds_error *err);

/* A request's Tensor, named `what` in messages ("run_pipeline.input_image", "input \"x\""),
 * without I/O: a known dtype, min_dims to DS_MAX_DIMS dims, each positive, and its data inline
 * or in a shared-memory region (checked as ds_shm_check_region), of exactly the bytes its
 * dtype and shape need. INVALID_ARGUMENT. */
int ds_shm_check_tensor(const char *what, const Diffsynth__V1__Tensor *t, size_t min_dims,
                        ds_error *err);

/* A request's output_region, checked as ds_shm_check_region and for a size: INVALID_ARGUMENT
 * "<what>.size is 0" when it has none. */
int ds_shm_check_output_region(const char *what, const Diffsynth__V1__SharedRegion *region,
                               ds_error *err);

/* Maps a request's output region writable (ds_shm_map_region) and keeps what a reply names it
 * by: its offset, its fd index and its name (*name malloc'd, the caller frees it). */
int ds_shm_map_output_region(const char *what, const Diffsynth__V1__SharedRegion *region,
                             uid_t uid, const int *fds, size_t fd_count, ds_shm_mapping *out,
                             uint64_t *offset, uint32_t *fd_index, char **name, ds_error *err);

/* Maps a request's SharedRegion: the memfd at fd_index among the frame's `fds` when the name is
 * empty (ds_shm_map_fd; INVALID_ARGUMENT when the frame has no such descriptor), else the named
 * object (ds_shm_map, owned by `uid`). */
int ds_shm_map_region(const char *what, const Diffsynth__V1__SharedRegion *region, uid_t uid,
                      const int *fds, size_t fd_count, int writable, ds_shm_mapping *out,
                      ds_error *err);

/* DATA_LOSS naming the field and the object when a read or write of the mapping faulted
 * since it was mapped (the client shrank its object while the request ran). A zeroed mapping
 * is intact. Any thread. */
int ds_shm_check_intact(const ds_shm_mapping *m, ds_error *err);

/* Unmaps; a zeroed mapping is fine. */
void ds_shm_unmap(ds_shm_mapping *m);

#endif
