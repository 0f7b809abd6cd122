/* Video files for `diffsynth generate` (cli_generate.c): which file -o and --format ask for and
 * what the daemon is asked to send for it, input videos (MP4 / WebP / GIF / a folder of PNGs)
 * read into the [T, H, W, 3] u8 tensors a pipeline declares as video, and the output written.
 * Files only, no daemon: tests call it directly. */
#ifndef DS_CLIENT_CLI_VIDEO_H
#define DS_CLIENT_CLI_VIDEO_H

#include "client/diffsynth_client.h"
#include "core/error.h"
#include "core/video_read.h"
#include "core/video_write.h"

typedef struct cli_video_plan {
    ds_video_format file; /* what lands at -o: an MP4 or WebP file, or a folder of PNGs */
    const char *request;  /* RunPipelineRequest.video_format: "mp4", "webp" or "frames" */
} cli_video_plan;

/* -o and --format (NULL, or mp4 | webp | png) -> *plan. Without --format the extension
 * decides (*.mp4, *.webp; a path ending in '/' or without an extension is a folder of PNG
 * frames; "-", standard output, is MP4). INVALID_ARGUMENT naming -o or --format: an unknown
 * extension or format, an extension that disagrees with --format, PNG frames to "-". */
int cli_video_plan_output(const char *output, const char *format, cli_video_plan *plan,
                          ds_error *err);

/* Whether `plan`'s output at `output` would be written at all, before the run that makes it:
 * ds_output_check for a file, ds_video_png_frames_check for a folder of PNG frames. */
int cli_video_check_output(const char *output, const cli_video_plan *plan, ds_error *err);

/* `path` (a video file or a folder of PNGs) -> *video (free with ds_video_free) and *t, a
 * tensor named `name` of dtype U8 and shape [T, H, W, 3] over video->rgb. Errors start with
 * `option` and the path. */
int cli_video_read(const char *option, const char *path, const char *name, ds_video *video,
                   ds_client_tensor *t, ds_error *err);

/* Writes output `t` as `plan` says: file bytes ([n] u8) to `output` (atomically, or into a
 * FIFO / device / "-", as images are), or raw frames ([T, H, W, 3] u8) as PNG files into the
 * folder `output`. INVALID_ARGUMENT when the tensor is not what the plan asked the daemon for;
 * the writers' errors otherwise. */
int cli_video_write(const char *output, const cli_video_plan *plan, const ds_client_tensor *t,
                    ds_error *err);

#endif
