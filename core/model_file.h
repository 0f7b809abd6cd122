/* A model as upstream sees a path argument: one file or an ordered list of files (shards),
 * each opened by its extension exactly as upstream decides (`path.endswith(".safetensors")`
 * means safetensors, anything else is a torch.save checkpoint), and merged in order with
 * dict.update semantics: on a duplicate name the later file wins (facts §1.3).
 */
#ifndef DS_CORE_MODEL_FILE_H
#define DS_CORE_MODEL_FILE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/error.h"
#include "core/safetensors.h"
#include "core/state_dict.h"
#include "core/torch_checkpoint.h"

typedef enum ds_file_format {
    DS_FORMAT_SAFETENSORS = 1,
    DS_FORMAT_TORCH = 2,
} ds_file_format;

/* What makes two opens "the same file" for deduplication in the pool. */
typedef struct ds_file_identity {
    dev_t dev;
    ino_t ino;
    uint64_t size;
    int64_t mtime_ns;
} ds_file_identity;

typedef struct ds_model_file {
    char *path;                 /* as given; owned */
    ds_file_format format;
    ds_file_identity identity;
    ds_safetensors *safetensors; /* exactly one of these is set */
    ds_torch_checkpoint *torch;
    /* Set (by the SIGBUS guard, any thread) when a read of the mapping faulted: the file
     * shrank under us and the pages past its end now read as zeros. */
    atomic_int faulted;
    int guard_slot;             /* -1 when the file is not mapped */
} ds_model_file;

typedef struct ds_model_files {
    ds_model_file *files;       /* in the order given */
    size_t count;
    ds_state_dict merged;       /* views into the files' mappings; valid while this is open */
    /* 0 fresh; 1 while the first finding is being written; 2 stale (reason set). Once stale,
     * always stale: the weights no longer match the files. */
    atomic_int stale;
    char stale_reason[512];     /* names the file and what changed */
    /* Holders of this open: one file set can hold several models (upstream's "multiple models
     * in the same file"), each loaded from the one mapping. */
    atomic_uint refs;
} ds_model_files;

ds_file_format ds_file_format_for_path(const char *path);

/* Opens and merges `count` paths. On failure nothing stays open and err names the file. */
int ds_model_files_open(const char *const *paths, size_t count, ds_model_files **out,
                        ds_error *err);
/* The same for files already open: fds[i] (the caller's, not closed) is read, paths[i] is only
 * its name (format, messages). fds NULL = open by path. */
int ds_model_files_open_fds(const int *fds, const char *const *paths, size_t count,
                            ds_model_files **out, ds_error *err);
/* Drops one holder's reference; the last one unmaps and frees (any thread). */
void ds_model_files_close(ds_model_files *files);
/* Another holder of the same open files (and mapping); returns `files`. */
ds_model_files *ds_model_files_retain(ds_model_files *files);

/* Whether the files still are what was loaded: FAILED_PRECONDITION when a file's mapping
 * faulted (it shrank while something read it) or its size, modification time, inode or device
 * differs from the load (rewritten in place, replaced, truncated, removed); err's message names
 * the file and the change. The first finding is kept: every later call (any thread) fails with
 * it. Costs one stat per file. */
int ds_model_files_check(ds_model_files *files, ds_error *err);

/* Whether ds_model_files_check has found the files stale (no I/O; any thread). */
int ds_model_files_is_stale(const ds_model_files *files);
/* What it found (names the file), or NULL while not stale; lives as long as `files`. */
const char *ds_model_files_stale_reason(const ds_model_files *files);

/* Index of the first file whose mapping faulted, or -1 (no I/O; any thread). */
long ds_model_files_faulted(const ds_model_files *files);

/* Total bytes of all mapped files (what the "disk" tier holds for a model). */
uint64_t ds_model_files_mapped_bytes(const ds_model_files *files);

#endif
