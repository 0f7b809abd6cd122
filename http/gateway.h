/* diffsynth-http: what the gateway's files share. The gateway is a stateless HTTP client of
 * diffsynthd (DESIGN decision 11): every generation becomes a job run on its own thread over its
 * own daemon connection, and every API family (OpenAI, AUTOMATIC1111, jobs, operations) is a
 * set of handlers that read a buffered request and fill a gw_response. */
#ifndef DS_HTTP_GATEWAY_H
#define DS_HTTP_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct MHD_Connection;
struct MHD_Response;

typedef struct gw_config {
    char listen_host[256];
    uint16_t port;
    const char *socket_path;        /* NULL: the client library's default */
    const char *api_key;            /* NULL: no authentication (loopback only) */
    size_t max_body;                /* bytes of one request body */
    const char *cors_origin;        /* NULL: no CORS headers */
    unsigned max_jobs;              /* generation jobs queued or running at once; more get 429 */
    unsigned keep_jobs;             /* finished jobs kept for polling, oldest dropped first */
    unsigned max_connections;       /* HTTP connections at once */
    const char *const *require_models;  /* model names /readyz wants loaded */
    size_t require_count;
    int daemon_timeout_ms;          /* silence allowed on a daemon request */
} gw_config;

typedef struct gw_jobs gw_jobs;
typedef struct gw_metrics gw_metrics;

typedef struct gw {
    gw_config cfg;
    gw_jobs *jobs;
    gw_metrics *metrics;
} gw;

/* Which API's error shape a path answers with. */
typedef enum gw_family {
    GW_OPENAI, /* {"error": {"message", "type", "param", "code"}} */
    GW_A1111,  /* {"detail": ...} as FastAPI writes it */
} gw_family;

typedef struct gw_request {
    struct MHD_Connection *conn;
    const char *method;
    const char *path;
    const char *arg;     /* the {id} of a path with one; NULL otherwise */
    const char *body;    /* NUL-terminated (not counted in len); "" when none */
    size_t len;
    gw_family family;
} gw_request;

typedef struct gw_response {
    int status;
    char *body;                   /* malloc'd; NULL = empty */
    size_t len;
    const char *content_type;     /* static storage */
    int retry_after;              /* seconds; 0 = no Retry-After header */
    struct MHD_Response *stream;  /* set instead of body for a streamed reply */
} gw_response;

/* Why a request failed, as an HTTP status and the API field at fault. */
typedef struct gw_failure {
    int status;
    int retry_after;
    char param[48];      /* "" when no field is at fault */
    char message[1024];
} gw_failure;

void gw_fail(gw_failure *f, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Fills `r` with the family's error shape for `f`. */
void gw_reply_failure(gw_response *r, gw_family family, const gw_failure *f);
/* gw_fail then gw_reply_failure. */
void gw_reply_error(gw_response *r, gw_family family, int status, const char *param,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* `json` (a jansson json_t *, reference stolen) serialized compactly with `status`. */
void gw_reply_json(gw_response *r, int status, void *json);
/* Bytes copied into the reply. */
void gw_reply_bytes(gw_response *r, int status, const char *content_type, const void *data,
                    size_t len);

/* The handlers of each API family, routed by http/server.c. */
typedef void gw_handler(gw *g, const gw_request *req, gw_response *r);

gw_handler gw_openai_generations, gw_openai_edits, gw_openai_models;
gw_handler gw_a1111_txt2img, gw_a1111_img2img, gw_a1111_progress, gw_a1111_interrupt,
    gw_a1111_options, gw_a1111_set_options, gw_a1111_sd_models, gw_a1111_samplers;
gw_handler gw_jobs_create_video, gw_jobs_get_video, gw_jobs_video_content, gw_jobs_delete_video,
    gw_jobs_events, gw_jobs_list;
gw_handler gw_ops_healthz, gw_ops_readyz, gw_ops_metrics, gw_page, gw_pipelines_list;

/* True once the gateway is shutting down: streams end instead of waiting for more. */
bool gw_stopping(void);

/* Starts the HTTP server; blocks until SIGINT or SIGTERM. Returns the exit status. */
int gw_serve(gw *g);

#endif
