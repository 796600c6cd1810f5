// Layout mirror: which copies of a block a request uses. The volume I/O core
// (volume_io.h) asks this file for the pieces of each block a request
// touches; everything else (mapping, sending, retrying, syncing) is the same
// for every layout because a piece names a *unit* (one copy of one block,
// Placement in common/layout.h) and its brick.
//
//  - A WRITE (and the zero-fill WRITE of a discard) becomes one piece per
//    copy: the request completes when every in-sync one has. A piece for a
//    stale copy is not sent; its block's dirty bit is durable in the in-sync
//    bricks' labels before the request completes (skip_stale_copy).
//  - A copy whose brick fails past the leg timeout is marked stale, durably,
//    before the write that missed it completes (leg_failed); the request
//    completes on the other copies with no error.
//  - A READ becomes one piece, on one in-sync copy; successive reads of a
//    block take turns over its copies (spread over the bricks). A read that
//    finds its brick unreachable moves to another in-sync copy at once, and
//    the brick is left out of the turns (set_reachable) until a connection
//    to it succeeds again: reads never pay a dead copy's timeouts over and
//    over while nothing writes (a write would mark it stale). A read answered
//    EIO (the brick could not make its writes durable) gives that copy up
//    whole (Volume::sync_failed), as a FLUSH's failed sync does, and moves.
//  - After a read-write attachment ended without detaching cleanly (killed,
//    its host gone: Volume::close never ran), the copies of a block written
//    then may differ: a write reached one copy and not the other. Every
//    block a copy of which is allocated is then *unsettled* until the resync
//    thread has copied it from its first in-sync copy (its *source*) to the
//    others; meanwhile reads of it go to the source alone, so two reads never
//    return different contents (md's resync after an unclean shutdown). A
//    source unreachable for the leg timeout is given up (read_elsewhere);
//    one given up while the repair copies from it leaves the block unsettled
//    until a later pass has recorded its miss and copied the new source.
//  - FLUSH/FUA need nothing here: the channels of every brick that carried a
//    write since its last sync are synced (VolumeChannels::sync).
//  - A stale brick that is back is resynced (gateway/resync.h): while its
//    dirty blocks are copied it is *resyncing*: writes reach it like an
//    in-sync copy, reads never do. A copy must not overwrite a write that
//    landed meanwhile, so every write counts itself on its block from its
//    first round until it completed (begin_writes / end_writes); the copy of
//    a block starts only with no write counted on it and is done again when
//    one started meanwhile (MirrorState::write_seq).
//
// MirrorState is the volume's record of which bricks hold in-sync copies.
// Thread-safe: states and counters are atomics read on every request.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "common/layout.h"
#include "common/result.h"

namespace pbrick {

struct IoPiece;
class Volume;

enum class CopyState : uint8_t {
  kInSync = 0,  // every block's copy on the brick is current
  kStale = 1,   // the brick missed writes (recorded in the labels); never read
  kResyncing = 2,  // still stale in the labels; its dirty blocks are being copied; written, never read
};
const char* copy_state_name(CopyState s);

class MirrorState {
 public:
  // Write counters (see write_begin): blocks share them modulo this.
  static constexpr size_t kWriteSlots = 4096;

  MirrorState(uint32_t bricks, uint64_t blocks);

  uint32_t bricks() const { return bricks_; }
  CopyState state(uint32_t brick) const { return states_[brick].load(std::memory_order_acquire); }
  bool in_sync(uint32_t brick) const { return state(brick) == CopyState::kInSync; }
  // Only once the labels of the in-sync bricks record it (Volume::mark_stale).
  void set_state(uint32_t brick, CopyState s) { states_[brick].store(s, std::memory_order_release); }
  // Whether marking `brick` stale leaves every block an in-sync copy (no C
  // cyclically consecutive bricks all stale).
  bool may_lose(const Placement& placement, uint32_t brick) const { return covered_without(placement, brick, false); }
  // The same, counting only reachable in-sync bricks: whether I/O can go on
  // without `brick` now. A connection to a brick that cannot be spared waits
  // for its replies up to the I/O timeout, not the leg timeout.
  bool may_spare(const Placement& placement, uint32_t brick) const { return covered_without(placement, brick, true); }

  // Whether the last connection attempt to `brick` (or the last I/O on it)
  // failed for a lost connection: reads take the other in-sync copies while
  // there is one (see above). Set by the I/O core and Volume::note_connect;
  // a brick left out is tried again by the resync thread (gateway/resync.h)
  // every second.
  bool reachable(uint32_t brick) const { return unreachable_since_[brick].load(std::memory_order_acquire) == 0; }
  // True when that changed it.
  bool set_reachable(uint32_t brick, bool reachable);
  // Unreachable (as above) since at least `d` ago: I/O that would wait for
  // it (a mapping, the leg timeout of a write) has waited long enough.
  bool unreachable_for(uint32_t brick, std::chrono::milliseconds d) const;

  // The copy of `block` a read uses: the next in-sync and reachable one in
  // turn, else the next in-sync one (unreachable; the read waits for it).
  // An unsettled block's source, reachable or not.
  uint32_t read_copy(const Placement& placement, uint64_t block) const;
  // The copy a read of unit `unit` moves to when its brick failed: the next
  // in-sync copy of the block after it, reachable ones first; none: nullopt.
  // For an unsettled block only its source, once the copy `unit` was given
  // up; else none: the read waits for its source (another copy may hold
  // other bytes; see read_elsewhere).
  std::optional<uint32_t> other_copy(const Placement& placement, uint64_t unit) const;

  // Unsettled blocks (see above): set at attach, cleared by the resync
  // thread once every copy holds the source's bytes. Any thread.
  void set_unsettled(uint64_t block);
  void settle(uint64_t block);
  bool unsettled(uint64_t block) const {
    return unsettled_count_.load(std::memory_order_acquire) != 0 &&
           (unsettled_[block / 64].load(std::memory_order_acquire) >> (block % 64) & 1) != 0;
  }
  uint64_t unsettled_count() const { return unsettled_count_.load(std::memory_order_acquire); }
  // The copy an unsettled block is read from and copied from: its first
  // in-sync copy in copy order (the first one at all when none is).
  uint32_t source_copy(const Placement& placement, uint64_t block) const;

  // Writes that may still land on some copy of `block`: counted from the
  // first round of a request until it completed or failed (a resync waits
  // until none is counted on the block it holds). Blocks share
  // counters (a hash of the block): a collision only makes a resync wait
  // or copy again. write_seq() changes with every begin.
  void write_begin(uint64_t block) {
    WriteSlot& s = slots_[block % kWriteSlots];
    s.in_flight.fetch_add(1, std::memory_order_seq_cst);
    s.seq.fetch_add(1, std::memory_order_seq_cst);
  }
  void write_end(uint64_t block) { slots_[block % kWriteSlots].in_flight.fetch_sub(1, std::memory_order_seq_cst); }
  uint64_t write_seq(uint64_t block) const { return slots_[block % kWriteSlots].seq.load(std::memory_order_seq_cst); }
  bool writes_in_flight(uint64_t block) const {
    return slots_[block % kWriteSlots].in_flight.load(std::memory_order_seq_cst) != 0;
  }

  // The block a resync copies now (resync.h): a request that would start
  // writing to it, or to any block sharing its write counter, waits until
  // it is released (a write counted there meanwhile would make the copy
  // start again, and a busy writer of such a block would keep it from
  // ever completing). One block at a time.
  void hold(uint64_t block) { held_.store(block + 1, std::memory_order_seq_cst); }
  void release() { held_.store(0, std::memory_order_seq_cst); }
  bool held(uint64_t block) const {
    const uint64_t h = held_.load(std::memory_order_seq_cst);
    return h != 0 && (h - 1) % kWriteSlots == block % kWriteSlots;
  }

  // Resync progress of a brick (gateway/resync.h): blocks copied of blocks to
  // copy, and when it started (unix seconds; 0: none running, and done and
  // total are those of the last resync that finished).
  struct Progress {
    uint64_t done = 0;
    uint64_t total = 0;
    uint64_t started = 0;
  };
  Progress progress(uint32_t brick) const;
  void set_progress(uint32_t brick, const Progress& p);

 private:
  bool covered_without(const Placement& placement, uint32_t brick, bool reachable_only) const;

  struct WriteSlot {
    std::atomic<uint32_t> in_flight{0};
    std::atomic<uint64_t> seq{0};
  };
  struct ProgressSlot {
    std::atomic<uint64_t> done{0}, total{0}, started{0};
  };
  uint32_t bricks_;
  std::unique_ptr<std::atomic<CopyState>[]> states_;
  // steady_clock nanoseconds since epoch when it became unreachable; 0: reachable.
  std::unique_ptr<std::atomic<int64_t>[]> unreachable_since_;
  std::unique_ptr<ProgressSlot[]> progress_;
  std::unique_ptr<WriteSlot[]> slots_;
  std::unique_ptr<std::atomic<uint64_t>[]> unsettled_;  // one bit per block
  std::atomic<uint64_t> unsettled_count_{0};
  mutable std::atomic<uint32_t> read_turn_{0};
  std::atomic<uint64_t> held_{0};  // block + 1; 0: none
};

// The writes of a request's pieces, on MirrorState's counters (see above):
// begin_writes at its every round (counts each piece once), end_writes once
// it completed or failed. Nothing for the other layouts.
// begin_writes is true when the request must wait instead (a resync holds
// a block it writes, and it has not started: nothing of it was sent or
// skipped); it is then not counted.
bool begin_writes(Volume& volume, std::span<IoPiece> pieces);
void end_writes(Volume& volume, std::span<IoPiece> pieces);

// Appends the pieces of `len` bytes at `in_block` of volume block `block`
// (through `buf`) for `request`: one per copy it goes to (see above); the
// one piece of the block for the other layouts.
// A piece of a mirrored volume whose brick failed (a lost connection past
// the leg timeout, or a mapping that could not be made): a write's copy is
// marked stale and the block dirty, durably, and the piece counts as done; a
// read moves to another in-sync copy. True when handled so; false when the
// piece must fail as in any layout (no other in-sync copy; not mirrored).
// Error: the labels could not record it (the write fails). `errnum`: the
// failure, when known (read_elsewhere).
Result<bool> leg_failed(Volume& volume, IoPiece& piece, int errnum = 0);

// The copy a read of unit `unit` moves to when its brick failed
// (MirrorState::other_copy). Read-write, for an unsettled block whose source
// brick has been unreachable for the leg timeout, or answered `errnum` EIO
// (its own failure, such as a promotion from its slow tier): the source is
// given up first (stale, as a write would make it; the repair then records
// its unsettled blocks dirty), so reads go on from the next copy instead of
// failing until some write gives it up. Blocks on control round trips then.
Result<std::optional<uint32_t>> read_elsewhere(Volume& volume, uint64_t unit, int errnum = 0);

// A WRITE piece for a copy that is stale: its block is marked dirty,
// durably, and the piece is done without being sent. False for any other
// piece (a resyncing copy is written).
Result<bool> skip_stale_copy(Volume& volume, IoPiece& piece);

void plan_block(const Volume& volume, bool is_write, uint64_t block, uint32_t in_block, uint32_t len, uint8_t* buf,
                void* request, std::vector<IoPiece>& pieces);

}  // namespace pbrick
