// Kernels built for any x86-64 or other CPU; ops.cpp picks this table at run time only when the CPU supports it.
// no target pragma: baseline instruction set
#include "simd_generic.h"
#include "vmath.h"
#include "scan_kernels.h"
#include "conv_kernels.h"
#include "norm_kernels.h"

namespace ssamba {

const KernelTable* kernels_generic() {
  static const KernelTable table = {"generic", generic::V::W, &generic::scan_fwd_task, &generic::scan_bwd_task,
                                    &generic::conv_fwd_task, &generic::conv_bwd_task, &generic::add_norms_rows,
                                    generic::conv_fwd_block_floats(),
                                    generic::conv_bwd_block_floats()};
  return &table;
}

}  // namespace ssamba
