// A dry run of a backend's allocator: how the memory plan is made (docs/ARCHITECTURE.md).
//
// A DryRunBackend stands in for a target backend: the same device, policy and dtypes, but alloc()
// and upload() give tensors without memory (their data pointer is null) whose bytes are counted
// while they live, and no op computes anything. A model run on it (pipeline/memory_plan.h) costs
// host time only and leaves in peak_memory_bytes() the most bytes the target's allocations would
// hold at once for that call: every tensor the model allocates, in the order it allocates and
// frees them. A target whose ops take device memory of their own while they run (CUDA: input
// conversions, fp8 quantized inputs, gate-folded weights) returns a subclass from dry_run() that
// adds it to the peak; the GPU check compares the dry run with the CUDA backend's own count.
#pragma once
#include <memory>
#include <string>

#include "backend/backend.h"
#include "core/memory_ledger.h"

namespace stdit {

class DryRunBackend : public Backend {
 public:
  explicit DryRunBackend(const Backend& target);

  std::string name() const override { return "dry run of " + target_name_; }
  Device device() const override { return device_; }
  const ExecutionPolicy& policy() const override { return policy_; }
  DType matmul_dtype() const override { return matmul_; }
  DType operand_dtype(const Tensor& w) const override { return target_.operand_dtype(w); }
  DType product_dtype(const Tensor& w, Activation act, const Tensor& next) const override {
    return target_.product_dtype(w, act, next);
  }
  bool fuses_residual_copy(const Tensor& w) const override { return target_.fuses_residual_copy(w); }

  Tensor alloc(const Shape& shape, DType dtype = DType::F32) override;
  size_t peak_memory_bytes() const override { return ledger_.peak(); }
  void reset_peak_memory() override { ledger_.reset_peak(); }
  size_t held_bytes() const { return ledger_.now(); }
  size_t allocated_bytes() const override { return ledger_.now(); }
  std::vector<std::pair<std::string, int64_t>> attention_kernels() const override { return {}; }
  // Floats as F32 (weights: the matmul dtype, fp8 weights as they are with their scales), as
  // both backends keep them; download() gives host zeros (above 16 MiB, untouched memory).
  Tensor upload(const Tensor& host) override;
  Tensor upload_weight(const Tensor& host) override;
  Tensor download(const Tensor& t) override;

  // Every op: nothing to compute. linear_residual is the base class's (its temporary is an
  // allocation of the target too) unless a subclass knows better.
  void linear(const Tensor&, const Tensor&, const Tensor&, Activation, Tensor& out) override;
  void row_amax(const Tensor&, Tensor&) override {}
  void quantize_rows_with_amax(const Tensor& x, const Tensor& amax, Tensor& out) override;
  void add(const Tensor&, const Tensor&, Tensor&) override {}
  void silu(const Tensor&, Tensor&) override {}
  void mul(const Tensor&, const Tensor&, Tensor&) override {}
  void sub(const Tensor&, const Tensor&, Tensor&) override {}
  void l1_distance(const Tensor&, const Tensor&, Tensor&) override {}
  void cfg_euler_step(Tensor&, const Tensor&, bool, float, float) override {}
  void rms_norm(const Tensor&, const Tensor&, float, Tensor&) override {}
  // An F8_E4M3 `out` gets its row scales, as both backends attach them.
  void layernorm_modulate(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                          const FrameSelect&, float, Tensor& out) override;
  void gated_residual(Tensor&, const Tensor&, const Tensor&, const Tensor&, const FrameSelect&) override {}
  void select_frames(Tensor&, const Tensor&, const FrameSelect&) override {}
  void qk_norm_rope(Tensor&, const Tensor&, float, const Tensor&) override {}
  void attention(const Tensor&, const Tensor&, const Tensor&, float, Tensor&, const AttentionExtras&) override {}
  void cross_attention(const Tensor&, const Tensor&, const Tensor&, const std::vector<int>&, float,
                       Tensor&) override {}
  void timestep_embedding(const Tensor&, float, Tensor&) override {}
  void sincos_pos_embed_2d(int64_t, int64_t, float, float, Tensor&) override {}
  void patchify(const Tensor&, int, int, int, Tensor&) override {}
  void unpatchify(const Tensor&, int64_t, int64_t, int64_t, int, int, int, Tensor&) override {}
  void gather_rows(const Tensor&, const std::vector<int64_t>&, Tensor&) override {}
  void copy(const Tensor&, Tensor&) override {}
  void conv3d(const Tensor&, const Tensor&, const Tensor&, const ConvParams&, Tensor&) override {}
  void group_norm(const Tensor&, const Tensor&, const Tensor&, int, float, bool, Tensor&) override {}
  void upsample_nearest2x(const Tensor&, Tensor&) override {}
  void channel_affine(const Tensor&, const Tensor&, const Tensor&, Tensor&) override {}
  DType channels_last_dtype() const override { return target_.channels_last_dtype(); }
  bool prefers_channels_last() const override { return target_.prefers_channels_last(); }
  void conv3d_cl(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const ConvParams&, Tensor&) override {}
  void group_norm_cl(const Tensor&, const Tensor&, const Tensor&, int, float, bool, Tensor&) override {}
  void upsample_nearest2x_cl(const Tensor&, Tensor&) override {}

 protected:
  // Device memory an op takes for itself while it runs (freed when it returns).
  void scratch(size_t bytes) { ledger_.transient(bytes); }

 private:
  const Backend& target_;  // outlives the dry run (asked for operand_dtype(), fuses_residual_copy())
  std::string target_name_;
  Device device_;
  ExecutionPolicy policy_;
  DType matmul_;
  MemoryLedger ledger_;
};

}  // namespace stdit
