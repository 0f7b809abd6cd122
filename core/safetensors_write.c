#include "core/safetensors_write.h"

#include "core/output_file.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sbuf {
    char *data;
    size_t len, cap;
    int oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->oom = 1;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void putf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(sbuf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    put(b, tmp, n < 0 ? 0 : (size_t)n);
}

static void put_json_string(sbuf *b, const char *s)
{
    put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            put(b, esc, 2);
        } else if (c < 0x20) {
            putf(b, "\\u%04x", c);
        } else {
            put(b, (const char *)&c, 1);
        }
    }
    put(b, "\"", 1);
}

int ds_safetensors_write(const char *path, const ds_st_out_tensor *tensors, size_t count,
                         ds_error *err)
{
    sbuf h = {0};
    uint64_t offset = 0;
    ds_out_chunk *chunks = NULL;
    int rc = DS_OK;
    put(&h, "{", 1);
    for (size_t i = 0; i < count; i++) {
        const ds_st_out_tensor *t = &tensors[i];
        const char *dtype = ds_dtype_safetensors_name(t->dtype);
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim && d < DS_MAX_DIMS; d++)
            numel *= (uint64_t)t->shape[d];
        if (!dtype || t->ndim < 0 || t->ndim > DS_MAX_DIMS ||
            numel * ds_dtype_size(t->dtype) != t->nbytes) {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "%s: tensor \"%s\" has a bad dtype, rank or byte count", path,
                              t->name);
            goto done;
        }
        for (size_t k = 0; k < i; k++)
            if (strcmp(tensors[k].name, t->name) == 0) {
                rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: tensor \"%s\" given twice",
                                  path, t->name);
                goto done;
            }
        if (i)
            put(&h, ",", 1);
        put_json_string(&h, t->name);
        putf(&h, ":{\"dtype\":\"%s\",\"shape\":[", dtype);
        for (int d = 0; d < t->ndim; d++)
            putf(&h, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        putf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
             (unsigned long long)(offset + t->nbytes));
        offset += t->nbytes;
    }
    put(&h, "}", 1);
    while (!h.oom && h.len % 8)
        put(&h, " ", 1);
    if (h.oom) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory writing %s", path);
        goto done;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    chunks = malloc((count + 2) * sizeof *chunks);
    if (!chunks) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory writing %s", path);
        goto done;
    }
    chunks[0] = (ds_out_chunk){len8, 8};
    chunks[1] = (ds_out_chunk){h.data, h.len};
    for (size_t i = 0; i < count; i++)
        chunks[i + 2] = (ds_out_chunk){tensors[i].data, tensors[i].nbytes};
    rc = ds_output_write(path, chunks, count + 2, err);

done:
    free(chunks);
    free(h.data);
    return rc;
}
