/* GET /v1/pipelines: the daemon's pipelines (whether each makes clips) with their roles, the
 * loaded models that can take each role (by model name, as the daemon matches them), and their
 * parameters with ranges and defaults: what the web page builds its form from. Our own shape;
 * errors as OpenAI's. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "http/daemon_link.h"

static json_t *number_or_null(double v) { return isfinite(v) ? json_real(v) : json_null(); }

void gw_pipelines_list(gw *g, const gw_request *req, gw_response *r)
{
    (void)req;
    gw_failure f;
    gw_pipelines *all = calloc(1, sizeof *all);
    diffsynth_v1_Envelope q = diffsynth_v1_Envelope_init_zero, models;
    q.which_body = diffsynth_v1_Envelope_list_models_tag;
    if (!all) {
        gw_reply_error(r, GW_OPENAI, 500, NULL, "out of memory");
        return;
    }
    if (gw_daemon_pipelines(&g->cfg, all, &f) != 0 || gw_daemon_call(&g->cfg, &q, &models, &f) != 0) {
        gw_reply_failure(r, GW_OPENAI, &f);
        free(all);
        return;
    }
    const diffsynth_v1_ListModelsResponse *m = &models.body.list_models_result;
    json_t *data = json_array();
    for (int i = 0; data && i < all->count; i++) {
        const gw_pipeline_info *p = &all->p[i];
        json_t *roles = json_array(), *params = json_array();
        for (int k = 0; roles && k < p->role_count; k++) {
            json_t *loaded = json_array();
            for (pb_size_t x = 0; loaded && x < m->models_count; x++)
                if (m->models[x].model_name && m->models[x].model_id &&
                    strcmp(m->models[x].model_name, p->role_models[k]) == 0)
                    json_array_append_new(loaded, json_pack("{s:s,s:s}", "id", m->models[x].model_id,
                                                            "name", m->models[x].model_name));
            json_array_append_new(roles, json_pack("{s:s,s:s,s:o}", "role", p->roles[k],
                                                   "model_name", p->role_models[k], "loaded",
                                                   loaded ? loaded : json_null()));
        }
        for (int k = 0; params && k < p->param_count; k++) {
            const gw_param_info *x = &p->params[k];
            json_array_append_new(params, json_pack("{s:s,s:s,s:o,s:o,s:o}", "name", x->name, "type",
                                                    x->type, "min", number_or_null(x->min), "max",
                                                    number_or_null(x->max), "default",
                                                    x->has_default ? json_string(x->default_value)
                                                                   : json_null()));
        }
        json_array_append_new(data, json_pack("{s:s,s:s,s:b,s:o,s:o,s:I}", "id", p->name,
                                              "summary", p->summary, "video", p->video, "roles",
                                              roles ? roles : json_null(), "params",
                                              params ? params : json_null(), "size_multiple",
                                              (json_int_t)p->size_multiple));
    }
    ds_client_envelope_free(&models);
    free(all);
    gw_reply_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}
