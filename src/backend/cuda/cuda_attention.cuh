// Shared by the attention kernels (cuda_attention.cu: F32 on the CUDA cores; cuda_attention_tc.cu:
// TF32, cuda_attention_bf16.cu: BF16 (or F16 under --precision fp16) and cuda_attention_wgmma.cu:
// BF16 on the tensor cores; cuda_sdpa.cu: cuDNN).
#pragma once
#include "backend/cuda/cuda_common.cuh"

namespace stdit::cuda {

// Where a [..., N, H, D] operand lives: leading-dim strides plus the N and H strides.
struct Operand {
  const void* p;  // const float* (F32), or the 16-bit type of AttnArgs::f16 (in_bf16)
  __host__ __device__ const float* f32() const { return static_cast<const float*>(p); }
  LeadStrides lead;
  int64_t sn, sh;
};

struct AttnArgs {
  Operand q, k, v;
  float* out;                 // F32 output, or
  void* out_bf16;             // 16-bit output, BF16 or F16 per f16 (the bf16 kernels and the GEMM path write it)
  LeadStrides out_lead;
  int64_t out_sn, out_sh;
  LeadShape lead;             // shared leading ("batch") shape of q and out (and k/v unless packed)
  bool in_bf16;               // q, k, v are 16-bit (the bf16 kernels and the GEMM path read them)
  // The 16-bit format of the call: in_bf16's operands and out_bf16 hold __half (F16) when true,
  // __nv_bfloat16 when false; F32 operands of the bf16 kernels are rounded to it while loading.
  bool f16;
  bool kv_packed;             // cross-attention: k/v have no leading dims; rows [begin[b], begin[b+1])
  const int* kv_begin;        // device [batch + 1] when kv_packed
  int64_t h, nq, nk, d;       // nk: keys per batch index (self-attention)
  float scale;
  const float* bias;          // [H, Nq, Nk] or nullptr
  const uint8_t* key_mask;    // [batch, Nk] or nullptr
  template <typename H>
  __host__ __device__ H* out16() const { return static_cast<H*>(out_bf16); }
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

// One key tile of the online softmax shared by the TF32 and bf16 flash-attention kernels, for
// the two query rows (a, b) a thread holds in an m16n8 accumulator layout: scales the scores
// s (base 2), masks keys past `rows` and, with kExtras, masked keys and the T5 bias; updates the
// running maxima m and sums l, rescales the output accumulators o, and returns in u_a/u_b what
// to subtract before exp2 (0 while a row has seen only masked keys). Column of s[n][e]:
// n * 8 + 2 * t4 + (e & 1); key row of column col: j0 + col - k_begin.
template <int NT, int NO, bool kExtras>
__device__ __forceinline__ void online_softmax_tile(float (&s)[NT][4], float (&o)[NO][4], bool partial,
                                                    int rows, int t4, int64_t j0, int64_t k_begin,
                                                    float sl2, const uint8_t* mask, const float* brow_a,
                                                    const float* brow_b, float& m_a, float& m_b,
                                                    float& l_a, float& l_b, float& u_a, float& u_b) {
  constexpr float kLog2e = 1.4426950408889634f;
  if (kExtras || partial) {
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = n * 8 + 2 * t4 + (e & 1);
        const int64_t jr = j0 + col - k_begin;
        bool valid = col < rows;
        float v = s[n][e] * sl2;
        if (kExtras) {
          if (valid && mask && !mask[jr]) valid = false;
          const float* br = e < 2 ? brow_a : brow_b;
          if (valid && br) v += br[jr] * kLog2e;
        }
        s[n][e] = valid ? v : -INFINITY;
      }
  } else {
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] *= sl2;
  }
  float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    mx_a = fmaxf(mx_a, fmaxf(s[n][0], s[n][1]));
    mx_b = fmaxf(mx_b, fmaxf(s[n][2], s[n][3]));
  }
  // Row maxima over the 4 threads of a row group.
  mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
  mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
  mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
  mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
  const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
  u_a = mn_a == -INFINITY ? 0.0f : mn_a;
  u_b = mn_b == -INFINITY ? 0.0f : mn_b;
  const float c_a = exp2f(m_a - u_a), c_b = exp2f(m_b - u_b);
  l_a *= c_a;
  l_b *= c_b;
#pragma unroll
  for (int j = 0; j < NO; ++j) {
    o[j][0] *= c_a;
    o[j][1] *= c_a;
    o[j][2] *= c_b;
    o[j][3] *= c_b;
  }
  m_a = mn_a;
  m_b = mn_b;
}

// The TF32 flash-attention kernel for D <= 128; false (nothing launched) for other D.
bool launch_attention_tf32(const CudaContext& c, const AttnArgs& a, int64_t batch);
// How many of a's lead dims (from the inside) fold into one batch dim for q, k, v and out alike
// (strides nest); `inner` gets their element count (cuda_sdpa.cu).
int fold_lead(const AttnArgs& a, int64_t& inner);
// BF16 attention on the Hopper wgmma kernel (cuda_attention_wgmma.cu) for head dims 64/72/80,
// >= 64 queries, no bias or mask, lead dims that fold: self-attention over >= 64 keys, or
// cross-attention (kv_packed); false (nothing launched) elsewhere, F16 (a.f16) included.
bool launch_attention_wgmma(const CudaContext& c, const AttnArgs& a, int64_t batch);
// The flash-attention kernel of cuda_attention_bf16.cu (16-bit tensor-core operands in a.f16's
// format) for D <= 128; false for other D.
bool launch_attention_bf16(const CudaContext& c, const AttnArgs& a, int64_t batch);
// Its 32-key-tile variant for 16-bit (BF16 or F16) self-attention over 17-32 keys, D <= 80, rows
// 16-byte aligned, no bias or mask; false (nothing launched) elsewhere.
bool launch_attention_short_bf16(const CudaContext& c, const AttnArgs& a, int64_t batch);
// Cross-attention (kv_packed) of 16-bit (BF16 or F16) q/k/v/out to texts of at most 64 tokens per
// sample (max_kv_len): the streaming kernel of cuda_attention_bf16.cu; false where it does not apply.
bool launch_cross_attention_text_bf16(const CudaContext& c, const AttnArgs& a, int64_t batch,
                                      int max_kv_len);
// cuDNN's fused flash attention (cuda_sdpa.cu) for BF16 or F16 q/k/v/out without bias or key mask,
// head dim a multiple of 8 up to 128 and at least 64 queries; kv_begin: the host copy of
// a.kv_begin when kv_packed. false (nothing launched) where it does not apply.
bool launch_attention_cudnn(CudaContext& c, const AttnArgs& a, int64_t batch,
                            const std::vector<int>* kv_begin);
// The bf16 path keeps 16-bit (BF16, or F16 under --precision fp16) operands and outputs as they
// are: its kernels read and write them up to head dim 128, the GEMM path (attention_by_gemm)
// beyond it.
inline bool bf16_attention_operands(const CudaContext& c) { return c.options.bf16 && c.options.tf32_attention; }
// Whether the kernels write an F32 scratch converted into a 16-bit (BF16 or F16) `out` afterwards:
// off the bf16 path, and on the GEMM path (D > 128) from F32 operands (in_bf16: the kernels read
// 16-bit operands).
inline bool attention_out_converted(const CudaContext& c, DType out, int64_t d, bool in_bf16) {
  return out != DType::F32 && (!bf16_attention_operands(c) || (d > 128 && !in_bf16));
}
// attention_by_gemm's scratch for a call (0 for head dims <= 128, which the flash kernels take);
// bf16: 16-bit operands (BF16 or F16: the same bytes).
size_t attention_gemm_scratch_bytes(int64_t nq, int64_t max_nk, int64_t d, bool bf16);

}  // namespace stdit::cuda
