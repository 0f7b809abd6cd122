/* Binding a loaded model's parameters as op operands, shared by the forward passes.
 *
 * On the CPU backend a parameter is a view into the mapped file; on another backend it is a
 * copy the set owns until released, so a forward can hold one block's weights at a time. Stored
 * dtypes the ops take (f32, bf16, f16, and fp8 for a linear weight) are used as they are; others
 * (f64, fp8 outside a linear weight) become an f32 copy first. */
#ifndef DS_MODELS_WEIGHT_SET_H
#define DS_MODELS_WEIGHT_SET_H

#include <stddef.h>

#include "core/error.h"
#include "kernels/backend.h"
#include "models/model_loader.h"
#include "vram/vram_manager.h"

#define DS__WEIGHT_SET_MAX 48 /* tensors one set binds: a Qwen-Image DiT block binds 32 */

typedef struct ds__weight_set {
    ds_backend *backend;
    const char *owner;                    /* the class, for messages: "QwenImageDiT" (borrowed) */
    int on_host;                          /* backend memory is host memory: views, no copies */
    ds_tensor device[DS__WEIGHT_SET_MAX]; /* ds_tensor_alloc'd copies, freed on release */
    size_t device_count;
    void *host[DS__WEIGHT_SET_MAX];       /* malloc'd f32 conversions, freed on release */
    size_t host_count;
} ds__weight_set;

typedef struct ds__linear_weights {
    ds_tensor weight; /* [N, K] */
    ds_tensor bias;   /* [N] */
} ds__linear_weights;

/* Parameter `full` of the loaded tree, checked as a forward needs it: FAILED_PRECONDITION
 * (naming `owner` and the parameter) when it is not loaded or not contiguous. */
int ds__weight_find(const ds_loaded_model *m, const char *owner, const char *full,
                    const ds_sd_entry **out, ds_error *err);
/* The dtype a parameter stored as `stored` has as an operand: itself when the ops take it
 * (f32, bf16, f16, and fp8 for a Linear weight), else f32. */
ds_dtype ds__weight_operand_dtype(ds_dtype stored, int linear_weight);

/* An empty set binding for backend `b`. */
void ds__weight_set_init(ds__weight_set *ws, ds_backend *b, const char *owner);
/* Frees every copy the set made; the bound operands are invalid afterwards. */
void ds__weight_set_release(ds__weight_set *ws);

/* Parameter prefix + name as an operand in *out. `linear_weight`: the tensor is a Linear's
 * weight (fp8 allowed). FAILED_PRECONDITION when it is not loaded or not contiguous. */
int ds__weight_bind(const ds_loaded_model *m, ds__weight_set *ws, const char *prefix,
                    const char *name, int linear_weight, ds_tensor *out, ds_error *err);
/* prefix + name + ".weight" and ".bias". */
int ds__weight_bind_linear(const ds_loaded_model *m, ds__weight_set *ws, const char *prefix,
                           const char *name, ds__linear_weights *out, ds_error *err);

/* The dtype a tensor stored as `stored` keeps in the VRAM manager's slow tier (a source's
 * `offload`): the model's vram_config offload dtype when the config is managed, its offload is
 * not on disk and both dtypes are floats; else DS_DTYPE_INVALID (the file's bytes as they are). */
ds_dtype ds__weight_offload_dtype(const ds_loaded_model *m, ds_dtype stored);

/* The dtype a Linear weight stored as `stored` can be kept in, converted once, for a forward
 * computing in `compute` with the same results as the weight used as stored: f32 for an f32
 * forward and any float weight, because under f32 activations the CPU linear widens every other
 * weight dtype to f32 whole and runs the GEMM an f32 weight of that shape runs (so the copy holds
 * exactly what every call would make and is multiplied the same way); DS_DTYPE_INVALID otherwise
 * (a bf16 forward's linear may run a bf16 GEMM on bf16 or fp8 weights, which an f32 copy would
 * change). */
ds_dtype ds__weight_linear_compute_dtype(ds_dtype stored, ds_dtype compute);

/* The VRAM manager's source for parameter `full` (ds__weight_find's checks and errors): its
 * view of the file, its fast-tier dtype (the operand dtype the direct path binds, `linear_weight`
 * as above, or fp8 for a Linear weight when the model's preparing state is fp8:
 * ds_vram_config_linear_fast_dtype, else for a Linear weight the dtype
 * ds__weight_linear_compute_dtype gives for `compute`, DS_DTYPE_INVALID for none) and the
 * model's offload dtype. */
int ds__weight_vram_source(const ds_loaded_model *m, const char *owner, const char *full,
                           int linear_weight, ds_dtype compute, ds_vram_tensor_source *out,
                           ds_error *err);

/* Finishes a model's registration in a VRAM manager, once its units and plan are in: names the
 * model as the units' owner and installs the release hook that drops them when the model is
 * freed (leaving a previous manager first, so a model is registered in one at a time). */
void ds__weight_set_vram_adopt(ds_vram_model *vm, const ds_loaded_model *m, ds_vram_manager *mgr);

#endif
