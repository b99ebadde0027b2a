// BF16 (or F16 under --precision fp16) flash attention (head dim <= 128) on the tensor cores with
// mma.sync.m16n8k16.
//
// Same structure and semantics as the TF32 kernel (cuda_attention_tc.cu): one block of kWarps
// warps per (batch index, head, 16 * kWarps queries), each warp owning 16 query rows; per tile of
// BK keys, S = Q K^T on the tensor cores with Q and K rounded to 16 bits, scale, bias and key mask
// in f32, online softmax in f32, O += P V with P and V rounded to 16 bits, f32 accumulation. Every
// kernel here is templated on the 16-bit element type H (__nv_bfloat16, or __half when
// AttnArgs::f16); the launchers pick it. Inputs are F32 (rounded to H while loading) or H views;
// the output is F32 or H.
//
// Layout: Q stays in registers as A fragments for the whole block (head dim zero-padded to
// KS * 16). K and V tiles are row-major 16-bit in shared memory, filled with 16-byte stores; a B
// fragment of Q K^T (two adjacent head-dim values of one key) is one 32-bit load, the B fragments
// of P V (two adjacent keys of one head-dim column) come from ldmatrix.trans. The S accumulators
// of two 8-key groups are exactly the A fragment of P for 16 keys: no shuffles.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "backend/cuda/cuda_attention.cuh"

namespace stdit::cuda {

namespace {

// c += a b (m16n8k16, f32 accumulators) with 16-bit operands of type H (bf16 or f16 pairs).
template <typename H>
__device__ __forceinline__ void mma16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<H, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    static_assert(std::is_same_v<H, __nv_bfloat16>, "H: __nv_bfloat16 or __half");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

// Head dims [e, e + 8) of one row as four H pairs, zero past d. vec: 16-byte loads allowed
// (row bases 16-byte aligned). TI: F32 (rounded to H) or H (copied).
template <typename H, typename TI>
__device__ __forceinline__ uint4 load8(const TI* row, int e, int d, bool vec) {
  static_assert(std::is_same_v<TI, float> || std::is_same_v<TI, H>, "TI: float or H");
  if (vec && e + 8 <= d) {
    if constexpr (std::is_same_v<TI, H>) {
      return *reinterpret_cast<const uint4*>(row + e);
    } else {
      const float4 x = *reinterpret_cast<const float4*>(row + e);
      const float4 y = *reinterpret_cast<const float4*>(row + e + 4);
      return make_uint4(pack_half2<H>(x.x, x.y), pack_half2<H>(x.z, x.w), pack_half2<H>(y.x, y.y),
                        pack_half2<H>(y.z, y.w));
    }
  }
  float v[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = e + i < d ? to_float(row[e + i]) : 0.0f;
  return make_uint4(pack_half2<H>(v[0], v[1]), pack_half2<H>(v[2], v[3]), pack_half2<H>(v[4], v[5]),
                    pack_half2<H>(v[6], v[7]));
}

// The four H pairs of an A fragment of P (16 keys: the m16n8 accumulators of 8-key groups s0, s1).
template <typename H>
__device__ __forceinline__ void p_fragment(uint32_t (&pa)[4], const float (&s0)[4], const float (&s1)[4]) {
  pa[0] = pack_half2<H>(s0[0], s0[1]);
  pa[1] = pack_half2<H>(s0[2], s0[3]);
  pa[2] = pack_half2<H>(s1[0], s1[1]);
  pa[3] = pack_half2<H>(s1[2], s1[3]);
}

// 16 bytes global -> shared, asynchronously; src_bytes 0 writes zeros (and reads nothing).
__device__ __forceinline__ void cp_async16(uint32_t* dst, const void* src, int src_bytes) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                          uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2_t(uint32_t addr, uint32_t& r0, uint32_t& r1) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r0), "=r"(r1)
               : "r"(addr));
}

// S += Q K^T for one 16-row Q tile in shared memory (rows of RS 32-bit words, H pairs; q_rows:
// its first row) against the key rows ks of the same layout: s[n] holds keys 8n .. 8n + 7 in the
// m16n8 accumulator layout; key groups n >= groups are skipped. ldmatrix x4: lanes 0-15 address
// rows 0-15 at dims k0, lanes 16-31 rows 0-15 at k0 + 8.
template <typename H, int KS, int RS, int NG>
__device__ __forceinline__ void qk_tile(float (&s)[NG][4], const uint32_t* q_rows,
                                        const uint32_t* ks, int groups, int lane) {
  const int g = lane >> 2, t4 = lane & 3;
  const uint32_t qa = static_cast<uint32_t>(
      __cvta_generic_to_shared(q_rows + (lane & 15) * RS + 4 * (lane >> 4)));
#pragma unroll
  for (int k = 0; k < KS; ++k) {
    uint32_t af[4];
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(af[0]), "=r"(af[1]), "=r"(af[2]), "=r"(af[3])
                 : "r"(qa + 32u * k));
#pragma unroll
    for (int n = 0; n < NG; ++n) {
      if (n >= groups) continue;
      const uint32_t* kp = ks + (n * 8 + g) * RS + t4 + k * 8;
      mma16<H>(s[n], af, kp[0], kp[4]);
    }
  }
}

// s = 2^(s - u) in place (u_a for row g, u_b for row g + 8 of the m16n8 accumulator layout),
// each row's values added to l_a / l_b (this thread's columns only).
template <int NG>
__device__ __forceinline__ void exp2_rows(float (&s)[NG][4], float u_a, float u_b, float& l_a,
                                          float& l_b) {
#pragma unroll
  for (int n = 0; n < NG; ++n) {
    s[n][0] = exp2f(s[n][0] - u_a);
    s[n][1] = exp2f(s[n][1] - u_a);
    s[n][2] = exp2f(s[n][2] - u_b);
    s[n][3] = exp2f(s[n][3] - u_b);
    l_a += s[n][0] + s[n][1];
    l_b += s[n][2] + s[n][3];
  }
}

// Exact softmax (base 2) of one m16 tile's scores held as NG 8-key groups in the m16n8
// accumulator layout (this thread: rows g and g + 8, columns 8n + 2 t4 + {0, 1}): scaled by sl2,
// columns >= keys masked, exponentiated in place; returns the two rows' sums over all keys.
template <int NG>
__device__ __forceinline__ void softmax_tile(float (&s)[NG][4], int keys, int t4, float sl2,
                                             float& la, float& lb) {
  float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
  for (int n = 0; n < NG; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int col = n * 8 + 2 * t4 + (e & 1);
      const float v = col < keys ? s[n][e] * sl2 : -INFINITY;
      s[n][e] = v;
      if (e < 2) mx_a = fmaxf(mx_a, v);
      else mx_b = fmaxf(mx_b, v);
    }
  mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
  mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
  mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
  mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
  la = 0.0f;
  lb = 0.0f;
  exp2_rows(s, mx_a, mx_b, la, lb);
  la += __shfl_xor_sync(0xffffffffu, la, 1);
  la += __shfl_xor_sync(0xffffffffu, la, 2);
  lb += __shfl_xor_sync(0xffffffffu, lb, 1);
  lb += __shfl_xor_sync(0xffffffffu, lb, 2);
}

// KS: 16-wide head-dim steps of Q K^T (head dim padded to DK = KS * 16); NV: 8-wide head-dim
// tiles of the output (NV * 8 <= DK); BK keys per tile (multiple of 16). H: the 16-bit operand type
// of the tensor cores; TI: input type (F32 views are rounded to H while loading; H is copied),
// TO: output type (F32 or H).
template <int KS, int NV, int BK, int kWarps, bool kExtras, typename H, typename TI, typename TO>
__global__ void __launch_bounds__(kWarps * 32, kWarps >= 8 ? 2 : 4)
    attention_bf16_kernel(AttnArgs a, TO* out) {
  constexpr int kRows = 16 * kWarps;
  constexpr int kThreads = kWarps * 32;
  constexpr int DK = KS * 16;        // padded head dim
  constexpr int C8 = DK / 8;         // 16-byte chunks per row
  constexpr int RS = DK / 2 + 4;     // row stride in 32-bit words: conflict-free fragment loads
  constexpr int NT = BK / 8;         // 8-key groups per tile
  constexpr float kLog2e = 1.4426950408889634f;
  constexpr int kStage = 2 * BK * RS;  // words per stage: K rows then V rows
  extern __shared__ uint4 smem_q[];
  // Two stages of [BK][RS] K rows (pairs of head dims) followed by [BK][RS] V rows.
  uint32_t* const smem = reinterpret_cast<uint32_t*>(smem_q);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t bh = blockIdx.x, b = bh / a.h, head = bh - b * a.h;
  const int64_t q0 = blockIdx.y * static_cast<int64_t>(kRows);
  const int64_t qa = q0 + warp * 16 + g, qb = qa + 8;
  const int d = static_cast<int>(a.d);

  const KvRange kr = kv_range(a, b, head);
  const int64_t k_begin = kr.begin, k_end = kr.end;
  const TI* kbase = static_cast<const TI*>(a.k.p) + kr.koff;
  const TI* vbase = static_cast<const TI*>(a.v.p) + kr.voff;

  const uint8_t* mask = nullptr;
  if (kExtras && a.key_mask) {
    mask = a.key_mask + b * a.nk;
    int any = 0;
    for (int64_t j = tid; j < a.nk; j += kThreads) any |= mask[j] != 0;
    if (!__syncthreads_or(any)) mask = nullptr;
  }

  // This warp's Q rows as A fragments: qf[k] = rows (g, g + 8) x head dims 16k + (2t4, 2t4 + 1,
  // 2t4 + 8, 2t4 + 9), zero past Nq and past D.
  uint32_t qf[KS][4];
  {
    const TI* qp = static_cast<const TI*>(a.q.p) + lead_offset(a.lead, a.q.lead, b) + head * a.q.sh;
    auto qv = [&](int64_t row, int e) {
      return row < a.nq && e < d ? to_float(qp[row * a.q.sn + e]) : 0.0f;
    };
#pragma unroll
    for (int k = 0; k < KS; ++k) {
      const int e0 = k * 16 + 2 * t4, e1 = e0 + 8;
      qf[k][0] = pack_half2<H>(qv(qa, e0), qv(qa, e0 + 1));
      qf[k][1] = pack_half2<H>(qv(qb, e0), qv(qb, e0 + 1));
      qf[k][2] = pack_half2<H>(qv(qa, e1), qv(qa, e1 + 1));
      qf[k][3] = pack_half2<H>(qv(qb, e1), qv(qb, e1 + 1));
    }
  }
  const float* brow_a = nullptr;
  const float* brow_b = nullptr;
  if (kExtras && a.bias) {
    if (qa < a.nq) brow_a = a.bias + (head * a.nq + qa) * a.nk;
    if (qb < a.nq) brow_b = a.bias + (head * a.nq + qb) * a.nk;
  }
  const float sl2 = a.scale * kLog2e;  // scores kept in base 2: p = 2^(s*log2e - m)

  // 16-byte tile loads when every K and V row starts 16-byte aligned (uniform per block).
  constexpr int kVecElems = 16 / sizeof(TI);
  const bool vec = (a.k.sn % kVecElems) == 0 && (a.v.sn % kVecElems) == 0 &&
                   ((reinterpret_cast<uintptr_t>(kbase + k_begin * a.k.sn) |
                     reinterpret_cast<uintptr_t>(vbase + k_begin * a.v.sn)) & 15u) == 0;
  // ldmatrix.trans row addresses for P V: lane l reads key 16kk + (l & 7) + 8 * ((l >> 3) & 1)
  // at head dims 8j + 8 * (l >> 4): registers = B fragments (b0, b1) of dim tiles j and j + 1.
  const uint32_t vs_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem + BK * RS)) +
                           4u * static_cast<uint32_t>(((lane & 7) + 8 * ((lane >> 3) & 1)) * RS +
                                                      4 * (lane >> 4));

  float o[NV][4];
#pragma unroll
  for (int j = 0; j < NV; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;  // l: this thread's columns only

  // 16-bit inputs with 16-byte aligned rows and D % 8 == 0: the next tile is fetched with cp.async
  // (zero-filled past the keys and past D) while this one is computed. Otherwise one stage,
  // loaded synchronously (rounding F32 to H).
  const bool async = std::is_same_v<TI, H> && vec && (d % 8) == 0;
  auto fetch_async = [&](int64_t j0, int stage) {
    const int rows = static_cast<int>(min(static_cast<int64_t>(BK), k_end - j0));
    uint32_t* kst = smem + stage * kStage;
    const int fill = (rows + 15) / 16 * 16;  // rows the tile's 16-key steps read
    for (int idx = tid; idx < fill * C8; idx += kThreads) {
      const int r = idx / C8, e = (idx - r * C8) * 8;
      const bool ok = r < rows && e < d;
      const TI* ksrc = ok ? kbase + (j0 + r) * a.k.sn + e : kbase;
      const TI* vsrc = ok ? vbase + (j0 + r) * a.v.sn + e : vbase;
      cp_async16(kst + r * RS + e / 2, ksrc, ok ? 16 : 0);
      cp_async16(kst + BK * RS + r * RS + e / 2, vsrc, ok ? 16 : 0);
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };
  if (async && k_begin < k_end) fetch_async(k_begin, 0);

  int it = 0;
  for (int64_t j0 = k_begin; j0 < k_end; j0 += BK, ++it) {
    const int rows = static_cast<int>(min(static_cast<int64_t>(BK), k_end - j0));
    const int groups = (rows + 7) / 8;     // 8-key groups holding keys
    const int chunks = (rows + 15) / 16;   // 16-key steps of P V
    const int stage = async ? (it & 1) : 0;
    const uint32_t* ks = smem + stage * kStage;
    __syncthreads();  // every warp is done with the stage the next fetch overwrites
    if (async) {
      if (j0 + BK < k_end) {
        fetch_async(j0 + BK, stage ^ 1);
        asm volatile("cp.async.wait_group 1;\n" ::);
      } else {
        asm volatile("cp.async.wait_group 0;\n" ::);
      }
    } else {
      // K rows [0, 8 * groups) and V rows [0, 16 * chunks): zeros past `rows` and past D (P is 0
      // there, and 0 * garbage could be NaN).
      for (int idx = tid; idx < chunks * 16 * C8; idx += kThreads) {
        const int r = idx / C8, e = (idx - r * C8) * 8;
        uint4 kx = make_uint4(0, 0, 0, 0), vx = kx;
        if (r < rows) {
          kx = load8<H>(kbase + (j0 + r) * a.k.sn, e, d, vec);
          vx = load8<H>(vbase + (j0 + r) * a.v.sn, e, d, vec);
        }
        *reinterpret_cast<uint4*>(smem + r * RS + e / 2) = kx;
        *reinterpret_cast<uint4*>(smem + BK * RS + r * RS + e / 2) = vx;
      }
    }
    __syncthreads();

    // S = Q K^T: s[n] holds (qa, key 8n + 2t4), (qa, 8n + 2t4 + 1), (qb, ...), (qb, ...).
    float s[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      if (n >= groups) continue;
      const uint32_t* kr2 = ks + (n * 8 + g) * RS + t4;
#pragma unroll
      for (int k = 0; k < KS; ++k) mma16<H>(s[n], qf[k], kr2[k * 8], kr2[k * 8 + 4]);
    }
    float u_a, u_b;
    online_softmax_tile<NT, NV, kExtras>(s, o, rows < BK, rows, t4, j0, k_begin, sl2, mask, brow_a, brow_b,
                                        m_a, m_b, l_a, l_b, u_a, u_b);
    // P = 2^(S - m) in place, then O += P V per 16-key step.
    exp2_rows(s, u_a, u_b, l_a, l_b);
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk) {
      if (kk >= chunks) continue;
      uint32_t pa[4];
      p_fragment<H>(pa, s[2 * kk], s[2 * kk + 1]);
      const uint32_t base = vs_addr + 4u * (stage * kStage + 16u * kk * RS);
#pragma unroll
      for (int j = 0; j + 1 < NV; j += 2) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4_t(base + 16u * j, b0, b1, b2, b3);
        mma16<H>(o[j], pa, b0, b1);
        mma16<H>(o[j + 1], pa, b2, b3);
      }
      if constexpr (NV % 2 == 1) {
        uint32_t b0, b1;
        ldsm_x2_t(base + 16u * (NV - 1), b0, b1);
        mma16<H>(o[NV - 1], pa, b0, b1);
      }
    }
  }

  l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
  const bool empty = k_end <= k_begin;  // no keys: zeros, as the CPU backend
  TO* op = out + lead_offset(a.lead, a.out_lead, b) + head * a.out_sh;
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    const int d0 = j * 8 + 2 * t4;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t q = e < 2 ? qa : qb;
      const int dd = d0 + (e & 1);
      if (q < a.nq && dd < d)
        store_out(op + q * a.out_sn + dd, empty ? 0.0f : o[j][e] / (e < 2 ? l_a : l_b));
    }
  }
}

// Short self-attention (temporal: nq == nk <= 32, one key per latent frame) for 16-bit (H)
// q/k/v/out without bias or key mask. One warp per (batch index, head) holds all (up to 32) query rows as
// two m16 tiles against all keys as one tile, so the softmax needs no running maxima; kHeads
// heads per block, whose rows are adjacent in memory (the heads of one token), are fetched
// together with cp.async (kHeads * D contiguous values per row instead of D).
template <typename H, int KS, int NV, int kHeads, bool kSplit>
__global__ void __launch_bounds__(kHeads * 32)
    attention_short_bf16_kernel(AttnArgs a, int64_t head_groups) {
  constexpr int DK = KS * 16, C8 = DK / 8, RS = DK / 2 + 4;
  constexpr int kMat = 32 * RS;  // words per [32][RS] matrix
  constexpr float kLog2e = 1.4426950408889634f;
  extern __shared__ uint4 smem_short[];
  uint32_t* const smem = reinterpret_cast<uint32_t*>(smem_short);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t b = blockIdx.x / head_groups;
  const int64_t head0 = (blockIdx.x - b * head_groups) * kHeads;
  const int T = static_cast<int>(a.nk), d = static_cast<int>(a.d);
  const H* base[3] = {static_cast<const H*>(a.q.p) + lead_offset(a.lead, a.q.lead, b),
                      static_cast<const H*>(a.k.p) + lead_offset(a.lead, a.k.lead, b),
                      static_cast<const H*>(a.v.p) + lead_offset(a.lead, a.v.lead, b)};
  const int64_t sn[3] = {a.q.sn, a.k.sn, a.v.sn}, sh[3] = {a.q.sh, a.k.sh, a.v.sh};
  // smem: per head h, matrices q, k, v at (3h + m) * kMat; rows past T and dims past D zero.
  // kSplit: q and k in one commit group, v in a second, so that Q K^T and the softmax run while
  // v is still landing.
  auto fetch = [&](int m_begin, int m_end) {
    const int per = 32 * kHeads * C8;
    for (int idx = m_begin * per + threadIdx.x; idx < m_end * per; idx += kHeads * 32) {
      const int c = idx % C8, h = (idx / C8) % kHeads, r = (idx / (C8 * kHeads)) % 32,
                m = idx / (C8 * kHeads * 32);
      const int64_t head = head0 + h;
      const bool ok = r < T && c * 8 < d && head < a.h;
      const H* src = ok ? base[m] + r * sn[m] + head * sh[m] + c * 8 : base[m];
      cp_async16(smem + (3 * h + m) * kMat + r * RS + c * 4, src, ok ? 16 : 0);
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };
  if (kSplit) {
    fetch(0, 2);
    fetch(2, 3);
    asm volatile("cp.async.wait_group 1;\n" ::);
  } else {
    fetch(0, 3);
    asm volatile("cp.async.wait_group 0;\n" ::);
  }
  __syncthreads();
  const int64_t head = head0 + warp;
  // (kSplit: a warp past the last head computes on zeros and returns before its stores, after the
  // block's second barrier)
  if (!kSplit && head >= a.h) return;
  const uint32_t* qs = smem + 3 * warp * kMat;
  const uint32_t* ks = qs + kMat;
  const float sl2 = a.scale * kLog2e;

  // S = Q K^T for query tiles mt (rows 16 mt + g, + 8) and 8-key groups n.
  float s[2][4][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int n = 0; n < 4; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
  const int groups = (T + 7) / 8;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
    if (mt * 16 < T) qk_tile<H, KS, RS>(s[mt], qs + mt * 16 * RS, ks, groups, lane);
  // Softmax over the T keys of each row (all in this thread's row group), base 2.
  float l[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) softmax_tile(s[mt], T, t4, sl2, l[mt][0], l[mt][1]);
  if (kSplit) {
    asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();
  }
  // O = P V per 16-key step; B fragments of V from ldmatrix.trans (as the flash kernel).
  const uint32_t vs_addr = static_cast<uint32_t>(__cvta_generic_to_shared(qs + 2 * kMat)) +
                           4u * static_cast<uint32_t>(((lane & 7) + 8 * ((lane >> 3) & 1)) * RS +
                                                      4 * (lane >> 4));
  float o[2][NV][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int j = 0; j < NV; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.0f;
  const int chunks = (T + 15) / 16;
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
    if (kk >= chunks) continue;
    const uint32_t vb = vs_addr + 4u * (16u * kk * RS);
#pragma unroll
    for (int j = 0; j < NV; j += 2) {
      uint32_t b0, b1, b2 = 0, b3 = 0;
      if (j + 1 < NV) ldsm_x4_t(vb + 16u * j, b0, b1, b2, b3);
      else ldsm_x2_t(vb + 16u * j, b0, b1);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        if (mt * 16 >= T) continue;
        uint32_t pa[4];
        p_fragment<H>(pa, s[mt][2 * kk], s[mt][2 * kk + 1]);
        mma16<H>(o[mt][j], pa, b0, b1);
        if (j + 1 < NV) mma16<H>(o[mt][j + 1], pa, b2, b3);
      }
    }
  }
  if (head >= a.h) return;
  H* op = a.out16<H>() + lead_offset(a.lead, a.out_lead, b) + head * a.out_sh;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int dd = j * 8 + 2 * t4;
      if (dd >= d) continue;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int q = mt * 16 + g + 8 * half;
        if (q >= T) continue;
        const float inv = 1.0f / l[mt][half];
        *reinterpret_cast<uint32_t*>(op + q * a.out_sn + dd) =
            pack_half2<H>(o[mt][j][2 * half] * inv, o[mt][j][2 * half + 1] * inv);
      }
    }
}

// Cross-attention to a short text (every sample has at most kTextKeys tokens) for 16-bit (H)
// q/k/v/out: bound by streaming q in and the output out. One block per (batch index, head) and
// range of 16-query tiles: the sample's K and V rows of the head are staged in shared memory once;
// then each warp walks its own tiles (every kTextWarps-th) through a kTextStages-deep cp.async
// pipeline of its own, no block barriers: S = Q K^T on the tensor cores, an exact softmax over
// the (at most 64) keys, O = P V, and the output written back through the tile's stage with
// 16-byte stores.
constexpr int kTextKeys = 64, kTextWarps = 8, kTextStages = 3;
template <typename H, int KS, int NV>
__global__ void __launch_bounds__(kTextWarps * 32)
    attention_text_bf16_kernel(AttnArgs a, int64_t tiles_per_block) {
  constexpr int DK = KS * 16, C8 = DK / 8, RS = DK / 2 + 4;
  constexpr int kKV = kTextKeys * RS;  // words per K or V matrix
  constexpr int kTile = 16 * RS;       // words per 16-row stage
  constexpr int NT = kTextKeys / 8;
  constexpr float kLog2e = 1.4426950408889634f;
  extern __shared__ uint4 smem_text[];
  uint32_t* const ks = reinterpret_cast<uint32_t*>(smem_text);
  uint32_t* const vs = ks + kKV;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  uint32_t* const qs = vs + kKV + warp * kTextStages * kTile;  // this warp's stages
  const int64_t b = blockIdx.x / a.h, head = blockIdx.x - b * a.h;
  const int d = static_cast<int>(a.d);
  const KvRange kr = kv_range(a, b, head);
  const int L = static_cast<int>(kr.end - kr.begin);
  const H* kb = static_cast<const H*>(a.k.p) + kr.koff + kr.begin * a.k.sn;
  const H* vb = static_cast<const H*>(a.v.p) + kr.voff + kr.begin * a.v.sn;
  for (int idx = threadIdx.x; idx < 2 * kTextKeys * C8; idx += kTextWarps * 32) {
    const int c = idx % C8, r = (idx / C8) % kTextKeys, m = idx / (C8 * kTextKeys);
    const bool ok = r < L && c * 8 < d;
    const H* src = m == 0 ? kb + r * a.k.sn + c * 8 : vb + r * a.v.sn + c * 8;
    cp_async16((m == 0 ? ks : vs) + r * RS + c * 4, ok ? src : kb, ok ? 16 : 0);
  }
  asm volatile("cp.async.commit_group;\n" ::);
  asm volatile("cp.async.wait_group 0;\n" ::);
  __syncthreads();

  const H* qbase = static_cast<const H*>(a.q.p) + lead_offset(a.lead, a.q.lead, b) + head * a.q.sh;
  H* obase = a.out16<H>() + lead_offset(a.lead, a.out_lead, b) + head * a.out_sh;
  const int64_t tiles = (a.nq + 15) / 16;
  const int64_t first = blockIdx.y * tiles_per_block;
  const int64_t last = first + tiles_per_block < tiles ? first + tiles_per_block : tiles;
  // One commit group per tile (empty past the end), so "all but the newest kTextStages - 1
  // groups done" always means the tile about to be used has landed.
  auto load = [&](int64_t t, int stage) {
    if (t < last)
      for (int idx = lane; idx < 16 * C8; idx += 32) {
        const int c = idx % C8, r = idx / C8;
        const int64_t row = t * 16 + r;
        const bool ok = row < a.nq && c * 8 < d;
        cp_async16(qs + stage * kTile + r * RS + c * 4, ok ? qbase + row * a.q.sn + c * 8 : qbase,
                   ok ? 16 : 0);
      }
    asm volatile("cp.async.commit_group;\n" ::);
  };
  int64_t t = first + warp;
#pragma unroll
  for (int p = 0; p < kTextStages - 1; ++p) load(t + p * kTextWarps, p);
  const float sl2 = a.scale * kLog2e;
  const uint32_t vs_addr = static_cast<uint32_t>(__cvta_generic_to_shared(vs)) +
                           4u * static_cast<uint32_t>(((lane & 7) + 8 * ((lane >> 3) & 1)) * RS +
                                                      4 * (lane >> 4));
  for (int st = 0; t < last; t += kTextWarps, st = st + 1 == kTextStages ? 0 : st + 1) {
    load(t + (kTextStages - 1) * kTextWarps, st == 0 ? kTextStages - 1 : st - 1);
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kTextStages - 1));
    __syncwarp();
    uint32_t* const tile = qs + st * kTile;
    // S = Q K^T for the 8-key groups that hold keys.
    float s[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    qk_tile<H, KS, RS>(s, tile, ks, (L + 7) / 8, lane);
    // Exact softmax over the L keys of rows g and g + 8 (base 2).
    float la, lb;
    softmax_tile(s, L, t4, sl2, la, lb);
    // O = P V per 16-key step.
    float o[NV][4];
#pragma unroll
    for (int j = 0; j < NV; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kTextKeys / 16; ++kk) {
      if (kk * 16 >= L) continue;
      const uint32_t vbase = vs_addr + 4u * (16u * kk * RS);
      uint32_t pa[4];
      p_fragment<H>(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int j = 0; j < NV; j += 2) {
        uint32_t b0, b1, b2 = 0, b3 = 0;
        if (j + 1 < NV) ldsm_x4_t(vbase + 16u * j, b0, b1, b2, b3);
        else ldsm_x2_t(vbase + 16u * j, b0, b1);
        mma16<H>(o[j], pa, b0, b1);
        if (j + 1 < NV) mma16<H>(o[j + 1], pa, b2, b3);
      }
    }
    // The output tile through this stage (Q is no longer needed), then 16-byte stores.
    __syncwarp();
    const float ia = 1.0f / la, ib = 1.0f / lb;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      tile[g * RS + j * 4 + t4] = pack_half2<H>(o[j][0] * ia, o[j][1] * ia);
      tile[(g + 8) * RS + j * 4 + t4] = pack_half2<H>(o[j][2] * ib, o[j][3] * ib);
    }
    __syncwarp();
    for (int idx = lane; idx < 16 * C8; idx += 32) {
      const int c = idx % C8, r = idx / C8;
      const int64_t row = t * 16 + r;
      if (row < a.nq && c * 8 < d)
        *reinterpret_cast<uint4*>(obase + row * a.out_sn + c * 8) =
            *reinterpret_cast<const uint4*>(tile + r * RS + c * 4);
    }
    __syncwarp();  // the stage is refilled by the next iteration's prefetch
  }
  asm volatile("cp.async.wait_group 0;\n" ::);
}

template <typename H, int KS, int NV>
void launch_text(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  constexpr int RS = KS * 8 + 4;
  const size_t smem =
      (size_t{2} * kTextKeys + size_t{kTextWarps} * kTextStages * 16) * RS * sizeof(uint32_t);
  auto kern = attention_text_bf16_kernel<H, KS, NV>;
  STDIT_CHECK(smem <= c.smem_optin, "cuda attention: needs ", smem, " bytes of shared memory");
  STDIT_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  int per_sm = 0;
  STDIT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, kTextWarps * 32, smem));
  // One wave: as many blocks as fit at once, each walking a contiguous range of query tiles.
  const int64_t bh = batch * a.h, tiles = (a.nq + 15) / 16;
  const int64_t ny = std::min(tiles, std::max<int64_t>(1, int64_t{std::max(per_sm, 1)} * c.num_sms / bh));
  const int64_t per = (tiles + ny - 1) / ny;
  const int64_t blocks_y = (tiles + per - 1) / per;
  STDIT_CHECK(bh < (int64_t{1} << 31) && blocks_y <= 65535, "cuda attention: grid too large (", bh,
              " x ", blocks_y, ")");
  kern<<<dim3(static_cast<unsigned>(bh), static_cast<unsigned>(blocks_y)), kTextWarps * 32, smem,
         c.stream>>>(a, per);
  check_launch(a.f16 ? "attention (f16, short text)" : "attention (bf16, short text)");
}

template <typename H, int KS, int NV, int kHeads, bool kSplit>
void launch_short_heads(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  constexpr int RS = KS * 8 + 4;
  const size_t smem = size_t{3} * kHeads * 32 * RS * sizeof(uint32_t);
  const int64_t groups = (a.h + kHeads - 1) / kHeads, blocks = batch * groups;
  STDIT_CHECK(blocks < (int64_t{1} << 31), "cuda attention: grid too large (", blocks, ")");
  auto kern = attention_short_bf16_kernel<H, KS, NV, kHeads, kSplit>;
  STDIT_CHECK(smem <= c.smem_optin, "cuda attention: needs ", smem, " bytes of shared memory");
  STDIT_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  kern<<<static_cast<unsigned>(blocks), kHeads * 32, smem, c.stream>>>(a, groups);
  check_launch(a.f16 ? "attention (f16, short)" : "attention (bf16, short)");
}

// Trial switches (docs/PERF.md), bf16 at head dim 72 only, read once: STDIT_CUDA_SHORT_HEADS=1|2
// heads per block (else 4), STDIT_CUDA_SHORT_SPLIT=1 v fetched in a second group behind q and k.
template <typename H, int KS, int NV>
void launch_short(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  if constexpr (!std::is_same_v<H, __nv_bfloat16> || KS != 5 || NV != 9) {
    launch_short_heads<H, KS, NV, 4, false>(c, a, batch);
  } else {
    static const int heads = env_choice("STDIT_CUDA_SHORT_HEADS", {1, 2});
    static const bool split = env_choice("STDIT_CUDA_SHORT_SPLIT", {1}) == 1;
    auto go = [&](auto k) {
      constexpr int kHeads = decltype(k)::value;
      if (split) launch_short_heads<H, KS, NV, kHeads, true>(c, a, batch);
      else launch_short_heads<H, KS, NV, kHeads, false>(c, a, batch);
    };
    if (heads == 1) go(std::integral_constant<int, 1>{});
    else if (heads == 2) go(std::integral_constant<int, 2>{});
    else go(std::integral_constant<int, 4>{});
  }
}

// 16-bit (BF16 or F16) q/k/v/out whose rows (and head offsets, and leading strides) are 16-byte
// aligned for cp.async and whose output pairs are 4-byte aligned, without bias or key mask.
bool rows_aligned_bf16(const AttnArgs& a) {
  if (a.bias || a.key_mask || !a.in_bf16 || !a.out_bf16 || a.d % 8 != 0) return false;
  auto al = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
  if (!al(a.q.p) || !al(a.k.p) || !al(a.v.p) || !al(a.out_bf16)) return false;
  bool ok = a.q.sn % 8 == 0 && a.k.sn % 8 == 0 && a.v.sn % 8 == 0 && a.q.sh % 8 == 0 &&
            a.k.sh % 8 == 0 && a.v.sh % 8 == 0 && a.out_sn % 2 == 0 && a.out_sh % 2 == 0;
  for (int i = 0; i < a.lead.rank; ++i)
    ok = ok && a.q.lead.s[i] % 8 == 0 && a.out_lead.s[i] % 2 == 0 &&
         (a.kv_packed || (a.k.lead.s[i] % 8 == 0 && a.v.lead.s[i] % 8 == 0));
  return ok;
}

// Whether the short kernel takes this call: 16-bit self-attention of 16 < nq == nk <= 32 without
// extras, D a multiple of 8 up to 80, every row 16-byte aligned. Measured on an H200: at T = 30
// (720p 4s) it is faster than the flash kernel (65 vs 93 ms of temporal attention per step), at
// T = 8 slower (3.0 vs 0.45 ms at [3600, 8, 16, 72]), so up to 16 keys the flash kernel stays.
bool short_applies(const AttnArgs& a) {
  if (a.kv_packed || a.nq != a.nk || a.nk > 32 || a.nk <= 16 || a.d > 80) return false;
  return rows_aligned_bf16(a);
}

template <int KS, int NV, int BK, int kWarps, bool kExtras>
void launch_w(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  constexpr int RS = KS * 8 + 4;
  const size_t smem = 2 * 2 * BK * RS * sizeof(uint32_t);  // two stages of K and V
  const int64_t bh = batch * a.h, qt = (a.nq + 16 * kWarps - 1) / (16 * kWarps);
  STDIT_CHECK(bh < (int64_t{1} << 31) && qt <= 65535, "cuda attention: grid too large (", bh,
              " x ", qt, ")");
  const dim3 grid(static_cast<unsigned>(bh), static_cast<unsigned>(qt));
  auto go = [&](auto kern, auto* out) {
    STDIT_CHECK(smem <= c.smem_optin, "cuda attention: needs ", smem, " bytes of shared memory");
    STDIT_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    kern<<<grid, kWarps * 32, smem, c.stream>>>(a, out);
  };
  with_half16(a.f16, [&](auto h) {
    using H = decltype(h);
    if (a.in_bf16) {
      if (a.out_bf16) go(attention_bf16_kernel<KS, NV, BK, kWarps, kExtras, H, H, H>, a.out16<H>());
      else go(attention_bf16_kernel<KS, NV, BK, kWarps, kExtras, H, H, float>, a.out);
    } else {
      if (a.out_bf16) go(attention_bf16_kernel<KS, NV, BK, kWarps, kExtras, H, float, H>, a.out16<H>());
      else go(attention_bf16_kernel<KS, NV, BK, kWarps, kExtras, H, float, float>, a.out);
    }
  });
  check_launch(a.f16 ? "attention (f16)" : "attention (bf16)");
}

template <int KS, int NV, int BK, int kWarps>
void launch_x(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  if (a.bias || a.key_mask) launch_w<KS, NV, BK, kWarps, true>(c, a, batch);
  else launch_w<KS, NV, BK, kWarps, false>(c, a, batch);
}

// Warps per block from the query count, as the TF32 kernel.
template <int KS, int NV, int BK>
void launch(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  if (a.nq <= 16) launch_x<KS, NV, BK, 1>(c, a, batch);
  else if (a.nq <= 32) launch_x<KS, NV, BK, 2>(c, a, batch);
  else launch_x<KS, NV, BK, 8>(c, a, batch);
}

}  // namespace

bool launch_cross_attention_text_bf16(const CudaContext& c, const AttnArgs& a, int64_t batch,
                                      int max_kv_len) {
  // (the output, too, is written in 16-byte pieces)
  if (!a.kv_packed || max_kv_len > kTextKeys || a.d > 80 || !rows_aligned_bf16(a) ||
      a.out_sn % 8 != 0 || a.out_sh % 8 != 0)
    return false;
  for (int i = 0; i < a.lead.rank; ++i)
    if (a.out_lead.s[i] % 8 != 0) return false;
  with_half16(a.f16, [&](auto h) {
    using H = decltype(h);
    if (a.d <= 64) launch_text<H, 4, 8>(c, a, batch);
    else if (a.d <= 72) launch_text<H, 5, 9>(c, a, batch);
    else launch_text<H, 5, 10>(c, a, batch);
  });
  return true;
}

bool launch_attention_short_bf16(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  // Short key sequences (temporal attention: one key per latent frame) take 32-key tiles: half
  // the padded work and half the shared memory per block, so twice the blocks per SM.
  if (!short_applies(a)) return false;
  with_half16(a.f16, [&](auto h) {
    using H = decltype(h);
    if (a.d <= 64) launch_short<H, 4, 8>(c, a, batch);
    else if (a.d <= 72) launch_short<H, 5, 9>(c, a, batch);
    else launch_short<H, 5, 10>(c, a, batch);
  });
  return true;
}

bool launch_attention_bf16(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  const int64_t d = a.d;
  const bool short_k = !a.kv_packed && a.nk <= 32;
  if (d <= 16) launch<1, 2, 64>(c, a, batch);
  else if (d <= 32) launch<2, 4, 64>(c, a, batch);
  else if (d <= 64) short_k ? launch<4, 8, 32>(c, a, batch) : launch<4, 8, 64>(c, a, batch);
  else if (d <= 72) short_k ? launch<5, 9, 32>(c, a, batch) : launch<5, 9, 64>(c, a, batch);
  else if (d <= 80) short_k ? launch<5, 10, 32>(c, a, batch) : launch<5, 10, 64>(c, a, batch);
  else if (d <= 96) launch<6, 12, 32>(c, a, batch);
  else if (d <= 128) launch<8, 16, 32>(c, a, batch);
  else return false;
  return true;
}

}  // namespace stdit::cuda
