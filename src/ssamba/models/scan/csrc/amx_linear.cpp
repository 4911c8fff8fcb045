// bfloat16 linear layers on AMX tiles: the matmuls of the fused inference mixer under bf16 autocast.
//
// Why: through at::mm, each bf16 matmul of a 513-token SSAMBA-tiny mixer pays oneDNN's per-call setup (descriptors,
// primitive cache, scratchpad allocation: ~30 us of a 35-80 us call), and autocast first casts every float32
// weight to bf16 in a separate pass (~5 ms of a ~64 ms forward on one core).  Here a weight is converted and packed
// in one pass, straight from its float32 values, and the product runs on AMX tiles with no setup.
//
// Tiles: C (4 tiles, 32 rows x 32 columns of float32) += A (2 tiles: 32 rows x 32 k of bf16) x B (2 tiles: 32 k x
// 32 columns, stored as 16 rows of k pairs: AMX's "VNNI" layout), over k in steps of 32.
#include "amx_linear.h"

#if defined(SSAMBA_X86) && ((defined(__clang__) && __clang_major__ >= 12) || \
                            (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11)) && defined(__linux__)
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512dq,avx512bw,avx512vl,avx512bf16")
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

namespace ssamba {
namespace {

constexpr int kTile = 16;      // rows of a tile, and float32 columns of a C tile
constexpr int kStepK = 32;     // bf16 k values per tile row
constexpr int kTileElems = kTile * kStepK;  // uint16 per A or B tile

struct TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Every tile 16 rows of 64 bytes (the only shape used).
void configure_tiles() {
  alignas(64) TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = kTile;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

bool os_grants_amx() {
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}

// r[i] <- column i of the 16 x 16 matrix of 32-bit values whose rows are r[0..15].
void transpose16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane: pairs of rows interleaved
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g) {  // lane L of u[4g + q]: rows 4g..4g+3 of column 4L + q
    u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int q = 0; q < 4; ++q) {  // column 4L + q: lane L of u[q], u[4 + q], u[8 + q], u[12 + q]
    const __m512i x0 = _mm512_shuffle_i32x4(u[q], u[4 + q], 0x44), x1 = _mm512_shuffle_i32x4(u[q], u[4 + q], 0xEE);
    const __m512i y0 = _mm512_shuffle_i32x4(u[8 + q], u[12 + q], 0x44);
    const __m512i y1 = _mm512_shuffle_i32x4(u[8 + q], u[12 + q], 0xEE);
    r[q] = _mm512_shuffle_i32x4(x0, y0, 0x88);
    r[4 + q] = _mm512_shuffle_i32x4(x0, y0, 0xDD);
    r[8 + q] = _mm512_shuffle_i32x4(x1, y1, 0x88);
    r[12 + q] = _mm512_shuffle_i32x4(x1, y1, 0xDD);
  }
}

// 32 values of a weight row from column k0 as bf16 (masked past k), one 32-bit pair (k0 + 2i, k0 + 2i + 1) per lane.
__m512i weight_pairs(const void* w, bool w_bf16, int64_t ldw, int64_t row, int64_t k0, int64_t k) {
  const int64_t rest = k - k0;
  const __mmask32 m32 = rest >= 32 ? ~__mmask32(0) : (__mmask32)((1ull << rest) - 1);
  if (w_bf16) return _mm512_maskz_loadu_epi16(m32, static_cast<const uint16_t*>(w) + row * ldw + k0);
  const float* p = static_cast<const float*>(w) + row * ldw + k0;
  const __m512 lo = _mm512_maskz_loadu_ps((__mmask16)(m32 & 0xffff), p);
  const __m512 hi = _mm512_maskz_loadu_ps((__mmask16)(m32 >> 16), p + 16);
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // round to nearest even, like Tensor.to(torch.bfloat16)
}

int64_t n_tiles(int64_t n) { return (n + 2 * kTile - 1) / (2 * kTile) * 2; }  // even: B tiles go in pairs
int64_t k_steps(int64_t k) { return (k + kStepK - 1) / kStepK; }

}  // namespace

// CPUID leaf 7: AMX-TILE and AMX-BF16 (subleaf 0, EDX bits 24 and 22), AVX512-BF16 (subleaf 1, EAX bit 5), and
// AVX-512 F/BW/VL (subleaf 0, EBX bits 16, 30, 31); read directly, since __builtin_cpu_supports knows the AMX
// names only in newer compilers.
static bool cpu_has_amx_bf16() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool amx = (d >> 24 & 1) && (d >> 22 & 1), avx512 = (b >> 16 & 1) && (b >> 30 & 1) && (b >> 31 & 1);
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return amx && avx512 && (a >> 5 & 1);
}

bool amx_linear_available() {
  static const bool ok = cpu_has_amx_bf16() && os_grants_amx();
  return ok;
}

int64_t amx_packed_elems(int64_t n, int64_t k) { return n_tiles(n) * k_steps(k) * kTileElems; }

void amx_pack_weights(const void* w, bool w_bf16, int64_t ldw, int64_t n, int64_t k, uint16_t* packed) {
  const int64_t nt = n_tiles(n), ks = k_steps(k);
  for (int64_t j = 0; j < nt; ++j) {
    for (int64_t s = 0; s < ks; ++s) {
      __m512i rows[kTile];  // row c: the 16 k pairs of output column 16 j + c
      for (int c = 0; c < kTile; ++c) {
        const int64_t col = j * kTile + c;
        rows[c] = col < n ? weight_pairs(w, w_bf16, ldw, col, s * kStepK, k) : _mm512_setzero_si512();
      }
      transpose16(rows);  // tile row r: pair r of every column
      uint16_t* tile = packed + (j * ks + s) * kTileElems;
      for (int r = 0; r < kTile; ++r) _mm512_storeu_si512(tile + r * kStepK, rows[r]);
    }
  }
}

int64_t amx_scratch_elems(int64_t k) { return 2 * kTile * k_steps(k) * kStepK + 4 * kTile * kTile * 2 + 32; }

void amx_linear(const uint16_t* a, int64_t lda, int64_t m, int64_t k, const uint16_t* packed, int64_t n,
                uint16_t* out, int64_t ldo, int64_t m0, int64_t m1, uint16_t* scratch) {
  const int64_t nt = n_tiles(n), ks = k_steps(k), kp = ks * kStepK;
  // 64-byte aligned scratch: a block of 32 rows of a, zero padded (last block, or k not a multiple of 32), and
  // the four C tiles as float32
  uint16_t* stage = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t(63));
  float* cbuf = reinterpret_cast<float*>(stage + 2 * kTile * kp);
  configure_tiles();
  for (int64_t i0 = m0; i0 < m1; i0 += 2 * kTile) {
    const int64_t rows = m1 - i0 < 2 * kTile ? m1 - i0 : 2 * kTile;
    const uint16_t* ablk = a + i0 * lda;
    int64_t astride = lda;
    if (rows < 2 * kTile || k % kStepK) {  // stage: a tile row reads 32 k values, and 16 rows
      for (int64_t r = 0; r < 2 * kTile; ++r) {
        uint16_t* dst = stage + r * kp;
        if (r < rows) {
          std::memcpy(dst, a + (i0 + r) * lda, k * sizeof(uint16_t));
          std::memset(dst + k, 0, (kp - k) * sizeof(uint16_t));
        } else {
          std::memset(dst, 0, kp * sizeof(uint16_t));
        }
      }
      ablk = stage;
      astride = kp;
    }
    for (int64_t j = 0; j < nt; j += 2) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t s = 0; s < ks; ++s) {  // (loading each tile just before its first use was 5-7% slower)
        _tile_loadd(4, ablk + s * kStepK, astride * 2);
        _tile_loadd(5, ablk + kTile * astride + s * kStepK, astride * 2);
        _tile_loadd(6, packed + (j * ks + s) * kTileElems, 64);
        _tile_loadd(7, packed + ((j + 1) * ks + s) * kTileElems, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, cbuf, 128);  // cbuf: 32 rows x 32 float32 columns
      _tile_stored(1, cbuf + kTile, 128);
      _tile_stored(2, cbuf + kTile * 32, 128);
      _tile_stored(3, cbuf + kTile * 32 + kTile, 128);
      const int64_t c0 = j * kTile, cols = n - c0 < 2 * kTile ? n - c0 : 2 * kTile;
      const __mmask32 mask = cols >= 32 ? ~__mmask32(0) : (__mmask32)((1ull << cols) - 1);
      for (int64_t r = 0; r < rows; ++r) {
        const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(cbuf + r * 32 + kTile), _mm512_loadu_ps(cbuf + r * 32));
        _mm512_mask_storeu_epi16(out + (i0 + r) * ldo + c0, mask, (__m512i)v);
      }
    }
  }
  _tile_release();
}

}  // namespace ssamba

#else  // no AMX intrinsics in this compiler, or not x86-64 Linux
namespace ssamba {
bool amx_linear_available() { return false; }
int64_t amx_packed_elems(int64_t, int64_t) { return 0; }
void amx_pack_weights(const void*, bool, int64_t, int64_t, int64_t, uint16_t*) {}
int64_t amx_scratch_elems(int64_t) { return 0; }
void amx_linear(const uint16_t*, int64_t, int64_t, int64_t, const uint16_t*, int64_t, uint16_t*, int64_t, int64_t,
                int64_t, uint16_t*) {}
}  // namespace ssamba
#endif
