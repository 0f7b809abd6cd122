/* GEMMs through oneDNN's matmul primitive (built when the library is found, DS_HAVE_ONEDNN).
 *
 * oneDNN picks its kernels at run time from the processor (bf16 dot-product instructions where
 * present, AVX-512 or AVX2 f32 kernels otherwise), so one binary serves every x86-64 machine.
 * Creating a primitive costs far more than a small GEMM, so primitives are kept in a small
 * process-wide cache keyed by everything that shapes them: dims, strides, dtypes and alpha.
 *
 * Threads: Debian's libdnnl runs on OpenMP; OpenMP is never given more than one thread. Each
 * GEMM is cut into parts run by our pool's workers (gemm_parts.c), each part a single-threaded
 * primitive, OpenMP's count set to 1 on the worker that runs it.
 *
 * Scratchpads are the caller's (user scratchpad mode), so one cached primitive can run on
 * several host threads at once. */
#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/gemm_parts.h"
#include "kernels/cpu/onednn_engine.h"
#include "kernels/cpu/primitive_cache.h"

#ifdef DS_HAVE_ONEDNN

#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if DNNL_CPU_THREADING_RUNTIME != DNNL_RUNTIME_OMP
#error "the oneDNN GEMM path sets OpenMP's thread count; this libdnnl uses another CPU runtime"
#endif

/* Enough for every distinct GEMM part of a few models at once (a DiT block has about a dozen
 * shapes, each cut into one or two part shapes; the text encoder and the VAE fewer); past it
 * the least recently used idle entry goes. */
#define CACHE_SLOTS 192
#define SCRATCH_ALIGN 64

/* One part's problem: dims, the operands' row strides (lda, ldb, ldc) and batch strides
 * (sa, sb, sc; a part keeps its whole GEMM's strides, so they are not implied by its dims). */
typedef struct gemm_key {
    int64_t batch, m, n, k, lda, ldb, ldc, sa, sb, sc;
    int trans_a, trans_b;
    ds_dtype dtype;
    uint32_t alpha_bits;
} gemm_key;

typedef struct gemm_entry {
    dnnl_primitive_t prim;
    dnnl_memory_desc_t md[4]; /* src, weights, dst, scratchpad */
    size_t scratch_bytes;
} gemm_entry;

static int dnnl_fail(ds_error *err, const char *what, dnnl_status_t st, const gemm_key *k)
{
    return ds_error_set(err, DS_ERR_INTERNAL, "gemm (oneDNN): %s failed (status %d) for %s "
                        "[%lld x] [%lld, %lld] x [%lld, %lld]", what, (int)st,
                        ds_dtype_name(k->dtype), (long long)k->batch, (long long)k->m,
                        (long long)k->k, (long long)k->k, (long long)k->n);
}

/* The primitive for the gemm_key `vk` into the gemm_entry `ve` (the cache's build). */
static int build(void *ve, const void *vk, void *ctx, ds_error *err)
{
    gemm_entry *e = ve;
    const gemm_key *k = vk;
    dnnl_engine_t engine = *(dnnl_engine_t *)ctx;
    float alpha;
    memcpy(&alpha, &k->alpha_bits, sizeof alpha);
    int nd = k->batch > 1 ? 3 : 2;
    int64_t m = k->m, n = k->n, kk = k->k;
    /* Row-major strides; op(a) stored [K, M] when transposed, op(b) stored [N, K] when
     * transposed (a linear's weight). The batch dimension, when present, comes first. */
    dnnl_dims_t sd = {m, kk}, ss = {k->trans_a ? 1 : k->lda, k->trans_a ? k->lda : 1};
    dnnl_dims_t wd = {kk, n}, ws = {k->trans_b ? 1 : k->ldb, k->trans_b ? k->ldb : 1};
    dnnl_dims_t dd = {m, n}, dst = {k->ldc, 1};
    if (nd == 3) {
        dnnl_dims_t sd3 = {k->batch, m, kk}, ss3 = {k->sa, ss[0], ss[1]};
        dnnl_dims_t wd3 = {k->batch, kk, n}, ws3 = {k->sb, ws[0], ws[1]};
        dnnl_dims_t dd3 = {k->batch, m, n}, dst3 = {k->sc, k->ldc, 1};
        memcpy(sd, sd3, sizeof sd);
        memcpy(ss, ss3, sizeof ss);
        memcpy(wd, wd3, sizeof wd);
        memcpy(ws, ws3, sizeof ws);
        memcpy(dd, dd3, sizeof dd);
        memcpy(dst, dst3, sizeof dst);
    }
    dnnl_data_type_t t = ds__onednn_type(k->dtype);
    dnnl_status_t st;
    if ((st = dnnl_memory_desc_init_by_strides(&e->md[0], nd, sd, t, ss)) != dnnl_success ||
        (st = dnnl_memory_desc_init_by_strides(&e->md[1], nd, wd, t, ws)) != dnnl_success ||
        (st = dnnl_memory_desc_init_by_strides(&e->md[2], nd, dd, dnnl_f32, dst)) != dnnl_success)
        return dnnl_fail(err, "memory descriptor", st, k);
    dnnl_matmul_desc_t desc;
    if ((st = dnnl_matmul_desc_init(&desc, &e->md[0], &e->md[1], NULL, &e->md[2])) != dnnl_success)
        return dnnl_fail(err, "matmul descriptor", st, k);
    dnnl_primitive_attr_t attr;
    if ((st = dnnl_primitive_attr_create(&attr)) != dnnl_success)
        return dnnl_fail(err, "attribute", st, k);
    st = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (st == dnnl_success && alpha != 1.0f)
        st = dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha);
    dnnl_primitive_desc_t pd = NULL;
    if (st == dnnl_success)
        st = dnnl_primitive_desc_create(&pd, &desc, attr, engine, NULL);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success)
        return dnnl_fail(err, "primitive descriptor", st, k);
    e->md[3] = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    e->scratch_bytes = dnnl_memory_desc_get_size(&e->md[3]);
    st = dnnl_primitive_create(&e->prim, pd);
    dnnl_primitive_desc_destroy(pd);
    if (st != dnnl_success) {
        e->prim = NULL;
        return dnnl_fail(err, "primitive", st, k);
    }
    return DS_OK;
}

static void clear(void *ve)
{
    gemm_entry *e = ve;
    if (e->prim)
        dnnl_primitive_destroy(e->prim);
    e->prim = NULL;
}

static const ds__primitive_cache_ops cache_ops = {"gemm (oneDNN)", sizeof(gemm_key),
                                                  sizeof(gemm_entry), build, clear};
static ds__primitive_cache cache = DS__PRIMITIVE_CACHE_INIT(&cache_ops, CACHE_SLOTS);

typedef struct part_ctx {
    dnnl_engine_t engine;
    ds_dtype dtype;
} part_ctx;

/* Runs one part on the calling thread, single-threaded. */
static int run_part(void *vctx, const ds__gemm_part *p, ds_error *err)
{
    const part_ctx *ctx = vctx;
    dnnl_engine_t engine = ctx->engine;
    omp_set_num_threads(1);
    gemm_key k;
    memset(&k, 0, sizeof k); /* compared bytewise, padding included */
    k.batch = p->batch;
    k.m = p->m;
    k.n = p->n;
    k.k = p->k;
    k.lda = p->lda;
    k.ldb = p->ldb;
    k.ldc = p->ldc;
    k.sa = p->sa;
    k.sb = p->sb;
    k.sc = p->sc;
    k.trans_a = p->trans_a;
    k.trans_b = p->trans_b;
    k.dtype = ctx->dtype;
    memcpy(&k.alpha_bits, &p->alpha, sizeof k.alpha_bits);
    void *ve = NULL;
    int rc = ds__primitive_cache_acquire(&cache, &k, &engine, &ve, err);
    if (rc != DS_OK)
        return rc;
    const gemm_entry *e = ve;
    dnnl_memory_t mem[4] = {NULL, NULL, NULL, NULL};
    void *ptr[3] = {(void *)p->a, (void *)p->b, p->c};
    dnnl_stream_t stream = NULL;
    dnnl_status_t st = dnnl_stream_create(&stream, engine, dnnl_stream_default_flags);
    const char *what = "stream";
    for (int i = 0; i < 3 && st == dnnl_success; i++) {
        st = dnnl_memory_create(&mem[i], &e->md[i], engine, ptr[i]);
        what = "memory";
    }
    int nargs = 3;
    if (st == dnnl_success && e->scratch_bytes) {
        char *raw = ds__cpu_scratch(e->scratch_bytes + SCRATCH_ALIGN);
        if (!raw) {
            rc = ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "gemm (oneDNN): out of memory for "
                              "a %zu-byte scratchpad", e->scratch_bytes);
            goto done;
        }
        void *aligned = raw + (SCRATCH_ALIGN - (uintptr_t)raw % SCRATCH_ALIGN) % SCRATCH_ALIGN;
        st = dnnl_memory_create(&mem[3], &e->md[3], engine, aligned);
        nargs = 4;
    }
    if (st == dnnl_success) {
        dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, mem[0]}, {DNNL_ARG_WEIGHTS, mem[1]},
                                   {DNNL_ARG_DST, mem[2]}, {DNNL_ARG_SCRATCHPAD, mem[3]}};
        what = "execute";
        st = dnnl_primitive_execute(e->prim, stream, nargs, args);
        if (st == dnnl_success)
            st = dnnl_stream_wait(stream);
    }
    if (st != dnnl_success)
        rc = dnnl_fail(err, what, st, &k);
done:
    for (int i = 0; i < 4; i++)
        if (mem[i])
            dnnl_memory_destroy(mem[i]);
    if (stream)
        dnnl_stream_destroy(stream);
    ds__primitive_cache_release(&cache, ve);
    return rc;
}

int ds__onednn_gemm(ds_backend *b, const ds__gemm *g, ds_error *err)
{
    part_ctx ctx = {.dtype = g->dtype};
    int rc = ds__onednn_engine("gemm", &ctx.engine, err);
    if (rc != DS_OK)
        return rc;
    ds__gemm_part whole = {.batch = g->batch, .m = g->m, .n = g->n, .k = g->k,
                           .lda = g->trans_a ? g->m : g->k, .ldb = g->trans_b ? g->k : g->n,
                           .ldc = g->ldc, .sa = g->m * g->k, .sb = g->k * g->n,
                           .sc = g->m * g->ldc, .trans_a = g->trans_a, .trans_b = g->trans_b,
                           .esize = ds_dtype_size(g->dtype), .alpha = g->alpha, .beta = 0.0f,
                           .a = g->a, .b = g->b, .c = g->c};
    return ds__gemm_run_parts(b, &whole, run_part, &ctx, err);
}

static const char *isa_name(dnnl_cpu_isa_t isa)
{
    switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "other";
    }
}

void ds__onednn_describe(char *buf, size_t size)
{
    const dnnl_version_t *v = dnnl_version();
    snprintf(buf, size, "onednn %d.%d.%d isa %s", v->major, v->minor, v->patch,
             isa_name(dnnl_get_effective_cpu_isa()));
}

ds__bf16_rate ds__onednn_bf16_rate(void)
{
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    if (isa == dnnl_cpu_isa_avx512_core_amx)
        return DS__BF16_FAST;
    if (isa != dnnl_cpu_isa_avx512_core_bf16)
        return DS__BF16_NONE;
    /* VDPBF16PS does 32 multiply-adds per 512-bit instruction. Intel cores issue one per cycle
     * (port 0) against two f32 FMAs (16 each): the same rate. AMD's Zen 4 and later issue it at
     * their full 512-bit rate, twice their f32 FMA rate. */
    __builtin_cpu_init();
    return __builtin_cpu_is("amd") ? DS__BF16_FAST : DS__BF16_AS_F32;
}

#endif
