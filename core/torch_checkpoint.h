/* PyTorch checkpoints written by torch.save (.bin, .pth, .ckpt, .pt): the zip container.
 *
 * The zip holds "<archive>/data.pkl" (the pickled object), "<archive>/data/<key>" (one entry
 * per storage), "<archive>/version" and "<archive>/byteorder". The pickle is read by a
 * restricted unpickler (core/unpickle.h) that knows only the globals needed to rebuild tensors
 * and dicts; anything else is rejected with the global's name and nothing is executed.
 *
 * Tensors are views into the mapped file when their storage entry is stored uncompressed
 * (torch.save always writes them so, 64-byte aligned) and little-endian.
 *
 * The loaded object must be a dict (or OrderedDict) of str -> tensor | dict. Upstream's unwrap
 * rule applies (facts §1.3): a dict with exactly one key "state_dict", else "module", else
 * "model_state" is replaced by that value. Non-str keys are skipped, as upstream's hash does.
 */
#ifndef DS_CORE_TORCH_CHECKPOINT_H
#define DS_CORE_TORCH_CHECKPOINT_H

#include <stdint.h>

#include "core/error.h"
#include "core/state_dict.h"

typedef struct ds_torch_checkpoint {
    char *path;                /* owned */
    const uint8_t *map;
    uint64_t file_size;
    ds_state_dict tensors;     /* after unwrap; nested dicts kept as nested entries */
} ds_torch_checkpoint;

/* Codes: NOT_FOUND / PERMISSION_DENIED for open errors; INVALID_ARGUMENT for malformed zip or
 * pickle, forbidden globals, unsupported content (legacy non-zip format, compressed storage,
 * big-endian data), each message naming the file and, where known, the entry or key. */
int ds_torch_checkpoint_open(const char *path, int file_index, ds_torch_checkpoint **out,
                             ds_error *err);
/* The same for a file already open for reading: `fd` stays the caller's; `path` is the name
 * recorded and used in messages. Nothing is resolved by name. */
int ds_torch_checkpoint_open_fd(int fd, const char *path, int file_index,
                                ds_torch_checkpoint **out, ds_error *err);

/* Same checks on an in-memory image (fuzz target); `bytes` must outlive the result. */
int ds_torch_checkpoint_parse(const char *name, const uint8_t *bytes, uint64_t size,
                              int file_index, ds_torch_checkpoint **out, ds_error *err);

void ds_torch_checkpoint_close(ds_torch_checkpoint *ckpt);

#endif
