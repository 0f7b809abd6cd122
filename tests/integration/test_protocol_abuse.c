/* The socket against clients that break the framing or the contract, written with raw sockets
 * (the client library would never send these). The daemon runs with --max-frame-bytes 4096.
 * After each case a fresh client must get Status: nothing a client sends may stop the daemon. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "test.h"

#define CN_HASH "073bce9cf969e317e5662cd570c3e79c"
#define MAX_FRAME 4096
#define READ_TIMEOUT_MS 30000

static it_env env;
static char **cn;
static size_t cn_n;

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static void check_unharmed(void)
{
    CHECK_MSG(it_daemon_alive(&env), "the daemon died");
    CHECK_MSG(it_status_ok(&env), "a fresh client got no Status");
}

static diffsynth_v1_Envelope identify_request(uint64_t id)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.request_id = id;
    req.which_body = diffsynth_v1_Envelope_identify_tag;
    req.body.identify.paths = cn;
    req.body.identify.paths_count = (pb_size_t)cn_n;
    return req;
}

static diffsynth_v1_Envelope simple_request(uint64_t id, pb_size_t tag)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.request_id = id;
    req.which_body = tag;
    return req;
}

/* Reads the next frame, skipping progress events; checks it is an Error with `code` for
 * request `id`. */
static void expect_error_frame(int fd, uint64_t id, int code, const char *needle)
{
    diffsynth_v1_Envelope env_in;
    int rc;
    do {
        rc = it_raw_read_frame(fd, &env_in, READ_TIMEOUT_MS);
        if (rc == 0 && env_in.which_body == diffsynth_v1_Envelope_event_tag) {
            ds_client_envelope_free(&env_in);
            continue;
        }
        break;
    } while (1);
    CHECK_MSG(rc == 0, "no reply frame (%d)", rc);
    if (rc != 0)
        return;
    CHECK_MSG(env_in.which_body == diffsynth_v1_Envelope_error_tag, "reply kind %u",
              (unsigned)env_in.which_body);
    CHECK_MSG(env_in.request_id == id, "request_id %llu, expected %llu",
              (unsigned long long)env_in.request_id, (unsigned long long)id);
    if (env_in.which_body == diffsynth_v1_Envelope_error_tag) {
        CHECK_MSG((int)env_in.body.error.code == code, "code %s, expected %s (%s)",
                  ds_client_code_name((int)env_in.body.error.code), ds_client_code_name(code),
                  env_in.body.error.message ? env_in.body.error.message : "");
        if (needle)
            CHECK_CONTAINS(env_in.body.error.message, needle);
    }
    ds_client_envelope_free(&env_in);
}

static void test_byte_by_byte(void)
{
    int fd = it_raw_connect(env.socket);
    REQUIRE(fd >= 0);
    diffsynth_v1_Envelope req = identify_request(41);
    uint8_t *frame;
    size_t len;
    REQUIRE(it_encode_frame(&req, &frame, &len) == 0);
    for (size_t i = 0; i < len; i++) {
        CHECK(it_raw_write(fd, frame + i, 1) == 0);
        sleep_us(500);
    }
    free(frame);
    diffsynth_v1_Envelope resp;
    REQUIRE(it_raw_read_frame(fd, &resp, READ_TIMEOUT_MS) == 0);
    CHECK(resp.request_id == 41);
    CHECK_MSG(resp.which_body == diffsynth_v1_Envelope_identify_result_tag, "kind %u",
              (unsigned)resp.which_body);
    if (resp.which_body == diffsynth_v1_Envelope_identify_result_tag)
        CHECK_STR_EQ(resp.body.identify_result.model_hash, CN_HASH);
    ds_client_envelope_free(&resp);
    close(fd);
    check_unharmed();
}

static void test_requests_in_one_write(void)
{
    int fd = it_raw_connect(env.socket);
    REQUIRE(fd >= 0);
    diffsynth_v1_Envelope reqs[3] = {simple_request(7, diffsynth_v1_Envelope_status_tag),
                                     identify_request(8),
                                     simple_request(9, diffsynth_v1_Envelope_list_models_tag)};
    const pb_size_t expected[3] = {diffsynth_v1_Envelope_status_result_tag,
                                   diffsynth_v1_Envelope_identify_result_tag,
                                   diffsynth_v1_Envelope_list_models_result_tag};
    uint8_t all[8192];
    size_t used = 0;
    for (int i = 0; i < 3; i++) {
        uint8_t *frame;
        size_t len;
        REQUIRE(it_encode_frame(&reqs[i], &frame, &len) == 0);
        REQUIRE(used + len <= sizeof all);
        memcpy(all + used, frame, len);
        used += len;
        free(frame);
    }
    REQUIRE(it_raw_write(fd, all, used) == 0);
    int seen[3] = {0};
    for (int i = 0; i < 3; i++) {
        diffsynth_v1_Envelope resp;
        REQUIRE(it_raw_read_frame(fd, &resp, READ_TIMEOUT_MS) == 0);
        uint64_t id = resp.request_id;
        CHECK_MSG(id >= 7 && id <= 9, "request_id %llu", (unsigned long long)id);
        if (id >= 7 && id <= 9) {
            seen[id - 7]++;
            CHECK_MSG(resp.which_body == expected[id - 7], "request %llu: reply kind %u",
                      (unsigned long long)id, (unsigned)resp.which_body);
        }
        ds_client_envelope_free(&resp);
    }
    CHECK(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
    close(fd);
    check_unharmed();
}

static void test_partial_frames(void)
{
    diffsynth_v1_Envelope req = identify_request(3);
    uint8_t *frame;
    size_t len;
    REQUIRE(it_encode_frame(&req, &frame, &len) == 0);
    /* Part of the header; the header and part of the body; a header promising more. */
    const size_t cuts[] = {1, 3, 4, len / 2, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        int fd = it_raw_connect(env.socket);
        REQUIRE(fd >= 0);
        CHECK(it_raw_write(fd, frame, cuts[i]) == 0);
        sleep_us(2000);
        close(fd);
        check_unharmed();
    }
    int fd = it_raw_connect(env.socket);
    REQUIRE(fd >= 0);
    const uint8_t promise[] = {0xA0, 0x0F, 0, 0, 0x08, 0x01};  /* 4000 bytes announced */
    CHECK(it_raw_write(fd, promise, sizeof promise) == 0);
    close(fd);
    free(frame);
    check_unharmed();
}

static void test_frame_over_cap(void)
{
    const uint32_t lengths[] = {MAX_FRAME + 1, 0x7FFFFFFF, 0xFFFFFFFF};
    for (size_t i = 0; i < 3; i++) {
        int fd = it_raw_connect(env.socket);
        REQUIRE(fd >= 0);
        uint8_t header[4];
        for (int k = 0; k < 4; k++)
            header[k] = (uint8_t)(lengths[i] >> (8 * k));
        CHECK(it_raw_write(fd, header, 4) == 0);
        expect_error_frame(fd, 0, diffsynth_v1_Code_RESOURCE_EXHAUSTED, "4096");
        CHECK_MSG(it_raw_wait_eof(fd, READ_TIMEOUT_MS), "the connection stayed open");
        close(fd);
        check_unharmed();
    }
}

/* A valid request padded to exactly the cap with an unknown field (which proto3 readers
 * skip): the cap is inclusive. */
static void test_frame_at_cap(void)
{
    diffsynth_v1_Envelope req = simple_request(12, diffsynth_v1_Envelope_status_tag);
    uint8_t *frame;
    size_t len;
    REQUIRE(it_encode_frame(&req, &frame, &len) == 0);
    size_t body = len - 4;
    /* Field 1000, wire type 2: a 2-byte tag, a 2-byte length, then the padding. */
    size_t pad = MAX_FRAME - body - 4;
    REQUIRE(pad >= 128 && pad < 16384);
    uint8_t *big = calloc(1, 4 + MAX_FRAME);
    REQUIRE(big);
    memcpy(big, frame, len);
    uint8_t *p = big + len;
    *p++ = (uint8_t)(((1000 << 3) | 2) & 0x7F) | 0x80;
    *p++ = (uint8_t)(((1000 << 3) | 2) >> 7);
    *p++ = (uint8_t)(pad & 0x7F) | 0x80;
    *p++ = (uint8_t)(pad >> 7);
    memset(p, 'x', pad);
    for (int k = 0; k < 4; k++)
        big[k] = (uint8_t)(MAX_FRAME >> (8 * k));
    int fd = it_raw_connect(env.socket);
    REQUIRE(fd >= 0);
    CHECK(it_raw_write(fd, big, 4 + MAX_FRAME) == 0);
    diffsynth_v1_Envelope resp;
    REQUIRE(it_raw_read_frame(fd, &resp, READ_TIMEOUT_MS) == 0);
    CHECK(resp.request_id == 12);
    CHECK_MSG(resp.which_body == diffsynth_v1_Envelope_status_result_tag, "kind %u (%s)",
              (unsigned)resp.which_body,
              resp.which_body == diffsynth_v1_Envelope_error_tag && resp.body.error.message
                  ? resp.body.error.message
                  : "");
    ds_client_envelope_free(&resp);
    close(fd);
    free(big);
    free(frame);
    check_unharmed();
}

static void test_random_garbage(void)
{
    size_t size = 1u << 20;
    uint8_t *junk = malloc(size);
    REQUIRE(junk);
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < size; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        junk[i] = (uint8_t)x;
    }
    for (int round = 0; round < 3; round++) {
        int fd = it_raw_connect(env.socket);
        REQUIRE(fd >= 0);
        /* The daemon closes as soon as it sees a bad length: the write may then fail. */
        (void)it_raw_write(fd, junk + round * 7, size - (size_t)round * 7);
        CHECK_MSG(it_raw_wait_eof(fd, READ_TIMEOUT_MS), "round %d: the connection stayed open",
                  round);
        close(fd);
        check_unharmed();
    }
    free(junk);
}

static void send_raw_frame(int fd, const uint8_t *body, uint32_t len)
{
    uint8_t header[4];
    for (int k = 0; k < 4; k++)
        header[k] = (uint8_t)(len >> (8 * k));
    CHECK(it_raw_write(fd, header, 4) == 0);
    if (len)
        CHECK(it_raw_write(fd, body, len) == 0);
}

static void test_undecodable_payload(void)
{
    /* Field 2 (error) announces 100 bytes and has 1; a varint that never ends; field 0. */
    const uint8_t truncated[] = {0x12, 0x64, 0x00};
    const uint8_t endless[] = {0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
    const uint8_t field0[] = {0x00, 0x01};
    const struct {
        const uint8_t *body;
        uint32_t len;
    } cases[] = {{truncated, sizeof truncated}, {endless, sizeof endless}, {field0, sizeof field0}};
    for (size_t i = 0; i < 3; i++) {
        int fd = it_raw_connect(env.socket);
        REQUIRE(fd >= 0);
        send_raw_frame(fd, cases[i].body, cases[i].len);
        expect_error_frame(fd, 0, diffsynth_v1_Code_INVALID_ARGUMENT, "Envelope");
        close(fd);
        check_unharmed();
    }
    /* An empty frame decodes as an Envelope without a body. */
    int fd = it_raw_connect(env.socket);
    REQUIRE(fd >= 0);
    send_raw_frame(fd, NULL, 0);
    expect_error_frame(fd, 0, diffsynth_v1_Code_INVALID_ARGUMENT, "no request body");
    close(fd);
    check_unharmed();
}

static void test_not_a_request(void)
{
    int fd = it_raw_connect(env.socket);
    REQUIRE(fd >= 0);
    /* Bodies only the daemon sends. */
    diffsynth_v1_Envelope bad = simple_request(5, diffsynth_v1_Envelope_status_result_tag);
    bad.body.status_result.version = "9.9";
    uint8_t *frame;
    size_t len;
    REQUIRE(it_encode_frame(&bad, &frame, &len) == 0);
    CHECK(it_raw_write(fd, frame, len) == 0);
    free(frame);
    expect_error_frame(fd, 5, diffsynth_v1_Code_INVALID_ARGUMENT, "not a request");

    bad = simple_request(6, diffsynth_v1_Envelope_error_tag);
    bad.body.error.code = diffsynth_v1_Code_INTERNAL;
    bad.body.error.message = "from a client";
    REQUIRE(it_encode_frame(&bad, &frame, &len) == 0);
    CHECK(it_raw_write(fd, frame, len) == 0);
    free(frame);
    expect_error_frame(fd, 6, diffsynth_v1_Code_INVALID_ARGUMENT, "not a request");

    /* request_id 0 is the daemon's, for frames it cannot decode. */
    bad = simple_request(0, diffsynth_v1_Envelope_status_tag);
    REQUIRE(it_encode_frame(&bad, &frame, &len) == 0);
    CHECK(it_raw_write(fd, frame, len) == 0);
    free(frame);
    expect_error_frame(fd, 0, diffsynth_v1_Code_INVALID_ARGUMENT, "request_id");

    /* The connection survives requests that decode but are refused. */
    diffsynth_v1_Envelope good = simple_request(7, diffsynth_v1_Envelope_status_tag);
    REQUIRE(it_encode_frame(&good, &frame, &len) == 0);
    CHECK(it_raw_write(fd, frame, len) == 0);
    free(frame);
    diffsynth_v1_Envelope resp;
    REQUIRE(it_raw_read_frame(fd, &resp, READ_TIMEOUT_MS) == 0);
    CHECK(resp.request_id == 7 && resp.which_body == diffsynth_v1_Envelope_status_result_tag);
    ds_client_envelope_free(&resp);
    close(fd);
    check_unharmed();
}

/* Waits until the daemon has no job queued or running. */
static bool wait_idle(void)
{
    uint64_t deadline = it_now_ms() + READ_TIMEOUT_MS;
    while (it_now_ms() < deadline) {
        ds_client *c = it_connect(&env);
        if (!c)
            return false;
        diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
        req.which_body = diffsynth_v1_Envelope_status_tag;
        bool idle = false;
        if (it_call(c, &req, &resp) == DS_CLIENT_OK) {
            idle = resp.body.status_result.jobs_queued == 0 &&
                   resp.body.status_result.jobs_running == 0;
            ds_client_envelope_free(&resp);
        }
        ds_client_close(c);
        if (idle)
            return true;
        sleep_us(10000);
    }
    return false;
}

static void test_disconnect_with_load_in_flight(void)
{
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.which_body = diffsynth_v1_Envelope_load_tag;
    req.body.load.paths = cn;
    req.body.load.paths_count = (pb_size_t)cn_n;
    req.body.load.client_name = "it-abrupt";
    for (int round = 0; round < 12; round++) {
        int fd = it_raw_connect(env.socket);
        REQUIRE(fd >= 0);
        for (int k = 0; k < 3; k++) {
            req.request_id = (uint64_t)(round * 10 + k + 1);
            uint8_t *frame;
            size_t len;
            REQUIRE(it_encode_frame(&req, &frame, &len) == 0);
            CHECK(it_raw_write(fd, frame, len) == 0);
            free(frame);
        }
        if (round % 2) {
            /* Reset instead of an orderly close. */
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        } else if (round % 3 == 0) {
            /* Take the first reply (progress or result), then vanish mid-stream. */
            diffsynth_v1_Envelope resp;
            if (it_raw_read_frame(fd, &resp, READ_TIMEOUT_MS) == 0)
                ds_client_envelope_free(&resp);
        }
        close(fd);
    }
    CHECK_MSG(wait_idle(), "jobs still queued or running");
    check_unharmed();

    /* A result may have entered the pool before its client left; it is held by the name the
     * request gave, and by nobody else. */
    char *snap = it_pool_snapshot(&env);
    REQUIRE(snap);
    char *line = snap;
    while (line && *line) {
        char *end = strchr(line, '\n');
        if (end)
            *end = '\0';
        char id[64] = "";
        sscanf(line, "%63s", id);
        char *clients = strchr(line, '[');
        CHECK_MSG(clients && strncmp(clients, "[it-abrupt", 10) == 0, "unexpected holder: %s",
                  line);
        ds_client *c = it_connect(&env);
        if (c) {
            diffsynth_v1_Envelope un = diffsynth_v1_Envelope_init_zero, resp;
            un.which_body = diffsynth_v1_Envelope_unload_tag;
            un.body.unload.model_id = id;
            un.body.unload.all_references = true;
            CHECK(it_call(c, &un, &resp) == DS_CLIENT_OK);
            CHECK(resp.body.unload_result.freed);
            ds_client_envelope_free(&resp);
            ds_client_close(c);
        }
        line = end ? end + 1 : NULL;
    }
    free(snap);
    snap = it_pool_snapshot(&env);
    CHECK_STR_EQ(snap, "");
    free(snap);
}

static void test_connect_and_leave(void)
{
    int fds[40];
    for (int i = 0; i < 40; i++)
        fds[i] = it_raw_connect(env.socket);
    for (int i = 0; i < 40; i++) {
        CHECK(fds[i] >= 0);
        if (fds[i] >= 0)
            close(fds[i]);
    }
    check_unharmed();
}

/* A client that sends and never reads: the daemon must neither block nor grow without bound. */
static void test_never_reads(void)
{
    int fd = it_raw_connect(env.socket);
    REQUIRE(fd >= 0);
    int sndbuf = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sndbuf, sizeof sndbuf);
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.which_body = diffsynth_v1_Envelope_list_configs_tag;
    req.body.list_configs.verify = true;
    for (int i = 0; i < 200; i++) {
        req.request_id = (uint64_t)i + 1;
        uint8_t *frame;
        size_t len;
        REQUIRE(it_encode_frame(&req, &frame, &len) == 0);
        /* Once the daemon stops reading, our writes may block: send without waiting. */
        ssize_t n = send(fd, frame, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        free(frame);
        if (n < (ssize_t)len)
            break;
    }
    check_unharmed();
    close(fd);
    check_unharmed();
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIFFSYNTHD [DIFFSYNTH]\n", argv[0]);
        return 2;
    }
    it_env_init(&env, argv[1]);
    if (it_make_model(&env, "qwen_image_blockwise_controlnet", "cn", 1, &cn, &cn_n) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    const char *extra[] = {"--max-frame-bytes", "4096", NULL};
    if (it_daemon_start(&env, extra) != 0) {
        it_env_cleanup(&env);
        return 1;
    }

    RUN(test_byte_by_byte);
    RUN(test_requests_in_one_write);
    RUN(test_partial_frames);
    RUN(test_frame_over_cap);
    RUN(test_frame_at_cap);
    RUN(test_random_garbage);
    RUN(test_undecodable_payload);
    RUN(test_not_a_request);
    RUN(test_disconnect_with_load_in_flight);
    RUN(test_connect_and_leave);
    RUN(test_never_reads);

    int status = -1;
    if (it_daemon_stop(&env, &status) != 0 || status != 0) {
        fprintf(stderr, "FAIL the daemon did not stop cleanly (status %d)\n", status);
        test_failures++;
    }
    if (test_failures)
        it_dump_log(&env);
    ds_st_paths_free(cn, cn_n);
    it_env_cleanup(&env);
    return test_summary();
}
