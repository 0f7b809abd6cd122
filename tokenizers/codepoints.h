/* Text as an array of Unicode code points, the form the cleaning steps work on: they are
 * ports of Python string code, whose indices, lengths and character classes count code points. */
#ifndef DS_TOKENIZERS_CODEPOINTS_H
#define DS_TOKENIZERS_CODEPOINTS_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct ds__cps {
    int32_t *v;  /* [n] code points; malloc'd, owned by the struct (ds__cps_free) */
    size_t n;
    size_t cap;
    int oom;     /* an append failed: the contents are incomplete */
} ds__cps;

/* Appends; on allocation failure sets b->oom and leaves b otherwise as it was. */
void ds__cps_push(ds__cps *b, int32_t cp);
void ds__cps_append(ds__cps *b, const int32_t *cps, size_t n);
/* Appends the code points of `s` (`len` bytes), which must be valid UTF-8 (the tables'). */
void ds__cps_append_utf8(ds__cps *b, const char *s, size_t len);

/* Decodes `len` bytes of UTF-8 into *out (replacing its contents). INVALID_ARGUMENT naming the
 * byte offset when the text is not valid UTF-8 (surrogates and overlongs included). */
int ds__cps_from_utf8(const char *s, size_t len, ds__cps *out, ds_error *err);

/* Encodes b as UTF-8 into a malloc'd, NUL-terminated *out (owned by the caller); *len excludes
 * the NUL. RESOURCE_EXHAUSTED when b->oom is set or memory runs out. */
int ds__cps_to_utf8(const ds__cps *b, char **out, size_t *len, ds_error *err);

void ds__cps_free(ds__cps *b);

#endif
