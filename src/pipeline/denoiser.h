// The denoiser as the samplers see it: one STDiT3, or one STDiT3 split over several devices by
// tensor parallelism (dist/comm.h). Both take the whole CFG batch; the output is on the host, or
// (one STDiT3) on its backend when the latents are (latent_backend()).
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "dist/comm.h"
#include "models/stdit3/stdit3.h"

namespace stdit {

class Denoiser {
 public:
  virtual ~Denoiser() = default;
  // F32 output [B, out_channels, T, H, W] (as STDiT3::forward): on latent_backend() when x is there, else the host.
  virtual Tensor forward(const STDiT3Inputs& in) = 0;
  // The same for a batch of conditional rows only (no CFG batch; --cfg-until). A denoiser that
  // splits the CFG batch over devices runs it on the conditional half's device(s) alone.
  virtual Tensor forward_conditional(const STDiT3Inputs& in) { return forward(in); }
  // Per part of the last call (one, or the two halves of CFG-parallel; one after
  // forward_conditional): whether it ran the blocks (false: step caching reused its residual).
  virtual std::vector<bool> last_blocks_ran() const { return {first().last_blocks_ran()}; }
  virtual const Tensor& null_caption() const = 0;
  virtual DType model_dtype() const = 0;
  // The backend whose tensors forward() takes as x and then returns its output on (the sampler
  // keeps its latents there across steps); null: host tensors in and out.
  virtual Backend* latent_backend() const { return nullptr; }
  virtual const STDiT3Config& config() const = 0;
  // The model on the first device (rank 0): its weights and activation sizes are the per-GPU
  // figures of the memory plan.
  virtual const STDiT3& first() const = 0;
  // Frees what the model keeps from one call to the next (the kept text conditioning, step
  // caching's state) on every device: a resident engine's denoiser holds none of it between
  // requests.
  virtual void release_kept_state() = 0;
};

// A denoiser around another (not owned): the model's queries and, unless a subclass overrides it,
// forward() go to `inner`, in host tensors (latent_backend() stays null whatever inner's is).
class DenoiserAdapter : public Denoiser {
 public:
  explicit DenoiserAdapter(Denoiser& inner) : inner_(inner) {}
  Tensor forward(const STDiT3Inputs& in) override { return inner_.forward(in); }
  const Tensor& null_caption() const override { return inner_.null_caption(); }
  DType model_dtype() const override { return inner_.model_dtype(); }
  const STDiT3Config& config() const override { return inner_.config(); }
  const STDiT3& first() const override { return inner_.first(); }
  void release_kept_state() override { inner_.release_kept_state(); }

 protected:
  Denoiser& inner_;
};

// One STDiT3 on one backend (not owned).
class SingleDenoiser final : public Denoiser {
 public:
  explicit SingleDenoiser(STDiT3& m) : m_(m) {}
  Tensor forward(const STDiT3Inputs& in) override { return m_.forward(in); }
  const Tensor& null_caption() const override { return m_.null_caption(); }
  Backend* latent_backend() const override { return &m_.backend(); }
  DType model_dtype() const override { return m_.model_dtype(); }
  const STDiT3Config& config() const override { return m_.config(); }
  const STDiT3& first() const override { return m_; }
  void release_kept_state() override { m_.release_kept_state(); }

 private:
  STDiT3& m_;
};

// STDiT3 over backends.size() devices, tensor parallel: rank r (its heads and MLP columns) on
// backends[r], sharded at load time from the full weights. forward() runs every rank on its own
// thread and returns rank 0's output; an error on any rank stops all of them (dist/comm.h).
class TensorParallelDenoiser final : public Denoiser {
 public:
  // backends.size() = tp x cp ranks: rank r = c * tp + t is tensor-parallel rank t of context-
  // parallel rank c (STDiT3::set_context_parallel); cp = 1: tensor parallelism alone.
  TensorParallelDenoiser(const STDiT3Config& cfg, const WeightMap& weights,
                         std::vector<Backend*> backends, int cp = 1);
  // A Hugging Face layout directory (config.json + weights), as STDiT3::load, or an engine's dit
  // directory converted with --tp N (rank0.safetensors ... rank{N-1}.safetensors; N must equal
  // the tensor-parallel size), each rank reading only its own file.
  static std::unique_ptr<TensorParallelDenoiser> load(const std::string& dir,
                                                      std::vector<Backend*> backends,
                                                      const std::string& flag = "--model", int cp = 1);
  Tensor forward(const STDiT3Inputs& in) override;
  const Tensor& null_caption() const override { return ranks_[0]->null_caption(); }
  DType model_dtype() const override { return ranks_[0]->model_dtype(); }
  const STDiT3Config& config() const override { return ranks_[0]->config(); }
  const STDiT3& first() const override { return *ranks_[0]; }
  void release_kept_state() override;
  int size() const { return static_cast<int>(ranks_.size()); }
  std::string comm_kind() const;

 private:
  TensorParallelDenoiser(const STDiT3Config& cfg, const std::string& rank_dir,
                         std::vector<Backend*> backends, const std::string& flag, int cp);
  // Makes the groups (TP groups of the ranks of one CP rank, CP groups of one TP rank), then
  // make(r, tp communicator or null, cp communicator or null) on each rank's thread.
  void build(int cp, const std::function<void(int, Communicator*, Communicator*)>& make);
  void run(const std::function<void(int)>& fn);  // every rank on its thread; an error aborts all
  std::vector<Backend*> backends_;
  int tp_ = 1, cp_ = 1;
  std::vector<CommGroup> tp_groups_, cp_groups_;
  std::vector<std::unique_ptr<STDiT3>> ranks_;
};

// One rank of a tensor-parallel split whose ranks are other processes (mpirun): this process's
// shard (its rank file of an engine converted with --tp, else sliced from the full weights) with
// `comm` for the reductions; comm null or of size 1: the whole model.
std::unique_ptr<STDiT3> load_stdit3_rank(const std::string& dir, Backend& be, Communicator* comm,
                                         const std::string& flag);

// mpirun: this process's place in a split of the world into (2 if cfg_parallel) x tp x cp
// processes. World rank r = half * (tp * cp) + c * tp + t is tensor-parallel rank t of
// context-parallel rank c of CFG half `half`. Collective: every process makes the groups in the
// same order. tp/cp groups: NCCL over the processes' GPUs when `device` is a CUDA backend, MPI
// between CPU ranks; the CFG pair exchanges host outputs over MPI. Absent groups stay null.
struct ProcessSplit {
  std::unique_ptr<Communicator> tp_comm, cp_comm, cfg_comm;
  int half = 0;
};
ProcessSplit make_process_split(int tp, int cp, bool cfg_parallel, Backend* device);

// An engine's dit directory converted with --tp (rank files): as many files as `tp` and all of
// one conversion (their "shard_set" ids agree), else one error naming the odd file. Reads the
// files' headers only. Nothing to check without rank files.
void check_stdit3_rank_files(const std::string& dir, int tp);

// Checks a split before anything is loaded: tp >= 1 dividing `heads`, one device per rank.
void check_tp_split(int tp, int heads, int devices_needed, int devices_present);

// Opt-in savings of model work (both off by default; docs/NUMERICS.md measures what they cost).
struct SamplerOptions {
  SamplerOptions() = default;
  SamplerOptions(double cache, double until) : cache_threshold(cache), cfg_until(until) {}
  // Step caching (TeaCache, models/stdit3/step_cache.h): > 0 enables it with this threshold.
  double cache_threshold = 0;
  // Classifier-free guidance for the first ceil(cfg_until * steps) steps only; after that only
  // the conditional half runs (v = v_cond). In (0, 1]; 1 = every step.
  double cfg_until = 1.0;
  // Conditioning on references (pipeline/conditioning.h, spec §8.4): the frame mask [B, T] F32,
  // 1 for a normal frame, a reference frame's edit ratio otherwise. Undefined: all 1
  // (text-to-video, where Open-Sora passes ones too). x_mask = (1000 * mask >= t) each step.
  Tensor frame_mask;
  // Fresh noise [4, T, h, w] for video b at step i, called only where a frame gets noise added
  // (x_mask newly true): Open-Sora draws it every step, so a counter-based stream per (video,
  // step) gives the same result without the unused draws. Needed when such a step occurs.
  std::function<Tensor(int step, int64_t b)> step_noise;
};

// What the savings did in one sampling run.
struct SamplerReport {
  int steps = 0;             // model steps taken (steps whose timestep rounds above 1000 excluded)
  int parts = 0;             // denoiser parts run over all steps (CFG-parallel: two per CFG step)
  int parts_cached = 0;      // of those, the ones that reused the cached residual
  int cond_only_steps = 0;   // steps that ran the conditional half alone
  // One group per step, groups separated by spaces: per part 'R' (blocks ran) or 'C' (cached),
  // in lower case for a conditional-only step ("RR CR c c" = CFG-parallel, 4 steps).
  std::string schedule;
};

// --cache: "none" -> 0; "teacache" -> 0.1; "teacache:T" -> T (a finite number > 0). Anything else
// is an error naming the accepted forms.
double parse_step_cache(const std::string& spec);
// The recorded form: "none" or "teacache:T".
std::string step_cache_name(double threshold);

// Steps that run the unconditional half for a cfg_until fraction (the rest run only the
// conditional half).
int cfg_steps(double cfg_until, int steps);

// The denoising loop (spec §8.4) on any denoiser; see generate.h for the arguments.
Tensor rflow_sample(Denoiser& dit, const Tensor& y_cond, const Tensor& mask, const Tensor& noise,
                    int height, int width, int num_frames, double fps, int steps, double cfg_scale,
                    const std::function<void(int, const Tensor&)>& on_step = {},
                    const SamplerOptions& options = {}, SamplerReport* report = nullptr);

}  // namespace stdit
