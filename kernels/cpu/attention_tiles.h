/* The attention tile kernels, written once and compiled once per instruction set: attention.c
 * includes this file several times (no include guard on purpose), each time with a target
 * pragma in force and these macros defined:
 *   SUF         name suffix (avx512, avx2, generic)
 *   V, VI       the f32 and i32 vector types of W lanes (GCC vector extensions)
 *   W, NV       lanes per vector; vectors per register tile row (a tile is TILE_MR x NV*W)
 *   VLOAD(p), VSTORE(p, v), VSET1(x), VFMA(a, b, c) = a*b + c, VMAX(a, b)
 * and TILE_MR, ATT_BK from attention.c. A register tile keeps TILE_MR*NV accumulators plus NV
 * loaded vectors and one broadcast live, which fits the 32 (AVX-512) or 16 (AVX2, SSE)
 * vector registers. */

#define TCAT2(a, b) a##_##b
#define TCAT(a, b) TCAT2(a, b)

/* s[rows][ATT_BK] = q[rows][d] . kt[d][ATT_BK]; rows is a multiple of TILE_MR. */
static void TCAT(tile_scores, SUF)(const float *q, int64_t d, const float *kt, float *s, int rows)
{
    for (int c0 = 0; c0 < ATT_BK; c0 += NV * W) {
        for (int r0 = 0; r0 < rows; r0 += TILE_MR) {
            V acc[TILE_MR][NV];
#pragma GCC unroll 8
            for (int r = 0; r < TILE_MR; r++)
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++)
                    acc[r][v] = VSET1(0.0f);
            const float *qr = q + (int64_t)r0 * d;
            const float *kp = kt + c0;
            for (int64_t k = 0; k < d; k++, kp += ATT_BK) {
                V b[NV];
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++)
                    b[v] = VLOAD(kp + v * W);
#pragma GCC unroll 8
                for (int r = 0; r < TILE_MR; r++) {
                    V a = VSET1(qr[r * d + k]);
#pragma GCC unroll 8
                    for (int v = 0; v < NV; v++)
                        acc[r][v] = VFMA(a, b[v], acc[r][v]);
                }
            }
#pragma GCC unroll 8
            for (int r = 0; r < TILE_MR; r++)
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++)
                    VSTORE(s + (int64_t)(r0 + r) * ATT_BK + c0 + v * W, acc[r][v]);
        }
    }
}

/* 2^x for x <= 0, as 2^round(x) * p(f), f = x - round(x) in [-1/2, 1/2], p the degree-6 Taylor
 * polynomial of e^(f ln 2) (relative error below 2e-7, under f32's own rounding of the logits).
 * x below -125 gives exactly 0: masked scores (-inf) then weigh nothing, and no denormal or
 * wrapped exponent can appear. */
static inline V TCAT(tile_exp2, SUF)(V x)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    VI keep = (VI)(x >= VSET1(-125.0f));
    V xc = VMAX(x, VSET1(-125.0f));
    V t = xc + VSET1(magic);
    VI n = (VI)t - (VI)VSET1(magic);
    V f = xc - (t - VSET1(magic));
    V p = VSET1(1.5403530393381608e-4f);
    p = VFMA(p, f, VSET1(1.3333558146428443e-3f));
    p = VFMA(p, f, VSET1(9.6181291076284772e-3f));
    p = VFMA(p, f, VSET1(5.5504108664821580e-2f));
    p = VFMA(p, f, VSET1(2.4022650695910071e-1f));
    p = VFMA(p, f, VSET1(6.9314718055994531e-1f));
    p = VFMA(p, f, VSET1(1.0f));
    return (V)(((VI)p + (n << 23)) & keep);
}

/* Online softmax over one block of scores (already in log2 units): per row, the running max m
 * and sum l are updated, alpha receives the factor the row's accumulated output must be scaled
 * by, and the scores are replaced by their weights 2^(s - m). A row with nothing visible yet
 * (m = -inf) keeps weights 0 and alpha 1. */
static void TCAT(tile_softmax, SUF)(float *s, int rows, float *m, float *l, float *alpha)
{
    for (int r = 0; r < rows; r++) {
        float *row = s + (int64_t)r * ATT_BK;
        V vmax = VLOAD(row);
        for (int c = W; c < ATT_BK; c += W)
            vmax = VMAX(vmax, VLOAD(row + c));
        float mx = vmax[0];
        for (int i = 1; i < W; i++)
            mx = vmax[i] > mx ? vmax[i] : mx;
        float m_new = mx > m[r] ? mx : m[r];
        if (m_new == -INFINITY) {
            alpha[r] = 1.0f;
            for (int c = 0; c < ATT_BK; c += W)
                VSTORE(row + c, VSET1(0.0f));
            continue;
        }
        V vm = VSET1(m_new);
        V vsum = VSET1(0.0f);
        for (int c = 0; c < ATT_BK; c += W) {
            V p = TCAT(tile_exp2, SUF)(VLOAD(row + c) - vm);
            VSTORE(row + c, p);
            vsum += p;
        }
        float sum = 0.0f;
        for (int i = 0; i < W; i++)
            sum += vsum[i];
        V a = TCAT(tile_exp2, SUF)(VSET1(m[r] - m_new));
        alpha[r] = a[0];
        l[r] = l[r] * alpha[r] + sum;
        m[r] = m_new;
    }
}

/* o[rows][dp] = o * alpha[row] + p[rows][ATT_BK] . v[ATT_BK][dp]; dp is a multiple of NV*W and
 * rows of TILE_MR. */
static void TCAT(tile_pv, SUF)(const float *p, const float *v, int64_t dp, float *o,
                               const float *alpha, int rows)
{
    for (int64_t c0 = 0; c0 < dp; c0 += NV * W) {
        for (int r0 = 0; r0 < rows; r0 += TILE_MR) {
            V acc[TILE_MR][NV];
#pragma GCC unroll 8
            for (int r = 0; r < TILE_MR; r++) {
                V a = VSET1(alpha[r0 + r]);
#pragma GCC unroll 8
                for (int j = 0; j < NV; j++)
                    acc[r][j] = a * VLOAD(o + (r0 + r) * dp + c0 + j * W);
            }
            const float *pr = p + (int64_t)r0 * ATT_BK;
            const float *vp = v + c0;
            for (int k = 0; k < ATT_BK; k++, vp += dp) {
                V b[NV];
#pragma GCC unroll 8
                for (int j = 0; j < NV; j++)
                    b[j] = VLOAD(vp + j * W);
#pragma GCC unroll 8
                for (int r = 0; r < TILE_MR; r++) {
                    V a = VSET1(pr[r * ATT_BK + k]);
#pragma GCC unroll 8
                    for (int j = 0; j < NV; j++)
                        acc[r][j] = VFMA(a, b[j], acc[r][j]);
                }
            }
#pragma GCC unroll 8
            for (int r = 0; r < TILE_MR; r++)
#pragma GCC unroll 8
                for (int j = 0; j < NV; j++)
                    VSTORE(o + (r0 + r) * dp + c0 + j * W, acc[r][j]);
        }
    }
}

#define TSTR2(x) #x
#define TSTR(x) TSTR2(x)
static const attn_tiles TCAT(tiles, SUF) = {
    TCAT(tile_scores, SUF), TCAT(tile_softmax, SUF), TCAT(tile_pv, SUF), TSTR(SUF),
};

#undef TSTR
#undef TSTR2
#undef TCAT
#undef TCAT2
