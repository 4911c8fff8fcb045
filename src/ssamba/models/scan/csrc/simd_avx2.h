// 8-lane float vectors on AVX2 + FMA.  Included only by isa_avx2.cpp, compiled for that target.
#pragma once
#include <immintrin.h>
#include <cstdint>

#define SSAMBA_NS avx2

namespace ssamba {
namespace avx2 {

struct V {
  __m256 v;
  static constexpr int W = 8;
};
struct Mask {  // lane mask, and the lane count for the loads AVX2 has no masked form of
  __m256i m;
  int n;
};

static inline V set1(float x) { return {_mm256_set1_ps(x)}; }
static inline V zero() { return {_mm256_setzero_ps()}; }
static inline Mask make_mask(int n) {
  return {_mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)), n};
}
static inline V load(const float* p) { return {_mm256_loadu_ps(p)}; }
static inline void store(float* p, V a) { _mm256_storeu_ps(p, a.v); }
static inline V loadm(const float* p, Mask m) { return {_mm256_maskload_ps(p, m.m)}; }
static inline void storem(float* p, V a, Mask m) { _mm256_maskstore_ps(p, m.m, a.v); }

static inline V operator+(V a, V b) { return {_mm256_add_ps(a.v, b.v)}; }
static inline V operator-(V a, V b) { return {_mm256_sub_ps(a.v, b.v)}; }
static inline V operator*(V a, V b) { return {_mm256_mul_ps(a.v, b.v)}; }
static inline V operator/(V a, V b) { return {_mm256_div_ps(a.v, b.v)}; }
static inline V operator-(V a) { return {_mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f))}; }
static inline V fmadd(V a, V b, V c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
static inline V vmax(V a, V b) { return {_mm256_max_ps(a.v, b.v)}; }
static inline V vmin(V a, V b) { return {_mm256_min_ps(a.v, b.v)}; }
static inline V vabs(V a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)}; }
// t = k + f with k = floor(t), f in [0, 1), t clamped to [-252, 254] first (max(lo, t): NaN passes through).
static inline void split_floor(V t, V& k, V& f) {
  t = vmin(set1(254.0f), vmax(set1(-252.0f), t));
  k.v = _mm256_round_ps(t.v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  f = t - k;
}

// p * 2^k for integer-valued k in [-252, 254]: two exact power-of-two factors, so that results down in the
// subnormal range and overflow to inf come out right.
static inline V ldexp2(V p, V k) {
  __m256i ki = _mm256_cvtps_epi32(k.v);
  __m256i k1 = _mm256_srai_epi32(ki, 1);
  __m256i k2 = _mm256_sub_epi32(ki, k1);
  const __m256i bias = _mm256_set1_epi32(127);
  __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23));
  __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, bias), 23));
  return {_mm256_mul_ps(_mm256_mul_ps(p.v, s1), s2)};
}

static inline V recip_near1(V y) { return {_mm256_div_ps(_mm256_set1_ps(1.0f), y.v)}; }
// x >= 0 ? a : b (b for NaN x)
static inline V select_ge0(V x, V a, V b) {
  return {_mm256_blendv_ps(b.v, a.v, _mm256_cmp_ps(x.v, _mm256_setzero_ps(), _CMP_GE_OQ))};
}

// bfloat16 activations: widen by a shift; narrow with round-to-nearest-even (NaN kept a quiet NaN).
static inline V load_bf16(const uint16_t* p, Mask m) {
  alignas(16) uint16_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const uint16_t* src = p;
  if (m.n < 8) {
    for (int i = 0; i < m.n; ++i) tmp[i] = p[i];
    src = tmp;
  }
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
}
static inline void store_bf16(uint16_t* p, V a, Mask m) {
  const __m256i bits = _mm256_castps_si256(a.v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
  const __m256 nan = _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q);
  const __m256 qnan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000));
  r = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r), qnan, nan));
  alignas(32) int32_t tmp[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), _mm256_srli_epi32(r, 16));
  for (int i = 0; i < m.n; ++i) p[i] = (uint16_t)tmp[i];
}

static inline float hsum(V a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// acc[i] += lane i of a, in double (acc: 8 doubles, 32-byte aligned).
static inline void add_to_double(double* acc, V a) {
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(a.v));
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(a.v, 1));
  _mm256_store_pd(acc, _mm256_add_pd(_mm256_load_pd(acc), lo));
  _mm256_store_pd(acc + 4, _mm256_add_pd(_mm256_load_pd(acc + 4), hi));
}

static inline void reduce_lanes(const V* parts, int count, float* out, bool accumulate) {
  for (int i = 0; i < count; ++i) out[i] = accumulate ? out[i] + hsum(parts[i]) : hsum(parts[i]);
}

}  // namespace avx2
}  // namespace ssamba
