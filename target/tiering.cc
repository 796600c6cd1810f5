// The data mover (see tiering.h). One move at a time:
//   copy (io_uring read or write of 2 MiB, O_DIRECT, between the fast store's
//   mapping and the slow file) -> make the copy durable (fdatasync of the
//   destination, or a cache flush on pmem) -> Store::commit_move (the flip).
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
  if (ring_ready_) io_uring_queue_exit(&ring_);
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
  if (int err = init_event_ring(8, &ring_); err < 0) return Error(-err, "tiering: io_uring_queue_init");
  ring_ready_ = true;
  if (int err = io_uring_register_eventfd(&ring_, event_fd_.get()); err < 0) {
    return Error(-err, "tiering: io_uring_register_eventfd");
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
  if (*tier == kTierFast) return MapReadiness::kReady;
  if (promote_set_.count(vaddr) == 0) {
    if (store_.stats().fast_free_blocks == 0 && !store_.demotion_candidate() && !current_) {
      return MapReadiness::kNoFastSlot;
    }
    promote_queue_.push_back(vaddr);
    promote_set_.insert(vaddr);
  }
  start_next();
  // The caller waits for the wake that the end of the move in flight brings;
  // with none in flight nothing could make room (start_next dropped it).
  return current_ ? MapReadiness::kWait : MapReadiness::kNoFastSlot;
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
    PBRICK_LOG_INFO("tiering: %llu promotions, %llu demotions since start; %llu of %llu fast blocks free, "
                    "%llu of %llu slow blocks free",
                    static_cast<unsigned long long>(promotions_), static_cast<unsigned long long>(demotions_),
                    static_cast<unsigned long long>(s.fast_free_blocks),
                    static_cast<unsigned long long>(s.fast_capacity_blocks),
                    static_cast<unsigned long long>(s.slow_free_blocks),
                    static_cast<unsigned long long>(s.slow_capacity_blocks));
  }
  just_promoted_.clear();
  refill();
  start_next();
}

bool Tiering::start_move(uint64_t vaddr, uint8_t to_tier) {
  auto m = store_.begin_move(vaddr, to_tier);
  if (!m) {
    PBRICK_LOG_WARN("tiering: %s", m.error().message().c_str());
    return false;
  }
  current_ = *m;
  stage_ = Stage::kCopy;
  move_started_ = std::chrono::steady_clock::now();
  PmemRegion& fast = store_.region();
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);  // one operation in flight: never full
  if (to_tier == kTierSlow) {
    fast.drain();  // TCP WRITEs to pmem are non-temporal stores of this thread
    io_uring_prep_write(sqe, slow_fd_.get(), fast.base() + m->from_offset, kBlockSize, m->to_offset);
  } else {
    io_uring_prep_read(sqe, slow_fd_.get(), fast.base() + m->to_offset, kBlockSize, m->from_offset);
  }
  io_uring_sqe_set_data64(sqe, kUdCopy);
  if (int err = io_uring_submit(&ring_); err < 0) {
    PBRICK_LOG_ERROR("tiering: io_uring_submit: %s", std::strerror(-err));
    store_.abort_move(vaddr);
    current_.reset();
    return false;
  }
  return true;
}

void Tiering::start_next() {
  while (!current_) {
    if (!promote_queue_.empty()) {
      const uint64_t vaddr = promote_queue_.front();
      auto tier = store_.tier_of(vaddr);
      if (!tier || *tier != kTierSlow || store_.moving(vaddr)) {
        promote_queue_.pop_front();
        promote_set_.erase(vaddr);
        if (wake_) wake_();
        continue;
      }
      if (store_.stats().fast_free_blocks > 0) {
        if (start_move(vaddr, kTierFast)) return;
        promote_queue_.pop_front();
        promote_set_.erase(vaddr);
        if (wake_) wake_();
        continue;
      }
      auto victim = store_.demotion_candidate();
      if (victim && start_move(*victim, kTierSlow)) return;
      // Every fast block is mapped: the waiting MAP asks again and gets the error.
      promote_queue_.pop_front();
      promote_set_.erase(vaddr);
      if (wake_) wake_();
      continue;
    }
    const StoreStats s = store_.stats();
    if (s.fast_free_blocks >= low_watermark_ || s.slow_free_blocks == 0) return;
    if (budget_bytes_ < static_cast<double>(kBlockSize)) return;
    auto victim = store_.demotion_candidate();
    if (!victim || just_promoted_.count(*victim) != 0) return;
    budget_bytes_ -= static_cast<double>(kBlockSize);
    if (!start_move(*victim, kTierSlow)) return;
  }
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
    if (ud == kUdCopy) {
      on_copied(res);
    } else if (ud == kUdSync) {
      on_synced(res);
    }
  }
}

void Tiering::on_copied(int res) {
  if (!current_) return;
  const Store::Move& m = *current_;
  if (res != static_cast<int>(kBlockSize)) {
    PBRICK_LOG_ERROR("tiering: move %s to the %s tier: copy: %s", format_hex(m.vaddr).c_str(),
                     m.to_tier == kTierFast ? "fast" : "slow",
                     res < 0 ? std::strerror(-res) : ("short transfer of " + std::to_string(res) + " bytes").c_str());
    return finish(false);
  }
  stage_ = Stage::kSync;
  PmemRegion& fast = store_.region();
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (m.to_tier == kTierSlow) {
    io_uring_prep_fsync(sqe, slow_fd_.get(), IORING_FSYNC_DATASYNC);
  } else if (fast.sync_fd() >= 0) {
    fast.prep_sync(sqe);
  } else {
    // pmem (or memory): the device wrote the slot; flushing its cache lines
    // makes it durable where DDIO left them in the CPU's cache.
    Status st = fast.persist(m.to_offset, kBlockSize);
    if (!st) PBRICK_LOG_ERROR("tiering: move %s: %s", format_hex(m.vaddr).c_str(), st.error().message().c_str());
    return finish(static_cast<bool>(st));
  }
  io_uring_sqe_set_data64(sqe, kUdSync);
  if (int err = io_uring_submit(&ring_); err < 0) {
    PBRICK_LOG_ERROR("tiering: io_uring_submit: %s", std::strerror(-err));
    finish(false);
  }
}

void Tiering::on_synced(int res) {
  if (!current_) return;
  const Store::Move& m = *current_;
  Status st = m.to_tier == kTierSlow ? (res < 0 ? Status(Error(-res, "fdatasync of the slow tier")) : Status::Ok())
                                     : store_.region().sync_done(res);
  if (!st) {
    PBRICK_LOG_ERROR("tiering: move %s: %s", format_hex(m.vaddr).c_str(), st.error().message().c_str());
  }
  finish(static_cast<bool>(st));
}

void Tiering::finish(bool ok) {
  const Store::Move m = *current_;
  current_.reset();
  if (ok) {
    Status st = store_.commit_move(m.vaddr);
    if (!st) {
      PBRICK_LOG_ERROR("tiering: %s", st.error().message().c_str());
    } else {
      const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() -
                                                                            move_started_).count();
      if (m.to_tier == kTierFast) {
        ++promotions_;
        just_promoted_.insert(m.vaddr);
      } else {
        ++demotions_;
      }
      PBRICK_LOG_DEBUG("tiering: %s %s in %lld us", m.to_tier == kTierFast ? "promoted" : "demoted",
                       format_hex(m.vaddr).c_str(), static_cast<long long>(us));
    }
  } else {
    store_.abort_move(m.vaddr);
  }
  if (m.to_tier == kTierFast) {
    promote_set_.erase(m.vaddr);
    std::erase(promote_queue_, m.vaddr);
  }
  if (wake_) wake_();
  refill();
  start_next();
}

}  // namespace pbrick
