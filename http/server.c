/* The HTTP side: libmicrohttpd with a thread per connection, so a handler may block on the
 * daemon (the client library is blocking) without holding up other clients, and an SSE stream
 * may wait for its job's next event. Bodies are buffered up to --max-body, then routed. */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/gateway.h"
#include "http/jobs.h"
#include "http/metrics.h"

#define ID_MAX 47
/* Seconds a keep-alive connection may idle between requests. */
#define IDLE_TIMEOUT_S 120

typedef struct route {
    const char *method;
    const char *pattern; /* "{id}" matches one path segment of [A-Za-z0-9_-] */
    gw_handler *fn;
} route;

static const route routes[] = {
    {"GET", "/", gw_page},
    {"GET", "/healthz", gw_ops_healthz},
    {"GET", "/readyz", gw_ops_readyz},
    {"GET", "/metrics", gw_ops_metrics},
    {"POST", "/v1/images/generations", gw_openai_generations},
    {"POST", "/v1/images/edits", gw_openai_edits},
    {"GET", "/v1/models", gw_openai_models},
    {"GET", "/v1/pipelines", gw_pipelines_list},
    {"POST", "/sdapi/v1/txt2img", gw_a1111_txt2img},
    {"POST", "/sdapi/v1/img2img", gw_a1111_img2img},
    {"GET", "/sdapi/v1/progress", gw_a1111_progress},
    {"POST", "/sdapi/v1/interrupt", gw_a1111_interrupt},
    {"GET", "/sdapi/v1/options", gw_a1111_options},
    {"POST", "/sdapi/v1/options", gw_a1111_set_options},
    {"GET", "/sdapi/v1/sd-models", gw_a1111_sd_models},
    {"GET", "/sdapi/v1/samplers", gw_a1111_samplers},
    {"POST", "/v1/videos", gw_jobs_create_video},
    {"GET", "/v1/videos/{id}", gw_jobs_get_video},
    {"GET", "/v1/videos/{id}/content", gw_jobs_video_content},
    {"DELETE", "/v1/videos/{id}", gw_jobs_delete_video},
    {"GET", "/v1/jobs", gw_jobs_list},
    /* The same jobs by their own name, for any pipeline: what the web page uses. */
    {"POST", "/v1/jobs", gw_jobs_create_video},
    {"GET", "/v1/jobs/{id}", gw_jobs_get_video},
    {"GET", "/v1/jobs/{id}/content", gw_jobs_video_content},
    {"DELETE", "/v1/jobs/{id}", gw_jobs_delete_video},
    {"GET", "/v1/jobs/{id}/events", gw_jobs_events},
};

typedef struct conn_state {
    char *body;
    size_t len, cap;
    bool too_large;
} conn_state;

static atomic_int stopping;

/* Whether `path` matches `pattern`; the {id} segment goes to id. */
static bool match(const char *pattern, const char *path, char id[ID_MAX + 1])
{
    const char *hole = strstr(pattern, "{id}");
    if (!hole)
        return strcmp(pattern, path) == 0;
    size_t pre = (size_t)(hole - pattern);
    if (strncmp(pattern, path, pre) != 0)
        return false;
    const char *p = path + pre;
    size_t n = 0;
    while (p[n] && p[n] != '/')
        n++;
    if (n == 0 || n > ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z') ||
              (p[i] >= '0' && p[i] <= '9') || p[i] == '_' || p[i] == '-'))
            return false;
    if (strcmp(hole + 4, p + n) != 0)
        return false;
    memcpy(id, p, n);
    id[n] = '\0';
    return true;
}

/* Compares in time that depends on the key's length only, not on where a guess differs. */
static bool key_matches(const char *given, const char *key)
{
    size_t gl = strlen(given), kl = strlen(key);
    unsigned char diff = gl != kl;
    for (size_t i = 0; i < kl; i++)
        diff |= (unsigned char)(key[i] ^ (i < gl ? given[i] : 0));
    return diff == 0;
}

static bool authorized(const gw *g, struct MHD_Connection *conn)
{
    if (!g->cfg.api_key)
        return true;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7;
    while (*h == ' ')
        h++;
    return key_matches(h, g->cfg.api_key);
}

static void add_cors(const gw *g, struct MHD_Response *resp)
{
    if (!g->cfg.cors_origin)
        return;
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", g->cfg.cors_origin);
    MHD_add_response_header(resp, "Vary", "Origin");
}

static enum MHD_Result send_reply(gw *g, struct MHD_Connection *conn, const char *route_name,
                                  gw_response *r)
{
    struct MHD_Response *resp = r->stream;
    if (!resp) {
        resp = MHD_create_response_from_buffer(r->len, r->body, MHD_RESPMEM_MUST_FREE);
        if (!resp) {
            free(r->body);
            return MHD_NO;
        }
        r->body = NULL;
        if (r->content_type)
            MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
    }
    if (r->retry_after > 0) {
        char s[16];
        snprintf(s, sizeof s, "%d", r->retry_after);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, s);
    }
    add_cors(g, resp);
    enum MHD_Result ok = MHD_queue_response(conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    gw_metrics_request(g->metrics, route_name, r->status);
    return ok;
}

static void dispatch(gw *g, struct MHD_Connection *conn, const char *path, const char *method,
                     conn_state *st, gw_response *r, const char **route_name)
{
    gw_family family = strncmp(path, "/sdapi/", 7) == 0 ? GW_A1111 : GW_OPENAI;
    *route_name = "unmatched";
    char id[ID_MAX + 1] = "";
    const route *hit = NULL;
    bool path_known = false;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0] && !hit; i++) {
        if (!match(routes[i].pattern, path, id))
            continue;
        path_known = true;
        *route_name = routes[i].pattern;
        if (strcmp(routes[i].method, method) == 0)
            hit = &routes[i];
    }
    /* Probes and the page (which holds no data; its calls carry the key) need no key. */
    bool open = hit && (hit->fn == gw_ops_healthz || hit->fn == gw_ops_readyz || hit->fn == gw_page);
    if (!open && !authorized(g, conn)) {
        gw_reply_error(r, family, 401, NULL,
                       "a valid API key is required: send \"Authorization: Bearer KEY\"");
        return;
    }
    if (!hit) {
        if (path_known)
            gw_reply_error(r, family, 405, NULL, "%s does not take %s", path, method);
        else
            gw_reply_error(r, family, 404, NULL, "no such endpoint: %s %s", method, path);
        return;
    }
    if (st->too_large) {
        gw_reply_error(r, family, 413, NULL,
                       "the request body is larger than this gateway's limit of %zu bytes "
                       "(--max-body)",
                       g->cfg.max_body);
        return;
    }
    gw_request req = {conn, method, path, id[0] ? id : NULL, st->body ? st->body : "", st->len,
                      family};
    hit->fn(g, &req, r);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    gw *g = cls;
    conn_state *st = *con_cls;
    if (!st) {
        if (!(st = calloc(1, sizeof *st)))
            return MHD_NO;
        *con_cls = st;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > g->cfg.max_body)
            st->too_large = true;
        if (!st->too_large)
            return MHD_YES;
        /* Answered before the body is read: MHD then closes the connection instead of
         * reading what the client announced. */
    } else if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (st->too_large)
            return MHD_YES;
        if (n > g->cfg.max_body - st->len) {
            st->too_large = true;
            free(st->body);
            st->body = NULL;
            st->len = st->cap = 0;
            return MHD_YES;
        }
        if (st->len + n + 1 > st->cap) {
            size_t cap = st->cap ? st->cap : 4096;
            while (cap < st->len + n + 1)
                cap *= 2;
            char *grown = realloc(st->body, cap);
            if (!grown)
                return MHD_NO;
            st->body = grown;
            st->cap = cap;
        }
        memcpy(st->body + st->len, upload_data, n);
        st->len += n;
        st->body[st->len] = '\0';
        return MHD_YES;
    }
    gw_response r = {.status = 500};
    const char *route_name = "unmatched";
    if (strcmp(method, "OPTIONS") == 0 && g->cfg.cors_origin) {
        /* A browser's preflight: answered without the key, which it never sends here. */
        struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL,
                                                                    MHD_RESPMEM_PERSISTENT);
        if (!resp)
            return MHD_NO;
        add_cors(g, resp);
        MHD_add_response_header(resp, "Access-Control-Allow-Methods", "GET, POST, DELETE");
        MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                                "Authorization, Content-Type");
        MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
        enum MHD_Result ok = MHD_queue_response(conn, 204, resp);
        MHD_destroy_response(resp);
        gw_metrics_request(g->metrics, "preflight", 204);
        return ok;
    }
    dispatch(g, conn, url, method, st, &r, &route_name);
    return send_reply(g, conn, route_name, &r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    conn_state *st = *con_cls;
    if (st) {
        free(st->body);
        free(st);
    }
    *con_cls = NULL;
}

bool gw_stopping(void) { return atomic_load(&stopping) != 0; }

int gw_serve(gw *g)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV}, *ai = NULL;
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)g->cfg.port);
    int err = getaddrinfo(g->cfg.listen_host, port, &hints, &ai);
    if (err != 0) {
        fprintf(stderr, "diffsynth-http: --listen %s: %s\n", g->cfg.listen_host,
                gai_strerror(err));
        return 2;
    }
    /* Signals are taken by sigwait below: every thread MHD starts inherits the blocked mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, g->cfg.port, NULL, NULL, on_request, g, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_CONNECTION_LIMIT, g->cfg.max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)IDLE_TIMEOUT_S, MHD_OPTION_NOTIFY_COMPLETED, on_completed, g, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!d) {
        fprintf(stderr, "diffsynth-http: cannot listen on %s:%u: %s\n", g->cfg.listen_host,
                (unsigned)g->cfg.port, strerror(errno));
        return 1;
    }
    fprintf(stderr, "diffsynth-http: listening on http://%s:%u/ (daemon socket %s)\n",
            g->cfg.listen_host, (unsigned)g->cfg.port,
            g->cfg.socket_path ? g->cfg.socket_path : "default");
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "diffsynth-http: signal %d, stopping\n", sig);
    atomic_store(&stopping, 1);
    /* Running jobs are cancelled first, so the handlers that wait for them return and MHD can
     * join its connection threads. */
    gw_jobs_cancel_all(g->jobs);
    MHD_stop_daemon(d);
    return 0;
}
