#include "tokenizers/qwen_tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/kwargs.h"

/* Qwen2's pre-tokenizer regex, used with the vocab.json + merges.txt layout, which does not
 * carry it (transformers' tokenization_qwen2.py, PRETOKENIZE_REGEX). */
static const char qwen2_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* Token texts in messages are cut here: a malformed file can hold huge strings. */
#define QUOTE_MAX 80

enum { TOKEN_PRESENT = 1, TOKEN_SPECIAL = 2 };

/* A BPE merge: the pair (left id << 32 | right id), its rank (earlier merges apply first) and
 * the id of the merged token. */
typedef struct pair_entry {
    uint64_t key;  /* EMPTY_KEY for a free slot; ids are < 2^31 so no real pair equals it */
    int32_t rank;
    int32_t id;
} pair_entry;

#define EMPTY_KEY UINT64_MAX

typedef struct added_token {
    char *content;
    size_t len;
    int32_t id;
    bool special;
    bool normalized;  /* matched in the NFC text rather than the raw text */
} added_token;

struct ds_qwen_tokenizer {
    int32_t byte_id[256];  /* the token of each single byte: where every BPE word starts */
    pair_entry *pairs;     /* open addressing, pair_mask + 1 slots */
    size_t pair_mask;
    int pair_shift;

    size_t vocab_size;     /* largest id + 1 */
    uint32_t *tok_off;     /* [vocab_size + 1] offsets of each token's bytes in tok_bytes */
    uint8_t *tok_bytes;    /* what each token decodes to */
    uint8_t *tok_flags;    /* [vocab_size] TOKEN_* */

    added_token *added;    /* longest first, so the first match at a position is the longest */
    size_t added_count;
    uint8_t added_first[2][256];  /* [normalized][byte]: some added token starts with byte */

    bool nfc;
    pcre2_code *re;
    bool jit;
};

/* ---- GPT-2's byte alphabet ------------------------------------------------------------ */

/* Byte-level BPE spells each byte as one printable code point: printable Latin-1 bytes as
 * themselves, the 68 others (0x00-0x20, 0x7F-0xA0, 0xAD) as U+0100.. in byte order (GPT-2's
 * bytes_to_unicode). Computed, not tabled, so that no shared state needs initialising. */
static bool byte_printable(int b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static int byte_to_cp(int b)
{
    if (byte_printable(b))
        return b;
    return 256 + (b <= 0x20 ? b : b <= 0xA0 ? 33 + (b - 0x7F) : 67);
}

/* The byte a code point of the alphabet spells, or -1. */
static int cp_to_byte(int32_t cp)
{
    if (cp < 256)
        return cp >= 0 && byte_printable(cp) ? cp : -1;
    int k = cp - 256;
    return k < 33 ? k : k < 67 ? 0x7F + (k - 33) : k == 67 ? 0xAD : -1;
}

/* The bytes a token string stands for: each code point mapped back through the alphabet, or,
 * as HF's ByteLevel decoder does for a token with any code point outside it, the token's own
 * UTF-8. Writes at most `len` bytes to out; returns how many. */
static size_t token_to_bytes(const char *s, size_t len, uint8_t *out)
{
    size_t n = 0;
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p + i, (utf8proc_ssize_t)(len - i), &cp);
        int b = k > 0 ? cp_to_byte(cp) : -1;
        if (b < 0) {
            memcpy(out, s, len);
            return len;
        }
        out[n++] = (uint8_t)b;
        i += (size_t)k;
    }
    return n;
}

/* Writes `s` quoted, escaped and cut to QUOTE_MAX bytes into buf, for messages. */
static const char *quote(const char *s, size_t len, char *buf, size_t size)
{
    size_t used = 0;
    buf[used++] = '"';
    size_t i = 0;
    for (; i < len && i < QUOTE_MAX && used + 8 < size; i++) {
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
        while (used > 1 && ((unsigned char)buf[used - 1] & 0xC0) == 0x80)
            used--;
        if (used > 1 && (unsigned char)buf[used - 1] >= 0xC0)
            used--;
        memcpy(buf + used, "...", 3);
        used += 3;
    }
    buf[used++] = '"';
    buf[used] = '\0';
    return buf;
}

/* Formats a location ("FILE: model.merges") for messages; long paths are cut, not refused. */
static const char *where_fmt(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static const char *where_fmt(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return buf;
}

/* ---- the merge table ------------------------------------------------------------------ */

static inline size_t pair_slot(const ds_qwen_tokenizer *t, uint64_t key)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> t->pair_shift);
}

static inline const pair_entry *pair_find(const ds_qwen_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = pair_slot(t, key);; i = (i + 1) & t->pair_mask) {
        const pair_entry *e = &t->pairs[i];
        if (e->key == key)
            return e;
        if (e->key == EMPTY_KEY)
            return NULL;
    }
}

/* A later duplicate of a merge replaces the earlier one, as HF's merge map does. */
static void pair_put(ds_qwen_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t id)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = pair_slot(t, key);
    while (t->pairs[i].key != EMPTY_KEY && t->pairs[i].key != key)
        i = (i + 1) & t->pair_mask;
    t->pairs[i] = (pair_entry){key, rank, id};
}

static int alloc_pairs(ds_qwen_tokenizer *t, size_t merges, const char *file, ds_error *err)
{
    size_t slots = 1024;
    int bits = 10;
    while (slots < merges * 2) {
        slots <<= 1;
        bits++;
    }
    t->pairs = malloc(slots * sizeof *t->pairs);
    if (!t->pairs)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory for %zu merges",
                            file, merges);
    for (size_t i = 0; i < slots; i++)
        t->pairs[i].key = EMPTY_KEY;
    t->pair_mask = slots - 1;
    t->pair_shift = 64 - bits;
    return DS_OK;
}

/* Adds merge number `rank`, "a b": both halves and their concatenation must be tokens. */
static int add_merge(ds_qwen_tokenizer *t, json_t *vocab, const char *a, size_t alen,
                     const char *b, size_t blen, size_t rank, const char *where, ds_error *err)
{
    char qa[QUOTE_MAX * 4 + 16], qb[QUOTE_MAX * 4 + 16];
    json_t *ja = json_object_getn(vocab, a, alen);
    json_t *jb = json_object_getn(vocab, b, blen);
    if (!ja || !jb) {
        const char *s = ja ? b : a;
        size_t n = ja ? blen : alen;
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s[%zu]: token %s is not in the vocabulary", where, rank,
                            quote(s, n, qa, sizeof qa));
    }
    char stack[256];
    char *joined = alen + blen <= sizeof stack ? stack : malloc(alen + blen);
    if (!joined)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s[%zu]: out of memory", where,
                            rank);
    memcpy(joined, a, alen);
    memcpy(joined + alen, b, blen);
    json_t *jm = json_object_getn(vocab, joined, alen + blen);
    if (joined != stack)
        free(joined);
    if (!jm)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s[%zu]: the merge of %s and %s is not in the vocabulary", where,
                            rank, quote(a, alen, qa, sizeof qa), quote(b, blen, qb, sizeof qb));
    pair_put(t, (int32_t)json_integer_value(ja), (int32_t)json_integer_value(jb), (int32_t)rank,
             (int32_t)json_integer_value(jm));
    return DS_OK;
}

/* ---- loading -------------------------------------------------------------------------- */

static int load_json(const char *path, json_t **out, ds_error *err)
{
    json_error_t jerr;
    *out = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!*out)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: not valid JSON: %s (line %d, column %d)",
                            path, jerr.text, jerr.line, jerr.column);
    if (!json_is_object(*out)) {
        int rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: expected a JSON object, got %s",
                              path, ds__json_type_name(*out));
        json_decref(*out);
        *out = NULL;
        return rc;
    }
    return DS_OK;
}

/* The vocabulary: token string -> id, ids in [0, 2^31 - 1). Fills the decode tables for the
 * regular tokens (the added ones come later and may take over an id) and byte_id. */
static int load_vocab(ds_qwen_tokenizer *t, json_t *vocab, const json_t *added, const char *where,
                      ds_error *err)
{
    char q[QUOTE_MAX * 4 + 16];
    if (!json_is_object(vocab))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: expected an object of token -> id, got %s",
                            where, vocab ? ds__json_type_name(vocab) : "nothing");
    int64_t max_id = -1;
    size_t bytes = 0;
    const char *key;
    json_t *value;
    json_object_foreach(vocab, key, value) {
        int64_t id = json_is_integer(value) ? json_integer_value(value) : -1;
        if (id < 0 || id >= INT32_MAX)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: token %s: expected an id in [0, 2^31 - 1), got %s", where,
                                quote(key, strlen(key), q, sizeof q),
                                json_is_integer(value) ? "an out-of-range integer"
                                                       : ds__json_type_name(value));
        if (id > max_id)
            max_id = id;
        bytes += strlen(key);
    }
    size_t i;
    json_array_foreach(added, i, value) {
        int64_t id = json_integer_value(json_object_get(value, "id"));
        if (id > max_id)
            max_id = id;
        bytes += strlen(json_string_value(json_object_get(value, "content")));
    }
    if (max_id < 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: the vocabulary is empty", where);
    t->vocab_size = (size_t)max_id + 1;
    t->tok_off = calloc(t->vocab_size + 1, sizeof *t->tok_off);
    t->tok_flags = calloc(t->vocab_size, 1);
    t->tok_bytes = malloc(bytes ? bytes : 1);
    if (!t->tok_off || !t->tok_flags || !t->tok_bytes || bytes >= UINT32_MAX)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory for %zu tokens",
                            where, t->vocab_size);
    /* Tokens are written in id order so each one's bytes are tok_off[id] .. tok_off[id + 1]. */
    const char **text = calloc(t->vocab_size, sizeof *text);
    if (!text)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory for %zu tokens",
                            where, t->vocab_size);
    int rc = DS_OK;
    json_object_foreach(vocab, key, value) {
        int64_t id = json_integer_value(value);
        if (text[id]) {
            char q2[QUOTE_MAX * 4 + 16];
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: tokens %s and %s both have id %lld",
                              where, quote(text[id], strlen(text[id]), q, sizeof q),
                              quote(key, strlen(key), q2, sizeof q2), (long long)id);
            goto done;
        }
        text[id] = key;
    }
    json_array_foreach(added, i, value)
        text[json_integer_value(json_object_get(value, "id"))] =
            json_string_value(json_object_get(value, "content"));
    uint32_t off = 0;
    for (size_t id = 0; id < t->vocab_size; id++) {
        t->tok_off[id] = off;
        if (text[id]) {
            off += (uint32_t)token_to_bytes(text[id], strlen(text[id]), t->tok_bytes + off);
            t->tok_flags[id] = TOKEN_PRESENT;
        }
    }
    t->tok_off[t->vocab_size] = off;
    for (int b = 0; b < 256; b++) {
        char s[4];
        utf8proc_ssize_t n = utf8proc_encode_char(byte_to_cp(b), (utf8proc_uint8_t *)s);
        json_t *id = json_object_getn(vocab, s, (size_t)n);
        if (!id) {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "%s: no token for byte 0x%02x (\"%.*s\"); byte-level BPE needs all 256",
                              where, b, (int)n, s);
            goto done;
        }
        t->byte_id[b] = (int32_t)json_integer_value(id);
    }
done:
    free(text);
    return rc;
}

static int load_merges_json(ds_qwen_tokenizer *t, json_t *vocab, const json_t *merges,
                            const char *where, ds_error *err)
{
    if (!json_is_array(merges))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: expected an array, got %s", where,
                            merges ? ds__json_type_name(merges) : "nothing");
    int rc = alloc_pairs(t, json_array_size(merges), where, err);
    if (rc)
        return rc;
    size_t i;
    json_t *m;
    json_array_foreach(merges, i, m) {
        const char *a, *b;
        size_t alen, blen;
        if (json_is_string(m)) {
            /* "a b": tokens never hold a space (the alphabet spells it Ġ). */
            a = json_string_value(m);
            const char *sp = memchr(a, ' ', json_string_length(m));
            if (!sp || memchr(sp + 1, ' ', json_string_length(m) - (size_t)(sp + 1 - a)))
                return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                    "%s[%zu]: expected \"LEFT RIGHT\" with one space", where, i);
            alen = (size_t)(sp - a);
            b = sp + 1;
            blen = json_string_length(m) - alen - 1;
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            alen = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            blen = json_string_length(json_array_get(m, 1));
        } else {
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s[%zu]: expected \"LEFT RIGHT\" or [LEFT, RIGHT], got %s", where,
                                i, ds__json_type_name(m));
        }
        if ((rc = add_merge(t, vocab, a, alen, b, blen, i, where, err)))
            return rc;
    }
    return DS_OK;
}

/* merges.txt: one "LEFT RIGHT" per line, after an optional "#version" line. */
static int load_merges_txt(ds_qwen_tokenizer *t, json_t *vocab, const char *path, ds_error *err)
{
    int rc;
    FILE *f = fopen(path, "rb");
    char *data = NULL;
    if (!f)
        return ds_error_set(err, errno == ENOENT ? DS_ERR_NOT_FOUND : DS_ERR_PERMISSION_DENIED,
                            "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !(data = malloc((size_t)st.st_size + 1)) ||
        fread(data, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        rc = ds_error_set(err, DS_ERR_UNAVAILABLE, "%s: cannot read the file", path);
        goto done;
    }
    size_t size = (size_t)st.st_size;
    data[size] = '\0';
    size_t lines = 1;
    for (size_t i = 0; i < size; i++)
        lines += data[i] == '\n';
    if ((rc = alloc_pairs(t, lines, path, err)))
        goto done;
    size_t rank = 0, line_no = 0;
    for (char *line = data; line < data + size;) {
        char *end = memchr(line, '\n', (size_t)(data + size - line));
        char *next = end ? end + 1 : data + size;
        if (!end)
            end = data + size;
        line_no++;
        if (end > line && end[-1] == '\r')
            end--;
        if (end > line && !(line_no == 1 && strncmp(line, "#version", 8) == 0)) {
            char *sp = memchr(line, ' ', (size_t)(end - line));
            if (!sp || memchr(sp + 1, ' ', (size_t)(end - sp - 1))) {
                rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                  "%s: line %zu: expected \"LEFT RIGHT\" with one space", path,
                                  line_no);
                goto done;
            }
            char where[4200];
            where_fmt(where, sizeof where, "%s: merge", path);
            if ((rc = add_merge(t, vocab, line, (size_t)(sp - line), sp + 1,
                                (size_t)(end - sp - 1), rank++, where, err)))
                goto done;
        }
        line = next;
    }
    rc = DS_OK;
done:
    free(data);
    fclose(f);
    return rc;
}

static bool json_flag(const json_t *obj, const char *name)
{
    return json_is_true(json_object_get(obj, name));
}

/* Checks one added token ({"id", "content", "special", ...}) and appends it to `list`. */
static int check_added(const json_t *tok, int64_t id, const char *where, json_t *list,
                       ds_error *err)
{
    if (!json_is_object(tok))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: expected an object, got %s", where,
                            ds__json_type_name(tok));
    const json_t *content = json_object_get(tok, "content");
    if (!json_is_string(content) || json_string_length(content) == 0 ||
        strlen(json_string_value(content)) != json_string_length(content))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: \"content\" must be a non-empty string without NUL", where);
    if (id < 0 || id >= INT32_MAX)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: expected an id in [0, 2^31 - 1)",
                            where);
    static const char *const unsupported[] = {"lstrip", "rstrip", "single_word"};
    for (size_t i = 0; i < 3; i++)
        if (json_flag(tok, unsupported[i]))
            return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                                "%s: \"%s\": true is not implemented (Qwen2's tokens have false)",
                                where, unsupported[i]);
    json_t *copy = json_pack("{s:I,s:O,s:b,s:b}", "id", (json_int_t)id, "content", content,
                             "special", json_flag(tok, "special"), "normalized",
                             json_flag(tok, "normalized"));
    if (!copy || json_array_append_new(list, copy))
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", where);
    return DS_OK;
}

static int added_cmp(const void *a, const void *b)
{
    const added_token *x = a, *y = b;
    return x->len < y->len ? 1 : x->len > y->len ? -1 : 0;
}

static int take_added(ds_qwen_tokenizer *t, const json_t *list, ds_error *err)
{
    t->added_count = json_array_size(list);
    if (!t->added_count)
        return DS_OK;
    t->added = calloc(t->added_count, sizeof *t->added);
    if (!t->added)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for added tokens");
    for (size_t i = 0; i < t->added_count; i++) {
        const json_t *a = json_array_get(list, i);
        added_token *d = &t->added[i];
        d->len = json_string_length(json_object_get(a, "content"));
        d->content = strdup(json_string_value(json_object_get(a, "content")));
        if (!d->content)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for added tokens");
        d->id = (int32_t)json_integer_value(json_object_get(a, "id"));
        d->special = json_flag(a, "special");
        d->normalized = json_flag(a, "normalized");
        if (d->special)
            t->tok_flags[d->id] |= TOKEN_SPECIAL;
        t->added_first[d->normalized][(uint8_t)d->content[0]] = 1;
    }
    qsort(t->added, t->added_count, sizeof *t->added, added_cmp);
    return DS_OK;
}

static int compile_regex(ds_qwen_tokenizer *t, const char *pattern, size_t len, bool literal,
                         const char *where, ds_error *err)
{
    int code;
    PCRE2_SIZE at;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    t->re = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &code, &at, NULL);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: the regex does not compile at offset %zu: %s",
                            where, (size_t)at, (const char *)msg);
    }
    /* JIT is several times faster; without it (an unsupported CPU) the interpreter is right too. */
    t->jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
    return DS_OK;
}

/* Accepts what Qwen2's tokenizer.json declares and nothing else; see the header. */
static int check_pipeline(ds_qwen_tokenizer *t, json_t *root, const char *path, ds_error *err)
{
    const json_t *norm = json_object_get(root, "normalizer");
    const char *type = json_string_value(json_object_get(norm, "type"));
    if (norm && !json_is_null(norm) && !(type && strcmp(type, "NFC") == 0))
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "%s: normalizer: only NFC (or none) is implemented, got %s", path,
                            type ? type : ds__json_type_name(norm));
    t->nfc = type != NULL;

    const json_t *model = json_object_get(root, "model");
    if (!json_is_object(model))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: model: expected an object, got %s",
                            path, model ? ds__json_type_name(model) : "nothing");
    type = json_string_value(json_object_get(model, "type"));
    if (type && strcmp(type, "BPE") != 0)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED, "%s: model.type: only BPE is implemented, got %s",
                            path, type);
    static const char *const off[] = {"dropout", "byte_fallback", "ignore_merges", "fuse_unk"};
    for (size_t i = 0; i < 4; i++) {
        const json_t *v = json_object_get(model, off[i]);
        if (v && !json_is_null(v) && !json_is_false(v))
            return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                                "%s: model.%s: only null/false is implemented", path, off[i]);
    }
    static const char *const empty[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++) {
        const json_t *v = json_object_get(model, empty[i]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                                "%s: model.%s: only \"\" or null is implemented", path, empty[i]);
    }

    const json_t *pre = json_object_get(root, "pre_tokenizer");
    const json_t *steps = json_object_get(pre, "pretokenizers");
    const json_t *split = json_array_get(steps, 0), *bl = json_array_get(steps, 1);
    const char *pre_type = json_string_value(json_object_get(pre, "type"));
    if (!pre_type || strcmp(pre_type, "Sequence") != 0 || json_array_size(steps) != 2 ||
        !json_is_string(json_object_get(split, "type")) ||
        strcmp(json_string_value(json_object_get(split, "type")), "Split") != 0 ||
        !json_is_string(json_object_get(bl, "type")) ||
        strcmp(json_string_value(json_object_get(bl, "type")), "ByteLevel") != 0)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "%s: pre_tokenizer: only Sequence [Split, ByteLevel] (Qwen2's) is implemented",
                            path);
    const char *behavior = json_string_value(json_object_get(split, "behavior"));
    if (!behavior || strcmp(behavior, "Isolated") != 0 || json_flag(split, "invert"))
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "%s: pre_tokenizer.pretokenizers[0]: only behavior Isolated without invert is implemented",
                            path);
    if (json_flag(bl, "add_prefix_space") || json_flag(bl, "use_regex"))
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "%s: pre_tokenizer.pretokenizers[1]: only ByteLevel with add_prefix_space and use_regex false is implemented",
                            path);
    const json_t *pattern = json_object_get(split, "pattern");
    const json_t *regex = json_object_get(pattern, "Regex");
    const json_t *literal = json_object_get(pattern, "String");
    const json_t *p = regex ? regex : literal;
    if (!json_is_string(p))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: pre_tokenizer.pretokenizers[0].pattern: expected {\"Regex\": string} or {\"String\": string}",
                            path);
    char where[4200];
    where_fmt(where, sizeof where, "%s: pre_tokenizer.pretokenizers[0].pattern", path);
    int rc = compile_regex(t, json_string_value(p), json_string_length(p), !regex, where, err);
    if (rc)
        return rc;

    const json_t *dec = json_object_get(root, "decoder");
    type = json_string_value(json_object_get(dec, "type"));
    if (!type || strcmp(type, "ByteLevel") != 0)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED, "%s: decoder: only ByteLevel is implemented",
                            path);
    return DS_OK;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static int load_tokenizer_json(ds_qwen_tokenizer *t, const char *path, ds_error *err)
{
    json_t *root = NULL, *added = json_array();
    int rc = load_json(path, &root, err);
    char where[4200];
    if (rc)
        goto done;
    if (!added) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", path);
        goto done;
    }
    if ((rc = check_pipeline(t, root, path, err)))
        goto done;
    const json_t *list = json_object_get(root, "added_tokens");
    if (list && !json_is_array(list)) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: added_tokens: expected an array, got %s",
                          path, ds__json_type_name(list));
        goto done;
    }
    size_t i;
    json_t *tok;
    json_array_foreach(list, i, tok) {
        where_fmt(where, sizeof where, "%s: added_tokens[%zu]", path, i);
        const json_t *id = json_object_get(tok, "id");
        if ((rc = check_added(tok, json_is_integer(id) ? json_integer_value(id) : -1, where,
                              added, err)))
            goto done;
    }
    json_t *model = json_object_get(root, "model");
    where_fmt(where, sizeof where, "%s: model.vocab", path);
    if ((rc = load_vocab(t, json_object_get(model, "vocab"), added, where, err)))
        goto done;
    where_fmt(where, sizeof where, "%s: model.merges", path);
    if ((rc = load_merges_json(t, json_object_get(model, "vocab"), json_object_get(model, "merges"),
                               where, err)))
        goto done;
    rc = take_added(t, added, err);
done:
    json_decref(added);
    json_decref(root);
    return rc;
}

/* The slow tokenizer's files: vocab.json, merges.txt, and tokenizer_config.json's
 * added_tokens_decoder ({"151643": {"content": ...}, ...}) when that file is there. */
static int load_vocab_merges(ds_qwen_tokenizer *t, const char *dir, ds_error *err)
{
    char path[4200], where[4300];
    json_t *vocab = NULL, *config = NULL, *added = json_array();
    int rc;
    if (!added)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    where_fmt(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (file_exists(path)) {
        if ((rc = load_json(path, &config, err)))
            goto done;
        const json_t *dec = json_object_get(config, "added_tokens_decoder");
        if (dec && !json_is_object(dec)) {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "%s: added_tokens_decoder: expected an object, got %s", path,
                              ds__json_type_name(dec));
            goto done;
        }
        const char *key;
        json_t *tok;
        json_object_foreach((json_t *)dec, key, tok) {
            char *end;
            errno = 0;
            long long id = strtoll(key, &end, 10);
            where_fmt(where, sizeof where, "%s: added_tokens_decoder[\"%.40s\"]", path, key);
            if (*key == '\0' || *end != '\0' || errno)
                id = -1;
            if ((rc = check_added(tok, id, where, added, err)))
                goto done;
        }
    }
    where_fmt(path, sizeof path, "%s/vocab.json", dir);
    if ((rc = load_json(path, &vocab, err)) || (rc = load_vocab(t, vocab, added, path, err)))
        goto done;
    where_fmt(path, sizeof path, "%s/merges.txt", dir);
    if ((rc = load_merges_txt(t, vocab, path, err)))
        goto done;
    if ((rc = take_added(t, added, err)))
        goto done;
    t->nfc = true;
    rc = compile_regex(t, qwen2_pattern, sizeof qwen2_pattern - 1, false, "Qwen2's regex", err);
done:
    json_decref(added);
    json_decref(vocab);
    json_decref(config);
    return rc;
}

int ds_qwen_tokenizer_load(const char *dir, ds_qwen_tokenizer **out, ds_error *err)
{
    *out = NULL;
    char path[4200];
    struct stat st;
    if (!dir)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "tokenizer folder: no path given");
    if (stat(dir, &st) != 0)
        return ds_error_set(err, errno == ENOENT ? DS_ERR_NOT_FOUND : DS_ERR_PERMISSION_DENIED,
                            "tokenizer folder %s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "tokenizer folder %s: not a folder (give the folder holding tokenizer.json)",
                            dir);
    if (strlen(dir) > 4000)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "tokenizer folder path is too long");
    ds_qwen_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for the tokenizer");
    int rc;
    where_fmt(path, sizeof path, "%s/tokenizer.json", dir);
    if (file_exists(path)) {
        rc = load_tokenizer_json(t, path, err);
    } else {
        char vocab[4200], merges[4200];
        where_fmt(vocab, sizeof vocab, "%s/vocab.json", dir);
        where_fmt(merges, sizeof merges, "%s/merges.txt", dir);
        if (!file_exists(vocab) || !file_exists(merges)) {
            rc = ds_error_set(err, DS_ERR_NOT_FOUND,
                              "tokenizer folder %s: neither tokenizer.json nor vocab.json + merges.txt is there",
                              dir);
            goto fail;
        }
        rc = load_vocab_merges(t, dir, err);
    }
    if (rc)
        goto fail;
    *out = t;
    return DS_OK;
fail:
    ds_qwen_tokenizer_free(t);
    return rc;
}

void ds_qwen_tokenizer_free(ds_qwen_tokenizer *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->added_count; i++)
        free(t->added[i].content);
    free(t->added);
    free(t->pairs);
    free(t->tok_off);
    free(t->tok_bytes);
    free(t->tok_flags);
    pcre2_code_free(t->re);
    free(t);
}

size_t ds_qwen_tokenizer_vocab_size(const ds_qwen_tokenizer *t)
{
    return t->vocab_size;
}

int32_t ds_qwen_tokenizer_added_token_id(const ds_qwen_tokenizer *t, const char *content)
{
    for (size_t i = 0; i < t->added_count; i++)
        if (strcmp(t->added[i].content, content) == 0)
            return t->added[i].id;
    return -1;
}

/* ---- encoding ------------------------------------------------------------------------- */

/* Per-call state: the output and the BPE scratch, so that encode never writes the tokenizer. */
typedef struct encoder {
    const ds_qwen_tokenizer *t;
    int32_t *ids;
    size_t count, cap;
    /* BPE over one piece: a doubly linked list of symbols and a min-heap of candidate merges. */
    int32_t *sym_id, *sym_prev, *sym_next;
    struct merge { int32_t rank, pos, id; } *heap;
    size_t scratch_cap, heap_len;
    pcre2_match_data *match;
} encoder;

static int push_id(encoder *e, int32_t id, ds_error *err)
{
    if (e->count == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 256;
        int32_t *ids = realloc(e->ids, cap * sizeof *ids);
        if (!ids)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "encode: out of memory for %zu ids", cap);
        e->ids = ids;
        e->cap = cap;
    }
    e->ids[e->count++] = id;
    return DS_OK;
}

/* Orders by rank, then by position: the leftmost of equal-rank merges goes first, as in HF. */
static inline bool merge_before(const struct merge *a, const struct merge *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(encoder *e, struct merge m)
{
    size_t i = e->heap_len++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!merge_before(&m, &e->heap[parent]))
            break;
        e->heap[i] = e->heap[parent];
        i = parent;
    }
    e->heap[i] = m;
}

static struct merge heap_pop(encoder *e)
{
    struct merge top = e->heap[0], last = e->heap[--e->heap_len];
    size_t i = 0, n = e->heap_len;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && merge_before(&e->heap[c + 1], &e->heap[c]))
            c++;
        if (!merge_before(&e->heap[c], &last))
            break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n)
        e->heap[i] = last;
    return top;
}

static void candidate(encoder *e, int32_t pos)
{
    int32_t next = e->sym_next[pos];
    if (next < 0)
        return;
    const pair_entry *p = pair_find(e->t, e->sym_id[pos], e->sym_id[next]);
    if (p)
        heap_push(e, (struct merge){p->rank, pos, p->id});
}

static int bpe(encoder *e, const uint8_t *s, size_t n, ds_error *err)
{
    if (n == 1)
        return push_id(e, e->t->byte_id[s[0]], err);
    if (n > e->scratch_cap) {
        size_t cap = n < 64 ? 64 : n;
        /* Each merge removes one symbol and adds at most two candidates: 3n bounds the heap. */
        int32_t *a = realloc(e->sym_id, cap * sizeof *a);
        if (a)
            e->sym_id = a;
        int32_t *b = realloc(e->sym_prev, cap * sizeof *b);
        if (b)
            e->sym_prev = b;
        int32_t *c = realloc(e->sym_next, cap * sizeof *c);
        if (c)
            e->sym_next = c;
        struct merge *h = realloc(e->heap, 3 * cap * sizeof *h);
        if (h)
            e->heap = h;
        if (!a || !b || !c || !h || n > INT32_MAX)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                                "encode: out of memory for a %zu-byte word", n);
        e->scratch_cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        e->sym_id[i] = e->t->byte_id[s[i]];
        e->sym_prev[i] = (int32_t)i - 1;
        e->sym_next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    e->heap_len = 0;
    for (size_t i = 0; i + 1 < n; i++)
        candidate(e, (int32_t)i);
    while (e->heap_len) {
        struct merge m = heap_pop(e);
        /* Entries go stale when a neighbour merged first: a removed symbol (id -1) or a pair
         * that no longer merges into the same token is skipped. */
        int32_t left = m.pos;
        int32_t right = e->sym_next[left];
        if (e->sym_id[left] < 0 || right < 0)
            continue;
        const pair_entry *p = pair_find(e->t, e->sym_id[left], e->sym_id[right]);
        if (!p || p->id != m.id)
            continue;
        e->sym_id[left] = m.id;
        e->sym_id[right] = -1;
        int32_t after = e->sym_next[right];
        e->sym_next[left] = after;
        if (after >= 0)
            e->sym_prev[after] = left;
        if (e->sym_prev[left] >= 0)
            candidate(e, e->sym_prev[left]);
        candidate(e, left);
    }
    for (int32_t i = 0; i >= 0; i = e->sym_next[i]) {
        int rc = push_id(e, e->sym_id[i], err);
        if (rc)
            return rc;
    }
    return DS_OK;
}

/* The pre-tokenizer: every regex match is a piece, and so is any text between matches
 * (Split, behavior Isolated). Empty matches split nothing. */
static int split_and_bpe(encoder *e, const char *s, size_t n, ds_error *err)
{
    const ds_qwen_tokenizer *t = e->t;
    size_t prev = 0, start = 0;
    int rc;
    while (start < n) {
        int m = t->jit ? pcre2_jit_match(t->re, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK, e->match, NULL)
                       : pcre2_match(t->re, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK, e->match, NULL);
        if (m == PCRE2_ERROR_NOMATCH)
            break;
        if (m < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(m, msg, sizeof msg);
            return ds_error_set(err, DS_ERR_INTERNAL, "encode: the pre-tokenizer regex failed at byte %zu: %s",
                                start, (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->match);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) {
            start = ms + 1;
            while (start < n && ((uint8_t)s[start] & 0xC0) == 0x80)
                start++;
            continue;
        }
        if (prev < ms && (rc = bpe(e, (const uint8_t *)s + prev, ms - prev, err)))
            return rc;
        if ((rc = bpe(e, (const uint8_t *)s + ms, me - ms, err)))
            return rc;
        prev = start = me;
    }
    if (prev < n)
        return bpe(e, (const uint8_t *)s + prev, n - prev, err);
    return DS_OK;
}

/* Splits s at the added tokens of one kind (matched on the raw or on the normalised text),
 * leftmost first and longest at a position, as HF's AddedVocabulary does; the text between
 * goes on to `next`. */
static int split_added(encoder *e, const char *s, size_t n, bool normalized,
                       int (*next)(encoder *, const char *, size_t, ds_error *), ds_error *err)
{
    const ds_qwen_tokenizer *t = e->t;
    const uint8_t *first = t->added_first[normalized];
    size_t prev = 0;
    int rc;
    for (size_t i = 0; i < n; i++) {
        if (!first[(uint8_t)s[i]])
            continue;
        for (size_t k = 0; k < t->added_count; k++) {
            const added_token *a = &t->added[k];
            if (a->normalized != normalized || a->len > n - i || memcmp(a->content, s + i, a->len))
                continue;
            if (prev < i && (rc = next(e, s + prev, i - prev, err)))
                return rc;
            if ((rc = push_id(e, a->id, err)))
                return rc;
            prev = i + a->len;
            i = prev - 1;
            break;
        }
    }
    return prev < n ? next(e, s + prev, n - prev, err) : DS_OK;
}

/* NFC leaves ASCII as it is, so only text with other bytes goes through utf8proc. */
static int encode_raw_segment(encoder *e, const char *s, size_t n, ds_error *err)
{
    bool ascii = true;
    for (size_t i = 0; i < n && ascii; i++)
        ascii = (uint8_t)s[i] < 0x80;
    if (ascii || !e->t->nfc)
        return split_added(e, s, n, true, split_and_bpe, err);
    utf8proc_uint8_t *nfc = NULL;
    utf8proc_ssize_t len = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &nfc,
                                        UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (len < 0)
        return ds_error_set(err, len == UTF8PROC_ERROR_NOMEM ? DS_ERR_RESOURCE_EXHAUSTED : DS_ERR_INTERNAL,
                            "encode: NFC normalisation failed: %s", utf8proc_errmsg(len));
    int rc = split_added(e, (const char *)nfc, (size_t)len, true, split_and_bpe, err);
    free(nfc);
    return rc;
}

static int check_utf8(const char *text, size_t len, ds_error *err)
{
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)text;
    for (size_t i = 0; i < len;) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "encode: the text is not valid UTF-8 at byte %zu (0x%02x)", i, p[i]);
        i += (size_t)k;
    }
    return DS_OK;
}

int ds_qwen_tokenizer_encode(const ds_qwen_tokenizer *t, const char *text, size_t len,
                             int32_t **ids, size_t *count, ds_error *err)
{
    *ids = NULL;
    *count = 0;
    int rc = check_utf8(text, len, err);
    if (rc)
        return rc;
    encoder e = {.t = t};
    e.match = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!e.match) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "encode: out of memory");
        goto fail;
    }
    if ((rc = split_added(&e, text, len, false, encode_raw_segment, err)))
        goto fail;
    *ids = e.ids;
    *count = e.count;
    e.ids = NULL;
fail:
    pcre2_match_data_free(e.match);
    free(e.ids);
    free(e.sym_id);
    free(e.sym_prev);
    free(e.sym_next);
    free(e.heap);
    return rc;
}

/* ---- decoding ------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s, or 0 after setting *bad to the length of its
 * longest valid prefix (at least 1): that prefix becomes one U+FFFD, as Rust's
 * String::from_utf8_lossy (which HF's decoder uses) does. */
static size_t utf8_seq(const uint8_t *s, size_t n, size_t *bad)
{
    uint8_t b = s[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b < 0x80)
        return 1;
    if (b >= 0xC2 && b <= 0xDF)
        need = 1;
    else if (b >= 0xE0 && b <= 0xEF) {
        need = 2;
        if (b == 0xE0)
            lo = 0xA0;
        if (b == 0xED)
            hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3;
        if (b == 0xF0)
            lo = 0x90;
        if (b == 0xF4)
            hi = 0x8F;
    } else {
        *bad = 1;
        return 0;
    }
    for (size_t k = 1; k <= need; k++) {
        uint8_t c = k < n ? s[k] : 0;
        bool ok = k < n && (k == 1 ? c >= lo && c <= hi : (c & 0xC0) == 0x80);
        if (!ok) {
            *bad = k;
            return 0;
        }
    }
    return need + 1;
}

int ds_qwen_tokenizer_decode(const ds_qwen_tokenizer *t, const int32_t *ids, size_t count,
                             bool skip_special, char **text, size_t *len, ds_error *err)
{
    *text = NULL;
    *len = 0;
    size_t raw_len = 0;
    for (size_t i = 0; i < count; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= t->vocab_size || !(t->tok_flags[ids[i]] & TOKEN_PRESENT))
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "decode: ids[%zu] = %d names no token (vocabulary size %zu)", i,
                                ids[i], t->vocab_size);
        raw_len += t->tok_off[ids[i] + 1] - t->tok_off[ids[i]];
    }
    /* Each invalid byte can become the three bytes of U+FFFD. */
    char *out = malloc(raw_len * 3 + 1);
    uint8_t *raw = malloc(raw_len + 1);
    if (!out || !raw) {
        free(out);
        free(raw);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "decode: out of memory for %zu bytes",
                            raw_len);
    }
    size_t r = 0;
    for (size_t i = 0; i < count; i++) {
        if (skip_special && (t->tok_flags[ids[i]] & TOKEN_SPECIAL))
            continue;
        uint32_t a = t->tok_off[ids[i]], b = t->tok_off[ids[i] + 1];
        memcpy(raw + r, t->tok_bytes + a, b - a);
        r += b - a;
    }
    size_t o = 0;
    for (size_t i = 0; i < r;) {
        size_t bad = 0, k = utf8_seq(raw + i, r - i, &bad);
        if (k) {
            memcpy(out + o, raw + i, k);
            o += k;
            i += k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += bad;
        }
    }
    out[o] = '\0';
    free(raw);
    *text = out;
    *len = o;
    return DS_OK;
}
