/* Video files into RGB frames [T, H, W, 3] u8: MP4 / MOV, WebM / Matroska and GIF through
 * libavformat + libavcodec (converted to RGB24 with libswscale), WebP (animated or still)
 * through libwebp's WebPAnimDecoder, a single PNG, or a folder of PNG files. Inputs come from
 * clients: the container is recognised from the bytes (not the name), only these containers
 * are opened, nothing outside the buffer is ever opened (an MP4's external references are
 * refused), and the decoded size is bounded by a caller's max_bytes before it is allocated. */
#ifndef DS_CORE_VIDEO_READ_H
#define DS_CORE_VIDEO_READ_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct ds_video {
    uint8_t *rgb;     /* [t, height, width, 3], malloc'd */
    uint32_t t, height, width;
    double fps;       /* the file's frame rate; 0 where it has none (stills, PNG folders) */
} ds_video;

/* A max_bytes for callers without a better bound: 2 GiB of decoded frames. */
#define DS_VIDEO_READ_DEFAULT_MAX_BYTES ((size_t)2 << 30)

/* Largest width or height the reader accepts. */
#define DS_VIDEO_READ_MAX_SIDE 16384u

/* A video file's bytes -> *out (zeroed first; free with ds_video_free). `name` (a path, or a
 * field name for bytes from a socket) starts every error message. INVALID_ARGUMENT naming what
 * is wrong: an empty buffer; "not a video" (no container we read); a container without a video
 * stream; a corrupt or truncated file (including fewer frames than the container's index
 * lists); zero frames; frames that change size; a frame size over DS_VIDEO_READ_MAX_SIDE; or
 * t * height * width * 3 over max_bytes (checked before the memory is taken).
 * FAILED_PRECONDITION when libavcodec has no decoder for the stream's codec, or for MP4 / WebM /
 * GIF input in a build without FFmpeg (-Dffmpeg=disabled: WebP and PNG only). */
int ds_video_decode(const uint8_t *data, size_t size, const char *name, size_t max_bytes,
                    ds_video *out, ds_error *err);

/* A file as above (read whole; a file larger than max_bytes is refused unread), or a folder:
 * its *.png files in byte order of their names, all of one size, fps 0. NOT_FOUND /
 * PERMISSION_DENIED when the path cannot be opened. */
int ds_video_read_file(const char *path, size_t max_bytes, ds_video *out, ds_error *err);

void ds_video_free(ds_video *video);

#endif
