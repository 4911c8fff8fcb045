// The AVX-512 kernels with AVX512-BF16's float32 -> bfloat16 conversion (Cooper Lake, Sapphire Rapids and later,
// Zen 4): what bf16 autocast inference writes (conv outputs, the mixer's scan output, the pair norms) is rounded in
// one instruction.  ops.cpp picks this table at run time only when the CPU supports it (and the compiler did).
#include "args.h"

#if (defined(__clang__) && __clang_major__ >= 9) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,avx512bf16")
#define SSAMBA_AVX512_BF16
#include "simd_avx512.h"
#include "vmath.h"
#include "scan_kernels.h"
#include "conv_kernels.h"
#include "norm_kernels.h"

namespace ssamba {

const KernelTable* kernels_avx512bf16() {
  static const KernelTable table = {"avx512bf16", avx512bf16::V::W, &avx512bf16::scan_fwd_task,
                                    &avx512bf16::scan_bwd_task, &avx512bf16::conv_fwd_task,
                                    &avx512bf16::conv_bwd_task, &avx512bf16::add_norms_rows,
                                    avx512bf16::conv_fwd_block_floats(), avx512bf16::conv_bwd_block_floats()};
  return &table;
}

}  // namespace ssamba
#else
namespace ssamba {
const KernelTable* kernels_avx512bf16() { return nullptr; }  // a compiler without AVX512-BF16 intrinsics
}  // namespace ssamba
#endif
