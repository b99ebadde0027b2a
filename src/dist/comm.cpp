// The host communicator group and run_group (see comm.h).
#include "dist/comm.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "dist/barrier.h"

namespace stdit {

namespace {

// State shared by the ranks of one host group: a barrier with an abort flag, and the posted
// tensors of the current collective.
struct HostShared {
  explicit HostShared(int n) : n(n), posted(n, nullptr), sync(n) {}
  const int n;
  std::vector<float*> posted;
  int64_t count = -1;
  GroupBarrier sync;
  void barrier() { sync.arrive_and_wait(); }
  void abort() { sync.abort(); }
};

// Checks an all-to-all's buffers; returns the bytes of one chunk.
size_t check_chunks(const Tensor& src, const Tensor& dst, const char* what) {
  STDIT_CHECK(src.is_contiguous() && dst.is_contiguous() && src.nbytes() == dst.nbytes() && src.dim() >= 1,
              what, ": src and dst must be contiguous and of one size");
  return src.nbytes() / static_cast<size_t>(src.size(0));
}

class HostComm final : public Communicator {
 public:
  HostComm(std::shared_ptr<HostShared> sh, int rank) : sh_(std::move(sh)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return sh_->n; }
  std::string kind() const override { return "host"; }
  void abort() override { sh_->abort(); }

  void all_to_all(const Tensor& src, Tensor& dst) override {
    const size_t chunk = check_chunks(src, dst, "all_to_all");
    sh_->posted[rank_] = const_cast<float*>(static_cast<const float*>(src.raw()));
    sh_->barrier();
    for (int r = 0; r < sh_->n; ++r)
      std::memcpy(static_cast<char*>(dst.raw()) + r * chunk,
                  reinterpret_cast<const char*>(sh_->posted[r]) + rank_ * chunk, chunk);
    sh_->barrier();  // every rank has read its chunks
  }
  void all_gather(const Tensor& src, Tensor& dst) override {
    STDIT_CHECK(src.is_contiguous() && dst.is_contiguous() && dst.nbytes() == src.nbytes() * sh_->n,
                "host all_gather: dst must hold size() copies of src");
    sh_->posted[rank_] = const_cast<float*>(static_cast<const float*>(src.raw()));
    sh_->barrier();
    for (int r = 0; r < sh_->n; ++r)
      std::memcpy(static_cast<char*>(dst.raw()) + r * src.nbytes(), sh_->posted[r], src.nbytes());
    sh_->barrier();
  }

  void all_reduce_sum(Tensor& t) override {
    STDIT_CHECK(t.dtype() == DType::F32 && t.is_contiguous() && t.device().kind == DeviceKind::CPU,
                "host all_reduce: expects a contiguous F32 host tensor");
    const int64_t n = t.numel();
    sh_->posted[rank_] = t.data<float>();
    if (rank_ == 0) sh_->count = n;
    sh_->barrier();  // every rank has posted
    STDIT_CHECK(sh_->count == n, "host all_reduce: ranks disagree on the size (", sh_->count,
                " vs ", n, ")");
    // Each rank sums its share of the elements in rank order into a scratch, for every rank.
    const int64_t per = (n + sh_->n - 1) / sh_->n, lo = std::min(n, rank_ * per),
                  hi = std::min(n, lo + per);
    std::vector<float> sum(static_cast<size_t>(hi - lo), 0.0f);
    for (int r = 0; r < sh_->n; ++r) {
      const float* src = sh_->posted[r];
      for (int64_t i = lo; i < hi; ++i) sum[i - lo] += src[i];
    }
    sh_->barrier();  // every rank has read every input
    for (int r = 0; r < sh_->n; ++r)
      if (hi > lo) std::memcpy(sh_->posted[r] + lo, sum.data(), (hi - lo) * sizeof(float));
    sh_->barrier();  // every rank's tensor holds the sum
  }

 private:
  std::shared_ptr<HostShared> sh_;
  int rank_;
};

}  // namespace

CommGroup make_host_group(int n) {
  STDIT_CHECK(n >= 1, "tensor parallel: group size must be >= 1");
  auto sh = std::make_shared<HostShared>(n);
  CommGroup g;
  for (int r = 0; r < n; ++r) g.push_back(std::make_unique<HostComm>(sh, r));
  return g;
}

void Communicator::reduce_into_residual(Tensor& p, Tensor& x, const Tensor& gate,
                                        const Tensor& gate0, const FrameSelect& sel, Backend& be) {
  all_reduce_sum(p);
  if (gate.defined())
    be.gated_residual(x, p, gate, gate0, sel);
  else
    be.add(x, p, x);
}

namespace {
[[noreturn]] void no_row_split() {
  fail("tensor parallel: this group does not split rows (sequence parallelism)");
}
}  // namespace

void Communicator::start_row_exchange(const Tensor&, int64_t, int64_t, Tensor&, int64_t) {
  no_row_split();
}
void Communicator::finish_row_exchange() { no_row_split(); }
void Communicator::all_to_all(const Tensor&, Tensor&) {
  fail("context parallelism: the ", kind(), " communicator has no all-to-all yet (use the CPU backend)");
}
void Communicator::all_reduce_max(Tensor& t) {
  STDIT_CHECK(t.dtype() == DType::F32 && t.is_contiguous() && t.device().kind == DeviceKind::CPU, kind(),
              " all_reduce_max: expects a contiguous F32 host tensor");
  const int64_t n = t.numel();
  Tensor all = Tensor::empty({static_cast<int64_t>(size()), n}, DType::F32);
  all_gather(t, all);
  float* out = t.data<float>();
  for (int64_t i = 0; i < n; ++i)
    for (int r = 0; r < size(); ++r) out[i] = std::max(out[i], all.data<float>()[r * n + i]);
}
void Communicator::all_gather(const Tensor&, Tensor&) {
  fail("context parallelism: the ", kind(), " communicator has no all-gather yet (use the CPU backend)");
}
void Communicator::layernorm_modulate_own_rows(const Tensor&, const Tensor&, const Tensor&, float,
                                               Tensor&) {
  no_row_split();
}
void Communicator::add_partials_to_own_rows(const Tensor&, const Tensor&, Tensor&, const Tensor&,
                                            Tensor*) {
  no_row_split();
}

#ifndef STDIT_HAVE_CUDA
CommGroup make_nccl_group(const std::vector<Backend*>&) {
  fail("tensor parallel over CUDA devices needs a build with CUDA (NCCL)");
}
std::vector<char> nccl_unique_id() { fail("NCCL needs a build with CUDA"); }
std::unique_ptr<Communicator> make_nccl_rank_comm(Backend&, int, int, const std::vector<char>&) {
  fail("NCCL needs a build with CUDA");
}
#endif

CommGroup make_comm_group(const std::vector<Backend*>& backends) {
  STDIT_CHECK(!backends.empty(), "tensor parallel: no backends");
  const DeviceKind k = backends[0]->device().kind;
  for (Backend* b : backends)
    STDIT_CHECK(b->device().kind == k, "tensor parallel: every rank must use the same backend kind");
  if (k == DeviceKind::CPU) return make_host_group(static_cast<int>(backends.size()));
  return make_nccl_group(backends);
}

void run_group(const std::vector<Backend*>& backends, CommGroup& group,
               const std::function<void(int)>& fn) {
  STDIT_CHECK(group.size() == backends.size(), "tensor parallel: ", group.size(), " communicators for ",
              backends.size(), " ranks");
  run_group(backends, [&] {
    for (auto& c : group) c->abort();
  }, fn);
}

void run_group(const std::vector<Backend*>& backends, const std::function<void()>& abort_all,
               const std::function<void(int)>& fn) {
  const int n = static_cast<int>(backends.size());
  std::vector<std::exception_ptr> errs(n);
  std::mutex mu;
  int first = -1;
  auto body = [&](int r) {
    try {
      backends[r]->bind_to_this_thread();
      fn(r);
    } catch (...) {
      errs[r] = std::current_exception();
      {
        std::lock_guard<std::mutex> lock(mu);
        if (first < 0) first = r;
      }
      abort_all();
    }
  };
  std::vector<std::thread> threads;
  for (int r = 1; r < n; ++r) threads.emplace_back(body, r);
  body(0);
  for (auto& t : threads) t.join();
  if (first >= 0) {
    try {
      std::rethrow_exception(errs[first]);
    } catch (const Error& e) {
      fail(n > 1 ? cat("rank ", first, ": ", e.what()) : std::string(e.what()));
    }
  }
}

namespace {
class DryComm final : public Communicator {
 public:
  DryComm(int rank, int size, const Communicator* real) : rank_(rank), size_(size), real_(real) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string kind() const override { return real_ ? "dry run of " + real_->kind() : "dry run"; }
  void abort() override {}
  void all_reduce_sum(Tensor&) override {}
  void all_reduce_max(Tensor&) override {}
  bool splits_rows(int64_t channels) const override { return real_ && real_->splits_rows(channels); }
  void start_row_exchange(const Tensor&, int64_t, int64_t, Tensor&, int64_t) override {}
  void finish_row_exchange() override {}
  void layernorm_modulate_own_rows(const Tensor&, const Tensor&, const Tensor&, float, Tensor&) override {}
  void add_partials_to_own_rows(const Tensor&, const Tensor&, Tensor&, const Tensor&, Tensor*) override {}
  void all_to_all(const Tensor&, Tensor&) override {}
  void all_gather(const Tensor&, Tensor&) override {}

 private:
  int rank_, size_;
  const Communicator* real_;
};
}  // namespace

std::unique_ptr<Communicator> make_dry_communicator(const Communicator& real) {
  return std::make_unique<DryComm>(real.rank(), real.size(), &real);
}

std::unique_ptr<Communicator> make_dry_communicator(int rank, int size) {
  STDIT_CHECK(size >= 1 && rank >= 0 && rank < size, "dry communicator: rank ", rank, " of ", size);
  return std::make_unique<DryComm>(rank, size, nullptr);
}

}  // namespace stdit
