/* Request fields read with the types the original APIs declare. A wrong type or a value out of
 * range fails with 400 naming the field, the way each API's own validation does. */
#ifndef DS_HTTP_FIELDS_H
#define DS_HTTP_FIELDS_H

#include <jansson.h>

#include "http/gateway.h"

/* The body as a JSON object; *out is yours (json_decref). */
int gw_body_object(const gw_request *req, json_t **out, gw_failure *f);

/* Each reads obj[name]: absent or null leaves *present false and *out unchanged. */
int gw_field_string(json_t *obj, const char *name, const char **out, bool *present,
                    gw_failure *f);
/* An integer in [min, max]; a JSON number with no fraction (20.0) counts as one, as Python's
 * validators accept it. */
int gw_field_int(json_t *obj, const char *name, long long min, long long max, long long *out,
                 bool *present, gw_failure *f);
/* A finite number in [min, max]. */
int gw_field_number(json_t *obj, const char *name, double min, double max, double *out,
                    bool *present, gw_failure *f);
/* A boolean. */
int gw_field_bool(json_t *obj, const char *name, bool *out, bool *present, gw_failure *f);

/* "WxH" (OpenAI's size) into w and h; fails naming `param`. */
int gw_parse_size(const char *text, const char *param, long long *w, long long *h,
                  gw_failure *f);

/* Text of a number as the daemon reads it. */
void gw_format_number(double v, char *out, size_t size);

#endif
