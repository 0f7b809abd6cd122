/* The CPU backend's worker pool and per-thread scratch buffers (threadpool.c).
 *
 * The CPU backend's `impl` is its pool: ds__cpu_parallel_for and ds__cpu_threads
 * (cpu_internal.h) read it from there. */
#ifndef DS_KERNELS_CPU_THREADPOOL_H
#define DS_KERNELS_CPU_THREADPOOL_H

#include "core/error.h"

typedef struct ds__cpu_pool ds__cpu_pool;

/* Starts threads - 1 workers (the thread calling ds__cpu_parallel_for is the last one). */
int ds__cpu_pool_create(int threads, ds__cpu_pool **out, ds_error *err);
/* Stops and joins the workers (their scratch buffers go with them); valid on NULL. */
void ds__cpu_pool_destroy(ds__cpu_pool *pool);

/* Frees the calling thread's scratch buffer (backend destroy: the host thread that used the
 * backend does not exit through a pthread destructor when the program ends). */
void ds__cpu_scratch_release(void);

#endif
