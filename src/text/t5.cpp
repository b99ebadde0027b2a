#include "text/t5.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "io/config_json.h"

namespace stdit {

namespace {
using json = nlohmann::json;

}  // namespace

T5Config parse_t5_config(const std::string& text, const std::string& src) {
  const json j = parse_json_object(text, src);
  STDIT_CHECK(j.contains("model_type") && j["model_type"] == "t5", src, ": model_type is ",
              j.contains("model_type") ? j["model_type"].dump() : "missing",
              "; expected a T5 config (e.g. DeepFloyd/t5-v1_1-xxl)");
  T5Config c;
  c.d_model = json_int(j, "d_model", c.d_model, src, 1, 1 << 16);
  c.d_kv = json_int(j, "d_kv", c.d_kv, src, 1, 1 << 12);
  c.num_heads = json_int(j, "num_heads", c.num_heads, src, 1, 1 << 12);
  c.d_ff = json_int(j, "d_ff", c.d_ff, src, 1, 1 << 18);
  c.num_layers = json_int(j, "num_layers", c.num_layers, src, 1, 1024);
  c.vocab_size = json_int(j, "vocab_size", c.vocab_size, src, 2, 1 << 22);
  c.num_buckets = json_int(j, "relative_attention_num_buckets", c.num_buckets, src, 4, 1 << 12);
  c.max_distance = json_int(j, "relative_attention_max_distance", c.max_distance, src, 2, 1 << 20);
  if (j.contains("layer_norm_epsilon")) {
    STDIT_CHECK(j["layer_norm_epsilon"].is_number() && j["layer_norm_epsilon"].get<double>() > 0,
                src, ": 'layer_norm_epsilon' must be a positive number");
    c.eps = j["layer_norm_epsilon"].get<float>();
  }
  const json ffj = j.contains("feed_forward_proj") ? j["feed_forward_proj"] : json("relu");
  const std::string ff = ffj.is_string() ? ffj.get<std::string>() : ffj.dump();  // any JSON type
  STDIT_CHECK(ff == "gated-gelu", src, ": feed_forward_proj '", ff,
              "' is not supported; T5 v1.1 (gated-gelu) is the Open-Sora text encoder");
  if (j.contains("dense_act_fn"))
    STDIT_CHECK(j["dense_act_fn"] == "gelu_new", src, ": dense_act_fn ", j["dense_act_fn"].dump(),
                " is not supported (gelu_new expected)");
  STDIT_CHECK(c.num_buckets % 2 == 0 && c.max_distance > c.num_buckets / 4, src,
              ": relative attention buckets/distance are inconsistent");
  return c;
}

T5Config load_t5_config(const std::string& path) {
  return parse_t5_config(read_text_file(path, "T5 config"), path);
}

namespace {
// Block 0's self-attention also has the relative position table (spec §10.2 item 4), kept on the host.
const char* const kRelBiasSuffix = "0.SelfAttention.relative_attention_bias.weight";
const std::string kRelBias = cat("encoder.block.0.layer.", kRelBiasSuffix);
}  // namespace

const std::vector<T5BlockParam>& t5_block_params() {
  using P = T5BlockParam;
  using W = T5BlockWeights;
  static const auto DD = [](const T5Config& c) { return Shape{c.d_model}; };
  static const auto ID = [](const T5Config& c) { return Shape{int64_t{c.num_heads} * c.d_kv, c.d_model}; };
  static const auto DI = [](const T5Config& c) { return Shape{c.d_model, int64_t{c.num_heads} * c.d_kv}; };
  static const auto FD = [](const T5Config& c) { return Shape{c.d_ff, c.d_model}; };
  static const auto DF = [](const T5Config& c) { return Shape{c.d_model, c.d_ff}; };
  static const std::vector<P> params = {
      {"0.SelfAttention.q.weight", ID, &W::q, true},
      {"0.SelfAttention.k.weight", ID, &W::k, true},
      {"0.SelfAttention.v.weight", ID, &W::v, true},
      {"0.SelfAttention.o.weight", DI, &W::o, true},
      {kRelBiasSuffix, [](const T5Config& c) { return Shape{c.num_buckets, c.num_heads}; }, nullptr, false, true},
      {"0.layer_norm.weight", DD, &W::ln0, false},
      {"1.DenseReluDense.wi_0.weight", FD, &W::wi0, true},
      {"1.DenseReluDense.wi_1.weight", FD, &W::wi1, true},
      {"1.DenseReluDense.wo.weight", DF, &W::wo, true},
      {"1.layer_norm.weight", DD, &W::ln1, false},
  };
  return params;
}

std::vector<ParamSpec> t5_param_specs(const T5Config& c) {
  const int64_t D = c.d_model;
  std::vector<ParamSpec> p;
  p.push_back({"shared.weight", {c.vocab_size, D}});
  p.push_back({"encoder.embed_tokens.weight", {c.vocab_size, D}, true});  // tied copy, unused
  for (int i = 0; i < c.num_layers; ++i)
    for (const T5BlockParam& q : t5_block_params())
      if (i == 0 || !q.first_block_only) p.push_back({cat("encoder.block.", i, ".layer.", q.suffix), q.shape(c)});
  p.push_back({"encoder.final_layer_norm.weight", {D}});
  return p;
}

int t5_relative_bucket(int64_t rel, int num_buckets, int max_distance) {
  // Bidirectional: half the buckets per sign; positive offsets (key after query) use the upper half.
  const int half = num_buckets / 2;
  int bucket = rel > 0 ? half : 0;
  const int64_t n = rel < 0 ? -rel : rel;
  const int max_exact = half / 2;
  if (n < max_exact) return bucket + static_cast<int>(n);
  // Log-spaced beyond max_exact. Evaluated in f64; equals PyTorch's f32 evaluation for every
  // distance below 600 (checked), truncation toward zero as .to(long).
  const double v = std::log(static_cast<double>(n) / max_exact) /
                   std::log(static_cast<double>(max_distance) / max_exact) * (half - max_exact);
  const int large = std::min(max_exact + static_cast<int>(v), half - 1);
  return bucket + large;
}

T5Encoder::T5Encoder(const T5Config& cfg, const WeightMap& w, Backend& be) : cfg_(cfg), be_(be) {
  check_weights(w, t5_param_specs(cfg), "T5 weights");
  embedding_ = be_.upload(w.at("shared.weight"));
  rel_bias_host_ = w.at(kRelBias).to(DType::F32);
  final_ln_ = be_.upload(w.at("encoder.final_layer_norm.weight"));
  for (int i = 0; i < cfg.num_layers; ++i) {
    Block blk;
    for (const T5BlockParam& q : t5_block_params()) {
      if (!q.field) continue;
      const Tensor& t = w.at(cat("encoder.block.", i, ".layer.", q.suffix));
      blk.*q.field = q.matrix ? be_.upload_weight(t) : be_.upload(t);
    }
    blocks_.push_back(std::move(blk));
  }
}

std::unique_ptr<T5Encoder> T5Encoder::load(const std::string& dir, Backend& backend,
                                           const std::string& flag) {
  const T5Config cfg = load_t5_config(dir + "/config.json");
  const auto src = open_model_weights(dir, flag);
  const WeightMap w = load_checked(*src, t5_param_specs(cfg), flag, {"decoder.", "lm_head."});
  return std::make_unique<T5Encoder>(cfg, w, backend);
}

Tensor T5Encoder::forward(const Tensor& ids, const Tensor& mask, const Recorder& rec) {
  auto record = [&](const std::string& n, const Tensor& t) {
    if (rec) rec(n, be_.download(t));
  };
  STDIT_CHECK(ids.defined() && ids.dim() == 2 && is_integer(ids.dtype()) && ids.size(1) > 0,
              "input 'input_ids' must be an integer tensor [B, L]");
  const int64_t B = ids.size(0), L = ids.size(1), D = cfg_.d_model, H = cfg_.num_heads,
                K = cfg_.d_kv;
  STDIT_CHECK(mask.defined() && mask.shape() == ids.shape() && is_integer(mask.dtype()),
              "input 'attention_mask' must be an integer tensor ", shape_str(ids.shape()));
  const Tensor idv = ids.to(DType::I64);
  std::vector<int64_t> rows(static_cast<size_t>(B * L));
  for (size_t i = 0; i < rows.size(); ++i) {
    rows[i] = idv.data<int64_t>()[i];
    STDIT_CHECK(rows[i] >= 0 && rows[i] < cfg_.vocab_size, "input 'input_ids' holds id ", rows[i],
                " outside the vocabulary [0, ", cfg_.vocab_size, ")");
  }
  Tensor key_mask = be_.upload(mask.to(DType::BOOL).view({B, L}).to(DType::U8));

  // Relative position bias [H, L, L], shared by every layer (only block 0 holds the table).
  Tensor bias_host = Tensor::empty({H, L, L}, DType::F32);
  const float* tab = rel_bias_host_.data<float>();
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < L; ++j) {
      const int bucket = t5_relative_bucket(j - i, cfg_.num_buckets, cfg_.max_distance);
      for (int64_t h = 0; h < H; ++h) bias_host.data<float>()[(h * L + i) * L + j] = tab[bucket * H + h];
    }
  if (rec) rec("position_bias", bias_host.view({1, H, L, L}));
  AttentionExtras extras{be_.upload(bias_host), key_mask};

  Tensor x = be_.alloc({B, L, D});
  be_.gather_rows(embedding_, rows, x);
  record("embed", x);
  Tensor h = be_.alloc({B, L, D});
  Tensor q = be_.alloc({B, L, H, K}), k = be_.alloc({B, L, H, K}), v = be_.alloc({B, L, H, K});
  Tensor att = be_.alloc({B, L, H, K}, be_.matmul_dtype());  // only feeds the o projection
  Tensor proj = be_.alloc({B, L, D});
  Tensor f0 = be_.alloc({B * L, cfg_.d_ff}), f1 = be_.alloc({B * L, cfg_.d_ff});
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const Block& b = blocks_[i];
    be_.rms_norm(x, b.ln0, cfg_.eps, h);
    be_.linear(h, b.q, Tensor{}, Activation::None, q);
    be_.linear(h, b.k, Tensor{}, Activation::None, k);
    be_.linear(h, b.v, Tensor{}, Activation::None, v);
    be_.attention(q, k, v, 1.0f, att, extras);  // T5: no 1/sqrt(d) scaling
    be_.linear(att.view({B * L, H * K}), b.o, Tensor{}, Activation::None, proj);
    be_.add(x, proj, x);
    be_.rms_norm(x, b.ln1, cfg_.eps, h);
    be_.linear(h, b.wi0, Tensor{}, Activation::GeluTanh, f0);
    be_.linear(h, b.wi1, Tensor{}, Activation::None, f1);
    be_.mul(f0, f1, f0);
    be_.linear(f0, b.wo, Tensor{}, Activation::None, proj);
    be_.add(x, proj, x);
    record(cat("block.", i), x);
  }
  Tensor out = be_.alloc({B, L, D});
  be_.rms_norm(x, final_ln_, cfg_.eps, out);
  Tensor host = be_.download(out);
  if (rec) rec("last_hidden_state", host);
  return host;
}

}  // namespace stdit
