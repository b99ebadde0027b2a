#include "io/safetensors.h"

#include "core/interrupt.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"

namespace stdit {

namespace {

using json = nlohmann::json;

// A header's JSON text [b, e) parsed, refusing nesting deeper than 4 levels (errors start with
// `where`); `duplicate` gets the first top-level name that appears twice, if any.
json parse_header_json(const std::string& where, const char* b, const char* e, std::string& duplicate) {
  std::set<std::string> seen;
  try {
    return json::parse(
        b, e,
        [&](int depth, json::parse_event_t ev, json& parsed) {
          if (depth > 4) throw Error(where + "header JSON is nested too deeply");
          if (ev == json::parse_event_t::key && depth == 1) {
            const auto key = parsed.get<std::string>();
            if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
          }
          return true;
        },
        /*allow_exceptions=*/true);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& ex) {
    fail(where, "header is not valid JSON (", ex.what(), ")");
  }
}

struct Mapping {
  void* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr && addr != MAP_FAILED) munmap(addr, size);
  }
};

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Parses one tensor entry of the header; `where` prefixes messages.
TensorInfo parse_entry(const std::string& where, const std::string& name, const json& e) {
  TensorInfo t;
  t.name = name;
  STDIT_CHECK(e.is_object(), where, "entry '", name, "' is not a JSON object");
  for (const auto& [k, v] : e.items()) {
    (void)v;
    STDIT_CHECK(k == "dtype" || k == "shape" || k == "data_offsets", where, "entry '", name,
                "' has an unexpected field '", k, "'");
  }
  STDIT_CHECK(e.contains("dtype") && e["dtype"].is_string(), where, "entry '", name,
              "' has no string 'dtype'");
  const std::string dt = e["dtype"].get<std::string>();
  STDIT_CHECK(parse_dtype(dt, &t.dtype), where, "entry '", name, "' has unknown dtype '", dt, "'");
  STDIT_CHECK(e.contains("shape") && e["shape"].is_array(), where, "entry '", name,
              "' has no 'shape' array");
  uint64_t numel = 1;
  for (const auto& d : e["shape"]) {
    STDIT_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), where,
                "entry '", name, "' has a shape element that is not a non-negative integer");
    const uint64_t v = d.get<uint64_t>();
    STDIT_CHECK(v <= (1ull << 48) && !__builtin_mul_overflow(numel, v, &numel), where, "entry '",
                name, "' has an impossibly large shape ", e["shape"].dump());
    t.shape.push_back(static_cast<int64_t>(v));
  }
  STDIT_CHECK(t.shape.size() <= 16, where, "entry '", name, "' has ", t.shape.size(),
              " dimensions (at most 16 supported)");
  const auto& off = e.contains("data_offsets") ? e["data_offsets"] : json();
  STDIT_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() &&
                  off[1].is_number_unsigned(),
              where, "entry '", name, "' needs 'data_offsets' as two non-negative integers");
  t.begin = off[0].get<uint64_t>();
  t.end = off[1].get<uint64_t>();
  STDIT_CHECK(t.begin <= t.end, where, "entry '", name, "' has data_offsets [", t.begin, ", ",
              t.end, "] with begin > end");
  uint64_t bytes = 0;
  STDIT_CHECK(!__builtin_mul_overflow(numel, dtype_size(t.dtype), &bytes), where, "entry '", name,
              "' is too large");
  STDIT_CHECK(bytes == t.end - t.begin, where, "entry '", name, "': shape ", shape_str(t.shape),
              " x ", dtype_name(t.dtype), " is ", bytes, " bytes but data_offsets span ",
              t.end - t.begin, " bytes");
  return t;
}

}  // namespace

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  STDIT_CHECK(fs::exists(path, ec), path, ": no such file");
  STDIT_CHECK(!fs::is_directory(path, ec), path, ": is a directory, expected a .safetensors file");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  STDIT_CHECK(fd >= 0, path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(path, ": cannot stat: ", std::strerror(err));
  }
  auto map = std::make_shared<Mapping>();
  map->size = static_cast<size_t>(st.st_size);
  if (map->size > 0) {
    map->addr = mmap(nullptr, map->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map->addr == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      fail(path, ": cannot mmap: ", std::strerror(err));
    }
  }
  ::close(fd);
  return parse(path, static_cast<const uint8_t*>(map->addr), map->size, map);
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::parse(const std::string& label,
                                                        const uint8_t* bytes, size_t size,
                                                        std::shared_ptr<void> owner) {
  const std::string where = label + ": ";
  STDIT_CHECK(size >= 8, where, "file is ", size,
              " bytes, too short for a safetensors header (truncated or not a safetensors file)");
  const uint64_t n = read_u64_le(bytes);
  STDIT_CHECK(n <= kMaxSafetensorsHeader, where, "header length ", n, " exceeds the ",
              kMaxSafetensorsHeader, "-byte limit (corrupt or not a safetensors file)");
  STDIT_CHECK(n <= size - 8, where, "header length ", n, " is larger than the rest of the file (",
              size - 8, " bytes): file truncated or corrupt");

  // Parse the header, refusing duplicate top-level names and deep nesting as we go.
  const char* hb = reinterpret_cast<const char*>(bytes + 8);
  std::string duplicate;
  const json header = parse_header_json(where, hb, hb + n, duplicate);
  STDIT_CHECK(header.is_object(), where, "header is JSON but not an object");
  STDIT_CHECK(duplicate.empty(), where, "header names tensor '", duplicate, "' more than once");

  auto f = std::shared_ptr<SafetensorsFile>(new SafetensorsFile());
  f->path_ = label;
  f->data_ = bytes + 8 + n;
  f->size_ = size;
  f->owner_ = std::move(owner);
  const uint64_t data_size = size - 8 - n;

  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      STDIT_CHECK(value.is_object(), where, "__metadata__ is not a JSON object");
      for (const auto& [mk, mv] : value.items()) {
        STDIT_CHECK(mv.is_string(), where, "__metadata__ value of '", mk, "' is not a string");
        f->metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    TensorInfo t = parse_entry(where, key, value);
    STDIT_CHECK(t.end <= data_size, where, "tensor '", key, "' data_offsets [", t.begin, ", ",
                t.end, "] run past the data section (", data_size, " bytes): file truncated?");
    f->tensors_.push_back(std::move(t));
  }

  std::sort(f->tensors_.begin(), f->tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  for (size_t i = 0; i < f->tensors_.size(); ++i) {
    const auto& t = f->tensors_[i];
    if (i > 0 && t.begin < f->tensors_[i - 1].end && t.begin != t.end)
      fail(where, "tensors '", f->tensors_[i - 1].name, "' and '", t.name,
           "' overlap in the data section");
    STDIT_CHECK(t.begin == covered || t.begin == t.end, where, "data section has a gap of ",
                t.begin > covered ? t.begin - covered : 0, " bytes before tensor '", t.name, "'");
    covered = std::max(covered, t.end);
    f->index_[t.name] = i;
  }
  STDIT_CHECK(covered == data_size, where, "data section is ", data_size, " bytes but tensors cover ",
              covered, " (trailing bytes or missing tensors)");
  return f;
}

std::vector<TensorEntry> SafetensorsFile::entries() const {
  std::vector<TensorEntry> out;
  for (const auto& t : tensors_) out.push_back({t.name, t.dtype, t.shape});
  return out;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo* t = find(name);
  STDIT_CHECK(t, path_, ": no tensor named '", name, "'");
  const uint8_t* p = data_ + t->begin;
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(t->dtype) == 0) {
    // Keep the whole file alive while the view exists.
    return Tensor::from_blob(const_cast<uint8_t*>(p), t->shape, t->dtype, owner_);
  }
  Tensor copy = Tensor::empty(t->shape, t->dtype);
  if (copy.nbytes()) std::memcpy(copy.raw(), p, copy.nbytes());
  return copy;
}

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<PlannedTensor> plan;
  for (const auto& [name, t] : tensors) {
    STDIT_CHECK(t.defined() && t.device().kind == DeviceKind::CPU, path, ": tensor '", name,
                "' is not a CPU tensor");
    plan.push_back({name, t.dtype(), t.shape()});
  }
  write_safetensors_streaming(path, plan, [&](size_t i) { return tensors[i].second; }, metadata);
}

void write_safetensors_streaming(const std::string& path, const std::vector<PlannedTensor>& plan,
                                 const std::function<Tensor(size_t)>& produce,
                                 const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& t : plan) {
    STDIT_CHECK(t.name != "__metadata__" && !t.name.empty(), path, ": invalid tensor name '", t.name, "'");
    STDIT_CHECK(names.insert(t.name).second, path, ": tensor '", t.name, "' given twice");
    const uint64_t bytes = static_cast<uint64_t>(shape_numel(t.shape)) * dtype_size(t.dtype);
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');

  namespace fs = std::filesystem;
  const fs::path final_path(path);
  if (final_path.has_parent_path()) fs::create_directories(final_path.parent_path());
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::error_code ec;
  CleanupPath registered(tmp);  // removed by a second Ctrl-C too
  try {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    STDIT_CHECK(out, path, ": cannot create ", tmp, ": ", std::strerror(errno));
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(h.size()) >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(h.data(), static_cast<std::streamsize>(h.size()));
    for (size_t i = 0; i < plan.size(); ++i) {
      const Tensor c = produce(i).contiguous();
      STDIT_CHECK(c.dtype() == plan[i].dtype && c.shape() == plan[i].shape, path, ": tensor '",
                  plan[i].name, "' does not have its planned dtype/shape");
      out.write(static_cast<const char*>(c.nbytes() ? c.raw() : nullptr),
                static_cast<std::streamsize>(c.nbytes()));
    }
    out.flush();
    STDIT_CHECK(out, path, ": write failed (disk full?)");
  } catch (...) {
    fs::remove(tmp, ec);
    throw;
  }
  fs::rename(tmp, final_path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    fail(path, ": cannot rename temporary file into place");
  }
}

std::string read_safetensors_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  STDIT_CHECK(in, path, ": cannot open");
  uint8_t len[8] = {};
  in.read(reinterpret_cast<char*>(len), 8);
  STDIT_CHECK(in, path, ": too short for a safetensors header");
  const uint64_t n = read_u64_le(len);
  STDIT_CHECK(n <= kMaxSafetensorsHeader, path, ": header length ", n, " exceeds the ", kMaxSafetensorsHeader,
              "-byte limit (corrupt or not a safetensors file)");
  std::string header(n, '\0');
  in.read(header.data(), static_cast<std::streamsize>(n));
  STDIT_CHECK(in, path, ": truncated safetensors header");
  return header;
}

std::map<std::string, std::string> read_safetensors_metadata(const std::string& path) {
  const std::string text = read_safetensors_header(path);
  std::string duplicate;
  const json header = parse_header_json(path + ": ", text.data(), text.data() + text.size(), duplicate);
  STDIT_CHECK(header.is_object(), path, ": header is not a JSON object");
  std::map<std::string, std::string> meta;
  if (const auto it = header.find("__metadata__"); it != header.end() && it->is_object())
    for (const auto& [k, v] : it->items())
      if (v.is_string()) meta[k] = v.get<std::string>();
  return meta;
}

}  // namespace stdit
