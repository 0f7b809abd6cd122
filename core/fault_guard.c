#include "core/fault_guard.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The handler reads these without locks, so they must be lock-free (not emulated with a
 * mutex that an interrupted thread might hold). */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "atomic int must be lock-free for the SIGBUS handler");
_Static_assert(ATOMIC_POINTER_LOCK_FREE == 2,
               "atomic pointers must be lock-free for the SIGBUS handler");

/* One guarded range. Writers (under `lock`) follow a sequence lock: seq is odd while the
 * fields change, so the handler never acts on a half-written range. */
typedef struct range {
    atomic_uint seq;
    atomic_uintptr_t start;   /* 0 when the slot is free */
    atomic_uintptr_t end;
    _Atomic(atomic_int *) flag;
    int used;                 /* under lock */
} range;

static range ranges[DS_FAULT_GUARD_MAX_RANGES];
/* Slots at or past this index have never been used: the handler stops there. */
static atomic_uint ranges_high;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static pthread_once_t install_once = PTHREAD_ONCE_INIT;
static int install_errno;
static struct sigaction previous;

/* Not ours: hand the signal to whoever had SIGBUS before, or die of it. */
static void forward(int sig, siginfo_t *info, void *context)
{
    if ((previous.sa_flags & SA_SIGINFO) && previous.sa_sigaction) {
        previous.sa_sigaction(sig, info, context);
        return;
    }
    if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
        return;
    }
    /* Default action. The signal is blocked while we run, so raise() leaves it pending and it
     * is delivered, now fatal, as soon as we return; a hardware fault would also recur. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGBUS, &dfl, NULL);
    raise(SIGBUS);
}

static void on_sigbus(int sig, siginfo_t *info, void *context)
{
    int saved_errno = errno;
    /* si_code <= 0: sent by a process (kill, sigqueue, tgkill), not a fault; si_addr is not
     * an address then. */
    if (info && info->si_code > 0) {
        uintptr_t addr = (uintptr_t)info->si_addr;
        unsigned n = atomic_load_explicit(&ranges_high, memory_order_acquire);
        for (unsigned i = 0; i < n && i < DS_FAULT_GUARD_MAX_RANGES; i++) {
            range *r = &ranges[i];
            unsigned seq = atomic_load_explicit(&r->seq, memory_order_acquire);
            if (seq & 1)
                continue;
            uintptr_t start = atomic_load_explicit(&r->start, memory_order_relaxed);
            uintptr_t end = atomic_load_explicit(&r->end, memory_order_relaxed);
            atomic_int *flag = atomic_load_explicit(&r->flag, memory_order_relaxed);
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&r->seq, memory_order_relaxed) != seq)
                continue;
            if (start == 0 || addr < start || addr >= end || !flag)
                continue;
            /* The faulting thread is using this range, so it cannot be removed and unmapped
             * under us: replacing it is safe. */
            void *p = mmap((void *)start, end - start, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            if (p == MAP_FAILED)
                break;
            atomic_store_explicit(flag, 1, memory_order_release);
            errno = saved_errno;
            return;
        }
    }
    errno = saved_errno;
    forward(sig, info, context);
}

static void install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &previous) != 0)
        install_errno = errno ? errno : EINVAL;
}

int ds_fault_guard_install(ds_error *err)
{
    pthread_once(&install_once, install);
    if (install_errno)
        return ds_error_set(err, DS_ERR_INTERNAL, "cannot install the SIGBUS handler: %s",
                            strerror(install_errno));
    return DS_OK;
}

int ds_fault_guard_add(void *base, size_t length, atomic_int *faulted, int *slot, ds_error *err)
{
    *slot = -1;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t start = (uintptr_t)base;
    if (!base || start % page != 0 || length == 0 || !faulted)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "fault guard: range at %p of %zu bytes is not a page-aligned mapping",
                            base, length);
    if (length > UINTPTR_MAX - start - (page - 1))
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "fault guard: range at %p of %zu bytes wraps the address space", base,
                            length);
    int rc = ds_fault_guard_install(err);
    if (rc != DS_OK)
        return rc;
    uintptr_t end = start + (length + page - 1) / page * page;

    pthread_mutex_lock(&lock);
    unsigned high = atomic_load_explicit(&ranges_high, memory_order_relaxed);
    unsigned i = 0;
    while (i < high && ranges[i].used)
        i++;
    if (i == DS_FAULT_GUARD_MAX_RANGES) {
        pthread_mutex_unlock(&lock);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "fault guard: %d ranges are guarded already (the limit)",
                            DS_FAULT_GUARD_MAX_RANGES);
    }
    range *r = &ranges[i];
    r->used = 1;
    unsigned seq = atomic_load_explicit(&r->seq, memory_order_relaxed);
    atomic_store_explicit(&r->seq, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&r->start, start, memory_order_relaxed);
    atomic_store_explicit(&r->end, end, memory_order_relaxed);
    atomic_store_explicit(&r->flag, faulted, memory_order_relaxed);
    atomic_store_explicit(&r->seq, seq + 2, memory_order_release);
    if (i == high)
        atomic_store_explicit(&ranges_high, high + 1, memory_order_release);
    pthread_mutex_unlock(&lock);
    *slot = (int)i;
    return DS_OK;
}

void ds_fault_guard_remove(int slot)
{
    if (slot < 0 || slot >= DS_FAULT_GUARD_MAX_RANGES)
        return;
    pthread_mutex_lock(&lock);
    range *r = &ranges[slot];
    if (r->used) {
        unsigned seq = atomic_load_explicit(&r->seq, memory_order_relaxed);
        atomic_store_explicit(&r->seq, seq + 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);
        atomic_store_explicit(&r->start, 0, memory_order_relaxed);
        atomic_store_explicit(&r->end, 0, memory_order_relaxed);
        atomic_store_explicit(&r->flag, NULL, memory_order_relaxed);
        atomic_store_explicit(&r->seq, seq + 2, memory_order_release);
        r->used = 0;
    }
    pthread_mutex_unlock(&lock);
}
