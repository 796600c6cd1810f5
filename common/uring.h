// io_uring set-up shared by the event loops, and the owner type of an event
// loop's ring.
#pragma once

#include <liburing.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>

#include "common/result.h"

namespace pbrick {

// Initialises `ring` so that completion task work runs when the loop asks for
// completions instead of interrupting it (COOP_TASKRUN), falling back to the
// defaults on kernels before 5.19. For rings created on one thread and driven
// by another that cannot use Uring's enable() step.
// Returns 0 or -errno, as io_uring_queue_init does.
inline int init_event_ring(unsigned entries, io_uring* ring) {
  int err = io_uring_queue_init(entries, ring, IORING_SETUP_COOP_TASKRUN);
  if (err == -EINVAL) err = io_uring_queue_init(entries, ring, 0);
  return err;
}

// The io_uring of one event loop thread.
//
// Set-up with feature fallback: init() asks for the cheapest completion
// delivery the kernel has. SINGLE_ISSUER | DEFER_TASKRUN (6.1+: completion
// work runs only when the loop waits for completions, with no locking against
// other submitters) needs every submission to come from one thread; the ring
// is created disabled (R_DISABLED) so any thread may create it, and enable()
// on the loop thread makes that thread the issuer. Kernels without those
// flags get COOP_TASKRUN (5.19+), older ones the defaults; the owner does the
// same either way.
//
// user_data of every SQE on such a ring, one packing for all owners:
//   bits 56..63  kind: what the SQE is, an owner-defined enum, 1..255
//   bits 0..55   payload: what the owner needs to route the completion (a
//                ublk tag, a channel's brick and event number, ...)
// The CQE of every SQE handed out by sqe() is counted until drain() sees it,
// so a loop can run until nothing it armed is outstanding.
//
// Thread: init() anywhere; everything else on the loop thread only, with one
// exception: while the loop sleeps in wait() (never in the submit_* calls),
// another thread holding the loop's lock may take SQEs with sqe() and read
// sq_pending() and sq_space_left(); it never submits (a SINGLE_ISSUER ring
// takes submissions from the loop thread alone), so it must leave sqe()
// room: sq_space_left() at least what it takes.
class Uring {
 public:
  static constexpr int kKindShift = 56;
  static constexpr uint64_t kPayloadMask = (uint64_t{1} << kKindShift) - 1;

  static constexpr uint64_t pack(uint8_t kind, uint64_t payload) {
    return (static_cast<uint64_t>(kind) << kKindShift) | (payload & kPayloadMask);
  }
  static constexpr uint8_t kind_of(uint64_t user_data) { return static_cast<uint8_t>(user_data >> kKindShift); }
  static constexpr uint64_t payload_of(uint64_t user_data) { return user_data & kPayloadMask; }

  Uring() = default;
  ~Uring() {
    if (ready_) io_uring_queue_exit(&ring_);
  }
  Uring(const Uring&) = delete;
  Uring& operator=(const Uring&) = delete;

  // `extra_flags` (e.g. IORING_SETUP_SQE128) are required, not negotiated.
  Status init(unsigned entries, unsigned extra_flags = 0) {
    const unsigned tries[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int err = -EINVAL;
    for (unsigned flags : tries) {
      err = io_uring_queue_init(entries, &ring_, flags | extra_flags);
      if (err != -EINVAL) {
        flags_ = flags | extra_flags;
        break;
      }
    }
    if (err < 0) return Error(-err, "io_uring_queue_init");
    ready_ = true;
    return Status::Ok();
  }

  // On the loop thread, before its first submission.
  Status enable() {
    if ((flags_ & IORING_SETUP_R_DISABLED) == 0) return Status::Ok();
    // liburing 2.3 declares io_uring_enable_rings but does not export it.
    if (::syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) != 0) {
      return errno_error("io_uring_register(ENABLE_RINGS)");
    }
    return Status::Ok();
  }

  // The setup flags in force (which of the fallbacks init() got).
  unsigned flags() const { return flags_; }

  // A zeroed SQE carrying `user_data`; when the submission queue is full,
  // what it holds is submitted first to make room.
  io_uring_sqe* sqe(uint64_t user_data) {
    io_uring_sqe* s = io_uring_get_sqe(&ring_);
    while (s == nullptr) {
      io_uring_submit(&ring_);
      s = io_uring_get_sqe(&ring_);
    }
    io_uring_prep_nop(s);
    io_uring_sqe_set_data64(s, user_data);
    inflight_++;
    return s;
  }

  // Cancels the SQE of `target` (its completion still comes back), through
  // an SQE of `user_data`.
  void cancel(uint64_t user_data, uint64_t target) { io_uring_prep_cancel64(sqe(user_data), target, 0); }

  int submit() { return io_uring_submit(&ring_); }
  int submit_and_wait(unsigned n) { return io_uring_submit_and_wait(&ring_, n); }

  // SQEs handed out by sqe() and not submitted yet, and the room left for
  // more before sqe() has to submit to make room.
  unsigned sq_pending() const { return io_uring_sq_ready(&ring_); }
  unsigned sq_space_left() const { return io_uring_sq_space_left(&ring_); }

  // Sleeps until a completion is there, submitting nothing: for an owner
  // that lets another thread prepare SQEs (under the owner's lock) while it
  // sleeps, so the kernel must not read the submission queue meanwhile. The
  // owner submits what is pending itself, under its lock, before it calls
  // this. Returns 0 or -errno (-EINTR: woken by a signal).
  int wait() {
    io_uring_cqe* cqe = nullptr;
    return io_uring_wait_cqe(&ring_, &cqe);  // enters with nothing to submit
  }

  // submit_and_wait(1), but first, for up to `poll`, checks the completion
  // queue without sleeping: a reply that comes within the bound costs no
  // sleep and wake-up of this thread. Each check enters the kernel without
  // waiting (io_uring_get_events), which runs the completion work the kernel
  // defers to this thread (DEFER_TASKRUN, COOP_TASKRUN: a CQE is posted only
  // when the owner enters the ring). The owner passes a non-zero `poll` only
  // while it expects a completion soon (I/O in flight), so a ring with
  // nothing outstanding never spins. Returns what submit_and_wait returns.
  int submit_and_wait_polling(std::chrono::nanoseconds poll) {
    if (poll.count() <= 0) return io_uring_submit_and_wait(&ring_, 1);
    int err = io_uring_submit(&ring_);
    if (err < 0) return err;
    if (io_uring_cq_ready(&ring_) > 0) return err;
    const auto until = std::chrono::steady_clock::now() + poll;
    do {
      int r = io_uring_get_events(&ring_);
      if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) return r;
      if (io_uring_cq_ready(&ring_) > 0) {
        polls_won_++;
        return err;
      }
    } while (std::chrono::steady_clock::now() < until);
    polls_lost_++;
    return io_uring_submit_and_wait(&ring_, 1);
  }

  // Statistics of submit_and_wait_polling: waits that polling ended (a
  // completion came within the bound), and waits that slept after it. A wait
  // whose completion was there at submission counts as neither.
  uint64_t polls_won() const { return polls_won_; }
  uint64_t polls_lost() const { return polls_lost_; }

  // Calls fn(user_data, res) for every completion there is, then retires them.
  template <typename Fn>
  unsigned drain(Fn&& fn) {
    unsigned head, count = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      inflight_--;
      fn(io_uring_cqe_get_data64(cqe), cqe->res);
      count++;
    }
    io_uring_cq_advance(&ring_, count);
    return count;
  }

  // SQEs handed out whose completion drain() has not seen yet.
  uint64_t inflight() const { return inflight_; }

 private:
  io_uring ring_{};
  bool ready_ = false;
  unsigned flags_ = 0;
  uint64_t inflight_ = 0;
  uint64_t polls_won_ = 0, polls_lost_ = 0;
};

}  // namespace pbrick
