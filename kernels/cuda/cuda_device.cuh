/* Device-side helpers shared by the CUDA kernels: loads and stores of every storage dtype as
 * f32 (the dtype is a kernel argument, uniform across the grid, so the switch costs a few
 * instructions and saves an instantiation per dtype combination), 8-element vector forms of
 * them (16-byte accesses for 2-byte dtypes), and warp reductions.
 *
 * Stores round to nearest even with PyTorch's overflow rules (kernels/backend.h, ds_cast_args):
 * bf16, f16 and e5m2 overflow to ±inf, e4m3 saturates to ±448 (infinities included), NaN stays
 * NaN. f64 loads narrow to f32 first, as PyTorch's casts from f64 to 16-bit types do. */
#ifndef DS_KERNELS_CUDA_DEVICE_CUH
#define DS_KERNELS_CUDA_DEVICE_CUH

#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

extern "C" {
#include "kernels/backend.h"
}

namespace dsk {

__device__ __forceinline__ float f8_to_f32(uint8_t v, __nv_fp8_interpretation_t kind)
{
    return __half2float(__half(__nv_cvt_fp8_to_halfraw(v, kind)));
}

__device__ __forceinline__ uint8_t f32_to_e4m3(float v)
{
    return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ uint8_t f32_to_e5m2(float v)
{
    return __nv_cvt_float_to_fp8(v, __NV_NOSAT, __NV_E5M2);
}

__device__ __forceinline__ float load(const void *p, int dt, int64_t i)
{
    switch (dt) {
    case DS_F32: return static_cast<const float *>(p)[i];
    case DS_BF16: return __bfloat162float(static_cast<const __nv_bfloat16 *>(p)[i]);
    case DS_F16: return __half2float(static_cast<const __half *>(p)[i]);
    case DS_F8_E4M3: return f8_to_f32(static_cast<const uint8_t *>(p)[i], __NV_E4M3);
    case DS_F8_E5M2: return f8_to_f32(static_cast<const uint8_t *>(p)[i], __NV_E5M2);
    case DS_F64: return (float)static_cast<const double *>(p)[i];
    default: return 0.0f;
    }
}

__device__ __forceinline__ void store(void *p, int dt, int64_t i, float v)
{
    switch (dt) {
    case DS_F32: static_cast<float *>(p)[i] = v; break;
    case DS_BF16: static_cast<__nv_bfloat16 *>(p)[i] = __float2bfloat16_rn(v); break;
    case DS_F16: static_cast<__half *>(p)[i] = __float2half_rn(v); break;
    case DS_F8_E4M3: static_cast<uint8_t *>(p)[i] = f32_to_e4m3(v); break;
    case DS_F8_E5M2: static_cast<uint8_t *>(p)[i] = f32_to_e5m2(v); break;
    case DS_F64: static_cast<double *>(p)[i] = (double)v; break;
    default: break;
    }
}

/* Elements i..i+7; i is a multiple of 8 and the base pointer is aligned to
 * min(16, 8 * element size) (the host checks, see vec_ok). */
__device__ __forceinline__ void load8(const void *p, int dt, int64_t i, float v[8])
{
    switch (dt) {
    case DS_F32: {
        const float4 *q = reinterpret_cast<const float4 *>(static_cast<const float *>(p) + i);
        float4 a = q[0], b = q[1];
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
        v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
        break;
    }
    case DS_BF16: {
        uint4 u = *reinterpret_cast<const uint4 *>(static_cast<const __nv_bfloat16 *>(p) + i);
        const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float2 f = __bfloat1622float2(h[j]);
            v[2 * j] = f.x;
            v[2 * j + 1] = f.y;
        }
        break;
    }
    case DS_F16: {
        uint4 u = *reinterpret_cast<const uint4 *>(static_cast<const __half *>(p) + i);
        const __half2 *h = reinterpret_cast<const __half2 *>(&u);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float2 f = __half22float2(h[j]);
            v[2 * j] = f.x;
            v[2 * j + 1] = f.y;
        }
        break;
    }
    case DS_F8_E4M3:
    case DS_F8_E5M2: {
        uint2 u = *reinterpret_cast<const uint2 *>(static_cast<const uint8_t *>(p) + i);
        __nv_fp8_interpretation_t kind = dt == DS_F8_E4M3 ? __NV_E4M3 : __NV_E5M2;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[j] = f8_to_f32((uint8_t)(u.x >> (8 * j)), kind);
            v[4 + j] = f8_to_f32((uint8_t)(u.y >> (8 * j)), kind);
        }
        break;
    }
    case DS_F64: {
        const double2 *q = reinterpret_cast<const double2 *>(static_cast<const double *>(p) + i);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            double2 d = q[j];
            v[2 * j] = (float)d.x;
            v[2 * j + 1] = (float)d.y;
        }
        break;
    }
    default:
#pragma unroll
        for (int j = 0; j < 8; j++)
            v[j] = 0.0f;
        break;
    }
}

__device__ __forceinline__ void store8(void *p, int dt, int64_t i, const float v[8])
{
    switch (dt) {
    case DS_F32: {
        float4 *q = reinterpret_cast<float4 *>(static_cast<float *>(p) + i);
        q[0] = make_float4(v[0], v[1], v[2], v[3]);
        q[1] = make_float4(v[4], v[5], v[6], v[7]);
        break;
    }
    case DS_BF16: {
        uint4 u;
        __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
        for (int j = 0; j < 4; j++)
            h[j] = __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
        *reinterpret_cast<uint4 *>(static_cast<__nv_bfloat16 *>(p) + i) = u;
        break;
    }
    case DS_F16: {
        uint4 u;
        __half2 *h = reinterpret_cast<__half2 *>(&u);
#pragma unroll
        for (int j = 0; j < 4; j++)
            h[j] = __floats2half2_rn(v[2 * j], v[2 * j + 1]);
        *reinterpret_cast<uint4 *>(static_cast<__half *>(p) + i) = u;
        break;
    }
    case DS_F8_E4M3:
    case DS_F8_E5M2: {
        uint2 u = make_uint2(0, 0);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint32_t lo = dt == DS_F8_E4M3 ? f32_to_e4m3(v[j]) : f32_to_e5m2(v[j]);
            uint32_t hi = dt == DS_F8_E4M3 ? f32_to_e4m3(v[4 + j]) : f32_to_e5m2(v[4 + j]);
            u.x |= lo << (8 * j);
            u.y |= hi << (8 * j);
        }
        *reinterpret_cast<uint2 *>(static_cast<uint8_t *>(p) + i) = u;
        break;
    }
    case DS_F64: {
        double2 *q = reinterpret_cast<double2 *>(static_cast<double *>(p) + i);
#pragma unroll
        for (int j = 0; j < 4; j++)
            q[j] = make_double2((double)v[2 * j], (double)v[2 * j + 1]);
        break;
    }
    default: break;
    }
}

/* V = 8: the vector forms; V = 1: one element. */
template <int V>
__device__ __forceinline__ void loadv(const void *p, int dt, int64_t i, float v[V])
{
    if constexpr (V == 8)
        load8(p, dt, i, v);
    else
        v[0] = load(p, dt, i);
}

template <int V>
__device__ __forceinline__ void storev(void *p, int dt, int64_t i, const float v[V])
{
    if constexpr (V == 8)
        store8(p, dt, i, v);
    else
        store(p, dt, i, v[0]);
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* The activations of kernels/backend.h in f32. */
__device__ __forceinline__ float activate(float x, int act)
{
    switch (act) {
    case DS_ACT_SILU: return x / (1.0f + expf(-x));
    case DS_ACT_GELU_ERF: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case DS_ACT_GELU_TANH:
        return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    case DS_ACT_GELU_SIGMOID: return x / (1.0f + expf(-1.702f * x));
    default: return x;
    }
}

} // namespace dsk

#endif
