// Counter-based random numbers (Philox4x32-10, Salmon et al. 2011): the same seed gives the same
// numbers on any machine and any backend, element by element, in any order.
#pragma once
#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace stdit {

std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// Standard normal F32 tensor. Element i comes from block i / 4 of stream `stream`
// (counter = {block lo, block hi, stream, 0}, key = seed): its 4 words give two Box-Muller pairs,
// u = (w + 0.5) / 2^32, z = sqrt(-2 ln u1) * (cos, sin)(2 pi u2), computed in f64, rounded to f32.
Tensor philox_normal(const Shape& shape, uint64_t seed, uint32_t stream = 0);

}  // namespace stdit
