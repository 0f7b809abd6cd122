/* Fused bf16 loops of the elementwise engine (see elementwise_bf16.h).
 *
 * Each vector width has its own loop, chosen once at run time as core/float_convert.c chooses
 * its conversions, so the same binary runs on x86-64 processors without AVX2 or AVX-512. The
 * arithmetic is one IEEE f32 operation per operator of the generic path's expression, in its
 * order: the project builds as ISO C (no contraction of a multiply and an add into an FMA), and
 * no FMA intrinsic is used, so a vector lane computes exactly what the scalar code computes.
 * Rounding to bf16 is ds_f32_to_bf16 in integer arithmetic (nearest even, overflow to inf, NaN
 * kept quiet, subnormals kept); AVX512_BF16's VCVTNEPS2BF16 would flush subnormals, so it is not
 * used. Tails shorter than a vector run through the scalar loop. */
#include "kernels/cpu/elementwise_bf16.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include "core/float_convert.h"

#if defined(__clang__)
/* Clang contracts a * b + c into an FMA by default; the generic path never does. */
#pragma STDC FP_CONTRACT OFF
#endif

/* ---- Scalar ---- */

static inline float load1(const ds__ew_src *s, int64_t i)
{
    switch (s->form) {
    case DS__EW_BF16: return ds_bf16_to_f32(((const uint16_t *)s->p)[i]);
    case DS__EW_F32: return ((const float *)s->p)[i];
    case DS__EW_SCALAR: break;
    }
    return s->value;
}

static void loop_scalar_from(ds__ew_bf16_op op, const ds__ew_src *s, uint16_t *y, int64_t i,
                             int64_t n)
{
    for (; i < n; i++) {
        float a = load1(&s[0], i), b = load1(&s[1], i), r;
        switch (op) {
        case DS__EW_BF16_ADD: r = a + b; break;
        case DS__EW_BF16_SUB: r = a - b; break;
        case DS__EW_BF16_MUL: r = a * b; break;
        case DS__EW_BF16_DIV: r = a / b; break;
        case DS__EW_BF16_MODULATE: r = a * (1.0f + b) + load1(&s[2], i); break;
        case DS__EW_BF16_GATED_RESIDUAL: r = a + b * load1(&s[2], i); break;
        default: return;
        }
        y[i] = ds_f32_to_bf16(r);
    }
}

static void loop_scalar(ds__ew_bf16_op op, const ds__ew_src *s, uint16_t *y, int64_t n)
{
    loop_scalar_from(op, s, y, 0, n);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define DS_X86_EW_PATHS 1
#include <immintrin.h>

/* ---- AVX-512: 16 lanes ---- */

#define AVX512 __attribute__((target("avx512f")))

AVX512 static inline __m512 load16(const ds__ew_src *s, int64_t i)
{
    switch (s->form) {
    case DS__EW_BF16: {
        __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)s->p + i));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case DS__EW_F32: return _mm512_loadu_ps((const float *)s->p + i);
    case DS__EW_SCALAR: break;
    }
    return _mm512_set1_ps(s->value);
}

AVX512 static inline void store16(uint16_t *y, __m512 v)
{
    const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF), inf = _mm512_set1_epi32(0x7F800000);
    const __m512i half = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1);
    const __m512i quiet = _mm512_set1_epi32(0x40);
    __m512i u = _mm512_castps_si512(v);
    __m512i high = _mm512_srli_epi32(u, 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(half, _mm512_and_si512(high, one)));
    r = _mm512_mask_mov_epi32(_mm512_srli_epi32(r, 16), nan, _mm512_or_si512(high, quiet));
    _mm256_storeu_si256((__m256i *)y, _mm512_cvtepi32_epi16(r));
}

AVX512 static void loop_avx512(ds__ew_bf16_op op, const ds__ew_src *s, uint16_t *y, int64_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    int64_t i = 0;
    switch (op) {
    case DS__EW_BF16_ADD:
        for (; i + 16 <= n; i += 16)
            store16(y + i, _mm512_add_ps(load16(&s[0], i), load16(&s[1], i)));
        break;
    case DS__EW_BF16_SUB:
        for (; i + 16 <= n; i += 16)
            store16(y + i, _mm512_sub_ps(load16(&s[0], i), load16(&s[1], i)));
        break;
    case DS__EW_BF16_MUL:
        for (; i + 16 <= n; i += 16)
            store16(y + i, _mm512_mul_ps(load16(&s[0], i), load16(&s[1], i)));
        break;
    case DS__EW_BF16_DIV:
        for (; i + 16 <= n; i += 16)
            store16(y + i, _mm512_div_ps(load16(&s[0], i), load16(&s[1], i)));
        break;
    case DS__EW_BF16_MODULATE:
        for (; i + 16 <= n; i += 16) {
            __m512 t = _mm512_mul_ps(load16(&s[0], i), _mm512_add_ps(one, load16(&s[1], i)));
            store16(y + i, _mm512_add_ps(t, load16(&s[2], i)));
        }
        break;
    case DS__EW_BF16_GATED_RESIDUAL:
        for (; i + 16 <= n; i += 16) {
            __m512 t = _mm512_mul_ps(load16(&s[1], i), load16(&s[2], i));
            store16(y + i, _mm512_add_ps(load16(&s[0], i), t));
        }
        break;
    }
    loop_scalar_from(op, s, y, i, n);
}

/* ---- AVX2: 8 lanes ---- */

#define AVX2 __attribute__((target("avx2")))

AVX2 static inline __m256 load8(const ds__ew_src *s, int64_t i)
{
    switch (s->form) {
    case DS__EW_BF16: {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)s->p + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case DS__EW_F32: return _mm256_loadu_ps((const float *)s->p + i);
    case DS__EW_SCALAR: break;
    }
    return _mm256_set1_ps(s->value);
}

AVX2 static inline void store8(uint16_t *y, __m256 v)
{
    const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF), inf = _mm256_set1_epi32(0x7F800000);
    const __m256i half = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1);
    const __m256i quiet = _mm256_set1_epi32(0x40);
    __m256i u = _mm256_castps_si256(v);
    __m256i high = _mm256_srli_epi32(u, 16);
    /* Both sides below 2^31, so the signed compare orders them as unsigned. */
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(half, _mm256_and_si256(high, one)));
    r = _mm256_blendv_epi8(_mm256_srli_epi32(r, 16), _mm256_or_si256(high, quiet), nan);
    /* Every lane is at most 0xFFFF, so the unsigned saturating pack only narrows. */
    __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128((__m128i *)y, packed);
}

AVX2 static void loop_avx2(ds__ew_bf16_op op, const ds__ew_src *s, uint16_t *y, int64_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    switch (op) {
    case DS__EW_BF16_ADD:
        for (; i + 8 <= n; i += 8)
            store8(y + i, _mm256_add_ps(load8(&s[0], i), load8(&s[1], i)));
        break;
    case DS__EW_BF16_SUB:
        for (; i + 8 <= n; i += 8)
            store8(y + i, _mm256_sub_ps(load8(&s[0], i), load8(&s[1], i)));
        break;
    case DS__EW_BF16_MUL:
        for (; i + 8 <= n; i += 8)
            store8(y + i, _mm256_mul_ps(load8(&s[0], i), load8(&s[1], i)));
        break;
    case DS__EW_BF16_DIV:
        for (; i + 8 <= n; i += 8)
            store8(y + i, _mm256_div_ps(load8(&s[0], i), load8(&s[1], i)));
        break;
    case DS__EW_BF16_MODULATE:
        for (; i + 8 <= n; i += 8) {
            __m256 t = _mm256_mul_ps(load8(&s[0], i), _mm256_add_ps(one, load8(&s[1], i)));
            store8(y + i, _mm256_add_ps(t, load8(&s[2], i)));
        }
        break;
    case DS__EW_BF16_GATED_RESIDUAL:
        for (; i + 8 <= n; i += 8) {
            __m256 t = _mm256_mul_ps(load8(&s[1], i), load8(&s[2], i));
            store8(y + i, _mm256_add_ps(load8(&s[0], i), t));
        }
        break;
    }
    loop_scalar_from(op, s, y, i, n);
}
#endif

/* ---- Dispatch ---- */

static ds__ew_bf16_fn chosen = loop_scalar;
static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;
static atomic_llong fused_calls;

/* This processor's paths are the conversions' (core/float_convert.c), plus switching off. */
static int isa_supported(int isa)
{
#ifdef DS_X86_EW_PATHS
    return isa == DS__EW_BF16_OFF || ds__convert_isa_supported(isa);
#else
    return isa == DS__CONVERT_SCALAR || isa == DS__EW_BF16_OFF;
#endif
}

static void set_isa(int isa)
{
    chosen = isa == DS__EW_BF16_OFF ? NULL : loop_scalar;
#ifdef DS_X86_EW_PATHS
    if (isa == DS__CONVERT_AVX512)
        chosen = loop_avx512;
    else if (isa == DS__CONVERT_AVX2)
        chosen = loop_avx2;
#endif
}

static void choose(void)
{
    set_isa(isa_supported(DS__CONVERT_AVX512) ? DS__CONVERT_AVX512
            : isa_supported(DS__CONVERT_AVX2) ? DS__CONVERT_AVX2
                                              : DS__CONVERT_SCALAR);
}

ds__ew_bf16_fn ds__ew_bf16_loop(void)
{
    pthread_once(&chosen_once, choose);
    if (chosen)
        atomic_fetch_add_explicit(&fused_calls, 1, memory_order_relaxed);
    return chosen;
}

int ds__ew_bf16_use_isa(int isa)
{
    pthread_once(&chosen_once, choose);
    if (!isa_supported(isa))
        return 0;
    set_isa(isa);
    return 1;
}

int64_t ds__ew_bf16_calls(void) { return atomic_load_explicit(&fused_calls, memory_order_relaxed); }
