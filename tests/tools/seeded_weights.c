#include "tools/seeded_weights.h"

uint64_t ds_seeded_fnv1a64(const char *text)
{
    uint64_t h = 0xCBF29CE484222325ull;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        h ^= *p;
        h *= 0x100000001B3ull;
    }
    return h;
}

uint64_t ds_seeded_splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

void ds_seeded_fill(const char *name, uint64_t seed, double bound, float center, float *out,
                    size_t count)
{
    ds_seeded_fill_range(name, seed, bound, center, 0, out, count);
}

void ds_seeded_fill_range(const char *name, uint64_t seed, double bound, float center,
                          uint64_t first, float *out, size_t count)
{
    uint64_t base = ds_seeded_fnv1a64(name) ^ (seed * 0x9E3779B97F4A7C15ull);
    float b = (float)bound;
    for (size_t i = 0; i < count; i++) {
        float u = (float)(ds_seeded_splitmix64(base + first + i) >> 40) * (1.0f / 16777216.0f);
        /* Separate float32 roundings, in numpy's order: (2u - 1), times bound, plus center. */
        float v = 2.0f * u - 1.0f;
        v = v * b;
        out[i] = v + center;
    }
}
