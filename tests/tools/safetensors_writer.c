#include "tools/safetensors_writer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/dtype.h"

/* --- a growable string for the header --------------------------------------------------- */

typedef struct strbuf {
    char *p;
    size_t len, cap;
    int oom;
} strbuf;

static void sb_add(strbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(strbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_u64(strbuf *b, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    sb_add(b, tmp, (size_t)n);
}

/* A JSON string literal, escaped as serde_json does (", \ and control characters). */
static void sb_json_string(strbuf *b, const char *s)
{
    sb_add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            sb_add(b, esc, 2);
        } else if (c < 0x20) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            sb_add(b, esc, 6);
        } else {
            sb_add(b, (const char *)&c, 1);
        }
    }
    sb_add(b, "\"", 1);
}

/* --- values ----------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* N(0, 0.02) by Box-Muller; u1 is never 0. */
static double next_normal(uint64_t *state)
{
    double u1 = ((double)(splitmix64(state) >> 11) + 1.0) * 0x1.0p-53;
    double u2 = (double)(splitmix64(state) >> 11) * 0x1.0p-53;
    return 0.02 * sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

uint32_t ds_st_encode_small_float(double x, int exponent_bits, int mantissa_bits,
                                  int finite_only)
{
    uint32_t sign = signbit(x) ? 1u << (exponent_bits + mantissa_bits) : 0;
    int bias = (1 << (exponent_bits - 1)) - 1;
    /* IEEE formats reserve the top exponent for inf/NaN; "fn" formats use it and reserve
     * only the all-ones mantissa there (NaN). */
    int emax = finite_only ? (1 << exponent_bits) - 1 - bias : (1 << exponent_bits) - 2 - bias;
    double top_mantissa = finite_only ? (double)((1 << mantissa_bits) - 2)
                                      : (double)((1 << mantissa_bits) - 1);
    double max = ldexp(1.0 + top_mantissa / (double)(1 << mantissa_bits), emax);
    double a = fabs(x);
    if (isnan(a))
        return sign | ((1u << (exponent_bits + mantissa_bits)) - 1);
    if (a > max)
        a = max;
    if (a == 0.0)
        return sign;
    int e;
    frexp(a, &e);
    int exp = e - 1;
    if (exp < 1 - bias)
        exp = 1 - bias;
    double q = nearbyint(ldexp(a, mantissa_bits - exp));
    if (q >= (double)(2u << mantissa_bits)) {
        q /= 2;
        exp++;
    }
    if (q < (double)(1u << mantissa_bits))
        return sign | (uint32_t)q; /* subnormal (or rounded up to the smallest normal: same bits) */
    return sign | (uint32_t)(exp + bias) << mantissa_bits | ((uint32_t)q - (1u << mantissa_bits));
}

/* Stores one value in `dtype` at p (little-endian). */
static void store(ds_dtype dtype, double v, unsigned char *p)
{
    uint32_t bits;
    switch (dtype) {
    case DS_F64:
        memcpy(p, &v, 8);
        return;
    case DS_F32: {
        float f = (float)v;
        memcpy(p, &f, 4);
        return;
    }
    case DS_BF16:
        bits = ds_st_encode_small_float(v, 8, 7, 0);
        break;
    case DS_F16:
        bits = ds_st_encode_small_float(v, 5, 10, 0);
        break;
    case DS_F8_E4M3:
        p[0] = (unsigned char)ds_st_encode_small_float(v, 4, 3, 1);
        return;
    case DS_F8_E5M2:
        p[0] = (unsigned char)ds_st_encode_small_float(v, 5, 2, 0);
        return;
    default:
        return;
    }
    p[0] = (unsigned char)bits;
    p[1] = (unsigned char)(bits >> 8);
}

static int is_float(ds_dtype dtype)
{
    return dtype == DS_F32 || dtype == DS_F16 || dtype == DS_BF16 || dtype == DS_F64 ||
           dtype == DS_F8_E4M3 || dtype == DS_F8_E5M2;
}

static int write_random(FILE *f, const ds_sd_entry *e, uint64_t seed)
{
    unsigned char buf[1 << 16];
    size_t esize = ds_dtype_size(e->tensor.dtype);
    size_t per = sizeof buf / esize;
    uint64_t state = seed ^ fnv1a(e->name);
    uint64_t left = ds_tensor_view_numel(&e->tensor);
    while (left) {
        size_t n = left < per ? (size_t)left : per;
        /* Every dtype rounds the same f32 sample, so files of different dtypes agree with
         * a plain f32 -> dtype cast (torch's .to) of the f32 file. */
        for (size_t i = 0; i < n; i++)
            store(e->tensor.dtype, (double)(float)next_normal(&state), buf + i * esize);
        if (fwrite(buf, esize, n, f) != n)
            return -1;
        left -= n;
    }
    return 0;
}

/* --- files ------------------------------------------------------------------------------ */

int ds_st_write(const char *path, const ds_state_dict *tensors, size_t begin, size_t end,
                ds_st_fill fill, uint64_t seed, ds_error *err)
{
    if (begin > end || end > tensors->count)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: tensor range %zu..%zu of %zu",
                            path, begin, end, tensors->count);
    if (fill != DS_ST_FILL_SPARSE && fill != DS_ST_FILL_RANDOM)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: unknown fill %d", path, fill);

    strbuf h = {0};
    uint64_t offset = 0;
    int rc = DS_OK;
    FILE *f = NULL;
    sb_str(&h, "{");
    for (size_t i = begin; i < end; i++) {
        const ds_sd_entry *e = &tensors->entries[i];
        if (e->dict) {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "%s: %s is a nested dict; safetensors holds only tensors", path,
                              e->name);
            goto done;
        }
        const char *dtype = ds_dtype_safetensors_name(e->tensor.dtype);
        if (!dtype || ds_dtype_size(e->tensor.dtype) == 0) {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: %s: no safetensors dtype", path,
                              e->name);
            goto done;
        }
        if (fill == DS_ST_FILL_RANDOM && !is_float(e->tensor.dtype)) {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                              "%s: %s: random fill needs a floating-point dtype, not %s", path,
                              e->name, ds_dtype_name(e->tensor.dtype));
            goto done;
        }
        uint64_t nbytes = ds_tensor_view_numel(&e->tensor) * ds_dtype_size(e->tensor.dtype);
        uint64_t next;
        if (__builtin_add_overflow(offset, nbytes, &next)) {
            rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: data size overflows", path);
            goto done;
        }
        if (i > begin)
            sb_str(&h, ",");
        sb_json_string(&h, e->name);
        sb_str(&h, ":{\"dtype\":\"");
        sb_str(&h, dtype);
        sb_str(&h, "\",\"shape\":[");
        for (int d = 0; d < e->tensor.ndim; d++) {
            if (d)
                sb_str(&h, ",");
            sb_u64(&h, (uint64_t)e->tensor.shape[d]);
        }
        sb_str(&h, "],\"data_offsets\":[");
        sb_u64(&h, offset);
        sb_str(&h, ",");
        sb_u64(&h, next);
        sb_str(&h, "]}");
        offset = next;
    }
    sb_str(&h, "}");
    while (!h.oom && h.len % 8 != 0)
        sb_str(&h, " ");
    if (h.oom) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", path);
        goto done;
    }

    f = fopen(path, "wb");
    if (!f) {
        rc = ds_error_set(err, errno == EACCES ? DS_ERR_PERMISSION_DENIED : DS_ERR_NOT_FOUND,
                          "%s: %s", path, strerror(errno));
        goto done;
    }
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    if (fwrite(len, 1, 8, f) != 8 || fwrite(h.p, 1, h.len, f) != h.len)
        goto io_error;
    if (fill == DS_ST_FILL_SPARSE) {
        if (fflush(f) != 0 || ftruncate(fileno(f), (off_t)(8 + h.len + offset)) != 0)
            goto io_error;
    } else {
        for (size_t i = begin; i < end; i++)
            if (write_random(f, &tensors->entries[i], seed) != 0)
                goto io_error;
    }
    FILE *closing = f;
    f = NULL;
    if (fclose(closing) != 0)
        goto io_error;
    goto done;

io_error:
    rc = ds_error_set(err, DS_ERR_UNAVAILABLE, "%s: write failed: %s", path, strerror(errno));
done:
    if (f)
        fclose(f);
    free(h.p);
    return rc;
}

void ds_st_paths_free(char **paths, size_t count)
{
    if (!paths)
        return;
    for (size_t i = 0; i < count; i++)
        free(paths[i]);
    free(paths);
}

int ds_st_write_model(const char *out, const ds_state_dict *tensors, int shards, ds_st_fill fill,
                      uint64_t seed, char ***paths, size_t *count, ds_error *err)
{
    *paths = NULL;
    *count = 0;
    if (shards < 1 || shards > 99999 || (size_t)shards > (tensors->count ? tensors->count : 1))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "shards must be between 1 and the tensor count (%zu), got %d",
                            tensors->count, shards);
    static const char ext[] = ".safetensors";
    size_t len = strlen(out), ext_len = sizeof ext - 1;
    int has_ext = len >= ext_len && strcmp(out + len - ext_len, ext) == 0;
    char **list = calloc((size_t)shards, sizeof *list);
    if (!list)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    int rc = DS_OK;
    for (int s = 0; s < shards; s++) {
        int n;
        if (shards == 1)
            n = asprintf(&list[s], "%s%s", out, has_ext ? "" : ext);
        else
            n = asprintf(&list[s], "%.*s-%05d-of-%05d%s", (int)(has_ext ? len - ext_len : len),
                         out, s + 1, shards, ext);
        if (n < 0) {
            list[s] = NULL;
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
            goto fail;
        }
        size_t begin = tensors->count * (size_t)s / (size_t)shards;
        size_t end = tensors->count * (size_t)(s + 1) / (size_t)shards;
        if ((rc = ds_st_write(list[s], tensors, begin, end, fill, seed, err)) != DS_OK)
            goto fail;
    }
    *paths = list;
    *count = (size_t)shards;
    return DS_OK;
fail:
    /* No partial model is left behind: a missing shard would identify as another model. */
    for (int s = 0; s < shards && list[s]; s++)
        unlink(list[s]);
    ds_st_paths_free(list, (size_t)shards);
    return rc;
}
