// Plain-pointer argument blocks shared by the ISA-specific kernel files and the torch glue (ops.cpp).
// Kept free of torch and standard-library inline code: each kernel file is compiled for a different
// instruction set, and inline functions shared between them could be merged by the linker into the wrong one.
#pragma once
#include <cstdint>

namespace ssamba {

constexpr int kMaxState = 256;    // largest d_state the kernels accept
constexpr int kMaxConv = 8;       // largest depthwise-conv width
constexpr int kChunk = 32;        // scan steps between saved states (backward recomputes within a chunk)
constexpr int kMaxDirs = 2;
constexpr int kConvRows = 128;    // rows (time steps) per conv task
constexpr int kPartialBlocks = 4; // channel blocks summed into one dL/dB, dL/dC partial (backward tasks own whole sets)

// One scan direction over channels-last tensors: u, delta (B, L, D); B, C (B, L, N); A (D, N) contiguous.
// Channel (and state) stride is 1; the other strides are in elements.  The activations u, delta, B, C (and z)
// are float32 or, when ScanArgs::bf16, bfloat16 (what autocast's matmuls return); all arithmetic is float32.
struct ScanDir {
  const void* u; int64_t u_sb, u_sl;
  const void* delta; int64_t d_sb, d_sl;
  const float* A;
  const void* Bm; int64_t b_sb, b_sl;
  const void* Cm; int64_t c_sb, c_sl;
  const float* Dskip;   // (D,) or null
  const float* bias;    // delta bias (D,) or null
  bool reverse;         // scan from l = L-1 down to 0 (outputs stay at their time index)
  float* ckpt;          // (B, nchunks, N, D): state entering each chunk; null when not saving
  // backward only
  void* gu; void* gdelta;             // (B, L, D) contiguous, in the activations' dtype (see ScanArgs::bf16)
  float* gB; float* gC;               // partials per kPartialBlocks channel blocks (nseg, B, L, N) contiguous
  double* gA; double* gD; double* gbias;  // per batch partials (B, D, N), (B, D), (B, D)
};

// out[b, l, :] = scale * sum_dirs y_dir[b, l, :] * silu(z[b, l, :])   (no z: no gate)
struct ScanArgs {
  int64_t batch, length, dim, nstate;
  int ndirs;
  bool softplus;
  bool bf16;                              // activations are bfloat16
  float scale;
  const void* z; int64_t z_sb, z_sl;     // null: no gate
  float* out;                             // (B, L, D) contiguous, float32
  uint16_t* out_bf16;                     // non-null (forward only): the last direction writes its gated output
                                          // here, rounded to bfloat16, and `out` holds the earlier directions'
                                          // partial sums
  const float* gout;                      // backward: (B, L, D) contiguous
  float* gz;                              // backward: (B, L, D) contiguous float32 dL/dz (with bf16 activations
                                          // and two directions: the first one's part), or null
  uint16_t* gz_bf16;                      // backward with bf16 activations: dL/dz rounded to bfloat16, written by
                                          // the last direction (the sum of both in float32, rounded once)
  ScanDir dir[kMaxDirs];
};

// Causal (forward) and anti-causal (backward-direction) depthwise conv + SiLU over x (B, L, E).
// w_f, w_b: (E, K) contiguous float32; biases (E,).  yf, yb: (B, L, E) contiguous.  x, y and their gradients
// g are float32, or bfloat16 when bf16.
struct ConvArgs {
  int64_t batch, length, dim, width;
  int64_t nchunks;  // row chunks of kConvRows (tasks per batch entry)
  bool bf16;
  const void* x; int64_t x_sb, x_sl;
  const float* w_f; const float* b_f;
  const float* w_b; const float* b_b;
  void* y_f; void* y_b;
  // backward
  const void* g_f; const void* g_b;     // (B, L, E) contiguous
  void* gx;                              // (B, L, E) contiguous, bfloat16 when bf16 (rounded once), else float32
  double* gw_f; double* gb_f; double* gw_b; double* gb_b;  // per task partials (B, nchunks, E, K), (B, nchunks, E)
};

// Residual add and LayerNorms between block pairs (inference; norm_kernels.h): r = (prev + prev) + (h1 + h2),
// out[k] = LayerNorm(r; weight[k], bias[k]).  All (rows, dim) contiguous; h1, h2 float32 or, when h_bf16,
// bfloat16; out float32 or, when out_bf16, bfloat16; prev and h2 may be null; the rest float32.
struct NormArgs {
  int64_t rows, dim;
  const float* prev;
  const void* h1; const void* h2;
  bool h_bf16;
  int nnorms;  // 1 or 2
  const float* weight[2]; const float* bias[2];
  float eps;
  float* r;
  void* out[2];
  bool out_bf16;
};

// Entry points of one instruction-set build.  A scan call handles one task: batch b, channel blocks
// blk0 .. blk0+nb-1; a conv call one (batch, chunk of kConvRows rows).
struct KernelTable {
  const char* name;
  int width;  // channels per block (SIMD lanes)
  void (*scan_fwd)(const ScanArgs&, int64_t b, int64_t blk0, int nb, float* scratch);
  void (*scan_bwd)(const ScanArgs&, int64_t b, int64_t blk0, int nb, float* scratch);
  void (*conv_fwd)(const ConvArgs&, int64_t b, int64_t chunk, float* scratch);
  void (*conv_bwd)(const ConvArgs&, int64_t b, int64_t chunk, float* scratch);
  void (*add_norms)(const NormArgs&, int64_t row0, int64_t row1);
  int64_t conv_block_floats;      // scratch per channel block of conv_fwd (its taps, its part of a zero row)
  int64_t conv_bwd_block_floats;  // scratch per channel block of conv_bwd
};

constexpr int kMaxGroup = 64;  // channel blocks per scan task

// Scratch floats per scan task of nb blocks: 5 vectors per chunk step and the chunk's B and C rows (forward);
// the backward adds 4 vectors per step and the states of a chunk; then N vectors per block for each
// quantity a block carries between chunks (forward: state, A; backward: adjoint, A, A log2(e), and N + 2 vectors of
// double sums of its dL/dA, dL/dD, dL/dbias).
static inline int64_t state_pad(int width, int64_t nstate) { return (nstate + width - 1) / width * width; }
static inline int64_t scan_fwd_scratch_floats(int width, int64_t nstate, int nb) {
  return (int64_t)width * 5 * kChunk + 2 * kChunk * state_pad(width, nstate) + (int64_t)width * 2 * nb * nstate;
}
static inline int64_t scan_bwd_scratch_floats(int width, int64_t nstate, int nb) {
  return scan_fwd_scratch_floats(width, nstate, 0) + (int64_t)width * (4 * kChunk + kChunk * nstate) +
         (int64_t)width * 3 * nb * nstate + (int64_t)width * 2 * nb * (nstate + 2);
}

const KernelTable* kernels_avx512bf16();  // null when the compiler lacked AVX512-BF16
const KernelTable* kernels_avx512();
const KernelTable* kernels_avx2();
const KernelTable* kernels_generic();

}  // namespace ssamba
