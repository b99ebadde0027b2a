// The memory plan of a request on one device, made before anything loads: the pipeline's stages
// replayed on a dry run of the device's backend (backend/dry_run.h). The same model classes load
// the same engine files (mapped, not read: a dry upload copies nothing) and run the request's
// shapes, so the stage's tensors, the weights its residency keeps and the backend's scratch are
// counted as the real run allocates them. Not in it: what the device holds already (the CUDA
// context, library code, other processes) and the pool's slack; `--max-memory` adds the first.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "models/stdit3/stdit3.h"
#include "pipeline/engine.h"

namespace stdit {

struct MemoryRequest {
  int prompts = 1;          // distinct prompts: one T5 call
  int text_len = 300;
  int text_rows = 300;      // valid tokens of the longest prompt: the text rows the denoiser keeps
  int64_t batch = 2;        // rows of one denoiser call (the CFG pair of each video, or one half)
  int64_t videos = 1;       // videos sampled together (the sampler's latents)
  int64_t T = 0, h = 0, w = 0;  // latent frames and size
  int frames = 1, height = 0, width = 0;
  double fps = 24;
  int tp = 1, cp = 1;       // this device is rank 0 of these splits
  bool keep_t5 = false;           // T5 stays loaded after the text (resident engine without offload)
  // Models a resident engine holds already when the request starts (loaded by an earlier one):
  // on the device through every stage before their own.
  bool t5_loaded = false, dit_loaded = false, vae_loaded = false;
  bool vae_during_denoise = false;  // references are encoded before sampling: the VAE is loaded then
  int encode_frames = 0;            // frames of the longest clip the VAE encodes then (0: none)
  bool conditioned = false;         // some latent frames are references' (the model's x_mask branch)
  bool denoiser_during_decode = false;  // more batches follow, or a resident engine: it stays
  bool text_during_decode = false;      // ... with its text conditioning kept (more batches or clips follow)
  bool decode_only = false;             // saved latents decoded: the decode stage alone
  int vae_frames_per_call = 0;          // frames per 2D VAE call (0: the VAE's own)
  bool cfg_sequential = false;          // the CFG halves one after the other (batch / 2 rows a call)
  bool conditional_only_steps = false;  // --cfg-until: later calls run the conditional rows alone
};

struct MemoryStage {
  std::string name;   // "text", "denoise", "decode"
  size_t peak = 0;    // most bytes this device's allocations hold at once during the stage
};

struct MemoryPlan {
  std::vector<MemoryStage> stages;
  const MemoryStage& largest() const;
  std::string describe() const;  // "text 8.9 GiB, denoise 7.1 GiB, decode 5.3 GiB"
};

MemoryPlan plan_request_memory(const Engine& eng, const MemoryRequest& r, const Backend& device);

// One denoiser call of the request's shape as host inputs (x host zeros, keyed, every row's text
// as long as the longest prompt, frame 0 a reference's when conditioned).
STDiT3Inputs planned_call_inputs(const MemoryRequest& r, int64_t in_channels, int64_t caption_channels);

// One call of a loaded model, planned: `model` rebound to a dry run of its backend and of its
// communicators, from a fresh state. The most bytes the call's own allocations hold at once on
// this rank (activations, the text conditioning a keyed call keeps, the output, the backend's
// scratch); not the weights (STDiT3::weight_bytes()).
size_t plan_model_call(const STDiT3& model, const STDiT3Inputs& in);

}  // namespace stdit
