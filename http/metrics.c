/* Counters behind one mutex: requests by route and status, job durations as a histogram,
 * denoising steps. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/metrics.h"

#define MAX_SERIES 256
#define OUTCOMES 3

/* Seconds: a tiny model's image is well under a second, a real video many minutes. */
static const double buckets[] = {0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800};
#define BUCKETS (sizeof buckets / sizeof buckets[0])
static const char *const outcomes[OUTCOMES] = {"completed", "failed", "cancelled"};

typedef struct series {
    const char *route;
    int status;
    uint64_t count;
} series;

struct gw_metrics {
    pthread_mutex_t lock;
    series requests[MAX_SERIES];
    int series_count;
    uint64_t overflow; /* requests of route/status pairs past MAX_SERIES */
    uint64_t job_buckets[OUTCOMES][BUCKETS];
    uint64_t job_count[OUTCOMES];
    double job_sum[OUTCOMES];
    uint64_t steps;
    double step_seconds;
    double last_steps_per_s;
};

gw_metrics *gw_metrics_new(void)
{
    gw_metrics *m = calloc(1, sizeof *m);
    if (m)
        pthread_mutex_init(&m->lock, NULL);
    return m;
}

void gw_metrics_free(gw_metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void gw_metrics_request(gw_metrics *m, const char *route, int status)
{
    pthread_mutex_lock(&m->lock);
    int i = 0;
    while (i < m->series_count && !(m->requests[i].status == status &&
                                    strcmp(m->requests[i].route, route) == 0))
        i++;
    if (i == m->series_count && i < MAX_SERIES)
        m->requests[m->series_count++] = (series){route, status, 0};
    if (i < MAX_SERIES)
        m->requests[i].count++;
    else
        m->overflow++;
    pthread_mutex_unlock(&m->lock);
}

void gw_metrics_job(gw_metrics *m, const char *outcome, double seconds)
{
    int o = 0;
    while (o < OUTCOMES - 1 && strcmp(outcomes[o], outcome) != 0)
        o++;
    pthread_mutex_lock(&m->lock);
    for (size_t b = 0; b < BUCKETS; b++)
        if (seconds <= buckets[b])
            m->job_buckets[o][b]++;
    m->job_count[o]++;
    m->job_sum[o] += seconds;
    pthread_mutex_unlock(&m->lock);
}

void gw_metrics_steps(gw_metrics *m, uint64_t steps, double seconds)
{
    pthread_mutex_lock(&m->lock);
    m->steps += steps;
    m->step_seconds += seconds;
    if (seconds > 0)
        m->last_steps_per_s = (double)steps / seconds;
    pthread_mutex_unlock(&m->lock);
}

typedef struct text {
    char *data;
    size_t len, cap;
    int oom;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...)
{
    if (t->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->data ? t->data + t->len : NULL, t->data ? t->cap - t->len : 0, fmt,
                          ap);
        va_end(ap);
        if (n < 0) {
            t->oom = 1;
            return;
        }
        if (t->data && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = (t->cap ? t->cap * 2 : 4096) + (size_t)n;
        char *grown = realloc(t->data, cap);
        if (!grown) {
            t->oom = 1;
            return;
        }
        t->data = grown;
        t->cap = cap;
    }
}

char *gw_metrics_render(gw_metrics *m, unsigned jobs_queued, unsigned jobs_running)
{
    text t = {0};
    pthread_mutex_lock(&m->lock);
    put(&t, "# HELP diffsynth_http_requests_total HTTP requests answered, by route and status.\n"
            "# TYPE diffsynth_http_requests_total counter\n");
    for (int i = 0; i < m->series_count; i++)
        put(&t, "diffsynth_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
            m->requests[i].route, m->requests[i].status,
            (unsigned long long)m->requests[i].count);
    if (m->overflow)
        put(&t, "diffsynth_http_requests_total{route=\"other\",status=\"other\"} %llu\n",
            (unsigned long long)m->overflow);
    put(&t, "# HELP diffsynth_http_job_duration_seconds Generation jobs from submission to end, "
            "by outcome.\n# TYPE diffsynth_http_job_duration_seconds histogram\n");
    for (int o = 0; o < OUTCOMES; o++) {
        for (size_t b = 0; b < BUCKETS; b++)
            put(&t, "diffsynth_http_job_duration_seconds_bucket{outcome=\"%s\",le=\"%g\"} %llu\n",
                outcomes[o], buckets[b], (unsigned long long)m->job_buckets[o][b]);
        put(&t, "diffsynth_http_job_duration_seconds_bucket{outcome=\"%s\",le=\"+Inf\"} %llu\n",
            outcomes[o], (unsigned long long)m->job_count[o]);
        put(&t, "diffsynth_http_job_duration_seconds_sum{outcome=\"%s\"} %.6f\n", outcomes[o],
            m->job_sum[o]);
        put(&t, "diffsynth_http_job_duration_seconds_count{outcome=\"%s\"} %llu\n", outcomes[o],
            (unsigned long long)m->job_count[o]);
    }
    put(&t, "# HELP diffsynth_http_jobs Generation jobs of this gateway now, by state.\n"
            "# TYPE diffsynth_http_jobs gauge\n"
            "diffsynth_http_jobs{state=\"queued\"} %u\ndiffsynth_http_jobs{state=\"running\"} %u\n",
        jobs_queued, jobs_running);
    put(&t, "# HELP diffsynth_http_denoise_steps_total Denoising steps finished.\n"
            "# TYPE diffsynth_http_denoise_steps_total counter\n"
            "diffsynth_http_denoise_steps_total %llu\n"
            "# HELP diffsynth_http_denoise_seconds_total Seconds spent denoising.\n"
            "# TYPE diffsynth_http_denoise_seconds_total counter\n"
            "diffsynth_http_denoise_seconds_total %.6f\n"
            "# HELP diffsynth_http_denoise_steps_per_second Denoising steps per second of the "
            "last finished run.\n# TYPE diffsynth_http_denoise_steps_per_second gauge\n"
            "diffsynth_http_denoise_steps_per_second %.6f\n",
        (unsigned long long)m->steps, m->step_seconds, m->last_steps_per_s);
    pthread_mutex_unlock(&m->lock);
    if (t.oom) {
        free(t.data);
        return NULL;
    }
    return t.data;
}
