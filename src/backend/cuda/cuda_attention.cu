// CUDA attention: q/k RMSNorm + interleaved RoPE in place, flash-style self-attention over strided
// [..., N, H, D] views (optional T5 bias and key mask), block-diagonal cross-attention.
//
// Which kernel runs a call is choose_attention()'s (backend/attention_choice.h): dispatch_attention
// reads the call's facts, walks the candidates in order and runs the first whose launcher takes
// it, counting what ran. On the bf16 path (BF16, or F16 under --precision fp16: AttnArgs::f16):
// the short-text kernel (cuda_attention_bf16.cu), the Hopper wgmma kernel (cuda_attention_wgmma.cu,
// BF16 only), cuDNN's fused flash attention (cuda_sdpa.cu), the short-sequence and flash kernels
// (cuda_attention_bf16.cu). Otherwise: D <= 128 with TF32
// allowed -> the tensor-core flash kernel (cuda_attention_tc.cu); D <= 128 in F32 -> the flash
// kernel here, F32 on the CUDA cores: one block per (batch index, head, query tile), TPQ threads
// share one query row (each holds DPT of its D values in registers), key/value tiles of BK rows
// stream through shared memory, online softmax in f32; D > 128 (VAE mid-block) -> scores
// materialised per query chunk with cuBLASLt GEMMs and an exact row softmax. NaN propagates as on
// the CPU in all three.
#include <algorithm>
#include <type_traits>
#include <cmath>
#include <string>
#include <vector>

#include "backend/cuda/cuda_attention.cuh"

namespace stdit {

using namespace cuda;

namespace {

// ---------------------------------------------------------------------------- qk_norm_rope -----

constexpr int kRopeWarps = 8;

// The rotation table of rotary embedding: cs[i * pairs + j] = (cos, sin) of angle i * freqs[j]
// for the positions i < n, angle in f32 (what the kernel below computed per pair before: the same
// sincosf of the same product, so the same bits; once per position instead of once per head and
// batch index).
__global__ void rope_table_kernel(const float* __restrict__ freqs, int64_t n, int pairs, float2* __restrict__ cs) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n * pairs;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t / pairs;
    const int j = static_cast<int>(t - i * pairs);
    float sn_a, cs_a;
    sincosf(static_cast<float>(i) * freqs[j], &sn_a, &cs_a);
    cs[t] = make_float2(cs_a, sn_a);
  }
}

// kRopeLanes lanes per (batch, n, head) vector of D values, each lane owning the pairs
// (x[2j], x[2j+1]) with j = lane + kRopeLanes * it, it < kIt (kIt * kRopeLanes >= D / 2 pairs):
// head dims of 64-128 keep every lane busy. The pairs stay in registers between the statistics
// and the output; with vec2 (16-bit, even D and strides) a pair is one 4-byte load/store. In place
// on a F32, BF16 or F16 view; statistics and rotation in f32, the rotation's cos and sin from the
// table above.
constexpr int kRopeLanes = 8;
template <typename T, int kIt>
__global__ void __launch_bounds__(kRopeWarps * 32)
    qk_norm_rope_kernel(T* q, LeadShape lsh, LeadStrides lst, int64_t nvec, int64_t n,
                        int64_t h, int64_t d, int64_t sn, int64_t sh,
                        const float* __restrict__ w, const float2* __restrict__ rot, float eps,
                        bool vec2) {
  const int sub = threadIdx.x % kRopeLanes;
  const int64_t vec = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kRopeLanes;
  const bool live = vec < nvec;  // dead lanes still take part in the group's shuffles
  const int64_t v = live ? vec : 0;
  const int64_t b = v / (n * h), rem = v - b * n * h, i = rem / h, head = rem - i * h;
  T* x = q + lead_offset(lsh, lst, b) + i * sn + head * sh;
  const int pairs = static_cast<int>((d + 1) / 2);
  float v0[kIt], v1[kIt];
  float ss = 0;
#pragma unroll
  for (int it = 0; it < kIt; ++it) {
    const int j = sub + it * kRopeLanes;
    v0[it] = v1[it] = 0.0f;
    if (live && j < pairs) {
      if constexpr (!std::is_same_v<T, float>) {
        if (vec2) {
          const float2 f = unpack_half2<T>(*reinterpret_cast<const uint32_t*>(x + 2 * j));
          v0[it] = f.x;
          v1[it] = f.y;
        } else {
          v0[it] = load_f(x + 2 * j);
          v1[it] = 2 * j + 1 < d ? load_f(x + 2 * j + 1) : 0.0f;
        }
      } else {
        v0[it] = load_f(x + 2 * j);
        v1[it] = 2 * j + 1 < d ? load_f(x + 2 * j + 1) : 0.0f;
      }
    }
    ss += v0[it] * v0[it] + v1[it] * v1[it];
  }
#pragma unroll
  for (int o = kRopeLanes / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (!live) return;
  const float r = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
#pragma unroll
  for (int it = 0; it < kIt; ++it) {
    const int j = sub + it * kRopeLanes;
    if (j >= pairs) break;
    const int e0 = 2 * j, e1 = e0 + 1;
    const float x0 = w[e0] * (v0[it] * r);
    if (e1 >= d) {  // odd D without rope: the last value alone
      store_out(x + e0, x0);
      break;
    }
    const float x1 = w[e1] * (v1[it] * r);
    float y0 = x0, y1 = x1;
    if (rot) {
      // Interleaved pairs rotate by angle i * freqs[j].
      const float2 r2 = rot[i * pairs + j];
      y0 = x0 * r2.x - x1 * r2.y;
      y1 = x1 * r2.x + x0 * r2.y;
    }
    if constexpr (!std::is_same_v<T, float>) {
      if (vec2) {
        *reinterpret_cast<uint32_t*>(x + e0) = pack_half2<T>(y0, y1);
        continue;
      }
    }
    store_out(x + e0, y0);
    store_out(x + e1, y1);
  }
}

// The same for 16-bit q (element type H: BF16 or F16) whose heads lie side by side (head stride D,
// D % 4 == 0) in rows of (heads * D =) 128 k values (k <= kRowChunks; STDiT3's 16 x 72 = 1152):
// one warp per (batch, n) row, each lane holding 4 consecutive values of every 128-column chunk
// (8-byte loads and stores, the row read and written once, whole rows per warp). A head's sum of
// squares is its groups' partial sums added in group order by one lane (shared memory; a fixed
// order, so the same bits every run); per element the arithmetic of the kernel above (the
// statistics' sum in another order).
constexpr int kRowChunks = 9;
template <typename H>
__global__ void __launch_bounds__(kRopeWarps * 32)
    qk_norm_rope_rows_kernel(H* q, LeadShape lsh, LeadStrides lst, int64_t rows, int64_t n, int h,
                             int d, int chunks, int64_t sn, const float* __restrict__ w,
                             const float2* __restrict__ rot, float eps) {
  __shared__ float s_part[kRopeWarps][kRowChunks * 32];
  __shared__ float s_r[kRopeWarps][kRowChunks * 32];  // per head (at most one per group)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kRopeWarps) + warp;
  if (row >= rows) return;
  const int64_t b = row / n, i = row - b * n;
  H* x = q + lead_offset(lsh, lst, b) + i * sn;
  const int per_head = d / 4;  // groups of 4 per head
  float4 v[kRowChunks];
#pragma unroll
  for (int j = 0; j < kRowChunks; ++j)
    if (j < chunks) {
      const uint2 u = reinterpret_cast<const uint2*>(x)[lane + 32 * j];
      const float2 lo = unpack_half2<H>(u.x), hi = unpack_half2<H>(u.y);
      v[j] = make_float4(lo.x, lo.y, hi.x, hi.y);
      s_part[warp][lane + 32 * j] = v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
    }
  __syncwarp();
  for (int hd = lane; hd < h; hd += 32) {
    float ss = 0;
    for (int g = 0; g < per_head; ++g) ss += s_part[warp][hd * per_head + g];
    s_r[warp][hd] = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
  }
  __syncwarp();
  const int pairs = d / 2;
#pragma unroll
  for (int j = 0; j < kRowChunks; ++j)
    if (j < chunks) {
      const int gi = lane + 32 * j, head = gi / per_head, e0 = 4 * (gi - head * per_head);
      const float r = s_r[warp][head];
      float y[4] = {w[e0] * (v[j].x * r), w[e0 + 1] * (v[j].y * r), w[e0 + 2] * (v[j].z * r),
                    w[e0 + 3] * (v[j].w * r)};
      if (rot) {
#pragma unroll
        for (int p2 = 0; p2 < 2; ++p2) {
          const float2 r2 = rot[i * pairs + e0 / 2 + p2];
          const float x0 = y[2 * p2], x1 = y[2 * p2 + 1];
          y[2 * p2] = x0 * r2.x - x1 * r2.y;
          y[2 * p2 + 1] = x1 * r2.x + x0 * r2.y;
        }
      }
      reinterpret_cast<uint2*>(x)[lane + 32 * j] = make_uint2(pack_half2<H>(y[0], y[1]), pack_half2<H>(y[2], y[3]));
    }
}

// ---------------------------------------------------------------------------- attention --------

// Shared-memory layout of one key (or value) row: TPQ segments of DPT values, segment stride SS
// (padded so that the TPQ float4 reads of one query land in distinct bank groups).
template <int TPQ, int DPT>
struct RowLayout {
  static constexpr int SS = (DPT % 32 == 0 || DPT % 32 == 16) ? DPT + 4 : DPT;
  static constexpr int RS = TPQ * SS;  // row stride (floats)
  __device__ static int index(int e) { return (e / DPT) * SS + (e % DPT); }
};

template <int TPQ, int DPT, int BQ, int BK>
__global__ void __launch_bounds__(BQ * TPQ) attention_kernel(AttnArgs a) {
  static_assert(DPT % 4 == 0, "DPT must be a multiple of 4");
  static_assert(TPQ <= 32 && (TPQ & (TPQ - 1)) == 0, "TPQ must be a power of two <= 32");
  using L = RowLayout<TPQ, DPT>;
  constexpr int kThreads = BQ * TPQ;
  extern __shared__ float4 smem4[];
  float* ks = reinterpret_cast<float*>(smem4);
  float* vs = ks + BK * L::RS;

  const int tid = threadIdx.x, sub = tid % TPQ, ql = tid / TPQ;
  const int64_t bh = blockIdx.x, b = bh / a.h, head = bh - b * a.h;
  const int64_t qi = blockIdx.y * static_cast<int64_t>(BQ) + ql;
  const bool valid_q = qi < a.nq;
  const int64_t d = a.d;

  // Key range of this batch index.
  const KvRange kr = kv_range(a, b, head);
  const int64_t k_begin = kr.begin, k_end = kr.end;
  const float* kbase = a.k.f32() + kr.koff;
  const float* vbase = a.v.f32() + kr.voff;

  // Key mask of this batch index; ignored when it masks every key (as the CPU backend does).
  const uint8_t* mask = a.key_mask ? a.key_mask + b * a.nk : nullptr;
  if (mask) {
    int any = 0;
    for (int64_t j = tid; j < a.nk; j += kThreads) any |= mask[j] != 0;
    if (!__syncthreads_or(any)) mask = nullptr;
  }

  // This thread's slice of its query row (zero beyond D and for rows past Nq).
  float qr[DPT], o[DPT];
  {
    const float* qp = a.q.f32() + lead_offset(a.lead, a.q.lead, b) + qi * a.q.sn + head * a.q.sh;
#pragma unroll
    for (int i = 0; i < DPT; ++i) {
      const int64_t e = static_cast<int64_t>(sub) * DPT + i;
      qr[i] = (valid_q && e < d) ? qp[e] : 0.0f;
      o[i] = 0.0f;
    }
  }
  const float* brow = (a.bias && valid_q) ? a.bias + (head * a.nq + qi) * a.nk : nullptr;
  float m = -INFINITY, l = 0.0f;

  // Zero the padding of the shared rows once (never overwritten by the tile loads).
  for (int idx = tid; idx < 2 * BK * L::RS; idx += kThreads) ks[idx] = 0.0f;

  for (int64_t j0 = k_begin; j0 < k_end; j0 += BK) {
    __syncthreads();
    const int64_t rows = min(static_cast<int64_t>(BK), k_end - j0);
    for (int64_t idx = tid; idx < BK * d; idx += kThreads) {
      const int64_t jj = idx / d, e = idx - jj * d;
      const int si = static_cast<int>(jj) * L::RS + L::index(static_cast<int>(e));
      if (jj < rows) {
        ks[si] = kbase[(j0 + jj) * a.k.sn + e];
        vs[si] = vbase[(j0 + jj) * a.v.sn + e];
      } else {
        ks[si] = 0.0f;
        vs[si] = 0.0f;
      }
    }
    __syncthreads();

    float s[BK];
    float tile_max = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < BK; ++jj) {
      const float4* kr = reinterpret_cast<const float4*>(ks + jj * L::RS + sub * L::SS);
      float part = 0.0f;
#pragma unroll
      for (int i = 0; i < DPT / 4; ++i) {
        const float4 kv = kr[i];
        part += qr[4 * i] * kv.x;
        part += qr[4 * i + 1] * kv.y;
        part += qr[4 * i + 2] * kv.z;
        part += qr[4 * i + 3] * kv.w;
      }
#pragma unroll
      for (int off = TPQ / 2; off > 0; off >>= 1) part += __shfl_xor_sync(0xffffffffu, part, off);
      const int64_t j = j0 + jj;
      bool valid_k = jj < rows;
      float sc = part * a.scale;
      if (valid_k) {
        const int64_t jr = j - k_begin;  // key index within this batch index's range
        if (brow) sc += brow[jr];
        if (mask && !mask[jr]) valid_k = false;
      }
      s[jj] = valid_k ? sc : -INFINITY;
      tile_max = fmaxf(tile_max, s[jj]);
    }
    const float m_new = fmaxf(m, tile_max);
    const float corr = (m_new == -INFINITY) ? 1.0f : expf(m - m_new);
    l *= corr;
#pragma unroll
    for (int i = 0; i < DPT; ++i) o[i] *= corr;
#pragma unroll
    for (int jj = 0; jj < BK; ++jj) {
      const float p = (s[jj] == -INFINITY) ? 0.0f : expf(s[jj] - m_new);
      l += p;
      const float4* vr = reinterpret_cast<const float4*>(vs + jj * L::RS + sub * L::SS);
#pragma unroll
      for (int i = 0; i < DPT / 4; ++i) {
        const float4 vv = vr[i];
        o[4 * i] += p * vv.x;
        o[4 * i + 1] += p * vv.y;
        o[4 * i + 2] += p * vv.z;
        o[4 * i + 3] += p * vv.w;
      }
    }
    m = m_new;
  }

  if (!valid_q) return;
  float* op = a.out + lead_offset(a.lead, a.out_lead, b) + qi * a.out_sn + head * a.out_sh;
  const bool empty = k_end <= k_begin;  // no keys: the CPU backend writes zeros
#pragma unroll
  for (int i = 0; i < DPT; ++i) {
    const int64_t e = static_cast<int64_t>(sub) * DPT + i;
    if (e < d) op[e] = empty ? 0.0f : o[i] / l;
  }
}

template <int TPQ, int DPT, int BQ, int BK>
void launch_attention(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  using L = RowLayout<TPQ, DPT>;
  const size_t smem = 2 * BK * L::RS * sizeof(float);
  auto kern = attention_kernel<TPQ, DPT, BQ, BK>;
  if (smem > 48 * 1024) {
    STDIT_CHECK(smem <= c.smem_optin, "cuda attention: needs ", smem, " bytes of shared memory");
    STDIT_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
  }
  const int64_t bh = batch * a.h, qt = (a.nq + BQ - 1) / BQ;
  STDIT_CHECK(bh < (int64_t{1} << 31) && qt <= 65535, "cuda attention: grid too large (", bh,
              " x ", qt, ")");
  kern<<<dim3(static_cast<unsigned>(bh), static_cast<unsigned>(qt)), BQ * TPQ, smem, c.stream>>>(a);
  check_launch("attention");
}

// D <= 128: 4 threads per query; dims per thread rounded up to a multiple of 4.
template <int DPT>
void launch_small(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  if (a.nq <= 32)
    launch_attention<4, DPT, 32, 16>(c, a, batch);
  else
    launch_attention<4, DPT, 64, 16>(c, a, batch);
}

// ---- D > 128 (the VAE mid-block's single head, D = channels): materialised scores ----
// Per (batch index, head) and chunk of query rows: S = Q K^T (cuBLASLt, F32 scores), an exact row
// softmax in f32 (the CPU backend's formula and order of operations; the row staged in shared
// memory when it fits), O = P V (cuBLASLt). F32 operands: TF32/F32 GEMMs per the context, P in
// place of S. 16-bit operands (the bf16 path): BF16 (F16 with AttnArgs::f16) GEMMs with f32
// accumulation, P written in that format.

constexpr int kSmThreads = 256;

__device__ float block_reduce(float v, bool is_max, float* sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < kSmThreads / 32 ? sh[lane] : (is_max ? -INFINITY : 0.0f);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  return v;
}

// One block per row of S [rows, nk] (F32): P = softmax(S * scale + bias) with masked keys at 0,
// written as TP (F32: in place of S; BF16 or F16: beside it). kStage: the row kept in shared memory
// (nk floats) between the passes; else each pass reads S again (the same values: bit-identical).
template <typename TP, bool kStage>
__global__ void __launch_bounds__(kSmThreads)
    softmax_rows_kernel(const float* s_all, TP* p_all, int64_t nk, float scale, const float* bias_all,
                        int64_t bias_stride, const uint8_t* mask) {
  __shared__ float sh[32];
  extern __shared__ float row[];
  const float* s = s_all + blockIdx.x * nk;
  TP* pr = p_all + blockIdx.x * nk;
  const float* br = bias_all ? bias_all + blockIdx.x * bias_stride : nullptr;
  if (mask) {
    int any = 0;
    for (int64_t j = threadIdx.x; j < nk; j += kSmThreads) any |= mask[j] != 0;
    if (!__syncthreads_or(any)) mask = nullptr;  // every key masked: attend to all (CPU rule)
  }
  auto logit = [&](int64_t j) { return s[j] * scale + (br ? br[j] : 0.0f); };
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < nk; j += kSmThreads) {
    if (mask && !mask[j]) continue;
    const float v = logit(j);
    if (kStage) row[j] = v;
    mx = fmaxf(mx, v);
  }
  mx = block_reduce(mx, true, sh);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < nk; j += kSmThreads) {
    const float p = (mask && !mask[j]) ? 0.0f : expf((kStage ? row[j] : logit(j)) - mx);
    if (kStage) row[j] = p;
    sum += p;
  }
  sum = block_reduce(sum, false, sh);
  for (int64_t j = threadIdx.x; j < nk; j += kSmThreads)  // reads index j before writing it
    store_out(pr + j, (kStage ? row[j] : ((mask && !mask[j]) ? 0.0f : expf(logit(j) - mx))) / sum);
}

constexpr int64_t kGemmScoreFloats = int64_t{32} << 20;  // scores per chunk (128 MiB of F32)
constexpr size_t kStageSmemMax = 160 * 1024;             // a staged row's shared memory at most

// The longest key range of a call (the packed texts' longest, else nk).
int64_t gemm_max_keys(const AttnArgs& a, const std::vector<int>* kv_begin) {
  if (!a.kv_packed) return a.nk;
  int64_t m = 0;
  for (size_t i = 0; i + 1 < kv_begin->size(); ++i) m = std::max<int64_t>(m, (*kv_begin)[i + 1] - (*kv_begin)[i]);
  return m;
}

int64_t host_lead_offset(const LeadShape& sh, const LeadStrides& st, int64_t b) {
  int64_t off = 0;
  for (int i = sh.rank - 1; i >= 0; --i) {
    off += (b % sh.n[i]) * st.s[i];
    b /= sh.n[i];
  }
  return off;
}

template <typename TP>
void launch_softmax(const CudaContext& c, const float* S, TP* P, int64_t rows, int64_t nk, float scale,
                    const float* bias, int64_t bias_stride, const uint8_t* mask, bool staged) {
  if (!staged) {
    softmax_rows_kernel<TP, false><<<static_cast<unsigned>(rows), kSmThreads, 0, c.stream>>>(S, P, nk, scale, bias,
                                                                                            bias_stride, mask);
    return;
  }
  const size_t smem = static_cast<size_t>(nk) * sizeof(float);
  if (smem > 48 * 1024)  // the kernel's dynamic shared memory limit (per device)
    STDIT_CUDA_CHECK(cudaFuncSetAttribute(softmax_rows_kernel<TP, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(kStageSmemMax)));
  softmax_rows_kernel<TP, true><<<static_cast<unsigned>(rows), kSmThreads, smem, c.stream>>>(S, P, nk, scale, bias,
                                                                                            bias_stride, mask);
}

// Query rows per chunk and the scratch of attention_by_gemm: F32 scores [chunk, keys], plus 16-bit
// P of the same size for 16-bit operands (BF16 or F16: 2 bytes either way).
struct GemmChunks {
  int64_t rows = 0;
  size_t bytes = 0;
};
GemmChunks gemm_chunks(int64_t nq, int64_t max_nk, bool bf16) {
  GemmChunks g;
  const int64_t nk = std::max<int64_t>(max_nk, 1);
  g.rows = std::max<int64_t>(1, std::min<int64_t>(nq, kGemmScoreFloats / nk));
  static_assert(sizeof(__nv_bfloat16) == sizeof(__half), "16-bit formats");
  g.bytes = static_cast<size_t>(g.rows * nk) * (sizeof(float) + (bf16 ? sizeof(__nv_bfloat16) : 0));
  return g;
}

}  // namespace

size_t cuda::attention_gemm_scratch_bytes(int64_t nq, int64_t max_nk, int64_t d, bool bf16) {
  return d > 128 && nq > 0 ? gemm_chunks(nq, max_nk, bf16).bytes : 0;
}

namespace {

void attention_by_gemm(CudaContext& c, const AttnArgs& a, int64_t batch,
                       const std::vector<int>* kv_begin) {
  const int64_t d = a.d;
  const bool b16 = a.in_bf16;
  const DType h16 = a.f16 ? DType::F16 : DType::BF16;
  const DType in = b16 ? h16 : DType::F32, out = a.out_bf16 ? h16 : DType::F32;
  const int ein = b16 ? 2 : 4, eout = a.out_bf16 ? 2 : 4;
  const int64_t max_nk = gemm_max_keys(a, kv_begin);
  const GemmChunks gc = gemm_chunks(a.nq, max_nk, b16);
  const int64_t chunk = gc.rows;
  auto scores = device_alloc(c.shared_from_this(), gc.bytes);
  float* S = static_cast<float*>(scores.get());
  void* P16 = S + chunk * std::max<int64_t>(max_nk, 1);  // 16-bit P (b16), in a.f16's format
  const size_t stage = static_cast<size_t>(max_nk) * sizeof(float);
  const bool staged = stage <= kStageSmemMax;
  auto at = [](const void* p, int64_t off, int e) { return static_cast<const char*>(p) + off * e; };
  for (int64_t b = 0; b < batch; ++b) {
    int64_t kb = 0, nk = a.nk;
    if (a.kv_packed) {
      kb = (*kv_begin)[b];
      nk = (*kv_begin)[b + 1] - kb;
    }
    const int64_t k0 = a.kv_packed ? kb * a.k.sn : host_lead_offset(a.lead, a.k.lead, b);
    const int64_t v0 = a.kv_packed ? kb * a.v.sn : host_lead_offset(a.lead, a.v.lead, b);
    const int64_t q0 = host_lead_offset(a.lead, a.q.lead, b), o0 = host_lead_offset(a.lead, a.out_lead, b);
    void* obase = a.out_bf16 ? a.out_bf16 : static_cast<void*>(a.out);
    const uint8_t* mask = a.key_mask ? a.key_mask + b * a.nk : nullptr;
    for (int64_t h = 0; h < a.h; ++h) {
      const void* kp = at(a.k.p, k0 + h * a.k.sh, ein);
      const void* vp = at(a.v.p, v0 + h * a.v.sh, ein);
      const int64_t qo = q0 + h * a.q.sh, oo = o0 + h * a.out_sh;
      if (nk == 0) {  // no keys: zeros, as the CPU backend
        STDIT_CUDA_CHECK(cudaMemset2DAsync(static_cast<char*>(obase) + oo * eout, a.out_sn * eout, 0, d * eout,
                                           a.nq, c.stream));
        continue;
      }
      for (int64_t r0 = 0; r0 < a.nq; r0 += chunk) {
        const int64_t rr = std::min(chunk, a.nq - r0);
        const float* bias = a.bias ? a.bias + (h * a.nq + r0) * a.nk : nullptr;
        // S [rr, nk] row-major = column-major S^T = K Q^T.
        gemm_typed(c, in, DType::F32, true, false, nk, rr, d, kp, a.k.sn, at(a.q.p, qo + r0 * a.q.sn, ein), a.q.sn,
                   S, nk);
        if (b16)
          with_half16(a.f16, [&](auto h) {
            launch_softmax(c, S, static_cast<decltype(h)*>(P16), rr, nk, a.scale, bias, a.nk, mask, staged);
          });
        else launch_softmax(c, S, S, rr, nk, a.scale, bias, a.nk, mask, staged);
        const void* P = b16 ? static_cast<const void*>(P16) : static_cast<const void*>(S);
        check_launch("attention softmax");
        // O rows [rr, D] (row stride out_sn) = column-major O^T = V^T P^T.
        gemm_typed(c, in, out, false, false, d, rr, nk, vp, a.v.sn, P, nk,
                   static_cast<char*>(obase) + (oo + r0 * a.out_sn) * eout, a.out_sn);
      }
    }
  }
}

void launch_attention_f32(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  const int64_t d = a.d;
  if (d <= 16) launch_small<4>(c, a, batch);
  else if (d <= 32) launch_small<8>(c, a, batch);
  else if (d <= 48) launch_small<12>(c, a, batch);
  else if (d <= 64) launch_small<16>(c, a, batch);
  else if (d <= 80) launch_small<20>(c, a, batch);
  else if (d <= 96) launch_small<24>(c, a, batch);
  else launch_small<32>(c, a, batch);
}

// The facts of attention_choice.h read off a call.
AttentionCall attention_call(const AttnArgs& a, int64_t batch, const std::vector<int>* kv_begin) {
  AttentionCall call;
  call.batch = batch;
  call.heads = a.h;
  call.nq = a.nq;
  call.nk = a.nk;
  call.d = a.d;
  call.cross = a.kv_packed;
  if (a.kv_packed && kv_begin)
    for (size_t i = 0; i + 1 < kv_begin->size(); ++i)
      call.longest_text = std::max<int64_t>(call.longest_text, (*kv_begin)[i + 1] - (*kv_begin)[i]);
  call.bf16_in = a.in_bf16;
  call.bf16_out = a.out_bf16 != nullptr;
  call.extras = a.bias || a.key_mask;
  auto al16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
  bool ok = al16(a.q.p) && al16(a.k.p) && al16(a.v.p) && al16(a.out_bf16 ? static_cast<const void*>(a.out_bf16) : a.out);
  auto m8 = [](int64_t s) { return s % 8 == 0; };
  ok = ok && m8(a.q.sn) && m8(a.k.sn) && m8(a.v.sn) && m8(a.q.sh) && m8(a.k.sh) && m8(a.v.sh) && m8(a.out_sn) &&
       m8(a.out_sh);
  for (int i = 0; i < a.lead.rank; ++i)
    ok = ok && m8(a.q.lead.s[i]) && m8(a.out_lead.s[i]) && (a.kv_packed || (m8(a.k.lead.s[i]) && m8(a.v.lead.s[i])));
  call.rows_aligned = ok;
  int64_t inner = 1;
  call.lead_folds = fold_lead(a, inner) == a.lead.rank;
  call.cudnn_calls = a.kv_packed ? batch : batch / std::max<int64_t>(inner, 1);
  return call;
}

// Runs kernel k if its launcher takes the call.
bool launch_attention_kernel(CudaContext& c, AttentionKernel k, const AttnArgs& a, int64_t batch,
                             const std::vector<int>* kv_begin, int64_t longest_text) {
  using K = AttentionKernel;
  const bool f32_operands = a.out_bf16 == nullptr && !a.in_bf16;
  switch (k) {
    case K::TextBf16: return kv_begin && launch_cross_attention_text_bf16(c, a, batch, static_cast<int>(longest_text));
    case K::Wgmma: return launch_attention_wgmma(c, a, batch);
    case K::Cudnn: return launch_attention_cudnn(c, a, batch, kv_begin);
    case K::ShortBf16: return launch_attention_short_bf16(c, a, batch);
    case K::FlashBf16: return launch_attention_bf16(c, a, batch);
    case K::FlashTf32:
      STDIT_CHECK(f32_operands, "cuda attention: 16-bit operands need the bf16 kernel");
      return launch_attention_tf32(c, a, batch);
    case K::FlashF32:
      STDIT_CHECK(f32_operands, "cuda attention: 16-bit operands need the bf16 kernel");
      launch_attention_f32(c, a, batch);
      return true;
    case K::Gemm: attention_by_gemm(c, a, batch, kv_begin); return true;
    case K::Cpu: break;
  }
  return false;
}

// The candidates of choose_attention() in order; the first whose launcher takes the call runs
// and is counted.
void dispatch_attention(CudaContext& c, const AttnArgs& a, int64_t batch,
                        const std::vector<int>* kv_begin = nullptr) {
  if (batch == 0 || a.h == 0 || a.nq == 0) return;
  STDIT_CHECK(a.d > 0, "cuda attention: head dim must be positive");
  const AttentionCall call = attention_call(a, batch, kv_begin);
  for (AttentionKernel k : attention_candidates(call, c.policy)) {
    if (launch_attention_kernel(c, k, a, batch, kv_begin, call.longest_text)) {
      ++c.attention_runs[static_cast<size_t>(k)];
      return;
    }
  }
  STDIT_CHECK(false, "cuda attention: no kernel takes q [", a.nq, " x ", a.h, " x ", a.d, "] against ", a.nk, " keys");
}

struct HeadDims {
  int64_t n, h, d, sn, sh;
};
HeadDims head_dims(const Tensor& t, const CudaContext& c, const char* op, const char* what) {
  expect_float(t, c, op, what);
  STDIT_CHECK(t.dim() >= 3, "cuda ", op, ": ", what, " must be [..., N, H, D], got ",
              shape_str(t.shape()));
  return {t.size(-3), t.size(-2), t.size(-1), t.stride(-3), t.stride(-2)};
}

// Where the kernels write: `out` itself, or an F32 scratch copied (converted) into a 16-bit `out`
// afterwards: off the bf16 path, and on the GEMM path (D > 128) from F32 operands (cuBLASLt has no
// F32-input GEMM with a 16-bit output).
struct OutTarget {
  Tensor t;
  bool convert = false;
};
OutTarget out_target(CudaBackend& be, const CudaContext& c, Tensor& out, int64_t d, bool in_bf16) {
  if (!attention_out_converted(c, out.dtype(), d, in_bf16)) return {out, false};
  return {be.alloc(out.shape(), DType::F32), true};
}
// q, k, v as the kernels read them: all 16-bit on the bf16 path when all three are 16-bit, else F32
// (16-bit inputs widened into scratch copies). f16: the call's 16-bit format is F16 (AttnArgs::f16):
// that of its 16-bit tensors (q, k, v, out; BF16 and F16 together are an error), or the context's
// when all are F32 (the format the bf16 kernels round F32 operands to).
struct KernelInputs {
  Tensor q, k, v;
  bool bf16;
  bool f16;
};
KernelInputs kernel_inputs(CudaBackend& be, const CudaContext& c, const char* op, const Tensor& q,
                           const Tensor& k, const Tensor& v, const Tensor& out) {
  bool any_bf16 = false, any_f16 = false;
  for (const Tensor* t : {&q, &k, &v, &out}) {
    any_bf16 = any_bf16 || t->dtype() == DType::BF16;
    any_f16 = any_f16 || t->dtype() == DType::F16;
  }
  STDIT_CHECK(!(any_bf16 && any_f16), "cuda ", op, ": BF16 and F16 tensors in one call (q ",
              dtype_name(q.dtype()), ", k ", dtype_name(k.dtype()), ", v ", dtype_name(v.dtype()), ", out ",
              dtype_name(out.dtype()), ")");
  const bool f16 = any_f16 || (!any_bf16 && half16_dtype(c) == DType::F16);
  const bool all16 = is_half16(q.dtype()) && is_half16(k.dtype()) && is_half16(v.dtype());
  if (all16 && bf16_attention_operands(c)) return {q, k, v, true, f16};
  auto f32 = [&](const Tensor& t) {
    if (t.dtype() == DType::F32) return t;
    Tensor o = be.alloc(t.shape(), DType::F32);
    be.copy(t, o);
    return o;
  };
  return {f32(q), f32(k), f32(v), false, f16};
}

void set_out(AttnArgs& a, const Tensor& t, int nl) {
  a.out = t.dtype() == DType::F32 ? t.data<float>() : nullptr;
  a.out_bf16 = is_half16(t.dtype()) ? t.raw() : nullptr;
  a.out_lead = lead_strides(t, nl);
  a.out_sn = t.stride(-3);
  a.out_sh = t.stride(-2);
}

}  // namespace

void CudaBackend::qk_norm_rope(Tensor& q, const Tensor& weight, float eps, const Tensor& rope_freqs) {
  OpTimer timer_(*ctx_, "qk_norm_rope", q);
  const char* op = "qk_norm_rope";
  const CudaContext& c = *ctx_;
  const HeadDims hv = head_dims(q, c, op, "q");
  expect_contiguous_f32(weight, c, op, "weight");
  STDIT_CHECK(weight.numel() == hv.d, "cuda ", op, ": weight has ", weight.numel(),
              " values for head dim ", hv.d);
  if (rope_freqs.defined()) {
    expect_contiguous_f32(rope_freqs, c, op, "rope_freqs");
    STDIT_CHECK(hv.d % 2 == 0 && rope_freqs.numel() == hv.d / 2, "cuda ", op, ": rope_freqs has ",
                rope_freqs.numel(), " values for head dim ", hv.d);
  }
  const int lead = q.dim() - 3;
  const LeadShape lsh = lead_shape(q, lead);
  const LeadStrides lst = lead_strides(q, lead);
  const int64_t nvec = q.numel() / std::max<int64_t>(hv.d, 1);
  if (nvec == 0 || hv.d == 0) return;
  const unsigned blocks = blocks_for(nvec, kRopeWarps * 32 / kRopeLanes, 2147483647);
  const int64_t pairs = (hv.d + 1) / 2;
  Tensor rot;  // [n, pairs] (cos, sin)
  if (rope_freqs.defined()) {
    rot = alloc({hv.n, pairs, 2}, DType::F32);
    rope_table_kernel<<<blocks_for(hv.n * pairs, 256), 256, 0, c.stream>>>(
        rope_freqs.data<float>(), hv.n, static_cast<int>(pairs), reinterpret_cast<float2*>(rot.raw()));
    check_launch("qk_norm_rope (rotation table)");
  }
  const float2* fr = rot.defined() ? reinterpret_cast<const float2*>(rot.raw()) : nullptr;
  // Pairs as single 4-byte accesses: 16-bit, even D, even strides, 4-byte aligned base.
  bool vec2 = is_half16(q.dtype()) && hv.d % 2 == 0 && hv.sn % 2 == 0 && hv.sh % 2 == 0 &&
              (reinterpret_cast<uintptr_t>(q.raw()) & 3u) == 0;
  for (int i = 0; i < lead; ++i) vec2 = vec2 && lst.s[i] % 2 == 0;
  // Whole rows per warp: 16-bit, heads side by side in rows of 128 k <= 1152 values, 8-byte aligned.
  bool rows_ok = is_half16(q.dtype()) && hv.sh == hv.d && hv.d % 4 == 0 && (hv.h * hv.d) % 128 == 0 &&
                 hv.h * hv.d <= 128 * kRowChunks && hv.sn % 4 == 0 && (reinterpret_cast<uintptr_t>(q.raw()) & 7u) == 0;
  for (int i = 0; i < lead; ++i) rows_ok = rows_ok && lst.s[i] % 4 == 0;
  if (rows_ok) {
    const int64_t rows = nvec / hv.h;
    with_half16(q.dtype() == DType::F16, [&](auto h) {
      using H = decltype(h);
      qk_norm_rope_rows_kernel<H><<<blocks_for(rows, kRopeWarps, 2147483647), kRopeWarps * 32, 0, c.stream>>>(
          q.data<H>(), lsh, lst, rows, hv.n, static_cast<int>(hv.h), static_cast<int>(hv.d),
          static_cast<int>(hv.h * hv.d / 128), hv.sn, weight.data<float>(), fr, eps);
    });
    return check_launch(op);
  }
  STDIT_CHECK(pairs <= 64 * kRopeLanes, "cuda ", op, ": head dim ", hv.d, " is over 1024");
  auto go = [&](auto* x, auto it_tag) {
    constexpr int kIt = decltype(it_tag)::value;
    using T = std::remove_pointer_t<decltype(x)>;
    qk_norm_rope_kernel<T, kIt><<<blocks, kRopeWarps * 32, 0, c.stream>>>(
        x, lsh, lst, nvec, hv.n, hv.h, hv.d, hv.sn, hv.sh, weight.data<float>(), fr, eps, vec2);
  };
  auto dispatch = [&](auto* x) {
    if (pairs <= 5 * kRopeLanes) go(x, std::integral_constant<int, 5>{});       // D <= 80
    else if (pairs <= 8 * kRopeLanes) go(x, std::integral_constant<int, 8>{});  // D <= 128
    else go(x, std::integral_constant<int, 64>{});
  };
  if (q.dtype() == DType::BF16) dispatch(q.data<__nv_bfloat16>());
  else if (q.dtype() == DType::F16) dispatch(q.data<__half>());
  else dispatch(q.data<float>());
  check_launch(op);
}

void CudaBackend::attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                            float scale, Tensor& out, const AttentionExtras& extras) {
  OpTimer timer_(*ctx_, "attention", q_in);
  const char* op = "attention";
  CudaContext& c = *ctx_;
  head_dims(q_in, c, op, "q");
  head_dims(k_in, c, op, "k");
  head_dims(v_in, c, op, "v");
  const KernelInputs in = kernel_inputs(*this, c, op, q_in, k_in, v_in, out);
  const Tensor &q = in.q, &k = in.k, &v = in.v;
  const HeadDims qv = head_dims(q, c, op, "q"), kv = head_dims(k, c, op, "k"),
                 vv = head_dims(v, c, op, "v"), ov = head_dims(out, c, op, "out");
  const Shape lead(q.shape().begin(), q.shape().end() - 3);
  for (const Tensor* t : std::initializer_list<const Tensor*>{&k, &v, &out})
    STDIT_CHECK(Shape(t->shape().begin(), t->shape().end() - 3) == lead && t->size(-1) == qv.d &&
                    t->size(-2) == qv.h,
                "cuda attention: q ", shape_str(q.shape()), ", k ", shape_str(k.shape()), ", v ",
                shape_str(v.shape()), ", out ", shape_str(out.shape()), " are inconsistent");
  STDIT_CHECK(kv.n == vv.n && ov.n == qv.n, "cuda attention: sequence lengths differ");
  const int nl = q.dim() - 3;
  const int64_t nb = shape_numel(lead);
  AttnArgs a{};
  a.lead = lead_shape(q, nl);
  a.q = {q.raw(), lead_strides(q, nl), qv.sn, qv.sh};
  a.k = {k.raw(), lead_strides(k, nl), kv.sn, kv.sh};
  a.v = {v.raw(), lead_strides(v, nl), vv.sn, vv.sh};
  a.in_bf16 = in.bf16;
  a.f16 = in.f16;
  OutTarget ot = out_target(*this, c, out, qv.d, in.bf16);
  set_out(a, ot.t, nl);
  a.kv_packed = false;
  a.kv_begin = nullptr;
  a.h = qv.h;
  a.nq = qv.n;
  a.nk = kv.n;
  a.d = qv.d;
  a.scale = scale;
  a.bias = nullptr;
  a.key_mask = nullptr;
  if (extras.bias.defined()) {
    expect_contiguous_f32(extras.bias, c, op, "bias");
    expect_shape(extras.bias, {qv.h, qv.n, kv.n}, op, "bias");
    a.bias = extras.bias.data<float>();
  }
  if (extras.key_mask.defined()) {
    expect_device(extras.key_mask, c, op, "key_mask");
    STDIT_CHECK(extras.key_mask.dtype() == DType::U8 && extras.key_mask.is_contiguous(),
                "cuda attention: key_mask must be contiguous U8");
    expect_shape(extras.key_mask, {nb, kv.n}, op, "key_mask");
    a.key_mask = extras.key_mask.data<uint8_t>();
  }
  dispatch_attention(c, a, nb);
  if (ot.convert) copy(ot.t, out);
}

std::vector<std::pair<std::string, int64_t>> CudaBackend::attention_kernels() const {
  std::vector<std::pair<std::string, int64_t>> out;
  for (int k = static_cast<int>(AttentionKernel::TextBf16); k <= static_cast<int>(AttentionKernel::Gemm); ++k)
    out.emplace_back(attention_kernel_name(static_cast<AttentionKernel>(k)), ctx_->attention_runs[k].load());
  return out;
}

void CudaBackend::cross_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                  const std::vector<int>& kv_lens, float scale, Tensor& out) {
  OpTimer timer_(*ctx_, "cross_attention", q_in);
  const char* op = "cross_attention";
  CudaContext& c = *ctx_;
  head_dims(q_in, c, op, "q");
  expect_float(k_in, c, op, "k");
  expect_float(v_in, c, op, "v");
  const KernelInputs in = kernel_inputs(*this, c, op, q_in, k_in, v_in, out);
  const Tensor &q = in.q, &k = in.k, &v = in.v;
  STDIT_CHECK(q.dim() == 4 && out.shape() == q.shape(), "cuda ", op,
              ": q/out must be [B, N, H, D]");
  STDIT_CHECK(k.dim() == 3 && v.shape() == k.shape(), "cuda ", op, ": k/v must be [L, H, D]");
  const HeadDims qv = head_dims(q, c, op, "q");
  head_dims(out, c, op, "out");
  STDIT_CHECK(k.size(1) == qv.h && k.size(2) == qv.d, "cuda ", op,
              ": heads/head dim of q and k differ");
  const int64_t nb = q.size(0);
  STDIT_CHECK(static_cast<int64_t>(kv_lens.size()) == nb, "cuda ", op, ": ", kv_lens.size(),
              " kv lengths for batch ", nb);
  std::vector<int> begin(nb + 1, 0);
  for (int64_t b = 0; b < nb; ++b) {
    STDIT_CHECK(kv_lens[b] > 0, "cuda ", op, ": sample ", b, " has no text tokens");
    begin[b + 1] = begin[b] + kv_lens[b];
  }
  STDIT_CHECK(begin[nb] == k.size(0), "cuda ", op, ": kv lengths sum to ", begin[nb],
              " but k has ", k.size(0), " rows");
  if (nb == 0 || qv.n == 0 || qv.h == 0) return;
  auto dbegin = device_copy_of(ctx_, begin.data(), begin.size() * sizeof(int));
  AttnArgs a{};
  a.lead = lead_shape(q, 1);
  a.q = {q.raw(), lead_strides(q, 1), qv.sn, qv.sh};
  a.k = {k.raw(), LeadStrides{}, k.stride(0), k.stride(1)};
  a.v = {v.raw(), LeadStrides{}, v.stride(0), v.stride(1)};
  a.in_bf16 = in.bf16;
  a.f16 = in.f16;
  OutTarget ot = out_target(*this, c, out, qv.d, in.bf16);
  set_out(a, ot.t, 1);
  a.kv_packed = true;
  a.kv_begin = static_cast<const int*>(dbegin.get());
  a.h = qv.h;
  a.nq = qv.n;
  a.nk = k.size(0);
  a.d = qv.d;
  a.scale = scale;
  a.bias = nullptr;
  a.key_mask = nullptr;
  dispatch_attention(c, a, nb, &begin);
  if (ot.convert) copy(ot.t, out);
}

}  // namespace stdit
