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

// e^{-|x|} in (0, 1]: shared by the sigmoid and the softplus of the same x, and keeps every denominator
// below in [1, 3], where recip_near1 is accurate (no inf/0 special cases).
static inline V exp_neg_abs(V x) { return exp2v(vabs(x) * set1(-kLog2e)); }

// sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) otherwise, with e = e^{-|x|}.
static inline V sigmoid_from(V x, V e) { return select_ge0(x, set1(1.0f), e) * recip_near1(set1(1.0f) + e); }
static inline V sigmoidv(V x) { return sigmoid_from(x, exp_neg_abs(x)); }

// log(1 + e) for e in [0, 1] as 2 atanh(s) = s g(s^2), s = e / (2 + e) <= 1/3: no cancellation.  g is a
// least-squares fit of the relative error on [0, 1/9] (max 7e-8 in float32; g(0) = 2 exactly).
static inline V log1p_unit(V e) {
  V s = e * recip_near1(set1(2.0f) + e);
  V w = s * s;
  V p = fmadd(set1(0.2816145420074463f), w, set1(0.2796434462070465f));
  p = fmadd(p, w, set1(0.4002465009689331f));
  p = fmadd(p, w, set1(0.6666632294654846f));
  p = fmadd(p, w, set1(2.0f));
  return p * s;
}

// softplus(x) = max(x, 0) + log1p(e^{-|x|}); equals torch's (threshold 20) to float32 precision.
static inline V softplus_from(V x, V e) { return vmax(zero(), x) + log1p_unit(e); }
static inline V softplusv(V x) { return softplus_from(x, exp_neg_abs(x)); }

}  // namespace SSAMBA_NS
}  // namespace ssamba
