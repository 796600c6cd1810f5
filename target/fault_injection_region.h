// A PmemRegion that fails or holds the store's persistence steps on command,
// in the style of LevelDB's fault_injection_test: everything else goes to an
// inner region (usually make_memory_region), and the brick's persistence code
// runs unchanged above it. For tests only.
//
// What it models: a disk whose write-back failed (EIO from fdatasync or
// msync), a zeroing that could not be made durable, and a slow fdatasync
// whose completion the test decides. Each asynchronous fdatasync is an
// io_uring read of a pipe of its own that the region (or release_sync())
// writes one byte to, so a held sync stays in flight in the server's ring
// like a real one, and held syncs complete in the order they are released.
//
// With `track_durable`, it also keeps the image a power cut would leave: the
// bytes each persistence step made durable, and nothing else - on pmem, what
// persist(), store_word_persist(), zero() wrote and what drain() completed of
// the copy_nodrain()s before it; on a file, those and, for each fdatasync
// that succeeds, the whole region as it was when that fdatasync started.
// Stores made by other means (through base()) reach it only through those.
//
// Threading: the PmemRegion methods are called by the brick's event loop
// thread; the control methods (fail, hold_syncs, release_sync, the counters)
// may be called from any thread at the same time.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "common/unique_fd.h"
#include "target/pmem_region.h"

namespace pbrick {

class FaultInjectionRegion final : public PmemRegion {
 public:
  enum class Op { kSync, kPersist, kZero, kStoreWord, kReserve };

  // `pmem`: claim to be persistent memory (no fdatasync; persist() is the
  // persistence step) instead of a page-cache file.
  FaultInjectionRegion(std::unique_ptr<PmemRegion> inner, bool pmem, bool track_durable = false);
  ~FaultInjectionRegion() override;

  // Every later `op` fails with `errnum` without reaching the inner region
  // (0: succeeds again). A failed sync is what the next sync_done() reports.
  void fail(Op op, int errnum);
  // While held, a sync started by the brick stays in flight until
  // release_sync(); otherwise it completes at once.
  void hold_syncs(bool hold);
  // Completes the oldest sync not yet released with `errnum` (0: success).
  void release_sync(int errnum);

  uint64_t syncs_started() const;
  uint64_t syncs_completed() const;
  // Every persist() range asked for, in order.
  std::vector<std::pair<uint64_t, uint64_t>> persisted_ranges() const;
  // With track_durable: what the medium would hold after a power cut now.
  std::vector<uint8_t> durable_image() const;

  uint8_t* base() override { return inner_->base(); }
  uint64_t size() const override { return inner_->size(); }
  bool is_pmem() const override { return pmem_; }
  PersistenceDomain persistence_domain() const override { return inner_->persistence_domain(); }
  void copy_nodrain(uint64_t off, const void* src, size_t len) override;
  void drain() override;
  Status persist(uint64_t off, uint64_t len) override;
  Status store_word_persist(uint64_t off, uint64_t value) override;
  Status zero(uint64_t off, uint64_t len) override;
  Status reserve(uint64_t off, uint64_t len) override;
  int sync_fd() const override { return pmem_ ? -1 : placeholder_.get(); }
  void prep_sync(io_uring_sqe* sqe) override;
  Status sync_done(int cqe_res) override;

 private:
  struct Sync {
    UniqueFd read_end, write_end;  // the ring holds its own reference to read_end
    int outcome = 0;
    bool released = false;
    std::vector<uint8_t> snapshot;  // track_durable: the region when it started
    // track_durable: ranges made durable since it started (newer than the snapshot)
    std::vector<std::pair<uint64_t, uint64_t>> newer;
  };
  // track_durable: [off, off + len) of the live region is durable now.
  void make_durable(uint64_t off, uint64_t len);  // caller holds mu_
  void complete_drain();                         // caller holds mu_
  int injected(Op op) const;  // the errno armed for `op`, or 0; caller holds mu_
  static void release(Sync& sync, int errnum);

  std::unique_ptr<PmemRegion> inner_;
  const bool pmem_;
  UniqueFd placeholder_;  // what sync_fd() shows; the syncs use pipes of their own
  // Where every sync's pipe read lands (contents unused). One buffer for all,
  // so a completion that comes out of order never writes into freed memory.
  uint8_t sink_ = 0;

  mutable std::mutex mu_;
  int fail_[5] = {};
  bool hold_ = false;
  std::deque<std::unique_ptr<Sync>> syncs_;  // started and not completed, oldest first
  uint64_t started_ = 0, completed_ = 0;
  std::vector<std::pair<uint64_t, uint64_t>> persisted_;
  const bool track_durable_;
  std::vector<uint8_t> durable_;
  std::vector<std::pair<uint64_t, uint64_t>> undrained_;  // pmem: copy_nodrain()s since the last drain
};

}  // namespace pbrick
