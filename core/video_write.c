#include "core/video_write.h"

#include <dirent.h>
#include <errno.h>
#include <libgen.h>
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
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
#endif
#include <webp/encode.h>
#include <webp/mux.h>

#include "core/image_png.h"
#if DS_HAVE_FFMPEG
#include "core/video_av.h"
#endif

#define DEFAULT_CRF 18
#define DEFAULT_WEBP_QUALITY 90
#define DEFAULT_WEBP_EFFORT 75
#define MAX_FPS 1000.0
/* An encoded video larger than this is refused rather than grown further. */
#define MAX_OUTPUT_BYTES ((size_t)1 << 34)

ds_video_write_options ds_video_write_defaults(void)
{
    return (ds_video_write_options){.format = DS_VIDEO_MP4, .fps = 15.0, .quality = -1};
}

const char *ds_video_format_name(ds_video_format format)
{
    switch (format) {
    case DS_VIDEO_MP4:
        return "mp4";
    case DS_VIDEO_WEBP:
        return "webp";
    case DS_VIDEO_PNG_FRAMES:
        return "png";
    }
    return "unknown";
}

int ds_video_format_from_name(const char *name, ds_video_format *format, ds_error *err)
{
    static const ds_video_format all[] = {DS_VIDEO_MP4, DS_VIDEO_WEBP, DS_VIDEO_PNG_FRAMES};
    for (size_t i = 0; name && i < sizeof all / sizeof all[0]; i++)
        if (strcasecmp(name, ds_video_format_name(all[i])) == 0) {
            *format = all[i];
            return DS_OK;
        }
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                        "video format \"%s\" is not one of mp4, webp, png", name ? name : "");
}

int ds_video_format_from_path(const char *path, ds_video_format *format, ds_error *err)
{
    if (!path || !*path)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "video output path is empty");
    size_t n = strlen(path);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    if (path[n - 1] == '/' || !dot || dot == base) {
        *format = DS_VIDEO_PNG_FRAMES;
        return DS_OK;
    }
    if (strcasecmp(dot, ".mp4") == 0) {
        *format = DS_VIDEO_MP4;
        return DS_OK;
    }
    if (strcasecmp(dot, ".webp") == 0) {
        *format = DS_VIDEO_WEBP;
        return DS_OK;
    }
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                        "video output %s: extension \"%s\" is not .mp4 or .webp (or a folder "
                        "for PNG frames)",
                        path, dot);
}

static int check_input(const uint8_t *frames, uint32_t t, uint32_t height, uint32_t width,
                       const ds_video_write_options *o, ds_error *err)
{
    if (!frames || !o)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "video encode: %s is NULL",
                            !frames ? "frames" : "options");
    if (t == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "video encode: 0 frames");
    if (width == 0 || height == 0 || width > DS_VIDEO_MAX_SIDE || height > DS_VIDEO_MAX_SIDE)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "video encode: frame size %u x %u is outside 1..%u per side", width,
                            height, DS_VIDEO_MAX_SIDE);
    if ((size_t)t > SIZE_MAX / ((size_t)width * height * 3))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "video encode: %u frames of %u x %u "
                            "overflow the address space", t, width, height);
    if (!(o->fps > 0.0 && o->fps <= MAX_FPS))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "video encode: fps %g is outside (0, %g]", o->fps, MAX_FPS);
    return DS_OK;
}

#if DS_HAVE_FFMPEG
/* The mov muxer's +faststart moves the index before the media at the end: it opens its output
 * a second time for reading. These give it a second reader of the same buffer. */
static int reopen_for_read(AVFormatContext *s, AVIOContext **pb, const char *url, int flags,
                           AVDictionary **options)
{
    (void)url;
    (void)options;
    if (flags & AVIO_FLAG_WRITE)
        return AVERROR(EPERM);
    ds_av_buffer *view = calloc(1, sizeof *view);
    if (!view)
        return AVERROR(ENOMEM);
    view->source = s->opaque;
    *pb = ds_av_buffer_io(view, 0);
    if (!*pb) {
        free(view);
        return AVERROR(ENOMEM);
    }
    return 0;
}

static int close_reader(AVFormatContext *s, AVIOContext *pb)
{
    (void)s;
    ds_av_buffer *view = pb->opaque;
    ds_av_buffer_io_free(&pb);
    free(view);
    return 0;
}

static int mp4_fail(ds_error *err, int code, const char *what, int averr)
{
    char detail[768];
    return ds_error_set(err, code, "MP4 encode: %s: %s", what,
                        ds_av_describe(averr, detail, sizeof detail));
}

/* Hands the encoder's packets that are ready to the muxer. */
static int drain(AVCodecContext *cc, AVFormatContext *fmt, AVStream *st, AVPacket *pkt,
                 ds_error *err)
{
    for (;;) {
        int ret = avcodec_receive_packet(cc, pkt);
        if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF)
            return DS_OK;
        if (ret < 0)
            return mp4_fail(err, DS_ERR_INTERNAL, "encoding a frame", ret);
        av_packet_rescale_ts(pkt, cc->time_base, st->time_base);
        pkt->stream_index = st->index;
        ret = av_interleaved_write_frame(fmt, pkt);
        if (ret < 0)
            return mp4_fail(err, DS_ERR_INTERNAL, "writing a packet", ret);
    }
}

static int encode_mp4(const uint8_t *frames, uint32_t t, uint32_t height, uint32_t width,
                      const ds_video_write_options *o, uint8_t **data, size_t *size,
                      ds_error *err)
{
    if (width % 2 || height % 2)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "MP4 encode: frame size %u x %u is odd; yuv420p needs an even width "
                            "and height (write WebP or PNG frames for odd sizes)",
                            width, height);
    int crf = o->quality < 0 ? DEFAULT_CRF : o->quality;
    if (crf > 51)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "MP4 encode: quality (CRF) %d is outside 0..51", o->quality);
    ds_av_init();
    ds_av_clear_log();
    const AVCodec *codec = avcodec_find_encoder_by_name(DS_VIDEO_H264_ENCODER);
    if (!codec)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "MP4 encode: this libavcodec has no %s encoder (FFmpeg built without "
                            "x264); write WebP or PNG frames instead",
                            DS_VIDEO_H264_ENCODER);

    int rc = DS_OK, ret;
    ds_av_buffer buf = {.limit = MAX_OUTPUT_BYTES};
    AVFormatContext *fmt = NULL;
    AVCodecContext *cc = NULL;
    struct SwsContext *sws = NULL;
    AVFrame *frame = NULL, *staging = NULL;
    AVPacket *pkt = NULL;
    AVDictionary *copts = NULL, *mopts = NULL;

    if ((ret = avformat_alloc_output_context2(&fmt, NULL, "mp4", NULL)) < 0) {
        rc = mp4_fail(err, DS_ERR_INTERNAL, "no mp4 muxer", ret);
        goto done;
    }
    fmt->pb = ds_av_buffer_io(&buf, 1);
    cc = avcodec_alloc_context3(codec);
    frame = av_frame_alloc();
    staging = av_frame_alloc();
    pkt = av_packet_alloc();
    AVStream *st = avformat_new_stream(fmt, NULL);
    if (!fmt->pb || !cc || !frame || !staging || !pkt || !st) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "MP4 encode: out of memory");
        goto done;
    }
    fmt->flags |= AVFMT_FLAG_CUSTOM_IO;
    fmt->opaque = &buf;
    fmt->io_open = reopen_for_read;
    fmt->io_close2 = close_reader;

    AVRational rate = av_d2q(o->fps, 1000000);
    cc->width = (int)width;
    cc->height = (int)height;
    cc->pix_fmt = AV_PIX_FMT_YUV420P;
    cc->framerate = rate;
    cc->time_base = av_inv_q(rate);
    cc->sample_aspect_ratio = (AVRational){1, 1};
    cc->thread_count = 0; /* x264 picks its threads from the cores; its output stays deterministic */
    /* What the RGB -> YUV conversion below does, stated in the stream so players undo it. */
    cc->color_range = AVCOL_RANGE_MPEG;
    cc->colorspace = AVCOL_SPC_SMPTE170M;
    cc->color_primaries = AVCOL_PRI_SMPTE170M;
    cc->color_trc = AVCOL_TRC_SMPTE170M;
    if (fmt->oformat->flags & AVFMT_GLOBALHEADER)
        cc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    char crf_text[16];
    snprintf(crf_text, sizeof crf_text, "%d", crf);
    av_dict_set(&copts, "crf", crf_text, 0);
    av_dict_set(&copts, "preset", "medium", 0);
    if ((ret = avcodec_open2(cc, codec, &copts)) < 0) {
        rc = mp4_fail(err, DS_ERR_INTERNAL, "opening " DS_VIDEO_H264_ENCODER, ret);
        goto done;
    }
    if ((ret = avcodec_parameters_from_context(st->codecpar, cc)) < 0) {
        rc = mp4_fail(err, DS_ERR_INTERNAL, "stream parameters", ret);
        goto done;
    }
    st->time_base = cc->time_base;
    st->avg_frame_rate = rate;
    av_dict_set(&mopts, "movflags", "+faststart", 0);
    if ((ret = avformat_write_header(fmt, &mopts)) < 0) {
        rc = mp4_fail(err, DS_ERR_INTERNAL, "writing the header", ret);
        goto done;
    }

    sws = sws_getContext((int)width, (int)height, AV_PIX_FMT_RGB24, (int)width, (int)height,
                         AV_PIX_FMT_YUV420P,
                         SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INP, NULL, NULL, NULL);
    frame->format = AV_PIX_FMT_YUV420P;
    frame->width = (int)width;
    frame->height = (int)height;
    if (!sws || av_frame_get_buffer(frame, 0) < 0) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                          "MP4 encode: out of memory for the colour conversion");
        goto done;
    }
    /* swscale's SIMD reads up to a vector past the end of its input rows; each frame goes
     * through this padded copy so that it never reads past the caller's buffer. */
    staging->format = AV_PIX_FMT_RGB24;
    staging->width = (int)width;
    staging->height = (int)height;
    if (av_frame_get_buffer(staging, 0) < 0) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                          "MP4 encode: out of memory for the colour conversion");
        goto done;
    }
    const int *bt601 = sws_getCoefficients(SWS_CS_ITU601);
    sws_setColorspaceDetails(sws, bt601, 1, bt601, 0, 0, 1 << 16, 1 << 16);

    size_t frame_bytes = (size_t)width * height * 3;
    const size_t row = (size_t)width * 3;
    for (uint32_t i = 0; i < t; i++) {
        if ((ret = av_frame_make_writable(frame)) < 0) {
            rc = mp4_fail(err, DS_ERR_RESOURCE_EXHAUSTED, "frame buffer", ret);
            goto done;
        }
        for (uint32_t y = 0; y < height; y++)
            memcpy(staging->data[0] + (size_t)y * staging->linesize[0],
                   frames + i * frame_bytes + (size_t)y * row, row);
        sws_scale(sws, (const uint8_t *const *)staging->data, staging->linesize, 0, (int)height,
                  frame->data, frame->linesize);
        frame->pts = i;
        if ((ret = avcodec_send_frame(cc, frame)) < 0) {
            rc = mp4_fail(err, DS_ERR_INTERNAL, "sending a frame to the encoder", ret);
            goto done;
        }
        if ((rc = drain(cc, fmt, st, pkt, err)) != DS_OK)
            goto done;
    }
    if ((ret = avcodec_send_frame(cc, NULL)) < 0) {
        rc = mp4_fail(err, DS_ERR_INTERNAL, "flushing the encoder", ret);
        goto done;
    }
    if ((rc = drain(cc, fmt, st, pkt, err)) != DS_OK)
        goto done;
    if ((ret = av_write_trailer(fmt)) < 0) {
        rc = mp4_fail(err, buf.overflow ? DS_ERR_RESOURCE_EXHAUSTED : DS_ERR_INTERNAL,
                      "writing the index", ret);
        goto done;
    }
    avio_flush(fmt->pb);
    if (fmt->pb->error < 0) {
        rc = mp4_fail(err, DS_ERR_INTERNAL, "writing the file", fmt->pb->error);
        goto done;
    }
    *data = buf.data;
    *size = buf.size;
    buf.data = NULL;
done:
    if (rc != DS_OK && buf.overflow)
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                          "MP4 encode: the file would be larger than %zu bytes",
                          MAX_OUTPUT_BYTES);
    av_dict_free(&copts);
    av_dict_free(&mopts);
    sws_freeContext(sws);
    av_frame_free(&frame);
    av_frame_free(&staging);
    av_packet_free(&pkt);
    avcodec_free_context(&cc);
    if (fmt) {
        ds_av_buffer_io_free(&fmt->pb);
        avformat_free_context(fmt);
    }
    free(buf.data);
    return rc;
}

bool ds_video_mp4_supported(void)
{
    return avcodec_find_encoder_by_name(DS_VIDEO_H264_ENCODER) != NULL;
}
#else
static int encode_mp4(const uint8_t *frames, uint32_t t, uint32_t height, uint32_t width,
                      const ds_video_write_options *o, uint8_t **data, size_t *size,
                      ds_error *err)
{
    (void)frames, (void)t, (void)height, (void)width, (void)o, (void)data, (void)size;
    return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                        "MP4 encode: this build has no FFmpeg (-Dffmpeg=disabled); write WebP or "
                        "PNG frames instead");
}

bool ds_video_mp4_supported(void)
{
    return false;
}
#endif

static int encode_webp(const uint8_t *frames, uint32_t t, uint32_t height, uint32_t width,
                       const ds_video_write_options *o, uint8_t **data, size_t *size,
                       ds_error *err)
{
    if (width > WEBP_MAX_DIMENSION || height > WEBP_MAX_DIMENSION)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "WebP encode: frame size %u x %u is over WebP's %d per side", width,
                            height, WEBP_MAX_DIMENSION);
    int quality = o->quality < 0 ? (o->lossless ? DEFAULT_WEBP_EFFORT : DEFAULT_WEBP_QUALITY)
                                 : o->quality;
    if (quality > 100)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "WebP encode: quality %d is outside 0..100", o->quality);
    /* The timestamps are whole milliseconds: the last one must fit in an int. */
    if ((double)t * 1000.0 / o->fps > 2e9)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "WebP encode: %u frames at %g fps run past WebP's timestamp range",
                            t, o->fps);

    WebPAnimEncoderOptions eo;
    WebPConfig config;
    WebPPicture pic;
    if (!WebPAnimEncoderOptionsInit(&eo) || !WebPConfigInit(&config) || !WebPPictureInit(&pic))
        return ds_error_set(err, DS_ERR_INTERNAL, "WebP encode: libwebp version mismatch");
    eo.anim_params.loop_count = 0; /* loop forever, as a GIF-like clip does */
    eo.allow_mixed = 0;
    config.lossless = o->lossless ? 1 : 0;
    config.quality = (float)quality;
    config.method = 4;
    if (o->lossless)
        config.exact = 1;
    if (!WebPValidateConfig(&config))
        return ds_error_set(err, DS_ERR_INTERNAL, "WebP encode: invalid encoder configuration");
    WebPAnimEncoder *enc = WebPAnimEncoderNew((int)width, (int)height, &eo);
    if (!enc)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "WebP encode: out of memory");
    pic.width = (int)width;
    pic.height = (int)height;
    pic.use_argb = o->lossless ? 1 : 0;

    int rc = DS_OK;
    WebPData out;
    WebPDataInit(&out);
    size_t frame_bytes = (size_t)width * height * 3;
    for (uint32_t i = 0; i < t; i++) {
        int ts = (int)lround((double)i * 1000.0 / o->fps);
        if (!WebPPictureImportRGB(&pic, frames + i * frame_bytes, (int)width * 3)) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                              "WebP encode: out of memory for frame %u", i);
            goto done;
        }
        if (!WebPAnimEncoderAdd(enc, &pic, ts, &config)) {
            rc = ds_error_set(err, DS_ERR_INTERNAL, "WebP encode: frame %u: %s", i,
                              WebPAnimEncoderGetError(enc));
            goto done;
        }
    }
    int end_ts = (int)lround((double)t * 1000.0 / o->fps);
    if (!WebPAnimEncoderAdd(enc, NULL, end_ts, NULL) || !WebPAnimEncoderAssemble(enc, &out)) {
        rc = ds_error_set(err, DS_ERR_INTERNAL, "WebP encode: assembling: %s",
                          WebPAnimEncoderGetError(enc));
        goto done;
    }
    /* Copied so that the caller frees with free() whatever the format. */
    *data = malloc(out.size);
    if (!*data) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "WebP encode: out of memory");
        goto done;
    }
    memcpy(*data, out.bytes, out.size);
    *size = out.size;
done:
    WebPDataClear(&out);
    WebPPictureFree(&pic);
    WebPAnimEncoderDelete(enc);
    return rc;
}

int ds_video_encode(const uint8_t *frames, uint32_t t, uint32_t height, uint32_t width,
                    const ds_video_write_options *options, uint8_t **data, size_t *size,
                    ds_error *err)
{
    if (!data || !size)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "video encode: %s is NULL",
                            !data ? "data" : "size");
    *data = NULL;
    *size = 0;
    int rc = check_input(frames, t, height, width, options, err);
    if (rc != DS_OK)
        return rc;
    switch (options->format) {
    case DS_VIDEO_MP4:
        return encode_mp4(frames, t, height, width, options, data, size, err);
    case DS_VIDEO_WEBP:
        return encode_webp(frames, t, height, width, options, data, size, err);
    case DS_VIDEO_PNG_FRAMES:
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "video encode: PNG frames are a folder of files, not one buffer");
    }
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "video encode: unknown format %d",
                        (int)options->format);
}

/* data -> path through a temporary file in the same folder and a rename. */
static int write_whole_file(const char *path, const uint8_t *data, size_t size, ds_error *err)
{
    size_t n = strlen(path);
    char *tmp = malloc(n + 16);
    if (!tmp)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", path);
    memcpy(tmp, path, n);
    memcpy(tmp + n, ".tmp-XXXXXX", 12);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        return ds_error_set(err, e == ENOENT ? DS_ERR_NOT_FOUND : DS_ERR_PERMISSION_DENIED,
                            "%s: cannot create: %s", path, strerror(e));
    }
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, data + done, size - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = w < 0 ? errno : EIO;
            close(fd);
            unlink(tmp);
            free(tmp);
            return ds_error_set(err, DS_ERR_UNAVAILABLE, "%s: write failed: %s", path,
                                strerror(e));
        }
        done += (size_t)w;
    }
    /* mkstemp's 0600 would make a shared video unreadable to others; use the umask's mode. */
    mode_t mask = umask(0);
    umask(mask);
    int ok = fchmod(fd, 0666 & ~mask) == 0;
    int e = errno;
    if (close(fd) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = 0;
        e = errno;
    }
    if (!ok) {
        unlink(tmp);
        free(tmp);
        return ds_error_set(err, DS_ERR_UNAVAILABLE, "%s: cannot finish writing: %s", path,
                            strerror(e));
    }
    free(tmp);
    return DS_OK;
}

static int has_png(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int found = 0;
    for (struct dirent *e; !found && (e = readdir(d));) {
        size_t n = strlen(e->d_name);
        found = n > 4 && strcasecmp(e->d_name + n - 4, ".png") == 0;
    }
    closedir(d);
    return found;
}

/* An existing `dir` (stat in *sb) that PNG frames may go into: a folder without PNG files. */
static int check_frames_folder(const char *dir, const struct stat *sb, ds_error *err)
{
    if (!S_ISDIR(sb->st_mode))
        return ds_error_set(err, DS_ERR_ALREADY_EXISTS, "PNG frames %s: exists and is not a "
                            "folder", dir);
    if (has_png(dir))
        return ds_error_set(err, DS_ERR_ALREADY_EXISTS,
                            "PNG frames %s: the folder already holds PNG files", dir);
    return DS_OK;
}

int ds_video_png_frames_check(const char *dir, ds_error *err)
{
    struct stat sb;
    if (!dir || !*dir)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "PNG frames: the folder name is empty");
    if (stat(dir, &sb) == 0)
        return check_frames_folder(dir, &sb, err);
    if (errno != ENOENT)
        return ds_error_set(err, DS_ERR_PERMISSION_DENIED, "PNG frames %s: %s", dir,
                            strerror(errno));
    /* The write creates the folder, not its parents. */
    char copy[PATH_MAX];
    if (strlen(dir) >= sizeof copy)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "PNG frames %.64s...: path too long",
                            dir);
    strcpy(copy, dir);
    const char *parent = dirname(copy);
    if (stat(parent, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return ds_error_set(err, DS_ERR_NOT_FOUND,
                            "PNG frames %s: the folder it would be created in, %s, does not exist",
                            dir, parent);
    return DS_OK;
}

static int write_png_frames(const char *dir, const uint8_t *frames, uint32_t t, uint32_t height,
                            uint32_t width, ds_error *err)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return ds_error_set(err, errno == ENOENT ? DS_ERR_NOT_FOUND : DS_ERR_PERMISSION_DENIED,
                            "PNG frames %s: cannot create the folder: %s", dir, strerror(errno));
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return ds_error_set(err, DS_ERR_ALREADY_EXISTS, "PNG frames %s: exists and is not a "
                            "folder", dir);
    int check = check_frames_folder(dir, &sb, err);
    if (check != DS_OK)
        return check;
    size_t n = strlen(dir), frame_bytes = (size_t)width * height * 3;
    char *name = malloc(n + 32);
    if (!name)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "PNG frames %s: out of memory", dir);
    const char *sep = n && dir[n - 1] == '/' ? "" : "/";
    int rc = DS_OK;
    uint32_t written = 0;
    for (; written < t; written++) {
        uint8_t *png = NULL;
        size_t size = 0;
        snprintf(name, n + 32, "%s%s%05u.png", dir, sep, written);
        rc = ds_png_encode_rgb8(frames + written * frame_bytes, width, height, &png, &size, err);
        if (rc == DS_OK)
            rc = write_whole_file(name, png, size, err);
        free(png);
        if (rc != DS_OK) {
            ds_error_prefix(err, "PNG frame %u: ", written);
            break;
        }
    }
    if (rc != DS_OK)
        for (uint32_t i = 0; i < written; i++) {
            snprintf(name, n + 32, "%s%s%05u.png", dir, sep, i);
            unlink(name);
        }
    free(name);
    return rc;
}

int ds_video_write_file(const char *path, const uint8_t *frames, uint32_t t, uint32_t height,
                        uint32_t width, const ds_video_write_options *options, ds_error *err)
{
    if (!path || !*path)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "video write: the path is empty");
    int rc = check_input(frames, t, height, width, options, err);
    if (rc != DS_OK)
        return ds_error_prefix(err, "%s: ", path);
    if (options->format == DS_VIDEO_PNG_FRAMES)
        return write_png_frames(path, frames, t, height, width, err);
    uint8_t *data = NULL;
    size_t size = 0;
    rc = ds_video_encode(frames, t, height, width, options, &data, &size, err);
    if (rc != DS_OK)
        return ds_error_prefix(err, "%s: ", path);
    rc = write_whole_file(path, data, size, err);
    free(data);
    return rc;
}
