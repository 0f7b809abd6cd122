/* What the transformer text encoders share: a token embedding, a stack of layers over one
 * residual stream, a final RMSNorm (transformers' Qwen2_5_VLTextModel.forward and upstream's
 * T5Encoder.forward are both `x = embed(ids); for layer in layers: x = layer(x); x = norm(x)`),
 * and the checks and the "forward" step around that stack. A model file keeps what is its own:
 * its module table, its activations, its layer's forward and how it turns the padding mask
 * into what its attention takes. */
#ifndef DS_MODELS_TEXT_ENCODER_H
#define DS_MODELS_TEXT_ENCODER_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "kernels/backend.h"
#include "models/model_loader.h"
#include "models/model_step.h"
#include "models/module.h"

/* The weights of a text encoder outside its layers; the fields its module table binds. */
typedef struct ds_text_encoder_weights {
    ds_tensor embedding; /* [vocab, dim]: the token embedding */
    ds_tensor norm;      /* [dim]: the final RMSNorm */
} ds_text_encoder_weights;

/* Module table entries that bind into ds_text_encoder_weights: the token embedding (no unit:
 * gathered on the host) and the final norm (unit 0 of its group, ds_text_encoder_norm_units). */
#define DS_TEXT_ENCODER_EMBEDDING(name, vocab, dim)                                          \
    {name, DS_MODULE_EMBEDDING, 2, {vocab, dim}, DS_MODULE_NO_UNIT,                          \
     offsetof(ds_text_encoder_weights, embedding), 0}
#define DS_TEXT_ENCODER_NORM(name, dim)                                                      \
    {name, DS_MODULE_NORM, 1, {dim}, 0, offsetof(ds_text_encoder_weights, norm), 0}
extern const char *const ds_text_encoder_norm_units[1];

/* One residual branch of a pre-norm layer: h += run(rms_norm(h) * norm weight). Both
 * encoders' layers are two of them, the attention's and the MLP's, each its own transfer
 * unit. */
typedef struct ds_text_encoder_branch {
    int unit;    /* the layer group's unit holding the branch's weights, its norm's too */
    size_t norm; /* offsetof the norm's weight in the layer's weights struct */
    /* The branch on `b` from the model's normed input to its branch output (both in `state`),
     * with the layer's weights `weights`. */
    int (*run)(ds_backend *b, const void *weights, void *state, ds_error *err);
} ds_text_encoder_branch;

/* The model's activations for input_ids' [B, S] tokens in `dtype` on `b`, into `state`
 * (zeroed), with what every layer shares: the positions' tables, the padding mask in the form
 * its attention takes. */
typedef int (*ds_text_encoder_prepare_fn)(ds_backend *b, const ds_loaded_model *m,
                                          const ds_tensor *input_ids,
                                          const ds_tensor *attention_mask, ds_dtype dtype,
                                          void *state, ds_error *err);

/* The entry point of a model: hidden_out = encoder(input_ids, attention_mask). */
typedef int (*ds_text_encoder_forward_fn)(const ds_loaded_model *m, const ds_step_context *ctx,
                                          const ds_tensor *input_ids,
                                          const ds_tensor *attention_mask, ds_tensor *hidden_out,
                                          ds_error *err);

typedef struct ds_text_encoder {
    const ds_module_model *modules;
    size_t embed_group;  /* the token embedding alone, bound at ds_text_encoder_weights'
                          * `embedding`, no transfer unit */
    size_t layer_group;  /* the repeated layers */
    size_t norm_group;   /* the final norm alone, bound at `norm`, its unit 0 */
    const char *piece;   /* one layer, in messages: "layer", "block" */
    float norm_eps;      /* every RMSNorm's */
    const ds_text_encoder_branch *branches; /* a layer's, in order */
    size_t branch_count;
    /* In the model's state (its activations), offsetof: */
    size_t residual;      /* ds_tensor [B, S, dim]: h, the residual stream */
    size_t normed;        /* ds_tensor [B, S, dim]: a branch's normed input */
    size_t branch_out;    /* ds_tensor [B, S, dim]: a branch's output */
    size_t layer_weights; /* the layer group's weights struct */
    ds_text_encoder_prepare_fn prepare;
    size_t (*state_bytes)(void *state); /* of the activations on the compute backend */
    void (*state_free)(void *state);    /* also of a zeroed or partly prepared state */
} ds_text_encoder;

/* hidden_out [B, S, dim] = the encoder's output for input_ids [B, S] (i64 or i32, B, S >= 1,
 * each a row of the embedding) and attention_mask (NULL, or [B, S] i64, i32, u8 or bool), over
 * the model's activations `state` (zeroed; freed here). Checks everything before it allocates:
 * INVALID_ARGUMENT naming the tensor and what was expected, or the first id outside the
 * vocabulary; FAILED_PRECONDITION for a tree without layers or a token embedding. Then, on
 * ctx->backend: the token embedding of input_ids, gathered on the host where the table is a
 * view of the file (a device would otherwise need every row for a few hundred) and, when the
 * model's vram_config rests the weights in another dtype, rounded through it as upstream's
 * embedding module holds the table so rounded; each layer, cancellable between any two, with
 * ("forward", layer, layers) progress; the final norm into hidden_out. The activations share
 * the VRAM manager's budget with the weights. */
int ds_text_encoder_forward(const ds_text_encoder *te, const ds_loaded_model *m,
                            const ds_step_context *ctx, const ds_tensor *input_ids,
                            const ds_tensor *attention_mask, ds_tensor *hidden_out, int64_t dim,
                            void *state, ds_error *err);

/* attention_mask's elements as keep flags (1: a valid token, 0: padding) in *keep (malloc'd,
 * the caller frees it; numel(mask) of them), *padded set when some token is padding. */
int ds_text_encoder_keep(const ds_tensor *attention_mask, uint8_t **keep, int *padded,
                         ds_error *err);

/* A gated MLP, both encoders' feed-forward: out = down(act(gate(x)) * up(x)), through gate and
 * up [B, S, ffn] on `b`. */
int ds_text_encoder_gated_mlp(ds_backend *b, const ds_tensor *x, const ds_tensor *gate_weight,
                              ds_activation act, const ds_tensor *up_weight,
                              const ds_tensor *down_weight, ds_tensor *gate, ds_tensor *up,
                              ds_tensor *out, ds_error *err);

/* The compute dtype a step of an encoder runs in: parameter "dtype" (float32 or bfloat16;
 * INVALID_ARGUMENT naming `step` otherwise), else the stored token embedding's when that is f32
 * (a float32 checkpoint), else bf16 (upstream's pipeline dtype). */
int ds_text_encoder_step_dtype(const ds_text_encoder *te, const ds_loaded_model *m,
                               const ds_step_io *in, const char *step, ds_dtype *out,
                               ds_error *err);

/* The "forward" step: input_ids [B, S] (i64 or i32), attention_mask [B, S] (optional), dtype
 * -> hidden_states [B, S, dim] in host memory, through `forward`. */
#define DS_TEXT_ENCODER_FORWARD_USAGE(hidden_shape)                                          \
    "forward: input_ids [B, S] (i64 or i32), attention_mask [B, S] (optional; 0 = padding), "  \
    "dtype (float32 or bfloat16; default bfloat16, float32 for a float32 checkpoint) -> "      \
    "hidden_states " hidden_shape ", after the final norm"
int ds_text_encoder_forward_step(const ds_text_encoder *te, ds_text_encoder_forward_fn forward,
                                 int64_t dim, const ds_loaded_model *m,
                                 const ds_step_context *ctx, const ds_step_io *in,
                                 ds_step_io *out, ds_error *err);

#endif
