/* What load balancers and Kubernetes probe: liveness, readiness (the daemon answers and has the
 * required models), and Prometheus metrics of the gateway and of the daemon's Status. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/daemon_link.h"
#include "http/jobs.h"
#include "http/metrics.h"

void gw_ops_healthz(gw *g, const gw_request *req, gw_response *r)
{
    (void)g;
    (void)req;
    gw_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

static void not_ready(gw_response *r, const char *reason)
{
    gw_reply_json(r, 503, json_pack("{s:s,s:s}", "status", "not ready", "reason", reason));
    r->retry_after = 5;
}

void gw_ops_readyz(gw *g, const gw_request *req, gw_response *r)
{
    (void)req;
    diffsynth_v1_Envelope q = diffsynth_v1_Envelope_init_zero, resp;
    gw_failure f;
    q.which_body = diffsynth_v1_Envelope_list_models_tag;
    if (gw_daemon_call(&g->cfg, &q, &resp, &f) != 0) {
        not_ready(r, f.message);
        return;
    }
    const diffsynth_v1_ListModelsResponse *m = &resp.body.list_models_result;
    for (size_t i = 0; i < g->cfg.require_count; i++) {
        const char *want = g->cfg.require_models[i];
        bool found = false;
        for (pb_size_t k = 0; k < m->models_count && !found; k++)
            found = m->models[k].model_name && strcmp(m->models[k].model_name, want) == 0;
        if (!found) {
            char reason[256];
            snprintf(reason, sizeof reason, "no %.128s is loaded in the daemon (--require-model)",
                     want);
            ds_client_envelope_free(&resp);
            not_ready(r, reason);
            return;
        }
    }
    unsigned models = m->models_count;
    ds_client_envelope_free(&resp);
    gw_reply_json(r, 200, json_pack("{s:s,s:i}", "status", "ready", "models", (int)models));
}

/* Appends the daemon's gauges; the daemon being down is itself a gauge. */
static char *daemon_metrics(gw *g)
{
    diffsynth_v1_Envelope q = diffsynth_v1_Envelope_init_zero, resp;
    gw_failure f;
    q.which_body = diffsynth_v1_Envelope_status_tag;
    size_t cap = 8192, len = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
#define PUT(...)                                                                                 \
    do {                                                                                         \
        int n_ = snprintf(out + len, cap - len, __VA_ARGS__);                                    \
        if (n_ > 0)                                                                              \
            len += (size_t)n_ < cap - len ? (size_t)n_ : cap - len - 1;                          \
    } while (0)
    bool up = gw_daemon_call(&g->cfg, &q, &resp, &f) == 0;
    PUT("# HELP diffsynth_daemon_up Whether the daemon answered Status.\n"
        "# TYPE diffsynth_daemon_up gauge\ndiffsynth_daemon_up %d\n",
        up);
    if (!up)
        return out;
    const diffsynth_v1_StatusResponse *s = &resp.body.status_result;
    PUT("# HELP diffsynth_daemon_models Models loaded in the daemon's pool.\n"
        "# TYPE diffsynth_daemon_models gauge\ndiffsynth_daemon_models %u\n"
        "# HELP diffsynth_daemon_jobs Jobs in the daemon, all clients, by state.\n"
        "# TYPE diffsynth_daemon_jobs gauge\n"
        "diffsynth_daemon_jobs{state=\"queued\"} %u\ndiffsynth_daemon_jobs{state=\"running\"} %u\n"
        "# HELP diffsynth_daemon_clients Connections open to the daemon.\n"
        "# TYPE diffsynth_daemon_clients gauge\ndiffsynth_daemon_clients %u\n"
        "# HELP diffsynth_daemon_requests_total Requests the daemon served.\n"
        "# TYPE diffsynth_daemon_requests_total counter\ndiffsynth_daemon_requests_total %llu\n"
        "# HELP diffsynth_daemon_uptime_seconds Seconds since the daemon started.\n"
        "# TYPE diffsynth_daemon_uptime_seconds gauge\ndiffsynth_daemon_uptime_seconds %.3f\n",
        s->models, s->jobs_queued, s->jobs_running, s->clients,
        (unsigned long long)s->requests_served, (double)s->uptime_ms / 1000.0);
    PUT("# HELP diffsynth_daemon_memory_bytes Weight bytes of the loaded models by tier "
        "(disk: mapped files, host, device).\n# TYPE diffsynth_daemon_memory_bytes gauge\n");
    for (pb_size_t i = 0; i < s->memory_count; i++) {
        const char *tier = s->memory[i].tier ? s->memory[i].tier : "";
        bool plain = *tier != '\0';
        for (const char *c = tier; *c; c++)
            plain = plain && ((*c >= 'a' && *c <= 'z') || *c == '_');
        if (plain)
            PUT("diffsynth_daemon_memory_bytes{tier=\"%s\"} %llu\n", tier,
                (unsigned long long)s->memory[i].bytes);
    }
    if (s->has_vram) {
        const diffsynth_v1_VramStatus *v = &s->vram;
        PUT("# HELP diffsynth_daemon_vram_bytes The memory manager's fast tier (VRAM, or host "
            "memory on the CPU backend).\n# TYPE diffsynth_daemon_vram_bytes gauge\n"
            "diffsynth_daemon_vram_bytes{kind=\"resident\"} %llu\n"
            "diffsynth_daemon_vram_bytes{kind=\"activations\"} %llu\n"
            "diffsynth_daemon_vram_bytes{kind=\"peak\"} %llu\n",
            (unsigned long long)v->resident_bytes, (unsigned long long)v->activation_bytes,
            (unsigned long long)v->peak_bytes);
        if (v->limited)
            PUT("diffsynth_daemon_vram_bytes{kind=\"budget\"} %llu\n",
                (unsigned long long)v->budget_bytes);
        PUT("# HELP diffsynth_daemon_host_bytes Weight copies in host memory (the slow tier).\n"
            "# TYPE diffsynth_daemon_host_bytes gauge\n"
            "diffsynth_daemon_host_bytes{kind=\"held\"} %llu\n"
            "diffsynth_daemon_host_bytes{kind=\"peak\"} %llu\n",
            (unsigned long long)v->host_bytes, (unsigned long long)v->host_peak_bytes);
        if (v->host_limited)
            PUT("diffsynth_daemon_host_bytes{kind=\"budget\"} %llu\n",
                (unsigned long long)v->host_budget_bytes);
    }
#undef PUT
    ds_client_envelope_free(&resp);
    return out;
}

void gw_ops_metrics(gw *g, const gw_request *req, gw_response *r)
{
    (void)req;
    unsigned queued, running;
    gw_jobs_count(g->jobs, &queued, &running);
    char *own = gw_metrics_render(g->metrics, queued, running);
    char *daemon = daemon_metrics(g);
    size_t a = own ? strlen(own) : 0, b = daemon ? strlen(daemon) : 0;
    char *all = own && daemon ? malloc(a + b + 1) : NULL;
    if (!all) {
        free(own);
        free(daemon);
        gw_reply_error(r, GW_OPENAI, 500, NULL, "out of memory rendering the metrics");
        return;
    }
    memcpy(all, own, a);
    memcpy(all + a, daemon, b + 1);
    free(own);
    free(daemon);
    r->status = 200;
    r->body = all;
    r->len = a + b;
    r->content_type = "text/plain; version=0.0.4; charset=utf-8";
}
