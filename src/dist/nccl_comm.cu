// NCCL communicators for CUDA backends (see comm.h).
#include <nccl.h>

#include <algorithm>
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
  explicit NcclShared(int n)
      : comms(n), sync(n), ready(n), done(n), posted(n), side(n), src_ready(n), copied(n),
        dst(n) {}
  std::vector<ncclComm_t> comms;
  std::atomic<bool> aborted{false};
  std::mutex mu;
  // Two GPUs with peer access (reduce_into_residual's direct path): a host barrier, and per rank
  // events "partial sum written" / "peer's partial read", and the posted partial sums.
  bool p2p = false;
  GroupBarrier sync;
  std::vector<cudaEvent_t> ready, done;
  std::vector<void*> posted;
  // Row exchanges on copy engines: per rank a side stream, events "source ready" (main stream)
  // and "copied" (side stream), and the destination it posts.
  std::vector<cudaStream_t> side;
  std::vector<cudaEvent_t> src_ready, copied;
  std::vector<void*> dst;
  ~NcclShared() {
    if (!aborted)
      for (ncclComm_t c : comms) ncclCommDestroy(c);
    for (auto* list : {&ready, &done, &src_ready, &copied})
      for (cudaEvent_t e : *list)
        if (e) cudaEventDestroy(e);
    for (cudaStream_t st : side)
      if (st) cudaStreamDestroy(st);
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
  // Threads of one process: sh holds every rank's communicator, this rank's is comms[rank].
  // Processes: sh holds this process's only (comms[0]) and `size` is the group's.
  NcclComm(std::shared_ptr<NcclShared> sh, int rank, CudaBackend* be, int size = 0)
      : sh_(std::move(sh)), rank_(rank), be_(be),
        index_(size > 0 ? 0 : rank), size_(size > 0 ? size : static_cast<int>(sh_->comms.size())) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string kind() const override { return "nccl"; }
  void abort() override { sh_->abort(); }

  void all_reduce_sum(Tensor& t) override {
    STDIT_CHECK(!sh_->aborted, "tensor parallel: another rank failed; this rank stops");
    const CudaContext& c = *be_->context();
    cuda::expect_contiguous_float(t, c, "all_reduce", "tensor");
    if (t.numel() == 0) return;
    const ncclDataType_t dt = t.dtype() == DType::BF16 ? ncclBfloat16 : t.dtype() == DType::F16 ? ncclHalf : ncclFloat;
    STDIT_NCCL_CHECK(ncclAllReduce(t.raw(), t.raw(), static_cast<size_t>(t.numel()), dt, ncclSum,
                                   sh_->comms[index_], c.stream));
  }

  void all_reduce_max(Tensor& t) override {
    STDIT_CHECK(!sh_->aborted, "tensor parallel: another rank failed; this rank stops");
    const CudaContext& c = *be_->context();
    cuda::expect_contiguous_float(t, c, "all_reduce_max", "tensor");
    STDIT_CHECK(t.dtype() == DType::F32, "all_reduce_max: expects F32");
    if (t.numel() == 0) return;
    STDIT_NCCL_CHECK(ncclAllReduce(t.raw(), t.raw(), static_cast<size_t>(t.numel()), ncclFloat, ncclMax,
                                   sh_->comms[index_], c.stream));
  }

  // Context parallelism: chunk j of src to rank j, rank i's chunk into chunk i of dst (one NCCL
  // group of sends and receives on this rank's stream).
  void all_to_all(const Tensor& src, Tensor& dst) override {
    STDIT_CHECK(!sh_->aborted, "context parallel: another rank failed; this rank stops");
    const CudaContext& c = *be_->context();
    cuda::expect_device(src, c, "all_to_all", "src");
    cuda::expect_device(dst, c, "all_to_all", "dst");
    STDIT_CHECK(src.is_contiguous() && dst.is_contiguous() && src.shape() == dst.shape() &&
                    src.dtype() == dst.dtype() && src.dim() >= 1 && src.size(0) == size_,
                "context parallel: all_to_all needs contiguous [", size_, ", ...] tensors of one shape");
    const size_t chunk = src.nbytes() / static_cast<size_t>(size_);
    const ncclComm_t comm = sh_->comms[index_];
    STDIT_NCCL_CHECK(ncclGroupStart());
    for (int j = 0; j < size_; ++j) {
      STDIT_NCCL_CHECK(ncclSend(static_cast<const char*>(src.raw()) + j * chunk, chunk, ncclInt8, j, comm, c.stream));
      STDIT_NCCL_CHECK(ncclRecv(static_cast<char*>(dst.raw()) + j * chunk, chunk, ncclInt8, j, comm, c.stream));
    }
    STDIT_NCCL_CHECK(ncclGroupEnd());
  }

  void all_gather(const Tensor& src, Tensor& dst) override {
    STDIT_CHECK(!sh_->aborted, "context parallel: another rank failed; this rank stops");
    const CudaContext& c = *be_->context();
    cuda::expect_device(src, c, "all_gather", "src");
    cuda::expect_device(dst, c, "all_gather", "dst");
    STDIT_CHECK(src.is_contiguous() && dst.is_contiguous() && src.dtype() == dst.dtype() &&
                    dst.nbytes() == src.nbytes() * static_cast<size_t>(size_),
                "all_gather: dst must hold ", size_, " contiguous copies of src's shape");
    STDIT_NCCL_CHECK(ncclAllGather(src.raw(), dst.raw(), src.nbytes(), ncclInt8, sh_->comms[index_], c.stream));
  }

  // Two GPUs: each rank reads the other's partial sum over NVLink in the kernel that adds both
  // into x (x += gate * (p0 + p1)), instead of an all-reduce followed by a residual pass. The
  // same bytes cross the link as in NCCL's two-rank all-reduce, and one pass over x disappears.
  void reduce_into_residual(Tensor& p, Tensor& x, const Tensor& gate, const Tensor& gate0,
                            const FrameSelect& sel, Backend& be) override {
    if (!sh_->p2p || sel.active() || !residual_sum2_applies(x, p))
      return Communicator::reduce_into_residual(p, x, gate, gate0, sel, be);
    exchange(p.raw(), [&](void* peer) {
      const auto [p0, p1] = ordered(p, peer);
      residual_sum2(*be_->context(), x, p.dtype(), p0, p1, gate);
    });
  }

  // The residual kernels take rows of 8-element (16-byte bf16 or f16) vectors.
  bool splits_rows(int64_t channels) const override { return sh_->p2p && channels % 8 == 0; }

  void start_row_exchange(const Tensor& src, int64_t lo, int64_t hi, Tensor& dst,
                          int64_t dst_row) override {
    STDIT_CHECK(!sh_->aborted, "tensor parallel: another rank failed; this rank stops");
    STDIT_CHECK(!exchanging_, "tensor parallel: a row exchange is already in flight");
    const CudaContext& c = *be_->context();
    STDIT_CHECK(src.is_contiguous() && dst.is_contiguous() && src.dtype() == dst.dtype() &&
                    src.dim() >= 2 && dst.dim() >= 2,
                "tensor parallel: row exchange needs contiguous tensors of one dtype");
    const int64_t row_bytes = static_cast<int64_t>(src.nbytes()) / (src.numel() / src.size(-1));
    // Two barriers per exchange (here and in finish_row_exchange) order every post and event
    // record of one rank after the other rank's reads and waits of the previous exchange.
    const int peer = 1 - rank_;
    cudaStream_t side = sh_->side[rank_];
    STDIT_CUDA_CHECK(cudaEventRecord(sh_->src_ready[rank_], c.stream));
    sh_->dst[rank_] = dst.raw();
    sh_->sync.arrive_and_wait();
    auto* to = static_cast<char*>(sh_->dst[peer]) + dst_row * row_bytes;
    STDIT_CUDA_CHECK(cudaStreamWaitEvent(side, sh_->src_ready[rank_], 0));
    STDIT_CUDA_CHECK(cudaStreamWaitEvent(side, sh_->src_ready[peer], 0));
    if (hi > lo)
      STDIT_CUDA_CHECK(cudaMemcpyAsync(to, static_cast<const char*>(src.raw()) + lo * row_bytes,
                                       (hi - lo) * row_bytes, cudaMemcpyDefault, side));
    STDIT_CUDA_CHECK(cudaEventRecord(sh_->copied[rank_], side));
    exchanging_ = true;
  }

  void finish_row_exchange() override {
    STDIT_CHECK(exchanging_, "tensor parallel: no row exchange in flight");
    const CudaContext& c = *be_->context();
    // The other rank has enqueued its copy and recorded its "copied" event by now.
    sh_->sync.arrive_and_wait();
    STDIT_CUDA_CHECK(cudaStreamWaitEvent(c.stream, sh_->copied[1 - rank_], 0));
    STDIT_CUDA_CHECK(cudaStreamWaitEvent(c.stream, sh_->copied[rank_], 0));
    exchanging_ = false;
  }

  void layernorm_modulate_own_rows(const Tensor& x, const Tensor& shift, const Tensor& scale,
                                   float eps, Tensor& out) override {
    const CudaContext& c = *be_->context();
    cuda::expect_contiguous_f32(x, c, "layernorm_modulate", "x");
    STDIT_CHECK(x.dim() == 3 && cuda::is_half16(out.dtype()) && out.is_contiguous() && out.numel() == x.numel(),
                "tensor parallel: layernorm_modulate_own_rows needs x [B, N, C] F32, out BF16 or F16");
    const auto [lo, hi] = own_rows(x.size(0) * x.size(1));
    layernorm_modulate_rows(c, x, shift, scale, eps, lo, hi, out.dtype(), out.raw());
  }

  void add_partials_to_own_rows(const Tensor& p, const Tensor& recv, Tensor& x, const Tensor& gate,
                                Tensor* x16) override {
    const auto [lo, hi] = own_rows(x.size(0) * x.size(1));
    STDIT_CHECK(residual_sum2_applies(x, p) && recv.dtype() == p.dtype() &&
                    recv.is_contiguous() && recv.numel() == (hi - lo) * x.size(2) &&
                    (!x16 || (x16->dtype() == p.dtype() && x16->is_contiguous() &&
                              x16->numel() == x.numel())),
                "tensor parallel: add_partials_to_own_rows needs x F32 [B, N, C], C % 8 == 0, "
                "and 16-bit partial sums (and copy) of one type");
    const auto* mine = static_cast<const char*>(p.raw()) + lo * x.size(2) * dtype_size(p.dtype());
    const auto* theirs = static_cast<const char*>(recv.raw());
    residual_sum2(*be_->context(), x, p.dtype(), rank_ == 0 ? mine : theirs, rank_ == 0 ? theirs : mine,
                  gate, lo, hi, x16 ? x16->raw() : nullptr);
  }

 private:
  // One exchange between the two ranks: this rank posts a pointer into its own buffer that the
  // peer's work may read, once its stream has reached this point (event "ready"); both
  // have posted (barrier); work(peer's pointer) is enqueued behind the peer's "ready"; then each
  // stream waits for the other's work ("done", after a second barrier) before going on, so no
  // buffer is reused or freed while the peer may still touch it.
  template <typename F>
  void exchange(void* mine, F&& work) {
    STDIT_CHECK(!sh_->aborted, "tensor parallel: another rank failed; this rank stops");
    const CudaContext& c = *be_->context();
    const int peer = 1 - rank_;
    STDIT_CUDA_CHECK(cudaEventRecord(sh_->ready[rank_], c.stream));
    sh_->posted[rank_] = mine;
    sh_->sync.arrive_and_wait();
    STDIT_CHECK((reinterpret_cast<uintptr_t>(sh_->posted[peer]) & 15u) == 0,
                "tensor parallel: the peer's buffer is not 16-byte aligned");
    STDIT_CUDA_CHECK(cudaStreamWaitEvent(c.stream, sh_->ready[peer], 0));
    work(sh_->posted[peer]);
    STDIT_CUDA_CHECK(cudaEventRecord(sh_->done[rank_], c.stream));
    sh_->sync.arrive_and_wait();
    STDIT_CUDA_CHECK(cudaStreamWaitEvent(c.stream, sh_->done[peer], 0));
  }
  // Rank 0's partial sum first on both ranks: the same expression, so the same bits.
  std::pair<const void*, const void*> ordered(const Tensor& p, void* other) const {
    const void* mine = p.raw();
    const void* theirs = other;
    return rank_ == 0 ? std::make_pair(mine, theirs) : std::make_pair(theirs, mine);
  }

  std::shared_ptr<NcclShared> sh_;
  int rank_;
  CudaBackend* be_;
  int index_, size_;         // this rank's communicator in sh_->comms; the group's size
  bool exchanging_ = false;  // a row exchange was started and not finished
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
      STDIT_CUDA_CHECK(cudaStreamCreateWithFlags(&sh->side[r], cudaStreamNonBlocking));
      STDIT_CUDA_CHECK(cudaEventCreateWithFlags(&sh->src_ready[r], cudaEventDisableTiming));
      STDIT_CUDA_CHECK(cudaEventCreateWithFlags(&sh->copied[r], cudaEventDisableTiming));
    }
  STDIT_CUDA_CHECK(cudaSetDevice(cur));
  CommGroup g;
  for (int r = 0; r < n; ++r) g.push_back(std::make_unique<NcclComm>(sh, r, cbs[r]));
  return g;
}

std::vector<char> nccl_unique_id() {
  ncclUniqueId id;
  STDIT_NCCL_CHECK(ncclGetUniqueId(&id));
  return std::vector<char>(id.internal, id.internal + sizeof(id.internal));
}

std::unique_ptr<Communicator> make_nccl_rank_comm(Backend& backend, int rank, int size, const std::vector<char>& id) {
  auto* cb = dynamic_cast<CudaBackend*>(&backend);
  STDIT_CHECK(cb, "NCCL between processes needs a CUDA backend");
  ncclUniqueId uid;
  STDIT_CHECK(id.size() == sizeof(uid.internal), "NCCL: a unique id has ", sizeof(uid.internal), " bytes");
  std::copy(id.begin(), id.end(), uid.internal);
  setenv("NCCL_NVLS_ENABLE", "0", 0);  // as make_nccl_group: a user's setting wins
  auto sh = std::make_shared<NcclShared>(1);
  cb->bind_to_this_thread();
  STDIT_NCCL_CHECK(ncclCommInitRank(&sh->comms[0], size, uid, rank));
  return std::make_unique<NcclComm>(sh, rank, cb, size);
}

}  // namespace stdit
