// Which stores need an fdatasync for a sync point: a file on a memory file
// system (tmpfs, /dev/shm) says nothing_to_write_back(), a file on a disk
// file system does not. And where the platform says a store is durable: the
// persistence domain of an NVDIMM region, read from a sysfs tree built here
// the way the kernel lays it out.
#include "target/pmem_region.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <liburing.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <optional>
#include <fstream>
#include <string>
#include <vector>

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

// A file store of 4 blocks in the working directory (a disk file system
// wherever the project is built from a checkout on disk), already unlinked,
// and a descriptor of its own of the file. Skips on a memory file system.
struct FileStore {
  std::unique_ptr<PmemRegion> region;
  UniqueFd fd;
};
void open_file_store(FileStore& store) {
  UniqueFd cwd(::open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(cwd.valid());
  if (on_memory_fs(cwd.get())) GTEST_SKIP() << "inherent: the working directory is on a memory file system";
  std::string path = fresh_path(".");
  ASSERT_FALSE(path.empty());
  auto region = open_pmem_region(RegionOptions{path, 4 * kBlockSize, true});
  ASSERT_TRUE(region.ok()) << region.error().message();
  store.region = std::move(*region);
  store.fd.reset(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  ::unlink(path.c_str());
  ASSERT_TRUE(store.fd.valid());
}

// The tiering's fdatasync (prep_second_sync) and the sync points' (prep_sync)
// go to two open file descriptions of the store file: each then sees a failed
// write-back, which Linux reports to one fdatasync per description.
TEST(PmemRegionTest, TheSecondSyncUsesItsOwnFileDescriptionOfTheStore) {
  FileStore store;
  ASSERT_NO_FATAL_FAILURE(open_file_store(store));
  if (IsSkipped()) return;
  io_uring_sqe first{}, second{};
  store.region->prep_sync(&first);
  store.region->prep_second_sync(&second);
  EXPECT_EQ(first.opcode, IORING_OP_FSYNC);
  EXPECT_EQ(second.opcode, IORING_OP_FSYNC);
  EXPECT_EQ(second.fsync_flags, IORING_FSYNC_DATASYNC);
  ASSERT_NE(first.fd, second.fd);
  struct stat a {}, b {};
  ASSERT_EQ(::fstat(first.fd, &a), 0);
  ASSERT_EQ(::fstat(second.fd, &b), 0);
  EXPECT_EQ(a.st_dev, b.st_dev);
  EXPECT_EQ(a.st_ino, b.st_ino) << "not the store file";
  // Two descriptions, not one duplicated: their file offsets are apart.
  ASSERT_EQ(::lseek(first.fd, 4096, SEEK_SET), 4096);
  EXPECT_EQ(::lseek(second.fd, 0, SEEK_CUR), 0);
}

// The page-cache state of [off, off+len) of a file (cachestat(2), Linux 6.5);
// empty when the kernel has not got it. The structures are the kernel's
// uapi ones, spelled here for older headers.
struct CacheState {
  uint64_t cached, dirty, writeback, evicted, recently_evicted;
};
std::optional<CacheState> cache_state(int fd, uint64_t off, uint64_t len) {
  struct {
    uint64_t off, len;
  } range{off, len};
  CacheState state{};
  constexpr long kCachestat = 451;  // the same number on every architecture
  if (::syscall(kCachestat, fd, &range, &state, 0) != 0) return std::nullopt;
  return state;
}

// Zeroing a block on a file store makes that block durable, not the whole
// store: dirty pages of other blocks stay dirty (an fdatasync of the file
// would write all of them back first, with the brick's loop waiting).
TEST(PmemRegionTest, ZeroingABlockWritesBackNoOtherBlock) {
  FileStore store;
  ASSERT_NO_FATAL_FAILURE(open_file_store(store));
  if (IsSkipped()) return;
  auto& region = store.region;
  const UniqueFd& fd = store.fd;
  if (!cache_state(fd.get(), 0, kBlockSize)) GTEST_SKIP() << "inherent: the kernel has no cachestat (Linux < 6.5)";
  std::vector<uint8_t> bytes(kBlockSize, 0x5a);
  region->copy_nodrain(0, bytes.data(), bytes.size());
  region->copy_nodrain(2 * kBlockSize, bytes.data(), bytes.size());
  auto before = cache_state(fd.get(), 2 * kBlockSize, kBlockSize);
  ASSERT_TRUE(before);
  ASSERT_GT(before->dirty, 0u) << "the block just written is expected dirty in the page cache";

  ASSERT_TRUE(region->zero(0, kBlockSize).ok());

  auto after = cache_state(fd.get(), 2 * kBlockSize, kBlockSize);
  ASSERT_TRUE(after);
  EXPECT_GT(after->dirty + after->writeback, 0u) << "zeroing block 0 wrote block 2 back";
  const uint8_t* base = region->base();
  EXPECT_TRUE(std::all_of(base, base + kBlockSize, [](uint8_t b) { return b == 0; })) << "block 0 not zeroed";
  EXPECT_EQ(base[2 * kBlockSize], 0x5a);
  auto zeroed = cache_state(fd.get(), 0, kBlockSize);
  ASSERT_TRUE(zeroed);
  EXPECT_EQ(zeroed->dirty + zeroed->writeback, 0u) << "the zeroed block is left to write back";
  region.reset();
}

// reserve() gives a hole in a file store its space back (so a store through
// the mapping there cannot fail for lack of it) and leaves contents alone.
TEST(PmemRegionTest, ReserveFillsAHoleInTheStoreFile) {
  FileStore store;
  ASSERT_NO_FATAL_FAILURE(open_file_store(store));
  if (IsSkipped()) return;
  auto& region = store.region;
  const UniqueFd& fd = store.fd;
  region->base()[2 * kBlockSize] = 0x77;
  if (::fallocate(fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, kBlockSize, kBlockSize) != 0) {
    GTEST_SKIP() << "inherent: the file system cannot punch holes";
  }
  // Allocated space, in 512-byte units (SEEK_HOLE takes allocated but
  // unwritten extents for holes too).
  auto allocated = [&] {
    struct stat st {};
    EXPECT_EQ(::fstat(fd.get(), &st), 0);
    return static_cast<uint64_t>(st.st_blocks) * 512;
  };
  const uint64_t punched = allocated();
  ASSERT_LE(punched, 3 * kBlockSize) << "no hole punched";
  ASSERT_TRUE(region->reserve(kBlockSize, kBlockSize).ok());
  EXPECT_GE(allocated(), punched + kBlockSize) << "still a hole";
  EXPECT_EQ(region->base()[2 * kBlockSize], 0x77);
  region.reset();
}

// A store that cannot be mapped names the path and says why once: libpmem's
// message ends with the errno's text, which Error::message() adds again.
TEST(PmemRegionTest, AStoreInAMissingDirectoryNamesThePathAndTheErrnoOnce) {
  const std::string dir = ::testing::TempDir() + "pbrick-region-test-missing-dir";
  std::filesystem::remove_all(dir);
  const std::string path = dir + "/store";
  auto region = open_pmem_region(RegionOptions{path, 4 * kBlockSize, true});
  ASSERT_FALSE(region.ok());
  EXPECT_EQ(region.error().errnum(), ENOENT);
  const std::string message = region.error().message();
  EXPECT_EQ(message.rfind("map store " + path + ": ", 0), 0u) << message;
  const std::string why = std::strerror(ENOENT);
  EXPECT_EQ(message.find(why), message.rfind(why)) << message;
  EXPECT_TRUE(message.ends_with(": " + why + " (ENOENT)")) << message;
}

// A block device is no store (nor slow tier): it is refused by name, saying
// what to give instead. The node is made for the test (a loop device's
// numbers; it is never opened).
TEST(PmemRegionTest, ABlockDeviceIsRefusedSayingWhatToGiveInstead) {
  const std::string dir = ::testing::TempDir() + "pbrick-region-test-blk";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/disk";
  ASSERT_EQ(::mknod(path.c_str(), S_IFBLK | 0600, makedev(7, 0)), 0)
      << "mknod of a block device node (the tests run as root): " << std::strerror(errno);
  auto region = open_pmem_region(RegionOptions{path, 0, false});
  ASSERT_FALSE(region.ok());
  EXPECT_EQ(region.error().errnum(), EINVAL);
  EXPECT_NE(region.error().message().find("store " + path + " is a block device: "), std::string::npos)
      << region.error().message();
  EXPECT_NE(region.error().message().find("a file on a file system made on it"), std::string::npos)
      << region.error().message();
  std::filesystem::remove_all(dir);
}

TEST(PmemRegionTest, AMemoryRegionForTestsIsNotTakenForAMemoryFileSystem) {
  EXPECT_FALSE(make_memory_region(4 * kBlockSize)->nothing_to_write_back());
}

TEST(PmemRegionTest, AMemoryRegionHasNoPersistenceDomain) {
  EXPECT_EQ(make_memory_region(4 * kBlockSize)->persistence_domain(), PersistenceDomain::kUnknown);
}

// A sysfs tree in a temporary directory: devices/.../ndbus0/region0 with its
// persistence_domain, a device-dax and a pmem block device under it, a disk
// elsewhere, and /dev/{char,block}/MAJ:MIN links to them as the kernel makes.
class SysfsTree : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/pbrick-sysfs-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    namespace fs = std::filesystem;
    fs::path region = root_ / "devices/platform/ACPI0012:00/ndbus0/region0";
    fs::create_directories(region / "dax0.0/dax0.0");
    fs::create_directories(region / "namespace0.1/block/pmem0/pmem0p1");
    fs::create_directories(root_ / "devices/pci0000:00/0000:00:04.0/virtio1/block/vda");
    fs::create_directories(root_ / "dev/char");
    fs::create_directories(root_ / "dev/block");
    fs::create_directory_symlink("../../devices/platform/ACPI0012:00/ndbus0/region0/dax0.0/dax0.0",
                                 root_ / "dev/char/252:0");
    fs::create_directory_symlink("../../devices/platform/ACPI0012:00/ndbus0/region0/namespace0.1/block/pmem0",
                                 root_ / "dev/block/259:0");
    fs::create_directory_symlink(
        "../../devices/platform/ACPI0012:00/ndbus0/region0/namespace0.1/block/pmem0/pmem0p1",
        root_ / "dev/block/259:1");
    fs::create_directory_symlink("../../devices/pci0000:00/0000:00:04.0/virtio1/block/vda",
                                 root_ / "dev/block/254:0");
    domain_file_ = region / "persistence_domain";
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  void platform_says(const std::string& text) { std::ofstream(domain_file_) << text; }
  PersistenceDomain of(bool char_device, unsigned maj, unsigned min) {
    return region_persistence_domain(root_.string(), char_device, makedev(maj, min));
  }

  std::filesystem::path root_, domain_file_;
};

TEST_F(SysfsTree, ADevdaxDeviceTakesItsRegionsDomain) {
  platform_says("cpu_cache\n");
  EXPECT_EQ(of(true, 252, 0), PersistenceDomain::kCpuCache);
  platform_says("memory_controller\n");
  EXPECT_EQ(of(true, 252, 0), PersistenceDomain::kMemoryController);
}

TEST_F(SysfsTree, AFileOnAPmemBlockDeviceOrItsPartitionTakesTheRegionsDomain) {
  platform_says("cpu_cache\n");
  EXPECT_EQ(of(false, 259, 0), PersistenceDomain::kCpuCache);
  EXPECT_EQ(of(false, 259, 1), PersistenceDomain::kCpuCache);
}

TEST_F(SysfsTree, APlatformThatSaysNothingIsUnknown) {
  platform_says("\n");  // the kernel's answer without the NFIT's capabilities
  EXPECT_EQ(of(true, 252, 0), PersistenceDomain::kUnknown);
  platform_says("something_new\n");
  EXPECT_EQ(of(true, 252, 0), PersistenceDomain::kUnknown);
}

TEST_F(SysfsTree, NotAnNvdimmIsUnknown) {
  platform_says("cpu_cache\n");
  EXPECT_EQ(of(false, 254, 0), PersistenceDomain::kUnknown) << "a virtio disk";
  EXPECT_EQ(of(false, 8, 0), PersistenceDomain::kUnknown) << "no such device";
  EXPECT_EQ(of(true, 252, 0), PersistenceDomain::kCpuCache);
  EXPECT_EQ(of(false, 252, 0), PersistenceDomain::kUnknown) << "252:0 is a character device";
}

TEST_F(SysfsTree, TheWalkStopsAtTheSysfsRoot) {
  // An attribute above the tree's root is not the device's.
  platform_says("cpu_cache\n");
  std::ofstream(root_ / "persistence_domain") << "cpu_cache\n";
  EXPECT_EQ(of(false, 254, 0), PersistenceDomain::kUnknown);
}

}  // namespace
}  // namespace pbrick
