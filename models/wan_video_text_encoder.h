/* Wan's text encoder: diffsynth.models.wan_video_text_encoder.WanTextEncoder, the UMT5-XXL
 * encoder, as the "forward" step of that class and as a plain C entry point. The prompt logic
 * (clean, tokenize, zero past the prompt) is the pipeline's (pipelines/wan_video.h, which adds
 * the "encode_prompt" step to this class). */
#ifndef DS_MODELS_WAN_VIDEO_TEXT_ENCODER_H
#define DS_MODELS_WAN_VIDEO_TEXT_ENCODER_H

#include <stdint.h>

#include "core/error.h"
#include "kernels/backend.h"
#include "models/model_loader.h"
#include "models/model_step.h"

/* hidden_out = WanTextEncoder(ids, mask): the hidden states after the final T5 layer norm.
 *
 * All tensors are host tensors (data in host memory, borrowed):
 *   input_ids      [B, S] i64 or i32, each a row of the token embedding
 *   attention_mask NULL, or [B, S] i64 / i32 / u8 / bool: keys where it is 0 are masked for
 *                  every query (upstream's masked_fill of the attention bias)
 *   hidden_out     [B, S, dim] f32 or bf16 (dim 4096 for UMT5-XXL): the caller's memory,
 *                  written; its dtype is the compute dtype
 * Runs the blocks the loaded tree has (24 for the real model) on ctx->backend, polls
 * ctx->cancelled between blocks (CANCELLED) and reports ("forward", block, blocks) progress.
 * INVALID_ARGUMENT names the tensor and what was expected, or the first id outside the
 * vocabulary. */
int ds_wan_text_encoder_forward(const ds_loaded_model *m, const ds_step_context *ctx,
                                const ds_tensor *input_ids, const ds_tensor *attention_mask,
                                ds_tensor *hidden_out, ds_error *err);

/* The model width `dim` of a loaded tree (4096 for UMT5-XXL); 0 when the tree has no token
 * embedding or block. */
int64_t ds_wan_text_encoder_dim(const ds_loaded_model *m);

/* T5RelativeEmbedding._relative_position_bucket (bidirectional, 32 buckets, max_dist 128) of
 * the relative position key - query. */
int32_t ds_wan_text_encoder_relative_bucket(int64_t relative_position);

/* The compute dtype of a step: parameter "dtype" (float32 or bfloat16; INVALID_ARGUMENT naming
 * `step` otherwise), else the stored token embedding's when that is f32, else bf16 (upstream's
 * pipeline dtype). */
int ds_wan_text_encoder_step_dtype(const ds_loaded_model *m, const ds_step_io *in,
                                   const char *step, ds_dtype *out, ds_error *err);

#endif
