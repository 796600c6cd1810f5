// The volume I/O core (volume_io.h) as the ublk queue uses it - pieces
// planned by plan_rw / plan_discard, sent kMaxPiecesPerRound per round - for
// a caller that feeds a single-brick volume's channel from one ChannelBacklog
// instead of VolumeChannels (the kernel-free tests of the queue's planning).
//
// Not thread-safe: the owning queue's thread only.
#pragma once

#include <linux/ublk_cmd.h>

#include <cstdint>
#include <span>

#include "common/result.h"
#include "gateway/data_channel.h"
#include "gateway/volume.h"
#include "gateway/volume_io.h"

namespace pbrick {

using UblkPiece = IoPiece;

// A request as the kernel describes it in the queue's descriptor array. The
// kernel writes op_flags as the op (bits 0..7) ORed with the UBLK_IO_F_*
// flags where their definitions put them (UBLK_IO_F_FUA is bit 13 of
// op_flags itself, not of op_flags >> 8).
struct UblkRequest {
  uint8_t op = 0;
  bool fua = false;       // durable before it completes
  bool no_unmap = false;  // WRITE_ZEROES that must leave the range allocated
  uint64_t offset = 0;    // bytes
  uint64_t len = 0;       // bytes
};

inline UblkRequest decode_request(const ublksrv_io_desc& d) {
  UblkRequest r;
  r.op = static_cast<uint8_t>(d.op_flags & 0xff);
  r.fua = (d.op_flags & UBLK_IO_F_FUA) != 0;
  r.no_unmap = (d.op_flags & UBLK_IO_F_NOUNMAP) != 0;
  r.offset = d.start_sector << 9;
  r.len = static_cast<uint64_t>(d.nr_sectors) << 9;
  return r;
}

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
