/* Steps: what a loaded model can run (RunStep over the socket, pipelines in-process).
 *
 * A step takes named host tensors and scalar parameters and returns named host tensors. Inputs
 * are borrowed (the daemon's request frame or a client's read-only shared-memory region);
 * outputs are allocated by the step with ds_step_io_add_tensor and owned by the io. The step
 * computes on ctx->backend, polls ctx->cancelled at block boundaries (returning CANCELLED), and
 * reports progress through ctx->progress.
 *
 * Every input a step reads is checked first: a missing or unknown name, a wrong dtype or shape
 * is INVALID_ARGUMENT naming the tensor and what was expected, before any compute.
 */
#ifndef DS_MODELS_MODEL_STEP_H
#define DS_MODELS_MODEL_STEP_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "kernels/backend.h"
#include "vram/vram_manager.h"

struct ds_loaded_model;
struct ds_memory_step_args;

typedef struct ds_step_tensor {
    char *name;       /* owned */
    ds_tensor tensor; /* host memory (a CPU-backend tensor) */
    void *owned;      /* the data when the io owns it (free()), NULL when borrowed */
} ds_step_tensor;

typedef struct ds_step_param {
    char *name;    /* owned */
    double number; /* numeric value (also set for "true"/"false" as 1/0) */
    char *text;    /* owned: the value as given */
} ds_step_param;

typedef struct ds_step_io {
    ds_step_tensor *tensors;
    size_t tensor_count, tensor_capacity;
    ds_step_param *params;
    size_t param_count, param_capacity;
} ds_step_io;

/* Another loaded model a step may use, by role (e.g. "controlnet" for a DiT step). */
typedef struct ds_step_aux_model {
    const char *role;
    const struct ds_loaded_model *model;
} ds_step_aux_model;

typedef struct ds_step_context {
    ds_backend *backend;               /* where the step computes */
    /* Nonzero when the request was cancelled; polled between blocks. NULL: never. */
    int (*cancelled)(void *user);
    /* Progress within the step (e.g. block i of N). NULL: not reported. */
    void (*progress)(void *user, const char *phase, uint64_t done, uint64_t total);
    void *user;
    const ds_step_aux_model *aux;
    size_t aux_count;
    /* The pool's VRAM manager over `backend` (borrowed), or NULL: weights bound as before
     * (views on the CPU, one block uploaded at a time elsewhere). A step registers its model's
     * units on first use, keyed to the model, and streams them through the manager's budget;
     * results are bit-identical either way. The manager must outlive every model run with it
     * (ds_loaded_model_free drops the model's units from it). */
    ds_vram_manager *vram;
    /* Without `vram`: a manager over `backend` (host memory) that only keeps weights converted
     * once, or NULL. A forward computing in f32 from weights stored in another dtype (bf16
     * files at f32) registers its model there and acquires them converted, instead of widening
     * them at every call, while all of them so converted fit its budget; a model with nothing
     * to convert never touches it, and activations are not counted in it. Results are
     * bit-identical either way; the same lifetime rule as `vram` holds. */
    ds_vram_manager *convert;
    /* A path a client named (a tokenizer folder, ...) must pass this before the step reads it:
     * the daemon confines such paths to its model roots, as it does the model files
     * (PERMISSION_DENIED otherwise). NULL: no check (in-process callers, tests). */
    int (*check_path)(void *user, const char *path, ds_error *err);
} ds_step_context;

/* A step's memory bound, so that the daemon admits a RunStep only when it fits
 * (models/memory_estimate.h): from the step's inputs as the request declares them, *peak = the
 * activations while it runs, *out_bytes = its outputs. */
typedef int ds_step_memory_fn(const struct ds_memory_step_args *a, uint64_t *peak,
                              uint64_t *out_bytes, ds_error *err);

typedef struct ds_model_step {
    const char *name;  /* "forward", "encode_prompt", ... */
    /* One line for --help and errors: its inputs, parameters and outputs. */
    const char *usage;
    int (*run)(const struct ds_loaded_model *model, const ds_step_context *ctx,
               const ds_step_io *in, ds_step_io *out, ds_error *err);
    /* NULL: no bound, and the daemon refuses the step. */
    ds_step_memory_fn *memory;
} ds_model_step;

/* ---- io helpers ---- */

void ds_step_io_init(ds_step_io *io);
void ds_step_io_free(ds_step_io *io);

/* Adds a tensor (name copied). `owned`: data the io frees with free() (NULL: borrowed).
 * ALREADY_EXISTS on a duplicate name. */
int ds_step_io_add_tensor(ds_step_io *io, const char *name, ds_tensor tensor, void *owned,
                          ds_error *err);
/* Allocates a host tensor of this dtype and shape owned by the io; *out points into the io
 * (valid until the next add). */
int ds_step_io_new_tensor(ds_step_io *io, ds_backend *cpu, const char *name, ds_dtype dtype,
                          int ndim, const int64_t *shape, ds_tensor **out, ds_error *err);
/* Adds a parameter from its text ("0.5", "true", "euler"). ALREADY_EXISTS on a duplicate. */
int ds_step_io_add_param(ds_step_io *io, const char *name, const char *text, ds_error *err);

const ds_tensor *ds_step_io_tensor(const ds_step_io *io, const char *name);
const ds_step_param *ds_step_io_param(const ds_step_io *io, const char *name);
/* A scale-like parameter: `p` (may be NULL: *value stays) into *value; INVALID_ARGUMENT
 * "<phase>: parameter "<name>" is "<text>", expected a finite number" when it is not finite. */
int ds_step_param_finite(const ds_step_param *p, const char *phase, float *value, ds_error *err);

/* INVALID_ARGUMENT naming the first tensor or parameter whose name is not in `known`
 * (NULL-terminated), listing the accepted names. */
int ds_step_io_check_names(const ds_step_io *in, const char *step, const char *const *known,
                           ds_error *err);

/* Checks input `name`: present (unless optional, then *out = NULL), dtype one of
 * dtypes[0..dtype_count), rank `ndim`, and each dim equal to shape[i] unless shape[i] < 0
 * (any). The message names the tensor, what it is and what was
 * expected: `forward: input "latents" is [1, 16, 7, 8] f32, expected [B, 16, H, W] with H and W
 * even`. `expected` is that human description. */
int ds_step_io_require(const ds_step_io *in, const char *step, const char *name, int optional,
                       const ds_dtype *dtypes, size_t dtype_count, int ndim, const int64_t *shape,
                       const char *expected, const ds_tensor **out, ds_error *err);

/* The step of a class by name; NULL when it has none. */
const ds_model_step *ds_model_step_find(const ds_model_step *steps, size_t count, const char *name);

#endif
