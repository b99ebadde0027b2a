// Shared by the CUDA backend tests (tests/gpu/*.cpp): the oracle (the CPU backend), the GPU
// backends in each numeric mode, random inputs, poisoned outputs, and the table of every op's
// worst error against its threshold (thresholds and their reasons: gpu_check.cpp).
#pragma once
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "core/tensor.h"

namespace stdit::gpu_test {

// Records one case of `op` and checks it against the op's threshold (an op without one fails).
void check(const std::string& op, const std::string& what, double err);
// The table of every op / fixture: cases, worst error, threshold, pass.
void print_table();

CpuBackend& host_be();      // the oracle
CudaBackend& gpu();         // TF32 GEMMs and attention, F32 storage
CudaBackend& gpu32();       // F32 GEMMs
CudaBackend& gpu16();       // the default: bf16 weight matrices, GEMMs and attention
CudaBackend& gpu16own();    // the bf16 path with the own attention kernels only (no cuDNN SDPA)
CudaBackend& gpu16notext(); // ... and without the short-text and wgmma kernels (flash kernel)
CudaBackend& gpu16cudnn();  // the default with cuDNN's attention in place of the wgmma kernel
CudaBackend& gpuf16();       // --precision fp16: the bf16 path in IEEE half (F16), no Hopper-only kernels
CudaBackend& gpuf16own();    // ... with the own attention kernels only (no cuDNN SDPA)
CudaBackend& gpuf16notext(); // ... and without the short-text kernel (flash kernel)

std::string data_dir();
Tensor randn(const Shape& s, uint64_t seed, float scale = 1.0f, float offset = 0.0f);
Tensor u8(const Shape& s, const std::vector<int>& v);
Tensor poisoned(CudaBackend& g, const Shape& s, DType dt = DType::F32);  // every byte 0xFF (NaN)
double err_vs(CudaBackend& g, const Tensor& dev, const Tensor& ref);
std::string S(const Shape& s);
Shape with_last(Shape s, int64_t last);
// Model-style [B, k*C] modulation tensor, chunk j: a [B, C] view with row stride k*C.
Tensor chunk(const Tensor& mod, int j, int64_t c);

struct Gpus {
  CudaBackend* be;
  const char* suffix;
};
std::vector<Gpus> both();       // TF32 and F32
std::vector<Gpus> all_modes();  // bf16, fp16, TF32, F32 (fixtures)

// Attention: TF32, F32, and the bf16 (fp16) kernels with F32 and with BF16 (F16) output.
struct AttnMode {
  CudaBackend* be;
  const char* suffix;
  DType out;
  const char* out_what;
  bool in16;  // q, k, v given as 16-bit tensors (the bf16 path stores qkv in bf16, fp16 in f16)
};
std::vector<AttnMode> attn_modes();
// A host F32 tensor on the device, in the backend's 16-bit type (matmul_dtype) when asked.
Tensor dev_in(CudaBackend& g, const Tensor& host, bool bf16);
// The rope frequency table of head dim d (as the model's rope.freqs).
Tensor rope_freqs(int64_t d);

}  // namespace stdit::gpu_test
