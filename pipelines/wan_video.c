/* diffsynth/pipelines/wan_video.py: WanVideoPipeline.__call__ for Wan2.1 text-to-video,
 * video-to-video and VACE, and Wan2.2-TI2V-5B text- and image-to-video, as a resumable job of the
 * pipeline table (pipelines/pipeline.h).
 *
 * One unit of work per advance: unit 0 runs the units before the denoising loop in upstream's
 * order (ShapeChecker, NoiseInitializer, PromptEmbedder for both CFG sides, InputVideoEmbedder,
 * ImageEmbedderFused, VACE),
 * units 1..steps are the denoising steps (a positive and, when cfg_scale != 1, a negative DiT
 * call, the CFG combination and a scheduler step each), and the units after them decode the
 * latents with the VAE, one unit per spatial tile (tiled as upstream's defaults) or one unit
 * untiled, the last converting them to RGB8 frames as vae_output_to_video does. Between units
 * nothing runs and nothing is borrowed from the caller but the models, so the daemon interleaves
 * other jobs at unit boundaries and cancels there.
 *
 * Numbers follow upstream: noise from PyTorch's CPU generator drawn in float32 and cast to the
 * compute dtype (BasePipeline.generate_noise); FlowMatch "Wan" sigmas with sigma_shift
 * (diffusion/flow_match.h); the DiT timestep cast to the compute dtype; the CFG combination and
 * the scheduler step in the compute dtype (diffusion/base_pipeline.h).
 *
 * The VAE sets the latent grid as upstream's from_pretrained and units do: z_dim channels at
 * 1 / upsampling_factor of the size (Wan2.1's VAE: 16 at 1/8; Wan2.2's WanVideoVAE38: 48 at
 * 1/16), sides rounded to twice the upsampling factor. With Wan2.2-TI2V-5B's DiT
 * (fuse_vae_embedding_in_latents, seperated_timestep) an input_image's latents replace the first
 * latent frame, whose tokens the DiT then sees at timestep 0, and replace it again after every
 * scheduler step.
 *
 * The CLIP image-to-video, motion, camera, speech and animate variants need models this build
 * does not have: their DiTs are refused with UNIMPLEMENTED naming what is missing.
 */
#include "pipelines/wan_video.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "core/torch_generator.h"
#include "diffusion/base_pipeline.h"
#include "diffusion/flow_match.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "models/wan_video_dit.h"
#include "models/wan_video_text_encoder.h"
#include "models/wan_video_vace.h"
#include "models/wan_video_vae.h"
#include "pipelines/pipeline.h"
#include "pipelines/prompt_embedder.h"
#include "pipelines/unit_runner.h"
#include "tokenizers/wan_tokenizer.h"

#define TEXT_ENCODER_CLASS "diffsynth.models.wan_video_text_encoder.WanTextEncoder"
#define DIT_CLASS "diffsynth.models.wan_video_dit.WanModel"
#define VAE_CLASS "diffsynth.models.wan_video_vae.WanVideoVAE"
#define VAE38_CLASS "diffsynth.models.wan_video_vae.WanVideoVAE38"
#define VACE_CLASS "diffsynth.models.wan_video_vace.VaceWanModel"
#define SHAPE(...) (const int64_t[]){__VA_ARGS__}

#define LATENT_CHANNELS 16 /* the Wan2.1 VAE's z_dim, of which VACE's context is made */
#define SPATIAL 8          /* the Wan2.1 VAE's upsampling factor: VACE's mask blocks */
#define VAE38_FACTOR 16    /* the Wan2.2 VAE's, the largest: sides in multiples of twice it */
#define TIME_FACTOR 4      /* frames are 4k + 1 */
#define SEQ_LEN 512        /* the tokenizer's seq_len: context rows */
/* VACE's context (with the Wan2.1 VAE only): inactive and reactive latents, then the mask's
 * 8 x 8 pixel blocks. */
#define VACE_MASK_CHANNELS (SPATIAL * SPATIAL)
#define VACE_CHANNELS (2 * LATENT_CHANNELS + VACE_MASK_CHANNELS)
/* The limits the table declares to clients: far above real use (upstream's default is 81
 * frames of 480 x 832), low enough that a typo fails fast. */
#define FRAMES_MAX 2001
#define TILE_MAX 4096

typedef enum { ROLE_TEXT_ENCODER, ROLE_DIT, ROLE_VAE, ROLE_VACE } role_index;
typedef enum {
    PARAM_SEED,
    PARAM_STEPS,
    PARAM_CFG,
    PARAM_HEIGHT,
    PARAM_WIDTH,
    PARAM_FRAMES,
    PARAM_SHIFT,
    PARAM_STRENGTH,
    PARAM_VACE_SCALE,
    PARAM_TILED,
    PARAM_TILE_SIZE_H,
    PARAM_TILE_SIZE_W,
    PARAM_TILE_STRIDE_H,
    PARAM_TILE_STRIDE_W,
} param_index;
typedef enum {
    INPUT_VIDEO,
    INPUT_VACE_VIDEO,
    INPUT_VACE_MASK,
    INPUT_VACE_REFERENCE,
    INPUT_IMAGE,
} input_index;
typedef enum { OUTPUT_VIDEO, OUTPUT_LATENTS } output_index;

/* A VAE the pipeline runs with: upstream's vae.model.z_dim and vae.upsampling_factor, whose
 * double is the height / width division factor. */
typedef struct vae_kind {
    const char *cls;
    int64_t z_dim;
    int factor;
} vae_kind;

static const vae_kind vae_kinds[] = {
    {VAE_CLASS, LATENT_CHANNELS, SPATIAL},
    {VAE38_CLASS, 48, VAE38_FACTOR},
};

/* The kind of `vae`; the Wan2.1 VAE's when it is NULL or of another class (refused later). */
static const vae_kind *vae_kind_of(const ds_loaded_model *vae)
{
    for (size_t i = 0; vae && vae->cls && i < sizeof vae_kinds / sizeof vae_kinds[0]; i++)
        if (strcmp(vae->cls->name, vae_kinds[i].cls) == 0)
            return &vae_kinds[i];
    return &vae_kinds[0];
}

typedef struct wan_run {
    const ds_loaded_model *text_encoder, *dit, *vae;
    const ds_loaded_model *vace; /* NULL, or a VaceWanModel run with vace_context */
    ds__denoise_state d;       /* latents [1, z, lt, lh, lw]; "context" [1, 512, text_dim] per
                                * side */
    int64_t z;                 /* the VAE's latent channels */
    int factor;                /* the VAE's upsampling factor */
    int seperated_timestep;    /* the DiT's: per-token timesteps with a fused first frame */
    uint64_t seed;
    double denoising_strength, sigma_shift, vace_scale;
    int height, width, frames; /* after ShapeChecker's rounding */
    int64_t lt, lh, lw; /* latent frames (reference frame included), height and width / factor */
    int64_t ref;               /* 1 with vace_reference_image (prepended, trimmed before decode) */
    int tiled;
    ds_wan_video_vae_tiling tiling;

    /* Borrowed until the encode unit. */
    const ds_tensor *input_video, *vace_video, *vace_mask, *vace_reference, *input_image;

    void *vace_context;     /* NULL, or [1, 96, lt, lh, lw] compute dtype */
    /* NULL, or input_image's latents [1, z, 1, lh, lw] (compute dtype): upstream's
     * first_frame_latents, fused into the latents before the loop and after every step. */
    void *first_frame;
    /* The decode's buffers, parts of one block (decoded): */
    void *decoded;
    ds_backend *cpu;        /* the host backend their views live on */
    void *final_latents;    /* [1, z, lt - ref, lh, lw]: what the VAE decodes */
    uint8_t *rgb;           /* [frames, height, width, 3] */
    void *video;            /* [1, 3, frames, height, width] compute dtype, while decoding */
    ds_tensor latents_view, video_view; /* views of final_latents and video */
    ds_wan_video_vae_tiles *tiles;      /* the tiled decode in progress, or NULL */

    ds_tensor latents_out, video_out;

    ds__unit_runner units;
} wan_run;

/* BasePipeline.check_resize_height_width: up to the division factors (twice the VAE's
 * upsampling factor), frames up to 4k + 1. */
static int round_size(int v, int multiple) { return (v + multiple - 1) / multiple * multiple; }

static int round_frames(int n)
{
    if (n % TIME_FACTOR == 1)
        return n;
    return (n - 1 + TIME_FACTOR - 1) / TIME_FACTOR * TIME_FACTOR + 1;
}

static int check_model(const ds_loaded_model *m, const char *role, const char *cls,
                       ds_error *err)
{
    return ds__unit_check_model(m, "wan_video", role, cls, err);
}

/* What the DiT's kwargs say about the inputs it needs (upstream's WanModel attributes). */
typedef ds_wan_video_dit_config dit_kind;

static int read_dit_kind(const ds_loaded_model *dit, dit_kind *k, ds_error *err)
{
    int rc = ds_wan_video_dit_config_of(dit, k, err);
    if (rc != DS_OK)
        ds_error_prefix(err, "wan_video: the dit model's kwargs: ");
    return rc;
}

static int check_models(const ds_pipeline_args *a, dit_kind *kind, ds_error *err)
{
    const ds_loaded_model *te = a->models[ROLE_TEXT_ENCODER], *dit = a->models[ROLE_DIT];
    const ds_loaded_model *vae = a->models[ROLE_VAE];
    const vae_kind *vk = vae_kind_of(vae);
    int rc;
    if ((rc = check_model(te, "text_encoder", TEXT_ENCODER_CLASS, err)) != DS_OK ||
        (rc = check_model(dit, "dit", DIT_CLASS, err)) != DS_OK ||
        (rc = check_model(vae, "vae", vk->cls, err)) != DS_OK)
        return rc;
    dit_kind k;
    if ((rc = read_dit_kind(dit, &k, err)) != DS_OK)
        return rc;
    *kind = k;
    if (k.has_image_input)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "wan_video: the dit model takes CLIP image tokens (Wan2.1 "
                            "image-to-video / first-last-frame-to-video): the CLIP image "
                            "encoder (wan_video_image_encoder) is not implemented");
    if (k.add_control_adapter)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "wan_video: the dit model has a camera control adapter: camera "
                            "control is not implemented");
    if (k.has_ref_conv || k.in_dim != k.out_dim)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED,
                            "wan_video: the dit model takes %lld input channels for %lld latent "
                            "ones%s: the image, control-video or reference conditioning it "
                            "concatenates (Wan2.1-Fun, I2V) is not implemented",
                            (long long)k.in_dim, (long long)k.out_dim,
                            k.has_ref_conv ? " and a reference image" : "");
    if (k.out_dim != vk->z_dim)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "wan_video: the dit model has %lld latent channels, the vae (%s) "
                            "%lld: Wan2.2-TI2V-5B's DiT (48) goes with the Wan2.2 VAE "
                            "(WanVideoVAE38), the Wan2.1 DiTs (16) with the Wan2.1 VAE "
                            "(WanVideoVAE)",
                            (long long)k.out_dim, vae->cls->name, (long long)vk->z_dim);
    int64_t te_dim = ds_wan_text_encoder_dim(te);
    if (te_dim != k.text_dim)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "wan_video: the text encoder's width is %lld, the dit model's "
                            "text_dim is %lld",
                            (long long)te_dim, (long long)k.text_dim);
    return DS_OK;
}

/* A [T, H, W, 3] u8 video at the pipeline's (rounded) size with num_frames frames (`more`: or
 * more, of which the first num_frames are used, as upstream's VACE unit cuts them). */
static int check_video(const ds_tensor *t, const char *name, int frames, int more, int height,
                       int width, int multiple, ds_error *err)
{
    if (t->dtype != DS_U8 || t->ndim != 4 || t->shape[0] < frames ||
        (!more && t->shape[0] != frames) || t->shape[1] != height || t->shape[2] != width ||
        t->shape[3] != 3) {
        char got[96];
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "wan_video: %s is %s, expected [%s%d, %d, %d, 3] u8 (num_frames, "
                            "height, width after rounding: frames to 4k + 1, sides to multiples "
                            "of %d)",
                            name, ds_tensor_describe(t, got, sizeof got), more ? ">= " : "",
                            frames, height, width, multiple);
    }
    return DS_OK;
}

/* The VACE inputs against the pipeline's size and the VACE model. */
/* An image input: [height, width, 3] u8 at the output size. */
static int check_image(const ds_tensor *image, const char *name, int height, int width,
                       int multiple, ds_error *err)
{
    if (image->dtype == DS_U8 && image->ndim == 3 && image->shape[0] == height &&
        image->shape[1] == width && image->shape[2] == 3)
        return DS_OK;
    char got[96];
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                        "wan_video: %s is %s, expected [%d, %d, 3] u8 (the output size after "
                        "rounding up to multiples of %d)",
                        name, ds_tensor_describe(image, got, sizeof got), height, width,
                        multiple);
}

static int check_vace(const ds_pipeline_args *a, int frames, int height, int width,
                      ds_error *err)
{
    const ds_tensor *video = a->inputs[INPUT_VACE_VIDEO], *mask = a->inputs[INPUT_VACE_MASK];
    const ds_tensor *ref = a->inputs[INPUT_VACE_REFERENCE];
    const ds_loaded_model *vace = a->models[ROLE_VACE];
    int rc;
    if (!video && !mask && !ref)
        return DS_OK;
    if (!vace)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "wan_video: %s needs a vace model (%s)",
                            video ? "vace_video" : mask ? "vace_video_mask"
                                                        : "vace_reference_image",
                            VACE_CLASS);
    if ((rc = check_model(vace, "vace", VACE_CLASS, err)) != DS_OK)
        return rc;
    if (vae_kind_of(a->models[ROLE_VAE])->z_dim != LATENT_CHANNELS)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "wan_video: VACE takes the Wan2.1 VAE's latents (16 channels, 8 x 8 "
                            "mask blocks); the vae model is a %s",
                            a->models[ROLE_VAE]->cls->name);
    ds__wan_vace_config c;
    if ((rc = ds__wan_vace_config_of(vace, &c, err)) != DS_OK)
        return ds_error_prefix(err, "wan_video: the vace model: ");
    if (c.in_dim != VACE_CHANNELS)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "wan_video: the vace model takes %lld context channels, expected %d "
                            "(inactive and reactive latents and the 8 x 8 mask)",
                            (long long)c.in_dim, VACE_CHANNELS);
    if (video &&
        (rc = check_video(video, "vace_video", frames, 1, height, width, 2 * SPATIAL, err)) !=
            DS_OK)
        return rc;
    if (mask && (rc = check_video(mask, "vace_video_mask", frames, 1, height, width, 2 * SPATIAL,
                                  err)) != DS_OK)
        return rc;
    return ref ? check_image(ref, "vace_reference_image", height, width, 2 * SPATIAL, err) : DS_OK;
}

static void run_free(wan_run *p)
{
    if (!p)
        return;
    ds__denoise_state_free(&p->d);
    free(p->vace_context);
    free(p->first_frame);
    free(p->decoded);
    ds_wan_video_vae_tiles_free(p->tiles);
    free(p);
}

static int op_start(const ds_pipeline_args *a, ds_pipeline_run **out, ds_error *err)
{
    int rc;
    dit_kind dk;
    *out = NULL;
    if ((rc = check_models(a, &dk, err)) != DS_OK)
        return rc;
    const vae_kind *vk = vae_kind_of(a->models[ROLE_VAE]);
    int multiple = 2 * vk->factor;
    if (!a->prompt)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "wan_video: prompt is required (it may be empty)");
    if (a->dtype != DS_BF16 && a->dtype != DS_F32)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "wan_video: the compute dtype is %s, expected bf16 or f32",
                            ds_dtype_name(a->dtype));
    const ds_pipeline_value *v = a->values;
    int frames = round_frames((int)v[PARAM_FRAMES].i);
    int height = round_size((int)v[PARAM_HEIGHT].i, multiple);
    int width = round_size((int)v[PARAM_WIDTH].i, multiple);
    double strength = v[PARAM_STRENGTH].d;
    const ds_tensor *input_video = a->inputs[INPUT_VIDEO];
    if (strength < 1.0 && !input_video)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "wan_video: denoising_strength %g below 1 needs input_video (the "
                            "video to start from)",
                            strength);
    if (input_video && (rc = check_video(input_video, "input_video", frames, 0, height, width,
                                         multiple, err)) != DS_OK)
        return rc;
    const ds_tensor *image = a->inputs[INPUT_IMAGE];
    /* Upstream's ImageEmbedderFused skips a DiT that does not fuse, and its ImageEmbedderVAE then
     * feeds a Wan2.1 text-to-video DiT channels it has no weights for. */
    if (image && !dk.fuse_vae_embedding_in_latents)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "wan_video: input_image needs a dit model that fuses the image's "
                            "latents into the first frame (fuse_vae_embedding_in_latents, as "
                            "Wan2.2-TI2V-5B); the %s given does not (Wan2.1's image-to-video "
                            "models take the image through the CLIP image encoder, which is not "
                            "implemented)",
                            a->models[ROLE_DIT]->model_name ? a->models[ROLE_DIT]->model_name
                                                            : "dit model");
    if (image && (rc = check_image(image, "input_image", height, width, multiple, err)) != DS_OK)
        return rc;
    if ((rc = check_vace(a, frames, height, width, err)) != DS_OK)
        return rc;
    ds_wan_video_vae_tiling tiling = {v[PARAM_TILE_SIZE_H].i, v[PARAM_TILE_SIZE_W].i,
                                      v[PARAM_TILE_STRIDE_H].i, v[PARAM_TILE_STRIDE_W].i};
    if (tiling.stride_h > tiling.size_h || tiling.stride_w > tiling.size_w)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "wan_video: tile_stride_h x tile_stride_w %lld x %lld exceeds "
                            "tile_size_h x tile_size_w %lld x %lld: tiles would leave gaps",
                            (long long)tiling.stride_h, (long long)tiling.stride_w,
                            (long long)tiling.size_h, (long long)tiling.size_w);

    wan_run *p = calloc(1, sizeof *p);
    if (!p)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "wan_video: out of memory");
    p->text_encoder = a->models[ROLE_TEXT_ENCODER];
    p->dit = a->models[ROLE_DIT];
    p->vae = a->models[ROLE_VAE];
    p->vace = a->models[ROLE_VACE];
    p->z = vk->z_dim;
    p->factor = vk->factor;
    p->seperated_timestep = dk.seperated_timestep;
    p->vace_scale = v[PARAM_VACE_SCALE].d;
    p->seed = v[PARAM_SEED].u;
    p->denoising_strength = strength;
    p->sigma_shift = v[PARAM_SHIFT].d;
    p->height = height;
    p->width = width;
    p->frames = frames;
    p->ref = a->inputs[INPUT_VACE_REFERENCE] != NULL;
    p->lt = (frames - 1) / TIME_FACTOR + 1 + p->ref;
    p->lh = height / vk->factor;
    p->lw = width / vk->factor;
    p->tiled = v[PARAM_TILED].i != 0;
    p->tiling = tiling;
    p->input_video = input_video;
    p->vace_video = a->inputs[INPUT_VACE_VIDEO];
    p->vace_mask = a->inputs[INPUT_VACE_MASK];
    p->vace_reference = a->inputs[INPUT_VACE_REFERENCE];
    p->input_image = image;
    int with_vace = p->vace_video || p->vace_mask || p->vace_reference;
    size_t latent_count = (size_t)p->z * (size_t)p->lt * (size_t)p->lh * (size_t)p->lw;
    if ((rc = ds__denoise_state_init(&p->d, "wan_video", a->prompt, a->negative_prompt,
                                     a->tokenizer, a->dtype, v[PARAM_CFG].d, latent_count,
                                     err)) != DS_OK)
        goto fail;
    size_t vace_bytes = latent_count / LATENT_CHANNELS * VACE_CHANNELS * ds_dtype_size(a->dtype);
    if (with_vace && !(p->vace_context = malloc(vace_bytes))) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                          "wan_video: out of memory for the VACE context");
        goto fail;
    }
    size_t first_frame_bytes = latent_count / (size_t)p->lt * ds_dtype_size(a->dtype);
    if (image && !(p->first_frame = malloc(first_frame_bytes))) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                          "wan_video: out of memory for input_image's latents");
        goto fail;
    }
    if ((rc = ds_flow_match_wan((int)v[PARAM_STEPS].i, strength, p->sigma_shift, &p->d.schedule,
                                err)) != DS_OK) {
        ds_error_prefix(err, "wan_video: ");
        goto fail;
    }
    /* A tiled decode is one unit per tile. */
    int64_t tiles = p->tiled ? ds_wan_video_vae_tile_count(&p->tiling, 1, p->lh, p->lw) : 1;
    p->units = (ds__unit_runner){.pipeline = "wan_video",
                                 .steps = p->d.schedule.count,
                                 .decode_units = (int)tiles};
    *out = (ds_pipeline_run *)p;
    return DS_OK;
fail:
    run_free(p);
    return rc;
}

/* ---- WanVideoUnit_PromptEmbedder.encode_prompt ---- */

/* Where Wan-AI/Wan2.1-T2V-1.3B (and the 14B repositories) keep the tokenizer, beside
 * models_t5_umt5-xxl-enc-bf16.pth; upstream's from_pretrained names the same folder. */
#define TOKENIZER_SUBDIR "google/umt5-xxl"

DS__TOKENIZER_CACHE_DEFINE(tokenizers, ds_wan_tokenizer, ds_wan_tokenizer_load,
                           ds_wan_tokenizer_free);

/*     ids, mask = pipe.tokenizer(prompt, return_mask=True, add_special_tokens=True)
 *     seq_lens = mask.gt(0).sum(dim=1)
 *     prompt_emb = pipe.text_encoder(ids, mask)
 *     prompt_emb[:, v:] = 0
 * with upstream's HuggingfaceTokenizer(seq_len=512, clean='whitespace'). */
int ds_wan_encode_prompt(const ds_loaded_model *text_encoder, const ds_step_context *ctx,
                         const char *prompt, const char *tokenizer, ds_dtype dtype,
                         ds_step_io *out, ds_error *err)
{
    enum { L = DS_WAN_TOKENIZER_SEQ_LEN };
    int64_t dim = ds_wan_text_encoder_dim(text_encoder);
    char dir[PATH_MAX];
    const char *origin = "";
    const void *tok = NULL;
    void *owned = NULL;
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
    if ((rc = ds__tokenizer_dir(text_encoder, ctx, tokenizer, 1, TOKENIZER_SUBDIR,
                                "beside the model file, as upstream lays out "
                                "Wan-AI/Wan2.1-T2V-1.3B; or give the \"tokenizer\" parameter",
                                dir, sizeof dir, &origin, err)) != DS_OK ||
        (rc = ds__tokenizer_cache_get(&tokenizers, dir, origin, &tok, &owned, err)) != DS_OK)
        return rc;
    rc = ds_wan_tokenizer_encode_padded(tok, prompt, strlen(prompt), L, ids, mask, &length, err);
    ds_wan_tokenizer_free(owned);
    if (rc != DS_OK) {
        ds_error_prefix(err, "encode_prompt: parameter \"prompt\": ");
        return rc;
    }

    ds_backend *cpu = ctx->backend;
    if (!cpu->host_memory && (rc = ds_cpu_fallback_backend(&cpu, err)) != DS_OK)
        return rc;
    ds_tensor id_t = ds_tensor_wrap(cpu, DS_I32, 2, SHAPE(1, L), ids);
    ds_tensor mask_t = ds_tensor_wrap(cpu, DS_I32, 2, SHAPE(1, L), mask);
    ds_tensor *context;
    if ((rc = ds_step_io_new_tensor(out, cpu, "context", dtype, 3, SHAPE(1, L, dim), &context,
                                    err)) != DS_OK ||
        (rc = ds_wan_text_encoder_forward(text_encoder, ctx, &id_t, &mask_t, context, err)) !=
            DS_OK)
        return rc;
    size_t row = (size_t)dim * ds_dtype_size(dtype);
    memset((char *)context->data + length * row, 0, (L - length) * row);
    return DS_OK;
}

static int encode_prompt_step(const ds_loaded_model *m, const ds_step_context *ctx,
                              const ds_step_io *in, ds_step_io *out, ds_error *err)
{
    return ds__encode_prompt_step(m, ctx, in, out, ds_wan_text_encoder_step_dtype,
                                  ds_wan_encode_prompt, err);
}

/* encode_prompt's bound: the text encoder over the tokenizer's whole sequence (the ids are
 * padded to it), in either compute dtype (its "dtype" parameter chooses). */
static int encode_prompt_memory(const ds_memory_step_args *a, uint64_t *peak,
                                uint64_t *out_bytes, ds_error *err)
{
    return ds_memory_wan_text_encoder(a->model, 1, DS_WAN_TOKENIZER_SEQ_LEN, DS_DTYPE_INVALID,
                                      peak, out_bytes, err);
}

/* WanVideoUnit_PromptEmbedder for one side. */
static int encode_prompt(wan_run *p, const ds_step_context *ctx, const char *prompt,
                         ds_step_io *out, ds_error *err)
{
    ds_step_context inner = ds__unit_inner_context(ctx);
    return ds_wan_encode_prompt(p->text_encoder, &inner, prompt, p->d.tokenizer, p->d.dtype, out,
                                err);
}

static float round_to(ds_dtype dtype, float x)
{
    return dtype == DS_BF16 ? ds_bf16_to_f32(ds_f32_to_bf16(x)) : x;
}

static float load(ds_dtype dtype, const void *data, size_t i)
{
    return dtype == DS_BF16 ? ds_bf16_to_f32(((const uint16_t *)data)[i])
                            : ((const float *)data)[i];
}

static void store(ds_dtype dtype, void *data, size_t i, float x)
{
    if (dtype == DS_BF16)
        ((uint16_t *)data)[i] = ds_f32_to_bf16(x);
    else
        ((float *)data)[i] = x;
}

/* preprocess_video: the first T frames of rgb [>= T, H, W, 3] u8 -> [1, 3, T, H, W] in the
 * compute dtype, each frame as preprocess_image with upstream's range: [-1, 1] for pictures,
 * [0, 1] (`mask`) for the VACE mask. */
static int preprocess_video(const wan_run *p, const uint8_t *rgb, size_t T, int mask, void *out,
                            ds_error *err)
{
    size_t esize = ds_dtype_size(p->d.dtype);
    size_t plane = (size_t)p->height * (size_t)p->width;
    if (mask) {
        /* image * ((1 - 0) / 255) + 0: the Python double met by a float32 op. */
        const float scale = (float)(1.0 / 255.0);
        for (size_t t = 0; t < T; t++)
            for (size_t c = 0; c < 3; c++)
                for (size_t i = 0; i < plane; i++) {
                    float x = round_to(p->d.dtype, (float)rgb[(t * plane + i) * 3 + c] * scale);
                    store(p->d.dtype, out, (c * T + t) * plane + i, x + 0.0f);
                }
        return DS_OK;
    }
    void *frame = malloc(3 * plane * esize);
    if (!frame)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "wan_video: out of memory for a %d x %d frame", p->height, p->width);
    int rc = DS_OK;
    for (size_t t = 0; t < T && rc == DS_OK; t++) {
        rc = ds_preprocess_image(rgb + t * plane * 3, p->height, p->width, p->d.dtype, frame, err);
        for (size_t c = 0; rc == DS_OK && c < 3; c++)
            memcpy((char *)out + ((c * T + t) * plane) * esize,
                   (const char *)frame + c * plane * esize, plane * esize);
    }
    free(frame);
    return rc;
}

/* vae.encode of video [1, 3, T, H, W] (compute dtype) into latents [1, z, (T - 1) / 4 + 1, lh,
 * lw], tiled as the run says or untiled. */
static int vae_encode(wan_run *p, const ds_step_context *ctx, const void *video, int64_t T,
                      int tiled, void *latents, const char *what, ds_error *err)
{
    ds_backend *cpu;
    int rc = ds_cpu_fallback_backend(&cpu, err);
    if (rc != DS_OK)
        return rc;
    ds_tensor v = ds_tensor_wrap(cpu, p->d.dtype, 5, SHAPE(1, 3, T, p->height, p->width),
                                 (void *)video);
    ds_tensor z = ds_tensor_wrap(cpu, p->d.dtype, 5,
                                 SHAPE(1, p->z, (T - 1) / TIME_FACTOR + 1, p->lh, p->lw),
                                 latents);
    ds_step_context inner = ds__unit_inner_context(ctx);
    rc = ds_wan_video_vae_encode(p->vae, &inner, tiled ? &p->tiling : NULL, &v, &z, err);
    if (rc != DS_OK)
        ds_error_prefix(err, "wan_video: %s: ", what);
    return rc;
}

/* Copies frames [0, count) of src [C, src_T, plane] to frames [at, at + count) of dst
 * [C, dst_T, plane] (elements of esize bytes), channel by channel. */
static void copy_frames(void *dst, int64_t dst_T, int64_t at, const void *src, int64_t src_T,
                        int64_t count, int64_t channels, size_t plane_bytes)
{
    for (int64_t c = 0; c < channels; c++)
        memcpy((char *)dst + (size_t)(c * dst_T + at) * plane_bytes,
               (const char *)src + (size_t)(c * src_T) * plane_bytes,
               (size_t)count * plane_bytes);
}

/* The reference image as a one-frame video [1, 3, 1, H, W] in the compute dtype. */
static int reference_video(const wan_run *p, void **out, ds_error *err)
{
    size_t plane = (size_t)p->height * (size_t)p->width;
    *out = malloc(3 * plane * ds_dtype_size(p->d.dtype));
    if (!*out)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "wan_video: out of memory for vace_reference_image");
    return preprocess_video(p, p->vace_reference->data, 1, 0, *out, err);
}

/* WanVideoUnit_InputVideoEmbedder: latents = add_noise(vae.encode(input_video), noise,
 * timesteps[0]), the reference image's latents (encoded untiled, as upstream does here)
 * prepended when VACE has one. */
static int embed_input_video(wan_run *p, const ds_step_context *ctx, const void *noise,
                             ds_error *err)
{
    size_t esize = ds_dtype_size(p->d.dtype);
    size_t plane = (size_t)p->lh * (size_t)p->lw;
    int64_t video_lt = p->lt - p->ref;
    size_t pixels = 3 * (size_t)p->frames * (size_t)p->height * (size_t)p->width;
    void *video = malloc(pixels * esize);
    void *input_latents = malloc(p->d.latent_count * esize);
    void *video_latents = malloc((size_t)p->z * (size_t)video_lt * plane * esize);
    void *ref = NULL, *ref_latents = NULL;
    int rc;
    if (!video || !input_latents || !video_latents) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                          "wan_video: out of memory for input_video's %d frames", p->frames);
        goto done;
    }
    if ((rc = preprocess_video(p, p->input_video->data, (size_t)p->frames, 0, video, err)) !=
            DS_OK ||
        (rc = vae_encode(p, ctx, video, p->frames, p->tiled, video_latents, "input_video",
                         err)) != DS_OK)
        goto done;
    copy_frames(input_latents, p->lt, p->ref, video_latents, video_lt, video_lt, p->z,
                plane * esize);
    if (p->ref) {
        if (!(ref_latents = malloc((size_t)p->z * plane * esize))) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                              "wan_video: out of memory for vace_reference_image's latents");
            goto done;
        }
        if ((rc = reference_video(p, &ref, err)) != DS_OK ||
            (rc = vae_encode(p, ctx, ref, 1, 0, ref_latents, "vace_reference_image", err)) !=
                DS_OK)
            goto done;
        copy_frames(input_latents, p->lt, 0, ref_latents, 1, 1, p->z, plane * esize);
    }
    rc = ds_flow_match_add_noise(&p->d.schedule, 0, p->d.dtype, input_latents, noise, p->d.latents,
                                 p->d.latent_count, err);
done:
    free(video);
    free(input_latents);
    free(video_latents);
    free(ref);
    free(ref_latents);
    return rc;
}

/* latents[:, :, 0:1] = first_frame_latents. */
static void fuse_first_frame(wan_run *p)
{
    size_t plane_bytes = (size_t)p->lh * (size_t)p->lw * ds_dtype_size(p->d.dtype);
    copy_frames(p->d.latents, p->lt, 0, p->first_frame, 1, 1, p->z, plane_bytes);
}

/* WanVideoUnit_ImageEmbedderFused (Wan2.2-TI2V-5B): input_image as a one-frame video, encoded
 * by the VAE (tiled as the run says, as upstream passes its tiling), becomes the first latent
 * frame. */
static int embed_image(wan_run *p, const ds_step_context *ctx, ds_error *err)
{
    size_t plane = (size_t)p->height * (size_t)p->width;
    void *image = malloc(3 * plane * ds_dtype_size(p->d.dtype));
    if (!image)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "wan_video: out of memory for input_image");
    /* preprocess_image(...).transpose(0, 1): [3, 1, H, W] has the [1, 3, H, W] layout. */
    int rc = ds_preprocess_image(p->input_image->data, p->height, p->width, p->d.dtype, image,
                                 err);
    if (rc == DS_OK &&
        (rc = vae_encode(p, ctx, image, 1, p->tiled, p->first_frame, "input_image", err)) ==
            DS_OK)
        fuse_first_frame(p);
    free(image);
    return rc;
}

/* interpolate(mode="nearest-exact") along one axis of `in` frames to `out` frames: PyTorch's CPU
 * kernel takes the float scale in / out and the source min(floorf((i + 0.5) * scale), in - 1). */
static int64_t nearest_exact_source(int64_t i, int64_t in, int64_t out)
{
    float scale = (float)in / (float)out;
    int64_t src = (int64_t)floorf((float)(((double)i + 0.5) * (double)scale));
    return src < in - 1 ? src : in - 1;
}

/* WanVideoUnit_VACE: vace_context [1, 96, lt, lh, lw] = the VAE latents of the video outside
 * (inactive) and inside (reactive) the mask, then the mask's 8 x 8 pixel blocks as 64 channels
 * at the latent frame rate; the reference image's latents (and zeros) prepended as frame 0. */
static int embed_vace(wan_run *p, const ds_step_context *ctx, ds_error *err)
{
    ds_dtype dt = p->d.dtype;
    size_t esize = ds_dtype_size(dt);
    size_t T = (size_t)p->frames, px = (size_t)p->height * (size_t)p->width;
    size_t lplane = (size_t)p->lh * (size_t)p->lw;
    int64_t video_lt = p->lt - p->ref;
    size_t video_bytes = 3 * T * px * esize;
    size_t latent_bytes = (size_t)LATENT_CHANNELS * (size_t)video_lt * lplane * esize;
    void *video = malloc(video_bytes), *mask = malloc(video_bytes);
    void *inactive = malloc(video_bytes), *reactive = malloc(video_bytes);
    void *z_in = malloc(latent_bytes), *z_re = malloc(latent_bytes);
    void *ref = NULL, *ref_latents = NULL;
    int rc = DS_OK;
    if (!video || !mask || !inactive || !reactive || !z_in || !z_re) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                          "wan_video: out of memory for the VACE video's %d frames", p->frames);
        goto done;
    }
    /* No video: zeros; no mask: ones (the whole video is to be generated). */
    if (p->vace_video)
        rc = preprocess_video(p, p->vace_video->data, T, 0, video, err);
    else
        memset(video, 0, video_bytes);
    if (rc == DS_OK && p->vace_mask)
        rc = preprocess_video(p, p->vace_mask->data, T, 1, mask, err);
    else if (rc == DS_OK)
        for (size_t i = 0; i < 3 * T * px; i++)
            store(dt, mask, i, 1.0f);
    if (rc != DS_OK)
        goto done;
    /* inactive = video * (1 - mask) + 0 * mask; reactive = video * mask + 0 * (1 - mask), each
     * op rounded to the compute dtype. */
    for (size_t i = 0; i < 3 * T * px; i++) {
        float v = load(dt, video, i), m = load(dt, mask, i);
        float keep = round_to(dt, 1.0f - m);
        store(dt, inactive, i, round_to(dt, v * keep) + round_to(dt, 0.0f * m));
        store(dt, reactive, i, round_to(dt, v * m) + round_to(dt, 0.0f * keep));
    }
    if ((rc = vae_encode(p, ctx, inactive, (int64_t)T, p->tiled, z_in, "vace_video (inactive)",
                         err)) != DS_OK ||
        (rc = ds__unit_cancelled(ctx, "wan_video", err)) != DS_OK ||
        (rc = vae_encode(p, ctx, reactive, (int64_t)T, p->tiled, z_re, "vace_video (reactive)",
                         err)) != DS_OK)
        goto done;

    void *out = p->vace_context;
    size_t out_plane = lplane * esize;
    memset(out, 0, (size_t)VACE_CHANNELS * (size_t)p->lt * out_plane);
    copy_frames(out, p->lt, p->ref, z_in, video_lt, video_lt, LATENT_CHANNELS, out_plane);
    copy_frames((char *)out + (size_t)LATENT_CHANNELS * (size_t)p->lt * out_plane, p->lt,
                p->ref, z_re, video_lt, video_lt, LATENT_CHANNELS, out_plane);
    /* rearrange(mask[0, 0], "T (H P) (W Q) -> 1 (P Q) T H W", P=8, Q=8), then nearest-exact to
     * (T + 3) / 4 frames. */
    for (int64_t t = 0; t < video_lt; t++) {
        size_t src_t = (size_t)nearest_exact_source(t, (int64_t)T, video_lt);
        for (int64_t pq = 0; pq < VACE_MASK_CHANNELS; pq++) {
            int64_t pp = pq / SPATIAL, qq = pq % SPATIAL;
            size_t base = ((size_t)(2 * LATENT_CHANNELS + pq) * (size_t)p->lt +
                           (size_t)(t + p->ref)) * lplane;
            for (int64_t h = 0; h < p->lh; h++)
                for (int64_t w = 0; w < p->lw; w++) {
                    size_t at = src_t * px + (size_t)(h * SPATIAL + pp) * (size_t)p->width +
                                (size_t)(w * SPATIAL + qq);
                    store(dt, out, base + (size_t)(h * p->lw + w), load(dt, mask, at));
                }
        }
    }
    if (p->ref) {
        if (!(ref_latents = malloc((size_t)LATENT_CHANNELS * out_plane))) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                              "wan_video: out of memory for vace_reference_image's latents");
            goto done;
        }
        if ((rc = reference_video(p, &ref, err)) != DS_OK ||
            (rc = vae_encode(p, ctx, ref, 1, p->tiled, ref_latents, "vace_reference_image",
                             err)) != DS_OK)
            goto done;
        copy_frames(out, p->lt, 0, ref_latents, 1, 1, LATENT_CHANNELS, out_plane);
    }
done:
    free(video);
    free(mask);
    free(inactive);
    free(reactive);
    free(z_in);
    free(z_re);
    free(ref);
    free(ref_latents);
    return rc;
}

/* Noise, both prompts, the input video's latents and the VACE context, as upstream's units
 * before the loop. */
static int run_encode(void *run, const ds_step_context *ctx, ds_error *err)
{
    wan_run *p = run;
    int rc;
    int parts = 1 + (p->d.cfg_scale != 1.0) + (p->input_video != NULL) +
                (p->first_frame != NULL) + (p->vace_context != NULL);
    int done = 0;
    size_t bytes = p->d.latent_count * ds_dtype_size(p->d.dtype);
    ds__unit_report(ctx, "encode", 0, (uint64_t)parts);

    /* generate_noise: drawn in float32, then cast to the compute dtype. */
    float *drawn = malloc(p->d.latent_count * sizeof *drawn);
    float *noise = malloc(p->d.latent_count * sizeof *noise);
    if (!drawn || !noise) {
        free(drawn);
        free(noise);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "wan_video: out of memory for the noise");
    }
    ds_torch_generator gen;
    ds_torch_generator_seed(&gen, p->seed);
    if ((rc = ds_torch_randn(&gen, DS_F32, drawn, p->d.latent_count, err)) != DS_OK)
        goto done;
    /* With a reference frame the last drawn frame moves to the front:
     * concat(noise[:, :, -1:], noise[:, :, :-1]). */
    size_t plane = (size_t)p->lh * (size_t)p->lw * sizeof(float);
    copy_frames(noise, p->lt, p->ref, drawn, p->lt, p->lt - p->ref, p->z, plane);
    if (p->ref)
        copy_frames(noise, p->lt, 0, (const char *)drawn + (size_t)(p->lt - 1) * plane, p->lt, 1,
                    p->z, plane);
    if (p->d.dtype == DS_BF16) {
        uint16_t *bf = (uint16_t *)noise;
        /* In place, front to back: element i's bf16 lands at or before its float. */
        for (size_t i = 0; i < p->d.latent_count; i++)
            bf[i] = ds_f32_to_bf16(noise[i]);
    }
    if ((rc = ds__unit_cancelled(ctx, "wan_video", err)) != DS_OK ||
        (rc = encode_prompt(p, ctx, p->d.prompt, &p->d.prompt_posi, err)) != DS_OK)
        goto done;
    ds__unit_report(ctx, "encode", (uint64_t)++done, (uint64_t)parts);
    if (p->d.cfg_scale != 1.0) {
        if ((rc = ds__unit_cancelled(ctx, "wan_video", err)) != DS_OK ||
            (rc = encode_prompt(p, ctx, p->d.negative_prompt, &p->d.prompt_nega, err)) != DS_OK)
            goto done;
        ds__unit_report(ctx, "encode", (uint64_t)++done, (uint64_t)parts);
    }
    if (p->input_video) {
        if ((rc = ds__unit_cancelled(ctx, "wan_video", err)) != DS_OK ||
            (rc = embed_input_video(p, ctx, noise, err)) != DS_OK)
            goto done;
        ds__unit_report(ctx, "encode", (uint64_t)++done, (uint64_t)parts);
    } else {
        memcpy(p->d.latents, noise, bytes);
    }
    if (p->first_frame) {
        if ((rc = ds__unit_cancelled(ctx, "wan_video", err)) != DS_OK ||
            (rc = embed_image(p, ctx, err)) != DS_OK)
            goto done;
        ds__unit_report(ctx, "encode", (uint64_t)++done, (uint64_t)parts);
    }
    if (p->vace_context) {
        if ((rc = ds__unit_cancelled(ctx, "wan_video", err)) != DS_OK ||
            (rc = embed_vace(p, ctx, err)) != DS_OK)
            goto done;
        ds__unit_report(ctx, "encode", (uint64_t)++done, (uint64_t)parts);
    }
    rc = DS_OK;
done:
    free(drawn);
    free(noise);
    /* The caller's tensors are borrowed only until here. */
    p->input_video = p->vace_video = p->vace_mask = p->vace_reference = p->input_image = NULL;
    return rc;
}

/* One model_fn_wan_video call for one CFG side. */
static int predict(void *run, const ds_step_context *ctx, const ds_step_io *side,
                   float timestep, void *pred, ds_error *err)
{
    wan_run *p = run;
    ds_backend *cpu;
    int rc = ds_cpu_fallback_backend(&cpu, err);
    if (rc != DS_OK)
        return rc;
    const ds_tensor *context = ds_step_io_tensor(side, "context");
    if (!context)
        return ds_error_set(err, DS_ERR_INTERNAL, "wan_video: encode_prompt returned no context");
    const int64_t *shape = SHAPE(1, p->z, p->lt, p->lh, p->lw);
    ds_tensor latents = ds_tensor_wrap(cpu, p->d.dtype, 5, shape, p->d.latents);
    ds_tensor out = ds_tensor_wrap(cpu, p->d.dtype, 5, shape, pred);
    ds_tensor t = ds_tensor_wrap(cpu, DS_F32, 1, SHAPE(1), &timestep);
    /* model_fn_wan_video's per-token timesteps (0 for the fused first frame) only where the
     * ImageEmbedderFused unit ran and the DiT separates them. */
    ds_wan_video_dit_inputs in = {
        .latents = &latents,
        .timestep = &t,
        .context = context,
        .fuse_vae_embedding_in_latents = p->first_frame && p->seperated_timestep,
    };
    ds_tensor vace_context;
    if (p->vace_context) {
        vace_context = ds_tensor_wrap(cpu, p->d.dtype, 5,
                                      SHAPE(1, VACE_CHANNELS, p->lt, p->lh, p->lw),
                                      p->vace_context);
        in.vace = p->vace;
        in.vace_context = &vace_context;
        in.vace_scale = (float)p->vace_scale;
    }
    ds_step_context inner = ds__unit_inner_context(ctx);
    return ds_wan_video_dit_forward(p->dit, &inner, &in, &out, err);
}

/* Denoising step `index`: CFG-guided noise prediction, then the scheduler step. */
static int run_denoise(void *run, const ds_step_context *ctx, int index, ds_error *err)
{
    wan_run *p = run;
    /* timestep.to(dtype=torch_dtype) before the model sees it. */
    float timestep = p->d.schedule.timesteps[index];
    if (p->d.dtype == DS_BF16)
        timestep = ds_bf16_to_f32(ds_f32_to_bf16(timestep));
    int rc = ds__unit_cfg_denoise(&p->d, "wan_video", predict, p, ctx, index, timestep, err);
    /* The scheduler moved the first frame too: the image's latents are put back. */
    if (rc == DS_OK && p->first_frame)
        fuse_first_frame(p);
    return rc;
}

/* Where the parts of the decode's block lie: final_latents, the RGB frames, then the video,
 * last so that it can be cut off once converted. */
typedef struct decode_parts {
    size_t esize, plane, frames; /* the compute dtype's size; pixels per frame; frames */
    int64_t lt;                  /* latent frames decoded (the reference frame dropped) */
    size_t rgb_at, video_at, size;
} decode_parts;

static decode_parts decode_parts_of(const wan_run *p)
{
    decode_parts d = {.esize = ds_dtype_size(p->d.dtype),
                      .plane = (size_t)p->height * (size_t)p->width,
                      .frames = (size_t)p->frames,
                      .lt = p->lt - p->ref};
    d.rgb_at = ds__unit_align((size_t)p->z * (size_t)d.lt * (size_t)p->lh * (size_t)p->lw *
                              d.esize);
    d.video_at = d.rgb_at + ds__unit_align(3 * d.frames * d.plane);
    d.size = d.video_at + 3 * d.frames * d.plane * d.esize;
    return d;
}

/* Points final_latents, rgb and the latents' view into the block (again after it moved). */
static void decode_place(wan_run *p, const decode_parts *d)
{
    p->final_latents = p->decoded;
    p->rgb = (uint8_t *)p->decoded + d->rgb_at;
    p->latents_view = ds_tensor_wrap(p->cpu, p->d.dtype, 5,
                                     SHAPE(1, p->z, d->lt, p->lh, p->lw), p->final_latents);
}

/* The decode's first unit: latents[:, :, ref:] (the reference frame dropped) and the buffers
 * the decode writes, and with tiling the tiled decode over them. */
static int decode_begin(wan_run *p, const ds_step_context *ctx, ds_error *err)
{
    int rc = ds_cpu_fallback_backend(&p->cpu, err);
    if (rc != DS_OK)
        return rc;
    decode_parts d = decode_parts_of(p);
    if (!(p->decoded = malloc(d.size)))
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "wan_video: out of memory for %d frames of %d x %d", p->frames,
                            p->height, p->width);
    decode_place(p, &d);
    p->video = (char *)p->decoded + d.video_at;
    size_t lplane = (size_t)p->lh * (size_t)p->lw * d.esize;
    copy_frames(p->final_latents, d.lt, 0, (const char *)p->d.latents + (size_t)p->ref * lplane,
                p->lt, d.lt, p->z, lplane);
    p->video_view = ds_tensor_wrap(p->cpu, p->d.dtype, 5,
                                   SHAPE(1, 3, p->frames, p->height, p->width), p->video);
    if (!p->tiled)
        return DS_OK;
    return ds_wan_video_vae_tiles_begin(p->vae, ctx, &p->tiling, &p->latents_view,
                                        &p->video_view, &p->tiles, err);
}

/* vae_output_to_video over the decoded video: frame by frame as vae_output_to_image; then the
 * video is cut off the block. */
static int decode_finish(wan_run *p, ds_error *err)
{
    decode_parts d = decode_parts_of(p);
    size_t frame_bytes = 3 * d.plane * d.esize;
    void *frame = malloc(frame_bytes);
    if (!frame)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "wan_video: out of memory for a frame of %d x %d", p->height,
                            p->width);
    ds_tensor one = ds_tensor_wrap(p->cpu, p->d.dtype, 4, SHAPE(1, 3, p->height, p->width),
                                   frame);
    int rc = DS_OK;
    for (size_t t = 0; t < d.frames && rc == DS_OK; t++) {
        for (size_t c = 0; c < 3; c++)
            memcpy((char *)frame + c * d.plane * d.esize,
                   (const char *)p->video + ((c * d.frames + t) * d.plane) * d.esize,
                   d.plane * d.esize);
        rc = ds_vae_output_to_image(&one, p->rgb + t * d.plane * 3, err);
    }
    free(frame);
    if (rc != DS_OK)
        return rc;
    /* A shrink that fails leaves the whole block, still valid. */
    void *kept = realloc(p->decoded, d.video_at);
    if (kept) {
        p->decoded = kept;
        decode_place(p, &d);
    }
    p->video = NULL;
    p->latents_out = p->latents_view;
    p->video_out = ds_tensor_wrap(p->cpu, DS_U8, 4, SHAPE(p->frames, p->height, p->width, 3),
                                  p->rgb);
    return DS_OK;
}

/* vae.decode, then vae_output_to_video. Untiled: one unit, in which the VAE reports its own
 * "decode" progress per latent frame. Tiled: one unit per spatial tile, so other jobs run and
 * a cancellation lands between tiles; each reports ("decode", tile, tiles) and the last one
 * converts the frames. */
static int run_decode(void *run, const ds_step_context *ctx, ds_error *err)
{
    wan_run *p = run;
    int rc;
    if (!p->video && (rc = decode_begin(p, ctx, err)) != DS_OK)
        return rc;
    if (!p->tiled) {
        if ((rc = ds_wan_video_vae_decode(p->vae, ctx, NULL, &p->latents_view, &p->video_view,
                                          err)) != DS_OK)
            return rc;
        return decode_finish(p, err);
    }
    ds_step_context inner = ds__unit_inner_context(ctx);
    if ((rc = ds_wan_video_vae_tiles_next(p->tiles, &inner, err)) != DS_OK)
        return rc;
    int64_t tiles = ds_wan_video_vae_tiles_count(p->tiles);
    int64_t done = p->units.next_unit - p->units.steps;
    ds__unit_report(ctx, "decode", (uint64_t)done, (uint64_t)tiles);
    return done < tiles ? DS_OK : decode_finish(p, err);
}

static const ds__unit_ops unit_ops = {run_encode, run_denoise, run_decode};

static int op_advance(ds_pipeline_run *run, const ds_step_context *ctx, ds_error *err)
{
    return ds__unit_runner_advance(&((wan_run *)run)->units, &unit_ops, run, ctx, err);
}

static void op_position(const ds_pipeline_run *run, uint64_t *done, uint64_t *total)
{
    ds__unit_runner_position(&((const wan_run *)run)->units, done, total);
}

static uint64_t op_final_units(const ds_pipeline_run *run)
{
    const wan_run *p = (const wan_run *)run;
    return p->units.decode_units > 1 ? (uint64_t)p->units.decode_units : 1;
}

static const ds_tensor *op_output(const ds_pipeline_run *run, size_t index)
{
    const wan_run *p = (const wan_run *)run;
    const ds_tensor *t = index == OUTPUT_VIDEO ? &p->video_out : &p->latents_out;
    return t->data ? t : NULL;
}

static size_t op_results(const ds_pipeline_run *run, ds_pipeline_result *out)
{
    const wan_run *p = (const wan_run *)run;
    out[0] = (ds_pipeline_result){"seed", 1, p->seed, 0};
    out[1] = (ds_pipeline_result){"steps", 1, (uint64_t)p->d.schedule.count, 0};
    out[2] = (ds_pipeline_result){"height", 1, (uint64_t)p->height, 0};
    out[3] = (ds_pipeline_result){"width", 1, (uint64_t)p->width, 0};
    out[4] = (ds_pipeline_result){"num_frames", 1, (uint64_t)p->frames, 0};
    out[5] = (ds_pipeline_result){"encode_s", 0, 0, p->units.encode_s};
    out[6] = (ds_pipeline_result){"denoise_s", 0, 0, p->units.denoise_s};
    out[7] = (ds_pipeline_result){"decode_s", 0, 0, p->units.decode_s};
    return 8;
}

static void op_describe_position(const ds_pipeline_run *run, char *buf, size_t size)
{
    ds__unit_runner_describe(run ? &((const wan_run *)run)->units : NULL, buf, size);
}

static double op_output_pixels(const ds_pipeline_run *run)
{
    const wan_run *p = (const wan_run *)run;
    return (double)p->frames * (double)p->height * (double)p->width;
}

/* A coarse upper bound for admission, from the request alone: the run's state between units
 * (latents, predictions, both contexts, the frames), and the largest per-unit transient of the
 * three models: the DiT's and the text encoder's bounded by their widest activations times the
 * buffers they keep live (their models are not at hand here), the VAE's decode and encode by
 * the VAE's own bound (models/memory_estimate.h) with the decoded float video, or the float
 * videos the encode reads. */
static int op_estimate_memory(const ds_pipeline_args *args, const ds_pipeline_memory_args *m,
                              ds_memory_need *need, char *what, size_t what_size, ds_error *err)
{
    const ds_pipeline_value *v = args->values;
    const vae_kind *vk = vae_kind_of(args->models[ROLE_VAE]);
    uint64_t f = (uint64_t)vk->factor;
    uint64_t frames = (uint64_t)round_frames((int)v[PARAM_FRAMES].i);
    uint64_t h = (uint64_t)round_size((int)v[PARAM_HEIGHT].i, 2 * vk->factor);
    uint64_t w = (uint64_t)round_size((int)v[PARAM_WIDTH].i, 2 * vk->factor);
    uint64_t es = ds_dtype_size(args->dtype == DS_F32 ? DS_F32 : DS_BF16);
    uint64_t lt = (frames - 1) / TIME_FACTOR + 1, lh = h / f, lw = w / f;
    uint64_t latents = (uint64_t)vk->z_dim * lt * lh * lw * es;
    uint64_t context = (uint64_t)SEQ_LEN * 4096 * es;
    uint64_t pixels = frames * h * w;
    uint64_t threads = m->threads > 0 ? (uint64_t)m->threads : 1;
    int vace = args->inputs[INPUT_VACE_VIDEO] || args->inputs[INPUT_VACE_MASK] ||
               args->inputs[INPUT_VACE_REFERENCE];
    if (args->inputs[INPUT_VACE_REFERENCE])
        latents += latents / lt;
    need->held = (3 + (vace ? 6 : 0)) * latents + 2 * context + pixels * 3 + m->inline_bytes;
    if (args->inputs[INPUT_IMAGE])
        need->held += latents / lt;
    /* The DiT: tokens of 1536 (1.3B) to 5120 (14B) wide, the FFN 3.5 times that, and one
     * attention score row block per thread. */
    uint64_t tokens = lt * (lh / 2) * (lw / 2);
    uint64_t dit = tokens * 5120 * 4 * 16 + threads * tokens * 4 * 64;
    /* The text encoder: 512 tokens of 4096 with the 10240-wide FFN, f32 staging. */
    uint64_t text = (uint64_t)SEQ_LEN * (4096 * 8 + 10240 * 3) * 4;
    /* The VAE's units in the run's tiles (or whole frames). */
    ds_dtype dtype = es == 4 ? DS_F32 : DS_BF16;
    const ds_wan_video_vae_tiling tiling = {v[PARAM_TILE_SIZE_H].i, v[PARAM_TILE_SIZE_W].i,
                                            v[PARAM_TILE_STRIDE_H].i, v[PARAM_TILE_STRIDE_W].i};
    const ds_wan_video_vae_tiling *tiles = v[PARAM_TILED].i ? &tiling : NULL;
    uint64_t decode = 0, video = 0, encode = 0, encoded = 0;
    int rc = ds_memory_wan_vae(args->models[ROLE_VAE], 1, 1, (int64_t)lt, (int64_t)lh,
                               (int64_t)lw, tiles, dtype, m->threads, &decode, &video, err);
    /* The encode unit's videos: input_video's or VACE's frames, or input_image alone. */
    int64_t encoded_frames = args->inputs[INPUT_VIDEO] || vace ? (int64_t)frames
                             : args->inputs[INPUT_IMAGE]       ? 1
                                                               : 0;
    if (rc == DS_OK && encoded_frames)
        rc = ds_memory_wan_vae(args->models[ROLE_VAE], 0, 1, encoded_frames, (int64_t)h,
                               (int64_t)w, tiles, dtype, m->threads, &encode, &encoded, err);
    if (rc != DS_OK)
        return ds_error_prefix(err, "wan_video: ");
    /* The decode unit's float video; the encode unit's float videos (input, mask, inactive
     * and reactive for VACE) and their latents. */
    uint64_t vae = decode + video;
    uint64_t encode_unit = encoded_frames ? encode + encoded +
                                                (uint64_t)encoded_frames * h * w * 3 * es *
                                                    (vace ? 4 : 1)
                                          : 0;
    vae = vae > encode_unit ? vae : encode_unit;
    uint64_t peak = dit > text ? dit : text;
    need->peak = peak > vae ? peak : vae;
    snprintf(what, what_size, "wan_video %llu frames of %llux%llu (height x width), %s",
             (unsigned long long)frames, (unsigned long long)h, (unsigned long long)w,
             ds_dtype_name(args->dtype));
    return DS_OK;
}

static void op_free(ds_pipeline_run *run) { run_free((wan_run *)run); }

/* ---- the pipeline's table (pipelines/pipeline.h) ---- */

static const ds_pipeline_role roles[] = {
    [ROLE_TEXT_ENCODER] = {"text_encoder", "wan_video_text_encoder", TEXT_ENCODER_CLASS, 1},
    [ROLE_DIT] = {"dit", "wan_video_dit", DIT_CLASS, 1},
    [ROLE_VAE] = {"vae", "wan_video_vae", VAE_CLASS, 1, VAE38_CLASS},
    [ROLE_VACE] = {"vace", "wan_video_vace", VACE_CLASS, 0},
};

/* The defaults are upstream's __call__ defaults. */
static const ds_pipeline_param params[] = {
    DS_PIPELINE_DENOISING_PARAMS("50", "5", "480", "832", "16 (32 with the Wan2.2 VAE)"),
    [PARAM_FRAMES] = {"num_frames", DS_PIPELINE_INT, 1, FRAMES_MAX, 0, "81",
                      "frames, rounded up to 4k + 1"},
    [PARAM_SHIFT] = {"sigma_shift", DS_PIPELINE_NUMBER, -INFINITY, INFINITY, 0, "5",
                     "the FlowMatch Wan schedule's shift"},
    [PARAM_STRENGTH] = {"denoising_strength", DS_PIPELINE_NUMBER, 0, 1, 1, "1",
                        "video-to-video strength; below 1 needs input_video"},
    [PARAM_VACE_SCALE] = {"vace_scale", DS_PIPELINE_NUMBER, -INFINITY, INFINITY, 0, "1",
                          "scale of the VACE hints added to the DiT's stream"},
    [PARAM_TILED] = {"tiled", DS_PIPELINE_INT, 0, 1, 0, "1",
                     "1: the VAE encodes and decodes in blended spatial tiles; 0: whole frames"},
    [PARAM_TILE_SIZE_H] = {"tile_size_h", DS_PIPELINE_INT, 1, TILE_MAX, 0, "30",
                           "VAE tile height in latent units (8 pixels; 16 with the Wan2.2 VAE)"},
    [PARAM_TILE_SIZE_W] = {"tile_size_w", DS_PIPELINE_INT, 1, TILE_MAX, 0, "52",
                           "VAE tile width in latent units"},
    [PARAM_TILE_STRIDE_H] = {"tile_stride_h", DS_PIPELINE_INT, 1, TILE_MAX, 0, "15",
                             "VAE tile stride in height, latent units (at most tile_size_h)"},
    [PARAM_TILE_STRIDE_W] = {"tile_stride_w", DS_PIPELINE_INT, 1, TILE_MAX, 0, "26",
                             "VAE tile stride in width, latent units (at most tile_size_w)"},
};

static const ds_pipeline_tensor inputs[] = {
    [INPUT_VIDEO] = {"input_video",
                     "[T, H, W, 3] u8 RGB frames at the output size and frame count: "
                     "video-to-video",
                     NULL, 0, 1},
    [INPUT_VACE_VIDEO] = {"vace_video",
                          "[T, H, W, 3] u8 RGB frames at the output size, T >= num_frames (the "
                          "first num_frames used): VACE's conditioning video",
                          "vace", 0, 1},
    [INPUT_VACE_MASK] = {"vace_video_mask",
                         "[T, H, W, 3] u8 like vace_video: 255 where VACE generates, 0 where it "
                         "keeps vace_video (the first channel gives the mask latents)",
                         "vace", 0, 1},
    [INPUT_VACE_REFERENCE] = {"vace_reference_image",
                              "[H, W, 3] u8 RGB at the output size: VACE's reference frame",
                              "vace", 0, 0},
    [INPUT_IMAGE] = {"input_image",
                     "[H, W, 3] u8 RGB at the output size: the first frame, for a DiT that fuses "
                     "it into the latents (Wan2.2-TI2V-5B image-to-video)",
                     NULL, 0, 0},
};

static const ds_pipeline_tensor outputs[] = {
    [OUTPUT_VIDEO] = {"video", "[T, H, W, 3] u8 RGB frames, encoded as the request asks", NULL,
                      0, 1},
    [OUTPUT_LATENTS] = {"latents",
                        "[1, z, (T - 1) / 4 + 1, H/f, W/f] in the compute dtype (z 16 and f 8, "
                        "or 48 and 16 with the Wan2.2 VAE): the final latents",
                        NULL, 0, 0},
};

static const ds_pipeline_class_step class_steps[] = {
    {TEXT_ENCODER_CLASS,
     DS__ENCODE_PROMPT_STEP(encode_prompt_step, encode_prompt_memory,
                            "google/umt5-xxl/ with spiece.model beside the model's file, as "
                            "in Wan-AI/Wan2.1-T2V-1.3B",
                            "context [1, 512, dim] (4096): upstream's Wan prompt embedder, zero "
                            "past the prompt's tokens")},
};

const ds_pipeline_def ds__wan_video_pipeline = {
    .name = "wan_video",
    .summary = "Wan2.1 text-to-video, video-to-video and VACE; Wan2.2-TI2V-5B text- and "
               "image-to-video",
    DS_PIPELINE_STANDARD_FIELDS,
    DS_PIPELINE_DENOISING_FIELDS,
    .size_multiple = 2 * VAE38_FACTOR,
    .final_units = op_final_units,
};
