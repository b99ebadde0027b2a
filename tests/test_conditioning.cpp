// Conditioning on references (pipeline/conditioning.h, pipeline/references.h): Open-Sora 1.2's mask
// strategies, prompt suffixes and loop segments, the VAE encode of a clip's tail, the bad inputs a
// request can carry, and the whole path against the PyTorch reference (tests/data/conditioning).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "core/philox.h"
#include "io/safetensors.h"
#include "media/frames.h"
#include "models/vae/vae.h"
#include "pipeline/conditioning.h"
#include "pipeline/references.h"
#include "stdit/stdit.h"
#include "demo_checks.h"
#include "tiny_engine.h"

using namespace stdit;
using stdit::testing::look;
using stdit::testing::psnr_ssim;
using stdit::testing::Seen;
namespace fs = std::filesystem;

namespace {

const std::string kData = STDIT_TEST_DATA;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR(stmt, text) EXPECT_NE(error_of([&] { stmt; }).find(text), std::string::npos) << error_of([&] { stmt; })

}  // namespace

TEST(MaskStrategy, ParsesWithOpenSorasDefaults) {
  auto e = parse_mask_strategy("0");
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(mask_strategy_string(e), "0,0,0,0,1,0");
  e = parse_mask_strategy("0,0,-5,0,5,0.5; 1, 1, 0, -1");
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0].ref_start, -5);
  EXPECT_DOUBLE_EQ(e[0].edit_ratio, 0.5);
  EXPECT_EQ(e[1].loop_id, 1);
  EXPECT_EQ(e[1].ref_id, 1);
  EXPECT_EQ(e[1].target_start, -1);
  EXPECT_EQ(e[1].length, 1);  // default
  EXPECT_TRUE(parse_mask_strategy("").empty());
  EXPECT_ERROR(parse_mask_strategy("0,0,0,0,1,0,7"), "bad mask strategy entry");
  EXPECT_ERROR(parse_mask_strategy("0,a"), "bad ref_id 'a'");
  EXPECT_ERROR(parse_mask_strategy("0,0,0,0,0"), "length must be at least 1");
  EXPECT_ERROR(parse_mask_strategy("0,0,0,0,1,1.5"), "edit_ratio must be in [0, 1]");
  EXPECT_ERROR(parse_mask_strategy("0,-1"), "must be >= 0");
  EXPECT_ERROR(parse_mask_strategy("0;;1"), "bad mask strategy entry");
  EXPECT_ERROR(parse_mask_strategy("0,0,0,0,1,nan"), "bad edit_ratio");
}

TEST(MaskStrategy, FindNearestPointAsOpenSora) {
  // Worked from the definition: t = v // p, + 1 when v % p > p / 2 and t < max // p - 1.
  EXPECT_EQ(find_nearest_point(14, 5, 15), 10);  // would round up to 15 = max: no
  EXPECT_EQ(find_nearest_point(13, 5, 20), 15);
  EXPECT_EQ(find_nearest_point(12, 5, 20), 10);  // 2 is not past the half
  EXPECT_EQ(find_nearest_point(3, 5, 15), 5);
  EXPECT_EQ(find_nearest_point(8, 5, 10), 5);
  EXPECT_EQ(find_nearest_point(0, 5, 5), 0);
  EXPECT_EQ(dframe_to_frame(5), 17);
  EXPECT_EQ(dframe_to_frame(10), 34);
  EXPECT_ERROR(dframe_to_frame(4), "multiple of 5");
}

TEST(MaskStrategy, PlacesReferenceFramesAndMasks) {
  // z: 6 latent frames of zeros; reference: 3 frames valued 10 + frame index (channel c adds 100 c).
  Tensor z = Tensor::zeros({4, 6, 1, 2}, DType::F32);
  Tensor ref = Tensor::empty({4, 3, 1, 2}, DType::F32);
  for (int c = 0; c < 4; ++c)
    for (int t = 0; t < 3; ++t)
      for (int k = 0; k < 2; ++k) ref.data<float>()[(c * 3 + t) * 2 + k] = 100.0f * c + 10.0f + t;
  // ref_start -2 -> 1, target 1, length min(5, 6 - 1, 3 - 1) = 2; an entry of loop 1 is skipped.
  const auto mask = apply_mask_strategy(z, {ref}, parse_mask_strategy("0,0,-2,1,5,0.5;1,0,0,0,1,0"), 0, std::nullopt);
  EXPECT_EQ(mask, (std::vector<float>{1, 0.5f, 0.5f, 1, 1, 1}));
  for (int c = 0; c < 4; ++c)
    for (int t = 0; t < 6; ++t) {
      const float want = t == 1 ? 100.0f * c + 11 : t == 2 ? 100.0f * c + 12 : 0.0f;
      EXPECT_EQ(z.data<float>()[(c * 6 + t) * 2 + 1], want) << "c " << c << " t " << t;
    }
  // Alignment (align 5) snaps the starts: in 6 frames target 4 goes down to 0 (rounding up would
  // reach the last multiple), in 15 frames up to 5.
  Tensor z2 = Tensor::zeros({4, 6, 1, 2}, DType::F32);
  EXPECT_EQ(apply_mask_strategy(z2, {ref}, parse_mask_strategy("0,0,0,4"), 0, 5),
            (std::vector<float>{0, 1, 1, 1, 1, 1}));
  Tensor z3 = Tensor::zeros({4, 15, 1, 2}, DType::F32);
  const auto m3 = apply_mask_strategy(z3, {ref}, parse_mask_strategy("0,0,0,4"), 0, 5);
  for (int t = 0; t < 15; ++t) EXPECT_EQ(m3[t], t == 5 ? 0.0f : 1.0f) << t;
}

TEST(MaskStrategy, OutOfRangeIsAnError) {
  Tensor z = Tensor::zeros({4, 5, 1, 1}, DType::F32);
  const Tensor ref = Tensor::zeros({4, 1, 1, 1}, DType::F32);
  EXPECT_ERROR(apply_mask_strategy(z, {ref}, parse_mask_strategy("0,1"), 0, std::nullopt), "uses reference 1");
  EXPECT_ERROR(apply_mask_strategy(z, {}, parse_mask_strategy("0"), 0, std::nullopt), "no reference is given");
  EXPECT_ERROR(apply_mask_strategy(z, {ref}, parse_mask_strategy("0,0,1"), 0, std::nullopt), "ref_start 1 is outside");
  EXPECT_ERROR(apply_mask_strategy(z, {ref}, parse_mask_strategy("0,0,0,-6"), 0, std::nullopt),
               "target_start -6 is outside");
}

TEST(Prompt, JsonSuffixAndLoopSegments) {
  PromptParts p = split_prompt_json("a cat{\"reference_path\": \"a.png;b.mp4\", \"mask_strategy\": \"0;0,1\"}");
  EXPECT_EQ(p.text, "a cat");
  EXPECT_EQ(*p.reference_path, "a.png;b.mp4");
  EXPECT_EQ(*p.mask_strategy, "0;0,1");
  p = split_prompt_json("plain");
  EXPECT_EQ(p.text, "plain");
  EXPECT_FALSE(p.reference_path || p.mask_strategy);
  EXPECT_ERROR(split_prompt_json("x{\"image\": \"a.png\"}"), "unknown key 'image'");
  EXPECT_ERROR(split_prompt_json("x{\"reference_path\": 3}"), "must be a string");
  EXPECT_ERROR(split_prompt_json("x{not json"), "does not parse");
  EXPECT_ERROR(split_prompt_json("x{} {}"), "only one JSON suffix");
  EXPECT_EQ(split_reference_paths(" a.png ; b.mp4", "t"), (std::vector<std::string>{"a.png", "b.mp4"}));
  EXPECT_ERROR(split_reference_paths("a.png;;b.png", "t"), "empty reference path");

  const std::string s = "|0| a red ball |2|a blue square";
  EXPECT_EQ(prompt_for_loop(s, 0), "a red ball");
  EXPECT_EQ(prompt_for_loop(s, 1), "a red ball");
  EXPECT_EQ(prompt_for_loop(s, 2), "a blue square");
  EXPECT_EQ(prompt_for_loop(s, 5), "a blue square");
  EXPECT_EQ(prompt_for_loop("no segments |1| here", 1), "no segments |1| here");
  EXPECT_ERROR(prompt_for_loop("|0|a|x|b", 1), "bad loop index 'x'");
  EXPECT_ERROR(prompt_for_loop("|0|a|0|b", 1), "bad loop index '0'");
  EXPECT_ERROR(prompt_for_loop("|0|a|1", 1), "an index, then its text");
}

TEST(Philox, LanesAreIndependentStreams) {
  const Tensor a = philox_normal({64}, 42, 3, 0), a2 = philox_normal({64}, 42, 3);
  const Tensor b = philox_normal({64}, 42, 3, 1 << 16), c = philox_normal({64}, 42, 3, (1 << 16) | 1);
  EXPECT_EQ(std::memcmp(a.raw(), a2.raw(), a.nbytes()), 0);  // lane 0 is the old stream
  EXPECT_NE(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
  EXPECT_NE(std::memcmp(b.raw(), c.raw(), a.nbytes()), 0);
  // SplitMix64's published first output for seed 0 (x = 0: z = 0x9E3779B97F4A7C15 ...).
  EXPECT_EQ(splitmix64(0), 0xE220A8397B1DCDAFull);
}

TEST(References, EncodingAClipsTailEqualsEncodingTheWholeClip) {
  CpuBackend be;
  auto vae = OpenSoraVae::load(kData + "/vae_tiny", be);
  // A 34-frame clip (two VAE chunks, 10 latent frames) of smooth random pixels in [-1, 1].
  Tensor video = philox_normal({1, 3, 34, 24, 40}, 5);
  for (int64_t i = 0; i < video.numel(); ++i) video.data<float>()[i] = std::tanh(0.5f * video.data<float>()[i]);
  const uint64_t key = reference_key(42, 0, 1);
  const Tensor whole = vae->encode(video, {}, key);  // [1, 4, 10, 3, 5]
  ASSERT_EQ(whole.size(2), 10);
  const MaskEntry e{1, 0, -5, 0, 5, 0.0};
  const Tensor tail = encode_clip_tail(*vae, video, e, 10, 5, key);  // only chunk 1 encoded
  double worst = 0;
  for (int c = 0; c < 4; ++c)
    for (int t = 5; t < 10; ++t)
      for (int k = 0; k < 15; ++k)
        worst = std::max(worst, std::fabs(double(whole.data<float>()[(c * 10 + t) * 15 + k]) -
                                          tail.data<float>()[(c * 10 + t) * 15 + k]));
  EXPECT_LE(worst, 1e-5);
  // And the sample is a sample: it differs from the posterior mean.
  const Tensor mean = vae->encode(video);
  double moved = 0;
  for (int64_t i = 0; i < mean.numel(); ++i) moved = std::max(moved, std::fabs(double(mean.data<float>()[i]) - whole.data<float>()[i]));
  EXPECT_GT(moved, 1e-4);
}

namespace {

api::Request tiny_request(const std::string& prompt) {
  api::Request r;
  r.prompts = {prompt};
  r.width = 40;
  r.height = 24;
  r.num_frames = "17";
  r.steps = 2;
  r.write_files = false;
  return r;
}

std::unique_ptr<api::Engine> tiny_engine() {
  api::EngineOptions eo;
  eo.dir = stdit::testing::tiny_random_engine(DType::F32);
  eo.backend = "cpu";
  return api::Engine::open(eo);
}

}  // namespace

TEST(References, BadInputIsOneErrorBeforeAnyModelLoads) {
  auto engine = tiny_engine();
  const std::string ref = kData + "/conditioning/ref.png";
  const fs::path tmp = fs::path(::testing::TempDir()) / ("stdit_cond_" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  { std::ofstream(tmp / "broken.png") << "not a picture"; }
  { std::ofstream(tmp / "notes.txt") << "text"; }
  auto refused = [&](api::Request r, const std::string& text) {
    const std::string e = error_of([&] { engine->validate(r); });
    EXPECT_NE(e.find(text), std::string::npos) << "expected: " << text << "\ngot: " << e;
  };
  api::Request r = tiny_request("x");
  r.image = (tmp / "missing.png").string();
  refused(r, "does not exist");
  r.image = (tmp / "broken.png").string();
  refused(r, "cannot read reference");
  r.image = (tmp / "notes.txt").string();
  refused(r, "unknown type '.txt'");
  r = tiny_request("x");
  r.reference_paths = {ref};
  r.mask_strategies = {"0,1"};
  refused(r, "uses reference 1 but there is 1");
  r.mask_strategies = {"0,0,0,9"};
  refused(r, "target_start 9 is outside the video (5 latent frames)");
  r.mask_strategies = {"0;0,zz"};
  refused(r, "bad ref_id 'zz'");
  r.mask_strategies = {"1"};
  refused(r, "entry for loop 1 but --loop is 1");
  r = tiny_request("x");
  r.loop = 0;
  refused(r, "--loop must be at least 1");
  r.loop = 2;
  refused(r, "shorter than the clip");  // 5 condition frames of a 5-frame clip
  r.num_frames = "34";
  r.condition_frame_length = 4;
  refused(r, "multiple of 5");
  r = tiny_request("x");
  r.prompts = {"a", "b", "c"};
  r.reference_paths = {ref, ref};
  refused(r, "--reference-path is given 2 times for 3 prompts");
  r = tiny_request("x");
  r.num_frames = "34";
  r.image = ref;
  r.extend = ref;
  refused(r, "--image is a reference of its own");
  r.image.clear();
  refused(r, "ref_start -5 is outside reference 0 (1 latent frame)");  // a picture is too short to extend
  r = tiny_request("x{\"reference_path\": \"" + ref + "\", \"mask_strategy\": \"0,0,0,0,1,2\"}");
  refused(r, "edit_ratio must be in [0, 1]");
  r = tiny_request("x");
  r.width = 4000;  // a reference fits any size that a video may have
  r.height = 24;
  r.image = ref;
  r.condition_frame_edit = 1.0;
  refused(r, "--condition-frame-edit must be in [0, 1)");
  fs::remove_all(tmp);
}

// The whole conditioned path (references read, resized and VAE-encoded with their Philox samples,
// mask strategies, masked sampling with per-step noise, loops) through the public API on the tiny
// random-weight engine, against tools/reference/make_conditioning_fixtures.py.
TEST(References, ConditionedVideosMatchTheReference) {
  const std::string d = kData + "/conditioning/";
  std::ifstream in(d + "cases.json");
  const auto cases = nlohmann::json::parse(in)["cases"];
  const auto want = SafetensorsFile::open(d + "expected.safetensors");
  api::EngineOptions eo;
  eo.dir = stdit::testing::tiny_random_engine(DType::F32);
  eo.backend = "cpu";
  auto engine = api::Engine::open(eo);
  ASSERT_EQ(cases.size(), 3u);
  for (const auto& c : cases) {
    const std::string name = c["name"];
    api::Request r;
    for (const auto& v : c["videos"]) {
      r.prompts.push_back(v["prompt"]);
      const std::string ref = v["reference_path"];
      r.reference_paths.push_back(ref.empty() ? "" : d + ref);
      r.mask_strategies.push_back(v["mask_strategy"]);
    }
    r.width = c["W"];
    r.height = c["H"];
    r.num_frames = std::to_string(c["num_frames"].get<int>());
    r.steps = c["steps"];
    r.cfg_scale = c["cfg"];
    r.seed = c["seed"];
    r.aes = c["aes"];
    r.fps = c["fps"];
    r.align = c["align"].is_null() ? 0 : c["align"].get<int>();
    r.loop = c["loop"];
    r.condition_frame_length = c["condition_frame_length"];
    r.condition_frame_edit = c["condition_frame_edit"];
    r.batch_size = static_cast<int>(r.prompts.size());  // one sampling call, as the reference
    r.write_files = false;
    r.return_latents = true;
    const api::Result out = engine->generate(r);
    ASSERT_EQ(out.videos.size(), r.prompts.size());
    for (size_t k = 0; k < out.videos.size(); ++k) {
      const std::string key = cat(name, ".", k, ".");
      const api::Video& v = out.videos[k];
      const Tensor wl = want->get(key + "latents");
      ASSERT_EQ(v.latent_shape, wl.shape()) << key;
      const Tensor got = Tensor::from_blob(const_cast<float*>(v.latents.data()), v.latent_shape, DType::F32, nullptr);
      const double e = rel_error(got, wl);
      const Tensor wf = want->get(key + "frames");  // [F, H, W, 3]
      ASSERT_EQ(static_cast<int64_t>(v.rgb.size()), wf.numel()) << key;
      int worst = 0;
      for (size_t i = 0; i < v.rgb.size(); ++i) worst = std::max(worst, std::abs(int(v.rgb[i]) - int(wf.data<uint8_t>()[i])));
      std::printf("conditioning %s video %zu: latents rel err %.3g, frames max |diff| %d (%d frames)\n", name.c_str(), k, e,
                  worst, v.frames);
      EXPECT_LE(e, 1e-4) << key;
      EXPECT_LE(worst, 1) << key;
      // The noise the reference was fed is ours: the documented Philox lanes.
      const int T = static_cast<int>(wl.size(1));
      for (int l = 0; l < r.loop.value(); ++l) {
        const Tensor n = philox_normal({4, T, wl.size(2), wl.size(3)}, 42, static_cast<uint32_t>(k), uint32_t(l) << 16);
        EXPECT_EQ(rel_error(n, want->get(cat(key, "noise.loop", l))), 0.0) << key << " loop " << l;
      }
    }
  }
}

// The run record keeps the references and strategies: --from makes the same file again.
TEST(References, FromRemakesAConditionedVideoByteForByte) {
  auto engine = tiny_engine();
  const fs::path tmp = fs::path(::testing::TempDir()) / ("stdit_cond_from_" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  api::Request r = tiny_request("a red ball{\"reference_path\": \"" + kData + "/conditioning/ref.png\", "
                                "\"mask_strategy\": \"0;0,0,0,2,1,0.5\"}");
  r.align = 0;
  r.write_files = true;
  r.output = (tmp / "a.mp4").string();
  engine->generate(r);
  api::Request again;
  again.from = r.output;
  again.output = (tmp / "b.mp4").string();
  const api::Result out = engine->generate(again);
  const auto rec = nlohmann::json::parse(out.videos.at(0).record);
  EXPECT_EQ(rec["videos"][0]["mask_strategy"], "0;0,0,0,2,1,0.5");
  EXPECT_EQ(rec["align"], 0);
  auto bytes = [](const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  EXPECT_EQ(bytes(tmp / "a.mp4"), bytes(tmp / "b.mp4"));
  fs::remove_all(tmp);
}

// ---------------------------------------------------------------------------------------------
// The embedded demo model: image-to-video starts from the image and moves as the prompt says;
// --extend continues a clip without a jump at the seam.
// ---------------------------------------------------------------------------------------------

namespace {

const std::string kDemo = (fs::path(STDIT_TEST_DATA).parent_path().parent_path() / "models" / "tiny").string();

// A 128 x 128 picture in the demo model's world: a flat disc of `rgb` centred at (cx, 64) on its
// white background (tools/train/dataset.py's palette).
Frames disc_picture(int cx, const uint8_t rgb[3]) {
  Frames f = make_frames(128, 128, 1);
  for (int y = 0; y < 128; ++y)
    for (int x = 0; x < 128; ++x) {
      uint8_t* p = f.frame(0) + (y * 128 + x) * 3;
      const bool in = (x + 0.5 - cx) * (x + 0.5 - cx) + (y + 0.5 - 64) * (y + 0.5 - 64) <= 14 * 14;
      for (int c = 0; c < 3; ++c) p[c] = in ? rgb[c] : 240;
    }
  return f;
}

std::unique_ptr<api::Engine> demo_engine() {
  api::EngineOptions eo;
  eo.dir = kDemo;
  eo.backend = "cpu";
  return api::Engine::open(eo);
}

Frames frames_of(const api::Video& v) {
  Frames f = make_frames(v.width, v.height, v.frames, v.fps);
  f.rgb = v.rgb;
  return f;
}

Frames one_frame(const Frames& f, int i) {
  Frames o = make_frames(f.width, f.height, 1, f.fps);
  std::memcpy(o.frame(0), f.frame(i), f.frame_bytes());
  return o;
}

// Mean absolute difference (0..255) between frames i and j.
double frame_diff(const Frames& f, int i, int j) {
  double s = 0;
  for (size_t k = 0; k < f.frame_bytes(); ++k) s += std::abs(int(f.frame(i)[k]) - int(f.frame(j)[k]));
  return s / f.frame_bytes();
}

}  // namespace

TEST(DemoModel, ImageToVideoStartsFromTheImageAndMovesAsTold) {
  auto engine = demo_engine();
  const fs::path tmp = fs::path(::testing::TempDir()) / ("stdit_i2v_" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  CpuBackend be;
  auto vae = OpenSoraVae::load(kDemo + "/vae", be);
  struct Case {
    int cx;
    uint8_t rgb[3];
    const char *prompt, *colour, *motion;
  };
  const Case cases[] = {{30, {220, 35, 35}, "a red ball moving to the right", "red", "right"},
                        {98, {35, 75, 225}, "a blue ball moving to the left", "blue", "left"}};
  for (const Case& c : cases) {
    const Frames picture = disc_picture(c.cx, c.rgb);
    const std::string path = (tmp / (std::string(c.colour) + ".png")).string();
    api::write_image(path, picture.rgb.data(), 128, 128);
    // What the VAE alone keeps of the picture (encode then decode): the best a first frame can be.
    Reference ref = read_reference(path, 128, 128, vae->config(), "test");
    const Tensor round_trip = vae->decode(vae->encode(reference_pixels(ref, 128, 128), {}, reference_key(42, 0, 0)), 1);
    const double floor_psnr = psnr_ssim(frames_from_video_tensor(round_trip.select(0, 0), 24), picture).first;

    api::Request r;
    r.prompts = {c.prompt};
    r.image = path;
    r.write_files = false;
    const api::Result out = engine->generate(r);
    const Frames f = frames_of(out.videos.at(0));
    const auto [psnr0, ssim0] = psnr_ssim(one_frame(f, 0), picture);
    const Seen seen = look(f, c.colour, c.motion);
    std::printf("image-to-video \"%s\": first frame vs the picture %.2f dB (SSIM %.4f); VAE round trip alone %.2f dB; %s\n",
                c.prompt, psnr0, ssim0, floor_psnr, seen.str().c_str());
    EXPECT_GT(psnr0, 24.0) << c.prompt;
    EXPECT_TRUE(seen.ok) << c.prompt << ": " << seen.str();
    // Without the image the same prompt starts elsewhere: the first frame is the picture's doing.
    api::Request plain = r;
    plain.image.clear();
    const Frames g = frames_of(engine->generate(plain).videos.at(0));
    const double psnr_plain = psnr_ssim(one_frame(g, 0), picture).first;
    std::printf("  the same prompt without the image: first frame vs the picture %.2f dB\n", psnr_plain);
    EXPECT_GT(psnr0, psnr_plain + 3) << c.prompt;
  }
  fs::remove_all(tmp);
}

TEST(DemoModel, ExtendContinuesAClipWithoutAJump) {
  auto engine = demo_engine();
  const fs::path tmp = fs::path(::testing::TempDir()) / ("stdit_extend_" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  api::Request first;
  first.prompts = {"a red ball moving to the right"};
  first.output = (tmp / "clip.mp4").string();
  first.keep_frames = true;
  const Frames clip = frames_of(engine->generate(first).videos.at(0));  // 17 frames
  api::Request more;
  more.prompts = first.prompts;
  more.extend = first.output;
  more.num_frames = "34";  // 17 conditioned on the clip's last 17, then 17 new
  more.write_files = false;
  const api::Result out = engine->generate(more);
  const Frames f = frames_of(out.videos.at(0));
  ASSERT_EQ(f.count, clip.count + 17);
  const int seam = clip.count;  // first new frame
  double inside = 0;
  int n = 0;
  for (int i = 1; i < f.count; ++i)
    if (i != seam) inside += frame_diff(f, i - 1, i), ++n;
  inside /= n;
  const double jump = frame_diff(f, seam - 1, seam);
  std::printf("--extend: frame-to-frame difference at the seam %.2f, inside the video %.2f (mean |diff|, 0..255); "
              "record %s\n", jump, inside, out.videos[0].record.c_str());
  EXPECT_LT(jump, 3 * inside + 1.0);
  // The continued clip's own frames open the output (as its mp4 decodes: H.264 at crf 18).
  Frames head = make_frames(f.width, f.height, clip.count, f.fps);
  std::memcpy(head.rgb.data(), f.rgb.data(), head.rgb.size());
  EXPECT_GT(psnr_ssim(head, clip).first, 30.0);
  const auto rec = nlohmann::json::parse(out.videos[0].record);
  EXPECT_EQ(rec["extend"], first.output);
  EXPECT_EQ(rec["videos"][0]["mask_strategy"], "0,0,-5,0,5,0");
  fs::remove_all(tmp);
}
