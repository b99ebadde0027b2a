// Strict loading: one error listing every missing, unexpected and mismatched key.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "io/checkpoint.h"

using namespace stdit;
namespace fs = std::filesystem;

TEST(Checkpoint, OneErrorListsEveryProblem) {
  const std::string p = (fs::temp_directory_path() / "stdit_test_ckpt.safetensors").string();
  write_safetensors(p, {{"a.weight", Tensor::zeros({2, 3}, DType::F32)},
                        {"b.weight", Tensor::zeros({4}, DType::F32)},       // wrong shape
                        {"c.ids", Tensor::zeros({5}, DType::I64)},          // wrong dtype
                        {"stray.bias", Tensor::zeros({1}, DType::F32)}});   // unexpected
  const std::vector<ParamSpec> expected = {{"a.weight", {2, 3}},
                                           {"b.weight", {5}},
                                           {"c.ids", {5}},
                                           {"d.missing", {7}},
                                           {"rope.freqs", {2}, /*optional=*/true}};
  auto f = SafetensorsFile::open(p);
  try {
    load_checked(*f, expected, "--dit");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(p), std::string::npos) << m;
    EXPECT_NE(m.find("--dit"), std::string::npos) << m;
    EXPECT_NE(m.find("1 missing, 1 unexpected, 2 mismatched"), std::string::npos) << m;
    EXPECT_NE(m.find("d.missing [7]"), std::string::npos) << m;
    EXPECT_NE(m.find("stray.bias [1]"), std::string::npos) << m;
    EXPECT_NE(m.find("b.weight: shape [4], expected [5]"), std::string::npos) << m;
    EXPECT_NE(m.find("c.ids: dtype I64"), std::string::npos) << m;
    EXPECT_EQ(m.find("rope.freqs"), std::string::npos) << "optional keys may be absent: " << m;
  }
  fs::remove(p);
}

TEST(Checkpoint, LoadsWhenEverythingMatches) {
  const std::string p = (fs::temp_directory_path() / "stdit_test_ckpt_ok.safetensors").string();
  write_safetensors(p, {{"a", Tensor::from_f32({2}, {1, 2}).to(DType::BF16)}});
  auto f = SafetensorsFile::open(p);
  const WeightMap w = load_checked(*f, {{"a", {2}}, {"opt", {3}, true}}, "--model");
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w.at("a").dtype(), DType::BF16);
  EXPECT_EQ(w.at("a").to(DType::F32).data<float>()[1], 2.0f);
  fs::remove(p);
}
