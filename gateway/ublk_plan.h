// The volume I/O core (volume_io.h) as the ublk queue uses it - pieces
// planned by plan_rw / plan_discard, sent kMaxPiecesPerRound per round - for
// a caller that feeds a single-brick volume's channel from one ChannelBacklog
// instead of VolumeChannels (the kernel-free tests of the queue's planning).
//
// Not thread-safe: the owning queue's thread only.
#pragma once

#include <cstdint>
#include <span>

#include "common/result.h"
#include "gateway/data_channel.h"
#include "gateway/volume.h"
#include "gateway/volume_io.h"

namespace pbrick {

using UblkPiece = IoPiece;

// queue_round() for a loop whose channel to the volume's one brick is fed
// from `backlog` (a single-brick volume).
inline Result<size_t> queue_pieces(Volume& volume, std::span<UblkPiece> pieces, ChannelBacklog& backlog,
                                   void (*done)(DataChannel::Op* op, int status)) {
  struct BacklogSink final : PieceSink {
    ChannelBacklog& backlog;
    explicit BacklogSink(ChannelBacklog& b) : backlog(b) {}
    void push(uint32_t, DataChannel::Op* op) override { backlog.push(op, false); }
  } sink(backlog);
  return queue_round(volume, pieces, sink, done, kMaxPiecesPerRound);
}

}  // namespace pbrick
