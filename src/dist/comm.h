// Collective communication between the ranks of a model split over devices (tensor parallelism).
// One process drives every rank, one thread each (pipeline/cfg_parallel.h: run_on_devices); each
// rank owns one Communicator of its group.
//
// Errors: when one rank fails, run_group() aborts the whole group, so that ranks waiting in a
// collective return (with an error) instead of hanging; the failing rank's message is rethrown.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"

namespace stdit {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: t = the sum of every rank's t. Every rank calls it with the same shape, in the same
  // order; t is a contiguous F32 tensor of the backend this rank runs on (NCCL: also BF16, the
  // backend's matmul dtype). The result is identical on every rank and from run to run.
  virtual void all_reduce_sum(Tensor& t) = 0;
  // In place: t = the elementwise maximum of every rank's t (fp8 under tensor parallelism: a
  // token's amax over the ranks' parts of its row). The default gathers every rank's t on the host
  // (all_gather of a host F32 tensor); NCCL reduces on the device.
  virtual void all_reduce_max(Tensor& t);
  // The end of a row-parallel projection: x += gate * (the sum of every rank's p), or x += sum
  // without a gate (gate/gate0/sel as in Backend::gated_residual). p is this rank's partial sum,
  // x the residual stream, identical on every rank before and after. p may be overwritten. The
  // default is all_reduce_sum(p), then be.gated_residual() or be.add(); NCCL groups of two GPUs
  // with peer access read the other rank's p directly and add both in one kernel.
  virtual void reduce_into_residual(Tensor& p, Tensor& x, const Tensor& gate, const Tensor& gate0,
                                    const FrameSelect& sel, Backend& be);

  // Sequence parallelism (NCCL groups of two GPUs with peer access): the model then keeps only
  // this rank's own rows (own_rows() of the flattened [B * N] token rows) of the residual stream
  // x up to date inside the blocks; norms and residual updates run on those rows alone, and rows
  // travel between the GPUs on copy engines beside the GEMMs (dist/rank_ops.h). Used when
  // splits_rows(C) for the model's C channels and no frame selection is active; the defaults fail.
  virtual bool splits_rows(int64_t channels) const { (void)channels; return false; }
  std::pair<int64_t, int64_t> own_rows(int64_t rows) const {
    return {rows * rank() / size(), rows * (rank() + 1) / size()};
  }
  // Every rank sends rows [lo, hi) of its src ([R, ...] contiguous) to the other rank's dst (the
  // dst that rank passes) starting at row dst_row, on a copy engine: this returns at once and the
  // copy runs beside what the stream does next. finish_row_exchange() makes this rank's stream
  // wait for both copies (the one into its dst, the one out of its src).
  virtual void start_row_exchange(const Tensor& src, int64_t lo, int64_t hi, Tensor& dst,
                                  int64_t dst_row);
  virtual void finish_row_exchange();
  // LayerNorm + modulate (shift/scale [B, C]) of x's own rows into the same rows of out (BF16
  // [B, N, C]); the other rows of out are not touched.
  virtual void layernorm_modulate_own_rows(const Tensor& x, const Tensor& shift,
                                           const Tensor& scale, float eps, Tensor& out);
  // x's own rows += gate * (rank 0's partial + rank 1's) (no gate: 1): p is this rank's partial
  // sum [B, N, C], recv the other rank's partial of this rank's rows; with x16, the new own rows
  // also go, in bf16, into the same rows of x16.
  virtual void add_partials_to_own_rows(const Tensor& p, const Tensor& recv, Tensor& x,
                                        const Tensor& gate, Tensor* x16);
  // Context parallelism (models/stdit3: frames / spatial tokens split over the ranks). `src` is
  // [size(), ...] contiguous: chunk j goes to rank j; `dst` (the same shape) receives in chunk i
  // what rank i sent to this rank. Host communicators only for now; the default fails.
  virtual void all_to_all(const Tensor& src, Tensor& dst);
  // dst [size(), ...] receives every rank's src in rank order (contiguous, the same shape everywhere).
  virtual void all_gather(const Tensor& src, Tensor& dst);
  // Makes pending and future collectives of the whole group fail instead of waiting (any thread).
  virtual void abort() = 0;
  virtual std::string kind() const = 0;  // "host" or "nccl"
};

using CommGroup = std::vector<std::unique_ptr<Communicator>>;

// Ranks whose tensors are in host memory (CPU backends): a sum in rank order through shared
// memory, two barriers per call.
CommGroup make_host_group(int n);
// The memory plan's twin of `real` (backend/dry_run.h): the same rank, size and row-split answer,
// and no traffic (every collective returns at once; the model runs on a dry-run backend).
std::unique_ptr<Communicator> make_dry_communicator(const Communicator& real);
// One for a split planned before any communicator exists (rank of size; rows are not split).
std::unique_ptr<Communicator> make_dry_communicator(int rank, int size);
// NCCL over the CUDA backends' devices (ncclCommInitAll, NVLink multicast off unless
// NCCL_NVLS_ENABLE is set), all-reduce on each backend's stream. Throws in builds without CUDA.
CommGroup make_nccl_group(const std::vector<Backend*>& backends);
// One process's rank of an NCCL group that spans processes (mpirun): `id` is nccl_unique_id() of
// the group's rank 0, carried to the others (dist/process.cpp does it over MPI). Throws in builds
// without CUDA.
std::vector<char> nccl_unique_id();
std::unique_ptr<Communicator> make_nccl_rank_comm(Backend& backend, int rank, int size, const std::vector<char>& id);
// make_nccl_group for CUDA backends, make_host_group for CPU ones (all of one kind).
CommGroup make_comm_group(const std::vector<Backend*>& backends);

// Runs fn(rank) on one thread per backend (bound to it). If a rank throws, the group is aborted
// and, after every thread has returned, the first error is rethrown (with its rank).
void run_group(const std::vector<Backend*>& backends, CommGroup& group,
               const std::function<void(int)>& fn);
// The same with several groups: abort_all() makes every collective of every group fail.
void run_group(const std::vector<Backend*>& backends, const std::function<void()>& abort_all,
               const std::function<void(int)>& fn);

}  // namespace stdit
