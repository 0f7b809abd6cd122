#include "daemon/admission.h"

#include "core/log.h"
#include "daemon/list.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

void ds_admission_init(ds_admission *a, uint64_t limit, const char *limit_source, int threads)
{
    memset(a, 0, sizeof *a);
    a->limit = limit;
    snprintf(a->limit_source, sizeof a->limit_source, "%s", limit_source);
    a->threads = threads;
}

/* "12.5 GiB" for messages, beside the exact byte count. */
static const char *gib(uint64_t bytes, char *buf, size_t size)
{
    snprintf(buf, size, "%.2f GiB", (double)bytes / (double)(1ull << 30));
    return buf;
}

/* A "Key:   123 kB" line of a /proc file in bytes; 0 when absent. */
static uint64_t proc_kb(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[256];
    size_t n = strlen(key);
    uint64_t v = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0 && line[n] == ':') {
            v = strtoull(line + n + 1, NULL, 10) * 1024;
            break;
        }
    fclose(f);
    return v;
}

/* A cgroup v2 file holding one number or "max"; UINT64_MAX when "max" or unreadable. */
static uint64_t cgroup_value(const char *dir, const char *file)
{
    char path[1024];
    snprintf(path, sizeof path, "/sys/fs/cgroup%s/%s", dir, file);
    FILE *f = fopen(path, "r");
    if (!f)
        return UINT64_MAX;
    char buf[64] = {0};
    uint64_t v = UINT64_MAX;
    if (fgets(buf, sizeof buf, f) && strncmp(buf, "max", 3) != 0)
        v = strtoull(buf, NULL, 10);
    fclose(f);
    return v;
}

/* What the cgroup (v2) this process runs in still lets it take; UINT64_MAX: no limit. */
static uint64_t cgroup_room(void)
{
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f)
        return UINT64_MAX;
    char line[512], dir[sizeof line] = "";
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "0::", 3) == 0) {
            snprintf(dir, sizeof dir, "%s", line + 3);
            dir[strcspn(dir, "\n")] = '\0';
            break;
        }
    fclose(f);
    if (!dir[0] || strstr(dir, ".."))
        return UINT64_MAX;
    uint64_t max = cgroup_value(dir, "memory.max");
    if (max == UINT64_MAX)
        return UINT64_MAX;
    uint64_t current = cgroup_value(dir, "memory.current");
    if (current == UINT64_MAX)
        current = 0;
    return max > current ? max - current : 0;
}

uint64_t ds_admission_default_limit(char *source, size_t source_size)
{
    uint64_t room = proc_kb("/proc/meminfo", "MemAvailable");
    const char *what = "MemAvailable";
    if (room == 0) {
        room = proc_kb("/proc/meminfo", "MemTotal");
        what = "MemTotal";
    }
    uint64_t cg = cgroup_room();
    if (cg < room || room == 0) {
        room = cg;
        what = "the cgroup's memory.max less memory.current";
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        uint64_t mapped = proc_kb("/proc/self/status", "VmSize");
        uint64_t as_room = rl.rlim_cur > mapped ? rl.rlim_cur - mapped : 0;
        if (as_room < room || room == 0) {
            room = as_room;
            what = "RLIMIT_AS less the address space mapped";
        }
    }
    if (room == 0 || room == UINT64_MAX) {
        snprintf(source, source_size, "none: the machine's memory could not be read; set one "
                 "with --request-memory-limit");
        return UINT64_MAX;
    }
    snprintf(source, source_size, "half of %s at start, the default of --request-memory-limit",
             what);
    return room / 2;
}

int ds_admission_reserve(ds_admission *a, ds_admission_ticket *t, const char *what,
                         ds_memory_need need, uint64_t device_budget, ds_error *err)
{
    char b1[32], b2[32], b3[32];
    uint64_t total = need.held > UINT64_MAX - need.peak ? UINT64_MAX : need.held + need.peak;
    if (device_budget != UINT64_MAX && need.peak > device_budget)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "%s needs an estimated %" PRIu64 " bytes (%s) of device memory for "
                            "its activations, more than the VRAM budget of %" PRIu64
                            " bytes (%s): ask for a smaller size",
                            what, need.peak, gib(need.peak, b1, sizeof b1), device_budget,
                            gib(device_budget, b2, sizeof b2));
    if (a->limit != UINT64_MAX && total > a->limit)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                            "%s needs an estimated %" PRIu64 " bytes (%s: %" PRIu64
                            " held until the reply, %" PRIu64 " more while a unit runs), more "
                            "than the request memory limit of %" PRIu64
                            " bytes (%s; %s): ask for a smaller size",
                            what, total, gib(total, b1, sizeof b1), need.held, need.peak,
                            a->limit, gib(a->limit, b2, sizeof b2), a->limit_source);
    if (a->limit != UINT64_MAX) {
        uint64_t peak = need.peak;
        for (const ds_admission_ticket *q = a->head; q; q = q->next)
            if (q->need.peak > peak)
                peak = q->need.peak;
        uint64_t held = a->held > UINT64_MAX - need.held ? UINT64_MAX : a->held + need.held;
        uint64_t in_use = held > UINT64_MAX - peak ? UINT64_MAX : held + peak;
        if (in_use > a->limit)
            return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED,
                                "%s needs an estimated %" PRIu64 " bytes (%s), and with the %zu "
                                "requests admitted before it (%" PRIu64 " bytes held, %s) it "
                                "would pass the request memory limit of %" PRIu64
                                " bytes (%s); try again when they have finished",
                                what, total, gib(total, b1, sizeof b1), a->count, a->held,
                                gib(a->held, b3, sizeof b3), a->limit,
                                gib(a->limit, b2, sizeof b2));
    }
    t->need = need;
    t->active = 1;
    DS_LIST_PUSH_FRONT(a->head, t);
    a->held += need.held;
    a->count++;
    ds_log_debug("admitted %s: %" PRIu64 " bytes held, %" PRIu64 " more while a unit runs; %zu "
                 "requests admitted, %" PRIu64 " bytes held", what, need.held, need.peak,
                 a->count, a->held);
    return DS_OK;
}

void ds_admission_release(ds_admission *a, ds_admission_ticket *t)
{
    if (!t->active)
        return;
    DS_LIST_UNLINK(a->head, t);
    a->held -= t->need.held;
    a->count--;
    t->active = 0;
    t->prev = t->next = NULL;
}

void ds_admission_fit_convert_budget(ds_vram_manager *convert, size_t configured,
                                     uint64_t request_limit)
{
    size_t budget = configured;
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        ds_vram_stats st;
        ds_vram_stats_get(convert, &st);
        uint64_t mapped = proc_kb("/proc/self/status", "VmSize");
        uint64_t room = rl.rlim_cur > mapped ? rl.rlim_cur - mapped : 0;
        /* The copies held now are mapped already: they count in the room they may keep. */
        uint64_t held = (uint64_t)st.resident_bytes + st.cached_bytes;
        uint64_t reserved = request_limit == UINT64_MAX ? room : request_limit;
        uint64_t fits = room + held > reserved ? room + held - reserved : 0;
        if (fits < budget)
            budget = (size_t)fits;
    }
    ds_error err = {0};
    if (ds_vram_set_budget(convert, budget, &err) != DS_OK)
        ds_log_warn("convert limit: %s", err.message);
}
