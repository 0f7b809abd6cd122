/* Helpers the model classes use to declare their parameter trees.
 *
 * Names are built as prefix + name ("transformer_blocks.7." + "attn.to_q"), the way PyTorch
 * joins module paths. Every parameter is declared f32, the dtype upstream creates it with.
 */
#ifndef DS_MODELS_PARAM_TREE_H
#define DS_MODELS_PARAM_TREE_H

#include <stdint.h>

#include "core/error.h"
#include "core/kwargs.h"
#include "core/state_dict.h"

/* Longest parameter name a class builds; longer is a broken internal invariant (INTERNAL). */
#define DS__PARAM_NAME_MAX 256

/* Largest single dimension a kwarg may ask for: far above any real model, low enough that
 * products of a few of them cannot overflow int64. */
#define DS__PARAM_DIM_MAX ((int64_t)1 << 24)

/* Longest list kwarg a class reads. */
#define DS__PARAM_LIST_MAX 64

/* Most repeated blocks (layers) a kwarg may ask for. */
#define DS__PARAM_LAYERS_MAX 10000

/* One parameter prefix + name with the given shape. */
int ds__param(ds_state_dict *params, const char *prefix, const char *name, int ndim,
              const int64_t *shape, ds_error *err);

/* prefix + name + ".weight" [out, in], and ".bias" [out] when `bias`: an nn.Linear. */
int ds__param_linear(ds_state_dict *params, const char *prefix, const char *name, int64_t out,
                     int64_t in, int bias, ds_error *err);

/* prefix + name + ".weight" [out, in, k...] and ".bias" [out]: an nn.ConvNd (always with bias
 * in the classes that use it). */
int ds__param_conv(ds_state_dict *params, const char *prefix, const char *name, int64_t out,
                   int64_t in, int nk, const int64_t *kernel, ds_error *err);

/* prefix + name [n]: a norm's weight vector. */
int ds__param_vector(ds_state_dict *params, const char *prefix, const char *name, int64_t n,
                     ds_error *err);

/* Formats a prefix ("transformer_blocks.%d.") into buf, which holds DS__PARAM_NAME_MAX bytes. */
int ds__param_prefix(char *buf, ds_error *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reads integer kwarg `name` (keeping *value, the default, when absent) and checks that it
 * lies in [min, max]; out of range is INVALID_ARGUMENT naming the class and the kwarg. */
int ds__kwarg_int_range(ds_kwargs *kwargs, const char *owner, const char *name, int64_t min,
                        int64_t max, int64_t *value, ds_error *err);

/* Reads integer-list kwarg `name` into values[0..capacity); *present says whether it was
 * given (then *count holds its length), else values and *count are left alone. */
int ds__kwarg_int_list(ds_kwargs *kwargs, const char *name, int64_t *values, int capacity,
                       int *count, int *present, ds_error *err);

#endif
