#include "models/vae/config.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/config_json.h"

namespace stdit {

namespace {
using json = nlohmann::json;

std::vector<int> int_list(const json& j, const char* key, const std::string& src, size_t n) {
  STDIT_CHECK(j[key].is_array() && (n == 0 || j[key].size() == n), src, ": '", key,
              "' must be a list", n ? cat(" of ", n, " integers") : std::string());
  std::vector<int> v;
  for (const auto& x : j[key]) {
    STDIT_CHECK(x.is_number_integer() && x.get<int64_t>() > 0 && x.get<int64_t>() <= 65536, src,
                ": '", key, "' holds ", x.dump(), ", expected positive integers");
    v.push_back(x.get<int>());
  }
  return v;
}

int pos_int(const json& j, const char* key, int def, const std::string& src) {
  if (!j.contains(key)) return def;
  STDIT_CHECK(j[key].is_number_integer() && j[key].get<int64_t>() > 0 && j[key].get<int64_t>() <= 65536,
              src, ": '", key, "' must be a positive integer, got ", j[key].dump());
  return j[key].get<int>();
}
}  // namespace

int VaeTemporalConfig::time_factor() const {
  int f = 1;
  for (bool d : temporal_downsample) f *= d ? 2 : 1;
  return f;
}

int VaeConfig::micro_z_frame_size() const {
  const int tf = temporal.time_factor();
  return (micro_frame_size + (tf - micro_frame_size % tf) % tf) / tf;
}

int VaeConfig::latent_frames(int num_frames) const {
  const int tf = temporal.time_factor();
  auto chunk = [&](int n) { return (n + (tf - n % tf) % tf) / tf; };
  return (num_frames / micro_frame_size) * chunk(micro_frame_size) + chunk(num_frames % micro_frame_size);
}

VaeConfig parse_vae_config(const std::string& text, const std::string& src) {
  const json j = parse_json_object(text, src);
  const json mtj = j.contains("model_type") ? j["model_type"] : json("");
  const std::string mt = mtj.is_string() ? mtj.get<std::string>() : mtj.dump();  // any JSON type
  STDIT_CHECK(mt == "VideoAutoencoderPipeline", src, ": model_type is '", mt,
              "'; expected the config.json of hpcai-tech/OpenSora-VAE-v1.2 (VideoAutoencoderPipeline)");
  VaeConfig c;
  c.micro_frame_size = pos_int(j, "micro_frame_size", c.micro_frame_size, src);
  for (const char* k : {"scale", "shift"}) {
    if (!j.contains(k)) continue;
    STDIT_CHECK(j[k].is_array() && j[k].size() == 4, src, ": '", k, "' must be 4 numbers");
    for (int i = 0; i < 4; ++i) {
      STDIT_CHECK(j[k][i].is_number(), src, ": '", k, "' must be 4 numbers");
      (std::string(k) == "scale" ? c.scale : c.shift)[i] = j[k][i].get<float>();
    }
  }
  for (float s : c.scale) STDIT_CHECK(s != 0, src, ": a 'scale' entry is zero");
  if (j.contains("vae_2d") && j["vae_2d"].is_object())
    c.micro_batch_size = pos_int(j["vae_2d"], "micro_batch_size", c.micro_batch_size, src);
  if (j.contains("stdit_vae_2d")) {
    const json& s = j["stdit_vae_2d"];
    STDIT_CHECK(s.is_object(), src, ": 'stdit_vae_2d' must be an object");
    if (s.contains("block_out_channels"))
      c.spatial.block_out_channels = int_list(s, "block_out_channels", src, 0);
    c.spatial.layers_per_block = pos_int(s, "layers_per_block", c.spatial.layers_per_block, src);
    c.spatial.norm_num_groups = pos_int(s, "norm_num_groups", c.spatial.norm_num_groups, src);
    c.spatial.latent_channels = pos_int(s, "latent_channels", c.spatial.latent_channels, src);
  }
  if (j.contains("stdit_vae_temporal")) {
    const json& s = j["stdit_vae_temporal"];
    STDIT_CHECK(s.is_object(), src, ": 'stdit_vae_temporal' must be an object");
    c.temporal.filters = pos_int(s, "filters", c.temporal.filters, src);
    if (s.contains("channel_multipliers"))
      c.temporal.channel_multipliers = int_list(s, "channel_multipliers", src, 0);
    c.temporal.num_res_blocks = pos_int(s, "num_res_blocks", c.temporal.num_res_blocks, src);
    c.temporal.num_groups = pos_int(s, "num_groups", c.temporal.num_groups, src);
    if (s.contains("temporal_downsample")) {
      STDIT_CHECK(s["temporal_downsample"].is_array(), src, ": 'temporal_downsample' must be a list");
      c.temporal.temporal_downsample.clear();
      for (const auto& b : s["temporal_downsample"]) {
        STDIT_CHECK(b.is_boolean(), src, ": 'temporal_downsample' must hold booleans");
        c.temporal.temporal_downsample.push_back(b.get<bool>());
      }
    }
  }
  const auto& sp = c.spatial;
  STDIT_CHECK(sp.block_out_channels.size() >= 2, src, ": the 2D VAE needs at least 2 blocks");
  for (int ch : sp.block_out_channels)
    STDIT_CHECK(ch % sp.norm_num_groups == 0, src, ": 2D VAE channels ", ch,
                " not divisible by norm_num_groups ", sp.norm_num_groups);
  const auto& tp = c.temporal;
  STDIT_CHECK(tp.temporal_downsample.size() + 1 == tp.channel_multipliers.size(), src,
              ": temporal VAE needs one temporal_downsample flag per stage but the last");
  for (int m : tp.channel_multipliers)
    STDIT_CHECK(tp.filters * m % tp.num_groups == 0, src, ": temporal VAE channels ",
                tp.filters * m, " not divisible by num_groups ", tp.num_groups);
  STDIT_CHECK(sp.latent_channels == 4 && tp.latent_channels == 4, src, ": latent channels must be 4");
  return c;
}

VaeConfig load_vae_config(const std::string& path) {
  return parse_vae_config(read_text_file(path, "VAE config"), path);
}

}  // namespace stdit
