#include "io/reservation.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace stdit {

namespace fs = std::filesystem;

Reservation::Reservation(std::string path, int fd, dev_t dev, ino_t ino)
    : path_(std::move(path)), fd_(fd), dev_(dev), ino_(ino), cleanup_(path_, /*only_if_empty=*/true) {}

std::unique_ptr<Reservation> Reservation::try_reserve(const std::string& path) {
  STDIT_CHECK(!path.empty(), "output path is empty");
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    if (errno == EEXIST) return nullptr;
    fail(path, ": cannot create the output file: ", std::strerror(errno));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(path.c_str());
    fail(path, ": cannot stat the new output file: ", std::strerror(err));
  }
  // The descriptor stays open: while it does, the inode cannot be reused by another file, so
  // (dev, ino) keeps telling our placeholder from anyone else's file of that name.
  return std::unique_ptr<Reservation>(new Reservation(path, fd, st.st_dev, st.st_ino));
}

std::unique_ptr<Reservation> Reservation::reserve(const std::string& path, const std::string& what) {
  auto r = try_reserve(path);
  STDIT_CHECK(r, path, " (", what, ") exists; stdit never overwrites a file, choose another name");
  return r;
}

Reservation::~Reservation() {
  if (!kept_) {
    struct stat st;
    if (::stat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_ && st.st_size == 0)
      ::unlink(path_.c_str());
  }
  if (fd_ >= 0) ::close(fd_);
}

void Reservation::keep() {
  kept_ = true;
  cleanup_.release();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void check_new_file(const std::string& path, const std::string& what, bool may_create_dir) {
  STDIT_CHECK(!path.empty(), what, ": the file name is empty");
  std::error_code ec;
  const fs::path p(path);
  STDIT_CHECK(!fs::exists(fs::symlink_status(p, ec)), path, " (", what,
              ") exists; stdit never overwrites a file, choose another name");
  fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  if (may_create_dir) {  // the nearest existing ancestor must take the new directories
    while (!fs::exists(dir, ec) && dir.has_parent_path() && dir.parent_path() != dir) dir = dir.parent_path();
    if (!fs::exists(dir, ec)) dir = ".";
  }
  STDIT_CHECK(fs::is_directory(dir, ec), path, " (", what, "): the directory ", dir.string(),
              fs::exists(dir, ec) ? " is not a directory" : " does not exist");
  STDIT_CHECK(::access(dir.c_str(), W_OK | X_OK) == 0, path, " (", what, "): the directory ", dir.string(),
              " is not writable");
}

}  // namespace stdit
