/* Jobs that outlive their request: OpenAI's /v1/videos (create, poll, download, delete) for the
 * pipelines that make clips, /v1/jobs (the same for any pipeline whose output is a file), the
 * list of this gateway's jobs, and the progress of any job, images too, as Server-Sent Events. */
#include <jansson.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/fields.h"
#include "http/form.h"
#include "http/generate.h"

/* An SSE stream with nothing to say sends a comment this often, so proxies keep it open. */
#define KEEPALIVE_MS 15000

/* The OpenAI video object, plus the progress detail the page and SSE readers use. */
static json_t *job_json(const gw_job_view *v)
{
    json_t *error = json_null();
    if (v->state == GW_JOB_FAILED || v->state == GW_JOB_CANCELLED)
        error = json_pack("{s:s,s:s}", "code",
                          v->state == GW_JOB_CANCELLED ? "cancelled" : "generation_failed",
                          "message", v->failure.message);
    return json_pack("{s:s,s:s,s:s,s:s,s:i,s:I,s:o,s:o,s:s,s:s,s:I,s:I,s:f,s:f,s:i,s:i,s:o}", "id",
                     v->id, "object", strcmp(v->kind, "video") == 0 ? "video" : "image.job",
                     "model", v->pipeline, "status", gw_job_state_name(v->state), "progress",
                     (int)(v->progress * 100), "created_at", (json_int_t)v->created_at,
                     "completed_at",
                     v->completed_at ? json_integer(v->completed_at) : json_null(), "error",
                     error ? error : json_null(), "kind", v->kind, "phase", v->phase, "done",
                     (json_int_t)v->done, "total", (json_int_t)v->total, "eta_s", v->eta_s,
                     "elapsed_s", v->elapsed_s, "run", (int)v->run, "runs", (int)v->runs, "seed",
                     v->output_count ? json_integer((json_int_t)v->seed) : json_null());
}

/* /v1/jobs/... names a job of any kind; /v1/videos/... OpenAI's video jobs. */
static bool generic(const gw_request *req) { return strncmp(req->path, "/v1/jobs", 8) == 0; }

void gw_jobs_create_video(gw *g, const gw_request *req, gw_response *r)
{
    static const char *const numeric[] = {"n", "steps", "cfg_scale", "seed", NULL};
    const char *type = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                   MHD_HTTP_HEADER_CONTENT_TYPE);
    bool is_form = type && (strncasecmp(type, "multipart/", 10) == 0 ||
                            strncasecmp(type, "application/x-www-form-urlencoded", 33) == 0);
    gw_form form = {0};
    json_t *body = NULL;
    gw_failure f;
    const gw_form_part *ref = NULL;
    bool present = false;
    gw_gen_fields in = {.makes = generic(req) ? GW_MAKES_ANY : GW_MAKES_VIDEOS, .source = "videos",
                        .model_param = "model", .size_param = "size",
                        .image_param = "input_reference", .runs = 1};
    const char *size = NULL, *seconds = NULL;
    long long steps = 0, seed = 0;
    gw_gen gen;
    gw_job *job = NULL;
    if (is_form) {
        if (gw_form_parse(req, &form, &f) != 0)
            goto fail;
        ref = gw_form_get(&form, "input_reference");
        if (!(body = gw_form_fields_json(&form, numeric))) {
            gw_fail(&f, 500, NULL, "out of memory");
            goto fail;
        }
    } else if (gw_body_object(req, &body, &f) != 0) {
        goto fail;
    }
    if (gw_field_string(body, "prompt", &in.prompt, &present, &f) != 0 ||
        gw_field_string(body, "model", &in.model, &present, &f) != 0 ||
        gw_field_string(body, "size", &size, &present, &f) != 0 ||
        gw_field_string(body, "seconds", &seconds, &present, &f) != 0 ||
        gw_field_string(body, "negative_prompt", &in.negative, &present, &f) != 0 ||
        gw_field_int(body, "steps", 1, 1000000, &steps, &in.has_steps, &f) != 0 ||
        gw_field_number(body, "cfg_scale", -1e6, 1e6, &in.cfg_scale, &in.has_cfg, &f) != 0 ||
        gw_field_int(body, "seed", 0, INT64_MAX, &seed, &in.has_seed, &f) != 0)
        goto fail;
    if (!in.prompt || !*in.prompt) {
        gw_fail(&f, 400, "prompt", "prompt is required: a non-empty string");
        goto fail;
    }
    /* OpenAI's own model names mean the first video pipeline. */
    if (in.model && strncmp(in.model, "sora", 4) == 0)
        in.model = NULL;
    in.steps = steps;
    in.seed = (unsigned long long)seed;
    in.models = json_object_get(body, "models");
    if (size) {
        if (gw_parse_size(size, "size", &in.width, &in.height, &f) != 0)
            goto fail;
        in.has_size = true;
    }
    if (ref && ref->len) {
        in.png = (const uint8_t *)ref->data;
        in.png_len = ref->len;
    }
    if (seconds) {
        char *end = NULL;
        in.seconds = strtod(seconds, &end);
        if (!*seconds || *end || !(in.seconds > 0 && in.seconds <= 3600)) {
            gw_fail(&f, 400, "seconds", "seconds must be a duration like \"4\", not \"%.32s\"",
                    seconds);
            goto fail;
        }
        in.has_seconds = true;
    }
    if (gw_gen_build(g, &in, &gen, &f) != 0)
        goto fail;
    if (gw_jobs_submit(g->jobs, &gen, &job, &f) != 0)
        goto fail;
    gw_job_view v;
    gw_job_view_get(g->jobs, job, &v);
    gw_job_release(g->jobs, job);
    gw_reply_json(r, 200, job_json(&v));
    json_decref(body);
    gw_form_free(&form);
    return;
fail:
    gw_reply_failure(r, GW_OPENAI, &f);
    json_decref(body);
    gw_form_free(&form);
}

/* The job of the path's id (a reference), with its view when `v` is given; NULL after a 404
 * reply. */
static gw_job *find(gw *g, const gw_request *req, gw_response *r, gw_job_view *v)
{
    gw_job *job = gw_jobs_find(g->jobs, req->arg);
    if (!job)
        gw_reply_error(r, GW_OPENAI, 404, NULL, "no job %s: unknown, deleted, or dropped after "
                                                "--keep-jobs newer ones finished", req->arg);
    else if (v)
        gw_job_view_get(g->jobs, job, v);
    return job;
}

void gw_jobs_get_video(gw *g, const gw_request *req, gw_response *r)
{
    gw_job_view v;
    gw_job *job = find(g, req, r, &v);
    if (!job)
        return;
    gw_job_release(g->jobs, job);
    gw_reply_json(r, 200, job_json(&v));
}

void gw_jobs_video_content(gw *g, const gw_request *req, gw_response *r)
{
    gw_job_view v;
    gw_job *job = find(g, req, r, &v);
    if (!job)
        return;
    const gw_output *o = gw_job_output(job, 0);
    if (o)
        gw_reply_bytes(r, 200, o->content_type, o->data, o->len);
    else if (v.state == GW_JOB_COMPLETED)
        gw_reply_error(r, GW_OPENAI, 404, NULL, "job %s made no file", v.id);
    else
        gw_reply_error(r, GW_OPENAI, 409, NULL, "job %s is %s: no content%s", v.id,
                       gw_job_state_name(v.state),
                       v.state <= GW_JOB_IN_PROGRESS ? " yet" : "");
    gw_job_release(g->jobs, job);
}

void gw_jobs_delete_video(gw *g, const gw_request *req, gw_response *r)
{
    gw_job *job = find(g, req, r, NULL);
    if (!job)
        return;
    gw_jobs_remove(g->jobs, job);
    gw_job_release(g->jobs, job);
    gw_reply_json(r, 200, json_pack("{s:s,s:s,s:b}", "id", req->arg, "object",
                                    generic(req) ? "job.deleted" : "video.deleted", "deleted", 1));
}

void gw_jobs_list(gw *g, const gw_request *req, gw_response *r)
{
    (void)req;
    size_t max = g->cfg.max_jobs + g->cfg.keep_jobs;
    gw_job_view *views = calloc(max ? max : 1, sizeof *views);
    if (!views) {
        gw_reply_error(r, GW_OPENAI, 500, NULL, "out of memory");
        return;
    }
    size_t n = gw_jobs_snapshot(g->jobs, views, max);
    json_t *data = json_array();
    for (size_t i = 0; data && i < n; i++)
        json_array_append_new(data, job_json(&views[i]));
    free(views);
    gw_reply_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

/* --- Server-Sent Events ---------------------------------------------------------------------- */

typedef struct sse {
    gw *g;
    gw_job *job;
    uint64_t seq;
    bool started, last_sent;
    char *pending;  /* an event not yet fully handed to MHD */
    size_t len, off;
} sse;

static void sse_free(void *cls)
{
    sse *s = cls;
    gw_job_release(s->g->jobs, s->job);
    free(s->pending);
    free(s);
}

/* The next event into s->pending: the job's state, once per change. */
static void sse_next(sse *s)
{
    gw_job_view v;
    bool changed = true;
    if (s->started) {
        uint64_t before = s->seq;
        gw_job_wait(s->g->jobs, s->job, &s->seq, KEEPALIVE_MS);
        changed = s->seq != before;
    }
    s->started = true;
    gw_job_view_get(s->g->jobs, s->job, &v);
    s->seq = v.seq;
    bool done = v.state >= GW_JOB_COMPLETED;
    free(s->pending);
    s->pending = NULL;
    s->len = s->off = 0;
    if (!changed && !done) {
        s->pending = strdup(": keep-alive\n\n");
    } else {
        json_t *j = job_json(&v);
        char *data = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (data) {
            const char *event = done ? gw_job_state_name(v.state) : "progress";
            size_t n = strlen(data) + strlen(event) + 32;
            if ((s->pending = malloc(n)))
                snprintf(s->pending, n, "event: %s\ndata: %s\n\n", event, data);
            free(data);
        }
        s->last_sent = done;
    }
    s->len = s->pending ? strlen(s->pending) : 0;
}

/* Blocks between events: libmicrohttpd runs it on this connection's own thread. */
static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    sse *s = cls;
    if (s->off == s->len) {
        if (s->last_sent || gw_stopping())
            return MHD_CONTENT_READER_END_OF_STREAM;
        sse_next(s);
        if (!s->pending)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = s->len - s->off < max ? s->len - s->off : max;
    memcpy(buf, s->pending + s->off, n);
    s->off += n;
    return (ssize_t)n;
}

void gw_jobs_events(gw *g, const gw_request *req, gw_response *r)
{
    gw_job *job = find(g, req, r, NULL);
    if (!job)
        return;
    sse *s = calloc(1, sizeof *s);
    struct MHD_Response *resp =
        s ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, s, sse_free)
          : NULL;
    if (!resp) {
        free(s);
        gw_job_release(g->jobs, job);
        gw_reply_error(r, GW_OPENAI, 500, NULL, "out of memory");
        return;
    }
    s->g = g;
    s->job = job;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    r->stream = resp;
    r->status = 200;
}
