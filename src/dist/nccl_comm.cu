// NCCL communicators for CUDA backends (see comm.h).
#include <nccl.h>

#include <array>
#include <cstdlib>
#include <string>

#include "backend/cuda/cuda_common.cuh"
#include "dist/barrier.h"
#include "dist/comm.h"

namespace stdit {

namespace {

#define STDIT_NCCL_CHECK(expr)                                                                  \
  do {                                                                                          \
    const ncclResult_t stdit_nr_ = (expr);                                                      \
    if (stdit_nr_ != ncclSuccess)                                                               \
      ::stdit::fail("nccl: ", #expr, " failed: ", ncclGetErrorString(stdit_nr_));              \
  } while (0)

struct NcclShared {
  explicit NcclShared(int n) : comms(n), sync(n), ready(n), done(n), posted(n) {}
  std::vector<ncclComm_t> comms;
  std::atomic<bool> aborted{false};
  std::mutex mu;
  // Two GPUs with peer access (reduce_into_residual's direct path): a host barrier, and per rank
  // events "partial sum written" / "peer's partial read", and the posted partial sums.
  bool p2p = false;
  GroupBarrier sync;
  std::vector<cudaEvent_t> ready, done;
  std::vector<std::array<void*, 2>> posted;
  ~NcclShared() {
    if (!aborted)
      for (ncclComm_t c : comms) ncclCommDestroy(c);
    for (auto* list : {&ready, &done})
      for (cudaEvent_t e : *list)
        if (e) cudaEventDestroy(e);
  }
  void abort() {
    sync.abort();
    std::lock_guard<std::mutex> lock(mu);
    if (aborted.exchange(true)) return;
    for (ncclComm_t c : comms) ncclCommAbort(c);
  }
};

class NcclComm final : public Communicator {
 public:
  NcclComm(std::shared_ptr<NcclShared> sh, int rank, CudaBackend* be)
      : sh_(std::move(sh)), rank_(rank), be_(be) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(sh_->comms.size()); }
  std::string kind() const override { return "nccl"; }
  void abort() override { sh_->abort(); }

  void all_reduce_sum(Tensor& t) override {
    STDIT_CHECK(!sh_->aborted, "tensor parallel: another rank failed; this rank stops");
    const CudaContext& c = *be_->context();
    cuda::expect_contiguous_float(t, c, "all_reduce", "tensor");
    if (t.numel() == 0) return;
    const ncclDataType_t dt = t.dtype() == DType::BF16 ? ncclBfloat16 : ncclFloat;
    STDIT_NCCL_CHECK(ncclAllReduce(t.raw(), t.raw(), static_cast<size_t>(t.numel()), dt, ncclSum,
                                   sh_->comms[rank_], c.stream));
  }

  // Two GPUs: each rank reads the other's partial sum over NVLink in the kernel that adds both
  // into x (x += gate * (p0 + p1)), instead of an all-reduce followed by a residual pass. The
  // same bytes cross the link as in NCCL's two-rank all-reduce, and one pass over x disappears.
  void reduce_into_residual(Tensor& p, Tensor& x, const Tensor& gate, const Tensor& gate0,
                            const FrameSelect& sel, Backend& be) override {
    if (!sh_->p2p || sel.active() || !residual_sum2_applies(x, p))
      return Communicator::reduce_into_residual(p, x, gate, gate0, sel, be);
    exchange({p.raw(), nullptr}, [&](const std::array<void*, 2>& peer) {
      const auto [p0, p1] = ordered(p, peer[0]);
      residual_sum2(*be_->context(), x, p0, p1, gate);
    });
  }

  bool splits_rows() const override { return sh_->p2p; }

  void layernorm_modulate_shared(const Tensor& x, const Tensor& shift, const Tensor& scale,
                                 float eps, Tensor& out) override {
    const CudaContext& c = *be_->context();
    cuda::expect_contiguous_f32(x, c, "layernorm_modulate", "x");
    STDIT_CHECK(x.dim() == 3 && out.dtype() == DType::BF16 && out.is_contiguous() &&
                    out.numel() == x.numel(),
                "tensor parallel: layernorm_modulate_shared needs x [B, N, C] F32 and a BF16 out");
    const auto [lo, hi] = own_rows(x.size(0) * x.size(1));
    exchange({out.raw(), nullptr}, [&](const std::array<void*, 2>& peer) {
      layernorm_modulate_rows(c, x, shift, scale, eps, lo, hi, out.data<__nv_bfloat16>(),
                              static_cast<__nv_bfloat16*>(peer[0]));
    });
  }

  void reduce_into_own_rows(Tensor& p, Tensor& x, const Tensor& gate, Tensor* x16) override {
    STDIT_CHECK(residual_sum2_applies(x, p) &&
                    (!x16 || (x16->dtype() == DType::BF16 && x16->is_contiguous() &&
                              x16->numel() == x.numel())),
                "tensor parallel: reduce_into_own_rows needs x F32 [B, N, C], C % 8 == 0, and "
                "BF16 partial sums");
    const auto [lo, hi] = own_rows(x.size(0) * x.size(1));
    exchange({p.raw(), x16 ? x16->raw() : nullptr}, [&](const std::array<void*, 2>& peer) {
      const auto [p0, p1] = ordered(p, peer[0]);
      residual_sum2(*be_->context(), x, p0, p1, gate, lo, hi,
                    x16 ? x16->data<__nv_bfloat16>() : nullptr,
                    static_cast<__nv_bfloat16*>(peer[1]));
    });
  }

  void share_own_rows(Tensor& x) override {
    const CudaContext& c = *be_->context();
    cuda::expect_contiguous_f32(x, c, "share_own_rows", "x");
    const int64_t rows = x.numel() / x.size(-1);
    const auto [lo, hi] = own_rows(rows);
    const int64_t row_bytes = x.size(-1) * 4;
    exchange({x.raw(), nullptr}, [&](const std::array<void*, 2>& peer) {
      if (hi > lo)
        STDIT_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(peer[0]) + lo * row_bytes,
                                         static_cast<const char*>(x.raw()) + lo * row_bytes,
                                         (hi - lo) * row_bytes, cudaMemcpyDefault, c.stream));
    });
  }

 private:
  // One exchange between the two ranks: this rank posts pointers into its own buffers that the
  // peer's work may read or write, once its stream has reached this point (event "ready"); both
  // have posted (barrier); work(peer's pointers) is enqueued behind the peer's "ready"; then each
  // stream waits for the other's work ("done", after a second barrier) before going on, so no
  // buffer is reused or freed while the peer may still touch it.
  template <typename F>
  void exchange(const std::array<void*, 2>& mine, F&& work) {
    STDIT_CHECK(!sh_->aborted, "tensor parallel: another rank failed; this rank stops");
    const CudaContext& c = *be_->context();
    const int peer = 1 - rank_;
    STDIT_CUDA_CHECK(cudaEventRecord(sh_->ready[rank_], c.stream));
    sh_->posted[rank_] = mine;
    sh_->sync.arrive_and_wait();
    for (void* q : sh_->posted[peer])
      STDIT_CHECK((reinterpret_cast<uintptr_t>(q) & 15u) == 0,
                  "tensor parallel: the peer's buffer is not 16-byte aligned");
    STDIT_CUDA_CHECK(cudaStreamWaitEvent(c.stream, sh_->ready[peer], 0));
    work(sh_->posted[peer]);
    STDIT_CUDA_CHECK(cudaEventRecord(sh_->done[rank_], c.stream));
    sh_->sync.arrive_and_wait();
    STDIT_CUDA_CHECK(cudaStreamWaitEvent(c.stream, sh_->done[peer], 0));
  }
  // Rank 0's partial sum first on both ranks: the same expression, so the same bits.
  std::pair<const __nv_bfloat16*, const __nv_bfloat16*> ordered(const Tensor& p, void* other) const {
    const auto* mine = static_cast<const __nv_bfloat16*>(p.raw());
    const auto* theirs = static_cast<const __nv_bfloat16*>(other);
    return rank_ == 0 ? std::make_pair(mine, theirs) : std::make_pair(theirs, mine);
  }

  std::shared_ptr<NcclShared> sh_;
  int rank_;
  CudaBackend* be_;
};

// Peer access between the two devices of a two-GPU group, for reduce_into_residual: each device
// may read the other's memory, including blocks of its stream-ordered pool. False (the group
// keeps NCCL for everything) when the devices cannot, or STDIT_TP_P2P=0.
bool enable_pair_access(const std::vector<int>& devs) {
  if (devs.size() != 2) return false;
  if (const char* e = std::getenv("STDIT_TP_P2P"); e && std::string(e) == "0") return false;
  int a = 0, b = 0;
  if (cudaDeviceCanAccessPeer(&a, devs[0], devs[1]) != cudaSuccess ||
      cudaDeviceCanAccessPeer(&b, devs[1], devs[0]) != cudaSuccess || !a || !b) {
    cudaGetLastError();
    return false;
  }
  for (int i = 0; i < 2; ++i) {
    STDIT_CUDA_CHECK(cudaSetDevice(devs[i]));
    const cudaError_t e = cudaDeviceEnablePeerAccess(devs[1 - i], 0);
    if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();
    else STDIT_CUDA_CHECK(e);
    // The other device's pool: readable from this one.
    cudaMemPool_t pool;
    STDIT_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, devs[1 - i]));
    cudaMemAccessDesc desc{};
    desc.location.type = cudaMemLocationTypeDevice;
    desc.location.id = devs[i];
    desc.flags = cudaMemAccessFlagsProtReadWrite;
    STDIT_CUDA_CHECK(cudaMemPoolSetAccess(pool, &desc, 1));
  }
  return true;
}

}  // namespace

CommGroup make_nccl_group(const std::vector<Backend*>& backends) {
  const int n = static_cast<int>(backends.size());
  std::vector<int> devs;
  std::vector<CudaBackend*> cbs;
  for (Backend* b : backends) {
    auto* cb = dynamic_cast<CudaBackend*>(b);
    STDIT_CHECK(cb, "tensor parallel: NCCL needs CUDA backends");
    for (int d : devs)
      STDIT_CHECK(d != cb->device().index, "tensor parallel: device cuda:", d,
                  " is given to two ranks");
    devs.push_back(cb->device().index);
    cbs.push_back(cb);
  }
  // The GPU machines this project runs on need NVLink multicast (NVLS) off; a user's setting wins.
  setenv("NCCL_NVLS_ENABLE", "0", 0);
  auto sh = std::make_shared<NcclShared>(n);
  int cur = 0;
  STDIT_CUDA_CHECK(cudaGetDevice(&cur));
  STDIT_NCCL_CHECK(ncclCommInitAll(sh->comms.data(), n, devs.data()));
  sh->p2p = enable_pair_access(devs);
  if (sh->p2p)
    for (int r = 0; r < n; ++r) {
      STDIT_CUDA_CHECK(cudaSetDevice(devs[r]));
      STDIT_CUDA_CHECK(cudaEventCreateWithFlags(&sh->ready[r], cudaEventDisableTiming));
      STDIT_CUDA_CHECK(cudaEventCreateWithFlags(&sh->done[r], cudaEventDisableTiming));
    }
  STDIT_CUDA_CHECK(cudaSetDevice(cur));
  CommGroup g;
  for (int r = 0; r < n; ++r) g.push_back(std::make_unique<NcclComm>(sh, r, cbs[r]));
  return g;
}

}  // namespace stdit
