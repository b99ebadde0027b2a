// The fp8 precision's entry points shared by the CUDA backend's files (cuda_fp8.cu defines them).
#pragma once

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_common.cuh"

namespace stdit {

// core/fp8.h's rule for one row on the device, from the row's largest |value| and whether a value
// is not finite: mode 0 scaled (code = e4m3(v * inv)), 1 a zero row (codes 0, scale 1), 2 a row
// with NaN or Inf (codes e4m3(v), scale NaN). Shared by every kernel that writes codes, so that
// they write the same bits.
struct E4m3Row {
  int mode;
  float inv, scale;
};
__device__ __forceinline__ E4m3Row e4m3_row_rule(float amax, bool bad) {
  const float inv = __fdiv_rn(448.0f, amax);
  const int mode = bad ? 2 : (amax == 0.0f || isinf(inv)) ? 1 : 0;
  return {mode, inv, mode == 2 ? __int_as_float(0x7fc00000) : mode == 1 ? 1.0f : __fdiv_rn(amax, 448.0f)};
}
__device__ __forceinline__ uint32_t e4m3_code(float v, const E4m3Row& r) {
  return r.mode == 1 ? 0u
                     : static_cast<uint32_t>(
                           __nv_cvt_float_to_fp8(r.mode == 2 ? v : __fmul_rn(v, r.inv), __NV_SATFINITE, __NV_E4M3));
}

// The widest row a modulated LayerNorm writes as e4m3 codes (one warp per row, the row's values in
// registers): CudaBackend::operand_dtype() asks for codes only up to it.
constexpr int64_t kNormCodesMaxChannels = 1152;

// Whether the fused FP8 GEMM (cutlass_fp8_gemm.h) takes an [n, k] weight under ctx's policy: the
// policy asks for it, the build has it, and n and k are multiples of 16 (the pointers' alignment
// is checked when it runs).
bool fused_fp8_gemm_applies(const CudaContext& ctx, int64_t n, int64_t k);
// The same for the two ops that use it, from their operands' shapes and dtypes, asked by the ops
// and by the dry run (cuda_dry_run.cu) alike: linear() with an F8_E4M3 weight [n, k] into a BF16
// output (no activation or GELU), and linear_residual() with one (no frame selection).
bool fused_fp8_linear_applies(const CudaContext& ctx, int64_t n, int64_t k, DType out, Activation act);
bool fused_fp8_residual_applies(const CudaContext& ctx, const Tensor& y, const Tensor& w, const Tensor& bias,
                                const Tensor& gate, const FrameSelect& sel, const Tensor& x);

// linear_residual as one fused GEMM into x [B, N, C] F32 (the gate folded into the weight's column
// scales and the bias, per sample), for operands fused_fp8_residual_applies takes; false, with
// nothing written, when the kernel declines them (alignment): the caller takes the unfused path.
// be: the backend of ctx.
bool linear_residual_fp8(CudaBackend& be, CudaContext& ctx, const Tensor& y, const Tensor& w, const Tensor& bias,
                         const Tensor& gate, Tensor& x);

}  // namespace stdit
