#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/form.h"

typedef struct collect {
    gw_form *form;
    size_t limit;
    int oom, too_many;
} collect;

static enum MHD_Result on_part(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *filename, const char *content_type,
                               const char *transfer_encoding, const char *data, uint64_t off,
                               size_t size)
{
    (void)kind;
    (void)content_type;
    (void)transfer_encoding;
    collect *c = cls;
    gw_form *form = c->form;
    gw_form_part *p = form->count ? &form->parts[form->count - 1] : NULL;
    /* Chunks of one part arrive with growing offsets; offset 0 starts a new part. */
    if (!p || off == 0 || strcmp(p->name, key ? key : "") != 0) {
        if (form->count >= GW_FORM_MAX_PARTS) {
            c->too_many = 1;
            return MHD_NO;
        }
        p = &form->parts[form->count++];
        snprintf(p->name, sizeof p->name, "%s", key ? key : "");
        snprintf(p->filename, sizeof p->filename, "%s", filename ? filename : "");
    }
    if (p->len + size > c->limit) {
        c->oom = 1;
        return MHD_NO;
    }
    char *grown = realloc(p->data, p->len + size + 1);
    if (!grown) {
        c->oom = 1;
        return MHD_NO;
    }
    p->data = grown;
    memcpy(p->data + p->len, data, size);
    p->len += size;
    p->data[p->len] = '\0';
    return MHD_YES;
}

int gw_form_parse(const gw_request *req, gw_form *form, gw_failure *f)
{
    memset(form, 0, sizeof *form);
    const char *type = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                   MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!type || (strncasecmp(type, "multipart/form-data", 19) != 0 &&
                  strncasecmp(type, "application/x-www-form-urlencoded", 33) != 0)) {
        gw_fail(f, 400, NULL, "the body must be multipart/form-data (the image as a file part), "
                              "not %.64s", type ? type : "without a Content-Type");
        return -1;
    }
    collect c = {form, req->len + 1, 0, 0};
    struct MHD_PostProcessor *pp = MHD_create_post_processor(req->conn, 64 * 1024, on_part, &c);
    if (!pp) {
        gw_fail(f, 400, NULL, "the multipart body has no boundary in its Content-Type");
        return -1;
    }
    enum MHD_Result ok = MHD_post_process(pp, req->body, req->len);
    enum MHD_Result end = MHD_destroy_post_processor(pp);
    if (c.too_many) {
        gw_fail(f, 400, NULL, "the form has more than %d parts", GW_FORM_MAX_PARTS);
    } else if (c.oom) {
        gw_fail(f, 500, NULL, "out of memory reading the form");
    } else if (ok != MHD_YES || end != MHD_YES) {
        gw_fail(f, 400, NULL, "the multipart body is malformed");
    } else {
        return 0;
    }
    gw_form_free(form);
    return -1;
}

void gw_form_free(gw_form *form)
{
    for (int i = 0; i < form->count; i++)
        free(form->parts[i].data);
    memset(form, 0, sizeof *form);
}

const gw_form_part *gw_form_get(const gw_form *form, const char *name)
{
    for (int i = 0; i < form->count; i++)
        if (strcmp(form->parts[i].name, name) == 0)
            return &form->parts[i];
    return NULL;
}

static bool listed(const char *const *names, const char *name)
{
    for (; names && *names; names++)
        if (strcmp(*names, name) == 0)
            return true;
    return false;
}

json_t *gw_form_fields_json(const gw_form *form, const char *const *numeric)
{
    json_t *obj = json_object();
    for (int i = 0; obj && i < form->count; i++) {
        const gw_form_part *p = &form->parts[i];
        if (p->filename[0] || json_object_get(obj, p->name))
            continue;
        const char *text = p->data ? p->data : "";
        json_t *v = NULL;
        if (listed(numeric, p->name) && *text) {
            char *end = NULL;
            long long n = strtoll(text, &end, 10);
            if (!*end) {
                v = json_integer(n);
            } else {
                double d = strtod(text, &end);
                if (!*end)
                    v = json_real(d);
            }
        }
        if (!v)
            v = json_stringn(text, p->len);
        /* Text that is not UTF-8 leaves the field out; the checks then call it missing. */
        if (v)
            json_object_set_new(obj, p->name, v);
    }
    return obj;
}
