// CUDA attention: q/k RMSNorm + interleaved RoPE in place, flash-style self-attention over strided
// [..., N, H, D] views (optional T5 bias and key mask), block-diagonal cross-attention.
//
// Three paths (dispatch_attention): D <= 128 with TF32 allowed -> the tensor-core flash kernel
// (cuda_attention_tc.cu); D <= 128 in F32 -> the flash kernel here, F32 on the CUDA cores: one
// block per (batch index, head, query tile), TPQ threads share one query row (each holds DPT of its
// D values in registers), key/value tiles of BK rows stream through shared memory, online softmax
// in f32; D > 128 (VAE mid-block) -> scores materialised per query chunk with cuBLASLt GEMMs and an
// exact row softmax. NaN propagates as on the CPU in all three.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cuda/cuda_attention.cuh"

namespace stdit {

using namespace cuda;

namespace {

// ---------------------------------------------------------------------------- qk_norm_rope -----

constexpr int kRopeWarps = 8;

// One warp per (batch, n, head) vector of D values.
__global__ void __launch_bounds__(kRopeWarps * 32)
    qk_norm_rope_kernel(float* q, LeadShape lsh, LeadStrides lst, int64_t nvec, int64_t n,
                        int64_t h, int64_t d, int64_t sn, int64_t sh,
                        const float* __restrict__ w, const float* __restrict__ freqs, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t vec = blockIdx.x * static_cast<int64_t>(kRopeWarps) + (threadIdx.x >> 5);
  if (vec >= nvec) return;
  const int64_t b = vec / (n * h), rem = vec - b * n * h, i = rem / h, head = rem - i * h;
  float* x = q + lead_offset(lsh, lst, b) + i * sn + head * sh;
  float ss = 0;
  for (int64_t e = lane; e < d; e += 32) ss += x[e] * x[e];
  ss = warp_sum(ss);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
  if (!freqs) {
    for (int64_t e = lane; e < d; e += 32) x[e] = w[e] * (x[e] * r);
    return;
  }
  // Interleaved pairs (x[2j], x[2j+1]) rotate by angle i * freqs[j], angle in f32.
  for (int64_t j = lane; j < d / 2; j += 32) {
    const float x0 = w[2 * j] * (x[2 * j] * r), x1 = w[2 * j + 1] * (x[2 * j + 1] * r);
    const float a = static_cast<float>(i) * freqs[j];
    const float c = cosf(a), s = sinf(a);
    x[2 * j] = x0 * c - x1 * s;
    x[2 * j + 1] = x1 * c + x0 * s;
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
  const float* kbase = kr.kbase;
  const float* vbase = kr.vbase;

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
    const float* qp = a.q.p + lead_offset(a.lead, a.q.lead, b) + qi * a.q.sn + head * a.q.sh;
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
// Per (batch index, head) and chunk of query rows: S = Q K^T (cuBLASLt), an exact row softmax in
// f32 (the CPU backend's formula and order of operations), O = P V (cuBLASLt).

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

// One block per row of S [rows, nk]: S := softmax(S * scale + bias) with masked keys at 0.
__global__ void __launch_bounds__(kSmThreads)
    softmax_rows_kernel(float* s_all, int64_t nk, float scale, const float* bias_all,
                        int64_t bias_stride, const uint8_t* mask) {
  __shared__ float sh[32];
  float* s = s_all + blockIdx.x * nk;
  const float* br = bias_all ? bias_all + blockIdx.x * bias_stride : nullptr;
  if (mask) {
    int any = 0;
    for (int64_t j = threadIdx.x; j < nk; j += kSmThreads) any |= mask[j] != 0;
    if (!__syncthreads_or(any)) mask = nullptr;  // every key masked: attend to all (CPU rule)
  }
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < nk; j += kSmThreads) {
    if (mask && !mask[j]) continue;
    const float v = s[j] * scale + (br ? br[j] : 0.0f);
    s[j] = v;
    mx = fmaxf(mx, v);
  }
  mx = block_reduce(mx, true, sh);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < nk; j += kSmThreads) {
    const float p = (mask && !mask[j]) ? 0.0f : expf(s[j] - mx);
    s[j] = p;
    sum += p;
  }
  sum = block_reduce(sum, false, sh);
  for (int64_t j = threadIdx.x; j < nk; j += kSmThreads) s[j] = s[j] / sum;
}

int64_t host_lead_offset(const LeadShape& sh, const LeadStrides& st, int64_t b) {
  int64_t off = 0;
  for (int i = sh.rank - 1; i >= 0; --i) {
    off += (b % sh.n[i]) * st.s[i];
    b /= sh.n[i];
  }
  return off;
}

void attention_by_gemm(CudaContext& c, const AttnArgs& a, int64_t batch,
                       const std::vector<int>* kv_begin) {
  const int64_t d = a.d;
  const int64_t budget = int64_t{32} << 20;  // floats of scores per chunk (128 MiB)
  int64_t max_nk = a.nk;
  if (a.kv_packed) {
    max_nk = 0;
    for (size_t i = 0; i + 1 < kv_begin->size(); ++i)
      max_nk = std::max<int64_t>(max_nk, (*kv_begin)[i + 1] - (*kv_begin)[i]);
  }
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(a.nq, budget / std::max<int64_t>(max_nk, 1)));
  auto scores = device_alloc(c.shared_from_this(),
                             static_cast<size_t>(chunk * std::max<int64_t>(max_nk, 1)) * sizeof(float));
  float* S = static_cast<float*>(scores.get());
  for (int64_t b = 0; b < batch; ++b) {
    int64_t kb = 0, nk = a.nk;
    if (a.kv_packed) {
      kb = (*kv_begin)[b];
      nk = (*kv_begin)[b + 1] - kb;
    }
    const float* kp0 = a.k.p + (a.kv_packed ? kb * a.k.sn : host_lead_offset(a.lead, a.k.lead, b));
    const float* vp0 = a.v.p + (a.kv_packed ? kb * a.v.sn : host_lead_offset(a.lead, a.v.lead, b));
    const float* qp0 = a.q.p + host_lead_offset(a.lead, a.q.lead, b);
    float* op0 = a.out + host_lead_offset(a.lead, a.out_lead, b);
    const uint8_t* mask = a.key_mask ? a.key_mask + b * a.nk : nullptr;
    for (int64_t h = 0; h < a.h; ++h) {
      const float* kp = kp0 + h * a.k.sh;
      const float* vp = vp0 + h * a.v.sh;
      const float* qp = qp0 + h * a.q.sh;
      float* op = op0 + h * a.out_sh;
      if (nk == 0) {  // no keys: zeros, as the CPU backend
        STDIT_CUDA_CHECK(cudaMemset2DAsync(op, a.out_sn * 4, 0, d * 4, a.nq, c.stream));
        continue;
      }
      for (int64_t r0 = 0; r0 < a.nq; r0 += chunk) {
        const int64_t rr = std::min(chunk, a.nq - r0);
        // S [rr, nk] row-major = column-major S^T = K Q^T.
        gemm_f32(c, true, false, nk, rr, d, kp, a.k.sn, qp + r0 * a.q.sn, a.q.sn, S, nk);
        softmax_rows_kernel<<<static_cast<unsigned>(rr), kSmThreads, 0, c.stream>>>(
            S, nk, a.scale, a.bias ? a.bias + (h * a.nq + r0) * a.nk : nullptr, a.nk, mask);
        check_launch("attention softmax");
        // O rows [rr, D] (row stride out_sn) = column-major O^T = V^T P^T.
        gemm_f32(c, false, false, d, rr, nk, vp, a.v.sn, S, nk, op + r0 * a.out_sn, a.out_sn);
      }
    }
  }
}

void dispatch_attention(CudaContext& c, const AttnArgs& a, int64_t batch,
                        const std::vector<int>* kv_begin = nullptr) {
  if (batch == 0 || a.h == 0 || a.nq == 0) return;
  const int64_t d = a.d;
  STDIT_CHECK(d > 0, "cuda attention: head dim must be positive");
  if (d > 128) return attention_by_gemm(c, a, batch, kv_begin);
  // TF32 tensor cores unless F32 attention was asked for.
  if (c.options.tf32_attention && launch_attention_tf32(c, a, batch)) return;
  if (d <= 16) launch_small<4>(c, a, batch);
  else if (d <= 32) launch_small<8>(c, a, batch);
  else if (d <= 48) launch_small<12>(c, a, batch);
  else if (d <= 64) launch_small<16>(c, a, batch);
  else if (d <= 80) launch_small<20>(c, a, batch);
  else if (d <= 96) launch_small<24>(c, a, batch);
  else launch_small<32>(c, a, batch);
}

struct HeadDims {
  int64_t n, h, d, sn, sh;
};
HeadDims head_dims(const Tensor& t, const CudaContext& c, const char* op, const char* what) {
  expect_f32(t, c, op, what);
  STDIT_CHECK(t.dim() >= 3, "cuda ", op, ": ", what, " must be [..., N, H, D], got ",
              shape_str(t.shape()));
  return {t.size(-3), t.size(-2), t.size(-1), t.stride(-3), t.stride(-2)};
}

}  // namespace

void CudaBackend::qk_norm_rope(Tensor& q, const Tensor& weight, float eps, const Tensor& rope_freqs) {
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
  qk_norm_rope_kernel<<<blocks_for(nvec, kRopeWarps, 2147483647), kRopeWarps * 32, 0, c.stream>>>(
      q.data<float>(), lsh, lst, nvec, hv.n, hv.h, hv.d, hv.sn, hv.sh, weight.data<float>(),
      rope_freqs.defined() ? rope_freqs.data<float>() : nullptr, eps);
  check_launch(op);
}

void CudaBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                            Tensor& out, const AttentionExtras& extras) {
  const char* op = "attention";
  CudaContext& c = *ctx_;
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
  a.q = {q.data<float>(), lead_strides(q, nl), qv.sn, qv.sh};
  a.k = {k.data<float>(), lead_strides(k, nl), kv.sn, kv.sh};
  a.v = {v.data<float>(), lead_strides(v, nl), vv.sn, vv.sh};
  a.out = out.data<float>();
  a.out_lead = lead_strides(out, nl);
  a.out_sn = ov.sn;
  a.out_sh = ov.sh;
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
}

void CudaBackend::cross_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const std::vector<int>& kv_lens, float scale, Tensor& out) {
  const char* op = "cross_attention";
  CudaContext& c = *ctx_;
  STDIT_CHECK(q.dim() == 4 && out.shape() == q.shape(), "cuda ", op,
              ": q/out must be [B, N, H, D]");
  STDIT_CHECK(k.dim() == 3 && v.shape() == k.shape(), "cuda ", op, ": k/v must be [L, H, D]");
  const HeadDims qv = head_dims(q, c, op, "q"), ov = head_dims(out, c, op, "out");
  expect_f32(k, c, op, "k");
  expect_f32(v, c, op, "v");
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
  a.q = {q.data<float>(), lead_strides(q, 1), qv.sn, qv.sh};
  a.k = {k.data<float>(), LeadStrides{}, k.stride(0), k.stride(1)};
  a.v = {v.data<float>(), LeadStrides{}, v.stride(0), v.stride(1)};
  a.out = out.data<float>();
  a.out_lead = lead_strides(out, 1);
  a.out_sn = ov.sn;
  a.out_sh = ov.sh;
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
}

}  // namespace stdit
