#include "core/float_convert.h"

#include <math.h>
#include <pthread.h>

float ds_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    if (exp == 0x1F)
        return ds__bits_f32(sign | 0x7F800000u | (man << 13) | (man ? 0x00400000u : 0));
    if (exp == 0) {
        /* Subnormal: man * 2^-24, exact in f32. */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    return ds__bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

/* Rounds |f| (finite, non-negative) to a float format with `man_bits` mantissa bits, minimum
 * normal exponent `emin` (unbiased) and returns the result as f32: the shared core of the
 * narrow conversions. Subnormals of the target are handled by rounding at the fixed quantum
 * 2^(emin - man_bits). */
static float round_to_format(float a, int man_bits, int emin)
{
    int e;
    frexpf(a, &e);                            /* a = m * 2^e, m in [0.5, 1) */
    int exp = e - 1;                          /* a in [2^exp, 2^(exp+1)) */
    if (exp < emin)
        exp = emin;
    float quantum = ldexpf(1.0f, exp - man_bits);
    /* nearbyintf rounds half to even in the default rounding mode. */
    return nearbyintf(a / quantum) * quantum;
}

uint16_t ds_f32_to_f16(float f)
{
    uint32_t u = ds__f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    float a = fabsf(f);
    if (a != a)
        return (uint16_t)(sign | 0x7E00u);
    float r = round_to_format(a, 10, -14);
    if (r > 65504.0f || a == INFINITY)
        return (uint16_t)(sign | 0x7C00u);
    if (r < 0x1p-14f)                         /* subnormal (or zero): r is a multiple of 2^-24 */
        return (uint16_t)(sign | (uint16_t)(r * 0x1p24f));
    uint32_t ru = ds__f32_bits(r);
    uint32_t exp = ((ru >> 23) & 0xFFu) - 112;
    return (uint16_t)(sign | (exp << 10) | ((ru >> 13) & 0x3FFu));
}

/* Bit manipulation rather than ldexpf/frexpf, and static so that the conversion loops below
 * inline it (the library is position-independent: calls to the exported names stay calls):
 * fp8 weights are decoded by every CPU linear and every VRAM copy out of fp8 storage. */
static inline float e4m3_to_f32(uint8_t v)
{
    uint32_t sign = (uint32_t)(v & 0x80u) << 24;
    uint32_t exp = (v >> 3) & 0xFu, man = v & 0x7u;
    if (exp == 0xF && man == 0x7)
        return NAN;
    if (exp == 0) {
        float x = (float)man * 0x1p-9f;       /* subnormal: man * 2^-9, exact */
        return sign ? -x : x;
    }
    return ds__bits_f32(sign | ((exp + 120u) << 23) | (man << 20)); /* bias 7 -> 127 */
}

static inline uint8_t f32_to_e4m3(float f)
{
    uint32_t u = ds__f32_bits(f);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u)
        return (uint8_t)(sign | 0x7Fu);
    if (a >= 0x43E00000u)                     /* >= 448, infinity included: e4m3fn has no */
        return (uint8_t)(sign | 0x7Eu);       /* infinity and torch saturates */
    if (a < 0x3C800000u) {                    /* below 2^-6: multiples of 2^-9, nearest even */
        float q = ds__bits_f32(a) * 0x1p9f;   /* exact: a power-of-two scale, q < 8 */
        float r = (q + 0x1p23f) - 0x1p23f;    /* rounds q to an integer, ties to even */
        return (uint8_t)(sign | (uint8_t)r);  /* 8 = exponent 1, mantissa 0: still right */
    }
    /* Keep 3 of the 23 mantissa bits, nearest even; a carry moves into the exponent. */
    uint32_t r = (a + 0x7FFFFu + ((a >> 20) & 1u)) & ~0xFFFFFu;
    if (r > 0x43E00000u)                      /* rounded above 448 */
        return (uint8_t)(sign | 0x7Eu);
    return (uint8_t)(sign | ((((r >> 23) - 120u) << 3) | ((r >> 20) & 7u)));
}

float ds_f8e4m3_to_f32(uint8_t v) { return e4m3_to_f32(v); }

/* All 256 values decoded once: a table lookup per element is what makes bulk decoding fast. */
static float e4m3_values[256];
static pthread_once_t e4m3_once = PTHREAD_ONCE_INIT;

static void e4m3_fill(void)
{
    for (int v = 0; v < 256; v++)
        e4m3_values[v] = e4m3_to_f32((uint8_t)v);
}

static const float *e4m3_table(void)
{
    pthread_once(&e4m3_once, e4m3_fill);
    return e4m3_values;
}
uint8_t ds_f32_to_f8e4m3(float f) { return f32_to_e4m3(f); }

float ds_f8e5m2_to_f32(uint8_t v)
{
    /* e5m2 is the top byte of an f16. */
    return ds_f16_to_f32((uint16_t)((uint16_t)v << 8));
}

uint8_t ds_f32_to_f8e5m2(float f)
{
    uint8_t sign = (ds__f32_bits(f) >> 24) & 0x80u;
    float a = fabsf(f);
    if (a != a)
        return (uint8_t)(sign | 0x7Eu);
    float r = round_to_format(a, 2, -14);
    if (r > 57344.0f || a == INFINITY)
        return (uint8_t)(sign | 0x7Cu);
    if (r < 0x1p-14f)
        return (uint8_t)(sign | (uint8_t)(r * 0x1p16f));
    int e;
    float m = frexpf(r, &e);
    uint8_t exp = (uint8_t)(e - 1 + 15);
    uint8_t man = (uint8_t)((m * 2.0f - 1.0f) * 4.0f);
    return (uint8_t)(sign | (exp << 2) | man);
}

/* ---- bulk bf16 <-> f32 ----
 *
 * The CPU kernels convert every bf16 operand through these, so they run at the vector width the
 * processor has, chosen once at run time (the same binary runs on x86-64 machines without
 * AVX2 or AVX-512). Every path computes exactly what ds_bf16_to_f32 / ds_f32_to_bf16 do, in
 * integer arithmetic: round to nearest even, overflow to inf, NaN kept quiet and signed,
 * subnormals kept. (AVX512_BF16's VCVTNEPS2BF16 flushes subnormal inputs to zero, so it would
 * not be bit-identical to the scalar path and is not used.) */

typedef void (*bf16_to_f32_fn)(const uint16_t *src, size_t n, float *dst);
typedef void (*f32_to_bf16_fn)(const float *src, size_t n, uint16_t *dst);

static void bf16_to_f32_scalar(const uint16_t *src, size_t n, float *dst)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = ds_bf16_to_f32(src[i]);
}

static void f32_to_bf16_scalar(const float *src, size_t n, uint16_t *dst)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = ds_f32_to_bf16(src[i]);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define DS_X86_BF16_PATHS 1
#include <immintrin.h>

__attribute__((target("avx2"))) static void bf16_to_f32_avx2(const uint16_t *src, size_t n,
                                                             float *dst)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i),
                            _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    bf16_to_f32_scalar(src + i, n - i, dst + i);
}

__attribute__((target("avx2"))) static void f32_to_bf16_avx2(const float *src, size_t n,
                                                             uint16_t *dst)
{
    const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF), inf = _mm256_set1_epi32(0x7F800000);
    const __m256i half = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1);
    const __m256i quiet = _mm256_set1_epi32(0x40);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i u = _mm256_loadu_si256((const __m256i *)(src + i));
        __m256i high = _mm256_srli_epi32(u, 16);
        /* Both sides below 2^31, so the signed compare orders them as unsigned. */
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
        __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(half, _mm256_and_si256(high, one)));
        r = _mm256_blendv_epi8(_mm256_srli_epi32(r, 16), _mm256_or_si256(high, quiet), nan);
        /* Every lane is at most 0xFFFF, so the unsigned saturating pack only narrows. */
        __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
        _mm_storeu_si128((__m128i *)(dst + i), packed);
    }
    f32_to_bf16_scalar(src + i, n - i, dst + i);
}

__attribute__((target("avx512f"))) static void bf16_to_f32_avx512(const uint16_t *src, size_t n,
                                                                  float *dst)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)(src + i));
        _mm512_storeu_si512(dst + i, _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    bf16_to_f32_scalar(src + i, n - i, dst + i);
}

__attribute__((target("avx512f"))) static void f32_to_bf16_avx512(const float *src, size_t n,
                                                                  uint16_t *dst)
{
    const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF), inf = _mm512_set1_epi32(0x7F800000);
    const __m512i half = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1);
    const __m512i quiet = _mm512_set1_epi32(0x40);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i u = _mm512_loadu_si512(src + i);
        __m512i high = _mm512_srli_epi32(u, 16);
        __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
        __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(half, _mm512_and_si512(high, one)));
        r = _mm512_mask_mov_epi32(_mm512_srli_epi32(r, 16), nan, _mm512_or_si512(high, quiet));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(r));
    }
    f32_to_bf16_scalar(src + i, n - i, dst + i);
}
#endif

static struct {
    bf16_to_f32_fn to_f32;
    f32_to_bf16_fn from_f32;
} bf16_path = {bf16_to_f32_scalar, f32_to_bf16_scalar};
static pthread_once_t bf16_path_once = PTHREAD_ONCE_INIT;

int ds__convert_isa_supported(int isa)
{
#ifdef DS_X86_BF16_PATHS
    __builtin_cpu_init();
    if (isa == DS__CONVERT_AVX512)
        return __builtin_cpu_supports("avx512f");
    if (isa == DS__CONVERT_AVX2)
        return __builtin_cpu_supports("avx2");
#endif
    return isa == DS__CONVERT_SCALAR;
}

static void set_path(int isa)
{
    bf16_path.to_f32 = bf16_to_f32_scalar;
    bf16_path.from_f32 = f32_to_bf16_scalar;
#ifdef DS_X86_BF16_PATHS
    if (isa == DS__CONVERT_AVX512) {
        bf16_path.to_f32 = bf16_to_f32_avx512;
        bf16_path.from_f32 = f32_to_bf16_avx512;
    } else if (isa == DS__CONVERT_AVX2) {
        bf16_path.to_f32 = bf16_to_f32_avx2;
        bf16_path.from_f32 = f32_to_bf16_avx2;
    }
#endif
}

static void choose_bf16_path(void)
{
    int isa = ds__convert_isa_supported(DS__CONVERT_AVX512) ? DS__CONVERT_AVX512
              : ds__convert_isa_supported(DS__CONVERT_AVX2) ? DS__CONVERT_AVX2
                                                : DS__CONVERT_SCALAR;
    set_path(isa);
}

int ds__convert_use_isa(int isa)
{
    pthread_once(&bf16_path_once, choose_bf16_path);
    if (!ds__convert_isa_supported(isa))
        return 0;
    set_path(isa);
    return 1;
}

void ds_convert_to_f32(const void *src, ds_dtype dtype, size_t n, float *dst)
{
    switch (dtype) {
    case DS_F32:
        memcpy(dst, src, n * sizeof *dst);
        return;
    case DS_F64:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)((const double *)src)[i];
        return;
    case DS_BF16:
        pthread_once(&bf16_path_once, choose_bf16_path);
        bf16_path.to_f32(src, n, dst);
        return;
    case DS_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = ds_f16_to_f32(((const uint16_t *)src)[i]);
        return;
    case DS_F8_E4M3: {
        const float *table = e4m3_table();
        for (size_t i = 0; i < n; i++)
            dst[i] = table[((const uint8_t *)src)[i]];
        return;
    }
    case DS_F8_E5M2:
        for (size_t i = 0; i < n; i++)
            dst[i] = ds_f8e5m2_to_f32(((const uint8_t *)src)[i]);
        return;
    default:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)ds_load_f64(src, dtype, i);
        return;
    }
}

void ds_convert_from_f32(const float *src, size_t n, ds_dtype dtype, void *dst)
{
    switch (dtype) {
    case DS_F32:
        memcpy(dst, src, n * sizeof *src);
        return;
    case DS_F64:
        for (size_t i = 0; i < n; i++)
            ((double *)dst)[i] = src[i];
        return;
    case DS_BF16:
        pthread_once(&bf16_path_once, choose_bf16_path);
        bf16_path.from_f32(src, n, dst);
        return;
    case DS_F16:
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = ds_f32_to_f16(src[i]);
        return;
    case DS_F8_E4M3:
        for (size_t i = 0; i < n; i++)
            ((uint8_t *)dst)[i] = f32_to_e4m3(src[i]);
        return;
    case DS_F8_E5M2:
        for (size_t i = 0; i < n; i++)
            ((uint8_t *)dst)[i] = ds_f32_to_f8e5m2(src[i]);
        return;
    default:
        for (size_t i = 0; i < n; i++)
            ds_store_f64(dst, dtype, i, src[i]);
        return;
    }
}

/* The e4m3 table again, as the bf16 bits of each value (exact). */
static uint16_t e4m3_bf16_values[256];
static pthread_once_t e4m3_bf16_once = PTHREAD_ONCE_INIT;

static void e4m3_bf16_fill(void)
{
    for (int v = 0; v < 256; v++)
        e4m3_bf16_values[v] = ds_f32_to_bf16(e4m3_to_f32((uint8_t)v));
}

#define CONVERT_CHUNK 4096 /* f32 elements on the stack per pass */

void ds_convert(const void *src, ds_dtype from, size_t n, ds_dtype to, void *dst)
{
    if (from == to) {
        memcpy(dst, src, n * ds_dtype_size(from));
        return;
    }
    if (from == DS_F32) {
        ds_convert_from_f32(src, n, to, dst);
        return;
    }
    if (to == DS_F32) {
        ds_convert_to_f32(src, from, n, dst);
        return;
    }
    if (from == DS_F8_E4M3 && to == DS_BF16) {
        pthread_once(&e4m3_bf16_once, e4m3_bf16_fill);
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = e4m3_bf16_values[((const uint8_t *)src)[i]];
        return;
    }
    float buf[CONVERT_CHUNK];
    size_t in_size = ds_dtype_size(from), out_size = ds_dtype_size(to);
    for (size_t i = 0; i < n; i += CONVERT_CHUNK) {
        size_t c = n - i < CONVERT_CHUNK ? n - i : CONVERT_CHUNK;
        ds_convert_to_f32((const char *)src + i * in_size, from, c, buf);
        ds_convert_from_f32(buf, c, to, (char *)dst + i * out_size);
    }
}

double ds_load_f64(const void *src, ds_dtype dtype, size_t i)
{
    switch (dtype) {
    case DS_F64: return ((const double *)src)[i];
    case DS_F32: return ((const float *)src)[i];
    case DS_BF16: return ds_bf16_to_f32(((const uint16_t *)src)[i]);
    case DS_F16: return ds_f16_to_f32(((const uint16_t *)src)[i]);
    case DS_F8_E4M3: return ds_f8e4m3_to_f32(((const uint8_t *)src)[i]);
    case DS_F8_E5M2: return ds_f8e5m2_to_f32(((const uint8_t *)src)[i]);
    case DS_I64: return (double)((const int64_t *)src)[i];
    case DS_I32: return ((const int32_t *)src)[i];
    case DS_I16: return ((const int16_t *)src)[i];
    case DS_I8: return ((const int8_t *)src)[i];
    case DS_U8:
    case DS_BOOL: return ((const uint8_t *)src)[i];
    default: return NAN;
    }
}

/* Double rounding (f64 -> f32 -> narrow) can differ from one rounding only when the f32 lies
 * exactly halfway between two narrow values; f64 -> f32 rounding to odd avoids that, so the
 * stored value is the correctly rounded one. */
static float f64_to_f32_round_odd(double v)
{
    float f = (float)v;
    if ((double)f != v && f == f && fabsf(f) != INFINITY) {
        uint32_t u = ds__f32_bits(f);
        if (!(u & 1u)) {
            /* Move to the odd neighbour on the side of v. */
            float toward = nextafterf(f, (double)f < v ? INFINITY : -INFINITY);
            if (ds__f32_bits(toward) & 1u)
                f = toward;
        }
    }
    return f;
}

void ds_store_f64(void *dst, ds_dtype dtype, size_t i, double value)
{
    switch (dtype) {
    case DS_F64: ((double *)dst)[i] = value; return;
    case DS_F32: ((float *)dst)[i] = (float)value; return;
    case DS_BF16: ((uint16_t *)dst)[i] = ds_f32_to_bf16(f64_to_f32_round_odd(value)); return;
    case DS_F16: ((uint16_t *)dst)[i] = ds_f32_to_f16(f64_to_f32_round_odd(value)); return;
    case DS_F8_E4M3: ((uint8_t *)dst)[i] = ds_f32_to_f8e4m3(f64_to_f32_round_odd(value)); return;
    case DS_F8_E5M2: ((uint8_t *)dst)[i] = ds_f32_to_f8e5m2(f64_to_f32_round_odd(value)); return;
    case DS_I64: ((int64_t *)dst)[i] = (int64_t)value; return;
    case DS_I32: ((int32_t *)dst)[i] = (int32_t)value; return;
    case DS_I16: ((int16_t *)dst)[i] = (int16_t)value; return;
    case DS_I8: ((int8_t *)dst)[i] = (int8_t)value; return;
    case DS_U8:
    case DS_BOOL: ((uint8_t *)dst)[i] = (uint8_t)value; return;
    default: return;
    }
}
