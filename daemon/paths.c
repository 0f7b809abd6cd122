#include "daemon/paths.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void ds_model_roots_init(ds_model_roots *roots)
{
    roots->dirs = NULL;
    roots->count = 0;
}

void ds_model_roots_free(ds_model_roots *roots)
{
    for (size_t i = 0; i < roots->count; i++)
        free(roots->dirs[i]);
    free(roots->dirs);
    ds_model_roots_init(roots);
}

int ds_model_roots_add(ds_model_roots *roots, const char *dir, ds_error *err)
{
    char *resolved = realpath(dir, NULL);
    if (!resolved)
        return ds_error_set(err, errno == ENOENT ? DS_ERR_NOT_FOUND : DS_ERR_INVALID_ARGUMENT,
                            "model root %s: %s", dir, strerror(errno));
    struct stat st;
    if (stat(resolved, &st) != 0 || !S_ISDIR(st.st_mode)) {
        free(resolved);
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "model root %s is not a directory",
                            dir);
    }
    for (size_t i = 0; i < roots->count; i++) {
        if (strcmp(roots->dirs[i], resolved) == 0) {
            free(resolved);
            return DS_OK;
        }
    }
    char **grown = realloc(roots->dirs, (roots->count + 1) * sizeof *grown);
    if (!grown) {
        free(resolved);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory adding model root");
    }
    roots->dirs = grown;
    roots->dirs[roots->count++] = resolved;
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

int ds_model_roots_resolve(const ds_model_roots *roots, const char *path, char **resolved,
                           ds_error *err)
{
    *resolved = NULL;
    if (!path || !path[0])
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "empty model path");
    if (path[0] != '/')
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT,
                            "model path %s is not absolute (the daemon does not know the "
                            "client's working directory)",
                            path);
    char *real = realpath(path, NULL);
    if (!real) {
        int e = errno;
        if (e == ENOENT || e == ENOTDIR)
            return ds_error_set(err, DS_ERR_NOT_FOUND, "%s: no such file", path);
        if (e == EACCES)
            return ds_error_set(err, DS_ERR_PERMISSION_DENIED, "%s: the daemon cannot reach it: %s",
                                path, strerror(e));
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s: %s", path, strerror(e));
    }
    size_t i = 0;
    while (i < roots->count && !ds_path_is_under(roots->dirs[i], real))
        i++;
    if (i == roots->count) {
        char *list = ds_model_roots_describe(roots);
        ds_error_set(err, DS_ERR_PERMISSION_DENIED, "%s is outside the model roots: %s", real,
                     list ? list : "(out of memory)");
        free(list);
        free(real);
        return DS_ERR_PERMISSION_DENIED;
    }
    struct stat st;
    if (stat(real, &st) != 0 || !S_ISREG(st.st_mode)) {
        ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "%s is not a regular file", real);
        free(real);
        return DS_ERR_INVALID_ARGUMENT;
    }
    *resolved = real;
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
