// Shared internals of the CUDA backend: the context (stream, cuBLASLt), error checks, argument
// checks mirroring the CPU backend's, and small device helpers. CUDA translation units only.
#pragma once
#include <cublasLt.h>
#include <cudnn.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <algorithm>
#include <array>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "backend/attention_choice.h"
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"
#include "core/tensor.h"

namespace stdit {

// ------------------------------------------------------------------------------------------------
// errors

#define STDIT_CUDA_CHECK(expr)                                                                  \
  do {                                                                                          \
    const cudaError_t stdit_err_ = (expr);                                                      \
    if (stdit_err_ != cudaSuccess)                                                              \
      ::stdit::fail("cuda: ", #expr, " failed: ", cudaGetErrorName(stdit_err_), " (",           \
                    cudaGetErrorString(stdit_err_), ") at ", __FILE__, ":", __LINE__);        \
  } while (0)

#define STDIT_CUBLAS_CHECK(expr)                                                                \
  do {                                                                                          \
    const cublasStatus_t stdit_st_ = (expr);                                                    \
    if (stdit_st_ != CUBLAS_STATUS_SUCCESS)                                                     \
      ::stdit::fail("cublasLt: ", #expr, " failed with status ", static_cast<int>(stdit_st_),  \
                    " at ", __FILE__, ":", __LINE__);                                          \
  } while (0)

// After a kernel launch: configuration errors (and earlier asynchronous faults) become an Error.
void check_launch(const char* op);

// ------------------------------------------------------------------------------------------------
// context

struct GemmKey {
  int64_t m, n, k, lda, ldb, ldc;
  int transa, transb, epilogue, align_a, align_b, align_c;
  int bf16_in;   // A and B: 0 F32, 1 BF16, 2 FP8 e4m3, 3 F16
  int bf16_out;  // C: 0 F32, 1 BF16, 3 F16
  int64_t batch, stride_a, stride_b, stride_c, stride_bias;  // strided batch (1: none)
  auto tied() const {
    return std::tie(m, n, k, lda, ldb, ldc, transa, transb, epilogue, align_a, align_b, align_c,
                    bf16_in, bf16_out, batch, stride_a, stride_b, stride_c, stride_bias);
  }
  bool operator<(const GemmKey& o) const { return tied() < o.tied(); }
};

struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool ok = false;  // false: cuBLASLt found no algorithm; the fallback kernel runs instead
  // STDIT_CUDA_GEMM_TUNE=1: the heuristics' candidates, to be timed on first use (cuda_linear.cu)
  static constexpr int kTuneCandidates = 8;
  cublasLtMatmulAlgo_t candidates[kTuneCandidates];
  int n_candidates = 0;
};

// A cuDNN convolution prepared for one geometry (cuda_conv.cu): descriptors, the algorithm the
// heuristics ranked first among those that fit, and its workspace size.
struct ConvKey {
  int64_t dims[14];  // x [B, Ci, T, H, W], w [Co, kt, kh, kw], strides, front paddings
  int mode;          // 0 F32 (FMA only), 1 F32 on TF32 tensor cores, 2 channels-last BF16
  bool operator<(const ConvKey& o) const {
    return std::lexicographical_compare(dims, dims + 14, o.dims, o.dims + 14) ||
           (std::equal(dims, dims + 14, o.dims) && mode < o.mode);
  }
};
struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnConvolutionFwdAlgo_t algo{};
  size_t workspace = 0;
  bool ok = false;  // false: cuDNN offers nothing for it; the im2col path runs instead
  bool best_fits = false;  // the heuristics' first choice is the one taken (its workspace fits)
};

struct CudaContext : std::enable_shared_from_this<CudaContext> {
  int device = 0;
  CudaOptions options;
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int num_sms = 0;
  size_t smem_optin = 0;
  std::atomic<size_t> bytes_in_use{0}, bytes_peak{0};  // device_alloc's own blocks
  cudaMemPool_t pool = nullptr;       // the device's default pool, which device_alloc draws from
  std::atomic<size_t> pool_limit{0};  // Backend::limit_pool's bytes (0: none)
  std::mutex gemm_mutex;
  std::map<GemmKey, GemmPlan> gemm_plans;
  // cuDNN (convolutions, attention): see dnn_handle().
  cudnnHandle_t dnn = nullptr;
  bool dnn_failed = false;
  std::mutex dnn_mutex;
  std::mutex conv_mutex;
  std::map<ConvKey, ConvPlan> conv_plans;
  std::mutex sdpa_mutex;
  std::map<std::vector<int64_t>, std::shared_ptr<struct SdpaPlan>> sdpa_plans;  // cuda_sdpa.cu
  // What runs attention: the policy's kernel families (attention_choice.h) and how often each
  // kernel ran (indexed by AttentionKernel).
  ExecutionPolicy policy;
  std::array<std::atomic<int64_t>, kAttentionKernels> attention_runs{};
  std::atomic<int64_t> replays{0};  // OpRecording::replay() calls (CudaBackend::replays)
  // Pinned host copies of the small tables ops upload while a CUDA graph is being recorded
  // (device_copy_of): the graph's copy reads them at every replay, so they live with the context,
  // in one pinned block made before the first recording (no pinned allocation may happen while a
  // stream is being captured), one copy per distinct table.
  static constexpr size_t kPinnedBytes = size_t{1} << 20;
  std::mutex pinned_mutex;
  void* pinned_block = nullptr;
  size_t pinned_used = 0;
  std::map<std::string, const void*> pinned;

  CudaContext(int device, CudaOptions options);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;
};

// ctx's cuDNN handle (on ctx's stream), created on first use; nullptr when cuDNN cannot be used
// here (warned once: the callers fall back to their own kernels).
cudnnHandle_t dnn_handle(CudaContext& ctx);
// cuDNN's last error message ("" if none), for error texts.
std::string dnn_last_error();

// STDIT_CUDA_PROFILE=1 (or STDIT_CUDA_CONV_PROFILE=1): each op that opens an OpTimer is timed
// on the stream (events and a wait after it: the run gets slower) and the totals per op and
// shape are printed at exit. A diagnostic for finding where a step goes, off by default.
class OpTimer {
 public:
  OpTimer(CudaContext& c, const char* op, const Tensor& t);
  ~OpTimer();
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;
  bool active() const { return ctx_ != nullptr; }  // profiling is on
  std::string detail;  // appended to the key (e.g. the path a convolution took)

 private:
  CudaContext* ctx_ = nullptr;  // null: not profiling
  std::string key_;
  cudaEvent_t e0_ = nullptr, e1_ = nullptr;
};

// Device memory of `bytes` bytes on ctx's stream (stream-ordered allocator); freed on that stream
// when the last owner goes.
std::shared_ptr<void> device_alloc(const std::shared_ptr<CudaContext>& ctx, size_t bytes);
// The device memory conv3d takes for itself with these shapes (cuda_conv.cu; for the dry run).
size_t conv3d_scratch_bytes(const std::shared_ptr<CudaContext>& ctx, const Shape& x_shape, const Shape& w_shape,
                            DType w_dtype, const ConvParams& p);
// The same for conv3d_cl (cuda_conv_cl.cu), x [B, T, H, W, Ci] and w [Co, kt, kh, kw, Ci].
size_t conv3d_cl_scratch_bytes(const std::shared_ptr<CudaContext>& ctx, const Shape& x_shape, const Shape& w_shape,
                               const ConvParams& p, bool residual);
// The same for group_norm_cl (cuda_conv_cl.cu), x [B, T, H, W, C] 16-byte aligned as alloc() gives it.
size_t group_norm_cl_scratch_bytes(const CudaContext& c, const Shape& x_shape);
// cuDNN's forward algorithm for a plan's descriptors (cuda_conv.cu): the heuristics' first that
// runs within ws_limit bytes of workspace (fma_only: without tensor cores); sets p.algo,
// p.workspace, p.best_fits and the math type. false: none fits.
bool choose_conv_algo(CudaContext& c, ConvPlan& p, size_t ws_limit, bool fma_only);
// Most workspace a convolution may take: 1 GiB; for a batch of one, up to twice its input and
// output together (the caller splits a batch whose best algorithm wants more).
size_t conv_workspace_limit(int64_t batch, int64_t x_elems, int64_t y_elems);

// A small host array copied to a fresh device buffer on ctx's stream (kernel arguments that do not
// fit a parameter block). The buffer is freed stream-ordered, after the kernels that use it.
std::shared_ptr<void> device_copy_of(const std::shared_ptr<CudaContext>& ctx, const void* host,
                                     size_t bytes);

// Column-major F32 GEMM on ctx's stream: C[m x n] = op(A)[m x k] * op(B)[k x n], plus bias[i]
// added to row i when bias_rows is given. cuBLASLt (TF32 or F32 compute per ctx.options), or a
// plain F32 kernel where cuBLASLt offers no algorithm. With gelu, cuBLASLt's GELU epilogue is
// tried after the bias; returns whether it was applied (false: the caller applies GELU).
bool gemm_f32(CudaContext& ctx, bool transa, bool transb, int64_t m, int64_t n, int64_t k,
              const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
              const float* bias_rows = nullptr, bool gelu = false);
// The same with A and B in `in` (F32, BF16 or F16) and C and the bias in `out` (F32, or the 16-bit
// type of the input); 16-bit inputs run on the tensor cores with f32 accumulation (CUBLAS_COMPUTE_32F).
bool gemm_typed(CudaContext& ctx, DType in, DType out, bool transa, bool transb, int64_t m,
                int64_t n, int64_t k, const void* A, int64_t lda, const void* B, int64_t ldb,
                void* C, int64_t ldc, const void* bias_rows = nullptr, bool gelu = false);
// C (F32, column-major m x n, ldc = m) = A^T B for e4m3 codes A (k x m, lda = k) and B (k x n,
// ldb = k): the fp8 precision's GEMM (cuBLASLt's "TN" FP8 layout, f32 accumulation without fast
// accumulation, scales 1: the caller applies the row scales), or the plain kernel where cuBLASLt
// has no algorithm.
void gemm_fp8(CudaContext& ctx, int64_t m, int64_t n, int64_t k, const void* A, const void* B, float* C);
// Tensor parallelism over two GPUs (dist/nccl_comm.cu): x += gate * (p0 + p1) (gate absent: 1)
// for x [B, N, C] F32 and two BF16 (or F16) partial sums of x's size, p1 possibly another device's memory
// (peer access enabled). residual_sum2_applies: the layouts it takes (C % 8 == 0, 16-byte
// aligned, contiguous; p's alignment is checked here, the peer's by the caller).
bool residual_sum2_applies(const Tensor& x, const Tensor& p);
// Rows [row_begin, row_end) of the flattened [B * N] rows only (row_end < 0: all), whose partial
// sums start at p0 and p1 (row row_begin first); x16 (optional, [B * N, C]): where the updated
// rows also go in the 16-bit type.
// p0, p1 and x16 hold `half` (BF16 or F16) values.
void residual_sum2(const CudaContext& c, Tensor& x, DType half, const void* p0, const void* p1, const Tensor& gate,
                   int64_t row_begin = 0, int64_t row_end = -1, void* x16 = nullptr);
// Sequence parallelism: LayerNorm + modulate (shift/scale [B, C], no frame selection) of rows
// [row_begin, row_end) of x [B, N, C] F32 into the same rows of out (`half`, BF16 or F16, [B * N, C]).
void layernorm_modulate_rows(const CudaContext& c, const Tensor& x, const Tensor& shift,
                             const Tensor& scale, float eps, int64_t row_begin, int64_t row_end,
                             DType half, void* out);
// Strided-batched accumulation through cuBLASLt only: for each i < batch,
// C_i[m x n] += op(A_i) op(B_i) + bias_i (column-major, C and the bias in `out`, bias_i[r] added
// to row r), with X_i = X + i * stride_x in elements. Returns false, with nothing written, when
// cuBLASLt has no algorithm for it (the caller takes an unfused path).
bool gemm_accumulate(CudaContext& ctx, DType in, DType out, bool transa, bool transb, int64_t m,
                     int64_t n, int64_t k, int64_t batch, const void* A, int64_t lda,
                     int64_t stride_a, const void* B, int64_t ldb, int64_t stride_b, void* C,
                     int64_t ldc, int64_t stride_c, const void* bias_rows, int64_t stride_bias);

// ------------------------------------------------------------------------------------------------
// argument checks (the CPU backend's, plus "lives on this device")

namespace cuda {
void expect_device(const Tensor& t, const CudaContext& ctx, const char* op, const char* what);
void expect_f32(const Tensor& t, const CudaContext& ctx, const char* op, const char* what);
void expect_contiguous_f32(const Tensor& t, const CudaContext& ctx, const char* op,
                           const char* what);
void expect_shape(const Tensor& t, const Shape& s, const char* op, const char* what);
// F32 or BF16 (the bf16 path's activations), on this device, contiguous last dim.
void expect_float(const Tensor& t, const CudaContext& ctx, const char* op, const char* what);
void expect_contiguous_float(const Tensor& t, const CudaContext& ctx, const char* op,
                             const char* what);

// Output stores for kernels templated on the output type (bf16: round to nearest even).
__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_out(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ float load_f(const float* p) { return *p; }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float load_f(const __nv_fp8_e4m3* p) { return static_cast<float>(*p); }
// F16 stores saturate: a finite f32 beyond F16's range gives +-65504, not an infinity (T5-XXL's
// feed-forward activations exceed it where HF clamps them; NaN stays NaN).
__device__ __forceinline__ float f16_saturate(float v) { return fabsf(v) > 65504.0f ? copysignf(65504.0f, v) : v; }
__device__ __forceinline__ void store_out(__half* p, float v) { *p = __float2half_rn(f16_saturate(v)); }
__device__ __forceinline__ float load_f(const __half* p) { return __half2float(*p); }

// The 16-bit float formats of the bf16 path: BF16, or F16 under --precision fp16 (CudaOptions::f16).
inline bool is_half16(DType t) { return t == DType::BF16 || t == DType::F16; }
// The 16-bit format this context's bf16 path runs in.
inline DType half16_dtype(const CudaContext& c) { return c.options.f16 ? DType::F16 : DType::BF16; }
// Calls f with a value of the 16-bit element type: __half when f16, else __nv_bfloat16 (host-side
// dispatch of kernels templated on it).
template <typename F>
decltype(auto) with_half16(bool f16, F&& f) {
  if (f16) return f(__half{});
  return f(__nv_bfloat16{});
}
// Two floats as one register of a 16-bit pair (round to nearest even, F16 saturating; lo in the
// low half).
template <typename H>
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  if constexpr (std::is_same_v<H, __half>) {
    const __half2 v = __floats2half2_rn(f16_saturate(lo), f16_saturate(hi));
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}
// The two values of a 16-bit pair (pack_half2's inverse, exact).
template <typename H>
__device__ __forceinline__ float2 unpack_half2(uint32_t v) {
  if constexpr (std::is_same_v<H, __half>) return __half22float2(*reinterpret_cast<const __half2*>(&v));
  else return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v));
}

// A developer's numeric switch read once per process by its caller (STDIT_CUDA_FP8_GEMM_SCHEDULE=2,
// ...): the variable's value when it is one of `allowed`, else 0 (unset, or a value no kernel has).
inline int env_choice(const char* name, std::initializer_list<int> allowed) {
  const char* e = std::getenv(name);
  const int v = e ? std::atoi(e) : 0;
  return std::find(allowed.begin(), allowed.end(), v) != allowed.end() ? v : 0;
}

inline unsigned blocks_for(int64_t n, int threads, int64_t cap = 1 << 20) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > cap) b = cap;
  return static_cast<unsigned>(b);
}

// Leading ("batch") dims of a strided tensor: shape shared by several tensors, strides per tensor.
constexpr int kMaxLead = 6;
struct LeadStrides {
  int64_t s[kMaxLead];
};
struct LeadShape {
  int rank = 0;
  int64_t n[kMaxLead];
};
LeadShape lead_shape(const Tensor& t, int lead);
LeadStrides lead_strides(const Tensor& t, int lead);

__host__ __device__ __forceinline__ int64_t lead_offset(const LeadShape& sh, const LeadStrides& st,
                                               int64_t b) {
  // Unrolled with constant indices so that the parameter arrays stay out of local memory.
  int64_t off = 0;
#pragma unroll
  for (int i = kMaxLead - 1; i >= 0; --i) {
    if (i < sh.rank) {
      const int64_t q = b / sh.n[i];
      off += (b - q * sh.n[i]) * st.s[i];
      b = q;
    }
  }
  return off;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// x / (1 + exp(-x)) in f32, as the CPU backend writes it.
__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float gelu_tanh_f(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

}  // namespace cuda
}  // namespace stdit
