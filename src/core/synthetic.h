// Synthetic weights: a deterministic, platform-independent fill used by fixtures whose real-width
// weights are too large to commit, and by benchmarks. tools/reference/weights_recipe.py implements
// the same recipe ("splitmix64-v1"); both must produce bit-identical f32 values.
#pragma once
#include <cstdint>
#include <string>

#include "core/hash.h"  // fnv1a64
#include "core/tensor.h"

namespace stdit {

// value[i] = f32( offset + (m_i - 2^23) * 2^-23 * scale ), m_i = top 24 bits of
// splitmix64(base + (i+1) * golden), base = seed * golden + fnv1a64(name). `scale` is a power of two.
Tensor synthetic_tensor(const std::string& name, const Shape& shape, uint64_t seed, double scale,
                        double offset);

}  // namespace stdit
