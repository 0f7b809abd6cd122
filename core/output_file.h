/* Writing a result where a user pointed a tool's output: a regular file is replaced atomically
 * (a temporary file in the same folder, renamed over it, so readers see the old file or the
 * whole new one and a failed write leaves the old one); a FIFO, a character device (/dev/null,
 * a terminal) or "-" (standard output) is written directly, since renaming over it would
 * replace the node itself. Anything else (a folder, a socket, a block device, a symbolic link
 * to nothing) is refused, never replaced. A symbolic link to a regular file stays a link: the
 * file it names is replaced. */
#ifndef DS_CORE_OUTPUT_FILE_H
#define DS_CORE_OUTPUT_FILE_H

#include <stddef.h>

#include "core/error.h"

typedef struct ds_out_chunk {
    const void *data;
    size_t size;
} ds_out_chunk;

/* Writes the chunks, in order, to `path`. A new regular file gets mode 0666 less the umask; a
 * replaced one keeps its mode. Errors name the path and the system's reason:
 * DATA_LOSS when a write, flush or rename fails (ENOSPC on a full disk or /dev/full),
 * PERMISSION_DENIED when the file or its temporary cannot be created or opened,
 * INVALID_ARGUMENT for a kind of file that is not written to. Not thread-safe (it reads the
 * umask). */
int ds_output_write(const char *path, const ds_out_chunk *chunks, size_t count, ds_error *err);

/* Whether ds_output_write would try `path` at all, for tools to refuse before the work that
 * produces the bytes: the same INVALID_ARGUMENT for a kind of file that is not written to, and
 * PERMISSION_DENIED when the folder a new file would go into does not exist. A write can still
 * fail later (a full disk, permissions). */
int ds_output_check(const char *path, ds_error *err);

#endif
