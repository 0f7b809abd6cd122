/* The SIGBUS guard: a fault on a guarded mapping whose file shrank becomes a flag and zero
 * pages; a fault anywhere else (or a SIGBUS sent with kill) still kills the process; ranges
 * come and go from other threads while one thread faults. */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/fault_guard.h"
#include "test.h"

static size_t page;

/* A memfd of `pages` pages filled with 0xAB, mapped shared read-only. */
static int make_mapping(size_t pages, int *fd, unsigned char **map)
{
    *fd = memfd_create("fault-guard-test", MFD_CLOEXEC);
    if (*fd < 0 || ftruncate(*fd, (off_t)(pages * page)) != 0)
        return -1;
    void *m = mmap(NULL, pages * page, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
    if (m == MAP_FAILED)
        return -1;
    memset(m, 0xAB, pages * page);
    *map = m;
    return 0;
}

/* Reads through a volatile pointer so the compiler keeps every load. */
static unsigned read_byte(const unsigned char *p) { return *(const volatile unsigned char *)p; }

static void test_fault_on_shrunk_file_sets_flag(void)
{
    int fd;
    unsigned char *map;
    REQUIRE(make_mapping(4, &fd, &map) == 0);
    atomic_int faulted = 0;
    int slot;
    ds_error err;
    REQUIRE(ds_fault_guard_add(map, 4 * page, &faulted, &slot, &err) == DS_OK);
    CHECK(read_byte(map + 3 * page) == 0xAB);
    CHECK(atomic_load(&faulted) == 0);
    REQUIRE(ftruncate(fd, (off_t)page) == 0);
    /* Page 3 is gone from the file: without the guard this load kills the process. */
    CHECK(read_byte(map + 3 * page + 17) == 0);
    CHECK(atomic_load(&faulted) == 1);
    /* The whole range now reads zeros and takes writes (an output region stays writable). */
    CHECK(read_byte(map) == 0);
    map[2 * page] = 7;
    CHECK(read_byte(map + 2 * page) == 7);
    ds_fault_guard_remove(slot);
    munmap(map, 4 * page);
    close(fd);
}

static void test_bad_ranges_refused(void)
{
    atomic_int flag = 0;
    int slot = 5;
    ds_error err;
    CHECK(ds_fault_guard_add(NULL, page, &flag, &slot, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK(slot == -1);
    static char buf[64];
    char *unaligned = (char *)(((uintptr_t)buf | 1));
    CHECK(ds_fault_guard_add(unaligned, page, &flag, &slot, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "page-aligned");
    ds_fault_guard_remove(-1);
}

static void test_capacity(void)
{
    void *m = mmap(NULL, page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(m != MAP_FAILED);
    static int slots[DS_FAULT_GUARD_MAX_RANGES];
    static atomic_int flags[DS_FAULT_GUARD_MAX_RANGES];
    ds_error err;
    size_t added = 0;
    while (added < DS_FAULT_GUARD_MAX_RANGES &&
           ds_fault_guard_add(m, page, &flags[added], &slots[added], &err) == DS_OK)
        added++;
    CHECK(added == DS_FAULT_GUARD_MAX_RANGES);
    int extra;
    CHECK(ds_fault_guard_add(m, page, &flags[0], &extra, &err) == DS_ERR_RESOURCE_EXHAUSTED);
    CHECK_CONTAINS(err.message, "ranges are guarded already");
    /* A removed slot is reused. */
    ds_fault_guard_remove(slots[100]);
    CHECK(ds_fault_guard_add(m, page, &flags[100], &slots[100], &err) == DS_OK);
    for (size_t i = 0; i < added; i++)
        ds_fault_guard_remove(slots[i]);
    munmap(m, page);
}

/* Runs fn in a child; returns the signal that ended it, or 0 for a normal exit. */
static int child_signal(void (*fn)(void))
{
    pid_t pid = fork();
    if (pid == 0) {
        fn();
        _exit(0);
    }
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

static void fault_unguarded(void)
{
    int fd;
    unsigned char *map;
    if (make_mapping(2, &fd, &map) != 0)
        _exit(3);
    ds_error err;
    if (ds_fault_guard_install(&err) != DS_OK || ftruncate(fd, 0) != 0)
        _exit(3);
    (void)read_byte(map + page);
}

static void fault_after_remove(void)
{
    int fd;
    unsigned char *map;
    if (make_mapping(2, &fd, &map) != 0)
        _exit(3);
    atomic_int flag = 0;
    int slot;
    ds_error err;
    if (ds_fault_guard_add(map, 2 * page, &flag, &slot, &err) != DS_OK || ftruncate(fd, 0) != 0)
        _exit(3);
    ds_fault_guard_remove(slot);
    (void)read_byte(map + page);
}

static void killed_with_sigbus(void)
{
    ds_error err;
    if (ds_fault_guard_install(&err) != DS_OK)
        _exit(3);
    kill(getpid(), SIGBUS);
    /* The signal is delivered before kill returns; reaching here means it was swallowed. */
    _exit(4);
}

/* Fatal as without the guard: SIGBUS, or SIGABRT where a sanitizer's handler came first and
 * reports the fault (the guard forwarded it there). */
static int fatal(int sig) { return sig == SIGBUS || sig == SIGABRT; }

static void test_other_faults_still_kill(void)
{
    CHECK(fatal(child_signal(fault_unguarded)));
    CHECK(fatal(child_signal(fault_after_remove)));
    CHECK(fatal(child_signal(killed_with_sigbus)));
}

static volatile sig_atomic_t chained;
static void earlier_handler(int sig)
{
    (void)sig;
    chained = 1;
}

/* A handler installed before the guard still receives the SIGBUS that is not the guard's.
 * Runs first, in a child, before anything in this process installed the guard. */
static void chained_child(void)
{
    signal(SIGBUS, earlier_handler);
    ds_error err;
    if (ds_fault_guard_install(&err) != DS_OK)
        _exit(3);
    kill(getpid(), SIGBUS);
    _exit(chained ? 0 : 5);
}

static void test_forwarding_to_earlier_handler(void)
{
    CHECK(child_signal(chained_child) == 0);
}

/* --- threads: one faults while others churn the table ----------------------------------- */

static atomic_int stop;

static void *churn(void *arg)
{
    (void)arg;
    void *m = mmap(NULL, page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    atomic_int flag = 0;
    ds_error err;
    while (!atomic_load(&stop)) {
        int slot;
        if (ds_fault_guard_add(m, page, &flag, &slot, &err) == DS_OK)
            ds_fault_guard_remove(slot);
    }
    munmap(m, page);
    return NULL;
}

static void test_fault_while_table_changes(void)
{
    pthread_t th[3];
    atomic_store(&stop, 0);
    for (int i = 0; i < 3; i++)
        REQUIRE(pthread_create(&th[i], NULL, churn, NULL) == 0);
    int ok = 1;
    for (int round = 0; round < 200 && ok; round++) {
        int fd;
        unsigned char *map;
        if (make_mapping(3, &fd, &map) != 0) {
            ok = 0;
            break;
        }
        atomic_int faulted = 0;
        int slot;
        ds_error err;
        if (ds_fault_guard_add(map, 3 * page, &faulted, &slot, &err) != DS_OK ||
            ftruncate(fd, 0) != 0)
            ok = 0;
        else if (read_byte(map + 2 * page) != 0 || atomic_load(&faulted) != 1)
            ok = 0;
        ds_fault_guard_remove(slot);
        munmap(map, 3 * page);
        close(fd);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    CHECK(ok);
}

int main(void)
{
    page = (size_t)sysconf(_SC_PAGESIZE);
    RUN(test_forwarding_to_earlier_handler);
    RUN(test_bad_ranges_refused);
    RUN(test_fault_on_shrunk_file_sets_flag);
    RUN(test_capacity);
    RUN(test_other_faults_still_kill);
    RUN(test_fault_while_table_changes);
    return test_summary();
}
