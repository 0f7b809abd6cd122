/* json.dumps-compatible output; see pyjson.h for the rules reproduced. */
#include "client/pyjson.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pyjson_buf_free(pyjson_buf *buf)
{
    free(buf->data);
    buf->data = NULL;
    buf->len = buf->cap = 0;
}

int pyjson_append(pyjson_buf *buf, const char *s, size_t n)
{
    if (buf->oom)
        return -1;
    if (n >= SIZE_MAX / 2 - buf->len) {
        buf->oom = true;
        return -1;
    }
    if (buf->len + n + 1 > buf->cap) {
        size_t cap = buf->cap ? buf->cap : 64;
        while (cap < buf->len + n + 1)
            cap *= 2;
        char *data = realloc(buf->data, cap);
        if (!data) {
            buf->oom = true;
            return -1;
        }
        buf->data = data;
        buf->cap = cap;
    }
    memcpy(buf->data + buf->len, s, n);
    buf->len += n;
    buf->data[buf->len] = '\0';
    return 0;
}

int pyjson_append_str(pyjson_buf *buf, const char *s)
{
    return pyjson_append(buf, s, strlen(s));
}

/* Decodes one UTF-8 sequence at s[0..n); returns its length and the code point, or 0 when the
 * first byte does not start a valid, shortest-form, non-surrogate sequence. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if ((c & 0xE0) == 0xC0) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return len;
}

/* One UTF-16 code unit as json.dumps(ensure_ascii=True) writes it. Working per code unit makes
 * astral characters come out as surrogate pairs and lone surrogates as themselves, as in Python. */
static int emit_unit(pyjson_buf *buf, uint32_t u)
{
    char tmp[8];
    switch (u) {
    case '"': return pyjson_append(buf, "\\\"", 2);
    case '\\': return pyjson_append(buf, "\\\\", 2);
    case '\n': return pyjson_append(buf, "\\n", 2);
    case '\r': return pyjson_append(buf, "\\r", 2);
    case '\t': return pyjson_append(buf, "\\t", 2);
    case '\b': return pyjson_append(buf, "\\b", 2);
    case '\f': return pyjson_append(buf, "\\f", 2);
    default: break;
    }
    if (u >= 0x20 && u <= 0x7E) {
        tmp[0] = (char)u;
        return pyjson_append(buf, tmp, 1);
    }
    snprintf(tmp, sizeof tmp, "\\u%04x", (unsigned)u);
    return pyjson_append(buf, tmp, 6);
}

static int emit_code_point(pyjson_buf *buf, uint32_t cp)
{
    if (cp < 0x10000)
        return emit_unit(buf, cp);
    cp -= 0x10000;
    if (emit_unit(buf, 0xD800 | (cp >> 10)) != 0)
        return -1;
    return emit_unit(buf, 0xDC00 | (cp & 0x3FF));
}

int pyjson_quote(pyjson_buf *buf, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    if (pyjson_append(buf, "\"", 1) != 0)
        return -1;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = utf8_decode(p + i, n - i, &cp);
        if (len == 0) {
            cp = 0xDC00 | p[i];
            len = 1;
        }
        if (emit_code_point(buf, cp) != 0)
            return -1;
        i += len;
    }
    return pyjson_append(buf, "\"", 1);
}

void pyjson_format_double(double v, char out[32])
{
    if (isnan(v)) {
        strcpy(out, "NaN");
        return;
    }
    if (isinf(v)) {
        strcpy(out, v < 0 ? "-Infinity" : "Infinity");
        return;
    }
    /* Shortest digits that read back to the same double, as Python's repr picks them. */
    char sci[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(sci, sizeof sci, "%.*e", prec - 1, v);
        if (strtod(sci, NULL) == v)
            break;
    }
    char digits[24];
    size_t nd = 0;
    const char *c = sci;
    bool negative = false;
    if (*c == '-') {
        negative = true;
        c++;
    }
    for (; *c && *c != 'e'; c++)
        if (*c >= '0' && *c <= '9')
            digits[nd++] = *c;
    int exponent = atoi(c + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';

    char *o = out;
    if (negative)
        *o++ = '-';
    if (exponent < -4 || exponent >= 16) {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            memcpy(o, digits + 1, nd - 1);
            o += nd - 1;
        }
        /* |exponent| <= 324 for a finite double. */
        char tail[16];
        snprintf(tail, sizeof tail, "e%c%02u", exponent < 0 ? '-' : '+', (unsigned)abs(exponent) % 1000u);
        strcpy(o, tail);
        return;
    }
    if (exponent < 0) {
        *o++ = '0';
        *o++ = '.';
        for (int i = 0; i < -exponent - 1; i++)
            *o++ = '0';
        memcpy(o, digits, nd);
        o += nd;
    } else {
        size_t int_len = (size_t)exponent + 1;
        for (size_t i = 0; i < int_len; i++)
            *o++ = i < nd ? digits[i] : '0';
        *o++ = '.';
        if (nd > int_len) {
            memcpy(o, digits + int_len, nd - int_len);
            o += nd - int_len;
        } else {
            *o++ = '0';
        }
    }
    *o = '\0';
}

/* ---- writer ---- */

void pyjson_writer_init(pyjson_writer *w, pyjson_buf *buf, int indent)
{
    memset(w, 0, sizeof *w);
    w->buf = buf;
    w->indent = indent < 0 ? PYJSON_COMPACT : indent;
}

static void writer_append(pyjson_writer *w, const char *s, size_t n)
{
    if (!w->failed && pyjson_append(w->buf, s, n) != 0)
        w->failed = true;
}

static void newline_indent(pyjson_writer *w, int depth)
{
    writer_append(w, "\n", 1);
    for (int i = 0; i < depth * w->indent; i++)
        writer_append(w, " ", 1);
}

/* Separator before a value or key inside the current container. */
static bool pre_value(pyjson_writer *w)
{
    if (w->failed)
        return false;
    if (w->after_key) {
        w->after_key = false;
        return true;
    }
    if (w->depth == 0)
        return true;
    bool *has = &w->has_items[w->depth - 1];
    if (*has)
        writer_append(w, ",", 1);
    if (w->indent >= 0)
        newline_indent(w, w->depth);
    else if (*has)
        writer_append(w, " ", 1);
    *has = true;
    return !w->failed;
}

static void begin(pyjson_writer *w, char open)
{
    if (!pre_value(w))
        return;
    if (w->depth >= PYJSON_MAX_DEPTH) {
        w->failed = true;
        return;
    }
    writer_append(w, &open, 1);
    w->has_items[w->depth++] = false;
}

static void end(pyjson_writer *w, char close)
{
    if (w->failed)
        return;
    if (w->depth == 0 || w->after_key) {
        w->failed = true;
        return;
    }
    w->depth--;
    if (w->has_items[w->depth] && w->indent >= 0)
        newline_indent(w, w->depth);
    writer_append(w, &close, 1);
}

void pyjson_begin_object(pyjson_writer *w) { begin(w, '{'); }
void pyjson_end_object(pyjson_writer *w) { end(w, '}'); }
void pyjson_begin_array(pyjson_writer *w) { begin(w, '['); }
void pyjson_end_array(pyjson_writer *w) { end(w, ']'); }

static void key_n(pyjson_writer *w, const char *key, size_t n)
{
    if (w->after_key || w->depth == 0) {
        w->failed = true;
        return;
    }
    if (!pre_value(w))
        return;
    if (pyjson_quote(w->buf, key, n) != 0)
        w->failed = true;
    writer_append(w, ": ", 2);
    w->after_key = true;
}

void pyjson_key(pyjson_writer *w, const char *key)
{
    key_n(w, key, strlen(key));
}

static void token(pyjson_writer *w, const char *s, size_t n)
{
    if (pre_value(w))
        writer_append(w, s, n);
}

void pyjson_string(pyjson_writer *w, const char *s)
{
    if (!s) {
        pyjson_null(w);
        return;
    }
    if (pre_value(w) && pyjson_quote(w->buf, s, strlen(s)) != 0)
        w->failed = true;
}

void pyjson_uint(pyjson_writer *w, uint64_t v)
{
    char tmp[24];
    token(w, tmp, (size_t)snprintf(tmp, sizeof tmp, "%" PRIu64, v));
}

void pyjson_int(pyjson_writer *w, int64_t v)
{
    char tmp[24];
    token(w, tmp, (size_t)snprintf(tmp, sizeof tmp, "%" PRId64, v));
}

void pyjson_double(pyjson_writer *w, double v)
{
    char tmp[32];
    pyjson_format_double(v, tmp);
    token(w, tmp, strlen(tmp));
}

void pyjson_bool(pyjson_writer *w, bool v)
{
    token(w, v ? "true" : "false", v ? 4 : 5);
}

void pyjson_null(pyjson_writer *w)
{
    token(w, "null", 4);
}

void pyjson_raw(pyjson_writer *w, const char *json)
{
    if (!json || !json[0]) {
        pyjson_null(w);
        return;
    }
    if (!pre_value(w))
        return;
    if (pyjson_reformat(w->buf, json, strlen(json), w->indent, w->depth) != 0)
        w->failed = true;
}

int pyjson_writer_finish(pyjson_writer *w)
{
    return (w->failed || w->depth != 0 || w->after_key || w->buf->oom) ? -1 : 0;
}

/* ---- reformatting JSON text ---- */

typedef struct parser {
    const char *s;
    size_t n;
    size_t pos;
    pyjson_writer *w;
} parser;

static void skip_ws(parser *p)
{
    while (p->pos < p->n && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
                             p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

static bool literal(parser *p, const char *word)
{
    size_t len = strlen(word);
    if (p->n - p->pos < len || memcmp(p->s + p->pos, word, len) != 0)
        return false;
    p->pos += len;
    return true;
}

static int hex4(const char *s, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Re-escapes the string token at p->pos (on its opening quote) straight into out, one UTF-16
 * code unit at a time: what json.loads would decode, json.dumps writes back. */
static int string_token(parser *p, pyjson_buf *out)
{
    const unsigned char *s = (const unsigned char *)p->s;
    p->pos++;
    if (pyjson_append(out, "\"", 1) != 0)
        return -1;
    while (p->pos < p->n) {
        unsigned char c = s[p->pos];
        if (c == '"') {
            p->pos++;
            return pyjson_append(out, "\"", 1);
        }
        if (c < 0x20)
            return -1;
        if (c == '\\') {
            if (p->n - p->pos < 2)
                return -1;
            char e = p->s[p->pos + 1];
            uint32_t unit;
            p->pos += 2;
            switch (e) {
            case '"': unit = '"'; break;
            case '\\': unit = '\\'; break;
            case '/': unit = '/'; break;
            case 'b': unit = '\b'; break;
            case 'f': unit = '\f'; break;
            case 'n': unit = '\n'; break;
            case 'r': unit = '\r'; break;
            case 't': unit = '\t'; break;
            case 'u':
                if (p->n - p->pos < 4 || hex4(p->s + p->pos, &unit) != 0)
                    return -1;
                p->pos += 4;
                break;
            default: return -1;
            }
            if (emit_unit(out, unit) != 0)
                return -1;
            continue;
        }
        uint32_t cp;
        size_t len = utf8_decode(s + p->pos, p->n - p->pos, &cp);
        if (len == 0)
            return -1;
        if (emit_code_point(out, cp) != 0)
            return -1;
        p->pos += len;
    }
    return -1;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int number_token(parser *p)
{
    size_t start = p->pos;
    bool real = false;
    if (p->pos < p->n && p->s[p->pos] == '-')
        p->pos++;
    if (p->pos >= p->n || !is_digit(p->s[p->pos]))
        return -1;
    if (p->s[p->pos] == '0')
        p->pos++;
    else
        while (p->pos < p->n && is_digit(p->s[p->pos]))
            p->pos++;
    if (p->pos < p->n && p->s[p->pos] == '.') {
        real = true;
        p->pos++;
        if (p->pos >= p->n || !is_digit(p->s[p->pos]))
            return -1;
        while (p->pos < p->n && is_digit(p->s[p->pos]))
            p->pos++;
    }
    if (p->pos < p->n && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        real = true;
        p->pos++;
        if (p->pos < p->n && (p->s[p->pos] == '+' || p->s[p->pos] == '-'))
            p->pos++;
        if (p->pos >= p->n || !is_digit(p->s[p->pos]))
            return -1;
        while (p->pos < p->n && is_digit(p->s[p->pos]))
            p->pos++;
    }
    size_t len = p->pos - start;
    if (!real) {
        /* Python's int has no negative zero. */
        if (len == 2 && memcmp(p->s + start, "-0", 2) == 0)
            token(p->w, "0", 1);
        else
            token(p->w, p->s + start, len);
        return 0;
    }
    char *copy = malloc(len + 1);
    if (!copy)
        return -1;
    memcpy(copy, p->s + start, len);
    copy[len] = '\0';
    double v = strtod(copy, NULL);
    free(copy);
    pyjson_double(p->w, v);
    return 0;
}

static int parse_value(parser *p);

static int parse_container(parser *p, bool object)
{
    char close = object ? '}' : ']';
    if (object)
        pyjson_begin_object(p->w);
    else
        pyjson_begin_array(p->w);
    if (p->w->failed)
        return -1;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == close) {
        p->pos++;
        end(p->w, close);
        return 0;
    }
    for (;;) {
        skip_ws(p);
        if (object) {
            if (p->pos >= p->n || p->s[p->pos] != '"')
                return -1;
            pyjson_buf key = {0};
            if (!pre_value(p->w) || string_token(p, &key) != 0) {
                pyjson_buf_free(&key);
                return -1;
            }
            writer_append(p->w, key.data, key.len);
            writer_append(p->w, ": ", 2);
            p->w->after_key = true;
            pyjson_buf_free(&key);
            skip_ws(p);
            if (p->pos >= p->n || p->s[p->pos] != ':')
                return -1;
            p->pos++;
        }
        if (parse_value(p) != 0)
            return -1;
        skip_ws(p);
        if (p->pos >= p->n)
            return -1;
        if (p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->s[p->pos] != close)
            return -1;
        p->pos++;
        end(p->w, close);
        return p->w->failed ? -1 : 0;
    }
}

static int parse_value(parser *p)
{
    skip_ws(p);
    if (p->pos >= p->n)
        return -1;
    switch (p->s[p->pos]) {
    case '{': return parse_container(p, true);
    case '[': return parse_container(p, false);
    case '"':
        if (!pre_value(p->w))
            return -1;
        return string_token(p, p->w->buf);
    case 't':
        if (!literal(p, "true"))
            return -1;
        pyjson_bool(p->w, true);
        return 0;
    case 'f':
        if (!literal(p, "false"))
            return -1;
        pyjson_bool(p->w, false);
        return 0;
    case 'n':
        if (!literal(p, "null"))
            return -1;
        pyjson_null(p->w);
        return 0;
    case 'N':
        if (!literal(p, "NaN"))
            return -1;
        pyjson_double(p->w, NAN);
        return 0;
    case 'I':
        if (!literal(p, "Infinity"))
            return -1;
        pyjson_double(p->w, INFINITY);
        return 0;
    case '-':
        if (literal(p, "-Infinity")) {
            pyjson_double(p->w, -INFINITY);
            return 0;
        }
        return number_token(p);
    default: return number_token(p);
    }
}

int pyjson_reformat(pyjson_buf *buf, const char *json, size_t n, int indent, int level)
{
    size_t saved = buf->len;
    if (level < 0 || level >= PYJSON_MAX_DEPTH)
        return -1;
    pyjson_writer w;
    pyjson_writer_init(&w, buf, indent);
    /* Indentation of the embedded text continues from the enclosing document's level. */
    w.depth = level;
    w.after_key = true;
    parser p = {.s = json, .n = n, .pos = 0, .w = &w};
    int rc = parse_value(&p);
    skip_ws(&p);
    if (rc == 0 && (p.pos != n || w.failed || w.depth != level))
        rc = -1;
    if (rc != 0 && !buf->oom) {
        buf->len = saved;
        if (buf->data)
            buf->data[saved] = '\0';
    }
    return rc;
}

/* ---- Python str() of a list of str ---- */

static int py_repr(pyjson_buf *buf, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    char quote = (memchr(s, '\'', n) && !memchr(s, '"', n)) ? '"' : '\'';
    char tmp[12];
    if (pyjson_append(buf, &quote, 1) != 0)
        return -1;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = utf8_decode(p + i, n - i, &cp);
        int rc;
        if (len == 0) {
            rc = pyjson_append(buf, tmp, (size_t)snprintf(tmp, sizeof tmp, "\\udc%02x", p[i]));
            len = 1;
        } else if (cp == (uint32_t)quote || cp == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)cp;
            rc = pyjson_append(buf, tmp, 2);
        } else if (cp == '\n') {
            rc = pyjson_append(buf, "\\n", 2);
        } else if (cp == '\r') {
            rc = pyjson_append(buf, "\\r", 2);
        } else if (cp == '\t') {
            rc = pyjson_append(buf, "\\t", 2);
        } else if (cp < 0x20 || cp == 0x7F) {
            rc = pyjson_append(buf, tmp, (size_t)snprintf(tmp, sizeof tmp, "\\x%02x", (unsigned)cp));
        } else {
            rc = pyjson_append(buf, s + i, len);
        }
        if (rc != 0)
            return -1;
        i += len;
    }
    return pyjson_append(buf, &quote, 1);
}

int pyjson_py_str_list(pyjson_buf *buf, const char *const *items, size_t count, bool collapse)
{
    if (collapse && count == 1)
        return pyjson_append_str(buf, items[0]);
    if (pyjson_append(buf, "[", 1) != 0)
        return -1;
    for (size_t i = 0; i < count; i++) {
        if (i > 0 && pyjson_append(buf, ", ", 2) != 0)
            return -1;
        if (py_repr(buf, items[i]) != 0)
            return -1;
    }
    return pyjson_append(buf, "]", 1);
}
