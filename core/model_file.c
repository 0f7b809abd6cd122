#include "core/model_file.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/fault_guard.h"

ds_file_format ds_file_format_for_path(const char *path)
{
    static const char suffix[] = ".safetensors";
    size_t len = strlen(path), slen = sizeof suffix - 1;
    if (len >= slen && memcmp(path + len - slen, suffix, slen) == 0)
        return DS_FORMAT_SAFETENSORS;
    return DS_FORMAT_TORCH;
}

static void close_file(ds_model_file *file)
{
    ds_fault_guard_remove(file->guard_slot);
    file->guard_slot = -1;
    if (file->safetensors)
        ds_safetensors_close(file->safetensors);
    if (file->torch)
        ds_torch_checkpoint_close(file->torch);
    free(file->path);
}

void ds_model_files_close(ds_model_files *files)
{
    if (!files || atomic_fetch_sub(&files->refs, 1) > 1)
        return;
    for (size_t i = 0; i < files->count; i++)
        close_file(&files->files[i]);
    ds_state_dict_free(&files->merged);
    free(files->files);
    free(files);
}

ds_model_files *ds_model_files_retain(ds_model_files *files)
{
    atomic_fetch_add(&files->refs, 1);
    return files;
}

static int64_t mtime_ns(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/* fd < 0: opened by `path`; else through fd, which stays the caller's. */
static int open_one(const char *path, int fd, int index, ds_model_file *file, ds_error *err)
{
    file->guard_slot = -1;
    file->format = ds_file_format_for_path(path);
    file->path = strdup(path);
    if (!file->path)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", path);
    int rc;
    if (fd >= 0)
        rc = file->format == DS_FORMAT_SAFETENSORS
                 ? ds_safetensors_open_fd(fd, path, index, &file->safetensors, err)
                 : ds_torch_checkpoint_open_fd(fd, path, index, &file->torch, err);
    else
        rc = file->format == DS_FORMAT_SAFETENSORS
                 ? ds_safetensors_open(path, index, &file->safetensors, err)
                 : ds_torch_checkpoint_open(path, index, &file->torch, err);
    if (rc != DS_OK)
        return rc;
    /* The opener has already read the file, so a stat failure now means it changed under us. */
    struct stat st;
    if ((fd >= 0 ? fstat(fd, &st) : stat(path, &st)) != 0)
        return ds_error_set(err, errno == ENOENT ? DS_ERR_NOT_FOUND : DS_ERR_UNAVAILABLE,
                            "%s: cannot stat: %s", path, strerror(errno));
    file->identity.dev = st.st_dev;
    file->identity.ino = st.st_ino;
    file->identity.size = (uint64_t)st.st_size;
    file->identity.mtime_ns = mtime_ns(&st);
    /* Someone truncating the file (a re-download over it) makes reads of the mapping fault;
     * the guard turns that into a flag the step checks instead of a dead daemon. */
    const uint8_t *map = file->safetensors ? file->safetensors->map : file->torch->map;
    uint64_t size = file->safetensors ? file->safetensors->file_size : file->torch->file_size;
    if (size > 0)
        return ds_fault_guard_add((void *)map, (size_t)size, &file->faulted, &file->guard_slot,
                                  err);
    return DS_OK;
}

int ds_model_files_open(const char *const *paths, size_t count, ds_model_files **out,
                        ds_error *err)
{
    return ds_model_files_open_fds(NULL, paths, count, out, err);
}

int ds_model_files_open_fds(const int *fds, const char *const *paths, size_t count,
                            ds_model_files **out, ds_error *err)
{
    *out = NULL;
    if (count == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "no model files given");
    /* file_index travels in every tensor view as an int. */
    if (count > (size_t)INT32_MAX)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "too many model files: %zu", count);
    for (size_t i = 0; i < count; i++)
        if (!paths[i] || !paths[i][0])
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "model file %zu: empty path", i);

    int rc = DS_ERR_RESOURCE_EXHAUSTED;
    ds_model_files *files = calloc(1, sizeof *files);
    if (!files)
        return ds_error_set(err, rc, "out of memory opening %zu model files", count);
    atomic_init(&files->refs, 1);
    ds_state_dict_init(&files->merged);
    files->files = calloc(count, sizeof *files->files);
    if (!files->files) {
        ds_error_set(err, rc, "out of memory opening %zu model files", count);
        goto fail;
    }
    size_t total = 0;
    for (size_t i = 0; i < count; i++) {
        ds_model_file *file = &files->files[i];
        files->count = i + 1;
        rc = open_one(paths[i], fds ? fds[i] : -1, (int)i, file, err);
        if (rc != DS_OK)
            goto fail;
        total += file->safetensors ? file->safetensors->tensors.count : file->torch->tensors.count;
    }
    /* Sized once: growing the index shard by shard rehashes every name several times. */
    if (ds_state_dict_reserve(&files->merged, total) != DS_OK) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory merging %zu tensors", total);
        goto fail;
    }
    for (size_t i = 0; i < count; i++) {
        const ds_model_file *file = &files->files[i];
        const ds_state_dict *tensors =
            file->safetensors ? &file->safetensors->tensors : &file->torch->tensors;
        rc = ds_state_dict_update(&files->merged, tensors);
        if (rc != DS_OK) {
            ds_error_set(err, rc, "%s: out of memory merging %zu tensors", paths[i],
                         tensors->count);
            goto fail;
        }
    }
    *out = files;
    return DS_OK;
fail:
    ds_model_files_close(files);
    return rc;
}

/* Records the first finding; whoever loses the race reports the winner's. */
static int mark_stale(ds_model_files *files, ds_error *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int mark_stale(ds_model_files *files, ds_error *err, const char *fmt, ...)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&files->stale, &expected, 1)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(files->stale_reason, sizeof files->stale_reason, fmt, ap);
        va_end(ap);
        atomic_store(&files->stale, 2);
    }
    if (atomic_load(&files->stale) == 2)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION, "%s", files->stale_reason);
    return ds_error_set(err, DS_ERR_FAILED_PRECONDITION, "a file changed since it was loaded");
}

int ds_model_files_check(ds_model_files *files, ds_error *err)
{
    if (atomic_load(&files->stale))
        return mark_stale(files, err, "a file changed since it was loaded");
    long faulted = ds_model_files_faulted(files);
    if (faulted >= 0)
        return mark_stale(files, err,
                          "%s shrank while its data was being read (a read past its new end "
                          "faulted)",
                          files->files[faulted].path);
    for (size_t i = 0; i < files->count; i++) {
        const ds_model_file *f = &files->files[i];
        struct stat st;
        if (stat(f->path, &st) != 0)
            return mark_stale(files, err, "%s cannot be checked since it was loaded: %s", f->path,
                              strerror(errno));
        const ds_file_identity *id = &f->identity;
        if ((uint64_t)st.st_size != id->size)
            return mark_stale(files, err, "%s changed since it was loaded: %llu bytes, was %llu",
                              f->path, (unsigned long long)st.st_size,
                              (unsigned long long)id->size);
        if (st.st_dev != id->dev || st.st_ino != id->ino)
            return mark_stale(files, err,
                              "%s changed since it was loaded: it is another file now (inode "
                              "%llu, was %llu)",
                              f->path, (unsigned long long)st.st_ino,
                              (unsigned long long)id->ino);
        if (mtime_ns(&st) != id->mtime_ns)
            return mark_stale(files, err,
                              "%s changed since it was loaded: modified in place (same size, "
                              "new modification time)",
                              f->path);
    }
    return DS_OK;
}

int ds_model_files_is_stale(const ds_model_files *files) { return atomic_load(&files->stale) != 0; }

const char *ds_model_files_stale_reason(const ds_model_files *files)
{
    return atomic_load(&files->stale) == 2 ? files->stale_reason : NULL;
}

long ds_model_files_faulted(const ds_model_files *files)
{
    for (size_t i = 0; i < files->count; i++)
        if (atomic_load(&files->files[i].faulted))
            return (long)i;
    return -1;
}

uint64_t ds_model_files_mapped_bytes(const ds_model_files *files)
{
    uint64_t total = 0;
    for (size_t i = 0; i < files->count; i++)
        total += files->files[i].identity.size;
    return total;
}
