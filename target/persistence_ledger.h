// The brick's persistence bookkeeping: which fdatasync makes which WRITEs
// durable, and whether a sync point (a READ over TCP, a PERSIST) may be
// answered. The one place that marks a connection's writes dirty or durable.
//
// fdatasyncs are numbered in the order they are started; number n makes
// durable every WRITE replied to before it started, so a WRITE made while n
// runs needs n+1. A sync point completes once an fdatasync that started
// after every WRITE it covers has succeeded - never by riding one that was
// already running. Once the region reports a failed persist
// (PmemRegion::persist_failed(), sticky) every sync point fails: which writes
// were lost is unknowable.
//
// On pmem (sync_fd() < 0) there is no fdatasync: TCP WRITEs are
// non-temporal stores of the loop thread and draining them is all a sync
// point takes. A file on a memory file system (tmpfs, hugetlbfs, ramfs:
// PmemRegion::nothing_to_write_back()) needs none either - fdatasync is a
// no-op there, and issuing it only costs a hop through an io-wq worker - so
// its sync points are answered at once. Every other file store waits for a
// real fdatasync.
//
// Threading: the Server's loop thread only, like the region it drives.
// Starting an fdatasync is the owner's (SyncStarter: it owns the ring);
// it reports the completion back through on_sync_done().
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "target/pmem_region.h"

namespace pbrick {

// A connection's part of the ledger (kept in its Connection).
struct SyncState {
  // This connection's WRITEs are durable once fdatasync number `needs_sync`
  // (or a later one) succeeded; 0: none is pending.
  uint64_t needs_sync = 0;
  // The sync point at the head of the connection's input waits for fdatasync
  // number `sync_target` while `awaiting_sync`; 0: none chosen yet.
  uint64_t sync_target = 0;
  bool awaiting_sync = false;
};

class PersistenceLedger {
 public:
  // Who waits: a connection's slot and generation (a slot reused by a newer
  // connection is not woken for the old one).
  using Waiter = std::pair<uint32_t, uint32_t>;

  class SyncStarter {
   public:
    virtual ~SyncStarter() = default;
    // Starts fdatasync `number` of the region (PmemRegion::prep_sync); its
    // result comes back through on_sync_done(number, res).
    virtual void start_sync(uint64_t number) = 0;
  };

  PersistenceLedger(PmemRegion& region, SyncStarter& starter) : region_(region), starter_(starter) {}

  // A WRITE was copied into the region for `s`'s connection.
  void note_write(SyncState& s) const { s.needs_sync = syncs_started_ + 1; }

  // The fdatasync a sync-read (READ over TCP) waits for: every earlier WRITE
  // of its connection, and every WRITE of a connection that closed before
  // its writes were durable. 0: nothing.
  uint64_t read_target(const SyncState& s) const {
    return s.sync_target != 0 ? s.sync_target : std::max(s.needs_sync, orphan_needs_sync_);
  }

  // The fdatasync a PERSIST waits for: one that starts after now (it covers
  // the ranges just flushed and every earlier TCP WRITE). On pmem it drains
  // instead and returns 0.
  uint64_t persist_target() {
    if (!needs_fdatasync()) {
      region_.drain();
      return 0;
    }
    return syncs_started_ + 1;
  }

  enum class Outcome { kDurable, kWaiting, kFailed };
  // The sync point of `s`'s connection (`who`), covering what fdatasync
  // `target` covers (0: nothing). kWaiting: an fdatasync was started if
  // none that covers it runs yet; `who` is handed back by on_sync_done().
  Outcome sync_point(SyncState& s, Waiter who, uint64_t target);

  // An fdatasync completed with `res` (cqe->res). Returns the waiters to
  // resume, valid until the next call; those still short of their target
  // wait again when they call sync_point().
  std::span<const Waiter> on_sync_done(uint64_t number, int res);

  // `s`'s connection closed: its WRITEs not yet durable are covered by the
  // next sync point of any connection.
  void orphan(const SyncState& s) {
    if (s.needs_sync > durable_through_) orphan_needs_sync_ = std::max(orphan_needs_sync_, s.needs_sync);
  }

  uint64_t syncs_started() const { return syncs_started_; }
  uint64_t durable_through() const { return durable_through_; }
  uint64_t orphan_needs_sync() const { return orphan_needs_sync_; }

 private:
  bool needs_fdatasync() const { return region_.sync_fd() >= 0 && !region_.nothing_to_write_back(); }

  PmemRegion& region_;
  SyncStarter& starter_;
  uint64_t syncs_started_ = 0;
  // Highest fdatasync number that succeeded with every earlier one: they may
  // complete out of order, and Linux reports a failed write-back to only one
  // of the fdatasyncs of a file description, so a later one's success says
  // nothing until the earlier ones are back.
  uint64_t durable_through_ = 0;
  std::vector<uint64_t> succeeded_ahead_;  // successes above durable_through_ + 1
  uint64_t orphan_needs_sync_ = 0;  // WRITEs of closed connections need this one; 0: none
  std::vector<Waiter> waiters_;     // connections awaiting_sync
  std::vector<Waiter> waking_;      // the waiters one completion resumes
  bool failure_logged_ = false;
};

}  // namespace pbrick
