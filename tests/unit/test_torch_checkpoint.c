/* PyTorch checkpoints: every fixture written by real torch.save (tests/golden/
 * make_torch_fixtures.py) is read and compared, value by value through the views' strides,
 * with what torch.load(weights_only=True) returned (tests/data/torch/expected.json); every
 * rejection is checked for its message; zip and pickle corruption is made here by patching. */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/torch_checkpoint.h"
#include "test.h"

static char fixture_dir[2048];

static const char *fixture(const char *name)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", fixture_dir, name);
    return buf;
}

static uint8_t *read_fixture(const char *name, size_t *size)
{
    FILE *f = fopen(fixture(name), "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    uint8_t *data = malloc((size_t)len);
    if (data && fread(data, 1, (size_t)len, f) != (size_t)len) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *size = (size_t)len;
    return data;
}

/* ---- element decoding, independent of the reader ---- */

static double half_to_double(uint16_t h)
{
    int sign = h >> 15, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    double v;
    if (exp == 0)
        v = ldexp(mant, -24);
    else if (exp == 31)
        v = mant ? NAN : INFINITY;
    else
        v = ldexp(mant + 1024, exp - 25);
    return sign ? -v : v;
}

static double e4m3_to_double(uint8_t b)
{
    int sign = b >> 7, exp = (b >> 3) & 0xF, mant = b & 7;
    double v;
    if (exp == 15 && mant == 7)
        v = NAN;
    else if (exp == 0)
        v = ldexp(mant, -9);
    else
        v = ldexp(mant + 8, exp - 10);
    return sign ? -v : v;
}

static double element(const ds_tensor_view *t, uint64_t index)
{
    /* Row-major logical index -> element offset through the strides. */
    int64_t offset = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        offset += (int64_t)(index % (uint64_t)t->shape[d]) * t->stride[d];
        index /= (uint64_t)t->shape[d];
    }
    const uint8_t *p = (const uint8_t *)t->data + offset * (int64_t)ds_dtype_size(t->dtype);
    float f;
    double d;
    uint32_t u32;
    uint16_t u16;
    int64_t i64;
    int32_t i32;
    int16_t i16;
    switch (t->dtype) {
    case DS_F32: memcpy(&f, p, 4); return f;
    case DS_F64: memcpy(&d, p, 8); return d;
    case DS_F16: memcpy(&u16, p, 2); return half_to_double(u16);
    case DS_BF16:
        memcpy(&u16, p, 2);
        u32 = (uint32_t)u16 << 16;
        memcpy(&f, &u32, 4);
        return f;
    case DS_F8_E4M3: return e4m3_to_double(p[0]);
    case DS_F8_E5M2: return half_to_double((uint16_t)(p[0] << 8));
    case DS_I64: memcpy(&i64, p, 8); return (double)i64;
    case DS_I32: memcpy(&i32, p, 4); return i32;
    case DS_I16: memcpy(&i16, p, 2); return i16;
    case DS_I8: return (int8_t)p[0];
    case DS_U8:
    case DS_BOOL: return p[0];
    default: return NAN;
    }
}

/* ---- comparison with expected.json ---- */

static void compare_dict(const char *file, const ds_state_dict *sd, json_t *entries,
                         const ds_torch_checkpoint *ck, int file_index)
{
    size_t want = 0;
    for (size_t i = 0; i < json_array_size(entries); i++)
        if (json_is_string(json_object_get(json_array_get(entries, i), "name")))
            want++;
    CHECK_MSG(sd->count == want, "%s: %zu entries, torch has %zu str keys", file, sd->count,
              want);
    size_t pos = 0;
    for (size_t i = 0; i < json_array_size(entries); i++) {
        json_t *e = json_array_get(entries, i);
        json_t *name = json_object_get(e, "name");
        if (!json_is_string(name))
            continue; /* upstream's hash skips non-str keys */
        if (pos >= sd->count)
            break;
        const ds_sd_entry *got = &sd->entries[pos++];
        CHECK_STR_EQ(got->name, json_string_value(name));
        json_t *sub = json_object_get(e, "dict");
        if (sub) {
            CHECK_MSG(got->dict != NULL, "%s: %s should be a nested dict", file, got->name);
            if (got->dict)
                compare_dict(file, got->dict, sub, ck, file_index);
            continue;
        }
        const ds_tensor_view *t = &got->tensor;
        CHECK_MSG(got->dict == NULL, "%s: %s should be a tensor", file, got->name);
        CHECK_STR_EQ(ds_dtype_name(t->dtype), json_string_value(json_object_get(e, "dtype")));
        json_t *shape = json_object_get(e, "shape");
        CHECK_MSG(t->ndim == (int)json_array_size(shape), "%s: %s ndim %d", file, got->name,
                  t->ndim);
        for (int d = 0; d < t->ndim && d < (int)json_array_size(shape); d++)
            CHECK_MSG(t->shape[d] == json_integer_value(json_array_get(shape, (size_t)d)),
                      "%s: %s dim %d is %lld", file, got->name, d, (long long)t->shape[d]);
        CHECK(t->file_index == file_index);
        CHECK(t->nbytes == ds_tensor_view_numel(t) * ds_dtype_size(t->dtype));
        CHECK((const uint8_t *)t->data >= ck->map &&
              (const uint8_t *)t->data <= ck->map + ck->file_size);
        json_t *values = json_object_get(e, "values");
        for (size_t v = 0; v < json_array_size(values); v++) {
            double want_v = json_number_value(json_array_get(values, v));
            double got_v = element(t, v);
            CHECK_MSG(got_v == want_v || (isnan(got_v) && isnan(want_v)),
                      "%s: %s[%zu] = %.17g, torch wrote %.17g", file, got->name, v, got_v,
                      want_v);
        }
    }
}

static void test_fixtures_match_torch(void)
{
    json_error_t jerr;
    json_t *expected = json_load_file(fixture("expected.json"), 0, &jerr);
    REQUIRE(expected != NULL);
    const char *file;
    json_t *entries;
    int files = 0;
    json_object_foreach(expected, file, entries) {
        ds_torch_checkpoint *ck = NULL;
        ds_error err = {0};
        int rc = ds_torch_checkpoint_open(fixture(file), 3, &ck, &err);
        CHECK_MSG(rc == DS_OK, "%s: %s", file, err.message);
        if (rc != DS_OK)
            continue;
        CHECK_STR_EQ(ck->path, fixture(file));
        compare_dict(file, &ck->tensors, entries, ck, 3);
        ds_torch_checkpoint_close(ck);
        files++;
    }
    CHECK(files == 13);
    json_decref(expected);
}

static ds_torch_checkpoint *open_ok(const char *name)
{
    ds_torch_checkpoint *ck = NULL;
    ds_error err = {0};
    if (ds_torch_checkpoint_open(fixture(name), 0, &ck, &err) != DS_OK)
        fprintf(stderr, "%s: %s\n", name, err.message);
    return ck;
}

static const ds_tensor_view *tensor(const ds_state_dict *sd, const char *name)
{
    const ds_sd_entry *e = ds_state_dict_find(sd, name);
    return e && !e->dict ? &e->tensor : NULL;
}

static void test_views(void)
{
    ds_torch_checkpoint *ck = open_ok("flat.pth");
    REQUIRE(ck);
    const ds_tensor_view *tr = tensor(&ck->tensors, "transposed");
    const ds_tensor_view *a = tensor(&ck->tensors, "shared_a");
    const ds_tensor_view *b = tensor(&ck->tensors, "shared_b");
    const ds_tensor_view *s = tensor(&ck->tensors, "scalar");
    const ds_tensor_view *e = tensor(&ck->tensors, "empty");
    REQUIRE(tr && a && b && s && e);
    /* m.t() of a contiguous [3, 4]: shape [4, 3], strides [1, 4]. */
    CHECK(tr->ndim == 2 && tr->shape[0] == 4 && tr->shape[1] == 3);
    CHECK(tr->stride[0] == 1 && tr->stride[1] == 4);
    CHECK(!ds_tensor_view_is_contiguous(tr));
    /* base[2:8] and base[5:] of one 12-element f32 storage: offsets 2 and 5. */
    CHECK((const uint8_t *)b->data - (const uint8_t *)a->data == 3 * 4);
    CHECK(element(a, 0) == 1.0 && element(b, 0) == 2.5);
    CHECK(s->ndim == 0 && s->nbytes == 4 && element(s, 0) == 2.5);
    CHECK(e->ndim == 2 && e->shape[0] == 0 && e->nbytes == 0);
    /* torch.save aligns storages to 64 bytes in the file. */
    CHECK(((const uint8_t *)a->data - ck->map - 2 * 4) % 64 == 0);
    ds_torch_checkpoint_close(ck);
}

static void test_unwrap_rule(void)
{
    static const char *const wrapped[] = {"wrap_state_dict.pth", "wrap_module.pth",
                                          "wrap_model_state.pth"};
    for (size_t i = 0; i < 3; i++) {
        ds_torch_checkpoint *ck = open_ok(wrapped[i]);
        REQUIRE(ck);
        CHECK(ck->tensors.count == 2);
        CHECK(tensor(&ck->tensors, "a.weight") != NULL);
        CHECK(tensor(&ck->tensors, "a.bias") != NULL);
        ds_torch_checkpoint_close(ck);
    }
    ds_torch_checkpoint *ck = open_ok("two_keys.pth");
    REQUIRE(ck);
    CHECK(ck->tensors.count == 2);
    const ds_sd_entry *sd = ds_state_dict_find(&ck->tensors, "state_dict");
    const ds_sd_entry *mod = ds_state_dict_find(&ck->tensors, "module");
    CHECK(sd && sd->dict && sd->dict->count == 2);
    CHECK(mod && mod->dict && mod->dict->count == 1);
    ds_torch_checkpoint_close(ck);
}

static void test_nested_and_keys(void)
{
    ds_torch_checkpoint *ck = open_ok("nested.pth");
    REQUIRE(ck);
    const ds_sd_entry *x = ds_state_dict_find(&ck->tensors, "x");
    REQUIRE(x && x->dict);
    const ds_tensor_view *zw = tensor(x->dict, "z.w");
    CHECK(zw && zw->ndim == 2 && zw->shape[0] == 3 && zw->shape[1] == 1);
    const ds_tensor_view *y = tensor(&ck->tensors, "y");
    CHECK(y && y->ndim == 1 && y->shape[0] == 7);
    ds_torch_checkpoint_close(ck);

    ck = open_ok("int_key.pth");
    REQUIRE(ck);
    CHECK(ck->tensors.count == 1 && tensor(&ck->tensors, "a"));
    ds_torch_checkpoint_close(ck);

    /* Parameters and an nn.Module state_dict (OrderedDict with _metadata state). */
    ck = open_ok("parameters.pth");
    REQUIRE(ck);
    CHECK(ck->tensors.count == 2 && tensor(&ck->tensors, "weight"));
    ds_torch_checkpoint_close(ck);
    ck = open_ok("module_state_dict.pth");
    REQUIRE(ck);
    CHECK(ck->tensors.count == 4 && tensor(&ck->tensors, "1.bias"));
    ds_torch_checkpoint_close(ck);
}

/* Opens a fixture that must fail with `code` and a message containing `needle`. */
static void check_rejected(const char *name, int code, const char *needle)
{
    ds_torch_checkpoint *ck = NULL;
    ds_error err = {0};
    int rc = ds_torch_checkpoint_open(fixture(name), 0, &ck, &err);
    CHECK_MSG(rc == code, "%s: got %s (%s)", name, ds_status_name(rc), err.message);
    CHECK(ck == NULL);
    CHECK_CONTAINS(err.message, needle);
    CHECK_CONTAINS(err.message, name);
}

static void test_rejections(void)
{
    check_rejected("int_value.pth", DS_ERR_INVALID_ARGUMENT,
                   "key path [\"step\"]: value of type int is not a tensor or a dict; upstream's "
                   "hash_model_file cannot handle it either (it raises AttributeError)");
    check_rejected("list_in_nested.pth", DS_ERR_INVALID_ARGUMENT,
                   "key path [\"a\"][\"b\"]: value of type list");
    check_rejected("wrapped_tensor.pth", DS_ERR_INVALID_ARGUMENT,
                   "\"state_dict\" holds a torch.Tensor, not a dict");
    check_rejected("top_list.pth", DS_ERR_INVALID_ARGUMENT,
                   "the checkpoint holds a list, not a dict of tensors");
    check_rejected("legacy.pth", DS_ERR_INVALID_ARGUMENT,
                   "legacy torch.save format");
    check_rejected("legacy.pth", DS_ERR_INVALID_ARGUMENT,
                   "re-save with torch>=1.6 or convert to safetensors");
    check_rejected("numpy_value.pth", DS_ERR_INVALID_ARGUMENT,
                   "numpy_value/data.pkl: forbidden global \"numpy._core.multiarray._reconstruct\" "
                   "at byte 13: only tensor-rebuild globals are allowed");
    check_rejected("malicious_stack_global.pth", DS_ERR_INVALID_ARGUMENT,
                   "evil/data.pkl: forbidden global \"builtins.eval\" at byte 20");
    check_rejected("out_of_bounds.pth", DS_ERR_INVALID_ARGUMENT,
                   "REDUCE at byte");
    check_rejected("out_of_bounds.pth", DS_ERR_INVALID_ARGUMENT,
                   "tensor reaches element 99 of a storage of 16 bytes");
    check_rejected("big_endian.pth", DS_ERR_INVALID_ARGUMENT,
                   "small/byteorder is \"big\": only little-endian checkpoints are supported");
    check_rejected("deflated_storage.pth", DS_ERR_INVALID_ARGUMENT,
                   "storage entry \"small/data/0\" is compressed (method 8)");
    check_rejected("deflated_pickle.pth", DS_ERR_INVALID_ARGUMENT,
                   "zip entry \"small/data.pkl\" is compressed (method 8)");
    check_rejected("missing_storage.pth", DS_ERR_INVALID_ARGUMENT,
                   "storage \"0\" has no zip entry \"small/data/0\"");
    check_rejected("short_storage.pth", DS_ERR_INVALID_ARGUMENT,
                   "storage \"0\" holds 4 f32 elements (16 bytes) but its entry has 8 bytes");

    /* The exact message for the classic attack. */
    ds_torch_checkpoint *ck = NULL;
    ds_error err = {0};
    char want[8192];
    snprintf(want, sizeof want,
             "%s: malicious/data.pkl: forbidden global \"os.system\" at byte 2: only "
             "tensor-rebuild globals are allowed",
             fixture("malicious.pth"));
    CHECK(ds_torch_checkpoint_open(fixture("malicious.pth"), 0, &ck, &err) ==
          DS_ERR_INVALID_ARGUMENT);
    CHECK_STR_EQ(err.message, want);

    CHECK(ds_torch_checkpoint_open(fixture("no_such_file.pth"), 0, &ck, &err) ==
          DS_ERR_NOT_FOUND);
    CHECK(ck == NULL);
    CHECK(ds_torch_checkpoint_open(fixture_dir, 0, &ck, &err) == DS_ERR_INVALID_ARGUMENT);
}

/* ---- zip corruption, made by patching small.pth ---- */

static size_t find_last(const uint8_t *data, size_t size, const char *sig)
{
    for (size_t i = size - 4 + 1; i-- > 0;)
        if (memcmp(data + i, sig, 4) == 0)
            return i;
    return SIZE_MAX;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void check_parse_fails(const uint8_t *data, size_t size, const char *needle)
{
    ds_torch_checkpoint *ck = NULL;
    ds_error err = {0};
    int rc = ds_torch_checkpoint_parse("patched.pth", data, size, 0, &ck, &err);
    CHECK_MSG(rc == DS_ERR_INVALID_ARGUMENT, "got %s (%s)", ds_status_name(rc), err.message);
    CHECK(ck == NULL);
    CHECK_CONTAINS(err.message, needle);
}

static void test_zip_corruption(void)
{
    size_t size;
    uint8_t *orig = read_fixture("small.pth", &size);
    REQUIRE(orig);
    uint8_t *data = malloc(size);
    REQUIRE(data);

    ds_torch_checkpoint *ck = NULL;
    ds_error err = {0};
    CHECK(ds_torch_checkpoint_parse("small.pth", orig, size, 1, &ck, &err) == DS_OK);
    CHECK(ck && ck->map == orig && ck->file_size == size);
    ds_torch_checkpoint_close(ck);

    size_t eocd = find_last(orig, size, "PK\x05\x06");
    size_t z64 = find_last(orig, size, "PK\x06\x06");
    size_t locator = find_last(orig, size, "PK\x06\x07");
    REQUIRE(eocd != SIZE_MAX && z64 != SIZE_MAX && locator != SIZE_MAX);

    memcpy(data, orig, size);
    data[eocd] = 'X';
    check_parse_fails(data, size, "patched.pth: not a zip archive: no end of central directory");

    /* torch writes ZIP64 end records: the directory offset that counts is the zip64 one. */
    memcpy(data, orig, size);
    put64(data + z64 + 48, (uint64_t)size * 4);
    check_parse_fails(data, size, "zip central directory (offset");
    memcpy(data, orig, size);
    put64(data + z64 + 48, UINT64_MAX - 8);
    check_parse_fails(data, size, "does not end before its end record");
    memcpy(data, orig, size);
    put64(data + z64 + 32, UINT64_MAX);
    put64(data + z64 + 24, UINT64_MAX);
    check_parse_fails(data, size, "zip central directory claims");
    memcpy(data, orig, size);
    put64(data + locator + 8, UINT64_MAX - 4);
    check_parse_fails(data, size, "zip64 end of central directory offset");

    /* The first local header (data.pkl, at 0): a name length beyond the file. */
    memcpy(data, orig, size);
    REQUIRE(memcmp(data, "PK\x03\x04", 4) == 0);
    data[26] = 0xFF;
    data[27] = 0xFF;
    check_parse_fails(data, size, "runs past the end of the file");
    /* A local name that differs from the central one. */
    memcpy(data, orig, size);
    data[30] ^= 0x20;
    check_parse_fails(data, size, "names a different file");
    /* Central directory entry pointing its local header out of the file. */
    memcpy(data, orig, size);
    uint64_t cd = 0;
    for (int i = 7; i >= 0; i--)
        cd = (cd << 8) | data[z64 + 48 + i];
    REQUIRE(cd < size && memcmp(data + cd, "PK\x01\x02", 4) == 0);
    put32(data + cd + 42, (uint32_t)size);
    check_parse_fails(data, size, "no local header at offset");
    /* Stored entry with inconsistent sizes. */
    memcpy(data, orig, size);
    put32(data + cd + 20, 1);
    check_parse_fails(data, size, "is stored but its sizes differ");
    /* Encrypted flag. */
    memcpy(data, orig, size);
    data[cd + 8] |= 1;
    check_parse_fails(data, size, "is encrypted");

    /* Truncations: every prefix fails cleanly; a short one names the missing end record. */
    for (size_t len = 0; len < size; len++) {
        ds_error e = {0};
        ds_torch_checkpoint *t = NULL;
        CHECK(ds_torch_checkpoint_parse("cut.pth", orig, len, 0, &t, &e) != DS_OK);
        CHECK(t == NULL);
    }
    check_parse_fails(orig, 10, "too short for an end of central directory record");
    check_parse_fails(orig, size - 30, "no end of central directory record");

    /* A plain (non-zip64) archive written by Python's zipfile: patch its EOCD offset. */
    free(orig);
    orig = read_fixture("missing_storage.pth", &size);
    REQUIRE(orig);
    free(data);
    data = malloc(size);
    REQUIRE(data);
    memcpy(data, orig, size);
    eocd = find_last(data, size, "PK\x05\x06");
    REQUIRE(eocd != SIZE_MAX && find_last(data, size, "PK\x06\x07") == SIZE_MAX);
    put32(data + eocd + 16, 0xFFFFFFF0u);
    check_parse_fails(data, size, "does not end before its end record");

    free(orig);
    free(data);
}

/* ---- pickle corruption: a one-entry stored zip around a hand-written data.pkl ---- */

static size_t build_zip(uint8_t *out, const uint8_t *pkl, size_t pkl_len)
{
    static const char name[] = "t/data.pkl";
    size_t n = sizeof name - 1, pos = 0;
    memset(out, 0, 30);
    memcpy(out, "PK\x03\x04", 4);
    put32(out + 18, (uint32_t)pkl_len);
    put32(out + 22, (uint32_t)pkl_len);
    out[26] = (uint8_t)n;
    memcpy(out + 30, name, n);
    memcpy(out + 30 + n, pkl, pkl_len);
    pos = 30 + n + pkl_len;
    size_t cd = pos;
    memset(out + pos, 0, 46);
    memcpy(out + pos, "PK\x01\x02", 4);
    put32(out + pos + 20, (uint32_t)pkl_len);
    put32(out + pos + 24, (uint32_t)pkl_len);
    out[pos + 28] = (uint8_t)n;
    memcpy(out + pos + 46, name, n);
    pos += 46 + n;
    memset(out + pos, 0, 22);
    memcpy(out + pos, "PK\x05\x06", 4);
    out[pos + 8] = 1;
    out[pos + 10] = 1;
    put32(out + pos + 12, (uint32_t)(pos - cd));
    put32(out + pos + 16, (uint32_t)cd);
    return pos + 22;
}

static void check_pickle(const uint8_t *pkl, size_t len, int code, const char *needle)
{
    uint8_t *zip = malloc(len + 256);
    REQUIRE(zip);
    size_t size = build_zip(zip, pkl, len);
    ds_torch_checkpoint *ck = NULL;
    ds_error err = {0};
    int rc = ds_torch_checkpoint_parse("p.pth", zip, size, 0, &ck, &err);
    CHECK_MSG(rc == code, "got %s (%s), wanted %s", ds_status_name(rc), err.message,
              ds_status_name(code));
    if (needle)
        CHECK_CONTAINS(err.message, needle);
    ds_torch_checkpoint_close(ck);
    free(zip);
}

#define PKL(s) (const uint8_t *)(s), sizeof(s) - 1

static void test_pickle_corruption(void)
{
    /* A valid empty dict, then variants. */
    check_pickle(PKL("\x80\x02}q\x00."), DS_OK, NULL);
    check_pickle(PKL("\x80\x02}q\x00"), DS_ERR_INVALID_ARGUMENT,
                 "p.pth: t/data.pkl: opcode at byte 5: the pickle ends without STOP");
    check_pickle(PKL("\x80\x06}."), DS_ERR_INVALID_ARGUMENT, "unsupported pickle protocol 6");
    check_pickle(PKL("\x80\x02X\xff\xff\xff\x7f"), DS_ERR_INVALID_ARGUMENT,
                 "BINUNICODE at byte 2: truncated");
    check_pickle(PKL("\x80\x02h\x05."), DS_ERR_INVALID_ARGUMENT,
                 "BINGET at byte 2: memo index 5 was never set");
    check_pickle(PKL("\x80\x02}r\xff\xff\xff\x7f."), DS_ERR_INVALID_ARGUMENT,
                 "LONG_BINPUT at byte 3: memo index 2147483647 is out of range");
    check_pickle(PKL("\x80\x02."), DS_ERR_INVALID_ARGUMENT, "STOP at byte 2: stack underflow");
    check_pickle(PKL("\x80\x02(s."), DS_ERR_INVALID_ARGUMENT, "SETITEM at byte 3: stack underflow");
    check_pickle(PKL("\x80\x02\xff."), DS_ERR_INVALID_ARGUMENT, "unsupported opcode 0xff");
    check_pickle(PKL("\x80\x02X\x02\x00\x00\x00\xc3\x28."), DS_ERR_INVALID_ARGUMENT,
                 "not valid UTF-8");
    check_pickle(PKL("\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01."),
                 DS_ERR_INVALID_ARGUMENT, "does not fit in 64 bits");
    check_pickle(PKL("\x80\x02}]K\x01s."), DS_ERR_INVALID_ARGUMENT,
                 "unhashable dict key of type list");
    check_pickle(PKL("\x80\x02" "cbuiltins\ngetattr"), DS_ERR_INVALID_ARGUMENT,
                 "no newline after the global's name");
    check_pickle(PKL("\x80\x02" "c__builtin__\ngetattr\n."), DS_ERR_INVALID_ARGUMENT,
                 "forbidden global \"__builtin__.getattr\" at byte 2");
    check_pickle(PKL("\x80\x02" "ctorch\nComplexFloatStorage\n."), DS_ERR_INVALID_ARGUMENT,
                 "\"torch.ComplexFloatStorage\" has a dtype this reader does not support");
    /* Calling a storage class, or REDUCE with a non-tuple. */
    check_pickle(PKL("\x80\x02" "ctorch\nFloatStorage\n)R."), DS_ERR_INVALID_ARGUMENT,
                 "REDUCE at byte 23: a type cannot be called");
    check_pickle(PKL("\x80\x02" "ccollections\nOrderedDict\nK\x01" "R."), DS_ERR_INVALID_ARGUMENT,
                 "arguments must be a tuple, got int");
    /* Duplicate str keys: the later value wins, so a valid value may replace an invalid one. */
    check_pickle(PKL("\x80\x02}(X\x01\x00\x00\x00" "aK\x01X\x01\x00\x00\x00" "a}u."), DS_OK, NULL);
    check_pickle(PKL("\x80\x02}(X\x01\x00\x00\x00" "a}X\x01\x00\x00\x00" "aK\x01u."),
                 DS_ERR_INVALID_ARGUMENT, "key path [\"a\"]: value of type int");
    /* A dict that holds itself: rejected by depth, not by overflowing the C stack. */
    check_pickle(PKL("\x80\x02}q\x00X\x01\x00\x00\x00" "ah\x00s."), DS_ERR_INVALID_ARGUMENT,
                 "dicts nested deeper than 64 levels");
    /* A persistent id naming a storage that is not in the archive. */
    check_pickle(PKL("\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00"
                     "0X\x03\x00\x00\x00" "cpuK\x04tQ."),
                 DS_ERR_INVALID_ARGUMENT,
                 "BINPERSID at byte 52: storage \"0\" has no zip entry \"t/data/0\"");

    /* 300 nested MARKs exceed the limit; 65 nested dicts exceed the depth. */
    uint8_t deep[1024];
    size_t n = 0;
    memcpy(deep, "\x80\x02", 2);
    n = 2;
    for (int i = 0; i < 300; i++)
        deep[n++] = '(';
    deep[n++] = '.';
    check_pickle(deep, n, DS_ERR_RESOURCE_EXHAUSTED, "more than 256 nested MARKs");
    n = 2;
    deep[n++] = '}';
    for (int i = 0; i < 65; i++) {
        memcpy(deep + n, "X\x01\x00\x00\x00k}", 7);
        n += 7;
    }
    for (int i = 0; i < 65; i++)
        deep[n++] = 's';
    deep[n++] = '.';
    check_pickle(deep, n, DS_ERR_INVALID_ARGUMENT, "dicts nested deeper than 64 levels");
}

int main(void)
{
    const char *data = getenv("DS_TEST_DATA");
    snprintf(fixture_dir, sizeof fixture_dir, "%s/torch", data ? data : "tests/data");
    RUN(test_fixtures_match_torch);
    RUN(test_views);
    RUN(test_unwrap_rule);
    RUN(test_nested_and_keys);
    RUN(test_rejections);
    RUN(test_zip_corruption);
    RUN(test_pickle_corruption);
    return test_summary();
}
