/* PyTorch's CPU random generator and torch.randn, bit for bit (facts §5.2: upstream draws the
 * initial noise on a CPU torch.Generator(seed) directly in the compute dtype).
 *
 * The engine is PyTorch's mt19937 (aten/src/ATen/core/MT19937RNGEngine.h) seeded with the low 32
 * bits of the seed as torch.Generator().manual_seed(seed) does. torch.randn then takes one of two
 * paths (aten/src/ATen/native/cpu/DistributionTemplates.h, normal_kernel):
 *  - 16 elements or more: Box-Muller over blocks of 16 float32 uniforms (24-bit) in the float
 *    arithmetic of PyTorch's AVX2 kernel (its avx_mathfun log and sincos), a count that is not a
 *    multiple of 16 redrawing the last 16. PyTorch registers no AVX-512 variant of this kernel,
 *    so x86-64 machines with AVX2 run this one; torch itself draws different values where it
 *    runs its DEFAULT kernel (no AVX2, or ATEN_CPU_CAPABILITY=default);
 *  - fewer: a serial double-precision Box-Muller on 53-bit uniforms (the C library's log1p, sin
 *    and cos, which torch calls too) whose second value is cached in the generator and returned
 *    by the next serial draw, even one in a later call.
 * The result is rounded from float (or, on the serial path, from double through float) to the
 * requested dtype.
 */
#ifndef DS_CORE_TORCH_GENERATOR_H
#define DS_CORE_TORCH_GENERATOR_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/error.h"

#define DS_TORCH_MT_N 624

typedef struct ds_torch_generator {
    uint32_t state[DS_TORCH_MT_N]; /* mt19937 state words */
    int left;                      /* outputs left before the state is regenerated, + 1 */
    int next;                      /* index of the next state word to temper */
    int has_next_normal;           /* the serial path's cached second Box-Muller value is set */
    double next_normal;
} ds_torch_generator;

/* Seeds g as torch.Generator().manual_seed(seed) (which also drops a cached normal value). */
void ds_torch_generator_seed(ds_torch_generator *g, uint64_t seed);

/* The next 32-bit output of the engine (CPUGeneratorImpl::random). */
uint32_t ds_torch_generator_random(ds_torch_generator *g);

/* out[0..count) = torch.randn((count,), generator=g, dtype=dtype) on the CPU, bit for bit,
 * advancing g as torch does. torch.randn(shape) of a contiguous shape equals the flat draw.
 * dtype DS_F32, DS_BF16 or DS_F16; INVALID_ARGUMENT otherwise, or for a NULL g/out with a
 * nonzero count. count 0 draws nothing. */
int ds_torch_randn(ds_torch_generator *g, ds_dtype dtype, void *out, size_t count, ds_error *err);

#endif
