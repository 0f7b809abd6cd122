/* Internal interface shared by the files of libdiffsynth-client. Not installed. */
#ifndef DS_CLIENT_CLIENT_INTERNAL_H
#define DS_CLIENT_CLIENT_INTERNAL_H

#include "client/diffsynth_client.h"

/* Records a failure (message for ds_client_last_error, code 0) and returns `status`. */
int ds__client_fail(ds_client *client, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records a daemon Error reply as ds_client_call does (message, and its code for
 * ds_client_last_code) and returns DS_CLIENT_EDAEMON. */
int ds__client_daemon_error(ds_client *client, const diffsynth_v1_Error *error);

#endif
