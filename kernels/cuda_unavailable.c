/* The build without CUDA: the CUDA backend exists in the API and says plainly that it is not
 * there, so callers (and the gpu test suite) fall back to the CPU backend. */
#include "kernels/backend.h"

int ds_cuda_backend_create(int device, ds_backend **out, ds_error *err)
{
    *out = NULL;
    return ds_error_set(err, DS_ERR_UNAVAILABLE,
                        "CUDA device %d: this build has no CUDA backend (configure with "
                        "-Dcuda=enabled where the CUDA toolkit is installed)", device);
}
