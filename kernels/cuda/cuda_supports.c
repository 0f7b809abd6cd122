#include "kernels/cuda/cuda_supports.h"

#include <stdint.h>

int ds__cuda_gemm_d_type_ok(ds_dtype in, ds_dtype out)
{
    return in == DS_F32 ? out == DS_F32 : (out == in || out == DS_F32);
}

ds_dtype ds__cuda_conv_compute_dtype(const ds_tensor *x, const ds_tensor *cache,
                                     const ds_tensor *weight)
{
    ds_dtype wd = weight->dtype;
    if (x->dtype == wd && (!cache || cache->dtype == wd))
        return wd;
    return DS_F32;
}

static int aligned16(const ds_tensor *t) { return ((uintptr_t)t->data % 16) == 0; }

static int is_float(ds_dtype d) { return d == DS_F32 || d == DS_BF16 || d == DS_F16; }

ds__cuda_attention_form ds__cuda_attention_form_for(const ds_attention_args *a)
{
    ds_dtype dt = a->q->dtype;
    int64_t d = a->q->shape[3];
    if (!is_float(dt) || a->k->dtype != dt || a->v->dtype != dt)
        return DS_CUDA_ATTENTION_CPU;
    /* The fused kernel: cp.async moves 16-byte pieces; grid y and z carry heads and batch. */
    if ((dt == DS_BF16 || dt == DS_F16) && a->out->dtype == dt && (d == 64 || d == 128) &&
        aligned16(a->q) && aligned16(a->k) && aligned16(a->v) && aligned16(a->out) &&
        a->q->shape[0] <= 65535 && a->q->shape[2] <= 65535 &&
        (a->q->shape[1] + 63) / 64 <= 0x7fffffff)
        return DS_CUDA_ATTENTION_FLASH;
    /* The matmul form writes out from the P V GEMM, and one query row's scores must fit its
     * scratch. */
    int64_t sk = a->k->shape[1];
    size_t row_bytes = (size_t)sk * (sizeof(float) + ds_dtype_size(dt));
    if (ds__cuda_gemm_d_type_ok(dt, a->out->dtype) && d > 0 &&
        row_bytes <= DS_CUDA_ATTENTION_SCRATCH)
        return DS_CUDA_ATTENTION_MATMUL;
    return DS_CUDA_ATTENTION_CPU;
}

int64_t ds__cuda_attention_rows_per_pass(int64_t sq, int64_t sk, ds_dtype dtype)
{
    size_t row_bytes = (size_t)(sk > 0 ? sk : 1) * (sizeof(float) + ds_dtype_size(dtype));
    int64_t rows = (int64_t)(DS_CUDA_ATTENTION_SCRATCH / row_bytes);
    if (rows < 1)
        rows = 1;
    return rows < sq ? rows : sq;
}

int ds__cuda_supports(ds_op op, const void *args)
{
    switch (op) {
    case DS_OP_ATTENTION:
        return !args || ds__cuda_attention_form_for(args) != DS_CUDA_ATTENTION_CPU;
    case DS_OP_CONV2D: {
        const ds_conv2d_args *a = args;
        return !a || ds__cuda_gemm_d_type_ok(ds__cuda_conv_compute_dtype(a->x, NULL, a->weight),
                                             a->y->dtype);
    }
    case DS_OP_CONV3D_CAUSAL: {
        const ds_conv3d_args *a = args;
        return !a || ds__cuda_gemm_d_type_ok(ds__cuda_conv_compute_dtype(a->x, a->cache, a->weight),
                                             a->y->dtype);
    }
    case DS_OP_COUNT: return 0;
    /* Every other op has a kernel for every dtype kernels/ops.c accepts (the GEMMs convert
     * operands cuBLASLt cannot take together). */
    default: return op >= 0 && op < DS_OP_COUNT;
    }
}
