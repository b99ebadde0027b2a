// Step caching (TeaCache) and --cfg-until against the PyTorch reference loop
// (tests/data/step_cache, made by tools/reference/make_step_cache_fixtures.py): which steps ran
// the blocks, and the latents after 30 steps.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "models/stdit3/stdit3.h"
#include "pipeline/cfg_parallel.h"
#include "pipeline/denoiser.h"
#include "pipeline/generate.h"

using namespace stdit;

namespace {

const std::string kData = STDIT_TEST_DATA;

struct Fixture {
  nlohmann::json cases;
  std::shared_ptr<SafetensorsFile> expected;
  Tensor y_cond, mask, noise;
  int steps = 0;
  double cfg = 0;
};

Fixture load_fixture() {
  Fixture f;
  std::ifstream in(kData + "/step_cache/cases.json");
  f.cases = nlohmann::json::parse(in);
  f.steps = f.cases["steps"];
  f.cfg = f.cases["cfg_scale"];
  f.expected = SafetensorsFile::open(kData + "/step_cache/expected.safetensors");
  // The same inputs the reference used: pipeline_tiny's text embeddings, mask and noise.
  const auto want = SafetensorsFile::open(kData + "/pipeline_tiny/expected.safetensors");
  f.y_cond = want->get("y_cond");
  f.mask = want->get("mask");
  f.noise = SafetensorsFile::open(kData + "/pipeline_tiny/noise.safetensors")->get("noise");
  return f;
}

Tensor sample(Denoiser& d, const Fixture& f, const SamplerOptions& so, SamplerReport* rep) {
  return rflow_sample(d, f.y_cond, f.mask, f.noise, 24, 40, 17, 24, f.steps, f.cfg, {}, so, rep);
}

}  // namespace

// Every case: the same schedule as the reference (so a change in the rule is seen), latents within
// 1e-5 of the reference, and the cached runs measurably different from the plain one (so the
// tolerance can tell them apart).
TEST(StepCache, ScheduleAndLatentsMatchReference) {
  const Fixture f = load_fixture();
  CpuBackend be;
  auto dit = STDiT3::load(kData + "/pipeline_tiny/dit", be);
  SingleDenoiser d(*dit);
  const Tensor plain = f.expected->get("latents.plain");
  for (const auto& c : f.cases["cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    SamplerReport rep;
    const Tensor z = sample(d, f, {c["cache_threshold"].get<double>(), c["cfg_until"].get<double>()}, &rep);
    EXPECT_EQ(rep.schedule, c["schedule"].get<std::string>());
    const double err = rel_error(z, f.expected->get("latents." + name));
    std::cout << "step cache " << name << ": " << rep.parts_cached << " of " << rep.parts << " cached, "
              << rep.cond_only_steps << " conditional-only steps, latents rel err " << err << "\n";
    EXPECT_LE(err, 1e-5);
    EXPECT_EQ(rep.steps, f.steps);
    if (name != "plain") {
      EXPECT_GE(rel_error(z, plain), 20 * err) << "the case does not differ from plain";
    }
  }
}

// CFG-parallel: each half keeps its own cache and decides on its own rows; the first and last
// steps run on both; the result stays near the single-batch cached run.
TEST(StepCache, CfgParallelCachesPerHalf) {
  const Fixture f = load_fixture();
  CpuBackend be0, be1;
  auto dit0 = STDiT3::load(kData + "/pipeline_tiny/dit", be0), dit1 = STDiT3::load(kData + "/pipeline_tiny/dit", be1);
  SingleDenoiser d0(*dit0), d1(*dit1);
  CfgParallelDenoiser both({&be0, &be1}, {&d0, &d1});
  SamplerReport rep;
  const Tensor z = sample(both, f, {0.2, 0.8}, &rep);
  ASSERT_EQ(rep.steps, f.steps);
  EXPECT_EQ(rep.cond_only_steps, 6);
  EXPECT_EQ(rep.parts, 24 * 2 + 6);  // two halves per CFG step, one per conditional-only step
  EXPECT_GT(rep.parts_cached, 0);
  EXPECT_EQ(rep.schedule.substr(0, 3), "RR ");
  EXPECT_EQ(rep.schedule.substr(rep.schedule.size() - 2), " r");
  EXPECT_LE(rel_error(z, f.expected->get("latents.teacache_0.2_cfg_until_0.8")), 2e-3);
  EXPECT_GE(rel_error(z, f.expected->get("latents.plain")), 1e-5);
}

// The settings: accepted forms, and one clear error for each bad value.
TEST(StepCache, SettingsAreCheckedWithClearErrors) {
  EXPECT_EQ(parse_step_cache("none"), 0.0);
  EXPECT_EQ(parse_step_cache("teacache"), 0.1);
  EXPECT_EQ(parse_step_cache("teacache:0.25"), 0.25);
  EXPECT_EQ(step_cache_name(0.0), "none");
  EXPECT_EQ(step_cache_name(0.1), "teacache:0.1");
  for (const char* bad : {"pab", "teacache:", "teacache:0", "teacache:-0.1", "teacache:x", "teacache:0.1x",
                          "teacache:nan", "teacache:inf", "TeaCache", ""}) {
    try {
      parse_step_cache(bad);
      ADD_FAILURE() << "accepted --cache " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--cache"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(cfg_steps(1.0, 30), 30);
  EXPECT_EQ(cfg_steps(0.6, 30), 18);
  EXPECT_EQ(cfg_steps(0.8, 30), 24);
  EXPECT_EQ(cfg_steps(0.01, 30), 1);
  for (double bad : {0.0, -0.5, 1.01, std::nan(""), double(INFINITY)}) EXPECT_THROW(cfg_steps(bad, 30), Error) << bad;
}
