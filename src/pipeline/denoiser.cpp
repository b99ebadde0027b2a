#include "pipeline/denoiser.h"

#include <filesystem>
#include <functional>

#include "core/error.h"
#include "dist/process.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"

namespace stdit {

void TensorParallelDenoiser::build(int cp, const std::function<void(int, Communicator*, Communicator*)>& make) {
  const int n = static_cast<int>(backends_.size());
  STDIT_CHECK(n >= 1 && cp >= 1 && n % cp == 0, "parallel denoiser: ", n, " devices for context parallelism ", cp);
  cp_ = cp;
  tp_ = n / cp;
  auto pick = [&](int first, int stride, int count) {
    std::vector<Backend*> b;
    for (int k = 0; k < count; ++k) b.push_back(backends_[first + k * stride]);
    return b;
  };
  if (tp_ > 1)
    for (int c = 0; c < cp_; ++c) tp_groups_.push_back(make_comm_group(pick(c * tp_, 1, tp_)));
  if (cp_ > 1)
    for (int t = 0; t < tp_; ++t) cp_groups_.push_back(make_comm_group(pick(t, tp_, cp_)));
  ranks_.resize(n);
  run([&](int r) {
    const int c = r / tp_, t = r % tp_;
    make(r, tp_ > 1 ? tp_groups_[c][t].get() : nullptr, cp_ > 1 ? cp_groups_[t][c].get() : nullptr);
  });
  backends_[0]->bind_to_this_thread();
}

void TensorParallelDenoiser::run(const std::function<void(int)>& fn) {
  run_group(backends_, [&] {
    for (auto& g : tp_groups_)
      for (auto& c : g) c->abort();
    for (auto& g : cp_groups_)
      for (auto& c : g) c->abort();
  }, fn);
}

std::string TensorParallelDenoiser::comm_kind() const {
  return !tp_groups_.empty() ? tp_groups_[0][0]->kind() : !cp_groups_.empty() ? cp_groups_[0][0]->kind() : "none";
}

TensorParallelDenoiser::TensorParallelDenoiser(const STDiT3Config& cfg, const WeightMap& weights,
                                               std::vector<Backend*> backends, int cp)
    : backends_(std::move(backends)) {
  const int n = static_cast<int>(backends_.size());
  STDIT_CHECK(n >= 1, "tensor parallel: no devices");
  STDIT_CHECK(cp >= 1 && n % cp == 0 && cfg.num_heads % (n / cp) == 0, "tensor parallel: --tp ", n / std::max(cp, 1),
              " must divide the ", cfg.num_heads, " attention heads");
  // Each rank slices and uploads its shard on its own thread (bound to its device).
  build(cp, [&](int r, Communicator* tp, Communicator* cpc) {
    ranks_[r] = std::make_unique<STDiT3>(cfg, weights, *backends_[r], tp);
    ranks_[r]->set_context_parallel(cpc);
  });
}

TensorParallelDenoiser::TensorParallelDenoiser(const STDiT3Config& cfg, const std::string& dir,
                                               std::vector<Backend*> backends, const std::string& flag, int cp)
    : backends_(std::move(backends)) {
  // Each rank reads only its tensor-parallel rank's file, on its own thread.
  build(cp, [&](int r, Communicator* tp, Communicator* cpc) {
    const int t = r % tp_;
    const std::string path = dir + "/rank" + std::to_string(t) + ".safetensors";
    const WeightMap w = load_checked(*open_tensor_file(path), stdit3_param_specs(cfg, tp_), flag + " " + path);
    ranks_[r] = std::make_unique<STDiT3>(cfg, w, *backends_[r], tp, true);
    ranks_[r]->set_context_parallel(cpc);
  });
}

namespace {
// The number of rank files of an engine's dit directory converted with --tp K (0: none).
int rank_files(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  int files = 0;
  while (fs::exists(fs::path(dir) / ("rank" + std::to_string(files) + ".safetensors"), ec)) ++files;
  return files;
}
// The rank files must be as many as the ranks and of one set of weights: `convert --tp` writes the
// same "shard_set" id (a hash of the weights) into each; engines converted before it carry none and
// are taken as they are.
void check_rank_files(const std::string& dir, int files, int n) {
  STDIT_CHECK(files == n, dir, " holds the denoiser for tensor parallelism over ", files,
              " GPUs (rank files); run it with --tp ", files, ", or convert again with --tp ", n);
  std::string first;
  for (int r = 0; r < files; ++r) {
    const std::string path = dir + "/rank" + std::to_string(r) + ".safetensors";
    const auto meta = read_safetensors_metadata(path);  // the header only (another process reads the data)
    const auto it = meta.find("shard_set");
    const std::string id = it == meta.end() ? "(none)" : it->second;
    if (r == 0) first = id;
    STDIT_CHECK(id == first, path, " holds other weights than ", dir,
                "/rank0.safetensors (shard sets ", id, " and ", first,
                "): the rank files of an engine must come from one `stdit convert --tp`; convert it again");
  }
}
STDiT3Config dit_config(const std::string& dir, const std::string& flag) {
  namespace fs = std::filesystem;
  std::error_code ec;
  STDIT_CHECK(fs::is_directory(dir, ec), dir, " (", flag,
              "): expected a model directory with config.json and model.safetensors");
  return load_stdit3_config((fs::path(dir) / "config.json").string());
}
}  // namespace

void check_stdit3_rank_files(const std::string& dir, int tp) {
  if (const int files = rank_files(dir); files > 0) check_rank_files(dir, files, tp);
}

std::unique_ptr<TensorParallelDenoiser> TensorParallelDenoiser::load(
    const std::string& dir, std::vector<Backend*> backends, const std::string& flag, int cp) {
  const STDiT3Config cfg = dit_config(dir, flag);
  // Converted with --tp K: one shard file per tensor-parallel rank, usable with exactly K.
  if (const int files = rank_files(dir); files > 0) {
    check_rank_files(dir, files, static_cast<int>(backends.size()) / std::max(cp, 1));
    return std::unique_ptr<TensorParallelDenoiser>(
        new TensorParallelDenoiser(cfg, dir, std::move(backends), flag, cp));
  }
  const auto file = open_model_weights(dir, flag);
  const WeightMap w = load_checked(*file, stdit3_param_specs(cfg), flag);
  return std::make_unique<TensorParallelDenoiser>(cfg, w, std::move(backends), cp);
}

std::unique_ptr<STDiT3> load_stdit3_rank(const std::string& dir, Backend& be, Communicator* comm,
                                         const std::string& flag) {
  const int n = comm ? comm->size() : 1;
  const STDiT3Config cfg = dit_config(dir, flag);
  if (const int files = rank_files(dir); files > 0) {
    check_rank_files(dir, files, n);
    const std::string path = dir + "/rank" + std::to_string(comm ? comm->rank() : 0) + ".safetensors";
    const WeightMap w = load_checked(*open_tensor_file(path), stdit3_param_specs(cfg, n), flag + " " + path);
    return std::make_unique<STDiT3>(cfg, w, be, n > 1 ? comm : nullptr, true);
  }
  if (n == 1) return STDiT3::load(dir, be, flag);
  STDIT_CHECK(cfg.num_heads % n == 0, "tensor parallel: --tp ", n, " must divide the ", cfg.num_heads,
              " attention heads");
  const auto file = open_model_weights(dir, flag);
  const WeightMap w = load_checked(*file, stdit3_param_specs(cfg), flag);
  return std::make_unique<STDiT3>(cfg, w, be, comm);
}

Tensor TensorParallelDenoiser::forward(const STDiT3Inputs& in) {
  std::vector<Tensor> out(ranks_.size());
  run([&](int r) { out[r] = ranks_[r]->forward(in); });
  backends_[0]->bind_to_this_thread();
  return out[0];
}

void TensorParallelDenoiser::release_kept_state() {
  run([&](int r) { ranks_[r]->release_kept_state(); });
  backends_[0]->bind_to_this_thread();
}

ProcessSplit make_process_split(int tp, int cp, bool cfg_parallel, Backend* device) {
  ProcessSplit s;
  const int r = process_world().rank, per_half = tp * cp;
  s.half = cfg_parallel ? r / per_half : 0;
  const int c = (r % per_half) / tp, t = r % tp;
  if (tp > 1) {
    std::vector<int> group;
    for (int k = 0; k < tp; ++k) group.push_back(s.half * per_half + c * tp + k);
    s.tp_comm = make_process_comm(group, device);
  }
  if (cp > 1) {
    std::vector<int> group;
    for (int k = 0; k < cp; ++k) group.push_back(s.half * per_half + k * tp + t);
    s.cp_comm = make_process_comm(group, device);
  }
  if (cfg_parallel) s.cfg_comm = make_process_comm({c * tp + t, per_half + c * tp + t});
  return s;
}

void check_tp_split(int tp, int heads, int devices_needed, int devices_present) {
  STDIT_CHECK(tp >= 1, "--tp must be at least 1, got ", tp);
  STDIT_CHECK(heads % tp == 0, "--tp ", tp, " does not divide the model's ", heads,
              " attention heads (use 1, 2, 4, 8 or 16 for STDiT3-XL)");
  STDIT_CHECK(devices_needed <= devices_present, "this run needs ", devices_needed,
              " GPUs but ", devices_present, " are visible");
}

}  // namespace stdit
