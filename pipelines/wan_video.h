/* diffsynth/pipelines/wan_video.py: the Wan pipeline's table entry (ds__wan_video_pipeline,
 * listed in core/families.def) and its prompt embedder (WanVideoUnit_PromptEmbedder
 * .encode_prompt), which the pipeline also adds to the text encoder's class as the
 * "encode_prompt" step: the prompt cleaned and tokenized to 512 ids with its mask
 * (tokenizers/wan_tokenizer.h), the text encoder run with the mask, and the hidden states past
 * the prompt's tokens zeroed.
 */
#ifndef DS_PIPELINES_WAN_VIDEO_H
#define DS_PIPELINES_WAN_VIDEO_H

#include "core/error.h"
#include "kernels/backend.h"
#include "models/model_loader.h"
#include "models/model_step.h"

/* Adds "context" [1, 512, dim] (dim 4096 for UMT5-XXL) in `dtype` (f32 or bf16) to `out`.
 * `tokenizer` is the folder holding spiece.model; NULL: upstream's layout, google/umt5-xxl/
 * beside the text encoder's file (Wan-AI/Wan2.1-T2V-1.3B); a client-named folder passes
 * ctx->check_path. NOT_FOUND names the folder looked in; INVALID_ARGUMENT for a prompt that is
 * not UTF-8. Each tokenizer folder is loaded once and kept for the process. */
int ds_wan_encode_prompt(const ds_loaded_model *text_encoder, const ds_step_context *ctx,
                         const char *prompt, const char *tokenizer, ds_dtype dtype,
                         ds_step_io *out, ds_error *err);

#endif
