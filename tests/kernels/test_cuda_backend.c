/* The CUDA backend's own machinery, beyond what the op tests cover: stream and event ordering,
 * pinned memory round trips, fill32 at odd sizes and offsets, errors returned as values (an
 * impossible allocation), `supports` answers and the CPU fallback they lead to, the flash
 * attention kernel's edge cases in bf16/f16 and the matmul form's (other head dims, f32), the
 * GEMM fallback chain with cuBLASLt's answers forced, the embedding error, and the opt-in fp8
 * tensor-core path. Runs only with --backend cuda (exit 77 otherwise, or without a usable
 * GPU). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernel_test.h"
#include "kernels/cuda/cuda_gemm_chain.h"
#include "test.h"

static void test_streams_and_events(void)
{
    ds_backend *b = kt.backend;
    ds_error err;
    const size_t n = (size_t)1 << 22; /* 16 MiB: the copy takes long enough to race */
    ds_stream *sa = NULL, *sb = NULL;
    ds_event *ev = NULL;
    float *host_in = NULL, *host_out = NULL;
    int64_t shape[1] = {(int64_t)n};
    ds_tensor x, y;
    memset(&x, 0, sizeof x);
    memset(&y, 0, sizeof y);
    REQUIRE(b->stream_create(b, &sa, &err) == DS_OK);
    REQUIRE(b->stream_create(b, &sb, &err) == DS_OK);
    REQUIRE(b->event_create(b, &ev, &err) == DS_OK);
    REQUIRE(b->alloc_pinned(b, n * sizeof(float), (void **)&host_in, &err) == DS_OK);
    REQUIRE(b->alloc_pinned(b, n * sizeof(float), (void **)&host_out, &err) == DS_OK);
    REQUIRE(ds_tensor_alloc(b, DS_F32, 1, shape, &x, &err) == DS_OK);
    REQUIRE(ds_tensor_alloc(b, DS_F32, 1, shape, &y, &err) == DS_OK);
    for (size_t i = 0; i < n; i++)
        host_in[i] = (float)(i % 4096) * 0.5f;
    /* x holds NaNs until the copy lands: a scale that ran early would show them. */
    CHECK(b->fill32(b, x.data, 0xFFFFFFFFu, n * sizeof(float), sa, &err) == DS_OK);
    CHECK(b->copy_to_device(b, x.data, host_in, n * sizeof(float), sa, &err) == DS_OK);
    CHECK(b->event_record(b, ev, sa, &err) == DS_OK);
    CHECK(b->stream_wait_event(b, sb, ev, &err) == DS_OK);
    ds_scale_args a = {&x, 2.0f, 1.0f, &y};
    CHECK_MSG(ds_scale(b, sb, &a, &err) == DS_OK, "%s", err.message);
    CHECK(b->copy_to_host(b, host_out, y.data, n * sizeof(float), sb, &err) == DS_OK);
    CHECK(b->stream_synchronize(b, sb, &err) == DS_OK);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += host_out[i] != (float)(i % 4096) + 1.0f;
    CHECK_MSG(bad == 0, "%zu of %zu elements wrong after the event wait", bad, n);
    CHECK(b->event_synchronize(b, ev, &err) == DS_OK);
    ds_tensor_free(&x);
    ds_tensor_free(&y);
    b->free_pinned(b, host_in);
    b->free_pinned(b, host_out);
    b->event_destroy(b, ev);
    b->stream_destroy(b, sa);
    b->stream_destroy(b, sb);
}

static void test_pinned_round_trip_and_fill(void)
{
    ds_backend *b = kt.backend;
    ds_error err;
    const size_t bytes = 1000003; /* odd: no 16-byte tail */
    unsigned char *in = NULL, *out = NULL;
    void *d1 = NULL, *d2 = NULL;
    ds_stream *s = NULL;
    REQUIRE(b->stream_create(b, &s, &err) == DS_OK);
    REQUIRE(b->alloc_pinned(b, bytes, (void **)&in, &err) == DS_OK);
    REQUIRE(b->alloc_pinned(b, bytes, (void **)&out, &err) == DS_OK);
    REQUIRE(b->alloc(b, bytes, &d1, &err) == DS_OK);
    REQUIRE(b->alloc(b, bytes, &d2, &err) == DS_OK);
    for (size_t i = 0; i < bytes; i++)
        in[i] = (unsigned char)(i * 131 + 7);
    CHECK(b->copy_to_device(b, d1, in, bytes, s, &err) == DS_OK);
    CHECK(b->copy_device(b, d2, d1, bytes, s, &err) == DS_OK);
    CHECK(b->copy_to_host(b, out, d2, bytes, s, &err) == DS_OK);
    CHECK(b->stream_synchronize(b, s, &err) == DS_OK);
    CHECK(memcmp(in, out, bytes) == 0);

    /* fill32 from an odd offset for an odd length: the pattern's bytes run from dst. */
    CHECK(b->fill32(b, (char *)d2 + 3, 0x44332211u, 1001, s, &err) == DS_OK);
    CHECK(b->copy_to_host(b, out, d2, bytes, s, &err) == DS_OK);
    CHECK(b->stream_synchronize(b, s, &err) == DS_OK);
    size_t bad = 0;
    for (size_t i = 0; i < bytes; i++) {
        unsigned char want = (i >= 3 && i < 1004) ? (unsigned char)(0x11 + 0x11 * ((i - 3) % 4)) : in[i];
        bad += out[i] != want;
    }
    CHECK_MSG(bad == 0, "%zu bytes wrong after fill32", bad);
    /* And an aligned fill of a large buffer (the 16-byte path). */
    CHECK(b->fill32(b, d1, 0xA5A5A5A5u, bytes - 3, NULL, &err) == DS_OK);
    CHECK(b->copy_to_host(b, out, d1, bytes, NULL, &err) == DS_OK);
    CHECK(b->stream_synchronize(b, NULL, &err) == DS_OK);
    bad = 0;
    for (size_t i = 0; i < bytes; i++)
        bad += out[i] != (i < bytes - 3 ? 0xA5 : in[i]);
    CHECK_MSG(bad == 0, "%zu bytes wrong after the aligned fill32", bad);
    b->free(b, d1);
    b->free(b, d2);
    b->free_pinned(b, in);
    b->free_pinned(b, out);
    b->stream_destroy(b, s);
}

static void test_allocation_error_is_a_value(void)
{
    ds_backend *b = kt.backend;
    ds_error err;
    memset(&err, 0, sizeof err);
    void *p = (void *)1;
    int rc = b->alloc(b, (size_t)1 << 50, &p, &err);
    CHECK(rc == DS_ERR_RESOURCE_EXHAUSTED);
    CHECK(p == NULL);
    CHECK_CONTAINS(err.message, "cudaMalloc");
    CHECK_CONTAINS(err.message, "cudaErrorMemoryAllocation");
    /* The backend keeps working: allocate, compute, read back. */
    int64_t shape[1] = {33};
    double *v = kt_randn(33, 1.0);
    ds_tensor x, y;
    REQUIRE(kt_tensor(DS_F32, 1, shape, v, &x) && kt_tensor(DS_F32, 1, shape, NULL, &y));
    ds_scale_args a = {&x, -1.0f, 0.0f, &y};
    CHECK_MSG(ds_scale(b, NULL, &a, &err) == DS_OK, "%s", err.message);
    double *got = kt_read(&y);
    for (int i = 0; i < 33; i++)
        v[i] = -v[i];
    CHECK(kt_compare("scale after a failed allocation", got, v, 33, 0));
    free(got);
    free(v);
    ds_tensor_free(&x);
    ds_tensor_free(&y);
}

/* ---- Attention: float64 reference with its own loops ---- */

typedef struct att {
    int64_t batch, sq, sk, hq, hkv, d;
    int causal;
    int mask; /* 0 none, 1 random, 2 random and the last batch item fully masked, 3 all ones
               * over the first half of the keys (whole key tiles need no mask) and random
               * after */
    ds_dtype dtype;
} att;

static void att_reference(const att *c, const double *q, const double *k, const double *v,
                          const double *mask, double scale, double *out)
{
    double *w = malloc((size_t)(c->sk ? c->sk : 1) * sizeof *w);
    int64_t group = c->hq / c->hkv;
    for (int64_t b = 0; b < c->batch; b++)
        for (int64_t i = 0; i < c->sq; i++)
            for (int64_t h = 0; h < c->hq; h++) {
                const double *qi = q + ((b * c->sq + i) * c->hq + h) * c->d;
                double *o = out + ((b * c->sq + i) * c->hq + h) * c->d;
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < c->sk; j++) {
                    int seen = (!mask || mask[b * c->sk + j] != 0) &&
                               (!c->causal || j <= i + (c->sk - c->sq));
                    const double *kj = k + ((b * c->sk + j) * c->hkv + h / group) * c->d;
                    double dot = 0;
                    for (int64_t e = 0; e < c->d; e++)
                        dot += qi[e] * kj[e];
                    w[j] = seen ? dot * scale : -INFINITY;
                    mx = w[j] > mx ? w[j] : mx;
                }
                for (int64_t e = 0; e < c->d; e++)
                    o[e] = 0;
                if (mx == -INFINITY)
                    continue;
                for (int64_t j = 0; j < c->sk; j++)
                    sum += (w[j] = exp(w[j] - mx));
                for (int64_t j = 0; j < c->sk; j++) {
                    const double *vj = v + ((b * c->sk + j) * c->hkv + h / group) * c->d;
                    for (int64_t e = 0; e < c->d; e++)
                        o[e] += w[j] / sum * vj[e];
                }
            }
    free(w);
}

static void att_run(const att *c)
{
    int64_t qs[4] = {c->batch, c->sq, c->hq, c->d}, ks[4] = {c->batch, c->sk, c->hkv, c->d};
    int64_t ms[2] = {c->batch, c->sk};
    size_t nq = (size_t)(c->batch * c->sq * c->hq * c->d), nk = (size_t)(c->batch * c->sk * c->hkv * c->d);
    double *q = kt_randn(nq, 1.0), *k = kt_randn(nk, 1.0), *v = kt_randn(nk, 1.0), *mask = NULL;
    ds_tensor tq, tk, tv, tm, to;
    memset(&tm, 0, sizeof tm);
    int ok = kt_tensor(c->dtype, 4, qs, q, &tq) && kt_tensor(c->dtype, 4, ks, k, &tk) &&
             kt_tensor(c->dtype, 4, ks, v, &tv) && kt_tensor(c->dtype, 4, qs, NULL, &to);
    if (ok && c->mask) {
        mask = kt_uniform((size_t)(c->batch * c->sk), 0, 1);
        for (int64_t i = 0; i < c->batch * c->sk; i++)
            mask[i] = (c->mask == 2 && i / c->sk == c->batch - 1) ? 0
                      : (c->mask == 3 && i % c->sk < c->sk / 2) ? 1
                                                                : (mask[i] < 0.6 ? 1 : 0);
        ok = kt_tensor(DS_U8, 2, ms, mask, &tm);
    }
    CHECK(ok);
    if (ok) {
        double scale = 1.0 / sqrt((double)c->d);
        ds_attention_args a = {&tq, &tk, &tv, c->mask ? &tm : NULL, (float)scale, c->causal, &to};
        CHECK(kt.backend->supports(kt.backend, DS_OP_ATTENTION, &a));
        ds_error err;
        int rc = ds_attention(kt.backend, NULL, &a, &err);
        CHECK_MSG(rc == DS_OK, "%s", err.message);
        double *ref = malloc(nq * sizeof *ref);
        att_reference(c, q, k, v, mask, (double)(float)scale, ref);
        double *got = kt_read(&to);
        char what[160];
        snprintf(what, sizeof what, "attention B%lld Sq%lld Sk%lld Hq%lld Hkv%lld D%lld causal %d "
                 "mask %d %s", (long long)c->batch, (long long)c->sq, (long long)c->sk,
                 (long long)c->hq, (long long)c->hkv, (long long)c->d, c->causal, c->mask,
                 ds_dtype_name(c->dtype));
        CHECK(kt_compare(what, got, ref, nq, kt_budget(c->dtype)));
        /* Rows that see no key are exact zeros. */
        if (c->mask == 2) {
            size_t first = (size_t)((c->batch - 1) * c->sq * c->hq * c->d), zeros = 0;
            for (size_t i = first; i < nq; i++)
                zeros += got[i] == 0.0;
            CHECK_MSG(zeros == nq - first, "%zu of %zu fully masked outputs are zero", zeros,
                      nq - first);
        }
        free(got);
        free(ref);
    }
    ds_tensor_free(&tq);
    ds_tensor_free(&tk);
    ds_tensor_free(&tv);
    ds_tensor_free(&tm);
    ds_tensor_free(&to);
    free(q);
    free(k);
    free(v);
    free(mask);
}

static void test_attention_kernel(void)
{
    const ds_dtype dts[] = {DS_BF16, DS_F16};
    for (int i = 0; i < 2; i++) {
        /* Grouped heads, causal, key mask with one batch item fully masked, lengths that cut
         * the 64-row query and key blocks. */
        att a = {2, 200, 200, 8, 2, 128, 1, 2, dts[i]};
        att_run(&a);
        /* Causal with Sq < Sk (aligned at the end) and Sq > Sk (the first rows see nothing). */
        att b = {1, 70, 131, 4, 4, 64, 1, 0, dts[i]};
        att_run(&b);
        att c = {1, 131, 70, 4, 1, 64, 1, 0, dts[i]};
        att_run(&c);
        /* One query, many key tiles; a single key. */
        att d = {3, 1, 517, 2, 1, 128, 0, 1, dts[i]};
        att_run(&d);
        att e = {1, 65, 1, 2, 2, 64, 0, 0, dts[i]};
        att_run(&e);
        /* Masks whose first key tiles are all ones (those tiles skip the per-score mask),
         * without and with causality. */
        att f = {2, 100, 300, 4, 2, 128, 0, 3, dts[i]};
        att_run(&f);
        att g = {1, 64, 256, 2, 2, 64, 1, 3, dts[i]};
        att_run(&g);
    }
}

/* The matmul form (cuda_attention.cu): head dims the flash kernel lacks, f32, a misaligned
 * tensor, an f32 output from 16-bit inputs. */
static void test_attention_matmul_form(void)
{
    /* The VAE's one 384-wide head, over positions that cut no tile evenly. */
    att vae = {1, 300, 300, 1, 1, 384, 0, 0, DS_BF16};
    att_run(&vae);
    const ds_dtype dts[] = {DS_BF16, DS_F16, DS_F32};
    for (int i = 0; i < 3; i++) {
        att a = {2, 70, 90, 4, 2, 96, 1, 2, dts[i]};
        att_run(&a);
        att b = {1, 131, 70, 2, 1, 40, 1, 1, dts[i]};
        att_run(&b);
    }
    att g = {2, 50, 77, 8, 2, 64, 0, 1, DS_F32};
    att_run(&g);
}

/* ---- The GEMM fallback chain, with cuBLASLt's answers forced (cuda_gemm_chain.h) ---- */

/* y = gelu_tanh(x W^T + b) in bf16 with m rows: a GEMM whose bias and GELU fuse into
 * cuBLASLt's epilogue when it has an algorithm. Returns the forms used since the reset. */
static void linear_with_forced_answers(int64_t m, int lookup_status, int matmul_status,
                                       ds__gemm_stats *stats)
{
    const int64_t k = 64, n = 48;
    int64_t xs[2] = {m, k}, ws[2] = {n, k}, bs[1] = {n}, ys[2] = {m, n};
    double *xv = kt_randn((size_t)(m * k), 1.0), *wv = kt_randn((size_t)(n * k), 0.125),
           *bv = kt_randn((size_t)n, 0.5);
    ds_tensor x, w, bias, y;
    REQUIRE(kt_tensor(DS_BF16, 2, xs, xv, &x) && kt_tensor(DS_BF16, 2, ws, wv, &w) &&
            kt_tensor(DS_BF16, 1, bs, bv, &bias) && kt_tensor(DS_BF16, 2, ys, NULL, &y));
    ds__gemm_test_force(lookup_status, matmul_status);
    ds_linear_args a = {&x, &w, &bias, 1.0f, DS_ACT_GELU_TANH, &y};
    ds_error err;
    int rc = ds_linear(kt.backend, NULL, &a, &err);
    ds__gemm_test_force(-1, 0);
    CHECK_MSG(rc == DS_OK, "lookup %d, matmul %d: %s", lookup_status, matmul_status, err.message);
    double *ref = malloc((size_t)(m * n) * sizeof *ref);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = bv[j];
            for (int64_t l = 0; l < k; l++)
                acc += xv[i * k + l] * wv[j * k + l];
            ref[i * n + j] = 0.5 * acc * (1.0 + tanh(0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)));
        }
    double *got = kt_read(&y);
    char what[96];
    snprintf(what, sizeof what, "linear m %lld, lookup forced to %d, matmul to %d", (long long)m,
             lookup_status, matmul_status);
    CHECK(kt_compare(what, got, ref, (size_t)(m * n), kt_budget(DS_BF16)));
    ds__gemm_stats_get(stats);
    free(got);
    free(ref);
    free(xv);
    free(wv);
    free(bv);
    ds_tensor_free(&x);
    ds_tensor_free(&w);
    ds_tensor_free(&bias);
    ds_tensor_free(&y);
}

static void test_gemm_fallback_chain(void)
{
    /* cublasStatus_t: NOT_SUPPORTED, INVALID_VALUE, ARCH_MISMATCH, EXECUTION_FAILED,
     * INTERNAL_ERROR. Each case has its own m, so no earlier answer is cached. */
    static const int statuses[] = {15, 7, 8, 13, 14};
    ds__gemm_stats st;
    for (int i = 0; i < 5; i++) {
        int64_t m = 33 + i;
        ds__gemm_stats_reset();
        linear_with_forced_answers(m, statuses[i], 0, &st);
        CHECK_MSG(st.lookups == 2 && st.used[DS_GEMM_FORM_PLAIN] == 1,
                  "lookup status %d: %llu lookups, plain kernel used %llu times", statuses[i],
                  (unsigned long long)st.lookups, (unsigned long long)st.used[DS_GEMM_FORM_PLAIN]);
        /* Cached: no lookup the second time, whatever cuBLASLt would say now. */
        linear_with_forced_answers(m, -1, 0, &st);
        CHECK_MSG(st.lookups == 2 && st.used[DS_GEMM_FORM_PLAIN] == 2,
                  "lookup status %d, second call: %llu lookups, plain kernel used %llu times",
                  statuses[i], (unsigned long long)st.lookups,
                  (unsigned long long)st.used[DS_GEMM_FORM_PLAIN]);
    }
    /* A cublasLtMatmul that fails: unfused, then plain, both remembered. */
    ds__gemm_stats_reset();
    linear_with_forced_answers(41, -1, 13, &st);
    CHECK(st.matmul_failures == 2 && st.used[DS_GEMM_FORM_PLAIN] == 1);
    linear_with_forced_answers(41, -1, 0, &st);
    CHECK(st.matmul_failures == 2 && st.used[DS_GEMM_FORM_PLAIN] == 2 && st.lookups == 2);
    /* Nothing forced: cuBLASLt runs it. */
    ds__gemm_stats_reset();
    linear_with_forced_answers(64, -1, 0, &st);
    CHECK_MSG(st.used[DS_GEMM_FORM_PLAIN] == 0, "an aligned bf16 GEMM took the plain kernel");
}

/* ---- supports and the CPU fallback ---- */

static void test_supports_and_fallback(void)
{
    ds_backend *b = kt.backend;
    int64_t qs[4] = {1, 9, 2, 96}, qs128[4] = {1, 9, 2, 128};
    ds_tensor q, q128, out, out128;
    REQUIRE(kt_tensor(DS_BF16, 4, qs, NULL, &q) && kt_tensor(DS_BF16, 4, qs, NULL, &out));
    REQUIRE(kt_tensor(DS_BF16, 4, qs128, NULL, &q128) && kt_tensor(DS_BF16, 4, qs128, NULL, &out128));
    ds_attention_args a96 = {&q, &q, &q, NULL, 0.1f, 0, &out};
    ds_attention_args a128 = {&q128, &q128, &q128, NULL, 0.1f, 0, &out128};
    ds_attention_args mixed = {&q, &q, &q, NULL, 0.1f, 0, &out};
    ds_tensor q32 = q;
    q32.dtype = DS_F32; /* only the dtype is asked */
    mixed.k = &q32;
    CHECK(b->supports(b, DS_OP_ATTENTION, &a96));
    CHECK(b->supports(b, DS_OP_ATTENTION, &a128));
    CHECK(!b->supports(b, DS_OP_ATTENTION, &mixed));
    CHECK(b->supports(b, DS_OP_ATTENTION, NULL));
    ds_tensor_free(&q);
    ds_tensor_free(&out);
    ds_tensor_free(&q128);
    ds_tensor_free(&out128);

    /* f32 attention with a 96-wide head runs on the GPU in the matmul form. */
    att f = {1, 37, 45, 2, 1, 96, 1, 1, DS_F32};
    {
        int64_t qsh[4] = {f.batch, f.sq, f.hq, f.d}, ksh[4] = {f.batch, f.sk, f.hkv, f.d};
        size_t nq = (size_t)(f.sq * f.hq * f.d), nk = (size_t)(f.sk * f.hkv * f.d);
        double *qv = kt_randn(nq, 1.0), *kv = kt_randn(nk, 1.0), *vv = kt_randn(nk, 1.0);
        double *mv = kt_uniform((size_t)f.sk, 0, 1);
        for (int64_t i = 0; i < f.sk; i++)
            mv[i] = mv[i] < 0.5;
        int64_t msh[2] = {1, f.sk};
        ds_tensor tq, tk, tv, tm, to;
        REQUIRE(kt_tensor(DS_F32, 4, qsh, qv, &tq) && kt_tensor(DS_F32, 4, ksh, kv, &tk) &&
                kt_tensor(DS_F32, 4, ksh, vv, &tv) && kt_tensor(DS_U8, 2, msh, mv, &tm) &&
                kt_tensor(DS_F32, 4, qsh, NULL, &to));
        ds_error err;
        ds_attention_args a = {&tq, &tk, &tv, &tm, 0.125f, 1, &to};
        CHECK(b->supports(b, DS_OP_ATTENTION, &a));
        CHECK_MSG(ds_attention(b, NULL, &a, &err) == DS_OK, "%s", err.message);
        double *ref = malloc(nq * sizeof *ref), *got = kt_read(&to);
        att_reference(&f, qv, kv, vv, mv, 0.125, ref);
        CHECK(kt_compare("attention f32 D96 in the matmul form", got, ref, nq, 2e-5));
        free(ref);
        free(got);
        free(qv);
        free(kv);
        free(vv);
        free(mv);
        ds_tensor_free(&tq);
        ds_tensor_free(&tk);
        ds_tensor_free(&tv);
        ds_tensor_free(&tm);
        ds_tensor_free(&to);
    }

    /* conv2d with an f32 weight and a bf16 output: cuBLASLt cannot write bf16 from f32
     * inputs, so supports says no and the CPU computes it. */
    {
        int64_t xs[4] = {1, 3, 5, 6}, ws[4] = {4, 3, 3, 3}, ys[4] = {1, 4, 5, 6};
        double *xv = kt_randn(90, 1.0), *wv = kt_randn(108, 0.3);
        ds_tensor x, w, y;
        REQUIRE(kt_tensor(DS_F32, 4, xs, xv, &x) && kt_tensor(DS_F32, 4, ws, wv, &w) &&
                kt_tensor(DS_BF16, 4, ys, NULL, &y));
        ds_conv2d_args a = {&x, &w, NULL, {1, 1, 1, 1}, {1, 1}, &y};
        CHECK(!b->supports(b, DS_OP_CONV2D, &a));
        ds_error err;
        CHECK_MSG(ds_conv2d(b, NULL, &a, &err) == DS_OK, "%s", err.message);
        double ref[120];
        for (int co = 0; co < 4; co++)
            for (int oh = 0; oh < 5; oh++)
                for (int ow = 0; ow < 6; ow++) {
                    double acc = 0;
                    for (int ci = 0; ci < 3; ci++)
                        for (int kh = 0; kh < 3; kh++)
                            for (int kw = 0; kw < 3; kw++) {
                                int ih = oh - 1 + kh, iw = ow - 1 + kw;
                                if (ih >= 0 && ih < 5 && iw >= 0 && iw < 6)
                                    acc += xv[(ci * 5 + ih) * 6 + iw] * wv[((co * 3 + ci) * 3 + kh) * 3 + kw];
                            }
                    ref[(co * 5 + oh) * 6 + ow] = acc;
                }
        double *got = kt_read(&y);
        CHECK(kt_compare("conv2d f32 -> bf16 through the CPU fallback", got, ref, 120,
                         kt_budget(DS_BF16)));
        free(got);
        free(xv);
        free(wv);
        ds_tensor_free(&x);
        ds_tensor_free(&w);
        ds_tensor_free(&y);
    }
}

/* ---- Embedding: the bad position comes back from the call ---- */

static void test_embedding_error(void)
{
    int64_t ids_shape[2] = {3, 4}, table_shape[2] = {10, 16}, ys[3] = {3, 4, 16};
    double idv[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 2};
    idv[9] = 10; /* [2, 1]: one past the end */
    idv[11] = -4; /* [2, 3]: later, so not the one reported */
    double *tv = kt_randn(160, 1.0);
    ds_tensor ids, table, y;
    REQUIRE(kt_tensor(DS_I64, 2, ids_shape, idv, &ids) && kt_tensor(DS_BF16, 2, table_shape, tv, &table) &&
            kt_tensor(DS_BF16, 3, ys, NULL, &y));
    ds_error err;
    memset(&err, 0, sizeof err);
    ds_embedding_args a = {&ids, &table, &y};
    CHECK(ds_embedding(kt.backend, NULL, &a, &err) == DS_ERR_INVALID_ARGUMENT);
    CHECK_CONTAINS(err.message, "ids[2, 1] is 10,");
    free(tv);
    ds_tensor_free(&ids);
    ds_tensor_free(&table);
    ds_tensor_free(&y);
}

/* ---- fp8 tensor-core linear (opt-in) ---- */

static int upload(ds_backend *b, ds_dtype dt, int nd, const int64_t *shape, double *v, ds_tensor *t)
{
    ds_error err;
    if (ds_tensor_alloc(b, dt, nd, shape, t, &err) != DS_OK)
        return 0;
    size_t n = (size_t)ds_tensor_numel(t);
    unsigned char *host = malloc(ds_tensor_nbytes(t) + 1);
    for (size_t i = 0; v && i < n; i++) {
        ds_store_f64(host, dt, i, v[i]);
        v[i] = ds_load_f64(host, dt, i);
    }
    int ok = !v || ds_tensor_upload(t, host, NULL, &err) == DS_OK;
    free(host);
    return ok;
}

static void test_fp8_compute_opt_in(void)
{
    setenv("DS_CUDA_FP8_COMPUTE", "1", 1);
    ds_backend *b = NULL;
    ds_error err;
    int rc = ds_cuda_backend_create(0, &b, &err);
    unsetenv("DS_CUDA_FP8_COMPUTE");
    REQUIRE(rc == DS_OK);
    const int64_t m = 96, k = 256, n = 160;
    int64_t xs[2] = {m, k}, ws[2] = {n, k}, bs[1] = {n}, ys[2] = {m, n};
    double *xv = kt_randn((size_t)(m * k), 1.0), *wv = kt_randn((size_t)(n * k), 4.0);
    double *bv = kt_randn((size_t)n, 0.5);
    ds_tensor x, w, bias, y;
    memset(&y, 0, sizeof y);
    int ok = upload(b, DS_BF16, 2, xs, xv, &x) && upload(b, DS_F8_E4M3, 2, ws, wv, &w) &&
             upload(b, DS_BF16, 1, bs, bv, &bias) && upload(b, DS_BF16, 2, ys, NULL, &y);
    CHECK(ok);
    if (ok) {
        ds_linear_args a = {&x, &w, &bias, 0.25f, DS_ACT_SILU, &y};
        CHECK_MSG(ds_linear(b, NULL, &a, &err) == DS_OK, "%s", err.message);
        double *ref = malloc((size_t)(m * n) * sizeof *ref);
        for (int64_t r = 0; r < m; r++)
            for (int64_t c = 0; c < n; c++) {
                double acc = 0;
                for (int64_t i = 0; i < k; i++)
                    acc += xv[r * k + i] * wv[c * k + i] * 0.25;
                acc += bv[c];
                ref[r * n + c] = acc / (1.0 + exp(-acc));
            }
        unsigned char *host = malloc((size_t)(m * n) * 2);
        double *got = malloc((size_t)(m * n) * sizeof *got);
        CHECK(ds_tensor_download(&y, host, NULL, &err) == DS_OK);
        for (size_t i = 0; i < (size_t)(m * n); i++)
            got[i] = ds_load_f64(host, DS_BF16, i);
        /* Activations quantised to e4m3 (3 mantissa bits): ~3.6% rms relative error each,
         * averaging to about that in the products; kt_budget(e4m3) covers it. */
        CHECK(kt_compare("linear bf16 x e4m3 as an fp8 GEMM", got, ref, (size_t)(m * n),
                         kt_budget(DS_F8_E4M3)));
        free(host);
        free(got);
        free(ref);
    }
    ds_tensor_free(&x);
    ds_tensor_free(&w);
    ds_tensor_free(&bias);
    ds_tensor_free(&y);
    free(xv);
    free(wv);
    free(bv);
    ds_backend_destroy(b);
}

int main(int argc, char **argv)
{
    kt_init(argc, argv);
    if (strcmp(kt.backend_name, "cuda") != 0) {
        fprintf(stderr, "skipped: this test is for --backend cuda\n");
        kt_finish();
        return 77;
    }
    RUN(test_streams_and_events);
    RUN(test_pinned_round_trip_and_fill);
    RUN(test_allocation_error_is_a_value);
    RUN(test_attention_kernel);
    RUN(test_attention_matmul_form);
    RUN(test_gemm_fallback_chain);
    RUN(test_supports_and_fallback);
    RUN(test_embedding_error);
    RUN(test_fp8_compute_opt_in);
    kt_finish();
    return test_summary();
}
