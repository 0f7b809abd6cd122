#include "core/unpickle.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

struct ds__unpickled {
    ds__py **objects;   /* every value made, for freeing */
    size_t count, cap;
    ds__py *root;
};

/* The allowed globals. */
enum {
    G_ORDERED_DICT,
    G_REBUILD_TENSOR,      /* torch._utils._rebuild_tensor (torch < 1.x pickles) */
    G_REBUILD_TENSOR_V2,
    G_REBUILD_TENSOR_V3,   /* dtypes without a legacy storage class, e.g. float8 */
    G_REBUILD_PARAMETER,
    G_STORAGE_CLASS,       /* torch.FloatStorage, ... */
    G_UNTYPED_STORAGE,     /* torch.storage.UntypedStorage */
    G_DTYPE,               /* torch.float32, ... */
};

/* torch.<attr> dtype objects as torch pickles them (dtype.__reduce__ gives the canonical name). */
static const struct {
    const char *name;
    ds_dtype dtype;
} torch_dtypes[] = {
    {"float32", DS_F32},      {"float16", DS_F16},   {"bfloat16", DS_BF16},
    {"float8_e4m3fn", DS_F8_E4M3}, {"float8_e5m2", DS_F8_E5M2}, {"float64", DS_F64},
    {"int64", DS_I64},        {"int32", DS_I32},     {"int16", DS_I16},
    {"int8", DS_I8},          {"uint8", DS_U8},      {"bool", DS_BOOL},
};

typedef struct machine {
    const uint8_t *in;
    size_t size;
    size_t pos;
    size_t op_pos;           /* offset of the opcode being run, for messages */
    const char *op;          /* its name */
    ds__unpickled *u;
    ds__py **stack;
    size_t sp, stack_cap;
    size_t marks[DS__UNPICKLE_MAX_MARKS];
    size_t nmarks;
    ds__py **memo;           /* by index; NULL = unset */
    size_t memo_cap, memo_len, memo_limit;
    ds__storage_resolver resolve;
    void *ctx;
    ds_error *err;
    int rc;                  /* the code of the error recorded last */
} machine;

static int fail(machine *m, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* "<OPCODE> at byte N: <detail>" */
static int fail(machine *m, int code, const char *fmt, ...)
{
    char detail[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    m->rc = ds_error_set(m->err, code, "%s at byte %zu: %s", m->op, m->op_pos, detail);
    return m->rc;
}

static int bad(machine *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int bad(machine *m, const char *fmt, ...)
{
    char detail[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return fail(m, DS_ERR_INVALID_ARGUMENT, "%s", detail);
}

const char *ds__py_type_name(const ds__py *v)
{
    switch (v->kind) {
    case DS__PY_NONE: return "NoneType";
    case DS__PY_BOOL: return "bool";
    case DS__PY_INT: return "int";
    case DS__PY_FLOAT: return "float";
    case DS__PY_STR: return "str";
    case DS__PY_BYTES: return "bytes";
    case DS__PY_TUPLE: return "tuple";
    case DS__PY_LIST: return "list";
    case DS__PY_DICT: return "dict";
    case DS__PY_SET: return "set";
    case DS__PY_FROZENSET: return "frozenset";
    case DS__PY_GLOBAL:
        if (v->global.id == G_DTYPE)
            return "torch.dtype";
        return v->global.id == G_STORAGE_CLASS || v->global.id == G_UNTYPED_STORAGE ||
                       v->global.id == G_ORDERED_DICT
                   ? "type"
                   : "function";
    case DS__PY_STORAGE: return "torch.storage.TypedStorage";
    case DS__PY_TENSOR: return "torch.Tensor";
    }
    return "object";
}

/* ---- values ---- */

static ds__py *new_value(machine *m, ds__py_kind kind)
{
    ds__unpickled *u = m->u;
    if (u->count >= DS__UNPICKLE_MAX_OBJECTS) {
        fail(m, DS_ERR_RESOURCE_EXHAUSTED, "more than %u values", DS__UNPICKLE_MAX_OBJECTS);
        return NULL;
    }
    if (u->count == u->cap) {
        size_t cap = u->cap ? u->cap * 2 : 256;
        ds__py **objects = realloc(u->objects, cap * sizeof *objects);
        if (!objects) {
            fail(m, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
            return NULL;
        }
        u->objects = objects;
        u->cap = cap;
    }
    ds__py *v = calloc(1, sizeof *v);
    if (!v) {
        fail(m, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    v->kind = kind;
    u->objects[u->count++] = v;
    return v;
}

static void free_value(ds__py *v)
{
    switch (v->kind) {
    case DS__PY_STR:
    case DS__PY_BYTES:
        free(v->str.data);
        break;
    case DS__PY_TUPLE:
    case DS__PY_LIST:
    case DS__PY_SET:
    case DS__PY_FROZENSET:
        free(v->seq.items);
        break;
    case DS__PY_TENSOR:
        free(v->tensor);
        break;
    case DS__PY_DICT:
        free(v->dict.keys);
        free(v->dict.values);
        free(v->dict.index);
        free(v->dict.hashes);
        break;
    default:
        break;
    }
    free(v);
}

void ds__unpickled_free(ds__unpickled *u)
{
    if (!u)
        return;
    for (size_t i = 0; i < u->count; i++)
        free_value(u->objects[i]);
    free(u->objects);
    free(u);
}

const ds__py *ds__unpickled_root(const ds__unpickled *u) { return u->root; }

static int seq_append(machine *m, ds__py *seq, ds__py *item)
{
    if (seq->seq.count == seq->seq.cap) {
        size_t cap = seq->seq.cap ? seq->seq.cap * 2 : 4;
        ds__py **items = realloc(seq->seq.items, cap * sizeof *items);
        if (!items)
            return fail(m, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
        seq->seq.items = items;
        seq->seq.cap = cap;
    }
    seq->seq.items[seq->seq.count++] = item;
    return DS_OK;
}

static ds__py *new_seq(machine *m, ds__py_kind kind, ds__py *const *items, size_t n)
{
    ds__py *v = new_value(m, kind);
    if (!v)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (seq_append(m, v, items[i]) != DS_OK)
            return NULL;
    return v;
}

/* An int that a float equals exactly, when there is one (Python compares and hashes
 * 1 == 1.0 == True alike). */
static int float_as_int(double f, int64_t *out)
{
    if (!(f >= -9223372036854775808.0 && f < 9223372036854775808.0) || f != floor(f))
        return 0;
    *out = (int64_t)f;
    return 1;
}

static int is_scalar_key(const ds__py *k)
{
    switch (k->kind) {
    case DS__PY_NONE:
    case DS__PY_BOOL:
    case DS__PY_INT:
    case DS__PY_FLOAT:
    case DS__PY_STR:
    case DS__PY_BYTES:
    case DS__PY_GLOBAL:
    case DS__PY_STORAGE:
    case DS__PY_TENSOR:
        return 1;
    default:
        return 0;
    }
}

static uint64_t scalar_hash(const ds__py *k)
{
    int64_t i;
    switch (k->kind) {
    case DS__PY_NONE:
        return 0x9e3779b97f4a7c15u;
    case DS__PY_BOOL:
    case DS__PY_INT:
        return XXH3_64bits(&k->i, sizeof k->i);
    case DS__PY_FLOAT:
        if (float_as_int(k->f, &i))
            return XXH3_64bits(&i, sizeof i);
        return XXH3_64bits_withSeed(&k->f, sizeof k->f, 3);
    case DS__PY_STR:
        return XXH3_64bits_withSeed(k->str.data, k->str.len, 1);
    case DS__PY_BYTES:
        return XXH3_64bits_withSeed(k->str.data, k->str.len, 2);
    default:
        /* Identity, like Python's default object hash. */
        return XXH3_64bits(&k, sizeof k);
    }
}

static int scalar_equal(const ds__py *a, const ds__py *b)
{
    int anum = a->kind == DS__PY_BOOL || a->kind == DS__PY_INT || a->kind == DS__PY_FLOAT;
    int bnum = b->kind == DS__PY_BOOL || b->kind == DS__PY_INT || b->kind == DS__PY_FLOAT;
    if (anum && bnum) {
        if (a->kind == DS__PY_FLOAT && b->kind == DS__PY_FLOAT)
            return a->f == b->f;
        int64_t ai, bi;
        if (a->kind == DS__PY_FLOAT ? !float_as_int(a->f, &ai) : (ai = a->i, 0))
            return 0;
        if (b->kind == DS__PY_FLOAT ? !float_as_int(b->f, &bi) : (bi = b->i, 0))
            return 0;
        return ai == bi;
    }
    if (a->kind != b->kind)
        return 0;
    switch (a->kind) {
    case DS__PY_NONE:
        return 1;
    case DS__PY_STR:
    case DS__PY_BYTES:
        return a->str.len == b->str.len && memcmp(a->str.data, b->str.data, a->str.len) == 0;
    default:
        return a == b;
    }
}

/* Checks that `k` can be a dict key and hashes it. Tuples may hold only scalars, so neither
 * hashing nor comparing ever recurses. */
static int key_hash(machine *m, ds__py *k, uint64_t *hash)
{
    if (is_scalar_key(k)) {
        *hash = scalar_hash(k);
        return DS_OK;
    }
    if (k->kind != DS__PY_TUPLE)
        return bad(m, "unhashable dict key of type %s", ds__py_type_name(k));
    if (k->seq.hashed) {
        *hash = k->seq.hash;
        return DS_OK;
    }
    uint64_t h = 0x51ed270b27a2e3c5u ^ k->seq.count;
    for (size_t i = 0; i < k->seq.count; i++) {
        const ds__py *item = k->seq.items[i];
        if (!is_scalar_key(item))
            return bad(m, "dict key is a tuple holding a %s; only flat tuples are supported",
                       ds__py_type_name(item));
        uint64_t parts[2] = {h, scalar_hash(item)};
        h = XXH3_64bits(parts, sizeof parts);
    }
    k->seq.hash = h;
    k->seq.hashed = 1;
    *hash = h;
    return DS_OK;
}

static int key_equal(const ds__py *a, const ds__py *b)
{
    if (a == b)
        return 1;
    if (a->kind == DS__PY_TUPLE || b->kind == DS__PY_TUPLE) {
        if (a->kind != b->kind || a->seq.count != b->seq.count)
            return 0;
        for (size_t i = 0; i < a->seq.count; i++)
            if (!scalar_equal(a->seq.items[i], b->seq.items[i]))
                return 0;
        return 1;
    }
    return scalar_equal(a, b);
}

static int dict_grow_index(machine *m, ds__py *d)
{
    size_t size = d->dict.index_size ? d->dict.index_size * 2 : 16;
    uint32_t *index = calloc(size, sizeof *index);
    if (!index)
        return fail(m, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; i < d->dict.count; i++) {
        size_t slot = (size_t)d->dict.hashes[i] & (size - 1);
        while (index[slot])
            slot = (slot + 1) & (size - 1);
        index[slot] = (uint32_t)(i + 1);
    }
    free(d->dict.index);
    d->dict.index = index;
    d->dict.index_size = size;
    return DS_OK;
}

/* d[k] = v with Python's semantics: an equal key keeps its place and gets the new value. */
static int dict_set(machine *m, ds__py *d, ds__py *k, ds__py *v)
{
    uint64_t h = 0;
    int rc = key_hash(m, k, &h);
    if (rc != DS_OK)
        return rc;
    if ((d->dict.count + 1) * 2 > d->dict.index_size && (rc = dict_grow_index(m, d)) != DS_OK)
        return rc;
    size_t mask = d->dict.index_size - 1, slot = (size_t)h & mask;
    for (; d->dict.index[slot]; slot = (slot + 1) & mask) {
        size_t pos = d->dict.index[slot] - 1;
        if (d->dict.hashes[pos] == h && key_equal(d->dict.keys[pos], k)) {
            d->dict.values[pos] = v;
            return DS_OK;
        }
    }
    if (d->dict.count == d->dict.cap) {
        size_t cap = d->dict.cap ? d->dict.cap * 2 : 8;
        ds__py **keys = realloc(d->dict.keys, cap * sizeof *keys);
        if (!keys)
            return fail(m, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
        d->dict.keys = keys;
        ds__py **values = realloc(d->dict.values, cap * sizeof *values);
        if (!values)
            return fail(m, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
        d->dict.values = values;
        uint64_t *hashes = realloc(d->dict.hashes, cap * sizeof *hashes);
        if (!hashes)
            return fail(m, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
        d->dict.hashes = hashes;
        d->dict.cap = cap;
    }
    d->dict.hashes[d->dict.count] = h;
    d->dict.keys[d->dict.count] = k;
    d->dict.values[d->dict.count] = v;
    d->dict.index[slot] = (uint32_t)++d->dict.count;
    return DS_OK;
}

/* ---- input ---- */

static int need(machine *m, uint64_t n)
{
    if (n > m->size - m->pos)
        return bad(m, "truncated: needs %" PRIu64 " more bytes, %zu left", n, m->size - m->pos);
    return DS_OK;
}

static uint64_t read_le(machine *m, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)m->in[m->pos + i] << (8 * i);
    m->pos += n;
    return v;
}

/* Python decodes pickled text as UTF-8 with "surrogatepass", so encoded surrogates pass. */
static int utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0)
                lo = 0xA0;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0)
                lo = 0x90;
            if (c == 0xF4)
                hi = 0x8F;
        } else {
            return 0;
        }
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t j = 2; j < len; j++)
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
        i += len;
    }
    return 1;
}

static ds__py *new_text(machine *m, ds__py_kind kind, const uint8_t *bytes, size_t len)
{
    if (kind == DS__PY_STR && !utf8_valid(bytes, len)) {
        bad(m, "string is not valid UTF-8");
        return NULL;
    }
    ds__py *v = new_value(m, kind);
    if (!v)
        return NULL;
    v->str.data = malloc(len + 1);
    if (!v->str.data) {
        fail(m, DS_ERR_RESOURCE_EXHAUSTED, "out of memory for a %zu-byte string", len);
        return NULL;
    }
    memcpy(v->str.data, bytes, len);
    v->str.data[len] = '\0';
    v->str.len = len;
    return v;
}

/* ---- stack, marks, memo ---- */

static size_t stack_base(const machine *m) { return m->nmarks ? m->marks[m->nmarks - 1] : 0; }

static int push(machine *m, ds__py *v)
{
    if (!v)
        return m->rc;
    if (m->sp == m->stack_cap) {
        if (m->stack_cap >= DS__UNPICKLE_MAX_STACK)
            return fail(m, DS_ERR_RESOURCE_EXHAUSTED, "more than %u values on the stack",
                        DS__UNPICKLE_MAX_STACK);
        size_t cap = m->stack_cap * 2;
        ds__py **stack = realloc(m->stack, cap * sizeof *stack);
        if (!stack)
            return fail(m, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
        m->stack = stack;
        m->stack_cap = cap;
    }
    m->stack[m->sp++] = v;
    return DS_OK;
}

static int pop(machine *m, ds__py **v)
{
    if (m->sp <= stack_base(m))
        return bad(m, "stack underflow");
    *v = m->stack[--m->sp];
    return DS_OK;
}

static int top(machine *m, ds__py **v)
{
    if (m->sp <= stack_base(m))
        return bad(m, "stack underflow");
    *v = m->stack[m->sp - 1];
    return DS_OK;
}

/* Pops everything above the last MARK and the mark itself; the items stay readable in the
 * stack array until the next push. */
static int pop_mark(machine *m, ds__py ***items, size_t *n)
{
    if (m->nmarks == 0)
        return bad(m, "no MARK to pop");
    size_t mark = m->marks[--m->nmarks];
    *items = m->stack + mark;
    *n = m->sp - mark;
    m->sp = mark;
    return DS_OK;
}

static int memo_put(machine *m, uint64_t index)
{
    ds__py *v = NULL;
    int rc = top(m, &v);
    if (rc != DS_OK)
        return rc;
    if (index >= m->memo_limit)
        return bad(m, "memo index %" PRIu64 " is out of range (limit %zu)", index, m->memo_limit);
    if (index >= m->memo_cap) {
        size_t cap = m->memo_cap ? m->memo_cap : 64;
        while (cap <= index)
            cap *= 2;
        ds__py **memo = realloc(m->memo, cap * sizeof *memo);
        if (!memo)
            return fail(m, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
        memset(memo + m->memo_cap, 0, (cap - m->memo_cap) * sizeof *memo);
        m->memo = memo;
        m->memo_cap = cap;
    }
    if (!m->memo[index])
        m->memo_len++;
    m->memo[index] = v;
    return DS_OK;
}

static int memo_get(machine *m, uint64_t index)
{
    if (index >= m->memo_cap || !m->memo[index])
        return bad(m, "memo index %" PRIu64 " was never set", index);
    return push(m, m->memo[index]);
}

/* ---- globals ---- */

/* Copies `s` for a message with anything unprintable replaced, cut at 100 bytes. */
static void printable(char *out, size_t out_size, const char *s, size_t len)
{
    size_t n = len < 100 ? len : 100;
    if (n >= out_size)
        n = out_size - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7F) ? s[i] : '?';
    out[n] = '\0';
}

static int is_name(const char *module, size_t mlen, const char *name, size_t nlen,
                   const char *want_module, const char *want_name)
{
    return mlen == strlen(want_module) && memcmp(module, want_module, mlen) == 0 &&
           nlen == strlen(want_name) && memcmp(name, want_name, nlen) == 0;
}

static int find_global(machine *m, const char *module, size_t mlen, const char *name,
                       size_t nlen)
{
    static const struct {
        const char *module, *name;
        int id;
    } fixed[] = {
        {"collections", "OrderedDict", G_ORDERED_DICT},
        {"torch._utils", "_rebuild_tensor", G_REBUILD_TENSOR},
        {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_TENSOR_V2},
        {"torch._utils", "_rebuild_tensor_v3", G_REBUILD_TENSOR_V3},
        {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAMETER},
        {"torch.storage", "UntypedStorage", G_UNTYPED_STORAGE},
    };
    int id = -1;
    ds_dtype dtype = DS_DTYPE_INVALID;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (is_name(module, mlen, name, nlen, fixed[i].module, fixed[i].name))
            id = fixed[i].id;
    char shown_module[128], shown_name[128];
    printable(shown_module, sizeof shown_module, module, mlen);
    printable(shown_name, sizeof shown_name, name, nlen);
    if (id < 0 && mlen == 5 && memcmp(module, "torch", 5) == 0 &&
        memchr(name, '\0', nlen) == NULL) {
        if (nlen > 7 && memcmp(name + nlen - 7, "Storage", 7) == 0) {
            dtype = ds_dtype_from_torch_storage(shown_name);
            if (dtype == DS_DTYPE_INVALID || strlen(shown_name) != nlen)
                return bad(m, "storage type \"torch.%s\" has a dtype this reader does not support",
                           shown_name);
            id = G_STORAGE_CLASS;
        }
        for (size_t i = 0; i < sizeof torch_dtypes / sizeof torch_dtypes[0]; i++) {
            if (nlen == strlen(torch_dtypes[i].name) &&
                memcmp(name, torch_dtypes[i].name, nlen) == 0) {
                id = G_DTYPE;
                dtype = torch_dtypes[i].dtype;
            }
        }
    }
    if (id < 0) {
        m->rc = ds_error_set(m->err, DS_ERR_INVALID_ARGUMENT,
                             "forbidden global \"%s.%s\" at byte %zu: only tensor-rebuild "
                             "globals are allowed",
                             shown_module, shown_name, m->op_pos);
        return m->rc;
    }
    ds__py *g = new_value(m, DS__PY_GLOBAL);
    if (!g)
        return m->rc;
    g->global.id = id;
    g->global.dtype = dtype;
    return push(m, g);
}

/* GLOBAL's operands: "module\nname\n". */
static int read_line(machine *m, const char **line, size_t *len)
{
    const uint8_t *start = m->in + m->pos;
    const uint8_t *nl = memchr(start, '\n', m->size - m->pos);
    if (!nl)
        return bad(m, "truncated: no newline after the global's name");
    *line = (const char *)start;
    *len = (size_t)(nl - start);
    m->pos += *len + 1;
    return DS_OK;
}

/* ---- calls of allowed globals ---- */

static int as_int(machine *m, const ds__py *v, const char *what, int64_t *out)
{
    if (v->kind != DS__PY_INT && v->kind != DS__PY_BOOL)
        return bad(m, "%s must be an int, got %s", what, ds__py_type_name(v));
    *out = v->i;
    return DS_OK;
}

static int int_tuple(machine *m, const ds__py *v, const char *what, int64_t *out, int *n)
{
    if (v->kind != DS__PY_TUPLE && v->kind != DS__PY_LIST)
        return bad(m, "%s must be a tuple of ints, got %s", what, ds__py_type_name(v));
    if (v->seq.count > DS_MAX_DIMS)
        return bad(m, "%s has %zu dimensions; at most %d are supported", what, v->seq.count,
                   DS_MAX_DIMS);
    for (size_t i = 0; i < v->seq.count; i++) {
        int rc = as_int(m, v->seq.items[i], what, &out[i]);
        if (rc != DS_OK)
            return rc;
        if (out[i] < 0)
            return bad(m, "%s[%zu] is negative (%" PRId64 ")", what, i, out[i]);
    }
    *n = (int)v->seq.count;
    return DS_OK;
}

/* t.set_(storage, offset, size, stride) with torch's bounds check: the furthest element
 * addressed must lie inside the storage. */
static int make_tensor(machine *m, const ds__py *storage, const ds__py *offset_v,
                       const ds__py *size_v, const ds__py *stride_v, ds_dtype dtype)
{
    if (storage->kind != DS__PY_STORAGE)
        return bad(m, "tensor storage must be a storage, got %s", ds__py_type_name(storage));
    int64_t offset = 0, shape[DS_MAX_DIMS], stride[DS_MAX_DIMS];
    int ndim = 0, nstride = 0;
    int rc = as_int(m, offset_v, "storage_offset", &offset);
    if (rc == DS_OK && offset < 0)
        rc = bad(m, "storage_offset is negative (%" PRId64 ")", offset);
    if (rc == DS_OK)
        rc = int_tuple(m, size_v, "size", shape, &ndim);
    if (rc == DS_OK)
        rc = int_tuple(m, stride_v, "stride", stride, &nstride);
    if (rc != DS_OK)
        return rc;
    if (nstride != ndim)
        return bad(m, "size has %d dimensions but stride has %d", ndim, nstride);
    uint64_t esize = ds_dtype_size(dtype);
    uint64_t numel = 1, last = (uint64_t)offset, nbytes;
    for (int d = 0; d < ndim; d++) {
        if (__builtin_mul_overflow(numel, (uint64_t)shape[d], &numel))
            return bad(m, "tensor size overflows");
    }
    if (__builtin_mul_overflow(numel, esize, &nbytes))
        return bad(m, "tensor size overflows");
    ds__py *t = new_value(m, DS__PY_TENSOR);
    if (!t)
        return m->rc;
    ds_tensor_view *view = t->tensor = calloc(1, sizeof *view);
    if (!view)
        return fail(m, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    if (numel > 0) {
        for (int d = 0; d < ndim; d++) {
            uint64_t span;
            if (__builtin_mul_overflow((uint64_t)(shape[d] - 1), (uint64_t)stride[d], &span) ||
                __builtin_add_overflow(last, span, &last))
                return bad(m, "tensor extent overflows");
        }
        uint64_t end;
        if (__builtin_add_overflow(last, 1, &end) || __builtin_mul_overflow(end, esize, &end) ||
            end > storage->storage.nbytes)
            return bad(m, "tensor reaches element %" PRIu64 " of a storage of %" PRIu64
                          " bytes (%s, %" PRIu64 " bytes each)",
                       last, storage->storage.nbytes, ds_dtype_name(dtype), esize);
        view->data = storage->storage.data + (uint64_t)offset * esize;
    } else {
        view->data = storage->storage.data;
    }
    view->dtype = dtype;
    view->ndim = ndim;
    for (int d = 0; d < ndim; d++) {
        view->shape[d] = shape[d];
        view->stride[d] = stride[d];
    }
    view->nbytes = nbytes;
    view->file_index = -1;
    return push(m, t);
}

static int want_args(machine *m, const char *fn, size_t n, size_t lo, size_t hi)
{
    if (n < lo || n > hi) {
        if (lo == hi)
            return bad(m, "%s takes %zu arguments, got %zu", fn, lo, n);
        return bad(m, "%s takes %zu to %zu arguments, got %zu", fn, lo, hi, n);
    }
    return DS_OK;
}

static int want_kind(machine *m, const char *what, const ds__py *v, ds__py_kind kind,
                     int none_ok)
{
    if (v->kind == kind || (none_ok && v->kind == DS__PY_NONE))
        return DS_OK;
    return bad(m, "%s must be a %s, got %s", what,
               kind == DS__PY_DICT ? "dict" : kind == DS__PY_BOOL ? "bool" : "tensor",
               ds__py_type_name(v));
}

static int call(machine *m, const ds__py *fn, const ds__py *args)
{
    if (fn->kind != DS__PY_GLOBAL)
        return bad(m, "cannot call a %s", ds__py_type_name(fn));
    if (args->kind != DS__PY_TUPLE)
        return bad(m, "arguments must be a tuple, got %s", ds__py_type_name(args));
    ds__py *const *a = args->seq.items;
    size_t n = args->seq.count;
    int rc;
    switch (fn->global.id) {
    case G_ORDERED_DICT:
        if ((rc = want_args(m, "OrderedDict", n, 0, 0)) != DS_OK)
            return rc;
        return push(m, new_value(m, DS__PY_DICT));
    case G_REBUILD_TENSOR:
        if ((rc = want_args(m, "_rebuild_tensor", n, 4, 4)) != DS_OK)
            return rc;
        if (a[0]->kind != DS__PY_STORAGE)
            return bad(m, "_rebuild_tensor: storage must be a storage, got %s",
                       ds__py_type_name(a[0]));
        return make_tensor(m, a[0], a[1], a[2], a[3], a[0]->storage.dtype);
    case G_REBUILD_TENSOR_V2:
        if ((rc = want_args(m, "_rebuild_tensor_v2", n, 6, 7)) != DS_OK ||
            (rc = want_kind(m, "requires_grad", a[4], DS__PY_BOOL, 0)) != DS_OK ||
            (rc = want_kind(m, "backward_hooks", a[5], DS__PY_DICT, 0)) != DS_OK ||
            (n == 7 && (rc = want_kind(m, "metadata", a[6], DS__PY_DICT, 1)) != DS_OK))
            return rc;
        if (a[0]->kind != DS__PY_STORAGE)
            return bad(m, "_rebuild_tensor_v2: storage must be a storage, got %s",
                       ds__py_type_name(a[0]));
        return make_tensor(m, a[0], a[1], a[2], a[3], a[0]->storage.dtype);
    case G_REBUILD_TENSOR_V3:
        if ((rc = want_args(m, "_rebuild_tensor_v3", n, 7, 8)) != DS_OK ||
            (rc = want_kind(m, "requires_grad", a[4], DS__PY_BOOL, 0)) != DS_OK ||
            (rc = want_kind(m, "backward_hooks", a[5], DS__PY_DICT, 0)) != DS_OK ||
            (n == 8 && (rc = want_kind(m, "metadata", a[7], DS__PY_DICT, 1)) != DS_OK))
            return rc;
        if (a[6]->kind != DS__PY_GLOBAL || a[6]->global.id != G_DTYPE)
            return bad(m, "_rebuild_tensor_v3: dtype must be a torch dtype, got %s",
                       ds__py_type_name(a[6]));
        return make_tensor(m, a[0], a[1], a[2], a[3], a[6]->global.dtype);
    case G_REBUILD_PARAMETER:
        if ((rc = want_args(m, "_rebuild_parameter", n, 3, 3)) != DS_OK ||
            (rc = want_kind(m, "data", a[0], DS__PY_TENSOR, 0)) != DS_OK ||
            (rc = want_kind(m, "requires_grad", a[1], DS__PY_BOOL, 0)) != DS_OK ||
            (rc = want_kind(m, "backward_hooks", a[2], DS__PY_DICT, 0)) != DS_OK)
            return rc;
        return push(m, a[0]);
    default:
        return bad(m, "a %s cannot be called", ds__py_type_name(fn));
    }
}

/* ('storage', storage_type, key, location, numel) -> the storage's bytes. */
static int persistent_load(machine *m, const ds__py *pid)
{
    if (pid->kind != DS__PY_TUPLE || pid->seq.count != 5)
        return bad(m, "persistent id must be a 5-tuple ('storage', type, key, location, numel), "
                      "got %s of %zu items",
                   ds__py_type_name(pid), pid->kind == DS__PY_TUPLE ? pid->seq.count : 0);
    ds__py *const *f = pid->seq.items;
    if (f[0]->kind != DS__PY_STR || strcmp(f[0]->str.data, "storage") != 0)
        return bad(m, "persistent id must start with 'storage'");
    if (f[1]->kind != DS__PY_GLOBAL ||
        (f[1]->global.id != G_STORAGE_CLASS && f[1]->global.id != G_UNTYPED_STORAGE))
        return bad(m, "persistent id's storage type must be a torch storage class, got %s",
                   ds__py_type_name(f[1]));
    if (f[2]->kind != DS__PY_STR || f[3]->kind != DS__PY_STR)
        return bad(m, "persistent id's key and location must be str");
    if (f[2]->str.len != strlen(f[2]->str.data))
        return bad(m, "persistent id's key holds a NUL byte");
    int64_t numel = 0;
    int rc = as_int(m, f[4], "persistent id's numel", &numel);
    if (rc != DS_OK)
        return rc;
    if (numel < 0)
        return bad(m, "storage \"%s\" has a negative size (%" PRId64 ")", f[2]->str.data, numel);
    ds_dtype dtype = f[1]->global.id == G_UNTYPED_STORAGE ? DS_U8 : f[1]->global.dtype;
    uint64_t nbytes;
    if (__builtin_mul_overflow((uint64_t)numel, ds_dtype_size(dtype), &nbytes))
        return bad(m, "storage \"%s\" size overflows", f[2]->str.data);
    const uint8_t *data = NULL;
    uint64_t size = 0;
    ds_error inner = {0};
    if (m->resolve(m->ctx, f[2]->str.data, &data, &size, &inner) != DS_OK)
        return fail(m, inner.code, "%s", inner.message);
    if (nbytes > size)
        return bad(m, "storage \"%s\" holds %" PRId64 " %s elements (%" PRIu64
                      " bytes) but its entry has %" PRIu64 " bytes",
                   f[2]->str.data, numel, ds_dtype_name(dtype), nbytes, size);
    ds__py *s = new_value(m, DS__PY_STORAGE);
    if (!s)
        return m->rc;
    s->storage.dtype = dtype;
    s->storage.data = data;
    s->storage.nbytes = nbytes;
    return push(m, s);
}

/* ---- the machine ---- */

static const char *op_name(uint8_t op)
{
    switch (op) {
    case 0x80: return "PROTO";
    case 0x95: return "FRAME";
    case '.': return "STOP";
    case '(': return "MARK";
    case '}': return "EMPTY_DICT";
    case ']': return "EMPTY_LIST";
    case ')': return "EMPTY_TUPLE";
    case 't': return "TUPLE";
    case 0x85: return "TUPLE1";
    case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";
    case 'l': return "LIST";
    case 'a': return "APPEND";
    case 'e': return "APPENDS";
    case 'd': return "DICT";
    case 's': return "SETITEM";
    case 'u': return "SETITEMS";
    case 'J': return "BININT";
    case 'K': return "BININT1";
    case 'M': return "BININT2";
    case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";
    case 'G': return "BINFLOAT";
    case 'N': return "NONE";
    case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";
    case 'X': return "BINUNICODE";
    case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES";
    case 0x8e: return "BINBYTES8";
    case 'q': return "BINPUT";
    case 'r': return "LONG_BINPUT";
    case 'h': return "BINGET";
    case 'j': return "LONG_BINGET";
    case 0x94: return "MEMOIZE";
    case 'c': return "GLOBAL";
    case 0x93: return "STACK_GLOBAL";
    case 'R': return "REDUCE";
    case 'b': return "BUILD";
    case 0x81: return "NEWOBJ";
    case 'Q': return "BINPERSID";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case '0': return "POP";
    case '1': return "POP_MARK";
    case '2': return "DUP";
    default: return "opcode";
    }
}

/* LONG1/LONG4: little-endian two's complement; anything beyond 64 bits must be sign fill. */
static int read_long(machine *m, uint64_t n)
{
    int rc = need(m, n);
    if (rc != DS_OK)
        return rc;
    const uint8_t *b = m->in + m->pos;
    uint64_t v = 0;
    for (uint64_t i = 0; i < n && i < 8; i++)
        v |= (uint64_t)b[i] << (8 * i);
    if (n > 0 && n < 8 && (b[n - 1] & 0x80))
        v |= ~(uint64_t)0 << (8 * n);
    uint8_t fill = (n > 0 && (b[(n < 8 ? n : 8) - 1] & 0x80)) ? 0xFF : 0x00;
    for (uint64_t i = 8; i < n; i++)
        if (b[i] != fill)
            return bad(m, "integer of %" PRIu64 " bytes does not fit in 64 bits", n);
    m->pos += n;
    ds__py *x = new_value(m, DS__PY_INT);
    if (!x)
        return m->rc;
    x->i = (int64_t)v;
    return push(m, x);
}

static int read_text(machine *m, ds__py_kind kind, uint64_t len)
{
    int rc = need(m, len);
    if (rc != DS_OK)
        return rc;
    const uint8_t *start = m->in + m->pos;
    m->pos += len;
    return push(m, new_text(m, kind, start, (size_t)len));
}

static int append_items(machine *m, ds__py *target, ds__py *const *items, size_t n,
                        ds__py_kind kind)
{
    if (target->kind != kind)
        return bad(m, "cannot add items to a %s", ds__py_type_name(target));
    for (size_t i = 0; i < n; i++) {
        int rc = seq_append(m, target, items[i]);
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

static int set_items(machine *m, ds__py *target, ds__py *const *items, size_t n)
{
    if (target->kind != DS__PY_DICT)
        return bad(m, "cannot set items on a %s", ds__py_type_name(target));
    if (n % 2)
        return bad(m, "odd number of items (%zu) for a dict", n);
    for (size_t i = 0; i < n; i += 2) {
        int rc = dict_set(m, target, items[i], items[i + 1]);
        if (rc != DS_OK)
            return rc;
    }
    return DS_OK;
}

/* Runs one opcode; *done is set by STOP. */
static int step(machine *m, int *done)
{
    m->op_pos = m->pos;
    m->op = "opcode";
    if (m->pos >= m->size)
        return bad(m, "the pickle ends without STOP");
    int rc;
    uint8_t op = m->in[m->pos++];
    m->op = op_name(op);
    ds__py *a = NULL, *b = NULL, *v = NULL, **items = NULL;
    size_t n = 0;
    uint64_t len;

    switch (op) {
    case 0x80: /* PROTO */
        if ((rc = need(m, 1)) != DS_OK)
            return rc;
        if (m->in[m->pos] > 5)
            return bad(m, "unsupported pickle protocol %u", m->in[m->pos]);
        m->pos++;
        return DS_OK;
    case 0x95: /* FRAME: only a read-ahead hint */
        if ((rc = need(m, 8)) != DS_OK)
            return rc;
        len = read_le(m, 8);
        if (len > m->size - m->pos)
            return bad(m, "frame of %" PRIu64 " bytes runs past the end (%zu left)", len,
                       m->size - m->pos);
        return DS_OK;
    case '.':
        if ((rc = pop(m, &v)) != DS_OK)
            return rc;
        m->u->root = v;
        *done = 1;
        return DS_OK;
    case '(':
        if (m->nmarks == DS__UNPICKLE_MAX_MARKS)
            return fail(m, DS_ERR_RESOURCE_EXHAUSTED, "more than %d nested MARKs",
                        DS__UNPICKLE_MAX_MARKS);
        m->marks[m->nmarks++] = m->sp;
        return DS_OK;
    case '}':
        return push(m, new_value(m, DS__PY_DICT));
    case ']':
        return push(m, new_value(m, DS__PY_LIST));
    case ')':
        return push(m, new_value(m, DS__PY_TUPLE));
    case 't':
    case 'l':
        if ((rc = pop_mark(m, &items, &n)) != DS_OK)
            return rc;
        return push(m, new_seq(m, op == 't' ? DS__PY_TUPLE : DS__PY_LIST, items, n));
    case 0x85:
    case 0x86:
    case 0x87:
        n = (size_t)(op - 0x84);
        if (m->sp - stack_base(m) < n)
            return bad(m, "stack underflow");
        m->sp -= n;
        return push(m, new_seq(m, DS__PY_TUPLE, m->stack + m->sp, n));
    case 'a':
        if ((rc = pop(m, &v)) != DS_OK || (rc = top(m, &a)) != DS_OK)
            return rc;
        return append_items(m, a, &v, 1, DS__PY_LIST);
    case 'e':
        if ((rc = pop_mark(m, &items, &n)) != DS_OK || (rc = top(m, &a)) != DS_OK)
            return rc;
        return append_items(m, a, items, n, DS__PY_LIST);
    case 'd':
        if ((rc = pop_mark(m, &items, &n)) != DS_OK)
            return rc;
        if (!(v = new_value(m, DS__PY_DICT)) || (rc = set_items(m, v, items, n)) != DS_OK)
            return m->rc;
        return push(m, v);
    case 's':
        if ((rc = pop(m, &b)) != DS_OK || (rc = pop(m, &a)) != DS_OK ||
            (rc = top(m, &v)) != DS_OK)
            return rc;
        {
            ds__py *pair[2] = {a, b};
            return set_items(m, v, pair, 2);
        }
    case 'u':
        if ((rc = pop_mark(m, &items, &n)) != DS_OK || (rc = top(m, &v)) != DS_OK)
            return rc;
        return set_items(m, v, items, n);
    case 'J':
    case 'K':
    case 'M': {
        int width = op == 'J' ? 4 : op == 'K' ? 1 : 2;
        if ((rc = need(m, (uint64_t)width)) != DS_OK)
            return rc;
        uint64_t raw = read_le(m, width);
        if (!(v = new_value(m, DS__PY_INT)))
            return m->rc;
        v->i = op == 'J' ? (int64_t)(int32_t)(uint32_t)raw : (int64_t)raw;
        return push(m, v);
    }
    case 0x8a:
        if ((rc = need(m, 1)) != DS_OK)
            return rc;
        return read_long(m, read_le(m, 1));
    case 0x8b:
        if ((rc = need(m, 4)) != DS_OK)
            return rc;
        len = read_le(m, 4);
        if (len > INT32_MAX)
            return bad(m, "negative length");
        return read_long(m, len);
    case 'G': {
        if ((rc = need(m, 8)) != DS_OK)
            return rc;
        uint64_t bits = 0;
        for (int i = 0; i < 8; i++)
            bits = (bits << 8) | m->in[m->pos + i];
        m->pos += 8;
        if (!(v = new_value(m, DS__PY_FLOAT)))
            return m->rc;
        memcpy(&v->f, &bits, sizeof v->f);
        return push(m, v);
    }
    case 'N':
        return push(m, new_value(m, DS__PY_NONE));
    case 0x88:
    case 0x89:
        if (!(v = new_value(m, DS__PY_BOOL)))
            return m->rc;
        v->i = op == 0x88;
        return push(m, v);
    case 'X':
    case 'B':
    case 'T':
    case 0x8c:
    case 'U':
    case 'C':
    case 0x8d:
    case 0x8e: {
        int width = (op == 'X' || op == 'B' || op == 'T') ? 4 : (op == 0x8d || op == 0x8e) ? 8 : 1;
        if ((rc = need(m, (uint64_t)width)) != DS_OK)
            return rc;
        len = read_le(m, width);
        if (op == 'T' && len > INT32_MAX)
            return bad(m, "negative length");
        /* torch.load decodes protocol-0/1 strings (BINSTRING) as UTF-8 text. */
        ds__py_kind kind = (op == 'B' || op == 'C' || op == 0x8e) ? DS__PY_BYTES : DS__PY_STR;
        return read_text(m, kind, len);
    }
    case 'q':
    case 'r':
    case 'h':
    case 'j': {
        int width = (op == 'q' || op == 'h') ? 1 : 4;
        if ((rc = need(m, (uint64_t)width)) != DS_OK)
            return rc;
        len = read_le(m, width);
        return (op == 'q' || op == 'r') ? memo_put(m, len) : memo_get(m, len);
    }
    case 0x94:
        return memo_put(m, m->memo_len);
    case 'c': {
        const char *module, *name;
        size_t mlen, nlen;
        if ((rc = read_line(m, &module, &mlen)) != DS_OK ||
            (rc = read_line(m, &name, &nlen)) != DS_OK)
            return rc;
        return find_global(m, module, mlen, name, nlen);
    }
    case 0x93:
        if ((rc = pop(m, &b)) != DS_OK || (rc = pop(m, &a)) != DS_OK)
            return rc;
        if (a->kind != DS__PY_STR || b->kind != DS__PY_STR)
            return bad(m, "module and name must be str, got %s and %s", ds__py_type_name(a),
                       ds__py_type_name(b));
        return find_global(m, a->str.data, a->str.len, b->str.data, b->str.len);
    case 'R':
        if ((rc = pop(m, &b)) != DS_OK || (rc = pop(m, &a)) != DS_OK)
            return rc;
        return call(m, a, b);
    case 0x81:
        if ((rc = pop(m, &b)) != DS_OK || (rc = pop(m, &a)) != DS_OK)
            return rc;
        if (a->kind != DS__PY_GLOBAL || a->global.id != G_ORDERED_DICT)
            return bad(m, "only OrderedDict can be created with NEWOBJ, not a %s",
                       ds__py_type_name(a));
        return call(m, a, b);
    case 'b':
        /* OrderedDict's state is its instance __dict__ (state_dict()'s _metadata): it does not
         * change the mapping, so it is dropped. */
        if ((rc = pop(m, &b)) != DS_OK || (rc = top(m, &a)) != DS_OK)
            return rc;
        if (a->kind != DS__PY_DICT || (b->kind != DS__PY_DICT && b->kind != DS__PY_NONE))
            return bad(m, "cannot set state of type %s on a %s", ds__py_type_name(b),
                       ds__py_type_name(a));
        return DS_OK;
    case 'Q':
        if ((rc = pop(m, &v)) != DS_OK)
            return rc;
        return persistent_load(m, v);
    case 0x8f:
        return push(m, new_value(m, DS__PY_SET));
    case 0x90:
        if ((rc = pop_mark(m, &items, &n)) != DS_OK || (rc = top(m, &a)) != DS_OK)
            return rc;
        return append_items(m, a, items, n, DS__PY_SET);
    case 0x91:
        if ((rc = pop_mark(m, &items, &n)) != DS_OK)
            return rc;
        return push(m, new_seq(m, DS__PY_FROZENSET, items, n));
    case '0':
        if (m->sp > stack_base(m)) {
            m->sp--;
            return DS_OK;
        }
        return pop_mark(m, &items, &n);
    case '1':
        return pop_mark(m, &items, &n);
    case '2':
        if ((rc = top(m, &v)) != DS_OK)
            return rc;
        return push(m, v);
    default:
        return bad(m, "unsupported opcode 0x%02x", op);
    }
}

int ds__unpickle(const uint8_t *pickle, size_t size, ds__storage_resolver resolve, void *ctx,
                 ds__unpickled **out, ds_error *err)
{
    *out = NULL;
    machine m = {0};
    m.in = pickle;
    m.size = size;
    m.op = "opcode";
    m.resolve = resolve;
    m.ctx = ctx;
    m.err = err;
    /* Picklers number memo entries from 0 upward, so no valid index exceeds the input size. */
    m.memo_limit = size < DS__UNPICKLE_MAX_OBJECTS ? size + 1 : DS__UNPICKLE_MAX_OBJECTS;
    m.u = calloc(1, sizeof *m.u);
    m.stack_cap = 64;
    m.stack = malloc(m.stack_cap * sizeof *m.stack);
    if (!m.u || !m.stack) {
        free(m.u);
        free(m.stack);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    }
    int done = 0, rc = DS_OK;
    while (!done && (rc = step(&m, &done)) == DS_OK)
        ;
    free(m.stack);
    free(m.memo);
    if (rc != DS_OK) {
        ds__unpickled_free(m.u);
        return rc;
    }
    *out = m.u;
    return DS_OK;
}
