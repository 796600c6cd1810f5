// The persistent medium under a brick, behind an interface so tests can inject
// crashes (see store_crash_test.cc): everything the store does to media goes
// through a PmemRegion.
//
// Thread-compatible: the brick's event loop thread is the only caller.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/result.h"
#include "common/unique_fd.h"

#include <sys/types.h>

struct io_uring_sqe;

namespace pbrick {

// Where a store reaching the CPU counts as durable, as the platform firmware
// tells the kernel for an NVDIMM region (sysfs `persistence_domain`):
//   kCpuCache: the CPU caches are flushed on power loss (eADR), so anything a
//     CPU or a NIC wrote into them - DDIO on or off, or soft-RoCE's memcpy - is
//     durable once it is there;
//   kMemoryController: only what reached the memory controller (ADR): a CPU
//     store needs a cache flush, a NIC's write needs DDIO off;
//   kUnknown: not an NVDIMM region, or the platform does not say.
enum class PersistenceDomain { kUnknown, kMemoryController, kCpuCache };
const char* persistence_domain_name(PersistenceDomain domain);

class PmemRegion {
 public:
  virtual ~PmemRegion() = default;

  // Start of the mapping. The brick places 2 MiB slots at 2 MiB offsets, so when
  // the mapping itself is 2 MiB aligned each block is one huge-page TLB entry.
  virtual uint8_t* base() = 0;
  virtual uint64_t size() const = 0;

  // True for real persistent memory (CPU cache flush + drain makes stores
  // durable); false for a page-cache-backed file (msync/fdatasync needed).
  virtual bool is_pmem() const = 0;

  // The platform's persistence domain for this region (kUnknown unless it is
  // persistent memory whose NVDIMM region sysfs describes).
  virtual PersistenceDomain persistence_domain() const { return PersistenceDomain::kUnknown; }

  // Copies `len` bytes to [off, off+len) with non-temporal stores where the
  // medium is pmem. Durable only after drain() (pmem) or persist() of the range.
  virtual void copy_nodrain(uint64_t off, const void* src, size_t len) = 0;

  // Waits for earlier copy_nodrain() stores to reach the persistence domain (pmem).
  // A no-op for files: they need persist().
  virtual void drain() = 0;

  // Makes [off, off+len) durable: cache flush + drain on pmem, msync on files.
  virtual Status persist(uint64_t off, uint64_t len) = 0;

  // Stores an 8-byte word at `off` (8-byte aligned) with a single store and makes
  // it durable: the failure-atomic primitive every map update is built on.
  virtual Status store_word_persist(uint64_t off, uint64_t value) = 0;

  // Makes [off, off+len) read as zeros, durably. On a file this punches a hole
  // and allocates the range again, so the file stays fully allocated and a
  // later store through the mapping cannot fail for lack of space; on pmem it
  // is memset + persist.
  virtual Status zero(uint64_t off, uint64_t len) = 0;

  // Makes sure a store through the mapping into [off, off+len) finds space:
  // on a file, allocates what a hole there lacks (a zero() whose allocation
  // failed for lack of space leaves one, and a store into a hole on a full
  // file system is SIGBUS); ENOSPC when the space is not there. Contents are
  // left as they are. Nothing to do on pmem.
  virtual Status reserve(uint64_t off, uint64_t len) {
    (void)off;
    (void)len;
    return Status::Ok();
  }

  // File descriptor for asynchronous fdatasync through io_uring, or -1 when the
  // medium is pmem (then drain() is all persistence needs).
  virtual int sync_fd() const = 0;

  // True when the file system under the store keeps nothing to write back -
  // tmpfs, hugetlbfs or ramfs, told by fstatfs at open - so fdatasync is a
  // no-op there (memory is the medium). A sync point then needs no fdatasync
  // (persistence_ledger.h). False for pmem (it drains) and for every other
  // file system, where a sync point always waits for an fdatasync.
  virtual bool nothing_to_write_back() const { return false; }

  // The asynchronous fdatasync, only when sync_fd() >= 0: prep_sync() fills
  // `sqe` (of the caller's ring) with an operation that makes durable every
  // store made through the mapping before the operation starts; sync_done()
  // takes its completion result and says whether it did. A test double
  // replaces both to hold or fail syncs (fault_injection_region.h).
  virtual void prep_sync(io_uring_sqe* sqe);
  virtual Status sync_done(int cqe_res);
  // The same operation for a second issuer (the tiering, on its own ring), on
  // its own open file description of the store where there is a file: Linux
  // reports a failed write-back to one fdatasync per file description, so
  // through a shared one the tiering's fdatasync could take the error that a
  // sync point's fdatasync then never sees. Its result goes to sync_done().
  virtual void prep_second_sync(io_uring_sqe* sqe) { prep_sync(sqe); }

  // Sticky: true once any step that should have made data of this region
  // durable failed (fdatasync, msync, the fdatasync of a zeroing). Linux marks
  // the pages of a failed writeback clean and reports the error once per file
  // description, so a later fdatasync succeeds although the data is not on
  // the medium: nothing stored before a failure can be trusted to be durable
  // again until the store is opened anew. Implementations pass the result of
  // each such step through note_persist().
  bool persist_failed() const { return persist_failed_; }

 protected:
  Status note_persist(Status st) {
    if (!st) persist_failed_ = true;
    return st;
  }

 private:
  bool persist_failed_ = false;
};

struct RegionOptions {
  std::string path;
  uint64_t size = 0;  // 0: use the existing file's or device's size
  bool create = true; // create the file when it does not exist
};

// Maps a devdax device, an fsdax file or any regular file with libpmem.
// A file on tmpfs, hugetlbfs or ramfs says nothing_to_write_back().
// A file that exists with a different size than `size` is refused (EINVAL) so a
// typo never truncates or grows a store; a new file is created at `size`.
Result<std::unique_ptr<PmemRegion>> open_pmem_region(const RegionOptions& options);

// Takes the exclusive lock (flock) that says a brick serves the store at
// `path` (a file or device), held as long as the returned descriptor is
// open. EBUSY when another process holds it.
Result<UniqueFd> lock_store(const std::string& path);

// A region in anonymous memory, for tests and fuzzers; is_pmem() is false.
std::unique_ptr<PmemRegion> make_memory_region(uint64_t size);

// The persistence domain of the NVDIMM region under device `dev` (a character
// device such as /dev/dax0.0 when `char_device`, else the block device a file
// lives on): /sys/dev/{char,block}/MAJ:MIN resolved, then its nearest
// ancestor with a `persistence_domain` attribute (the region). kUnknown when
// there is none (not an NVDIMM: a disk, device-mapper, tmpfs) or it is empty.
// `sysfs` is "/sys" except in tests.
PersistenceDomain region_persistence_domain(const std::string& sysfs, bool char_device, dev_t dev);

// Whether the file system of `fd` is one that keeps nothing to write back
// (tmpfs, hugetlbfs, ramfs); false when fstatfs fails.
bool on_memory_fs(int fd);

}  // namespace pbrick
