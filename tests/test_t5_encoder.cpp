// T5 encoder on the CPU backend vs the PyTorch reference, from both checkpoint formats; and the
// refusals of the PyTorch .bin reader (tests/data/t5_bad, described in its README).
#include <gtest/gtest.h>

#include <fstream>
#include <iostream>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "test_util.h"
#include "io/torch_bin.h"
#include "text/t5.h"

using namespace stdit;

namespace {
const std::string kData = STDIT_TEST_DATA;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class T5Format : public ::testing::TestWithParam<std::string> {};

// A stored (uncompressed) zip of the given entries, laid out as torch.save writes them.
std::vector<uint8_t> stored_zip(const std::vector<std::pair<std::string, std::string>>& files) {
  std::vector<uint8_t> z, cd;
  auto put = [](std::vector<uint8_t>& b, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
  };
  for (const auto& [name, data] : files) {
    const uint64_t off = z.size();
    put(z, 0x04034b50, 4), put(z, 20, 2), put(z, 0, 2), put(z, 0, 2), put(z, 0, 4), put(z, 0, 4);
    put(z, data.size(), 4), put(z, data.size(), 4), put(z, name.size(), 2), put(z, 0, 2);
    z.insert(z.end(), name.begin(), name.end());
    z.insert(z.end(), data.begin(), data.end());
    put(cd, 0x02014b50, 4), put(cd, 20, 2), put(cd, 20, 2), put(cd, 0, 2), put(cd, 0, 2), put(cd, 0, 4);
    put(cd, 0, 4), put(cd, data.size(), 4), put(cd, data.size(), 4), put(cd, name.size(), 2);
    put(cd, 0, 2), put(cd, 0, 2), put(cd, 0, 2), put(cd, 0, 2), put(cd, 0, 4), put(cd, off, 4);
    cd.insert(cd.end(), name.begin(), name.end());
  }
  const uint64_t cd_off = z.size();
  z.insert(z.end(), cd.begin(), cd.end());
  put(z, 0x06054b50, 4), put(z, 0, 4), put(z, files.size(), 2), put(z, files.size(), 2);
  put(z, cd.size(), 4), put(z, cd_off, 4), put(z, 0, 2);
  return z;
}
}  // namespace

TEST_P(T5Format, CpuForwardMatchesReference) {
  CpuBackend be;
  auto model = T5Encoder::load(kData + "/t5_tiny/" + GetParam(), be);
  const auto in = SafetensorsFile::open(kData + "/t5_tiny/inputs.safetensors");
  const auto want = SafetensorsFile::open(kData + "/t5_tiny/expected.safetensors");
  std::map<std::string, Tensor> got;
  model->forward(in->get("input_ids"), in->get("attention_mask"),
                 [&](const std::string& n, const Tensor& t) { got[n] = t; });
  for (const std::string name : {"embed", "position_bias", "block.0", "block.1", "last_hidden_state"}) {
    ASSERT_TRUE(got.count(name)) << name;
    const double e = rel_error(got[name], want->get(name));
    std::cout << GetParam() << " " << name << ": rel err " << e << "\n";
    EXPECT_LE(e, 1e-4) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(T5, T5Format, ::testing::Values("safetensors", "bin"));

TEST(T5Encoder, ConfigRefusals) {
  std::ifstream in(kData + "/t5_tiny/config.json");
  std::string cfg((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(error_of([&] { parse_t5_config(cfg, "config.json"); }), "");
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string s = cfg;
    const auto p = s.find(from);
    EXPECT_NE(p, std::string::npos) << from;
    return s.replace(p, from.size(), to);
  };
  EXPECT_NE(error_of([&] { parse_t5_config(replaced("\"gated-gelu\"", "\"relu\""), "c"); })
                .find("feed_forward_proj 'relu'"), std::string::npos);
  EXPECT_NE(error_of([&] { parse_t5_config(replaced("\"t5\"", "\"bert\""), "c"); })
                .find("expected a T5 config"), std::string::npos);
  EXPECT_NE(error_of([&] { parse_t5_config("nope", "c"); }).find("not valid JSON"), std::string::npos);
  // Fuzzing regression: a non-string feed_forward_proj threw nlohmann::json::type_error.
  EXPECT_NE(error_of([&] { parse_t5_config(replaced("\"gated-gelu\"", "7"), "c"); })
                .find("feed_forward_proj '7'"), std::string::npos);
}

TEST(T5Encoder, BadInputs) {
  CpuBackend be;
  auto model = T5Encoder::load(kData + "/t5_tiny/safetensors", be);
  Tensor ids = Tensor::from_f32({1, 3}, {5, 40000, 1}).to(DType::I64);
  Tensor mask = Tensor::from_f32({1, 3}, {1, 1, 1}).to(DType::I64);
  EXPECT_NE(error_of([&] { model->forward(ids, mask); }).find("id 40000 outside the vocabulary"),
            std::string::npos);
  EXPECT_NE(error_of([&] { model->forward(ids.view({3}), mask); }).find("input_ids"), std::string::npos);
  EXPECT_NE(error_of([&] { model->forward(Tensor::zeros({1, 3}, DType::I64), Tensor::zeros({1, 2}, DType::I64)); })
                .find("attention_mask"), std::string::npos);
}

// Every hostile or broken .bin is refused with a message naming the file and the problem.
TEST(TorchBin, Refusals) {
  const std::string d = kData + "/t5_bad/";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"evil_global.bin", "'os.system'"},
      {"evil_torch_global.bin", "'torch.load'"},
      {"evil_storage_type.bin", "'builtins.eval'"},
      {"evil_stack_global.bin", "'builtins.exec'"},
      {"missing_record.bin", "which the archive lacks"},
      {"storage_too_small.bin", "reaches beyond its storage"},
      {"record_size_mismatch.bin", "holds 20 bytes, expected 6 x 4"},
      {"truncated.bin", "no end-of-central-directory record"},
      {"not_a_zip.bin", "legacy (pre-1.6, non-zip)"},
      {"random_bytes.bin", "not a zip archive"},
      {"empty.bin", "too small to be a zip archive"},
  };
  for (const auto& [file, text] : cases) {
    const std::string msg = error_of([&] { TorchBinFile::open(d + file); });
    EXPECT_NE(msg.find(d + file + ": "), std::string::npos) << file << ": " << msg;
    EXPECT_NE(msg.find(text), std::string::npos) << file << ": " << msg;
  }
  CpuBackend be;
  EXPECT_NE(error_of([&] { T5Encoder::load(d + "missing_shard", be); })
                .find("names shard 'pytorch_model-00002-of-00002.bin', which does not exist"),
            std::string::npos);
  const std::string mm = error_of([&] { T5Encoder::load(d + "index_mismatch", be); });
  EXPECT_NE(mm.find("'encoder.block.0.layer.1.layer_norm.weight' is not in pytorch_model-00001-of-00002.bin"),
            std::string::npos) << mm;
  EXPECT_NE(mm.find("holds 'encoder.block.0.layer.1.layer_norm.bias', which the index does not list"),
            std::string::npos) << mm;
}

// A real torch.save file reads back: names, shapes and values as the safetensors copy holds them.
TEST(TorchBin, ReadsTorchSaveShards) {
  auto bin = TorchBinFile::open(kData + "/t5_tiny/bin/pytorch_model-00001-of-00002.bin");
  auto st = SafetensorsFile::open(kData + "/t5_tiny/safetensors/model-00001-of-00002.safetensors");
  int compared = 0;
  for (const auto& e : bin->entries()) {
    if (!st->contains(e.name)) continue;
    EXPECT_EQ(rel_error(bin->get(e.name), st->get(e.name)), 0.0) << e.name;
    ++compared;
  }
  EXPECT_GT(compared, 5);
}

// Random corruption of a real shard never crashes the reader: it loads or says why not.
TEST(TorchBin, CorruptedBytesNeverCrash) {
  std::ifstream in(kData + "/t5_tiny/bin/pytorch_model-00002-of-00002.bin", std::ios::binary);
  const std::vector<uint8_t> good((std::istreambuf_iterator<char>(in)), {});
  ASSERT_GT(good.size(), 1000u);
  uint64_t state = 12345;
  auto rnd = [&] { state = state * 6364136223846793005ull + 1442695040888963407ull; return state >> 33; };
  int ok = 0, refused = 0;
  for (int it = 0; it < 2000; ++it) {
    auto b = good;
    for (int f = 0; f < 4; ++f) b[rnd() % b.size()] = static_cast<uint8_t>(rnd());
    try {
      auto f = TorchBinFile::parse("fuzz.bin", b.data(), b.size(), nullptr);
      for (const auto& e : f->entries()) (void)f->get(e.name).nbytes();
      ++ok;
    } catch (const Error&) {
      ++refused;
    }
  }
  EXPECT_EQ(ok + refused, 2000);
}

// Fuzzing regressions (docs/RELIABILITY.md). Lists linked into a cycle through the memo
// (A=[B], B=[A]) were leaked (LeakSanitizer); a chain built by appending to a list after it was
// nested escaped the depth limit and was freed recursively, overflowing the stack.
TEST(TorchBin, PickleCyclesAndLongChainsAreFreed) {
  const std::string cycle = std::string("\x80\x02}]\x94]\x94" "ah\x01h\x00" "as.", 15);
  auto z = stored_zip({{"archive/data.pkl", cycle}});
  EXPECT_NE(error_of([&] { TorchBinFile::parse("cycle.bin", z.data(), z.size(), nullptr); })
                .find("cycle.bin"), std::string::npos);
  // root dict; L0 stored as memo 0 and 1; then 1M times: L_new appended to memo 1, memo 1 = L_new.
  std::string chain("\x80\x02}]q\x00q\x01" "b", 9);
  for (int i = 0; i < 1000000; ++i) chain += std::string("h\x01]q\x01" "ab", 7);
  chain += ".";
  z = stored_zip({{"archive/data.pkl", chain}});
  auto f = TorchBinFile::parse("chain.bin", z.data(), z.size(), nullptr);
  EXPECT_TRUE(f->entries().empty());
}

// Fuzzing regression: a zip64 locator pointing near 2^64 wrapped the bounds check (read out of
// bounds) instead of being refused.
TEST(TorchBin, Zip64LocatorOutOfRange) {
  std::vector<uint8_t> b;
  auto put = [&](uint64_t v, int n) {
    for (int i = 0; i < n; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
  };
  put(0x07064b50, 4), put(0, 4), put(0xfffffffffffffff0ull, 8), put(1, 4);      // zip64 locator
  put(0x06054b50, 4), put(0, 4), put(0xffff, 2), put(0xffff, 2), put(0xffffffffu, 4),
      put(0xffffffffu, 4), put(0, 2);                                             // EOCD
  EXPECT_NE(error_of([&] { TorchBinFile::parse("z64.bin", b.data(), b.size(), nullptr); })
                .find("zip64 end-of-central-directory record missing or out of range"),
            std::string::npos);
}

// The real configs parse, and the expected keys equal the real encoder's 219 keys.
TEST(T5Encoder, RealConfigsAndKeys) {
  for (const char* f : {"t5-v1_1-xxl.config.json", "t5-v1_1-xxl.encoder.config.json"}) {
    const T5Config c = load_t5_config(kData + "/configs/" + f);
    EXPECT_EQ(c.d_model, 4096) << f;
    EXPECT_EQ(c.num_heads, 64) << f;
    EXPECT_EQ(c.d_kv, 64) << f;
    EXPECT_EQ(c.d_ff, 10240) << f;
    EXPECT_EQ(c.num_layers, 24) << f;
    EXPECT_EQ(c.vocab_size, 32128) << f;
    EXPECT_EQ(c.max_distance, 128) << f;
  }
  const auto want = test::read_key_list(kData + "/keys/t5_v1_1_xxl_encoder.tsv");
  EXPECT_EQ(want.size(), 219u);
  std::map<std::string, std::string> got;
  int64_t params = 0;
  for (const auto& p : t5_param_specs(load_t5_config(kData + "/configs/t5-v1_1-xxl.config.json"))) {
    if (p.optional) continue;  // the tied duplicate encoder.embed_tokens.weight
    got[p.name] = shape_str(p.shape);
    params += shape_numel(p.shape);
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(params, 4762310656);  // spec §10.5
}
