/* Memory that can vanish under the daemon fails one request, never the daemon: a client's
 * named shared-memory object shrunk while its request runs, a model file truncated while a
 * step reads it, a model file rewritten in place. The client library's sealed memfds work end
 * to end and an unsealed memfd is refused. The model is the real Qwen-Image VAE's key set
 * (sparse: zero weights), whose "decode" step reports progress after each layer: the test
 * strikes after the first report, while most layers are still to run. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "test.h"

#define LH 8
#define LW 8
#define LATENT_BYTES (16 * LH * LW * 2)
#define IMAGE_BYTES ((size_t)3 * 8 * LH * 8 * LW * 2)

static it_env env;
static char **vae;
static size_t vae_n;
static char vae_id[32];
static uint16_t latents[16 * LH * LW];
/* The image of the first successful decode: every later one must match it. */
static void *reference_image;

static void check_unharmed(void) { CHECK_MSG(it_status_ok(&env), "the daemon stopped answering"); }

/* The model's LoadedModel.stale from ListModels (malloc'd, "" when fresh), NULL when absent. */
static char *stale_of(const char *id)
{
    ds_client *c = it_connect(&env);
    if (!c)
        return NULL;
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_list_models_tag;
    char *out = NULL;
    if (it_call(c, &req, &resp) == DS_CLIENT_OK) {
        const diffsynth_v1_ListModelsResponse *l = &resp.body.list_models_result;
        for (pb_size_t i = 0; i < l->models_count; i++)
            if (l->models[i].model_id && strcmp(l->models[i].model_id, id) == 0)
                out = strdup(l->models[i].stale ? l->models[i].stale : "");
    }
    ds_client_envelope_free(&resp);
    ds_client_close(c);
    return out;
}

static void decode_request(ds_client_step_request *r, ds_client_tensor *in, const char *id,
                           size_t inline_limit)
{
    memset(r, 0, sizeof *r);
    *in = (ds_client_tensor){"latents", diffsynth_v1_DType_BF16, 4, {1, 16, LH, LW}, latents,
                             sizeof latents};
    r->model_id = id;
    r->step = "decode";
    r->inputs = in;
    r->input_count = 1;
    r->inline_limit = inline_limit;
}

/* A decode through the client library: 0, or -1 with *code the daemon's code. */
static int decode(const char *id, size_t inline_limit, ds_client_progress_fn progress,
                  void *user, ds_client_step_result *res, int *code, char *message, size_t size)
{
    ds_client *c = it_connect(&env);
    if (!c)
        return -1;
    ds_client_step_request r;
    ds_client_tensor in;
    decode_request(&r, &in, id, inline_limit);
    int rc = ds_client_run_step(c, &r, res, IT_CALL_TIMEOUT_MS, progress, user, NULL);
    *code = ds_client_last_code(c);
    if (message)
        snprintf(message, size, "%s", ds_client_last_error(c));
    ds_client_close(c);
    return rc == DS_CLIENT_OK ? 0 : -1;
}

static int same_as_reference(const ds_client_step_result *res)
{
    return res->output_count == 1 && res->outputs[0].nbytes == IMAGE_BYTES && reference_image &&
           memcmp(res->outputs[0].data, reference_image, IMAGE_BYTES) == 0;
}

/* --- sealed memfds ------------------------------------------------------------------------ */

/* Inline, then everything through the library's memfd (input and output): same image. */
static void test_memfd_end_to_end(void)
{
    ds_client_step_result a = {0}, b = {0};
    int code = 0;
    char message[512];
    REQUIRE(decode(vae_id, 0, NULL, NULL, &a, &code, message, sizeof message) == 0);
    REQUIRE(a.output_count == 1);
    CHECK_STR_EQ(a.outputs[0].name, "image");
    REQUIRE(a.outputs[0].nbytes == IMAGE_BYTES);
    reference_image = malloc(IMAGE_BYTES);
    REQUIRE(reference_image);
    memcpy(reference_image, a.outputs[0].data, IMAGE_BYTES);
    CHECK_MSG(decode(vae_id, 1, NULL, NULL, &b, &code, message, sizeof message) == 0, "%s",
              message);
    CHECK(same_as_reference(&b));
    ds_client_step_result_free(&a);
    ds_client_step_result_free(&b);
    check_unharmed();
}

/* A RunStep whose latents lie in the frame's descriptor `fd_index`. */
static void memfd_request(diffsynth_v1_Envelope *req, diffsynth_v1_Tensor *t, uint32_t fd_index)
{
    static int64_t shape[] = {1, 16, LH, LW};
    memset(req, 0, sizeof *req);
    memset(t, 0, sizeof *t);
    req->which_body = diffsynth_v1_Envelope_run_step_tag;
    req->body.run_step.model_id = vae_id;
    req->body.run_step.step = "decode";
    req->body.run_step.inputs = t;
    req->body.run_step.inputs_count = 1;
    t->name = "latents";
    t->dtype = diffsynth_v1_DType_BF16;
    t->shape = shape;
    t->shape_count = 4;
    t->has_shm = true;
    t->shm.name = "";
    t->shm.fd_index = fd_index;
    t->shm.size = sizeof latents;
}

/* Sends `req` with `fds` and waits for its final frame: the daemon's code, or 0. */
static int send_with_fds(ds_client *c, diffsynth_v1_Envelope *req, const int *fds, size_t n,
                         char *message, size_t size)
{
    req->request_id = ds_client_next_id(c);
    if (ds_client_send_fds(c, req, fds, n) != DS_CLIENT_OK)
        return -1;
    for (;;) {
        diffsynth_v1_Envelope in;
        if (ds_client_recv(c, &in, IT_CALL_TIMEOUT_MS) != DS_CLIENT_OK)
            return -1;
        if (in.which_body == diffsynth_v1_Envelope_event_tag) {
            ds_client_envelope_free(&in);
            continue;
        }
        int code = in.which_body == diffsynth_v1_Envelope_error_tag ? (int)in.body.error.code : 0;
        snprintf(message, size, "%s",
                 code && in.body.error.message ? in.body.error.message : "");
        ds_client_envelope_free(&in);
        return code;
    }
}

/* The daemon's open descriptors that this file passed it: the memfds named "it-latents" and
 * the plain file. Counting every descriptor would race with connection sockets, which the
 * daemon closes on its loop some time after the client hangs up. */
static int daemon_passed_fds(void)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)env.pid);
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char link[PATH_MAX], target[PATH_MAX];
        snprintf(link, sizeof link, "%s/%s", dir, e->d_name);
        ssize_t len = readlink(link, target, sizeof target - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        n += strstr(target, "memfd:it-latents") != NULL || strstr(target, "/plain-file") != NULL;
    }
    closedir(d);
    return n;
}

/* The daemon closes passed descriptors on its loop, a refused frame's when it closes that
 * connection (after the client saw EOF): up to 30 s, as a loop under ASan on two busy cores
 * can be off the CPU for seconds. */
static int daemon_passed_fds_settle(void)
{
    int n = daemon_passed_fds();
    for (int i = 0; i < 1500 && n != 0; i++) {
        struct timespec t = {0, 20 * 1000 * 1000};
        nanosleep(&t, NULL);
        n = daemon_passed_fds();
    }
    return n;
}

static int make_memfd(int seal)
{
    int fd = memfd_create("it-latents", MFD_CLOEXEC | (seal ? MFD_ALLOW_SEALING : 0));
    if (fd < 0 || ftruncate(fd, sizeof latents) != 0 ||
        pwrite(fd, latents, sizeof latents, 0) != (ssize_t)sizeof latents)
        return -1;
    if (seal && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) != 0)
        return -1;
    return fd;
}

static void test_memfd_seals_checked(void)
{
    REQUIRE(daemon_passed_fds() == 0);
    ds_client *c = it_connect(&env);
    REQUIRE(c);
    diffsynth_v1_Envelope req;
    diffsynth_v1_Tensor t;
    char message[512];
    int unsealed = make_memfd(0), sealed = make_memfd(1);
    REQUIRE(unsealed >= 0 && sealed >= 0);

    memfd_request(&req, &t, 0);
    CHECK(send_with_fds(c, &req, &unsealed, 1, message, sizeof message) == 3);
    CHECK_CONTAINS(message, "input \"latents\": the passed memfd is not sealed against shrinking");

    /* The same request with the sealed one (second of two descriptors) decodes. */
    int both[2] = {unsealed, sealed};
    memfd_request(&req, &t, 1);
    int code = send_with_fds(c, &req, both, 2, message, sizeof message);
    CHECK_MSG(code == 0, "code %d: %s", code, message);

    memfd_request(&req, &t, 2);
    CHECK(send_with_fds(c, &req, both, 2, message, sizeof message) == 3);
    CHECK_CONTAINS(message, "fd_index 2, but the frame carries 2 file descriptors");

    /* A shared-memory file that is not a memfd cannot be sealed at all. */
    char path[256];
    snprintf(path, sizeof path, "%s/plain-file", env.dir);
    int plain = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    REQUIRE(plain >= 0);
    REQUIRE(pwrite(plain, latents, sizeof latents, 0) == (ssize_t)sizeof latents);
    memfd_request(&req, &t, 0);
    CHECK(send_with_fds(c, &req, &plain, 1, message, sizeof message) == 3);
    CHECK_CONTAINS(message, "not sealed against shrinking");
    close(plain);
    close(unsealed);
    close(sealed);
    ds_client_close(c);
    check_unharmed();
}

/* A frame that declares descriptors it did not bring has lost its pairing with them: the
 * connection is closed after an error, and only that connection. */
static void test_missing_fds_close_the_connection(void)
{
    int fd = it_raw_connect(env.socket);
    REQUIRE(fd >= 0);
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.request_id = 7;
    req.fd_count = 2;
    req.which_body = diffsynth_v1_Envelope_status_tag;
    uint8_t *frame;
    size_t len;
    REQUIRE(it_encode_frame(&req, &frame, &len) == 0);
    CHECK(it_raw_write(fd, frame, len) == 0);
    free(frame);
    diffsynth_v1_Envelope in;
    REQUIRE(it_raw_read_frame(fd, &in, IT_CALL_TIMEOUT_MS) == 0);
    CHECK(in.which_body == diffsynth_v1_Envelope_error_tag && in.body.error.code == 3);
    CHECK_CONTAINS(in.which_body == diffsynth_v1_Envelope_error_tag ? in.body.error.message : "",
                   "declares 2 file descriptors");
    ds_client_envelope_free(&in);
    CHECK(it_raw_wait_eof(fd, IT_CALL_TIMEOUT_MS));
    close(fd);
    check_unharmed();
}

/* One frame with `n` descriptors on its first byte, through a raw socket. */
static int raw_send_with_fds(int sock, const uint8_t *frame, size_t len, const int *fds, size_t n)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * 32)];
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov = {.iov_base = (void *)frame, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = CMSG_SPACE(sizeof(int) * n)};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * n);
    memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * n);
    return sendmsg(sock, &msg, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

/* Sends a Status frame declaring `declared` descriptors with `sent` of them; expects an
 * INVALID_ARGUMENT naming `needle`, then the connection closed. */
static void expect_fd_refusal(uint32_t declared, size_t sent, const char *needle)
{
    int memfd = make_memfd(1);
    REQUIRE(memfd >= 0 && sent <= 32);
    int fds[32];
    for (size_t i = 0; i < sent; i++)
        fds[i] = memfd;
    int sock = it_raw_connect(env.socket);
    REQUIRE(sock >= 0);
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.request_id = 9;
    req.fd_count = declared;
    req.which_body = diffsynth_v1_Envelope_status_tag;
    uint8_t *frame;
    size_t len;
    REQUIRE(it_encode_frame(&req, &frame, &len) == 0);
    CHECK(raw_send_with_fds(sock, frame, len, fds, sent) == 0);
    free(frame);
    diffsynth_v1_Envelope in;
    REQUIRE(it_raw_read_frame(sock, &in, IT_CALL_TIMEOUT_MS) == 0);
    CHECK(in.which_body == diffsynth_v1_Envelope_error_tag && in.body.error.code == 3);
    CHECK_CONTAINS(in.which_body == diffsynth_v1_Envelope_error_tag ? in.body.error.message : "",
                   needle);
    ds_client_envelope_free(&in);
    CHECK(it_raw_wait_eof(sock, IT_CALL_TIMEOUT_MS));
    close(sock);
    close(memfd);
    check_unharmed();
}

static void test_fd_bounds(void)
{
    expect_fd_refusal(9, 9, "declares 9 file descriptors (Envelope.fd_count), at most 8");
    expect_fd_refusal(0, 17, "more than 16 file descriptors arrived that no frame claims");
    /* Every descriptor passed since the memfd tests began, used or refused, is closed. */
    int still_open = daemon_passed_fds_settle();
    CHECK_MSG(still_open == 0, "the daemon still holds %d of the descriptors passed to it",
              still_open);
}

/* --- named shared memory from older clients ------------------------------------------------ */

/* The output region is written at the very end of the step: shrinking the object after the
 * first progress report makes that write fault. */
static void test_named_shm_shrunk_mid_request(void)
{
    char name[64];
    snprintf(name, sizeof name, "/ds-it-fault-%d", (int)getpid());
    shm_unlink(name);
    int shm = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    REQUIRE(shm >= 0);
    REQUIRE(ftruncate(shm, 1 << 20) == 0);

    ds_client *c = it_connect(&env);
    REQUIRE(c);
    static int64_t shape[] = {1, 16, LH, LW};
    pb_bytes_array_t *data = calloc(1, PB_BYTES_ARRAY_T_ALLOCSIZE(sizeof latents));
    REQUIRE(data);
    data->size = sizeof latents;
    memcpy(data->bytes, latents, sizeof latents);
    diffsynth_v1_Tensor t = {.name = "latents", .dtype = diffsynth_v1_DType_BF16, .shape = shape,
                             .shape_count = 4, .data = data};
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero;
    req.which_body = diffsynth_v1_Envelope_run_step_tag;
    diffsynth_v1_RunStepRequest *r = &req.body.run_step;
    r->model_id = vae_id;
    r->step = "decode";
    r->inputs = &t;
    r->inputs_count = 1;
    r->has_output_region = true;
    r->output_region.name = name;
    r->output_region.size = 1 << 20;
    r->max_inline_output_bytes = 1;
    req.request_id = ds_client_next_id(c);
    REQUIRE(ds_client_send(c, &req) == DS_CLIENT_OK);
    int shrunk = 0, code = -1, progress_after = 0;
    char message[1024] = "";
    for (;;) {
        diffsynth_v1_Envelope in;
        if (ds_client_recv(c, &in, IT_CALL_TIMEOUT_MS) != DS_CLIENT_OK)
            break;
        if (in.which_body == diffsynth_v1_Envelope_event_tag) {
            if (!shrunk) {
                CHECK(ftruncate(shm, 0) == 0);
                shrunk = 1;
            } else {
                progress_after = 1;
            }
            ds_client_envelope_free(&in);
            continue;
        }
        code = in.which_body == diffsynth_v1_Envelope_error_tag ? (int)in.body.error.code : 0;
        if (code && in.body.error.message)
            snprintf(message, sizeof message, "%s", in.body.error.message);
        ds_client_envelope_free(&in);
        break;
    }
    CHECK_MSG(shrunk && progress_after, "the step reported no progress after the shrink");
    CHECK_MSG(code == 15, "code %d: %s", code, message);
    CHECK_CONTAINS(message, "output_region: shared-memory object");
    CHECK_CONTAINS(message, name);
    CHECK_CONTAINS(message, "shrank while the request used it");
    free(data);
    ds_client_close(c);
    close(shm);
    shm_unlink(name);

    /* Nobody else noticed: another client's step gives the same image as before. */
    check_unharmed();
    ds_client_step_result res = {0};
    CHECK_MSG(decode(vae_id, 1, NULL, NULL, &res, &code, message, sizeof message) == 0, "%s",
              message);
    CHECK(same_as_reference(&res));
    ds_client_step_result_free(&res);
}

/* --- model files ---------------------------------------------------------------------------- */

static void truncate_on_first_progress(const diffsynth_v1_Progress *p, uint64_t id, void *user)
{
    (void)p;
    (void)id;
    int *state = user;
    if (*state == 0)
        *state = truncate(vae[0], 0) == 0 ? 1 : -1;
    else if (*state == 1)
        *state = 2;
}

static void test_model_truncated_mid_step(void)
{
    ds_client_step_result res = {0};
    int state = 0, code = 0;
    char message[1024];
    int rc = decode(vae_id, 0, truncate_on_first_progress, &state, &res, &code, message,
                    sizeof message);
    ds_client_step_result_free(&res);
    REQUIRE(state != 0 && state != -1);
    CHECK_MSG(state == 2, "the step reported no progress after the truncation");
    CHECK_MSG(rc != 0 && code == 15, "rc %d code %d: %s", rc, code, message);
    CHECK_CONTAINS(message, vae[0]);
    CHECK_CONTAINS(message, "shrank while this request read its data");
    check_unharmed();

    /* Stale from now on: refused before anything runs, and listed so. */
    CHECK(decode(vae_id, 0, NULL, NULL, &res, &code, message, sizeof message) != 0);
    CHECK_MSG(code == 9, "code %d: %s", code, message);
    CHECK_CONTAINS(message, "is stale");
    CHECK_CONTAINS(message, vae[0]);
    ds_client_step_result_free(&res);
    char *stale = stale_of(vae_id);
    CHECK_CONTAINS(stale, vae[0]);
    free(stale);

    /* The file written again and loaded again: a new model, not the stale one, and it works. */
    char **again = NULL;
    size_t again_n = 0;
    REQUIRE(it_make_model(&env, "qwen_image_vae", "vae", 1, &again, &again_n) == 0);
    ds_st_paths_free(again, again_n);
    char fresh_id[32];
    REQUIRE(it_load(&env, vae, vae_n, fresh_id, sizeof fresh_id) == 0);
    CHECK(strcmp(fresh_id, vae_id) != 0);
    CHECK(decode(fresh_id, 0, NULL, NULL, &res, &code, message, sizeof message) == 0);
    CHECK(same_as_reference(&res));
    ds_client_step_result_free(&res);
    stale = stale_of(fresh_id);
    CHECK_STR_EQ(stale, "");
    free(stale);
    snprintf(vae_id, sizeof vae_id, "%s", fresh_id);
}

/* Same size, same bytes even, but written: the modification time says the weights may differ. */
static void test_model_rewritten_in_place(void)
{
    struct stat before;
    REQUIRE(stat(vae[0], &before) == 0);
    /* Coarse file-system clocks: let the next write get a later time. */
    struct timespec pause = {0, 50 * 1000 * 1000};
    nanosleep(&pause, NULL);
    int fd = open(vae[0], O_WRONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    uint8_t zero[4] = {0};
    CHECK(pwrite(fd, zero, sizeof zero, before.st_size - (off_t)sizeof zero) == sizeof zero);
    close(fd);
    struct stat after;
    REQUIRE(stat(vae[0], &after) == 0);
    CHECK(after.st_size == before.st_size && after.st_ino == before.st_ino);

    ds_client_step_result res = {0};
    int code = 0;
    char message[1024];
    CHECK(decode(vae_id, 0, NULL, NULL, &res, &code, message, sizeof message) != 0);
    CHECK_MSG(code == 9, "code %d: %s", code, message);
    CHECK_CONTAINS(message, "is stale");
    CHECK_CONTAINS(message, "modified in place");
    CHECK_CONTAINS(message, vae[0]);
    ds_client_step_result_free(&res);
    check_unharmed();
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIFFSYNTHD [DIFFSYNTH]\n", argv[0]);
        return 2;
    }
    it_env_init(&env, argv[1]);
    if (it_make_model(&env, "qwen_image_vae", "vae", 1, &vae, &vae_n) != 0) {
        it_env_cleanup(&env);
        return 1;
    }
    const char *extra[] = {"--threads", "2", NULL};
    if (it_daemon_start(&env, extra) != 0 ||
        it_load(&env, vae, vae_n, vae_id, sizeof vae_id) != 0) {
        it_dump_log(&env);
        it_env_cleanup(&env);
        return 1;
    }
    unsigned s = 7;
    for (size_t i = 0; i < sizeof latents / 2; i++) {
        s = s * 1103515245u + 12345u;
        latents[i] = (uint16_t)(0x3C00 | ((s >> 16) & 0x7F)); /* bf16 in [0.0078, 0.0156) */
    }
    RUN(test_memfd_end_to_end);
    RUN(test_memfd_seals_checked);
    RUN(test_missing_fds_close_the_connection);
    RUN(test_fd_bounds);
    RUN(test_named_shm_shrunk_mid_request);
    RUN(test_model_truncated_mid_step);
    RUN(test_model_rewritten_in_place);

    int status = -1;
    if (it_daemon_stop(&env, &status) != 0 || status != 0) {
        fprintf(stderr, "FAIL the daemon did not stop cleanly (status %d)\n", status);
        test_failures++;
    }
    if (test_failures)
        it_dump_log(&env);
    free(reference_image);
    ds_st_paths_free(vae, vae_n);
    it_env_cleanup(&env);
    return test_summary();
}
