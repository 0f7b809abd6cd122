/* Character tables generated from Python's `html` module and the ones ftfy derives from it
 * (text_tables.inc, written by gen_text_tables.py), behind lookups. */
#ifndef DS_TOKENIZERS_TEXT_TABLES_H
#define DS_TOKENIZERS_TEXT_TABLES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* html.entities.html5[name] for `name` (`len` bytes, without the '&'; the ';' is part of the
 * name when present): the UTF-8 replacement text, or NULL when there is no such entity. */
const char *ds__html5_entity(const char *name, size_t len);

/* ftfy's extra upper-cased entities ("EACUTE;" -> "É"): UTF-8 text or NULL. */
const char *ds__ftfy_upper_entity(const char *name, size_t len);

/* html.unescape's numeric references: the replacement of a code point HTML5 remaps
 * (0x80 -> U+20AC, 0 -> U+FFFD, ...), or -1 when `num` is not remapped. */
int32_t ds__html_charref_replacement(int64_t num);

/* Whether html.unescape drops the numeric reference `num` (controls and non-characters). */
bool ds__html_charref_dropped(int64_t num);

/* ftfy's fix_c1_controls: the sloppy-windows-1252 character for a C1 control U+0080..U+009F. */
int32_t ds__c1_as_windows_1252(int32_t cp);

#endif
