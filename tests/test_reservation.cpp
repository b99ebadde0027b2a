// Output names reserved with O_EXCL: one owner per name, placeholders removed when unused, never
// a file the reservation did not create.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/reservation.h"

namespace fs = std::filesystem;
using namespace stdit;

namespace {
fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::path(::testing::TempDir()) / (name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
}  // namespace

TEST(Reservation, OneOwnerPerNameAndUnusedPlaceholdersGo) {
  const fs::path d = temp_dir("stdit_reserve");
  const std::string p = (d / "a.mp4").string();
  {
    auto r = Reservation::try_reserve(p);
    ASSERT_TRUE(r);
    EXPECT_TRUE(fs::exists(p));
    EXPECT_EQ(fs::file_size(p), 0u);
    EXPECT_EQ(Reservation::try_reserve(p), nullptr);  // a second reserver does not get it
    EXPECT_THROW(Reservation::reserve(p, "-o"), Error);
  }
  EXPECT_FALSE(fs::exists(p));  // dropped without keep(): the placeholder is gone
  {
    auto r = Reservation::try_reserve(p);
    std::ofstream(d / "a.tmp") << "finished video";
    fs::rename(d / "a.tmp", p);  // the finished file replaces the placeholder
    r->keep();
  }
  ASSERT_TRUE(fs::exists(p));
  EXPECT_EQ(fs::file_size(p), 14u);
  fs::remove_all(d);
}

TEST(Reservation, NeverRemovesAFileItDidNotCreate) {
  const fs::path d = temp_dir("stdit_reserve_other");
  const std::string p = (d / "b.mp4").string();
  {
    auto r = Reservation::try_reserve(p);
    ASSERT_TRUE(r);
    // Someone else replaces the name with their own (empty) file: not ours any more.
    fs::remove(p);
    std::ofstream(p).close();
  }
  EXPECT_TRUE(fs::exists(p));
  fs::remove_all(d);
}

TEST(Reservation, CheckNewFileExplainsEachRefusal) {
  const fs::path d = temp_dir("stdit_reserve_check");
  std::ofstream(d / "there.mp4") << "x";
  auto msg = [](const std::string& path, bool may_create) {
    try {
      check_new_file(path, "-o", may_create);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_NE(msg((d / "there.mp4").string(), false).find("exists; stdit never overwrites"), std::string::npos);
  EXPECT_NE(msg((d / "no/such/dir/x.mp4").string(), false).find("does not exist"), std::string::npos);
  EXPECT_EQ(msg((d / "no/such/dir/x.mp4").string(), true), "(accepted)");
  EXPECT_NE(msg((d / "there.mp4/x.mp4").string(), true).find("is not a directory"), std::string::npos);
  EXPECT_EQ(msg((d / "new.mp4").string(), false), "(accepted)");
  EXPECT_FALSE(fs::exists(d / "new.mp4"));  // checking creates nothing
  fs::remove_all(d);
}
