// The TCP DataChannel: READ and WRITE travel as frames on one socket,
// pipelined, with the send and receive driven by the owner's io_uring (one
// sendmsg of queued segments and one recv in flight at a time). With
// set_send_inline(), flush() first sends what the socket takes at once
// (a non-blocking sendmsg) and leaves only the rest to the ring.
//
// Request ids on the wire: bits 0..15 the slot index, bits 16..63 a sequence
// number, so a stray or duplicated reply is detected instead of completing
// the wrong request; so is a reply to a request not all sent yet. A sync is a
// 1-byte READ through the last written handle: the brick answers a READ only
// after persisting the connection's earlier WRITEs; when the READ is refused
// because the handle died, a PERSIST naming no range confirms the sync.
//
// Not thread-safe: only the owning loop's thread calls it.
#pragma once

#include <sys/uio.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/client.h"
#include "common/protocol.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "gateway/data_channel.h"

namespace pbrick {

class TcpChannel final : public DataChannel {
 public:
  explicit TcpChannel(uint32_t depth);
  ~TcpChannel() override;
  TcpChannel(const TcpChannel&) = delete;
  TcpChannel& operator=(const TcpChannel&) = delete;

  Status connect(const ClientOptions& options) override;
  // Takes a connected socket whose HELLO is done (connect() does, and tests
  // with one end of a socketpair): the channel starts with empty queues.
  // `persist_rpc`: the brick granted PERSIST_RPC in that HELLO.
  void attach(UniqueFd fd, bool persist_rpc = false);
  bool connected() const override { return fd_.valid(); }
  bool tearing_down() const override { return tearing_down_; }
  bool full() const override { return free_slots_.empty(); }
  size_t inflight() const override { return depth_ - free_slots_.size(); }
  void submit(Op* op) override;
  // `op` goes out as a 1-byte READ into a scratch byte of the channel.
  void submit_sync(Op* op) override;
  std::chrono::steady_clock::time_point last_progress() const override { return last_progress_; }
  void teardown(int status) override;
  void set_send_inline(bool on) override { send_inline_ = on; }
  Status flush(ChannelRing& ring) override;
  Status on_cqe(uint8_t event, int res) override;
  void stop(ChannelRing& ring) override;
  void disconnect(int status) override;

  // The byte-moving core, public for tests that drive it without a ring:
  // up to `max` iovecs of bytes waiting to be sent (0 when nothing is queued),
  // and where the next recv lands. A protocol violation by the brick returns
  // an error from on_received().
  size_t send_iov(iovec* iov, size_t max) const;
  void on_sent(size_t n);
  std::span<uint8_t> recv_space();
  Status on_received(size_t n);

  // The events of the channel's SQEs (ChannelRing::channel_sqe).
  enum Event : uint8_t { kSend = 1, kRecv = 2 };

 private:
  static constexpr size_t kMaxIov = 64;

  struct Slot {
    Op* op = nullptr;
    uint64_t sequence = 0;
    uint64_t covers_write_seq = 0;  // for syncs
    bool is_sync = false;
    uint64_t sent_by = 0;  // queued_bytes_ once its last byte was queued
    std::array<uint8_t, proto::kHeaderSize + proto::kIoRequestSize> wire{};
  };
  struct Segment {
    const uint8_t* data;
    size_t len;
  };

  uint32_t enqueue(Op* op, bool is_sync);  // returns the slot index
  void complete(uint32_t slot, int status);
  void push_segment(const uint8_t* data, size_t len);

  uint32_t depth_;
  UniqueFd fd_;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;
  uint64_t next_sequence_ = 1;

  // Send queue: a ring of segments (header bytes live in the slots, WRITE data
  // in the callers' buffers). A slot queues at most 2; one answered while its
  // segments were still in the send in flight can be taken again before that
  // send completes, so 4 per slot never overflows.
  std::vector<Segment> segments_;
  size_t seg_head_ = 0, seg_count_ = 0, seg_offset_ = 0;
  // Bytes ever queued and ever sent: a request whose sent_by is beyond
  // sent_bytes_ is still (partly) queued, and no reply may free its slot.
  uint64_t queued_bytes_ = 0, sent_bytes_ = 0;
  uint64_t send_armed_bytes_ = 0;  // of the ring's send in flight: handed to the kernel

  // Receive buffer: room for the largest reply and more. Not zeroed, so the
  // pages a connection never receives into are never touched.
  std::unique_ptr<uint8_t[]> in_;
  size_t in_start_ = 0, in_end_ = 0;

  uint32_t last_write_rkey_ = 0;
  uint64_t last_write_addr_ = 0;
  std::chrono::steady_clock::time_point last_progress_{};
  uint8_t sync_scratch_ = 0;
  bool persist_granted_ = false;  // the brick granted PERSIST_RPC in HELLO

  // Loop integration.
  bool send_inflight_ = false, recv_inflight_ = false;
  bool send_inline_ = false;  // flush() sends what the socket takes at once
  bool tearing_down_ = false, stopping_ = false;
  int teardown_status_ = 0;
  iovec iov_[kMaxIov];
  msghdr msg_{};
};

}  // namespace pbrick
