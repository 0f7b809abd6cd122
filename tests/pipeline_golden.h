/* What the whole-pipeline golden tests share: the golden file and the tokenizer folder under
 * the test data, a progress log that can ask to cancel after N events, the 8-bit comparison of
 * an image or frames with upstream's, and a dump of the outputs for before/after checks of a
 * change that must keep them bit-identical (DS_TEST_DUMP_DIR: each case's tensors are written
 * there as NAME.bin, their raw bytes, and the image as NAME.png).
 * Header-only, as test.h. */
#ifndef DS_TESTS_PIPELINE_GOLDEN_H
#define DS_TESTS_PIPELINE_GOLDEN_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/image_png.h"
#include "core/safetensors.h"
#include "kernels/backend.h"
#include "models/model_step.h"
#include "tools/golden_model.h"

#define TEST_PROGRESS_EVENTS 256

/* The (phase, done, total) events a run reported, the first TEST_PROGRESS_EVENTS of them. */
typedef struct test_progress_log {
    char phases[TEST_PROGRESS_EVENTS][16];
    uint64_t done[TEST_PROGRESS_EVENTS], total[TEST_PROGRESS_EVENTS];
    int count;
    int cancel_after; /* > 0: cancelled once this many events arrived */
} test_progress_log;

/* A ds_step_context.progress appending to the test_progress_log at `user`. */
static inline void test_log_progress(void *user, const char *phase, uint64_t done, uint64_t total)
{
    test_progress_log *log = user;
    if (log->count < TEST_PROGRESS_EVENTS) {
        snprintf(log->phases[log->count], sizeof log->phases[0], "%s", phase);
        log->done[log->count] = done;
        log->total[log->count] = total;
    }
    log->count++;
}

/* A ds_step_context.cancelled that asks to stop once the log holds cancel_after events. */
static inline int test_log_cancelled(void *user)
{
    test_progress_log *log = user;
    return log->cancel_after > 0 && log->count >= log->cancel_after;
}

/* A step context on `cpu` that logs into `log` and cancels as it says. */
static inline ds_step_context test_log_context(ds_backend *cpu, test_progress_log *log)
{
    return (ds_step_context){.backend = cpu, .progress = test_log_progress,
                             .cancelled = test_log_cancelled, .user = log};
}

/* "$DS_TEST_DATA/rel" (tests/data when unset) into buf. */
static inline void test_data_path(char *buf, size_t size, const char *rel)
{
    const char *root = getenv("DS_TEST_DATA");
    snprintf(buf, size, "%s/%s", root ? root : "tests/data", rel);
}

/* Tensor `name` of the golden file, or NULL. */
static inline const ds_tensor_view *test_golden_view(const ds_safetensors *golden,
                                                     const char *name)
{
    const ds_sd_entry *e = ds_state_dict_find(&golden->tensors, name);
    return e ? &e->tensor : NULL;
}

/* How far 8-bit values (an image or frames) are from upstream's: the largest difference and how
 * many differ. Prints the line the pipeline tests report with the latents' distance. */
static inline int test_u8_max_diff(const char *name, const ds_tensor *got,
                                   const ds_tensor_view *want, double latent_rel,
                                   double latent_budget)
{
    int max_diff = 0;
    uint64_t differing = 0, n = ds_tensor_view_numel(want);
    for (uint64_t i = 0; i < n; i++) {
        int d = abs((int)((const uint8_t *)got->data)[i] - (int)((const uint8_t *)want->data)[i]);
        max_diff = d > max_diff ? d : max_diff;
        differing += d != 0;
    }
    fprintf(stderr, "  %s: latents rel L2 %.3g (budget %g); 8-bit max |diff| %d, %llu of %llu "
            "values differ\n", name, latent_rel, latent_budget, max_diff,
            (unsigned long long)differing, (unsigned long long)n);
    return max_diff;
}

static inline void test_dump_bytes(const char *name, const char *ext, const void *data,
                                   size_t size)
{
    const char *dir = getenv("DS_TEST_DUMP_DIR");
    if (!dir)
        return;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.%s", dir, name, ext);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size)
        fprintf(stderr, "  could not write %s\n", path);
    if (f)
        fclose(f);
}

/* With DS_TEST_DUMP_DIR set: writes `t`'s bytes as NAME.bin there. */
static inline void test_dump_tensor(const char *name, const ds_tensor *t)
{
    test_dump_bytes(name, "bin", t->data, ds_tensor_numel(t) * ds_dtype_size(t->dtype));
}

/* With DS_TEST_DUMP_DIR set: writes an [H, W, 3] u8 image as NAME.png there, as the daemon
 * encodes it for a RunPipeline reply. */
static inline void test_dump_png(const char *name, const ds_tensor *image)
{
    uint8_t *png = NULL;
    size_t size = 0;
    ds_error err;
    if (!getenv("DS_TEST_DUMP_DIR"))
        return;
    if (ds_png_encode_rgb8(image->data, (uint32_t)image->shape[1], (uint32_t)image->shape[0],
                           &png, &size, &err) != DS_OK) {
        fprintf(stderr, "  %s: PNG encoding failed: %s\n", name, err.message);
        return;
    }
    test_dump_bytes(name, "png", png, size);
    free(png);
}

/* The outputs of case `name` (the `number`th case of `pipeline`'s test) against upstream's:
 * returns the final latents' relative L2 distance and sets *max_diff to the 8-bit values'
 * largest difference (`pixels`: "image" or "video"), printing both; with DS_TEST_DUMP_DIR, dumps
 * both (and the image as a PNG when `png`). */
static inline double test_pipeline_outputs(const char *pipeline, int number, const char *name,
                                           ds_backend *cpu, const ds_tensor *latents,
                                           const ds_tensor_view *want_latents,
                                           const char *pixels, const ds_tensor *got_pixels,
                                           const ds_tensor_view *want_pixels, int png,
                                           double budget, int *max_diff)
{
    char key[96];
    ds_tensor want = ds_tensor_wrap(cpu, want_latents->dtype, want_latents->ndim,
                                    want_latents->shape, (void *)want_latents->data);
    double rel = ds_golden_rel_l2(latents, &want);
    *max_diff = test_u8_max_diff(name, got_pixels, want_pixels, rel, budget);
    snprintf(key, sizeof key, "%s_%d_%s_latents", pipeline, number, name);
    test_dump_tensor(key, latents);
    snprintf(key, sizeof key, "%s_%d_%s_%s", pipeline, number, name, pixels);
    test_dump_tensor(key, got_pixels);
    if (png)
        test_dump_png(key, got_pixels);
    return rel;
}

#endif
