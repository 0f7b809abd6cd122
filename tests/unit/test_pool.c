/* The ModelPool: insertion, deduplication by file identity, references per client, unload
 * rules, ids, and pinned models outliving their last reference. Models come from the real
 * loader on tiny safetensors files written here: a block-wise ControlNet shrunk by kwargs
 * (num_layers 1, dim 4, in_dim 2), whose parameter names are upstream's. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/pool.h"
#include "models/model_loader.h"
#include "test.h"

static char tmpdir[] = "/tmp/ds-test-pool-XXXXXX";
static char file_a[256], file_b[256];

static const ds_model_config CONFIG = {
    .model_hash = "",  /* the loader does not check it; identification does */
    .model_name = "qwen_image_blockwise_controlnet",
    .model_class = "diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet",
    .extra_kwargs_json = "{\"num_layers\": 1, \"dim\": 4, \"in_dim\": 2}",
    .source = "test",
};

/* The same class and files under another name: a different config. */
static const ds_model_config CONFIG_OTHER_NAME = {
    .model_hash = "",
    .model_name = "controlnet_alias",
    .model_class = "diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet",
    .extra_kwargs_json = "{\"num_layers\": 1, \"dim\": 4, \"in_dim\": 2}",
    .source = "test",
};

static int write_model(const char *path)
{
    static const struct {
        const char *name;
        const char *shape;
        int numel;
    } tensors[] = {
        {"img_in.weight", "[4,2]", 8},
        {"img_in.bias", "[4]", 4},
        {"controlnet_blocks.0.x_rms.weight", "[4]", 4},
        {"controlnet_blocks.0.y_rms.weight", "[4]", 4},
        {"controlnet_blocks.0.input_proj.weight", "[4,4]", 16},
        {"controlnet_blocks.0.input_proj.bias", "[4]", 4},
        {"controlnet_blocks.0.output_proj.weight", "[4,4]", 16},
        {"controlnet_blocks.0.output_proj.bias", "[4]", 4},
    };
    char header[2048];
    size_t used = 0;
    int offset = 0;
    used += (size_t)snprintf(header, sizeof header, "{");
    for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++) {
        int end = offset + tensors[i].numel * 4;
        used += (size_t)snprintf(header + used, sizeof header - used,
                                 "%s\"%s\":{\"dtype\":\"F32\",\"shape\":%s,\"data_offsets\":[%d,%d]}",
                                 i ? "," : "", tensors[i].name, tensors[i].shape, offset, end);
        offset = end;
    }
    used += (size_t)snprintf(header + used, sizeof header - used, "}");
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    uint8_t len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)((uint64_t)used >> (8 * i));
    int ok = fwrite(len, 1, 8, f) == 8 && fwrite(header, 1, used, f) == used;
    for (int i = 0; i < offset && ok; i++)
        ok = fputc(0, f) != EOF;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static ds_loaded_model *load(const char *path, const ds_model_config *config)
{
    ds_model_files *files;
    ds_error err;
    const char *paths[] = {path};
    if (ds_model_files_open(paths, 1, &files, &err) != DS_OK) {
        fprintf(stderr, "open %s: %s\n", path, err.message);
        return NULL;
    }
    ds_loaded_model *model;
    if (ds_model_load(config, files, &model, &err) != DS_OK) {
        fprintf(stderr, "load %s: %s\n", path, err.message);
        ds_model_files_close(files);
        return NULL;
    }
    return model;
}

static void test_insert_and_ids(void)
{
    ds_pool *pool;
    ds_error err;
    REQUIRE(ds_pool_new(&pool, &err) == DS_OK);
    ds_loaded_model *a = load(file_a, &CONFIG);
    ds_loaded_model *b = load(file_b, &CONFIG);
    REQUIRE(a && b);
    CHECK(a->tensor_count == 8);
    CHECK(a->parameter_count == 60);

    ds_pool_model *ea, *eb;
    int reused = -1;
    CHECK(ds_pool_insert(pool, a, 1000, "uid:1000", 111, &ea, &reused, &err) == DS_OK);
    CHECK(reused == 0);
    CHECK_STR_EQ(ea->id, "m1");
    /* Same bytes, different file (inode): not the same model. */
    CHECK(ds_pool_insert(pool, b, 1000, "uid:1000", 222, &eb, &reused, &err) == DS_OK);
    CHECK(reused == 0);
    CHECK_STR_EQ(eb->id, "m2");
    CHECK(ds_pool_count(pool) == 2);
    CHECK(ds_pool_at(pool, 0) == ea && ds_pool_at(pool, 1) == eb);
    CHECK(ds_pool_find(pool, "m2") == eb);
    CHECK(ds_pool_find(pool, "m3") == NULL);
    CHECK(ea->loaded_at_unix_ms == 111);
    struct stat st;
    REQUIRE(stat(file_a, &st) == 0);
    CHECK(ds_pool_model_disk_bytes(ea) == (uint64_t)st.st_size);
    CHECK(ds_pool_disk_bytes(pool) == 2 * (uint64_t)st.st_size);

    /* Ids are never reused, even after every model is gone. */
    ds_pool_unref_result r;
    CHECK(ds_pool_unref(pool, "m1", 1000, 0, "uid:1000", 0, &r, &err) == DS_OK);
    CHECK(r.removed && r.freed && r.remaining == 0);
    CHECK(ds_pool_unref(pool, "m2", 1000, 0, "uid:1000", 0, &r, &err) == DS_OK);
    CHECK(ds_pool_count(pool) == 0);
    ds_loaded_model *c = load(file_a, &CONFIG);
    REQUIRE(c);
    ds_pool_model *ec;
    CHECK(ds_pool_insert(pool, c, 1000, "uid:1000", 333, &ec, &reused, &err) == DS_OK);
    CHECK_STR_EQ(ec->id, "m3");
    ds_pool_free(pool);
}

static void test_dedupe(void)
{
    ds_pool *pool;
    ds_error err;
    REQUIRE(ds_pool_new(&pool, &err) == DS_OK);
    ds_pool_model *e1, *e2, *e3;
    int reused;
    ds_loaded_model *m = load(file_a, &CONFIG);
    REQUIRE(m);
    CHECK(ds_pool_insert(pool, m, 1000, "alice", 1, &e1, &reused, &err) == DS_OK);
    /* The same config from the same file: a second reference, the new copy is freed. */
    m = load(file_a, &CONFIG);
    REQUIRE(m);
    CHECK(ds_pool_insert(pool, m, 1000, "bob", 2, &e2, &reused, &err) == DS_OK);
    CHECK(reused == 1);
    CHECK(e2 == e1);
    CHECK(e1->loaded_at_unix_ms == 1);
    REQUIRE(e1->client_count == 2);
    CHECK_STR_EQ(e1->clients[0], "alice");
    CHECK_STR_EQ(e1->clients[1], "bob");
    /* Another config on the same file is another model. */
    m = load(file_a, &CONFIG_OTHER_NAME);
    REQUIRE(m);
    CHECK(ds_pool_insert(pool, m, 1000, "alice", 3, &e3, &reused, &err) == DS_OK);
    CHECK(reused == 0);
    CHECK_STR_EQ(e3->id, "m2");
    CHECK(ds_pool_count(pool) == 2);

    /* A file rewritten in place (same inode, new mtime) is not the model loaded before. */
    struct timespec times[2] = {{.tv_sec = 1000000000, .tv_nsec = 0},
                                {.tv_sec = 1000000000, .tv_nsec = 0}};
    REQUIRE(utimensat(AT_FDCWD, file_a, times, 0) == 0);
    m = load(file_a, &CONFIG);
    REQUIRE(m);
    ds_pool_model *e4;
    CHECK(ds_pool_insert(pool, m, 1000, "alice", 4, &e4, &reused, &err) == DS_OK);
    CHECK(reused == 0);
    CHECK(e4 != e1);
    CHECK_STR_EQ(e4->id, "m3");
    ds_pool_free(pool);
}

static void test_references(void)
{
    ds_pool *pool;
    ds_error err;
    REQUIRE(ds_pool_new(&pool, &err) == DS_OK);
    ds_pool_model *e;
    int reused;
    const char *holders[] = {"alice", "bob", "alice"};
    for (int i = 0; i < 3; i++) {
        ds_loaded_model *m = load(file_b, &CONFIG);
        REQUIRE(m);
        CHECK(ds_pool_insert(pool, m, 1000, holders[i], 1, &e, &reused, &err) == DS_OK);
    }
    CHECK(e->client_count == 3);

    ds_pool_unref_result r;
    CHECK(ds_pool_unref(pool, "m7", 1000, 0, "alice", 0, &r, &err) == DS_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.message, "m7");
    /* Carol holds nothing: refused, and told who does. */
    CHECK(ds_pool_unref(pool, "m1", 1000, 0, "carol", 0, &r, &err) == DS_ERR_FAILED_PRECONDITION);
    CHECK_CONTAINS(err.message, "carol");
    CHECK_CONTAINS(err.message, "alice of uid 1000 (2), bob of uid 1000");
    CHECK(e->client_count == 3);

    CHECK(ds_pool_unref(pool, "m1", 1000, 0, "alice", 0, &r, &err) == DS_OK);
    CHECK(r.remaining == 2 && !r.removed && !r.freed);
    CHECK(ds_pool_unref(pool, "m1", 1000, 0, "alice", 0, &r, &err) == DS_OK);
    CHECK(r.remaining == 1);
    CHECK(ds_pool_unref(pool, "m1", 1000, 0, "alice", 0, &r, &err) == DS_ERR_FAILED_PRECONDITION);
    CHECK_STR_EQ(e->clients[0], "bob");

    /* all_references (the daemon's uid only) drops everyone's. */
    ds_loaded_model *m = load(file_b, &CONFIG);
    REQUIRE(m);
    CHECK(ds_pool_insert(pool, m, 1000, "dave", 1, &e, &reused, &err) == DS_OK);
    CHECK(reused == 1 && e->client_count == 2);
    CHECK(ds_pool_unref(pool, "m1", 1000, 1, "carol", 1, &r, &err) == DS_OK);
    CHECK(r.remaining == 0 && r.removed && r.freed);
    CHECK(ds_pool_find(pool, "m1") == NULL);
    CHECK(ds_pool_unref(pool, "m1", 1000, 0, "bob", 0, &r, &err) == DS_ERR_NOT_FOUND);
    ds_pool_free(pool);
}

/* A pinned model survives its last reference until the pin goes; the pool no longer shows or
 * deduplicates against it meanwhile. */
static void test_pinned(void)
{
    ds_pool *pool;
    ds_error err;
    REQUIRE(ds_pool_new(&pool, &err) == DS_OK);
    ds_pool_model *e, *again;
    int reused;
    ds_loaded_model *m = load(file_b, &CONFIG);
    REQUIRE(m);
    CHECK(ds_pool_insert(pool, m, 1000, "alice", 1, &e, &reused, &err) == DS_OK);
    ds_pool_pin(e);
    ds_pool_pin(e);
    ds_pool_unref_result r;
    CHECK(ds_pool_unref(pool, "m1", 1000, 0, "alice", 0, &r, &err) == DS_OK);
    CHECK(r.removed && !r.freed);
    CHECK(ds_pool_find(pool, "m1") == NULL);
    CHECK(ds_pool_count(pool) == 0);
    CHECK(ds_pool_disk_bytes(pool) == 0);
    /* The job still reads its weights. */
    CHECK_STR_EQ(e->model->model_name, "qwen_image_blockwise_controlnet");
    CHECK(e->model->params.count == 8);

    m = load(file_b, &CONFIG);
    REQUIRE(m);
    CHECK(ds_pool_insert(pool, m, 1000, "bob", 2, &again, &reused, &err) == DS_OK);
    CHECK(reused == 0);
    CHECK(again != e);
    CHECK_STR_EQ(again->id, "m2");

    ds_pool_unpin(e);
    CHECK(e->model->tensor_count == 8);  /* one pin left: still alive (ASan would object) */
    ds_pool_unpin(e);                    /* freed here; a leak would fail under ASan */

    /* Pinning a referenced model does not keep it from being listed or unloaded later. */
    ds_pool_pin(again);
    ds_pool_unpin(again);
    CHECK(ds_pool_find(pool, "m2") == again);
    ds_pool_free(pool);
}

/* A model whose file changed is stale: refused by the checks, and a new load of the same file
 * is a new model even when the file looks as it did at the first load again. */
static void test_stale(void)
{
    REQUIRE(write_model(file_a) == 0);
    struct stat loaded;
    REQUIRE(stat(file_a, &loaded) == 0);
    ds_pool *pool;
    ds_error err;
    REQUIRE(ds_pool_new(&pool, &err) == DS_OK);
    ds_pool_model *e1, *e2;
    int reused;
    ds_loaded_model *m = load(file_a, &CONFIG);
    REQUIRE(m);
    REQUIRE(ds_pool_insert(pool, m, 1000, "alice", 1, &e1, &reused, &err) == DS_OK);
    CHECK(ds_pool_check_fresh(e1, &err) == DS_OK);
    CHECK(ds_pool_check_faults(e1, &err) == DS_OK);
    CHECK(ds_pool_stale_reason(e1) == NULL);

    struct timespec later[2] = {{.tv_sec = 1000000000, .tv_nsec = 0},
                                {.tv_sec = 1000000000, .tv_nsec = 0}};
    REQUIRE(utimensat(AT_FDCWD, file_a, later, 0) == 0);
    CHECK(ds_pool_check_fresh(e1, &err) == DS_ERR_FAILED_PRECONDITION);
    CHECK_CONTAINS(err.message, "model m1 (qwen_image_blockwise_controlnet) is stale: ");
    CHECK_CONTAINS(err.message, file_a);
    CHECK_CONTAINS(err.message, "modified in place");
    CHECK_CONTAINS(err.message, "load the files again");
    CHECK_CONTAINS(ds_pool_stale_reason(e1), file_a);

    /* Back to the identity of the first load: still stale, and not reused. */
    struct timespec back[2] = {loaded.st_atim, loaded.st_mtim};
    REQUIRE(utimensat(AT_FDCWD, file_a, back, 0) == 0);
    CHECK(ds_pool_check_fresh(e1, &err) == DS_ERR_FAILED_PRECONDITION);
    m = load(file_a, &CONFIG);
    REQUIRE(m);
    REQUIRE(ds_pool_insert(pool, m, 1000, "alice", 2, &e2, &reused, &err) == DS_OK);
    CHECK(reused == 0 && e2 != e1);
    CHECK(ds_pool_check_fresh(e2, &err) == DS_OK);

    /* Truncated under a read of its weights: DATA_LOSS for the job that read, stale after. */
    REQUIRE(truncate(file_a, 0) == 0);
    const ds_sd_entry *w = ds_state_dict_find(&e2->model->files->merged, "img_in.weight");
    REQUIRE(w && w->tensor.data);
    /* A byte: tensor data in a safetensors file need not be aligned. */
    CHECK(*(const volatile uint8_t *)w->tensor.data == 0);
    CHECK(ds_pool_check_faults(e2, &err) == DS_ERR_DATA_LOSS);
    CHECK_CONTAINS(err.message, "model m2 (qwen_image_blockwise_controlnet): ");
    CHECK_CONTAINS(err.message, file_a);
    CHECK_CONTAINS(err.message, "shrank while this request read its data");
    CHECK(ds_pool_check_fresh(e2, &err) == DS_ERR_FAILED_PRECONDITION);
    CHECK_CONTAINS(err.message, "shrank while its data was being read");
    ds_pool_free(pool);
    REQUIRE(write_model(file_a) == 0);
}

/* A reference belongs to the uid that took it; its name is only a label inside that uid. */
static void test_ownership(void)
{
    ds_pool *pool;
    ds_error err;
    REQUIRE(ds_pool_new(&pool, &err) == DS_OK);
    ds_pool_model *e;
    int reused;
    /* uid 1000 and uid 1001 both call themselves "web-ui". */
    const uid_t uids[] = {1000, 1001, 1000};
    for (int i = 0; i < 3; i++) {
        ds_loaded_model *m = load(file_b, &CONFIG);
        REQUIRE(m);
        CHECK(ds_pool_insert(pool, m, uids[i], "web-ui", 1, &e, &reused, &err) == DS_OK);
    }
    CHECK(ds_pool_references(e, 1000, "web-ui") == 2);
    CHECK(ds_pool_references(e, 1001, "web-ui") == 1);
    CHECK(ds_pool_references(e, 1002, "web-ui") == 0);

    ds_pool_unref_result r;
    /* A third uid may not drop either, nor everything. */
    CHECK(ds_pool_unref(pool, "m1", 1002, 0, "web-ui", 0, &r, &err) == DS_ERR_PERMISSION_DENIED);
    CHECK_CONTAINS(err.message, "belongs to uid 1000");
    CHECK_CONTAINS(err.message, "you are uid 1002");
    CHECK(ds_pool_unref(pool, "m1", 1001, 0, "web-ui", 1, &r, &err) == DS_ERR_PERMISSION_DENIED);
    CHECK_CONTAINS(err.message, "daemon's own uid");
    CHECK(e->client_count == 3);

    /* Each uid drops its own, never the other's of the same name. */
    CHECK(ds_pool_unref(pool, "m1", 1001, 0, "web-ui", 0, &r, &err) == DS_OK);
    CHECK(r.remaining == 2);
    CHECK(ds_pool_references(e, 1000, "web-ui") == 2);
    CHECK(ds_pool_unref(pool, "m1", 1001, 0, "web-ui", 0, &r, &err) == DS_ERR_PERMISSION_DENIED);
    CHECK_CONTAINS(err.message, "belongs to uid 1000");
    CHECK(ds_pool_references(e, 1000, "web-ui") == 2);

    /* The daemon's uid (privileged) may drop another uid's reference by name. */
    CHECK(ds_pool_unref(pool, "m1", 0, 1, "web-ui", 0, &r, &err) == DS_OK);
    CHECK(r.remaining == 1);
    CHECK(ds_pool_references(e, 1000, "web-ui") == 1);
    CHECK(ds_pool_unref(pool, "m1", 1000, 0, "web-ui", 0, &r, &err) == DS_OK);
    CHECK(r.removed && r.freed);
    ds_pool_free(pool);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(file_a, sizeof file_a, "%s/a.safetensors", tmpdir);
    snprintf(file_b, sizeof file_b, "%s/b.safetensors", tmpdir);
    if (write_model(file_a) != 0 || write_model(file_b) != 0) {
        perror("writing test models");
        return 1;
    }
    RUN(test_insert_and_ids);
    RUN(test_dedupe);
    RUN(test_references);
    RUN(test_ownership);
    RUN(test_pinned);
    RUN(test_stale);
    unlink(file_a);
    unlink(file_b);
    rmdir(tmpdir);
    return test_summary();
}
