#include "daemon/paths.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

void ds_model_roots_init(ds_model_roots *roots)
{
    roots->dirs = NULL;
    roots->fds = NULL;
    roots->count = 0;
}

/* Both lists pair a name with the descriptor opened for it; both own the two. */
static void free_named_fds(char **names, int *fds, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        free(names[i]);
        close(fds[i]);
    }
    free(names);
    free(fds);
}

void ds_model_roots_free(ds_model_roots *roots)
{
    free_named_fds(roots->dirs, roots->fds, roots->count);
    ds_model_roots_init(roots);
}

int ds_model_roots_add(ds_model_roots *roots, const char *dir, ds_error *err)
{
    char *resolved = realpath(dir, NULL);
    if (!resolved)
        return ds_error_set(err, errno == ENOENT ? DS_ERR_NOT_FOUND : DS_ERR_INVALID_ARGUMENT,
                            "model root %s: %s", dir, strerror(errno));
    for (size_t i = 0; i < roots->count; i++) {
        if (strcmp(roots->dirs[i], resolved) == 0) {
            free(resolved);
            return DS_OK;
        }
    }
    int fd = open(resolved, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        free(resolved);
        if (e == ENOTDIR)
            return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "model root %s is not a directory",
                                dir);
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "model root %s: %s", dir, strerror(e));
    }
    char **dirs = realloc(roots->dirs, (roots->count + 1) * sizeof *dirs);
    if (dirs)
        roots->dirs = dirs;
    int *fds = dirs ? realloc(roots->fds, (roots->count + 1) * sizeof *fds) : NULL;
    if (!fds) {
        close(fd);
        free(resolved);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory adding model root");
    }
    roots->fds = fds;
    roots->dirs[roots->count] = resolved;
    roots->fds[roots->count] = fd;
    roots->count++;
    return DS_OK;
}

char *ds_model_roots_describe(const ds_model_roots *roots)
{
    size_t len = 1;
    for (size_t i = 0; i < roots->count; i++)
        len += strlen(roots->dirs[i]) + 2;
    char *out = malloc(len);
    if (!out)
        return NULL;
    out[0] = '\0';
    for (size_t i = 0; i < roots->count; i++) {
        if (i)
            strcat(out, ", ");
        strcat(out, roots->dirs[i]);
    }
    return out;
}

int ds_path_is_under(const char *root, const char *path)
{
    size_t n = strlen(root);
    /* realpath gives "/" only for the filesystem root; every other root has no trailing '/'. */
    if (n == 1 && root[0] == '/')
        return path[0] == '/';
    return strncmp(root, path, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* --- opening beneath a root ------------------------------------------------------------------ */

/* Flags of every model-file open: O_NONBLOCK so that a FIFO cannot hang the open. */
#define MODEL_OPEN_FLAGS (O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
/* As Linux's MAXSYMLINKS. */
#define MAX_LINKS 40

static int force_walk;

void ds__paths_force_walk(int on) { force_walk = on; }

static int open_openat2(int root, const char *rel)
{
    struct open_how how = {
        .flags = MODEL_OPEN_FLAGS,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    };
    return (int)syscall(SYS_openat2, root, rel, &how, sizeof how);
}

/* The remaining components of a walk: text to consume from the front, grown at the front when
 * a symbolic link's target is spliced in. */
typedef struct walk_rest {
    char *text;
    size_t pos;
} walk_rest;

/* Next component into `out` (NUL-terminated); 0 when none is left. "" and "." are skipped. */
static int next_component(walk_rest *t, char *out, size_t size)
{
    for (;;) {
        while (t->text[t->pos] == '/')
            t->pos++;
        if (!t->text[t->pos])
            return 0;
        size_t n = strcspn(t->text + t->pos, "/");
        if (n >= size) {
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(out, t->text + t->pos, n);
        out[n] = '\0';
        t->pos += n;
        if (strcmp(out, ".") != 0)
            return 1;
    }
}

static int more_components(const walk_rest *t)
{
    for (size_t i = t->pos; t->text[i]; i++)
        if (t->text[i] != '/' && !(t->text[i] == '.' && (t->text[i + 1] == '/' || !t->text[i + 1])))
            return 1;
    return 0;
}

/* Replaces the consumed part of `t` with the link target: target + "/" + rest. */
static int splice_link(walk_rest *t, const char *target)
{
    const char *rest = t->text + t->pos;
    size_t n = strlen(target) + 1 + strlen(rest) + 1;
    char *text = malloc(n);
    if (!text) {
        errno = ENOMEM;
        return -1;
    }
    snprintf(text, n, "%s/%s", target, rest);
    free(t->text);
    t->text = text;
    t->pos = 0;
    return 0;
}

/* openat2's RESOLVE_BENEATH by hand: every component opened with O_NOFOLLOW from the directory
 * reached so far; a symbolic link is read and its target walked in its place; ".." above the
 * root, or an absolute link, fails with EXDEV as openat2 does. Returns the open file or -1
 * with errno set. */
static int open_walk(int root, const char *rel)
{
    walk_rest t = {strdup(rel), 0};
    if (!t.text) {
        errno = ENOMEM;
        return -1;
    }
    int stack[PATH_MAX / 2];  /* directories below the root; the root itself is not owned */
    size_t depth = 0;
    int links = 0, result = -1, e = 0;
    char name[NAME_MAX + 1], target[PATH_MAX];
    for (;;) {
        int got = next_component(&t, name, sizeof name);
        if (got < 0) {
            e = errno;
            break;
        }
        if (got == 0) {
            /* The path names a directory (the root or one below it): reopen it for reading. */
            int dir = depth ? stack[depth - 1] : root;
            result = openat(dir, ".", MODEL_OPEN_FLAGS);
            e = errno;
            break;
        }
        if (strcmp(name, "..") == 0) {
            if (depth == 0) {
                e = EXDEV;
                break;
            }
            close(stack[--depth]);
            continue;
        }
        int dir = depth ? stack[depth - 1] : root;
        int last = !more_components(&t);
        int fd = openat(dir, name, (last ? MODEL_OPEN_FLAGS : O_PATH | O_CLOEXEC) | O_NOFOLLOW);
        int is_link = 0;
        if (fd < 0) {
            /* O_NOFOLLOW on a link: ELOOP for a normal open. */
            struct stat st;
            if (errno != ELOOP || fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
                !S_ISLNK(st.st_mode)) {
                e = errno == ELOOP ? ELOOP : errno;
                break;
            }
            is_link = 1;
        } else {
            struct stat st;
            if (fstat(fd, &st) != 0) {
                e = errno;
                close(fd);
                break;
            }
            if (S_ISLNK(st.st_mode)) {
                /* O_PATH | O_NOFOLLOW opens the link itself. */
                close(fd);
                is_link = 1;
            } else if (last) {
                result = fd;
                break;
            } else if (!S_ISDIR(st.st_mode)) {
                close(fd);
                e = ENOTDIR;
                break;
            } else if (depth == sizeof stack / sizeof stack[0]) {
                close(fd);
                e = ENAMETOOLONG;
                break;
            } else {
                stack[depth++] = fd;
                continue;
            }
        }
        if (is_link) {
            ssize_t n = readlinkat(dir, name, target, sizeof target - 1);
            if (n < 0) {
                e = errno;
                break;
            }
            target[n] = '\0';
            if (++links > MAX_LINKS) {
                e = ELOOP;
                break;
            }
            if (target[0] == '/') {
                e = EXDEV;
                break;
            }
            if (splice_link(&t, target) != 0) {
                e = errno;
                break;
            }
        }
    }
    while (depth > 0)
        close(stack[--depth]);
    free(t.text);
    if (result < 0)
        errno = e;
    return result;
}

static int open_beneath(int root, const char *rel)
{
    if (!force_walk) {
        int fd = open_openat2(root, rel);
        if (fd >= 0 || (errno != ENOSYS && errno != EPERM))
            return fd;
        /* ENOSYS: a kernel before 5.6; EPERM: a seccomp filter that does not know openat2. */
    }
    return open_walk(root, rel);
}

/* The root `path` names lexically, and the rest of it; -1 when it names none. */
static int lexical_root(const ds_model_roots *roots, const char *path, const char **rel)
{
    for (size_t i = 0; i < roots->count; i++) {
        if (ds_path_is_under(roots->dirs[i], path)) {
            size_t n = strlen(roots->dirs[i]);
            *rel = n == 1 ? path + 1 : path + n;
            while (**rel == '/')
                (*rel)++;
            return (int)i;
        }
    }
    return -1;
}

static int outside_error(const ds_model_roots *roots, const char *path, ds_error *err)
{
    char *list = ds_model_roots_describe(roots);
    ds_error_set(err, DS_ERR_PERMISSION_DENIED, "%s is outside the model roots: %s", path,
                 list ? list : "(out of memory)");
    free(list);
    return DS_ERR_PERMISSION_DENIED;
}

static int open_error(const ds_model_roots *roots, const char *path, int e, ds_error *err)
{
    if (e == EXDEV)
        return outside_error(roots, path, err);
    if (e == ELOOP)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "%s: too many symbolic links (a loop), or a /proc magic link", path);
    if (e == ENOENT || e == ENOTDIR)
        return ds_error_set(err, DS_ERR_NOT_FOUND, "%s: no such file", path);
    if (e == EACCES || e == EPERM)
        return ds_error_set(err, DS_ERR_PERMISSION_DENIED, "%s: the daemon cannot reach it: %s",
                            path, strerror(e));
    if (e == ENOMEM)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", path);
    return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: %s", path, strerror(e));
}

/* The kernel's name for an open file; NULL when /proc cannot say (then the caller builds one). */
static char *fd_name(int fd)
{
    char link[64], buf[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, sizeof buf - 1);
    if (n <= 0 || buf[0] != '/')
        return NULL;
    buf[n] = '\0';
    return strdup(buf);
}

int ds_model_roots_open(const ds_model_roots *roots, const char *path, int *fd_out, char **name,
                        ds_error *err)
{
    *fd_out = -1;
    *name = NULL;
    if (!path || !path[0])
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "empty model path");
    if (path[0] != '/')
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "model path %s is not absolute (the daemon does not know the "
                            "client's working directory)",
                            path);
    const char *rel = NULL;
    int root = lexical_root(roots, path, &rel);
    int fd = -1, e = ENOENT;
    if (root >= 0) {
        fd = open_beneath(roots->fds[root], rel[0] ? rel : ".");
        e = errno;
    }
    char *real = NULL;
    if (root < 0 || (fd < 0 && e == EXDEV)) {
        /* Only to choose the root: the open below is still beneath it, so a link swapped after
         * realpath() looked cannot lead out of it. */
        int named_root = root >= 0;
        real = realpath(path, NULL);
        if (!real) {
            /* A link out of the root that leads nowhere is still a link out of the root. */
            int re = errno;
            return open_error(roots, path, named_root ? e : re, err);
        }
        root = lexical_root(roots, real, &rel);
        if (root < 0) {
            int rc = outside_error(roots, real, err);
            free(real);
            return rc;
        }
        fd = open_beneath(roots->fds[root], rel[0] ? rel : ".");
        e = errno;
    }
    if (fd < 0) {
        int rc = open_error(roots, real ? real : path, e, err);
        free(real);
        return rc;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        int rc = ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s is not a regular file",
                              real ? real : path);
        free(real);
        return rc;
    }
    char *opened = fd_name(fd);
    if (!opened) {
        size_t n = strlen(roots->dirs[root]) + strlen(rel) + 2;
        opened = malloc(n);
        if (opened)
            snprintf(opened, n, "%s/%s", roots->dirs[root], rel);
    }
    free(real);
    if (!opened) {
        close(fd);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", path);
    }
    *fd_out = fd;
    *name = opened;
    return DS_OK;
}

void ds_opened_paths_free(ds_opened_paths *opened)
{
    free_named_fds(opened->names, opened->fds, opened->count);
    opened->names = NULL;
    opened->fds = NULL;
    opened->count = 0;
}

int ds_model_roots_open_all(const ds_model_roots *roots, char *const *paths, size_t count,
                            ds_opened_paths *out, ds_error *err)
{
    out->count = 0;
    out->names = calloc(count ? count : 1, sizeof *out->names);
    out->fds = calloc(count ? count : 1, sizeof *out->fds);
    if (!out->names || !out->fds) {
        ds_opened_paths_free(out);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory opening paths");
    }
    for (size_t i = 0; i < count; i++) {
        int rc = ds_model_roots_open(roots, paths[i], &out->fds[i], &out->names[i], err);
        if (rc != DS_OK) {
            ds_opened_paths_free(out);
            return rc;
        }
        out->count = i + 1;
    }
    return DS_OK;
}

int ds_model_roots_check(const ds_model_roots *roots, const char *path, ds_error *err)
{
    char resolved[PATH_MAX];
    if (path[0] != '/')
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s is not an absolute path", path);
    if (!realpath(path, resolved))
        return ds_error_set(err, DS_ERR_NOT_FOUND, "%s: %s", path, strerror(errno));
    for (size_t i = 0; i < roots->count; i++)
        if (ds_path_is_under(roots->dirs[i], resolved))
            return DS_OK;
    char *described = ds_model_roots_describe(roots);
    int rc = ds_error_set(err, DS_ERR_PERMISSION_DENIED, "%s is outside the model roots: %s", path,
                          described ? described : "(none)");
    free(described);
    return rc;
}

typedef struct strbuf {
    char *data;
    size_t len;
    size_t cap;
    int oom;
} strbuf;

static void sb_append(strbuf *sb, const char *text, size_t n)
{
    if (sb->oom)
        return;
    if (sb->len + n + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap : 64;
        while (cap < sb->len + n + 1)
            cap *= 2;
        char *grown = realloc(sb->data, cap);
        if (!grown) {
            sb->oom = 1;
            return;
        }
        sb->data = grown;
        sb->cap = cap;
    }
    memcpy(sb->data + sb->len, text, n);
    sb->len += n;
    sb->data[sb->len] = '\0';
}

static char *sb_finish(strbuf *sb)
{
    if (sb->oom || !sb->data) {
        free(sb->data);
        return sb->oom ? NULL : strdup("");
    }
    return sb->data;
}

/* Decodes one strict UTF-8 sequence (no overlongs, no surrogates, at most U+10FFFF).
 * Returns its length, or 0 when s does not start a valid sequence. */
static size_t utf8_decode(const unsigned char *s, uint32_t *cp)
{
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    size_t n;
    uint32_t c, min;
    if (s[0] >= 0xC2 && s[0] <= 0xDF) {
        n = 2, c = s[0] & 0x1F, min = 0x80;
    } else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
        n = 3, c = s[0] & 0x0F, min = 0x800;
    } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
        n = 4, c = s[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)  /* also stops at the terminating NUL */
            return 0;
        c = c << 6 | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return n;
}

/* Python's str.isprintable() for non-ASCII code points: false for the control, format,
 * separator and private-use ranges below. Unassigned code points (Python: not printable) are
 * not tabulated here; a path holding one prints it as is. */
static int python_printable(uint32_t c)
{
    static const uint32_t ranges[][2] = {
        {0x80, 0xA0},       {0xAD, 0xAD},       {0x600, 0x605},     {0x61C, 0x61C},
        {0x6DD, 0x6DD},     {0x70F, 0x70F},     {0x890, 0x891},     {0x8E2, 0x8E2},
        {0x1680, 0x1680},   {0x180E, 0x180E},   {0x2000, 0x200F},   {0x2028, 0x202F},
        {0x205F, 0x2064},   {0x2066, 0x206F},   {0x3000, 0x3000},   {0xE000, 0xF8FF},
        {0xFEFF, 0xFEFF},   {0xFFF9, 0xFFFB},   {0xFFFE, 0xFFFF},   {0x110BD, 0x110BD},
        {0x110CD, 0x110CD}, {0x13430, 0x1343F}, {0x1BCA0, 0x1BCA3}, {0x1D173, 0x1D17A},
        {0xE0001, 0xE0001}, {0xE0020, 0xE007F}, {0xF0000, 0x10FFFF},
    };
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++)
        if (c >= ranges[i][0] && c <= ranges[i][1])
            return 0;
    return 1;
}

static void repr_into(strbuf *sb, const char *text)
{
    const unsigned char *s = (const unsigned char *)text;
    /* Python picks double quotes only when the text has a single quote and no double quote. */
    char quote = strchr(text, '\'') && !strchr(text, '"') ? '"' : '\'';
    char tmp[16];
    sb_append(sb, &quote, 1);
    while (*s) {
        uint32_t c;
        size_t n = utf8_decode(s, &c);
        if (n == 0) {
            snprintf(tmp, sizeof tmp, "\\udc%02x", *s);
            sb_append(sb, tmp, strlen(tmp));
            s++;
            continue;
        }
        if (c == '\\' || c == (uint32_t)quote) {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            sb_append(sb, tmp, 2);
        } else if (c == '\t') {
            sb_append(sb, "\\t", 2);
        } else if (c == '\n') {
            sb_append(sb, "\\n", 2);
        } else if (c == '\r') {
            sb_append(sb, "\\r", 2);
        } else if (c < 0x20 || c == 0x7F) {
            snprintf(tmp, sizeof tmp, "\\x%02x", c);
            sb_append(sb, tmp, 4);
        } else if (c < 0x80 || python_printable(c)) {
            sb_append(sb, (const char *)s, n);
        } else if (c <= 0xFF) {
            snprintf(tmp, sizeof tmp, "\\x%02x", c);
            sb_append(sb, tmp, strlen(tmp));
        } else if (c <= 0xFFFF) {
            snprintf(tmp, sizeof tmp, "\\u%04x", c);
            sb_append(sb, tmp, strlen(tmp));
        } else {
            snprintf(tmp, sizeof tmp, "\\U%08x", c);
            sb_append(sb, tmp, strlen(tmp));
        }
        s += n;
    }
    sb_append(sb, &quote, 1);
}

char *ds_python_repr(const char *text)
{
    strbuf sb = {0};
    repr_into(&sb, text);
    return sb_finish(&sb);
}

char *ds_python_str_paths(const char *const *paths, size_t count)
{
    if (count == 1)
        return strdup(paths[0]);
    strbuf sb = {0};
    sb_append(&sb, "[", 1);
    for (size_t i = 0; i < count; i++) {
        if (i)
            sb_append(&sb, ", ", 2);
        repr_into(&sb, paths[i]);
    }
    sb_append(&sb, "]", 1);
    return sb_finish(&sb);
}
