// Selective-scan kernels for one (batch, channel block) task, written once over the V type of the including
// instruction-set file (isa_*.cpp).  Layout is channels-last: a block of V::W channels at one time step is one
// vector, so the state of the block (N vectors) stays in registers and no horizontal sums are needed forward.
//
// Recurrence (spec §5), per channel c and state n:
//   delta = softplus(delta_raw + bias);  s_l = exp(delta_l A) s_{l-1} + delta_l u_l B_l;  y_l = <s_l, C_l> + D u_l
//   out_l = scale * silu(z_l) * sum over directions of y_l (direction 1 runs from l = L-1 down to 0).
// Time is processed in chunks of kChunk steps: a first pass per chunk computes everything that does not depend
// on the state (softplus, gate, bf16 widening, B and C rows), so the state loop is pure exp + FMA.
// Backward keeps the state entering every chunk (forward writes it), recomputes the states of one chunk into
// scratch, and runs the adjoint recurrence  lam_l = gy_l C_l + exp(delta_{l+1} A) lam_{l+1}  backwards.
// The adjoint pass recomputes the decays exp(delta A) (the same exp2v of the same inputs, so bit-identical)
// rather than reading them from scratch: the backward is bound by memory stalls more than by arithmetic, and
// storing them too doubled the chunk's scratch (64 KB with AVX-512 at d_state 16, more than L1) and the
// stores per step.
#pragma once
#include "args.h"

namespace ssamba {
namespace SSAMBA_NS {

namespace {

constexpr float kLog2eD = 1.4426950408889634f;

struct BlockInfo {
  int64_t c0;  // first channel
  int nc;      // channels in this block (< W only for the last one)
  Mask mask;
};

inline BlockInfo block_info(int64_t dim, int64_t blk) {
  BlockInfo info;
  info.c0 = blk * V::W;
  int64_t rest = dim - info.c0;
  info.nc = rest < V::W ? (int)rest : V::W;
  info.mask = make_mask(info.nc);
  return info;
}

// Column n of a (D, N) matrix for the block's channels, times `factor` (in double, then rounded); zero lanes past nc.
inline V gather_column(const float* a, int64_t nstate, const BlockInfo& bi, int n, double factor) {
  alignas(64) float tmp[V::W];
  for (int i = 0; i < V::W; ++i)
    tmp[i] = i < bi.nc ? (float)((double)a[(bi.c0 + i) * nstate + n] * factor) : 0.0f;
  return load(tmp);
}

inline V load_opt(const float* p, const BlockInfo& bi) { return p ? loadm(p + bi.c0, bi.mask) : zero(); }

// An activation vector at element offset `off`: float32, or bfloat16 widened (and stored back narrowed).  The
// dtype is a template parameter: a run-time test per load costs ~10% of the forward scan and 4-8% of the conv.
template <bool kBf16>
inline V load_act(const void* base, int64_t off, Mask m) {
  if (kBf16) return load_bf16(static_cast<const uint16_t*>(base) + off, m);
  return loadm(static_cast<const float*>(base) + off, m);
}
template <bool kBf16>
inline void store_act(void* base, int64_t off, V v, Mask m) {
  if (kBf16) store_bf16(static_cast<uint16_t*>(base) + off, v, m);
  else storem(static_cast<float*>(base) + off, v, m);
}

// Element offset -> byte address, for prefetching.
inline const void* addr(const void* base, int64_t off, bool bf16) {
  return static_cast<const char*>(base) + off * (bf16 ? 2 : 4);
}

// Per-chunk buffers, carved from the task's scratch (layout sizes in args.h).
struct StepInputs {
  V* dt;      // kChunk: delta after bias and softplus
  V* du;      // kChunk: dt * u
  V* u;       // kChunk
  V* y0;      // kChunk: D * u
  V* gate;    // kChunk: scale * silu(z)
  float* B;   // kChunk x npad: B rows of the chunk, float32
  float* C;   // kChunk x npad
  int npad;
};

// What the backward pass needs per step on top of StepInputs.
struct BwdSteps {
  V* gy;   // kChunk: dL/dy = g * scale * silu(z)
  V* gzf;  // kChunk: dL/dz = gzf * y
  V* sig;  // kChunk: softplus'(delta_raw + bias)
  V* y;    // kChunk: y before the gate (filled by the recompute)
  V* S;    // kChunk x N: state entering each step
};

inline StepInputs carve_steps(float*& p, int64_t nstate) {
  StepInputs st;
  V* v = reinterpret_cast<V*>(p);
  st.dt = v; st.du = v + kChunk; st.u = v + 2 * kChunk; st.y0 = v + 3 * kChunk; st.gate = v + 4 * kChunk;
  p += 5 * kChunk * V::W;
  st.npad = (int)state_pad(V::W, nstate);
  st.B = p; p += kChunk * st.npad;
  st.C = p; p += kChunk * st.npad;
  return st;
}

inline BwdSteps carve_bwd(float*& p, int N) {
  BwdSteps bs;
  V* v = reinterpret_cast<V*>(p);
  bs.gy = v; bs.gzf = v + kChunk; bs.sig = v + 2 * kChunk; bs.y = v + 3 * kChunk;
  bs.S = v + 4 * kChunk;
  p += (4 * kChunk + kChunk * N) * V::W;
  return bs;
}

inline int64_t time_index(const ScanDir& d, int64_t L, int64_t t) { return d.reverse ? L - 1 - t : t; }

// Steps j0 .. j0+G-1 of a chunk, as one group of G vectors (see vgroup.h).  The activation dtype is a template
// parameter: a run-time test per load costs ~10% of the forward scan.
template <bool kBwd, bool kBf16, int G>
__attribute__((always_inline)) inline void prepare_group(const ScanArgs& a, const ScanDir& d, int64_t b,
                                                         const BlockInfo& bi, int64_t t0, int j0, V dskip, V bias,
                                                         bool with_gate, StepInputs& st, BwdSteps* bs) {
  using T = VG<G>;
  const Mask m = bi.mask;
  int64_t l[G];
  T dt, ul;
  for (int i = 0; i < G; ++i) {
    l[i] = time_index(d, a.length, t0 + j0 + i);
    dt.v[i] = load_act<kBf16>(d.delta, b * d.d_sb + l[i] * d.d_sl + bi.c0, m) + bias;
    ul.v[i] = load_act<kBf16>(d.u, b * d.u_sb + l[i] * d.u_sl + bi.c0, m);
  }
  if (a.softplus) {
    const T e = exp_neg_abs(dt);
    if (kBwd) {
      const T sig = sigmoid_from(dt, e);
      for (int i = 0; i < G; ++i) bs->sig[j0 + i] = sig.v[i];
    }
    dt = softplus_from(dt, e);
  }
  for (int i = 0; i < G; ++i) {
    st.dt[j0 + i] = dt.v[i];
    st.du[j0 + i] = dt.v[i] * ul.v[i];
    if (kBwd) st.u[j0 + i] = ul.v[i];
    st.y0[j0 + i] = dskip * ul.v[i];
  }
  if (!kBwd && !with_gate) return;
  const T scale = splat<T>(a.scale), one = splat<T>(1.0f);
  T gate = scale, g;
  if (kBwd)
    for (int i = 0; i < G; ++i) g.v[i] = loadm(a.gout + (b * a.length + l[i]) * a.dim + bi.c0, m);
  if (a.z) {
    T zl;
    for (int i = 0; i < G; ++i) zl.v[i] = load_act<kBf16>(a.z, b * a.z_sb + l[i] * a.z_sl + bi.c0, m);
    const T sz = sigmoidv(zl);
    gate = gate * zl * sz;
    if (kBwd) {
      const T gzf = g * scale * sz * fmadd(zl, one - sz, one);
      for (int i = 0; i < G; ++i) bs->gzf[j0 + i] = gzf.v[i];
    }
  }
  for (int i = 0; i < G; ++i) st.gate[j0 + i] = gate.v[i];
  if (kBwd) {
    const T gy = g * gate;
    for (int i = 0; i < G; ++i) bs->gy[j0 + i] = gy.v[i];
  }
}

// Per-step inputs of a chunk of len steps; with_gate: also fill st.gate (the forward pass gates once, after the
// last direction).
template <bool kBwd, bool kBf16>
inline void prepare_chunk(const ScanArgs& a, const ScanDir& d, int64_t b, const BlockInfo& bi, int64_t t0, int len,
                          V dskip, V bias, bool with_gate, StepInputs& st, BwdSteps* bs) {
  int j = 0;
  for (; j + 4 <= len; j += 4) prepare_group<kBwd, kBf16, 4>(a, d, b, bi, t0, j, dskip, bias, with_gate, st, bs);
  for (; j < len; ++j) prepare_group<kBwd, kBf16, 1>(a, d, b, bi, t0, j, dskip, bias, with_gate, st, bs);
}

// bf16 B and C rows of a chunk, widened to float32 and padded to whole vectors in st.B, st.C (float32 rows are
// read in place: see bc_rows).  Once per chunk, not per channel block: every block of a task reads the same rows
// (widened per block, this was ~40% of the bf16 scan's per-step preparation: 3 of SSAMBA-tiny's 65 ms).
inline void widen_bc_rows(const ScanArgs& a, const ScanDir& d, int64_t b, int64_t t0, int len, StepInputs& st) {
  if (!a.bf16) return;
  const int N = (int)a.nstate;
  for (int j = 0; j < len; ++j) {
    const int64_t l = time_index(d, a.length, t0 + j);
    for (int n0 = 0; n0 < N; n0 += V::W) {
      const Mask mn = make_mask(N - n0 < V::W ? N - n0 : V::W);
      store(st.B + j * st.npad + n0, load_act<true>(d.Bm, b * d.b_sb + l * d.b_sl + n0, mn));
      store(st.C + j * st.npad + n0, load_act<true>(d.Cm, b * d.c_sb + l * d.c_sl + n0, mn));
    }
  }
}

template <bool kBwd>
inline void prepare_steps(const ScanArgs& a, const ScanDir& d, int64_t b, const BlockInfo& bi, int64_t t0, int len,
                          V dskip, V bias, bool with_gate, StepInputs& st, BwdSteps* bs) {
  if (a.bf16) prepare_chunk<kBwd, true>(a, d, b, bi, t0, len, dskip, bias, with_gate, st, bs);
  else prepare_chunk<kBwd, false>(a, d, b, bi, t0, len, dskip, bias, with_gate, st, bs);
}

// B and C rows (float32) of chunk step j at time l: in place, or widened from bf16 by widen_bc_rows.
inline void bc_rows(const ScanArgs& a, const ScanDir& d, const StepInputs& st, int64_t b, int j, int64_t l,
                    const float*& Bl, const float*& Cl) {
  if (a.bf16) {
    Bl = st.B + j * st.npad;
    Cl = st.C + j * st.npad;
  } else {
    Bl = static_cast<const float*>(d.Bm) + b * d.b_sb + l * d.b_sl;
    Cl = static_cast<const float*>(d.Cm) + b * d.c_sb + l * d.c_sl;
  }
}

// Rows of a block's columns are one cache line each, a whole row (all channels) apart: once the tensors
// outgrow the caches (batch > 1, long sequences) the hardware prefetchers do not keep up, and a burst of
// software prefetches stalls on the line-fill buffers.  So the state loops prefetch, one row per step, what the
// block-chunk processed next will read: spread over compute-bound steps, the misses overlap with the math.
struct NextWork {
  int64_t t0;   // first step of the next block-chunk (< 0 or >= L: none)
  BlockInfo bi;
  bool new_chunk;  // the B and C rows change too
};

inline NextWork next_work(const ScanArgs& a, int64_t blk0, int nb, int g, int64_t t0, bool backward) {
  NextWork w;
  w.new_chunk = g + 1 == nb;
  w.t0 = w.new_chunk ? (backward ? t0 - kChunk : t0 + kChunk) : t0;
  w.bi = block_info(a.dim, w.new_chunk ? blk0 : blk0 + g + 1);
  return w;
}

// always_inline is load-bearing: GCC treats __builtin_prefetch as free of side effects, so a separate function made
// only of prefetches is found "const" and every call to it is deleted (GCC 12 -O2/-O3 emitted no prefetch at all
// from this helper until 2026-11-26; inlined, the backward scan got 8-15% faster and the forward up to 11%).
__attribute__((always_inline)) inline void prefetch_step(const ScanArgs& a, const ScanDir& d, int64_t b,
                                                         const NextWork& w, int j, bool bwd) {
  const int64_t t = w.t0 + j;
  if (t < 0 || t >= a.length) return;
  const int64_t l = time_index(d, a.length, t), c0 = w.bi.c0;
  __builtin_prefetch(addr(d.delta, b * d.d_sb + l * d.d_sl + c0, a.bf16));
  __builtin_prefetch(addr(d.u, b * d.u_sb + l * d.u_sl + c0, a.bf16));
  if (a.z) __builtin_prefetch(addr(a.z, b * a.z_sb + l * a.z_sl + c0, a.bf16));
  if (w.new_chunk) {
    __builtin_prefetch(addr(d.Bm, b * d.b_sb + l * d.b_sl, a.bf16));
    __builtin_prefetch(addr(d.Cm, b * d.c_sb + l * d.c_sl, a.bf16));
  }
  const int64_t row = (b * a.length + l) * a.dim + c0;
  if (bwd) __builtin_prefetch(a.gout + row);
  else if (a.out_bf16) __builtin_prefetch(a.out_bf16 + row, 1);
  else __builtin_prefetch(a.out + row, 1);
}

// State updates per group in the forward state loop: the exps of G states are computed in lockstep (vgroup.h),
// so their dependency chains (~40 cycles from dt * A to the next state) overlap without filling the scheduler
// one chain at a time.  AVX-512 with d_state 16: G = 4 made the forward scan 3-7% faster (interleaved A/B, one
// thread); the backward loops gained nothing and stay one state at a time.  The instruction-set header sets
// SSAMBA_EXP_GROUP (AVX2's 16 registers have no room for it).
#ifndef SSAMBA_EXP_GROUP
#define SSAMBA_EXP_GROUP 1
#endif
constexpr int exp_group(int kN) { return kN && kN % SSAMBA_EXP_GROUP == 0 ? SSAMBA_EXP_GROUP : 1; }

// A task owns nb consecutive channel blocks and walks time chunk by chunk, running every block of the group
// over a chunk before the next chunk.  Rows of the group's columns (nb cache lines side by side) are then read
// together, which the hardware prefetchers follow far better than one line per row; each block's state and
// decays live in the task's scratch between chunks.
template <int kN>
void scan_fwd_group(const ScanArgs& a, int64_t b, int64_t blk0, int nb, float* scratch) {
  const int N = kN ? kN : (int)a.nstate;
  constexpr int G = exp_group(kN);
  const int64_t L = a.length, D = a.dim, nchunks = (L + kChunk - 1) / kChunk;
  StepInputs st = carve_steps(scratch, N);
  V* states = reinterpret_cast<V*>(scratch);  // nb x N
  V* decays = states + nb * N;                // nb x N: A * log2(e)
  V s[kN ? kN : kMaxState];
  V A2[kN ? kN : kMaxState];
  for (int dir = 0; dir < a.ndirs; ++dir) {
    const ScanDir& d = a.dir[dir];
    const bool last = dir == a.ndirs - 1;
    for (int g = 0; g < nb; ++g) {
      const BlockInfo bi = block_info(D, blk0 + g);
      for (int n = 0; n < N; ++n) {
        decays[g * N + n] = gather_column(d.A, N, bi, n, kLog2eD);
        states[g * N + n] = zero();
      }
    }
    for (int64_t k = 0; k < nchunks; ++k) {
      const int64_t t0 = k * kChunk;
      const int len = (int)((L - t0) < kChunk ? (L - t0) : kChunk);
      widen_bc_rows(a, d, b, t0, len, st);
      for (int g = 0; g < nb; ++g) {
        const BlockInfo bi = block_info(D, blk0 + g);
        const Mask m = bi.mask;
        float* out = a.out + b * L * D + bi.c0;
        uint16_t* out16 = last && a.out_bf16 ? a.out_bf16 + b * L * D + bi.c0 : nullptr;
        const V dskip = load_opt(d.Dskip, bi), bias = load_opt(d.bias, bi);
        for (int n = 0; n < N; ++n) {
          s[n] = states[g * N + n];
          A2[n] = decays[g * N + n];
        }
        if (d.ckpt) {
          float* ck = d.ckpt + ((b * nchunks + k) * N) * D + bi.c0;
          for (int n = 0; n < N; ++n) storem(ck + n * D, s[n], m);
        }
        prepare_steps<false>(a, d, b, bi, t0, len, dskip, bias, last, st, nullptr);
        const NextWork next = next_work(a, blk0, nb, g, t0, false);
        for (int j = 0; j < len; ++j) {
          const int64_t l = time_index(d, L, t0 + j);
          prefetch_step(a, d, b, next, j, false);
          const V dt = st.dt[j], du = st.du[j];
          const float *Bl, *Cl;
          bc_rows(a, d, st, b, j, l, Bl, Cl);
          // four partial sums of <s, C>: one accumulator would chain 16 dependent FMAs per step
          V acc[4] = {st.y0[j], zero(), zero(), zero()};
#pragma GCC unroll 16
          for (int n = 0; n < N; n += G) {
            VG<G> t;
            for (int i = 0; i < G; ++i) t.v[i] = dt * A2[n + i];
            const VG<G> e = exp2v(t);
            for (int i = 0; i < G; ++i) {
              s[n + i] = fmadd(e.v[i], s[n + i], du * set1(Bl[n + i]));
              acc[(n + i) & 3] = fmadd(s[n + i], set1(Cl[n + i]), acc[(n + i) & 3]);
            }
          }
          // earlier directions leave their ungated y in out; the last one adds its own and gates the sum
          V y = (acc[0] + acc[1]) + (acc[2] + acc[3]);
          if (dir > 0) y = y + loadm(out + l * D, m);
          if (last) y = y * st.gate[j];
          if (out16) store_bf16(out16 + l * D, y, m);
          else storem(out + l * D, y, m);
        }
        for (int n = 0; n < N; ++n) states[g * N + n] = s[n];
      }
    }
  }
}

// kBf16: the activations are bfloat16, and so are the gradients of u, delta and z that the adjoint pass writes:
// rounded here rather than cast by autograd afterwards (the same round-to-nearest-even; a bf16 training step of
// SSAMBA-tiny made 5 such copies of a (B, L, d_inner) tensor per mixer).  A template parameter, so that the float32
// instantiation is the code it was before bf16 gradients (a run-time test per store looked 2-5% slower in
// alternating runs of the two builds).
template <int kN, bool kBf16>
void scan_bwd_group(const ScanArgs& a, int64_t b, int64_t blk0, int nb, float* scratch) {
  const int N = kN ? kN : (int)a.nstate;
  const int64_t L = a.length, D = a.dim, nchunks = (L + kChunk - 1) / kChunk;
  StepInputs st = carve_steps(scratch, N);
  BwdSteps bs = carve_bwd(scratch, N);
  V* lams = reinterpret_cast<V*>(scratch);  // nb x N: adjoint carried between chunks
  V* decays = lams + nb * N;                // nb x N: A * log2(e)
  V* avals = decays + nb * N;               // nb x N: A
  // nb x (N + 2) x W doubles: each block's dL/dA (N vectors), dL/dD and dL/dbias lanes, summed over chunks
  double* sums = reinterpret_cast<double*>(avals + nb * N);
  const int nsums = (N + 2) * V::W;
  V A2[kN ? kN : kMaxState], Aw[kN ? kN : kMaxState];
  V s[kN ? kN : kMaxState], lam[kN ? kN : kMaxState], gA[kN ? kN : kMaxState], parts[kN ? kN : kMaxState];
  for (int dir = 0; dir < a.ndirs; ++dir) {
    const ScanDir& d = a.dir[dir];
    for (int g = 0; g < nb; ++g) {
      const BlockInfo bi = block_info(D, blk0 + g);
      for (int n = 0; n < N; ++n) {
        decays[g * N + n] = gather_column(d.A, N, bi, n, kLog2eD);
        avals[g * N + n] = gather_column(d.A, N, bi, n, 1.0);
        lams[g * N + n] = zero();
      }
    }
    for (int64_t i = 0; i < (int64_t)nb * nsums; ++i) sums[i] = 0.0;
    for (int64_t k = nchunks - 1; k >= 0; --k) {
      const int64_t t0 = k * kChunk;
      const int len = (int)((L - t0) < kChunk ? (L - t0) : kChunk);
      widen_bc_rows(a, d, b, t0, len, st);
      for (int g = 0; g < nb; ++g) {
        const int64_t blk = blk0 + g;
        const BlockInfo bi = block_info(D, blk);
        const Mask m = bi.mask;
        const V dskip = load_opt(d.Dskip, bi), bias = load_opt(d.bias, bi);
        // dL/dz: float32 in gz, or (bf16 activations) rounded into gz16 by the last direction, the first of two
        // directions leaving its part in gz
        float* gz = a.gz ? a.gz + b * L * D + bi.c0 : nullptr;
        uint16_t* gz16 = kBf16 && dir == a.ndirs - 1 ? a.gz_bf16 + b * L * D + bi.c0 : nullptr;
        const int64_t g0 = b * L * D + bi.c0;  // dL/du, dL/ddelta of this block: the activations' dtype
        // dL/dB and dL/dC rows: the first block of each set of kPartialBlocks writes its set's partial, the
        // others add to it in block order (a task owns whole sets, so the sums do not depend on the grouping)
        float* gB = d.gB + ((blk / kPartialBlocks) * a.batch + b) * L * N;
        float* gC = d.gC + ((blk / kPartialBlocks) * a.batch + b) * L * N;
        const bool accumulate = blk % kPartialBlocks != 0;
        for (int n = 0; n < N; ++n) {
          A2[n] = decays[g * N + n];
          Aw[n] = avals[g * N + n];
          lam[n] = lams[g * N + n];
        }
        // 1. per-step quantities, in passes with no loop-carried dependency
        prepare_steps<true>(a, d, b, bi, t0, len, dskip, bias, true, st, &bs);
        // 2. recompute the chunk's states from the saved one; dL/dC needs only the states and gy
        const float* ck = d.ckpt + ((b * nchunks + k) * N) * D + bi.c0;
        for (int n = 0; n < N; ++n) s[n] = loadm(ck + n * D, m);
        for (int j = 0; j < len; ++j) {
          const int64_t l = time_index(d, L, t0 + j);
          // Prefetch the lines this chunk writes.  A store that misses the caches holds up every later store
          // until its line arrives, and these loops store a lot (the states here), so unprefetched output rows
          // stall the core: the rows the adjoint pass below writes, including this step's dL/dB partial row, and
          // the dL/dC partial row of a step 8 ahead (rows are 16 floats, one cache line for d_state 16).
          const int64_t row = (b * L + l) * D + bi.c0;
          __builtin_prefetch(addr(d.gu, row, kBf16), 1);
          __builtin_prefetch(addr(d.gdelta, row, kBf16), 1);
          if (kBf16 && gz16) __builtin_prefetch(a.gz_bf16 + row, 1);
          else if (gz) __builtin_prefetch(a.gz + row, 1);
          __builtin_prefetch(gB + l * N, 1);
          if (j + 8 < len) __builtin_prefetch(gC + time_index(d, L, t0 + j + 8) * N, 1);
          const V dt = st.dt[j], du = st.du[j], gy = bs.gy[j];
          const float *Bl, *Cl;
          bc_rows(a, d, st, b, j, l, Bl, Cl);
          V* Sj = bs.S + j * N;
          V y0 = st.y0[j], y1 = zero(), y2 = zero(), y3 = zero();
#pragma GCC unroll 16
          for (int n = 0; n < N; ++n) {
            Sj[n] = s[n];
            s[n] = fmadd(exp2v(dt * A2[n]), s[n], du * set1(Bl[n]));
            parts[n] = gy * s[n];
            const V c = set1(Cl[n]);
            if ((n & 3) == 0) y0 = fmadd(s[n], c, y0);
            else if ((n & 3) == 1) y1 = fmadd(s[n], c, y1);
            else if ((n & 3) == 2) y2 = fmadd(s[n], c, y2);
            else y3 = fmadd(s[n], c, y3);
          }
          reduce_lanes(parts, N, gC + l * N, accumulate);
          bs.y[j] = (y0 + y1) + (y2 + y3);
        }
        // 3. adjoint recurrence over the chunk, last step first
        for (int n = 0; n < N; ++n) gA[n] = zero();
        V gD_acc = zero(), gbias_acc = zero();
        const NextWork next = next_work(a, blk0, nb, g, t0, true);
        for (int j = len - 1; j >= 0; --j) {
          const int64_t l = time_index(d, L, t0 + j);
          prefetch_step(a, d, b, next, j, true);
          const V gy = bs.gy[j], dt = st.dt[j], du = st.du[j], ul = st.u[j];
          if (gz || (kBf16 && gz16)) {
            V gzl = bs.gzf[j] * bs.y[j];
            if (dir > 0) gzl = gzl + loadm(gz + l * D, m);
            if (kBf16 && gz16) store_bf16(gz16 + l * D, gzl, m);
            else storem(gz + l * D, gzl, m);
          }
          gD_acc = fmadd(gy, ul, gD_acc);
          const float *Bl, *Cl;
          bc_rows(a, d, st, b, j, l, Bl, Cl);
          const V* Sj = bs.S + j * N;
          V sumB0 = zero(), sumB1 = zero(), gdt0 = zero(), gdt1 = zero();
#pragma GCC unroll 16
          for (int n = 0; n < N; ++n) {
            const V lm = fmadd(gy, set1(Cl[n]), lam[n]);  // lam_l
            parts[n] = lm * du;
            const V lc = exp2v(dt * A2[n]) * lm;           // carried to step l-1
            const V ww = lc * Sj[n];                        // lam_l * dA_l * s_{l-1}
            if (n & 1) {
              sumB1 = fmadd(lm, set1(Bl[n]), sumB1);
              gdt1 = fmadd(ww, Aw[n], gdt1);
            } else {
              sumB0 = fmadd(lm, set1(Bl[n]), sumB0);
              gdt0 = fmadd(ww, Aw[n], gdt0);
            }
            gA[n] = fmadd(ww, dt, gA[n]);
            lam[n] = lc;
          }
          reduce_lanes(parts, N, gB + l * N, accumulate);
          const V sumB = sumB0 + sumB1;
          store_act<kBf16>(d.gu, g0 + l * D, fmadd(gy, dskip, dt * sumB), m);
          V gdt = fmadd(ul, sumB, gdt0 + gdt1);
          if (a.softplus) gdt = gdt * bs.sig[j];
          store_act<kBf16>(d.gdelta, g0 + l * D, gdt, m);
          gbias_acc = gbias_acc + gdt;
        }
        for (int n = 0; n < N; ++n) lams[g * N + n] = lam[n];
        // 4. the chunk's parameter-gradient partials (float, 32 steps) into the block's double sums, lane-wise:
        // a scalar scatter into the (D, N) layout per chunk took 3-5% of the backward
        double* block_sums = sums + g * nsums;
        for (int n = 0; n < N; ++n) add_to_double(block_sums + n * V::W, gA[n]);
        add_to_double(block_sums + N * V::W, gD_acc);
        add_to_double(block_sums + (N + 1) * V::W, gbias_acc);
      }
    }
    // every chunk done: the sums become this batch entry's partials (written once: this task owns these
    // channels of batch entry b, so the op allocates them without a zero fill)
    for (int g = 0; g < nb; ++g) {
      const BlockInfo bi = block_info(D, blk0 + g);
      const double* block_sums = sums + g * nsums;
      double* gA_out = d.gA + (b * D + bi.c0) * N;
      for (int i = 0; i < bi.nc; ++i)
        for (int n = 0; n < N; ++n) gA_out[i * N + n] = block_sums[n * V::W + i];
      for (int i = 0; i < bi.nc; ++i) {
        d.gD[b * D + bi.c0 + i] = block_sums[N * V::W + i];
        d.gbias[b * D + bi.c0 + i] = block_sums[(N + 1) * V::W + i];
      }
    }
  }
}

void scan_fwd_task(const ScanArgs& a, int64_t b, int64_t blk0, int nb, float* scratch) {
  if (a.nstate == 16) scan_fwd_group<16>(a, b, blk0, nb, scratch);
  else scan_fwd_group<0>(a, b, blk0, nb, scratch);
}

void scan_bwd_task(const ScanArgs& a, int64_t b, int64_t blk0, int nb, float* scratch) {
  if (a.bf16) {
    if (a.nstate == 16) scan_bwd_group<16, true>(a, b, blk0, nb, scratch);
    else scan_bwd_group<0, true>(a, b, blk0, nb, scratch);
  } else {
    if (a.nstate == 16) scan_bwd_group<16, false>(a, b, blk0, nb, scratch);
    else scan_bwd_group<0, false>(a, b, blk0, nb, scratch);
  }
}

}  // namespace
}  // namespace SSAMBA_NS
}  // namespace ssamba
