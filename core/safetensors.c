#include "core/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Names in messages are cut to this many bytes: a hostile header can hold megabyte names. */
#define NAME_IN_MESSAGE_MAX 200

/* ---- names in messages ---------------------------------------------------------------- */

/* Writes `s` (valid UTF-8) into buf with quotes, backslashes and control characters escaped,
 * so a message stays one printable line whatever the header contains. */
static void quote_name(const char *s, size_t len, char *buf, size_t size)
{
    size_t used = 0;
    size_t limit = size - 8; /* room for an escape, "..." and the NUL */
    size_t i = 0;
    for (; i < len && used < NAME_IN_MESSAGE_MAX && used < limit; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            buf[used++] = '\\';
            buf[used++] = (char)c;
        } else if (c < 0x20 || c == 0x7F) {
            used += (size_t)snprintf(buf + used, size - used, "\\x%02x", c);
        } else {
            buf[used++] = (char)c;
        }
    }
    if (i < len) {
        /* Never end inside a multi-byte character. */
        while (used > 0 && ((unsigned char)buf[used - 1] & 0xC0) == 0x80)
            used--;
        if (used > 0 && (unsigned char)buf[used - 1] >= 0xC0)
            used--;
        memcpy(buf + used, "...", 3);
        used += 3;
    }
    buf[used] = '\0';
}

/* ---- the header parser ---------------------------------------------------------------- */

typedef struct strbuf {
    char *data;
    size_t len;
    size_t cap;
} strbuf;

typedef struct range {
    uint64_t begin;
    uint64_t end;
    size_t index; /* position in st->tensors */
} range;

typedef struct parser {
    const char *file;       /* for messages */
    const uint8_t *start;   /* first header byte, for positions in messages */
    const uint8_t *p;
    const uint8_t *end;
    ds_error *err;
    bool in_entry;          /* messages start with the current top-level key */
    strbuf key;             /* decoded current top-level key */
    strbuf text;            /* decoded current field name or string value */
    strbuf meta_key;        /* decoded current "__metadata__" key */
    range *ranges;
    size_t range_count;
    size_t range_cap;
} parser;

__attribute__((format(printf, 2, 3))) static int fail(parser *ps, const char *fmt, ...)
{
    char detail[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    if (!ps->in_entry)
        return ds_error_set(ps->err, DS_ERR_INVALID_ARGUMENT, "%s: %s", ps->file, detail);
    /* Built only here: formatting the context for every entry would double the parse time. */
    char name[NAME_IN_MESSAGE_MAX + 8];
    quote_name(ps->key.data, ps->key.len, name, sizeof name);
    bool is_metadata = strcmp(ps->key.data, "__metadata__") == 0;
    return ds_error_set(ps->err, DS_ERR_INVALID_ARGUMENT, "%s: %s\"%s\": %s", ps->file,
                        is_metadata ? "" : "tensor ", name, detail);
}

/* What the parser is looking at, for "expected X, found Y" messages. */
static const char *found(const parser *ps, char *buf, size_t size)
{
    if (ps->p >= ps->end)
        return "the end of the header";
    unsigned char c = *ps->p;
    if (c > 0x20 && c < 0x7F)
        snprintf(buf, size, "'%c'", c);
    else
        snprintf(buf, size, "byte 0x%02x", c);
    return buf;
}

static int fail_syntax(parser *ps, const char *expected)
{
    char what[32];
    return fail(ps, "malformed JSON at header byte %zu: expected %s, found %s",
                (size_t)(ps->p - ps->start), expected, found(ps, what, sizeof what));
}

static inline void skip_ws(parser *ps)
{
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\r' || *ps->p == '\t'))
        ps->p++;
}

static inline bool peek(parser *ps, char c)
{
    skip_ws(ps);
    return ps->p < ps->end && *ps->p == (uint8_t)c;
}

static int expect(parser *ps, char c, const char *expected)
{
    if (!peek(ps, c))
        return fail_syntax(ps, expected);
    ps->p++;
    return DS_OK;
}

static int reserve(parser *ps, strbuf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return DS_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data)
        return ds_error_set(ps->err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", ps->file);
    b->data = data;
    b->cap = cap;
    return DS_OK;
}

/* Length of the well-formed UTF-8 sequence at p (no overlongs, surrogates or code points
 * past U+10FFFF), or 0. */
static size_t utf8_sequence(const uint8_t *p, const uint8_t *end)
{
    uint8_t c = p[0];
    size_t n;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2, cp = c & 0x1Fu, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        n = 3, cp = c & 0x0Fu, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4, cp = c & 0x07u, min = 0x10000;
    } else {
        return 0;
    }
    if ((size_t)(end - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3Fu);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

static int hex4(parser *ps, uint32_t *out)
{
    if (ps->end - ps->p < 4)
        return fail_syntax(ps, "4 hex digits after \\u");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = ps->p[i];
        uint32_t d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10u;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10u;
        else
            return fail_syntax(ps, "4 hex digits after \\u");
        v = (v << 4) | d;
    }
    ps->p += 4;
    *out = v;
    return DS_OK;
}

static void put_utf8(strbuf *b, uint32_t cp)
{
    char *o = b->data + b->len;
    if (cp < 0x80) {
        o[0] = (char)cp;
        b->len += 1;
    } else if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        b->len += 2;
    } else if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        b->len += 3;
    } else {
        o[0] = (char)(0xF0 | (cp >> 18));
        o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[3] = (char)(0x80 | (cp & 0x3F));
        b->len += 4;
    }
}

/* After a backslash: decodes one escape into b. */
static int parse_escape(parser *ps, strbuf *b)
{
    if (ps->p >= ps->end)
        return fail_syntax(ps, "an escape character after '\\'");
    uint8_t c = *ps->p;
    static const char simple_in[] = "\"\\/bfnrt";
    static const char simple_out[] = "\"\\/\b\f\n\r\t";
    const char *hit = c ? memchr(simple_in, c, sizeof simple_in - 1) : NULL;
    if (hit) {
        ps->p++;
        b->data[b->len++] = simple_out[hit - simple_in];
        return DS_OK;
    }
    if (c != 'u')
        return fail_syntax(ps, "one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u");
    ps->p++;
    const uint8_t *at = ps->p;
    uint32_t cp;
    int rc = hex4(ps, &cp);
    if (rc != DS_OK)
        return rc;
    if (cp >= 0xDC00 && cp <= 0xDFFF) {
        ps->p = at;
        return fail_syntax(ps, "a code point, not a lone low surrogate");
    }
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u')
            return fail_syntax(ps, "\\u and a low surrogate after a high surrogate");
        ps->p += 2;
        uint32_t low;
        at = ps->p;
        if ((rc = hex4(ps, &low)) != DS_OK)
            return rc;
        if (low < 0xDC00 || low > 0xDFFF) {
            ps->p = at;
            return fail_syntax(ps, "a low surrogate after a high surrogate");
        }
        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    }
    if (cp == 0) {
        ps->p = at;
        /* Names and metadata live on as C strings; an embedded NUL would silently cut them. */
        return fail_syntax(ps, "a string without NUL characters (\\u0000)");
    }
    put_utf8(b, cp);
    return DS_OK;
}

/* Bit c set: byte c stands for itself inside a JSON string (0x20..0x7F but '"' and '\\'). */
static const uint64_t plain_bits[4] = {0xFFFFFFFB00000000u, 0xFFFFFFFFEFFFFFFFu, 0, 0};

static inline bool plain(uint8_t c) { return (plain_bits[c >> 6] >> (c & 63)) & 1; }

/* Advances over plain bytes, eight at a time while possible: names are most of a header. */
static inline void skip_plain(parser *ps)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    while (ps->end - ps->p >= 8) {
        uint64_t v;
        memcpy(&v, ps->p, 8);
        uint64_t quote = v ^ (ones * '"'), backslash = v ^ (ones * '\\');
        /* Flags bytes below 0x20, equal to '"' or '\\', or at/above 0x80. The lowest flag
         * is always a true stop; the byte loop below re-checks it anyway. */
        uint64_t stop = ((v - ones * 0x20) & ~v) | ((quote - ones) & ~quote) |
                        ((backslash - ones) & ~backslash) | v;
        stop &= highs;
        if (stop) {
            ps->p += __builtin_ctzll(stop) / 8;
            break;
        }
        ps->p += 8;
    }
    while (ps->p < ps->end && plain(*ps->p))
        ps->p++;
}

/* At an opening quote: decodes the string into b (NUL-terminated, b->len its length). */
static int parse_string(parser *ps, strbuf *b, const char *expected)
{
    if (!peek(ps, '"'))
        return fail_syntax(ps, expected);
    ps->p++;
    b->len = 0;
    for (;;) {
        const uint8_t *run = ps->p;
        skip_plain(ps);
        size_t n = (size_t)(ps->p - run);
        /* Enough for the run plus one escape or UTF-8 sequence (at most 4 bytes). */
        int rc = reserve(ps, b, n + 4);
        if (rc != DS_OK)
            return rc;
        memcpy(b->data + b->len, run, n);
        b->len += n;
        if (ps->p >= ps->end)
            return fail_syntax(ps, "a closing '\"'");
        uint8_t c = *ps->p;
        if (c == '"') {
            ps->p++;
            b->data[b->len] = '\0';
            return DS_OK;
        }
        if (c == '\\') {
            ps->p++;
            if ((rc = parse_escape(ps, b)) != DS_OK)
                return rc;
        } else if (c < 0x20) {
            return fail_syntax(ps, "no raw control characters in a string");
        } else {
            size_t len = utf8_sequence(ps->p, ps->end);
            if (len == 0)
                return fail_syntax(ps, "valid UTF-8 in a string");
            memcpy(b->data + b->len, ps->p, len);
            b->len += len;
            ps->p += len;
        }
    }
}

/* A JSON integer in [0, 2^63-1]: what a dim or a byte offset may be. */
static int parse_uint(parser *ps, const char *what, uint64_t *out)
{
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '-')
        return fail(ps, "%s has a negative number at header byte %zu", what,
                    (size_t)(ps->p - ps->start));
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
        return fail_syntax(ps, "a non-negative integer");
    const uint8_t *first = ps->p, *q = ps->p;
    const uint64_t limit = (uint64_t)INT64_MAX / 10, last_digit = (uint64_t)INT64_MAX % 10;
    uint64_t v = 0;
    while (q < ps->end && *q >= '0' && *q <= '9') {
        uint64_t d = (uint64_t)(*q - '0');
        if (v >= limit && (v > limit || d > last_digit))
            return fail(ps, "%s has a number above 2^63-1 at header byte %zu", what,
                        (size_t)(first - ps->start));
        v = v * 10 + d;
        q++;
    }
    ps->p = q;
    if (ps->p - first > 1 && *first == '0') {
        ps->p = first;
        return fail_syntax(ps, "a number without leading zeros");
    }
    if (ps->p < ps->end && (*ps->p == '.' || *ps->p == 'e' || *ps->p == 'E'))
        return fail(ps, "%s has a non-integer number at header byte %zu", what,
                    (size_t)(first - ps->start));
    *out = v;
    return DS_OK;
}

/* "[n, n, ...]" with at most `max` entries. */
static int parse_uint_array(parser *ps, const char *what, const char *expected, uint64_t *values,
                            int max, int *count)
{
    int rc = expect(ps, '[', expected);
    if (rc != DS_OK)
        return rc;
    *count = 0;
    if (peek(ps, ']')) {
        ps->p++;
        return DS_OK;
    }
    for (;;) {
        if (*count == max)
            return fail(ps, "%s has more than %d entries", what, max);
        if ((rc = parse_uint(ps, what, &values[*count])) != DS_OK)
            return rc;
        (*count)++;
        if (peek(ps, ',')) {
            ps->p++;
            continue;
        }
        return expect(ps, ']', "',' or ']'");
    }
}

enum { FIELD_DTYPE = 1, FIELD_SHAPE = 2, FIELD_OFFSETS = 4 };

static const char *format_shape(const uint64_t *dims, int ndim, char *buf, size_t size)
{
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%" PRIu64, i ? ", " : "", dims[i]);
    if (used < size)
        snprintf(buf + used, size - used, "]");
    return buf;
}

static bool string_is(const strbuf *b, const char *literal, size_t len)
{
    return b->len == len && memcmp(b->data, literal, len) == 0;
}

static int check_tensor(parser *ps, const ds_safetensors *st, ds_dtype dtype, int ndim,
                        const uint64_t *dims, const uint64_t *offsets, ds_tensor_view *view)
{
    int64_t shape[DS_MAX_DIMS];
    char shape_text[DS_MAX_DIMS * 22 + 4];
    for (int i = 0; i < ndim; i++)
        shape[i] = (int64_t)dims[i];

    /* Row-major strides multiply every non-zero dim, so that product must fit in int64 even
     * for an empty tensor; torch could not build such a tensor either. */
    uint64_t strided = 1, numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (dims[i] != 0 && (__builtin_mul_overflow(strided, dims[i], &strided) ||
                             strided > (uint64_t)INT64_MAX))
            return fail(ps, "shape %s has more than 2^63-1 elements",
                        format_shape(dims, ndim, shape_text, sizeof shape_text));
        numel *= dims[i];
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, (uint64_t)ds_dtype_size(dtype), &nbytes))
        return fail(ps, "shape %s × %s needs more than 2^64-1 bytes",
                    format_shape(dims, ndim, shape_text, sizeof shape_text),
                    ds_dtype_safetensors_name(dtype));
    uint64_t begin = offsets[0], end = offsets[1];
    if (begin > end)
        return fail(ps, "data_offsets [%" PRIu64 ", %" PRIu64 "] have begin > end", begin, end);
    if (end - begin != nbytes)
        return fail(ps, "shape %s × %s needs %" PRIu64 " bytes but data_offsets span %" PRIu64,
                    format_shape(dims, ndim, shape_text, sizeof shape_text),
                    ds_dtype_safetensors_name(dtype), nbytes, end - begin);
    if (end > st->data_size)
        return fail(ps,
                    "data_offsets [%" PRIu64 ", %" PRIu64 "] end beyond the data region of %" PRIu64
                    " bytes",
                    begin, end, st->data_size);
    if (ds_tensor_view_declare(view, dtype, ndim, shape) != DS_OK)
        return ds_error_set(ps->err, DS_ERR_INTERNAL, "%s: shape %s rejected after validation",
                            ps->file, format_shape(dims, ndim, shape_text, sizeof shape_text));
    view->data = st->data + begin;
    return DS_OK;
}

/* At the value of a tensor entry: {"dtype": ..., "shape": [...], "data_offsets": [b, e]}. */
static int parse_tensor(parser *ps, const ds_safetensors *st, ds_tensor_view *view,
                        uint64_t offsets[2])
{
    int rc = expect(ps, '{', "'{' starting the tensor's {dtype, shape, data_offsets}");
    if (rc != DS_OK)
        return rc;
    unsigned seen = 0;
    ds_dtype dtype = DS_DTYPE_INVALID;
    uint64_t dims[DS_MAX_DIMS];
    int ndim = 0, noffsets = 0;
    if (peek(ps, '}')) {
        ps->p++;
    } else {
        for (;;) {
            if ((rc = parse_string(ps, &ps->text, "a field name")) != DS_OK)
                return rc;
            unsigned field;
            if (string_is(&ps->text, "dtype", 5)) {
                field = FIELD_DTYPE;
            } else if (string_is(&ps->text, "shape", 5)) {
                field = FIELD_SHAPE;
            } else if (string_is(&ps->text, "data_offsets", 12)) {
                field = FIELD_OFFSETS;
            } else {
                char name[NAME_IN_MESSAGE_MAX + 8];
                quote_name(ps->text.data, ps->text.len, name, sizeof name);
                return fail(ps, "unknown field \"%s\" (expected dtype, shape, data_offsets)",
                            name);
            }
            if (seen & field)
                return fail(ps, "field \"%s\" appears twice", ps->text.data);
            seen |= field;
            if ((rc = expect(ps, ':', "':'")) != DS_OK)
                return rc;
            if (field == FIELD_DTYPE) {
                if ((rc = parse_string(ps, &ps->text, "a dtype string")) != DS_OK)
                    return rc;
                dtype = ds_dtype_from_safetensors(ps->text.data, ps->text.len);
                if (dtype == DS_DTYPE_INVALID) {
                    char name[NAME_IN_MESSAGE_MAX + 8];
                    quote_name(ps->text.data, ps->text.len, name, sizeof name);
                    return fail(ps, "unknown dtype \"%s\"", name);
                }
            } else if (field == FIELD_SHAPE) {
                if ((rc = parse_uint_array(ps, "shape", "'[' starting shape", dims, DS_MAX_DIMS,
                                          &ndim)) != DS_OK)
                    return rc;
            } else {
                if ((rc = parse_uint_array(ps, "data_offsets", "'[' starting data_offsets",
                                          offsets, 2, &noffsets)) != DS_OK)
                    return rc;
                if (noffsets != 2)
                    return fail(ps, "data_offsets has %d entries, expected 2 [begin, end]",
                                noffsets);
            }
            if (peek(ps, ',')) {
                ps->p++;
                continue;
            }
            if ((rc = expect(ps, '}', "',' or '}'")) != DS_OK)
                return rc;
            break;
        }
    }
    if (!(seen & FIELD_DTYPE))
        return fail(ps, "missing field \"dtype\"");
    if (!(seen & FIELD_SHAPE))
        return fail(ps, "missing field \"shape\"");
    if (!(seen & FIELD_OFFSETS))
        return fail(ps, "missing field \"data_offsets\"");
    return check_tensor(ps, st, dtype, ndim, dims, offsets, view);
}

static int push_metadata(parser *ps, ds_safetensors *st, size_t *cap)
{
    if (st->metadata_count == *cap) {
        size_t n = *cap ? *cap * 2 : 8;
        char **keys = realloc(st->metadata_keys, n * sizeof *keys);
        if (keys)
            st->metadata_keys = keys;
        char **values = keys ? realloc(st->metadata_values, n * sizeof *values) : NULL;
        if (!values)
            return ds_error_set(ps->err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory",
                                ps->file);
        st->metadata_values = values;
        *cap = n;
    }
    char *key = strdup(ps->meta_key.data);
    char *value = key ? strdup(ps->text.data) : NULL;
    if (!value) {
        free(key);
        return ds_error_set(ps->err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", ps->file);
    }
    st->metadata_keys[st->metadata_count] = key;
    st->metadata_values[st->metadata_count] = value;
    st->metadata_count++;
    return DS_OK;
}

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorting a copy finds duplicate keys in n log n: a header of a million keys stays cheap. */
static int check_metadata_duplicates(parser *ps, const ds_safetensors *st)
{
    if (st->metadata_count < 2)
        return DS_OK;
    char **sorted = malloc(st->metadata_count * sizeof *sorted);
    if (!sorted)
        return ds_error_set(ps->err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", ps->file);
    memcpy(sorted, st->metadata_keys, st->metadata_count * sizeof *sorted);
    qsort(sorted, st->metadata_count, sizeof *sorted, compare_strings);
    int rc = DS_OK;
    for (size_t i = 1; i < st->metadata_count; i++) {
        if (strcmp(sorted[i - 1], sorted[i]) == 0) {
            char name[NAME_IN_MESSAGE_MAX + 8];
            quote_name(sorted[i], strlen(sorted[i]), name, sizeof name);
            rc = fail(ps, "duplicate key \"%s\"", name);
            break;
        }
    }
    free(sorted);
    return rc;
}

/* At the value of "__metadata__": an object of string -> string. null is taken as absent,
 * as the safetensors crate (an Option) takes it. */
static int parse_metadata(parser *ps, ds_safetensors *st)
{
    skip_ws(ps);
    if (ps->end - ps->p >= 4 && memcmp(ps->p, "null", 4) == 0) {
        ps->p += 4;
        return DS_OK;
    }
    int rc = expect(ps, '{', "'{' starting an object of string values");
    if (rc != DS_OK)
        return rc;
    if (peek(ps, '}')) {
        ps->p++;
        return DS_OK;
    }
    size_t cap = 0;
    for (;;) {
        if ((rc = parse_string(ps, &ps->meta_key, "a metadata key string")) != DS_OK)
            return rc;
        if ((rc = expect(ps, ':', "':'")) != DS_OK)
            return rc;
        if (!peek(ps, '"')) {
            char name[NAME_IN_MESSAGE_MAX + 8], what[32];
            quote_name(ps->meta_key.data, ps->meta_key.len, name, sizeof name);
            return fail(ps, "value of \"%s\" must be a string, found %s", name,
                        found(ps, what, sizeof what));
        }
        if ((rc = parse_string(ps, &ps->text, "a string")) != DS_OK)
            return rc;
        if ((rc = push_metadata(ps, st, &cap)) != DS_OK)
            return rc;
        if (peek(ps, ',')) {
            ps->p++;
            continue;
        }
        if ((rc = expect(ps, '}', "',' or '}'")) != DS_OK)
            return rc;
        return check_metadata_duplicates(ps, st);
    }
}

static int push_range(parser *ps, uint64_t begin, uint64_t end, size_t index)
{
    if (ps->range_count == ps->range_cap) {
        size_t n = ps->range_cap ? ps->range_cap * 2 : 256;
        range *ranges = realloc(ps->ranges, n * sizeof *ranges);
        if (!ranges)
            return ds_error_set(ps->err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory",
                                ps->file);
        ps->ranges = ranges;
        ps->range_cap = n;
    }
    ps->ranges[ps->range_count++] = (range){begin, end, index};
    return DS_OK;
}

static int compare_ranges(const void *a, const void *b)
{
    const range *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* The safetensors crate (Metadata::validate, then read_metadata's MetadataIncompleteBuffer
 * check) sorts tensors by (begin, end) and requires each to start exactly where the previous
 * one ended, from 0 to the end of the file. We do the same: overlaps, gaps and trailing bytes
 * are all rejected, because a file the crate refuses cannot be loaded by upstream's safe_open,
 * so accepting it would identify a model that upstream cannot load. Zero-size tensors fit
 * anywhere on a boundary, as they do in the crate. */
static int check_layout(parser *ps, const ds_safetensors *st)
{
    /* Writers lay tensors out in header order, so the sort is usually skipped. */
    bool sorted = true;
    for (size_t i = 1; i < ps->range_count && sorted; i++)
        sorted = compare_ranges(&ps->ranges[i - 1], &ps->ranges[i]) < 0;
    if (!sorted)
        qsort(ps->ranges, ps->range_count, sizeof *ps->ranges, compare_ranges);
    uint64_t covered = 0;
    const range *prev = NULL;
    for (size_t i = 0; i < ps->range_count; i++) {
        const range *r = &ps->ranges[i];
        if (r->begin != covered) {
            char name[NAME_IN_MESSAGE_MAX + 8], other[NAME_IN_MESSAGE_MAX + 8];
            const char *n = st->tensors.entries[r->index].name;
            quote_name(n, strlen(n), name, sizeof name);
            if (!prev)
                return fail(ps,
                            "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64
                            "] leave a gap: the first tensor must start at byte 0",
                            name, r->begin, r->end);
            n = st->tensors.entries[prev->index].name;
            quote_name(n, strlen(n), other, sizeof other);
            if (r->begin < covered)
                return fail(ps,
                            "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64
                            "] overlap tensor \"%s\" [%" PRIu64 ", %" PRIu64 "]",
                            name, r->begin, r->end, other, prev->begin, prev->end);
            return fail(ps,
                        "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64
                        "] leave a gap after tensor \"%s\" [%" PRIu64 ", %" PRIu64
                        "]: tensors must cover the data region contiguously",
                        name, r->begin, r->end, other, prev->begin, prev->end);
        }
        covered = r->end;
        prev = r;
    }
    if (covered != st->data_size)
        return fail(ps,
                    "tensors cover %" PRIu64 " bytes but the data region has %" PRIu64
                    " (trailing bytes after the last tensor)",
                    covered, st->data_size);
    return DS_OK;
}

static int parse_entries(parser *ps, ds_safetensors *st, int file_index)
{
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != '{') {
        char what[32];
        return fail(ps, "the header must be a JSON object, found %s",
                    found(ps, what, sizeof what));
    }
    ps->p++;
    int rc;
    bool metadata_seen = false;
    if (peek(ps, '}')) {
        ps->p++;
    } else {
        for (;;) {
            ps->in_entry = false;
            if ((rc = parse_string(ps, &ps->key, "a tensor name string")) != DS_OK)
                return rc;
            ps->in_entry = true;
            bool is_metadata = string_is(&ps->key, "__metadata__", 12);
            if (is_metadata && metadata_seen)
                return fail(ps, "duplicate name");
            if ((rc = expect(ps, ':', "':'")) != DS_OK)
                return rc;
            if (is_metadata) {
                metadata_seen = true;
                if ((rc = parse_metadata(ps, st)) != DS_OK)
                    return rc;
            } else {
                ds_tensor_view view;
                uint64_t offsets[2];
                if ((rc = parse_tensor(ps, st, &view, offsets)) != DS_OK)
                    return rc;
                view.file_index = file_index;
                size_t before = st->tensors.count;
                if (ds_state_dict_put_tensor(&st->tensors, ps->key.data, &view) != DS_OK)
                    return ds_error_set(ps->err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory",
                                        ps->file);
                /* put replaces an existing name in place; one hash lookup instead of two. */
                if (st->tensors.count == before)
                    return fail(ps, "duplicate name");
                if ((rc = push_range(ps, offsets[0], offsets[1], st->tensors.count - 1)) != DS_OK)
                    return rc;
            }
            if (peek(ps, ',')) {
                ps->p++;
                continue;
            }
            if ((rc = expect(ps, '}', "',' or '}'")) != DS_OK)
                return rc;
            break;
        }
    }
    ps->in_entry = false;
    /* Writers pad the header with spaces to 8-byte alignment; JSON whitespace is all we allow. */
    skip_ws(ps);
    if (ps->p < ps->end)
        return fail_syntax(ps, "nothing but whitespace after the header object");
    return check_layout(ps, st);
}

/* ---- lengths, files ------------------------------------------------------------------ */

static uint64_t read_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static int check_lengths(const char *name, uint64_t file_size, uint64_t header_size,
                         ds_error *err)
{
    if (header_size == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: header length is 0, expected a JSON object", name);
    if (header_size > DS_SAFETENSORS_MAX_HEADER)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: header length %" PRIu64 " exceeds the limit of %u bytes", name,
                            header_size, DS_SAFETENSORS_MAX_HEADER);
    if (header_size > file_size - 8)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: header length %" PRIu64 " runs past the end of the file (%" PRIu64
                            " bytes, so at most %" PRIu64 " header bytes)",
                            name, header_size, file_size, file_size - 8);
    return DS_OK;
}

static int check_file_size(const char *name, uint64_t size, ds_error *err)
{
    if (size < 8)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: file is %" PRIu64
                            " bytes, too short for the 8-byte header length of a safetensors file",
                            name, size);
    return DS_OK;
}

static int parse_into(ds_safetensors *st, const uint8_t *bytes, int file_index, ds_error *err)
{
    int rc = check_file_size(st->path, st->file_size, err);
    if (rc != DS_OK)
        return rc;
    st->header_size = read_le64(bytes);
    if ((rc = check_lengths(st->path, st->file_size, st->header_size, err)) != DS_OK)
        return rc;
    st->data = bytes + 8 + st->header_size;
    st->data_size = st->file_size - 8 - st->header_size;

    parser ps = {.file = st->path, .err = err};
    ps.start = ps.p = bytes + 8;
    ps.end = ps.start + st->header_size;
    /* Every tensor has one "data_offsets" key, so counting them (a memmem pass, far cheaper
     * than the parse) sizes the dict once instead of rehashing it as it grows. Names that
     * contain the word only make the estimate larger. */
    size_t expected = 0;
    for (const uint8_t *q = ps.start;
         (q = memmem(q, (size_t)(ps.end - q), "\"data_offsets\"", 14)) != NULL; q += 14)
        expected++;
    if (ds_state_dict_reserve(&st->tensors, expected) != DS_OK)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory for %zu tensors",
                            st->path, expected);
    rc = parse_entries(&ps, st, file_index);
    free(ps.key.data);
    free(ps.text.data);
    free(ps.meta_key.data);
    free(ps.ranges);
    return rc;
}

int ds_safetensors_parse(const char *name, const uint8_t *bytes, uint64_t size, int file_index,
                         ds_safetensors **out, ds_error *err)
{
    *out = NULL;
    ds_safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(name))) {
        ds_safetensors_close(st);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", name);
    }
    ds_state_dict_init(&st->tensors);
    st->file_size = size;
    int rc = parse_into(st, bytes, file_index, err);
    if (rc != DS_OK) {
        ds_safetensors_close(st);
        return rc;
    }
    *out = st;
    return DS_OK;
}

/* Checks that `fd` is a regular file of a size a safetensors file can have; *size is its length. */
static int check_regular(int fd, const char *path, uint64_t *size, ds_error *err)
{
    struct stat sb;
    int rc = DS_OK;
    if (fstat(fd, &sb) != 0)
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: cannot stat: %s", path,
                          strerror(errno));
    else if (S_ISDIR(sb.st_mode))
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "%s: is a directory, expected a safetensors file", path);
    else if (!S_ISREG(sb.st_mode))
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "%s: not a regular file, expected a safetensors file", path);
    else
        rc = check_file_size(path, (uint64_t)sb.st_size, err);
    if (rc == DS_OK)
        *size = (uint64_t)sb.st_size;
    return rc;
}

/* Opens a regular file for reading; *size is its length. */
static int open_regular(const char *path, int *fd_out, uint64_t *size, ds_error *err)
{
    /* O_NONBLOCK so that a FIFO given as a model path cannot hang us in open(). */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        int code = e == ENOENT   ? DS_ERR_NOT_FOUND
                   : e == EACCES ? DS_ERR_PERMISSION_DENIED
                                 : DS_ERR_INVALID_ARGUMENT;
        return ds_error_set(err, code, "%s: cannot open: %s", path, strerror(e));
    }
    int rc = check_regular(fd, path, size, err);
    if (rc != DS_OK) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return DS_OK;
}

int ds_safetensors_open(const char *path, int file_index, ds_safetensors **out, ds_error *err)
{
    *out = NULL;
    int fd = -1;
    uint64_t size;
    int rc = open_regular(path, &fd, &size, err);
    if (rc != DS_OK)
        return rc;
    rc = ds_safetensors_open_fd(fd, path, file_index, out, err);
    close(fd);
    return rc;
}

int ds_safetensors_open_fd(int fd, const char *path, int file_index, ds_safetensors **out,
                           ds_error *err)
{
    *out = NULL;
    uint64_t size;
    int rc = check_regular(fd, path, &size, err);
    if (rc != DS_OK)
        return rc;
    ds_safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", path);
        goto fail;
    }
    ds_state_dict_init(&st->tensors);
    st->file_size = size;
#if SIZE_MAX < UINT64_MAX
    if (size > SIZE_MAX) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: %" PRIu64 " bytes cannot be mapped",
                          path, size);
        goto fail;
    }
#endif
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        int e = errno;
        rc = ds_error_set(err, e == ENOMEM ? DS_ERR_RESOURCE_EXHAUSTED : DS_ERR_INVALID_ARGUMENT,
                          "%s: cannot map %" PRIu64 " bytes: %s", path, size, strerror(e));
        goto fail;
    }
    st->map = map;
    if ((rc = parse_into(st, st->map, file_index, err)) != DS_OK)
        goto fail;
    *out = st;
    return DS_OK;

fail:
    ds_safetensors_close(st);
    return rc;
}

static int pread_all(int fd, const char *path, uint8_t *buf, size_t n, uint64_t offset,
                     ds_error *err)
{
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(fd, buf + done, n - done, (off_t)(offset + done));
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: read failed: %s", path,
                                strerror(errno));
        if (got == 0)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: file ended at byte %" PRIu64 " while reading the header",
                                path, offset + done);
        done += (size_t)got;
    }
    return DS_OK;
}

int ds_safetensors_read_header(const char *path, uint8_t **header, uint64_t *header_size,
                               uint64_t *file_size, ds_error *err)
{
    *header = NULL;
    *header_size = 0;
    int fd;
    uint64_t size;
    int rc = open_regular(path, &fd, &size, err);
    if (rc != DS_OK)
        return rc;
    rc = ds_safetensors_read_header_fd(fd, path, header, header_size, file_size, err);
    close(fd);
    return rc;
}

int ds_safetensors_read_header_fd(int fd, const char *path, uint8_t **header,
                                  uint64_t *header_size, uint64_t *file_size, ds_error *err)
{
    *header = NULL;
    *header_size = 0;
    uint64_t size;
    int rc = check_regular(fd, path, &size, err);
    if (rc != DS_OK)
        return rc;
    uint8_t len[8];
    uint8_t *buf = NULL;
    if ((rc = pread_all(fd, path, len, sizeof len, 0, err)) != DS_OK)
        goto fail;
    uint64_t n = read_le64(len);
    if ((rc = check_lengths(path, size, n, err)) != DS_OK)
        goto fail;
    buf = malloc((size_t)n);
    if (!buf) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory for a %" PRIu64
                          "-byte header", path, n);
        goto fail;
    }
    if ((rc = pread_all(fd, path, buf, (size_t)n, 8, err)) != DS_OK)
        goto fail;
    *header = buf;
    *header_size = n;
    if (file_size)
        *file_size = size;
    return DS_OK;

fail:
    free(buf);
    return rc;
}

void ds_safetensors_close(ds_safetensors *st)
{
    if (!st)
        return;
    if (st->map)
        munmap((void *)st->map, (size_t)st->file_size);
    ds_state_dict_free(&st->tensors);
    for (size_t i = 0; i < st->metadata_count; i++) {
        free(st->metadata_keys[i]);
        free(st->metadata_values[i]);
    }
    free(st->metadata_keys);
    free(st->metadata_values);
    free(st->path);
    free(st);
}
