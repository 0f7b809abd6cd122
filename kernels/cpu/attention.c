/* Scaled dot-product attention on the CPU, flash style (ds_attention_args in kernels/backend.h).
 *
 * The [Sq, Sk] score matrix never exists: a work item is one (batch, query head, block of
 * ATT_BQ query rows); it streams over blocks of ATT_BK keys, computing the block's scores with a
 * register-tiled kernel, masking them, folding them into a running (max, sum) per row (online
 * softmax) and accumulating weights . V into an f32 output tile that is normalised at the end.
 * Work items are split over the backend's pool; each row's arithmetic is the same whatever the
 * split, so results do not depend on timing.
 *
 * The tile kernels are our own rather than cblas_sgemm: at these tile sizes (96 x 128 x D) a
 * register-tiled kernel beats sgemm's per-call packing. They are compiled for AVX-512, AVX2+FMA and plain vectors (attention_tiles.h) and
 * picked at run time by what the CPU supports; DS_CPU_ATTENTION_ISA=avx512|avx2|generic forces
 * one (tests cover each on machines that have them).
 *
 * Each worker converts the K and V of its current (batch, kv head) once into f32 in its scratch
 * buffer, K transposed per key block ([D][ATT_BK]: the score kernel's vectors run over keys)
 * and V with D padded to ATT_DPAD (the weight kernel's vectors run over D). Items are ordered
 * batch, head, query block, so a worker's contiguous range repacks only when its kv head
 * changes. Scores are kept in log2 units (q is pre-scaled by scale * log2(e)) so the softmax
 * uses 2^x. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "core/float_convert.h"
#include "kernels/cpu/cpu_internal.h"

#define TILE_MR 6   /* query rows per register tile */
#define ATT_BQ 96   /* query rows per work item: a multiple of TILE_MR */
#define ATT_BK 128  /* keys per block: a multiple of every variant's tile width (64 at most) */
#define ATT_DPAD 64 /* V rows and output tiles pad D to this (the widest tile width) */

typedef struct attn_tiles {
    void (*scores)(const float *q, int64_t d, const float *kt, float *s, int rows);
    void (*softmax)(float *s, int rows, float *m, float *l, float *alpha);
    void (*pv)(const float *p, const float *v, int64_t dp, float *o, const float *alpha, int rows);
    const char *name;
} attn_tiles;

#if defined(__x86_64__) || defined(__i386__)

/* clang ignores GCC target pragmas: it takes a target attribute on every function. */
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f")
#endif
typedef int v16i __attribute__((vector_size(64)));
#define SUF avx512
#define V __m512
#define VI v16i
#define W 16
#define NV 4
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, v) _mm512_storeu_ps((p), (v))
#define VSET1(x) _mm512_set1_ps(x)
#define VFMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define VMAX(a, b) _mm512_max_ps((a), (b))
#include "kernels/cpu/attention_tiles.h"
#undef SUF
#undef V
#undef VI
#undef W
#undef NV
#undef VLOAD
#undef VSTORE
#undef VSET1
#undef VFMA
#undef VMAX
#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
typedef int v8i __attribute__((vector_size(32)));
#define SUF avx2
#define V __m256
#define VI v8i
#define W 8
#define NV 2
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, v) _mm256_storeu_ps((p), (v))
#define VSET1(x) _mm256_set1_ps(x)
#define VFMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define VMAX(a, b) _mm256_max_ps((a), (b))
#include "kernels/cpu/attention_tiles.h"
#undef SUF
#undef V
#undef VI
#undef W
#undef NV
#undef VLOAD
#undef VSTORE
#undef VSET1
#undef VFMA
#undef VMAX
#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif

/* Plain GCC vectors: SSE on any x86-64, NEON on arm64, scalar code elsewhere. */
typedef float v4f __attribute__((vector_size(16)));
typedef int v4i __attribute__((vector_size(16)));

static inline v4f v4_load(const float *p)
{
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void v4_store(float *p, v4f v) { memcpy(p, &v, sizeof v); }
static inline v4f v4_set1(float x) { return (v4f){x, x, x, x}; }

static inline v4f v4_max(v4f a, v4f b)
{
    v4i gt = a > b;
    return (v4f)(((v4i)a & gt) | ((v4i)b & ~gt));
}

#define SUF generic
#define V v4f
#define VI v4i
#define W 4
#define NV 2
#define VLOAD(p) v4_load(p)
#define VSTORE(p, v) v4_store((p), (v))
#define VSET1(x) v4_set1(x)
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VMAX(a, b) v4_max((a), (b))
#include "kernels/cpu/attention_tiles.h"
#undef SUF
#undef V
#undef VI
#undef W
#undef NV
#undef VLOAD
#undef VSTORE
#undef VSET1
#undef VFMA
#undef VMAX

static const attn_tiles *pick_tiles(void)
{
    const char *force = getenv("DS_CPU_ATTENTION_ISA");
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f");
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (force && strcmp(force, "generic") == 0)
        return &tiles_generic;
    if (avx512 && !(force && strcmp(force, "avx2") == 0))
        return &tiles_avx512;
    if (avx2)
        return &tiles_avx2;
#else
    (void)force;
#endif
    return &tiles_generic;
}

typedef struct attn_job {
    const ds_attention_args *a;
    const attn_tiles *tiles;
    int64_t sq, sk, hq, hkv, d;
    int64_t dp;     /* d rounded up to ATT_DPAD */
    int64_t nqb;    /* query blocks per head */
    int64_t nkb;    /* key blocks */
    float qscale;   /* scale * log2(e) */
    int failed;     /* a worker could not get its scratch buffer */
} attn_job;

/* Per-worker buffers, carved from one scratch allocation (64-byte aligned pieces). */
typedef struct attn_bufs {
    float *kt;    /* [nkb][d][ATT_BK]: K transposed per key block, zero past Sk */
    float *v;     /* [nkb * ATT_BK][dp]: V, zero past Sk and past d */
    float *q;     /* [ATT_BQ][d]: pre-scaled queries, zero rows past the block's end */
    float *s;     /* [ATT_BQ][ATT_BK]: scores, then weights */
    float *o;     /* [ATT_BQ][dp]: unnormalised output */
    float *row;   /* [max(d, 1)]: one converted row */
    float *m, *l, *alpha; /* [ATT_BQ] each: running max, running sum, rescale factor */
    float *bias;  /* [ATT_BK]: 0 for a visible key, -inf for a masked or missing one */
} attn_bufs;

static size_t round64(size_t floats) { return (floats + 15) & ~(size_t)15; }

static size_t bufs_floats(const attn_job *j)
{
    size_t skp = (size_t)j->nkb * ATT_BK, d = (size_t)j->d, dp = (size_t)j->dp;
    return round64(skp * d) + round64(skp * dp) + round64(ATT_BQ * d) + round64(ATT_BQ * ATT_BK) +
           round64(ATT_BQ * dp) + round64(d ? d : 1) + 3 * round64(ATT_BQ) + round64(ATT_BK);
}

static void carve(const attn_job *j, float *base, attn_bufs *bf)
{
    size_t skp = (size_t)j->nkb * ATT_BK, d = (size_t)j->d, dp = (size_t)j->dp;
    bf->kt = base;
    base += round64(skp * d);
    bf->v = base;
    base += round64(skp * dp);
    bf->q = base;
    base += round64(ATT_BQ * d);
    bf->s = base;
    base += round64(ATT_BQ * ATT_BK);
    bf->o = base;
    base += round64(ATT_BQ * dp);
    bf->row = base;
    base += round64(d ? d : 1);
    bf->m = base;
    base += round64(ATT_BQ);
    bf->l = base;
    base += round64(ATT_BQ);
    bf->alpha = base;
    base += round64(ATT_BQ);
    bf->bias = base;
}

/* Converts K and V of (batch b, kv head kvh) into the worker's packed f32 layouts. */
static void pack_kv(const attn_job *j, int64_t b, int64_t kvh, attn_bufs *bf)
{
    const ds_tensor *k = j->a->k, *v = j->a->v;
    size_t esize = ds_dtype_size(k->dtype);
    int64_t d = j->d, dp = j->dp, skp = j->nkb * ATT_BK;
    for (int64_t t = 0; t < skp; t++) {
        float *kt = bf->kt + (t / ATT_BK) * d * ATT_BK + t % ATT_BK;
        float *vr = bf->v + t * dp;
        if (t < j->sk) {
            size_t at = (size_t)(((b * j->sk + t) * j->hkv + kvh) * d);
            ds_convert_to_f32((const char *)k->data + at * esize, k->dtype, (size_t)d, bf->row);
            ds_convert_to_f32((const char *)v->data + at * esize, v->dtype, (size_t)d, vr);
            for (int64_t c = 0; c < d; c++)
                kt[c * ATT_BK] = bf->row[c];
            memset(vr + d, 0, (size_t)(dp - d) * sizeof *vr);
        } else {
            for (int64_t c = 0; c < d; c++)
                kt[c * ATT_BK] = 0.0f;
            memset(vr, 0, (size_t)dp * sizeof *vr);
        }
    }
}

/* One work item: query rows [q0, q0 + rows) of head h in batch b. */
static void run_block(const attn_job *j, int64_t b, int64_t h, int64_t q0, attn_bufs *bf)
{
    const ds_attention_args *a = j->a;
    const attn_tiles *tl = j->tiles;
    int64_t d = j->d, dp = j->dp, sk = j->sk;
    int rows = (int)(j->sq - q0 < ATT_BQ ? j->sq - q0 : ATT_BQ);
    int rows_pad = (rows + TILE_MR - 1) / TILE_MR * TILE_MR;
    size_t qsize = ds_dtype_size(a->q->dtype), osize = ds_dtype_size(a->out->dtype);

    for (int r = 0; r < rows; r++) {
        size_t at = (size_t)(((b * j->sq + q0 + r) * j->hq + h) * d);
        float *qr = bf->q + r * d;
        ds_convert_to_f32((const char *)a->q->data + at * qsize, a->q->dtype, (size_t)d, qr);
        for (int64_t c = 0; c < d; c++)
            qr[c] *= j->qscale;
    }
    memset(bf->q + rows * d, 0, (size_t)((rows_pad - rows) * d) * sizeof(float));
    memset(bf->o, 0, (size_t)(rows_pad * dp) * sizeof(float));
    for (int r = 0; r < rows_pad; r++) {
        bf->m[r] = -INFINITY;
        bf->l[r] = 0.0f;
    }

    /* Causal: query i sees keys up to i + (Sk - Sq); blocks past the last row's limit are
     * skipped whole. */
    int64_t off = sk - j->sq;
    int64_t kb_end = j->nkb;
    if (a->causal) {
        int64_t last = q0 + rows - 1 + off;
        kb_end = last < 0 ? 0 : (last / ATT_BK + 1 < kb_end ? last / ATT_BK + 1 : kb_end);
    }
    const uint8_t *mask = a->key_mask ? (const uint8_t *)a->key_mask->data + b * sk : NULL;

    for (int64_t kb = 0; kb < kb_end; kb++) {
        int64_t j0 = kb * ATT_BK;
        int valid = (int)(sk - j0 < ATT_BK ? sk - j0 : ATT_BK);
        int masked = valid < ATT_BK, visible = 0;
        for (int c = 0; c < ATT_BK; c++) {
            int ok = c < valid && (!mask || mask[j0 + c]);
            bf->bias[c] = ok ? 0.0f : -INFINITY;
            masked |= !ok;
            visible |= ok;
        }
        if (!visible)
            continue;
        tl->scores(bf->q, d, bf->kt + kb * d * ATT_BK, bf->s, rows_pad);
        if (masked)
            for (int r = 0; r < rows_pad; r++)
                for (int c = 0; c < ATT_BK; c++)
                    bf->s[r * ATT_BK + c] += bf->bias[c];
        if (a->causal)
            for (int r = 0; r < rows; r++) {
                int64_t first_hidden = q0 + r + off + 1 - j0;
                for (int64_t c = first_hidden < 0 ? 0 : first_hidden; c < ATT_BK; c++)
                    bf->s[r * ATT_BK + c] = -INFINITY;
            }
        tl->softmax(bf->s, rows_pad, bf->m, bf->l, bf->alpha);
        tl->pv(bf->s, bf->v + j0 * dp, dp, bf->o, bf->alpha, rows_pad);
    }

    for (int r = 0; r < rows; r++) {
        /* l is 0 exactly when every key of the row was masked: the row is zeros. */
        float inv = bf->l[r] > 0.0f ? 1.0f / bf->l[r] : 0.0f;
        float *orow = bf->o + r * dp;
        for (int64_t c = 0; c < d; c++)
            orow[c] *= inv;
        size_t at = (size_t)(((b * j->sq + q0 + r) * j->hq + h) * d);
        ds_convert_from_f32(orow, (size_t)d, a->out->dtype, (char *)a->out->data + at * osize);
    }
}

static void attn_range(void *ctx, int64_t begin, int64_t end)
{
    attn_job *j = ctx;
    float *base = ds__cpu_scratch(bufs_floats(j) * sizeof(float));
    if (!base) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    attn_bufs bf;
    carve(j, base, &bf);
    int64_t group = j->hq / j->hkv, packed = -1;
    for (int64_t it = begin; it < end; it++) {
        int64_t qb = it % j->nqb, bh = it / j->nqb;
        int64_t h = bh % j->hq, b = bh / j->hq;
        int64_t kv = b * j->hkv + h / group;
        if (kv != packed) {
            pack_kv(j, b, h / group, &bf);
            packed = kv;
        }
        run_block(j, b, h, qb * ATT_BQ, &bf);
    }
}

int ds__cpu_attention(ds_backend *b, ds_stream *s, const ds_attention_args *a, ds_error *err)
{
    (void)s;
    attn_job j;
    memset(&j, 0, sizeof j);
    j.a = a;
    j.tiles = pick_tiles();
    j.sq = a->q->shape[1];
    j.hq = a->q->shape[2];
    j.d = a->q->shape[3];
    j.sk = a->k->shape[1];
    j.hkv = a->k->shape[2];
    j.dp = (j.d + ATT_DPAD - 1) / ATT_DPAD * ATT_DPAD;
    j.nqb = (j.sq + ATT_BQ - 1) / ATT_BQ;
    j.nkb = (j.sk + ATT_BK - 1) / ATT_BK;
    j.qscale = (float)((double)a->scale * M_LOG2E);
    int64_t items = a->q->shape[0] * j.hq * j.nqb;
    if (items == 0 || j.d == 0)
        return DS_OK;
    ds__cpu_parallel_for(b, items, 1, attn_range, &j);
    if (j.failed)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "attention: cannot allocate %zu bytes of scratch per thread (Sk %lld, "
                            "head dim %lld)", bufs_floats(&j) * sizeof(float), (long long)j.sk,
                            (long long)j.d);
    return DS_OK;
}
