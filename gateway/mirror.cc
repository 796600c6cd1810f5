#include "gateway/mirror.h"

#include "gateway/volume.h"
#include "gateway/volume_io.h"

namespace pbrick {

const char* copy_state_name(CopyState s) {
  switch (s) {
    case CopyState::kInSync:
      break;
  }
  return "in-sync";
}

MirrorState::MirrorState(uint32_t bricks) : states_(new std::atomic<CopyState>[bricks]) {
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
    for (uint32_t copy = 0; copy < pl.copies; copy++) {
      if (mirror->in_sync(pl.brick_of(pl.unit(block, copy)))) add(copy);
    }
  }
}

}  // namespace pbrick
