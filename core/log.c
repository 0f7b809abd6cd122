#include "core/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static atomic_int current_level = DS_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void ds_log_set_level(ds_log_level level) { atomic_store(&current_level, (int)level); }

ds_log_level ds_log_get_level(void) { return (ds_log_level)atomic_load(&current_level); }

int ds_log_level_parse(const char *text, ds_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(text, level_names[i]) == 0) {
            *out = (ds_log_level)i;
            return 0;
        }
    }
    return -1;
}

void ds_log(ds_log_level level, const char *fmt, ...)
{
    if ((int)level < atomic_load(&current_level))
        return;
    char body[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s\n", tm.tm_year + 1900,
            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, now.tv_nsec / 1000000,
            level_names[level], body);
}
