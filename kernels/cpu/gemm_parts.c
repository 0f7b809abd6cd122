/* Cutting one GEMM into one part per thread of the CPU backend's pool.
 *
 * Both GEMM libraries run single-threaded, each part on one worker of our pool: their own
 * thread pools (OpenMP under oneDNN, OpenBLAS's pthreads) keep their idle workers spinning for
 * milliseconds after every call, on the same cores our pool's next op needs; on two cores that
 * spinning took a tenth of a DiT forward's CPU time. A part is a run of whole matrices of a
 * batch where there are at least as many as threads, else a run of columns in whole multiples
 * of 64 (the f32 kernels' widest register block, four AVX-512 vectors, so no part runs a
 * narrower tail kernel than the whole GEMM would), else a run of rows. The cut depends only on
 * the shape and the thread count, and single-threaded kernels are static, so results are
 * deterministic for a given shape, dtype and thread count. */
#include "kernels/cpu/gemm_parts.h"

#include <stdlib.h>
#include <string.h>

#define COLUMN_QUANTUM 64
/* Below this many multiply-adds a GEMM runs whole on the calling thread: waking the pool costs
 * more than the second core saves. */
#define SPLIT_MIN_MACS (1 << 20)

typedef enum { CUT_NONE, CUT_COLUMNS, CUT_BATCH, CUT_ROWS } cut_axis;

typedef struct parts_job {
    const ds__gemm_part *whole;
    cut_axis axis;
    int64_t step;
    ds__gemm_part_fn fn;
    void *ctx;
    int *rc;               /* one per part */
    ds_error *errs;        /* one per part */
} parts_job;

static int64_t cut_extent(const ds__gemm_part *g, cut_axis axis)
{
    return axis == CUT_COLUMNS ? g->n : axis == CUT_BATCH ? g->batch : g->m;
}

static void parts_range(void *ctx, int64_t begin, int64_t end)
{
    parts_job *j = ctx;
    const ds__gemm_part *w = j->whole;
    int64_t extent = cut_extent(w, j->axis);
    for (int64_t p = begin; p < end; p++) {
        int64_t lo = p * j->step, len = extent - lo < j->step ? extent - lo : j->step;
        ds__gemm_part part = *w;
        const char *a = w->a, *bw = w->b;
        if (j->axis == CUT_COLUMNS) {
            part.n = len;
            bw += (size_t)(w->trans_b ? lo * w->ldb : lo) * w->esize;
            part.c = w->c + lo;
        } else if (j->axis == CUT_BATCH) {
            part.batch = len;
            a += (size_t)(lo * w->sa) * w->esize;
            bw += (size_t)(lo * w->sb) * w->esize;
            part.c = w->c + lo * w->sc;
        } else {
            part.m = len;
            a += (size_t)(w->trans_a ? lo : lo * w->lda) * w->esize;
            part.c = w->c + lo * w->ldc;
        }
        part.a = a;
        part.b = bw;
        j->rc[p] = j->fn(j->ctx, &part, &j->errs[p]);
    }
}

int ds__gemm_run_parts(ds_backend *b, const ds__gemm_part *whole, ds__gemm_part_fn fn, void *ctx,
                       ds_error *err)
{
    int threads = ds__cpu_threads(b);
    double macs = (double)whole->batch * (double)whole->m * (double)whole->n * (double)whole->k;
    cut_axis axis = CUT_NONE;
    if (threads > 1 && macs >= SPLIT_MIN_MACS) {
        if (whole->batch >= threads)
            axis = CUT_BATCH;
        else if (whole->n >= (int64_t)threads * COLUMN_QUANTUM)
            axis = CUT_COLUMNS;
        else if (whole->batch == 1 && whole->m >= threads)
            axis = CUT_ROWS;
    }
    if (axis == CUT_NONE)
        return fn(ctx, whole, err);

    int64_t extent = cut_extent(whole, axis);
    int64_t step = (extent + threads - 1) / threads;
    if (axis == CUT_COLUMNS)
        step = (step + COLUMN_QUANTUM - 1) / COLUMN_QUANTUM * COLUMN_QUANTUM;
    int parts = (int)((extent + step - 1) / step);
    int *rc_parts = calloc((size_t)parts, sizeof *rc_parts);
    ds_error *errs = calloc((size_t)parts, sizeof *errs);
    if (!rc_parts || !errs) {
        free(rc_parts);
        free(errs);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "gemm: out of memory");
    }
    parts_job job = {whole, axis, step, fn, ctx, rc_parts, errs};
    ds__cpu_parallel_for(b, parts, 1, parts_range, &job);
    int rc = DS_OK;
    for (int p = 0; p < parts && rc == DS_OK; p++)
        if (rc_parts[p] != DS_OK) {
            *err = errs[p];
            rc = rc_parts[p];
        }
    free(rc_parts);
    free(errs);
    return rc;
}
