#include "core/output_file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int write_all(int fd, const ds_out_chunk *chunks, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        const char *p = chunks[i].data;
        size_t left = chunks[i].size;
        while (left > 0) {
            ssize_t n = write(fd, p, left);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                return -1;
            }
            p += n;
            left -= (size_t)n;
        }
    }
    return 0;
}

static const char *kind_name(mode_t mode)
{
    if (S_ISDIR(mode))
        return "a folder";
    if (S_ISSOCK(mode))
        return "a socket";
    if (S_ISBLK(mode))
        return "a block device";
    return "not a regular file";
}

/* A FIFO or character device: opened as it is (no O_CREAT, no O_TRUNC on a node). */
static int write_direct(const char *path, const ds_out_chunk *chunks, size_t count,
                        ds_error *err)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return ds_error_set(err, DS_ERR_PERMISSION_DENIED, "cannot open %s: %s", path,
                            strerror(errno));
    int rc = DS_OK;
    if (write_all(fd, chunks, count) != 0)
        rc = ds_error_set(err, DS_ERR_DATA_LOSS, "cannot write %s: %s", path, strerror(errno));
    if (close(fd) != 0 && rc == DS_OK && errno != EINTR)
        rc = ds_error_set(err, DS_ERR_DATA_LOSS, "cannot write %s: %s", path, strerror(errno));
    return rc;
}

/* `target` is a regular file or does not exist; `mode` is the mode it gets. */
static int write_atomic(const char *path, const char *target, mode_t mode,
                        const ds_out_chunk *chunks, size_t count, ds_error *err)
{
    char dir_copy[PATH_MAX], base_copy[PATH_MAX], tmp[PATH_MAX + 16];
    if (strlen(target) >= sizeof dir_copy)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: path too long", path);
    strcpy(dir_copy, target);
    strcpy(base_copy, target);
    const char *dir = dirname(dir_copy), *base = basename(base_copy);
    /* Hidden and in the same folder: the rename stays on one filesystem. */
    int n = snprintf(tmp, sizeof tmp, "%s/.%s.XXXXXX", dir, base);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: path too long", path);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return ds_error_set(err, DS_ERR_PERMISSION_DENIED, "cannot create a file beside %s: %s",
                            path, strerror(errno));
    int rc = DS_OK;
    if (fchmod(fd, mode) != 0)
        rc = ds_error_set(err, DS_ERR_PERMISSION_DENIED, "cannot set the mode of %s: %s", tmp,
                          strerror(errno));
    else if (write_all(fd, chunks, count) != 0 || fsync(fd) != 0)
        rc = ds_error_set(err, DS_ERR_DATA_LOSS, "cannot write %s: %s", path, strerror(errno));
    if (close(fd) != 0 && rc == DS_OK && errno != EINTR)
        rc = ds_error_set(err, DS_ERR_DATA_LOSS, "cannot write %s: %s", path, strerror(errno));
    if (rc == DS_OK && rename(tmp, target) != 0)
        rc = ds_error_set(err, DS_ERR_DATA_LOSS, "cannot write %s: %s", path, strerror(errno));
    if (rc != DS_OK)
        unlink(tmp);
    return rc;
}

/* What to do with `path`: direct (FIFO, character device), atomic (a regular file or none
 * yet), or an error. *st gets stat's answer when the path exists. */
enum { TARGET_DIRECT, TARGET_ATOMIC_EXISTING, TARGET_ATOMIC_NEW };

static int classify(const char *path, struct stat *st, int *kind, ds_error *err)
{
    if (!path || !path[0])
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "empty output path");
    if (stat(path, st) == 0) {
        if (S_ISFIFO(st->st_mode) || S_ISCHR(st->st_mode)) {
            *kind = TARGET_DIRECT;
            return DS_OK;
        }
        if (!S_ISREG(st->st_mode))
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s is %s: not replaced (give a regular file, a FIFO, a "
                                "character device or -)",
                                path, kind_name(st->st_mode));
        *kind = TARGET_ATOMIC_EXISTING;
        return DS_OK;
    }
    if (errno != ENOENT)
        return ds_error_set(err, DS_ERR_PERMISSION_DENIED, "cannot write %s: %s", path,
                            strerror(errno));
    if (lstat(path, st) == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s is a symbolic link to a missing file: not replaced", path);
    *kind = TARGET_ATOMIC_NEW;
    return DS_OK;
}

int ds_output_check(const char *path, ds_error *err)
{
    if (path && strcmp(path, "-") == 0)
        return DS_OK;
    struct stat st;
    int kind;
    int rc = classify(path, &st, &kind, err);
    if (rc != DS_OK || kind != TARGET_ATOMIC_NEW)
        return rc;
    char dir_copy[PATH_MAX];
    if (strlen(path) >= sizeof dir_copy)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: path too long", path);
    strcpy(dir_copy, path);
    const char *dir = dirname(dir_copy);
    if (stat(dir, &st) != 0)
        return ds_error_set(err, DS_ERR_PERMISSION_DENIED, "cannot create %s: %s", path,
                            strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return ds_error_set(err, DS_ERR_PERMISSION_DENIED, "cannot create %s: %s is not a folder",
                            path, dir);
    return DS_OK;
}

int ds_output_write(const char *path, const ds_out_chunk *chunks, size_t count, ds_error *err)
{
    if (!path || !path[0])
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "empty output path");
    if (strcmp(path, "-") == 0) {
        if (write_all(STDOUT_FILENO, chunks, count) != 0)
            return ds_error_set(err, DS_ERR_DATA_LOSS, "cannot write to standard output: %s",
                                strerror(errno));
        return DS_OK;
    }
    struct stat st;
    int kind;
    int rc = classify(path, &st, &kind, err);
    if (rc != DS_OK)
        return rc;
    if (kind == TARGET_DIRECT)
        return write_direct(path, chunks, count, err);
    if (kind == TARGET_ATOMIC_EXISTING) {
        char *target = realpath(path, NULL);
        if (!target)
            return ds_error_set(err, DS_ERR_PERMISSION_DENIED, "cannot resolve %s: %s", path,
                                strerror(errno));
        rc = write_atomic(path, target, st.st_mode & 07777, chunks, count, err);
        free(target);
        return rc;
    }
    mode_t mask = umask(0);
    umask(mask);
    return write_atomic(path, path, 0666 & ~mask, chunks, count, err);
}
