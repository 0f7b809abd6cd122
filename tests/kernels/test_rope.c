/* RoPE and the sinusoidal timestep embedding against float64 references built from the
 * semantics in kernels/backend.h, with cos/sin tables made the way the models make them:
 * Qwen2.5's text table (half-split) and the Qwen-Image / Wan multi-axis tables (interleaved). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/float_convert.h"
#include "kernel_test.h"
#include "test.h"

static const ds_dtype dtypes[] = {DS_F32, DS_BF16, DS_F16};

/* ---- cos/sin angle tables [S, D/2] ---- */

/* Qwen2.5 / HF Llama: angle[s][i] = (pos0 + s) * theta^(-2i/D). HF duplicates the table to
 * [S, D] for rotate_half; both halves use column i, which is what the op's [S, D/2] holds. */
static double *text_angles(int64_t seq, int64_t dim, double theta, int64_t pos0)
{
    int64_t half = dim / 2;
    double *ang = malloc((size_t)(seq * half) * sizeof *ang);
    for (int64_t s = 0; s < seq; s++)
        for (int64_t i = 0; i < half; i++)
            ang[s * half + i] = (double)(pos0 + s) * pow(theta, -2.0 * (double)i / (double)dim);
    return ang;
}

/* Multi-axis table for a (frames, height, width) token grid in row-major order: the columns are
 * split into blocks of axes[a]/2 pairs, block a using position axis a with frequencies
 * theta^(-2j/axes[a]) (diffusers' rope_params). `centred` gives Qwen-Image's scale_rope positions
 * for height and width: h - ceil(Hh/2), i.e. -Hh/2 .. Hh/2-1 for even Hh; Wan uses 0-based ones. */
static double *axes_angles(int64_t frames, int64_t height, int64_t width, const int axes[3],
                           double theta, int centred)
{
    int64_t seq = frames * height * width, half = (axes[0] + axes[1] + axes[2]) / 2;
    double *ang = malloc((size_t)(seq * half) * sizeof *ang);
    for (int64_t f = 0; f < frames; f++)
        for (int64_t h = 0; h < height; h++)
            for (int64_t w = 0; w < width; w++) {
                int64_t s = (f * height + h) * width + w;
                double pos[3] = {(double)f, (double)(centred ? h - (height - height / 2) : h),
                                 (double)(centred ? w - (width - width / 2) : w)};
                int64_t col = 0;
                for (int a = 0; a < 3; a++)
                    for (int j = 0; j < axes[a] / 2; j++)
                        ang[s * half + col++] = pos[a] * pow(theta, -2.0 * j / axes[a]);
            }
    return ang;
}

/* ---- RoPE ---- */

typedef struct rope_shape {
    int64_t batch, seq, heads, dim;
} rope_shape;

/* cos/sin tensors from angles [S, D/2]; cv/sv receive the values actually stored (f32). */
static int make_tables(const double *ang, int64_t seq, int64_t half, ds_tensor *ct, ds_tensor *st,
                       double **cv, double **sv)
{
    size_t n = (size_t)(seq * half);
    *cv = malloc((n ? n : 1) * sizeof **cv);
    *sv = malloc((n ? n : 1) * sizeof **sv);
    for (size_t i = 0; i < n; i++) {
        (*cv)[i] = cos(ang[i]);
        (*sv)[i] = sin(ang[i]);
    }
    int64_t shape[2] = {seq, half};
    return kt_tensor(DS_F32, 2, shape, *cv, ct) && kt_tensor(DS_F32, 2, shape, *sv, st);
}

static void rope_ref(const rope_shape *sh, ds_rope_style style, const double *xv, const double *cv,
                     const double *sv, double *ref)
{
    int64_t half = sh->dim / 2, rows = sh->batch * sh->seq * sh->heads;
    for (int64_t r = 0; r < rows; r++) {
        int64_t pos = (r / sh->heads) % sh->seq;
        const double *x = xv + r * sh->dim;
        double *y = ref + r * sh->dim;
        for (int64_t i = 0; i < half; i++) {
            double c = cv[pos * half + i], s = sv[pos * half + i];
            int64_t e0 = style == DS_ROPE_INTERLEAVED ? 2 * i : i;
            int64_t e1 = style == DS_ROPE_INTERLEAVED ? 2 * i + 1 : i + half;
            y[e0] = x[e0] * c - x[e1] * s;
            y[e1] = x[e1] * c + x[e0] * s;
        }
    }
}

static void rope_case(const char *table, const rope_shape *sh, const double *ang,
                      ds_rope_style style, ds_dtype xd, ds_dtype yd, int alias)
{
    int64_t xshape[4] = {sh->batch, sh->seq, sh->heads, sh->dim}, half = sh->dim / 2;
    size_t n = (size_t)(sh->batch * sh->seq * sh->heads * sh->dim);
    double *xv = kt_randn(n, 1.0), *cv = NULL, *sv = NULL;
    double *ref = malloc((n ? n : 1) * sizeof *ref);
    ds_tensor x, y, ct, st;
    int have_tables = make_tables(ang, sh->seq, half, &ct, &st, &cv, &sv);
    int ok = have_tables && kt_tensor(xd, 4, xshape, xv, &x);
    if (ok && !alias)
        ok = kt_tensor(yd, 4, xshape, NULL, &y);
    CHECK(ok);
    if (ok) {
        ds_rope_args a = {&x, &ct, &st, style, alias ? &x : &y};
        ds_error err;
        int rc = ds_rope(kt.backend, NULL, &a, &err);
        CHECK_MSG(rc == DS_OK, "%s", err.message);
        rope_ref(sh, style, xv, cv, sv, ref);
        char what[200];
        snprintf(what, sizeof what, "rope %s %s [%lld, %lld, %lld, %lld] %s -> %s%s", table,
                 style == DS_ROPE_INTERLEAVED ? "interleaved" : "half-split",
                 (long long)sh->batch, (long long)sh->seq, (long long)sh->heads,
                 (long long)sh->dim, ds_dtype_name(xd), ds_dtype_name(alias ? xd : yd),
                 alias ? " (in place)" : "");
        double *got = kt_read(alias ? &x : &y);
        CHECK(kt_compare(what, got, ref, n, kt_budget(alias ? xd : yd)));
        free(got);
        ds_tensor_free(&x);
        if (!alias)
            ds_tensor_free(&y);
    }
    if (have_tables) {
        ds_tensor_free(&ct);
        ds_tensor_free(&st);
    }
    free(xv);
    free(cv);
    free(sv);
    free(ref);
}

/* Hand-worked rotations, so a sign or pairing convention shared by the reference and the kernel
 * cannot pass: angles (pi/2, pi) on x = [1, 0, 0, 1]. Interleaved: (1 + 0i) * i = i and
 * (0 + 1i) * -1 = -i, so [0, 1, 0, -1]. Half-split pairs (x0, x2) = (1, 0) and (x1, x3) = (0, 1):
 * y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin gives [0, 0, 1, -1]. */
static void test_rope_known_values(void)
{
    static const double expect[2][4] = {{0, 1, 0, -1}, {0, 0, 1, -1}};
    double ang[2] = {M_PI / 2, M_PI};
    for (int style = 0; style < 2; style++) {
        int64_t xshape[4] = {1, 1, 1, 4};
        double xv[4] = {1, 0, 0, 1}, *cv = NULL, *sv = NULL;
        ds_tensor x, y, ct, st;
        REQUIRE(make_tables(ang, 1, 2, &ct, &st, &cv, &sv));
        REQUIRE(kt_tensor(DS_F32, 4, xshape, xv, &x) && kt_tensor(DS_F32, 4, xshape, NULL, &y));
        ds_rope_args a = {&x, &ct, &st, (ds_rope_style)style, &y};
        ds_error err;
        CHECK(ds_rope(kt.backend, NULL, &a, &err) == DS_OK);
        double *got = kt_read(&y);
        for (int i = 0; i < 4; i++)
            CHECK_MSG(fabs(got[i] - expect[style][i]) < 1e-6, "style %d element %d: got %g, want %g",
                      style, i, got[i], expect[style][i]);
        free(got);
        free(cv);
        free(sv);
        ds_tensor_free(&x);
        ds_tensor_free(&y);
        ds_tensor_free(&ct);
        ds_tensor_free(&st);
    }
}

/* Qwen2.5 text encoder: half-split, theta 1e6, head dim 128 (and 64), 28 heads; positions from 0
 * and from a large offset, where angles reach thousands of radians. */
static void test_rope_text_table(void)
{
    static const struct {
        rope_shape sh;
        int64_t pos0;
    } cases[] = {
        {{2, 1, 28, 128}, 0},   {{2, 7, 3, 128}, 0},   {{2, 33, 28, 128}, 0},
        {{2, 33, 1, 64}, 0},    {{1, 7, 24, 64}, 4093}, {{2, 1, 3, 128}, 30000},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const rope_shape *sh = &cases[c].sh;
        double *ang = text_angles(sh->seq, sh->dim, 1e6, cases[c].pos0);
        for (int xi = 0; xi < 3; xi++) {
            rope_case("qwen2.5 text", sh, ang, DS_ROPE_HALF_SPLIT, dtypes[xi], dtypes[xi], 0);
            rope_case("qwen2.5 text", sh, ang, DS_ROPE_HALF_SPLIT, dtypes[xi], dtypes[xi], 1);
        }
        /* mixed dtypes: rotation in fp32 then one rounding to y */
        rope_case("qwen2.5 text", sh, ang, DS_ROPE_HALF_SPLIT, DS_BF16, DS_F32, 0);
        rope_case("qwen2.5 text", sh, ang, DS_ROPE_HALF_SPLIT, DS_F32, DS_F16, 0);
        free(ang);
    }
}

/* Qwen-Image: interleaved, axes (16, 56, 56) for head dim 128, theta 1e4, centred height and
 * width positions, 24 heads. Wan: axes (D - 4(D/6), 2(D/6), 2(D/6)) with 0-based positions. */
static void test_rope_multi_axis_tables(void)
{
    static const int qwen_axes[3] = {16, 56, 56}, wan128[3] = {44, 42, 42}, wan64[3] = {24, 20, 20};
    static const struct {
        const char *name;
        const int *axes;
        int centred;
        int64_t batch, frames, height, width, heads;
    } cases[] = {
        {"qwen-image", qwen_axes, 1, 2, 1, 1, 1, 24},  /* S 1 */
        {"qwen-image", qwen_axes, 1, 2, 1, 1, 7, 3},   /* S 7, one row */
        {"qwen-image", qwen_axes, 1, 2, 1, 3, 11, 1},  /* S 33, odd height and width */
        {"qwen-image", qwen_axes, 1, 2, 3, 4, 6, 24},  /* S 72 with frames */
        {"wan", wan128, 0, 2, 3, 1, 11, 3},            /* S 33 */
        {"wan", wan64, 0, 2, 1, 7, 1, 28},             /* S 7, head dim 64 */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int *ax = cases[c].axes;
        rope_shape sh = {cases[c].batch, cases[c].frames * cases[c].height * cases[c].width,
                         cases[c].heads, ax[0] + ax[1] + ax[2]};
        double *ang = axes_angles(cases[c].frames, cases[c].height, cases[c].width, ax, 1e4,
                                  cases[c].centred);
        for (int xi = 0; xi < 3; xi++) {
            rope_case(cases[c].name, &sh, ang, DS_ROPE_INTERLEAVED, dtypes[xi], dtypes[xi], 0);
            rope_case(cases[c].name, &sh, ang, DS_ROPE_INTERLEAVED, dtypes[xi], dtypes[xi], 1);
        }
        rope_case(cases[c].name, &sh, ang, DS_ROPE_INTERLEAVED, DS_F16, DS_BF16, 0);
        free(ang);
    }
}

/* Production-sized sequences: a 1000-token Qwen-Image latent (25 x 40, 24 heads) and a Qwen2.5
 * prompt of 1000 tokens (28 heads), once per dtype, in place for the model dtype. */
static void test_rope_long_sequences(void)
{
    static const int qwen_axes[3] = {16, 56, 56};
    rope_shape img = {2, 1000, 24, 128}, txt = {1, 1000, 28, 128};
    double *ang = axes_angles(1, 25, 40, qwen_axes, 1e4, 1);
    rope_case("qwen-image", &img, ang, DS_ROPE_INTERLEAVED, DS_BF16, DS_BF16, 1);
    img.heads = 3;
    rope_case("qwen-image", &img, ang, DS_ROPE_INTERLEAVED, DS_F32, DS_F32, 0);
    rope_case("qwen-image", &img, ang, DS_ROPE_INTERLEAVED, DS_F16, DS_F16, 0);
    free(ang);
    ang = text_angles(txt.seq, txt.dim, 1e6, 0);
    rope_case("qwen2.5 text", &txt, ang, DS_ROPE_HALF_SPLIT, DS_BF16, DS_BF16, 1);
    txt.heads = 3;
    rope_case("qwen2.5 text", &txt, ang, DS_ROPE_HALF_SPLIT, DS_F32, DS_F32, 0);
    rope_case("qwen2.5 text", &txt, ang, DS_ROPE_HALF_SPLIT, DS_F16, DS_F16, 1);
    free(ang);
}

/* One pair per row (both styles pair x[0] with x[1]), and a head dim whose D/2 = 513 exceeds the
 * CPU kernel's 512-pair pieces, in place, where a piece boundary could read rotated values. */
static void test_rope_edge_shapes(void)
{
    rope_shape tiny = {1, 1, 3, 2}, wide = {1, 3, 2, 1026};
    double tiny_ang[1] = {0.7};
    for (int style = 0; style < 2; style++)
        for (int xi = 0; xi < 3; xi++) {
            rope_case("single pair", &tiny, tiny_ang, (ds_rope_style)style, dtypes[xi], dtypes[xi], 0);
            rope_case("single pair", &tiny, tiny_ang, (ds_rope_style)style, dtypes[xi], dtypes[xi], 1);
        }
    double *ang = text_angles(wide.seq, wide.dim, 1e4, 5);
    for (int style = 0; style < 2; style++) {
        rope_case("wide", &wide, ang, (ds_rope_style)style, DS_F32, DS_F32, 1);
        rope_case("wide", &wide, ang, (ds_rope_style)style, DS_BF16, DS_BF16, 1);
        rope_case("wide", &wide, ang, (ds_rope_style)style, DS_F16, DS_F32, 0);
    }
    free(ang);
}

/* HF's full-width [S, D] cos table is the likely mistake; it must be refused, naming cos, with
 * y left alone. */
static void test_rope_rejects_wrong_table(void)
{
    int64_t xshape[4] = {1, 6, 2, 8}, full[2] = {6, 8}, ok_shape[2] = {6, 4};
    size_t n = 6 * 2 * 8;
    double *xv = kt_randn(n, 1.0);
    ds_tensor x, y, cfull, c, s;
    REQUIRE(kt_tensor(DS_F32, 4, xshape, xv, &x) && kt_tensor(DS_F32, 4, xshape, NULL, &y) &&
            kt_tensor(DS_F32, 2, full, NULL, &cfull) && kt_tensor(DS_F32, 2, ok_shape, NULL, &c) &&
            kt_tensor(DS_F32, 2, ok_shape, NULL, &s));
    ds_rope_args a = {&x, &cfull, &s, DS_ROPE_HALF_SPLIT, &y};
    ds_error err;
    memset(&err, 0, sizeof err);
    int rc = ds_rope(kt.backend, NULL, &a, &err);
    CHECK_MSG(rc == DS_ERR_INVALID_ARGUMENT, "rc %d", rc);
    CHECK(strncmp(err.message, "rope: ", 6) == 0);
    CHECK_CONTAINS(err.message, "cos");
    CHECK_CONTAINS(err.message, "[6, 4]");
    double *got = kt_read(&y);
    for (size_t i = 0; i < n; i++)
        if (!isnan(got[i])) {
            CHECK_MSG(0, "rejected rope wrote y[%zu] = %g", i, got[i]);
            break;
        }
    free(got);
    /* the same call with a [S, D/2] table is accepted (the tables hold NaN: only acceptance
     * is checked here) */
    a.cos = &c;
    CHECK(ds_rope(kt.backend, NULL, &a, &err) == DS_OK);
    free(xv);
    ds_tensor_free(&x);
    ds_tensor_free(&y);
    ds_tensor_free(&cfull);
    ds_tensor_free(&c);
    ds_tensor_free(&s);
}

/* ---- timestep embedding ---- */

typedef struct ts_params {
    const char *name;
    int dim, flip;
    float shift, scale, max_period;
} ts_params;

/* diffusers get_timestep_embedding in float64 (backend.h): the float parameters enter as the
 * floats the op receives. */
static void timestep_ref(const ts_params *p, const double *tv, int64_t batch, double *ref)
{
    int half = p->dim / 2;
    double denom = (double)half - (double)p->shift;
    for (int64_t b = 0; b < batch; b++)
        for (int k = 0; k < half; k++) {
            double exponent = -log((double)p->max_period) * k / denom;
            double arg = (double)p->scale * (tv[b] * exp(exponent));
            double sn = sin(arg), cs = cos(arg);
            ref[b * p->dim + k] = p->flip ? cs : sn;
            ref[b * p->dim + half + k] = p->flip ? sn : cs;
        }
}

/* Spacing of `dtype` at |v| (subnormal spacing below the normal range). */
static double ulp_of(ds_dtype dtype, double v)
{
    int mant = dtype == DS_F16 ? 10 : dtype == DS_BF16 ? 7 : 23;
    int emin = dtype == DS_F16 ? -14 : -126;
    int e = v == 0 ? emin : ilogb(v);
    return ldexp(1.0, (e < emin ? emin : e) - mant);
}

static void timestep_case(const ts_params *p, ds_dtype td, ds_dtype yd, const double *tvals,
                          int64_t batch)
{
    int64_t tshape[1] = {batch}, yshape[2] = {batch, p->dim};
    size_t n = (size_t)(batch * p->dim);
    double *tv = malloc((size_t)batch * sizeof *tv), *ref = malloc(n * sizeof *ref);
    memcpy(tv, tvals, (size_t)batch * sizeof *tv);
    ds_tensor t, y;
    int ok = kt_tensor(td, 1, tshape, tv, &t) && kt_tensor(yd, 2, yshape, NULL, &y);
    CHECK(ok);
    if (ok) {
        ds_timestep_embedding_args a = {&t, p->flip, p->shift, p->scale, p->max_period, &y};
        ds_error err;
        int rc = ds_timestep_embedding(kt.backend, NULL, &a, &err);
        CHECK_MSG(rc == DS_OK, "%s", err.message);
        timestep_ref(p, tv, batch, ref);
        char what[160];
        snprintf(what, sizeof what, "timestep_embedding %s dim %d t %s -> %s", p->name, p->dim,
                 ds_dtype_name(td), ds_dtype_name(yd));
        double *got = kt_read(&y);
        CHECK(kt_compare(what, got, ref, n, kt_budget(yd)));
        /* The documented fp64 arithmetic leaves only y's own rounding, at most half a step;
         * fp32 arithmetic is off by ~scale * t * 2^-24 radians, hundreds of f32 steps. */
        for (size_t i = 0; i < n; i++)
            if (!(fabs(got[i] - ref[i]) <= ulp_of(yd, ref[i]))) {
                CHECK_MSG(0, "%s: element %zu (t[%zu] = %.9g) is %.9g, reference %.9g", what, i,
                          i / (size_t)p->dim, tv[i / (size_t)p->dim], got[i], ref[i]);
                break;
            }
        free(got);
        ds_tensor_free(&t);
        ds_tensor_free(&y);
    }
    free(tv);
    free(ref);
}

/* dim 4, t = 1, scale 1, period 1e4: frequencies exp(-ln(1e4) k / 2) = 1 and 0.01. */
static void test_timestep_known_values(void)
{
    double one[1] = {1.0};
    double sins[4] = {sin(1.0), sin(0.01), cos(1.0), cos(0.01)};
    double coss[4] = {cos(1.0), cos(0.01), sin(1.0), sin(0.01)};
    for (int flip = 0; flip < 2; flip++) {
        int64_t tshape[1] = {1}, yshape[2] = {1, 4};
        ds_tensor t, y;
        REQUIRE(kt_tensor(DS_F32, 1, tshape, one, &t) && kt_tensor(DS_F32, 2, yshape, NULL, &y));
        ds_timestep_embedding_args a = {&t, flip, 0.0f, 1.0f, 10000.0f, &y};
        ds_error err;
        CHECK(ds_timestep_embedding(kt.backend, NULL, &a, &err) == DS_OK);
        double *got = kt_read(&y);
        const double *want = flip ? coss : sins;
        for (int i = 0; i < 4; i++)
            CHECK_MSG(fabs(got[i] - want[i]) < 1e-7, "flip %d element %d: got %.9g, want %.9g",
                      flip, i, got[i], want[i]);
        free(got);
        ds_tensor_free(&t);
        ds_tensor_free(&y);
    }
}

static void test_timestep_models(void)
{
    /* Qwen-Image: sigmas in [0, 1] scaled by 1000 (QwenTimestepProjEmbeddings). */
    static const ts_params qwen = {"qwen-image", 256, 1, 0.0f, 1000.0f, 10000.0f};
    static const double qwen_t[] = {0.98225, 0.5, 0.0, 0.0123456789};
    /* Wan: raw timesteps in [0, 1000), scale 1. */
    static const ts_params wan = {"wan", 256, 1, 0.0f, 1.0f, 10000.0f};
    static const double wan_t[] = {999.0, 981.25, 500.5, 0.0, 1.0};
    /* SD / DDPM style: [sin, cos] and downscale_freq_shift 1. */
    static const ts_params sd = {"sd flip 0 shift 1", 320, 0, 1.0f, 1.0f, 10000.0f};
    static const double sd_t[] = {999.0, 1.0, 0.0};
    static const ds_dtype tds[] = {DS_F32, DS_F64};
    for (int ti = 0; ti < 2; ti++)
        for (int yi = 0; yi < 3; yi++) {
            timestep_case(&qwen, tds[ti], dtypes[yi], qwen_t, 4);
            timestep_case(&qwen, tds[ti], dtypes[yi], qwen_t, 1);
            timestep_case(&wan, tds[ti], dtypes[yi], wan_t, 5);
            timestep_case(&sd, tds[ti], dtypes[yi], sd_t, 3);
        }
    /* the smallest dim: one frequency, exp(0) = 1 */
    static const ts_params two = {"dim 2", 2, 1, 0.0f, 1000.0f, 10000.0f};
    timestep_case(&two, DS_F64, DS_F32, qwen_t, 4);
}

int main(int argc, char **argv)
{
    kt_init(argc, argv);
    RUN(test_rope_known_values);
    RUN(test_rope_text_table);
    RUN(test_rope_multi_axis_tables);
    RUN(test_rope_long_sequences);
    RUN(test_rope_edge_shapes);
    RUN(test_rope_rejects_wrong_table);
    RUN(test_timestep_known_values);
    RUN(test_timestep_models);
    kt_finish();
    return test_summary();
}
