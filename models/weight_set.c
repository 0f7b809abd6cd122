/* Binding parameters as operands: views on the CPU, per-set copies elsewhere. */
#include "models/weight_set.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/param_tree.h"

void ds__weight_set_init(ds__weight_set *ws, ds_backend *b, const char *owner)
{
    memset(ws, 0, sizeof *ws);
    ws->backend = b;
    ws->owner = owner;
    ws->on_host = b->host_memory;
}

void ds__weight_set_release(ds__weight_set *ws)
{
    for (size_t i = 0; i < ws->device_count; i++)
        ds_tensor_free(&ws->device[i]);
    for (size_t i = 0; i < ws->host_count; i++)
        free(ws->host[i]);
    ws->device_count = ws->host_count = 0;
}

int ds__weight_find(const ds_loaded_model *m, const char *owner, const char *full,
                    const ds_sd_entry **out, ds_error *err)
{
    const ds_sd_entry *e = ds_state_dict_find(&m->params, full);
    if (!e || e->dict || !e->tensor.data)
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION, "%s: parameter \"%s\" is not loaded",
                            owner, full);
    if (!ds_tensor_view_is_contiguous(&e->tensor))
        return ds_error_set(err, DS_ERR_FAILED_PRECONDITION,
                            "%s: parameter \"%s\" is not contiguous", owner, full);
    *out = e;
    return DS_OK;
}

/* The ops convert the dtypes they take on the fly, so only the others are copied to f32. */
ds_dtype ds__weight_operand_dtype(ds_dtype d, int linear_weight)
{
    int usable = d == DS_F32 || d == DS_BF16 || d == DS_F16 ||
                 (linear_weight && (d == DS_F8_E4M3 || d == DS_F8_E5M2));
    return usable ? d : DS_F32;
}

int ds__weight_bind(const ds_loaded_model *m, ds__weight_set *ws, const char *prefix,
                    const char *name, int linear_weight, ds_tensor *out, ds_error *err)
{
    char full[DS__PARAM_NAME_MAX];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    const ds_sd_entry *e;
    int rc = ds__weight_find(m, ws->owner, full, &e, err);
    if (rc != DS_OK)
        return rc;
    const ds_tensor_view *p = &e->tensor;
    ds_dtype d = p->dtype;
    int usable = ds__weight_operand_dtype(d, linear_weight) == d;
    if (ws->device_count == DS__WEIGHT_SET_MAX || ws->host_count == DS__WEIGHT_SET_MAX)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: too many bound weights", ws->owner);
    ds_tensor host = ds_tensor_wrap(ws->backend, d, p->ndim, p->shape, (void *)p->data);
    if (!usable) {
        uint64_t n = ds_tensor_view_numel(p);
        float *f = malloc(n ? n * sizeof *f : 1);
        if (!f)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                                "%s: out of memory converting \"%s\" to f32", ws->owner, full);
        ds_convert_to_f32(p->data, d, n, f);
        ws->host[ws->host_count++] = f;
        host = ds_tensor_wrap(ws->backend, DS_F32, p->ndim, p->shape, f);
    }
    if (ws->on_host) {
        *out = host;
        return DS_OK;
    }
    ds_tensor *copy = &ws->device[ws->device_count];
    rc = ds_tensor_alloc(ws->backend, host.dtype, host.ndim, host.shape, copy, err);
    if (rc != DS_OK)
        return ds_error_prefix(err, "%s: uploading \"%s\": ", ws->owner, full);
    ws->device_count++;
    if ((rc = ds_tensor_upload(copy, host.data, NULL, err)) != DS_OK)
        return ds_error_prefix(err, "%s: uploading \"%s\": ", ws->owner, full);
    *out = *copy;
    return DS_OK;
}

int ds__weight_bind_linear(const ds_loaded_model *m, ds__weight_set *ws, const char *prefix,
                           const char *name, ds__linear_weights *out, ds_error *err)
{
    char part[DS__PARAM_NAME_MAX];
    int rc;
    snprintf(part, sizeof part, "%s.weight", name);
    if ((rc = ds__weight_bind(m, ws, prefix, part, 1, &out->weight, err)) != DS_OK)
        return rc;
    snprintf(part, sizeof part, "%s.bias", name);
    return ds__weight_bind(m, ws, prefix, part, 0, &out->bias, err);
}

static int is_float(ds_dtype d)
{
    return d == DS_F32 || d == DS_F64 || d == DS_BF16 || d == DS_F16 || d == DS_F8_E4M3 ||
           d == DS_F8_E5M2;
}

ds_dtype ds__weight_offload_dtype(const ds_loaded_model *m, ds_dtype stored)
{
    const ds_vram_place *off = &m->vram_config.offload;
    if (!m->vram_config.managed || off->disk_dtype || off->device == DS_VRAM_DEVICE_DISK ||
        !is_float(stored) || !is_float(off->dtype))
        return DS_DTYPE_INVALID;
    return off->dtype;
}

static void vram_release_hook(void *mgr, const ds_loaded_model *model)
{
    ds_vram_owner_remove(mgr, model);
}

void ds__weight_set_vram_adopt(ds_vram_model *vm, const ds_loaded_model *m, ds_vram_manager *mgr)
{
    /* Steps get the model const because they must not change its weights; the hook is
     * bookkeeping about the model, set on the worker between steps. It runs before vm is
     * keyed to the model: a hook left by a registration removed since, in this same manager,
     * would otherwise remove vm. */
    ds_loaded_model *owner = (ds_loaded_model *)m;
    if (owner->release_hook)
        owner->release_hook(owner->release_hook_ctx, owner);
    ds_vram_model_set_owner(vm, m);
    owner->release_hook = vram_release_hook;
    owner->release_hook_ctx = mgr;
}

ds_dtype ds__weight_linear_compute_dtype(ds_dtype stored, ds_dtype compute)
{
    return compute == DS_F32 && is_float(stored) ? DS_F32 : DS_DTYPE_INVALID;
}

int ds__weight_vram_source(const ds_loaded_model *m, const char *owner, const char *full,
                           int linear_weight, ds_dtype compute, ds_vram_tensor_source *out,
                           ds_error *err)
{
    const ds_sd_entry *e;
    int rc = ds__weight_find(m, owner, full, &e, err);
    if (rc != DS_OK)
        return rc;
    const ds_tensor_view *v = &e->tensor;
    memset(out, 0, sizeof *out);
    out->name = e->name;
    out->dtype = v->dtype;
    out->ndim = v->ndim;
    memcpy(out->shape, v->shape, (size_t)v->ndim * sizeof *v->shape);
    out->data = v->data;
    out->target = ds__weight_operand_dtype(v->dtype, linear_weight);
    ds_dtype fast = ds_vram_config_linear_fast_dtype(&m->vram_config);
    ds_dtype converted = ds__weight_linear_compute_dtype(v->dtype, compute);
    if (linear_weight && fast != DS_DTYPE_INVALID && is_float(v->dtype))
        out->target = fast;
    else if (linear_weight && converted != DS_DTYPE_INVALID)
        out->target = converted;
    out->offload = ds__weight_offload_dtype(m, v->dtype);
    out->disk = m->vram_config.managed && m->vram_config.offload.device == DS_VRAM_DEVICE_DISK;
    return DS_OK;
}
