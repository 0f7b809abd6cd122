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

/* The encode_prompt step's inputs: only the parameters prompt (required, may be empty),
 * tokenizer and dtype, no tensors. *tokenizer is NULL when not given. The step reads dtype
 * itself (its default is the text encoder's). */
int ds__encode_prompt_step_params(const ds_step_io *in, const char **prompt,
                                  const char **tokenizer, ds_error *err);

#endif
