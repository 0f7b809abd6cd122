/* What every pipeline of this folder shares to run as a resumable job (upstream's
 * BasePipeline.unit_runner and its __call__ loop, cut at unit boundaries): unit 0 encodes,
 * units 1..steps are the denoising steps, the units after them decode (one, or one per VAE
 * tile when the pipeline says so). The runner counts the units,
 * times each phase, refuses to continue after an error or past the end, and polls cancellation
 * before each unit; the pipeline gives the three kinds of unit as functions.
 */
#ifndef DS_PIPELINES_UNIT_RUNNER_H
#define DS_PIPELINES_UNIT_RUNNER_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "diffusion/flow_match.h"
#include "models/model_loader.h"
#include "models/model_step.h"

typedef struct ds__unit_runner {
    const char *pipeline; /* "qwen_image": the prefix of the runner's messages */
    int steps;            /* denoising steps */
    int decode_units;     /* units the decode takes (a tiled VAE's tiles); 0 counts as 1 */
    int next_unit;        /* 0 = encode, 1..steps = denoise, steps + 1.. = decode */
    int failed;
    double encode_s, denoise_s, decode_s; /* seconds spent in each phase so far */
} ds__unit_runner;

typedef struct ds__unit_ops {
    int (*encode)(void *run, const ds_step_context *ctx, ds_error *err);
    int (*denoise)(void *run, const ds_step_context *ctx, int index, ds_error *err);
    /* Called once per decode unit; the pipeline's decode state says which part is next. */
    int (*decode)(void *run, const ds_step_context *ctx, ds_error *err);
} ds__unit_ops;

/* Runs the next unit of `run`: 1 while units remain, 0 after the last, < 0 on error (CANCELLED
 * when ctx->cancelled said so before the unit; FAILED_PRECONDITION after an earlier error or
 * the end). */
int ds__unit_runner_advance(ds__unit_runner *u, const ds__unit_ops *ops, void *run,
                            const ds_step_context *ctx, ds_error *err);

/* The model's noise prediction for one CFG side (its prompt's encoder outputs) at `timestep`,
 * into pred (the latents' shape and the compute dtype). */
typedef int (*ds__predict_fn)(void *run, const ds_step_context *ctx, const ds_step_io *side,
                              float timestep, void *pred, ds_error *err);

/* What __call__'s denoising loop works on, the same in every pipeline; owned by the run. */
typedef struct ds__denoise_state {
    char *prompt, *negative_prompt, *tokenizer; /* owned copies in one block that starts at
                                                 * prompt; tokenizer may be NULL */
    ds_dtype dtype;              /* the compute dtype */
    double cfg_scale;            /* 1: no negative pass */
    ds_flow_match schedule;      /* set by the pipeline */
    ds_step_io prompt_posi;      /* encode_prompt's outputs for each CFG side */
    ds_step_io prompt_nega;      /* empty when cfg_scale == 1 */
    void *latents;               /* latent_count elements in the compute dtype */
    void *pred_posi, *pred_nega; /* the same: one step's noise predictions (nega NULL without
                                  * CFG), in the block that starts at latents */
    size_t latent_count;
} ds__denoise_state;

/* bytes rounded up to a cache line: where the next part of a block shared by several buffers
 * starts, aligned as well as a block of its own would be for vector loads. */
size_t ds__unit_align(size_t bytes);

/* Copies the prompts (negative_prompt NULL: "", upstream's default) and the tokenizer folder
 * (may be NULL), allocates the latents and predictions. RESOURCE_EXHAUSTED naming `pipeline`;
 * the state is freed with ds__denoise_state_free either way. */
int ds__denoise_state_init(ds__denoise_state *s, const char *pipeline, const char *prompt,
                           const char *negative_prompt, const char *tokenizer, ds_dtype dtype,
                           double cfg_scale, size_t latent_count, ds_error *err);
void ds__denoise_state_free(ds__denoise_state *s);

/* Step `index` at `timestep` (as the model sees it): the positive prediction, and when
 * cfg_scale != 1 (after a cancellation poll) the negative one and cfg_guided_model_fn's
 * nega + cfg_scale * (posi - nega), then scheduler.step, all in the compute dtype; reports
 * ("denoise", index + 1, steps). */
int ds__unit_cfg_denoise(ds__denoise_state *s, const char *pipeline, ds__predict_fn predict,
                         void *run, const ds_step_context *ctx, int index, float timestep,
                         ds_error *err);

/* Units run so far and in all (steps + 1 + decode units). */
void ds__unit_runner_position(const ds__unit_runner *u, uint64_t *done, uint64_t *total);

/* Where a run stopped, for a cancellation message; u is NULL before the run started. */
void ds__unit_runner_describe(const ds__unit_runner *u, char *buf, size_t size);

/* The context sub-models run with: the caller's backend, cancellation and VRAM manager, but no
 * progress of their own (the pipeline reports its units). */
ds_step_context ds__unit_inner_context(const ds_step_context *ctx);

/* ctx->progress(phase, done, total) when set. */
void ds__unit_report(const ds_step_context *ctx, const char *phase, uint64_t done,
                     uint64_t total);

/* CANCELLED ("<pipeline>: cancelled") when ctx->cancelled says so, else DS_OK. */
int ds__unit_cancelled(const ds_step_context *ctx, const char *pipeline, ds_error *err);

/* INVALID_ARGUMENT unless `m` is given and of class `cls`, naming the pipeline and role. */
int ds__unit_check_model(const ds_loaded_model *m, const char *pipeline, const char *role,
                         const char *cls, ds_error *err);

#endif
