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

// Rows go outer and channel blocks inner: each step reads and writes whole rows, so the memory access is one
// sequential stream per tensor (with one cache line per row and block, long inputs were bound by memory
// latency: 20-27 ms per call at L=22000).  The K-1 earlier rows of the window are still in L1.  Blocks go in
// groups of G so that the SiLU chains of G blocks run side by side (vgroup.h); `w` holds every block's taps.
// kK: the conv width when known at compile time (the tap loops unroll), 0 for any width; kBf16: the activation
// dtype (a run-time test per load and store cost 4-8% of the forward).
// The window's row pointers are resolved once per row (rows outside [0, L) point at a row of zeros), so a
// block costs its loads, FMAs and SiLU only: with the row arithmetic and bounds tests per block and tap the
// forward ran at ~2x its arithmetic cost.
template <int kK, int G, bool kBf16>
__attribute__((always_inline)) inline void conv_fwd_group(const ConvBlock* w, int K, const void* const* rows,
                                                          void* yf, void* yb, int64_t blk) {
  VG<G> af, ab;
  for (int g = 0; g < G; ++g) {
    const ConvBlock& c = w[blk + g];
    V f = c.bf, r = c.bb;
    for (int k = 0; k < (kK ? kK : K); ++k) {
      const V xk = load_act<kBf16>(rows[k], c.bi.c0, c.bi.mask);
      f = fmadd(c.wf[k], xk, f);                        // y_f[i]     = b_f + sum_k w_f[k] x[i - (K-1) + k]
      r = fmadd(c.wb[(kK ? kK : K) - 1 - k], xk, r);    // y_b[first] = b_b + sum_k w_b[k] x[first + (K-1) - k]
    }
    af.v[g] = f;
    ab.v[g] = r;
  }
  if (yf) {
    const VG<G> y = af * sigmoidv(af);
    for (int g = 0; g < G; ++g) store_act<kBf16>(yf, w[blk + g].bi.c0, y.v[g], w[blk + g].bi.mask);
  }
  if (yb) {
    const VG<G> y = ab * sigmoidv(ab);
    for (int g = 0; g < G; ++g) store_act<kBf16>(yb, w[blk + g].bi.c0, y.v[g], w[blk + g].bi.mask);
  }
}

// Rows [r0, r1) of batch entry b, every channel block; w: the blocks' taps (conv_block of each); zeros: a row of
// zeros (at least dim elements) standing in for the rows before 0 and past L-1.
template <int kK, bool kBf16>
void conv_fwd_rows(const ConvArgs& a, const ConvBlock* w, const void* zeros, int64_t b, int64_t r0, int64_t r1) {
  constexpr int G = 4;
  const int K = kK ? kK : (int)a.width;
  const int64_t L = a.length, E = a.dim, nblk = (a.dim + V::W - 1) / V::W;
  const int64_t esize = kBf16 ? 2 : 4;
  char* const y_f = static_cast<char*>(a.y_f) + b * L * E * esize;
  char* const y_b = static_cast<char*>(a.y_b) + b * L * E * esize;
  for (int64_t i = r0; i < r1 + K - 1; ++i) {
    const int64_t first = i - (K - 1);  // window rows first .. i: output row i (causal), row `first` (anti-causal)
    const void* rows[kMaxConv];
    for (int k = 0; k < K; ++k) {
      const int64_t row = first + k;
      rows[k] = row >= 0 && row < L ? addr(a.x, b * a.x_sb + row * a.x_sl, kBf16) : zeros;
    }
    void* yf = i < r1 ? y_f + i * E * esize : nullptr;
    void* yb = first >= r0 ? y_b + first * E * esize : nullptr;
    int64_t blk = 0;
    for (; blk + G <= nblk; blk += G) conv_fwd_group<kK, G, kBf16>(w, K, rows, yf, yb, blk);
    for (; blk < nblk; ++blk) conv_fwd_group<kK, 1, kBf16>(w, K, rows, yf, yb, blk);
  }
}

inline V dsilu_times(V a, V g) {  // g * d/da silu(a)
  const V s = sigmoidv(a);
  return g * s * fmadd(a, set1(1.0f) - s, set1(1.0f));
}

// Backward, rows outer like the forward: each row step reads and writes whole rows, so a task streams its
// rows once instead of one cache line per row and block (with cold caches, as in training, the blocks-outer loop
// was bound by memory latency: 2.9 ms per call at batch 4, L=512, E=384 on 2 threads).  The taps' windows are
// re-read from the rows just read (in L1); dL/da of the last K rows of both branches live in two ring buffers of
// whole rows, and each block's weight-gradient sums in its ConvGrad.
struct ConvGrad {
  V gwf[kMaxConv], gwb[kMaxConv], gbf, gbb;
};

struct ConvBwdScratch {
  ConvBlock* w;    // nblk: taps
  ConvGrad* acc;   // nblk: this task's weight and bias gradient sums
  float* ring_f;   // K rows x epad: dL/da_f of rows i-K+1 .. i, row r at slot (r - r0 + K) % K
  float* ring_b;   // K rows x epad: dL/da_b of rows j-K+1 .. j (j = i-K+1)
  int64_t epad;    // nblk * W
};

// Row step i of block blk (rows [r0, r1) of batch entry b): dL/da_f of row i and dL/da_b of row j = i-K+1 into the
// rings and the weight sums, then gx of row j once both rings hold the rows it needs.
template <int kK, bool kBf16>
inline void conv_bwd_step(const ConvArgs& a, const ConvBwdScratch& sc, int64_t blk, int64_t b, int64_t i,
                          int64_t r0, int64_t r1) {
  const int K = kK ? kK : (int)a.width;
  const int64_t L = a.length, E = a.dim, j = i - (K - 1);
  const ConvBlock& c = sc.w[blk];
  ConvGrad& acc = sc.acc[blk];
  const Mask m = c.bi.mask;
  const int64_t x0 = b * a.x_sb + c.bi.c0, g0 = b * L * E + c.bi.c0;
  V xk[kMaxConv];  // window rows j .. i
  for (int k = 0; k < K; ++k) {
    const int64_t row = j + k;
    xk[k] = row >= 0 && row < L ? load_act<kBf16>(a.x, x0 + row * a.x_sl, m) : zero();
  }
  V gaf = zero(), gab = zero();
  if (i < L) {  // y_f[i] = silu(b_f + sum_k w_f[k] x[i-K+1+k])
    V pre = c.bf;
    for (int k = 0; k < K; ++k) pre = fmadd(c.wf[k], xk[k], pre);
    gaf = dsilu_times(pre, load_act<kBf16>(a.g_f, g0 + i * E, m));
    if (i < r1) {
      for (int k = 0; k < K; ++k) acc.gwf[k] = fmadd(gaf, xk[k], acc.gwf[k]);
      acc.gbf = acc.gbf + gaf;
    }
  }
  if (j >= 0) {  // y_b[j] = silu(b_b + sum_k w_b[k] x[j+K-1-k])
    V pre = c.bb;
    for (int k = 0; k < K; ++k) pre = fmadd(c.wb[k], xk[K - 1 - k], pre);
    gab = dsilu_times(pre, load_act<kBf16>(a.g_b, g0 + j * E, m));
    if (j >= r0) {
      for (int k = 0; k < K; ++k) acc.gwb[k] = fmadd(gab, xk[K - 1 - k], acc.gwb[k]);
      acc.gbb = acc.gbb + gab;
    }
  }
  auto slot = [&](int64_t row) { return ((row - r0 + K) % K) * sc.epad + blk * V::W; };
  store(sc.ring_f + slot(i), gaf);
  store(sc.ring_b + slot(j), gab);
  if (j >= r0) {  // gx[j] = sum_k w_f[k] ga_f[j+K-1-k] + w_b[k] ga_b[j-K+1+k]
    V gx = zero();
    for (int k = 0; k < K; ++k) {
      gx = fmadd(c.wb[k], load(sc.ring_b + slot(j - K + 1 + k)), gx);
      gx = fmadd(c.wf[k], load(sc.ring_f + slot(j + K - 1 - k)), gx);
    }
    store_act<kBf16>(a.gx, g0 + j * E, gx, m);
  }
}

template <int kK, bool kBf16>
void conv_bwd_rows(const ConvArgs& a, const ConvBwdScratch& sc, int64_t nblk, int64_t b, int64_t r0, int64_t r1) {
  const int K = kK ? kK : (int)a.width;
  for (int64_t i = r0; i < r1 + K - 1; ++i)
    for (int64_t blk = 0; blk < nblk; ++blk) conv_bwd_step<kK, kBf16>(a, sc, blk, b, i, r0, r1);
}

// Scratch floats per channel block of conv_fwd_task: its taps and its columns of a row of zeros.
constexpr int64_t conv_fwd_block_floats() { return (int64_t)(sizeof(ConvBlock) / sizeof(float)) + V::W; }

// One task: batch b, rows of chunk `chunk`, every channel block; scratch holds the blocks' taps and a zero row.
void conv_fwd_task(const ConvArgs& a, int64_t b, int64_t chunk, float* scratch) {
  const int64_t r0 = chunk * kConvRows, r1 = r0 + kConvRows < a.length ? r0 + kConvRows : a.length;
  const int64_t nblk = (a.dim + V::W - 1) / V::W;
  ConvBlock* w = reinterpret_cast<ConvBlock*>(scratch);
  for (int64_t blk = 0; blk < nblk; ++blk) w[blk] = conv_block(a, blk);
  float* zeros = reinterpret_cast<float*>(w + nblk);
  for (int64_t e = 0; e < nblk * V::W; ++e) zeros[e] = 0.0f;
  if (a.bf16) {
    if (a.width == 4) conv_fwd_rows<4, true>(a, w, zeros, b, r0, r1);
    else conv_fwd_rows<0, true>(a, w, zeros, b, r0, r1);
  } else {
    if (a.width == 4) conv_fwd_rows<4, false>(a, w, zeros, b, r0, r1);
    else conv_fwd_rows<0, false>(a, w, zeros, b, r0, r1);
  }
}

// Scratch floats per channel block of conv_bwd_task: taps, gradient sums, and its columns of the two rings.
constexpr int64_t conv_bwd_block_floats() {
  return (int64_t)((sizeof(ConvBlock) + sizeof(ConvGrad)) / sizeof(float)) + 2 * kMaxConv * V::W;
}

// One task: batch b, rows of chunk `chunk`, every channel block; writes gx of those rows and the task's own
// (double) partial sums of the weight and bias gradients.
void conv_bwd_task(const ConvArgs& a, int64_t b, int64_t chunk, float* scratch) {
  const int64_t r0 = chunk * kConvRows, r1 = r0 + kConvRows < a.length ? r0 + kConvRows : a.length;
  const int64_t nblk = (a.dim + V::W - 1) / V::W, E = a.dim;
  const int K = (int)a.width;
  ConvBwdScratch sc;
  sc.w = reinterpret_cast<ConvBlock*>(scratch);
  sc.acc = reinterpret_cast<ConvGrad*>(sc.w + nblk);
  sc.ring_f = reinterpret_cast<float*>(sc.acc + nblk);
  sc.epad = nblk * V::W;
  sc.ring_b = sc.ring_f + K * sc.epad;
  for (int64_t blk = 0; blk < nblk; ++blk) {
    sc.w[blk] = conv_block(a, blk);
    ConvGrad& g = sc.acc[blk];
    for (int k = 0; k < K; ++k) g.gwf[k] = g.gwb[k] = zero();
    g.gbf = g.gbb = zero();
  }
  if (a.bf16) {
    if (K == 4) conv_bwd_rows<4, true>(a, sc, nblk, b, r0, r1);
    else conv_bwd_rows<0, true>(a, sc, nblk, b, r0, r1);
  } else {
    if (K == 4) conv_bwd_rows<4, false>(a, sc, nblk, b, r0, r1);
    else conv_bwd_rows<0, false>(a, sc, nblk, b, r0, r1);
  }
  // this task's partial sums (float32 over <= kConvRows rows), in its own double slot
  alignas(64) float lanes[V::W];
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const BlockInfo& bi = sc.w[blk].bi;
    const ConvGrad& g = sc.acc[blk];
    double* gwf_out = a.gw_f + ((b * a.nchunks + chunk) * E + bi.c0) * K;
    double* gwb_out = a.gw_b + ((b * a.nchunks + chunk) * E + bi.c0) * K;
    double* gbf_out = a.gb_f + (b * a.nchunks + chunk) * E + bi.c0;
    double* gbb_out = a.gb_b + (b * a.nchunks + chunk) * E + bi.c0;
    for (int k = 0; k < K; ++k) {
      store(lanes, g.gwf[k]);
      for (int i = 0; i < bi.nc; ++i) gwf_out[i * K + k] = lanes[i];
      store(lanes, g.gwb[k]);
      for (int i = 0; i < bi.nc; ++i) gwb_out[i * K + k] = lanes[i];
    }
    store(lanes, g.gbf);
    for (int i = 0; i < bi.nc; ++i) gbf_out[i] = lanes[i];
    store(lanes, g.gbb);
    for (int i = 0; i < bi.nc; ++i) gbb_out[i] = lanes[i];
  }
}

}  // namespace
}  // namespace SSAMBA_NS
}  // namespace ssamba
