// Kernels built for AVX-512 (F/DQ/BW/VL); ops.cpp picks this table at run time only when the CPU supports it.
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#include "simd_avx512.h"
#include "vmath.h"
#include "scan_kernels.h"
#include "conv_kernels.h"
#include "norm_kernels.h"

namespace ssamba {

const KernelTable* kernels_avx512() {
  static const KernelTable table = {"avx512", avx512::V::W, &avx512::scan_fwd_task, &avx512::scan_bwd_task,
                                    &avx512::conv_fwd_task, &avx512::conv_bwd_task, &avx512::add_norms_rows,
                                    avx512::conv_fwd_block_floats(),
                                    avx512::conv_bwd_block_floats()};
  return &table;
}

}  // namespace ssamba
