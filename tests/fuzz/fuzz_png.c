/* Client image bytes through the PNG decoder. A file that decodes must re-encode and decode
 * again to the same pixels (libspng's encoder as the independent half of the round trip).
 * Nothing may crash, read out of bounds or leak. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/image_png.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *rgb = NULL;
    uint32_t width = 0, height = 0;
    ds_error err;
    if (ds_png_decode_rgb8(data, size, &rgb, &width, &height, &err) != DS_OK) {
        if (rgb || width || height) {
            fprintf(stderr, "fuzz_png: a failed decode left outputs set\n");
            abort();
        }
        return 0;
    }
    uint8_t *png = NULL;
    size_t png_size = 0;
    if (ds_png_encode_rgb8(rgb, width, height, &png, &png_size, &err) != DS_OK) {
        fprintf(stderr, "fuzz_png: %u x %u decoded image does not encode: %s\n", width, height,
                err.message);
        abort();
    }
    uint8_t *again = NULL;
    uint32_t w2 = 0, h2 = 0;
    if (ds_png_decode_rgb8(png, png_size, &again, &w2, &h2, &err) != DS_OK || w2 != width ||
        h2 != height || memcmp(again, rgb, (size_t)width * height * 3) != 0) {
        fprintf(stderr, "fuzz_png: %u x %u image does not survive a re-encode\n", width, height);
        abort();
    }
    free(again);
    free(png);
    free(rgb);
    return 0;
}
