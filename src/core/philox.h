// Counter-based random numbers (Philox4x32-10, Salmon et al. 2011): the same seed gives the same
// numbers on any machine and any backend, element by element, in any order.
#pragma once
#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace stdit {

std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// Standard normal F32 tensor. Element i comes from block i / 4 of stream `stream`, lane `lane`
// (counter = {block lo, block hi, stream, lane}, key = seed): its 4 words give two Box-Muller pairs,
// u = (w + 0.5) / 2^32, z = sqrt(-2 ln u1) * (cos, sin)(2 pi u2), computed in f64, rounded to f32.
Tensor philox_normal(const Shape& shape, uint64_t seed, uint32_t stream = 0, uint32_t lane = 0);

// SplitMix64's output function of x (Steele et al. 2014): z = x + 0x9E3779B97F4A7C15, then
// z ^= z >> 30, z *= 0xBF58476D1CE4E5B9, z ^= z >> 27, z *= 0x94D049BB133111EB, z ^= z >> 31.
// Derives independent Philox keys from one seed.
uint64_t splitmix64(uint64_t x);

}  // namespace stdit
