// The embedded demo model (models/tiny, docs/DEMO_MODEL.md) draws what a prompt names: for prompts
// with a known colour and motion, the video made on the CPU backend with a fixed seed shows an
// object of that colour whose centre moves that way. The same check fails for random weights
// (tests/data's tiny models at the same size), so it is not vacuous. Also: the engine config's
// "defaults" block.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "core/philox.h"
#include "io/safetensors.h"
#include "media/frames.h"
#include "models/stdit3/stdit3.h"
#include "models/vae/vae.h"
#include "pipeline/denoiser.h"
#include "pipeline/engine.h"
#include "pipeline/generate.h"
#include "text/prompt.h"
#include "text/t5.h"
#include "text/tokenizer.h"
#include "demo_checks.h"
#include "tiny_engine.h"

using namespace stdit;
using stdit::testing::look;
using stdit::testing::psnr_ssim;
using stdit::testing::Seen;
namespace fs = std::filesystem;

namespace {

const std::string kData = STDIT_TEST_DATA;
// The embedded engine; STDIT_DEMO_ENGINE=DIR checks a candidate before it replaces models/tiny.
const std::string kDemo = std::getenv("STDIT_DEMO_ENGINE")
                              ? std::getenv("STDIT_DEMO_ENGINE")
                              : (fs::path(STDIT_TEST_DATA).parent_path().parent_path() / "models" / "tiny").string();

// One engine's models, loaded once; `video` is what `stdit generate PROMPT --seed S` draws
// (same prompt preparation, Philox noise stream 0, sampler and decoder), as uint8 frames.
struct Model {
  CpuBackend be;
  Engine eng;
  std::unique_ptr<T5Tokenizer> tok;
  std::unique_ptr<T5Encoder> t5;
  std::unique_ptr<STDiT3> dit;
  std::unique_ptr<OpenSoraVae> vae;

  explicit Model(const std::string& dir, const ExecutionPolicy& policy = resolve_policy({}, "cpu", 0))
      : be(policy), eng(open_engine(dir)) {
    tok = std::make_unique<T5Tokenizer>(eng.spiece);
    t5 = T5Encoder::load(eng.t5, be);
    dit = STDiT3::load(eng.dit, be);
    vae = OpenSoraVae::load(eng.vae, be);
  }
  Frames video(const std::string& prompt, uint64_t seed, int size, int frames, int steps, double cfg,
               const SamplerOptions& savings = {}, SamplerReport* report = nullptr) {
    const int L = 300;
    const Tokens t = tok->encode(prepare_prompt(prompt, {6.5, std::nullopt, std::nullopt}), L);
    Tensor ids = Tensor::zeros({1, L}, DType::I64), mask = Tensor::zeros({1, L}, DType::I64);
    for (int i = 0; i < L; ++i) {
      ids.data<int64_t>()[i] = t.ids[i];
      mask.data<int64_t>()[i] = t.mask[i];
    }
    const Tensor y = t5->forward(ids, mask);
    const int64_t T = load_vae_config(eng.vae + "/config.json").latent_frames(frames);
    const Tensor noise = philox_normal({1, 4, T, size / 8, size / 8}, seed, 0);
    const Tensor z = rflow_sample(*dit, y.view({1, 1, L, y.size(2)}), mask, noise, size, size, frames, 24.0, steps, cfg,
                                  {}, savings, report);
    return frames_from_video_tensor(vae->decode(z, frames).select(0, 0), 24.0);
  }
};

struct Case {
  const char* prompt;
  const char* colour;
  const char* motion;
  uint64_t seed;
};
// Prompts and seeds checked against the shipped weights (docs/DEMO_MODEL.md has the success rate
// over many seeds; these are cases it gets right).
const Case kCases[] = {
    {"a red ball moving to the right", "red", "right", 0},
    {"a blue square moving up", "blue", "up", 0},
    {"a green triangle moving to the left", "green", "left", 0},
    {"a yellow circle moving down", "yellow", "down", 0},
    {"an orange ball moving left", "orange", "left", 0},
    {"a red square standing still", "red", "still", 0},
};

// A converted engine of tests/data's random-weight tiny models (the old embedded model).
std::string random_engine() { return stdit::testing::tiny_random_engine(DType::BF16); }

}  // namespace

TEST(DemoModel, DrawsTheNamedColourMovingTheNamedWay) {
  // The trained demo engine carries a "defaults" block (tools/train/make_engine.py); until it is
  // committed, models/tiny holds the random-weight engine and there is nothing to check.
  if (!open_engine(kDemo).defaults.steps) GTEST_SKIP() << kDemo << " is not the trained demo model yet (issue 8)";
  Model m(kDemo);
  const EngineDefaults& d = m.eng.defaults;
  ASSERT_TRUE(d.height && d.num_frames && d.steps && d.cfg_scale) << kDemo << " has incomplete defaults";
  for (const Case& c : kCases) {
    const Frames f = m.video(c.prompt, c.seed, *d.height, *d.num_frames, *d.steps, *d.cfg_scale);
    const Seen s = look(f, c.colour, c.motion);
    EXPECT_TRUE(s.ok) << "\"" << c.prompt << "\" seed " << c.seed << ": " << s.str();
  }
}

// What step caching and --cfg-until cost on the demo model (docs/NUMERICS.md keeps the table this
// prints): per setting, the denoiser evaluations saved, the worst frame's PSNR and the mean SSIM of
// each video against the plain one of the same seed, and how many of the six prompts still pass
// the colour-and-direction check. The defaults' settings (teacache 0.1, cfg-until 0.8) must keep
// every prompt passing.
TEST(DemoModel, StepSavingsQualityAgainstThePlainVideo) {
  if (!open_engine(kDemo).defaults.steps) GTEST_SKIP() << kDemo << " is not the trained demo model yet (issue 8)";
  Model m(kDemo);
  const EngineDefaults& d = m.eng.defaults;
  struct Setting {
    const char* name;
    SamplerOptions so;
    bool must_pass_all;
  };
  // (teacache:0.05 skips no step on this model: each step's rescaled change alone exceeds 0.05.)
  const Setting settings[] = {{"teacache:0.1", {0.1, 1.0}, true},
                              {"teacache:0.2", {0.2, 1.0}, false},
                              {"cfg-until 0.6", {0, 0.6}, false},
                              {"cfg-until 0.8", {0, 0.8}, true},
                              {"both", {0.1, 0.8}, false}};
  std::vector<Frames> plain;
  for (const Case& c : kCases) plain.push_back(m.video(c.prompt, c.seed, *d.height, *d.num_frames, *d.steps, *d.cfg_scale));
  std::printf("demo model, %zu prompts, %d steps: setting | evaluations run | worst PSNR dB | mean SSIM | checks passed\n",
              std::size(kCases), *d.steps);
  for (const Setting& st : settings) {
    double work = 0;  // in CFG-batch evaluations: a conditional-only one costs half, a cached one nothing
    int passed = 0;
    double psnr_min = 1e9, ssim_mean = 0;
    for (size_t k = 0; k < std::size(kCases); ++k) {
      const Case& c = kCases[k];
      SamplerReport rep;
      const Frames f = m.video(c.prompt, c.seed, *d.height, *d.num_frames, *d.steps, *d.cfg_scale, st.so, &rep);
      for (char ch : rep.schedule) work += ch == 'R' ? 1.0 : ch == 'r' ? 0.5 : 0.0;
      const auto [p, s] = psnr_ssim(f, plain[k]);
      psnr_min = std::min(psnr_min, p);
      ssim_mean += s / std::size(kCases);
      const bool ok = look(f, c.colour, c.motion).ok;
      passed += ok;
      if (st.must_pass_all) {
        EXPECT_TRUE(ok) << st.name << ": \"" << c.prompt << "\" no longer passes";
      }
    }
    const double all = static_cast<double>(*d.steps) * std::size(kCases);
    std::printf("  %-14s | %5.1f of %d (%.2fx fewer) | %6.2f | %.4f | %d of %zu\n", st.name,
                work / std::size(kCases), *d.steps, all / work, psnr_min, ssim_mean, passed, std::size(kCases));
    EXPECT_LT(work, all) << st.name << " saved nothing";
  }
}

// --precision fp8 (the CPU emulation of the GPU's arithmetic) against f32 on the demo model: every
// prompt still draws its colour moving its way, and the worst frame stays >= 30 dB from the f32
// video of the same seed (docs/NUMERICS.md keeps the figures this prints).
namespace {
struct Fp8Row {
  double psnr_min = 1e9, ssim_mean = 0;
  int passed = 0;
};
Fp8Row fp8_against_f32(const std::string& keep, const std::vector<Frames>& plain) {
  Model m(kDemo, resolve_policy({"fp8", "auto", {}, keep}, "cpu", 0));
  const EngineDefaults& d = m.eng.defaults;
  Fp8Row row;
  for (size_t k = 0; k < std::size(kCases); ++k) {
    const Case& c = kCases[k];
    const Frames f = m.video(c.prompt, c.seed, *d.height, *d.num_frames, *d.steps, *d.cfg_scale);
    const auto [p, s] = psnr_ssim(f, plain[k]);
    row.psnr_min = std::min(row.psnr_min, p);
    row.ssim_mean += s / std::size(kCases);
    const bool ok = look(f, c.colour, c.motion).ok;
    row.passed += ok;
    EXPECT_TRUE(ok || keep != "none") << "fp8: \"" << c.prompt << "\" no longer passes";
  }
  return row;
}
std::vector<Frames> plain_videos() {
  Model m(kDemo);
  const EngineDefaults& d = m.eng.defaults;
  std::vector<Frames> plain;
  for (const Case& c : kCases) plain.push_back(m.video(c.prompt, c.seed, *d.height, *d.num_frames, *d.steps, *d.cfg_scale));
  return plain;
}
}  // namespace

TEST(DemoModel, Fp8KeepsEveryPromptAndThirtyDecibels) {
  if (!open_engine(kDemo).defaults.steps) GTEST_SKIP() << kDemo << " is not the trained demo model yet (issue 8)";
  const Fp8Row r = fp8_against_f32("none", plain_videos());
  std::printf("demo model, fp8 vs f32, %zu prompts: worst PSNR %.2f dB, mean SSIM %.4f, checks %d of %zu\n",
              std::size(kCases), r.psnr_min, r.ssim_mean, r.passed, std::size(kCases));
  EXPECT_GE(r.psnr_min, 30.0);
  EXPECT_EQ(r.passed, static_cast<int>(std::size(kCases)));
}

// Which layers cost the most (docs/NUMERICS.md's table): one layer kind quantized at a time, every
// other one kept; then everything but the first / last steps. A measurement (3 minutes on 2 cores),
// run by hand: stdit_tests --gtest_also_run_disabled_tests --gtest_filter='*Fp8LayerTable'.
TEST(DemoModel, DISABLED_Fp8LayerTable) {
  const std::vector<Frames> plain = plain_videos();
  const auto& names = fp8_layer_names();
  std::printf("demo model, %zu prompts, fp8 vs f32: quantized | worst PSNR dB | mean SSIM | checks passed\n",
              std::size(kCases));
  auto print = [&](const std::string& what, const std::string& keep) {
    const Fp8Row r = fp8_against_f32(keep, plain);
    std::printf("  %-32s | %6.2f | %.4f | %d of %zu\n", what.c_str(), r.psnr_min, r.ssim_mean, r.passed,
                std::size(kCases));
    EXPECT_GT(r.psnr_min, 0.0);
  };
  for (const auto& layer : names) {
    std::string keep;
    for (const auto& other : names)
      if (other != layer) keep += (keep.empty() ? "" : ",") + other;
    print("only " + layer, keep);
  }
  print("all", "none");
  print("the default (fp8_default_keep)", "");
  print("all, first 3 / last 3 steps f32", "first:3,last:3");
  print("all but spatial/temporal block 0", "0");
}

TEST(DemoModel, RandomWeightsFailTheSameCheck) {
  Model m(random_engine());
  for (const Case& c : kCases) {
    const Frames f = m.video(c.prompt, c.seed, 128, 17, 30, 7.0);
    const Seen s = look(f, c.colour, c.motion);
    EXPECT_FALSE(s.ok) << "random weights pass for \"" << c.prompt << "\": " << s.str();
  }
}

// ---------------------------------------------------------------------------------------------
// The engine config's "defaults" block
// ---------------------------------------------------------------------------------------------

namespace {
std::string engine_with_defaults(const std::string& name, const nlohmann::json& defaults) {
  const fs::path out = fs::path(::testing::TempDir()) / ("stdit_defaults_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(out);
  fs::copy(random_engine(), out, fs::copy_options::recursive);
  nlohmann::json cfg;
  {
    std::ifstream in(out / "config.json");
    in >> cfg;
  }
  cfg["defaults"] = defaults;
  std::ofstream(out / "config.json") << cfg.dump(2);
  return out.string();
}

std::string open_error(const nlohmann::json& defaults) {
  try {
    open_engine(engine_with_defaults("bad", defaults));
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}
}  // namespace

TEST(EngineDefaults, ReadAndChecked) {
  const Engine e = open_engine(engine_with_defaults(
      "ok", {{"height", 24}, {"width", 40}, {"num_frames", 17}, {"fps", 12.5}, {"steps", 2}, {"cfg_scale", 3}}));
  EXPECT_EQ(e.defaults.height, 24);
  EXPECT_EQ(e.defaults.width, 40);
  EXPECT_EQ(e.defaults.num_frames, 17);
  EXPECT_EQ(e.defaults.steps, 2);
  EXPECT_EQ(e.defaults.fps, 12.5);
  EXPECT_EQ(e.defaults.cfg_scale, 3.0);
  EXPECT_FALSE(open_engine(random_engine()).defaults.steps.has_value());  // no block: nothing set

  auto has = [](const std::string& msg, const std::string& text) {
    return msg.find(text) != std::string::npos ? ::testing::AssertionSuccess()
                                               : ::testing::AssertionFailure() << "message: " << msg;
  };
  EXPECT_TRUE(has(open_error(nlohmann::json::array()), "'defaults' must be an object"));
  EXPECT_TRUE(has(open_error({{"height", 24}}), "'height' and 'width' go together"));
  EXPECT_TRUE(has(open_error({{"height", 20}, {"width", 40}}), "'height' = 20 is not a multiple of 8"));
  EXPECT_TRUE(has(open_error({{"height", 0}, {"width", 40}}), "'height' = 0 is outside [8, 4096]"));
  EXPECT_TRUE(has(open_error({{"height", "128"}, {"width", 40}}), "'height' must be an integer"));
  EXPECT_TRUE(has(open_error({{"num_frames", 16}}), "'num_frames' = 16 is not a length the sampler takes"));
  EXPECT_TRUE(has(open_error({{"steps", 0}}), "'steps' = 0 is outside [1, 1000]"));
  EXPECT_TRUE(has(open_error({{"steps", 2.5}}), "'steps' must be an integer"));
  EXPECT_TRUE(has(open_error({{"fps", -1}}), "'fps' = -1 is outside"));
  EXPECT_TRUE(has(open_error({{"cfg_scale", "high"}}), "'cfg_scale' must be a number"));
  EXPECT_TRUE(has(open_error({{"cfg_scale", 1e9}}), "'cfg_scale' = 1000000000.0 is outside [0, 100]"));
}

// generate takes the engine's defaults for what the caller leaves unset, and flags win over them.
TEST(EngineDefaults, GenerateUsesThemUnlessAFlagIsGiven) {
  const std::string eng = engine_with_defaults("gen", {{"height", 24}, {"width", 40}, {"num_frames", 17}, {"steps", 1}});
  const fs::path out = fs::path(::testing::TempDir()) / ("stdit_defaults_out_" + std::to_string(::getpid()));
  fs::remove_all(out);
  auto latent_shape = [&](const std::function<void(GenerateOptions&)>& edit) {
    GenerateOptions g;
    g.engine = eng;
    g.prompts = {"a red ball"};
    g.out_dir = out.string();
    g.save_latents = (out / "lat.safetensors").string();
    fs::remove(g.save_latents);
    edit(g);
    generate(g);
    return SafetensorsFile::open(g.save_latents)->get("latents").shape();
  };
  EXPECT_EQ(latent_shape([](GenerateOptions&) {}), (Shape{1, 4, 5, 3, 5}));  // 24x40 px, 17 frames
  EXPECT_EQ(latent_shape([](GenerateOptions& g) { g.width = 48, g.height = 16; }), (Shape{1, 4, 5, 2, 6}));
  EXPECT_EQ(latent_shape([](GenerateOptions& g) { g.resolution = "144p"; }), (Shape{1, 4, 5, 18, 32}));  // 9:16
  EXPECT_EQ(latent_shape([](GenerateOptions& g) { g.num_frames = "1"; }), (Shape{1, 4, 1, 3, 5}));
  fs::remove_all(out);
}

// convert keeps the "defaults" block of the engine its components come from (point 7 of the
// outputs/error-contract issue): re-converting the demo model to another dtype keeps its size.
TEST(EngineDefaults, ConvertKeepsThemFromASourceEngine) {
  const fs::path out = fs::path(::testing::TempDir()) / ("stdit_reconvert_" + std::to_string(::getpid()));
  fs::remove_all(out);
  ConvertOptions c;
  c.dit = kDemo + "/dit";
  c.vae = kDemo + "/vae";
  c.t5 = kDemo + "/t5";
  c.out = out.string();
  c.dtype = DType::F32;
  convert_engine(c);
  const Engine src = open_engine(kDemo), e = open_engine(out.string());
  ASSERT_TRUE(src.defaults.height.has_value()) << kDemo << " has no defaults block";
  EXPECT_EQ(e.defaults.height, src.defaults.height);
  EXPECT_EQ(e.defaults.width, src.defaults.width);
  EXPECT_EQ(e.defaults.num_frames, src.defaults.num_frames);
  EXPECT_EQ(e.defaults.steps, src.defaults.steps);
  EXPECT_EQ(e.defaults.fps, src.defaults.fps);
  EXPECT_EQ(e.defaults.cfg_scale, src.defaults.cfg_scale);
  // Same configs and tensor names, another dtype: another identity (the weight headers differ).
  EXPECT_NE(engine_identity(e), engine_identity(src));
  EXPECT_EQ(engine_identity(src), engine_identity(open_engine(kDemo)));
  fs::remove_all(out);
}
