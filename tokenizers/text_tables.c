#include "tokenizers/text_tables.h"

#include <stdlib.h>
#include <string.h>

struct html_entity {
    const char *name;
    const char *text;
};

struct html_charref {
    int32_t num;
    int32_t replacement;
};

#include "tokenizers/text_tables.inc"

struct key {
    const char *s;
    size_t len;
};

/* Byte order, as the generator sorted the names. */
static int compare_name(const void *k, const void *e)
{
    const struct key *key = k;
    const char *name = ((const struct html_entity *)e)->name;
    size_t n = strlen(name);
    int c = memcmp(key->s, name, key->len < n ? key->len : n);
    if (c)
        return c;
    return key->len < n ? -1 : key->len > n;
}

static const char *lookup(const struct html_entity *table, size_t count, const char *name,
                          size_t len)
{
    struct key key = {name, len};
    const struct html_entity *e = bsearch(&key, table, count, sizeof *table, compare_name);
    return e ? e->text : NULL;
}

const char *ds__html5_entity(const char *name, size_t len)
{
    return lookup(html5_entities, sizeof html5_entities / sizeof html5_entities[0], name, len);
}

const char *ds__ftfy_upper_entity(const char *name, size_t len)
{
    return lookup(ftfy_upper_entities, sizeof ftfy_upper_entities / sizeof ftfy_upper_entities[0],
                  name, len);
}

int32_t ds__html_charref_replacement(int64_t num)
{
    size_t lo = 0, hi = sizeof html_invalid_charrefs / sizeof html_invalid_charrefs[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (html_invalid_charrefs[mid].num == num)
            return html_invalid_charrefs[mid].replacement;
        if (html_invalid_charrefs[mid].num < num)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

bool ds__html_charref_dropped(int64_t num)
{
    size_t lo = 0, hi = sizeof html_invalid_codepoints / sizeof html_invalid_codepoints[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (html_invalid_codepoints[mid] == num)
            return true;
        if (html_invalid_codepoints[mid] < num)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

int32_t ds__c1_as_windows_1252(int32_t cp)
{
    return cp >= 0x80 && cp <= 0x9F ? c1_to_windows_1252[cp - 0x80] : cp;
}
