/* Status codes and error values.
 *
 * Every fallible function returns an int: DS_OK (0) or a negative ds_status. When it fails it
 * also fills a ds_error with a message that names what was wrong (file, tensor, expected vs
 * got). The codes mirror gRPC's (DESIGN §4.7) so they map 1:1 onto proto Code: status = -code.
 */
#ifndef DS_CORE_ERROR_H
#define DS_CORE_ERROR_H

#include <stddef.h>

typedef enum ds_status {
    DS_OK = 0,
    DS_ERR_CANCELLED = -1,
    DS_ERR_UNKNOWN = -2,
    DS_ERR_INVALID_ARGUMENT = -3,
    DS_ERR_DEADLINE_EXCEEDED = -4,
    DS_ERR_NOT_FOUND = -5,
    DS_ERR_ALREADY_EXISTS = -6,
    DS_ERR_PERMISSION_DENIED = -7,
    DS_ERR_RESOURCE_EXHAUSTED = -8,
    DS_ERR_FAILED_PRECONDITION = -9,
    DS_ERR_ABORTED = -10,
    DS_ERR_OUT_OF_RANGE = -11,
    DS_ERR_UNIMPLEMENTED = -12,
    DS_ERR_INTERNAL = -13,
    DS_ERR_UNAVAILABLE = -14,
    DS_ERR_DATA_LOSS = -15,
    DS_ERR_UNAUTHENTICATED = -16,
} ds_status;

#define DS_ERROR_MESSAGE_MAX 4096

typedef struct ds_error {
    int code;                          /* a ds_status; DS_OK when no error was recorded */
    char message[DS_ERROR_MESSAGE_MAX];
} ds_error;

/* "INVALID_ARGUMENT" etc.; "OK" for 0; "UNKNOWN" for anything not in the table. */
const char *ds_status_name(int status);

/* Records `code` and a printf-formatted message in err (which may be NULL) and returns `code`,
 * so a failure path reads `return ds_error_set(err, DS_ERR_NOT_FOUND, "...", ...);`. */
int ds_error_set(ds_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends context ("while loading X: ") to an already recorded message; returns err->code. */
int ds_error_prefix(ds_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void ds_error_clear(ds_error *err);

#endif
