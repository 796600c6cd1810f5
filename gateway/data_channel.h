// One pipelined connection to a brick carrying one-sided READ and WRITE for a
// single event loop, with up to `depth` requests in flight.
//
// The channel is loop-agnostic: it owns the socket, the request slots and the
// receive buffer, and says what to send (send_iov) and where to receive
// (recv_space); the owning loop moves the bytes (io_uring here) and reports
// back with on_sent/on_received, which run the completion callbacks.
//
// Request ids on the wire: bits 0..15 the slot index, bits 16..63 a sequence
// number, so a stray or duplicated reply is detected instead of completing
// the wrong request.
//
// Persistence bookkeeping: every WRITE bumps a write sequence; a sync (a 1-byte
// READ through the last written handle) records the sequence it covers. A
// sync with nothing unsynced completes at once. When the connection is lost
// with unsynced writes, they stay unsynced, and the next sync on the new
// connection covers them (the brick persists its whole store at a sync point)
// unless the brick's host rebooted in between (its boot id changed): then the
// writes may be gone and that sync reports EIO once.
//
// Not thread-safe: only the owning loop's thread calls it.
#pragma once

#include <sys/uio.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <span>
#include <vector>

#include "common/client.h"
#include "common/protocol.h"
#include "common/result.h"
#include "common/unique_fd.h"

namespace pbrick {

class DataChannel {
 public:
  struct Op {
    proto::Opcode opcode = proto::Opcode::kRead;
    uint32_t rkey = 0;
    uint64_t remote_addr = 0;
    uint32_t length = 0;
    uint8_t* buf = nullptr;  // READ destination or WRITE source; valid until done runs
    // Called exactly once with 0 or an errno. For connection loss the errno
    // satisfies is_connection_error().
    void (*done)(Op* op, int status) = nullptr;
    void* ctx = nullptr;
  };

  explicit DataChannel(uint32_t depth);
  ~DataChannel();
  DataChannel(const DataChannel&) = delete;
  DataChannel& operator=(const DataChannel&) = delete;

  // Blocking connect + HELLO (+ AUTH). The socket is left blocking: the owner
  // drives it with io_uring.
  Status connect(const ClientOptions& options);
  bool connected() const { return fd_.valid(); }
  int fd() const { return fd_.get(); }

  // Closes the socket and completes every op in flight with `status`. The
  // owner must have no I/O on the socket in flight (shut it down and reap first).
  void disconnect(int status);

  bool full() const { return free_slots_.empty(); }
  size_t inflight() const { return depth_ - free_slots_.size(); }

  // Queues a READ or WRITE. Requires connected() && !full().
  void submit(Op* op);

  // Queues a sync: `op` (length 1, buf: one scratch byte) is sent as a READ
  // through the handle of the last WRITE when writes are unsynced; otherwise
  // it completes at once. Requires connected() && !full().
  void submit_sync(Op* op);

  // Up to `max` iovecs of bytes waiting to be sent; 0 when nothing is queued.
  size_t send_iov(iovec* iov, size_t max) const;
  void on_sent(size_t n);

  // Where the next recv should land, and how much arrived. A protocol
  // violation by the brick returns an error: the owner disconnects.
  std::span<uint8_t> recv_space();
  Status on_received(size_t n);

  // Time of the last reply, or of the first submission since the channel was
  // idle: the owner tears down a connection that makes no progress.
  std::chrono::steady_clock::time_point last_progress() const { return last_progress_; }

 private:
  struct Slot {
    Op* op = nullptr;
    uint64_t sequence = 0;
    uint64_t covers_write_seq = 0;  // for syncs
    bool is_sync = false;
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
  std::array<uint8_t, proto::kUuidSize> boot_id_{};
  bool have_boot_id_ = false;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;
  uint64_t next_sequence_ = 1;

  // Send queue: a ring of segments (header bytes live in the slots, WRITE data
  // in the callers' buffers); capacity 2 * depth never overflows.
  std::vector<Segment> segments_;
  size_t seg_head_ = 0, seg_count_ = 0, seg_offset_ = 0;

  std::vector<uint8_t> in_;
  size_t in_start_ = 0, in_end_ = 0;

  uint64_t write_seq_ = 0;
  uint64_t synced_seq_ = 0;
  bool writes_maybe_lost_ = false;  // the brick's host rebooted under unsynced writes
  uint32_t last_write_rkey_ = 0;
  uint64_t last_write_addr_ = 0;
  std::chrono::steady_clock::time_point last_progress_{};
};

}  // namespace pbrick
