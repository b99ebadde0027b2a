// The fp8 precision's fused GEMM on Hopper (cutlass_fp8_gemm.cu, CUTLASS 3 warp-specialized
// kernels): the e4m3 product with the per-row scales of both operands, the bias and the activation
// applied in the GEMM's epilogue, so that neither an f32 product nor a second pass over it exists.
//
// For each batch b < batch, with D_b[m, n] row-major:
//   acc[i, j] = sum_k A_b[i, k] * B[j, k]                       (f32 accumulation, e4m3 codes)
//   v[i, j]   = (acc[i, j] * row_scale_b[i]) * col_scale_b[j] + bias_b[j]
//   Bf16:          D_b = bf16(v)
//   Bf16Gelu:      D_b = bf16(gelu_tanh(v))
//   F32Accumulate: D_b += v                                      (D f32: the residual stream)
//   E4m3:          D_b = e4m3(v * out_inv_scale_b[i])            (D e4m3 codes for the next GEMM;
//   E4m3Gelu:      D_b = e4m3(gelu_tanh(v) * out_inv_scale_b[i])  to nearest, saturating)
// gelu_tanh: cutlass_gemm.cuh's Gelu<false> (exponential form), or with tanh_gelu its Gelu<true>
// (the hardware's tanh). This header is plain C++ (no CUDA types): the backend calls it; only the
// .cu sees CUTLASS.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace stdit::cuda {

enum class Fp8Epilogue { Bf16, Bf16Gelu, F32Accumulate, E4m3, E4m3Gelu };

struct Fp8GemmProblem {
  int64_t m = 0, n = 0, k = 0, batch = 1;
  const void* a = nullptr;  // e4m3 [batch, m, k], row-major
  int64_t a_batch_stride = 0;  // elements
  const void* b = nullptr;  // e4m3 [n, k], row-major (one weight for every batch)
  const float* row_scale = nullptr;  // [batch * m]
  const float* col_scale = nullptr;  // [n] per batch, col_scale_batch_stride apart (0: shared)
  int64_t col_scale_batch_stride = 0;
  const float* bias = nullptr;  // [n] per batch, bias_batch_stride apart; null: no bias
  int64_t bias_batch_stride = 0;
  const float* out_inv_scale = nullptr;  // [batch * m]: E4m3 and E4m3Gelu only
  void* d = nullptr;  // bf16, f32 or e4m3 [batch, m, n]
  int64_t d_batch_stride = 0;
  Fp8Epilogue epilogue = Fp8Epilogue::Bf16;
  bool tanh_gelu = false;  // GELUs through the hardware's tanh (schedule 0; cutlass_gemm.cuh Gelu<true>)
  int config = 0;  // the kernel's schedule (cutlass_fp8_gemm.cu): 0 fast ping-pong, 1 promoted, 2 fast cooperative 256x128
};

// Whether this build has the kernels (CUTLASS headers found at configure time, sm_90a compiled).
bool cutlass_fp8_built();
// Runs the problem on `stream` (a device of compute capability 9.0, num_sms multiprocessors) and
// returns true; returns false with nothing launched when the kernels are not built or the problem's
// sizes or alignments do not suit them (k and n multiples of 16, 16-byte aligned pointers): the
// caller takes the unfused path.
bool cutlass_fp8_gemm(const Fp8GemmProblem& p, int num_sms, cudaStream_t stream);

}  // namespace stdit::cuda
