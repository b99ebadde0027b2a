#include "pipeline/run_record.h"

#include <cmath>
#include <cstdio>
#include <fstream>

#include "core/error.h"
#include "io/safetensors.h"
#ifdef STDIT_HAVE_MEDIA
#include "media/image_io.h"
#include "media/video_io.h"
#endif

namespace stdit {

using json = nlohmann::json;

namespace {

template <typename T>
T get(const json& j, const char* key, const std::string& where) {
  STDIT_CHECK(j.contains(key), where, ": the stdit record has no '", key, "'");
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    fail(where, ": the stdit record's '", key, "' has the wrong type: ", j.at(key).dump());
  }
}

template <typename T>
std::optional<T> get_opt(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || j.at(key).is_null()) return std::nullopt;
  return get<T>(j, key, where);
}

std::string number(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

}  // namespace

json RunRecord::to_json() const {
  json vids = json::array();
  for (const auto& v : videos)
    vids.push_back({{"prompt", v.prompt},
                    {"prompt_encoded", v.prompt_encoded},
                    {"noise_index", v.noise_index},
                    {"reference_path", v.reference_path},
                    {"mask_strategy", v.mask_strategy}});
  auto opt = [](const auto& o) { return o ? json(*o) : json(nullptr); };
  json j = {{"program", program},
          {"engine", engine},
          {"engine_id", engine_id},
          {"backend", backend},
          {"precision", precision},
          {"fp8_keep", fp8_keep},
          {"attention_kernels", attention_kernels},
          {"width", width},
          {"height", height},
          {"output_width", output_width},
          {"output_height", output_height},
          {"num_frames", num_frames},
          {"fps", fps},
          {"model_fps", model_fps},
          {"steps", steps},
          {"cfg_scale", cfg_scale},
          {"seed", seed},
          {"aes", opt(aes)},
          {"flow", opt(flow)},
          {"camera_motion", opt(camera_motion)},
          {"batch_size", batch_size},
          {"cache", cache},
          {"cfg_until", cfg_until},
          {"loop", loop},
          {"condition_frame_length", condition_frame_length},
          {"condition_frame_edit", condition_frame_edit},
          {"align", align},
          {"extend", extend},
          {"videos", vids}};
  if (vae_frames_per_call > 0) j["vae_frames_per_call"] = vae_frames_per_call;  // only when --max-memory set it
  if (cfg_sequential) j["cfg_halves"] = "sequential";
  return j;
}

RunRecord RunRecord::from_json(const json& j, const std::string& where) {
  STDIT_CHECK(j.is_object(), where, ": the stdit record is not a JSON object");
  RunRecord r;
  r.program = get<std::string>(j, "program", where);
  r.engine = get<std::string>(j, "engine", where);
  r.engine_id = get<std::string>(j, "engine_id", where);
  r.backend = get<std::string>(j, "backend", where);
  r.precision = get<std::string>(j, "precision", where);
  r.width = get<int>(j, "width", where);
  r.height = get<int>(j, "height", where);
  r.output_width = get<int>(j, "output_width", where);
  r.output_height = get<int>(j, "output_height", where);
  r.num_frames = get<int>(j, "num_frames", where);
  r.fps = get<double>(j, "fps", where);
  r.model_fps = get<double>(j, "model_fps", where);
  r.steps = get<int>(j, "steps", where);
  r.cfg_scale = get<double>(j, "cfg_scale", where);
  r.seed = get<uint64_t>(j, "seed", where);
  r.aes = get_opt<double>(j, "aes", where);
  r.flow = get_opt<double>(j, "flow", where);
  r.camera_motion = get_opt<std::string>(j, "camera_motion", where);
  r.batch_size = get<int>(j, "batch_size", where);
  // Records written before step caching and --cfg-until have neither: both were off.
  r.cache = get_opt<std::string>(j, "cache", where).value_or("none");
  r.cfg_until = get_opt<double>(j, "cfg_until", where).value_or(1.0);
  // ... nor conditioning: none.
  r.loop = get_opt<int>(j, "loop", where).value_or(1);
  r.condition_frame_length = get_opt<int>(j, "condition_frame_length", where).value_or(5);
  r.condition_frame_edit = get_opt<double>(j, "condition_frame_edit", where).value_or(0.0);
  r.align = get_opt<int>(j, "align", where).value_or(5);
  r.extend = get_opt<std::string>(j, "extend", where).value_or("");
  r.fp8_keep = get_opt<std::string>(j, "fp8_keep", where).value_or("");
  r.attention_kernels = get_opt<std::string>(j, "attention_kernels", where).value_or("");
  r.vae_frames_per_call = get_opt<int>(j, "vae_frames_per_call", where).value_or(0);
  const std::string halves = get_opt<std::string>(j, "cfg_halves", where).value_or("together");
  STDIT_CHECK(halves == "together" || halves == "sequential", where, ": the stdit record holds an unknown cfg_halves '",
              halves, "'");
  r.cfg_sequential = halves == "sequential";
  STDIT_CHECK(r.vae_frames_per_call >= 0 && r.vae_frames_per_call <= 64, where,
              ": the stdit record holds an impossible vae_frames_per_call: ", r.vae_frames_per_call);
  STDIT_CHECK(r.loop >= 1 && r.align >= 0 && r.condition_frame_length >= 1 && std::isfinite(r.condition_frame_edit),
              where, ": the stdit record holds impossible conditioning settings: ", j.dump());
  STDIT_CHECK(std::isfinite(r.cfg_until) && r.cfg_until > 0 && r.cfg_until <= 1, where,
              ": the stdit record holds an impossible cfg_until: ", r.cfg_until);
  STDIT_CHECK(r.width >= 8 && r.height >= 8 && r.num_frames >= 1 && r.steps >= 1 && r.batch_size >= 1 &&
                  std::isfinite(r.fps) && r.fps > 0 && std::isfinite(r.cfg_scale),
              where, ": the stdit record holds impossible settings: ", j.dump());
  STDIT_CHECK(j.contains("videos") && j["videos"].is_array() && !j["videos"].empty(), where,
              ": the stdit record lists no video");
  for (const auto& v : j["videos"])
    r.videos.push_back({get<std::string>(v, "prompt", where), get<std::string>(v, "prompt_encoded", where),
                        get<uint32_t>(v, "noise_index", where),
                        get_opt<std::string>(v, "reference_path", where).value_or(""),
                        get_opt<std::string>(v, "mask_strategy", where).value_or("")});
  return r;
}

RunRecord RunRecord::only_video(size_t i) const {
  RunRecord r = *this;
  r.videos = {videos.at(i)};
  return r;
}

std::map<std::string, std::string> RunRecord::tags() const {
  std::map<std::string, std::string> t = {{"comment", "stdit generate"},
                                          {"seed", std::to_string(seed)}, {"steps", std::to_string(steps)},
                                          {"cfg_scale", number(cfg_scale)}, {"model", engine}};
  if (videos.size() == 1) {
    t["prompt"] = videos[0].prompt;
    t["noise_index"] = std::to_string(videos[0].noise_index);
  }
  t[kRecordKey] = to_json().dump();
  return t;
}

RunRecord read_run_record(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  STDIT_CHECK(in, path, ": cannot read the file");
  char magic[8] = {};
  in.read(magic, 8);
  const std::string m(magic, static_cast<size_t>(in.gcount()));
  std::map<std::string, std::string> meta;
  if (m.size() == 8 && m.compare(0, 8, "\x89PNG\r\n\x1a\n", 8) == 0) {
#ifdef STDIT_HAVE_MEDIA
    meta = read_png_text(path);
#else
    fail(path, ": reading PNG files needs a build with media libraries");
#endif
  } else if (m.size() == 8 && m.compare(4, 4, "ftyp") == 0) {
#ifdef STDIT_HAVE_MEDIA
    meta = read_media_tags(path);
#else
    fail(path, ": reading mp4 files needs a build with media libraries");
#endif
  } else {
    meta = SafetensorsFile::open(path)->metadata();
  }
  return RunRecord::from_metadata(meta, path);
}

RunRecord RunRecord::from_metadata(const std::map<std::string, std::string>& meta, const std::string& where) {
  STDIT_CHECK(meta.count(kRecordKey), where,
              ": holds no stdit record (not written by `stdit generate`, or by a version before records)");
  json j;
  try {
    j = json::parse(meta.at(kRecordKey));
  } catch (const json::exception&) {
    fail(where, ": the stdit record is not valid JSON");
  }
  return from_json(j, where);
}

}  // namespace stdit
