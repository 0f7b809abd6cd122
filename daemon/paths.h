/* Model paths as the daemon accepts them (DESIGN §4.8): absolute, resolved with realpath(), and
 * inside one of the configured model roots, compared component by component. Also the Python
 * str()/repr() formatting upstream's error messages use for a path argument.
 */
#ifndef DS_DAEMON_PATHS_H
#define DS_DAEMON_PATHS_H

#include <stddef.h>

#include "core/error.h"

typedef struct ds_model_roots {
    char **dirs;   /* resolved directories, owned, in the order given */
    size_t count;
} ds_model_roots;

void ds_model_roots_init(ds_model_roots *roots);
void ds_model_roots_free(ds_model_roots *roots);

/* Resolves `dir` and appends it. NOT_FOUND if it does not exist, INVALID_ARGUMENT if it is not
 * a directory. A root already present is not added twice. */
int ds_model_roots_add(ds_model_roots *roots, const char *dir, ds_error *err);

/* "/a, /b": for messages and logs. malloc'd; NULL on OOM. */
char *ds_model_roots_describe(const ds_model_roots *roots);

/* True when `path` is `root` or lies below it, component-wise (/models2 is not under /models).
 * Both must be canonical (realpath output). */
int ds_path_is_under(const char *root, const char *path);

/* Checks a path a client sent and resolves it. *resolved is malloc'd.
 * INVALID_ARGUMENT: empty, not absolute, not a regular file. NOT_FOUND: does not exist.
 * PERMISSION_DENIED: outside every root ("/x/y is outside the model roots: /a, /b") or not
 * reachable by the daemon. */
int ds_model_roots_resolve(const ds_model_roots *roots, const char *path, char **resolved,
                           ds_error *err);

/* Checks that a path a running step or pipeline opens (a model folder, a tokenizer folder, any
 * file type) lies inside the model roots once resolved. INVALID_ARGUMENT: not absolute.
 * NOT_FOUND: realpath() fails (the message says why). PERMISSION_DENIED: outside every root
 * ("/x is outside the model roots: /a, /b"). */
int ds_model_roots_check(const ds_model_roots *roots, const char *path, ds_error *err);

/* Python's repr() of a str holding these UTF-8 bytes (bytes that are not valid UTF-8 show as
 * Python shows surrogate-escaped file names, '\udcXX'). malloc'd; NULL on OOM. */
char *ds_python_repr(const char *text);

/* Python's str() of upstream's `path` argument: one path is the path itself, several are a
 * list repr "['/a', '/b']". malloc'd; NULL on OOM. */
char *ds_python_str_paths(const char *const *paths, size_t count);

#endif
