#include "tokenizers/ftfy.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizers/html_unescape.h"
#include "tokenizers/text_tables.h"

/* ftfy's max_decode_length: longer lines are fixed in pieces of this many code points. */
#define MAX_SEGMENT 1000000

/* HTML_ENTITY_RE = &#?[0-9A-Za-z]{1,24}; */
#define ENTITY_MAX_CHARS 24

static bool is_ascii_alnum(int32_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool is_ascii_letter(int32_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool contains(const int32_t *s, size_t n, int32_t c)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == c)
            return true;
    return false;
}

/* unescape_html: entity names are looked up as written; a numeric reference is decoded by
 * html.unescape and kept as written when that leaves its ';' behind (a partial decode). */
static void unescape_html(const ds__cps *in, ds__cps *out)
{
    const int32_t *s = in->v;
    size_t n = in->n;
    for (size_t i = 0; i < n;) {
        if (s[i] != '&') {
            ds__cps_push(out, s[i++]);
            continue;
        }
        bool hash = i + 1 < n && s[i + 1] == '#';
        size_t start = i + 1 + hash, k = start;
        while (k < n && k - start <= ENTITY_MAX_CHARS && is_ascii_alnum(s[k]))
            k++;
        if (k == start || k - start > ENTITY_MAX_CHARS || k >= n || s[k] != ';') {
            ds__cps_push(out, s[i++]);
            continue;
        }
        size_t end = k + 1; /* past the ';' */
        const char *text = NULL;
        if (!hash) {
            char name[ENTITY_MAX_CHARS + 2];
            size_t len = end - start;
            for (size_t j = 0; j < len; j++)
                name[j] = (char)s[start + j];
            text = ds__html5_entity(name, len);
            if (!text)
                text = ds__ftfy_upper_entity(name, len);
        }
        if (text) {
            ds__cps_append_utf8(out, text, strlen(text));
        } else if (hash) {
            size_t mark = out->n;
            ds__html_unescape(s + i, end - i, out);
            if (!out->oom && contains(out->v + mark, out->n - mark, ';')) {
                out->n = mark;
                ds__cps_append(out, s + i, end - i);
            }
        } else {
            ds__cps_append(out, s + i, end - i);
        }
        i = end;
    }
}

static void fix_c1_controls(ds__cps *t)
{
    for (size_t i = 0; i < t->n; i++)
        t->v[i] = ds__c1_as_windows_1252(t->v[i]);
}

/* ftfy's LIGATURES: Latin typographic ligatures and legacy digraphs, not æ or œ. */
static const char *ligature(int32_t c)
{
    switch (c) {
    case 0x0132: return "IJ";
    case 0x0133: return "ij";
    case 0x0149: return "\xCA\xBCn"; /* ŉ -> ʼn */
    case 0x01F1: return "DZ";
    case 0x01F2: return "Dz";
    case 0x01F3: return "dz";
    case 0x01C4: return "D\xC5\xBD"; /* DŽ */
    case 0x01C5: return "D\xC5\xBE"; /* Dž */
    case 0x01C6: return "d\xC5\xBE"; /* dž */
    case 0x01C7: return "LJ";
    case 0x01C8: return "Lj";
    case 0x01C9: return "lj";
    case 0x01CA: return "NJ";
    case 0x01CB: return "Nj";
    case 0x01CC: return "nj";
    case 0xFB00: return "ff";
    case 0xFB01: return "fi";
    case 0xFB02: return "fl";
    case 0xFB03: return "ffi";
    case 0xFB04: return "ffl";
    case 0xFB05: return "\xC5\xBFt"; /* ſt */
    case 0xFB06: return "st";
    default: return NULL;
    }
}

static void fix_latin_ligatures(const ds__cps *in, ds__cps *out)
{
    for (size_t i = 0; i < in->n; i++) {
        const char *text = ligature(in->v[i]);
        if (text)
            ds__cps_append_utf8(out, text, strlen(text));
        else
            ds__cps_push(out, in->v[i]);
    }
}

/* ftfy's WIDTH_MAP: U+3000 -> ' ', and each of U+FF01..U+FFEF that NFKC changes -> its NFKC
 * form (possibly two characters: U+FFE3 -> ' ' U+0304). */
static void fix_character_width(const ds__cps *in, ds__cps *out)
{
    for (size_t i = 0; i < in->n; i++) {
        int32_t c = in->v[i];
        if (c == 0x3000) {
            ds__cps_push(out, ' ');
            continue;
        }
        if (c < 0xFF01 || c > 0xFFEF) {
            ds__cps_push(out, c);
            continue;
        }
        utf8proc_uint8_t utf8[4];
        utf8proc_ssize_t len = utf8proc_encode_char(c, utf8);
        utf8proc_uint8_t *nfkc = NULL;
        utf8proc_ssize_t k = utf8proc_map(utf8, len, &nfkc,
                                          UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
        if (k > 0)
            ds__cps_append_utf8(out, (const char *)nfkc, (size_t)k);
        else if (k == 0)
            ds__cps_push(out, c);
        else
            out->oom = 1;
        free(nfkc);
    }
}

static void uncurl_quotes(ds__cps *t)
{
    for (size_t i = 0; i < t->n; i++) {
        int32_t c = t->v[i];
        if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B))
            t->v[i] = '\'';
        else if (c >= 0x201C && c <= 0x201F)
            t->v[i] = '"';
    }
}

static void fix_line_breaks(const ds__cps *in, ds__cps *out)
{
    for (size_t i = 0; i < in->n; i++) {
        int32_t c = in->v[i];
        if (c == '\r' && i + 1 < in->n && in->v[i + 1] == '\n')
            continue; /* the '\n' follows */
        if (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x0085)
            c = '\n';
        ds__cps_push(out, c);
    }
}

/* ANSI_RE = \033\[((?:\d|;)*)([a-zA-Z]), where \d is any Unicode decimal digit (Nd). */
static void remove_terminal_escapes(const ds__cps *in, ds__cps *out)
{
    const int32_t *s = in->v;
    for (size_t i = 0; i < in->n;) {
        if (s[i] == 0x1B && i + 1 < in->n && s[i + 1] == '[') {
            size_t k = i + 2;
            while (k < in->n &&
                   (s[k] == ';' || utf8proc_category(s[k]) == UTF8PROC_CATEGORY_ND))
                k++;
            if (k < in->n && is_ascii_letter(s[k])) {
                i = k + 1;
                continue;
            }
        }
        ds__cps_push(out, s[i++]);
    }
}

static bool is_removed_control(int32_t c)
{
    return (c <= 0x08) || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
           (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

static void remove_control_chars(ds__cps *t)
{
    size_t k = 0;
    for (size_t i = 0; i < t->n; i++)
        if (!is_removed_control(t->v[i]))
            t->v[k++] = t->v[i];
    t->n = k;
}

static int nfc(const ds__cps *in, ds__cps *out, ds_error *err)
{
    char *utf8 = NULL;
    size_t len = 0;
    int rc = ds__cps_to_utf8(in, &utf8, &len, err);
    if (rc != DS_OK)
        return rc;
    if (len == 0) {
        free(utf8);
        return DS_OK;
    }
    utf8proc_uint8_t *composed = NULL;
    utf8proc_ssize_t k = utf8proc_map((const utf8proc_uint8_t *)utf8, (utf8proc_ssize_t)len,
                                      &composed, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    free(utf8);
    if (k < 0)
        return ds_error_set(err, DS_ERR_INTERNAL, "ftfy: NFC normalisation failed: %s",
                            utf8proc_errmsg(k));
    ds__cps_append_utf8(out, (const char *)composed, (size_t)k);
    free(composed);
    return DS_OK;
}

static void swap(ds__cps *a, ds__cps *b)
{
    ds__cps t = *a;
    *a = *b;
    *b = t;
}

/* fix_and_explain on one segment: the steps, again until the text stops changing. Appends the
 * fixed segment to out. */
static int fix_segment(const int32_t *seg, size_t n, bool unescape, ds__cps *out, ds_error *err)
{
    ds__cps cur = {0}, next = {0}, before = {0};
    int rc = DS_OK;
    ds__cps_append(&cur, seg, n);
    for (;;) {
        before.n = 0;
        ds__cps_append(&before, cur.v, cur.n);
#define STEP(call) \
    do {           \
        next.n = 0; \
        call;      \
        swap(&cur, &next); \
    } while (0)
        if (unescape)
            STEP(unescape_html(&cur, &next));
        fix_c1_controls(&cur);
        STEP(fix_latin_ligatures(&cur, &next));
        STEP(fix_character_width(&cur, &next));
        uncurl_quotes(&cur);
        STEP(fix_line_breaks(&cur, &next));
        STEP(remove_terminal_escapes(&cur, &next));
        remove_control_chars(&cur);
        STEP(rc = nfc(&cur, &next, err));
#undef STEP
        if (rc != DS_OK)
            break;
        if (cur.oom || next.oom || before.oom) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "ftfy: out of memory");
            break;
        }
        if (cur.n == before.n &&
            (cur.n == 0 || memcmp(cur.v, before.v, cur.n * sizeof *cur.v) == 0))
            break;
    }
    if (rc == DS_OK) {
        ds__cps_append(out, cur.v, cur.n);
        if (out->oom)
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "ftfy: out of memory");
    }
    ds__cps_free(&cur);
    ds__cps_free(&next);
    ds__cps_free(&before);
    return rc;
}

int ds__ftfy_fix_cps(const int32_t *in, size_t n, ds__cps *out, ds_error *err)
{
    out->n = 0;
    out->oom = 0;
    /* ftfy's "auto" HTML unescaping stays off for the rest of the text once a segment holds
     * a '<'. */
    bool unescape = true;
    for (size_t pos = 0; pos < n;) {
        size_t brk = pos;
        while (brk < n && in[brk] != '\n')
            brk++;
        brk = brk < n ? brk + 1 : n;
        if (brk - pos > MAX_SEGMENT)
            brk = pos + MAX_SEGMENT;
        if (unescape && contains(in + pos, brk - pos, '<'))
            unescape = false;
        int rc = fix_segment(in + pos, brk - pos, unescape, out, err);
        if (rc != DS_OK)
            return rc;
        pos = brk;
    }
    return DS_OK;
}

int ds_ftfy_fix_text(const char *text, size_t len, char **out, size_t *out_len, ds_error *err)
{
    *out = NULL;
    *out_len = 0;
    ds__cps in = {0}, fixed = {0};
    int rc = ds__cps_from_utf8(text, len, &in, err);
    if (rc == DS_OK)
        rc = ds__ftfy_fix_cps(in.v, in.n, &fixed, err);
    if (rc == DS_OK)
        rc = ds__cps_to_utf8(&fixed, out, out_len, err);
    ds__cps_free(&in);
    ds__cps_free(&fixed);
    return rc;
}
