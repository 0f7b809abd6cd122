/* Framing: the incremental decoder, envelope unpacking and request validation. The wire bytes
 * are written out by hand from the protobuf encoding rules, not produced by our encoder. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/dispatch.h"
#include "daemon/frame.h"
#include "daemon/message_walk.h"
#include "test.h"

/* Envelope{request_id: 7, status: {}}: field 1 varint (0x08 0x07), field 18 length-delimited
 * (tag 18<<3|2 = 146 = 0x92 0x01) of length 0. */
static const uint8_t STATUS_7[] = {0x08, 0x07, 0x92, 0x01, 0x00};
/* Envelope{request_id: 300, list_models: {}}: 300 = 0xAC 0x02; field 16 → tag 130 = 0x82 0x01. */
static const uint8_t LIST_300[] = {0x08, 0xAC, 0x02, 0x82, 0x01, 0x00};

/* 4-byte little-endian length + body into out; returns the frame length. */
static size_t frame(uint8_t *out, const uint8_t *body, uint32_t len)
{
    out[0] = (uint8_t)len;
    out[1] = (uint8_t)(len >> 8);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 24);
    if (len)
        memcpy(out + 4, body, len);
    return 4 + (size_t)len;
}

static void test_whole_frame(void)
{
    uint8_t buf[64];
    size_t n = frame(buf, STATUS_7, sizeof STATUS_7);
    ds_frame_decoder dec;
    ds_frame_decoder_init(&dec, DS_FRAME_DEFAULT_MAX);
    size_t consumed;
    const uint8_t *f;
    size_t flen;
    CHECK(ds_frame_decoder_feed(&dec, buf, n, &consumed, &f, &flen) == DS_FRAME_READY);
    CHECK(consumed == n);
    REQUIRE(flen == sizeof STATUS_7);
    CHECK(memcmp(f, STATUS_7, flen) == 0);
    ds_error err;
    Diffsynth__V1__Envelope *env = ds_frame_unpack(f, flen, &err);
    REQUIRE(env);
    CHECK(env->request_id == 7);
    CHECK(env->body_case == DIFFSYNTH__V1__ENVELOPE__BODY_STATUS);
    CHECK(ds_dispatch_validate(env, &err) == DS_OK);
    diffsynth__v1__envelope__free_unpacked(env, NULL);
    /* Nothing more: the next feed of nothing waits. */
    CHECK(ds_frame_decoder_feed(&dec, buf, 0, &consumed, &f, &flen) == DS_FRAME_NEED_MORE);
    ds_frame_decoder_free(&dec);
}

static void test_byte_by_byte(void)
{
    uint8_t buf[64];
    size_t n = frame(buf, LIST_300, sizeof LIST_300);
    ds_frame_decoder dec;
    ds_frame_decoder_init(&dec, DS_FRAME_DEFAULT_MAX);
    size_t consumed;
    const uint8_t *f = NULL;
    size_t flen = 0;
    for (size_t i = 0; i < n; i++) {
        int rc = ds_frame_decoder_feed(&dec, buf + i, 1, &consumed, &f, &flen);
        CHECK(consumed == 1);
        CHECK(rc == (i + 1 == n ? DS_FRAME_READY : DS_FRAME_NEED_MORE));
    }
    REQUIRE(flen == sizeof LIST_300);
    CHECK(memcmp(f, LIST_300, flen) == 0);
    ds_error err;
    Diffsynth__V1__Envelope *env = ds_frame_unpack(f, flen, &err);
    REQUIRE(env);
    CHECK(env->request_id == 300);
    CHECK(env->body_case == DIFFSYNTH__V1__ENVELOPE__BODY_LIST_MODELS);
    diffsynth__v1__envelope__free_unpacked(env, NULL);
    ds_frame_decoder_free(&dec);
}

/* Three frames in one chunk, the last one cut in two. */
static void test_several_frames_one_chunk(void)
{
    uint8_t buf[128];
    size_t n = frame(buf, STATUS_7, sizeof STATUS_7);
    n += frame(buf + n, LIST_300, sizeof LIST_300);
    size_t third = n;
    n += frame(buf + n, STATUS_7, sizeof STATUS_7);
    size_t cut = third + 6;

    ds_frame_decoder dec;
    ds_frame_decoder_init(&dec, DS_FRAME_DEFAULT_MAX);
    size_t consumed, off = 0;
    const uint8_t *f;
    size_t flen;
    CHECK(ds_frame_decoder_feed(&dec, buf, cut, &consumed, &f, &flen) == DS_FRAME_READY);
    CHECK(flen == sizeof STATUS_7 && memcmp(f, STATUS_7, flen) == 0);
    off += consumed;
    CHECK(off == 4 + sizeof STATUS_7);
    CHECK(ds_frame_decoder_feed(&dec, buf + off, cut - off, &consumed, &f, &flen) ==
          DS_FRAME_READY);
    CHECK(flen == sizeof LIST_300 && memcmp(f, LIST_300, flen) == 0);
    off += consumed;
    CHECK(off == third);
    CHECK(ds_frame_decoder_feed(&dec, buf + off, cut - off, &consumed, &f, &flen) ==
          DS_FRAME_NEED_MORE);
    off += consumed;
    CHECK(off == cut);
    CHECK(ds_frame_decoder_feed(&dec, buf + off, n - off, &consumed, &f, &flen) == DS_FRAME_READY);
    CHECK(consumed == n - cut);
    CHECK(flen == sizeof STATUS_7 && memcmp(f, STATUS_7, flen) == 0);
    ds_frame_decoder_free(&dec);
}

/* A zero-length frame is an empty Envelope: it decodes, and validation finds no body. */
static void test_zero_length(void)
{
    uint8_t buf[8] = {0, 0, 0, 0};
    ds_frame_decoder dec;
    ds_frame_decoder_init(&dec, DS_FRAME_DEFAULT_MAX);
    size_t consumed;
    const uint8_t *f = NULL;
    size_t flen = 99;
    CHECK(ds_frame_decoder_feed(&dec, buf, 4, &consumed, &f, &flen) == DS_FRAME_READY);
    CHECK(consumed == 4);
    CHECK(flen == 0);
    CHECK(f != NULL);
    ds_error err;
    Diffsynth__V1__Envelope *env = ds_frame_unpack(f, flen, &err);
    REQUIRE(env);
    CHECK(env->request_id == 0);
    CHECK(env->body_case == DIFFSYNTH__V1__ENVELOPE__BODY__NOT_SET);
    CHECK(ds_dispatch_validate(env, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "no request body");
    diffsynth__v1__envelope__free_unpacked(env, NULL);
    /* The stream goes on after it. */
    size_t n = frame(buf, NULL, 0);
    CHECK(ds_frame_decoder_feed(&dec, buf, n, &consumed, &f, &flen) == DS_FRAME_READY);
    ds_frame_decoder_free(&dec);
}

static void test_cap_boundary(void)
{
    enum { CAP = 100 };
    uint8_t buf[4 + CAP + 1];
    uint8_t body[CAP + 1];
    /* The framer never looks inside a body: zeros do. */
    memset(body, 0, sizeof body);
    size_t consumed;
    const uint8_t *f;
    size_t flen;

    ds_frame_decoder dec;
    ds_frame_decoder_init(&dec, CAP);
    size_t n = frame(buf, body, CAP);
    CHECK(ds_frame_decoder_feed(&dec, buf, n, &consumed, &f, &flen) == DS_FRAME_READY);
    CHECK(flen == CAP);
    ds_frame_decoder_free(&dec);

    ds_frame_decoder_init(&dec, CAP);
    n = frame(buf, body, CAP + 1);
    CHECK(ds_frame_decoder_feed(&dec, buf, n, &consumed, &f, &flen) == DS_FRAME_TOO_LARGE);
    CHECK(dec.length == CAP + 1);
    CHECK(consumed == 4);
    /* Once failed, always failed: the stream cannot be resynchronised. */
    CHECK(ds_frame_decoder_feed(&dec, buf, n, &consumed, &f, &flen) == DS_FRAME_TOO_LARGE);
    CHECK(consumed == 0);
    ds_frame_decoder_free(&dec);
}

/* A huge announced length is refused from the header alone, and an accepted large length
 * costs only the bytes that really arrived. */
static void test_oversize_allocates_nothing(void)
{
    uint8_t hdr[4] = {0xFF, 0xFF, 0xFF, 0xFF};
    ds_frame_decoder dec;
    ds_frame_decoder_init(&dec, DS_FRAME_DEFAULT_MAX);
    size_t consumed;
    const uint8_t *f;
    size_t flen;
    CHECK(ds_frame_decoder_feed(&dec, hdr, 4, &consumed, &f, &flen) == DS_FRAME_TOO_LARGE);
    CHECK(dec.length == 0xFFFFFFFFu);
    CHECK(dec.buf_cap == 0);
    ds_frame_decoder_free(&dec);

    /* Exactly 64 MiB announced, 10 bytes sent. */
    uint8_t start[14] = {0x00, 0x00, 0x00, 0x04};
    ds_frame_decoder_init(&dec, DS_FRAME_DEFAULT_MAX);
    CHECK(ds_frame_decoder_feed(&dec, start, sizeof start, &consumed, &f, &flen) ==
          DS_FRAME_NEED_MORE);
    CHECK(dec.length == 64u << 20);
    CHECK(dec.buf_have == 10);
    CHECK(dec.buf_cap <= 4096);
    ds_frame_decoder_free(&dec);
}

static void test_garbage(void)
{
    /* Field 1 with wire type 7 (does not exist), a truncated varint, a length running past the
     * end: none is an Envelope. */
    static const uint8_t bad_wire[] = {0x0F, 0x01};
    static const uint8_t truncated_varint[] = {0x08, 0xFF};
    static const uint8_t overlong_len[] = {0x92, 0x01, 0x05, 0x00};
    ds_error err;
    CHECK(ds_frame_unpack(bad_wire, sizeof bad_wire, &err) == NULL);
    CHECK(err.code == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "malformed frame: 2 bytes");
    CHECK(ds_frame_unpack(truncated_varint, sizeof truncated_varint, &err) == NULL);
    CHECK(ds_frame_unpack(overlong_len, sizeof overlong_len, &err) == NULL);
}

static void test_pack_header(void)
{
    Diffsynth__V1__StatusRequest status = DIFFSYNTH__V1__STATUS_REQUEST__INIT;
    Diffsynth__V1__Envelope env = DIFFSYNTH__V1__ENVELOPE__INIT;
    env.request_id = 7;
    env.body_case = DIFFSYNTH__V1__ENVELOPE__BODY_STATUS;
    env.status = &status;
    uint8_t *out;
    size_t len;
    ds_error err;
    REQUIRE(ds_frame_pack(&env, &out, &len, &err) == DS_OK);
    uint8_t expected[16];
    size_t n = frame(expected, STATUS_7, sizeof STATUS_7);
    CHECK(len == n);
    CHECK(len == n && memcmp(out, expected, n) == 0);
    free(out);
}

/* Validation: response bodies, id 0 and bad fields are refused with a precise message. */
static void test_validate(void)
{
    ds_error err;
    Diffsynth__V1__Envelope env = DIFFSYNTH__V1__ENVELOPE__INIT;
    env.request_id = 5;

    Diffsynth__V1__LoadResponse load_result = DIFFSYNTH__V1__LOAD_RESPONSE__INIT;
    env.body_case = DIFFSYNTH__V1__ENVELOPE__BODY_LOAD_RESULT;
    env.load_result = &load_result;
    CHECK(ds_dispatch_validate(&env, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "\"load_result\" is not a request");

    char *relative[] = {"/models/a.safetensors", "b.safetensors"};
    Diffsynth__V1__LoadRequest load = DIFFSYNTH__V1__LOAD_REQUEST__INIT;
    load.paths = relative;
    load.n_paths = 2;
    env.body_case = DIFFSYNTH__V1__ENVELOPE__BODY_LOAD;
    env.load = &load;
    CHECK(ds_dispatch_validate(&env, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "load.paths[1]");
    CHECK_CONTAINS(err.message, "not absolute");

    load.n_paths = 1;
    CHECK(ds_dispatch_validate(&env, &err) == DS_OK);
    load.client_name = "bad\nname";
    CHECK(ds_dispatch_validate(&env, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "control character");
    load.client_name = "web-ui";
    load.n_paths = 0;
    CHECK(ds_dispatch_validate(&env, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "load.paths is empty");
    load.n_paths = 1;

    env.request_id = 0;
    CHECK(ds_dispatch_validate(&env, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "request_id 0");
    env.request_id = 5;

    Diffsynth__V1__UnloadRequest unload = DIFFSYNTH__V1__UNLOAD_REQUEST__INIT;
    env.body_case = DIFFSYNTH__V1__ENVELOPE__BODY_UNLOAD;
    env.unload = &unload;
    CHECK(ds_dispatch_validate(&env, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "unload.model_id is empty");

    Diffsynth__V1__CancelRequest cancel = DIFFSYNTH__V1__CANCEL_REQUEST__INIT;
    env.body_case = DIFFSYNTH__V1__ENVELOPE__BODY_CANCEL;
    env.cancel = &cancel;
    CHECK(ds_dispatch_validate(&env, &err) == DS_ERR_INVALID_ARGUMENT);
    cancel.target_request_id = 4;
    CHECK(ds_dispatch_validate(&env, &err) == DS_OK);
}

/* Every string field is checked through the descriptors, nested and repeated ones included. */
static void test_strings_utf8(void)
{
    ds_error err;
    Diffsynth__V1__Envelope env = DIFFSYNTH__V1__ENVELOPE__INIT;
    env.request_id = 5;
    char *paths[] = {"/models/a.safetensors"};
    Diffsynth__V1__LoadRequest load = DIFFSYNTH__V1__LOAD_REQUEST__INIT;
    load.paths = paths;
    load.n_paths = 1;
    env.body_case = DIFFSYNTH__V1__ENVELOPE__BODY_LOAD;
    env.load = &load;
    /* Two-, three- and four-byte sequences are fine. */
    load.client_name = "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80";
    CHECK(ds_dispatch_validate(&env, &err) == DS_OK);
    /* A truncated sequence, an overlong '/', a UTF-16 surrogate, a lone continuation byte,
     * a code point above U+10FFFF. */
    const char *bad[] = {"caf\xc3", "a\xc0\xaf", "\xed\xa0\x80", "x\x80y", "\xf4\x90\x80\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        load.client_name = (char *)bad[i];
        CHECK_MSG(ds_dispatch_validate(&env, &err) == DS_ERR_INVALID_ARGUMENT, "case %zu", i);
        CHECK_CONTAINS(err.message, "load.client_name is not valid UTF-8");
    }
    load.client_name = "";
    char *bad_paths[] = {"/models/a.safetensors", "/models/\xff.safetensors"};
    load.paths = bad_paths;
    load.n_paths = 2;
    CHECK(ds_dispatch_validate(&env, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "load.paths[1] is not valid UTF-8 (byte 8 of 21, 0xff");

    /* A field no hand-written check looks at: a RunStep input's name. */
    Diffsynth__V1__Tensor t0 = DIFFSYNTH__V1__TENSOR__INIT, t1 = DIFFSYNTH__V1__TENSOR__INIT;
    t0.name = "x";
    t1.name = "y\xfe";
    Diffsynth__V1__Tensor *inputs[] = {&t0, &t1};
    Diffsynth__V1__RunStepRequest step = DIFFSYNTH__V1__RUN_STEP_REQUEST__INIT;
    step.model_id = "m1";
    step.inputs = inputs;
    step.n_inputs = 2;
    env.body_case = DIFFSYNTH__V1__ENVELOPE__BODY_RUN_STEP;
    env.run_step = &step;
    CHECK(ds_dispatch_validate(&env, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "run_step.inputs[1].name is not valid UTF-8");
}

/* A NUL inside a string is visible on the wire only; the bytes are written out by hand. */
static void test_strings_nul_on_wire(void)
{
    ds_error err;
    /* Envelope{request_id 5, load (field 12) {paths ["/a"], client_name "a\0b"}}. */
    const uint8_t load_nul[] = {0x08, 0x05, 0x62, 0x09, 0x0A, 0x02, '/', 'a',
                                0x12, 0x03, 'a',  0x00, 'b'};
    Diffsynth__V1__Envelope *env = ds_frame_unpack(load_nul, sizeof load_nul, &err);
    REQUIRE(env);
    /* protobuf-c kept it as a C string: the rest of the name is invisible here. */
    CHECK_STR_EQ(env->load->client_name, "a");
    diffsynth__v1__envelope__free_unpacked(env, NULL);
    CHECK(ds_wire_check_strings_nul(&diffsynth__v1__envelope__descriptor, load_nul,
                                    sizeof load_nul, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "load.client_name holds a NUL byte (byte 1 of 3)");

    /* Envelope{request_id 6, run_step (field 40) {model_id "m1", inputs [{name "x"},
     * {name "y\0"}]}}. */
    const uint8_t step_nul[] = {0x08, 0x06, 0xC2, 0x02, 0x0F, 0x0A, 0x02, 'm',  '1',  0x1A,
                                0x03, 0x0A, 0x01, 'x',  0x1A, 0x04, 0x0A, 0x02, 'y',  0x00};
    CHECK(ds_wire_check_strings_nul(&diffsynth__v1__envelope__descriptor, step_nul,
                                    sizeof step_nul, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "run_step.inputs[1].name holds a NUL byte");
    /* Bytes fields may hold NUL: Tensor.data (field 4) of the first input. */
    const uint8_t data_nul[] = {0x08, 0x06, 0xC2, 0x02, 0x0B, 0x0A, 0x02, 'm', '1',
                                0x1A, 0x05, 0x22, 0x03, 0x00, 0x00, 0x00};
    CHECK(ds_wire_check_strings_nul(&diffsynth__v1__envelope__descriptor, data_nul,
                                    sizeof data_nul, &err) == DS_OK);
    env = ds_frame_unpack(data_nul, sizeof data_nul, &err);
    REQUIRE(env);
    CHECK(ds_message_bytes_total(&env->base) == 3);
    diffsynth__v1__envelope__free_unpacked(env, NULL);
    CHECK(ds_wire_check_strings_nul(&diffsynth__v1__envelope__descriptor, STATUS_7,
                                    sizeof STATUS_7, &err) == DS_OK);
}

/* Inline payload: every bytes field, however deep. */
static void test_bytes_total(void)
{
    uint8_t a[10] = {0}, b[20] = {0};
    Diffsynth__V1__Tensor t0 = DIFFSYNTH__V1__TENSOR__INIT, t1 = DIFFSYNTH__V1__TENSOR__INIT;
    t0.data = (ProtobufCBinaryData){sizeof a, a};
    t1.data = (ProtobufCBinaryData){sizeof b, b};
    Diffsynth__V1__Tensor *inputs[] = {&t0, &t1};
    Diffsynth__V1__RunStepRequest step = DIFFSYNTH__V1__RUN_STEP_REQUEST__INIT;
    step.inputs = inputs;
    step.n_inputs = 2;
    Diffsynth__V1__Envelope env = DIFFSYNTH__V1__ENVELOPE__INIT;
    env.body_case = DIFFSYNTH__V1__ENVELOPE__BODY_RUN_STEP;
    env.run_step = &step;
    CHECK(ds_message_bytes_total(&env.base) == 30);
    env.body_case = DIFFSYNTH__V1__ENVELOPE__BODY_STATUS;
    Diffsynth__V1__StatusRequest status = DIFFSYNTH__V1__STATUS_REQUEST__INIT;
    env.status = &status;
    CHECK(ds_message_bytes_total(&env.base) == 0);
}

/* A large frame's buffer goes once it is handled; a small one stays for the next frame. */
static void test_trim(void)
{
    size_t body = DS_FRAME_KEEP_BYTES * 4;
    uint8_t *buf = calloc(1, 4 + body), *zeros = calloc(1, body);
    REQUIRE(buf && zeros);
    frame(buf, zeros, (uint32_t)body);
    free(zeros);
    ds_frame_decoder dec;
    ds_frame_decoder_init(&dec, DS_FRAME_DEFAULT_MAX);
    size_t consumed;
    const uint8_t *f;
    size_t flen;
    CHECK(ds_frame_decoder_feed(&dec, buf, 10, &consumed, &f, &flen) == DS_FRAME_NEED_MORE);
    CHECK(ds_frame_decoder_partial(&dec));
    ds_frame_decoder_trim(&dec);  /* mid-frame: nothing happens */
    CHECK(dec.buf != NULL);
    CHECK(ds_frame_decoder_feed(&dec, buf + 10, 4 + body - 10, &consumed, &f, &flen) ==
          DS_FRAME_READY);
    CHECK(flen == body && !ds_frame_decoder_partial(&dec));
    CHECK(dec.buf_cap >= body);
    ds_frame_decoder_trim(&dec);
    CHECK(dec.buf == NULL && dec.buf_cap == 0);
    /* The decoder goes on with the next frame. */
    uint8_t small[64];
    size_t n = frame(small, STATUS_7, sizeof STATUS_7);
    CHECK(ds_frame_decoder_feed(&dec, small, n, &consumed, &f, &flen) == DS_FRAME_READY);
    CHECK(flen == sizeof STATUS_7 && memcmp(f, STATUS_7, flen) == 0);
    ds_frame_decoder_trim(&dec);
    CHECK(dec.buf != NULL);
    ds_frame_decoder_free(&dec);
    free(buf);
}

int main(void)
{
    RUN(test_whole_frame);
    RUN(test_byte_by_byte);
    RUN(test_several_frames_one_chunk);
    RUN(test_zero_length);
    RUN(test_cap_boundary);
    RUN(test_oversize_allocates_nothing);
    RUN(test_garbage);
    RUN(test_pack_header);
    RUN(test_validate);
    RUN(test_strings_utf8);
    RUN(test_strings_nul_on_wire);
    RUN(test_bytes_total);
    RUN(test_trim);
    return test_summary();
}
