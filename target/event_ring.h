// The brick server's io_uring and the user_data packing of every SQE on it.
//
// user_data:
//   bits 63..56  operation kind (OpKind)
//   bits 55..32  connection generation (low 24 bits), detects a reused slot
//   bits 31..0   connection slot index
// except for an fdatasync, which is the store's and no connection's: bits
// 55..0 hold its number (persistence_ledger.h).
//
// Threading: one per Server. init() on the thread that calls Server::Create();
// everything else on the loop thread (the one in Server::run()), which is the
// only one that submits or reaps.
#pragma once

#include <liburing.h>

#include <cstdint>

#include "common/result.h"
#include "common/uring.h"

namespace pbrick {

enum class OpKind : uint8_t {
  kAccept = 1, kRecv, kSend, kFsync, kSignal, kTick, kCancel, kStop, kCmPoll, kCqPoll,
  kTierPoll, kTierWake,  // tiering: the mover's eventfd; a deferred wake of MAPs waiting for it
};

struct UserData {
  static uint64_t pack(OpKind kind, uint32_t generation, uint32_t index) {
    return (static_cast<uint64_t>(kind) << 56) | (static_cast<uint64_t>(generation & 0xFFFFFF) << 32) | index;
  }
  // An fdatasync's user_data: OpKind::kFsync in the top byte, its number below.
  static uint64_t pack_sync(uint64_t number) {
    return (static_cast<uint64_t>(OpKind::kFsync) << 56) | (number & kSyncNumberMask);
  }
  static OpKind kind(uint64_t v) { return static_cast<OpKind>(v >> 56); }
  static uint32_t generation(uint64_t v) { return static_cast<uint32_t>((v >> 32) & 0xFFFFFF); }
  static uint32_t index(uint64_t v) { return static_cast<uint32_t>(v); }
  static uint64_t sync_number(uint64_t v) { return v & kSyncNumberMask; }

  static constexpr uint64_t kSyncNumberMask = (1ull << 56) - 1;
};

class EventRing {
 public:
  EventRing() = default;
  ~EventRing() {
    if (ready_) io_uring_queue_exit(&ring_);
  }
  EventRing(const EventRing&) = delete;
  EventRing& operator=(const EventRing&) = delete;

  Status init(unsigned entries) {
    int err = init_event_ring(entries, &ring_);
    if (err < 0) return Error(-err, "io_uring_queue_init");
    ready_ = true;
    return Status::Ok();
  }

  // A free SQE, counted as in flight until its completion is reaped
  // (completed()). When the SQ is full, what it holds is submitted first.
  io_uring_sqe* get_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    while (sqe == nullptr) {
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    inflight_++;
    return sqe;
  }
  void completed() { inflight_--; }
  uint64_t inflight() const { return inflight_; }
  io_uring* get() { return &ring_; }

 private:
  io_uring ring_{};
  bool ready_ = false;
  uint64_t inflight_ = 0;
};

}  // namespace pbrick
