// The data mover (see tiering.h). A batch of moves in one direction:
//   copies (io_uring reads or writes of 2 MiB, O_DIRECT, between the fast
//   store's mapping and the slow file, all in flight at once) -> once every
//   copy completed, one sync of the destination (fdatasync, or a cache flush
//   on pmem) -> Store::commit_move of each block whose copy succeeded (the
//   flips). A flip never precedes the sync that covers its copy.
#include "target/tiering.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "common/log.h"
#include "common/units.h"
#include "common/uring.h"

namespace pbrick {
namespace {
constexpr uint64_t kUdCopy = 1;
constexpr uint64_t kUdSync = 2;
}  // namespace

Tiering::Tiering(Store& store, const TieringOptions& options) : store_(store), options_(options) {}

Tiering::~Tiering() {
  if (!ring_ready_) return;
  // Closing the ring does not stop what the kernel took: a read still
  // filling a fast slot lands after the store is unmapped and its lock
  // released, in the block a brick started next may have given out already.
  // Wait for it (the moves stay uncommitted: the store's next open finds the
  // old copies, as after a crash).
  while (in_kernel_ > 0) {
    io_uring_cqe* cqe = nullptr;
    __kernel_timespec timeout{30, 0};
    if (int err = io_uring_wait_cqe_timeout(&ring_, &cqe, &timeout); err < 0) {
      PBRICK_LOG_ERROR("tiering: %llu copies still under way at exit: %s",
                       static_cast<unsigned long long>(in_kernel_), std::strerror(-err));
      break;
    }
    io_uring_cqe_seen(&ring_, cqe);
    --in_kernel_;
  }
  io_uring_queue_exit(&ring_);
}

Result<std::unique_ptr<Tiering>> Tiering::Create(Store& store, const TieringOptions& options) {
  if (store.slow_tier() == nullptr) return Error(EINVAL, "tiering: the store has no slow tier");
  std::unique_ptr<Tiering> t(new Tiering(store, options));
  PBRICK_TRY(t->init());
  return t;
}

Status Tiering::init() {
  const std::string what = "slow tier " + options_.slow_path;
  int fd = ::open(options_.slow_path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return errno_error(what + ": open with O_DIRECT");
  slow_fd_ = UniqueFd(fd);
  int efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (efd < 0) return errno_error("tiering: eventfd");
  event_fd_ = UniqueFd(efd);
  if (int err = init_event_ring(16, &ring_); err < 0) return Error(-err, "tiering: io_uring_queue_init");
  ring_ready_ = true;
  if (int err = io_uring_register_eventfd(&ring_, event_fd_.get()); err < 0) {
    return Error(-err, "tiering: io_uring_register_eventfd");
  }
  if (store_.region().sync_fd() >= 0) {
    bounce_.reset(static_cast<uint8_t*>(std::aligned_alloc(4096, kMaxBatch * kBlockSize)));
    if (!bounce_) return Error(ENOMEM, "tiering: promotion buffers");
  }
  const StoreStats s = store_.stats();
  low_watermark_ = options_.low_watermark;
  if (low_watermark_ == 0) low_watermark_ = std::max<uint64_t>(1, s.fast_capacity_blocks / 8);
  if (s.fast_capacity_blocks > 1) low_watermark_ = std::min(low_watermark_, s.fast_capacity_blocks - 1);
  last_refill_ = std::chrono::steady_clock::now();
  budget_bytes_ = static_cast<double>(options_.demote_bytes_per_sec);
  PBRICK_LOG_INFO("tiering: %llu fast + %llu slow blocks, low watermark %llu free fast blocks, demotion up to %s/s",
                  static_cast<unsigned long long>(s.fast_capacity_blocks),
                  static_cast<unsigned long long>(s.slow_capacity_blocks),
                  static_cast<unsigned long long>(low_watermark_), format_size(options_.demote_bytes_per_sec).c_str());
  return Status::Ok();
}

Tiering::MapReadiness Tiering::prepare_map(uint64_t vaddr) {
  auto tier = store_.tier_of(vaddr);
  if (!tier) return MapReadiness::kReady;  // MAP reports ENOENT
  if (store_.moving(vaddr)) return MapReadiness::kWait;
  if (*tier == kTierFast) {
    promoted_for_map_.erase(vaddr);  // its MAP is served now: it may go down again
    return MapReadiness::kReady;
  }
  if (failed_promotions_.erase(vaddr) != 0) return MapReadiness::kFailed;
  if (promote_set_.count(vaddr) == 0) {
    // Quarantined: it will never move; MAP reports EUCLEAN, not a full tier.
    if (store_.quarantined(vaddr)) return MapReadiness::kReady;
    if (store_.stats().fast_free_blocks == 0 && !store_.demotion_candidate() && !busy()) {
      return MapReadiness::kNoFastSlot;
    }
    if (store_.stats().fast_free_blocks == 0 && demotions_paused()) return MapReadiness::kNoRoom;
    promote_queue_.push_back(vaddr);
    promote_set_.insert(vaddr);
  }
  start_next();
  // Still queued: a batch in flight ends with a wake (start_next drops the
  // queued promotions when nothing in flight could make room).
  if (promote_set_.count(vaddr) != 0) return MapReadiness::kWait;
  if (failed_promotions_.erase(vaddr) != 0) return MapReadiness::kFailed;
  tier = store_.tier_of(vaddr);
  return !tier || *tier == kTierFast ? MapReadiness::kReady : MapReadiness::kNoFastSlot;
}

void Tiering::refill() {
  auto now = std::chrono::steady_clock::now();
  double secs = std::chrono::duration<double>(now - last_refill_).count();
  last_refill_ = now;
  const double cap = static_cast<double>(std::max<uint64_t>(options_.demote_bytes_per_sec, kBlockSize));
  budget_bytes_ = std::min(cap, budget_bytes_ + secs * static_cast<double>(options_.demote_bytes_per_sec));
}

void Tiering::tick() {
  if (promotions_ + demotions_ != reported_moves_) {
    reported_moves_ = promotions_ + demotions_;
    const StoreStats s = store_.stats();
    PBRICK_LOG_INFO("tiering: %llu promotions, %llu demotions since start, in %llu batches (one sync each); "
                    "%llu of %llu fast blocks free, %llu of %llu slow blocks free",
                    static_cast<unsigned long long>(promotions_), static_cast<unsigned long long>(demotions_),
                    static_cast<unsigned long long>(batches_),
                    static_cast<unsigned long long>(s.fast_free_blocks),
                    static_cast<unsigned long long>(s.fast_capacity_blocks),
                    static_cast<unsigned long long>(s.slow_free_blocks),
                    static_cast<unsigned long long>(s.slow_capacity_blocks));
  }
  if (unsubmitted_) submit();
  just_promoted_.clear();
  promoted_for_map_.clear();  // a MAP that never came back (its connection died) holds nothing longer
  failed_promotions_.clear();  // the same: a later MAP tries again
  std::erase_if(unspaced_fast_slots_, [this](uint64_t offset) {
    if (!store_.region().reserve(offset, kBlockSize)) return false;
    store_.release_slot(kTierFast, offset);
    return true;
  });
  refill();
  start_next();
}

uint64_t Tiering::waiting_promotions() const {
  uint64_t n = 0;
  for (uint64_t vaddr : promote_queue_) n += store_.moving(vaddr) ? 0 : 1;
  return n;
}

void Tiering::drop_waiting_promotions() {
  bool dropped = false;
  for (auto it = promote_queue_.begin(); it != promote_queue_.end();) {
    if (store_.moving(*it)) {
      ++it;
      continue;
    }
    promote_set_.erase(*it);
    it = promote_queue_.erase(it);
    dropped = true;
  }
  if (dropped && wake_) wake_();
}

bool Tiering::add_move(Batch& b, uint64_t vaddr) {
  auto m = store_.begin_move(vaddr, b.to_tier);
  if (!m) {
    PBRICK_LOG_WARN("tiering: %s", m.error().message().c_str());
    return false;
  }
  // A promotion copies into the fast slot through the mapping: a slot left a
  // hole (a zeroing on a full file system) would take the brick down with
  // SIGBUS, at every start. Such a slot is kept aside until it can have its
  // space (tick) and the next free one tried; with none, the MAP is told the
  // promotion failed.
  for (int tries = 0; b.to_tier == kTierFast; tries++) {
    Status st = store_.region().reserve(m->to_offset, kBlockSize);
    if (st) break;
    PBRICK_LOG_ERROR("tiering: promotion of %s: %s (the slot is kept aside until it can have the space)",
                     format_hex(vaddr).c_str(), st.error().message().c_str());
    store_.abort_move(vaddr, /*withhold_destination=*/true);
    unspaced_fast_slots_.push_back(m->to_offset);
    if (tries == 2 || !(m = store_.begin_move(vaddr, b.to_tier))) {
      failed_promotions_.insert(vaddr);
      return false;
    }
  }
  b.moves.push_back(*m);
  b.copied.push_back(0);
  return true;
}

void Tiering::submit_copies(Batch& b) {
  if (b.moves.empty()) return;
  b.started = std::chrono::steady_clock::now();
  b.copies_pending = b.moves.size();
  PmemRegion& fast = store_.region();
  if (b.to_tier == kTierSlow) fast.drain();  // TCP WRITEs to pmem are non-temporal stores of this thread
  const uint64_t lane = b.to_tier == kTierFast ? 0 : 1;
  for (size_t i = 0; i < b.moves.size(); ++i) {
    const Store::Move& m = b.moves[i];
    // Two batches of kMaxBatch copies and a sync each: the ring never fills.
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (b.to_tier == kTierSlow) {
      io_uring_prep_write(sqe, slow_fd_.get(), fast.base() + m.from_offset, kBlockSize, m.to_offset);
    } else {
      uint8_t* into = bounce_ ? bounce_.get() + i * kBlockSize : fast.base() + m.to_offset;
      io_uring_prep_read(sqe, slow_fd_.get(), into, kBlockSize, m.from_offset);
    }
    io_uring_sqe_set_data64(sqe, kUdCopy << 16 | lane << 8 | i);
  }
  submit();
}

// The SQEs prepared stay in the ring when io_uring_enter fails (they are
// visible to the kernel already): never give up their moves, which would
// let a later submit copy into a reused slot. Submit them again at the tick.
void Tiering::submit() {
  if (int n = io_uring_submit(&ring_); n < 0) {
    if (!unsubmitted_) PBRICK_LOG_ERROR("tiering: io_uring_submit: %s (trying again)", std::strerror(-n));
    unsubmitted_ = true;
  } else {
    in_kernel_ += static_cast<uint64_t>(n);
    // The kernel may take fewer than were queued (it could not allocate
    // for the rest): those wait in the ring as after a failure.
    unsubmitted_ = io_uring_sq_ready(&ring_) > 0;
  }
}

void Tiering::start_promotions() {
  if (up_.busy()) return;
  for (auto it = promote_queue_.begin(); it != promote_queue_.end() && up_.moves.size() < kMaxBatch;) {
    const uint64_t vaddr = *it;
    auto tier = store_.tier_of(vaddr);
    if (!tier || *tier != kTierSlow || store_.moving(vaddr)) {
      // Freed, or already up: its MAP proceeds (a block moving down is
      // waited for: it is on no lane of ours to promote yet).
      if (tier && *tier == kTierSlow) {
        ++it;
        continue;
      }
      promote_set_.erase(vaddr);
      it = promote_queue_.erase(it);
      if (wake_) wake_();
      continue;
    }
    if (store_.stats().fast_free_blocks == 0) break;  // start_demotions makes room
    if (!add_move(up_, vaddr)) {
      promote_set_.erase(vaddr);
      it = promote_queue_.erase(it);
      if (wake_) wake_();
      continue;
    }
    ++it;
  }
  submit_copies(up_);
}

void Tiering::start_demotions() {
  if (down_.busy()) return;
  const StoreStats s = store_.stats();
  // Room for the promotions waiting (not limited), then the watermark
  // (rate-limited); never a block promoted since the last tick for the latter.
  const uint64_t waiting = waiting_promotions();
  uint64_t for_room = waiting > s.fast_free_blocks ? waiting - s.fast_free_blocks : 0;
  uint64_t background = s.fast_free_blocks + for_room < low_watermark_ ? low_watermark_ - s.fast_free_blocks - for_room : 0;
  while (!demotions_paused() && down_.moves.size() < kMaxBatch && (for_room > 0 || background > 0)) {
    if (store_.stats().slow_free_blocks == 0) break;
    auto victim = store_.demotion_candidate();
    if (!victim) break;
    // A block promoted for a MAP that has not been served yet is not sent
    // back down, not even to make room: demoting it for another waiting MAP
    // would make the two trade the slot for ever. That MAP is then told there
    // is no fast slot.
    if (promoted_for_map_.count(*victim) != 0) break;
    if (for_room == 0 && (budget_bytes_ < static_cast<double>(kBlockSize) || just_promoted_.count(*victim) != 0)) {
      break;
    }
    if (!add_move(down_, *victim)) {
      // A block the store refused to move and took out of the running (a
      // quarantined one) must not stop demotions: the next one goes.
      if (store_.demotion_candidate() != victim) continue;
      break;
    }
    if (for_room == 0) {
      budget_bytes_ -= static_cast<double>(kBlockSize);
      --background;
    } else {
      --for_room;
    }
  }
  submit_copies(down_);
  // Promotions wait for room that nothing in flight will make: every fast
  // block is mapped. Their MAPs ask again and get kNoFastSlot.
  if (waiting > 0 && store_.stats().fast_free_blocks == 0 && !busy()) drop_waiting_promotions();
}

void Tiering::start_next() {
  start_promotions();
  start_demotions();
}

void Tiering::on_event() {
  uint64_t count;
  while (::read(event_fd_.get(), &count, sizeof count) > 0) {
  }
  io_uring_cqe* cqe;
  while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
    const uint64_t ud = io_uring_cqe_get_data64(cqe);
    const int res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    if (in_kernel_ > 0) --in_kernel_;
    Batch& b = (ud >> 8 & 0xff) == 0 ? up_ : down_;
    if (ud >> 16 == kUdCopy) {
      on_copied(b, ud & 0xff, res);
    } else if (ud >> 16 == kUdSync) {
      on_synced(b, res);
    }
  }
}

void Tiering::on_copied(Batch& b, size_t index, int res) {
  if (index >= b.moves.size() || b.copies_pending == 0) return;
  const Store::Move& m = b.moves[index];
  if (res != static_cast<int>(kBlockSize)) {
    PBRICK_LOG_ERROR("tiering: move %s to the %s tier: copy: %s", format_hex(m.vaddr).c_str(),
                     m.to_tier == kTierFast ? "fast" : "slow",
                     res < 0 ? std::strerror(-res) : ("short transfer of " + std::to_string(res) + " bytes").c_str());
  } else {
    b.copied[index] = 1;
    // Into the page cache with the CPU: its stores dirty the pages as they
    // go, so the batch's fdatasync writes all of them.
    if (bounce_ && m.to_tier == kTierFast) {
      std::memcpy(store_.region().base() + m.to_offset, bounce_.get() + index * kBlockSize, kBlockSize);
    }
  }
  if (--b.copies_pending > 0) return;
  if (std::find(b.copied.begin(), b.copied.end(), 1) == b.copied.end()) return finish(b, false);
  // Every copy is complete: one sync makes all of them durable.
  PmemRegion& fast = store_.region();
  const uint64_t lane = b.to_tier == kTierFast ? 0 : 1;
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  PmemRegion& slow = store_.slow_tier()->region();
  if (b.to_tier == kTierSlow && slow.sync_fd() >= 0) {
    // Through the slow tier's region, on its own open file description: a
    // failed write-back is reported there once (see prep_second_sync), not
    // to the descriptor the copies use, and tests can hold or fail it.
    slow.prep_second_sync(sqe);
  } else if (b.to_tier == kTierSlow) {
    io_uring_prep_fsync(sqe, slow_fd_.get(), IORING_FSYNC_DATASYNC);
  } else if (fast.sync_fd() >= 0) {
    fast.prep_second_sync(sqe);  // not the description the sync points' fdatasyncs use
  } else {
    // pmem (or memory): the device wrote the slots; flushing their cache
    // lines makes them durable where DDIO left them in the CPU's cache.
    bool ok = true;
    for (size_t i = 0; i < b.moves.size() && ok; ++i) {
      if (!b.copied[i]) continue;
      Status st = fast.persist(b.moves[i].to_offset, kBlockSize);
      if (!st) {
        PBRICK_LOG_ERROR("tiering: move %s: %s", format_hex(b.moves[i].vaddr).c_str(), st.error().message().c_str());
        ok = false;
      }
    }
    return finish(b, ok);
  }
  io_uring_sqe_set_data64(sqe, kUdSync << 16 | lane << 8);
  submit();
}

void Tiering::on_synced(Batch& b, int res) {
  if (!b.busy()) return;
  PmemRegion& slow = store_.slow_tier()->region();
  Status st;
  if (b.to_tier == kTierFast) {
    st = store_.region().sync_done(res);
  } else if (slow.sync_fd() >= 0) {
    Status synced = slow.sync_done(res);
    if (!synced) st = Error(synced.error().errnum(), "fdatasync of the slow tier");
  } else if (res < 0) {
    st = Error(-res, "fdatasync of the slow tier");
  }
  if (!st) PBRICK_LOG_ERROR("tiering: %zu moves: %s", b.moves.size(), st.error().message().c_str());
  finish(b, static_cast<bool>(st));
}

// Flips every move whose copy is durable (`synced`: the sync after all the
// batch's copies succeeded), gives up the others.
void Tiering::finish(Batch& b, bool synced) {
  const auto us =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - b.started).count();
  bool any = false, failed = false;
  for (size_t i = 0; i < b.moves.size(); ++i) {
    const Store::Move& m = b.moves[i];
    if (!synced || !b.copied[i]) {
      failed = true;
      // A slot the copy could not be written to is not offered again (the
      // next demotion would take the same lowest free slot and fail the
      // same way, for ever); the store finds it free at its next start.
      const bool bad_slot = m.to_tier == kTierSlow && !b.copied[i];
      if (bad_slot) {
        PBRICK_LOG_ERROR("tiering: slow tier offset %s left unused until the brick restarts (a write to it failed)",
                         format_hex(m.to_offset).c_str());
      }
      store_.abort_move(m.vaddr, bad_slot);
      if (m.to_tier == kTierFast) failed_promotions_.insert(m.vaddr);
    } else if (Status st = store_.commit_move(m.vaddr); !st) {
      // The store put the old copy back. A promotion's MAP is told (asked
      // again, the same flip would fail the same way, for ever).
      failed = true;
      PBRICK_LOG_ERROR("tiering: %s", st.error().message().c_str());
      if (m.to_tier == kTierFast) failed_promotions_.insert(m.vaddr);
    } else {
      any = true;
      if (m.to_tier == kTierFast) {
        ++promotions_;
        just_promoted_.insert(m.vaddr);
        promoted_for_map_.insert(m.vaddr);
      } else {
        ++demotions_;
      }
    }
    if (m.to_tier == kTierFast) {
      promote_set_.erase(m.vaddr);
      std::erase(promote_queue_, m.vaddr);
    }
  }
  if (any) ++batches_;
  if (b.to_tier == kTierSlow && failed) {
    demotion_pause_ = std::min(kMaxDemotionPause, std::max(std::chrono::milliseconds(1000), 2 * demotion_pause_));
    demotions_resume_at_ = std::chrono::steady_clock::now() + demotion_pause_;
    PBRICK_LOG_WARN("tiering: a demotion failed: no block moves down for %lld s; a MAP of a slow block that needs "
                    "room meanwhile fails with EIO", static_cast<long long>(demotion_pause_.count() / 1000));
  } else if (b.to_tier == kTierSlow && any) {
    demotion_pause_ = std::chrono::milliseconds(0);
  }
  PBRICK_LOG_DEBUG("tiering: %s %zu blocks in %lld us", b.to_tier == kTierFast ? "promoted" : "demoted",
                   b.moves.size(), static_cast<long long>(us));
  b.moves.clear();
  b.copied.clear();
  b.copies_pending = 0;
  if (wake_) wake_();
  refill();
  start_next();
}

}  // namespace pbrick
