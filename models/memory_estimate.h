/* Upper bounds on the memory a step or a pipeline allocates beyond the weights, computed from
 * the request alone (shapes, dtypes, parameters, the model's config) before anything runs, so
 * that the daemon can refuse what cannot fit instead of being killed half way.
 *
 * Each bound restates, shape by shape, what the forward passes allocate: the DiT's and the text
 * encoder's preallocated per-token state, the VAE's live activations per resolution level (the
 * Wan VAEs' with the frames a chunk has there and two cached frames per causal convolution),
 * and the CPU kernels' transients (f32 staging of bf16 operands in linear layers and batched
 * matmuls, the flash attention's per-thread K/V scratch, the convolutions' column chunks or
 * oneDNN's blocked copies). Padding for what the
 * bounds do not model (allocator rounding, small tables) is added once, in MEMORY_SLACK.
 * tests/integration/test_memory_admission.c measures a daemon's peak anonymous memory against them.
 *
 * Weights are not counted: they are views into mapped files or copies the VRAM manager accounts
 * for. On a GPU backend the activations live on the device and a host copy of the inputs and
 * outputs remains; counting every byte against both host and device over-counts, never under.
 */
#ifndef DS_MODELS_MEMORY_ESTIMATE_H
#define DS_MODELS_MEMORY_ESTIMATE_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/error.h"
#include "models/model_loader.h"
#include "models/model_step.h"
#include "models/wan_video_vae.h"

typedef struct ds_memory_need {
    /* Held from acceptance to the reply: inputs copied out of the request, the pipeline's state
     * between units, the outputs and their encoding. */
    uint64_t held;
    /* Allocated while one unit (a step, a denoising step, the decode) runs and freed after it;
     * units of different jobs never run at once (one worker). */
    uint64_t peak;
} ds_memory_need;

/* One input of a step as the request declares it. */
typedef struct ds_memory_input {
    const char *name;
    ds_dtype dtype;
    int ndim;
    const int64_t *shape;
} ds_memory_input;

/* What a step's bound (ds_step_memory_fn) reads: the model, the step's name, the request's
 * inputs and the compute threads. */
typedef struct ds_memory_step_args {
    const ds_loaded_model *model;
    const char *step;
    const ds_memory_input *inputs;
    size_t input_count;
    int threads;
} ds_memory_step_args;

/* The input called `name`, or NULL. */
const ds_memory_input *ds_memory_step_input(const ds_memory_step_args *a, const char *name);

/* The activations of one Qwen-Image DiT forward: latents [batch, 16, lat_h, lat_w] in `dtype`,
 * a prompt of text_len tokens, `threads` compute threads; with a Blockwise ControlNet of
 * `cn_channels` conditioning channels (0: none). Saturates at UINT64_MAX. */
uint64_t ds_memory_dit_forward(int64_t batch, int64_t lat_h, int64_t lat_w, int64_t text_len,
                               ds_dtype dtype, int threads, int64_t cn_channels);

/* The activations of one Qwen-Image text-encoder forward over `tokens` tokens. */
uint64_t ds_memory_text_encoder(int64_t batch, int64_t tokens, ds_dtype dtype, int threads);

/* The activations of a Qwen-Image VAE decode of latents [batch, z, lat_h, lat_w] (decode 1) or
 * encode of an image [batch, 3, 8 lat_h, 8 lat_w] (decode 0), with the widths of `vae`'s
 * convolutions at each resolution read from its parameters. INVALID_ARGUMENT when the model's
 * parameters do not look like that VAE. */
int ds_memory_vae(const ds_loaded_model *vae, int decode, int64_t batch, int64_t lat_h,
                  int64_t lat_w, ds_dtype dtype, int threads, uint64_t *out, ds_error *err);

/* The activations of a Wan text encoder (UMT5) forward over [batch, tokens] ids in `dtype`
 * (DS_DTYPE_INVALID: either compute dtype, f32 or bf16, the larger bound), at the widths of
 * `te`'s parameters; *hidden_bytes = its output. INVALID_ARGUMENT when the parameters do not
 * look like a WanTextEncoder's. */
int ds_memory_wan_text_encoder(const ds_loaded_model *te, int64_t batch, int64_t tokens,
                               ds_dtype dtype, uint64_t *peak, uint64_t *hidden_bytes,
                               ds_error *err);

/* The activations of a Wan VAE (WanVideoVAE or WanVideoVAE38) decode of latents [batch, z,
 * frames, height, width] (decode 1) or encode of a video [batch, 3, frames, height, width]
 * (decode 0) in `dtype`, untiled or in `tiling`'s tiles, with the widths of every convolution
 * read from `vae`'s parameters; *out_bytes = its output. INVALID_ARGUMENT when the parameters
 * do not look like a Wan VAE's. */
int ds_memory_wan_vae(const ds_loaded_model *vae, int decode, int64_t batch, int64_t frames,
                      int64_t height, int64_t width, const ds_wan_video_vae_tiling *tiling,
                      ds_dtype dtype, int threads, uint64_t *peak, uint64_t *out_bytes,
                      ds_error *err);

/* A RunStep of `step` (the class's, or one a pipeline adds to it) on `model` with these inputs
 * (shapes as the request gives them; the step itself checks them later): held = the inputs'
 * and outputs' bytes (twice for outputs, which are encoded into the reply), peak = the step's
 * activations, from the step's own bound. A step without one is UNIMPLEMENTED naming it: the
 * daemon refuses what it cannot bound. */
int ds_memory_step(const ds_loaded_model *model, const ds_model_step *step,
                   const ds_memory_input *inputs, size_t input_count, int threads,
                   ds_memory_need *out, ds_error *err);

/* The bounds of this build's steps (ds_model_step.memory): the Qwen-Image DiT's and the Wan
 * DiT's "forward", the Qwen-Image VAE's "decode" and "encode", the Qwen-Image text encoder's
 * "forward" and the "encode_prompt" the Qwen-Image pipeline adds to it, the Wan text encoder's
 * "forward", the Wan VAEs' "decode" and "encode". */
ds_step_memory_fn ds_memory_qwen_image_dit_forward, ds_memory_wan_video_dit_forward,
    ds_memory_qwen_image_vae, ds_memory_qwen_image_text_encoder,
    ds_memory_wan_video_text_encoder, ds_memory_wan_video_vae;

/* What a Qwen-Image pipeline run needs: an output of height x width (already rounded to 16),
 * `dtype`, a prompt and negative prompt of these byte lengths (a token is at least one byte),
 * cfg (negative pass) on or off, with an input image (image-to-image: a VAE encode) and/or a
 * ControlNet image, `inline_bytes` of request tensors copied out of the frame. */
typedef struct ds_memory_pipeline_args {
    const ds_loaded_model *vae;
    int64_t height, width;
    ds_dtype dtype;
    size_t prompt_bytes, negative_prompt_bytes;
    int cfg;
    int input_image;
    int controlnet_image;
    int64_t controlnet_channels; /* the ControlNet's conditioning channels, 0 without */
    uint64_t inline_bytes;
    int threads;
} ds_memory_pipeline_args;

int ds_memory_qwen_image_pipeline(const ds_memory_pipeline_args *args, ds_memory_need *out,
                                  ds_error *err);

#endif
