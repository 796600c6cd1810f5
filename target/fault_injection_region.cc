#include "target/fault_injection_region.h"

#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

namespace pbrick {

FaultInjectionRegion::FaultInjectionRegion(std::unique_ptr<PmemRegion> inner, bool pmem, bool track_durable)
    : inner_(std::move(inner)),
      pmem_(pmem),
      placeholder_(::open("/dev/null", O_RDONLY | O_CLOEXEC)),
      track_durable_(track_durable) {
  if (track_durable_) durable_.assign(inner_->base(), inner_->base() + inner_->size());
}

void FaultInjectionRegion::make_durable(uint64_t off, uint64_t len) {
  if (!track_durable_ || off > durable_.size()) return;
  len = std::min<uint64_t>(len, durable_.size() - off);
  std::memcpy(durable_.data() + off, inner_->base() + off, len);
  for (auto& sync : syncs_) sync->newer.emplace_back(off, len);
}

void FaultInjectionRegion::complete_drain() {
  for (const auto& [off, len] : undrained_) make_durable(off, len);
  undrained_.clear();
}

std::vector<uint8_t> FaultInjectionRegion::durable_image() const {
  std::lock_guard lock(mu_);
  return durable_;
}

void FaultInjectionRegion::copy_nodrain(uint64_t off, const void* src, size_t len) {
  inner_->copy_nodrain(off, src, len);
  if (!track_durable_ || !pmem_) return;
  std::lock_guard lock(mu_);
  undrained_.emplace_back(off, len);
}

void FaultInjectionRegion::drain() {
  inner_->drain();
  if (!track_durable_ || !pmem_) return;
  std::lock_guard lock(mu_);
  complete_drain();
}

FaultInjectionRegion::~FaultInjectionRegion() = default;

void FaultInjectionRegion::fail(Op op, int errnum) {
  std::lock_guard lock(mu_);
  fail_[static_cast<int>(op)] = errnum;
}

void FaultInjectionRegion::hold_syncs(bool hold) {
  std::lock_guard lock(mu_);
  hold_ = hold;
}

void FaultInjectionRegion::release_sync(int errnum) {
  std::lock_guard lock(mu_);
  for (auto& sync : syncs_) {
    if (!sync->released) return release(*sync, errnum);
  }
}

uint64_t FaultInjectionRegion::syncs_started() const {
  std::lock_guard lock(mu_);
  return started_;
}

uint64_t FaultInjectionRegion::syncs_completed() const {
  std::lock_guard lock(mu_);
  return completed_;
}

std::vector<std::pair<uint64_t, uint64_t>> FaultInjectionRegion::persisted_ranges() const {
  std::lock_guard lock(mu_);
  return persisted_;
}

int FaultInjectionRegion::injected(Op op) const { return fail_[static_cast<int>(op)]; }

void FaultInjectionRegion::release(Sync& sync, int errnum) {
  sync.outcome = errnum;
  sync.released = true;
  uint8_t byte = 1;
  if (::write(sync.write_end.get(), &byte, 1) != 1) std::abort();
}

Status FaultInjectionRegion::persist(uint64_t off, uint64_t len) {
  int err;
  {
    std::lock_guard lock(mu_);
    persisted_.emplace_back(off, len);
    err = injected(Op::kPersist);
  }
  if (err != 0) return note_persist(Error(err, "persist (injected fault)"));
  Status st = inner_->persist(off, len);
  if (st) {
    std::lock_guard lock(mu_);
    make_durable(off, len);
    if (pmem_) complete_drain();  // pmem_persist ends with a drain
  }
  return note_persist(std::move(st));
}

Status FaultInjectionRegion::store_word_persist(uint64_t off, uint64_t value) {
  int err;
  {
    std::lock_guard lock(mu_);
    err = injected(Op::kStoreWord);
  }
  if (err != 0) return note_persist(Error(err, "store_word_persist (injected fault)"));
  Status st = inner_->store_word_persist(off, value);
  if (st) {
    std::lock_guard lock(mu_);
    make_durable(off, 8);
  }
  return note_persist(std::move(st));
}

Status FaultInjectionRegion::zero(uint64_t off, uint64_t len) {
  int err;
  {
    std::lock_guard lock(mu_);
    err = injected(Op::kZero);
  }
  if (err != 0) return note_persist(Error(err, "zero (injected fault)"));
  Status st = inner_->zero(off, len);
  if (st) {
    std::lock_guard lock(mu_);
    make_durable(off, len);
  }
  return note_persist(std::move(st));
}

// Not a persistence step: a failure is no failed write-back.
Status FaultInjectionRegion::reserve(uint64_t off, uint64_t len) {
  int err;
  {
    std::lock_guard lock(mu_);
    err = injected(Op::kReserve);
  }
  if (err != 0) return Error(err, "reserve (injected fault)");
  return inner_->reserve(off, len);
}

void FaultInjectionRegion::prep_sync(io_uring_sqe* sqe) {
  std::lock_guard lock(mu_);
  started_++;
  auto sync = std::make_unique<Sync>();
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) std::abort();  // the test cannot go on without it
  sync->read_end.reset(fds[0]);
  sync->write_end.reset(fds[1]);
  if (track_durable_) sync->snapshot.assign(inner_->base(), inner_->base() + inner_->size());
  if (!hold_) release(*sync, injected(Op::kSync));
  // -1: "the current position", the only offset a pipe has.
  io_uring_prep_read(sqe, sync->read_end.get(), &sink_, 1, static_cast<uint64_t>(-1));
  syncs_.push_back(std::move(sync));
}

Status FaultInjectionRegion::sync_done(int cqe_res) {
  int err = cqe_res < 0 ? -cqe_res : 0;
  {
    std::lock_guard lock(mu_);
    completed_++;
    // Only a released sync can complete, and they are released oldest first.
    for (auto it = syncs_.begin(); it != syncs_.end(); ++it) {
      if ((*it)->released) {
        if (err == 0) err = (*it)->outcome;
        // What the fdatasync wrote back: the region as it started. (Later
        // stores may have been written back too; a cut may lose them.)
        if (err == 0 && track_durable_) {
          // Except what a persistence step made durable since it started:
          // the medium holds that newer content.
          std::vector<uint8_t> was = std::move((*it)->snapshot);
          for (const auto& [off, len] : (*it)->newer) std::memcpy(was.data() + off, durable_.data() + off, len);
          durable_ = std::move(was);
        }
        syncs_.erase(it);
        break;
      }
    }
  }
  if (err != 0) return note_persist(Error(err, "fdatasync of the store (injected fault)"));
  return Status::Ok();
}

}  // namespace pbrick
