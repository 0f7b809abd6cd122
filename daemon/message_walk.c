#include "daemon/message_walk.h"

#include <stdio.h>
#include <string.h>
#include <utf8proc.h>

/* "run_step.inputs[2].name": built up as the walk descends, cut back as it returns. */
typedef struct field_path {
    char text[256];
    size_t len;
} field_path;

static size_t path_push(field_path *p, const char *name, int repeated, size_t index)
{
    size_t saved = p->len;
    int n = repeated ? snprintf(p->text + p->len, sizeof p->text - p->len, "%s%s[%zu]",
                                p->len ? "." : "", name, index)
                     : snprintf(p->text + p->len, sizeof p->text - p->len, "%s%s",
                                p->len ? "." : "", name);
    if (n > 0)
        p->len = p->len + (size_t)n < sizeof p->text ? p->len + (size_t)n : sizeof p->text - 1;
    return saved;
}

static void path_pop(field_path *p, size_t saved)
{
    p->len = saved;
    p->text[saved] = '\0';
}

/* The members of field `f` present in `msg`: *items points at `count` slots, each a char * for
 * a string, a ProtobufCMessage * for a message, a ProtobufCBinaryData for bytes. */
static size_t field_items(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f,
                          const void **items)
{
    const char *base = (const char *)msg;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        if (*(const uint32_t *)(base + f->quantifier_offset) != f->id)
            return 0;
    }
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        *items = *(const void *const *)(base + f->offset);
        return *items ? *(const size_t *)(base + f->quantifier_offset) : 0;
    }
    /* A proto3 `optional` bytes field says whether it is present; strings and messages are
     * pointers, NULL or the empty string when absent. */
    if (f->type == PROTOBUF_C_TYPE_BYTES && f->label == PROTOBUF_C_LABEL_OPTIONAL &&
        !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && f->quantifier_offset &&
        !*(const protobuf_c_boolean *)(base + f->quantifier_offset))
        return 0;
    *items = base + f->offset;
    return 1;
}

static int check_utf8(const char *s, const field_path *path, ds_error *err)
{
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    size_t len = strlen(s), at = 0;
    while (at < len) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t n = utf8proc_iterate(p + at, (utf8proc_ssize_t)(len - at), &cp);
        if (n <= 0)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s is not valid UTF-8 (byte %zu of %zu, 0x%02x, starts no valid "
                                "sequence)",
                                path->text, at, len, (unsigned)p[at]);
        at += (size_t)n;
    }
    return DS_OK;
}

/* Visits one member of the leaf type a walk looks for, with its path. */
typedef int (*leaf_fn)(const void *item, const field_path *path, void *user, ds_error *err);

/* Every member of type `leaf` (strings or bytes) in msg and its messages, down to
 * DS_MESSAGE_WALK_MAX_DEPTH: a string's char *, or a bytes field's ProtobufCBinaryData *, to
 * `visit`, until it returns other than DS_OK. */
static int walk(const ProtobufCMessage *msg, ProtobufCType leaf, field_path *path, int depth,
                leaf_fn visit, void *user, ds_error *err)
{
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    if (depth > DS_MESSAGE_WALK_MAX_DEPTH)
        return DS_OK;
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        if (f->type != leaf && f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        const void *items = NULL;
        size_t count = field_items(msg, f, &items);
        int repeated = f->label == PROTOBUF_C_LABEL_REPEATED;
        for (size_t k = 0; k < count; k++) {
            const void *item = f->type == PROTOBUF_C_TYPE_BYTES
                                   ? (const void *)&((const ProtobufCBinaryData *)items)[k]
                                   : ((const void *const *)items)[k];
            if (!item)
                continue;
            size_t saved = path_push(path, f->name, repeated, k);
            int rc = f->type == leaf ? visit(item, path, user, err)
                                     : walk(item, leaf, path, depth + 1, visit, user, err);
            path_pop(path, saved);
            if (rc != DS_OK)
                return rc;
        }
    }
    return DS_OK;
}

static int check_string(const void *item, const field_path *path, void *user, ds_error *err)
{
    (void)user;
    return check_utf8(item, path, err);
}

int ds_message_check_strings(const ProtobufCMessage *msg, ds_error *err)
{
    field_path path = {.len = 0};
    path.text[0] = '\0';
    return walk(msg, PROTOBUF_C_TYPE_STRING, &path, 0, check_string, NULL, err);
}

static int add_bytes(const void *item, const field_path *path, void *user, ds_error *err)
{
    (void)path;
    (void)err;
    *(uint64_t *)user += ((const ProtobufCBinaryData *)item)->len;
    return DS_OK;
}

uint64_t ds_message_bytes_total(const ProtobufCMessage *msg)
{
    field_path path = {.len = 0};
    uint64_t total = 0;
    path.text[0] = '\0';
    walk(msg, PROTOBUF_C_TYPE_BYTES, &path, 0, add_bytes, &total, NULL);
    return total;
}

/* --- wire encoding -------------------------------------------------------------------------- */

/* 0 and the value, or -1 past the end or beyond ten bytes. */
static int read_varint(const uint8_t *data, size_t len, size_t *at, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 70 && *at < len; shift += 7) {
        uint8_t b = data[(*at)++];
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

static int walk_wire(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                     field_path *path, int depth, ds_error *err)
{
    /* Counts of the repeated fields' entries so far, for "[k]" in the path. */
    size_t seen[64] = {0};
    size_t at = 0;
    if (depth > DS_MESSAGE_WALK_MAX_DEPTH)
        return DS_OK;
    while (at < len) {
        uint64_t key, n;
        /* protobuf-c unpacked these bytes already: anything it would refuse cannot be here,
         * so a surprise only ends the walk. */
        if (read_varint(data, len, &at, &key) != 0)
            return DS_OK;
        switch (key & 7) {
        case PROTOBUF_C_WIRE_TYPE_VARINT:
            if (read_varint(data, len, &at, &n) != 0)
                return DS_OK;
            continue;
        case PROTOBUF_C_WIRE_TYPE_64BIT: at += 8; continue;
        case PROTOBUF_C_WIRE_TYPE_32BIT: at += 4; continue;
        case PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED: break;
        default: return DS_OK;
        }
        if (read_varint(data, len, &at, &n) != 0 || n > len - at)
            return DS_OK;
        const uint8_t *value = data + at;
        at += (size_t)n;
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field(desc, (unsigned)(key >> 3));
        if (!f || (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE))
            continue;
        size_t index = (size_t)(f - desc->fields);
        int repeated = f->label == PROTOBUF_C_LABEL_REPEATED && index < 64;
        size_t saved = path_push(path, f->name, repeated, repeated ? seen[index] : 0);
        if (repeated)
            seen[index]++;
        int rc = DS_OK;
        if (f->type == PROTOBUF_C_TYPE_STRING) {
            const uint8_t *nul = memchr(value, 0, (size_t)n);
            if (nul)
                rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                  "%s holds a NUL byte (byte %zu of %zu); strings may not "
                                  "contain NUL",
                                  path->text, (size_t)(nul - value), (size_t)n);
        } else {
            rc = walk_wire(f->descriptor, value, (size_t)n, path, depth + 1, err);
        }
        path_pop(path, saved);
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

int ds_wire_check_strings_nul(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                              size_t len, ds_error *err)
{
    field_path path = {.len = 0};
    path.text[0] = '\0';
    return walk_wire(desc, data, len, &path, 0, err);
}
