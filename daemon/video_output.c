#include "daemon/video_output.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int ds_video_output_parse(const Diffsynth__V1__RunPipelineRequest *req, ds_video_output *out,
                          ds_error *err)
{
    memset(out, 0, sizeof *out);
    out->write = ds_video_write_defaults();
    const char *name = req->video_format ? req->video_format : "";
    ds_video_format format = DS_VIDEO_MP4;
    ds_error why;
    /* "png" is core's name for PNG frames: the daemon sends them raw and the client writes
     * the files, so it means the same as "frames". */
    if (strcasecmp(name, "frames") == 0)
        format = DS_VIDEO_PNG_FRAMES;
    else if (name[0] && ds_video_format_from_name(name, &format, &why) != DS_OK)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.video_format \"%.32s\" is not one of mp4, webp, frames "
                            "(raw [T, H, W, 3] u8 for PNG frames; png means the same)",
                            name);
    out->raw = format == DS_VIDEO_PNG_FRAMES;
    out->write.format = out->raw ? DS_VIDEO_MP4 : format;

    double fps = req->fps;
    if (fps == 0.0)
        fps = DS_VIDEO_OUTPUT_DEFAULT_FPS;
    if (!isfinite(fps) || fps < 0.0 || fps > DS_VIDEO_OUTPUT_MAX_FPS)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.fps %g is not in (0, %g] (0 = %g)", req->fps,
                            DS_VIDEO_OUTPUT_MAX_FPS, DS_VIDEO_OUTPUT_DEFAULT_FPS);
    out->write.fps = fps;

    if (req->video_lossless && (out->raw || format != DS_VIDEO_WEBP))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.video_lossless applies to webp only, not %s",
                            out->raw ? "raw frames (always exact)" : ds_video_format_name(format));
    out->write.lossless = req->video_lossless != 0;

    int q = req->video_quality;
    if (q != 0) {
        if (out->raw)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "run_pipeline.video_quality %d does not apply to raw frames "
                                "(always exact); leave it 0",
                                q);
        int max = format == DS_VIDEO_MP4 ? 51 : 100;
        if (q < 1 || q > max)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "run_pipeline.video_quality %d is not in 1..%d for %s%s (0 = the "
                                "default)",
                                q, max, ds_video_format_name(format),
                                format == DS_VIDEO_MP4 ? " (x264's CRF, lower is better)"
                                : out->write.lossless ? " lossless (the effort)"
                                                      : " (higher is better)");
        out->write.quality = q;
    }
    return DS_OK;
}

int ds_video_output_check_supported(const ds_video_output *o, ds_error *err)
{
    if (o->raw || o->write.format != DS_VIDEO_MP4 || ds_video_mp4_supported())
        return DS_OK;
    return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                        "run_pipeline.video_format mp4: this diffsynthd cannot write MP4 (built "
                        "without FFmpeg, or its libavcodec has no %s); ask for webp or frames",
                        DS_VIDEO_H264_ENCODER);
}

int ds_video_output_check_input(const char *field, const Diffsynth__V1__Tensor *t, ds_error *err)
{
    if (t->dtype != DIFFSYNTH__V1__DTYPE__U8)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.%s: dtype %d, expected U8 (%d) frames [T, H, W, 3]",
                            field, (int)t->dtype, (int)DIFFSYNTH__V1__DTYPE__U8);
    if (t->n_shape != 4)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.%s has %zu dims, expected 4: frames [T, H, W, 3]", field,
                            t->n_shape);
    if (t->shape[0] == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.%s has 0 frames; a video needs at least one", field);
    if (t->shape[3] != 3)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "run_pipeline.%s has %lld channels, expected 3 (RGB) in [T, H, W, 3]",
                            field, (long long)t->shape[3]);
    return DS_OK;
}

int ds_video_output_encode(const char *name, const ds_tensor *frames, const ds_video_output *o,
                           uint8_t **owned, const uint8_t **data, size_t *size, ds_error *err)
{
    *owned = NULL;
    *data = NULL;
    *size = 0;
    if (frames->ndim != 4 || frames->dtype != DS_U8 || frames->shape[3] != 3 ||
        frames->shape[0] < 1 || frames->shape[1] < 1 || frames->shape[2] < 1)
        return ds_error_set(err, DS_ERR_INTERNAL,
                            "the pipeline finished without [T, H, W, 3] u8 frames for %s", name);
    if (o->raw) {
        *data = frames->data;
        *size = ds_tensor_nbytes(frames);
        return DS_OK;
    }
    int64_t t = frames->shape[0], h = frames->shape[1], w = frames->shape[2];
    if (t > UINT32_MAX || h > UINT32_MAX || w > UINT32_MAX)
        return ds_error_set(err, DS_ERR_INTERNAL, "output %s: %lld x %lld x %lld frames", name,
                            (long long)t, (long long)h, (long long)w);
    int rc = ds_video_encode(frames->data, (uint32_t)t, (uint32_t)h, (uint32_t)w, &o->write,
                             owned, size, err);
    if (rc != DS_OK) {
        ds_error_prefix(err, "output %s as %s: ", name, ds_video_format_name(o->write.format));
        return rc;
    }
    *data = *owned;
    return DS_OK;
}
