// The persistence ledger on its own: numbered fdatasyncs, what each sync
// point waits for, durable_through, orphaned writes and the sticky failure.
// The fdatasyncs are started and completed by the test (no ring, no file).
#include "target/persistence_ledger.h"

#include <gtest/gtest.h>

#include <vector>

namespace pbrick {
namespace {

using Outcome = PersistenceLedger::Outcome;
using Waiter = PersistenceLedger::Waiter;

// A region whose persistence the ledger drives: an fdatasync-backed file
// store (sync_fd() >= 0), or pmem (drain only). sync_done() is the real one
// (a negative result marks the region failed, for good).
class LedgerRegion final : public PmemRegion {
 public:
  explicit LedgerRegion(bool pmem, bool memory_fs = false) : pmem_(pmem), memory_fs_(memory_fs) {}
  uint8_t* base() override { return bytes_; }
  uint64_t size() const override { return sizeof bytes_; }
  bool is_pmem() const override { return pmem_; }
  void copy_nodrain(uint64_t, const void*, size_t) override {}
  void drain() override { drains++; }
  Status persist(uint64_t, uint64_t) override { return Status::Ok(); }
  Status store_word_persist(uint64_t, uint64_t) override { return Status::Ok(); }
  Status zero(uint64_t, uint64_t) override { return Status::Ok(); }
  int sync_fd() const override { return pmem_ ? -1 : 0; }
  bool nothing_to_write_back() const override { return memory_fs_; }

  int drains = 0;

 private:
  bool pmem_;
  bool memory_fs_;
  uint8_t bytes_[64] = {};
};

class Starter final : public PersistenceLedger::SyncStarter {
 public:
  void start_sync(uint64_t number) override { started.push_back(number); }
  std::vector<uint64_t> started;
};

std::vector<Waiter> woken(std::span<const Waiter> w) { return {w.begin(), w.end()}; }

class LedgerTest : public ::testing::Test {
 protected:
  LedgerRegion region_{/*pmem=*/false};
  Starter starter_;
  PersistenceLedger ledger_{region_, starter_};
  SyncState a_, b_;
  const Waiter wa_{1, 11}, wb_{2, 22};
};

TEST_F(LedgerTest, NothingWrittenIsDurableAtOnceWithoutAnFdatasync) {
  EXPECT_EQ(ledger_.read_target(a_), 0u);
  EXPECT_EQ(ledger_.sync_point(a_, wa_, ledger_.read_target(a_)), Outcome::kDurable);
  EXPECT_TRUE(starter_.started.empty());
  EXPECT_FALSE(a_.awaiting_sync);
}

TEST_F(LedgerTest, AWriteWaitsForAnFdatasyncThatStartedAfterIt) {
  ledger_.note_write(a_);
  EXPECT_EQ(a_.needs_sync, 1u);
  ASSERT_EQ(ledger_.sync_point(a_, wa_, ledger_.read_target(a_)), Outcome::kWaiting);
  EXPECT_EQ(starter_.started, std::vector<uint64_t>{1});
  EXPECT_TRUE(a_.awaiting_sync);
  EXPECT_EQ(a_.sync_target, 1u);

  // b writes while fdatasync 1 runs: 1 may have started before b's data
  // reached the page cache, so b needs 2 - it never rides a running one.
  ledger_.note_write(b_);
  EXPECT_EQ(b_.needs_sync, 2u);
  ASSERT_EQ(ledger_.sync_point(b_, wb_, ledger_.read_target(b_)), Outcome::kWaiting);
  EXPECT_EQ(starter_.started, (std::vector<uint64_t>{1, 2}));

  // 1 completes: both are woken; a is durable, b waits again without a third fdatasync.
  EXPECT_EQ(woken(ledger_.on_sync_done(1, 0)), (std::vector<Waiter>{wa_, wb_}));
  EXPECT_EQ(ledger_.durable_through(), 1u);
  a_.awaiting_sync = b_.awaiting_sync = false;  // what the Server does for each woken waiter
  EXPECT_EQ(ledger_.sync_point(a_, wa_, ledger_.read_target(a_)), Outcome::kDurable);
  EXPECT_EQ(a_.needs_sync, 0u);
  EXPECT_EQ(a_.sync_target, 0u);
  EXPECT_EQ(ledger_.sync_point(b_, wb_, ledger_.read_target(b_)), Outcome::kWaiting);
  EXPECT_EQ(starter_.started, (std::vector<uint64_t>{1, 2}));

  EXPECT_EQ(woken(ledger_.on_sync_done(2, 0)), std::vector<Waiter>{wb_});
  b_.awaiting_sync = false;
  EXPECT_EQ(ledger_.sync_point(b_, wb_, ledger_.read_target(b_)), Outcome::kDurable);
  EXPECT_EQ(ledger_.durable_through(), 2u);
  EXPECT_EQ(ledger_.syncs_started(), 2u);
}

// Two fdatasyncs in flight complete out of order: the later one's success
// makes nothing durable while the earlier one is out (it may be the one that
// gets the write-back error, reported once per file description), and when
// that one fails every sync point fails.
TEST_F(LedgerTest, ALaterFdatasyncsSuccessWaitsForTheEarlierOnes) {
  ledger_.note_write(a_);
  ASSERT_EQ(ledger_.sync_point(a_, wa_, ledger_.read_target(a_)), Outcome::kWaiting);
  ledger_.note_write(b_);
  ASSERT_EQ(ledger_.sync_point(b_, wb_, ledger_.read_target(b_)), Outcome::kWaiting);
  ASSERT_EQ(starter_.started, (std::vector<uint64_t>{1, 2}));

  EXPECT_EQ(woken(ledger_.on_sync_done(2, 0)), (std::vector<Waiter>{wa_, wb_}));
  EXPECT_EQ(ledger_.durable_through(), 0u);
  a_.awaiting_sync = b_.awaiting_sync = false;
  EXPECT_EQ(ledger_.sync_point(b_, wb_, ledger_.read_target(b_)), Outcome::kWaiting);
  EXPECT_EQ(ledger_.sync_point(a_, wa_, ledger_.read_target(a_)), Outcome::kWaiting);
  EXPECT_EQ(starter_.started, (std::vector<uint64_t>{1, 2})) << "no third fdatasync: 2 is back, 1 is not";

  EXPECT_EQ(woken(ledger_.on_sync_done(1, -EIO)), (std::vector<Waiter>{wb_, wa_}));
  a_.awaiting_sync = b_.awaiting_sync = false;
  EXPECT_EQ(ledger_.sync_point(b_, wb_, ledger_.read_target(b_)), Outcome::kFailed);
  EXPECT_EQ(ledger_.sync_point(a_, wa_, ledger_.read_target(a_)), Outcome::kFailed);
}

// Out of order and both successful: durable through both once the earlier is back.
TEST_F(LedgerTest, OutOfOrderSuccessesAdvanceTogether) {
  ledger_.note_write(a_);
  ASSERT_EQ(ledger_.sync_point(a_, wa_, ledger_.read_target(a_)), Outcome::kWaiting);
  ledger_.note_write(b_);
  ASSERT_EQ(ledger_.sync_point(b_, wb_, ledger_.read_target(b_)), Outcome::kWaiting);
  (void)ledger_.on_sync_done(2, 0);
  EXPECT_EQ(ledger_.durable_through(), 0u);
  (void)ledger_.on_sync_done(1, 0);
  EXPECT_EQ(ledger_.durable_through(), 2u);
  a_.awaiting_sync = b_.awaiting_sync = false;
  EXPECT_EQ(ledger_.sync_point(b_, wb_, ledger_.read_target(b_)), Outcome::kDurable);
  EXPECT_EQ(ledger_.sync_point(a_, wa_, ledger_.read_target(a_)), Outcome::kDurable);
}

TEST_F(LedgerTest, APersistWaitsForAFreshFdatasyncEvenWithNoWrites) {
  uint64_t target = ledger_.persist_target();
  EXPECT_EQ(target, 1u);
  EXPECT_EQ(ledger_.sync_point(a_, wa_, target), Outcome::kWaiting);
  ledger_.on_sync_done(1, 0);
  EXPECT_EQ(ledger_.sync_point(a_, wa_, a_.sync_target), Outcome::kDurable);
  // The next PERSIST again needs one that starts after it.
  EXPECT_EQ(ledger_.persist_target(), 2u);
}

TEST_F(LedgerTest, WritesOfAClosedConnectionAreCoveredByTheNextSyncPointOfAnother) {
  ledger_.note_write(a_);
  ledger_.orphan(a_);
  EXPECT_EQ(ledger_.orphan_needs_sync(), 1u);
  // b wrote nothing, but its READ is a sync point for the orphaned writes too.
  EXPECT_EQ(ledger_.read_target(b_), 1u);
  ASSERT_EQ(ledger_.sync_point(b_, wb_, ledger_.read_target(b_)), Outcome::kWaiting);
  ledger_.on_sync_done(1, 0);
  EXPECT_EQ(ledger_.orphan_needs_sync(), 0u);
  b_.awaiting_sync = false;
  EXPECT_EQ(ledger_.sync_point(b_, wb_, ledger_.read_target(b_)), Outcome::kDurable);
  EXPECT_EQ(ledger_.read_target(b_), 0u);

  // A connection whose writes were already durable leaves nothing behind.
  SyncState c;
  ledger_.orphan(c);
  EXPECT_EQ(ledger_.orphan_needs_sync(), 0u);
}

TEST_F(LedgerTest, AFailedFdatasyncFailsEverySyncPointForGood) {
  ledger_.note_write(a_);
  ASSERT_EQ(ledger_.sync_point(a_, wa_, ledger_.read_target(a_)), Outcome::kWaiting);
  ledger_.note_write(b_);
  ASSERT_EQ(ledger_.sync_point(b_, wb_, ledger_.read_target(b_)), Outcome::kWaiting);
  EXPECT_EQ(starter_.started, (std::vector<uint64_t>{1, 2}));

  EXPECT_EQ(woken(ledger_.on_sync_done(1, -EIO)), (std::vector<Waiter>{wa_, wb_}));
  EXPECT_EQ(ledger_.durable_through(), 0u) << "a failed fdatasync makes nothing durable";
  a_.awaiting_sync = b_.awaiting_sync = false;
  EXPECT_EQ(ledger_.sync_point(a_, wa_, ledger_.read_target(a_)), Outcome::kFailed);
  EXPECT_EQ(a_.sync_target, 0u);
  EXPECT_FALSE(a_.awaiting_sync);

  // Sticky: fdatasync 2 succeeds (Linux reports a failed write-back once and
  // marks the pages clean), but it cannot vouch for what 1 lost: b's sync
  // point fails too, and so does one with nothing of its own to cover.
  EXPECT_EQ(woken(ledger_.on_sync_done(2, 0)), std::vector<Waiter>{});
  EXPECT_EQ(ledger_.durable_through(), 0u) << "2 follows a failed 1";
  EXPECT_EQ(ledger_.sync_point(b_, wb_, ledger_.read_target(b_)), Outcome::kFailed);
  SyncState fresh;
  EXPECT_EQ(ledger_.sync_point(fresh, {3, 33}, 0), Outcome::kFailed);
  EXPECT_EQ(ledger_.sync_point(fresh, {3, 33}, ledger_.persist_target()), Outcome::kFailed);
  EXPECT_EQ(starter_.started, (std::vector<uint64_t>{1, 2})) << "no fdatasync is started for a failed store";
}

TEST(LedgerPmemTest, PmemDrainsInsteadOfAnFdatasync) {
  LedgerRegion region(/*pmem=*/true);
  Starter starter;
  PersistenceLedger ledger(region, starter);
  SyncState a, b;
  ledger.note_write(a);
  ledger.note_write(b);
  ledger.orphan(b);
  EXPECT_EQ(ledger.sync_point(a, {1, 1}, ledger.read_target(a)), Outcome::kDurable);
  EXPECT_EQ(region.drains, 1);
  EXPECT_EQ(ledger.orphan_needs_sync(), 0u) << "the drain covers orphaned writes too";
  EXPECT_EQ(ledger.persist_target(), 0u);
  EXPECT_EQ(region.drains, 2);
  EXPECT_TRUE(starter.started.empty());
}

// A file on tmpfs, hugetlbfs or ramfs: fdatasync would be a no-op, so sync
// points are answered at once, without one (and without the io-wq hop).
// Every other file store waits for a real fdatasync (the tests above).
TEST(LedgerMemoryFsTest, AStoreOnAMemoryFileSystemAnswersSyncPointsWithoutAnFdatasync) {
  LedgerRegion region(/*pmem=*/false, /*memory_fs=*/true);
  Starter starter;
  PersistenceLedger ledger(region, starter);
  SyncState a, b;
  ledger.note_write(a);
  ledger.note_write(b);
  ledger.orphan(b);
  EXPECT_EQ(ledger.sync_point(a, {1, 1}, ledger.read_target(a)), Outcome::kDurable);
  EXPECT_FALSE(a.awaiting_sync);
  EXPECT_EQ(ledger.orphan_needs_sync(), 0u);
  EXPECT_EQ(ledger.persist_target(), 0u);
  EXPECT_EQ(ledger.sync_point(a, {1, 1}, 0), Outcome::kDurable);
  EXPECT_TRUE(starter.started.empty()) << "no fdatasync on a memory file system";
}

}  // namespace
}  // namespace pbrick
