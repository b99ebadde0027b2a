// Reading model config.json files: one place for the file read, the JSON parse and the typed,
// range-checked field access, each failure one message naming the file and the key.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace stdit {

// The file's text; Error "<path>: cannot open the <what>" when it cannot be read.
std::string read_text_file(const std::string& path, const std::string& what);
// Parses `text` as a JSON object; Error naming `source` otherwise.
nlohmann::json parse_json_object(const std::string& text, const std::string& source);
// j[key] as an integer in [lo, hi], `def` when absent or null.
int json_int(const nlohmann::json& j, const std::string& key, int def, const std::string& source,
             int lo, int hi);
// j[key] as a boolean, `def` when absent or null.
bool json_bool(const nlohmann::json& j, const std::string& key, bool def, const std::string& source);

}  // namespace stdit
