/* A synthetic model for the vram tests: units of two tensors (a bf16 matrix and an f32 bias,
 * sizes varying per unit), stored in host memory like a mapped file, and the checksum of each
 * unit's tensors as they must look in the fast tier. */
#ifndef DS_TESTS_VRAM_FIXTURE_H
#define DS_TESTS_VRAM_FIXTURE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "vram/vram_manager.h"

#define FX_MAX_UNITS 16

/* Upstream's low-VRAM fp8 vram_config on the CPU: fp8 at rest and in the fast tier, the
 * computation in the pipeline's dtype. */
#define FX_FP8_VRAM_CONFIG                                                                    \
    "{\"offload_dtype\": \"float8_e4m3fn\", \"offload_device\": \"cpu\", "                   \
    "\"onload_dtype\": \"float8_e4m3fn\", \"onload_device\": \"cpu\", "                      \
    "\"preparing_dtype\": \"float8_e4m3fn\", \"preparing_device\": \"cpu\"}"

typedef struct fx_model {
    size_t n;
    ds_dtype compute;
    void *weight[FX_MAX_UNITS]; /* bf16 [rows, 64] */
    float *bias[FX_MAX_UNITS];  /* f32 [64] */
    int64_t rows[FX_MAX_UNITS];
    uint64_t expect[FX_MAX_UNITS]; /* checksum of the converted tensors */
    size_t index[FX_MAX_UNITS];
    size_t unit_bytes[FX_MAX_UNITS];
} fx_model;

static inline uint64_t fx_hash(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 1099511628211ull;
    return h;
}

/* The checksum of a unit's tensors as handed out by acquire. */
static inline uint64_t fx_unit_sum(const ds_tensor *t, size_t count)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < count; i++) {
        size_t n = ds_dtype_size(t[i].dtype);
        for (int d = 0; d < t[i].ndim; d++)
            n *= (size_t)t[i].shape[d];
        h = fx_hash(h, t[i].data, n);
    }
    return h;
}

static inline size_t fx_bytes(size_t n, ds_dtype d) { return n * ds_dtype_size(d); }

/* Fills the model with deterministic values; `seed` varies them between models; `equal`: every
 * unit the same size (48 rows), else 48, 64, 80 rows in turn. */
static inline void fx_make(fx_model *fx, size_t n, ds_dtype compute, uint32_t seed, int equal)
{
    memset(fx, 0, sizeof *fx);
    fx->n = n;
    fx->compute = compute;
    uint32_t s = seed * 2654435761u + 1;
    for (size_t u = 0; u < n; u++) {
        fx->rows[u] = equal ? 48 : 48 + 16 * (int64_t)(u % 3);
        size_t count = (size_t)fx->rows[u] * 64;
        fx->weight[u] = malloc(count * 2);
        fx->bias[u] = malloc(64 * sizeof(float));
        uint16_t *w = fx->weight[u];
        for (size_t i = 0; i < count; i++) {
            s = s * 1664525u + 1013904223u;
            w[i] = ds_f32_to_bf16(((float)(s >> 8) / 16777216.0f - 0.5f) * 8.0f);
        }
        for (size_t i = 0; i < 64; i++) {
            s = s * 1664525u + 1013904223u;
            fx->bias[u][i] = (float)(s >> 8) / 16777216.0f * 3.0f + 1e-3f;
        }
        /* The expected fast-tier contents, converted independently of the manager. */
        float *f = malloc(count * sizeof(float));
        void *cw = malloc(fx_bytes(count, compute));
        void *cb = malloc(fx_bytes(64, compute));
        ds_convert_to_f32(w, DS_BF16, count, f);
        ds_convert_from_f32(f, count, compute, cw);
        ds_convert_from_f32(fx->bias[u], 64, compute, cb);
        uint64_t h = 14695981039346656037ull;
        h = fx_hash(h, cw, fx_bytes(count, compute));
        h = fx_hash(h, cb, fx_bytes(64, compute));
        fx->expect[u] = h;
        size_t wb = fx_bytes(count, compute);
        fx->unit_bytes[u] = (wb + 255) / 256 * 256 + fx_bytes(64, compute);
        free(f);
        free(cw);
        free(cb);
    }
}

static inline size_t fx_total(const fx_model *fx)
{
    size_t t = 0;
    for (size_t u = 0; u < fx->n; u++)
        t += fx->unit_bytes[u];
    return t;
}

static inline size_t fx_largest(const fx_model *fx)
{
    size_t t = 0;
    for (size_t u = 0; u < fx->n; u++)
        t = fx->unit_bytes[u] > t ? fx->unit_bytes[u] : t;
    return t;
}

/* Registers every unit ("blocks.<u>") and the plan 0..n-1. */
static inline int fx_register(fx_model *fx, ds_vram_model *model, ds_error *err)
{
    char name[32];
    for (size_t u = 0; u < fx->n; u++) {
        ds_vram_tensor_source t[2];
        memset(t, 0, sizeof t);
        t[0].name = "weight";
        t[0].dtype = DS_BF16;
        t[0].ndim = 2;
        t[0].shape[0] = fx->rows[u];
        t[0].shape[1] = 64;
        t[0].data = fx->weight[u];
        t[1].name = "bias";
        t[1].dtype = DS_F32;
        t[1].ndim = 1;
        t[1].shape[0] = 64;
        t[1].data = fx->bias[u];
        snprintf(name, sizeof name, "blocks.%zu", u);
        int rc = ds_vram_unit_add(model, name, t, 2, &fx->index[u], err);
        if (rc != DS_OK)
            return rc;
    }
    return ds_vram_plan(model, fx->index, fx->n, err);
}

static inline void fx_free(fx_model *fx)
{
    for (size_t u = 0; u < fx->n; u++) {
        free(fx->weight[u]);
        free(fx->bias[u]);
    }
}

#endif
