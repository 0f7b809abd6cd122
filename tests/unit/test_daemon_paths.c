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

static void test_resolve(void)
{
    char base[] = "/tmp/ds-test-paths-XXXXXX";
    REQUIRE(mkdtemp(base));
    char root[64], sibling[64], file[128], outside[128], link[128], dotdot[128];
    snprintf(root, sizeof root, "%s/models", base);
    snprintf(sibling, sizeof sibling, "%s/models2", base);
    snprintf(file, sizeof file, "%s/a.safetensors", root);
    snprintf(outside, sizeof outside, "%s/b.safetensors", sibling);
    snprintf(link, sizeof link, "%s/escape.safetensors", root);
    snprintf(dotdot, sizeof dotdot, "%s/../models2/b.safetensors", root);
    REQUIRE(mkdir(root, 0700) == 0 && mkdir(sibling, 0700) == 0);
    FILE *f = fopen(file, "w");
    REQUIRE(f);
    fclose(f);
    f = fopen(outside, "w");
    REQUIRE(f);
    fclose(f);
    REQUIRE(symlink(outside, link) == 0);

    ds_model_roots roots;
    ds_model_roots_init(&roots);
    ds_error err;
    CHECK(ds_model_roots_add(&roots, root, &err) == DS_OK);
    CHECK(ds_model_roots_add(&roots, root, &err) == DS_OK);
    CHECK(roots.count == 1);
    CHECK(ds_model_roots_add(&roots, file, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(ds_model_roots_add(&roots, "/nonexistent-ds-root", &err) == DS_ERR_NOT_FOUND);

    char *resolved = NULL;
    CHECK(ds_model_roots_resolve(&roots, file, &resolved, &err) == DS_OK);
    CHECK_STR_EQ(resolved, file);
    free(resolved);
    CHECK(ds_model_roots_resolve(&roots, "models/a.safetensors", &resolved, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "not absolute");
    CHECK(ds_model_roots_resolve(&roots, "", &resolved, &err) == DS_ERR_INVALID_ARGUMENT);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/none.safetensors", root);
    CHECK(ds_model_roots_resolve(&roots, missing, &resolved, &err) == DS_ERR_NOT_FOUND);
    /* A string prefix is not a parent: models2 is outside models. */
    CHECK(ds_model_roots_resolve(&roots, outside, &resolved, &err) == DS_ERR_PERMISSION_DENIED);
    char expected[700];
    snprintf(expected, sizeof expected, "%s is outside the model roots: %s", outside, root);
    CHECK_STR_EQ(err.message, expected);
    /* Symlinks and .. are resolved before the check. */
    CHECK(ds_model_roots_resolve(&roots, link, &resolved, &err) == DS_ERR_PERMISSION_DENIED);
    CHECK(ds_model_roots_resolve(&roots, dotdot, &resolved, &err) == DS_ERR_PERMISSION_DENIED);
    /* A directory inside a root is not a model file. */
    CHECK(ds_model_roots_resolve(&roots, root, &resolved, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(resolved == NULL);

    /* What a running step opens may be a folder (a tokenizer's); the roots rule is the same. */
    CHECK(ds_model_roots_check(&roots, root, &err) == DS_OK);
    CHECK(ds_model_roots_check(&roots, file, &err) == DS_OK);
    CHECK(ds_model_roots_check(&roots, "models", &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(ds_model_roots_check(&roots, missing, &err) == DS_ERR_NOT_FOUND);
    CHECK(ds_model_roots_check(&roots, sibling, &err) == DS_ERR_PERMISSION_DENIED);
    CHECK(ds_model_roots_check(&roots, dotdot, &err) == DS_ERR_PERMISSION_DENIED);
    CHECK(ds_model_roots_check(&roots, link, &err) == DS_ERR_PERMISSION_DENIED);
    snprintf(expected, sizeof expected, "%s is outside the model roots: %s", link, root);
    CHECK_STR_EQ(err.message, expected);

    CHECK(ds_model_roots_add(&roots, sibling, &err) == DS_OK);
    CHECK(ds_model_roots_check(&roots, link, &err) == DS_OK);
    CHECK(ds_model_roots_resolve(&roots, link, &resolved, &err) == DS_OK);
    CHECK_STR_EQ(resolved, outside);
    free(resolved);
    char *described = ds_model_roots_describe(&roots);
    snprintf(expected, sizeof expected, "%s, %s", root, sibling);
    CHECK_STR_EQ(described, expected);
    free(described);
    ds_model_roots_free(&roots);

    unlink(link);
    unlink(file);
    unlink(outside);
    rmdir(root);
    rmdir(sibling);
    rmdir(base);
}

int main(void)
{
    RUN(test_is_under);
    RUN(test_repr);
    RUN(test_str_paths);
    RUN(test_resolve);
    return test_summary();
}
