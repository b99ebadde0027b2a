// What reproduces an output file: the settings of the run that made it and, per video, the
// prompt (as given and as encoded) and the Philox stream of its initial noise.
//
// Written as JSON under the key "stdit" into every output: an mp4 container tag, a PNG iTXt
// chunk, the __metadata__ of a --save-latents file (there with every video of the run).
// `stdit generate --from FILE` reads it back and runs the same job again.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace stdit {

inline constexpr const char* kProgramVersion = "stdit 0.1.0";
inline constexpr const char* kRecordKey = "stdit";

struct VideoRecord {
  std::string prompt;          // as the user gave it
  std::string prompt_encoded;  // after score suffixes and caption cleaning: what T5 read
  uint32_t noise_index = 0;    // Philox stream of the initial noise (the seed is the run's)
  // Conditioning (pipeline/conditioning.h): the reference files ("a.png;b.mp4", as given) and the
  // mask strategy used ("" for none; the default filled in when references came without one).
  std::string reference_path, mask_strategy;
};

struct RunRecord {
  std::string program = kProgramVersion;
  std::string engine, engine_id;   // directory as given; engine_identity() of its contents
  std::string backend, precision;  // "cpu" / "cuda"; "f32" / "tf32" / "bf16" / "fp8"
  std::string fp8_keep;            // precision fp8: what stayed unquantized (--fp8-keep), "" for none
  std::string attention_kernels;   // the attention kernels that ran (backend/attention_choice.h), by name
  int width = 0, height = 0;       // the model's size condition in pixels (as asked)
  int output_width = 0, output_height = 0;  // the file's size: multiples of 8 at most as large
  int num_frames = 0;
  double fps = 0, model_fps = 0;  // the file's rate; the model's fps condition (120 for images)
  int steps = 0;
  double cfg_scale = 0;
  uint64_t seed = 0;
  std::optional<double> aes, flow;
  std::optional<std::string> camera_motion;
  int batch_size = 1;  // videos per model call: results of other batch sizes differ by rounding
  // Frames per 2D VAE decode call when --max-memory lowered it (0: the VAE's own, 4): on a GPU the
  // convolutions may round differently at another count, so --from reuses it.
  int vae_frames_per_call = 0;
  // The two CFG halves one after the other on one device (--max-memory chose it: half the
  // denoiser's activations; a GPU may round the half batches differently), reused by --from.
  bool cfg_sequential = false;
  std::string cache = "none";  // step caching: "none" or "teacache:THRESHOLD"
  double cfg_until = 1.0;      // fraction of the steps with classifier-free guidance
  int loop = 1;                      // clips per video, each continuing the last
  int condition_frame_length = 5;    // latent frames a clip (or --extend) conditions on
  double condition_frame_edit = 0;   // their edit ratio
  int align = 5;                     // mask-strategy starts snap to multiples of this (0: off)
  std::string extend;                // the video continued (its frames open the output), or ""
  std::vector<VideoRecord> videos;

  nlohmann::json to_json() const;
  // `where` names the file in errors.
  static RunRecord from_json(const nlohmann::json& j, const std::string& where);
  // From a file's metadata map (mp4 tags, PNG text, safetensors __metadata__): the "stdit" entry.
  static RunRecord from_metadata(const std::map<std::string, std::string>& meta, const std::string& where);
  // This record with only video `i` (what one output file carries).
  RunRecord only_video(size_t i) const;
  // Human-readable tags written beside the JSON (mp4 / PNG): prompt, seed, steps, ...
  std::map<std::string, std::string> tags() const;
};

// Reads the record of an mp4 / PNG written by `stdit generate`, or of a --save-latents file.
// Error when the file has none (e.g. not made by stdit, or by a version before records).
RunRecord read_run_record(const std::string& path);

}  // namespace stdit
