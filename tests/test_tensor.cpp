// Tensor views and copies.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/synthetic.h"
#include "core/tensor.h"

using namespace stdit;

static Tensor iota(const Shape& s) {
  std::vector<float> v(static_cast<size_t>(shape_numel(s)));
  std::iota(v.begin(), v.end(), 0.0f);
  return Tensor::from_f32(s, v);
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = iota({2, 3, 4});
  Tensor p = t.permute({2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  EXPECT_FALSE(p.is_contiguous());
  Tensor c = p.contiguous();
  // c[k, i, j] == t[i, j, k] = 12 i + 4 j + k
  EXPECT_EQ(c.data<float>()[(3 * 2 + 1) * 3 + 2], 12 * 1 + 4 * 2 + 3);
  Tensor s = t.select(1, 2);  // [2, 4], t[:, 2, :]
  EXPECT_EQ(s.shape(), (Shape{2, 4}));
  EXPECT_EQ(s.contiguous().data<float>()[4 + 1], 12 + 8 + 1);
  Tensor sl = t.slice(2, 1, 3);
  EXPECT_EQ(sl.contiguous().data<float>()[1], 2.0f);
  EXPECT_EQ(t.view({6, -1}).shape(), (Shape{6, 4}));
  EXPECT_THROW(p.view({24}), Error);
}

TEST(Tensor, DtypeConversions) {
  Tensor t = Tensor::from_f32({3}, {1.0f, 993.33f, -0.5f});
  Tensor b = t.to(DType::BF16).to(DType::F32);
  EXPECT_EQ(b.data<float>()[1], 992.0f);
  Tensor i = Tensor::from_f32({2}, {3.0f, 0.0f}).to(DType::BOOL);
  EXPECT_EQ(i.data<uint8_t>()[0], 1);
  EXPECT_EQ(i.data<uint8_t>()[1], 0);
}

TEST(Tensor, RelErrorFlagsNaN) {
  Tensor a = Tensor::from_f32({2}, {1.0f, NAN});
  Tensor b = Tensor::from_f32({2}, {1.0f, 2.0f});
  EXPECT_TRUE(std::isinf(rel_error(a, b)));
  EXPECT_NEAR(rel_error(Tensor::from_f32({2}, {3.0f, 4.1f}), Tensor::from_f32({2}, {3.0f, 4.0f})),
              0.1 / 5.0, 1e-6);
}

// Values published by tools/reference/weights_recipe.py (the Python implementation of the same
// recipe); the two implementations must agree bit for bit.
TEST(Synthetic, MatchesPythonRecipe) {
  EXPECT_EQ(fnv1a64("x_embedder.proj.weight"), 0xe1a93c6446efb981ull);
  Tensor a = synthetic_tensor("x_embedder.proj.weight", {64, 4, 1, 2, 2}, 1, 0.25, 0.0);
  EXPECT_EQ(a.data<float>()[0], static_cast<float>(0x1.c465bp-4));
  Tensor b = synthetic_tensor("spatial_blocks.0.attn.q_norm.weight", {72}, 3, 0.125, 1.0);
  EXPECT_EQ(b.data<float>()[5], static_cast<float>(0x1.e0c366p-1));
  EXPECT_THROW(synthetic_tensor("w", {2}, 1, 0.3, 0.0), Error);  // scale must be a power of two
}
