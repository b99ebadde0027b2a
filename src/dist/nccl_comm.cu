// NCCL communicators for CUDA backends (see comm.h).
#include <nccl.h>

#include <cstdlib>

#include "backend/cuda/cuda_common.cuh"
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
  std::vector<ncclComm_t> comms;
  std::atomic<bool> aborted{false};
  std::mutex mu;
  ~NcclShared() {
    if (!aborted)
      for (ncclComm_t c : comms) ncclCommDestroy(c);
  }
  void abort() {
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

 private:
  std::shared_ptr<NcclShared> sh_;
  int rank_;
  CudaBackend* be_;
};

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
  auto sh = std::make_shared<NcclShared>();
  sh->comms.resize(n);
  int cur = 0;
  STDIT_CUDA_CHECK(cudaGetDevice(&cur));
  STDIT_NCCL_CHECK(ncclCommInitAll(sh->comms.data(), n, devs.data()));
  STDIT_CUDA_CHECK(cudaSetDevice(cur));
  CommGroup g;
  for (int r = 0; r < n; ++r) g.push_back(std::make_unique<NcclComm>(sh, r, cbs[r]));
  return g;
}

}  // namespace stdit
