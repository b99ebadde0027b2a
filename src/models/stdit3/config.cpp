#include "models/stdit3/config.h"

#include "models/stdit3/block_weights.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/log.h"
#include "io/config_json.h"

namespace stdit {

namespace {
using json = nlohmann::json;

}  // namespace

STDiT3Config parse_stdit3_config(const std::string& text, const std::string& src) {
  const json j = parse_json_object(text, src);
  if (j.contains("model_type")) {
    STDIT_CHECK(j["model_type"].is_string() && j["model_type"] == "STDiT3", src,
                ": model_type is ", j["model_type"].dump(), "; this is not an STDiT3 config",
                " (expected the config.json of hpcai-tech/OpenSora-STDiT-v3)");
  } else {
    fail(src, ": no 'model_type'; expected the config.json of hpcai-tech/OpenSora-STDiT-v3");
  }

  static const std::set<std::string> known = {
      "architectures", "caption_channels", "class_dropout_prob", "depth", "drop_path",
      "enable_flash_attn", "enable_layernorm_kernel", "enable_sequence_parallelism",
      "freeze_y_embedder", "hidden_size", "in_channels", "input_size", "input_sq_size",
      "mlp_ratio", "model_max_length", "model_type", "num_heads", "only_train_temporal",
      "patch_size", "pred_sigma", "qk_norm", "skip_y_embedder", "torch_dtype",
      "transformers_version"};
  for (const auto& [k, v] : j.items()) {
    (void)v;
    if (!known.count(k) && k.rfind('_', 0) != 0) log_warn(src, ": ignoring unknown key '", k, "'");
  }

  STDiT3Config c;
  c.depth = json_int(j, "depth", c.depth, src, 1, 1024);
  c.hidden_size = json_int(j, "hidden_size", c.hidden_size, src, 4, 65536);
  c.num_heads = json_int(j, "num_heads", c.num_heads, src, 1, 1024);
  c.in_channels = json_int(j, "in_channels", c.in_channels, src, 1, 1024);
  c.caption_channels = json_int(j, "caption_channels", c.caption_channels, src, 1, 65536);
  c.model_max_length = json_int(j, "model_max_length", c.model_max_length, src, 1, 65536);
  c.input_sq_size = json_int(j, "input_sq_size", c.input_sq_size, src, 1, 1 << 20);
  c.pred_sigma = json_bool(j, "pred_sigma", c.pred_sigma, src);
  c.qk_norm = json_bool(j, "qk_norm", c.qk_norm, src);
  if (j.contains("mlp_ratio")) {
    STDIT_CHECK(j["mlp_ratio"].is_number(), src, ": 'mlp_ratio' must be a number");
    c.mlp_ratio = j["mlp_ratio"].get<double>();
  }
  if (j.contains("patch_size")) {
    const json& p = j["patch_size"];
    STDIT_CHECK(p.is_array() && p.size() == 3, src, ": 'patch_size' must be [t, h, w], got ",
                p.dump());
    for (int i = 0; i < 3; ++i) {
      STDIT_CHECK(p[i].is_number_integer() && p[i].get<int64_t>() >= 1 && p[i].get<int64_t>() <= 16,
                  src, ": 'patch_size' entries must be integers in [1, 16], got ", p.dump());
      c.patch_size[i] = p[i].get<int>();
    }
  }

  // Architecture facts this engine implements; anything else is a different model.
  STDIT_CHECK(c.qk_norm, src, ": qk_norm false is not supported (STDiT3 uses RMSNorm on q and k)");
  STDIT_CHECK(c.hidden_size % c.num_heads == 0, src, ": hidden_size ", c.hidden_size,
              " is not divisible by num_heads ", c.num_heads);
  STDIT_CHECK(c.head_dim() % 2 == 0, src, ": head dim ", c.head_dim(), " must be even (RoPE pairs)");
  STDIT_CHECK(c.hidden_size % 4 == 0, src, ": hidden_size must be divisible by 4 (2D sin-cos)");
  const double mh = c.hidden_size * c.mlp_ratio;
  STDIT_CHECK(c.mlp_ratio > 0 && std::floor(mh) == mh, src, ": mlp_ratio ", c.mlp_ratio,
              " does not give an integer MLP width for hidden_size ", c.hidden_size);
  if (j.contains("enable_sequence_parallelism") && json_bool(j, "enable_sequence_parallelism", false, src))
    log_warn(src, ": enable_sequence_parallelism is a training setting; ignored");
  if (j.contains("skip_y_embedder"))
    STDIT_CHECK(!json_bool(j, "skip_y_embedder", false, src), src,
                ": skip_y_embedder true is not supported (the caption MLP is part of inference)");
  if (j.contains("torch_dtype")) {
    const auto& d = j["torch_dtype"];
    STDIT_CHECK(d.is_string() && (d == "float32" || d == "bfloat16" || d == "float16"), src,
                ": torch_dtype ", d.dump(), " is not one of float32, bfloat16, float16");
  }
  return c;
}

STDiT3Config load_stdit3_config(const std::string& path) {
  return parse_stdit3_config(read_text_file(path, "model config"), path);
}

namespace {
std::vector<ParamSpec> full_param_specs(const STDiT3Config& c);
}  // namespace

const std::vector<BlockParam>& stdit3_block_params() {
  using K = BlockParam::Keep;
  using B = BlockWeights;
  static const TpSplit rep{}, rows3{TpSplit::Rows, 3}, rows2{TpSplit::Rows, 2}, rows1{TpSplit::Rows, 1},
      cols{TpSplit::Cols, 1};
  static const std::vector<BlockParam> params = {
      {"scale_shift_table", nullptr, [](const STDiT3Config& c) { return Shape{6, c.hidden_size}; }, rep, K::Plain, &B::table, true},
      {"attn.qkv.weight", "qkv", [](const STDiT3Config& c) { return Shape{3 * c.hidden_size, c.hidden_size}; }, rows3, K::Matrix, &B::qkv_w},
      {"attn.qkv.bias", nullptr, [](const STDiT3Config& c) { return Shape{3 * c.hidden_size}; }, rows3, K::Plain, &B::qkv_b},
      {"attn.q_norm.weight", nullptr, [](const STDiT3Config& c) { return Shape{c.head_dim()}; }, rep, K::Plain, &B::q_norm},
      {"attn.k_norm.weight", nullptr, [](const STDiT3Config& c) { return Shape{c.head_dim()}; }, rep, K::Plain, &B::k_norm},
      {"attn.proj.weight", "proj", [](const STDiT3Config& c) { return Shape{c.hidden_size, c.hidden_size}; }, cols, K::Matrix, &B::proj_w},
      {"attn.proj.bias", nullptr, [](const STDiT3Config& c) { return Shape{c.hidden_size}; }, rep, K::RowBias, &B::proj_b},
      {"cross_attn.q_linear.weight", "q", [](const STDiT3Config& c) { return Shape{c.hidden_size, c.hidden_size}; }, rows1, K::Matrix, &B::q_w},
      {"cross_attn.q_linear.bias", nullptr, [](const STDiT3Config& c) { return Shape{c.hidden_size}; }, rows1, K::Plain, &B::q_b},
      {"cross_attn.kv_linear.weight", "kv", [](const STDiT3Config& c) { return Shape{2 * c.hidden_size, c.hidden_size}; }, rows2, K::Matrix, &B::kv_w},
      {"cross_attn.kv_linear.bias", nullptr, [](const STDiT3Config& c) { return Shape{2 * c.hidden_size}; }, rows2, K::Plain, &B::kv_b},
      {"cross_attn.proj.weight", "cross_proj", [](const STDiT3Config& c) { return Shape{c.hidden_size, c.hidden_size}; }, cols, K::Matrix, &B::cproj_w},
      {"cross_attn.proj.bias", nullptr, [](const STDiT3Config& c) { return Shape{c.hidden_size}; }, rep, K::RowBias, &B::cproj_b},
      {"mlp.fc1.weight", "fc1", [](const STDiT3Config& c) { return Shape{c.mlp_hidden(), c.hidden_size}; }, rows1, K::Matrix, &B::fc1_w},
      {"mlp.fc1.bias", nullptr, [](const STDiT3Config& c) { return Shape{c.mlp_hidden()}; }, rows1, K::Plain, &B::fc1_b},
      {"mlp.fc2.weight", "fc2", [](const STDiT3Config& c) { return Shape{c.hidden_size, c.mlp_hidden()}; }, cols, K::Matrix, &B::fc2_w},
      {"mlp.fc2.bias", nullptr, [](const STDiT3Config& c) { return Shape{c.hidden_size}; }, rep, K::RowBias, &B::fc2_b},
  };
  return params;
}

TpSplit stdit3_tp_split(const std::string& name) {
  for (const char* kind : {"spatial_blocks.", "temporal_blocks."}) {
    if (name.rfind(kind, 0) != 0) continue;
    const size_t dot = name.find('.', std::string(kind).size());  // after the block index
    if (dot == std::string::npos) return {};
    const std::string suffix = name.substr(dot + 1);
    for (const auto& p : stdit3_block_params()) {
      if (suffix == p.suffix) return p.split;
      // The row scales of an FP8 weight: cut with its rows; whole when its columns are cut.
      if (p.keep == BlockParam::Keep::Matrix && suffix == scale_key(p.suffix))
        return p.split.kind == TpSplit::Rows ? p.split : TpSplit{};
    }
  }
  return {};
}

std::vector<ParamSpec> stdit3_param_specs(const STDiT3Config& c, int tp) {
  auto p = full_param_specs(c);
  if (tp <= 1) return p;
  for (auto& s : p) {
    const TpSplit sp = stdit3_tp_split(s.name);
    if (sp.kind == TpSplit::Rows) s.shape[0] /= tp;
    if (sp.kind == TpSplit::Cols) s.shape[1] /= tp;
  }
  return p;
}

const std::vector<GlobalParam>& stdit3_global_params() {
  using G = GlobalWeights;
  using W = GlobalParam::Where;
  using Cf = const STDiT3Config&;
  static const std::vector<GlobalParam> params = {
      {"rope.freqs", [](Cf c) { return Shape{c.head_dim() / 2}; }, &G::rope_freqs, W::Optional},
      {"x_embedder.proj.weight",
       [](Cf c) { return Shape{c.hidden_size, c.in_channels, c.patch_size[0], c.patch_size[1], c.patch_size[2]}; },
       &G::x_emb_w},
      {"x_embedder.proj.bias", [](Cf c) { return Shape{c.hidden_size}; }, &G::x_emb_b},
      {"t_embedder.mlp.0.weight", [](Cf c) { return Shape{c.hidden_size, c.frequency_embedding_size}; }, &G::t_w0},
      {"t_embedder.mlp.0.bias", [](Cf c) { return Shape{c.hidden_size}; }, &G::t_b0},
      {"t_embedder.mlp.2.weight", [](Cf c) { return Shape{c.hidden_size, c.hidden_size}; }, &G::t_w2},
      {"t_embedder.mlp.2.bias", [](Cf c) { return Shape{c.hidden_size}; }, &G::t_b2},
      {"fps_embedder.mlp.0.weight", [](Cf c) { return Shape{c.hidden_size, c.frequency_embedding_size}; }, &G::fps_w0},
      {"fps_embedder.mlp.0.bias", [](Cf c) { return Shape{c.hidden_size}; }, &G::fps_b0},
      {"fps_embedder.mlp.2.weight", [](Cf c) { return Shape{c.hidden_size, c.hidden_size}; }, &G::fps_w2},
      {"fps_embedder.mlp.2.bias", [](Cf c) { return Shape{c.hidden_size}; }, &G::fps_b2},
      {"t_block.1.weight", [](Cf c) { return Shape{6 * c.hidden_size, c.hidden_size}; }, &G::t_block_w},
      {"t_block.1.bias", [](Cf c) { return Shape{6 * c.hidden_size}; }, &G::t_block_b},
      {"y_embedder.y_embedding", [](Cf c) { return Shape{c.model_max_length, c.caption_channels}; }, &G::y_embedding,
       W::Host},
      {"y_embedder.y_proj.fc1.weight", [](Cf c) { return Shape{c.hidden_size, c.caption_channels}; }, &G::y_fc1_w},
      {"y_embedder.y_proj.fc1.bias", [](Cf c) { return Shape{c.hidden_size}; }, &G::y_fc1_b},
      {"y_embedder.y_proj.fc2.weight", [](Cf c) { return Shape{c.hidden_size, c.hidden_size}; }, &G::y_fc2_w},
      {"y_embedder.y_proj.fc2.bias", [](Cf c) { return Shape{c.hidden_size}; }, &G::y_fc2_b},
      {"final_layer.scale_shift_table", [](Cf c) { return Shape{2, c.hidden_size}; }, &G::final_table, W::Device,
       true},
      {"final_layer.linear.weight", [](Cf c) { return Shape{c.patch_volume() * c.out_channels(), c.hidden_size}; },
       &G::final_w, W::Device, true},
      {"final_layer.linear.bias", [](Cf c) { return Shape{c.patch_volume() * c.out_channels()}; }, &G::final_b,
       W::Device, true},
  };
  return params;
}

namespace {
std::vector<ParamSpec> full_param_specs(const STDiT3Config& c) {
  std::vector<ParamSpec> p;
  auto globals = [&](bool after_blocks) {
    for (const auto& g : stdit3_global_params())
      if (g.after_blocks == after_blocks)
        p.push_back({g.name, g.shape(c), g.where == GlobalParam::Where::Optional});
  };
  globals(false);
  for (const char* kind : {"spatial_blocks", "temporal_blocks"})
    for (int i = 0; i < c.depth; ++i)
      for (const auto& b : stdit3_block_params())
        p.push_back({cat(kind, ".", i, ".", b.suffix), b.shape(c), false,
                     b.keep == BlockParam::Keep::Matrix ? b.fp8_name : nullptr});
  globals(true);
  return p;
}
}  // namespace

}  // namespace stdit
