/* Activations, binary ops, modulate, gated residual, scale and clamp against float64
 * references with their own broadcasting loops. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_test.h"
#include "test.h"

static size_t numel(int nd, const int64_t *shape)
{
    size_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= (size_t)shape[i];
    return n;
}

/* Index into b (NumPy-broadcast onto a's shape) of a's flat element `flat`. */
static size_t bidx(int and, const int64_t *ashape, int bnd, const int64_t *bshape, size_t flat)
{
    size_t idx = 0, mul = 1;
    for (int i = and - 1; i >= 0; i--) {
        size_t c = flat % (size_t)ashape[i];
        flat /= (size_t)ashape[i];
        int j = i - (and - bnd);
        if (j < 0)
            continue;
        if (bshape[j] != 1)
            idx += c * mul;
        mul *= (size_t)bshape[j];
    }
    return idx;
}

static double act_ref(double x, ds_activation act)
{
    switch (act) {
    case DS_ACT_SILU: return x / (1.0 + exp(-x));
    case DS_ACT_GELU_ERF: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case DS_ACT_GELU_TANH: return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case DS_ACT_GELU_SIGMOID: return x / (1.0 + exp(-1.702 * x));
    default: return x;
    }
}

static const ds_dtype dtypes[] = {DS_F32, DS_BF16, DS_F16};

static void check_output(const char *what, const ds_tensor *y, const double *ref, double budget)
{
    double *got = kt_read(y);
    CHECK(kt_compare(what, got, ref, (size_t)ds_tensor_numel(y), budget));
    free(got);
}

/* ---- activation ---- */

static void activation_case(ds_dtype xd, ds_dtype yd, int nd, const int64_t *shape, double *xv,
                            ds_activation act, int alias)
{
    size_t n = numel(nd, shape);
    ds_tensor x, y;
    REQUIRE(kt_tensor(xd, nd, shape, xv, &x));
    if (!alias)
        REQUIRE(kt_tensor(yd, nd, shape, NULL, &y));
    ds_activation_args a = {&x, act, alias ? &x : &y};
    ds_error err;
    int rc = ds_activate(kt.backend, NULL, &a, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    double *ref = malloc(n * sizeof *ref);
    for (size_t i = 0; i < n; i++)
        ref[i] = act_ref(xv[i], act);
    char what[128];
    snprintf(what, sizeof what, "activation %s %s -> %s%s n %zu", ds_activation_name(act),
             ds_dtype_name(xd), ds_dtype_name(alias ? xd : yd), alias ? " (in place)" : "", n);
    check_output(what, alias ? &x : &y, ref, kt_budget(alias ? xd : yd));
    free(ref);
    ds_tensor_free(&x);
    if (!alias)
        ds_tensor_free(&y);
}

static void test_activation(void)
{
    static const int64_t sizes[] = {1, 3, 17, 33, 127};
    for (int act = 0; act < DS_ACT_COUNT; act++)
        for (int xi = 0; xi < 3; xi++)
            for (int si = 0; si < 5; si++) {
                int64_t shape[2] = {3, sizes[si]};
                double *xv = kt_randn(numel(2, shape), 2.0);
                activation_case(dtypes[xi], dtypes[(xi + si) % 3], 2, shape, xv, (ds_activation)act, 0);
                free(xv);
                xv = kt_randn(numel(2, shape), 2.0);
                activation_case(dtypes[xi], dtypes[xi], 2, shape, xv, (ds_activation)act, 1);
                free(xv);
            }
}

/* exp(-x) overflows for x < -88 in f32; the result must still be the limit, not NaN. */
static void test_activation_large_inputs(void)
{
    static const double big_f32[] = {-3e38, -1e30, -1e4, -100, -89, -50, 50, 89, 100, 1e4, 1e30, 3e38};
    static const double big_half[] = {-60000, -1e4, -100, -89, -50, -20, 20, 50, 89, 100, 1e4, 60000};
    for (int act = 1; act < DS_ACT_COUNT; act++) {
        for (int xi = 0; xi < 3; xi++) {
            int64_t shape[1] = {12};
            double xv[12];
            memcpy(xv, dtypes[xi] == DS_F16 ? big_half : big_f32, sizeof xv);
            activation_case(dtypes[xi], dtypes[xi], 1, shape, xv, (ds_activation)act, 0);
        }
    }
}

/* ---- binary ---- */

static double binary_ref(ds_binary_op op, double a, double b)
{
    switch (op) {
    case DS_BINARY_ADD: return a + b;
    case DS_BINARY_SUB: return a - b;
    case DS_BINARY_MUL: return a * b;
    case DS_BINARY_DIV: return a / b;
    }
    return NAN;
}

static void binary_case(ds_binary_op op, ds_dtype ad, ds_dtype bd, ds_dtype yd, int and,
                        const int64_t *ashape, int bnd, const int64_t *bshape, int alias)
{
    size_t n = numel(and, ashape), nb = numel(bnd, bshape);
    double *av = kt_randn(n, 1.0);
    /* Divisors away from zero, with both signs. */
    double *bv = op == DS_BINARY_DIV ? kt_uniform(nb, 0.5, 2.0) : kt_randn(nb, 1.0);
    if (op == DS_BINARY_DIV)
        for (size_t i = 0; i < nb; i += 2)
            bv[i] = -bv[i];
    ds_tensor a, b, y;
    REQUIRE(kt_tensor(ad, and, ashape, av, &a) && kt_tensor(bd, bnd, bshape, bv, &b));
    if (!alias)
        REQUIRE(kt_tensor(yd, and, ashape, NULL, &y));
    ds_binary_args args = {&a, &b, op, alias ? &a : &y};
    ds_error err;
    int rc = ds_binary(kt.backend, NULL, &args, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    double *ref = malloc(n * sizeof *ref);
    for (size_t i = 0; i < n; i++)
        ref[i] = binary_ref(op, av[i], bv[bidx(and, ashape, bnd, bshape, i)]);
    char what[160];
    snprintf(what, sizeof what, "binary op %d %s [%lld.. rank %d] with %s rank %d (b numel %zu) -> %s%s",
             (int)op, ds_dtype_name(ad), (long long)ashape[0], and, ds_dtype_name(bd), bnd, nb,
             ds_dtype_name(alias ? ad : yd), alias ? " in place" : "");
    check_output(what, alias ? &a : &y, ref, kt_budget(alias ? ad : yd));
    free(ref);
    ds_tensor_free(&a);
    ds_tensor_free(&b);
    if (!alias)
        ds_tensor_free(&y);
    free(av);
    free(bv);
}

/* b shapes against a [2, 5, 33]: suffix [C], [1, C], [B, 1, C]; middle [5, 1]; leading
 * [2, 1, 1]; scalar-shaped [1]; rank 0; full shape. A broadcast along the wrong axis fails. */
static const struct {
    int nd;
    int64_t shape[3];
} b_shapes[] = {
    {1, {33}}, {2, {1, 33}}, {3, {2, 1, 33}}, {2, {5, 1}}, {3, {2, 1, 1}}, {1, {1}}, {0, {0}},
    {3, {2, 5, 33}},
};

static void test_binary_broadcasting(void)
{
    int64_t ashape[3] = {2, 5, 33};
    for (int op = 0; op < 4; op++)
        for (size_t s = 0; s < sizeof b_shapes / sizeof b_shapes[0]; s++) {
            binary_case((ds_binary_op)op, DS_F32, DS_F32, DS_F32, 3, ashape, b_shapes[s].nd,
                        b_shapes[s].shape, 0);
            binary_case((ds_binary_op)op, DS_BF16, DS_F32, DS_BF16, 3, ashape, b_shapes[s].nd,
                        b_shapes[s].shape, 0);
            binary_case((ds_binary_op)op, DS_F16, DS_BF16, DS_F32, 3, ashape, b_shapes[s].nd,
                        b_shapes[s].shape, 0);
        }
}

static void test_binary_aliasing_and_large(void)
{
    int64_t ashape[3] = {3, 100, 257}, bshape[3] = {3, 1, 257}, cshape[1] = {257};
    for (int op = 0; op < 4; op++) {
        binary_case((ds_binary_op)op, DS_F32, DS_F32, DS_F32, 3, ashape, 3, bshape, 1);
        binary_case((ds_binary_op)op, DS_BF16, DS_F32, DS_BF16, 3, ashape, 1, cshape, 1);
        binary_case((ds_binary_op)op, DS_F16, DS_F16, DS_F16, 3, ashape, 3, ashape, 1);
    }
    int64_t odd[2] = {17, 127}, odd_b[2] = {17, 1};
    binary_case(DS_BINARY_MUL, DS_F32, DS_F16, DS_F32, 2, odd, 2, odd_b, 0);
    int64_t one[1] = {1};
    binary_case(DS_BINARY_SUB, DS_F32, DS_F32, DS_F32, 1, one, 1, one, 0);
}

/* ---- modulate / gated residual ---- */

static void modulate_case(ds_dtype xd, ds_dtype pd, int pnd, const int64_t *pshape, int alias)
{
    int64_t xshape[3] = {2, 17, 33};
    size_t n = numel(3, xshape), np = numel(pnd, pshape);
    double *xv = kt_randn(n, 1.0), *sv = kt_randn(np, 0.5), *tv = kt_randn(np, 0.5);
    /* shift broadcast differently from scale in the rank-1 case, to catch swapped operands */
    int64_t tshape[3] = {1, 1, 33};
    int tnd = pnd == 1 ? 3 : pnd;
    const int64_t *tsh = pnd == 1 ? tshape : pshape;
    ds_tensor x, sc, sh, y;
    REQUIRE(kt_tensor(xd, 3, xshape, xv, &x) && kt_tensor(pd, pnd, pshape, sv, &sc) &&
            kt_tensor(pd, tnd, tsh, tv, &sh));
    if (!alias)
        REQUIRE(kt_tensor(xd, 3, xshape, NULL, &y));
    ds_modulate_args a = {&x, &sc, &sh, alias ? &x : &y};
    ds_error err;
    int rc = ds_modulate(kt.backend, NULL, &a, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    double *ref = malloc(n * sizeof *ref);
    for (size_t i = 0; i < n; i++)
        ref[i] = xv[i] * (1.0 + sv[bidx(3, xshape, pnd, pshape, i)]) + tv[bidx(3, xshape, tnd, tsh, i)];
    char what[128];
    snprintf(what, sizeof what, "modulate x %s params %s rank %d%s", ds_dtype_name(xd),
             ds_dtype_name(pd), pnd, alias ? " in place" : "");
    check_output(what, alias ? &x : &y, ref, kt_budget(xd));
    free(ref);
    ds_tensor_free(&x);
    ds_tensor_free(&sc);
    ds_tensor_free(&sh);
    if (!alias)
        ds_tensor_free(&y);
    free(xv);
    free(sv);
    free(tv);
}

static void test_modulate(void)
{
    int64_t p3[3] = {2, 1, 33}, p1[1] = {33}, p2[2] = {1, 33};
    for (int xi = 0; xi < 3; xi++)
        for (int pi = 0; pi < 3; pi++) {
            modulate_case(dtypes[xi], dtypes[pi], 3, p3, 0);
            modulate_case(dtypes[xi], dtypes[pi], 1, p1, 0);
        }
    modulate_case(DS_F32, DS_F32, 2, p2, 1);
    modulate_case(DS_BF16, DS_F32, 3, p3, 1);
}

static void gated_case(ds_dtype xd, ds_dtype gd, ds_dtype yd, int gnd, const int64_t *gshape, int alias)
{
    int64_t xshape[3] = {2, 17, 33};
    size_t n = numel(3, xshape), ng = numel(gnd, gshape);
    double *xv = kt_randn(n, 1.0), *gv = kt_randn(ng, 1.0), *yv = kt_randn(n, 1.0);
    ds_tensor x, g, yin, out;
    REQUIRE(kt_tensor(xd, 3, xshape, xv, &x) && kt_tensor(gd, gnd, gshape, gv, &g) &&
            kt_tensor(yd, 3, xshape, yv, &yin));
    if (!alias)
        REQUIRE(kt_tensor(xd, 3, xshape, NULL, &out));
    ds_gated_residual_args a = {&x, &g, &yin, alias ? &x : &out};
    ds_error err;
    int rc = ds_gated_residual(kt.backend, NULL, &a, &err);
    CHECK_MSG(rc == DS_OK, "%s", err.message);
    double *ref = malloc(n * sizeof *ref);
    for (size_t i = 0; i < n; i++)
        ref[i] = xv[i] + gv[bidx(3, xshape, gnd, gshape, i)] * yv[i];
    char what[128];
    snprintf(what, sizeof what, "gated_residual x %s gate %s rank %d y %s%s", ds_dtype_name(xd),
             ds_dtype_name(gd), gnd, ds_dtype_name(yd), alias ? " in place" : "");
    check_output(what, alias ? &x : &out, ref, kt_budget(xd));
    free(ref);
    ds_tensor_free(&x);
    ds_tensor_free(&g);
    ds_tensor_free(&yin);
    if (!alias)
        ds_tensor_free(&out);
    free(xv);
    free(gv);
    free(yv);
}

static void test_gated_residual(void)
{
    int64_t g3[3] = {2, 1, 33}, g1[1] = {33}, gs[1] = {1};
    for (int xi = 0; xi < 3; xi++) {
        gated_case(dtypes[xi], DS_F32, dtypes[(xi + 1) % 3], 3, g3, 0);
        gated_case(dtypes[xi], dtypes[xi], dtypes[xi], 1, g1, 0);
        gated_case(dtypes[xi], DS_BF16, DS_F32, 1, gs, 1);
        gated_case(dtypes[xi], dtypes[xi], dtypes[xi], 3, g3, 1);
    }
}

/* ---- scale / clamp ---- */

static void test_scale(void)
{
    static const int64_t sizes[] = {1, 3, 17, 33, 127, 40000};
    for (int xi = 0; xi < 3; xi++)
        for (int si = 0; si < 6; si++) {
            int64_t shape[1] = {sizes[si]};
            size_t n = (size_t)sizes[si];
            double *xv = kt_randn(n, 1.0);
            ds_tensor x, y;
            REQUIRE(kt_tensor(dtypes[xi], 1, shape, xv, &x));
            REQUIRE(kt_tensor(dtypes[(xi + si) % 3], 1, shape, NULL, &y));
            ds_scale_args a = {&x, -1.5f, 0.25f, &y};
            ds_error err;
            CHECK(ds_scale(kt.backend, NULL, &a, &err) == DS_OK);
            double *ref = malloc(n * sizeof *ref);
            for (size_t i = 0; i < n; i++)
                ref[i] = xv[i] * -1.5 + 0.25;
            check_output("scale", &y, ref, kt_budget(y.dtype));
            /* in place */
            a.y = &x;
            CHECK(ds_scale(kt.backend, NULL, &a, &err) == DS_OK);
            for (size_t i = 0; i < n; i++)
                ref[i] = xv[i] * -1.5 + 0.25;
            check_output("scale in place", &x, ref, kt_budget(x.dtype));
            free(ref);
            free(xv);
            ds_tensor_free(&x);
            ds_tensor_free(&y);
        }
}

static void test_clamp(void)
{
    for (int xi = 0; xi < 3; xi++) {
        int64_t shape[1] = {127};
        double *xv = kt_randn(127, 3.0);
        xv[5] = NAN;
        xv[6] = -NAN;
        xv[7] = INFINITY;
        xv[8] = -INFINITY;
        xv[9] = -1.0; /* exactly lo */
        ds_tensor x, y;
        REQUIRE(kt_tensor(dtypes[xi], 1, shape, xv, &x));
        REQUIRE(kt_tensor(dtypes[xi], 1, shape, NULL, &y));
        for (int alias = 0; alias < 2; alias++) {
            ds_clamp_args a = {&x, -1.0f, 2.5f, alias ? &x : &y};
            ds_error err;
            CHECK(ds_clamp(kt.backend, NULL, &a, &err) == DS_OK);
            double ref[127];
            for (int i = 0; i < 127; i++)
                ref[i] = isnan(xv[i]) ? NAN : fmin(fmax(xv[i], -1.0), 2.5);
            double *got = kt_read(alias ? &x : &y);
            CHECK(kt_compare("clamp", got, ref, 127, 0));
            CHECK_MSG(isnan(got[5]) && isnan(got[6]), "clamp(NaN) gave %g, %g", got[5], got[6]);
            CHECK(got[7] == 2.5 && got[8] == -1.0);
            free(got);
        }
        free(xv);
        ds_tensor_free(&x);
        ds_tensor_free(&y);
    }
}

/* Several host threads issuing ops on one backend at once (the pool serialises them): each
 * gets exactly the result it gets alone. */
typedef struct caller {
    ds_tensor a, b, y;
    double *expect;
    int ok;
} caller;

static void *caller_main(void *p)
{
    caller *c = p;
    c->ok = 1;
    for (int rep = 0; rep < 20 && c->ok; rep++) {
        ds_binary_args args = {&c->a, &c->b, DS_BINARY_MUL, &c->y};
        ds_error err;
        if (ds_binary(kt.backend, NULL, &args, &err) != DS_OK) {
            c->ok = 0;
            break;
        }
        double *got = kt_read(&c->y);
        c->ok = memcmp(got, c->expect, (size_t)ds_tensor_numel(&c->y) * sizeof *got) == 0;
        free(got);
    }
    return NULL;
}

static void test_concurrent_callers(void)
{
    enum { NCALLERS = 3 };
    caller cs[NCALLERS];
    int64_t shape[2] = {64, 1000}, bshape[1] = {1000};
    for (int i = 0; i < NCALLERS; i++) {
        double *av = kt_randn(64000, 1.0), *bv = kt_randn(1000, 1.0);
        REQUIRE(kt_tensor(DS_F32, 2, shape, av, &cs[i].a) && kt_tensor(DS_F32, 1, bshape, bv, &cs[i].b) &&
                kt_tensor(DS_F32, 2, shape, NULL, &cs[i].y));
        cs[i].expect = malloc(64000 * sizeof(double));
        for (size_t e = 0; e < 64000; e++)
            cs[i].expect[e] = (double)((float)av[e] * (float)bv[e % 1000]);
        free(av);
        free(bv);
    }
    pthread_t th[NCALLERS];
    for (int i = 0; i < NCALLERS; i++)
        REQUIRE(pthread_create(&th[i], NULL, caller_main, &cs[i]) == 0);
    for (int i = 0; i < NCALLERS; i++) {
        pthread_join(th[i], NULL);
        CHECK_MSG(cs[i].ok, "caller %d", i);
        ds_tensor_free(&cs[i].a);
        ds_tensor_free(&cs[i].b);
        ds_tensor_free(&cs[i].y);
        free(cs[i].expect);
    }
}

int main(int argc, char **argv)
{
    kt_init(argc, argv);
    RUN(test_activation);
    RUN(test_activation_large_inputs);
    RUN(test_binary_broadcasting);
    RUN(test_binary_aliasing_and_large);
    RUN(test_modulate);
    RUN(test_gated_residual);
    RUN(test_scale);
    RUN(test_clamp);
    RUN(test_concurrent_callers);
    kt_finish();
    return test_summary();
}
