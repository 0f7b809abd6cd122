#include "kernels/cpu/onednn_engine.h"

#ifdef DS_HAVE_ONEDNN

#include <pthread.h>

static pthread_once_t engine_once = PTHREAD_ONCE_INIT;
static dnnl_engine_t engine;
static dnnl_status_t engine_status = dnnl_runtime_error;

static void engine_create(void)
{
    engine_status = dnnl_engine_create(&engine, dnnl_cpu, 0);
}

int ds__onednn_engine(const char *op, dnnl_engine_t *out, ds_error *err)
{
    pthread_once(&engine_once, engine_create);
    if (engine_status != dnnl_success)
        return ds_error_set(err, DS_ERR_INTERNAL, "%s (oneDNN): cannot create the CPU engine "
                            "(status %d)", op, (int)engine_status);
    *out = engine;
    return DS_OK;
}

dnnl_data_type_t ds__onednn_type(ds_dtype t)
{
    return t == DS_BF16 ? dnnl_bf16 : dnnl_f32;
}

#else

/* ISO C wants a translation unit to declare something. */
typedef int ds__onednn_engine_unavailable;

#endif
