/* The gateway's own counters for GET /metrics; the daemon's gauges (models, memory per tier,
 * jobs) are read from its Status when the page is rendered. Thread-safe. */
#ifndef DS_HTTP_METRICS_H
#define DS_HTTP_METRICS_H

#include <stdint.h>

#include "http/gateway.h"

gw_metrics *gw_metrics_new(void);
void gw_metrics_free(gw_metrics *m);

/* One answered request: `route` is the route's pattern ("/v1/videos/{id}"), static storage. */
void gw_metrics_request(gw_metrics *m, const char *route, int status);
/* One finished job: "completed", "failed" or "cancelled" after `seconds`. */
void gw_metrics_job(gw_metrics *m, const char *outcome, double seconds);
/* Denoising steps a run finished in `seconds` of denoising. */
void gw_metrics_steps(gw_metrics *m, uint64_t steps, double seconds);

/* The Prometheus text exposition (format 0.0.4) of the counters, appended to by the caller.
 * Returns a malloc'd string or NULL when memory ran out. */
char *gw_metrics_render(gw_metrics *m, unsigned jobs_queued, unsigned jobs_running);

#endif
