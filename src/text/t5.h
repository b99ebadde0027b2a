// T5-v1.1 encoder (the text encoder of Open-Sora 1.2), written against the op interface.
// Spec: architecture.md §10.2. Weights by their Hugging Face key names (T5EncoderModel).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "io/checkpoint.h"
#include "core/recorder.h"

namespace stdit {

struct T5Config {
  int d_model = 4096, d_kv = 64, num_heads = 64, d_ff = 10240, num_layers = 24;
  int vocab_size = 32128;
  int num_buckets = 32, max_distance = 128;
  float eps = 1e-6f;
};

// Parses a Hugging Face T5 config.json (T5EncoderModel or T5ForConditionalGeneration). Refuses
// what this encoder does not compute (not model_type t5, not gated-gelu, impossible sizes).
T5Config parse_t5_config(const std::string& json_text, const std::string& source);
T5Config load_t5_config(const std::string& path);

// The tensors of one encoder block, declared once (checkpoint name after "encoder.block.N.layer.",
// shape, field, whether it is only a linear() weight): t5_param_specs and loading derive from it.
struct T5BlockWeights {
  Tensor ln0, q, k, v, o, ln1, wi0, wi1, wo;
};
struct T5BlockParam {
  const char* suffix;
  Shape (*shape)(const T5Config& c);
  Tensor T5BlockWeights::*field;  // null: not held per block (block 0's relative position table)
  bool matrix;                    // uploaded with upload_weight (the backend may keep it in bf16)
  bool first_block_only = false;
};
const std::vector<T5BlockParam>& t5_block_params();

std::vector<ParamSpec> t5_param_specs(const T5Config& cfg);

// Bucket of the relative position key - query (bidirectional, spec §10.2 item 4).
int t5_relative_bucket(int64_t relative_position, int num_buckets, int max_distance);

class T5Encoder {
 public:
  T5Encoder(const T5Config& cfg, const WeightMap& weights, Backend& backend);
  // Loads a model directory: config.json + any of the weight layouts open_model_weights accepts.
  // Keys of the decoder / LM head (a full T5ForConditionalGeneration) and the tied duplicate
  // `encoder.embed_tokens.weight` are ignored.
  static std::unique_ptr<T5Encoder> load(const std::string& dir, Backend& backend,
                                         const std::string& flag = "--model");

  // ids, mask: host [B, L] integers. Returns host F32 last_hidden_state [B, L, d_model] (every
  // position, padding included, as Hugging Face returns it).
  Tensor forward(const Tensor& ids, const Tensor& mask, const Recorder& rec = {});

  const T5Config& config() const { return cfg_; }

 private:
  using Block = T5BlockWeights;
  T5Config cfg_;
  Backend& be_;
  Tensor embedding_;  // [vocab, d_model]
  Tensor rel_bias_host_;  // [buckets, heads], F32 host
  Tensor final_ln_;
  std::vector<Block> blocks_;
};

}  // namespace stdit
