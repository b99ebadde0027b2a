// STDiT3 (Open-Sora 1.2 denoiser), written once against the op interface. Spec: architecture.md §3-4.
#pragma once
#include <array>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "core/recorder.h"
#include "io/checkpoint.h"
#include "models/stdit3/block_weights.h"
#include "models/stdit3/config.h"
#include "models/stdit3/step_cache.h"

namespace stdit {

class Communicator;  // dist/comm.h

// Host tensors, named and shaped as the PyTorch forward's arguments; x may instead be an F32
// tensor on the model's backend (a sampler keeping its latents there), and the output is then
// left there too.
struct STDiT3Inputs {
  Tensor x;         // [B, in_channels, T, H, W] float
  Tensor timestep;  // [B] float, in (0, 1000]
  Tensor y;         // [B, 1, L, caption_channels] float
  Tensor mask;      // [B or B/2, L] integer/bool; absent = every text row is valid
  Tensor x_mask;    // [B, T] bool/u8; absent = every frame is noisy
  Tensor fps;       // [1], [B/2] or [B] float
  Tensor height;    // [>=1] pixel height (element 0 is used)
  Tensor width;     // [>=1] pixel width (element 0 is used)
  StepCacheControl cache;  // step caching (off unless cache.threshold > 0)
  // Which sampling step this call is (step of steps), for --fp8-keep first:N / last:N; -1: none.
  int step = -1, steps = 0;
  // Nonzero: y and mask are the same as in every other call with this key (one sampling loop's
  // CFG batch, or its conditional half; new_text_key() makes one). The model computes the text
  // conditioning (the caption MLP on the valid rows, each block's cross-attention keys and values)
  // at the first call with the key and keeps it on its device for the next ones. 0: every call
  // computes it (and holds it only while it runs).
  uint64_t text_key = 0;
};

// A key no earlier call of this process has used (thread-safe).
uint64_t new_text_key();

// Rank `rank`'s shard of the full weights for tensor parallelism over `tp` ranks (the split of
// stdit3_tp_split; replicated tensors are shared views). Throws for a tp that does not divide the
// heads.
WeightMap shard_stdit3_weights(const STDiT3Config& cfg, const WeightMap& full, int rank, int tp);

// The weights with the block matrices (the linear layers of every block) as a run of the given
// precision keeps them: fp8 -> e4m3 with row scales (core/fp8.h; an FP8 weight as stored) except
// the layers `keep` names; otherwise an FP8-stored weight dequantized to F32. Other tensors are
// shared views. Whole matrices: quantize before any tensor-parallel cut.
WeightMap stdit3_weights_for_precision(const STDiT3Config& cfg, const WeightMap& w, bool fp8, const Fp8Keep& keep);

class STDiT3 {
 public:
  // `weights` must pass stdit3_param_specs(cfg) (use load_checked / check_weights): the full,
  // unsharded checkpoint. With a communicator `tp` of size N > 1 this object is rank tp->rank()
  // of an N-way tensor-parallel model (Megatron style, the seed's split): in every block the
  // self-attention qkv, cross-attention q and kv and MLP fc1 keep this rank's heads / columns
  // (column-parallel), the attention output projections and fc2 this rank's input columns
  // (row-parallel, their bias on rank 0 only), each followed by an all-reduce (3 per block);
  // everything else, the caption MLP included, is replicated. N must divide the head count.
  // Every rank's forward() must be called together (one thread each), with the same inputs.
  // presharded: `weights` are already this rank's shard (stdit3_param_specs(cfg, N), e.g. an
  // engine converted with --tp N).
  STDiT3(const STDiT3Config& cfg, const WeightMap& weights, Backend& backend,
         Communicator* tp = nullptr, bool presharded = false);

  // Context parallelism, DSP-style (VideoSys' Dynamic Sequence Parallelism): with a group of P
  // ranks, each runs the spatial blocks on T/P of the frames and the temporal blocks on S/P of the
  // spatial tokens, one all-to-all between them; embeddings and the final layer are computed whole
  // on every rank. P must divide T and S. Composes with tensor parallelism (the two groups are
  // orthogonal). Every rank's forward() is called together, with the same inputs.
  void set_context_parallel(Communicator* cp);

  // Loads a Hugging Face layout directory (config.json + model.safetensors).
  static std::unique_ptr<STDiT3> load(const std::string& dir, Backend& backend,
                                      const std::string& flag = "--model",
                                      Communicator* tp = nullptr);

  // Returns the F32 output [B, out_channels, T, H, W], on the host, or on the backend when in.x
  // is there. Bad inputs raise stdit::Error.
  Tensor forward(const STDiT3Inputs& in, const Recorder& rec = {});
  Backend& backend() const { return *be_; }

  const STDiT3Config& config() const { return cfg_; }
  DType model_dtype() const { return model_dtype_; }
  // The null caption embedding `y_embedder.y_embedding` [model_max_length, caption_channels]
  // (host F32): the unconditional half of the classifier-free-guidance batch.
  const Tensor& null_caption() const { return g_.y_embedding; }

  // Bytes of the weights this object holds on its backend (the sum of the tensors it uploaded).
  size_t weight_bytes() const { return weight_bytes_; }
  // This model with the same weights (shared, not copied) on another backend and communicators
  // of the same sizes, with none of the kept state: what the memory plan runs on a dry run (pipeline/memory_plan.h).
  std::unique_ptr<STDiT3> rebound(Backend& backend, Communicator* tp, Communicator* cp) const;
  // The communicators it was made with (null: none).
  Communicator* tensor_parallel() const { return tp_; }
  Communicator* context_parallel() const { return cp_; }
  // Frees what the model keeps between calls (the kept text conditioning, the step cache, the
  // positional table): the next call starts as the first one did.
  void release_kept_state();
  // Whether the last forward() ran the blocks (false: step caching reused the cached residual).
  bool last_blocks_ran() const { return last_blocks_ran_; }

 private:
  using Block = BlockWeights;  // models/stdit3/block_weights.h: the one declaration of its tensors
  struct Step;  // per-call shapes and shared tensors
  // The block stack under context parallelism (cp_): x whole on entry and exit.
  void blocks_context_parallel(Step& s, Tensor& x);

  void block_forward(const Block& blk, bool temporal, Step& s, Tensor& x);
  // The block stack on one device (S0, T0, S1, ...), in place on x; rec gets each block's x.
  void blocks(Step& s, Tensor& x, const Recorder& rec);
  // The final layer (spec §3.7) of the blocks' output x into `out` (allocated when absent, after
  // the layer's own tensors); rec gets "final".
  Tensor final_layer(const Step& s, const Tensor& x, const Tensor& t, const Tensor& t0, const Shape& out_shape,
                     const Recorder& rec, Tensor out = {});
  // The blocks and the final layer of calls that replay a recording of them (Backend::record):
  // calls with a kept text (STDiT3Inputs::text_key) whose blocks' keys and values are all kept, on
  // one device, without a recorder or step caching. The first such call of a shape records them,
  // the later ones replay them: one graph launch instead of a launch per op. A recording reads and
  // writes the tensors it was made with, so its calls run on the BlockGraph's own residual stream
  // and output, the per-call inputs copied into its tensors first.
  struct BlockGraph {
    uint64_t text_key = 0;
    int64_t B = 0, T = 0, S = 0;
    bool select = false;  // conditioning frames (the x_mask branch)
    const std::vector<Block>* spatial = nullptr;  // the blocks it runs (--fp8-keep first:N)
    Tensor x;             // [B, N, C] F32: the call's residual stream, embedding to final layer
    Tensor t, t0, t_mlp, t0_mlp, mask;  // the call's conditioning vectors and frame mask, copied in
    Tensor out;           // the final layer's output
    std::shared_ptr<OpRecording> recording;  // null until a call has recorded it
  };
  // The BlockGraph this call runs on (made on first use), or null when the call runs op by op.
  // Before the call's embeddings: it holds the call's x.
  BlockGraph* block_graph_for(const STDiT3Inputs& in, const Step& s, bool recorder);
  // Runs the recording (made at the first call): returns a copy of its output.
  Tensor blocks_recorded(BlockGraph& g, const Step& s, const Tensor& t, const Tensor& t0);
  // Step caching: true when the blocks must run for this call (models/stdit3/step_cache.h).
  bool cache_says_run(const StepCacheControl& cc, const Step& s, const Tensor& x);
  // Runs timestep-like values through an embedder MLP pair: Linear -> SiLU -> Linear.
  Tensor embed_scalar(const Tensor& values, const Tensor& w0, const Tensor& b0, const Tensor& w2,
                      const Tensor& b2);
  // The caption MLP on the valid rows of y (s.y_packed, s.y_lens): from text_ when the call's
  // key matches, else computed (and kept in text_ when the call has a key).
  void text_conditioning(const STDiT3Inputs& in, Step& s);
  // Block blk's cross-attention keys and values [rows, 2, H, D] of the packed caption rows.
  Tensor cross_kv(const Block& blk, const Step& s);

  STDiT3Config cfg_;
  Backend* be_;  // a pointer: rebound() points a copy at another backend
  Communicator* tp_ = nullptr;
  Communicator* cp_ = nullptr;  // context parallelism (set_context_parallel)
  int tp_size_ = 1, tp_rank_ = 0;
  size_t weight_bytes_ = 0;
  DType model_dtype_ = DType::F32;
  GlobalWeights g_;  // the tensors outside the blocks (block_weights.h)
  std::vector<Block> spatial_, temporal_;
  // With --fp8-keep first:N / last:N: the blocks with full-precision matrices (else empty).
  std::vector<Block> spatial_full_, temporal_full_;
  // Step-caching state across the calls of one video: the first block's modulated input of the
  // last call, the residual of the blocks at the last call that ran them, the accumulated change.
  struct CacheState {
    Tensor prev_input, residual;
    double accumulated = 0;
  } cache_;
  bool last_blocks_ran_ = true;
  // The text conditioning of the last two keys (STDiT3Inputs::text_key: the two CFG halves run
  // one after the other alternate theirs), on the device: the packed caption rows and, per block
  // as it first runs, its cross-attention keys and values. A new key replaces the older one.
  struct TextState {
    uint64_t key = 0;
    uint64_t used = 0;  // when it was last used (text_clock_)
    int64_t B = 0, L = 0;
    Tensor y_packed;
    std::vector<int> y_lens;
    std::unordered_map<const Block*, Tensor> kv;
  };
  std::array<TextState, 2> text_;
  TextState* kept_text(uint64_t key);  // the kept text of this key (0: none), or null
  uint64_t text_clock_ = 0;
  // At most one per kept text (the CFG halves run one after the other each have theirs).
  std::vector<std::shared_ptr<BlockGraph>> graphs_;
  // The positional embedding of the last call's patch grid (Hp, Wp, scale, base size).
  struct PosEmbed {
    int64_t hp = 0, wp = 0;
    float scale = 0, base = 0;
    Tensor pe;
  } pos_;
};

}  // namespace stdit
