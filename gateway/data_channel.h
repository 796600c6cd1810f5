// One pipelined connection to a brick carrying one-sided READ and WRITE for a
// single event loop, with up to `depth` operations in flight. The volume
// engine and the ublk queues only see this interface: whether bytes travel as
// TCP frames (tcp_channel.h) or as one-sided RDMA work requests
// (rdma_channel.h) does not leak into them.
//
// The owning loop integrates a channel into its io_uring through ChannelRing:
// once per iteration it calls flush(), which hands queued work to the
// transport in one batch and keeps the channel's own SQEs armed (TCP: a send
// and a recv; RDMA: polls on the completion channel and the CM channel); the
// completion of each such SQE goes back to on_cqe(). An error from on_cqe()
// or flush() means the connection is broken: the loop calls teardown().
//
// Persistence bookkeeping (both transports): every WRITE bumps a write
// sequence; a sync records the sequence it covers and completes only once
// everything up to it is durable, by the method the connection negotiated in
// HELLO: sync-read (a small READ after the writes, on the same connection) or
// PERSIST (rpc: the brick persists the written ranges and replies). A sync
// with nothing unsynced completes at once. Writes of a lost connection stay
// unsynced, and the next sync on the new connection covers them, unless the
// brick's host rebooted in between (its boot id changed): then that sync
// reports EIO once.
//
// Not thread-safe: only the owning loop's thread calls it.
#pragma once

#include <liburing.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/client.h"
#include "common/fifo.h"
#include "common/protocol.h"
#include "common/result.h"
#include "common/transport.h"

namespace pbrick {

// The persistence bookkeeping every channel keeps (see above): a sequence
// number per WRITE, the highest one a completed sync covers, and whether the
// brick's host rebooted under unsynced writes.
class SyncLedger {
 public:
  void wrote() { write_seq_++; }
  uint64_t write_seq() const { return write_seq_; }
  bool unsynced() const { return write_seq_ != synced_seq_; }

  // A new sync: -1 when it has to go to the brick, else the status to
  // complete it with at once (0: nothing unsynced; EIO, once: writes lost).
  // A `chained` sync (Op::chained) is nobody's FLUSH: it must neither report
  // the loss nor use up its report, so it gets ECANCELED then.
  int start_sync(bool chained) {
    if (writes_maybe_lost_ && chained) return ECANCELED;
    if (writes_maybe_lost_) {
      // Reported: the writes the reboot may have lost count as answered
      // for. Not those made since the reconnect: they still need a sync.
      writes_maybe_lost_ = false;
      if (lost_seq_ > synced_seq_) synced_seq_ = lost_seq_;
      return EIO;
    }
    return unsynced() ? -1 : 0;
  }
  // A sync that covered everything up to `write_seq` completed.
  void synced(uint64_t write_seq) {
    if (write_seq > synced_seq_) synced_seq_ = write_seq;
  }
  // HELLO on a (re)connect: true when the brick's host rebooted since the
  // last connection while writes were unsynced (the next sync reports EIO).
  // Whether the next sync reports EIO for writes a reboot may have lost.
  bool writes_maybe_lost() const { return writes_maybe_lost_; }
  // Someone else answers for them (a mirror recopies that brick's copy): no EIO.
  void forget_lost_writes() {
    writes_maybe_lost_ = false;
    if (lost_seq_ > synced_seq_) synced_seq_ = lost_seq_;
  }
  const std::array<uint8_t, proto::kUuidSize>& boot_id() const { return boot_id_; }
  bool on_hello(const std::array<uint8_t, proto::kUuidSize>& boot_id) {
    bool lost = have_boot_id_ && boot_id != boot_id_ && unsynced();
    if (lost) {
      writes_maybe_lost_ = true;
      lost_seq_ = write_seq_;  // the writes made before this connection
    }
    boot_id_ = boot_id;
    have_boot_id_ = true;
    return lost;
  }

 private:
  // One write owed from the start: what an earlier process wrote on the
  // brick may still be unsynced (a gateway killed after acknowledging
  // writes, the kernel reissuing their FLUSH to the recovered one), so the
  // first sync goes to the brick whatever this channel wrote.
  uint64_t write_seq_ = 1;
  uint64_t synced_seq_ = 0;
  uint64_t lost_seq_ = 0;  // the last write a reboot may have lost
  bool writes_maybe_lost_ = false;
  std::array<uint8_t, proto::kUuidSize> boot_id_{};
  bool have_boot_id_ = false;
};

// The ranges the next PERSIST names (persistence rpc over RDMA, where the
// brick cannot see one-sided WRITEs): what was written since the last
// PERSIST, merged per handle - a handle is one 2 MiB block, so the union of
// its writes is one range of at most 2 MiB. A brick may give a dead handle's
// rkey to a new handle at another address: a write whose union with the last
// range of its rkey would pass 2 MiB is another handle's, and gets a range of
// its own (merged, the range would lie outside the live handle and the brick
// would persist none of it). More ranges than a PERSIST names: all().
class PersistRanges {
 public:
  PersistRanges() { ranges_.reserve(proto::kMaxPersistRanges); }
  void wrote(uint32_t rkey, uint64_t remote_addr, uint64_t length) {
    if (all_) return;
    for (auto it = ranges_.rbegin(); it != ranges_.rend(); ++it) {
      if (it->rkey != rkey) continue;
      uint64_t start = std::min(it->remote_addr, remote_addr);
      uint64_t end = std::max(it->remote_addr + it->length, remote_addr + length);
      if (end - start > proto::kBlockSize) break;  // another handle with the same rkey
      it->remote_addr = start;
      it->length = end - start;
      return;
    }
    if (ranges_.size() == proto::kMaxPersistRanges) {
      set_all();
      return;
    }
    ranges_.push_back({rkey, remote_addr, length});
  }
  // The next PERSIST names every writable mapping.
  void set_all() {
    all_ = true;
    ranges_.clear();
  }
  bool all() const { return all_; }
  const std::vector<proto::PersistRange>& ranges() const { return ranges_; }
  // A PERSIST took them.
  void clear() {
    all_ = false;
    ranges_.clear();
  }

 private:
  std::vector<proto::PersistRange> ranges_;
  bool all_ = false;
};

// What a channel needs from its loop's ring.
class ChannelRing {
 public:
  // An SQE whose completion the loop passes to DataChannel::on_cqe(event, res).
  virtual io_uring_sqe* channel_sqe(uint8_t event) = 0;
  // Cancels the in-flight SQE of `event`; its completion still comes back.
  virtual void cancel_channel_sqe(uint8_t event) = 0;

 protected:
  ~ChannelRing() = default;
};

class DataChannel {
 public:
  struct Op {
    proto::Opcode opcode = proto::Opcode::kRead;
    uint32_t rkey = 0;
    uint64_t remote_addr = 0;
    uint32_t length = 0;
    uint8_t* buf = nullptr;  // READ destination or WRITE source; valid until done runs
    // Called exactly once with 0 or an errno. For connection loss the errno
    // satisfies is_connection_error(); EKEYREJECTED means the handle is dead.
    void (*done)(Op* op, int status) = nullptr;
    void* ctx = nullptr;
    // A sync chained to a lone write (VolumeChannels::push), not a FLUSH's.
    bool chained = false;
  };

  static std::unique_ptr<DataChannel> Create(Transport transport, uint32_t depth);
  virtual ~DataChannel() = default;

  // Memory the ops' buffers live in. RDMA registers it once and moves data
  // straight from/to it; ops on other memory go through a registered bounce
  // pool. TCP needs nothing. Call before the first connect().
  virtual Status add_buffer_region(uint8_t* base, size_t len) {
    (void)base;
    (void)len;
    return Status::Ok();
  }

  // Blocking connect + HELLO (+ AUTH). ClientOptions::features chooses the
  // persistence method: kFeaturePersistRpc for rpc, else sync-read.
  virtual Status connect(const ClientOptions& options) = 0;
  virtual bool connected() const = 0;
  // After connect(): the brick's host rebooted since the last connection
  // while writes were unsynced (they may be lost; the next sync reports EIO).
  bool writes_maybe_lost() const { return ledger_.writes_maybe_lost(); }
  void forget_lost_writes() { ledger_.forget_lost_writes(); }
  // The boot id of the brick's host at the last connect().
  const std::array<uint8_t, proto::kUuidSize>& boot_id() const { return ledger_.boot_id(); }
  virtual bool tearing_down() const = 0;

  virtual bool full() const = 0;
  virtual size_t inflight() const = 0;

  // Whether a sync on this connection costs the brick no CPU: an RDMA
  // sync-read, which the brick's NIC answers. A PERSIST or a sync-read over
  // TCP wakes the brick. Valid after connect().
  virtual bool sync_is_one_sided() const { return false; }

  // Queues a READ or WRITE. Requires connected() && !tearing_down() && !full().
  virtual void submit(Op* op) = 0;
  // Queues a sync (see above); `op` needs only `done` and `ctx`. Same requirements.
  virtual void submit_sync(Op* op) = 0;

  // Time of the last completion, or of the first submission since the channel
  // was idle: the owner tears down a connection that makes no progress.
  virtual std::chrono::steady_clock::time_point last_progress() const = 0;

  // Starts tearing the connection down: every op in flight completes with
  // `status`, at once or in a later flush() once the transport is quiet.
  virtual void teardown(int status) = 0;

  // Whether flush() first tries to send queued bytes at once, without
  // blocking, and leaves only what the transport cannot take now to the
  // ring. For owners that let a caller's thread flush while the loop sleeps
  // (an SQE prepared then waits for the loop; a direct send does not). Only
  // TCP has such sends; RDMA posts its work requests directly anyway.
  virtual void set_send_inline(bool on) { (void)on; }

  virtual Status flush(ChannelRing& ring) = 0;
  virtual Status on_cqe(uint8_t event, int res) = 0;

  // The loop is stopping: arm nothing more and cancel what stays armed.
  virtual void stop(ChannelRing& ring) = 0;
  // Closes the connection and completes every op in flight with `status`.
  // Only once no SQE of the channel is in flight (at loop exit).
  virtual void disconnect(int status) = 0;

 protected:
  SyncLedger ledger_;  // the transports keep it (see SyncLedger)
};

// Ops waiting for room in a DataChannel, oldest first. A loop queues every op
// it is handed here and feeds the channel from it once per iteration, so the
// channel never gets more ops than it has slots for (submit() requires
// !full()), however many pieces a request becomes. Reserve the most the owner
// can have waiting: steady state allocates nothing.
//
// Not thread-safe: only the owning loop's thread calls it.
class ChannelBacklog {
 public:
  void reserve(size_t n) { entries_.reserve(n); }
  bool empty() const { return entries_.empty(); }
  size_t size() const { return entries_.size(); }

  // `sync`: the op goes to DataChannel::submit_sync, else to submit.
  void push(DataChannel::Op* op, bool sync) { entries_.push({op, sync}); }

  // Submits waiting ops in order while the channel is connected, not tearing
  // down and has room; the rest wait for the next call.
  void feed(DataChannel& channel);

  // Completes every waiting op with `status` (there is no connection to send
  // them on).
  void fail_all(int status);

 private:
  struct Entry {
    DataChannel::Op* op;
    bool sync;
  };
  Fifo<Entry> entries_;
};

}  // namespace pbrick
