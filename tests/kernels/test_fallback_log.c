/* The CPU fallback's log line (kernels/ops.c): one info line per op and shape class (dtypes,
 * ranks, last dims), none for ops the backend runs itself. The backend under test is the CPU
 * backend's table under another name whose `supports` refuses `scale`, so every scale takes the
 * fallback path a GPU backend would; stderr is captured in a temporary file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "kernels/ops.h"
#include "test.h"

static int (*cpu_supports)(const ds_backend *, ds_op, const void *);

static int refuse_scale(const ds_backend *b, ds_op op, const void *args)
{
    return op != DS_OP_SCALE && cpu_supports(b, op, args);
}

static ds_backend fake;

static int scale_on(ds_dtype dt, int64_t rows, int64_t cols)
{
    int64_t shape[2] = {rows, cols};
    ds_tensor x, y;
    ds_error err;
    if (ds_tensor_alloc(&fake, dt, 2, shape, &x, &err) != DS_OK ||
        ds_tensor_alloc(&fake, dt, 2, shape, &y, &err) != DS_OK)
        return 0;
    memset(x.data, 0, ds_tensor_nbytes(&x));
    ds_scale_args a = {&x, 2.0f, 1.5f, &y};
    int ok = ds_scale(&fake, NULL, &a, &err) == DS_OK;
    /* 0 * 2 + 1.5 everywhere: the fallback computed and copied back. */
    for (int64_t i = 0; ok && dt == DS_F32 && i < rows * cols; i++)
        ok = ((float *)y.data)[i] == 1.5f;
    ds_binary_args add = {&x, &x, DS_BINARY_ADD, &y};
    ok = ok && ds_binary(&fake, NULL, &add, &err) == DS_OK;
    ds_tensor_free(&x);
    ds_tensor_free(&y);
    return ok;
}

static int count_lines(FILE *f, const char *needle)
{
    char line[4096];
    int n = 0;
    rewind(f);
    while (fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    return n;
}

static void test_one_line_per_class(void)
{
    ds_backend *cpu;
    ds_error err;
    REQUIRE(ds_cpu_backend_create(1, &cpu, &err) == DS_OK);
    fake = *cpu;
    fake.name = "refuses-scale";
    cpu_supports = cpu->supports;
    fake.supports = refuse_scale;
    ds_log_set_level(DS_LOG_INFO);

    FILE *log = tmpfile();
    REQUIRE(log);
    fflush(stderr);
    int saved = dup(2);
    REQUIRE(saved >= 0 && dup2(fileno(log), 2) >= 0);
    int ok = scale_on(DS_F32, 4, 8) && scale_on(DS_F32, 4, 8) &&
             scale_on(DS_F32, 7, 8) /* same class: only the row count differs */ &&
             scale_on(DS_F32, 4, 16) && scale_on(DS_BF16, 4, 8) && scale_on(DS_BF16, 9, 8);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    CHECK_MSG(ok, "an op through the fallback failed or computed wrong values");

    int scale_lines = count_lines(log, "scale runs on the CPU");
    CHECK_MSG(scale_lines == 3, "%d fallback lines for scale, want 3 (f32 x8, f32 x16, bf16 x8)",
              scale_lines);
    CHECK(count_lines(log, "[4, 16] f32") == 1); /* the one x16 line (x and y) */
    CHECK(count_lines(log, "binary") == 0);
    CHECK(count_lines(log, " info ") == 3);
    fclose(log);
    ds_backend_destroy(cpu);
}

int main(void)
{
    RUN(test_one_line_per_class);
    return test_summary();
}
