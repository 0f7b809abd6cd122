/* Logging to stderr with a level threshold. The daemon is the only multi-threaded user; each
 * line is written with one fprintf so lines from different threads do not interleave. */
#ifndef DS_CORE_LOG_H
#define DS_CORE_LOG_H

typedef enum ds_log_level {
    DS_LOG_DEBUG = 0,
    DS_LOG_INFO = 1,
    DS_LOG_WARN = 2,
    DS_LOG_ERROR = 3,
} ds_log_level;

void ds_log_set_level(ds_log_level level);
ds_log_level ds_log_get_level(void);

/* Parses "debug", "info", "warn", "error"; returns 0 on success, -1 for anything else. */
int ds_log_level_parse(const char *text, ds_log_level *out);

void ds_log(ds_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define ds_log_debug(...) ds_log(DS_LOG_DEBUG, __VA_ARGS__)
#define ds_log_info(...) ds_log(DS_LOG_INFO, __VA_ARGS__)
#define ds_log_warn(...) ds_log(DS_LOG_WARN, __VA_ARGS__)
#define ds_log_error(...) ds_log(DS_LOG_ERROR, __VA_ARGS__)

#endif
