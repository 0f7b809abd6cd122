/* The step io helpers every model step and the daemon rely on: names unique, parameters parsed,
 * and input checks whose messages name the tensor, what it is and what was expected. */
#include <math.h>
#include <stdlib.h>

#include "kernels/ops.h"
#include "models/model_step.h"
#include "test.h"

static ds_backend *cpu;

static void test_tensors_and_names(void)
{
    ds_step_io io;
    ds_step_io_init(&io);
    ds_error err;
    float data[6] = {0};
    int64_t shape[2] = {2, 3};
    REQUIRE(ds_step_io_add_tensor(&io, "latents", ds_tensor_wrap(cpu, DS_F32, 2, shape, data), NULL,
                                  &err) == DS_OK);
    CHECK(ds_step_io_add_tensor(&io, "latents", ds_tensor_wrap(cpu, DS_F32, 2, shape, data), NULL,
                                &err) == DS_ERR_ALREADY_EXISTS);
    CHECK_CONTAINS(err.message, "\"latents\" is given twice");
    ds_tensor *made = NULL;
    REQUIRE(ds_step_io_new_tensor(&io, cpu, "noise_pred", DS_BF16, 2, shape, &made, &err) == DS_OK);
    CHECK(made->dtype == DS_BF16 && made->shape[1] == 3 && made->data != NULL);
    CHECK(ds_step_io_tensor(&io, "noise_pred") == made);
    CHECK(ds_step_io_tensor(&io, "nothing") == NULL);

    static const char *const known[] = {"latents", "noise_pred", "cfg_scale", NULL};
    CHECK(ds_step_io_check_names(&io, "forward", known, &err) == DS_OK);
    static const char *const fewer[] = {"latents", NULL};
    CHECK(ds_step_io_check_names(&io, "forward", fewer, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "forward: unknown input \"noise_pred\" (accepted: latents)");
    ds_step_io_free(&io);
}

static void test_params(void)
{
    ds_step_io io;
    ds_step_io_init(&io);
    ds_error err;
    REQUIRE(ds_step_io_add_param(&io, "cfg_scale", "4.5", &err) == DS_OK);
    REQUIRE(ds_step_io_add_param(&io, "tiled", "true", &err) == DS_OK);
    REQUIRE(ds_step_io_add_param(&io, "sampler", "euler", &err) == DS_OK);
    CHECK(ds_step_io_add_param(&io, "tiled", "false", &err) == DS_ERR_ALREADY_EXISTS);
    CHECK(ds_step_io_param(&io, "cfg_scale")->number == 4.5);
    CHECK(ds_step_io_param(&io, "tiled")->number == 1);
    CHECK(isnan(ds_step_io_param(&io, "sampler")->number));
    CHECK_STR_EQ(ds_step_io_param(&io, "sampler")->text, "euler");
    static const char *const known[] = {"cfg_scale", "tiled", NULL};
    CHECK(ds_step_io_check_names(&io, "forward", known, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "unknown parameter \"sampler\"");
    ds_step_io_free(&io);
}

static void test_require(void)
{
    ds_step_io io;
    ds_step_io_init(&io);
    ds_error err;
    float data[16 * 7 * 8] = {0};
    int64_t shape[4] = {1, 16, 7, 8};
    REQUIRE(ds_step_io_add_tensor(&io, "latents", ds_tensor_wrap(cpu, DS_F32, 4, shape, data), NULL,
                                  &err) == DS_OK);
    const ds_dtype floats[] = {DS_F32, DS_BF16};
    const ds_tensor *t = NULL;
    CHECK(ds_step_io_require(&io, "forward", "latents", 0, floats, 2, 4, (int64_t[]){-1, 16, -1, -1},
                             "[B, 16, H, W]", &t, &err) == DS_OK);
    CHECK(t == ds_step_io_tensor(&io, "latents"));
    CHECK(ds_step_io_require(&io, "forward", "latents", 0, floats, 2, 4, (int64_t[]){-1, 16, 6, -1},
                             "[B, 16, H, W] with H even", &t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "forward: input \"latents\" is [1, 16, 7, 8] f32, expected [B, 16, H, W] with H even");
    CHECK(t == NULL);
    const ds_dtype halves[] = {DS_F16};
    CHECK(ds_step_io_require(&io, "forward", "latents", 0, halves, 1, 4, (int64_t[]){-1, -1, -1, -1},
                             "f16 [B, C, H, W]", &t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(ds_step_io_require(&io, "forward", "latents", 0, floats, 2, 3, (int64_t[]){-1, -1, -1},
                             "[B, S, C]", &t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(ds_step_io_require(&io, "forward", "prompt_emb", 0, floats, 2, 3, (int64_t[]){-1, -1, 3584},
                             "[B, L, 3584]", &t, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "forward: missing input \"prompt_emb\", expected [B, L, 3584]");
    CHECK(ds_step_io_require(&io, "forward", "prompt_emb_mask", 1, floats, 2, 2, (int64_t[]){-1, -1},
                             "[B, L]", &t, &err) == DS_OK);
    CHECK(t == NULL);
    ds_step_io_free(&io);
}

static void test_find_step(void)
{
    static const ds_model_step steps[] = {{.name = "forward", .usage = "x -> y"},
                                          {.name = "encode", .usage = "a -> b"}};
    CHECK(ds_model_step_find(steps, 2, "encode") == &steps[1]);
    CHECK(ds_model_step_find(steps, 2, "decode") == NULL);
    CHECK(ds_model_step_find(NULL, 0, "forward") == NULL);
}

int main(void)
{
    ds_error err;
    if (ds_cpu_backend_create(1, &cpu, &err) != DS_OK) {
        fprintf(stderr, "cpu backend: %s\n", err.message);
        return 1;
    }
    RUN(test_tensors_and_names);
    RUN(test_params);
    RUN(test_require);
    RUN(test_find_step);
    cpu->destroy(cpu);
    return test_summary();
}
