/* The Wan video DiT forward against upstream's own WanModel run through model_fn_wan_video
 * (tests/golden/make_wan_video_dit_golden.py): 2 blocks at the real width of the config row
 * each case copies, latents of 3 frames x 6 x 10 (non-square, several frames), batch 1 and 2,
 * float32 and bfloat16. Weights and inputs are regenerated bit for bit by
 * tests/tools/seeded_weights.c; only the outputs are stored. Then the step's input checks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "core/safetensors.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "models/wan_video_dit.h"
#include "golden_test.h"
#include "test.h"
#include "tools/golden_model.h"
#include "tools/seeded_weights.h"

#define WAN_CLASS "diffsynth.models.wan_video_dit.WanModel"
#define SEED 2025
#define GOLDEN "golden/wan_video_dit_2layers.safetensors"

/* The config rows' kwargs with num_layers 2, as the script builds them. */
#define KW_1_3B "\"patch_size\": [1, 2, 2], \"dim\": 1536, \"ffn_dim\": 8960, \"freq_dim\": 256, " \
                "\"text_dim\": 4096, \"out_dim\": 16, \"num_heads\": 12, \"num_layers\": 2, "    \
                "\"eps\": 1e-06"
static const char *const T2V_KWARGS = "{\"has_image_input\": false, \"in_dim\": 16, " KW_1_3B "}";
static const char *const I2V_KWARGS = "{\"has_image_input\": true, \"in_dim\": 36, " KW_1_3B "}";
static const char *const FLF2V_KWARGS =
    "{\"has_image_input\": true, \"has_image_pos_emb\": true, \"in_dim\": 36, " KW_1_3B "}";
static const char *const TI2V_KWARGS =
    "{\"has_image_input\": false, \"patch_size\": [1, 2, 2], \"in_dim\": 48, \"dim\": 3072, "
    "\"ffn_dim\": 14336, \"freq_dim\": 256, \"text_dim\": 4096, \"out_dim\": 48, "
    "\"num_heads\": 24, \"num_layers\": 2, \"eps\": 1e-06, \"seperated_timestep\": true, "
    "\"require_clip_embedding\": false, \"require_vae_embedding\": false, "
    "\"fuse_vae_embedding_in_latents\": true}";

#define VACE_CLASS "diffsynth.models.wan_video_vace.VaceWanModel"
static const char *const VACE_KWARGS =
    "{\"vace_layers\": [0, 1], \"vace_in_dim\": 96, \"patch_size\": [1, 2, 2], "
    "\"has_image_input\": false, \"dim\": 1536, \"num_heads\": 12, \"ffn_dim\": 8960, "
    "\"eps\": 1e-06}";
#define VACE_SCALE 0.75f

enum { FRAMES = 3, HEIGHT = 6, WIDTH = 10, TEXT_TOKENS = 7 };

static ds_backend *cpu;
static ds_safetensors *golden;

static ds_tensor golden_tensor(const char *name)
{
    return test_golden_tensor(cpu, golden, name);
}

/* A case's batch-2 input: seeded_weights.tensor("input.<case>.<name>", shape, SEED, 1, 0). */
typedef struct seeded_input {
    ds_tensor t;    /* f32, or bf16 after to_bf16 */
    float *data;
} seeded_input;

static int make_input(const char *c, const char *name, int ndim, const int64_t *shape,
                      seeded_input *in)
{
    char full[128];
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (uint64_t)shape[i];
    snprintf(full, sizeof full, "input.%s.%s", c, name);
    in->data = malloc(n * sizeof(float));
    if (!in->data)
        return 0;
    ds_seeded_fill(full, SEED, 1.0, 0.0f, in->data, n);
    in->t = ds_tensor_wrap(cpu, DS_F32, ndim, shape, in->data);
    return 1;
}

static void input_to_bf16(seeded_input *in)
{
    uint64_t n = ds_tensor_numel(&in->t);
    uint16_t *h = (uint16_t *)in->data;
    for (uint64_t k = 0; k < n; k++)
        h[k] = ds_f32_to_bf16(in->data[k]);
    in->t.dtype = DS_BF16;
}

/* The first `batch` items of a batch-2 input. */
static ds_tensor first(const seeded_input *in, int64_t batch)
{
    ds_tensor t = in->t;
    t.shape[0] = batch;
    return t;
}

typedef struct golden_case {
    const char *name, *kwargs;
    int64_t channels;       /* latent channels (out_dim) */
    int64_t y_channels;     /* 0: no y */
    int64_t clip;           /* CLIP tokens: 0, 257, or 514 (has_image_pos_emb) */
    int fuse;               /* fuse_vae_embedding_in_latents */
    int vace;               /* the VACE branch (hints after both blocks) */
} golden_case;

/* Runs the forward at batch 1 and 2 in the inputs' dtype and compares with
 * <case>.b{1,2}.<tag>. */
static void check_runs(const golden_case *gc, ds_loaded_model *model, ds_loaded_model *vace,
                       seeded_input *inputs, const char *tag, double limit)
{
    char tname[64];
    snprintf(tname, sizeof tname, "%s.timestep", gc->name);
    ds_tensor ts = golden_tensor(tname);
    REQUIRE(ts.data);
    for (int64_t batch = 1; batch <= 2; batch++) {
        ds_tensor lat = first(&inputs[0], batch), ctx = first(&inputs[1], batch), y, clip;
        ds_tensor t = ts;
        if (t.shape[0] == 2)
            t.shape[0] = batch;
        ds_wan_video_dit_inputs in = {.latents = &lat, .timestep = &t, .context = &ctx,
                                      .fuse_vae_embedding_in_latents = gc->fuse};
        int k = 2;
        if (gc->y_channels) {
            y = first(&inputs[k++], batch);
            in.y = &y;
        }
        if (gc->clip) {
            clip = first(&inputs[k++], batch);
            in.clip_feature = &clip;
        }
        ds_tensor vace_context;
        if (gc->vace) {
            vace_context = first(&inputs[k++], batch);
            in.vace = vace;
            in.vace_context = &vace_context;
            in.vace_scale = VACE_SCALE;
        }
        ds_tensor out;
        ds_error err;
        ds_step_context sc = {.backend = cpu};
        REQUIRE(ds_tensor_alloc(cpu, lat.dtype, 5, lat.shape, &out, &err) == DS_OK);
        int rc = ds_wan_video_dit_forward(model, &sc, &in, &out, &err);
        CHECK_MSG(rc == DS_OK, "%s b%lld %s: %s", gc->name, (long long)batch, tag, err.message);
        char gname[64];
        snprintf(gname, sizeof gname, "%s.b%lld.%s", gc->name, (long long)batch, tag);
        ds_tensor want = golden_tensor(gname);
        REQUIRE(want.data);
        if (rc == DS_OK) {
            double rel = ds_golden_rel_l2(&out, &want);
            fprintf(stderr, "  %s: rel L2 %.3g (limit %.0e)\n", gname, rel, limit);
            CHECK_MSG(rel < limit, "%s: rel L2 %g", gname, rel);
        }
        ds_tensor_free(&out);
    }
}

/* One run of the "forward" step: inputs by name, an optional VACE model of role `role`;
 * *out (when not NULL) receives a copy of noise_pred's data (caller frees). */
static int run_step_param(const ds_loaded_model *model, const ds_loaded_model *vace,
                          const char *role, const char *const *names, const ds_tensor *tensors,
                          size_t count, const char *param, const char *value, ds_tensor *out,
                          ds_error *err)
{
    const ds_model_step *step = ds_model_step_find(model->cls->steps, model->cls->step_count,
                                                   "forward");
    if (!step)
        return ds_error_set(err, DS_ERR_NOT_FOUND, "no forward step");
    ds_step_aux_model aux = {role, vace};
    ds_step_context ctx = {.backend = cpu, .aux = vace ? &aux : NULL, .aux_count = vace ? 1 : 0};
    ds_step_io in, result;
    ds_step_io_init(&in);
    ds_step_io_init(&result);
    int rc = DS_OK;
    for (size_t i = 0; rc == DS_OK && i < count; i++)
        rc = ds_step_io_add_tensor(&in, names[i], tensors[i], NULL, err);
    if (rc == DS_OK && param)
        rc = ds_step_io_add_param(&in, param, value, err);
    if (rc == DS_OK)
        rc = step->run(model, &ctx, &in, &result, err);
    const ds_tensor *noise = ds_step_io_tensor(&result, "noise_pred");
    if (rc == DS_OK && out && noise &&
        (rc = ds_tensor_alloc(cpu, noise->dtype, noise->ndim, noise->shape, out, err)) == DS_OK)
        memcpy(out->data, noise->data, ds_tensor_nbytes(noise));
    ds_step_io_free(&in);
    ds_step_io_free(&result);
    return rc;
}

static int run_step(const ds_loaded_model *model, const ds_loaded_model *vace, const char *role,
                    const char *const *names, const ds_tensor *tensors, size_t count,
                    const char *scale, ds_tensor *out, ds_error *err)
{
    return run_step_param(model, vace, role, names, tensors, count, scale ? "vace_scale" : NULL,
                          scale, out, err);
}

/* The step on the image inputs (y, clip_feature) or the per-token timestep parameter gives
 * the golden batch-1 output; without them it is refused by name. */
static void check_image_step(const golden_case *gc, ds_loaded_model *model,
                             seeded_input *inputs)
{
    char tname[64], gname[64];
    snprintf(tname, sizeof tname, "%s.timestep", gc->name);
    snprintf(gname, sizeof gname, "%s.b1.f32", gc->name);
    ds_tensor t = golden_tensor(tname);
    t.shape[0] = 1;
    const char *names[5] = {"latents", "context", "timestep", "y", "clip_feature"};
    ds_tensor args[5] = {first(&inputs[0], 1), first(&inputs[1], 1), t};
    size_t n = 3;
    if (gc->y_channels) {
        args[n++] = first(&inputs[2], 1);
        args[n++] = first(&inputs[3], 1);
    }
    const char *param = gc->fuse ? "fuse_vae_embedding_in_latents" : NULL;
    ds_tensor out;
    ds_error err;
    int rc = run_step_param(model, NULL, NULL, names, args, n, param, "true", &out, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc == DS_OK) {
        ds_tensor want = golden_tensor(gname);
        double rel = ds_golden_rel_l2(&out, &want);
        fprintf(stderr, "  %s step: rel L2 %.3g\n", gc->name, rel);
        CHECK(rel < 1e-4);
        ds_tensor_free(&out);
    }
    if (gc->fuse) {
        /* One timestep for the whole batch, as the first frame's tokens take 0. */
        rc = run_step_param(model, NULL, NULL, names, args, n, NULL, NULL, &out, &err);
        CHECK_MSG(rc == DS_OK, "%s", err.message);
        if (rc == DS_OK) {
            ds_tensor want = golden_tensor(gname);
            CHECK(ds_golden_rel_l2(&out, &want) > 1e-3);
            ds_tensor_free(&out);
        }
    } else {
        CHECK(run_step_param(model, NULL, NULL, names, args, 4, NULL, NULL, NULL, &err) ==
              DS_ERR_INVALID_ARGUMENT);
        CHECK_CONTAINS(err.message, "\"clip_feature\" is required");
        CHECK(run_step_param(model, NULL, NULL, names, args, 3, NULL, NULL, NULL, &err) ==
              DS_ERR_INVALID_ARGUMENT);
        CHECK_CONTAINS(err.message, "\"y\" is required");
    }
}

/* The step with the VACE model as aux model of role "vace" gives the golden batch-1 output;
 * its inputs are checked with messages naming them. */
static void check_vace_step(ds_loaded_model *model, ds_loaded_model *vace, seeded_input *inputs)
{
    static const char *const names[] = {"latents", "context", "timestep", "vace_context"};
    ds_tensor t = golden_tensor("vace.timestep");
    t.shape[0] = 1;
    ds_tensor args[4] = {first(&inputs[0], 1), first(&inputs[1], 1), t, first(&inputs[2], 1)};
    ds_tensor out;
    ds_error err;
    int rc = run_step(model, vace, "vace", names, args, 4, "0.75", &out, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc == DS_OK) {
        ds_tensor want = golden_tensor("vace.b1.f32");
        double rel = ds_golden_rel_l2(&out, &want);
        fprintf(stderr, "  step with aux \"vace\": rel L2 %.3g\n", rel);
        CHECK(rel < 1e-4);
        ds_tensor_free(&out);
    }
    /* Without the hints' scale the result moves: the hints count. */
    rc = run_step(model, vace, "vace", names, args, 4, "0", &out, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    if (rc == DS_OK) {
        ds_tensor want = golden_tensor("vace.b1.f32");
        CHECK(ds_golden_rel_l2(&out, &want) > 1e-3);
        ds_tensor_free(&out);
    }

    CHECK(run_step(model, vace, "vace", names, args, 3, NULL, NULL, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"vace_context\" is required");
    CHECK(run_step(model, NULL, NULL, names, args, 4, NULL, NULL, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "without a VACE model");
    CHECK(run_step(model, vace, "controlnet", names, args, 4, NULL, NULL, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"controlnet\"");

    ds_tensor bad = args[0];
    bad.shape[3] = 5; /* odd height: a view of fewer elements */
    ds_tensor odd[4] = {bad, args[1], args[2], args[3]};
    CHECK(run_step(model, vace, "vace", names, odd, 4, NULL, NULL, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"latents\"");
    CHECK_CONTAINS(err.message, "H and W even");

    ds_tensor narrow = args[1];
    narrow.shape[2] = 4000;
    narrow.shape[1] = 1;
    ds_tensor wide[4] = {args[0], narrow, args[2], args[3]};
    CHECK(run_step(model, vace, "vace", names, wide, 4, NULL, NULL, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"context\"");
    CHECK_CONTAINS(err.message, "4096");

    ds_tensor few = args[3];
    few.shape[1] = 48;
    ds_tensor vc[4] = {args[0], args[1], args[2], few};
    CHECK(run_step(model, vace, "vace", names, vc, 4, NULL, NULL, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"vace_context\"");
    CHECK_CONTAINS(err.message, "96");

    ds_tensor frames = args[3];
    frames.shape[2] = 2;
    ds_tensor vf[4] = {args[0], args[1], args[2], frames};
    CHECK(run_step(model, vace, "vace", names, vf, 4, NULL, NULL, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "frames");
}

static void run_case(const golden_case *gc)
{
    ds_loaded_model model;
    ds_golden_model_spec spec = {.model_class = WAN_CLASS, .kwargs_json = gc->kwargs,
                                 .bounds = ds_golden_bounds_wan_video_dit, .seed = SEED};
    REQUIRE(ds_golden_model_build(&spec, &model) == 0);
    ds_loaded_model vace = {0};
    ds_golden_model_spec vace_spec = {.model_class = VACE_CLASS, .kwargs_json = VACE_KWARGS,
                                      .bounds = ds_golden_bounds_wan_video_dit, .seed = SEED};
    if (gc->vace) {
        REQUIRE(ds_golden_model_build(&vace_spec, &vace) == 0);
        vace.model_class = VACE_CLASS;
    }
    seeded_input inputs[4] = {0};
    int count = 0;
    REQUIRE(make_input(gc->name, "latents", 5,
                       (const int64_t[]){2, gc->channels, FRAMES, HEIGHT, WIDTH},
                       &inputs[count++]));
    REQUIRE(make_input(gc->name, "context", 3, (const int64_t[]){2, TEXT_TOKENS, 4096},
                       &inputs[count++]));
    if (gc->y_channels)
        REQUIRE(make_input(gc->name, "y", 5,
                           (const int64_t[]){2, gc->y_channels, FRAMES, HEIGHT, WIDTH},
                           &inputs[count++]));
    if (gc->clip)
        REQUIRE(make_input(gc->name, "clip_feature", 3, (const int64_t[]){2, gc->clip, 1280},
                           &inputs[count++]));
    if (gc->vace)
        REQUIRE(make_input(gc->name, "vace_context", 5,
                           (const int64_t[]){2, 96, FRAMES, HEIGHT, WIDTH}, &inputs[count++]));
    check_runs(gc, &model, &vace, inputs, "f32", 1e-4);
    if (gc->vace)
        check_vace_step(&model, &vace, inputs);
    if (gc->y_channels || gc->fuse)
        check_image_step(gc, &model, inputs);
    ds_golden_model_to_bf16(&model);
    if (gc->vace)
        ds_golden_model_to_bf16(&vace);
    for (int i = 0; i < count; i++)
        input_to_bf16(&inputs[i]);
    check_runs(gc, &model, &vace, inputs, "bf16", 2e-2);
    for (int i = 0; i < count; i++)
        free(inputs[i].data);
    ds_golden_model_free(&model);
    if (gc->vace) {
        vace.model_class = NULL;
        ds_golden_model_free(&vace);
    }
}

static void test_t2v(void)
{
    golden_case gc = {"t2v", T2V_KWARGS, 16, 0, 0, 0, 0};
    run_case(&gc);
}

static void test_i2v(void)
{
    golden_case gc = {"i2v", I2V_KWARGS, 16, 20, 257, 0, 0};
    run_case(&gc);
}

static void test_flf2v(void)
{
    golden_case gc = {"flf2v", FLF2V_KWARGS, 16, 20, 514, 0, 0};
    run_case(&gc);
}

static void test_ti2v(void)
{
    golden_case gc = {"ti2v", TI2V_KWARGS, 48, 0, 0, 1, 0};
    run_case(&gc);
}

static void test_vace(void)
{
    golden_case gc = {"vace", T2V_KWARGS, 16, 0, 0, 0, 1};
    run_case(&gc);
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
    RUN(test_t2v);
    RUN(test_vace);
    RUN(test_i2v);
    RUN(test_flf2v);
    RUN(test_ti2v);
    ds_safetensors_close(golden);
    ds_backend_destroy(cpu);
    return test_summary();
}
