#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/image_png.h"
#include "http/fields.h"
#include "http/generate.h"

/* Frames per second of the clips the daemon encodes when a request names no rate (its default,
 * as upstream's examples): what a clip length in seconds is counted in. */
#define VIDEO_FPS 15

/* v rounded up to the multiple the pipeline declares, with which its models use the side as
 * given: the size an input image is resized to must be the one the pipeline runs at. */
static long long round_up(const gw_pipeline_info *p, long long v)
{
    long long m = p->size_multiple ? (long long)p->size_multiple : 1;
    return (v + m - 1) / m * m;
}

/* A side checked against the pipeline's range, before the daemon would refuse it with its own
 * parameter's name. */
static int check_side(const gw_pipeline_info *p, const char *side, long long v, const char *param,
                      gw_failure *f)
{
    const gw_param_info *info = gw_pipeline_param(p, side);
    if (!info) {
        gw_fail(f, 400, param, "%s: the %s pipeline takes no %s", param, p->name, side);
        return -1;
    }
    if ((double)v < info->min || (double)v > info->max) {
        gw_fail(f, 400, param, "%s: the %s is %lld, expected %g to %g for %s", param, side, v,
                info->min, info->max, p->name);
        return -1;
    }
    return 0;
}

/* The "models" extension: {"dit": "m2", ...}, loaded models by id for roles of the pipeline
 * (the others are found by name, as the daemon does). */
static int read_models(const gw_pipeline_info *p, json_t *models, gw_gen *gen, gw_failure *f)
{
    if (!models || json_is_null(models))
        return 0;
    if (!json_is_object(models)) {
        gw_fail(f, 400, "models", "models must be an object of role: model id");
        return -1;
    }
    const char *role;
    json_t *id;
    json_object_foreach(models, role, id) {
        int r = 0;
        while (r < p->role_count && strcmp(p->roles[r], role) != 0)
            r++;
        if (r == p->role_count) {
            gw_fail(f, 400, "models", "models: \"%.48s\" is not a role of %s", role, p->name);
            return -1;
        }
        if (!json_is_string(id) || json_string_length(id) == 0 ||
            json_string_length(id) >= GW_NAME || gen->model_count >= GW_MAX_TENSORS) {
            gw_fail(f, 400, "models", "models.%s must be a loaded model's id, like \"m2\"", role);
            return -1;
        }
        snprintf(gen->model_roles[gen->model_count], GW_NAME, "%s", role);
        snprintf(gen->model_ids[gen->model_count++], GW_NAME, "%s", json_string_value(id));
    }
    return 0;
}

/* A clip length as num_frames at VIDEO_FPS (the pipeline rounds to its own frame grid, 4k+1
 * for Wan). A pipeline without num_frames is refused rather than the length ignored: its
 * clip's length follows something else (an input video) or it makes still images, and a client
 * that asked for seconds would otherwise get a clip of another length without a word. */
static int seconds_to_frames(const gw_pipeline_info *p, double seconds, gw_gen *gen,
                             gw_failure *f)
{
    const gw_param_info *info = gw_pipeline_param(p, "num_frames");
    if (!info) {
        gw_fail(f, 400, "seconds", "seconds: the %s pipeline takes no num_frames (%s), so a "
                "clip length cannot be asked of it", p->name,
                p->video ? "its clip's length is not chosen this way" : "it makes still images");
        return -1;
    }
    long long n = llround(seconds * VIDEO_FPS);
    n = n < 1 ? 1 : n;
    if ((double)n < info->min || (double)n > info->max) {
        gw_fail(f, 400, "seconds", "seconds: %g s is %lld frames at %d fps, expected %g to %g "
                "frames (%.3g to %.3g s) for %s", seconds, n, VIDEO_FPS, info->min, info->max,
                info->min / VIDEO_FPS, info->max / VIDEO_FPS, p->name);
        return -1;
    }
    char text[32];
    snprintf(text, sizeof text, "%lld", n);
    gw_gen_param(gen, "num_frames", text);
    return 0;
}

/* Nearest-neighbour resampling: frontends send pictures of any size, the pipeline wants the
 * output size, and the denoising redraws the detail anyway. */
static uint8_t *resize(const uint8_t *rgb, uint32_t w, uint32_t h, uint32_t ow, uint32_t oh)
{
    uint8_t *out = malloc((size_t)ow * oh * 3);
    if (!out)
        return NULL;
    for (uint32_t y = 0; y < oh; y++) {
        uint32_t sy = (uint32_t)(((uint64_t)y * h + h / 2) / oh);
        sy = sy < h ? sy : h - 1;
        for (uint32_t x = 0; x < ow; x++) {
            uint32_t sx = (uint32_t)(((uint64_t)x * w + w / 2) / ow);
            sx = sx < w ? sx : w - 1;
            memcpy(out + ((size_t)y * ow + x) * 3, rgb + ((size_t)sy * w + sx) * 3, 3);
        }
    }
    return out;
}

int gw_gen_build(gw *g, const gw_gen_fields *in, gw_gen *gen, gw_failure *f)
{
    memset(gen, 0, sizeof *gen);
    gw_pipelines *all = calloc(1, sizeof *all);
    if (!all) {
        gw_fail(f, 500, NULL, "out of memory");
        return -1;
    }
    int rc = -1;
    uint8_t *rgb = NULL;
    if (gw_daemon_pipelines(&g->cfg, all, f) != 0)
        goto done;
    const gw_pipeline_info *p = gw_pipeline_find(all, in->model, in->makes, in->model_param, f);
    if (!p)
        goto done;
    snprintf(gen->pipeline, sizeof gen->pipeline, "%s", p->name);
    if (read_models(p, in->models, gen, f) != 0)
        goto done;
    gen->kind = p->video ? "video" : "image";
    gen->source = in->source;
    gen->runs = in->runs ? in->runs : 1;
    if (!(gen->prompt = strdup(in->prompt)) ||
        (in->negative && !(gen->negative = strdup(in->negative)))) {
        gw_fail(f, 500, NULL, "out of memory");
        goto done;
    }
    long long w = in->width, h = in->height;
    uint32_t iw = 0, ih = 0;
    if (in->png) {
        if (!gw_pipeline_has_input(p, "input_image")) {
            gw_fail(f, 400, in->image_param, "%s: the %s pipeline takes no input image",
                    in->image_param, p->name);
            goto done;
        }
        ds_error err;
        if (ds_png_decode_rgb8(in->png, in->png_len, &rgb, &iw, &ih, &err) != DS_OK) {
            gw_fail(f, 400, in->image_param, "%s: %s (a PNG image is expected)", in->image_param,
                    err.message);
            goto done;
        }
        if (!in->has_size) {
            w = iw;
            h = ih;
        }
    }
    char text[GW_NAME];
    bool has_size = in->has_size || in->png;
    if (has_size) {
        if (check_side(p, "width", w, in->size_param, f) != 0 ||
            check_side(p, "height", h, in->size_param, f) != 0)
            goto done;
        /* Without an image the daemon rounds for the model it runs (wan_video: to 16 with the
         * Wan2.1 VAE, which the declared 32 would overshoot). */
        if (rgb) {
            w = round_up(p, w);
            h = round_up(p, h);
        }
        snprintf(text, sizeof text, "%lld", w);
        gw_gen_param(gen, "width", text);
        snprintf(text, sizeof text, "%lld", h);
        gw_gen_param(gen, "height", text);
    }
    struct {
        bool has;
        const char *name;
        double v;
        bool integer;
    } extra[] = {
        {in->has_steps, "steps", (double)in->steps, true},
        {in->has_cfg, "cfg_scale", in->cfg_scale, false},
        {in->has_strength, "denoising_strength", in->strength, false},
    };
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) {
        if (!extra[i].has)
            continue;
        const gw_param_info *info = gw_pipeline_param(p, extra[i].name);
        if (!info) {
            gw_fail(f, 400, extra[i].name, "%s: the %s pipeline has no such parameter",
                    extra[i].name, p->name);
            goto done;
        }
        bool low = info->min_exclusive ? extra[i].v <= info->min : extra[i].v < info->min;
        if (low || extra[i].v > info->max) {
            gw_fail(f, 400, extra[i].name, "%s is %g, expected %s%g to %g for %s", extra[i].name,
                    extra[i].v, info->min_exclusive ? "above " : "", info->min, info->max,
                    p->name);
            goto done;
        }
        if (extra[i].integer)
            snprintf(text, sizeof text, "%lld", (long long)extra[i].v);
        else
            gw_format_number(extra[i].v, text, sizeof text);
        gw_gen_param(gen, extra[i].name, text);
    }
    if (in->has_seconds && seconds_to_frames(p, in->seconds, gen, f) != 0)
        goto done;
    gen->has_seed = in->has_seed;
    gen->seed = in->seed;
    if (rgb) {
        if ((uint32_t)w == iw && (uint32_t)h == ih) {
            gen->image = rgb;
            rgb = NULL;
        } else if (!(gen->image = resize(rgb, iw, ih, (uint32_t)w, (uint32_t)h))) {
            gw_fail(f, 500, NULL, "out of memory resizing the image");
            goto done;
        }
        gen->image_w = (uint32_t)w;
        gen->image_h = (uint32_t)h;
    }
    rc = 0;
done:
    free(rgb);
    free(all);
    if (rc != 0)
        gw_gen_free(gen);
    return rc;
}

int gw_gen_run(gw *g, gw_gen *gen, gw_job **job, gw_job_view *v, gw_failure *f)
{
    if (gw_jobs_submit(g->jobs, gen, job, f) != 0)
        return -1;
    uint64_t seq = 0;
    while (!gw_job_wait(g->jobs, *job, &seq, -1)) {
    }
    gw_job_view_get(g->jobs, *job, v);
    return 0;
}
