/* The elementwise parts of a Mamba mixer on the CPU, fused: the causal depthwise conv (+ SiLU) and the gate.
 *
 * Built with selective_scan_cpu.c by milkit/models/layers/cpu_kernels.py; float32, channels contiguous.
 *
 * conv:  y[b, s, c] = act(bias[c] + sum_j w[j, c] x[b, o(s - K + 1 + j), c])   (terms with s - K + 1 + j < 0 are 0)
 *        with o(s) = order[b, s] when an order is given (the branch reads the tokens permuted), else s.
 *        x rows have stride xs (a chunk of in_proj's output is used in place); y, gout, gx are (Bsz, L, C).
 *        The backward writes gx in x's own order (gx[b, o(s)]: a permutation, so each row exactly once) and
 *        recomputes the pre-activation instead of storing it. A call handles channels [c0, c1).
 * gate:  out[r] = (y[r] + yr[r]) * SiLU(z[r]) for the rows r = b L + t in [r0, r1) (yr may be NULL); z rows have
 *        stride zs. The gradient of yr is that of y.
 */
#include "cpu_math.h"

/* acc[c] = bias + sum_j w[j, c] x[o(s - K + 1 + j), c] for the channels [c0, c1) */
INLINE void conv_row(const float *R x, int64_t xs, const int64_t *R order, const float *R wk, const float *R bias,
                     int64_t L, int64_t C, int64_t K, int64_t b, int64_t s, int64_t c0, int64_t c1, float *R acc) {
    for (int64_t c = c0; c < c1; ++c) acc[c - c0] = bias ? bias[c] : 0.f;
    for (int64_t j = 0; j < K; ++j) {
        const int64_t p = s - K + 1 + j;
        if (p < 0) continue;
        const float *R xr = x + (b * L + (order ? order[b * L + p] : p)) * xs, *R wj = wk + j * C;
        for (int64_t c = c0; c < c1; ++c) acc[c - c0] += wj[c] * xr[c];
    }
}

void conv_fwd(const float *x, int64_t xs, const int64_t *order, const float *wk, const float *bias, int silu,
              int64_t Bsz, int64_t L, int64_t C, int64_t K, int64_t c0, int64_t c1, float *y) {
    for (int64_t b = 0; b < Bsz; ++b)
        for (int64_t s = 0; s < L; ++s) {
            float *R ys = y + (b * L + s) * C + c0;
            conv_row(x, xs, order, wk, bias, L, C, K, b, s, c0, c1, ys);
            if (silu)
                for (int64_t c = 0; c < c1 - c0; ++c) ys[c] *= sigmoid(ys[c]);
        }
}

/* ring: K * (c1 - c0) floats, the gradients of the pre-activation at the last K positions; accumulate: add the
 * gradient of x to gx (another branch's) instead of writing it */
void conv_bwd(const float *x, int64_t xs, const int64_t *order, const float *wk, const float *bias, int silu,
              int64_t Bsz, int64_t L, int64_t C, int64_t K, int accumulate, int64_t c0, int64_t c1, const float *gout,
              float *gx, float *gw, float *gbias, float *ring) {
    const int64_t cw = c1 - c0;
    for (int64_t j = 0; j < K; ++j) memset(gw + j * C + c0, 0, sizeof(float) * cw);
    if (gbias) memset(gbias + c0, 0, sizeof(float) * cw);
    for (int64_t b = 0; b < Bsz; ++b)
        for (int64_t s = 0; s < L + K - 1; ++s) {
            if (s < L) { /* g = dL/d(pre-activation) at position s, then its terms of gw and gbias */
                float *R g = ring + (s % K) * cw;
                const float *R go = gout + (b * L + s) * C + c0;
                if (silu) {
                    conv_row(x, xs, order, wk, bias, L, C, K, b, s, c0, c1, g);
                    for (int64_t c = 0; c < cw; ++c) {
                        const float sg = sigmoid(g[c]);
                        g[c] = go[c] * sg * (1.f + g[c] * (1.f - sg));
                    }
                } else
                    memcpy(g, go, sizeof(float) * cw);
                if (gbias)
                    for (int64_t c = 0; c < cw; ++c) gbias[c0 + c] += g[c];
                for (int64_t j = 0; j < K; ++j) {
                    const int64_t p = s - K + 1 + j;
                    if (p < 0) continue;
                    const float *R xr = x + (b * L + (order ? order[b * L + p] : p)) * xs + c0;
                    float *R gwj = gw + j * C + c0;
                    for (int64_t c = 0; c < cw; ++c) gwj[c] += g[c] * xr[c];
                }
            }
            const int64_t p = s - K + 1; /* every position that reads x at p is now known: p .. min(s, L-1) */
            if (p < 0) continue;
            float *R gxr = gx + (b * L + (order ? order[b * L + p] : p)) * C + c0;
            if (!accumulate) memset(gxr, 0, sizeof(float) * cw);
            for (int64_t j = 0; j < K; ++j) {
                const int64_t q = p + K - 1 - j; /* the output position whose tap j reads p */
                if (q >= L) continue;
                const float *R g = ring + (q % K) * cw, *R wj = wk + j * C + c0;
                for (int64_t c = 0; c < cw; ++c) gxr[c] += wj[c] * g[c];
            }
        }
}

void gate_fwd(const float *y, const float *yr, const float *z, int64_t zs, int64_t C, int64_t r0, int64_t r1,
              float *out) {
    for (int64_t r = r0; r < r1; ++r) {
        const float *R yt = y + r * C, *R zt = z + r * zs, *R yrt = yr ? yr + r * C : NULL;
        float *R o = out + r * C;
        for (int64_t c = 0; c < C; ++c) o[c] = (yt[c] + (yrt ? yrt[c] : 0.f)) * zt[c] * sigmoid(zt[c]);
    }
}

void gate_bwd(const float *go, const float *y, const float *yr, const float *z, int64_t zs, int64_t C, int64_t r0,
              int64_t r1, float *gy, float *gz) {
    for (int64_t r = r0; r < r1; ++r) {
        const float *R got = go + r * C, *R yt = y + r * C, *R zt = z + r * zs, *R yrt = yr ? yr + r * C : NULL;
        float *R gyt = gy + r * C, *R gzt = gz + r * C;
        for (int64_t c = 0; c < C; ++c) {
            const float sg = sigmoid(zt[c]), v = yt[c] + (yrt ? yrt[c] : 0.f);
            gyt[c] = got[c] * zt[c] * sg;
            gzt[c] = got[c] * v * sg * (1.f + zt[c] * (1.f - sg));
        }
    }
}
