#include "kernels/ops.h"

#include "core/log.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Tensors ---- */

uint64_t ds_tensor_numel(const ds_tensor *t)
{
    uint64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (uint64_t)t->shape[i];
    return n;
}

size_t ds_tensor_nbytes(const ds_tensor *t)
{
    return (size_t)(ds_tensor_numel(t) * ds_dtype_size(t->dtype));
}

char *ds_tensor_describe(const ds_tensor *t, char *buf, size_t size)
{
    size_t used = 0;
    used += (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < t->ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%" PRId64, i ? ", " : "", t->shape[i]);
    if (used < size)
        snprintf(buf + used, size - used, "] %s", ds_dtype_name(t->dtype));
    return buf;
}

int ds_tensor_same_shape(const ds_tensor *a, const ds_tensor *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

/* Shape checks before any allocation: bounded rank, non-negative dims, no byte-count overflow. */
static int check_shape(const char *what, ds_dtype dtype, int ndim, const int64_t *shape,
                       ds_error *err)
{
    if (ndim < 0 || ndim > DS_MAX_DIMS)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: rank %d is outside 0..%d", what,
                            ndim, DS_MAX_DIMS);
    size_t esize = ds_dtype_size(dtype);
    if (esize == 0)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: invalid dtype", what);
    uint64_t bytes = esize;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: dim %d is negative (%" PRId64 ")",
                                what, i, shape[i]);
        if (shape[i] && bytes > (uint64_t)SIZE_MAX / (uint64_t)shape[i])
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: byte count overflows", what);
        bytes *= (uint64_t)shape[i];
    }
    return DS_OK;
}

int ds_tensor_alloc(ds_backend *b, ds_dtype dtype, int ndim, const int64_t *shape, ds_tensor *out,
                    ds_error *err)
{
    memset(out, 0, sizeof *out);
    int rc = check_shape("tensor", dtype, ndim, shape, err);
    if (rc != DS_OK)
        return rc;
    out->dtype = dtype;
    out->ndim = ndim;
    memcpy(out->shape, shape, (size_t)ndim * sizeof *shape);
    out->backend = b;
    size_t bytes = ds_tensor_nbytes(out);
    rc = b->alloc(b, bytes ? bytes : 1, &out->data, err);
    if (rc != DS_OK)
        memset(out, 0, sizeof *out);
    return rc;
}

void ds_tensor_free(ds_tensor *t)
{
    if (t->data && t->backend)
        t->backend->free(t->backend, t->data);
    memset(t, 0, sizeof *t);
}

ds_tensor ds_tensor_wrap(ds_backend *b, ds_dtype dtype, int ndim, const int64_t *shape, void *data)
{
    ds_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dtype;
    t.ndim = ndim < 0 ? 0 : (ndim > DS_MAX_DIMS ? DS_MAX_DIMS : ndim);
    memcpy(t.shape, shape, (size_t)t.ndim * sizeof *shape);
    t.data = data;
    t.backend = b;
    return t;
}

int ds_tensor_upload(ds_tensor *t, const void *host, ds_stream *s, ds_error *err)
{
    ds_backend *b = t->backend;
    int rc = b->copy_to_device(b, t->data, host, ds_tensor_nbytes(t), s, err);
    return rc == DS_OK ? b->stream_synchronize(b, s, err) : rc;
}

int ds_tensor_download(const ds_tensor *t, void *host, ds_stream *s, ds_error *err)
{
    ds_backend *b = t->backend;
    int rc = b->copy_to_host(b, host, t->data, ds_tensor_nbytes(t), s, err);
    return rc == DS_OK ? b->stream_synchronize(b, s, err) : rc;
}

static pthread_once_t fallback_once = PTHREAD_ONCE_INIT;
static ds_backend *fallback_cpu;
static ds_error fallback_error;

static void create_fallback(void)
{
    if (ds_cpu_backend_create(0, &fallback_cpu, &fallback_error) != DS_OK)
        fallback_cpu = NULL;
}

int ds_cpu_fallback_backend(ds_backend **out, ds_error *err)
{
    pthread_once(&fallback_once, create_fallback);
    *out = fallback_cpu;
    if (!fallback_cpu)
        return ds_error_set(err, fallback_error.code, "CPU fallback backend: %s",
                            fallback_error.message);
    return DS_OK;
}

void ds_backend_destroy(ds_backend *b)
{
    if (b && b->destroy)
        b->destroy(b);
}

/* ---- Names ---- */

static const char *const op_names[DS_OP_COUNT] = {
    [DS_OP_LINEAR] = "linear",
    [DS_OP_BATCHED_MATMUL] = "batched_matmul",
    [DS_OP_ATTENTION] = "attention",
    [DS_OP_LAYER_NORM] = "layer_norm",
    [DS_OP_RMS_NORM] = "rms_norm",
    [DS_OP_GROUP_NORM] = "group_norm",
    [DS_OP_CHANNEL_RMS_NORM] = "channel_rms_norm",
    [DS_OP_SOFTMAX] = "softmax",
    [DS_OP_ACTIVATION] = "activation",
    [DS_OP_ROPE] = "rope",
    [DS_OP_TIMESTEP_EMBEDDING] = "timestep_embedding",
    [DS_OP_BINARY] = "binary",
    [DS_OP_MODULATE] = "modulate",
    [DS_OP_GATED_RESIDUAL] = "gated_residual",
    [DS_OP_SCALE] = "scale",
    [DS_OP_CLAMP] = "clamp",
    [DS_OP_CONCAT] = "concat",
    [DS_OP_SLICE] = "slice",
    [DS_OP_PERMUTE] = "permute",
    [DS_OP_PATCHIFY] = "patchify",
    [DS_OP_UNPATCHIFY] = "unpatchify",
    [DS_OP_PAD] = "pad",
    [DS_OP_UPSAMPLE_NEAREST2X] = "upsample_nearest2x",
    [DS_OP_EMBEDDING] = "embedding",
    [DS_OP_CONV2D] = "conv2d",
    [DS_OP_CONV3D_CAUSAL] = "conv3d_causal",
    [DS_OP_CAST] = "cast",
};

const char *ds_op_name(ds_op op)
{
    return (op >= 0 && op < DS_OP_COUNT) ? op_names[op] : "unknown op";
}

const char *ds_activation_name(ds_activation act)
{
    static const char *const names[DS_ACT_COUNT] = {"none", "silu", "gelu_erf", "gelu_tanh",
                                                    "gelu_sigmoid"};
    return (act >= 0 && act < DS_ACT_COUNT) ? names[act] : "unknown activation";
}

/* ---- Validation helpers ---- */

typedef struct check {
    const char *op;
    ds_error *err;
} check;

static int fail(const check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(const check *c, const char *fmt, ...)
{
    char body[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    return ds_error_set(c->err, DS_ERR_INVALID_ARGUMENT, "%s: %s", c->op, body);
}

static int is_float(ds_dtype d) { return d == DS_F32 || d == DS_BF16 || d == DS_F16; }
static int is_fp8(ds_dtype d) { return d == DS_F8_E4M3 || d == DS_F8_E5M2; }

static int tensor_ok(const check *c, const char *name, const ds_tensor *t, int optional)
{
    if (!t)
        return optional ? DS_OK : fail(c, "%s is missing", name);
    if (!t->backend)
        return fail(c, "%s has no backend", name);
    int rc = check_shape(name, t->dtype, t->ndim, t->shape, c->err);
    if (rc != DS_OK)
        return ds_error_prefix(c->err, "%s: ", c->op);
    if (!t->data && ds_tensor_nbytes(t) > 0)
        return fail(c, "%s has no data", name);
    return DS_OK;
}

static int float_ok(const check *c, const char *name, const ds_tensor *t)
{
    char d[128];
    if (t && !is_float(t->dtype))
        return fail(c, "%s is %s: expected f32, bf16 or f16", name, ds_tensor_describe(t, d, sizeof d));
    return DS_OK;
}

static int rank_ok(const check *c, const char *name, const ds_tensor *t, int lo, int hi)
{
    char d[128];
    if (t->ndim < lo || t->ndim > hi) {
        if (lo == hi)
            return fail(c, "%s is %s: expected rank %d", name, ds_tensor_describe(t, d, sizeof d), lo);
        return fail(c, "%s is %s: expected rank %d..%d", name, ds_tensor_describe(t, d, sizeof d),
                    lo, hi);
    }
    return DS_OK;
}

static int same_shape_ok(const check *c, const char *an, const ds_tensor *a, const char *bn,
                         const ds_tensor *b)
{
    char da[128], db[128];
    if (!ds_tensor_same_shape(a, b))
        return fail(c, "%s is %s but %s is %s: shapes must match", bn,
                    ds_tensor_describe(b, db, sizeof db), an, ds_tensor_describe(a, da, sizeof da));
    return DS_OK;
}

static int vector_ok(const check *c, const char *name, const ds_tensor *t, int64_t n)
{
    char d[128];
    if (!t)
        return DS_OK;
    if (t->ndim != 1 || t->shape[0] != n)
        return fail(c, "%s is %s: expected [%" PRId64 "]", name, ds_tensor_describe(t, d, sizeof d), n);
    return float_ok(c, name, t);
}

/* NumPy broadcasting of b onto a's shape. */
static int broadcast_ok(const check *c, const char *an, const ds_tensor *a, const char *bn,
                        const ds_tensor *b)
{
    char da[128], db[128];
    int ok = b->ndim <= a->ndim;
    for (int i = 1; ok && i <= b->ndim; i++) {
        int64_t bd = b->shape[b->ndim - i], ad = a->shape[a->ndim - i];
        ok = bd == ad || bd == 1;
    }
    if (!ok)
        return fail(c, "%s %s does not broadcast to %s %s", bn, ds_tensor_describe(b, db, sizeof db),
                    an, ds_tensor_describe(a, da, sizeof da));
    return DS_OK;
}

static int same_backend_ok(const check *c, const ds_tensor *const *ts, int n)
{
    const ds_backend *owner = NULL;
    for (int i = 0; i < n; i++) {
        if (!ts[i])
            continue;
        if (!owner)
            owner = ts[i]->backend;
        else if (ts[i]->backend != owner)
            return fail(c, "operands live on different backends (%s and %s)", owner->name,
                        ts[i]->backend->name);
    }
    return DS_OK;
}

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        int try_rc_ = (expr);                                                                      \
        if (try_rc_ != DS_OK)                                                                      \
            return try_rc_;                                                                        \
    } while (0)

/* ---- Per-op validation ---- */

static int validate_linear(const check *c, const ds_linear_args *a)
{
    char dx[128], dw[128], dy[128];
    TRY(tensor_ok(c, "x", a->x, 0));
    TRY(tensor_ok(c, "weight", a->weight, 0));
    TRY(tensor_ok(c, "bias", a->bias, 1));
    TRY(tensor_ok(c, "y", a->y, 0));
    TRY(float_ok(c, "x", a->x));
    TRY(float_ok(c, "y", a->y));
    if (!is_float(a->weight->dtype) && !is_fp8(a->weight->dtype))
        return fail(c, "weight is %s: expected f32, bf16, f16, f8_e4m3 or f8_e5m2",
                    ds_tensor_describe(a->weight, dw, sizeof dw));
    TRY(rank_ok(c, "x", a->x, 1, DS_MAX_DIMS));
    TRY(rank_ok(c, "weight", a->weight, 2, 2));
    int64_t n = a->weight->shape[0], k = a->weight->shape[1];
    if (a->x->shape[a->x->ndim - 1] != k)
        return fail(c, "weight is %s but x is %s: x's last dim must be K = %" PRId64,
                    ds_tensor_describe(a->weight, dw, sizeof dw), ds_tensor_describe(a->x, dx, sizeof dx), k);
    int ok = a->y->ndim == a->x->ndim && a->y->shape[a->y->ndim - 1] == n;
    for (int i = 0; ok && i < a->x->ndim - 1; i++)
        ok = a->y->shape[i] == a->x->shape[i];
    if (!ok)
        return fail(c, "y is %s: expected x's leading dims and N = %" PRId64 " (x %s, weight %s)",
                    ds_tensor_describe(a->y, dy, sizeof dy), n, ds_tensor_describe(a->x, dx, sizeof dx),
                    ds_tensor_describe(a->weight, dw, sizeof dw));
    TRY(vector_ok(c, "bias", a->bias, n));
    if (a->epilogue < 0 || a->epilogue >= DS_ACT_COUNT)
        return fail(c, "unknown epilogue %d", (int)a->epilogue);
    if (!(a->weight_scale == a->weight_scale) || a->weight_scale == 0.0f)
        return fail(c, "weight_scale must be a non-zero number");
    const ds_tensor *ts[] = {a->x, a->weight, a->bias, a->y};
    return same_backend_ok(c, ts, 4);
}

static int validate_batched_matmul(const check *c, const ds_batched_matmul_args *a)
{
    char da[128], db[128], dy[128];
    TRY(tensor_ok(c, "a", a->a, 0));
    TRY(tensor_ok(c, "b", a->b, 0));
    TRY(tensor_ok(c, "y", a->y, 0));
    TRY(float_ok(c, "a", a->a));
    TRY(float_ok(c, "b", a->b));
    TRY(float_ok(c, "y", a->y));
    TRY(rank_ok(c, "a", a->a, 3, 3));
    TRY(rank_ok(c, "b", a->b, 3, 3));
    TRY(rank_ok(c, "y", a->y, 3, 3));
    int64_t batch = a->a->shape[0];
    int64_t m = a->transpose_a ? a->a->shape[2] : a->a->shape[1];
    int64_t k = a->transpose_a ? a->a->shape[1] : a->a->shape[2];
    int64_t kb = a->transpose_b ? a->b->shape[2] : a->b->shape[1];
    int64_t n = a->transpose_b ? a->b->shape[1] : a->b->shape[2];
    if (a->b->shape[0] != batch || kb != k || a->y->shape[0] != batch || a->y->shape[1] != m ||
        a->y->shape[2] != n)
        return fail(c, "shapes do not multiply: a %s%s, b %s%s, y %s",
                    ds_tensor_describe(a->a, da, sizeof da), a->transpose_a ? " (transposed)" : "",
                    ds_tensor_describe(a->b, db, sizeof db), a->transpose_b ? " (transposed)" : "",
                    ds_tensor_describe(a->y, dy, sizeof dy));
    const ds_tensor *ts[] = {a->a, a->b, a->y};
    return same_backend_ok(c, ts, 3);
}

static int validate_attention(const check *c, const ds_attention_args *a)
{
    char dq[128], dk[128], dv[128], dm[128];
    TRY(tensor_ok(c, "q", a->q, 0));
    TRY(tensor_ok(c, "k", a->k, 0));
    TRY(tensor_ok(c, "v", a->v, 0));
    TRY(tensor_ok(c, "key_mask", a->key_mask, 1));
    TRY(tensor_ok(c, "out", a->out, 0));
    TRY(float_ok(c, "q", a->q));
    TRY(float_ok(c, "k", a->k));
    TRY(float_ok(c, "v", a->v));
    TRY(float_ok(c, "out", a->out));
    TRY(rank_ok(c, "q", a->q, 4, 4));
    TRY(rank_ok(c, "k", a->k, 4, 4));
    TRY(rank_ok(c, "v", a->v, 4, 4));
    TRY(same_shape_ok(c, "k", a->k, "v", a->v));
    TRY(same_shape_ok(c, "q", a->q, "out", a->out));
    int64_t batch = a->q->shape[0], hq = a->q->shape[2], d = a->q->shape[3];
    int64_t sk = a->k->shape[1], hkv = a->k->shape[2];
    if (a->k->shape[0] != batch || a->k->shape[3] != d || hkv == 0 || hq % hkv != 0)
        return fail(c, "q is %s and k is %s: need the same batch and head dim, and query heads a "
                    "multiple of key/value heads", ds_tensor_describe(a->q, dq, sizeof dq),
                    ds_tensor_describe(a->k, dk, sizeof dk));
    if (a->key_mask && (a->key_mask->ndim != 2 || a->key_mask->shape[0] != batch ||
                        a->key_mask->shape[1] != sk ||
                        (a->key_mask->dtype != DS_U8 && a->key_mask->dtype != DS_BOOL)))
        return fail(c, "key_mask is %s: expected [%" PRId64 ", %" PRId64 "] u8 or bool (v is %s)",
                    ds_tensor_describe(a->key_mask, dm, sizeof dm), batch, sk,
                    ds_tensor_describe(a->v, dv, sizeof dv));
    if (!(a->scale == a->scale))
        return fail(c, "scale is NaN");
    const ds_tensor *ts[] = {a->q, a->k, a->v, a->key_mask, a->out};
    return same_backend_ok(c, ts, 5);
}

static int validate_layer_norm(const check *c, const ds_layer_norm_args *a)
{
    TRY(tensor_ok(c, "x", a->x, 0));
    TRY(tensor_ok(c, "weight", a->weight, 1));
    TRY(tensor_ok(c, "bias", a->bias, 1));
    TRY(tensor_ok(c, "y", a->y, 0));
    TRY(float_ok(c, "x", a->x));
    TRY(float_ok(c, "y", a->y));
    TRY(rank_ok(c, "x", a->x, 1, DS_MAX_DIMS));
    TRY(same_shape_ok(c, "x", a->x, "y", a->y));
    int64_t ch = a->x->shape[a->x->ndim - 1];
    TRY(vector_ok(c, "weight", a->weight, ch));
    TRY(vector_ok(c, "bias", a->bias, ch));
    if (!(a->eps >= 0))
        return fail(c, "eps must be >= 0");
    const ds_tensor *ts[] = {a->x, a->weight, a->bias, a->y};
    return same_backend_ok(c, ts, 4);
}

static int validate_rms_norm(const check *c, const ds_rms_norm_args *a)
{
    TRY(tensor_ok(c, "x", a->x, 0));
    TRY(tensor_ok(c, "weight", a->weight, 1));
    TRY(tensor_ok(c, "y", a->y, 0));
    TRY(float_ok(c, "x", a->x));
    TRY(float_ok(c, "y", a->y));
    TRY(rank_ok(c, "x", a->x, 1, DS_MAX_DIMS));
    TRY(same_shape_ok(c, "x", a->x, "y", a->y));
    TRY(vector_ok(c, "weight", a->weight, a->x->shape[a->x->ndim - 1]));
    if (!(a->eps >= 0))
        return fail(c, "eps must be >= 0");
    const ds_tensor *ts[] = {a->x, a->weight, a->y};
    return same_backend_ok(c, ts, 3);
}

static int validate_group_norm(const check *c, const ds_group_norm_args *a)
{
    char dx[128];
    TRY(tensor_ok(c, "x", a->x, 0));
    TRY(tensor_ok(c, "weight", a->weight, 1));
    TRY(tensor_ok(c, "bias", a->bias, 1));
    TRY(tensor_ok(c, "y", a->y, 0));
    TRY(float_ok(c, "x", a->x));
    TRY(float_ok(c, "y", a->y));
    TRY(rank_ok(c, "x", a->x, 2, DS_MAX_DIMS));
    TRY(same_shape_ok(c, "x", a->x, "y", a->y));
    int64_t ch = a->x->shape[1];
    if (a->groups <= 0 || ch % a->groups != 0)
        return fail(c, "%d groups do not divide the %" PRId64 " channels of x %s", a->groups, ch,
                    ds_tensor_describe(a->x, dx, sizeof dx));
    TRY(vector_ok(c, "weight", a->weight, ch));
    TRY(vector_ok(c, "bias", a->bias, ch));
    if (!(a->eps >= 0))
        return fail(c, "eps must be >= 0");
    const ds_tensor *ts[] = {a->x, a->weight, a->bias, a->y};
    return same_backend_ok(c, ts, 4);
}

static int validate_channel_rms_norm(const check *c, const ds_channel_rms_norm_args *a)
{
    TRY(tensor_ok(c, "x", a->x, 0));
    TRY(tensor_ok(c, "gamma", a->gamma, 0));
    TRY(tensor_ok(c, "bias", a->bias, 1));
    TRY(tensor_ok(c, "y", a->y, 0));
    TRY(float_ok(c, "x", a->x));
    TRY(float_ok(c, "y", a->y));
    TRY(rank_ok(c, "x", a->x, 2, DS_MAX_DIMS));
    TRY(same_shape_ok(c, "x", a->x, "y", a->y));
    TRY(vector_ok(c, "gamma", a->gamma, a->x->shape[1]));
    TRY(vector_ok(c, "bias", a->bias, a->x->shape[1]));
    if (!(a->eps >= 0))
        return fail(c, "eps must be >= 0");
    const ds_tensor *ts[] = {a->x, a->gamma, a->bias, a->y};
    return same_backend_ok(c, ts, 4);
}

static int validate_unary_float(const check *c, const ds_tensor *x, const ds_tensor *y, int min_rank)
{
    TRY(tensor_ok(c, "x", x, 0));
    TRY(tensor_ok(c, "y", y, 0));
    TRY(float_ok(c, "x", x));
    TRY(float_ok(c, "y", y));
    TRY(rank_ok(c, "x", x, min_rank, DS_MAX_DIMS));
    TRY(same_shape_ok(c, "x", x, "y", y));
    const ds_tensor *ts[] = {x, y};
    return same_backend_ok(c, ts, 2);
}

static int validate_rope(const check *c, const ds_rope_args *a)
{
    char dx[128], dc[128];
    TRY(validate_unary_float(c, a->x, a->y, 4));
    TRY(rank_ok(c, "x", a->x, 4, 4));
    TRY(tensor_ok(c, "cos", a->cos, 0));
    TRY(tensor_ok(c, "sin", a->sin, 0));
    int64_t s = a->x->shape[1], d = a->x->shape[3];
    if (d % 2 != 0)
        return fail(c, "x is %s: head dim must be even", ds_tensor_describe(a->x, dx, sizeof dx));
    if (a->cos->dtype != DS_F32 || a->cos->ndim != 2 || a->cos->shape[0] != s ||
        a->cos->shape[1] != d / 2)
        return fail(c, "cos is %s: expected [%" PRId64 ", %" PRId64 "] f32 for x %s",
                    ds_tensor_describe(a->cos, dc, sizeof dc), s, d / 2,
                    ds_tensor_describe(a->x, dx, sizeof dx));
    TRY(same_shape_ok(c, "cos", a->cos, "sin", a->sin));
    if (a->sin->dtype != DS_F32)
        return fail(c, "sin must be f32");
    if (a->style != DS_ROPE_INTERLEAVED && a->style != DS_ROPE_HALF_SPLIT)
        return fail(c, "unknown rope style %d", (int)a->style);
    const ds_tensor *ts[] = {a->x, a->cos, a->sin, a->y};
    return same_backend_ok(c, ts, 4);
}

static int validate_timestep_embedding(const check *c, const ds_timestep_embedding_args *a)
{
    char dt[128], dy[128];
    TRY(tensor_ok(c, "t", a->t, 0));
    TRY(tensor_ok(c, "y", a->y, 0));
    TRY(float_ok(c, "y", a->y));
    if ((a->t->dtype != DS_F32 && a->t->dtype != DS_F64) || a->t->ndim != 1)
        return fail(c, "t is %s: expected [B] f32 or f64", ds_tensor_describe(a->t, dt, sizeof dt));
    if (a->y->ndim != 2 || a->y->shape[0] != a->t->shape[0] || a->y->shape[1] % 2 != 0 ||
        a->y->shape[1] == 0)
        return fail(c, "y is %s: expected [%" PRId64 ", dim] with dim even and > 0",
                    ds_tensor_describe(a->y, dy, sizeof dy), a->t->shape[0]);
    if ((double)a->y->shape[1] / 2 - a->downscale_freq_shift == 0)
        return fail(c, "dim/2 - downscale_freq_shift must not be 0");
    if (!(a->max_period > 0))
        return fail(c, "max_period must be > 0");
    const ds_tensor *ts[] = {a->t, a->y};
    return same_backend_ok(c, ts, 2);
}

static int validate_binary(const check *c, const ds_binary_args *a)
{
    TRY(validate_unary_float(c, a->a, a->y, 0));
    TRY(tensor_ok(c, "b", a->b, 0));
    TRY(float_ok(c, "b", a->b));
    TRY(broadcast_ok(c, "a", a->a, "b", a->b));
    if (a->op < DS_BINARY_ADD || a->op > DS_BINARY_DIV)
        return fail(c, "unknown binary op %d", (int)a->op);
    const ds_tensor *ts[] = {a->a, a->b, a->y};
    return same_backend_ok(c, ts, 3);
}

static int validate_modulate(const check *c, const ds_modulate_args *a)
{
    TRY(validate_unary_float(c, a->x, a->y, 0));
    TRY(tensor_ok(c, "scale", a->scale, 0));
    TRY(tensor_ok(c, "shift", a->shift, 0));
    TRY(float_ok(c, "scale", a->scale));
    TRY(float_ok(c, "shift", a->shift));
    TRY(broadcast_ok(c, "x", a->x, "scale", a->scale));
    TRY(broadcast_ok(c, "x", a->x, "shift", a->shift));
    const ds_tensor *ts[] = {a->x, a->scale, a->shift, a->y};
    return same_backend_ok(c, ts, 4);
}

static int validate_gated_residual(const check *c, const ds_gated_residual_args *a)
{
    TRY(validate_unary_float(c, a->x, a->out, 0));
    TRY(tensor_ok(c, "gate", a->gate, 0));
    TRY(tensor_ok(c, "y_in", a->y_in, 0));
    TRY(float_ok(c, "gate", a->gate));
    TRY(float_ok(c, "y_in", a->y_in));
    TRY(broadcast_ok(c, "x", a->x, "gate", a->gate));
    TRY(same_shape_ok(c, "x", a->x, "y_in", a->y_in));
    const ds_tensor *ts[] = {a->x, a->gate, a->y_in, a->out};
    return same_backend_ok(c, ts, 4);
}

static int validate_concat(const check *c, const ds_concat_args *a)
{
    char d0[128], di[128];
    TRY(tensor_ok(c, "y", a->y, 0));
    if (a->count <= 0 || !a->inputs)
        return fail(c, "no inputs");
    const ds_tensor *first = a->inputs[0];
    TRY(tensor_ok(c, "inputs[0]", first, 0));
    if (a->axis < 0 || a->axis >= first->ndim)
        return fail(c, "axis %d is outside 0..%d", a->axis, first->ndim - 1);
    int64_t total = 0;
    for (int i = 0; i < a->count; i++) {
        const ds_tensor *t = a->inputs[i];
        TRY(tensor_ok(c, "input", t, 0));
        int ok = t->ndim == first->ndim && t->dtype == first->dtype && t->backend == first->backend;
        for (int j = 0; ok && j < t->ndim; j++)
            ok = j == a->axis || t->shape[j] == first->shape[j];
        if (!ok)
            return fail(c, "inputs[%d] is %s but inputs[0] is %s: all dims but %d, dtype and "
                        "backend must match", i, ds_tensor_describe(t, di, sizeof di),
                        ds_tensor_describe(first, d0, sizeof d0), a->axis);
        total += t->shape[a->axis];
    }
    int ok = a->y->ndim == first->ndim && a->y->dtype == first->dtype &&
             a->y->backend == first->backend;
    for (int j = 0; ok && j < first->ndim; j++)
        ok = a->y->shape[j] == (j == a->axis ? total : first->shape[j]);
    if (!ok)
        return fail(c, "y is %s: expected the inputs' shape with %" PRId64 " along axis %d, same "
                    "dtype and backend", ds_tensor_describe(a->y, d0, sizeof d0), total, a->axis);
    return DS_OK;
}

static int same_dtype_ok(const check *c, const ds_tensor *x, const ds_tensor *y)
{
    if (x->dtype != y->dtype)
        return fail(c, "x is %s but y is %s: data movement keeps the dtype (use cast)",
                    ds_dtype_name(x->dtype), ds_dtype_name(y->dtype));
    return DS_OK;
}

static int validate_slice(const check *c, const ds_slice_args *a)
{
    char dx[128], dy[128];
    TRY(tensor_ok(c, "x", a->x, 0));
    TRY(tensor_ok(c, "y", a->y, 0));
    TRY(same_dtype_ok(c, a->x, a->y));
    if (a->axis < 0 || a->axis >= a->x->ndim)
        return fail(c, "axis %d is outside 0..%d", a->axis, a->x->ndim - 1);
    int ok = a->y->ndim == a->x->ndim && a->start >= 0 &&
             a->start <= a->x->shape[a->axis] - a->y->shape[a->axis];
    for (int j = 0; ok && j < a->x->ndim; j++)
        ok = j == a->axis || a->y->shape[j] == a->x->shape[j];
    if (!ok)
        return fail(c, "y %s does not fit in x %s from %" PRId64 " along axis %d",
                    ds_tensor_describe(a->y, dy, sizeof dy), ds_tensor_describe(a->x, dx, sizeof dx),
                    a->start, a->axis);
    const ds_tensor *ts[] = {a->x, a->y};
    return same_backend_ok(c, ts, 2);
}

static int validate_permute(const check *c, const ds_permute_args *a)
{
    char dx[128], dy[128];
    TRY(tensor_ok(c, "x", a->x, 0));
    TRY(tensor_ok(c, "y", a->y, 0));
    TRY(same_dtype_ok(c, a->x, a->y));
    unsigned seen = 0;
    int ok = a->y->ndim == a->x->ndim;
    for (int i = 0; ok && i < a->x->ndim; i++) {
        int p = a->perm[i];
        ok = p >= 0 && p < a->x->ndim && !(seen & (1u << p)) && a->y->shape[i] == a->x->shape[p];
        if (ok)
            seen |= 1u << p;
    }
    if (!ok)
        return fail(c, "perm is not a permutation of x %s giving y %s",
                    ds_tensor_describe(a->x, dx, sizeof dx), ds_tensor_describe(a->y, dy, sizeof dy));
    const ds_tensor *ts[] = {a->x, a->y};
    return same_backend_ok(c, ts, 2);
}

/* x is the [B, C, H, W] side, y the [B, tokens, C*p*p] side, for both directions. */
static int validate_patchify(const check *c, const ds_patchify_args *a)
{
    char dx[128], dy[128];
    TRY(tensor_ok(c, "x", a->x, 0));
    TRY(tensor_ok(c, "y", a->y, 0));
    TRY(same_dtype_ok(c, a->x, a->y));
    TRY(rank_ok(c, "x", a->x, 4, 4));
    TRY(rank_ok(c, "y", a->y, 3, 3));
    int64_t p = a->patch;
    const int64_t *xs = a->x->shape;
    if (p <= 0 || xs[2] % p || xs[3] % p || a->y->shape[0] != xs[0] ||
        a->y->shape[1] != (xs[2] / p) * (xs[3] / p) || a->y->shape[2] != xs[1] * p * p)
        return fail(c, "x %s and y %s do not match patch %d (H and W must be multiples of it)",
                    ds_tensor_describe(a->x, dx, sizeof dx), ds_tensor_describe(a->y, dy, sizeof dy),
                    a->patch);
    const ds_tensor *ts[] = {a->x, a->y};
    return same_backend_ok(c, ts, 2);
}

static int validate_pad(const check *c, const ds_pad_args *a)
{
    char dx[128], dy[128];
    TRY(tensor_ok(c, "x", a->x, 0));
    TRY(tensor_ok(c, "y", a->y, 0));
    TRY(same_dtype_ok(c, a->x, a->y));
    int ok = a->y->ndim == a->x->ndim;
    for (int i = 0; ok && i < a->x->ndim; i++)
        ok = a->pad[2 * i] >= 0 && a->pad[2 * i + 1] >= 0 &&
             a->y->shape[i] == a->x->shape[i] + a->pad[2 * i] + a->pad[2 * i + 1];
    if (!ok)
        return fail(c, "y %s is not x %s padded as given (pads must be >= 0)",
                    ds_tensor_describe(a->y, dy, sizeof dy), ds_tensor_describe(a->x, dx, sizeof dx));
    const ds_tensor *ts[] = {a->x, a->y};
    return same_backend_ok(c, ts, 2);
}

static int validate_upsample(const check *c, const ds_upsample_args *a)
{
    char dx[128], dy[128];
    TRY(tensor_ok(c, "x", a->x, 0));
    TRY(tensor_ok(c, "y", a->y, 0));
    TRY(same_dtype_ok(c, a->x, a->y));
    TRY(rank_ok(c, "x", a->x, 2, DS_MAX_DIMS));
    int n = a->x->ndim;
    int ok = a->y->ndim == n && a->y->shape[n - 1] == 2 * a->x->shape[n - 1] &&
             a->y->shape[n - 2] == 2 * a->x->shape[n - 2];
    for (int i = 0; ok && i < n - 2; i++)
        ok = a->y->shape[i] == a->x->shape[i];
    if (!ok)
        return fail(c, "y %s is not x %s with the last two dims doubled",
                    ds_tensor_describe(a->y, dy, sizeof dy), ds_tensor_describe(a->x, dx, sizeof dx));
    const ds_tensor *ts[] = {a->x, a->y};
    return same_backend_ok(c, ts, 2);
}

static int validate_embedding(const check *c, const ds_embedding_args *a)
{
    char di[128], dt[128], dy[128];
    TRY(tensor_ok(c, "ids", a->ids, 0));
    TRY(tensor_ok(c, "table", a->table, 0));
    TRY(tensor_ok(c, "y", a->y, 0));
    if (a->ids->dtype != DS_I32 && a->ids->dtype != DS_I64)
        return fail(c, "ids is %s: expected i32 or i64", ds_tensor_describe(a->ids, di, sizeof di));
    TRY(rank_ok(c, "table", a->table, 2, 2));
    TRY(float_ok(c, "table", a->table));
    TRY(float_ok(c, "y", a->y));
    int ok = a->ids->ndim < DS_MAX_DIMS && a->y->ndim == a->ids->ndim + 1 &&
             a->y->shape[a->ids->ndim] == a->table->shape[1];
    for (int i = 0; ok && i < a->ids->ndim; i++)
        ok = a->y->shape[i] == a->ids->shape[i];
    if (!ok)
        return fail(c, "y is %s: expected ids' shape %s plus the table's width (table %s)",
                    ds_tensor_describe(a->y, dy, sizeof dy), ds_tensor_describe(a->ids, di, sizeof di),
                    ds_tensor_describe(a->table, dt, sizeof dt));
    const ds_tensor *ts[] = {a->ids, a->table, a->y};
    return same_backend_ok(c, ts, 3);
}

static int64_t conv_out(int64_t in, int64_t pad_total, int64_t k, int64_t stride)
{
    int64_t span = in + pad_total - k;
    return span < 0 ? -1 : span / stride + 1;
}

static int validate_conv2d(const check *c, const ds_conv2d_args *a)
{
    char dx[128], dw[128], dy[128];
    TRY(tensor_ok(c, "x", a->x, 0));
    TRY(tensor_ok(c, "weight", a->weight, 0));
    TRY(tensor_ok(c, "bias", a->bias, 1));
    TRY(tensor_ok(c, "y", a->y, 0));
    TRY(float_ok(c, "x", a->x));
    TRY(float_ok(c, "weight", a->weight));
    TRY(float_ok(c, "y", a->y));
    TRY(rank_ok(c, "x", a->x, 4, 4));
    TRY(rank_ok(c, "weight", a->weight, 4, 4));
    TRY(rank_ok(c, "y", a->y, 4, 4));
    for (int i = 0; i < 4; i++)
        if (a->pad[i] < 0)
            return fail(c, "padding must be >= 0");
    if (a->stride[0] <= 0 || a->stride[1] <= 0)
        return fail(c, "strides must be > 0");
    const int64_t *xs = a->x->shape, *ws = a->weight->shape;
    int64_t oh = conv_out(xs[2], a->pad[0] + a->pad[1], ws[2], a->stride[0]);
    int64_t ow = conv_out(xs[3], a->pad[2] + a->pad[3], ws[3], a->stride[1]);
    if (ws[1] != xs[1] || oh < 0 || ow < 0 || a->y->shape[0] != xs[0] || a->y->shape[1] != ws[0] ||
        a->y->shape[2] != oh || a->y->shape[3] != ow)
        return fail(c, "x %s, weight %s, padding (%d, %d, %d, %d), stride (%d, %d) give no match for "
                    "y %s", ds_tensor_describe(a->x, dx, sizeof dx),
                    ds_tensor_describe(a->weight, dw, sizeof dw), a->pad[0], a->pad[1], a->pad[2],
                    a->pad[3], a->stride[0], a->stride[1], ds_tensor_describe(a->y, dy, sizeof dy));
    TRY(vector_ok(c, "bias", a->bias, ws[0]));
    const ds_tensor *ts[] = {a->x, a->weight, a->bias, a->y};
    return same_backend_ok(c, ts, 4);
}

static int validate_conv3d(const check *c, const ds_conv3d_args *a)
{
    char dx[128], dw[128], dy[128], dc[128];
    TRY(tensor_ok(c, "x", a->x, 0));
    TRY(tensor_ok(c, "weight", a->weight, 0));
    TRY(tensor_ok(c, "bias", a->bias, 1));
    TRY(tensor_ok(c, "cache", a->cache, 1));
    TRY(tensor_ok(c, "y", a->y, 0));
    TRY(float_ok(c, "x", a->x));
    TRY(float_ok(c, "weight", a->weight));
    TRY(float_ok(c, "y", a->y));
    TRY(rank_ok(c, "x", a->x, 5, 5));
    TRY(rank_ok(c, "weight", a->weight, 5, 5));
    TRY(rank_ok(c, "y", a->y, 5, 5));
    if (a->pad_h < 0 || a->pad_w < 0)
        return fail(c, "padding must be >= 0");
    if (a->stride[0] <= 0 || a->stride[1] <= 0 || a->stride[2] <= 0)
        return fail(c, "strides must be > 0");
    const int64_t *xs = a->x->shape, *ws = a->weight->shape;
    int64_t cached = 0;
    if (a->cache) {
        TRY(float_ok(c, "cache", a->cache));
        const int64_t *cs = a->cache->shape;
        if (a->cache->ndim != 5 || cs[0] != xs[0] || cs[1] != xs[1] || cs[3] != xs[3] ||
            cs[4] != xs[4] || cs[2] > ws[2] - 1)
            return fail(c, "cache is %s: expected [B, Cin, <= KT-1, H, W] of x %s",
                        ds_tensor_describe(a->cache, dc, sizeof dc), ds_tensor_describe(a->x, dx, sizeof dx));
        cached = cs[2];
    }
    (void)cached; /* the front padding is KT - 1 frames in total, cache first, then zeros */
    int64_t ot = conv_out(xs[2], ws[2] - 1, ws[2], a->stride[0]);
    int64_t oh = conv_out(xs[3], 2 * (int64_t)a->pad_h, ws[3], a->stride[1]);
    int64_t ow = conv_out(xs[4], 2 * (int64_t)a->pad_w, ws[4], a->stride[2]);
    if (ws[1] != xs[1] || ot < 0 || oh < 0 || ow < 0 || a->y->shape[0] != xs[0] ||
        a->y->shape[1] != ws[0] || a->y->shape[2] != ot || a->y->shape[3] != oh ||
        a->y->shape[4] != ow)
        return fail(c, "x %s, weight %s, padding (%d, %d), stride (%d, %d, %d) give no match for "
                    "y %s", ds_tensor_describe(a->x, dx, sizeof dx),
                    ds_tensor_describe(a->weight, dw, sizeof dw), a->pad_h, a->pad_w, a->stride[0],
                    a->stride[1], a->stride[2], ds_tensor_describe(a->y, dy, sizeof dy));
    TRY(vector_ok(c, "bias", a->bias, ws[0]));
    const ds_tensor *ts[] = {a->x, a->weight, a->bias, a->cache, a->y};
    return same_backend_ok(c, ts, 5);
}

static int validate_cast(const check *c, const ds_cast_args *a)
{
    char dx[128], dy[128];
    TRY(tensor_ok(c, "x", a->x, 0));
    TRY(tensor_ok(c, "y", a->y, 0));
    TRY(same_shape_ok(c, "x", a->x, "y", a->y));
    int xf = is_float(a->x->dtype) || is_fp8(a->x->dtype) || a->x->dtype == DS_F64;
    int yf = is_float(a->y->dtype) || is_fp8(a->y->dtype) || a->y->dtype == DS_F64;
    if (!xf || !yf)
        return fail(c, "casts are between f64, f32, bf16, f16, f8_e4m3 and f8_e5m2; got x %s, y %s",
                    ds_tensor_describe(a->x, dx, sizeof dx), ds_tensor_describe(a->y, dy, sizeof dy));
    const ds_tensor *ts[] = {a->x, a->y};
    return same_backend_ok(c, ts, 2);
}

int ds_validate_op(ds_op op, const void *args, ds_error *err)
{
    check c = {ds_op_name(op), err};
    if (!args)
        return fail(&c, "no arguments");
    switch (op) {
    case DS_OP_LINEAR: return validate_linear(&c, args);
    case DS_OP_BATCHED_MATMUL: return validate_batched_matmul(&c, args);
    case DS_OP_ATTENTION: return validate_attention(&c, args);
    case DS_OP_LAYER_NORM: return validate_layer_norm(&c, args);
    case DS_OP_RMS_NORM: return validate_rms_norm(&c, args);
    case DS_OP_GROUP_NORM: return validate_group_norm(&c, args);
    case DS_OP_CHANNEL_RMS_NORM: return validate_channel_rms_norm(&c, args);
    case DS_OP_SOFTMAX: {
        const ds_softmax_args *a = args;
        return validate_unary_float(&c, a->x, a->y, 1);
    }
    case DS_OP_ACTIVATION: {
        const ds_activation_args *a = args;
        if (a->activation < 0 || a->activation >= DS_ACT_COUNT)
            return fail(&c, "unknown activation %d", (int)a->activation);
        return validate_unary_float(&c, a->x, a->y, 0);
    }
    case DS_OP_ROPE: return validate_rope(&c, args);
    case DS_OP_TIMESTEP_EMBEDDING: return validate_timestep_embedding(&c, args);
    case DS_OP_BINARY: return validate_binary(&c, args);
    case DS_OP_MODULATE: return validate_modulate(&c, args);
    case DS_OP_GATED_RESIDUAL: return validate_gated_residual(&c, args);
    case DS_OP_SCALE: {
        const ds_scale_args *a = args;
        return validate_unary_float(&c, a->x, a->y, 0);
    }
    case DS_OP_CLAMP: {
        const ds_clamp_args *a = args;
        if (!(a->lo <= a->hi))
            return fail(&c, "lo %g must be <= hi %g", (double)a->lo, (double)a->hi);
        return validate_unary_float(&c, a->x, a->y, 0);
    }
    case DS_OP_CONCAT: return validate_concat(&c, args);
    case DS_OP_SLICE: return validate_slice(&c, args);
    case DS_OP_PERMUTE: return validate_permute(&c, args);
    case DS_OP_PATCHIFY:
    case DS_OP_UNPATCHIFY: return validate_patchify(&c, args);
    case DS_OP_PAD: return validate_pad(&c, args);
    case DS_OP_UPSAMPLE_NEAREST2X: return validate_upsample(&c, args);
    case DS_OP_EMBEDDING: return validate_embedding(&c, args);
    case DS_OP_CONV2D: return validate_conv2d(&c, args);
    case DS_OP_CONV3D_CAUSAL: return validate_conv3d(&c, args);
    case DS_OP_CAST: return validate_cast(&c, args);
    case DS_OP_COUNT: break;
    }
    return fail(&c, "unknown op %d", (int)op);
}

/* ---- Dispatch and the CPU fallback ---- */

static int call_slot(ds_backend *b, ds_op op, ds_stream *s, const void *args, ds_error *err)
{
#define SLOT(field, type)                                                                          \
    return b->field ? b->field(b, s, (const type *)args, err)                                      \
                    : ds_error_set(err, DS_ERR_UNIMPLEMENTED, "%s: backend %s has no %s", #field,   \
                                   b->name, #field)
    switch (op) {
    case DS_OP_LINEAR: SLOT(linear, ds_linear_args);
    case DS_OP_BATCHED_MATMUL: SLOT(batched_matmul, ds_batched_matmul_args);
    case DS_OP_ATTENTION: SLOT(attention, ds_attention_args);
    case DS_OP_LAYER_NORM: SLOT(layer_norm, ds_layer_norm_args);
    case DS_OP_RMS_NORM: SLOT(rms_norm, ds_rms_norm_args);
    case DS_OP_GROUP_NORM: SLOT(group_norm, ds_group_norm_args);
    case DS_OP_CHANNEL_RMS_NORM: SLOT(channel_rms_norm, ds_channel_rms_norm_args);
    case DS_OP_SOFTMAX: SLOT(softmax, ds_softmax_args);
    case DS_OP_ACTIVATION: SLOT(activation, ds_activation_args);
    case DS_OP_ROPE: SLOT(rope, ds_rope_args);
    case DS_OP_TIMESTEP_EMBEDDING: SLOT(timestep_embedding, ds_timestep_embedding_args);
    case DS_OP_BINARY: SLOT(binary, ds_binary_args);
    case DS_OP_MODULATE: SLOT(modulate, ds_modulate_args);
    case DS_OP_GATED_RESIDUAL: SLOT(gated_residual, ds_gated_residual_args);
    case DS_OP_SCALE: SLOT(scale, ds_scale_args);
    case DS_OP_CLAMP: SLOT(clamp, ds_clamp_args);
    case DS_OP_CONCAT: SLOT(concat, ds_concat_args);
    case DS_OP_SLICE: SLOT(slice, ds_slice_args);
    case DS_OP_PERMUTE: SLOT(permute, ds_permute_args);
    case DS_OP_PATCHIFY: SLOT(patchify, ds_patchify_args);
    case DS_OP_UNPATCHIFY: SLOT(unpatchify, ds_patchify_args);
    case DS_OP_PAD: SLOT(pad, ds_pad_args);
    case DS_OP_UPSAMPLE_NEAREST2X: SLOT(upsample_nearest2x, ds_upsample_args);
    case DS_OP_EMBEDDING: SLOT(embedding, ds_embedding_args);
    case DS_OP_CONV2D: SLOT(conv2d, ds_conv2d_args);
    case DS_OP_CONV3D_CAUSAL: SLOT(conv3d_causal, ds_conv3d_args);
    case DS_OP_CAST: SLOT(cast, ds_cast_args);
    case DS_OP_COUNT: break;
    }
#undef SLOT
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "unknown op %d", (int)op);
}

static int has_slot(const ds_backend *b, ds_op op)
{
    switch (op) {
    case DS_OP_LINEAR: return b->linear != NULL;
    case DS_OP_BATCHED_MATMUL: return b->batched_matmul != NULL;
    case DS_OP_ATTENTION: return b->attention != NULL;
    case DS_OP_LAYER_NORM: return b->layer_norm != NULL;
    case DS_OP_RMS_NORM: return b->rms_norm != NULL;
    case DS_OP_GROUP_NORM: return b->group_norm != NULL;
    case DS_OP_CHANNEL_RMS_NORM: return b->channel_rms_norm != NULL;
    case DS_OP_SOFTMAX: return b->softmax != NULL;
    case DS_OP_ACTIVATION: return b->activation != NULL;
    case DS_OP_ROPE: return b->rope != NULL;
    case DS_OP_TIMESTEP_EMBEDDING: return b->timestep_embedding != NULL;
    case DS_OP_BINARY: return b->binary != NULL;
    case DS_OP_MODULATE: return b->modulate != NULL;
    case DS_OP_GATED_RESIDUAL: return b->gated_residual != NULL;
    case DS_OP_SCALE: return b->scale != NULL;
    case DS_OP_CLAMP: return b->clamp != NULL;
    case DS_OP_CONCAT: return b->concat != NULL;
    case DS_OP_SLICE: return b->slice != NULL;
    case DS_OP_PERMUTE: return b->permute != NULL;
    case DS_OP_PATCHIFY: return b->patchify != NULL;
    case DS_OP_UNPATCHIFY: return b->unpatchify != NULL;
    case DS_OP_PAD: return b->pad != NULL;
    case DS_OP_UPSAMPLE_NEAREST2X: return b->upsample_nearest2x != NULL;
    case DS_OP_EMBEDDING: return b->embedding != NULL;
    case DS_OP_CONV2D: return b->conv2d != NULL;
    case DS_OP_CONV3D_CAUSAL: return b->conv3d_causal != NULL;
    case DS_OP_CAST: return b->cast != NULL;
    case DS_OP_COUNT: break;
    }
    return 0;
}

/* The tensor fields of an op's argument struct: addresses inside a copy of it, so the fallback
 * can point them at host copies. Inputs first, then the one output. */
#define MAX_OPERANDS 8
typedef struct operands {
    const ds_tensor **in[MAX_OPERANDS];
    int nin;
    ds_tensor **out;
} operands;

static size_t args_size(ds_op op)
{
    switch (op) {
    case DS_OP_LINEAR: return sizeof(ds_linear_args);
    case DS_OP_BATCHED_MATMUL: return sizeof(ds_batched_matmul_args);
    case DS_OP_ATTENTION: return sizeof(ds_attention_args);
    case DS_OP_LAYER_NORM: return sizeof(ds_layer_norm_args);
    case DS_OP_RMS_NORM: return sizeof(ds_rms_norm_args);
    case DS_OP_GROUP_NORM: return sizeof(ds_group_norm_args);
    case DS_OP_CHANNEL_RMS_NORM: return sizeof(ds_channel_rms_norm_args);
    case DS_OP_SOFTMAX: return sizeof(ds_softmax_args);
    case DS_OP_ACTIVATION: return sizeof(ds_activation_args);
    case DS_OP_ROPE: return sizeof(ds_rope_args);
    case DS_OP_TIMESTEP_EMBEDDING: return sizeof(ds_timestep_embedding_args);
    case DS_OP_BINARY: return sizeof(ds_binary_args);
    case DS_OP_MODULATE: return sizeof(ds_modulate_args);
    case DS_OP_GATED_RESIDUAL: return sizeof(ds_gated_residual_args);
    case DS_OP_SCALE: return sizeof(ds_scale_args);
    case DS_OP_CLAMP: return sizeof(ds_clamp_args);
    case DS_OP_CONCAT: return sizeof(ds_concat_args);
    case DS_OP_SLICE: return sizeof(ds_slice_args);
    case DS_OP_PERMUTE: return sizeof(ds_permute_args);
    case DS_OP_PATCHIFY:
    case DS_OP_UNPATCHIFY: return sizeof(ds_patchify_args);
    case DS_OP_PAD: return sizeof(ds_pad_args);
    case DS_OP_UPSAMPLE_NEAREST2X: return sizeof(ds_upsample_args);
    case DS_OP_EMBEDDING: return sizeof(ds_embedding_args);
    case DS_OP_CONV2D: return sizeof(ds_conv2d_args);
    case DS_OP_CONV3D_CAUSAL: return sizeof(ds_conv3d_args);
    case DS_OP_CAST: return sizeof(ds_cast_args);
    case DS_OP_COUNT: break;
    }
    return 0;
}

#define IN(field) o->in[o->nin++] = (const ds_tensor **)&a->field
static void find_operands(ds_op op, void *args, operands *o)
{
    o->nin = 0;
    o->out = NULL;
    switch (op) {
    case DS_OP_LINEAR: { ds_linear_args *a = args; IN(x); IN(weight); IN(bias); o->out = &a->y; break; }
    case DS_OP_BATCHED_MATMUL: { ds_batched_matmul_args *a = args; IN(a); IN(b); o->out = &a->y; break; }
    case DS_OP_ATTENTION: { ds_attention_args *a = args; IN(q); IN(k); IN(v); IN(key_mask); o->out = &a->out; break; }
    case DS_OP_LAYER_NORM: { ds_layer_norm_args *a = args; IN(x); IN(weight); IN(bias); o->out = &a->y; break; }
    case DS_OP_RMS_NORM: { ds_rms_norm_args *a = args; IN(x); IN(weight); o->out = &a->y; break; }
    case DS_OP_GROUP_NORM: { ds_group_norm_args *a = args; IN(x); IN(weight); IN(bias); o->out = &a->y; break; }
    case DS_OP_CHANNEL_RMS_NORM: { ds_channel_rms_norm_args *a = args; IN(x); IN(gamma); IN(bias); o->out = &a->y; break; }
    case DS_OP_SOFTMAX: { ds_softmax_args *a = args; IN(x); o->out = &a->y; break; }
    case DS_OP_ACTIVATION: { ds_activation_args *a = args; IN(x); o->out = &a->y; break; }
    case DS_OP_ROPE: { ds_rope_args *a = args; IN(x); IN(cos); IN(sin); o->out = &a->y; break; }
    case DS_OP_TIMESTEP_EMBEDDING: { ds_timestep_embedding_args *a = args; IN(t); o->out = &a->y; break; }
    case DS_OP_BINARY: { ds_binary_args *a = args; IN(a); IN(b); o->out = &a->y; break; }
    case DS_OP_MODULATE: { ds_modulate_args *a = args; IN(x); IN(scale); IN(shift); o->out = &a->y; break; }
    case DS_OP_GATED_RESIDUAL: { ds_gated_residual_args *a = args; IN(x); IN(gate); IN(y_in); o->out = &a->out; break; }
    case DS_OP_SCALE: { ds_scale_args *a = args; IN(x); o->out = &a->y; break; }
    case DS_OP_CLAMP: { ds_clamp_args *a = args; IN(x); o->out = &a->y; break; }
    case DS_OP_CONCAT: { ds_concat_args *a = args; o->out = &a->y; break; } /* inputs: see run_on_cpu */
    case DS_OP_SLICE: { ds_slice_args *a = args; IN(x); o->out = &a->y; break; }
    case DS_OP_PERMUTE: { ds_permute_args *a = args; IN(x); o->out = &a->y; break; }
    case DS_OP_PATCHIFY: { ds_patchify_args *a = args; IN(x); o->out = &a->y; break; }
    case DS_OP_UNPATCHIFY: { ds_patchify_args *a = args; IN(y); o->out = (ds_tensor **)&a->x; break; }
    case DS_OP_PAD: { ds_pad_args *a = args; IN(x); o->out = &a->y; break; }
    case DS_OP_UPSAMPLE_NEAREST2X: { ds_upsample_args *a = args; IN(x); o->out = &a->y; break; }
    case DS_OP_EMBEDDING: { ds_embedding_args *a = args; IN(ids); IN(table); o->out = &a->y; break; }
    case DS_OP_CONV2D: { ds_conv2d_args *a = args; IN(x); IN(weight); IN(bias); o->out = &a->y; break; }
    case DS_OP_CONV3D_CAUSAL: { ds_conv3d_args *a = args; IN(x); IN(weight); IN(bias); IN(cache); o->out = &a->y; break; }
    case DS_OP_CAST: { ds_cast_args *a = args; IN(x); o->out = &a->y; break; }
    case DS_OP_COUNT: break;
    }
}
#undef IN

/* Room for any op's arguments, so the fallback can copy and rewrite them. */
typedef union any_args {
    ds_linear_args linear;
    ds_batched_matmul_args batched_matmul;
    ds_attention_args attention;
    ds_layer_norm_args layer_norm;
    ds_rms_norm_args rms_norm;
    ds_group_norm_args group_norm;
    ds_channel_rms_norm_args channel_rms_norm;
    ds_softmax_args softmax;
    ds_activation_args activation;
    ds_rope_args rope;
    ds_timestep_embedding_args timestep_embedding;
    ds_binary_args binary;
    ds_modulate_args modulate;
    ds_gated_residual_args gated_residual;
    ds_scale_args scale;
    ds_clamp_args clamp;
    ds_concat_args concat;
    ds_slice_args slice;
    ds_permute_args permute;
    ds_patchify_args patchify;
    ds_pad_args pad;
    ds_upsample_args upsample;
    ds_embedding_args embedding;
    ds_conv2d_args conv2d;
    ds_conv3d_args conv3d;
    ds_cast_args cast;
} any_args;

/* A host copy of a tensor, owned by the fallback. */
static int host_copy(ds_backend *cpu, const ds_tensor *t, ds_stream *s, int download,
                     ds_tensor *out, ds_error *err)
{
    int rc = ds_tensor_alloc(cpu, t->dtype, t->ndim, t->shape, out, err);
    if (rc == DS_OK && download)
        rc = ds_tensor_download(t, out->data, s, err);
    return rc;
}

/* Runs op on the CPU with host copies of every operand, then copies the result back to the
 * caller's backend on stream s. */
static int run_on_cpu(ds_backend *b, ds_op op, ds_stream *s, const void *args, ds_error *err)
{
    ds_backend *cpu;
    int rc = ds_cpu_fallback_backend(&cpu, err);
    if (rc != DS_OK)
        return rc;
    any_args storage;
    void *copy = &storage;
    size_t size = args_size(op);
    if (size == 0)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s: no fallback for this op", ds_op_name(op));
    memcpy(copy, args, size);
    operands o;
    find_operands(op, copy, &o);

    ds_tensor host[MAX_OPERANDS + 1];
    const ds_tensor **concat_inputs = NULL;
    ds_tensor *concat_host = NULL;
    int nhost = 0, nconcat = 0;
    memset(host, 0, sizeof host);

    if (op == DS_OP_CONCAT) {
        ds_concat_args *a = (ds_concat_args *)copy;
        concat_inputs = calloc((size_t)a->count, sizeof *concat_inputs);
        concat_host = calloc((size_t)a->count, sizeof *concat_host);
        if (!concat_inputs || !concat_host) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "concat: out of memory");
            goto done;
        }
        for (; nconcat < a->count; nconcat++) {
            rc = host_copy(cpu, a->inputs[nconcat], s, 1, &concat_host[nconcat], err);
            if (rc != DS_OK)
                goto done;
            concat_inputs[nconcat] = &concat_host[nconcat];
        }
        a->inputs = concat_inputs;
    }
    for (int i = 0; i < o.nin; i++) {
        const ds_tensor *t = *o.in[i];
        if (!t)
            continue;
        rc = host_copy(cpu, t, s, 1, &host[nhost], err);
        if (rc != DS_OK)
            goto done;
        *o.in[i] = &host[nhost++];
    }
    /* Every op writes its whole output, so the output's host copy needs no download, and an
     * output aliasing an input is harmless: the input's host copy is a separate buffer. */
    ds_tensor *target = *o.out;
    rc = host_copy(cpu, target, s, 0, &host[nhost], err);
    if (rc != DS_OK)
        goto done;
    *o.out = &host[nhost++];

    rc = call_slot(cpu, op, NULL, copy, err);
    if (rc == DS_OK) {
        rc = b->copy_to_device(b, target->data, (*o.out)->data, ds_tensor_nbytes(target), s, err);
        if (rc == DS_OK)
            rc = b->stream_synchronize(b, s, err);
    }
done:
    for (int i = 0; i < nhost; i++)
        ds_tensor_free(&host[i]);
    for (int i = 0; i < nconcat; i++)
        ds_tensor_free(&concat_host[i]);
    free(concat_host);
    free(concat_inputs);
    return rc;
}

/* ---- Logging fallbacks ----
 *
 * A fallback on a GPU is slow (copies both ways, a synchronise, CPU compute), so each one is
 * logged at info level, once per op and shape class: the op with its operands' dtypes, ranks
 * and last dims (what decides support: dtype, feature width, head dim). Sequence lengths and
 * image sizes vary per request and would repeat the line. */

#define FALLBACK_CLASSES 512

static pthread_mutex_t fallback_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t fallback_seen[FALLBACK_CLASSES]; /* open addressing; 0 = empty */
static unsigned fallback_count;

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    return h * 0xBF58476D1CE4E5B9ull;
}

static uint64_t tensor_class(uint64_t h, const ds_tensor *t)
{
    if (!t)
        return mix(h, 0xFFFF);
    h = mix(h, (uint64_t)t->dtype);
    h = mix(h, (uint64_t)t->ndim);
    return mix(h, t->ndim ? (uint64_t)t->shape[t->ndim - 1] : 0);
}

/* 1 the first time this class is seen (or when the table is full: better a repeated line
 * than a silent fallback). */
static int fallback_first(uint64_t cls)
{
    cls |= 1; /* never 0 */
    int first = 1;
    pthread_mutex_lock(&fallback_lock);
    if (fallback_count < FALLBACK_CLASSES) {
        unsigned i = (unsigned)(cls % FALLBACK_CLASSES);
        while (fallback_seen[i] && fallback_seen[i] != cls)
            i = (i + 1) % FALLBACK_CLASSES;
        if (fallback_seen[i] == cls) {
            first = 0;
        } else {
            fallback_seen[i] = cls;
            fallback_count++;
        }
    }
    pthread_mutex_unlock(&fallback_lock);
    return first;
}

static void log_fallback(const ds_backend *b, ds_op op, const void *args)
{
    any_args storage;
    size_t size = args_size(op);
    if (size == 0)
        return;
    memcpy(&storage, args, size);
    operands o;
    find_operands(op, &storage, &o);
    const ds_tensor *ts[MAX_OPERANDS + 2];
    int nt = 0;
    if (op == DS_OP_CONCAT) {
        const ds_concat_args *a = args;
        for (int i = 0; i < a->count && nt < MAX_OPERANDS; i++)
            ts[nt++] = a->inputs[i];
    }
    for (int i = 0; i < o.nin; i++)
        ts[nt++] = *o.in[i];
    ts[nt++] = *o.out;
    uint64_t cls = mix(0, (uint64_t)op);
    for (int i = 0; i < nt; i++)
        cls = tensor_class(cls, ts[i]);
    if (!fallback_first(cls))
        return;
    char text[768], d[128];
    size_t used = 0;
    text[0] = '\0';
    for (int i = 0; i < nt && used < sizeof text; i++)
        used += (size_t)snprintf(text + used, sizeof text - used, "%s%s", i ? ", " : "",
                                 ts[i] ? ds_tensor_describe(ts[i], d, sizeof d) : "none");
    ds_log_info("%s runs on the CPU: backend %s does not support these operands (%s); logged "
                "once per op, dtypes and feature widths", ds_op_name(op), b->name, text);
}

static ds_op_observer observer_fn;
static void *observer_ctx;

void ds_ops_set_observer(ds_op_observer fn, void *ctx)
{
    observer_ctx = ctx;
    observer_fn = fn;
}

static int run(ds_backend *b, ds_op op, ds_stream *s, const void *args, ds_error *err)
{
    int rc = ds_validate_op(op, args, err);
    if (rc != DS_OK)
        return rc;
    if (!b)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: no backend", ds_op_name(op));
    if (observer_fn)
        observer_fn(observer_ctx, b, op, args);
    if (has_slot(b, op) && b->supports(b, op, args))
        return call_slot(b, op, s, args, err);
    if (strcmp(b->name, "cpu") == 0)
        return ds_error_set(err, DS_ERR_UNIMPLEMENTED, "%s: the CPU backend does not support these "
                            "arguments", ds_op_name(op));
    log_fallback(b, op, args);
    return run_on_cpu(b, op, s, args, err);
}

int ds_linear(ds_backend *b, ds_stream *s, const ds_linear_args *a, ds_error *err) { return run(b, DS_OP_LINEAR, s, a, err); }
int ds_batched_matmul(ds_backend *b, ds_stream *s, const ds_batched_matmul_args *a, ds_error *err) { return run(b, DS_OP_BATCHED_MATMUL, s, a, err); }
int ds_attention(ds_backend *b, ds_stream *s, const ds_attention_args *a, ds_error *err) { return run(b, DS_OP_ATTENTION, s, a, err); }
int ds_layer_norm(ds_backend *b, ds_stream *s, const ds_layer_norm_args *a, ds_error *err) { return run(b, DS_OP_LAYER_NORM, s, a, err); }
int ds_rms_norm(ds_backend *b, ds_stream *s, const ds_rms_norm_args *a, ds_error *err) { return run(b, DS_OP_RMS_NORM, s, a, err); }
int ds_group_norm(ds_backend *b, ds_stream *s, const ds_group_norm_args *a, ds_error *err) { return run(b, DS_OP_GROUP_NORM, s, a, err); }
int ds_channel_rms_norm(ds_backend *b, ds_stream *s, const ds_channel_rms_norm_args *a, ds_error *err) { return run(b, DS_OP_CHANNEL_RMS_NORM, s, a, err); }
int ds_softmax(ds_backend *b, ds_stream *s, const ds_softmax_args *a, ds_error *err) { return run(b, DS_OP_SOFTMAX, s, a, err); }
int ds_activate(ds_backend *b, ds_stream *s, const ds_activation_args *a, ds_error *err) { return run(b, DS_OP_ACTIVATION, s, a, err); }
int ds_rope(ds_backend *b, ds_stream *s, const ds_rope_args *a, ds_error *err) { return run(b, DS_OP_ROPE, s, a, err); }
int ds_timestep_embedding(ds_backend *b, ds_stream *s, const ds_timestep_embedding_args *a, ds_error *err) { return run(b, DS_OP_TIMESTEP_EMBEDDING, s, a, err); }
int ds_binary(ds_backend *b, ds_stream *s, const ds_binary_args *a, ds_error *err) { return run(b, DS_OP_BINARY, s, a, err); }
int ds_modulate(ds_backend *b, ds_stream *s, const ds_modulate_args *a, ds_error *err) { return run(b, DS_OP_MODULATE, s, a, err); }
int ds_gated_residual(ds_backend *b, ds_stream *s, const ds_gated_residual_args *a, ds_error *err) { return run(b, DS_OP_GATED_RESIDUAL, s, a, err); }
int ds_scale(ds_backend *b, ds_stream *s, const ds_scale_args *a, ds_error *err) { return run(b, DS_OP_SCALE, s, a, err); }
int ds_clamp(ds_backend *b, ds_stream *s, const ds_clamp_args *a, ds_error *err) { return run(b, DS_OP_CLAMP, s, a, err); }
int ds_concat(ds_backend *b, ds_stream *s, const ds_concat_args *a, ds_error *err) { return run(b, DS_OP_CONCAT, s, a, err); }
int ds_slice(ds_backend *b, ds_stream *s, const ds_slice_args *a, ds_error *err) { return run(b, DS_OP_SLICE, s, a, err); }
int ds_permute(ds_backend *b, ds_stream *s, const ds_permute_args *a, ds_error *err) { return run(b, DS_OP_PERMUTE, s, a, err); }
int ds_patchify(ds_backend *b, ds_stream *s, const ds_patchify_args *a, ds_error *err) { return run(b, DS_OP_PATCHIFY, s, a, err); }
int ds_unpatchify(ds_backend *b, ds_stream *s, const ds_patchify_args *a, ds_error *err) { return run(b, DS_OP_UNPATCHIFY, s, a, err); }
int ds_pad(ds_backend *b, ds_stream *s, const ds_pad_args *a, ds_error *err) { return run(b, DS_OP_PAD, s, a, err); }
int ds_upsample_nearest2x(ds_backend *b, ds_stream *s, const ds_upsample_args *a, ds_error *err) { return run(b, DS_OP_UPSAMPLE_NEAREST2X, s, a, err); }
int ds_embedding(ds_backend *b, ds_stream *s, const ds_embedding_args *a, ds_error *err) { return run(b, DS_OP_EMBEDDING, s, a, err); }
int ds_conv2d(ds_backend *b, ds_stream *s, const ds_conv2d_args *a, ds_error *err) { return run(b, DS_OP_CONV2D, s, a, err); }
int ds_conv3d_causal(ds_backend *b, ds_stream *s, const ds_conv3d_args *a, ds_error *err) { return run(b, DS_OP_CONV3D_CAUSAL, s, a, err); }
int ds_cast(ds_backend *b, ds_stream *s, const ds_cast_args *a, ds_error *err) { return run(b, DS_OP_CAST, s, a, err); }
