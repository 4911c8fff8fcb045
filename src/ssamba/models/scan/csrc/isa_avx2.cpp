// Kernels built for AVX2 + FMA; ops.cpp picks this table at run time only when the CPU supports it.
#pragma GCC target("avx2,fma")
#include "simd_avx2.h"
#include "vmath.h"
#include "scan_kernels.h"
#include "conv_kernels.h"
#include "norm_kernels.h"

namespace ssamba {

const KernelTable* kernels_avx2() {
  static const KernelTable table = {"avx2", avx2::V::W, &avx2::scan_fwd_task, &avx2::scan_bwd_task,
                                    &avx2::conv_fwd_task, &avx2::conv_bwd_task, &avx2::add_norms_rows,
                                    avx2::conv_fwd_block_floats(),
                                    avx2::conv_bwd_block_floats()};
  return &table;
}

}  // namespace ssamba
