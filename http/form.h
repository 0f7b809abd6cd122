/* multipart/form-data bodies (OpenAI's image edits) through libmicrohttpd's post processor. */
#ifndef DS_HTTP_FORM_H
#define DS_HTTP_FORM_H

#include <jansson.h>

#include "http/gateway.h"

#define GW_FORM_MAX_PARTS 32

typedef struct gw_form_part {
    char name[64];
    char filename[128];     /* "" for a plain field */
    char *data;             /* malloc'd, NUL-terminated */
    size_t len;
} gw_form_part;

typedef struct gw_form {
    gw_form_part parts[GW_FORM_MAX_PARTS];
    int count;
} gw_form;

/* Parses the request's body as the form its Content-Type announces. */
int gw_form_parse(const gw_request *req, gw_form *form, gw_failure *f);
void gw_form_free(gw_form *form);
/* The first part named `name`, or NULL. */
const gw_form_part *gw_form_get(const gw_form *form, const char *name);

/* The plain fields as a JSON object, so that the JSON endpoints' checks apply: the fields named
 * in `numeric` become numbers when their whole text is one, so that a field that is not one
 * is refused by those checks with its name. */
json_t *gw_form_fields_json(const gw_form *form, const char *const *numeric);

#endif
