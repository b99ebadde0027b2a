// The execution policy: which precision and which kernel families a run uses, resolved once from
// what was asked (--precision, --kernels, the developers' STDIT_CUDA_* overrides), the backend and
// the device, by pure functions (tested in tests/test_policy.cpp). Printed with -v and recorded
// in every output's metadata ("precision").
#pragma once
#include <map>
#include <optional>
#include <string>

namespace stdit {

enum class Precision { BF16, TF32, F32 };
const char* precision_name(Precision p);  // "bf16", "tf32", "f32"

// What the user asked for.
struct PolicyRequest {
  std::string precision = "auto";  // auto | bf16 | tf32 | f32
  std::string kernels = "auto";    // auto | portable (no Hopper-only kernels)
  // Developer overrides of single kernel families (STDIT_CUDA_CUDNN=0 ...), from overrides_from_env().
  std::map<std::string, bool> overrides;
};

// What runs.
struct ExecutionPolicy {
  std::string backend;  // "cpu" or "cuda"
  Precision precision = Precision::F32;
  // Kernel families (CUDA): the attention paths tried in this order, the convolution path.
  bool text_attention = false;   // streaming short-text cross-attention kernel (bf16)
  bool wgmma_attention = false;  // Hopper wgmma/TMA flash attention (bf16, sm_90 only)
  bool cudnn_attention = false;  // cuDNN fused flash attention (bf16)
  bool tf32_attention = false;   // TF32 tensor-core attention (tf32 precision)
  bool cudnn_conv = false;       // cuDNN convolutions (the VAE); else im2col + GEMM
  std::string describe() const;  // one line for -v
};

// Pure: the policy for `backend` ("cpu" / "cuda") on a device of compute capability `sm` (e.g. 90;
// 0 for the CPU). An impossible request (bf16 on the CPU, an unknown name) is an Error.
ExecutionPolicy resolve_policy(const PolicyRequest& request, const std::string& backend, int sm);

// The STDIT_CUDA_{BF16,TF32,TF32_ATTENTION,CUDNN,CUDNN_ATTENTION,TEXT_ATTENTION,WGMMA_ATTENTION}
// switches of the environment as overrides (names in lower case without the prefix).
std::map<std::string, bool> overrides_from_env();

}  // namespace stdit
