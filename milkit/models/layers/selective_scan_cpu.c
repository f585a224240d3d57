/* Mamba's selective scan on the CPU, fused: the states never leave a tile of W channels x N states.
 *
 * Built at first use by milkit/models/layers/cpu_kernels.py (cc -O3 -march=native, fast-math parts; ctypes, no
 * torch headers) and called from one thread per channel range; the math is that of selective_scan.py:
 *
 *   dt_t = softplus(delta_t + bias)   (or delta_t + bias)      a_t = exp(dt_t A)
 *   h_t  = a_t h_{t-1} + dt_t u_t B_t          y_t = sum_n C_t h_t + D u_t
 *
 * Layouts (all float32, contiguous): u, delta, y, gy, gu, gdelta (Bsz, L, Dd); A, gA (Dd, N); Bm, Cm, gB, gC
 * (Bsz, L, N); ckpt (Bsz, nblk, Dt, N) = the state entering each block of S steps, Dt = Dd rounded up to a whole
 * tile, each tile's N x W states laid out [n][w] as in the loops. D, bias, gD, gbias (Dd) may be
 * NULL. order (Bsz, L) or NULL: output step t goes to row order[b, t] of y (and its gradient comes from that row of
 * gy), so a scan over permuted tokens hands back its output in the tokens' own order. A call handles channels
 * [d0, d1); gA, gD, gbias are written only there, gB and gC are accumulated into this caller's own buffers (the
 * caller sums them over its threads).
 */
#include "cpu_math.h"

#define W 16 /* channels per tile: one cache line of u, delta, y per step (exp2_mul16 assumes 16) */

/* dt (and d dt / d x) of the tile's nw channels at one step; written for vectorisation */
INLINE void tile_dt(const float *R delta, const float *R bias, int softplus, int64_t nw, float *R dt, float *R sig) {
    for (int64_t w = 0; w < nw; ++w) {
        const float x = delta[w] + (bias ? bias[w] : 0.f);
        const float e = fast_exp(-fabsf(x));
        dt[w] = softplus ? fast_softplus(x, e) : x;
        sig[w] = softplus ? (x >= 0.f ? 1.f : e) / (1.f + e) : 1.f;
    }
}

/* A log2(e) of the thread's tiles (exp(dt A) = 2^(dt A log2 e)), laid out [tile][n][w], zero past d1 */
static void tile_A(const float *R A, int64_t N, int64_t d0, int64_t d1, float *R at) {
    const int64_t ntile = (d1 - d0 + W - 1) / W;
    memset(at, 0, sizeof(float) * ntile * N * W);
    for (int64_t c = d0; c < d1; ++c)
        for (int64_t n = 0; n < N; ++n) at[((c - d0) / W * N + n) * W + (c - d0) % W] = A[c * N + n] * LOG2E;
}

INLINE void fwd_body(const float *R u, const float *R delta, const float *R Bm, const float *R Cm, const float *R D,
                     const float *R bias, const int64_t *R order, int softplus, int64_t Bsz, int64_t L, int64_t Dd,
                     const int64_t N, int64_t S, int64_t d0, int64_t d1, float *R y, float *R ckpt, const float *R at,
                     float *R hst) {
    /* A tile's state and A are laid out [n][w]: every update is one W-wide vector op. The loops run block of S
     * steps, then tile: the rows of a block stay in cache and in the TLB while every tile reads its 64 bytes of
     * them (tile by tile over all L steps, each step's row is a new 4 KiB page: a TLB miss per load). */
    const int64_t nblk = (L + S - 1) / S, tile = N * W, ntile = (d1 - d0 + W - 1) / W, Dt = (Dd + W - 1) / W * W;
    float dt[W], sig[W], du[W], acc[W];
    for (int64_t b = 0; b < Bsz; ++b) {
        memset(hst, 0, sizeof(float) * ntile * tile);
        for (int64_t k = 0; k < nblk; ++k) {
            const int64_t s0 = k * S, s1 = s0 + S < L ? s0 + S : L;
            for (int64_t j = 0; j < ntile; ++j) {
                const int64_t c0 = d0 + j * W, nw = c0 + W < d1 ? W : d1 - c0;
                float *R h = hst + j * tile;
                const float *R atj = at + j * tile;
                memcpy(ckpt + ((b * nblk + k) * Dt + c0) * N, h, sizeof(float) * tile);
                for (int64_t t = s0; t < s1; ++t) {
                    const int64_t row = (b * L + t) * Dd + c0;
                    const float *R Bt = Bm + (b * L + t) * N, *R Ct = Cm + (b * L + t) * N;
                    memset(dt, 0, sizeof(dt));
                    tile_dt(delta + row, bias ? bias + c0 : NULL, softplus, nw, dt, sig);
                    for (int64_t w = 0; w < W; ++w) du[w] = w < nw ? dt[w] * u[row + w] : 0.f;
                    state_step16(dt, du, atj, h, h, NULL, Bt, Ct, N, acc);
                    const int64_t out = (b * L + (order ? order[b * L + t] : t)) * Dd + c0;
                    for (int64_t w = 0; w < nw; ++w) y[out + w] = acc[w] + (D ? D[c0 + w] * u[row + w] : 0.f);
                }
            }
        }
    }
}

/* Per-thread work buffers of the backward, [tile][n][w] or [step][n][w] */
typedef struct {
    float *lam, *anext, *gat; /* per tile: lambda and the decay after the block, sum of dL/d(dt A) dt */
    float *as, *hs, *dts, *sigs; /* one tile's block: decays, states (row 0 = entering), dt, d dt/d x */
    float *sc, *sb; /* a block's gC, gB terms summed over the tiles, reduced over w once per block */
} bwd_bufs;

INLINE void bwd_body(const float *R u, const float *R delta, const float *R Bm, const float *R Cm, const float *R D,
                     const float *R bias, const int64_t *R order, int softplus, int64_t Bsz, int64_t L, int64_t Dd,
                     const int64_t N, int64_t S, int64_t d0, int64_t d1, const float *R gy, const float *R ckpt,
                     const float *R at, float *R gu, float *R gdelta, float *R gA, float *R gB, float *R gC,
                     float *R gD, float *R gbias, bwd_bufs m) {
    const int64_t nblk = (L + S - 1) / S, tile = N * W, ntile = (d1 - d0 + W - 1) / W, Dt = (Dd + W - 1) / W * W;
    float g[W], du[W], lam_b[W], gdt[W];
    float *R as = m.as, *R hs = m.hs, *R dts = m.dts, *R sigs = m.sigs, *R sc = m.sc, *R sb = m.sb;
    memset(m.gat, 0, sizeof(float) * ntile * tile);
    for (int64_t d = d0; d < d1; ++d) {
        if (gD) gD[d] = 0.f;
        if (gbias) gbias[d] = 0.f;
    }
    for (int64_t b = 0; b < Bsz; ++b) {
        memset(m.lam, 0, sizeof(float) * ntile * tile);
        memset(m.anext, 0, sizeof(float) * ntile * tile);
        for (int64_t k = nblk - 1; k >= 0; --k) {
            const int64_t s0 = k * S, s1 = s0 + S < L ? s0 + S : L;
            memset(sc, 0, sizeof(float) * S * tile);
            memset(sb, 0, sizeof(float) * S * tile);
            for (int64_t j = 0; j < ntile; ++j) {
                const int64_t c0 = d0 + j * W, nw = c0 + W < d1 ? W : d1 - c0;
                const float *R atj = at + j * tile;
                float *R lam = m.lam + j * tile, *R anext = m.anext + j * tile, *R gat = m.gat + j * tile;
                memcpy(hs, ckpt + ((b * nblk + k) * Dt + c0) * N, sizeof(float) * tile);
                for (int64_t t = s0; t < s1; ++t) { /* recompute the block's states */
                    const int64_t i = t - s0, row = (b * L + t) * Dd + c0;
                    const float *R Bt = Bm + (b * L + t) * N;
                    float *R dt = dts + i * W;
                    memset(dt, 0, sizeof(float) * W);
                    tile_dt(delta + row, bias ? bias + c0 : NULL, softplus, nw, dt, sigs + i * W);
                    for (int64_t w = 0; w < W; ++w) du[w] = w < nw ? dt[w] * u[row + w] : 0.f;
                    state_step16(dt, du, atj, hs + i * tile, hs + (i + 1) * tile, as + i * tile, Bt, NULL, N, NULL);
                }
                for (int64_t t = s1 - 1; t >= s0; --t) { /* adjoint: lam_t = C_t gy_t + a_{t+1} lam_{t+1} */
                    const int64_t i = t - s0, row = (b * L + t) * Dd + c0;
                    const float *R Bt = Bm + (b * L + t) * N, *R Ct = Cm + (b * L + t) * N, *R dt = dts + i * W;
                    const int64_t out = (b * L + (order ? order[b * L + t] : t)) * Dd + c0;
                    for (int64_t w = 0; w < W; ++w) {
                        g[w] = w < nw ? gy[out + w] : 0.f;
                        du[w] = w < nw ? dt[w] * u[row + w] : 0.f;
                        lam_b[w] = gdt[w] = 0.f;
                    }
                    for (int64_t n = 0; n < N; ++n) {
                        const float *R a = as + i * tile + n * W, *R hp = hs + i * tile + n * W;
                        const float *R ht = hs + (i + 1) * tile + n * W, *R An = atj + n * W;
                        const float *R nx = (t + 1 < s1 ? as + (i + 1) * tile : anext) + n * W;
                        float *R ln = lam + n * W, *R gan = gat + n * W;
                        float *R scn = sc + i * tile + n * W, *R sbn = sb + i * tile + n * W;
                        const float bn = Bt[n], cn = Ct[n];
                        for (int64_t w = 0; w < W; ++w) {
                            const float l = cn * g[w] + nx[w] * ln[w];
                            const float gda = l * hp[w] * a[w]; /* dL/d(dt A) */
                            ln[w] = l;
                            scn[w] += g[w] * ht[w];
                            sbn[w] += l * du[w];
                            lam_b[w] += l * bn;
                            gan[w] += gda * dt[w];
                            gdt[w] += gda * An[w];
                        }
                    }
                    for (int64_t w = 0; w < nw; ++w) {
                        const int64_t d = c0 + w;
                        const float gd = (gdt[w] * LN2 + u[row + w] * lam_b[w]) * sigs[i * W + w]; /* An = A log2 e */
                        gdelta[row + w] = gd;
                        gu[row + w] = dt[w] * lam_b[w] + (D ? g[w] * D[d] : 0.f);
                        if (gbias) gbias[d] += gd;
                        if (gD) gD[d] += g[w] * u[row + w];
                    }
                }
                memcpy(anext, as, sizeof(float) * tile); /* the decay of step s0, read by the block before */
            }
            for (int64_t t = s0; t < s1; ++t) /* gC_t = sum_d gy_t h_t, gB_t = sum_d lam_t dt_t u_t */
                for (int64_t n = 0; n < N; ++n) {
                    const float *R scn = sc + (t - s0) * tile + n * W, *R sbn = sb + (t - s0) * tile + n * W;
                    float c = 0.f, bb = 0.f;
                    for (int64_t w = 0; w < W; ++w) {
                        c += scn[w];
                        bb += sbn[w];
                    }
                    gC[(b * L + t) * N + n] += c;
                    gB[(b * L + t) * N + n] += bb;
                }
        }
    }
    for (int64_t c = d0; c < d1; ++c)
        for (int64_t n = 0; n < N; ++n) gA[c * N + n] = m.gat[((c - d0) / W * N + n) * W + (c - d0) % W];
}

void scan_fwd(const float *u, const float *delta, const float *A, const float *Bm, const float *Cm,
              const float *D, const float *bias, const int64_t *order, int softplus, int64_t Bsz, int64_t L,
              int64_t Dd, int64_t N, int64_t S, int64_t d0, int64_t d1, float *y, float *ckpt) {
    const size_t tiles = (size_t)((d1 - d0 + W - 1) / W) * N * W;
    float *at = malloc(sizeof(float) * tiles), *hst = malloc(sizeof(float) * tiles);
    tile_A(A, N, d0, d1, at);
    if (N == 16) /* Mamba's d_state: a constant trip count unrolls the state loops into whole vectors */
        fwd_body(u, delta, Bm, Cm, D, bias, order, softplus, Bsz, L, Dd, 16, S, d0, d1, y, ckpt, at, hst);
    else
        fwd_body(u, delta, Bm, Cm, D, bias, order, softplus, Bsz, L, Dd, N, S, d0, d1, y, ckpt, at, hst);
    free(at);
    free(hst);
}

void scan_bwd(const float *u, const float *delta, const float *A, const float *Bm, const float *Cm,
              const float *D, const float *bias, const int64_t *order, int softplus, int64_t Bsz, int64_t L,
              int64_t Dd, int64_t N, int64_t S, int64_t d0, int64_t d1, const float *gy, const float *ckpt, float *gu,
              float *gdelta, float *gA, float *gB, float *gC, float *gD, float *gbias) {
    const size_t tiles = (size_t)((d1 - d0 + W - 1) / W) * N * W, tile = (size_t)N * W;
    float *at = malloc(sizeof(float) * tiles);
    bwd_bufs m = {malloc(sizeof(float) * tiles), malloc(sizeof(float) * tiles), malloc(sizeof(float) * tiles),
                  malloc(sizeof(float) * S * tile), malloc(sizeof(float) * (S + 1) * tile),
                  malloc(sizeof(float) * S * W), malloc(sizeof(float) * S * W), malloc(sizeof(float) * S * tile),
                  malloc(sizeof(float) * S * tile)};
    tile_A(A, N, d0, d1, at);
    if (N == 16)
        bwd_body(u, delta, Bm, Cm, D, bias, order, softplus, Bsz, L, Dd, 16, S, d0, d1, gy, ckpt, at, gu, gdelta, gA,
                 gB, gC, gD, gbias, m);
    else
        bwd_body(u, delta, Bm, Cm, D, bias, order, softplus, Bsz, L, Dd, N, S, d0, d1, gy, ckpt, at, gu, gdelta, gA,
                 gB, gC, gD, gbias, m);
    free(at);
    float *bufs[] = {m.lam, m.anext, m.gat, m.as, m.hs, m.dts, m.sigs, m.sc, m.sb};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); ++i) free(bufs[i]);
}
