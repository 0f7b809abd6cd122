/* The Qwen-Image text encoder's forward pass (facts §5.3, §8): the text path of
 * diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder (transformers'
 * Qwen2_5_VLModel), as the "forward" step of that class and as a plain C entry point. The
 * pipeline adds the prompt embedder as the class's "encode_prompt" step (pipelines/qwen_image.h). */
#ifndef DS_MODELS_QWEN_IMAGE_TEXT_ENCODER_H
#define DS_MODELS_QWEN_IMAGE_TEXT_ENCODER_H

#include "core/error.h"
#include "kernels/backend.h"
#include "models/model_loader.h"
#include "models/model_step.h"

/* hidden_out = text_encoder(input_ids, attention_mask, output_hidden_states=True)[-1]: the
 * hidden states after the final RMSNorm, as encode_prompt takes them.
 *
 * All tensors are host tensors (data in host memory, borrowed):
 *   input_ids      [B, S] i64 or i32, each in 0..152063
 *   attention_mask NULL, or [B, S] i64 / i32 / u8 / bool: keys where it is 0 are masked for
 *                  every query (all ones, or NULL: no mask). Positions are 0..S-1 whatever
 *                  the mask, as upstream's text-only path computes them; with right padding
 *                  (the tokenizer's) they equal cumsum(mask) - 1 on every valid token.
 *   hidden_out     [B, S, 3584] f32 or bf16: the caller's memory, written; its dtype is the
 *                  compute dtype (upstream's torch_dtype)
 * Runs the decoder layers the loaded tree has (28 for the real model) on ctx->backend (layer
 * weights of a non-CPU backend are uploaded layer by layer; the token embedding is gathered on
 * the host), polls ctx->cancelled between layers (CANCELLED) and reports ("forward", layer,
 * layers) progress. INVALID_ARGUMENT names the tensor and what was expected, or the first id
 * outside the vocabulary. The vision tower and lm_head are not used. */
int ds_qwen_image_text_encoder_forward(const ds_loaded_model *m, const ds_step_context *ctx,
                                       const ds_tensor *input_ids,
                                       const ds_tensor *attention_mask, ds_tensor *hidden_out,
                                       ds_error *err);

/* The compute dtype a step of the class runs in: parameter "dtype" (float32 or bfloat16;
 * INVALID_ARGUMENT naming `step` otherwise), else the stored token embedding's when that is f32
 * (a float32 checkpoint), else bf16 (upstream's pipeline dtype). */
int ds_qwen_image_text_encoder_step_dtype(const ds_loaded_model *m, const ds_step_io *in,
                                          const char *step, ds_dtype *out, ds_error *err);

#endif
