/* core/video_write.c and core/video_read.c: the MP4 written is checked with libavformat opened
 * here on the file (frame count, size, fps, codec, pixel format, index first) and against the
 * raw frames (PSNR); lossless WebP and PNG folders round-trip exactly, a hand-made GIF reads
 * to its palette colours; files that are not videos, are cut short, empty or over the size
 * limit are refused with a message that says so. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/video_read.h"
#include "core/video_write.h"
#include "test.h"
#include "tools/video_probe.h"

static char tmpdir[256];

static const char *tmp_path(const char *name)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    return path;
}

static uint8_t *noise_frames(uint32_t t, uint32_t h, uint32_t w)
{
    size_t n = (size_t)t * h * w * 3;
    uint8_t *rgb = malloc(n);
    uint32_t state = 777;
    for (size_t i = 0; rgb && i < n; i++) {
        state = state * 1664525u + 1013904223u;
        rgb[i] = (uint8_t)(state >> 24);
    }
    return rgb;
}

static int write_bytes(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = size ? fwrite(data, 1, size, f) : 0;
    return fclose(f) == 0 && w == size ? 0 : -1;
}

#if DS_HAVE_FFMPEG
static long find_box(const uint8_t *data, size_t size, const char *type)
{
    for (size_t i = 4; i + 4 <= size; i++)
        if (memcmp(data + i, type, 4) == 0)
            return (long)i;
    return -1;
}

static void test_mp4_written_decodes(void)
{
    const uint32_t t = 9, h = 48, w = 80;
    uint8_t *frames = ds_test_smooth_frames(t, h, w);
    REQUIRE(frames);
    ds_video_write_options o = ds_video_write_defaults();
    ds_error err;
    const char *path = tmp_path("clip.mp4");
    int rc = ds_video_write_file(path, frames, t, h, w, &o, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    ds_probed_video p;
    CHECK(ds_probe_video_file(path, &p) == 0);
    CHECK_MSG(p.frames == t, "%u frames", p.frames);
    CHECK(p.width == w && p.height == h);
    CHECK_MSG(p.rate.num == 15 && p.rate.den == 1, "rate %d/%d", p.rate.num, p.rate.den);
    CHECK(p.codec == AV_CODEC_ID_H264);
    CHECK(p.pix_fmt == AV_PIX_FMT_YUV420P);
    CHECK(p.colorspace == AVCOL_SPC_SMPTE170M);
    if (p.frames == t) {
        for (uint32_t i = 0; i < t; i++) {
            size_t fb = (size_t)w * h * 3;
            double q = ds_test_psnr(frames + i * fb, p.rgb + i * fb, fb);
            CHECK_MSG(q >= 35.0, "frame %u PSNR %.2f dB", i, q);
        }
        fprintf(stderr, "  mp4 CRF 18: PSNR %.2f dB over all frames\n",
                ds_test_psnr(frames, p.rgb, (size_t)t * w * h * 3));
    }
    free(p.rgb);

    /* The memory path gives a file with the index (moov) before the media (mdat). */
    uint8_t *data = NULL;
    size_t size = 0;
    rc = ds_video_encode(frames, t, h, w, &o, &data, &size, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    long moov = find_box(data, size, "moov"), mdat = find_box(data, size, "mdat");
    CHECK_MSG(moov > 0 && mdat > 0 && moov < mdat, "moov at %ld, mdat at %ld", moov, mdat);
    CHECK(size > 8 && memcmp(data + 4, "ftyp", 4) == 0);

    /* Our reader on the same bytes agrees with the oracle on everything it reports. */
    ds_video v;
    rc = ds_video_decode(data, size, "clip.mp4", DS_VIDEO_READ_DEFAULT_MAX_BYTES, &v, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    CHECK(v.t == t && v.width == w && v.height == h);
    CHECK_MSG(fabs(v.fps - 15.0) < 1e-9, "fps %g", v.fps);
    if (rc == DS_OK && v.t == t) {
        double q = ds_test_psnr(frames, v.rgb, (size_t)t * w * h * 3);
        CHECK_MSG(q >= 35.0, "reader PSNR %.2f dB", q);
    }
    ds_video_free(&v);

    /* A lower quality gives a smaller file: the setting reaches the encoder. */
    ds_video_write_options worse = o;
    worse.quality = 40;
    uint8_t *small = NULL;
    size_t small_size = 0;
    CHECK(ds_video_encode(frames, t, h, w, &worse, &small, &small_size, &err) == DS_OK);
    CHECK_MSG(small_size < size, "CRF 40: %zu bytes, CRF 18: %zu", small_size, size);
    free(small);

    /* The size limit applies before the frames are decoded. */
    rc = ds_video_decode(data, size, "clip.mp4", (size_t)w * h * 3 * 4, &v, &err);
    CHECK(rc == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "clip.mp4: 9 frames of 80 x 48 RGB");
    CHECK_CONTAINS(err.message, "limit");
    CHECK(v.rgb == NULL && v.t == 0);
    free(data);
    free(frames);
}

static void test_mp4_fps_and_odd_sizes(void)
{
    const uint32_t t = 3, h = 32, w = 32;
    uint8_t *frames = ds_test_smooth_frames(t, h, w);
    REQUIRE(frames);
    ds_video_write_options o = ds_video_write_defaults();
    o.fps = 24.0;
    ds_error err;
    const char *path = tmp_path("fps24.mp4");
    CHECK(ds_video_write_file(path, frames, t, h, w, &o, &err) == DS_OK);
    ds_probed_video p;
    CHECK(ds_probe_video_file(path, &p) == 0);
    CHECK_MSG(p.rate.num == 24 && p.rate.den == 1, "rate %d/%d", p.rate.num, p.rate.den);
    CHECK(p.frames == t);
    free(p.rgb);

    uint8_t *data = NULL;
    size_t size = 0;
    CHECK(ds_video_encode(frames, t, 31, 32, &o, &data, &size, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "32 x 31 is odd");
    CHECK(data == NULL);
    o.fps = 0;
    CHECK(ds_video_encode(frames, t, h, w, &o, &data, &size, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "fps 0");
    o = ds_video_write_defaults();
    o.quality = 52;
    CHECK(ds_video_encode(frames, t, h, w, &o, &data, &size, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "CRF");
    CHECK(ds_video_encode(frames, 0, h, w, &o, &data, &size, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "0 frames");
    o.format = DS_VIDEO_PNG_FRAMES;
    CHECK(ds_video_encode(frames, t, h, w, &o, &data, &size, &err) == DS_ERR_INVALID_ARGUMENT);
    free(frames);
}
#else
/* Without FFmpeg, MP4 is refused as unavailable, not as a bad request. */
static void test_mp4_unavailable(void)
{
    uint8_t frames[2 * 2 * 3] = {0};
    ds_video_write_options o = ds_video_write_defaults();
    uint8_t *data = NULL;
    size_t size = 0;
    ds_error err;
    CHECK(!ds_video_mp4_supported());
    CHECK(ds_video_encode(frames, 1, 2, 2, &o, &data, &size, &err) ==
          DS_ERR_FAILED_PRECONDITION);
    CHECK_CONTAINS(err.message, "no FFmpeg");
    static const uint8_t mp4_head[16] = {0, 0, 0, 16, 'f', 't', 'y', 'p', 'i', 's', 'o', 'm'};
    ds_video v;
    CHECK(ds_video_decode(mp4_head, sizeof mp4_head, "x.mp4", 1 << 20, &v, &err) ==
          DS_ERR_FAILED_PRECONDITION);
    CHECK_CONTAINS(err.message, "x.mp4: MP4 input needs FFmpeg");
}
#endif

static void test_webp(void)
{
    /* Odd sizes are fine for WebP; noise makes the lossless check strict. */
    const uint32_t t = 5, h = 23, w = 37;
    uint8_t *frames = noise_frames(t, h, w);
    REQUIRE(frames);
    ds_video_write_options o = {.format = DS_VIDEO_WEBP, .fps = 15, .quality = -1,
                                .lossless = true};
    ds_error err;
    const char *path = tmp_path("clip.webp");
    int rc = ds_video_write_file(path, frames, t, h, w, &o, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    ds_video v;
    rc = ds_video_read_file(path, DS_VIDEO_READ_DEFAULT_MAX_BYTES, &v, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    CHECK(v.t == t && v.width == w && v.height == h);
    CHECK(v.rgb && memcmp(v.rgb, frames, (size_t)t * h * w * 3) == 0);
    CHECK_MSG(fabs(v.fps - 15.0) < 0.01, "fps %g", v.fps);
    ds_video_free(&v);
    free(frames);

    /* Lossy: close, not exact. */
    const uint32_t lt = 4, lh = 64, lw = 96;
    frames = ds_test_smooth_frames(lt, lh, lw);
    REQUIRE(frames);
    o.lossless = false;
    uint8_t *data = NULL;
    size_t size = 0;
    rc = ds_video_encode(frames, lt, lh, lw, &o, &data, &size, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    CHECK(size > 12 && memcmp(data, "RIFF", 4) == 0 && memcmp(data + 8, "WEBP", 4) == 0);
    rc = ds_video_decode(data, size, "lossy.webp", DS_VIDEO_READ_DEFAULT_MAX_BYTES, &v, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    CHECK(v.t == lt && v.width == lw && v.height == lh);
    if (v.rgb && v.t == lt) {
        double q = ds_test_psnr(frames, v.rgb, (size_t)lt * lh * lw * 3);
        CHECK_MSG(q >= 30.0 && q < INFINITY, "lossy WebP PSNR %.2f dB", q);
        fprintf(stderr, "  lossy WebP quality 90: PSNR %.2f dB\n", q);
    }
    ds_video_free(&v);

    /* One frame makes a still WebP (no animation chunks), read as a single frame without a
     * rate. */
    uint8_t *still = NULL;
    size_t still_size = 0;
    rc = ds_video_encode(frames, 1, lh, lw, &o, &still, &still_size, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    CHECK(still_size > 16 && memcmp(still + 12, "VP8 ", 4) == 0);
    rc = ds_video_decode(still, still_size, "still.webp", DS_VIDEO_READ_DEFAULT_MAX_BYTES, &v,
                         &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    CHECK(v.t == 1 && v.width == lw && v.height == lh && v.fps == 0.0);
    ds_video_free(&v);
    free(still);

    /* Cut short, the WebP is refused. */
    rc = ds_video_decode(data, size / 2, "half.webp", DS_VIDEO_READ_DEFAULT_MAX_BYTES, &v, &err);
    CHECK(rc == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "half.webp: WebP");
    CHECK_CONTAINS(err.message, "truncated");
    free(data);
    free(frames);
}

/* An animated WebP's VP8X header claims its canvas size, and libwebp allocates two RGBA canvases of
 * that size before it decodes a frame: a real two-frame animation with only the canvas enlarged must
 * be refused from the header. (The allocation itself is caught by the libFuzzer replay of
 * tests/fuzz/corpus/fuzz_video_read/oom_canvas_40000.webp; here, the message.) */
static void test_webp_hostile_canvas(void)
{
    const uint32_t t = 2, h = 8, w = 8;
    uint8_t *frames = noise_frames(t, h, w);
    REQUIRE(frames);
    ds_video_write_options o = {.format = DS_VIDEO_WEBP, .fps = 10, .quality = -1,
                                .lossless = true};
    uint8_t *data = NULL;
    size_t size = 0;
    ds_error err;
    int rc = ds_video_encode(frames, t, h, w, &o, &data, &size, &err);
    REQUIRE(rc == DS_OK);
    REQUIRE(size > 30 && memcmp(data + 12, "VP8X", 4) == 0);
    static const struct {
        uint32_t side;
        const char *prefix, *expect;
    } cases[] = {
        {40000, "huge.webp: frame size 40000 x 40000", "outside 1..16384 per side"},
        {16384, "huge.webp: one 16384 x 16384 RGB frame", "over the 1048576 byte limit"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (int b = 0; b < 3; b++) {
            data[24 + b] = (uint8_t)((cases[c].side - 1) >> (8 * b)); /* canvas width - 1 */
            data[27 + b] = (uint8_t)((cases[c].side - 1) >> (8 * b)); /* canvas height - 1 */
        }
        ds_video v;
        rc = ds_video_decode(data, size, "huge.webp", (size_t)1 << 20, &v, &err);
        CHECK(rc == DS_ERR_INVALID_ARGUMENT);
        CHECK_CONTAINS(err.message, cases[c].prefix);
        CHECK_CONTAINS(err.message, cases[c].expect);
    }
    free(data);
    free(frames);
}

static void test_png_folder(void)
{
    const uint32_t t = 4, h = 9, w = 13;
    uint8_t *frames = noise_frames(t, h, w);
    REQUIRE(frames);
    ds_video_write_options o = {.format = DS_VIDEO_PNG_FRAMES, .fps = 15, .quality = -1};
    ds_error err;
    const char *dir = tmp_path("frames");
    char dir_copy[512];
    snprintf(dir_copy, sizeof dir_copy, "%s", dir);
    int rc = ds_video_write_file(dir_copy, frames, t, h, w, &o, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    char name[700];
    snprintf(name, sizeof name, "%s/00003.png", dir_copy);
    CHECK(access(name, R_OK) == 0);
    ds_video v;
    rc = ds_video_read_file(dir_copy, DS_VIDEO_READ_DEFAULT_MAX_BYTES, &v, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    CHECK(v.t == t && v.width == w && v.height == h && v.fps == 0.0);
    CHECK(v.rgb && memcmp(v.rgb, frames, (size_t)t * h * w * 3) == 0);
    ds_video_free(&v);

    /* A second video is not mixed into the first one's folder. */
    rc = ds_video_write_file(dir_copy, frames, t, h, w, &o, &err);
    CHECK(rc == DS_ERR_ALREADY_EXISTS);
    CHECK_CONTAINS(err.message, "already holds PNG files");

    /* Frames of different sizes in one folder are refused, naming the file. */
    uint8_t *other = noise_frames(1, h + 1, w);
    char mixed[512];
    snprintf(mixed, sizeof mixed, "%s", tmp_path("mixed"));
    CHECK(ds_video_write_file(mixed, frames, 1, h, w, &o, &err) == DS_OK);
    char second[600];
    snprintf(second, sizeof second, "%s/zz", mixed);
    CHECK(ds_video_write_file(second, other, 1, h + 1, w, &o, &err) == DS_OK);
    snprintf(name, sizeof name, "%s/00000.png", second);
    char moved[700];
    snprintf(moved, sizeof moved, "%s/00001.png", mixed);
    CHECK(rename(name, moved) == 0);
    rc = ds_video_read_file(mixed, DS_VIDEO_READ_DEFAULT_MAX_BYTES, &v, &err);
    CHECK(rc == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "00001.png: frame is 13 x 10, the first (00000.png) was 13 x 9");
    rmdir(second);
    free(other);

    char empty[512];
    snprintf(empty, sizeof empty, "%s", tmp_path("empty_dir"));
    CHECK(mkdir(empty, 0700) == 0);
    rc = ds_video_read_file(empty, DS_VIDEO_READ_DEFAULT_MAX_BYTES, &v, &err);
    CHECK(rc == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "holds no PNG files");
    free(frames);
}

static void test_malformed_inputs(void)
{
    ds_video v;
    ds_error err;
    const char *text = "this is a text file, not a video\n";
    char path[512];
    snprintf(path, sizeof path, "%s", tmp_path("text.mp4"));
    REQUIRE(write_bytes(path, text, strlen(text)) == 0);
    int rc = ds_video_read_file(path, DS_VIDEO_READ_DEFAULT_MAX_BYTES, &v, &err);
    CHECK(rc == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "text.mp4: not a video");

    snprintf(path, sizeof path, "%s", tmp_path("empty.mp4"));
    REQUIRE(write_bytes(path, "", 0) == 0);
    rc = ds_video_read_file(path, DS_VIDEO_READ_DEFAULT_MAX_BYTES, &v, &err);
    CHECK(rc == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "empty.mp4: empty file (0 bytes)");

    snprintf(path, sizeof path, "%s", tmp_path("missing.mp4"));
    rc = ds_video_read_file(path, DS_VIDEO_READ_DEFAULT_MAX_BYTES, &v, &err);
    CHECK(rc == DS_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.message, "missing.mp4");

#if DS_HAVE_FFMPEG
    /* A real MP4 cut at several points: the index first, so every cut loses media. */
    const uint32_t t = 9, h = 32, w = 48;
    uint8_t *frames = ds_test_smooth_frames(t, h, w);
    REQUIRE(frames);
    ds_video_write_options o = ds_video_write_defaults();
    uint8_t *data = NULL;
    size_t size = 0;
    REQUIRE(ds_video_encode(frames, t, h, w, &o, &data, &size, &err) == DS_OK);
    const double cuts[] = {0.02, 0.3, 0.6, 0.95};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        size_t cut = (size_t)(size * cuts[k]);
        rc = ds_video_decode(data, cut, "cut.mp4", DS_VIDEO_READ_DEFAULT_MAX_BYTES, &v, &err);
        CHECK_MSG(rc == DS_ERR_INVALID_ARGUMENT, "cut at %zu of %zu: rc %d", cut, size, rc);
        CHECK_CONTAINS(err.message, "cut.mp4: ");
        CHECK_MSG(strstr(err.message, "truncated MP4"), "cut at %zu: %s", cut, err.message);
        CHECK(v.rgb == NULL);
    }
    /* Through the file path, the truncation is named with the path. */
    snprintf(path, sizeof path, "%s", tmp_path("truncated.mp4"));
    REQUIRE(write_bytes(path, data, size * 6 / 10) == 0);
    rc = ds_video_read_file(path, DS_VIDEO_READ_DEFAULT_MAX_BYTES, &v, &err);
    CHECK(rc == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "truncated.mp4: truncated MP4: the 'mdat' box");
    fprintf(stderr, "  truncated MP4: %s\n", err.message);

    /* The file itself over the limit is refused unread. */
    snprintf(path, sizeof path, "%s", tmp_path("whole.mp4"));
    REQUIRE(write_bytes(path, data, size) == 0);
    rc = ds_video_read_file(path, size - 1, &v, &err);
    CHECK(rc == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "over the");
    free(data);
    free(frames);
#endif
}

/* A GIF89a written by hand (no GIF encoder involved): a 4-colour global palette, frames that
 * cover the canvas, LZW with a clear code after every two pixels so every code stays 3 bits. */
typedef struct bits {
    uint8_t *out;
    size_t n;
    uint32_t acc, count;
} bits;

static void put_code(bits *b, uint32_t code)
{
    b->acc |= code << b->count;
    b->count += 3;
    while (b->count >= 8) {
        b->out[b->n++] = (uint8_t)b->acc;
        b->acc >>= 8;
        b->count -= 8;
    }
}

static const uint8_t gif_palette[4][3] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 255}};

static size_t make_gif(uint8_t *g, const uint8_t *index, uint32_t t, uint32_t h, uint32_t w)
{
    size_t n = 0;
    memcpy(g, "GIF89a", 6);
    n = 6;
    g[n++] = (uint8_t)w, g[n++] = 0, g[n++] = (uint8_t)h, g[n++] = 0;
    g[n++] = 0x81; /* global palette of 2^(1+1) colours */
    g[n++] = 0, g[n++] = 0;
    memcpy(g + n, gif_palette, 12);
    n += 12;
    for (uint32_t i = 0; i < t; i++) {
        /* Graphic control: no disposal, 10/100 s per frame. */
        const uint8_t gce[] = {0x21, 0xf9, 4, 0, 10, 0, 0, 0};
        memcpy(g + n, gce, sizeof gce);
        n += sizeof gce;
        const uint8_t desc[] = {0x2c, 0, 0, 0, 0, (uint8_t)w, 0, (uint8_t)h, 0, 0};
        memcpy(g + n, desc, sizeof desc);
        n += sizeof desc;
        g[n++] = 2; /* LZW minimum code size */
        uint8_t data[1024];
        bits b = {.out = data};
        for (uint32_t p = 0; p < w * h; p++) {
            if (p % 2 == 0)
                put_code(&b, 4);
            put_code(&b, index[i * w * h + p]);
        }
        put_code(&b, 5);
        if (b.count)
            data[b.n++] = (uint8_t)b.acc;
        for (size_t k = 0; k < b.n; k += 255) {
            size_t len = b.n - k < 255 ? b.n - k : 255;
            g[n++] = (uint8_t)len;
            memcpy(g + n, data + k, len);
            n += len;
        }
        g[n++] = 0;
    }
    g[n++] = 0x3b;
    return n;
}

static void test_gif(void)
{
    const uint32_t t = 3, h = 6, w = 10;
    uint8_t index[3 * 6 * 10], expected[3 * 6 * 10 * 3], gif[4096];
    for (uint32_t i = 0; i < t * h * w; i++) {
        index[i] = (uint8_t)((i * 7 + i / 13) % 4);
        memcpy(expected + 3 * i, gif_palette[index[i]], 3);
    }
    size_t size = make_gif(gif, index, t, h, w);
    char path[512];
    snprintf(path, sizeof path, "%s", tmp_path("clip.gif"));
    REQUIRE(write_bytes(path, gif, size) == 0);
    ds_video v;
    ds_error err;
    int rc = ds_video_read_file(path, DS_VIDEO_READ_DEFAULT_MAX_BYTES, &v, &err);
#if DS_HAVE_FFMPEG
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    CHECK_MSG(v.t == t && v.width == w && v.height == h, "%u frames of %u x %u", v.t, v.width,
              v.height);
    CHECK(v.rgb && v.t == t && memcmp(v.rgb, expected, sizeof expected) == 0);
    CHECK_MSG(fabs(v.fps - 10.0) < 1e-6, "fps %g", v.fps);
    ds_video_free(&v);
#else
    CHECK(rc == DS_ERR_FAILED_PRECONDITION);
    CHECK_CONTAINS(err.message, "clip.gif: GIF input needs FFmpeg");
#endif
}

static void test_formats_by_name(void)
{
    ds_video_format f = DS_VIDEO_MP4;
    ds_error err;
    CHECK(ds_video_format_from_path("out/clip.MP4", &f, &err) == DS_OK && f == DS_VIDEO_MP4);
    CHECK(ds_video_format_from_path("clip.webp", &f, &err) == DS_OK && f == DS_VIDEO_WEBP);
    CHECK(ds_video_format_from_path("frames/", &f, &err) == DS_OK && f == DS_VIDEO_PNG_FRAMES);
    CHECK(ds_video_format_from_path("a.b/frames", &f, &err) == DS_OK &&
          f == DS_VIDEO_PNG_FRAMES);
    CHECK(ds_video_format_from_path("clip.gif", &f, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\".gif\" is not .mp4 or .webp");
    CHECK(ds_video_format_from_name("WebP", &f, &err) == DS_OK && f == DS_VIDEO_WEBP);
    CHECK(ds_video_format_from_name("png", &f, &err) == DS_OK && f == DS_VIDEO_PNG_FRAMES);
    CHECK(ds_video_format_from_name("avi", &f, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"avi\" is not one of mp4, webp, png");
}

static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
            remove_tree(path);
        else
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "%s/ds_test_video_XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
#if DS_HAVE_FFMPEG
    av_log_set_level(AV_LOG_QUIET);
    RUN(test_mp4_written_decodes);
    RUN(test_mp4_fps_and_odd_sizes);
#else
    RUN(test_mp4_unavailable);
#endif
    RUN(test_webp);
    RUN(test_webp_hostile_canvas);
    RUN(test_png_folder);
    RUN(test_gif);
    RUN(test_malformed_inputs);
    RUN(test_formats_by_name);
    remove_tree(tmpdir);
    return test_summary();
}
