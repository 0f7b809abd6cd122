/* bench/vram: what a VRAM budget costs. One forward of the Qwen-Image DiT, timed without a
 * manager (weights used in place on the CPU, uploaded block by block elsewhere), through a
 * manager with no limit (every unit copied in once, then resident: the all-resident anchor),
 * and under budgets, where units are evicted and copied in again every forward. The anchor is
 * the unlimited manager in the same process (DESIGN §7): the ratio budget / unlimited is the
 * price of the budget. Each configuration has its own manager and its own model struct over
 * the same weight buffers, and the forwards run in rounds of one per configuration.
 *
 * Measured in the same run, for the copies a budget adds:
 *   pinned ceiling   best of several rounds of copy_to_device from a 256 MiB pinned buffer
 *                    into device memory, then a stream synchronize: the backend's bandwidth.
 *   streaming rate   after the timed forwards, one pass of acquire/release over every unit of
 *                    the model in the plan's order (input, each block's phases, output), with
 *                    no compute, under the configuration's budget and prefetch: bytes_moved /
 *                    wall time (best of --repeats passes), reported as a fraction of the
 *                    ceiling (target on a GPU: >= 0.8).
 *   hidden share     the share of the copy time that the forward does not add to the step:
 *                    1 - (T_budget - T_resident) / T_copy, clipped to [0, 1], where T_copy is
 *                    the forward's bytes moved at the streaming rate (the copy-only time of
 *                    exactly what a forward copies; a copy pass alone reserves no activations,
 *                    so it may move a little less). Target on a GPU: >= 0.9 where a unit's
 *                    compute takes longer than its copy.
 * One JSON line per configuration, then one with the ratios.
 *
 * usage: vram_bench [--backend cpu|cuda] [--threads N] [--dtype bf16|f32] [--layers N]
 *                   [--height H --width W] [--text-tokens L] [--warmup N] [--repeats N]
 *                   [--prefetch N] [--budget-gib G[,G...]] [--vram-config JSON]
 *   defaults: cpu, all CPUs, bf16 (the weights, inputs and compute), 2 layers, 256 x 256 (256
 *   image tokens), 32 text tokens, 1 warm-up, 3 timed forwards, prefetch 2, budgets of 100 %,
 *   50 %, 25 % and 0 of the weight bytes. --budget-gib replaces those budgets with byte budgets
 *   (GiB, as upstream's vram_limit; 0 = stream everything); the "none" and "unlimited" rows
 *   always run. --vram-config: upstream's eight vram_config fields as JSON
 *   (ds_vram_config_parse, computation bf16 on the chosen backend's device), set on every
 *   model, e.g. {"offload_dtype": "float8_e4m3fn", "offload_device": "cpu", ...}: an fp8
 *   offload dtype keeps the manager's slow tier in fp8. The ratios use the fastest forward of
 *   each configuration (other work on a shared machine only adds time); the medians are
 *   printed too.
 *
 * The weights are a tiled table of uniform values (bench/qwen_image_dit/dit_bench.c's fill),
 * built in memory as the class's declared tree. Every output through a manager is checked
 * bit-identical to the run without one (to the unlimited manager's when the vram_config
 * rounds the weights through an offload dtype, which the run without a manager does not).
 * On the CPU a difference is an error; on a device it is reported (bit_identical false), as
 * its kernels make no promise of bit-equal results across buffers.
 * Exit status: 0 measured, 77 backend unavailable, 1 any other error, 2 bad options. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/common/bench_model.h"
#include "bench/common/bench_util.h"
#include "kernels/ops.h"
#include "models/model_class.h"
#include "models/qwen_image_dit.h"
#include "vram/vram_config.h"
#include "vram/vram_manager.h"

#define DIT_CLASS "diffsynth.models.qwen_image_dit.QwenImageDiT"
#define MAX_BUDGETS 8
#define MAX_CONFIGS (2 + MAX_BUDGETS)
#define PINNED_BYTES ((size_t)256 << 20)
#define PINNED_COPIES 4 /* per timed round of the ceiling */
#define PINNED_ROUNDS 5

typedef struct options {
    const char *backend;
    int threads;
    ds_dtype dtype;
    int layers;
    int height, width, text_tokens;
    int warmup, repeats, prefetch;
    int budget_count; /* 0: the default percentages */
    double budget_gib[MAX_BUDGETS];
    const char *vram_config; /* NULL: none */
} options;

typedef enum config_kind { NO_MANAGER, UNLIMITED, PERCENT, BYTES } config_kind;

/* One measured configuration. */
typedef struct config {
    char name[32];
    config_kind kind;
    int percent;  /* PERCENT: of the weight bytes */
    size_t bytes; /* BYTES */
} config;


static int parse_int(const char *s, int min, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < min || v > 1 << 20)
        return 0;
    *out = (int)v;
    return 1;
}

/* A comma-separated list of budgets in GiB (finite, >= 0). */
static int parse_budgets(const char *s, options *o)
{
    o->budget_count = 0;
    while (*s) {
        char *end;
        double v = strtod(s, &end);
        if (end == s || !isfinite(v) || v < 0 || o->budget_count == MAX_BUDGETS ||
            (*end && *end != ','))
            return 0;
        o->budget_gib[o->budget_count++] = v;
        s = *end ? end + 1 : end;
    }
    return o->budget_count > 0;
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.backend = "cpu", .threads = 0, .dtype = DS_BF16, .layers = 2,
                   .height = 256, .width = 256, .text_tokens = 32, .warmup = 1, .repeats = 3,
                   .prefetch = 2};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = v != NULL;
        if (ok && strcmp(a, "--backend") == 0)
            ok = strcmp(v, "cpu") == 0 || strcmp(v, "cuda") == 0 ? (o->backend = v, 1) : 0;
        else if (ok && strcmp(a, "--threads") == 0)
            ok = parse_int(v, 0, &o->threads);
        else if (ok && strcmp(a, "--dtype") == 0)
            ok = strcmp(v, "bf16") == 0 ? (o->dtype = DS_BF16, 1)
                 : strcmp(v, "f32") == 0 ? (o->dtype = DS_F32, 1) : 0;
        else if (ok && strcmp(a, "--layers") == 0)
            ok = parse_int(v, 0, &o->layers);
        else if (ok && strcmp(a, "--height") == 0)
            ok = parse_int(v, 16, &o->height) && o->height % 16 == 0;
        else if (ok && strcmp(a, "--width") == 0)
            ok = parse_int(v, 16, &o->width) && o->width % 16 == 0;
        else if (ok && strcmp(a, "--text-tokens") == 0)
            ok = parse_int(v, 1, &o->text_tokens);
        else if (ok && strcmp(a, "--warmup") == 0)
            ok = parse_int(v, 0, &o->warmup);
        else if (ok && strcmp(a, "--repeats") == 0)
            ok = parse_int(v, 1, &o->repeats);
        else if (ok && strcmp(a, "--prefetch") == 0)
            ok = parse_int(v, 0, &o->prefetch) && o->prefetch <= 8;
        else if (ok && strcmp(a, "--budget-gib") == 0)
            ok = parse_budgets(v, o);
        else if (ok && strcmp(a, "--vram-config") == 0)
            o->vram_config = v;
        else
            ok = 0;
        if (!ok) {
            fprintf(stderr, "vram_bench: bad option %s %s\n", a, v ? v : "");
            return 0;
        }
        i++;
    }
    return 1;
}

/* "none", "unlimited", then the budgets: the default percentages or the --budget-gib list. */
static size_t make_configs(const options *o, config *c)
{
    static const int percents[] = {100, 50, 25, 0};
    size_t n = 0;
    c[n++] = (config){.name = "none", .kind = NO_MANAGER};
    c[n++] = (config){.name = "unlimited", .kind = UNLIMITED};
    if (o->budget_count == 0) {
        for (size_t i = 0; i < sizeof percents / sizeof percents[0]; i++, n++) {
            c[n] = (config){.kind = PERCENT, .percent = percents[i]};
            if (percents[i] == 0)
                snprintf(c[n].name, sizeof c[n].name, "0");
            else
                snprintf(c[n].name, sizeof c[n].name, "%d%%", percents[i]);
        }
        return n;
    }
    for (int i = 0; i < o->budget_count; i++, n++) {
        c[n] = (config){.kind = BYTES};
        snprintf(c[n].name, sizeof c[n].name, "%gGiB", o->budget_gib[i]);
        /* The pool's own GiB -> bytes rule; finite and >= 0 was checked at parsing. */
        ds_error ignored;
        ds_vram_limit_bytes(o->budget_gib[i], &c[n].bytes, &ignored);
    }
    return n;
}

typedef struct result {
    size_t budget, peak;
    double *samples; /* the timed forwards, sorted once measured */
    double moved_per_forward, copy_s_per_forward, wait_s_per_forward;
    double allocs_per_forward; /* fast-tier allocations: 0 once kept buffers are reused */
    int identical;             /* 1 / 0; -1: not compared */
    double stream_s, stream_bytes; /* the best copy-only pass; NaN when none ran */
} result;

/* Another model on the same weight buffers (the class's tree again, each view pointing where
 * `from`'s does), so that each configuration keeps its own registration and residency. */
static int share_model(const options *o, const ds_loaded_model *from, ds_loaded_model *m,
                       ds_error *err)
{
    char kwargs[64];
    memset(m, 0, sizeof *m);
    ds_state_dict_init(&m->params);
    snprintf(kwargs, sizeof kwargs, "{\"num_layers\": %d}", o->layers);
    int rc = ds_model_class_declare(from->cls, kwargs, &m->params, err);
    if (rc != DS_OK)
        return rc;
    m->cls = from->cls;
    m->model_name = from->model_name;
    for (size_t i = 0; i < m->params.count; i++)
        m->params.entries[i].tensor = from->params.entries[i].tensor;
    return DS_OK;
}

static int is_cpu(const ds_backend *b) { return strcmp(b->name, "cpu") == 0; }

static int forward_once(const ds_loaded_model *model, ds_backend *b, ds_vram_manager *mgr,
                        const ds_tensor in[3], ds_tensor *noise, double *seconds, ds_error *err)
{
    ds_step_context ctx = {.backend = b, .vram = mgr};
    /* An output left unwritten is no measurement: poison it first. */
    memset(noise->data, 0xff, ds_tensor_nbytes(noise));
    double start = ds_bench_now_s();
    int rc = ds_qwen_image_dit_forward(model, &ctx, &in[0], &in[1], NULL, &in[2], noise, err);
    if (rc == DS_OK)
        rc = b->stream_synchronize(b, NULL, err);
    *seconds = ds_bench_now_s() - start;
    return rc;
}

/* The backend's host -> device bandwidth: PINNED_COPIES copies of a pinned buffer into device
 * memory on one stream, then a synchronize, best of PINNED_ROUNDS; bytes per second. */
static int pinned_ceiling(ds_backend *b, double *rate, ds_error *err)
{
    void *host = NULL, *dev = NULL;
    ds_stream *s = NULL;
    int rc;
    *rate = 0;
    if ((rc = b->alloc_pinned(b, PINNED_BYTES, &host, err)) != DS_OK ||
        (rc = b->alloc(b, PINNED_BYTES, &dev, err)) != DS_OK ||
        (rc = b->stream_create(b, &s, err)) != DS_OK)
        goto out;
    /* Touched first, so that no round pays for first-use page faults. */
    memset(host, 0x3c, PINNED_BYTES);
    for (int r = -1; r < PINNED_ROUNDS; r++) {
        double start = ds_bench_now_s();
        for (int k = 0; k < PINNED_COPIES && rc == DS_OK; k++)
            rc = b->copy_to_device(b, dev, host, PINNED_BYTES, s, err);
        if (rc != DS_OK || (rc = b->stream_synchronize(b, s, err)) != DS_OK)
            goto out;
        double t = ds_bench_now_s() - start, v = (double)PINNED_BYTES * PINNED_COPIES / t;
        if (r >= 0 && v > *rate)
            *rate = v;
    }
out:
    if (s)
        b->stream_destroy(b, s);
    if (dev)
        b->free(b, dev);
    if (host)
        b->free_pinned(b, host);
    return rc == DS_OK ? DS_OK : ds_error_prefix(err, "pinned-copy ceiling: ");
}

/* One pass of acquire/release over every unit of the model's registration, in index order,
 * which is the DiT's plan (input, each block's phases, output), with no compute: the manager
 * copies, prefetches and evicts as it does in a forward. Wall time to the last copy done, and
 * the bytes it moved. */
static int copy_only_pass(ds_backend *b, ds_vram_manager *mgr, const ds_loaded_model *model,
                          double *seconds, double *bytes, ds_error *err)
{
    ds_vram_model *vm = ds_vram_model_find(mgr, model);
    if (!vm)
        return ds_error_set(err, DS_ERR_INTERNAL, "copy-only pass: the model is not registered "
                                                  "with its manager after a forward");
    ds_vram_model_stats ms;
    ds_vram_stats before, after;
    ds_vram_model_stats_get(vm, &ms);
    ds_vram_stats_get(mgr, &before);
    double start = ds_bench_now_s();
    for (size_t u = 0; u < ms.unit_count; u++) {
        const ds_tensor *t;
        int rc = ds_vram_acquire(vm, u, NULL, &t, err);
        if (rc == DS_OK)
            rc = ds_vram_release(vm, u, NULL, err);
        if (rc != DS_OK)
            return ds_error_prefix(err, "copy-only pass, unit %zu of %zu: ", u, ms.unit_count);
    }
    int rc = b->stream_synchronize(b, NULL, err);
    if (rc != DS_OK)
        return ds_error_prefix(err, "copy-only pass: ");
    *seconds = ds_bench_now_s() - start;
    ds_vram_stats_get(mgr, &after);
    *bytes = (double)(after.bytes_moved - before.bytes_moved);
    return DS_OK;
}

static void print_result(const options *o, const ds_backend *b, const config *c,
                         const result *r, size_t weight_bytes, double pinned_rate,
                         double resident_s)
{
    printf("{\"bench\": \"vram\", \"backend\": \"%s\", \"model\": \"QwenImageDiT\", "
           "\"layers\": %d, \"dtype\": \"%s\", \"image_tokens\": %d, \"text_tokens\": %d, "
           "\"vram_config\": ",
           b->name, o->layers, ds_dtype_name(o->dtype), (o->height / 16) * (o->width / 16),
           o->text_tokens);
    if (o->vram_config)
        ds_bench_print_json_string(o->vram_config);
    else
        printf("null");
    ds_bench_print_gemm(b->name);
    printf(", \"budget\": \"%s\", \"budget_bytes\": %.0f, \"weight_bytes\": %zu, "
           "\"median_ms\": %.3f, \"min_ms\": %.3f, \"peak_bytes\": %zu, "
           "\"moved_bytes_per_forward\": %.0f, \"copy_ms_per_forward\": %.3f, "
           "\"wait_ms_per_forward\": %.3f, \"allocations_per_forward\": %.1f, "
           "\"bit_identical\": %s",
           c->name, r->budget == DS_VRAM_UNLIMITED ? -1.0 : (double)r->budget, weight_bytes,
           r->samples[o->repeats / 2] * 1e3, r->samples[0] * 1e3, r->peak,
           r->moved_per_forward, r->copy_s_per_forward * 1e3, r->wait_s_per_forward * 1e3,
           r->allocs_per_forward,
           r->identical < 0 ? "null" : r->identical ? "true" : "false");
    double rate = r->stream_bytes > 0 ? r->stream_bytes / r->stream_s : NAN;
    /* Copy time of one forward's bytes at the streaming rate; the share of it the forward
     * hides is what it did not add over the all-resident forward. */
    double t_copy = r->moved_per_forward > 0 && rate > 0 ? r->moved_per_forward / rate : NAN;
    double hidden = NAN;
    if (!isnan(t_copy) && c->kind != NO_MANAGER) {
        hidden = 1.0 - (r->samples[0] - resident_s) / t_copy;
        hidden = hidden < 0 ? 0 : hidden > 1 ? 1 : hidden;
    }
    ds_bench_print_number("copy_only_ms", r->stream_s * 1e3, "%.3f");
    ds_bench_print_number("copy_only_bytes", r->stream_bytes, "%.0f");
    ds_bench_print_number("stream_gbps", rate * 1e-9, "%.3f");
    ds_bench_print_number("stream_fraction_of_pinned", pinned_rate > 0 ? rate / pinned_rate : NAN,
                 "%.3f");
    ds_bench_print_number("copy_ms_at_stream_rate", t_copy * 1e3, "%.3f");
    ds_bench_print_number("hidden_share", hidden, "%.3f");
    printf("}\n");
}

static int report_unavailable(const char *backend, const char *message)
{
    printf("{\"bench\": \"vram\", \"backend\": ");
    ds_bench_print_json_string(backend);
    printf(", \"status\": \"unavailable\", \"message\": ");
    ds_bench_print_json_string(message);
    printf("}\n");
    fflush(stdout);
    return 77;
}

int main(int argc, char **argv)
{
    options o;
    if (!parse_args(argc, argv, &o))
        return 2;
    config configs[MAX_CONFIGS];
    size_t n_configs = make_configs(&o, configs);
    ds_error err;
    ds_backend *b = NULL, *cpu = NULL;
    ds_loaded_model models[MAX_CONFIGS];
    ds_vram_manager *mgrs[MAX_CONFIGS] = {0};
    ds_vram_stats before[MAX_CONFIGS];
    ds_vram_config vcfg;
    size_t weight_bytes = 0, built = 0, ref = 0;
    ds_tensor in[3] = {{0}}, noise = {0};
    void *reference = NULL;
    int have_reference = 0, rounded = 0;
    double pinned_rate = 0;
    result res[MAX_CONFIGS];
    int code = 1;
    memset(models, 0, sizeof models);
    memset(res, 0, sizeof res);
    memset(&vcfg, 0, sizeof vcfg);
    if (strcmp(o.backend, "cuda") == 0) {
        int rc = ds_cuda_backend_create(0, &b, &err);
        if (rc == DS_ERR_UNAVAILABLE)
            return report_unavailable(o.backend, err.message);
        if (rc != DS_OK) {
            fprintf(stderr, "vram_bench: %s\n", err.message);
            return 1;
        }
        /* Host tensors (the step's inputs and output) belong to a CPU backend. */
        if (ds_cpu_backend_create(1, &cpu, &err) != DS_OK)
            goto fail;
    } else {
        if (ds_cpu_backend_create(o.threads, &b, &err) != DS_OK)
            goto fail;
        cpu = b;
    }
    if (o.vram_config &&
        ds_vram_config_parse(o.vram_config, DS_BF16,
                             is_cpu(b) ? DS_VRAM_DEVICE_CPU : DS_VRAM_DEVICE_CUDA, &vcfg,
                             &err) != DS_OK) {
        ds_error_prefix(&err, "--vram-config: ");
        goto fail;
    }
    /* A float offload dtype other than the weights' rounds them in the managers' slow tier;
     * the forward without a manager reads them as stored, so it is no reference then. */
    rounded = vcfg.managed && !vcfg.offload.disk_dtype &&
              vcfg.offload.device != DS_VRAM_DEVICE_DISK && vcfg.offload.dtype != o.dtype;
    ref = rounded ? 1 : 0;
    double build_start = ds_bench_now_s();
    char kwargs[64];
    snprintf(kwargs, sizeof kwargs, "{\"num_layers\": %d}", o.layers);
    if (ds_bench_build_model(DIT_CLASS, kwargs, NULL, 0, o.dtype, &models[0], &weight_bytes,
                             &err) != DS_OK)
        goto fail;
    models[0].model_name = "qwen_image_dit";
    for (built = 1; built < n_configs; built++)
        if (share_model(&o, &models[0], &models[built], &err) != DS_OK)
            goto fail;
    for (size_t i = 0; i < n_configs; i++)
        models[i].vram_config = vcfg;
    fprintf(stderr, "vram_bench: %d layers, %.2f GB of weights built in %.1f s\n", o.layers,
            (double)weight_bytes * 1e-9, ds_bench_now_s() - build_start);
    if (pinned_ceiling(b, &pinned_rate, &err) != DS_OK)
        goto fail;
    const int64_t lat_shape[4] = {1, 16, o.height / 8, o.width / 8};
    const int64_t emb_shape[3] = {1, o.text_tokens, 3584};
    if (ds_bench_input_tensor(cpu, o.dtype, 4, lat_shape, 1, &in[0], &err) != DS_OK ||
        ds_bench_input_tensor(cpu, o.dtype, 3, emb_shape, 2, &in[1], &err) != DS_OK ||
        ds_tensor_alloc(cpu, DS_F32, 1, (const int64_t[]){1}, &in[2], &err) != DS_OK ||
        ds_tensor_alloc(cpu, o.dtype, 4, lat_shape, &noise, &err) != DS_OK)
        goto fail;
    *(float *)in[2].data = 500.0f;
    reference = malloc(ds_tensor_nbytes(&noise));
    for (size_t i = 0; i < n_configs; i++) {
        const config *c = &configs[i];
        res[i].samples = calloc((size_t)o.repeats, sizeof *res[i].samples);
        res[i].identical = rounded && c->kind == NO_MANAGER ? -1 : 1;
        res[i].stream_s = res[i].stream_bytes = NAN;
        res[i].budget = c->kind == NO_MANAGER  ? 0
                        : c->kind == UNLIMITED ? DS_VRAM_UNLIMITED
                        : c->kind == PERCENT   ? weight_bytes / 100 * (size_t)c->percent
                                               : c->bytes;
        if (!reference || !res[i].samples) {
            ds_error_set(&err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto fail;
        }
        if (c->kind != NO_MANAGER &&
            ds_vram_manager_create(b, res[i].budget, o.prefetch, &mgrs[i], &err) != DS_OK)
            goto fail;
        /* The all-resident anchor copies each unit once: copies at rest (a pinned image of the
         * whole model on a GPU) would only double the host memory this process needs. */
        if (c->kind == UNLIMITED)
            ds_vram_set_host_limit(mgrs[i], 0);
    }
    /* Rounds of one forward per configuration, each on its own model and manager, so that a
     * burst of other work on a shared machine hits every configuration alike. */
    for (int r = -o.warmup; r < o.repeats; r++)
        for (size_t i = 0; i < n_configs; i++) {
            if (r == 0 && mgrs[i])
                ds_vram_stats_get(mgrs[i], &before[i]);
            double t;
            if (forward_once(&models[i], b, mgrs[i], in, &noise, &t, &err) != DS_OK) {
                ds_error_prefix(&err, "budget %s: ", configs[i].name);
                goto fail;
            }
            if (r >= 0)
                res[i].samples[r] = t;
            if (i == ref && !have_reference) {
                memcpy(reference, noise.data, ds_tensor_nbytes(&noise));
                have_reference = 1;
            } else if (have_reference && res[i].identical >= 0) {
                res[i].identical &= memcmp(noise.data, reference, ds_tensor_nbytes(&noise)) == 0;
            }
        }
    for (size_t i = 0; i < n_configs; i++) {
        result *r = &res[i];
        qsort(r->samples, (size_t)o.repeats, sizeof *r->samples, ds_bench_compare_double);
        if (!mgrs[i])
            continue;
        ds_vram_stats after;
        ds_vram_stats_get(mgrs[i], &after);
        r->peak = after.peak_bytes;
        r->moved_per_forward = (double)(after.bytes_moved - before[i].bytes_moved) / o.repeats;
        r->copy_s_per_forward = (after.copy_seconds - before[i].copy_seconds) / o.repeats;
        r->wait_s_per_forward = (after.wait_seconds - before[i].wait_seconds) / o.repeats;
        r->allocs_per_forward = (double)(after.allocations - before[i].allocations) / o.repeats;
        /* All resident after the first forward, the unlimited manager would copy nothing. */
        if (configs[i].kind == UNLIMITED)
            continue;
        for (int p = 0; p < o.repeats; p++) {
            double s = 0, bytes = 0;
            if (copy_only_pass(b, mgrs[i], &models[i], &s, &bytes, &err) != DS_OK) {
                ds_error_prefix(&err, "budget %s: ", configs[i].name);
                goto fail;
            }
            if (bytes > 0 && (isnan(r->stream_s) || bytes / s > r->stream_bytes / r->stream_s)) {
                r->stream_s = s;
                r->stream_bytes = bytes;
            }
        }
    }
    /* The fastest of the repeats: on a shared machine other work only ever adds time. */
    double anchor = res[1].samples[0];
    for (size_t i = 0; i < n_configs; i++)
        print_result(&o, b, &configs[i], &res[i], weight_bytes, pinned_rate, anchor);
    printf("{\"bench\": \"vram\", \"summary\": true, \"backend\": \"%s\", \"anchor\": "
           "\"unlimited\", \"statistic\": \"min\", \"pinned_gbps\": %.3f, \"slowdown\": {",
           b->name, pinned_rate * 1e-9);
    for (size_t i = 0, k = 0; i < n_configs; i++)
        if (configs[i].kind != UNLIMITED)
            printf("%s\"%s\": %.3f", k++ ? ", " : "", configs[i].name,
                   res[i].samples[0] / anchor);
    printf("}}\n");
    fflush(stdout);
    code = 0;
    for (size_t i = 0; i < n_configs; i++)
        if (res[i].identical == 0) {
            fprintf(stderr, "vram_bench: budget %s changed the output%s\n", configs[i].name,
                    is_cpu(b) ? "" : " (reported, not an error on a device)");
            if (is_cpu(b))
                code = 1;
        }
    goto out;
fail:
    fprintf(stderr, "vram_bench: %s\n", err.message);
out:
    /* Managers first: they hold copies; the models share model 0's buffers. */
    for (size_t i = 0; i < n_configs; i++) {
        ds_vram_manager_destroy(mgrs[i]);
        free(res[i].samples);
    }
    free(reference);
    for (int i = 0; i < 3; i++)
        ds_tensor_free(&in[i]);
    ds_tensor_free(&noise);
    for (size_t i = 1; i < built; i++)
        ds_state_dict_free(&models[i].params);
    if (built > 0)
        ds_bench_free_model(&models[0]);
    if (cpu != b)
        ds_backend_destroy(cpu);
    ds_backend_destroy(b);
    return code;
}
