#include "io/checkpoint.h"

#include <set>
#include <sstream>

#include "core/error.h"

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
    if (f.shape != p.shape)
      mismatched.push_back(cat(p.name, ": shape ", shape_str(f.shape), ", expected ",
                               shape_str(p.shape)));
    else if (!is_float(f.dtype) || f.dtype == DType::F64 || f.dtype == DType::F8_E5M2 ||
             f.dtype == DType::F8_E4M3)
      mismatched.push_back(cat(p.name, ": dtype ", dtype_name(f.dtype), ", expected F32, BF16 or F16"));
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

WeightMap load_checked(const SafetensorsFile& file, const std::vector<ParamSpec>& expected,
                       const std::string& flag) {
  std::vector<Found> found;
  for (const auto& t : file.tensors()) found.push_back({t.name, t.dtype, t.shape});
  verify(found, expected, file.path() + (flag.empty() ? "" : " (given as " + flag + ")"));
  WeightMap out;
  for (const auto& p : expected)
    if (file.contains(p.name)) out[p.name] = file.get(p.name);
  return out;
}

void check_weights(const WeightMap& weights, const std::vector<ParamSpec>& expected,
                   const std::string& label) {
  std::vector<Found> found;
  for (const auto& [name, t] : weights) found.push_back({name, t.dtype(), t.shape()});
  verify(found, expected, label);
}

}  // namespace stdit
