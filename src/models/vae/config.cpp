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

std::vector<ParamSpec> vae_param_specs(const VaeConfig& c) {
  std::vector<ParamSpec> p;
  p.push_back({"scale", {1, 4, 1, 1, 1}});
  p.push_back({"shift", {1, 4, 1, 1, 1}});
  // ---- 2D VAE (diffusers names) ----
  const std::string s = "spatial_vae.module.";
  const auto& sp = c.spatial;
  auto conv2 = [&](const std::string& n, int64_t co, int64_t ci, int64_t k) {
    p.push_back({n + ".weight", {co, ci, k, k}});
    p.push_back({n + ".bias", {co}});
  };
  auto norm = [&](const std::string& n, int64_t ch) {
    p.push_back({n + ".weight", {ch}});
    p.push_back({n + ".bias", {ch}});
  };
  auto resnet2 = [&](const std::string& n, int64_t ci, int64_t co) {
    norm(n + ".norm1", ci);
    conv2(n + ".conv1", co, ci, 3);
    norm(n + ".norm2", co);
    conv2(n + ".conv2", co, co, 3);
    if (ci != co) conv2(n + ".conv_shortcut", co, ci, 1);
  };
  auto mid2 = [&](const std::string& n, int64_t ch) {
    resnet2(n + ".resnets.0", ch, ch);
    norm(n + ".attentions.0.group_norm", ch);
    for (const char* l : {"to_q", "to_k", "to_v", "to_out.0"}) {
      p.push_back({n + ".attentions.0." + l + ".weight", {ch, ch}});
      p.push_back({n + ".attentions.0." + l + ".bias", {ch}});
    }
    resnet2(n + ".resnets.1", ch, ch);
  };
  const auto& bo = sp.block_out_channels;
  const int nb = static_cast<int>(bo.size());
  const int64_t lat = sp.latent_channels;
  conv2(s + "encoder.conv_in", bo[0], 3, 3);
  int64_t ch = bo[0];
  for (int i = 0; i < nb; ++i) {
    for (int r = 0; r < sp.layers_per_block; ++r) {
      resnet2(cat(s, "encoder.down_blocks.", i, ".resnets.", r), r == 0 ? ch : bo[i], bo[i]);
    }
    ch = bo[i];
    if (i < nb - 1) conv2(cat(s, "encoder.down_blocks.", i, ".downsamplers.0.conv"), ch, ch, 3);
  }
  mid2(s + "encoder.mid_block", ch);
  norm(s + "encoder.conv_norm_out", ch);
  conv2(s + "encoder.conv_out", 2 * lat, ch, 3);
  conv2(s + "quant_conv", 2 * lat, 2 * lat, 1);
  conv2(s + "post_quant_conv", lat, lat, 1);
  ch = bo[nb - 1];
  conv2(s + "decoder.conv_in", ch, lat, 3);
  mid2(s + "decoder.mid_block", ch);
  for (int i = 0; i < nb; ++i) {
    const int64_t out = bo[nb - 1 - i];
    for (int r = 0; r <= sp.layers_per_block; ++r)
      resnet2(cat(s, "decoder.up_blocks.", i, ".resnets.", r), r == 0 ? ch : out, out);
    ch = out;
    if (i < nb - 1) conv2(cat(s, "decoder.up_blocks.", i, ".upsamplers.0.conv"), ch, ch, 3);
  }
  norm(s + "decoder.conv_norm_out", ch);
  conv2(s + "decoder.conv_out", 3, ch, 3);

  // ---- temporal VAE (Open-Sora names; every conv is CausalConv3d: "<name>.conv.weight") ----
  const std::string t = "temporal_vae.";
  const auto& tp = c.temporal;
  auto conv3 = [&](const std::string& n, int64_t co, int64_t ci, int64_t k, bool bias) {
    p.push_back({n + ".conv.weight", {co, ci, k, k, k}});
    if (bias) p.push_back({n + ".conv.bias", {co}});
  };
  auto resblock = [&](const std::string& n, int64_t ci, int64_t co) {
    norm(n + ".norm1", ci);
    conv3(n + ".conv1", co, ci, 3, false);
    norm(n + ".norm2", co);
    conv3(n + ".conv2", co, co, 3, false);
    if (ci != co) conv3(n + ".conv3", co, ci, 1, false);
  };
  const int ns = static_cast<int>(tp.channel_multipliers.size());
  const int64_t f = tp.filters;
  conv3(t + "encoder.conv_in", f, 4, 3, false);
  ch = f;
  for (int i = 0; i < ns; ++i) {
    const int64_t out = f * tp.channel_multipliers[i];
    for (int r = 0; r < tp.num_res_blocks; ++r)
      resblock(cat(t, "encoder.block_res_blocks.", i, ".", r), r == 0 ? ch : out, out);
    ch = out;
    if (i < ns - 1 && tp.temporal_downsample[i]) conv3(cat(t, "encoder.conv_blocks.", i), ch, ch, 3, true);
  }
  for (int r = 0; r < tp.num_res_blocks; ++r) resblock(cat(t, "encoder.res_blocks.", r), ch, ch);
  norm(t + "encoder.norm1", ch);
  conv3(t + "encoder.conv2", 2 * tp.latent_channels, ch, 1, true);
  conv3(t + "quant_conv", 2 * tp.latent_channels, 2 * tp.latent_channels, 1, true);
  conv3(t + "post_quant_conv", tp.latent_channels, tp.latent_channels, 1, true);
  ch = f * tp.channel_multipliers[ns - 1];
  conv3(t + "decoder.conv1", ch, tp.latent_channels, 3, true);
  for (int r = 0; r < tp.num_res_blocks; ++r) resblock(cat(t, "decoder.res_blocks.", r), ch, ch);
  for (int i = ns - 1; i >= 0; --i) {
    const int64_t out = f * tp.channel_multipliers[i];
    for (int r = 0; r < tp.num_res_blocks; ++r)
      resblock(cat(t, "decoder.block_res_blocks.", i, ".", r), r == 0 ? ch : out, out);
    ch = out;
    if (i > 0 && tp.temporal_downsample[i - 1]) conv3(cat(t, "decoder.conv_blocks.", i - 1), 2 * ch, ch, 3, true);
  }
  norm(t + "decoder.norm1", ch);
  conv3(t + "decoder.conv_out", 4, ch, 3, true);
  return p;
}

}  // namespace stdit
