/* What the prompt embedders of this folder's pipelines share (their "encode_prompt" steps on the
 * text encoders): the step's parameters, the tokenizer folder a client names, and a cache of
 * loaded tokenizers.
 *
 * Upstream loads its
 * tokenizer once, in from_pretrained; ours load in a fraction of a second (Wan's SentencePiece
 * model) to about a second (Qwen's 151k-token vocabulary and merges), several times a text
 * encoder's forward on a GPU, so each folder is loaded once and kept for the life of the process
 * (a tokenizer is immutable after load and shared by concurrent steps).
 */
#ifndef DS_PIPELINES_PROMPT_EMBEDDER_H
#define DS_PIPELINES_PROMPT_EMBEDDER_H

#include <pthread.h>
#include <stddef.h>

#include "core/error.h"
#include "models/model_loader.h"
#include "models/model_step.h"

#define DS__TOKENIZER_CACHE_SLOTS 4

/* Loaded tokenizers of one kind by canonical folder. The table is small because an entry may be
 * large (~75 MB for Qwen's); once it is full, further folders are loaded per call. Define one per
 * kind with DS__TOKENIZER_CACHE_INIT. */
typedef struct ds__tokenizer_cache {
    pthread_mutex_t lock;
    int (*load)(const char *dir, void **out, ds_error *err);
    void (*free)(void *tok);
    struct {
        char *dir; /* realpath of the folder; NULL: free slot */
        void *tok;
    } slots[DS__TOKENIZER_CACHE_SLOTS];
} ds__tokenizer_cache;

#define DS__TOKENIZER_CACHE_INIT(load_fn, free_fn) \
    {.lock = PTHREAD_MUTEX_INITIALIZER, .load = (load_fn), .free = (free_fn)}

/* Defines `static ds__tokenizer_cache name` over a tokenizer kind whose library loads with
 * `int load_fn(const char *dir, type **out, ds_error *err)` and frees with
 * `void free_fn(type *tok)`, with the adapters to the cache's untyped functions. */
#define DS__TOKENIZER_CACHE_DEFINE(name, type, load_fn, free_fn)                                 \
    static int name##_load(const char *dir, void **out, ds_error *err)                           \
    {                                                                                            \
        type *tok = NULL;                                                                        \
        int rc = load_fn(dir, &tok, err);                                                        \
        *out = tok;                                                                              \
        return rc;                                                                               \
    }                                                                                            \
    static void name##_free(void *tok) { free_fn(tok); }                                         \
    static ds__tokenizer_cache name = DS__TOKENIZER_CACHE_INIT(name##_load, name##_free)

/* The tokenizer of folder `dir` (`origin` says where the folder came from, for errors: "the
 * \"tokenizer\" parameter", ...). *owned is set when the caller must free it with the cache's
 * free (the table was full). NOT_FOUND / PERMISSION_DENIED for a folder that cannot be
 * resolved; the loader's error otherwise, each prefixed "encode_prompt: tokenizer folder DIR
 * (ORIGIN): ". */
int ds__tokenizer_cache_get(ds__tokenizer_cache *c, const char *dir, const char *origin,
                            const void **out, void **owned, ds_error *err);

/* The tokenizer folder of an encode_prompt step on model `m`, into dir[cap]:
 *  - the "tokenizer" parameter `param` when given: INVALID_ARGUMENT when empty or longer than
 *    cap - 1 bytes; a client-named folder is read by the daemon, so it must pass
 *    ctx->check_path (the model roots);
 *  - else upstream's layout: `subdir` in the folder `levels_up` levels above the model's first
 *    file (1: beside it), as from_pretrained finds it in the model's repository; `layout` says so
 *    for errors ("beside the model files, as upstream lays out Qwen/Qwen-Image; ...").
 * Sets *origin for ds__tokenizer_cache_get. */
int ds__tokenizer_dir(const ds_loaded_model *m, const ds_step_context *ctx, const char *param,
                      int levels_up, const char *subdir, const char *layout, char *dir,
                      size_t cap, const char **origin, ds_error *err);

/* A pipeline's prompt embedder over its text encoder `m`: `prompt` (may be empty) with the
 * tokenizer of folder `tokenizer` (NULL: the pipeline's default layout) into the embeddings it
 * adds to `out`, computed in `dtype`. */
typedef int (*ds__prompt_encoder)(const ds_loaded_model *m, const ds_step_context *ctx,
                                  const char *prompt, const char *tokenizer, ds_dtype dtype,
                                  ds_step_io *out, ds_error *err);

/* The text encoder class's compute dtype for `step` (its "dtype" parameter, else the class's
 * default). */
typedef int (*ds__step_dtype_reader)(const ds_loaded_model *m, const ds_step_io *in,
                                     const char *step, ds_dtype *out, ds_error *err);

/* The "encode_prompt" step a pipeline adds to its text encoder's class: only the parameters
 * prompt (required, may be empty), tokenizer and dtype, no tensors; the dtype as `read_dtype`
 * says, then `encode`. INVALID_ARGUMENT naming the parameter at fault. */
int ds__encode_prompt_step(const ds_loaded_model *m, const ds_step_context *ctx,
                           const ds_step_io *in, ds_step_io *out, ds__step_dtype_reader read_dtype,
                           ds__prompt_encoder encode, ds_error *err);

/* The model step that runs `run_fn` (a wrapper of ds__encode_prompt_step) with the memory
 * bound `memory_fn` (NULL: none), its usage line naming the tokenizer folder's default and the
 * outputs. */
#define DS__ENCODE_PROMPT_STEP(run_fn, memory_fn, tokenizer_default, outputs)                     \
    {.name = "encode_prompt", .run = (run_fn), .memory = (memory_fn),                             \
     .usage = "encode_prompt: prompt (text), tokenizer (folder; default: " tokenizer_default      \
              "), dtype (as forward) -> " outputs}

#endif
