// STDiT3 config.json parsing and the expected checkpoint key list.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "test_util.h"
#include "models/stdit3/config.h"

using namespace stdit;

namespace {
std::string real_config() {
  std::ifstream in(std::string(STDIT_TEST_DATA) + "/configs/OpenSora-STDiT-v3/config.json");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
// The real config with one key replaced (value given as JSON text).
std::string with(const std::string& key, const std::string& value) {
  std::string s = real_config();
  const auto k = s.find("\"" + key + "\"");
  EXPECT_NE(k, std::string::npos);
  const auto colon = s.find(':', k);
  auto end = s.find_first_of(",\n}", colon);
  if (s[colon + 2] == '[') end = s.find(']', colon) + 1;
  return s.substr(0, colon + 1) + " " + value + s.substr(end);
}
std::string error_of(const std::string& text) {
  try {
    parse_stdit3_config(text, "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(STDiT3Config, RealConfig) {
  const STDiT3Config c = parse_stdit3_config(real_config(), "config.json");
  EXPECT_EQ(c.depth, 28);
  EXPECT_EQ(c.hidden_size, 1152);
  EXPECT_EQ(c.head_dim(), 72);
  EXPECT_EQ(c.mlp_hidden(), 4608);
  EXPECT_EQ(c.out_channels(), 8);
  EXPECT_EQ(c.caption_channels, 4096);
  EXPECT_EQ(c.model_max_length, 300);
  EXPECT_EQ(c.patch_size, (std::array<int, 3>{1, 2, 2}));
}

TEST(STDiT3Config, RefusesImpossibleValues) {
  EXPECT_NE(error_of(with("model_type", "\"STDiT2\"")).find("not an STDiT3 config"), std::string::npos);
  EXPECT_NE(error_of(with("hidden_size", "1000")).find("not divisible by num_heads"), std::string::npos);
  EXPECT_NE(error_of(with("depth", "0")).find("'depth' = 0 is outside"), std::string::npos);
  EXPECT_NE(error_of(with("depth", "\"28\"")).find("must be an integer"), std::string::npos);
  EXPECT_NE(error_of(with("qk_norm", "false")).find("qk_norm false"), std::string::npos);
  EXPECT_NE(error_of(with("patch_size", "[1, 2]")).find("patch_size"), std::string::npos);
  EXPECT_NE(error_of(with("mlp_ratio", "4.0001")).find("integer MLP width"), std::string::npos);
  EXPECT_NE(error_of(with("torch_dtype", "\"float64\"")).find("torch_dtype"), std::string::npos);
  EXPECT_NE(error_of("{\"depth\": ").find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of("[]").find("JSON object"), std::string::npos);
  EXPECT_NE(error_of("{}").find("no 'model_type'"), std::string::npos);
  EXPECT_EQ(error_of(real_config()), "");
}

// The key list the model expects for the real config equals the real checkpoint's list.
TEST(STDiT3Config, ParamSpecsMatchRealCheckpointKeys) {
  const auto want = test::read_key_list(std::string(STDIT_SPEC_KEYS) + "/stdit3.tsv");
  EXPECT_EQ(want.size(), 973u);
  const auto specs = stdit3_param_specs(parse_stdit3_config(real_config(), "config.json"));
  std::map<std::string, std::string> got;
  int64_t params = 0;
  for (const auto& p : specs) {
    got[p.name] = shape_str(p.shape);
    params += shape_numel(p.shape);
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(params, 1208872772);  // spec §5.3
}
