/* Attention against a float64 reference written out plainly: scores for every key, masked,
 * softmax, weighted sum. Covers MHA and grouped-query heads, causal (aligned at the end when
 * Sq != Sk) and not, key masks including a batch row with every key masked, odd lengths that
 * cut the kernel's query and key blocks, head dims 64, 128 and odd ones, every float dtype, a
 * long key sequence that needs many key blocks, and each CPU instruction-set variant. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernel_test.h"
#include "test.h"

typedef struct att_case {
    int64_t batch, sq, sk, hq, hkv, d;
    int causal;
    int mask;       /* 0 none, 1 random keys masked, 2 also every key of the last batch masked */
    ds_dtype dtype; /* q, k, v and out */
    double stddev;  /* of q and k: larger makes the softmax sharper */
} att_case;

static void reference(const att_case *c, const double *q, const double *k, const double *v,
                      const double *mask, double scale, double *out)
{
    double *w = malloc((size_t)(c->sk ? c->sk : 1) * sizeof *w);
    int64_t group = c->hq / c->hkv;
    for (int64_t b = 0; b < c->batch; b++)
        for (int64_t i = 0; i < c->sq; i++)
            for (int64_t h = 0; h < c->hq; h++) {
                const double *qi = q + ((b * c->sq + i) * c->hq + h) * c->d;
                double mx = -INFINITY;
                for (int64_t j = 0; j < c->sk; j++) {
                    int visible = (!mask || mask[b * c->sk + j] != 0) &&
                                  (!c->causal || j <= i + (c->sk - c->sq));
                    const double *kj = k + ((b * c->sk + j) * c->hkv + h / group) * c->d;
                    double dot = 0;
                    for (int64_t e = 0; e < c->d; e++)
                        dot += qi[e] * kj[e];
                    w[j] = visible ? dot * scale : -INFINITY;
                    if (w[j] > mx)
                        mx = w[j];
                }
                double *o = out + ((b * c->sq + i) * c->hq + h) * c->d;
                for (int64_t e = 0; e < c->d; e++)
                    o[e] = 0;
                if (mx == -INFINITY)
                    continue; /* nothing visible: zeros */
                double sum = 0;
                for (int64_t j = 0; j < c->sk; j++) {
                    w[j] = exp(w[j] - mx);
                    sum += w[j];
                }
                for (int64_t j = 0; j < c->sk; j++) {
                    const double *vj = v + ((b * c->sk + j) * c->hkv + h / group) * c->d;
                    for (int64_t e = 0; e < c->d; e++)
                        o[e] += w[j] / sum * vj[e];
                }
            }
    free(w);
}

/* f32 output budget: 2e-5 instead of kt_budget's 1e-5. The reference is exact while the
 * kernel rounds q * scale * log2(e) to f32, sums D products and up to Sk weights in f32 and
 * evaluates 2^x with a polynomial of relative error ~2e-7; measured errors are 1e-6..6e-6 for
 * sharp softmaxes over long rows, so 2e-5 keeps the test tight without flaking. */
static double budget(ds_dtype dt) { return dt == DS_F32 ? 2e-5 : kt_budget(dt); }

static void run_case(const att_case *c)
{
    int64_t qshape[4] = {c->batch, c->sq, c->hq, c->d};
    int64_t kshape[4] = {c->batch, c->sk, c->hkv, c->d};
    int64_t mshape[2] = {c->batch, c->sk};
    size_t nq = (size_t)(c->batch * c->sq * c->hq * c->d), nk = (size_t)(c->batch * c->sk * c->hkv * c->d);
    double *q = kt_randn(nq, c->stddev), *k = kt_randn(nk, c->stddev), *v = kt_randn(nk, 1.0);
    double *mask = NULL;
    ds_tensor tq, tk, tv, tm = {0}, to;
    int ok = kt_tensor(c->dtype, 4, qshape, q, &tq) && kt_tensor(c->dtype, 4, kshape, k, &tk) &&
             kt_tensor(c->dtype, 4, kshape, v, &tv) && kt_tensor(c->dtype, 4, qshape, NULL, &to);
    if (ok && c->mask) {
        mask = kt_uniform((size_t)(c->batch * c->sk), 0, 1);
        for (int64_t i = 0; i < c->batch * c->sk; i++) {
            int last_row = i / c->sk == c->batch - 1;
            mask[i] = (c->mask == 2 && last_row) ? 0 : (mask[i] < 0.7 ? 1 : 0);
        }
        ok = kt_tensor(DS_U8, 2, mshape, mask, &tm);
    }
    CHECK(ok);
    if (ok) {
        double scale = 1.0 / sqrt((double)c->d);
        ds_attention_args a = {.q = &tq, .k = &tk, .v = &tv, .key_mask = c->mask ? &tm : NULL,
                               .scale = (float)scale, .causal = c->causal, .out = &to};
        ds_error err;
        int rc = ds_attention(kt.backend, NULL, &a, &err);
        CHECK_MSG(rc == DS_OK, "%s", err.message);
        if (rc == DS_OK) {
            double *ref = malloc(nq * sizeof *ref);
            reference(c, q, k, v, mask, (double)(float)scale, ref);
            double *got = kt_read(&to);
            char what[160];
            snprintf(what, sizeof what,
                     "attention B%lld Sq%lld Sk%lld Hq%lld Hkv%lld D%lld causal %d mask %d %s",
                     (long long)c->batch, (long long)c->sq, (long long)c->sk, (long long)c->hq,
                     (long long)c->hkv, (long long)c->d, c->causal, c->mask,
                     ds_dtype_name(c->dtype));
            CHECK(kt_compare(what, got, ref, nq, budget(c->dtype)));
            free(got);
            free(ref);
        }
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

static void test_mha_self(void)
{
    const int64_t lens[] = {1, 3, 65, 129, 300};
    for (int i = 0; i < 5; i++) {
        att_case c = {1, lens[i], lens[i], 3, 3, 64, 0, 0, DS_F32, 1.0};
        run_case(&c);
        c.d = 128;
        c.causal = 1;
        run_case(&c);
    }
}

static void test_gqa(void)
{
    /* Qwen2.5-VL's 28 query / 4 kv heads scaled down: a kv index of h % Hkv instead of
     * h / (Hq / Hkv) reads another head's keys. */
    att_case c = {2, 97, 97, 6, 2, 128, 1, 0, DS_F32, 1.0};
    run_case(&c);
    c.causal = 0;
    c.hkv = 1;
    run_case(&c);
    c.hq = 4;
    c.hkv = 4;
    c.d = 64;
    run_case(&c);
}

static void test_causal_cross_lengths(void)
{
    /* Causal aligned at the end: with Sk > Sq every query sees Sk - Sq extra keys; with Sq > Sk
     * the first Sq - Sk queries see nothing and must be zeros. */
    const int64_t pairs[][2] = {{3, 300}, {65, 129}, {129, 65}, {300, 3}, {1, 257}, {200, 1}};
    for (int i = 0; i < 6; i++) {
        att_case c = {1, pairs[i][0], pairs[i][1], 2, 1, 64, 1, 0, DS_F32, 1.0};
        run_case(&c);
        c.causal = 0;
        run_case(&c);
    }
}

static void test_key_mask(void)
{
    /* Padding masks as the text encoder uses them, with the last batch row fully masked
     * (zeros, not NaN), combined with causal and GQA. */
    att_case c = {3, 65, 65, 6, 2, 128, 1, 2, DS_F32, 1.0};
    run_case(&c);
    c.causal = 0;
    c.sk = 300;
    run_case(&c);
    c.mask = 1;
    c.sq = 1;
    c.sk = 1;
    run_case(&c);
}

static void test_dtypes(void)
{
    const ds_dtype dts[] = {DS_BF16, DS_F16};
    for (int i = 0; i < 2; i++) {
        att_case c = {2, 129, 129, 6, 2, 128, 1, 1, dts[i], 1.0};
        run_case(&c);
        att_case d = {1, 33, 300, 4, 4, 64, 0, 0, dts[i], 1.0};
        run_case(&d);
    }
}

static void test_odd_head_dims(void)
{
    /* Any D is correct on the CPU: below, between and above the tile widths. */
    const int64_t dims[] = {1, 24, 96, 160};
    for (int i = 0; i < 4; i++) {
        att_case c = {1, 70, 131, 2, 2, dims[i], i % 2, 1, DS_F32, 1.0};
        run_case(&c);
    }
}

static void test_sharp_and_long(void)
{
    /* Logits with standard deviation ~9 make the running max change often across key blocks
     * (the rescaling path); 2048 keys span many blocks. */
    att_case c = {1, 130, 2048, 2, 1, 64, 0, 0, DS_F32, 3.0};
    run_case(&c);
    c.causal = 1;
    c.sq = 2048;
    c.stddev = 1.0;
    c.hq = 1;
    run_case(&c);
}

static void test_isa_variants(void)
{
    /* The CPU picks AVX-512, AVX2 or plain vectors at run time; force each one the machine has
     * (forcing one it lacks falls back to the next) so all three are exercised. */
    const char *isas[] = {"avx2", "generic"};
    for (int i = 0; i < 2; i++) {
        setenv("DS_CPU_ATTENTION_ISA", isas[i], 1);
        att_case c = {2, 67, 131, 6, 2, 128, 1, 2, DS_F32, 2.0};
        run_case(&c);
        att_case d = {1, 100, 37, 2, 1, 40, 0, 1, DS_BF16, 1.0};
        run_case(&d);
    }
    unsetenv("DS_CPU_ATTENTION_ISA");
}

int main(int argc, char **argv)
{
    kt_init(argc, argv);
    RUN(test_mha_self);
    RUN(test_gqa);
    RUN(test_causal_cross_lengths);
    RUN(test_key_mask);
    RUN(test_dtypes);
    RUN(test_odd_head_dims);
    RUN(test_sharp_and_long);
    RUN(test_isa_variants);
    kt_finish();
    return test_summary();
}
