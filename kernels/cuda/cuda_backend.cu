/* The CUDA backend's table: device selection, memory, copies, streams, events, `supports`
 * and the checked-call error reporting every file uses. */
#include "cuda_internal.cuh"

#include <new>
#include <stdio.h>
#include <stdlib.h>

/* ---- Errors ---- */

int ds__cuda_error(ds_error *err, cudaError_t e, const char *call, const char *file, int line)
{
    /* Reading the error resets the runtime's non-sticky error state; sticky errors (a faulted
     * context) keep failing every later call, which then reports them too. */
    (void)cudaGetLastError();
    int code = (e == cudaErrorMemoryAllocation) ? DS_ERR_RESOURCE_EXHAUSTED : DS_ERR_INTERNAL;
    return ds_error_set(err, code, "%s failed at %s:%d: %s: %s", call, file, line,
                        cudaGetErrorName(e), cudaGetErrorString(e));
}

int ds__cublas_error(ds_error *err, cublasStatus_t st, const char *call, const char *file, int line)
{
    int code = (st == CUBLAS_STATUS_ALLOC_FAILED) ? DS_ERR_RESOURCE_EXHAUSTED : DS_ERR_INTERNAL;
    return ds_error_set(err, code, "%s failed at %s:%d: cuBLASLt status %d: %s", call, file, line,
                        (int)st, cublasLtGetStatusString(st));
}

/* ---- Helpers shared by the op files ---- */

int ds__cuda_enter(ds_backend *b, ds_stream *s, ds_stream **out, ds_error *err)
{
    ds__cuda *c = ds__cuda_of(b);
    DS_CUDA_CHECK(cudaSetDevice(c->device));
    *out = s ? s : c->default_stream;
    return DS_OK;
}

int ds__cuda_scratch(ds__cuda *c, ds_stream *s, size_t bytes, void **out, ds_error *err)
{
    if (s->scratch && bytes <= s->scratch_bytes) {
        *out = s->scratch;
        return DS_OK;
    }
    /* Grow by at least half again so a sequence of slowly growing requests reallocates a few
     * times, not every time. The old block is released in stream order: work queued before
     * still owns it until it finishes. */
    size_t grown = s->scratch_bytes + s->scratch_bytes / 2;
    size_t want = bytes > grown ? bytes : grown;
    want = (want + ((size_t)2 << 20) - 1) & ~(((size_t)2 << 20) - 1);
    if (s->scratch) {
        if (c->mem_pools) {
            DS_CUDA_CHECK(cudaFreeAsync(s->scratch, s->stream));
        } else {
            DS_CUDA_CHECK(cudaStreamSynchronize(s->stream));
            DS_CUDA_CHECK(cudaFree(s->scratch));
        }
        s->scratch = NULL;
        s->scratch_bytes = 0;
    }
    void *p = NULL;
    cudaError_t e = c->mem_pools ? cudaMallocAsync(&p, want, s->stream) : cudaMalloc(&p, want);
    if (e == cudaErrorMemoryAllocation && want > bytes) {
        (void)cudaGetLastError();
        want = bytes;
        e = c->mem_pools ? cudaMallocAsync(&p, want, s->stream) : cudaMalloc(&p, want);
    }
    if (e != cudaSuccess) {
        ds__cuda_error(err, e, "scratch allocation (cudaMallocAsync)", __FILE__, __LINE__);
        return ds_error_prefix(err, "%zu bytes of scratch: ", bytes);
    }
    s->scratch = p;
    s->scratch_bytes = want;
    *out = p;
    return DS_OK;
}

unsigned ds__cuda_blocks(const ds__cuda *c, uint64_t n, unsigned threads)
{
    uint64_t blocks = (n + threads - 1) / threads;
    uint64_t cap = (uint64_t)(c->sm_count > 0 ? c->sm_count : 1) * 32;
    if (blocks > cap)
        blocks = cap;
    return blocks ? (unsigned)blocks : 1u;
}

unsigned ds__cuda_alignment(uintptr_t a, uintptr_t b, uintptr_t c, uintptr_t d)
{
    uintptr_t v = a | b | c | d;
    unsigned al = 16;
    while (al > 1 && (v & (al - 1)))
        al >>= 1;
    return al;
}

/* ---- fill32 ---- */

__global__ void fill_kernel(uint8_t *dst, size_t bytes, uint32_t pattern, int aligned16)
{
    size_t chunks = (bytes + 15) / 16;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t ch = (size_t)blockIdx.x * blockDim.x + threadIdx.x; ch < chunks; ch += stride) {
        size_t off = ch * 16;
        if (aligned16 && off + 16 <= bytes) {
            *reinterpret_cast<uint4 *>(dst + off) = make_uint4(pattern, pattern, pattern, pattern);
        } else {
            for (size_t j = off; j < off + 16 && j < bytes; j++)
                dst[j] = (uint8_t)(pattern >> (8 * (j % 4)));
        }
    }
}

const void *ds__cuda_probe_kernel(void) { return (const void *)fill_kernel; }

int ds__cuda_fill32(ds__cuda *c, ds_stream *s, void *dst, uint32_t pattern, size_t bytes,
                    ds_error *err)
{
    if (bytes == 0)
        return DS_OK;
    int aligned16 = ((uintptr_t)dst % 16) == 0;
    fill_kernel<<<ds__cuda_blocks(c, (bytes + 15) / 16, 256), 256, 0, s->stream>>>(
        (uint8_t *)dst, bytes, pattern, aligned16);
    DS_KERNEL_CHECK("fill32");
    return DS_OK;
}

/* ---- Memory and copies ---- */

static int cuda_alloc(ds_backend *b, size_t bytes, void **ptr, ds_error *err)
{
    *ptr = NULL;
    DS_CUDA_CHECK(cudaSetDevice(ds__cuda_of(b)->device));
    cudaError_t e = cudaMalloc(ptr, bytes);
    if (e != cudaSuccess) {
        *ptr = NULL;
        ds__cuda_error(err, e, "cudaMalloc", __FILE__, __LINE__);
        return ds_error_prefix(err, "allocating %zu bytes on CUDA device %d: ", bytes,
                               ds__cuda_of(b)->device);
    }
    return DS_OK;
}

static int cuda_mem_info(ds_backend *b, size_t *free_bytes, size_t *total_bytes, ds_error *err)
{
    DS_CUDA_CHECK(cudaSetDevice(ds__cuda_of(b)->device));
    DS_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
    return DS_OK;
}

static void cuda_free(ds_backend *b, void *ptr)
{
    if (!ptr)
        return;
    /* Nothing to report to: a failing free means a broken context, which the next checked
     * call reports. */
    if (cudaSetDevice(ds__cuda_of(b)->device) == cudaSuccess)
        (void)cudaFree(ptr);
    (void)cudaGetLastError();
}

static int cuda_alloc_pinned(ds_backend *b, size_t bytes, void **ptr, ds_error *err)
{
    *ptr = NULL;
    DS_CUDA_CHECK(cudaSetDevice(ds__cuda_of(b)->device));
    cudaError_t e = cudaMallocHost(ptr, bytes);
    if (e != cudaSuccess) {
        *ptr = NULL;
        ds__cuda_error(err, e, "cudaMallocHost", __FILE__, __LINE__);
        return ds_error_prefix(err, "allocating %zu bytes of pinned host memory: ", bytes);
    }
    return DS_OK;
}

static void cuda_free_pinned(ds_backend *b, void *ptr)
{
    (void)b;
    if (ptr)
        (void)cudaFreeHost(ptr);
    (void)cudaGetLastError();
}

static int copy(ds_backend *b, void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                ds_stream *s, ds_error *err)
{
    if (bytes == 0)
        return DS_OK;
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    DS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, st->stream));
    return DS_OK;
}

static int cuda_copy_to_device(ds_backend *b, void *dst, const void *src, size_t bytes, ds_stream *s,
                               ds_error *err)
{
    return copy(b, dst, src, bytes, cudaMemcpyHostToDevice, s, err);
}

static int cuda_copy_to_host(ds_backend *b, void *dst, const void *src, size_t bytes, ds_stream *s,
                             ds_error *err)
{
    return copy(b, dst, src, bytes, cudaMemcpyDeviceToHost, s, err);
}

static int cuda_copy_device(ds_backend *b, void *dst, const void *src, size_t bytes, ds_stream *s,
                            ds_error *err)
{
    return copy(b, dst, src, bytes, cudaMemcpyDeviceToDevice, s, err);
}

static int cuda_fill32(ds_backend *b, void *dst, uint32_t pattern, size_t bytes, ds_stream *s,
                       ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    return ds__cuda_fill32(ds__cuda_of(b), st, dst, pattern, bytes, err);
}

/* ---- Streams and events ---- */

static void stream_release(ds__cuda *c, ds_stream *s)
{
    if (!s)
        return;
    if (s->stream) {
        (void)cudaStreamSynchronize(s->stream);
        if (s->scratch) {
            if (c->mem_pools)
                (void)cudaFreeAsync(s->scratch, s->stream);
            else
                (void)cudaFree(s->scratch);
            (void)cudaStreamSynchronize(s->stream);
        }
        (void)cudaStreamDestroy(s->stream);
    }
    if (s->workspace)
        (void)cudaFree(s->workspace);
    if (s->pinned)
        (void)cudaFreeHost(s->pinned);
    (void)cudaGetLastError();
    delete s;
}

static int stream_new(ds__cuda *c, ds_stream **out, ds_error *err)
{
    (void)c;
    *out = NULL;
    ds_stream *s = new (std::nothrow) ds_stream();
    if (!s)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "CUDA stream: out of memory");
    int rc;
    cudaError_t e = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        s->stream = NULL;
        rc = ds__cuda_error(err, e, "cudaStreamCreateWithFlags(cudaStreamNonBlocking)", __FILE__,
                            __LINE__);
        goto fail;
    }
    e = cudaMallocHost(&s->pinned, 16);
    if (e != cudaSuccess) {
        s->pinned = NULL;
        rc = ds__cuda_error(err, e, "cudaMallocHost(16)", __FILE__, __LINE__);
        goto fail;
    }
    *out = s;
    return DS_OK;
fail:
    stream_release(c, s);
    return rc;
}

static int cuda_stream_create(ds_backend *b, ds_stream **out, ds_error *err)
{
    *out = NULL;
    DS_CUDA_CHECK(cudaSetDevice(ds__cuda_of(b)->device));
    return stream_new(ds__cuda_of(b), out, err);
}

static void cuda_stream_destroy(ds_backend *b, ds_stream *s)
{
    ds__cuda *c = ds__cuda_of(b);
    if (!s || s == c->default_stream)
        return;
    (void)cudaSetDevice(c->device);
    stream_release(c, s);
}

static int cuda_stream_synchronize(ds_backend *b, ds_stream *s, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    DS_CUDA_CHECK(cudaStreamSynchronize(st->stream));
    return DS_OK;
}

static int cuda_event_create(ds_backend *b, ds_event **out, ds_error *err)
{
    *out = NULL;
    DS_CUDA_CHECK(cudaSetDevice(ds__cuda_of(b)->device));
    ds_event *e = new (std::nothrow) ds_event();
    if (!e)
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "CUDA event: out of memory");
    /* The interface has no timing queries, and timing-free events are cheaper to record and
     * wait on. */
    cudaError_t ce = cudaEventCreateWithFlags(&e->event, cudaEventDisableTiming);
    if (ce != cudaSuccess) {
        delete e;
        return ds__cuda_error(err, ce, "cudaEventCreateWithFlags(cudaEventDisableTiming)", __FILE__,
                              __LINE__);
    }
    *out = e;
    return DS_OK;
}

static void cuda_event_destroy(ds_backend *b, ds_event *e)
{
    if (!e)
        return;
    (void)cudaSetDevice(ds__cuda_of(b)->device);
    (void)cudaEventDestroy(e->event);
    (void)cudaGetLastError();
    delete e;
}

static int cuda_event_record(ds_backend *b, ds_event *e, ds_stream *s, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    DS_CUDA_CHECK(cudaEventRecord(e->event, st->stream));
    return DS_OK;
}

static int cuda_stream_wait_event(ds_backend *b, ds_stream *s, ds_event *e, ds_error *err)
{
    ds_stream *st = NULL;
    DS_TRY(ds__cuda_enter(b, s, &st, err));
    DS_CUDA_CHECK(cudaStreamWaitEvent(st->stream, e->event, 0));
    return DS_OK;
}

static int cuda_event_synchronize(ds_backend *b, ds_event *e, ds_error *err)
{
    DS_CUDA_CHECK(cudaSetDevice(ds__cuda_of(b)->device));
    DS_CUDA_CHECK(cudaEventSynchronize(e->event));
    return DS_OK;
}

/* ---- supports ---- */

/* The answer is host logic shared with the tests (cuda_supports.c): nothing in it depends on
 * the device. */
static int cuda_supports(const ds_backend *b, ds_op op, const void *args)
{
    (void)b;
    return ds__cuda_supports(op, args);
}

/* ---- Creation and destruction ---- */

static void cuda_destroy(ds_backend *b)
{
    if (!b)
        return;
    ds__cuda *c = ds__cuda_of(b);
    if (c) {
        (void)cudaSetDevice(c->device);
        stream_release(c, c->default_stream);
        ds__cuda_gemm_cache_destroy(c);
        if (c->lt)
            (void)cublasLtDestroy(c->lt);
        (void)cudaGetLastError();
        free(c);
    }
    free(b);
}

static int unavailable(ds_error *err, int device, const char *what, cudaError_t e)
{
    (void)cudaGetLastError();
    return ds_error_set(err, DS_ERR_UNAVAILABLE, "CUDA device %d: %s: %s (%s)", device, what,
                        cudaGetErrorString(e), cudaGetErrorName(e));
}

int ds_cuda_backend_create(int device, ds_backend **out, ds_error *err)
{
    *out = NULL;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess)
        return unavailable(err, device, "cudaGetDeviceCount", e);
    if (device < 0 || device >= count)
        return ds_error_set(err, DS_ERR_UNAVAILABLE, "CUDA device %d: the machine has %d device%s",
                            device, count, count == 1 ? "" : "s");
    e = cudaSetDevice(device);
    if (e != cudaSuccess)
        return unavailable(err, device, "cudaSetDevice", e);
    /* This build carries sm_90 code and compute_90 PTX: on an older GPU no kernel can load,
     * and the runtime says so when asked about one. */
    cudaFuncAttributes probe;
    e = cudaFuncGetAttributes(&probe, ds__cuda_probe_kernel());
    if (e != cudaSuccess)
        return unavailable(err, device, "this build's kernels (sm_90 + PTX) cannot run here", e);

    int rc = DS_OK;
    ds_backend *b = (ds_backend *)calloc(1, sizeof *b);
    ds__cuda *c = (ds__cuda *)calloc(1, sizeof *c);
    if (!b || !c) {
        free(b);
        free(c);
        return ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "CUDA backend: out of memory");
    }
    b->impl = c;
    c->device = device;
    {
        int pools = 0;
        const char *fp8 = getenv("DS_CUDA_FP8_COMPUTE");
        e = cudaDeviceGetAttribute(&c->cc_major, cudaDevAttrComputeCapabilityMajor, device);
        if (e == cudaSuccess)
            e = cudaDeviceGetAttribute(&c->cc_minor, cudaDevAttrComputeCapabilityMinor, device);
        if (e == cudaSuccess)
            e = cudaDeviceGetAttribute(&c->sm_count, cudaDevAttrMultiProcessorCount, device);
        if (e == cudaSuccess)
            e = cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device);
        if (e != cudaSuccess) {
            rc = ds__cuda_error(err, e, "cudaDeviceGetAttribute", __FILE__, __LINE__);
            goto fail;
        }
        c->mem_pools = pools != 0;
        c->fp8_compute = fp8 && strcmp(fp8, "1") == 0 &&
                         (c->cc_major * 10 + c->cc_minor) >= 89;
    }
    {
        cublasStatus_t st = cublasLtCreate(&c->lt);
        if (st != CUBLAS_STATUS_SUCCESS) {
            c->lt = NULL;
            rc = ds__cublas_error(err, st, "cublasLtCreate", __FILE__, __LINE__);
            goto fail;
        }
    }
    rc = stream_new(c, &c->default_stream, err);
    if (rc != DS_OK)
        goto fail;
    rc = ds__cuda_gemm_cache_create(c, err);
    if (rc != DS_OK)
        goto fail;
    rc = ds__cuda_attention_init(c, err);
    if (rc != DS_OK)
        goto fail;

    b->name = "cuda";
    b->host_memory = 0;
    b->alloc = cuda_alloc;
    b->free = cuda_free;
    b->alloc_pinned = cuda_alloc_pinned;
    b->free_pinned = cuda_free_pinned;
    b->copy_to_device = cuda_copy_to_device;
    b->copy_to_host = cuda_copy_to_host;
    b->copy_device = cuda_copy_device;
    b->fill32 = cuda_fill32;
    b->stream_create = cuda_stream_create;
    b->stream_destroy = cuda_stream_destroy;
    b->stream_synchronize = cuda_stream_synchronize;
    b->event_create = cuda_event_create;
    b->event_destroy = cuda_event_destroy;
    b->event_record = cuda_event_record;
    b->stream_wait_event = cuda_stream_wait_event;
    b->mem_info = cuda_mem_info;
    b->event_synchronize = cuda_event_synchronize;
    b->supports = cuda_supports;

    b->linear = ds__cuda_linear;
    b->batched_matmul = ds__cuda_batched_matmul;
    b->attention = ds__cuda_attention;
    b->layer_norm = ds__cuda_layer_norm;
    b->rms_norm = ds__cuda_rms_norm;
    b->group_norm = ds__cuda_group_norm;
    b->channel_rms_norm = ds__cuda_channel_rms_norm;
    b->softmax = ds__cuda_softmax;
    b->activation = ds__cuda_activation;
    b->rope = ds__cuda_rope;
    b->timestep_embedding = ds__cuda_timestep_embedding;
    b->binary = ds__cuda_binary;
    b->modulate = ds__cuda_modulate;
    b->gated_residual = ds__cuda_gated_residual;
    b->scale = ds__cuda_scale;
    b->clamp = ds__cuda_clamp;
    b->concat = ds__cuda_concat;
    b->slice = ds__cuda_slice;
    b->permute = ds__cuda_permute;
    b->patchify = ds__cuda_patchify;
    b->unpatchify = ds__cuda_unpatchify;
    b->pad = ds__cuda_pad;
    b->upsample_nearest2x = ds__cuda_upsample_nearest2x;
    b->embedding = ds__cuda_embedding;
    b->conv2d = ds__cuda_conv2d;
    b->conv3d_causal = ds__cuda_conv3d_causal;
    b->cast = ds__cuda_cast;
    b->destroy = cuda_destroy;
    *out = b;
    return DS_OK;
fail:
    cuda_destroy(b);
    return rc;
}
