// Inference forward of a whole bidirectional Mamba mixer in one operator call (ssamba_cpu::mixer_fwd), and of the
// two mixers of an SSAMBA block pair side by side (ssamba_cpu::mixer_pair_fwd).
//
// Why: the mixer's ~25 Python-level torch calls (seven matmuls through F.linear, the exp/neg of A, splits, the op
// wrappers) made a 513-token SSAMBA-tiny mixer take 4748 us on one core against 4404 us as this one call (measured
// interleaved), ~8 ms per forward.  Here the same operations run back to back from C++: at::mm on the same
// shapes and dtypes as F.linear (so the same kernels and, in float32 and bfloat16 alike, the same results), the conv
// and scan kernels called directly.  bfloat16 matmuls run on AMX tiles where the CPU has them (amx_linear.cpp:
// no oneDNN call setup, float32 weights packed without autocast's separate cast; the same bf16 products and float32
// sums as oneDNN's AMX kernels, bit for bit equal outputs as measured on SSAMBA-tiny).  No autograd: the Python
// side takes this path only when no gradient is wanted (BiMambaMixer._forward_fused), and training keeps the
// separately differentiable ops.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>
#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <exception>

#include "amx_linear.h"
#include "ops.h"

namespace ssamba {
namespace {

using at::Tensor;

// A matmul weight in the activation dtype, as autocast casts it: under CPU autocast through autocast's own cache
// (cached_cast: a float32 leaf parameter that requires grad is cast once per autocast region, on the thread that
// entered it, which clears the cache when the region ends), so many clips under one region cast the weights once
// (SSAMBA-tiny: ~5% of a bf16 forward on one thread).  Outside autocast a plain cast: nothing to clear a cache.
Tensor autocast_weight(const Tensor& w, at::ScalarType dtype) {
  if (at::autocast::is_autocast_enabled(at::kCPU) && dtype == at::autocast::get_autocast_dtype(at::kCPU))
    return at::autocast::cached_cast(dtype, w, c10::DeviceType::CPU);
  return w.to(dtype);
}

// Whether the bf16 matmuls run on AMX tiles (amx_linear.cpp): where the CPU and OS allow it, unless
// SSAMBA_AMX=0 (then at::mm, i.e. oneDNN, as F.linear would).
bool use_amx() {
  if (!amx_linear_available()) return false;
  const char* env = std::getenv("SSAMBA_AMX");
  return env == nullptr || std::strcmp(env, "0") != 0;
}

// a (rows, k) bfloat16 @ w.T on AMX, w (n, k) a Linear weight in float32 (rounded to bf16 as autocast's cast
// would) or bf16; the result in bf16, rounded from the float32 sum as a bf16 matmul's is.
Tensor amx_mm(Tensor a, Tensor w) {
  TORCH_CHECK(a.scalar_type() == at::kBFloat16, "ssamba_cpu: the AMX matmul takes bfloat16 activations, not ",
              a.scalar_type());
  if (a.stride(1) != 1) a = a.contiguous();
  if (w.stride(1) != 1) w = w.contiguous();
  const int64_t m = a.size(0), k = a.size(1), n = w.size(0);
  const Tensor packed = at::empty({amx_packed_elems(n, k)}, a.options().dtype(at::kShort));
  auto* packed_ptr = reinterpret_cast<uint16_t*>(packed.data_ptr());
  amx_pack_weights(w.data_ptr(), w.scalar_type() == at::kBFloat16, w.stride(0), n, k, packed_ptr);
  Tensor out = at::empty({m, n}, a.options());
  const auto* a_ptr = reinterpret_cast<const uint16_t*>(a.data_ptr());
  auto* out_ptr = reinterpret_cast<uint16_t*>(out.data_ptr());
  // blocks of 32 rows; inside mixer_pair_fwd's region this runs on the calling thread alone
  at::parallel_for(0, (m + 31) / 32, 4, [&](int64_t b0, int64_t b1) {
    std::vector<uint16_t> scratch(amx_scratch_elems(k));
    amx_linear(a_ptr, a.stride(0), m, k, packed_ptr, n, out_ptr, n, b0 * 32, std::min(b1 * 32, m), scratch.data());
  });
  return out;
}

// ssamba_cpu::amx_linear: a (rows, k) bfloat16, w (n, k) float32 or bfloat16 -> a @ w.T in bfloat16 (tests).
Tensor amx_linear_op(Tensor a, Tensor w) {
  TORCH_CHECK(amx_linear_available(), "ssamba_cpu::amx_linear: AMX is not available on this machine");
  TORCH_CHECK(a.dim() == 2 && w.dim() == 2 && a.size(1) == w.size(1) && a.scalar_type() == at::kBFloat16 &&
                  (w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16),
              "ssamba_cpu::amx_linear: a (rows, k) bfloat16 and w (n, k) float32 or bfloat16 expected");
  return amx_mm(a, w);
}

void check_same_dtype(const Tensor& t, const Tensor& like, const char* name) {
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "ssamba_cpu::mixer_fwd: ", name, " is ", t.scalar_type(),
              " but hidden is ", like.scalar_type(), " (the matmul weights come in the activation dtype)");
}

// hidden (B, L, d) float32 or bfloat16; w_in (2E, d), x_proj_w (R + 2N, E), dt_proj_w (E, R) and w_out (d, E) in
// hidden's dtype, or cast to it when cast_weights (what autocast would do); the rest is used in float32: conv
// weights (E, 1, K) and biases (E,), dt biases (E,), A_log (E, N), D (E,).  The parameters come as the module holds
// them, so the Python side does no per-call conversions (each costs about a microsecond there).
// Per-direction lists hold [the set scanning forward in time, the set scanning backward].
// Returns out_proj(silu(z) * (y_f + y_b) / 2), (B, L, d) in hidden's dtype.
Tensor mixer_fwd(Tensor hidden, Tensor w_in, std::vector<Tensor> conv_w, std::vector<Tensor> conv_b,
                 std::vector<Tensor> x_proj_w, std::vector<Tensor> dt_proj_w, std::vector<Tensor> dt_bias,
                 std::vector<Tensor> A_log, std::vector<Tensor> D, Tensor w_out, bool cast_weights) {
  TORCH_CHECK(hidden.dim() == 3, "ssamba_cpu::mixer_fwd: hidden must be (batch, length, d_model)");
  TORCH_CHECK(conv_w.size() == 2 && conv_b.size() == 2 && x_proj_w.size() == 2 && dt_proj_w.size() == 2 &&
                  dt_bias.size() == 2 && A_log.size() == 2 && D.size() == 2,
              "ssamba_cpu::mixer_fwd: every per-direction list needs 2 entries");
  // bf16 on AMX: the float32 weights are rounded to bf16 as they are packed (no autocast cast pass)
  const bool amx = hidden.scalar_type() == at::kBFloat16 && use_amx();
  for (Tensor* w : {&w_in, &x_proj_w[0], &x_proj_w[1], &dt_proj_w[0], &dt_proj_w[1], &w_out}) {
    if (amx && cast_weights && w->scalar_type() == at::kFloat) continue;
    if (cast_weights) *w = autocast_weight(*w, hidden.scalar_type());
    check_same_dtype(*w, hidden, "a matmul weight");
  }
  const auto mm = [amx](const Tensor& a, const Tensor& w) { return amx ? amx_mm(a, w) : at::mm(a, w.t()); };
  const auto f32 = [](std::vector<Tensor>& ts) {
    for (Tensor& t : ts) t = t.to(at::kFloat).contiguous();
  };
  for (std::vector<Tensor>* ts : {&conv_w, &conv_b, &dt_bias, &A_log, &D}) f32(*ts);
  const int64_t batch = hidden.size(0), length = hidden.size(1), d_model = hidden.size(2);
  const int64_t e = w_in.size(0) / 2, rank = dt_proj_w[0].size(1), nstate = A_log[0].size(1);
  TORCH_CHECK(w_in.dim() == 2 && w_in.size(0) == 2 * e && w_in.size(1) == d_model && w_out.size(0) == d_model &&
                  w_out.size(1) == e && x_proj_w[0].size(0) == rank + 2 * nstate,
              "ssamba_cpu::mixer_fwd: weight shapes do not fit hidden ", hidden.sizes());
  const Tensor h = hidden.reshape({batch * length, d_model});
  std::vector<Tensor> us(2), deltas, As, Bs, Cs;  // us: both directions' conv + SiLU outputs
  {  // x is dead once convolved, before z is made: one (B, L, E) less at the peak
    const Tensor x = mm(h, w_in.narrow(0, 0, e)).view({batch, length, e});
    std::tie(us[0], us[1]) = conv_fwd(x, conv_w[0].view({e, -1}), conv_b[0], conv_w[1].view({e, -1}), conv_b[1]);
  }
  c10::List<std::optional<Tensor>> Ds, biases;
  for (int i = 0; i < 2; ++i) {
    const Tensor dbl = mm(us[i].view({batch * length, e}), x_proj_w[i]);  // (B L, R + 2N)
    deltas.push_back(mm(dbl.narrow(1, 0, rank), dt_proj_w[i]).view({batch, length, e}));
    Bs.push_back(dbl.narrow(1, rank, nstate).view({batch, length, nstate}));
    Cs.push_back(dbl.narrow(1, rank + nstate, nstate).view({batch, length, nstate}));
    As.push_back(at::exp(A_log[i]).neg_());
    Ds.push_back(D[i]);
    biases.push_back(dt_bias[i]);
  }
  Tensor z = mm(h, w_in.narrow(0, e, e)).view({batch, length, e});
  // out_proj's input in its dtype, written so by the scan (bf16: no float32 output and cast pass)
  Tensor y = std::get<0>(scan_fwd_as(us, deltas, As, Bs, Cs, Ds, biases, z, /*softplus=*/true, /*save=*/false,
                                     hidden.scalar_type()));
  us.clear();  // the scan's inputs go before out_proj's output is allocated
  deltas.clear();
  z.reset();
  return mm(y.view({batch * length, e}), w_out).view({batch, length, d_model});
}

// Two mixers at once, each on a thread of its own (two threads at most; the torch thread count if lower): the
// two blocks of an SSAMBA pair read the same residual, so they are independent.  Why: at B=1 and a few hundred
// tokens each op of a mixer is too short to split well over two threads (the small matmuls and the conv barely
// gain from a second thread, and every op pays a fork/join); run side by side, every op of a mixer runs whole on
// one core, with that core's L2 to itself.  Measured on 2 cores, SSAMBA-tiny forward at B=1, 512 tokens: 0.90-0.92
// of the time of one mixer after the other on both threads (interleaved; bf16 autocast 0.81; 0.79 while another
// process keeps a core busy: one fork/join per block pair instead of one per op, each waiting for a preempted
// thread);
// larger inputs split well op by op (mamba.PAIR_MAX_ELEMENTS limits the Python side's use).  The ops inside see an
// active parallel region and run on their calling thread (ATen's parallel_for, MKL and oneDNN by default;
// parallel_tasks in ops.cpp).
// Lists hold mixer 0's entries first; per-direction lists mixer 0's two, then mixer 1's.  Returns both outputs,
// the same bit for bit as two mixer_fwd calls.
std::vector<Tensor> mixer_pair_fwd(std::vector<Tensor> hidden, std::vector<Tensor> w_in, std::vector<Tensor> conv_w,
                                   std::vector<Tensor> conv_b, std::vector<Tensor> x_proj_w,
                                   std::vector<Tensor> dt_proj_w, std::vector<Tensor> dt_bias,
                                   std::vector<Tensor> A_log, std::vector<Tensor> D, std::vector<Tensor> w_out,
                                   bool cast_weights) {
  TORCH_CHECK(hidden.size() == 2 && w_in.size() == 2 && w_out.size() == 2 && conv_w.size() == 4 &&
                  conv_b.size() == 4 && x_proj_w.size() == 4 && dt_proj_w.size() == 4 && dt_bias.size() == 4 &&
                  A_log.size() == 4 && D.size() == 4,
              "ssamba_cpu::mixer_pair_fwd: two hidden tensors, two of each shared weight and four of each "
              "per-direction one expected");
  const auto half = [](const std::vector<Tensor>& v, int i) {
    return std::vector<Tensor>(v.begin() + 2 * i, v.begin() + 2 * i + 2);
  };
  // here, on the calling thread: autocast's cache is per thread (see autocast_weight); on AMX nothing to cast
  if (cast_weights && !(hidden[0].scalar_type() == at::kBFloat16 && use_amx())) {
    for (std::vector<Tensor>* ws : {&w_in, &x_proj_w, &dt_proj_w, &w_out}) {
      const int per_mixer = (int)ws->size() / 2;  // one shared weight or two per-direction ones
      for (int i = 0; i < (int)ws->size(); ++i)
        (*ws)[i] = autocast_weight((*ws)[i], hidden[i / per_mixer].scalar_type());
    }
  }
  std::vector<Tensor> out(2);
  std::exception_ptr err[2];
  // the worker thread runs with the caller's grad mode, dispatch-key exclusions and autocast state
  const at::ThreadLocalState tls;
  const int nthreads = at::get_num_threads() >= 2 && !omp_in_parallel() ? 2 : 1;
#pragma omp parallel for num_threads(nthreads) schedule(static, 1) if (nthreads > 1)
  for (int i = 0; i < 2; ++i) {
    at::ThreadLocalStateGuard guard(tls);
    try {  // an exception must not leave the parallel region: rethrown below, on the calling thread
      out[i] = mixer_fwd(hidden[i], w_in[i], half(conv_w, i), half(conv_b, i), half(x_proj_w, i),
                         half(dt_proj_w, i), half(dt_bias, i), half(A_log, i), half(D, i), w_out[i], cast_weights);
    } catch (...) {
      err[i] = std::current_exception();
    }
  }
  for (const std::exception_ptr& e : err)
    if (e) std::rethrow_exception(e);
  return out;
}

}  // namespace
}  // namespace ssamba

TORCH_LIBRARY_FRAGMENT(ssamba_cpu, m) {
  m.def("amx_available() -> bool", [] { return ssamba::use_amx(); });  // what mixer_fwd decides, SSAMBA_AMX included
  m.def("amx_linear(Tensor a, Tensor w) -> Tensor");
  m.def("mixer_fwd(Tensor hidden, Tensor w_in, Tensor[] conv_w, Tensor[] conv_b, Tensor[] x_proj_w, "
        "Tensor[] dt_proj_w, Tensor[] dt_bias, Tensor[] A_log, Tensor[] D, Tensor w_out, bool cast_weights) -> Tensor");
  m.def("mixer_pair_fwd(Tensor[] hidden, Tensor[] w_in, Tensor[] conv_w, Tensor[] conv_b, Tensor[] x_proj_w, "
        "Tensor[] dt_proj_w, Tensor[] dt_bias, Tensor[] A_log, Tensor[] D, Tensor[] w_out, bool cast_weights) "
        "-> Tensor[]");
}

TORCH_LIBRARY_IMPL(ssamba_cpu, CPU, m) {
  m.impl("mixer_fwd", &ssamba::mixer_fwd);
  m.impl("amx_linear", &ssamba::amx_linear_op);
  m.impl("mixer_pair_fwd", &ssamba::mixer_pair_fwd);
}
