#include "daemon/pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Entries are individually allocated so pointers held by jobs survive array growth. */
typedef struct entry_list {
    ds_pool_model **items;
    size_t count;
    size_t cap;
} entry_list;

/* A model whose last reference went while a job pinned it is held only by that job's pin
 * and freed by the last unpin, so the pool tracks referenced models only. */
struct ds_pool {
    entry_list listed;    /* referenced models, in insertion order */
    uint64_t next_id;
};

static int list_push(entry_list *list, ds_pool_model *entry)
{
    if (list->count == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 8;
        ds_pool_model **grown = realloc(list->items, cap * sizeof *grown);
        if (!grown)
            return DS_ERR_RESOURCE_EXHAUSTED;
        list->items = grown;
        list->cap = cap;
    }
    list->items[list->count++] = entry;
    return DS_OK;
}

static void list_remove(entry_list *list, ds_pool_model *entry)
{
    for (size_t i = 0; i < list->count; i++) {
        if (list->items[i] == entry) {
            memmove(list->items + i, list->items + i + 1,
                    (list->count - i - 1) * sizeof *list->items);
            list->count--;
            return;
        }
    }
}

static void entry_free(ds_pool_model *entry)
{
    for (size_t i = 0; i < entry->client_count; i++)
        free(entry->clients[i]);
    free(entry->clients);
    free(entry->client_uids);
    ds_loaded_model_free(entry->model);
    free(entry);
}

int ds_pool_new(ds_pool **out, ds_error *err)
{
    ds_pool *pool = calloc(1, sizeof *pool);
    if (!pool)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory creating the pool");
    pool->next_id = 1;
    *out = pool;
    return DS_OK;
}

void ds_pool_free(ds_pool *pool)
{
    if (!pool)
        return;
    for (size_t i = 0; i < pool->listed.count; i++)
        entry_free(pool->listed.items[i]);
    free(pool->listed.items);
    free(pool);
}

static int same_string(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

static int same_model(const ds_loaded_model *a, const ds_loaded_model *b)
{
    if (strcmp(a->model_hash, b->model_hash) != 0 || !same_string(a->model_name, b->model_name) ||
        !same_string(a->model_class, b->model_class) ||
        !same_string(a->state_dict_converter, b->state_dict_converter) ||
        !same_string(a->extra_kwargs_json, b->extra_kwargs_json) ||
        memcmp(&a->vram_config, &b->vram_config, sizeof a->vram_config) != 0)
        return 0;
    if (!a->files || !b->files || a->files->count != b->files->count)
        return 0;
    for (size_t i = 0; i < a->files->count; i++) {
        const ds_file_identity *x = &a->files->files[i].identity;
        const ds_file_identity *y = &b->files->files[i].identity;
        if (x->dev != y->dev || x->ino != y->ino || x->size != y->size ||
            x->mtime_ns != y->mtime_ns)
            return 0;
    }
    return 1;
}

/* The two parallel arrays of references grown together; the capacity counts only once both
 * have it. */
static int grow_clients(ds_pool_model *entry)
{
    size_t cap = entry->client_cap ? entry->client_cap * 2 : 4;
    char **names = realloc(entry->clients, cap * sizeof *names);
    uid_t *uids = names ? realloc(entry->client_uids, cap * sizeof *uids) : NULL;
    if (names)
        entry->clients = names;
    if (uids)
        entry->client_uids = uids;
    entry->client_cap = uids ? cap : entry->client_cap;
    return uids ? DS_OK : DS_ERR_RESOURCE_EXHAUSTED;
}

static int add_client(ds_pool_model *entry, uid_t uid, const char *client)
{
    if (entry->client_count == entry->client_cap && grow_clients(entry) != DS_OK)
        return DS_ERR_RESOURCE_EXHAUSTED;
    char *copy = strdup(client);
    if (!copy)
        return DS_ERR_RESOURCE_EXHAUSTED;
    entry->client_uids[entry->client_count] = uid;
    entry->clients[entry->client_count++] = copy;
    return DS_OK;
}

size_t ds_pool_references(const ds_pool_model *entry, uid_t uid, const char *client)
{
    size_t n = 0;
    for (size_t i = 0; i < entry->client_count; i++)
        n += entry->client_uids[i] == uid && strcmp(entry->clients[i], client) == 0;
    return n;
}

int ds_pool_insert(ds_pool *pool, ds_loaded_model *model, uid_t uid, const char *client,
                   uint64_t now_unix_ms, ds_pool_model **out, int *reused, ds_error *err)
{
    *reused = 0;
    for (size_t i = 0; i < pool->listed.count; i++) {
        ds_pool_model *existing = pool->listed.items[i];
        /* A stale model is what the files were: the new load is of what they are now. */
        if (existing->model->files && ds_model_files_is_stale(existing->model->files))
            continue;
        if (same_model(existing->model, model)) {
            ds_loaded_model_free(model);
            if (add_client(existing, uid, client) != DS_OK)
                return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                                    "out of memory adding a reference to %s", existing->id);
            *reused = 1;
            *out = existing;
            return DS_OK;
        }
    }

    ds_pool_model *entry = calloc(1, sizeof *entry);
    if (!entry)
        goto fail;
    entry->model = model;
    entry->loaded_at_unix_ms = now_unix_ms;
    snprintf(entry->id, sizeof entry->id, "m%llu", (unsigned long long)pool->next_id);
    if (add_client(entry, uid, client) != DS_OK || list_push(&pool->listed, entry) != DS_OK)
        goto fail;
    /* Only a model that made it into the pool consumes an id. */
    pool->next_id++;
    *out = entry;
    return DS_OK;

fail:
    if (entry)
        entry_free(entry);
    else
        ds_loaded_model_free(model);
    return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory adding a model to the pool");
}

ds_pool_model *ds_pool_find(ds_pool *pool, const char *id)
{
    for (size_t i = 0; i < pool->listed.count; i++)
        if (strcmp(pool->listed.items[i]->id, id) == 0)
            return pool->listed.items[i];
    return NULL;
}

size_t ds_pool_count(const ds_pool *pool) { return pool->listed.count; }

ds_pool_model *ds_pool_at(ds_pool *pool, size_t index)
{
    return index < pool->listed.count ? pool->listed.items[index] : NULL;
}

/* "uid:1000 of uid 1000 (2), web-ui of uid 1001": who holds references, for the messages. */
static void describe_holders(const ds_pool_model *entry, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < entry->client_count; i++) {
        size_t seen = 0, times = 0;
        for (size_t j = 0; j < entry->client_count; j++) {
            if (entry->client_uids[i] == entry->client_uids[j] &&
                strcmp(entry->clients[i], entry->clients[j]) == 0) {
                if (j < i)
                    seen = 1;
                times++;
            }
        }
        if (seen)
            continue;
        unsigned uid = (unsigned)entry->client_uids[i];
        int n = times > 1 ? snprintf(buf + used, size - used, "%s%s of uid %u (%zu)",
                                     used ? ", " : "", entry->clients[i], uid, times)
                          : snprintf(buf + used, size - used, "%s%s of uid %u", used ? ", " : "",
                                     entry->clients[i], uid);
        if (n < 0 || (size_t)n >= size - used)
            return;
        used += (size_t)n;
    }
}

/* 1 + the index of the most recent reference named `client`, of `uid` unless `any_uid`; 0 when
 * there is none. */
static size_t find_reference(const ds_pool_model *entry, uid_t uid, int any_uid,
                             const char *client)
{
    size_t i = entry->client_count;
    while (i > 0 && ((!any_uid && entry->client_uids[i - 1] != uid) ||
                     strcmp(entry->clients[i - 1], client) != 0))
        i--;
    return i;
}

int ds_pool_unref(ds_pool *pool, const char *id, uid_t uid, int privileged, const char *client,
                  int all, ds_pool_unref_result *result, ds_error *err)
{
    memset(result, 0, sizeof *result);
    ds_pool_model *entry = ds_pool_find(pool, id);
    if (!entry)
        return ds_error_set(err, DS_ERR_NOT_FOUND, "no model %s in the pool", id);

    char holders[1024];
    if (all) {
        if (!privileged) {
            describe_holders(entry, holders, sizeof holders);
            return ds_error_set(err, DS_ERR_PERMISSION_DENIED,
                                "only the daemon's own uid may unload every reference to %s; uid "
                                "%u may drop its own references only (held by: %s)",
                                id, (unsigned)uid, holders);
        }
        for (size_t i = 0; i < entry->client_count; i++)
            free(entry->clients[i]);
        entry->client_count = 0;
    } else {
        /* This uid's most recent reference under the name goes first; the daemon's uid may
         * then drop another uid's. */
        size_t i = find_reference(entry, uid, 0, client);
        if (i == 0) {
            size_t other = find_reference(entry, uid, 1, client);
            if (other > 0 && !privileged)
                return ds_error_set(err, DS_ERR_PERMISSION_DENIED,
                                    "the reference \"%s\" to %s belongs to uid %u: only that uid "
                                    "or the daemon's own uid may drop it (you are uid %u)",
                                    client, id, (unsigned)entry->client_uids[other - 1],
                                    (unsigned)uid);
            i = other;
        }
        if (i == 0) {
            describe_holders(entry, holders, sizeof holders);
            return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                                "client \"%s\" holds no reference to %s; references are held by: "
                                "%s (name one of yours as the client)",
                                client, id, holders);
        }
        free(entry->clients[i - 1]);
        memmove(entry->clients + i - 1, entry->clients + i,
                (entry->client_count - i) * sizeof *entry->clients);
        memmove(entry->client_uids + i - 1, entry->client_uids + i,
                (entry->client_count - i) * sizeof *entry->client_uids);
        entry->client_count--;
    }

    result->remaining = entry->client_count;
    if (entry->client_count > 0)
        return DS_OK;
    list_remove(&pool->listed, entry);
    result->removed = 1;
    if (entry->pins == 0) {
        entry_free(entry);
        result->freed = 1;
    }
    return DS_OK;
}

void ds_pool_pin(ds_pool_model *entry) { entry->pins++; }

void ds_pool_unpin(ds_pool_model *entry)
{
    entry->pins--;
    if (entry->pins == 0 && entry->client_count == 0)
        entry_free(entry);
}

int ds_pool_check_fresh(const ds_pool_model *entry, ds_error *err)
{
    ds_model_files *files = entry->model->files;
    if (!files)
        return DS_OK;
    int rc = ds_model_files_check(files, err);
    if (rc != DS_OK) {
        ds_error_prefix(err, "model %s (%s) is stale: ", entry->id, entry->model->model_name);
        size_t len = strlen(err->message);
        snprintf(err->message + len, sizeof err->message - len,
                 "; unload it and load the files again");
    }
    return rc;
}

int ds_pool_check_faults(const ds_pool_model *entry, ds_error *err)
{
    ds_model_files *files = entry->model->files;
    long i = files ? ds_model_files_faulted(files) : -1;
    if (i < 0)
        return DS_OK;
    ds_error ignored;
    ds_model_files_check(files, &ignored);
    return ds_error_set(err, DS_ERR_DATA_LOSS,
                        "model %s (%s): %s shrank while this request read its data (a read past "
                        "its new end faulted); the result is lost and the model is stale: "
                        "unload it and load the files again",
                        entry->id, entry->model->model_name, files->files[i].path);
}

const char *ds_pool_stale_reason(const ds_pool_model *entry)
{
    ds_model_files *files = entry->model->files;
    ds_error ignored;
    if (!files || ds_model_files_check(files, &ignored) == DS_OK)
        return NULL;
    return ds_model_files_stale_reason(files);
}

uint64_t ds_pool_model_disk_bytes(const ds_pool_model *entry)
{
    return entry->model->files ? ds_model_files_mapped_bytes(entry->model->files) : 0;
}

/* Models loaded together from one file set share its mapping: it counts once. */
uint64_t ds_pool_disk_bytes(const ds_pool *pool)
{
    uint64_t total = 0;
    for (size_t i = 0; i < pool->listed.count; i++) {
        const ds_model_files *files = pool->listed.items[i]->model->files;
        size_t j = 0;
        while (j < i && pool->listed.items[j]->model->files != files)
            j++;
        if (j == i)
            total += ds_pool_model_disk_bytes(pool->listed.items[i]);
    }
    return total;
}

int ds_pool_check_id(const char *field, const char *id, ds_error *err)
{
    if (!id[0])
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s is empty", field);
    if (strlen(id) >= DS_MODEL_ID_MAX)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s is %zu bytes long; model ids are like \"m1\"", field,
                            strlen(id));
    return DS_OK;
}
