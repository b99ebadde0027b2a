// Reading model config.json files: one place for the file read, the JSON parse and the typed,
// range-checked field access, each failure one message naming the file and the key.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace stdit {

// Limits on JSON we read (config.json, *.index.json, engine config; docs/RELIABILITY.md): real
// files are kilobytes; these bound the time and memory a hostile file can cost.
constexpr size_t kMaxJsonFileBytes = 16u << 20;
constexpr int kMaxJsonDepth = 64;

// The file's text; Error "<path>: cannot open the <what>" when it cannot be read, and an Error
// when it is larger than kMaxJsonFileBytes.
std::string read_text_file(const std::string& path, const std::string& what);
// A nlohmann parser callback that raises Error naming `source` when nesting exceeds kMaxJsonDepth.
nlohmann::json::parser_callback_t json_depth_limit(const std::string& source);
// Parses `text` (at most kMaxJsonFileBytes, nesting at most kMaxJsonDepth) as a JSON object;
// Error naming `source` otherwise.
nlohmann::json parse_json_object(const std::string& text, const std::string& source);
// j[key] as an integer in [lo, hi], `def` when absent or null.
int json_int(const nlohmann::json& j, const std::string& key, int def, const std::string& source,
             int lo, int hi);
// j[key] as a boolean, `def` when absent or null.
bool json_bool(const nlohmann::json& j, const std::string& key, bool def, const std::string& source);

}  // namespace stdit
