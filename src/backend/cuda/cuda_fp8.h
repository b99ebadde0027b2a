// The fp8 precision's entry points shared by the CUDA backend's files (cuda_fp8.cu defines them).
#pragma once

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_common.cuh"

namespace stdit {

// Whether the fused FP8 GEMM (cutlass_fp8_gemm.h) takes an [n, k] weight under ctx's policy: the
// policy asks for it, the build has it, and n and k are multiples of 16 (the pointers' alignment
// is checked when it runs). The dry run (cuda_dry_run.cu) asks the same.
bool fused_fp8_gemm_applies(const CudaContext& ctx, int64_t n, int64_t k);

// linear_residual with an F8_E4M3 weight as one fused GEMM into x [B, N, C] F32 (the gate folded
// into the weight's column scales and the bias, per sample); false, with nothing written, when the
// fused GEMM does not apply (the caller takes the unfused path). be: the backend of ctx.
bool linear_residual_fp8(CudaBackend& be, CudaContext& ctx, const Tensor& y, const Tensor& w, const Tensor& bias,
                         const Tensor& gate, Tensor& x);

}  // namespace stdit
