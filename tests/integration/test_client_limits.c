/* One client must not hurt the others: connection slots, idle and half-sent frames, unread
 * replies, large frames, inline tensor bytes, poisoned strings, reused request ids and other
 * uids' references.
 *
 * Other uids are simulated by a child process that switches to `nobody` (the tests run as
 * root); where that is impossible those cases are skipped and the test exits 77. Memory is
 * read from /proc/PID/status (VmRSS) of the daemon.
 */
#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "test.h"

#define READ_TIMEOUT_MS 30000
#define IDLE_TIMEOUT_S "4"
#define FRAME_TIMEOUT_S "1"

#define INLINE_LIMIT "4096"

static it_env env;
static char **cn, **vae;
static size_t cn_n, vae_n;
static int skipped;

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* The daemon's resident memory in KiB (VmRSS), or -1. */
static long daemon_rss_kib(void)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)env.pid);
    char *text = it_read_file(path, NULL);
    if (!text)
        return -1;
    long kib = -1;
    const char *line = strstr(text, "\nVmRSS:");
    if (line)
        kib = strtol(line + 7, NULL, 10);
    free(text);
    return kib;
}

static int send_envelope(int fd, const diffsynth_v1_Envelope *req)
{
    uint8_t *frame;
    size_t len;
    if (it_encode_frame(req, &frame, &len) != 0)
        return -1;
    int rc = it_raw_write(fd, frame, len);
    free(frame);
    return rc;
}

/* Reads replies until an Error or a result arrives for some request (progress events are
 * skipped). 0 and *out, or -1. */
static int read_terminal(int fd, diffsynth_v1_Envelope *out)
{
    for (;;) {
        if (it_raw_read_frame(fd, out, READ_TIMEOUT_MS) != 0)
            return -1;
        if (out->which_body != diffsynth_v1_Envelope_event_tag)
            return 0;
        ds_client_envelope_free(out);
    }
}

static void expect_error(int fd, uint64_t id, int code, const char *needle)
{
    diffsynth_v1_Envelope resp;
    if (read_terminal(fd, &resp) != 0) {
        CHECK_MSG(0, "no reply for request %llu", (unsigned long long)id);
        return;
    }
    CHECK_MSG(resp.request_id == id, "reply for request %llu, expected %llu",
              (unsigned long long)resp.request_id, (unsigned long long)id);
    CHECK_MSG(resp.which_body == diffsynth_v1_Envelope_error_tag, "reply kind %u",
              (unsigned)resp.which_body);
    if (resp.which_body == diffsynth_v1_Envelope_error_tag) {
        CHECK_MSG((int)resp.body.error.code == code, "code %s, expected %s (%s)",
                  ds_client_code_name((int)resp.body.error.code), ds_client_code_name(code),
                  resp.body.error.message ? resp.body.error.message : "");
        CHECK_CONTAINS(resp.body.error.message, needle);
    }
    ds_client_envelope_free(&resp);
}

/* --- another uid ---------------------------------------------------------------------------- */

/* Runs fn in a child under uid and gid `nobody`: its exit status, or 77 when that cannot be
 * done (not root, no such user). The socket and its directory are opened to others first. */
static int as_nobody(int (*fn)(void *), void *arg)
{
    if (geteuid() != 0)
        return 77;
    struct passwd *pw = getpwnam("nobody");
    if (!pw || pw->pw_uid == 0)
        return 77;
    if (chmod(env.dir, 0711) != 0 || chmod(env.socket, 0666) != 0)
        return 77;
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return 77;
    if (pid == 0) {
        if (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0)
            _exit(77);
        _exit(fn(arg));
    }
    int status = -1;
    if (it_wait_pid(pid, 60000, &status) != 0)
        return -1;
    return status;
}

static void note_skip(const char *what)
{
    fprintf(stderr, "skip %s: cannot run a client as another uid (not root, or no `nobody`)\n",
            what);
    skipped = 1;
}

static int nobody_status(void *arg)
{
    (void)arg;
    return it_status_ok(&env) ? 0 : 1;
}

/* --- connections (daemon with short timeouts) ---------------------------------------------- */

/* Waits until the daemon counts no connection but the one asking (earlier clients' closes may
 * still be on their way). */
static bool wait_no_connections(void)
{
    uint64_t deadline = it_now_ms() + READ_TIMEOUT_MS;
    while (it_now_ms() < deadline) {
        ds_client *c = it_connect(&env);
        if (!c)
            return false;
        diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
        req.which_body = diffsynth_v1_Envelope_status_tag;
        bool alone = false;
        if (it_call(c, &req, &resp) == DS_CLIENT_OK) {
            alone = resp.body.status_result.clients == 1;
            ds_client_envelope_free(&resp);
        }
        ds_client_close(c);
        if (alone)
            return true;
        sleep_ms(20);
    }
    return false;
}

/* 256 idle connections of one uid, the global limit: a quarter are accepted, the rest told
 * why and closed; another uid still gets in; a half-sent frame and the idle ones time out, after
 * which the first uid gets in again. */
static void test_slots(void)
{
    enum { N = 256, PER_UID = 64 };
    int fds[N];
    REQUIRE(wait_no_connections());
    sleep_ms(200);
    for (int i = 0; i < N; i++) {
        fds[i] = it_raw_connect(env.socket);
        REQUIRE(fds[i] >= 0);
    }
    /* The refused ones have a reason waiting, then EOF; the accepted ones have nothing. */
    struct pollfd pfds[N];
    int readable = 0;
    uint64_t deadline = it_now_ms() + READ_TIMEOUT_MS;
    while (readable < N - PER_UID && it_now_ms() < deadline) {
        for (int i = 0; i < N; i++)
            pfds[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
        REQUIRE(poll(pfds, N, 0) >= 0);
        readable = 0;
        for (int i = 0; i < N; i++)
            readable += (pfds[i].revents & (POLLIN | POLLHUP)) != 0;
        sleep_ms(20);
    }
    sleep_ms(200);
    for (int i = 0; i < N; i++)
        pfds[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
    REQUIRE(poll(pfds, N, 0) >= 0);
    int refused = 0, accepted[N], n_accepted = 0;
    for (int i = 0; i < N; i++) {
        if (!(pfds[i].revents & (POLLIN | POLLHUP))) {
            accepted[n_accepted++] = fds[i];
            continue;
        }
        expect_error(fds[i], 0, diffsynth_v1_Code_RESOURCE_EXHAUSTED, "--max-connections-per-uid");
        CHECK(it_raw_wait_eof(fds[i], READ_TIMEOUT_MS));
        close(fds[i]);
        refused++;
    }
    /* The last Status connection may still have counted while the first of these came in. */
    CHECK_MSG(refused == N - n_accepted && (n_accepted == PER_UID || n_accepted == PER_UID - 1),
              "%d refused, %d accepted", refused, n_accepted);
    REQUIRE(n_accepted > 0);
    /* A frame begun and never finished (2 of 4 header bytes), well before the idle timeout. */
    uint64_t start = it_now_ms();
    const uint8_t header[] = {0x40, 0x00};
    CHECK(it_raw_write(accepted[0], header, sizeof header) == 0);

    /* This uid is at its cap; another is not locked out. */
    int rc = as_nobody(nobody_status, NULL);
    if (rc == 77)
        note_skip("another uid's connection");
    else
        CHECK_MSG(rc == 0, "a client of uid nobody got no Status (%d)", rc);

    /* DEADLINE_EXCEEDED after --frame-timeout. */
    expect_error(accepted[0], 0, diffsynth_v1_Code_DEADLINE_EXCEEDED, "--frame-timeout");
    uint64_t took = it_now_ms() - start;
    CHECK_MSG(took >= 900 && took < 10000, "closed after %llu ms", (unsigned long long)took);
    CHECK(it_raw_wait_eof(accepted[0], READ_TIMEOUT_MS));

    /* The idle ones are told and closed after --idle-timeout. */
    for (int i = 1; i < n_accepted; i++) {
        expect_error(accepted[i], 0, diffsynth_v1_Code_UNAVAILABLE, "--idle-timeout");
        CHECK(it_raw_wait_eof(accepted[i], READ_TIMEOUT_MS));
    }
    for (int i = 0; i < n_accepted; i++)
        close(accepted[i]);
    CHECK_MSG(it_status_ok(&env), "the first uid did not get in again");
}

/* A request restarts the idle clock: two quiet spells that together pass the timeout. */
static void test_activity_restarts_idle_clock(void)
{
    int fd = it_raw_connect(env.socket);
    REQUIRE(fd >= 0);
    sleep_ms(2500);
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.request_id = 1;
    req.which_body = diffsynth_v1_Envelope_status_tag;
    CHECK(send_envelope(fd, &req) == 0);
    diffsynth_v1_Envelope resp;
    REQUIRE(read_terminal(fd, &resp) == 0);
    CHECK(resp.which_body == diffsynth_v1_Envelope_status_result_tag);
    ds_client_envelope_free(&resp);
    sleep_ms(2500);
    req.request_id = 2;
    CHECK(send_envelope(fd, &req) == 0);
    REQUIRE(read_terminal(fd, &resp) == 0);
    CHECK_MSG(resp.which_body == diffsynth_v1_Envelope_status_result_tag,
              "closed although it sent a request %d ms before", 2500);
    ds_client_envelope_free(&resp);
    close(fd);
}

/* A client that sends and never reads holds its slot only until --idle-timeout. */
static void test_unread_replies_time_out(void)
{
    REQUIRE(wait_no_connections());
    int fd = it_raw_connect(env.socket);
    REQUIRE(fd >= 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.which_body = diffsynth_v1_Envelope_list_configs_tag;
    req.request_id = 1;
    uint8_t *frame;
    size_t len;
    REQUIRE(it_encode_frame(&req, &frame, &len) == 0);
    uint64_t start = it_now_ms();
    for (int i = 0; i < 2000; i++)
        if (send(fd, frame, len, MSG_NOSIGNAL | MSG_DONTWAIT) < (ssize_t)len)
            break;
    free(frame);
    /* Still counted a moment later, gone after the timeout. */
    sleep_ms(500);
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    diffsynth_v1_Envelope status = diffsynth_v1_Envelope_init_zero, resp;
    status.which_body = diffsynth_v1_Envelope_status_tag;
    REQUIRE(it_call(c, &status, &resp) == DS_CLIENT_OK);
    CHECK_MSG(resp.body.status_result.clients == 2, "%u clients",
              (unsigned)resp.body.status_result.clients);
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    CHECK_MSG(wait_no_connections(), "the silent reader was never closed");
    uint64_t took = it_now_ms() - start;
    CHECK_MSG(took >= 3500, "closed after %llu ms, before the timeout", (unsigned long long)took);
    close(fd);
}

/* --- memory (daemon with default limits) --------------------------------------------------- */

/* Eight connections flood ListConfigs (6 bytes in, tens of KB out) and never read: the daemon
 * stops reading them once the uid's unread replies pass its limit (64 MiB by default), so its
 * memory stays near that, not 8 x 16 MiB or hundreds of MiB per connection. */
static void test_flood_never_reads(void)
{
    enum { CONNS = 8 };
    long before = daemon_rss_kib();
    REQUIRE(before > 0);
    int fds[CONNS];
    for (int i = 0; i < CONNS; i++) {
        fds[i] = it_raw_connect(env.socket);
        REQUIRE(fds[i] >= 0);
        int small = 4096;
        setsockopt(fds[i], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    }
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.which_body = diffsynth_v1_Envelope_list_configs_tag;
    req.request_id = 1;
    uint8_t *frame;
    size_t len;
    REQUIRE(it_encode_frame(&req, &frame, &len) == 0);
    uint8_t batch[6000];
    size_t per = sizeof batch / len;
    for (size_t k = 0; k < per; k++)
        memcpy(batch + k * len, frame, len);
    free(frame);
    /* Send until every socket is full for half a second: the daemon has stopped reading. */
    uint64_t sent = 0, last_progress = it_now_ms();
    long peak = before;
    while (it_now_ms() - last_progress < 500 && sent < ((uint64_t)64 << 20)) {
        for (int i = 0; i < CONNS; i++) {
            ssize_t n = send(fds[i], batch, per * len, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                sent += (uint64_t)n;
                last_progress = it_now_ms();
            }
        }
        long now = daemon_rss_kib();
        peak = now > peak ? now : peak;
        sleep_ms(5);
    }
    /* The daemon may still be working through what the sockets hold: watch it a while. */
    long after = daemon_rss_kib();
    for (uint64_t until = it_now_ms() + 2000; it_now_ms() < until; sleep_ms(20)) {
        after = daemon_rss_kib();
        peak = after > peak ? after : peak;
    }
    fprintf(stderr, "flood: %llu request bytes taken, VmRSS %ld -> %ld KiB (peak %ld)\n",
            (unsigned long long)sent, before, after, peak);
    /* 64 MiB for the uid's unread replies, plus room for allocator slack. */
    CHECK_MSG(peak - before < 100 * 1024, "the daemon grew by %ld KiB", peak - before);
    CHECK_MSG(it_daemon_alive(&env), "the daemon died");
    /* A client of the same uid that reads its replies keeps being served meanwhile. */
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    for (int i = 0; i < 3; i++) {
        diffsynth_v1_Envelope status = diffsynth_v1_Envelope_init_zero, resp;
        status.which_body = diffsynth_v1_Envelope_status_tag;
        int rc = it_call(c, &status, &resp);
        CHECK_MSG(rc == DS_CLIENT_OK, "Status %d during the flood: %s", i,
                  ds_client_last_error(c));
        if (rc == DS_CLIENT_OK)
            ds_client_envelope_free(&resp);
    }
    ds_client_close(c);
    for (int i = 0; i < CONNS; i++)
        close(fds[i]);
    CHECK_MSG(it_status_ok(&env), "no Status after the flood");
}

/* A 60 MiB frame (a Status padded with an unknown field, which the daemon skips) is answered,
 * and its buffer released while the connection stays open. */
static void test_large_frame_released(void)
{
    const size_t total = (size_t)60 << 20;
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.request_id = 77;
    req.which_body = diffsynth_v1_Envelope_status_tag;
    uint8_t *frame;
    size_t len;
    REQUIRE(it_encode_frame(&req, &frame, &len) == 0);
    uint8_t *big = malloc(total);
    REQUIRE(big);
    memcpy(big, frame, len);
    free(frame);
    /* Field 1000, wire type 2: a 2-byte tag, a 4-byte length, then the padding. */
    size_t body = total - 4;
    size_t pad = body - (len - 4) - 6;
    uint8_t *p = big + len;
    *p++ = (uint8_t)(((1000 << 3) | 2) & 0x7F) | 0x80;
    *p++ = (uint8_t)(((1000 << 3) | 2) >> 7);
    for (int k = 0; k < 3; k++)
        *p++ = (uint8_t)((pad >> (7 * k)) & 0x7F) | 0x80;
    *p++ = (uint8_t)(pad >> 21);
    memset(p, 'x', pad);
    for (int k = 0; k < 4; k++)
        big[k] = (uint8_t)(body >> (8 * k));

    int fd = it_raw_connect(env.socket);
    REQUIRE(fd >= 0);
    long before = daemon_rss_kib();
    CHECK(it_raw_write(fd, big, total) == 0);
    free(big);
    diffsynth_v1_Envelope resp;
    REQUIRE(read_terminal(fd, &resp) == 0);
    CHECK(resp.request_id == 77);
    CHECK_MSG(resp.which_body == diffsynth_v1_Envelope_status_result_tag, "kind %u (%s)",
              (unsigned)resp.which_body,
              resp.which_body == diffsynth_v1_Envelope_error_tag ? resp.body.error.message : "");
    ds_client_envelope_free(&resp);
    /* The reply may leave before the daemon is done with the frame; the next one cannot. */
    req.request_id = 78;
    CHECK(send_envelope(fd, &req) == 0);
    REQUIRE(read_terminal(fd, &resp) == 0);
    CHECK(resp.request_id == 78 && resp.which_body == diffsynth_v1_Envelope_status_result_tag);
    ds_client_envelope_free(&resp);
    long after = daemon_rss_kib();
    fprintf(stderr, "60 MiB frame: VmRSS %ld -> %ld KiB with the connection open\n", before,
            after);
    CHECK_MSG(before > 0 && after - before < 16 * 1024, "the daemon still holds %ld KiB more",
              after - before);
    close(fd);
}

static void unload_all(void);

/* A step's inline tensor past --max-queued-inline-bytes is refused before it is queued. */
static void test_inline_limit(void)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_load_tag;
    req.body.load.paths = vae;
    req.body.load.paths_count = (pb_size_t)vae_n;
    REQUIRE(it_call(c, &req, &resp) == DS_CLIENT_OK);
    REQUIRE(resp.body.load_result.models_count == 1);
    char vae_id[32];
    snprintf(vae_id, sizeof vae_id, "%s", resp.body.load_result.models[0].model_id);
    ds_client_envelope_free(&resp);

    enum { FLOATS = 2048 };
    pb_bytes_array_t *data = calloc(1, sizeof *data + FLOATS * 4);
    REQUIRE(data);
    data->size = FLOATS * 4;
    int64_t shape[] = {FLOATS};
    diffsynth_v1_Tensor t = diffsynth_v1_Tensor_init_zero;
    t.name = "latents";
    t.dtype = diffsynth_v1_DType_F32;
    t.shape = shape;
    t.shape_count = 1;
    t.data = data;
    memset(&req, 0, sizeof req);
    req.which_body = diffsynth_v1_Envelope_run_step_tag;
    req.body.run_step.model_id = vae_id;
    req.body.run_step.step = "decode";
    req.body.run_step.inputs = &t;
    req.body.run_step.inputs_count = 1;
    int rc = it_call(c, &req, &resp);
    CHECK_MSG(rc == DS_CLIENT_EDAEMON &&
                  ds_client_last_code(c) == diffsynth_v1_Code_RESOURCE_EXHAUSTED,
              "rc %d, code %s: %s", rc, ds_client_code_name(ds_client_last_code(c)),
              ds_client_last_error(c));
    CHECK_CONTAINS(ds_client_last_error(c), "carries 8192 inline bytes");
    CHECK_CONTAINS(ds_client_last_error(c), "limit of " INLINE_LIMIT " bytes");
    CHECK_CONTAINS(ds_client_last_error(c), "--max-queued-inline-bytes");
    if (rc == DS_CLIENT_OK)
        ds_client_envelope_free(&resp);
    free(data);
    ds_client_close(c);
    unload_all();
}

/* --- strings and ids ------------------------------------------------------------------------ */

static void test_invalid_strings(void)
{
    int fd = it_raw_connect(env.socket);
    REQUIRE(fd >= 0);
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.request_id = 3;
    req.which_body = diffsynth_v1_Envelope_load_tag;
    req.body.load.paths = cn;
    req.body.load.paths_count = (pb_size_t)cn_n;
    req.body.load.client_name = "caf\xc3";
    CHECK(send_envelope(fd, &req) == 0);
    expect_error(fd, 3, diffsynth_v1_Code_INVALID_ARGUMENT, "load.client_name is not valid UTF-8");

    /* Envelope{request_id 4, load {paths [cn[0]], client_name "a\0b"}}, written by hand:
     * nanopb would stop at the NUL. */
    size_t plen = strlen(cn[0]);
    REQUIRE(plen < 100);
    uint8_t raw[160];
    size_t at = 4;
    raw[at++] = 0x08;
    raw[at++] = 4;
    raw[at++] = 0x62;
    raw[at++] = (uint8_t)(2 + plen + 5);
    raw[at++] = 0x0A;
    raw[at++] = (uint8_t)plen;
    memcpy(raw + at, cn[0], plen);
    at += plen;
    const uint8_t name[] = {0x12, 0x03, 'a', 0x00, 'b'};
    memcpy(raw + at, name, sizeof name);
    at += sizeof name;
    for (int k = 0; k < 4; k++)
        raw[k] = (uint8_t)((at - 4) >> (8 * k));
    CHECK(it_raw_write(fd, raw, at) == 0);
    expect_error(fd, 4, diffsynth_v1_Code_INVALID_ARGUMENT, "load.client_name holds a NUL byte");

    /* The connection goes on, and nothing entered the pool. */
    req.request_id = 5;
    req.which_body = diffsynth_v1_Envelope_status_tag;
    CHECK(send_envelope(fd, &req) == 0);
    diffsynth_v1_Envelope resp;
    REQUIRE(read_terminal(fd, &resp) == 0);
    CHECK(resp.request_id == 5 && resp.which_body == diffsynth_v1_Envelope_status_result_tag);
    ds_client_envelope_free(&resp);
    close(fd);
    char *snap = it_pool_snapshot(&env);
    CHECK_STR_EQ(snap, "");
    free(snap);
}

static void unload_all(void)
{
    char *snap = it_pool_snapshot(&env);
    char *line = snap;
    while (line && *line) {
        char *end = strchr(line, '\n');
        if (end)
            *end = '\0';
        char id[64] = "";
        sscanf(line, "%63s", id);
        ds_client *c = it_connect(&env);
        if (c) {
            diffsynth_v1_Envelope un = diffsynth_v1_Envelope_init_zero, resp;
            un.which_body = diffsynth_v1_Envelope_unload_tag;
            un.body.unload.model_id = id;
            un.body.unload.all_references = true;
            CHECK(it_call(c, &un, &resp) == DS_CLIENT_OK);
            ds_client_envelope_free(&resp);
            ds_client_close(c);
        }
        line = end ? end + 1 : NULL;
    }
    free(snap);
}

/* Counts, per kind, the final replies for request `id` until `expected` final replies for any
 * id arrived. */
typedef struct outcome {
    int results, cancelled, already, other, cancel_found;
} outcome;

static void collect(int fd, uint64_t id, uint64_t cancel_id, int expected, outcome *o)
{
    memset(o, 0, sizeof *o);
    for (int i = 0; i < expected; i++) {
        diffsynth_v1_Envelope resp;
        if (read_terminal(fd, &resp) != 0) {
            CHECK_MSG(0, "reply %d of %d missing", i + 1, expected);
            return;
        }
        if (resp.request_id == cancel_id &&
            resp.which_body == diffsynth_v1_Envelope_cancel_result_tag) {
            o->cancel_found = resp.body.cancel_result.found;
        } else if (resp.request_id != id) {
            o->other++;
        } else if (resp.which_body == diffsynth_v1_Envelope_load_result_tag) {
            o->results++;
        } else if (resp.which_body == diffsynth_v1_Envelope_error_tag &&
                   resp.body.error.code == diffsynth_v1_Code_ALREADY_EXISTS) {
            CHECK_CONTAINS(resp.body.error.message, "already in flight");
            o->already++;
        } else if (resp.which_body == diffsynth_v1_Envelope_error_tag &&
                   resp.body.error.code == diffsynth_v1_Code_CANCELLED) {
            o->cancelled++;
        } else {
            o->other++;
        }
        ds_client_envelope_free(&resp);
    }
    /* Nothing more may follow for the id. */
    diffsynth_v1_Envelope extra;
    if (it_raw_read_frame(fd, &extra, 300) == 0) {
        CHECK_MSG(0, "an extra reply for request %llu, kind %u",
                  (unsigned long long)extra.request_id, (unsigned)extra.which_body);
        ds_client_envelope_free(&extra);
    }
}

static void test_duplicate_request_id(void)
{
    int fd = it_raw_connect(env.socket);
    REQUIRE(fd >= 0);
    diffsynth_v1_Envelope load = diffsynth_v1_Envelope_init_zero;
    load.which_body = diffsynth_v1_Envelope_load_tag;
    load.body.load.paths = cn;
    load.body.load.paths_count = (pb_size_t)cn_n;
    load.body.load.client_name = "it-ids";
    /* Both in one write: the second arrives while the first is queued, whatever the timing. */
    uint8_t *f1, *f2;
    size_t l1, l2;
    load.request_id = 7;
    REQUIRE(it_encode_frame(&load, &f1, &l1) == 0);
    REQUIRE(it_encode_frame(&load, &f2, &l2) == 0);
    uint8_t both[4096];
    REQUIRE(l1 + l2 <= sizeof both);
    memcpy(both, f1, l1);
    memcpy(both + l1, f2, l2);
    free(f1);
    free(f2);
    CHECK(it_raw_write(fd, both, l1 + l2) == 0);
    outcome o;
    collect(fd, 7, 0, 2, &o);
    CHECK_MSG(o.results == 1 && o.already == 1 && o.cancelled == 0 && o.other == 0,
              "results %d, already %d, cancelled %d, other %d", o.results, o.already,
              o.cancelled, o.other);

    /* Twice the id and a cancel of it: one request is cancelled or answered, never both (the
     * cancel may come too late to find it: then the result comes). */
    diffsynth_v1_Envelope cancel = diffsynth_v1_Envelope_init_zero;
    cancel.which_body = diffsynth_v1_Envelope_cancel_tag;
    cancel.request_id = 10;
    cancel.body.cancel.target_request_id = 9;
    load.request_id = 9;
    uint8_t *f3;
    size_t l3;
    REQUIRE(it_encode_frame(&load, &f1, &l1) == 0);
    REQUIRE(it_encode_frame(&load, &f2, &l2) == 0);
    REQUIRE(it_encode_frame(&cancel, &f3, &l3) == 0);
    REQUIRE(l1 + l2 + l3 <= sizeof both);
    memcpy(both, f1, l1);
    memcpy(both + l1, f2, l2);
    memcpy(both + l1 + l2, f3, l3);
    free(f1);
    free(f2);
    free(f3);
    CHECK(it_raw_write(fd, both, l1 + l2 + l3) == 0);
    collect(fd, 9, 10, 3, &o);
    CHECK_MSG(o.already == 1 && o.results + o.cancelled == 1 && o.other == 0 &&
                  (o.cancel_found || o.results == 1),
              "results %d, cancelled %d, already %d, other %d, cancel found %d", o.results,
              o.cancelled, o.already, o.other, o.cancel_found);

    /* Once answered, the id is free again. */
    load.request_id = 7;
    CHECK(send_envelope(fd, &load) == 0);
    collect(fd, 7, 0, 1, &o);
    CHECK(o.results == 1);
    close(fd);
    unload_all();
}

/* --- ownership ------------------------------------------------------------------------------ */

static char owned_id[32];

static int nobody_unload(void *arg)
{
    (void)arg;
    ds_client *c = it_connect(&env);
    if (!c)
        return 10;
    int failures = 0;
    struct {
        const char *client;
        bool all;
        int code;
        const char *needle;
    } cases[] = {
        {"it-owner", false, diffsynth_v1_Code_PERMISSION_DENIED, "belongs to uid 0"},
        {NULL, true, diffsynth_v1_Code_PERMISSION_DENIED, "daemon's own uid"},
        {NULL, false, diffsynth_v1_Code_FAILED_PRECONDITION, "it-owner of uid 0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        diffsynth_v1_Envelope un = diffsynth_v1_Envelope_init_zero, resp;
        un.which_body = diffsynth_v1_Envelope_unload_tag;
        un.body.unload.model_id = owned_id;
        un.body.unload.client_name = (char *)cases[i].client;
        un.body.unload.all_references = cases[i].all;
        int rc = it_call(c, &un, &resp);
        int code = rc == DS_CLIENT_EDAEMON ? ds_client_last_code(c) : -1;
        if (code != cases[i].code) {
            fprintf(stderr, "nobody's unload case %zu: got %d, code %s (%s), expected %s\n", i,
                    rc, code >= 0 ? ds_client_code_name(code) : "none",
                    ds_client_last_error(c), ds_client_code_name(cases[i].code));
            failures++;
        } else if (!strstr(ds_client_last_error(c), cases[i].needle)) {
            fprintf(stderr, "nobody's unload case %zu: \"%s\" does not name \"%s\"\n", i,
                    ds_client_last_error(c), cases[i].needle);
            failures++;
        }
        if (rc == DS_CLIENT_OK)
            ds_client_envelope_free(&resp);
    }
    ds_client_close(c);
    return failures ? 1 : 0;
}

static void test_other_uid_cannot_unload(void)
{
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_load_tag;
    req.body.load.paths = cn;
    req.body.load.paths_count = (pb_size_t)cn_n;
    req.body.load.client_name = "it-owner";
    REQUIRE(it_call(c, &req, &resp) == DS_CLIENT_OK);
    REQUIRE(resp.body.load_result.models_count == 1);
    snprintf(owned_id, sizeof owned_id, "%s", resp.body.load_result.models[0].model_id);
    ds_client_envelope_free(&resp);
    ds_client_close(c);

    int rc = as_nobody(nobody_unload, NULL);
    if (rc == 77)
        note_skip("another uid's unload");
    else
        CHECK_MSG(rc == 0, "uid nobody's unloads (status %d)", rc);
    /* The reference is still there, and its owner drops it. */
    char *snap = it_pool_snapshot(&env);
    CHECK_CONTAINS(snap, "[it-owner]");
    free(snap);
    c = it_connect(&env);
    REQUIRE(c);
    diffsynth_v1_Envelope un = diffsynth_v1_Envelope_init_zero;
    un.which_body = diffsynth_v1_Envelope_unload_tag;
    un.body.unload.model_id = owned_id;
    un.body.unload.client_name = "it-owner";
    CHECK(it_call(c, &un, &resp) == DS_CLIENT_OK);
    CHECK(resp.body.unload_result.freed);
    ds_client_envelope_free(&resp);
    ds_client_close(c);
}

static int stop_daemon(void)
{
    int status = -1;
    if (it_daemon_stop(&env, &status) != 0 || status != 0) {
        fprintf(stderr, "FAIL the daemon did not stop cleanly (status %d)\n", status);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIFFSYNTHD [DIFFSYNTH]\n", argv[0]);
        return 2;
    }
    /* Sanitizer builds keep freed memory in a quarantine, which would count as held: the
     * daemon inherits this and returns freed memory at once, as the plain build does. */
    const char *asan = getenv("ASAN_OPTIONS");
    char asan_options[512];
    snprintf(asan_options, sizeof asan_options, "%s%squarantine_size_mb=0", asan ? asan : "",
             asan && asan[0] ? ":" : "");
    setenv("ASAN_OPTIONS", asan_options, 1);

    it_env_init(&env, argv[1]);
    if (it_make_model(&env, "qwen_image_blockwise_controlnet", "cn", 1, &cn, &cn_n) != 0 ||
        it_make_model(&env, "qwen_image_vae", "vae", 1, &vae, &vae_n) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    const char *short_timeouts[] = {"--idle-timeout", IDLE_TIMEOUT_S, "--frame-timeout",
                                    FRAME_TIMEOUT_S, NULL};
    if (it_daemon_start(&env, short_timeouts) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    RUN(test_slots);
    RUN(test_activity_restarts_idle_clock);
    RUN(test_unread_replies_time_out);
    if (stop_daemon() != 0)
        test_failures++;

    const char *small_inline[] = {"--max-queued-inline-bytes", INLINE_LIMIT, NULL};
    if (it_daemon_start(&env, small_inline) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    RUN(test_large_frame_released);
    RUN(test_flood_never_reads);
    RUN(test_inline_limit);
    RUN(test_invalid_strings);
    RUN(test_duplicate_request_id);
    RUN(test_other_uid_cannot_unload);
    if (stop_daemon() != 0)
        test_failures++;

    if (test_failures)
        it_dump_log(&env);
    ds_st_paths_free(cn, cn_n);
    ds_st_paths_free(vae, vae_n);
    it_env_cleanup(&env);
    int status = test_summary();
    return status == 0 && skipped ? 77 : status;
}
