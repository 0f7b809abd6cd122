/* core/float_convert's bulk bf16 <-> f32 conversions on every instruction-set path this
 * processor has (scalar, AVX2, AVX-512), bit for bit: f32 -> bf16 against an independent
 * round-to-nearest-even in double arithmetic (NaN: quiet, sign kept), bf16 -> f32 against the
 * exact widening, over every bf16 value and every upper half of an f32 with low halves that
 * probe ties, just-above and just-below ties, NaN payloads and overflow. Lengths and offsets
 * leave vector tails, so the scalar tail of each path runs too. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "test.h"

static const uint16_t lows[] = {0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x1234, 0xC000};
#define NLOWS (sizeof lows / sizeof lows[0])
#define COUNT (65536 * NLOWS)

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* bf16 bits of f by round to nearest even, from the two neighbouring bf16 values' distances in
 * double (exact for these operands); NaN stays NaN with its sign, made quiet. */
static uint16_t reference_bf16(uint32_t u)
{
    if ((u & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((u >> 16) | 0x0040u);
    uint32_t down = u & 0xFFFF0000u;
    if (down == u)
        return (uint16_t)(u >> 16);
    uint32_t up = down + 0x10000u; /* the next bf16 away from zero; past the largest: inf */
    double x = fabs((double)bits_f32(u)), d = fabs((double)bits_f32(down));
    double gap_down = x - d;
    double gap_up = (up & 0x7FFFFFFFu) == 0x7F800000u
                        ? ldexp(1.0, 128) - x /* the rounding boundary of the largest value */
                        : fabs((double)bits_f32(up)) - x;
    if (gap_down < gap_up || (gap_down == gap_up && ((down >> 16) & 1u) == 0))
        return (uint16_t)(down >> 16);
    return (uint16_t)(up >> 16);
}

static void check_path(int isa, const char *name)
{
    if (!ds__convert_use_isa(isa)) {
        printf("  %s: not on this processor, skipped\n", name);
        return;
    }
    printf("  %s\n", name);
    uint32_t *in = malloc(COUNT * sizeof *in);
    uint16_t *out16 = malloc((COUNT + 1) * sizeof *out16);
    float *out32 = malloc(65536 * sizeof *out32);
    uint16_t *all16 = malloc(65536 * sizeof *all16);
    REQUIRE(in && out16 && out32 && all16);
    for (uint32_t hi = 0; hi < 65536; hi++) {
        all16[hi] = (uint16_t)hi;
        for (size_t l = 0; l < NLOWS; l++)
            in[hi * NLOWS + l] = hi << 16 | lows[l];
    }
    /* Whole buffer, then an odd length from an odd start: a tail and misaligned vectors. */
    for (int pass = 0; pass < 2; pass++) {
        size_t start = pass ? 3 : 0, n = pass ? COUNT - 16 : COUNT;
        memset(out16, 0xAB, (COUNT + 1) * sizeof *out16);
        ds_convert_from_f32((const float *)in + start, n, DS_BF16, out16);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            uint16_t want = reference_bf16(in[start + i]);
            if (out16[i] != want && bad++ < 5)
                fprintf(stderr, "%s: f32 0x%08x -> bf16 0x%04x, want 0x%04x\n", name,
                        in[start + i], out16[i], want);
        }
        CHECK_MSG(bad == 0, "%s: %zu of %zu f32 -> bf16 wrong", name, bad, n);
        CHECK(out16[n] == 0xABAB); /* nothing written past n */
    }
    for (int pass = 0; pass < 2; pass++) {
        size_t start = pass ? 5 : 0, n = pass ? 65536 - 13 : 65536;
        ds_convert_to_f32(all16 + start, DS_BF16, n, out32);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t got;
            memcpy(&got, &out32[i], sizeof got);
            if (got != (uint32_t)all16[start + i] << 16)
                bad++;
        }
        CHECK_MSG(bad == 0, "%s: %zu of %zu bf16 -> f32 wrong", name, bad, n);
    }
    free(in);
    free(out16);
    free(out32);
    free(all16);
}

static void test_bf16_paths(void)
{
    check_path(DS__CONVERT_SCALAR, "scalar");
    check_path(DS__CONVERT_AVX2, "avx2");
    check_path(DS__CONVERT_AVX512, "avx512");
}

int main(void)
{
    RUN(test_bf16_paths);
    return test_summary();
}
