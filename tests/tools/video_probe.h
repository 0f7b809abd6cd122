/* For the tests of video files: frames a codec is made for, PSNR, and the oracle for the files
 * the project writes: libavformat + libavcodec opened here on a file by path (not
 * core/video_read.c's code), frames converted to RGB with the matrix the stream declares. */
#ifndef DS_TESTS_TOOLS_VIDEO_PROBE_H
#define DS_TESTS_TOOLS_VIDEO_PROBE_H

#include <stddef.h>
#include <stdint.h>

/* [t, h, w, 3] u8 smooth gradients that move from frame to frame (malloc'd; NULL without
 * memory): what a codec is built for, so a PSNR bound measures the writer (colour conversion,
 * chroma, rate control), not the content. */
uint8_t *ds_test_smooth_frames(uint32_t t, uint32_t h, uint32_t w);

/* PSNR in dB of b against a over n bytes; INFINITY when equal. */
double ds_test_psnr(const uint8_t *a, const uint8_t *b, size_t n);

#if DS_HAVE_FFMPEG
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>

typedef struct ds_probed_video {
    uint32_t frames, width, height;
    AVRational rate;
    enum AVCodecID codec;
    enum AVPixelFormat pix_fmt;
    enum AVColorSpace colorspace;
    uint8_t *rgb; /* [frames, height, width, 3], malloc'd: the caller frees it */
} ds_probed_video;

/* 0 when the file opened and decoded to its end; -1 otherwise (p->rgb may hold what came). */
int ds_probe_video_file(const char *path, ds_probed_video *p);
#endif

#endif
