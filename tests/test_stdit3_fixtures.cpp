// STDiT3 on the CPU backend against the PyTorch reference fixtures (tests/data/stdit3_*).
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>
#include <fstream>
#include <iostream>
#include <vector>
#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "core/synthetic.h"
#include "models/stdit3/forward_io.h"

using namespace stdit;

namespace {

const std::string kData = STDIT_TEST_DATA;
constexpr double kTol = 1e-4;  // docs/NUMERICS.md: CPU f32 vs PyTorch f32, normwise

// Weights of fixture c: synthetic, from the recipe manifest (too large to commit).
WeightMap recipe_weights(const std::string& path) {
  std::ifstream in(path);
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j.at("recipe"), "splitmix64-v1");
  const uint64_t seed = j.at("seed").get<uint64_t>();
  WeightMap w;
  for (const auto& t : j.at("tensors"))
    w[t.at("name")] = synthetic_tensor(t.at("name"), t.at("shape").get<Shape>(), seed,
                                       t.at("scale").get<double>(), t.at("offset").get<double>());
  return w;
}

std::unique_ptr<STDiT3> load_fixture_model(const std::string& name, Backend& be) {
  const std::string dir = kData + "/" + name;
  if (std::ifstream(dir + "/weights.json")) {
    const STDiT3Config cfg = load_stdit3_config(dir + "/config.json");
    return std::make_unique<STDiT3>(cfg, recipe_weights(dir + "/weights.json"), be);
  }
  return STDiT3::load(dir, be);
}

// Names compared, in execution order; the first one over tolerance is where the bug is.
const std::vector<std::string> kOrder = {"x_embed", "t", "t_mlp", "t0_mlp", "y_packed",
                                         "block.0", "block.1", "block.2", "block.3", "final",
                                         "output"};

struct Comparison {
  std::string first_divergence;  // "" when everything is within tolerance
  std::string report;
  int compared = 0;
};

Comparison compare(const std::map<std::string, Tensor>& got, const SafetensorsFile& expected) {
  Comparison c;
  for (const auto& name : kOrder) {
    if (!expected.contains(name)) continue;
    auto it = got.find(name);
    if (it == got.end()) {
      // t0_mlp is only computed when some frame is a conditioning frame (spec §4.6).
      if (name == "t0_mlp") continue;
      if (c.first_divergence.empty()) c.first_divergence = name;
      c.report += name + ": not produced\n";
      continue;
    }
    const double e = rel_error(it->second, expected.get(name));
    ++c.compared;
    c.report += cat(name, ": rel err ", e, "\n");
    if (!(e <= kTol) && c.first_divergence.empty()) c.first_divergence = name;
  }
  return c;
}

std::map<std::string, Tensor> run(STDiT3& model, const STDiT3Inputs& in) {
  std::map<std::string, Tensor> got;
  model.forward(in, [&](const std::string& n, const Tensor& t) { got[n] = t; });
  return got;
}

class Fixture : public ::testing::TestWithParam<std::string> {};

}  // namespace

TEST_P(Fixture, CpuForwardMatchesReference) {
  CpuBackend be;
  const std::string dir = kData + "/" + GetParam();
  auto model = load_fixture_model(GetParam(), be);
  const auto inputs = SafetensorsFile::open(dir + "/inputs.safetensors");
  const auto expected = SafetensorsFile::open(dir + "/expected.safetensors");
  const Comparison c = compare(run(*model, read_stdit3_inputs(*inputs)), *expected);
  std::cout << GetParam() << ":\n" << c.report;  // the numbers docs/NUMERICS.md quotes
  EXPECT_GE(c.compared, 7);
  EXPECT_EQ(c.first_divergence, "") << "first diverging intermediate: " << c.first_divergence
                                    << "\n" << c.report;
}

INSTANTIATE_TEST_SUITE_P(STDiT3, Fixture, ::testing::Values("stdit3_a", "stdit3_b", "stdit3_c"));

// Same inputs, any thread count: the same bits (the CPU's GEMMs are cut by their sizes, not by the
// threads: cpu::parallel_sgemm).
TEST(STDiT3Fixture, OutputBitsDoNotDependOnTheThreadCount) {
  CpuBackend be;
  auto model = load_fixture_model("stdit3_a", be);
  const auto inputs = SafetensorsFile::open(kData + "/stdit3_a/inputs.safetensors");
  const STDiT3Inputs in = read_stdit3_inputs(*inputs);
  const int threads = omp_get_max_threads();
  std::vector<Tensor> outs;
  for (int n : {1, 3}) {
    omp_set_num_threads(n);
    outs.push_back(run(*model, in).at("output").contiguous());
  }
  omp_set_num_threads(threads);
  ASSERT_EQ(outs[0].numel(), outs[1].numel());
  EXPECT_EQ(std::memcmp(outs[0].raw(), outs[1].raw(), static_cast<size_t>(outs[0].numel()) * 4), 0);
}

// The diagnostic points at the block that is wrong: perturb temporal block 0 (execution index 1).
TEST(STDiT3Fixture, DivergenceNamesTheFirstWrongBlock) {
  CpuBackend be;
  const std::string dir = kData + "/stdit3_a";
  const STDiT3Config cfg = load_stdit3_config(dir + "/config.json");
  const auto file = SafetensorsFile::open(dir + "/model.safetensors");
  WeightMap w = load_checked(*file, stdit3_param_specs(cfg), "--model");
  Tensor proj = w.at("temporal_blocks.0.attn.proj.weight").contiguous();
  Tensor changed = Tensor::empty(proj.shape(), DType::F32);
  std::memcpy(changed.raw(), proj.raw(), proj.nbytes());
  for (int64_t i = 0; i < changed.numel(); i += 7) changed.data<float>()[i] *= 1.5f;
  w["temporal_blocks.0.attn.proj.weight"] = changed;
  STDiT3 model(cfg, w, be);
  const auto inputs = SafetensorsFile::open(dir + "/inputs.safetensors");
  const auto expected = SafetensorsFile::open(dir + "/expected.safetensors");
  const Comparison c = compare(run(model, read_stdit3_inputs(*inputs)), *expected);
  EXPECT_EQ(c.first_divergence, "block.1") << c.report;
}

// With every frame noisy, passing x_mask must not change the result (spec §4.6).
TEST(STDiT3Fixture, AllTrueXMaskEqualsNoXMask) {
  CpuBackend be;
  auto model = load_fixture_model("stdit3_a", be);
  const auto inputs = SafetensorsFile::open(kData + "/stdit3_a/inputs.safetensors");
  STDiT3Inputs in = read_stdit3_inputs(*inputs);
  ASSERT_TRUE(in.x_mask.defined());
  const Tensor with = model->forward(in);
  in.x_mask = Tensor{};
  const Tensor without = model->forward(in);
  EXPECT_EQ(rel_error(with, without), 0.0);
}

// A keyed call (the sampler's) computes the text conditioning once and reuses it: the same key
// gives the reference's output again with the y it was made from, and keeps using that text when
// a later call passes other values under the key (the key is the caller's promise that y is the
// same); a new key or no key reads the new y. The positional table kept across calls follows a
// change of the patch grid.
TEST(STDiT3Fixture, KeyedTextIsComputedOnceAndReused) {
  CpuBackend be;
  auto model = load_fixture_model("stdit3_a", be);
  const auto inputs = SafetensorsFile::open(kData + "/stdit3_a/inputs.safetensors");
  const auto expected = SafetensorsFile::open(kData + "/stdit3_a/expected.safetensors");
  STDiT3Inputs in = read_stdit3_inputs(*inputs);
  const Tensor plain = model->forward(in);
  EXPECT_LT(rel_error(plain, expected->get("output")), kTol);
  in.text_key = new_text_key();
  EXPECT_EQ(rel_error(model->forward(in), plain), 0.0);  // first keyed call: computed
  EXPECT_EQ(rel_error(model->forward(in), plain), 0.0);  // second: reused
  STDiT3Inputs other = in;
  other.y = in.y.to(DType::F32).clone();
  for (int64_t i = 0; i < other.y.numel(); ++i) other.y.data<float>()[i] *= -0.5f;
  EXPECT_EQ(rel_error(model->forward(other), plain), 0.0);  // same key: the kept text
  other.text_key = 0;
  const Tensor changed = model->forward(other);
  EXPECT_GT(rel_error(changed, plain), 1e-3);
  other.text_key = new_text_key();
  EXPECT_EQ(rel_error(model->forward(other), changed), 0.0);
  // A key made for one batch is refused for another.
  STDiT3Inputs half = other;
  const int64_t B = in.x.size(0);
  half.x = in.x.slice(0, 0, B / 2).contiguous();
  half.timestep = in.timestep.slice(0, 0, B / 2).contiguous();
  half.y = other.y.slice(0, 0, B / 2).contiguous();
  half.x_mask = Tensor{};
  if (half.mask.defined() && half.mask.size(0) == B) half.mask = half.mask.slice(0, 0, B / 2).contiguous();
  EXPECT_THROW(model->forward(half), Error);
  half.text_key = new_text_key();
  EXPECT_NO_THROW(model->forward(half));
  // The kept positional table: a smaller grid (x cropped) equals a fresh model's output.
  STDiT3Inputs small = in;
  small.text_key = 0;
  small.x = in.x.slice(3, 0, in.x.size(3) - 2).contiguous();
  auto fresh = load_fixture_model("stdit3_a", be);
  EXPECT_EQ(rel_error(model->forward(small), fresh->forward(small)), 0.0);
  EXPECT_EQ(rel_error(model->forward(in), plain), 0.0);  // and back to the first grid
}

TEST(STDiT3Fixture, BadInputsGiveClearErrors) {
  CpuBackend be;
  auto model = load_fixture_model("stdit3_a", be);
  const auto inputs = SafetensorsFile::open(kData + "/stdit3_a/inputs.safetensors");
  const STDiT3Inputs good = read_stdit3_inputs(*inputs);
  auto error_of = [&](const std::function<void(STDiT3Inputs&)>& edit) -> std::string {
    STDiT3Inputs in = good;
    edit(in);
    try {
      model->forward(in);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(error_of([](STDiT3Inputs& in) { in.x = Tensor::zeros({4, 3, 3, 5, 7}, DType::F32); })
                .find("input 'x' has shape [4, 3, 3, 5, 7]"), std::string::npos);
  EXPECT_NE(error_of([](STDiT3Inputs& in) { in.timestep = Tensor::zeros({3}, DType::F32); })
                .find("'timestep'"), std::string::npos);
  EXPECT_NE(error_of([](STDiT3Inputs& in) { in.y = Tensor::zeros({4, 1, 8, 31}, DType::F32); })
                .find("input 'y'"), std::string::npos);
  EXPECT_NE(error_of([](STDiT3Inputs& in) { in.mask = Tensor::zeros({3, 8}, DType::I64); })
                .find("input 'mask'"), std::string::npos);
  EXPECT_NE(error_of([](STDiT3Inputs& in) { in.mask = Tensor::zeros({2, 8}, DType::I64); })
                .find("marks no text token"), std::string::npos);
  EXPECT_NE(error_of([](STDiT3Inputs& in) { in.x_mask = Tensor::zeros({4, 2}, DType::BOOL); })
                .find("input 'x_mask'"), std::string::npos);
  EXPECT_NE(error_of([](STDiT3Inputs& in) { in.fps = Tensor{}; }).find("'fps'"), std::string::npos);
  EXPECT_EQ(error_of([](STDiT3Inputs&) {}), "");
}

TEST(STDiT3Fixture, InputFileNamesAreChecked) {
  const std::string p = ::testing::TempDir() + "stdit_bad_inputs.safetensors";
  write_safetensors(p, {{"x", Tensor::zeros({1, 4, 1, 2, 2}, DType::F32)},
                        {"xmask", Tensor::zeros({1, 1}, DType::BOOL)}});
  const auto f = SafetensorsFile::open(p);
  try {
    read_stdit3_inputs(*f);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing input tensor(s): fps, height, timestep, width, y"),
              std::string::npos) << e.what();
  }
  write_safetensors(p, {{"x", Tensor::zeros({1}, DType::F32)}, {"timestep", Tensor::zeros({1}, DType::F32)},
                        {"y", Tensor::zeros({1}, DType::F32)}, {"fps", Tensor::zeros({1}, DType::F32)},
                        {"height", Tensor::zeros({1}, DType::F32)}, {"width", Tensor::zeros({1}, DType::F32)},
                        {"xmask", Tensor::zeros({1}, DType::F32)}});
  try {
    read_stdit3_inputs(*SafetensorsFile::open(p));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown input tensor(s) 'xmask'"), std::string::npos) << e.what();
  }
}
