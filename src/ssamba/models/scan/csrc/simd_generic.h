// Portable 8-lane "vectors" of plain floats: the fallback for CPUs without AVX2 (the compiler may still
// vectorise the lane loops for the baseline instruction set).  Same interface as simd_avx2.h.
#pragma once
#include <cstdint>

#define SSAMBA_NS generic

namespace ssamba {
namespace generic {

struct V {
  float v[8];
  static constexpr int W = 8;
};
using Mask = int;

#define SSAMBA_LANES for (int i = 0; i < V::W; ++i)

static inline V set1(float x) { V r; SSAMBA_LANES r.v[i] = x; return r; }
static inline V zero() { return set1(0.0f); }
static inline Mask make_mask(int n) { return n; }
static inline V load(const float* p) { V r; SSAMBA_LANES r.v[i] = p[i]; return r; }
static inline void store(float* p, V a) { SSAMBA_LANES p[i] = a.v[i]; }
static inline V loadm(const float* p, Mask m) { V r; SSAMBA_LANES r.v[i] = i < m ? p[i] : 0.0f; return r; }
static inline void storem(float* p, V a, Mask m) { for (int i = 0; i < m; ++i) p[i] = a.v[i]; }

static inline V operator+(V a, V b) { SSAMBA_LANES a.v[i] += b.v[i]; return a; }
static inline V operator-(V a, V b) { SSAMBA_LANES a.v[i] -= b.v[i]; return a; }
static inline V operator*(V a, V b) { SSAMBA_LANES a.v[i] *= b.v[i]; return a; }
static inline V operator/(V a, V b) { SSAMBA_LANES a.v[i] /= b.v[i]; return a; }
static inline V operator-(V a) { SSAMBA_LANES a.v[i] = -a.v[i]; return a; }
// a*b+c: a libm fmaf call would be far slower than the extra rounding on CPUs without FMA.
static inline V fmadd(V a, V b, V c) { SSAMBA_LANES a.v[i] = a.v[i] * b.v[i] + c.v[i]; return a; }
// Same NaN behaviour as the x86 instructions: the second operand is returned when the comparison fails.
static inline V vmax(V a, V b) { SSAMBA_LANES a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i]; return a; }
static inline V vmin(V a, V b) { SSAMBA_LANES a.v[i] = a.v[i] < b.v[i] ? a.v[i] : b.v[i]; return a; }
static inline V vabs(V a) { SSAMBA_LANES a.v[i] = __builtin_fabsf(a.v[i]); return a; }
// t = k + f with k = floor(t), f in [0, 1): rounded by the 1.5 * 2^23 shift (not folded away without
// -ffast-math), then one less where that rounded up; t clamped to [-252, 254] first (NaN passes through).
static inline void split_floor(V t, V& k, V& f) {
  const float magic = 12582912.0f;
  t = vmin(set1(254.0f), vmax(set1(-252.0f), t));
  SSAMBA_LANES {
    const float r = (t.v[i] + magic) - magic;  // round to nearest; one less where that rounded up: floor
    k.v[i] = r > t.v[i] ? r - 1.0f : r;
  }
  f = t - k;
}
static inline float pow2i(int32_t k) {  // 2^k for k in [-126, 127]
  uint32_t bits = (uint32_t)(k + 127) << 23;
  float r;
  __builtin_memcpy(&r, &bits, sizeof r);
  return r;
}
static inline V ldexp2(V p, V k) {
  SSAMBA_LANES {
    float kf = k.v[i];
    if (kf != kf) { p.v[i] = kf; continue; }
    int32_t ki = (int32_t)kf, k1 = ki >> 1, k2 = ki - k1;
    p.v[i] = p.v[i] * pow2i(k1) * pow2i(k2);
  }
  return p;
}

static inline V recip_near1(V y) { SSAMBA_LANES y.v[i] = 1.0f / y.v[i]; return y; }
// x >= 0 ? a : b (b for NaN x)
static inline V select_ge0(V x, V a, V b) { SSAMBA_LANES a.v[i] = x.v[i] >= 0.0f ? a.v[i] : b.v[i]; return a; }

// bfloat16 activations: widen by a shift; narrow with round-to-nearest-even (NaN kept a quiet NaN).
static inline V load_bf16(const uint16_t* p, Mask m) {
  V r;
  SSAMBA_LANES {
    uint32_t bits = i < m ? (uint32_t)p[i] << 16 : 0u;
    __builtin_memcpy(&r.v[i], &bits, sizeof bits);
  }
  return r;
}
static inline void store_bf16(uint16_t* p, V a, Mask m) {
  for (int i = 0; i < m; ++i) {
    uint32_t bits;
    __builtin_memcpy(&bits, &a.v[i], sizeof bits);
    bits = a.v[i] != a.v[i] ? 0x7fc00000u : bits + 0x7fffu + ((bits >> 16) & 1u);
    p[i] = (uint16_t)(bits >> 16);
  }
}

static inline float hsum(V a) { float s = 0.0f; SSAMBA_LANES s += a.v[i]; return s; }
// acc[i] += lane i of a, in double.
static inline void add_to_double(double* acc, V a) { SSAMBA_LANES acc[i] += (double)a.v[i]; }
static inline void reduce_lanes(const V* parts, int count, float* out, bool accumulate) {
  for (int i = 0; i < count; ++i) out[i] = accumulate ? out[i] + hsum(parts[i]) : hsum(parts[i]);
}

#undef SSAMBA_LANES

}  // namespace generic
}  // namespace ssamba
