/* What the golden and VRAM tests of the models share: a golden file's tensors as operands,
 * the relative L2 distance they are judged by, a wall clock for the timings they print, and
 * the progress and cancel hooks their forwards are run with.
 * Header-only, as test.h. */
#ifndef DS_TESTS_GOLDEN_TEST_H
#define DS_TESTS_GOLDEN_TEST_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "core/float_convert.h"
#include "core/safetensors.h"
#include "kernels/backend.h"
#include "kernels/ops.h"

/* Seconds of CLOCK_MONOTONIC. */
static inline double test_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Tensor `name` of a golden file as a tensor on `cpu` over the mapped data (borrowed); a
 * zeroed tensor (no data) when the file lacks it. */
static inline ds_tensor test_golden_tensor(ds_backend *cpu, const ds_safetensors *file,
                                           const char *name)
{
    const ds_sd_entry *e = ds_state_dict_find(&file->tensors, name);
    if (!e)
        return (ds_tensor){0};
    const ds_tensor_view *v = &e->tensor;
    return ds_tensor_wrap(cpu, v->dtype, v->ndim, v->shape, (void *)v->data);
}

/* Relative L2 distance ||got - want|| / ||want|| (the plain norm when want is zero) of
 * `count` elements (0: all of want) of got from got_offset and of want from want_offset,
 * in double whatever the dtypes. */
static inline double test_rel_l2_at(const ds_tensor *got, size_t got_offset,
                                    const ds_tensor *want, size_t want_offset, uint64_t count)
{
    double num = 0, den = 0;
    uint64_t n = count ? count : ds_tensor_numel(want);
    for (uint64_t i = 0; i < n; i++) {
        double a = ds_load_f64(got->data, got->dtype, got_offset + i);
        double b = ds_load_f64(want->data, want->dtype, want_offset + i);
        num += (a - b) * (a - b);
        den += b * b;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The relative L2 distance of all of got and want. */
static inline double test_rel_l2(const ds_tensor *got, const ds_tensor *want)
{
    return test_rel_l2_at(got, 0, want, 0, 0);
}

/* The ("forward", done, total) progress a forward reported: how often, and the last pair. */
typedef struct test_progress {
    int calls;
    uint64_t last, total;
} test_progress;

/* A ds_step_context.progress counting "forward" progress into the test_progress at `user`. */
static inline void test_on_forward(void *user, const char *phase, uint64_t done, uint64_t total)
{
    test_progress *p = user;
    if (strcmp(phase, "forward") == 0) {
        p->calls++;
        p->last = done;
        p->total = total;
    }
}

/* A ds_step_context.cancelled that always asks to stop. */
static inline int test_always_cancelled(void *user)
{
    (void)user;
    return 1;
}

#endif
