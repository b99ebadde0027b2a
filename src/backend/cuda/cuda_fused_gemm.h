// The bf16 projection into the residual stream with its epilogue fused (cutlass_bf16_gemm.h) as
// the CUDA backend's ops use it (cuda_linear.cu defines these): which operands it takes, asked by
// the ops and by the dry run (cuda_dry_run.cu) alike, and the op.
#pragma once

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_common.cuh"

namespace stdit {

// Whether the fused bf16 residual GEMM takes the weight w under ctx's policy: the policy asks for
// it (fused_bf16_gemm: Hopper, bf16 or fp8), the build has it, w is a contiguous BF16 [n, k] with
// n and k multiples of 8 (the pointers' alignment is checked when it runs) and k <= 2 n: where
// its main loop is short enough for the overlapped epilogue to pay (attention's and
// cross-attention's projections; fc2, k = 4 n, runs faster through cuBLASLt, docs/PERF.md).
bool fused_bf16_gemm_applies(const CudaContext& ctx, const Tensor& w);
// linear_residual() with such a weight: x [B, N, C] F32, y [B, N, K] BF16, both contiguous, no
// frame selection, an F32 bias and gate ([B, C] rows, stride(1) == 1) or none.
bool fused_bf16_residual_applies(const CudaContext& ctx, const Tensor& y, const Tensor& w, const Tensor& bias,
                                 const Tensor& gate, const FrameSelect& sel, const Tensor& x);

// x += gate * (y w^T + bias) as one GEMM whose epilogue reads and writes x (and writes x_copy, BF16
// [B, N, C], when given), for operands fused_bf16_residual_applies takes; false, with nothing
// written, when the kernel declines them (alignment): the caller takes cuBLASLt's path.
bool linear_residual_bf16(CudaContext& ctx, const Tensor& y, const Tensor& w, const Tensor& bias, const Tensor& gate,
                          Tensor& x, Tensor* x_copy);

}  // namespace stdit
