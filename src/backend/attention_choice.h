// Which attention kernel runs a call: a pure function of the call's shape and layout facts and the
// execution policy (backend/policy.h), so that the choice is tested on any machine
// (tests/test_policy.cpp), printed with -v and recorded in every output's metadata.
//
// The CUDA backend walks attention_candidates() in order and runs the first whose launcher takes
// the call. The launchers keep their own checks: they refuse what the facts below do not record
// (a cuDNN older than 9.13.1 or a plan it cannot build, a TMA descriptor the driver rejects, an
// output aligned to 4 but not 16 bytes), so on a current stack and the model's tensors the kernel
// that ran is choose_attention()'s (CudaOps.AttentionRunsTheChosenKernel checks the model's
// calls). The backend counts what actually ran (Backend::attention_kernels()).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "backend/policy.h"

namespace stdit {

enum class AttentionKernel {
  Cpu,        // the CPU backend's attention (f32)
  TextBf16,   // cross-attention to short texts (<= 64 keys a sample), streaming kernel
  Wgmma,      // Hopper wgmma + TMA flash attention, head dims 64/72/80
  Cudnn,      // cuDNN fused flash attention
  ShortBf16,  // self-attention over 17-32 keys (temporal attention at 4 s), 32-key tiles
  FlashBf16,  // mma.sync flash attention on bf16 operands (any sm_80+)
  FlashTf32,  // mma.sync flash attention on TF32 (tf32 precision)
  FlashF32,   // CUDA-core flash attention in f32 (f32 precision)
  Gemm,       // head dims > 128 (the VAE's mid-block): scores by GEMM, exact row softmax
};
constexpr int kAttentionKernels = static_cast<int>(AttentionKernel::Gemm) + 1;
const char* attention_kernel_name(AttentionKernel k);  // "wgmma", "cudnn", "short-bf16", ...

// What decides the kernel, read off the call.
struct AttentionCall {
  int64_t batch = 1;  // leading (batch) count
  int64_t heads = 1, nq = 0, nk = 0, d = 0;
  bool cross = false;        // cross-attention: keys per sample packed (kv_lens)
  int64_t longest_text = 0;  // cross: the most keys of one sample
  bool bf16_in = false, bf16_out = false;  // 16-bit operands / output (BF16, or F16 under fp16)
  bool extras = false;        // a bias or key mask
  bool rows_aligned = true;   // q/k/v/out rows, heads and leading strides in 16-byte pieces
  bool lead_folds = true;     // every leading dim folds into one batch stride
  int64_t cudnn_calls = 1;    // self-attention: the leading index count outside the folded dims
};

// The kernels that may take the call, best first (never empty: the last always can).
std::vector<AttentionKernel> attention_candidates(const AttentionCall& call, const ExecutionPolicy& policy);
inline AttentionKernel choose_attention(const AttentionCall& call, const ExecutionPolicy& policy) {
  return attention_candidates(call, policy).front();
}

using KernelCounts = std::vector<std::pair<std::string, int64_t>>;  // Backend::attention_kernels()
// What ran between two readings of the same backend's counts.
KernelCounts kernel_counts_since(const KernelCounts& before, const KernelCounts& now);
// "wgmma 1680, short-bf16 1680, text-bf16 1680" ("" when none ran); names_only: "wgmma, short-bf16, text-bf16".
std::string describe_kernel_counts(const KernelCounts& counts, bool names_only = false);

}  // namespace stdit
