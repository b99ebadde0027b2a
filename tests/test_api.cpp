// The public API (include/stdit/stdit.h) as a front end uses it: an engine opened once, requests
// with events and cancellation, frames returned without files, resident models.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "stdit/stdit.h"

namespace fs = std::filesystem;
using namespace stdit;

namespace {

const std::string kDemo = (fs::path(STDIT_TEST_DATA).parent_path().parent_path() / "models" / "tiny").string();

// The embedded demo model on the CPU.
api::EngineOptions demo_on_cpu() {
  api::EngineOptions eo;
  eo.dir = kDemo;
  eo.backend = "cpu";
  return eo;
}

api::Request small_request(const std::string& prompt) {
  api::Request r;
  r.prompts = {prompt};
  r.width = 64;
  r.height = 64;
  r.num_frames = "17";
  r.steps = 2;
  r.write_files = false;
  return r;
}

fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::path(::testing::TempDir()) / (name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

}  // namespace

TEST(Api, ResidentEngineReturnsFramesAndMatchesAStagedOne) {
  api::EngineOptions eo = demo_on_cpu();
  eo.resident = true;
  auto resident = api::Engine::open(eo);
  EXPECT_EQ(resident->backend(), "cpu");
  EXPECT_EQ(resident->dir(), kDemo);
  EXPECT_EQ(resident->identity().size(), 16u);

  std::vector<api::Event> events;
  api::Request r = small_request("a red ball moving to the right");
  r.return_latents = true;
  const api::Result a = resident->generate(r, [&](const api::Event& e) { events.push_back(e); });
  ASSERT_EQ(a.videos.size(), 1u);
  const api::Video& v = a.videos[0];
  EXPECT_TRUE(v.path.empty());  // write_files = false: nothing written
  EXPECT_EQ(v.width, 64);
  EXPECT_EQ(v.height, 64);
  EXPECT_EQ(v.frames, 17);
  EXPECT_EQ(v.rgb.size(), size_t{17} * 64 * 64 * 3);
  EXPECT_EQ(v.latent_shape, (std::vector<int64_t>{4, 5, 8, 8}));
  EXPECT_EQ(v.latents.size(), size_t{4} * 5 * 8 * 8);
  EXPECT_NE(v.record.find("\"prompt\":\"a red ball moving to the right\""), std::string::npos);
  EXPECT_NE(v.record.find("\"attention_kernels\":\"cpu\""), std::string::npos) << v.record;
  // Events: the text, one per denoising step, the VAE chunks, then the saved video.
  int steps = 0, decode = 0, saved = 0;
  for (const auto& e : events) {
    steps += e.stage == "denoise";
    decode += e.stage == "decode";
    saved += e.stage == "saved";
  }
  EXPECT_EQ(steps, 2);
  EXPECT_GT(decode, 0);
  EXPECT_EQ(saved, 1);
  EXPECT_EQ(events.back().stage, "saved");

  // A second request on the loaded models, then the first again: the same frames as before and
  // as an engine that loads and frees its models per request.
  const api::Result b = resident->generate(small_request("a blue square moving up"));
  EXPECT_NE(b.videos[0].rgb, v.rgb);
  const api::Result again = resident->generate(small_request("a red ball moving to the right"));
  EXPECT_EQ(again.videos[0].rgb, v.rgb);
  // A resident engine's counts grow across requests; each record names what its own run used.
  EXPECT_NE(again.videos[0].record.find("\"attention_kernels\":\"cpu\""), std::string::npos);
  EXPECT_EQ(resident->loaded_models(), (std::vector<std::string>{"t5", "denoiser", "vae"}));
  eo.resident = false;
  auto staged = api::Engine::open(eo);
  EXPECT_TRUE(staged->loaded_models().empty());
  EXPECT_EQ(staged->generate(small_request("a red ball moving to the right")).videos[0].rgb, v.rgb);
  EXPECT_TRUE(staged->loaded_models().empty());
}

// The run's settings line says what computes: fp8 on the CPU is an emulation of the GPU's
// arithmetic (slower than f32, for measuring what fp8 costs in quality), and says so.
TEST(Api, SettingsSayFp8OnTheCpuIsAnEmulation) {
  api::EngineOptions eo = demo_on_cpu();
  api::Request r = small_request("a red ball moving to the right");
  r.num_frames = "1";
  r.steps = 1;
  const std::string plain = api::Engine::open(eo)->generate(r).settings;
  EXPECT_NE(plain.find("backend cpu (f32)"), std::string::npos) << plain;
  eo.precision = "fp8";
  const std::string fp8 = api::Engine::open(eo)->generate(r).settings;
  EXPECT_NE(fp8.find("backend cpu (fp8 emulated, slow: for checking quality, unquantized "), std::string::npos) << fp8;
}

// Offload: a resident engine that keeps only the denoiser between requests makes the same frames,
// request after request; without resident the option changes nothing.
TEST(Api, OffloadKeepsOnlyTheDenoiser) {
  api::EngineOptions eo = demo_on_cpu();
  auto staged = api::Engine::open(eo);
  const std::vector<uint8_t> want = staged->generate(small_request("a red ball moving to the right")).videos[0].rgb;
  eo.resident = true;
  eo.offload = true;
  auto offloaded = api::Engine::open(eo);
  EXPECT_TRUE(offloaded->loaded_models().empty());  // nothing loads before the first request
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(offloaded->generate(small_request("a red ball moving to the right")).videos[0].rgb, want);
    EXPECT_EQ(offloaded->loaded_models(), std::vector<std::string>{"denoiser"});
  }
  eo.resident = false;
  auto staged_offload = api::Engine::open(eo);
  EXPECT_EQ(staged_offload->generate(small_request("a red ball moving to the right")).videos[0].rgb, want);
  EXPECT_TRUE(staged_offload->loaded_models().empty());
}

TEST(Api, CancelTokenStopsAtTheNextStepAndLeavesNothing) {
  api::EngineOptions eo = demo_on_cpu();
  auto engine = api::Engine::open(eo);
  const fs::path out = temp_dir("stdit_api_cancel");
  api::Request r = small_request("a red ball");
  r.prompts = {"a red ball", "a green ball"};
  r.write_files = true;
  r.out_dir = out.string();
  r.steps = 6;
  api::CancelToken token;
  int steps_seen = 0;
  try {
    engine->generate(
        r,
        [&](const api::Event& e) {
          if (e.stage == "denoise" && ++steps_seen == 8) token.cancel();  // the second video's 2nd step
        },
        token);
    FAIL() << "no Cancelled";
  } catch (const Cancelled& c) {
    EXPECT_EQ(c.planned, 2);
    ASSERT_EQ(c.saved.size(), 1u);
    EXPECT_EQ(fs::path(c.saved[0]).filename(), "sample_0000.mp4");
  }
  EXPECT_EQ(steps_seen, 8);  // stopped right at that step boundary
  std::vector<std::string> left;
  for (const auto& f : fs::directory_iterator(out)) left.push_back(f.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"sample_0000.mp4"});  // no placeholder, no temporary
  // The token is reusable once reset.
  token.reset();
  r.prompts = {"a red ball"};
  EXPECT_EQ(engine->generate(r, {}, token).videos.size(), 1u);
  fs::remove_all(out);
}

TEST(Api, BadRequestsAreErrorsBeforeWork) {
  api::EngineOptions eo = demo_on_cpu();
  auto engine = api::Engine::open(eo);
  api::Request r = small_request("x");
  r.output = "x.mp4";  // files with write_files = false
  EXPECT_THROW(engine->generate(r), Error);
  r = small_request("x");
  r.camera_motion = "dolly";
  EXPECT_THROW(engine->generate(r), Error);
  eo.dir = "/nonexistent/engine";
  EXPECT_THROW(api::Engine::open(eo), Error);
}
