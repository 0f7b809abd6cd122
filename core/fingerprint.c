#include "core/fingerprint.h"

#include <stdlib.h>
#include <xxhash.h>

#include "core/model_file.h"
#include "core/safetensors.h"

int ds_fingerprint_files(const char *const *paths, size_t count, ds_fingerprint *out,
                         ds_error *err)
{
    return ds_fingerprint_files_fds(NULL, paths, count, out, err);
}

int ds_fingerprint_files_fds(const int *fds, const char *const *paths, size_t count,
                             ds_fingerprint *out, ds_error *err)
{
    for (size_t i = 0; i < count; i++)
        if (ds_file_format_for_path(paths[i]) != DS_FORMAT_SAFETENSORS)
            return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                                "%s is not a safetensors file: no header to fingerprint", paths[i]);

    XXH3_state_t *state = XXH3_createState();
    if (!state)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for a fingerprint");
    XXH3_128bits_reset(state);
    int rc = DS_OK;
    for (size_t i = 0; i < count && rc == DS_OK; i++) {
        uint8_t *header = NULL;
        uint64_t header_size = 0, file_size = 0;
        rc = fds ? ds_safetensors_read_header_fd(fds[i], paths[i], &header, &header_size,
                                                 &file_size, err)
                 : ds_safetensors_read_header(paths[i], &header, &header_size, &file_size, err);
        if (rc != DS_OK)
            break;
        /* Lengths first, so that shifting bytes between two files' headers changes the key. */
        uint64_t fields[3] = {(uint64_t)i, file_size, header_size};
        XXH3_128bits_update(state, fields, sizeof fields);
        XXH3_128bits_update(state, header, (size_t)header_size);
        free(header);
    }
    if (rc == DS_OK) {
        XXH128_hash_t digest = XXH3_128bits_digest(state);
        out->low = digest.low64;
        out->high = digest.high64;
    }
    XXH3_freeState(state);
    return rc;
}
