// Exact float conversions: hand-checked round-to-nearest-even cases and exhaustive round trips.
#include <gtest/gtest.h>

#include <cmath>

#include <cstring>

#include "core/dtype.h"
#include "core/tensor.h"
#include "io/safetensors.h"

using namespace stdit;

TEST(DType, NamesAndSizes) {
  DType t;
  ASSERT_TRUE(parse_dtype("BF16", &t));
  EXPECT_EQ(t, DType::BF16);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
  EXPECT_STREQ(dtype_name(DType::BOOL), "BOOL");
  EXPECT_FALSE(parse_dtype("F33", &t));
  EXPECT_FALSE(parse_dtype("f32", &t));  // names are case-sensitive in safetensors
}

TEST(DType, Bf16RoundToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(bits_f32(0x3F808000)), 0x3F80);  // tie, 0x3F80 is even -> down
  EXPECT_EQ(f32_to_bf16(bits_f32(0x3F818000)), 0x3F82);  // tie, 0x3F81 odd -> up
  EXPECT_EQ(f32_to_bf16(bits_f32(0x3F808001)), 0x3F81);  // just above the tie
  EXPECT_EQ(f32_to_bf16(bits_f32(0x3F807FFF)), 0x3F80);  // just below
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7F80);
  EXPECT_EQ(f32_to_bf16(bits_f32(0x7F7FFFFF)), 0x7F80);  // FLT_MAX rounds to inf
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  // 993.33 rounds to 992 (step 4 in [512, 1024)), the quantisation spec §8.6 describes.
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(993.33f)), 992.0f);
}

TEST(DType, Bf16RoundTripAllValues) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), h) << std::hex << h;
  }
}

TEST(DType, F16RoundToNearestEven) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7BFF);             // largest finite
  EXPECT_EQ(f32_to_f16(65519.996f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);             // tie with odd mantissa -> inf
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3C00);      // tie -> even
  EXPECT_EQ(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);  // tie -> even (up)
  EXPECT_EQ(f32_to_f16(0x1p-14f), 0x0400);             // smallest normal
  EXPECT_EQ(f32_to_f16(0x1p-24f), 0x0001);             // smallest subnormal
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);             // tie between 0 and 1 -> 0
  EXPECT_EQ(f32_to_f16(1.5f * 0x1p-25f), 0x0001);
  EXPECT_EQ(f32_to_f16(3 * 0x1p-25f), 0x0002);         // tie between 1 and 2 -> 2
  EXPECT_EQ(f32_to_f16(0x1p-30f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(INFINITY), 0x7C00);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
  EXPECT_EQ(f16_to_f32(0x0001), 0x1p-24f);
  EXPECT_EQ(f16_to_f32(0x3555), 0.33325195f);
}

TEST(DType, F16RoundTripAllValues) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << h;
  }
}

// FP8 E4M3 against ml_dtypes' float8_e4m3fn (tests/data/fp8, tools/reference/make_fp8_fixtures.py):
// every code decodes to its value, and every input (ties, neighbours of ties, subnormals, random
// values of every binade, both signs) encodes to the same code. Beyond ml_dtypes' range our cast
// saturates as the GPU's cvt.rn.satfinite does.
TEST(DType, Fp8E4m3MatchesReference) {
  const auto f = SafetensorsFile::open(std::string(STDIT_TEST_DATA) + "/fp8/e4m3.safetensors");
  const Tensor dec = f->get("decoded"), in = f->get("inputs"), codes = f->get("codes");
  for (int c = 0; c < 256; ++c) {
    const float want = dec.data<float>()[c], got = f8e4m3_to_f32(static_cast<uint8_t>(c));
    if (std::isnan(want)) EXPECT_TRUE(std::isnan(got)) << "code " << c;
    else EXPECT_EQ(f32_bits(got), f32_bits(want)) << "code " << c;
  }
  int wrong = 0;
  for (int64_t i = 0; i < in.numel(); ++i) {
    const uint8_t got = f32_to_f8e4m3(in.data<float>()[i]), want = codes.data<uint8_t>()[i];
    if (got != want && ++wrong <= 10)
      ADD_FAILURE() << in.data<float>()[i] << ": code " << int(got) << ", reference " << int(want);
  }
  EXPECT_EQ(wrong, 0) << "of " << in.numel();
  EXPECT_GT(in.numel(), 10000);
  // Saturation and NaN (where ml_dtypes gives NaN): +-448 for 464 .. inf, NaN stays NaN.
  for (float v : {464.0f, 500.0f, 1e30f, INFINITY}) {
    EXPECT_EQ(f32_to_f8e4m3(v), 0x7E) << v;
    EXPECT_EQ(f32_to_f8e4m3(-v), 0xFE) << v;
  }
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(f32_to_f8e4m3(NAN))));
  // Through Tensor::to both ways.
  const Tensor q = in.to(DType::F8_E4M3);
  EXPECT_EQ(std::memcmp(q.raw(), codes.raw(), codes.numel()), 0);
  const Tensor back = q.to(DType::F32);
  for (int64_t i = 0; i < 256 && i < back.numel(); ++i)
    EXPECT_EQ(back.data<float>()[i], f8e4m3_to_f32(codes.data<uint8_t>()[i]));
}
