/* Elementwise ops on the CPU: activations, binary ops with NumPy broadcasting, modulate, gated
 * residual, scale, clamp, and casts.
 *
 * One engine runs them all: the output's flat index range is split over the pool, and each
 * chunk is walked in runs of at most RUN elements within which every operand is either
 * contiguous or one repeated value. Operands are read in place when they are f32 and
 * contiguous, otherwise converted into stack buffers; results go straight into y when it is
 * f32. Every output element depends only on the same index of the inputs, so y may alias x
 * and the chunking never changes a result.
 *
 * A small operand broadcast over the output (a modulation's [B, 1, C] scale over [B, S, C]) is
 * widened to f32 once per call, not once per run, and then read in place. Binary ops, modulate
 * and gated residual with a bf16 output whose operands are all contiguous bf16 or f32 (after
 * that widening) skip the buffers: a fused loop (elementwise_bf16.c) reads, computes and rounds
 * in one pass. Both give the generic path's bits: widening bf16 or f16 to f32 is exact, and the
 * fused loops compute the same f32 expression with the same rounding at the end. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/elementwise_bf16.h"
#include "kernels/ops.h"

#define RUN 1024          /* elements per step: four f32 buffers of it stay in L1/L2 */
#define GRAIN 16384       /* elements per chunk: enough to amortise waking a worker */
#define MAX_INPUTS 3
/* Largest broadcast operand widened once per call (256 KiB as f32): the modulation rows of the
 * models (C up to 5120, times a batch of 2 under CFG) fit many times over, and the buffer stays
 * in L2 while the workers read it. */
#define WIDEN_MAX 65536

/* ---- Activations ---- */

static void activate(const float *x, float *y, int64_t n, ds_activation act)
{
    /* Every form is x / (1 + exp(-t)): large |x| gives the limit, never NaN (exp overflowing
     * to inf makes it a signed zero), and the tanh GELU uses 0.5 (1 + tanh(u)) = sigmoid(2u),
     * which needs one exp instead of a tanh and does not cancel for negative u. */
    switch (act) {
    case DS_ACT_NONE:
        if (y != x)
            memcpy(y, x, (size_t)n * sizeof *y);
        return;
    case DS_ACT_SILU:
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] / (1.0f + expf(-x[i]));
        return;
    case DS_ACT_GELU_ERF:
        for (int64_t i = 0; i < n; i++)
            y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
        return;
    case DS_ACT_GELU_TANH:
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            /* 2 * sqrt(2/pi) * (v + 0.044715 v^3); v^3 may be inf, exp then 0 or inf: fine. */
            float u2 = 1.5957691216057308f * (v + 0.044715f * v * v * v);
            y[i] = v / (1.0f + expf(-u2));
        }
        return;
    case DS_ACT_GELU_SIGMOID:
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
        return;
    case DS_ACT_COUNT:
        break;
    }
}

void ds__cpu_activate_row(float *v, int64_t n, ds_activation act) { activate(v, v, n, act); }

/* ---- Broadcast operands ---- */

/* An input viewed over the output's shape: dims of the output (those of size 1 dropped,
 * neighbours merged where the input's strides allow) with the input's element stride along
 * each, 0 where it is broadcast. */
typedef struct operand {
    const char *data;
    ds_dtype dtype;
    int ndim;
    int64_t size[DS_MAX_DIMS];
    int64_t stride[DS_MAX_DIMS];
} operand;

static void operand_init(operand *o, const ds_tensor *t, const ds_tensor *out)
{
    int64_t size[DS_MAX_DIMS], stride[DS_MAX_DIMS];
    int nd = 0;
    int64_t tstride = 1;
    /* Walk from the last dim, NumPy-aligned on the right. */
    for (int i = out->ndim - 1; i >= 0; i--) {
        int j = i - (out->ndim - t->ndim);
        int64_t td = j >= 0 ? t->shape[j] : 1;
        int64_t od = out->shape[i];
        int64_t st = td == 1 ? 0 : tstride;
        tstride *= td;
        if (od == 1)
            continue;
        size[nd] = od;
        stride[nd] = st;
        nd++;
    }
    o->data = t->data;
    o->dtype = t->dtype;
    o->ndim = 0;
    /* size/stride are innermost first here; merge, then store outermost first. */
    int64_t msize[DS_MAX_DIMS], mstride[DS_MAX_DIMS];
    int m = 0;
    for (int d = 0; d < nd; d++) {
        if (m > 0 && stride[d] == mstride[m - 1] * msize[m - 1]) {
            msize[m - 1] *= size[d];
            continue;
        }
        msize[m] = size[d];
        mstride[m] = stride[d];
        m++;
    }
    if (m == 0) {
        msize[0] = 1;
        mstride[0] = 0;
        m = 1;
    }
    for (int d = 0; d < m; d++) {
        o->size[d] = msize[m - 1 - d];
        o->stride[d] = mstride[m - 1 - d];
    }
    o->ndim = m;
}

/* Elements from flat output index i to the end of the operand's innermost run. */
static int64_t operand_run(const operand *o, int64_t i)
{
    int64_t inner = o->size[o->ndim - 1];
    return inner - i % inner;
}

static int64_t operand_offset(const operand *o, int64_t i)
{
    int64_t off = 0;
    for (int d = o->ndim - 1; d >= 0; d--) {
        off += (i % o->size[d]) * o->stride[d];
        i /= o->size[d];
    }
    return off;
}

/* run f32 values of the operand from output index i: in place or converted into tmp. */
static const float *operand_load(const operand *o, int64_t i, int64_t run, float *tmp)
{
    int64_t off = operand_offset(o, i);
    size_t esize = ds_dtype_size(o->dtype);
    if (o->stride[o->ndim - 1] == 0) {
        float v;
        ds_convert_to_f32(o->data + (size_t)off * esize, o->dtype, 1, &v);
        for (int64_t r = 0; r < run; r++)
            tmp[r] = v;
        return tmp;
    }
    if (o->dtype == DS_F32)
        return (const float *)o->data + off;
    ds_convert_to_f32(o->data + (size_t)off * esize, o->dtype, (size_t)run, tmp);
    return tmp;
}

/* ---- The engine ---- */

typedef enum ew_kind {
    EW_ACTIVATION,
    EW_BINARY,
    EW_MODULATE,
    EW_GATED_RESIDUAL,
    EW_SCALE,
    EW_CLAMP,
} ew_kind;

typedef struct ew_job {
    ew_kind kind;
    ds_activation act;
    ds_binary_op binop;
    float p0, p1; /* scale: alpha, beta; clamp: lo, hi */
    int nin;
    operand in[MAX_INPUTS];
    char *y;
    ds_dtype ydtype;
    float *wide[MAX_INPUTS];  /* operands widened once by this call (owned) */
    ds__ew_bf16_fn fused;     /* the fused loop when it applies, else NULL */
    ds__ew_bf16_op fused_op;
} ew_job;

static void compute(const ew_job *j, const float *const *v, float *out, int64_t n)
{
    const float *a = v[0], *b = v[1], *c = v[2];
    switch (j->kind) {
    case EW_ACTIVATION:
        activate(a, out, n, j->act);
        return;
    case EW_BINARY:
        switch (j->binop) {
        case DS_BINARY_ADD: for (int64_t r = 0; r < n; r++) out[r] = a[r] + b[r]; return;
        case DS_BINARY_SUB: for (int64_t r = 0; r < n; r++) out[r] = a[r] - b[r]; return;
        case DS_BINARY_MUL: for (int64_t r = 0; r < n; r++) out[r] = a[r] * b[r]; return;
        case DS_BINARY_DIV: for (int64_t r = 0; r < n; r++) out[r] = a[r] / b[r]; return;
        }
        return;
    case EW_MODULATE: /* x, scale, shift */
        for (int64_t r = 0; r < n; r++)
            out[r] = a[r] * (1.0f + b[r]) + c[r];
        return;
    case EW_GATED_RESIDUAL: /* x, gate, y_in */
        for (int64_t r = 0; r < n; r++)
            out[r] = a[r] + b[r] * c[r];
        return;
    case EW_SCALE:
        for (int64_t r = 0; r < n; r++)
            out[r] = a[r] * j->p0 + j->p1;
        return;
    case EW_CLAMP:
        /* Comparisons with NaN are false, so NaN passes through (fminf/fmaxf would drop it). */
        for (int64_t r = 0; r < n; r++) {
            float x = a[r];
            out[r] = x < j->p0 ? j->p0 : (x > j->p1 ? j->p1 : x);
        }
        return;
    }
}

/* The fused loop over [begin, end): runs are cut only where an operand's innermost run ends
 * (no buffers to bound them), and each operand is handed over as a pointer or one value. */
static void ew_range_fused(const ew_job *j, int64_t begin, int64_t end)
{
    ds__ew_src src[MAX_INPUTS] = {{0}};
    for (int64_t i = begin; i < end;) {
        int64_t run = end - i;
        for (int k = 0; k < j->nin; k++) {
            const operand *o = &j->in[k];
            int64_t r = operand_run(o, i);
            if (r < run)
                run = r;
            int64_t off = operand_offset(o, i);
            if (o->stride[o->ndim - 1] == 0) {
                src[k].form = DS__EW_SCALAR;
                src[k].value = ((const float *)o->data)[off];
            } else {
                src[k].form = o->dtype == DS_BF16 ? DS__EW_BF16 : DS__EW_F32;
                src[k].p = o->data + (size_t)off * ds_dtype_size(o->dtype);
            }
        }
        j->fused(j->fused_op, src, (uint16_t *)j->y + i, run);
        i += run;
    }
}

static void ew_range(void *ctx, int64_t begin, int64_t end)
{
    const ew_job *j = ctx;
    if (j->fused) {
        ew_range_fused(j, begin, end);
        return;
    }
    float tmp[MAX_INPUTS + 1][RUN];
    size_t yesize = ds_dtype_size(j->ydtype);
    const float *v[MAX_INPUTS] = {NULL, NULL, NULL};
    for (int64_t i = begin; i < end;) {
        int64_t run = end - i < RUN ? end - i : RUN;
        for (int k = 0; k < j->nin; k++) {
            int64_t r = operand_run(&j->in[k], i);
            if (r < run)
                run = r;
        }
        for (int k = 0; k < j->nin; k++)
            v[k] = operand_load(&j->in[k], i, run, tmp[k]);
        float *out = j->ydtype == DS_F32 ? (float *)j->y + i : tmp[MAX_INPUTS];
        compute(j, v, out, run);
        if (j->ydtype != DS_F32)
            ds_convert_from_f32(out, (size_t)run, j->ydtype, j->y + (size_t)i * yesize);
        i += run;
    }
}

/* Elements of the operand's storage that the output reads: its tensor's, sizes of 1 and
 * broadcast dims aside (the strides come from a contiguous tensor). */
static int64_t operand_extent(const operand *o)
{
    int64_t last = 0;
    for (int d = 0; d < o->ndim; d++)
        last += (o->size[d] - 1) * o->stride[d];
    return last + 1;
}

/* Widens a small broadcast operand to f32 in a buffer the job owns. Where the buffer cannot be
 * had, the operand stays as it is and is converted per run: slower, same bits. */
static void widen_broadcast(ew_job *j, int k, int64_t out_numel)
{
    operand *o = &j->in[k];
    int64_t n = operand_extent(o);
    if (o->dtype == DS_F32 || n <= 0 || n >= out_numel || n > WIDEN_MAX)
        return;
    float *w = malloc((size_t)n * sizeof *w);
    if (!w)
        return;
    ds_convert_to_f32(o->data, o->dtype, (size_t)n, w);
    j->wide[k] = w;
    o->data = (const char *)w;
    o->dtype = DS_F32;
}

/* Whether the fused loop can take every run: a bf16 output, an op it has, and each operand f32
 * (contiguous or repeated) or contiguous bf16. A repeated bf16 value left unwidened (a
 * broadcast operand too large to widen) stays on the generic path. */
static int fusable(ew_job *j)
{
    if (j->ydtype != DS_BF16)
        return 0;
    switch (j->kind) {
    case EW_BINARY:
        switch (j->binop) {
        case DS_BINARY_ADD: j->fused_op = DS__EW_BF16_ADD; break;
        case DS_BINARY_SUB: j->fused_op = DS__EW_BF16_SUB; break;
        case DS_BINARY_MUL: j->fused_op = DS__EW_BF16_MUL; break;
        case DS_BINARY_DIV: j->fused_op = DS__EW_BF16_DIV; break;
        default: return 0;
        }
        break;
    case EW_MODULATE: j->fused_op = DS__EW_BF16_MODULATE; break;
    case EW_GATED_RESIDUAL: j->fused_op = DS__EW_BF16_GATED_RESIDUAL; break;
    default: return 0;
    }
    for (int k = 0; k < j->nin; k++) {
        const operand *o = &j->in[k];
        if (o->dtype != DS_F32 && (o->dtype != DS_BF16 || o->stride[o->ndim - 1] != 1))
            return 0;
    }
    return 1;
}

static int ew_run(ds_backend *b, ew_job *j, const ds_tensor *y)
{
    int64_t n = (int64_t)ds_tensor_numel(y);
    j->y = y->data;
    j->ydtype = y->dtype;
    for (int k = 0; k < j->nin; k++)
        widen_broadcast(j, k, n);
    j->fused = fusable(j) ? ds__ew_bf16_loop() : NULL;
    ds__cpu_parallel_for(b, n, GRAIN, ew_range, j);
    for (int k = 0; k < j->nin; k++)
        free(j->wide[k]);
    return DS_OK;
}

int ds__cpu_activation(ds_backend *b, ds_stream *s, const ds_activation_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    ew_job j = {.kind = EW_ACTIVATION, .act = a->activation, .nin = 1};
    operand_init(&j.in[0], a->x, a->y);
    return ew_run(b, &j, a->y);
}

int ds__cpu_binary(ds_backend *b, ds_stream *s, const ds_binary_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    ew_job j = {.kind = EW_BINARY, .binop = a->op, .nin = 2};
    operand_init(&j.in[0], a->a, a->y);
    operand_init(&j.in[1], a->b, a->y);
    return ew_run(b, &j, a->y);
}

int ds__cpu_modulate(ds_backend *b, ds_stream *s, const ds_modulate_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    ew_job j = {.kind = EW_MODULATE, .nin = 3};
    operand_init(&j.in[0], a->x, a->y);
    operand_init(&j.in[1], a->scale, a->y);
    operand_init(&j.in[2], a->shift, a->y);
    return ew_run(b, &j, a->y);
}

int ds__cpu_gated_residual(ds_backend *b, ds_stream *s, const ds_gated_residual_args *a,
                           ds_error *err)
{
    (void)s;
    (void)err;
    ew_job j = {.kind = EW_GATED_RESIDUAL, .nin = 3};
    operand_init(&j.in[0], a->x, a->out);
    operand_init(&j.in[1], a->gate, a->out);
    operand_init(&j.in[2], a->y_in, a->out);
    return ew_run(b, &j, a->out);
}

int ds__cpu_scale(ds_backend *b, ds_stream *s, const ds_scale_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    ew_job j = {.kind = EW_SCALE, .p0 = a->alpha, .p1 = a->beta, .nin = 1};
    operand_init(&j.in[0], a->x, a->y);
    return ew_run(b, &j, a->y);
}

int ds__cpu_clamp(ds_backend *b, ds_stream *s, const ds_clamp_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    ew_job j = {.kind = EW_CLAMP, .p0 = a->lo, .p1 = a->hi, .nin = 1};
    operand_init(&j.in[0], a->x, a->y);
    return ew_run(b, &j, a->y);
}

/* ---- Casts ---- */

typedef struct cast_job {
    const char *x;
    ds_dtype xdtype;
    char *y;
    ds_dtype ydtype;
} cast_job;

/* Narrow -> wide is exact through f32, so every pair goes through f32 with one rounding at the
 * end, except f64 -> narrow, which rounds twice (to f32, then to the target) because that is
 * what PyTorch's `.to()` does (tests/golden/make_cast_golden.py records it). */
static void cast_range(void *ctx, int64_t begin, int64_t end)
{
    const cast_job *j = ctx;
    size_t xs = ds_dtype_size(j->xdtype), ys = ds_dtype_size(j->ydtype);
    const char *x = j->x + (size_t)begin * xs;
    char *y = j->y + (size_t)begin * ys;
    size_t n = (size_t)(end - begin);
    if (j->xdtype == j->ydtype) {
        if (x != y)
            memcpy(y, x, n * xs);
    } else if (j->xdtype == DS_F32) {
        ds_convert_from_f32((const float *)x, n, j->ydtype, y);
    } else if (j->ydtype == DS_F32) {
        ds_convert_to_f32(x, j->xdtype, n, (float *)y);
    } else {
        float tmp[RUN];
        for (size_t i = 0; i < n; i += RUN) {
            size_t run = n - i < RUN ? n - i : RUN;
            ds_convert_to_f32(x + i * xs, j->xdtype, run, tmp);
            ds_convert_from_f32(tmp, run, j->ydtype, y + i * ys);
        }
    }
}

int ds__cpu_cast(ds_backend *b, ds_stream *s, const ds_cast_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    cast_job j = {a->x->data, a->x->dtype, a->y->data, a->y->dtype};
    ds__cpu_parallel_for(b, (int64_t)ds_tensor_numel(a->x), GRAIN, cast_range, &j);
    return DS_OK;
}
