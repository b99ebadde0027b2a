#include "io/config_json.h"

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace stdit {

std::string read_text_file(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  STDIT_CHECK(in, path, ": cannot open the ", what);
  std::ostringstream ss;
  ss << in.rdbuf();
  STDIT_CHECK(!in.bad(), path, ": read error");
  return ss.str();
}

nlohmann::json parse_json_object(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
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
