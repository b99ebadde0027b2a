// Shared by the attention kernels (cuda_attention.cu: F32 on the CUDA cores; cuda_attention_tc.cu:
// TF32 and cuda_attention_bf16.cu: BF16 on the tensor cores).
#pragma once
#include "backend/cuda/cuda_common.cuh"

namespace stdit::cuda {

// Where a [..., N, H, D] operand lives: leading-dim strides plus the N and H strides.
struct Operand {
  const void* p;  // const float* (F32) or const __nv_bfloat16* (BF16, bf16 kernel only)
  __host__ __device__ const float* f32() const { return static_cast<const float*>(p); }
  LeadStrides lead;
  int64_t sn, sh;
};

struct AttnArgs {
  Operand q, k, v;
  float* out;                 // F32 output, or
  __nv_bfloat16* out_bf16;    // BF16 output (only the bf16 kernel writes it)
  LeadStrides out_lead;
  int64_t out_sn, out_sh;
  LeadShape lead;             // shared leading ("batch") shape of q and out (and k/v unless packed)
  bool in_bf16;               // q, k, v are BF16 (only the bf16 kernel reads them)
  bool kv_packed;             // cross-attention: k/v have no leading dims; rows [begin[b], begin[b+1])
  const int* kv_begin;        // device [batch + 1] when kv_packed
  int64_t h, nq, nk, d;       // nk: keys per batch index (self-attention)
  float scale;
  const float* bias;          // [H, Nq, Nk] or nullptr
  const uint8_t* key_mask;    // [batch, Nk] or nullptr
};

// The keys of batch index b for one head: rows [begin, end) of k/v, whose row 0 is at element
// offset koff/voff from a.k.p/a.v.p.
struct KvRange {
  int64_t begin, end;
  int64_t koff, voff;
};
__device__ inline KvRange kv_range(const AttnArgs& a, int64_t b, int64_t head) {
  KvRange r{0, a.nk, head * a.k.sh, head * a.v.sh};
  if (a.kv_packed) {
    r.begin = a.kv_begin[b];
    r.end = a.kv_begin[b + 1];
  } else {
    r.koff += lead_offset(a.lead, a.k.lead, b);
    r.voff += lead_offset(a.lead, a.v.lead, b);
  }
  return r;
}

// The TF32 flash-attention kernel for D <= 128; false (nothing launched) for other D.
bool launch_attention_tf32(const CudaContext& c, const AttnArgs& a, int64_t batch);
// The BF16 flash-attention kernel (cuda_attention_bf16.cu) for D <= 128; false for other D.
bool launch_attention_bf16(const CudaContext& c, const AttnArgs& a, int64_t batch);
inline bool bf16_attention_applies(const CudaContext& c, int64_t d) {
  return c.options.bf16 && c.options.tf32_attention && d <= 128;
}

}  // namespace stdit::cuda
