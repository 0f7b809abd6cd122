/* diffsynth/pipelines/qwen_image.py: QwenImagePipeline's text-to-image (and image-to-image)
 * sequence (facts §5.2) over loaded models, as a resumable job.
 *
 * The pipeline runs one unit of work per ds_qwen_image_pipeline_advance call: unit 0 encodes
 * (the prompt, the negative prompt when cfg_scale != 1, the input and ControlNet images), units
 * 1..steps are the denoising steps (one CFG pair of DiT calls and a scheduler step each), and the
 * last unit decodes the latents with the VAE and converts them to RGB8 as upstream's
 * vae_output_to_image does. Between units nothing runs and nothing is borrowed from the caller
 * but the models, so a scheduler may interleave several pipelines at step boundaries.
 *
 * Numbers follow upstream: noise from PyTorch's CPU generator for the seed, drawn in the compute
 * dtype (core/torch_generator.h); FlowMatch "Qwen-Image" sigmas with dynamic shift from the
 * un-rounded size (diffusion/flow_match.h); the DiT timestep rounded to the compute dtype; the CFG
 * combination and the scheduler step in the compute dtype (diffusion/base_pipeline.h).
 *
 * The daemon reaches it through its table entry (pipelines/pipeline.h, listed in
 * pipelines/registry.c), which declares the roles, the parameters with their limits and
 * defaults, the input and output tensors, and adds the "encode_prompt" step to the text
 * encoder's class.
 */
#ifndef DS_PIPELINES_QWEN_IMAGE_H
#define DS_PIPELINES_QWEN_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "kernels/backend.h"
#include "models/model_loader.h"
#include "models/model_step.h"

/* The models a Qwen-Image pipeline runs, all borrowed for the pipeline's lifetime. */
typedef struct ds_qwen_image_models {
    const ds_loaded_model *text_encoder; /* qwen_image_text_encoder */
    const ds_loaded_model *dit;          /* qwen_image_dit */
    const ds_loaded_model *vae;          /* qwen_image_vae (3 image channels) */
    const ds_loaded_model *controlnet;   /* NULL, or qwen_image_blockwise_controlnet */
} ds_qwen_image_models;

typedef struct ds_qwen_image_params {
    const char *prompt;          /* UTF-8, may be "" */
    const char *negative_prompt; /* NULL = "" (upstream's default) */
    const char *tokenizer;       /* a tokenizer folder, NULL = beside the text encoder */
    uint64_t seed;
    int steps;                   /* num_inference_steps, 1..1000; default 30 */
    double cfg_scale;            /* default 4.0; 1 skips the negative pass */
    int height, width;           /* 16..8192 each; default 1328; rounded up to multiples of 16 */
    ds_dtype dtype;              /* compute dtype: BF16 (upstream's default) or F32 */
    double denoising_strength;   /* in (0, 1]; default 1; below 1 needs input_image */
    /* NULL, or [H, W, 3] u8 RGB at the (rounded) output size: image-to-image. Borrowed until
     * the first advance returns. */
    const ds_tensor *input_image;
    /* NULL, or [1, 16, H/8, W/8] in the compute dtype: used instead of the seeded noise.
     * Borrowed until the first advance returns. */
    const ds_tensor *initial_noise;
    /* NULL, or [H, W, 3] u8 RGB: Blockwise ControlNet conditioning (needs models.controlnet).
     * Borrowed until the first advance returns. */
    const ds_tensor *controlnet_image;
    double controlnet_scale;     /* default 1.0 */
} ds_qwen_image_params;

/* Upstream's __call__ defaults (prompt "", seed 0, steps 30, cfg 4, 1328 x 1328, bf16). */
void ds_qwen_image_params_default(ds_qwen_image_params *params);

typedef struct ds_qwen_image_pipeline ds_qwen_image_pipeline;

/* Checks the models (each of the right class, the VAE with 3 image channels, widths that fit
 * each other) and the parameters, and sets up the schedule. INVALID_ARGUMENT names the
 * parameter or model at fault and what was expected. Nothing is computed yet. */
int ds_qwen_image_pipeline_new(const ds_qwen_image_models *models,
                               const ds_qwen_image_params *params,
                               ds_qwen_image_pipeline **out, ds_error *err);

/* Runs the next unit on ctx->backend (through ctx->vram when set). Returns 1 when units remain,
 * 0 after the last one, < 0 on error (CANCELLED when ctx->cancelled said so). Progress goes to
 * ctx->progress as ("encode" | "denoise" | "decode", done, total); "denoise" counts steps. After
 * an error the pipeline can only be freed. */
int ds_qwen_image_pipeline_advance(ds_qwen_image_pipeline *p, const ds_step_context *ctx,
                                   ds_error *err);

/* Units run so far and in all (steps + 2). */
void ds_qwen_image_pipeline_position(const ds_qwen_image_pipeline *p, uint64_t *done,
                                     uint64_t *total);

/* The seed, step count and size (after rounding) the pipeline runs with. */
uint64_t ds_qwen_image_pipeline_seed(const ds_qwen_image_pipeline *p);
int ds_qwen_image_pipeline_steps(const ds_qwen_image_pipeline *p);
void ds_qwen_image_pipeline_size(const ds_qwen_image_pipeline *p, int *height, int *width);

/* Seconds spent in each phase so far. */
void ds_qwen_image_pipeline_times(const ds_qwen_image_pipeline *p, double *encode_s,
                                  double *denoise_s, double *decode_s);

/* After the last unit: the final latents [1, 16, H/8, W/8] in the compute dtype and the image
 * [H, W, 3] u8, host tensors owned by the pipeline. NULL before. */
const ds_tensor *ds_qwen_image_pipeline_latents(const ds_qwen_image_pipeline *p);
const ds_tensor *ds_qwen_image_pipeline_image(const ds_qwen_image_pipeline *p);

void ds_qwen_image_pipeline_free(ds_qwen_image_pipeline *p);

/* QwenImageUnit_PromptEmbedder for a text prompt (facts §5.3), with the text encoder `m`: puts
 * `prompt` (may be empty) in upstream's system/user template, tokenizes it
 * (tokenizers/qwen_tokenizer.h) with the tokenizer of folder `tokenizer` (NULL: the folder
 * `tokenizer` beside the model's folder, as Qwen/Qwen-Image lays out text_encoder/ and
 * tokenizer/; a client-named folder passes ctx->check_path), runs the encoder's forward in
 * `dtype` (f32 or bf16), drops the template's first 34 tokens and adds to `out` prompt_emb
 * [1, L, 3584] in `dtype` and prompt_emb_mask [1, L] i64 (all ones). More than 4096 + 34
 * templated tokens is INVALID_ARGUMENT (upstream would truncate); from 1024 it logs upstream's
 * warning. A missing tokenizer folder is NOT_FOUND naming it. Each tokenizer folder is loaded
 * once and kept for the process (several steps share it). */
int ds_qwen_image_encode_prompt(const ds_loaded_model *m, const ds_step_context *ctx,
                                const char *prompt, const char *tokenizer, ds_dtype dtype,
                                ds_step_io *out, ds_error *err);

#endif
