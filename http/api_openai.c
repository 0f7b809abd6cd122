/* OpenAI's Images API: /v1/images/generations (JSON), /v1/images/edits (multipart) and
 * /v1/models, in the shapes of platform.openai.com's reference, so the official SDKs and the
 * frontends built on them work unchanged. Our extensions ride along as extra fields. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http/base64.h"
#include "http/fields.h"
#include "http/form.h"
#include "http/generate.h"

#define MAX_N 10

/* The fields both endpoints take, from a JSON object (an edit's form fields converted). */
static int read_fields(json_t *body, gw_gen_fields *in, gw_failure *f)
{
    bool present = false;
    const char *prompt = NULL, *size = NULL, *format = "b64_json", *output = "png";
    long long n = 1, steps = 0, seed = 0;
    if (gw_field_string(body, "prompt", &prompt, &present, f) != 0)
        return -1;
    if (!prompt || !*prompt) {
        gw_fail(f, 400, "prompt", "prompt is required: a non-empty string");
        return -1;
    }
    in->prompt = prompt;
    in->model_param = "model";
    in->size_param = "size";
    if (gw_field_string(body, "model", &in->model, &present, f) != 0 ||
        gw_field_int(body, "n", 1, MAX_N, &n, &present, f) != 0 ||
        gw_field_string(body, "size", &size, &present, f) != 0 ||
        gw_field_string(body, "response_format", &format, &present, f) != 0 ||
        gw_field_string(body, "output_format", &output, &present, f) != 0 ||
        gw_field_string(body, "negative_prompt", &in->negative, &present, f) != 0 ||
        gw_field_int(body, "steps", 1, 1000000, &steps, &in->has_steps, f) != 0 ||
        gw_field_number(body, "cfg_scale", -1e6, 1e6, &in->cfg_scale, &in->has_cfg, f) != 0 ||
        gw_field_int(body, "seed", 0, INT64_MAX, &seed, &in->has_seed, f) != 0)
        return -1;
    /* OpenAI's clients send "dall-e-2" and the like by default: names that are no pipeline of
     * ours mean "the first image pipeline" only when they are OpenAI's own. */
    if (in->model && strncmp(in->model, "dall-e", 6) == 0)
        in->model = NULL;
    if (in->model && strncmp(in->model, "gpt-image", 9) == 0)
        in->model = NULL;
    in->models = json_object_get(body, "models");
    in->runs = (unsigned)n;
    in->steps = steps;
    in->seed = (unsigned long long)seed;
    if (strcmp(format, "b64_json") != 0) {
        gw_fail(f, 400, "response_format",
                "response_format \"%.32s\" is not served: only \"b64_json\" (this gateway keeps no "
                "files to link to)",
                format);
        return -1;
    }
    if (strcmp(output, "png") != 0) {
        gw_fail(f, 400, "output_format", "output_format \"%.32s\" is not served: only \"png\"",
                output);
        return -1;
    }
    if (size && strcmp(size, "auto") != 0) {
        if (gw_parse_size(size, "size", &in->width, &in->height, f) != 0)
            return -1;
        in->has_size = true;
    }
    return 0;
}

static void reply_images(gw *g, gw_job *job, gw_response *r)
{
    json_t *data = json_array();
    const gw_output *o = NULL;
    uint32_t w = 0, h = 0;
    for (unsigned i = 0; data && (o = gw_job_output(job, i)); i++) {
        char *b64 = gw_base64_encode(o->data, o->len, NULL);
        if (!b64) {
            json_decref(data);
            data = NULL;
            break;
        }
        json_array_append_new(data, json_pack("{s:s,s:I}", "b64_json", b64, "seed",
                                              (json_int_t)o->seed));
        free(b64);
        w = o->width;
        h = o->height;
    }
    gw_job_release(g->jobs, job);
    if (!data) {
        gw_reply_error(r, GW_OPENAI, 500, NULL, "out of memory encoding the images");
        return;
    }
    char size[32];
    snprintf(size, sizeof size, "%ux%u", w, h);
    gw_reply_json(r, 200, json_pack("{s:I,s:o,s:s,s:s}", "created", (json_int_t)time(NULL), "data",
                                    data, "output_format", "png", "size", size));
}

static void generate(gw *g, json_t *body, const uint8_t *png, size_t png_len, gw_response *r)
{
    gw_gen_fields in = {.makes = GW_MAKES_IMAGES, .source = "openai", .png = png,
                        .png_len = png_len, .image_param = "image"};
    gw_failure f;
    gw_gen gen;
    gw_job *job = NULL;
    gw_job_view v;
    if (read_fields(body, &in, &f) != 0 || gw_gen_build(g, &in, &gen, &f) != 0 ||
        gw_gen_run(g, &gen, &job, &v, &f) != 0) {
        gw_reply_failure(r, GW_OPENAI, &f);
        return;
    }
    if (v.state != GW_JOB_COMPLETED) {
        gw_job_release(g->jobs, job);
        gw_reply_failure(r, GW_OPENAI, &v.failure);
        return;
    }
    reply_images(g, job, r);
}

void gw_openai_generations(gw *g, const gw_request *req, gw_response *r)
{
    json_t *body = NULL;
    gw_failure f;
    if (gw_body_object(req, &body, &f) != 0) {
        gw_reply_failure(r, GW_OPENAI, &f);
        return;
    }
    generate(g, body, NULL, 0, r);
    json_decref(body);
}

void gw_openai_edits(gw *g, const gw_request *req, gw_response *r)
{
    static const char *const numeric[] = {"n", "steps", "cfg_scale", "seed", NULL};
    gw_form form;
    gw_failure f;
    if (gw_form_parse(req, &form, &f) != 0) {
        gw_reply_failure(r, GW_OPENAI, &f);
        return;
    }
    const gw_form_part *image = gw_form_get(&form, "image");
    if (!image)
        image = gw_form_get(&form, "image[]");
    json_t *body = gw_form_fields_json(&form, numeric);
    if (!body) {
        gw_reply_error(r, GW_OPENAI, 500, NULL, "out of memory");
    } else if (!image || image->len == 0) {
        gw_reply_error(r, GW_OPENAI, 400, "image",
                       "image is required: the picture to edit, as a PNG file part");
    } else if (gw_form_get(&form, "mask")) {
        gw_reply_error(r, GW_OPENAI, 400, "mask",
                       "mask is not supported: the whole image is redrawn");
    } else {
        generate(g, body, (const uint8_t *)image->data, image->len, r);
    }
    json_decref(body);
    gw_form_free(&form);
}

void gw_openai_models(gw *g, const gw_request *req, gw_response *r)
{
    (void)req;
    gw_pipelines *all = calloc(1, sizeof *all);
    gw_failure f;
    if (!all) {
        gw_reply_error(r, GW_OPENAI, 500, NULL, "out of memory");
        return;
    }
    if (gw_daemon_pipelines(&g->cfg, all, &f) != 0) {
        gw_reply_failure(r, GW_OPENAI, &f);
        free(all);
        return;
    }
    json_t *data = json_array();
    for (int i = 0; data && i < all->count; i++)
        json_array_append_new(data, json_pack("{s:s,s:s,s:i,s:s}", "id", all->p[i].name, "object",
                                              "model", "created", 0, "owned_by", "diffsynthd"));
    free(all);
    gw_reply_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}
