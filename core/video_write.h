/* Video files from RGB frames [T, H, W, 3] u8 (what a video VAE's output becomes after pixel
 * conversion): MP4 (H.264 through FFmpeg's libx264, yuv420p), animated WebP (libwebp's
 * WebPAnimEncoder, lossy or lossless) or a folder of PNG files (libspng). MP4 and WebP are built
 * in memory, so the daemon can send the bytes and the CLI can write them; files are written
 * through a temporary name and renamed, so a reader never sees half a video. */
#ifndef DS_CORE_VIDEO_WRITE_H
#define DS_CORE_VIDEO_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef enum ds_video_format {
    DS_VIDEO_MP4,
    DS_VIDEO_WEBP,
    DS_VIDEO_PNG_FRAMES, /* a folder of 00000.png, 00001.png, ... */
} ds_video_format;

/* Largest width or height the writer accepts (H.264 level limits are far below, x264 itself
 * refuses sides over 16384). */
#define DS_VIDEO_MAX_SIDE 16384u

/* The H.264 encoder chosen by name: the software encoder Debian's libavcodec provides. */
#define DS_VIDEO_H264_ENCODER "libx264"

typedef struct ds_video_write_options {
    ds_video_format format;
    double fps;   /* frames per second, > 0 and <= 1000 (upstream's examples use 15) */
    /* MP4: x264's CRF, 0 (lossless luma/chroma of the yuv420p frames) .. 51 (worst); lower is
     * better. WebP lossy: quality 0 .. 100; higher is better. WebP lossless: the effort, 0 ..
     * 100. -1 picks the default: CRF 18, WebP quality 90, lossless effort 75. */
    int quality;
    bool lossless; /* WebP only: exact pixels. (PNG frames are always exact.) */
} ds_video_write_options;

/* Whether DS_VIDEO_MP4 can be written: the build has FFmpeg and its libavcodec has
 * DS_VIDEO_H264_ENCODER. WebP and PNG frames are always available. */
bool ds_video_mp4_supported(void);

/* MP4, 15 fps, default quality, lossy. */
ds_video_write_options ds_video_write_defaults(void);

/* "mp4" / "webp" / "png" (case-insensitive) -> *format; INVALID_ARGUMENT naming the accepted
 * names otherwise. What the socket's `format` parameter takes. */
int ds_video_format_from_name(const char *name, ds_video_format *format, ds_error *err);

/* The format an output path asks for: "*.mp4", "*.webp", or a path ending in '/' or without
 * an extension (a folder of PNG frames). INVALID_ARGUMENT for any other extension. What the
 * CLI's -o uses. */
int ds_video_format_from_path(const char *path, ds_video_format *format, ds_error *err);

/* "mp4" / "webp" / "png". */
const char *ds_video_format_name(ds_video_format format);

/* frames [t, height, width, 3] u8 RGB -> an MP4 or WebP file's bytes in *data (malloc'd, the
 * caller frees it), *size bytes. MP4: H.264 High profile, yuv420p with BT.601 limited-range
 * colour tagged in the stream, `fps` as the stream's time base, the moov atom first
 * (+faststart) so the file plays while it streams. yuv420p halves chroma in both directions:
 * an odd width or height is refused (not padded, which would change the video's size), with a
 * message pointing at WebP or PNG. INVALID_ARGUMENT for a zero or over-cap size, bad options or
 * DS_VIDEO_PNG_FRAMES (a folder is not one buffer; use ds_video_write_file);
 * FAILED_PRECONDITION for MP4 in a build without FFmpeg (-Dffmpeg=disabled) or when libavcodec
 * lacks DS_VIDEO_H264_ENCODER. On failure *data is NULL. */
int ds_video_encode(const uint8_t *frames, uint32_t t, uint32_t height, uint32_t width,
                    const ds_video_write_options *options, uint8_t **data, size_t *size,
                    ds_error *err);

/* The same, written to `path`: the file (through path.tmp-XXXXXX and a rename) for MP4 and
 * WebP; for DS_VIDEO_PNG_FRAMES a folder (created when missing; it must not already hold
 * PNG files, so frames of two videos never mix) of t files 00000.png, 00001.png, .... Errors
 * name the path; a failed write leaves no partial file behind. */
int ds_video_write_file(const char *path, const uint8_t *frames, uint32_t t, uint32_t height,
                        uint32_t width, const ds_video_write_options *options, ds_error *err);

/* Whether ds_video_write_file could write DS_VIDEO_PNG_FRAMES into `dir`, for tools to refuse
 * before the work that makes the frames: ALREADY_EXISTS when `dir` is not a folder or already
 * holds PNG files, NOT_FOUND when the folder it would be created in does not exist,
 * PERMISSION_DENIED when it cannot be looked at. A write can still fail later. */
int ds_video_png_frames_check(const char *dir, ds_error *err);

#endif
