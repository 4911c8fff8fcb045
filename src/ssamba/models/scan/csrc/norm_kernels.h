// Residual add + LayerNorms between SSAMBA's block pairs, for inference, one pass per row:
//   h = h1 + h2 (rounded to bfloat16 first when the mixers returned bfloat16, as torch's bf16 add does)
//   r = (prev + prev) + h        (the pair doubles the residual, quirk Q3; r = h for the first pair)
//   out_k = LayerNorm_k(r)       (the next pair's two norms, or the final norm)
// In PyTorch these are 3 adds and 2 layer_norm calls, each a pass over the sequence plus Python dispatch.
// The additions happen in the same order as in ssamba.py, so r is the same bit for bit; the norms round like
// torch's to within an ulp or two (two-pass mean and variance in float32, like its float path).
#pragma once
#include <cmath>

#include "args.h"

namespace ssamba {
namespace SSAMBA_NS {
namespace {

template <bool kBf16>
void add_norms_rows_t(const NormArgs& a, int64_t row0, int64_t row1) {
  const int64_t D = a.dim;
  const float inv_d = 1.0f / (float)D;
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t off = row * D;
    float* r = a.r + off;
    V sum = zero();
    for (int64_t c = 0; c < D; c += V::W) {
      const Mask m = make_mask(D - c < V::W ? (int)(D - c) : V::W);
      V h = load_act<kBf16>(a.h1, off + c, m);
      if (a.h2) {
        h = h + load_act<kBf16>(a.h2, off + c, m);
        if (kBf16) {  // the sum of two bf16 tensors is a bf16 tensor
          alignas(64) uint16_t tmp[V::W];
          store_bf16(tmp, h, m);
          h = load_bf16(tmp, m);
        }
      }
      if (a.prev) {
        const V p = loadm(a.prev + off + c, m);
        h = (p + p) + h;
      }
      storem(r + c, h, m);
      sum = sum + h;
    }
    const float mean = hsum(sum) * inv_d;
    alignas(64) float mean_lanes[V::W];
    for (int i = 0; i < V::W; ++i) mean_lanes[i] = mean;
    V sq = zero();
    for (int64_t c = 0; c < D; c += V::W) {
      const Mask m = make_mask(D - c < V::W ? (int)(D - c) : V::W);
      const V d = loadm(r + c, m) - loadm(mean_lanes, m);  // lanes past D: 0 - 0
      sq = fmadd(d, d, sq);
    }
    const float var = hsum(sq) * inv_d;  // two passes: no cancellation, never negative
    const float rstd = 1.0f / std::sqrt(var + a.eps);
    const V scale = set1(rstd), shift = set1(-mean * rstd);
    for (int k = 0; k < a.nnorms; ++k) {
      for (int64_t c = 0; c < D; c += V::W) {
        const Mask m = make_mask(D - c < V::W ? (int)(D - c) : V::W);
        const V x = fmadd(loadm(r + c, m), scale, shift);
        const V y = fmadd(x, loadm(a.weight[k] + c, m), loadm(a.bias[k] + c, m));
        if (a.out_bf16) store_bf16(static_cast<uint16_t*>(a.out[k]) + off + c, y, m);
        else storem(static_cast<float*>(a.out[k]) + off + c, y, m);
      }
    }
  }
}

void add_norms_rows(const NormArgs& a, int64_t row0, int64_t row1) {
  if (a.h_bf16) add_norms_rows_t<true>(a, row0, row1);
  else add_norms_rows_t<false>(a, row0, row1);
}

}  // namespace
}  // namespace SSAMBA_NS
}  // namespace ssamba
