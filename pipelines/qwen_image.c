/* diffsynth/pipelines/qwen_image.py: QwenImagePipeline.__call__ for text-to-image and
 * image-to-image, one unit of work per advance (see the header). */
#include "pipelines/qwen_image.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "tokenizers/qwen_tokenizer.h"
#include "core/torch_generator.h"
#include "kernels/ops.h"
#include "diffusion/base_pipeline.h"
#include "diffusion/flow_match.h"
#include "models/memory_estimate.h"
#include "models/model_class.h"
#include "models/qwen_image_controlnet.h"
#include "models/qwen_image_dit.h"
#include "models/qwen_image_text_encoder.h"
#include "models/qwen_image_vae.h"
#include "pipelines/pipeline.h"
#include "pipelines/prompt_embedder.h"
#include "pipelines/unit_runner.h"

#define TEXT_ENCODER_CLASS "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder"
#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"
#define VAE_CLASS "diffsynth.models.qwen_image_vae.QwenImageVAE"
#define SHAPE(...) (const int64_t[]){__VA_ARGS__}

#define LATENT_CHANNELS 16
#define TEXT_HIDDEN 3584 /* the text encoder's hidden size: prompt_emb's last dimension */
#define SIZE_MULTIPLE 16 /* height/width division factors (QwenImagePipeline.__init__) */

typedef enum unit_kind { UNIT_ENCODE, UNIT_DENOISE, UNIT_DECODE } unit_kind;

struct ds_qwen_image_pipeline {
    ds_qwen_image_models models;
    ds__denoise_state d;     /* latents [1, 16, lh, lw]; prompt_emb, prompt_emb_mask per side */
    uint64_t seed;
    int steps;
    double denoising_strength, controlnet_scale;
    int height, width;       /* rounded up to multiples of 16 */
    int64_t lh, lw;          /* latent height and width: height / 8, width / 8 */

    /* Taken from the caller by the encode unit (borrowed until then). */
    const ds_tensor *input_image, *initial_noise, *controlnet_image;

    void *control_latents;   /* NULL, or the ControlNet conditioning [1, 16, lh, lw] */

    ds_tensor latents_out;   /* set after decoding: views of latents / rgb */
    ds_tensor image_out;
    uint8_t *rgb;            /* [height, width, 3] */

    ds__unit_runner units;
    ds_backend *cpu; /* the CPU fallback backend: the host buffers the units wrap as tensors */
};

void ds_qwen_image_params_default(ds_qwen_image_params *params)
{
    memset(params, 0, sizeof *params);
    params->prompt = "";
    params->steps = 30;
    params->cfg_scale = 4.0;
    params->height = 1328;
    params->width = 1328;
    params->dtype = DS_BF16;
    params->denoising_strength = 1.0;
    params->controlnet_scale = 1.0;
}

static int check_model(const ds_loaded_model *m, const char *role, const char *cls,
                       ds_error *err)
{
    return ds__unit_check_model(m, "qwen_image", role, cls, err);
}

static int check_models(const ds_qwen_image_models *models, ds_error *err)
{
    int rc;
    if ((rc = check_model(models->text_encoder, "text_encoder", TEXT_ENCODER_CLASS, err)) !=
            DS_OK ||
        (rc = check_model(models->dit, "dit", DIT_CLASS, err)) != DS_OK ||
        (rc = check_model(models->vae, "vae", VAE_CLASS, err)) != DS_OK)
        return rc;
    /* The 4-channel VAE (Qwen-Image-Layered's RGBA) decodes images this pipeline cannot
     * convert: upstream's QwenImagePipeline loads the 3-channel one. */
    const ds_sd_entry *conv_out = ds_state_dict_find(&models->vae->params,
                                                     "decoder.conv_out.weight");
    if (!conv_out || conv_out->tensor.shape[0] != 3)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "qwen_image: the vae model decodes %lld image channels, expected 3 "
                            "(the RGBA VAE belongs to Qwen-Image-Layered)",
                            conv_out ? (long long)conv_out->tensor.shape[0] : -1LL);
    if (models->controlnet) {
        ds_qwen_image_controlnet_shape shape;
        if ((rc = ds_qwen_image_controlnet_shape_of(models->controlnet, &shape, err)) != DS_OK)
            return ds_error_prefix(err, "qwen_image: the controlnet model: ");
        if (shape.in_features != 4 * LATENT_CHANNELS)
            return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                                "qwen_image: the controlnet takes %lld conditioning features: "
                                "the inpainting ControlNet needs an inpaint mask, which this "
                                "pipeline does not take; use a 16-channel (64-feature) one",
                                (long long)shape.in_features);
    }
    return DS_OK;
}

/* An [H, W, 3] u8 image at the pipeline's size. */
static int check_rgb(const ds_tensor *t, const char *name, int height, int width, ds_error *err)
{
    if (t->dtype != DS_U8 || t->ndim != 3 || t->shape[2] != 3 || t->shape[0] != height ||
        t->shape[1] != width) {
        char got[96];
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "qwen_image: %s is %s, expected [%d, %d, 3] u8 (RGB at the output "
                            "size, height x width after rounding up to multiples of 16)",
                            name, ds_tensor_describe(t, got, sizeof got), height, width);
    }
    return DS_OK;
}

static int check_params(const ds_qwen_image_params *p, const ds_qwen_image_models *models,
                        ds_error *err)
{
    if (!p->prompt)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "qwen_image: prompt is required (it may be empty)");
    if (p->steps < 1 || p->steps > DS_PIPELINE_STEPS_MAX)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "qwen_image: steps is %d, expected 1..%d", p->steps,
                            DS_PIPELINE_STEPS_MAX);
    if (!isfinite(p->cfg_scale))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "qwen_image: cfg_scale must be a finite number");
    if (p->height < DS_PIPELINE_SIZE_MIN || p->height > DS_PIPELINE_SIZE_MAX ||
        p->width < DS_PIPELINE_SIZE_MIN || p->width > DS_PIPELINE_SIZE_MAX)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "qwen_image: the size is %d x %d (height x width), expected each in "
                            "%d..%d",
                            p->height, p->width, DS_PIPELINE_SIZE_MIN, DS_PIPELINE_SIZE_MAX);
    if (p->dtype != DS_BF16 && p->dtype != DS_F32)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "qwen_image: the compute dtype is %s, expected bf16 or f32",
                            ds_dtype_name(p->dtype));
    if (!(p->denoising_strength > 0.0 && p->denoising_strength <= 1.0))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "qwen_image: denoising_strength is %g, expected in (0, 1]",
                            p->denoising_strength);
    if (p->denoising_strength < 1.0 && !p->input_image)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "qwen_image: denoising_strength %g below 1 needs an input_image "
                            "(image-to-image); text-to-image starts from pure noise",
                            p->denoising_strength);
    if (!isfinite(p->controlnet_scale))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "qwen_image: controlnet_scale must be a finite number");
    if (p->controlnet_image && !models->controlnet)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "qwen_image: a controlnet_image needs a controlnet model");
    if (models->controlnet && !p->controlnet_image)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "qwen_image: a controlnet model needs a controlnet_image to "
                            "condition on");
    return DS_OK;
}

static int round_up(int v) { return (v + SIZE_MULTIPLE - 1) / SIZE_MULTIPLE * SIZE_MULTIPLE; }

int ds_qwen_image_pipeline_new(const ds_qwen_image_models *models,
                               const ds_qwen_image_params *params,
                               ds_qwen_image_pipeline **out, ds_error *err)
{
    int rc;
    *out = NULL;
    if ((rc = check_models(models, err)) != DS_OK || (rc = check_params(params, models, err)) != DS_OK)
        return rc;
    int height = round_up(params->height), width = round_up(params->width);
    if (params->input_image &&
        (rc = check_rgb(params->input_image, "input_image", height, width, err)) != DS_OK)
        return rc;
    if (params->controlnet_image &&
        (rc = check_rgb(params->controlnet_image, "controlnet_image", height, width, err)) !=
            DS_OK)
        return rc;
    int64_t lh = height / 8, lw = width / 8;
    if (params->initial_noise) {
        const ds_tensor *n = params->initial_noise;
        if (n->dtype != params->dtype || n->ndim != 4 || n->shape[0] != 1 ||
            n->shape[1] != LATENT_CHANNELS || n->shape[2] != lh || n->shape[3] != lw) {
            char got[96];
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "qwen_image: initial_noise is %s, expected [1, 16, %lld, %lld] "
                                "%s (height / 8, width / 8, the compute dtype)",
                                ds_tensor_describe(n, got, sizeof got), (long long)lh,
                                (long long)lw, ds_dtype_name(params->dtype));
        }
    }

    ds_qwen_image_pipeline *p = calloc(1, sizeof *p);
    if (!p)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "qwen_image: out of memory");
    p->models = *models;
    if ((rc = ds_cpu_fallback_backend(&p->cpu, err)) != DS_OK)
        goto fail;
    p->seed = params->seed;
    p->steps = params->steps;
    p->denoising_strength = params->denoising_strength;
    p->controlnet_scale = params->controlnet_scale;
    p->height = height;
    p->width = width;
    p->lh = lh;
    p->lw = lw;
    p->input_image = params->input_image;
    p->initial_noise = params->initial_noise;
    p->controlnet_image = params->controlnet_image;
    if ((rc = ds__denoise_state_init(&p->d, "qwen_image", params->prompt,
                                     params->negative_prompt, params->tokenizer, params->dtype,
                                     params->cfg_scale,
                                     (size_t)LATENT_CHANNELS * (size_t)lh * (size_t)lw, err)) !=
        DS_OK)
        goto fail;
    /* set_timesteps runs before the ShapeChecker upstream, so the dynamic shift sees the size
     * as given, not rounded. */
    int64_t shift_len = (int64_t)(params->height / 16) * (int64_t)(params->width / 16);
    if ((rc = ds_flow_match_qwen_image(p->steps, p->denoising_strength, shift_len, NULL,
                                       &p->d.schedule, err)) != DS_OK) {
        ds_error_prefix(err, "qwen_image: ");
        goto fail;
    }
    p->units = (ds__unit_runner){.pipeline = "qwen_image", .steps = p->d.schedule.count};
    /* Upstream's terminal shift divides by 1 - the last sigma: with one step from pure noise
     * that is 0/0 and every latent becomes NaN. Refuse it rather than return a NaN image. */
    for (int i = 0; i < p->d.schedule.count; i++)
        if (!isfinite(p->d.schedule.sigmas[i])) {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "qwen_image: %d step%s at denoising_strength %g gives NaN sigmas "
                              "in upstream's Qwen-Image schedule (its terminal shift is 0/0 "
                              "there); use 2 or more steps",
                              p->steps, p->steps == 1 ? "" : "s", p->denoising_strength);
            goto fail;
        }
    *out = p;
    return DS_OK;
fail:
    ds_qwen_image_pipeline_free(p);
    return rc;
}

/* ---- QwenImageUnit_PromptEmbedder (facts §5.3) ---- */

/* QwenImageUnit_PromptEmbedder.encode_prompt's text-to-image template, split around the
 * prompt: upstream formats it with str.format, so braces in the prompt are plain text. */
#define TEMPLATE_HEAD                                                                             \
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "       \
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"           \
    "<|im_start|>user\n"
#define TEMPLATE_TAIL "<|im_end|>\n<|im_start|>assistant\n"

enum {
    DROP_IDX = 34,              /* the system prefix through "user\n", dropped from the output */
    MAX_TOKENS = 4096 + DROP_IDX, /* the tokenizer's max_length */
    WARN_TOKENS = 1024,         /* upstream warns from this many templated tokens */
};

DS__TOKENIZER_CACHE_DEFINE(tokenizers, ds_qwen_tokenizer, ds_qwen_tokenizer_load,
                           ds_qwen_tokenizer_free);

/* The prompt in upstream's template, tokenized; the length checks of encode_prompt. */
static int tokenize_prompt(const ds_qwen_tokenizer *tok, const char *prompt, int32_t **ids,
                           size_t *count, ds_error *err)
{
    size_t n = strlen(prompt);
    size_t len = strlen(TEMPLATE_HEAD) + n + strlen(TEMPLATE_TAIL);
    char *text = malloc(len + 1);
    if (!text)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "encode_prompt: out of memory for a %zu-byte prompt", n);
    snprintf(text, len + 1, "%s%s%s", TEMPLATE_HEAD, prompt, TEMPLATE_TAIL);
    int rc = ds_qwen_tokenizer_encode(tok, text, len, ids, count, err);
    free(text);
    if (rc != DS_OK) {
        ds_error_prefix(err, "encode_prompt: parameter \"prompt\": ");
        return rc;
    }
    /* Upstream truncates at max_length, cutting the template's end and then the prompt
     * silently; an error says so instead. */
    if (*count > MAX_TOKENS) {
        rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                          "encode_prompt: the prompt requires %zu tokens, over upstream's limit "
                          "of %d (the tokenizer's max_length %d less the template's %d-token "
                          "prefix; upstream would truncate it)",
                          *count - DROP_IDX, MAX_TOKENS - DROP_IDX, MAX_TOKENS, DROP_IDX);
        free(*ids);
        *ids = NULL;
        return rc;
    }
    if (*count <= DROP_IDX) {
        rc = ds_error_set(err, DS_ERR_INTERNAL,
                          "encode_prompt: the templated prompt is %zu tokens, not more than the "
                          "%d-token prefix",
                          *count, DROP_IDX);
        free(*ids);
        *ids = NULL;
        return rc;
    }
    if (*count >= WARN_TOKENS)
        ds_log_warn("Warning!!! QwenImage model was trained on prompts up to 512 tokens. Current "
                    "prompt requires %zu tokens, which may lead to unpredictable behavior.",
                    *count - DROP_IDX);
    return DS_OK;
}

/* QwenImageUnit_PromptEmbedder.process for a text-only prompt: the template, the encoder's
 * final-norm hidden states, the first 34 tokens dropped. With one prompt and no padding the
 * mask split and re-padding keep every remaining row, so prompt_emb_mask is all ones. */
int ds_qwen_image_encode_prompt(const ds_loaded_model *m, const ds_step_context *ctx,
                                const char *prompt, const char *tokenizer, ds_dtype dtype,
                                ds_step_io *out, ds_error *err)
{
    const void *tok = NULL;
    void *owned_tok = NULL;
    int32_t *ids = NULL;
    size_t count = 0;
    void *hidden_data = NULL;
    char dir[PATH_MAX];
    const char *origin = NULL;
    int rc;
    /* from_pretrained takes Qwen/Qwen-Image/tokenizer/ for the weights in
     * Qwen/Qwen-Image/text_encoder/: the folder beside the weights' folder. */
    if ((rc = ds__tokenizer_dir(m, ctx, tokenizer, 2, "tokenizer",
                                "beside the model files, as upstream lays out Qwen/Qwen-Image; "
                                "or give the \"tokenizer\" parameter",
                                dir, sizeof dir, &origin, err)) != DS_OK ||
        (rc = ds__tokenizer_cache_get(&tokenizers, dir, origin, &tok, &owned_tok, err)) !=
            DS_OK ||
        (rc = tokenize_prompt(tok, prompt, &ids, &count, err)) != DS_OK)
        goto done;

    ds_backend *cpu = ctx->backend;
    if (!cpu->host_memory && (rc = ds_cpu_fallback_backend(&cpu, err)) != DS_OK)
        goto done;
    int64_t S = (int64_t)count, L = S - DROP_IDX;
    size_t row = (size_t)TEXT_HIDDEN * ds_dtype_size(dtype);
    hidden_data = malloc((size_t)S * row);
    if (!hidden_data) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                          "encode_prompt: out of memory for [1, %lld, %d] hidden states",
                          (long long)S, TEXT_HIDDEN);
        goto done;
    }
    ds_tensor id_tensor = ds_tensor_wrap(cpu, DS_I32, 2, SHAPE(1, S), ids);
    ds_tensor hidden = ds_tensor_wrap(cpu, dtype, 3, SHAPE(1, S, TEXT_HIDDEN), hidden_data);
    ds_tensor *emb, *mask;
    /* A single unpadded prompt: the tokenizer's mask is all ones, the same as none. */
    if ((rc = ds_qwen_image_text_encoder_forward(m, ctx, &id_tensor, NULL, &hidden, err)) !=
            DS_OK ||
        (rc = ds_step_io_new_tensor(out, cpu, "prompt_emb", dtype, 3,
                                    SHAPE(1, L, TEXT_HIDDEN), &emb, err)) != DS_OK)
        goto done;
    memcpy(emb->data, (const char *)hidden_data + (size_t)DROP_IDX * row, (size_t)L * row);
    if ((rc = ds_step_io_new_tensor(out, cpu, "prompt_emb_mask", DS_I64, 2, SHAPE(1, L), &mask,
                                    err)) != DS_OK)
        goto done;
    for (int64_t i = 0; i < L; i++)
        ((int64_t *)mask->data)[i] = 1;

done:
    if (rc != DS_OK && strncmp(err->message, "encode_prompt", 13) != 0)
        ds_error_prefix(err, "encode_prompt: ");
    free(hidden_data);
    free(ids);
    ds_qwen_tokenizer_free(owned_tok);
    return rc;
}

static int encode_prompt_step(const ds_loaded_model *m, const ds_step_context *ctx,
                              const ds_step_io *in, ds_step_io *out, ds_error *err)
{
    return ds__encode_prompt_step(m, ctx, in, out, ds_qwen_image_text_encoder_step_dtype,
                                  ds_qwen_image_encode_prompt, err);
}

/* The step the pipeline adds to the text encoder's class, as upstream keeps the prompt
 * template in the pipeline. */
static const ds_pipeline_class_step class_steps[] = {
    {TEXT_ENCODER_CLASS,
     DS__ENCODE_PROMPT_STEP(encode_prompt_step, ds_memory_qwen_image_text_encoder,
                            "tokenizer/ beside the model's folder, as in Qwen/Qwen-Image",
                            "prompt_emb [1, L, 3584], prompt_emb_mask [1, L] i64: upstream's "
                            "text-to-image template, the first 34 tokens dropped")},
};

static ds_step_context inner_context(const ds_step_context *ctx)
{
    return ds__unit_inner_context(ctx);
}

static void report(const ds_step_context *ctx, const char *phase, uint64_t done, uint64_t total)
{
    ds__unit_report(ctx, phase, done, total);
}

static int cancelled(const ds_step_context *ctx, ds_error *err)
{
    return ds__unit_cancelled(ctx, "qwen_image", err);
}

/* QwenImageUnit_PromptEmbedder for one side. */
static int encode_prompt(ds_qwen_image_pipeline *p, const ds_step_context *ctx,
                         const char *prompt, ds_step_io *out, ds_error *err)
{
    ds_step_context inner = inner_context(ctx);
    return ds_qwen_image_encode_prompt(p->models.text_encoder, &inner, prompt, p->d.tokenizer,
                                       p->d.dtype == DS_F32 ? DS_F32 : DS_BF16, out, err);
}

/* preprocess_image then vae.encode: an RGB image's latents, [1, 16, lh, lw] in the compute
 * dtype, into `latents`. */
static int encode_image(ds_qwen_image_pipeline *p, const ds_step_context *ctx,
                        const ds_tensor *rgb, void *latents, ds_error *err)
{
    ds_backend *cpu = p->cpu;
    int rc;
    size_t esize = ds_dtype_size(p->d.dtype);
    void *pixels = malloc((size_t)3 * (size_t)p->height * (size_t)p->width * esize);
    if (!pixels)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "qwen_image: out of memory for a %d x %d image", p->height,
                            p->width);
    if ((rc = ds_preprocess_image(rgb->data, p->height, p->width, p->d.dtype, pixels, err)) ==
        DS_OK) {
        ds_tensor image = ds_tensor_wrap(cpu, p->d.dtype, 4, SHAPE(1, 3, p->height, p->width),
                                         pixels);
        ds_tensor z = ds_tensor_wrap(cpu, p->d.dtype, 4, SHAPE(1, LATENT_CHANNELS, p->lh, p->lw),
                                     latents);
        ds_step_context inner = inner_context(ctx);
        rc = ds_qwen_image_vae_encode(p->models.vae, &inner, &image, &z, err);
    }
    free(pixels);
    return rc;
}

/* Noise, the input image's latents, both prompts and the ControlNet image, in upstream's unit
 * order (NoiseInitializer, InputImageEmbedder, PromptEmbedder, BlockwiseControlNet). */
static int run_encode(ds_qwen_image_pipeline *p, const ds_step_context *ctx, ds_error *err)
{
    int rc;
    int parts = 1 + (p->d.cfg_scale != 1.0) + (p->input_image != NULL) +
                (p->controlnet_image != NULL);
    int done = 0;
    size_t bytes = p->d.latent_count * ds_dtype_size(p->d.dtype);
    report(ctx, "encode", 0, (uint64_t)parts);

    void *noise = p->initial_noise ? p->initial_noise->data : NULL;
    void *owned_noise = NULL;
    if (!noise) {
        ds_torch_generator gen;
        ds_torch_generator_seed(&gen, p->seed);
        if (!(owned_noise = malloc(bytes)))
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                                "qwen_image: out of memory for the noise");
        if ((rc = ds_torch_randn(&gen, p->d.dtype, owned_noise, p->d.latent_count, err)) != DS_OK)
            goto done;
        noise = owned_noise;
    }
    if (p->input_image) {
        /* latents = add_noise(vae.encode(image), noise, timesteps[0]) */
        void *input_latents = malloc(bytes);
        if (!input_latents) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                              "qwen_image: out of memory for the input image's latents");
            goto done;
        }
        rc = encode_image(p, ctx, p->input_image, input_latents, err);
        if (rc == DS_OK)
            rc = ds_flow_match_add_noise(&p->d.schedule, 0, p->d.dtype, input_latents, noise,
                                         p->d.latents, p->d.latent_count, err);
        free(input_latents);
        if (rc != DS_OK)
            goto done;
        report(ctx, "encode", (uint64_t)++done, (uint64_t)parts);
    } else {
        memcpy(p->d.latents, noise, bytes);
    }
    if ((rc = cancelled(ctx, err)) != DS_OK ||
        (rc = encode_prompt(p, ctx, p->d.prompt, &p->d.prompt_posi, err)) != DS_OK)
        goto done;
    report(ctx, "encode", (uint64_t)++done, (uint64_t)parts);
    if (p->d.cfg_scale != 1.0) {
        if ((rc = cancelled(ctx, err)) != DS_OK ||
            (rc = encode_prompt(p, ctx, p->d.negative_prompt, &p->d.prompt_nega, err)) != DS_OK)
            goto done;
        report(ctx, "encode", (uint64_t)++done, (uint64_t)parts);
    }
    if (p->controlnet_image) {
        if (!(p->control_latents = malloc(bytes))) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                              "qwen_image: out of memory for the ControlNet conditioning");
            goto done;
        }
        if ((rc = cancelled(ctx, err)) != DS_OK ||
            (rc = encode_image(p, ctx, p->controlnet_image, p->control_latents, err)) != DS_OK)
            goto done;
        report(ctx, "encode", (uint64_t)++done, (uint64_t)parts);
    }
    rc = DS_OK;
done:
    free(owned_noise);
    /* The caller's tensors are borrowed only until here. */
    p->input_image = p->initial_noise = p->controlnet_image = NULL;
    return rc;
}

/* One model_fn_qwen_image call for one CFG side. */
static int predict(void *run, const ds_step_context *ctx, const ds_step_io *side,
                   float timestep, void *pred, ds_error *err)
{
    ds_qwen_image_pipeline *p = run;
    ds_backend *cpu = p->cpu;
    const ds_tensor *emb = ds_step_io_tensor(side, "prompt_emb");
    const ds_tensor *mask = ds_step_io_tensor(side, "prompt_emb_mask");
    if (!emb || !mask)
        return ds_error_set(err, DS_ERR_INTERNAL,
                            "qwen_image: encode_prompt returned no prompt_emb/prompt_emb_mask");
    const int64_t *latent_shape = SHAPE(1, LATENT_CHANNELS, p->lh, p->lw);
    ds_tensor latents = ds_tensor_wrap(cpu, p->d.dtype, 4, latent_shape, p->d.latents);
    ds_tensor out = ds_tensor_wrap(cpu, p->d.dtype, 4, latent_shape, pred);
    ds_tensor t = ds_tensor_wrap(cpu, DS_F32, 1, SHAPE(1), &timestep);
    ds_step_context inner = inner_context(ctx);
    if (!p->control_latents)
        return ds_qwen_image_dit_forward(p->models.dit, &inner, &latents, emb, mask, &t, &out,
                                         err);
    ds_tensor cond = ds_tensor_wrap(cpu, p->d.dtype, 4, latent_shape, p->control_latents);
    ds_qwen_image_dit_controlnet cn = {
        .model = p->models.controlnet,
        .conditioning = &cond,
        .scale = (float)p->controlnet_scale,
    };
    return ds_qwen_image_dit_forward_controlnet(p->models.dit, &inner, &latents, emb, mask, &t,
                                                &cn, &out, err);
}

/* Denoising step `index`: CFG-guided noise prediction, then the scheduler step. */
static int run_denoise(ds_qwen_image_pipeline *p, const ds_step_context *ctx, int index,
                       ds_error *err)
{
    return ds__unit_cfg_denoise(&p->d, "qwen_image", predict, p, ctx, index,
                                p->d.schedule.timesteps[index], err);
}

/* vae.decode, then vae_output_to_image. */
static int run_decode(ds_qwen_image_pipeline *p, const ds_step_context *ctx, ds_error *err)
{
    ds_backend *cpu = p->cpu;
    int rc;
    report(ctx, "decode", 0, 1);
    size_t pixels = (size_t)p->height * (size_t)p->width;
    void *image = malloc(3 * pixels * ds_dtype_size(p->d.dtype));
    p->rgb = malloc(3 * pixels);
    if (!image || !p->rgb) {
        free(image);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "qwen_image: out of memory for a %d x %d image", p->height,
                            p->width);
    }
    const int64_t *latent_shape = SHAPE(1, LATENT_CHANNELS, p->lh, p->lw);
    ds_tensor latents = ds_tensor_wrap(cpu, p->d.dtype, 4, latent_shape, p->d.latents);
    ds_tensor decoded = ds_tensor_wrap(cpu, p->d.dtype, 4, SHAPE(1, 3, p->height, p->width),
                                       image);
    ds_step_context inner = inner_context(ctx);
    if ((rc = ds_qwen_image_vae_decode(p->models.vae, &inner, &latents, &decoded, err)) ==
        DS_OK)
        rc = ds_vae_output_to_image(&decoded, p->rgb, err);
    free(image);
    if (rc != DS_OK)
        return rc;
    p->latents_out = latents;
    p->image_out = ds_tensor_wrap(cpu, DS_U8, 3, SHAPE(p->height, p->width, 3), p->rgb);
    report(ctx, "decode", 1, 1);
    return DS_OK;
}

static int unit_encode(void *run, const ds_step_context *ctx, ds_error *err)
{
    return run_encode(run, ctx, err);
}

static int unit_denoise(void *run, const ds_step_context *ctx, int index, ds_error *err)
{
    return run_denoise(run, ctx, index, err);
}

static int unit_decode(void *run, const ds_step_context *ctx, ds_error *err)
{
    return run_decode(run, ctx, err);
}

static const ds__unit_ops unit_ops = {unit_encode, unit_denoise, unit_decode};

int ds_qwen_image_pipeline_advance(ds_qwen_image_pipeline *p, const ds_step_context *ctx,
                                   ds_error *err)
{
    return ds__unit_runner_advance(&p->units, &unit_ops, p, ctx, err);
}

void ds_qwen_image_pipeline_position(const ds_qwen_image_pipeline *p, uint64_t *done,
                                     uint64_t *total)
{
    ds__unit_runner_position(&p->units, done, total);
}

uint64_t ds_qwen_image_pipeline_seed(const ds_qwen_image_pipeline *p) { return p->seed; }

int ds_qwen_image_pipeline_steps(const ds_qwen_image_pipeline *p) { return p->d.schedule.count; }

void ds_qwen_image_pipeline_size(const ds_qwen_image_pipeline *p, int *height, int *width)
{
    *height = p->height;
    *width = p->width;
}

void ds_qwen_image_pipeline_times(const ds_qwen_image_pipeline *p, double *encode_s,
                                  double *denoise_s, double *decode_s)
{
    *encode_s = p->units.encode_s;
    *denoise_s = p->units.denoise_s;
    *decode_s = p->units.decode_s;
}

const ds_tensor *ds_qwen_image_pipeline_latents(const ds_qwen_image_pipeline *p)
{
    return p->latents_out.data ? &p->latents_out : NULL;
}

const ds_tensor *ds_qwen_image_pipeline_image(const ds_qwen_image_pipeline *p)
{
    return p->image_out.data ? &p->image_out : NULL;
}

void ds_qwen_image_pipeline_free(ds_qwen_image_pipeline *p)
{
    if (!p)
        return;
    ds__denoise_state_free(&p->d);
    free(p->control_latents);
    free(p->rgb);
    free(p);
}

/* ---- the generic operations (pipelines/pipeline.h) ---- */

enum { ROLE_TEXT_ENCODER, ROLE_DIT, ROLE_VAE, ROLE_CONTROLNET };
enum { PARAM_SEED, PARAM_STEPS, PARAM_CFG, PARAM_HEIGHT, PARAM_WIDTH, PARAM_STRENGTH,
       PARAM_CONTROLNET_SCALE };
enum { INPUT_IMAGE, INPUT_CONTROLNET, INPUT_NOISE };
enum { OUTPUT_PNG, OUTPUT_LATENTS };

/* The ControlNet conditioning's channels the estimate assumes: the inpainting variant's 17
 * (16 latent channels and the mask), the wider of the two. */
#define CONTROLNET_CHANNELS_MAX 17

static void params_from_args(const ds_pipeline_args *a, ds_qwen_image_params *p)
{
    ds_qwen_image_params_default(p);
    p->prompt = a->prompt;
    p->negative_prompt = a->negative_prompt;
    p->tokenizer = a->tokenizer;
    p->dtype = a->dtype;
    p->seed = a->values[PARAM_SEED].u;
    p->steps = (int)a->values[PARAM_STEPS].i;
    p->cfg_scale = a->values[PARAM_CFG].d;
    p->height = (int)a->values[PARAM_HEIGHT].i;
    p->width = (int)a->values[PARAM_WIDTH].i;
    p->denoising_strength = a->values[PARAM_STRENGTH].d;
    p->controlnet_scale = a->values[PARAM_CONTROLNET_SCALE].d;
    p->input_image = a->inputs[INPUT_IMAGE];
    p->controlnet_image = a->inputs[INPUT_CONTROLNET];
    p->initial_noise = a->inputs[INPUT_NOISE];
}

static int op_start(const ds_pipeline_args *a, ds_pipeline_run **out, ds_error *err)
{
    ds_qwen_image_models models = {
        .text_encoder = a->models[ROLE_TEXT_ENCODER],
        .dit = a->models[ROLE_DIT],
        .vae = a->models[ROLE_VAE],
        .controlnet = a->models[ROLE_CONTROLNET],
    };
    ds_qwen_image_params params;
    params_from_args(a, &params);
    ds_qwen_image_pipeline *p = NULL;
    int rc = ds_qwen_image_pipeline_new(&models, &params, &p, err);
    *out = (ds_pipeline_run *)p;
    return rc;
}

static int op_advance(ds_pipeline_run *run, const ds_step_context *ctx, ds_error *err)
{
    return ds_qwen_image_pipeline_advance((ds_qwen_image_pipeline *)run, ctx, err);
}

static void op_position(const ds_pipeline_run *run, uint64_t *done, uint64_t *total)
{
    ds_qwen_image_pipeline_position((const ds_qwen_image_pipeline *)run, done, total);
}

static const ds_tensor *op_output(const ds_pipeline_run *run, size_t index)
{
    const ds_qwen_image_pipeline *p = (const ds_qwen_image_pipeline *)run;
    return index == OUTPUT_PNG ? ds_qwen_image_pipeline_image(p)
                               : ds_qwen_image_pipeline_latents(p);
}

static size_t op_results(const ds_pipeline_run *run, ds_pipeline_result *out)
{
    const ds_qwen_image_pipeline *p = (const ds_qwen_image_pipeline *)run;
    int h, w;
    double encode_s, denoise_s, decode_s;
    ds_qwen_image_pipeline_size(p, &h, &w);
    ds_qwen_image_pipeline_times(p, &encode_s, &denoise_s, &decode_s);
    out[0] = (ds_pipeline_result){"seed", 1, ds_qwen_image_pipeline_seed(p), 0};
    out[1] = (ds_pipeline_result){"steps", 1, (uint64_t)ds_qwen_image_pipeline_steps(p), 0};
    out[2] = (ds_pipeline_result){"height", 1, (uint64_t)h, 0};
    out[3] = (ds_pipeline_result){"width", 1, (uint64_t)w, 0};
    out[4] = (ds_pipeline_result){"encode_s", 0, 0, encode_s};
    out[5] = (ds_pipeline_result){"denoise_s", 0, 0, denoise_s};
    out[6] = (ds_pipeline_result){"decode_s", 0, 0, decode_s};
    return 7;
}

static void op_describe_position(const ds_pipeline_run *run, char *buf, size_t size)
{
    ds__unit_runner_describe(run ? &((const ds_qwen_image_pipeline *)run)->units : NULL, buf,
                             size);
}

static double op_output_pixels(const ds_pipeline_run *run)
{
    int h, w;
    ds_qwen_image_pipeline_size((const ds_qwen_image_pipeline *)run, &h, &w);
    return (double)h * (double)w;
}

static int op_estimate_memory(const ds_pipeline_args *args, const ds_pipeline_memory_args *m,
                              ds_memory_need *need, char *what, size_t what_size, ds_error *err)
{
    ds_qwen_image_params p;
    params_from_args(args, &p);
    ds_memory_pipeline_args a = {
        .vae = args->models[ROLE_VAE],
        .height = round_up(p.height),
        .width = round_up(p.width),
        .dtype = p.dtype,
        .prompt_bytes = p.prompt ? strlen(p.prompt) : 0,
        .negative_prompt_bytes = p.negative_prompt ? strlen(p.negative_prompt) : 0,
        .cfg = p.cfg_scale != 1.0,
        .input_image = p.input_image != NULL,
        .controlnet_image = p.controlnet_image != NULL,
        .controlnet_channels = p.controlnet_image ? CONTROLNET_CHANNELS_MAX : 0,
        .inline_bytes = m->inline_bytes,
        .threads = m->threads,
    };
    snprintf(what, what_size, "qwen_image %lldx%lld (height x width), %s", (long long)a.height,
             (long long)a.width, ds_dtype_name(p.dtype));
    return ds_memory_qwen_image_pipeline(&a, need, err);
}

static void op_free(ds_pipeline_run *run)
{
    ds_qwen_image_pipeline_free((ds_qwen_image_pipeline *)run);
}

/* ---- the pipeline's table (pipelines/pipeline.h) ---- */

static const ds_pipeline_role roles[] = {
    [ROLE_TEXT_ENCODER] = {"text_encoder", "qwen_image_text_encoder", TEXT_ENCODER_CLASS, 1},
    [ROLE_DIT] = {"dit", "qwen_image_dit", DIT_CLASS, 1},
    [ROLE_VAE] = {"vae", "qwen_image_vae", VAE_CLASS, 1},
    [ROLE_CONTROLNET] = {"controlnet", "qwen_image_blockwise_controlnet",
     "diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet", 0},
};

/* The defaults are upstream's __call__ defaults (ds_qwen_image_params_default). */
static const ds_pipeline_param params[] = {
    DS_PIPELINE_DENOISING_PARAMS("30", "4", "1328", "1328", DS_PIPELINE_STR(SIZE_MULTIPLE)),
    [PARAM_STRENGTH] = {"denoising_strength", DS_PIPELINE_NUMBER, 0, 1, 1, "1",
                        "image-to-image strength; below 1 needs input_image"},
    [PARAM_CONTROLNET_SCALE] = {"controlnet_scale", DS_PIPELINE_NUMBER, -INFINITY, INFINITY, 0,
                                "1", "Blockwise ControlNet conditioning scale"},
};

static const ds_pipeline_tensor inputs[] = {
    [INPUT_IMAGE] = {"input_image", "[H, W, 3] u8 RGB at the output size: image-to-image", NULL,
                     0},
    [INPUT_CONTROLNET] = {"controlnet_image", "[H, W, 3] u8 RGB: Blockwise ControlNet conditioning",
                          "controlnet", 0},
    [INPUT_NOISE] = {"initial_noise",
                     "[1, 16, H/8, W/8] in the compute dtype: replaces the seeded noise", NULL, 0},
};

static const ds_pipeline_tensor outputs[] = {
    [OUTPUT_PNG] = {"png", "the image, PNG-encoded RGB8", NULL, 1},
    [OUTPUT_LATENTS] = {"latents", "[1, 16, H/8, W/8] in the compute dtype: the final latents",
                        NULL, 0},
};

const ds_pipeline_def ds__qwen_image_pipeline = {
    .name = "qwen_image",
    .summary = "Qwen-Image text-to-image, image-to-image and Blockwise ControlNet",
    DS_PIPELINE_STANDARD_FIELDS,
    DS_PIPELINE_DENOISING_FIELDS,
    .size_multiple = SIZE_MULTIPLE,
};
