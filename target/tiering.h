// The brick's data mover between its fast store and its slow tier: background
// demotion of the least recently unmapped blocks below a low watermark of free
// fast slots (rate-limited), and promotion of a slow block when a client maps
// it (demoting a cold block first when no fast slot is free).
//
// Policy is deliberately simple (promotions first, LRU of unmapped blocks);
// the mechanism is Store::begin_move / commit_move, which keeps exactly one
// valid copy of every block at every instant. Moves run in batches, one per
// direction at a time (a promotion never waits behind a background
// demotion's sync): up to kMaxBatch copies in flight, then one sync of the
// destination that covers them all, then each block's flip - the copy of
// every flipped block is durable before its flip, as for a single move, and
// a batch of N costs one fdatasync instead of N.
//
// All I/O goes through an io_uring of its own with O_DIRECT on the slow tier's
// file, so the event loop never blocks on it: the loop polls event_fd() and
// calls on_event() when it is readable.
//
// Thread-compatible: the brick's event loop thread is the only caller.
#pragma once

#include <liburing.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "target/store.h"

namespace pbrick {

struct TieringOptions {
  // The slow tier's file or device (the one the store opened), reopened here
  // with O_DIRECT for slot I/O.
  std::string slow_path;
  // Free fast slots the background demotion keeps; 0: an eighth of the fast
  // tier, at least 1 and at most all but one slot.
  uint64_t low_watermark = 0;
  // Background demotion rate; promotions (and the demotions that make room
  // for them) are not limited.
  uint64_t demote_bytes_per_sec = 256ull << 20;
};

class Tiering {
 public:
  // `store` must have a slow tier and outlive the Tiering.
  static Result<std::unique_ptr<Tiering>> Create(Store& store, const TieringOptions& options);
  ~Tiering();

  Tiering(const Tiering&) = delete;
  Tiering& operator=(const Tiering&) = delete;

  // Readable (eventfd) when I/O completed: the loop then calls on_event().
  int event_fd() const { return event_fd_.get(); }
  void on_event();

  // Before a MAP of `vaddr`: kReady when MAP may proceed (the block is on the
  // fast tier, or does not exist: MAP reports that); kWait when a promotion
  // is queued or running (a move is then always in flight: the caller waits
  // for the wake callback its end brings, and asks again); kNoFastSlot when every fast slot is mapped, so nothing can make
  // room for it; kFailed when the promotion this MAP waited for failed (a
  // slow tier that cannot be read: logged), once: a MAP after it tries again;
  // kNoRoom when the fast tier is full and demotions are paused after one
  // failed (a slow tier that cannot be written or synced: logged).
  enum class MapReadiness { kReady, kWait, kNoFastSlot, kFailed, kNoRoom };
  MapReadiness prepare_map(uint64_t vaddr);

  // Called whenever a move finished (or a queued promotion was dropped): the
  // loop resumes the MAPs waiting in prepare_map().
  void set_wake(std::function<void()> wake) { wake_ = std::move(wake); }

  // Periodic step (the loop's tick): refills the demotion budget and starts a
  // background demotion when the fast tier is below its low watermark. When
  // blocks moved since the last tick, logs the totals at info level
  // ("tiering: N promotions, M demotions since start ..."): at most one line
  // a tick, so an operator (and tests/vm/powercut) sees the tiers at work.
  void tick();

  uint64_t low_watermark() const { return low_watermark_; }
  uint64_t promotions() const { return promotions_; }
  uint64_t demotions() const { return demotions_; }
  // Syncs made durable batches of moves (one per batch): promotions() +
  // demotions() over batches() is the batching's gain.
  uint64_t batches() const { return batches_; }
  bool busy() const { return up_.busy() || down_.busy(); }

  // Moves of one batch at most (copies in flight at once in each direction).
  static constexpr size_t kMaxBatch = 4;

 private:
  // The moves of one direction in flight: copying, then one sync, then flips.
  struct Batch {
    uint8_t to_tier = 0;
    std::vector<Store::Move> moves;
    std::vector<uint8_t> copied;  // per move: its copy completed in full
    size_t copies_pending = 0;
    std::chrono::steady_clock::time_point started;
    bool busy() const { return !moves.empty(); }
  };

  Tiering(Store& store, const TieringOptions& options);
  Status init();
  void start_next();
  void start_promotions();
  void start_demotions();
  // Adds the move of `vaddr` to `b` (not yet submitted); false when the store
  // refused it (logged).
  bool add_move(Batch& b, uint64_t vaddr);
  void submit_copies(Batch& b);
  void submit();
  void on_copied(Batch& b, size_t index, int res);
  void on_synced(Batch& b, int res);
  void finish(Batch& b, bool synced);
  // Drops queued promotions that are not moving (their MAPs then ask again
  // and get kNoFastSlot or proceed), waking the loop.
  void drop_waiting_promotions();
  uint64_t waiting_promotions() const;
  void refill();

  Store& store_;
  TieringOptions options_;
  uint64_t low_watermark_ = 1;
  io_uring ring_{};
  bool ring_ready_ = false;
  UniqueFd slow_fd_;
  UniqueFd event_fd_;
  std::function<void()> wake_;
  Batch up_{kTierFast, {}, {}, 0, {}};    // promotions
  Batch down_{kTierSlow, {}, {}, 0, {}};  // demotions
  // MAPs waiting for their block's promotion, oldest first; a block stays
  // here while its promotion runs.
  std::deque<uint64_t> promote_queue_;
  std::set<uint64_t> promote_set_;
  // Blocks whose promotion failed since the last tick: the MAP that waited
  // for it is answered kFailed (instead of queueing the same failing copy
  // again, for ever).
  std::set<uint64_t> failed_promotions_;
  // Fast slots a promotion could not give space (Tiering::add_move), kept
  // from the free list until the tick finds they can have it.
  std::vector<uint64_t> unspaced_fast_slots_;
  // Promoted since the last tick and maybe not mapped yet by the MAP that
  // asked: background demotion leaves the fast tier alone until the next tick
  // rather than send such a block straight back down.
  std::set<uint64_t> just_promoted_;
  // Promoted, and the MAP that asked has not asked again (prepare_map
  // answering kReady) since: not even a demotion that makes room for another
  // MAP takes such a block. Cleared at each tick too.
  std::set<uint64_t> promoted_for_map_;
  double budget_bytes_ = 0;
  std::chrono::steady_clock::time_point last_refill_;
  // After a demotion failed (a copy, the sync or the flip), none starts
  // before demotions_resume_at_: each failure in a row doubles the pause
  // (1 s to kMaxDemotionPause), a demotion that succeeds ends the series. A
  // slow tier that keeps failing would otherwise be written and synced in a
  // loop, a free slot withheld per failed write.
  std::chrono::steady_clock::time_point demotions_resume_at_{};
  std::chrono::milliseconds demotion_pause_{0};
  static constexpr std::chrono::milliseconds kMaxDemotionPause{64000};
  bool demotions_paused() const { return std::chrono::steady_clock::now() < demotions_resume_at_; }
  uint64_t promotions_ = 0, demotions_ = 0, batches_ = 0;
  bool unsubmitted_ = false;  // an io_uring_submit failed or took part: SQEs wait in the ring
  // Copies and syncs the kernel took and has not completed: the destructor
  // waits for them (a copy still reading into a fast slot after the brick
  // exits would land in a block a restarted brick gave out again).
  uint64_t in_kernel_ = 0;
  // A store in the page cache (sync_fd() >= 0): promotions read into these
  // (kMaxBatch blocks, aligned for O_DIRECT), then the mover copies them into
  // the store's mapping. A direct read into the mapping would dirty its pages
  // before the data arrives; a sync point's fdatasync in between writes the
  // half-copied pages back and cleans them, and the kernel dirties them again
  // only after it reported the read complete - the batch's fdatasync could
  // then find them clean and the flip go before the data is on disk. Empty
  // for pmem stores, whose persist() flushes the range itself.
  std::unique_ptr<uint8_t, void (*)(void*)> bounce_{nullptr, &std::free};
  uint64_t reported_moves_ = 0;  // promotions_ + demotions_ at the last summary line
};

}  // namespace pbrick
