// The model fixtures (STDiT3 a/b/c, T5 tiny, VAE tiny, the tiny pipeline) on the GPU against their
// PyTorch reference values, every recorded intermediate. Needs a GPU (scripts/gpu_check.sh).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "gpu_test_util.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"
#include "core/synthetic.h"
#include "dist/comm.h"
#include "models/stdit3/config.h"
#include "models/stdit3/forward_io.h"
#include "models/stdit3/stdit3.h"
#include "models/vae/vae.h"
#include "media/frames.h"
#include "pipeline/conditioning.h"
#include "pipeline/denoiser.h"
#include "pipeline/generate.h"
#include "pipeline/memory_plan.h"
#include "text/t5.h"
#include "text/tokenizer.h"
#include "text/prompt.h"
#include "core/philox.h"
#include "pipeline/engine.h"
#include "../demo_checks.h"
#include "io/safetensors.h"

using namespace stdit;
using namespace stdit::gpu_test;

// =============================================================================== fixtures =======

namespace {

// Fixture c's weights: synthetic, from its recipe manifest (as tests/test_stdit3_fixtures.cpp).
WeightMap recipe_weights(const std::string& path) {
  std::ifstream in(path);
  const auto j = nlohmann::json::parse(in);
  const uint64_t seed = j.at("seed").get<uint64_t>();
  WeightMap w;
  for (const auto& t : j.at("tensors"))
    w[t.at("name")] = synthetic_tensor(t.at("name"), t.at("shape").get<Shape>(), seed,
                                       t.at("scale").get<double>(), t.at("offset").get<double>());
  return w;
}

std::unique_ptr<STDiT3> load_stdit3(const std::string& name, Backend& be) {
  const std::string dir = data_dir() + "/" + name;
  if (std::ifstream(dir + "/weights.json")) {
    const STDiT3Config cfg = load_stdit3_config(dir + "/config.json");
    return std::make_unique<STDiT3>(cfg, recipe_weights(dir + "/weights.json"), be);
  }
  return STDiT3::load(dir, be);
}

// Max error over the named tensors (each must be produced); prints each.
double compare_all(const std::map<std::string, Tensor>& got, const SafetensorsFile& want,
                   const std::vector<std::string>& names, const std::string& label,
                   std::string* worst) {
  double mx = 0;
  int compared = 0;
  for (const auto& n : names) {
    if (!want.contains(n)) continue;
    auto it = got.find(n);
    if (it == got.end()) {
      if (n == "t0_mlp") continue;  // only computed when some frame is a conditioning frame
      ADD_FAILURE() << label << ": " << n << " not produced";
      mx = INFINITY;
      continue;
    }
    const double e = rel_error(it->second, want.get(n));
    std::printf("  %-28s %-20s rel err %.3e\n", label.c_str(), n.c_str(), e);
    ++compared;
    if (!(e <= mx)) {
      mx = e;
      *worst = label + " " + n;
    }
  }
  EXPECT_GT(compared, 0) << label;
  return mx;
}

}  // namespace

class CudaStdit3 : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaStdit3, ForwardMatchesReference) {
  const std::string name = GetParam();
  const std::string dir = data_dir() + "/" + name;
  const auto inputs = SafetensorsFile::open(dir + "/inputs.safetensors");
  const auto expected = SafetensorsFile::open(dir + "/expected.safetensors");
  const std::vector<std::string> order = {"x_embed", "t",       "t_mlp",   "t0_mlp",  "y_packed",
                                          "block.0", "block.1", "block.2", "block.3", "final",
                                          "output"};
  for (auto [g, sfx] : all_modes()) {
    auto model = load_stdit3(name, *g);
    std::map<std::string, Tensor> got;
    const auto t0 = std::chrono::steady_clock::now();
    model->forward(read_stdit3_inputs(*inputs), [&](const std::string& n, const Tensor& t) { got[n] = t; });
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::string worst;
    const double e = compare_all(got, *expected, order, name + sfx, &worst);
    check(name + sfx, cat("all intermediates (worst: ", worst, "), ", static_cast<int>(ms), " ms"), e);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaStdit3, ::testing::Values("stdit3_a", "stdit3_b", "stdit3_c"));

// A CUDA backend in fp8 with the fused GEMMs; `hidden`: fc1's epilogue writes fc2's e4m3 operand
// (policy fp8_hidden, where the fused GEMM exists).
std::unique_ptr<CudaBackend> fp8_backend(bool hidden) {
  const PolicyRequest req{"fp8", "auto", {{"fp8", true}, {"fp8_gemm", true}, {"fp8_hidden", hidden}}, "none"};
  return std::make_unique<CudaBackend>(0, CudaOptions{}, resolve_policy(req, "cuda", cuda_device_sm(0)));
}

// fp8 on the GPU (bf16 activations around e4m3 GEMMs) against the CPU emulation of fp8 (f32
// around the same GEMMs), fixture a and its fp8 reference output (tests/data/fp8/stdit3.safetensors).
TEST(CudaStdit3Fp8, ForwardMatchesTheEmulation) {
  if (cuda_device_sm(0) < 89) GTEST_SKIP() << "no FP8 tensor cores (sm_" << cuda_device_sm(0) << ")";
  const std::string dir = data_dir() + "/stdit3_a";
  const Tensor want = SafetensorsFile::open(data_dir() + "/fp8/stdit3.safetensors")->get("output_all").to(DType::F32);
  // Also with fc1 writing fc2's operand (policy fp8_hidden: its codes come from a bounded scale,
  // not the reference's per-row amax; one e4m3 rounding of the hidden values apart).
  for (const bool hidden : {false, true}) {
    const auto g8 = fp8_backend(hidden);
    if (hidden && !g8->policy().fp8_hidden) continue;  // no fused GEMM (Ada)
    auto model = STDiT3::load(dir, *g8);
    const Tensor got = model->forward(read_stdit3_inputs(*SafetensorsFile::open(dir + "/inputs.safetensors")));
    check("stdit3_a[fp8]", cat("output vs the reference's fp8 forward", hidden ? ", MLP hidden e4m3" : ""),
          rel_error(got, want));
  }
}

// The denoiser's blocks and final layer as a CUDA graph (policy step_graphs): the second call with
// a kept text records them, the later ones replay them. Every call's output must equal, bit for bit, the same
// call's on a backend of the same policy with graphs off (the same kernels on the same operands),
// in each precision, for fixtures a and b, with and without a conditioning frame; the attention
// kernels' counts must agree, and the replays must have happened.
namespace {
double largest_difference(const Tensor& a, const Tensor& b) {
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::fabs(double(a.data<float>()[i]) - b.data<float>()[i]));
  return m;
}
}  // namespace

TEST(CudaGraphs, ReplayedStepsEqualOpByOp) {
  std::vector<std::string> precisions = {"bf16", "fp16", "tf32", "f32"};
  if (cuda_device_sm(0) >= 89) precisions.push_back("fp8");
  int compared = 0;
  for (const std::string& precision : precisions)
    for (const char* name : {"stdit3_a", "stdit3_b"})
      for (const bool conditioned : {false, true}) {
        if (precision == "fp8" && std::string(name) != "stdit3_a") continue;  // fp8 GEMMs need fixture a's sizes
        const std::string label = cat(name, "[", precision, "]", conditioned ? " conditioned" : "");
        auto backend = [&](bool graphs) {
          const PolicyRequest req{precision, "auto", {{"graphs", graphs}}, ""};
          auto be = make_backend("cuda", req);
          EXPECT_EQ(be->policy().step_graphs, graphs);
          EXPECT_EQ(be->records(), graphs);
          return be;
        };
        auto on = backend(true), off = backend(false);
        auto graphed = load_stdit3(name, *on), plain = load_stdit3(name, *off);
        STDiT3Inputs in = read_stdit3_inputs(*SafetensorsFile::open(data_dir() + "/" + name + "/inputs.safetensors"));
        in.text_key = new_text_key();
        in.x_mask = Tensor{};
        if (conditioned) {
          in.x_mask = Tensor::zeros({in.x.size(0), in.x.size(2)}, DType::U8);
          for (int64_t i = 0; i < in.x_mask.numel(); ++i) in.x_mask.data<uint8_t>()[i] = i % in.x.size(2) != 0;
        }
        const Tensor x0 = in.x.to(DType::F32), t0 = in.timestep.to(DType::F32);
        for (int call = 0; call < 4; ++call) {
          // New latents and timesteps each call (what a sampler gives), the same text. (clone: the
          // inputs file is mapped read-only.)
          Tensor x = x0.clone(), t = t0.clone();
          for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] *= 1.0f + 0.25f * static_cast<float>(call);
          for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] *= 1.0f - 0.2f * static_cast<float>(call);
          in.x = x;
          in.timestep = t;
          const Tensor a = graphed->forward(in), b = plain->forward(in);
          ASSERT_EQ(a.shape(), b.shape()) << label;
          int64_t differ = 0;
          for (int64_t i = 0; i < a.numel(); ++i) differ += std::memcmp(&a.data<float>()[i], &b.data<float>()[i], 4) != 0;
          EXPECT_EQ(differ, 0) << label << ", call " << call << ": " << differ << " of " << a.numel()
                               << " outputs differ from the op-by-op run's (max difference " << largest_difference(a, b) << ")";
          ++compared;
        }
        // Call 0 computes the text's keys and values, call 1 records, calls 2 and 3 replay.
        EXPECT_EQ(dynamic_cast<CudaBackend&>(*on).replays(), 2) << label;
        EXPECT_EQ(dynamic_cast<CudaBackend&>(*off).replays(), 0) << label;
        EXPECT_EQ(on->attention_kernels(), off->attention_kernels()) << label;
        std::printf("  %-32s 4 calls, graph replayed twice, outputs equal the op-by-op run's\n", label.c_str());
      }
  EXPECT_GE(compared, 32);
}

// Under --max-memory the pool's limit makes the backend trim between allocations: no graphs then
// (records() false, the blocks op by op), and the output the same.
TEST(CudaGraphs, NoneUnderAPoolLimit) {
  auto be = make_backend("cuda", PolicyRequest{"bf16", "auto", {}, ""});
  ASSERT_TRUE(be->records());
  be->limit_pool(size_t{8} << 30);
  EXPECT_FALSE(be->records());
  auto model = load_stdit3("stdit3_a", *be);
  STDiT3Inputs in = read_stdit3_inputs(*SafetensorsFile::open(data_dir() + "/stdit3_a/inputs.safetensors"));
  in.text_key = new_text_key();
  const Tensor first = model->forward(in);
  for (int call = 0; call < 2; ++call) {
    const Tensor again = model->forward(in);
    EXPECT_EQ(largest_difference(first, again), 0.0);
  }
  EXPECT_EQ(dynamic_cast<CudaBackend&>(*be).replays(), 0);
  be->limit_pool(0);
  EXPECT_TRUE(be->records());
}

// The memory plan (plan_model_call: a dry run with the CUDA backend's scratch rules) against
// the CUDA backend's own count of what the same call held at once (CudaBackend::peak_memory_bytes),
// for every fixture in every precision, unkeyed and keyed, with and without a conditioning frame.
TEST(CudaMemoryPlan, DryRunEqualsTheBackendsCount) {
  std::vector<std::pair<CudaBackend*, std::string>> modes;
  for (auto [g, sfx] : all_modes()) modes.emplace_back(g, sfx);
  std::unique_ptr<CudaBackend> g8, g8h;
  if (cuda_device_sm(0) >= 89) {
    g8 = fp8_backend(false);
    modes.emplace_back(g8.get(), "[fp8]");
    // fc1 writing fc2's e4m3 operand (policy fp8_hidden, fused GEMMs only): the codes' row scales.
    g8h = fp8_backend(true);
    if (g8h->policy().fp8_hidden) modes.emplace_back(g8h.get(), "[fp8, MLP hidden e4m3]");
  }
  int compared = 0;
  for (const char* name : {"stdit3_a", "stdit3_b", "stdit3_c"})
    for (auto& [g, sfx] : modes)
      for (const bool conditioned : {false, true})
        for (const bool keyed : {false, true}) {
          if ((g == g8.get() || g == g8h.get()) && std::string(name) != "stdit3_a") continue;  // fp8 GEMMs need fixture a's sizes
          const std::string label = cat(name, sfx, keyed ? " keyed" : "", conditioned ? " conditioned" : "");
          STDiT3Inputs in = read_stdit3_inputs(*SafetensorsFile::open(data_dir() + "/" + name + "/inputs.safetensors"));
          in.text_key = keyed ? new_text_key() : 0;
          in.x_mask = Tensor{};
          if (conditioned) {
            in.x_mask = Tensor::zeros({in.x.size(0), in.x.size(2)}, DType::U8);
            for (int64_t i = 0; i < in.x_mask.numel(); ++i) in.x_mask.data<uint8_t>()[i] = i % in.x.size(2) != 0;
          }
          auto model = load_stdit3(name, *g);
          const size_t plan = plan_model_call(*model, in);
          g->synchronize();
          g->reset_peak_memory();
          const size_t before = g->peak_memory_bytes();
          model->forward(in);
          g->synchronize();
          const size_t held = g->peak_memory_bytes() - before;
          std::printf("  %-36s plan %10zu bytes, held %10zu bytes\n", label.c_str(), plan, held);
          EXPECT_EQ(plan, held) << label;
          ++compared;
        }
  EXPECT_GE(compared, 36);
}

TEST(CudaFixtures, T5Tiny) {
  const std::string dir = data_dir() + "/t5_tiny";
  const auto in = SafetensorsFile::open(dir + "/inputs.safetensors");
  const auto want = SafetensorsFile::open(dir + "/expected.safetensors");
  for (auto [g, sfx] : all_modes()) {
    auto model = T5Encoder::load(dir + "/safetensors", *g);
    std::map<std::string, Tensor> got;
    model->forward(in->get("input_ids"), in->get("attention_mask"),
                   [&](const std::string& n, const Tensor& t) { got[n] = t; });
    std::string worst;
    const double e = compare_all(got, *want, {"embed", "position_bias", "block.0", "block.1", "last_hidden_state"},
                                 std::string("t5_tiny") + sfx, &worst);
    check(cat("t5_tiny", sfx), cat("[2, 300] ids (worst: ", worst, ")"), e);
  }
}

TEST(CudaFixtures, VaeTiny) {
  const std::string d = data_dir() + "/vae_tiny/";
  for (auto [g, mode] : all_modes()) {
   // The bf16 policy decodes channels-last in bf16 ("[bf16 cl]"); its F32 decode is checked too.
   for (const bool cl : g->policy().vae_bf16 ? std::vector<bool>{false, true} : std::vector<bool>{false}) {
    const std::string sfx = cl ? "[bf16 cl]" : mode;
    auto vae = OpenSoraVae::load(d, *g);
    vae->set_channels_last(cl);
    double mx = 0;
    std::string worst_all;
    for (int frames : {17, 23, 1}) {
      const std::string f = std::to_string(frames);
      {
        const auto in = SafetensorsFile::open(d + "decode_" + f + ".inputs.safetensors");
        const auto want = SafetensorsFile::open(d + "decode_" + f + ".expected.safetensors");
        std::map<std::string, Tensor> got;
        vae->decode(in->get("z"), frames, [&](const std::string& n, const Tensor& t) { got[n] = t; });
        std::string worst;
        const double e = compare_all(got, *want, {"decode.temporal_out", "video"},
                                     cat("vae decode ", f, sfx), &worst);
        if (!(e <= mx)) mx = e, worst_all = worst;
      }
      {
        const auto in = SafetensorsFile::open(d + "encode_" + f + ".inputs.safetensors");
        const auto want = SafetensorsFile::open(d + "encode_" + f + ".expected.safetensors");
        std::map<std::string, Tensor> got;
        vae->encode(in->get("video"), [&](const std::string& n, const Tensor& t) { got[n] = t; });
        std::string worst;
        const double e = compare_all(got, *want, {"encode.spatial_out", "z"}, cat("vae encode ", f, sfx), &worst);
        if (!(e <= mx)) mx = e, worst_all = worst;
        // Sampled posteriors (image-to-video encodes its references so): the same draws as the
        // CPU backend's, on the device's moments.
        CpuBackend cpu;
        const Tensor want_s = OpenSoraVae::load(d, cpu)->encode(in->get("video"), {}, uint64_t{7});
        const double es = rel_error(vae->encode(in->get("video"), {}, uint64_t{7}), want_s);
        std::printf("  %-28s %-20s rel err %.3e\n", cat("vae encode ", f, sfx).c_str(), "z sampled", es);
        if (!(es <= mx)) mx = es, worst_all = cat("vae encode ", f, sfx, " z sampled");
      }
    }
    check(cat("vae_tiny", sfx), cat("decode+encode 17/23/1 frames (worst: ", worst_all, ")"), mx);
   }
  }
}

// The whole tiny pipeline on the GPU against the reference pipeline (tests/data/pipeline_tiny):
// T5 output, latents after each Euler step, video; uint8 frames as PSNR; and the same run twice
// gives identical latents.
TEST(CudaFixtures, PipelineTiny) {
  const std::string d = data_dir() + "/pipeline_tiny/";
  const auto want = SafetensorsFile::open(d + "expected.safetensors");
  const auto noise = SafetensorsFile::open(d + "noise.safetensors")->get("noise");
  const Tensor ids = want->get("input_ids"), mask = want->get("mask");
  const int P = 2, L = 300, H = 24, W = 40, F = 17, steps = 3;
  for (auto [g, sfx] : all_modes()) {
    auto t5 = T5Encoder::load(data_dir() + "/t5_tiny/safetensors", *g);
    const Tensor y = t5->forward(ids, mask);
    const Tensor y_cond = y.view({P, 1, L, y.size(2)});
    auto dit = STDiT3::load(d + "dit", *g);
    std::vector<Tensor> zs;
    auto run = [&] {
      zs.clear();
      // The sampler keeps its latents on the GPU: each step's is read back here.
      return rflow_sample(*dit, y_cond, mask, noise, H, W, F, 24.0, steps, 7.0,
                          [&](int, const Tensor& z) { zs.push_back(g->download(z)); });
    };
    const Tensor z = run();
    double e = rel_error(y_cond, want->get("y_cond"));
    for (int i = 0; i < steps; ++i) e = std::max(e, rel_error(zs[i], want->get(cat("z.step", i))));
    auto vae = OpenSoraVae::load(data_dir() + "/vae_tiny", *g);
    // The F32 decode here; the bf16 policy's channels-last decode below ("[bf16 cl]").
    vae->set_channels_last(false);
    double worst_psnr = 1e9, worst_psnr_cl = 1e9, e_cl = e;
    // Worst frame PSNR of prompt p's decoded video (8-bit frames) against the reference's frames.
    const Tensor ref_frames = want->get("frames");
    auto worst_frame_psnr = [&](const Tensor& video, int p) {
      const Frames fr = frames_from_video_tensor(video.select(0, 0), 24);
      double worst = 1e9;
      for (int f = 0; f < F; ++f) {
        double se = 0;
        const size_t n = fr.frame_bytes();
        const uint8_t* r = ref_frames.data<uint8_t>() + (static_cast<size_t>(p) * F + f) * n;
        for (size_t i = 0; i < n; ++i) se += (double(fr.frame(f)[i]) - r[i]) * (double(fr.frame(f)[i]) - r[i]);
        worst = std::min(worst, se == 0 ? 99.0 : 10 * std::log10(255.0 * 255.0 * n / se));
      }
      return worst;
    };
    for (int p = 0; p < P; ++p) {
      const Tensor video = vae->decode(z.slice(0, p, p + 1).contiguous(), F);
      e = std::max(e, rel_error(video, want->get("video").slice(0, p, p + 1)));
      if (g->policy().vae_bf16) {
        vae->set_channels_last(true);
        const Tensor v = vae->decode(z.slice(0, p, p + 1).contiguous(), F);
        vae->set_channels_last(false);
        e_cl = std::max(e_cl, rel_error(v, want->get("video").slice(0, p, p + 1)));
        worst_psnr_cl = std::min(worst_psnr_cl, worst_frame_psnr(v, p));
      }
      worst_psnr = std::min(worst_psnr, worst_frame_psnr(video, p));
    }
    check(cat("pipeline_tiny", sfx), cat("T5, 3 steps, VAE; worst frame PSNR ", worst_psnr, " dB"), e);
    if (g->policy().vae_bf16)
      check("pipeline_tiny[bf16 cl]", cat("T5, 3 steps, bf16 VAE; worst frame PSNR ", worst_psnr_cl, " dB"), e_cl);
    const Tensor z2 = run();
    check("pipeline_repeat", cat("latents twice", sfx),
          std::memcmp(z.raw(), z2.raw(), z.nbytes()) == 0 ? 0.0 : 1.0);
    // The same loop with the latents kept on the host (as for the denoisers that take host
    // tensors: the CFG combine and Euler step on the CPU, x uploaded and the output downloaded at
    // every step) gives the same bits.
    SingleDenoiser on_device(*dit);
    DenoiserAdapter on_host(on_device);  // host tensors in and out
    const Tensor zh = rflow_sample(on_host, y_cond, mask, noise, H, W, F, 24.0, steps, 7.0);
    check("sampler_latents_host", cat("latents on the host vs the device", sfx),
          std::memcmp(z.raw(), zh.raw(), z.nbytes()) == 0 ? 0.0 : 1.0);
  }
}

// Conditioned sampling on the GPU against the reference (tests/data/conditioning): the cases whose
// references are images (the GPU build reads no media files: the encoded references come from the
// fixture; the VAE encode itself is checked by VaeTiny). Noise, step noise and masks as the engine
// makes them; the final latents of each video.
TEST(CudaFixtures, ConditionedSampling) {
  const std::string d = data_dir() + "/conditioning/";
  std::ifstream in(d + "cases.json");
  const auto cases = nlohmann::json::parse(in)["cases"];
  const auto want = SafetensorsFile::open(d + "expected.safetensors");
  const int L = 300;
  for (auto [g, sfx] : all_modes()) {
    auto t5 = T5Encoder::load(data_dir() + "/t5_tiny/safetensors", *g);
    auto dit = STDiT3::load(data_dir() + "/pipeline_tiny/dit", *g);
    T5Tokenizer tok(default_spiece_model());
    for (const auto& c : cases) {
      const std::string name = c["name"];
      if (c["loop"].get<int>() != 1) continue;  // a loop encodes its clips: the CPU test covers it
      const int P = static_cast<int>(c["videos"].size()), H = c["H"], W = c["W"], F = c["num_frames"], steps = c["steps"];
      const std::optional<int> align = c["align"].is_null() ? std::nullopt : std::optional<int>(c["align"].get<int>());
      Tensor ids = Tensor::zeros({P, L}, DType::I64), mask = Tensor::zeros({P, L}, DType::I64);
      for (int p = 0; p < P; ++p) {
        const std::string text = c["derived"]["texts"][p][0];
        const Tokens t = tok.encode(text, L);
        for (int i = 0; i < L; ++i) {
          ids.data<int64_t>()[p * L + i] = t.ids[i];
          mask.data<int64_t>()[p * L + i] = t.mask[i];
        }
      }
      const Tensor y = t5->forward(ids, mask);
      const Tensor wl0 = want->get(name + ".0.latents");
      const int64_t T = wl0.size(1), h = wl0.size(2), w = wl0.size(3), per = 4 * T * h * w;
      Tensor noise = Tensor::empty({P, 4, T, h, w}, DType::F32), fmask = Tensor::empty({P, T}, DType::F32);
      for (int p = 0; p < P; ++p) {
        Tensor n = philox_normal({4, T, h, w}, 42, p);
        std::vector<Tensor> refs;
        for (int r = 0; want->contains(cat(name, ".", p, ".ref", r)); ++r) refs.push_back(want->get(cat(name, ".", p, ".ref", r)));
        const std::vector<float> m = apply_mask_strategy(n, refs, parse_mask_strategy(c["videos"][p]["mask_strategy"]), 0, align);
        std::memcpy(noise.data<float>() + p * per, n.data<float>(), per * 4);
        std::memcpy(fmask.data<float>() + p * T, m.data(), T * 4);
      }
      SamplerOptions so;
      so.frame_mask = fmask;
      so.step_noise = [&](int step, int64_t b) { return philox_normal({4, T, h, w}, 42, uint32_t(b), uint32_t(step + 1)); };
      const Tensor z = rflow_sample(*dit, y.view({P, 1, L, y.size(2)}), mask, noise, H, W, F, 24.0, steps, 7.0, {}, so);
      double e = 0;
      for (int p = 0; p < P; ++p)
        e = std::max(e, rel_error(z.select(0, p).contiguous(), want->get(cat(name, ".", p, ".latents"))));
      check(cat("conditioning", sfx), cat(name, ": ", P, " video(s), ", steps, " steps"), e);
    }
  }
}

// The bf16 channels-last VAE decode on the trained demo model (models/tiny): the latents of two
// prompts (as `stdit generate PROMPT --seed 0` makes them, on the GPU) decoded by it and by the
// F32 decode it replaced, per-frame PSNR of the 8-bit frames >= 40 dB (the gate of
// docs/NUMERICS.md, "VAE precision"), and what the frames show still passes the
// colour-and-direction check (tests/demo_checks.h).
TEST(CudaFixtures, DemoVaeBf16AgainstF32) {
  CudaBackend& g = gpu16();
  const Engine eng = open_engine(data_dir() + "/../../models/tiny");
  if (!eng.defaults.steps) GTEST_SKIP() << "models/tiny is not the trained demo model";
  const EngineDefaults& d = eng.defaults;
  const T5Tokenizer tok(eng.spiece);
  auto t5 = T5Encoder::load(eng.t5, g);
  auto dit = STDiT3::load(eng.dit, g);
  auto vae = OpenSoraVae::load(eng.vae, g);
  ASSERT_TRUE(vae->channels_last());  // the bf16 policy's decode
  const std::pair<const char*, std::pair<const char*, const char*>> cases[] = {
      {"a red ball moving to the right", {"red", "right"}}, {"a blue square moving up", {"blue", "up"}}};
  const int L = 300, size = *d.height, frames = *d.num_frames;
  double worst = 1e9;
  for (const auto& [prompt, seen] : cases) {
    const Tokens t = tok.encode(prepare_prompt(prompt, {6.5, std::nullopt, std::nullopt}), L);
    Tensor ids = Tensor::zeros({1, L}, DType::I64), mask = Tensor::zeros({1, L}, DType::I64);
    for (int i = 0; i < L; ++i) ids.data<int64_t>()[i] = t.ids[i], mask.data<int64_t>()[i] = t.mask[i];
    const Tensor y = t5->forward(ids, mask);
    const int64_t T = vae->config().latent_frames(frames);
    const Tensor noise = philox_normal({1, 4, T, size / 8, size / 8}, 0, 0);
    const Tensor z = rflow_sample(*dit, y.view({1, 1, L, y.size(2)}), mask, noise, size, size, frames, 24.0, *d.steps,
                                  *d.cfg_scale);  // on the host
    vae->set_channels_last(true);
    const Frames fast = frames_from_video_tensor(vae->decode(z, frames).select(0, 0), 24.0);
    vae->set_channels_last(false);
    const Frames slow = frames_from_video_tensor(vae->decode(z, frames).select(0, 0), 24.0);
    vae->set_channels_last(std::nullopt);
    ASSERT_EQ(fast.rgb.size(), slow.rgb.size());
    worst = std::min(worst, stdit::testing::psnr_ssim(fast, slow).first);
    const stdit::testing::Seen s = stdit::testing::look(fast, seen.first, seen.second);
    EXPECT_TRUE(s.ok) << prompt << " (bf16 VAE): " << s.str();
  }
  std::printf("  %-28s %-20s worst frame %.1f dB vs the f32 decode\n", "demo vae[bf16]", "2 prompts", worst);
  EXPECT_GE(worst, 40.0);
}

// Backend::limit_pool (--max-memory's bound on the pool), the pool's reserved bytes read from the
// device's pool after every allocation (a unit: 128 MiB), each case without and with a limit of 6
// units:
// - a block of the denoiser (norm output, qkv, attention output; cross-attention's three; the
//   MLP's hidden, 4x) six times: at most 5 units live at once;
// - a pool holding 8 units of freed blocks (the context keeps freed blocks: its release threshold
//   is unbounded) when the limit is set, then 1-unit tensors: without the limit the pool keeps the
//   8 units (so this case exercises the bound), under it the pool is trimmed before the next
//   allocation.
// (A pattern of holes — five 1-unit tensors, every other one freed, then 3 units — does not grow
// the driver's pool past 5 units: measured on an H100, it maps freed memory anew, so it is not a case.)
TEST(CudaMemory, PoolStaysUnderItsLimit) {
  CudaBackend g(0, CudaOptions{true, true, true});
  cudaMemPool_t pool;
  ASSERT_EQ(cudaDeviceGetDefaultMemPool(&pool, 0), cudaSuccess);
  auto reserved = [&] {
    uint64_t r = 0;
    EXPECT_EQ(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &r), cudaSuccess);
    return static_cast<size_t>(r);
  };
  const int64_t U = int64_t{64} << 20;  // bf16 values of one unit (128 MiB)
  const size_t unit = static_cast<size_t>(U) * 2, limit = 6 * unit;
  auto run = [&](bool held, size_t bound) {  // bound 0: no limit
    g.release_cached_memory();
    const size_t base = reserved();
    size_t most = 0;
    auto a = [&](int64_t units) {
      Tensor t = g.alloc({units * U}, DType::BF16);
      const size_t r = reserved();
      most = std::max(most, r > base ? r - base : size_t{0});
      return t;
    };
    if (held) {
      {
        std::vector<Tensor> t;
        for (int i = 0; i < 8; ++i) t.push_back(a(1));
      }
      g.synchronize();
      most = 0;  // what counts is what the pool holds from here on
      g.limit_pool(bound ? base + bound : 0);
      for (int i = 0; i < 3; ++i) Tensor t = a(1);
    } else {
      g.limit_pool(bound ? base + bound : 0);
      for (int block = 0; block < 6; ++block) {
        Tensor n = a(1), qkv = a(3), o = a(1);
        n = qkv = Tensor{};
        Tensor crossq = a(1);
        o = Tensor{};
        Tensor cq = a(1), co = a(1);
        crossq = cq = co = Tensor{};
        Tensor n2 = a(1), h = a(4);
      }
    }
    g.synchronize();
    g.limit_pool(0);
    return most;
  };
  for (const bool held : {false, true}) {
    const char* name = held ? "8 freed units held" : "block pattern";
    const size_t free_growth = run(held, 0), bounded = run(held, limit);
    std::printf("  pool, %s: %.2f units without a limit, %.2f units under a limit of 6\n", name,
                double(free_growth) / unit, double(bounded) / unit);
    EXPECT_LE(bounded, limit) << name;
    if (held) {
      EXPECT_GE(free_growth, 8 * unit) << "the pool did not keep the freed blocks: the case proves nothing";
    }
  }
}
