// The volume I/O core over several real bricks (gateway/test_brick.h) in
// layout stripe, through the engine: where blocks land, which bricks a FLUSH
// syncs, and what a brick that is down does to I/O on the others; when a
// sync is chained to a lone write, and what a FLUSH does with a chained sync.
#include "gateway/volume_io.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "common/crc32c.h"
#include "common/label_area.h"
#include "gateway/engine.h"
#include "gateway/test_brick.h"

namespace pbrick {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kBlock = proto::kBlockSize;
constexpr uint32_t kBricks = 3;

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

struct StripeOptions {
  uint64_t size = 32 * kMiB;
  uint64_t base = 0;
  uint32_t timeout_ms = 10000;
  uint32_t queues = 2;
  bool chain_syncs = true;
};

class StripeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PBRICK_ASSERT_OK(dir_.make("stripe"));
    PBRICK_ASSERT_OK(start_test_bricks(dir_.path(), kBricks, &bricks_));
  }
  void TearDown() override {
    engine_.reset();
    bricks_.clear();
  }

  Status open(const StripeOptions& so = {}) {
    VolumeOptions vo;
    vo.layout = Layout::kStripe;
    for (auto& b : bricks_) vo.bricks.push_back(b->client());
    vo.size = so.size;
    vo.base = so.base;
    vo.io_timeout_ms = so.timeout_ms;
    vo.chain_syncs = so.chain_syncs;
    auto volume = Volume::Open(vo);
    if (!volume) return volume.error().wrap("Volume::Open");
    auto engine = Engine::Start(std::move(*volume), {.queues = so.queues, .depth = 16});
    if (!engine) return engine.error().wrap("Engine::Start");
    engine_ = std::move(*engine);
    return Status::Ok();
  }

  std::vector<uint64_t> syncs() const {
    std::vector<uint64_t> v;
    for (uint32_t b = 0; b < kBricks; b++) v.push_back(engine_->syncs_sent(b));
    return v;
  }

  TestDir dir_;  // before the bricks: removed after they stop
  std::vector<std::unique_ptr<TestBrick>> bricks_;
  std::unique_ptr<Engine> engine_;
};

// Block i is on brick i mod 3 at base + (i div 3) * 2 MiB: the layout, the
// pieces a request becomes, and the bytes on each brick (read straight from
// the brick) agree.
// What a socket reports when the network between the gateway and a brick
// fails is retried on a new connection, not failed at once; a brick's own
// answers are not.
TEST(RetryRules, NetworkErrorsAreRetriedOnANewConnection) {
  for (int e : {ECONNRESET, ECONNREFUSED, ECONNABORTED, EPIPE, ENOTCONN, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH,
                EHOSTDOWN, ENETDOWN, ENETRESET, ENONET, ESHUTDOWN}) {
    EXPECT_TRUE(is_connection_error(e)) << std::strerror(e);
    EXPECT_EQ(fate_of(e), Fate::kReconnect) << std::strerror(e);
  }
  for (int e : {EIO, ENOSPC, EINVAL, EROFS}) {
    EXPECT_FALSE(is_connection_error(e)) << std::strerror(e);
    EXPECT_EQ(fate_of(e), Fate::kFail) << std::strerror(e);
  }
}

TEST_F(StripeTest, BlockILivesOnBrickIMod3AtBasePlusIDiv3Blocks) {
  const uint64_t base = 4 * kMiB;
  PBRICK_ASSERT_OK(open({.base = base}));
  Volume& v = engine_->volume();
  ASSERT_EQ(v.brick_count(), kBricks);
  for (uint64_t i = 0; i < v.block_count(); i++) {
    EXPECT_EQ(v.brick_of(i), i % kBricks) << "block " << i;
    EXPECT_EQ(v.block_vaddr(i), base + (i / kBricks) * kBlock) << "block " << i;
  }
  std::vector<IoPiece> pieces;
  std::vector<uint8_t> planned(5 * kMiB);  // planned, not sent: the pieces point into it
  plan_rw(v, true, kMiB, planned.size(), planned.data(), nullptr, pieces);
  ASSERT_EQ(pieces.size(), 3u);
  for (uint32_t i = 0; i < 3; i++) {
    EXPECT_EQ(pieces[i].block, i);
    EXPECT_EQ(pieces[i].brick, i);
  }
  EXPECT_EQ(pieces[0].in_block, kMiB);
  EXPECT_EQ(pieces[0].len, kMiB);
  EXPECT_EQ(pieces[2].len, kBlock);
  EXPECT_EQ(pieces[0].buf, planned.data());
  EXPECT_EQ(pieces[1].buf, planned.data() + kMiB);
  EXPECT_EQ(pieces[2].buf, planned.data() + kMiB + kBlock);

  constexpr uint64_t kBlocks = 7;
  auto data = random_bytes(kBlocks * kBlock, 21);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  for (uint32_t b = 0; b < kBricks; b++) {
    auto c = BrickClient::Connect(bricks_[b]->client());
    ASSERT_TRUE(c.ok()) << c.error().message();
    auto extents = (*c)->list_all();
    ASSERT_TRUE(extents.ok()) << extents.error().message();
    std::vector<uint64_t> held, want;
    for (const auto& e : *extents) {
      for (uint64_t k = 0; k < e.block_count; k++) {
        uint64_t vaddr = e.start_vaddr + k * kBlock;
        if (vaddr < kLabelAreaStart) held.push_back(vaddr);  // the volume's data, not its label area
      }
    }
    for (uint64_t i = b; i < kBlocks; i += kBricks) want.push_back(base + (i / kBricks) * kBlock);
    EXPECT_EQ(held, want) << "brick " << b;
    for (uint64_t i = b; i < kBlocks; i += kBricks) {
      auto h = (*c)->map(base + (i / kBricks) * kBlock, proto::kMapShared);
      ASSERT_TRUE(h.ok()) << h.error().message();
      std::vector<uint8_t> back(kBlock);
      PBRICK_ASSERT_OK((*c)->read(h->rkey, h->remote_addr, back));
      EXPECT_EQ(crc32c(back.data(), kBlock), crc32c(data.data() + i * kBlock, kBlock)) << "block " << i;
    }
  }
  std::vector<uint8_t> back(data.size());
  PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size()));
}

// FLUSH and FUA sync exactly the bricks written since their last completed
// sync, and a reconnect in between does not make a brick forget it owes one.
// Every brick is owed one at first: a gateway killed after acknowledging
// writes, whose FLUSH the kernel reissues to the next one, left them unsynced.
// FLUSH's own syncs, counted: without syncs chained to lone writes (which
// would serve some of these FLUSHes; AFlushAfterEachWriteWaitsForTheChainedSync).
TEST_F(StripeTest, FlushSyncsExactlyTheBricksThatWereWritten) {
  PBRICK_ASSERT_OK(open({.queues = 1, .chain_syncs = false}));
  Engine& e = *engine_;
  auto data = random_bytes(64 * 1024, 22);
  using V = std::vector<uint64_t>;
  PBRICK_ASSERT_OK(e.flush());
  EXPECT_EQ(syncs(), (V{1, 1, 1})) << "the first flush syncs every brick (an earlier process's writes)";
  PBRICK_ASSERT_OK(e.flush());
  EXPECT_EQ(syncs(), (V{1, 1, 1})) << "nothing written since, nothing to sync";
  PBRICK_ASSERT_OK(e.write(data.data(), data.size(), 1 * kBlock, false));  // block 1: brick 1
  PBRICK_ASSERT_OK(e.flush());
  EXPECT_EQ(syncs(), (V{1, 2, 1}));
  PBRICK_ASSERT_OK(e.flush());
  EXPECT_EQ(syncs(), (V{1, 2, 1})) << "a second flush has nothing to sync";
  PBRICK_ASSERT_OK(e.write(data.data(), data.size(), 3 * kBlock, false));  // brick 0
  PBRICK_ASSERT_OK(e.write(data.data(), data.size(), 5 * kBlock, false));  // brick 2
  PBRICK_ASSERT_OK(e.flush());
  EXPECT_EQ(syncs(), (V{2, 2, 2}));
  PBRICK_ASSERT_OK(e.write(data.data(), data.size(), 4 * kBlock, true));  // FUA, brick 1
  EXPECT_EQ(syncs(), (V{2, 3, 2}));
  std::vector<uint8_t> back(data.size());
  PBRICK_ASSERT_OK(e.read(back.data(), back.size(), 0));  // reads need no sync
  PBRICK_ASSERT_OK(e.flush());
  EXPECT_EQ(syncs(), (V{2, 3, 2}));

  // A write to brick 1, acknowledged, not synced; brick 1 restarts on its
  // store and the channel reconnects (a read of its block); the next FLUSH
  // still syncs brick 1.
  auto later = random_bytes(64 * 1024, 23);
  PBRICK_ASSERT_OK(e.write(later.data(), later.size(), 7 * kBlock, false));  // block 7: brick 1
  bricks_[1]->stop();
  PBRICK_ASSERT_OK(bricks_[1]->start());
  PBRICK_ASSERT_OK(e.read(back.data(), back.size(), 1 * kBlock));
  EXPECT_EQ(back, data);
  PBRICK_ASSERT_OK(e.flush());
  EXPECT_EQ(syncs()[0], 2u);
  EXPECT_EQ(syncs()[1], 4u) << "the reconnect dropped brick 1's unsynced write from the flush";
  EXPECT_EQ(syncs()[2], 2u);
  PBRICK_ASSERT_OK(e.read(back.data(), back.size(), 7 * kBlock));
  EXPECT_EQ(back, later);
}

// fsync after each write over TCP: the sync chained behind each lone write
// (after two FLUSHes show the pattern) serves the FLUSH that
// follows, which sends nothing of its own. A FLUSH every other write gets no
// chained sync: each is its own.
TEST_F(StripeTest, AFlushAfterEachWriteWaitsForTheChainedSync) {
  PBRICK_ASSERT_OK(open({.queues = 1}));
  Engine& e = *engine_;
  auto data = random_bytes(4096, 24);
  PBRICK_ASSERT_OK(e.flush());  // the sync every brick is owed at first (FlushSyncsExactlyTheBricksThatWereWritten)
  EXPECT_EQ(syncs(), (std::vector<uint64_t>{1, 1, 1}));
  for (int i = 0; i < 20; i++) {
    PBRICK_ASSERT_OK(e.write(data.data(), data.size(), 1 * kBlock + i * 4096, false));  // brick 1
    PBRICK_ASSERT_OK(e.flush());
  }
  EXPECT_EQ(e.syncs_chained(), 19u) << "every write but the first (the FLUSH before it counts too)";
  EXPECT_EQ(syncs()[1], 2u) << "only the first two FLUSHes sent a sync";
  EXPECT_EQ(syncs()[0] + syncs()[2], 2u);
  for (int i = 0; i < 10; i++) {
    PBRICK_ASSERT_OK(e.write(data.data(), data.size(), 4 * kBlock + i * 8192, false));  // brick 1
    PBRICK_ASSERT_OK(e.write(data.data(), data.size(), 4 * kBlock + i * 8192 + 4096, false));
    PBRICK_ASSERT_OK(e.flush());
  }
  EXPECT_EQ(e.syncs_chained(), 20u) << "the first write after the change only";
  EXPECT_EQ(syncs()[1], 12u) << "each FLUSH of two writes sent its own";
  // What was written reads back (from a brick that served every sync).
  std::vector<uint8_t> back(4096);
  PBRICK_ASSERT_OK(e.read(back.data(), back.size(), 1 * kBlock + 19 * 4096));
  EXPECT_EQ(back, data);
}

// One brick of three down: I/O to its blocks waits out the timeout and fails
// with EIO, I/O to the other bricks' blocks goes on meanwhile with the right
// data, and once the brick is back its blocks read what was written.
TEST_F(StripeTest, ABrickDownFailsItsBlocksAfterTheTimeoutAndNotTheOthers) {
  constexpr uint32_t kTimeoutMs = 2000;
  PBRICK_ASSERT_OK(open({.timeout_ms = kTimeoutMs}));
  Engine& e = *engine_;
  constexpr uint64_t kBlocks = 6;
  auto data = random_bytes(kBlocks * kBlock, 24);
  PBRICK_ASSERT_OK(e.write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(e.flush());
  bricks_[2]->stop();  // blocks 2 and 5

  std::atomic<bool> failed_done{false};
  Status failed;
  std::chrono::steady_clock::duration failed_after{};
  std::thread t([&] {
    std::vector<uint8_t> buf(4096, 0xEE);
    auto start = std::chrono::steady_clock::now();
    failed = e.read(buf.data(), buf.size(), 5 * kBlock);
    failed_after = std::chrono::steady_clock::now() - start;
    failed_done = true;
  });
  // Meanwhile the other bricks' blocks, all of them read and written before
  // the down brick's read gives up.
  auto start = std::chrono::steady_clock::now();
  for (int round = 0; round < 3; round++) {
    for (uint64_t i : {0u, 1u, 3u, 4u}) {
      // Small requests, so that even a sanitizer build is done long before
      // the timeout.
      constexpr uint64_t kLen = 64 * 1024;
      const uint64_t at = i * kBlock + round * kLen;
      std::vector<uint8_t> back(kLen);
      PBRICK_ASSERT_OK(e.read(back.data(), back.size(), at));
      EXPECT_EQ(crc32c(back.data(), kLen), crc32c(data.data() + at, kLen)) << "block " << i;
      PBRICK_ASSERT_OK(e.write(data.data() + at, 4096, at, false));
    }
  }
  auto others = std::chrono::steady_clock::now() - start;
  EXPECT_LT(others, std::chrono::milliseconds(kTimeoutMs));
  EXPECT_FALSE(failed_done.load()) << "the read of the down brick's block ended before the timeout";
  t.join();
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.error().errnum(), EIO) << failed.error().message();
  EXPECT_NE(failed.error().message().find(bricks_[2]->client().endpoint.to_string()), std::string::npos)
      << failed.error().message();
  EXPECT_GE(failed_after, std::chrono::milliseconds(kTimeoutMs));
  EXPECT_LT(failed_after, std::chrono::milliseconds(kTimeoutMs * 5));
  // A request that spans a good and the down brick fails as a whole.
  std::vector<uint8_t> span(2 * kBlock);
  Status st = e.read(span.data(), span.size(), 1 * kBlock);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), EIO);

  PBRICK_ASSERT_OK(bricks_[2]->start());
  std::vector<uint8_t> back(data.size());
  PBRICK_ASSERT_OK(e.read(back.data(), back.size(), 0));
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size()));
  PBRICK_ASSERT_OK(e.flush());
}

// A FUA write syncs the bricks it wrote to, not every brick its loop owes a
// sync: with a brick of the stripe down (here owed one since the attach, as
// every brick is until the first FLUSH), a FUA write to another brick
// completes, durable there. A FLUSH still asks the brick that is down.
TEST_F(StripeTest, AFuaWriteSyncsOnlyTheBricksItWroteTo) {
  constexpr uint32_t kTimeoutMs = 1500;
  PBRICK_ASSERT_OK(open({.timeout_ms = kTimeoutMs, .queues = 1}));
  Engine& e = *engine_;
  bricks_[2]->stop();
  auto data = random_bytes(2 * kBlock, 26);
  const auto before = syncs();
  const auto start = std::chrono::steady_clock::now();
  PBRICK_ASSERT_OK(e.write(data.data(), data.size(), 0, /*fua=*/true));  // blocks 0 and 1
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(kTimeoutMs));
  const auto after = syncs();
  EXPECT_EQ(after[0], before[0] + 1);
  EXPECT_EQ(after[1], before[1] + 1);
  EXPECT_EQ(after[2], before[2]) << "the FUA write's sync went to a brick it did not write to";
  Status flushed = e.flush();
  ASSERT_FALSE(flushed.ok());
  EXPECT_EQ(flushed.error().errnum(), EIO) << flushed.error().message();
  PBRICK_ASSERT_OK(bricks_[2]->start());
  PBRICK_ASSERT_OK(e.flush());
  std::vector<uint8_t> back(data.size());
  PBRICK_ASSERT_OK(e.read(back.data(), back.size(), 0));
  EXPECT_EQ(back, data);
}

// Requests for several blocks of a brick that is down wait for its control
// connection one after another (a mapping, an allocation): they fail
// together about the timeout after the brick was found unreachable, not one
// timeout each.
TEST_F(StripeTest, RequestsQueuedForADownBrickFailTogetherNotOneTimeoutEach) {
  constexpr uint32_t kTimeoutMs = 1500;
  PBRICK_ASSERT_OK(open({.timeout_ms = kTimeoutMs}));
  Engine& e = *engine_;
  auto data = random_bytes(6 * kBlock, 25);
  PBRICK_ASSERT_OK(e.write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(e.flush());
  bricks_[2]->stop();  // blocks 2, 5, 8, 11 and 14
  // Reads of blocks written (mapped again: the mappings died with the
  // connection) and writes to blocks never written (allocated first).
  const uint64_t reads[] = {2, 5}, writes[] = {8, 11, 14};
  std::vector<std::thread> threads;
  std::vector<Status> results(5);
  const auto start = std::chrono::steady_clock::now();
  for (size_t k = 0; k < 2; k++) {
    threads.emplace_back([&, k] {
      std::vector<uint8_t> buf(4096);
      results[k] = e.read(buf.data(), buf.size(), reads[k] * kBlock);
    });
  }
  for (size_t k = 0; k < 3; k++) {
    threads.emplace_back([&, k] { results[2 + k] = e.write(data.data(), 4096, writes[k] * kBlock, false); });
  }
  for (auto& t : threads) t.join();
  const auto took = std::chrono::steady_clock::now() - start;
  for (size_t k = 0; k < results.size(); k++) {
    ASSERT_FALSE(results[k].ok()) << k;
    EXPECT_EQ(results[k].error().errnum(), EIO) << results[k].error().message();
  }
  EXPECT_LT(took, std::chrono::milliseconds(kTimeoutMs * 3)) << "each request waited its own timeout";
  PBRICK_ASSERT_OK(bricks_[2]->start());
  std::vector<uint8_t> back(4096);
  PBRICK_ASSERT_OK(e.read(back.data(), back.size(), 2 * kBlock));
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data() + 2 * kBlock, 4096));
}

// A request sent in rounds (a ublk queue sends kMaxPiecesPerRound pieces at
// a time: a 256 MiB WRITE_ZEROES is 16 rounds) that passes its deadline
// while its rounds all succeed goes on: the deadline bounds waiting for an
// unreachable brick, not a request that takes long because it is large.
TEST_F(StripeTest, ARequestStillGoingRoundByRoundIsNotTimedOut) {
  PBRICK_ASSERT_OK(open());
  Volume& v = engine_->volume();
  std::vector<IoPiece> pieces(3);
  for (uint32_t i = 0; i < pieces.size(); i++) {
    pieces[i].is_write = true;
    pieces[i].block = i;
    pieces[i].brick = v.brick_of(i);
    pieces[i].len = 4096;
  }
  pieces[0].status = 0;  // the first round's piece; the others still to go
  IoRetry retry;
  const auto timeout = std::chrono::milliseconds(200);
  retry.start(timeout);
  std::this_thread::sleep_for(timeout + std::chrono::milliseconds(20));
  EXPECT_EQ(retry.settle(v, pieces, "write"), IoRetry::Step::kNow) << retry.error().message();
  // Its next round meets a lost connection: past the deadline counted from
  // its arrival, within the one counted from its last round done - it waits
  // for the brick instead of failing at once.
  pieces[1].status = ECONNRESET;
  EXPECT_EQ(retry.settle(v, pieces, "write"), IoRetry::Step::kLater) << retry.error().message();
  // A piece that has to be sent again past that deadline fails the request.
  std::this_thread::sleep_for(timeout + std::chrono::milliseconds(20));
  pieces[1].status = EKEYREJECTED;
  EXPECT_EQ(retry.settle(v, pieces, "write"), IoRetry::Step::kFail);
}

TEST_F(StripeTest, TheBrickCountMustFitTheLayout) {
  VolumeOptions vo;
  vo.size = 8 * kMiB;
  vo.layout = Layout::kStripe;
  vo.bricks = {bricks_[0]->client()};
  auto one = Volume::Open(vo);
  ASSERT_FALSE(one.ok());
  EXPECT_EQ(one.error().errnum(), EINVAL);
  EXPECT_NE(one.error().message().find("layout stripe takes at least two bricks"), std::string::npos);
  vo.layout = Layout::kSingle;
  vo.bricks = {bricks_[0]->client(), bricks_[1]->client()};
  auto two = Volume::Open(vo);
  ASSERT_FALSE(two.ok());
  EXPECT_EQ(two.error().errnum(), EINVAL);
  EXPECT_NE(two.error().message().find("layout single takes one brick, not 2"), std::string::npos);
  vo.layout = Layout::kStripe;
  vo.bricks = {bricks_[0]->client(), bricks_[1]->client(), bricks_[0]->client()};
  auto twice = Volume::Open(vo);
  ASSERT_FALSE(twice.ok());
  EXPECT_EQ(twice.error().errnum(), EINVAL);
  EXPECT_NE(twice.error().message().find("brick " + bricks_[0]->client().endpoint.to_string() + " is named twice"),
            std::string::npos)
      << twice.error().message();
}

// A sync chained behind a lone write over an RDMA sync-read connection
// (VolumeChannels::push): only while FLUSH/FUA requests keep coming, and only
// for a write alone on its connection.
TEST(SyncChainingTest, ChainsLoneWritesOnlyWhileFlushesKeepComing) {
  SyncChaining c;
  uint64_t writes = 0;
  auto one_sided = [&](bool lone, uint64_t flushes) { return c.chain(lone, true, flushes, ++writes); };
  EXPECT_FALSE(one_sided(true, 0)) << "no FLUSH yet: a writer that never flushes never pays for a sync";
  EXPECT_TRUE(one_sided(true, 1));
  EXPECT_FALSE(one_sided(false, 1)) << "not alone: never";
  // A write + FLUSH loop: every write is chained.
  for (uint64_t flushes = 2; flushes < 100; flushes++) EXPECT_TRUE(one_sided(true, flushes));
  // The writer stops flushing: kMaxUnasked more writes are chained, then none.
  uint32_t chained = 0;
  for (int i = 0; i < 100; i++) chained += one_sided(true, 99) ? 1 : 0;
  EXPECT_EQ(chained, SyncChaining::kMaxUnasked - 1) << "one was chained with the 99th FLUSH already";
  EXPECT_TRUE(one_sided(true, 100)) << "a FLUSH again: chaining resumes";
}

// Over a connection whose sync is a request the brick serves (TCP), a sync is
// chained only to a write that a FLUSH follows, as far as the last FLUSHes
// tell: never one the writer would not have caused.
TEST(SyncChainingTest, OverTcpChainsOnlyWhileEveryWriteIsFlushed) {
  SyncChaining c;
  uint64_t writes = 0, flushes = 0;
  auto two_sided = [&](bool lone) { return c.chain(lone, false, flushes, ++writes); };
  EXPECT_FALSE(two_sided(true)) << "no FLUSH yet";
  flushes++;
  EXPECT_FALSE(two_sided(true)) << "one FLUSH after one write does not yet make a pattern";
  // fsync after every write: each write but the first of the run is chained.
  for (int i = 0; i < 50; i++) {
    flushes++;
    EXPECT_TRUE(two_sided(true)) << i;
  }
  flushes++;
  EXPECT_FALSE(two_sided(false)) << "not alone: never";
  // The writer stops flushing: no more chained syncs at all.
  EXPECT_FALSE(two_sided(true));
  EXPECT_FALSE(two_sided(true));
  // A FLUSH every other write: the FLUSH after the second write would sync
  // both, so chaining the first would add a sync: nothing is chained.
  for (int i = 0; i < 20; i++) {
    flushes++;
    EXPECT_FALSE(two_sided(true)) << i;
    EXPECT_FALSE(two_sided(true)) << i;
  }
  // Back to fsync after every write: chained again from the second FLUSH on.
  flushes++;
  EXPECT_FALSE(two_sided(true));
  flushes++;
  EXPECT_TRUE(two_sided(true));
}

// A chained sync is nobody's FLUSH: after the brick's host rebooted under
// unsynced writes it must not report the loss, nor use up the report the next
// FLUSH owes (EIO once).
TEST(SyncChainingTest, AChainedSyncNeverSwallowsTheReportOfLostWrites) {
  SyncLedger ledger;
  std::array<uint8_t, proto::kUuidSize> boot_a{}, boot_b{};
  boot_b[0] = 1;
  EXPECT_FALSE(ledger.on_hello(boot_a));
  ledger.wrote();
  EXPECT_TRUE(ledger.on_hello(boot_b)) << "rebooted with a write unsynced";
  ledger.wrote();
  EXPECT_EQ(ledger.start_sync(/*chained=*/true), ECANCELED);
  EXPECT_TRUE(ledger.writes_maybe_lost());
  EXPECT_EQ(ledger.start_sync(/*chained=*/false), EIO) << "the FLUSH still reports it";
  // The write made on the new connection is not among the lost ones: it
  // still needs its sync, which the report must not count as done.
  EXPECT_EQ(ledger.start_sync(/*chained=*/false), -1) << "the new connection's write needs a sync";
  ledger.synced(ledger.write_seq());
  EXPECT_EQ(ledger.start_sync(/*chained=*/false), 0) << "reported once, then synced";
}

// The report of lost writes answers for the writes made before the reboot
// was found, never for those made after: a FLUSH after it must reach the
// brick for them (a write retried on the new connection, or a new one).
// PERSIST ranges merge per handle. A brick may hand a dead handle's rkey to
// a new one at another address: the new handle's writes get their own range,
// or the merged range would lie outside the live handle and the brick would
// persist none of the new writes.
TEST(PersistRangesTest, AReusedRkeyAtAnotherAddressGetsARangeOfItsOwn) {
  PersistRanges r;
  constexpr uint64_t kOld = 0x7f1200000000, kNew = 0x3ab400000000;
  r.wrote(9, kOld + 4096, 4096);
  r.wrote(9, kOld, 4096);
  r.wrote(9, kOld + proto::kBlockSize - 8192, 8192);
  ASSERT_EQ(r.ranges().size(), 1u);
  EXPECT_EQ(r.ranges()[0].remote_addr, kOld);
  EXPECT_EQ(r.ranges()[0].length, proto::kBlockSize) << "one handle's writes: one range";
  r.wrote(9, kNew + 65536, 4096);
  ASSERT_EQ(r.ranges().size(), 2u);
  EXPECT_EQ(r.ranges()[1].rkey, 9u);
  EXPECT_EQ(r.ranges()[1].remote_addr, kNew + 65536);
  EXPECT_EQ(r.ranges()[1].length, 4096u);
  r.wrote(9, kNew, 4096);  // the new handle's next write joins its own range
  ASSERT_EQ(r.ranges().size(), 2u);
  EXPECT_EQ(r.ranges()[1].remote_addr, kNew);
  EXPECT_EQ(r.ranges()[1].length, 65536u + 4096u);
  for (uint32_t k = 0; r.ranges().size() < proto::kMaxPersistRanges; k++) r.wrote(100 + k, kOld, 512);
  EXPECT_FALSE(r.all());
  r.wrote(99, kOld, 512);
  EXPECT_TRUE(r.all()) << "more ranges than a PERSIST names: every writable mapping";
  EXPECT_TRUE(r.ranges().empty());
  r.clear();
  EXPECT_FALSE(r.all());
}

TEST(SyncLedgerTest, TheLostWritesReportDoesNotCoverWritesMadeAfterTheReconnect) {
  SyncLedger ledger;
  std::array<uint8_t, proto::kUuidSize> boot_a{}, boot_b{};
  boot_b[0] = 1;
  ASSERT_FALSE(ledger.on_hello(boot_a));
  ledger.wrote();
  ASSERT_TRUE(ledger.on_hello(boot_b));
  EXPECT_EQ(ledger.start_sync(false), EIO) << "nothing written since: the report alone";
  EXPECT_EQ(ledger.start_sync(false), 0);
  // A mirror answers for the loss itself; writes after the reconnect still
  // need a sync.
  ledger.wrote();
  ASSERT_TRUE(ledger.on_hello(std::array<uint8_t, proto::kUuidSize>{2}));
  ledger.wrote();
  ledger.forget_lost_writes();
  EXPECT_EQ(ledger.start_sync(false), -1);
}

// A channel whose ops the test completes one by one, in any order, with any
// status; its syncs are one-sided (as an RDMA sync-read's), so VolumeChannels
// chains them to lone writes.
class ScriptedChannel final : public DataChannel {
 public:
  struct Sent {
    Op* op;
    bool sync;
  };

  Status connect(const ClientOptions&) override { return Status::Ok(); }
  bool connected() const override { return true; }
  bool tearing_down() const override { return false; }
  bool full() const override { return false; }
  size_t inflight() const override { return inflight_.size(); }
  bool sync_is_one_sided() const override { return true; }
  void submit(Op* op) override { inflight_.push_back({op, false}); }
  void submit_sync(Op* op) override { inflight_.push_back({op, true}); }
  std::chrono::steady_clock::time_point last_progress() const override { return {}; }
  void teardown(int) override {}
  Status flush(ChannelRing&) override { return Status::Ok(); }
  Status on_cqe(uint8_t, int) override { return Status::Ok(); }
  void stop(ChannelRing&) override {}
  void disconnect(int status) override {
    while (!inflight_.empty()) complete(0, status);
  }

  const std::vector<Sent>& inflight_ops() const { return inflight_; }
  // Completes the i-th op in flight with `status`.
  void complete(size_t i, int status) {
    Op* op = inflight_.at(i).op;
    inflight_.erase(inflight_.begin() + static_cast<std::ptrdiff_t>(i));
    op->done(op, status);
  }

 private:
  std::vector<Sent> inflight_;
};

// The sync chained to a lone write (VolumeChannels::push) and a FLUSH that
// comes while it is on its way: the FLUSH completes with it, or, when it
// fails, sends its own; it never completes on a sync that did not happen.
class ChainedSyncTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PBRICK_ASSERT_OK(dir_.make("chained"));
    brick_ = std::make_unique<TestBrick>(dir_.path());
    PBRICK_ASSERT_OK(brick_->start());
    auto volume = Volume::Open({.brick = brick_->client(), .size = 32 * kMiB});
    ASSERT_TRUE(volume.ok()) << volume.error().message();
    volume_ = std::move(*volume);
    channels_ = std::make_unique<VolumeChannels>(*volume_, 16, ring_, 1, 2, "test",
                                                 [this](uint32_t, uint32_t) {
                                                   auto c = std::make_unique<ScriptedChannel>();
                                                   channel_ = c.get();
                                                   return c;
                                                 });
    job_.ctx = this;
    job_.done = [](SyncJob* job) { static_cast<ChainedSyncTest*>(job->ctx)->flushes_done_++; };
    write_.opcode = proto::Opcode::kWrite;
    write_.buf = data_;
    write_.length = sizeof data_;
    write_.ctx = &write_status_;
    write_.done = [](DataChannel::Op* op, int status) { *static_cast<int*>(op->ctx) = status; };
  }
  void TearDown() override {
    channels_.reset();
    volume_.reset();
    brick_.reset();
  }

  // A FLUSH was asked for, then one WRITE goes out alone: it is chained.
  void lone_write_after_a_flush() {
    volume_->note_sync_request();
    channels_->push(0, &write_);
    channels_->dispatch();
    ASSERT_EQ(channel_->inflight_ops().size(), 2u);
    EXPECT_FALSE(channel_->inflight_ops()[0].sync);
    ASSERT_TRUE(channel_->inflight_ops()[1].sync);
    EXPECT_TRUE(channel_->inflight_ops()[1].op->chained);
    EXPECT_EQ(channels_->syncs_chained(), 1u);
  }

  TestDir dir_;  // before the bricks: removed after they stop
  std::unique_ptr<TestBrick> brick_;
  std::unique_ptr<Volume> volume_;
  Uring ring_;  // never initialized: the scripted channel arms nothing
  std::unique_ptr<VolumeChannels> channels_;
  ScriptedChannel* channel_ = nullptr;
  SyncJob job_;
  int flushes_done_ = 0;
  uint8_t data_[4096] = {};
  DataChannel::Op write_;
  int write_status_ = -1;
};

TEST_F(ChainedSyncTest, AFlushWaitsForTheChainedSyncAndSendsNothing) {
  lone_write_after_a_flush();
  channels_->sync(job_);
  EXPECT_EQ(flushes_done_, 0) << "the chained sync has not completed";
  EXPECT_EQ(channel_->inflight_ops().size(), 2u) << "the FLUSH sent no sync of its own";
  channel_->complete(0, 0);
  EXPECT_EQ(write_status_, 0);
  EXPECT_EQ(flushes_done_, 0) << "a completed write is not a durable one";
  channel_->complete(0, 0);
  EXPECT_EQ(flushes_done_, 1);
  EXPECT_EQ(job_.status, 0);
  EXPECT_EQ(channels_->syncs_sent(0), 0u);
  EXPECT_FALSE(channels_->needs_sync());
}

TEST_F(ChainedSyncTest, AFlushWaitingForAChainedSyncThatFailsSendsItsOwn) {
  lone_write_after_a_flush();
  channels_->sync(job_);
  channel_->complete(0, 0);
  channel_->complete(0, ECONNRESET);  // the chained sync-read
  EXPECT_EQ(flushes_done_, 0) << "a FLUSH completed on a sync that failed";
  EXPECT_TRUE(channels_->needs_sync());
  EXPECT_EQ(channels_->syncs_sent(0), 1u);
  channels_->dispatch();
  ASSERT_EQ(channel_->inflight_ops().size(), 1u);
  ASSERT_TRUE(channel_->inflight_ops()[0].sync);
  EXPECT_FALSE(channel_->inflight_ops()[0].op->chained) << "the FLUSH's own sync";
  channel_->complete(0, EIO);
  EXPECT_EQ(flushes_done_, 1);
  EXPECT_EQ(job_.status, EIO) << "the FLUSH reports what its own sync met";
  EXPECT_TRUE(channels_->needs_sync());
}

TEST_F(ChainedSyncTest, AFlushAfterAWriteTheChainedSyncDoesNotCoverSendsItsOwn) {
  lone_write_after_a_flush();
  DataChannel::Op second = write_;
  int second_status = -1;
  second.ctx = &second_status;
  channels_->push(0, &second);  // not alone: no second chained sync
  channels_->dispatch();
  EXPECT_EQ(channels_->syncs_chained(), 1u);
  channels_->sync(job_);
  EXPECT_EQ(channels_->syncs_sent(0), 1u);
  channels_->dispatch();
  ASSERT_EQ(channel_->inflight_ops().size(), 4u);
  channel_->complete(0, 0);
  channel_->complete(0, 0);  // the chained sync: covers the first write only
  EXPECT_EQ(flushes_done_, 0);
  EXPECT_TRUE(channels_->needs_sync());
  channel_->complete(0, 0);
  EXPECT_EQ(second_status, 0);
  channel_->complete(0, 0);
  EXPECT_EQ(flushes_done_, 1);
  EXPECT_EQ(job_.status, 0);
  EXPECT_FALSE(channels_->needs_sync());
}

TEST_F(ChainedSyncTest, StoppingFailsAFlushThatWaitsForAChainedSync) {
  lone_write_after_a_flush();
  channels_->sync(job_);
  channels_->finish(ESHUTDOWN);
  EXPECT_EQ(write_status_, ESHUTDOWN);
  EXPECT_EQ(flushes_done_, 1) << "the waiting FLUSH was dropped";
  EXPECT_EQ(job_.status, ESHUTDOWN);
}

}  // namespace
}  // namespace pbrick
