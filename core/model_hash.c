#include "core/model_hash.h"

#include <endian.h>
#include <md5.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* One element of upstream's `keys` list before the join. The bare "name" element points at the
 * state dict's own name, and the "name:shape" / "name|..." elements point into one scratch
 * buffer per dict level, so building the list allocates nothing per entry. */
typedef struct slice {
    const char *p;
    size_t n;
    uint64_t key; /* sort_slices' scratch: the chunk at the current depth */
} slice;

static size_t dec_len(int64_t v)
{
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    size_t n = v < 0 ? 2 : 1;
    while (u >= 10) {
        u /= 10;
        n++;
    }
    return n;
}

/* Python's str(int): shapes are never negative in a valid file, but a declared view could be. */
static char *put_dec(char *p, int64_t v)
{
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    if (v < 0)
        *p++ = '-';
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (n)
        *p++ = tmp[--n];
    return p;
}

/* Length of "_".join(map(str, shape)). */
static size_t shape_len(const ds_tensor_view *t)
{
    size_t n = t->ndim > 0 ? (size_t)t->ndim - 1 : 0;
    for (int i = 0; i < t->ndim; i++)
        n += dec_len(t->shape[i]);
    return n;
}

static int add_len(size_t *total, size_t n)
{
    return __builtin_add_overflow(*total, n, total) ? -1 : 0;
}

/* Exact byte length of the joined string for sd; also the element count and the scratch bytes
 * this level needs. Returns -1 when a length would overflow size_t. */
static int measure(const ds_state_dict *sd, int with_shape, size_t *joined, size_t *elements,
                   size_t *scratch)
{
    size_t total = 0, count = 0, own = 0;
    for (size_t i = 0; i < sd->count; i++) {
        const ds_sd_entry *e = &sd->entries[i];
        size_t name = strlen(e->name);
        size_t piece;
        if (e->dict) {
            size_t sub, sub_elements, sub_scratch;
            if (measure(e->dict, with_shape, &sub, &sub_elements, &sub_scratch) != 0)
                return -1;
            piece = name + 1;
            if (add_len(&piece, sub) != 0 || add_len(&own, piece) != 0 ||
                add_len(&total, piece) != 0)
                return -1;
            count++;
            continue;
        }
        if (with_shape) {
            piece = name + 1 + shape_len(&e->tensor);
            if (add_len(&own, piece) != 0 || add_len(&total, piece) != 0)
                return -1;
            count++;
        }
        if (add_len(&total, name) != 0)
            return -1;
        count++;
    }
    if (count > 1 && add_len(&total, count - 1) != 0)
        return -1;
    *joined = total;
    *elements = count;
    *scratch = own;
    return 0;
}

/* The 8 bytes of s at offset d as a big-endian number, zero-padded past the end. No element
 * contains a NUL byte (names are C strings), so a zero byte marks the end and sorts first:
 * comparing these numbers is memcmp order with the shorter prefix first. */
static inline uint64_t chunk_at(const slice *s, size_t d)
{
    uint64_t v = 0;
    if (d >= s->n)
        return 0;
    size_t rem = s->n - d;
    if (rem >= 8) {
        memcpy(&v, s->p + d, 8);
        return be64toh(v);
    }
    for (size_t i = 0; i < rem; i++)
        v |= (uint64_t)(unsigned char)s->p[d + i] << (56 - 8 * i);
    return v;
}

/* memcmp order of two elements that agree on their first d bytes. */
static int less_from(const slice *x, const slice *y, size_t d)
{
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->p + d, y->p + d, n - d);
    return c < 0 || (c == 0 && x->n < y->n);
}

typedef struct sort_task {
    slice *a;
    size_t n;
    size_t d;       /* all elements of a[0..n) share their first d bytes */
    int keys_fresh; /* a[i].key already holds the chunk at d */
} sort_task;

/* Multikey quicksort on 8-byte chunks (Bentley & Sedgewick's, one chunk instead of one byte).
 * Tensor names share long prefixes ("transformer_blocks.12.attn."), which a comparison sort
 * re-reads at every compare; here each chunk is read once per partition pass. Pending ranges
 * are disjoint and hold at least two elements, so n/2 + 1 tasks always suffice and no input
 * can exhaust the call stack. `tmp` holds n slices for the out-of-place partition. */
static void sort_slices(slice *a, size_t n, slice *tmp, sort_task *stack)
{
    size_t top = 0;
    if (n > 1)
        stack[top++] = (sort_task){a, n, 0, 0};
    while (top) {
        sort_task t = stack[--top];
        if (t.n <= 12) {
            for (size_t i = 1; i < t.n; i++) {
                slice v = t.a[i];
                size_t j = i;
                for (; j > 0 && less_from(&v, &t.a[j - 1], t.d); j--)
                    t.a[j] = t.a[j - 1];
                t.a[j] = v;
            }
            continue;
        }
        if (!t.keys_fresh)
            for (size_t i = 0; i < t.n; i++)
                t.a[i].key = chunk_at(&t.a[i], t.d);
        uint64_t k0 = t.a[0].key, k1 = t.a[t.n / 2].key, k2 = t.a[t.n - 1].key;
        uint64_t pivot = k0 < k1 ? (k1 < k2 ? k1 : (k0 < k2 ? k2 : k0))
                                 : (k0 < k2 ? k0 : (k1 < k2 ? k2 : k1));
        /* Stable three-way split through tmp: [0,lt) < pivot, [lt,gt) == pivot, [gt,n) >. */
        size_t lt = 0, eq = 0;
        for (size_t i = 0; i < t.n; i++) {
            lt += t.a[i].key < pivot;
            eq += t.a[i].key == pivot;
        }
        size_t gt = lt + eq;
        size_t wl = 0, we = lt, wg = gt;
        /* Branch-free: the three write positions stay in registers. */
        for (size_t i = 0; i < t.n; i++) {
            uint64_t k = t.a[i].key;
            size_t is_lt = k < pivot, is_gt = k > pivot, is_eq = !(is_lt | is_gt);
            size_t pos = is_lt ? wl : (is_gt ? wg : we);
            tmp[pos] = t.a[i];
            wl += is_lt;
            we += is_eq;
            wg += is_gt;
        }
        memcpy(t.a, tmp, t.n * sizeof *tmp);
        if (lt > 1)
            stack[top++] = (sort_task){t.a, lt, t.d, 1};
        if (t.n - gt > 1)
            stack[top++] = (sort_task){t.a + gt, t.n - gt, t.d, 1};
        /* A zero low byte in the pivot chunk means the equal range holds identical strings. */
        if (eq > 1 && (pivot & 0xff) != 0)
            stack[top++] = (sort_task){t.a + lt, eq, t.d + 8, 0};
    }
}

/* Run starts for merge_runs: beyond this many runs the input is not "nearly sorted". */
#define MAX_RUNS 64

/* Safetensors writers store tensors sorted by name (within a dtype), which leaves the list
 * "name", "name:shape", "next", ... sorted or a few sorted runs. Finds those runs; returns 0
 * when there are more than MAX_RUNS. starts[runs] is n. */
static size_t find_runs(const slice *a, size_t n, size_t starts[MAX_RUNS + 1])
{
    size_t runs = 1;
    starts[0] = 0;
    for (size_t i = 1; i < n; i++) {
        if (less_from(&a[i], &a[i - 1], 0)) {
            if (runs == MAX_RUNS)
                return 0;
            starts[runs++] = i;
        }
    }
    starts[runs] = n;
    return runs;
}

/* Bottom-up merge of sorted runs through tmp. */
static void merge_runs(slice *a, slice *tmp, size_t starts[MAX_RUNS + 1], size_t runs)
{
    while (runs > 1) {
        size_t out = 0;
        for (size_t r = 0; r < runs; r += 2) {
            if (r + 1 == runs) {
                starts[out++] = starts[r];
                break;
            }
            size_t lo = starts[r], mid = starts[r + 1], hi = starts[r + 2];
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                tmp[k++] = less_from(&a[j], &a[i], 0) ? a[j++] : a[i++];
            while (i < mid)
                tmp[k++] = a[i++];
            while (j < hi)
                tmp[k++] = a[j++];
            memcpy(a + lo, tmp + lo, (hi - lo) * sizeof *a);
            starts[out++] = lo;
        }
        starts[out] = starts[runs];
        runs = out;
    }
}

/* Where a joined string goes: into memory, or through a small buffer into MD5, which spares
 * ds_model_hash a string-sized allocation (and its page faults) per call. */
typedef struct sink {
    char *dst;     /* memory mode when non-NULL */
    MD5_CTX *md5;  /* stream mode otherwise */
    size_t used;
    uint8_t buf[16384];
} sink;

static void sink_put(sink *s, const char *p, size_t n)
{
    if (s->dst) {
        memcpy(s->dst, p, n);
        s->dst += n;
        return;
    }
    if (s->used + n > sizeof s->buf) {
        MD5Update(s->md5, s->buf, s->used);
        s->used = 0;
        if (n > sizeof s->buf) {
            MD5Update(s->md5, (const uint8_t *)p, n);
            return;
        }
    }
    memcpy(s->buf + s->used, p, n);
    s->used += n;
}

/* Emits the joined string of sd (exactly `measure`'s length, no NUL). */
static int write_joined(const ds_state_dict *sd, int with_shape, sink *out, size_t *written)
{
    size_t joined, count, own;
    *written = 0;
    if (measure(sd, with_shape, &joined, &count, &own) != 0)
        return DS_ERR_RESOURCE_EXHAUSTED;
    if (count == 0)
        return DS_OK;
    char *scratch = malloc(own ? own : 1);
    /* slices, then the sort's partition buffer and task stack, in one block. */
    slice *slices = NULL;
    if (count <= SIZE_MAX / (4 * sizeof(slice)))
        slices = malloc(2 * count * sizeof(slice) + (count / 2 + 1) * sizeof(sort_task));
    int rc = DS_ERR_RESOURCE_EXHAUSTED;
    if (!scratch || !slices)
        goto done;

    char *w = scratch;
    size_t n = 0;
    for (size_t i = 0; i < sd->count; i++) {
        const ds_sd_entry *e = &sd->entries[i];
        size_t name = strlen(e->name);
        if (e->dict) {
            size_t sub;
            memcpy(w, e->name, name);
            w[name] = '|';
            sink nested = {.dst = w + name + 1};
            rc = write_joined(e->dict, with_shape, &nested, &sub);
            if (rc != DS_OK)
                goto done;
            slices[n++] = (slice){w, name + 1 + sub, 0};
            w += name + 1 + sub;
            continue;
        }
        /* "name" before "name:shape" keeps a name-sorted file's list sorted for find_runs. */
        slices[n++] = (slice){e->name, name, 0};
        if (with_shape) {
            char *start = w;
            memcpy(w, e->name, name);
            w += name;
            *w++ = ':';
            for (int d = 0; d < e->tensor.ndim; d++) {
                if (d)
                    *w++ = '_';
                w = put_dec(w, e->tensor.shape[d]);
            }
            slices[n++] = (slice){start, (size_t)(w - start), 0};
        }
    }

    size_t starts[MAX_RUNS + 1];
    size_t runs = find_runs(slices, n, starts);
    if (runs)
        merge_runs(slices, slices + count, starts, runs);
    else
        sort_slices(slices, n, slices + count, (sort_task *)(slices + 2 * count));
    for (size_t i = 0; i < n; i++) {
        if (i)
            sink_put(out, ",", 1);
        sink_put(out, slices[i].p, slices[i].n);
    }
    *written = joined;
    rc = DS_OK;
done:
    free(scratch);
    free(slices);
    return rc;
}

int ds_model_keys_string(const ds_state_dict *sd, int with_shape, char **out, size_t *len)
{
    size_t joined, count, own;
    *out = NULL;
    *len = 0;
    if (measure(sd, with_shape, &joined, &count, &own) != 0 || joined == SIZE_MAX)
        return DS_ERR_RESOURCE_EXHAUSTED;
    char *s = malloc(joined + 1);
    if (!s)
        return DS_ERR_RESOURCE_EXHAUSTED;
    sink memory = {.dst = s};
    size_t written;
    int rc = write_joined(sd, with_shape, &memory, &written);
    if (rc != DS_OK) {
        free(s);
        return rc;
    }
    s[joined] = '\0';
    *out = s;
    *len = joined;
    return DS_OK;
}

int ds_model_hash(const ds_state_dict *sd, char hex[DS_MODEL_HASH_HEX])
{
    static const char digits[] = "0123456789abcdef";
    hex[0] = '\0';
    MD5_CTX ctx;
    MD5Init(&ctx);
    sink stream = {.md5 = &ctx};
    size_t written;
    int rc = write_joined(sd, 1, &stream, &written);
    if (rc != DS_OK)
        return rc;
    MD5Update(&ctx, stream.buf, stream.used);
    uint8_t digest[MD5_DIGEST_LENGTH];
    MD5Final(digest, &ctx);
    for (int i = 0; i < MD5_DIGEST_LENGTH; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 15];
    }
    hex[2 * MD5_DIGEST_LENGTH] = '\0';
    return DS_OK;
}
