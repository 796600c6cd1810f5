// PmemRegion implementations: a libpmem mapping of a file or devdax device, and
// anonymous memory for tests.
//
// The persistence primitive is chosen once, from pmem_is_pmem()'s verdict on the
// whole mapping:
//   pmem (devdax, or a DAX file mapped with MAP_SYNC): user-space cache flushes
//     are enough, so copy_nodrain = pmem_memcpy_nodrain (non-temporal stores),
//     drain = pmem_drain, persist = pmem_persist, zero = pmem_memset_persist.
//   anything else (page cache): stores land in the page cache, so persist =
//     msync(MS_SYNC) of the page-aligned range, and zero = punching a hole, which
//     both zeroes and gives the space back to the file system.
#include "target/pmem_region.h"

#include <fcntl.h>
#include <libpmem.h>
#include <linux/magic.h>
#include <liburing.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <sys/sysmacros.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <new>
#include <utility>

#include "common/log.h"
#include "common/unique_fd.h"
#include "common/units.h"
#include "target/store.h"

namespace pbrick {

void PmemRegion::prep_sync(io_uring_sqe* sqe) { io_uring_prep_fsync(sqe, sync_fd(), IORING_FSYNC_DATASYNC); }

Status PmemRegion::sync_done(int cqe_res) {
  if (cqe_res >= 0) return Status::Ok();
  return note_persist(Error(-cqe_res, "fdatasync of the store"));
}

namespace {

uint64_t page_size() {
  static const uint64_t size = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

// Range checks are programming-error checks (the store computes every offset
// from validated geometry), but a wild persist/zero must not touch memory
// outside the mapping, so they are enforced in release builds too.
bool in_range(uint64_t off, uint64_t len, uint64_t size) {
  return off <= size && len <= size - off;
}

Error range_error(const char* op, uint64_t off, uint64_t len, uint64_t size) {
  return Error(EINVAL, std::string(op) + " [" + format_hex(off) + ", +" + format_hex(len) +
                           ") outside region of " + format_hex(size) + " bytes");
}

// The 8-byte failure-atomic store: one aligned 64-bit store instruction. x86-64
// and AArch64 guarantee that an aligned 8-byte store is never torn, including
// with respect to a power failure once the line is flushed.
void store_word(uint8_t* addr, uint64_t value) {
  std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(addr))
      .store(value, std::memory_order_release);
}

class LibpmemRegion final : public PmemRegion {
 public:
  LibpmemRegion(std::string path, uint8_t* addr, uint64_t len, bool pmem, UniqueFd fd, UniqueFd second_fd,
                bool memory_fs, PersistenceDomain domain)
      : path_(std::move(path)), addr_(addr), len_(len), pmem_(pmem), memory_fs_(memory_fs), domain_(domain),
        fd_(std::move(fd)), second_fd_(std::move(second_fd)) {}

  ~LibpmemRegion() override {
    if (pmem_unmap(addr_, len_) != 0) {
      PBRICK_LOG_WARN("unmap %s: %s", path_.c_str(), std::strerror(errno));
    }
    // fd_ closes itself.
  }

  LibpmemRegion(const LibpmemRegion&) = delete;
  LibpmemRegion& operator=(const LibpmemRegion&) = delete;

  uint8_t* base() override { return addr_; }
  uint64_t size() const override { return len_; }
  bool is_pmem() const override { return pmem_; }
  PersistenceDomain persistence_domain() const override { return domain_; }

  void copy_nodrain(uint64_t off, const void* src, size_t len) override {
    if (!in_range(off, len, len_)) {
      PBRICK_LOG_ERROR("%s: %s", path_.c_str(),
                       range_error("copy", off, len, len_).context().c_str());
      std::abort();  // writing outside the mapping would corrupt memory
    }
    if (pmem_) {
      pmem_memcpy_nodrain(addr_ + off, src, len);
    } else {
      std::memcpy(addr_ + off, src, len);
    }
  }

  void drain() override {
    if (pmem_) pmem_drain();
  }

  Status persist(uint64_t off, uint64_t len) override {
    if (!in_range(off, len, len_)) return range_error("persist", off, len, len_).wrap(path_);
    if (len == 0) return Status::Ok();
    if (pmem_) {
      pmem_persist(addr_ + off, len);
      return Status::Ok();
    }
    // msync wants a page-aligned start; the mapping itself is page aligned.
    uint64_t start = off & ~(page_size() - 1);
    if (pmem_msync(addr_ + start, off + len - start) != 0) {
      return note_persist(
          errno_error("msync " + path_ + " [" + format_hex(off) + ", +" + format_hex(len) + ")"));
    }
    return Status::Ok();
  }

  Status store_word_persist(uint64_t off, uint64_t value) override {
    if (off % 8 != 0 || !in_range(off, 8, len_)) {
      return range_error("store_word_persist", off, 8, len_).wrap(path_);
    }
    store_word(addr_ + off, value);
    return persist(off, 8);
  }

  Status zero(uint64_t off, uint64_t len) override {
    if (!in_range(off, len, len_)) return range_error("zero", off, len, len_).wrap(path_);
    if (len == 0) return Status::Ok();
    if (pmem_) {
      pmem_memset_persist(addr_ + off, 0, len);
      return Status::Ok();
    }
    if (punch_supported_) {
      // Punching a hole zeroes the range in the page cache (the mapping sees the
      // zeros at once: the kernel drops the cached pages and their PTEs). The
      // range is then allocated again: a WRITE through the mapping into a hole
      // would need new space, and on a full file system that is a SIGBUS in
      // the brick; allocating here turns it into ENOSPC for the ALLOC that asked.
      // The extent changes are metadata, durable only after an fsync; the
      // store's protocols rely on zero() being durable on return. The fsync is
      // of this range only (msync: vfs_fsync_range, which still commits the
      // inode's metadata and flushes the disk's cache): an fdatasync of the
      // whole file would first write back every dirty page of the store,
      // stalling the brick's loop for as long as that takes.
      if (::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      static_cast<off_t>(off), static_cast<off_t>(len)) == 0) {
        if (::fallocate(fd_.get(), 0, static_cast<off_t>(off), static_cast<off_t>(len)) != 0) {
          return errno_error("allocate " + path_ + " [" + format_hex(off) + ", +" + format_hex(len) + ")");
        }
        // A failure also consumes the error report of lost WRITE data on the
        // mapping's file description: persist() notes it, or a later sync
        // point could succeed over that loss.
        return persist(off, len);
      }
      if (errno != EOPNOTSUPP && errno != ENOSYS && errno != ENODEV) {
        return errno_error("punch hole in " + path_ + " [" + format_hex(off) + ", +" +
                           format_hex(len) + ")");
      }
      PBRICK_LOG_NOTICE("%s: file system cannot punch holes; zeroing with writes instead",
                        path_.c_str());
      punch_supported_ = false;
    }
    std::memset(addr_ + off, 0, len);
    return persist(off, len);
  }

  Status reserve(uint64_t off, uint64_t len) override {
    if (!in_range(off, len, len_)) return range_error("reserve", off, len, len_).wrap(path_);
    if (pmem_ || len == 0) return Status::Ok();
    if (::fallocate(fd_.get(), 0, static_cast<off_t>(off), static_cast<off_t>(len)) != 0 && errno != EOPNOTSUPP) {
      return errno_error("allocate " + path_ + " [" + format_hex(off) + ", +" + format_hex(len) + ")");
    }
    return Status::Ok();
  }

  int sync_fd() const override { return pmem_ ? -1 : fd_.get(); }
  void prep_second_sync(io_uring_sqe* sqe) override {
    io_uring_prep_fsync(sqe, second_fd_.get(), IORING_FSYNC_DATASYNC);
  }
  bool nothing_to_write_back() const override { return memory_fs_; }

 private:
  std::string path_;
  uint8_t* addr_;
  uint64_t len_;
  bool pmem_;
  bool memory_fs_;  // tmpfs, hugetlbfs, ramfs: fdatasync has nothing to do
  PersistenceDomain domain_;
  UniqueFd fd_;  // O_RDWR, for hole punching and the server's fdatasync; -1 on pmem
  UniqueFd second_fd_;  // its own open file description, for prep_second_sync(); -1 on pmem
  bool punch_supported_ = true;
};

// Anonymous memory, 2 MiB aligned like a real mapping so slot alignment matches.
class MemoryRegion final : public PmemRegion {
 public:
  MemoryRegion(uint8_t* mapping, uint64_t mapping_len, uint8_t* addr, uint64_t len)
      : mapping_(mapping), mapping_len_(mapping_len), addr_(addr), len_(len) {}
  ~MemoryRegion() override { ::munmap(mapping_, mapping_len_); }

  MemoryRegion(const MemoryRegion&) = delete;
  MemoryRegion& operator=(const MemoryRegion&) = delete;

  uint8_t* base() override { return addr_; }
  uint64_t size() const override { return len_; }
  bool is_pmem() const override { return false; }

  void copy_nodrain(uint64_t off, const void* src, size_t len) override {
    if (!in_range(off, len, len_)) std::abort();
    std::memcpy(addr_ + off, src, len);
  }
  void drain() override {}

  Status persist(uint64_t off, uint64_t len) override {
    if (!in_range(off, len, len_)) return range_error("persist", off, len, len_);
    return Status::Ok();  // memory is as durable as it gets
  }

  Status store_word_persist(uint64_t off, uint64_t value) override {
    if (off % 8 != 0 || !in_range(off, 8, len_)) {
      return range_error("store_word_persist", off, 8, len_);
    }
    store_word(addr_ + off, value);
    return Status::Ok();
  }

  Status zero(uint64_t off, uint64_t len) override {
    if (!in_range(off, len, len_)) return range_error("zero", off, len, len_);
    // Whole pages go back to the kernel (a private anonymous page reads as zeros
    // after MADV_DONTNEED), so tests can allocate and free big "stores" cheaply;
    // partial pages at the edges are cleared by hand.
    const uint64_t page = page_size();
    uint64_t first = (off + page - 1) & ~(page - 1);
    uint64_t last = (off + len) & ~(page - 1);
    if (first < last && ::madvise(addr_ + first, last - first, MADV_DONTNEED) == 0) {
      std::memset(addr_ + off, 0, first - off);
      std::memset(addr_ + last, 0, off + len - last);
    } else {
      std::memset(addr_ + off, 0, len);
    }
    return Status::Ok();
  }

  int sync_fd() const override { return -1; }

 private:
  uint8_t* mapping_;
  uint64_t mapping_len_;
  uint8_t* addr_;
  uint64_t len_;
};

// Whether `path` can be mapped with MAP_SYNC, i.e. lives on a file system
// mounted with DAX whose page faults make the file's metadata durable: the
// only way a regular file counts as persistent memory for libpmem, short of
// PMEM_IS_PMEM_FORCE.
bool supports_map_sync(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return false;
  void* p = ::mmap(nullptr, page_size(), PROT_READ, MAP_SHARED_VALIDATE | MAP_SYNC, fd.get(), 0);
  if (p == MAP_FAILED) return false;
  ::munmap(p, page_size());
  return true;
}

// libpmem's message for a failure with errno `errnum`, less the
// ": strerror(errnum)" libpmem ends it with: Error::message() adds that once.
std::string pmem_error(int errnum) {
  const char* msg = pmem_errormsg();
  std::string text = msg != nullptr ? msg : "";
  const std::string tail = std::string(": ") + std::strerror(errnum);
  if (text.size() >= tail.size() && text.compare(text.size() - tail.size(), tail.size(), tail) == 0) {
    text.resize(text.size() - tail.size());
  }
  return text;
}

}  // namespace

Result<std::unique_ptr<PmemRegion>> open_pmem_region(const RegionOptions& options) {
  const std::string& path = options.path;
  if (path.empty()) return Error(EINVAL, "store path is empty");

  struct stat st {};
  bool exists = true;
  bool create = false;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) return errno_error("stat " + path);
    if (!options.create) return Error(ENOENT, "store " + path + " does not exist");
    exists = false;
    create = true;
  } else if (S_ISREG(st.st_mode)) {
    // An empty file (e.g. made by `touch` or a provisioning tool) is as good as
    // a missing one: it holds no data a resize could destroy.
    if (st.st_size == 0) {
      if (!options.create) {
        return Error(EINVAL, "store " + path + " is an empty file (and creation is disabled)");
      }
      create = true;
    } else if (options.size != 0 && static_cast<uint64_t>(st.st_size) != options.size) {
      return Error(EINVAL, "store " + path + " is " + std::to_string(st.st_size) +
                               " bytes but --size says " + std::to_string(options.size) +
                               " (refusing to resize; use the original size)");
    }
  } else if (S_ISBLK(st.st_mode)) {
    return Error(EINVAL, "store " + path + " is a block device: a store is a devdax character device or a "
                             "file (for a disk or SSD, a file on a file system made on it)");
  } else if (!S_ISCHR(st.st_mode)) {
    return Error(EINVAL,
                 "store " + path + " is neither a regular file nor a devdax character device");
  }

  if (create) {
    if (options.size == 0) {
      return Error(EINVAL, "store " + path + (exists ? " is empty" : " does not exist") +
                               ": --size is required to create a new store");
    }
    // The size need not be a multiple of 2 MiB (the tail that does not fill a
    // whole slot is simply unused), but it must hold at least one slot.
    if (options.size < kMinStoreSize) {
      return Error(EINVAL, "cannot create store " + path + " of " + format_size(options.size) +
                               ": the minimum is " + format_size(kMinStoreSize) +
                               " (superblock, map and one 2 MiB slot)");
    }
  }

  size_t mapped_len = 0;
  int is_pmem_hint = 0;
  void* addr = nullptr;
  if (create) {
    // EXCL for a path that did not exist, so a file created concurrently by
    // someone else is never silently resized; an existing empty file is grown.
    // libpmem allocates the whole file (posix_fallocate), so a full file system
    // fails here rather than with SIGBUS on first write.
    int flags = PMEM_FILE_CREATE | (exists ? 0 : PMEM_FILE_EXCL);
    addr = pmem_map_file(path.c_str(), options.size, flags, 0600, &mapped_len, &is_pmem_hint);
  } else {
    // len 0, no flags: map the whole existing file or device as it is.
    addr = pmem_map_file(path.c_str(), 0, 0, 0, &mapped_len, &is_pmem_hint);
  }
  if (addr == nullptr) {
    int err = errno != 0 ? errno : EIO;
    std::string detail = pmem_error(err);
    return Error(err, "map store " + path + (detail.empty() ? "" : ": " + detail));
  }
  auto* base = static_cast<uint8_t*>(addr);

  if (exists && S_ISCHR(st.st_mode) && options.size != 0 && mapped_len != options.size) {
    pmem_unmap(addr, mapped_len);
    return Error(EINVAL, "device " + path + " is " + std::to_string(mapped_len) +
                             " bytes but --size says " + std::to_string(options.size) +
                             " (a device is always used whole; omit --size)");
  }

  // pmem_is_pmem() is the authority (it also honours PMEM_IS_PMEM_FORCE); the
  // hint from pmem_map_file() is the same verdict for the mapping it made.
  bool pmem = pmem_is_pmem(addr, mapped_len) != 0;

  UniqueFd fd, second_fd;
  if (!pmem) {
    fd.reset(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (fd.valid()) second_fd.reset(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd.valid() || !second_fd.valid()) {
      Error err = errno_error("open " + path);
      pmem_unmap(addr, mapped_len);
      return err;
    }
  }
  // Say which kind of persistent memory: a file's durability also rests on
  // MAP_SYNC (its metadata), which only a DAX mount gives.
  const bool device = exists && S_ISCHR(st.st_mode);
  const bool memory_fs = !pmem && on_memory_fs(fd.get());
  const char* kind = memory_fs ? "page cache of a memory file system (nothing to write back: no fdatasync)"
                               : "page cache (msync)";
  PersistenceDomain domain = PersistenceDomain::kUnknown;
  if (pmem && device) {
    kind = "persistent memory, device-dax (cache flush + drain)";
    domain = region_persistence_domain("/sys", true, st.st_rdev);
  } else if (pmem && supports_map_sync(path)) {
    kind = "persistent memory, DAX file mapped with MAP_SYNC (cache flush + drain)";
    struct stat file_st {};
    if (::stat(path.c_str(), &file_st) == 0) domain = region_persistence_domain("/sys", false, file_st.st_dev);
  } else if (pmem) {
    kind = "persistent memory as PMEM_IS_PMEM_FORCE says (cache flush + drain)";
    PBRICK_LOG_WARN("store %s cannot be mapped with MAP_SYNC (not on a DAX mount): treated as persistent "
                    "memory only because PMEM_IS_PMEM_FORCE says so, it does not survive a power loss",
                    path.c_str());
  }
  PBRICK_LOG_INFO("mapped store %s: %s, %s%s%s%s", path.c_str(), format_size(mapped_len).c_str(), kind,
                  pmem ? ", persistence domain " : "", pmem ? persistence_domain_name(domain) : "",
                  create ? ", created" : "");
  return std::unique_ptr<PmemRegion>(
      new LibpmemRegion(path, base, mapped_len, pmem, std::move(fd), std::move(second_fd), memory_fs, domain));
}

const char* persistence_domain_name(PersistenceDomain domain) {
  switch (domain) {
    case PersistenceDomain::kCpuCache:
      return "cpu_cache";
    case PersistenceDomain::kMemoryController:
      return "memory_controller";
    case PersistenceDomain::kUnknown:
      break;
  }
  return "unknown";
}

PersistenceDomain region_persistence_domain(const std::string& sysfs, bool char_device, dev_t dev) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path root = fs::weakly_canonical(sysfs, ec);
  if (ec) return PersistenceDomain::kUnknown;
  fs::path link = fs::path(sysfs) / "dev" / (char_device ? "char" : "block") /
                  (std::to_string(major(dev)) + ":" + std::to_string(minor(dev)));
  fs::path dir = fs::canonical(link, ec);
  if (ec) return PersistenceDomain::kUnknown;
  // Up from the device to the region, never above the sysfs root.
  for (; dir.has_relative_path() && dir != root && dir != dir.parent_path(); dir = dir.parent_path()) {
    std::ifstream attr(dir / "persistence_domain");
    if (!attr.is_open()) continue;
    std::string word;
    attr >> word;  // "cpu_cache\n", "memory_controller\n" or "\n"
    if (word == "cpu_cache") return PersistenceDomain::kCpuCache;
    if (word == "memory_controller") return PersistenceDomain::kMemoryController;
    return PersistenceDomain::kUnknown;
  }
  return PersistenceDomain::kUnknown;
}

bool on_memory_fs(int fd) {
  struct statfs sfs {};
  if (::fstatfs(fd, &sfs) != 0) return false;  // unknown: keep the fdatasync
  switch (static_cast<unsigned long>(sfs.f_type)) {
    case TMPFS_MAGIC:
    case HUGETLBFS_MAGIC:
    case RAMFS_MAGIC:
      return true;
    default:
      return false;
  }
}

Result<UniqueFd> lock_store(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return errno_error(path + ": open");
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return Error(EBUSY, path + " is in use by another process (another pbrick-target serving this store?)");
    }
    return errno_error(path + ": flock");
  }
  return fd;
}

std::unique_ptr<PmemRegion> make_memory_region(uint64_t size) {
  // Over-allocate by one block and trim, so the region starts 2 MiB aligned.
  uint64_t mapping_len = size + kBlockSize;
  void* p = ::mmap(nullptr, mapping_len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  auto* mapping = static_cast<uint8_t*>(p);
  uint64_t addr = (reinterpret_cast<uint64_t>(mapping) + kBlockSize - 1) & ~(kBlockSize - 1);
  return std::make_unique<MemoryRegion>(mapping, mapping_len, reinterpret_cast<uint8_t*>(addr),
                                        size);
}

}  // namespace pbrick
