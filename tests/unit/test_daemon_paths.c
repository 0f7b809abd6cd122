/* Model roots and path checks, and the Python str()/repr() formatting of upstream's
 * "Cannot detect the model type" message. Expected repr strings were produced by CPython 3
 * (`repr(s)`, with surrogateescape for the undecodable byte), not by our code. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/paths.h"
#include "test.h"

static void test_is_under(void)
{
    CHECK(ds_path_is_under("/models", "/models"));
    CHECK(ds_path_is_under("/models", "/models/a.safetensors"));
    CHECK(ds_path_is_under("/models", "/models/x/y"));
    CHECK(!ds_path_is_under("/models", "/models2/a.safetensors"));
    CHECK(!ds_path_is_under("/models", "/model"));
    CHECK(!ds_path_is_under("/models/x", "/models"));
    CHECK(ds_path_is_under("/", "/anything/at/all"));
}

static void test_repr(void)
{
    static const struct {
        const char *in;
        const char *out;
    } cases[] = {
        {"/a/b", "'/a/b'"},
        {"/it's", "\"/it's\""},
        {"/q\"x", "'/q\"x'"},
        {"/both'\"", "'/both\\'\"'"},
        {"/back\\slash", "'/back\\\\slash'"},
        {"/tab\t", "'/tab\\t'"},
        {"/nl\n", "'/nl\\n'"},
        {"/ctl\x01\x7f", "'/ctl\\x01\\x7f'"},
        {"/\xc3\xa9/\xe6\x97\xa5\xe6\x9c\xac", "'/\xc3\xa9/\xe6\x97\xa5\xe6\x9c\xac'"},
        {"/nbsp\xc2\xa0", "'/nbsp\\xa0'"},
        {"/c1\xc2\x85", "'/c1\\x85'"},
        {"/zw\xe2\x80\x8b", "'/zw\\u200b'"},
        {"/pua\xee\x80\x80", "'/pua\\ue000'"},
        {"/emoji\xf0\x9f\x98\x80", "'/emoji\xf0\x9f\x98\x80'"},
        {"/bad\xff", "'/bad\\udcff'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = ds_python_repr(cases[i].in);
        CHECK_STR_EQ(got, cases[i].out);
        free(got);
    }
}

static void test_str_paths(void)
{
    const char *one[] = {"/m/it's.safetensors"};
    char *s = ds_python_str_paths(one, 1);
    CHECK_STR_EQ(s, "/m/it's.safetensors");
    free(s);
    /* str(['/a', "/b'"]) */
    const char *two[] = {"/a", "/b'"};
    s = ds_python_str_paths(two, 2);
    CHECK_STR_EQ(s, "['/a', \"/b'\"]");
    free(s);
}

/* Opens `path` and checks that the descriptor is `expect` (same inode) and the name is `expect`. */
static void check_opens(const ds_model_roots *roots, const char *path, const char *expect)
{
    int fd = -1;
    char *name = NULL;
    ds_error err;
    int rc = ds_model_roots_open(roots, path, &fd, &name, &err);
    CHECK_MSG(rc == DS_OK, "%s: %s", path, err.message);
    if (rc != DS_OK)
        return;
    CHECK_STR_EQ(name, expect);
    struct stat a, b;
    CHECK(fstat(fd, &a) == 0 && stat(expect, &b) == 0 && a.st_ino == b.st_ino &&
          a.st_dev == b.st_dev);
    close(fd);
    free(name);
}

static int open_code(const ds_model_roots *roots, const char *path, ds_error *err)
{
    int fd = -1;
    char *name = NULL;
    int rc = ds_model_roots_open(roots, path, &fd, &name, err);
    if (rc == DS_OK) {
        close(fd);
        free(name);
    } else {
        CHECK(fd == -1 && name == NULL);
    }
    return rc;
}

/* Each case runs through openat2() and through the component walk that stands in for it. */
static void test_open_beneath(int walk)
{
    ds__paths_force_walk(walk);
    char base[] = "/tmp/ds-test-paths-XXXXXX";
    REQUIRE(mkdtemp(base));
    char root[64], sibling[64], sub[96], file[128], outside[128], link[128], dotdot[128];
    snprintf(root, sizeof root, "%s/models", base);
    snprintf(sibling, sizeof sibling, "%s/models2", base);
    snprintf(sub, sizeof sub, "%s/sub", root);
    snprintf(file, sizeof file, "%s/a.safetensors", root);
    snprintf(outside, sizeof outside, "%s/b.safetensors", sibling);
    snprintf(link, sizeof link, "%s/escape.safetensors", root);
    snprintf(dotdot, sizeof dotdot, "%s/../models2/b.safetensors", root);
    REQUIRE(mkdir(root, 0700) == 0 && mkdir(sibling, 0700) == 0 && mkdir(sub, 0700) == 0);
    FILE *f = fopen(file, "w");
    REQUIRE(f);
    fclose(f);
    f = fopen(outside, "w");
    REQUIRE(f);
    fclose(f);
    REQUIRE(symlink(outside, link) == 0);
    char rel_link[128], abs_link[128], dir_link[128], via_dir[160], loop_a[128], loop_b[128];
    char inner_dotdot[160], via_dir_inside[160];
    snprintf(rel_link, sizeof rel_link, "%s/rel.safetensors", sub);
    REQUIRE(symlink("../a.safetensors", rel_link) == 0);
    snprintf(abs_link, sizeof abs_link, "%s/abs.safetensors", sub);
    REQUIRE(symlink(file, abs_link) == 0);
    snprintf(dir_link, sizeof dir_link, "%s/out", root);
    REQUIRE(symlink(sibling, dir_link) == 0);
    snprintf(via_dir, sizeof via_dir, "%s/b.safetensors", dir_link);
    snprintf(loop_a, sizeof loop_a, "%s/loop_a", root);
    snprintf(loop_b, sizeof loop_b, "%s/loop_b", root);
    REQUIRE(symlink("loop_b", loop_a) == 0 && symlink("loop_a", loop_b) == 0);
    snprintf(inner_dotdot, sizeof inner_dotdot, "%s/./sub/../a.safetensors", root);
    char sub_link[128];
    snprintf(sub_link, sizeof sub_link, "%s/sub_again", root);
    REQUIRE(symlink("sub", sub_link) == 0);
    snprintf(via_dir_inside, sizeof via_dir_inside, "%s/rel.safetensors", sub_link);

    ds_model_roots roots;
    ds_model_roots_init(&roots);
    ds_error err;
    CHECK(ds_model_roots_add(&roots, root, &err) == DS_OK);
    CHECK(ds_model_roots_add(&roots, root, &err) == DS_OK);
    CHECK(roots.count == 1);
    CHECK(ds_model_roots_add(&roots, file, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(ds_model_roots_add(&roots, "/nonexistent-ds-root", &err) == DS_ERR_NOT_FOUND);

    /* Inside: directly, through links that stay inside, through ".." that stays inside. The
     * name is the file actually opened. */
    check_opens(&roots, file, file);
    check_opens(&roots, rel_link, file);
    check_opens(&roots, abs_link, file);
    check_opens(&roots, inner_dotdot, file);
    check_opens(&roots, via_dir_inside, file);

    CHECK(open_code(&roots, "models/a.safetensors", &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "not absolute");
    CHECK(open_code(&roots, "", &err) == DS_ERR_INVALID_ARGUMENT);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/none.safetensors", root);
    CHECK(open_code(&roots, missing, &err) == DS_ERR_NOT_FOUND);
    /* A string prefix is not a parent: models2 is outside models. */
    CHECK(open_code(&roots, outside, &err) == DS_ERR_PERMISSION_DENIED);
    char expected[700];
    snprintf(expected, sizeof expected, "%s is outside the model roots: %s", outside, root);
    CHECK_STR_EQ(err.message, expected);
    /* Out through a file link, a directory link, "..": refused. */
    CHECK(open_code(&roots, link, &err) == DS_ERR_PERMISSION_DENIED);
    CHECK_STR_EQ(err.message, expected);
    CHECK(open_code(&roots, via_dir, &err) == DS_ERR_PERMISSION_DENIED);
    CHECK(open_code(&roots, dotdot, &err) == DS_ERR_PERMISSION_DENIED);
    CHECK(open_code(&roots, loop_a, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "too many symbolic links");
    /* A directory inside a root is not a model file. */
    CHECK(open_code(&roots, root, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(open_code(&roots, sub, &err) == DS_ERR_INVALID_ARGUMENT);

    /* What a running step opens may be a folder (a tokenizer's); the roots rule is the same. */
    CHECK(ds_model_roots_check(&roots, root, &err) == DS_OK);
    CHECK(ds_model_roots_check(&roots, "models", &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(ds_model_roots_check(&roots, dotdot, &err) == DS_ERR_PERMISSION_DENIED);
    CHECK(ds_model_roots_check(&roots, link, &err) == DS_ERR_PERMISSION_DENIED);
    snprintf(expected, sizeof expected, "%s is outside the model roots: %s", link, root);
    CHECK_STR_EQ(err.message, expected);

    /* With the sibling a root too, a link from one root into the other is fine. */
    CHECK(ds_model_roots_add(&roots, sibling, &err) == DS_OK);
    check_opens(&roots, link, outside);
    check_opens(&roots, via_dir, outside);
    CHECK(ds_model_roots_check(&roots, link, &err) == DS_OK);
    char *described = ds_model_roots_describe(&roots);
    snprintf(expected, sizeof expected, "%s, %s", root, sibling);
    CHECK_STR_EQ(described, expected);
    free(described);

    ds_opened_paths opened;
    char *two[] = {file, outside};
    CHECK(ds_model_roots_open_all(&roots, two, 2, &opened, &err) == DS_OK);
    CHECK(opened.count == 2 && opened.fds[0] >= 0 && opened.fds[1] >= 0);
    if (opened.count == 2)
        CHECK_STR_EQ(opened.names[1], outside);
    ds_opened_paths_free(&opened);
    char *bad[] = {file, missing};
    CHECK(ds_model_roots_open_all(&roots, bad, 2, &opened, &err) == DS_ERR_NOT_FOUND);
    CHECK(opened.count == 0 && opened.names == NULL);
    ds_model_roots_free(&roots);

    unlink(via_dir_inside);
    unlink(sub_link);
    unlink(loop_a);
    unlink(loop_b);
    unlink(dir_link);
    unlink(abs_link);
    unlink(rel_link);
    unlink(link);
    unlink(file);
    unlink(outside);
    rmdir(sub);
    rmdir(root);
    rmdir(sibling);
    rmdir(base);
    ds__paths_force_walk(0);
}

static void test_open_openat2(void) { test_open_beneath(0); }
static void test_open_walk(void) { test_open_beneath(1); }

int main(void)
{
    RUN(test_is_under);
    RUN(test_repr);
    RUN(test_str_paths);
    RUN(test_open_openat2);
    RUN(test_open_walk);
    return test_summary();
}
