// TcpChannel's receive side on its own: replies arriving in pieces of any
// size, several in one piece, a frame straddling the end of the buffer, and
// replies that match no request. Driven through the byte-moving core
// (send_iov / recv_space / on_received) with no socket and no ring. Then the
// inline send (set_send_inline) on one end of a socketpair, with a ring that
// records the SQEs the channel arms: what the socket takes goes out at once,
// the rest through the ring, and a send error breaks the connection.
#include "gateway/tcp_channel.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <thread>
#include <vector>

#include "common/crc32c.h"
#include "gateway/test_brick.h"  // PBRICK_ASSERT_OK
#include "gateway/volume.h"

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

  // Submits a WRITE of `data` (which must outlive it); returns its index.
  size_t write(const std::vector<uint8_t>& data) {
    size_t i = ops_.size();
    ops_.emplace_back();
    dones_.emplace_back();
    bufs_.emplace_back();
    DataChannel::Op& op = ops_[i];
    op.opcode = Opcode::kWrite;
    op.rkey = 7;
    op.remote_addr = 1ull << 21;
    op.length = static_cast<uint32_t>(data.size());
    op.buf = const_cast<uint8_t*>(data.data());
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

// A brick answers a request only once it read all of it. A reply to one
// whose data is still queued here (a brick guessing request ids) breaks the
// connection instead of freeing the slot whose header and data the send
// queue still points at for the next request to overwrite.
TEST_F(TcpChannelTest, AReplyToARequestNotAllSentYetBreaksTheConnection) {
  std::vector<uint8_t> data(4096, 0x5A);
  size_t w = write(data);
  iovec iov[4];
  ASSERT_EQ(channel_.send_iov(iov, 4), 2u);  // header + request, then the data
  ASSERT_EQ(iov[0].iov_len, kHeaderSize + proto::kIoRequestSize);
  channel_.on_sent(iov[0].iov_len + 100);  // the data only begun
  auto req = proto::decode_header({static_cast<const uint8_t*>(iov[0].iov_base), kHeaderSize}, false);
  ASSERT_TRUE(req.ok());
  proto::FrameHeader h;
  h.opcode = Opcode::kWrite;
  h.flags = proto::kFlagReply;
  h.request_id = req->request_id;
  std::vector<uint8_t> frame(kHeaderSize);
  proto::encode_header(h, frame.data());
  Status st = deliver(frame, frame.size());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), EPROTO);
  EXPECT_NE(st.error().message().find("not sent yet"), std::string::npos) << st.error().message();
  EXPECT_EQ(dones_[w].calls, 0) << "the WRITE completed with its data still to be sent";
}

// A ring that records the SQEs a channel arms instead of submitting them.
class RecordingRing final : public ChannelRing {
 public:
  io_uring_sqe* channel_sqe(uint8_t event) override {
    events.push_back(event);
    return &sqes_.emplace_back();
  }
  void cancel_channel_sqe(uint8_t event) override { cancelled.push_back(event); }
  size_t count(TcpChannel::Event event) const { return std::count(events.begin(), events.end(), event); }

  std::vector<uint8_t> events, cancelled;

 private:
  std::deque<io_uring_sqe> sqes_;
};

// The channel on one end of a socketpair, the test at the other (peer_).
class TcpChannelSocketTest : public TcpChannelTest {
 protected:
  void SetUp() override {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0) << std::strerror(errno);
    channel_fd_ = fds[0];
    channel_.attach(UniqueFd(fds[0]));
    peer_.reset(fds[1]);
    channel_.set_send_inline(true);
  }

  // What the peer can read without waiting.
  std::vector<uint8_t> peer_bytes() {
    std::vector<uint8_t> out(1 << 20);
    ssize_t n = ::recv(peer_.get(), out.data(), out.size(), MSG_DONTWAIT);
    out.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return out;
  }

  RecordingRing ring_;
  int channel_fd_ = -1;  // owned by channel_
  UniqueFd peer_;
};

TEST_F(TcpChannelSocketTest, AnInlineSendPutsTheRequestOnTheSocketAndArmsOnlyTheReceive) {
  size_t r = read(4096);
  PBRICK_ASSERT_OK(channel_.flush(ring_));
  EXPECT_EQ(ring_.count(TcpChannel::kSend), 0u) << "the request went through the ring";
  EXPECT_EQ(ring_.count(TcpChannel::kRecv), 1u);
  auto sent = peer_bytes();
  ASSERT_EQ(sent.size(), kHeaderSize + proto::kIoRequestSize);
  auto h = proto::decode_header({sent.data(), kHeaderSize}, false);
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_EQ(h->opcode, Opcode::kRead);

  // The reply through the socket, received where the armed recv would put it.
  auto reply = read_reply(*h, 4096, 5);
  ASSERT_EQ(::send(peer_.get(), reply.data(), reply.size(), 0), static_cast<ssize_t>(reply.size()));
  size_t got = 0;
  while (got < reply.size()) {
    std::span<uint8_t> space = channel_.recv_space();
    ssize_t n = ::recv(channel_fd_, space.data(), space.size(), 0);
    ASSERT_GT(n, 0) << std::strerror(errno);
    PBRICK_ASSERT_OK(channel_.on_cqe(TcpChannel::kRecv, static_cast<int>(n)));
    got += static_cast<size_t>(n);
  }
  EXPECT_EQ(dones_[r].calls, 1);
  EXPECT_EQ(dones_[r].status, 0);
  EXPECT_TRUE(holds(r, 5));
}

// A reply through the ring that matches no request breaks the connection
// with EPROTO, which VolumeChannels::teardown takes for a connection the
// gateway gave up (the brick may still hold its requests: a new writer id
// first), not for one the brick reset.
TEST_F(TcpChannelSocketTest, ANonsensicalReplyThroughTheRingIsAProtocolError) {
  read(4096);
  PBRICK_ASSERT_OK(channel_.flush(ring_));
  auto sent = peer_bytes();
  ASSERT_EQ(sent.size(), kHeaderSize + proto::kIoRequestSize);
  auto h = proto::decode_header({sent.data(), kHeaderSize}, false);
  ASSERT_TRUE(h.ok()) << h.error().message();
  proto::FrameHeader stale = *h;
  stale.request_id += 1ull << 16;
  auto reply = read_reply(stale, 4096, 5);
  ASSERT_EQ(::send(peer_.get(), reply.data(), reply.size(), 0), static_cast<ssize_t>(reply.size()));
  std::span<uint8_t> space = channel_.recv_space();
  ssize_t n = ::recv(channel_fd_, space.data(), space.size(), 0);
  ASSERT_GT(n, 0) << std::strerror(errno);
  Status st = channel_.on_cqe(TcpChannel::kRecv, static_cast<int>(n));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), EPROTO) << st.error().message();
}

TEST_F(TcpChannelSocketTest, WhatTheSocketCannotTakeAtOnceGoesThroughTheRingInOrder) {
  int small = 16 << 10;
  ASSERT_EQ(::setsockopt(channel_fd_, SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
  std::vector<uint8_t> data(proto::kMaxIoSize);
  for (size_t i = 0; i < data.size(); i++) data[i] = static_cast<uint8_t>(i * 7 + i / 4096);
  const size_t total = kHeaderSize + proto::kIoRequestSize + data.size();
  std::vector<uint8_t> stream;
  std::thread reader([&] {
    std::vector<uint8_t> buf(1 << 16);
    while (stream.size() < total) {
      ssize_t n = ::recv(peer_.get(), buf.data(), buf.size(), 0);
      if (n <= 0) break;
      stream.insert(stream.end(), buf.begin(), buf.begin() + n);
    }
  });
  // Joined on every way out, a failed ASSERT's return included: shutting the
  // peer down ends the reader's recv.
  struct JoinOnExit {
    std::thread& thread;
    int fd;
    ~JoinOnExit() {
      if (!thread.joinable()) return;
      ::shutdown(fd, SHUT_RDWR);
      thread.join();
    }
  } join_reader{reader, peer_.get()};
  size_t w = write(data);
  PBRICK_ASSERT_OK(channel_.flush(ring_));
  EXPECT_EQ(ring_.count(TcpChannel::kSend), 1u) << "a 2 MiB WRITE fit a 16 KiB socket buffer at once";
  // Plays the ring's sends (a blocking sendmsg of what the channel queued)
  // until nothing is left.
  for (int rounds = 0; rounds < 100000; rounds++) {
    iovec iov[64];
    size_t n = channel_.send_iov(iov, 64);
    if (n == 0) break;
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = n;
    ssize_t sent = ::sendmsg(channel_fd_, &msg, MSG_NOSIGNAL);
    ASSERT_GT(sent, 0) << std::strerror(errno);
    PBRICK_ASSERT_OK(channel_.on_cqe(TcpChannel::kSend, static_cast<int>(sent)));
    PBRICK_ASSERT_OK(channel_.flush(ring_));
  }
  reader.join();
  ASSERT_EQ(stream.size(), total);
  auto h = proto::decode_header({stream.data(), kHeaderSize}, false);
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_EQ(h->opcode, Opcode::kWrite);
  const uint8_t* payload = stream.data() + kHeaderSize + proto::kIoRequestSize;
  EXPECT_EQ(crc32c(payload, data.size()), crc32c(data.data(), data.size())) << "the WRITE's data arrived changed";
  EXPECT_EQ(dones_[w].calls, 0) << "completed before its reply";
}

// A send through the ring may still be in flight when the brick answers the
// first requests it carried (io_uring hands a send the socket cannot take at
// once to a worker, which completes it only when all of it is out): those
// replies complete their requests; a reply to a request queued after that
// send was armed is a protocol error.
TEST_F(TcpChannelSocketTest, RepliesToRequestsOfTheSendInFlightCompleteThemBeforeItsCompletion) {
  channel_.set_send_inline(false);
  std::vector<uint8_t> data(4096, 0x33);
  size_t a = write(data);
  size_t b = write(data);
  PBRICK_ASSERT_OK(channel_.flush(ring_));
  ASSERT_EQ(ring_.count(TcpChannel::kSend), 1u);
  size_t c = write(data);  // queued behind the send in flight
  auto reply_to = [&](uint64_t request_id) {
    proto::FrameHeader h;
    h.opcode = Opcode::kWrite;
    h.flags = proto::kFlagReply;
    h.request_id = request_id;
    std::vector<uint8_t> frame(kHeaderSize);
    proto::encode_header(h, frame.data());
    return frame;
  };
  // Slots 0, 1, 2 with sequence numbers 1, 2, 3.
  PBRICK_ASSERT_OK(deliver(reply_to(1ull << 16 | 0), kHeaderSize));
  PBRICK_ASSERT_OK(deliver(reply_to(2ull << 16 | 1), kHeaderSize));
  EXPECT_EQ(dones_[a].calls, 1);
  EXPECT_EQ(dones_[a].status, 0);
  EXPECT_EQ(dones_[b].calls, 1);
  Status st = deliver(reply_to(3ull << 16 | 2), kHeaderSize);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message().find("not sent yet"), std::string::npos) << st.error().message();
  EXPECT_EQ(dones_[c].calls, 0);
}

TEST_F(TcpChannelSocketTest, AnInlineSendToAClosedPeerBreaksTheConnectionAndFailsTheRequest) {
  peer_.reset();
  size_t r = read(4096);
  Status st = channel_.flush(ring_);
  ASSERT_FALSE(st.ok()) << "a send to a closed peer succeeded";
  EXPECT_EQ(st.error().errnum(), EPIPE);
  EXPECT_NE(st.error().message().find("send to the brick"), std::string::npos) << st.error().message();
  EXPECT_EQ(ring_.count(TcpChannel::kSend), 0u);
  EXPECT_EQ(dones_[r].calls, 0);
  // What the loop does with a flush() error (VolumeChannels::teardown): the
  // request fails with it once nothing of the channel is in flight.
  channel_.teardown(st.error().errnum());
  PBRICK_ASSERT_OK(channel_.flush(ring_));
  EXPECT_FALSE(channel_.connected());
  EXPECT_EQ(dones_[r].calls, 1);
  EXPECT_EQ(dones_[r].status, EPIPE);
  EXPECT_TRUE(is_connection_error(dones_[r].status)) << "the request would not be retried on a new connection";
}

// Over TCP, a request the channel gave up on (torn down: it fails, and may
// be sent again on a new connection) must not reach the brick afterwards
// from the kernel's send queue, as a graceful close would let it once the
// brick reads again (after a partition heals: an old WRITE over newer data).
// The brick here does not read until the channel closed; it then gets at
// most what had already reached its own receive buffer, not what the
// channel's kernel still held.
TEST_F(TcpChannelTest, ATornDownTcpConnectionDeliversNothingItStillHeldAfterItCloses) {
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(listener.valid());
  int small = 4096;
  ASSERT_EQ(::setsockopt(listener.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);  // inherited
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);
  ASSERT_EQ(::listen(listener.get(), 1), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
  UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(client.valid());
  int sndbuf = 256 << 10;
  ASSERT_EQ(::setsockopt(client.get(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf), 0);
  ASSERT_EQ(::connect(client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);
  UniqueFd brick(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(brick.valid());
  channel_.attach(std::move(client));
  channel_.set_send_inline(true);

  RecordingRing ring;
  std::vector<uint8_t> data(proto::kMaxIoSize, 0x5a);
  size_t w = write(data);
  PBRICK_ASSERT_OK(channel_.flush(ring));
  // What the channel's kernel took: all that was sent, less what waits in
  // the channel for the ring.
  iovec iov[64];
  size_t waiting = 0;
  for (size_t i = 0, n = channel_.send_iov(iov, 64); i < n; i++) waiting += iov[i].iov_len;
  const size_t taken = kHeaderSize + proto::kIoRequestSize + data.size() - waiting;
  ASSERT_GT(taken, 64u << 10) << "too little went into the socket for the test to tell";

  channel_.teardown(ETIMEDOUT);
  // The ring's recv and send come back, as shutdown() makes them.
  ASSERT_EQ(ring.count(TcpChannel::kRecv), 1u);
  (void)channel_.on_cqe(TcpChannel::kRecv, 0);
  if (ring.count(TcpChannel::kSend) == 1) (void)channel_.on_cqe(TcpChannel::kSend, -EPIPE);
  PBRICK_ASSERT_OK(channel_.flush(ring));
  ASSERT_FALSE(channel_.connected());
  EXPECT_EQ(dones_[w].status, ETIMEDOUT);
  size_t delivered = 0;
  std::vector<uint8_t> buf(1 << 16);
  for (;;) {
    ssize_t n = ::recv(brick.get(), buf.data(), buf.size(), 0);
    if (n <= 0) break;  // 0: a graceful end; -1 ECONNRESET: aborted
    delivered += static_cast<size_t>(n);
  }
  EXPECT_LT(delivered, taken / 2) << "the brick got " << delivered << " of the " << taken
                                  << " bytes the torn-down connection held";
}

}  // namespace
}  // namespace pbrick
