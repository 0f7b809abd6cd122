#include "tools/golden_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "tools/seeded_weights.h"

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* A Linear's fan-in: its weight's second dim; a bias takes its weight's. */
static double linear_bound(const ds_state_dict *params, const char *name,
                           const ds_tensor_view *view)
{
    int64_t fan_in = 1;
    if (view->ndim == 2) {
        fan_in = view->shape[1];
    } else if (ends_with(name, ".bias")) {
        char weight[512];
        snprintf(weight, sizeof weight, "%.*s.weight", (int)(strlen(name) - strlen(".bias")),
                 name);
        const ds_sd_entry *w = ds_state_dict_find(params, weight);
        fan_in = w ? w->tensor.shape[1] : 1;
    }
    return 1.0 / sqrt((double)fan_in);
}

void ds_golden_bounds_qwen_image_dit(const ds_state_dict *params, const char *name,
                                     const ds_tensor_view *view, double *bound, float *center)
{
    *center = 0.0f;
    if (ends_with(name, "norm_q.weight") || ends_with(name, "norm_k.weight") ||
        ends_with(name, "norm_added_q.weight") || ends_with(name, "norm_added_k.weight") ||
        strcmp(name, "txt_norm.weight") == 0 || ends_with(name, "_rms.weight")) {
        *bound = 0.1;
        *center = 1.0f;
        return;
    }
    *bound = linear_bound(params, name, view);
}

static double fan_in_bound(const ds_tensor_view *w)
{
    int64_t fan_in = 1;
    for (int i = 1; i < w->ndim; i++)
        fan_in *= w->shape[i];
    return 1.0 / sqrt((double)fan_in);
}

void ds_golden_bounds_wan_video_dit(const ds_state_dict *params, const char *name,
                                    const ds_tensor_view *view, double *bound, float *center)
{
    *center = 0.0f;
    *bound = 0.1;
    if (ends_with(name, "modulation"))
        return;
    if (ends_with(name, "emb_pos")) {
        *bound = 0.5;
        return;
    }
    if (view->ndim >= 2) {
        *bound = fan_in_bound(view);
        return;
    }
    if (ends_with(name, ".bias")) {
        char weight[512];
        snprintf(weight, sizeof weight, "%.*s.weight", (int)(strlen(name) - strlen(".bias")),
                 name);
        const ds_sd_entry *w = ds_state_dict_find(params, weight);
        if (w && w->tensor.ndim >= 2)
            *bound = fan_in_bound(&w->tensor);
        return;
    }
    *center = 1.0f;
}

void ds_golden_bounds_qwen_image_text_encoder(const ds_state_dict *params, const char *name,
                                              const ds_tensor_view *view, double *bound,
                                              float *center)
{
    *center = 0.0f;
    if (ends_with(name, "norm.weight")) {
        *bound = 0.1;
        *center = 1.0f;
        return;
    }
    if (ends_with(name, "embed_tokens.weight")) {
        *bound = 1.0;
        return;
    }
    *bound = linear_bound(params, name, view);
}

void ds_golden_bounds_wan_text_encoder(const ds_state_dict *params, const char *name,
                                       const ds_tensor_view *view, double *bound,
                                       float *center)
{
    *center = 0.0f;
    if (ends_with(name, "norm.weight") || ends_with(name, "norm1.weight") ||
        ends_with(name, "norm2.weight")) {
        *bound = 0.1;
        *center = 1.0f;
        return;
    }
    if (ends_with(name, "embedding.weight")) {
        *bound = 1.0;
        return;
    }
    *bound = linear_bound(params, name, view);
}

void ds_golden_bounds_qwen_image_vae(const ds_state_dict *params, const char *name,
                                     const ds_tensor_view *view, double *bound, float *center)
{
    *center = 0.0f;
    if (ends_with(name, ".gamma")) {
        *bound = 0.1;
        *center = 1.0f;
        return;
    }
    const ds_tensor_view *weight = view;
    if (ends_with(name, ".bias")) {
        char wname[512];
        snprintf(wname, sizeof wname, "%.*s.weight", (int)(strlen(name) - strlen(".bias")),
                 name);
        const ds_sd_entry *w = ds_state_dict_find(params, wname);
        weight = w ? &w->tensor : view;
    }
    int64_t fan_in = 1;
    for (int d = 1; d < weight->ndim; d++)
        fan_in *= weight->shape[d];
    *bound = 1.0 / sqrt((double)fan_in);
}

void ds_golden_model_free(ds_loaded_model *model)
{
    for (size_t i = 0; i < model->params.count; i++)
        free((void *)model->params.entries[i].tensor.data);
    ds_state_dict_free(&model->params);
    free(model->extra_kwargs_json);
    memset(model, 0, sizeof *model);
}

static int fill(const ds_golden_model_spec *spec, const ds_state_dict *params, ds_sd_entry *e)
{
    uint64_t n = ds_tensor_view_numel(&e->tensor);
    int sparse = spec->sparse_name && strcmp(e->name, spec->sparse_name) == 0;
    float *data = sparse ? calloc(n ? n : 1, sizeof *data) : malloc((n ? n : 1) * sizeof *data);
    if (!data) {
        fprintf(stderr, "golden model: out of memory for %s\n", e->name);
        return -1;
    }
    double bound;
    float center;
    spec->bounds(params, e->name, &e->tensor, &bound, &center);
    if (!sparse) {
        ds_seeded_fill(e->name, spec->seed, bound, center, data, n);
    } else {
        int64_t rows = e->tensor.shape[0], width = e->tensor.ndim == 2 ? e->tensor.shape[1] : 1;
        for (size_t r = 0; r < spec->sparse_row_count; r++) {
            int64_t row = spec->sparse_rows[r];
            if (row < 0 || row >= rows) {
                fprintf(stderr, "golden model: row %lld of %s is outside [0, %lld)\n",
                        (long long)row, e->name, (long long)rows);
                free(data);
                return -1;
            }
            ds_seeded_fill_range(e->name, spec->seed, bound, center, (uint64_t)(row * width),
                                 data + row * width, (size_t)width);
        }
    }
    e->tensor.data = data;
    return 0;
}

int ds_golden_model_build(const ds_golden_model_spec *spec, ds_loaded_model *model)
{
    ds_error err;
    ds_state_dict full;
    const ds_model_class *cls = ds_model_class_find(spec->model_class);
    memset(model, 0, sizeof *model);
    ds_state_dict_init(&model->params);
    ds_state_dict_init(&full);
    if (!cls) {
        fprintf(stderr, "golden model: class %s is not in this build\n", spec->model_class);
        return -1;
    }
    if (ds_model_class_declare(cls, spec->kwargs_json, &full, &err) != DS_OK) {
        fprintf(stderr, "golden model: %s\n", err.message);
        return -1;
    }
    model->cls = cls;
    /* As the loader keeps the config's kwargs: a forward may read them. */
    if (spec->kwargs_json && !(model->extra_kwargs_json = strdup(spec->kwargs_json)))
        goto fail;
    for (size_t i = 0; i < full.count; i++)
        if ((!spec->keep || spec->keep(full.entries[i].name, spec->keep_arg)) &&
            ds_state_dict_put_tensor(&model->params, full.entries[i].name,
                                     &full.entries[i].tensor) != DS_OK)
            goto fail;
    for (size_t i = 0; i < model->params.count; i++)
        model->params.entries[i].tensor.data = NULL;
    /* Bounds look biases' weights up in the whole tree: a cut may keep a bias alone. */
    for (size_t i = 0; !spec->declare_only && i < model->params.count; i++)
        if (fill(spec, &full, &model->params.entries[i]) != 0)
            goto fail;
    ds_state_dict_free(&full);
    return 0;
fail:
    ds_state_dict_free(&full);
    ds_golden_model_free(model);
    return -1;
}

void ds_golden_model_to_bf16(ds_loaded_model *model)
{
    for (size_t i = 0; i < model->params.count; i++) {
        ds_tensor_view *v = &model->params.entries[i].tensor;
        uint64_t n = ds_tensor_view_numel(v);
        float *f = (float *)v->data;
        uint16_t *h = (uint16_t *)v->data;
        /* Element k's two bytes land at or before element k's four, which are read first. */
        for (uint64_t k = 0; k < n; k++)
            h[k] = ds_f32_to_bf16(f[k]);
        v->dtype = DS_BF16;
        v->nbytes = n * 2;
    }
}

double ds_golden_rel_l2(const ds_tensor *got, const ds_tensor *want)
{
    double num = 0, den = 0;
    uint64_t n = ds_tensor_numel(want);
    for (uint64_t i = 0; i < n; i++) {
        double a = ds_load_f64(got->data, got->dtype, i);
        double b = ds_load_f64(want->data, want->dtype, i);
        num += (a - b) * (a - b);
        den += b * b;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
