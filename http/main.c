/* diffsynth-http: options, then the server. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/gateway.h"
#include "http/jobs.h"
#include "http/metrics.h"

#define MAX_REQUIRED 32

static const char help[] =
    "Usage: diffsynth-http [OPTION]...\n"
    "\n"
    "An HTTP gateway to diffsynthd: it speaks the APIs image and video frontends already use\n"
    "(OpenAI images and videos, AUTOMATIC1111's /sdapi/v1) and turns each request into a\n"
    "pipeline run on the daemon, over the daemon's Unix socket. HTTP never runs in the process\n"
    "that owns the GPU. Run one gateway beside each daemon.\n"
    "\n"
    "Options:\n"
    "  --listen HOST:PORT     where to listen (default 127.0.0.1:7860; [::1]:PORT for IPv6).\n"
    "                         An address other than loopback needs --api-key\n"
    "  --socket PATH          the daemon's socket (default: $DIFFSYNTH_SOCKET, then\n"
    "                         $XDG_RUNTIME_DIR/diffsynthd.sock, then /tmp/diffsynthd-UID.sock)\n"
    "  --api-key KEY          require \"Authorization: Bearer KEY\" on every request but\n"
    "                         /healthz and /readyz (default: $DIFFSYNTH_HTTP_API_KEY; none)\n"
    "  --max-body BYTES       refuse request bodies over BYTES with 413 (default 33554432)\n"
    "  --cors ORIGIN          allow browsers on ORIGIN (or *) to call the API (default: off)\n"
    "  --max-jobs N           generation jobs queued or running at once; more are answered\n"
    "                         429 with Retry-After (default 16)\n"
    "  --keep-jobs N          finished jobs kept for polling and download (default 32)\n"
    "  --max-connections N    HTTP connections at once (default 256)\n"
    "  --require-model NAME   /readyz answers 200 only while a model of this name\n"
    "                         (e.g. qwen_image_dit) is loaded in the daemon; repeatable\n"
    "  --daemon-timeout S     seconds of silence from the daemon before a request fails\n"
    "                         with 503 (default 600)\n"
    "  -h, --help             this text\n"
    "\n"
    "Endpoints:\n"
    "  POST /v1/images/generations, POST /v1/images/edits, GET /v1/models     (OpenAI)\n"
    "  POST /sdapi/v1/txt2img, /sdapi/v1/img2img, /sdapi/v1/interrupt,\n"
    "  GET /sdapi/v1/progress, /sdapi/v1/options, /sdapi/v1/sd-models, /sdapi/v1/samplers\n"
    "  POST /v1/videos, GET|DELETE /v1/videos/{id}, GET /v1/videos/{id}/content,\n"
    "  GET /v1/jobs, GET /v1/jobs/{id}/events (Server-Sent Events)\n"
    "  GET /healthz, GET /readyz, GET /metrics (Prometheus text)\n"
    "\n"
    "Example:\n"
    "  diffsynthd --socket /run/ds.sock --model-root /models &\n"
    "  diffsynth-http --socket /run/ds.sock --listen 0.0.0.0:7860 --api-key \"$KEY\"\n"
    "  curl -H \"Authorization: Bearer $KEY\" localhost:7860/v1/images/generations \\\n"
    "      -d '{\"prompt\": \"a cat\", \"size\": \"512x512\", \"response_format\": \"b64_json\"}'\n";

static int usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "diffsynth-http: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry 'diffsynth-http --help'.\n");
    va_end(ap);
    return 2;
}

static int parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
    char *end = NULL;
    errno = 0;
    if (!s || !*s || *s == '-')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return -1;
    *out = v;
    return 0;
}

/* HOST:PORT or [V6]:PORT. */
static int parse_listen(const char *s, gw_config *cfg)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return -1;
    const char *host = s;
    size_t hl = (size_t)(colon - s);
    if (s[0] == '[') {
        if (hl < 3 || s[hl - 1] != ']')
            return -1;
        host++;
        hl -= 2;
    }
    if (hl >= sizeof cfg->listen_host)
        return -1;
    unsigned long long port;
    if (parse_uint(colon + 1, 65535, &port) != 0 || port == 0)
        return -1;
    memcpy(cfg->listen_host, host, hl);
    cfg->listen_host[hl] = '\0';
    cfg->port = (uint16_t)port;
    return 0;
}

/* Whether every address the host name gives is a loopback one. */
static bool loopback_only(const char *host)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(host, NULL, &hints, &ai) != 0)
        return false;
    bool only = ai != NULL;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
            const struct sockaddr_in *v4 = (const void *)a->ai_addr;
            only = only && (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
        } else if (a->ai_family == AF_INET6) {
            const struct sockaddr_in6 *v6 = (const void *)a->ai_addr;
            only = only && IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr);
        } else {
            only = false;
        }
    }
    freeaddrinfo(ai);
    return only;
}

int main(int argc, char **argv)
{
    static gw g;
    static const char *required[MAX_REQUIRED];
    gw_config *cfg = &g.cfg;
    snprintf(cfg->listen_host, sizeof cfg->listen_host, "127.0.0.1");
    cfg->port = 7860;
    cfg->max_body = (size_t)32 << 20;
    cfg->max_jobs = 16;
    cfg->keep_jobs = 32;
    cfg->max_connections = 256;
    cfg->daemon_timeout_ms = 600000;
    cfg->api_key = getenv("DIFFSYNTH_HTTP_API_KEY");
    if (cfg->api_key && !*cfg->api_key)
        cfg->api_key = NULL;
    cfg->require_models = required;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(help, stdout);
            return 0;
        }
        static const char *const with_value[] = {"--listen", "--socket", "--api-key",
                                                 "--max-body", "--cors", "--max-jobs",
                                                 "--keep-jobs", "--max-connections",
                                                 "--require-model", "--daemon-timeout"};
        const char *opt = NULL, *val = NULL;
        for (size_t k = 0; k < sizeof with_value / sizeof with_value[0] && !opt; k++) {
            size_t n = strlen(with_value[k]);
            if (strcmp(a, with_value[k]) == 0) {
                opt = with_value[k];
                if (i + 1 >= argc)
                    return usage("%s needs a value", opt);
                val = argv[++i];
            } else if (strncmp(a, with_value[k], n) == 0 && a[n] == '=') {
                opt = with_value[k];
                val = a + n + 1;
            }
        }
        if (!opt)
            return usage("unknown option %s", a);
        unsigned long long v = 0;
        if (strcmp(opt, "--listen") == 0) {
            if (parse_listen(val, cfg) != 0)
                return usage("--listen wants HOST:PORT (PORT 1-65535), not \"%s\"", val);
        } else if (strcmp(opt, "--socket") == 0) {
            cfg->socket_path = val;
        } else if (strcmp(opt, "--api-key") == 0) {
            if (!*val)
                return usage("--api-key must not be empty");
            cfg->api_key = val;
        } else if (strcmp(opt, "--cors") == 0) {
            cfg->cors_origin = val;
        } else if (strcmp(opt, "--require-model") == 0) {
            if (cfg->require_count >= MAX_REQUIRED)
                return usage("at most %d --require-model options", MAX_REQUIRED);
            required[cfg->require_count++] = val;
        } else if (strcmp(opt, "--max-body") == 0) {
            if (parse_uint(val, (unsigned long long)1 << 32, &v) != 0 || v < 1024)
                return usage("--max-body wants a byte count from 1024 to 4294967296, not \"%s\"",
                             val);
            cfg->max_body = (size_t)v;
        } else {
            if (parse_uint(val, 100000, &v) != 0 || v == 0)
                return usage("%s wants a whole number from 1 to 100000, not \"%s\"", opt, val);
            if (strcmp(opt, "--max-jobs") == 0)
                cfg->max_jobs = (unsigned)v;
            else if (strcmp(opt, "--keep-jobs") == 0)
                cfg->keep_jobs = (unsigned)v;
            else if (strcmp(opt, "--max-connections") == 0)
                cfg->max_connections = (unsigned)v;
            else
                cfg->daemon_timeout_ms = (int)(v * 1000);
        }
    }
    if (!cfg->api_key && !loopback_only(cfg->listen_host)) {
        fprintf(stderr, "diffsynth-http: --listen %s is reachable from other machines: give "
                        "--api-key KEY (or $DIFFSYNTH_HTTP_API_KEY) so that only clients with "
                        "the key can spend this GPU\n",
                cfg->listen_host);
        return 2;
    }
    g.metrics = gw_metrics_new();
    g.jobs = gw_jobs_new(&g);
    if (!g.metrics || !g.jobs) {
        fputs("diffsynth-http: out of memory\n", stderr);
        return 1;
    }
    int status = gw_serve(&g);
    gw_jobs_free(g.jobs);
    gw_metrics_free(g.metrics);
    return status;
}
