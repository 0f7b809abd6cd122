/* What the CUDA backend runs on the GPU, checked without a GPU (kernels/cuda/cuda_supports.c is
 * host logic built into every build): convolution compute dtypes, attention's two GPU forms and
 * their scratch bound, and every op the Qwen-Image pipeline's models call at 1328 x 1328, at
 * their real sizes, against `supports`. An op that fails here would run on the CPU fallback on
 * a GPU machine. Tensors carry shapes, dtypes and a data address (never dereferenced). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/cuda/cuda_supports.h"
#include "test.h"

/* Any 256-byte-aligned address, as the backend's allocations are; +2 makes a misaligned one. */
#define ADDR ((void *)(uintptr_t)0x10000)

static ds_tensor desc(ds_dtype dtype, int ndim, const int64_t *shape)
{
    ds_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dtype;
    t.ndim = ndim;
    memcpy(t.shape, shape, (size_t)ndim * sizeof *shape);
    t.data = ADDR;
    return t;
}

#define T4(dt, a, b, c, d) desc(dt, 4, (const int64_t[]){a, b, c, d})
#define T5(dt, a, b, c, d, e) desc(dt, 5, (const int64_t[]){a, b, c, d, e})
#define T2(dt, a, b) desc(dt, 2, (const int64_t[]){a, b})
#define T1(dt, a) desc(dt, 1, (const int64_t[]){a})

static uint64_t rng = 0x243F6A8885A308D3ull;
static double uniform(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng >> 11) * 0x1p-53 * 2.0 - 1.0;
}

static double round_to(ds_dtype dt, double v)
{
    unsigned char buf[8];
    ds_store_f64(buf, dt, 0, v);
    return ds_load_f64(buf, dt, 0);
}

/* The gpu suite's mixed-dtype convolution (f16 input, bf16 weight, f32 output) as the CUDA
 * backend computes it: every operand rounded to the compute dtype cuda_supports.c picks, the
 * products summed exactly. Against the op's definition (the stored operands, exactly) it must
 * stay within the f32 budget; rounding the input to the weight's bf16, as before, misses it
 * by about 100x. */
static void test_conv_mixed_dtypes_compute_in_f32(void)
{
    enum { OUT = 64, K = 36 };
    ds_tensor x = T4(DS_F16, 1, 4, 7, 9), w = T4(DS_BF16, 5, 4, 3, 3), y = T4(DS_F32, 1, 5, 7, 9);
    ds_dtype cd = ds__cuda_conv_compute_dtype(&x, NULL, &w);
    CHECK_MSG(cd == DS_F32, "compute dtype %s for f16 x, bf16 weight", ds_dtype_name(cd));
    ds_conv2d_args a = {&x, &w, NULL, {1, 1, 1, 1}, {1, 1}, &y};
    CHECK(ds__cuda_supports(DS_OP_CONV2D, &a));

    double num = 0, den = 0;
    for (int o = 0; o < OUT; o++) {
        double ref = 0, got = 0;
        for (int k = 0; k < K; k++) {
            double xv = round_to(DS_F16, uniform()), wv = round_to(DS_BF16, uniform() / 6.0);
            ref += xv * wv;
            got += round_to(cd, xv) * round_to(cd, wv);
        }
        got = round_to(DS_F32, got);
        num += (got - ref) * (got - ref);
        den += ref * ref;
    }
    double rel = sqrt(num / den);
    CHECK_MSG(rel <= 1e-5, "relative L2 error %.3g over the f32 budget 1e-5", rel);
}

static void test_conv_dtype_rules(void)
{
    /* Same dtypes: the weight's. */
    ds_tensor xb = T4(DS_BF16, 1, 8, 16, 16), wb = T4(DS_BF16, 8, 8, 3, 3);
    CHECK(ds__cuda_conv_compute_dtype(&xb, NULL, &wb) == DS_BF16);
    /* bf16 x with an f32 weight: f32 compute, which cuBLASLt writes only as f32. */
    ds_tensor wf = T4(DS_F32, 8, 8, 3, 3), yf = T4(DS_F32, 1, 8, 16, 16),
              yh = T4(DS_F16, 1, 8, 16, 16), yb = T4(DS_BF16, 1, 8, 16, 16);
    ds_conv2d_args f32_out = {&xb, &wf, NULL, {1, 1, 1, 1}, {1, 1}, &yf};
    ds_conv2d_args f16_out = {&xb, &wf, NULL, {1, 1, 1, 1}, {1, 1}, &yh};
    ds_conv2d_args same = {&xb, &wb, NULL, {1, 1, 1, 1}, {1, 1}, &yb};
    CHECK(ds__cuda_supports(DS_OP_CONV2D, &f32_out));
    CHECK(!ds__cuda_supports(DS_OP_CONV2D, &f16_out));
    CHECK(ds__cuda_supports(DS_OP_CONV2D, &same));
    /* A causal conv whose cache alone differs: f32 too. */
    ds_tensor x3 = T5(DS_BF16, 1, 3, 2, 4, 5), w3 = T5(DS_BF16, 2, 3, 3, 3, 3),
              c3 = T5(DS_F32, 1, 3, 2, 4, 5), y3b = T5(DS_BF16, 1, 2, 2, 4, 5),
              y3f = T5(DS_F32, 1, 2, 2, 4, 5);
    CHECK(ds__cuda_conv_compute_dtype(&x3, &c3, &w3) == DS_F32);
    CHECK(ds__cuda_conv_compute_dtype(&x3, NULL, &w3) == DS_BF16);
    ds_conv3d_args cached_b = {&x3, &w3, NULL, &c3, 1, 1, {1, 1, 1}, &y3b};
    ds_conv3d_args cached_f = {&x3, &w3, NULL, &c3, 1, 1, {1, 1, 1}, &y3f};
    CHECK(!ds__cuda_supports(DS_OP_CONV3D_CAUSAL, &cached_b));
    CHECK(ds__cuda_supports(DS_OP_CONV3D_CAUSAL, &cached_f));
}

static ds__cuda_attention_form form(ds_dtype dt, int64_t b, int64_t sq, int64_t sk, int64_t hq,
                                    int64_t hkv, int64_t d, ds_dtype out_dt, size_t misalign)
{
    ds_tensor q = T4(dt, b, sq, hq, d), k = T4(dt, b, sk, hkv, d), v = T4(dt, b, sk, hkv, d),
              o = T4(out_dt, b, sq, hq, d);
    q.data = (char *)q.data + misalign;
    ds_attention_args a = {&q, &k, &v, NULL, 0.1f, 0, &o};
    ds__cuda_attention_form f = ds__cuda_attention_form_for(&a);
    CHECK(ds__cuda_supports(DS_OP_ATTENTION, &a) == (f != DS_CUDA_ATTENTION_CPU));
    return f;
}

static void test_attention_forms(void)
{
    CHECK(form(DS_BF16, 1, 4096, 4096, 24, 24, 128, DS_BF16, 0) == DS_CUDA_ATTENTION_FLASH);
    CHECK(form(DS_F16, 2, 77, 77, 8, 2, 64, DS_F16, 0) == DS_CUDA_ATTENTION_FLASH);
    /* The VAE's one 384-wide head, f32, a misaligned q, an f32 output: the matmul form. */
    CHECK(form(DS_BF16, 1, 1024, 1024, 1, 1, 384, DS_BF16, 0) == DS_CUDA_ATTENTION_MATMUL);
    CHECK(form(DS_F32, 1, 100, 90, 4, 2, 64, DS_F32, 0) == DS_CUDA_ATTENTION_MATMUL);
    CHECK(form(DS_BF16, 1, 100, 100, 4, 4, 128, DS_BF16, 2) == DS_CUDA_ATTENTION_MATMUL);
    CHECK(form(DS_BF16, 1, 100, 100, 4, 4, 128, DS_F32, 0) == DS_CUDA_ATTENTION_MATMUL);
    CHECK(form(DS_F16, 1, 10, 10, 1, 1, 40, DS_F16, 0) == DS_CUDA_ATTENTION_MATMUL);
    /* Outputs cuBLASLt cannot write from these inputs, and rows too long for the scratch. */
    CHECK(form(DS_F32, 1, 10, 10, 1, 1, 64, DS_BF16, 0) == DS_CUDA_ATTENTION_CPU);
    CHECK(form(DS_BF16, 1, 10, 10, 1, 1, 64, DS_F16, 0) == DS_CUDA_ATTENTION_CPU);
    CHECK(form(DS_F32, 1, 1, (int64_t)1 << 26, 1, 1, 384, DS_F32, 0) == DS_CUDA_ATTENTION_CPU);
    /* Mixed q / k dtypes: no GEMM takes them together. */
    ds_tensor q = T4(DS_BF16, 1, 8, 1, 384), k = T4(DS_F32, 1, 8, 1, 384),
              v = T4(DS_F32, 1, 8, 1, 384), o = T4(DS_BF16, 1, 8, 1, 384);
    ds_attention_args mixed = {&q, &k, &v, NULL, 0.1f, 0, &o};
    CHECK(ds__cuda_attention_form_for(&mixed) == DS_CUDA_ATTENTION_CPU);
}

static void test_attention_rows_per_pass_bounded(void)
{
    static const int64_t sks[] = {1, 77, 4096, 27556, 1 << 20, 1 << 24};
    static const ds_dtype dts[] = {DS_F32, DS_BF16};
    for (size_t i = 0; i < sizeof sks / sizeof *sks; i++)
        for (int d = 0; d < 2; d++) {
            int64_t sq = 27556, sk = sks[i];
            int64_t rows = ds__cuda_attention_rows_per_pass(sq, sk, dts[d]);
            size_t bytes = (size_t)(rows * sk) * (4 + ds_dtype_size(dts[d]));
            CHECK_MSG(rows >= 1 && rows <= sq, "sk %lld: %lld rows", (long long)sk,
                      (long long)rows);
            CHECK_MSG(rows == 1 || bytes <= DS_CUDA_ATTENTION_SCRATCH,
                      "sk %lld %s: %lld rows take %zu bytes", (long long)sk,
                      ds_dtype_name(dts[d]), (long long)rows, bytes);
        }
    CHECK(ds__cuda_attention_rows_per_pass(5, 10, DS_BF16) == 5);
}

/* ---- The pipeline's ops at 1328 x 1328, bf16 compute ----
 *
 * What each model calls (models/qwen_image_*.c). Only attention and the convolutions have
 * shape- or dtype-dependent answers; every other op the models call is checked for any
 * arguments. Sizes: latents 166 x 166 (1328 / 8), DiT tokens 83 x 83 = 6889 (2 x 2 patches),
 * prompts up to 1024 tokens; the VAE's mid-block attention has one head of C = 384 over
 * 166 x 166 = 27556 positions, in the encoder and the decoder. */

static void check_ops(const char *model, const ds_op *ops, size_t n)
{
    for (size_t i = 0; i < n; i++)
        CHECK_MSG(ds__cuda_supports(ops[i], NULL), "%s: %s falls back to the CPU", model,
                  ds_op_name(ops[i]));
}

static void check_attention(const char *what, ds_tensor q, ds_tensor k, ds_tensor v,
                            const ds_tensor *mask, int causal)
{
    ds_tensor o = q;
    ds_attention_args a = {&q, &k, &v, mask, 0.1f, causal, &o};
    CHECK_MSG(ds__cuda_supports(DS_OP_ATTENTION, &a), "%s: attention falls back to the CPU", what);
}

static void test_text_encoder_ops(void)
{
    static const ds_op ops[] = {DS_OP_EMBEDDING, DS_OP_RMS_NORM, DS_OP_LINEAR, DS_OP_ROPE,
                                DS_OP_BINARY, DS_OP_ATTENTION};
    check_ops("text encoder", ops, sizeof ops / sizeof *ops);
    /* Qwen2.5-VL 7B: 28 query heads, 4 key/value heads of 128, causal, padding mask. */
    static const int64_t lengths[] = {34, 1058}; /* template + short prompt, the longest */
    for (int i = 0; i < 2; i++) {
        int64_t s = lengths[i];
        ds_tensor mask = T2(DS_U8, 1, s);
        check_attention("text encoder", T4(DS_BF16, 1, s, 28, 128), T4(DS_BF16, 1, s, 4, 128),
                        T4(DS_BF16, 1, s, 4, 128), &mask, 1);
        check_attention("text encoder", T4(DS_BF16, 1, s, 28, 128), T4(DS_BF16, 1, s, 4, 128),
                        T4(DS_BF16, 1, s, 4, 128), NULL, 1);
    }
}

static void test_dit_and_controlnet_ops(void)
{
    static const ds_op dit[] = {DS_OP_PATCHIFY, DS_OP_UNPATCHIFY, DS_OP_LINEAR,
                                DS_OP_TIMESTEP_EMBEDDING, DS_OP_ACTIVATION, DS_OP_LAYER_NORM,
                                DS_OP_RMS_NORM, DS_OP_MODULATE, DS_OP_GATED_RESIDUAL, DS_OP_ROPE,
                                DS_OP_CONCAT, DS_OP_SLICE, DS_OP_SCALE, DS_OP_BINARY,
                                DS_OP_ATTENTION};
    static const ds_op controlnet[] = {DS_OP_LINEAR, DS_OP_RMS_NORM, DS_OP_BINARY};
    check_ops("DiT", dit, sizeof dit / sizeof *dit);
    check_ops("ControlNet", controlnet, sizeof controlnet / sizeof *controlnet);
    /* Joint attention over text + image tokens, 24 heads of 128, the text's key mask; batch 2
     * for CFG run together. */
    for (int64_t b = 1; b <= 2; b++) {
        int64_t s = 1024 + 6889;
        ds_tensor mask = T2(DS_U8, b, s);
        check_attention("DiT", T4(DS_BF16, b, s, 24, 128), T4(DS_BF16, b, s, 24, 128),
                        T4(DS_BF16, b, s, 24, 128), &mask, 0);
    }
}

static void test_vae_ops(void)
{
    static const ds_op ops[] = {DS_OP_CONV2D, DS_OP_CHANNEL_RMS_NORM, DS_OP_ACTIVATION,
                                DS_OP_BINARY, DS_OP_PERMUTE, DS_OP_LINEAR, DS_OP_SLICE,
                                DS_OP_ATTENTION, DS_OP_UPSAMPLE_NEAREST2X};
    check_ops("VAE", ops, sizeof ops / sizeof *ops);
    static const ds_dtype dts[] = {DS_BF16, DS_F32};
    for (int d = 0; d < 2; d++) {
        ds_dtype t = dts[d];
        int64_t s = 166 * 166;
        check_attention("VAE mid-block", T4(t, 1, s, 1, 384), T4(t, 1, s, 1, 384),
                        T4(t, 1, s, 1, 384), NULL, 0);
        /* The convolutions at their largest (the image-side 96 channels at full size) and a
         * down/upsampling one; only dtypes decide. */
        ds_tensor x = T4(t, 1, 96, 1328, 1328), w = T4(t, 96, 96, 3, 3), bias = T1(t, 96),
                  y = T4(t, 1, 96, 1328, 1328);
        ds_conv2d_args c = {&x, &w, &bias, {1, 1, 1, 1}, {1, 1}, &y};
        CHECK(ds__cuda_supports(DS_OP_CONV2D, &c));
        ds_tensor xd = T4(t, 1, 192, 664, 664), wd = T4(t, 192, 192, 3, 3),
                  yd = T4(t, 1, 192, 332, 332);
        ds_conv2d_args down = {&xd, &wd, NULL, {0, 1, 0, 1}, {2, 2}, &yd};
        CHECK(ds__cuda_supports(DS_OP_CONV2D, &down));
    }
}

int main(void)
{
    RUN(test_conv_mixed_dtypes_compute_in_f32);
    RUN(test_conv_dtype_rules);
    RUN(test_attention_forms);
    RUN(test_attention_rows_per_pass_bounded);
    RUN(test_text_encoder_ops);
    RUN(test_dit_and_controlnet_ops);
    RUN(test_vae_ops);
    return test_summary();
}
