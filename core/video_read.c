#include "core/video_read.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#if DS_HAVE_FFMPEG
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/mem.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>
#endif
#include <webp/decode.h>
#include <webp/demux.h>

#include "core/image_png.h"
#if DS_HAVE_FFMPEG
#include "core/video_av.h"
#endif

/* The demuxers a client's file may reach (libavformat names; "mov" is MP4/MOV, "matroska" is
 * MKV/WebM). Everything else libavformat knows stays unreachable from client bytes. */
#define DEMUXERS "mov,gif,matroska"

void ds_video_free(ds_video *video)
{
    if (!video)
        return;
    free(video->rgb);
    memset(video, 0, sizeof *video);
}

/* out->rgb grown to hold `frames` frames of frame_bytes, within max_bytes. */
typedef struct frame_store {
    ds_video *out;
    size_t frame_bytes, capacity, max_bytes;
} frame_store;

static int store_reserve(frame_store *s, uint32_t frames, const char *name, ds_error *err)
{
    size_t need = (size_t)frames * s->frame_bytes;
    if (frames && need / frames != s->frame_bytes)
        need = SIZE_MAX;
    if (need > s->max_bytes)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: %u frames of %u x %u RGB take over %zu bytes, the limit", name,
                            frames, s->out->width, s->out->height, s->max_bytes);
    if (need <= s->capacity)
        return DS_OK;
    size_t cap = s->capacity ? s->capacity : s->frame_bytes;
    while (cap < need)
        cap = cap > s->max_bytes / 2 ? need : cap * 2;
    if (cap > s->max_bytes)
        cap = s->max_bytes;
    uint8_t *grown = realloc(s->out->rgb, cap);
    if (!grown)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "%s: out of memory for %u frames of %u x %u", name, frames,
                            s->out->width, s->out->height);
    s->out->rgb = grown;
    s->capacity = cap;
    return DS_OK;
}

static int check_size(const char *name, long width, long height, size_t max_bytes,
                      ds_error *err)
{
    if (width <= 0 || height <= 0 || width > (long)DS_VIDEO_READ_MAX_SIDE ||
        height > (long)DS_VIDEO_READ_MAX_SIDE)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: frame size %ld x %ld is outside 1..%u per side", name, width,
                            height, DS_VIDEO_READ_MAX_SIDE);
    if ((size_t)width * (size_t)height * 3 > max_bytes)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: one %ld x %ld RGB frame is over the %zu byte limit", name,
                            width, height, max_bytes);
    return DS_OK;
}

static int decode_webp(const uint8_t *data, size_t size, const char *name, size_t max_bytes,
                       ds_video *out, ds_error *err)
{
    WebPAnimDecoderOptions options;
    if (!WebPAnimDecoderOptionsInit(&options))
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: libwebp version mismatch", name);
    options.color_mode = MODE_RGBA;
    options.use_threads = 0;
    /* WebPAnimDecoderNew allocates two RGBA canvases of the size the header claims before it
     * decodes a byte of image data: check that size first, or a 30-byte header asks for
     * gigabytes. */
    WebPBitstreamFeatures features;
    if (WebPGetFeatures(data, size, &features) != VP8_STATUS_OK)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: WebP header is corrupt or truncated (libwebp cannot parse it)",
                            name);
    int rc = check_size(name, (long)features.width, (long)features.height, max_bytes, err);
    if (rc != DS_OK)
        return rc;
    WebPData webp = {.bytes = data, .size = size};
    WebPAnimDecoder *dec = WebPAnimDecoderNew(&webp, &options);
    if (!dec)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: WebP file is corrupt or truncated (libwebp cannot parse it)",
                            name);
    WebPAnimInfo info;
    if (!WebPAnimDecoderGetInfo(dec, &info)) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: WebP header is unreadable", name);
        goto done;
    }
    if ((rc = check_size(name, (long)info.canvas_width, (long)info.canvas_height, max_bytes,
                         err)) != DS_OK)
        goto done;
    if (info.frame_count == 0) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: WebP file has zero frames", name);
        goto done;
    }
    out->width = info.canvas_width;
    out->height = info.canvas_height;
    frame_store store = {.out = out,
                         .frame_bytes = (size_t)out->width * out->height * 3,
                         .max_bytes = max_bytes};
    if ((rc = store_reserve(&store, info.frame_count, name, err)) != DS_OK)
        goto done;
    int last_ts = 0;
    for (uint32_t i = 0; i < info.frame_count; i++) {
        uint8_t *rgba = NULL;
        if (!WebPAnimDecoderHasMoreFrames(dec) || !WebPAnimDecoderGetNext(dec, &rgba, &last_ts)) {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "%s: WebP frame %u of %u is corrupt or truncated", name, i,
                              info.frame_count);
            goto done;
        }
        /* Alpha is dropped, as for PNG inputs: the pipelines take RGB. */
        uint8_t *dst = out->rgb + i * store.frame_bytes;
        for (size_t p = 0; p < (size_t)out->width * out->height; p++) {
            dst[3 * p] = rgba[4 * p];
            dst[3 * p + 1] = rgba[4 * p + 1];
            dst[3 * p + 2] = rgba[4 * p + 2];
        }
        out->t = i + 1;
    }
    /* The last timestamp is the end of the last frame: the clip's length. Timestamps are whole
     * milliseconds, so 15 fps reads as 15.015; a whole rate that gives the same length (the
     * writer rounds i * 1000 / fps) is the one the file was made with. */
    out->fps = 0.0;
    if (info.frame_count > 1 && last_ts > 0) {
        double rate = info.frame_count * 1000.0 / last_ts, whole = floor(rate + 0.5);
        out->fps = whole > 0 && lround(info.frame_count * 1000.0 / whole) == last_ts ? whole
                                                                                   : rate;
    }
done:
    WebPAnimDecoderDelete(dec);
    return rc;
}

#if DS_HAVE_FFMPEG
/* Nothing besides the buffer is opened: an MP4 may name other files (data references). */
static int refuse_open(AVFormatContext *s, AVIOContext **pb, const char *url, int flags,
                       AVDictionary **options)
{
    (void)s;
    (void)pb;
    (void)url;
    (void)flags;
    (void)options;
    return AVERROR(EPERM);
}

static int av_fail(ds_error *err, const char *name, const char *what, int averr)
{
    char detail[768];
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: %s: %s", name, what,
                        ds_av_describe(averr, detail, sizeof detail));
}

typedef struct av_state {
    const char *name;
    AVCodecContext *dc;
    struct SwsContext *sws;
    AVFrame *frame;
    frame_store store;
} av_state;

static int take_frames(av_state *a, ds_error *err)
{
    ds_video *out = a->store.out;
    for (;;) {
        int ret = avcodec_receive_frame(a->dc, a->frame);
        if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF)
            return DS_OK;
        if (ret < 0)
            return av_fail(err, a->name, "corrupt video data", ret);
        AVFrame *f = a->frame;
        if ((uint32_t)f->width != out->width || (uint32_t)f->height != out->height) {
            int rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                  "%s: frame %u is %d x %d, the first was %u x %u", a->name,
                                  out->t, f->width, f->height, out->width, out->height);
            av_frame_unref(f);
            return rc;
        }
        int rc = store_reserve(&a->store, out->t + 1, a->name, err);
        if (rc != DS_OK) {
            av_frame_unref(f);
            return rc;
        }
        a->sws = sws_getCachedContext(a->sws, f->width, f->height, f->format, f->width,
                                      f->height, AV_PIX_FMT_RGB24,
                                      SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT,
                                      NULL, NULL, NULL);
        if (!a->sws) {
            av_frame_unref(f);
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: frame %u: no conversion from pixel format %s to RGB",
                                a->name, out->t, av_get_pix_fmt_name(f->format) ?
                                av_get_pix_fmt_name(f->format) : "(unknown)");
        }
        /* The stream's own matrix and range, so BT.709 and full-range files come out right;
         * RGB-like sources (GIF) have none and the call is a no-op for them. */
        int cs = f->colorspace == AVCOL_SPC_UNSPECIFIED ? SWS_CS_DEFAULT : (int)f->colorspace;
        sws_setColorspaceDetails(a->sws, sws_getCoefficients(cs),
                                 f->color_range == AVCOL_RANGE_JPEG,
                                 sws_getCoefficients(SWS_CS_DEFAULT), 1, 0, 1 << 16, 1 << 16);
        /* sws_scale reads four plane pointers and strides, whatever the format uses. */
        uint8_t *dst[4] = {out->rgb + (size_t)out->t * a->store.frame_bytes};
        int stride[4] = {(int)out->width * 3};
        sws_scale(a->sws, (const uint8_t *const *)f->data, f->linesize, 0, f->height, dst,
                  stride);
        av_frame_unref(f);
        out->t++;
    }
}

static uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* An MP4's top-level boxes must tile the file. A cut file shows as a box running past the end,
 * which names the truncation where the demuxer would only say that data is missing. */
static int check_mp4_boxes(const uint8_t *data, size_t size, const char *name, ds_error *err)
{
    size_t pos = 0;
    while (pos < size) {
        if (size - pos < 8)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: truncated MP4: %zu stray bytes at offset %zu where a box "
                                "header (8 bytes) should be", name, size - pos, pos);
        uint64_t box = be(data + pos, 4), header = 8;
        char type[5] = {0};
        for (int i = 0; i < 4; i++) {
            uint8_t c = data[pos + 4 + i];
            type[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
        }
        if (box == 1) {
            if (size - pos < 16)
                return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                    "%s: truncated MP4: the '%s' box header at offset %zu is "
                                    "cut", name, type, pos);
            box = be(data + pos + 8, 8);
            header = 16;
        } else if (box == 0) {
            box = size - pos; /* "to the end of the file" */
        }
        if (box < header)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: corrupt MP4: the '%s' box at offset %zu has size %llu",
                                name, type, pos, (unsigned long long)box);
        if (box > size - pos)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "%s: truncated MP4: the '%s' box at offset %zu needs %llu bytes, "
                                "the file ends %zu bytes in",
                                name, type, pos, (unsigned long long)box, size - pos);
        pos += (size_t)box;
    }
    return DS_OK;
}

static int decode_av(const uint8_t *data, size_t size, const char *name, size_t max_bytes,
                     ds_video *out, ds_error *err)
{
    if (size >= 8 && memcmp(data + 4, "ftyp", 4) == 0) {
        int rc = check_mp4_boxes(data, size, name, err);
        if (rc != DS_OK)
            return rc;
    }
    ds_av_init();
    ds_av_clear_log();
    int rc = DS_OK, ret;
    ds_av_buffer buf = {.data = (uint8_t *)data, .size = size, .limit = size};
    AVFormatContext *fmt = avformat_alloc_context();
    AVIOContext *io = ds_av_buffer_io(&buf, 0);
    AVPacket *pkt = av_packet_alloc();
    av_state a = {.name = name, .frame = av_frame_alloc()};
    if (!fmt || !io || !pkt || !a.frame) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", name);
        goto done;
    }
    fmt->pb = io;
    fmt->flags |= AVFMT_FLAG_CUSTOM_IO;
    fmt->io_open = refuse_open;
    fmt->format_whitelist = av_strdup(DEMUXERS);
    if ((ret = avformat_open_input(&fmt, NULL, NULL, NULL)) < 0) {
        /* avformat_open_input frees fmt on failure. */
        if (ret == AVERROR_INVALIDDATA)
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "%s: not a video (no MP4, WebM/Matroska, GIF or WebP data found)",
                              name);
        else
            rc = av_fail(err, name, "unreadable container", ret);
        goto done;
    }
    if ((ret = avformat_find_stream_info(fmt, NULL)) < 0) {
        rc = av_fail(err, name, "corrupt or truncated container", ret);
        goto done;
    }
    const AVCodec *codec = NULL;
    int index = av_find_best_stream(fmt, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
    if (index == AVERROR_STREAM_NOT_FOUND) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: the %s file has no video stream",
                          name, fmt->iformat->long_name ? fmt->iformat->long_name
                                                        : fmt->iformat->name);
        goto done;
    }
    if (index < 0 || !codec) {
        AVStream *any = NULL;
        for (unsigned i = 0; i < fmt->nb_streams && !any; i++)
            if (fmt->streams[i]->codecpar->codec_type == AVMEDIA_TYPE_VIDEO)
                any = fmt->streams[i];
        rc = ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                          "%s: no decoder for the video codec %s", name,
                          any ? avcodec_get_name(any->codecpar->codec_id) : "(unknown)");
        goto done;
    }
    AVStream *st = fmt->streams[index];
    AVCodecParameters *par = st->codecpar;
    if ((rc = check_size(name, par->width, par->height, max_bytes, err)) != DS_OK)
        goto done;
    out->width = (uint32_t)par->width;
    out->height = (uint32_t)par->height;
    a.store = (frame_store){.out = out,
                            .frame_bytes = (size_t)out->width * out->height * 3,
                            .max_bytes = max_bytes};
    /* The index's frame count, when there is one, sizes the buffer up front, and a count over
     * the limit is refused before any decoding. */
    if (st->nb_frames > 0) {
        uint32_t listed = st->nb_frames > UINT32_MAX ? UINT32_MAX : (uint32_t)st->nb_frames;
        if ((rc = store_reserve(&a.store, listed, name, err)) != DS_OK)
            goto done;
    }
    a.dc = avcodec_alloc_context3(codec);
    if (!a.dc) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", name);
        goto done;
    }
    /* A stream may declare one size in the container and another in-band; the decoder's own
     * frame allocations are bounded by the same limit. */
    a.dc->max_pixels = (int64_t)(max_bytes / 3 < INT_MAX ? max_bytes / 3 : INT_MAX);
    if ((ret = avcodec_parameters_to_context(a.dc, par)) < 0 ||
        (ret = avcodec_open2(a.dc, codec, NULL)) < 0) {
        rc = av_fail(err, name, "cannot open the video decoder", ret);
        goto done;
    }
    for (;;) {
        ret = av_read_frame(fmt, pkt);
        if (ret == AVERROR_EOF)
            break;
        if (ret < 0) {
            rc = av_fail(err, name, "corrupt or truncated file", ret);
            goto done;
        }
        if (pkt->stream_index == index) {
            ret = avcodec_send_packet(a.dc, pkt);
            av_packet_unref(pkt);
            if (ret < 0 && ret != AVERROR(EAGAIN)) {
                char what[64];
                snprintf(what, sizeof what, "corrupt video data after frame %u", out->t);
                rc = av_fail(err, name, what, ret);
                goto done;
            }
            if ((rc = take_frames(&a, err)) != DS_OK)
                goto done;
        } else {
            av_packet_unref(pkt);
        }
    }
    if ((ret = avcodec_send_packet(a.dc, NULL)) < 0 && ret != AVERROR_EOF) {
        rc = av_fail(err, name, "flushing the decoder", ret);
        goto done;
    }
    if ((rc = take_frames(&a, err)) != DS_OK)
        goto done;
    if (out->t == 0) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: the video has zero frames", name);
        goto done;
    }
    if (st->nb_frames > 0 && (int64_t)out->t < st->nb_frames) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "%s: truncated: %u of the %lld frames its index lists decoded", name,
                          out->t, (long long)st->nb_frames);
        goto done;
    }
    AVRational rate = st->avg_frame_rate.num > 0 && st->avg_frame_rate.den > 0
                          ? st->avg_frame_rate
                          : st->r_frame_rate;
    out->fps = rate.num > 0 && rate.den > 0 ? av_q2d(rate) : 0.0;
done:
    sws_freeContext(a.sws);
    av_frame_free(&a.frame);
    avcodec_free_context(&a.dc);
    av_packet_free(&pkt);
    avformat_close_input(&fmt);
    ds_av_buffer_io_free(&io);
    return rc;
}
#else
static int decode_av(const uint8_t *data, size_t size, const char *name, size_t max_bytes,
                     ds_video *out, ds_error *err)
{
    (void)max_bytes, (void)out;
    const char *kind = size >= 8 && memcmp(data + 4, "ftyp", 4) == 0   ? "MP4"
                       : size >= 4 && memcmp(data, "GIF8", 4) == 0      ? "GIF"
                       : size >= 4 && memcmp(data, "\x1a\x45\xdf\xa3", 4) == 0 ? "WebM/Matroska"
                                                                         : NULL;
    if (!kind)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: not a video (no WebP or PNG data found; this build reads no "
                            "MP4, WebM or GIF)", name);
    return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                        "%s: %s input needs FFmpeg, and this build has none (-Dffmpeg=disabled); "
                        "convert it to WebP or PNG frames", name, kind);
}
#endif

int ds_video_decode(const uint8_t *data, size_t size, const char *name, size_t max_bytes,
                    ds_video *out, ds_error *err)
{
    if (!name)
        name = "video";
    if (!out || (!data && size))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: %s is NULL", name,
                            !out ? "out" : "data");
    memset(out, 0, sizeof *out);
    if (size == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: empty file (0 bytes), not a video",
                            name);
    int rc;
    if (size >= 12 && memcmp(data, "RIFF", 4) == 0 && memcmp(data + 8, "WEBP", 4) == 0) {
        rc = decode_webp(data, size, name, max_bytes, out, err);
    } else if (size >= 8 && memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) {
        uint32_t w = 0, h = 0;
        rc = ds_png_decode_rgb8(data, size, &out->rgb, &w, &h, err);
        if (rc != DS_OK)
            ds_error_prefix(err, "%s: ", name);
        else if ((size_t)w * h * 3 > max_bytes)
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "%s: one %u x %u RGB frame is over the %zu byte limit", name, w,
                              h, max_bytes);
        out->width = w;
        out->height = h;
        out->t = 1;
    } else {
        rc = decode_av(data, size, name, max_bytes, out, err);
    }
    if (rc != DS_OK)
        ds_video_free(out);
    return rc;
}

/* A whole file, refused unread when over `limit` bytes. */
static int read_whole(const char *path, size_t limit, uint8_t **data, size_t *size,
                      ds_error *err)
{
    *data = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ds_error_set(err, errno == ENOENT ? DS_ERR_NOT_FOUND : DS_ERR_PERMISSION_DENIED,
                            "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > limit) {
        close(fd);
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: the file's %lld bytes are over the %zu byte limit", path,
                            (long long)sb.st_size, limit);
    }
    size_t n = (size_t)sb.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        close(fd);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory for %zu bytes",
                            path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            close(fd);
            free(buf);
            return ds_error_set(err, DS_ERR_UNAVAILABLE, "%s: read failed: %s", path,
                                e ? strerror(e) : "the file shrank while being read");
        }
        got += (size_t)r;
    }
    close(fd);
    *data = buf;
    *size = n;
    return DS_OK;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int read_png_folder(const char *dir, size_t max_bytes, ds_video *out, ds_error *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return ds_error_set(err, DS_ERR_PERMISSION_DENIED, "%s: cannot open the folder: %s",
                            dir, strerror(errno));
    char **names = NULL;
    size_t count = 0, cap = 0;
    int rc = DS_OK;
    for (struct dirent *e; (e = readdir(d));) {
        size_t n = strlen(e->d_name);
        if (n <= 4 || strcasecmp(e->d_name + n - 4, ".png") != 0)
            continue;
        if (count == cap) {
            cap = cap ? cap * 2 : 64;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown) {
                rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", dir);
                break;
            }
            names = grown;
        }
        if (!(names[count] = strdup(e->d_name))) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", dir);
            break;
        }
        count++;
    }
    closedir(d);
    if (rc == DS_OK && count == 0)
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: the folder holds no PNG files",
                          dir);
    if (rc == DS_OK && count > UINT32_MAX)
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: too many PNG files", dir);
    if (rc == DS_OK)
        qsort(names, count, sizeof *names, by_name);
    frame_store store = {.out = out, .max_bytes = max_bytes};
    size_t dlen = strlen(dir);
    for (size_t i = 0; rc == DS_OK && i < count; i++) {
        size_t plen = dlen + strlen(names[i]) + 2;
        char *path = malloc(plen);
        if (!path) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", dir);
            break;
        }
        snprintf(path, plen, "%s%s%s", dir, dlen && dir[dlen - 1] == '/' ? "" : "/", names[i]);
        uint8_t *file = NULL, *rgb = NULL;
        size_t size = 0;
        uint32_t w = 0, h = 0;
        rc = read_whole(path, max_bytes, &file, &size, err);
        if (rc == DS_OK && (rc = ds_png_decode_rgb8(file, size, &rgb, &w, &h, err)) != DS_OK)
            ds_error_prefix(err, "%s: ", path);
        if (rc == DS_OK && i == 0) {
            out->width = w;
            out->height = h;
            store.frame_bytes = (size_t)w * h * 3;
        } else if (rc == DS_OK && (w != out->width || h != out->height)) {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "%s: frame is %u x %u, the first (%s) was %u x %u", path, w, h,
                              names[0], out->width, out->height);
        }
        if (rc == DS_OK && (rc = store_reserve(&store, (uint32_t)i + 1, dir, err)) == DS_OK) {
            memcpy(out->rgb + i * store.frame_bytes, rgb, store.frame_bytes);
            out->t = (uint32_t)i + 1;
        }
        free(rgb);
        free(file);
        free(path);
    }
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
    return rc;
}

int ds_video_read_file(const char *path, size_t max_bytes, ds_video *out, ds_error *err)
{
    if (!path || !out)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "video read: %s is NULL",
                            !path ? "path" : "out");
    memset(out, 0, sizeof *out);
    struct stat sb;
    if (stat(path, &sb) != 0)
        return ds_error_set(err, errno == ENOENT ? DS_ERR_NOT_FOUND : DS_ERR_PERMISSION_DENIED,
                            "%s: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) {
        int rc = read_png_folder(path, max_bytes, out, err);
        if (rc != DS_OK)
            ds_video_free(out);
        return rc;
    }
    uint8_t *data = NULL;
    size_t size = 0;
    int rc = read_whole(path, max_bytes, &data, &size, err);
    if (rc == DS_OK)
        rc = ds_video_decode(data, size, path, max_bytes, out, err);
    free(data);
    return rc;
}
