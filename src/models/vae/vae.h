// Open-Sora VAE v1.2 (VideoAutoencoderPipeline): the SDXL-style 2D VAE per frame and the causal
// temporal VAE per 17-frame chunk, written against the op interface. Spec: architecture.md §9.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "backend/backend.h"
#include "io/checkpoint.h"
#include "core/recorder.h"
#include "models/vae/config.h"
#include "models/vae/vae_modules.h"

namespace stdit {

// The module tree (its tensors) is VaeModules, built by walk_vae_modules (vae_modules.h).
class OpenSoraVae : private VaeModules {
 public:
  OpenSoraVae(const VaeConfig& cfg, const WeightMap& weights, Backend& backend);
  // A directory with config.json + model.safetensors (hpcai-tech/OpenSora-VAE-v1.2 layout).
  static std::unique_ptr<OpenSoraVae> load(const std::string& dir, Backend& backend,
                                           const std::string& flag = "--model");

  // z: host [B, 4, T, h, w] (T must be the latent length of num_frames) -> host F32 video
  // [B, 3, num_frames, 8h, 8w], nominally in [-1, 1] and not clamped (spec §9.5).
  Tensor decode(const Tensor& z, int num_frames, const Recorder& rec = {});
  // video: host [B, 3, F, H, W] in [-1, 1] (H, W multiples of 8) -> host F32 z
  // [B, 4, latent_frames(F), H/8, W/8]: the posterior mean of both VAEs, or, with `sample_seed`,
  // a sample mean + exp(logvar / 2) * eps of each (logvar clamped to [-30, 20]), as Open-Sora's
  // encode draws them. eps comes from Philox (core/philox.h) keyed by `sample_seed`: the 2D VAE's
  // moments of frame f of item b from stream b * 2^20 + first_frame + f (shape [1, 4, 1, h, w]),
  // the temporal VAE's of chunk k (micro_frame_size frames) of item b from stream
  // 2^31 + b * 2^20 + (first_frame / micro_frame_size + k). `first_frame` (a multiple of
  // micro_frame_size) says where `video` starts in a longer clip: encoding the tail of a clip from
  // a chunk boundary then gives exactly the last latent frames of encoding the whole clip.
  Tensor encode(const Tensor& video, const Recorder& rec = {},
                std::optional<uint64_t> sample_seed = std::nullopt, int64_t first_frame = 0);

  const VaeConfig& config() const { return cfg_; }
  // Frames per call of the 2D VAE, decoding and encoding (its micro-batch; fewer: less memory,
  // the same frames on the CPU); 0 restores the config's.
  void set_frames_per_2d_call(int n);

  // Splits decode over `parts` workers (processes): this one runs only the temporal chunks k with
  // k % parts == part, `sum` (an exact sum over the workers, in place, host F32) makes the temporal
  // output whole, then this one runs only the 2D micro-batches m with m % parts == part (the same
  // micro-batches as one worker: the bytes of one decode); the other frames of its result are zero,
  // so the caller sums the workers' results the same way. 1 part: everything, no sums.
  void set_decode_split(int part, int parts, std::function<void(Tensor&)> sum = {}) {
    split_part_ = part;
    split_parts_ = parts;
    split_sum_ = std::move(sum);
  }

  // The decode's layout (both VAEs' decoders after their first convolution): channels-last
  // tensors in the backend's channels_last_dtype() or channel-first F32 tensors (true / false);
  // nullopt: the backend's choice (Backend::prefers_channels_last). On the CPU both give the same
  // bits. Encoding is channel-first F32 always.
  void set_channels_last(std::optional<bool> on) { channels_last_ = on; }
  bool channels_last() const { return channels_last_.value_or(be_.prefers_channels_last()); }

  // Called by decode after each temporal chunk and each 2D micro-batch with (done, total) units;
  // it may throw (e.g. Interrupted) to stop the decode there. Empty: no calls.
  void set_progress(std::function<void(int done, int total)> fn) { progress_ = std::move(fn); }

 private:
  // The blocks on channel-first F32 activations [N, C, T, H, W], or with `cl` on channels-last
  // ones [N, T, H, W, C] in the backend's channels_last_dtype() (Backend::conv3d_cl ...). A
  // residual, when given, is added to the convolution's output.
  Tensor run_conv(const Conv& c, const Tensor& x, const ConvParams& p, bool cl = false, const Tensor& residual = {});
  Tensor gn(const Norm& n, const Tensor& x, int groups, float eps, bool silu, bool cl = false);
  Tensor upsample2x(const Tensor& x, bool cl);
  Tensor run_res(const Res& r, const Tensor& x, int groups, float eps, const ConvParams& p3, bool cl = false);
  Tensor run_mid(const Mid& m, const Tensor& x, bool cl = false);
  const Tensor& cl_weight(const Conv& c);  // c's weight as [Co, kt, kh, kw, Ci], made on first use
  Tensor to_layout(const Tensor& x, bool cl);  // channel-first F32 <-> channels-last

  std::function<void(int, int)> progress_;
  int split_part_ = 0, split_parts_ = 1;
  std::function<void(Tensor&)> split_sum_;
  Tensor temporal_decode(const Tensor& z, int num_frames, bool cl);  // one chunk
  // One chunk -> posterior mean, or a sample drawn from Philox stream `stream` of `seed`.
  Tensor temporal_encode(const Tensor& x, std::optional<uint64_t> seed, uint32_t stream);
  Tensor spatial_decode(const Tensor& x, bool cl);             // [N, 4, 1, h, w] -> [N, 3, 1, H, W]
  // [N, 3, 1, H, W] -> [N, 4, 1, h, w] (already multiplied by the scaling factor).
  Tensor spatial_encode(const Tensor& x, std::optional<uint64_t> seed, uint32_t stream);
  // moments [N, 8, ...] -> mean (channels 0..3) or mean + exp(clamp(logvar)/2) * eps.
  // Item j of the leading dimension draws from stream + j * item_stride.
  Tensor posterior(const Tensor& moments, std::optional<uint64_t> seed, uint32_t stream, uint32_t item_stride);
  static constexpr uint32_t kVaeItemStride = 1u << 20;

  VaeConfig cfg_;
  std::optional<bool> channels_last_;
  std::map<const Conv*, Tensor> cl_weights_;  // [Co, kt, kh, kw, Ci] copies, made on first use
  int config_micro_batch_;  // the config's frames per 2D VAE call
  Backend& be_;
};

}  // namespace stdit
