/* Data movement ops (concat, slice, permute, patchify/unpatchify, pad, upsample, embedding)
 * against references written here as plain index loops. Pure movement is exact, so those
 * compare with budget 0; integer dtypes are included where ops.c accepts them (every op but
 * embedding), with values that can never equal the integer poison (-1 / 255). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_test.h"
#include "test.h"

static const ds_dtype all_dtypes[] = {DS_F32, DS_BF16, DS_F16, DS_I32, DS_U8, DS_I64};
#define N_ALL (sizeof all_dtypes / sizeof all_dtypes[0])

static size_t numel(int ndim, const int64_t *shape)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    return n;
}

/* Values that survive a round trip through dtype and are never an integer poison value. */
static double *values_for(ds_dtype dtype, size_t n)
{
    if (dtype == DS_I32 || dtype == DS_U8 || dtype == DS_I64) {
        double *v = kt_uniform(n, 0, 200);
        for (size_t i = 0; i < n; i++)
            v[i] = (double)(int)v[i];
        return v;
    }
    return kt_randn(n, 1.0);
}

static void coords_of(size_t flat, int ndim, const int64_t *shape, int64_t *c)
{
    for (int i = ndim - 1; i >= 0; i--) {
        c[i] = (int64_t)(flat % (size_t)shape[i]);
        flat /= (size_t)shape[i];
    }
}

static size_t flat_of(const int64_t *c, int ndim, const int64_t *shape)
{
    size_t f = 0;
    for (int i = 0; i < ndim; i++)
        f = f * (size_t)shape[i] + (size_t)c[i];
    return f;
}

/* ---- concat ---- */

static void concat_case(ds_dtype dtype, int ndim, const int64_t *base, int axis, int count,
                        const int64_t *sizes)
{
    ds_tensor xs[4], y;
    const ds_tensor *ptrs[4];
    double *xv[4];
    int64_t yshape[DS_MAX_DIMS];
    memcpy(yshape, base, (size_t)ndim * sizeof *base);
    yshape[axis] = 0;
    for (int i = 0; i < count; i++) {
        int64_t shape[DS_MAX_DIMS];
        memcpy(shape, base, (size_t)ndim * sizeof *base);
        shape[axis] = sizes[i];
        yshape[axis] += sizes[i];
        xv[i] = values_for(dtype, numel(ndim, shape));
        REQUIRE(kt_tensor(dtype, ndim, shape, xv[i], &xs[i]));
        ptrs[i] = &xs[i];
    }
    REQUIRE(kt_tensor(dtype, ndim, yshape, NULL, &y));
    size_t n = numel(ndim, yshape);
    double *ref = malloc(n * sizeof *ref);
    for (size_t f = 0; f < n; f++) {
        int64_t c[DS_MAX_DIMS];
        coords_of(f, ndim, yshape, c);
        int i = 0;
        while (c[axis] >= sizes[i])
            c[axis] -= sizes[i++];
        int64_t shape[DS_MAX_DIMS];
        memcpy(shape, base, (size_t)ndim * sizeof *base);
        shape[axis] = sizes[i];
        ref[f] = xv[i][flat_of(c, ndim, shape)];
    }
    ds_error err;
    ds_concat_args a = {ptrs, count, axis, &y};
    CHECK_MSG(ds_concat(kt.backend, NULL, &a, &err) == DS_OK, "%s", err.message);
    double *got = kt_read(&y);
    char what[96];
    snprintf(what, sizeof what, "concat %s axis %d", ds_dtype_name(dtype), axis);
    CHECK(kt_compare(what, got, ref, n, 0));
    free(got);
    free(ref);
    for (int i = 0; i < count; i++) {
        free(xv[i]);
        ds_tensor_free(&xs[i]);
    }
    ds_tensor_free(&y);
}

static void test_concat(void)
{
    for (size_t d = 0; d < N_ALL; d++) {
        const int64_t base3[] = {3, 5, 7};
        for (int axis = 0; axis < 3; axis++) {
            const int64_t sizes[] = {2, 1, 5};
            concat_case(all_dtypes[d], 3, base3, axis, 3, sizes);
        }
        const int64_t base4[] = {2, 3, 4, 5};
        const int64_t two[] = {3, 1};
        concat_case(all_dtypes[d], 4, base4, 3, 2, two);
        concat_case(all_dtypes[d], 4, base4, 0, 2, two);
        const int64_t one[] = {17};
        concat_case(all_dtypes[d], 4, base4, 2, 1, one);
    }
    /* An empty input contributes nothing. */
    const int64_t base2[] = {3, 4};
    const int64_t with_empty[] = {2, 0, 3};
    concat_case(DS_F16, 2, base2, 1, 3, with_empty);
    /* A big first-axis concat: rows are split into pieces across threads. */
    const int64_t big[] = {1, 300000};
    const int64_t sizes[] = {1, 2};
    concat_case(DS_F32, 2, big, 0, 2, sizes);
    const int64_t wide[] = {2, 1};
    const int64_t wsizes[] = {100003, 70001};
    concat_case(DS_BF16, 2, wide, 1, 2, wsizes);
}

/* ---- slice ---- */

static void slice_case(ds_dtype dtype, int ndim, const int64_t *xshape, int axis, int64_t start,
                       int64_t len)
{
    ds_tensor x, y;
    size_t nx = numel(ndim, xshape);
    double *xv = values_for(dtype, nx);
    REQUIRE(kt_tensor(dtype, ndim, xshape, xv, &x));
    int64_t yshape[DS_MAX_DIMS];
    memcpy(yshape, xshape, (size_t)ndim * sizeof *xshape);
    yshape[axis] = len;
    REQUIRE(kt_tensor(dtype, ndim, yshape, NULL, &y));
    size_t n = numel(ndim, yshape);
    double *ref = malloc((n ? n : 1) * sizeof *ref);
    for (size_t f = 0; f < n; f++) {
        int64_t c[DS_MAX_DIMS];
        coords_of(f, ndim, yshape, c);
        c[axis] += start;
        ref[f] = xv[flat_of(c, ndim, xshape)];
    }
    ds_error err;
    ds_slice_args a = {&x, axis, start, &y};
    CHECK_MSG(ds_slice(kt.backend, NULL, &a, &err) == DS_OK, "%s", err.message);
    double *got = kt_read(&y);
    char what[96];
    snprintf(what, sizeof what, "slice %s axis %d from %" PRId64 " len %" PRId64,
             ds_dtype_name(dtype), axis, start, len);
    CHECK(kt_compare(what, got, ref, n, 0));
    free(got);
    free(ref);
    free(xv);
    ds_tensor_free(&x);
    ds_tensor_free(&y);
}

static void test_slice(void)
{
    const int64_t shape[] = {3, 5, 7, 9};
    for (size_t d = 0; d < N_ALL; d++)
        for (int axis = 0; axis < 4; axis++) {
            int64_t len = shape[axis];
            slice_case(all_dtypes[d], 4, shape, axis, 0, 1);           /* first element */
            slice_case(all_dtypes[d], 4, shape, axis, len - 1, 1);     /* last element */
            slice_case(all_dtypes[d], 4, shape, axis, 1, len - 2);     /* interior */
            slice_case(all_dtypes[d], 4, shape, axis, 0, len);         /* whole */
            slice_case(all_dtypes[d], 4, shape, axis, len / 2, len - len / 2); /* tail */
        }
    const int64_t qkv[] = {2, 33, 3 * 127};
    for (int i = 0; i < 3; i++)
        slice_case(DS_BF16, 3, qkv, 2, i * 127, 127); /* splitting fused QKV */
}

/* ---- permute ---- */

static void permute_case(ds_dtype dtype, int ndim, const int64_t *xshape, const int *perm)
{
    ds_tensor x, y;
    size_t n = numel(ndim, xshape);
    double *xv = values_for(dtype, n);
    REQUIRE(kt_tensor(dtype, ndim, xshape, xv, &x));
    int64_t yshape[DS_MAX_DIMS];
    for (int i = 0; i < ndim; i++)
        yshape[i] = xshape[perm[i]];
    REQUIRE(kt_tensor(dtype, ndim, yshape, NULL, &y));
    double *ref = malloc(n * sizeof *ref);
    for (size_t f = 0; f < n; f++) {
        int64_t yc[DS_MAX_DIMS], xc[DS_MAX_DIMS];
        coords_of(f, ndim, yshape, yc);
        for (int i = 0; i < ndim; i++)
            xc[perm[i]] = yc[i];
        ref[f] = xv[flat_of(xc, ndim, xshape)];
    }
    ds_error err;
    ds_permute_args a;
    memset(&a, 0, sizeof a);
    a.x = &x;
    a.y = &y;
    memcpy(a.perm, perm, (size_t)ndim * sizeof *perm);
    CHECK_MSG(ds_permute(kt.backend, NULL, &a, &err) == DS_OK, "%s", err.message);
    double *got = kt_read(&y);
    char what[128];
    int used = snprintf(what, sizeof what, "permute %s perm", ds_dtype_name(dtype));
    for (int i = 0; i < ndim && used < (int)sizeof what; i++)
        used += snprintf(what + used, sizeof what - (size_t)used, " %d", perm[i]);
    CHECK(kt_compare(what, got, ref, n, 0));
    free(got);
    free(ref);
    free(xv);
    ds_tensor_free(&x);
    ds_tensor_free(&y);
}

static void test_permute(void)
{
    static const int p3[][3] = {{0, 2, 1}, {2, 0, 1}, {1, 0, 2}, {2, 1, 0}, {1, 2, 0}, {0, 1, 2}};
    static const int p4[][4] = {{0, 2, 1, 3}, {0, 3, 1, 2}, {3, 2, 1, 0}, {0, 2, 3, 1}};
    static const int p5[][5] = {{4, 0, 3, 2, 1}, {0, 2, 1, 4, 3}, {0, 2, 3, 4, 1}};
    const int64_t s3[] = {3, 5, 7}, s4[] = {2, 3, 4, 5}, s5[] = {2, 3, 1, 5, 7};
    for (size_t d = 0; d < N_ALL; d++) {
        for (size_t i = 0; i < sizeof p3 / sizeof p3[0]; i++)
            permute_case(all_dtypes[d], 3, s3, p3[i]);
        for (size_t i = 0; i < sizeof p4 / sizeof p4[0]; i++)
            permute_case(all_dtypes[d], 4, s4, p4[i]);
        for (size_t i = 0; i < sizeof p5 / sizeof p5[0]; i++)
            permute_case(all_dtypes[d], 5, s5, p5[i]);
    }
    /* Transposes larger than one tile with ragged edges (67 and 45 are not multiples of 32). */
    const int64_t t3[] = {2, 67, 45};
    permute_case(DS_F32, 3, t3, p3[0]);
    permute_case(DS_BF16, 3, t3, p3[1]);
    permute_case(DS_U8, 3, t3, p3[3]);
    /* The attention layouts: [B, S, H, D] <-> [B, H, S, D]. */
    const int64_t bshd[] = {2, 33, 3, 64};
    permute_case(DS_BF16, 4, bshd, p4[0]);
    /* Channels-last to channels-first with 3 channels (a tile only 3 rows high). */
    const int64_t hwc[] = {37, 41, 3};
    static const int to_chw[] = {2, 0, 1};
    permute_case(DS_F32, 3, hwc, to_chw);
}

/* ---- patchify / unpatchify ---- */

/* The einops formula "B C (H P) (W Q) -> B (H W) (C P Q)" written out: the index into x of
 * element (b, token, ch) of y. */
static size_t packed_source(const int64_t *xs, int64_t p, int64_t b, int64_t token, int64_t ch)
{
    int64_t wp = xs[3] / p;
    int64_t h = token / wp, w = token % wp;
    int64_t c = ch / (p * p), i = (ch / p) % p, j = ch % p;
    return (size_t)(((b * xs[1] + c) * xs[2] + h * p + i) * xs[3] + w * p + j);
}

static void patchify_case(ds_dtype dtype, const int64_t *xs, int p)
{
    ds_tensor x, y, back;
    size_t n = numel(4, xs);
    int64_t ys[3] = {xs[0], (xs[2] / p) * (xs[3] / p), xs[1] * p * p};
    double *xv = values_for(dtype, n);
    REQUIRE(kt_tensor(dtype, 4, xs, xv, &x));
    REQUIRE(kt_tensor(dtype, 3, ys, NULL, &y));
    REQUIRE(kt_tensor(dtype, 4, xs, NULL, &back));
    double *ref = malloc(n * sizeof *ref);
    for (int64_t b = 0; b < ys[0]; b++)
        for (int64_t t = 0; t < ys[1]; t++)
            for (int64_t ch = 0; ch < ys[2]; ch++)
                ref[(b * ys[1] + t) * ys[2] + ch] = xv[packed_source(xs, p, b, t, ch)];
    ds_error err;
    ds_patchify_args a = {&x, p, &y};
    CHECK_MSG(ds_patchify(kt.backend, NULL, &a, &err) == DS_OK, "%s", err.message);
    double *got = kt_read(&y);
    char what[96];
    snprintf(what, sizeof what, "patchify %s p %d", ds_dtype_name(dtype), p);
    CHECK(kt_compare(what, got, ref, n, 0));
    /* Round trip: unpatchify(patchify(x)) == x. */
    ds_patchify_args u = {&back, p, &y};
    CHECK_MSG(ds_unpatchify(kt.backend, NULL, &u, &err) == DS_OK, "%s", err.message);
    double *round = kt_read(&back);
    snprintf(what, sizeof what, "unpatchify(patchify) %s p %d", ds_dtype_name(dtype), p);
    CHECK(kt_compare(what, round, xv, n, 0));
    free(round);
    free(got);
    free(ref);
    free(xv);
    ds_tensor_free(&x);
    ds_tensor_free(&y);
    ds_tensor_free(&back);
}

/* Unpatchify of random tokens against the formula, independent of patchify. */
static void unpatchify_case(ds_dtype dtype, const int64_t *xs, int p)
{
    ds_tensor x, y;
    size_t n = numel(4, xs);
    int64_t ys[3] = {xs[0], (xs[2] / p) * (xs[3] / p), xs[1] * p * p};
    double *yv = values_for(dtype, n);
    REQUIRE(kt_tensor(dtype, 3, ys, yv, &y));
    REQUIRE(kt_tensor(dtype, 4, xs, NULL, &x));
    double *ref = malloc(n * sizeof *ref);
    for (int64_t b = 0; b < ys[0]; b++)
        for (int64_t t = 0; t < ys[1]; t++)
            for (int64_t ch = 0; ch < ys[2]; ch++)
                ref[packed_source(xs, p, b, t, ch)] = yv[(b * ys[1] + t) * ys[2] + ch];
    ds_error err;
    ds_patchify_args a = {&x, p, &y};
    CHECK_MSG(ds_unpatchify(kt.backend, NULL, &a, &err) == DS_OK, "%s", err.message);
    double *got = kt_read(&x);
    char what[96];
    snprintf(what, sizeof what, "unpatchify %s p %d", ds_dtype_name(dtype), p);
    CHECK(kt_compare(what, got, ref, n, 0));
    free(got);
    free(ref);
    free(yv);
    ds_tensor_free(&x);
    ds_tensor_free(&y);
}

static void test_patchify(void)
{
    const int64_t a[] = {2, 3, 6, 10}, qwen[] = {1, 16, 16, 24}, b[] = {1, 2, 9, 6},
                  c[] = {3, 5, 7, 3};
    for (size_t d = 0; d < N_ALL; d++) {
        patchify_case(all_dtypes[d], a, 2);
        unpatchify_case(all_dtypes[d], a, 2);
    }
    patchify_case(DS_BF16, qwen, 2);
    unpatchify_case(DS_BF16, qwen, 2);
    patchify_case(DS_F32, b, 3);
    unpatchify_case(DS_F16, b, 3);
    patchify_case(DS_F32, c, 1);
    unpatchify_case(DS_F32, c, 1);
}

/* ---- pad ---- */

static void pad_case(ds_dtype dtype, int ndim, const int64_t *xs, const int64_t *pads, float value)
{
    ds_tensor x, y;
    int64_t ys[DS_MAX_DIMS];
    for (int i = 0; i < ndim; i++)
        ys[i] = xs[i] + pads[2 * i] + pads[2 * i + 1];
    size_t nx = numel(ndim, xs), n = numel(ndim, ys);
    double *xv = values_for(dtype, nx);
    REQUIRE(kt_tensor(dtype, ndim, xs, xv, &x));
    REQUIRE(kt_tensor(dtype, ndim, ys, NULL, &y));
    double *ref = malloc((n ? n : 1) * sizeof *ref);
    for (size_t f = 0; f < n; f++) {
        int64_t c[DS_MAX_DIMS];
        coords_of(f, ndim, ys, c);
        int inside = 1;
        for (int i = 0; i < ndim; i++) {
            c[i] -= pads[2 * i];
            inside &= c[i] >= 0 && c[i] < xs[i];
        }
        ref[f] = inside ? xv[flat_of(c, ndim, xs)] : (double)value;
    }
    ds_error err;
    ds_pad_args a;
    memset(&a, 0, sizeof a);
    a.x = &x;
    a.y = &y;
    a.value = value;
    memcpy(a.pad, pads, 2 * (size_t)ndim * sizeof *pads);
    CHECK_MSG(ds_pad(kt.backend, NULL, &a, &err) == DS_OK, "%s", err.message);
    double *got = kt_read(&y);
    char what[96];
    snprintf(what, sizeof what, "pad %s rank %d value %g", ds_dtype_name(dtype), ndim, (double)value);
    CHECK(kt_compare(what, got, ref, n, 0));
    free(got);
    free(ref);
    free(xv);
    ds_tensor_free(&x);
    ds_tensor_free(&y);
}

static void test_pad(void)
{
    const int64_t s3[] = {3, 5, 7};
    const int64_t asym[] = {1, 0, 0, 2, 3, 1};
    const int64_t first_only[] = {2, 1, 0, 0, 0, 0};
    const int64_t none[] = {0, 0, 0, 0, 0, 0};
    for (size_t d = 0; d < N_ALL; d++) {
        /* 0.5 and -1.5 are exact in every float dtype; integers get 7. */
        int is_int = all_dtypes[d] == DS_I32 || all_dtypes[d] == DS_U8 || all_dtypes[d] == DS_I64;
        pad_case(all_dtypes[d], 3, s3, asym, is_int ? 7.0f : 0.5f);
        pad_case(all_dtypes[d], 3, s3, first_only, is_int ? 3.0f : -1.5f);
        pad_case(all_dtypes[d], 3, s3, none, 0.0f);
    }
    /* The VAE's downsample ZeroPad2d(0, 1, 0, 1): right and bottom only. */
    const int64_t img[] = {1, 4, 9, 8};
    const int64_t vae[] = {0, 0, 0, 0, 0, 1, 0, 1};
    pad_case(DS_BF16, 4, img, vae, 0.0f);
    /* An empty x: y is all padding. */
    const int64_t empty[] = {3, 0};
    const int64_t around[] = {0, 1, 2, 2};
    pad_case(DS_F32, 2, empty, around, 4.0f);
    const int64_t row[] = {17};
    const int64_t row_pad[] = {5, 33};
    pad_case(DS_F16, 1, row, row_pad, 2.0f);
}

/* ---- upsample ---- */

static void upsample_case(ds_dtype dtype, int ndim, const int64_t *xs)
{
    ds_tensor x, y;
    int64_t ys[DS_MAX_DIMS];
    memcpy(ys, xs, (size_t)ndim * sizeof *xs);
    ys[ndim - 1] *= 2;
    ys[ndim - 2] *= 2;
    size_t n = numel(ndim, ys);
    double *xv = values_for(dtype, numel(ndim, xs));
    REQUIRE(kt_tensor(dtype, ndim, xs, xv, &x));
    REQUIRE(kt_tensor(dtype, ndim, ys, NULL, &y));
    double *ref = malloc(n * sizeof *ref);
    for (size_t f = 0; f < n; f++) {
        int64_t c[DS_MAX_DIMS];
        coords_of(f, ndim, ys, c);
        /* nearest-exact: source index floor((i + 0.5) * in / out) = floor((i + 0.5) / 2). */
        c[ndim - 1] = (int64_t)((double)(c[ndim - 1] + 0.5) / 2.0);
        c[ndim - 2] = (int64_t)((double)(c[ndim - 2] + 0.5) / 2.0);
        ref[f] = xv[flat_of(c, ndim, xs)];
    }
    ds_error err;
    ds_upsample_args a = {&x, &y};
    CHECK_MSG(ds_upsample_nearest2x(kt.backend, NULL, &a, &err) == DS_OK, "%s", err.message);
    double *got = kt_read(&y);
    char what[96];
    snprintf(what, sizeof what, "upsample %s rank %d", ds_dtype_name(dtype), ndim);
    CHECK(kt_compare(what, got, ref, n, 0));
    free(got);
    free(ref);
    free(xv);
    ds_tensor_free(&x);
    ds_tensor_free(&y);
}

static void test_upsample(void)
{
    const int64_t s4[] = {2, 3, 5, 7}, s2[] = {1, 9}, s3[] = {3, 1, 1}, s5[] = {1, 2, 1, 17, 33};
    for (size_t d = 0; d < N_ALL; d++) {
        upsample_case(all_dtypes[d], 4, s4);
        upsample_case(all_dtypes[d], 2, s2);
        upsample_case(all_dtypes[d], 3, s3);
    }
    upsample_case(DS_BF16, 5, s5);
}

/* ---- embedding ---- */

static void embedding_case(ds_dtype id_dtype, ds_dtype table_dtype, ds_dtype y_dtype)
{
    const int64_t vocab = 37, width = 19;
    const int64_t ids_shape[] = {3, 5}, table_shape[] = {vocab, width};
    const int64_t ys[] = {3, 5, width};
    size_t nids = 15, n = 15 * (size_t)width;
    ds_tensor ids, table, y;
    double *idv = kt_uniform(nids, 0, (double)vocab);
    for (size_t i = 0; i < nids; i++)
        idv[i] = (double)(int64_t)idv[i];
    idv[0] = 0;
    idv[nids - 1] = (double)(vocab - 1); /* both ends of the table */
    double *tv = kt_randn((size_t)(vocab * width), 1.0);
    REQUIRE(kt_tensor(id_dtype, 2, ids_shape, idv, &ids));
    REQUIRE(kt_tensor(table_dtype, 2, table_shape, tv, &table));
    REQUIRE(kt_tensor(y_dtype, 3, ys, NULL, &y));
    double *ref = malloc(n * sizeof *ref);
    for (size_t i = 0; i < nids; i++)
        for (int64_t c = 0; c < width; c++)
            ref[i * (size_t)width + (size_t)c] = tv[(size_t)idv[i] * (size_t)width + (size_t)c];
    ds_error err;
    ds_embedding_args a = {&ids, &table, &y};
    CHECK_MSG(ds_embedding(kt.backend, NULL, &a, &err) == DS_OK, "%s", err.message);
    double *got = kt_read(&y);
    /* Exact unless the table's values must be rounded into a narrower y. */
    int exact = y_dtype == table_dtype || y_dtype == DS_F32;
    char what[96];
    snprintf(what, sizeof what, "embedding ids %s table %s y %s", ds_dtype_name(id_dtype),
             ds_dtype_name(table_dtype), ds_dtype_name(y_dtype));
    CHECK(kt_compare(what, got, ref, n, exact ? 0 : kt_budget(y_dtype)));
    free(got);
    free(ref);
    free(idv);
    free(tv);
    ds_tensor_free(&ids);
    ds_tensor_free(&table);
    ds_tensor_free(&y);
}

static void test_embedding(void)
{
    static const ds_dtype floats[] = {DS_F32, DS_BF16, DS_F16};
    for (int t = 0; t < 3; t++)
        for (int yd = 0; yd < 3; yd++) {
            embedding_case(DS_I32, floats[t], floats[yd]);
            embedding_case(DS_I64, floats[t], floats[yd]);
        }
}

static void embedding_error_case(ds_dtype id_dtype, double bad, const char *want_pos,
                                 const char *want_id)
{
    const int64_t ids_shape[] = {2, 3}, table_shape[] = {37, 4}, ys[] = {2, 3, 4};
    ds_tensor ids, table, y;
    double idv[6] = {0, 1, 2, 3, 4, 5};
    idv[5] = bad;
    double *tv = kt_randn(37 * 4, 1.0);
    REQUIRE(kt_tensor(id_dtype, 2, ids_shape, idv, &ids));
    REQUIRE(kt_tensor(DS_F32, 2, table_shape, tv, &table));
    REQUIRE(kt_tensor(DS_F32, 3, ys, NULL, &y));
    ds_error err;
    memset(&err, 0, sizeof err);
    ds_embedding_args a = {&ids, &table, &y};
    CHECK(ds_embedding(kt.backend, NULL, &a, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, want_pos);
    CHECK_CONTAINS(err.message, want_id);
    CHECK_CONTAINS(err.message, "37 rows");
    free(tv);
    ds_tensor_free(&ids);
    ds_tensor_free(&table);
    ds_tensor_free(&y);
}

static void test_embedding_out_of_range(void)
{
    embedding_error_case(DS_I64, 37, "ids[1, 2]", "is 37,");   /* one past the end */
    embedding_error_case(DS_I32, -1, "ids[1, 2]", "is -1,");
    embedding_error_case(DS_I64, 5e12, "ids[1, 2]", "is 5000000000000,"); /* beyond i32 */
}

int main(int argc, char **argv)
{
    kt_init(argc, argv);
    RUN(test_concat);
    RUN(test_slice);
    RUN(test_permute);
    RUN(test_patchify);
    RUN(test_pad);
    RUN(test_upsample);
    RUN(test_embedding);
    RUN(test_embedding_out_of_range);
    kt_finish();
    return test_summary();
}
