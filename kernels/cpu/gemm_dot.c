/* The dot-product GEMM for a few dozen rows (see gemm_dot.h).
 *
 * Register tile: DOT_MR rows of x by DOT_NR rows of the weight, 24 accumulators of 16 lanes; per
 * 16 elements of K it loads 6 x vectors and 4 weight vectors for 24 multiply-adds. Loop nest per
 * worker (a contiguous range of weight rows): blocks of DOT_KB along K; within one, the x rows'
 * block is copied into a slab whose row stride is not a multiple of 4 KiB (x rows K floats apart
 * would otherwise share L1 sets with each other and with the weight rows), zero-padded to whole
 * tiles; then blocks of DOT_NB weight rows (their K block stays in L2 while every x tile passes
 * over it), x tiles, weight tiles. Each tile's 16-lane sums are added into 4 outputs per x row
 * by a fixed shuffle tree at the end of its K block. */
#include "kernels/cpu/gemm_dot.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

#define DOT_MR 6
#define DOT_NR 4
_Static_assert(DOT_MR == 6 && DOT_NR == 4, "the tile body below is written out for 6 x 4");
/* K elements per block: the x tile's block (6 x 4 KiB) stays in L1 while the weight tiles
 * stream past it; longer blocks spill it, shorter ones add more lane reductions per FMA. */
#define DOT_KB 1024
/* Weight rows per block: their K block (256 KiB in f32) stays in L2 over all x tiles. */
#define DOT_NB 64
/* The slab's extra floats per row: one cache line, so rows do not alias in L1. */
#define DOT_XPAD 16

#if defined(__x86_64__) && defined(__GNUC__)
#define DS_DOT_AVX512 1
#include <immintrin.h>
#endif

int ds__gemm_dot_available(void)
{
#ifdef DS_DOT_AVX512
    const char *force = getenv("DS_CPU_GEMM_ISA");
    if (force && (strcmp(force, "avx2") == 0 || strcmp(force, "generic") == 0))
        return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

#ifdef DS_DOT_AVX512

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

/* The 16-lane sums of a, b, c, d as four floats: pairs added across unpacks, then the four
 * 128-bit quarters. */
AVX512 static inline __m128 sum4(__m512 a, __m512 b, __m512 c, __m512 d)
{
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512 abcd = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))));
    __m256 half = _mm256_add_ps(_mm512_castps512_ps256(abcd), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
}

AVX512 static inline __m512 load_f32(const void *w, int64_t i)
{
    return _mm512_loadu_ps((const float *)w + i);
}

AVX512 static inline __m512 load_f32_MASKED(const void *w, int64_t i, __mmask16 mask)
{
    return _mm512_maskz_loadu_ps(mask, (const float *)w + i);
}

/* bf16 is the top half of an f32: widening is a 16-bit shift. */
AVX512 static inline __m512 load_bf16(const void *w, int64_t i)
{
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AVX512 static inline __m512 load_bf16_MASKED(const void *w, int64_t i, __mmask16 mask)
{
    __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)w + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

typedef struct dot_tile {
    const float *x;     /* DOT_MR slab rows, ldx apart */
    int64_t ldx;
    const void *w[DOT_NR]; /* weight rows at this K block */
    int64_t kb;         /* elements of this K block */
    int mr, nr;         /* valid x rows and weight rows */
    int first;          /* the first K block: store, else add */
    float *c;           /* acc at (row, column) of the tile */
    int64_t ldc;
} dot_tile;

/* Steps of 16 along K, then one masked step for a tail: its x lanes are the slab's zero padding and its
 * weight lanes are masked to zero, so they add nothing. The 24 accumulators are named
 * variables: GCC keeps an array of vectors in memory, a store per multiply-add. */
#define DOT_ROW_DECL(i) __m512 a##i##0 = zero, a##i##1 = zero, a##i##2 = zero, a##i##3 = zero;
#define DOT_ROW_FMA(i)                                                                            \
    {                                                                                             \
        __m512 xv = _mm512_loadu_ps(t->x + (i) * t->ldx + kk);                                    \
        a##i##0 = _mm512_fmadd_ps(xv, w0, a##i##0);                                               \
        a##i##1 = _mm512_fmadd_ps(xv, w1, a##i##1);                                               \
        a##i##2 = _mm512_fmadd_ps(xv, w2, a##i##2);                                               \
        a##i##3 = _mm512_fmadd_ps(xv, w3, a##i##3);                                               \
    }
#define DOT_ROW_SUM(i) _mm_storeu_ps(s[i], sum4(a##i##0, a##i##1, a##i##2, a##i##3));
#define DOT_TILE_BODY(LOAD)                                                                       \
    {                                                                                             \
        const __m512 zero = _mm512_setzero_ps();                                                  \
        DOT_ROW_DECL(0) DOT_ROW_DECL(1) DOT_ROW_DECL(2)                                           \
        DOT_ROW_DECL(3) DOT_ROW_DECL(4) DOT_ROW_DECL(5)                                           \
        int64_t kk = 0;                                                                           \
        for (; kk + 16 <= t->kb; kk += 16) {                                                      \
            __m512 w0 = LOAD(t->w[0], kk), w1 = LOAD(t->w[1], kk);                                \
            __m512 w2 = LOAD(t->w[2], kk), w3 = LOAD(t->w[3], kk);                                \
            DOT_ROW_FMA(0) DOT_ROW_FMA(1) DOT_ROW_FMA(2)                                          \
            DOT_ROW_FMA(3) DOT_ROW_FMA(4) DOT_ROW_FMA(5)                                          \
        }                                                                                         \
        if (kk < t->kb) {                                                                         \
            __mmask16 mask = (__mmask16)((1u << (t->kb - kk)) - 1);                               \
            __m512 w0 = LOAD##_MASKED(t->w[0], kk, mask), w1 = LOAD##_MASKED(t->w[1], kk, mask);  \
            __m512 w2 = LOAD##_MASKED(t->w[2], kk, mask), w3 = LOAD##_MASKED(t->w[3], kk, mask);  \
            DOT_ROW_FMA(0) DOT_ROW_FMA(1) DOT_ROW_FMA(2)                                          \
            DOT_ROW_FMA(3) DOT_ROW_FMA(4) DOT_ROW_FMA(5)                                          \
        }                                                                                         \
        float s[DOT_MR][4];                                                                       \
        DOT_ROW_SUM(0) DOT_ROW_SUM(1) DOT_ROW_SUM(2)                                              \
        DOT_ROW_SUM(3) DOT_ROW_SUM(4) DOT_ROW_SUM(5)                                              \
        for (int i = 0; i < t->mr; i++) {                                                         \
            float *c = t->c + i * t->ldc;                                                         \
            for (int j = 0; j < t->nr; j++)                                                       \
                c[j] = t->first ? s[i][j] : c[j] + s[i][j];                                       \
        }                                                                                         \
    }

AVX512 static void tile_f32(const dot_tile *t) DOT_TILE_BODY(load_f32)
AVX512 static void tile_bf16(const dot_tile *t) DOT_TILE_BODY(load_bf16)

#undef DOT_TILE_BODY
#undef DOT_ROW_SUM
#undef DOT_ROW_FMA
#undef DOT_ROW_DECL

typedef struct dot_job {
    const ds__gemm_dot_problem *g;
    int failed;
} dot_job;

/* Weight rows [begin, end) * DOT_NR (the range counts tiles of weight rows). */
static void dot_range(void *ctx, int64_t begin, int64_t end)
{
    dot_job *job = ctx;
    const ds__gemm_dot_problem *g = job->g;
    int64_t n_begin = begin * DOT_NR, n_end = end * DOT_NR < g->n ? end * DOT_NR : g->n;
    int64_t m_pad = (g->m + DOT_MR - 1) / DOT_MR * DOT_MR;
    int64_t ldx = DOT_KB + DOT_XPAD;
    /* Rows start on cache lines (ldx is a whole number of them): a vector load that straddles
     * two lines costs two, and x is loaded once per 4 multiply-adds. */
    char *scratch = ds__cpu_scratch((size_t)(m_pad * ldx) * sizeof(float) + 64);
    if (!scratch) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    float *slab = (float *)(scratch + (64 - (uintptr_t)scratch % 64) % 64);
    size_t wsize = g->wdtype == DS_BF16 ? sizeof(uint16_t) : sizeof(float);
    void (*tile)(const dot_tile *) = g->wdtype == DS_BF16 ? tile_bf16 : tile_f32;
    for (int64_t k0 = 0; k0 < g->k; k0 += DOT_KB) {
        int64_t kb = g->k - k0 < DOT_KB ? g->k - k0 : DOT_KB;
        int64_t kb16 = (kb + 15) / 16 * 16;
        for (int64_t r = 0; r < m_pad; r++) {
            float *row = slab + r * ldx;
            if (r < g->m) {
                memcpy(row, g->x + r * g->k + k0, (size_t)kb * sizeof(float));
                memset(row + kb, 0, (size_t)(kb16 - kb) * sizeof(float));
            } else {
                memset(row, 0, (size_t)kb16 * sizeof(float));
            }
        }
        for (int64_t nb = n_begin; nb < n_end; nb += DOT_NB) {
            int64_t nb_end = nb + DOT_NB < n_end ? nb + DOT_NB : n_end;
            for (int64_t m0 = 0; m0 < g->m; m0 += DOT_MR) {
                for (int64_t n0 = nb; n0 < nb_end; n0 += DOT_NR) {
                    dot_tile t = {.x = slab + m0 * ldx, .ldx = ldx, .kb = kb,
                                  .mr = g->m - m0 < DOT_MR ? (int)(g->m - m0) : DOT_MR,
                                  .nr = nb_end - n0 < DOT_NR ? (int)(nb_end - n0) : DOT_NR,
                                  .first = k0 == 0, .c = g->acc + m0 * g->n + n0, .ldc = g->n};
                    /* A short last tile repeats its last row; those sums are dropped. */
                    for (int j = 0; j < DOT_NR; j++) {
                        int64_t row = n0 + (j < t.nr ? j : t.nr - 1);
                        t.w[j] = (const char *)g->w + (size_t)(row * g->k + k0) * wsize;
                    }
                    tile(&t);
                }
            }
        }
    }
}

int ds__gemm_dot(ds_backend *b, const ds__gemm_dot_problem *g, ds_error *err)
{
    dot_job job = {g, 0};
    int64_t tiles = (g->n + DOT_NR - 1) / DOT_NR;
    ds__cpu_parallel_for(b, tiles, DOT_NB / DOT_NR, dot_range, &job);
    if (job.failed)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "linear: out of memory for a %lld-row "
                            "block of x in f32", (long long)g->m);
    return DS_OK;
}

#else

int ds__gemm_dot(ds_backend *b, const ds__gemm_dot_problem *g, ds_error *err)
{
    (void)b;
    (void)g;
    return ds_error_set(err, DS_ERR_INTERNAL, "linear: the dot-product GEMM needs AVX-512, which "
                        "this build does not target");
}

#endif
