// The kernel-free part of the ublk queue (ublk_plan.h) against a real brick
// (gateway/test_brick.h), with a test channel that carries the ops to the
// brick and fails the test when it is handed more ops than it has slots.
#include "gateway/ublk_plan.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "gateway/test_brick.h"

namespace pbrick {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kBlock = proto::kBlockSize;

// A DataChannel of `slots` slots whose ops the test completes by carrying
// them to the brick through a BrickClient (the brick's rkeys are not tied to
// a connection).
class TestChannel final : public DataChannel {
 public:
  TestChannel(size_t slots, BrickClient& carrier) : slots_(slots), carrier_(carrier) {}

  Status connect(const ClientOptions&) override { return Status::Ok(); }
  bool connected() const override { return true; }
  bool tearing_down() const override { return false; }
  bool full() const override { return inflight_.size() >= slots_; }
  size_t inflight() const override { return inflight_.size(); }
  void submit(Op* op) override {
    if (full()) {
      ADD_FAILURE() << "an op submitted to a full channel (" << inflight_.size() << " of " << slots_ << " slots)";
      overfilled_++;
    }
    inflight_.push_back(op);
    most_inflight_ = std::max(most_inflight_, inflight_.size());
  }
  void submit_sync(Op* op) override { submit(op); }
  std::chrono::steady_clock::time_point last_progress() const override { return {}; }
  void teardown(int) override {}
  Status flush(ChannelRing&) override { return Status::Ok(); }
  Status on_cqe(uint8_t, int) override { return Status::Ok(); }
  void stop(ChannelRing&) override {}
  void disconnect(int) override {}

  // Carries every op in flight to the brick and completes it.
  void complete_all() {
    std::vector<Op*> ops;
    ops.swap(inflight_);
    for (Op* op : ops) {
      Status st = op->opcode == proto::Opcode::kWrite
                      ? carrier_.write(op->rkey, op->remote_addr, {op->buf, op->length})
                      : carrier_.read(op->rkey, op->remote_addr, {op->buf, op->length});
      op->done(op, st.ok() ? 0 : st.error().errnum());
    }
  }

  size_t overfilled() const { return overfilled_; }
  size_t most_inflight() const { return most_inflight_; }

 private:
  size_t slots_;
  BrickClient& carrier_;
  std::vector<Op*> inflight_;
  size_t overfilled_ = 0, most_inflight_ = 0;
};

class UblkPlanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PBRICK_ASSERT_OK(dir_.make("ublk-plan"));
    brick_ = std::make_unique<TestBrick>(dir_.path());
    PBRICK_ASSERT_OK(brick_->start());
  }
  void TearDown() override {
    brick_.reset();
  }

  TestDir dir_;  // before the bricks: removed after they stop
  std::unique_ptr<TestBrick> brick_;
};

// A DISCARD over blocks another client maps (their FREE is refused: EBUSY)
// becomes a zero-fill piece per block, more than the channel has slots and
// more than one round takes: the channel never gets more ops than slots, every
// piece reaches the brick, and the brick holds zeros exactly where the discard
// was (a block nobody else maps is freed instead).
TEST_F(UblkPlanTest, ADiscardOfBusyBlocksNeverOverfillsTheChannel) {
  constexpr uint64_t kBlocks = 12;
  std::vector<uint8_t> data(kBlocks * kBlock);
  std::mt19937 rng(11);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  auto writer = BrickClient::Connect(brick_->client());
  ASSERT_TRUE(writer.ok()) << writer.error().message();
  for (uint64_t b = 0; b < kBlocks; b++) {
    PBRICK_ASSERT_OK((*writer)->alloc(b * kBlock));
    auto h = (*writer)->map(b * kBlock, proto::kMapWrite | proto::kMapShared);
    ASSERT_TRUE(h.ok()) << h.error().message();
    PBRICK_ASSERT_OK((*writer)->write(h->rkey, h->remote_addr, {data.data() + b * kBlock, kBlock}));
  }
  // The writer keeps blocks 1..9 mapped: the volume cannot free them.
  for (uint64_t b : {0u, 10u, 11u}) PBRICK_ASSERT_OK((*writer)->unmap(b * kBlock));

  auto volume = Volume::Open({.brick = brick_->client(), .size = 32 * kMiB});
  ASSERT_TRUE(volume.ok()) << volume.error().message();
  std::vector<uint8_t> zeros(kBlock, 0);
  int pending = 0;
  std::vector<UblkPiece> pieces;
  // [1 MiB, 23 MiB): block 0 partial, 1..9 busy, 10 whole and free, 11 partial.
  const uint64_t offset = 1 * kMiB, len = 22 * kMiB;
  auto planned = plan_discard(**volume, offset, len, zeros.data(), &pending, pieces);
  PBRICK_ASSERT_OK(planned);
  ASSERT_EQ(*planned, offset + len);
  ASSERT_EQ(pieces.size(), 11u);

  auto carrier = BrickClient::Connect(brick_->client());
  ASSERT_TRUE(carrier.ok()) << carrier.error().message();
  TestChannel channel(3, **carrier);
  ChannelBacklog backlog;
  auto done = [](DataChannel::Op* op, int status) {
    auto* piece = static_cast<UblkPiece*>(op->ctx);
    piece->status = status;
    --*static_cast<int*>(piece->request);
  };
  int rounds = 0;
  for (;; rounds++) {
    ASSERT_LT(rounds, 4) << "the pieces did not all go out";
    auto queued = queue_pieces(**volume, pieces, backlog, done);
    ASSERT_TRUE(queued.ok()) << queued.error().message();
    if (*queued == 0) break;
    EXPECT_LE(*queued, kMaxPiecesPerRound);
    pending = static_cast<int>(*queued);
    while (pending > 0) {
      backlog.feed(channel);
      ASSERT_GT(channel.inflight(), 0u) << "ops wait, but none went to the channel";
      channel.complete_all();
    }
    for (const UblkPiece& p : pieces) ASSERT_LE(p.status, 0) << "a piece failed: " << std::strerror(p.status);
  }
  EXPECT_EQ(rounds, 2);
  EXPECT_TRUE(backlog.empty());
  EXPECT_EQ(channel.overfilled(), 0u);
  EXPECT_EQ(channel.most_inflight(), 3u);
  for (const UblkPiece& p : pieces) EXPECT_EQ(p.status, 0);

  // Zeros exactly in [offset, offset + len); block 10 is freed.
  for (uint64_t b = 0; b < kBlocks; b++) {
    auto h = (*carrier)->map(b * kBlock, proto::kMapShared);
    if (b == 10) {
      ASSERT_FALSE(h.ok()) << "block 10 should have been freed";
      EXPECT_EQ(h.error().errnum(), ENOENT);
      continue;
    }
    ASSERT_TRUE(h.ok()) << h.error().message();
    std::vector<uint8_t> back(kBlock);
    PBRICK_ASSERT_OK((*carrier)->read(h->rkey, h->remote_addr, back));
    for (uint64_t i = 0; i < kBlock; i++) {
      uint64_t pos = b * kBlock + i;
      uint8_t want = pos >= offset && pos < offset + len ? 0 : data[pos];
      ASSERT_EQ(back[i], want) << "byte " << pos;
    }
  }
}

// The kernel fills a descriptor's op_flags as op | UBLK_IO_F_* (ublk_drv's
// ublk_req_build_flags), the flags unshifted: a FUA write must be seen as
// FUA (it is acknowledged only once durable), and WRITE_ZEROES with NOUNMAP
// as one that must leave its range allocated.
TEST(UblkRequestTest, FlagsAreReadWhereTheKernelPutsThem) {
  ublksrv_io_desc d{};
  d.op_flags = UBLK_IO_OP_WRITE | UBLK_IO_F_FUA;
  d.start_sector = 8;
  d.nr_sectors = 16;
  UblkRequest r = decode_request(d);
  EXPECT_EQ(r.op, UBLK_IO_OP_WRITE);
  EXPECT_TRUE(r.fua) << "a FUA write taken for a plain one";
  EXPECT_FALSE(r.no_unmap);
  EXPECT_EQ(r.offset, 4096u);
  EXPECT_EQ(r.len, 8192u);

  d.op_flags = UBLK_IO_OP_WRITE_ZEROES | UBLK_IO_F_NOUNMAP;
  r = decode_request(d);
  EXPECT_EQ(r.op, UBLK_IO_OP_WRITE_ZEROES);
  EXPECT_TRUE(r.no_unmap);
  EXPECT_FALSE(r.fua);

  // Other flags are neither.
  d.op_flags = UBLK_IO_OP_WRITE | UBLK_IO_F_FAILFAST_DEV | UBLK_IO_F_META | UBLK_IO_F_SWAP;
  r = decode_request(d);
  EXPECT_FALSE(r.fua);
  EXPECT_FALSE(r.no_unmap);
  d.start_sector = (uint64_t{1} << 50) - 1;
  d.nr_sectors = 0xFFFFFFFFu;
  r = decode_request(d);
  EXPECT_EQ(r.offset, ((uint64_t{1} << 50) - 1) << 9);
  EXPECT_EQ(r.len, uint64_t{0xFFFFFFFFu} << 9);
}

// plan_zero_fill (WRITE_ZEROES with NOUNMAP): every block touched gets a
// zero-fill WRITE, holes included, so afterwards the whole range is
// allocated at the brick and reads as zeros; data around it stays.
TEST_F(UblkPlanTest, AZeroFillLeavesEveryBlockOfItsRangeAllocated) {
  auto volume = Volume::Open({.brick = brick_->client(), .size = 16 * kMiB});
  ASSERT_TRUE(volume.ok()) << volume.error().message();
  auto carrier = BrickClient::Connect(brick_->client());
  ASSERT_TRUE(carrier.ok()) << carrier.error().message();
  // Block 0 holds data; blocks 1 and 2 were never written.
  std::vector<uint8_t> data(kBlock, 0x5A);
  PBRICK_ASSERT_OK((*carrier)->alloc(0));
  auto h0 = (*carrier)->map(0, proto::kMapWrite | proto::kMapShared);
  ASSERT_TRUE(h0.ok()) << h0.error().message();
  PBRICK_ASSERT_OK((*carrier)->write(h0->rkey, h0->remote_addr, data));
  PBRICK_ASSERT_OK((*carrier)->unmap(0));

  std::vector<uint8_t> zeros(kBlock, 0);
  int pending = 0;
  std::vector<UblkPiece> pieces;
  const uint64_t offset = kBlock - 4096, len = kBlock + 8192;  // end of 0, all of 1, start of 2
  plan_zero_fill(**volume, offset, len, zeros.data(), &pending, pieces);
  ASSERT_EQ(pieces.size(), 3u);
  for (const UblkPiece& p : pieces) {
    EXPECT_TRUE(p.is_write);
    EXPECT_EQ(p.buf, zeros.data()) << "a piece reads past the one block of zeros";
  }
  TestChannel channel(8, **carrier);
  ChannelBacklog backlog;
  auto done = [](DataChannel::Op* op, int status) {
    auto* piece = static_cast<UblkPiece*>(op->ctx);
    piece->status = status;
    --*static_cast<int*>(piece->request);
  };
  for (int rounds = 0;; rounds++) {
    ASSERT_LT(rounds, 3) << "the pieces did not all go out";
    auto queued = queue_pieces(**volume, pieces, backlog, done);
    ASSERT_TRUE(queued.ok()) << queued.error().message();
    if (*queued == 0) break;
    pending = static_cast<int>(*queued);
    while (pending > 0) {
      backlog.feed(channel);
      ASSERT_GT(channel.inflight(), 0u);
      channel.complete_all();
    }
  }
  for (const UblkPiece& p : pieces) EXPECT_EQ(p.status, 0);
  for (uint64_t b = 0; b < 3; b++) {
    auto h = (*carrier)->map(b * kBlock, proto::kMapShared);
    ASSERT_TRUE(h.ok()) << "block " << b << " is not allocated: " << h.error().message();
    std::vector<uint8_t> back(kBlock);
    PBRICK_ASSERT_OK((*carrier)->read(h->rkey, h->remote_addr, back));
    for (uint64_t i = 0; i < kBlock; i++) {
      uint64_t pos = b * kBlock + i;
      uint8_t want = pos >= offset && pos < offset + len ? 0 : (b == 0 ? 0x5A : 0);
      ASSERT_EQ(back[i], want) << "block " << b << " byte " << i;
    }
    PBRICK_ASSERT_OK((*carrier)->unmap(b * kBlock));
  }
}

}  // namespace
}  // namespace pbrick
