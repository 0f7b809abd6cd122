/* Validation through the public ds_* entry points: every bad argument is INVALID_ARGUMENT with a
 * message that names the op and the operand. And the CPU fallback: a backend that supports
 * nothing still gets correct results (kernels/ops.c copies operands to the CPU and back). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernel_test.h"
#include "test.h"

/* Tensors made by T() in the current case, freed by free_all(). */
static ds_tensor pool[128];
static int npool;

static ds_tensor *T(ds_dtype dtype, int nd, int64_t d0, int64_t d1, int64_t d2, int64_t d3, int64_t d4)
{
    int64_t shape[5] = {d0, d1, d2, d3, d4};
    if (npool == (int)(sizeof pool / sizeof pool[0])) {
        fprintf(stderr, "T: too many tensors in one case\n");
        exit(1);
    }
    ds_tensor *t = &pool[npool++];
    ds_error err;
    if (ds_tensor_alloc(kt.backend, dtype, nd, shape, t, &err) != DS_OK) {
        fprintf(stderr, "T: %s\n", err.message);
        exit(1);
    }
    memset(t->data, 0, ds_tensor_nbytes(t));
    return t;
}
#define T1(dt, a) T(dt, 1, a, 0, 0, 0, 0)
#define T2(dt, a, b) T(dt, 2, a, b, 0, 0, 0)
#define T3(dt, a, b, c) T(dt, 3, a, b, c, 0, 0)
#define T4(dt, a, b, c, d) T(dt, 4, a, b, c, d, 0)
#define T5(dt, a, b, c, d, e) T(dt, 5, a, b, c, d, e)

static void free_all(void)
{
    for (int i = 0; i < npool; i++)
        ds_tensor_free(&pool[i]);
    npool = 0;
}

/* rc must be INVALID_ARGUMENT and the message must start with "<op>: " and mention operand. */
static void expect_invalid(int rc, const ds_error *err, const char *op, const char *operand, int line)
{
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s: ", op);
    if (rc != DS_ERR_INVALID_ARGUMENT || strncmp(err->message, prefix, strlen(prefix)) != 0 ||
        !strstr(err->message, operand)) {
        fprintf(stderr, "  line %d: expected INVALID_ARGUMENT naming %s and %s, got %d: %s\n", line,
                op, operand, rc, rc ? err->message : "(ok)");
        test_case_failed = 1;
    }
}
#define EXPECT(call, op, operand)                                                                  \
    do {                                                                                           \
        ds_error err_;                                                                             \
        memset(&err_, 0, sizeof err_);                                                             \
        int rc_ = (call);                                                                          \
        expect_invalid(rc_, &err_, op, operand, __LINE__);                                         \
    } while (0)
#define E (&err_)
#define B kt.backend

static void test_linear(void)
{
    ds_tensor *x = T2(DS_F32, 3, 64), *w = T2(DS_BF16, 8, 64), *y = T2(DS_F32, 3, 8);
    ds_linear_args a = {x, w, NULL, 1.0f, DS_ACT_NONE, y};
    a.weight = T2(DS_BF16, 8, 68);
    EXPECT(ds_linear(B, NULL, &a, E), "linear", "x's last dim must be K = 68");
    a.weight = T1(DS_BF16, 64);
    EXPECT(ds_linear(B, NULL, &a, E), "linear", "weight");
    a.weight = T2(DS_I32, 8, 64);
    EXPECT(ds_linear(B, NULL, &a, E), "linear", "weight");
    a.weight = w;
    a.x = T2(DS_F8_E4M3, 3, 64);
    EXPECT(ds_linear(B, NULL, &a, E), "linear", "x");
    a.x = NULL;
    EXPECT(ds_linear(B, NULL, &a, E), "linear", "x is missing");
    a.x = x;
    a.y = T2(DS_F32, 3, 9);
    EXPECT(ds_linear(B, NULL, &a, E), "linear", "y");
    a.y = T2(DS_F32, 4, 8);
    EXPECT(ds_linear(B, NULL, &a, E), "linear", "y");
    a.y = y;
    a.bias = T1(DS_F32, 9);
    EXPECT(ds_linear(B, NULL, &a, E), "linear", "bias");
    a.bias = NULL;
    a.epilogue = DS_ACT_COUNT;
    EXPECT(ds_linear(B, NULL, &a, E), "linear", "epilogue");
    a.epilogue = DS_ACT_NONE;
    a.weight_scale = NAN;
    EXPECT(ds_linear(B, NULL, &a, E), "linear", "weight_scale");
    a.weight_scale = 0.0f;
    EXPECT(ds_linear(B, NULL, &a, E), "linear", "weight_scale");
    /* a tensor's own shape checks */
    a.weight_scale = 1.0f;
    ds_tensor neg = *w;
    neg.shape[0] = -1;
    a.weight = &neg;
    EXPECT(ds_linear(B, NULL, &a, E), "linear", "negative");
    ds_tensor nodata = *w;
    nodata.data = NULL;
    a.weight = &nodata;
    EXPECT(ds_linear(B, NULL, &a, E), "linear", "weight has no data");
    ds_tensor deep = *x;
    deep.ndim = DS_MAX_DIMS + 1;
    a.weight = w;
    a.x = &deep;
    EXPECT(ds_linear(B, NULL, &a, E), "linear", "rank");
    free_all();
}

static void test_batched_matmul(void)
{
    ds_tensor *a3 = T3(DS_F32, 2, 3, 4), *b3 = T3(DS_F32, 2, 4, 5), *y = T3(DS_F32, 2, 3, 5);
    ds_batched_matmul_args a = {a3, b3, 0, 0, 1.0f, y};
    a.a = T2(DS_F32, 3, 4);
    EXPECT(ds_batched_matmul(B, NULL, &a, E), "batched_matmul", "a is");
    a.a = a3;
    a.transpose_b = 1; /* b is then [2, 5, 4]^T: K = 5 != 4 */
    EXPECT(ds_batched_matmul(B, NULL, &a, E), "batched_matmul", "(transposed)");
    a.transpose_b = 0;
    a.y = T3(DS_BF16, 2, 5, 3);
    EXPECT(ds_batched_matmul(B, NULL, &a, E), "batched_matmul", "y");
    a.y = y;
    a.b = T3(DS_F32, 3, 4, 5);
    EXPECT(ds_batched_matmul(B, NULL, &a, E), "batched_matmul", "b");
    free_all();
}

static void test_attention(void)
{
    ds_tensor *q = T4(DS_F32, 1, 7, 28, 64), *k = T4(DS_F32, 1, 9, 4, 64), *v = T4(DS_F32, 1, 9, 4, 64);
    ds_tensor *o = T4(DS_F32, 1, 7, 28, 64);
    ds_attention_args a = {q, k, v, NULL, 0.125f, 1, o};
    a.k = T4(DS_F32, 1, 9, 3, 64);
    a.v = T4(DS_F32, 1, 9, 3, 64);
    EXPECT(ds_attention(B, NULL, &a, E), "attention", "query heads a multiple");
    a.k = k;
    a.v = v;
    a.key_mask = T2(DS_F32, 1, 9);
    EXPECT(ds_attention(B, NULL, &a, E), "attention", "key_mask");
    a.key_mask = T2(DS_U8, 1, 8);
    EXPECT(ds_attention(B, NULL, &a, E), "attention", "key_mask");
    a.key_mask = NULL;
    a.v = T4(DS_F32, 1, 8, 4, 64);
    EXPECT(ds_attention(B, NULL, &a, E), "attention", "v");
    a.v = v;
    a.q = T3(DS_F32, 7, 28, 64);
    EXPECT(ds_attention(B, NULL, &a, E), "attention", "q");
    a.q = q;
    a.out = T4(DS_F32, 1, 7, 28, 32);
    EXPECT(ds_attention(B, NULL, &a, E), "attention", "out");
    a.out = o;
    a.scale = NAN;
    EXPECT(ds_attention(B, NULL, &a, E), "attention", "scale");
    free_all();
}

static void test_norms(void)
{
    ds_tensor *x = T3(DS_F32, 2, 3, 32), *y = T3(DS_F32, 2, 3, 32);
    ds_layer_norm_args ln = {x, T1(DS_F32, 31), NULL, 1e-6f, y};
    EXPECT(ds_layer_norm(B, NULL, &ln, E), "layer_norm", "weight");
    ln.weight = NULL;
    ln.bias = T2(DS_F32, 1, 32);
    EXPECT(ds_layer_norm(B, NULL, &ln, E), "layer_norm", "bias");
    ln.bias = NULL;
    ln.y = T3(DS_F32, 2, 3, 31);
    EXPECT(ds_layer_norm(B, NULL, &ln, E), "layer_norm", "y");
    ln.y = y;
    ln.eps = -1.0f;
    EXPECT(ds_layer_norm(B, NULL, &ln, E), "layer_norm", "eps");

    ds_rms_norm_args rn = {x, T1(DS_BF16, 3), 1e-6f, y};
    EXPECT(ds_rms_norm(B, NULL, &rn, E), "rms_norm", "weight");
    rn.weight = T1(DS_I64, 32);
    EXPECT(ds_rms_norm(B, NULL, &rn, E), "rms_norm", "weight");

    ds_tensor *img = T4(DS_F32, 1, 12, 5, 5), *imgy = T4(DS_F32, 1, 12, 5, 5);
    ds_group_norm_args gn = {img, 5, NULL, NULL, 1e-6f, imgy};
    EXPECT(ds_group_norm(B, NULL, &gn, E), "group_norm", "5 groups do not divide the 12 channels");
    gn.groups = 0;
    EXPECT(ds_group_norm(B, NULL, &gn, E), "group_norm", "groups");
    gn.groups = 4;
    gn.weight = T1(DS_F32, 5);
    EXPECT(ds_group_norm(B, NULL, &gn, E), "group_norm", "weight");

    ds_channel_rms_norm_args cn = {img, NULL, NULL, 1e-12f, imgy};
    EXPECT(ds_channel_rms_norm(B, NULL, &cn, E), "channel_rms_norm", "gamma is missing");
    cn.gamma = T1(DS_F32, 5);
    EXPECT(ds_channel_rms_norm(B, NULL, &cn, E), "channel_rms_norm", "gamma");

    ds_softmax_args sm = {T(DS_F32, 0, 0, 0, 0, 0, 0), T(DS_F32, 0, 0, 0, 0, 0, 0)};
    EXPECT(ds_softmax(B, NULL, &sm, E), "softmax", "x");
    sm.x = x;
    sm.y = T3(DS_F32, 2, 32, 3);
    EXPECT(ds_softmax(B, NULL, &sm, E), "softmax", "y");
    free_all();
}

static void test_activation_rope_timestep(void)
{
    ds_tensor *x = T2(DS_F32, 3, 8), *y = T2(DS_F32, 3, 8);
    ds_activation_args ac = {x, (ds_activation)99, y};
    EXPECT(ds_activate(B, NULL, &ac, E), "activation", "activation 99");
    ac.activation = DS_ACT_SILU;
    ac.y = T2(DS_F32, 8, 3);
    EXPECT(ds_activate(B, NULL, &ac, E), "activation", "y");

    ds_tensor *q = T4(DS_F32, 1, 6, 2, 8), *qy = T4(DS_F32, 1, 6, 2, 8);
    ds_rope_args r = {q, T2(DS_F32, 6, 4), T2(DS_F32, 6, 4), DS_ROPE_INTERLEAVED, qy};
    r.x = T4(DS_F32, 1, 6, 2, 7);
    r.y = T4(DS_F32, 1, 6, 2, 7);
    EXPECT(ds_rope(B, NULL, &r, E), "rope", "head dim must be even");
    r.x = q;
    r.y = qy;
    r.cos = T2(DS_F32, 6, 8);
    EXPECT(ds_rope(B, NULL, &r, E), "rope", "cos");
    r.cos = T2(DS_BF16, 6, 4);
    EXPECT(ds_rope(B, NULL, &r, E), "rope", "cos");
    r.cos = T2(DS_F32, 6, 4);
    r.sin = T2(DS_F32, 5, 4);
    EXPECT(ds_rope(B, NULL, &r, E), "rope", "sin");
    r.sin = T2(DS_F32, 6, 4);
    r.style = (ds_rope_style)7;
    EXPECT(ds_rope(B, NULL, &r, E), "rope", "style");

    ds_timestep_embedding_args te = {T2(DS_F32, 2, 1), 1, 0.0f, 1.0f, 10000.0f, T2(DS_F32, 2, 16)};
    EXPECT(ds_timestep_embedding(B, NULL, &te, E), "timestep_embedding", "t");
    te.t = T1(DS_F32, 2);
    te.y = T2(DS_F32, 2, 15);
    EXPECT(ds_timestep_embedding(B, NULL, &te, E), "timestep_embedding", "y");
    te.y = T2(DS_F32, 2, 16);
    te.max_period = 0;
    EXPECT(ds_timestep_embedding(B, NULL, &te, E), "timestep_embedding", "max_period");
    te.max_period = 10000.0f;
    te.downscale_freq_shift = 8.0f;
    EXPECT(ds_timestep_embedding(B, NULL, &te, E), "timestep_embedding", "downscale_freq_shift");
    free_all();
}

static void test_elementwise(void)
{
    ds_tensor *a = T3(DS_F32, 2, 5, 33), *y = T3(DS_F32, 2, 5, 33);
    ds_binary_args bin = {a, T2(DS_F32, 2, 33), DS_BINARY_ADD, y};
    EXPECT(ds_binary(B, NULL, &bin, E), "binary", "does not broadcast");
    bin.b = T(DS_F32, 4, 1, 2, 5, 33, 0);
    EXPECT(ds_binary(B, NULL, &bin, E), "binary", "b");
    bin.b = T1(DS_F32, 33);
    bin.op = (ds_binary_op)9;
    EXPECT(ds_binary(B, NULL, &bin, E), "binary", "op 9");

    ds_modulate_args mo = {a, T3(DS_F32, 2, 1, 33), T3(DS_F32, 1, 5, 1), y};
    mo.scale = T3(DS_F32, 5, 1, 33);
    EXPECT(ds_modulate(B, NULL, &mo, E), "modulate", "scale");
    mo.scale = T3(DS_F32, 2, 1, 33);
    mo.shift = T1(DS_F32, 5);
    EXPECT(ds_modulate(B, NULL, &mo, E), "modulate", "shift");

    ds_gated_residual_args gr = {a, T3(DS_F32, 2, 1, 33), T3(DS_F32, 2, 5, 32), y};
    EXPECT(ds_gated_residual(B, NULL, &gr, E), "gated_residual", "y_in");
    gr.y_in = T3(DS_F32, 2, 5, 33);
    gr.gate = T2(DS_F32, 2, 33);
    EXPECT(ds_gated_residual(B, NULL, &gr, E), "gated_residual", "gate");

    ds_scale_args sc = {T3(DS_I32, 2, 5, 33), 1.0f, 0.0f, y};
    EXPECT(ds_scale(B, NULL, &sc, E), "scale", "x");
    ds_clamp_args cl = {a, 2.0f, 1.0f, y};
    EXPECT(ds_clamp(B, NULL, &cl, E), "clamp", "lo");
    cl.lo = NAN;
    EXPECT(ds_clamp(B, NULL, &cl, E), "clamp", "lo");

    ds_cast_args ca = {a, T3(DS_I32, 2, 5, 33)};
    EXPECT(ds_cast(B, NULL, &ca, E), "cast", "y [2, 5, 33] i32");
    ca.y = T3(DS_BF16, 2, 33, 5);
    EXPECT(ds_cast(B, NULL, &ca, E), "cast", "y");
    free_all();
}

static void test_movement(void)
{
    ds_tensor *p = T3(DS_BF16, 2, 3, 4), *q = T3(DS_BF16, 2, 5, 4);
    const ds_tensor *ins[2] = {p, q};
    ds_concat_args cc = {ins, 2, 1, T3(DS_BF16, 2, 8, 4)};
    cc.axis = 3;
    EXPECT(ds_concat(B, NULL, &cc, E), "concat", "axis 3");
    cc.axis = 2;
    EXPECT(ds_concat(B, NULL, &cc, E), "concat", "inputs[1]");
    cc.axis = 1;
    cc.y = T3(DS_BF16, 2, 9, 4);
    EXPECT(ds_concat(B, NULL, &cc, E), "concat", "y");
    cc.y = T3(DS_F32, 2, 8, 4);
    EXPECT(ds_concat(B, NULL, &cc, E), "concat", "y");
    cc.count = 0;
    EXPECT(ds_concat(B, NULL, &cc, E), "concat", "no inputs");
    ins[1] = T3(DS_F32, 2, 5, 4);
    cc.count = 2;
    cc.y = T3(DS_BF16, 2, 8, 4);
    EXPECT(ds_concat(B, NULL, &cc, E), "concat", "inputs[1]");

    ds_slice_args sl = {q, 1, 3, T3(DS_BF16, 2, 3, 4)};
    EXPECT(ds_slice(B, NULL, &sl, E), "slice", "y");
    sl.start = -1;
    sl.y = T3(DS_BF16, 2, 2, 4);
    EXPECT(ds_slice(B, NULL, &sl, E), "slice", "y");
    sl.start = 0;
    sl.y = T3(DS_F16, 2, 2, 4);
    EXPECT(ds_slice(B, NULL, &sl, E), "slice", "dtype");

    ds_permute_args pe = {p, {0, 2, 2}, T3(DS_BF16, 2, 4, 4)};
    EXPECT(ds_permute(B, NULL, &pe, E), "permute", "not a permutation");
    pe.perm[1] = 2;
    pe.perm[2] = 1;
    pe.y = T3(DS_BF16, 2, 3, 4);
    EXPECT(ds_permute(B, NULL, &pe, E), "permute", "not a permutation");
    pe.perm[2] = 3;
    pe.y = T3(DS_BF16, 2, 4, 3);
    EXPECT(ds_permute(B, NULL, &pe, E), "permute", "not a permutation");

    ds_patchify_args pa = {T4(DS_F32, 1, 16, 6, 5), 2, T3(DS_F32, 1, 6, 64)};
    EXPECT(ds_patchify(B, NULL, &pa, E), "patchify", "multiples");
    pa.x = T4(DS_F32, 1, 16, 6, 4);
    pa.y = T3(DS_F32, 1, 6, 63);
    EXPECT(ds_unpatchify(B, NULL, &pa, E), "unpatchify", "patch 2");
    pa.y = T3(DS_F32, 1, 6, 64);
    pa.patch = 0;
    EXPECT(ds_patchify(B, NULL, &pa, E), "patchify", "patch 0");

    ds_pad_args pd = {p, {0, 0, 1, 1, 0, -1}, 0.0f, T3(DS_BF16, 2, 5, 3)};
    EXPECT(ds_pad(B, NULL, &pd, E), "pad", ">= 0");
    pd.pad[5] = 1;
    EXPECT(ds_pad(B, NULL, &pd, E), "pad", "y");

    ds_upsample_args up = {p, T3(DS_BF16, 2, 6, 7)};
    EXPECT(ds_upsample_nearest2x(B, NULL, &up, E), "upsample_nearest2x", "doubled");
    up.x = T1(DS_BF16, 4);
    EXPECT(ds_upsample_nearest2x(B, NULL, &up, E), "upsample_nearest2x", "x");

    ds_embedding_args em = {T2(DS_F32, 2, 3), T2(DS_F32, 10, 8), T3(DS_F32, 2, 3, 8)};
    EXPECT(ds_embedding(B, NULL, &em, E), "embedding", "ids");
    em.ids = T2(DS_I64, 2, 3);
    em.y = T3(DS_F32, 2, 3, 9);
    EXPECT(ds_embedding(B, NULL, &em, E), "embedding", "y");
    em.y = T3(DS_F32, 2, 3, 8);
    em.table = T1(DS_F32, 80);
    EXPECT(ds_embedding(B, NULL, &em, E), "embedding", "table");
    free_all();
}

static void test_conv(void)
{
    ds_tensor *x = T4(DS_F32, 1, 3, 8, 8), *w = T4(DS_F32, 4, 3, 3, 3);
    ds_conv2d_args c2 = {x, w, NULL, {1, 1, 1, 1}, {1, 1}, T4(DS_F32, 1, 4, 8, 7)};
    EXPECT(ds_conv2d(B, NULL, &c2, E), "conv2d", "y [1, 4, 8, 7]");
    c2.y = T4(DS_F32, 1, 4, 8, 8);
    c2.weight = T4(DS_F32, 4, 2, 3, 3);
    EXPECT(ds_conv2d(B, NULL, &c2, E), "conv2d", "weight [4, 2, 3, 3]");
    c2.weight = w;
    c2.stride[1] = 0;
    EXPECT(ds_conv2d(B, NULL, &c2, E), "conv2d", "stride");
    c2.stride[1] = 1;
    c2.pad[2] = -1;
    EXPECT(ds_conv2d(B, NULL, &c2, E), "conv2d", "padding");
    c2.pad[2] = 1;
    c2.bias = T1(DS_F32, 3);
    EXPECT(ds_conv2d(B, NULL, &c2, E), "conv2d", "bias");
    c2.bias = NULL;
    c2.x = T3(DS_F32, 3, 8, 8);
    EXPECT(ds_conv2d(B, NULL, &c2, E), "conv2d", "x");

    ds_tensor *x3 = T5(DS_F32, 1, 3, 4, 6, 6), *w3 = T5(DS_F32, 2, 3, 3, 3, 3);
    ds_conv3d_args c3 = {x3, w3, NULL, NULL, 1, 1, {1, 1, 1}, T5(DS_F32, 1, 2, 4, 6, 6)};
    c3.cache = T5(DS_F32, 1, 3, 3, 6, 6);
    EXPECT(ds_conv3d_causal(B, NULL, &c3, E), "conv3d_causal", "cache");
    c3.cache = T5(DS_F32, 1, 2, 2, 6, 6);
    EXPECT(ds_conv3d_causal(B, NULL, &c3, E), "conv3d_causal", "cache");
    c3.cache = NULL;
    c3.y = T5(DS_F32, 1, 2, 3, 6, 6);
    EXPECT(ds_conv3d_causal(B, NULL, &c3, E), "conv3d_causal", "y");
    c3.y = T5(DS_F32, 1, 2, 4, 6, 6);
    c3.weight = T5(DS_F32, 2, 4, 3, 3, 3);
    EXPECT(ds_conv3d_causal(B, NULL, &c3, E), "conv3d_causal", "weight");
    c3.weight = w3;
    c3.stride[0] = -2;
    EXPECT(ds_conv3d_causal(B, NULL, &c3, E), "conv3d_causal", "strides");
    free_all();
}

static void test_no_arguments(void)
{
    EXPECT(ds_linear(B, NULL, NULL, E), "linear", "no arguments");
    EXPECT(ds_validate_op((ds_op)DS_OP_COUNT, &err_, E), "unknown op", "unknown op");
}

/* ---- The CPU fallback through a backend that supports nothing ---- */

typedef struct fake_state {
    int op_calls;
} fake_state;

static int fake_alloc(ds_backend *b, size_t bytes, void **ptr, ds_error *err)
{
    (void)b;
    *ptr = malloc(bytes ? bytes : 1);
    return *ptr ? DS_OK : ds_error_set(err, DS_ERR_RESOURCE_EXHAUSTED, "fake: out of memory");
}
static void fake_free(ds_backend *b, void *p) { (void)b; free(p); }
static int fake_copy(ds_backend *b, void *dst, const void *src, size_t n, ds_stream *s, ds_error *err)
{
    (void)b;
    (void)s;
    (void)err;
    memcpy(dst, src, n);
    return DS_OK;
}
static int fake_fill32(ds_backend *b, void *dst, uint32_t pattern, size_t n, ds_stream *s, ds_error *err)
{
    (void)b;
    (void)s;
    (void)err;
    for (size_t i = 0; i + 4 <= n; i += 4)
        memcpy((char *)dst + i, &pattern, 4);
    return DS_OK;
}
static int fake_sync(ds_backend *b, ds_stream *s, ds_error *err) { (void)b; (void)s; (void)err; return DS_OK; }
static int fake_supports(const ds_backend *b, ds_op op, const void *args) { (void)b; (void)op; (void)args; return 0; }
/* Present but never to be called: supports() said no. */
static int fake_linear(ds_backend *b, ds_stream *s, const ds_linear_args *a, ds_error *err)
{
    (void)s;
    (void)a;
    ((fake_state *)b->impl)->op_calls++;
    return ds_error_set(err, DS_ERR_INTERNAL, "fake linear called");
}
static int fake_concat(ds_backend *b, ds_stream *s, const ds_concat_args *a, ds_error *err)
{
    (void)s;
    (void)a;
    ((fake_state *)b->impl)->op_calls++;
    return ds_error_set(err, DS_ERR_INTERNAL, "fake concat called");
}

static void make_fake(ds_backend *fake, fake_state *st)
{
    memset(fake, 0, sizeof *fake);
    memset(st, 0, sizeof *st);
    fake->name = "fake";
    fake->impl = st;
    fake->alloc = fake_alloc;
    fake->free = fake_free;
    fake->alloc_pinned = fake_alloc;
    fake->free_pinned = fake_free;
    fake->copy_to_device = fake_copy;
    fake->copy_to_host = fake_copy;
    fake->copy_device = fake_copy;
    fake->fill32 = fake_fill32;
    fake->stream_synchronize = fake_sync;
    fake->supports = fake_supports;
    fake->linear = fake_linear;
    fake->concat = fake_concat;
}

static double *fake_tensor(ds_backend *fake, ds_dtype dtype, int nd, const int64_t *shape, ds_tensor *t,
                           double stddev)
{
    ds_error err;
    if (ds_tensor_alloc(fake, dtype, nd, shape, t, &err) != DS_OK)
        return NULL;
    size_t n = (size_t)ds_tensor_numel(t);
    double *v = kt_randn(n, stddev);
    void *host = malloc(ds_tensor_nbytes(t));
    for (size_t i = 0; i < n; i++) {
        ds_store_f64(host, dtype, i, v[i]);
        v[i] = ds_load_f64(host, dtype, i);
    }
    ds_tensor_upload(t, host, NULL, &err);
    free(host);
    return v;
}

static double *fake_read(const ds_tensor *t)
{
    ds_error err;
    size_t n = (size_t)ds_tensor_numel(t);
    void *host = malloc(ds_tensor_nbytes(t));
    double *v = malloc(n * sizeof *v);
    ds_tensor_download(t, host, NULL, &err);
    for (size_t i = 0; i < n; i++)
        v[i] = ds_load_f64(host, t->dtype, i);
    free(host);
    return v;
}

static void test_fallback_linear(void)
{
    ds_backend fake;
    fake_state st;
    make_fake(&fake, &st);
    int64_t xs[3] = {2, 3, 17}, ws[2] = {9, 17}, bs[1] = {9}, ys[3] = {2, 3, 9};
    ds_tensor x, w, bias, y;
    double *xv = fake_tensor(&fake, DS_F32, 3, xs, &x, 1.0);
    double *wv = fake_tensor(&fake, DS_BF16, 2, ws, &w, 0.3);
    double *bv = fake_tensor(&fake, DS_F16, 1, bs, &bias, 1.0);
    double *yv = fake_tensor(&fake, DS_F32, 3, ys, &y, 1.0);
    REQUIRE(xv && wv && bv && yv);
    ds_linear_args a = {&x, &w, &bias, 1.0f, DS_ACT_SILU, &y};
    ds_error err;
    int rc = ds_linear(&fake, NULL, &a, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    CHECK(st.op_calls == 0);
    double ref[54];
    for (int r = 0; r < 6; r++)
        for (int c = 0; c < 9; c++) {
            double acc = bv[c];
            for (int i = 0; i < 17; i++)
                acc += xv[r * 17 + i] * wv[c * 17 + i];
            ref[r * 9 + c] = acc / (1.0 + exp(-acc));
        }
    double *got = fake_read(&y);
    CHECK(kt_compare("fallback linear", got, ref, 54, kt_budget(DS_F32)));
    free(got);

    /* Operands on two backends are refused before anything runs. */
    ds_tensor cpu_w;
    REQUIRE(kt_tensor(DS_BF16, 2, ws, wv, &cpu_w));
    a.weight = &cpu_w;
    EXPECT(ds_linear(&fake, NULL, &a, E), "linear", "different backends");
    ds_tensor_free(&cpu_w);

    ds_tensor_free(&x);
    ds_tensor_free(&w);
    ds_tensor_free(&bias);
    ds_tensor_free(&y);
    free(xv);
    free(wv);
    free(bv);
    free(yv);
}

static void test_fallback_concat(void)
{
    ds_backend fake;
    fake_state st;
    make_fake(&fake, &st);
    int64_t s0[3] = {2, 3, 5}, s1[3] = {2, 1, 5}, s2[3] = {2, 4, 5}, ys[3] = {2, 8, 5};
    ds_tensor t0, t1, t2, y;
    double *v0 = fake_tensor(&fake, DS_BF16, 3, s0, &t0, 1.0);
    double *v1 = fake_tensor(&fake, DS_BF16, 3, s1, &t1, 1.0);
    double *v2 = fake_tensor(&fake, DS_BF16, 3, s2, &t2, 1.0);
    double *yv = fake_tensor(&fake, DS_BF16, 3, ys, &y, 1.0);
    REQUIRE(v0 && v1 && v2 && yv);
    const ds_tensor *ins[3] = {&t0, &t1, &t2};
    ds_concat_args a = {ins, 3, 1, &y};
    ds_error err;
    int rc = ds_concat(&fake, NULL, &a, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    CHECK(st.op_calls == 0);
    double ref[80];
    for (int b = 0; b < 2; b++)
        for (int r = 0; r < 8; r++)
            for (int c = 0; c < 5; c++) {
                double v = r < 3 ? v0[(b * 3 + r) * 5 + c]
                                 : r < 4 ? v1[b * 5 + c] : v2[(b * 4 + r - 4) * 5 + c];
                ref[(b * 8 + r) * 5 + c] = v;
            }
    double *got = fake_read(&y);
    CHECK(kt_compare("fallback concat", got, ref, 80, 0));
    free(got);
    ds_tensor_free(&t0);
    ds_tensor_free(&t1);
    ds_tensor_free(&t2);
    ds_tensor_free(&y);
    free(v0);
    free(v1);
    free(v2);
    free(yv);
}

int main(int argc, char **argv)
{
    kt_init(argc, argv);
    RUN(test_linear);
    RUN(test_batched_matmul);
    RUN(test_attention);
    RUN(test_norms);
    RUN(test_activation_rope_timestep);
    RUN(test_elementwise);
    RUN(test_movement);
    RUN(test_conv);
    RUN(test_no_arguments);
    RUN(test_fallback_linear);
    RUN(test_fallback_concat);
    kt_finish();
    return test_summary();
}
