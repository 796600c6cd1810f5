// The RDMA DataChannel: one RC queue pair to the brick per (loop, brick).
// READ and WRITE are one-sided RDMA READ/WRITE work requests straight from/to
// the owner's registered buffers (add_buffer_region: the ublk queue's per-tag
// buffers), or through a registered bounce pool for memory that is not (the
// nbdkit plugin's request buffers). The brick's CPU never sees them.
//
// Work requests queued by submit() go to the NIC in one ibv_post_send per
// flush(). Completions: the loop polls the completion channel's fd; on_cqe()
// consumes the events, acknowledges them in batches and drains the CQ (poll,
// arm, poll). Every work completion's status is checked: a failed one fails
// its op (EKEYREJECTED for a remote access error: the handle is dead, the
// owner maps again) and breaks the QP, so the channel asks the loop to tear
// down; the other ops in flight (flushed WRs, syncs) then fail with
// ECONNRESET and are retried by the owner after the reconnect, under the
// same deadline rules as over TCP. The CM
// channel is polled too, so a brick that disconnects is noticed at once.
//
// Syncs, by the method negotiated in HELLO:
//  - sync-read: an RDMA READ of a few bytes of the brick's sync region (RDMA
//    trailer of HELLO or AUTH) posted after the writes on this QP; it completes only after the
//    writes before it are placed, which with DDIO off means persistent.
//  - rpc: a PERSIST message naming the ranges written since the last sync on
//    this QP (merged per handle; every writable mapping when there are more
//    than fit one message, or after a reconnect); the brick replies once they
//    are durable, in request order. At most kRdmaMaxOutstanding are in
//    flight; later syncs wait for a reply to free a message credit.
//
// cookie of a one-sided WR (48 bits): bits 47..16 sequence, 15..0 slot;
// request_id of a PERSIST: sequence << 16 | slot.
//
// Not thread-safe: only the owning loop's thread calls it.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <vector>

#include "common/fifo.h"
#include "common/protocol.h"
#include "common/rdma.h"
#include "gateway/data_channel.h"

namespace pbrick {

class RdmaChannel final : public DataChannel {
 public:
  explicit RdmaChannel(uint32_t depth);
  ~RdmaChannel() override;
  RdmaChannel(const RdmaChannel&) = delete;
  RdmaChannel& operator=(const RdmaChannel&) = delete;

  Status add_buffer_region(uint8_t* base, size_t len) override;
  Status connect(const ClientOptions& options) override;
  bool connected() const override { return link_.connected(); }
  bool tearing_down() const override { return false; }  // teardown() is immediate
  bool full() const override;
  size_t inflight() const override { return depth_ - free_slots_.size(); }
  bool sync_is_one_sided() const override { return !rpc_; }
  void submit(Op* op) override;
  void submit_sync(Op* op) override;
  std::chrono::steady_clock::time_point last_progress() const override { return last_progress_; }
  void teardown(int status) override;
  Status flush(ChannelRing& ring) override;
  Status on_cqe(uint8_t event, int res) override;
  void stop(ChannelRing& ring) override;
  void disconnect(int status) override { teardown(status); }

  // The bounce pool: kBounceChunks chunks of kChunkSize; an op takes at most
  // kMaxChunksPerOp of them, one SGE each.
  static constexpr size_t kChunkSize = 256u << 10;
  static constexpr uint32_t kBounceChunks = 64;
  static constexpr uint32_t kMaxChunksPerOp = proto::kMaxIoSize / kChunkSize;

 private:
  enum Event : uint8_t { kCqPoll = 1, kCmPoll = 2 };
  enum class Kind : uint8_t { kData, kSyncRead, kPersist };
  struct Slot {
    Op* op = nullptr;
    uint64_t sequence = 0;
    Kind kind = Kind::kData;
    uint64_t covers_write_seq = 0;
    uint8_t nchunks = 0;
    bool sent = false;  // a PERSIST that went out (holds a message credit)
    std::array<uint16_t, kMaxChunksPerOp> chunks{};
  };

  uint32_t take_slot(Op* op, Kind kind);
  void complete(uint32_t index, int status);
  void on_completion(const rdma::RdmaLink::Completion& c);
  void on_reply(std::span<const uint8_t> message);
  void note_write(const Op& op);
  // Sends the PERSIST of slot `index`: the dirty ranges, or none (= every
  // writable mapping) after an overflow or a reconnect.
  void send_persist(uint32_t index);
  // The connection is broken: the loop tears it down, and every op still in
  // flight completes with ECONNRESET, to be sent again after the reconnect
  // (as over TCP); only the op whose work request failed keeps its status.
  void fail_connection(const std::string& why);

  const uint32_t depth_;
  rdma::RdmaLink link_;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;
  uint64_t next_sequence_ = 1;
  std::chrono::steady_clock::time_point last_progress_{};

  bool have_regions_ = false;      // the owner registered its buffers: no bounce pool
  bool own_memory_added_ = false;  // bounce pool and scratch_ are in the link's regions
  std::vector<uint8_t> bounce_;
  std::vector<uint16_t> free_chunks_;
  std::vector<uint8_t> scratch_;  // sync-read destination, registered
  std::vector<ibv_sge> sges_;     // scratch for building one WR

  bool rpc_ = false;
  uint32_t sync_rkey_ = 0;
  uint64_t sync_addr_ = 0;
  PersistRanges dirty_;  // rpc: what the next PERSIST names
  uint32_t persists_inflight_ = 0;
  Fifo<uint32_t> waiting_persists_;  // slots waiting for a message credit
  std::vector<uint8_t> message_;            // PERSIST encoding buffer
  proto::PersistRequest persist_req_;

  bool cq_poll_inflight_ = false, cm_poll_inflight_ = false, stopping_ = false;
  Status error_ = Status::Ok();  // a broken connection found while polling
};

}  // namespace pbrick
