#include "core/model_file.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
    if (file->safetensors)
        ds_safetensors_close(file->safetensors);
    if (file->torch)
        ds_torch_checkpoint_close(file->torch);
    free(file->path);
}

void ds_model_files_close(ds_model_files *files)
{
    if (!files)
        return;
    for (size_t i = 0; i < files->count; i++)
        close_file(&files->files[i]);
    ds_state_dict_free(&files->merged);
    free(files->files);
    free(files);
}

/* fd < 0: opened by `path`; else through fd, which stays the caller's. */
static int open_one(const char *path, int fd, int index, ds_model_file *file, ds_error *err)
{
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
    file->identity.mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
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

uint64_t ds_model_files_mapped_bytes(const ds_model_files *files)
{
    uint64_t total = 0;
    for (size_t i = 0; i < files->count; i++)
        total += files->files[i].identity.size;
    return total;
}
