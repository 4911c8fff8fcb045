// 16-lane float vectors on AVX-512 (F, DQ).  Included only by isa_avx512.cpp and isa_avx512bf16.cpp (which
// defines SSAMBA_AVX512_BF16: the same kernels with AVX512-BF16's conversion instruction), each compiled for its
// target; the namespaces differ so that the linker never merges the two builds' inline functions.
#pragma once
#include <immintrin.h>
#include <cstdint>

#ifdef SSAMBA_AVX512_BF16
#define SSAMBA_NS avx512bf16
#else
#define SSAMBA_NS avx512
#endif

// the forward scan's exps four states at a time (scan_kernels.h, exp_group): 32 registers have room for it
#define SSAMBA_EXP_GROUP 4

namespace ssamba {
namespace SSAMBA_NS {

struct V {
  __m512 v;
  static constexpr int W = 16;
};
using Mask = __mmask16;

static inline V set1(float x) { return {_mm512_set1_ps(x)}; }
static inline V zero() { return {_mm512_setzero_ps()}; }
static inline Mask make_mask(int n) { return (Mask)((1u << n) - 1u); }
static inline V load(const float* p) { return {_mm512_loadu_ps(p)}; }
static inline void store(float* p, V a) { _mm512_storeu_ps(p, a.v); }
static inline V loadm(const float* p, Mask m) { return {_mm512_maskz_loadu_ps(m, p)}; }
static inline void storem(float* p, V a, Mask m) { _mm512_mask_storeu_ps(p, m, a.v); }

static inline V operator+(V a, V b) { return {_mm512_add_ps(a.v, b.v)}; }
static inline V operator-(V a, V b) { return {_mm512_sub_ps(a.v, b.v)}; }
static inline V operator*(V a, V b) { return {_mm512_mul_ps(a.v, b.v)}; }
static inline V operator/(V a, V b) { return {_mm512_div_ps(a.v, b.v)}; }
static inline V operator-(V a) { return {_mm512_xor_ps(a.v, _mm512_set1_ps(-0.0f))}; }
static inline V fmadd(V a, V b, V c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
// x86 max/min semantics: when either operand is NaN the second one is returned.
static inline V vmax(V a, V b) { return {_mm512_max_ps(a.v, b.v)}; }
static inline V vmin(V a, V b) { return {_mm512_min_ps(a.v, b.v)}; }
static inline V vabs(V a) { return {_mm512_abs_ps(a.v)}; }
// t = k + f with f = t - floor(t) in [0, 1): vreduceps (round-down mode) computes f exactly in one instruction
// (0 for +-inf, so exp2 needs no clamp).  k is t itself: ldexp2's vscalefps floors its exponent operand, which
// saves the subtraction k = t - f.
static inline void split_floor(V t, V& k, V& f) {
  f.v = _mm512_reduce_ps(t.v, _MM_FROUND_TO_NEG_INF);
  k = t;
}
// p * 2^floor(k); scalef handles overflow to inf and gradual underflow itself.
static inline V ldexp2(V p, V k) { return {_mm512_scalef_ps(p.v, k.v)}; }

// 1 / y for y in [1, 4] (or NaN): rcp14 plus one Newton step (~1 ulp), far cheaper than vdivps.
static inline V recip_near1(V y) {
  __m512 r = _mm512_rcp14_ps(y.v);
  return {_mm512_mul_ps(r, _mm512_fnmadd_ps(y.v, r, _mm512_set1_ps(2.0f)))};
}
// x >= 0 ? a : b (b for NaN x)
static inline V select_ge0(V x, V a, V b) {
  return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(x.v, _mm512_setzero_ps(), _CMP_GE_OQ), b.v, a.v)};
}

// bfloat16 activations are the upper half of a float32: widen by a shift; narrow with round-to-nearest-even
// (NaN kept a quiet NaN).
static inline V load_bf16(const uint16_t* p, Mask m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
}
static inline void store_bf16(uint16_t* p, V a, Mask m) {
#ifdef SSAMBA_AVX512_BF16
  // vcvtneps2bf16: the same rounding in one instruction instead of eight (SSAMBA-tiny's bf16 forward ~3% faster),
  // except that it reads float32 denormals (|x| < 1.2e-38) as zero
  _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(a.v));
#else
  const __m512i bits = _mm512_castps_si512(a.v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7fc00000));
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
#endif
}

static inline float hsum(V a) { return _mm512_reduce_add_ps(a.v); }

// acc[i] += lane i of a, in double (acc: 16 doubles, 64-byte aligned).
static inline void add_to_double(double* acc, V a) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(a.v));
  const __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(a.v, 1));
  _mm512_store_pd(acc, _mm512_add_pd(_mm512_load_pd(acc), lo));
  _mm512_store_pd(acc + 8, _mm512_add_pd(_mm512_load_pd(acc + 8), hi));
}

// Horizontal sums of 16 vectors into one vector (lane i = sum of parts[i]) by a pairwise tree of lane shuffles:
// 15 adds and 30 permutes instead of 16 separate reductions.
static inline V hsum16(const V* parts) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  __m512 level[16];
  for (int i = 0; i < 16; ++i) level[i] = parts[i].v;
  for (int count = 16; count > 1; count /= 2) {
    for (int i = 0; i < count / 2; ++i) {
      __m512 a = level[2 * i], b = level[2 * i + 1];
      level[i] = _mm512_add_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
    }
  }
  return {level[0]};
}

// out[i] = sum of the lanes of parts[i], i < count (accumulate: out[i] += that sum).
static inline void reduce_lanes(const V* parts, int count, float* out, bool accumulate) {
  int i = 0;
  for (; i + 16 <= count; i += 16) {
    const V sums = hsum16(parts + i);
    store(out + i, accumulate ? load(out + i) + sums : sums);
  }
  for (; i < count; ++i) out[i] = accumulate ? out[i] + hsum(parts[i]) : hsum(parts[i]);
}

}  // namespace SSAMBA_NS
}  // namespace ssamba
