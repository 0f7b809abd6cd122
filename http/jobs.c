/* The job table: one mutex and one condition variable for every job, since updates are a few
 * per second and waiters re-check their own job's seq. A job is referenced by the table, by its
 * thread while it runs, and by every reader; the last release frees it. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "http/jobs.h"
#include "http/metrics.h"

struct gw_job {
    gw_jobs *jobs;
    gw_job *next;           /* in the table, oldest first */
    int refs;
    bool in_table;
    gw_gen gen;
    gw_job_view view;
    double started_mono;
    ds_client_cancel_flag *cancel;
    gw_output outputs[GW_MAX_RUNS];
};

struct gw_jobs {
    gw *g;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    gw_job *head, *tail;
    unsigned active;        /* jobs whose thread has not ended */
    unsigned finished;      /* finished jobs still in the table */
};

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

const char *gw_job_state_name(gw_job_state s)
{
    static const char *const names[] = {"queued", "in_progress", "completed", "failed",
                                        "cancelled"};
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "unknown";
}

static bool finished(gw_job_state s) { return s >= GW_JOB_COMPLETED; }

void gw_gen_free(gw_gen *gen)
{
    free(gen->prompt);
    free(gen->negative);
    free(gen->image);
    gen->prompt = gen->negative = NULL;
    gen->image = NULL;
}

bool gw_gen_param(gw_gen *gen, const char *name, const char *value)
{
    if (gen->param_count >= GW_MAX_PARAMS)
        return false;
    snprintf(gen->param_names[gen->param_count], GW_NAME, "%s", name);
    snprintf(gen->param_values[gen->param_count++], GW_NAME, "%s", value);
    return true;
}

gw_jobs *gw_jobs_new(gw *g)
{
    gw_jobs *js = calloc(1, sizeof *js);
    if (!js)
        return NULL;
    js->g = g;
    pthread_mutex_init(&js->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&js->changed, &attr);
    pthread_condattr_destroy(&attr);
    return js;
}

static void job_free(gw_job *j)
{
    gw_gen_free(&j->gen);
    ds_client_cancel_flag_free(j->cancel);
    for (unsigned i = 0; i < GW_MAX_RUNS; i++)
        free(j->outputs[i].data);
    free(j);
}

/* Under the lock. */
static void unref(gw_job *j)
{
    if (--j->refs == 0)
        job_free(j);
}

void gw_job_release(gw_jobs *js, gw_job *job)
{
    if (!job)
        return;
    pthread_mutex_lock(&js->lock);
    unref(job);
    pthread_mutex_unlock(&js->lock);
}

/* Under the lock: drops the oldest finished jobs past keep_jobs. */
static void evict(gw_jobs *js)
{
    gw_job **link = &js->head, *prev = NULL;
    while (*link && js->finished > js->g->cfg.keep_jobs) {
        gw_job *j = *link;
        if (!finished(j->view.state)) {
            prev = j;
            link = &j->next;
            continue;
        }
        *link = j->next;
        if (js->tail == j)
            js->tail = prev;
        j->in_table = false;
        js->finished--;
        unref(j);
    }
}

void gw_jobs_free(gw_jobs *js)
{
    if (!js)
        return;
    gw_jobs_cancel_all(js);
    pthread_mutex_lock(&js->lock);
    while (js->active > 0)
        pthread_cond_wait(&js->changed, &js->lock);
    while (js->head) {
        gw_job *j = js->head;
        js->head = j->next;
        unref(j);
    }
    pthread_mutex_unlock(&js->lock);
    pthread_cond_destroy(&js->changed);
    pthread_mutex_destroy(&js->lock);
    free(js);
}

/* --- the job's thread ------------------------------------------------------------------------ */

static void on_progress(const diffsynth_v1_Progress *p, uint64_t request_id, void *user)
{
    (void)request_id;
    gw_job *j = user;
    gw_jobs *js = j->jobs;
    pthread_mutex_lock(&js->lock);
    gw_job_view *v = &j->view;
    v->state = GW_JOB_IN_PROGRESS;
    snprintf(v->phase, sizeof v->phase, "%s", p->phase ? p->phase : "");
    v->done = p->done;
    v->total = p->total;
    v->eta_s = p->eta_s;
    v->elapsed_s = p->elapsed_s;
    /* Denoising is nearly all of a run's time; encoding counts as its start, decoding as its
     * end. */
    double within = 0;
    if (strcmp(v->phase, "denoise") == 0 && p->total > 0) {
        within = (double)(p->done < p->total ? p->done : p->total) / (double)p->total;
        v->steps = (unsigned)p->total;
    } else if (strcmp(v->phase, "decode") == 0) {
        within = 1;
    }
    double progress = ((double)v->run + within) / (double)v->runs;
    if (progress > v->progress)
        v->progress = progress;
    v->seq++;
    pthread_cond_broadcast(&js->changed);
    pthread_mutex_unlock(&js->lock);
}

/* A file type by its first bytes: what /content and the image APIs can serve. */
static const char *sniff(const uint8_t *d, size_t n)
{
    if (n >= 8 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0)
        return "image/png";
    if (n >= 12 && memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBP", 4) == 0)
        return "image/webp";
    if (n >= 12 && memcmp(d + 4, "ftyp", 4) == 0)
        return "video/mp4";
    if (n >= 4 && memcmp(d, "\x1a\x45\xdf\xa3", 4) == 0)
        return "video/webm";
    if (n >= 6 && memcmp(d, "GIF8", 4) == 0)
        return "image/gif";
    return NULL;
}

/* One run: the pipeline's first output that is a file becomes output `run`. */
static int run_once(gw_job *j, ds_client *c, unsigned run, gw_failure *f)
{
    const gw_config *cfg = &j->jobs->g->cfg;
    const gw_gen *gen = &j->gen;
    ds_client_step_param params[GW_MAX_PARAMS + 1];
    size_t np = 0;
    char seed[32];
    for (int i = 0; i < gen->param_count; i++)
        params[np++] = (ds_client_step_param){gen->param_names[i], gen->param_values[i]};
    if (gen->has_seed) {
        snprintf(seed, sizeof seed, "%llu", (unsigned long long)(gen->seed + run));
        params[np++] = (ds_client_step_param){"seed", seed};
    }
    ds_client_tensor image = {
        .name = "input_image", .dtype = diffsynth_v1_DType_U8, .ndim = 3,
        .shape = {gen->image_h, gen->image_w, 3}, .data = gen->image,
        .nbytes = (size_t)gen->image_h * gen->image_w * 3,
    };
    ds_client_pipeline_model models[GW_MAX_TENSORS];
    for (int i = 0; i < gen->model_count; i++)
        models[i] = (ds_client_pipeline_model){.role = gen->model_roles[i],
                                               .model_id = gen->model_ids[i]};
    ds_client_pipeline_request req = {
        .pipeline = gen->pipeline,
        .models = models,
        .model_count = (size_t)gen->model_count,
        .prompt = gen->prompt,
        .negative_prompt = gen->negative,
        .params = params,
        .param_count = np,
        .inputs = gen->image ? &image : NULL,
        .input_count = gen->image ? 1 : 0,
        .named_outputs = true,
        .cancel = j->cancel,
    };
    ds_client_pipeline_result res;
    int rc = ds_client_run_pipeline(c, &req, &res, cfg->daemon_timeout_ms, on_progress, j, NULL);
    if (rc != DS_CLIENT_OK) {
        gw_failure_from_client(c, rc, cfg, f);
        return -1;
    }
    int status = -1;
    for (size_t i = 0; i < res.output_count && status != 0; i++) {
        ds_client_tensor *t = &res.outputs[i];
        const char *type = t->dtype == diffsynth_v1_DType_U8 && t->ndim == 1
                               ? sniff(t->data, t->nbytes)
                               : NULL;
        if (!type)
            continue;
        gw_output *o = &j->outputs[run];
        o->data = (uint8_t *)t->data;
        o->len = t->nbytes;
        o->content_type = type;
        o->seed = res.seed;
        o->width = res.width;
        o->height = res.height;
        t->data = NULL;
        status = 0;
    }
    if (status != 0)
        gw_fail(f, 502, NULL, "the %s pipeline gave no image or video file among its outputs",
                gen->pipeline);
    else
        gw_metrics_steps(j->jobs->g->metrics, res.steps, res.denoise_s);
    ds_client_pipeline_result_free(&res);
    return status;
}

static void *job_main(void *arg)
{
    gw_job *j = arg;
    gw_jobs *js = j->jobs;
    gw_failure f = {0};
    int rc = 0;
    unsigned made = 0;
    ds_client *c = gw_daemon_connect(&js->g->cfg, &f);
    if (!c)
        rc = -1;
    for (unsigned run = 0; rc == 0 && run < j->gen.runs; run++) {
        pthread_mutex_lock(&js->lock);
        j->view.run = run;
        pthread_mutex_unlock(&js->lock);
        rc = run_once(j, c, run, &f);
        if (rc == 0)
            made++;
    }
    ds_client_close(c);
    bool cancelled = rc != 0 && ds_client_cancel_flag_raised(j->cancel);
    if (cancelled)
        gw_fail(&f, 409, NULL, "the job was cancelled");

    pthread_mutex_lock(&js->lock);
    gw_job_view *v = &j->view;
    v->state = rc == 0 ? GW_JOB_COMPLETED : cancelled ? GW_JOB_CANCELLED : GW_JOB_FAILED;
    if (rc == 0)
        v->progress = 1;
    else
        v->failure = f;
    v->output_count = made;
    v->seed = made ? j->outputs[0].seed : 0;
    v->completed_at = (int64_t)time(NULL);
    v->seq++;
    double seconds = now_mono() - j->started_mono;
    if (j->in_table)
        js->finished++;
    evict(js);
    js->active--;
    pthread_cond_broadcast(&js->changed);
    const char *outcome = gw_job_state_name(v->state);
    unref(j);
    pthread_mutex_unlock(&js->lock);
    gw_metrics_job(js->g->metrics, outcome, seconds);
    return NULL;
}

/* --- the table ------------------------------------------------------------------------------- */

static void new_id(const char *kind, char *out, size_t size)
{
    uint8_t r[12];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
        /* Unique enough within one gateway's lifetime when the kernel's pool is unavailable. */
        static unsigned long counter;
        uint64_t t = (uint64_t)(now_mono() * 1e9);
        memcpy(r, &t, 8);
        unsigned long k = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
        memcpy(r + 8, &k, 4);
    }
    int n = snprintf(out, size, "%s_", strcmp(kind, "video") == 0 ? "video" : "img");
    for (size_t i = 0; i < sizeof r && (size_t)n + 2 < size; i++, n += 2)
        snprintf(out + n, size - (size_t)n, "%02x", r[i]);
}

int gw_jobs_submit(gw_jobs *js, gw_gen *gen, gw_job **out, gw_failure *f)
{
    *out = NULL;
    gw_job *j = calloc(1, sizeof *j);
    if (!j || !(j->cancel = ds_client_cancel_flag_new())) {
        free(j);
        gw_gen_free(gen);
        gw_fail(f, 500, NULL, "out of memory");
        return -1;
    }
    j->jobs = js;
    j->gen = *gen;
    memset(gen, 0, sizeof *gen);
    if (j->gen.runs == 0)
        j->gen.runs = 1;
    gw_job_view *v = &j->view;
    new_id(j->gen.kind, v->id, sizeof v->id);
    v->kind = j->gen.kind;
    v->source = j->gen.source;
    snprintf(v->pipeline, sizeof v->pipeline, "%s", j->gen.pipeline);
    v->state = GW_JOB_QUEUED;
    v->runs = j->gen.runs;
    v->eta_s = -1;
    v->created_at = (int64_t)time(NULL);
    j->started_mono = now_mono();

    pthread_mutex_lock(&js->lock);
    if (js->active >= js->g->cfg.max_jobs) {
        unsigned active = js->active;
        pthread_mutex_unlock(&js->lock);
        job_free(j);
        gw_fail(f, 429, NULL, "the gateway is running %u jobs, its limit (--max-jobs); try again "
                              "shortly", active);
        f->retry_after = 2;
        return -1;
    }
    j->refs = 3; /* the table, the thread, the caller */
    j->in_table = true;
    if (js->tail)
        js->tail->next = j;
    else
        js->head = j;
    js->tail = j;
    js->active++;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* The client library's frames and the PNG coder need little stack. */
    pthread_attr_setstacksize(&attr, 1 << 20);
    pthread_t thread;
    int err = pthread_create(&thread, &attr, job_main, j);
    pthread_attr_destroy(&attr);
    if (err != 0) {
        v->state = GW_JOB_FAILED;
        gw_fail(&v->failure, 503, NULL, "cannot start a job thread: %s", strerror(err));
        v->completed_at = v->created_at;
        js->active--;
        js->finished++;
        j->refs--; /* no thread */
        *f = v->failure;
        f->retry_after = 2;
        evict(js);
        unref(j);
        pthread_mutex_unlock(&js->lock);
        return -1;
    }
    pthread_mutex_unlock(&js->lock);
    *out = j;
    return 0;
}

gw_job *gw_jobs_find(gw_jobs *js, const char *id)
{
    pthread_mutex_lock(&js->lock);
    gw_job *j = js->head;
    while (j && strcmp(j->view.id, id) != 0)
        j = j->next;
    if (j)
        j->refs++;
    pthread_mutex_unlock(&js->lock);
    return j;
}

gw_job *gw_jobs_latest(gw_jobs *js, const char *source)
{
    pthread_mutex_lock(&js->lock);
    gw_job *running = NULL, *any = NULL;
    for (gw_job *j = js->head; j; j = j->next) {
        if (strcmp(j->view.source, source) != 0)
            continue;
        any = j;
        if (!finished(j->view.state))
            running = j;
    }
    gw_job *j = running ? running : any;
    if (j)
        j->refs++;
    pthread_mutex_unlock(&js->lock);
    return j;
}

void gw_job_view_get(gw_jobs *js, gw_job *job, gw_job_view *v)
{
    pthread_mutex_lock(&js->lock);
    *v = job->view;
    pthread_mutex_unlock(&js->lock);
}

bool gw_job_wait(gw_jobs *js, gw_job *job, uint64_t *seq, int timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (timeout_ms >= 0) {
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&js->lock);
    while (job->view.seq == *seq && !finished(job->view.state)) {
        if (timeout_ms < 0)
            pthread_cond_wait(&js->changed, &js->lock);
        else if (pthread_cond_timedwait(&js->changed, &js->lock, &deadline) == ETIMEDOUT)
            break;
    }
    *seq = job->view.seq;
    bool done = finished(job->view.state);
    pthread_mutex_unlock(&js->lock);
    return done;
}

bool gw_job_cancel(gw_jobs *js, gw_job *job)
{
    pthread_mutex_lock(&js->lock);
    bool running = !finished(job->view.state);
    if (running)
        ds_client_cancel_flag_raise(job->cancel);
    pthread_mutex_unlock(&js->lock);
    return running;
}

void gw_jobs_remove(gw_jobs *js, gw_job *job)
{
    pthread_mutex_lock(&js->lock);
    ds_client_cancel_flag_raise(job->cancel);
    gw_job **link = &js->head, *prev = NULL;
    while (*link && *link != job) {
        prev = *link;
        link = &(*link)->next;
    }
    if (*link) {
        *link = job->next;
        if (js->tail == job)
            js->tail = prev;
        job->in_table = false;
        if (finished(job->view.state))
            js->finished--;
        unref(job);
    }
    pthread_mutex_unlock(&js->lock);
}

void gw_jobs_cancel_all(gw_jobs *js)
{
    pthread_mutex_lock(&js->lock);
    for (gw_job *j = js->head; j; j = j->next)
        ds_client_cancel_flag_raise(j->cancel);
    pthread_mutex_unlock(&js->lock);
}

const gw_output *gw_job_output(gw_job *job, unsigned i)
{
    gw_jobs *js = job->jobs;
    pthread_mutex_lock(&js->lock);
    const gw_output *o = finished(job->view.state) && i < job->view.output_count
                             ? &job->outputs[i]
                             : NULL;
    pthread_mutex_unlock(&js->lock);
    return o;
}

size_t gw_jobs_snapshot(gw_jobs *js, gw_job_view *out, size_t max)
{
    pthread_mutex_lock(&js->lock);
    size_t total = 0;
    for (gw_job *j = js->head; j; j = j->next)
        total++;
    size_t n = total < max ? total : max, k = 0;
    /* Newest first: the table is oldest first, so the last n land in reverse. */
    for (gw_job *j = js->head; j; j = j->next, k++)
        if (k >= total - n)
            out[total - 1 - k] = j->view;
    pthread_mutex_unlock(&js->lock);
    return n;
}

void gw_jobs_count(gw_jobs *js, unsigned *queued, unsigned *running)
{
    *queued = *running = 0;
    pthread_mutex_lock(&js->lock);
    for (gw_job *j = js->head; j; j = j->next) {
        if (j->view.state == GW_JOB_QUEUED)
            (*queued)++;
        else if (j->view.state == GW_JOB_IN_PROGRESS)
            (*running)++;
    }
    pthread_mutex_unlock(&js->lock);
}
