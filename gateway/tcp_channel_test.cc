// TcpChannel's receive side on its own: replies arriving in pieces of any
// size, several in one piece, a frame straddling the end of the buffer, and
// replies that match no request. Driven through the byte-moving core
// (send_iov / recv_space / on_received) with no socket and no ring.
#include "gateway/tcp_channel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <vector>

namespace pbrick {
namespace {

using proto::kHeaderSize;
using proto::Opcode;

struct Done {
  int calls = 0;
  int status = -1;
};

void record(DataChannel::Op* op, int status) {
  auto* d = static_cast<Done*>(op->ctx);
  d->calls++;
  d->status = status;
}

class TcpChannelTest : public ::testing::Test {
 protected:
  static constexpr uint32_t kDepth = 32;

  // Submits a READ of `length` bytes into its own buffer; returns its index.
  size_t read(uint32_t length) {
    size_t i = ops_.size();
    ops_.emplace_back();
    dones_.emplace_back();
    bufs_.emplace_back(length, 0);
    DataChannel::Op& op = ops_[i];
    op.opcode = Opcode::kRead;
    op.rkey = 7;
    op.remote_addr = 1ull << 21;
    op.length = length;
    op.buf = bufs_[i].data();
    op.done = record;
    op.ctx = &dones_[i];
    channel_.submit(&op);
    return i;
  }

  // The request headers the channel queued, in order (WRITE data skipped).
  std::vector<proto::FrameHeader> sent_requests() {
    std::vector<uint8_t> bytes;
    iovec iov[64];
    size_t n;
    while ((n = channel_.send_iov(iov, 64)) > 0) {
      size_t total = 0;
      for (size_t i = 0; i < n; i++) {
        const auto* p = static_cast<const uint8_t*>(iov[i].iov_base);
        bytes.insert(bytes.end(), p, p + iov[i].iov_len);
        total += iov[i].iov_len;
      }
      channel_.on_sent(total);
    }
    std::vector<proto::FrameHeader> out;
    for (size_t at = 0; at < bytes.size();) {
      auto h = proto::decode_header({bytes.data() + at, kHeaderSize}, false);
      EXPECT_TRUE(h.ok());
      out.push_back(*h);
      at += kHeaderSize + h->payload_len;
    }
    return out;
  }

  // A READ reply to `req` carrying `length` bytes of `fill`.
  static std::vector<uint8_t> read_reply(const proto::FrameHeader& req, uint32_t length, uint8_t fill) {
    proto::FrameHeader h;
    h.opcode = req.opcode;
    h.flags = proto::kFlagReply;
    h.request_id = req.request_id;
    h.payload_len = length;
    std::vector<uint8_t> frame(kHeaderSize + length);
    proto::encode_header(h, frame.data());
    for (uint32_t i = 0; i < length; i++) frame[kHeaderSize + i] = static_cast<uint8_t>(fill + i * 31);
    return frame;
  }

  // Delivers `bytes` as recvs of at most `piece` bytes each.
  Status deliver(std::span<const uint8_t> bytes, size_t piece) {
    while (!bytes.empty()) {
      std::span<uint8_t> space = channel_.recv_space();
      size_t n = std::min({piece, space.size(), bytes.size()});
      EXPECT_GT(n, 0u) << "no room to receive";
      if (n == 0) return Error(ENOBUFS, "no room");
      std::memcpy(space.data(), bytes.data(), n);
      bytes = bytes.subspan(n);
      PBRICK_TRY(channel_.on_received(n));
    }
    return Status::Ok();
  }

  bool holds(size_t i, uint8_t fill) const {
    for (size_t k = 0; k < bufs_[i].size(); k++) {
      if (bufs_[i][k] != static_cast<uint8_t>(fill + k * 31)) return false;
    }
    return true;
  }

  std::deque<DataChannel::Op> ops_;
  std::deque<Done> dones_;
  std::deque<std::vector<uint8_t>> bufs_;
  // Last: its destructor completes the ops still in flight, which must exist.
  TcpChannel channel_{kDepth};
};

TEST_F(TcpChannelTest, AReplyArrivingOneByteAtATimeCompletesOnceWhole) {
  size_t r = read(4096);
  auto reqs = sent_requests();
  ASSERT_EQ(reqs.size(), 1u);
  auto reply = read_reply(reqs[0], 4096, 3);
  ASSERT_TRUE(deliver({reply.data(), reply.size() - 1}, 1).ok());
  EXPECT_EQ(dones_[r].calls, 0) << "completed before its last byte arrived";
  EXPECT_EQ(channel_.inflight(), 1u);
  ASSERT_TRUE(deliver({reply.data() + reply.size() - 1, 1}, 1).ok());
  EXPECT_EQ(dones_[r].calls, 1);
  EXPECT_EQ(dones_[r].status, 0);
  EXPECT_TRUE(holds(r, 3));
  EXPECT_EQ(channel_.inflight(), 0u);
}

TEST_F(TcpChannelTest, SeveralRepliesSplitAtOddBoundariesCompleteInOrderWithTheirData) {
  std::vector<size_t> idx;
  for (uint32_t len : {1u, 512u, 4096u, 77u, 65536u}) idx.push_back(read(len));
  auto reqs = sent_requests();
  ASSERT_EQ(reqs.size(), idx.size());
  std::vector<uint8_t> stream;
  for (size_t i = 0; i < reqs.size(); i++) {
    auto frame = read_reply(reqs[i], ops_[idx[i]].length, static_cast<uint8_t>(10 * i + 1));
    stream.insert(stream.end(), frame.begin(), frame.end());
  }
  // 13-byte pieces split headers and payloads everywhere; then the whole
  // rest in one piece holding several frames.
  ASSERT_TRUE(deliver({stream.data(), 3000}, 13).ok());
  EXPECT_EQ(dones_[idx[0]].calls, 1);
  EXPECT_EQ(dones_[idx[1]].calls, 1);
  EXPECT_EQ(dones_[idx[2]].calls, 0);
  ASSERT_TRUE(deliver({stream.data() + 3000, stream.size() - 3000}, stream.size()).ok());
  for (size_t i = 0; i < idx.size(); i++) {
    EXPECT_EQ(dones_[idx[i]].calls, 1) << i;
    EXPECT_EQ(dones_[idx[i]].status, 0) << i;
    EXPECT_TRUE(holds(idx[i], static_cast<uint8_t>(10 * i + 1))) << i;
  }
}

TEST_F(TcpChannelTest, ALargeReplyStraddlingTheBufferEndIsMovedToTheFront) {
  // Twenty small replies move the read position past 64 KiB; the 2 MiB
  // reply after them no longer fits behind it and must move to the front
  // while only part of it has arrived.
  std::vector<size_t> small;
  for (int i = 0; i < 20; i++) small.push_back(read(4096));
  size_t big = read(static_cast<uint32_t>(proto::kMaxIoSize));
  auto reqs = sent_requests();
  ASSERT_EQ(reqs.size(), 21u);
  std::vector<uint8_t> stream;
  for (size_t i = 0; i < 20; i++) {
    auto frame = read_reply(reqs[i], 4096, static_cast<uint8_t>(i));
    stream.insert(stream.end(), frame.begin(), frame.end());
  }
  size_t big_at = stream.size();
  auto frame = read_reply(reqs[20], static_cast<uint32_t>(proto::kMaxIoSize), 99);
  stream.insert(stream.end(), frame.begin(), frame.end());
  ASSERT_TRUE(deliver({stream.data(), big_at + (1u << 20)}, stream.size()).ok());
  for (size_t i : small) EXPECT_EQ(dones_[i].calls, 1);
  EXPECT_EQ(dones_[big].calls, 0);
  ASSERT_TRUE(deliver({stream.data() + big_at + (1u << 20), stream.size() - big_at - (1u << 20)}, 100000).ok());
  EXPECT_EQ(dones_[big].calls, 1);
  EXPECT_EQ(dones_[big].status, 0);
  EXPECT_TRUE(holds(big, 99));
}

TEST_F(TcpChannelTest, AnErrorReplyCompletesWithItsErrno) {
  size_t r = read(4096);
  auto reqs = sent_requests();
  proto::FrameHeader h;
  h.opcode = Opcode::kRead;
  h.flags = proto::kFlagReply;
  h.request_id = reqs[0].request_id;
  h.status = proto::wire_status(EKEYREJECTED);
  uint8_t frame[kHeaderSize];
  proto::encode_header(h, frame);
  ASSERT_TRUE(deliver(frame, 3).ok());
  EXPECT_EQ(dones_[r].calls, 1);
  EXPECT_EQ(dones_[r].status, EKEYREJECTED);
}

TEST_F(TcpChannelTest, RepliesThatMatchNoRequestBreakTheConnection) {
  read(4096);
  auto reqs = sent_requests();
  // A stale sequence number in the right slot.
  proto::FrameHeader stale = reqs[0];
  stale.request_id += 1ull << 16;
  auto frame = read_reply(stale, 4096, 0);
  Status st = deliver(frame, frame.size());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), EPROTO);
  EXPECT_NE(st.error().message().find("matches no request in flight"), std::string::npos);
}

TEST_F(TcpChannelTest, AReadReplyOfTheWrongLengthBreaksTheConnection) {
  size_t r = read(4096);
  auto reqs = sent_requests();
  auto frame = read_reply(reqs[0], 4095, 0);
  Status st = deliver(frame, 1000);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), EPROTO);
  EXPECT_NE(st.error().message().find("wrong length"), std::string::npos);
  EXPECT_EQ(dones_[r].calls, 0) << "nothing was copied into the caller's buffer as if it were the data";
}

}  // namespace
}  // namespace pbrick
