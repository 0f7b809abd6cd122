/* Generation jobs: each runs on its own thread over its own daemon connection, so many HTTP
 * clients map onto as many daemon requests, which the daemon schedules fairly. A job's state
 * and progress are read by whoever holds a reference: the request that waits for its images,
 * a poller of /v1/videos/{id}, an SSE stream, AUTOMATIC1111's /progress. */
#ifndef DS_HTTP_JOBS_H
#define DS_HTTP_JOBS_H

#include "http/daemon_link.h"
#include "http/gateway.h"

#define GW_MAX_RUNS 10

/* What a job runs: `runs` pipeline runs with the same inputs, run i with seed + i when a seed
 * is given. Its allocations belong to the job once submitted. */
typedef struct gw_gen {
    char pipeline[GW_NAME];
    char *prompt;                       /* malloc'd */
    char *negative;                     /* malloc'd or NULL */
    unsigned runs;
    bool has_seed;
    uint64_t seed;
    char param_names[GW_MAX_PARAMS][GW_NAME];
    char param_values[GW_MAX_PARAMS][GW_NAME];
    int param_count;
    char model_roles[GW_MAX_TENSORS][GW_NAME];   /* models chosen by id for these roles */
    char model_ids[GW_MAX_TENSORS][GW_NAME];
    int model_count;
    uint8_t *image;                     /* input_image [image_h, image_w, 3] u8, malloc'd */
    uint32_t image_w, image_h;
    const char *kind;                   /* "image" or "video" (static) */
    const char *source;                 /* "openai", "a1111", "videos" (static) */
} gw_gen;

void gw_gen_free(gw_gen *gen);
/* Adds a parameter (as text); false when the table is full. */
bool gw_gen_param(gw_gen *gen, const char *name, const char *value);

typedef enum gw_job_state {
    GW_JOB_QUEUED,
    GW_JOB_IN_PROGRESS,
    GW_JOB_COMPLETED,
    GW_JOB_FAILED,
    GW_JOB_CANCELLED,
} gw_job_state;

/* OpenAI's words for the states ("queued", "in_progress", "completed", "failed", "cancelled"). */
const char *gw_job_state_name(gw_job_state s);

typedef struct gw_output {
    uint8_t *data;            /* a file: PNG, MP4, WebP, ... */
    size_t len;
    const char *content_type; /* static */
    uint64_t seed;
    uint32_t width, height;
} gw_output;

typedef struct gw_job_view {
    char id[48];
    const char *kind, *source;
    char pipeline[GW_NAME];
    gw_job_state state;
    char phase[16];
    uint64_t done, total;       /* of the phase */
    double eta_s, elapsed_s;    /* of the current run, as the daemon reports them */
    double progress;            /* 0..1 over all runs */
    unsigned run, runs;         /* the run going on (0-based) and how many */
    unsigned steps;             /* denoising steps of one run, once known */
    int64_t created_at, completed_at;  /* unix seconds; completed_at 0 until finished */
    uint64_t seq;               /* changes with every update */
    gw_failure failure;         /* when failed or cancelled */
    unsigned output_count;
    uint64_t seed;              /* of the first output, once completed */
} gw_job_view;

typedef struct gw_job gw_job;

gw_jobs *gw_jobs_new(gw *g);
/* Cancels what still runs, waits for the job threads and frees everything. */
void gw_jobs_free(gw_jobs *js);

/* Starts a job running `gen` (whose allocations it takes, also on failure). *out gets a
 * reference (gw_job_release). A gateway already running cfg.max_jobs jobs answers 429. */
int gw_jobs_submit(gw_jobs *js, gw_gen *gen, gw_job **out, gw_failure *f);
/* A reference to the job of this id, or NULL. */
gw_job *gw_jobs_find(gw_jobs *js, const char *id);
/* A reference to the newest job from `source` that has not finished, else the newest one
 * from it; NULL when none. */
gw_job *gw_jobs_latest(gw_jobs *js, const char *source);
void gw_job_release(gw_jobs *js, gw_job *job);

void gw_job_view_get(gw_jobs *js, gw_job *job, gw_job_view *v);
/* Waits until the job's seq passes *seq, it finishes, or timeout_ms (< 0: no limit) passes;
 * *seq gets the seq seen. Returns true when the job has finished. */
bool gw_job_wait(gw_jobs *js, gw_job *job, uint64_t *seq, int timeout_ms);
/* Asks the daemon to cancel; false when the job had already finished. */
bool gw_job_cancel(gw_jobs *js, gw_job *job);
/* Output i of a finished job, valid while the reference is held; NULL past the end. */
const gw_output *gw_job_output(gw_job *job, unsigned i);

/* Views of the jobs in the table, newest first; returns how many were written. */
size_t gw_jobs_snapshot(gw_jobs *js, gw_job_view *out, size_t max);
/* Cancels the job and takes it out of the table: it is no longer found. */
void gw_jobs_remove(gw_jobs *js, gw_job *job);
/* Asks the daemon to cancel every job that has not finished. */
void gw_jobs_cancel_all(gw_jobs *js);
void gw_jobs_count(gw_jobs *js, unsigned *queued, unsigned *running);

#endif
