/* The VAEs' convolutions through oneDNN's convolution primitive (built with DS_HAVE_ONEDNN).
 *
 * oneDNN's direct convolution kernels run on its blocked layouts (channels in blocks of 8 or
 * 16 innermost), chosen per processor at run time, at close to the FMA rate; our im2col +
 * sgemm path (conv.c) spends a third of its time building and packing columns. The price is
 * three reorders per call (input frames in, weights in, output out), all memory-bound and
 * small next to the arithmetic of a 3×3(×3) conv over hundreds of channels.
 *
 * The causal time padding: the cache's frames and x's are reordered into consecutive frames
 * of one blocked source (two sub-memories of it), the zero frames in front are the primitive's
 * own front padding. Time taps that only ever see those zero frames (an image through a
 * 3×3×3 conv: two of three) are dropped from the kernel, as conv.c drops them from K.
 *
 * Primitives (the convolution and its reorders) are built once per problem shape, dtypes and
 * thread count and kept in a small process-wide LRU cache, as gemm_onednn.c keeps its GEMMs.
 * Scratchpads are the caller's (user scratchpad mode) so one cached entry can run on several
 * host threads at once.
 *
 * Threads: the output channels are cut into equal parts (whole blocks of 16), one per worker of
 * our own pool, each part a single-threaded oneDNN convolution (OpenMP's count set to 1 on the
 * thread that runs it), its weights' and its output's reorders included. Letting OpenMP split
 * instead leaves its idle workers spinning for milliseconds after every primitive (libgomp's
 * default wait policy), on the same few cores our pool's next elementwise op needs: on two
 * cores that doubled a small decode's time. The split depends only on the sizes and the
 * thread count, so results are deterministic for a given thread count. The input's reorder
 * (memory-bound, a few percent of the work) runs on the calling thread. */
#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/onednn_engine.h"
#include "kernels/cpu/primitive_cache.h"

#ifdef DS_HAVE_ONEDNN

#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"

#if DNNL_CPU_THREADING_RUNTIME != DNNL_RUNTIME_OMP
#error "the oneDNN convolution path sets OpenMP's thread count; this libdnnl uses another runtime"
#endif

/* A Wan decode has a few dozen distinct convolutions (each width at 1, 2 and 4 frames, with
 * and without a cache); tiling adds edge tiles. */
#define CACHE_SLOTS 64
#define ALIGN 64

/* Beyond this the blocked copies of input and output (held whole, where conv.c bounds its
 * columns per chunk) cost more memory than the speed is worth: conv.c runs the call. */
#define MAX_BLOCKED_BYTES ((size_t)768 << 20)

typedef struct conv_key {
    int64_t dims[19];
    int dtypes[4]; /* x, cache, weight, y */
    int threads;
} conv_key;

enum { R_CACHE, R_X, R_W, R_Y, REORDERS };

typedef struct cache_entry {
    int64_t parts, cout_part; /* the output channels' split over the threads */
    dnnl_primitive_t conv;
    dnnl_primitive_t reorder[REORDERS]; /* R_CACHE NULL without a cache */
    dnnl_memory_desc_t user[REORDERS];  /* cache, x, weight (strided), y as the caller holds them */
    dnnl_memory_desc_t sub[2];          /* the cache's and x's frames inside the blocked source */
    dnnl_memory_desc_t src, wei, bias, dst;
    size_t scratch_bytes;
} cache_entry;

/* What a build needs beyond the key: the problem (with its tensors' dtypes), the op's name
 * for errors, and the engine. */
typedef struct build_ctx {
    const ds__conv_problem *p;
    const char *op;
    dnnl_engine_t engine;
} build_ctx;

/* Taps of the time kernel that read a zero frame for every output frame. */
static int64_t zero_taps(const ds__conv_problem *p)
{
    int64_t z = p->front - p->tc - (p->ot - 1) * p->st;
    return z < 0 ? 0 : z;
}

/* Parts of the output channels for `threads` workers: the most, at most one per worker, that
 * cut Cout into equal whole blocks of 16 (so every part runs the same primitive); 1 if none. */
static int64_t channel_parts(int64_t cout, int threads)
{
    for (int64_t n = threads; n > 1; n--)
        if (cout % (16 * n) == 0)
            return n;
    return 1;
}

static conv_key make_key(const ds__conv_problem *p, int threads)
{
    conv_key k;
    memset(&k, 0, sizeof k);
    int64_t d[19] = {p->batch, p->cin, p->cout, p->t, p->h, p->w, p->kt, p->kh, p->kw,
                     p->st, p->sh, p->sw, p->front, p->pad_top, p->pad_left,
                     p->ot, p->oh, p->ow, p->tc};
    memcpy(k.dims, d, sizeof d);
    k.dtypes[0] = (int)p->x_dtype;
    k.dtypes[1] = p->tc ? (int)p->cache_dtype : 0;
    k.dtypes[2] = (int)p->weight->dtype;
    k.dtypes[3] = (int)p->y->dtype;
    k.threads = threads;
    return k;
}

static int dnnl_fail(ds_error *err, const char *op, const char *what, dnnl_status_t st,
                     const ds__conv_problem *p)
{
    ds_status code = st == dnnl_out_of_memory ? DS_ERR_RESOURCE_EXHAUSTED : DS_ERR_INTERNAL;
    return ds_error_set(err, code, "%s (oneDNN): %s failed (status %d) for x [%lld, "
                        "%lld, %lld, %lld, %lld], weight [%lld, %lld, %lld, %lld, %lld]", op,
                        what, (int)st, (long long)p->batch, (long long)p->cin, (long long)p->t,
                        (long long)p->h, (long long)p->w, (long long)p->cout, (long long)p->cin,
                        (long long)p->kt, (long long)p->kh, (long long)p->kw);
}

static dnnl_status_t make_reorder(dnnl_engine_t engine, dnnl_primitive_t *out,
                                  const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                                  const_dnnl_primitive_attr_t attr, size_t *scratch)
{
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t st = dnnl_reorder_primitive_desc_create(&pd, from, engine, to, engine, attr);
    if (st != dnnl_success)
        return st;
    size_t bytes =
        dnnl_memory_desc_get_size(dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0));
    if (bytes > *scratch)
        *scratch = bytes;
    st = dnnl_primitive_create(out, pd);
    dnnl_primitive_desc_destroy(pd);
    return st;
}

/* The cache's clear. */
static void entry_clear(void *ve)
{
    cache_entry *e = ve;
    if (e->conv)
        dnnl_primitive_destroy(e->conv);
    for (int i = 0; i < REORDERS; i++)
        if (e->reorder[i])
            dnnl_primitive_destroy(e->reorder[i]);
    memset(e, 0, sizeof *e);
}

/* The primitives for the conv_key `vk` into the zeroed cache_entry `ve` (the cache's build;
 * on failure the cache clears what was made). */
static int build(void *ve, const void *vk, void *vctx, ds_error *err)
{
    cache_entry *e = ve;
    const conv_key *k = vk;
    const build_ctx *c = vctx;
    const ds__conv_problem *p = c->p;
    const char *op = c->op;
    dnnl_engine_t engine = c->engine;
    int64_t z = zero_taps(p), kt = p->kt - z, tp = p->tc + p->t;
    e->parts = channel_parts(p->cout, k->threads);
    int64_t co = e->cout_part = p->cout / e->parts;
    int64_t plane = p->ot * p->oh * p->ow;
    dnnl_dims_t src_d = {p->batch, p->cin, tp, p->h, p->w};
    dnnl_dims_t wei_d = {co, p->cin, kt, p->kh, p->kw};
    dnnl_dims_t wei_s = {p->cin * p->kt * p->kh * p->kw, p->kt * p->kh * p->kw, p->kh * p->kw,
                         p->kw, 1};
    dnnl_dims_t dst_d = {p->batch, co, p->ot, p->oh, p->ow};
    dnnl_dims_t y_s = {p->cout * plane, plane, p->oh * p->ow, p->ow, 1};
    dnnl_dims_t bias_d = {co};
    dnnl_dims_t strides = {p->st, p->sh, p->sw};
    dnnl_dims_t pad_l = {p->front - p->tc - z, p->pad_top, p->pad_left};
    dnnl_dims_t pad_r = {(p->ot - 1) * p->st + kt - tp - pad_l[0],
                         (p->oh - 1) * p->sh + p->kh - p->h - pad_l[1],
                         (p->ow - 1) * p->sw + p->kw - p->w - pad_l[2]};
    dnnl_memory_desc_t any_src, any_wei, any_dst;
    dnnl_status_t st;
    const char *what = "memory descriptor";
    if ((st = dnnl_memory_desc_init_by_tag(&any_src, 5, src_d, dnnl_f32, dnnl_format_tag_any)) ||
        (st = dnnl_memory_desc_init_by_tag(&any_wei, 5, wei_d, dnnl_f32, dnnl_format_tag_any)) ||
        (st = dnnl_memory_desc_init_by_tag(&any_dst, 5, dst_d, dnnl_f32, dnnl_format_tag_any)) ||
        (st = dnnl_memory_desc_init_by_tag(&e->bias, 1, bias_d, dnnl_f32, dnnl_a)))
        return dnnl_fail(err, op, what, st, p);
    dnnl_convolution_desc_t desc;
    what = "convolution descriptor";
    if ((st = dnnl_convolution_forward_desc_init(&desc, dnnl_forward_inference,
                                                 dnnl_convolution_direct, &any_src, &any_wei,
                                                 &e->bias, &any_dst, strides, pad_l, pad_r)))
        return dnnl_fail(err, op, what, st, p);
    dnnl_primitive_attr_t attr;
    if ((st = dnnl_primitive_attr_create(&attr)))
        return dnnl_fail(err, op, "attribute", st, p);
    dnnl_primitive_desc_t pd = NULL;
    what = "convolution primitive descriptor";
    st = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (st == dnnl_success)
        st = dnnl_primitive_desc_create(&pd, &desc, attr, engine, NULL);
    if (st == dnnl_success) {
        e->src = *dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
        e->wei = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        e->dst = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
        const dnnl_memory_desc_t *scratch_md =
            dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        e->scratch_bytes = dnnl_memory_desc_get_size(scratch_md);
        what = "convolution primitive";
        st = dnnl_primitive_create(&e->conv, pd);
        dnnl_primitive_desc_destroy(pd);
    }
    /* The frames as the caller holds them, and where they go in the blocked source. */
    dnnl_dims_t x_d = {p->batch, p->cin, p->t, p->h, p->w}, x_off = {0, 0, p->tc, 0, 0};
    dnnl_dims_t c_d = {p->batch, p->cin, p->tc, p->h, p->w}, c_off = {0, 0, 0, 0, 0};
    if (st == dnnl_success) {
        what = "reorder descriptors";
        if ((st = dnnl_memory_desc_init_by_tag(&e->user[R_X], 5, x_d, ds__onednn_type(p->x_dtype),
                                               dnnl_abcde)) == dnnl_success &&
            (st = dnnl_memory_desc_init_submemory(&e->sub[1], &e->src, x_d, x_off)) ==
                dnnl_success &&
            (st = dnnl_memory_desc_init_by_strides(&e->user[R_W], 5, wei_d,
                                                   ds__onednn_type(p->weight->dtype), wei_s)) ==
                dnnl_success)
            st = dnnl_memory_desc_init_by_strides(&e->user[R_Y], 5, dst_d,
                                                  ds__onednn_type(p->y->dtype), y_s);
        if (st == dnnl_success && p->tc) {
            st = dnnl_memory_desc_init_by_tag(&e->user[R_CACHE], 5, c_d,
                                              ds__onednn_type(p->cache_dtype), dnnl_abcde);
            if (st == dnnl_success)
                st = dnnl_memory_desc_init_submemory(&e->sub[0], &e->src, c_d, c_off);
        }
    }
    if (st == dnnl_success) {
        what = "reorders";
        if ((st = make_reorder(engine, &e->reorder[R_X], &e->user[R_X], &e->sub[1], attr,
                               &e->scratch_bytes)) == dnnl_success &&
            (st = make_reorder(engine, &e->reorder[R_W], &e->user[R_W], &e->wei, attr,
                               &e->scratch_bytes)) == dnnl_success &&
            (st = make_reorder(engine, &e->reorder[R_Y], &e->dst, &e->user[R_Y], attr,
                               &e->scratch_bytes)) == dnnl_success &&
            p->tc)
            st = make_reorder(engine, &e->reorder[R_CACHE], &e->user[R_CACHE], &e->sub[0], attr,
                              &e->scratch_bytes);
    }
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success)
        return dnnl_fail(err, op, what, st, p);
    return DS_OK;
}

static const ds__primitive_cache_ops cache_ops = {"convolution (oneDNN)", sizeof(conv_key),
                                                  sizeof(cache_entry), build, entry_clear};
static ds__primitive_cache cache = DS__PRIMITIVE_CACHE_INIT(&cache_ops, CACHE_SLOTS);

int ds__onednn_conv_supported(const ds__conv_problem *p)
{
    if (p->cin == 0)
        return 0; /* conv.c writes the bias alone */
    /* f16 has no CPU reorders in every oneDNN 2.x build: conv.c runs it. */
    ds_dtype ts[4] = {p->x_dtype, p->tc ? p->cache_dtype : DS_F32, p->weight->dtype, p->y->dtype};
    for (int i = 0; i < 4; i++)
        if (ts[i] != DS_F32 && ts[i] != DS_BF16)
            return 0;
    if (p->bias && p->bias->dtype != DS_F32 && p->bias->dtype != DS_BF16)
        return 0;
    int64_t z = zero_taps(p), kt = p->kt - z, tp = p->tc + p->t;
    /* oneDNN takes a window's overhang behind the input as right padding, never negative. */
    if ((p->ot - 1) * p->st + kt - tp - (p->front - p->tc - z) < 0 ||
        (p->oh - 1) * p->sh + p->kh - p->h - p->pad_top < 0 ||
        (p->ow - 1) * p->sw + p->kw - p->w - p->pad_left < 0)
        return 0;
    size_t blocked = (size_t)(p->batch * (p->cin + 16) * tp * p->h * p->w +
                              p->batch * (p->cout + 16) * p->ot * p->oh * p->ow) * sizeof(float);
    return blocked <= MAX_BLOCKED_BYTES;
}

static void *aligned_buffer(size_t bytes)
{
    void *ptr = NULL;
    return posix_memalign(&ptr, ALIGN, bytes ? bytes : ALIGN) == 0 ? ptr : NULL;
}

typedef struct part_ctx {
    const ds__conv_problem *p;
    const cache_entry *e;
    dnnl_engine_t engine;
    dnnl_memory_t src;     /* the blocked input, shared */
    const float *bias;     /* [Cout] f32 */
    dnnl_status_t *status; /* [parts] */
    const char **what;     /* [parts] */
} part_ctx;

/* Output channels [i * cout_part, (i + 1) * cout_part) for each part i in [begin, end): the
 * weights' slice into blocked form, the convolution, the result into y's channels. */
static void part_range(void *vctx, int64_t begin, int64_t end)
{
    const part_ctx *c = vctx;
    const ds__conv_problem *p = c->p;
    const cache_entry *e = c->e;
    dnnl_engine_t engine = c->engine;
    omp_set_num_threads(1);
    size_t wei_bytes = dnnl_memory_desc_get_size(&e->wei);
    size_t dst_bytes = dnnl_memory_desc_get_size(&e->dst);
    int64_t z = zero_taps(p), per_co = p->cin * p->kt * p->kh * p->kw;
    int64_t plane = p->ot * p->oh * p->ow;
    size_t wes = ds_dtype_size(p->weight->dtype), yes = ds_dtype_size(p->y->dtype);
    for (int64_t i = begin; i < end; i++) {
        int64_t co0 = i * e->cout_part;
        dnnl_status_t st = dnnl_out_of_memory;
        const char *what = "allocating the weights', output's and scratch copies";
        char *wei = aligned_buffer(wei_bytes), *dst = aligned_buffer(dst_bytes),
             *scratch = aligned_buffer(e->scratch_bytes);
        dnnl_memory_t m_wei = NULL, m_dst = NULL, m_bias = NULL, m_scratch = NULL,
                      m_uw = NULL, m_uy = NULL;
        dnnl_stream_t stream = NULL;
        dnnl_memory_desc_t scratch_md;
        dnnl_dims_t scratch_d = {(int64_t)(e->scratch_bytes ? e->scratch_bytes : 1)};
        if (!wei || !dst || !scratch)
            goto part_done;
        what = "memory";
        if ((st = dnnl_stream_create(&stream, engine, dnnl_stream_default_flags)) ||
            (st = dnnl_memory_create(&m_wei, &e->wei, engine, wei)) ||
            (st = dnnl_memory_create(&m_dst, &e->dst, engine, dst)) ||
            (st = dnnl_memory_create(&m_bias, &e->bias, engine, (void *)(c->bias + co0))) ||
            (st = dnnl_memory_create(&m_uw, &e->user[R_W], engine,
                                     (char *)p->weight->data +
                                         (size_t)(co0 * per_co + z * p->kh * p->kw) * wes)) ||
            (st = dnnl_memory_create(&m_uy, &e->user[R_Y], engine,
                                     (char *)p->y->data + (size_t)(co0 * plane) * yes)) ||
            (st = dnnl_memory_desc_init_by_tag(&scratch_md, 1, scratch_d, dnnl_u8, dnnl_a)) ||
            (st = dnnl_memory_create(&m_scratch, &scratch_md, engine, scratch)))
            goto part_done;
        dnnl_exec_arg_t aw[3] = {{DNNL_ARG_FROM, m_uw}, {DNNL_ARG_TO, m_wei},
                                 {DNNL_ARG_SCRATCHPAD, m_scratch}};
        dnnl_exec_arg_t ac[5] = {{DNNL_ARG_SRC, c->src}, {DNNL_ARG_WEIGHTS, m_wei},
                                 {DNNL_ARG_BIAS, m_bias}, {DNNL_ARG_DST, m_dst},
                                 {DNNL_ARG_SCRATCHPAD, m_scratch}};
        dnnl_exec_arg_t ay[3] = {{DNNL_ARG_FROM, m_dst}, {DNNL_ARG_TO, m_uy},
                                 {DNNL_ARG_SCRATCHPAD, m_scratch}};
        what = "weights' reorder";
        if ((st = dnnl_primitive_execute(e->reorder[R_W], stream, 3, aw)))
            goto part_done;
        what = "convolution";
        if ((st = dnnl_primitive_execute(e->conv, stream, 5, ac)))
            goto part_done;
        what = "output's reorder";
        if ((st = dnnl_primitive_execute(e->reorder[R_Y], stream, 3, ay)) == dnnl_success)
            st = dnnl_stream_wait(stream);
    part_done:;
        dnnl_memory_t mems[] = {m_wei, m_dst, m_bias, m_scratch, m_uw, m_uy};
        for (size_t j = 0; j < sizeof mems / sizeof mems[0]; j++)
            if (mems[j])
                dnnl_memory_destroy(mems[j]);
        if (stream)
            dnnl_stream_destroy(stream);
        free(wei);
        free(dst);
        free(scratch);
        c->status[i] = st;
        c->what[i] = what;
    }
}

int ds__onednn_conv(ds_backend *b, const ds__conv_problem *p, const char *op, ds_error *err)
{
    dnnl_engine_t engine;
    int rc = ds__onednn_engine(op, &engine, err);
    if (rc != DS_OK)
        return rc;
    conv_key k = make_key(p, ds__cpu_threads(b));
    /* Every primitive is built for, and run on, one OpenMP thread (see the top). */
    omp_set_num_threads(1);
    build_ctx bc = {p, op, engine};
    void *ve = NULL;
    rc = ds__primitive_cache_acquire(&cache, &k, &bc, &ve, err);
    if (rc != DS_OK)
        return rc;
    cache_entry *e = ve;

    size_t src_bytes = dnnl_memory_desc_get_size(&e->src);
    float *src = aligned_buffer(src_bytes), *bias = aligned_buffer((size_t)p->cout * sizeof *bias);
    void *scratch = aligned_buffer(e->scratch_bytes);
    dnnl_status_t *status = calloc((size_t)e->parts, sizeof *status);
    const char **whats = calloc((size_t)e->parts, sizeof *whats);
    dnnl_memory_t m_src = NULL, m_scratch = NULL, m_user[2] = {NULL, NULL},
                  m_sub[2] = {NULL, NULL};
    dnnl_stream_t stream = NULL;
    dnnl_status_t st = dnnl_success;
    const char *what = "memory";
    if (!src || !bias || !scratch || !status || !whats) {
        rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "%s (oneDNN): out of memory for the "
                          "blocked input (%zu bytes)", op, src_bytes + e->scratch_bytes);
        goto done;
    }
    /* Channels padded up to the block hold zeros that the kernel reads; reorders into a
     * sub-memory leave that padding alone. */
    if (e->src.padded_dims[1] != e->src.dims[1])
        memset(src, 0, src_bytes);
    if (p->bias)
        ds_convert_to_f32(p->bias->data, p->bias->dtype, (size_t)p->cout, bias);
    else
        memset(bias, 0, (size_t)p->cout * sizeof *bias);
    dnnl_memory_desc_t scratch_md;
    dnnl_dims_t scratch_d = {(int64_t)(e->scratch_bytes ? e->scratch_bytes : 1)};
    if ((st = dnnl_stream_create(&stream, engine, dnnl_stream_default_flags)) ||
        (st = dnnl_memory_create(&m_src, &e->src, engine, src)) ||
        (st = dnnl_memory_create(&m_sub[1], &e->sub[1], engine, src)) ||
        (st = dnnl_memory_create(&m_user[1], &e->user[R_X], engine, (void *)p->x)) ||
        (st = dnnl_memory_desc_init_by_tag(&scratch_md, 1, scratch_d, dnnl_u8, dnnl_a)) ||
        (st = dnnl_memory_create(&m_scratch, &scratch_md, engine, scratch)))
        goto failed;
    if (p->tc && ((st = dnnl_memory_create(&m_sub[0], &e->sub[0], engine, src)) ||
                  (st = dnnl_memory_create(&m_user[0], &e->user[R_CACHE], engine,
                                           (void *)p->cache))))
        goto failed;
    what = "input's reorder";
    for (int i = p->tc ? 0 : 1; i < 2; i++) {
        dnnl_exec_arg_t a[3] = {{DNNL_ARG_FROM, m_user[i]}, {DNNL_ARG_TO, m_sub[i]},
                                {DNNL_ARG_SCRATCHPAD, m_scratch}};
        if ((st = dnnl_primitive_execute(e->reorder[i ? R_X : R_CACHE], stream, 3, a)))
            goto failed;
    }
    if ((st = dnnl_stream_wait(stream)))
        goto failed;
    part_ctx pc = {p, e, engine, m_src, bias, status, whats};
    ds__cpu_parallel_for(b, e->parts, 1, part_range, &pc);
    for (int64_t i = 0; i < e->parts; i++)
        if (status[i] != dnnl_success) {
            st = status[i];
            what = whats[i];
            goto failed;
        }
    goto done;
failed:
    rc = dnnl_fail(err, op, what, st, p);
done:
    {
        dnnl_memory_t mems[] = {m_src, m_scratch, m_sub[0], m_sub[1], m_user[0], m_user[1]};
        for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++)
            if (mems[i])
                dnnl_memory_destroy(mems[i]);
    }
    if (stream)
        dnnl_stream_destroy(stream);
    free(src);
    free(bias);
    free(scratch);
    free(status);
    free(whats);
    ds__primitive_cache_release(&cache, e);
    return rc;
}

#endif
