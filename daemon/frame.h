/* Framing (DESIGN §4.6): every frame is a 4-byte little-endian length followed by exactly that
 * many bytes of one serialized Envelope.
 *
 * The decoder is fed whatever chunks the socket delivers (one byte at a time works) and yields
 * complete frames. It never allocates from a length it has not checked against the cap, and it
 * grows its buffer only as bytes actually arrive, so a peer announcing 64 MiB and sending 10
 * bytes costs 10 bytes. No libuv here: unit-testable and fuzzable on its own.
 */
#ifndef DS_DAEMON_FRAME_H
#define DS_DAEMON_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "diffsynth.pb-c.h"

#define DS_FRAME_HEADER_BYTES 4
#define DS_FRAME_DEFAULT_MAX ((uint64_t)64 << 20)
/* The length field is 32 bits wide: no cap above this can ever be reached. */
#define DS_FRAME_MAX_CAP ((uint64_t)UINT32_MAX)

typedef enum ds_frame_result {
    DS_FRAME_NEED_MORE = 0,  /* every byte was consumed; no complete frame yet */
    DS_FRAME_READY = 1,      /* a complete frame is available */
    DS_FRAME_TOO_LARGE = 2,  /* the announced length exceeds the cap; the stream is unusable */
} ds_frame_result;

typedef struct ds_frame_decoder {
    uint64_t max_frame_bytes;
    uint8_t header[DS_FRAME_HEADER_BYTES];
    size_t header_have;
    uint32_t length;        /* of the frame being read; valid once header_have == 4 */
    uint8_t *buf;           /* body bytes received so far */
    size_t buf_cap;
    size_t buf_have;
    int failed;             /* set after DS_FRAME_TOO_LARGE; every later feed returns it again */
} ds_frame_decoder;

void ds_frame_decoder_init(ds_frame_decoder *dec, uint64_t max_frame_bytes);
void ds_frame_decoder_free(ds_frame_decoder *dec);

/* A buffer up to this size is kept between frames; a larger one is freed by
 * ds_frame_decoder_trim. */
#define DS_FRAME_KEEP_BYTES ((size_t)64 << 10)

/* Call once the frame the last feed returned has been handled: frees a buffer grown past
 * DS_FRAME_KEEP_BYTES, so one large frame does not hold its memory for the connection's
 * life. Between frames only (the frame pointer is invalid afterwards). */
void ds_frame_decoder_trim(ds_frame_decoder *dec);

/* True while part of a frame (some header or body bytes) has arrived and the rest has not. */
int ds_frame_decoder_partial(const ds_frame_decoder *dec);

/* Consumes bytes from data[0..len) up to the end of the first complete frame.
 * *consumed gets the number of bytes eaten (call again with the rest).
 * READY: *frame / *frame_len point at the body, valid until the next call.
 * TOO_LARGE: dec->length holds the announced length.
 * Returns DS_ERR_RESOURCE_EXHAUSTED (negative) only when memory runs out. */
int ds_frame_decoder_feed(ds_frame_decoder *dec, const uint8_t *data, size_t len,
                          size_t *consumed, const uint8_t **frame, size_t *frame_len);

/* Unpacks a frame body. NULL + err INVALID_ARGUMENT ("malformed frame: ...") when it is not an
 * Envelope. Free with diffsynth__v1__envelope__free_unpacked(env, NULL). */
Diffsynth__V1__Envelope *ds_frame_unpack(const uint8_t *frame, size_t len, ds_error *err);

/* Serializes env into a new buffer holding header + body. *out is malloc'd. Fails with
 * RESOURCE_EXHAUSTED when the body would not fit the 32-bit length or memory runs out. */
int ds_frame_pack(const Diffsynth__V1__Envelope *env, uint8_t **out, size_t *out_len,
                  ds_error *err);

#endif
