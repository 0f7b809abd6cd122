/* bench/common/alloc_tracker: the most bytes live at once through a backend's alloc slot, by
 * interposing its alloc and free slots (weights a VRAM manager copies in, activations, outputs;
 * not the ops' internal scratch nor the BLAS workspace): the counterpart of
 * torch.cuda.max_memory_allocated on the pipeline benches. One backend at a time per process. */
#ifndef DS_BENCH_ALLOC_TRACKER_H
#define DS_BENCH_ALLOC_TRACKER_H

#include <stddef.h>

#include "kernels/backend.h"

/* Interposes b's alloc and free slots; allocations made before are not counted. */
void ds_bench_track_allocations(ds_backend *b);
/* Puts b's own slots back and frees the table. */
void ds_bench_untrack_allocations(ds_backend *b);
/* The peak so far; *lost (may be NULL) is 1 when the table could not grow, the peak then a
 * lower bound. */
size_t ds_bench_alloc_peak(int *lost);

#endif
