// CUDA backend: context, memory, elementwise ops, embeddings, gather.
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/device_memory.h"
#include "core/log.h"

namespace stdit {

// ================================================================================================
// context, errors, checks

void check_launch(const char* op) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    fail("cuda ", op, ": kernel launch failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e),
         ")");
}

CudaContext::CudaContext(int dev, CudaOptions opt) : device(dev), options(opt) {
  const std::string problem = cuda_device_problem(dev);
  STDIT_CHECK(problem.empty(), "cuda backend: ", problem);
  STDIT_CUDA_CHECK(cudaSetDevice(dev));
  cudaDeviceProp prop{};
  STDIT_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  // The build holds sm_80 code (which Ampere and Ada run), sm_90a code (Hopper, with the wgmma
  // kernels the policy chooses there only) and compute_80 PTX for newer GPUs.
  STDIT_CHECK(prop.major >= 8, "cuda backend: needs compute capability 8.0 or newer (Ampere, Ada, Hopper); device ",
              dev, " (", prop.name, ") is sm_", prop.major, prop.minor);
  num_sms = prop.multiProcessorCount;
  smem_optin = prop.sharedMemPerBlockOptin;
  // Keep freed blocks in the pool: the models allocate and free the same sizes every step.
  STDIT_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
  uint64_t threshold = std::numeric_limits<uint64_t>::max();
  STDIT_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  // A blocking stream: it also orders against work that others put on the legacy default stream.
  STDIT_CUDA_CHECK(cudaStreamCreate(&stream));
  STDIT_CUBLAS_CHECK(cublasLtCreate(&lt));
  workspace_bytes = size_t{64} << 20;
  STDIT_CUDA_CHECK(cudaMalloc(&workspace, workspace_bytes));
}

CudaContext::~CudaContext() {
  // Never throws: this may run at exit, after the CUDA runtime has begun to unload. The calling
  // thread's current device is restored afterwards (it may be driving another GPU).
  int previous = -1;
  cudaGetDevice(&previous);
  cudaSetDevice(device);
  if (stream) cudaStreamSynchronize(stream);
  for (auto& [key, plan] : gemm_plans) {
    if (plan.desc) cublasLtMatmulDescDestroy(plan.desc);
    if (plan.a) cublasLtMatrixLayoutDestroy(plan.a);
    if (plan.b) cublasLtMatrixLayoutDestroy(plan.b);
    if (plan.c) cublasLtMatrixLayoutDestroy(plan.c);
  }
  if (lt) cublasLtDestroy(lt);
  for (auto& [key, plan] : conv_plans) {
    if (plan.x) cudnnDestroyTensorDescriptor(plan.x);
    if (plan.y) cudnnDestroyTensorDescriptor(plan.y);
    if (plan.w) cudnnDestroyFilterDescriptor(plan.w);
    if (plan.conv) cudnnDestroyConvolutionDescriptor(plan.conv);
  }
  sdpa_plans.clear();  // their descriptors, before the handle
  if (pinned_block) cudaFreeHost(pinned_block);
  if (dnn) cudnnDestroy(dnn);
  if (workspace) cudaFree(workspace);
  if (stream) cudaStreamDestroy(stream);
  if (previous >= 0) cudaSetDevice(previous);
}

namespace {
struct OpProfile {
  std::mutex m;
  std::map<std::string, std::pair<int, double>> ms;  // calls, milliseconds
  ~OpProfile() {
    double total = 0;
    for (auto& [k, v] : ms) {
      std::fprintf(stderr, "cuda profile: %9.1f ms %6d calls  %s\n", v.second, v.first, k.c_str());
      total += v.second;
    }
    if (!ms.empty()) std::fprintf(stderr, "cuda profile: %9.1f ms in all\n", total);
  }
};
OpProfile* op_profile() {
  static OpProfile* p = std::getenv("STDIT_CUDA_PROFILE") || std::getenv("STDIT_CUDA_CONV_PROFILE")
                            ? new OpProfile
                            : nullptr;
  static struct Flush {
    ~Flush() { delete p; }
  } flush;
  return p;
}
}  // namespace

OpTimer::OpTimer(CudaContext& c, const char* op, const Tensor& t) {
  if (!op_profile()) return;
  ctx_ = &c;
  key_ = cat(op, " ", shape_str(t.shape()), " ", dtype_name(t.dtype()));
  STDIT_CUDA_CHECK(cudaEventCreate(&e0_));
  STDIT_CUDA_CHECK(cudaEventCreate(&e1_));
  STDIT_CUDA_CHECK(cudaEventRecord(e0_, c.stream));
}

OpTimer::~OpTimer() {
  if (!ctx_) return;
  float ms = 0;
  if (cudaEventRecord(e1_, ctx_->stream) == cudaSuccess && cudaEventSynchronize(e1_) == cudaSuccess)
    cudaEventElapsedTime(&ms, e0_, e1_);
  cudaEventDestroy(e0_);
  cudaEventDestroy(e1_);
  OpProfile* p = op_profile();
  std::lock_guard<std::mutex> lock(p->m);
  auto& v = p->ms[detail.empty() ? key_ : key_ + " " + detail];
  v.first += 1;
  v.second += ms;
}

cudnnHandle_t dnn_handle(CudaContext& c) {
  std::lock_guard<std::mutex> lock(c.dnn_mutex);
  if (c.dnn || c.dnn_failed) return c.dnn;
  cudnnStatus_t st = cudnnCreate(&c.dnn);
  if (st == CUDNN_STATUS_SUCCESS) st = cudnnSetStream(c.dnn, c.stream);
  if (st != CUDNN_STATUS_SUCCESS) {
    log_warn("cuda: cuDNN unavailable (", cudnnGetErrorString(st), " ", dnn_last_error(),
             "); convolutions and attention use the backend's own kernels");
    if (c.dnn) cudnnDestroy(c.dnn);
    c.dnn = nullptr;
    c.dnn_failed = true;
  }
  return c.dnn;
}

std::string dnn_last_error() {
  char buf[1024] = {0};
  cudnnGetLastErrorString(buf, sizeof buf);
  return buf;
}

namespace {
// Backend::limit_pool: when the pool holds free blocks and this allocation could take what it
// reserves past the limit, the queued frees are waited for and the pool trims itself to the limit
// less this allocation (the free blocks it keeps may still serve it without growing).
void keep_pool_under(CudaContext& c, size_t limit, size_t bytes) {
  uint64_t reserved = 0, used = 0;
  STDIT_CUDA_CHECK(cudaMemPoolGetAttribute(c.pool, cudaMemPoolAttrReservedMemCurrent, &reserved));
  STDIT_CUDA_CHECK(cudaMemPoolGetAttribute(c.pool, cudaMemPoolAttrUsedMemCurrent, &used));
  if (reserved + bytes <= limit || reserved <= used) return;
  STDIT_CUDA_CHECK(cudaStreamSynchronize(c.stream));
  STDIT_CUDA_CHECK(cudaMemPoolTrimTo(c.pool, limit > bytes ? limit - bytes : 0));
}
}  // namespace

std::shared_ptr<void> device_alloc(const std::shared_ptr<CudaContext>& ctx, size_t bytes) {
  if (bytes == 0) return std::shared_ptr<void>();
  if (const size_t limit = ctx->pool_limit.load()) keep_pool_under(*ctx, limit, bytes);
  void* p = nullptr;
  const cudaError_t e = cudaMallocAsync(&p, bytes, ctx->stream);
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    fail("cuda: out of device memory allocating ", bytes, " bytes (", free_b >> 20, " MiB free of ",
         total_b >> 20, " MiB): ", cudaGetErrorString(e));
  }
  const size_t now = ctx->bytes_in_use.fetch_add(bytes) + bytes;
  size_t peak = ctx->bytes_peak.load();
  while (now > peak && !ctx->bytes_peak.compare_exchange_weak(peak, now)) {
  }
  std::shared_ptr<CudaContext> keep = ctx;
  return std::shared_ptr<void>(p, [keep, bytes](void* q) {
    cudaFreeAsync(q, keep->stream);
    keep->bytes_in_use.fetch_sub(bytes);
  });
}

std::shared_ptr<void> device_copy_of(const std::shared_ptr<CudaContext>& ctx, const void* host,
                                     size_t bytes) {
  auto d = device_alloc(ctx, bytes);
  if (!bytes) return d;
  // While a graph is being recorded the copy becomes one of its nodes, read again at every replay:
  // from a pinned copy of these bytes that lives as long as the context (a graph may not copy
  // from pageable memory, which the caller may free).
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  STDIT_CUDA_CHECK(cudaStreamIsCapturing(ctx->stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) {
    std::lock_guard<std::mutex> lock(ctx->pinned_mutex);
    std::string key(static_cast<const char*>(host), bytes);
    auto it = ctx->pinned.find(key);
    if (it == ctx->pinned.end()) {
      const size_t at = (ctx->pinned_used + 15) / 16 * 16;
      STDIT_CHECK(ctx->pinned_block && at + bytes <= CudaContext::kPinnedBytes, "cuda: the ", bytes,
                  "-byte table of an op being recorded into a CUDA graph does not fit the pinned block's ",
                  CudaContext::kPinnedBytes - std::min(at, CudaContext::kPinnedBytes),
                  " bytes left; STDIT_CUDA_GRAPHS=0 runs without graphs");
      char* to = static_cast<char*>(ctx->pinned_block) + at;
      std::memcpy(to, host, bytes);
      ctx->pinned_used = at + bytes;
      it = ctx->pinned.emplace(std::move(key), to).first;
    }
    host = it->second;
  }
  STDIT_CUDA_CHECK(cudaMemcpyAsync(d.get(), host, bytes, cudaMemcpyHostToDevice, ctx->stream));
  return d;
}

namespace cuda {

void expect_device(const Tensor& t, const CudaContext& ctx, const char* op, const char* what) {
  STDIT_CHECK(t.defined(), "cuda ", op, ": ", what, " is missing");
  STDIT_CHECK(t.device().kind == DeviceKind::CUDA && t.device().index == ctx.device, "cuda ", op,
              ": ", what, " is not a tensor of this CUDA device (upload it first)");
}
void expect_f32(const Tensor& t, const CudaContext& ctx, const char* op, const char* what) {
  expect_device(t, ctx, op, what);
  STDIT_CHECK(t.dtype() == DType::F32, "cuda ", op, ": ", what, " must be F32, got ",
              dtype_name(t.dtype()));
  STDIT_CHECK(t.dim() == 0 || t.stride(-1) == 1 || t.size(-1) == 1, "cuda ", op, ": ", what,
              " must have a contiguous last dimension");
}
void expect_contiguous_f32(const Tensor& t, const CudaContext& ctx, const char* op,
                           const char* what) {
  expect_f32(t, ctx, op, what);
  STDIT_CHECK(t.is_contiguous(), "cuda ", op, ": ", what, " must be contiguous");
}
void expect_float(const Tensor& t, const CudaContext& ctx, const char* op, const char* what) {
  expect_device(t, ctx, op, what);
  STDIT_CHECK(t.dtype() == DType::F32 || is_half16(t.dtype()), "cuda ", op, ": ", what,
              " must be F32, BF16 or F16, got ", dtype_name(t.dtype()));
  STDIT_CHECK(t.dim() == 0 || t.stride(-1) == 1 || t.size(-1) == 1, "cuda ", op, ": ", what,
              " must have a contiguous last dimension");
}
void expect_contiguous_float(const Tensor& t, const CudaContext& ctx, const char* op,
                             const char* what) {
  expect_float(t, ctx, op, what);
  STDIT_CHECK(t.is_contiguous(), "cuda ", op, ": ", what, " must be contiguous");
}
void expect_shape(const Tensor& t, const Shape& s, const char* op, const char* what) {
  STDIT_CHECK(t.shape() == s, "cuda ", op, ": ", what, " has shape ", shape_str(t.shape()),
              ", expected ", shape_str(s));
}

LeadShape lead_shape(const Tensor& t, int lead) {
  STDIT_CHECK(lead <= kMaxLead, "cuda: tensor ", shape_str(t.shape()), " has more than ", kMaxLead,
              " leading dimensions");
  LeadShape s;
  s.rank = lead;
  for (int i = 0; i < lead; ++i) s.n[i] = t.size(i);
  return s;
}
LeadStrides lead_strides(const Tensor& t, int lead) {
  LeadStrides s{};
  for (int i = 0; i < lead; ++i) s.s[i] = t.stride(i);
  return s;
}

}  // namespace cuda

using namespace cuda;

// ================================================================================================
// backend object, memory

CudaBackend::CudaBackend(int device, CudaOptions options)
    : CudaBackend(device, options, [&] {
        ExecutionPolicy p;  // what these options mean, for policy()
        p.backend = "cuda";
        p.precision = options.bf16 ? (options.f16 ? Precision::F16 : Precision::BF16)
                      : options.tf32 ? Precision::TF32
                                     : Precision::F32;
        p.text_attention = options.text_attention;
        p.wgmma_attention = options.wgmma_attention && !options.f16;  // bf16 only
        p.cudnn_attention = options.cudnn_attention;
        p.tf32_attention = options.tf32_attention;
        p.cudnn_conv = options.cudnn_conv;
        p.fused_bf16_gemm = options.bf16 && !options.f16 && options.fused_bf16_gemm && cuda_device_sm(device) == 90;
        p.vae_bf16 = options.bf16 && options.cudnn_conv && options.vae_bf16;
        p.step_graphs = options.graphs;
        return p;
      }()) {}

CudaBackend::CudaBackend(int device, CudaOptions options, ExecutionPolicy policy)
    : ctx_(std::make_shared<CudaContext>(device, options)),
      memory_monitor_(std::make_unique<DeviceMemoryMonitor>(device)),
      policy_(std::move(policy)) {
  ctx_->policy = policy_;
  static std::atomic<bool> told{false};
  if (policy_.precision == Precision::FP8 && !policy_.fused_fp8_gemm && !told.exchange(true))
    log_warn("--precision fp8 without the fused FP8 GEMM (Hopper only) is slower than bf16 (its scaling runs as "
             "a pass of its own; docs/PERF.md); it halves the denoiser's weight memory");
}

CudaBackend::~CudaBackend() = default;

Device CudaBackend::device() const { return Device{DeviceKind::CUDA, ctx_->device}; }
const CudaOptions& CudaBackend::options() const { return ctx_->options; }
void CudaBackend::bind_to_this_thread() { STDIT_CUDA_CHECK(cudaSetDevice(ctx_->device)); }

size_t CudaBackend::peak_memory_bytes() const { return ctx_->bytes_peak.load(); }
size_t CudaBackend::device_memory_peak_bytes() const { return memory_monitor_->peak(); }
void CudaBackend::reset_peak_memory() { ctx_->bytes_peak.store(ctx_->bytes_in_use.load()); }
size_t CudaBackend::allocated_bytes() const { return ctx_->bytes_in_use.load(); }

size_t CudaBackend::device_memory_in_use_bytes() const {
  int previous = -1;
  STDIT_CUDA_CHECK(cudaGetDevice(&previous));
  STDIT_CUDA_CHECK(cudaSetDevice(ctx_->device));
  size_t free_b = 0, total_b = 0;
  STDIT_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  STDIT_CUDA_CHECK(cudaSetDevice(previous));
  return total_b - free_b;
}

void CudaBackend::release_cached_memory() {
  int previous = -1;
  STDIT_CUDA_CHECK(cudaGetDevice(&previous));
  STDIT_CUDA_CHECK(cudaSetDevice(ctx_->device));
  STDIT_CUDA_CHECK(cudaStreamSynchronize(ctx_->stream));  // frees queued on the stream are done
  STDIT_CUDA_CHECK(cudaMemPoolTrimTo(ctx_->pool, 0));
  STDIT_CUDA_CHECK(cudaSetDevice(previous));
}

void CudaBackend::limit_pool(size_t bytes) { ctx_->pool_limit.store(bytes); }

// ================================================================================================
// recordings (CUDA graphs)

namespace {
// One instantiated graph and what its ops count on the host when they run eagerly (which attention
// kernels), added again at each replay so that attention_kernels() tells the same either way.
class CudaRecording final : public OpRecording {
 public:
  CudaRecording(std::shared_ptr<CudaContext> ctx, cudaGraphExec_t exec, std::array<int64_t, kAttentionKernels> runs)
      : ctx_(std::move(ctx)), exec_(exec), runs_(runs) {}
  ~CudaRecording() override {
    // Never throws. The graph's memory goes back to the device once no launch of it is queued.
    int previous = -1;
    cudaGetDevice(&previous);
    cudaSetDevice(ctx_->device);
    cudaStreamSynchronize(ctx_->stream);
    cudaGraphExecDestroy(exec_);
    cudaDeviceGraphMemTrim(ctx_->device);
    if (previous >= 0) cudaSetDevice(previous);
  }
  void replay() override {
    STDIT_CUDA_CHECK(cudaGraphLaunch(exec_, ctx_->stream));
    for (int k = 0; k < kAttentionKernels; ++k) ctx_->attention_runs[k] += runs_[k];
    ++ctx_->replays;
  }

 private:
  std::shared_ptr<CudaContext> ctx_;
  cudaGraphExec_t exec_;
  std::array<int64_t, kAttentionKernels> runs_;
};
}  // namespace

bool CudaBackend::records() const { return policy_.step_graphs && ctx_->pool_limit.load() == 0 && !op_profile(); }

int64_t CudaBackend::replays() const { return ctx_->replays.load(); }

std::unique_ptr<OpRecording> CudaBackend::record(const std::function<void()>& fn) {
  if (!records()) return Backend::record(fn);  // fn, as it is
  // The graph's allocations come from a pool of the device's own: the blocks this backend's pool
  // keeps from earlier calls go back first, so that the two do not both hold a step's worth.
  release_cached_memory();
  {
    std::lock_guard<std::mutex> lock(ctx_->pinned_mutex);
    if (!ctx_->pinned_block) STDIT_CUDA_CHECK(cudaMallocHost(&ctx_->pinned_block, CudaContext::kPinnedBytes));
  }
  const size_t held = ctx_->bytes_in_use.load();
  std::array<int64_t, kAttentionKernels> runs{};
  for (int k = 0; k < kAttentionKernels; ++k) runs[k] = ctx_->attention_runs[k].load();
  STDIT_CUDA_CHECK(cudaStreamBeginCapture(ctx_->stream, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t graph = nullptr;
  try {
    fn();
  } catch (...) {
    cudaStreamEndCapture(ctx_->stream, &graph);
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    throw;
  }
  const cudaError_t ended = cudaStreamEndCapture(ctx_->stream, &graph);
  if (ended != cudaSuccess || !graph) {
    cudaGetLastError();
    fail("cuda: recording ops as a CUDA graph failed (", cudaGetErrorString(ended),
         "); STDIT_CUDA_GRAPHS=0 runs them without graphs");
  }
  // Every allocation of the recording must be freed in it, and nothing allocated before it.
  if (const size_t after = ctx_->bytes_in_use.load(); after != held) {
    cudaGraphDestroy(graph);
    fail("cuda: recording a CUDA graph changed what is allocated from ", held, " to ", after,
         " bytes (a tensor allocated in it outlives it, or one allocated before it was freed in it)");
  }
  for (int k = 0; k < kAttentionKernels; ++k) runs[k] = ctx_->attention_runs[k].load() - runs[k];
  cudaGraphExec_t exec = nullptr;
  const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  STDIT_CUDA_CHECK(made);
  auto recording = std::make_unique<CudaRecording>(ctx_, exec, runs);
  // What fn queued was recorded, not run: once now. (Its attention kernels were counted by fn.)
  STDIT_CUDA_CHECK(cudaGraphLaunch(exec, ctx_->stream));
  return recording;
}

void CudaBackend::synchronize() {
  STDIT_CUDA_CHECK(cudaStreamSynchronize(ctx_->stream));
  STDIT_CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::fill_bytes(Tensor& t, int byte) {
  expect_device(t, *ctx_, "fill_bytes", "t");
  STDIT_CHECK(t.is_contiguous(), "cuda fill_bytes: tensor must be contiguous");
  if (t.nbytes()) STDIT_CUDA_CHECK(cudaMemsetAsync(t.raw(), byte, t.nbytes(), ctx_->stream));
}

Tensor CudaBackend::alloc(const Shape& shape, DType dtype) {
  for (int64_t d : shape) STDIT_CHECK(d >= 0, "cuda alloc: negative dimension in ", shape_str(shape));
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  auto mem = device_alloc(ctx_, bytes);
  void* p = mem.get();
  return Tensor::from_blob(p, shape, dtype, std::move(mem), device());
}

Tensor CudaBackend::upload(const Tensor& host) {
  STDIT_CHECK(host.defined(), "cuda upload: tensor is missing");
  const DType target = is_float(host.dtype()) ? DType::F32 : host.dtype();
  if (host.device().kind == DeviceKind::CUDA) {
    // Already on a device: a fresh packed copy (device floats are F32 in this backend).
    expect_device(host, *ctx_, "upload", "source");
    STDIT_CHECK(host.dtype() == target, "cuda upload: device tensor of dtype ",
                dtype_name(host.dtype()));
    Tensor d = alloc(host.shape(), target);
    copy(host, d);
    return d;
  }
  // Floats are widened (bf16/f16 exactly) and packed on the host, then copied.
  const Tensor h = host.to(target);
  Tensor d = alloc(h.shape(), target);
  if (h.nbytes())
    STDIT_CUDA_CHECK(
        cudaMemcpyAsync(d.raw(), h.raw(), h.nbytes(), cudaMemcpyHostToDevice, ctx_->stream));
  return d;
}

DType CudaBackend::matmul_dtype() const { return ctx_->options.bf16 ? half16_dtype(*ctx_) : DType::F32; }

Tensor CudaBackend::upload_weight(const Tensor& host) {
  STDIT_CHECK(host.defined(), "cuda upload: tensor is missing");
  if (host.dtype() == DType::F8_E4M3) {  // an fp8 weight: its codes and row scales as they are
    STDIT_CHECK(host.device().kind == DeviceKind::CPU && host.scales().defined(),
                "cuda upload: an F8_E4M3 weight needs its row scales (host)");
    const Tensor h = host.contiguous();
    Tensor d = alloc(h.shape(), DType::F8_E4M3);
    if (h.nbytes())
      STDIT_CUDA_CHECK(cudaMemcpyAsync(d.raw(), h.raw(), h.nbytes(), cudaMemcpyHostToDevice, ctx_->stream));
    return d.with_scales(upload(host.scales()));
  }
  if (!ctx_->options.bf16 || !is_float(host.dtype())) return upload(host);
  const DType half = half16_dtype(*ctx_);
  if (host.device().kind == DeviceKind::CUDA) {  // a device tensor: converted on the device
    expect_float(host, *ctx_, "upload", "source");
    Tensor d = alloc(host.shape(), half);
    copy(host, d);
    return d;
  }
  // Rounded to bf16 (f16) on the host (exact for bf16 engines on the bf16 path), then copied.
  const Tensor h = host.to(half);
  Tensor d = alloc(h.shape(), half);
  if (h.nbytes())
    STDIT_CUDA_CHECK(
        cudaMemcpyAsync(d.raw(), h.raw(), h.nbytes(), cudaMemcpyHostToDevice, ctx_->stream));
  return d;
}

Tensor CudaBackend::download(const Tensor& t) {
  expect_device(t, *ctx_, "download", "tensor");
  Tensor src = t;
  if (!t.is_contiguous()) {
    src = alloc(t.shape(), t.dtype());
    copy(t, src);
  }
  Tensor host = Tensor::empty(t.shape(), t.dtype());
  if (host.nbytes())
    STDIT_CUDA_CHECK(cudaMemcpyAsync(host.raw(), src.raw(), host.nbytes(), cudaMemcpyDeviceToHost,
                                     ctx_->stream));
  synchronize();
  return is_half16(host.dtype()) ? host.to(DType::F32) : host;
}

// ================================================================================================
// elementwise

namespace {

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename I>
__global__ void add_kernel(const float* __restrict__ a, const float* __restrict__ b,
                           float* __restrict__ o, I n, I m) {
  for (I i = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<I>(gridDim.x) * blockDim.x)
    o[i] = a[i] + b[i % m];
}

// b in BF16 or F16 (a reduced tensor-parallel partial sum); same shape as a.
template <typename H>
__global__ void add_half16_kernel(const float* __restrict__ a, const H* __restrict__ b, float* __restrict__ o,
                                  int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    o[i] = a[i] + load_f(b + i);
}

// n and m multiples of 4, all pointers 16-byte aligned.
template <typename I>
__global__ void add4_kernel(const float4* __restrict__ a, const float4* __restrict__ b,
                            float4* __restrict__ o, I n4, I m4) {
  for (I i = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    const float4 x = a[i], y = b[i % m4];
    o[i] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
  }
}

__global__ void silu_kernel(const float* __restrict__ x, float* __restrict__ o, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    o[i] = silu_f(x[i]);
}

__global__ void mul_kernel(const float* __restrict__ a, const float* __restrict__ b,
                           float* __restrict__ o, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    o[i] = a[i] * b[i];
}

__global__ void sub_kernel(const float* __restrict__ a, const float* __restrict__ b,
                           float* __restrict__ o, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    o[i] = a[i] - b[i];
}

// cfg_euler_step (backend.h): z [rows, per] += dt * (vu + g * (vc - vu)), rounded op by op
// (no fused multiply-adds: the CPU backend's bits).
__global__ void cfg_euler_kernel(float* __restrict__ z, const float* __restrict__ v, int64_t rows,
                                 int64_t per, int64_t plane, int64_t vch, bool cfg, float g, float dt) {
  const int64_t total = rows * per;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / per, k = i - b * per, c = k / plane, r = k - c * plane;
    const float vc = v[(b * vch + c) * plane + r];
    float step = vc;
    if (cfg) {
      const float vu = v[((rows + b) * vch + c) * plane + r];
      step = __fadd_rn(vu, __fmul_rn(g, __fsub_rn(vc, vu)));
    }
    z[i] = __fadd_rn(z[i], __fmul_rn(step, dt));
  }
}

// l1_distance, pass 1: block k writes its sums of |a - b| (the difference rounded to T) and |b|
// to part[2k], part[2k + 1]. A fixed grid, so the order of every sum is fixed.
constexpr int kL1Blocks = 1024, kL1Threads = 256;
__device__ inline float l1_load(const float* p, int64_t i) { return p[i]; }
__device__ inline float l1_load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ inline float l1_load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ inline float l1_diff(float a, float b, const float*) { return a - b; }
__device__ inline float l1_diff(float a, float b, const __nv_bfloat16*) {
  return __bfloat162float(__float2bfloat16(a - b));
}
__device__ inline float l1_diff(float a, float b, const __half*) { return __half2float(__float2half(a - b)); }
template <typename T>
__global__ void __launch_bounds__(kL1Threads) l1_partial_kernel(const T* __restrict__ a,
                                                                const T* __restrict__ b,
                                                                double* __restrict__ part, int64_t n) {
  float sd = 0.f, sr = 0.f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kL1Threads) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kL1Threads) {
    const float va = l1_load(a, i), vb = l1_load(b, i);
    sd += fabsf(l1_diff(va, vb, a));
    sr += fabsf(vb);
  }
  __shared__ double sh[2][kL1Threads];
  sh[0][threadIdx.x] = sd;
  sh[1][threadIdx.x] = sr;
  __syncthreads();
  for (int w = kL1Threads / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) {
      sh[0][threadIdx.x] += sh[0][threadIdx.x + w];
      sh[1][threadIdx.x] += sh[1][threadIdx.x + w];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    part[2 * blockIdx.x] = sh[0][0];
    part[2 * blockIdx.x + 1] = sh[1][0];
  }
}
// Pass 2: one thread sums the parts in order and writes the two means.
__global__ void l1_final_kernel(const double* __restrict__ part, int nparts, int64_t n,
                                float* __restrict__ out) {
  double sd = 0, sr = 0;
  for (int k = 0; k < nparts; ++k) {
    sd += part[2 * k];
    sr += part[2 * k + 1];
  }
  out[0] = static_cast<float>(sd / static_cast<double>(n));
  out[1] = static_cast<float>(sr / static_cast<double>(n));
}

// out = x * scale[c] + shift[c]; x [B, C, S] flattened; grid.y walks the B*C planes.
__global__ void channel_affine_kernel(const float* __restrict__ x, const float* __restrict__ scale,
                                      const float* __restrict__ shift, float* __restrict__ o,
                                      int64_t planes, int64_t c, int64_t s) {
  for (int64_t pl = blockIdx.y; pl < planes; pl += gridDim.y) {
    const float a = scale[pl % c], sh = shift[pl % c];
    const float* xs = x + pl * s;
    float* os = o + pl * s;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < s;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)
      os[i] = xs[i] * a + sh;
  }
}

// out [P, 2H, 2W] from x [P, H, W].
__global__ void upsample2x_kernel(const float* __restrict__ x, float* __restrict__ o, int64_t planes,
                                  int64_t h, int64_t w) {
  const int64_t w2 = 2 * w, per = 4 * h * w, n = planes * per;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pl = i / per, r = i - pl * per, y = r / w2, xx = r - y * w2;
    o[i] = x[(pl * h + y / 2) * w + xx / 2];
  }
}

__global__ void timestep_kernel(const float* __restrict__ t, const float* __restrict__ freq,
                                float* __restrict__ o, int64_t b, int64_t half) {
  const int64_t n = b * half;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / half, k = i - r * half;
    const float a = t[r] * freq[k];
    o[r * 2 * half + k] = cosf(a);  // cos first (spec §3.4)
    o[r * 2 * half + half + k] = sinf(a);
  }
}

__global__ void sincos2d_kernel(const float* __restrict__ omega, float* __restrict__ o, int64_t hp,
                                int64_t wp, int64_t q, float scale, float row_ratio,
                                float col_ratio) {
  const int64_t n = hp * wp * q;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pos = i / q, k = i - pos * q, r = pos / wp, col = pos - r * wp;
    const float rho = static_cast<float>(r) / scale * row_ratio;
    const float gamma = static_cast<float>(col) / scale * col_ratio;
    const float ag = gamma * omega[k], ar = rho * omega[k];
    float* out = o + pos * 4 * q;
    out[k] = sinf(ag);  // column coordinate first (spec §3.3)
    out[q + k] = cosf(ag);
    out[2 * q + k] = sinf(ar);
    out[3 * q + k] = cosf(ar);
  }
}

__global__ void gather_rows_kernel(const float* __restrict__ src, const int64_t* __restrict__ rows,
                                   float* __restrict__ o, int64_t nrows, int64_t c) {
  for (int64_t r = blockIdx.y; r < nrows; r += gridDim.y) {
    const float* s = src + rows[r] * c;
    float* d = o + r * c;
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < c;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x)
      d[j] = s[j];
  }
}

}  // namespace

void CudaBackend::add(const Tensor& a, const Tensor& b, Tensor& out) {
  OpTimer timer_(*ctx_, "add", a);
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(a, c, "add", "a");
  expect_contiguous_float(b, c, "add", "b");
  expect_contiguous_f32(out, c, "add", "out");
  const int64_t n = a.numel(), m = b.numel();
  STDIT_CHECK(out.numel() == n && m > 0 && n % m == 0, "cuda add: cannot broadcast ",
              shape_str(b.shape()), " over ", shape_str(a.shape()));
  if (n == 0) return;
  if (is_half16(b.dtype())) {
    STDIT_CHECK(m == n, "cuda add: a ", dtype_name(b.dtype()), " b must have a's shape");
    with_half16(b.dtype() == DType::F16, [&](auto h) {
      add_half16_kernel<<<blocks_for(n, 256), 256, 0, c.stream>>>(a.data<float>(), b.data<decltype(h)>(),
                                                                  out.data<float>(), n);
    });
    check_launch("add");
    return;
  }
  const int threads = 256;
  if (n % 4 == 0 && m % 4 == 0 && aligned16(a.raw()) && aligned16(b.raw()) && aligned16(out.raw())) {
    const int64_t n4 = n / 4, m4 = m / 4;
    if (n4 < (int64_t{1} << 31))
      add4_kernel<int32_t><<<blocks_for(n4, threads), threads, 0, c.stream>>>(
          static_cast<const float4*>(a.raw()), static_cast<const float4*>(b.raw()),
          static_cast<float4*>(out.raw()), static_cast<int32_t>(n4), static_cast<int32_t>(m4));
    else
      add4_kernel<int64_t><<<blocks_for(n4, threads), threads, 0, c.stream>>>(
          static_cast<const float4*>(a.raw()), static_cast<const float4*>(b.raw()),
          static_cast<float4*>(out.raw()), n4, m4);
  } else if (n < (int64_t{1} << 31)) {
    add_kernel<int32_t><<<blocks_for(n, threads), threads, 0, c.stream>>>(
        a.data<float>(), b.data<float>(), out.data<float>(), static_cast<int32_t>(n),
        static_cast<int32_t>(m));
  } else {
    add_kernel<int64_t><<<blocks_for(n, threads), threads, 0, c.stream>>>(
        a.data<float>(), b.data<float>(), out.data<float>(), n, m);
  }
  check_launch("add");
}

void CudaBackend::silu(const Tensor& x, Tensor& out) {
  OpTimer timer_(*ctx_, "silu", x);
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(x, c, "silu", "x");
  expect_contiguous_f32(out, c, "silu", "out");
  STDIT_CHECK(x.numel() == out.numel(), "cuda silu: size mismatch");
  if (x.numel() == 0) return;
  silu_kernel<<<blocks_for(x.numel(), 256), 256, 0, c.stream>>>(x.data<float>(), out.data<float>(),
                                                                x.numel());
  check_launch("silu");
}

void CudaBackend::mul(const Tensor& a, const Tensor& b, Tensor& out) {
  OpTimer timer_(*ctx_, "mul", a);
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(a, c, "mul", "a");
  expect_contiguous_f32(b, c, "mul", "b");
  expect_contiguous_f32(out, c, "mul", "out");
  STDIT_CHECK(a.numel() == b.numel() && a.numel() == out.numel(), "cuda mul: sizes ",
              shape_str(a.shape()), ", ", shape_str(b.shape()), ", ", shape_str(out.shape()));
  if (a.numel() == 0) return;
  mul_kernel<<<blocks_for(a.numel(), 256), 256, 0, c.stream>>>(a.data<float>(), b.data<float>(),
                                                               out.data<float>(), a.numel());
  check_launch("mul");
}

void CudaBackend::sub(const Tensor& a, const Tensor& b, Tensor& out) {
  OpTimer timer_(*ctx_, "sub", a);
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(a, c, "sub", "a");
  expect_contiguous_f32(b, c, "sub", "b");
  expect_contiguous_f32(out, c, "sub", "out");
  STDIT_CHECK(a.numel() == b.numel() && a.numel() == out.numel(), "cuda sub: sizes ",
              shape_str(a.shape()), ", ", shape_str(b.shape()), ", ", shape_str(out.shape()));
  if (a.numel() == 0) return;
  sub_kernel<<<blocks_for(a.numel(), 256), 256, 0, c.stream>>>(a.data<float>(), b.data<float>(),
                                                               out.data<float>(), a.numel());
  check_launch("sub");
}

void CudaBackend::cfg_euler_step(Tensor& z, const Tensor& v, bool cfg, float guidance, float dt) {
  OpTimer timer_(*ctx_, "cfg_euler_step", z);
  const CudaContext& c = *ctx_;
  expect_device(z, c, "cfg_euler_step", "z");
  expect_device(v, c, "cfg_euler_step", "v");
  const EulerGeometry g = euler_geometry(z, v, cfg, "cuda");
  const int64_t per = g.channels * g.plane;
  if (g.rows * per == 0) return;
  cfg_euler_kernel<<<blocks_for(g.rows * per, 256), 256, 0, c.stream>>>(
      z.data<float>(), v.data<float>(), g.rows, per, g.plane, g.v_channels, cfg, guidance, dt);
  check_launch("cfg_euler_step");
}

void CudaBackend::l1_distance(const Tensor& a, const Tensor& b, Tensor& out) {
  OpTimer timer_(*ctx_, "l1_distance", a);
  const CudaContext& c = *ctx_;
  expect_contiguous_float(a, c, "l1_distance", "a");
  expect_contiguous_float(b, c, "l1_distance", "b");
  expect_contiguous_f32(out, c, "l1_distance", "out");
  STDIT_CHECK(a.shape() == b.shape() && a.dtype() == b.dtype() && a.numel() > 0 && out.numel() == 2,
              "cuda l1_distance: a ", shape_str(a.shape()), " ", dtype_name(a.dtype()), ", b ",
              shape_str(b.shape()), " ", dtype_name(b.dtype()), ", out ", shape_str(out.shape()));
  const int64_t n = a.numel();
  const int nb = static_cast<int>(std::min<int64_t>(kL1Blocks, (n + kL1Threads - 1) / kL1Threads));
  Tensor part = alloc({2 * static_cast<int64_t>(nb)}, DType::F64);
  if (a.dtype() == DType::BF16)
    l1_partial_kernel<<<nb, kL1Threads, 0, c.stream>>>(a.data<__nv_bfloat16>(), b.data<__nv_bfloat16>(),
                                                       part.data<double>(), n);
  else if (a.dtype() == DType::F16)
    l1_partial_kernel<<<nb, kL1Threads, 0, c.stream>>>(a.data<__half>(), b.data<__half>(), part.data<double>(), n);
  else
    l1_partial_kernel<<<nb, kL1Threads, 0, c.stream>>>(a.data<float>(), b.data<float>(),
                                                       part.data<double>(), n);
  check_launch("l1_distance");
  l1_final_kernel<<<1, 1, 0, c.stream>>>(part.data<double>(), nb, n, out.data<float>());
  check_launch("l1_distance");
}

void CudaBackend::channel_affine(const Tensor& x, const Tensor& scale, const Tensor& shift,
                                 Tensor& out) {
  OpTimer timer_(*ctx_, "channel_affine", x);
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(x, c, "channel_affine", "x");
  expect_contiguous_f32(out, c, "channel_affine", "out");
  expect_contiguous_f32(scale, c, "channel_affine", "scale");
  expect_contiguous_f32(shift, c, "channel_affine", "shift");
  STDIT_CHECK(x.dim() >= 2 && out.numel() == x.numel() && scale.numel() == x.size(1) &&
                  shift.numel() == x.size(1),
              "cuda channel_affine: x ", shape_str(x.shape()), ", scale ", scale.numel(), ", shift ",
              shift.numel());
  const int64_t B = x.size(0), C = x.size(1);
  if (x.numel() == 0) return;
  const int64_t S = x.numel() / (B * C);
  dim3 grid(blocks_for(S, 256, 64), static_cast<unsigned>(std::min<int64_t>(B * C, 65535)));
  channel_affine_kernel<<<grid, 256, 0, c.stream>>>(x.data<float>(), scale.data<float>(),
                                                    shift.data<float>(), out.data<float>(), B * C,
                                                    C, S);
  check_launch("channel_affine");
}

void CudaBackend::upsample_nearest2x(const Tensor& x, Tensor& out) {
  OpTimer timer_(*ctx_, "upsample_nearest2x", x);
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(x, c, "upsample_nearest2x", "x");
  expect_contiguous_f32(out, c, "upsample_nearest2x", "out");
  STDIT_CHECK(x.dim() >= 2, "cuda upsample_nearest2x: x must have H and W");
  Shape want = x.shape();
  want[want.size() - 1] *= 2;
  want[want.size() - 2] *= 2;
  expect_shape(out, want, "upsample_nearest2x", "out");
  const int64_t H = x.size(-2), W = x.size(-1);
  if (x.numel() == 0) return;
  const int64_t planes = x.numel() / (H * W);
  upsample2x_kernel<<<blocks_for(out.numel(), 256), 256, 0, c.stream>>>(
      x.data<float>(), out.data<float>(), planes, H, W);
  check_launch("upsample_nearest2x");
}

// ================================================================================================
// embeddings, gather

void CudaBackend::timestep_embedding(const Tensor& t, float max_period, Tensor& out) {
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(t, c, "timestep_embedding", "t");
  expect_contiguous_f32(out, c, "timestep_embedding", "out");
  const int64_t b = t.numel(), dim = out.size(-1), half = dim / 2;
  STDIT_CHECK(out.dim() == 2 && out.size(0) == b && dim % 2 == 0,
              "cuda timestep_embedding: out must be [B, even dim]");
  if (b == 0 || half == 0) return;
  // Frequencies on the host, exactly as the CPU backend computes them (f32 steps in PyTorch's
  // order); the device evaluates t * f and cos/sin.
  const float neg_log_p = static_cast<float>(-std::log(static_cast<double>(max_period)));
  std::vector<float> freq(half);
  for (int64_t i = 0; i < half; ++i)
    freq[i] = std::exp(neg_log_p * static_cast<float>(i) / static_cast<float>(half));
  auto dfreq = device_copy_of(ctx_, freq.data(), freq.size() * 4);
  timestep_kernel<<<blocks_for(b * half, 256), 256, 0, c.stream>>>(
      t.data<float>(), static_cast<const float*>(dfreq.get()), out.data<float>(), b, half);
  check_launch("timestep_embedding");
}

void CudaBackend::sincos_pos_embed_2d(int64_t hp, int64_t wp, float scale, float base_size,
                                      Tensor& out) {
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(out, c, "sincos_pos_embed_2d", "out");
  const int64_t ch = out.size(-1);
  STDIT_CHECK(out.dim() == 2 && out.size(0) == hp * wp && ch % 4 == 0,
              "cuda sincos_pos_embed_2d: out must be [Hp*Wp, C] with C divisible by 4");
  const int64_t q = ch / 4;
  if (hp * wp == 0 || q == 0) return;
  std::vector<float> omega(q);
  for (int64_t k = 0; k < q; ++k)
    omega[k] = 1.0f / std::pow(10000.0f, static_cast<float>(2 * k) / static_cast<float>(ch / 2));
  const float row_ratio = static_cast<float>(static_cast<double>(base_size) / static_cast<double>(hp));
  const float col_ratio = static_cast<float>(static_cast<double>(base_size) / static_cast<double>(wp));
  auto domega = device_copy_of(ctx_, omega.data(), omega.size() * 4);
  sincos2d_kernel<<<blocks_for(hp * wp * q, 256), 256, 0, c.stream>>>(
      static_cast<const float*>(domega.get()), out.data<float>(), hp, wp, q, scale, row_ratio,
      col_ratio);
  check_launch("sincos_pos_embed_2d");
}

void CudaBackend::gather_rows(const Tensor& src, const std::vector<int64_t>& rows, Tensor& out) {
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(src, c, "gather_rows", "src");
  expect_contiguous_f32(out, c, "gather_rows", "out");
  const int64_t ch = src.size(-1), r = src.numel() / std::max<int64_t>(ch, 1);
  STDIT_CHECK(out.numel() == static_cast<int64_t>(rows.size()) * ch, "cuda gather_rows: out size");
  for (size_t i = 0; i < rows.size(); ++i)
    STDIT_CHECK(rows[i] >= 0 && rows[i] < r, "cuda gather_rows: row ", rows[i], " out of ", r);
  if (rows.empty() || ch == 0) return;
  auto drows = device_copy_of(ctx_, rows.data(), rows.size() * sizeof(int64_t));
  const int64_t nr = static_cast<int64_t>(rows.size());
  dim3 grid(blocks_for(ch, 256, 64), static_cast<unsigned>(std::min<int64_t>(nr, 65535)));
  gather_rows_kernel<<<grid, 256, 0, c.stream>>>(src.data<float>(),
                                                 static_cast<const int64_t*>(drows.get()),
                                                 out.data<float>(), nr, ch);
  check_launch("gather_rows");
}

std::unique_ptr<Backend> make_cuda_backend(int device, const ExecutionPolicy& p) {
  CudaOptions o;
  o.bf16 = half16_path(p.precision);  // fp8: bf16 around the FP8 GEMMs
  o.f16 = p.precision == Precision::F16;
  o.tf32 = p.precision != Precision::F32;
  o.tf32_attention = p.tf32_attention;
  o.cudnn_conv = p.cudnn_conv;
  o.cudnn_attention = p.cudnn_attention;
  o.text_attention = p.text_attention;
  o.wgmma_attention = p.wgmma_attention;
  o.vae_bf16 = p.vae_bf16;
  o.graphs = p.step_graphs;
  return std::make_unique<CudaBackend>(device, o, p);
}

}  // namespace stdit
