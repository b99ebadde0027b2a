// Output names reserved atomically: a file that this process did not create is never replaced.
//
// reserve() creates `path` empty with O_CREAT | O_EXCL, so of several processes asking for one
// name exactly one gets it. The finished file is written under a temporary name and renamed over
// the (own, empty) placeholder; keep() then marks it done. A reservation dropped without keep()
// removes its placeholder, but only while it is still the empty file it created (same inode,
// which stays ours: the reservation holds the placeholder open).
#pragma once
#include <sys/types.h>

#include <memory>
#include <string>

#include "core/interrupt.h"

namespace stdit {

class Reservation {
 public:
  // nullptr when `path` exists already; Error when it cannot be created for another reason
  // (missing or unwritable directory, a name the file system refuses).
  static std::unique_ptr<Reservation> try_reserve(const std::string& path);
  // As try_reserve, but an existing `path` is an Error naming `what` (e.g. "-o").
  static std::unique_ptr<Reservation> reserve(const std::string& path, const std::string& what);
  ~Reservation();
  Reservation(const Reservation&) = delete;
  Reservation& operator=(const Reservation&) = delete;

  const std::string& path() const { return path_; }
  // The finished file is in place: it stays.
  void keep();

 private:
  Reservation(std::string path, int fd, dev_t dev, ino_t ino);
  std::string path_;
  int fd_;  // the placeholder, held open until keep() or the end
  dev_t dev_;
  ino_t ino_;
  bool kept_ = false;
  CleanupPath cleanup_;
};

// Checks that a new file could be created at `path` (its directory exists and is writable, the
// name is free) without creating anything; Error naming `what` otherwise. `may_create_dir`: a
// missing directory is fine when its nearest existing ancestor is writable.
void check_new_file(const std::string& path, const std::string& what, bool may_create_dir = false);

}  // namespace stdit
