/* core/torch_generator.c against torch itself (tests/golden/make_noise_golden.py): torch.randn
 * on a seeded CPU generator, bit for bit, in f32, bf16 and f16, on both of torch's paths (blocks
 * of 16 with a redrawn tail; the serial path with its cached value), and draws in sequence. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/safetensors.h"
#include "core/torch_generator.h"
#include "test.h"

static ds_safetensors *golden;

static const ds_tensor_view *golden_view(const char *name)
{
    const ds_sd_entry *e = ds_state_dict_find(&golden->tensors, name);
    if (!e)
        fprintf(stderr, "golden tensor %s is missing\n", name);
    return e ? &e->tensor : NULL;
}

static const char *dtype_key(ds_dtype dtype)
{
    return dtype == DS_F32 ? "f32" : dtype == DS_BF16 ? "bf16" : "f16";
}

/* Draws count values from g and compares their bytes with the golden tensor; reports the first
 * differing element. */
static int draw_matches(ds_torch_generator *g, ds_dtype dtype, const char *name)
{
    const ds_tensor_view *v = golden_view(name);
    if (!v || v->dtype != dtype)
        return 0;
    size_t count = (size_t)(v->nbytes / ds_dtype_size(dtype));
    size_t es = ds_dtype_size(dtype);
    unsigned char *mine = malloc(v->nbytes ? v->nbytes : 1);
    ds_error err;
    int ok = mine && ds_torch_randn(g, dtype, mine, count, &err) == DS_OK;
    for (size_t i = 0; ok && i < count; i++) {
        if (memcmp(mine + i * es, (const unsigned char *)v->data + i * es, es) != 0) {
            fprintf(stderr, "%s: element %zu of %zu differs\n", name, i, count);
            ok = 0;
        }
    }
    free(mine);
    return ok;
}

static const uint64_t seeds[] = {0, 1, 42, UINT64_MAX};
static const char *const shapes[] = {"1x16x8x8", "1x16x3x5", "1x16x1x1", "3", "15", "17", "33"};

static void test_fresh_draws(void)
{
    const ds_dtype dtypes[] = {DS_F32, DS_BF16, DS_F16};
    for (size_t d = 0; d < 3; d++) {
        for (size_t s = 0; s < sizeof seeds / sizeof seeds[0]; s++) {
            for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
                char name[128];
                snprintf(name, sizeof name, "noise.%s.s%llu.%s", dtype_key(dtypes[d]),
                         (unsigned long long)seeds[s], shapes[k]);
                ds_torch_generator g;
                ds_torch_generator_seed(&g, seeds[s]);
                CHECK_MSG(draw_matches(&g, dtypes[d], name), "%s", name);
            }
        }
    }
}

static uint64_t fnv1a64(const unsigned char *p, size_t n)
{
    uint64_t h = UINT64_C(0xCBF29CE484222325);
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * UINT64_C(0x100000001B3);
    return h;
}

/* The 1024x1024 image's latent noise, [1, 16, 128, 128]: ends and a hash of every byte. */
static void test_latent_noise_1024(void)
{
    const ds_dtype dtypes[] = {DS_F32, DS_BF16};
    const size_t count = 16 * 128 * 128;
    for (size_t d = 0; d < 2; d++) {
        size_t es = ds_dtype_size(dtypes[d]);
        unsigned char *mine = malloc(count * es);
        REQUIRE(mine);
        for (size_t s = 0; s < sizeof seeds / sizeof seeds[0]; s++) {
            char name[128];
            ds_torch_generator g;
            ds_error err;
            ds_torch_generator_seed(&g, seeds[s]);
            CHECK(ds_torch_randn(&g, dtypes[d], mine, count, &err) == DS_OK);
            const char *key = dtype_key(dtypes[d]);
            snprintf(name, sizeof name, "big.%s.s%llu.head", key, (unsigned long long)seeds[s]);
            const ds_tensor_view *head = golden_view(name);
            snprintf(name, sizeof name, "big.%s.s%llu.tail", key, (unsigned long long)seeds[s]);
            const ds_tensor_view *tail = golden_view(name);
            snprintf(name, sizeof name, "big.%s.s%llu.fnv", key, (unsigned long long)seeds[s]);
            const ds_tensor_view *fnv = golden_view(name);
            if (!head || !tail || !fnv || fnv->nbytes != 8) {
                CHECK(0);
                continue;
            }
            CHECK_MSG(memcmp(mine, head->data, 4096 * es) == 0, "%s head", name);
            CHECK_MSG(memcmp(mine + (count - 4096) * es, tail->data, 4096 * es) == 0, "%s tail",
                      name);
            uint64_t want = 0;
            for (int i = 7; i >= 0; i--)
                want = (want << 8) | ((const unsigned char *)fnv->data)[i];
            CHECK_MSG(fnv1a64(mine, count * es) == want, "%s hash", name);
        }
        free(mine);
    }
    ds_torch_generator g;
    ds_torch_generator_seed(&g, 0);
    CHECK(draw_matches(&g, DS_BF16, "noise.bf16.s0.1x16x128x128"));
}

/* One generator, several draws: the serial path's cached value outlives block draws between. */
static void test_draws_in_sequence(void)
{
    const ds_dtype dtypes[] = {DS_F32, DS_BF16, DS_F16};
    for (size_t d = 0; d < 3; d++) {
        ds_torch_generator g;
        ds_torch_generator_seed(&g, 7);
        for (int i = 0; i < 7; i++) {
            char name[64];
            snprintf(name, sizeof name, "seq.%s.%d", dtype_key(dtypes[d]), i);
            CHECK_MSG(draw_matches(&g, dtypes[d], name), "%s", name);
        }
    }
}

/* The C++ standard fixes std::mt19937's 10000th output for the default seed 5489; PyTorch's
 * engine is the same generator. */
static void test_engine_is_mt19937(void)
{
    ds_torch_generator g;
    ds_torch_generator_seed(&g, 5489);
    uint32_t v = 0;
    for (int i = 0; i < 10000; i++)
        v = ds_torch_generator_random(&g);
    CHECK(v == 4123659995u);
    /* Only the low 32 bits of the seed matter, as in torch. */
    ds_torch_generator a, b;
    ds_torch_generator_seed(&a, UINT64_C(0x100000005));
    ds_torch_generator_seed(&b, 5);
    for (int i = 0; i < 700; i++)
        CHECK(ds_torch_generator_random(&a) == ds_torch_generator_random(&b));
}

/* Reseeding drops the cached serial value, as manual_seed does. */
static void test_reseed_resets(void)
{
    ds_torch_generator g;
    float first[3], again[3];
    ds_error err;
    ds_torch_generator_seed(&g, 42);
    CHECK(ds_torch_randn(&g, DS_F32, first, 3, &err) == DS_OK);
    CHECK(g.has_next_normal);
    ds_torch_generator_seed(&g, 42);
    CHECK(!g.has_next_normal);
    CHECK(ds_torch_randn(&g, DS_F32, again, 3, &err) == DS_OK);
    CHECK(memcmp(first, again, sizeof first) == 0);
}

static void test_bad_arguments(void)
{
    ds_torch_generator g;
    ds_error err;
    float out[4];
    ds_torch_generator_seed(&g, 1);
    CHECK(ds_torch_randn(&g, DS_F64, out, 4, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "dtype f64 is not supported (expected f32, bf16 or f16)");
    CHECK(ds_torch_randn(&g, DS_I32, out, 4, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "dtype i32");
    CHECK(ds_torch_randn(&g, DS_F32, NULL, 4, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "out is NULL for 4 elements");
    CHECK(ds_torch_randn(NULL, DS_F32, out, 4, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "generator is NULL");
    /* Nothing drawn for count 0: the generator has not moved. */
    ds_torch_generator fresh;
    ds_torch_generator_seed(&fresh, 1);
    CHECK(ds_torch_randn(&g, DS_F32, NULL, 0, &err) == DS_OK);
    CHECK(ds_torch_generator_random(&g) == ds_torch_generator_random(&fresh));
}

int main(void)
{
    ds_error err;
    const char *root = getenv("DS_TEST_DATA");
    char path[1024];
    snprintf(path, sizeof path, "%s/golden/torch_noise.safetensors", root ? root : "tests/data");
    if (ds_safetensors_open(path, 0, &golden, &err) != DS_OK) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    RUN(test_fresh_draws);
    RUN(test_latent_noise_1024);
    RUN(test_draws_in_sequence);
    RUN(test_engine_is_mt19937);
    RUN(test_reseed_resets);
    RUN(test_bad_arguments);
    ds_safetensors_close(golden);
    return test_summary();
}
