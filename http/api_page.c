/* GET /: the web page, embedded in the binary (http/page.html). */
#include <stddef.h>

#include "http/gateway.h"

extern const char gw_page_html[];
extern const size_t gw_page_html_len;

void gw_page(gw *g, const gw_request *req, gw_response *r)
{
    (void)g;
    (void)req;
    gw_reply_bytes(r, 200, "text/html; charset=utf-8", gw_page_html, gw_page_html_len);
}
