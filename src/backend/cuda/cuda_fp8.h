// The fp8 precision's entry points shared by the CUDA backend's files (cuda_fp8.cu defines them).
#pragma once

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_common.cuh"

namespace stdit {

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
