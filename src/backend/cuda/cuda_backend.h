// The CUDA backend: F32 activations in device memory (BF16 for those that only feed GEMMs and
// attention), bf16 weight matrices, cuBLASLt GEMMs on the bf16 tensor cores by default (TF32 or
// F32 on request), hand-written kernels for everything else. Same op semantics as the CPU backend
// (backend/cpu), which is its oracle (tests/gpu/test_cuda_ops.cpp).
//
// One CUDA stream per backend; every op is enqueued on it and returns without waiting. download()
// synchronises. Device tensors keep the backend's context (stream, cuBLASLt handle) alive through
// their Storage owner, so a tensor may outlive the CudaBackend object that made it.
//
// This header is plain C++ (no CUDA headers): backend.cpp and the tests include it.
#pragma once
#include <memory>
#include <string>

#include "backend/backend.h"

namespace stdit {

struct CudaContext;  // cuda_common.cuh
class DeviceMemoryMonitor;  // device_memory.h

struct CudaOptions {
  // Linear layers and convolutions on the TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32).
  // false: plain F32 GEMMs (CUBLAS_COMPUTE_32F), ~1e-6 from the CPU backend, several times slower.
  bool tf32 = true;
  // Attention (head dim <= 128) with Q K^T and P V on the TF32 tensor cores, softmax in f32.
  // false: the F32 kernel on the CUDA cores (~1e-6 from the CPU backend, ~5x slower).
  bool tf32_attention = true;
  // bf16 path (the default): matrices of linear layers stored in bf16 (upload_weight), GEMMs on
  // the bf16 tensor cores with f32 accumulation and f32 or bf16 outputs, attention with Q K^T and
  // P V on the bf16 tensor cores (softmax in f32), and matmul_dtype() = BF16 for the activations
  // that only feed GEMMs. false: the TF32/F32 paths above decide.
  bool bf16 = true;
  // Convolutions with F32 weights (the VAE) through cuDNN; false: im2col + cuBLASLt GEMM.
  bool cudnn_conv = true;
  // BF16 attention without bias/mask through cuDNN's fused flash attention (cuDNN >= 9.13.1,
  // else the own bf16 kernel); false: always the own kernel.
  bool cudnn_attention = true;
  // Cross-attention to texts of at most 64 tokens per sample (BF16) through the streaming
  // short-text kernel; false: cuDNN or the flash kernel as above.
  bool text_attention = true;
  // BF16 attention with head dim 64/72/80, >= 64 queries and no bias/mask (self-attention over
  // >= 64 keys, cross-attention the short-text kernel does not take) through the Hopper wgmma
  // kernel (cuda_attention_wgmma.cu); false: cuDNN or the flash kernel as above.
  bool wgmma_attention = true;
  // The BF16 projections into the residual stream as a CUTLASS GEMM with its epilogue fused, on
  // Hopper (cutlass_bf16_gemm.h; policy fused_bf16_gemm); false: cuBLASLt.
  bool fused_bf16_gemm = true;
  // With bf16: the VAE decodes on channels-last BF16 tensors (cuDNN NHWC convolutions,
  // cuda_conv_cl.cu; policy vae_bf16); false: F32 channel-first tensors and TF32 convolutions.
  bool vae_bf16 = true;
  // With bf16: the 16-bit format is IEEE half (F16, --precision fp16) instead of bfloat16: weight
  // matrices, GEMM operands and attention's operands in F16 (matmul_dtype() = F16), the same
  // kernels instantiated for it (not the Hopper-only wgmma attention and CUTLASS GEMMs).
  bool f16 = false;
  // The denoiser's block stack as a CUDA graph per call shape (policy step_graphs; record()).
  bool graphs = true;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device = 0, CudaOptions options = {});
  CudaBackend(int device, CudaOptions options, ExecutionPolicy policy);
  const ExecutionPolicy& policy() const override { return policy_; }
  std::vector<std::pair<std::string, int64_t>> attention_kernels() const override;
  ~CudaBackend() override;
  std::string name() const override { return "cuda"; }
  Device device() const override;

  Tensor alloc(const Shape& shape, DType dtype = DType::F32) override;
  void synchronize() override;    // waits for every op enqueued so far; throws on a device error
  size_t peak_memory_bytes() const override;  // most device bytes held at once by alloc/upload
  void reset_peak_memory() override;
  size_t allocated_bytes() const override;
  void release_cached_memory() override;  // trims the device's default (stream-ordered) pool
  void limit_pool(size_t bytes) override;  // device_alloc trims the pool before passing it
  size_t device_memory_in_use_bytes() const override;  // cudaMemGetInfo: total - free
  std::unique_ptr<DryRunBackend> dry_run() const override;  // cuda_dry_run.cu: with the ops' scratch
  bool records() const override;  // policy step_graphs, no pool limit, no STDIT_CUDA_PROFILE
  std::unique_ptr<OpRecording> record(const std::function<void()>& fn) override;  // a CUDA graph
  int64_t replays() const;  // how often recordings of this backend have been replayed
  size_t device_memory_peak_bytes() const override;  // cudaMemGetInfo, sampled every 5 ms
  void bind_to_this_thread() override;  // cudaSetDevice(this backend's device)
  Tensor upload(const Tensor& host) override;
  Tensor download(const Tensor& t) override;
  Tensor upload_weight(const Tensor& host) override;  // BF16 (F16) in bf16 (fp16) mode
  DType matmul_dtype() const override;                // BF16 (F16) in bf16 (fp16) mode, else F32
  DType operand_dtype(const Tensor& w) const override;  // F8_E4M3 for an fp8 weight of <= 1152 inputs
  DType product_dtype(const Tensor& w, Activation act, const Tensor& next) const override;  // cuda_fp8.cu

  void row_amax(const Tensor& x, Tensor& amax) override;                                  // cuda_fp8.cu
  void quantize_rows_with_amax(const Tensor& x, const Tensor& amax, Tensor& out) override;  // cuda_fp8.cu
  void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act,
              Tensor& out) override;
  void add(const Tensor& a, const Tensor& b, Tensor& out) override;
  void silu(const Tensor& x, Tensor& out) override;
  void mul(const Tensor& a, const Tensor& b, Tensor& out) override;
  void sub(const Tensor& a, const Tensor& b, Tensor& out) override;
  void l1_distance(const Tensor& a, const Tensor& b, Tensor& out) override;
  void cfg_euler_step(Tensor& z, const Tensor& v, bool cfg, float guidance, float dt) override;
  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override;

  void layernorm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale,
                          const Tensor& shift0, const Tensor& scale0, const FrameSelect& sel,
                          float eps, Tensor& out) override;
  void linear_residual(const Tensor& y, const Tensor& w, const Tensor& bias, const Tensor& gate,
                       const Tensor& gate0, const FrameSelect& sel, Tensor& x) override;
  void linear_residual_copy(const Tensor& y, const Tensor& w, const Tensor& bias, const Tensor& gate,
                            const Tensor& gate0, const FrameSelect& sel, Tensor& x, Tensor& x_copy) override;
  bool fuses_residual_copy(const Tensor& w) const override;  // the fused bf16 residual GEMM's weights
  void gated_residual(Tensor& x, const Tensor& y, const Tensor& gate, const Tensor& gate0,
                      const FrameSelect& sel) override;
  void select_frames(Tensor& dst, const Tensor& src, const FrameSelect& sel) override;

  void qk_norm_rope(Tensor& q, const Tensor& weight, float eps, const Tensor& rope_freqs) override;
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, Tensor& out,
                 const AttentionExtras& extras = {}) override;
  void cross_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                       const std::vector<int>& kv_lens, float scale, Tensor& out) override;

  void timestep_embedding(const Tensor& t, float max_period, Tensor& out) override;
  void sincos_pos_embed_2d(int64_t hp, int64_t wp, float scale, float base_size,
                           Tensor& out) override;
  void patchify(const Tensor& x, int pt, int ph, int pw, Tensor& out) override;
  void unpatchify(const Tensor& x, int64_t tp, int64_t hp, int64_t wp, int pt, int ph, int pw,
                  Tensor& out) override;
  void gather_rows(const Tensor& src, const std::vector<int64_t>& rows, Tensor& out) override;
  void copy(const Tensor& src, Tensor& dst) override;

  void conv3d(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvParams& p,
              Tensor& out) override;
  void group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps,
                  bool silu, Tensor& out) override;
  void upsample_nearest2x(const Tensor& x, Tensor& out) override;
  void channel_affine(const Tensor& x, const Tensor& scale, const Tensor& shift,
                      Tensor& out) override;
  // Channels-last family (cuda_conv_cl.cu): BF16 tensors, cuDNN NHWC convolutions.
  DType channels_last_dtype() const override;
  bool prefers_channels_last() const override { return policy_.vae_bf16; }
  void conv3d_cl(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& residual, const ConvParams& p,
                 Tensor& out) override;
  void group_norm_cl(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps, bool silu,
                     Tensor& out) override;
  void upsample_nearest2x_cl(const Tensor& x, Tensor& out) override;

  // --- CUDA-specific ---
  // x [..., K] (F32 or BF16, contiguous) quantized row by row to e4m3 by core/fp8.h's rule: an
  // F8_E4M3 device tensor carrying its F32 row scales (the fp8 precision's activations).
  Tensor quantize_rows_e4m3(const Tensor& x);
  // Sets every byte of a contiguous device tensor (tests poison outputs with 0xFF = NaN floats).
  void fill_bytes(Tensor& t, int byte);
  const CudaOptions& options() const;
  const std::shared_ptr<CudaContext>& context() const { return ctx_; }

 private:
  // conv3d's work; returns the path taken ("cudnn", "gemm", "im2col") for the profile.
  std::string conv3d_impl(const Tensor& x, const Tensor& w, const Tensor& bias,
                          const ConvParams& p, Tensor& out);
  // linear() with an F8_E4M3 weight (cuda_fp8.cu): x quantized per row (unless it is an F8_E4M3
  // tensor with its row scales already), the FP8 GEMM, then out = act(acc * x_scale[row] *
  // w_scale[col] + bias) in the order of the CPU emulation.
  void linear_fp8(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, Tensor& out);
  std::shared_ptr<CudaContext> ctx_;
  std::unique_ptr<DeviceMemoryMonitor> memory_monitor_;  // after ctx_: the device exists first
  ExecutionPolicy policy_;
};

// The registry's factory ("cuda"): device index `device`. Environment: STDIT_CUDA_BF16=0 turns the
// bf16 path off (TF32 GEMMs and attention, F32 storage); STDIT_CUDA_TF32=0 selects F32 everywhere
// (implies STDIT_CUDA_BF16=0); STDIT_CUDA_TF32_ATTENTION=0 only F32 attention (without bf16);
// STDIT_CUDA_CUDNN=0 no cuDNN (convolutions and attention); STDIT_CUDA_CUDNN_ATTENTION=0 only
// attention without it.
// A CUDA backend on `device` running `policy` (resolve_policy(..., "cuda", cuda_device_sm(device))).
std::unique_ptr<Backend> make_cuda_backend(int device, const ExecutionPolicy& policy);
int cuda_device_sm(int device);

// Why `device` cannot be opened (no driver, no device, an index past the visible ones); "" when it
// can (cuda_runtime_info.cu). The backend's constructor and make_backend() both ask it first, so
// that error names the missing device rather than what a policy of "sm_0" would lack.
std::string cuda_device_problem(int device);
// Number of visible CUDA devices; 0 when there is no driver or no device (cuda_runtime_info.cu).
int cuda_device_count();
// One line naming the device (name, compute capability, SMs, memory, driver); "" if unknown.
std::string cuda_device_description(int device);

}  // namespace stdit
