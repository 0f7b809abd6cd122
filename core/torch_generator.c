#include "core/torch_generator.h"

#include <math.h>
#include <string.h>

#include "core/float_convert.h"

/* The float arithmetic below reproduces PyTorch's AVX2 normal kernel lane by lane, including
 * where GCC contracted its multiply-add pairs into FMA instructions (PyTorch builds the AVX2
 * kernels with -mfma and GNU C++'s default -ffp-contract=fast); those steps call fmaf here, every
 * other step is one rounded float operation. This file relies on the build's ISO C mode, in
 * which GCC contracts nothing on its own. */

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UMASK 0x80000000u
#define MT_LMASK 0x7fffffffu

void ds_torch_generator_seed(ds_torch_generator *g, uint64_t seed)
{
    g->state[0] = (uint32_t)(seed & 0xffffffffu);
    for (int j = 1; j < DS_TORCH_MT_N; j++)
        g->state[j] = 1812433253u * (g->state[j - 1] ^ (g->state[j - 1] >> 30)) + (uint32_t)j;
    g->left = 1;
    g->next = 0;
    g->has_next_normal = 0;
    g->next_normal = 0.0;
}

static uint32_t twist(uint32_t u, uint32_t v)
{
    return (((u & MT_UMASK) | (v & MT_LMASK)) >> 1) ^ ((v & 1u) ? MT_MATRIX_A : 0u);
}

static void next_state(ds_torch_generator *g)
{
    uint32_t *s = g->state;
    int k = 0;
    for (; k < DS_TORCH_MT_N - MT_M; k++)
        s[k] = s[k + MT_M] ^ twist(s[k], s[k + 1]);
    for (; k < DS_TORCH_MT_N - 1; k++)
        s[k] = s[k + MT_M - DS_TORCH_MT_N] ^ twist(s[k], s[k + 1]);
    /* The last word wraps around to the first, already regenerated one. */
    s[k] = s[k + MT_M - DS_TORCH_MT_N] ^ twist(s[k], s[0]);
    g->left = DS_TORCH_MT_N;
    g->next = 0;
}

uint32_t ds_torch_generator_random(ds_torch_generator *g)
{
    if (--g->left == 0)
        next_state(g);
    uint32_t y = g->state[g->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* at::uniform_real_distribution<float>(0, 1): 24 random bits scaled to [0, 1), exact. */
static float uniform_f32(ds_torch_generator *g)
{
    return (float)(ds_torch_generator_random(g) & 0xffffffu) * (1.0f / 16777216.0f);
}

/* at::uniform_real_distribution<double>(0, 1): 53 bits of random64() (first output high). */
static double uniform_f64(ds_torch_generator *g)
{
    uint64_t hi = ds_torch_generator_random(g);
    uint64_t lo = ds_torch_generator_random(g);
    uint64_t bits = ((hi << 32) | lo) & ((UINT64_C(1) << 53) - 1);
    return (double)bits * (1.0 / 9007199254740992.0);
}

/* avx_mathfun.h's log256_ps (cephes logf) for one lane; u is in (0, 1], never denormal. */
static float avx_log(float u)
{
    uint32_t bits = ds__f32_bits(u);
    float e = (float)((int32_t)(bits >> 23) - 0x7f) + 1.0f;
    float x = ds__bits_f32((bits & ~0x7f800000u) | ds__f32_bits(0.5f));
    int below = x < 0.707106781186547524f;
    float tmp = below ? x : 0.0f;
    x = x - 1.0f;
    e = e - (below ? 1.0f : 0.0f);
    x = x + tmp;
    float z = x * x;
    float y = fmaf(7.0376836292E-2f, x, -1.1514610310E-1f);
    y = fmaf(y, x, 1.1676998740E-1f);
    y = fmaf(y, x, -1.2420140846E-1f);
    y = fmaf(y, x, 1.4249322787E-1f);
    y = fmaf(y, x, -1.6668057665E-1f);
    y = fmaf(y, x, 2.0000714765E-1f);
    y = fmaf(y, x, -2.4999993993E-1f);
    y = fmaf(y, x, 3.3333331174E-1f);
    y = y * x;
    y = fmaf(y, z, e * -2.12194440e-4f);
    y = fmaf(-z, 0.5f, y);
    x = x + y;
    return fmaf(e, 0.693359375f, x);
}

/* avx_mathfun.h's sincos256_ps (cephes sinf/cosf) for one lane. */
static void avx_sincos(float theta, float *s, float *c)
{
    uint32_t sign_sin = ds__f32_bits(theta) & 0x80000000u;
    float x = fabsf(theta);
    int32_t j = (int32_t)(x * 1.27323954473516f);
    j = (j + 1) & ~1;
    float y = (float)j;
    sign_sin ^= (uint32_t)(j & 4) << 29;
    int sin_poly = (j & 2) == 0; /* the sine polynomial serves the sine, else the cosine's */
    uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    float z = x * x;
    float yc = fmaf(2.443315711809948E-005f, z, -1.388731625493765E-003f);
    yc = fmaf(yc, z, 4.166664568298827E-002f);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;
    float ys = fmaf(-1.9515295891E-4f, z, 8.3321608736E-3f);
    ys = fmaf(ys, z, -1.6666654611E-1f);
    ys = ys * z;
    ys = fmaf(ys, x, x);
    /* The kernel selects with masks and adds the zeroed lane back, which can change a zero's
     * sign; the same additions keep that. */
    float sin2 = sin_poly ? ys : 0.0f;
    float sin1 = sin_poly ? 0.0f : yc;
    float sin_v = sin1 + sin2;
    float cos_v = (yc - sin1) + (ys - sin2);
    *s = ds__bits_f32(ds__f32_bits(sin_v) ^ sign_sin);
    *c = ds__bits_f32(ds__f32_bits(cos_v) ^ sign_cos);
}

/* NormalFill16<float>: 8 Box-Muller pairs from 16 uniforms, in place, mean 0 and std 1. */
static void normal_fill_16(float *v)
{
    for (int j = 0; j < 8; j++) {
        float radius = sqrtf(-2.0f * avx_log(1.0f - v[j]));
        float theta = 6.28318530717958647692f * v[j + 8];
        float sin_t, cos_t;
        avx_sincos(theta, &sin_t, &cos_t);
        /* fmadd(n, std 1, mean 0) is n, except that -0 becomes +0, as n + 0 does. */
        v[j] = radius * cos_t + 0.0f;
        v[j + 8] = radius * sin_t + 0.0f;
    }
}

static void store(void *out, ds_dtype dtype, size_t i, float v)
{
    switch (dtype) {
    case DS_F32:
        ((float *)out)[i] = v;
        break;
    case DS_BF16:
        ((uint16_t *)out)[i] = ds_f32_to_bf16(v);
        break;
    default:
        ((uint16_t *)out)[i] = ds_f32_to_f16(v);
        break;
    }
}

/* at::normal_distribution<double>(0, 1) with the generator's cache of the second value. */
static double serial_normal(ds_torch_generator *g)
{
    if (g->has_next_normal) {
        g->has_next_normal = 0;
        return g->next_normal + 0.0;
    }
    double u1 = uniform_f64(g);
    double u2 = uniform_f64(g);
    double r = sqrt(-2.0 * log1p(-u2));
    double theta = 2.0 * 3.14159265358979323846 * u1;
    g->next_normal = r * sin(theta);
    g->has_next_normal = 1;
    return r * cos(theta) + 0.0;
}

int ds_torch_randn(ds_torch_generator *g, ds_dtype dtype, void *out, size_t count, ds_error *err)
{
    if (dtype != DS_F32 && dtype != DS_BF16 && dtype != DS_F16)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "torch randn: dtype %s is not supported (expected f32, bf16 or f16)",
                            ds_dtype_name(dtype));
    if (count == 0)
        return DS_OK;
    if (!g || !out)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "torch randn: %s is NULL for %zu elements", g ? "out" : "generator",
                            count);
    if (count < 16) {
        /* static_cast<scalar_t>(double): through float, then to the 16-bit type. */
        for (size_t i = 0; i < count; i++)
            store(out, dtype, i, (float)serial_normal(g));
        return DS_OK;
    }
    float block[16];
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        for (int j = 0; j < 16; j++)
            block[j] = uniform_f32(g);
        normal_fill_16(block);
        for (int j = 0; j < 16; j++)
            store(out, dtype, i + (size_t)j, block[j]);
    }
    if (i < count) {
        /* Torch redraws the last 16 elements, overwriting the tail of the last full block. For
         * float32 it has first drawn uniforms for every element in place, so the partial tail's
         * draws are spent before the redraw; the 16-bit types draw by whole blocks only. */
        if (dtype == DS_F32)
            for (; i < count; i++)
                (void)uniform_f32(g);
        for (int j = 0; j < 16; j++)
            block[j] = uniform_f32(g);
        normal_fill_16(block);
        for (int j = 0; j < 16; j++)
            store(out, dtype, count - 16 + (size_t)j, block[j]);
    }
    return DS_OK;
}
