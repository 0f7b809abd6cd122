/* A pipeline for the gateway tests only (linked into diffsynthd-video-test, never into
 * diffsynthd): no models, an image pipeline whose sides are rounded up to multiples of 32, as
 * wan_video's are with the Wan2.2 VAE, and whose input_image must have the rounded size, as the
 * real pipelines check it. A client that resizes a picture to a size rounded its own way (16)
 * is refused; one that takes the declared size_multiple is not. The output is the input image
 * given back (or gray without one), PNG-encoded by the daemon. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/pipeline.h"

#define MULTIPLE 32

enum { P_SEED, P_HEIGHT, P_WIDTH };

static const ds_pipeline_param params[] = {
    [P_SEED] = {"seed", DS_PIPELINE_UINT64, 0, 0, 0, "0", "reported back"},
    [P_HEIGHT] = {"height", DS_PIPELINE_INT, 16, 512, 0, "64",
                  "image height, rounded up to a multiple of 32"},
    [P_WIDTH] = {"width", DS_PIPELINE_INT, 16, 512, 0, "64",
                 "image width, rounded up to a multiple of 32"},
};

static const ds_pipeline_tensor inputs[] = {
    {.name = "input_image", .help = "[H, W, 3] u8 at the rounded size: given back"},
};

static const ds_pipeline_tensor outputs[] = {
    {.name = "image", .help = "the image as PNG file bytes", .png = 1},
};

static const char *const phases[] = {"encode", "denoise", "decode"};

static const ds_pipeline_dtype dtypes[] = {{"float32", "f32", DS_F32}};

struct ds_pipeline_run {
    uint64_t seed;
    int64_t h, w;
    int done;
    ds_tensor image;
};

static int64_t round_up(int64_t v) { return (v + MULTIPLE - 1) / MULTIPLE * MULTIPLE; }

static int op_start(const ds_pipeline_args *args, ds_pipeline_run **out, ds_error *err)
{
    int64_t h = round_up(args->values[P_HEIGHT].i), w = round_up(args->values[P_WIDTH].i);
    const ds_tensor *in = args->inputs[0];
    if (in && (in->ndim != 3 || in->shape[0] != h || in->shape[1] != w || in->shape[2] != 3))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "test_image: input_image is [%lld, %lld, %lld], expected [%lld, "
                            "%lld, 3] (the size after rounding up to multiples of %d)",
                            (long long)in->shape[0], (long long)in->shape[1],
                            (long long)(in->ndim > 2 ? in->shape[2] : 0), (long long)h,
                            (long long)w, MULTIPLE);
    ds_pipeline_run *r = calloc(1, sizeof *r);
    uint8_t *rgb = malloc((size_t)(h * w * 3));
    if (!r || !rgb) {
        free(r);
        free(rgb);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    if (in)
        memcpy(rgb, in->data, (size_t)(h * w * 3));
    else
        memset(rgb, 128, (size_t)(h * w * 3));
    r->seed = args->values[P_SEED].u;
    r->h = h;
    r->w = w;
    r->image = (ds_tensor){.dtype = DS_U8, .ndim = 3, .shape = {h, w, 3}, .data = rgb};
    *out = r;
    return DS_OK;
}

static int op_advance(ds_pipeline_run *r, const ds_step_context *ctx, ds_error *err)
{
    (void)err;
    ctx->progress(ctx->user, phases[r->done], 1, 1);
    r->done++;
    return r->done < 3;
}

static void op_position(const ds_pipeline_run *r, uint64_t *done, uint64_t *total)
{
    *done = (uint64_t)r->done;
    *total = 3;
}

static const ds_tensor *op_output(const ds_pipeline_run *r, size_t index)
{
    (void)index;
    return r->done == 3 ? &r->image : NULL;
}

static size_t op_results(const ds_pipeline_run *r, ds_pipeline_result *out)
{
    out[0] = (ds_pipeline_result){"seed", 1, r->seed, 0};
    out[1] = (ds_pipeline_result){"steps", 1, 1, 0};
    out[2] = (ds_pipeline_result){"height", 1, (uint64_t)r->h, 0};
    out[3] = (ds_pipeline_result){"width", 1, (uint64_t)r->w, 0};
    return 4;
}

static void op_describe_position(const ds_pipeline_run *r, char *buf, size_t size)
{
    snprintf(buf, size, "after %d of 3 units", r ? r->done : 0);
}

static double op_output_pixels(const ds_pipeline_run *r) { return (double)(r->h * r->w); }

static int op_estimate_memory(const ds_pipeline_args *args, const ds_pipeline_memory_args *m,
                              ds_memory_need *need, char *what, size_t what_size, ds_error *err)
{
    (void)args;
    (void)err;
    need->held = m->inline_bytes;
    need->peak = 0;
    snprintf(what, what_size, "test_image");
    return DS_OK;
}

static void op_free(ds_pipeline_run *r)
{
    if (r)
        free(r->image.data);
    free(r);
}

const ds_pipeline_def ds__test_image_pipeline = {
    .name = "test_image",
    .summary = "images without models, sides in multiples of 32, for the gateway tests",
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
    .size_multiple = MULTIPLE,
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
