#include "client/cli_video.h"

#include <string.h>

#include "core/output_file.h"

static const char *request_name(ds_video_format f)
{
    return f == DS_VIDEO_PNG_FRAMES ? "frames" : ds_video_format_name(f);
}

int cli_video_plan_output(const char *output, const char *format, cli_video_plan *plan,
                          ds_error *err)
{
    int to_stdout = strcmp(output, "-") == 0;
    ds_video_format by_name = DS_VIDEO_MP4, by_path = DS_VIDEO_MP4;
    ds_error why;
    if (format && ds_video_format_from_name(format, &by_name, &why) != DS_OK)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "--format %s is not mp4, webp or png",
                            format);
    /* An extension that names no format is the user's choice of name once --format says. */
    int path_known = !to_stdout && ds_video_format_from_path(output, &by_path, &why) == DS_OK;
    if (!format) {
        if (!to_stdout && !path_known)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "-o %s: the extension is not .mp4 or .webp (a path ending in / "
                                "or without an extension is a folder of PNG frames); or say "
                                "--format",
                                output);
        by_name = to_stdout ? DS_VIDEO_MP4 : by_path;
    } else if (path_known && by_path != DS_VIDEO_PNG_FRAMES && by_path != by_name) {
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "-o %s is a .%s name, but --format says %s", output,
                            ds_video_format_name(by_path), ds_video_format_name(by_name));
    }
    if (to_stdout && by_name == DS_VIDEO_PNG_FRAMES)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "-o -: PNG frames are a folder and cannot go to standard output; "
                            "name a folder, or --format mp4 or webp");
    plan->file = by_name;
    plan->request = request_name(by_name);
    return DS_OK;
}

int cli_video_check_output(const char *output, const cli_video_plan *plan, ds_error *err)
{
    return plan->file == DS_VIDEO_PNG_FRAMES ? ds_video_png_frames_check(output, err)
                                             : ds_output_check(output, err);
}

int cli_video_read(const char *option, const char *path, const char *name, ds_video *video,
                   ds_client_tensor *t, ds_error *err)
{
    int rc = ds_video_read_file(path, DS_VIDEO_READ_DEFAULT_MAX_BYTES, video, err);
    if (rc != DS_OK)
        return ds_error_prefix(err, "%s ", option);
    *t = (ds_client_tensor){
        .name = name,
        .dtype = diffsynth_v1_DType_U8,
        .ndim = 4,
        .shape = {video->t, video->height, video->width, 3},
        .data = video->rgb,
        .nbytes = (size_t)video->t * video->height * video->width * 3,
    };
    return DS_OK;
}

int cli_video_write(const char *output, const cli_video_plan *plan, const ds_client_tensor *t,
                    ds_error *err)
{
    if (plan->file != DS_VIDEO_PNG_FRAMES) {
        if (t->dtype != diffsynth_v1_DType_U8 || t->ndim != 1)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "output %s: the daemon sent a %d-dim tensor of dtype %d, not %s "
                                "file bytes",
                                t->name, t->ndim, t->dtype, ds_video_format_name(plan->file));
        ds_out_chunk chunk = {t->data, t->nbytes};
        return ds_output_write(output, &chunk, 1, err);
    }
    if (t->dtype != diffsynth_v1_DType_U8 || t->ndim != 4 || t->shape[3] != 3 ||
        t->shape[0] < 1 || t->shape[0] > UINT32_MAX || t->shape[1] < 1 ||
        t->shape[1] > DS_VIDEO_MAX_SIDE || t->shape[2] < 1 || t->shape[2] > DS_VIDEO_MAX_SIDE ||
        t->nbytes != (size_t)t->shape[0] * (size_t)t->shape[1] * (size_t)t->shape[2] * 3)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "output %s: the daemon sent a %d-dim tensor of dtype %d, not "
                            "[T, H, W, 3] u8 frames",
                            t->name, t->ndim, t->dtype);
    ds_video_write_options o = ds_video_write_defaults();
    o.format = DS_VIDEO_PNG_FRAMES;
    return ds_video_write_file(output, t->data, (uint32_t)t->shape[0], (uint32_t)t->shape[1],
                               (uint32_t)t->shape[2], &o, err);
}
