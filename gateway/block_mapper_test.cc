// The BlockMapper under an event loop shaped like a ublk queue's (one thread,
// one ring, the core's VolumeChannels, requests planned with queue_round and
// settled with IoRetry), over real bricks (gateway/test_brick.h): requests on
// mapped blocks complete while others wait for their block's mapping, the
// waiters of one block share one mapping, and a brick that is down fails only
// the requests waiting for its blocks, with EIO after the io_timeout.
#include "gateway/block_mapper.h"

#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <random>

#include "common/crc32c.h"
#include "common/unique_fd.h"
#include "common/uring.h"
#include "gateway/test_brick.h"
#include "gateway/volume_io.h"

namespace pbrick {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kBlock = proto::kBlockSize;

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

class Loop;

// A request of the loop: what a ublk tag holds.
struct Req {
  Loop* loop = nullptr;
  bool is_write = false;
  std::vector<uint8_t> buf;
  std::vector<IoPiece> pieces;
  uint32_t pending = 0;
  IoRetry retry;
  DiscardPlan discard;
  bool discarding = false;  // its discard is being planned
  bool done = false;
  Status result;
  Clock::time_point started{}, finished{};
};

// One event loop on the test's thread: a ring, the channels to every brick,
// and a BlockMapper waking the ring through an eventfd.
class Loop {
 public:
  explicit Loop(Volume& volume)
      : volume_(volume),
        channels_(volume, 256, ring_, kChannel, kCancel, "test loop"),
        event_fd_(::eventfd(0, EFD_CLOEXEC)),
        mapper_(volume, 32, [fd = event_fd_.get()] {
          uint64_t one = 1;
          ssize_t ignored = ::write(fd, &one, sizeof one);
          (void)ignored;
        }) {}

  Status start() {
    if (!event_fd_.valid()) return errno_error("eventfd");
    channels_.reserve(256);
    PBRICK_TRY(ring_.init(256));
    PBRICK_TRY(channels_.connect());
    PBRICK_TRY(ring_.enable());
    arm_event();
    arm_tick();
    return Status::Ok();
  }

  ~Loop() {
    channels_.stop();
    ring_.cancel(Uring::pack(kCancel, 0), Uring::pack(kTick, 0));
    ring_.cancel(Uring::pack(kCancel, 0), Uring::pack(kEvent, 0));
    stopping_ = true;
    while (ring_.inflight() > 0) {
      ring_.submit_and_wait(1);
      ring_.drain([this](uint64_t ud, int res) { on_cqe(ud, res); });
    }
    channels_.finish(ESHUTDOWN);
  }

  BlockMapper& mapper() { return mapper_; }

  void submit(Req& r, uint64_t offset) {
    r.loop = this;
    r.pieces.clear();
    r.done = false;
    r.started = Clock::now();
    r.retry.start(std::chrono::milliseconds(volume_.options().io_timeout_ms));
    plan_rw(volume_, r.is_write, offset, r.buf.size(), r.buf.data(), &r, r.pieces);
    round(r);
  }

  // A DISCARD of [offset, offset + len), as a ublk queue plans it.
  void submit_discard(Req& r, uint64_t offset, uint64_t len) {
    r.loop = this;
    r.is_write = true;
    r.pieces.clear();
    r.done = false;
    r.started = Clock::now();
    r.retry.start(std::chrono::milliseconds(volume_.options().io_timeout_ms));
    r.discard = DiscardPlan{};
    r.discard.from = offset;
    r.discard.end = offset + len;
    r.discard.zeros = zeros_.data();
    r.discarding = true;
    discard_step(r);
  }

  // Runs the loop until `until` holds or `limit` passed; false on timeout.
  bool run(const std::function<bool()>& until, std::chrono::milliseconds limit) {
    auto end = Clock::now() + limit;
    while (!until()) {
      if (Clock::now() > end) return false;
      ring_.submit_and_wait(1);
      ring_.drain([this](uint64_t ud, int res) { on_cqe(ud, res); });
      while (!ready_.empty()) {
        Req* r = ready_.back();
        ready_.pop_back();
        advance(*r);
      }
      channels_.dispatch();
    }
    return true;
  }

 private:
  enum Kind : uint8_t { kChannel = 1, kCancel, kTick, kEvent };

  void discard_step(Req& r) {
    auto step = plan_discard_step(volume_, r.discard, &r, r.pieces, &mapper_);
    if (!step) return finish(r, step.error());
    if (*step == DiscardStep::kParked) return;
    if (*step == DiscardStep::kHeld) {
      r.retry.wait_held();
      retry_.push_back(&r);
      return;
    }
    r.discarding = false;
    round(r);
  }

  void round(Req& r) {
    auto queued = queue_round(
        volume_, r.pieces, channels_,
        [](DataChannel::Op* op, int status) {
          auto* p = static_cast<IoPiece*>(op->ctx);
          p->status = status;
          auto* req = static_cast<Req*>(p->request);
          if (--req->pending == 0) req->loop->ready_.push_back(req);
        },
        kMaxPiecesPerRound, &mapper_);
    if (!queued) return finish(r, queued.error());
    if (*queued == kWaitingForMap) return;
    if (*queued == 0) return advance(r);
    r.pending = static_cast<uint32_t>(*queued);
  }

  void advance(Req& r) {
    switch (r.retry.settle(volume_, r.pieces, r.is_write ? "write" : "read")) {
      case IoRetry::Step::kDone: return finish(r, Status::Ok());
      case IoRetry::Step::kNow: return round(r);
      case IoRetry::Step::kLater: retry_.push_back(&r); return;
      case IoRetry::Step::kFail: return finish(r, r.retry.error());
    }
  }

  void finish(Req& r, Status st) {
    r.result = std::move(st);
    r.finished = Clock::now();
    r.done = true;
  }

  void on_cqe(uint64_t ud, int res) {
    switch (Uring::kind_of(ud)) {
      case kChannel:
        channels_.on_cqe(Uring::payload_of(ud), res);
        break;
      case kEvent:
        if (stopping_) break;
        mapper_.take_done([this](void* request, const Status& st) {
          Req& r = *static_cast<Req*>(request);
          if (st) return r.discarding ? discard_step(r) : round(r);
          note_failed_writes(volume_, r.pieces);
          finish(r, st);
        });
        arm_event();
        break;
      case kTick: {
        if (stopping_) break;
        channels_.on_tick();
        auto now = Clock::now();
        std::vector<Req*> due;
        std::erase_if(retry_, [&](Req* r) {
          if (r->retry.retry_at() > now) return false;
          due.push_back(r);
          return true;
        });
        for (Req* r : due) r->discarding ? discard_step(*r) : round(*r);
        arm_tick();
        break;
      }
      default:
        break;
    }
  }

  void arm_event() {
    io_uring_prep_read(ring_.sqe(Uring::pack(kEvent, 0)), event_fd_.get(), &event_buf_, sizeof event_buf_, 0);
  }
  void arm_tick() {
    tick_ts_.tv_sec = 0;
    tick_ts_.tv_nsec = 20 * 1000 * 1000;
    io_uring_prep_timeout(ring_.sqe(Uring::pack(kTick, 0)), &tick_ts_, 0, 0);
  }

  Volume& volume_;
  Uring ring_;
  VolumeChannels channels_;
  UniqueFd event_fd_;
  uint64_t event_buf_ = 0;
  __kernel_timespec tick_ts_{};
  BlockMapper mapper_;  // after event_fd_: its workers write it until joined
  std::vector<Req*> ready_, retry_;
  std::vector<uint8_t> zeros_ = std::vector<uint8_t>(kBlock, 0);
  bool stopping_ = false;
};

class BlockMapperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PBRICK_ASSERT_OK(dir_.make("mapper"));
    PBRICK_ASSERT_OK(start_test_bricks(dir_.path(), 2, &bricks_));
  }
  void TearDown() override {
    loop_.reset();
    volume_.reset();
    bricks_.clear();
  }

  // A striped volume on both bricks (block i on brick i mod 2), its loop.
  Status open(uint32_t timeout_ms) {
    VolumeOptions vo;
    vo.layout = Layout::kStripe;
    for (auto& b : bricks_) vo.bricks.push_back(b->client());
    vo.size = 16 * kBlock;
    vo.io_timeout_ms = timeout_ms;
    auto volume = Volume::Open(vo);
    if (!volume) return volume.error().wrap("Volume::Open");
    volume_ = std::move(*volume);
    loop_ = std::make_unique<Loop>(*volume_);
    return loop_->start();
  }

  static Req write_req(size_t len, uint32_t seed) {
    Req r;
    r.is_write = true;
    r.buf = random_bytes(len, seed);
    return r;
  }
  static Req read_req(size_t len) {
    Req r;
    r.buf.assign(len, 0xEE);
    return r;
  }

  TestDir dir_;  // before the bricks: removed after they stop
  std::vector<std::unique_ptr<TestBrick>> bricks_;
  std::unique_ptr<Volume> volume_;
  std::unique_ptr<Loop> loop_;
};

// While a write waits for its fresh block's ALLOC + MAP on a brick that does
// not answer, the loop serves reads and writes of mapped blocks; the writes
// waiting for that block share one mapping and fail, only they, with EIO
// naming the brick once the io_timeout passed; the brick back, the block maps.
TEST_F(BlockMapperTest, TagsOnMappedBlocksFlowWhileAFreshBlocksAllocWaits) {
  constexpr uint32_t kTimeoutMs = 1500;
  PBRICK_ASSERT_OK(open(kTimeoutMs));
  Loop& loop = *loop_;
  BlockMapper& mapper = loop.mapper();

  // Block 0 (brick 0) written through the loop: its first write parks on
  // the mapper too, and completes once it mapped the block.
  Req first = write_req(64 * 1024, 1);
  loop.submit(first, 0);
  ASSERT_TRUE(loop.run([&] { return first.done; }, std::chrono::seconds(10)));
  PBRICK_ASSERT_OK(first.result);
  EXPECT_EQ(mapper.maps_started(), 1u);

  bricks_[1]->stop();  // block 1 is fresh and on this brick
  Req held_a = write_req(4096, 2), held_b = write_req(4096, 3);
  loop.submit(held_a, 1 * kBlock);
  loop.submit(held_b, 1 * kBlock + 65536);
  EXPECT_FALSE(held_a.done);
  EXPECT_FALSE(held_b.done);
  EXPECT_EQ(mapper.maps_started(), 2u) << "two writes to one block share one mapping";

  // Meanwhile block 0, many times over, well before the timeout.
  auto start = Clock::now();
  for (int i = 0; i < 20; i++) {
    Req rd = read_req(4096), wr = write_req(4096, 100 + i);
    loop.submit(rd, static_cast<uint64_t>(i % 16) * 4096);
    loop.submit(wr, 128 * 1024 + static_cast<uint64_t>(i) * 4096);
    ASSERT_TRUE(loop.run([&] { return rd.done && wr.done; }, std::chrono::seconds(10)));
    PBRICK_ASSERT_OK(rd.result);
    PBRICK_ASSERT_OK(wr.result);
    EXPECT_EQ(crc32c(rd.buf.data(), 4096), crc32c(first.buf.data() + (i % 16) * 4096, 4096)) << i;
  }
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(kTimeoutMs));
  EXPECT_FALSE(held_a.done) << "the write on the down brick ended before the timeout";
  EXPECT_FALSE(held_b.done);

  ASSERT_TRUE(loop.run([&] { return held_a.done && held_b.done; }, std::chrono::milliseconds(10 * kTimeoutMs)));
  std::string brick1 = bricks_[1]->client().endpoint.to_string();
  // The second write joined the first one's mapping and shares its outcome
  // (block_mapper.h): the timeout runs from the first of the two.
  Clock::time_point first_start = std::min(held_a.started, held_b.started);
  for (Req* r : {&held_a, &held_b}) {
    ASSERT_FALSE(r->result.ok());
    EXPECT_EQ(r->result.error().errnum(), EIO) << r->result.error().message();
    EXPECT_NE(r->result.error().message().find(brick1), std::string::npos) << r->result.error().message();
    EXPECT_GE(r->finished - first_start, std::chrono::milliseconds(kTimeoutMs));
  }
  EXPECT_EQ(mapper.maps_started(), 2u);

  // The brick back: the block allocates and maps, and holds what was written.
  PBRICK_ASSERT_OK(bricks_[1]->start());
  Req again = write_req(4096, 4);
  loop.submit(again, 1 * kBlock);
  ASSERT_TRUE(loop.run([&] { return again.done; }, std::chrono::seconds(10)));
  PBRICK_ASSERT_OK(again.result);
  Req back = read_req(4096);
  loop.submit(back, 1 * kBlock);
  ASSERT_TRUE(loop.run([&] { return back.done; }, std::chrono::seconds(10)));
  PBRICK_ASSERT_OK(back.result);
  EXPECT_EQ(back.buf, again.buf);
  EXPECT_EQ(mapper.maps_started(), 3u);
}

// A DISCARD whose block is on a brick that does not answer: its FREE runs on
// the mapper's worker for that brick, and the loop serves the other brick's
// blocks meanwhile (it once waited in the FREE, up to the io_timeout, with
// every other request of the queue). The DISCARD fails with EIO naming the
// brick once the timeout passed; with the brick back, it frees the blocks,
// which then read as zeros.
TEST_F(BlockMapperTest, ADiscardWaitingForADownBrickLeavesTheLoopServing) {
  constexpr uint32_t kTimeoutMs = 1500;
  PBRICK_ASSERT_OK(open(kTimeoutMs));
  Loop& loop = *loop_;
  Req first = write_req(3 * kBlock, 11);  // blocks 0, 1, 2: bricks 0, 1, 0
  loop.submit(first, 0);
  ASSERT_TRUE(loop.run([&] { return first.done; }, std::chrono::seconds(10)));
  PBRICK_ASSERT_OK(first.result);
  ASSERT_TRUE(volume_->allocated(1));
  ASSERT_TRUE(volume_->allocated(2));

  bricks_[1]->stop();
  auto start = Clock::now();
  Req discard;
  loop.submit_discard(discard, 1 * kBlock, 2 * kBlock);
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(kTimeoutMs / 3)) << "the loop waited in the FREE";
  EXPECT_FALSE(discard.done);
  for (int i = 0; i < 10; i++) {
    Req rd = read_req(4096), wr = write_req(4096, 200 + i);
    loop.submit(rd, static_cast<uint64_t>(i) * 4096);
    loop.submit(wr, 2 * kBlock + 65536 + static_cast<uint64_t>(i) * 4096);  // block 2, brick 0
    ASSERT_TRUE(loop.run([&] { return rd.done && wr.done; }, std::chrono::seconds(10)));
    PBRICK_ASSERT_OK(rd.result);
    PBRICK_ASSERT_OK(wr.result);
    EXPECT_EQ(crc32c(rd.buf.data(), 4096), crc32c(first.buf.data() + i * 4096, 4096)) << i;
  }
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(kTimeoutMs)) << "served only after the timeout";
  EXPECT_FALSE(discard.done) << "the discard ended before the timeout";

  ASSERT_TRUE(loop.run([&] { return discard.done; }, std::chrono::milliseconds(10 * kTimeoutMs)));
  ASSERT_FALSE(discard.result.ok());
  EXPECT_EQ(discard.result.error().errnum(), EIO) << discard.result.error().message();
  EXPECT_NE(discard.result.error().message().find(bricks_[1]->client().endpoint.to_string()), std::string::npos)
      << discard.result.error().message();
  EXPECT_GE(discard.finished - discard.started, std::chrono::milliseconds(kTimeoutMs));
  EXPECT_TRUE(volume_->allocated(2)) << "block 2 (after the failed one) freed";

  PBRICK_ASSERT_OK(bricks_[1]->start());
  Req again;
  loop.submit_discard(again, 1 * kBlock, 2 * kBlock);
  ASSERT_TRUE(loop.run([&] { return again.done; }, std::chrono::seconds(10)));
  PBRICK_ASSERT_OK(again.result);
  EXPECT_FALSE(volume_->allocated(1));
  EXPECT_FALSE(volume_->allocated(2));
  Req back = read_req(2 * kBlock);
  loop.submit(back, 1 * kBlock);
  ASSERT_TRUE(loop.run([&] { return back.done; }, std::chrono::seconds(10)));
  PBRICK_ASSERT_OK(back.result);
  EXPECT_EQ(back.buf, std::vector<uint8_t>(2 * kBlock, 0));
}

// Reads of blocks never written are zeros without a mapping; a read of an
// allocated block not mapped by this volume yet parks and gets its data.
TEST_F(BlockMapperTest, ReadsParkOnlyForAllocatedBlocks) {
  PBRICK_ASSERT_OK(open(5000));
  Loop& loop = *loop_;
  Req hole = read_req(8192);
  loop.submit(hole, 3 * kBlock);
  ASSERT_TRUE(loop.run([&] { return hole.done; }, std::chrono::seconds(10)));
  PBRICK_ASSERT_OK(hole.result);
  EXPECT_EQ(hole.buf, std::vector<uint8_t>(8192, 0));
  EXPECT_EQ(loop.mapper().maps_started(), 0u);

  // A request across blocks 2 and 3 (both bricks): one mapping each.
  Req wr = write_req(2 * 65536, 5);
  loop.submit(wr, 3 * kBlock - 65536);
  ASSERT_TRUE(loop.run([&] { return wr.done; }, std::chrono::seconds(10)));
  PBRICK_ASSERT_OK(wr.result);
  EXPECT_EQ(loop.mapper().maps_started(), 2u);

  // Another volume on the same bricks: allocated there, not mapped here.
  loop_.reset();
  volume_.reset();
  PBRICK_ASSERT_OK(open(5000));
  Req rd = read_req(wr.buf.size());
  loop_->submit(rd, 3 * kBlock - 65536);
  ASSERT_TRUE(loop_->run([&] { return rd.done; }, std::chrono::seconds(10)));
  PBRICK_ASSERT_OK(rd.result);
  EXPECT_EQ(rd.buf, wr.buf);
  EXPECT_EQ(loop_->mapper().maps_started(), 2u);
}

}  // namespace
}  // namespace pbrick
