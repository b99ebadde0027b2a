// The whole text-to-video pipeline on tiny models against the PyTorch reference pipeline
// (tests/data/pipeline_tiny), and `stdit convert` / engine checks.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "media/frames.h"
#include "models/stdit3/stdit3.h"
#include "models/vae/vae.h"
#include "pipeline/engine.h"
#include "pipeline/generate.h"
#include "text/prompt.h"
#include "text/t5.h"
#include "text/tokenizer.h"
#include "tiny_engine.h"

using namespace stdit;
namespace fs = std::filesystem;

namespace {
const std::string kData = STDIT_TEST_DATA;

double check(const std::string& name, const Tensor& got, const SafetensorsFile& want) {
  const double e = rel_error(got, want.get(name));
  std::cout << "pipeline " << name << ": rel err " << e << "\n";
  return e;
}
}  // namespace

TEST(Pipeline, TinyTextToVideoMatchesReference) {
  const std::string d = kData + "/pipeline_tiny/";
  std::ifstream in(d + "inputs.json");
  const auto cfg = nlohmann::json::parse(in);
  const auto want = SafetensorsFile::open(d + "expected.safetensors");
  const auto noise_file = SafetensorsFile::open(d + "noise.safetensors");
  const std::vector<std::string> prompts = cfg["prompts"];
  const int P = static_cast<int>(prompts.size()), L = 300;
  const int H = cfg["height"], W = cfg["width"], F = cfg["num_frames"], steps = cfg["steps"];
  CpuBackend be;

  // Text: preparation and tokens exactly, embeddings within 1e-4.
  const T5Tokenizer tok(default_spiece_model());
  Tensor ids = Tensor::zeros({P, L}, DType::I64), mask = Tensor::zeros({P, L}, DType::I64);
  for (int p = 0; p < P; ++p) {
    const Tokens t = tok.encode(prepare_prompt(prompts[p], {cfg["aes"].get<double>(), std::nullopt, std::nullopt}), L);
    for (int i = 0; i < L; ++i) {
      ids.data<int64_t>()[p * L + i] = t.ids[i];
      mask.data<int64_t>()[p * L + i] = t.mask[i];
    }
  }
  EXPECT_EQ(rel_error(ids, want->get("input_ids")), 0.0);
  EXPECT_EQ(rel_error(mask, want->get("mask")), 0.0);
  auto t5 = T5Encoder::load(kData + "/t5_tiny/safetensors", be);
  const Tensor y = t5->forward(ids, mask);
  const Tensor y_cond = y.view({P, 1, L, y.size(2)});
  EXPECT_LE(check("y_cond", y_cond, *want), 1e-4);

  // Denoising: every Euler step within 1e-4.
  auto dit = STDiT3::load(d + "dit", be);
  std::vector<Tensor> step_z;
  const Tensor z = rflow_sample(*dit, y_cond, mask, noise_file->get("noise"), H, W, F, cfg["fps"].get<double>(),
                                steps, cfg["cfg_scale"].get<double>(),
                                [&](int, const Tensor& zi) { step_z.push_back(zi.clone()); });
  ASSERT_EQ(static_cast<int>(step_z.size()), steps);
  for (int i = 0; i < steps; ++i) EXPECT_LE(check("z.step" + std::to_string(i), step_z[i], *want), 1e-4);
  EXPECT_LE(check("latents", z, *want), 1e-4);

  // Decoding and pixels: video within 1e-4, uint8 frames within +-1.
  auto vae = OpenSoraVae::load(kData + "/vae_tiny", be);
  const Tensor frames_want = want->get("frames");  // [P, F, H, W, 3] U8
  for (int p = 0; p < P; ++p) {
    const Tensor video = vae->decode(z.slice(0, p, p + 1).contiguous(), F);
    EXPECT_LE(rel_error(video, want->get("video").slice(0, p, p + 1)), 1e-4);
    const Frames fr = frames_from_video_tensor(video.select(0, 0), 24);
    int worst = 0;
    const uint8_t* ref = frames_want.data<uint8_t>() + static_cast<size_t>(p) * fr.rgb.size();
    for (size_t i = 0; i < fr.rgb.size(); ++i) worst = std::max(worst, std::abs(int(fr.rgb[i]) - int(ref[i])));
    EXPECT_LE(worst, 1) << "prompt " << p;
  }
}

TEST(Convert, WritesEngineAndRecognisesWrongFlags) {
  const fs::path out = fs::path(::testing::TempDir()) / ("stdit_engine_" + std::to_string(::getpid()));
  fs::remove_all(out);
  ConvertOptions o;
  o.dit = kData + "/pipeline_tiny/dit";
  o.vae = kData + "/vae_tiny";
  o.t5 = kData + "/t5_tiny/bin";  // DeepFloyd's layout: sharded .bin + index
  o.out = out.string();
  o.dtype = DType::BF16;
  convert_engine(o);
  const Engine e = open_engine(out.string());
  EXPECT_EQ(e.dtype, "bf16");
  auto err = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(err([&] { convert_engine(o); }).find("already exists; pass --force"), std::string::npos);
  ConvertOptions bad = o;
  bad.out = out.string() + "_2";
  bad.dit = kData + "/vae_tiny";
  EXPECT_NE(err([&] { convert_engine(bad); }).find("pass it as --vae"), std::string::npos);
  bad = o;
  bad.out = out.string() + "_3";
  bad.vae = kData + "/t5_tiny/safetensors";
  EXPECT_NE(err([&] { convert_engine(bad); }).find("pass it as --t5"), std::string::npos);
  EXPECT_FALSE(fs::exists(bad.out));  // nothing half-written
  // An incomplete engine is refused with the missing part named.
  fs::remove(out / "vae" / "model.safetensors");
  EXPECT_NE(err([&] { open_engine(out.string()); }).find("vae/model.safetensors is missing"), std::string::npos);
  EXPECT_NE(err([&] { open_engine(kData + "/stdit3_a"); }).find("not an stdit engine"), std::string::npos);
  fs::remove_all(out);
}

#include "media/video_io.h"

namespace {
// A converted engine of the tiny fixture checkpoints (f32), made once for the generate tests.
std::string tiny_engine() { return stdit::testing::tiny_random_engine(DType::F32); }

GenerateOptions small_job(const std::string& out_dir) {
  GenerateOptions g;
  g.engine = tiny_engine();
  g.prompts = {"a red ball", "a blue square moving to the right on a white background"};
  g.width = 40;
  g.height = 24;
  g.num_frames = "17";
  g.steps = 2;
  g.out_dir = out_dir;
  return g;
}
}  // namespace

// convert -> generate -> read the mp4s back: frame count, size, fps; names never overwrite.
TEST(Generate, EndToEndWritesReadableVideos) {
  const fs::path out = fs::path(::testing::TempDir()) / ("stdit_gen_out_" + std::to_string(::getpid()));
  fs::remove_all(out);
  GenerateOptions g = small_job(out.string());
  g.batch_size = 2;
  g.preview = true;
  g.save_latents = (out / "lat_a.safetensors").string();
  const auto paths = generate(g);
  g.save_latents = (out / "lat_b.safetensors").string();
  ASSERT_EQ(paths.size(), 2u);
  EXPECT_EQ(fs::path(paths[0]).filename(), "sample_0000.mp4");
  EXPECT_EQ(fs::path(paths[1]).filename(), "sample_0001.mp4");
  EXPECT_TRUE(fs::exists(out / "sample_0000.grid.png"));
  g.preview = false;
  for (const auto& p : paths) {
    const Frames f = read_video(p);
    EXPECT_EQ(f.count, 17);
    EXPECT_EQ(f.width, 40);
    EXPECT_EQ(f.height, 24);
    EXPECT_NEAR(f.fps, 24.0, 1e-6);
  }
  // The same run again: identical bytes, and the numbering continues instead of overwriting.
  const auto again = generate(g);
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(fs::path(again[0]).filename(), "sample_0002.mp4");
  auto bytes = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  };
  EXPECT_EQ(bytes(paths[1]), bytes(again[1]));
  EXPECT_EQ(bytes((out / "lat_a.safetensors").string()), bytes((out / "lat_b.safetensors").string()));
  EXPECT_EQ(read_video(paths[1]).rgb, read_video(again[1]).rgb);
  g.save_latents.clear();
  // Another batch size: the same noise (it depends on the seed and the video index only); the
  // results agree to rounding (GEMM blocking differs with the row count), so compare PSNR.
  g.batch_size = 1;
  const auto single = generate(g);
  const Frames a = read_video(paths[1]), b = read_video(single[1]);
  ASSERT_EQ(a.rgb.size(), b.rgb.size());
  double se = 0;
  for (size_t i = 0; i < a.rgb.size(); ++i) se += (double(a.rgb[i]) - b.rgb[i]) * (double(a.rgb[i]) - b.rgb[i]);
  const double mse = se / a.rgb.size();
  EXPECT_TRUE(mse == 0 || 10 * std::log10(255.0 * 255.0 / mse) > 40.0) << "mse " << mse;
  // One frame gives a PNG.
  GenerateOptions img = small_job(out.string());
  img.prompts = {"a cat"};
  img.num_frames = "1";
  const auto png = generate(img);
  ASSERT_EQ(png.size(), 1u);
  EXPECT_EQ(fs::path(png[0]).extension(), ".png");
  fs::remove_all(out);
}

TEST(Generate, BadInputsGiveClearErrors) {
  const fs::path out = fs::path(::testing::TempDir()) / ("stdit_gen_bad_" + std::to_string(::getpid()));
  auto err = [&](const std::function<void(GenerateOptions&)>& edit) {
    GenerateOptions g = small_job(out.string());
    edit(g);
    try {
      generate(g);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  auto has = [](const std::string& msg, const std::string& text) {
    return msg.find(text) != std::string::npos ? ::testing::AssertionSuccess()
                                               : ::testing::AssertionFailure() << "message: " << msg;
  };
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.prompts.clear(); }), "no prompt given"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.width = g.height = 0; g.resolution = "1080p"; }), "unknown resolution '1080p'"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.width = g.height = 0; g.aspect_ratio = "7:5"; }), "unknown aspect ratio '7:5'"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.num_frames = "16"; }), "16 frames is not a length"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.num_frames = "abc"; }), "invalid --num-frames"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.width = 4; }), "-W and -H"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.steps = 0; }), "--steps must be at least 1"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.cfg_scale = NAN; }), "--cfg-scale must be a finite"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.prompt_file = "/nonexistent/prompts.txt"; }), "cannot read the prompt file"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.engine = "/nonexistent/engine"; }), "no engine directory here"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.engine = kData + "/vae_tiny"; }), "not an stdit engine"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.out_dir = kData + "/README.md/out"; }), "cannot create the output directory"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.camera_motion = "dolly"; }), "unknown camera motion"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.output = "x.mp4"; }), "-o FILE names one output"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.gpus = 0; }), "--gpus must be at least 1"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.gpus = 3; g.cfg_parallel = true; }),
                  "--gpus 3 must equal --tp 1 x 2"));
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.gpus = 2; g.tp = 4; }), "--gpus 2 must equal --tp 4"));
  // On the CPU, --gpus N runs host ranks as threads; the split must still fit the model (2 heads).
  EXPECT_TRUE(has(err([](GenerateOptions& g) { g.gpus = 4; g.tp = 4; g.backend = "cpu"; }),
                  "--tp 4 does not divide the model's 2 attention heads"));
  // --decode-only with latents of another size.
  const std::string lat = (out / "lat.safetensors").string();
  write_safetensors(lat, {{"latents", Tensor::zeros({1, 4, 5, 4, 4}, DType::F32)}});
  EXPECT_TRUE(has(err([&](GenerateOptions& g) { g.decode_only = lat; g.prompts.clear(); }), "do not fit this run"));
  EXPECT_TRUE(has(err([&](GenerateOptions& g) { g.decode_only = lat; }), "do not pass prompts as well"));
  fs::remove_all(out);
}

#include "pipeline/cfg_parallel.h"
#include "pipeline/denoiser.h"

// CFG-parallel (two backends, here two CPU backends) equals the single-backend CFG batch.
TEST(Pipeline, CfgParallelEqualsSingleBatch) {
  const std::string d = kData + "/pipeline_tiny/";
  const auto want = SafetensorsFile::open(d + "expected.safetensors");
  const Tensor noise = SafetensorsFile::open(d + "noise.safetensors")->get("noise");
  CpuBackend be0, be1;
  auto t5 = T5Encoder::load(kData + "/t5_tiny/safetensors", be0);
  const Tensor mask = want->get("mask");
  const Tensor y = t5->forward(want->get("input_ids"), mask);
  const Tensor y_cond = y.view({2, 1, 300, y.size(2)});
  auto dit0 = STDiT3::load(d + "dit", be0), dit1 = STDiT3::load(d + "dit", be1);
  const Tensor single = rflow_sample(*dit0, y_cond, mask, noise, 24, 40, 17, 24, 3, 7.0);
  SingleDenoiser d0(*dit0), d1(*dit1);
  CfgParallelDenoiser both({&be0, &be1}, {&d0, &d1});
  const Tensor split = rflow_sample(both, y_cond, mask, noise, 24, 40, 17, 24, 3, 7.0);
  EXPECT_LE(rel_error(split, single), 1e-6);
  EXPECT_LE(rel_error(split, want->get("latents")), 1e-4);
}

// A hostile engine config.json (wrong JSON types) is an Error, not a JSON library exception
// (found by the engine fuzzer, docs/RELIABILITY.md).
TEST(Convert, EngineConfigWithWrongTypesIsRefused) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("stdit_bad_engine_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (const char* cfg : {R"({"format": 5})", R"({"format": "stdit-engine", "format_version": "1"})",
                          R"({"format": "stdit-engine", "format_version": 1, "dtype": 3})", "[1, 2]"}) {
    std::ofstream(dir / "config.json") << cfg;
    EXPECT_THROW(open_engine(dir.string()), Error) << cfg;
  }
  fs::remove_all(dir);
}
