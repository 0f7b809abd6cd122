#include "tokenizers/codepoints.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

static int reserve(ds__cps *b, size_t more)
{
    if (b->oom)
        return -1;
    if (b->n + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + more)
        cap *= 2;
    int32_t *v = realloc(b->v, cap * sizeof *v);
    if (!v) {
        b->oom = 1;
        return -1;
    }
    b->v = v;
    b->cap = cap;
    return 0;
}

void ds__cps_push(ds__cps *b, int32_t cp)
{
    if (reserve(b, 1) == 0)
        b->v[b->n++] = cp;
}

void ds__cps_append(ds__cps *b, const int32_t *cps, size_t n)
{
    if (n && reserve(b, n) == 0) {
        memcpy(b->v + b->n, cps, n * sizeof *cps);
        b->n += n;
    }
}

void ds__cps_append_utf8(ds__cps *b, const char *s, size_t len)
{
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0) {
            b->oom = 1;  /* the tables are valid UTF-8; never reached */
            return;
        }
        ds__cps_push(b, cp);
        i += (size_t)k;
    }
}

int ds__cps_from_utf8(const char *s, size_t len, ds__cps *out, ds_error *err)
{
    out->n = 0;
    if (reserve(out, len) != 0)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory decoding %zu bytes",
                            len);
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "text is not valid UTF-8: bad sequence at byte %zu (0x%02x)", i,
                                p[i]);
        out->v[out->n++] = cp;
        i += (size_t)k;
    }
    return DS_OK;
}

int ds__cps_to_utf8(const ds__cps *b, char **out, size_t *len, ds_error *err)
{
    *out = NULL;
    *len = 0;
    if (b->oom)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory building text");
    char *s = malloc(b->n * 4 + 1);
    if (!s)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory encoding %zu characters",
                            b->n);
    size_t k = 0;
    for (size_t i = 0; i < b->n; i++)
        k += (size_t)utf8proc_encode_char(b->v[i], (utf8proc_uint8_t *)s + k);
    s[k] = '\0';
    *out = s;
    *len = k;
    return DS_OK;
}

void ds__cps_free(ds__cps *b)
{
    free(b->v);
    *b = (ds__cps){0};
}
