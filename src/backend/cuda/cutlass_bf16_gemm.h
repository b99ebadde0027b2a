// The bf16 precision's projection into the residual stream on Hopper (cutlass_bf16_gemm.cu, a
// CUTLASS 3 warp-specialized ping-pong kernel): the bias, gate and f32 sum applied to the
// accumulator in the epilogue, which also writes the new stream's bf16 copy that cross-attention's
// q reads, so that neither a folded weight nor a conversion pass exists. One warpgroup's epilogue
// (8 bytes of f32 stream read and written per output) overlaps the other's main loop, which is
// what beats cuBLASLt's beta = 1 GEMM where the main loop is short (K <= 2 N; docs/PERF.md).
//
// For each batch b < batch, with D_b[m, n] row-major f32, A_b [m, k] and the one weight B [n, k]
// (bf16, f32 accumulation):
//   acc[i, j] = sum_k A_b[i, k] * B[j, k]
//   D_b[i, j] += (acc[i, j] + bias_b[j]) * gate_b[j]
//   and, with d_copy, d_copy_b = bf16(D_b) (the sum just written, rounded to nearest even)
// A null bias is 0, a null gate 1. This header is plain C++: only the .cu sees CUTLASS.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace stdit::cuda {

struct Bf16GemmProblem {
  int64_t m = 0, n = 0, k = 0, batch = 1;
  const void* a = nullptr;  // bf16 [batch, m, k], row-major
  int64_t a_batch_stride = 0;  // elements
  const void* b = nullptr;  // bf16 [n, k], row-major (one weight for every batch)
  const float* bias = nullptr;  // [n] per batch, bias_batch_stride apart (0: shared); null: none
  int64_t bias_batch_stride = 0;
  const float* gate = nullptr;  // [n] per batch, gate_batch_stride apart; null: none
  int64_t gate_batch_stride = 0;
  void* d = nullptr;  // f32 [batch, m, n], read and written
  int64_t d_batch_stride = 0;
  void* d_copy = nullptr;  // bf16 [batch, m, n] with d's strides; null: not written
};

// Whether this build has the kernels (CUTLASS headers found at configure time, sm_90a compiled).
bool cutlass_bf16_built();
// Runs the problem on `stream` (a device of compute capability 9.0, num_sms multiprocessors) and
// returns true; returns false with nothing launched when the kernels are not built or the problem's
// sizes or alignments do not suit them (k and n multiples of 8, 16-byte aligned pointers and batch
// strides): the caller takes cuBLASLt's path.
bool cutlass_bf16_residual_gemm(const Bf16GemmProblem& p, int num_sms, cudaStream_t stream);

}  // namespace stdit::cuda
