/* What the OpenAI and AUTOMATIC1111 image endpoints share: their fields as one pipeline request,
 * checked against the pipeline's declared ranges before anything reaches the daemon, and a run
 * that the HTTP request waits for. */
#ifndef DS_HTTP_GENERATE_H
#define DS_HTTP_GENERATE_H

#include "http/jobs.h"

typedef struct gw_gen_fields {
    const char *model, *model_param;       /* pipeline name (NULL: the first that makes `makes`) */
    gw_output_kind makes;                  /* what the endpoint serves */
    const char *prompt;
    const char *negative;                  /* NULL: none */
    bool has_size;
    long long width, height;
    const char *size_param;                /* the field size errors name ("size", "width") */
    bool has_steps;
    long long steps;
    bool has_cfg;
    double cfg_scale;
    bool has_seed;
    unsigned long long seed;
    bool has_strength;
    double strength;
    bool has_seconds;                      /* a clip length, for pipelines that take num_frames */
    double seconds;
    unsigned runs;
    const uint8_t *png;                    /* image-to-image: the picture as PNG bytes */
    size_t png_len;
    const char *image_param;               /* the field image errors name */
    void *models;                          /* json_t object role -> loaded model id, or NULL */
    const char *source;
} gw_gen_fields;

/* Builds *gen (gw_gen_free it unless submitted) from `in`, asking the daemon for the pipeline. */
int gw_gen_build(gw *g, const gw_gen_fields *in, gw_gen *gen, gw_failure *f);

/* Submits and waits for the job to finish: *job gets a reference (gw_job_release) and *v its
 * final view (completed, failed or cancelled). -1 with *f when it could not be submitted. */
int gw_gen_run(gw *g, gw_gen *gen, gw_job **job, gw_job_view *v, gw_failure *f);

#endif
