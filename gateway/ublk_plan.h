// The part of a ublk queue's request handling that needs no kernel, so tests
// can drive it against a real brick and a test channel: the pieces a request
// becomes and how they reach the queue's channel (ublk_queue.h has the rest).
//
// A READ or WRITE becomes one piece per 2 MiB block it touches. A DISCARD or
// WRITE_ZEROES frees whole blocks at the brick and becomes a zero-fill WRITE
// piece for each part it cannot free (partial blocks; blocks someone else
// maps, whose FREE the brick refuses with EBUSY) - one per block, so a large
// discard can become many pieces.
//
// Not thread-safe: the owning queue's thread only.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/result.h"
#include "gateway/data_channel.h"
#include "gateway/volume.h"

namespace pbrick {

struct UblkPiece {
  DataChannel::Op op;
  void* request = nullptr;  // the owner's request (the queue's tag)
  uint64_t block = 0;
  uint32_t in_block = 0;
  uint8_t* buf = nullptr;
  uint32_t len = 0;
  bool is_write = false;
  int status = -1;  // -1: to do; 0: done; > 0: errno of the last attempt
};

// Pieces a request sends per round; the rest wait for the next round.
inline constexpr size_t kMaxPiecesPerRound = 8;

// READ / WRITE of `len` bytes at `offset` of the volume through `buf`.
void plan_rw(bool is_write, uint64_t offset, uint64_t len, uint8_t* buf, void* request,
             std::vector<UblkPiece>& pieces);

// DISCARD / WRITE_ZEROES of `len` bytes at `offset`: frees each whole
// allocated block (Volume::discard_block: blocking control round trips) and
// appends a zero-fill WRITE piece from `zeros` (one block of zeros) for each
// allocated range it does not free. Error: a FREE that failed otherwise.
Status plan_discard(Volume& volume, uint64_t offset, uint64_t len, uint8_t* zeros, void* request,
                    std::vector<UblkPiece>& pieces);

// One round of a request: resolves the handle of each piece still to do
// (reads of unallocated blocks are zeros at once; a block not mapped yet is
// mapped now, blocking) and queues up to kMaxPiecesPerRound of them on
// `backlog`, which feeds the queue's channel as it has room; each completes
// through `done` (op.ctx is the piece). Pieces beyond that stay to do (-1)
// for the next round. Returns how many were queued (0: none needs the
// network), or the error of a failed mapping.
Result<size_t> queue_pieces(Volume& volume, std::span<UblkPiece> pieces, ChannelBacklog& backlog,
                            void (*done)(DataChannel::Op* op, int status));

}  // namespace pbrick
