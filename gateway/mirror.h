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
//    block take turns over its copies (spread over the bricks).
//  - FLUSH/FUA need nothing here: the channels of every brick that carried a
//    write since its last sync are synced (VolumeChannels::sync).
//
// MirrorState is the volume's record of which bricks hold in-sync copies.
// Thread-safe: states are atomics read on every request.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/layout.h"
#include "common/result.h"

namespace pbrick {

struct IoPiece;
class Volume;

enum class CopyState : uint8_t {
  kInSync = 0,  // every block's copy on the brick is current
  kStale = 1,   // the brick missed writes (recorded in the labels); never read
};
const char* copy_state_name(CopyState s);

class MirrorState {
 public:
  explicit MirrorState(uint32_t bricks);

  uint32_t bricks() const { return bricks_; }
  CopyState state(uint32_t brick) const { return states_[brick].load(std::memory_order_acquire); }
  bool in_sync(uint32_t brick) const { return state(brick) == CopyState::kInSync; }
  // Only once the labels of the in-sync bricks record it (Volume::mark_stale).
  void set_state(uint32_t brick, CopyState s) { states_[brick].store(s, std::memory_order_release); }
  // Whether marking `brick` stale leaves every block an in-sync copy (no C
  // cyclically consecutive bricks all stale).
  bool may_lose(const Placement& placement, uint32_t brick) const;

  // The copy of `block` a read uses: the next in-sync one in turn.
  uint32_t read_copy(const Placement& placement, uint64_t block) const;

 private:
  uint32_t bricks_;
  std::unique_ptr<std::atomic<CopyState>[]> states_;
  mutable std::atomic<uint32_t> read_turn_{0};
};

// Appends the pieces of `len` bytes at `in_block` of volume block `block`
// (through `buf`) for `request`: one per copy it goes to (see above); the
// one piece of the block for the other layouts.
// A piece of a mirrored volume whose brick failed (a lost connection past
// the leg timeout, or a mapping that could not be made): a write's copy is
// marked stale and the block dirty, durably, and the piece counts as done; a
// read moves to another in-sync copy. True when handled so; false when the
// piece must fail as in any layout (no other in-sync copy; not mirrored).
// Error: the labels could not record it (the write fails).
Result<bool> leg_failed(Volume& volume, IoPiece& piece);

// A WRITE piece for a copy that is stale: its block is marked dirty,
// durably, and the piece is done without being sent. False for any other
// piece.
Result<bool> skip_stale_copy(Volume& volume, IoPiece& piece);

void plan_block(const Volume& volume, bool is_write, uint64_t block, uint32_t in_block, uint32_t len, uint8_t* buf,
                void* request, std::vector<IoPiece>& pieces);

}  // namespace pbrick
