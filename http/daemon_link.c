/* Calls on the daemon, and its answers as HTTP statuses. */
#include <stdio.h>
#include <string.h>

#include "http/daemon_link.h"

static const char *str(const char *s) { return s ? s : ""; }

static void copy(char *dst, size_t size, const char *src) { snprintf(dst, size, "%s", str(src)); }

ds_client *gw_daemon_connect(const gw_config *cfg, gw_failure *f)
{
    ds_client *c = ds_client_new();
    if (!c) {
        gw_fail(f, 500, NULL, "out of memory");
        return NULL;
    }
    int rc = ds_client_connect(c, cfg->socket_path);
    if (rc != DS_CLIENT_OK) {
        gw_failure_from_client(c, rc, cfg, f);
        ds_client_close(c);
        return NULL;
    }
    return c;
}

int gw_daemon_call(const gw_config *cfg, diffsynth_v1_Envelope *req, diffsynth_v1_Envelope *resp,
                   gw_failure *f)
{
    memset(resp, 0, sizeof *resp);
    ds_client *c = gw_daemon_connect(cfg, f);
    if (!c)
        return -1;
    int rc = ds_client_call(c, req, resp, cfg->daemon_timeout_ms, NULL, NULL);
    if (rc != DS_CLIENT_OK)
        gw_failure_from_client(c, rc, cfg, f);
    ds_client_close(c);
    return rc == DS_CLIENT_OK ? 0 : -1;
}

int gw_daemon_pipelines(const gw_config *cfg, gw_pipelines *out, gw_failure *f)
{
    memset(out, 0, sizeof *out);
    diffsynth_v1_Envelope req = diffsynth_v1_Envelope_init_zero, resp;
    req.which_body = diffsynth_v1_Envelope_list_pipelines_tag;
    if (gw_daemon_call(cfg, &req, &resp, f) != 0)
        return -1;
    const diffsynth_v1_ListPipelinesResponse *r = &resp.body.list_pipelines_result;
    for (pb_size_t i = 0; i < r->pipelines_count && out->count < GW_MAX_PIPELINES; i++) {
        const diffsynth_v1_PipelineInfo *p = &r->pipelines[i];
        gw_pipeline_info *o = &out->p[out->count++];
        copy(o->name, sizeof o->name, p->name);
        copy(o->summary, sizeof o->summary, p->summary);
        o->size_multiple = p->size_multiple;
        for (pb_size_t k = 0; k < p->params_count && o->param_count < GW_MAX_PARAMS; k++) {
            const diffsynth_v1_PipelineParam *q = &p->params[k];
            gw_param_info *x = &o->params[o->param_count++];
            copy(x->name, sizeof x->name, q->name);
            copy(x->type, sizeof x->type, q->type);
            x->min = q->min;
            x->max = q->max;
            x->min_exclusive = q->min_exclusive;
            x->has_default = q->has_default;
            copy(x->default_value, sizeof x->default_value, q->default_value);
        }
        for (pb_size_t k = 0; k < p->inputs_count && o->input_count < GW_MAX_TENSORS; k++)
            copy(o->inputs[o->input_count++], GW_NAME, p->inputs[k].name);
        for (pb_size_t k = 0; k < p->roles_count && o->role_count < GW_MAX_TENSORS; k++) {
            copy(o->roles[o->role_count], GW_NAME, p->roles[k].role);
            copy(o->role_models[o->role_count++], GW_NAME, p->roles[k].model_name);
        }
        for (pb_size_t k = 0; k < p->outputs_count; k++)
            o->video = o->video || p->outputs[k].video;
    }
    ds_client_envelope_free(&resp);
    return 0;
}

bool gw_pipeline_makes(const gw_pipeline_info *p, gw_output_kind kind)
{
    return kind == GW_MAKES_ANY || p->video == (kind == GW_MAKES_VIDEOS);
}

/* The names of the pipelines that make `kind`, ", "-separated, "none" when there are none. */
static void names_of(const gw_pipelines *all, gw_output_kind kind, char *out, size_t size)
{
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < all->count && used < size; i++) {
        if (!gw_pipeline_makes(&all->p[i], kind))
            continue;
        int n = snprintf(out + used, size - used, "%s%s", used ? ", " : "", all->p[i].name);
        used += n > 0 ? (size_t)n : 0;
    }
    if (!out[0])
        snprintf(out, size, "none");
}

const gw_pipeline_info *gw_pipeline_find(const gw_pipelines *all, const char *name,
                                         gw_output_kind kind, const char *param, gw_failure *f)
{
    static const char *const made[] = {"images or videos", "images", "videos"};
    char known[512];
    if (all->count == 0) {
        gw_fail(f, 503, NULL, "the daemon serves no pipelines");
        return NULL;
    }
    bool named = name && *name;
    for (int i = 0; i < all->count; i++) {
        const gw_pipeline_info *p = &all->p[i];
        if (named ? strcmp(p->name, name) != 0 : !gw_pipeline_makes(p, kind))
            continue;
        if (gw_pipeline_makes(p, kind))
            return p;
        names_of(all, kind, known, sizeof known);
        gw_fail(f, 400, param, "%s: the %s pipeline makes %s, and this endpoint makes %s "
                "(pipelines that do: %s)%s", param, p->name, p->video ? "videos" : "images",
                made[kind], known, p->video ? "; POST /v1/videos runs it" : "");
        return NULL;
    }
    names_of(all, GW_MAKES_ANY, known, sizeof known);
    if (named)
        gw_fail(f, 400, param, "%s: the daemon has no pipeline \"%.64s\"; it has: %s", param, name,
                known);
    else
        gw_fail(f, 400, param, "%s: the daemon serves no pipeline that makes %s (it has: %s), "
                "and none was named", param, made[kind], known);
    return NULL;
}

const gw_param_info *gw_pipeline_param(const gw_pipeline_info *p, const char *name)
{
    for (int i = 0; i < p->param_count; i++)
        if (strcmp(p->params[i].name, name) == 0)
            return &p->params[i];
    return NULL;
}

bool gw_pipeline_has_input(const gw_pipeline_info *p, const char *name)
{
    for (int i = 0; i < p->input_count; i++)
        if (strcmp(p->inputs[i], name) == 0)
            return true;
    return false;
}

void gw_failure_from_client(ds_client *c, int rc, const gw_config *cfg, gw_failure *f)
{
    const char *msg = c ? ds_client_last_error(c) : "out of memory";
    switch (rc) {
    case DS_CLIENT_ECONNECT:
    case DS_CLIENT_ECLOSED:
    case DS_CLIENT_EIO:
    case DS_CLIENT_ETIMEDOUT:
        gw_fail(f, 503, NULL, "the daemon is not answering (%s): %s",
                cfg->socket_path ? cfg->socket_path : "default socket", msg);
        f->retry_after = 5;
        return;
    case DS_CLIENT_EDAEMON:
        break;
    case DS_CLIENT_ENOMEM:
        gw_fail(f, 500, NULL, "out of memory: %s", msg);
        return;
    default:
        gw_fail(f, 502, NULL, "the daemon's reply broke the protocol: %s", msg);
        return;
    }
    int code = ds_client_last_code(c);
    int status = 500;
    switch (code) {
    case diffsynth_v1_Code_INVALID_ARGUMENT:
    case diffsynth_v1_Code_OUT_OF_RANGE:
        status = 400;
        break;
    case diffsynth_v1_Code_NOT_FOUND:
        status = 404;
        break;
    case diffsynth_v1_Code_FAILED_PRECONDITION:
        status = 409;
        break;
    case diffsynth_v1_Code_PERMISSION_DENIED:
    case diffsynth_v1_Code_UNAUTHENTICATED:
        status = 403;
        break;
    case diffsynth_v1_Code_CANCELLED:
        status = 409;
        break;
    case diffsynth_v1_Code_RESOURCE_EXHAUSTED:
        /* The daemon says "ask for a smaller size" for a request that can never fit, and
         * "try again" for one that does not fit beside the work admitted now. */
        status = strstr(msg, "smaller size") ? 400 : 429;
        break;
    case diffsynth_v1_Code_UNAVAILABLE:
        status = 503;
        break;
    default:
        break;
    }
    gw_fail(f, status, NULL, "%s", msg);
    if (status == 429 || status == 503)
        f->retry_after = 2;
}
