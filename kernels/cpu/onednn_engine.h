/* The process's one oneDNN CPU engine, shared by the GEMM and convolution paths (built with
 * DS_HAVE_ONEDNN), and the dtype mapping both use. */
#ifndef DS_KERNELS_CPU_ONEDNN_ENGINE_H
#define DS_KERNELS_CPU_ONEDNN_ENGINE_H

#ifdef DS_HAVE_ONEDNN

#include <oneapi/dnnl/dnnl.h>

#include "core/dtype.h"
#include "core/error.h"

/* The engine, created at the first call; `op` names the caller in the error. */
int ds__onednn_engine(const char *op, dnnl_engine_t *engine, ds_error *err);

/* bf16 as bf16, every other dtype the paths hand over (f32) as f32. */
dnnl_data_type_t ds__onednn_type(ds_dtype t);

#endif

#endif
