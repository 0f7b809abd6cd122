#include "core/torch_checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/unpickle.h"
#include "core/zip.h"

/* The public struct plus whether its bytes are our mapping (open) or the caller's (parse). */
typedef struct checkpoint {
    ds_torch_checkpoint pub;
    int mapped;
} checkpoint;

/* Key paths in messages are cut here. */
#define PATH_MAX_SHOWN 512

typedef struct storages {
    const ds__zip *zip;
    const char *prefix;          /* archive folder, without the slash */
    size_t prefix_len;
} storages;

/* Storage `key` lives in the entry "<archive>/data/<key>", stored so that tensors can point
 * into the mapping. */
static int resolve_storage(void *ctx, const char *key, const uint8_t **data, uint64_t *size,
                           ds_error *err)
{
    const storages *s = ctx;
    size_t key_len = strlen(key);
    size_t len = s->prefix_len + 6 + key_len;
    char *name = malloc(len + 1);
    if (!name)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(name, s->prefix, s->prefix_len);
    memcpy(name + s->prefix_len, "/data/", 6);
    memcpy(name + s->prefix_len + 6, key, key_len + 1);
    const ds__zip_entry *e = ds__zip_find(s->zip, name, len);
    int rc = DS_OK;
    if (!e)
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "storage \"%.200s\" has no zip entry \"%.300s\"", key, name);
    else if (e->method != 0)
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "storage entry \"%.300s\" is compressed (method %u): tensor storages "
                          "must be stored uncompressed to be mapped",
                          name, e->method);
    free(name);
    if (rc != DS_OK)
        return rc;
    *data = s->zip->image + e->data_offset;
    *size = e->uncompressed_size;
    return DS_OK;
}

/* Appends ["key"] (or [<type>] for a key that is not a str) to a message's key path. */
static void path_push(char *path, size_t *len, const ds__py *key)
{
    size_t room = PATH_MAX_SHOWN - *len;
    int n;
    if (key->kind == DS__PY_STR)
        n = snprintf(path + *len, room, "[\"%.200s\"]", key->str.data);
    else if (key->kind == DS__PY_INT)
        n = snprintf(path + *len, room, "[%lld]", (long long)key->i);
    else
        n = snprintf(path + *len, room, "[<%s>]", ds__py_type_name(key));
    if (n > 0)
        *len += (size_t)n < room ? (size_t)n : room - 1;
}

typedef struct converter {
    const char *name;
    int file_index;
    uint64_t budget;             /* entries left to visit; shared sub-dicts count each time */
    char path[PATH_MAX_SHOWN];
    size_t path_len;
} converter;

/* Puts a dict's str -> tensor | dict entries into `sd` (NULL: validate only, for values under
 * keys upstream's hash skips). Every value is checked, as upstream's
 * convert_state_dict_to_keys_dict visits every value whatever its key. */
static int convert_dict(converter *c, const ds__py *dict, ds_state_dict *sd, int depth,
                        ds_error *err)
{
    if (depth > DS__UNPICKLE_MAX_DEPTH)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: dicts nested deeper than %d levels at key path %s", c->name,
                            DS__UNPICKLE_MAX_DEPTH, c->path);
    for (size_t i = 0; i < dict->dict.count; i++) {
        const ds__py *key = dict->dict.keys[i], *value = dict->dict.values[i];
        if (c->budget == 0)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                                "%s: more than %u entries (counting shared sub-dicts each time)",
                                c->name, DS__UNPICKLE_MAX_OBJECTS);
        c->budget--;
        size_t saved = c->path_len;
        path_push(c->path, &c->path_len, key);
        int keep = sd && key->kind == DS__PY_STR;
        if (keep && key->str.len != strlen(key->str.data)) {
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: key path %s: the key holds a NUL byte", c->name, c->path);
        }
        int rc = DS_OK;
        if (value->kind == DS__PY_TENSOR) {
            if (keep) {
                ds_tensor_view view = *value->tensor;
                view.file_index = c->file_index;
                rc = ds_state_dict_put_tensor(sd, key->str.data, &view);
            }
        } else if (value->kind == DS__PY_DICT) {
            ds_state_dict *child = NULL;
            if (keep && !(child = ds_state_dict_new()))
                rc = DS_ERR_RESOURCE_EXHAUSTED;
            if (rc == DS_OK && (rc = convert_dict(c, value, child, depth + 1, err)) != DS_OK) {
                ds_state_dict_destroy(child);
                return rc;
            }
            if (rc == DS_OK && keep)
                rc = ds_state_dict_put_dict(sd, key->str.data, child);
        } else {
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: key path %s: value of type %s is not a tensor or a dict; "
                                "upstream's hash_model_file cannot handle it either (it raises "
                                "AttributeError)",
                                c->name, c->path, ds__py_type_name(value));
        }
        if (rc != DS_OK)
            return ds_error_set(err, rc, "%s: key path %s: out of memory", c->name, c->path);
        c->path_len = saved;
        c->path[saved] = '\0';
    }
    return DS_OK;
}

/* Upstream's rule (facts §1.3): a dict with exactly one key, "state_dict", "module" or
 * "model_state", stands for its value. */
static int convert_root(const char *name, const ds__py *root, int file_index, ds_state_dict *sd,
                        ds_error *err)
{
    if (root->kind != DS__PY_DICT)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: the checkpoint holds a %s, not a dict of tensors", name,
                            ds__py_type_name(root));
    static const char *const wrappers[] = {"state_dict", "module", "model_state"};
    if (root->dict.count == 1 && root->dict.keys[0]->kind == DS__PY_STR) {
        const char *key = root->dict.keys[0]->str.data;
        for (size_t i = 0; i < sizeof wrappers / sizeof wrappers[0]; i++) {
            if (strcmp(key, wrappers[i]) == 0 &&
                root->dict.keys[0]->str.len == strlen(wrappers[i])) {
                root = root->dict.values[0];
                if (root->kind != DS__PY_DICT)
                    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                        "%s: \"%s\" holds a %s, not a dict; upstream's "
                                        "hash_model_file cannot handle it either (it raises "
                                        "AttributeError)",
                                        name, wrappers[i], ds__py_type_name(root));
                break;
            }
        }
    }
    converter c = {.name = name, .file_index = file_index, .budget = DS__UNPICKLE_MAX_OBJECTS};
    return convert_dict(&c, root, sd, 0, err);
}

/* torch writes sys.byteorder into "<archive>/byteorder"; files without it are little-endian. */
static int check_byteorder(const char *file, const ds__zip *zip, const char *prefix,
                           size_t prefix_len, ds_error *err)
{
    char entry_name[300];
    int n = snprintf(entry_name, sizeof entry_name, "%.*s/byteorder", (int)prefix_len, prefix);
    const ds__zip_entry *e = ds__zip_find(zip, entry_name, (size_t)n);
    if (!e)
        return DS_OK;
    const uint8_t *data;
    int rc = ds__zip_stored_data(zip, file, e, &data, err);
    if (rc != DS_OK)
        return rc;
    if (e->uncompressed_size == 6 && memcmp(data, "little", 6) == 0)
        return DS_OK;
    char shown[17];
    size_t len = e->uncompressed_size < 16 ? (size_t)e->uncompressed_size : 16;
    for (size_t i = 0; i < len; i++)
        shown[i] = (data[i] >= 0x20 && data[i] < 0x7F) ? (char)data[i] : '?';
    shown[len] = '\0';
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                        "%s: %s is \"%s\": only little-endian checkpoints are supported", file,
                        entry_name, shown);
}

/* torch.save's pickle protocol 2 starts with PROTO (0x80); the zip format starts with "PK". */
static int is_legacy(const uint8_t *bytes, uint64_t size)
{
    return size >= 2 && bytes[0] == 0x80 && bytes[1] <= 5;
}

static int parse(const char *name, const uint8_t *bytes, uint64_t size, int file_index,
                 checkpoint *ckpt, ds_error *err)
{
    if (is_legacy(bytes, size))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: legacy torch.save format (a bare pickle, written by torch<1.6 "
                            "or with _use_new_zipfile_serialization=False) is not supported; "
                            "re-save with torch>=1.6 or convert to safetensors",
                            name);
    ds__zip zip;
    ds__unpickled *u = NULL;
    int rc = ds__zip_open(&zip, name, bytes, size, err);
    if (rc != DS_OK)
        return rc;
    /* Like torch's reader: every entry lives in the folder of the first one. */
    const char *prefix = zip.count ? zip.entries[0].name : "";
    const char *slash = zip.count ? memchr(prefix, '/', zip.entries[0].name_len) : NULL;
    if (!slash || slash == prefix) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "%s: not a torch.save archive: its first entry is not inside a folder",
                          name);
        goto done;
    }
    size_t prefix_len = (size_t)(slash - prefix);
    if (prefix_len > 256) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "%s: archive folder name of %zu bytes is too long", name, prefix_len);
        goto done;
    }
    char pkl_name[300];
    int n = snprintf(pkl_name, sizeof pkl_name, "%.*s/data.pkl", (int)prefix_len, prefix);
    const ds__zip_entry *pkl = ds__zip_find(&zip, pkl_name, (size_t)n);
    if (!pkl) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "%s: not a torch.save archive: no entry \"%s\"", name, pkl_name);
        goto done;
    }
    if ((rc = check_byteorder(name, &zip, prefix, prefix_len, err)) != DS_OK)
        goto done;
    const uint8_t *pickle;
    if ((rc = ds__zip_stored_data(&zip, name, pkl, &pickle, err)) != DS_OK)
        goto done;
    storages s = {&zip, prefix, prefix_len};
    rc = ds__unpickle(pickle, (size_t)pkl->uncompressed_size, resolve_storage, &s, &u, err);
    if (rc != DS_OK) {
        ds_error_prefix(err, "%s: %s: ", name, pkl_name);
        goto done;
    }
    rc = convert_root(name, ds__unpickled_root(u), file_index, &ckpt->pub.tensors, err);

done:
    ds__unpickled_free(u);
    ds__zip_close(&zip);
    return rc;
}

static int make(const char *name, const uint8_t *bytes, uint64_t size, int file_index,
                int mapped, ds_torch_checkpoint **out, ds_error *err)
{
    *out = NULL;
    int rc;
    checkpoint *ckpt = calloc(1, sizeof *ckpt);
    if (!ckpt || !(ckpt->pub.path = strdup(name))) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", name);
        goto fail;
    }
    ds_state_dict_init(&ckpt->pub.tensors);
    if ((rc = parse(name, bytes, size, file_index, ckpt, err)) != DS_OK)
        goto fail;
    ckpt->pub.map = bytes;
    ckpt->pub.file_size = size;
    ckpt->mapped = mapped;
    *out = &ckpt->pub;
    return DS_OK;

fail:
    if (ckpt) {
        ds_state_dict_free(&ckpt->pub.tensors);
        free(ckpt->pub.path);
        free(ckpt);
    }
    return rc;
}

int ds_torch_checkpoint_parse(const char *name, const uint8_t *bytes, uint64_t size,
                              int file_index, ds_torch_checkpoint **out, ds_error *err)
{
    return make(name, bytes, size, file_index, 0, out, err);
}

int ds_torch_checkpoint_open(const char *path, int file_index, ds_torch_checkpoint **out,
                             ds_error *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int code = (errno == ENOENT || errno == ENOTDIR) ? DS_ERR_NOT_FOUND
                   : (errno == EACCES || errno == EPERM) ? DS_ERR_PERMISSION_DENIED
                                                         : DS_ERR_INVALID_ARGUMENT;
        return ds_error_set(err, code, "%s: cannot open: %s", path, strerror(errno));
    }
    int rc = ds_torch_checkpoint_open_fd(fd, path, file_index, out, err);
    close(fd);
    return rc;
}

int ds_torch_checkpoint_open_fd(int fd, const char *path, int file_index,
                                ds_torch_checkpoint **out, ds_error *err)
{
    *out = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: cannot stat: %s", path,
                            strerror(errno));
    if (!S_ISREG(st.st_mode))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: not a regular file", path);
    uint64_t size = (uint64_t)st.st_size;
    const uint8_t *map = NULL;
    if (size > 0) {
        void *m = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: cannot map %llu bytes: %s",
                                path, (unsigned long long)size, strerror(errno));
        map = m;
    }
    int rc = make(path, map ? map : (const uint8_t *)"", size, file_index, map != NULL, out, err);
    if (rc != DS_OK && map)
        munmap((void *)map, (size_t)size);
    return rc;
}

void ds_torch_checkpoint_close(ds_torch_checkpoint *ckpt)
{
    if (!ckpt)
        return;
    checkpoint *c = (checkpoint *)ckpt;
    if (c->mapped)
        munmap((void *)ckpt->map, (size_t)ckpt->file_size);
    ds_state_dict_free(&ckpt->tensors);
    free(ckpt->path);
    free(c);
}
