/* diffsynth/models/wan_video_vae.py's building blocks, declared and run for WanVideoVAE,
 * WanVideoVAE38 and QwenImageVAE alike (vae_modules.h). */
#include "models/vae_modules.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/ops.h"

#define NORM_EPS 1e-12f /* F.normalize's default eps, RMS_norm's */
#define MODULES_PER_GROUP 5
#define STATS_MAX 64

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}

const float ds__vae_wan21_mean[16] = {
    -0.7571f, -0.7089f, -0.9113f, 0.1075f, -0.1745f, 0.9653f, -0.1517f, 1.5508f,
    0.4134f,  -0.0715f, 0.5517f,  -0.3632f, -0.1922f, -0.9497f, 0.2503f, -0.2921f,
};
const float ds__vae_wan21_std[16] = {
    2.8184f, 1.4541f, 2.3275f, 2.6558f, 1.2196f, 1.7708f, 2.6052f, 2.0743f,
    3.2687f, 2.1526f, 2.8652f, 1.5579f, 1.6382f, 1.1253f, 2.8251f, 1.9160f,
};

int ds__vae_modules_init(ds__vae_modules *v, const char *owner, const char *vram_name,
                         const ds__vae_names *names, size_t capacity, ds_error *err)
{
    memset(v, 0, sizeof *v);
    v->names = names;
    v->capacity = capacity;
    v->groups = calloc(capacity, sizeof *v->groups);
    v->kinds = calloc(capacity, sizeof *v->kinds);
    v->modules = calloc(capacity * MODULES_PER_GROUP, sizeof *v->modules);
    v->unit_names = calloc(capacity, sizeof *v->unit_names);
    v->prefixes = calloc(capacity, sizeof *v->prefixes);
    v->order = calloc(capacity, sizeof *v->order);
    v->model = (ds_module_model){owner, vram_name, v->groups, 0};
    if (v->groups && v->kinds && v->modules && v->unit_names && v->prefixes && v->order)
        return DS_OK;
    ds__vae_modules_free(v);
    return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory for %zu modules",
                        owner, capacity);
}

void ds__vae_modules_free(ds__vae_modules *v)
{
    void *arrays[] = {v->groups, v->kinds, v->modules, v->unit_names, v->prefixes, v->order};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        free(arrays[i]);
    memset(v, 0, sizeof *v);
}

void ds__vae_order_add(ds__vae_modules *v, size_t g)
{
    v->order[v->order_count++] = (ds_module_unit_ref){g, 0, 0};
}

/* One instance: the n modules of mods (those with `when` set and a zero shape entry left
 * out), its one unit `unit`, under the prefix fmt formats. */
static int add_group(ds__vae_modules *v, ds__vae_kind kind, const ds_module *mods, size_t n,
                     const char *unit, size_t *index, ds_error *err, const char *fmt,
                     va_list ap)
{
    const char *owner = v->model.owner;
    if (v->count == v->capacity)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: module table overflow", owner);
    size_t g = v->count;
    int len = vsnprintf(v->prefixes[g], sizeof v->prefixes[g], fmt, ap);
    if (len < 0 || (size_t)len >= sizeof v->prefixes[g])
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: module name too long", owner);
    ds_module *out = &v->modules[g * MODULES_PER_GROUP];
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        if (!mods[i].when || mods[i].shape[0] != 0) {
            out[count] = mods[i];
            out[count++].when = 0;
        }
    v->unit_names[g] = unit;
    v->groups[g] = (ds_module_group){v->prefixes[g], 0, out, count, &v->unit_names[g], 1};
    v->kinds[g] = kind;
    v->model.group_count = ++v->count;
    if (index)
        *index = g;
    return DS_OK;
}

#define TENSOR(name, off, ...) {name, DS_MODULE_TENSOR, (int)sizeof(SHAPE(__VA_ARGS__)) / 8, \
                                {__VA_ARGS__}, 0, off, 0}
#define CONV(kind, name, unit, off, when, ...)                                               \
    {name, kind, (int)sizeof(SHAPE(__VA_ARGS__)) / 8, {__VA_ARGS__}, unit, off, when}

#define ADD(kind, mods, unit)                                                                  \
    do {                                                                                       \
        va_list ap;                                                                            \
        va_start(ap, fmt);                                                                     \
        int rc_ = add_group(v, kind, mods, sizeof mods / sizeof mods[0], unit, index, err,     \
                            fmt, ap);                                                          \
        va_end(ap);                                                                            \
        return rc_;                                                                            \
    } while (0)

int ds__vae_add_residual(ds__vae_modules *v, int64_t in, int64_t out, size_t *index,
                         ds_error *err, const char *fmt, ...)
{
    const ds__vae_names *n = v->names;
    typedef ds__vae_residual_weights W;
    int64_t cut = in != out ? out : 0;
    const ds_module mods[] = {
        TENSOR(n->norm1, offsetof(W, norm1), in, 1, 1, 1),
        CONV(DS_MODULE_CONV, n->conv1, 0, offsetof(W, conv1), 0, out, in, 3, 3, 3),
        TENSOR(n->norm2, offsetof(W, norm2), out, 1, 1, 1),
        CONV(DS_MODULE_CONV, n->conv2, 0, offsetof(W, conv2), 0, out, out, 3, 3, 3),
        CONV(DS_MODULE_CONV, n->shortcut, 0, offsetof(W, shortcut), 1, cut, in, 1, 1, 1),
    };
    ADD(DS__VAE_RESIDUAL, mods, "");
}

int ds__vae_add_attention(ds__vae_modules *v, int64_t dim, size_t *index, ds_error *err,
                          const char *fmt, ...)
{
    typedef ds__vae_attention_weights W;
    const ds_module mods[] = {
        TENSOR("norm.gamma", offsetof(W, norm), dim, 1, 1),
        CONV(DS_MODULE_CONV_LINEAR, "to_qkv", 0, offsetof(W, to_qkv), 0, 3 * dim, dim, 1, 1),
        CONV(DS_MODULE_CONV_LINEAR, "proj", 0, offsetof(W, proj), 0, dim, dim, 1, 1),
    };
    ADD(DS__VAE_ATTENTION, mods, "");
}

/* The Conv2d sits at index 1 of a Sequential behind an Upsample or a ZeroPad2d. */
int ds__vae_add_resample(ds__vae_modules *v, ds__vae_kind kind, int64_t dim, int64_t out,
                         int64_t time, size_t *index, ds_error *err, const char *fmt, ...)
{
    typedef ds__vae_resample_weights W;
    const ds_module mods[] = {
        CONV(DS_MODULE_CONV, "resample.1", 0, offsetof(W, resample), 0, out, dim, 3, 3),
        CONV(DS_MODULE_CONV, "time_conv", v->names->time_conv_unit, offsetof(W, time_conv), 1,
             time, dim, 3, 1, 1),
    };
    ADD(kind, mods, "");
}

int ds__vae_add_head(ds__vae_modules *v, int64_t in, int64_t out, size_t *index, ds_error *err,
                     const char *fmt, ...)
{
    const ds__vae_names *n = v->names;
    typedef ds__vae_head_weights W;
    const ds_module mods[] = {
        TENSOR(n->head_norm, offsetof(W, norm), in, 1, 1, 1),
        CONV(DS_MODULE_CONV, n->head_conv, 0, offsetof(W, conv), 0, out, in, 3, 3, 3),
    };
    ADD(DS__VAE_HEAD, mods, n->head_unit);
}

int ds__vae_add_conv(ds__vae_modules *v, const char *name, int64_t out, int64_t in, int64_t k,
                     size_t *index, ds_error *err, const char *fmt, ...)
{
    const ds_module mods[] = {CONV(DS_MODULE_CONV, name, 0, 0, 0, out, in, k, k, k)};
    ADD(DS__VAE_CONV, mods, name);
}

int ds__vae_module_end(ds_module_run *run, const ds__vae_modules *v, size_t g,
                       const char *phase, int rc, ds_error *err)
{
    rc = ds_module_end(run, rc, err);
    if (rc != DS_OK)
        return ds_error_prefix(err, "%s: %s%s: ", phase, v->groups[g].prefix,
                               v->unit_names[g]);
    return DS_OK;
}

int ds__vae_module_begin(ds_module_run *run, const ds__vae_modules *v, size_t g,
                         const char *phase, ds__vae_weights *w, ds_error *err)
{
    memset(w, 0, sizeof *w);
    int rc = ds_module_use(run, g, 0, 0, w, err);
    return rc == DS_OK ? DS_OK : ds__vae_module_end(run, v, g, phase, rc, err);
}

int ds__vae_module_reserve(ds_module_run *run, const ds__vae_modules *v, size_t g,
                           const char *phase, size_t bytes, ds_error *err)
{
    char what[DS__PARAM_NAME_MAX + 64];
    snprintf(what, sizeof what, "%s: activations of %s", phase, v->prefixes[g]);
    int rc = ds_module_reserve_set(run, what, bytes, err);
    return rc == DS_OK ? DS_OK : ds__vae_module_end(run, v, g, phase, rc, err);
}

int ds__vae_forward(const ds__vae_forwards *f, void *run, const ds__vae_modules *v, size_t g,
                    const ds__vae_weights *w, ds_tensor *x, ds_error *err)
{
    switch (v->kinds[g]) {
    case DS__VAE_CONV:
        return f->conv(run, &w->conv, x, err);
    case DS__VAE_RESIDUAL:
        return f->residual(run, &w->residual, x, err);
    case DS__VAE_ATTENTION:
        return f->attention(run, &w->attention, x, err);
    case DS__VAE_HEAD:
        return f->head(run, &w->head, x, err);
    case DS__VAE_UPSAMPLE:
    case DS__VAE_DOWNSAMPLE:
        return f->resample(run, &w->resample, v->kinds[g] == DS__VAE_UPSAMPLE, x, err);
    }
    return ds_error_set(err, DS_ERR_INTERNAL, "%s: module %s of unknown kind %d",
                        v->model.owner, v->prefixes[g], (int)v->kinds[g]);
}

int ds__vae_rms_norm(ds_backend *b, const ds_tensor *gamma, const ds_tensor *x, int silu,
                     ds_tensor *y, ds_error *err)
{
    ds_tensor g1 = ds_module_view(gamma, 1, SHAPE(gamma->shape[0]));
    ds_channel_rms_norm_args n = {x, &g1, NULL, NORM_EPS, y};
    ds_activation_args act = {y, DS_ACT_SILU, y};
    int rc;
    if ((rc = ds_channel_rms_norm(b, NULL, &n, err)) != DS_OK ||
        (silu && (rc = ds_activate(b, NULL, &act, err)) != DS_OK))
        return rc;
    return DS_OK;
}

int ds__vae_attention(ds_backend *b, const ds__vae_attention_weights *w, const ds_tensor *x,
                      ds_tensor *out, ds_error *err)
{
    const ds__linear_weights *to_qkv = &w->to_qkv, *proj = &w->proj;
    ds_dtype dt = x->dtype;
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3], S = H * W;
    ds_tensor n = {0}, p = {0}, qkv = {0}, q = {0}, k = {0}, v = {0}, o = {0}, pr = {0},
              y = {0};
    int rc;
    ds_tensor w_qkv = ds_module_view(&to_qkv->weight, 2, SHAPE(3 * C, C));
    ds_tensor w_proj = ds_module_view(&proj->weight, 2, SHAPE(C, C));

    /* Channels last: [B, C, H, W] -> [B, H * W, C], the layout of the linears and attention. */
    ds_permute_args to_last = {&n, {0, 2, 3, 1}, &p};
    if ((rc = ds_tensor_alloc(b, dt, 4, x->shape, &n, err)) != DS_OK ||
        (rc = ds__vae_rms_norm(b, &w->norm, x, 0, &n, err)) != DS_OK ||
        (rc = ds_tensor_alloc(b, dt, 4, SHAPE(B, H, W, C), &p, err)) != DS_OK ||
        (rc = ds_permute(b, NULL, &to_last, err)) != DS_OK)
        goto done;
    ds_tensor_free(&n);
    ds_tensor p3 = ds_module_view(&p, 3, SHAPE(B, S, C));
    ds_linear_args lin_qkv = {&p3, &w_qkv, &to_qkv->bias, 1.0f, DS_ACT_NONE, &qkv};
    if ((rc = ds_tensor_alloc(b, dt, 3, SHAPE(B, S, 3 * C), &qkv, err)) != DS_OK ||
        (rc = ds_linear(b, NULL, &lin_qkv, err)) != DS_OK)
        goto done;
    ds_tensor_free(&p);

    /* Upstream chunks the [.., S, 3C] projection into q, k, v along channels. */
    ds_tensor *parts[3] = {&q, &k, &v};
    for (int i = 0; i < 3; i++) {
        if ((rc = ds_tensor_alloc(b, dt, 4, SHAPE(B, S, 1, C), parts[i], err)) != DS_OK)
            goto done;
        ds_tensor part3 = ds_module_view(parts[i], 3, SHAPE(B, S, C));
        ds_slice_args s = {&qkv, 2, i * C, &part3};
        if ((rc = ds_slice(b, NULL, &s, err)) != DS_OK)
            goto done;
    }
    ds_tensor_free(&qkv);
    ds_attention_args at = {&q, &k, &v, NULL, 1.0f / sqrtf((float)C), 0, &o};
    if ((rc = ds_tensor_alloc(b, dt, 4, SHAPE(B, S, 1, C), &o, err)) != DS_OK ||
        (rc = ds_attention(b, NULL, &at, err)) != DS_OK)
        goto done;
    ds_module_free_all(DS_TENSORS(&q, &k, &v));

    ds_tensor o3 = ds_module_view(&o, 3, SHAPE(B, S, C));
    ds_linear_args lin_proj = {&o3, &w_proj, &proj->bias, 1.0f, DS_ACT_NONE, &pr};
    if ((rc = ds_tensor_alloc(b, dt, 3, SHAPE(B, S, C), &pr, err)) != DS_OK ||
        (rc = ds_linear(b, NULL, &lin_proj, err)) != DS_OK)
        goto done;
    ds_tensor_free(&o);
    ds_tensor pr4 = ds_module_view(&pr, 4, SHAPE(B, H, W, C));
    ds_permute_args to_first = {&pr4, {0, 3, 1, 2}, &y};
    ds_binary_args add = {&y, x, DS_BINARY_ADD, &y};
    if ((rc = ds_tensor_alloc(b, dt, 4, x->shape, &y, err)) != DS_OK ||
        (rc = ds_permute(b, NULL, &to_first, err)) != DS_OK ||
        (rc = ds_binary(b, NULL, &add, err)) != DS_OK)
        goto done;
    *out = y;
    y = (ds_tensor){0};
done:
    ds_module_free_all(DS_TENSORS(&n, &p, &qkv, &q, &k, &v, &o, &pr, &y));
    return rc;
}

int ds__vae_latent_stats(ds_backend *b, ds_dtype dtype, int ndim, int64_t z, const float *mean,
                         const float *std, ds_tensor *mean_out, ds_tensor *inv_std_out,
                         ds_error *err)
{
    float m[STATS_MAX], inv[STATS_MAX];
    uint16_t m16[STATS_MAX], inv16[STATS_MAX];
    if (z > STATS_MAX)
        return ds_error_set(err, DS_ERR_INTERNAL, "%lld latent channels, at most %d",
                            (long long)z, STATS_MAX);
    for (int64_t i = 0; i < z; i++) {
        m[i] = mean[i];
        inv[i] = 1.0f / std[i];
        m16[i] = ds_f32_to_bf16(m[i]);
        inv16[i] = ds_f32_to_bf16(inv[i]);
    }
    int bf16 = dtype == DS_BF16, rc;
    const int64_t *shape = SHAPE(1, z, 1, 1, 1);
    if ((rc = ds_tensor_alloc(b, dtype, ndim, shape, mean_out, err)) != DS_OK ||
        (rc = ds_tensor_alloc(b, dtype, ndim, shape, inv_std_out, err)) != DS_OK ||
        (rc = ds_tensor_upload(mean_out, bf16 ? (const void *)m16 : m, NULL, err)) != DS_OK ||
        (rc = ds_tensor_upload(inv_std_out, bf16 ? (const void *)inv16 : inv, NULL, err)) !=
            DS_OK)
        return rc;
    return DS_OK;
}
