#include "io/config_json.h"

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace stdit {

std::string read_text_file(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  STDIT_CHECK(in, path, ": cannot open the ", what);
  const std::streamoff size = in.tellg();
  STDIT_CHECK(size >= 0 && static_cast<uint64_t>(size) <= kMaxJsonFileBytes, path, ": the ", what,
              " is ", size, " bytes, more than the ", kMaxJsonFileBytes, "-byte limit (not a config file?)");
  in.seekg(0);
  std::ostringstream ss;
  ss << in.rdbuf();
  STDIT_CHECK(!in.bad(), path, ": read error");
  return ss.str();
}

nlohmann::json::parser_callback_t json_depth_limit(const std::string& source) {
  return [source](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    if (depth > kMaxJsonDepth) fail(source, ": JSON nested deeper than ", kMaxJsonDepth, " levels");
    return true;
  };
}

nlohmann::json parse_json_object(const std::string& text, const std::string& source) {
  STDIT_CHECK(text.size() <= kMaxJsonFileBytes, source, ": ", text.size(), " bytes of JSON, more than the ",
              kMaxJsonFileBytes, "-byte limit");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text, json_depth_limit(source));
  } catch (const std::exception& e) {
    fail(source, ": not valid JSON (", e.what(), ")");
  }
  STDIT_CHECK(j.is_object(), source, ": config must be a JSON object");
  return j;
}

int json_int(const nlohmann::json& j, const std::string& key, int def, const std::string& src, int lo,
             int hi) {
  if (!j.contains(key) || j[key].is_null()) return def;
  const auto& v = j[key];
  STDIT_CHECK(v.is_number_integer(), src, ": '", key, "' must be an integer, got ", v.dump());
  const int64_t x = v.get<int64_t>();
  STDIT_CHECK(x >= lo && x <= hi, src, ": '", key, "' = ", x, " is outside [", lo, ", ", hi, "]");
  return static_cast<int>(x);
}

bool json_bool(const nlohmann::json& j, const std::string& key, bool def, const std::string& src) {
  if (!j.contains(key) || j[key].is_null()) return def;
  STDIT_CHECK(j[key].is_boolean(), src, ": '", key, "' must be true or false, got ", j[key].dump());
  return j[key].get<bool>();
}

}  // namespace stdit
