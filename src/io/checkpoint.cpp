#include "io/checkpoint.h"

#include <set>
#include <sstream>

#include "core/error.h"
#include "io/config_json.h"

namespace stdit {

namespace {

struct Found {
  std::string name;
  DType dtype;
  Shape shape;
};

// Compares what is there with what is expected; throws one message listing all problems.
void verify(const std::vector<Found>& found, const std::vector<ParamSpec>& expected,
            const std::string& label) {
  std::map<std::string, const Found*> have;
  for (const auto& f : found) have[f.name] = &f;
  std::set<std::string> wanted;
  std::vector<std::string> missing, mismatched, unexpected;
  for (const auto& p : expected) {
    wanted.insert(p.name);
    auto it = have.find(p.name);
    if (it == have.end()) {
      if (!p.optional) missing.push_back(p.name + " " + shape_str(p.shape));
      continue;
    }
    const Found& f = *it->second;
    if (f.shape != p.shape) {
      mismatched.push_back(cat(p.name, ": shape ", shape_str(f.shape), ", expected ",
                               shape_str(p.shape)));
    } else if (f.dtype == DType::F8_E4M3 && p.quantizable()) {
      // An FP8 weight needs its row scales, and nothing else may use the _scale name.
      const std::string sk = scale_key(p.name);
      wanted.insert(sk);
      auto s = have.find(sk);
      if (s == have.end())
        missing.push_back(cat(sk, " ", shape_str({p.shape[0]}), " (the row scales of the F8_E4M3 weight)"));
      else if (s->second->shape != Shape{p.shape[0]} || s->second->dtype != DType::F32)
        mismatched.push_back(cat(sk, ": ", dtype_name(s->second->dtype), " ", shape_str(s->second->shape),
                                 ", expected F32 ", shape_str({p.shape[0]}), " (one scale per row of ",
                                 p.name, ")"));
    } else if (!is_float(f.dtype) || f.dtype == DType::F64 || f.dtype == DType::F8_E5M2 ||
               f.dtype == DType::F8_E4M3) {
      mismatched.push_back(cat(p.name, ": dtype ", dtype_name(f.dtype), ", expected F32, BF16 or F16",
                               p.quantizable() ? " (or F8_E4M3 with row scales)" : ""));
    }
  }
  for (const auto& f : found)
    if (!wanted.count(f.name)) unexpected.push_back(f.name + " " + shape_str(f.shape));
  if (missing.empty() && mismatched.empty() && unexpected.empty()) return;

  std::ostringstream os;
  os << label << ": the weights do not match the model configuration (" << missing.size()
     << " missing, " << unexpected.size() << " unexpected, " << mismatched.size()
     << " mismatched)";
  auto list = [&](const char* title, const std::vector<std::string>& v) {
    if (v.empty()) return;
    os << "\n  " << title << ":";
    const size_t shown = std::min<size_t>(v.size(), 40);
    for (size_t i = 0; i < shown; ++i) os << "\n    " << v[i];
    if (v.size() > shown) os << "\n    ... and " << v.size() - shown << " more";
  };
  list("missing keys", missing);
  list("unexpected keys", unexpected);
  list("shape/dtype mismatches", mismatched);
  throw Error(os.str());
}

}  // namespace

std::string scale_key(const std::string& name) { return name + "_scale"; }

WeightMap load_checked(const TensorSource& file, const std::vector<ParamSpec>& expected,
                       const std::string& flag, const std::vector<std::string>& ignored_prefixes) {
  std::vector<Found> found;
  for (const auto& t : file.entries()) {
    bool ignored = false;
    for (const auto& p : ignored_prefixes) ignored |= t.name.rfind(p, 0) == 0;
    if (!ignored) found.push_back({t.name, t.dtype, t.shape});
  }
  verify(found, expected, file.path() + (flag.empty() ? "" : " (given as " + flag + ")"));
  WeightMap out;
  for (const auto& p : expected) {
    if (!file.contains(p.name)) continue;
    Tensor t = file.get(p.name);
    // An FP8 weight carries its row scales (verify() checked them).
    if (t.dtype() == DType::F8_E4M3) t = t.with_scales(file.get(scale_key(p.name)));
    out[p.name] = t;
  }
  return out;
}

void check_weights(const WeightMap& weights, const std::vector<ParamSpec>& expected,
                   const std::string& label) {
  // In memory, an FP8 weight carries its scales (Tensor::scales()); check them as a file's.
  std::vector<Found> found;
  for (const auto& [name, t] : weights) {
    found.push_back({name, t.dtype(), t.shape()});
    if (t.dtype() == DType::F8_E4M3 && t.scales().defined())
      found.push_back({scale_key(name), t.scales().dtype(), t.scales().shape()});
  }
  verify(found, expected, label);
}

}  // namespace stdit

// ---- model directories and sharded checkpoints ----------------------------------------------------
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/torch_bin.h"

namespace stdit {

std::shared_ptr<TensorSource> open_tensor_file(const std::string& path) {
  // PyTorch zip checkpoints start with a zip local header ("PK\3\4"), legacy ones with a pickle
  // (0x80); everything else is read as safetensors.
  char magic[2] = {0, 0};
  std::ifstream(path, std::ios::binary).read(magic, 2);
  if ((magic[0] == 'P' && magic[1] == 'K') || static_cast<unsigned char>(magic[0]) == 0x80 ||
      (path.size() >= 4 && path.substr(path.size() - 4) == ".bin"))
    return TorchBinFile::open(path);
  return SafetensorsFile::open(path);
}

namespace {

// Several shard files behind one index (`weight_map`: key -> file name).
class ShardedSource final : public TensorSource {
 public:
  ShardedSource(const std::string& index_path, const std::string& flag) : path_(index_path) {
    namespace fs = std::filesystem;
    std::ifstream in(index_path, std::ios::binary | std::ios::ate);
    STDIT_CHECK(in, index_path, ": cannot open");
    const std::streamoff size = in.tellg();
    STDIT_CHECK(size >= 0 && static_cast<uint64_t>(size) <= kMaxJsonFileBytes, index_path, ": ", size,
                " bytes, more than the ", kMaxJsonFileBytes, "-byte limit for a shard index");
    in.seekg(0);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in, json_depth_limit(index_path));
    } catch (const std::exception& e) {
      fail(index_path, ": not valid JSON (", e.what(), ")");
    }
    STDIT_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), index_path,
                ": no 'weight_map' object; not a Hugging Face shard index");
    const fs::path dir = fs::path(index_path).parent_path();
    for (const auto& [key, file] : j["weight_map"].items()) {
      STDIT_CHECK(file.is_string(), index_path, ": weight_map value of '", key, "' is not a file name");
      const std::string f = file.get<std::string>();
      STDIT_CHECK(!f.empty() && f.find('/') == std::string::npos && f != "..", index_path,
                  ": shard name '", f, "' must be a plain file name in the same directory");
      if (!shards_.count(f)) {
        const std::string p = (dir / f).string();
        std::error_code ec;  // a name the file system refuses (too long, ...) is an error too
        const bool there = fs::exists(p, ec);
        STDIT_CHECK(there && !ec, index_path, " (", flag, ") names shard '", f, "', which ",
                    ec ? "cannot be looked up (" + ec.message() + ")" : "does not exist in " + dir.string());
        shards_[f] = open_tensor_file(p);
      }
      where_[key] = f;
    }
    // Index and shards must agree exactly: every indexed key in its shard, nothing unindexed.
    std::string problems;
    int n = 0;
    for (const auto& [key, f] : where_)
      if (!shards_[f]->contains(key) && n++ < 20) problems += "\n    '" + key + "' is not in " + f;
    for (const auto& [f, src] : shards_)
      for (const auto& e : src->entries()) {
        auto it = where_.find(e.name);
        if ((it == where_.end() || it->second != f) && n++ < 20)
          problems += "\n    " + f + " holds '" + e.name + "', which the index " +
                      (it == where_.end() ? "does not list" : "places in " + it->second);
      }
    STDIT_CHECK(problems.empty(), index_path, " (", flag, "): the shards disagree with the index:",
                problems);
  }
  const std::string& path() const override { return path_; }
  std::vector<TensorEntry> entries() const override {
    std::vector<TensorEntry> out;
    for (const auto& [f, src] : shards_)
      for (auto& e : src->entries()) out.push_back(std::move(e));
    return out;
  }
  bool contains(const std::string& name) const override { return where_.count(name) != 0; }
  Tensor get(const std::string& name) const override {
    auto it = where_.find(name);
    STDIT_CHECK(it != where_.end(), path_, ": no tensor named '", name, "'");
    return shards_.at(it->second)->get(name);
  }

 private:
  std::string path_;
  std::map<std::string, std::shared_ptr<TensorSource>> shards_;
  std::map<std::string, std::string> where_;
};

}  // namespace

std::shared_ptr<TensorSource> open_model_weights(const std::string& dir, const std::string& flag) {
  namespace fs = std::filesystem;
  std::error_code ec;  // non-throwing lookups: a path the file system refuses is "not a directory"
  STDIT_CHECK(fs::is_directory(dir, ec), dir, " (", flag, "): not a directory");
  const fs::path d(dir);
  if (fs::exists(d / "model.safetensors", ec)) return SafetensorsFile::open((d / "model.safetensors").string());
  if (fs::exists(d / "model.safetensors.index.json", ec))
    return std::make_shared<ShardedSource>((d / "model.safetensors.index.json").string(), flag);
  if (fs::exists(d / "pytorch_model.bin", ec)) return TorchBinFile::open((d / "pytorch_model.bin").string());
  if (fs::exists(d / "pytorch_model.bin.index.json", ec))
    return std::make_shared<ShardedSource>((d / "pytorch_model.bin.index.json").string(), flag);
  fail(dir, " (", flag, "): no weights found (expected model.safetensors, "
       "model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json)");
}

}  // namespace stdit
