#include "dist/process.h"

#include <cstdlib>
#include <cstring>

#include "core/error.h"
#ifdef STDIT_HAVE_MPI
#include <mpi.h>
#endif

namespace stdit {

namespace {
ProcessWorld g_world;
bool g_mpi = false;

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : 0;
}
}  // namespace

const ProcessWorld& process_world() { return g_world; }

namespace {
bool g_running = false;
}
void process_world_set_running(bool running) { g_running = running; }

void process_world_sync(std::exception_ptr err) {
  if (!g_world.active()) {
    if (err) std::rethrow_exception(err);
    return;
  }
  const int first = process_world_first_failure(!err);
  if (first < 0) return;
  if (first == g_world.rank) std::rethrow_exception(err);
  throw RefusedElsewhere(first);
}
bool process_world_running() { return g_running; }

#ifdef STDIT_HAVE_MPI

namespace {

class ProcessComm final : public Communicator {
 public:
  ProcessComm(MPI_Comm c) : comm_(c) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~ProcessComm() override {
    if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string kind() const override { return "mpi"; }
  void abort() override { MPI_Abort(MPI_COMM_WORLD, 1); }

  void all_reduce_sum(Tensor& t) override {
    STDIT_CHECK(t.dtype() == DType::F32 && t.is_contiguous() && t.device().kind == DeviceKind::CPU,
                "process all_reduce: expects a contiguous F32 host tensor");
    const int64_t n = t.numel();
    STDIT_CHECK(n < (int64_t{1} << 31) / size_, "process all_reduce: tensor too large (", n, " elements)");
    // Gather every rank's tensor, then sum in rank order: the bits of the thread group's sum.
    std::vector<float> all(static_cast<size_t>(n) * size_);
    MPI_Allgather(t.data<float>(), static_cast<int>(n), MPI_FLOAT, all.data(), static_cast<int>(n), MPI_FLOAT, comm_);
    float* out = t.data<float>();
    for (int64_t i = 0; i < n; ++i) {
      float s = 0.0f;
      for (int r = 0; r < size_; ++r) s += all[static_cast<size_t>(r) * n + i];
      out[i] = s;
    }
  }

  void all_to_all(const Tensor& src, Tensor& dst) override {
    STDIT_CHECK(src.is_contiguous() && dst.is_contiguous() && src.nbytes() == dst.nbytes() && src.size(0) == size_,
                "process all_to_all: src and dst must be contiguous [size(), ...] of one size");
    const size_t chunk = src.nbytes() / size_;
    STDIT_CHECK(chunk < (size_t{1} << 31), "process all_to_all: chunks too large");
    MPI_Alltoall(src.raw(), static_cast<int>(chunk), MPI_BYTE, dst.raw(), static_cast<int>(chunk), MPI_BYTE, comm_);
  }
  void all_gather(const Tensor& src, Tensor& dst) override {
    STDIT_CHECK(src.is_contiguous() && dst.is_contiguous() && dst.nbytes() == src.nbytes() * size_,
                "process all_gather: dst must hold size() copies of src");
    MPI_Allgather(src.raw(), static_cast<int>(src.nbytes()), MPI_BYTE, dst.raw(), static_cast<int>(src.nbytes()),
                  MPI_BYTE, comm_);
  }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
};

}  // namespace

void process_world_init(int* argc, char*** argv) {
  const int launched = std::max(env_int("OMPI_COMM_WORLD_SIZE"), env_int("PMI_SIZE"));
  if (launched <= 1) return;
  MPI_Init(argc, argv);
  g_mpi = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &g_world.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_world.size);
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_world.rank, MPI_INFO_NULL, &local);
  MPI_Comm_rank(local, &g_world.local_rank);
  MPI_Comm_free(&local);
}

void process_world_finalize() {
  if (g_mpi) MPI_Finalize();
  g_mpi = false;
}

void process_world_abort(int code) {
  if (g_mpi) MPI_Abort(MPI_COMM_WORLD, code);
}

bool process_world_agree(bool ok) {
  if (!g_mpi) return ok;
  int mine = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

int process_world_first_failure(bool ok) {
  if (!g_mpi) return ok ? -1 : 0;
  int mine = ok ? g_world.size : g_world.rank, first = 0;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return first == g_world.size ? -1 : first;
}

uint64_t process_world_broadcast(uint64_t v) {
  if (!g_mpi) return v;
  MPI_Bcast(&v, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  return v;
}

void process_world_sum_disjoint(Tensor& t) {
  if (!g_mpi) return;
  STDIT_CHECK(t.dtype() == DType::F32 && t.is_contiguous() && t.device().kind == DeviceKind::CPU,
              "process sum: expects a contiguous F32 host tensor");
  // In pieces below 2^31 elements (MPI counts are int).
  const int64_t n = t.numel(), piece = int64_t{1} << 30;
  for (int64_t i = 0; i < n; i += piece)
    MPI_Allreduce(MPI_IN_PLACE, t.data<float>() + i, static_cast<int>(std::min(piece, n - i)), MPI_FLOAT, MPI_SUM,
                  MPI_COMM_WORLD);
}

void process_world_broadcast_tensor(Tensor& t) {
  if (!g_mpi) return;
  STDIT_CHECK(t.is_contiguous() && t.device().kind == DeviceKind::CPU, "process broadcast: expects a contiguous host tensor");
  const size_t n = t.nbytes(), piece = size_t{1} << 30;
  for (size_t i = 0; i < n; i += piece)
    MPI_Bcast(static_cast<char*>(t.raw()) + i, static_cast<int>(std::min(piece, n - i)), MPI_BYTE, 0, MPI_COMM_WORLD);
}

std::unique_ptr<Communicator> make_process_comm(const std::vector<int>& ranks, Backend* device) {
  STDIT_CHECK(g_mpi, "a process group needs the processes of mpirun");
  int color = -1, key = 0;
  for (size_t i = 0; i < ranks.size(); ++i)
    if (ranks[i] == g_world.rank) color = ranks[0], key = static_cast<int>(i);
  STDIT_CHECK(color >= 0, "process group: rank ", g_world.rank, " is not a member");
  MPI_Comm c;
  MPI_Comm_split(MPI_COMM_WORLD, color, key, &c);
  if (!device || device->device().kind != DeviceKind::CUDA) return std::make_unique<ProcessComm>(c);
  // NCCL: the group's rank 0 makes the id, MPI carries it to the others, then MPI's part is done.
  std::vector<char> id;
  if (key == 0) id = nccl_unique_id();
  int n = static_cast<int>(id.size());
  MPI_Bcast(&n, 1, MPI_INT, 0, c);
  id.resize(static_cast<size_t>(n));
  MPI_Bcast(id.data(), n, MPI_CHAR, 0, c);
  MPI_Comm_free(&c);
  return make_nccl_rank_comm(*device, key, static_cast<int>(ranks.size()), id);
}

#else  // no MPI in this build: always one process

void process_world_init(int*, char***) {
  const int launched = std::max(env_int("OMPI_COMM_WORLD_SIZE"), env_int("PMI_SIZE"));
  STDIT_CHECK(launched <= 1, "this stdit was built without MPI (libopenmpi-dev): it cannot run as ", launched,
              " processes of mpirun");
}
void process_world_finalize() {}
void process_world_abort(int) {}
bool process_world_agree(bool ok) { return ok; }
int process_world_first_failure(bool ok) { return ok ? -1 : 0; }
uint64_t process_world_broadcast(uint64_t v) { return v; }
void process_world_sum_disjoint(Tensor&) {}
void process_world_broadcast_tensor(Tensor&) {}
std::unique_ptr<Communicator> make_process_comm(const std::vector<int>&, Backend*) {
  fail("this stdit was built without MPI: no process groups");
}

#endif

}  // namespace stdit
