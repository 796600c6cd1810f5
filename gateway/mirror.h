// Layout mirror: which copies of a block a request uses. The volume I/O core
// (volume_io.h) asks this file for the pieces of each block a request
// touches; everything else (mapping, sending, retrying, syncing) is the same
// for every layout because a piece names a *unit* (one copy of one block,
// Placement in common/layout.h) and its brick.
//
//  - A WRITE (and the zero-fill WRITE of a discard) becomes one piece per
//    in-sync copy: the request completes when every one has.
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

namespace pbrick {

struct IoPiece;
class Volume;

enum class CopyState : uint8_t {
  kInSync = 0,  // every block's copy on the brick is current
};
const char* copy_state_name(CopyState s);

class MirrorState {
 public:
  explicit MirrorState(uint32_t bricks);

  CopyState state(uint32_t brick) const { return states_[brick].load(std::memory_order_acquire); }
  bool in_sync(uint32_t brick) const { return state(brick) == CopyState::kInSync; }

  // The copy of `block` a read uses: the next in-sync one in turn.
  uint32_t read_copy(const Placement& placement, uint64_t block) const;

 private:
  std::unique_ptr<std::atomic<CopyState>[]> states_;
  mutable std::atomic<uint32_t> read_turn_{0};
};

// Appends the pieces of `len` bytes at `in_block` of volume block `block`
// (through `buf`) for `request`: one per copy it goes to (see above); the
// one piece of the block for the other layouts.
void plan_block(const Volume& volume, bool is_write, uint64_t block, uint32_t in_block, uint32_t len, uint8_t* buf,
                void* request, std::vector<IoPiece>& pieces);

}  // namespace pbrick
