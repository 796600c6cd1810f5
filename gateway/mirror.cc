#include "gateway/mirror.h"

#include <algorithm>
#include <cerrno>

#include "gateway/volume.h"
#include "gateway/volume_io.h"

namespace pbrick {

const char* copy_state_name(CopyState s) {
  switch (s) {
    case CopyState::kStale:
      return "stale";
    case CopyState::kResyncing:
      return "resyncing";
    case CopyState::kInSync:
      break;
  }
  return "in-sync";
}

MirrorState::MirrorState(uint32_t bricks, uint64_t blocks)
    : bricks_(bricks),
      states_(new std::atomic<CopyState>[bricks]),
      unreachable_since_(new std::atomic<int64_t>[bricks]),
      progress_(new ProgressSlot[bricks]),
      slots_(new WriteSlot[kWriteSlots]),
      unsettled_(new std::atomic<uint64_t>[(blocks + 63) / 64]) {
  for (uint32_t b = 0; b < bricks; b++) {
    states_[b].store(CopyState::kInSync, std::memory_order_relaxed);
    unreachable_since_[b].store(0, std::memory_order_relaxed);
  }
  for (uint64_t w = 0; w < (blocks + 63) / 64; w++) unsettled_[w].store(0, std::memory_order_relaxed);
}

void MirrorState::set_unsettled(uint64_t block) {
  const uint64_t bit = 1ull << (block % 64);
  if ((unsettled_[block / 64].fetch_or(bit, std::memory_order_acq_rel) & bit) == 0) {
    unsettled_count_.fetch_add(1, std::memory_order_acq_rel);
  }
}

void MirrorState::settle(uint64_t block) {
  const uint64_t bit = 1ull << (block % 64);
  if ((unsettled_[block / 64].fetch_and(~bit, std::memory_order_acq_rel) & bit) != 0) {
    unsettled_count_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

uint32_t MirrorState::source_copy(const Placement& placement, uint64_t block) const {
  for (uint32_t copy = 0; copy < placement.copies; copy++) {
    if (in_sync(placement.brick_of(placement.unit(block, copy)))) return copy;
  }
  return 0;
}

bool MirrorState::set_reachable(uint32_t brick, bool reachable) {
  int64_t since = unreachable_since_[brick].load(std::memory_order_acquire);
  if (reachable) return since != 0 && unreachable_since_[brick].exchange(0, std::memory_order_acq_rel) != 0;
  if (since != 0) return false;
  int64_t now = std::max<int64_t>(1, std::chrono::steady_clock::now().time_since_epoch().count());
  return unreachable_since_[brick].compare_exchange_strong(since, now, std::memory_order_acq_rel);
}

bool MirrorState::unreachable_for(uint32_t brick, std::chrono::milliseconds d) const {
  int64_t since = unreachable_since_[brick].load(std::memory_order_acquire);
  if (since == 0) return false;
  auto at = std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(since));
  return std::chrono::steady_clock::now() - at >= d;
}

MirrorState::Progress MirrorState::progress(uint32_t brick) const {
  const ProgressSlot& s = progress_[brick];
  return Progress{s.done.load(std::memory_order_relaxed), s.total.load(std::memory_order_relaxed),
                  s.started.load(std::memory_order_relaxed)};
}

void MirrorState::set_progress(uint32_t brick, const Progress& p) {
  ProgressSlot& s = progress_[brick];
  s.done.store(p.done, std::memory_order_relaxed);
  s.total.store(p.total, std::memory_order_relaxed);
  s.started.store(p.started, std::memory_order_relaxed);
}

bool begin_writes(Volume& volume, std::span<IoPiece> pieces) {
  MirrorState* mirror = volume.mirror();
  if (mirror == nullptr) return false;
  auto holds_one = [&] {
    for (const IoPiece& p : pieces) {
      if (p.is_write && mirror->held(volume.placement().block_of(p.block))) return true;
    }
    return false;
  };
  bool started = false;
  for (const IoPiece& p : pieces) started = started || p.counted;
  // Not counted while held: a count (and its write_seq step) would make the
  // resync copy the block again.
  if (!started && holds_one()) return true;
  bool starting = false;
  for (IoPiece& p : pieces) {
    if (!p.is_write || p.counted) continue;
    mirror->write_begin(volume.placement().block_of(p.block));
    p.counted = true;
    starting = true;
  }
  // Counted first, then the hold read (the resync holds, then reads the
  // counts): one of the two sees the other. A request under way is never
  // held back: the resync waits for it.
  if (!starting || !holds_one()) return false;
  end_writes(volume, pieces);
  return true;
}

void end_writes(Volume& volume, std::span<IoPiece> pieces) {
  MirrorState* mirror = volume.mirror();
  if (mirror == nullptr) return;
  for (IoPiece& p : pieces) {
    if (!p.counted) continue;
    mirror->write_end(volume.placement().block_of(p.block));
    p.counted = false;
  }
}

uint32_t MirrorState::read_copy(const Placement& placement, uint64_t block) const {
  if (unsettled(block)) return source_copy(placement, block);
  const uint32_t turn = read_turn_.fetch_add(1, std::memory_order_relaxed);
  std::optional<uint32_t> unreachable;
  for (uint32_t k = 0; k < placement.copies; k++) {
    const uint32_t copy = (turn + k) % placement.copies;
    const uint32_t brick = placement.brick_of(placement.unit(block, copy));
    if (!in_sync(brick)) continue;
    if (reachable(brick)) return copy;
    if (!unreachable) unreachable = copy;
  }
  // None in sync: the attach refuses that, so only in a race with a failure.
  return unreachable.value_or(turn % placement.copies);
}

std::optional<uint32_t> MirrorState::other_copy(const Placement& pl, uint64_t unit) const {
  const uint64_t block = pl.block_of(unit);
  if (unsettled(block)) {
    // Only to the source, once the copy read was given up and another is it.
    const uint32_t source = source_copy(pl, block);
    if (source != pl.copy_of(unit) && in_sync(pl.brick_of(pl.unit(block, source)))) return source;
    return std::nullopt;
  }
  std::optional<uint32_t> unreachable;
  for (uint32_t k = 1; k < pl.copies; k++) {
    const uint32_t copy = (pl.copy_of(unit) + k) % pl.copies;
    const uint32_t brick = pl.brick_of(pl.unit(block, copy));
    if (!in_sync(brick)) continue;
    if (reachable(brick)) return copy;
    if (!unreachable) unreachable = copy;
  }
  return unreachable;
}

bool MirrorState::covered_without(const Placement& pl, uint32_t brick, bool reachable_only) const {
  for (uint32_t first = 0; first < bricks_; first++) {
    bool any = false;
    for (uint32_t j = 0; j < pl.copies; j++) {
      uint32_t b = (first + j) % bricks_;
      if (b != brick && in_sync(b) && (!reachable_only || reachable(b))) any = true;
    }
    if (!any) return false;
  }
  return true;
}

Result<bool> skip_stale_copy(Volume& volume, IoPiece& p) {
  if (!p.is_write || volume.mirror() == nullptr || volume.mirror()->state(p.brick) != CopyState::kStale) return false;
  auto missed = volume.record_miss(volume.placement().block_of(p.block), p.brick);
  if (!missed || !*missed) return missed;  // an error, or the brick is resyncing now: send it
  p.status = 0;
  return true;
}

Result<std::optional<uint32_t>> read_elsewhere(Volume& volume, uint64_t unit, int errnum) {
  MirrorState& mirror = *volume.mirror();
  const Placement& pl = volume.placement();
  if (auto copy = mirror.other_copy(pl, unit)) return copy;
  const uint64_t block = pl.block_of(unit);
  const uint32_t brick = pl.brick_of(unit);
  if (!mirror.unsettled(block) || volume.options().read_only || !mirror.in_sync(brick) ||
      (errnum != EIO && !mirror.unreachable_for(brick, std::chrono::milliseconds(volume.options().leg_timeout_ms))) ||
      !mirror.may_lose(pl, brick)) {
    return std::optional<uint32_t>();
  }
  // The repair gives its unsettled blocks dirty bits once it is stale.
  Status st = volume.mark_stale(brick);
  if (!st) return st.error().errnum() == EIO ? Result<std::optional<uint32_t>>(std::nullopt) : st.error();
  return mirror.other_copy(pl, unit);
}

Result<bool> leg_failed(Volume& volume, IoPiece& p, int errnum) {
  MirrorState* mirror = volume.mirror();
  if (mirror == nullptr) return false;
  const Placement& pl = volume.placement();
  const uint64_t block = pl.block_of(p.block);
  if (!p.is_write) {
    auto copy = read_elsewhere(volume, p.block, errnum);
    if (!copy) return copy.error();
    if (!*copy) return false;
    p.block = pl.unit(block, **copy);
    p.brick = pl.brick_of(p.block);
    p.status = -1;
    return true;
  }
  if (mirror->state(p.brick) == CopyState::kResyncing) {
    // Stale again, before the miss is recorded; unless its resync finished
    // first: then it is an in-sync copy that missed the write (below).
    volume.abort_resync(p.brick, "a write to it failed");
  }
  if (mirror->in_sync(p.brick)) {
    if (!mirror->may_lose(pl, p.brick)) return false;
    Status st = volume.mark_stale(p.brick, block);
    // EIO: no other copy of some blocks can take the record either; the
    // piece waits for its brick like any other, until the I/O timeout.
    if (!st) return st.error().errnum() == EIO ? Result<bool>(false) : Result<bool>(st.error());
  }
  auto missed = volume.record_miss(block, p.brick);
  if (!missed) return missed.error();
  if (!*missed) return false;  // neither stale nor resyncing now (replaced): fail as any piece
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
