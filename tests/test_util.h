// Helpers shared by the tests.
#pragma once
#include <fstream>
#include <map>
#include <string>

namespace stdit::test {

// A key list of spec/keys/*.tsv (copied to tests/data/keys): name -> shape text "[a, b]".
// Lines starting with '#' are comments. An unreadable file gives an empty map (tests then fail
// on the expected key count).
inline std::map<std::string, std::string> read_key_list(const std::string& path) {
  std::ifstream in(path);
  std::map<std::string, std::string> keys;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto t1 = line.find('\t'), t2 = line.find('\t', t1 + 1);
    keys[line.substr(0, t1)] = line.substr(t1 + 1, t2 - t1 - 1);
  }
  return keys;
}

}  // namespace stdit::test
