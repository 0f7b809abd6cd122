/* Where the daemon listens when nobody says otherwise: part of the contract, so the daemon and
 * every client agree without configuration. Order: $DIFFSYNTH_SOCKET, then
 * $XDG_RUNTIME_DIR/diffsynthd.sock, then /tmp/diffsynthd-<uid>.sock. */
#ifndef DS_PROTO_DEFAULT_SOCKET_H
#define DS_PROTO_DEFAULT_SOCKET_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Writes the path into buf; returns buf, or NULL if it does not fit. */
static inline char *ds_default_socket_path(char *buf, size_t size)
{
    const char *explicit_path = getenv("DIFFSYNTH_SOCKET");
    const char *runtime_dir = getenv("XDG_RUNTIME_DIR");
    int n;
    if (explicit_path && explicit_path[0])
        n = snprintf(buf, size, "%s", explicit_path);
    else if (runtime_dir && runtime_dir[0] == '/')
        n = snprintf(buf, size, "%s/diffsynthd.sock", runtime_dir);
    else
        n = snprintf(buf, size, "/tmp/diffsynthd-%u.sock", (unsigned)getuid());
    return (n > 0 && (size_t)n < size) ? buf : NULL;
}

#endif
