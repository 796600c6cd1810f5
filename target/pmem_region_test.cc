// Which stores need an fdatasync for a sync point: a file on a memory file
// system (tmpfs, /dev/shm) says nothing_to_write_back(), a file on a disk
// file system does not.
#include "target/pmem_region.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "common/unique_fd.h"
#include "common/units.h"

namespace pbrick {
namespace {

// A fresh store file of 8 MiB in `dir`; empty string when `dir` is missing.
std::string fresh_path(const std::string& dir) {
  std::string path = dir + "/pbrick-region-test-XXXXXX";
  int fd = ::mkstemp(path.data());
  if (fd < 0) return "";
  ::close(fd);
  ::unlink(path.c_str());
  return path;
}

bool opens_with_nothing_to_write_back(const std::string& path) {
  auto region = open_pmem_region(RegionOptions{path, 4 * kBlockSize, true});
  EXPECT_TRUE(region.ok()) << region.error().message();
  bool result = region.ok() && (*region)->nothing_to_write_back();
  if (region.ok()) {
    EXPECT_FALSE((*region)->is_pmem());
  }
  ::unlink(path.c_str());
  return result;
}

TEST(PmemRegionTest, AFileOnTmpfsHasNothingToWriteBack) {
  std::string path = fresh_path("/dev/shm");
  if (path.empty()) GTEST_SKIP() << "inherent: this host has no /dev/shm";
  UniqueFd dir(::open("/dev/shm", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(on_memory_fs(dir.get())) << "/dev/shm is expected to be tmpfs";
  EXPECT_TRUE(opens_with_nothing_to_write_back(path));
}

TEST(PmemRegionTest, AFileOnADiskFileSystemNeedsItsFdatasync) {
  // The build tree (the tests' working directory) is on a disk file system
  // wherever the project is built from a checkout on disk.
  UniqueFd cwd(::open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(cwd.valid());
  if (on_memory_fs(cwd.get())) GTEST_SKIP() << "inherent: the working directory is on a memory file system";
  std::string path = fresh_path(".");
  ASSERT_FALSE(path.empty());
  EXPECT_FALSE(opens_with_nothing_to_write_back(path));
}

TEST(PmemRegionTest, AMemoryRegionForTestsIsNotTakenForAMemoryFileSystem) {
  EXPECT_FALSE(make_memory_region(4 * kBlockSize)->nothing_to_write_back());
}

}  // namespace
}  // namespace pbrick
