#include "pipeline/synthetic_weights.h"

#include <cmath>

#include "core/error.h"
#include "core/synthetic.h"

namespace stdit {

Tensor synthetic_weight(const ParamSpec& p, uint64_t seed) {
  // The VAE's latent scale and shift: the real values (they set the decoder's input range).
  if (p.name == "scale") return Tensor::from_f32(p.shape, {3.85f, 2.32f, 2.33f, 3.06f});
  if (p.name == "shift") return Tensor::from_f32(p.shape, {-0.10f, 0.34f, 0.27f, 0.98f});
  const int64_t n = shape_numel(p.shape);
  const bool norm = p.name.find("norm") != std::string::npos;
  double scale = 1.0 / 16;
  if (p.shape.size() >= 2) {
    const double fan_in = static_cast<double>(n / p.shape[0]);
    scale = std::pow(2.0, -std::round(std::log2(std::sqrt(fan_in))));
  }
  return synthetic_tensor(p.name, p.shape, seed, scale, norm && p.shape.size() == 1 ? 1.0 : 0.0);
}

WeightMap synthetic_weights(const std::vector<ParamSpec>& specs, uint64_t seed) {
  WeightMap w;
  for (const auto& p : specs)
    if (!p.optional) w[p.name] = synthetic_weight(p, seed);
  return w;
}

const char* real_config_json(const std::string& kind) {
  if (kind == "dit")
    return R"({
  "architectures": ["STDiT3"],
  "caption_channels": 4096,
  "class_dropout_prob": 0.1,
  "depth": 28,
  "drop_path": 0.0,
  "enable_flash_attn": false,
  "enable_layernorm_kernel": false,
  "enable_sequence_parallelism": false,
  "freeze_y_embedder": true,
  "hidden_size": 1152,
  "in_channels": 4,
  "input_size": [null, null, null],
  "input_sq_size": 512,
  "mlp_ratio": 4.0,
  "model_max_length": 300,
  "model_type": "STDiT3",
  "num_heads": 16,
  "only_train_temporal": false,
  "patch_size": [1, 2, 2],
  "pred_sigma": true,
  "qk_norm": true,
  "skip_y_embedder": false,
  "torch_dtype": "float32"
}
)";
  if (kind == "vae")
    return R"({
  "architectures": ["VideoAutoencoderPipeline"],
  "cal_loss": false,
  "freeze_vae_2d": false,
  "from_pretrained": null,
  "micro_frame_size": 17,
  "model_type": "VideoAutoencoderPipeline",
  "scale": [3.85, 2.32, 2.33, 3.06],
  "shift": [-0.1, 0.34, 0.27, 0.98],
  "torch_dtype": "float32",
  "vae_2d": {"from_pretrained": "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers", "local_files_only": false,
             "micro_batch_size": 4, "subfolder": "vae", "type": "VideoAutoencoderKL"},
  "vae_temporal": {"from_pretrained": null, "type": "VAE_Temporal_SD"}
}
)";
  STDIT_CHECK(kind == "t5", "no real config for '", kind, "'");
  return R"({
  "architectures": ["T5EncoderModel"],
  "d_ff": 10240,
  "d_kv": 64,
  "d_model": 4096,
  "dropout_rate": 0.1,
  "eos_token_id": 1,
  "feed_forward_proj": "gated-gelu",
  "initializer_factor": 1.0,
  "is_encoder_decoder": true,
  "layer_norm_epsilon": 1e-06,
  "model_type": "t5",
  "num_decoder_layers": 24,
  "num_heads": 64,
  "num_layers": 24,
  "pad_token_id": 0,
  "relative_attention_num_buckets": 32,
  "tie_word_embeddings": false,
  "vocab_size": 32128
}
)";
}

}  // namespace stdit
