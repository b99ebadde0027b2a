// The memory plan is a dry run of the allocator (backend/dry_run.h, pipeline/memory_plan.h): the
// dry run computes nothing and holds no memory, and its peak equals what the real call's
// allocations held at once, counted by the CPU backend as it allocates — on one device, for keyed
// and unkeyed calls and conditioned frames, and on rank 0 of the tensor- and context-parallel
// splits. tests/gpu compares it with the CUDA backend's own count in every precision.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "backend/dry_run.h"
#include "io/safetensors.h"
#include "models/stdit3/forward_io.h"
#include "models/stdit3/stdit3.h"
#include "pipeline/denoiser.h"
#include "pipeline/memory_plan.h"
#include "stdit/stdit.h"

using namespace stdit;

namespace {
const std::string kData = STDIT_TEST_DATA;

STDiT3Inputs fixture_inputs(const std::string& name) {
  return read_stdit3_inputs(*SafetensorsFile::open(kData + "/" + name + "/inputs.safetensors"));
}

namespace fs = std::filesystem;
const std::string kDemo = (fs::path(kData).parent_path().parent_path() / "models" / "tiny").string();

// The embedded demo model on the CPU.
std::unique_ptr<api::Engine> demo_engine(bool resident = false) {
  api::EngineOptions eo;
  eo.dir = kDemo;
  eo.backend = "cpu";
  eo.resident = resident;
  return api::Engine::open(eo);
}

// A small request on it, two steps, nothing written.
api::Request demo_request(int width, int height, const std::string& frames) {
  api::Request r;
  r.prompts = {"a red ball rolls across a green field"};
  r.width = width;
  r.height = height;
  r.num_frames = frames;
  r.steps = 2;
  r.write_files = false;
  return r;
}

// `r` again with --max-memory one byte under `plain_peak` (its plan without a budget).
api::Result one_byte_short(api::Engine& engine, const api::Request& r, size_t plain_peak) {
  api::Request limited = r;
  limited.max_memory_gib = (plain_peak - 1) / double(1ull << 30);
  return engine.generate(limited);
}

// The most bytes `backend` held at once during fn, above what it held before.
size_t held_during(CpuBackend& backend, const std::function<void()>& fn) {
  backend.reset_peak_memory();
  const size_t before = backend.held_bytes();
  fn();
  return backend.peak_memory_bytes() - before;
}
}  // namespace

TEST(MemoryPlan, DryRunCountsTensorsWithoutMemory) {
  CpuBackend cpu;
  DryRunBackend dry(cpu);
  EXPECT_EQ(dry.device(), cpu.device());
  EXPECT_EQ(dry.matmul_dtype(), cpu.matmul_dtype());
  {
    Tensor a = dry.alloc({1000});
    EXPECT_EQ(a.raw(), nullptr);  // no memory behind it
    EXPECT_EQ(dry.held_bytes(), 4000u);
    {
      Tensor b = dry.alloc({10, 100}, DType::BF16);
      Tensor view = b.slice(0, 2, 4);  // a view holds its storage, not more bytes
      EXPECT_EQ(dry.held_bytes(), 6000u);
    }
    EXPECT_EQ(dry.held_bytes(), 4000u);
    EXPECT_EQ(dry.peak_memory_bytes(), 6000u);
    // Floats are uploaded as F32, integers as they are; downloads are host zeros.
    Tensor u = dry.upload(Tensor::zeros({8}, DType::BF16));
    EXPECT_EQ(u.dtype(), DType::F32);
    EXPECT_EQ(dry.upload(Tensor::zeros({8}, DType::I64)).dtype(), DType::I64);
    EXPECT_EQ(dry.download(a).shape(), a.shape());
    EXPECT_EQ(dry.held_bytes(), 4032u);
    // Ops compute nothing and fail nowhere on memory-less tensors.
    Tensor o = dry.alloc({1000});
    dry.add(a, a, o);
    dry.linear(a.view({10, 100}), dry.alloc({5, 100}), Tensor{}, Activation::GeluTanh, o);
  }
  EXPECT_EQ(dry.held_bytes(), 0u);
  dry.reset_peak_memory();
  EXPECT_EQ(dry.peak_memory_bytes(), 0u);
}

// The reference fixtures' models and inputs, unkeyed and keyed (the kept text conditioning stays
// after the call: in the plan and in the count), with and without a conditioning frame (x_mask).
// In fp8 too (the emulation: the norms write their GEMMs' e4m3 operands with row scales).
TEST(MemoryPlan, EqualsTheCallsAllocationsOnOneDevice) {
  for (const char* precision : {"f32", "fp8"})
  for (const char* name : {"stdit3_a", "stdit3_b"})
    for (const bool conditioned : {false, true})
      for (const uint64_t key : {uint64_t{0}, new_text_key()}) {
      SCOPED_TRACE(std::string(name) + " " + precision + (key ? " keyed" : " unkeyed") +
                   (conditioned ? " conditioned" : ""));
      const ExecutionPolicy policy = resolve_policy({precision, "auto", {}, ""}, "cpu", 0);
      STDiT3Inputs in = fixture_inputs(name);
      in.text_key = key;
      in.x_mask = Tensor{};
      if (conditioned) {  // frame 0 of every sample is a clean conditioning frame
        in.x_mask = Tensor::zeros({in.x.size(0), in.x.size(2)}, DType::U8);
        for (int64_t i = 0; i < in.x_mask.numel(); ++i) in.x_mask.data<uint8_t>()[i] = i % in.x.size(2) != 0;
      }
      CpuBackend be(policy);
      auto model = STDiT3::load(kData + "/" + name, be);
      const size_t plan = plan_model_call(*model, in);
      EXPECT_GT(plan, 0u);
      Tensor out;
      const size_t held = held_during(be, [&] { out = model->forward(in); });
      EXPECT_EQ(plan, held);
      // The dry run left the model as it was: the same output as a model that never planned.
      CpuBackend be2(policy);
      const Tensor fresh = STDiT3::load(kData + "/" + name, be2)->forward(in);
      ASSERT_EQ(out.nbytes(), fresh.nbytes());
      EXPECT_EQ(std::memcmp(out.raw(), fresh.raw(), out.nbytes()), 0);
    }
}

// Rank 0 of tensor parallelism (2 and 4 ranks), context parallelism (2) and both (2 x 2) on host
// threads: its plan (a dry run with a twin of its communicators) equals its backend's count.
TEST(MemoryPlan, EqualsRankZerosAllocationsUnderTensorAndContextParallelism) {
  const std::string dir = kData + "/stdit3_a";
  STDiT3Inputs in = fixture_inputs("stdit3_a");
  // 4 latent frames (of 12 tokens each), so that both splits divide them.
  const Shape xs = in.x.shape();
  in.x = Tensor::zeros({xs[0], xs[1], 4, xs[3], xs[4]}, DType::F32);
  in.x_mask = Tensor{};
  struct Split {
    int ranks, cp;
  };
  for (const Split sp : {Split{2, 1}, Split{4, 1}, Split{2, 2}, Split{4, 2}}) {
    SCOPED_TRACE("ranks " + std::to_string(sp.ranks) + ", cp " + std::to_string(sp.cp));
    std::vector<std::unique_ptr<CpuBackend>> owned;
    std::vector<Backend*> ptrs;
    for (int i = 0; i < sp.ranks; ++i) {
      owned.push_back(std::make_unique<CpuBackend>());
      ptrs.push_back(owned.back().get());
    }
    auto model = TensorParallelDenoiser::load(dir, ptrs, "--model", sp.cp);
    const size_t plan = plan_model_call(model->first(), in);
    EXPECT_EQ(plan, held_during(*owned[0], [&] { model->forward(in); }));
  }
}

// A whole request (pipeline/memory_plan.h, api::Engine::plan_memory): the plan's largest stage
// equals the most the run's allocations held at once, on the demo model — a video of two VAE
// chunks, an image, two videos denoised together, image-to-video (the VAE loaded while
// sampling), a resident engine (every model kept), and 51 frames decoded from saved latents.
TEST(MemoryPlan, RequestPlanEqualsTheRunsAllocations) {
  const fs::path tmp = fs::path(::testing::TempDir()) / ("memory_plan_" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  auto request = [](const std::string& frames) { return demo_request(64, 48, frames); };
  struct Case {
    std::string name;
    api::Request r;
    bool resident = false;
  };
  std::vector<Case> cases;
  cases.push_back({"34 frames", request("34")});
  cases.push_back({"image", request("1")});
  {
    api::Request r = request("17");
    r.num_samples = 2;
    r.batch_size = 2;
    cases.push_back({"two videos at once", r});
  }
  {
    api::Request r = request("17");
    r.image = kData + "/media/chelsea.png";
    cases.push_back({"image-to-video", r});
  }
  cases.push_back({"resident", request("17"), true});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto engine = demo_engine(c.resident);
    const api::Engine::MemoryEstimate est = engine->plan_memory(c.r);
    ASSERT_EQ(est.stages.size(), 3u);
    EXPECT_EQ(est.device_held, 0u);  // the CPU
    const api::Result res = engine->generate(c.r);
    EXPECT_GT(res.allocated_peak_bytes, 0u);
    EXPECT_EQ(est.largest(), res.allocated_peak_bytes);
  }
  // Decoding saved latents: the decode stage alone.
  {
    api::Request r = request("51");
    r.write_files = true;
    r.out_dir = tmp.string();
    r.save_latents = (tmp / "z.safetensors").string();
    demo_engine()->generate(r);
    api::Request d;
    d.decode_only = r.save_latents;
    d.write_files = false;
    auto engine = demo_engine();
    const api::Engine::MemoryEstimate est = engine->plan_memory(d);
    ASSERT_EQ(est.stages.size(), 1u);
    EXPECT_EQ(est.stages[0].first, "decode");
    EXPECT_EQ(est.largest(), engine->generate(d).allocated_peak_bytes);
  }
  // --max-memory refuses before anything loads, naming the stage and the shortfall.
  {
    auto engine = demo_engine();
    api::Request r = request("17");
    const size_t need = engine->plan_memory(r).largest();
    r.max_memory_gib = 1e-6;  // under what any stage needs in any form
    try {
      engine->generate(r);
      ADD_FAILURE() << "a budget under every stage was accepted";
    } catch (const InvalidRequest& e) {
      EXPECT_NE(std::string(e.what()).find("--max-memory"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("stage"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(engine->loaded_models().empty());
    r.max_memory_gib = (need + 1) / double(1ull << 30);
    EXPECT_EQ(engine->generate(r).videos.size(), 1u);
  }
  fs::remove_all(tmp);
}

// A resident engine's later requests: T5, the denoiser and the VAE loaded by the first are held
// through every stage, and the plan counts them (equal to the run's allocations again; nothing of
// the first request's text or step-caching state is left in the denoiser). Over a budget with
// them kept, the request frees T5 and the VAE after their stages (as offload): less memory, the
// same video bit for bit, the engine still able to serve the next request.
TEST(MemoryPlan, ResidentEnginePlansItsLoadedModelsAndOffloadsToFit) {
  auto engine = demo_engine(true);
  api::Request r = demo_request(64, 48, "17");
  r.cache = "teacache";  // leaves step-caching state in the model at the end of a request
  const api::Engine::MemoryEstimate first_est = engine->plan_memory(r);
  const size_t first_plan = first_est.largest(), engine_plan_text = first_est.stages[0].second;
  const api::Result first = engine->generate(r);
  EXPECT_EQ(first.allocated_peak_bytes, first_plan);
  const std::vector<std::string> all = {"t5", "denoiser", "vae"};
  ASSERT_EQ(engine->loaded_models(), all);
  const api::Engine::MemoryEstimate again = engine->plan_memory(r);
  ASSERT_EQ(again.stages.size(), 3u);
  EXPECT_GT(again.stages[0].second, engine_plan_text);  // T5's stage holds the denoiser and the VAE now
  const api::Result second = engine->generate(r);
  EXPECT_EQ(second.allocated_peak_bytes, again.largest());
  EXPECT_EQ(second.videos[0].rgb, first.videos[0].rgb);

  // One byte under that: T5 and the VAE go after their stages in this request.
  const api::Result offloaded = one_byte_short(*engine, r, again.largest());
  ASSERT_EQ(offloaded.videos.size(), 1u);
  EXPECT_LT(offloaded.allocated_peak_bytes, again.largest());
  EXPECT_EQ(offloaded.videos[0].rgb, first.videos[0].rgb);
  EXPECT_EQ(engine->loaded_models(), std::vector<std::string>{"denoiser"});
  // The next request plans from there (T5 and the VAE not loaded) and loads them again.
  const size_t after = engine->plan_memory(r).largest();
  const api::Result next = engine->generate(r);
  EXPECT_EQ(next.allocated_peak_bytes, after);
  EXPECT_EQ(engine->loaded_models(), all);
}

// When the decode is what does not fit, --max-memory lowers the frames per 2D VAE call (4, 2, 1)
// until it does, records the choice, and the video is the same (on the CPU, bit for bit).
TEST(MemoryPlan, MaxMemoryLowersTheVaeFramesPerCallToFit) {
  auto engine = demo_engine();
  const api::Request r = demo_request(128, 96, "17");
  const api::Engine::MemoryEstimate plain = engine->plan_memory(r);
  ASSERT_EQ(plain.stages.back().first, "decode");
  size_t others = 0;
  for (const auto& [name, bytes] : plain.stages)
    if (name != "decode") others = std::max(others, bytes);
  ASSERT_GT(plain.largest(), others) << "the decode must be the largest stage for this test";
  const api::Result reference = engine->generate(r);
  EXPECT_EQ(reference.allocated_peak_bytes, plain.largest());

  // A budget just under the plain decode: fewer frames per call, then the same frames.
  const api::Result got = one_byte_short(*engine, r, plain.largest());
  ASSERT_EQ(got.videos.size(), 1u);
  const auto record = nlohmann::json::parse(got.videos[0].record);
  ASSERT_TRUE(record.contains("vae_frames_per_call")) << got.videos[0].record;
  const int frames = record["vae_frames_per_call"].get<int>();
  EXPECT_GE(frames, 1);
  EXPECT_LT(frames, 4);
  EXPECT_LT(got.allocated_peak_bytes, plain.largest());
  EXPECT_EQ(got.videos[0].rgb, reference.videos[0].rgb);
  EXPECT_FALSE(nlohmann::json::parse(reference.videos[0].record).contains("vae_frames_per_call"));

  // Under what any stage needs even at one frame per call: refused, naming the stage.
  api::Request tiny = r;
  tiny.max_memory_gib = 1e-6;
  try {
    engine->generate(tiny);
    ADD_FAILURE() << "a budget under every stage was accepted";
  } catch (const InvalidRequest& e) {
    EXPECT_NE(std::string(e.what()).find(" stage "), std::string::npos) << e.what();
  }
}

// When the denoiser is what does not fit (one device, no step caching), --max-memory runs the two
// CFG halves one after the other: less memory, recorded, and the same video within a few levels.
TEST(MemoryPlan, MaxMemoryRunsTheCfgHalvesOneAfterTheOther) {
  auto engine = demo_engine();
  const api::Request r = demo_request(64, 48, "204");
  const api::Engine::MemoryEstimate plain = engine->plan_memory(r);
  ASSERT_EQ(plain.stages[1].first, "denoise");
  ASSERT_EQ(plain.stages[1].second, plain.largest()) << "the denoiser must be the largest stage for this test";
  const api::Result reference = engine->generate(r);
  EXPECT_EQ(reference.allocated_peak_bytes, plain.largest());

  const api::Result got = one_byte_short(*engine, r, plain.largest());
  ASSERT_EQ(got.videos.size(), 1u);
  const auto record = nlohmann::json::parse(got.videos[0].record);
  EXPECT_EQ(record.value("cfg_halves", ""), "sequential") << got.videos[0].record;
  EXPECT_LT(got.allocated_peak_bytes, plain.largest());
  // Half batches round differently in the GEMMs (as --batch-size does): the same video within a
  // few 8-bit levels.
  const auto& a = got.videos[0].rgb;
  const auto& b = reference.videos[0].rgb;
  ASSERT_EQ(a.size(), b.size());
  int worst = 0;
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const int d = std::abs(int(a[i]) - int(b[i]));
    worst = std::max(worst, d);
    sum += d;
  }
  std::printf("sequential CFG halves vs the batch: max |diff| %d, mean %.4f levels\n", worst, sum / a.size());
  EXPECT_LE(worst, 4);
  EXPECT_LE(sum / a.size(), 0.05);

  // With step caching the halves need a model each: refused instead.
  api::Request cached = r;
  cached.max_memory_gib = (plain.largest() - 1) / double(1ull << 30);
  cached.cache = "teacache";
  EXPECT_THROW(engine->generate(cached), InvalidRequest);
}
