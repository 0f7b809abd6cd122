/* Seeded models for golden tests: a class's declared parameter tree, cut to what a golden
 * script built, every tensor filled in float32 by tests/tools/seeded_weights.c with the bounds
 * the script's weight_bounds gives it, so the C model equals upstream's bit for bit.
 *
 * The bounds rules live here once per model family, each the twin of a script's function. */
#ifndef DS_TESTS_TOOLS_GOLDEN_MODEL_H
#define DS_TESTS_TOOLS_GOLDEN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "core/state_dict.h"
#include "kernels/backend.h"
#include "models/model_loader.h"

/* (bound, center) of tensor `name` in `params` (the whole tree, for a bias's weight). */
typedef void (*ds_golden_bounds_fn)(const ds_state_dict *params, const char *name,
                                    const ds_tensor_view *view, double *bound, float *center);

/* make_qwen_image_dit_golden.py and make_qwen_image_controlnet_golden.py: 1/sqrt(fan_in) for
 * Linear weights and their biases; the RMSNorm weights (the DiT's q/k norms and txt_norm, the
 * ControlNet's x_rms and y_rms) 1 +- 0.1. */
void ds_golden_bounds_qwen_image_dit(const ds_state_dict *params, const char *name,
                                     const ds_tensor_view *view, double *bound, float *center);
/* make_qwen_image_text_encoder_golden.py: norms 1 +- 0.1, the embedding within 1, Linear
 * weights and biases within 1/sqrt(fan_in). */
void ds_golden_bounds_qwen_image_text_encoder(const ds_state_dict *params, const char *name,
                                              const ds_tensor_view *view, double *bound,
                                              float *center);

/* make_wan_text_encoder_golden.py: T5 layer norm weights 1 +- 0.1, the token embedding and
 * the relative position tables within 1, Linear weights within 1/sqrt(fan_in). */
void ds_golden_bounds_wan_text_encoder(const ds_state_dict *params, const char *name,
                                       const ds_tensor_view *view, double *bound,
                                       float *center);

/* make_qwen_image_vae_golden.py: RMS gammas 1 +- 0.1, conv weights and biases within
 * 1/sqrt(fan_in), fan_in = Cin * prod(kernel) of the conv. */
void ds_golden_bounds_qwen_image_vae(const ds_state_dict *params, const char *name,
                                     const ds_tensor_view *view, double *bound, float *center);

/* make_wan_video_dit_golden.py (weight_range): img_emb.emb_pos 0 +- 0.5; modulation tables
 * 0 +- 0.1; weights of rank 2
 * or more (Linear, Conv) and their biases within 1/sqrt(prod(weight.shape[1:])); other 1-D
 * weights (RMSNorm and LayerNorm scales) 1 +- 0.1 and LayerNorm biases 0 +- 0.1. */
void ds_golden_bounds_wan_video_dit(const ds_state_dict *params, const char *name,
                                    const ds_tensor_view *view, double *bound, float *center);

typedef struct ds_golden_model_spec {
    const char *model_class;     /* upstream dotted name */
    const char *kwargs_json;     /* NULL: none */
    /* Keeps tensor `name` of the declared tree (NULL: all). */
    int (*keep)(const char *name, void *arg);
    void *keep_arg;
    ds_golden_bounds_fn bounds;
    uint64_t seed;
    /* A 2-D tensor of which only these rows are filled (the rest stay zero and are never
     * touched, so their pages cost nothing): the token embedding, of which a test uses the
     * rows of its prompts' tokens. NULL: none. */
    const char *sparse_name;
    const int64_t *sparse_rows;
    size_t sparse_row_count;
    /* The tree only, no data (enough for checks that run before any compute). */
    int declare_only;
} ds_golden_model_spec;

/* Builds the model (its params own malloc'd f32 buffers). Returns 0 on success, -1 with a
 * message on stderr. */
int ds_golden_model_build(const ds_golden_model_spec *spec, ds_loaded_model *model);
/* Converts every tensor to bf16 in place, as torch's .to(bfloat16). */
void ds_golden_model_to_bf16(ds_loaded_model *model);
void ds_golden_model_free(ds_loaded_model *model);

/* ||got - want|| / ||want|| over want's elements, in float64 (||got - want|| when want is 0). */
double ds_golden_rel_l2(const ds_tensor *got, const ds_tensor *want);

#endif
