/* Memory admission (DESIGN §4.9): every RunStep and RunPipeline states, before it is queued,
 * an upper bound of the memory it will allocate (models/memory_estimate.h) and is admitted only
 * when that fits the request memory limit together with the requests already admitted; the
 * bound stays reserved until the reply, so that several large requests cannot together take
 * more than the limit. A request refused here gets RESOURCE_EXHAUSTED naming its size and the
 * limit, and the daemon keeps serving everyone else.
 *
 * Accounting: each admitted request holds `held` bytes from admission to its reply (inputs,
 * state between units, outputs) and needs `peak` more only while one of its units runs. Units
 * run one at a time on the worker, so the memory in use is at most the sum of the held bytes
 * plus the largest peak among the admitted requests; that total must stay within the limit.
 *
 * The limit is separate from --host-limit, which bounds the weights' copies at rest (the VRAM
 * manager's slow tier, pinned on a GPU): the two are different memory with different owners
 * (the pool vs the requests), and a machine may want either one small. Loop thread only.
 */
#ifndef DS_DAEMON_ADMISSION_H
#define DS_DAEMON_ADMISSION_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "models/memory_estimate.h"
#include "vram/vram_manager.h"

/* One admitted request's reservation; zeroed before its first use (part of a calloc'd job). */
typedef struct ds_admission_ticket {
    struct ds_admission_ticket *prev, *next;
    ds_memory_need need;
    int active;
} ds_admission_ticket;

typedef struct ds_admission {
    uint64_t limit;          /* bytes for all admitted requests together; UINT64_MAX: none */
    char limit_source[128];  /* how the limit was chosen, for messages */
    int threads;             /* compute threads the estimates assume */
    uint64_t held;           /* sum of the admitted requests' held bytes */
    size_t count;
    ds_admission_ticket *head;
} ds_admission;

void ds_admission_init(ds_admission *a, uint64_t limit, const char *limit_source, int threads);

/* The default limit: half of the memory this process may still take at start, the least of
 * /proc/meminfo's MemAvailable, its cgroup's memory.max less memory.current, and RLIMIT_AS less
 * the address space already mapped. `source` gets a description ("half of MemAvailable ..."). */
uint64_t ds_admission_default_limit(char *source, size_t source_size);

/* Admits a request described by `what` ("run_step forward of m1", ...): DS_OK and the ticket
 * active, or RESOURCE_EXHAUSTED: alone larger than the limit (naming both sizes), or larger
 * than what the admitted requests leave (naming those too; retry later). `device_budget`: the
 * VRAM budget the request's peak must fit on a device backend (UINT64_MAX: not checked). */
int ds_admission_reserve(ds_admission *a, ds_admission_ticket *t, const char *what,
                         ds_memory_need need, uint64_t device_budget, ds_error *err);

/* Returns an active ticket's bytes; a no-op on an inactive one. */
void ds_admission_release(ds_admission *a, ds_admission_ticket *t);

/* Sets the budget of `convert` (the CPU's weights kept converted for the compute dtype) for the
 * next unit: `configured` (--convert-limit), or less where RLIMIT_AS leaves less. The request
 * memory limit was promised to admitted requests out of the address space; weights mapped since
 * start and converted copies share what is left, so converted copies take only the room beyond
 * `request_limit`, and past it the forwards convert at every call (same results). The manager
 * drops its least recently used copies to fit. Worker thread, between units (no model runs). */
void ds_admission_fit_convert_budget(ds_vram_manager *convert, size_t configured,
                                     uint64_t request_limit);

#endif
