#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const status_names[] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *ds_status_name(int status)
{
    int index = -status;
    if (index < 0 || index >= (int)(sizeof status_names / sizeof status_names[0]))
        return "UNKNOWN";
    return status_names[index];
}

int ds_error_set(ds_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int ds_error_prefix(ds_error *err, const char *fmt, ...)
{
    if (!err)
        return DS_ERR_UNKNOWN;
    char prefix[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return err->code;
    size_t plen = strlen(prefix);
    size_t mlen = strlen(err->message);
    /* The message is cut at the end, never the context at the front. */
    if (plen + mlen >= sizeof err->message)
        mlen = sizeof err->message - 1 - plen;
    memmove(err->message + plen, err->message, mlen);
    memcpy(err->message, prefix, plen);
    err->message[plen + mlen] = '\0';
    return err->code;
}

void ds_error_clear(ds_error *err)
{
    if (err) {
        err->code = DS_OK;
        err->message[0] = '\0';
    }
}
