// Torch glue of the CPU kernels: operator schemas (namespace ssamba_cpu), argument checks, allocation, the
// OpenMP loop over (batch, channel block) tasks, and the run-time choice of instruction set.
// Autograd and fake (meta) implementations are registered from Python (ssamba/models/scan/ops.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "args.h"
#include "ops.h"

namespace ssamba {
namespace {

using at::Tensor;
using OptList = c10::List<std::optional<Tensor>>;

bool cpu_supports(const std::string& isa) {
#if defined(SSAMBA_X86)
  __builtin_cpu_init();
  if (isa == "avx512bf16")
    return kernels_avx512bf16() != nullptr && cpu_supports("avx512") && __builtin_cpu_supports("avx512bf16");
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return isa == "generic";
}

const KernelTable* table_for(const std::string& isa) {
#if defined(SSAMBA_X86)
  if (isa == "avx512bf16") return kernels_avx512bf16();
  if (isa == "avx512") return kernels_avx512();
  if (isa == "avx2") return kernels_avx2();
#endif
  return kernels_generic();
}

const KernelTable* best_table() {
  for (const char* isa : {"avx512bf16", "avx512", "avx2"})
    if (cpu_supports(isa)) return table_for(isa);
  return kernels_generic();
}

const KernelTable*& current() {
  static const KernelTable* table = best_table();
  return table;
}

// Run f(task) for every task on the torch thread count, dynamically scheduled: a static split stalls when
// another process takes a core.  Each thread gets `scratch_floats` of private scratch (64-byte aligned).
template <class F>
void parallel_tasks(int64_t ntasks, int64_t scratch_floats, const F& f) {
  // inside another parallel region (mixer_pair_fwd: one mixer per thread) the calling thread does every task
  const int nthreads =
      omp_in_parallel() ? 1 : (int)std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntasks));
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    std::vector<float> buffer(scratch_floats + 16);
    float* scratch = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buffer.data()) + 63) & ~uintptr_t(63));
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntasks; ++t) f(t, scratch);
  }
}

// A (batch, length, channels) CPU tensor with unit channel stride, of the given dtype (float32 or bfloat16).
void check_cl(const Tensor& t, const char* name, int64_t d0, int64_t d1, int64_t d2,
              at::ScalarType dtype = at::kFloat) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype, "ssamba_cpu: ", name, " must be a ", dtype,
              " CPU tensor (like the other activations), got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.dim() == 3 && t.size(0) == d0 && t.size(1) == d1 && t.size(2) == d2, "ssamba_cpu: ", name,
              " has shape ", t.sizes(), ", expected (", d0, ", ", d1, ", ", d2, ")");
  // (an empty tensor counts as contiguous whatever its strides, so .contiguous() may leave an expanded one as is)
  TORCH_CHECK(t.stride(2) == 1 || d2 == 1 || t.numel() == 0, "ssamba_cpu: ", name,
              " must have unit stride in its last dimension");
}

void check_vec(const Tensor& t, const char* name, int64_t n) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.dim() == 1 &&
                  t.size(0) == n,
              "ssamba_cpu: ", name, " must be a contiguous float32 CPU tensor of shape (", n, ")");
}

const float* opt_ptr(const std::optional<Tensor>& t, const char* name, int64_t n) {
  if (!t.has_value() || !t->defined()) return nullptr;
  check_vec(*t, name, n);
  return t->data_ptr<float>();
}

// Fill ScanArgs from the per-direction tensor lists (direction 1, if present, scans backwards in time).
ScanArgs make_scan_args(const std::vector<Tensor>& u, const std::vector<Tensor>& delta, const std::vector<Tensor>& A,
                        const std::vector<Tensor>& B, const std::vector<Tensor>& C, const OptList& D,
                        const OptList& bias, const std::optional<Tensor>& z, bool softplus) {
  const int ndirs = (int)u.size();
  TORCH_CHECK(ndirs >= 1 && ndirs <= kMaxDirs, "ssamba_cpu: 1 or 2 scan directions, got ", ndirs);
  TORCH_CHECK((int)delta.size() == ndirs && (int)A.size() == ndirs && (int)B.size() == ndirs &&
                  (int)C.size() == ndirs && (int)D.size() == ndirs && (int)bias.size() == ndirs,
              "ssamba_cpu: every per-direction list needs ", ndirs, " entries");
  ScanArgs a{};
  const at::ScalarType act = u[0].scalar_type();
  TORCH_CHECK(act == at::kFloat || act == at::kBFloat16, "ssamba_cpu: activations must be float32 or bfloat16");
  a.bf16 = act == at::kBFloat16;
  a.batch = u[0].size(0);
  a.length = u[0].size(1);
  a.dim = u[0].size(2);
  a.nstate = A[0].size(-1);
  a.ndirs = ndirs;
  a.softplus = softplus;
  a.scale = 1.0f / ndirs;
  TORCH_CHECK(a.nstate >= 1 && a.nstate <= kMaxState, "ssamba_cpu: d_state must be in [1, ", kMaxState, "]");
  if (z.has_value() && z->defined()) {
    check_cl(*z, "z", a.batch, a.length, a.dim, act);
    a.z = z->data_ptr();
    a.z_sb = z->stride(0);
    a.z_sl = z->stride(1);
  }
  for (int i = 0; i < ndirs; ++i) {
    ScanDir& d = a.dir[i];
    check_cl(u[i], "u", a.batch, a.length, a.dim, act);
    check_cl(delta[i], "delta", a.batch, a.length, a.dim, act);
    check_cl(B[i], "B", a.batch, a.length, a.nstate, act);
    check_cl(C[i], "C", a.batch, a.length, a.nstate, act);
    TORCH_CHECK(A[i].scalar_type() == at::kFloat && A[i].is_contiguous() && A[i].dim() == 2 &&
                    A[i].size(0) == a.dim && A[i].size(1) == a.nstate,
                "ssamba_cpu: A must be a contiguous float32 (", a.dim, ", ", a.nstate, ") tensor");
    d.u = u[i].data_ptr(); d.u_sb = u[i].stride(0); d.u_sl = u[i].stride(1);
    d.delta = delta[i].data_ptr(); d.d_sb = delta[i].stride(0); d.d_sl = delta[i].stride(1);
    d.A = A[i].data_ptr<float>();
    d.Bm = B[i].data_ptr(); d.b_sb = B[i].stride(0); d.b_sl = B[i].stride(1);
    d.Cm = C[i].data_ptr(); d.c_sb = C[i].stride(0); d.c_sl = C[i].stride(1);
    d.Dskip = opt_ptr(D.get(i), "D", a.dim);
    d.bias = opt_ptr(bias.get(i), "delta_bias", a.dim);
    d.reverse = i == 1;
  }
  return a;
}

int64_t num_chunks(int64_t length) { return (length + kChunk - 1) / kChunk; }

// Channel blocks per scan task.  While the activations fit in the caches the scan is compute-bound: as many
// blocks as keep >= 4 tasks per thread, so dynamic scheduling balances a core lost to another process.  Once a
// tensor outgrows them (kStreamFloats) the scan waits on memory: each task then reads the widest strip of every
// row it can (one task per thread), because every task sweeps all rows and a narrow strip leaves most of each
// DRAM page and prefetched line pair to be fetched again by the next task (B=1, L=22000, both directions: 1
// thread 96 -> 82 ms, 2 threads 73 -> 64 ms).  The switch sits at 1 MB per tensor, where the whole working set
// (~6 such tensors and the outputs) leaves L2: moving it there from 4 MB made B=1 L=2048 (2 threads, both
// directions) forward 4.76 -> 4.34 ms and B=4 L=512 with cold caches 4.20 -> 4.04 forward, 11.5 -> 11.2 ms backward;
// at 256 KB, B=1 L=513 lost its balancing (forward 0.97 -> 1.08 ms).  Results do not depend on the grouping.
constexpr int64_t kStreamFloats = 1 << 18;  // 1 MB of float32 per activation tensor
// The backward rounds the group up to whole sets of kPartialBlocks (its dL/dB, dL/dC partials are per set).
int group_size(int64_t batch, int64_t nblk, int64_t elements, int64_t multiple) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t per_thread = elements > kStreamFloats ? 1 : 4;
  int64_t g = (batch * nblk + per_thread * threads - 1) / (per_thread * threads);
  g = (g + multiple - 1) / multiple * multiple;
  return (int)std::max<int64_t>(1, std::min<int64_t>({g, (int64_t)kMaxGroup, nblk}));
}

// Run the scan kernel `fn` over every (batch, group of channel blocks) task.
template <class Fn>
void scan_tasks(const ScanArgs& a, const KernelTable* k, bool backward, Fn fn) {
  const int64_t nblk = (a.dim + k->width - 1) / k->width;
  const int g = group_size(a.batch, nblk, a.batch * a.length * a.dim, backward ? kPartialBlocks : 1);
  const int64_t ngroups = (nblk + g - 1) / g;
  const int64_t scratch = backward ? scan_bwd_scratch_floats(k->width, a.nstate, g)
                                   : scan_fwd_scratch_floats(k->width, a.nstate, g);
  parallel_tasks(a.batch * ngroups, scratch, [&](int64_t t, float* s) {
    const int64_t b = t / ngroups, blk0 = (t % ngroups) * g;
    fn(a, b, blk0, (int)std::min<int64_t>(g, nblk - blk0), s);
  });
}

// Grow-only scratch of the calling thread for the partial sums of dL/dB and dL/dC (one per kPartialBlocks channel
// blocks: d_inner / 64 times the size of those gradients with AVX-512).  Fresh multi-MB tensors would page-fault
// on every call (~2 us per 4 KB page: several ms per backward at batch 4); this memory is faulted in once.
// 64-byte aligned, so that a partial row of d_state 16 is one cache line, not two.
float* partials_workspace(int64_t floats) {
  thread_local std::vector<float> buffer;
  if ((int64_t)buffer.size() < floats + 16) buffer.resize(floats + 16);
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buffer.data()) + 63) & ~uintptr_t(63));
}

}  // namespace

std::tuple<Tensor, std::vector<Tensor>> scan_fwd(std::vector<Tensor> u, std::vector<Tensor> delta,
                                                 std::vector<Tensor> A, std::vector<Tensor> B,
                                                 std::vector<Tensor> C, OptList D, OptList bias,
                                                 std::optional<Tensor> z, bool softplus, bool save) {
  return scan_fwd_as(std::move(u), std::move(delta), std::move(A), std::move(B), std::move(C), std::move(D),
                     std::move(bias), std::move(z), softplus, save, at::kFloat);
}

std::tuple<Tensor, std::vector<Tensor>> scan_fwd_as(std::vector<Tensor> u, std::vector<Tensor> delta,
                                                    std::vector<Tensor> A, std::vector<Tensor> B,
                                                    std::vector<Tensor> C, OptList D, OptList bias,
                                                    std::optional<Tensor> z, bool softplus, bool save,
                                                    at::ScalarType out_dtype) {
  TORCH_CHECK(out_dtype == at::kFloat || (out_dtype == at::kBFloat16 && !save),
              "ssamba_cpu: the scan writes float32, or bfloat16 when nothing is saved for backward");
  ScanArgs a = make_scan_args(u, delta, A, B, C, D, bias, z, softplus);
  const auto opts = u[0].options().dtype(at::kFloat);
  const bool bf16_out = out_dtype == at::kBFloat16;
  // with a bf16 output, the float32 one holds the directions before the last (their partial sums)
  Tensor partial = at::empty({a.batch, a.length, a.dim}, opts);
  Tensor out = bf16_out ? at::empty({a.batch, a.length, a.dim}, opts.dtype(at::kBFloat16)) : partial;
  std::vector<Tensor> ckpts;
  for (int i = 0; i < a.ndirs; ++i) {
    ckpts.push_back(save ? at::empty({a.batch, num_chunks(a.length), a.nstate, a.dim}, opts) : at::empty({0}, opts));
    a.dir[i].ckpt = save ? ckpts.back().data_ptr<float>() : nullptr;
  }
  a.out = partial.data_ptr<float>();
  a.out_bf16 = bf16_out ? reinterpret_cast<uint16_t*>(out.data_ptr()) : nullptr;
  const KernelTable* k = current();
  if (a.length > 0) scan_tasks(a, k, false, k->scan_fwd);
  return {out, ckpts};
}

namespace {

// Gradients, flat: gu[dirs], gdelta[dirs], gA[dirs], gB[dirs], gC[dirs], gD[dirs], gbias[dirs], gz.
std::vector<Tensor> scan_bwd(Tensor gout, std::vector<Tensor> u, std::vector<Tensor> delta, std::vector<Tensor> A,
                             std::vector<Tensor> B, std::vector<Tensor> C, OptList D, OptList bias,
                             std::optional<Tensor> z, bool softplus, std::vector<Tensor> ckpt) {
  ScanArgs a = make_scan_args(u, delta, A, B, C, D, bias, z, softplus);
  TORCH_CHECK((int)ckpt.size() == a.ndirs, "ssamba_cpu: one checkpoint tensor per direction expected");
  gout = gout.to(at::kFloat).contiguous();
  check_cl(gout, "grad_out", a.batch, a.length, a.dim);
  a.gout = gout.data_ptr<float>();
  const KernelTable* k = current();
  const int64_t nblk = (a.dim + k->width - 1) / k->width;
  const auto opts = u[0].options().dtype(at::kFloat);
  const auto dopts = opts.dtype(at::kDouble);
  // dL/du, dL/ddelta and dL/dz in the activations' dtype (bf16: rounded in the kernel, not cast by autograd after);
  // the small ones (A, B, C, D, bias) are float32 and autograd casts B's and C's
  const auto gopts = opts.dtype(a.bf16 ? at::kBFloat16 : at::kFloat);
  std::vector<Tensor> gu, gdelta, gA, gBp, gCp, gD, gbias;
  const int64_t nseg = (nblk + kPartialBlocks - 1) / kPartialBlocks;
  const int64_t part = nseg * a.batch * a.length * a.nstate;
  float* ws = partials_workspace(2 * a.ndirs * part);
  for (int i = 0; i < a.ndirs; ++i) {
    TORCH_CHECK(ckpt[i].is_contiguous() && ckpt[i].numel() == a.batch * num_chunks(a.length) * a.nstate * a.dim,
                "ssamba_cpu: the forward pass did not save its states (called with save=False?)");
    ScanDir& d = a.dir[i];
    d.ckpt = ckpt[i].data_ptr<float>();
    gu.push_back(at::empty({a.batch, a.length, a.dim}, gopts));
    gdelta.push_back(at::empty({a.batch, a.length, a.dim}, gopts));
    gBp.push_back(at::from_blob(ws + (2 * i) * part, {nseg, a.batch, a.length, a.nstate}, opts));
    gCp.push_back(at::from_blob(ws + (2 * i + 1) * part, {nseg, a.batch, a.length, a.nstate}, opts));
    // each (batch entry, channel) belongs to one task, which writes its sums once: no zero fill needed
    gA.push_back(at::empty({a.batch, a.dim, a.nstate}, dopts));
    gD.push_back(at::empty({a.batch, a.dim}, dopts));
    gbias.push_back(at::empty({a.batch, a.dim}, dopts));
    d.gu = gu.back().data_ptr();
    d.gdelta = gdelta.back().data_ptr();
    d.gB = gBp.back().data_ptr<float>();
    d.gC = gCp.back().data_ptr<float>();
    d.gA = gA.back().data_ptr<double>();
    d.gD = gD.back().data_ptr<double>();
    d.gbias = gbias.back().data_ptr<double>();
  }
  Tensor gz, gz_part;
  if (z.has_value() && z->defined()) {  // (not a.z: an empty z has a null data pointer)
    gz = at::empty({a.batch, a.length, a.dim}, gopts);
    if (!a.bf16) {
      a.gz = gz.data_ptr<float>();
    } else {
      a.gz_bf16 = reinterpret_cast<uint16_t*>(gz.data_ptr());
      if (a.ndirs > 1) {  // the first direction's part, float32
        gz_part = at::empty({a.batch, a.length, a.dim}, opts);
        a.gz = gz_part.data_ptr<float>();
      }
    }
  }
  if (a.length > 0)
    scan_tasks(a, k, true, k->scan_bwd);
  else
    for (std::vector<Tensor>* ts : {&gA, &gD, &gbias})
      for (Tensor& t : *ts) t.zero_();
  std::vector<Tensor> result;
  for (auto& t : gu) result.push_back(t);
  for (auto& t : gdelta) result.push_back(t);
  for (auto& t : gA) result.push_back(t.sum(0).to(at::kFloat));
  for (auto& t : gBp) result.push_back(t.sum(0));  // per-set partials, summed in a fixed order
  for (auto& t : gCp) result.push_back(t.sum(0));
  for (auto& t : gD) result.push_back(t.sum(0).to(at::kFloat));
  for (auto& t : gbias) result.push_back(t.sum(0).to(at::kFloat));
  result.push_back(gz.defined() ? gz : at::empty({0}, gopts));
  return result;
}

ConvArgs make_conv_args(const Tensor& x, const Tensor& w_f, const Tensor& b_f, const Tensor& w_b,
                        const Tensor& b_b) {
  ConvArgs a{};
  TORCH_CHECK(x.dim() == 3, "ssamba_cpu: conv input must be (batch, length, channels)");
  a.batch = x.size(0);
  a.length = x.size(1);
  a.dim = x.size(2);
  a.width = w_f.size(-1);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "ssamba_cpu: conv input must be float32 or bfloat16");
  a.bf16 = x.scalar_type() == at::kBFloat16;
  check_cl(x, "x", a.batch, a.length, a.dim, x.scalar_type());
  TORCH_CHECK(a.width >= 1 && a.width <= kMaxConv, "ssamba_cpu: conv width must be in [1, ", kMaxConv, "]");
  for (const Tensor* w : {&w_f, &w_b})
    TORCH_CHECK(w->scalar_type() == at::kFloat && w->is_contiguous() && w->numel() == a.dim * a.width,
                "ssamba_cpu: conv weights must be contiguous float32 (", a.dim, ", ", a.width, ")");
  check_vec(b_f, "conv bias", a.dim);
  check_vec(b_b, "conv bias", a.dim);
  a.x = x.data_ptr(); a.x_sb = x.stride(0); a.x_sl = x.stride(1);
  a.nchunks = (a.length + kConvRows - 1) / kConvRows;
  a.w_f = w_f.data_ptr<float>(); a.b_f = b_f.data_ptr<float>();
  a.w_b = w_b.data_ptr<float>(); a.b_b = b_b.data_ptr<float>();
  return a;
}

}  // namespace

std::tuple<Tensor, Tensor> conv_fwd(Tensor x, Tensor w_f, Tensor b_f, Tensor w_b, Tensor b_b) {
  ConvArgs a = make_conv_args(x, w_f, b_f, w_b, b_b);
  Tensor y_f = at::empty({a.batch, a.length, a.dim}, x.options());
  Tensor y_b = at::empty({a.batch, a.length, a.dim}, x.options());
  a.y_f = y_f.data_ptr();
  a.y_b = y_b.data_ptr();
  const KernelTable* k = current();
  if (a.length > 0) {
    const int64_t taps = k->conv_block_floats * ((a.dim + k->width - 1) / k->width);  // every block's taps, a zero row
    parallel_tasks(a.batch * a.nchunks, taps,
                   [&](int64_t t, float* s) { k->conv_fwd(a, t / a.nchunks, t % a.nchunks, s); });
  }
  return {y_f, y_b};
}

namespace {

// Gradients: gx, gw_f, gb_f, gw_b, gb_b.
std::vector<Tensor> conv_bwd(Tensor g_f, Tensor g_b, Tensor x, Tensor w_f, Tensor b_f, Tensor w_b, Tensor b_b) {
  ConvArgs a = make_conv_args(x, w_f, b_f, w_b, b_b);
  g_f = g_f.to(x.scalar_type()).contiguous();
  g_b = g_b.to(x.scalar_type()).contiguous();
  check_cl(g_f, "grad y_f", a.batch, a.length, a.dim, x.scalar_type());
  check_cl(g_b, "grad y_b", a.batch, a.length, a.dim, x.scalar_type());
  const auto dopts = x.options().dtype(at::kDouble);
  Tensor gx = at::empty({a.batch, a.length, a.dim}, x.options());  // x's dtype: bf16 rounded in the kernel
  Tensor gw_f = at::empty({a.batch * a.nchunks, a.dim, a.width}, dopts);
  Tensor gw_b = at::empty({a.batch * a.nchunks, a.dim, a.width}, dopts);
  Tensor gb_f = at::empty({a.batch * a.nchunks, a.dim}, dopts), gb_b = at::empty({a.batch * a.nchunks, a.dim}, dopts);
  a.g_f = g_f.data_ptr(); a.g_b = g_b.data_ptr();
  a.gx = gx.data_ptr();
  a.gw_f = gw_f.data_ptr<double>(); a.gw_b = gw_b.data_ptr<double>();
  a.gb_f = gb_f.data_ptr<double>(); a.gb_b = gb_b.data_ptr<double>();
  const KernelTable* k = current();
  if (a.length > 0)
    parallel_tasks(a.batch * a.nchunks, k->conv_bwd_block_floats * ((a.dim + k->width - 1) / k->width),
                   [&](int64_t t, float* s) { k->conv_bwd(a, t / a.nchunks, t % a.nchunks, s); });
  else
    for (Tensor* t : {&gw_f, &gw_b, &gb_f, &gb_b}) t->zero_();
  auto f = [](const Tensor& t) { return t.sum(0).to(at::kFloat); };  // per-task partials, fixed order
  return {gx, f(gw_f).view(w_f.sizes()), f(gb_f), f(gw_b).view(w_b.sizes()), f(gb_b)};
}

// Residual add + LayerNorms between block pairs (inference): returns r = (prev + prev) + (h1 + h2) and
// LayerNorm(r) for each (weight, bias).  prev float32 or None (then r = h1 + h2); h1, h2 (h2 may be None) both
// float32 or both bfloat16; weights and biases float32 (dim,).  The caller checks that no gradient is wanted.
std::tuple<Tensor, std::vector<Tensor>> add_norms(std::optional<Tensor> prev, Tensor h1, std::optional<Tensor> h2,
                                                  std::vector<Tensor> weight, std::vector<Tensor> bias, double eps,
                                                  std::optional<at::ScalarType> out_dtype) {
  TORCH_CHECK(h1.dim() >= 1, "ssamba_cpu::add_norms: hidden must have a feature dimension");
  const int64_t dim = h1.size(-1), rows = dim ? h1.numel() / dim : 0;
  NormArgs a{};
  a.rows = rows;
  a.dim = dim;
  TORCH_CHECK(h1.scalar_type() == at::kFloat || h1.scalar_type() == at::kBFloat16,
              "ssamba_cpu::add_norms: hidden must be float32 or bfloat16, got ", h1.scalar_type());
  a.h_bf16 = h1.scalar_type() == at::kBFloat16;
  h1 = h1.contiguous();
  a.h1 = h1.data_ptr();
  Tensor h2c, prevc;
  if (h2.has_value() && h2->defined()) {
    TORCH_CHECK(h2->sizes() == h1.sizes() && h2->scalar_type() == h1.scalar_type(),
                "ssamba_cpu::add_norms: the two hidden tensors differ in shape or dtype");
    h2c = h2->contiguous();
    a.h2 = h2c.data_ptr();
  }
  if (prev.has_value() && prev->defined()) {
    TORCH_CHECK(prev->sizes() == h1.sizes() && prev->scalar_type() == at::kFloat,
                "ssamba_cpu::add_norms: the residual must be float32 of the hidden's shape, got ",
                prev->scalar_type(), " ", prev->sizes());
    prevc = prev->contiguous();
    a.prev = prevc.data_ptr<float>();
  }
  TORCH_CHECK(weight.size() == bias.size() && (weight.size() == 1 || weight.size() == 2),
              "ssamba_cpu::add_norms: one or two norms (a weight and a bias each)");
  a.nnorms = (int)weight.size();
  a.eps = (float)eps;
  const auto opts = h1.options().dtype(at::kFloat);
  Tensor r = at::empty(h1.sizes(), opts);
  a.r = r.data_ptr<float>();
  const at::ScalarType norm_dtype = out_dtype.value_or(at::kFloat);
  TORCH_CHECK(norm_dtype == at::kFloat || norm_dtype == at::kBFloat16,
              "ssamba_cpu::add_norms: the norms are written as float32 or bfloat16, not ", norm_dtype);
  a.out_bf16 = norm_dtype == at::kBFloat16;
  std::vector<Tensor> outs;
  for (int k = 0; k < a.nnorms; ++k) {
    check_vec(weight[k], "norm weight", dim);
    check_vec(bias[k], "norm bias", dim);
    a.weight[k] = weight[k].data_ptr<float>();
    a.bias[k] = bias[k].data_ptr<float>();
    outs.push_back(at::empty(h1.sizes(), opts.dtype(norm_dtype)));
    a.out[k] = outs.back().data_ptr();
  }
  const KernelTable* k = current();
  constexpr int64_t kRows = 64;
  parallel_tasks((rows + kRows - 1) / kRows, 0, [&](int64_t t, float*) {
    k->add_norms(a, t * kRows, std::min(rows, (t + 1) * kRows));
  });
  return {r, outs};
}

std::string isa() { return current()->name; }

// Select the instruction set ("avx512bf16", "avx512", "avx2", "generic", or "auto"); returns the one now in use.
std::string set_isa(std::string name) {
  if (name == "auto" || name.empty()) {
    current() = best_table();
  } else {
    TORCH_CHECK(name == "avx512bf16" || name == "avx512" || name == "avx2" || name == "generic",
                "ssamba_cpu: unknown isa '", name, "' (choose auto, avx512bf16, avx512, avx2, generic)");
    TORCH_CHECK(cpu_supports(name), "ssamba_cpu: this CPU does not support ", name);
    current() = table_for(name);
  }
  return current()->name;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const char* isa : {"avx512bf16", "avx512", "avx2", "generic"})
    if (cpu_supports(isa)) out.push_back(isa);
  return out;
}

}  // namespace
}  // namespace ssamba

TORCH_LIBRARY(ssamba_cpu, m) {
  m.def("scan_fwd(Tensor[] u, Tensor[] delta, Tensor[] A, Tensor[] B, Tensor[] C, Tensor?[] D, "
        "Tensor?[] delta_bias, Tensor? z, bool softplus, bool save) -> (Tensor, Tensor[])");
  m.def("scan_bwd(Tensor grad_out, Tensor[] u, Tensor[] delta, Tensor[] A, Tensor[] B, Tensor[] C, Tensor?[] D, "
        "Tensor?[] delta_bias, Tensor? z, bool softplus, Tensor[] ckpt) -> Tensor[]");
  m.def("conv_silu_fwd(Tensor x, Tensor w_f, Tensor b_f, Tensor w_b, Tensor b_b) -> (Tensor, Tensor)");
  m.def("conv_silu_bwd(Tensor g_f, Tensor g_b, Tensor x, Tensor w_f, Tensor b_f, Tensor w_b, Tensor b_b) "
        "-> Tensor[]");
  m.def("add_norms(Tensor? prev, Tensor h1, Tensor? h2, Tensor[] weight, Tensor[] bias, float eps, "
        "ScalarType? out_dtype=None) "
        "-> (Tensor, Tensor[])");
  m.def("isa() -> str", &ssamba::isa);
  m.def("set_isa(str name) -> str", &ssamba::set_isa);
  m.def("supported_isas() -> str[]", &ssamba::supported_isas);
}

TORCH_LIBRARY_IMPL(ssamba_cpu, CPU, m) {
  m.impl("scan_fwd", &ssamba::scan_fwd);
  m.impl("scan_bwd", &ssamba::scan_bwd);
  m.impl("conv_silu_fwd", &ssamba::conv_fwd);
  m.impl("conv_silu_bwd", &ssamba::conv_bwd);
  m.impl("add_norms", &ssamba::add_norms);
}
