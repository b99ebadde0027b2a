// Open-Sora VAE v1.2: configuration, key list, and the CPU decode/encode against the reference.
#include <gtest/gtest.h>

#include <fstream>
#include <iostream>
#include <cstring>
#include <map>

#include "core/error.h"
#include "test_util.h"
#include "models/vae/config.h"

using namespace stdit;

namespace {
const std::string kData = STDIT_TEST_DATA;
}

TEST(VaeConfig, RealConfigAndKeys) {
  const VaeConfig c = load_vae_config(kData + "/configs/OpenSora-VAE-v1.2.config.json");
  EXPECT_EQ(c.micro_frame_size, 17);
  EXPECT_EQ(c.micro_batch_size, 4);
  EXPECT_EQ(c.micro_z_frame_size(), 5);
  EXPECT_FLOAT_EQ(c.scale[0], 3.85f);
  EXPECT_FLOAT_EQ(c.shift[3], 0.98f);
  // spec §9.2 / §7: latent frames of common lengths.
  EXPECT_EQ(c.latent_frames(1), 1);
  EXPECT_EQ(c.latent_frames(17), 5);
  EXPECT_EQ(c.latent_frames(23), 7);
  EXPECT_EQ(c.latent_frames(51), 15);
  EXPECT_EQ(c.latent_frames(102), 30);
  EXPECT_EQ(c.latent_frames(408), 120);
  const auto want = test::read_key_list(kData + "/keys/vae_v1.2.tsv");
  EXPECT_EQ(want.size(), 517u);
  std::map<std::string, std::string> got;
  for (const auto& p : vae_param_specs(c)) got[p.name] = shape_str(p.shape);
  for (const auto& [k, v] : want)
    if (!got.count(k)) ADD_FAILURE() << "missing " << k << " " << v;
    else if (got[k] != v) ADD_FAILURE() << k << " " << got[k] << " expected " << v;
  for (const auto& [k, v] : got)
    if (!want.count(k)) ADD_FAILURE() << "unexpected " << k << " " << v;
}

TEST(VaeConfig, Refusals) {
  auto err = [](const std::string& text) {
    try {
      parse_vae_config(text, "config.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(err("{\"model_type\": \"STDiT3\"}").find("VideoAutoencoderPipeline"), std::string::npos);
  EXPECT_NE(err("{\"model_type\": \"VideoAutoencoderPipeline\", \"scale\": [1, 2]}").find("'scale'"),
            std::string::npos);
  EXPECT_NE(err("{\"model_type\": \"VideoAutoencoderPipeline\", \"stdit_vae_2d\": {\"norm_num_groups\": 3}}")
                .find("not divisible"), std::string::npos);
  EXPECT_NE(err("nope").find("not valid JSON"), std::string::npos);
  // Fuzzing regression: a non-string model_type threw nlohmann::json::type_error.
  EXPECT_NE(err("{\"model_type\": 5}").find("model_type is '5'"), std::string::npos);
  EXPECT_NE(err("{\"model_type\": [\"VideoAutoencoderPipeline\"]}").find("model_type is"), std::string::npos);
  // JSON nesting bomb and oversized text are refused before building the document.
  EXPECT_NE(err(std::string(20000000, '[')).find("more than the"), std::string::npos);
  EXPECT_NE(err(std::string(100000, '[')).find("nested deeper than 64"), std::string::npos);
  EXPECT_NE(err("{\"a\":" + std::string(65, '[') + std::string(65, ']') + "}").find("nested deeper"),
            std::string::npos);
}

#include "backend/cpu/cpu_backend.h"
#include "models/vae/vae.h"

namespace {
class VaeCase : public ::testing::TestWithParam<int> {};

double compare_named(const std::map<std::string, Tensor>& got, const SafetensorsFile& want,
                     const std::string& name) {
  auto it = got.find(name);
  EXPECT_TRUE(it != got.end()) << name << " not produced";
  if (it == got.end()) return 1e9;
  const double e = rel_error(it->second, want.get(name));
  std::cout << want.path() << " " << name << ": rel err " << e << "\n";
  return e;
}
}  // namespace

// Decode and encode of a full 17-frame chunk, a remainder chunk (23 frames) and one image.
TEST_P(VaeCase, DecodeAndEncodeMatchReference) {
  const int frames = GetParam();
  CpuBackend be;
  auto vae = OpenSoraVae::load(kData + "/vae_tiny", be);
  const std::string d = kData + "/vae_tiny/";
  {
    const auto in = SafetensorsFile::open(d + "decode_" + std::to_string(frames) + ".inputs.safetensors");
    const auto want = SafetensorsFile::open(d + "decode_" + std::to_string(frames) + ".expected.safetensors");
    std::map<std::string, Tensor> got;
    vae->decode(in->get("z"), frames, [&](const std::string& n, const Tensor& t) { got[n] = t; });
    EXPECT_LE(compare_named(got, *want, "decode.temporal_out"), 1e-4);
    EXPECT_LE(compare_named(got, *want, "video"), 1e-4);
  }
  {
    const auto in = SafetensorsFile::open(d + "encode_" + std::to_string(frames) + ".inputs.safetensors");
    const auto want = SafetensorsFile::open(d + "encode_" + std::to_string(frames) + ".expected.safetensors");
    std::map<std::string, Tensor> got;
    vae->encode(in->get("video"), [&](const std::string& n, const Tensor& t) { got[n] = t; });
    EXPECT_LE(compare_named(got, *want, "encode.spatial_out"), 1e-4);
    EXPECT_LE(compare_named(got, *want, "z"), 1e-4);
  }
}

INSTANTIATE_TEST_SUITE_P(Vae, VaeCase, ::testing::Values(17, 23, 1));

// The channels-last decode (what the CUDA backend runs in bf16) through the base class's
// channel-first ops on the CPU: the same operations in the same order, so the same bits as the
// channel-first decode, and the reference's video within the decode's tolerance.
TEST(Vae, ChannelsLastDecodeIsTheSameDecode) {
  CpuBackend be;
  auto vae = OpenSoraVae::load(kData + "/vae_tiny", be);
  EXPECT_FALSE(vae->channels_last());  // the CPU's policy: channel-first F32
  const std::string d = kData + "/vae_tiny/";
  const auto in = SafetensorsFile::open(d + "decode_17.inputs.safetensors");
  const auto want = SafetensorsFile::open(d + "decode_17.expected.safetensors");
  const Tensor first = vae->decode(in->get("z"), 17);
  vae->set_channels_last(true);
  EXPECT_TRUE(vae->channels_last());
  std::map<std::string, Tensor> got;
  const Tensor last = vae->decode(in->get("z"), 17, [&](const std::string& n, const Tensor& t) { got[n] = t; });
  ASSERT_EQ(first.shape(), last.shape());
  EXPECT_EQ(std::memcmp(first.raw(), last.raw(), first.nbytes()), 0);
  EXPECT_LE(compare_named(got, *want, "decode.temporal_out"), 1e-4);
  EXPECT_LE(compare_named(got, *want, "video"), 1e-4);
}

TEST(Vae, FrameCountMustMatchLatents) {
  CpuBackend be;
  auto vae = OpenSoraVae::load(kData + "/vae_tiny", be);
  const Tensor z = Tensor::zeros({1, 4, 5, 3, 5}, DType::F32);
  try {
    vae->decode(z, 23);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("23 frames need 7 latent frames, but z has 5"), std::string::npos) << e.what();
  }
  EXPECT_THROW(vae->decode(Tensor::zeros({1, 3, 5, 3, 5}, DType::F32), 17), Error);
  EXPECT_THROW(vae->encode(Tensor::zeros({1, 3, 17, 20, 40}, DType::F32)), Error);  // 20 not a multiple of 8
  EXPECT_THROW(OpenSoraVae::load(kData + "/stdit3_a", be), Error);  // a DiT is not a VAE
}

// Encoding with sampling: repeatable for a seed, different across seeds, and centred on the mean
// (the average of many samples approaches the posterior mean).
TEST(Vae, EncodeSampleIsSeededAndCentred) {
  CpuBackend be;
  auto vae = OpenSoraVae::load(kData + "/vae_tiny", be);
  const auto in = SafetensorsFile::open(kData + "/vae_tiny/encode_1.inputs.safetensors");
  const Tensor v = in->get("video");
  const Tensor mean = vae->encode(v);
  const Tensor a = vae->encode(v, {}, 7), b = vae->encode(v, {}, 7), c = vae->encode(v, {}, 8);
  EXPECT_EQ(rel_error(a, b), 0.0);
  EXPECT_GT(rel_error(a, c), 1e-3);
  EXPECT_GT(rel_error(a, mean), 1e-3);
  Tensor avg = Tensor::zeros(mean.shape(), DType::F32);
  const int n = 64;
  for (int s = 0; s < n; ++s) {
    const Tensor x = vae->encode(v, {}, 100 + s);
    for (int64_t i = 0; i < avg.numel(); ++i) avg.data<float>()[i] += x.data<float>()[i] / n;
  }
  EXPECT_LT(rel_error(avg, mean), rel_error(a, mean) / 3);  // about 1/8 of one sample's spread
}
