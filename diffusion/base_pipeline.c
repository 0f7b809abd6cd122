#include "diffusion/base_pipeline.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/float_convert.h"

static float round_bf16(float v) { return ds_bf16_to_f32(ds_f32_to_bf16(v)); }

int ds_cfg_combine(ds_dtype dtype, const void *posi, const void *nega, double cfg_scale, void *out,
                   size_t count, ds_error *err)
{
    if (dtype != DS_F32 && dtype != DS_BF16)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "cfg combine: dtype %s is not supported (expected f32 or bf16)",
                            ds_dtype_name(dtype));
    if (!isfinite(cfg_scale))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "cfg combine: cfg_scale %g is not finite",
                            cfg_scale);
    if (count > 0 && (!posi || !nega || !out))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "cfg combine: %s is NULL",
                            !posi ? "posi" : !nega ? "nega" : "out");
    /* The Python float becomes a float32 scalar in both dtypes. */
    float scale = (float)cfg_scale;
    if (dtype == DS_F32) {
        const float *p = posi, *n = nega;
        float *o = out;
        for (size_t i = 0; i < count; i++) {
            float diff = p[i] - n[i];
            o[i] = n[i] + diff * scale;
        }
        return DS_OK;
    }
    const uint16_t *p = posi, *n = nega;
    uint16_t *o = out;
    for (size_t i = 0; i < count; i++) {
        float nv = ds_bf16_to_f32(n[i]);
        float diff = round_bf16(ds_bf16_to_f32(p[i]) - nv);
        o[i] = ds_f32_to_bf16(nv + round_bf16(diff * scale));
    }
    return DS_OK;
}

/* ((x - (-1)) * (255 / 2)).clip(0, 255).to(uint8) for one element already in float. */
static uint8_t to_u8(float x, int bf16)
{
    float y = x + 1.0f;
    if (bf16)
        y = round_bf16(y);
    y = y * 127.5f;
    if (bf16)
        y = round_bf16(y);
    if (isnan(y))
        return 0;
    if (y < 0.0f)
        y = 0.0f;
    if (y > 255.0f)
        y = 255.0f;
    return (uint8_t)y;
}

int ds_vae_output_to_image(const ds_tensor *image, uint8_t *rgb, ds_error *err)
{
    if (!image || !rgb)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "vae_output_to_image: %s is NULL",
                            image ? "rgb" : "image");
    if (image->dtype != DS_F32 && image->dtype != DS_BF16)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "vae_output_to_image: image dtype %s is not supported (expected f32 "
                            "or bf16)",
                            ds_dtype_name(image->dtype));
    if (image->ndim != 4 || image->shape[0] != 1 || image->shape[1] != 3 || image->shape[2] < 1 ||
        image->shape[3] < 1) {
        char shape[128] = "";
        size_t used = 0;
        for (int d = 0; d < image->ndim && d < 8 && used < sizeof shape; d++)
            used += (size_t)snprintf(shape + used, sizeof shape - used, "%s%lld", d ? ", " : "",
                                     (long long)image->shape[d]);
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "vae_output_to_image: image shape [%s] is not [1, 3, H, W]", shape);
    }
    if (image->backend && !image->backend->host_memory)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "vae_output_to_image: image is in %s memory, expected host memory",
                            image->backend->name);
    if (!image->data)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "vae_output_to_image: image data is NULL");
    size_t plane = (size_t)image->shape[2] * (size_t)image->shape[3];
    int bf16 = image->dtype == DS_BF16;
    for (size_t c = 0; c < 3; c++) {
        for (size_t i = 0; i < plane; i++) {
            size_t at = c * plane + i;
            float x = bf16 ? ds_bf16_to_f32(((const uint16_t *)image->data)[at])
                           : ((const float *)image->data)[at];
            rgb[i * 3 + c] = to_u8(x, bf16);
        }
    }
    return DS_OK;
}

int ds_preprocess_image(const uint8_t *rgb, int64_t height, int64_t width, ds_dtype dtype, void *out,
                        ds_error *err)
{
    if (dtype != DS_F32 && dtype != DS_BF16)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "preprocess_image: dtype %s is not supported (expected f32 or bf16)",
                            ds_dtype_name(dtype));
    if (height < 1 || width < 1)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "preprocess_image: size %lld x %lld is not positive", (long long)height,
                            (long long)width);
    if (!rgb || !out)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "preprocess_image: %s is NULL",
                            rgb ? "out" : "rgb");
    if ((uint64_t)height > SIZE_MAX / sizeof(float) / 3 / (uint64_t)width)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "preprocess_image: size %lld x %lld does not fit in memory",
                            (long long)height, (long long)width);
    /* (max_value - min_value) / 255 and min_value, Python doubles met by a float32 op. */
    const float scale = (float)(2.0 / 255.0);
    size_t plane = (size_t)height * (size_t)width;
    for (size_t c = 0; c < 3; c++) {
        for (size_t i = 0; i < plane; i++) {
            /* Pixel values are integers below 256, exact in bf16: the cast rounds nothing. */
            float x = (float)rgb[i * 3 + c] * scale;
            size_t at = c * plane + i;
            if (dtype == DS_F32) {
                ((float *)out)[at] = x + -1.0f;
            } else {
                ((uint16_t *)out)[at] = ds_f32_to_bf16(round_bf16(x) + -1.0f);
            }
        }
    }
    return DS_OK;
}
