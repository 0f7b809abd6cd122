/* ds_output_write against the file system: what each kind of target becomes afterwards
 * (checked with stat/lstat and by reading the bytes back), the write error /dev/full gives,
 * and that a failed or refused write leaves no temporary file behind. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/output_file.h"
#include "test.h"

static char dir[] = "/tmp/ds-test-output-XXXXXX";

static const ds_out_chunk hello[] = {{"hel", 3}, {"", 0}, {"lo\n", 3}};

static void path_in(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", dir, name);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(4096);
    *len = buf ? fread(buf, 1, 4095, f) : 0;
    if (buf)
        buf[*len] = '\0';
    fclose(f);
    return buf;
}

/* Entries of the folder other than the ones named. */
static int other_entries(const char *keep1, const char *keep2)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
            (keep1 && strcmp(e->d_name, keep1) == 0) || (keep2 && strcmp(e->d_name, keep2) == 0))
            continue;
        n++;
    }
    closedir(d);
    return n;
}

static void test_new_and_replaced_file(void)
{
    char path[256];
    path_in(path, sizeof path, "out.bin");
    ds_error err;
    mode_t mask = umask(022);
    CHECK(ds_output_write(path, hello, 3, &err) == DS_OK);
    umask(mask);
    size_t len = 0;
    char *text = slurp(path, &len);
    CHECK(text && len == 6 && memcmp(text, "hello\n", 6) == 0);
    free(text);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 07777) == 0644);

    /* Replaced: a new inode (renamed over), the old mode kept, nothing else left. */
    REQUIRE(chmod(path, 0600) == 0);
    ino_t before = st.st_ino;
    ds_out_chunk other = {"bye", 3};
    CHECK(ds_output_write(path, &other, 1, &err) == DS_OK);
    text = slurp(path, &len);
    CHECK(text && len == 3 && memcmp(text, "bye", 3) == 0);
    free(text);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 07777) == 0600 && st.st_ino != before);
    CHECK(other_entries("out.bin", NULL) == 0);

    /* A link to it stays a link; the file it names gets the bytes. */
    char link[256];
    path_in(link, sizeof link, "link.bin");
    REQUIRE(symlink(path, link) == 0);
    CHECK(ds_output_write(link, hello, 3, &err) == DS_OK);
    CHECK(lstat(link, &st) == 0 && S_ISLNK(st.st_mode));
    text = slurp(path, &len);
    CHECK(text && len == 6 && memcmp(text, "hello\n", 6) == 0);
    free(text);
    CHECK(other_entries("out.bin", "link.bin") == 0);
    unlink(link);
    unlink(path);

    /* A link to nothing is not replaced by a file. */
    REQUIRE(symlink("/nonexistent/target", link) == 0);
    CHECK(ds_output_write(link, hello, 3, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "symbolic link to a missing file");
    CHECK(lstat(link, &st) == 0 && S_ISLNK(st.st_mode));
    unlink(link);
}

static void test_dev_full(void)
{
    struct stat st;
    if (stat("/dev/full", &st) != 0 || !S_ISCHR(st.st_mode)) {
        printf("# no /dev/full character device: skipped\n");
        return;
    }
    ds_error err;
    CHECK(ds_output_write("/dev/full", hello, 3, &err) == DS_ERR_DATA_LOSS);
    CHECK_CONTAINS(err.message, "cannot write /dev/full: No space left on device");
    CHECK(stat("/dev/full", &st) == 0 && S_ISCHR(st.st_mode));
    /* /dev/null takes the bytes and stays a device. */
    CHECK(ds_output_write("/dev/null", hello, 3, &err) == DS_OK);
    CHECK(stat("/dev/null", &st) == 0 && S_ISCHR(st.st_mode));
}

typedef struct reader {
    const char *path;
    char data[64];
    size_t len;
} reader;

static void *read_all(void *arg)
{
    reader *r = arg;
    int fd = open(r->path, O_RDONLY);
    if (fd < 0)
        return NULL;
    ssize_t n;
    while (r->len < sizeof r->data &&
           (n = read(fd, r->data + r->len, sizeof r->data - r->len)) > 0)
        r->len += (size_t)n;
    close(fd);
    return NULL;
}

static void test_fifo(void)
{
    char path[256];
    path_in(path, sizeof path, "pipe");
    REQUIRE(mkfifo(path, 0600) == 0);
    reader r = {.path = path};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, read_all, &r) == 0);
    ds_error err;
    CHECK(ds_output_write(path, hello, 3, &err) == DS_OK);
    pthread_join(t, NULL);
    CHECK(r.len == 6 && memcmp(r.data, "hello\n", 6) == 0);
    struct stat st;
    CHECK(lstat(path, &st) == 0 && S_ISFIFO(st.st_mode));
    CHECK(other_entries("pipe", NULL) == 0);
    unlink(path);
}

static void test_refused_kinds(void)
{
    char sub[256];
    path_in(sub, sizeof sub, "folder");
    REQUIRE(mkdir(sub, 0755) == 0);
    ds_error err;
    CHECK(ds_output_check(sub, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "is a folder: not replaced");
    CHECK(ds_output_write(sub, hello, 3, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "is a folder: not replaced");
    struct stat st;
    CHECK(stat(sub, &st) == 0 && S_ISDIR(st.st_mode));
    CHECK(other_entries("folder", NULL) == 0);
    rmdir(sub);

    /* A folder that does not exist: the temporary cannot be made, nothing is written. */
    char missing[256];
    path_in(missing, sizeof missing, "no/such/file");
    CHECK(ds_output_check(missing, &err) == DS_ERR_PERMISSION_DENIED);
    CHECK_CONTAINS(err.message, missing);
    CHECK(ds_output_write(missing, hello, 3, &err) == DS_ERR_PERMISSION_DENIED);
    CHECK_CONTAINS(err.message, missing);
    /* What would be written: a new file in an existing folder, a device, standard output. */
    char fresh[256];
    path_in(fresh, sizeof fresh, "not_yet.png");
    CHECK(ds_output_check(fresh, &err) == DS_OK);
    CHECK(access(fresh, F_OK) != 0);
    CHECK(ds_output_check("/dev/null", &err) == DS_OK);
    CHECK(ds_output_check("-", &err) == DS_OK);
    CHECK(ds_output_write("", hello, 3, &err) == DS_ERR_INVALID_ARGUMENT);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_new_and_replaced_file);
    RUN(test_dev_full);
    RUN(test_fifo);
    RUN(test_refused_kinds);
    rmdir(dir);
    return test_summary();
}
