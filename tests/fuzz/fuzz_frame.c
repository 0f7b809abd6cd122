/* A byte stream as a client could send it, through everything the daemon does before a
 * handler runs: the frame decoder (fed in chunks whose sizes come from the input), envelope
 * unpacking and request validation. Nothing may crash, read out of bounds or leak. */
#include <stddef.h>
#include <stdint.h>

#include "daemon/dispatch.h"
#include "daemon/frame.h"

/* A small cap so that length checks are reached by short inputs too. */
#define FUZZ_MAX_FRAME 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    /* The first byte picks the chunk size (1..256), the rest is the stream. */
    size_t chunk = (size_t)data[0] + 1;
    data++;
    size--;

    ds_frame_decoder dec;
    ds_frame_decoder_init(&dec, FUZZ_MAX_FRAME);
    size_t off = 0;
    while (off < size) {
        size_t piece = size - off < chunk ? size - off : chunk;
        size_t used = 0;
        while (used < piece) {
            size_t consumed;
            const uint8_t *frame = NULL;
            size_t frame_len = 0;
            int rc = ds_frame_decoder_feed(&dec, data + off + used, piece - used, &consumed,
                                           &frame, &frame_len);
            used += consumed;
            if (rc == DS_FRAME_READY) {
                ds_error err;
                Diffsynth__V1__Envelope *env = ds_frame_unpack(frame, frame_len, &err);
                if (env) {
                    ds_dispatch_validate(env, &err);
                    diffsynth__v1__envelope__free_unpacked(env, NULL);
                }
            } else if (rc != DS_FRAME_NEED_MORE) {
                /* Too large or out of memory: the daemon closes the connection here. */
                ds_frame_decoder_free(&dec);
                return 0;
            }
        }
        off += piece;
    }
    ds_frame_decoder_free(&dec);
    return 0;
}
