// Depthwise conv + SiLU of the bidirectional mixer, both directions in one pass over x (channels-last):
//   y_f[l] = silu(b_f + sum_k w_f[k] x[l - (K-1) + k])    causal: the forward branch
//   y_b[l] = silu(b_b + sum_k w_b[k] x[l + (K-1) - k])    anti-causal: the time-flipped branch, left unflipped
// Both read the same window x[i-K+1 .. i], so one sliding window serves both (y_b lags K-1 steps behind).
// A task covers rows [r0, r1) of every channel block (plus a K-1 row halo): whole rows stay in cache while
// the blocks sweep them, instead of one cache line per row streamed over the full length.
#pragma once
#include "args.h"

namespace ssamba {
namespace SSAMBA_NS {
namespace {

struct ConvBlock {
  BlockInfo bi;
  int K;
  V wf[kMaxConv], wb[kMaxConv], bf, bb;
};

inline ConvBlock conv_block(const ConvArgs& a, int64_t blk) {
  ConvBlock c;
  c.bi = block_info(a.dim, blk);
  c.K = (int)a.width;
  for (int k = 0; k < c.K; ++k) {
    c.wf[k] = gather_column(a.w_f, c.K, c.bi, k, 1.0);
    c.wb[k] = gather_column(a.w_b, c.K, c.bi, k, 1.0);
  }
  c.bf = loadm(a.b_f + c.bi.c0, c.bi.mask);
  c.bb = loadm(a.b_b + c.bi.c0, c.bi.mask);
  return c;
}

// Slide the window one step: win[K-1] becomes x[i] (zero outside [0, L)).
inline void slide(V* win, int K, V next) {
  for (int k = 0; k + 1 < K; ++k) win[k] = win[k + 1];
  win[K - 1] = next;
}

// Rows go outer and channel blocks inner: each step reads and writes whole rows, so the memory access is one
// sequential stream per tensor (with one cache line per row and block, long inputs were bound by memory
// latency: 20-27 ms per call at L=22000).  The K-1 earlier rows of the window are still in L1.  Blocks go in
// groups of G so that the SiLU chains of G blocks run side by side (vgroup.h); `w` holds every block's taps.
// kK: the conv width when known at compile time (the tap loops unroll), 0 for any width.
template <int kK, int G>
inline void conv_fwd_row_group(const ConvArgs& a, const ConvBlock* w, int64_t blk, int64_t b, int64_t i,
                               int64_t r0, int64_t r1) {
  const int K = kK ? kK : (int)a.width;
  const int64_t L = a.length, E = a.dim;
  const int64_t first = i - (K - 1);  // window rows first .. i: output row i (causal), row `first` (anti-causal)
  const bool do_f = i < r1, do_b = first >= r0;
  VG<G> af, ab;
  for (int g = 0; g < G; ++g) {
    const ConvBlock& c = w[blk + g];
    const int64_t x0 = b * a.x_sb + c.bi.c0;
    V f = c.bf, r = c.bb;
    for (int k = 0; k < K; ++k) {
      const int64_t row = first + k;
      const V xk = row >= 0 && row < L ? load_act(a.x, x0 + row * a.x_sl, c.bi.mask, a.bf16) : zero();
      f = fmadd(c.wf[k], xk, f);          // y_f[i]     = b_f + sum_k w_f[k] x[i - (K-1) + k]
      r = fmadd(c.wb[K - 1 - k], xk, r);  // y_b[first] = b_b + sum_k w_b[k] x[first + (K-1) - k]
    }
    af.v[g] = f;
    ab.v[g] = r;
  }
  if (do_f) {
    const VG<G> y = af * sigmoidv(af);
    for (int g = 0; g < G; ++g)
      store_act(a.y_f, b * L * E + i * E + w[blk + g].bi.c0, y.v[g], w[blk + g].bi.mask, a.bf16);
  }
  if (do_b) {
    const VG<G> y = ab * sigmoidv(ab);
    for (int g = 0; g < G; ++g)
      store_act(a.y_b, b * L * E + first * E + w[blk + g].bi.c0, y.v[g], w[blk + g].bi.mask, a.bf16);
  }
}

// Rows [r0, r1) of batch entry b, every channel block; w: the blocks' taps (conv_block of each).
template <int kK>
void conv_fwd_rows(const ConvArgs& a, const ConvBlock* w, int64_t b, int64_t r0, int64_t r1) {
  constexpr int G = 4;
  const int K = kK ? kK : (int)a.width;
  const int64_t nblk = (a.dim + V::W - 1) / V::W;
  for (int64_t i = r0; i < r1 + K - 1; ++i) {
    int64_t blk = 0;
    for (; blk + G <= nblk; blk += G) conv_fwd_row_group<kK, G>(a, w, blk, b, i, r0, r1);
    for (; blk < nblk; ++blk) conv_fwd_row_group<kK, 1>(a, w, blk, b, i, r0, r1);
  }
}

inline V dsilu_times(V a, V g) {  // g * d/da silu(a)
  const V s = sigmoidv(a);
  return g * s * fmadd(a, set1(1.0f) - s, set1(1.0f));
}

// Gradients of rows [r0, r1): gx of those rows, and the weight/bias gradient terms of the outputs in them.
// ga_f/ga_b of up to K-1 rows around the range are recomputed (they feed gx) but summed by their own task.
template <int kK>
void conv_bwd_block(const ConvArgs& a, int64_t b, int64_t blk, int64_t chunk, int64_t r0, int64_t r1) {
  const ConvBlock c = conv_block(a, blk);
  const int K = kK ? kK : c.K;
  const int64_t L = a.length, E = a.dim;
  const Mask m = c.bi.mask;
  const int64_t x0 = b * a.x_sb + c.bi.c0, g0 = b * L * E + c.bi.c0;
  float* gx = a.gx + g0;
  // after step i: win[q] = x[i-K+1+q]; gaf[q] = dL/da_f[i-K+1+q]; gab[q] = dL/da_b[i-2K+2+q]
  V win[kMaxConv], gaf[kMaxConv], gab[kMaxConv], gwf[kMaxConv], gwb[kMaxConv];
  V gbf = zero(), gbb = zero();
  for (int k = 0; k < K; ++k) gaf[k] = gab[k] = gwf[k] = gwb[k] = zero();
  for (int q = 0; q < K; ++q) {
    const int64_t row = r0 - K + q;  // slid out at once; only win[1..K-1] matter
    win[q] = row >= 0 ? load_act(a.x, x0 + row * a.x_sl, m, a.bf16) : zero();
  }
  for (int64_t i = r0; i < r1 + K - 1; ++i) {
    slide(win, K, i < L ? load_act(a.x, x0 + i * a.x_sl, m, a.bf16) : zero());
    V ga = zero();
    if (i < L) {
      V acc = c.bf;
      for (int k = 0; k < K; ++k) acc = fmadd(c.wf[k], win[k], acc);
      ga = dsilu_times(acc, load_act(a.g_f, g0 + i * E, m, a.bf16));
      if (i < r1) {
        for (int k = 0; k < K; ++k) gwf[k] = fmadd(ga, win[k], gwf[k]);
        gbf = gbf + ga;
      }
    }
    slide(gaf, K, ga);
    const int64_t j = i - (K - 1);
    ga = zero();
    if (j >= 0) {
      V acc = c.bb;
      for (int k = 0; k < K; ++k) acc = fmadd(c.wb[k], win[K - 1 - k], acc);
      ga = dsilu_times(acc, load_act(a.g_b, g0 + j * E, m, a.bf16));
      if (j >= r0) {
        for (int k = 0; k < K; ++k) gwb[k] = fmadd(ga, win[K - 1 - k], gwb[k]);
        gbb = gbb + ga;
      }
    }
    slide(gab, K, ga);
    if (j >= r0) {  // gx[j] = sum_k w_f[k] ga_f[j+K-1-k] + w_b[k] ga_b[j-K+1+k]
      V acc = zero();
      for (int k = 0; k < K; ++k) acc = fmadd(c.wf[k], gaf[K - 1 - k], fmadd(c.wb[k], gab[k], acc));
      storem(gx + j * E, acc, m);
    }
  }
  // this task's partial sums (float32 over <= kConvRows rows), in its own double slot
  double* gwf_out = a.gw_f + ((b * a.nchunks + chunk) * E + c.bi.c0) * K;
  double* gwb_out = a.gw_b + ((b * a.nchunks + chunk) * E + c.bi.c0) * K;
  double* gbf_out = a.gb_f + (b * a.nchunks + chunk) * E + c.bi.c0;
  double* gbb_out = a.gb_b + (b * a.nchunks + chunk) * E + c.bi.c0;
  alignas(64) float lanes[V::W];
  for (int k = 0; k < K; ++k) {
    store(lanes, gwf[k]);
    for (int i = 0; i < c.bi.nc; ++i) gwf_out[i * K + k] = lanes[i];
    store(lanes, gwb[k]);
    for (int i = 0; i < c.bi.nc; ++i) gwb_out[i * K + k] = lanes[i];
  }
  store(lanes, gbf);
  for (int i = 0; i < c.bi.nc; ++i) gbf_out[i] = lanes[i];
  store(lanes, gbb);
  for (int i = 0; i < c.bi.nc; ++i) gbb_out[i] = lanes[i];
}

// One task: batch b, rows of chunk `chunk`, every channel block; scratch holds the blocks' taps.
void conv_fwd_task(const ConvArgs& a, int64_t b, int64_t chunk, float* scratch) {
  const int64_t r0 = chunk * kConvRows, r1 = r0 + kConvRows < a.length ? r0 + kConvRows : a.length;
  const int64_t nblk = (a.dim + V::W - 1) / V::W;
  ConvBlock* w = reinterpret_cast<ConvBlock*>(scratch);
  for (int64_t blk = 0; blk < nblk; ++blk) w[blk] = conv_block(a, blk);
  if (a.width == 4) conv_fwd_rows<4>(a, w, b, r0, r1);
  else conv_fwd_rows<0>(a, w, b, r0, r1);
}

void conv_bwd_task(const ConvArgs& a, int64_t b, int64_t chunk) {
  const int64_t r0 = chunk * kConvRows, r1 = r0 + kConvRows < a.length ? r0 + kConvRows : a.length;
  const int64_t nblk = (a.dim + V::W - 1) / V::W;
  for (int64_t blk = 0; blk < nblk; ++blk) {
    if (a.width == 4) conv_bwd_block<4>(a, b, blk, chunk, r0, r1);
    else conv_bwd_block<0>(a, b, blk, chunk, r0, r1);
  }
}

}  // namespace
}  // namespace SSAMBA_NS
}  // namespace ssamba
