/* A pipeline for the video socket tests only (linked into diffsynthd-video-test, never into
 * diffsynthd): no models, a table like a video pipeline's — an output "video" declared as
 * [T, H, W, 3] u8 frames, an output "latents", an input "input_video" declared as video — and
 * units like a real one (encode, one per step, decode), so the daemon's video path runs end to
 * end: the encode turn, the reply's shapes, the output region, progress, cancellation.
 * Its frames are tools/video_probe.c's smooth frames, which the tests compute themselves; with
 * input_video given, the frames are that video's, unchanged. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/ops.h"
#include "pipelines/pipeline.h"
#include "tools/video_probe.h"

enum { P_SEED, P_STEPS, P_FRAMES, P_HEIGHT, P_WIDTH, P_STEP_MS };

static const ds_pipeline_param params[] = {
    [P_SEED] = {"seed", DS_PIPELINE_UINT64, 0, 0, 0, "0", "reported back"},
    [P_STEPS] = {"steps", DS_PIPELINE_INT, 1, 1000, 0, "2", "units between encode and decode"},
    [P_FRAMES] = {"num_frames", DS_PIPELINE_INT, 1, 64, 0, "5", "frames made"},
    [P_HEIGHT] = {"height", DS_PIPELINE_INT, 1, 512, 0, "32", "frame height"},
    [P_WIDTH] = {"width", DS_PIPELINE_INT, 1, 512, 0, "48", "frame width"},
    [P_STEP_MS] = {"step_ms", DS_PIPELINE_INT, 0, 10000, 0, "0", "sleep per step"},
};

static const ds_pipeline_tensor inputs[] = {
    {.name = "input_video", .help = "[T, H, W, 3] u8: given back as the frames", .video = 1},
};

static const ds_pipeline_tensor outputs[] = {
    {.name = "video", .help = "[T, H, W, 3] u8 frames", .video = 1},
    {.name = "latents", .help = "[1] f32: the seed"},
};

static const char *const phases[] = {"encode", "denoise", "decode"};

static const ds_pipeline_dtype dtypes[] = {{"float32", "f32", DS_F32}};

struct ds_pipeline_run {
    uint64_t seed;
    uint64_t steps, done;
    int64_t t, h, w;
    int step_ms;
    uint8_t *input; /* input_video's frames, copied: the request's are borrowed until the
                       first advance */
    ds_tensor frames, latents;
    float latent;
};

static int op_start(const ds_pipeline_args *args, ds_pipeline_run **out, ds_error *err)
{
    ds_pipeline_run *r = calloc(1, sizeof *r);
    if (!r)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    r->seed = args->values[P_SEED].u;
    r->steps = (uint64_t)args->values[P_STEPS].i;
    r->t = args->values[P_FRAMES].i;
    r->h = args->values[P_HEIGHT].i;
    r->w = args->values[P_WIDTH].i;
    r->step_ms = (int)args->values[P_STEP_MS].i;
    const ds_tensor *in = args->inputs[0];
    if (in) {
        r->t = in->shape[0];
        r->h = in->shape[1];
        r->w = in->shape[2];
        if (!(r->input = malloc(ds_tensor_nbytes(in)))) {
            free(r);
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
        }
        memcpy(r->input, in->data, ds_tensor_nbytes(in));
    }
    *out = r;
    return DS_OK;
}

static int op_advance(ds_pipeline_run *r, const ds_step_context *ctx, ds_error *err)
{
    uint64_t total = r->steps + 2;
    if (r->done == 0) {
        ctx->progress(ctx->user, "encode", 1, 1);
    } else if (r->done <= r->steps) {
        struct timespec ts = {r->step_ms / 1000, (long)(r->step_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        ctx->progress(ctx->user, "denoise", r->done, r->steps);
    } else {
        size_t n = (size_t)(r->t * r->h * r->w * 3);
        uint8_t *rgb = r->input ? malloc(n)
                                : ds_test_smooth_frames((uint32_t)r->t, (uint32_t)r->h,
                                                        (uint32_t)r->w);
        if (!rgb)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for the frames");
        if (r->input)
            memcpy(rgb, r->input, n);
        r->frames = (ds_tensor){.dtype = DS_U8, .ndim = 4, .shape = {r->t, r->h, r->w, 3},
                                .data = rgb};
        r->latent = (float)r->seed;
        r->latents = (ds_tensor){.dtype = DS_F32, .ndim = 1, .shape = {1}, .data = &r->latent};
        ctx->progress(ctx->user, "decode", 1, 1);
    }
    r->done++;
    return r->done < total;
}

static void op_position(const ds_pipeline_run *r, uint64_t *done, uint64_t *total)
{
    *done = r->done;
    *total = r->steps + 2;
}

static const ds_tensor *op_output(const ds_pipeline_run *r, size_t index)
{
    if (!r->frames.data)
        return NULL;
    return index == 0 ? &r->frames : &r->latents;
}

static size_t op_results(const ds_pipeline_run *r, ds_pipeline_result *out)
{
    out[0] = (ds_pipeline_result){"seed", 1, r->seed, 0};
    out[1] = (ds_pipeline_result){"steps", 1, r->steps, 0};
    out[2] = (ds_pipeline_result){"height", 1, (uint64_t)r->h, 0};
    out[3] = (ds_pipeline_result){"width", 1, (uint64_t)r->w, 0};
    out[4] = (ds_pipeline_result){"num_frames", 1, (uint64_t)r->t, 0};
    return 5;
}

static void op_describe_position(const ds_pipeline_run *r, char *buf, size_t size)
{
    snprintf(buf, size, "after %llu of %llu units", r ? (unsigned long long)r->done : 0ULL,
             r ? (unsigned long long)(r->steps + 2) : 0ULL);
}

static double op_output_pixels(const ds_pipeline_run *r) { return (double)(r->t * r->h * r->w); }

static int op_estimate_memory(const ds_pipeline_args *args, const ds_pipeline_memory_args *m,
                              ds_memory_need *need, char *what, size_t what_size, ds_error *err)
{
    (void)args;
    (void)err;
    need->held = m->inline_bytes;
    need->peak = 0;
    snprintf(what, what_size, "test_video");
    return DS_OK;
}

static void op_free(ds_pipeline_run *r)
{
    if (r) {
        free(r->frames.data);
        free(r->input);
    }
    free(r);
}

const ds_pipeline_def ds__test_video_pipeline = {
    .name = "test_video",
    .summary = "frames without models, for the video socket tests",
    .params = params,
    .param_count = sizeof params / sizeof params[0],
    .inputs = inputs,
    .input_count = sizeof inputs / sizeof inputs[0],
    .outputs = outputs,
    .output_count = sizeof outputs / sizeof outputs[0],
    .phases = phases,
    .phase_count = sizeof phases / sizeof phases[0],
    .repeated_phase = "denoise",
    .dtypes = dtypes,
    .dtype_count = sizeof dtypes / sizeof dtypes[0],
    .start = op_start,
    .advance = op_advance,
    .position = op_position,
    .output = op_output,
    .results = op_results,
    .describe_position = op_describe_position,
    .output_pixels = op_output_pixels,
    .estimate_memory = op_estimate_memory,
    .free = op_free,
};
