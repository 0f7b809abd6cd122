/* The Qwen-Image VAE's real op calls against the CUDA backend's `supports`, without a GPU: the
 * full real config (dims 96..384, the 384-wide mid-block attention) in bf16, as a GPU runs it,
 * decoding a 4 x 4 latent and encoding a 32 x 32 image on the CPU while an op observer asks
 * kernels/cuda/cuda_supports.c about every call. Only the spatial size is small, and no answer
 * depends on it (test_cuda_supports.c checks the 1328 x 1328 shapes of every model), so every
 * call here must run on the GPU. This catches what a hand-written list cannot: the dtypes the
 * model really passes (input vs weight, output, views). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_supports.h"
#include "kernels/ops.h"
#include "models/qwen_image_vae.h"
#include "test.h"
#include "tools/golden_model.h"
#include "tools/seeded_weights.h"

#define VAE_CLASS "diffsynth.models.qwen_image_vae.QwenImageVAE"

typedef struct seen {
    int calls[DS_OP_COUNT];
    int refused;
    char first_refused[512];
    int attention_d384;
} seen;

static void observe(void *ctx, const ds_backend *b, ds_op op, const void *args)
{
    (void)b;
    seen *s = ctx;
    s->calls[op]++;
    if (op == DS_OP_ATTENTION && ((const ds_attention_args *)args)->q->shape[3] == 384)
        s->attention_d384++;
    if (ds__cuda_supports(op, args))
        return;
    if (s->refused++ == 0) {
        char d[128] = "";
        if (op == DS_OP_ATTENTION)
            ds_tensor_describe(((const ds_attention_args *)args)->q, d, sizeof d);
        else if (op == DS_OP_CONV2D)
            ds_tensor_describe(((const ds_conv2d_args *)args)->x, d, sizeof d);
        snprintf(s->first_refused, sizeof s->first_refused, "%s (%s)", ds_op_name(op), d);
    }
}

static void fill_random(ds_tensor *t, uint64_t seed)
{
    uint64_t n = ds_tensor_numel(t);
    float *v = malloc(n * sizeof *v);
    REQUIRE(v);
    ds_seeded_fill("input", seed, 1.0, 0.0f, v, (size_t)n);
    ds_cast_args a;
    ds_tensor src = ds_tensor_wrap(t->backend, DS_F32, t->ndim, t->shape, v);
    a.x = &src;
    a.y = t;
    ds_error err;
    CHECK_MSG(ds_cast(t->backend, NULL, &a, &err) == DS_OK, "%s", err.message);
    free(v);
}

static void test_vae_bf16_calls_run_on_gpu(void)
{
    ds_backend *cpu;
    ds_error err;
    REQUIRE(ds_cpu_backend_create(0, &cpu, &err) == DS_OK);
    ds_golden_model_spec spec = {
        .model_class = VAE_CLASS,
        .bounds = ds_golden_bounds_qwen_image_vae,
        .seed = 2027,
    };
    ds_loaded_model model;
    REQUIRE(ds_golden_model_build(&spec, &model) == 0);
    ds_golden_model_to_bf16(&model);

    ds_tensor lat, img, out_img, out_lat;
    int64_t ls[4] = {1, 16, 4, 4}, is[4] = {1, 3, 32, 32};
    REQUIRE(ds_tensor_alloc(cpu, DS_BF16, 4, ls, &lat, &err) == DS_OK &&
            ds_tensor_alloc(cpu, DS_BF16, 4, is, &img, &err) == DS_OK &&
            ds_tensor_alloc(cpu, DS_BF16, 4, is, &out_img, &err) == DS_OK &&
            ds_tensor_alloc(cpu, DS_BF16, 4, ls, &out_lat, &err) == DS_OK);
    fill_random(&lat, 1);
    fill_random(&img, 2);

    seen s;
    memset(&s, 0, sizeof s);
    ds_step_context ctx = {.backend = cpu};
    ds_ops_set_observer(observe, &s);
    int rc_dec = ds_qwen_image_vae_decode(&model, &ctx, &lat, &out_img, &err);
    CHECK_MSG(rc_dec == DS_OK, "decode: %s", err.message);
    int rc_enc = ds_qwen_image_vae_encode(&model, &ctx, &img, &out_lat, &err);
    CHECK_MSG(rc_enc == DS_OK, "encode: %s", err.message);
    ds_ops_set_observer(NULL, NULL);

    CHECK_MSG(s.refused == 0, "%d calls would fall back to the CPU on a GPU, the first: %s",
              s.refused, s.first_refused);
    /* The walk saw what it is about: the real mid-block attention, the convolutions. */
    CHECK_MSG(s.attention_d384 >= 2, "%d attention calls with a 384-wide head", s.attention_d384);
    CHECK(s.calls[DS_OP_CONV2D] > 20);
    int total = 0;
    for (int op = 0; op < DS_OP_COUNT; op++)
        total += s.calls[op];
    fprintf(stderr, "  %d op calls checked (%d conv2d, %d attention)\n", total,
            s.calls[DS_OP_CONV2D], s.calls[DS_OP_ATTENTION]);

    ds_tensor_free(&lat);
    ds_tensor_free(&img);
    ds_tensor_free(&out_img);
    ds_tensor_free(&out_lat);
    ds_golden_model_free(&model);
    ds_backend_destroy(cpu);
}

int main(void)
{
    RUN(test_vae_bf16_calls_run_on_gpu);
    return test_summary();
}
