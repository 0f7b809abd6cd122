#include "daemon/frame.h"

#include <stdlib.h>
#include <string.h>

/* Small first step, then doubling: the common frame is a few hundred bytes. */
#define INITIAL_BUFFER 256

void ds_frame_decoder_init(ds_frame_decoder *dec, uint64_t max_frame_bytes)
{
    memset(dec, 0, sizeof *dec);
    dec->max_frame_bytes = max_frame_bytes;
}

void ds_frame_decoder_free(ds_frame_decoder *dec)
{
    free(dec->buf);
    dec->buf = NULL;
    dec->buf_cap = 0;
    dec->buf_have = 0;
}

static int frame_complete(const ds_frame_decoder *dec)
{
    return dec->header_have == DS_FRAME_HEADER_BYTES && dec->buf_have == dec->length;
}

void ds_frame_decoder_trim(ds_frame_decoder *dec)
{
    if (!frame_complete(dec) || dec->buf_cap <= DS_FRAME_KEEP_BYTES)
        return;
    free(dec->buf);
    dec->buf = NULL;
    dec->buf_cap = 0;
}

int ds_frame_decoder_partial(const ds_frame_decoder *dec)
{
    return dec->header_have > 0 && !frame_complete(dec);
}

/* Makes room for `need` body bytes, never more than the frame's checked length. */
static int reserve(ds_frame_decoder *dec, size_t need)
{
    if (need <= dec->buf_cap)
        return DS_OK;
    size_t cap = dec->buf_cap ? dec->buf_cap : INITIAL_BUFFER;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > dec->length)
        cap = dec->length;
    uint8_t *grown = realloc(dec->buf, cap);
    if (!grown)
        return DS_ERR_RESOURCE_EXHAUSTED;
    dec->buf = grown;
    dec->buf_cap = cap;
    return DS_OK;
}

int ds_frame_decoder_feed(ds_frame_decoder *dec, const uint8_t *data, size_t len,
                          size_t *consumed, const uint8_t **frame, size_t *frame_len)
{
    size_t used = 0;
    *consumed = 0;
    if (dec->failed)
        return DS_FRAME_TOO_LARGE;

    /* The previous call handed out a complete frame: start the next one. */
    if (frame_complete(dec)) {
        dec->header_have = 0;
        dec->buf_have = 0;
    }

    while (dec->header_have < DS_FRAME_HEADER_BYTES) {
        if (used == len)
            return DS_FRAME_NEED_MORE;
        dec->header[dec->header_have++] = data[used++];
        *consumed = used;
    }
    if (dec->header_have == DS_FRAME_HEADER_BYTES && dec->buf_have == 0) {
        dec->length = (uint32_t)dec->header[0] | (uint32_t)dec->header[1] << 8 |
                      (uint32_t)dec->header[2] << 16 | (uint32_t)dec->header[3] << 24;
        if (dec->length > dec->max_frame_bytes) {
            dec->failed = 1;
            return DS_FRAME_TOO_LARGE;
        }
    }

    size_t missing = dec->length - dec->buf_have;
    size_t take = len - used < missing ? len - used : missing;
    if (take > 0) {
        if (reserve(dec, dec->buf_have + take) != DS_OK)
            return DS_ERR_RESOURCE_EXHAUSTED;
        memcpy(dec->buf + dec->buf_have, data + used, take);
        dec->buf_have += take;
        used += take;
    }
    *consumed = used;
    if (dec->buf_have < dec->length)
        return DS_FRAME_NEED_MORE;
    /* A zero-length frame still gets a valid pointer. */
    *frame = dec->buf ? dec->buf : dec->header;
    *frame_len = dec->length;
    return DS_FRAME_READY;
}

Diffsynth__V1__Envelope *ds_frame_unpack(const uint8_t *frame, size_t len, ds_error *err)
{
    /* protobuf-c unpacks a zero-length buffer as an empty Envelope: the caller then sees a
     * missing body, which is the right answer for a zero-length frame. */
    Diffsynth__V1__Envelope *env = diffsynth__v1__envelope__unpack(NULL, len, frame);
    if (!env)
        ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                     "malformed frame: %zu bytes do not decode as a diffsynth.v1.Envelope", len);
    return env;
}

int ds_frame_pack(const Diffsynth__V1__Envelope *env, uint8_t **out, size_t *out_len,
                  ds_error *err)
{
    size_t body = diffsynth__v1__envelope__get_packed_size(env);
    /* Header and body together must fit the 32-bit lengths libuv's write buffers carry. */
    if (body > DS_FRAME_MAX_CAP - DS_FRAME_HEADER_BYTES)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "reply of %zu bytes does not fit a frame (at most %llu bytes)", body,
                            (unsigned long long)(DS_FRAME_MAX_CAP - DS_FRAME_HEADER_BYTES));
    uint8_t *buf = malloc(DS_FRAME_HEADER_BYTES + body);
    if (!buf)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "out of memory for a reply of %zu bytes", body);
    buf[0] = (uint8_t)body;
    buf[1] = (uint8_t)(body >> 8);
    buf[2] = (uint8_t)(body >> 16);
    buf[3] = (uint8_t)(body >> 24);
    diffsynth__v1__envelope__pack(env, buf + DS_FRAME_HEADER_BYTES);
    *out = buf;
    *out_len = DS_FRAME_HEADER_BYTES + body;
    return DS_OK;
}
