#include "io/zip.h"

#include "core/error.h"

namespace stdit {

namespace {
uint64_t rd(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
constexpr uint32_t kEocd = 0x06054b50, kZip64Eocd = 0x06064b50, kZip64Locator = 0x07064b50,
                   kCentral = 0x02014b50, kLocal = 0x04034b50;
constexpr uint64_t kMaxEntries = 1u << 20;
}  // namespace

ZipArchive::ZipArchive(const std::string& label, const uint8_t* bytes, uint64_t size)
    : label_(label), bytes_(bytes), size_(size) {
  const std::string where = label + ": ";
  STDIT_CHECK(size >= 22, where, "file is too small to be a zip archive (", size, " bytes)");
  // End of central directory: last 22 bytes plus at most a 64 KiB comment.
  int64_t eocd = -1;
  const uint64_t lowest = size > 22 + 65535 ? size - 22 - 65535 : 0;
  for (uint64_t p = size - 22 + 1; p-- > lowest;)
    if (rd(bytes + p, 4) == kEocd) {
      eocd = static_cast<int64_t>(p);
      break;
    }
  STDIT_CHECK(eocd >= 0, where,
              "not a zip archive (no end-of-central-directory record): truncated, or not a "
              "PyTorch checkpoint saved in the zip format");
  const uint8_t* e = bytes + eocd;
  uint64_t count = rd(e + 10, 2), cd_size = rd(e + 12, 4), cd_off = rd(e + 16, 4);
  if (count == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {
    STDIT_CHECK(eocd >= 20 && rd(bytes + eocd - 20, 4) == kZip64Locator, where,
                "zip64 archive without its locator record (corrupt)");
    const uint64_t z = rd(bytes + eocd - 20 + 8, 8);
    STDIT_CHECK(z <= size && size - z >= 56 && rd(bytes + z, 4) == kZip64Eocd, where,
                "zip64 end-of-central-directory record missing or out of range (corrupt)");
    count = rd(bytes + z + 32, 8);
    cd_size = rd(bytes + z + 40, 8);
    cd_off = rd(bytes + z + 48, 8);
  }
  STDIT_CHECK(count <= kMaxEntries, where, "zip archive claims ", count, " entries (corrupt)");
  STDIT_CHECK(cd_off <= size && cd_size <= size - cd_off, where,
              "zip central directory lies outside the file (truncated?)");
  uint64_t p = cd_off;
  for (uint64_t i = 0; i < count; ++i) {
    STDIT_CHECK(p + 46 <= cd_off + cd_size && rd(bytes + p, 4) == kCentral, where,
                "zip central directory entry ", i, " is corrupt");
    const uint8_t* c = bytes + p;
    const uint64_t method = rd(c + 10, 2), name_len = rd(c + 28, 2), extra_len = rd(c + 30, 2),
                   comment_len = rd(c + 32, 2);
    uint64_t csize = rd(c + 20, 4), usize = rd(c + 24, 4), local = rd(c + 42, 4);
    STDIT_CHECK(p + 46 + name_len + extra_len + comment_len <= cd_off + cd_size, where,
                "zip central directory entry ", i, " overruns the directory");
    std::string name(reinterpret_cast<const char*>(c + 46), name_len);
    // ZIP64 extra field (id 1): the 0xffffffff fields follow in a fixed order.
    const uint8_t* x = c + 46 + name_len;
    for (uint64_t q = 0; q + 4 <= extra_len;) {
      const uint64_t id = rd(x + q, 2), len = rd(x + q + 2, 2);
      STDIT_CHECK(q + 4 + len <= extra_len, where, "zip extra field of '", name, "' is corrupt");
      if (id == 1) {
        uint64_t r = q + 4;
        auto take = [&](uint64_t& v) {
          if (v != 0xffffffffu) return;
          STDIT_CHECK(r + 8 <= q + 4 + len, where, "zip64 field of '", name, "' is short");
          v = rd(x + r, 8);
          r += 8;
        };
        take(usize);
        take(csize);
        take(local);
      }
      q += 4 + len;
    }
    STDIT_CHECK(method == 0 && csize == usize, where, "zip entry '", name,
                "' is compressed (method ", method, "); PyTorch checkpoints store entries uncompressed");
    STDIT_CHECK(local <= size && size - local >= 30 && rd(bytes + local, 4) == kLocal, where,
                "zip local header of '", name, "' is missing or out of range (truncated?)");
    const uint64_t data = local + 30 + rd(bytes + local + 26, 2) + rd(bytes + local + 28, 2);
    STDIT_CHECK(data <= size && usize <= size - data, where, "zip entry '", name,
                "' runs past the end of the file (truncated?)");
    STDIT_CHECK(entries_.emplace(name, Entry{data, usize}).second, where, "zip entry '", name,
                "' appears twice");
    p += 46 + name_len + extra_len + comment_len;
  }
}

const ZipArchive::Entry* ZipArchive::find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

}  // namespace stdit
