/* Mamba's selective scan on the CPU, fused: the states never leave a tile of W channels x N states.
 *
 * Built at first use by milkit/models/layers/scan_kernel.py (cc -O3 -march=native -ffast-math; ctypes, no
 * torch headers) and called from one thread per channel range; the math is that of selective_scan.py:
 *
 *   dt_t = softplus(delta_t + bias)   (or delta_t + bias)      a_t = exp(dt_t A)
 *   h_t  = a_t h_{t-1} + dt_t u_t B_t          y_t = sum_n C_t h_t + D u_t
 *
 * Layouts (all float32, contiguous): u, delta, y, gy, gu, gdelta (Bsz, L, Dd); A, gA (Dd, N); Bm, Cm, gB, gC
 * (Bsz, L, N); ckpt (Bsz, nblk, Dd, N) = the state entering each block of S steps. D, bias, gD, gbias (Dd) may be
 * NULL. A call handles channels [d0, d1); gA, gD, gbias are written only there, gB and gC are accumulated into
 * this caller's own buffers (the caller sums them over its threads).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define W 16 /* channels per tile: one cache line of u, delta, y per step */
#define R restrict
#define INLINE static inline __attribute__((always_inline))

/* dt (and d dt / d x) of the tile's nw channels at one step; written for vectorisation (exp/log1p from libmvec) */
INLINE void tile_dt(const float *R delta, const float *R bias, int softplus, int64_t nw, float *R dt, float *R sig) {
    for (int64_t w = 0; w < nw; ++w) {
        const float x = delta[w] + (bias ? bias[w] : 0.f);
        const float e = expf(-fabsf(x));
        dt[w] = softplus ? fmaxf(x, 0.f) + log1pf(e) : x;
        sig[w] = softplus ? (x >= 0.f ? 1.f : e) / (1.f + e) : 1.f;
    }
}

INLINE void fwd_body(const float *R u, const float *R delta, const float *R A, const float *R Bm, const float *R Cm,
                     const float *R D, const float *R bias, int softplus, int64_t Bsz, int64_t L, int64_t Dd,
                     const int64_t N, int64_t S, int64_t d0, int64_t d1, float *R y, float *R ckpt) {
    /* the tile's state and A are laid out [n][w]: every update is one W-wide vector op */
    const int64_t nblk = (L + S - 1) / S;
    float h[N * W], at[N * W], dt[W], sig[W], du[W], acc[W];
    for (int64_t b = 0; b < Bsz; ++b)
        for (int64_t c0 = d0; c0 < d1; c0 += W) {
            const int64_t nw = c0 + W < d1 ? W : d1 - c0;
            memset(h, 0, sizeof(h));
            memset(at, 0, sizeof(at));
            for (int64_t w = 0; w < nw; ++w)
                for (int64_t n = 0; n < N; ++n) at[n * W + w] = A[(c0 + w) * N + n];
            for (int64_t t = 0; t < L; ++t) {
                const int64_t row = (b * L + t) * Dd + c0;
                const float *R Bt = Bm + (b * L + t) * N, *R Ct = Cm + (b * L + t) * N;
                if (t % S == 0)
                    for (int64_t w = 0; w < nw; ++w)
                        for (int64_t n = 0; n < N; ++n) ckpt[((b * nblk + t / S) * Dd + c0 + w) * N + n] = h[n * W + w];
                memset(dt, 0, sizeof(dt));
                tile_dt(delta + row, bias ? bias + c0 : NULL, softplus, nw, dt, sig);
                for (int64_t w = 0; w < W; ++w) {
                    du[w] = w < nw ? dt[w] * u[row + w] : 0.f;
                    acc[w] = 0.f;
                }
                for (int64_t n = 0; n < N; ++n) {
                    float *R hn = h + n * W;
                    const float *R an = at + n * W;
                    const float bn = Bt[n], cn = Ct[n];
                    for (int64_t w = 0; w < W; ++w) {
                        hn[w] = expf(dt[w] * an[w]) * hn[w] + du[w] * bn;
                        acc[w] += cn * hn[w];
                    }
                }
                for (int64_t w = 0; w < nw; ++w) y[row + w] = acc[w] + (D ? D[c0 + w] * u[row + w] : 0.f);
            }
        }
}

INLINE void bwd_body(const float *R u, const float *R delta, const float *R A, const float *R Bm, const float *R Cm,
                     const float *R D, const float *R bias, int softplus, int64_t Bsz, int64_t L, int64_t Dd,
                     const int64_t N, int64_t S, int64_t d0, int64_t d1, const float *R gy, const float *R ckpt,
                     float *R gu, float *R gdelta, float *R gA, float *R gB, float *R gC, float *R gD,
                     float *R gbias, float *R as, float *R hs, float *R dts, float *R sigs) {
    /* per block of S steps, laid out [step][n][w]: as = the decays a_t, hs = the states (row 0 = entering) */
    const int64_t nblk = (L + S - 1) / S, tile = N * W;
    float lam[N * W], anext[N * W], at_[N * W], gat[N * W], g[W], du[W], lam_b[W], gdt[W];
    for (int64_t d = d0; d < d1; ++d) {
        memset(gA + d * N, 0, sizeof(float) * N);
        if (gD) gD[d] = 0.f;
        if (gbias) gbias[d] = 0.f;
    }
    for (int64_t b = 0; b < Bsz; ++b)
        for (int64_t c0 = d0; c0 < d1; c0 += W) {
            const int64_t nw = c0 + W < d1 ? W : d1 - c0;
            memset(lam, 0, sizeof(lam));
            memset(anext, 0, sizeof(anext));
            memset(at_, 0, sizeof(at_));
            memset(gat, 0, sizeof(gat));
            for (int64_t w = 0; w < nw; ++w)
                for (int64_t n = 0; n < N; ++n) at_[n * W + w] = A[(c0 + w) * N + n];
            for (int64_t k = nblk - 1; k >= 0; --k) {
                const int64_t s0 = k * S, s1 = s0 + S < L ? s0 + S : L;
                memset(hs, 0, sizeof(float) * tile);
                for (int64_t w = 0; w < nw; ++w)
                    for (int64_t n = 0; n < N; ++n) hs[n * W + w] = ckpt[((b * nblk + k) * Dd + c0 + w) * N + n];
                for (int64_t t = s0; t < s1; ++t) { /* recompute the block's states */
                    const int64_t i = t - s0, row = (b * L + t) * Dd + c0;
                    const float *R Bt = Bm + (b * L + t) * N;
                    float *R dt = dts + i * W;
                    memset(dt, 0, sizeof(float) * W);
                    tile_dt(delta + row, bias ? bias + c0 : NULL, softplus, nw, dt, sigs + i * W);
                    for (int64_t w = 0; w < W; ++w) du[w] = w < nw ? dt[w] * u[row + w] : 0.f;
                    for (int64_t n = 0; n < N; ++n) {
                        const float *R hp = hs + i * tile + n * W, *R an = at_ + n * W;
                        float *R a = as + i * tile + n * W, *R ht = hs + (i + 1) * tile + n * W;
                        const float bn = Bt[n];
                        for (int64_t w = 0; w < W; ++w) {
                            a[w] = expf(dt[w] * an[w]);
                            ht[w] = a[w] * hp[w] + du[w] * bn;
                        }
                    }
                }
                for (int64_t t = s1 - 1; t >= s0; --t) { /* adjoint: lam_t = C_t gy_t + a_{t+1} lam_{t+1} */
                    const int64_t i = t - s0, row = (b * L + t) * Dd + c0;
                    const float *R Bt = Bm + (b * L + t) * N, *R Ct = Cm + (b * L + t) * N, *R dt = dts + i * W;
                    float *R gBt = gB + (b * L + t) * N, *R gCt = gC + (b * L + t) * N;
                    for (int64_t w = 0; w < W; ++w) {
                        g[w] = w < nw ? gy[row + w] : 0.f;
                        du[w] = w < nw ? dt[w] * u[row + w] : 0.f;
                        lam_b[w] = gdt[w] = 0.f;
                    }
                    for (int64_t n = 0; n < N; ++n) {
                        const float *R a = as + i * tile + n * W, *R hp = hs + i * tile + n * W;
                        const float *R ht = hs + (i + 1) * tile + n * W, *R An = at_ + n * W;
                        float *R ln = lam + n * W, *R nx = anext + n * W, *R gan = gat + n * W;
                        const float bn = Bt[n], cn = Ct[n];
                        float sc = 0.f, sb = 0.f;
                        for (int64_t w = 0; w < W; ++w) {
                            const float l = cn * g[w] + nx[w] * ln[w];
                            const float gda = l * hp[w] * a[w]; /* dL/d(dt A) */
                            ln[w] = l;
                            nx[w] = a[w];
                            sc += g[w] * ht[w];
                            sb += l * du[w];
                            lam_b[w] += l * bn;
                            gan[w] += gda * dt[w];
                            gdt[w] += gda * An[w];
                        }
                        gCt[n] += sc;
                        gBt[n] += sb;
                    }
                    for (int64_t w = 0; w < nw; ++w) {
                        const int64_t d = c0 + w;
                        const float gd = (gdt[w] + u[row + w] * lam_b[w]) * sigs[i * W + w];
                        gdelta[row + w] = gd;
                        gu[row + w] = dt[w] * lam_b[w] + (D ? g[w] * D[d] : 0.f);
                        if (gbias) gbias[d] += gd;
                        if (gD) gD[d] += g[w] * u[row + w];
                    }
                }
            }
            for (int64_t w = 0; w < nw; ++w)
                for (int64_t n = 0; n < N; ++n) gA[(c0 + w) * N + n] += gat[n * W + w];
        }
}

void scan_fwd(const float *u, const float *delta, const float *A, const float *Bm, const float *Cm,
              const float *D, const float *bias, int softplus, int64_t Bsz, int64_t L, int64_t Dd, int64_t N,
              int64_t S, int64_t d0, int64_t d1, float *y, float *ckpt) {
    if (N == 16) /* Mamba's d_state: a constant trip count unrolls the state loops into whole vectors */
        fwd_body(u, delta, A, Bm, Cm, D, bias, softplus, Bsz, L, Dd, 16, S, d0, d1, y, ckpt);
    else
        fwd_body(u, delta, A, Bm, Cm, D, bias, softplus, Bsz, L, Dd, N, S, d0, d1, y, ckpt);
}

void scan_bwd(const float *u, const float *delta, const float *A, const float *Bm, const float *Cm,
              const float *D, const float *bias, int softplus, int64_t Bsz, int64_t L, int64_t Dd, int64_t N,
              int64_t S, int64_t d0, int64_t d1, const float *gy, const float *ckpt, float *gu, float *gdelta,
              float *gA, float *gB, float *gC, float *gD, float *gbias) {
    float *as = malloc(sizeof(float) * S * W * N), *hs = malloc(sizeof(float) * (S + 1) * W * N);
    float *dts = malloc(sizeof(float) * S * W), *sigs = malloc(sizeof(float) * S * W);
    if (N == 16)
        bwd_body(u, delta, A, Bm, Cm, D, bias, softplus, Bsz, L, Dd, 16, S, d0, d1, gy, ckpt, gu, gdelta, gA, gB,
                 gC, gD, gbias, as, hs, dts, sigs);
    else
        bwd_body(u, delta, A, Bm, Cm, D, bias, softplus, Bsz, L, Dd, N, S, d0, d1, gy, ckpt, gu, gdelta, gA, gB,
                 gC, gD, gbias, as, hs, dts, sigs);
    free(as);
    free(hs);
    free(dts);
    free(sigs);
}
