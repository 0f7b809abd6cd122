#include "kernel_test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"

kt_env kt;

void kt_init(int argc, char **argv)
{
    const char *name = "cpu";
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc)
            name = argv[++i];
    ds_error err;
    int rc;
    if (strcmp(name, "cuda") == 0)
        rc = ds_cuda_backend_create(0, &kt.backend, &err);
    else if (strcmp(name, "cpu") == 0)
        rc = ds_cpu_backend_create(0, &kt.backend, &err);
    else {
        fprintf(stderr, "unknown backend %s\n", name);
        exit(2);
    }
    if (rc == DS_ERR_UNAVAILABLE) {
        fprintf(stderr, "skipped: %s\n", err.message);
        exit(77);
    }
    if (rc != DS_OK) {
        fprintf(stderr, "cannot create the %s backend: %s\n", name, err.message);
        exit(1);
    }
    kt.backend_name = name;
    kt.seed = 0x9E3779B97F4A7C15ull;
}

void kt_finish(void) { ds_backend_destroy(kt.backend); }

static uint64_t next_u64(void)
{
    /* splitmix64: deterministic and good enough for test data. */
    uint64_t z = (kt.seed += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double next_unit(void) { return (double)(next_u64() >> 11) * 0x1p-53; }

double *kt_uniform(size_t n, double lo, double hi)
{
    double *v = malloc((n ? n : 1) * sizeof *v);
    for (size_t i = 0; v && i < n; i++)
        v[i] = lo + (hi - lo) * next_unit();
    return v;
}

double *kt_randn(size_t n, double stddev)
{
    double *v = malloc((n ? n : 1) * sizeof *v);
    for (size_t i = 0; v && i < n; i++) {
        double u1 = next_unit(), u2 = next_unit();
        v[i] = stddev * sqrt(-2.0 * log(u1 + 0x1p-60)) * cos(2.0 * M_PI * u2);
    }
    return v;
}

static size_t numel_of(int ndim, const int64_t *shape)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    return n;
}

void kt_poison(ds_tensor *t)
{
    /* A quiet NaN in every float format: 0xFFFF... is NaN for f32/f16/bf16/e5m2/e4m3. */
    ds_error err;
    size_t bytes = ds_tensor_nbytes(t);
    if (bytes % 4 == 0) {
        t->backend->fill32(t->backend, t->data, 0xFFFFFFFFu, bytes, NULL, &err);
    } else {
        unsigned char *host = malloc(bytes);
        memset(host, 0xFF, bytes);
        ds_tensor_upload(t, host, NULL, &err);
        free(host);
    }
    t->backend->stream_synchronize(t->backend, NULL, &err);
}

int kt_tensor(ds_dtype dtype, int ndim, const int64_t *shape, double *values, ds_tensor *out)
{
    ds_error err;
    if (ds_tensor_alloc(kt.backend, dtype, ndim, shape, out, &err) != DS_OK) {
        fprintf(stderr, "kt_tensor: %s\n", err.message);
        return 0;
    }
    if (!values) {
        kt_poison(out);
        return 1;
    }
    size_t n = numel_of(ndim, shape);
    void *host = malloc(ds_tensor_nbytes(out) + 1);
    for (size_t i = 0; i < n; i++) {
        ds_store_f64(host, dtype, i, values[i]);
        values[i] = ds_load_f64(host, dtype, i);
    }
    int ok = ds_tensor_upload(out, host, NULL, &err) == DS_OK;
    if (!ok)
        fprintf(stderr, "kt_tensor: %s\n", err.message);
    free(host);
    return ok;
}

double *kt_read(const ds_tensor *t)
{
    ds_error err;
    size_t n = (size_t)ds_tensor_numel(t);
    void *host = malloc(ds_tensor_nbytes(t) + 1);
    double *v = malloc((n ? n : 1) * sizeof *v);
    if (ds_tensor_download(t, host, NULL, &err) != DS_OK) {
        fprintf(stderr, "kt_read: %s\n", err.message);
        for (size_t i = 0; i < n; i++)
            v[i] = NAN;
    } else {
        for (size_t i = 0; i < n; i++)
            v[i] = ds_load_f64(host, t->dtype, i);
    }
    free(host);
    return v;
}

double kt_budget(ds_dtype dtype)
{
    switch (dtype) {
    case DS_F64: return 1e-12;
    case DS_F32: return 1e-5;
    case DS_F16: return 2e-3;
    case DS_BF16: return 1e-2;
    case DS_F8_E4M3: return 7e-2;
    case DS_F8_E5M2: return 1.3e-1;
    default: return 0;
    }
}

int kt_compare(const char *what, const double *got, const double *ref, size_t n, double budget)
{
    double diff2 = 0, ref2 = 0, max_abs = 0;
    for (size_t i = 0; i < n; i++) {
        if (isfinite(ref[i]) && !isfinite(got[i])) {
            fprintf(stderr, "  %s: element %zu is %g where the reference is %g (unwritten or "
                    "overflowed)\n", what, i, got[i], ref[i]);
            return 0;
        }
        if (!isfinite(ref[i]))
            continue;
        double d = got[i] - ref[i];
        diff2 += d * d;
        ref2 += ref[i] * ref[i];
        if (fabs(d) > max_abs)
            max_abs = fabs(d);
    }
    double rel = sqrt(diff2) / fmax(sqrt(ref2), 1e-30);
    if (rel > budget) {
        fprintf(stderr, "  %s: relative L2 error %.3g exceeds %.3g (max abs error %.3g, n %zu)\n",
                what, rel, budget, max_abs, n);
        return 0;
    }
    return 1;
}
