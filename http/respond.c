/* Replies in the shapes each API's clients parse: OpenAI's error object, FastAPI's "detail". */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/gateway.h"

/* Messages quote what clients sent, which need not be UTF-8: JSON strings must be. */
static void ascii_only(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80 || (unsigned char)*s < 0x20)
            *s = '?';
}

void gw_fail(gw_failure *f, int status, const char *param, const char *fmt, ...)
{
    memset(f, 0, sizeof *f);
    f->status = status;
    snprintf(f->param, sizeof f->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->message, sizeof f->message, fmt, ap);
    va_end(ap);
    ascii_only(f->message);
    ascii_only(f->param);
}

void gw_reply_json(gw_response *r, int status, void *json)
{
    json_t *j = json;
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(j);
    free(r->body);
    r->body = text;
    r->len = text ? strlen(text) : 0;
    r->status = text ? status : 500;
    r->content_type = "application/json";
}

void gw_reply_bytes(gw_response *r, int status, const char *content_type, const void *data,
                    size_t len)
{
    free(r->body);
    r->body = malloc(len ? len : 1);
    if (!r->body) {
        r->len = 0;
        r->status = 500;
        r->content_type = "text/plain";
        return;
    }
    memcpy(r->body, data, len);
    r->len = len;
    r->status = status;
    r->content_type = content_type;
}

/* OpenAI's error `type` and `code` for a status. */
static const char *openai_type(int status)
{
    if (status == 401)
        return "authentication_error";
    if (status == 429)
        return "rate_limit_exceeded";
    if (status >= 500)
        return "server_error";
    return "invalid_request_error";
}

void gw_reply_failure(gw_response *r, gw_family family, const gw_failure *f)
{
    json_t *body;
    int status = f->status;
    if (family == GW_A1111) {
        if (f->param[0] && status == 400) {
            /* FastAPI's request-validation shape, which A1111 clients print as is. */
            status = 422;
            body = json_pack("{s:[{s:[s,s],s:s,s:s}]}", "detail", "loc", "body", f->param, "msg",
                             f->message, "type", "value_error");
        } else {
            body = json_pack("{s:s}", "detail", f->message);
        }
    } else {
        body = json_pack("{s:{s:s,s:s,s:o,s:o}}", "error", "message", f->message, "type",
                         openai_type(status), "param",
                         f->param[0] ? json_string(f->param) : json_null(), "code",
                         status == 429 ? json_string("rate_limit_exceeded") : json_null());
    }
    gw_reply_json(r, status, body);
    r->retry_after = f->retry_after;
}

void gw_reply_error(gw_response *r, gw_family family, int status, const char *param,
                    const char *fmt, ...)
{
    gw_failure f;
    gw_fail(&f, status, param, "%s", "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f.message, sizeof f.message, fmt, ap);
    va_end(ap);
    ascii_only(f.message);
    gw_reply_failure(r, family, &f);
}
