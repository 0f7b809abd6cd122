/* JSON text exactly as Python's json.dumps writes it (ensure_ascii=True, default separators).
 *
 * The CLI mirrors upstream DiffSynth-Studio's messages byte for byte, and upstream prints with
 * json.dumps, so this module reproduces its choices: `", "` and `": "` separators without indent;
 * with indent=N a newline and N spaces per level, `","` at line end and empty containers kept as
 * `{}` / `[]`; strings escaped like Python (non-ASCII as \uXXXX, surrogate pairs above U+FFFF);
 * floats in Python's repr (shortest round-trip digits, `1e-06`, `1e+16`, `4.0`); Infinity / NaN.
 *
 * Everything appends to a pyjson_buf, a growable NUL-terminated string. Functions return 0, or -1
 * on malformed input or when memory ran out (then buf->oom is set and the buffer stays valid).
 * Not thread-safe per buffer; no global state.
 */
#ifndef DS_CLIENT_PYJSON_H
#define DS_CLIENT_PYJSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Indent value meaning Python's indent=None. */
#define PYJSON_COMPACT (-1)

/* The deepest nesting pyjson_reformat and the writer accept. */
#define PYJSON_MAX_DEPTH 64

typedef struct pyjson_buf {
    char *data;  /* NUL-terminated once anything was appended; owned, release with pyjson_buf_free */
    size_t len;
    size_t cap;
    bool oom;
} pyjson_buf;

void pyjson_buf_free(pyjson_buf *buf);
int pyjson_append(pyjson_buf *buf, const char *s, size_t n);
int pyjson_append_str(pyjson_buf *buf, const char *s);

/* Appends `s` (n bytes of UTF-8) as a JSON string literal with Python's escapes. Bytes that are
 * not valid UTF-8 come out as \udcXX, as Python's surrogateescape decoding of a path would. */
int pyjson_quote(pyjson_buf *buf, const char *s, size_t n);

/* Writes Python's repr(float(v)) as json.dumps prints it (Infinity, -Infinity, NaN) into out;
 * 32 bytes always suffice. */
void pyjson_format_double(double v, char out[32]);

/* Appends the JSON text `json` (n bytes) re-indented as json.dumps(json.loads(json), indent)
 * would print it: string tokens re-escaped, integers kept as written, reals in Python's repr.
 * `indent` is PYJSON_COMPACT or >= 0; `level` is the nesting level the text starts at (its
 * inner lines are indented level+1 deep). Fails on malformed JSON or nesting beyond
 * PYJSON_MAX_DEPTH; on failure buf->len is restored to what it was. */
int pyjson_reformat(pyjson_buf *buf, const char *json, size_t n, int indent, int level);

/* Appends Python's str() of a list of str, e.g. ['a', "it's"] (what f"{path}" gives for a list),
 * or of a single str when count == 1 and `collapse` is set (the string itself, no quotes).
 * Approximation: valid non-ASCII characters are kept as they are (Python would escape the few
 * it considers unprintable). */
int pyjson_py_str_list(pyjson_buf *buf, const char *const *items, size_t count, bool collapse);

/* A streaming writer for building documents with json.dumps' layout. */
typedef struct pyjson_writer {
    pyjson_buf *buf;
    int indent;                        /* PYJSON_COMPACT or >= 0 */
    int depth;
    bool has_items[PYJSON_MAX_DEPTH];  /* per open container: something was written in it */
    bool after_key;                    /* the next value follows `"key": ` on the same line */
    bool failed;                       /* sticky: any call failed (depth, oom, bad JSON text) */
} pyjson_writer;

void pyjson_writer_init(pyjson_writer *w, pyjson_buf *buf, int indent);
void pyjson_begin_object(pyjson_writer *w);
void pyjson_end_object(pyjson_writer *w);
void pyjson_begin_array(pyjson_writer *w);
void pyjson_end_array(pyjson_writer *w);
void pyjson_key(pyjson_writer *w, const char *key);
/* NULL writes null. */
void pyjson_string(pyjson_writer *w, const char *s);
void pyjson_uint(pyjson_writer *w, uint64_t v);
void pyjson_int(pyjson_writer *w, int64_t v);
void pyjson_double(pyjson_writer *w, double v);
void pyjson_bool(pyjson_writer *w, bool v);
void pyjson_null(pyjson_writer *w);
/* Embeds JSON text as a value, re-indented at the current level; NULL or "" writes null. */
void pyjson_raw(pyjson_writer *w, const char *json);
/* 0 when every call succeeded and all containers are closed, else -1. */
int pyjson_writer_finish(pyjson_writer *w);

#endif
