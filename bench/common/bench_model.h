/* bench/common/bench_model: models and inputs the model benches build in memory, and the line
 * that says which GEMM libraries ran. A model is its class's declared tree with every tensor
 * tiled from a fixed table of uniform values: that fills tens of GB at memcpy speed while
 * timing like real weights (no zeros, no denormals); the Python anchors fill theirs with the
 * same distributions by the same naming rule. */
#ifndef DS_BENCH_MODEL_H
#define DS_BENCH_MODEL_H

#include <stdint.h>

/* The model benches create their backend and print its GEMM line too. */
#include "bench/common/bench_backend.h"
#include "core/dtype.h"
#include "core/error.h"
#include "kernels/ops.h"
#include "models/model_loader.h"

/* Which declared tensors a bench keeps (NULL keeps all): called with the name and the bench's
 * argument. */
typedef int (*ds_bench_keep_fn)(const char *name, int arg);

/* Keeps the Qwen2.5-VL text tower's tensors of layers below `layers`, its embedding and its
 * final norm (the text encoder cut to a few layers at full width). */
int ds_bench_keep_text_layers(const char *name, int layers);

/* Declares cls_name with kwargs (JSON or NULL), keeps the tensors `keep` accepts, and fills
 * each in dtype (f32 or bf16) from the table at a phase given by its name: weights and biases
 * uniform in [-0.02, 0.02], scales of a normalised value (1-D tensors named "norm", and
 * "*.gamma") 1 + that; m->extra_kwargs_json gets a copy of kwargs, as a load records them.
 * *bytes (may be NULL) gets the bytes filled. On error m holds nothing. */
int ds_bench_build_model(const char *cls_name, const char *kwargs, ds_bench_keep_fn keep,
                         int keep_arg, ds_dtype dtype, ds_loaded_model *m, size_t *bytes,
                         ds_error *err);

/* Frees a model from ds_bench_build_model (or one sharing its allocation rule). */
void ds_bench_free_model(ds_loaded_model *m);

/* A host tensor on `cpu` of uniform values of unit variance from seed, in dtype (f32, bf16). */
int ds_bench_input_tensor(ds_backend *cpu, ds_dtype dtype, int ndim, const int64_t *shape,
                          uint64_t seed, ds_tensor *out, ds_error *err);

#endif
