/* PNG files to and from RGB8 pixels, through libspng: the daemon's image output and the input
 * images a client sends (image-to-image, ControlNet conditioning). Files come from clients, so
 * decoding checks everything: CRCs, truncation, a size cap, and the chunk sizes libspng keeps. */
#ifndef DS_CORE_IMAGE_PNG_H
#define DS_CORE_IMAGE_PNG_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

/* Largest width or height either function accepts. */
#define DS_PNG_MAX_SIDE 16384u

/* rgb [height, width, 3] -> an 8-bit truecolor PNG file in *png (malloc'd, the caller frees it)
 * of *size bytes. INVALID_ARGUMENT for a zero or over-cap size or NULL pointers. */
int ds_png_encode_rgb8(const uint8_t *rgb, uint32_t width, uint32_t height, uint8_t **png,
                       size_t *size, ds_error *err);

/* A PNG of any color type and bit depth -> rgb8 [*height, *width, 3] in *rgb (malloc'd, the
 * caller frees it). Alpha is dropped (not composited), 16-bit samples keep their high byte,
 * palettes are expanded; gamma is not applied. INVALID_ARGUMENT naming what is wrong for a file
 * that is not a PNG, is truncated or corrupt (a bad CRC anywhere), has bytes after IEND, or is
 * larger than DS_PNG_MAX_SIDE on a side. On failure the outputs are left NULL / 0. */
int ds_png_decode_rgb8(const uint8_t *png, size_t size, uint8_t **rgb, uint32_t *width,
                       uint32_t *height, ds_error *err);

#endif
