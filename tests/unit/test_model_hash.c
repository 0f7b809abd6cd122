/* The model hash against upstream's vectors (facts §1.2) and a full-size real model (§6.1). */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/model_file.h"
#include "core/model_hash.h"
#include "test.h"

/* Puts name -> shape; `ndim` dims follow. */
static void put(ds_state_dict *sd, const char *name, int ndim, ...)
{
    int64_t shape[DS_MAX_DIMS];
    va_list ap;
    va_start(ap, ndim);
    for (int i = 0; i < ndim; i++)
        shape[i] = va_arg(ap, int64_t);
    va_end(ap);
    ds_tensor_view v;
    if (ds_tensor_view_declare(&v, DS_BF16, ndim, shape) != DS_OK ||
        ds_state_dict_put_tensor(sd, name, &v) != DS_OK) {
        fprintf(stderr, "cannot put %s\n", name);
        exit(2);
    }
}

#define I(x) ((int64_t)(x))

static void check_vector(const ds_state_dict *sd, const char *string, const char *md5)
{
    char *s = NULL;
    size_t len = 0;
    CHECK(ds_model_keys_string(sd, 1, &s, &len) == DS_OK);
    CHECK_STR_EQ(s, string);
    CHECK(len == strlen(string));
    free(s);
    char hex[DS_MODEL_HASH_HEX];
    CHECK(ds_model_hash(sd, hex) == DS_OK);
    CHECK_STR_EQ(hex, md5);
}

static void test_linear(void)
{
    ds_state_dict sd;
    ds_state_dict_init(&sd);
    put(&sd, "a.weight", 2, I(4), I(3));
    put(&sd, "a.bias", 1, I(4));
    check_vector(&sd, "a.bias,a.bias:4,a.weight,a.weight:4_3", "0bbf59d9c4e0b8258498955c8f645abc");
    ds_state_dict_free(&sd);
}

static void test_name_and_shape_not_adjacent(void)
{
    ds_state_dict sd;
    ds_state_dict_init(&sd);
    put(&sd, "x", 1, I(1));
    put(&sd, "x.y", 1, I(2));
    check_vector(&sd, "x,x.y,x.y:2,x:1", "89c7f7795f4b25b523280442253443f7");
    ds_state_dict_free(&sd);
}

static void test_string_order_of_numbers(void)
{
    ds_state_dict sd;
    ds_state_dict_init(&sd);
    put(&sd, "blocks.10.w", 1, I(8));
    put(&sd, "blocks.2.w", 1, I(8));
    put(&sd, "blocks.1.w", 1, I(8));
    check_vector(&sd, "blocks.1.w,blocks.1.w:8,blocks.10.w,blocks.10.w:8,blocks.2.w,blocks.2.w:8",
                 "57e1cfbde0b4e52d9a3a7a5d4695bef2");
    ds_state_dict_free(&sd);
}

static void test_scalar_case_and_punctuation(void)
{
    ds_state_dict sd;
    ds_state_dict_init(&sd);
    put(&sd, "w", 0);
    put(&sd, "B", 1, I(1));
    put(&sd, "a_b", 1, I(5));
    put(&sd, "a.b", 1, I(6));
    put(&sd, "b.c", 3, I(2), I(3), I(4));
    check_vector(&sd, "B,B:1,a.b,a.b:6,a_b,a_b:5,b.c,b.c:2_3_4,w,w:",
                 "3be663fbce652ac820d36b0034174974");
    ds_state_dict_free(&sd);
}

static void test_nested(void)
{
    ds_state_dict sd;
    ds_state_dict_init(&sd);
    ds_state_dict *child = ds_state_dict_new();
    REQUIRE(child);
    put(child, "y", 1, I(2));
    put(child, "z.w", 2, I(3), I(1));
    REQUIRE(ds_state_dict_put_dict(&sd, "x", child) == DS_OK);
    put(&sd, "y", 1, I(7));
    check_vector(&sd, "x|y,y:2,z.w,z.w:3_1,y,y:7", "666bc378bfd4b7608b6d80f87109ee6e");

    char *s = NULL;
    size_t len = 0;
    CHECK(ds_model_keys_string(&sd, 0, &s, &len) == DS_OK);
    CHECK_STR_EQ(s, "x|y,z.w,y");
    free(s);
    ds_state_dict_free(&sd);
}

static void test_single_and_empty(void)
{
    ds_state_dict sd;
    ds_state_dict_init(&sd);
    check_vector(&sd, "", "d41d8cd98f00b204e9800998ecf8427e");
    put(&sd, "k", 1, I(1));
    check_vector(&sd, "k,k:1", "db865ef75fa97996fdd4942bcf3a72dd");
    ds_state_dict_free(&sd);

    /* An empty nested dict is still one "name|" entry. */
    ds_state_dict_init(&sd);
    ds_state_dict *child = ds_state_dict_new();
    REQUIRE(child);
    REQUIRE(ds_state_dict_put_dict(&sd, "e", child) == DS_OK);
    char *s = NULL;
    size_t len = 0;
    CHECK(ds_model_keys_string(&sd, 1, &s, &len) == DS_OK);
    CHECK_STR_EQ(s, "e|");
    free(s);
    ds_state_dict_free(&sd);
}

static void test_two_files_later_wins(void)
{
    ds_state_dict first, second, merged;
    ds_state_dict_init(&first);
    ds_state_dict_init(&second);
    ds_state_dict_init(&merged);
    put(&first, "a", 1, I(1));
    put(&second, "b", 1, I(2));
    put(&second, "a", 1, I(3));
    CHECK(ds_state_dict_update(&merged, &first) == DS_OK);
    CHECK(ds_state_dict_update(&merged, &second) == DS_OK);
    check_vector(&merged, "a,a:3,b,b:2", "59c3ce341dc3ef3b607f6c51593baab1");
    ds_state_dict_free(&first);
    ds_state_dict_free(&second);
    ds_state_dict_free(&merged);
}

static void test_without_shape_bare_names(void)
{
    ds_state_dict sd;
    ds_state_dict_init(&sd);
    put(&sd, "a.weight", 2, I(4), I(3));
    put(&sd, "a.bias", 1, I(4));
    put(&sd, "w", 0);
    char *s = NULL;
    size_t len = 0;
    CHECK(ds_model_keys_string(&sd, 0, &s, &len) == DS_OK);
    CHECK_STR_EQ(s, "a.bias,a.weight,w");
    CHECK(len == strlen("a.bias,a.weight,w"));
    free(s);
    ds_state_dict_free(&sd);
}

/* diffsynth.models.qwen_image_dit.QwenImageDiT's parameters (facts §6.1, keylists/qwen_dit_keys.py). */
static void lin(ds_state_dict *sd, const char *prefix, const char *name, int64_t out, int64_t in)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s%s.weight", prefix, name);
    put(sd, buf, 2, out, in);
    snprintf(buf, sizeof buf, "%s%s.bias", prefix, name);
    put(sd, buf, 1, out);
}

static void build_qwen_dit(ds_state_dict *sd, int add_t)
{
    const int64_t D = 3072;
    lin(sd, "", "time_text_embed.timestep_embedder.linear_1", D, 256);
    lin(sd, "", "time_text_embed.timestep_embedder.linear_2", D, D);
    if (add_t)
        put(sd, "time_text_embed.addition_t_embedding.weight", 2, I(2), D);
    put(sd, "txt_norm.weight", 1, I(3584));
    lin(sd, "", "img_in", D, 64);
    lin(sd, "", "txt_in", D, 3584);
    static const char *const attn[] = {"to_q",       "to_k",       "to_v",     "add_q_proj",
                                       "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"};
    static const char *const norms[] = {"norm_q", "norm_k", "norm_added_q", "norm_added_k"};
    for (int i = 0; i < 60; i++) {
        char p[64], name[128];
        snprintf(p, sizeof p, "transformer_blocks.%d.", i);
        lin(sd, p, "img_mod.1", 6 * D, D);
        for (size_t k = 0; k < sizeof attn / sizeof attn[0]; k++) {
            snprintf(name, sizeof name, "attn.%s", attn[k]);
            lin(sd, p, name, D, D);
        }
        for (size_t k = 0; k < sizeof norms / sizeof norms[0]; k++) {
            snprintf(name, sizeof name, "%sattn.%s.weight", p, norms[k]);
            put(sd, name, 1, I(128));
        }
        lin(sd, p, "img_mlp.net.0.proj", 4 * D, D);
        lin(sd, p, "img_mlp.net.2", D, 4 * D);
        lin(sd, p, "txt_mlp.net.0.proj", 4 * D, D);
        lin(sd, p, "txt_mlp.net.2", D, 4 * D);
        lin(sd, p, "txt_mod.1", 6 * D, D);
    }
    lin(sd, "", "norm_out.linear", 2 * D, D);
    lin(sd, "", "proj_out", 64, D);
}

static size_t count_entries(const char *s)
{
    size_t n = *s ? 1 : 0;
    for (; *s; s++)
        n += *s == ',';
    return n;
}

static void test_qwen_image_dit(void)
{
    ds_state_dict sd;
    ds_state_dict_init(&sd);
    build_qwen_dit(&sd, 0);
    CHECK(sd.count == 1933);

    char *s = NULL;
    size_t len = 0;
    REQUIRE(ds_model_keys_string(&sd, 1, &s, &len) == DS_OK);
    CHECK(len == 176043);
    CHECK(count_entries(s) == 3866);
    CHECK(strncmp(s, "img_in.bias,img_in.bias:3072,img_in.weight,img_in.weight:3072_64,"
                     "norm_out.linear.bias,",
                  strlen("img_in.bias,img_in.bias:3072,img_in.weight,img_in.weight:3072_64,"
                         "norm_out.linear.bias,")) == 0);
    const char *tail = ",txt_norm.weight,txt_norm.weight:3584";
    CHECK(len > strlen(tail) && strcmp(s + len - strlen(tail), tail) == 0);
    free(s);

    char hex[DS_MODEL_HASH_HEX];
    CHECK(ds_model_hash(&sd, hex) == DS_OK);
    CHECK_STR_EQ(hex, "0319a1cb19835fb510907dd3367c95ff");

    /* Identification runs on the daemon's loop thread; report what one hash costs. */
    struct timespec t0, t1;
    const int rounds = 50;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < rounds; i++)
        CHECK(ds_model_hash(&sd, hex) == DS_OK);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) /
                rounds / 1e3;
    fprintf(stderr, "     Qwen-Image DiT hash: %.0f us per call\n", us);
    ds_state_dict_free(&sd);

    ds_state_dict_init(&sd);
    build_qwen_dit(&sd, 1);
    CHECK(sd.count == 1934);
    CHECK(ds_model_hash(&sd, hex) == DS_OK);
    CHECK_STR_EQ(hex, "8dc8cda05de16c73afa755e2c1ce2839");
    ds_state_dict_free(&sd);
}

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Random names over a small alphabet (long shared prefixes, names that prefix others, '.' and
 * '_' around ':') in three insertion orders, against qsort + strcmp on the expected entries. */
static void test_order_against_strcmp(void)
{
    enum { N = 3000 };
    static char names[N][64];
    static char shaped[N][96];
    static const char alphabet[] = "._0129:az|";
    uint32_t seed = 12345;
    for (int i = 0; i < N; i++) {
        int len = 1 + (int)((seed = seed * 1103515245u + 12345u) >> 16) % 24;
        /* Most names long enough not to prefix another, so sorted orders stay a few runs. */
        if (i % 8)
            len += 8;
        snprintf(names[i], sizeof names[i], "blocks.%d.", i % 7);
        size_t at = strlen(names[i]);
        for (int k = 0; k < len; k++) {
            seed = seed * 1103515245u + 12345u;
            names[i][at++] = alphabet[(seed >> 16) % (sizeof alphabet - 1)];
        }
        names[i][at] = '\0';
    }
    for (int order = 0; order < 3; order++) {
        const char *sorted_names[N];
        for (int i = 0; i < N; i++)
            sorted_names[i] = names[i];
        /* 0: random, 1: sorted, 2: two sorted halves (as a file with two dtypes). */
        if (order == 1)
            qsort(sorted_names, N, sizeof sorted_names[0], compare_strings);
        if (order == 2) {
            qsort(sorted_names, N / 2, sizeof sorted_names[0], compare_strings);
            qsort(sorted_names + N / 2, N - N / 2, sizeof sorted_names[0], compare_strings);
        }
        ds_state_dict sd;
        ds_state_dict_init(&sd);
        for (int i = 0; i < N; i++)
            put(&sd, sorted_names[i], 2, I(i % 11), I(3));
        const char *expected[2 * N];
        size_t n = 0, total = 0;
        for (size_t i = 0; i < sd.count; i++) {
            const ds_sd_entry *e = &sd.entries[i];
            snprintf(shaped[i], sizeof shaped[i], "%s:%lld_3", e->name,
                     (long long)e->tensor.shape[0]);
            expected[n++] = e->name;
            expected[n++] = shaped[i];
        }
        qsort(expected, n, sizeof expected[0], compare_strings);
        for (size_t i = 0; i < n; i++)
            total += strlen(expected[i]) + 1;
        char *joined = malloc(total);
        REQUIRE(joined);
        size_t at = 0;
        for (size_t i = 0; i < n; i++) {
            size_t l = strlen(expected[i]);
            memcpy(joined + at, expected[i], l);
            at += l;
            joined[at++] = i + 1 < n ? ',' : '\0';
        }
        char *s = NULL;
        size_t len = 0;
        CHECK(ds_model_keys_string(&sd, 1, &s, &len) == DS_OK);
        CHECK_MSG(s && strcmp(s, joined) == 0, "order %d differs from strcmp order", order);
        free(s);
        free(joined);
        ds_state_dict_free(&sd);
    }
}

/* A safetensors file with the given F32 tensors (name, element count), data zero-filled. */
static int write_safetensors(const char *path, const char *const *names, const int *sizes, int n)
{
    char header[512];
    size_t used = 0, offset = 0;
    used += (size_t)snprintf(header + used, sizeof header - used, "{");
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)sizes[i] * 4;
        used += (size_t)snprintf(header + used, sizeof header - used,
                                 "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%d],"
                                 "\"data_offsets\":[%zu,%zu]}",
                                 i ? "," : "", names[i], sizes[i], offset, offset + bytes);
        offset += bytes;
    }
    used += (size_t)snprintf(header + used, sizeof header - used, "}");
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    uint64_t len = used;
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(len >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(header, 1, used, f);
    for (size_t i = 0; i < offset; i++)
        fputc(0, f);
    return fclose(f);
}

static void test_two_safetensors_files(void)
{
    char dir[] = "/tmp/test_model_hash.XXXXXX";
    REQUIRE(mkdtemp(dir));
    char first[256], second[256], missing[256];
    snprintf(first, sizeof first, "%s/model-00001-of-00002.safetensors", dir);
    snprintf(second, sizeof second, "%s/model-00002-of-00002.safetensors", dir);
    snprintf(missing, sizeof missing, "%s/absent.safetensors", dir);
    static const char *const first_names[] = {"a"}, *const second_names[] = {"b", "a"};
    static const int first_sizes[] = {1}, second_sizes[] = {2, 3};
    REQUIRE(write_safetensors(first, first_names, first_sizes, 1) == 0);
    REQUIRE(write_safetensors(second, second_names, second_sizes, 2) == 0);

    const char *paths[] = {first, second};
    ds_model_files *files = NULL;
    ds_error err = {0};
    REQUIRE(ds_model_files_open(paths, 2, &files, &err) == DS_OK);
    CHECK(files->count == 2);
    CHECK(files->files[0].format == DS_FORMAT_SAFETENSORS && files->files[0].safetensors);
    CHECK(files->files[1].identity.size > 0);
    CHECK(files->files[0].identity.ino != files->files[1].identity.ino);
    CHECK(ds_model_files_mapped_bytes(files) ==
          files->files[0].identity.size + files->files[1].identity.size);
    const ds_sd_entry *a = ds_state_dict_find(&files->merged, "a");
    REQUIRE(a);
    CHECK(a->tensor.file_index == 1 && a->tensor.shape[0] == 3);
    CHECK(ds_state_dict_find(&files->merged, "b")->tensor.file_index == 1);
    check_vector(&files->merged, "a,a:3,b,b:2", "59c3ce341dc3ef3b607f6c51593baab1");
    ds_model_files_close(files);

    /* One bad path closes everything and names the file. */
    const char *bad[] = {first, missing};
    files = NULL;
    CHECK(ds_model_files_open(bad, 2, &files, &err) == DS_ERR_NOT_FOUND);
    CHECK(files == NULL);
    CHECK_CONTAINS(err.message, "absent.safetensors");
    CHECK(ds_model_files_open(paths, 0, &files, &err) == DS_ERR_INVALID_ARGUMENT);

    CHECK(ds_file_format_for_path("x.safetensors") == DS_FORMAT_SAFETENSORS);
    CHECK(ds_file_format_for_path("x.SAFETENSORS") == DS_FORMAT_TORCH);
    CHECK(ds_file_format_for_path("x.safetensors.bin") == DS_FORMAT_TORCH);
    CHECK(ds_file_format_for_path(".safetensors") == DS_FORMAT_SAFETENSORS);
    CHECK(ds_file_format_for_path("model.pth") == DS_FORMAT_TORCH);
    unlink(first);
    unlink(second);
    rmdir(dir);
}

int main(void)
{
    RUN(test_linear);
    RUN(test_name_and_shape_not_adjacent);
    RUN(test_string_order_of_numbers);
    RUN(test_scalar_case_and_punctuation);
    RUN(test_nested);
    RUN(test_single_and_empty);
    RUN(test_two_files_later_wins);
    RUN(test_without_shape_bare_names);
    RUN(test_order_against_strcmp);
    RUN(test_qwen_image_dit);
    RUN(test_two_safetensors_files);
    return test_summary();
}
