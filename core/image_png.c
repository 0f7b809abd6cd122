#include "core/image_png.h"

#include <spng.h>
#include <stdlib.h>
#include <string.h>

/* The largest chunk a decoder keeps, and all kept chunks together: text and ICC chunks are the
 * only large ancillary ones, and nothing here reads them. */
#define CHUNK_LIMIT (8u << 20)
#define CHUNK_CACHE_LIMIT (32u << 20)

/* DEFLATE expands at most 1032-fold (a 258-byte match per 2 bits, zlib's technical notes):
 * an image whose pixels need more than 1032 times the file's size cannot be in the file. */
#define DEFLATE_MAX_RATIO 1032u

/* libspng reports running out of input as a bare "end of stream"; for a file that is truncation. */
static const char *describe(int ret)
{
    return ret == SPNG_IO_EOF ? "the file is truncated" : spng_strerror(ret);
}

int ds_png_encode_rgb8(const uint8_t *rgb, uint32_t width, uint32_t height, uint8_t **png,
                       size_t *size, ds_error *err)
{
    if (!rgb || !png || !size)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "PNG encode: %s is NULL",
                            !rgb ? "rgb" : !png ? "png" : "size");
    *png = NULL;
    *size = 0;
    if (width == 0 || height == 0 || width > DS_PNG_MAX_SIDE || height > DS_PNG_MAX_SIDE)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "PNG encode: size %u x %u is outside 1..%u per side", width, height,
                            DS_PNG_MAX_SIDE);
    spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    if (!ctx)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "PNG encode: out of memory");
    int rc = DS_OK, ret;
    struct spng_ihdr ihdr = {
        .width = width,
        .height = height,
        .bit_depth = 8,
        .color_type = SPNG_COLOR_TYPE_TRUECOLOR,
    };
    size_t bytes = (size_t)width * height * 3;
    if ((ret = spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1)) != 0 ||
        (ret = spng_set_ihdr(ctx, &ihdr)) != 0 ||
        (ret = spng_encode_image(ctx, rgb, bytes, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE)) != 0) {
        rc = ds_error_set(err, ret == SPNG_EMEM ? DS_ERR_RESOURCE_EXHAUSTED : DS_ERR_INTERNAL,
                          "PNG encode: %s", spng_strerror(ret));
        goto fail;
    }
    size_t len = 0;
    void *buffer = spng_get_png_buffer(ctx, &len, &ret);
    if (!buffer) {
        rc = ds_error_set(err, ret == SPNG_EMEM ? DS_ERR_RESOURCE_EXHAUSTED : DS_ERR_INTERNAL,
                          "PNG encode: %s", spng_strerror(ret));
        goto fail;
    }
    *png = buffer;
    *size = len;
fail:
    spng_ctx_free(ctx);
    return rc;
}

int ds_png_decode_rgb8(const uint8_t *png, size_t size, uint8_t **rgb, uint32_t *width,
                       uint32_t *height, ds_error *err)
{
    if (!png || !rgb || !width || !height)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "PNG decode: %s is NULL",
                            !png ? "png" : !rgb ? "rgb" : !width ? "width" : "height");
    *rgb = NULL;
    *width = 0;
    *height = 0;
    static const uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (size < sizeof signature)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "PNG decode: %zu bytes is too short for a PNG file", size);
    for (size_t i = 0; i < sizeof signature; i++)
        if (png[i] != signature[i])
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "PNG decode: not a PNG file (bad signature)");

    spng_ctx *ctx = spng_ctx_new(0);
    if (!ctx)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "PNG decode: out of memory");
    int rc = DS_OK, ret;
    uint8_t *pixels = NULL;
    struct spng_ihdr ihdr;
    if ((ret = spng_set_image_limits(ctx, DS_PNG_MAX_SIDE, DS_PNG_MAX_SIDE)) != 0 ||
        (ret = spng_set_chunk_limits(ctx, CHUNK_LIMIT, CHUNK_CACHE_LIMIT)) != 0 ||
        (ret = spng_set_png_buffer(ctx, png, size)) != 0) {
        rc = ds_error_set(err, DS_ERR_INTERNAL, "PNG decode: %s", spng_strerror(ret));
        goto fail;
    }
    if ((ret = spng_get_ihdr(ctx, &ihdr)) != 0) {
        if (ret == SPNG_EWIDTH || ret == SPNG_EHEIGHT || ret == SPNG_EUSER_WIDTH ||
            ret == SPNG_EUSER_HEIGHT)
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "PNG decode: image size is invalid or over %u per side (%s)",
                              DS_PNG_MAX_SIDE, spng_strerror(ret));
        else
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "PNG decode: bad header: %s",
                              describe(ret));
        goto fail;
    }
    /* Checked before the pixel buffer is allocated: a header alone can claim 16384 x 16384
     * (768 MiB of RGB8) in a 100-byte file. */
    static const unsigned channels[7] = {1, 0, 3, 1, 2, 0, 4};
    unsigned bits = ihdr.color_type < 7 ? channels[ihdr.color_type] * ihdr.bit_depth : 0;
    uint64_t packed = ((uint64_t)ihdr.width * ihdr.height * bits + 7) / 8;
    if (packed / DEFLATE_MAX_RATIO > size) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "PNG decode: a %u x %u image needs at least %llu bytes of compressed "
                          "data; the file has %zu bytes (truncated or corrupt)",
                          ihdr.width, ihdr.height,
                          (unsigned long long)(packed / DEFLATE_MAX_RATIO), size);
        goto fail;
    }
    size_t bytes = 0;
    if ((ret = spng_decoded_image_size(ctx, SPNG_FMT_RGB8, &bytes)) != 0) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "PNG decode: %u x %u image: %s",
                          ihdr.width, ihdr.height, describe(ret));
        goto fail;
    }
    pixels = malloc(bytes);
    if (!pixels) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                          "PNG decode: out of memory for a %u x %u image", ihdr.width,
                          ihdr.height);
        goto fail;
    }
    /* Reading on to IEND checks the chunks after the pixels too. */
    if ((ret = spng_decode_image(ctx, pixels, bytes, SPNG_FMT_RGB8, 0)) != 0 ||
        (ret = spng_decode_chunks(ctx)) != 0) {
        rc = ds_error_set(err, ret == SPNG_EMEM ? DS_ERR_RESOURCE_EXHAUSTED
                                                : DS_ERR_INVALID_ARGUMENT,
                          "PNG decode: %u x %u image data: %s", ihdr.width, ihdr.height,
                          describe(ret));
        goto fail;
    }
    /* libspng stops at IEND's type; its CRC, the file's last 4 bytes, is checked here. */
    static const uint8_t iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82};
    if (size < sizeof iend || memcmp(png + size - sizeof iend, iend, sizeof iend) != 0) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "PNG decode: the file does not end with an IEND chunk (truncated, or "
                          "data after the image)");
        goto fail;
    }
    *rgb = pixels;
    *width = ihdr.width;
    *height = ihdr.height;
    spng_ctx_free(ctx);
    return DS_OK;
fail:
    free(pixels);
    spng_ctx_free(ctx);
    return rc;
}
