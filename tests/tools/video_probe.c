#include "tools/video_probe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

uint8_t *ds_test_smooth_frames(uint32_t t, uint32_t h, uint32_t w)
{
    uint8_t *rgb = malloc((size_t)t * h * w * 3);
    for (uint32_t i = 0; rgb && i < t; i++)
        for (uint32_t y = 0; y < h; y++)
            for (uint32_t x = 0; x < w; x++) {
                uint8_t *p = rgb + (((size_t)i * h + y) * w + x) * 3;
                double u = (double)x / w, v = (double)y / h, s = 0.15 * i;
                p[0] = (uint8_t)lround(127.5 + 100.0 * sin(6.2832 * u + s));
                p[1] = (uint8_t)lround(40.0 + 170.0 * v);
                p[2] = (uint8_t)lround(127.5 + 90.0 * cos(3.1416 * (u + v) - s));
            }
    return rgb;
}

double ds_test_psnr(const uint8_t *a, const uint8_t *b, size_t n)
{
    double se = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        se += d * d;
    }
    return se == 0 ? INFINITY : 10.0 * log10(255.0 * 255.0 / (se / (double)n));
}

#if DS_HAVE_FFMPEG
#include <libswscale/swscale.h>

int ds_probe_video_file(const char *path, ds_probed_video *p)
{
    memset(p, 0, sizeof *p);
    AVFormatContext *fmt = NULL;
    if (avformat_open_input(&fmt, path, NULL, NULL) < 0)
        return -1;
    int ok = avformat_find_stream_info(fmt, NULL) >= 0;
    const AVCodec *codec = NULL;
    int index = ok ? av_find_best_stream(fmt, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0) : -1;
    AVCodecContext *dc = index >= 0 ? avcodec_alloc_context3(codec) : NULL;
    ok = dc && avcodec_parameters_to_context(dc, fmt->streams[index]->codecpar) >= 0 &&
         avcodec_open2(dc, codec, NULL) >= 0;
    if (ok) {
        AVStream *st = fmt->streams[index];
        p->width = (uint32_t)st->codecpar->width;
        p->height = (uint32_t)st->codecpar->height;
        p->rate = st->avg_frame_rate;
        p->codec = st->codecpar->codec_id;
        p->pix_fmt = (enum AVPixelFormat)st->codecpar->format;
        p->colorspace = st->codecpar->color_space;
    }
    size_t frame_bytes = (size_t)p->width * p->height * 3;
    AVPacket *pkt = av_packet_alloc();
    AVFrame *frame = av_frame_alloc();
    struct SwsContext *sws = NULL;
    for (int flushing = 0; ok;) {
        int ret = 0;
        if (!flushing) {
            ret = av_read_frame(fmt, pkt);
            if (ret == AVERROR_EOF) {
                flushing = 1;
                avcodec_send_packet(dc, NULL);
            } else if (ret < 0) {
                ok = 0;
                break;
            } else {
                if (pkt->stream_index == index)
                    avcodec_send_packet(dc, pkt);
                av_packet_unref(pkt);
            }
        }
        while ((ret = avcodec_receive_frame(dc, frame)) == 0) {
            sws = sws_getCachedContext(sws, frame->width, frame->height, frame->format,
                                       frame->width, frame->height, AV_PIX_FMT_RGB24,
                                       SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT,
                                       NULL, NULL, NULL);
            sws_setColorspaceDetails(sws, sws_getCoefficients(frame->colorspace), 0,
                                     sws_getCoefficients(SWS_CS_DEFAULT), 1, 0, 1 << 16,
                                     1 << 16);
            p->rgb = realloc(p->rgb, (p->frames + 1) * frame_bytes);
            uint8_t *dst[4] = {p->rgb + p->frames * frame_bytes};
            int stride[4] = {(int)p->width * 3};
            sws_scale(sws, (const uint8_t *const *)frame->data, frame->linesize, 0,
                      frame->height, dst, stride);
            p->frames++;
            av_frame_unref(frame);
        }
        if (flushing && ret == AVERROR_EOF)
            break;
    }
    sws_freeContext(sws);
    av_frame_free(&frame);
    av_packet_free(&pkt);
    avcodec_free_context(&dc);
    avformat_close_input(&fmt);
    return ok ? 0 : -1;
}
#endif
