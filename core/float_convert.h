/* Conversions between f32 and the storage dtypes (bf16, f16, f8 e4m3fn, f8 e5m2), round to
 * nearest even, with PyTorch's overflow behaviour (see ds_cast_args in kernels/backend.h):
 * bf16/f16/e5m2 overflow to ±inf, e4m3fn saturates to ±448, NaN stays NaN.
 * Scalar functions are inline for the CPU kernels' inner loops; the bulk ones convert rows. */
#ifndef DS_CORE_FLOAT_CONVERT_H
#define DS_CORE_FLOAT_CONVERT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/dtype.h"

static inline uint32_t ds__f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float ds__bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float ds_bf16_to_f32(uint16_t h) { return ds__bits_f32((uint32_t)h << 16); }

static inline uint16_t ds_f32_to_bf16(float f)
{
    uint32_t u = ds__f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u)       /* NaN: keep it quiet and signed */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7FFFu + ((u >> 16) & 1u);          /* round to nearest even; overflow carries to inf */
    return (uint16_t)(u >> 16);
}

float ds_f16_to_f32(uint16_t h);
uint16_t ds_f32_to_f16(float f);
float ds_f8e4m3_to_f32(uint8_t v);
uint8_t ds_f32_to_f8e4m3(float f);
float ds_f8e5m2_to_f32(uint8_t v);
uint8_t ds_f32_to_f8e5m2(float f);

/* dst[i] = src[i] as f32 for n elements of `dtype` (f32, f64, bf16, f16, f8_e4m3, f8_e5m2). */
void ds_convert_to_f32(const void *src, ds_dtype dtype, size_t n, float *dst);
/* dst[i] = src[i] stored as `dtype` (same list). */
void ds_convert_from_f32(const float *src, size_t n, ds_dtype dtype, void *dst);
/* dst[i] = src[i] converted from `from` to `to` (same list), as ds_convert_to_f32 then
 * ds_convert_from_f32 would, through an f32 buffer of its own; e4m3 -> bf16 (exact: every e4m3
 * value is a bf16 value) by table in one pass, the hot case of fp8 weights paged into a bf16
 * fast tier. */
void ds_convert(const void *src, ds_dtype from, size_t n, ds_dtype to, void *dst);
/* The bulk bf16 conversions above run at the widest vector width the processor has, chosen at
 * the first call. For tests: makes them use `isa` (DS__CONVERT_*) from now on, if this processor
 * has it; returns whether it does. Every path gives the scalar functions' bits. */
enum { DS__CONVERT_SCALAR, DS__CONVERT_AVX2, DS__CONVERT_AVX512 };
int ds__convert_use_isa(int isa);
/* Whether this processor runs `isa` (DS__CONVERT_*); the scalar path always. */
int ds__convert_isa_supported(int isa);

/* Element i of a buffer of `dtype` as f64 / stored from f64 (tests and references; f64 input is
 * rounded once, straight to the target, not through f32). */
double ds_load_f64(const void *src, ds_dtype dtype, size_t i);
void ds_store_f64(void *dst, ds_dtype dtype, size_t i, double value);

#endif
