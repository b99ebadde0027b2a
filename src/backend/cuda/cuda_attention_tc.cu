// TF32 flash attention (head dim <= 128) on the tensor cores with mma.sync.m16n8k8.
//
// One block of 4 warps per (batch index, head, 64 queries); each warp owns 16 query rows. Per tile
// of BK keys (K and V rounded to TF32 once, in shared memory): S = Q K^T on the tensor cores, scale,
// bias and key mask in f32, online softmax in f32, O += P V on the tensor cores with P rounded to
// TF32. The head dim is zero-padded to KS * 8. Semantics as the F32 kernel (cuda_attention.cu):
// all-masked rows ignore the mask, NaN propagates, no keys gives zeros. F32 q/k/v/out only: 16-bit
// (BF16 or F16) operands or outputs never come here (launch_attention_kernel checks).
//
// Trick: the key order inside each 8-key group is permuted for P V so that the S accumulator
// fragment (row, keys 2t and 2t+1) is directly the A fragment (row, k = t and t + 4): no shuffles.
#include <cmath>

#include "backend/cuda/cuda_attention.cuh"

namespace stdit::cuda {

namespace {

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// kWarps warps of 16 query rows each; BK keys per shared-memory tile. kExtras: a T5 bias or key
// mask is present (per-element checks); without it only the last, partial tile is checked.
template <int KS, int BK, int kWarps, bool kExtras>
__global__ void __launch_bounds__(kWarps * 32, 8 / kWarps < 2 ? 2 : 8 / kWarps)
    attention_tf32_kernel(AttnArgs a) {
  constexpr int kRows = 16 * kWarps;  // queries per block
  constexpr int kThreads = kWarps * 32;
  constexpr int DP = KS * 8;     // padded head dim
  constexpr int RS = DP + 4;     // shared row stride: = 4 (mod 8) keeps the fragment loads conflict-free
  constexpr int NT = BK / 8;     // 8-key groups per tile
  constexpr float kLog2e = 1.4426950408889634f;
  extern __shared__ float4 smem4[];
  uint32_t* ks = reinterpret_cast<uint32_t*>(smem4);
  uint32_t* vs = ks + BK * RS;
  uint32_t* qs = vs + BK * RS;  // [kRows][RS], TF32

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t bh = blockIdx.x, b = bh / a.h, head = bh - b * a.h;
  const int64_t q0 = blockIdx.y * static_cast<int64_t>(kRows);
  const int64_t qa = q0 + warp * 16 + g, qb = qa + 8;
  const int64_t d = a.d;

  const KvRange kr = kv_range(a, b, head);
  const int64_t k_begin = kr.begin, k_end = kr.end;
  const float* kbase = a.k.f32() + kr.koff;
  const float* vbase = a.v.f32() + kr.voff;

  const uint8_t* mask = nullptr;
  if (kExtras && a.key_mask) {
    mask = a.key_mask + b * a.nk;
    int any = 0;
    for (int64_t j = tid; j < a.nk; j += kThreads) any |= mask[j] != 0;
    if (!__syncthreads_or(any)) mask = nullptr;
  }

  // The block's Q rows, TF32, zero-padded (rows past Nq, columns past D).
  {
    const float* qp = a.q.f32() + lead_offset(a.lead, a.q.lead, b) + head * a.q.sh;
    for (int idx = tid; idx < kRows * DP; idx += kThreads) {
      const int r = idx / DP, e = idx - r * DP;
      qs[r * RS + e] = to_tf32(q0 + r < a.nq && e < d ? qp[(q0 + r) * a.q.sn + e] : 0.0f);
    }
  }
  const float* brow_a = nullptr;
  const float* brow_b = nullptr;
  if (kExtras && a.bias) {
    if (qa < a.nq) brow_a = a.bias + (head * a.nq + qa) * a.nk;
    if (qb < a.nq) brow_b = a.bias + (head * a.nq + qb) * a.nk;
  }
  const float sl2 = a.scale * kLog2e;  // scores kept in base 2: p = 2^(s*log2e - m)

  float o[KS][4];
#pragma unroll
  for (int k = 0; k < KS; ++k) o[k][0] = o[k][1] = o[k][2] = o[k][3] = 0.0f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;  // l: this thread's columns only

  // float4 tile loads when every row of K and V starts 16-byte aligned (uniform per block).
  const bool vec4 = (d & 3) == 0 && (a.k.sn & 3) == 0 && (a.v.sn & 3) == 0 &&
                    ((reinterpret_cast<uintptr_t>(kbase + k_begin * a.k.sn) |
                      reinterpret_cast<uintptr_t>(vbase + k_begin * a.v.sn)) & 15u) == 0;
  const uint32_t* qw = qs + (warp * 16 + g) * RS + t4;  // this thread's A-fragment base

  for (int64_t j0 = k_begin; j0 < k_end; j0 += BK) {
    const int rows = static_cast<int>(min(static_cast<int64_t>(BK), k_end - j0));
    const int groups = (rows + 7) / 8;  // 8-key groups holding keys; later groups are skipped
    __syncthreads();
    // Rows [rows, 8 * groups) and columns [d, DP) are written as zeros.
    if (vec4) {
      for (int idx = tid; idx < groups * 8 * (DP / 4); idx += kThreads) {
        const int r = idx / (DP / 4), e = (idx - r * (DP / 4)) * 4;
        float4 kv = make_float4(0.f, 0.f, 0.f, 0.f), vv = kv;
        if (r < rows && e < d) {
          kv = *reinterpret_cast<const float4*>(kbase + (j0 + r) * a.k.sn + e);
          vv = *reinterpret_cast<const float4*>(vbase + (j0 + r) * a.v.sn + e);
        }
        *reinterpret_cast<uint4*>(ks + r * RS + e) =
            make_uint4(to_tf32(kv.x), to_tf32(kv.y), to_tf32(kv.z), to_tf32(kv.w));
        *reinterpret_cast<uint4*>(vs + r * RS + e) =
            make_uint4(to_tf32(vv.x), to_tf32(vv.y), to_tf32(vv.z), to_tf32(vv.w));
      }
    } else {
      for (int idx = tid; idx < groups * 8 * DP; idx += kThreads) {
        const int r = idx / DP, e = idx - r * DP;
        const bool ok = r < rows && e < d;
        ks[r * RS + e] = to_tf32(ok ? kbase[(j0 + r) * a.k.sn + e] : 0.0f);
        vs[r * RS + e] = to_tf32(ok ? vbase[(j0 + r) * a.v.sn + e] : 0.0f);
      }
    }
    __syncthreads();

    // S = Q K^T: fragment s[n] holds (qa, key 8n + 2t4), (qa, 8n + 2t4 + 1), (qb, ...), (qb, ...).
    float s[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int k = 0; k < KS; ++k) {
      const uint32_t qf[4] = {qw[k * 8], qw[8 * RS + k * 8], qw[k * 8 + 4], qw[8 * RS + k * 8 + 4]};
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        if (n >= groups) continue;
        const uint32_t* kr = ks + (n * 8 + g) * RS + t4 + k * 8;
        mma_tf32(s[n], qf, kr[0], kr[4]);
      }
    }
    float u_a, u_b;
    online_softmax_tile<NT, KS, kExtras>(s, o, rows < BK, rows, t4, j0, k_begin, sl2, mask, brow_a, brow_b,
                                        m_a, m_b, l_a, l_b, u_a, u_b);
    // P = 2^(S - m), then O += P V with keys (2t4, 2t4 + 1) of group n as k = (t4, t4 + 4).
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      if (n >= groups) continue;
      const float p0 = exp2f(s[n][0] - u_a), p1 = exp2f(s[n][1] - u_a);
      const float p2 = exp2f(s[n][2] - u_b), p3 = exp2f(s[n][3] - u_b);
      l_a += p0 + p1;
      l_b += p2 + p3;
      const uint32_t pa[4] = {to_tf32(p0), to_tf32(p2), to_tf32(p1), to_tf32(p3)};
      const uint32_t* v0 = vs + (n * 8 + 2 * t4) * RS + g;
#pragma unroll
      for (int k = 0; k < KS; ++k) mma_tf32(o[k], pa, v0[k * 8], v0[RS + k * 8]);
    }
  }

  l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
  const bool empty = k_end <= k_begin;  // no keys: zeros, as the CPU backend
  float* op = a.out + lead_offset(a.lead, a.out_lead, b) + head * a.out_sh;
#pragma unroll
  for (int k = 0; k < KS; ++k) {
    const int d0 = k * 8 + 2 * t4;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t q = e < 2 ? qa : qb;
      const int dd = d0 + (e & 1);
      if (q < a.nq && dd < d) op[q * a.out_sn + dd] = empty ? 0.0f : o[k][e] / (e < 2 ? l_a : l_b);
    }
  }
}

template <int KS, int BK, int kWarps, bool kExtras>
void launch_w(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  constexpr int RS = KS * 8 + 4;
  constexpr int kRows = 16 * kWarps;
  const size_t smem = (2 * BK + kRows) * RS * sizeof(uint32_t);
  auto kern = attention_tf32_kernel<KS, BK, kWarps, kExtras>;
  // Per call (cheap): the attributes belong to the current device's context.
  STDIT_CHECK(smem <= c.smem_optin, "cuda attention: needs ", smem, " bytes of shared memory");
  STDIT_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  STDIT_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributePreferredSharedMemoryCarveout,
                                        cudaSharedmemCarveoutMaxShared));
  const int64_t bh = batch * a.h, qt = (a.nq + kRows - 1) / kRows;
  STDIT_CHECK(bh < (int64_t{1} << 31) && qt <= 65535, "cuda attention: grid too large (", bh,
              " x ", qt, ")");
  kern<<<dim3(static_cast<unsigned>(bh), static_cast<unsigned>(qt)), kWarps * 32, smem, c.stream>>>(a);
  check_launch("attention (tf32)");
}

template <int KS, int BK, int kWarps>
void launch_x(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  if (a.bias || a.key_mask) launch_w<KS, BK, kWarps, true>(c, a, batch);
  else launch_w<KS, BK, kWarps, false>(c, a, batch);
}

// Warps per block from the query count: short sequences (temporal attention over T frames) get
// small blocks, long ones 8 warps (128 queries) to share each K/V tile among more queries.
template <int KS, int BK>
void launch(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  if (a.nq <= 16) launch_x<KS, BK, 1>(c, a, batch);
  else if (a.nq <= 32) launch_x<KS, BK, 2>(c, a, batch);
  else launch_x<KS, BK, 8>(c, a, batch);
}

}  // namespace

bool launch_attention_tf32(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  const int64_t d = a.d;
  if (d <= 16) launch<2, 64>(c, a, batch);
  else if (d <= 32) launch<4, 64>(c, a, batch);
  else if (d <= 64) launch<8, 64>(c, a, batch);
  else if (d <= 72) launch<9, 64>(c, a, batch);
  else if (d <= 96) launch<12, 32>(c, a, batch);
  else if (d <= 128) launch<16, 32>(c, a, batch);
  else return false;
  return true;
}

}  // namespace stdit::cuda
