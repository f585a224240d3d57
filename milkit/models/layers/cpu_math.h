/* Shared helpers of milkit's C kernels (selective_scan_cpu.c, mamba_cpu.c). */
#ifndef MILKIT_CPU_MATH_H
#define MILKIT_CPU_MATH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define R restrict
#define INLINE static inline __attribute__((always_inline))

/* 2^y in float32 in a form the vectoriser inlines (glibc's libmvec expf is a call per vector, several times
 * slower in these loops): y = k + f with k = rint(y), |f| <= 1/2, a degree-5 minimax polynomial for 2^f
 * (relative error 2.4e-7, 2 ulp), 2^k from the exponent bits. y is clamped to [-126, 127], so 2^y underflows to
 * about 1e-38 instead of 0. */
INLINE float fast_exp2(float y) {
    y = fminf(fmaxf(y, -126.f), 127.f);
    const float k = rintf(y), f = y - k;
    float p = 1.327647129e-3f;
    p = p * f + 9.675541893e-3f;
    p = p * f + 5.550713092e-2f;
    p = p * f + 2.402212024e-1f;
    p = p * f + 6.931469440e-1f;
    p = p * f + 1.f;
    const int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

#define LOG2E 1.44269504088896341f
#define LN2 0.693147180559945309f

INLINE float fast_exp(float x) { return fast_exp2(x * LOG2E); }

/* One step of the scan for a tile of 16 channels (states laid out [n][16]), n < N:
 *   a_n = 2^(dt at_n),  h_n = a_n hp_n + du B_n  -> ht (hp == ht: in place),  a -> a_out,  sum_n C_n h_n -> acc
 * (a_out, Ct may be NULL). With AVX-512, scalef computes p 2^k with the range handled (underflow to 0, overflow to
 * inf, NaN kept): four fewer vector ops per state than the portable version, which the vectoriser compiles. */
#if defined(__AVX512F__)
#include <immintrin.h>
INLINE __m512 exp2_ps(__m512 v) {
    v = _mm512_max_ps(_mm512_set1_ps(-150.f), v);
    const __m512 k = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(v, k);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.327647129e-3f), f, _mm512_set1_ps(9.675541893e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550713092e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402212024e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931469440e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, k);
}

INLINE void state_step16(const float *R dt, const float *R du, const float *R at, const float *hp, float *ht,
                         float *R a_out, const float *R Bt, const float *R Ct, int64_t N, float *R acc) {
    const __m512 vdt = _mm512_loadu_ps(dt), vdu = _mm512_loadu_ps(du);
    __m512 vacc = _mm512_setzero_ps();
    for (int64_t n = 0; n < N; ++n) {
        const __m512 a = exp2_ps(_mm512_mul_ps(vdt, _mm512_loadu_ps(at + n * 16)));
        const __m512 h = _mm512_fmadd_ps(a, _mm512_loadu_ps(hp + n * 16), _mm512_mul_ps(vdu, _mm512_set1_ps(Bt[n])));
        _mm512_storeu_ps(ht + n * 16, h);
        if (a_out) _mm512_storeu_ps(a_out + n * 16, a);
        if (Ct) vacc = _mm512_fmadd_ps(h, _mm512_set1_ps(Ct[n]), vacc);
    }
    if (Ct) _mm512_storeu_ps(acc, vacc);
}
#else
INLINE void state_step16(const float *R dt, const float *R du, const float *R at, const float *hp, float *ht,
                         float *R a_out, const float *R Bt, const float *R Ct, int64_t N, float *R acc) {
    if (Ct)
        for (int w = 0; w < 16; ++w) acc[w] = 0.f;
    for (int64_t n = 0; n < N; ++n)
        for (int w = 0; w < 16; ++w) {
            const float a = fast_exp2(dt[w] * at[n * 16 + w]), h = a * hp[n * 16 + w] + du[w] * Bt[n];
            ht[n * 16 + w] = h;
            if (a_out) a_out[n * 16 + w] = a;
            if (Ct) acc[w] += Ct[n] * h;
        }
}
#endif

/* log(1 + e^x) for float32 without libm calls: max(x, 0) + log1p(e), e = e^-|x| in (0, 1], with
 * log1p(e) = 2 atanh(s) = 2 (s + s^3/3 + ... + s^15/15), s = e / (2 + e) in (0, 1/3] (truncation < 2e-8). */
INLINE float fast_softplus(float x, float e) {
    const float s = e / (2.f + e), s2 = s * s;
    float p = 1.f / 15.f;
    p = p * s2 + 1.f / 13.f;
    p = p * s2 + 1.f / 11.f;
    p = p * s2 + 1.f / 9.f;
    p = p * s2 + 1.f / 7.f;
    p = p * s2 + 1.f / 5.f;
    p = p * s2 + 1.f / 3.f;
    p = p * s2 + 1.f;
    return fmaxf(x, 0.f) + 2.f * s * p;
}

/* the logistic sigmoid (SiLU(x) = x sigmoid(x), SiLU'(x) = s (1 + x (1 - s))) */
INLINE float sigmoid(float x) { return 1.f / (1.f + fast_exp(-x)); }

#endif
