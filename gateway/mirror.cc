#include "gateway/mirror.h"

#include "gateway/volume.h"
#include "gateway/volume_io.h"

namespace pbrick {

const char* copy_state_name(CopyState s) {
  switch (s) {
    case CopyState::kStale:
      return "stale";
    case CopyState::kInSync:
      break;
  }
  return "in-sync";
}

MirrorState::MirrorState(uint32_t bricks) : bricks_(bricks), states_(new std::atomic<CopyState>[bricks]) {
  for (uint32_t b = 0; b < bricks; b++) states_[b].store(CopyState::kInSync, std::memory_order_relaxed);
}

uint32_t MirrorState::read_copy(const Placement& placement, uint64_t block) const {
  uint32_t turn = read_turn_.fetch_add(1, std::memory_order_relaxed);
  for (uint32_t k = 0; k < placement.copies; k++) {
    uint32_t copy = (turn + k) % placement.copies;
    if (in_sync(placement.brick_of(placement.unit(block, copy)))) return copy;
  }
  return turn % placement.copies;  // none in sync: the attach refuses that, so only in a race with a failure
}

bool MirrorState::may_lose(const Placement& pl, uint32_t brick) const {
  for (uint32_t first = 0; first < bricks_; first++) {
    bool any = false;
    for (uint32_t j = 0; j < pl.copies; j++) {
      uint32_t b = (first + j) % bricks_;
      if (b != brick && in_sync(b)) any = true;
    }
    if (!any) return false;
  }
  return true;
}

Result<bool> skip_stale_copy(Volume& volume, IoPiece& p) {
  if (!p.is_write || volume.mirror() == nullptr || volume.mirror()->in_sync(p.brick)) return false;
  PBRICK_TRY(volume.mark_dirty(volume.placement().block_of(p.block)));
  p.status = 0;
  return true;
}

Result<bool> leg_failed(Volume& volume, IoPiece& p) {
  MirrorState* mirror = volume.mirror();
  if (mirror == nullptr) return false;
  const Placement& pl = volume.placement();
  const uint64_t block = pl.block_of(p.block);
  if (!p.is_write) {
    for (uint32_t k = 1; k < pl.copies; k++) {
      uint64_t unit = pl.unit(block, (pl.copy_of(p.block) + k) % pl.copies);
      if (mirror->in_sync(pl.brick_of(unit))) {
        p.block = unit;
        p.brick = pl.brick_of(unit);
        p.status = -1;
        return true;
      }
    }
    return false;
  }
  if (mirror->in_sync(p.brick)) {
    if (!mirror->may_lose(pl, p.brick)) return false;
    Status st = volume.mark_stale(p.brick);
    // EIO: no other copy of some blocks can take the record either; the
    // piece waits for its brick like any other, until the I/O timeout.
    if (!st) return st.error().errnum() == EIO ? Result<bool>(false) : Result<bool>(st.error());
  }
  PBRICK_TRY(volume.mark_dirty(block));
  p.status = 0;
  return true;
}

void plan_block(const Volume& volume, bool is_write, uint64_t block, uint32_t in_block, uint32_t len, uint8_t* buf,
                void* request, std::vector<IoPiece>& pieces) {
  const Placement& pl = volume.placement();
  auto add = [&](uint32_t copy) {
    IoPiece& p = pieces.emplace_back();
    p.request = request;
    p.block = pl.unit(block, copy);
    p.brick = pl.brick_of(p.block);
    p.in_block = in_block;
    p.len = len;
    p.buf = buf;
    p.is_write = is_write;
  };
  const MirrorState* mirror = volume.mirror();
  if (mirror == nullptr) {
    add(0);
  } else if (!is_write) {
    add(mirror->read_copy(pl, block));
  } else {
    for (uint32_t copy = 0; copy < pl.copies; copy++) add(copy);
  }
}

}  // namespace pbrick
