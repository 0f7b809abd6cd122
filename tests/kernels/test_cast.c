/* Casts against PyTorch's own `.to(dtype)` bit patterns (tests/data/cast_golden.bin, written by
 * tests/golden/make_cast_golden.py): the backend's cast op, and core/float_convert.h's scalar
 * functions, bit for bit.
 *
 * NaN: where torch's result is a NaN, ours must be a NaN, of any sign and payload. Torch's own
 * NaN bits depend on the code path it takes (vectorised or scalar, i.e. on the tensor's size):
 * the file holds f32 +NaN -> bf16 0xFFFF (negative) and f16 -NaN -> f32 0x7FFFFFFF (positive),
 * while a one-element tensor gives other bits. Such differences are counted and printed. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernel_test.h"
#include "test.h"

typedef struct record {
    char name[33];
    ds_dtype src, dst;
    uint32_t count;
    const unsigned char *src_bits;
    const unsigned char *dst_bits;
} record;

static unsigned char *file_data;
static size_t file_size;
static record records[64];
static int nrecords;

static int load_golden(void)
{
    const char *dir = getenv("DS_TEST_DATA");
    char path[4096];
    snprintf(path, sizeof path, "%s/cast_golden.bin", dir ? dir : "tests/data");
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        return 0;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (size < 8) {
        fclose(f);
        return 0;
    }
    file_size = (size_t)size;
    file_data = malloc(file_size);
    size_t got = file_data ? fread(file_data, 1, file_size, f) : 0;
    fclose(f);
    if (got != file_size || memcmp(file_data, "DSCAST1\0", 8) != 0) {
        fprintf(stderr, "%s: not a cast golden file\n", path);
        return 0;
    }
    size_t off = 8;
    while (off < file_size) {
        if (nrecords == (int)(sizeof records / sizeof records[0]) || file_size - off < 40)
            return 0;
        record *r = &records[nrecords];
        memcpy(r->name, file_data + off, 32);
        r->name[32] = 0;
        r->src = (ds_dtype)file_data[off + 32];
        r->dst = (ds_dtype)file_data[off + 33];
        memcpy(&r->count, file_data + off + 36, 4);
        size_t ss = ds_dtype_size(r->src), ds = ds_dtype_size(r->dst);
        off += 40;
        if (!ss || !ds || (file_size - off) / (ss + ds) < r->count)
            return 0;
        /* Records sit at arbitrary offsets: copy each into malloc'd (aligned) memory. */
        size_t bytes = (size_t)r->count * (ss + ds);
        unsigned char *copy = malloc(bytes ? bytes : 1);
        if (!copy)
            return 0;
        memcpy(copy, file_data + off, bytes);
        r->src_bits = copy;
        r->dst_bits = copy + (size_t)r->count * ss;
        off += bytes;
        nrecords++;
    }
    return nrecords > 0;
}

static uint64_t get_bits(const unsigned char *p, ds_dtype d, size_t i)
{
    uint64_t v = 0;
    size_t s = ds_dtype_size(d);
    memcpy(&v, p + i * s, s); /* little-endian host */
    return v;
}

static int bits_nan(uint64_t b, ds_dtype d)
{
    switch (d) {
    case DS_F64: return (b & 0x7FFFFFFFFFFFFFFFull) > 0x7FF0000000000000ull;
    case DS_F32: return (b & 0x7FFFFFFFu) > 0x7F800000u;
    case DS_F16: return (b & 0x7FFFu) > 0x7C00u;
    case DS_BF16: return (b & 0x7FFFu) > 0x7F80u;
    case DS_F8_E4M3: return (b & 0x7Fu) == 0x7Fu;
    case DS_F8_E5M2: return (b & 0x7Fu) > 0x7Cu;
    default: return 0;
    }
}

/* Compares n results (ours) with torch's; prints the first few mismatches. Returns mismatches. */
static size_t compare_bits(const char *what, const record *r, const unsigned char *ours,
                           const unsigned char *mask)
{
    size_t bad = 0, payload = 0, checked = 0;
    for (size_t i = 0; i < r->count; i++) {
        if (mask && !mask[i])
            continue;
        checked++;
        uint64_t want = get_bits(r->dst_bits, r->dst, i), got = get_bits(ours, r->dst, i);
        if (want == got)
            continue;
        if (bits_nan(want, r->dst) && bits_nan(got, r->dst)) {
            payload++;
            continue;
        }
        if (bad++ < 5)
            fprintf(stderr, "  %s: %s element %zu (input bits 0x%" PRIx64 "): got 0x%" PRIx64
                    ", torch 0x%" PRIx64 "\n", what, r->name, i, get_bits(r->src_bits, r->src, i),
                    got, want);
    }
    if (payload)
        fprintf(stderr, "  note: %s: %s: %zu NaN results differ from torch's NaN bits\n",
                what, r->name, payload);
    if (bad)
        fprintf(stderr, "  %s: %s: %zu of %zu differ\n", what, r->name, bad, checked);
    return bad;
}

static void test_golden_file(void)
{
    CHECK(load_golden());
    /* Every pair the file holds: f32 -> narrow (4), f64 -> f32/narrow (5), 16-bit -> 5 others
     * each (10), fp8 -> 5 others each (10). */
    CHECK(nrecords == 29);
}

/* The backend's cast op on every record. */
static void test_backend_cast(void)
{
    REQUIRE(nrecords > 0);
    for (int k = 0; k < nrecords; k++) {
        const record *r = &records[k];
        int64_t shape[1] = {r->count};
        ds_tensor x, y;
        ds_error err;
        REQUIRE(ds_tensor_alloc(kt.backend, r->src, 1, shape, &x, &err) == DS_OK);
        REQUIRE(ds_tensor_upload(&x, r->src_bits, NULL, &err) == DS_OK);
        REQUIRE(kt_tensor(r->dst, 1, shape, NULL, &y));
        ds_cast_args a = {&x, &y};
        int rc = ds_cast(kt.backend, NULL, &a, &err);
        CHECK_MSG(rc == DS_OK, "%s", err.message);
        unsigned char *ours = malloc(ds_tensor_nbytes(&y));
        REQUIRE(ours && ds_tensor_download(&y, ours, NULL, &err) == DS_OK);
        CHECK(compare_bits("cast op", r, ours, NULL) == 0);
        free(ours);
        ds_tensor_free(&x);
        ds_tensor_free(&y);
    }
}

/* One element through the scalar functions of core/float_convert.h. */
static void scalar_convert(ds_dtype src, ds_dtype dst, const unsigned char *in, size_t i, void *out)
{
    if (src == DS_F64) {
        ds_store_f64(out, dst, 0, ((const double *)in)[i]);
        return;
    }
    float v = 0;
    switch (src) {
    case DS_F32: v = ((const float *)in)[i]; break;
    case DS_BF16: v = ds_bf16_to_f32(((const uint16_t *)in)[i]); break;
    case DS_F16: v = ds_f16_to_f32(((const uint16_t *)in)[i]); break;
    case DS_F8_E4M3: v = ds_f8e4m3_to_f32(in[i]); break;
    case DS_F8_E5M2: v = ds_f8e5m2_to_f32(in[i]); break;
    default: break;
    }
    switch (dst) {
    case DS_F64: *(double *)out = ds_load_f64(in, src, i); break;
    case DS_F32: *(float *)out = v; break;
    case DS_BF16: *(uint16_t *)out = ds_f32_to_bf16(v); break;
    case DS_F16: *(uint16_t *)out = ds_f32_to_f16(v); break;
    case DS_F8_E4M3: *(uint8_t *)out = ds_f32_to_f8e4m3(v); break;
    case DS_F8_E5M2: *(uint8_t *)out = ds_f32_to_f8e5m2(v); break;
    default: break;
    }
}

/* The scalar functions on every record. ds_store_f64 rounds an f64 once, straight to the
 * target (it rounds test inputs); torch rounds f64 -> narrow through f32. The two agree
 * wherever the f64 is exactly an f32, so those are the f64 elements compared here. */
static void test_scalar_functions(void)
{
    REQUIRE(nrecords > 0);
    for (int k = 0; k < nrecords; k++) {
        const record *r = &records[k];
        size_t ds = ds_dtype_size(r->dst);
        unsigned char *ours = calloc(r->count, ds);
        unsigned char *mask = malloc(r->count);
        REQUIRE(ours && mask);
        size_t compared = 0;
        for (size_t i = 0; i < r->count; i++) {
            mask[i] = 1;
            if (r->src == DS_F64 && r->dst != DS_F32) {
                double v = ((const double *)r->src_bits)[i];
                mask[i] = isnan(v) || (double)(float)v == v;
            }
            compared += mask[i];
            scalar_convert(r->src, r->dst, r->src_bits, i, ours + i * ds);
        }
        CHECK(compared > 100);
        CHECK(compare_bits("scalar", r, ours, mask) == 0);
        free(ours);
        free(mask);
    }
}

/* The bulk dtype-to-dtype conversion (ds_convert, used by the VRAM manager's copies), its
 * table path for e4m3 -> bf16 included, on every record whose source is not f64 (f64 goes
 * through f32 in ds_convert too, so those records' one-rounding elements do not apply). */
static void test_bulk_convert(void)
{
    REQUIRE(nrecords > 0);
    int e4m3_bf16 = 0;
    for (int k = 0; k < nrecords; k++) {
        const record *r = &records[k];
        if (r->src == DS_F64)
            continue;
        e4m3_bf16 += r->src == DS_F8_E4M3 && r->dst == DS_BF16;
        unsigned char *ours = calloc(r->count ? r->count : 1, ds_dtype_size(r->dst));
        REQUIRE(ours);
        ds_convert(r->src_bits, r->src, r->count, r->dst, ours);
        CHECK(compare_bits("bulk", r, ours, NULL) == 0);
        free(ours);
    }
    CHECK(e4m3_bf16 > 0);
}

/* The file holds f64 values whose rounding through f32 differs from rounding once: torch's
 * answers must be the through-f32 ones (what our cast op implements), or the file was made by
 * a torch that changed. */
static void test_f64_rounds_through_f32(void)
{
    REQUIRE(nrecords > 0);
    size_t differ = 0;
    for (int k = 0; k < nrecords; k++) {
        const record *r = &records[k];
        if (r->src != DS_F64 || r->dst == DS_F32)
            continue;
        for (size_t i = 0; i < r->count; i++) {
            double v = ((const double *)r->src_bits)[i];
            uint64_t once = 0;
            ds_store_f64(&once, r->dst, 0, v);
            uint64_t want = get_bits(r->dst_bits, r->dst, i);
            if (!isnan(v) && once != want) {
                differ++;
                float f = (float)v;
                uint64_t twice = 0;
                ds_convert_from_f32(&f, 1, r->dst, &twice);
                CHECK_MSG(twice == want, "%s element %zu", r->name, i);
            }
        }
    }
    fprintf(stderr, "  %zu f64 values where torch's through-f32 rounding differs from rounding once\n",
            differ);
    CHECK(differ > 0);
}

int main(int argc, char **argv)
{
    kt_init(argc, argv);
    RUN(test_golden_file);
    RUN(test_backend_cast);
    RUN(test_scalar_functions);
    RUN(test_f64_rounds_through_f32);
    RUN(test_bulk_convert);
    kt_finish();
    for (int k = 0; k < nrecords; k++)
        free((void *)records[k].src_bits);
    free(file_data);
    return test_summary();
}
