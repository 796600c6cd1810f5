#include "gateway/ublk_plan.h"

#include <algorithm>
#include <cstring>

namespace pbrick {

void plan_rw(bool is_write, uint64_t offset, uint64_t len, uint8_t* buf, void* request,
             std::vector<UblkPiece>& pieces) {
  for (uint64_t done = 0; done < len;) {
    uint64_t pos = offset + done;
    UblkPiece p;
    p.request = request;
    p.block = pos / proto::kBlockSize;
    p.in_block = static_cast<uint32_t>(pos % proto::kBlockSize);
    p.len = static_cast<uint32_t>(std::min<uint64_t>(len - done, proto::kBlockSize - p.in_block));
    p.buf = buf + done;
    p.is_write = is_write;
    pieces.push_back(p);
    done += p.len;
  }
}

Status plan_discard(Volume& volume, uint64_t offset, uint64_t len, uint8_t* zeros, void* request,
                    std::vector<UblkPiece>& pieces) {
  uint64_t size = volume.size();
  uint64_t end = offset + len;
  for (uint64_t pos = offset; pos < end;) {
    uint64_t block = pos / proto::kBlockSize;
    uint64_t block_start = block * proto::kBlockSize;
    uint64_t block_end = std::min(block_start + proto::kBlockSize, size);
    uint64_t piece_end = std::min(end, block_end);
    bool whole = pos == block_start && piece_end == block_end && block_end - block_start == proto::kBlockSize;
    if (volume.allocated(block)) {
      Status st = whole ? volume.discard_block(block) : Status(Error(EBUSY, "partial"));
      if (!st) {
        if (st.error().errnum() != EBUSY) return st;
        UblkPiece p;
        p.request = request;
        p.block = block;
        p.in_block = static_cast<uint32_t>(pos - block_start);
        p.len = static_cast<uint32_t>(piece_end - pos);
        p.buf = zeros;
        p.is_write = true;
        pieces.push_back(p);
      }
    }
    pos = piece_end;
  }
  return Status::Ok();
}

Result<size_t> queue_pieces(Volume& volume, std::span<UblkPiece> pieces, ChannelBacklog& backlog,
                            void (*done)(DataChannel::Op* op, int status)) {
  size_t queued = 0;
  for (UblkPiece& p : pieces) {
    if (p.status == 0) continue;
    if (!p.is_write && !volume.allocated(p.block)) {
      std::memset(p.buf, 0, p.len);  // never written: zeros, no round trip
      p.status = 0;
      continue;
    }
    auto h = volume.cached(p.block);
    if (!h) {
      auto mapped = volume.map_block(p.block, p.is_write);
      if (!mapped) {
        if (!p.is_write && mapped.error().errnum() == ENOENT) {
          std::memset(p.buf, 0, p.len);
          p.status = 0;
          continue;
        }
        return mapped.error();
      }
      h = *mapped;
    }
    p.op = DataChannel::Op{};
    p.op.opcode = p.is_write ? proto::Opcode::kWrite : proto::Opcode::kRead;
    p.op.rkey = h->rkey;
    p.op.remote_addr = h->remote_addr + p.in_block;
    p.op.length = p.len;
    p.op.buf = p.buf;
    p.op.ctx = &p;
    p.op.done = done;
    p.status = -1;
    if (queued < kMaxPiecesPerRound) {
      backlog.push(&p.op, false);
      queued++;
    }
  }
  return queued;
}

}  // namespace pbrick
