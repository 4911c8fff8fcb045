// Inference forward of a whole bidirectional Mamba mixer in one operator call (ssamba_cpu::mixer_fwd).
//
// Why: the mixer's ~25 Python-level torch calls (seven matmuls through F.linear, the exp/neg of A, splits, the op
// wrappers) made a 513-token SSAMBA-tiny mixer take 4748 us on one core against 4404 us as this one call (measured
// interleaved), ~8 ms per forward.  Here the same operations run back to back from C++: at::mm on the same
// shapes and dtypes as F.linear (so the same kernels and, in float32 and bfloat16 alike, the same results), the conv
// and scan kernels called directly.  No autograd: the Python side takes this path only when no gradient is wanted
// (BiMambaMixer._forward_fused), and training keeps the separately differentiable ops.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops.h"

namespace ssamba {
namespace {

using at::Tensor;

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
  for (Tensor* w : {&w_in, &x_proj_w[0], &x_proj_w[1], &dt_proj_w[0], &dt_proj_w[1], &w_out}) {
    if (cast_weights) *w = w->to(hidden.scalar_type());
    check_same_dtype(*w, hidden, "a matmul weight");
  }
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
    const Tensor x = at::mm(h, w_in.narrow(0, 0, e).t()).view({batch, length, e});
    std::tie(us[0], us[1]) = conv_fwd(x, conv_w[0].view({e, -1}), conv_b[0], conv_w[1].view({e, -1}), conv_b[1]);
  }
  c10::List<std::optional<Tensor>> Ds, biases;
  for (int i = 0; i < 2; ++i) {
    const Tensor dbl = at::mm(us[i].view({batch * length, e}), x_proj_w[i].t());  // (B L, R + 2N)
    deltas.push_back(at::mm(dbl.narrow(1, 0, rank), dt_proj_w[i].t()).view({batch, length, e}));
    Bs.push_back(dbl.narrow(1, rank, nstate).view({batch, length, nstate}));
    Cs.push_back(dbl.narrow(1, rank + nstate, nstate).view({batch, length, nstate}));
    As.push_back(at::exp(A_log[i]).neg_());
    Ds.push_back(D[i]);
    biases.push_back(dt_bias[i]);
  }
  Tensor z = at::mm(h, w_in.narrow(0, e, e).t()).view({batch, length, e});
  Tensor y = std::get<0>(scan_fwd(us, deltas, As, Bs, Cs, Ds, biases, z, /*softplus=*/true, /*save=*/false));
  us.clear();  // the scan's inputs go before out_proj's output is allocated
  deltas.clear();
  z.reset();
  y = y.to(w_out.scalar_type()).view({batch * length, e});
  return at::mm(y, w_out.t()).view({batch, length, d_model});
}

}  // namespace
}  // namespace ssamba

TORCH_LIBRARY_FRAGMENT(ssamba_cpu, m) {
  m.def("mixer_fwd(Tensor hidden, Tensor w_in, Tensor[] conv_w, Tensor[] conv_b, Tensor[] x_proj_w, "
        "Tensor[] dt_proj_w, Tensor[] dt_bias, Tensor[] A_log, Tensor[] D, Tensor w_out, bool cast_weights) -> Tensor");
}

TORCH_LIBRARY_IMPL(ssamba_cpu, CPU, m) { m.impl("mixer_fwd", &ssamba::mixer_fwd); }
