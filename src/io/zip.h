// Read-only view of an uncompressed ("stored") zip archive in memory, as PyTorch writes them.
// ZIP64 is supported (checkpoint shards exceed 4 GB). Every structural problem is an Error.
#pragma once
#include <cstdint>
#include <map>
#include <string>

namespace stdit {

class ZipArchive {
 public:
  struct Entry {
    uint64_t data_offset = 0;  // of the entry's bytes within the archive
    uint64_t size = 0;
  };
  // `label` names the file in messages; bytes must outlive the archive.
  ZipArchive(const std::string& label, const uint8_t* bytes, uint64_t size);

  const std::map<std::string, Entry>& entries() const { return entries_; }
  const Entry* find(const std::string& name) const;
  const uint8_t* data(const Entry& e) const { return bytes_ + e.data_offset; }
  const std::string& label() const { return label_; }

 private:
  std::string label_;
  const uint8_t* bytes_;
  uint64_t size_;
  std::map<std::string, Entry> entries_;
};

}  // namespace stdit
