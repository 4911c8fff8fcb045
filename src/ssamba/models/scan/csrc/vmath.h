// Vectorised exp2/exp/sigmoid/softplus on the V type of the including instruction-set file, or on groups of
// them (VG, vgroup.h).
// Written for accuracy without -ffast-math (which would let the compiler break the range reduction):
// exp2 reaches ~1e-7 relative error and is exactly 1 at 0, so long products of decays close to 1 stay unbiased.
#pragma once
#include "vgroup.h"

namespace ssamba {
namespace SSAMBA_NS {

// 2^f on [0, 1], degree 5 with p(0) = 1 and p(1) = 2 exactly: minimax fit of the relative error, max 1.7e-7 in
// float32 (about 2 ulp, like the __expf of mamba_ssm's CUDA kernels).  The exact ends keep long products of
// decays close to 1 (t -> 0 from below: f -> 1, k = -1) unbiased.  (Degree 6 would reach ~1e-8 for one more FMA
// per state update, ~8% of the scan.)
constexpr float kP1 = 0.6931517124176025f, kP2 = 0.240159273147583f, kP3 = 0.05581867694854736f,
                kP4 = 0.008990994654595852f, kP5 = 0.001879318617284298f;
constexpr float kLog2e = 1.4426950408889634f;

// 2^t = 2^k * 2^f with k = floor(t), f in [0, 1) (split_floor is per instruction set and also keeps k in the
// range ldexp2 handles, passing NaN through).
template <class T>
SSAMBA_INLINE T exp2v(T t) {
  T k, f;
  split_floor(t, k, f);
  T p = fmadd(splat<T>(kP5), f, splat<T>(kP4));
  p = fmadd(p, f, splat<T>(kP3));
  p = fmadd(p, f, splat<T>(kP2));
  p = fmadd(p, f, splat<T>(kP1));
  p = fmadd(p, f, splat<T>(1.0f));
  return ldexp2(p, k);
}

template <class T>
SSAMBA_INLINE T expv(T x) { return exp2v(x * splat<T>(kLog2e)); }

// e^{-|x|} in (0, 1]: shared by the sigmoid and the softplus of the same x, and keeps every denominator
// below in [1, 3], where recip_near1 is accurate (no inf/0 special cases).
template <class T>
SSAMBA_INLINE T exp_neg_abs(T x) { return exp2v(vabs(x) * splat<T>(-kLog2e)); }

// sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) otherwise, with e = e^{-|x|}.
template <class T>
SSAMBA_INLINE T sigmoid_from(T x, T e) { return select_ge0(x, splat<T>(1.0f), e) * recip_near1(splat<T>(1.0f) + e); }
template <class T>
SSAMBA_INLINE T sigmoidv(T x) { return sigmoid_from(x, exp_neg_abs(x)); }

// log(1 + e) for e in [0, 1] as 2 atanh(s) = s g(s^2), s = e / (2 + e) <= 1/3: no cancellation.  g is a
// least-squares fit of the relative error on [0, 1/9] (max 7e-8 in float32; g(0) = 2 exactly).
template <class T>
SSAMBA_INLINE T log1p_unit(T e) {
  T s = e * recip_near1(splat<T>(2.0f) + e);
  T w = s * s;
  T p = fmadd(splat<T>(0.2816145420074463f), w, splat<T>(0.2796434462070465f));
  p = fmadd(p, w, splat<T>(0.4002465009689331f));
  p = fmadd(p, w, splat<T>(0.6666632294654846f));
  p = fmadd(p, w, splat<T>(2.0f));
  return p * s;
}

// softplus(x) = max(x, 0) + log1p(e^{-|x|}); equals torch's (threshold 20) to float32 precision.
template <class T>
SSAMBA_INLINE T softplus_from(T x, T e) { return vmax(splat<T>(0.0f), x) + log1p_unit(e); }
template <class T>
SSAMBA_INLINE T softplusv(T x) { return softplus_from(x, exp_neg_abs(x)); }

}  // namespace SSAMBA_NS
}  // namespace ssamba
