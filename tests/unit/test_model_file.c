/* Model files that change after the load: a read of a truncated file's data sets the file's
 * fault flag instead of killing the process, and ds_model_files_check names the file and the
 * change (shrank under a read, rewritten in place, replaced, removed), the first finding
 * sticking. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/model_file.h"
#include "test.h"

#define COUNT 4096 /* f32 values: four pages of data */

static char dir[] = "/tmp/ds-model-file-XXXXXX";
static char path[128];

/* One tensor "w" [COUNT] f32 holding 1.0f: a safetensors file written by hand. */
static int write_model(const char *to)
{
    char header[128];
    int n = snprintf(header, sizeof header,
                     "{\"w\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[0,%d]}}", COUNT,
                     COUNT * 4);
    while (n % 8)
        header[n++] = ' ';
    uint8_t len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)((uint64_t)n >> (8 * i));
    static float data[COUNT];
    for (int i = 0; i < COUNT; i++)
        data[i] = 1.0f;
    FILE *f = fopen(to, "wb");
    if (!f)
        return -1;
    int ok = fwrite(len, 8, 1, f) == 1 && fwrite(header, (size_t)n, 1, f) == 1 &&
             fwrite(data, sizeof data, 1, f) == 1;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static ds_model_files *open_model(void)
{
    if (write_model(path) != 0)
        return NULL;
    const char *paths[] = {path};
    ds_model_files *files;
    ds_error err;
    if (ds_model_files_open(paths, 1, &files, &err) != DS_OK) {
        fprintf(stderr, "%s\n", err.message);
        return NULL;
    }
    return files;
}

static float sum_of_w(const ds_model_files *files)
{
    const ds_sd_entry *e = ds_state_dict_find(&files->merged, "w");
    const volatile float *v = e->tensor.data;
    float s = 0;
    for (int i = 0; i < COUNT; i++)
        s += v[i];
    return s;
}

/* Coarse file-system clocks: the next write must get a later modification time. */
static void tick(void)
{
    struct timespec t = {0, 20 * 1000 * 1000};
    nanosleep(&t, NULL);
}

static void test_fresh(void)
{
    ds_model_files *files = open_model();
    REQUIRE(files);
    ds_error err;
    CHECK(ds_model_files_check(files, &err) == DS_OK);
    CHECK(!ds_model_files_is_stale(files));
    CHECK(ds_model_files_stale_reason(files) == NULL);
    CHECK(ds_model_files_faulted(files) == -1);
    CHECK(sum_of_w(files) == (float)COUNT);
    ds_model_files_close(files);
}

static void test_truncated_under_a_read(void)
{
    ds_model_files *files = open_model();
    REQUIRE(files);
    REQUIRE(truncate(path, 64) == 0);
    /* Without the guard this read kills the process with SIGBUS. */
    CHECK(sum_of_w(files) == 0.0f);
    CHECK(ds_model_files_faulted(files) == 0);
    ds_error err;
    CHECK(ds_model_files_check(files, &err) == DS_ERR_FAILED_PRECONDITION);
    CHECK_CONTAINS(err.message, path);
    CHECK_CONTAINS(err.message, "shrank while its data was being read");
    CHECK(ds_model_files_is_stale(files));
    CHECK_CONTAINS(ds_model_files_stale_reason(files), "shrank");
    ds_model_files_close(files);
}

static void test_rewritten_in_place(void)
{
    ds_model_files *files = open_model();
    REQUIRE(files);
    tick();
    /* The same bytes again: only the modification time tells. */
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    float one = 1.0f;
    CHECK(pwrite(fd, &one, sizeof one, 200) == sizeof one);
    close(fd);
    ds_error err;
    CHECK(ds_model_files_check(files, &err) == DS_ERR_FAILED_PRECONDITION);
    CHECK_CONTAINS(err.message, path);
    CHECK_CONTAINS(err.message, "modified in place");
    /* The first finding sticks, even once the file is removed. */
    unlink(path);
    CHECK(ds_model_files_check(files, &err) == DS_ERR_FAILED_PRECONDITION);
    CHECK_CONTAINS(err.message, "modified in place");
    ds_model_files_close(files);
}

static void test_replaced_and_removed(void)
{
    ds_model_files *files = open_model();
    REQUIRE(files);
    char other[160];
    snprintf(other, sizeof other, "%s/other.safetensors", dir);
    REQUIRE(write_model(other) == 0);
    REQUIRE(rename(other, path) == 0);
    ds_error err;
    CHECK(ds_model_files_check(files, &err) == DS_ERR_FAILED_PRECONDITION);
    CHECK_CONTAINS(err.message, "it is another file now");
    /* The old mapping still holds the old inode's data. */
    CHECK(sum_of_w(files) == (float)COUNT);
    ds_model_files_close(files);

    files = open_model();
    REQUIRE(files);
    REQUIRE(unlink(path) == 0);
    CHECK(ds_model_files_check(files, &err) == DS_ERR_FAILED_PRECONDITION);
    CHECK_CONTAINS(err.message, "cannot be checked since it was loaded");
    ds_model_files_close(files);
}

static void test_grown(void)
{
    ds_model_files *files = open_model();
    REQUIRE(files);
    struct stat st;
    REQUIRE(stat(path, &st) == 0);
    FILE *f = fopen(path, "ab");
    REQUIRE(f);
    fputc(0, f);
    fclose(f);
    ds_error err;
    CHECK(ds_model_files_check(files, &err) == DS_ERR_FAILED_PRECONDITION);
    char want[80];
    snprintf(want, sizeof want, "changed since it was loaded: %lld bytes, was %lld",
             (long long)st.st_size + 1, (long long)st.st_size);
    CHECK_CONTAINS(err.message, want);
    ds_model_files_close(files);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    RUN(test_fresh);
    RUN(test_truncated_under_a_read);
    RUN(test_rewritten_in_place);
    RUN(test_replaced_and_removed);
    RUN(test_grown);
    unlink(path);
    rmdir(dir);
    return test_summary();
}
