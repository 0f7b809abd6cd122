/* Video tensors of RunPipeline, for any pipeline whose table declares them (pipelines/
 * pipeline.h, ds_pipeline_tensor.video): the request's choice of file (video_format, fps,
 * video_quality, video_lossless), the checks on [T, H, W, 3] u8 inputs, and the encoding of
 * the frames a pipeline gives into the bytes the reply carries. No libuv, no connection: the
 * run_pipeline job calls it on the worker, tests call it directly. */
#ifndef DS_DAEMON_VIDEO_OUTPUT_H
#define DS_DAEMON_VIDEO_OUTPUT_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/video_write.h"
#include "diffsynth.pb-c.h"
#include "kernels/ops.h"

/* The frame rate when the request leaves fps at 0: upstream's examples save at 15. */
#define DS_VIDEO_OUTPUT_DEFAULT_FPS 15.0
/* Accepted fps: (0, this]. */
#define DS_VIDEO_OUTPUT_MAX_FPS 1000.0

typedef struct ds_video_output {
    int raw;                      /* "frames": the [T, H, W, 3] u8 tensor itself, not a file */
    ds_video_write_options write; /* the file's format and settings, when !raw */
} ds_video_output;

/* The request's video_format ("" = "mp4", "mp4", "webp", "frames"; case-insensitive), fps,
 * video_quality and video_lossless -> *out. INVALID_ARGUMENT naming the field, the value and
 * what is accepted: an unknown format, fps not finite or outside (0, 1000], a quality outside
 * the format's range (mp4 1..51, webp 1..100) or given for raw frames, lossless for anything
 * but webp. Does not ask whether MP4 can be written (see ds_video_output_check_supported). */
int ds_video_output_parse(const Diffsynth__V1__RunPipelineRequest *req, ds_video_output *out,
                          ds_error *err);

/* FAILED_PRECONDITION naming run_pipeline.video_format when `o` asks for MP4 and this build
 * cannot write it (-Dffmpeg=disabled, or a libavcodec without libx264); webp and frames
 * always can. For requests of pipelines that have video outputs. */
int ds_video_output_check_supported(const ds_video_output *o, ds_error *err);

/* A request tensor for an input declared as video: dtype U8, shape [T, H, W, 3] with T >= 1.
 * INVALID_ARGUMENT naming run_pipeline.<field> and what it got. Runs before the generic
 * checks of the tensor's bytes, so zero frames are named as such. */
int ds_video_output_check_input(const char *field, const Diffsynth__V1__Tensor *t,
                                ds_error *err);

/* The frames a pipeline gave for output `name` -> the bytes to send. raw: *data points at the
 * tensor's data and *owned is NULL; else *owned = *data is the MP4 or WebP file (malloc'd, the
 * caller frees it). INTERNAL when the tensor is not [T, H, W, 3] u8 (the pipeline broke its
 * table's promise); the encoder's errors (an odd size for MP4, ...) prefixed with the output's
 * name. */
int ds_video_output_encode(const char *name, const ds_tensor *frames, const ds_video_output *o,
                           uint8_t **owned, const uint8_t **data, size_t *size, ds_error *err);

#endif
