/* diffsynth/diffusion/base_pipeline.py: the tensor helpers every pipeline shares, bit for bit
 * with upstream's CPU arithmetic in the tensor's dtype (F32 or BF16).
 *
 * PyTorch takes a binary op on bf16 tensors in float and rounds the result to bf16; a Python
 * float on the right of the op stays a float32 scalar (not rounded to bf16). Each helper below
 * performs upstream's ops in upstream's order, rounding after each one.
 */
#ifndef DS_DIFFUSION_BASE_PIPELINE_H
#define DS_DIFFUSION_BASE_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/backend.h"

/* cfg_guided_model_fn's combination: out = nega + cfg_scale * (posi - nega), count elements.
 * out may alias either input. INVALID_ARGUMENT for another dtype, NULL buffers, a non-finite
 * cfg_scale. */
int ds_cfg_combine(ds_dtype dtype, const void *posi, const void *nega, double cfg_scale, void *out,
                   size_t count, ds_error *err);

/* vae_output_to_image: image [1, 3, H, W] F32/BF16 in host memory -> rgb [H, W, 3] u8 (caller's
 * buffer of H*W*3 bytes): HWC, ((x + 1) * 127.5).clip(0, 255) in the tensor's dtype, then a
 * truncating cast to uint8 (NaN gives 0, as PyTorch's cast does on x86-64). Upstream averages
 * over the batch; with the one image its pipelines decode, that mean is the image itself, and
 * other batch sizes are refused. INVALID_ARGUMENT names the shape or dtype at fault. */
int ds_vae_output_to_image(const ds_tensor *image, uint8_t *rgb, ds_error *err);

/* preprocess_image: rgb [H, W, 3] u8 -> out [1, 3, H, W] in dtype (F32 or BF16; caller's buffer):
 * the pixel as float32, cast to dtype, * (2 / 255), + (-1), each op rounded in dtype.
 * INVALID_ARGUMENT for a non-positive size, another dtype, NULL buffers. */
int ds_preprocess_image(const uint8_t *rgb, int64_t height, int64_t width, ds_dtype dtype, void *out,
                        ds_error *err);

#endif
