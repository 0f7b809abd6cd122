/* Upstream's prompt cleaning for the Wan text encoder (clean='whitespace' of
 * diffsynth/models/wan_video_text_encoder.py HuggingfaceTokenizer):
 *   basic_clean:      ftfy.fix_text, html.unescape twice, str.strip()
 *   whitespace_clean: regex `\s+` -> ' ', str.strip()
 * Python's str.strip() and the `regex` module's \s disagree on U+001C..U+001F (strip removes
 * them, \s does not match them); both are copied as they are. ftfy's mojibake repair is left
 * out (tokenizers/ftfy.h). */
#ifndef DS_TOKENIZERS_TEXT_CLEAN_H
#define DS_TOKENIZERS_TEXT_CLEAN_H

#include <stddef.h>

#include "core/error.h"

/* whitespace_clean(basic_clean(text)) of the UTF-8 `text` (`len` bytes; it may hold NULs).
 * *out is malloc'd, NUL-terminated and owned by the caller; *out_len excludes the NUL.
 * INVALID_ARGUMENT when the text is not valid UTF-8. */
int ds_text_clean_whitespace(const char *text, size_t len, char **out, size_t *out_len,
                             ds_error *err);

#endif
