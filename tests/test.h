/* A minimal test harness: CHECK records a failure and goes on, REQUIRE stops the test.
 * Each test file has a main that calls RUN(test_fn) for each case and returns test_summary(). */
#ifndef DS_TESTS_TEST_H
#define DS_TESTS_TEST_H

#include <stdio.h>
#include <string.h>

static int test_failures;
static int test_cases;
static int test_case_failed;

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);          \
            test_case_failed = 1;                                                             \
        }                                                                                     \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                  \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);          \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fputc('\n', stderr);                                                              \
            test_case_failed = 1;                                                             \
        }                                                                                     \
    } while (0)

#define REQUIRE(cond)                                                                         \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #cond);        \
            test_case_failed = 1;                                                             \
            return;                                                                           \
        }                                                                                     \
    } while (0)

#define CHECK_STR_EQ(a, b)                                                                    \
    do {                                                                                      \
        const char *check_a_ = (a), *check_b_ = (b);                                          \
        if (!check_a_ || !check_b_ || strcmp(check_a_, check_b_) != 0) {                      \
            fprintf(stderr, "%s:%d: CHECK_STR_EQ failed: %s\n  got:      %s\n  expected: %s\n", \
                    __FILE__, __LINE__, #a, check_a_ ? check_a_ : "(null)",                   \
                    check_b_ ? check_b_ : "(null)");                                          \
            test_case_failed = 1;                                                             \
        }                                                                                     \
    } while (0)

/* The message must contain `needle`. */
#define CHECK_CONTAINS(haystack, needle)                                                      \
    do {                                                                                      \
        const char *check_h_ = (haystack), *check_n_ = (needle);                              \
        if (!check_h_ || !strstr(check_h_, check_n_)) {                                       \
            fprintf(stderr, "%s:%d: CHECK_CONTAINS failed: %s\n  text:   %s\n  wanted: %s\n", \
                    __FILE__, __LINE__, #haystack, check_h_ ? check_h_ : "(null)", check_n_); \
            test_case_failed = 1;                                                             \
        }                                                                                     \
    } while (0)

#define RUN(fn)                                                                               \
    do {                                                                                      \
        test_case_failed = 0;                                                                 \
        test_cases++;                                                                         \
        fn();                                                                                 \
        if (test_case_failed) {                                                               \
            test_failures++;                                                                  \
            fprintf(stderr, "FAIL %s\n", #fn);                                                \
        } else {                                                                              \
            fprintf(stderr, "ok   %s\n", #fn);                                                \
        }                                                                                     \
    } while (0)

static inline int test_summary(void)
{
    fprintf(stderr, "%d cases, %d failed\n", test_cases, test_failures);
    return test_failures ? 1 : 0;
}

#endif
