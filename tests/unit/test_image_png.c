/* core/image_png.c: round trips through our encoder, PNG files PIL wrote in every color type
 * decoded to the pixels PIL reads (tests/golden/make_base_pipeline_golden.py), and files that
 * are cut short, corrupted, not PNG or too large refused with a message that says so. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/image_png.h"
#include "core/safetensors.h"
#include "test.h"

static ds_safetensors *golden;

static const ds_tensor_view *golden_view(const char *name)
{
    const ds_sd_entry *e = ds_state_dict_find(&golden->tensors, name);
    if (!e)
        fprintf(stderr, "golden tensor %s is missing\n", name);
    return e ? &e->tensor : NULL;
}

static uint8_t *pattern(uint32_t w, uint32_t h)
{
    uint8_t *rgb = malloc((size_t)w * h * 3);
    uint32_t state = 12345;
    for (size_t i = 0; rgb && i < (size_t)w * h * 3; i++) {
        state = state * 1664525u + 1013904223u;
        rgb[i] = (uint8_t)(state >> 24);
    }
    return rgb;
}

static void test_round_trip(void)
{
    const uint32_t sizes[][2] = {{1, 1}, {53, 37}, {256, 3}, {7, 300}};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        uint32_t w = sizes[k][0], h = sizes[k][1];
        uint8_t *rgb = pattern(w, h), *png = NULL, *back = NULL;
        size_t size = 0;
        uint32_t bw = 0, bh = 0;
        ds_error err;
        REQUIRE(rgb);
        CHECK(ds_png_encode_rgb8(rgb, w, h, &png, &size, &err) == DS_OK);
        CHECK(png && size > 8 && memcmp(png, "\x89PNG\r\n\x1a\n", 8) == 0);
        CHECK(ds_png_decode_rgb8(png, size, &back, &bw, &bh, &err) == DS_OK);
        CHECK(bw == w && bh == h);
        CHECK(back && memcmp(back, rgb, (size_t)w * h * 3) == 0);
        free(rgb);
        free(png);
        free(back);
    }
}

/* Files PIL wrote: truecolor, with alpha, gray 8 and 16 bit, gray+alpha, palettes of 8 and 4
 * bits, 1-bit bilevel. */
static void test_decode_pil_files(void)
{
    const char *kinds[] = {"rgb8", "rgba8", "gray8", "gray_alpha8", "palette", "palette4",
                           "bilevel", "gray16"};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        char name[64];
        snprintf(name, sizeof name, "png.%s", kinds[k]);
        const ds_tensor_view *file = golden_view(name);
        snprintf(name, sizeof name, "png_rgb.%s", kinds[k]);
        const ds_tensor_view *want = golden_view(name);
        if (!file || !want || want->ndim != 3) {
            CHECK(0);
            continue;
        }
        uint8_t *rgb = NULL;
        uint32_t w = 0, h = 0;
        ds_error err;
        int rc = ds_png_decode_rgb8(file->data, (size_t)file->nbytes, &rgb, &w, &h, &err);
        CHECK_MSG(rc == DS_OK, "%s: %s", kinds[k], err.message);
        CHECK_MSG(w == (uint32_t)want->shape[1] && h == (uint32_t)want->shape[0], "%s", kinds[k]);
        CHECK_MSG(rgb && rc == DS_OK && memcmp(rgb, want->data, (size_t)want->nbytes) == 0,
                  "%s pixels", kinds[k]);
        free(rgb);
    }
}

static int decode_fails(const uint8_t *png, size_t size, const char *needle)
{
    uint8_t *rgb = (uint8_t *)1;
    uint32_t w = 1, h = 1;
    ds_error err = {0};
    int rc = ds_png_decode_rgb8(png, size, &rgb, &w, &h, &err);
    if (rc != DS_ERR_INVALID_ARGUMENT || rgb != NULL || w != 0 || h != 0) {
        fprintf(stderr, "decode of %zu bytes: rc %d (%s)\n", size, rc, err.message);
        return 0;
    }
    if (needle && !strstr(err.message, needle)) {
        fprintf(stderr, "message \"%s\" lacks \"%s\"\n", err.message, needle);
        return 0;
    }
    return 1;
}

/* Every proper prefix of a valid file is refused, and says where it broke. */
static void test_truncated_files(void)
{
    const ds_tensor_view *file = golden_view("png.rgba8");
    REQUIRE(file);
    const uint8_t *png = file->data;
    size_t size = (size_t)file->nbytes;
    int failures = 0;
    for (size_t cut = 0; cut < size; cut++)
        failures += !decode_fails(png, cut, NULL);
    CHECK(failures == 0);
    CHECK(decode_fails(png, 5, "5 bytes is too short for a PNG file"));
    CHECK(decode_fails(png, 20, "bad header: the file is truncated"));
    CHECK(decode_fails(png, size / 2, "image data: the file is truncated"));
    CHECK(decode_fails(png, size - 4, "does not end with an IEND chunk (truncated"));
    /* Data after IEND is refused too. */
    uint8_t *longer = malloc(size + 1);
    REQUIRE(longer);
    memcpy(longer, png, size);
    longer[size] = 0;
    CHECK(decode_fails(longer, size + 1, "data after the image"));
    free(longer);
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t crc32_png(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return c ^ 0xffffffffu;
}

static void test_corrupt_files(void)
{
    uint8_t *rgb = pattern(40, 30), *png = NULL;
    size_t size = 0;
    ds_error err;
    REQUIRE(rgb && ds_png_encode_rgb8(rgb, 40, 30, &png, &size, &err) == DS_OK);
    uint8_t *bad = malloc(size);
    REQUIRE(bad);

    memcpy(bad, png, size);
    bad[0] = 'G';
    CHECK(decode_fails(bad, size, "not a PNG file (bad signature)"));

    /* A flipped bit in IHDR's CRC. */
    memcpy(bad, png, size);
    bad[30] ^= 0x01;
    CHECK(decode_fails(bad, size, "invalid chunk checksum"));

    /* A flipped bit inside the compressed image data. */
    memcpy(bad, png, size);
    size_t idat = 8 + 25; /* signature, IHDR chunk */
    REQUIRE(memcmp(bad + idat + 4, "IDAT", 4) == 0);
    bad[idat + 8 + 20] ^= 0x40;
    CHECK(decode_fails(bad, size, "image data"));

    /* Width 20000 with a correct CRC: over the cap. */
    memcpy(bad, png, size);
    put_be32(bad + 16, 20000);
    put_be32(bad + 29, crc32_png(bad + 12, 17));
    CHECK(decode_fails(bad, size, "over 16384 per side"));

    /* Width 0 with a correct CRC: invalid. */
    put_be32(bad + 16, 0);
    put_be32(bad + 29, crc32_png(bad + 12, 17));
    CHECK(decode_fails(bad, size, "image size is invalid"));

    /* 16384 x 16384 within the cap, claimed by a file of a few hundred bytes: no deflate stream
     * that short expands to 768 MiB, so it is refused before the pixels are allocated. */
    memcpy(bad, png, size);
    put_be32(bad + 16, 16384);
    put_be32(bad + 20, 16384);
    put_be32(bad + 29, crc32_png(bad + 12, 17));
    CHECK(decode_fails(bad, size, "a 16384 x 16384 image needs at least 780335 bytes of "
                                  "compressed data"));

    /* Bit depth 7 is no PNG bit depth. */
    memcpy(bad, png, size);
    bad[24] = 7;
    put_be32(bad + 29, crc32_png(bad + 12, 17));
    CHECK(decode_fails(bad, size, "bad header"));
    CHECK(be32(png + 16) == 40 && be32(png + 20) == 30);

    /* Not PNG at all. */
    static const uint8_t text[] = "this is not an image, just some text";
    CHECK(decode_fails(text, sizeof text, "bad signature"));
    free(bad);
    free(png);
    free(rgb);
}

static void test_bad_arguments(void)
{
    uint8_t pixel[3] = {1, 2, 3}, *png = (uint8_t *)1, *rgb = NULL;
    size_t size = 1;
    uint32_t w, h;
    ds_error err;
    CHECK(ds_png_encode_rgb8(pixel, 0, 1, &png, &size, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "PNG encode: size 0 x 1 is outside 1..16384 per side");
    CHECK(png == NULL && size == 0);
    CHECK(ds_png_encode_rgb8(pixel, 1, 16385, &png, &size, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "1 x 16385");
    CHECK(ds_png_encode_rgb8(NULL, 1, 1, &png, &size, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "PNG encode: rgb is NULL");
    CHECK(ds_png_encode_rgb8(pixel, 1, 1, NULL, &size, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "PNG encode: png is NULL");
    CHECK(ds_png_decode_rgb8(NULL, 10, &rgb, &w, &h, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "PNG decode: png is NULL");
    CHECK(ds_png_decode_rgb8(pixel, 3, NULL, &w, &h, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "PNG decode: rgb is NULL");
}

int main(void)
{
    ds_error err;
    const char *root = getenv("DS_TEST_DATA");
    char path[1024];
    snprintf(path, sizeof path, "%s/golden/base_pipeline.safetensors",
             root ? root : "tests/data");
    if (ds_safetensors_open(path, 0, &golden, &err) != DS_OK) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    RUN(test_round_trip);
    RUN(test_decode_pil_files);
    RUN(test_truncated_files);
    RUN(test_corrupt_files);
    RUN(test_bad_arguments);
    ds_safetensors_close(golden);
    return test_summary();
}
