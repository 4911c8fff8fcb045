// Vectorised exp2/exp/sigmoid/softplus on the V type of the including instruction-set file.
// Written for accuracy without -ffast-math (which would let the compiler break the range reduction):
// exp2 reaches ~1e-7 relative error and is exactly 1 at 0, so long products of decays close to 1 stay unbiased.
#pragma once

namespace ssamba {
namespace SSAMBA_NS {

// 2^f on [-1/2, 1/2] with p(0) = 1 exactly: least-squares fit of the relative error, max 8e-8 in float32.
constexpr float kP1 = 0.6931471824645996f, kP2 = 0.24022647738456726f, kP3 = 0.05550329014658928f,
                kP4 = 0.009618373587727547f, kP5 = 0.0013399848248809576f, kP6 = 0.00015370704932138324f;
constexpr float kLog2e = 1.4426950408889634f;

// 2^t = 2^k * 2^f with k = round(t), |f| <= 1/2 (split_round is per instruction set and also keeps k in the
// range ldexp2 handles, passing NaN through).
static inline V exp2v(V t) {
  V k, f;
  split_round(t, k, f);
  V p = fmadd(set1(kP6), f, set1(kP5));
  p = fmadd(p, f, set1(kP4));
  p = fmadd(p, f, set1(kP3));
  p = fmadd(p, f, set1(kP2));
  p = fmadd(p, f, set1(kP1));
  p = fmadd(p, f, set1(1.0f));
  return ldexp2(p, k);
}

static inline V expv(V x) { return exp2v(x * set1(kLog2e)); }

static inline V sigmoidv(V x) { return set1(1.0f) / (set1(1.0f) + expv(-x)); }

// log(1 + e) for e in [0, 1] as 2 atanh(s), s = e / (2 + e) <= 1/3: no cancellation, series error < 2e-9.
static inline V log1p_unit(V e) {
  V s = e / (set1(2.0f) + e);
  V s2 = s * s;
  V p = set1(2.0f / 17);
  p = fmadd(p, s2, set1(2.0f / 15));
  p = fmadd(p, s2, set1(2.0f / 13));
  p = fmadd(p, s2, set1(2.0f / 11));
  p = fmadd(p, s2, set1(2.0f / 9));
  p = fmadd(p, s2, set1(2.0f / 7));
  p = fmadd(p, s2, set1(2.0f / 5));
  p = fmadd(p, s2, set1(2.0f / 3));
  p = fmadd(p, s2, set1(2.0f));
  return p * s;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)); equals torch's (threshold 20) to float32 precision.
static inline V softplusv(V x) { return vmax(zero(), x) + log1p_unit(expv(-vabs(x))); }

}  // namespace SSAMBA_NS
}  // namespace ssamba
