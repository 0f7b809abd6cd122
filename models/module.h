/* A model's modules declared once, as a table, and everything derived from that table.
 *
 * A model file lists its modules (sd.cpp's `blocks["img_mod.1"] = Linear(...)`, upstream's
 * module registrations) in groups: a group is a prefix, once or repeated (the transformer
 * blocks), and its modules in upstream's registration order, each with its kind, its shape
 * (constants, or dims the model reads from its kwargs), the transfer unit it belongs to and the
 * field of the group's weights struct it binds to. From that one table come
 *   - the parameter tree (ds_module_declare), for hashing and load checks;
 *   - the VRAM manager's units, registered on first use with the tensors in table order;
 *   - a unit's weights in the struct, acquired from the manager or, without one, bound from the
 *     loaded tree (views in host memory, uploads elsewhere), so both paths run the same kernels
 *     on the same values and agree bit for bit.
 * Offload policy stays the manager's: a forward only says which unit it uses next. */
#ifndef DS_MODELS_MODULE_H
#define DS_MODELS_MODULE_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/state_dict.h"
#include "kernels/backend.h"
#include "models/model_loader.h"
#include "models/model_step.h"
#include "models/weight_set.h"
#include "vram/vram_manager.h"

typedef enum ds_module_kind {
    DS_MODULE_LINEAR,         /* name.weight [out, in] + name.bias [out]: ds__linear_weights */
    DS_MODULE_LINEAR_NO_BIAS, /* name.weight [out, in]: ds_tensor */
    DS_MODULE_NORM,           /* name.weight [n]: ds_tensor */
    DS_MODULE_EMBEDDING,      /* name.weight [rows, dim]: ds_tensor */
    DS_MODULE_CONV,           /* name.weight [out, in, k...] + name.bias [out]: ds__linear_weights */
    DS_MODULE_CONV_LINEAR,    /* a 1x1 conv run as a Linear over channels: as DS_MODULE_CONV,
                               * its weight bound as a Linear's (fp8 kept, ds__weight_set) */
    DS_MODULE_TENSOR,         /* name itself (a plain nn.Parameter): ds_tensor */
} ds_module_kind;

/* A shape entry or repeat count read from the model's dims[i] (its kwargs) instead of a
 * constant; ds_module_instance resolves them against an instance's own dims instead. */
#define DS_MODULE_DIM(i) (-1 - (int64_t)(i))
/* ds_module.unit of a module the forward never binds through the engine (declared only). */
#define DS_MODULE_NO_UNIT (-1)
/* ds_module.when: declared only when dims[i] is nonzero (an optional submodule). */
#define DS_MODULE_IF(i) ((i) + 1)

typedef struct ds_module {
    const char *name;           /* under the group's prefix: "attn.to_q", "txt_norm" */
    ds_module_kind kind;
    int ndim;                   /* of the weight */
    int64_t shape[DS_MAX_DIMS]; /* the weight's; the bias (if any) is [shape[0]] */
    int unit;                   /* index into the group's units, or DS_MODULE_NO_UNIT */
    size_t offset;              /* offsetof the field in the group's weights struct */
    int when;                   /* 0: always declared; DS_MODULE_IF(i): only when dims[i] != 0 */
} ds_module;

typedef struct ds_module_group {
    const char *prefix;        /* "" or "model.language_model."; a repeated group's has one %lld */
    int64_t repeat;            /* 0: once; n > 0 or DS_MODULE_DIM(i): that many copies, from 0 */
    const ds_module *modules;
    size_t count;
    const char *const *units;  /* transfer unit names, in the order a forward uses them; the
                                * manager's name is prefix + name, without a trailing dot */
    size_t unit_count;
} ds_module_group;

/* One transfer unit: unit `unit` of copy `index` of group `group`. */
typedef struct ds_module_unit_ref {
    size_t group;
    int64_t index;
    int unit;
} ds_module_unit_ref;

typedef struct ds_module_model {
    const char *owner;        /* for messages: "QwenImageDiT" */
    const char *vram_name;    /* the manager's model name when the loaded model has none */
    const ds_module_group *groups; /* in upstream's registration order */
    size_t group_count;
} ds_module_model;

/* The modules of one instance of a module whose widths depend on where it sits (a VAE block
 * at some level): `tmpl`'s n modules with their DS_MODULE_DIM entries read from `dims`, those
 * whose DS_MODULE_IF(i) dim is zero left out (the forward finds their fields zeroed as it
 * zeroed them), into out[*count]. Groups of such instances are built when the model's kwargs
 * are known, each declared once with its own prefix. */
void ds_module_instance(const ds_module *tmpl, size_t n, const int64_t *dims, ds_module *out,
                        size_t *count);

/* Fills `params` with every module's parameters (f32), in table order. */
int ds_module_declare(const ds_module_model *mm, const int64_t *dims, ds_state_dict *params,
                      ds_error *err);

/* Copies of repeated group `group` in the loaded tree: prefix(0), prefix(1), ... while the
 * first parameter of its first module is there. 1 for a group declared once. */
int64_t ds_module_count(const ds_module_model *mm, const ds_loaded_model *m, size_t group);

/* The loaded weight of the module of copy `index` of `group` whose field sits at `offset` of
 * the group's weights struct (the first such); NULL when the tree lacks it. */
const ds_tensor_view *ds_module_find(const ds_module_model *mm, const ds_loaded_model *m,
                                     size_t group, int64_t index, size_t offset);

/* Binds the modules of `unit` (DS_MODULE_NO_UNIT included) of copy `index` of `group` into
 * `weights` through `ws`: views in host memory, copies elsewhere (weight_set.h). An optional
 * module the tree lacks is left zeroed (no data). */
int ds_module_bind(const ds_module_model *mm, const ds_loaded_model *m, ds__weight_set *ws,
                   size_t group, int64_t index, int unit, void *weights, ds_error *err);

/* One forward's use of a loaded model's weights. */
typedef struct ds_module_run {
    const ds_module_model *mm;
    const ds_loaded_model *model;
    ds_vram_model *vram;              /* NULL: weights bound from the loaded tree */
    ds__weight_set ws;                /* the bound weights (no manager) */
    int64_t *counts;                  /* copies of each group in the loaded tree */
    size_t *first_unit;               /* slot of each group's first unit (slots: the groups'
                                       * order, copies, units) */
    const ds_module_unit_ref *order;  /* ds_module_open_ordered's; NULL: the slots' order */
    size_t order_count;
    size_t *manager_index;            /* each slot's unit in the manager; SIZE_MAX: none */
    size_t unit_total;                /* units registered */
    size_t slot_total;               /* units the groups hold */
    size_t held;                      /* the unit acquired now; SIZE_MAX when none */
    size_t reserved;                  /* activation bytes reserved in the manager */
    ds_dtype convert;                 /* while registering: the compute dtype Linear weights are
                                       * converted for (ds__weight_linear_compute_dtype), or
                                       * DS_DTYPE_INVALID for none */
    int converted;                    /* while registering: some Linear weight was converted */
    int convert_only;                 /* `vram` is a model in ds_step_context.convert's manager:
                                       * it holds converted weights, no activations */
} ds_module_run;

/* Starts a forward of `m` on `b`. With a manager the model's units are registered on first
 * use (keyed to the model, dropped by its release hook), and then planned in registration order
 * when `plan_all`. `what` starts messages ("forward"). The run holds memory until
 * ds_module_close (none after a failure). */
int ds_module_open(ds_module_run *r, const ds_module_model *mm, const ds_loaded_model *m,
                   ds_backend *b, ds_vram_manager *mgr, int plan_all, const char *what,
                   ds_error *err);
/* ds_module_open for a forward whose activations are `compute` (f32, bf16, f16). With a manager
 * whose fast tier is host memory (the CPU backend), Linear weights whose stored dtype differs are
 * kept there converted once (ds__weight_linear_compute_dtype) when every unit so converted fits
 * the manager's budget (checked at registration); past it they are registered as stored and
 * streamed, and the linear converts them at each call, with the same results either way. A
 * registration made for another compute dtype is dropped and made again.
 * Without `mgr`, `convert` (ds_step_context.convert, may be NULL) serves the same conversion
 * alone: a model with some Linear weight to convert is registered there when all its units so
 * converted fit that manager's budget, and is otherwise bound from the loaded tree as
 * ds_module_open binds it (views, the linear converting at each call); a model with nothing to
 * convert is always bound so, and never registered. */
int ds_module_open_compute(ds_module_run *r, const ds_module_model *mm,
                           const ds_loaded_model *m, ds_backend *b, ds_vram_manager *mgr,
                           ds_vram_manager *convert, ds_dtype compute, int plan_all,
                           const char *what, ds_error *err);
/* ds_module_open with the manager's units registered in `order` (n of them), the order
 * forwards run them, when that is not the groups' (a module declared before the one that runs
 * first; two directions over one model's weights): each unit at most once, a unit left out is
 * never registered. */
int ds_module_open_ordered(ds_module_run *r, const ds_module_model *mm,
                           const ds_module_unit_ref *order, size_t n, const ds_loaded_model *m,
                           ds_backend *b, ds_vram_manager *mgr, int plan_all, const char *what,
                           ds_error *err);
/* Plans the first n units in registration order (a forward that uses fewer copies of a
 * repeated group than the model holds). */
int ds_module_plan(ds_module_run *r, size_t n, const char *what, ds_error *err);
/* Plans the n units registered from `first` on (one direction of a model with two). */
int ds_module_plan_range(ds_module_run *r, size_t first, size_t n, const char *what,
                         ds_error *err);
/* Makes unit `unit` of copy `index` of group `group` usable in `weights` (the group's weights
 * struct), after ending the unit held before: acquired from the manager, or bound. */
int ds_module_use(ds_module_run *r, size_t group, int64_t index, int unit, void *weights,
                  ds_error *err);
/* Ends the unit held (released to the manager) and frees what was bound. */
int ds_module_done(ds_module_run *r, ds_error *err);
/* Ends a stretch of work whose status is rc: ds_module_done's status when rc is DS_OK, else rc
 * (the unit still released, the bound weights freed). */
int ds_module_end(ds_module_run *r, int rc, ds_error *err);
/* Ends the forward: ds_module_done with errors ignored, and the activations' reservation
 * returned. A zeroed run is fine. */
void ds_module_close(ds_module_run *r);

/* Activation bytes that share the manager's budget with the weights until ds_module_close
 * (nothing without a manager, nor in a manager of converted weights only). RESOURCE_EXHAUSTED
 * when they do not fit. */
int ds_module_reserve(ds_module_run *r, const char *what, size_t bytes, ds_error *err);

/* Makes the activation bytes reserved `bytes` in all (what a stretch of work holds alive,
 * replacing what the stretch before it held). */
int ds_module_reserve_set(ds_module_run *r, const char *what, size_t bytes, ds_error *err);

/* Activations follow one convention in every forward: host tensors in, host tensors out; in
 * host memory (backend->host_memory) they are used in place, elsewhere through a device copy
 * the caller frees. */
/* Host tensor `host` as an operand on `b`: itself, or its upload into *copy. */
int ds_module_input(ds_backend *b, const ds_tensor *host, ds_tensor *copy, ds_tensor *out,
                    ds_error *err);
/* Where a result for host tensor `host` is computed on `b`: itself, or a new *copy of its
 * shape and dtype. */
int ds_module_output(ds_backend *b, const ds_tensor *host, ds_tensor *copy, ds_tensor *out,
                     ds_error *err);
/* Brings a result computed by ds_module_output into `host` (nothing in host memory). */
int ds_module_deliver(ds_backend *b, const ds_tensor *result, const ds_tensor *host,
                      ds_error *err);

/* A NULL-terminated list of activations: DS_TENSORS(&s->q, &s->k, &s->v). */
#define DS_TENSORS(...) ((ds_tensor *const[]){__VA_ARGS__, NULL})
/* Allocates every tensor of `list` on `b` with this dtype and shape. */
int ds_module_alloc(ds_backend *b, ds_dtype dtype, int ndim, const int64_t *shape,
                    ds_tensor *const *list, ds_error *err);
/* Frees every tensor of `list`. */
void ds_module_free_all(ds_tensor *const *list);
/* The same memory under another shape of the same element count. */
ds_tensor ds_module_view(const ds_tensor *t, int ndim, const int64_t *shape);
/* Bytes the tensors hold (those with data: inputs used in place hold none). */
size_t ds_module_bytes(ds_tensor *const *all, size_t n);
/* Frees each of the n tensors (a forward's activations, counted as ds_module_bytes takes them). */
void ds_module_free_n(ds_tensor *const *all, size_t n);
/* INVALID_ARGUMENT "<phase>: <role> "<name>" is <t described>, expected <expected>". */
int ds_module_bad_tensor(const char *phase, const char *role, const char *name,
                         const ds_tensor *t, const char *expected, ds_error *err);

/* Between repeated pieces of a forward: CANCELLED "<what>: cancelled before <piece> i of n"
 * when the context asks, else DS_OK. */
int ds_module_cancelled(const ds_step_context *ctx, const char *what, const char *piece,
                        int64_t i, int64_t n, ds_error *err);
/* Reports piece i (0-based) of n done as (what, i + 1, n) progress. */
void ds_module_progress(const ds_step_context *ctx, const char *what, int64_t i, int64_t n);

#endif
