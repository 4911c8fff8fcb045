// Groups of G vectors processed in lockstep.  Long dependency chains (exp, reciprocal, polynomials) of
// independent elements otherwise fill the out-of-order scheduler one chain at a time; computing every step of
// the chain for G vectors before the next step puts G independent instructions side by side.
#pragma once

// Force-inlined: GCC otherwise keeps some group math (exp, log1p on VG<4>) as out-of-line calls that pass the
// G vectors through memory (the conv forward ran 2x its arithmetic cost that way).
#define SSAMBA_INLINE static inline __attribute__((always_inline))

namespace ssamba {
namespace SSAMBA_NS {

template <int G>
struct VG {
  V v[G];
};

#define SSAMBA_G for (int i = 0; i < G; ++i)
template <int G> SSAMBA_INLINE VG<G> operator+(VG<G> a, const VG<G>& b) { SSAMBA_G a.v[i] = a.v[i] + b.v[i]; return a; }
template <int G> SSAMBA_INLINE VG<G> operator-(VG<G> a, const VG<G>& b) { SSAMBA_G a.v[i] = a.v[i] - b.v[i]; return a; }
template <int G> SSAMBA_INLINE VG<G> operator*(VG<G> a, const VG<G>& b) { SSAMBA_G a.v[i] = a.v[i] * b.v[i]; return a; }
template <int G> SSAMBA_INLINE VG<G> operator-(VG<G> a) { SSAMBA_G a.v[i] = -a.v[i]; return a; }
template <int G> SSAMBA_INLINE VG<G> fmadd(VG<G> a, const VG<G>& b, const VG<G>& c) {
  SSAMBA_G a.v[i] = fmadd(a.v[i], b.v[i], c.v[i]);
  return a;
}
template <int G> SSAMBA_INLINE VG<G> vmax(VG<G> a, const VG<G>& b) { SSAMBA_G a.v[i] = vmax(a.v[i], b.v[i]); return a; }
template <int G> SSAMBA_INLINE VG<G> vabs(VG<G> a) { SSAMBA_G a.v[i] = vabs(a.v[i]); return a; }
template <int G> SSAMBA_INLINE void split_floor(const VG<G>& t, VG<G>& k, VG<G>& f) {
  SSAMBA_G split_floor(t.v[i], k.v[i], f.v[i]);
}
template <int G> SSAMBA_INLINE VG<G> ldexp2(VG<G> p, const VG<G>& k) {
  SSAMBA_G p.v[i] = ldexp2(p.v[i], k.v[i]);
  return p;
}
template <int G> SSAMBA_INLINE VG<G> recip_near1(VG<G> y) { SSAMBA_G y.v[i] = recip_near1(y.v[i]); return y; }
template <int G> SSAMBA_INLINE VG<G> select_ge0(const VG<G>& x, const VG<G>& a, VG<G> b) {
  SSAMBA_G b.v[i] = select_ge0(x.v[i], a.v[i], b.v[i]);
  return b;
}
#undef SSAMBA_G

// splat<T>(x): x in every lane of a V or a VG.
template <class T> struct Splat;
template <> struct Splat<V> {
  static V of(float x) { return set1(x); }
};
template <int G> struct Splat<VG<G>> {
  static VG<G> of(float x) {
    VG<G> r;
    for (int i = 0; i < G; ++i) r.v[i] = set1(x);
    return r;
  }
};
template <class T> SSAMBA_INLINE T splat(float x) { return Splat<T>::of(x); }

}  // namespace SSAMBA_NS
}  // namespace ssamba
