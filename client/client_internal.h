/* Internal interface shared by the files of libdiffsynth-client. Not installed. */
#ifndef DS_CLIENT_CLIENT_INTERNAL_H
#define DS_CLIENT_CLIENT_INTERNAL_H

#include "client/diffsynth_client.h"

/* Records a failure (message for ds_client_last_error, code 0) and returns `status`. */
int ds__client_fail(ds_client *client, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records a daemon Error reply as ds_client_call does (message, and its code for
 * ds_client_last_code) and returns DS_CLIENT_EDAEMON. */
int ds__client_daemon_error(ds_client *client, const diffsynth_v1_Error *error);

/* ds_client_call, passing `fds` with the request's frame (ds_client_send_fds). */
int ds__client_call_fds(ds_client *client, const diffsynth_v1_Envelope *request, const int *fds,
                        size_t fd_count, diffsynth_v1_Envelope *response, int timeout_ms,
                        ds_client_progress_fn on_progress, void *user);

/* ---- shared memory for tensors too large for nanopb's inline fields (client_shm.c) ---- */

/* Tensors in a call's shared-memory object start at multiples of this (the daemon's outputs
 * too). */
#define DS__CLIENT_SHM_ALIGN 64

/* One call's object: a memfd sealed against shrinking and growing, passed with the request's
 * frame as its descriptor 0 (SharedRegion: no name, fd_index 0). The daemon maps it; no name
 * exists that another process could open or shrink. */
typedef struct ds__client_shm {
    char name[1];       /* "": what a region of this object names */
    int fd;             /* -1 when none */
    unsigned char *map;
    uint64_t size;
} ds__client_shm;

uint64_t ds__client_align_up(uint64_t v, uint64_t a);
/* A request's inline_limit as the tensor bytes that travel inline: 0 or more than
 * DS_CLIENT_MAX_INLINE mean DS_CLIENT_MAX_INLINE. */
size_t ds__client_inline_limit(size_t requested);
int ds__client_shm_create(ds_client *client, ds__client_shm *o, uint64_t size);
void ds__client_shm_destroy(ds__client_shm *o);

/* Copies reply tensor `t` (inline, or in `o` at or after out_offset, checked against what the
 * object holds) into malloc'd memory owned by *out; `name` is what messages call it and what
 * *out is named. At least `min_dims` dimensions. */
int ds__client_take_tensor(ds_client *client, const char *name, const diffsynth_v1_Tensor *t,
                           const ds__client_shm *o, uint64_t out_offset, int min_dims,
                           ds_client_tensor *out);

#endif
