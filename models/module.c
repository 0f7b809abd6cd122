/* Module tables: the parameter tree, the VRAM units and the weight binding from one table. */
#include "models/module.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "models/param_tree.h"

static int64_t resolve(int64_t v, const int64_t *dims)
{
    return v < 0 ? dims[-1 - v] : v;
}

static int has_bias(ds_module_kind k)
{
    return k == DS_MODULE_LINEAR || k == DS_MODULE_CONV || k == DS_MODULE_CONV_LINEAR;
}

/* Whether the module's weight is bound as a Linear's (ds__weight_operand_dtype). */
static int linear_weight(ds_module_kind k)
{
    return k == DS_MODULE_LINEAR || k == DS_MODULE_LINEAR_NO_BIAS || k == DS_MODULE_CONV_LINEAR;
}

/* The module's parameter `part` (0: weight, 1: bias) after the prefix. */
static int part_name(const ds_module *mod, int part, char *buf, size_t size)
{
    int n = mod->kind == DS_MODULE_TENSOR
                ? snprintf(buf, size, "%s", mod->name)
                : snprintf(buf, size, "%s.%s", mod->name, part == 0 ? "weight" : "bias");
    return n >= 0 && (size_t)n < size;
}

static int group_prefix(const ds_module_group *g, int64_t index, char *buf, ds_error *err)
{
    if (g->repeat == 0)
        return ds__param_prefix(buf, err, "%s", g->prefix);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    int n = snprintf(buf, DS__PARAM_NAME_MAX, g->prefix, (long long)index);
#pragma GCC diagnostic pop
    if (n < 0 || n >= DS__PARAM_NAME_MAX)
        return ds_error_set(err, DS_ERR_INTERNAL, "parameter prefix too long: %s", g->prefix);
    return DS_OK;
}

int ds_module_declare(const ds_module_model *mm, const int64_t *dims, ds_state_dict *params,
                      ds_error *err)
{
    for (size_t gi = 0; gi < mm->group_count; gi++) {
        const ds_module_group *g = &mm->groups[gi];
        int64_t copies = g->repeat == 0 ? 1 : resolve(g->repeat, dims);
        for (int64_t i = 0; i < copies; i++) {
            char prefix[DS__PARAM_NAME_MAX];
            int rc = group_prefix(g, i, prefix, err);
            if (rc != DS_OK)
                return rc;
            for (size_t k = 0; k < g->count; k++) {
                const ds_module *mod = &g->modules[k];
                if (mod->when && !dims[mod->when - 1])
                    continue;
                int64_t shape[DS_MAX_DIMS];
                for (int d = 0; d < mod->ndim; d++)
                    shape[d] = resolve(mod->shape[d], dims);
                for (int part = 0; part < (has_bias(mod->kind) ? 2 : 1); part++) {
                    char name[DS__PARAM_NAME_MAX];
                    if (!part_name(mod, part, name, sizeof name))
                        return ds_error_set(err, DS_ERR_INTERNAL, "parameter name too long: %s",
                                            mod->name);
                    rc = part == 0 ? ds__param(params, prefix, name, mod->ndim, shape, err)
                                   : ds__param(params, prefix, name, 1, shape, err);
                    if (rc != DS_OK)
                        return rc;
                }
            }
        }
    }
    return DS_OK;
}

int64_t ds_module_count(const ds_module_model *mm, const ds_loaded_model *m, size_t group)
{
    const ds_module_group *g = &mm->groups[group];
    if (g->repeat == 0)
        return 1;
    char part[DS__PARAM_NAME_MAX], prefix[DS__PARAM_NAME_MAX], full[2 * DS__PARAM_NAME_MAX];
    ds_error ignored;
    if (!part_name(&g->modules[0], 0, part, sizeof part))
        return 0;
    for (int64_t n = 0;; n++) {
        if (group_prefix(g, n, prefix, &ignored) != DS_OK)
            return n;
        snprintf(full, sizeof full, "%s%s", prefix, part);
        if (!ds_state_dict_find(&m->params, full))
            return n;
    }
}

/* An optional module (declared only for some kwargs) that this tree lacks. */
static int absent(const ds_loaded_model *m, const char *prefix, const ds_module *mod)
{
    char name[DS__PARAM_NAME_MAX], full[2 * DS__PARAM_NAME_MAX];
    if (!mod->when)
        return 0;
    part_name(mod, 0, name, sizeof name);
    snprintf(full, sizeof full, "%s%s", prefix, name);
    return !ds_state_dict_find(&m->params, full);
}

/* The module's parameters as the manager's sources, appended at src[*n]. Each keeps the dtype
 * the bound path gives it (ds__weight_operand_dtype), or a Linear weight the dtype the linear
 * would convert it to at every call (r->convert), so both paths agree bit for bit. */
static int module_sources(ds_module_run *r, const char *prefix, const ds_module *mod,
                          ds_vram_tensor_source *src, size_t *n, ds_error *err)
{
    for (int part = 0; part < (has_bias(mod->kind) ? 2 : 1); part++) {
        char name[DS__PARAM_NAME_MAX], full[2 * DS__PARAM_NAME_MAX];
        part_name(mod, part, name, sizeof name);
        snprintf(full, sizeof full, "%s%s", prefix, name);
        if (*n == DS__WEIGHT_SET_MAX)
            return ds_error_set(err, DS_ERR_INTERNAL, "%s: too many tensors in one unit",
                                r->mm->owner);
        int lw = part == 0 && linear_weight(mod->kind);
        ds_vram_tensor_source *s = &src[(*n)++];
        int rc = ds__weight_vram_source(r->model, r->mm->owner, full, lw, r->convert, s, err);
        if (rc != DS_OK)
            return rc;
        if (lw && s->target != s->dtype &&
            s->target == ds__weight_linear_compute_dtype(s->dtype, r->convert))
            r->converted = 1;
    }
    return DS_OK;
}

/* Registers unit `unit` of copy `index` of group `gi` as the manager's next unit. */
static int register_unit(ds_module_run *r, size_t gi, int64_t index, int unit, ds_error *err)
{
    const ds_loaded_model *m = r->model;
    const ds_module_group *g = &r->mm->groups[gi];
    ds_vram_tensor_source src[DS__WEIGHT_SET_MAX];
    char prefix[DS__PARAM_NAME_MAX], name[2 * DS__PARAM_NAME_MAX];
    size_t n = 0, slot = r->first_unit[gi] + (size_t)index * g->unit_count + (size_t)unit;
    int rc = group_prefix(g, index, prefix, err);
    for (size_t k = 0; rc == DS_OK && k < g->count; k++)
        if (g->modules[k].unit == unit && !absent(m, prefix, &g->modules[k]))
            rc = module_sources(r, prefix, &g->modules[k], src, &n, err);
    if (rc != DS_OK)
        return rc;
    snprintf(name, sizeof name, "%s%s", prefix, g->units[unit]);
    size_t len = strlen(name);
    if (len && name[len - 1] == '.')
        name[len - 1] = 0;
    if ((rc = ds_vram_unit_add(r->vram, name, src, n, &r->manager_index[slot], err)) != DS_OK)
        return rc;
    r->unit_total++;
    return DS_OK;
}

static int register_units_as(ds_module_run *r, ds_vram_manager *mgr, ds_dtype compute,
                             int plan_all, const char *what, ds_error *err)
{
    const ds_loaded_model *m = r->model;
    const ds_module_model *mm = r->mm;
    r->unit_total = 0;
    int rc = ds_vram_model_add(mgr, m->model_name ? m->model_name : mm->vram_name,
                               compute != DS_DTYPE_INVALID ? compute : DS_F32, &r->vram, err);
    if (r->order) {
        for (size_t k = 0; rc == DS_OK && k < r->order_count; k++) {
            const ds_module_unit_ref *u = &r->order[k];
            if (u->group >= mm->group_count || u->index < 0 ||
                u->index >= r->counts[u->group] || u->unit < 0 ||
                (size_t)u->unit >= mm->groups[u->group].unit_count ||
                r->manager_index[r->first_unit[u->group] +
                                 (size_t)u->index * mm->groups[u->group].unit_count +
                                 (size_t)u->unit] != SIZE_MAX)
                rc = ds_error_set(err, DS_ERR_INTERNAL,
                                  "%s: unit order entry %zu (group %zu, copy %lld, unit %d) is "
                                  "outside the model's units or repeats one",
                                  mm->owner, k, u->group, (long long)u->index, u->unit);
            else
                rc = register_unit(r, u->group, u->index, u->unit, err);
        }
    } else {
        for (size_t gi = 0; rc == DS_OK && gi < mm->group_count; gi++)
            for (int64_t i = 0; rc == DS_OK && i < r->counts[gi]; i++)
                for (size_t u = 0; rc == DS_OK && u < mm->groups[gi].unit_count; u++)
                    rc = register_unit(r, gi, i, (int)u, err);
    }
    if (rc == DS_OK && plan_all)
        rc = ds_module_plan(r, r->unit_total, what, err);
    if (rc != DS_OK) {
        ds_vram_model_remove(r->vram);
        r->vram = NULL;
        return ds_error_prefix(err, "%s: registering the weights with the VRAM manager: ", what);
    }
    ds__weight_set_vram_adopt(r->vram, m, mgr);
    return DS_OK;
}

/* Registers the model's units. A forward that names its compute dtype on a backend whose fast
 * tier is host memory gets its Linear weights converted once into that tier
 * (ds__weight_linear_compute_dtype) when all of them fit the budget so converted; otherwise, or
 * when they would not fit, they are registered as stored and the linear converts them at every
 * call, as it would without a manager. Both give the same results. */
static int register_units(ds_module_run *r, ds_vram_manager *mgr, ds_dtype compute, int plan_all,
                          const char *what, ds_error *err)
{
    r->convert = r->ws.on_host ? compute : DS_DTYPE_INVALID;
    r->converted = 0;
    int rc = register_units_as(r, mgr, compute, plan_all, what, err);
    if (rc != DS_OK || !r->converted)
        return rc;
    ds_vram_stats st;
    ds_vram_model_stats ms;
    ds_vram_stats_get(mgr, &st);
    ds_vram_model_stats_get(r->vram, &ms);
    if (st.budget_bytes == DS_VRAM_UNLIMITED || ms.fast_bytes_total <= st.budget_bytes)
        return DS_OK;
    ds_vram_model_remove(r->vram);
    r->vram = NULL;
    for (size_t slot = 0; slot < r->slot_total; slot++)
        r->manager_index[slot] = SIZE_MAX;
    r->convert = DS_DTYPE_INVALID;
    r->converted = 0;
    return register_units_as(r, mgr, compute, plan_all, what, err);
}

/* Whether a registration for `compute` would keep some Linear weight converted: one stored in
 * another float dtype that ds__weight_linear_compute_dtype converts (the model's vram_config
 * naming no fast-tier dtype of its own). A hash lookup per Linear weight, no registration. */
static int converts_some(const ds_module_run *r, ds_dtype compute)
{
    const ds_module_model *mm = r->mm;
    const ds_loaded_model *m = r->model;
    if (ds_vram_config_linear_fast_dtype(&m->vram_config) != DS_DTYPE_INVALID)
        return 0;
    for (size_t gi = 0; gi < mm->group_count; gi++) {
        const ds_module_group *g = &mm->groups[gi];
        for (int64_t i = 0; i < r->counts[gi]; i++) {
            char prefix[DS__PARAM_NAME_MAX], name[DS__PARAM_NAME_MAX];
            char full[2 * DS__PARAM_NAME_MAX];
            ds_error ignored;
            if (group_prefix(g, i, prefix, &ignored) != DS_OK)
                return 0;
            for (size_t k = 0; k < g->count; k++) {
                const ds_module *mod = &g->modules[k];
                if (mod->unit == DS_MODULE_NO_UNIT || !linear_weight(mod->kind))
                    continue;
                part_name(mod, 0, name, sizeof name);
                snprintf(full, sizeof full, "%s%s", prefix, name);
                const ds_sd_entry *e = ds_state_dict_find(&m->params, full);
                if (!e || e->dict)
                    continue;
                ds_dtype to = ds__weight_linear_compute_dtype(e->tensor.dtype, compute);
                if (to != DS_DTYPE_INVALID && to != e->tensor.dtype)
                    return 1;
            }
        }
    }
    return 0;
}

/* Registers the model in `convert`, a manager that holds converted weights only, when some
 * Linear weight converts and every unit so converted fits its budget; otherwise leaves r
 * binding from the loaded tree (r->vram NULL), as without a manager. A model with nothing to
 * convert costs one scan and no registration: its weights stay views of the file. */
static int register_converted(ds_module_run *r, ds_vram_manager *convert, ds_dtype compute,
                              int plan_all, const char *what, ds_error *err)
{
    if (!converts_some(r, compute))
        return DS_OK;
    r->convert = compute;
    r->converted = 0;
    int rc = register_units_as(r, convert, compute, plan_all, what, err);
    if (rc != DS_OK)
        return rc;
    ds_vram_stats st;
    ds_vram_model_stats ms;
    ds_vram_stats_get(convert, &st);
    ds_vram_model_stats_get(r->vram, &ms);
    if (r->converted &&
        (st.budget_bytes == DS_VRAM_UNLIMITED || ms.fast_bytes_total <= st.budget_bytes)) {
        r->convert_only = 1;
        return DS_OK;
    }
    ds_vram_model_remove(r->vram);
    r->vram = NULL;
    for (size_t slot = 0; slot < r->slot_total; slot++)
        r->manager_index[slot] = SIZE_MAX;
    r->unit_total = r->slot_total;
    r->convert = DS_DTYPE_INVALID;
    r->converted = 0;
    return DS_OK;
}

/* Each slot's manager index, read back from a registration made by an earlier run: the
 * manager keeps units in registration order, which is the slots' order or the unit order. */
static void known_units(ds_module_run *r)
{
    const ds_module_model *mm = r->mm;
    size_t k = 0;
    if (r->order) {
        for (; k < r->order_count; k++) {
            const ds_module_unit_ref *u = &r->order[k];
            if (u->group < mm->group_count && u->index >= 0 && u->index < r->counts[u->group] &&
                u->unit >= 0 && (size_t)u->unit < mm->groups[u->group].unit_count)
                r->manager_index[r->first_unit[u->group] +
                                 (size_t)u->index * mm->groups[u->group].unit_count +
                                 (size_t)u->unit] = k;
        }
    } else {
        for (size_t slot = 0; slot < r->slot_total; slot++)
            r->manager_index[slot] = k++;
    }
    r->unit_total = k;
}

void ds_module_instance(const ds_module *tmpl, size_t n, const int64_t *dims, ds_module *out,
                        size_t *count)
{
    *count = 0;
    for (size_t i = 0; i < n; i++) {
        if (tmpl[i].when && !dims[tmpl[i].when - 1])
            continue;
        ds_module *mod = &out[(*count)++];
        *mod = tmpl[i];
        mod->when = 0;
        for (int d = 0; d < mod->ndim; d++)
            mod->shape[d] = resolve(mod->shape[d], dims);
    }
}

static int open_run(ds_module_run *r, const ds_module_model *mm, const ds_module_unit_ref *order,
                    size_t n, const ds_loaded_model *m, ds_backend *b, ds_vram_manager *mgr,
                    ds_vram_manager *convert, ds_dtype compute, int plan_all, const char *what,
                    ds_error *err);

int ds_module_open(ds_module_run *r, const ds_module_model *mm, const ds_loaded_model *m,
                   ds_backend *b, ds_vram_manager *mgr, int plan_all, const char *what,
                   ds_error *err)
{
    return open_run(r, mm, NULL, 0, m, b, mgr, NULL, DS_DTYPE_INVALID, plan_all, what, err);
}

int ds_module_open_compute(ds_module_run *r, const ds_module_model *mm,
                           const ds_loaded_model *m, ds_backend *b, ds_vram_manager *mgr,
                           ds_vram_manager *convert, ds_dtype compute, int plan_all,
                           const char *what, ds_error *err)
{
    return open_run(r, mm, NULL, 0, m, b, mgr, convert, compute, plan_all, what, err);
}

int ds_module_open_ordered(ds_module_run *r, const ds_module_model *mm,
                           const ds_module_unit_ref *order, size_t n, const ds_loaded_model *m,
                           ds_backend *b, ds_vram_manager *mgr, int plan_all, const char *what,
                           ds_error *err)
{
    return open_run(r, mm, order, n, m, b, mgr, NULL, DS_DTYPE_INVALID, plan_all, what, err);
}

static int open_run(ds_module_run *r, const ds_module_model *mm, const ds_module_unit_ref *order,
                    size_t n, const ds_loaded_model *m, ds_backend *b, ds_vram_manager *mgr,
                    ds_vram_manager *convert, ds_dtype compute, int plan_all, const char *what,
                    ds_error *err)
{
    memset(r, 0, sizeof *r);
    r->order = order;
    r->order_count = n;
    r->mm = mm;
    r->model = m;
    r->held = SIZE_MAX;
    ds__weight_set_init(&r->ws, b, mm->owner);
    size_t groups = mm->group_count ? mm->group_count : 1;
    r->counts = malloc(groups * sizeof *r->counts);
    r->first_unit = malloc(groups * sizeof *r->first_unit);
    if (!r->counts || !r->first_unit)
        goto oom;
    for (size_t gi = 0; gi < mm->group_count; gi++) {
        r->counts[gi] = ds_module_count(mm, m, gi);
        r->first_unit[gi] = r->slot_total;
        r->slot_total += (size_t)r->counts[gi] * mm->groups[gi].unit_count;
    }
    r->manager_index = malloc((r->slot_total ? r->slot_total : 1) * sizeof *r->manager_index);
    if (!r->manager_index)
        goto oom;
    for (size_t slot = 0; slot < r->slot_total; slot++)
        r->manager_index[slot] = SIZE_MAX;
    r->unit_total = r->slot_total;
    int converting = !mgr && convert && r->ws.on_host && compute != DS_DTYPE_INVALID;
    if (!mgr && !converting)
        return DS_OK;
    if (converting)
        mgr = convert;
    r->vram = ds_vram_model_find(mgr, m);
    /* Registered for another compute dtype on a host fast tier: its Linear weights may be kept
     * converted for that dtype, or kept as stored where this forward would convert them. */
    if (r->vram && r->ws.on_host && compute != DS_DTYPE_INVALID &&
        ds_vram_model_compute_dtype(r->vram) != compute) {
        ds_vram_model_remove(r->vram);
        r->vram = NULL;
    }
    int rc = DS_OK;
    if (r->vram) {
        known_units(r);
        r->convert_only = converting;
    } else if (converting) {
        rc = register_converted(r, mgr, compute, plan_all, what, err);
    } else {
        rc = register_units(r, mgr, compute, plan_all, what, err);
    }
    if (rc != DS_OK)
        ds_module_close(r);
    return rc;
oom:
    ds_module_close(r);
    return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: %s: out of memory for %zu groups",
                        what, mm->owner, mm->group_count);
}

int ds_module_plan(ds_module_run *r, size_t n, const char *what, ds_error *err)
{
    return ds_module_plan_range(r, 0, n, what, err);
}

int ds_module_plan_range(ds_module_run *r, size_t first, size_t n, const char *what,
                         ds_error *err)
{
    if (first > r->unit_total || n > r->unit_total - first)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: planning units %zu..%zu of %zu", what,
                            first, first + n, r->unit_total);
    size_t *plan = malloc((n ? n : 1) * sizeof *plan);
    if (!plan)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory planning %zu units",
                            what, n);
    for (size_t k = 0; k < n; k++)
        plan[k] = first + k;
    int rc = ds_vram_plan(r->vram, plan, n, err);
    free(plan);
    return rc;
}

/* Points the unit's fields of `weights` at t, in registration order. */
static void fill(const ds_module_run *r, const ds_module_group *g, const char *prefix, int unit,
                 const ds_tensor *t, void *weights)
{
    size_t k = 0;
    for (size_t i = 0; i < g->count; i++) {
        const ds_module *mod = &g->modules[i];
        if (mod->unit != unit)
            continue;
        void *field = (char *)weights + mod->offset;
        if (absent(r->model, prefix, mod)) {
            memset(field, 0, has_bias(mod->kind) ? sizeof(ds__linear_weights) : sizeof(ds_tensor));
        } else if (has_bias(mod->kind)) {
            ds__linear_weights *lw = field;
            lw->weight = t[k++];
            lw->bias = t[k++];
        } else {
            *(ds_tensor *)field = t[k++];
        }
    }
}

int ds_module_bind(const ds_module_model *mm, const ds_loaded_model *m, ds__weight_set *ws,
                   size_t group, int64_t index, int unit, void *weights, ds_error *err)
{
    char prefix[DS__PARAM_NAME_MAX];
    int rc = group_prefix(&mm->groups[group], index, prefix, err);
    const ds_module_group *g = &mm->groups[group];
    for (size_t i = 0; rc == DS_OK && i < g->count; i++) {
        const ds_module *mod = &g->modules[i];
        if (mod->unit != unit)
            continue;
        void *field = (char *)weights + mod->offset;
        if (absent(m, prefix, mod)) {
            memset(field, 0, has_bias(mod->kind) ? sizeof(ds__linear_weights) : sizeof(ds_tensor));
            continue;
        }
        char name[DS__PARAM_NAME_MAX];
        part_name(mod, 0, name, sizeof name);
        rc = ds__weight_bind(m, ws, prefix, name, linear_weight(mod->kind),
                             has_bias(mod->kind) ? &((ds__linear_weights *)field)->weight
                                                 : (ds_tensor *)field,
                             err);
        if (rc == DS_OK && has_bias(mod->kind)) {
            part_name(mod, 1, name, sizeof name);
            rc = ds__weight_bind(m, ws, prefix, name, 0, &((ds__linear_weights *)field)->bias,
                                 err);
        }
    }
    return rc;
}

const ds_tensor_view *ds_module_find(const ds_module_model *mm, const ds_loaded_model *m,
                                     size_t group, int64_t index, size_t offset)
{
    const ds_module_group *g = &mm->groups[group];
    char prefix[DS__PARAM_NAME_MAX], name[DS__PARAM_NAME_MAX], full[2 * DS__PARAM_NAME_MAX];
    ds_error ignored;
    for (size_t i = 0; i < g->count; i++) {
        if (g->modules[i].offset != offset)
            continue;
        if (group_prefix(g, index, prefix, &ignored) != DS_OK ||
            !part_name(&g->modules[i], 0, name, sizeof name))
            return NULL;
        snprintf(full, sizeof full, "%s%s", prefix, name);
        const ds_sd_entry *e = ds_state_dict_find(&m->params, full);
        return e && !e->dict ? &e->tensor : NULL;
    }
    return NULL;
}

static int release_held(ds_module_run *r, ds_error *err)
{
    if (!r->vram || r->held == SIZE_MAX)
        return DS_OK;
    size_t index = r->held;
    r->held = SIZE_MAX;
    return ds_vram_release(r->vram, index, NULL, err);
}

int ds_module_use(ds_module_run *r, size_t group, int64_t index, int unit, void *weights,
                  ds_error *err)
{
    const ds_module_group *g = &r->mm->groups[group];
    int rc = release_held(r, err);
    if (rc != DS_OK)
        return rc;
    if (!r->vram)
        return ds_module_bind(r->mm, r->model, &r->ws, group, index, unit, weights, err);
    size_t k = r->manager_index[r->first_unit[group] + (size_t)index * g->unit_count +
                                (size_t)unit];
    char prefix[DS__PARAM_NAME_MAX];
    const ds_tensor *t;
    if (k == SIZE_MAX)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: unit %d of copy %lld of group %zu is not "
                            "registered with the VRAM manager", r->mm->owner, unit,
                            (long long)index, group);
    if ((rc = group_prefix(g, index, prefix, err)) != DS_OK ||
        (rc = ds_vram_acquire(r->vram, k, NULL, &t, err)) != DS_OK)
        return rc;
    r->held = k;
    fill(r, g, prefix, unit, t, weights);
    return DS_OK;
}

int ds_module_done(ds_module_run *r, ds_error *err)
{
    int rc = release_held(r, err);
    ds__weight_set_release(&r->ws);
    return rc;
}

int ds_module_end(ds_module_run *r, int rc, ds_error *err)
{
    ds_error ignored;
    int done = ds_module_done(r, rc == DS_OK ? err : &ignored);
    return rc != DS_OK ? rc : done;
}

void ds_module_close(ds_module_run *r)
{
    ds_error ignored;
    if (!r->mm)
        return;
    ds_module_done(r, &ignored);
    if (r->vram)
        ds_vram_unreserve(r->vram, r->reserved);
    r->reserved = 0;
    free(r->counts);
    free(r->first_unit);
    free(r->manager_index);
    r->counts = NULL;
    r->first_unit = NULL;
    r->manager_index = NULL;
}

int ds_module_reserve(ds_module_run *r, const char *what, size_t bytes, ds_error *err)
{
    if (!r->vram || r->convert_only)
        return DS_OK;
    int rc = ds_vram_reserve(r->vram, what, bytes, err);
    if (rc == DS_OK)
        r->reserved += bytes;
    return rc;
}

int ds_module_reserve_set(ds_module_run *r, const char *what, size_t bytes, ds_error *err)
{
    if (!r->vram || r->convert_only)
        return DS_OK;
    ds_vram_unreserve(r->vram, r->reserved);
    r->reserved = 0;
    return ds_module_reserve(r, what, bytes, err);
}

int ds_module_output(ds_backend *b, const ds_tensor *host, ds_tensor *copy, ds_tensor *out,
                     ds_error *err)
{
    if (b->host_memory) {
        *out = *host;
        out->backend = b;
        return DS_OK;
    }
    int rc = ds_tensor_alloc(b, host->dtype, host->ndim, host->shape, copy, err);
    *out = *copy;
    return rc;
}

int ds_module_input(ds_backend *b, const ds_tensor *host, ds_tensor *copy, ds_tensor *out,
                    ds_error *err)
{
    int rc = ds_module_output(b, host, copy, out, err);
    if (rc == DS_OK && !b->host_memory)
        rc = ds_tensor_upload(copy, host->data, NULL, err);
    return rc;
}

int ds_module_deliver(ds_backend *b, const ds_tensor *result, const ds_tensor *host,
                      ds_error *err)
{
    return b->host_memory ? DS_OK : ds_tensor_download(result, host->data, NULL, err);
}

int ds_module_cancelled(const ds_step_context *ctx, const char *what, const char *piece,
                        int64_t i, int64_t n, ds_error *err)
{
    if (!ctx->cancelled || !ctx->cancelled(ctx->user))
        return DS_OK;
    return ds_error_set(err, DS_ERR_CANCELLED, "%s: cancelled before %s %lld of %lld", what,
                        piece, (long long)i, (long long)n);
}

void ds_module_progress(const ds_step_context *ctx, const char *what, int64_t i, int64_t n)
{
    if (ctx->progress)
        ctx->progress(ctx->user, what, (uint64_t)(i + 1), (uint64_t)n);
}

int ds_module_alloc(ds_backend *b, ds_dtype dtype, int ndim, const int64_t *shape,
                    ds_tensor *const *list, ds_error *err)
{
    for (size_t i = 0; list[i]; i++) {
        int rc = ds_tensor_alloc(b, dtype, ndim, shape, list[i], err);
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

void ds_module_free_all(ds_tensor *const *list)
{
    for (; *list; list++)
        ds_tensor_free(*list);
}

ds_tensor ds_module_view(const ds_tensor *t, int ndim, const int64_t *shape)
{
    ds_tensor v = *t;
    v.ndim = ndim;
    memcpy(v.shape, shape, (size_t)ndim * sizeof *shape);
    return v;
}

size_t ds_module_bytes(ds_tensor *const *all, size_t n)
{
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        if (all[i]->data)
            bytes += ds_tensor_nbytes(all[i]);
    return bytes;
}

void ds_module_free_n(ds_tensor *const *all, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ds_tensor_free(all[i]);
}

int ds_module_bad_tensor(const char *phase, const char *role, const char *name,
                         const ds_tensor *t, const char *expected, ds_error *err)
{
    char got[128];
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: %s \"%s\" is %s, expected %s", phase,
                        role, name, ds_tensor_describe(t, got, sizeof got), expected);
}
