/* Standard base64 (RFC 4648 §4, with padding), as JSON APIs carry images. */
#ifndef DS_HTTP_BASE64_H
#define DS_HTTP_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* A NUL-terminated malloc'd encoding of `data`; NULL when memory ran out. */
char *gw_base64_encode(const uint8_t *data, size_t len, size_t *out_len);

/* Decodes `text` (len bytes; padding optional, no whitespace inside). Returns a malloc'd
 * buffer with *out_len bytes, or NULL for text that is not base64 (or no memory). */
uint8_t *gw_base64_decode(const char *text, size_t len, size_t *out_len);

#endif
