/* The gateway's side of the daemon's socket. Every call opens its own connection and closes it:
 * the gateway keeps no state of the daemon's, so a daemon that restarts is simply reached again
 * by the next request, and the client library's one-client-per-thread rule holds trivially. */
#ifndef DS_HTTP_DAEMON_LINK_H
#define DS_HTTP_DAEMON_LINK_H

#include "client/diffsynth_client.h"
#include "http/gateway.h"

#define GW_MAX_PIPELINES 16
#define GW_MAX_PARAMS 32
#define GW_MAX_TENSORS 16
#define GW_NAME 64

typedef struct gw_param_info {
    char name[GW_NAME];
    char type[16];           /* "int", "uint64", "number" */
    double min, max;
    bool min_exclusive;
    bool has_default;
    char default_value[GW_NAME];
} gw_param_info;

typedef struct gw_pipeline_info {
    char name[GW_NAME];
    char summary[256];
    gw_param_info params[GW_MAX_PARAMS];
    int param_count;
    char inputs[GW_MAX_TENSORS][GW_NAME];
    int input_count;
    char roles[GW_MAX_TENSORS][GW_NAME];      /* role names */
    char role_models[GW_MAX_TENSORS][GW_NAME]; /* the model_name each role takes */
    int role_count;
    bool video;                                /* an output is video frames (a clip file) */
    unsigned size_multiple; /* sides in multiples of it are used as given; 0: any side is */
} gw_pipeline_info;

typedef struct gw_pipelines {
    gw_pipeline_info p[GW_MAX_PIPELINES];
    int count;
} gw_pipelines;

/* A connected client, or NULL with *f saying why (503). */
ds_client *gw_daemon_connect(const gw_config *cfg, gw_failure *f);

/* One request on a fresh connection; *resp is yours (ds_client_envelope_free). */
int gw_daemon_call(const gw_config *cfg, diffsynth_v1_Envelope *req, diffsynth_v1_Envelope *resp,
                   gw_failure *f);

/* ListPipelines, copied into *out. */
int gw_daemon_pipelines(const gw_config *cfg, gw_pipelines *out, gw_failure *f);

/* What an API makes: the image APIs (OpenAI images, AUTOMATIC1111) only still pictures,
 * /v1/videos only clips, /v1/jobs whatever the pipeline makes. */
typedef enum gw_output_kind { GW_MAKES_ANY, GW_MAKES_IMAGES, GW_MAKES_VIDEOS } gw_output_kind;

/* The pipeline named `name`, or when name is NULL or "" the first one that makes `kind`; NULL
 * with *f naming `param` when there is none of that name, the one named makes the other kind,
 * or none makes `kind`. */
const gw_pipeline_info *gw_pipeline_find(const gw_pipelines *all, const char *name,
                                         gw_output_kind kind, const char *param, gw_failure *f);
/* Whether `p` can serve an API that makes `kind`. */
bool gw_pipeline_makes(const gw_pipeline_info *p, gw_output_kind kind);
const gw_param_info *gw_pipeline_param(const gw_pipeline_info *p, const char *name);
bool gw_pipeline_has_input(const gw_pipeline_info *p, const char *name);

/* A client library failure as an HTTP status: no daemon 503, a full daemon 429, the daemon's
 * INVALID_ARGUMENT 400, and so on, with the daemon's message. */
void gw_failure_from_client(ds_client *c, int rc, const gw_config *cfg, gw_failure *f);

#endif
