// Classifier-free guidance split over two devices: the conditional half of the CFG batch runs on
// one device (group), the unconditional half on another, one thread each. It is a Denoiser like
// the others, so the one sampling loop (rflow_sample) drives it; per step only the predicted
// velocities meet (on the host).
#pragma once
#include <array>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"
#include "pipeline/denoiser.h"

namespace stdit {

// Runs fn(k) for k in [0, n) on n threads, each bound to backends[k]; rethrows the first error.
void run_on_devices(const std::vector<Backend*>& backends, const std::function<void(int)>& fn);

// Half k (0: conditional, 1: unconditional) of a CFG batch's inputs: per-sample inputs split by
// rows; inputs given per half already (mask [B/2, L], fps [B/2]) or for all ([1]) kept.
STDiT3Inputs cfg_half_inputs(const STDiT3Inputs& in, int k);

// halves[0] (first device: backends[0]) computes rows [0, B/2) of every CFG batch (the
// conditional half), halves[1] (backends[1]) rows [B/2, B). Each half may itself be tensor
// parallel (its first device's backend is given here): CFG x TP. Not owned.
class CfgParallelDenoiser final : public Denoiser {
 public:
  CfgParallelDenoiser(std::vector<Backend*> backends, std::vector<Denoiser*> halves);
  Tensor forward(const STDiT3Inputs& in) override;
  Tensor forward_conditional(const STDiT3Inputs& in) override;
  std::vector<bool> last_blocks_ran() const override { return last_ran_; }
  const Tensor& null_caption() const override { return halves_[1]->null_caption(); }
  DType model_dtype() const override { return halves_[0]->model_dtype(); }
  const STDiT3Config& config() const override { return halves_[0]->config(); }
  const STDiT3& first() const override { return halves_[0]->first(); }
  void release_kept_state() override;

 private:
  std::vector<Backend*> backends_;
  std::vector<Denoiser*> halves_;
  std::vector<bool> last_ran_;
};

// The two CFG halves one after the other through one denoiser: at most half the CFG batch's
// activations at once (what --max-memory chooses when the denoise stage does not fit). Each half
// keeps its own text conditioning (a key of its own per key of the batch); the output is the two
// halves' rows, on the latents' backend when the inner denoiser takes them there. Step caching
// needs one model per half and is not combined with it.
class CfgSequentialDenoiser final : public DenoiserAdapter {
 public:
  explicit CfgSequentialDenoiser(Denoiser& inner) : DenoiserAdapter(inner) {}
  Tensor forward(const STDiT3Inputs& in) override;
  Tensor forward_conditional(const STDiT3Inputs& in) override { return inner_.forward_conditional(in); }
  std::vector<bool> last_blocks_ran() const override { return last_ran_; }
  Backend* latent_backend() const override { return inner_.latent_backend(); }
  void release_kept_state() override {
    keys_.clear();
    inner_.release_kept_state();
  }

 private:
  std::map<uint64_t, std::array<uint64_t, 2>> keys_;  // a batch's text key -> its halves'
  std::vector<bool> last_ran_;
};

// The CFG halves in two processes (mpirun): this process runs half `half` (0: conditional) through
// `inner` (which may itself be tensor parallel over processes), and the two outputs meet through
// `pair`, the group of this process and the one running the other half (half order = rank order).
// A conditional-only step (--cfg-until) runs in both processes (no exchange; the same result).
class ProcessCfgDenoiser final : public DenoiserAdapter {
 public:
  ProcessCfgDenoiser(Denoiser& inner, Communicator& pair, int half);
  Tensor forward(const STDiT3Inputs& in) override;
  Tensor forward_conditional(const STDiT3Inputs& in) override;
  std::vector<bool> last_blocks_ran() const override { return last_ran_; }

 private:
  Communicator& pair_;
  int half_;
  std::vector<bool> last_ran_;
};

}  // namespace stdit
