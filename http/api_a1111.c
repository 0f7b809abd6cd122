/* AUTOMATIC1111's /sdapi/v1: txt2img, img2img, progress, interrupt, and the listings its
 * clients read before they generate. Errors are FastAPI's {"detail": ...}. */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http/base64.h"
#include "http/fields.h"
#include "http/generate.h"

#define MAX_RUNS 10
/* The sampler every pipeline here uses: its own FlowMatch scheduler. Clients send theirs
 * ("Euler a" by default); it is accepted and reported, and does not change the result. */
#define SAMPLER "Euler"

/* The pipeline POST /sdapi/v1/options chose ("" = the first image pipeline): A1111 clients set
 * the checkpoint once there and then send requests without naming it. */
static pthread_mutex_t checkpoint_lock = PTHREAD_MUTEX_INITIALIZER;
static char checkpoint[GW_NAME];

static void current_checkpoint(char out[GW_NAME])
{
    pthread_mutex_lock(&checkpoint_lock);
    memcpy(out, checkpoint, GW_NAME);
    pthread_mutex_unlock(&checkpoint_lock);
}

static int read_fields(json_t *body, gw_gen_fields *in, bool img2img, gw_failure *f)
{
    bool present = false;
    const char *prompt = "";
    long long batch = 1, iters = 1, steps = 0, seed = -1, w = 0, h = 0;
    bool has_w = false, has_h = false;
    if (gw_field_string(body, "prompt", &prompt, &present, f) != 0 ||
        gw_field_string(body, "negative_prompt", &in->negative, &present, f) != 0 ||
        gw_field_int(body, "width", 1, 1000000, &w, &has_w, f) != 0 ||
        gw_field_int(body, "height", 1, 1000000, &h, &has_h, f) != 0 ||
        gw_field_int(body, "steps", 1, 1000000, &steps, &in->has_steps, f) != 0 ||
        gw_field_number(body, "cfg_scale", -1e6, 1e6, &in->cfg_scale, &in->has_cfg, f) != 0 ||
        gw_field_int(body, "seed", -1, INT64_MAX, &seed, &present, f) != 0 ||
        gw_field_int(body, "batch_size", 1, MAX_RUNS, &batch, &present, f) != 0 ||
        gw_field_int(body, "n_iter", 1, MAX_RUNS, &iters, &present, f) != 0)
        return -1;
    const char *sampler = SAMPLER;
    if (gw_field_string(body, "sampler_name", &sampler, &present, f) != 0)
        return -1;
    if (batch * iters > MAX_RUNS) {
        gw_fail(f, 400, "batch_size", "batch_size x n_iter is %lld, at most %d images per request",
                batch * iters, MAX_RUNS);
        return -1;
    }
    json_t *over = json_object_get(body, "override_settings");
    if (over && !json_is_null(over)) {
        if (!json_is_object(over)) {
            gw_fail(f, 400, "override_settings", "override_settings must be an object");
            return -1;
        }
        if (gw_field_string(over, "sd_model_checkpoint", &in->model, &present, f) != 0) {
            snprintf(f->param, sizeof f->param, "override_settings");
            return -1;
        }
    }
    in->model_param = "sd_model_checkpoint";
    in->prompt = prompt;
    in->runs = (unsigned)(batch * iters);
    in->steps = steps;
    in->has_seed = seed >= 0;
    in->seed = seed >= 0 ? (unsigned long long)seed : 0;
    /* A1111's own default size is 512 x 512; a side left out takes it when the other is given,
     * and both left out take the pipeline's default. */
    if (has_w || has_h) {
        in->has_size = true;
        in->width = has_w ? w : 512;
        in->height = has_h ? h : 512;
        in->size_param = has_w ? "width" : "height";
    }
    if (img2img) {
        in->strength = 0.75;
        in->has_strength = true;
        if (gw_field_number(body, "denoising_strength", 0, 1, &in->strength, &present, f) != 0)
            return -1;
        json_t *mask = json_object_get(body, "mask");
        if (mask && !json_is_null(mask)) {
            gw_fail(f, 400, "mask", "mask is not supported: the whole image is redrawn");
            return -1;
        }
    }
    return 0;
}

/* init_images[0]: base64 PNG, with or without a data: URL prefix. *png is malloc'd. */
static int read_init_image(json_t *body, uint8_t **png, size_t *len, gw_failure *f)
{
    json_t *list = json_object_get(body, "init_images");
    if (!list || !json_is_array(list) || json_array_size(list) == 0) {
        gw_fail(f, 400, "init_images", "init_images is required: a list of base64 PNG images");
        return -1;
    }
    json_t *first = json_array_get(list, 0);
    if (!json_is_string(first)) {
        gw_fail(f, 400, "init_images", "init_images[0] must be a base64 string");
        return -1;
    }
    const char *text = json_string_value(first);
    size_t n = json_string_length(first);
    const char *comma = strncmp(text, "data:", 5) == 0 ? memchr(text, ',', n) : NULL;
    if (comma) {
        n -= (size_t)(comma + 1 - text);
        text = comma + 1;
    }
    if (!(*png = gw_base64_decode(text, n, len)) || *len == 0) {
        free(*png);
        *png = NULL;
        gw_fail(f, 400, "init_images", "init_images[0] is not valid base64");
        return -1;
    }
    return 0;
}

static void reply_images(gw *g, json_t *body, gw_job *job, const gw_job_view *v,
                         const gw_gen_fields *in, gw_response *r)
{
    json_t *images = json_array(), *seeds = json_array();
    const gw_output *o = NULL, *first = NULL;
    for (unsigned i = 0; images && seeds && (o = gw_job_output(job, i)); i++) {
        char *b64 = gw_base64_encode(o->data, o->len, NULL);
        if (!b64)
            break;
        json_array_append_new(images, json_string(b64));
        json_array_append_new(seeds, json_integer((json_int_t)o->seed));
        free(b64);
        first = first ? first : o;
    }
    char stamp[32];
    time_t t = (time_t)v->created_at;
    struct tm tm;
    strftime(stamp, sizeof stamp, "%Y%m%d%H%M%S", gmtime_r(&t, &tm));
    json_t *info = json_pack(
        "{s:s,s:[s],s:s,s:I,s:o,s:I,s:I,s:s,s:f,s:i,s:s,s:s,s:b}", "prompt", in->prompt,
        "all_prompts", in->prompt, "negative_prompt", in->negative ? in->negative : "", "seed",
        (json_int_t)(first ? first->seed : 0), "all_seeds", seeds, "width",
        (json_int_t)(first ? first->width : 0), "height", (json_int_t)(first ? first->height : 0),
        "sampler_name", SAMPLER, "cfg_scale", in->has_cfg ? in->cfg_scale : 0.0, "steps",
        (int)v->steps, "sd_model_name", v->pipeline, "job_timestamp", stamp, "interrupted",
        v->state == GW_JOB_CANCELLED);
    char *info_text = info ? json_dumps(info, JSON_COMPACT) : NULL;
    json_decref(info);
    gw_job_release(g->jobs, job);
    json_t *out = info_text && images
                      ? json_pack("{s:o,s:O,s:s}", "images", images, "parameters", body, "info",
                                  info_text)
                      : NULL;
    free(info_text);
    if (!out) {
        gw_reply_error(r, GW_A1111, 500, NULL, "out of memory building the reply");
        return;
    }
    gw_reply_json(r, 200, out);
}

static void generate(gw *g, const gw_request *req, gw_response *r, bool img2img)
{
    json_t *body = NULL;
    uint8_t *png = NULL;
    gw_failure f;
    gw_gen_fields in = {.makes = GW_MAKES_IMAGES, .source = "a1111",
                        .image_param = "init_images"};
    gw_gen gen;
    gw_job *job = NULL;
    gw_job_view v;
    char chosen[GW_NAME];
    if (gw_body_object(req, &body, &f) != 0 || read_fields(body, &in, img2img, &f) != 0 ||
        (img2img && read_init_image(body, &png, &in.png_len, &f) != 0)) {
        gw_reply_failure(r, GW_A1111, &f);
        goto done;
    }
    current_checkpoint(chosen);
    if (!in.model && chosen[0])
        in.model = chosen;
    in.png = png;
    if (gw_gen_build(g, &in, &gen, &f) != 0 || gw_gen_run(g, &gen, &job, &v, &f) != 0) {
        gw_reply_failure(r, GW_A1111, &f);
        goto done;
    }
    /* Interrupted runs answer with the images finished before, as A1111 does. */
    if (v.state == GW_JOB_FAILED) {
        gw_job_release(g->jobs, job);
        gw_reply_failure(r, GW_A1111, &v.failure);
        goto done;
    }
    reply_images(g, body, job, &v, &in, r);
done:
    free(png);
    json_decref(body);
}

void gw_a1111_txt2img(gw *g, const gw_request *req, gw_response *r) { generate(g, req, r, false); }

void gw_a1111_img2img(gw *g, const gw_request *req, gw_response *r) { generate(g, req, r, true); }

void gw_a1111_progress(gw *g, const gw_request *req, gw_response *r)
{
    (void)req;
    gw_job *job = gw_jobs_latest(g->jobs, "a1111");
    gw_job_view v = {0};
    if (job) {
        gw_job_view_get(g->jobs, job, &v);
        gw_job_release(g->jobs, job);
    }
    bool active = job && v.state <= GW_JOB_IN_PROGRESS;
    char stamp[32] = "0";
    if (job) {
        time_t t = (time_t)v.created_at;
        struct tm tm;
        strftime(stamp, sizeof stamp, "%Y%m%d%H%M%S", gmtime_r(&t, &tm));
    }
    bool denoising = strcmp(v.phase, "denoise") == 0;
    double progress = active ? v.progress : 0;
    /* eta_relative is seconds left, as A1111 computes it from its own progress. */
    double eta = active && v.eta_s >= 0 ? v.eta_s : 0;
    gw_reply_json(r, 200,
                  json_pack("{s:f,s:f,s:{s:b,s:b,s:s,s:i,s:s,s:i,s:i,s:i},s:n,s:n}", "progress",
                            progress, "eta_relative", eta, "state", "skipped", 0, "interrupted",
                            job && v.state == GW_JOB_CANCELLED, "job", active ? v.id : "",
                            "job_count", active ? 1 : 0, "job_timestamp", stamp, "job_no",
                            active ? (int)v.run : 0, "sampling_step",
                            active && denoising ? (int)v.done : 0, "sampling_steps",
                            active ? (int)v.steps : 0, "current_image", "textinfo"));
}

void gw_a1111_interrupt(gw *g, const gw_request *req, gw_response *r)
{
    (void)req;
    gw_job *job = gw_jobs_latest(g->jobs, "a1111");
    if (job) {
        gw_job_cancel(g->jobs, job);
        gw_job_release(g->jobs, job);
    }
    gw_reply_json(r, 200, json_object());
}

/* The daemon's pipelines, or a reply saying why not. */
static gw_pipelines *pipelines(gw *g, gw_response *r)
{
    gw_pipelines *all = calloc(1, sizeof *all);
    gw_failure f;
    if (!all) {
        gw_reply_error(r, GW_A1111, 500, NULL, "out of memory");
        return NULL;
    }
    if (gw_daemon_pipelines(&g->cfg, all, &f) != 0) {
        gw_reply_failure(r, GW_A1111, &f);
        free(all);
        return NULL;
    }
    return all;
}

void gw_a1111_options(gw *g, const gw_request *req, gw_response *r)
{
    (void)req;
    gw_pipelines *all = pipelines(g, r);
    if (!all)
        return;
    char chosen[GW_NAME];
    current_checkpoint(chosen);
    gw_failure f;
    const gw_pipeline_info *p =
        gw_pipeline_find(all, chosen, GW_MAKES_IMAGES, "sd_model_checkpoint", &f);
    gw_reply_json(r, 200, json_pack("{s:s,s:s,s:s}", "sd_model_checkpoint", p ? p->name : "",
                                    "samples_format", "png", "sd_checkpoint_hash", ""));
    free(all);
}

void gw_a1111_set_options(gw *g, const gw_request *req, gw_response *r)
{
    json_t *body = NULL;
    gw_failure f;
    const char *model = NULL;
    bool present = false;
    gw_pipelines *all = NULL;
    if (gw_body_object(req, &body, &f) != 0 ||
        gw_field_string(body, "sd_model_checkpoint", &model, &present, &f) != 0) {
        gw_reply_failure(r, GW_A1111, &f);
        goto done;
    }
    /* Other options are this gateway's to ignore: the pipeline's own settings apply. */
    if (present) {
        if (!(all = pipelines(g, r)))
            goto done;
        if (!gw_pipeline_find(all, model, GW_MAKES_IMAGES, "sd_model_checkpoint", &f)) {
            gw_reply_failure(r, GW_A1111, &f);
            goto done;
        }
        pthread_mutex_lock(&checkpoint_lock);
        snprintf(checkpoint, sizeof checkpoint, "%s", model);
        pthread_mutex_unlock(&checkpoint_lock);
    }
    gw_reply_json(r, 200, json_null());
done:
    free(all);
    json_decref(body);
}

void gw_a1111_sd_models(gw *g, const gw_request *req, gw_response *r)
{
    (void)req;
    gw_pipelines *all = pipelines(g, r);
    if (!all)
        return;
    /* A1111 is an image API: its clients offer every listed checkpoint for txt2img. */
    json_t *list = json_array();
    for (int i = 0; list && i < all->count; i++)
        if (gw_pipeline_makes(&all->p[i], GW_MAKES_IMAGES))
            json_array_append_new(list, json_pack("{s:s,s:s,s:n,s:n,s:s,s:n}", "title",
                                                  all->p[i].name, "model_name", all->p[i].name,
                                                  "hash", "sha256", "filename", all->p[i].name,
                                                  "config"));
    free(all);
    gw_reply_json(r, 200, list);
}

void gw_a1111_samplers(gw *g, const gw_request *req, gw_response *r)
{
    (void)g;
    (void)req;
    gw_reply_json(r, 200, json_pack("[{s:s,s:[s,s],s:{}}]", "name", SAMPLER, "aliases", "euler",
                                    "flow_match_euler", "options"));
}
