/* The contract read by two independent implementations: protobuf-c (the daemon) and nanopb
 * (the client library). For every message type of proto/diffsynth.proto, every field is filled
 * with a non-default value (unicode strings, bytes with zeros, uint64 near 2^64, negative int64
 * dims, nested and repeated messages); the same content is encoded by each library and decoded
 * by the other, compared field by field, and the two encodings must be byte-identical (both
 * write fields in field-number order, pack repeated scalars as proto3 requires, and skip
 * defaults). A generic walk over protobuf-c's descriptors checks that the fill really set every
 * field, so a field added to the .proto without a test fails here. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "diffsynth.pb-c.h"
#include "diffsynth.pb.h"
#include "test.h"

#define PC(T) Diffsynth__V1__##T
#define NB(T) diffsynth_v1_##T

/* ---- an arena for the filled messages: freed after each case ---- */

static void **arena;
static size_t arena_len, arena_cap;

static void *A(size_t size)
{
    void *p = calloc(1, size ? size : 1);
    if (!p)
        abort();
    if (arena_len == arena_cap) {
        arena_cap = arena_cap ? arena_cap * 2 : 256;
        arena = realloc(arena, arena_cap * sizeof *arena);
        if (!arena)
            abort();
    }
    arena[arena_len++] = p;
    return p;
}

static void arena_free(void)
{
    for (size_t i = 0; i < arena_len; i++)
        free(arena[i]);
    arena_len = 0;
}

/* ---- values: a pure function of (k, field), so both fills produce the same content ---- */

/* Unicode in three scripts plus an emoji (4-byte UTF-8), a tab, quotes and a backslash. */
static char *S(int k, int field)
{
    char tmp[128];
    int n = snprintf(tmp, sizeof tmp, "n\xc3\xa4me-\xe5\x90\x8d\xe5\x89\x8d-\xf0\x9f\x98\x80-\t\"\\-%d-%d",
                     k, field);
    char *s = A((size_t)n + 1);
    memcpy(s, tmp, (size_t)n + 1);
    return s;
}

static char **STRS(int count, int k, int field)
{
    char **v = A((size_t)count * sizeof *v);
    for (int i = 0; i < count; i++)
        v[i] = S(k * 10 + i, field);
    return v;
}

static uint64_t U64(int k, int field)
{
    return UINT64_MAX - (uint64_t)(k * 100 + field);
}

static uint32_t U32(int k, int field)
{
    return UINT32_MAX - (uint32_t)(k * 100 + field);
}

static double D(int k, int field)
{
    /* A subnormal, a negative and a huge value: every bit of the fixed64 must survive. */
    switch ((k + field) % 3) {
    case 0: return 4.9406564584124654e-324 * (k + 1);
    case 1: return -1.0 - field / 3.0;
    default: return 1.7976931348623157e308 / (k + 2);
    }
}

static bool same_double(double a, double b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

/* Enum values 1..max: never the default 0. */
#define ENUMV(k, field, max) (((k) + (field)) % (max) + 1)

#define SHAPE_N 4
static int64_t *SHAPE(int k)
{
    int64_t *v = A(SHAPE_N * sizeof *v);
    v[0] = -1;
    v[1] = INT64_MIN + k;
    v[2] = 3;
    v[3] = INT64_MAX - k;
    return v;
}

#define BYTES_N 6
static uint8_t *BYTES(int k)
{
    uint8_t *v = A(BYTES_N);
    const uint8_t b[BYTES_N] = {0, 1, 0, 255, 0, (uint8_t)k};
    memcpy(v, b, BYTES_N);
    return v;
}

static pb_bytes_array_t *NB_BYTES(int k)
{
    pb_bytes_array_t *v = A(PB_BYTES_ARRAY_T_ALLOCSIZE(BYTES_N));
    v->size = BYTES_N;
    memcpy(v->bytes, BYTES(k), BYTES_N);
    return v;
}

static void *pc_new(const ProtobufCMessageDescriptor *desc)
{
    void *m = A(desc->sizeof_message);
    protobuf_c_message_init(desc, m);
    return m;
}

#define PC_NEW(T, snake) ((PC(T) *)pc_new(&diffsynth__v1__##snake##__descriptor))

static void cmp_strs(char *const *p, size_t np, char *const *n, pb_size_t nn)
{
    REQUIRE(np == nn);
    for (size_t i = 0; i < np; i++)
        CHECK_STR_EQ(n[i], p[i]);
}

/* ---- per message type: fill with protobuf-c, fill with nanopb, compare across ---- */

static void fill_pc_Error(PC(Error) *m, int k)
{
    m->code = ENUMV(k, 1, 16);
    m->message = S(k, 2);
}

static void fill_nb_Error(NB(Error) *m, int k)
{
    m->code = ENUMV(k, 1, 16);
    m->message = S(k, 2);
}

static void cmp_Error(const PC(Error) *p, const NB(Error) *n)
{
    CHECK((int)p->code == (int)n->code);
    CHECK_STR_EQ(n->message, p->message);
}

static void fill_pc_SharedRegion(PC(SharedRegion) *m, int k)
{
    m->name = S(k, 1);
    m->offset = U64(k, 2);
    m->size = U64(k, 3);    m->fd_index = U32(k, 4);
}

static void fill_nb_SharedRegion(NB(SharedRegion) *m, int k)
{
    m->name = S(k, 1);
    m->offset = U64(k, 2);
    m->size = U64(k, 3);    m->fd_index = U32(k, 4);
}

static void cmp_SharedRegion(const PC(SharedRegion) *p, const NB(SharedRegion) *n)
{
    CHECK_STR_EQ(n->name, p->name);
    CHECK(p->offset == n->offset);
    CHECK(p->size == n->size);
    CHECK(p->fd_index == n->fd_index);
}

static void fill_pc_Tensor(PC(Tensor) *m, int k)
{
    m->name = S(k, 1);
    m->dtype = ENUMV(k, 2, 12);
    m->n_shape = SHAPE_N;
    m->shape = SHAPE(k);
    m->data.len = BYTES_N;
    m->data.data = BYTES(k);
    m->shm = PC_NEW(SharedRegion, shared_region);
    fill_pc_SharedRegion(m->shm, k + 5);
}

static void fill_nb_Tensor(NB(Tensor) *m, int k)
{
    m->name = S(k, 1);
    m->dtype = ENUMV(k, 2, 12);
    m->shape_count = SHAPE_N;
    m->shape = SHAPE(k);
    m->data = NB_BYTES(k);
    m->has_shm = true;
    fill_nb_SharedRegion(&m->shm, k + 5);
}

static void cmp_Tensor(const PC(Tensor) *p, const NB(Tensor) *n)
{
    CHECK_STR_EQ(n->name, p->name);
    CHECK((int)p->dtype == (int)n->dtype);
    REQUIRE(p->n_shape == n->shape_count);
    CHECK(p->n_shape == 0 || memcmp(p->shape, n->shape, p->n_shape * sizeof *p->shape) == 0);
    REQUIRE(n->data && p->data.len == n->data->size);
    CHECK(memcmp(p->data.data, n->data->bytes, p->data.len) == 0);
    REQUIRE(p->shm && n->has_shm);
    cmp_SharedRegion(p->shm, &n->shm);
}

static void fill_pc_ModelConfig(PC(ModelConfig) *m, int k)
{
    m->model_hash = S(k, 1);
    m->model_name = S(k, 2);
    m->model_class = S(k, 3);
    m->state_dict_converter = S(k, 4);
    m->extra_kwargs_json = S(k, 5);
    m->implemented = 1;
    m->quant_config_json = S(k, 7);
    m->source = S(k, 8);
}

static void fill_nb_ModelConfig(NB(ModelConfig) *m, int k)
{
    m->model_hash = S(k, 1);
    m->model_name = S(k, 2);
    m->model_class = S(k, 3);
    m->state_dict_converter = S(k, 4);
    m->extra_kwargs_json = S(k, 5);
    m->implemented = true;
    m->quant_config_json = S(k, 7);
    m->source = S(k, 8);
}

static void cmp_ModelConfig(const PC(ModelConfig) *p, const NB(ModelConfig) *n)
{
    CHECK_STR_EQ(n->model_hash, p->model_hash);
    CHECK_STR_EQ(n->model_name, p->model_name);
    CHECK_STR_EQ(n->model_class, p->model_class);
    CHECK_STR_EQ(n->state_dict_converter, p->state_dict_converter);
    CHECK_STR_EQ(n->extra_kwargs_json, p->extra_kwargs_json);
    CHECK(p->implemented == n->implemented);
    CHECK_STR_EQ(n->quant_config_json, p->quant_config_json);
    CHECK_STR_EQ(n->source, p->source);
}

static void fill_pc_TierBytes(PC(TierBytes) *m, int k)
{
    m->tier = S(k, 1);
    m->bytes = U64(k, 2);
}

static void fill_nb_TierBytes(NB(TierBytes) *m, int k)
{
    m->tier = S(k, 1);
    m->bytes = U64(k, 2);
}

static void cmp_TierBytes(const PC(TierBytes) *p, const NB(TierBytes) *n)
{
    CHECK_STR_EQ(n->tier, p->tier);
    CHECK(p->bytes == n->bytes);
}

static void fill_pc_LoadedModel(PC(LoadedModel) *m, int k)
{
    m->model_id = S(k, 1);
    m->model_name = S(k, 2);
    m->model_class = S(k, 3);
    m->state_dict_converter = S(k, 4);
    m->extra_kwargs_json = S(k, 5);
    m->n_paths = 3;
    m->paths = STRS(3, k, 6);
    m->model_hash = S(k, 7);
    m->parameter_count = U64(k, 8);
    m->tensor_count = U32(k, 9);
    m->n_tiers = 2;
    m->tiers = A(2 * sizeof *m->tiers);
    for (int i = 0; i < 2; i++) {
        m->tiers[i] = PC_NEW(TierBytes, tier_bytes);
        fill_pc_TierBytes(m->tiers[i], k * 7 + i + 10);
    }
    m->n_clients = 3;
    m->clients = STRS(3, k, 11);
    m->reused = 1;
    m->loaded_at_unix_ms = U64(k, 13);
    m->vram_config_json = S(k, 14);
    m->stale = S(k, 15);
}

static void fill_nb_LoadedModel(NB(LoadedModel) *m, int k)
{
    m->model_id = S(k, 1);
    m->model_name = S(k, 2);
    m->model_class = S(k, 3);
    m->state_dict_converter = S(k, 4);
    m->extra_kwargs_json = S(k, 5);
    m->paths_count = 3;
    m->paths = STRS(3, k, 6);
    m->model_hash = S(k, 7);
    m->parameter_count = U64(k, 8);
    m->tensor_count = U32(k, 9);
    m->tiers_count = 2;
    m->tiers = A(2 * sizeof *m->tiers);
    for (int i = 0; i < 2; i++)
        fill_nb_TierBytes(&m->tiers[i], k * 7 + i + 10);
    m->clients_count = 3;
    m->clients = STRS(3, k, 11);
    m->reused = true;
    m->loaded_at_unix_ms = U64(k, 13);
    m->vram_config_json = S(k, 14);
    m->stale = S(k, 15);
}

static void cmp_LoadedModel(const PC(LoadedModel) *p, const NB(LoadedModel) *n)
{
    CHECK_STR_EQ(n->model_id, p->model_id);
    CHECK_STR_EQ(n->model_name, p->model_name);
    CHECK_STR_EQ(n->model_class, p->model_class);
    CHECK_STR_EQ(n->state_dict_converter, p->state_dict_converter);
    CHECK_STR_EQ(n->extra_kwargs_json, p->extra_kwargs_json);
    cmp_strs(p->paths, p->n_paths, n->paths, n->paths_count);
    CHECK_STR_EQ(n->model_hash, p->model_hash);
    CHECK(p->parameter_count == n->parameter_count);
    CHECK(p->tensor_count == n->tensor_count);
    REQUIRE(p->n_tiers == n->tiers_count);
    for (size_t i = 0; i < p->n_tiers; i++)
        cmp_TierBytes(p->tiers[i], &n->tiers[i]);
    cmp_strs(p->clients, p->n_clients, n->clients, n->clients_count);
    CHECK(p->reused == n->reused);
    CHECK(p->loaded_at_unix_ms == n->loaded_at_unix_ms);
    CHECK_STR_EQ(n->vram_config_json, p->vram_config_json);
    CHECK_STR_EQ(n->stale, p->stale);
}

static void fill_pc_IdentifyRequest(PC(IdentifyRequest) *m, int k)
{
    m->n_paths = 3;
    m->paths = STRS(3, k, 1);
}

static void fill_nb_IdentifyRequest(NB(IdentifyRequest) *m, int k)
{
    m->paths_count = 3;
    m->paths = STRS(3, k, 1);
}

static void cmp_IdentifyRequest(const PC(IdentifyRequest) *p, const NB(IdentifyRequest) *n)
{
    cmp_strs(p->paths, p->n_paths, n->paths, n->paths_count);
}

static void fill_pc_ConfigSuggestion(PC(ConfigSuggestion) *m, int k)
{
    m->config = PC_NEW(ModelConfig, model_config);
    fill_pc_ModelConfig(m->config, k + 1);
    m->shared_names = U32(k, 2);
    m->config_names = U32(k, 3);
}

static void fill_nb_ConfigSuggestion(NB(ConfigSuggestion) *m, int k)
{
    m->has_config = true;
    fill_nb_ModelConfig(&m->config, k + 1);
    m->shared_names = U32(k, 2);
    m->config_names = U32(k, 3);
}

static void cmp_ConfigSuggestion(const PC(ConfigSuggestion) *p, const NB(ConfigSuggestion) *n)
{
    REQUIRE(p->config && n->has_config);
    cmp_ModelConfig(p->config, &n->config);
    CHECK(p->shared_names == n->shared_names);
    CHECK(p->config_names == n->config_names);
}

static void fill_pc_IdentifyResponse(PC(IdentifyResponse) *m, int k)
{
    m->model_hash = S(k, 1);
    m->n_files = 3;
    m->files = STRS(3, k, 2);
    m->n_configs = 2;
    m->configs = A(2 * sizeof *m->configs);
    for (int i = 0; i < 2; i++) {
        m->configs[i] = PC_NEW(ModelConfig, model_config);
        fill_pc_ModelConfig(m->configs[i], k * 7 + i + 3);
    }
    m->tensor_count = U32(k, 4);
    m->n_closest = 2;
    m->closest = A(2 * sizeof *m->closest);
    for (int i = 0; i < 2; i++) {
        m->closest[i] = PC_NEW(ConfigSuggestion, config_suggestion);
        fill_pc_ConfigSuggestion(m->closest[i], k * 7 + i + 5);
    }
}

static void fill_nb_IdentifyResponse(NB(IdentifyResponse) *m, int k)
{
    m->model_hash = S(k, 1);
    m->files_count = 3;
    m->files = STRS(3, k, 2);
    m->configs_count = 2;
    m->configs = A(2 * sizeof *m->configs);
    for (int i = 0; i < 2; i++)
        fill_nb_ModelConfig(&m->configs[i], k * 7 + i + 3);
    m->tensor_count = U32(k, 4);
    m->closest_count = 2;
    m->closest = A(2 * sizeof *m->closest);
    for (int i = 0; i < 2; i++)
        fill_nb_ConfigSuggestion(&m->closest[i], k * 7 + i + 5);
}

static void cmp_IdentifyResponse(const PC(IdentifyResponse) *p, const NB(IdentifyResponse) *n)
{
    CHECK_STR_EQ(n->model_hash, p->model_hash);
    cmp_strs(p->files, p->n_files, n->files, n->files_count);
    REQUIRE(p->n_configs == n->configs_count);
    for (size_t i = 0; i < p->n_configs; i++)
        cmp_ModelConfig(p->configs[i], &n->configs[i]);
    CHECK(p->tensor_count == n->tensor_count);
    REQUIRE(p->n_closest == n->closest_count);
    for (size_t i = 0; i < p->n_closest; i++)
        cmp_ConfigSuggestion(p->closest[i], &n->closest[i]);
}

static void fill_pc_LoadRequest(PC(LoadRequest) *m, int k)
{
    m->n_paths = 3;
    m->paths = STRS(3, k, 1);
    m->client_name = S(k, 2);
    m->vram_config_json = S(k, 3);
    m->torch_dtype = S(k, 4);
}

static void fill_nb_LoadRequest(NB(LoadRequest) *m, int k)
{
    m->paths_count = 3;
    m->paths = STRS(3, k, 1);
    m->client_name = S(k, 2);
    m->vram_config_json = S(k, 3);
    m->torch_dtype = S(k, 4);
}

static void cmp_LoadRequest(const PC(LoadRequest) *p, const NB(LoadRequest) *n)
{
    cmp_strs(p->paths, p->n_paths, n->paths, n->paths_count);
    CHECK_STR_EQ(n->client_name, p->client_name);
    CHECK_STR_EQ(n->vram_config_json, p->vram_config_json);
    CHECK_STR_EQ(n->torch_dtype, p->torch_dtype);
}

static void fill_pc_LoadResponse(PC(LoadResponse) *m, int k)
{
    m->model_hash = S(k, 1);
    m->n_files = 3;
    m->files = STRS(3, k, 2);
    m->n_models = 2;
    m->models = A(2 * sizeof *m->models);
    for (int i = 0; i < 2; i++) {
        m->models[i] = PC_NEW(LoadedModel, loaded_model);
        fill_pc_LoadedModel(m->models[i], k * 7 + i + 3);
    }
    m->n_skipped = 2;
    m->skipped = A(2 * sizeof *m->skipped);
    for (int i = 0; i < 2; i++) {
        m->skipped[i] = PC_NEW(ModelConfig, model_config);
        fill_pc_ModelConfig(m->skipped[i], k * 7 + i + 4);
    }
}

static void fill_nb_LoadResponse(NB(LoadResponse) *m, int k)
{
    m->model_hash = S(k, 1);
    m->files_count = 3;
    m->files = STRS(3, k, 2);
    m->models_count = 2;
    m->models = A(2 * sizeof *m->models);
    for (int i = 0; i < 2; i++)
        fill_nb_LoadedModel(&m->models[i], k * 7 + i + 3);
    m->skipped_count = 2;
    m->skipped = A(2 * sizeof *m->skipped);
    for (int i = 0; i < 2; i++)
        fill_nb_ModelConfig(&m->skipped[i], k * 7 + i + 4);
}

static void cmp_LoadResponse(const PC(LoadResponse) *p, const NB(LoadResponse) *n)
{
    CHECK_STR_EQ(n->model_hash, p->model_hash);
    cmp_strs(p->files, p->n_files, n->files, n->files_count);
    REQUIRE(p->n_models == n->models_count);
    for (size_t i = 0; i < p->n_models; i++)
        cmp_LoadedModel(p->models[i], &n->models[i]);
    REQUIRE(p->n_skipped == n->skipped_count);
    for (size_t i = 0; i < p->n_skipped; i++)
        cmp_ModelConfig(p->skipped[i], &n->skipped[i]);
}

static void fill_pc_UnloadRequest(PC(UnloadRequest) *m, int k)
{
    m->model_id = S(k, 1);
    m->client_name = S(k, 2);
    m->all_references = 1;
}

static void fill_nb_UnloadRequest(NB(UnloadRequest) *m, int k)
{
    m->model_id = S(k, 1);
    m->client_name = S(k, 2);
    m->all_references = true;
}

static void cmp_UnloadRequest(const PC(UnloadRequest) *p, const NB(UnloadRequest) *n)
{
    CHECK_STR_EQ(n->model_id, p->model_id);
    CHECK_STR_EQ(n->client_name, p->client_name);
    CHECK(p->all_references == n->all_references);
}

static void fill_pc_UnloadResponse(PC(UnloadResponse) *m, int k)
{
    m->model_id = S(k, 1);
    m->remaining_references = U32(k, 2);
    m->freed = 1;
}

static void fill_nb_UnloadResponse(NB(UnloadResponse) *m, int k)
{
    m->model_id = S(k, 1);
    m->remaining_references = U32(k, 2);
    m->freed = true;
}

static void cmp_UnloadResponse(const PC(UnloadResponse) *p, const NB(UnloadResponse) *n)
{
    CHECK_STR_EQ(n->model_id, p->model_id);
    CHECK(p->remaining_references == n->remaining_references);
    CHECK(p->freed == n->freed);
}

static void fill_pc_ListModelsRequest(PC(ListModelsRequest) *m, int k)
{
    (void)m;
    (void)k;
}

static void fill_nb_ListModelsRequest(NB(ListModelsRequest) *m, int k)
{
    (void)m;
    (void)k;
}

static void cmp_ListModelsRequest(const PC(ListModelsRequest) *p, const NB(ListModelsRequest) *n)
{
    (void)p;
    (void)n;
}

static void fill_pc_ListModelsResponse(PC(ListModelsResponse) *m, int k)
{
    m->n_models = 3;
    m->models = A(3 * sizeof *m->models);
    for (int i = 0; i < 3; i++) {
        m->models[i] = PC_NEW(LoadedModel, loaded_model);
        fill_pc_LoadedModel(m->models[i], k * 7 + i + 1);
    }
}

static void fill_nb_ListModelsResponse(NB(ListModelsResponse) *m, int k)
{
    m->models_count = 3;
    m->models = A(3 * sizeof *m->models);
    for (int i = 0; i < 3; i++)
        fill_nb_LoadedModel(&m->models[i], k * 7 + i + 1);
}

static void cmp_ListModelsResponse(const PC(ListModelsResponse) *p, const NB(ListModelsResponse) *n)
{
    REQUIRE(p->n_models == n->models_count);
    for (size_t i = 0; i < p->n_models; i++)
        cmp_LoadedModel(p->models[i], &n->models[i]);
}

static void fill_pc_StatusRequest(PC(StatusRequest) *m, int k)
{
    (void)m;
    (void)k;
}

static void fill_nb_StatusRequest(NB(StatusRequest) *m, int k)
{
    (void)m;
    (void)k;
}

static void cmp_StatusRequest(const PC(StatusRequest) *p, const NB(StatusRequest) *n)
{
    (void)p;
    (void)n;
}

static void fill_pc_VramStatus(PC(VramStatus) *m, int k)
{
    m->limited = 1;
    m->budget_bytes = U64(k, 2);
    m->resident_bytes = U64(k, 3);
    m->activation_bytes = U64(k, 4);
    m->peak_bytes = U64(k, 5);
    m->bytes_moved = U64(k, 6);
    m->loads = U64(k, 7);
    m->prefetches = U64(k, 8);
    m->hits = U64(k, 9);
    m->evictions = U64(k, 10);
    m->copy_seconds = D(k, 11);
    m->wait_seconds = D(k, 12);
    m->compute_seconds = D(k, 13);
    m->host_limited = 1;
    m->host_budget_bytes = U64(k, 15);
    m->host_bytes = U64(k, 16);
    m->host_peak_bytes = U64(k, 17);
}

static void fill_nb_VramStatus(NB(VramStatus) *m, int k)
{
    m->limited = true;
    m->budget_bytes = U64(k, 2);
    m->resident_bytes = U64(k, 3);
    m->activation_bytes = U64(k, 4);
    m->peak_bytes = U64(k, 5);
    m->bytes_moved = U64(k, 6);
    m->loads = U64(k, 7);
    m->prefetches = U64(k, 8);
    m->hits = U64(k, 9);
    m->evictions = U64(k, 10);
    m->copy_seconds = D(k, 11);
    m->wait_seconds = D(k, 12);
    m->compute_seconds = D(k, 13);
    m->host_limited = 1;
    m->host_budget_bytes = U64(k, 15);
    m->host_bytes = U64(k, 16);
    m->host_peak_bytes = U64(k, 17);
}

static void cmp_VramStatus(const PC(VramStatus) *p, const NB(VramStatus) *n)
{
    CHECK(p->limited == n->limited);
    CHECK(p->budget_bytes == n->budget_bytes);
    CHECK(p->resident_bytes == n->resident_bytes);
    CHECK(p->activation_bytes == n->activation_bytes);
    CHECK(p->peak_bytes == n->peak_bytes);
    CHECK(p->bytes_moved == n->bytes_moved);
    CHECK(p->loads == n->loads);
    CHECK(p->prefetches == n->prefetches);
    CHECK(p->hits == n->hits);
    CHECK(p->evictions == n->evictions);
    CHECK(same_double(p->copy_seconds, n->copy_seconds));
    CHECK(same_double(p->wait_seconds, n->wait_seconds));
    CHECK(same_double(p->compute_seconds, n->compute_seconds));
    CHECK(p->host_limited == n->host_limited);
    CHECK(p->host_budget_bytes == n->host_budget_bytes);
    CHECK(p->host_bytes == n->host_bytes);
    CHECK(p->host_peak_bytes == n->host_peak_bytes);
}

static void fill_pc_StatusResponse(PC(StatusResponse) *m, int k)
{
    m->version = S(k, 1);
    m->backend = S(k, 2);
    m->uptime_ms = U64(k, 3);
    m->clients = U32(k, 4);
    m->models = U32(k, 5);
    m->n_memory = 3;
    m->memory = A(3 * sizeof *m->memory);
    for (int i = 0; i < 3; i++) {
        m->memory[i] = PC_NEW(TierBytes, tier_bytes);
        fill_pc_TierBytes(m->memory[i], k * 7 + i + 6);
    }
    m->jobs_queued = U32(k, 7);
    m->jobs_running = U32(k, 8);
    m->pid = U32(k, 9);
    m->socket_path = S(k, 10);
    m->n_model_roots = 3;
    m->model_roots = STRS(3, k, 11);
    m->config_count = U32(k, 12);
    m->max_frame_bytes = U64(k, 13);
    m->requests_served = U64(k, 14);
    m->vram = PC_NEW(VramStatus, vram_status);
    fill_pc_VramStatus(m->vram, k * 7 + 15);
}

static void fill_nb_StatusResponse(NB(StatusResponse) *m, int k)
{
    m->version = S(k, 1);
    m->backend = S(k, 2);
    m->uptime_ms = U64(k, 3);
    m->clients = U32(k, 4);
    m->models = U32(k, 5);
    m->memory_count = 3;
    m->memory = A(3 * sizeof *m->memory);
    for (int i = 0; i < 3; i++)
        fill_nb_TierBytes(&m->memory[i], k * 7 + i + 6);
    m->jobs_queued = U32(k, 7);
    m->jobs_running = U32(k, 8);
    m->pid = U32(k, 9);
    m->socket_path = S(k, 10);
    m->model_roots_count = 3;
    m->model_roots = STRS(3, k, 11);
    m->config_count = U32(k, 12);
    m->max_frame_bytes = U64(k, 13);
    m->requests_served = U64(k, 14);
    m->has_vram = true;
    fill_nb_VramStatus(&m->vram, k * 7 + 15);
}

static void cmp_StatusResponse(const PC(StatusResponse) *p, const NB(StatusResponse) *n)
{
    CHECK_STR_EQ(n->version, p->version);
    CHECK_STR_EQ(n->backend, p->backend);
    CHECK(p->uptime_ms == n->uptime_ms);
    CHECK(p->clients == n->clients);
    CHECK(p->models == n->models);
    REQUIRE(p->n_memory == n->memory_count);
    for (size_t i = 0; i < p->n_memory; i++)
        cmp_TierBytes(p->memory[i], &n->memory[i]);
    CHECK(p->jobs_queued == n->jobs_queued);
    CHECK(p->jobs_running == n->jobs_running);
    CHECK(p->pid == n->pid);
    CHECK_STR_EQ(n->socket_path, p->socket_path);
    cmp_strs(p->model_roots, p->n_model_roots, n->model_roots, n->model_roots_count);
    CHECK(p->config_count == n->config_count);
    CHECK(p->max_frame_bytes == n->max_frame_bytes);
    CHECK(p->requests_served == n->requests_served);
    REQUIRE(p->vram && n->has_vram);
    cmp_VramStatus(p->vram, &n->vram);
}

static void fill_pc_CancelRequest(PC(CancelRequest) *m, int k)
{
    m->target_request_id = U64(k, 1);
}

static void fill_nb_CancelRequest(NB(CancelRequest) *m, int k)
{
    m->target_request_id = U64(k, 1);
}

static void cmp_CancelRequest(const PC(CancelRequest) *p, const NB(CancelRequest) *n)
{
    CHECK(p->target_request_id == n->target_request_id);
}

static void fill_pc_CancelResponse(PC(CancelResponse) *m, int k)
{
    (void)k;
    m->found = 1;
}

static void fill_nb_CancelResponse(NB(CancelResponse) *m, int k)
{
    (void)k;
    m->found = true;
}

static void cmp_CancelResponse(const PC(CancelResponse) *p, const NB(CancelResponse) *n)
{
    CHECK(p->found == n->found);
}

static void fill_pc_ListConfigsRequest(PC(ListConfigsRequest) *m, int k)
{
    (void)k;
    m->verify = 1;
}

static void fill_nb_ListConfigsRequest(NB(ListConfigsRequest) *m, int k)
{
    (void)k;
    m->verify = true;
}

static void cmp_ListConfigsRequest(const PC(ListConfigsRequest) *p, const NB(ListConfigsRequest) *n)
{
    CHECK(p->verify == n->verify);
}

static void fill_pc_ConfigEntry(PC(ConfigEntry) *m, int k)
{
    m->config = PC_NEW(ModelConfig, model_config);
    fill_pc_ModelConfig(m->config, k + 1);
    m->verify = ENUMV(k, 2, 4);
    m->computed_hash = S(k, 3);
    m->detail = S(k, 4);
}

static void fill_nb_ConfigEntry(NB(ConfigEntry) *m, int k)
{
    m->has_config = true;
    fill_nb_ModelConfig(&m->config, k + 1);
    m->verify = ENUMV(k, 2, 4);
    m->computed_hash = S(k, 3);
    m->detail = S(k, 4);
}

static void cmp_ConfigEntry(const PC(ConfigEntry) *p, const NB(ConfigEntry) *n)
{
    REQUIRE(p->config && n->has_config);
    cmp_ModelConfig(p->config, &n->config);
    CHECK((int)p->verify == (int)n->verify);
    CHECK_STR_EQ(n->computed_hash, p->computed_hash);
    CHECK_STR_EQ(n->detail, p->detail);
}

static void fill_pc_ListConfigsResponse(PC(ListConfigsResponse) *m, int k)
{
    m->n_entries = 3;
    m->entries = A(3 * sizeof *m->entries);
    for (int i = 0; i < 3; i++) {
        m->entries[i] = PC_NEW(ConfigEntry, config_entry);
        fill_pc_ConfigEntry(m->entries[i], k * 7 + i + 1);
    }
}

static void fill_nb_ListConfigsResponse(NB(ListConfigsResponse) *m, int k)
{
    m->entries_count = 3;
    m->entries = A(3 * sizeof *m->entries);
    for (int i = 0; i < 3; i++)
        fill_nb_ConfigEntry(&m->entries[i], k * 7 + i + 1);
}

static void cmp_ListConfigsResponse(const PC(ListConfigsResponse) *p, const NB(ListConfigsResponse) *n)
{
    REQUIRE(p->n_entries == n->entries_count);
    for (size_t i = 0; i < p->n_entries; i++)
        cmp_ConfigEntry(p->entries[i], &n->entries[i]);
}

static void fill_pc_ListPipelinesRequest(PC(ListPipelinesRequest) *m, int k)
{
    (void)m;
    (void)k;
}

static void fill_nb_ListPipelinesRequest(NB(ListPipelinesRequest) *m, int k)
{
    (void)m;
    (void)k;
}

static void cmp_ListPipelinesRequest(const PC(ListPipelinesRequest) *p,
                                     const NB(ListPipelinesRequest) *n)
{
    (void)p;
    (void)n;
}

static void fill_pc_PipelineRole(PC(PipelineRole) *m, int k)
{
    m->role = S(k, 1);
    m->model_name = S(k, 2);
    m->model_class = S(k, 3);
    m->required = 1;
}

static void fill_nb_PipelineRole(NB(PipelineRole) *m, int k)
{
    m->role = S(k, 1);
    m->model_name = S(k, 2);
    m->model_class = S(k, 3);
    m->required = true;
}

static void cmp_PipelineRole(const PC(PipelineRole) *p, const NB(PipelineRole) *n)
{
    CHECK_STR_EQ(n->role, p->role);
    CHECK_STR_EQ(n->model_name, p->model_name);
    CHECK_STR_EQ(n->model_class, p->model_class);
    CHECK(p->required == n->required);
}

static void fill_pc_PipelineParam(PC(PipelineParam) *m, int k)
{
    m->name = S(k, 1);
    m->type = S(k, 2);
    m->min = D(k, 3);
    m->max = D(k, 4);
    m->min_exclusive = 1;
    m->has_default = 1;
    m->default_value = S(k, 7);
    m->help = S(k, 8);
}

static void fill_nb_PipelineParam(NB(PipelineParam) *m, int k)
{
    m->name = S(k, 1);
    m->type = S(k, 2);
    m->min = D(k, 3);
    m->max = D(k, 4);
    m->min_exclusive = true;
    m->has_default = true;
    m->default_value = S(k, 7);
    m->help = S(k, 8);
}

static void cmp_PipelineParam(const PC(PipelineParam) *p, const NB(PipelineParam) *n)
{
    CHECK_STR_EQ(n->name, p->name);
    CHECK_STR_EQ(n->type, p->type);
    CHECK(same_double(p->min, n->min));
    CHECK(same_double(p->max, n->max));
    CHECK(p->min_exclusive == n->min_exclusive);
    CHECK(p->has_default == n->has_default);
    CHECK_STR_EQ(n->default_value, p->default_value);
    CHECK_STR_EQ(n->help, p->help);
}

static void fill_pc_PipelineTensor(PC(PipelineTensor) *m, int k)
{
    m->name = S(k, 1);
    m->help = S(k, 2);
    m->needs_role = S(k, 3);
    m->png = 1;
    m->video = 1;
}

static void fill_nb_PipelineTensor(NB(PipelineTensor) *m, int k)
{
    m->name = S(k, 1);
    m->help = S(k, 2);
    m->needs_role = S(k, 3);
    m->png = true;
    m->video = true;
}

static void cmp_PipelineTensor(const PC(PipelineTensor) *p, const NB(PipelineTensor) *n)
{
    CHECK_STR_EQ(n->name, p->name);
    CHECK_STR_EQ(n->help, p->help);
    CHECK_STR_EQ(n->needs_role, p->needs_role);
    CHECK(p->png == n->png);
    CHECK(p->video == n->video);
}

static void fill_pc_PipelineInfo(PC(PipelineInfo) *m, int k)
{
    m->name = S(k, 1);
    m->summary = S(k, 2);
    m->n_roles = 2;
    m->roles = A(2 * sizeof *m->roles);
    m->n_params = 3;
    m->params = A(3 * sizeof *m->params);
    m->n_inputs = 2;
    m->inputs = A(2 * sizeof *m->inputs);
    m->n_outputs = 2;
    m->outputs = A(2 * sizeof *m->outputs);
    for (int i = 0; i < 3; i++) {
        m->params[i] = PC_NEW(PipelineParam, pipeline_param);
        fill_pc_PipelineParam(m->params[i], k * 7 + i + 20);
    }
    for (int i = 0; i < 2; i++) {
        m->roles[i] = PC_NEW(PipelineRole, pipeline_role);
        fill_pc_PipelineRole(m->roles[i], k * 7 + i + 10);
        m->inputs[i] = PC_NEW(PipelineTensor, pipeline_tensor);
        fill_pc_PipelineTensor(m->inputs[i], k * 7 + i + 30);
        m->outputs[i] = PC_NEW(PipelineTensor, pipeline_tensor);
        fill_pc_PipelineTensor(m->outputs[i], k * 7 + i + 40);
    }
    m->n_dtypes = 2;
    m->dtypes = STRS(2, k, 7);
    m->n_phases = 3;
    m->phases = STRS(3, k, 8);
    m->size_multiple = (uint32_t)(16 * k + 16);
}

static void fill_nb_PipelineInfo(NB(PipelineInfo) *m, int k)
{
    m->name = S(k, 1);
    m->summary = S(k, 2);
    m->roles_count = 2;
    m->roles = A(2 * sizeof *m->roles);
    m->params_count = 3;
    m->params = A(3 * sizeof *m->params);
    m->inputs_count = 2;
    m->inputs = A(2 * sizeof *m->inputs);
    m->outputs_count = 2;
    m->outputs = A(2 * sizeof *m->outputs);
    for (int i = 0; i < 3; i++)
        fill_nb_PipelineParam(&m->params[i], k * 7 + i + 20);
    for (int i = 0; i < 2; i++) {
        fill_nb_PipelineRole(&m->roles[i], k * 7 + i + 10);
        fill_nb_PipelineTensor(&m->inputs[i], k * 7 + i + 30);
        fill_nb_PipelineTensor(&m->outputs[i], k * 7 + i + 40);
    }
    m->dtypes_count = 2;
    m->dtypes = STRS(2, k, 7);
    m->phases_count = 3;
    m->phases = STRS(3, k, 8);
    m->size_multiple = (uint32_t)(16 * k + 16);
}

static void cmp_PipelineInfo(const PC(PipelineInfo) *p, const NB(PipelineInfo) *n)
{
    CHECK_STR_EQ(n->name, p->name);
    CHECK_STR_EQ(n->summary, p->summary);
    REQUIRE(p->n_roles == n->roles_count && p->n_params == n->params_count &&
            p->n_inputs == n->inputs_count && p->n_outputs == n->outputs_count);
    for (size_t i = 0; i < p->n_roles; i++)
        cmp_PipelineRole(p->roles[i], &n->roles[i]);
    for (size_t i = 0; i < p->n_params; i++)
        cmp_PipelineParam(p->params[i], &n->params[i]);
    for (size_t i = 0; i < p->n_inputs; i++)
        cmp_PipelineTensor(p->inputs[i], &n->inputs[i]);
    for (size_t i = 0; i < p->n_outputs; i++)
        cmp_PipelineTensor(p->outputs[i], &n->outputs[i]);
    cmp_strs(p->dtypes, p->n_dtypes, n->dtypes, n->dtypes_count);
    cmp_strs(p->phases, p->n_phases, n->phases, n->phases_count);
    CHECK(p->size_multiple == n->size_multiple);
}

static void fill_pc_ListPipelinesResponse(PC(ListPipelinesResponse) *m, int k)
{
    m->n_pipelines = 2;
    m->pipelines = A(2 * sizeof *m->pipelines);
    for (int i = 0; i < 2; i++) {
        m->pipelines[i] = PC_NEW(PipelineInfo, pipeline_info);
        fill_pc_PipelineInfo(m->pipelines[i], k * 5 + i + 1);
    }
}

static void fill_nb_ListPipelinesResponse(NB(ListPipelinesResponse) *m, int k)
{
    m->pipelines_count = 2;
    m->pipelines = A(2 * sizeof *m->pipelines);
    for (int i = 0; i < 2; i++)
        fill_nb_PipelineInfo(&m->pipelines[i], k * 5 + i + 1);
}

static void cmp_ListPipelinesResponse(const PC(ListPipelinesResponse) *p,
                                      const NB(ListPipelinesResponse) *n)
{
    REQUIRE(p->n_pipelines == n->pipelines_count);
    for (size_t i = 0; i < p->n_pipelines; i++)
        cmp_PipelineInfo(p->pipelines[i], &n->pipelines[i]);
}

static void fill_pc_StepParam(PC(StepParam) *m, int k)
{
    m->name = S(k, 1);
    m->value = S(k, 2);
}

static void fill_nb_StepParam(NB(StepParam) *m, int k)
{
    m->name = S(k, 1);
    m->value = S(k, 2);
}

static void cmp_StepParam(const PC(StepParam) *p, const NB(StepParam) *n)
{
    CHECK_STR_EQ(n->name, p->name);
    CHECK_STR_EQ(n->value, p->value);
}

static void fill_pc_AuxModel(PC(AuxModel) *m, int k)
{
    m->role = S(k, 1);
    m->model_id = S(k, 2);
}

static void fill_nb_AuxModel(NB(AuxModel) *m, int k)
{
    m->role = S(k, 1);
    m->model_id = S(k, 2);
}

static void cmp_AuxModel(const PC(AuxModel) *p, const NB(AuxModel) *n)
{
    CHECK_STR_EQ(n->role, p->role);
    CHECK_STR_EQ(n->model_id, p->model_id);
}

static void fill_pc_RunStepRequest(PC(RunStepRequest) *m, int k)
{
    m->model_id = S(k, 1);
    m->step = S(k, 2);
    m->n_inputs = 2;
    m->inputs = A(2 * sizeof *m->inputs);
    m->n_params = 2;
    m->params = A(2 * sizeof *m->params);
    m->n_aux_models = 2;
    m->aux_models = A(2 * sizeof *m->aux_models);
    for (int i = 0; i < 2; i++) {
        m->inputs[i] = PC_NEW(Tensor, tensor);
        fill_pc_Tensor(m->inputs[i], k * 5 + i + 1);
        m->params[i] = PC_NEW(StepParam, step_param);
        fill_pc_StepParam(m->params[i], k * 5 + i + 3);
        m->aux_models[i] = PC_NEW(AuxModel, aux_model);
        fill_pc_AuxModel(m->aux_models[i], k * 5 + i + 5);
    }
    m->output_region = PC_NEW(SharedRegion, shared_region);
    fill_pc_SharedRegion(m->output_region, k + 6);
    m->max_inline_output_bytes = U64(k, 7);
}

static void fill_nb_RunStepRequest(NB(RunStepRequest) *m, int k)
{
    m->model_id = S(k, 1);
    m->step = S(k, 2);
    m->inputs_count = 2;
    m->inputs = A(2 * sizeof *m->inputs);
    m->params_count = 2;
    m->params = A(2 * sizeof *m->params);
    m->aux_models_count = 2;
    m->aux_models = A(2 * sizeof *m->aux_models);
    for (int i = 0; i < 2; i++) {
        fill_nb_Tensor(&m->inputs[i], k * 5 + i + 1);
        fill_nb_StepParam(&m->params[i], k * 5 + i + 3);
        fill_nb_AuxModel(&m->aux_models[i], k * 5 + i + 5);
    }
    m->has_output_region = true;
    fill_nb_SharedRegion(&m->output_region, k + 6);
    m->max_inline_output_bytes = U64(k, 7);
}

static void cmp_RunStepRequest(const PC(RunStepRequest) *p, const NB(RunStepRequest) *n)
{
    CHECK_STR_EQ(n->model_id, p->model_id);
    CHECK_STR_EQ(n->step, p->step);
    REQUIRE(p->n_inputs == n->inputs_count && p->n_params == n->params_count &&
            p->n_aux_models == n->aux_models_count);
    for (size_t i = 0; i < p->n_inputs; i++)
        cmp_Tensor(p->inputs[i], &n->inputs[i]);
    for (size_t i = 0; i < p->n_params; i++)
        cmp_StepParam(p->params[i], &n->params[i]);
    for (size_t i = 0; i < p->n_aux_models; i++)
        cmp_AuxModel(p->aux_models[i], &n->aux_models[i]);
    REQUIRE(p->output_region && n->has_output_region);
    cmp_SharedRegion(p->output_region, &n->output_region);
    CHECK(p->max_inline_output_bytes == n->max_inline_output_bytes);
}

static void fill_pc_RunStepResponse(PC(RunStepResponse) *m, int k)
{
    m->n_outputs = 2;
    m->outputs = A(2 * sizeof *m->outputs);
    for (int i = 0; i < 2; i++) {
        m->outputs[i] = PC_NEW(Tensor, tensor);
        fill_pc_Tensor(m->outputs[i], k * 3 + i + 1);
    }
    m->queue_s = D(k, 2);
    m->compute_s = D(k, 3);
}

static void fill_nb_RunStepResponse(NB(RunStepResponse) *m, int k)
{
    m->outputs_count = 2;
    m->outputs = A(2 * sizeof *m->outputs);
    for (int i = 0; i < 2; i++)
        fill_nb_Tensor(&m->outputs[i], k * 3 + i + 1);
    m->queue_s = D(k, 2);
    m->compute_s = D(k, 3);
}

static void cmp_RunStepResponse(const PC(RunStepResponse) *p, const NB(RunStepResponse) *n)
{
    REQUIRE(p->n_outputs == n->outputs_count);
    for (size_t i = 0; i < p->n_outputs; i++)
        cmp_Tensor(p->outputs[i], &n->outputs[i]);
    CHECK(same_double(p->queue_s, n->queue_s));
    CHECK(same_double(p->compute_s, n->compute_s));
}

static void fill_pc_PipelineModel(PC(PipelineModel) *m, int k)
{
    m->role = S(k, 1);
    m->model_id = S(k, 2);
    m->n_paths = 3;
    m->paths = STRS(3, k, 3);
}

static void fill_nb_PipelineModel(NB(PipelineModel) *m, int k)
{
    m->role = S(k, 1);
    m->model_id = S(k, 2);
    m->paths_count = 3;
    m->paths = STRS(3, k, 3);
}

static void cmp_PipelineModel(const PC(PipelineModel) *p, const NB(PipelineModel) *n)
{
    CHECK_STR_EQ(n->role, p->role);
    CHECK_STR_EQ(n->model_id, p->model_id);
    cmp_strs(p->paths, p->n_paths, n->paths, n->paths_count);
}

static void fill_pc_RunPipelineRequest(PC(RunPipelineRequest) *m, int k)
{
    m->pipeline = S(k, 1);
    m->n_models = 2;
    m->models = A(2 * sizeof *m->models);
    m->n_params = 2;
    m->params = A(2 * sizeof *m->params);
    for (int i = 0; i < 2; i++) {
        m->models[i] = PC_NEW(PipelineModel, pipeline_model);
        fill_pc_PipelineModel(m->models[i], k * 5 + i + 2);
        m->params[i] = PC_NEW(StepParam, step_param);
        fill_pc_StepParam(m->params[i], k * 5 + i + 5);
    }
    m->prompt = S(k, 3);
    m->negative_prompt = S(k, 4);
    m->input_image = PC_NEW(Tensor, tensor);
    fill_pc_Tensor(m->input_image, k + 6);
    m->controlnet_image = PC_NEW(Tensor, tensor);
    fill_pc_Tensor(m->controlnet_image, k + 7);
    m->initial_noise = PC_NEW(Tensor, tensor);
    fill_pc_Tensor(m->initial_noise, k + 8);
    m->dtype = S(k, 9);
    m->tokenizer = S(k, 10);
    m->output_region = PC_NEW(SharedRegion, shared_region);
    fill_pc_SharedRegion(m->output_region, k + 11);
    m->max_inline_output_bytes = U64(k, 12);
    m->n_inputs = 2;
    m->inputs = A(2 * sizeof *m->inputs);
    for (int i = 0; i < 2; i++) {
        m->inputs[i] = PC_NEW(Tensor, tensor);
        fill_pc_Tensor(m->inputs[i], k * 3 + i + 13);
    }
    m->named_outputs = 1;
    m->video_format = S(k, 15);
    m->fps = D(k, 16);
    m->video_quality = INT32_MIN + k * 100 + 17; /* negative: a 10-byte varint */
    m->video_lossless = 1;
}

static void fill_nb_RunPipelineRequest(NB(RunPipelineRequest) *m, int k)
{
    m->pipeline = S(k, 1);
    m->models_count = 2;
    m->models = A(2 * sizeof *m->models);
    m->params_count = 2;
    m->params = A(2 * sizeof *m->params);
    for (int i = 0; i < 2; i++) {
        fill_nb_PipelineModel(&m->models[i], k * 5 + i + 2);
        fill_nb_StepParam(&m->params[i], k * 5 + i + 5);
    }
    m->prompt = S(k, 3);
    m->negative_prompt = S(k, 4);
    m->has_input_image = true;
    fill_nb_Tensor(&m->input_image, k + 6);
    m->has_controlnet_image = true;
    fill_nb_Tensor(&m->controlnet_image, k + 7);
    m->has_initial_noise = true;
    fill_nb_Tensor(&m->initial_noise, k + 8);
    m->dtype = S(k, 9);
    m->tokenizer = S(k, 10);
    m->has_output_region = true;
    fill_nb_SharedRegion(&m->output_region, k + 11);
    m->max_inline_output_bytes = U64(k, 12);
    m->inputs_count = 2;
    m->inputs = A(2 * sizeof *m->inputs);
    for (int i = 0; i < 2; i++)
        fill_nb_Tensor(&m->inputs[i], k * 3 + i + 13);
    m->named_outputs = true;
    m->video_format = S(k, 15);
    m->fps = D(k, 16);
    m->video_quality = INT32_MIN + k * 100 + 17; /* negative: a 10-byte varint */
    m->video_lossless = true;
}

static void cmp_RunPipelineRequest(const PC(RunPipelineRequest) *p, const NB(RunPipelineRequest) *n)
{
    CHECK_STR_EQ(n->pipeline, p->pipeline);
    REQUIRE(p->n_models == n->models_count && p->n_params == n->params_count);
    for (size_t i = 0; i < p->n_models; i++)
        cmp_PipelineModel(p->models[i], &n->models[i]);
    CHECK_STR_EQ(n->prompt, p->prompt);
    CHECK_STR_EQ(n->negative_prompt, p->negative_prompt);
    for (size_t i = 0; i < p->n_params; i++)
        cmp_StepParam(p->params[i], &n->params[i]);
    REQUIRE(p->input_image && n->has_input_image);
    cmp_Tensor(p->input_image, &n->input_image);
    REQUIRE(p->controlnet_image && n->has_controlnet_image);
    cmp_Tensor(p->controlnet_image, &n->controlnet_image);
    REQUIRE(p->initial_noise && n->has_initial_noise);
    cmp_Tensor(p->initial_noise, &n->initial_noise);
    CHECK_STR_EQ(n->dtype, p->dtype);
    CHECK_STR_EQ(n->tokenizer, p->tokenizer);
    REQUIRE(p->output_region && n->has_output_region);
    cmp_SharedRegion(p->output_region, &n->output_region);
    CHECK(p->max_inline_output_bytes == n->max_inline_output_bytes);
    REQUIRE(p->n_inputs == n->inputs_count);
    for (size_t i = 0; i < p->n_inputs; i++)
        cmp_Tensor(p->inputs[i], &n->inputs[i]);
    CHECK(p->named_outputs == n->named_outputs);
    CHECK_STR_EQ(n->video_format, p->video_format);
    CHECK(p->fps == n->fps);
    CHECK(p->video_quality == n->video_quality);
    CHECK(p->video_lossless == n->video_lossless);
}

static void fill_pc_PipelineResult(PC(PipelineResult) *m, int k)
{
    m->name = S(k, 1);
    m->is_integer = 1;
    m->integer = U64(k, 3);
    m->number = D(k, 4);
}

static void fill_nb_PipelineResult(NB(PipelineResult) *m, int k)
{
    m->name = S(k, 1);
    m->is_integer = true;
    m->integer = U64(k, 3);
    m->number = D(k, 4);
}

static void cmp_PipelineResult(const PC(PipelineResult) *p, const NB(PipelineResult) *n)
{
    CHECK_STR_EQ(n->name, p->name);
    CHECK(p->is_integer == n->is_integer);
    CHECK(p->integer == n->integer);
    CHECK(same_double(p->number, n->number));
}

static void fill_pc_RunPipelineResponse(PC(RunPipelineResponse) *m, int k)
{
    m->png = PC_NEW(Tensor, tensor);
    fill_pc_Tensor(m->png, k + 1);
    m->latents = PC_NEW(Tensor, tensor);
    fill_pc_Tensor(m->latents, k + 2);
    m->seed = U64(k, 3);
    m->steps = U32(k, 4);
    m->height = U32(k, 5);
    m->width = U32(k, 6);
    m->queue_s = D(k, 7);
    m->encode_s = D(k, 8);
    m->denoise_s = D(k, 9);
    m->decode_s = D(k, 10);
    m->n_outputs = 2;
    m->outputs = A(2 * sizeof *m->outputs);
    m->n_results = 3;
    m->results = A(3 * sizeof *m->results);
    for (int i = 0; i < 3; i++) {
        if (i < 2) {
            m->outputs[i] = PC_NEW(Tensor, tensor);
            fill_pc_Tensor(m->outputs[i], k * 3 + i + 11);
        }
        m->results[i] = PC_NEW(PipelineResult, pipeline_result);
        fill_pc_PipelineResult(m->results[i], k * 5 + i + 12);
    }
}

static void fill_nb_RunPipelineResponse(NB(RunPipelineResponse) *m, int k)
{
    m->has_png = true;
    fill_nb_Tensor(&m->png, k + 1);
    m->has_latents = true;
    fill_nb_Tensor(&m->latents, k + 2);
    m->seed = U64(k, 3);
    m->steps = U32(k, 4);
    m->height = U32(k, 5);
    m->width = U32(k, 6);
    m->queue_s = D(k, 7);
    m->encode_s = D(k, 8);
    m->denoise_s = D(k, 9);
    m->decode_s = D(k, 10);
    m->outputs_count = 2;
    m->outputs = A(2 * sizeof *m->outputs);
    m->results_count = 3;
    m->results = A(3 * sizeof *m->results);
    for (int i = 0; i < 3; i++) {
        if (i < 2)
            fill_nb_Tensor(&m->outputs[i], k * 3 + i + 11);
        fill_nb_PipelineResult(&m->results[i], k * 5 + i + 12);
    }
}

static void cmp_RunPipelineResponse(const PC(RunPipelineResponse) *p, const NB(RunPipelineResponse) *n)
{
    REQUIRE(p->png && n->has_png);
    cmp_Tensor(p->png, &n->png);
    REQUIRE(p->latents && n->has_latents);
    cmp_Tensor(p->latents, &n->latents);
    CHECK(p->seed == n->seed);
    CHECK(p->steps == n->steps);
    CHECK(p->height == n->height);
    CHECK(p->width == n->width);
    CHECK(same_double(p->queue_s, n->queue_s));
    CHECK(same_double(p->encode_s, n->encode_s));
    CHECK(same_double(p->denoise_s, n->denoise_s));
    CHECK(same_double(p->decode_s, n->decode_s));
    REQUIRE(p->n_outputs == n->outputs_count && p->n_results == n->results_count);
    for (size_t i = 0; i < p->n_outputs; i++)
        cmp_Tensor(p->outputs[i], &n->outputs[i]);
    for (size_t i = 0; i < p->n_results; i++)
        cmp_PipelineResult(p->results[i], &n->results[i]);
}

static void fill_pc_Progress(PC(Progress) *m, int k)
{
    m->phase = S(k, 1);
    m->done = U64(k, 2);
    m->total = U64(k, 3);
    m->elapsed_s = D(k, 4);
    m->eta_s = D(k, 5);
    m->message = S(k, 6);
}

static void fill_nb_Progress(NB(Progress) *m, int k)
{
    m->phase = S(k, 1);
    m->done = U64(k, 2);
    m->total = U64(k, 3);
    m->elapsed_s = D(k, 4);
    m->eta_s = D(k, 5);
    m->message = S(k, 6);
}

static void cmp_Progress(const PC(Progress) *p, const NB(Progress) *n)
{
    CHECK_STR_EQ(n->phase, p->phase);
    CHECK(p->done == n->done);
    CHECK(p->total == n->total);
    CHECK(same_double(p->elapsed_s, n->elapsed_s));
    CHECK(same_double(p->eta_s, n->eta_s));
    CHECK_STR_EQ(n->message, p->message);
}

/* ---- the two oneof messages ---- */

static void fill_pc_Event(PC(Event) *m, int k)
{
    m->kind_case = DIFFSYNTH__V1__EVENT__KIND_PROGRESS;
    m->progress = PC_NEW(Progress, progress);
    fill_pc_Progress(m->progress, k + 1);
}

static void fill_nb_Event(NB(Event) *m, int k)
{
    m->which_kind = diffsynth_v1_Event_progress_tag;
    fill_nb_Progress(&m->kind.progress, k + 1);
}

static void cmp_Event(const PC(Event) *p, const NB(Event) *n)
{
    REQUIRE((int)p->kind_case == (int)n->which_kind);
    REQUIRE(n->which_kind == diffsynth_v1_Event_progress_tag && p->progress);
    cmp_Progress(p->progress, &n->kind.progress);
}

/* Every body of Envelope: (member, message type, descriptor name). */
#define BODIES(X)                                                                             \
    X(error, Error, error)                                                                    \
    X(event, Event, event)                                                                    \
    X(identify, IdentifyRequest, identify_request)                                            \
    X(identify_result, IdentifyResponse, identify_response)                                   \
    X(load, LoadRequest, load_request)                                                        \
    X(load_result, LoadResponse, load_response)                                               \
    X(unload, UnloadRequest, unload_request)                                                  \
    X(unload_result, UnloadResponse, unload_response)                                         \
    X(list_models, ListModelsRequest, list_models_request)                                    \
    X(list_models_result, ListModelsResponse, list_models_response)                           \
    X(status, StatusRequest, status_request)                                                  \
    X(status_result, StatusResponse, status_response)                                         \
    X(cancel, CancelRequest, cancel_request)                                                  \
    X(cancel_result, CancelResponse, cancel_response)                                         \
    X(list_configs, ListConfigsRequest, list_configs_request)                                 \
    X(list_configs_result, ListConfigsResponse, list_configs_response)                        \
    X(list_pipelines, ListPipelinesRequest, list_pipelines_request)                           \
    X(list_pipelines_result, ListPipelinesResponse, list_pipelines_response)                  \
    X(run_step, RunStepRequest, run_step_request)                                             \
    X(run_step_result, RunStepResponse, run_step_response)                                    \
    X(run_pipeline, RunPipelineRequest, run_pipeline_request)                                 \
    X(run_pipeline_result, RunPipelineResponse, run_pipeline_response)

static const pb_size_t body_tags[] = {
#define TAG(member, T, snake) diffsynth_v1_Envelope_##member##_tag,
    BODIES(TAG)
#undef TAG
};

/* The body the next Envelope fill uses. */
static pb_size_t envelope_body;

static void fill_pc_Envelope(PC(Envelope) *m, int k)
{
    m->request_id = U64(k, 1);
    m->fd_count = U32(k, 4);
    m->body_case = (Diffsynth__V1__Envelope__BodyCase)envelope_body;
    switch (envelope_body) {
#define FILL(member, T, snake)                                                                \
    case diffsynth_v1_Envelope_##member##_tag:                                                \
        m->member = PC_NEW(T, snake);                                                         \
        fill_pc_##T(m->member, k + 2);                                                        \
        break;
        BODIES(FILL)
#undef FILL
    default: abort();
    }
}

static void fill_nb_Envelope(NB(Envelope) *m, int k)
{
    m->request_id = U64(k, 1);
    m->fd_count = U32(k, 4);
    m->which_body = envelope_body;
    switch (envelope_body) {
#define FILL(member, T, snake)                                                                \
    case diffsynth_v1_Envelope_##member##_tag:                                                \
        fill_nb_##T(&m->body.member, k + 2);                                                  \
        break;
        BODIES(FILL)
#undef FILL
    default: abort();
    }
}

static void cmp_Envelope(const PC(Envelope) *p, const NB(Envelope) *n)
{
    CHECK(p->request_id == n->request_id);
    CHECK(p->fd_count == n->fd_count);
    REQUIRE((int)p->body_case == (int)n->which_body);
    switch (n->which_body) {
#define CMP(member, T, snake)                                                                 \
    case diffsynth_v1_Envelope_##member##_tag:                                                \
        REQUIRE(p->member);                                                                   \
        cmp_##T(p->member, &n->body.member);                                                  \
        break;
        BODIES(CMP)
#undef CMP
    default: CHECK_MSG(0, "unknown body %d", (int)n->which_body);
    }
}

/* ---- did the fill set every field? A walk over protobuf-c's descriptors ---- */

static bool nonzero(const void *p, size_t size)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < size; i++)
        if (b[i])
            return true;
    return false;
}

static size_t scalar_size(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE: return 8;
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    default: return 4;
    }
}

/* Returns false and names the first field (dotted path) still at its default. */
static bool all_fields_set(const ProtobufCMessage *m, char *where, size_t size)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue;  /* another member of the oneof is the one set */
        bool set;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t count = *(const size_t *)(base + f->quantifier_offset);
            set = count > 0;
            if (set && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                void *const *items = *(void *const *const *)(base + f->offset);
                for (size_t k = 0; k < count; k++)
                    if (!all_fields_set(items[k], where, size))
                        goto nested;
            }
        } else if (f->type == PROTOBUF_C_TYPE_STRING) {
            const char *s = *(const char *const *)(base + f->offset);
            set = s && s[0];
        } else if (f->type == PROTOBUF_C_TYPE_BYTES) {
            set = ((const ProtobufCBinaryData *)(base + f->offset))->len > 0;
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
            const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)(base + f->offset);
            set = sub != NULL;
            if (set && !all_fields_set(sub, where, size))
                goto nested;
        } else {
            set = nonzero(base + f->offset, scalar_size(f->type));
        }
        if (!set) {
            snprintf(where, size, "%s.%s", d->short_name, f->name);
            return false;
        }
        continue;
    nested: {
        char inner[512];
        snprintf(inner, sizeof inner, "%s", where);
        snprintf(where, size, "%s.%s>%s", d->short_name, f->name, inner);
        return false;
    }
    }
    return true;
}

/* ---- the driver ---- */

typedef struct conf_case {
    const char *name;
    const ProtobufCMessageDescriptor *pc_desc;
    const pb_msgdesc_t *nb_fields;
    size_t nb_size;
    void (*fill_pc)(void *m, int k);
    void (*fill_nb)(void *m, int k);
    void (*cmp)(const void *p, const void *n);
} conf_case;

#define WRAP(T)                                                                               \
    static void wfill_pc_##T(void *m, int k) { fill_pc_##T(m, k); }                           \
    static void wfill_nb_##T(void *m, int k) { fill_nb_##T(m, k); }                           \
    static void wcmp_##T(const void *p, const void *n) { cmp_##T(p, n); }
#define CASE(T, snake)                                                                        \
    {#T, &diffsynth__v1__##snake##__descriptor, diffsynth_v1_##T##_fields, sizeof(NB(T)),     \
     wfill_pc_##T, wfill_nb_##T, wcmp_##T}

WRAP(Error) WRAP(SharedRegion) WRAP(Tensor) WRAP(ModelConfig) WRAP(TierBytes) WRAP(LoadedModel)
WRAP(IdentifyRequest) WRAP(ConfigSuggestion) WRAP(IdentifyResponse) WRAP(LoadRequest)
WRAP(LoadResponse) WRAP(UnloadRequest) WRAP(UnloadResponse) WRAP(ListModelsRequest)
WRAP(ListModelsResponse) WRAP(StatusRequest) WRAP(VramStatus) WRAP(StatusResponse)
WRAP(CancelRequest) WRAP(CancelResponse) WRAP(ListConfigsRequest) WRAP(ConfigEntry)
WRAP(ListConfigsResponse) WRAP(StepParam) WRAP(AuxModel) WRAP(RunStepRequest) WRAP(RunStepResponse)
WRAP(PipelineModel) WRAP(RunPipelineRequest) WRAP(RunPipelineResponse) WRAP(Progress) WRAP(Event)
WRAP(Envelope) WRAP(ListPipelinesRequest) WRAP(PipelineRole) WRAP(PipelineParam)
WRAP(PipelineTensor) WRAP(PipelineInfo) WRAP(ListPipelinesResponse) WRAP(PipelineResult)

static const conf_case cases[] = {
    CASE(Error, error),
    CASE(SharedRegion, shared_region),
    CASE(Tensor, tensor),
    CASE(ModelConfig, model_config),
    CASE(TierBytes, tier_bytes),
    CASE(LoadedModel, loaded_model),
    CASE(IdentifyRequest, identify_request),
    CASE(ConfigSuggestion, config_suggestion),
    CASE(IdentifyResponse, identify_response),
    CASE(LoadRequest, load_request),
    CASE(LoadResponse, load_response),
    CASE(UnloadRequest, unload_request),
    CASE(UnloadResponse, unload_response),
    CASE(ListModelsRequest, list_models_request),
    CASE(ListModelsResponse, list_models_response),
    CASE(StatusRequest, status_request),
    CASE(VramStatus, vram_status),
    CASE(StatusResponse, status_response),
    CASE(CancelRequest, cancel_request),
    CASE(CancelResponse, cancel_response),
    CASE(ListConfigsRequest, list_configs_request),
    CASE(ConfigEntry, config_entry),
    CASE(ListConfigsResponse, list_configs_response),
    CASE(ListPipelinesRequest, list_pipelines_request),
    CASE(PipelineRole, pipeline_role),
    CASE(PipelineParam, pipeline_param),
    CASE(PipelineTensor, pipeline_tensor),
    CASE(PipelineInfo, pipeline_info),
    CASE(ListPipelinesResponse, list_pipelines_response),
    CASE(StepParam, step_param),
    CASE(AuxModel, aux_model),
    CASE(RunStepRequest, run_step_request),
    CASE(RunStepResponse, run_step_response),
    CASE(PipelineModel, pipeline_model),
    CASE(RunPipelineRequest, run_pipeline_request),
    CASE(PipelineResult, pipeline_result),
    CASE(RunPipelineResponse, run_pipeline_response),
    CASE(Progress, progress),
    CASE(Event, event),
    CASE(Envelope, envelope),
};

static void check_case(const conf_case *c, int k)
{
    void *p = pc_new(c->pc_desc);
    c->fill_pc(p, k);
    void *n = A(c->nb_size);
    c->fill_nb(n, k);
    char where[1024] = "";
    CHECK_MSG(all_fields_set(p, where, sizeof where), "%s: the fill left %s at its default",
              c->name, where);
    c->cmp(p, n);

    size_t pc_len = protobuf_c_message_get_packed_size(p);
    uint8_t *pc_buf = A(pc_len);
    REQUIRE(protobuf_c_message_pack(p, pc_buf) == pc_len);
    size_t nb_len = 0;
    REQUIRE(pb_get_encoded_size(&nb_len, c->nb_fields, n));
    uint8_t *nb_buf = A(nb_len);
    pb_ostream_t os = pb_ostream_from_buffer(nb_buf, nb_len);
    REQUIRE(pb_encode(&os, c->nb_fields, n));
    REQUIRE(os.bytes_written == nb_len);
    CHECK_MSG(pc_len == nb_len && memcmp(pc_buf, nb_buf, pc_len) == 0,
              "%s: encodings differ (protobuf-c %zu bytes, nanopb %zu bytes)", c->name, pc_len,
              nb_len);
    CHECK_MSG(c->pc_desc->n_fields == 0 || pc_len > 0, "%s encoded to nothing", c->name);

    /* protobuf-c -> nanopb */
    void *n2 = calloc(1, c->nb_size);
    REQUIRE(n2);
    pb_istream_t is = pb_istream_from_buffer(pc_buf, pc_len);
    bool decoded = pb_decode(&is, c->nb_fields, n2);
    CHECK_MSG(decoded, "%s: nanopb cannot decode protobuf-c's bytes: %s", c->name, PB_GET_ERROR(&is));
    if (decoded)
        c->cmp(p, n2);
    pb_release(c->nb_fields, n2);
    free(n2);

    /* nanopb -> protobuf-c */
    ProtobufCMessage *p2 = protobuf_c_message_unpack(c->pc_desc, NULL, nb_len, nb_buf);
    CHECK_MSG(p2 != NULL, "%s: protobuf-c cannot decode nanopb's bytes", c->name);
    if (p2) {
        c->cmp(p2, n);
        protobuf_c_message_free_unpacked(p2, NULL);
    }
}

static void run_case(const conf_case *c, int k)
{
    int failed_before = test_case_failed;
    test_case_failed = 0;
    check_case(c, k);
    if (test_case_failed)
        fprintf(stderr, "  ^ in message %s (seed %d, body %d)\n", c->name, k, (int)envelope_body);
    test_case_failed |= failed_before;
    arena_free();
}

static void test_every_message_type(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (strcmp(cases[i].name, "Envelope") == 0)
            continue;
        for (int k = 0; k < 3; k++)
            run_case(&cases[i], k);
    }
}

static void test_every_envelope_body(void)
{
    const conf_case *env = &cases[sizeof cases / sizeof cases[0] - 1];
    REQUIRE(strcmp(env->name, "Envelope") == 0);
    for (size_t b = 0; b < sizeof body_tags / sizeof body_tags[0]; b++) {
        envelope_body = body_tags[b];
        for (int k = 0; k < 2; k++)
            run_case(env, k);
    }
    /* The table covers every body the .proto declares (besides request_id and fd_count). */
    const ProtobufCMessageDescriptor *d = &diffsynth__v1__envelope__descriptor;
    CHECK(d->n_fields == 2 + sizeof body_tags / sizeof body_tags[0]);
}

/* Every message type reachable from Envelope has a case of its own, so a message added to the
 * .proto is tested alone, not only inside its parent. */
static bool has_case(const ProtobufCMessageDescriptor *d)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (cases[i].pc_desc == d)
            return true;
    return false;
}

static void check_reachable_cased(const ProtobufCMessageDescriptor *d, int depth)
{
    REQUIRE(depth < 16);
    CHECK_MSG(has_case(d), "message %s has no conformance case", d->short_name);
    for (unsigned i = 0; i < d->n_fields; i++)
        if (d->fields[i].type == PROTOBUF_C_TYPE_MESSAGE)
            check_reachable_cased(d->fields[i].descriptor, depth + 1);
}

static void test_every_message_has_a_case(void)
{
    check_reachable_cased(&diffsynth__v1__envelope__descriptor, 0);
}

/* Default-valued messages encode to nothing in both, and decode back to defaults. */
static void test_defaults_encode_empty(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const conf_case *c = &cases[i];
        void *p = pc_new(c->pc_desc);
        void *n = A(c->nb_size);
        size_t nb_len = 1;
        CHECK(protobuf_c_message_get_packed_size(p) == 0);
        CHECK(pb_get_encoded_size(&nb_len, c->nb_fields, n) && nb_len == 0);
        ProtobufCMessage *p2 = protobuf_c_message_unpack(c->pc_desc, NULL, 0, (const uint8_t *)"");
        CHECK(p2 != NULL);
        if (p2)
            protobuf_c_message_free_unpacked(p2, NULL);
        arena_free();
    }
}

/* One asymmetry, for both sides to know: nanopb writes a non-NULL empty string (it only skips
 * NULL pointers), protobuf-c skips it. The decoded values agree; the bytes do not. Clients
 * leave absent strings NULL. */
static void test_empty_string_presence(void)
{
    NB(Error) n = {.code = diffsynth_v1_Code_OK, .message = ""};
    size_t nb_len = 0;
    CHECK(pb_get_encoded_size(&nb_len, diffsynth_v1_Error_fields, &n));
    uint8_t buf[8];
    pb_ostream_t os = pb_ostream_from_buffer(buf, sizeof buf);
    REQUIRE(pb_encode(&os, diffsynth_v1_Error_fields, &n));
    CHECK(os.bytes_written == 2 && buf[0] == 0x12 && buf[1] == 0x00);
    PC(Error) p = DIFFSYNTH__V1__ERROR__INIT;
    p.message = "";
    CHECK(protobuf_c_message_get_packed_size(&p.base) == 0);
    PC(Error) *p2 = diffsynth__v1__error__unpack(NULL, os.bytes_written, buf);
    REQUIRE(p2);
    CHECK_STR_EQ(p2->message, "");
    diffsynth__v1__error__free_unpacked(p2, NULL);
    n.message = NULL;
    CHECK(pb_get_encoded_size(&nb_len, diffsynth_v1_Error_fields, &n) && nb_len == 0);
}

int main(void)
{
    RUN(test_every_message_type);
    RUN(test_every_envelope_body);
    RUN(test_every_message_has_a_case);
    RUN(test_defaults_encode_empty);
    RUN(test_empty_string_presence);
    free(arena);
    return test_summary();
}
