// Shared by the attention kernels (cuda_attention.cu: F32 on the CUDA cores; cuda_attention_tc.cu:
// TF32 on the tensor cores).
#pragma once
#include "backend/cuda/cuda_common.cuh"

namespace stdit::cuda {

// Where a [..., N, H, D] operand lives: leading-dim strides plus the N and H strides.
struct Operand {
  const float* p;
  LeadStrides lead;
  int64_t sn, sh;
};

struct AttnArgs {
  Operand q, k, v;
  float* out;
  LeadStrides out_lead;
  int64_t out_sn, out_sh;
  LeadShape lead;             // shared leading ("batch") shape of q and out (and k/v unless packed)
  bool kv_packed;             // cross-attention: k/v have no leading dims; rows [begin[b], begin[b+1])
  const int* kv_begin;        // device [batch + 1] when kv_packed
  int64_t h, nq, nk, d;       // nk: keys per batch index (self-attention)
  float scale;
  const float* bias;          // [H, Nq, Nk] or nullptr
  const uint8_t* key_mask;    // [batch, Nk] or nullptr
};

// The keys of batch index b for one head: rows [begin, end) of k/v, whose row 0 is at kbase/vbase.
struct KvRange {
  int64_t begin, end;
  const float* kbase;
  const float* vbase;
};
__device__ inline KvRange kv_range(const AttnArgs& a, int64_t b, int64_t head) {
  KvRange r{0, a.nk, a.k.p + head * a.k.sh, a.v.p + head * a.v.sh};
  if (a.kv_packed) {
    r.begin = a.kv_begin[b];
    r.end = a.kv_begin[b + 1];
  } else {
    r.kbase += lead_offset(a.lead, a.k.lead, b);
    r.vbase += lead_offset(a.lead, a.v.lead, b);
  }
  return r;
}

// The TF32 flash-attention kernel for D <= 128; false (nothing launched) for other D.
bool launch_attention_tf32(const CudaContext& c, const AttnArgs& a, int64_t batch);

}  // namespace stdit::cuda
