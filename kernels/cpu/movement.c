/* Data movement on the CPU backend: concat, slice, permute, patchify/unpatchify, pad, nearest
 * ×2 upsampling and the embedding gather.
 *
 * Every op but embedding keeps the dtype, so they move bytes, never values: element-size
 * chunks, with the innermost contiguous run copied by memcpy. Work is split over outer rows
 * (or transpose tiles) with ds__cpu_parallel_for; the split never changes what is written, so
 * the results are the same for any thread count. */
#include "kernels/cpu/cpu_internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/float_convert.h"

/* Bytes one work chunk should at least move, so that threads are not woken for tiny copies. */
#define GRAIN_BYTES ((int64_t)1 << 16)

static int64_t grain_for(int64_t bytes_per_item)
{
    if (bytes_per_item <= 0)
        return GRAIN_BYTES;
    int64_t g = GRAIN_BYTES / bytes_per_item;
    return g < 1 ? 1 : g;
}

/* Writes `count` copies of the element `pattern` (es bytes). */
static void fill_elems(char *dst, const char *pattern, size_t es, int64_t count)
{
    switch (es) {
    case 1:
        memset(dst, (unsigned char)pattern[0], (size_t)count);
        return;
    case 2: {
        uint16_t v;
        memcpy(&v, pattern, 2);
        uint16_t *d = (uint16_t *)dst;
        for (int64_t i = 0; i < count; i++)
            d[i] = v;
        return;
    }
    case 4: {
        uint32_t v;
        memcpy(&v, pattern, 4);
        uint32_t *d = (uint32_t *)dst;
        for (int64_t i = 0; i < count; i++)
            d[i] = v;
        return;
    }
    case 8: {
        uint64_t v;
        memcpy(&v, pattern, 8);
        uint64_t *d = (uint64_t *)dst;
        for (int64_t i = 0; i < count; i++)
            d[i] = v;
        return;
    }
    default:
        for (int64_t i = 0; i < count; i++)
            memcpy(dst + (size_t)i * es, pattern, es);
    }
}

/* ---- Strided row copies: concat and slice ---- */

/* rows × row_bytes from src (rows src_stride bytes apart) to dst (dst_stride apart). Long
 * rows are cut into pieces so that a single row (axis 0 of a concat) still uses every thread. */
typedef struct rows_ctx {
    char *dst;
    const char *src;
    int64_t dst_stride, src_stride;
    int64_t row_bytes, piece_bytes, pieces;
} rows_ctx;

static void copy_rows_range(void *vctx, int64_t begin, int64_t end)
{
    const rows_ctx *c = vctx;
    for (int64_t i = begin; i < end; i++) {
        int64_t row = i / c->pieces, piece = i % c->pieces;
        int64_t off = piece * c->piece_bytes;
        int64_t len = c->row_bytes - off < c->piece_bytes ? c->row_bytes - off : c->piece_bytes;
        memcpy(c->dst + row * c->dst_stride + off, c->src + row * c->src_stride + off, (size_t)len);
    }
}

static void copy_rows(ds_backend *b, int64_t rows, int64_t row_bytes, char *dst, int64_t dst_stride,
                      const char *src, int64_t src_stride)
{
    if (rows <= 0 || row_bytes <= 0)
        return;
    rows_ctx c = {dst, src, dst_stride, src_stride, row_bytes, row_bytes, 1};
    if (row_bytes > 4 * GRAIN_BYTES) {
        c.piece_bytes = 4 * GRAIN_BYTES;
        c.pieces = (row_bytes + c.piece_bytes - 1) / c.piece_bytes;
    }
    ds__cpu_parallel_for(b, rows * c.pieces, grain_for(c.piece_bytes), copy_rows_range, &c);
}

static int64_t prod(const int64_t *shape, int from, int to)
{
    int64_t n = 1;
    for (int i = from; i < to; i++)
        n *= shape[i];
    return n;
}

int ds__cpu_concat(ds_backend *b, ds_stream *s, const ds_concat_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    const ds_tensor *y = a->y;
    size_t es = ds_dtype_size(y->dtype);
    int64_t outer = prod(y->shape, 0, a->axis);
    int64_t inner = prod(y->shape, a->axis + 1, y->ndim) * (int64_t)es;
    int64_t y_row = y->shape[a->axis] * inner;
    int64_t offset = 0;
    for (int i = 0; i < a->count; i++) {
        const ds_tensor *x = a->inputs[i];
        int64_t x_row = x->shape[a->axis] * inner;
        copy_rows(b, outer, x_row, (char *)y->data + offset, y_row, x->data, x_row);
        offset += x_row;
    }
    return DS_OK;
}

int ds__cpu_slice(ds_backend *b, ds_stream *s, const ds_slice_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    const ds_tensor *x = a->x, *y = a->y;
    size_t es = ds_dtype_size(x->dtype);
    int64_t outer = prod(x->shape, 0, a->axis);
    int64_t inner = prod(x->shape, a->axis + 1, x->ndim) * (int64_t)es;
    copy_rows(b, outer, y->shape[a->axis] * inner, y->data, y->shape[a->axis] * inner,
              (const char *)x->data + a->start * inner, x->shape[a->axis] * inner);
    return DS_OK;
}

/* ---- Permute (also patchify and unpatchify) ---- */

/* Tiles of the two-axis transpose: 32 × 32 elements keep both the rows read and the rows
 * written in L1 whatever the element size. */
#define TILE 32

/* y's dims after dropping size-1 dims and merging neighbours that are contiguous in x too;
 * xstr is x's stride (in elements) for each of y's dims. */
typedef struct perm_plan {
    int n;
    int64_t ys[DS_MAX_DIMS];
    int64_t xstr[DS_MAX_DIMS];
    int64_t ystr[DS_MAX_DIMS];
    size_t es;
    const char *x;
    char *y;
    /* Run path: the last y dim is contiguous in x; outer dims 0..n-2 are iterated. */
    int64_t run;
    /* Tile path: y dim `tj` is contiguous in x (rows of a tile), y dim n-1 (columns) is not. */
    int tj;
    int64_t tiles_r, tiles_c;
} perm_plan;

static void plan_permute(size_t es, int ndim, const int64_t *xshape, const int *perm, const void *x,
                         void *y, perm_plan *p)
{
    int64_t xstride[DS_MAX_DIMS];
    int64_t st = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        xstride[i] = st;
        st *= xshape[i];
    }
    memset(p, 0, sizeof *p);
    p->es = es;
    p->x = x;
    p->y = y;
    for (int i = 0; i < ndim; i++) {
        int64_t size = xshape[perm[i]], stride = xstride[perm[i]];
        if (size == 1)
            continue;
        if (p->n > 0 && p->xstr[p->n - 1] == stride * size) {
            p->ys[p->n - 1] *= size;
            p->xstr[p->n - 1] = stride;
            continue;
        }
        p->ys[p->n] = size;
        p->xstr[p->n] = stride;
        p->n++;
    }
    st = 1;
    for (int i = p->n - 1; i >= 0; i--) {
        p->ystr[i] = st;
        st *= p->ys[i];
    }
}

/* Element offsets in x and y of outer index `o` over y dims [0, n) except `skip1` and `skip2`
 * (pass -1 to skip none), with the last non-skipped dim varying fastest. */
static void outer_offsets(const perm_plan *p, int64_t o, int skip1, int skip2, int64_t *xo,
                          int64_t *yo)
{
    *xo = 0;
    *yo = 0;
    for (int i = p->n - 1; i >= 0; i--) {
        if (i == skip1 || i == skip2)
            continue;
        int64_t c = o % p->ys[i];
        o /= p->ys[i];
        *xo += c * p->xstr[i];
        *yo += c * p->ystr[i];
    }
}

static void permute_runs(void *vctx, int64_t begin, int64_t end)
{
    const perm_plan *p = vctx;
    int outer_dims = p->n - 1;
    int64_t idx[DS_MAX_DIMS];
    int64_t xo = 0, yo = begin * p->run, o = begin;
    for (int i = outer_dims - 1; i >= 0; i--) {
        idx[i] = o % p->ys[i];
        o /= p->ys[i];
        xo += idx[i] * p->xstr[i];
    }
    size_t run_bytes = (size_t)p->run * p->es;
    for (int64_t r = begin; r < end; r++) {
        memcpy(p->y + (size_t)yo * p->es, p->x + (size_t)xo * p->es, run_bytes);
        yo += p->run;
        /* Odometer step over the outer dims. */
        for (int i = outer_dims - 1; i >= 0; i--) {
            xo += p->xstr[i];
            if (++idx[i] < p->ys[i])
                break;
            xo -= idx[i] * p->xstr[i];
            idx[i] = 0;
        }
    }
}

#define TRANSPOSE_TILE(T)                                                                          \
    do {                                                                                           \
        const T *xs_ = (const T *)p->x + xo;                                                       \
        T *ys_ = (T *)p->y + yo;                                                                   \
        for (int64_t r = r0; r < r1; r++)                                                          \
            for (int64_t c = c0; c < c1; c++)                                                      \
                ys_[r * ystr_r + c] = xs_[r + c * xstr_c];                                         \
    } while (0)

static void permute_tiles(void *vctx, int64_t begin, int64_t end)
{
    const perm_plan *p = vctx;
    int last = p->n - 1;
    int64_t R = p->ys[p->tj], C = p->ys[last];
    int64_t ystr_r = p->ystr[p->tj], xstr_c = p->xstr[last];
    for (int64_t t = begin; t < end; t++) {
        int64_t tc = t % p->tiles_c, rest = t / p->tiles_c;
        int64_t tr = rest % p->tiles_r, o = rest / p->tiles_r;
        int64_t xo, yo;
        outer_offsets(p, o, p->tj, last, &xo, &yo);
        int64_t r0 = tr * TILE, r1 = r0 + TILE < R ? r0 + TILE : R;
        int64_t c0 = tc * TILE, c1 = c0 + TILE < C ? c0 + TILE : C;
        switch (p->es) {
        case 1: TRANSPOSE_TILE(uint8_t); break;
        case 2: TRANSPOSE_TILE(uint16_t); break;
        case 4: TRANSPOSE_TILE(uint32_t); break;
        case 8: TRANSPOSE_TILE(uint64_t); break;
        default:
            for (int64_t r = r0; r < r1; r++)
                for (int64_t c = c0; c < c1; c++)
                    memcpy(p->y + (size_t)(yo + r * ystr_r + c) * p->es,
                           p->x + (size_t)(xo + r + c * xstr_c) * p->es, p->es);
        }
    }
}
#undef TRANSPOSE_TILE

/* y = x.permute(perm) for contiguous x of `xshape`, as bytes of size es. */
static void permute_copy(ds_backend *b, size_t es, int ndim, const int64_t *xshape, const int *perm,
                         const void *x, void *y)
{
    if (prod(xshape, 0, ndim) == 0)
        return;
    perm_plan p;
    plan_permute(es, ndim, xshape, perm, x, y, &p);
    if (p.n == 0) {
        memcpy(y, x, es);
        return;
    }
    int last = p.n - 1;
    if (p.xstr[last] == 1) {
        /* The innermost run is contiguous on both sides (a plain copy when n == 1). */
        p.run = p.ys[last];
        int64_t runs = prod(p.ys, 0, last);
        ds__cpu_parallel_for(b, runs, grain_for(p.run * (int64_t)es), permute_runs, &p);
        return;
    }
    /* x's innermost dim (stride 1; it exists since size-1 dims are gone) became some y dim tj
     * other than the last: transpose (tj, last) tile by tile for every outer index. */
    for (int i = 0; i < last; i++)
        if (p.xstr[i] == 1)
            p.tj = i;
    p.tiles_r = (p.ys[p.tj] + TILE - 1) / TILE;
    p.tiles_c = (p.ys[last] + TILE - 1) / TILE;
    int64_t outer = prod(p.ys, 0, p.n) / (p.ys[p.tj] * p.ys[last]);
    ds__cpu_parallel_for(b, outer * p.tiles_r * p.tiles_c, grain_for(TILE * TILE * (int64_t)es),
                         permute_tiles, &p);
}

int ds__cpu_permute(ds_backend *b, ds_stream *s, const ds_permute_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    permute_copy(b, ds_dtype_size(a->x->dtype), a->x->ndim, a->x->shape, a->perm, a->x->data,
                 a->y->data);
    return DS_OK;
}

/* Patchify is the permute x[B, C, Hp, p, Wp, p] -> y[B, Hp, Wp, C, p, p] of 6-dim views;
 * unpatchify is its inverse. */
int ds__cpu_patchify(ds_backend *b, ds_stream *s, const ds_patchify_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    const int64_t *xs = a->x->shape;
    int64_t p = a->patch;
    int64_t view[6] = {xs[0], xs[1], xs[2] / p, p, xs[3] / p, p};
    static const int perm[6] = {0, 2, 4, 1, 3, 5};
    permute_copy(b, ds_dtype_size(a->x->dtype), 6, view, perm, a->x->data, a->y->data);
    return DS_OK;
}

/* The input is a->y here and the output a->x (see ds_patchify_args). */
int ds__cpu_unpatchify(ds_backend *b, ds_stream *s, const ds_patchify_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    const int64_t *xs = a->x->shape;
    int64_t p = a->patch;
    int64_t view[6] = {xs[0], xs[2] / p, xs[3] / p, xs[1], p, p};
    static const int perm[6] = {0, 3, 1, 4, 2, 5};
    permute_copy(b, ds_dtype_size(a->y->dtype), 6, view, perm, a->y->data, a->x->data);
    return DS_OK;
}

/* ---- Pad ---- */

/* The pad value stored as `dtype`. Integer dtypes take it truncated toward zero and saturated
 * (torch converts the Python number the same way for in-range values; out of range values
 * would be undefined behaviour in C). */
static void pad_pattern(ds_dtype dtype, float value, char *out)
{
    double v = value, lo = 0, hi = 0;
    switch (dtype) {
    case DS_I64: lo = -0x1p63; hi = 0x1p63 - 1024; break; /* largest double below 2^63 */
    case DS_I32: lo = INT32_MIN; hi = INT32_MAX; break;
    case DS_I16: lo = INT16_MIN; hi = INT16_MAX; break;
    case DS_I8: lo = INT8_MIN; hi = INT8_MAX; break;
    case DS_U8: lo = 0; hi = UINT8_MAX; break;
    case DS_BOOL:
        out[0] = v != 0;
        return;
    default:
        ds_store_f64(out, dtype, 0, v);
        return;
    }
    v = isnan(v) ? 0 : trunc(v);
    ds_store_f64(out, dtype, 0, v < lo ? lo : v > hi ? hi : v);
}

typedef struct pad_ctx {
    const ds_pad_args *a;
    size_t es;
    char pattern[16];
    int64_t width;          /* y's last dim */
    int64_t x_row_stride[DS_MAX_DIMS]; /* x rows between neighbours along dim i (i < ndim-1) */
} pad_ctx;

static void pad_range(void *vctx, int64_t begin, int64_t end)
{
    const pad_ctx *c = vctx;
    const ds_tensor *x = c->a->x, *y = c->a->y;
    const int64_t *pad = c->a->pad;
    int n = y->ndim;
    int64_t left = pad[2 * (n - 1)], xw = x->shape[n - 1];
    int64_t right = c->width - left - xw;
    for (int64_t row = begin; row < end; row++) {
        char *dst = (char *)y->data + (size_t)(row * c->width) * c->es;
        int64_t o = row, xrow = 0;
        int inside = 1;
        for (int i = n - 2; i >= 0; i--) {
            int64_t ci = o % y->shape[i] - pad[2 * i];
            o /= y->shape[i];
            if (ci < 0 || ci >= x->shape[i])
                inside = 0;
            xrow += ci * c->x_row_stride[i];
        }
        if (!inside || xw == 0) {
            fill_elems(dst, c->pattern, c->es, c->width);
            continue;
        }
        fill_elems(dst, c->pattern, c->es, left);
        memcpy(dst + (size_t)left * c->es, (const char *)x->data + (size_t)(xrow * xw) * c->es,
               (size_t)xw * c->es);
        fill_elems(dst + (size_t)(left + xw) * c->es, c->pattern, c->es, right);
    }
}

int ds__cpu_pad(ds_backend *b, ds_stream *s, const ds_pad_args *a, ds_error *err)
{
    (void)s;
    (void)err;
    const ds_tensor *x = a->x, *y = a->y;
    pad_ctx c;
    memset(&c, 0, sizeof c);
    c.a = a;
    c.es = ds_dtype_size(y->dtype);
    if (y->ndim == 0) {
        memcpy(y->data, x->data, c.es);
        return DS_OK;
    }
    pad_pattern(y->dtype, a->value, c.pattern);
    int n = y->ndim;
    c.width = y->shape[n - 1];
    int64_t st = 1;
    for (int i = n - 2; i >= 0; i--) {
        c.x_row_stride[i] = st;
        st *= x->shape[i];
    }
    int64_t rows = prod(y->shape, 0, n - 1);
    if (c.width == 0)
        return DS_OK;
    ds__cpu_parallel_for(b, rows, grain_for(c.width * (int64_t)c.es), pad_range, &c);
    return DS_OK;
}

/* ---- Nearest ×2 upsampling ---- */

typedef struct upsample_ctx {
    const char *x;
    char *y;
    size_t es;
    int64_t h, w;
} upsample_ctx;

#define DOUBLE_ROW(T)                                                                              \
    do {                                                                                           \
        const T *s_ = (const T *)src;                                                              \
        T *d_ = (T *)dst;                                                                          \
        for (int64_t i = 0; i < c->w; i++)                                                         \
            d_[2 * i] = d_[2 * i + 1] = s_[i];                                                     \
    } while (0)

/* One item per x row: it becomes two identical y rows of doubled elements. */
static void upsample_range(void *vctx, int64_t begin, int64_t end)
{
    const upsample_ctx *c = vctx;
    size_t y_row = (size_t)(2 * c->w) * c->es;
    for (int64_t r = begin; r < end; r++) {
        const char *src = c->x + (size_t)(r * c->w) * c->es;
        /* x row r = (plane, h) is y rows 2r and 2r + 1 (plane * 2H + 2h). */
        char *dst = c->y + (size_t)(2 * r) * y_row;
        switch (c->es) {
        case 1: DOUBLE_ROW(uint8_t); break;
        case 2: DOUBLE_ROW(uint16_t); break;
        case 4: DOUBLE_ROW(uint32_t); break;
        case 8: DOUBLE_ROW(uint64_t); break;
        default:
            for (int64_t i = 0; i < c->w; i++) {
                memcpy(dst + (size_t)(2 * i) * c->es, src + (size_t)i * c->es, c->es);
                memcpy(dst + (size_t)(2 * i + 1) * c->es, src + (size_t)i * c->es, c->es);
            }
        }
        memcpy(dst + y_row, dst, y_row);
    }
}
#undef DOUBLE_ROW

int ds__cpu_upsample_nearest2x(ds_backend *b, ds_stream *s, const ds_upsample_args *a,
                               ds_error *err)
{
    (void)s;
    (void)err;
    const ds_tensor *x = a->x;
    int n = x->ndim;
    upsample_ctx c = {x->data, a->y->data, ds_dtype_size(x->dtype), x->shape[n - 2],
                      x->shape[n - 1]};
    int64_t rows = prod(x->shape, 0, n - 1);
    if (c.w == 0)
        return DS_OK;
    ds__cpu_parallel_for(b, rows, grain_for(4 * c.w * (int64_t)c.es), upsample_range, &c);
    return DS_OK;
}

/* ---- Embedding ---- */

static int64_t load_id(const ds_tensor *ids, int64_t i)
{
    if (ids->dtype == DS_I32)
        return ((const int32_t *)ids->data)[i];
    return ((const int64_t *)ids->data)[i];
}

typedef struct embedding_ctx {
    const ds_embedding_args *a;
    int64_t width;
} embedding_ctx;

static void embedding_range(void *vctx, int64_t begin, int64_t end)
{
    const embedding_ctx *c = vctx;
    const ds_tensor *table = c->a->table, *y = c->a->y;
    size_t ts = ds_dtype_size(table->dtype), ysz = ds_dtype_size(y->dtype);
    size_t w = (size_t)c->width;
    for (int64_t i = begin; i < end; i++) {
        const char *src = (const char *)table->data + (size_t)load_id(c->a->ids, i) * w * ts;
        char *dst = (char *)y->data + (size_t)i * w * ysz;
        if (table->dtype == y->dtype)
            memcpy(dst, src, w * ts);
        else if (y->dtype == DS_F32)
            ds_convert_to_f32(src, table->dtype, w, (float *)dst);
        else if (table->dtype == DS_F32)
            ds_convert_from_f32((const float *)src, w, y->dtype, dst);
        else if (table->dtype == DS_BF16) /* bf16 -> f16 */
            for (size_t j = 0; j < w; j++)
                ((uint16_t *)dst)[j] = ds_f32_to_f16(ds_bf16_to_f32(((const uint16_t *)src)[j]));
        else /* f16 -> bf16 */
            for (size_t j = 0; j < w; j++)
                ((uint16_t *)dst)[j] = ds_f32_to_bf16(ds_f16_to_f32(((const uint16_t *)src)[j]));
    }
}

/* "[i, j, k]": the coordinates of flat index `flat` in ids. */
static void describe_position(const ds_tensor *ids, int64_t flat, char *buf, size_t size)
{
    int64_t idx[DS_MAX_DIMS];
    for (int i = ids->ndim - 1; i >= 0; i--) {
        idx[i] = flat % ids->shape[i];
        flat /= ids->shape[i];
    }
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ids->ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%" PRId64, i ? ", " : "", idx[i]);
    if (used < size)
        snprintf(buf + used, size - used, "]");
}

int ds__cpu_embedding(ds_backend *b, ds_stream *s, const ds_embedding_args *a, ds_error *err)
{
    (void)s;
    const ds_tensor *ids = a->ids;
    int64_t n = prod(ids->shape, 0, ids->ndim), vocab = a->table->shape[0];
    for (int64_t i = 0; i < n; i++) {
        int64_t id = load_id(ids, i);
        if (id < 0 || id >= vocab) {
            char pos[256];
            describe_position(ids, i, pos, sizeof pos);
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                                "embedding: ids%s is %" PRId64 ", outside the table's %" PRId64
                                " rows (valid ids are 0..%" PRId64 ")",
                                pos, id, vocab, vocab - 1);
        }
    }
    embedding_ctx c = {a, a->table->shape[1]};
    if (c.width == 0)
        return DS_OK;
    ds__cpu_parallel_for(b, n, grain_for(c.width * 4), embedding_range, &c);
    return DS_OK;
}
