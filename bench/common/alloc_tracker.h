/* bench/common/alloc_tracker: the device memory a bench's backend hands out, counted by
 * interposing the backend's alloc/free slots. Every allocation made through the slot (weights a
 * VRAM manager copies in, activations, outputs; not an op's internal scratch nor the BLAS
 * workspace, which the backend takes itself) counts; the peak is the most that was live at
 * once, the counterpart of torch.cuda.max_memory_allocated. One tracker per process: a bench
 * tracks one backend. */
#ifndef DS_BENCH_ALLOC_TRACKER_H
#define DS_BENCH_ALLOC_TRACKER_H

#include <stddef.h>

#include "kernels/backend.h"

/* Starts counting b's allocations (made after this call; frees of earlier ones are passed
 * through uncounted). */
void ds_bench_track_allocations(ds_backend *b);

/* Puts b's own slots back and frees the tracker's table. */
void ds_bench_untrack_allocations(ds_backend *b);

/* Most bytes live at once since tracking started or the last reset. *lost (may be NULL) is set
 * to 1 when the tracker's table could not grow: sizes of later frees were unknown and the peak
 * is then a lower bound. */
size_t ds_bench_alloc_peak(int *lost);

/* Bytes live now. */
size_t ds_bench_alloc_live(void);

/* Restarts the peak from the bytes live now (torch.cuda.reset_peak_memory_stats). */
void ds_bench_alloc_reset_peak(void);

#endif
