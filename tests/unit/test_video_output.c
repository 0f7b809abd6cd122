/* daemon/video_output.c: the request's video settings and their refusals, the checks on video
 * inputs, and the encoding of a pipeline's frames into what RunPipeline sends. The MP4 is
 * checked with libavformat opened here (tools/video_probe.c: frame count, size, fps, PSNR
 * against the raw frames), the lossless WebP with libwebp's own animation decoder, pixel for
 * pixel: neither is the daemon's reader. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <webp/demux.h>

#include "daemon/video_output.h"
#include "test.h"
#include "tools/video_probe.h"

static ds_tensor frames_tensor(uint8_t *rgb, int64_t t, int64_t h, int64_t w)
{
    ds_tensor x = {.dtype = DS_U8, .ndim = 4, .shape = {t, h, w, 3}, .data = rgb};
    return x;
}

static int parse(const char *format, double fps, int quality, int lossless, ds_video_output *o,
                 ds_error *err)
{
    Diffsynth__V1__RunPipelineRequest req = DIFFSYNTH__V1__RUN_PIPELINE_REQUEST__INIT;
    req.video_format = (char *)format;
    req.fps = fps;
    req.video_quality = quality;
    req.video_lossless = lossless;
    return ds_video_output_parse(&req, o, err);
}

/* The frames encoded as the request's settings say; *owned is the file (the caller frees it). */
static int encode(const char *format, double fps, int lossless, uint8_t *rgb, uint32_t t,
                  uint32_t h, uint32_t w, uint8_t **owned, const uint8_t **data, size_t *size,
                  ds_error *err)
{
    ds_video_output o;
    int rc = parse(format, fps, 0, lossless, &o, err);
    if (rc != DS_OK)
        return rc;
    ds_tensor x = frames_tensor(rgb, t, h, w);
    return ds_video_output_encode("video", &x, &o, owned, data, size, err);
}

static void test_parse_settings(void)
{
    ds_video_output o;
    ds_error err;
    /* An empty request: MP4 at upstream's 15 fps, the encoder's default quality. */
    Diffsynth__V1__RunPipelineRequest empty = DIFFSYNTH__V1__RUN_PIPELINE_REQUEST__INIT;
    CHECK(ds_video_output_parse(&empty, &o, &err) == DS_OK);
    CHECK(!o.raw && o.write.format == DS_VIDEO_MP4);
    CHECK(o.write.fps == 15.0 && o.write.quality == -1 && !o.write.lossless);

    CHECK(parse("WebP", 24, 100, 1, &o, &err) == DS_OK);
    CHECK(!o.raw && o.write.format == DS_VIDEO_WEBP && o.write.fps == 24.0);
    CHECK(o.write.quality == 100 && o.write.lossless);
    CHECK(parse("mp4", 0, 51, 0, &o, &err) == DS_OK);
    CHECK(o.write.format == DS_VIDEO_MP4 && o.write.quality == 51);
    CHECK(parse("frames", 8, 0, 0, &o, &err) == DS_OK);
    CHECK(o.raw && o.write.fps == 8.0);
    CHECK(parse("png", 0, 0, 0, &o, &err) == DS_OK);
    CHECK(o.raw);
}

static void test_parse_refusals(void)
{
    static const struct {
        const char *format;
        double fps;
        int quality, lossless;
        const char *needle;
    } bad[] = {
        {"avi", 0, 0, 0, "run_pipeline.video_format \"avi\" is not one of mp4, webp, frames"},
        {"mp4 ", 0, 0, 0, "run_pipeline.video_format \"mp4 \""},
        {"mp4", -1, 0, 0, "run_pipeline.fps -1 is not in (0, 1000]"},
        {"mp4", 1000.5, 0, 0, "run_pipeline.fps 1000.5 is not in (0, 1000]"},
        {"mp4", NAN, 0, 0, "run_pipeline.fps nan"},
        {"webp", INFINITY, 0, 0, "run_pipeline.fps inf"},
        {"mp4", 0, 52, 0, "run_pipeline.video_quality 52 is not in 1..51 for mp4"},
        {"mp4", 0, -3, 0, "run_pipeline.video_quality -3 is not in 1..51"},
        {"webp", 0, 101, 0, "run_pipeline.video_quality 101 is not in 1..100 for webp"},
        {"frames", 0, 20, 0, "run_pipeline.video_quality 20 does not apply to raw frames"},
        {"mp4", 0, 0, 1, "run_pipeline.video_lossless applies to webp only, not mp4"},
        {"frames", 0, 0, 1, "run_pipeline.video_lossless applies to webp only, not raw frames"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ds_video_output o;
        ds_error err;
        int rc = parse(bad[i].format, bad[i].fps, bad[i].quality, bad[i].lossless, &o, &err);
        CHECK_MSG(rc == DS_ERR_INVALID_ARGUMENT, "case %zu: rc %d", i, rc);
        CHECK_CONTAINS(err.message, bad[i].needle);
    }
}

static void test_mp4_supported(void)
{
    ds_video_output o;
    ds_error err;
    REQUIRE(parse("", 0, 0, 0, &o, &err) == DS_OK);
    int rc = ds_video_output_check_supported(&o, &err);
    if (ds_video_mp4_supported()) {
        CHECK(rc == DS_OK);
    } else {
        CHECK(rc == DS_ERR_FAILED_PRECONDITION);
        CHECK_CONTAINS(err.message, "run_pipeline.video_format mp4");
        CHECK_CONTAINS(err.message, "ask for webp or frames");
    }
    REQUIRE(parse("webp", 0, 0, 0, &o, &err) == DS_OK);
    CHECK(ds_video_output_check_supported(&o, &err) == DS_OK);
    REQUIRE(parse("frames", 0, 0, 0, &o, &err) == DS_OK);
    CHECK(ds_video_output_check_supported(&o, &err) == DS_OK);
}

static void test_check_input(void)
{
    int64_t shape[4] = {9, 16, 24, 3};
    Diffsynth__V1__Tensor t = DIFFSYNTH__V1__TENSOR__INIT;
    t.dtype = DIFFSYNTH__V1__DTYPE__U8;
    t.shape = shape;
    t.n_shape = 4;
    ds_error err;
    CHECK(ds_video_output_check_input("vace_video", &t, &err) == DS_OK);

    t.dtype = DIFFSYNTH__V1__DTYPE__F32;
    CHECK(ds_video_output_check_input("vace_video", &t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "run_pipeline.vace_video: dtype 1, expected U8");
    t.dtype = DIFFSYNTH__V1__DTYPE__U8;

    t.n_shape = 3;
    CHECK(ds_video_output_check_input("input_video", &t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "run_pipeline.input_video has 3 dims, expected 4");
    t.n_shape = 4;

    shape[0] = 0;
    CHECK(ds_video_output_check_input("input_video", &t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "run_pipeline.input_video has 0 frames");
    shape[0] = 9;

    shape[3] = 4;
    CHECK(ds_video_output_check_input("vace_video_mask", &t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "run_pipeline.vace_video_mask has 4 channels, expected 3");
}

static void test_encode_mp4(void)
{
#if DS_HAVE_FFMPEG
    if (!ds_video_mp4_supported()) {
        printf("# libavcodec has no %s: the MP4 case is skipped\n", DS_VIDEO_H264_ENCODER);
        return;
    }
    const uint32_t t = 9, h = 64, w = 96;
    uint8_t *rgb = ds_test_smooth_frames(t, h, w);
    REQUIRE(rgb);
    ds_error err;
    uint8_t *owned = NULL;
    const uint8_t *data = NULL;
    size_t size = 0;
    int rc = encode("mp4", 24, 0, rgb, t, h, w, &owned, &data, &size, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    CHECK(owned && data == owned && size > 8 && memcmp(data + 4, "ftyp", 4) == 0);

    char path[] = "/tmp/ds-video-output-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    CHECK(write(fd, data, size) == (ssize_t)size);
    close(fd);
    ds_probed_video p;
    CHECK(ds_probe_video_file(path, &p) == 0);
    unlink(path);
    CHECK_MSG(p.frames == t, "%u frames, expected %u", p.frames, t);
    CHECK_MSG(p.width == w && p.height == h, "%u x %u", p.width, p.height);
    CHECK_MSG(p.rate.num == 24 && p.rate.den == 1, "rate %d/%d", p.rate.num, p.rate.den);
    if (p.frames == t) {
        size_t fb = (size_t)w * h * 3;
        for (uint32_t i = 0; i < t; i++) {
            double q = ds_test_psnr(rgb + i * fb, p.rgb + i * fb, fb);
            CHECK_MSG(q >= 35.0, "frame %u PSNR %.2f dB", i, q);
        }
    }
    free(p.rgb);
    free(owned);

    /* yuv420p cannot hold an odd size: the encoder's refusal, named after the output. */
    rc = encode("mp4", 24, 0, rgb, t, h - 1, w, &owned, &data, &size, &err);
    CHECK(rc == DS_ERR_INVALID_ARGUMENT && owned == NULL && data == NULL);
    CHECK_CONTAINS(err.message, "output video as mp4: ");
    CHECK_CONTAINS(err.message, "odd");
    free(rgb);
#else
    printf("# built without FFmpeg: the MP4 case is skipped\n");
#endif
}

static void test_encode_webp_lossless(void)
{
    const uint32_t t = 5, h = 30, w = 42;
    uint8_t *rgb = ds_test_smooth_frames(t, h, w);
    REQUIRE(rgb);
    /* A few sharp edges too, which a lossy coder would smear. */
    for (size_t i = 0; i < (size_t)t * h * w * 3; i += 97)
        rgb[i] = (uint8_t)(i * 31);
    ds_error err;
    uint8_t *owned = NULL;
    const uint8_t *data = NULL;
    size_t size = 0;
    REQUIRE(encode("webp", 10, 1, rgb, t, h, w, &owned, &data, &size, &err) == DS_OK);

    WebPData wd = {data, size};
    WebPAnimDecoderOptions opts;
    REQUIRE(WebPAnimDecoderOptionsInit(&opts));
    opts.color_mode = MODE_RGBA;
    WebPAnimDecoder *dec = WebPAnimDecoderNew(&wd, &opts);
    REQUIRE(dec);
    WebPAnimInfo info;
    CHECK(WebPAnimDecoderGetInfo(dec, &info));
    CHECK_MSG(info.canvas_width == w && info.canvas_height == h && info.frame_count == t,
              "%u x %u, %u frames", info.canvas_width, info.canvas_height, info.frame_count);
    uint32_t n = 0;
    int timestamp = 0;
    while (WebPAnimDecoderHasMoreFrames(dec) && n < t) {
        uint8_t *rgba;
        REQUIRE(WebPAnimDecoderGetNext(dec, &rgba, &timestamp));
        size_t diff = 0;
        for (size_t k = 0; k < (size_t)h * w; k++)
            for (int c = 0; c < 3; c++)
                diff += rgba[k * 4 + c] != rgb[((size_t)n * h * w + k) * 3 + c];
        CHECK_MSG(diff == 0, "frame %u: %zu samples differ", n, diff);
        n++;
    }
    CHECK(n == t);
    /* 10 fps: the last frame ends at 500 ms. */
    CHECK_MSG(timestamp == 500, "last frame ends at %d ms", timestamp);
    WebPAnimDecoderDelete(dec);
    free(owned);
    free(rgb);
}

static void test_raw_frames_and_bad_tensors(void)
{
    const uint32_t t = 2, h = 4, w = 6;
    uint8_t rgb[2 * 4 * 6 * 3] = {1};
    ds_video_output o;
    ds_error err;
    REQUIRE(parse("frames", 0, 0, 0, &o, &err) == DS_OK);
    ds_tensor x = frames_tensor(rgb, t, h, w);
    uint8_t *owned = (uint8_t *)"not touched";
    const uint8_t *data = NULL;
    size_t size = 0;
    CHECK(ds_video_output_encode("video", &x, &o, &owned, &data, &size, &err) == DS_OK);
    CHECK(owned == NULL && data == rgb && size == sizeof rgb);

    /* What the pipeline gives must be what its table says: an image is not a video. */
    ds_tensor image = {.dtype = DS_U8, .ndim = 3, .shape = {h, w, 3}, .data = rgb};
    CHECK(ds_video_output_encode("video", &image, &o, &owned, &data, &size, &err) ==
          DS_ERR_INTERNAL);
    CHECK_CONTAINS(err.message, "without [T, H, W, 3] u8 frames for video");
    ds_tensor floats = frames_tensor(rgb, 1, 1, 2);
    floats.dtype = DS_F32;
    CHECK(ds_video_output_encode("video", &floats, &o, &owned, &data, &size, &err) ==
          DS_ERR_INTERNAL);
}

int main(void)
{
    RUN(test_parse_settings);
    RUN(test_parse_refusals);
    RUN(test_mp4_supported);
    RUN(test_check_input);
    RUN(test_encode_mp4);
    RUN(test_encode_webp_lossless);
    RUN(test_raw_frames_and_bad_tensors);
    return test_summary();
}
