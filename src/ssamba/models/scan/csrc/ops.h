// The forward operators of ops.cpp, for the other torch-glue files (mixer.cpp) to call without the dispatcher.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

namespace ssamba {

// Selective scan over channels-last tensors, one list entry per direction (see the ssamba_cpu::scan_fwd schema).
std::tuple<at::Tensor, std::vector<at::Tensor>> scan_fwd(
    std::vector<at::Tensor> u, std::vector<at::Tensor> delta, std::vector<at::Tensor> A, std::vector<at::Tensor> B,
    std::vector<at::Tensor> C, c10::List<std::optional<at::Tensor>> D, c10::List<std::optional<at::Tensor>> bias,
    std::optional<at::Tensor> z, bool softplus, bool save);

// The same with the output in out_dtype: float32, or bfloat16 (inference, save=false), which the kernel rounds
// as it writes (round to nearest even, like Tensor.to) instead of a float32 output and a cast pass.
std::tuple<at::Tensor, std::vector<at::Tensor>> scan_fwd_as(
    std::vector<at::Tensor> u, std::vector<at::Tensor> delta, std::vector<at::Tensor> A, std::vector<at::Tensor> B,
    std::vector<at::Tensor> C, c10::List<std::optional<at::Tensor>> D, c10::List<std::optional<at::Tensor>> bias,
    std::optional<at::Tensor> z, bool softplus, bool save, at::ScalarType out_dtype);

// Causal and anti-causal depthwise conv + SiLU of channels-last x.
std::tuple<at::Tensor, at::Tensor> conv_fwd(at::Tensor x, at::Tensor w_f, at::Tensor b_f, at::Tensor w_b,
                                            at::Tensor b_b);

}  // namespace ssamba
