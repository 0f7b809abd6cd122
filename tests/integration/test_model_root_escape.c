/* A directory inside --model-root swapped for a symbolic link to a folder outside it, over and
 * over, while a client identifies and loads a file through that directory: the daemon must
 * only ever read the file inside the root. Each answer is the inside model's hash or a refusal;
 * the outside model's hash (a different key set) must never come back. A daemon that checks a
 * resolved path and opens it again later reads the outside file whenever a swap lands between
 * the two.
 *
 * Layout: models/sub/model.safetensors (the VAE key list) is a real directory; out/ (beside
 * models/) holds model.safetensors with the ControlNet key list; models/sub_swap is a symbolic
 * link to out/. A thread exchanges models/sub and models/sub_swap (renameat2 RENAME_EXCHANGE,
 * or three renames where the file system lacks it). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "test.h"

#define ATTEMPT_MS 4000

static it_env env;
static char sub[256], sub_swap[256], sub_tmp[256], outside_dir[256];
static char inside_hash[33], outside_hash[33];
static atomic_int stop_swapping;
static atomic_long swaps;

static void *swapper(void *arg)
{
    (void)arg;
    int exchange = 1;
    while (!atomic_load(&stop_swapping)) {
        if (exchange && renameat2(AT_FDCWD, sub, AT_FDCWD, sub_swap, RENAME_EXCHANGE) == 0) {
            atomic_fetch_add(&swaps, 1);
            continue;
        }
        exchange = 0;
        if (rename(sub, sub_tmp) == 0 && rename(sub_swap, sub) == 0 && rename(sub_tmp, sub_swap) == 0)
            atomic_fetch_add(&swaps, 1);
    }
    return NULL;
}

/* Writes key list `stem` as models/<name>.safetensors; its hash goes to `hash`. */
static int make(const char *stem, const char *name, char *path, size_t size, char hash[33])
{
    char **paths = NULL;
    size_t count = 0;
    if (it_make_model(&env, stem, name, 1, &paths, &count) != 0)
        return -1;
    snprintf(path, size, "%s", paths[0]);
    ds_st_paths_free(paths, count);
    ds_client *c = it_connect(&env);
    if (!c)
        return -1;
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_identify_tag;
    char *one[] = {path};
    req.body.identify.paths = one;
    req.body.identify.paths_count = 1;
    int rc = it_call(c, &req, &resp);
    if (rc == DS_CLIENT_OK)
        snprintf(hash, 33, "%s", resp.body.identify_result.model_hash);
    else
        fprintf(stderr, "identify %s: %s\n", path, ds_client_last_error(c));
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    return rc == DS_CLIENT_OK ? 0 : -1;
}

static int setup(void)
{
    char inside[256], outside[256], moved[300];
    snprintf(sub, sizeof sub, "%s/sub", env.models);
    snprintf(sub_swap, sizeof sub_swap, "%s/sub_swap", env.models);
    snprintf(sub_tmp, sizeof sub_tmp, "%s/sub_tmp", env.models);
    snprintf(outside_dir, sizeof outside_dir, "%s/out", env.dir);
    if (mkdir(sub, 0755) != 0 || mkdir(outside_dir, 0755) != 0)
        return -1;
    if (make("qwen_image_vae", "sub/model", inside, sizeof inside, inside_hash) != 0 ||
        make("qwen_image_blockwise_controlnet", "elsewhere", outside, sizeof outside,
             outside_hash) != 0)
        return -1;
    snprintf(moved, sizeof moved, "%s/model.safetensors", outside_dir);
    if (rename(outside, moved) != 0 || symlink(outside_dir, sub_swap) != 0)
        return -1;
    return strcmp(inside_hash, outside_hash) != 0 ? 0 : -1;
}

static int under_models(const char *name)
{
    char a[300], b[300];
    snprintf(a, sizeof a, "%s/model.safetensors", sub);
    snprintf(b, sizeof b, "%s/model.safetensors", sub_swap);
    return strcmp(name, a) == 0 || strcmp(name, b) == 0;
}

static void test_swapped_directory(void)
{
    REQUIRE(setup() == 0);
    char target[300];
    snprintf(target, sizeof target, "%s/model.safetensors", sub);
    char *paths[] = {target};
    pthread_t thread;
    atomic_store(&stop_swapping, 0);
    REQUIRE(pthread_create(&thread, NULL, swapper, NULL) == 0);
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    int inside = 0, refused = 0, escaped = 0, other = 0, loads = 0;
    for (uint64_t t0 = it_now_ms(); it_now_ms() - t0 < ATTEMPT_MS;) {
        diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
        /* Mostly Identify (cheap); every tenth a Load, which reads on the worker later. */
        int load = (inside + refused + escaped + other) % 10 == 9;
        if (load) {
            req.which_body = diffsynth_v1_Envelope_load_tag;
            req.body.load.paths = paths;
            req.body.load.paths_count = 1;
        } else {
            req.which_body = diffsynth_v1_Envelope_identify_tag;
            req.body.identify.paths = paths;
            req.body.identify.paths_count = 1;
        }
        int rc = it_call(c, &req, &resp);
        if (rc == DS_CLIENT_OK) {
            const char *hash = load ? resp.body.load_result.model_hash
                                    : resp.body.identify_result.model_hash;
            const char *file = load ? (resp.body.load_result.files_count
                                           ? resp.body.load_result.files[0] : "")
                                    : (resp.body.identify_result.files_count
                                           ? resp.body.identify_result.files[0] : "");
            if (strcmp(hash, outside_hash) == 0) {
                escaped++;
                fprintf(stderr, "FAIL the daemon read the file outside the root (named %s)\n",
                        file);
            } else if (strcmp(hash, inside_hash) == 0) {
                inside++;
                CHECK_MSG(under_models(file), "the reply names %s", file);
            } else {
                other++;
            }
            loads += load;
            ds_client_envelope_free(&resp);
        } else if (rc == DS_CLIENT_EDAEMON &&
                   (ds_client_last_code(c) == diffsynth_v1_Code_PERMISSION_DENIED ||
                    ds_client_last_code(c) == diffsynth_v1_Code_NOT_FOUND)) {
            refused++;
        } else {
            other++;
            fprintf(stderr, "unexpected answer: rc %d: %s\n", rc, ds_client_last_error(c));
        }
    }
    atomic_store(&stop_swapping, 1);
    pthread_join(thread, NULL);
    ds_client_close(c);
    printf("# %ld swaps; %d answers from inside (%d loads), %d refused, %d escaped, %d other\n",
           atomic_load(&swaps), inside, loads, refused, escaped, other);
    CHECK(escaped == 0);
    CHECK(other == 0);
    CHECK(inside > 0);
    CHECK(it_status_ok(&env));
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIFFSYNTHD [DIFFSYNTH]\n", argv[0]);
        return 2;
    }
    it_env_init(&env, argv[1]);
    if (it_daemon_start(&env, NULL) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    RUN(test_swapped_directory);
    int status = -1;
    if (it_daemon_stop(&env, &status) != 0 || status != 0) {
        fprintf(stderr, "FAIL the daemon did not stop cleanly (status %d)\n", status);
        test_failures++;
    }
    if (test_failures)
        it_dump_log(&env);
    it_env_cleanup(&env);
    return test_summary();
}
