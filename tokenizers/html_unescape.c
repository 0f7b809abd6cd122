#include "tokenizers/html_unescape.h"

#include <stdbool.h>

#include "tokenizers/text_tables.h"

/* Python's _charref pattern takes at most this many name characters. */
#define NAME_MAX_CHARS 32

static bool is_digit(int32_t c)
{
    return c >= '0' && c <= '9';
}

static bool is_hex_digit(int32_t c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int hex_value(int32_t c)
{
    return is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* The character class [^\t\n\f <&#;] of a named reference. */
static bool is_name_char(int32_t c)
{
    return c != '\t' && c != '\n' && c != '\f' && c != ' ' && c != '<' && c != '&' && c != '#' &&
           c != ';';
}

static void append_text(ds__cps *out, const char *utf8)
{
    size_t len = 0;
    while (utf8[len])
        len++;
    ds__cps_append_utf8(out, utf8, len);
}

/* `&#...`: in[i] is '&', in[i + 1] is '#'. Returns the match length, 0 when there is none. */
static size_t numeric_ref(const int32_t *in, size_t n, size_t i, ds__cps *out)
{
    size_t k = i + 2;
    int base = 10;
    if (k < n && is_digit(in[k])) {
        base = 10;
    } else if (k + 1 < n && (in[k] == 'x' || in[k] == 'X') && is_hex_digit(in[k + 1])) {
        base = 16;
        k++;
    } else {
        return 0;
    }
    /* Python's int is unbounded; past U+10FFFF every value decodes alike, so stop growing. */
    int64_t num = 0;
    for (; k < n && (base == 10 ? is_digit(in[k]) : is_hex_digit(in[k])); k++)
        if (num <= 0x10FFFF)
            num = num * base + hex_value(in[k]);
    if (k < n && in[k] == ';')
        k++;
    int32_t replacement = ds__html_charref_replacement(num);
    if (replacement >= 0)
        ds__cps_push(out, replacement);
    else if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF)
        ds__cps_push(out, 0xFFFD);
    else if (!ds__html_charref_dropped(num))
        ds__cps_push(out, (int32_t)num);
    return k - i;
}

/* `&name`: in[i] is '&'. Returns the match length, 0 when there is none. */
static size_t named_ref(const int32_t *in, size_t n, size_t i, ds__cps *out)
{
    size_t start = i + 1, k = start;
    while (k < n && k - start < NAME_MAX_CHARS && is_name_char(in[k]))
        k++;
    if (k == start)
        return 0;
    if (k < n && in[k] == ';')
        k++;
    size_t len = k - start;
    /* Entity names are ASCII: only the ASCII head of the reference can name one. */
    char name[NAME_MAX_CHARS + 2];
    size_t ascii = 0;
    while (ascii < len && in[start + ascii] < 0x80) {
        name[ascii] = (char)in[start + ascii];
        ascii++;
    }
    const char *text = ascii == len ? ds__html5_entity(name, len) : NULL;
    if (text) {
        append_text(out, text);
        return k - i;
    }
    /* The longest known prefix, down to two characters; the rest stays as written. */
    for (size_t x = len - 1; x > 1; x--) {
        if (x <= ascii && (text = ds__html5_entity(name, x))) {
            append_text(out, text);
            ds__cps_append(out, in + start + x, len - x);
            return k - i;
        }
    }
    ds__cps_push(out, '&');
    ds__cps_append(out, in + start, len);
    return k - i;
}

void ds__html_unescape(const int32_t *in, size_t n, ds__cps *out)
{
    for (size_t i = 0; i < n;) {
        size_t used = 0;
        if (in[i] == '&')
            used = i + 1 < n && in[i + 1] == '#' ? numeric_ref(in, n, i, out)
                                                 : named_ref(in, n, i, out);
        if (used) {
            i += used;
        } else {
            ds__cps_push(out, in[i]);
            i++;
        }
    }
}
