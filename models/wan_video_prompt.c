/* diffsynth/pipelines/wan_video.py WanVideoUnit_PromptEmbedder.encode_prompt:
 *     ids, mask = pipe.tokenizer(prompt, return_mask=True, add_special_tokens=True)
 *     seq_lens = mask.gt(0).sum(dim=1)
 *     prompt_emb = pipe.text_encoder(ids, mask)
 *     prompt_emb[:, v:] = 0
 * with upstream's HuggingfaceTokenizer(seq_len=512, clean='whitespace'). */
#include "models/wan_video_prompt.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "models/wan_video_text_encoder.h"
#include "tokenizers/wan_tokenizer.h"

/* Where Wan-AI/Wan2.1-T2V-1.3B (and the 14B repositories) keep the tokenizer, beside
 * models_t5_umt5-xxl-enc-bf16.pth; upstream's from_pretrained names the same folder. */
#define TOKENIZER_SUBDIR "google/umt5-xxl"

/* The tokenizer folder: the "tokenizer" parameter, checked against the model roots when the
 * caller asks, else google/umt5-xxl/ beside the model's first file. */
static int tokenizer_dir(const ds_loaded_model *m, const ds_step_context *ctx,
                         const char *param, char *dir, size_t cap, const char **origin,
                         ds_error *err)
{
    if (param) {
        *origin = "the \"tokenizer\" parameter";
        if (!param[0])
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "encode_prompt: parameter \"tokenizer\" is empty");
        if (snprintf(dir, cap, "%s", param) >= (int)cap)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "encode_prompt: parameter \"tokenizer\" is longer than %zu bytes",
                                cap - 1);
        if (ctx->check_path) {
            int rc = ctx->check_path(ctx->user, dir, err);
            if (rc != DS_OK) {
                ds_error_prefix(err, "encode_prompt: parameter \"tokenizer\": ");
                return rc;
            }
        }
        return DS_OK;
    }
    *origin = "beside the model file, as upstream lays out Wan-AI/Wan2.1-T2V-1.3B; or give the "
              "\"tokenizer\" parameter";
    if (!m->files || m->files->count == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "encode_prompt: the model has no files to find the tokenizer folder "
                            "beside; give the \"tokenizer\" parameter");
    char file[PATH_MAX];
    const char *path = m->files->files[0].path;
    if (!realpath(path, file))
        return ds_error_set(err, DS_ERR_NOT_FOUND,
                            "encode_prompt: cannot resolve the model file %s to find the "
                            "tokenizer folder beside it: %s",
                            path, strerror(errno));
    char *slash = strrchr(file, '/');
    if (slash)
        *slash = '\0';
    if (snprintf(dir, cap, "%s/" TOKENIZER_SUBDIR, slash ? file : ".") >= (int)cap)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "encode_prompt: the tokenizer folder beside %s is too long a path",
                            path);
    return DS_OK;
}

int ds_wan_encode_prompt(const ds_loaded_model *text_encoder, const ds_step_context *ctx,
                         const char *prompt, const char *tokenizer, ds_dtype dtype,
                         ds_step_io *out, ds_error *err)
{
    enum { L = DS_WAN_TOKENIZER_SEQ_LEN };
    int64_t dim = ds_wan_text_encoder_dim(text_encoder);
    char dir[PATH_MAX];
    const char *origin = "";
    ds_wan_tokenizer *tok = NULL;
    int32_t ids[L], mask[L];
    size_t length = 0;
    int rc;
    if (!prompt)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "encode_prompt: parameter \"prompt\" is required");
    if (dim == 0)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "encode_prompt: the text encoder's tree has no token embedding or "
                            "block");
    if (dtype != DS_F32 && dtype != DS_BF16)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "encode_prompt: compute dtype %s, expected f32 or bf16",
                            ds_dtype_name(dtype));
    if ((rc = tokenizer_dir(text_encoder, ctx, tokenizer, dir, sizeof dir, &origin, err)) !=
        DS_OK)
        return rc;
    if ((rc = ds_wan_tokenizer_load(dir, &tok, err)) != DS_OK) {
        ds_error_prefix(err, "encode_prompt: tokenizer folder %s (%s): ", dir, origin);
        return rc;
    }
    rc = ds_wan_tokenizer_encode_padded(tok, prompt, strlen(prompt), L, ids, mask, &length, err);
    ds_wan_tokenizer_free(tok);
    if (rc != DS_OK) {
        ds_error_prefix(err, "encode_prompt: parameter \"prompt\": ");
        return rc;
    }

    ds_backend *cpu = ctx->backend;
    if (!cpu->host_memory && (rc = ds_cpu_fallback_backend(&cpu, err)) != DS_OK)
        return rc;
    ds_tensor id_t = ds_tensor_wrap(cpu, DS_I32, 2, (const int64_t[]){1, L}, ids);
    ds_tensor mask_t = ds_tensor_wrap(cpu, DS_I32, 2, (const int64_t[]){1, L}, mask);
    ds_tensor *context;
    if ((rc = ds_step_io_new_tensor(out, cpu, "context", dtype, 3, (const int64_t[]){1, L, dim},
                                    &context, err)) != DS_OK ||
        (rc = ds_wan_text_encoder_forward(text_encoder, ctx, &id_t, &mask_t, context, err)) !=
            DS_OK)
        return rc;
    size_t row = (size_t)dim * ds_dtype_size(dtype);
    memset((char *)context->data + length * row, 0, (L - length) * row);
    return DS_OK;
}

int ds_wan_encode_prompt_step(const ds_loaded_model *m, const ds_step_context *ctx,
                              const ds_step_io *in, ds_step_io *out, ds_error *err)
{
    static const char *const known[] = {"prompt", "tokenizer", "dtype", NULL};
    ds_dtype dtype = DS_BF16;
    int rc;
    if ((rc = ds_step_io_check_names(in, "encode_prompt", known, err)) != DS_OK)
        return rc;
    const ds_step_param *prompt = ds_step_io_param(in, "prompt");
    if (!prompt)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "encode_prompt: parameter \"prompt\" is required (the text to "
                            "encode; it may be empty)");
    if (in->tensor_count > 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "encode_prompt: takes no tensors, got \"%s\"", in->tensors[0].name);
    if ((rc = ds_wan_text_encoder_step_dtype(m, in, "encode_prompt", &dtype, err)) != DS_OK)
        return rc;
    const ds_step_param *tokenizer = ds_step_io_param(in, "tokenizer");
    return ds_wan_encode_prompt(m, ctx, prompt->text, tokenizer ? tokenizer->text : NULL, dtype,
                                out, err);
}
