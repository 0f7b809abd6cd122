/* A port of ftfy.fix_text (ftfy 6.3, default configuration) for text that is valid UTF-8.
 *
 * The text is fixed in segments that end after each "\n" (or every 1,000,000 code points), each
 * repeated until it stops changing, by these steps in ftfy's order:
 *   unescape_html      HTML5 entities ending in ';', ftfy's upper-cased ones ("&EACUTE;") and
 *                      numeric references; skipped from the first segment containing '<' on
 *                      (ftfy then takes the text for HTML)
 *   fix_c1_controls    U+0080..U+009F read as Windows-1252
 *   fix_latin_ligatures   ﬁ -> fi, Ĳ -> IJ, ... (ftfy's list)
 *   fix_character_width   full-width and half-width forms to their NFKC form, U+3000 to ' '
 *   uncurl_quotes      ‘ ’ ‚ ‛ ʼ -> ',  “ ” „ ‟ -> "
 *   fix_line_breaks    CRLF, CR, U+2028, U+2029, U+0085 -> LF
 *   remove_terminal_escapes   ESC [ digits/';' letter
 *   remove_control_chars      C0 controls but \t \n \f \r, DEL, U+206A..U+206F, BOM,
 *                             U+FFF9..U+FFFC
 *   NFC (utf8proc)
 *
 * Left out: fix_encoding, ftfy's mojibake repair (text decoded in the wrong encoding, "Ã©" ->
 * "é"); text that needs it is returned with the other fixes only. fix_surrogates has nothing to
 * do on valid UTF-8.
 */
#ifndef DS_TOKENIZERS_FTFY_H
#define DS_TOKENIZERS_FTFY_H

#include <stddef.h>

#include "core/error.h"
#include "tokenizers/codepoints.h"

/* ftfy.fix_text of the UTF-8 `text` (`len` bytes; it may hold NULs). *out is malloc'd,
 * NUL-terminated and owned by the caller; *out_len excludes the NUL. INVALID_ARGUMENT when the
 * text is not valid UTF-8. */
int ds_ftfy_fix_text(const char *text, size_t len, char **out, size_t *out_len, ds_error *err);

/* The same on code points: replaces the contents of *out. */
int ds__ftfy_fix_cps(const int32_t *in, size_t n, ds__cps *out, ds_error *err);

#endif
