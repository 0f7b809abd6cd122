/* Wan's text encoder against upstream's own outputs (tests/golden/
 * make_wan_text_encoder_golden.py): WanTextEncoder at full width with 2 blocks and a 700-row
 * vocabulary (the class's own kwargs), weights regenerated bit for bit by
 * tests/tools/seeded_weights.c. The relative position buckets against upstream's function; the
 * forward on a right-padded batch of 2 in float32 and bfloat16; the step interface and its input
 * checks; cancellation; then encode_prompt (upstream's WanVideoUnit_PromptEmbedder) on an English
 * and a Chinese prompt with the test SentencePiece model, the tokenizer folder found in
 * upstream's layout beside the model file, and its errors. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/safetensors.h"
#include "kernels/ops.h"
#include "models/wan_video_text_encoder.h"
#include "golden_test.h"
#include "pipelines/pipeline.h"
#include "test.h"
#include "tools/golden_model.h"

#define TE_CLASS "diffsynth.models.wan_video_text_encoder.WanTextEncoder"
#define SEED 2026
#define LAYERS 2
#define DIM 4096
#define SEQ 512
#define GOLDEN "golden/wan_text_encoder_2layers.safetensors"

static ds_backend *cpu;
static ds_safetensors *golden;
static ds_loaded_model model;
static int model_ready; /* 1: f32 weights, 2: bf16 weights */
static char tokenizer_path[1024];

static ds_tensor golden_tensor(const char *name)
{
    return test_golden_tensor(cpu, golden, name);
}

static test_progress progress;

static void test_buckets(void)
{
    ds_tensor want = golden_tensor("buckets");
    REQUIRE(want.data && want.dtype == DS_I32 && want.shape[0] == 1201);
    int bad = 0;
    for (int64_t i = 0; i < 1201; i++) {
        int32_t got = ds_wan_text_encoder_relative_bucket(i - 600);
        int32_t expected = ((const int32_t *)want.data)[i];
        if (got != expected && bad++ < 5)
            fprintf(stderr, "  bucket of %lld: %d, upstream %d\n", (long long)(i - 600), got,
                    expected);
    }
    CHECK(bad == 0);
}

static void check_forward(ds_dtype dtype, double limit)
{
    ds_error err;
    ds_tensor ids = golden_tensor("ids"), mask = golden_tensor("mask"), out;
    ds_tensor want = golden_tensor(dtype == DS_F32 ? "hidden_f32" : "hidden_bf16");
    ds_step_context ctx = {.backend = cpu, .progress = test_on_forward, .user = &progress};
    REQUIRE(ds_tensor_alloc(cpu, dtype, 3, (const int64_t[]){2, 16, DIM}, &out, &err) == DS_OK);
    progress = (test_progress){0};
    double start = test_now();
    int rc = ds_wan_text_encoder_forward(&model, &ctx, &ids, &mask, &out, &err);
    fprintf(stderr, "  forward (%s): %.2f s\n", ds_dtype_name(dtype), test_now() - start);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc == DS_OK) {
        double rel = ds_golden_rel_l2(&out, &want);
        fprintf(stderr, "  forward %s relative L2 vs upstream: %.3e\n", ds_dtype_name(dtype),
                rel);
        CHECK(rel < limit);
        CHECK(progress.calls == LAYERS && progress.last == LAYERS && progress.total == LAYERS);
    }
    ds_tensor_free(&out);
}

static void test_f32_forward(void)
{
    REQUIRE(model_ready == 1);
    check_forward(DS_F32, 1e-4);
}

/* The padded batch through the step with i32 ids and a u8 mask: the same numbers. A run
 * without the mask differs (the padding keys then count). */
static void test_step(void)
{
    ds_error err;
    REQUIRE(model_ready == 1);
    const ds_model_step *step =
        ds_model_step_find(model.cls->steps, model.cls->step_count, "forward");
    REQUIRE(step);
    ds_tensor ids = golden_tensor("ids"), mask = golden_tensor("mask");
    int32_t ids32[32];
    uint8_t mask8[32];
    for (int i = 0; i < 32; i++) {
        ids32[i] = (int32_t)((const int64_t *)ids.data)[i];
        mask8[i] = (uint8_t)((const int64_t *)mask.data)[i];
    }
    for (int with_mask = 1; with_mask >= 0; with_mask--) {
        ds_step_io in, out;
        ds_step_io_init(&in);
        ds_step_io_init(&out);
        int rc = ds_step_io_add_tensor(&in, "input_ids",
                                       ds_tensor_wrap(cpu, DS_I32, 2, ids.shape, ids32), NULL,
                                       &err);
        if (rc == DS_OK && with_mask)
            rc = ds_step_io_add_tensor(&in, "attention_mask",
                                       ds_tensor_wrap(cpu, DS_U8, 2, mask.shape, mask8), NULL,
                                       &err);
        ds_step_context ctx = {.backend = cpu};
        if (rc == DS_OK)
            rc = step->run(&model, &ctx, &in, &out, &err);
        CHECK_MSG(rc == DS_OK, "%s", err.message);
        const ds_tensor *hidden = ds_step_io_tensor(&out, "hidden_states");
        CHECK(hidden && hidden->dtype == DS_F32 && hidden->shape[0] == 2 &&
              hidden->shape[1] == 16 && hidden->shape[2] == DIM);
        if (hidden) {
            ds_tensor want = golden_tensor("hidden_f32");
            double rel = ds_golden_rel_l2(hidden, &want);
            fprintf(stderr, "  step %s mask vs upstream: %.3e\n", with_mask ? "with" : "without",
                    rel);
            CHECK(with_mask ? rel < 1e-4 : rel > 1e-3);
        }
        ds_step_io_free(&in);
        ds_step_io_free(&out);
    }
}

static int run_step_with(const char *name, ds_tensor t, ds_error *err)
{
    const ds_model_step *step =
        ds_model_step_find(model.cls->steps, model.cls->step_count, "forward");
    if (!step)
        return DS_ERR_NOT_FOUND;
    ds_step_io in, out;
    ds_step_io_init(&in);
    ds_step_io_init(&out);
    int rc = DS_OK;
    if (strcmp(name, "input_ids") != 0)
        rc = ds_step_io_add_tensor(&in, "input_ids", golden_tensor("ids"), NULL, err);
    if (rc == DS_OK)
        rc = ds_step_io_add_tensor(&in, name, t, NULL, err);
    ds_step_context ctx = {.backend = cpu};
    if (rc == DS_OK)
        rc = step->run(&model, &ctx, &in, &out, err);
    ds_step_io_free(&in);
    ds_step_io_free(&out);
    return rc;
}

static void test_input_checks(void)
{
    ds_error err;
    REQUIRE(model_ready);
    int64_t big[4] = {0, 1, 2, 700};
    float f[32] = {0};
    ds_tensor ids_big = ds_tensor_wrap(cpu, DS_I64, 2, (const int64_t[]){1, 4}, big);
    ds_tensor ids_f32 = ds_tensor_wrap(cpu, DS_F32, 2, (const int64_t[]){2, 16}, f);
    ds_tensor mask = golden_tensor("mask");
    ds_tensor mask_short = ds_tensor_wrap(cpu, DS_I64, 2, (const int64_t[]){2, 15}, mask.data);
    CHECK(run_step_with("input_ids", ids_big, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "[0, 3] is 700");
    CHECK(run_step_with("input_ids", ids_f32, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"input_ids\"");
    CHECK(run_step_with("attention_mask", mask_short, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"attention_mask\"");
    CHECK_CONTAINS(err.message, "[2, 16]");
    CHECK(run_step_with("mask", mask, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"mask\"");
}

static void test_cancelled(void)
{
    ds_error err;
    REQUIRE(model_ready);
    ds_step_context ctx = {.backend = cpu, .cancelled = test_always_cancelled};
    ds_tensor ids = golden_tensor("ids"), out;
    REQUIRE(ds_tensor_alloc(cpu, DS_F32, 3, (const int64_t[]){2, 16, DIM}, &out, &err) == DS_OK);
    CHECK(ds_wan_text_encoder_forward(&model, &ctx, &ids, NULL, &out, &err) == DS_ERR_CANCELLED);
    CHECK_CONTAINS(err.message, "cancelled");
    ds_tensor_free(&out);
}

/* ---- encode_prompt ---- */

static const char *golden_prompt(const char *name)
{
    static char text[1024];
    char key[64];
    snprintf(key, sizeof key, "prompt_%s", name);
    ds_tensor t = golden_tensor(key);
    size_t n = t.data && (size_t)t.shape[0] < sizeof text ? (size_t)t.shape[0] : 0;
    memcpy(text, t.data ? t.data : "", n);
    text[n] = '\0';
    return text;
}

static int run_encode(const ds_step_context *ctx, const char *prompt, const char *tokenizer,
                      const char *dtype, ds_step_io *out, ds_error *err)
{
    /* The pipeline adds the step to the class (pipelines/wan_video.h). */
    const ds_model_step *step = ds_pipeline_class_step_find(TE_CLASS, "encode_prompt");
    if (!step)
        return ds_error_set(err, DS_ERR_NOT_FOUND, "no encode_prompt step");
    ds_step_io in;
    ds_step_io_init(&in);
    int rc = DS_OK;
    if (prompt)
        rc = ds_step_io_add_param(&in, "prompt", prompt, err);
    if (rc == DS_OK && tokenizer)
        rc = ds_step_io_add_param(&in, "tokenizer", tokenizer, err);
    if (rc == DS_OK && dtype)
        rc = ds_step_io_add_param(&in, "dtype", dtype, err);
    if (rc == DS_OK)
        rc = step->run(&model, ctx, &in, out, err);
    ds_step_io_free(&in);
    return rc;
}

/* The context's first `length` rows against upstream's, the rest exactly zero. */
static void check_encode_case(const char *name, const char *dtype, double limit)
{
    ds_error err;
    ds_step_io out;
    char key[64];
    const char *suffix = model_ready == 2 ? "bf16" : "f32";
    ds_step_context ctx = {.backend = cpu};
    ds_step_io_init(&out);
    double start = test_now();
    int rc = run_encode(&ctx, golden_prompt(name), tokenizer_path, dtype, &out, &err);
    fprintf(stderr, "  encode_prompt %s (%s): %.2f s\n", name, suffix, test_now() - start);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    snprintf(key, sizeof key, "context_%s_%s", name, suffix);
    ds_tensor want = golden_tensor(key);
    snprintf(key, sizeof key, "length_%s", name);
    ds_tensor length_t = golden_tensor(key);
    REQUIRE(want.data && length_t.data);
    int64_t length = ((const int64_t *)length_t.data)[0];
    const ds_tensor *context = ds_step_io_tensor(&out, "context");
    CHECK(context && context->ndim == 3 && context->shape[0] == 1 && context->shape[1] == SEQ &&
          context->shape[2] == DIM && context->dtype == want.dtype);
    if (rc == DS_OK && context && context->dtype == want.dtype) {
        double rel = ds_golden_rel_l2(context, &want);
        fprintf(stderr, "  encode_prompt %s %s: length %lld, relative L2 vs upstream %.3e\n",
                name, suffix, (long long)length, rel);
        CHECK(rel < limit);
        size_t row = DIM * ds_dtype_size(context->dtype);
        const unsigned char *tail = (const unsigned char *)context->data + length * row;
        size_t nonzero = 0;
        for (size_t i = 0; i < (SEQ - (size_t)length) * row; i++)
            nonzero += tail[i] != 0;
        CHECK_MSG(nonzero == 0, "%zu nonzero bytes past the prompt", nonzero);
    }
    ds_step_io_free(&out);
}

static void test_encode_prompt_f32(void)
{
    REQUIRE(model_ready == 1);
    check_encode_case("english", "float32", 1e-4);
    check_encode_case("chinese", NULL, 1e-4); /* f32 weights: f32 by default */
}

/* Upstream's layout: <root>/models_t5_umt5-xxl-enc-bf16.pth and <root>/google/umt5-xxl/. A
 * cancelled context stops after the tokenizer is loaded, before the blocks. */
static void test_encode_prompt_finds_tokenizer(void)
{
    ds_error err;
    ds_step_io out;
    char root[] = "/tmp/ds-wan-te-XXXXXX", path[1400], google[1400], link[1400];
    char abs_tok[PATH_MAX];
    REQUIRE(model_ready);
    REQUIRE(mkdtemp(root));
    REQUIRE(realpath(tokenizer_path, abs_tok));
    snprintf(path, sizeof path, "%s/models_t5_umt5-xxl-enc-bf16.pth", root);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fclose(f);
    ds_model_file file = {.path = path};
    ds_model_files files = {.files = &file, .count = 1};
    model.files = &files;
    ds_step_context ctx = {.backend = cpu, .cancelled = test_always_cancelled};

    ds_step_io_init(&out);
    CHECK(run_encode(&ctx, "a cat", NULL, NULL, &out, &err) == DS_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.message, "google/umt5-xxl");
    CHECK_CONTAINS(err.message, "beside the model file");
    ds_step_io_free(&out);

    snprintf(google, sizeof google, "%s/google", root);
    snprintf(link, sizeof link, "%s/google/umt5-xxl", root);
    REQUIRE(mkdir(google, 0700) == 0 && symlink(abs_tok, link) == 0);
    ds_step_io_init(&out);
    CHECK(run_encode(&ctx, "a cat", NULL, NULL, &out, &err) == DS_ERR_CANCELLED);
    ds_step_io_free(&out);

    model.files = NULL;
    unlink(link);
    rmdir(google);
    unlink(path);
    rmdir(root);
}

/* Copies file `from` to `to`; 1 on success. */
static int copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[65536];
    size_t n;
    int ok = in && out;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
        ok = fwrite(buf, 1, n, out) == n;
    if (in)
        fclose(in);
    if (out && fclose(out) != 0)
        ok = 0;
    return ok;
}

/* A tokenizer folder is loaded once per process: with its spiece.model gone, a second prompt
 * still tokenizes (the cancelled context stops each call after the tokenizer); a folder never
 * loaded fails. */
static void test_encode_prompt_keeps_tokenizer(void)
{
    ds_error err;
    ds_step_io out;
    char dir[] = "/tmp/ds-wan-tok-XXXXXX", from[1200], to[1200];
    REQUIRE(model_ready);
    REQUIRE(mkdtemp(dir));
    snprintf(from, sizeof from, "%s/spiece.model", tokenizer_path);
    snprintf(to, sizeof to, "%s/spiece.model", dir);
    REQUIRE(copy_file(from, to));
    ds_step_context ctx = {.backend = cpu, .cancelled = test_always_cancelled};
    ds_step_io_init(&out);
    CHECK(run_encode(&ctx, "a cat", dir, NULL, &out, &err) == DS_ERR_CANCELLED);
    ds_step_io_free(&out);
    REQUIRE(unlink(to) == 0);
    ds_step_io_init(&out);
    CHECK_MSG(run_encode(&ctx, "a dog", dir, NULL, &out, &err) == DS_ERR_CANCELLED, "%s",
              err.message);
    ds_step_io_free(&out);
    char other[] = "/tmp/ds-wan-tok-XXXXXX";
    REQUIRE(mkdtemp(other));
    ds_step_io_init(&out);
    CHECK(run_encode(&ctx, "a dog", other, NULL, &out, &err) == DS_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.message, "spiece.model");
    ds_step_io_free(&out);
    rmdir(other);
    rmdir(dir);
}

static void test_encode_prompt_errors(void)
{
    ds_error err;
    ds_step_io out;
    ds_step_context ctx = {.backend = cpu};
    REQUIRE(model_ready);
    ds_step_io_init(&out);
    CHECK(run_encode(&ctx, "a cat", "/nonexistent/umt5", NULL, &out, &err) == DS_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.message, "/nonexistent/umt5");
    CHECK(run_encode(&ctx, "a cat", NULL, NULL, &out, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"tokenizer\" parameter");
    CHECK(run_encode(&ctx, NULL, tokenizer_path, NULL, &out, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"prompt\" is required");
    CHECK(run_encode(&ctx, "a cat", tokenizer_path, "half", &out, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "encode_prompt: parameter \"dtype\"");
    CHECK(run_encode(&ctx, "\xff\xfe", tokenizer_path, NULL, &out, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"prompt\"");
    CHECK(out.tensor_count == 0);
    ds_step_io_free(&out);
}

static void test_bf16(void)
{
    REQUIRE(model_ready);
    ds_golden_model_to_bf16(&model);
    model_ready = 2;
    check_forward(DS_BF16, 2e-2);
    check_encode_case("english", NULL, 2e-2); /* bf16 weights: bf16 by default */
}

int main(void)
{
    ds_error err;
    const char *root = getenv("DS_TEST_DATA");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", root ? root : "tests/data", GOLDEN);
    if (ds_cpu_backend_create(0, &cpu, &err) != DS_OK ||
        ds_safetensors_open(path, 0, &golden, &err) != DS_OK) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    snprintf(tokenizer_path, sizeof tokenizer_path, "%s/wan_tokenizer",
             root ? root : "tests/data");
    RUN(test_buckets);
    ds_golden_model_spec spec = {
        .model_class = TE_CLASS,
        .kwargs_json = "{\"vocab\": 700, \"num_layers\": 2}",
        .bounds = ds_golden_bounds_wan_text_encoder,
        .seed = SEED,
    };
    double start = test_now();
    if (ds_golden_model_build(&spec, &model) == 0)
        model_ready = 1;
    fprintf(stderr, "  seeded f32 weights: %.2f s\n", test_now() - start);
    RUN(test_f32_forward);
    RUN(test_step);
    RUN(test_input_checks);
    RUN(test_cancelled);
    RUN(test_encode_prompt_f32);
    RUN(test_encode_prompt_finds_tokenizer);
    RUN(test_encode_prompt_keeps_tokenizer);
    RUN(test_encode_prompt_errors);
    RUN(test_bf16);
    if (model_ready)
        ds_golden_model_free(&model);
    ds_safetensors_close(golden);
    ds_backend_destroy(cpu);
    return test_summary();
}
