#include "target/persistence_ledger.h"

#include "common/log.h"

namespace pbrick {

PersistenceLedger::Outcome PersistenceLedger::sync_point(SyncState& s, Waiter who, uint64_t target) {
  if (target != 0 && !needs_fdatasync()) {
    // pmem: TCP WRITEs are non-temporal stores of this thread; draining them
    // is all it takes, for orphaned ones too. A memory file system: the
    // page cache is the medium, nothing to write back.
    region_.drain();
    target = 0;
    orphan_needs_sync_ = 0;
  }
  if (region_.persist_failed()) {
    // Which writes were lost is unknowable (Linux reports a failed write-back
    // once and marks the pages clean), so no later sync point can vouch for
    // them: the store stays failed until the brick restarts.
    if (!failure_logged_) {
      PBRICK_LOG_ERROR("the store failed to persist written data: every sync point (READ over TCP, PERSIST) "
                       "answers EIO until the brick is restarted");
      failure_logged_ = true;
    }
    s.sync_target = 0;
    return Outcome::kFailed;
  }
  if (target <= durable_through_) {
    s.sync_target = 0;
    s.needs_sync = 0;
    return Outcome::kDurable;
  }
  if (syncs_started_ < target) starter_.start_sync(++syncs_started_);
  s.sync_target = target;
  s.awaiting_sync = true;
  waiters_.push_back(who);
  return Outcome::kWaiting;
}

std::span<const PersistenceLedger::Waiter> PersistenceLedger::on_sync_done(uint64_t number, int res) {
  Status st = region_.sync_done(res);
  if (st) {
    succeeded_ahead_.push_back(number);
    // Advances over every success that now follows on from it.
    for (auto next = std::find(succeeded_ahead_.begin(), succeeded_ahead_.end(), durable_through_ + 1);
         next != succeeded_ahead_.end();
         next = std::find(succeeded_ahead_.begin(), succeeded_ahead_.end(), durable_through_ + 1)) {
      durable_through_++;
      succeeded_ahead_.erase(next);
    }
  } else {
    PBRICK_LOG_ERROR("%s", st.error().message().c_str());
  }
  if (orphan_needs_sync_ != 0 && orphan_needs_sync_ <= durable_through_) orphan_needs_sync_ = 0;
  // Waiters for a later fdatasync wait again (sync_point puts them back).
  waking_.clear();
  waking_.swap(waiters_);
  return waking_;
}

}  // namespace pbrick
