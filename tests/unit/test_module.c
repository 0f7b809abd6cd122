/* The module-table engine (models/module.h) on a toy model: the parameter tree it declares
 * (names, shapes, order, optional and repeated modules, dims from kwargs), the copies it counts
 * in a loaded tree, and a unit's weights, bound as views or acquired from a VRAM manager, each
 * compared with the loaded tensor it must be, and the manager's units by name; then instances
 * declared with their own widths, units registered in an order of their own, and a 1x1 conv
 * bound as a Linear's weight. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernels/ops.h"
#include "models/module.h"
#include "test.h"

static ds_backend *cpu;

typedef struct head_weights {
    ds_tensor embed;
    ds_tensor extra;
    ds__linear_weights proj;
} head_weights;

typedef struct block_weights {
    ds_tensor norm;
    ds_tensor fc;
    ds__linear_weights conv;
} block_weights;

enum { KW_ROWS, KW_EXTRA, KW_BLOCKS };

static const char *const head_units[] = {"head"};
static const char *const block_units[] = {"", "mix"};
static const ds_module head_modules[] = {
    {"embed", DS_MODULE_EMBEDDING, 2, {DS_MODULE_DIM(KW_ROWS), 4}, DS_MODULE_NO_UNIT,
     offsetof(head_weights, embed), 0},
    {"extra", DS_MODULE_TENSOR, 1, {2}, DS_MODULE_NO_UNIT, offsetof(head_weights, extra),
     DS_MODULE_IF(KW_EXTRA)},
    {"proj", DS_MODULE_LINEAR, 2, {3, 4}, 0, offsetof(head_weights, proj), 0},
};
static const ds_module block_modules[] = {
    {"norm", DS_MODULE_NORM, 1, {4}, 0, offsetof(block_weights, norm), 0},
    {"fc", DS_MODULE_LINEAR_NO_BIAS, 2, {4, 4}, 1, offsetof(block_weights, fc), 0},
    {"conv", DS_MODULE_CONV, 3, {2, 4, 3}, 1, offsetof(block_weights, conv), 0},
};
static const ds_module_group groups[] = {
    {"", 0, head_modules, 3, head_units, 1},
    {"blocks.%lld.", DS_MODULE_DIM(KW_BLOCKS), block_modules, 3, block_units, 2},
};
static const ds_module_model toy = {"Toy", "toy", groups, 2};

/* Declares the toy tree and gives every parameter data: element k of the i-th is i + k/100. */
static int build(const int64_t *dims, ds_loaded_model *m, float **data)
{
    ds_error err;
    memset(m, 0, sizeof *m);
    ds_state_dict_init(&m->params);
    if (ds_module_declare(&toy, dims, &m->params, &err) != DS_OK)
        return 0;
    size_t total = 0;
    for (size_t i = 0; i < m->params.count; i++)
        total += m->params.entries[i].tensor.nbytes / sizeof(float);
    float *p = *data = malloc(total * sizeof *p);
    for (size_t i = 0; p && i < m->params.count; i++) {
        ds_tensor_view *v = &m->params.entries[i].tensor;
        size_t n = v->nbytes / sizeof(float);
        for (size_t k = 0; k < n; k++)
            p[k] = (float)i + (float)k / 100.0f;
        v->data = p;
        p += n;
    }
    return *data != NULL;
}

static const ds_tensor_view *param(const ds_loaded_model *m, const char *name)
{
    const ds_sd_entry *e = ds_state_dict_find(&m->params, name);
    return e ? &e->tensor : NULL;
}

/* The operand holds exactly the loaded parameter's values and shape. */
static int same(const ds_tensor *t, const ds_loaded_model *m, const char *name)
{
    const ds_tensor_view *v = param(m, name);
    return v && t->data && t->dtype == DS_F32 && t->ndim == v->ndim &&
           memcmp(t->shape, v->shape, (size_t)v->ndim * sizeof *v->shape) == 0 &&
           memcmp(t->data, v->data, v->nbytes) == 0;
}

static void test_declare(void)
{
    static const char *const want[] = {
        "embed.weight",          "proj.weight",          "proj.bias",
        "blocks.0.norm.weight",  "blocks.0.fc.weight",   "blocks.0.conv.weight",
        "blocks.0.conv.bias",    "blocks.1.norm.weight", "blocks.1.fc.weight",
        "blocks.1.conv.weight",  "blocks.1.conv.bias",
    };
    ds_state_dict params;
    ds_error err;
    ds_state_dict_init(&params);
    REQUIRE(ds_module_declare(&toy, (const int64_t[]){5, 0, 2}, &params, &err) == DS_OK);
    CHECK(params.count == sizeof want / sizeof want[0]);
    for (size_t i = 0; i < params.count && i < sizeof want / sizeof want[0]; i++)
        CHECK_STR_EQ(params.entries[i].name, want[i]);
    const ds_sd_entry *e = ds_state_dict_find(&params, "embed.weight");
    CHECK(e && e->tensor.ndim == 2 && e->tensor.shape[0] == 5 && e->tensor.shape[1] == 4);
    e = ds_state_dict_find(&params, "blocks.1.conv.weight");
    CHECK(e && e->tensor.ndim == 3 && e->tensor.shape[2] == 3 && e->tensor.dtype == DS_F32);
    e = ds_state_dict_find(&params, "blocks.1.conv.bias");
    CHECK(e && e->tensor.ndim == 1 && e->tensor.shape[0] == 2);
    ds_state_dict_free(&params);

    /* The optional module, right where the table puts it. */
    ds_state_dict_init(&params);
    REQUIRE(ds_module_declare(&toy, (const int64_t[]){5, 1, 0}, &params, &err) == DS_OK);
    REQUIRE(params.count == 4);
    CHECK_STR_EQ(params.entries[1].name, "extra");
    CHECK_STR_EQ(params.entries[3].name, "proj.bias");
    ds_state_dict_free(&params);
}

static void test_bound(void)
{
    ds_loaded_model m;
    float *data = NULL;
    ds_error err;
    REQUIRE(build((const int64_t[]){5, 0, 3}, &m, &data));
    CHECK(ds_module_count(&toy, &m, 0) == 1 && ds_module_count(&toy, &m, 1) == 3);
    const ds_tensor_view *proj = ds_module_find(&toy, &m, 0, 0, offsetof(head_weights, proj));
    CHECK(proj && proj == param(&m, "proj.weight"));
    CHECK(!ds_module_find(&toy, &m, 0, 0, offsetof(head_weights, extra)));

    ds_module_run run;
    block_weights w;
    head_weights h;
    REQUIRE(ds_module_open(&run, &toy, &m, cpu, NULL, 1, "forward", &err) == DS_OK);
    CHECK(run.vram == NULL && run.counts[1] == 3);
    REQUIRE(ds_module_use(&run, 1, 2, 1, &w, &err) == DS_OK);
    CHECK(same(&w.fc, &m, "blocks.2.fc.weight"));
    CHECK(same(&w.conv.weight, &m, "blocks.2.conv.weight"));
    CHECK(same(&w.conv.bias, &m, "blocks.2.conv.bias"));
    /* In host memory a bound weight is the loaded tensor itself, no copy. */
    CHECK(w.fc.data == param(&m, "blocks.2.fc.weight")->data);
    REQUIRE(ds_module_use(&run, 0, 0, 0, &h, &err) == DS_OK);
    CHECK(same(&h.proj.weight, &m, "proj.weight") && same(&h.proj.bias, &m, "proj.bias"));
    CHECK(ds_module_done(&run, &err) == DS_OK);
    REQUIRE(ds_module_bind(&toy, &m, &run.ws, 0, 0, DS_MODULE_NO_UNIT, &h, &err) == DS_OK);
    CHECK(same(&h.embed, &m, "embed.weight"));
    ds_module_close(&run);

    /* A tree without the parameter: the binding names it. */
    ds_tensor_view *fc = (ds_tensor_view *)param(&m, "blocks.1.fc.weight");
    const void *saved = fc->data;
    fc->data = NULL;
    REQUIRE(ds_module_open(&run, &toy, &m, cpu, NULL, 1, "forward", &err) == DS_OK);
    CHECK(ds_module_use(&run, 1, 1, 1, &w, &err) == DS_ERR_FAILED_PRECONDITION);
    CHECK_CONTAINS(err.message, "Toy: parameter \"blocks.1.fc.weight\" is not loaded");
    ds_module_close(&run);
    fc->data = saved;
    ds_state_dict_free(&m.params);
    free(data);
}

static char loaded[16][64];
static int loaded_count;

static void observe(void *ctx, ds_vram_event_kind kind, const char *model, const char *unit,
                    size_t bytes)
{
    (void)ctx;
    (void)model;
    (void)bytes;
    if (kind == DS_VRAM_EVENT_LOAD && loaded_count < 16)
        snprintf(loaded[loaded_count++], sizeof loaded[0], "%s", unit);
}

static void test_managed(void)
{
    ds_loaded_model m;
    float *data = NULL;
    ds_vram_manager *mgr = NULL;
    ds_error err;
    REQUIRE(build((const int64_t[]){5, 0, 2}, &m, &data));
    REQUIRE(ds_vram_manager_create(cpu, DS_VRAM_UNLIMITED, 0, &mgr, &err) == DS_OK);
    ds_vram_set_observer(mgr, observe, NULL);
    ds_module_run run;
    block_weights w;
    head_weights h;
    REQUIRE(ds_module_open(&run, &toy, &m, cpu, mgr, 1, "forward", &err) == DS_OK);
    REQUIRE(run.vram != NULL);
    ds_vram_model_stats st;
    ds_vram_model_stats_get(run.vram, &st);
    CHECK(st.unit_count == 5); /* head, then each block's two */
    CHECK(ds_module_reserve(&run, "forward: activations", 1000, &err) == DS_OK);
    REQUIRE(ds_module_use(&run, 0, 0, 0, &h, &err) == DS_OK);
    CHECK(same(&h.proj.weight, &m, "proj.weight") && same(&h.proj.bias, &m, "proj.bias"));
    REQUIRE(ds_module_use(&run, 1, 1, 0, &w, &err) == DS_OK);
    CHECK(same(&w.norm, &m, "blocks.1.norm.weight"));
    REQUIRE(ds_module_use(&run, 1, 1, 1, &w, &err) == DS_OK);
    CHECK(same(&w.fc, &m, "blocks.1.fc.weight") && same(&w.conv.weight, &m, "blocks.1.conv.weight") &&
          same(&w.conv.bias, &m, "blocks.1.conv.bias"));
    /* Acquired copies in the manager's memory, not the tree's. */
    CHECK(w.fc.data != param(&m, "blocks.1.fc.weight")->data);
    CHECK(ds_module_done(&run, &err) == DS_OK);
    REQUIRE(loaded_count == 3);
    CHECK_STR_EQ(loaded[0], "head");
    CHECK_STR_EQ(loaded[1], "blocks.1");
    CHECK_STR_EQ(loaded[2], "blocks.1.mix");
    ds_vram_stats vs;
    ds_vram_stats_get(mgr, &vs);
    CHECK(vs.activation_bytes == 1000);
    ds_module_close(&run);
    ds_vram_stats_get(mgr, &vs);
    CHECK(vs.activation_bytes == 0);

    /* A second forward finds the registration. */
    ds_vram_model *first = run.vram;
    REQUIRE(ds_module_open(&run, &toy, &m, cpu, mgr, 1, "forward", &err) == DS_OK);
    CHECK(run.vram == first);
    ds_module_close(&run);
    ds_vram_manager_destroy(mgr);
    ds_state_dict_free(&m.params);
    free(data);
}


/* Rewrites the tree's parameters as bf16 (rounded from their f32 values) into *half. */
static int to_bf16(ds_loaded_model *m, uint16_t **half)
{
    size_t total = 0;
    for (size_t i = 0; i < m->params.count; i++)
        total += (size_t)ds_tensor_view_numel(&m->params.entries[i].tensor);
    uint16_t *p = *half = malloc(total * sizeof *p);
    for (size_t i = 0; p && i < m->params.count; i++) {
        ds_tensor_view *v = &m->params.entries[i].tensor;
        size_t n = (size_t)ds_tensor_view_numel(v);
        ds_convert_from_f32(v->data, n, DS_BF16, p);
        v->data = p;
        v->dtype = DS_BF16;
        v->nbytes = n * sizeof *p;
        p += n;
    }
    return *half != NULL;
}

/* A bf16 parameter's values widened to f32, compared with an operand. */
static int widened(const ds_tensor *t, const ds_loaded_model *m, const char *name)
{
    const ds_tensor_view *v = param(m, name);
    if (!v || !t->data || t->dtype != DS_F32 || v->dtype != DS_BF16)
        return 0;
    size_t n = (size_t)ds_tensor_view_numel(v);
    float *f = malloc(n * sizeof *f);
    if (!f)
        return 0;
    ds_convert_to_f32(v->data, DS_BF16, n, f);
    int eq = memcmp(f, t->data, n * sizeof *f) == 0;
    free(f);
    return eq;
}

/* A manager of converted weights only (ds_step_context.convert, the CPU daemon's default): an
 * f32 tree at f32 compute never registers and binds its weights in place; the same tree in
 * bf16 registers at f32 compute, its Linear weights acquired as f32 copies of the bf16 values,
 * converted once (a second forward hits), activations not counted; at bf16 compute it is bound
 * in place again, and past the budget at f32 too (the linear widens per call). */
static void test_convert_only(void)
{
    ds_loaded_model m;
    float *data = NULL;
    uint16_t *half = NULL;
    ds_vram_manager *conv = NULL;
    ds_error err;
    ds_module_run run;
    block_weights w;
    ds_vram_model_stats ms;
    ds_vram_stats vs;
    REQUIRE(build((const int64_t[]){5, 0, 2}, &m, &data));
    REQUIRE(ds_vram_manager_create(cpu, DS_VRAM_UNLIMITED, 0, &conv, &err) == DS_OK);

    REQUIRE(ds_module_open_compute(&run, &toy, &m, cpu, NULL, conv, DS_F32, 1, "forward", &err) ==
            DS_OK);
    CHECK(run.vram == NULL && !ds_vram_owner_stats(conv, &m, &ms));
    REQUIRE(ds_module_use(&run, 1, 1, 1, &w, &err) == DS_OK);
    CHECK(w.fc.data == param(&m, "blocks.1.fc.weight")->data);
    ds_module_close(&run);

    REQUIRE(to_bf16(&m, &half));
    REQUIRE(ds_module_open_compute(&run, &toy, &m, cpu, NULL, conv, DS_F32, 1, "forward", &err) ==
            DS_OK);
    REQUIRE(run.vram != NULL);
    CHECK(run.convert_only);
    CHECK(ds_module_reserve(&run, "forward: activations", 1000, &err) == DS_OK);
    REQUIRE(ds_module_use(&run, 1, 1, 1, &w, &err) == DS_OK);
    CHECK(widened(&w.fc, &m, "blocks.1.fc.weight"));
    /* Not a Linear's weight: kept in its operand dtype, as stored. */
    CHECK(w.conv.weight.dtype == DS_BF16 && w.conv.bias.dtype == DS_BF16);
    ds_vram_model *first = run.vram;
    ds_module_close(&run);
    ds_vram_stats_get(conv, &vs);
    CHECK(vs.activation_bytes == 0 && vs.peak_bytes == vs.resident_bytes && vs.loads == 1);
    REQUIRE(ds_module_open_compute(&run, &toy, &m, cpu, NULL, conv, DS_F32, 1, "forward", &err) ==
            DS_OK);
    CHECK(run.vram == first);
    REQUIRE(ds_module_use(&run, 1, 1, 1, &w, &err) == DS_OK);
    CHECK(widened(&w.fc, &m, "blocks.1.fc.weight"));
    ds_module_close(&run);
    ds_vram_stats_get(conv, &vs);
    CHECK(vs.loads == 1 && vs.hits == 1);

    REQUIRE(ds_module_open_compute(&run, &toy, &m, cpu, NULL, conv, DS_BF16, 1, "forward", &err) ==
            DS_OK);
    CHECK(run.vram == NULL && !ds_vram_owner_stats(conv, &m, &ms));
    REQUIRE(ds_module_use(&run, 1, 1, 1, &w, &err) == DS_OK);
    CHECK(w.fc.data == param(&m, "blocks.1.fc.weight")->data && w.fc.dtype == DS_BF16);
    ds_module_close(&run);

    REQUIRE(ds_vram_set_budget(conv, 256, &err) == DS_OK);
    REQUIRE(ds_module_open_compute(&run, &toy, &m, cpu, NULL, conv, DS_F32, 1, "forward", &err) ==
            DS_OK);
    CHECK(run.vram == NULL && !ds_vram_owner_stats(conv, &m, &ms));
    REQUIRE(ds_module_use(&run, 1, 1, 1, &w, &err) == DS_OK);
    CHECK(w.fc.data == param(&m, "blocks.1.fc.weight")->data && w.fc.dtype == DS_BF16);
    ds_module_close(&run);

    if (m.release_hook)
        m.release_hook(m.release_hook_ctx, &m);
    ds_vram_manager_destroy(conv);
    ds_state_dict_free(&m.params);
    free(data);
    free(half);
}

/* ---- Instances with their own dims, a unit order, a 1x1 conv as a Linear ---- */

typedef struct pair_weights {
    ds_tensor norm;
    ds__linear_weights qkv;  /* DS_MODULE_CONV_LINEAR */
    ds__linear_weights conv; /* DS_MODULE_CONV, optional */
} pair_weights;

enum { P_IN, P_OUT, P_CONV };
static const ds_module pair_template[] = {
    {"norm.gamma", DS_MODULE_TENSOR, 3, {DS_MODULE_DIM(P_IN), 1, 1}, 0,
     offsetof(pair_weights, norm), 0},
    {"qkv", DS_MODULE_CONV_LINEAR, 4, {DS_MODULE_DIM(P_OUT), DS_MODULE_DIM(P_IN), 1, 1}, 0,
     offsetof(pair_weights, qkv), 0},
    {"conv", DS_MODULE_CONV, 4, {DS_MODULE_DIM(P_OUT), DS_MODULE_DIM(P_IN), 1, 1}, 0,
     offsetof(pair_weights, conv), DS_MODULE_IF(P_CONV)},
};
static const char *const pair_units[] = {""};

/* Two instances, "a." (2 -> 6, with conv) and "b." (3 -> 4, without), declared in that order. */
static ds_module pair_a[3], pair_b[3];
static ds_module_group pair_groups[2];
static const ds_module_model pairs = {"Pairs", "pairs", pair_groups, 2};

static void build_pairs(void)
{
    size_t na, nb;
    ds_module_instance(pair_template, 3, (const int64_t[]){2, 6, 1}, pair_a, &na);
    ds_module_instance(pair_template, 3, (const int64_t[]){3, 4, 0}, pair_b, &nb);
    pair_groups[0] = (ds_module_group){"a.", 0, pair_a, na, pair_units, 1};
    pair_groups[1] = (ds_module_group){"b.", 0, pair_b, nb, pair_units, 1};
}

static void test_instances(void)
{
    build_pairs();
    CHECK(pair_groups[0].count == 3 && pair_groups[1].count == 2);
    CHECK(pair_a[1].shape[0] == 6 && pair_a[1].shape[1] == 2 && pair_a[1].when == 0);
    CHECK(pair_b[1].shape[0] == 4 && pair_b[1].shape[1] == 3);
    static const char *const want[] = {"a.norm.gamma", "a.qkv.weight", "a.qkv.bias",
                                       "a.conv.weight", "a.conv.bias", "b.norm.gamma",
                                       "b.qkv.weight", "b.qkv.bias"};
    ds_state_dict params;
    ds_error err;
    ds_state_dict_init(&params);
    REQUIRE(ds_module_declare(&pairs, NULL, &params, &err) == DS_OK);
    CHECK(params.count == sizeof want / sizeof want[0]);
    for (size_t i = 0; i < params.count && i < sizeof want / sizeof want[0]; i++)
        CHECK_STR_EQ(params.entries[i].name, want[i]);
    const ds_sd_entry *e = ds_state_dict_find(&params, "b.norm.gamma");
    CHECK(e && e->tensor.ndim == 3 && e->tensor.shape[0] == 3);
    e = ds_state_dict_find(&params, "a.conv.weight");
    CHECK(e && e->tensor.ndim == 4 && e->tensor.shape[0] == 6 && e->tensor.shape[1] == 2);
    ds_state_dict_free(&params);
}

/* The pairs' tree, every weight of "a." stored as float8 e4m3 1.0 (0x38), the rest f32. */
static int build_pairs_model(ds_loaded_model *m, float **data, uint8_t *f8)
{
    ds_error err;
    build_pairs();
    memset(m, 0, sizeof *m);
    ds_state_dict_init(&m->params);
    if (ds_module_declare(&pairs, NULL, &m->params, &err) != DS_OK)
        return 0;
    float *p = *data = calloc(64, sizeof *p);
    size_t used = 0;
    for (size_t i = 0; p && i < m->params.count; i++) {
        ds_tensor_view *v = &m->params.entries[i].tensor;
        if (strcmp(m->params.entries[i].name, "a.qkv.weight") == 0 ||
            strcmp(m->params.entries[i].name, "a.conv.weight") == 0) {
            v->dtype = DS_F8_E4M3;
            v->nbytes /= sizeof(float);
            memset(f8, 0x38, v->nbytes);
            v->data = f8;
            f8 += v->nbytes;
            continue;
        }
        v->data = p + used;
        used += v->nbytes / sizeof(float);
    }
    return *data != NULL;
}

static void test_ordered(void)
{
    ds_loaded_model m;
    float *data = NULL;
    uint8_t f8[64];
    ds_vram_manager *mgr = NULL;
    ds_error err;
    REQUIRE(build_pairs_model(&m, &data, f8));

    /* Bound: the CONV_LINEAR weight keeps its float8 storage, the conv's is widened. */
    ds_module_run run;
    pair_weights w;
    memset(&w, 0, sizeof w);
    REQUIRE(ds_module_open(&run, &pairs, &m, cpu, NULL, 0, "forward", &err) == DS_OK);
    REQUIRE(ds_module_use(&run, 0, 0, 0, &w, &err) == DS_OK);
    CHECK(w.qkv.weight.dtype == DS_F8_E4M3 && w.qkv.bias.dtype == DS_F32);
    CHECK(w.conv.weight.dtype == DS_F32 && ((const float *)w.conv.weight.data)[0] == 1.0f);
    ds_module_close(&run);

    /* Registered "b" first, then "a"; a plan of the second unit alone. */
    static const ds_module_unit_ref order[] = {{1, 0, 0}, {0, 0, 0}};
    REQUIRE(ds_vram_manager_create(cpu, DS_VRAM_UNLIMITED, 0, &mgr, &err) == DS_OK);
    loaded_count = 0;
    ds_vram_set_observer(mgr, observe, NULL);
    REQUIRE(ds_module_open_ordered(&run, &pairs, order, 2, &m, cpu, mgr, 0, "forward", &err) ==
            DS_OK);
    CHECK(ds_module_plan_range(&run, 1, 1, "forward", &err) == DS_OK);
    CHECK(ds_module_plan_range(&run, 1, 2, "forward", &err) == DS_ERR_INTERNAL);
    ds_vram_model_stats st;
    ds_vram_model_stats_get(run.vram, &st);
    CHECK(st.unit_count == 2);
    memset(&w, 0, sizeof w);
    REQUIRE(ds_module_use(&run, 0, 0, 0, &w, &err) == DS_OK);
    CHECK(w.qkv.weight.dtype == DS_F8_E4M3 && w.conv.weight.dtype == DS_F32);
    CHECK(same(&w.norm, &m, "a.norm.gamma"));
    memset(&w, 0, sizeof w);
    REQUIRE(ds_module_use(&run, 1, 0, 0, &w, &err) == DS_OK);
    CHECK(same(&w.norm, &m, "b.norm.gamma") && same(&w.qkv.weight, &m, "b.qkv.weight"));
    CHECK(w.conv.weight.data == NULL); /* absent from "b": left zeroed */
    REQUIRE(loaded_count == 2);
    CHECK_STR_EQ(loaded[0], "a");
    CHECK_STR_EQ(loaded[1], "b");
    /* A reservation set twice holds the second amount. */
    ds_vram_stats vs;
    CHECK(ds_module_reserve_set(&run, "forward: a", 1000, &err) == DS_OK);
    CHECK(ds_module_reserve_set(&run, "forward: b", 300, &err) == DS_OK);
    ds_vram_stats_get(mgr, &vs);
    CHECK(vs.activation_bytes == 300);
    ds_module_close(&run);

    /* A second forward finds the registration, in the same order. */
    REQUIRE(ds_module_open_ordered(&run, &pairs, order, 2, &m, cpu, mgr, 0, "forward", &err) ==
            DS_OK);
    CHECK(run.unit_total == 2 && run.manager_index[0] == 1 && run.manager_index[1] == 0);
    ds_module_close(&run);

    /* An order naming a unit twice is refused. */
    ds_vram_manager_destroy(mgr);
    mgr = NULL;
    static const ds_module_unit_ref twice[] = {{1, 0, 0}, {1, 0, 0}};
    REQUIRE(ds_vram_manager_create(cpu, DS_VRAM_UNLIMITED, 0, &mgr, &err) == DS_OK);
    CHECK(ds_module_open_ordered(&run, &pairs, twice, 2, &m, cpu, mgr, 0, "forward", &err) ==
          DS_ERR_INTERNAL);
    CHECK_CONTAINS(err.message, "unit order entry 1");
    ds_vram_manager_destroy(mgr);
    ds_state_dict_free(&m.params);
    free(data);
}

int main(void)
{
    ds_error err;
    if (ds_cpu_backend_create(1, &cpu, &err) != DS_OK) {
        fprintf(stderr, "cpu backend: %s\n", err.message);
        return 1;
    }
    RUN(test_declare);
    RUN(test_bound);
    RUN(test_managed);
    RUN(test_convert_only);
    RUN(test_instances);
    RUN(test_ordered);
    cpu->destroy(cpu);
    return test_summary();
}
