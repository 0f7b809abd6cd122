/* The CPU backend's table: host memory, synchronous copies, trivial streams and events, and
 * every op slot (one file per op family, see cpu_internal.h). */
#include <cblas.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/gemm_info.h"
#include "kernels/cpu/threadpool.h"

/* Every call completes before it returns, so a stream or an event carries no state; they are
 * still real allocations so that create/destroy pair up as on other backends (and ASan sees a
 * leaked one). */
struct ds_stream {
    int unused;
};
struct ds_event {
    int unused;
};

#define CPU_ALIGN 256
/* More threads than this is a configuration mistake, not a machine. */
#define CPU_MAX_THREADS 1024

static int cpu_alloc(ds_backend *b, size_t bytes, void **ptr, ds_error *err)
{
    (void)b;
    *ptr = NULL;
    if (bytes > SIZE_MAX - (CPU_ALIGN - 1))
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "cpu: cannot allocate %zu bytes", bytes);
    /* aligned_alloc wants a multiple of the alignment. */
    size_t rounded = bytes ? (bytes + CPU_ALIGN - 1) & ~(size_t)(CPU_ALIGN - 1) : CPU_ALIGN;
    *ptr = aligned_alloc(CPU_ALIGN, rounded);
    if (!*ptr)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "cpu: cannot allocate %zu bytes", bytes);
    return DS_OK;
}

static void cpu_free(ds_backend *b, void *ptr)
{
    (void)b;
    free(ptr);
}

static int cpu_copy(ds_backend *b, void *dst, const void *src, size_t bytes, ds_stream *s,
                    ds_error *err)
{
    (void)b;
    (void)s;
    (void)err;
    if (bytes)
        memmove(dst, src, bytes);
    return DS_OK;
}

static int cpu_fill32(ds_backend *b, void *dst, uint32_t pattern, size_t bytes, ds_stream *s,
                      ds_error *err)
{
    (void)b;
    (void)s;
    (void)err;
    unsigned char *p = dst;
    unsigned char pat[4];
    memcpy(pat, &pattern, sizeof pat);
    if (pat[0] == pat[1] && pat[0] == pat[2] && pat[0] == pat[3]) {
        if (bytes)
            memset(p, pat[0], bytes);
        return DS_OK;
    }
    size_t i = 0;
    for (; i + 4 <= bytes; i += 4)
        memcpy(p + i, pat, 4);
    for (size_t j = 0; i < bytes; i++, j++)
        p[i] = pat[j];
    return DS_OK;
}

static int cpu_stream_create(ds_backend *b, ds_stream **out, ds_error *err)
{
    (void)b;
    *out = calloc(1, sizeof **out);
    return *out ? DS_OK : ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "cpu: out of memory");
}

static void cpu_stream_destroy(ds_backend *b, ds_stream *s)
{
    (void)b;
    free(s);
}

static int cpu_stream_synchronize(ds_backend *b, ds_stream *s, ds_error *err)
{
    (void)b;
    (void)s;
    (void)err;
    return DS_OK;
}

static int cpu_event_create(ds_backend *b, ds_event **out, ds_error *err)
{
    (void)b;
    *out = calloc(1, sizeof **out);
    return *out ? DS_OK : ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "cpu: out of memory");
}

static void cpu_event_destroy(ds_backend *b, ds_event *e)
{
    (void)b;
    free(e);
}

static int cpu_event_record(ds_backend *b, ds_event *e, ds_stream *s, ds_error *err)
{
    (void)b;
    (void)e;
    (void)s;
    (void)err;
    return DS_OK;
}

static int cpu_stream_wait_event(ds_backend *b, ds_stream *s, ds_event *e, ds_error *err)
{
    (void)b;
    (void)s;
    (void)e;
    (void)err;
    return DS_OK;
}

static int cpu_event_synchronize(ds_backend *b, ds_event *e, ds_error *err)
{
    (void)b;
    (void)e;
    (void)err;
    return DS_OK;
}

/* The CPU is complete: every op and dtype combination that kernels/ops.c accepts runs here. */
static int cpu_supports(const ds_backend *b, ds_op op, const void *args)
{
    (void)b;
    (void)args;
    return op >= 0 && op < DS_OP_COUNT;
}

/* OpenBLAS's runtime kernel selection (DYNAMIC_ARCH builds) picks kernels from the CPU model
 * number, and a model newer than the library (0.3.21 does not know Emerald Rapids, model 0xCF)
 * falls back to "Prescott": SSE3 kernels, 6-12x slower sgemm than the AVX2/AVX-512 ones the CPU
 * has. The choice is made when the library loads, from OPENBLAS_CORETYPE; when the user did not
 * set it and the fallback is in use on a CPU with AVX2, select by features instead and redo the
 * library's initialisation (its exported re-init entry points; weak, so a build of OpenBLAS
 * without them simply keeps its choice). Runs once, before any GEMM of ours. */
extern void gotoblas_dynamic_init(void) __attribute__((weak));
extern void gotoblas_dynamic_quit(void) __attribute__((weak));

static void select_openblas_kernels(void)
{
    if (!gotoblas_dynamic_init || !gotoblas_dynamic_quit || getenv("OPENBLAS_CORETYPE"))
        return;
    const char *core = openblas_get_corename();
    if (!core || strcmp(core, "Prescott") != 0)
        return;
    __builtin_cpu_init();
    const char *want = NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512cd"))
        want = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        want = "Haswell";
    if (!want)
        return;
    setenv("OPENBLAS_CORETYPE", want, 1);
    gotoblas_dynamic_quit();
    gotoblas_dynamic_init();
    unsetenv("OPENBLAS_CORETYPE");
}

static pthread_once_t openblas_once = PTHREAD_ONCE_INIT;

char *ds_cpu_gemm_info(char *buf, size_t size)
{
    char onednn[96] = "no onednn";
#ifdef DS_HAVE_ONEDNN
    ds__onednn_describe(onednn, sizeof onednn);
#endif
    /* openblas_get_config() starts with "OpenBLAS 0.3.21 ..." */
    const char *config = openblas_get_config();
    const char *version = strncmp(config, "OpenBLAS ", 9) == 0 ? config + 9 : "?";
    int vlen = (int)strcspn(version, " ");
    snprintf(buf, size, "%s; openblas %.*s core %s", onednn, vlen, version, openblas_get_corename());
    return buf;
}

static void cpu_destroy(ds_backend *b)
{
    ds__cpu_pool_destroy(b->impl);
    ds__cpu_scratch_release();
    free(b);
}

int ds_cpu_backend_create(int threads, ds_backend **out, ds_error *err)
{
    *out = NULL;
    if (threads < 0 || threads > CPU_MAX_THREADS)
        return ds_error_set(err, DS_ERR_INVALID_ARGUMENT, "cpu backend: %d threads is outside 0..%d",
                            threads, CPU_MAX_THREADS);
    if (threads == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        threads = online < 1 ? 1 : (online > CPU_MAX_THREADS ? CPU_MAX_THREADS : (int)online);
    }
    ds_backend *b = calloc(1, sizeof *b);
    if (!b)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "cpu backend: out of memory");
    ds__cpu_pool *pool = NULL;
    int rc = ds__cpu_pool_create(threads, &pool, err);
    if (rc != DS_OK)
        goto fail;

    /* OpenBLAS runs single-threaded: our pool runs a GEMM's parts (gemm_parts.c), so no
     * OpenBLAS worker is left spinning on the cores the pool's next op needs. The count is
     * process-wide and the same for every backend. */
    pthread_once(&openblas_once, select_openblas_kernels);
    openblas_set_num_threads(1);

    b->name = "cpu";
    b->host_memory = 1;
    b->impl = pool;
    b->alloc = cpu_alloc;
    b->free = cpu_free;
    b->alloc_pinned = cpu_alloc;
    b->free_pinned = cpu_free;
    b->copy_to_device = cpu_copy;
    b->copy_to_host = cpu_copy;
    b->copy_device = cpu_copy;
    b->fill32 = cpu_fill32;
    b->stream_create = cpu_stream_create;
    b->stream_destroy = cpu_stream_destroy;
    b->stream_synchronize = cpu_stream_synchronize;
    b->event_create = cpu_event_create;
    b->event_destroy = cpu_event_destroy;
    b->event_record = cpu_event_record;
    b->stream_wait_event = cpu_stream_wait_event;
    b->event_synchronize = cpu_event_synchronize;
    b->supports = cpu_supports;

    b->linear = ds__cpu_linear;
    b->batched_matmul = ds__cpu_batched_matmul;
    b->attention = ds__cpu_attention;
    b->layer_norm = ds__cpu_layer_norm;
    b->rms_norm = ds__cpu_rms_norm;
    b->group_norm = ds__cpu_group_norm;
    b->channel_rms_norm = ds__cpu_channel_rms_norm;
    b->softmax = ds__cpu_softmax;
    b->activation = ds__cpu_activation;
    b->rope = ds__cpu_rope;
    b->timestep_embedding = ds__cpu_timestep_embedding;
    b->binary = ds__cpu_binary;
    b->modulate = ds__cpu_modulate;
    b->gated_residual = ds__cpu_gated_residual;
    b->scale = ds__cpu_scale;
    b->clamp = ds__cpu_clamp;
    b->concat = ds__cpu_concat;
    b->slice = ds__cpu_slice;
    b->permute = ds__cpu_permute;
    b->patchify = ds__cpu_patchify;
    b->unpatchify = ds__cpu_unpatchify;
    b->pad = ds__cpu_pad;
    b->upsample_nearest2x = ds__cpu_upsample_nearest2x;
    b->embedding = ds__cpu_embedding;
    b->conv2d = ds__cpu_conv2d;
    b->conv3d_causal = ds__cpu_conv3d_causal;
    b->cast = ds__cpu_cast;
    b->destroy = cpu_destroy;
    *out = b;
    return DS_OK;
fail:
    free(b);
    return rc;
}
