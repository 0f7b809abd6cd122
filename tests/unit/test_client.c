/* libdiffsynth-client and the `diffsynth` CLI against a fake daemon: a thread on a temp Unix
 * socket that plays one scripted conversation per test (split frames, interleaved request ids,
 * oversized lengths, garbage, disconnects). Expected CLI text marked "python:" was printed by
 * python3 from the expression beside it, as upstream's ModelPool prints it. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "client/diffsynth_client.h"
#include "test.h"

/* ---- fake daemon ---- */

typedef void (*script_fn)(int fd, void *arg);

typedef struct server {
    char dir[64];
    char path[108];
    int listen_fd;
    pthread_t thread;
    script_fn script;
    void *arg;
    int gate[2];  /* the test writes a byte here to let a script go on */
} server;

static void *server_main(void *p)
{
    server *s = p;
    int fd = accept(s->listen_fd, NULL, NULL);
    if (fd >= 0) {
        s->script(fd, s->arg);
        close(fd);
    }
    return NULL;
}

static int server_start(server *s, script_fn script, void *arg)
{
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "/tmp/ds-test-client-XXXXXX");
    if (!mkdtemp(s->dir))
        return -1;
    snprintf(s->path, sizeof s->path, "%s/d.sock", s->dir);
    s->script = script;
    s->arg = arg;
    if (pipe(s->gate) != 0)
        return -1;
    s->listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", s->path);
    if (bind(s->listen_fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(s->listen_fd, 4) != 0)
        return -1;
    return pthread_create(&s->thread, NULL, server_main, s) == 0 ? 0 : -1;
}

static void server_stop(server *s)
{
    pthread_join(s->thread, NULL);
    close(s->listen_fd);
    close(s->gate[0]);
    close(s->gate[1]);
    unlink(s->path);
    rmdir(s->dir);
}

static server *current;  /* the running fake daemon, for scripts that wait on its gate */

static void gate_wait(void)
{
    char c;
    while (read(current->gate[0], &c, 1) < 0 && errno == EINTR)
        ;
}

static void gate_open(void)
{
    char c = 1;
    if (write(current->gate[1], &c, 1) != 1)
        abort();
}

static int read_exact(int fd, void *buf, size_t n)
{
    size_t off = 0;
    while (off < n) {
        ssize_t r = read(fd, (char *)buf + off, n - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        off += (size_t)r;
    }
    return 0;
}

/* Reads one request frame, `chunk` bytes per read (0: all at once), pausing between reads. */
static int srv_read(int fd, diffsynth_v1_Envelope *env, size_t chunk)
{
    unsigned char hdr[4];
    memset(env, 0, sizeof *env);
    if (read_exact(fd, hdr, 4) != 0)
        return -1;
    uint32_t len = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 |
                   (uint32_t)hdr[3] << 24;
    unsigned char *buf = malloc(len ? len : 1);
    size_t off = 0;
    while (off < len) {
        size_t n = chunk && len - off > chunk ? chunk : len - off;
        if (read_exact(fd, buf + off, n) != 0) {
            free(buf);
            return -1;
        }
        off += n;
        if (chunk)
            usleep(200);
    }
    pb_istream_t is = pb_istream_from_buffer(buf, len);
    bool ok = pb_decode(&is, diffsynth_v1_Envelope_fields, env);
    free(buf);
    return ok ? 0 : -1;
}

static void srv_raw(int fd, const void *data, size_t n, size_t chunk)
{
    const unsigned char *p = data;
    for (size_t off = 0; off < n;) {
        size_t k = chunk && n - off > chunk ? chunk : n - off;
        if (send(fd, p + off, k, MSG_NOSIGNAL) != (ssize_t)k)
            return;
        off += k;
        if (chunk)
            usleep(300);
    }
}

/* Sends one frame in pieces of `chunk` bytes (0: one write), so the client sees partial reads. */
static void srv_send(int fd, const diffsynth_v1_Envelope *env, size_t chunk)
{
    size_t size = 0;
    pb_get_encoded_size(&size, diffsynth_v1_Envelope_fields, env);
    unsigned char *frame = malloc(size + 4);
    for (int i = 0; i < 4; i++)
        frame[i] = (unsigned char)(size >> (8 * i));
    pb_ostream_t os = pb_ostream_from_buffer(frame + 4, size);
    pb_encode(&os, diffsynth_v1_Envelope_fields, env);
    srv_raw(fd, frame, size + 4, chunk);
    free(frame);
}

static void srv_error(int fd, uint64_t id, diffsynth_v1_Code code, const char *message)
{
    diffsynth_v1_Envelope e = diffsynth_v1_Envelope_init_zero;
    e.request_id = id;
    e.which_body = diffsynth_v1_Envelope_error_tag;
    e.body.error.code = code;
    e.body.error.message = (char *)message;
    srv_send(fd, &e, 0);
}

static void srv_progress(int fd, uint64_t id, uint64_t done, uint64_t total, size_t chunk)
{
    diffsynth_v1_Envelope e = diffsynth_v1_Envelope_init_zero;
    e.request_id = id;
    e.which_body = diffsynth_v1_Envelope_event_tag;
    e.body.event.which_kind = diffsynth_v1_Event_progress_tag;
    e.body.event.kind.progress.phase = "bind";
    e.body.event.kind.progress.done = done;
    e.body.event.kind.progress.total = total;
    e.body.event.kind.progress.eta_s = -1;
    srv_send(fd, &e, chunk);
}

static ds_client *connect_to(server *s)
{
    ds_client *c = ds_client_new();
    if (c && ds_client_connect(c, s->path) != DS_CLIENT_OK) {
        fprintf(stderr, "connect: %s\n", ds_client_last_error(c));
        ds_client_close(c);
        return NULL;
    }
    return c;
}

static diffsynth_v1_Envelope request_of(pb_size_t tag)
{
    diffsynth_v1_Envelope e = diffsynth_v1_Envelope_init_zero;
    e.which_body = tag;
    return e;
}

/* ---- one request, split frames, progress, a frame of another request in between ---- */

static char *identify_paths[] = {"/models/a.safetensors", "/models/b.safetensors"};

static void script_roundtrip(int fd, void *arg)
{
    (void)arg;
    diffsynth_v1_Envelope req;
    if (srv_read(fd, &req, 0) != 0)
        return;
    uint64_t id = req.request_id;
    bool as_expected = req.which_body == diffsynth_v1_Envelope_identify_tag &&
                       req.body.identify.paths_count == 2 &&
                       strcmp(req.body.identify.paths[1], "/models/b.safetensors") == 0;
    pb_release(diffsynth_v1_Envelope_fields, &req);
    if (!as_expected) {
        srv_error(fd, id, diffsynth_v1_Code_INVALID_ARGUMENT, "fake daemon: unexpected request");
        return;
    }
    srv_progress(fd, id, 1, 3, 1);
    diffsynth_v1_Envelope other = request_of(diffsynth_v1_Envelope_status_result_tag);
    other.request_id = id + 100;
    other.body.status_result.version = "other";
    srv_send(fd, &other, 2);
    srv_progress(fd, id, 3, 3, 0);
    diffsynth_v1_Envelope resp = request_of(diffsynth_v1_Envelope_identify_result_tag);
    resp.request_id = id;
    resp.body.identify_result.model_hash = "9269f8db9040a9d860eaca435be61814";
    resp.body.identify_result.files_count = 2;
    resp.body.identify_result.files = identify_paths;
    resp.body.identify_result.tensor_count = 825;
    srv_send(fd, &resp, 3);
}

typedef struct progress_log {
    int count;
    uint64_t last_done;
    uint64_t id;
} progress_log;

static void log_progress(const diffsynth_v1_Progress *p, uint64_t id, void *user)
{
    progress_log *log = user;
    log->count++;
    log->last_done = p->done;
    log->id = id;
}

static void test_call_roundtrip(void)
{
    server s;
    REQUIRE(server_start(&s, script_roundtrip, NULL) == 0);
    ds_client *c = connect_to(&s);
    REQUIRE(c);
    CHECK_STR_EQ(ds_client_socket_path(c), s.path);
    diffsynth_v1_Envelope req = request_of(diffsynth_v1_Envelope_identify_tag), resp;
    req.body.identify.paths_count = 2;
    req.body.identify.paths = identify_paths;
    progress_log log = {0};
    int rc = ds_client_call(c, &req, &resp, 5000, log_progress, &log);
    CHECK_MSG(rc == DS_CLIENT_OK, "%s", ds_client_last_error(c));
    CHECK(req.request_id == 0);
    CHECK(resp.request_id == 1);
    CHECK(resp.which_body == diffsynth_v1_Envelope_identify_result_tag);
    CHECK_STR_EQ(resp.body.identify_result.model_hash, "9269f8db9040a9d860eaca435be61814");
    CHECK(resp.body.identify_result.files_count == 2);
    CHECK(resp.body.identify_result.tensor_count == 825);
    CHECK(log.count == 2 && log.last_done == 3 && log.id == 1);
    ds_client_envelope_free(&resp);

    /* The frame for request 101 was set aside for ds_client_recv. */
    diffsynth_v1_Envelope other;
    CHECK(ds_client_recv(c, &other, 0) == DS_CLIENT_OK);
    CHECK(other.request_id == 101);
    CHECK(other.which_body == diffsynth_v1_Envelope_status_result_tag);
    CHECK_STR_EQ(other.body.status_result.version, "other");
    ds_client_envelope_free(&other);
    ds_client_close(c);
    server_stop(&s);
}

/* ---- two requests in flight, answered out of order ---- */

static void script_two_in_flight(int fd, void *arg)
{
    (void)arg;
    diffsynth_v1_Envelope a, b;
    if (srv_read(fd, &a, 0) != 0 || srv_read(fd, &b, 0) != 0)
        return;
    diffsynth_v1_Envelope ra = request_of(diffsynth_v1_Envelope_status_result_tag);
    ra.request_id = a.request_id;
    ra.body.status_result.pid = 4242;
    diffsynth_v1_Envelope rb = request_of(diffsynth_v1_Envelope_list_models_result_tag);
    rb.request_id = b.request_id;
    srv_progress(fd, a.request_id, 1, 2, 0);
    srv_send(fd, &ra, 0);
    srv_send(fd, &rb, 0);
    pb_release(diffsynth_v1_Envelope_fields, &a);
    pb_release(diffsynth_v1_Envelope_fields, &b);
}

static void test_two_requests_in_flight(void)
{
    server s;
    REQUIRE(server_start(&s, script_two_in_flight, NULL) == 0);
    ds_client *c = connect_to(&s);
    REQUIRE(c);
    diffsynth_v1_Envelope a = request_of(diffsynth_v1_Envelope_status_tag);
    a.request_id = ds_client_next_id(c);
    CHECK(ds_client_send(c, &a) == DS_CLIENT_OK);
    diffsynth_v1_Envelope b = request_of(diffsynth_v1_Envelope_list_models_tag), resp;
    progress_log log = {0};
    CHECK(ds_client_call(c, &b, &resp, 5000, log_progress, &log) == DS_CLIENT_OK);
    CHECK(resp.request_id == a.request_id + 1);
    CHECK(resp.which_body == diffsynth_v1_Envelope_list_models_result_tag);
    CHECK(log.count == 0);  /* progress of request a is not b's */
    ds_client_envelope_free(&resp);

    diffsynth_v1_Envelope got;
    CHECK(ds_client_recv(c, &got, 1000) == DS_CLIENT_OK);
    CHECK(got.request_id == a.request_id && got.which_body == diffsynth_v1_Envelope_event_tag);
    ds_client_envelope_free(&got);
    CHECK(ds_client_recv(c, &got, 1000) == DS_CLIENT_OK);
    CHECK(got.request_id == a.request_id && got.body.status_result.pid == 4242);
    ds_client_envelope_free(&got);
    ds_client_close(c);
    server_stop(&s);
}

/* ---- daemon Error replies ---- */

static void script_errors(int fd, void *arg)
{
    (void)arg;
    diffsynth_v1_Envelope req;
    if (srv_read(fd, &req, 0) != 0)
        return;
    srv_error(fd, req.request_id, diffsynth_v1_Code_NOT_FOUND,
              "Cannot detect the model type. File: /m/x.safetensors. Model hash: "
              "d41d8cd98f00b204e9800998ecf8427e");
    pb_release(diffsynth_v1_Envelope_fields, &req);
    if (srv_read(fd, &req, 0) != 0)
        return;
    srv_error(fd, 0, diffsynth_v1_Code_INVALID_ARGUMENT, "frame does not decode");
    pb_release(diffsynth_v1_Envelope_fields, &req);
    if (srv_read(fd, &req, 0) != 0)
        return;
    diffsynth_v1_Envelope wrong = request_of(diffsynth_v1_Envelope_status_result_tag);
    wrong.request_id = req.request_id;
    srv_send(fd, &wrong, 0);
    pb_release(diffsynth_v1_Envelope_fields, &req);
}

static void test_daemon_errors(void)
{
    server s;
    REQUIRE(server_start(&s, script_errors, NULL) == 0);
    ds_client *c = connect_to(&s);
    REQUIRE(c);
    diffsynth_v1_Envelope req = request_of(diffsynth_v1_Envelope_load_tag), resp;
    CHECK(ds_client_call(c, &req, &resp, 5000, NULL, NULL) == DS_CLIENT_EDAEMON);
    CHECK(ds_client_last_code(c) == diffsynth_v1_Code_NOT_FOUND);
    CHECK_STR_EQ(ds_client_code_name(ds_client_last_code(c)), "NOT_FOUND");
    CHECK_STR_EQ(ds_client_last_error(c), "Cannot detect the model type. File: /m/x.safetensors. "
                                          "Model hash: d41d8cd98f00b204e9800998ecf8427e");
    CHECK(resp.which_body == 0);

    /* An Error with request id 0 concerns the frame just sent. */
    CHECK(ds_client_call(c, &req, &resp, 5000, NULL, NULL) == DS_CLIENT_EDAEMON);
    CHECK(ds_client_last_code(c) == diffsynth_v1_Code_INVALID_ARGUMENT);

    /* identify answered with status_result breaks the contract. */
    req = request_of(diffsynth_v1_Envelope_identify_tag);
    CHECK(ds_client_call(c, &req, &resp, 5000, NULL, NULL) == DS_CLIENT_EPROTO);
    CHECK_CONTAINS(ds_client_last_error(c), "(identify) with status_result");
    CHECK(ds_client_last_code(c) == 0);

    CHECK_STR_EQ(ds_client_code_name(16), "UNAUTHENTICATED");
    CHECK_STR_EQ(ds_client_code_name(17), "UNKNOWN");
    CHECK_STR_EQ(ds_client_code_name(-1), "UNKNOWN");
    ds_client_close(c);
    server_stop(&s);
}

/* ---- hostile frames ---- */

static void script_oversized(int fd, void *arg)
{
    (void)arg;
    const unsigned char hdr[4] = {0xF0, 0xFF, 0xFF, 0xFF};
    srv_raw(fd, hdr, 4, 1);
    gate_wait();
}

static void test_oversized_length(void)
{
    server s;
    REQUIRE(server_start(&s, script_oversized, NULL) == 0);
    current = &s;
    ds_client *c = connect_to(&s);
    REQUIRE(c);
    diffsynth_v1_Envelope env;
    CHECK(ds_client_recv(c, &env, 5000) == DS_CLIENT_EFRAME);
    CHECK_STR_EQ(ds_client_last_error(c), "frame of 4294967280 bytes exceeds limit of 67108864 bytes");
    /* The stream cannot be trusted any more: later calls fail the same way. */
    CHECK(ds_client_recv(c, &env, 0) == DS_CLIENT_EFRAME);
    diffsynth_v1_Envelope req = request_of(diffsynth_v1_Envelope_status_tag);
    CHECK(ds_client_send(c, &req) == DS_CLIENT_EFRAME);
    gate_open();
    ds_client_close(c);
    server_stop(&s);
}

static void script_small_limit(int fd, void *arg)
{
    (void)arg;
    diffsynth_v1_Envelope e = request_of(diffsynth_v1_Envelope_status_result_tag);
    e.request_id = 7;
    e.body.status_result.version = "a version string longer than sixteen bytes";
    srv_send(fd, &e, 0);
    gate_wait();
}

static void test_settable_limit(void)
{
    server s;
    REQUIRE(server_start(&s, script_small_limit, NULL) == 0);
    current = &s;
    ds_client *c = connect_to(&s);
    REQUIRE(c);
    CHECK(ds_client_set_max_frame(c, 0) == DS_CLIENT_EINVAL);
    CHECK(ds_client_set_max_frame(c, (uint64_t)UINT32_MAX + 1) == DS_CLIENT_EINVAL);
    CHECK(ds_client_set_max_frame(c, 16) == DS_CLIENT_OK);
    diffsynth_v1_Envelope req = request_of(diffsynth_v1_Envelope_identify_tag);
    req.body.identify.paths_count = 2;
    req.body.identify.paths = identify_paths;
    CHECK(ds_client_send(c, &req) == DS_CLIENT_EFRAME);
    CHECK_CONTAINS(ds_client_last_error(c), "exceeds limit of 16 bytes");
    diffsynth_v1_Envelope env;
    CHECK(ds_client_recv(c, &env, 5000) == DS_CLIENT_EFRAME);
    CHECK_CONTAINS(ds_client_last_error(c), "exceeds limit of 16 bytes");
    gate_open();
    ds_client_close(c);
    server_stop(&s);
}

static void script_garbage(int fd, void *arg)
{
    (void)arg;
    /* A length-delimited field whose length runs past the frame, then a good frame. */
    const unsigned char bad[] = {6, 0, 0, 0, 0x12, 0x7f, 0xff, 0xff, 0xff, 0xff};
    srv_raw(fd, bad, sizeof bad, 0);
    diffsynth_v1_Envelope e = request_of(diffsynth_v1_Envelope_cancel_result_tag);
    e.request_id = 9;
    e.body.cancel_result.found = true;
    srv_send(fd, &e, 0);
    /* An empty frame decodes to an Envelope without a body. */
    const unsigned char empty[] = {0, 0, 0, 0};
    srv_raw(fd, empty, 4, 0);
}

static void test_garbage_frame(void)
{
    server s;
    REQUIRE(server_start(&s, script_garbage, NULL) == 0);
    ds_client *c = connect_to(&s);
    REQUIRE(c);
    diffsynth_v1_Envelope env;
    CHECK(ds_client_recv(c, &env, 5000) == DS_CLIENT_EFRAME);
    CHECK_CONTAINS(ds_client_last_error(c), "malformed frame of 6 bytes");
    CHECK(env.which_body == 0);
    /* The frame boundary held: the next frame reads fine. */
    CHECK(ds_client_recv(c, &env, 5000) == DS_CLIENT_OK);
    CHECK(env.request_id == 9 && env.body.cancel_result.found);
    ds_client_envelope_free(&env);
    CHECK(ds_client_recv(c, &env, 5000) == DS_CLIENT_OK);
    CHECK(env.request_id == 0 && env.which_body == 0);
    CHECK(ds_client_recv(c, &env, 5000) == DS_CLIENT_ECLOSED);
    CHECK_STR_EQ(ds_client_last_error(c), "daemon closed the connection");
    ds_client_close(c);
    server_stop(&s);
}

static void script_disconnect(int fd, void *arg)
{
    (void)arg;
    diffsynth_v1_Envelope req;
    if (srv_read(fd, &req, 0) == 0)
        pb_release(diffsynth_v1_Envelope_fields, &req);
}

static void script_half_header(int fd, void *arg)
{
    (void)arg;
    const unsigned char hdr[2] = {10, 0};
    srv_raw(fd, hdr, 2, 0);
}

static void test_disconnect(void)
{
    server s;
    REQUIRE(server_start(&s, script_disconnect, NULL) == 0);
    ds_client *c = connect_to(&s);
    REQUIRE(c);
    diffsynth_v1_Envelope req = request_of(diffsynth_v1_Envelope_status_tag), resp;
    CHECK(ds_client_call(c, &req, &resp, 5000, NULL, NULL) == DS_CLIENT_ECLOSED);
    CHECK_STR_EQ(ds_client_last_error(c), "daemon closed the connection");
    ds_client_close(c);
    server_stop(&s);

    REQUIRE(server_start(&s, script_half_header, NULL) == 0);
    c = connect_to(&s);
    REQUIRE(c);
    CHECK(ds_client_recv(c, &resp, 5000) == DS_CLIENT_ECLOSED);
    CHECK_STR_EQ(ds_client_last_error(c),
                 "daemon closed the connection in the middle of a frame (2 of 4 bytes received)");
    ds_client_close(c);
    server_stop(&s);
}

static void script_slow_half(int fd, void *arg)
{
    (void)arg;
    diffsynth_v1_Envelope e = request_of(diffsynth_v1_Envelope_unload_result_tag);
    e.request_id = 3;
    e.body.unload_result.model_id = "m1";
    e.body.unload_result.remaining_references = 2;
    unsigned char frame[64];
    pb_ostream_t os = pb_ostream_from_buffer(frame + 4, sizeof frame - 4);
    pb_encode(&os, diffsynth_v1_Envelope_fields, &e);
    size_t size = os.bytes_written;
    frame[0] = (unsigned char)size, frame[1] = frame[2] = frame[3] = 0;
    srv_raw(fd, frame, 6, 0);
    gate_wait();
    srv_raw(fd, frame + 6, size - 2, 0);
}

static void test_timeout_keeps_partial_frame(void)
{
    server s;
    REQUIRE(server_start(&s, script_slow_half, NULL) == 0);
    current = &s;
    ds_client *c = connect_to(&s);
    REQUIRE(c);
    diffsynth_v1_Envelope env;
    CHECK(ds_client_recv(c, &env, 50) == DS_CLIENT_ETIMEDOUT);
    CHECK_CONTAINS(ds_client_last_error(c), "within 50 ms");
    gate_open();
    CHECK(ds_client_recv(c, &env, 5000) == DS_CLIENT_OK);
    CHECK(env.request_id == 3);
    CHECK_STR_EQ(env.body.unload_result.model_id, "m1");
    CHECK(env.body.unload_result.remaining_references == 2);
    ds_client_envelope_free(&env);
    ds_client_close(c);
    server_stop(&s);
}

/* ---- a request far larger than the socket buffer, read slowly ---- */

#define BIG_PATHS 2000
#define BIG_PATH_LEN 1000

typedef struct big_result {
    bool decoded;
    pb_size_t count;
    bool last_matches;
} big_result;

static void script_slow_reader(int fd, void *arg)
{
    big_result *out = arg;
    diffsynth_v1_Envelope req;
    if (srv_read(fd, &req, 4096) != 0)
        return;
    out->decoded = true;
    out->count = req.body.identify.paths_count;
    out->last_matches = req.body.identify.paths_count == BIG_PATHS &&
                        strlen(req.body.identify.paths[BIG_PATHS - 1]) == BIG_PATH_LEN &&
                        req.body.identify.paths[BIG_PATHS - 1][0] == 'A' + (BIG_PATHS - 1) % 26;
    diffsynth_v1_Envelope resp = request_of(diffsynth_v1_Envelope_identify_result_tag);
    resp.request_id = req.request_id;
    srv_send(fd, &resp, 0);
    pb_release(diffsynth_v1_Envelope_fields, &req);
}

static void test_large_request_partial_writes(void)
{
    big_result result = {0};
    server s;
    REQUIRE(server_start(&s, script_slow_reader, &result) == 0);
    ds_client *c = connect_to(&s);
    REQUIRE(c);
    char **paths = calloc(BIG_PATHS, sizeof *paths);
    REQUIRE(paths);
    for (int i = 0; i < BIG_PATHS; i++) {
        paths[i] = malloc(BIG_PATH_LEN + 1);
        memset(paths[i], 'A' + i % 26, BIG_PATH_LEN);
        paths[i][BIG_PATH_LEN] = '\0';
    }
    diffsynth_v1_Envelope req = request_of(diffsynth_v1_Envelope_identify_tag), resp;
    req.body.identify.paths_count = BIG_PATHS;
    req.body.identify.paths = paths;
    CHECK(ds_client_call(c, &req, &resp, 20000, NULL, NULL) == DS_CLIENT_OK);
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    server_stop(&s);
    CHECK(result.decoded);
    CHECK(result.count == BIG_PATHS);
    CHECK(result.last_matches);
    for (int i = 0; i < BIG_PATHS; i++)
        free(paths[i]);
    free(paths);
}

/* ---- cancel, also from inside a progress callback ---- */

static void script_cancel(int fd, void *arg)
{
    (void)arg;
    diffsynth_v1_Envelope load, cancel;
    if (srv_read(fd, &load, 0) != 0)
        return;
    srv_progress(fd, load.request_id, 1, 10, 0);
    if (srv_read(fd, &cancel, 0) != 0)
        return;
    bool targets_load = cancel.which_body == diffsynth_v1_Envelope_cancel_tag &&
                        cancel.body.cancel.target_request_id == load.request_id;
    /* The load's end arrives before the cancel's answer: the inner call must set it aside. */
    srv_error(fd, load.request_id, diffsynth_v1_Code_CANCELLED, "cancelled by the client");
    diffsynth_v1_Envelope resp = request_of(diffsynth_v1_Envelope_cancel_result_tag);
    resp.request_id = cancel.request_id;
    resp.body.cancel_result.found = targets_load;
    srv_send(fd, &resp, 0);
    pb_release(diffsynth_v1_Envelope_fields, &load);
    pb_release(diffsynth_v1_Envelope_fields, &cancel);
}

typedef struct cancel_state {
    ds_client *client;
    int rc;
    bool found;
} cancel_state;

static void cancel_on_progress(const diffsynth_v1_Progress *p, uint64_t id, void *user)
{
    (void)p;
    cancel_state *st = user;
    st->rc = ds_client_cancel(st->client, id, 5000, &st->found);
}

static void test_cancel_from_callback(void)
{
    server s;
    REQUIRE(server_start(&s, script_cancel, NULL) == 0);
    ds_client *c = connect_to(&s);
    REQUIRE(c);
    cancel_state st = {.client = c, .rc = 99};
    diffsynth_v1_Envelope req = request_of(diffsynth_v1_Envelope_load_tag), resp;
    CHECK(ds_client_call(c, &req, &resp, 5000, cancel_on_progress, &st) == DS_CLIENT_EDAEMON);
    CHECK(ds_client_last_code(c) == diffsynth_v1_Code_CANCELLED);
    CHECK(st.rc == DS_CLIENT_OK);
    CHECK(st.found);
    ds_client_close(c);
    server_stop(&s);
}

/* ---- without a daemon ---- */

static void test_connect_failure(void)
{
    ds_client *c = ds_client_new();
    REQUIRE(c);
    CHECK(ds_client_fd(c) == -1);
    diffsynth_v1_Envelope env;
    CHECK(ds_client_recv(c, &env, 0) == DS_CLIENT_EINVAL);
    CHECK(ds_client_connect(c, "/nonexistent-dir/diffsynthd.sock") == DS_CLIENT_ECONNECT);
    CHECK_STR_EQ(ds_client_last_error(c),
                 "cannot connect to diffsynthd at /nonexistent-dir/diffsynthd.sock: "
                 "No such file or directory");
    char longpath[300];
    memset(longpath, 'x', sizeof longpath - 1);
    longpath[0] = '/';
    longpath[sizeof longpath - 1] = '\0';
    CHECK(ds_client_connect(c, longpath) == DS_CLIENT_EINVAL);
    CHECK_CONTAINS(ds_client_last_error(c), "at most 107");
    /* NULL means the default order, starting with $DIFFSYNTH_SOCKET. */
    setenv("DIFFSYNTH_SOCKET", "/nonexistent-dir/env.sock", 1);
    CHECK(ds_client_connect(c, NULL) == DS_CLIENT_ECONNECT);
    CHECK_STR_EQ(ds_client_socket_path(c), "/nonexistent-dir/env.sock");
    unsetenv("DIFFSYNTH_SOCKET");
    CHECK(ds_client_next_id(c) == 1);
    CHECK(ds_client_next_id(c) == 2);
    ds_client_close(c);
    ds_client_close(NULL);
}

static void test_absolute_path(void)
{
    ds_client *c = ds_client_new();
    REQUIRE(c);
    char cwd[4096];
    REQUIRE(getcwd(cwd, sizeof cwd));
    char expected[8192];
    char *out = NULL;

    CHECK(ds_client_absolute_path(c, "models/./a.safetensors", &out) == DS_CLIENT_OK);
    snprintf(expected, sizeof expected, "%s/models/a.safetensors", strcmp(cwd, "/") ? cwd : "");
    CHECK_STR_EQ(out, expected);
    free(out);

    CHECK(ds_client_absolute_path(c, "./../m//b.bin", &out) == DS_CLIENT_OK);
    snprintf(expected, sizeof expected, "%s/../m/b.bin", strcmp(cwd, "/") ? cwd : "");
    CHECK_STR_EQ(out, expected);
    free(out);

    CHECK(ds_client_absolute_path(c, "/x//y/./z.safetensors", &out) == DS_CLIENT_OK);
    CHECK_STR_EQ(out, "/x/y/z.safetensors");
    free(out);

    CHECK(ds_client_absolute_path(c, "/", &out) == DS_CLIENT_OK);
    CHECK_STR_EQ(out, "/");
    free(out);

    CHECK(ds_client_absolute_path(c, "", &out) == DS_CLIENT_EINVAL);
    CHECK(out == NULL);
    ds_client_close(c);
}

/* ---- the CLI against the fake daemon ---- */

typedef struct cli_result {
    int status;
    char out[16384];
    char err[16384];
} cli_result;

static void slurp(int fd, char *buf, size_t size)
{
    lseek(fd, 0, SEEK_SET);
    ssize_t n = read(fd, buf, size - 1);
    buf[n > 0 ? n : 0] = '\0';
    close(fd);
}

/* Runs the built `diffsynth` with argv (NULL-terminated after argv[0]). */
static int run_cli(cli_result *r, char *const argv[])
{
    const char *root = getenv("DS_BUILD_ROOT");
    if (!root) {
        fprintf(stderr, "DS_BUILD_ROOT is not set: cannot find the diffsynth binary\n");
        return -1;
    }
    char exe[4096];
    snprintf(exe, sizeof exe, "%s/client/diffsynth", root);
    FILE *out = tmpfile(), *err = tmpfile();
    if (!out || !err)
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fileno(out), STDOUT_FILENO);
        dup2(fileno(err), STDERR_FILENO);
        execv(exe, argv);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    r->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
    slurp(dup(fileno(out)), r->out, sizeof r->out);
    slurp(dup(fileno(err)), r->err, sizeof r->err);
    fclose(out);
    fclose(err);
    return 0;
}

typedef struct load_seen {
    bool ok;
    char path0[4096];
    char client[64];
    pb_size_t count;
} load_seen;

static char *loaded_paths[] = {"/m/a.safetensors"};
static char *loaded_clients[] = {"alice"};

static void script_cli_load(int fd, void *arg)
{
    load_seen *seen = arg;
    diffsynth_v1_Envelope req;
    if (srv_read(fd, &req, 0) != 0)
        return;
    if (req.which_body == diffsynth_v1_Envelope_load_tag) {
        seen->ok = true;
        seen->count = req.body.load.paths_count;
        snprintf(seen->path0, sizeof seen->path0, "%s", req.body.load.paths[0]);
        snprintf(seen->client, sizeof seen->client, "%s", req.body.load.client_name ? req.body.load.client_name : "");
    }
    srv_progress(fd, req.request_id, 5, 10, 0);
    diffsynth_v1_LoadedModel models[2] = {diffsynth_v1_LoadedModel_init_zero, diffsynth_v1_LoadedModel_init_zero};
    models[0].model_id = "m1";
    models[0].model_name = "wan_video_dit";
    models[0].model_class = "diffsynth.models.wan_video_dit.WanModel";
    models[0].extra_kwargs_json = "{\"has_image_input\":false,\"patch_size\":[1,2,2],\"eps\":0.000001}";
    models[0].paths_count = 1;
    models[0].paths = loaded_paths;
    models[0].parameter_count = 1418996800;
    models[0].tensor_count = 825;
    models[1].model_id = "m2";
    models[1].model_name = "wan_video_vace";
    models[1].model_class = "diffsynth.models.wan_video_vace.VaceWanModel";
    models[1].paths_count = 1;
    models[1].paths = loaded_paths;
    models[1].parameter_count = 999;
    models[1].tensor_count = 12;
    models[1].reused = true;
    models[1].clients_count = 1;
    models[1].clients = loaded_clients;
    diffsynth_v1_ModelConfig skipped = diffsynth_v1_ModelConfig_init_zero;
    skipped.model_name = "wan_video_vap";
    skipped.model_class = "diffsynth.models.wan_video_mot.MotWanModel";
    diffsynth_v1_Envelope resp = request_of(diffsynth_v1_Envelope_load_result_tag);
    resp.request_id = req.request_id;
    resp.body.load_result.models_count = 2;
    resp.body.load_result.models = models;
    resp.body.load_result.skipped_count = 1;
    resp.body.load_result.skipped = &skipped;
    srv_send(fd, &resp, 0);
    pb_release(diffsynth_v1_Envelope_fields, &req);
}

static void test_cli_load_output(void)
{
    load_seen seen = {0};
    server s;
    REQUIRE(server_start(&s, script_cli_load, &seen) == 0);
    cli_result r;
    char *argv[] = {"diffsynth", "--socket", s.path, "load", "models/a.safetensors",
                    "models/b.safetensors", "--client", "alice", NULL};
    REQUIRE(run_cli(&r, argv) == 0);
    server_stop(&s);
    CHECK_MSG(r.status == 0, "exit %d, stderr: %s", r.status, r.err);
    const char *expected =
        "Loading models from: "
        /* python: json.dumps(["models/a.safetensors", "models/b.safetensors"], indent=4) */
        "[\n    \"models/a.safetensors\",\n    \"models/b.safetensors\"\n]"
        "\nLoaded model: "
        /* python: json.dumps({"model_name": "wan_video_dit", "model_class": "diffsynth.models.wan_video_dit.WanModel", "extra_kwargs": {"has_image_input": False, "patch_size": [1, 2, 2], "eps": 1e-06}}, indent=4) */
        "{\n    \"model_name\": \"wan_video_dit\",\n    \"model_class\": \"diffsynth.models.wan_video_dit.WanModel\",\n    \"extra_kwargs\": {\n        \"has_image_input\": false,\n        \"patch_size\": [\n            1,\n            2,\n            2\n        ],\n        \"eps\": 1e-06\n    }\n}"
        "\n  -> model id m1: 825 tensors, 1.42 B parameters, mapped from 1 file\n"
        "Loaded model: "
        /* python: json.dumps({"model_name": "wan_video_vace", "model_class": "diffsynth.models.wan_video_vace.VaceWanModel", "extra_kwargs": None}, indent=4) */
        "{\n    \"model_name\": \"wan_video_vace\",\n    \"model_class\": \"diffsynth.models.wan_video_vace.VaceWanModel\",\n    \"extra_kwargs\": null\n}"
        "\n  -> model id m2: 12 tensors, 999 parameters, mapped from 1 file (reused)\n"
        "Skipped model: wan_video_vap (diffsynth.models.wan_video_mot.MotWanModel): "
        "not implemented in this build\n";
    CHECK_STR_EQ(r.out, expected);
    /* stderr is not a terminal here: one plain line per progress event. */
    CHECK_STR_EQ(r.err, "progress: bind 5/10\n");
    CHECK(seen.ok && seen.count == 2);
    char cwd[4096], want[8192];
    REQUIRE(getcwd(cwd, sizeof cwd));
    snprintf(want, sizeof want, "%s/models/a.safetensors", strcmp(cwd, "/") ? cwd : "");
    CHECK_STR_EQ(seen.path0, want);
    CHECK_STR_EQ(seen.client, "alice");
}

static void script_cli_unknown(int fd, void *arg)
{
    (void)arg;
    diffsynth_v1_Envelope req;
    if (srv_read(fd, &req, 0) != 0)
        return;
    srv_error(fd, req.request_id, diffsynth_v1_Code_NOT_FOUND,
              "Cannot detect the model type. File: /m/x.safetensors. Model hash: "
              "d41d8cd98f00b204e9800998ecf8427e");
    pb_release(diffsynth_v1_Envelope_fields, &req);
    if (srv_read(fd, &req, 0) != 0)
        return;
    diffsynth_v1_ConfigSuggestion close[6];
    static const char *names[6] = {"qwen_image_blockwise_controlnet", "b", "c", "d", "e", "f"};
    for (int i = 0; i < 6; i++) {
        memset(&close[i], 0, sizeof close[i]);
        close[i].has_config = true;
        close[i].config.model_name = (char *)names[i];
        close[i].config.model_class =
            "diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet";
        close[i].shared_names = (uint32_t)(470 - i);
        close[i].config_names = 482;
    }
    diffsynth_v1_Envelope resp = request_of(diffsynth_v1_Envelope_identify_result_tag);
    resp.request_id = req.request_id;
    resp.body.identify_result.model_hash = "d41d8cd98f00b204e9800998ecf8427e";
    resp.body.identify_result.closest_count = 6;
    resp.body.identify_result.closest = close;
    srv_send(fd, &resp, 0);
    pb_release(diffsynth_v1_Envelope_fields, &req);
}

static void test_cli_load_unknown_hash(void)
{
    server s;
    REQUIRE(server_start(&s, script_cli_unknown, NULL) == 0);
    cli_result r;
    char *argv[] = {"diffsynth", "--socket", s.path, "load", "/m/x.safetensors", NULL};
    REQUIRE(run_cli(&r, argv) == 0);
    server_stop(&s);
    CHECK(r.status == 1);
    /* python: json.dumps("/m/x.safetensors", indent=4) */
    CHECK_STR_EQ(r.out, "Loading models from: \"/m/x.safetensors\"\n");
    CHECK_STR_EQ(r.err,
                 "error: NOT_FOUND: Cannot detect the model type. File: /m/x.safetensors. Model "
                 "hash: d41d8cd98f00b204e9800998ecf8427e\n"
                 "Closest known configs by shared tensor names:\n"
                 "  qwen_image_blockwise_controlnet (diffsynth.models.qwen_image_controlnet."
                 "QwenImageBlockWiseControlNet) shares 470 of 482 tensor names\n"
                 "  b (diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet) shares 469 of 482 tensor names\n"
                 "  c (diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet) shares 468 of 482 tensor names\n"
                 "  d (diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet) shares 467 of 482 tensor names\n"
                 "  e (diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet) shares 466 of 482 tensor names\n");
}

static char *identify_files[] = {"/m/diffusion_pytorch_model.safetensors"};

static void script_cli_identify(int fd, void *arg)
{
    (void)arg;
    diffsynth_v1_Envelope req;
    if (srv_read(fd, &req, 0) != 0)
        return;
    diffsynth_v1_ModelConfig configs[2] = {diffsynth_v1_ModelConfig_init_zero,
                                           diffsynth_v1_ModelConfig_init_zero};
    configs[0].model_hash = "9269f8db9040a9d860eaca435be61814";
    configs[0].model_name = "wan_video_dit";
    configs[0].model_class = "diffsynth.models.wan_video_dit.WanModel";
    configs[0].extra_kwargs_json = "{\"eps\": 1e-6, \"dim\": 1536}";
    configs[0].implemented = true;
    configs[1].model_name = "caf\xc3\xa9";
    configs[1].model_class = "x.Y";
    configs[1].state_dict_converter = "x.conv";
    diffsynth_v1_Envelope resp = request_of(diffsynth_v1_Envelope_identify_result_tag);
    resp.request_id = req.request_id;
    resp.body.identify_result.model_hash = "9269f8db9040a9d860eaca435be61814";
    resp.body.identify_result.files_count = 1;
    resp.body.identify_result.files = identify_files;
    resp.body.identify_result.configs_count = 2;
    resp.body.identify_result.configs = configs;
    resp.body.identify_result.tensor_count = 825;
    srv_send(fd, &resp, 0);
    pb_release(diffsynth_v1_Envelope_fields, &req);
}

static void test_cli_identify_json(void)
{
    server s;
    REQUIRE(server_start(&s, script_cli_identify, NULL) == 0);
    cli_result r;
    char *argv[] = {"diffsynth", "identify", "--json", "--socket", s.path, "x.safetensors", NULL};
    REQUIRE(run_cli(&r, argv) == 0);
    server_stop(&s);
    CHECK_MSG(r.status == 0, "exit %d, stderr: %s", r.status, r.err);
    /* python: json.dumps({"model_hash": "9269f8db9040a9d860eaca435be61814", "files": ["/m/diffusion_pytorch_model.safetensors"], "configs": [{"model_name": "wan_video_dit", "model_class": "diffsynth.models.wan_video_dit.WanModel", "state_dict_converter": None, "extra_kwargs": {"eps": 1e-06, "dim": 1536}, "implemented": True}, {"model_name": "caf\u00e9", "model_class": "x.Y", "state_dict_converter": "x.conv", "extra_kwargs": None, "implemented": False}], "tensor_count": 825}) */
    CHECK_STR_EQ(r.out, "{\"model_hash\": \"9269f8db9040a9d860eaca435be61814\", \"files\": [\"/m/diffusion_pytorch_model.safetensors\"], \"configs\": [{\"model_name\": \"wan_video_dit\", \"model_class\": \"diffsynth.models.wan_video_dit.WanModel\", \"state_dict_converter\": null, \"extra_kwargs\": {\"eps\": 1e-06, \"dim\": 1536}, \"implemented\": true}, {\"model_name\": \"caf\\u00e9\", \"model_class\": \"x.Y\", \"state_dict_converter\": \"x.conv\", \"extra_kwargs\": null, \"implemented\": false}], \"tensor_count\": 825}\n");
}

static void script_cli_configs(int fd, void *arg)
{
    (void)arg;
    diffsynth_v1_Envelope req;
    if (srv_read(fd, &req, 0) != 0)
        return;
    diffsynth_v1_ConfigEntry e[3];
    memset(e, 0, sizeof e);
    static const char *names[3] = {"qwen_image_dit", "qwen_image_vae", "wan_video_dit"};
    for (int i = 0; i < 3; i++) {
        e[i].has_config = true;
        e[i].config.model_hash = "0319a1cb19835fb510907dd3367c95ff";
        e[i].config.model_name = (char *)names[i];
        e[i].config.model_class = "diffsynth.models.X";
        e[i].config.implemented = i != 2;
    }
    e[0].verify = diffsynth_v1_VerifyResult_VERIFY_MATCH;
    e[1].verify = req.body.list_configs.verify ? diffsynth_v1_VerifyResult_VERIFY_MISMATCH
                                               : diffsynth_v1_VerifyResult_VERIFY_NOT_REQUESTED;
    e[1].computed_hash = "00000000000000000000000000000000";
    e[2].verify = diffsynth_v1_VerifyResult_VERIFY_NOT_APPLICABLE;
    diffsynth_v1_Envelope resp = request_of(diffsynth_v1_Envelope_list_configs_result_tag);
    resp.request_id = req.request_id;
    resp.body.list_configs_result.entries_count = 3;
    resp.body.list_configs_result.entries = e;
    srv_send(fd, &resp, 0);
    pb_release(diffsynth_v1_Envelope_fields, &req);
}

static void test_cli_configs_verify(void)
{
    server s;
    REQUIRE(server_start(&s, script_cli_configs, NULL) == 0);
    cli_result r;
    char *argv[] = {"diffsynth", "--socket", s.path, "configs", "--verify", "--name", "qwen", NULL};
    REQUIRE(run_cli(&r, argv) == 0);
    server_stop(&s);
    CHECK(r.status == 1);
    CHECK_STR_EQ(r.out,
                 "0319a1cb19835fb510907dd3367c95ff  qwen_image_dit  diffsynth.models.X  implemented  OK\n"
                 "0319a1cb19835fb510907dd3367c95ff  qwen_image_vae  diffsynth.models.X  implemented  "
                 "MISMATCH computed 00000000000000000000000000000000\n");
}

static char *unknown_files[] = {"/m/a.safetensors", "/m/it's.safetensors"};

static void script_cli_identify_unknown(int fd, void *arg)
{
    (void)arg;
    diffsynth_v1_Envelope req;
    if (srv_read(fd, &req, 0) != 0)
        return;
    diffsynth_v1_ConfigSuggestion close = diffsynth_v1_ConfigSuggestion_init_zero;
    close.has_config = true;
    close.config.model_name = "qwen_image_vae";
    close.config.model_class = "diffsynth.models.qwen_image_vae.QwenImageVAE";
    close.shared_names = 190;
    close.config_names = 194;
    diffsynth_v1_Envelope resp = request_of(diffsynth_v1_Envelope_identify_result_tag);
    resp.request_id = req.request_id;
    resp.body.identify_result.model_hash = "d41d8cd98f00b204e9800998ecf8427e";
    resp.body.identify_result.files_count = 2;
    resp.body.identify_result.files = unknown_files;
    resp.body.identify_result.closest_count = 1;
    resp.body.identify_result.closest = &close;
    srv_send(fd, &resp, 0);
    pb_release(diffsynth_v1_Envelope_fields, &req);
}

static void test_cli_identify_unknown(void)
{
    server s;
    REQUIRE(server_start(&s, script_cli_identify_unknown, NULL) == 0);
    cli_result r;
    char *argv[] = {"diffsynth", "--socket", s.path, "identify", "a.safetensors", "it's.safetensors", NULL};
    REQUIRE(run_cli(&r, argv) == 0);
    server_stop(&s);
    CHECK(r.status == 1);
    CHECK_STR_EQ(r.out,
                 /* python: f'Cannot detect the model type. File: {path}. Model hash: {h}' with
                  * path=['/m/a.safetensors', "/m/it's.safetensors"] */
                 "Cannot detect the model type. File: ['/m/a.safetensors', \"/m/it's.safetensors\"]. "
                 "Model hash: d41d8cd98f00b204e9800998ecf8427e\n"
                 "Closest known configs by shared tensor names:\n"
                 "  qwen_image_vae (diffsynth.models.qwen_image_vae.QwenImageVAE) shares 190 of 194 "
                 "tensor names\n");
}

static char *two_clients[] = {"uid:1000", "alice"};

static void script_cli_models(int fd, void *arg)
{
    (void)arg;
    diffsynth_v1_Envelope req;
    if (srv_read(fd, &req, 0) != 0)
        return;
    diffsynth_v1_TierBytes tiers0[2] = {{"disk", 2ULL << 30}, {"host", 512}};
    diffsynth_v1_TierBytes tiers1[1] = {{"device", 3ULL << 20}};
    diffsynth_v1_LoadedModel m[2] = {diffsynth_v1_LoadedModel_init_zero, diffsynth_v1_LoadedModel_init_zero};
    m[0].model_id = "m1";
    m[0].model_name = "qwen_image_vae";
    m[0].parameter_count = 126892531;
    m[0].tensor_count = 194;
    m[0].tiers_count = 2;
    m[0].tiers = tiers0;
    m[0].clients_count = 2;
    m[0].clients = two_clients;
    m[0].paths_count = 1;
    m[0].paths = loaded_paths;
    m[1].model_id = "m12";
    m[1].model_name = "x";
    m[1].parameter_count = 5;
    m[1].tensor_count = 1;
    m[1].tiers_count = 1;
    m[1].tiers = tiers1;
    diffsynth_v1_Envelope resp = request_of(diffsynth_v1_Envelope_list_models_result_tag);
    resp.request_id = req.request_id;
    resp.body.list_models_result.models_count = 2;
    resp.body.list_models_result.models = m;
    srv_send(fd, &resp, 0);
    pb_release(diffsynth_v1_Envelope_fields, &req);
}

static void test_cli_models_table(void)
{
    server s;
    REQUIRE(server_start(&s, script_cli_models, NULL) == 0);
    cli_result r;
    char *argv[] = {"diffsynth", "--socket", s.path, "models", NULL};
    REQUIRE(run_cli(&r, argv) == 0);
    server_stop(&s);
    CHECK(r.status == 0);
    CHECK_STR_EQ(r.out,
                 "ID   NAME            PARAMS    TENSORS  disk     host   device   CLIENTS         PATHS\n"
                 "m1   qwen_image_vae  126.89 M  194      2.0 GiB  512 B  0 B      uid:1000,alice  /m/a.safetensors\n"
                 "m12  x               5         1        0 B      0 B    3.0 MiB  -               -\n");
}

static void test_cli_exit_codes(void)
{
    cli_result r;
    char *unreachable[] = {"diffsynth", "--socket", "/nonexistent-dir/d.sock", "status", NULL};
    REQUIRE(run_cli(&r, unreachable) == 0);
    CHECK(r.status == 3);
    CHECK_CONTAINS(r.err, "diffsynthd &");
    CHECK_CONTAINS(r.err, "--socket");

    char *usage[] = {"diffsynth", "unload", NULL};
    REQUIRE(run_cli(&r, usage) == 0);
    CHECK(r.status == 2);
    char *unknown[] = {"diffsynth", "frobnicate", NULL};
    REQUIRE(run_cli(&r, unknown) == 0);
    CHECK(r.status == 2);
    char *badopt[] = {"diffsynth", "models", "--bogus", NULL};
    REQUIRE(run_cli(&r, badopt) == 0);
    CHECK(r.status == 2);

    char *help[] = {"diffsynth", "--help", NULL};
    REQUIRE(run_cli(&r, help) == 0);
    CHECK(r.status == 0);
    static const char *commands[] = {"identify", "load", "unload", "models", "status", "configs",
                                     "help"};
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        CHECK_CONTAINS(r.out, commands[i]);
        char *cmd_help[] = {"diffsynth", (char *)commands[i], "--help", NULL};
        cli_result rc;
        REQUIRE(run_cli(&rc, cmd_help) == 0);
        CHECK(rc.status == 0);
        CHECK_CONTAINS(rc.out, "--json");
    }
    CHECK_CONTAINS(r.out, "$DIFFSYNTH_SOCKET");
    char *version[] = {"diffsynth", "--version", NULL};
    REQUIRE(run_cli(&r, version) == 0);
    CHECK(r.status == 0);
    CHECK_CONTAINS(r.out, "diffsynth ");
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    RUN(test_call_roundtrip);
    RUN(test_two_requests_in_flight);
    RUN(test_daemon_errors);
    RUN(test_oversized_length);
    RUN(test_settable_limit);
    RUN(test_garbage_frame);
    RUN(test_disconnect);
    RUN(test_timeout_keeps_partial_frame);
    RUN(test_large_request_partial_writes);
    RUN(test_cancel_from_callback);
    RUN(test_connect_failure);
    RUN(test_absolute_path);
    RUN(test_cli_load_output);
    RUN(test_cli_load_unknown_hash);
    RUN(test_cli_identify_json);
    RUN(test_cli_configs_verify);
    RUN(test_cli_identify_unknown);
    RUN(test_cli_models_table);
    RUN(test_cli_exit_codes);
    return test_summary();
}
