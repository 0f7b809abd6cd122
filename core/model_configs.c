#include "core/model_configs.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/kwargs.h"

/* A config file is a hand-written list; anything near this size is a mistake, not a table. */
#define CONFIG_FILE_MAX (16u * 1024u * 1024u)

struct ds_config_table {
    ds_model_config *entries;  /* [0, builtin_count) point at static strings; the rest own theirs */
    size_t builtin_count;
    size_t count;
    size_t capacity;
    uint32_t *next;            /* per entry: position + 1 of the next entry with the same hash */
    uint32_t *index;           /* open addressing over distinct hashes: first position + 1 */
    size_t index_size;         /* power of two, at least twice the distinct hash count */
};

static uint64_t hash_key(const char *hash) { return XXH3_64bits(hash, 32); }

/* The slot holding hash's chain, or the empty slot where it would go. */
static size_t find_slot(const ds_model_config *entries, const uint32_t *index, size_t size,
                        const char *hash)
{
    size_t mask = size - 1;
    size_t slot = (size_t)hash_key(hash) & mask;
    while (index[slot] && memcmp(entries[index[slot] - 1].model_hash, hash, 32) != 0)
        slot = (slot + 1) & mask;
    return slot;
}

/* Links entry i into index/next; index has room. */
static void link_entry(ds_model_config *entries, uint32_t *index, size_t size, uint32_t *next,
                       size_t i)
{
    size_t slot = find_slot(entries, index, size, entries[i].model_hash);
    next[i] = 0;
    if (!index[slot]) {
        index[slot] = (uint32_t)(i + 1);
        return;
    }
    size_t tail = index[slot] - 1;
    while (next[tail])
        tail = next[tail] - 1;
    next[tail] = (uint32_t)(i + 1);
}

static void free_owned(ds_model_config *c)
{
    free((char *)c->model_name);
    free((char *)c->model_class);
    free((char *)c->state_dict_converter);
    free((char *)c->extra_kwargs_json);
    free((char *)c->quant_config_json);
    free((char *)c->source);
}

void ds_config_table_free(ds_config_table *table)
{
    if (!table)
        return;
    for (size_t i = table->builtin_count; i < table->count; i++)
        free_owned(&table->entries[i]);
    free(table->entries);
    free(table->next);
    free(table->index);
    free(table);
}

/* Makes room for `more` entries; on failure the table is as it was (only capacity may grow). */
static int reserve(ds_config_table *table, size_t more)
{
    size_t need = table->count + more;
    if (need < table->count || need > UINT32_MAX - 1)
        return DS_ERR_RESOURCE_EXHAUSTED;
    if (need > table->capacity) {
        size_t capacity = table->capacity ? table->capacity : 256;
        while (capacity < need)
            capacity *= 2;
        ds_model_config *entries = realloc(table->entries, capacity * sizeof *entries);
        if (!entries)
            return DS_ERR_RESOURCE_EXHAUSTED;
        table->entries = entries;
        uint32_t *next = realloc(table->next, capacity * sizeof *next);
        if (!next)
            return DS_ERR_RESOURCE_EXHAUSTED;
        table->next = next;
        table->capacity = capacity;
    }
    /* Entries bound the distinct hashes, so a load factor of one half holds after the add. */
    if (need * 2 > table->index_size) {
        size_t size = table->index_size ? table->index_size : 512;
        while (size < need * 2)
            size *= 2;
        uint32_t *index = calloc(size, sizeof *index);
        if (!index)
            return DS_ERR_RESOURCE_EXHAUSTED;
        for (size_t i = 0; i < table->count; i++)
            link_entry(table->entries, index, size, table->next, i);
        free(table->index);
        table->index = index;
        table->index_size = size;
    }
    return DS_OK;
}

int ds_config_table_new(ds_config_table **out, ds_error *err)
{
    *out = NULL;
    ds_config_table *table = calloc(1, sizeof *table);
    if (!table || reserve(table, ds_builtin_model_config_count) != DS_OK) {
        ds_config_table_free(table);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for the config table");
    }
    for (size_t i = 0; i < ds_builtin_model_config_count; i++) {
        table->entries[i] = ds_builtin_model_configs[i];
        link_entry(table->entries, table->index, table->index_size, table->next, i);
    }
    table->count = table->builtin_count = ds_builtin_model_config_count;
    *out = table;
    return DS_OK;
}

size_t ds_config_table_count(const ds_config_table *table) { return table->count; }

const ds_model_config *ds_config_table_at(const ds_config_table *table, size_t index)
{
    return index < table->count ? &table->entries[index] : NULL;
}

size_t ds_config_table_match(const ds_config_table *table, const char *hash,
                             const ds_model_config **out, size_t max)
{
    if (strnlen(hash, 33) != 32 || table->index_size == 0)
        return 0;
    size_t slot = find_slot(table->entries, table->index, table->index_size, hash);
    size_t found = 0;
    for (uint32_t pos = table->index[slot]; pos; pos = table->next[pos - 1]) {
        if (found < max)
            out[found] = &table->entries[pos - 1];
        found++;
    }
    return found;
}

static int is_lower_hex32(const char *s, size_t len)
{
    if (len != 32)
        return 0;
    for (size_t i = 0; i < 32; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static const char *const known_keys[] = {"model_hash",           "model_name",
                                         "model_class",          "state_dict_converter",
                                         "extra_kwargs",         "quant_config"};

/* A non-empty string field; *out is NULL when absent and not required. */
static int get_string(const char *source, size_t i, json_t *obj, const char *key, int required,
                      const char **out, ds_error *err)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v) {
        if (required)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: entry %zu: missing required key \"%s\"", source, i, key);
        return DS_OK;
    }
    if (!json_is_string(v))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: entry %zu: \"%s\" must be a string, got %s", source, i, key,
                            ds__json_type_name(v));
    if (json_string_length(v) == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: entry %zu: \"%s\" must not be empty", source, i, key);
    *out = json_string_value(v);
    return DS_OK;
}

/* A JSON object field, re-serialised compactly; *out (malloc'd) is NULL when absent. */
static int get_object(const char *source, size_t i, json_t *obj, const char *key, char **out,
                      ds_error *err)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v)
        return DS_OK;
    if (!json_is_object(v))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: entry %zu: \"%s\" must be an object, got %s", source, i, key,
                            ds__json_type_name(v));
    *out = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII |
                             JSON_REAL_PRECISION(17));
    if (!*out)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "%s: entry %zu: out of memory storing \"%s\"", source, i, key);
    return DS_OK;
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* Validates and copies entry i of the array into *c (which owns its strings on success). */
static int parse_entry(const char *source, size_t i, json_t *obj, ds_model_config *c,
                       ds_error *err)
{
    memset(c, 0, sizeof *c);
    if (!json_is_object(obj))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: entry %zu: expected an object, got %s", source, i,
                            ds__json_type_name(obj));
    const char *key;
    json_t *value;
    json_object_foreach(obj, key, value) {
        size_t k = 0;
        while (k < sizeof known_keys / sizeof known_keys[0] && strcmp(key, known_keys[k]) != 0)
            k++;
        if (k == sizeof known_keys / sizeof known_keys[0])
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: entry %zu: unknown key \"%s\" (expected model_hash, "
                                "model_name, model_class, state_dict_converter, extra_kwargs, "
                                "quant_config)",
                                source, i, key);
    }
    const char *hash, *name, *cls, *conv;
    int rc;
    if ((rc = get_string(source, i, obj, "model_hash", 1, &hash, err)) != DS_OK)
        return rc;
    if (!is_lower_hex32(hash, strlen(hash)))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: entry %zu: \"model_hash\" must be 32 lowercase hex digits, "
                            "got \"%.64s\"",
                            source, i, hash);
    if ((rc = get_string(source, i, obj, "model_name", 1, &name, err)) != DS_OK ||
        (rc = get_string(source, i, obj, "model_class", 1, &cls, err)) != DS_OK ||
        (rc = get_string(source, i, obj, "state_dict_converter", 0, &conv, err)) != DS_OK)
        return rc;
    char *extra = NULL, *quant = NULL;
    if ((rc = get_object(source, i, obj, "extra_kwargs", &extra, err)) != DS_OK)
        return rc;
    if ((rc = get_object(source, i, obj, "quant_config", &quant, err)) != DS_OK) {
        free(extra);
        return rc;
    }
    memcpy(c->model_hash, hash, 33);
    c->extra_kwargs_json = extra;
    c->quant_config_json = quant;
    c->model_name = strdup(name);
    c->model_class = strdup(cls);
    c->state_dict_converter = dup_or_null(conv);
    c->source = strdup(source);
    if (!c->model_name || !c->model_class || (conv && !c->state_dict_converter) || !c->source) {
        free_owned(c);
        memset(c, 0, sizeof *c);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: entry %zu: out of memory",
                            source, i);
    }
    return DS_OK;
}

int ds_config_table_add_json(ds_config_table *table, const char *json, size_t len,
                             const char *source, ds_error *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: line %d column %d: %s", source,
                            jerr.line, jerr.column, jerr.text);
    int rc;
    size_t n = 0, parsed = 0;
    ds_model_config *fresh = NULL;
    if (!json_is_array(root)) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "%s: expected a JSON array of config objects, got %s", source,
                          ds__json_type_name(root));
        goto fail;
    }
    n = json_array_size(root);
    fresh = calloc(n ? n : 1, sizeof *fresh);
    if (!fresh) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory for %zu entries",
                          source, n);
        goto fail;
    }
    for (; parsed < n; parsed++) {
        rc = parse_entry(source, parsed, json_array_get(root, parsed), &fresh[parsed], err);
        if (rc != DS_OK)
            goto fail;
    }
    rc = reserve(table, n);
    if (rc != DS_OK) {
        ds_error_set(err, rc, "%s: out of memory adding %zu entries", source, n);
        goto fail;
    }
    /* Nothing below can fail: the table changes only once every entry is known good. */
    for (size_t i = 0; i < n; i++) {
        table->entries[table->count] = fresh[i];
        link_entry(table->entries, table->index, table->index_size, table->next, table->count);
        table->count++;
    }
    free(fresh);
    json_decref(root);
    return DS_OK;
fail:
    for (size_t i = 0; i < parsed; i++)
        free_owned(&fresh[i]);
    free(fresh);
    json_decref(root);
    return rc;
}

int ds_config_table_add_file(ds_config_table *table, const char *path, ds_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ds_error_set(err,
                            errno == ENOENT   ? DS_ERR_NOT_FOUND
                            : errno == EACCES ? DS_ERR_PERMISSION_DENIED
                                              : DS_ERR_INVALID_ARGUMENT,
                            "%s: cannot open: %s", path, strerror(errno));
    int rc;
    char *text = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: cannot stat: %s", path,
                          strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > (off_t)CONFIG_FILE_MAX) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "%s: expected a regular file of at most %u bytes", path,
                          CONFIG_FILE_MAX);
        goto done;
    }
    size_t size = (size_t)st.st_size, got = 0;
    text = malloc(size ? size : 1);
    if (!text) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory reading %zu bytes",
                          path, size);
        goto done;
    }
    while (got < size) {
        ssize_t r = read(fd, text + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: read failed at byte %zu: %s",
                              path, got, r < 0 ? strerror(errno) : "file shrank");
            goto done;
        }
        got += (size_t)r;
    }
    rc = ds_config_table_add_json(table, text, size, path, err);
done:
    free(text);
    close(fd);
    return rc;
}
