/* What a pipeline (a file of upstream's diffsynth/pipelines/) declares, so that the daemon, the
 * protocol and the client handle every pipeline the same way: the models it runs by role, its
 * parameters with their types, ranges and defaults (the one place where their limits are
 * written), the tensors it takes and gives by name, the phases of the units it advances
 * through, and the operations that run it one unit at a time.
 *
 * pipelines/registry.c lists the pipelines of this build. A pipeline file may also contribute
 * steps to a model class (RunStep on one model) where upstream keeps that logic in the pipeline
 * (e.g. Qwen-Image's prompt embedder over the text encoder): the class itself stays free of
 * pipeline code.
 */
#ifndef DS_PIPELINES_PIPELINE_H
#define DS_PIPELINES_PIPELINE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "models/memory_estimate.h"
#include "models/model_loader.h"
#include "models/model_step.h"

typedef struct ds_pipeline_role {
    const char *role;        /* "dit" */
    const char *model_name;  /* the config rows' model_name a role left out is looked up by */
    const char *model_class; /* upstream's dotted class a model named by id or paths must be */
    int required;
    /* NULL, or a second class the role takes under the same model_name (wan_video's vae: the
     * Wan2.2 VAE beside the Wan2.1 one). */
    const char *also_class;
} ds_pipeline_role;

typedef enum ds_pipeline_param_type {
    DS_PIPELINE_INT,    /* decimal integer in [min, max] */
    DS_PIPELINE_UINT64, /* decimal unsigned 64-bit integer, no range */
    DS_PIPELINE_NUMBER, /* finite number in [min, max] (or (min, max] with min_exclusive) */
} ds_pipeline_param_type;

typedef struct ds_pipeline_param {
    const char *name;
    ds_pipeline_param_type type;
    double min, max;
    int min_exclusive;
    /* The value when the request leaves it out, as text; NULL: drawn at random per request
     * (and reported back), as the daemon does for the seed. */
    const char *default_value;
    const char *help; /* one line for `diffsynth pipelines` and --help */
} ds_pipeline_param;

/* A parsed parameter value: `i` for INT, `u` for UINT64, `d` for NUMBER. */
typedef struct ds_pipeline_value {
    int given;
    int64_t i;
    uint64_t u;
    double d;
} ds_pipeline_value;

typedef struct ds_pipeline_tensor {
    const char *name; /* "input_image" */
    const char *help; /* dtype and shape expected or given */
    /* An input that needs the optional role of this name (NULL: none); an output that is an
     * [H, W, 3] u8 image the daemon sends PNG-encoded under this tensor's name. */
    const char *needs_role;
    int png;
    /* An output that is [T, H, W, 3] u8 frames, which the daemon encodes into the video file the
     * request asks for (MP4, animated WebP or PNG frames, at the request's frame rate) and sends
     * as file bytes under this tensor's name; an input of that shape comes decoded by the client.
     * The pipeline only ever sees and gives raw frames. */
    int video;
} ds_pipeline_tensor;

/* A compute dtype the pipeline runs in; the first listed is the default. */
typedef struct ds_pipeline_dtype {
    const char *name;  /* "bfloat16" */
    const char *alias; /* "bf16" */
    ds_dtype dtype;
} ds_pipeline_dtype;

/* A scalar the pipeline reports when done (the seed it ran with, the size after rounding, the
 * seconds per phase): `u` when is_integer, else `d`. */
typedef struct ds_pipeline_result {
    const char *name;
    int is_integer;
    uint64_t u;
    double d;
} ds_pipeline_result;

/* A step a pipeline file adds to a model class. */
typedef struct ds_pipeline_class_step {
    const char *model_class;
    ds_model_step step;
} ds_pipeline_class_step;

#define DS_PIPELINE_MAX_ROLES 8
#define DS_PIPELINE_MAX_PARAMS 16
#define DS_PIPELINE_MAX_TENSORS 8
#define DS_PIPELINE_MAX_RESULTS 16

/* One run's inputs, indexed as the pipeline's tables; everything borrowed until the first
 * advance returns (the models for the run's lifetime). */
typedef struct ds_pipeline_args {
    const ds_loaded_model *models[DS_PIPELINE_MAX_ROLES]; /* NULL: an optional role left out */
    ds_pipeline_value values[DS_PIPELINE_MAX_PARAMS];     /* each given or defaulted */
    const ds_tensor *inputs[DS_PIPELINE_MAX_TENSORS];     /* NULL: not given */
    const char *prompt;
    const char *negative_prompt;
    const char *tokenizer; /* a folder, NULL: the pipeline's default */
    ds_dtype dtype;
} ds_pipeline_args;

/* What admission needs to size a run before it is queued. */
typedef struct ds_pipeline_memory_args {
    uint64_t inline_bytes; /* the request's inline tensors, copied out of the frame */
    int threads;           /* CPU compute threads */
} ds_pipeline_memory_args;

typedef struct ds_pipeline_run ds_pipeline_run;

typedef struct ds_pipeline_def {
    const char *name;    /* "qwen_image", as upstream's pipelines/qwen_image.py */
    const char *summary; /* one line */
    const ds_pipeline_role *roles;
    size_t role_count;
    const ds_pipeline_param *params;
    size_t param_count;
    const ds_pipeline_tensor *inputs; /* optional input tensors */
    size_t input_count;
    const ds_pipeline_tensor *outputs;
    size_t output_count;
    /* The phases of the units, in order; the one named `repeated_phase` runs once per unit of
     * the repeated kind (the denoising steps). Progress reports use these phase names. */
    const char *const *phases;
    size_t phase_count;
    const char *repeated_phase;
    const ds_pipeline_dtype *dtypes;
    size_t dtype_count;
    const ds_pipeline_class_step *class_steps;
    size_t class_step_count;
    /* The role whose model the memory estimate reads: a run is admitted once it is known. */
    int estimate_role;
    /* The multiple height and width are rounded up to, the largest any of the pipeline's models
     * needs: a side that is a multiple of it is used as given whichever model runs, which is
     * what a client that resizes an input image to the final size must know. 0: sides are
     * used as given. */
    int size_multiple;

    /* Checks the models and the values against each other and sets up the run; nothing is
     * computed yet. INVALID_ARGUMENT names the parameter or model at fault. */
    int (*start)(const ds_pipeline_args *args, ds_pipeline_run **out, ds_error *err);
    /* Runs the next unit: 1 while units remain, 0 after the last, < 0 on error. */
    int (*advance)(ds_pipeline_run *run, const ds_step_context *ctx, ds_error *err);
    void (*position)(const ds_pipeline_run *run, uint64_t *done, uint64_t *total);
    /* After the last unit: output `index` of the table (host memory, owned by the run). */
    const ds_tensor *(*output)(const ds_pipeline_run *run, size_t index);
    /* The scalars to report; returns how many were written (at most DS_PIPELINE_MAX_RESULTS). */
    size_t (*results)(const ds_pipeline_run *run, ds_pipeline_result *out);
    /* Where a run stopped, for a cancellation message ("after 3 of 30 denoising steps");
     * run is NULL before it started. */
    void (*describe_position)(const ds_pipeline_run *run, char *buf, size_t size);
    /* Output pixels the last phase produces, for its ETA from the last run's pace. */
    double (*output_pixels)(const ds_pipeline_run *run);
    /* Optional: the units the last phase takes (a tiled decode's tiles); NULL: one. */
    uint64_t (*final_units)(const ds_pipeline_run *run);
    /* The run's peak memory (models/memory_estimate.h) and a label for refusals. */
    int (*estimate_memory)(const ds_pipeline_args *args, const ds_pipeline_memory_args *m,
                           ds_memory_need *need, char *what, size_t what_size, ds_error *err);
    void (*free)(ds_pipeline_run *run);
} ds_pipeline_def;

/* The fields of a table entry that every pipeline file spells the same way: its arrays under
 * the names roles, params, inputs, outputs and class_steps with their counts, and its
 * operations as op_start ... op_free. An entry lists them with this macro and adds the rest. */
#define DS_PIPELINE_COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define DS_PIPELINE_STANDARD_FIELDS                                                              \
    .roles = roles, .role_count = DS_PIPELINE_COUNT(roles), .params = params,                    \
    .param_count = DS_PIPELINE_COUNT(params), .inputs = inputs,                                  \
    .input_count = DS_PIPELINE_COUNT(inputs), .outputs = outputs,                                \
    .output_count = DS_PIPELINE_COUNT(outputs), .class_steps = class_steps,                      \
    .class_step_count = DS_PIPELINE_COUNT(class_steps), .start = op_start,                       \
    .advance = op_advance, .position = op_position, .output = op_output,                         \
    .results = op_results, .describe_position = op_describe_position,                            \
    .output_pixels = op_output_pixels, .estimate_memory = op_estimate_memory, .free = op_free

/* What upstream's diffusion pipelines share (BasePipeline): they compute in bfloat16 unless
 * asked for float32, run the units before the loop ("encode"), one unit per denoising step
 * ("denoise") and the decoder ("decode"), and peak in the VAE's decode, so their memory
 * estimate reads the model of their role index ROLE_VAE. An entry of that shape lists them
 * with DS_PIPELINE_DENOISING_FIELDS. */
extern const ds_pipeline_dtype ds_pipeline_denoising_dtypes[2];
extern const char *const ds_pipeline_denoising_phases[3];
#define DS_PIPELINE_DENOISING_FIELDS                                                             \
    .phases = ds_pipeline_denoising_phases,                                                      \
    .phase_count = DS_PIPELINE_COUNT(ds_pipeline_denoising_phases), .repeated_phase = "denoise", \
    .dtypes = ds_pipeline_denoising_dtypes,                                                      \
    .dtype_count = DS_PIPELINE_COUNT(ds_pipeline_denoising_dtypes), .estimate_role = ROLE_VAE

/* The parameters upstream's diffusion pipelines share, with one set of limits for every
 * pipeline: far above real use, low enough that a typo fails fast instead of reserving memory
 * for hours of work. A params table lists them with DS_PIPELINE_DENOISING_PARAMS under its
 * indices PARAM_SEED, PARAM_STEPS, PARAM_CFG, PARAM_HEIGHT and PARAM_WIDTH, giving its
 * __call__'s defaults and the multiple its sides are rounded up to, all as text. */
#define DS_PIPELINE_STEPS_MAX 1000
#define DS_PIPELINE_SIZE_MIN 16
#define DS_PIPELINE_SIZE_MAX 8192
#define DS_PIPELINE_STR_(x) #x
#define DS_PIPELINE_STR(x) DS_PIPELINE_STR_(x)
#define DS_PIPELINE_SIDE_PARAM_(side, default_value, multiple)                                   \
    {side, DS_PIPELINE_INT, DS_PIPELINE_SIZE_MIN, DS_PIPELINE_SIZE_MAX, 0, default_value,         \
     "output " side ", rounded up to a multiple of " multiple}
#define DS_PIPELINE_DENOISING_PARAMS(steps, cfg_scale, height, width, multiple)                  \
    [PARAM_SEED] = {"seed", DS_PIPELINE_UINT64, 0, 0, 0, NULL,                                   \
                    "noise seed (PyTorch CPU generator); drawn at random when left out"},        \
    [PARAM_STEPS] = {"steps", DS_PIPELINE_INT, 1, DS_PIPELINE_STEPS_MAX, 0, steps,               \
                     "denoising steps (num_inference_steps)"},                                   \
    [PARAM_CFG] = {"cfg_scale", DS_PIPELINE_NUMBER, -INFINITY, INFINITY, 0, cfg_scale,           \
                   "classifier-free guidance scale; 1 skips the negative prompt"},               \
    [PARAM_HEIGHT] = DS_PIPELINE_SIDE_PARAM_("height", height, multiple),                        \
    [PARAM_WIDTH] = DS_PIPELINE_SIDE_PARAM_("width", width, multiple)

extern const ds_pipeline_def *const ds_pipelines[];
extern const size_t ds_pipeline_count;

/* The pipeline called `name`, or NULL. */
const ds_pipeline_def *ds_pipeline_find(const char *name);

/* "qwen_image, ..." for messages. */
void ds_pipeline_list_names(char *buf, size_t size);

/* Whether a model of `model_class` can take `role` (its model_class or also_class). */
int ds_pipeline_role_takes(const ds_pipeline_role *role, const char *model_class);

/* Index of `role` / `param` / `input` in the pipeline's table, or -1. */
int ds_pipeline_role_index(const ds_pipeline_def *def, const char *role);
int ds_pipeline_param_index(const ds_pipeline_def *def, const char *name);
int ds_pipeline_input_index(const ds_pipeline_def *def, const char *name);

/* Parses `text` as parameter `param` of pipeline `def` (type and range from the table).
 * INVALID_ARGUMENT naming the parameter, the value and what is accepted. */
int ds_pipeline_param_parse(const ds_pipeline_def *def, const ds_pipeline_param *param,
                            const char *text, ds_pipeline_value *out, ds_error *err);

/* Fills values[i] (one per parameter of `def`) with the defaults; a parameter without a default
 * stays not given. */
int ds_pipeline_defaults(const ds_pipeline_def *def, ds_pipeline_value *values, ds_error *err);

/* The compute dtype `text` names ("" is the default). INVALID_ARGUMENT listing them. */
int ds_pipeline_dtype_parse(const ds_pipeline_def *def, const char *text, ds_dtype *out,
                            ds_error *err);

/* The result called `name` among `results`, or NULL. */
const ds_pipeline_result *ds_pipeline_result_find(const ds_pipeline_result *results, size_t count,
                                                  const char *name);

/* "seed, steps, ..." (the parameter or role names) for messages. */
void ds_pipeline_param_names(const ds_pipeline_def *def, char *buf, size_t size);
void ds_pipeline_role_names(const ds_pipeline_def *def, char *buf, size_t size);

/* A step some pipeline adds to `model_class`, or NULL. */
const ds_model_step *ds_pipeline_class_step_find(const char *model_class, const char *step);

/* Appends ", name" for each step the pipelines add to `model_class` (for lists of steps). */
void ds_pipeline_class_step_names(const char *model_class, char *buf, size_t size);

#endif
