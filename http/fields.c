#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/fields.h"

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

int gw_body_object(const gw_request *req, json_t **out, gw_failure *f)
{
    json_error_t err;
    *out = NULL;
    if (req->len == 0) {
        gw_fail(f, 400, NULL, "the request has no body: a JSON object was expected");
        return -1;
    }
    json_t *v = json_loadb(req->body, req->len, JSON_REJECT_DUPLICATES, &err);
    if (!v) {
        gw_fail(f, 400, NULL, "the body is not valid JSON: %s (line %d, column %d)", err.text,
                err.line, err.column);
        return -1;
    }
    if (!json_is_object(v)) {
        gw_fail(f, 400, NULL, "the body is %s; a JSON object was expected", type_name(v));
        json_decref(v);
        return -1;
    }
    *out = v;
    return 0;
}

static json_t *get(json_t *obj, const char *name, bool *present)
{
    json_t *v = json_object_get(obj, name);
    if (v && json_is_null(v))
        v = NULL;
    if (present)
        *present = v != NULL;
    return v;
}

int gw_field_string(json_t *obj, const char *name, const char **out, bool *present,
                    gw_failure *f)
{
    json_t *v = get(obj, name, present);
    if (!v)
        return 0;
    if (!json_is_string(v)) {
        gw_fail(f, 400, name, "%s must be a string, not %s", name, type_name(v));
        return -1;
    }
    if (strlen(json_string_value(v)) != json_string_length(v)) {
        gw_fail(f, 400, name, "%s must not contain NUL characters", name);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

int gw_field_int(json_t *obj, const char *name, long long min, long long max, long long *out,
                 bool *present, gw_failure *f)
{
    json_t *v = get(obj, name, present);
    if (!v)
        return 0;
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e15) {
        x = (long long)json_real_value(v);
    } else {
        gw_fail(f, 400, name, "%s must be an integer, not %s", name, type_name(v));
        return -1;
    }
    if (x < min || x > max) {
        gw_fail(f, 400, name, "%s is %lld, expected %lld to %lld", name, x, min, max);
        return -1;
    }
    *out = x;
    return 0;
}

int gw_field_number(json_t *obj, const char *name, double min, double max, double *out,
                    bool *present, gw_failure *f)
{
    json_t *v = get(obj, name, present);
    if (!v)
        return 0;
    if (!json_is_number(v)) {
        gw_fail(f, 400, name, "%s must be a number, not %s", name, type_name(v));
        return -1;
    }
    double x = json_number_value(v);
    if (!isfinite(x) || x < min || x > max) {
        gw_fail(f, 400, name, "%s is %g, expected %g to %g", name, x, min, max);
        return -1;
    }
    *out = x;
    return 0;
}

int gw_field_bool(json_t *obj, const char *name, bool *out, bool *present, gw_failure *f)
{
    json_t *v = get(obj, name, present);
    if (!v)
        return 0;
    if (!json_is_boolean(v)) {
        gw_fail(f, 400, name, "%s must be true or false, not %s", name, type_name(v));
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

int gw_parse_size(const char *text, const char *param, long long *w, long long *h,
                  gw_failure *f)
{
    char *end = NULL;
    long long a = -1, b = -1;
    if (text[0] >= '0' && text[0] <= '9') {
        a = strtoll(text, &end, 10);
        if ((*end == 'x' || *end == 'X') && end[1] >= '0' && end[1] <= '9')
            b = strtoll(end + 1, &end, 10);
    }
    if (a <= 0 || b <= 0 || *end || a > 1000000 || b > 1000000) {
        gw_fail(f, 400, param, "%s must be WIDTHxHEIGHT in pixels, like \"1024x1024\", not \"%.64s\"",
                param, text);
        return -1;
    }
    *w = a;
    *h = b;
    return 0;
}

void gw_format_number(double v, char *out, size_t size) { snprintf(out, size, "%.17g", v); }
