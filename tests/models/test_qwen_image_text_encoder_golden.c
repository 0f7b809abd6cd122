/* The Qwen-Image text encoder's forward against upstream's own output (tests/golden/
 * make_qwen_image_text_encoder_golden.py): 2 decoder layers at full width and the full
 * 152064-row embedding, weights regenerated bit for bit by tests/tools/seeded_weights.c,
 * float32 and bfloat16 runs of a single prompt and of a right-padded batch of 2; then the step
 * interface, the padding mask against an unpadded run, the input checks and cancellation.
 * Then the encode_prompt step against upstream's QwenImageUnit_PromptEmbedder on the same model
 * with the real tokenizer (tests/golden/make_qwen_image_encode_prompt_golden.py): three prompts
 * in f32 and bf16, the tokenizer found beside the model files, the empty prompt, the length
 * limit and warning, and the error for a missing tokenizer folder.
 *
 * The model is the class's declared tree cut to the text tower's embedding, layers 0 and 1 and
 * final norm (the forward runs the layers the tree has), each view pointing at a seeded
 * buffer. The f32 weights are 4 GB and are converted to bf16 in place for the bf16 run. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/float_convert.h"
#include "core/safetensors.h"
#include "kernels/ops.h"
#include "models/qwen_image_text_encoder.h"
#include "pipelines/pipeline.h"
#include "golden_test.h"
#include "test.h"
#include "tools/golden_model.h"
#include "tools/seeded_weights.h"

#define TE_CLASS "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder"
#define SEED 2025
#define LAYERS 2
#define HIDDEN 3584
#define LM "model.language_model."
#define GOLDEN "golden/qwen_image_text_encoder_2layers.safetensors"
#define PROMPT_GOLDEN "golden/qwen_image_encode_prompt_2layers.safetensors"

static ds_backend *cpu;
static ds_safetensors *golden;
static ds_safetensors *prompt_golden_file;
static ds_loaded_model model; /* params bound to the buffers below */
static int model_ready;       /* 1: f32 weights, 2: bf16 weights */

static void free_model(void)
{
    ds_golden_model_free(&model);
    model_ready = 0;
}

/* Text tensors of layers 0 and 1, the embedding and the final norm: the golden's model. */
static int kept(const char *name, void *arg)
{
    (void)arg;
    if (strncmp(name, LM, strlen(LM)) != 0)
        return 0;
    const char *rest = name + strlen(LM);
    if (strncmp(rest, "layers.", 7) != 0)
        return 1;
    return atoi(rest + 7) < LAYERS;
}

static int build_model(void)
{
    ds_golden_model_spec spec = {
        .model_class = TE_CLASS,
        .keep = kept,
        .bounds = ds_golden_bounds_qwen_image_text_encoder,
        .seed = SEED,
    };
    if (ds_golden_model_build(&spec, &model) != 0)
        return 0;
    model_ready = 1;
    return 1;
}

static void model_to_bf16(void)
{
    ds_golden_model_to_bf16(&model);
    model_ready = 2;
}

static ds_tensor golden_tensor(const char *name)
{
    return test_golden_tensor(cpu, golden, name);
}

static test_progress progress;

/* Runs the forward on a golden case; out is allocated here (caller frees it). */
static int run_case(const char *name, ds_dtype dtype, ds_tensor *out, ds_error *err)
{
    char ids_name[64], mask_name[64];
    snprintf(ids_name, sizeof ids_name, "ids_%s", name);
    snprintf(mask_name, sizeof mask_name, "mask_%s", name);
    ds_tensor ids = golden_tensor(ids_name), mask = golden_tensor(mask_name);
    ds_step_context ctx = {.backend = cpu, .progress = test_on_forward, .user = &progress};
    int rc = ds_tensor_alloc(cpu, dtype, 3, (const int64_t[]){ids.shape[0], ids.shape[1], HIDDEN},
                             out, err);
    if (rc != DS_OK)
        return rc;
    double start = test_now();
    rc = ds_qwen_image_text_encoder_forward(&model, &ctx, &ids, &mask, out, err);
    fprintf(stderr, "  forward %s (%s): %.2f s\n", name, ds_dtype_name(dtype), test_now() - start);
    return rc;
}

static void check_case(const char *name, ds_dtype dtype, double limit)
{
    ds_error err;
    ds_tensor out;
    char want_name[64], f32_name[64];
    const char *suffix = dtype == DS_F32 ? "f32" : "bf16";
    snprintf(want_name, sizeof want_name, "hidden_%s_%s", name, suffix);
    snprintf(f32_name, sizeof f32_name, "hidden_%s_f32", name);
    progress = (test_progress){0};
    int rc = run_case(name, dtype, &out, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc == DS_OK) {
        ds_tensor want = golden_tensor(want_name), want_f32 = golden_tensor(f32_name);
        double rel = test_rel_l2_at(&out, 0, &want, 0, 0);
        fprintf(stderr, "  %s %s relative L2 error vs upstream: %.3e (vs upstream f32: %.3e)\n",
                name, suffix, rel, test_rel_l2_at(&out, 0, &want_f32, 0, 0));
        CHECK(rel < limit);
        CHECK(progress.calls == LAYERS && progress.last == LAYERS && progress.total == LAYERS);
    }
    ds_tensor_free(&out);
}

static void test_seeded_weights_match_python(void)
{
    /* Bit patterns printed by tests/golden/seeded_weights.py for seed 2025. */
    static const uint32_t embed[3] = {0xbbb33900, 0x3f02d1d0, 0x3f587b48};
    static const uint32_t norm[3] = {0x3f887b46, 0x3f824970, 0x3f716154};
    float v[3];
    ds_seeded_fill(LM "embed_tokens.weight", SEED, 1.0, 0.0f, v, 3);
    for (int i = 0; i < 3; i++)
        CHECK(ds__f32_bits(v[i]) == embed[i]);
    ds_seeded_fill(LM "layers.1.post_attention_layernorm.weight", SEED, 0.1, 1.0f, v, 3);
    for (int i = 0; i < 3; i++)
        CHECK(ds__f32_bits(v[i]) == norm[i]);
}

static void test_f32_golden(void)
{
    REQUIRE(model_ready == 1);
    check_case("single", DS_F32, 1e-4);
    check_case("padded", DS_F32, 1e-4);
}

/* The padded batch through the step, with i32 ids and a u8 mask: the same numbers. */
static void test_step(void)
{
    ds_error err;
    REQUIRE(model_ready == 1);
    const ds_model_step *step = ds_model_step_find(model.cls->steps, model.cls->step_count,
                                                   "forward");
    REQUIRE(step);
    ds_tensor ids = golden_tensor("ids_padded"), mask = golden_tensor("mask_padded");
    uint64_t n = ds_tensor_numel(&ids);
    int32_t ids32[2 * 13];
    uint8_t mask8[2 * 13];
    REQUIRE(n == 2 * 13);
    for (uint64_t i = 0; i < n; i++) {
        ids32[i] = (int32_t)((const int64_t *)ids.data)[i];
        mask8[i] = (uint8_t)((const int64_t *)mask.data)[i];
    }
    ds_step_io in, out;
    ds_step_io_init(&in);
    ds_step_io_init(&out);
    int rc = ds_step_io_add_tensor(&in, "input_ids", ds_tensor_wrap(cpu, DS_I32, 2, ids.shape, ids32),
                                   NULL, &err);
    if (rc == DS_OK)
        rc = ds_step_io_add_tensor(&in, "attention_mask",
                                   ds_tensor_wrap(cpu, DS_U8, 2, mask.shape, mask8), NULL, &err);
    if (rc == DS_OK)
        rc = ds_step_io_add_param(&in, "dtype", "float32", &err);
    ds_step_context ctx = {.backend = cpu};
    if (rc == DS_OK)
        rc = step->run(&model, &ctx, &in, &out, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    const ds_tensor *hidden = ds_step_io_tensor(&out, "hidden_states");
    CHECK(hidden && hidden->ndim == 3 && hidden->shape[0] == 2 && hidden->shape[1] == 13 &&
          hidden->shape[2] == HIDDEN && hidden->dtype == DS_F32);
    if (rc == DS_OK && hidden) {
        ds_tensor want = golden_tensor("hidden_padded_f32");
        double rel = test_rel_l2_at(hidden, 0, &want, 0, 0);
        fprintf(stderr, "  step (i32 ids, u8 mask) vs upstream: %.3e\n", rel);
        CHECK(rel < 1e-4);
    }
    ds_step_io_free(&in);
    ds_step_io_free(&out);
}

/* A padding key reaches no token: the padded row's 9 valid tokens equal a run of those 9
 * tokens alone (right padding keeps their positions). */
static void test_padding_mask(void)
{
    ds_error err;
    REQUIRE(model_ready == 1);
    ds_tensor ids = golden_tensor("ids_padded"), mask = golden_tensor("mask_padded");
    ds_tensor want = golden_tensor("hidden_padded_f32"), alone;
    ds_tensor row = ds_tensor_wrap(cpu, DS_I64, 2, (const int64_t[]){1, 9},
                                   (int64_t *)ids.data + 13);
    ds_step_context ctx = {.backend = cpu};
    REQUIRE(((const int64_t *)mask.data)[13 + 8] == 1 && ((const int64_t *)mask.data)[13 + 9] == 0);
    REQUIRE(ds_tensor_alloc(cpu, DS_F32, 3, (const int64_t[]){1, 9, HIDDEN}, &alone, &err) ==
            DS_OK);
    int rc = ds_qwen_image_text_encoder_forward(&model, &ctx, &row, NULL, &alone, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc == DS_OK) {
        double rel = test_rel_l2_at(&alone, 0, &want, 13 * HIDDEN, 9 * HIDDEN);
        fprintf(stderr, "  unpadded row vs padded batch's valid tokens: %.3e\n", rel);
        CHECK(rel < 1e-4);
    }
    ds_tensor_free(&alone);
}

/* A step run with one input replaced or added; returns the status and the message. */
static int run_step_with(const char *name, ds_tensor t, const char *param, const char *value,
                         ds_error *err)
{
    const ds_model_step *step = ds_model_step_find(model.cls->steps, model.cls->step_count,
                                                   "forward");
    if (!step)
        return DS_ERR_NOT_FOUND;
    ds_step_io in, out;
    ds_step_io_init(&in);
    ds_step_io_init(&out);
    int rc = DS_OK;
    if (strcmp(name, "input_ids") != 0)
        rc = ds_step_io_add_tensor(&in, "input_ids", golden_tensor("ids_single"), NULL, err);
    if (rc == DS_OK)
        rc = ds_step_io_add_tensor(&in, name, t, NULL, err);
    if (rc == DS_OK && param)
        rc = ds_step_io_add_param(&in, param, value, err);
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
    ds_tensor ids = golden_tensor("ids_single"), mask = golden_tensor("mask_single");
    float f[11] = {0};
    int64_t big[11] = {0, 1, 2, 152064};
    ds_tensor ids_f32 = ds_tensor_wrap(cpu, DS_F32, 2, ids.shape, f);
    ds_tensor ids_1d = ds_tensor_wrap(cpu, DS_I64, 1, (const int64_t[]){11}, ids.data);
    ds_tensor ids_big = ds_tensor_wrap(cpu, DS_I64, 2, (const int64_t[]){1, 4}, big);
    ds_tensor mask_short = ds_tensor_wrap(cpu, DS_I64, 2, (const int64_t[]){1, 10}, mask.data);
    ds_tensor mask_f32 = ds_tensor_wrap(cpu, DS_F32, 2, ids.shape, f);

    CHECK(run_step_with("input_ids", ids_f32, NULL, NULL, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"input_ids\"");
    CHECK(run_step_with("input_ids", ids_1d, NULL, NULL, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"input_ids\"");
    CHECK(run_step_with("input_ids", ids_big, NULL, NULL, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"input_ids\"");
    CHECK_CONTAINS(err.message, "[0, 3] is 152064");
    CHECK(run_step_with("attention_mask", mask_short, NULL, NULL, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"attention_mask\"");
    CHECK_CONTAINS(err.message, "[1, 11]");
    CHECK(run_step_with("attention_mask", mask_f32, NULL, NULL, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"attention_mask\"");
    CHECK(run_step_with("attn_mask", mask, NULL, NULL, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"attn_mask\"");
    CHECK(run_step_with("attention_mask", mask, "dtype", "float16", &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"dtype\"");

    /* The C entry point checks its output too. */
    ds_tensor out;
    ds_step_context ctx = {.backend = cpu};
    REQUIRE(ds_tensor_alloc(cpu, DS_F16, 3, (const int64_t[]){1, 11, HIDDEN}, &out, &err) ==
            DS_OK);
    CHECK(ds_qwen_image_text_encoder_forward(&model, &ctx, &ids, NULL, &out, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "output \"hidden_states\"");
    ds_tensor_free(&out);
}

static void test_cancelled(void)
{
    ds_error err;
    REQUIRE(model_ready);
    ds_step_context ctx = {.backend = cpu, .cancelled = test_always_cancelled};
    ds_tensor ids = golden_tensor("ids_single"), out;
    REQUIRE(ds_tensor_alloc(cpu, DS_F32, 3, (const int64_t[]){1, 11, HIDDEN}, &out, &err) ==
            DS_OK);
    CHECK(ds_qwen_image_text_encoder_forward(&model, &ctx, &ids, NULL, &out, &err) ==
          DS_ERR_CANCELLED);
    CHECK_CONTAINS(err.message, "cancelled");
    ds_tensor_free(&out);
}

/* ---- encode_prompt (tests/golden/make_qwen_image_encode_prompt_golden.py) ---- */

static const char *const prompt_cases[] = {"short", "long", "cjk"};

static ds_tensor prompt_golden(const char *name)
{
    const ds_sd_entry *e = ds_state_dict_find(&prompt_golden_file->tensors, name);
    if (!e)
        return (ds_tensor){0};
    const ds_tensor_view *v = &e->tensor;
    return ds_tensor_wrap(cpu, v->dtype, v->ndim, v->shape, (void *)v->data);
}

/* The prompt text of a golden case, NUL-terminated (static storage). */
static const char *golden_prompt(const char *name)
{
    static char text[1024];
    char key[64];
    snprintf(key, sizeof key, "prompt_%s", name);
    ds_tensor t = prompt_golden(key);
    size_t n = t.data ? (size_t)t.shape[0] : 0;
    if (n >= sizeof text)
        n = 0;
    memcpy(text, t.data ? t.data : "", n);
    text[n] = '\0';
    return text;
}

/* Runs encode_prompt with these parameters (NULL value: left out); out is the caller's. */
static int run_encode(const ds_step_context *ctx, const char *prompt, const char *tokenizer,
                      const char *dtype, ds_step_io *out, ds_error *err)
{
    const ds_model_step *step = ds_pipeline_class_step_find(model.cls->name, "encode_prompt");
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

/* One golden case through the step: prompt_emb within `limit`, the mask equal. */
static void check_encode_case(const char *name, const char *tokenizer, const char *dtype,
                              double limit)
{
    ds_error err;
    ds_step_io out;
    char key[64];
    const char *suffix = model_ready == 2 ? "bf16" : "f32";
    ds_step_context ctx = {.backend = cpu};
    ds_step_io_init(&out);
    double start = test_now();
    int rc = run_encode(&ctx, golden_prompt(name), tokenizer, dtype, &out, &err);
    fprintf(stderr, "  encode_prompt %s (%s): %.2f s\n", name, suffix, test_now() - start);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    snprintf(key, sizeof key, "prompt_emb_%s_%s", name, suffix);
    ds_tensor want = prompt_golden(key);
    snprintf(key, sizeof key, "prompt_emb_mask_%s", name);
    ds_tensor want_mask = prompt_golden(key);
    const ds_tensor *emb = ds_step_io_tensor(&out, "prompt_emb");
    const ds_tensor *mask = ds_step_io_tensor(&out, "prompt_emb_mask");
    REQUIRE(want.data && want_mask.data);
    CHECK(emb && emb->ndim == 3 && emb->shape[0] == 1 && emb->shape[1] == want.shape[1] &&
          emb->shape[2] == HIDDEN && emb->dtype == want.dtype);
    CHECK(mask && mask->dtype == DS_I64 && mask->ndim == 2 && mask->shape[1] == want.shape[1] &&
          memcmp(mask->data, want_mask.data, (size_t)want.shape[1] * 8) == 0);
    if (rc == DS_OK && emb && emb->shape[1] == want.shape[1]) {
        double rel = test_rel_l2_at(emb, 0, &want, 0, 0);
        fprintf(stderr, "  encode_prompt %s %s: L = %lld, relative L2 vs upstream %.3e\n", name,
                suffix, (long long)want.shape[1], rel);
        CHECK(rel < limit);
    }
    ds_step_io_free(&out);
}

static char tokenizer_path[1024];

static void test_encode_prompt_f32(void)
{
    REQUIRE(model_ready == 1 && prompt_golden_file);
    for (size_t i = 0; i < sizeof prompt_cases / sizeof prompt_cases[0]; i++)
        check_encode_case(prompt_cases[i], tokenizer_path, "float32", 1e-4);
}

/* Upstream's layout: <root>/Qwen-Image/text_encoder/<file> and <root>/Qwen-Image/tokenizer/. */
static void test_encode_prompt_finds_tokenizer(void)
{
    REQUIRE(model_ready == 1);
    char root[] = "/tmp/ds-te-layout-XXXXXX", path[1400], tok_link[1400], abs_tok[PATH_MAX];
    REQUIRE(mkdtemp(root));
    REQUIRE(realpath(tokenizer_path, abs_tok));
    snprintf(path, sizeof path, "%s/Qwen-Image", root);
    REQUIRE(mkdir(path, 0700) == 0);
    snprintf(tok_link, sizeof tok_link, "%s/Qwen-Image/tokenizer", root);
    REQUIRE(symlink(abs_tok, tok_link) == 0);
    snprintf(path, sizeof path, "%s/Qwen-Image/text_encoder", root);
    REQUIRE(mkdir(path, 0700) == 0);
    snprintf(path, sizeof path, "%s/Qwen-Image/text_encoder/model-00001-of-00004.safetensors",
             root);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fclose(f);
    ds_model_file file = {.path = path};
    ds_model_files files = {.files = &file, .count = 1};
    model.files = &files;
    check_encode_case("short", NULL, "float32", 1e-4);

    /* The same layout without tokenizer/: the error names the folder looked for. */
    ds_error err;
    ds_step_io out;
    ds_step_context ctx = {.backend = cpu};
    char dir[1400];
    REQUIRE(unlink(tok_link) == 0);
    snprintf(dir, sizeof dir, "%s/Qwen-Image/tokenizer", root);
    ds_step_io_init(&out);
    CHECK(run_encode(&ctx, "a cat", NULL, NULL, &out, &err) == DS_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.message, dir);
    CHECK_CONTAINS(err.message, "beside the model files");
    ds_step_io_free(&out);
    model.files = NULL;
    unlink(path);
    snprintf(path, sizeof path, "%s/Qwen-Image/text_encoder", root);
    rmdir(path);
    snprintf(path, sizeof path, "%s/Qwen-Image", root);
    rmdir(path);
    rmdir(root);
}

/* Reads what `fn` writes to stderr (the log), at most cap - 1 bytes. */
static void capture_stderr(void (*fn)(void *), void *arg, char *buf, size_t cap)
{
    char name[] = "/tmp/ds-te-log-XXXXXX";
    int fd = mkstemp(name), saved = dup(2);
    buf[0] = '\0';
    if (fd < 0 || saved < 0)
        return;
    fflush(stderr);
    dup2(fd, 2);
    fn(arg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    ssize_t n = pread(fd, buf, cap - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    close(fd);
    unlink(name);
}

typedef struct long_prompt_run {
    const char *prompt;
    int rc;
    ds_error err;
} long_prompt_run;

/* The prompt with a cancelled context: tokenization and its checks run, the layers do not. */
static void run_cancelled(void *arg)
{
    long_prompt_run *r = arg;
    ds_step_io out;
    ds_step_context ctx = {.backend = cpu, .cancelled = test_always_cancelled};
    ds_step_io_init(&out);
    r->rc = run_encode(&ctx, r->prompt, tokenizer_path, "float32", &out, &r->err);
    ds_step_io_free(&out);
}

/* `words` copies of " cat": one token each. */
static char *repeated_prompt(size_t words)
{
    char *p = malloc(words * 4 + 1);
    if (!p)
        return NULL;
    for (size_t i = 0; i < words; i++)
        memcpy(p + 4 * i, " cat", 4);
    p[words * 4] = '\0';
    return p;
}

static void test_encode_prompt_edges(void)
{
    ds_error err;
    ds_step_io out;
    ds_step_context ctx = {.backend = cpu};
    REQUIRE(model_ready == 1);

    /* The empty prompt keeps the 5 suffix tokens, as upstream's empty negative prompt. */
    ds_step_io_init(&out);
    int rc = run_encode(&ctx, "", tokenizer_path, "float32", &out, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    const ds_tensor *emb = ds_step_io_tensor(&out, "prompt_emb");
    const ds_tensor *mask = ds_step_io_tensor(&out, "prompt_emb_mask");
    CHECK(emb && emb->shape[1] == 5 && mask && mask->shape[1] == 5);
    ds_step_io_free(&out);

    /* 4096 prompt tokens + the 5-token suffix: over the limit, refused before any compute. */
    char *big = repeated_prompt(4096);
    REQUIRE(big);
    ds_step_io_init(&out);
    CHECK(run_encode(&ctx, big, tokenizer_path, NULL, &out, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "requires 4101 tokens");
    CHECK_CONTAINS(err.message, "limit of 4096");
    CHECK(out.tensor_count == 0);
    ds_step_io_free(&out);
    free(big);

    /* 1024 templated tokens: upstream's warning, word for word, then the forward. */
    char *warned = repeated_prompt(1024 - 39), log[4096];
    REQUIRE(warned);
    long_prompt_run r = {.prompt = warned};
    capture_stderr(run_cancelled, &r, log, sizeof log);
    CHECK(r.rc == DS_ERR_CANCELLED);
    CHECK_CONTAINS(log, "Warning!!! QwenImage model was trained on prompts up to 512 tokens. "
                        "Current prompt requires 990 tokens, which may lead to unpredictable "
                        "behavior.");
    free(warned);
    warned = repeated_prompt(1023 - 39);
    REQUIRE(warned);
    r = (long_prompt_run){.prompt = warned};
    capture_stderr(run_cancelled, &r, log, sizeof log);
    CHECK(r.rc == DS_ERR_CANCELLED);
    CHECK(strstr(log, "Warning!!!") == NULL);
    free(warned);

    /* A missing folder, the parameter's: named. No files and no parameter: says what to give. */
    ds_step_io_init(&out);
    CHECK(run_encode(&ctx, "a cat", "/nonexistent/tokenizer", NULL, &out, &err) ==
          DS_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.message, "/nonexistent/tokenizer");
    CHECK(run_encode(&ctx, "a cat", NULL, NULL, &out, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"tokenizer\" parameter");
    /* A folder without tokenizer files. */
    CHECK(run_encode(&ctx, "a cat", "/tmp", NULL, &out, &err) == DS_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.message, "tokenizer folder /tmp");
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

static void test_encode_prompt_bf16(void)
{
    REQUIRE(model_ready == 2 && prompt_golden_file);
    /* No dtype: a bf16 checkpoint computes in bf16, as the pipeline's default. */
    for (size_t i = 0; i < sizeof prompt_cases / sizeof prompt_cases[0]; i++)
        check_encode_case(prompt_cases[i], tokenizer_path, NULL, 2e-2);
}

static void test_bf16_golden(void)
{
    REQUIRE(model_ready);
    double start = test_now();
    model_to_bf16();
    fprintf(stderr, "  weights to bf16: %.2f s\n", test_now() - start);
    check_case("single", DS_BF16, 2e-2);
    check_case("padded", DS_BF16, 2e-2);
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
    snprintf(path, sizeof path, "%s/%s", root ? root : "tests/data", PROMPT_GOLDEN);
    if (ds_safetensors_open(path, 0, &prompt_golden_file, &err) != DS_OK) {
        fprintf(stderr, "setup: %s\n", err.message);
        return 1;
    }
    snprintf(tokenizer_path, sizeof tokenizer_path, "%s/qwen_tokenizer",
             root ? root : "tests/data");
    RUN(test_seeded_weights_match_python);
    double start = test_now();
    if (!build_model())
        fprintf(stderr, "setup: could not build the seeded model\n");
    fprintf(stderr, "  seeded f32 weights: %.2f s\n", test_now() - start);
    RUN(test_f32_golden);
    RUN(test_step);
    RUN(test_padding_mask);
    RUN(test_input_checks);
    RUN(test_cancelled);
    RUN(test_encode_prompt_f32);
    RUN(test_encode_prompt_finds_tokenizer);
    RUN(test_encode_prompt_edges);
    RUN(test_bf16_golden);
    RUN(test_encode_prompt_bf16);
    if (model_ready)
        free_model();
    ds_safetensors_close(golden);
    ds_safetensors_close(prompt_golden_file);
    ds_backend_destroy(cpu);
    return test_summary();
}
