/* Memory that may vanish under us: shared-memory objects a client can shrink, model files that
 * can be truncated while mapped. Touching a page past the new end of such a mapping raises
 * SIGBUS, which would kill the daemon for every client.
 *
 * A guarded range turns that fault into a value, as Wayland compositors guard wl_shm buffers:
 * the process-wide SIGBUS handler looks the faulting address up among the registered ranges;
 * if it lies in one, it maps anonymous zero pages over the whole range (MAP_FIXED, read-write,
 * so the faulting instruction and every later access succeed) and sets the range's flag. The
 * code that used the memory checks the flag when it is done and fails that one request. A
 * SIGBUS outside every range (or sent with kill) goes to the previous handler, or kills the
 * process as SIGBUS always did.
 *
 * The handler is async-signal-safe (lock-free atomics, mmap) and may run on any thread while
 * other threads add and remove ranges. A range must stay mapped until it is removed, and must
 * not be unmapped by one thread while another may still touch it (as for any mapping).
 */
#ifndef DS_CORE_FAULT_GUARD_H
#define DS_CORE_FAULT_GUARD_H

#include <stdatomic.h>
#include <stddef.h>

#include "core/error.h"

/* How many ranges can be guarded at once (model files plus shared-memory regions in use). */
#define DS_FAULT_GUARD_MAX_RANGES 4096

/* Installs the SIGBUS handler once per process (later calls do nothing). ds_fault_guard_add
 * installs it too; a program calls this at start so that the handler is in place before any
 * thread runs. INTERNAL when sigaction fails. */
int ds_fault_guard_install(ds_error *err);

/* Guards the pages [base, base + length) (base page-aligned; length is rounded up to whole
 * pages). A fault there sets *faulted to 1; *faulted must stay valid until the range is
 * removed. *slot receives the handle for ds_fault_guard_remove. RESOURCE_EXHAUSTED when
 * DS_FAULT_GUARD_MAX_RANGES ranges are guarded already; INVALID_ARGUMENT for a NULL or
 * unaligned base, or length 0. */
int ds_fault_guard_add(void *base, size_t length, atomic_int *faulted, int *slot, ds_error *err);

/* Stops guarding; call before unmapping. A negative slot (never added) is ignored. */
void ds_fault_guard_remove(int slot);

#endif
