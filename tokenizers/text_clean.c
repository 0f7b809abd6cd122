#include "tokenizers/text_clean.h"

#include <stdbool.h>
#include <stdint.h>

#include "tokenizers/codepoints.h"
#include "tokenizers/ftfy.h"
#include "tokenizers/html_unescape.h"

/* Python's str.isspace(): bidirectional class WS, B or S, or category Zs. */
static bool py_isspace(int32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* The `regex` module's \s on str: the White_Space property. */
static bool regex_space(int32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static void strip(ds__cps *t)
{
    size_t a = 0, b = t->n;
    while (a < b && py_isspace(t->v[a]))
        a++;
    while (b > a && py_isspace(t->v[b - 1]))
        b--;
    for (size_t i = a; i < b; i++)
        t->v[i - a] = t->v[i];
    t->n = b - a;
}

static void collapse_spaces(ds__cps *t)
{
    size_t k = 0;
    bool in_run = false;
    for (size_t i = 0; i < t->n; i++) {
        bool space = regex_space(t->v[i]);
        if (!space)
            t->v[k++] = t->v[i];
        else if (!in_run)
            t->v[k++] = ' ';
        in_run = space;
    }
    t->n = k;
}

int ds_text_clean_whitespace(const char *text, size_t len, char **out, size_t *out_len,
                             ds_error *err)
{
    *out = NULL;
    *out_len = 0;
    ds__cps a = {0}, b = {0};
    int rc = ds__cps_from_utf8(text, len, &a, err);
    if (rc == DS_OK)
        rc = ds__ftfy_fix_cps(a.v, a.n, &b, err);
    if (rc == DS_OK) {
        a.n = 0;
        ds__html_unescape(b.v, b.n, &a);
        b.n = 0;
        ds__html_unescape(a.v, a.n, &b);
        strip(&b);
        collapse_spaces(&b);
        strip(&b);
        rc = ds__cps_to_utf8(&b, out, out_len, err);
    }
    ds__cps_free(&a);
    ds__cps_free(&b);
    return rc;
}
