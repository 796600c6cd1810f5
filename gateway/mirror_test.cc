// Layout mirror: where each copy of a block lives (Placement), which pieces a
// request becomes (plan_block through plan_rw / plan_discard), and the bytes
// each brick holds after writes through the engine over real bricks
// (gateway/test_brick.h).
#include "gateway/mirror.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <chrono>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "common/crc32c.h"
#include "common/label_area.h"
#include "gateway/engine.h"
#include "gateway/resync.h"
#include "gateway/test_brick.h"
#include "gateway/volume_io.h"
#include "gateway/volume_label.h"

namespace pbrick {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kBlock = proto::kBlockSize;

// Every (brick, slot) holds at most one unit, each unit's inverse is itself,
// copies of a block are on distinct bricks, and no brick uses more slots
// than slots_per_brick.
TEST(MirrorPlacement, CopiesOfABlockAreOnDistinctBricksAndNoSlotIsShared) {
  for (uint32_t n = 1; n <= 5; n++) {
    for (uint32_t c = 1; c <= std::min(n, 3u); c++) {
      Placement pl{n, c};
      for (uint64_t blocks : {1ull, 2ull, 7ull, 24ull}) {
        std::set<std::pair<uint32_t, uint64_t>> used;
        for (uint64_t i = 0; i < blocks; i++) {
          std::set<uint32_t> on;
          for (uint32_t j = 0; j < c; j++) {
            uint64_t u = pl.unit(i, j);
            EXPECT_EQ(pl.block_of(u), i);
            EXPECT_EQ(pl.copy_of(u), j);
            EXPECT_EQ(pl.brick_of(u), (i + j) % n) << "n " << n << " c " << c << " block " << i;
            EXPECT_LT(pl.slot_of(u), pl.slots_per_brick(blocks));
            EXPECT_TRUE(used.insert({pl.brick_of(u), pl.slot_of(u)}).second)
                << "n " << n << " c " << c << " block " << i << " copy " << j;
            auto back = pl.unit_at(pl.brick_of(u), pl.slot_of(u), blocks);
            ASSERT_TRUE(back.has_value());
            EXPECT_EQ(*back, u);
            on.insert(pl.brick_of(u));
          }
          EXPECT_EQ(on.size(), c);
        }
      }
    }
  }
  // With one copy it is the stripe formula.
  Placement stripe{3, 1};
  for (uint64_t i = 0; i < 10; i++) {
    EXPECT_EQ(stripe.brick_of(i), i % 3);
    EXPECT_EQ(stripe.slot_of(i), i / 3);
  }
  // 4 bricks, 2 copies (RAID10-like): block 5 on bricks 1 and 2, slots 2 and 3.
  Placement r10{4, 2};
  EXPECT_EQ(r10.brick_of(r10.unit(5, 0)), 1u);
  EXPECT_EQ(r10.brick_of(r10.unit(5, 1)), 2u);
  EXPECT_EQ(r10.slot_of(r10.unit(5, 0)), 2u);
  EXPECT_EQ(r10.slot_of(r10.unit(5, 1)), 3u);
}

std::vector<uint8_t> random_data(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// What each brick of `pl` holds after the first `blocks` blocks of `data`
// were written from `base`: by brick, address -> CRC of the block.
std::vector<std::map<uint64_t, uint32_t>> expected_blocks(const Placement& pl, const std::vector<uint8_t>& data,
                                                          uint64_t blocks, uint64_t base = 0) {
  std::vector<std::map<uint64_t, uint32_t>> want(pl.bricks);
  for (uint64_t i = 0; i < blocks; i++) {
    for (uint32_t j = 0; j < pl.copies; j++) {
      uint64_t u = pl.unit(i, j);
      want[pl.brick_of(u)][base + pl.slot_of(u) * kBlock] = crc32c(data.data() + i * kBlock, kBlock);
    }
  }
  return want;
}

class MirrorTest : public ::testing::Test {
 protected:
  void start_bricks(uint32_t n) {
    PBRICK_ASSERT_OK(dir_.make("mirror"));
    PBRICK_ASSERT_OK(start_test_bricks(dir_.path(), n, &bricks_));
  }
  void TearDown() override {
    engine_.reset();
    bricks_.clear();
  }

  VolumeOptions options(uint32_t copies, uint64_t size = 24 * kMiB, uint64_t base = 0) const {
    VolumeOptions vo;
    vo.layout = Layout::kMirror;
    vo.copies = copies;
    for (auto& b : bricks_) vo.bricks.push_back(b->client());
    vo.size = size;
    vo.base = base;
    vo.io_timeout_ms = 10000;
    return vo;
  }

  Status open(const VolumeOptions& vo) {
    auto volume = Volume::Open(vo);
    if (!volume) return volume.error().wrap("Volume::Open");
    auto engine = Engine::Start(std::move(*volume), {.queues = 2, .depth = 16});
    if (!engine) return engine.error().wrap("Engine::Start");
    engine_ = std::move(*engine);
    return Status::Ok();
  }

  // Opens a mirror of `copies` copies over every brick started, `size` bytes,
  // and writes `data` at offset 0, flushed.
  Status open_written(uint32_t copies, uint64_t size, const std::vector<uint8_t>& data) {
    PBRICK_TRY(open(options(copies, size)));
    PBRICK_TRY(engine_->write(data.data(), data.size(), 0, false));
    return engine_->flush();
  }

  // The data blocks brick `b` holds (below the label areas), by address, with
  // the CRC of each.
  std::map<uint64_t, uint32_t> brick_blocks(uint32_t b) {
    std::map<uint64_t, uint32_t> out;
    auto c = BrickClient::Connect(bricks_[b]->client());
    EXPECT_TRUE(c.ok()) << c.error().message();
    if (!c.ok()) return out;
    auto extents = (*c)->list_all();
    EXPECT_TRUE(extents.ok()) << extents.error().message();
    if (!extents.ok()) return out;
    for (const auto& e : *extents) {
      for (uint64_t k = 0; k < e.block_count; k++) {
        uint64_t vaddr = e.start_vaddr + k * kBlock;
        if (vaddr >= kLabelAreaStart) continue;
        auto h = (*c)->map(vaddr, proto::kMapShared);
        EXPECT_TRUE(h.ok()) << h.error().message();
        if (!h.ok()) continue;
        std::vector<uint8_t> back(kBlock);
        EXPECT_TRUE((*c)->read(h->rkey, h->remote_addr, back).ok());
        out[vaddr] = crc32c(back.data(), kBlock);
        (void)(*c)->unmap(vaddr);
      }
    }
    return out;
  }

  // AfterAWriterDiedMidWrite...: over the bricks started.
  void run_writer_died_mid_write();

  // A 2-copy mirror of 8 MiB over the bricks started, `data` written at 0
  // and flushed, and its gateway gone without detaching (as if killed).
  Status written_then_killed(const std::vector<uint8_t>& data) {
    PBRICK_TRY(open_written(2, 8 * kMiB, data));
    engine_->volume().leave_uncleanly_for_testing();
    engine_.reset();
    return Status::Ok();
  }

  // The `closed` field of the holder record on brick `b` (volume at base 0).
  uint64_t holder_closed(uint32_t b) {
    auto c = BrickClient::Connect(bricks_[b]->client());
    EXPECT_TRUE(c.ok()) << c.error().message();
    if (!c.ok()) return 0;
    auto m = (*c)->map(*label_vaddr(0), proto::kMapShared);
    EXPECT_TRUE(m.ok()) << m.error().message();
    if (!m.ok()) return 0;
    std::vector<uint8_t> bytes(kLabelSlotSize);
    EXPECT_TRUE((*c)->read(m->rkey, m->remote_addr + kHolderOffset, bytes).ok());
    auto h = decode_holder(bytes);
    EXPECT_TRUE(h.ok()) << h.error().message();
    return h.ok() ? h->closed : 0;
  }

  TestDir dir_;  // before the bricks: removed after they stop
  std::vector<std::unique_ptr<TestBrick>> bricks_;
  std::unique_ptr<Engine> engine_;
};

// A write becomes one piece per copy, on the copy's brick; a read one piece,
// and successive reads of a block take turns over its copies.
TEST_F(MirrorTest, WritesGoToEveryCopyAndReadsTakeTurns) {
  start_bricks(2);
  PBRICK_ASSERT_OK(open(options(2)));
  Volume& v = engine_->volume();
  ASSERT_EQ(v.copies(), 2u);
  std::vector<IoPiece> pieces;
  std::vector<uint8_t> data(2 * kMiB);  // planned, not sent: the pieces point into it
  plan_rw(v, true, kMiB, data.size(), data.data(), nullptr, pieces);  // blocks 0 and 1
  ASSERT_EQ(pieces.size(), 4u);
  std::set<std::pair<uint64_t, uint32_t>> got;
  for (const IoPiece& p : pieces) got.insert({p.block, p.brick});
  // unit = block * 2 + copy; copy j of block i on brick (i + j) mod 2.
  EXPECT_EQ(got, (std::set<std::pair<uint64_t, uint32_t>>{{0, 0}, {1, 1}, {2, 1}, {3, 0}}));
  std::set<uint32_t> read_bricks;
  for (int k = 0; k < 4; k++) {
    pieces.clear();
    plan_rw(v, false, 0, 4096, nullptr, nullptr, pieces);
    ASSERT_EQ(pieces.size(), 1u);
    read_bricks.insert(pieces[0].brick);
  }
  EXPECT_EQ(read_bricks, (std::set<uint32_t>{0, 1}));
}

// Over 3 bricks with 2 copies: after writes and a FLUSH, each brick holds
// exactly the copies the placement gives it, at the placement's addresses,
// with the written bytes; every brick was synced; reads return the data.
TEST_F(MirrorTest, EachBrickHoldsItsCopiesWithTheWrittenBytes) {
  start_bricks(3);
  const uint64_t base = 8 * kMiB;
  PBRICK_ASSERT_OK(open(options(2, 24 * kMiB, base)));
  constexpr uint64_t kBlocks = 7;
  auto data = random_data(kBlocks * kBlock, 7);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  for (uint32_t b = 0; b < 3; b++) EXPECT_GE(engine_->syncs_sent(b), 1u) << "brick " << b;
  Placement pl{3, 2};
  auto want = expected_blocks(pl, data, kBlocks, base);
  for (uint32_t b = 0; b < 3; b++) EXPECT_EQ(brick_blocks(b), want[b]) << "brick " << b;
  for (int round = 0; round < 2; round++) {  // reads from either copy
    std::vector<uint8_t> back(data.size());
    PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
    EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size()));
  }
}

// A discard frees every copy of a whole block, and zeroes every copy of a
// partial one.
TEST_F(MirrorTest, DiscardReachesEveryCopy) {
  start_bricks(2);
  PBRICK_ASSERT_OK(open(options(2)));
  auto data = random_data(2 * kBlock, 9);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  EXPECT_EQ(brick_blocks(0).size(), 2u);
  EXPECT_EQ(brick_blocks(1).size(), 2u);
  PBRICK_ASSERT_OK(engine_->discard(kBlock, 0, false));  // block 0 whole
  PBRICK_ASSERT_OK(engine_->discard(4096, kBlock, false));  // the first 4 KiB of block 1
  PBRICK_ASSERT_OK(engine_->flush());
  std::vector<uint8_t> want(kBlock, 0);
  std::memcpy(want.data() + 4096, data.data() + kBlock + 4096, kBlock - 4096);
  uint32_t crc = crc32c(want.data(), kBlock);
  for (uint32_t b = 0; b < 2; b++) {
    auto held = brick_blocks(b);
    ASSERT_EQ(held.size(), 1u) << "brick " << b;
    EXPECT_EQ(held.begin()->second, crc) << "brick " << b;
  }
}

// A discard that reaches a block a resync holds stops there without waiting
// (the ublk queue thread calling it may have a write under way that the
// resync waits for, completed only on that thread): what it planned before
// the block stays planned, nothing from the block on is freed, and it goes
// on from there once the block is released.
TEST_F(MirrorTest, ADiscardStopsAtABlockAResyncHoldsAndGoesOnFromItLater) {
  start_bricks(2);
  PBRICK_ASSERT_OK(open(options(2)));
  Volume& v = engine_->volume();
  auto data = random_data(4 * kBlock, 31);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  const Placement& pl = v.placement();
  auto copies_allocated = [&](uint64_t block) {
    return v.allocated(pl.unit(block, 0)) && v.allocated(pl.unit(block, 1));
  };
  auto copies_freed = [&](uint64_t block) {
    return !v.allocated(pl.unit(block, 0)) && !v.allocated(pl.unit(block, 1));
  };

  // Block 0 from 1 MiB on (partial: zero-filled), 1 and 2 whole (freed),
  // 3 up to 1 MiB (partial).
  const uint64_t offset = 1 * kMiB, end = 3 * kBlock + 1 * kMiB;
  std::vector<uint8_t> zeros(kBlock, 0);
  int request = 0;
  std::vector<IoPiece> pieces;
  v.mirror()->hold(2);
  std::atomic<bool> released{false};
  std::thread watchdog([&] {  // a plan_discard that waited for the hold would otherwise never return
    std::this_thread::sleep_for(std::chrono::seconds(3));
    released.store(true);
    v.mirror()->release();
  });
  auto planned = plan_discard(v, offset, end - offset, zeros.data(), &request, pieces);
  const bool waited = released.load();
  v.mirror()->release();
  watchdog.join();
  PBRICK_ASSERT_OK(planned);
  EXPECT_FALSE(waited) << "plan_discard waited for the resync's hold";
  EXPECT_EQ(*planned, 2 * kBlock) << "it stops at the start of the held block";
  ASSERT_EQ(pieces.size(), 2u) << "block 0's zero-fill, one piece per copy";
  for (const IoPiece& p : pieces) {
    EXPECT_EQ(pl.block_of(p.block), 0u);
    EXPECT_FALSE(p.counted) << "not counted while the request waits";
  }
  EXPECT_FALSE(v.mirror()->writes_in_flight(0));
  EXPECT_TRUE(copies_allocated(0));
  EXPECT_TRUE(copies_freed(1));
  EXPECT_TRUE(copies_allocated(2)) << "nothing from the held block on is freed";
  EXPECT_TRUE(copies_allocated(3));

  // Released: the rest, appended to the same pieces.
  planned = plan_discard(v, *planned, end - *planned, zeros.data(), &request, pieces);
  PBRICK_ASSERT_OK(planned);
  EXPECT_EQ(*planned, end);
  ASSERT_EQ(pieces.size(), 4u);
  EXPECT_EQ(pl.block_of(pieces[2].block), 3u);
  EXPECT_EQ(pl.block_of(pieces[3].block), 3u);
  EXPECT_TRUE(copies_freed(2));
  EXPECT_TRUE(copies_allocated(3));
  end_writes(v, pieces);
  for (uint64_t block = 0; block < 4; block++) EXPECT_FALSE(v.mirror()->writes_in_flight(block)) << block;

  // Through the engine the same discard waits for the hold on the caller's
  // thread and completes: blocks 0 and 3 keep the bytes outside the range.
  PBRICK_ASSERT_OK(engine_->write(data.data() + 2 * kBlock, kBlock, 2 * kBlock, false));
  v.mirror()->hold(2);
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    v.mirror()->release();
  });
  Status discarded = engine_->discard(end - offset, offset, false);
  releaser.join();
  PBRICK_ASSERT_OK(discarded);
  EXPECT_TRUE(copies_freed(2));
  std::vector<uint8_t> back(4 * kBlock);
  PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
  std::vector<uint8_t> want(data);
  std::memset(want.data() + offset, 0, end - offset);
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(want.data(), want.size()));
}

// A discard of a 3-copy block: copy 0 skipped (its brick stale), copy 1 kept
// for zeroing (its brick refuses the FREE: another client maps it), copy 2
// fails (its brick is gone, and no label can record it stale). The request
// fails and ends the block's write
// count once per copy that began one - not twice for the kept copy, which
// would leave the counter wrapped and every resync of the block waiting.
TEST_F(MirrorTest, AFailedDiscardEndsEachCopysWriteCountOnce) {
  start_bricks(3);
  VolumeOptions vo = options(3);
  vo.leg_timeout_ms = 300;
  PBRICK_ASSERT_OK(open(vo));
  Volume& ev = engine_->volume();
  auto data = random_data(kBlock, 71);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  const Placement& pl = ev.placement();
  uint32_t brick_of_copy[3];
  for (uint32_t c = 0; c < 3; c++) brick_of_copy[c] = pl.brick_of(pl.unit(0, c));
  PBRICK_ASSERT_OK(ev.mark_stale(brick_of_copy[0]));
  PBRICK_ASSERT_OK(ev.mark_dirty(0));  // copy 0's miss is recorded already: skipping it needs no brick
  auto other = BrickClient::Connect(bricks_[brick_of_copy[1]]->client());
  PBRICK_ASSERT_OK(other);
  PBRICK_ASSERT_OK((*other)->map(ev.block_vaddr(pl.unit(0, 1)), proto::kMapShared));
  bricks_[brick_of_copy[2]]->stop();
  ev.fail_label_writes_for_testing([](uint32_t) { return true; });

  std::vector<uint8_t> zeros(kBlock, 0);
  int request = 0;
  std::vector<IoPiece> pieces;
  auto planned = plan_discard(ev, 0, kBlock, zeros.data(), &request, pieces);
  ev.fail_label_writes_for_testing(nullptr);
  ASSERT_FALSE(planned.ok()) << "brick " << brick_of_copy[2] << " is gone";
  EXPECT_NE(planned.error().message().find("unreachable"), std::string::npos) << planned.error().message();
  EXPECT_TRUE(ev.allocated(pl.unit(0, 1))) << "copy 1 was kept (its FREE refused), not freed";
  EXPECT_TRUE(pieces.empty());
  EXPECT_FALSE(ev.mirror()->writes_in_flight(0)) << "the block's write count did not come back to zero";
}

// A write whose copy on one brick landed while its other copy still waits
// for a brick that is down stays counted on its block between its rounds:
// a resync of the block in that gap would otherwise copy the old bytes
// over the copy that landed, and, the write's count and sequence unchanged,
// take its copy for current.
TEST_F(MirrorTest, AWriteWaitingForACopyStaysCountedBetweenItsRounds) {
  start_bricks(2);
  VolumeOptions vo = options(2);
  vo.leg_timeout_ms = 20;
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  bricks_[1]->stop();
  v.mirror()->set_reachable(1, false);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // past the leg timeout

  struct NoSink final : PieceSink {
    void push(uint32_t, DataChannel::Op*) override { ADD_FAILURE() << "nothing can be sent"; }
  } sink;
  std::vector<uint8_t> buf(4096, 0x5a);
  int request = 0;
  std::vector<IoPiece> pieces;
  plan_rw(v, true, 0, buf.size(), buf.data(), &request, pieces);
  ASSERT_EQ(pieces.size(), 2u);
  ASSERT_NE(pieces[0].brick, pieces[1].brick);
  IoPiece& landed = pieces[0].brick == 0 ? pieces[0] : pieces[1];
  landed.status = 0;  // its copy on brick 0 is written
  auto queued = queue_round(v, pieces, sink, [](DataChannel::Op*, int) {});
  PBRICK_ASSERT_OK(queued);
  EXPECT_EQ(*queued, 0u) << "brick 1 has been unreachable for the leg timeout: no attempt";
  EXPECT_TRUE(v.mirror()->writes_in_flight(0)) << "the write is under way: a resync must wait for it";
  IoRetry retry;
  retry.start(std::chrono::milliseconds(vo.io_timeout_ms));
  EXPECT_EQ(retry.settle(v, pieces, "write"), IoRetry::Step::kDone) << "brick 1's copy is given up: stale";
  EXPECT_EQ(v.mirror()->state(1), CopyState::kStale);
  EXPECT_FALSE(v.mirror()->writes_in_flight(0)) << "completed: no longer counted";
}

// A FLUSH after a brick died, with no write since to find it out: its sync
// to that brick fails, and past the leg timeout the copy is given up as a
// write's leg would be; the FLUSH completes on the other copy instead of
// failing with EIO after the I/O timeout.
TEST_F(MirrorTest, AFlushGivesUpACopyWhoseBrickDiedAndCompletesOnTheOther) {
  start_bricks(2);
  VolumeOptions vo = options(2);
  vo.leg_timeout_ms = 300;
  vo.io_timeout_ms = 6000;
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  auto data = random_data(kBlock, 51);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));  // acknowledged by both, not synced
  bricks_[1]->stop();
  const auto start = std::chrono::steady_clock::now();
  PBRICK_ASSERT_OK(engine_->flush());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(4000))
      << "the FLUSH waited for the dead copy up to the I/O timeout";
  EXPECT_EQ(v.mirror()->state(1), CopyState::kStale);
  EXPECT_EQ(v.mirror()->state(0), CopyState::kInSync);
  std::vector<uint8_t> back(kBlock);
  PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
  EXPECT_EQ(back, data);
}

// Copies must fit the bricks; a label of a mirror refuses another copy count.
TEST_F(MirrorTest, CopiesAreCheckedAtOpenAndAgainstTheLabel) {
  start_bricks(2);
  for (uint32_t bad : {0u, 1u, 3u}) {
    auto v = Volume::Open(options(bad));
    ASSERT_FALSE(v.ok()) << bad;
    EXPECT_EQ(v.error().errnum(), EINVAL) << v.error().message();
  }
  { PBRICK_ASSERT_OK(Volume::Open(options(2))); }
  VolumeOptions stripe = options(2);
  stripe.layout = Layout::kStripe;
  auto v = Volume::Open(stripe);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.error().message().find("layout mirror by the label"), std::string::npos) << v.error().message();
}

// What brick `b`'s label block says: the newest label and the first bytes of
// its dirty bitmap, read straight from the brick.
struct SeenLabel {
  VolumeLabel label;
  std::vector<uint8_t> dirty;
};
Result<SeenLabel> label_on(const TestBrick& brick, uint64_t base = 0) {
  auto c = BrickClient::Connect(brick.client());
  if (!c) return c.error();
  uint64_t vaddr = *label_vaddr(base);
  auto m = (*c)->map(vaddr, proto::kMapShared);
  if (!m) return m.error();
  std::vector<uint8_t> bytes(kDirtyOffset + 8);
  PBRICK_TRY((*c)->read(m->rkey, m->remote_addr, bytes));
  auto r = read_label_slots(bytes);
  if (!r) return r.error();
  if (!r->label) return Error(ENOENT, "no label");
  return SeenLabel{*r->label, std::vector<uint8_t>(bytes.begin() + kDirtyOffset, bytes.end())};
}

// A brick of a 2-copy mirror dies: writes complete with no error once the
// leg timeout passed; before the first of them completed, the survivor's
// label recorded the dead brick stale (generation + 1) and the bitmap the
// written blocks, and only those; reads never touch the dead copy; the
// dirty bit of a block is written once, not per write.
TEST_F(MirrorTest, ADeadLegIsMarkedStaleDurablyBeforeTheWriteCompletes) {
  start_bricks(2);
  VolumeOptions vo = options(2);
  vo.leg_timeout_ms = 300;
  PBRICK_ASSERT_OK(open(vo));
  auto data = random_data(4 * kBlock, 3);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  auto before = label_on(*bricks_[0]);
  PBRICK_ASSERT_OK(before);
  EXPECT_EQ(before->label.bricks[1].stale_since, 0u);

  bricks_[1]->stop();
  auto more = random_data(4096, 4);
  auto t0 = std::chrono::steady_clock::now();
  PBRICK_ASSERT_OK(engine_->write(more.data(), more.size(), kBlock + 8192, false));  // block 1
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(300));
  // Durable before the write completed: the survivor's label says so now.
  auto after = label_on(*bricks_[0]);
  PBRICK_ASSERT_OK(after);
  EXPECT_EQ(after->label.generation, before->label.generation + 1);
  EXPECT_NE(after->label.bricks[1].stale_since, 0u);
  EXPECT_EQ(after->label.bricks[0].stale_since, 0u);
  EXPECT_EQ(after->dirty[0], 0x02) << "block 1 only";
  Volume& v = engine_->volume();
  EXPECT_EQ(v.mirror()->state(1), CopyState::kStale);
  EXPECT_EQ(v.dirty_count(), 1u);
  // More writes to block 1 and one to block 3: no further generation, one more bit.
  for (int k = 0; k < 3; k++) PBRICK_ASSERT_OK(engine_->write(more.data(), 4096, kBlock + k * 4096, false));
  PBRICK_ASSERT_OK(engine_->write(more.data(), 4096, 3 * kBlock, true));
  PBRICK_ASSERT_OK(engine_->flush());
  after = label_on(*bricks_[0]);
  PBRICK_ASSERT_OK(after);
  EXPECT_EQ(after->label.generation, before->label.generation + 1);
  EXPECT_EQ(after->dirty[0], 0x0a) << "blocks 1 and 3";
  EXPECT_EQ(v.dirty_count(), 2u);
  // Every byte reads back right, from the one in-sync copy.
  std::memcpy(data.data() + kBlock, more.data(), 4096);
  std::memcpy(data.data() + kBlock + 4096, more.data(), 4096);
  std::memcpy(data.data() + kBlock + 8192, more.data(), 4096);
  std::memcpy(data.data() + 3 * kBlock, more.data(), 4096);
  for (int round = 0; round < 3; round++) {
    std::vector<uint8_t> back(data.size());
    PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
    EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size())) << "round " << round;
  }
}

// Both copies of a block unreachable: the last in-sync copy is never given
// up; the write fails with EIO after the I/O timeout.
TEST_F(MirrorTest, TheLastInSyncCopyIsNeverGivenUp) {
  start_bricks(2);
  VolumeOptions vo = options(2);
  vo.leg_timeout_ms = 200;
  vo.io_timeout_ms = 1500;
  PBRICK_ASSERT_OK(open(vo));
  auto data = random_data(4096, 5);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  bricks_[1]->stop();
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 4096, false));
  EXPECT_EQ(engine_->volume().mirror()->state(1), CopyState::kStale);
  bricks_[0]->stop();
  Status st = engine_->write(data.data(), data.size(), 8192, false);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), EIO) << st.error().message();
  EXPECT_EQ(engine_->volume().mirror()->state(0), CopyState::kInSync);
}

// 4 bricks, 2 copies (RAID10-like): bricks 0 and 2 down hold no block's
// both copies, so every write and read goes on without error; then brick 3
// down too: block 2 (bricks 2 and 3) has no copy left and fails with EIO
// after the I/O timeout, never returning other data.
TEST_F(MirrorTest, FourBricksTwoCopiesSurviveAnyBricksThatShareNoBlock) {
  start_bricks(4);
  VolumeOptions vo = options(2, 16 * kMiB);
  vo.leg_timeout_ms = 200;
  vo.io_timeout_ms = 1500;
  PBRICK_ASSERT_OK(open(vo));
  auto data = random_data(8 * kBlock, 11);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  bricks_[0]->stop();
  bricks_[2]->stop();
  auto more = random_data(8 * 4096, 12);
  for (uint64_t i = 0; i < 8; i++) {
    PBRICK_ASSERT_OK(engine_->write(more.data() + i * 4096, 4096, i * kBlock, false));
    std::memcpy(data.data() + i * kBlock, more.data() + i * 4096, 4096);
  }
  PBRICK_ASSERT_OK(engine_->flush());
  std::vector<uint8_t> back(data.size());
  PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size()));
  EXPECT_EQ(engine_->volume().dirty_count(), 8u);
  bricks_[3]->stop();
  std::vector<uint8_t> one(4096, 0xee);
  Status st = engine_->read(one.data(), one.size(), 2 * kBlock);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), EIO) << st.error().message();
  EXPECT_EQ(one, std::vector<uint8_t>(4096, 0xee)) << "no bytes were returned";
  PBRICK_ASSERT_OK(engine_->read(one.data(), one.size(), 1 * kBlock));  // block 1: bricks 1 and 2 -> brick 1
  EXPECT_EQ(crc32c(one.data(), 4096), crc32c(data.data() + kBlock, 4096));
}

// Checks `done` every `step` until it holds (true) or `limit` has passed
// (false): for what another thread (the resync, a reconnect) brings about.
template <typename Predicate>
bool wait_until(Predicate done, std::chrono::milliseconds limit,
                std::chrono::milliseconds step = std::chrono::milliseconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(step);
  }
  return true;
}

// Waits up to `ms` for brick `b`'s copies to be in sync.
bool wait_in_sync(const Volume& v, uint32_t b, int ms = 20000) {
  return wait_until([&] { return v.mirror()->in_sync(b); }, std::chrono::milliseconds(ms));
}

// A brick of a 2-copy mirror is down while three blocks are written, then
// comes back with the same store: the resync copies those three blocks
// only, while a writer keeps writing to them and others (no write lost or
// overwritten by an older copy); then the label on both bricks says in
// sync at a new generation with the bitmap clear, the two bricks hold
// identical copies, and with the *other* brick down every byte reads back
// right from the resynced one.
TEST_F(MirrorTest, AResyncCopiesOnlyTheDirtyBlocksWhileWritesGoOn) {
  start_bricks(2);
  VolumeOptions vo = options(2);
  vo.leg_timeout_ms = 300;
  vo.io_timeout_ms = 3000;
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  const uint64_t blocks = v.block_count();
  auto data = random_data(blocks * kBlock, 21);
  for (uint64_t i = 0; i < blocks; i++) PBRICK_ASSERT_OK(engine_->write(data.data() + i * kBlock, kBlock, i * kBlock, false));
  PBRICK_ASSERT_OK(engine_->flush());

  bricks_[1]->stop();
  std::mt19937 rng(22);
  auto write_at = [&](uint64_t offset, size_t len) -> Status {
    std::vector<uint8_t> chunk(len);
    for (auto& c : chunk) c = static_cast<uint8_t>(rng());
    PBRICK_TRY(engine_->write(chunk.data(), len, offset, false));
    std::memcpy(data.data() + offset, chunk.data(), len);
    return Status::Ok();
  };
  for (uint64_t block : {1, 3, 5}) PBRICK_ASSERT_OK(write_at(block * kBlock + 4096 * block, 8192));
  ASSERT_EQ(v.mirror()->state(1), CopyState::kStale);
  ASSERT_EQ(v.dirty_count(), 3u);
  auto stale_label = label_on(*bricks_[0]);
  PBRICK_ASSERT_OK(stale_label);

  PBRICK_ASSERT_OK(bricks_[1]->start());
  engine_->resync()->poke();
  // Writes go on during the resync, to the blocks being copied and others.
  uint64_t writes = 0;
  // Until the resync began, only to the three dirty blocks (a write to
  // another block while it is still stale would dirty that one too).
  const uint64_t dirty_ones[] = {1, 3, 5};
  while (!v.mirror()->in_sync(1) && writes < 20000) {
    bool began = v.mirror()->state(1) != CopyState::kStale;
    uint64_t block = (began && writes % 4 == 0) ? rng() % blocks : dirty_ones[writes % 3];
    PBRICK_ASSERT_OK(write_at(block * kBlock + (rng() % 500) * 4096, 4096));
    writes++;
  }
  ASSERT_TRUE(wait_in_sync(v, 1)) << "brick 1 never came back in sync";
  auto progress = v.mirror()->progress(1);
  EXPECT_EQ(progress.total, 3u) << "only the blocks written while it was down";
  EXPECT_EQ(progress.done, 3u);
  // The label that says in sync comes first; the resync's thread clears the
  // bitmap right after it (Volume::finish_resync), so wait for that too.
  EXPECT_TRUE(wait_until([&] { return v.dirty_count() == 0; }, std::chrono::seconds(5)))
      << v.dirty_count() << " blocks still dirty";
  for (int k = 0; k < 50; k++) PBRICK_ASSERT_OK(write_at((rng() % blocks) * kBlock + (rng() % 500) * 4096, 4096));
  PBRICK_ASSERT_OK(engine_->flush());

  for (uint32_t b = 0; b < 2; b++) {
    auto l = label_on(*bricks_[b]);
    PBRICK_ASSERT_OK(l);
    EXPECT_EQ(l->label.generation, stale_label->label.generation + 1) << "brick " << b;
    EXPECT_EQ(l->label.bricks[1].stale_since, 0u) << "brick " << b;
    EXPECT_EQ(l->dirty, std::vector<uint8_t>(8, 0)) << "brick " << b;
  }
  // Copy 0 of block i is on brick i mod 2 at slot (i div 2) * 2, copy 1 on
  // the other brick at the next slot: both hold the written bytes.
  Placement pl{2, 2};
  auto want = expected_blocks(pl, data, blocks);
  EXPECT_EQ(brick_blocks(0), want[0]);
  EXPECT_EQ(brick_blocks(1), want[1]);

  bricks_[0]->stop();
  std::vector<uint8_t> back(data.size());
  for (uint64_t i = 0; i < blocks; i++) PBRICK_ASSERT_OK(engine_->read(back.data() + i * kBlock, kBlock, i * kBlock));
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size()));
  EXPECT_EQ(v.mirror()->state(0), CopyState::kInSync) << "reads do not mark a copy stale";
}

// Blocks share write counters (block mod MirrorState::kWriteSlots): a
// writer that keeps writing to another block of the counter a resync holds
// waits for that block's copy like a writer of the block itself, or every
// copy would see a write begin meanwhile, be made again until the I/O
// timeout, and the resync would fail and start over for ever.
TEST_F(MirrorTest, AResyncFinishesWhileAWriterKeepsWritingABlockThatSharesItsCounter) {
  start_bricks(2);
  constexpr uint64_t kSlots = MirrorState::kWriteSlots;
  VolumeOptions vo = options(2, (kSlots + 4) * kBlock);  // thin: only the blocks written take space
  vo.leg_timeout_ms = 200;
  vo.io_timeout_ms = 1500;
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  const uint64_t copied = 1, neighbour = copied + kSlots;
  auto data = random_data(kBlock, 41);
  PBRICK_ASSERT_OK(engine_->write(data.data(), kBlock, neighbour * kBlock, false));
  bricks_[1]->stop();
  PBRICK_ASSERT_OK(engine_->write(data.data(), kBlock, copied * kBlock, false));
  ASSERT_EQ(v.mirror()->state(1), CopyState::kStale);
  ASSERT_EQ(v.dirty_count(), 1u);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> writes{0};
  std::thread writer([&] {
    std::vector<uint8_t> chunk(4096, 0x77);
    while (!stop.load()) {
      Status st = engine_->write(chunk.data(), chunk.size(), neighbour * kBlock + (writes % 500) * 4096, false);
      if (!st) {
        ADD_FAILURE() << st.error().message();
        return;
      }
      writes++;
    }
  });
  // The writer is under way before the resync can begin.
  EXPECT_TRUE(wait_until([&] { return writes.load() >= 50; }, std::chrono::seconds(5)));
  PBRICK_ASSERT_OK(bricks_[1]->start());
  engine_->resync()->poke();
  const bool in_sync = wait_in_sync(v, 1, 8000);
  stop.store(true);
  writer.join();
  EXPECT_TRUE(in_sync) << "the resync never finished; " << writes.load() << " writes to block " << neighbour;
}

// The gateway goes away while a copy is stale and comes back with the brick
// reachable again: the label keeps the copy stale (never read: its bytes
// differ), and the resync of the new attachment brings it in sync.
TEST_F(MirrorTest, AReattachKeepsAStaleCopyStaleUntilItsResync) {
  start_bricks(2);
  VolumeOptions vo = options(2);
  vo.leg_timeout_ms = 300;
  PBRICK_ASSERT_OK(open(vo));
  auto data = random_data(4 * kBlock, 31);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  bricks_[1]->stop();
  auto more = random_data(4096, 32);
  PBRICK_ASSERT_OK(engine_->write(more.data(), more.size(), 2 * kBlock, false));
  std::memcpy(data.data() + 2 * kBlock, more.data(), 4096);
  engine_.reset();

  PBRICK_ASSERT_OK(bricks_[1]->start());
  auto volume = Volume::Open(vo);
  PBRICK_ASSERT_OK(volume);
  EXPECT_EQ((*volume)->mirror()->state(1), CopyState::kStale);
  EXPECT_EQ((*volume)->dirty_count(), 1u);
  // No resync yet: every read comes from brick 0.
  std::vector<IoPiece> pieces;
  for (int k = 0; k < 4; k++) plan_rw(**volume, false, 2 * kBlock, 4096, nullptr, nullptr, pieces);
  for (const IoPiece& p : pieces) EXPECT_EQ(p.brick, 0u);
  auto engine = Engine::Start(std::move(*volume), {.queues = 1, .depth = 8});
  PBRICK_ASSERT_OK(engine);
  engine_ = std::move(*engine);
  ASSERT_TRUE(wait_in_sync(engine_->volume(), 1));
  EXPECT_EQ(engine_->volume().mirror()->progress(1).total, 1u);
  bricks_[0]->stop();
  std::vector<uint8_t> back(data.size());
  PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size()));
}

// A label update that fails half way: the label that calls brick 1 in sync
// again (its resync done) reaches brick 0, not brick 1; the one that then
// calls brick 1 stale reaches neither. Brick 0 is left holding a label newer
// than any this attachment committed, saying both copies are in sync. A
// write that then skips brick 1 must not rest on a bit the next attachment
// would ignore for that label: the labels are written again first, and a
// reattach finds brick 1 stale with the block dirty.
TEST_F(MirrorTest, AMissAfterAHalfWrittenLabelUpdateWritesTheLabelsAgainFirst) {
  start_bricks(2);
  VolumeOptions vo = options(2);
  uint64_t base_generation = 0;
  {
    auto volume = Volume::Open(vo);
    PBRICK_ASSERT_OK(volume);
    Volume& v = **volume;
    PBRICK_ASSERT_OK(v.mark_stale(1));
    PBRICK_ASSERT_OK(v.begin_resync(1));
    int brick0_writes = 0;
    v.fail_label_writes_for_testing([&](uint32_t b) { return b == 1 || ++brick0_writes > 1; });
    Status joined = v.finish_resync(1);
    ASSERT_FALSE(joined.ok()) << "no brick took the last label";
    v.abort_resync(1, "test");
    v.fail_label_writes_for_testing(nullptr);
    auto half = label_on(*bricks_[0]);
    PBRICK_ASSERT_OK(half);
    ASSERT_EQ(half->label.bricks[1].stale_since, 0u) << "brick 0 holds the label that calls brick 1 in sync";
    base_generation = half->label.generation;
    ASSERT_EQ(v.mirror()->state(1), CopyState::kStale);
    auto missed = v.record_miss(3, 1);
    PBRICK_ASSERT_OK(missed);
    EXPECT_TRUE(*missed);
  }
  auto after = label_on(*bricks_[0]);
  PBRICK_ASSERT_OK(after);
  EXPECT_GT(after->label.generation, base_generation);
  EXPECT_NE(after->label.bricks[1].stale_since, 0u);
  EXPECT_EQ(after->dirty[0], 1u << 3);
  auto again = Volume::Open(vo);
  PBRICK_ASSERT_OK(again);
  EXPECT_EQ((*again)->mirror()->state(1), CopyState::kStale) << "its copy of block 3 is old";
  EXPECT_TRUE((*again)->dirty(3));
}

// Brick 1 was stale (block 3's bit is in brick 0's bitmap alone) and is
// resynced; the label update that calls it in sync cannot reach brick 0,
// which goes stale in the same update. Brick 1 is now the in-sync copy whose
// bitmap the next attachment reads, so it must hold block 3's bit before it
// joins: brick 0 then misses a write to block 3, which finds the bit set and
// records nothing more, and the next attachment, which reads brick 1's
// bitmap, must still see the block dirty or brick 0's resync would skip it.
TEST_F(MirrorTest, ABrickJoiningWhileTheOtherGoesStaleHoldsTheBitsItsLaterMissesRelyOn) {
  start_bricks(2);
  auto volume = Volume::Open(options(2));
  PBRICK_ASSERT_OK(volume);
  Volume& v = **volume;
  PBRICK_ASSERT_OK(v.mark_stale(1, 3));
  PBRICK_ASSERT_OK(v.begin_resync(1));
  v.fail_label_writes_for_testing([](uint32_t b) { return b == 0; });
  PBRICK_ASSERT_OK(v.finish_resync(1));
  v.fail_label_writes_for_testing(nullptr);
  ASSERT_EQ(v.mirror()->state(1), CopyState::kInSync);
  ASSERT_EQ(v.mirror()->state(0), CopyState::kStale);
  auto missed = v.record_miss(3, 0);  // a write to block 3 reached brick 1 alone
  PBRICK_ASSERT_OK(missed);
  EXPECT_TRUE(*missed);
  auto held = label_on(*bricks_[1]);
  PBRICK_ASSERT_OK(held);
  EXPECT_EQ(held->dirty[0] & (1u << 3), 1u << 3) << "brick 1's bitmap lacks block 3";
}

// A write that failed on a copy it could not give up (the last in-sync copy
// of some block) leaves that copy different from the others in a block no
// bit names. Going stale later for another block's miss, the copy is given
// up whole, so its resync copies that block too; once it was, a detach with
// it back in sync is clean (its failures are accounted for).
TEST_F(MirrorTest, ACopyWhoseWritesFailedGoesStaleWhole) {
  start_bricks(2);
  auto volume = Volume::Open(options(2));
  PBRICK_ASSERT_OK(volume);
  Volume& v = **volume;
  v.note_write_failed(1);
  PBRICK_ASSERT_OK(v.mark_stale(1, 3));
  EXPECT_EQ(v.mirror()->state(1), CopyState::kStale);
  EXPECT_EQ(v.dirty_count(), v.block_count()) << "every block has a copy on brick 1";
  auto held = label_on(*bricks_[0]);
  PBRICK_ASSERT_OK(held);
  EXPECT_EQ(held->dirty[0], 0xff) << "the bits are durable on brick 0";

  PBRICK_ASSERT_OK(v.begin_resync(1));
  PBRICK_ASSERT_OK(v.finish_resync(1));  // as if every block were copied
  ASSERT_EQ(v.mirror()->state(1), CopyState::kInSync);
  PBRICK_ASSERT_OK(v.close());
}

// A copy that missed a write goes stale with the block's dirty bit already
// in the other copies' bitmaps: here the label that would call it stale is
// never written (as if the gateway died right before it), and the bit is
// there - written after the label, a crash between the two would leave a
// stale copy whose resync skips the block.
TEST_F(MirrorTest, TheMissedBlocksBitIsDurableBeforeTheLabelCallsTheCopyStale) {
  start_bricks(2);
  auto volume = Volume::Open(options(2));
  PBRICK_ASSERT_OK(volume);
  Volume& v = **volume;
  v.fail_label_writes_for_testing([](uint32_t) { return true; });
  Status st = v.mark_stale(1, 5);
  ASSERT_FALSE(st.ok()) << "no brick took the label";
  v.fail_label_writes_for_testing(nullptr);
  auto held = label_on(*bricks_[0]);
  PBRICK_ASSERT_OK(held);
  EXPECT_EQ(held->label.bricks[1].stale_since, 0u) << "the label calling brick 1 stale was written";
  EXPECT_EQ(held->dirty[0], 1u << 5) << "brick 0's bitmap lacks the missed block";
  EXPECT_EQ(v.mirror()->state(1), CopyState::kInSync);
  EXPECT_FALSE(v.dirty(5)) << "set in memory though no label made it count";
}

// Two of three copies go stale; a write reaches only brick 1, whose bitmap
// records it. Brick 0 comes back and is resynced while brick 2 is still
// away: brick 0, in sync again, must hold that bit too, since the next
// attachment may take the bitmap from it alone (here: the first in-sync
// brick). Otherwise brick 2's resync skips the block and brick 2, called in
// sync, serves its old bytes.
TEST_F(MirrorTest, ABrickBackInSyncHoldsTheMissesOfACopyStillStale) {
  start_bricks(3);
  VolumeOptions vo = options(3, 12 * kMiB);
  vo.leg_timeout_ms = 300;
  vo.io_timeout_ms = 3000;
  PBRICK_ASSERT_OK(open(vo));
  const uint64_t blocks = engine_->volume().block_count();
  auto data = random_data(blocks * kBlock, 41);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());

  bricks_[0]->stop();
  bricks_[2]->stop();
  const uint64_t missed = 3;
  auto more = random_data(8192, 42);
  PBRICK_ASSERT_OK(engine_->write(more.data(), more.size(), missed * kBlock + 4096, false));
  PBRICK_ASSERT_OK(engine_->flush());
  std::memcpy(data.data() + missed * kBlock + 4096, more.data(), more.size());
  ASSERT_EQ(engine_->volume().mirror()->state(0), CopyState::kStale);
  ASSERT_EQ(engine_->volume().mirror()->state(2), CopyState::kStale);

  PBRICK_ASSERT_OK(bricks_[0]->start());
  engine_->resync()->poke();
  ASSERT_TRUE(wait_in_sync(engine_->volume(), 0)) << "brick 0 never came back in sync";
  ASSERT_EQ(engine_->volume().mirror()->state(2), CopyState::kStale);
  engine_.reset();

  for (uint32_t b : {0u, 1u}) {
    auto l = label_on(*bricks_[b]);
    PBRICK_ASSERT_OK(l);
    EXPECT_EQ(l->label.bricks[0].stale_since, 0u) << "brick " << b;
    EXPECT_NE(l->label.bricks[2].stale_since, 0u) << "brick " << b;
    EXPECT_EQ((l->dirty[missed / 8] >> (missed % 8)) & 1, 1) << "brick " << b << "'s bitmap lacks block " << missed;
  }

  PBRICK_ASSERT_OK(bricks_[2]->start());
  auto volume = Volume::Open(vo);
  PBRICK_ASSERT_OK(volume);
  EXPECT_EQ((*volume)->mirror()->state(2), CopyState::kStale);
  EXPECT_TRUE((*volume)->dirty(missed));
  auto engine = Engine::Start(std::move(*volume), {.queues = 1, .depth = 8});
  PBRICK_ASSERT_OK(engine);
  engine_ = std::move(*engine);
  ASSERT_TRUE(wait_in_sync(engine_->volume(), 2)) << "brick 2 never came back in sync";
  // Brick 2 alone: every read is its copy.
  bricks_[0]->stop();
  bricks_[1]->stop();
  std::vector<uint8_t> back(data.size());
  PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
  EXPECT_EQ(crc32c(back.data() + missed * kBlock, kBlock), crc32c(data.data() + missed * kBlock, kBlock))
      << "brick 2 serves block " << missed << " as it was before it went stale";
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size()));
}

// A read-only attachment shares the volume with its writer, whose labels and
// copies they are: with a copy stale and its brick back, it reads the other
// copy and resyncs nothing; attached degraded, it marks nothing stale on the
// bricks. Labels and blocks stay as the writer left them.
TEST_F(MirrorTest, AReadOnlyAttachmentNeitherResyncsNorMarksACopyStale) {
  start_bricks(2);
  VolumeOptions vo = options(2, 8 * kMiB);
  vo.leg_timeout_ms = 300;
  vo.io_timeout_ms = 3000;
  PBRICK_ASSERT_OK(open(vo));
  auto data = random_data(8 * kMiB, 51);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  bricks_[1]->stop();
  auto more = random_data(4096, 52);
  PBRICK_ASSERT_OK(engine_->write(more.data(), more.size(), kBlock, false));
  PBRICK_ASSERT_OK(engine_->flush());
  std::memcpy(data.data() + kBlock, more.data(), more.size());
  engine_.reset();
  PBRICK_ASSERT_OK(bricks_[1]->start());
  auto before0 = label_on(*bricks_[0]);
  auto before1 = label_on(*bricks_[1]);
  PBRICK_ASSERT_OK(before0);
  PBRICK_ASSERT_OK(before1);
  const auto blocks1 = brick_blocks(1);

  VolumeOptions ro = vo;
  ro.read_only = true;
  PBRICK_ASSERT_OK(open(ro));
  engine_->resync()->poke();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_EQ(engine_->volume().mirror()->state(1), CopyState::kStale);
  std::vector<uint8_t> back(data.size());
  PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size()));
  engine_.reset();
  EXPECT_EQ(brick_blocks(1), blocks1) << "the stale copy was written";
  for (uint32_t b : {0u, 1u}) {
    auto l = label_on(*bricks_[b]);
    PBRICK_ASSERT_OK(l);
    EXPECT_EQ(l->label.generation, (b == 0 ? before0 : before1)->label.generation) << "brick " << b;
    EXPECT_EQ(l->dirty, (b == 0 ? before0 : before1)->dirty) << "brick " << b;
  }

  // Degraded: the writer brings brick 1 back in sync, then brick 1 goes
  // away and a reader attaches without it.
  PBRICK_ASSERT_OK(open(vo));
  ASSERT_TRUE(wait_in_sync(engine_->volume(), 1));
  engine_.reset();
  bricks_[1]->stop();
  auto in_sync = label_on(*bricks_[0]);
  PBRICK_ASSERT_OK(in_sync);
  ro.degraded = true;
  PBRICK_ASSERT_OK(open(ro));
  EXPECT_EQ(engine_->volume().mirror()->state(1), CopyState::kStale);
  PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size()));
  engine_.reset();
  auto after = label_on(*bricks_[0]);
  PBRICK_ASSERT_OK(after);
  EXPECT_EQ(after->label.generation, in_sync->label.generation);
  EXPECT_EQ(after->label.bricks[1].stale_since, 0u) << "the reader marked brick 1 stale";
}

// A stale brick back with a label of this attachment's generation that
// disagrees with it (another attachment reached only that brick, degraded,
// marked the others stale with the same next generation, and wrote there):
// refused when reached again, never resynced over as if merely stale.
TEST_F(MirrorTest, AStaleBrickBackWithAnotherWritersLabelOfTheSameGenerationIsRefused) {
  start_bricks(2);
  VolumeOptions vo = options(2, 8 * kMiB);
  vo.leg_timeout_ms = 300;
  vo.io_timeout_ms = 2000;
  PBRICK_ASSERT_OK(open(vo));
  auto data = random_data(8 * kMiB, 61);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  auto in_sync = label_on(*bricks_[1]);
  PBRICK_ASSERT_OK(in_sync);
  bricks_[1]->stop();
  PBRICK_ASSERT_OK(engine_->write(data.data(), 4096, 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  engine_.reset();
  auto ours = label_on(*bricks_[0]);
  PBRICK_ASSERT_OK(ours);
  ASSERT_EQ(ours->label.generation, in_sync->label.generation + 1);
  ASSERT_NE(ours->label.bricks[1].stale_since, 0u);

  vo.degraded = true;
  auto volume = Volume::Open(vo);
  PBRICK_ASSERT_OK(volume);
  ASSERT_EQ((*volume)->mirror()->state(1), CopyState::kStale);
  // What the other attachment left on brick 1: the next generation, brick 0
  // stale, brick 1 in sync.
  PBRICK_ASSERT_OK(bricks_[1]->start());
  VolumeLabel theirs = in_sync->label;
  theirs.generation = ours->label.generation;
  theirs.bricks[0].stale_since = ours->label.bricks[1].stale_since;
  {
    auto c = BrickClient::Connect(bricks_[1]->client());
    PBRICK_ASSERT_OK(c);
    PBRICK_ASSERT_OK(VolumeClaim::write_label_to(ClaimBrick{c->get(), "brick 1", 0}, 1, theirs));
  }
  Status reached = (*volume)->try_reach(1);
  ASSERT_FALSE(reached.ok()) << "brick 1 taken back as merely stale";
  EXPECT_EQ(reached.error().errnum(), kErrWrongStore);
  EXPECT_NE(reached.error().message().find("that calls brick 0 stale"), std::string::npos) << reached.error().message();
  EXPECT_EQ((*volume)->mirror()->state(1), CopyState::kStale);
}

// Reads of a 2-copy mirror while brick 1 is down and nothing is written (so
// it stays in sync): the first read that meets it moves to brick 0, and the
// reads after it leave brick 1 alone instead of each waiting the leg timeout
// for it again (mapping its copies, the volume just attached). Brick 0, now
// the one reachable copy, turns slow beyond the leg timeout: its replies are
// waited for (up to the I/O timeout), its connection is not torn down over
// and over. Brick 1 back: the resync thread finds it within seconds and reads
// use it again.
TEST_F(MirrorTest, ReadsLeaveAnUnreachableCopyAloneAndWaitForTheLastOne) {
  start_bricks(2);
  SlowLink link(bricks_[0]->client());
  PBRICK_ASSERT_OK(link.start());
  VolumeOptions vo = options(2, 16 * kMiB);
  vo.bricks[0] = link.client();
  vo.leg_timeout_ms = 500;
  vo.io_timeout_ms = 8000;
  PBRICK_ASSERT_OK(open(vo));
  constexpr uint64_t kBlocks = 8;
  auto data = random_data(kBlocks * kBlock, 41);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  engine_.reset();
  PBRICK_ASSERT_OK(open(vo));  // nothing mapped
  Volume& v = engine_->volume();

  bricks_[1]->stop();
  auto read_all = [&](int rounds, uint64_t blocks) {
    std::vector<uint8_t> back(4096);
    for (uint64_t i = 0; i < blocks; i++) {
      for (int r = 0; r < rounds; r++) {  // successive reads of a block take turns over its copies
        const uint64_t off = i * kBlock + static_cast<uint64_t>(r) * 4096;
        Status st = engine_->read(back.data(), back.size(), off);
        if (!st) return st;
        if (crc32c(back.data(), 4096) != crc32c(data.data() + off, 4096)) {
          return Status(Error(EILSEQ, "other data at " + std::to_string(off)));
        }
      }
    }
    return Status::Ok();
  };
  auto t0 = std::chrono::steady_clock::now();
  PBRICK_ASSERT_OK(read_all(4, kBlocks));
  // At most one read paid the leg timeout (32 reads, half of them brick 1's turn).
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1500));
  EXPECT_EQ(v.mirror()->state(1), CopyState::kInSync);
  EXPECT_FALSE(v.mirror()->reachable(1));

  link.set_delay(std::chrono::milliseconds(1200));
  t0 = std::chrono::steady_clock::now();
  PBRICK_ASSERT_OK(read_all(1, 2));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1200));
  link.set_delay(std::chrono::milliseconds(0));

  PBRICK_ASSERT_OK(bricks_[1]->start());
  EXPECT_TRUE(wait_until([&] { return v.mirror()->reachable(1); }, std::chrono::seconds(5)));
  std::set<uint32_t> read_bricks;
  std::vector<IoPiece> pieces;
  for (int k = 0; k < 4; k++) plan_rw(v, false, 0, 4096, nullptr, nullptr, pieces);
  for (const IoPiece& p : pieces) read_bricks.insert(p.brick);
  EXPECT_EQ(read_bricks, (std::set<uint32_t>{0, 1}));
  PBRICK_ASSERT_OK(read_all(2, kBlocks));
}

// VolumeOptions::resync_mib_per_s (--resync-rate): a resync of 4 dirty
// blocks (8 MiB) at 4 MiB/s takes about 2 s, where it takes milliseconds
// without a bound; then every byte reads back from the resynced copy alone.
TEST_F(MirrorTest, AResyncKeepsToItsRate) {
  start_bricks(2);
  VolumeOptions vo = options(2);
  vo.leg_timeout_ms = 300;
  vo.resync_mib_per_s = 4;
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  bricks_[1]->stop();
  auto data = random_data(4 * kBlock, 51);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  ASSERT_EQ(v.mirror()->state(1), CopyState::kStale);
  EXPECT_EQ(v.dirty_count(), 4u);

  PBRICK_ASSERT_OK(bricks_[1]->start());
  ASSERT_TRUE(wait_until([&] { return v.mirror()->state(1) != CopyState::kStale; }, std::chrono::seconds(5),
                         std::chrono::milliseconds(2)))
      << "no resync within 5 s";
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(wait_in_sync(v, 1));
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(took, std::chrono::milliseconds(1700));
  EXPECT_LT(took, std::chrono::milliseconds(6000));
  EXPECT_EQ(v.mirror()->progress(1).total, 4u);
  bricks_[0]->stop();
  std::vector<uint8_t> back(data.size());
  PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size()));
}

// A resync that fails part way (its brick stops again) leaves what it
// copied: the next one copies the dirty blocks it had not reached, and
// again those it had but that were written since - never fewer.
TEST_F(MirrorTest, AFailedResyncGoesOnWithTheBlocksItHadNotCopied) {
  start_bricks(2);
  VolumeOptions vo = options(2);
  vo.leg_timeout_ms = 300;
  vo.resync_mib_per_s = 8;  // 4 blocks a second: time to stop it part way
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  const uint64_t blocks = v.block_count();
  bricks_[1]->stop();
  auto data = random_data(blocks * kBlock, 61);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  ASSERT_EQ(v.mirror()->state(1), CopyState::kStale);
  ASSERT_EQ(v.dirty_count(), blocks);

  PBRICK_ASSERT_OK(bricks_[1]->start());
  engine_->resync()->poke();
  // Blocks are copied in order: at least the first 5 are on the brick when it stops.
  ASSERT_TRUE(wait_until([&] { return v.mirror()->progress(1).done >= 5; }, std::chrono::seconds(10),
                         std::chrono::milliseconds(2)));
  bricks_[1]->stop();
  ASSERT_TRUE(wait_until([&] { return v.mirror()->state(1) == CopyState::kStale; }, std::chrono::seconds(10)));
  // Block 0 was copied; written again while the copy is stale, it is copied again.
  auto again = random_data(kBlock, 62);
  PBRICK_ASSERT_OK(engine_->write(again.data(), kBlock, 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  std::memcpy(data.data(), again.data(), kBlock);

  PBRICK_ASSERT_OK(bricks_[1]->start());
  engine_->resync()->poke();
  ASSERT_TRUE(wait_in_sync(v, 1));
  const uint64_t total = v.mirror()->progress(1).total;
  EXPECT_LE(total, blocks - 5 + 1) << "the blocks the failed run copied were copied again";
  EXPECT_GE(total, 1u);
  EXPECT_TRUE(wait_until([&] { return v.dirty_count() == 0; }, std::chrono::seconds(5)));

  Placement pl{2, 2};
  EXPECT_EQ(brick_blocks(1), expected_blocks(pl, data, blocks)[1]);
  bricks_[0]->stop();
  std::vector<uint8_t> back(data.size());
  PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size()));
}

// A brick of a 2-copy mirror is replaced by an empty one while writes go
// on: every block is copied to it, the label names its store in that
// place, both bricks then hold identical copies, and with the other brick
// stopped every byte reads back from the new one. A brick that holds a label
// or serves a store of the volume is refused.
TEST_F(MirrorTest, AReplacedBrickGetsAFullCopyWhileWritesGoOn) {
  start_bricks(3);
  VolumeOptions vo = options(2, 16 * kMiB);
  vo.bricks.pop_back();  // bricks 0 and 1; brick 2 is the empty replacement
  vo.leg_timeout_ms = 300;
  vo.io_timeout_ms = 3000;
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  const uint64_t blocks = v.block_count();
  auto data = random_data(blocks * kBlock, 41);
  for (uint64_t i = 0; i < blocks - 1; i++) {  // the last block stays unwritten
    PBRICK_ASSERT_OK(engine_->write(data.data() + i * kBlock, kBlock, i * kBlock, false));
  }
  std::memset(data.data() + (blocks - 1) * kBlock, 0, kBlock);
  PBRICK_ASSERT_OK(engine_->flush());

  Status refused = v.replace_brick(1, bricks_[0]->client());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().errnum(), EEXIST) << refused.error().message();
  const Uuid old_store = label_on(*bricks_[1])->label.bricks[1].store;

  std::atomic<bool> stop{false};
  std::mt19937 rng(42);
  std::mutex data_mu;
  std::thread writer([&] {
    std::vector<uint8_t> chunk(4096);
    while (!stop.load()) {
      uint64_t offset = (rng() % (blocks - 1)) * kBlock + (rng() % 512) * 4096;
      for (auto& c : chunk) c = static_cast<uint8_t>(rng());
      Status st = engine_->write(chunk.data(), chunk.size(), offset, false);
      EXPECT_TRUE(st.ok()) << st.error().message();
      std::lock_guard lock(data_mu);
      std::memcpy(data.data() + offset, chunk.data(), chunk.size());
    }
  });
  PBRICK_ASSERT_OK(v.replace_brick(1, bricks_[2]->client()));
  EXPECT_NE(v.mirror()->state(1), CopyState::kInSync);
  engine_->resync()->poke();
  bool back = wait_in_sync(v, 1);
  stop = true;
  writer.join();
  ASSERT_TRUE(back) << "the replacement never came in sync";
  EXPECT_EQ(v.mirror()->progress(1).total, blocks) << "every block with a copy on it";
  PBRICK_ASSERT_OK(engine_->flush());

  auto l0 = label_on(*bricks_[0]);
  auto l2 = label_on(*bricks_[2]);
  PBRICK_ASSERT_OK(l0);
  PBRICK_ASSERT_OK(l2);
  EXPECT_EQ(l0->label.generation, l2->label.generation);
  EXPECT_NE(l0->label.bricks[1].store, old_store);
  EXPECT_EQ(l0->label.bricks[1].stale_since, 0u);
  EXPECT_EQ(l2->label.index, 1u);
  Placement pl{2, 2};
  auto want = expected_blocks(pl, data, blocks - 1);
  EXPECT_EQ(brick_blocks(0), want[0]);
  EXPECT_EQ(brick_blocks(2), want[1]);

  bricks_[0]->stop();
  std::vector<uint8_t> back_data(data.size());
  for (uint64_t i = 0; i < blocks; i++) {
    PBRICK_ASSERT_OK(engine_->read(back_data.data() + i * kBlock, kBlock, i * kBlock));
  }
  EXPECT_EQ(crc32c(back_data.data(), back_data.size()), crc32c(data.data(), data.size()));
}

// The host of a mirror's brick reboots under writes not synced yet (they
// may be lost there): the next FLUSH completes on the other copy, the
// rebooted one goes stale with every block of its copy dirty, and its
// resync copies all of them back.
TEST_F(MirrorTest, ABrickHostRebootUnderUnsyncedWritesMakesItsCopyStaleWhole) {
  start_bricks(2);
  VolumeOptions vo = options(2, 16 * kMiB);
  vo.leg_timeout_ms = 2000;
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  auto data = random_data(8 * kBlock, 51);
  for (uint64_t i = 0; i < 8; i++) PBRICK_ASSERT_OK(engine_->write(data.data() + i * kBlock, kBlock, i * kBlock, false));
  PBRICK_ASSERT_OK(engine_->flush());
  auto more = random_data(4096, 52);
  PBRICK_ASSERT_OK(engine_->write(more.data(), more.size(), 3 * kBlock, false));  // not synced
  std::memcpy(data.data() + 3 * kBlock, more.data(), 4096);

  bricks_[1]->stop();
  std::array<uint8_t, proto::kUuidSize> other_boot{};
  other_boot.fill(0x5a);
  PBRICK_ASSERT_OK(bricks_[1]->start("brick.store", other_boot));
  {
    // The reboot lost the unsynced write there: brick 1's copy of block 3
    // holds what it held before it.
    const Placement& pl = v.placement();
    uint64_t unit = pl.unit(3, 0);
    if (pl.brick_of(unit) != 1) unit = pl.unit(3, 1);
    auto c = BrickClient::Connect(bricks_[1]->client());
    PBRICK_ASSERT_OK(c);
    auto m = (*c)->map(v.block_vaddr(unit), proto::kMapWrite);
    PBRICK_ASSERT_OK(m);
    auto before = random_data(8 * kBlock, 51);  // the flushed data
    PBRICK_ASSERT_OK((*c)->write(m->rkey, m->remote_addr, {before.data() + 3 * kBlock, 4096}));
    PBRICK_ASSERT_OK((*c)->unmap(v.block_vaddr(unit)));
  }
  // The FLUSH reaches brick 1 again, learns of the reboot, and completes on brick 0.
  PBRICK_ASSERT_OK(engine_->flush());
  EXPECT_NE(v.mirror()->state(1), CopyState::kInSync);
  auto label = label_on(*bricks_[0]);  // recorded on brick 0 itself
  PBRICK_ASSERT_OK(label);
  EXPECT_NE(label->label.bricks[1].stale_since, 0u);
  engine_->resync()->poke();
  ASSERT_TRUE(wait_in_sync(v, 1));
  EXPECT_EQ(v.mirror()->progress(1).total, 8u) << "every block of its copy";
  bricks_[0]->stop();
  std::vector<uint8_t> back(data.size());
  for (uint64_t i = 0; i < 8; i++) PBRICK_ASSERT_OK(engine_->read(back.data() + i * kBlock, kBlock, i * kBlock));
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size()));
}

// A gateway restarted while a copy is stale does not remember the boot id of
// that brick's host; the label does. When the brick is reached again from
// another boot (at open, or later), writes it took before it went stale may
// have been lost there, beyond what the bitmap records: every block of the
// copy is dirty. From the boot it went stale in, only the missed block is.
TEST_F(MirrorTest, AStaleBricksHostRebootedWhileTheGatewayWasAwayIsCopiedWhole) {
  start_bricks(2);
  const uint64_t size = 16 * kMiB, blocks = size / kBlock;
  auto go_stale = [&](uint64_t base) {
    VolumeOptions vo = options(2, size, base);
    vo.leg_timeout_ms = 300;
    vo.io_timeout_ms = 3000;
    PBRICK_ASSERT_OK(open(vo));
    auto data = random_data(size, 61);
    PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
    PBRICK_ASSERT_OK(engine_->flush());
    bricks_[1]->stop();
    PBRICK_ASSERT_OK(engine_->write(data.data(), 4096, 5 * kBlock, false));
    ASSERT_EQ(engine_->volume().mirror()->state(1), CopyState::kStale);
    engine_.reset();
    auto l = label_on(*bricks_[0], base);
    PBRICK_ASSERT_OK(l);
    EXPECT_NE(l->label.bricks[1].stale_since, 0u);
    EXPECT_NE(l->label.bricks[1].boot_id, Uuid{}) << "the boot it went stale in";
  };
  std::array<uint8_t, proto::kUuidSize> boot_x{}, boot_y{};
  boot_x.fill(0x11);
  boot_y.fill(0x22);

  // Reached only after the open (a degraded attach): compared then.
  ASSERT_NO_FATAL_FAILURE(go_stale(0));
  {
    VolumeOptions degraded = options(2, size, 0);
    degraded.degraded = true;
    auto v = Volume::Open(degraded);
    PBRICK_ASSERT_OK(v);
    EXPECT_EQ((*v)->dirty_count(), 1u);
    PBRICK_ASSERT_OK(bricks_[1]->start("brick.store", boot_x));
    PBRICK_ASSERT_OK((*v)->try_reach(1));
    EXPECT_EQ((*v)->dirty_count(), blocks) << "every block of the copy";
  }
  // Reachable at the open, from another boot than the label's.
  ASSERT_NO_FATAL_FAILURE(go_stale(32 * kMiB));  // goes stale in boot x
  PBRICK_ASSERT_OK(bricks_[1]->start("brick.store", boot_y));
  {
    auto v = Volume::Open(options(2, size, 32 * kMiB));
    PBRICK_ASSERT_OK(v);
    EXPECT_EQ((*v)->mirror()->state(1), CopyState::kStale);
    EXPECT_EQ((*v)->dirty_count(), blocks) << "every block of the copy";
  }
  // From the boot it went stale in: the bitmap holds everything it missed.
  ASSERT_NO_FATAL_FAILURE(go_stale(64 * kMiB));  // goes stale in boot y
  PBRICK_ASSERT_OK(bricks_[1]->start("brick.store", boot_y));
  {
    auto v = Volume::Open(options(2, size, 64 * kMiB));
    PBRICK_ASSERT_OK(v);
    EXPECT_EQ((*v)->dirty_count(), 1u);
    PBRICK_ASSERT_OK((*v)->try_reach(1));
    EXPECT_EQ((*v)->dirty_count(), 1u);
  }
}

// A discard whose FREE cannot reach one copy's brick (gone past the leg
// timeout) gives that copy up as a write would - stale, the block dirty -
// and completes: otherwise the freed copy would read zeros and the other
// its old bytes, both called in sync.
TEST_F(MirrorTest, ADiscardThatCannotReachACopyMakesItStale) {
  start_bricks(2);
  VolumeOptions vo = options(2);
  vo.leg_timeout_ms = 300;
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  auto data = random_data(2 * kBlock, 72);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  bricks_[1]->stop();
  Status discarded = engine_->discard(kBlock, 0, false);
  PBRICK_ASSERT_OK(discarded);
  EXPECT_EQ(v.mirror()->state(1), CopyState::kStale);
  EXPECT_TRUE(v.dirty(0));
  PBRICK_ASSERT_OK(bricks_[1]->start());
  engine_->resync()->poke();
  ASSERT_TRUE(wait_in_sync(v, 1));
  bricks_[0]->stop();
  std::vector<uint8_t> back(2 * kBlock);
  PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
  std::vector<uint8_t> want(data);
  std::memset(want.data(), 0, kBlock);
  EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(want.data(), want.size())) << "brick 1 alone reads the discard";
}

// The host of a mirror's brick reboots while one loop's connection holds a
// write it has not synced; another loop, whose connection there holds none,
// reaches the brick first (a read). The copy must be given up then - not
// when the first loop happens to reconnect - or reads on the second loop
// would take the rebooted copy, which may have lost that write, for current.
TEST_F(MirrorTest, AnyLoopThatFindsACopysHostRebootedGivesTheCopyUp) {
  start_bricks(2);
  VolumeOptions vo = options(2, 16 * kMiB);
  vo.leg_timeout_ms = 2000;
  PBRICK_ASSERT_OK(open(vo));  // two loops
  Volume& v = engine_->volume();
  auto data = random_data(2 * kBlock, 73);
  std::vector<uint8_t> back(kBlock);
  PBRICK_ASSERT_OK(engine_->read(back.data(), 4096, 0));  // this thread: loop 0
  std::mutex mu;
  std::condition_variable cv;
  int stage = 0;
  auto wait_stage = [&](int n) {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return stage >= n; });
  };
  auto set_stage = [&](int n) {
    std::lock_guard lock(mu);
    stage = n;
    cv.notify_all();
  };
  Status other_status;
  std::thread other([&] {  // loop 1
    other_status = engine_->write(data.data() + kBlock, kBlock, kBlock, false);
    if (other_status) other_status = engine_->flush();  // loop 1's connections hold nothing unsynced
    set_stage(1);
    wait_stage(2);
    for (int i = 0; i < 4 && other_status; i++) other_status = engine_->read(back.data(), kBlock, 0);
    set_stage(3);
  });
  wait_stage(1);
  PBRICK_ASSERT_OK(engine_->write(data.data(), kBlock, 0, false));  // loop 0: not synced
  bricks_[1]->stop();
  std::array<uint8_t, proto::kUuidSize> rebooted{};
  rebooted.fill(0x3c);
  Status restarted = bricks_[1]->start("brick.store", rebooted);
  set_stage(2);
  wait_stage(3);
  other.join();
  PBRICK_ASSERT_OK(restarted);
  PBRICK_ASSERT_OK(other_status);
  EXPECT_NE(v.mirror()->state(1), CopyState::kInSync) << "loop 1 read from the rebooted copy as if current";
  EXPECT_EQ(v.dirty_count(), v.block_count()) << "the whole copy is copied again";
  EXPECT_EQ(std::memcmp(back.data(), data.data(), kBlock), 0);
}

// A mirror's brick comes back serving another store (its disk swapped, no
// `replace`): that copy is gone, so it is given up (stale) and writes and
// reads go on with the other - not failed after the other copy took them,
// which would leave two in-sync copies that differ.
TEST_F(MirrorTest, ACopyWhoseBrickServesAnotherStoreIsGivenUp) {
  start_bricks(2);
  VolumeOptions vo = options(2, 8 * kMiB);
  vo.leg_timeout_ms = 300;
  vo.io_timeout_ms = 3000;
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  auto data = random_data(2 * kBlock, 74);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  bricks_[1]->stop();
  PBRICK_ASSERT_OK(bricks_[1]->start("swapped.store"));
  auto more = random_data(4096, 75);
  PBRICK_ASSERT_OK(engine_->write(more.data(), more.size(), kBlock, false));
  std::memcpy(data.data() + kBlock, more.data(), more.size());
  PBRICK_ASSERT_OK(engine_->flush());
  EXPECT_EQ(v.mirror()->state(1), CopyState::kStale);
  EXPECT_TRUE(v.dirty(1));
  std::vector<uint8_t> back(data.size());
  for (int i = 0; i < 2; i++) {  // both turns of the reads
    PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
    EXPECT_EQ(crc32c(back.data(), back.size()), crc32c(data.data(), data.size()));
  }
}

// A degraded attach (brick 1 missing) of a 3-copy mirror whose brick 2 went
// stale and has since rebooted: brick 2's whole copy is marked dirty on the
// bricks that are there - not on the missing one, which the attach gives up
// first (waiting for it would fail the attach).
TEST_F(MirrorTest, ADegradedAttachMarksARebootedStaleCopyWholeOnTheBricksThatAreThere) {
  start_bricks(3);
  VolumeOptions vo = options(3, 8 * kMiB);
  vo.leg_timeout_ms = 300;
  PBRICK_ASSERT_OK(open(vo));
  auto data = random_data(8 * kMiB, 76);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  bricks_[2]->stop();
  PBRICK_ASSERT_OK(engine_->write(data.data(), 4096, 0, false));
  ASSERT_EQ(engine_->volume().mirror()->state(2), CopyState::kStale);
  engine_.reset();
  std::array<uint8_t, proto::kUuidSize> rebooted{};
  rebooted.fill(0x77);
  PBRICK_ASSERT_OK(bricks_[2]->start("brick.store", rebooted));
  bricks_[1]->stop();
  vo.degraded = true;
  auto start = std::chrono::steady_clock::now();
  auto v = Volume::Open(vo);
  PBRICK_ASSERT_OK(v);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(300)) << "waited for brick 1";
  EXPECT_EQ((*v)->mirror()->state(1), CopyState::kStale);
  EXPECT_EQ((*v)->mirror()->state(2), CopyState::kStale);
  EXPECT_EQ((*v)->dirty_count(), (*v)->block_count()) << "brick 2's whole copy";
}

// A read-only attachment beside its writer: the writer gives brick 1's copy
// up (stale) while the reader runs, and goes on writing to brick 0 alone.
// The reader follows the writer's labels and stops reading brick 1's copy,
// whose bytes are old now - not until its next attach.
TEST_F(MirrorTest, AReadOnlyAttachmentStopsReadingACopyItsWriterMarkedStale) {
  start_bricks(2);
  VolumeOptions vo = options(2, 8 * kMiB);
  vo.leg_timeout_ms = 300;
  vo.io_timeout_ms = 3000;
  PBRICK_ASSERT_OK(open(vo));
  auto data = random_data(2 * kBlock, 77);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  VolumeOptions ro = vo;
  ro.read_only = true;
  auto reader = Volume::Open(ro);
  PBRICK_ASSERT_OK(reader);
  Volume& r = **reader;
  ASSERT_EQ(r.mirror()->state(1), CopyState::kInSync);

  bricks_[1]->stop();
  PBRICK_ASSERT_OK(engine_->write(data.data(), 4096, 0, false));  // the writer gives brick 1 up
  ASSERT_EQ(engine_->volume().mirror()->state(1), CopyState::kStale);
  PBRICK_ASSERT_OK(bricks_[1]->start());  // back, with its old copy

  PBRICK_ASSERT_OK(r.follow_writer_labels());
  EXPECT_EQ(r.mirror()->state(1), CopyState::kStale);
  std::vector<IoPiece> pieces;
  for (int k = 0; k < 4; k++) plan_rw(r, false, 0, 4096, nullptr, nullptr, pieces);
  for (const IoPiece& p : pieces) EXPECT_EQ(p.brick, 0u) << "a read planned on the stale copy";
  PBRICK_ASSERT_OK(r.follow_writer_labels());  // nothing newer: nothing changes
  EXPECT_EQ(r.mirror()->state(0), CopyState::kInSync);

  // The writer resyncs brick 1, then gives brick 0 up: that label reaches
  // brick 1 alone, a brick the reader does not read now. It still learns
  // it, reads brick 1 again and leaves brick 0 alone.
  engine_->resync()->poke();
  ASSERT_TRUE(wait_in_sync(engine_->volume(), 1));
  bricks_[0]->stop();
  PBRICK_ASSERT_OK(engine_->write(data.data(), 4096, kBlock, false));
  ASSERT_EQ(engine_->volume().mirror()->state(0), CopyState::kStale);
  PBRICK_ASSERT_OK(bricks_[0]->start());  // back, with its old copy
  PBRICK_ASSERT_OK(r.follow_writer_labels());
  EXPECT_EQ(r.mirror()->state(0), CopyState::kStale);
  EXPECT_EQ(r.mirror()->state(1), CopyState::kInSync);
  pieces.clear();
  for (int k = 0; k < 4; k++) plan_rw(r, false, kBlock, 4096, nullptr, nullptr, pieces);
  for (const IoPiece& p : pieces) EXPECT_EQ(p.brick, 1u) << "a read planned on the stale copy";
}

// A read-only attachment replaces no brick: it would write labels and a
// bitmap built on what it learned at attach over its writer's newer ones.
// Nothing on any brick changes.
TEST_F(MirrorTest, AReadOnlyAttachmentReplacesNoBrick) {
  start_bricks(3);
  VolumeOptions vo = options(2, 8 * kMiB);
  vo.bricks.pop_back();  // bricks 0 and 1; brick 2 is an empty one
  PBRICK_ASSERT_OK(open(vo));
  auto data = random_data(kBlock, 78);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  VolumeOptions ro = vo;
  ro.read_only = true;
  auto reader = Volume::Open(ro);
  PBRICK_ASSERT_OK(reader);
  auto before = label_on(*bricks_[0]);
  PBRICK_ASSERT_OK(before);

  Status refused = (*reader)->replace_brick(1, bricks_[2]->client());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().errnum(), EROFS) << refused.error().message();
  auto after = label_on(*bricks_[0]);
  PBRICK_ASSERT_OK(after);
  EXPECT_EQ(after->label.generation, before->label.generation);
  EXPECT_EQ(after->label.bricks[1].store, before->label.bricks[1].store);
  EXPECT_EQ(after->label.bricks[1].stale_since, 0u);
  EXPECT_EQ(after->dirty, before->dirty);
  EXPECT_EQ((*reader)->mirror()->state(1), CopyState::kInSync);
  EXPECT_FALSE(label_on(*bricks_[2]).ok()) << "the empty brick got a label";
}

// A connection of this attachment to a brick from before its copy went
// stale (one a loop gave up as too slow, whose writes the brick may still
// hold) is cut off before the resync copies anything: a write it carried
// must not land after its block was copied. The resync's first FENCE, under
// a writer id drawn for it, closes it at the brick.
TEST_F(MirrorTest, AResyncCutsTheConnectionsFromBeforeTheCopyWentStaleOff) {
  start_bricks(2);
  VolumeOptions vo = options(2, 8 * kMiB);
  vo.resync_mib_per_s = 1;  // 2 s a block: the resync is still copying when looked at
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  auto data = random_data(2 * kBlock, 79);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  auto earlier = BrickClient::Connect(v.writer_options(1, 4242));
  PBRICK_ASSERT_OK(earlier);
  ASSERT_TRUE((*earlier)->fenced());
  PBRICK_ASSERT_OK((*earlier)->stat());

  PBRICK_ASSERT_OK(v.mark_stale(1));
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));  // both blocks dirty
  engine_->resync()->poke();
  ASSERT_TRUE(wait_until([&] { return v.mirror()->state(1) == CopyState::kResyncing; }, std::chrono::seconds(10)));
  // Cut off by the time the copy turned resyncing, before its blocks are copied.
  EXPECT_FALSE((*earlier)->stat().ok()) << "a connection from before the copy went stale outlived its resync's start";
  EXPECT_LT(v.mirror()->progress(1).done, 2u);
  ASSERT_TRUE(wait_in_sync(v, 1)) << "brick 1 never came back in sync";
  // The volume's own connections reconnect under the new writer id.
  PBRICK_ASSERT_OK(engine_->write(data.data(), 4096, kBlock, false));
  PBRICK_ASSERT_OK(engine_->flush());
  std::vector<uint8_t> back(4096);
  for (int k = 0; k < 4; k++) PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), kBlock));
  EXPECT_EQ(std::memcmp(back.data(), data.data(), back.size()), 0);
}

// The resync reads a block from an in-sync copy whose host rebooted since
// that copy was known complete (what it took unsynced may be gone there):
// the copy is given up first, and the block comes from another one.
TEST_F(MirrorTest, AResyncDoesNotCopyFromACopyWhoseHostRebooted) {
  start_bricks(3);
  VolumeOptions vo = options(3, 8 * kMiB);
  vo.leg_timeout_ms = 300;
  vo.io_timeout_ms = 3000;
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  auto data = random_data(kBlock, 80);
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));
  PBRICK_ASSERT_OK(engine_->flush());
  bricks_[2]->stop();  // no resync can start before brick 0 rebooted
  PBRICK_ASSERT_OK(engine_->write(data.data(), 4096, 4096, false));  // misses brick 2: block 0 dirty
  PBRICK_ASSERT_OK(engine_->flush());
  ASSERT_EQ(v.mirror()->state(2), CopyState::kStale);
  // Brick 0 (the copy the resync reads block 0 from first) comes back under
  // another boot, having lost that last write; no I/O of the volume's has
  // met it since.
  bricks_[0]->stop();
  std::array<uint8_t, proto::kUuidSize> rebooted{};
  rebooted.fill(0x5d);
  PBRICK_ASSERT_OK(bricks_[0]->start("brick.store", rebooted));
  {
    auto c = BrickClient::Connect(bricks_[0]->client());
    PBRICK_ASSERT_OK(c);
    auto m = (*c)->map(v.block_vaddr(v.placement().unit(0, 0)), proto::kMapWrite);
    PBRICK_ASSERT_OK(m);
    std::vector<uint8_t> before(data.begin() + 4096, data.begin() + 8192);
    PBRICK_ASSERT_OK((*c)->write(m->rkey, m->remote_addr + 4096, before));
    PBRICK_ASSERT_OK((*c)->read(m->rkey, m->remote_addr, before));  // a sync-read
  }
  PBRICK_ASSERT_OK(bricks_[2]->start());

  engine_->resync()->poke();
  ASSERT_TRUE(wait_in_sync(v, 2)) << "brick 2 never came back in sync";
  EXPECT_NE(v.mirror()->state(0), CopyState::kInSync) << "the resync read the rebooted copy as current";
  EXPECT_TRUE(v.mirror()->in_sync(1));
  // Brick 2 holds the current bytes: read with the others stopped.
  bricks_[0]->stop();
  bricks_[1]->stop();
  std::vector<uint8_t> back(kBlock);
  PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
  std::vector<uint8_t> want = data;
  std::memcpy(want.data() + 4096, data.data(), 4096);  // the second write
  EXPECT_EQ(back, want) << "brick 2's copy is not the current one";
}

// A block freed while a copy was stale, whose copy there another
// connection still maps (a reader's): the brick refuses to free it (EBUSY).
// The resync writes it zeros instead, as a discard does then, and finishes;
// it does not stop there, and start again, for as long as the reader stays.
TEST_F(MirrorTest, AResyncZeroesABlockItCannotFreeOnTheCopy) {
  start_bricks(2);
  auto data = random_data(kBlock, 81);
  PBRICK_ASSERT_OK(open_written(2, 8 * kMiB, data));
  Volume& v = engine_->volume();
  VolumeOptions ro = options(2, 8 * kMiB);
  ro.read_only = true;
  auto reader = Volume::Open(ro);
  PBRICK_ASSERT_OK(reader);
  const Placement& pl = v.placement();
  uint64_t on_1 = pl.unit(0, 0);
  for (uint32_t j = 0; j < pl.copies; j++) {
    if (pl.brick_of(pl.unit(0, j)) == 1) on_1 = pl.unit(0, j);
  }
  PBRICK_ASSERT_OK((*reader)->map_block(on_1, false));  // the reader holds brick 1's copy mapped

  PBRICK_ASSERT_OK(v.mark_stale(1));
  PBRICK_ASSERT_OK(engine_->discard(kBlock, 0, false));  // brick 0's copy freed; brick 1's missed it
  engine_->resync()->poke();
  ASSERT_TRUE(wait_in_sync(v, 1, 5000)) << "the resync never finished";
  bricks_[0]->stop();
  std::vector<uint8_t> back(kBlock, 0xee);
  PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
  EXPECT_EQ(back, std::vector<uint8_t>(kBlock, 0)) << "brick 1's copy of a discarded block is not zeros";
}

// Three copies: one stale, one in sync on a brick that stopped (nothing
// has noticed yet). The resync reads a block from the first reachable
// in-sync copy in turn (and after a failure from the next), not from the
// last one whatever it is: it finishes from the copy that answers, rather
// than trying the stopped one until its deadline, every run.
TEST_F(MirrorTest, AResyncReadsFromACopyThatAnswers) {
  start_bricks(3);
  VolumeOptions vo = options(3, 8 * kMiB);
  vo.leg_timeout_ms = 300;
  vo.io_timeout_ms = 3000;
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  auto data = random_data(kBlock, 82);
  bricks_[2]->stop();  // no resync can start before brick 1 stopped
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));  // brick 2 goes stale
  PBRICK_ASSERT_OK(engine_->flush());
  ASSERT_EQ(v.mirror()->state(2), CopyState::kStale);
  bricks_[1]->stop();  // in sync, unnoticed: the last in-sync copy of block 0
  PBRICK_ASSERT_OK(bricks_[2]->start());
  engine_->resync()->poke();
  ASSERT_TRUE(wait_in_sync(v, 2, 8000)) << "the resync never finished";
  // Brick 2's copy is whole: with brick 0 stopped too it reads back right.
  bricks_[0]->stop();
  std::vector<uint8_t> back(kBlock);
  PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
  EXPECT_EQ(back, data);
}

// What list and the STATUS line show of a resync: a run that has not counted
// yet is at 0 % (not the last run's 100 %), a count read half updated never
// makes more than 100 % or an ETA out of a wrapped difference.
TEST_F(MirrorTest, ResyncProgressShowsNoMoreThanWhatIsDone) {
  start_bricks(2);
  PBRICK_ASSERT_OK(open(options(2, 8 * kMiB)));
  Volume& v = engine_->volume();
  MirrorState& m = *v.mirror();
  const std::string name = v.brick_name(1);
  m.set_state(1, CopyState::kResyncing);
  m.set_progress(1, {4, 4, 0});  // the last run's, finished
  EXPECT_EQ(mirror_summary(v), "degraded: brick " + name + " resyncing 0 %");
  EXPECT_NE(mirror_json(v).find("\"resync_percent\":0}"), std::string::npos) << mirror_json(v);
  const uint64_t now = static_cast<uint64_t>(std::time(nullptr));
  m.set_progress(1, {5, 3, now - 10});  // done read after a new run's total
  EXPECT_EQ(mirror_summary(v), "degraded: brick " + name + " resyncing 100 % (ETA 0 s)");
  m.set_progress(1, {1, 4, now + 100});  // the clock went back
  EXPECT_EQ(mirror_summary(v), "degraded: brick " + name + " resyncing 25 %");
  m.set_progress(1, {1, 4, now - 10});  // 10 s for a quarter (11 if the second turned meanwhile)
  EXPECT_EQ(mirror_summary(v).rfind("degraded: brick " + name + " resyncing 25 % (ETA 3", 0), 0u) << mirror_summary(v);
  m.set_state(1, CopyState::kInSync);
}

// The only in-sync copy's host rebooted while the other copy was stale: it
// cannot be given up (nothing would be left), so the resync copies from it,
// as reads read it, and the volume gets its second copy back - rather than
// stopping at every run for a copy it cannot give up.
TEST_F(MirrorTest, AResyncCopiesFromTheLastInSyncCopyAfterItsHostRebooted) {
  start_bricks(2);
  VolumeOptions vo = options(2, 8 * kMiB);
  vo.leg_timeout_ms = 300;
  vo.io_timeout_ms = 3000;
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  auto data = random_data(kBlock, 83);
  bricks_[1]->stop();  // the resync cannot start before brick 0 rebooted
  PBRICK_ASSERT_OK(engine_->write(data.data(), data.size(), 0, false));  // brick 1 goes stale
  PBRICK_ASSERT_OK(engine_->flush());
  ASSERT_EQ(v.mirror()->state(1), CopyState::kStale);
  bricks_[0]->stop();
  std::array<uint8_t, proto::kUuidSize> rebooted{};
  rebooted.fill(0x6e);
  PBRICK_ASSERT_OK(bricks_[0]->start("brick.store", rebooted));
  PBRICK_ASSERT_OK(bricks_[1]->start());

  engine_->resync()->poke();
  ASSERT_TRUE(wait_in_sync(v, 1, 8000)) << "the resync never finished";
  EXPECT_TRUE(v.mirror()->in_sync(0));
  bricks_[0]->stop();
  std::vector<uint8_t> back(kBlock);
  PBRICK_ASSERT_OK(engine_->read(back.data(), back.size(), 0));
  EXPECT_EQ(back, data);
}


// What brick `b` holds at `vaddr`, through a connection of its own (not the
// volume's): a whole block.
std::vector<uint8_t> read_brick_block(TestBrick& brick, uint64_t vaddr) {
  std::vector<uint8_t> out(kBlock);
  auto c = BrickClient::Connect(brick.client());
  EXPECT_TRUE(c.ok()) << c.error().message();
  if (!c.ok()) return {};
  auto h = (*c)->map(vaddr, proto::kMapShared);
  EXPECT_TRUE(h.ok()) << h.error().message();
  if (!h.ok()) return {};
  Status st = (*c)->read(h->rkey, h->remote_addr, out);
  EXPECT_TRUE(st.ok()) << st.error().message();
  return out;
}

// A gateway killed while a write was under way can leave a block's copies
// different: the write reached one copy (here brick-side, by a connection
// of the test's own, to the copy reads do not start from) and not the
// other. The next read-write attach finds the last writer's holder record
// never said closed: every written block is unsettled, each is read from
// its first in-sync copy alone (never one copy's bytes, then the other's),
// and the repair copies that copy over the others, at the resync rate, then
// settles it. A clean detach leaves nothing to repair.
TEST_F(MirrorTest, AfterAWriterDiedMidWriteReadsNeverAlternateAndTheCopiesAreRepaired) {
  start_bricks(2);
  run_writer_died_mid_write();
}

// The same over three bricks: a block's copies are on two of them.
TEST_F(MirrorTest, AfterAWriterDiedMidWriteReadsNeverAlternateOverThreeBricks) {
  start_bricks(3);
  run_writer_died_mid_write();
}

void MirrorTest::run_writer_died_mid_write() {
  {
    constexpr uint64_t kBlocks = 3;
    const auto data = random_data(kBlocks * kBlock, 41);
    PBRICK_ASSERT_OK(open_written(2, 8 * kMiB, data));
    const Placement pl = engine_->volume().placement();
    // The last block's copy 1 gets other bytes, written to its brick behind
    // the gateway's back; copy 0 keeps the volume's.
    const uint64_t block = kBlocks - 1;
    const uint32_t other_brick = pl.brick_of(pl.unit(block, 1));
    const uint64_t other_vaddr = pl.slot_of(pl.unit(block, 1)) * kBlock;
    const auto torn = random_data(kBlock, 42);
    {
      auto c = BrickClient::Connect(bricks_[other_brick]->client());
      PBRICK_ASSERT_OK(c);
      auto h = (*c)->map(other_vaddr, proto::kMapShared | proto::kMapWrite);
      PBRICK_ASSERT_OK(h);
      PBRICK_ASSERT_OK((*c)->write(h->rkey, h->remote_addr, torn));
    }
    ASSERT_EQ(read_brick_block(*bricks_[other_brick], other_vaddr), torn);
    engine_->volume().leave_uncleanly_for_testing();  // as if killed
    engine_.reset();

    for (uint32_t b = 0; b < bricks_.size(); b++) EXPECT_EQ(holder_closed(b), 0u) << "brick " << b;

    // Reattached with a slow repair (2 s a block): the last block is still
    // unsettled while it is read, again and again.
    VolumeOptions vo = options(2, 8 * kMiB);
    vo.resync_mib_per_s = 1;
    PBRICK_ASSERT_OK(open(vo));
    Volume& v = engine_->volume();
    EXPECT_GE(v.mirror()->unsettled_count(), kBlocks - 1);  // the repair may have begun
    std::vector<uint8_t> back(kBlock);
    for (int k = 0; k < 6; k++) {
      PBRICK_ASSERT_OK(engine_->read(back.data(), kBlock, block * kBlock));
      ASSERT_TRUE(std::equal(back.begin(), back.end(), data.begin() + block * kBlock)) << "read " << k;
    }
    ASSERT_TRUE(v.mirror()->unsettled(block)) << "the reads above must have met the unsettled block";
    // The copy reads use is not replaced meanwhile.
    const uint32_t source_brick = pl.brick_of(pl.unit(block, 0));
    Status replaced = v.replace_brick(source_brick, bricks_[other_brick]->client());
    ASSERT_FALSE(replaced.ok());
    EXPECT_EQ(replaced.error().errnum(), EBUSY) << replaced.error().message();
    ASSERT_TRUE(wait_until([&] { return v.mirror()->unsettled_count() == 0; }, std::chrono::seconds(30)));
    EXPECT_EQ(mirror_summary(v), "in sync");
    // The other copy holds the volume's bytes now, durably (the brick's own view).
    auto repaired = read_brick_block(*bricks_[other_brick], other_vaddr);
    EXPECT_TRUE(std::equal(repaired.begin(), repaired.end(), data.begin() + block * kBlock));
    for (int k = 0; k < 4; k++) {
      PBRICK_ASSERT_OK(engine_->read(back.data(), kBlock, block * kBlock));
      ASSERT_TRUE(std::equal(back.begin(), back.end(), data.begin() + block * kBlock)) << "read " << k;
    }

    // A clean detach says so on every brick, and the next attach repairs nothing.
    engine_.reset();
    for (uint32_t b = 0; b < bricks_.size(); b++) EXPECT_NE(holder_closed(b), 0u) << "brick " << b;
    PBRICK_ASSERT_OK(open(options(2, 8 * kMiB)));
    EXPECT_EQ(engine_->volume().mirror()->unsettled_count(), 0u);
  }
}

// After an unclean detach, a brick a degraded attach cannot reach may hold
// blocks no copy it reaches holds (a discard that freed those first): every
// block with a copy there is dirty, so its resync copies all of it.
TEST_F(MirrorTest, ADegradedAttachAfterAnUncleanDetachMarksTheMissingBricksBlocksDirty) {
  start_bricks(3);
  const auto data = random_data(2 * kBlock, 43);
  PBRICK_ASSERT_OK(open_written(2, 12 * kMiB, data));  // 6 blocks, 2 written
  engine_->volume().leave_uncleanly_for_testing();
  engine_.reset();
  bricks_[2]->stop();
  VolumeOptions vo = options(2, 12 * kMiB);
  vo.degraded = true;
  vo.leg_timeout_ms = 500;
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  EXPECT_EQ(v.mirror()->state(2), CopyState::kStale);
  // Blocks 1, 2, 4 and 5 have a copy on brick 2 (copy j of block i on brick (i + j) mod 3).
  std::vector<bool> dirty = v.dirty_blocks();
  EXPECT_EQ(dirty, (std::vector<bool>{false, true, true, false, true, true}));
}

// A brick that dies during the repair while nothing writes: the repair
// gives it up (stale, the block it was on dirty) instead of failing on it
// every second, whether it held the copies written to or read from, and
// ends; its misses are in the bitmap for its resync.
TEST_F(MirrorTest, TheRepairGivesUpABrickThatDiedAndEnds) {
  start_bricks(2);
  const auto data = random_data(3 * kBlock, 45);
  PBRICK_ASSERT_OK(written_then_killed(data));
  VolumeOptions vo = options(2, 8 * kMiB);
  vo.leg_timeout_ms = 300;
  vo.io_timeout_ms = 2000;
  vo.resync_mib_per_s = 1;  // a block every 2 s: blocks 1 and 2 meet the dead brick
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  // Brick 1 holds copy 0 (the source) of block 1 and copy 1 (a target) of block 2.
  bricks_[1]->stop();
  ASSERT_TRUE(v.mirror()->unsettled(1) && v.mirror()->unsettled(2));
  ASSERT_TRUE(wait_until([&] { return v.mirror()->unsettled_count() == 0; }, std::chrono::seconds(30)))
      << v.mirror()->unsettled_count() << " blocks left";
  EXPECT_EQ(v.mirror()->state(1), CopyState::kStale);
  EXPECT_TRUE(v.dirty(1));
  EXPECT_TRUE(v.dirty(2));
}

// The repair copies an unsettled block from its source to every other copy.
// A source given up while it does (here by a read that found its brick
// unreachable for the leg timeout) is a copy the repair's loop skipped, so
// it got no dirty bit from that pass: had the block been settled then, the
// old source would come back with its pre-crash bytes and never be copied.
// The block stays unsettled, and the next pass records the old source's miss.
TEST_F(MirrorTest, ASourceGivenUpWhileTheRepairCopiesFromItGetsTheBlocksDirtyBit) {
  start_bricks(3);
  const auto data = random_data(3 * kBlock, 47);
  PBRICK_ASSERT_OK(open_written(3, 8 * kMiB, data));
  engine_->volume().leave_uncleanly_for_testing();
  engine_.reset();
  VolumeOptions vo = options(3, 8 * kMiB);
  vo.leg_timeout_ms = 300;
  vo.resync_mib_per_s = 2;  // two targets a block: a block every 2 s
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  const Placement pl = v.placement();
  const uint64_t block = 1;
  const uint32_t source_brick = pl.brick_of(pl.unit(block, 0));
  ASSERT_TRUE(wait_until([&] { return !v.mirror()->unsettled(0); }, std::chrono::seconds(20)));
  ASSERT_TRUE(v.mirror()->unsettled(block));
  bricks_[source_brick]->stop();
  // The repair is on the block, trying its source again and again (for up
  // to the I/O timeout, 10 s) when the read gives the source up.
  ASSERT_TRUE(wait_until([&] { return v.mirror()->held(block); }, std::chrono::seconds(20)));
  std::vector<uint8_t> back(kBlock);
  PBRICK_ASSERT_OK(engine_->read(back.data(), kBlock, block * kBlock));
  EXPECT_TRUE(std::equal(back.begin(), back.end(), data.begin() + block * kBlock));
  EXPECT_EQ(v.mirror()->state(source_brick), CopyState::kStale);
  ASSERT_TRUE(wait_until([&] { return v.mirror()->unsettled_count() == 0; }, std::chrono::seconds(30)))
      << v.mirror()->unsettled_count() << " blocks left";
  EXPECT_TRUE(v.dirty(block)) << "the old source's copy of the block is copied to it when it is back";
}

// An unsettled block whose source brick stays unreachable: reads do not
// fail until something writes. Once the brick has been unreachable for the
// leg timeout the source is given up (stale) and reads go on from the next
// copy; the repair then records the block dirty for the stale copy.
TEST_F(MirrorTest, AnUnsettledBlocksSourceThatStaysUnreachableIsGivenUpAndReadsGoOn) {
  start_bricks(2);
  const auto data = random_data(3 * kBlock, 44);
  PBRICK_ASSERT_OK(written_then_killed(data));
  VolumeOptions vo = options(2, 8 * kMiB);
  vo.resync_mib_per_s = 1;  // block 2 stays unsettled for 4 s
  vo.leg_timeout_ms = 300;
  PBRICK_ASSERT_OK(open(vo));
  Volume& v = engine_->volume();
  const Placement pl = v.placement();
  const uint64_t block = 2;
  const uint32_t source_brick = pl.brick_of(pl.unit(block, 0));
  ASSERT_TRUE(v.mirror()->unsettled(block));
  bricks_[source_brick]->stop();
  std::vector<uint8_t> back(kBlock);
  const auto t0 = std::chrono::steady_clock::now();
  PBRICK_ASSERT_OK(engine_->read(back.data(), kBlock, block * kBlock));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  EXPECT_TRUE(std::equal(back.begin(), back.end(), data.begin() + block * kBlock));
  EXPECT_EQ(v.mirror()->state(source_brick), CopyState::kStale);
  EXPECT_TRUE(wait_until([&] { return v.mirror()->unsettled_count() == 0; }, std::chrono::seconds(20)));
  EXPECT_TRUE(v.dirty(block));
}

}  // namespace
}  // namespace pbrick
