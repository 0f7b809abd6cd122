/* The daemon's shared state: what the request handlers (dispatch, RunStep, RunPipeline) and the
 * replies read and update. Owned by main.
 */
#ifndef DS_DAEMON_DAEMON_H
#define DS_DAEMON_DAEMON_H

#include <stdint.h>
#include <time.h>

#include "core/model_configs.h"
#include "daemon/admission.h"
#include "daemon/identify_cache.h"
#include "daemon/paths.h"
#include "daemon/pool.h"
#include "daemon/scheduler.h"
#include "daemon/server.h"
#include "kernels/backend.h"
#include "vram/vram_manager.h"

/* Bounds on what one request may name: far above real use, low enough that no request can
 * make the daemon do unbounded work. */
#define DS_MAX_PATHS_PER_REQUEST 1024
#define DS_MAX_CLIENT_NAME 256

/* Everything the handlers share. Owned by main; touched only on the loop thread, except
 * `configs` and `roots`, which are immutable once the server starts and read by the worker. */
typedef struct ds_daemon ds_daemon;
struct ds_daemon {
    const ds_config_table *configs;
    ds_model_roots roots;
    ds_pool *pool;
    ds_scheduler *scheduler;
    ds_server *server;
    const char *socket_path;
    uint64_t max_frame_bytes;
    uint64_t started_monotonic_ms;
    uint64_t requests_served;
    int shutting_down;         /* new requests get UNAVAILABLE */
    ds_identify_cache identify_cache;
    /* Where steps compute, and the CPU backend whose host memory holds step inputs and outputs
     * (the same backend unless --backend cuda). Created at start, used by the worker only. */
    ds_backend *backend;
    ds_backend *host_backend;
    /* --vram-limit: the pool's manager over `backend`, passed to every step (NULL: none, the
     * weights are used in place). Run by the worker; the loop thread only reads its stats and,
     * through a model's release hook, drops unloaded models (both under its lock). */
    ds_vram_manager *vram;
    int vram_limited;          /* --vram-limit gave a number (not "none") */
    /* The CPU backend without --vram-limit: a manager that only keeps weights converted once
     * for the compute dtype (bf16 files run at f32) within --convert-limit, passed to steps as
     * ds_step_context.convert (NULL: --convert-limit 0, or a VRAM manager). Threads as `vram`. */
    ds_vram_manager *convert;
    size_t convert_limit; /* --convert-limit's bytes (DS_VRAM_UNLIMITED: none) */
    /* RunStep and RunPipeline memory reserved until their replies (--request-memory-limit). */
    ds_admission admission;
};

/* The device memory admission may promise a request: the VRAM manager's budget when it has one
 * over a device other than the host, else no bound. */
static inline uint64_t ds_daemon_device_budget(const ds_daemon *d)
{
    if (d->vram && d->backend != d->host_backend) {
        ds_vram_stats vs;
        ds_vram_stats_get(d->vram, &vs);
        if (vs.budget_bytes != DS_VRAM_UNLIMITED)
            return vs.budget_bytes;
    }
    return UINT64_MAX;
}

/* Milliseconds of CLOCK_MONOTONIC (uptime) / of the wall clock (what the pool reports). */
static inline uint64_t ds_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static inline uint64_t ds_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#endif
