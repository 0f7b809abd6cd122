/* Python's html.unescape, which upstream's Wan prompt cleaning applies twice after ftfy. */
#ifndef DS_TOKENIZERS_HTML_UNESCAPE_H
#define DS_TOKENIZERS_HTML_UNESCAPE_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizers/codepoints.h"

/* Appends html.unescape(in[0..n)) to out, as Python 3.11 decodes it: named references from
 * html.entities.html5 with or without ';' (the longest known prefix of a longer name, as the
 * HTML5 standard says), decimal and hexadecimal references with HTML5's replacements for
 * invalid numbers. Allocation failure sets out->oom. */
void ds__html_unescape(const int32_t *in, size_t n, ds__cps *out);

#endif
