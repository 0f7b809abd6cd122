/* Model paths as the daemon accepts them (DESIGN §4.8): absolute, and opened beneath one of the
 * configured model roots' directory descriptors in one step, so that nothing swapped in the file
 * system between a check and the open can lead outside the roots. The descriptor is what the
 * daemon reads from afterwards; the path is never resolved again. Also the Python str()/repr()
 * formatting upstream's error messages use for a path argument.
 */
#ifndef DS_DAEMON_PATHS_H
#define DS_DAEMON_PATHS_H

#include <stddef.h>

#include "core/error.h"

typedef struct ds_model_roots {
    char **dirs;   /* resolved directories, owned, in the order given */
    int *fds;      /* O_PATH descriptors of dirs, owned */
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

/* Model files a client named, opened beneath the roots: names[i] is the path fds[i] was opened
 * as (the kernel's name for the open file, so logs and replies name what was read); both owned,
 * release with ds_opened_paths_free. */
typedef struct ds_opened_paths {
    char **names;
    int *fds;
    size_t count;
} ds_opened_paths;

/* Opens a path a client sent, read-only, beneath the root it names: openat2() with
 * RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS, or where the kernel lacks it an equivalent walk one
 * component at a time from the root's descriptor with O_NOFOLLOW (symbolic links followed by
 * hand, never out of the root). The root is the one the path names lexically; a path that
 * names none (it reaches a root through a symbolic link) or leaves the one it names (a link into
 * another root) is placed by its realpath(), and is still opened beneath that root.
 * *fd and *name (malloc'd) are the caller's. INVALID_ARGUMENT: empty, not absolute, not a
 * regular file. NOT_FOUND: does not exist. PERMISSION_DENIED: outside every root ("/x/y is
 * outside the model roots: /a, /b") or not reachable by the daemon. */
int ds_model_roots_open(const ds_model_roots *roots, const char *path, int *fd, char **name,
                        ds_error *err);

/* ds_model_roots_open for each path; all or nothing. */
int ds_model_roots_open_all(const ds_model_roots *roots, char *const *paths, size_t count,
                            ds_opened_paths *out, ds_error *err);
void ds_opened_paths_free(ds_opened_paths *opened);

/* Makes ds_model_roots_open take the component walk even where openat2() exists, so tests
 * cover both. */
void ds__paths_force_walk(int on);

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
