// bfloat16 linear layers on AMX tiles (Sapphire Rapids and later), for the fused inference mixer (mixer.cpp).
// Plain pointers only: amx_linear.cpp is compiled for AMX, and no inline code may be shared with other files.
#pragma once
#include <cstdint>

namespace ssamba {

// Whether amx_linear can run: the compiler built it, the CPU has AMX-BF16 and AVX512-BF16, and Linux granted this
// process the AMX tile state (asked once).
bool amx_linear_available();

// uint16 elements of a weight packed by amx_pack_weights.
int64_t amx_packed_elems(int64_t n, int64_t k);

// Packs w (n rows of k values, row stride ldw; float32, or bfloat16 when w_bf16) for amx_linear: bfloat16 rounded to
// nearest even (what autocast's weight cast gives), in AMX's pair-interleaved tiles of 16 columns x 32 k, zero padded.
void amx_pack_weights(const void* w, bool w_bf16, int64_t ldw, int64_t n, int64_t k, uint16_t* packed);

// Scratch uint16 elements amx_linear needs per call (a staging block of rows and the tile outputs).
int64_t amx_scratch_elems(int64_t k);

// out[i, j] = bf16(sum_k a[i, k] w[j, k]) for rows i in [m0, m1) (a multiple of 32 apart, or m1 = m): bfloat16 a
// (row stride lda), w packed, float32 accumulation, the sum rounded to nearest even; out has row stride ldo.
void amx_linear(const uint16_t* a, int64_t lda, int64_t m, int64_t k, const uint16_t* packed, int64_t n,
                uint16_t* out, int64_t ldo, int64_t m0, int64_t m1, uint16_t* scratch);

}  // namespace ssamba
