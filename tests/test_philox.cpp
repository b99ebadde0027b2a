// Philox4x32-10 against the published known-answer vectors (Random123 kat_vectors), and the
// statistics of the normal draws.
#include <gtest/gtest.h>

#include <cmath>

#include "core/philox.h"

using namespace stdit;

TEST(Philox, KnownAnswers) {
  using A4 = std::array<uint32_t, 4>;
  EXPECT_EQ(philox4x32_10({0, 0, 0, 0}, {0, 0}), (A4{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(philox4x32_10({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}),
            (A4{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(philox4x32_10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}),
            (A4{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(Philox, NormalDrawsAreReproducibleAndStandard) {
  const Tensor a = philox_normal({1000, 100}, 42);
  const Tensor b = philox_normal({1000, 100}, 42);
  const Tensor c = philox_normal({1000, 100}, 43);
  const Tensor s = philox_normal({1000, 100}, 42, 1);
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
  EXPECT_NE(std::memcmp(a.raw(), c.raw(), a.nbytes()), 0);
  EXPECT_NE(std::memcmp(a.raw(), s.raw(), a.nbytes()), 0);
  double sum = 0, sq = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    sum += a.data<float>()[i];
    sq += a.data<float>()[i] * a.data<float>()[i];
  }
  const double mean = sum / a.numel(), var = sq / a.numel() - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.01);  // 5 sigma of the mean over 1e5 draws is 0.016
  EXPECT_NEAR(var, 1.0, 0.02);
  // A prefix of a larger draw is the smaller draw (element i depends only on i).
  const Tensor small = philox_normal({10}, 42);
  EXPECT_EQ(std::memcmp(small.raw(), a.raw(), small.nbytes()), 0);
}
