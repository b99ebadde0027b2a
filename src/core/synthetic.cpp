#include "core/synthetic.h"

#include <cmath>

#include "core/error.h"
#include "core/philox.h"

namespace stdit {

namespace {
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
}  // namespace

Tensor synthetic_tensor(const std::string& name, const Shape& shape, uint64_t seed, double scale,
                        double offset) {
  int exp = 0;
  STDIT_CHECK(scale > 0 && std::frexp(scale, &exp) == 0.5, "synthetic weights: scale ", scale,
              " of '", name, "' is not a power of two");
  Tensor t = Tensor::empty(shape, DType::F32);
  float* p = t.data<float>();
  const uint64_t base = seed * kGolden + fnv1a64(name);
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t z = splitmix64(base + static_cast<uint64_t>(i) * kGolden);  // of base + (i+1) * golden
    const double m = static_cast<double>(z >> 40) - 8388608.0;  // -2^23 .. 2^23-1, exact
    p[i] = static_cast<float>(offset + m * 0x1p-23 * scale);
  }
  return t;
}

}  // namespace stdit
