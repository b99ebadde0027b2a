#include "pipeline/engine.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "backend/policy.h"
#include "core/error.h"
#include "core/fp8.h"
#include "core/hash.h"
#include "core/log.h"
#include "io/checkpoint.h"
#include "io/config_json.h"
#include "io/safetensors.h"
#include "models/stdit3/config.h"
#include "models/stdit3/stdit3.h"
#include "models/vae/config.h"
#include "pipeline/synthetic_weights.h"
#include "text/t5.h"
#include "text/tokenizer.h"

namespace stdit {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string read_text(const fs::path& p) { return read_text_file(p.string(), "file"); }

// Which of our three models a checkpoint is, from its config.json or its key names.
std::string identify(const fs::path& dir, const TensorSource* weights) {
  if (fs::exists(dir / "config.json")) {
    try {
      const json j = json::parse(read_text(dir / "config.json"));
      const std::string mt = j.value("model_type", std::string());
      if (mt == "STDiT3") return "dit";
      if (mt == "t5") return "t5";
      if (mt == "VideoAutoencoderPipeline") return "vae";
    } catch (const std::exception&) {
    }
  }
  if (weights) {
    for (const auto& e : weights->entries()) {
      if (e.name.rfind("x_embedder.", 0) == 0 || e.name.rfind("spatial_blocks.", 0) == 0) return "dit";
      if (e.name.rfind("spatial_vae.", 0) == 0 || e.name.rfind("temporal_vae.", 0) == 0) return "vae";
      if (e.name == "shared.weight" || e.name.rfind("encoder.block.", 0) == 0) return "t5";
    }
  }
  return "";
}

const char* flag_of(const std::string& kind) {
  return kind == "dit" ? "--dit" : kind == "t5" ? "--t5" : "--vae";
}
const char* what_of(const std::string& kind) {
  return kind == "dit" ? "the STDiT3 denoiser (hpcai-tech/OpenSora-STDiT-v3)"
         : kind == "t5" ? "the T5 text encoder (DeepFloyd/t5-v1_1-xxl)"
                        : "the VAE (hpcai-tech/OpenSora-VAE-v1.2)";
}

std::vector<ParamSpec> specs_for(const std::string& kind, const fs::path& cfg) {
  if (kind == "dit") return stdit3_param_specs(load_stdit3_config(cfg.string()));
  if (kind == "t5") return t5_param_specs(load_t5_config(cfg.string()));
  return vae_param_specs(load_vae_config(cfg.string()));
}

// Whether an engine of --dtype fp8 stores this weight in e4m3: the denoiser's quantizable matrices
// that fp8 runs quantized by default (not fp8_default_keep()'s layers, which it runs in bf16: stored
// in bf16, an fp8 engine runs as the same weights quantized at load do).
bool stored_quantized(const ParamSpec& p) {
  static const Fp8Keep kept = parse_fp8_keep(fp8_default_keep());
  return p.quantizable() && !kept.keeps(p.fp8_layer, false, 0);
}
// How a weight is stored in an engine of `dtype`. F8_E4M3 ("--dtype fp8"): stored_quantized()
// matrices in e4m3 with their row scales (core/fp8.h; one already in FP8 is kept as it is), every
// other float in bf16. Other dtypes: an FP8 source weight is dequantized first.
DType stored_dtype(const ParamSpec& p, DType source, DType dtype) {
  if (!is_float(source)) return source;
  if (dtype == DType::F8_E4M3) return stored_quantized(p) ? DType::F8_E4M3 : DType::BF16;
  return dtype;
}
// What a component is written in, for the log: under fp8 only the denoiser's block matrices are
// e4m3 (T5 and the VAE stay bf16).
std::string stored_label(const std::vector<ParamSpec>& specs, DType dtype) {
  if (dtype != DType::F8_E4M3) return engine_dtype_name(dtype);
  size_t quantized = 0;
  for (const auto& p : specs) quantized += stored_quantized(p);
  return quantized ? cat("fp8: ", quantized, " block matrices in e4m3, the rest bf16") : std::string("bf16 (fp8 is for the denoiser)");
}
Tensor stored(const ParamSpec& p, const Tensor& t, DType target) {
  if (target == DType::F8_E4M3) return t.dtype() == DType::F8_E4M3 ? t : quantize_rows_e4m3(t, p.name);
  if (t.dtype() == DType::F8_E4M3) return dequantize_rows_e4m3(t, t.scales()).to(target);
  return t.to(target);
}

// A source of weights: the dtype of a spec's tensor (nullopt: absent) without making it, and the
// tensor itself, made when it is written.
struct WeightSource {
  std::function<std::optional<DType>(const ParamSpec&)> dtype_of;
  std::function<Tensor(const ParamSpec&)> get;
};
// The tensors of a map, less `skip` (T5's tied embedding copy).
WeightSource map_source(const WeightMap& m, const std::string& skip = "") {
  return {[&m, skip](const ParamSpec& p) -> std::optional<DType> {
            if (p.name == skip || !m.count(p.name)) return std::nullopt;
            return m.at(p.name).dtype();
          },
          [&m](const ParamSpec& p) { return m.at(p.name); }};
}

// Writes the tensors of `specs` that `src` has to one safetensors file, one tensor in memory at a
// time; an FP8 weight is followed by its scales. Returns the number of weights written.
size_t write_weights(const fs::path& path, const std::vector<ParamSpec>& specs, const WeightSource& src, DType dtype,
                     const std::map<std::string, std::string>& meta) {
  struct Item {
    size_t spec;
    bool scale;
  };
  std::vector<PlannedTensor> plan;
  std::vector<Item> items;
  size_t weights = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const ParamSpec& p = specs[i];
    const std::optional<DType> source = src.dtype_of(p);
    if (!source) continue;
    const DType d = stored_dtype(p, *source, dtype);
    plan.push_back({p.name, d, p.shape});
    items.push_back({i, false});
    ++weights;
    if (d == DType::F8_E4M3) {
      plan.push_back({scale_key(p.name), DType::F32, {p.shape[0]}});
      items.push_back({i, true});
    }
  }
  Tensor last;  // the quantized weight whose scales come next
  write_safetensors_streaming(
      path.string(), plan,
      [&](size_t k) {
        const ParamSpec& p = specs[items[k].spec];
        if (items[k].scale) return last.scales();
        last = stored(p, src.get(p), plan[k].dtype);
        return last;
      },
      meta);
  return weights;
}

// An id of a set of weights stored as `stored` (FNV-1a, 64 bit, hex, over that dtype and each
// tensor's name, dtype, shape and bytes in name order): the same weights give the same id, so
// converting again writes the same files; other weights (a fine-tune of the same shapes too) or
// another stored dtype give another.
std::string weights_id(const WeightMap& w, DType stored) {
  Fnv1a64 f(Fnv1a64::kIdBasis);
  f.add(static_cast<uint64_t>(stored));
  for (const auto& [name, t] : w) {
    for (const char c : name) f.add(static_cast<uint8_t>(c));
    f.add(static_cast<uint64_t>(t.dtype()));
    for (const int64_t d : t.shape()) f.add(static_cast<uint64_t>(d));
    const Tensor c = t.contiguous();
    const auto* p = static_cast<const uint8_t*>(c.raw());
    const size_t n = c.nbytes();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t v;
      std::memcpy(&v, p + i, 8);
      f.add(v);
    }
    for (; i < n; ++i) f.add(p[i]);
  }
  return f.hex();
}

// The denoiser as one file per tensor-parallel rank. With --dtype fp8 the whole matrices are
// quantized first, so that a rank's codes and scales are those of the one-file engine.
void write_dit_shards(const STDiT3Config& cfg, const WeightMap& full, const fs::path& dir, DType dtype, int tp,
                      std::map<std::string, std::string> meta) {
  WeightMap w = full;
  if (dtype == DType::F8_E4M3)
    for (const auto& p : stdit3_param_specs(cfg))
      if (stored_quantized(p) && w.count(p.name)) w[p.name] = stored(p, w.at(p.name), DType::F8_E4M3);
  const auto rank_specs = stdit3_param_specs(cfg, tp);
  meta["shard_set"] = weights_id(w, dtype);  // rank files of other weights are refused beside these
  for (int r = 0; r < tp; ++r) {
    const WeightMap shard = shard_stdit3_weights(cfg, w, r, tp);
    meta["tp_rank"] = std::to_string(r);
    meta["tp_size"] = std::to_string(tp);
    write_weights(dir / cat("rank", r, ".safetensors"), rank_specs, map_source(shard), dtype, meta);
  }
}

// A component of real size with synthetic weights (convert --synthetic): the config of `given`
// (a model directory) or the real model's, weights by the recipe of pipeline/synthetic_weights.h,
// made one tensor at a time while the file is written.
json synthetic_component(const std::string& kind, const std::string& given, const fs::path& out_dir, DType dtype,
                         int tp, uint64_t seed) {
  fs::create_directories(out_dir / kind);
  const fs::path cfg = out_dir / kind / "config.json";
  if (given.empty()) {
    std::ofstream(cfg) << real_config_json(kind);
  } else {
    std::error_code ec;
    const fs::path dir = fs::is_directory(given, ec) ? fs::path(given) : fs::path(given).parent_path();
    STDIT_CHECK(fs::exists(dir / "config.json", ec), given, " (", flag_of(kind), "): no config.json");
    fs::copy_file(dir / "config.json", cfg);
    fs::permissions(cfg, fs::perms::owner_write, fs::perm_options::add);
  }
  STDIT_CHECK(identify(out_dir / kind, nullptr) == kind, given, " (", flag_of(kind), ") is not the config of ",
              what_of(kind));
  std::vector<ParamSpec> specs;
  for (const auto& p : specs_for(kind, cfg))
    if (!p.optional && p.name != "encoder.embed_tokens.weight") specs.push_back(p);
  const uint64_t s = synthetic_seed(kind, seed);
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"producer", "stdit convert --synthetic"},
                                                   {"synthetic_seed", std::to_string(s)}};
  if (kind == "dit" && tp > 1) {
    write_dit_shards(load_stdit3_config(cfg.string()), synthetic_weights(specs, s), out_dir / kind, dtype, tp, meta);
  } else {
    const WeightSource synthetic{[](const ParamSpec&) { return std::optional<DType>(DType::F32); },
                                 [&](const ParamSpec& p) { return synthetic_weight(p, s); }};
    write_weights(out_dir / kind / "model.safetensors", specs, synthetic, dtype, meta);
  }
  if (kind == "t5") fs::copy_file(default_spiece_model(), out_dir / kind / "spiece.model");
  log_info("convert: ", kind, " <- synthetic weights, seed ", s, " (", specs.size(), " tensors, ", stored_label(specs, dtype),
           ")");
  return {{"source", given.empty() ? "synthetic" : "synthetic, config of " + given}, {"synthetic_seed", s}};
}

// Converts one component into out_dir/<kind>/; returns its description for config.json.
json convert_component(const std::string& kind, const std::string& given, const fs::path& out_dir,
                       DType dtype, int tp = 1) {
  const std::string flag = flag_of(kind);
  STDIT_CHECK(!given.empty(), "convert: ", flag, " is required (", what_of(kind), ")");
  fs::path src(given);
  std::error_code ec;  // non-throwing lookups: a path the file system refuses does not exist
  STDIT_CHECK(fs::exists(src, ec), given, " (", flag, "): no such file or directory");
  const fs::path dir = fs::is_directory(src, ec) ? src : src.parent_path();
  STDIT_CHECK(fs::exists(dir / "config.json", ec), dir.string(), " (", flag,
              "): no config.json; give the model directory as downloaded from Hugging Face");
  std::shared_ptr<TensorSource> weights;
  std::string id;
  try {
    weights = fs::is_directory(src) ? open_model_weights(dir.string(), flag) : open_tensor_file(src.string());
    id = identify(dir, weights.get());
  } catch (const Error&) {
    id = identify(dir, nullptr);
    if (!id.empty() && id != kind) throw Error(given + " is " + what_of(id) + ", not " + what_of(kind) +
                                               "; pass it as " + flag_of(id));
    throw;
  }
  STDIT_CHECK(id == kind, given, " is ", id.empty() ? "not a model stdit knows" : what_of(id), ", not ",
              what_of(kind), id.empty() ? std::string() : std::string("; pass it as ") + flag_of(id));
  const auto specs = specs_for(kind, dir / "config.json");
  const std::vector<std::string> ignored =
      kind == "t5" ? std::vector<std::string>{"decoder.", "lm_head."} : std::vector<std::string>{};
  const WeightMap w = load_checked(*weights, specs, flag, ignored);

  fs::create_directories(out_dir / kind);
  fs::copy_file(dir / "config.json", out_dir / kind / "config.json");
  fs::permissions(out_dir / kind / "config.json", fs::perms::owner_write, fs::perm_options::add);
  // T5's input embedding is a tied copy of shared.weight: not written.
  const WeightSource to_write = map_source(w, "encoder.embed_tokens.weight");
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"producer", "stdit convert"}};
  size_t written = 0;
  if (kind == "dit" && tp > 1) {
    write_dit_shards(load_stdit3_config((dir / "config.json").string()), w, out_dir / kind, dtype, tp, meta);
    for (const auto& p : specs) written += to_write.dtype_of(p).has_value();
  } else {
    written = write_weights(out_dir / kind / "model.safetensors", specs, to_write, dtype, meta);
  }
  if (kind == "t5") {
    const fs::path sp = fs::exists(dir / "spiece.model") ? dir / "spiece.model" : fs::path(default_spiece_model());
    T5Tokenizer check(sp.string());  // refuse a broken vocabulary now, not at generate time
    fs::copy_file(sp, out_dir / kind / "spiece.model");
    fs::permissions(out_dir / kind / "spiece.model", fs::perms::owner_write, fs::perm_options::add);
  }
  uint64_t bytes = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) bytes += e.file_size();
  log_info("convert: ", kind, " <- ", given, " (", written, " tensors, ", stored_label(specs, dtype), ")");
  json desc = {{"source", fs::absolute(src).string()}, {"source_bytes", bytes}, {"tensors", written}};
  if (kind == "dit" && tp > 1) desc["tp_size"] = tp;
  return desc;
}

// The optional "defaults" object of an engine config; every value checked, unknown keys warned about.
EngineDefaults parse_defaults(const json& j, const std::string& src) {
  EngineDefaults d;
  if (!j.contains("defaults") || j["defaults"].is_null()) return d;
  const json& o = j["defaults"];
  STDIT_CHECK(o.is_object(), src, ": 'defaults' must be an object, got ", o.dump());
  const std::string where = src + " defaults";
  auto opt_int = [&](const char* key, int lo, int hi) -> std::optional<int> {
    if (!o.contains(key) || o[key].is_null()) return std::nullopt;
    return json_int(o, key, 0, where, lo, hi);
  };
  auto opt_num = [&](const char* key, double lo, double hi) -> std::optional<double> {
    if (!o.contains(key) || o[key].is_null()) return std::nullopt;
    const json& v = o[key];
    STDIT_CHECK(v.is_number(), where, ": '", key, "' must be a number, got ", v.dump());
    const double x = v.get<double>();
    STDIT_CHECK(std::isfinite(x) && x >= lo && x <= hi, where, ": '", key, "' = ", v.dump(), " is outside [", lo,
                ", ", hi, "]");
    return x;
  };
  d.height = opt_int("height", 8, 4096);
  d.width = opt_int("width", 8, 4096);
  STDIT_CHECK(d.height.has_value() == d.width.has_value(), where, ": 'height' and 'width' go together");
  for (const auto& [key, v] : {std::pair<const char*, std::optional<int>>{"height", d.height}, {"width", d.width}})
    STDIT_CHECK(!v || *v % 8 == 0, where, ": '", key, "' = ", *v, " is not a multiple of 8");
  d.num_frames = opt_int("num_frames", 1, 10000);
  STDIT_CHECK(!d.num_frames || *d.num_frames == 1 || *d.num_frames >= 17, where, ": 'num_frames' = ",
              *d.num_frames, " is not a length the sampler takes (1, or at least 17)");
  d.steps = opt_int("steps", 1, 1000);
  d.fps = opt_num("fps", 1e-3, 1000);
  d.cfg_scale = opt_num("cfg_scale", 0, 100);
  for (const auto& [key, v] : o.items())
    if (key != "height" && key != "width" && key != "num_frames" && key != "steps" && key != "fps" &&
        key != "cfg_scale")
      log_warn(where, ": unknown key '", key, "' ignored");
  return d;
}

// The "defaults" block of the engine the components are taken from, when they come from one
// (e.g. `convert --dit E/dit --vae E/vae --t5 E/t5` to change the dtype or split): the settings a
// model was made for belong to the model. The denoiser's engine counts first.
json defaults_of_source_engine(const ConvertOptions& opt) {
  for (const std::string& given : {opt.dit, opt.vae, opt.t5}) {
    std::error_code ec;
    fs::path dir(given);
    if (!fs::is_directory(dir, ec)) dir = dir.parent_path();
    const fs::path cfg = dir.parent_path() / "config.json";
    if (!fs::is_regular_file(cfg, ec)) continue;
    json j;
    try {
      j = parse_json_object(read_text_file(cfg.string(), "engine config"), cfg.string());
    } catch (const Error&) {
      continue;  // not an engine's config: nothing to keep
    }
    if (!j.contains("format") || j["format"] != "stdit-engine" || !j.contains("defaults")) continue;
    parse_defaults(j, cfg.string());  // refuse a broken block instead of copying it
    log_info("convert: keeping the engine defaults of ", cfg.parent_path().string(), ": ", j["defaults"].dump());
    return j["defaults"];
  }
  return json();
}

}  // namespace

Engine open_engine(const std::string& dir) {
  const fs::path d(dir);
  STDIT_CHECK(fs::is_directory(d), dir, ": no engine directory here (make one with `stdit convert`)");
  STDIT_CHECK(fs::exists(d / "config.json"), dir, ": not an engine directory (no config.json)");
  const std::string cfg_path = (d / "config.json").string();
  const json j = parse_json_object(read_text_file(cfg_path, "engine config"), cfg_path);
  STDIT_CHECK(j.contains("format") && j["format"] == "stdit-engine", cfg_path,
              ": not an stdit engine config (convert the checkpoints with `stdit convert`)");
  STDIT_CHECK(j.contains("format_version") && j["format_version"].is_number_integer() &&
                  j["format_version"].get<int64_t>() == 1,
              cfg_path, ": engine format version ", j.contains("format_version") ? j["format_version"].dump() : "(none)",
              " is not supported by this stdit");
  const auto dtype = j.contains("dtype") ? j["dtype"] : json("f32");
  STDIT_CHECK(dtype.is_string() && (dtype == "f32" || dtype == "bf16" || dtype == "f16" || dtype == "fp8"), cfg_path,
              ": engine dtype ", dtype.dump(), " is not f32, bf16, f16 or fp8");
  Engine e;
  e.dir = dir;
  e.dtype = dtype.get<std::string>();
  e.dit = (d / "dit").string();
  e.t5 = (d / "t5").string();
  e.vae = (d / "vae").string();
  e.spiece = (d / "t5" / "spiece.model").string();
  e.defaults = parse_defaults(j, cfg_path);
  e.tp_size = json_int(j, "tp_size", 1, cfg_path, 1, 16);
  std::vector<fs::path> parts = {d / "dit/config.json", d / "t5/config.json", d / "t5/model.safetensors",
                                 d / "t5/spiece.model", d / "vae/config.json", d / "vae/model.safetensors"};
  if (e.tp_size == 1) parts.push_back(d / "dit/model.safetensors");
  for (int r = 0; r < e.tp_size && e.tp_size > 1; ++r) parts.push_back(d / "dit" / cat("rank", r, ".safetensors"));
  for (const auto& p : parts)
    STDIT_CHECK(fs::exists(p), dir, ": incomplete engine, ", fs::relative(p, d).string(),
                " is missing (convert again with `stdit convert`)");
  return e;
}

Engine default_engine() {
  if (fs::is_directory("engine_outputs")) return open_engine("engine_outputs");
  std::vector<fs::path> candidates = {fs::path(STDIT_SOURCE_DIR) / "models/tiny"};
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back(exe.parent_path() / "models/tiny");
    candidates.push_back(exe.parent_path().parent_path() / "models/tiny");
  }
  for (const auto& c : candidates)
    if (fs::is_directory(c)) {
      Engine e = open_engine(c.string());
      e.embedded = true;
      return e;
    }
  fail("no engine given (-e), no ./engine_outputs, and the embedded model is not found at ",
       candidates[0].string());
}

std::string engine_identity(const Engine& e) {
  Fnv1a64 f(Fnv1a64::kIdBasis);
  auto mix = [&](const std::string& bytes) {
    f.add_bytes(bytes);
    f.add(0xff);  // a separator, so that moving bytes between parts changes the hash
  };
  const fs::path d(e.dir);
  for (const char* comp : {"dit", "t5", "vae"}) {
    mix(comp);
    mix(read_text_file((d / comp / "config.json").string(), "engine config"));
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(d / comp))
      if (entry.path().extension() == ".safetensors") files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
      mix(file.filename().string());
      mix(read_safetensors_header(file.string()));
    }
  }
  return f.hex();
}

const char* engine_dtype_name(DType d) {
  return d == DType::F32 ? "f32" : d == DType::BF16 ? "bf16" : d == DType::F16 ? "f16" : "fp8";
}

void convert_engine(const ConvertOptions& opt) {
  STDIT_CHECK(opt.dtype == DType::F32 || opt.dtype == DType::BF16 || opt.dtype == DType::F16 ||
                  opt.dtype == DType::F8_E4M3,
              "convert: --dtype must be f32, bf16, f16 or fp8");
  const fs::path out(opt.out);
  STDIT_CHECK(!fs::exists(out) || opt.force, opt.out,
              " already exists; pass --force to replace it, or choose another -o");
  const fs::path tmp = fs::path(opt.out + ".tmp." + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    fs::create_directories(tmp);
    json comps;
    STDIT_CHECK(opt.tp >= 1 && opt.tp <= 16, "convert: --tp must be in 1..16, got ", opt.tp);
    if (!opt.synthetic)  // every missing flag before any file is read
      for (const auto& [kind, given] : {std::pair<std::string, std::string>{"dit", opt.dit}, {"vae", opt.vae}, {"t5", opt.t5}})
        STDIT_CHECK(!given.empty(), "convert: ", flag_of(kind), " is required (", what_of(kind),
                    "), or --synthetic for real-size models with synthetic weights");
    for (const char* kind : {"dit", "vae", "t5"}) {
      const std::string& given = std::string(kind) == "dit" ? opt.dit : std::string(kind) == "vae" ? opt.vae : opt.t5;
      const int tp = std::string(kind) == "dit" ? opt.tp : 1;
      comps[kind] = opt.synthetic ? synthetic_component(kind, given, tmp, opt.dtype, tp, opt.seed)
                                  : convert_component(kind, given, tmp, opt.dtype, tp);
    }
    const std::string dt = engine_dtype_name(opt.dtype);
    json cfg = {{"format", "stdit-engine"}, {"format_version", 1}, {"program", "stdit 0.1.0"},
                {"dtype", dt}, {"tp_size", opt.tp}, {"components", comps}};
    const json defaults = defaults_of_source_engine(opt);
    if (!defaults.is_null()) cfg["defaults"] = defaults;
    std::ofstream(tmp / "config.json") << cfg.dump(2) << "\n";
    if (fs::exists(out)) fs::remove_all(out);
    if (out.has_parent_path()) fs::create_directories(out.parent_path());
    fs::rename(tmp, out);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  log_info("convert: engine written to ", fs::absolute(out).string());
}

}  // namespace stdit
