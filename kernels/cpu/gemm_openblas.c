/* f32 GEMMs through OpenBLAS, one single-threaded sgemm per part (gemm_parts.c): the library's
 * own thread count is 1 (cpu_backend.c), so no OpenBLAS worker is left spinning on the cores
 * our pool's next op needs. */
#include <cblas.h>
#include <limits.h>

#include "kernels/cpu/gemm_parts.h"

static int sgemm_part(void *ctx, const ds__gemm_part *p, ds_error *err)
{
    (void)ctx;
    (void)err;
    /* BLAS takes int dimensions: rows past INT_MAX / 2 go in several calls. */
    const int64_t most = INT_MAX / 2;
    for (int64_t i = 0; i < p->batch; i++) {
        const float *a = (const float *)p->a + i * p->sa, *b = (const float *)p->b + i * p->sb;
        float *c = p->c + i * p->sc;
        for (int64_t m0 = 0; m0 < p->m; m0 += most) {
            int64_t mb = p->m - m0 < most ? p->m - m0 : most;
            cblas_sgemm(CblasRowMajor, p->trans_a ? CblasTrans : CblasNoTrans,
                        p->trans_b ? CblasTrans : CblasNoTrans, (int)mb, (int)p->n, (int)p->k,
                        p->alpha, a + (p->trans_a ? m0 : m0 * p->lda), (int)p->lda, b,
                        (int)p->ldb, p->beta, c + m0 * p->ldc, (int)p->ldc);
        }
    }
    return DS_OK;
}

int ds__openblas_sgemm(ds_backend *b, const ds__gemm_part *g, ds_error *err)
{
    return ds__gemm_run_parts(b, g, sgemm_part, NULL, err);
}
