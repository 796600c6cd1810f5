// RDMA plumbing shared by the brick, the gateway and the tools: one RAII owner
// per rdma-core object (destroyed in reverse order of creation by declaration
// order in their holders), the errno mapping of work completions, and
// RdmaLink, the active (client) side of one RC connection to a brick.
//
// RdmaLink carries the control protocol as messages: every frame is one SEND
// of at most proto::kRdmaMessageSize bytes into one of the peer's pre-posted
// receives, and a client has at most proto::kRdmaMaxOutstanding requests
// outstanding (each gets exactly one reply), so neither side ever runs out of
// receives. Data moves with one-sided READ/WRITE posted by the owner.
//
// The PD, completion channel, CQ and every registered region outlive
// reconnects: connect() after disconnect() creates a new CM id and QP on the
// same device, so the owner registers memory once and keeps polling the same
// file descriptors. A completion of an earlier connection can still surface in
// the CQ; wr_id carries the connection's epoch so it is recognised and dropped.
//
// wr_id layout:
//   bits 63..60  kind: 1 receive, 2 message send, 3 one-sided (owner's)
//   bits 59..48  connection epoch (low 12 bits)
//   bits 47..0   receive/send slot, or the owner's 48-bit cookie
//
// Not thread-safe: one thread at a time (an event loop, or a blocking client).
#pragma once

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"

namespace pbrick {

struct Endpoint;

namespace rdma {

struct EventChannelDeleter {
  void operator()(rdma_event_channel* c) const { rdma_destroy_event_channel(c); }
};
struct CmIdDeleter {
  void operator()(rdma_cm_id* id) const {
    if (id->qp != nullptr) rdma_destroy_qp(id);
    rdma_destroy_id(id);
  }
};
struct QpDeleter {
  void operator()(ibv_qp* qp) const { ibv_destroy_qp(qp); }
};
struct PdDeleter {
  void operator()(ibv_pd* pd) const { ibv_dealloc_pd(pd); }
};
struct CompChannelDeleter {
  void operator()(ibv_comp_channel* c) const { ibv_destroy_comp_channel(c); }
};
struct CqDeleter {
  void operator()(ibv_cq* cq) const { ibv_destroy_cq(cq); }
};
struct MrDeleter {
  void operator()(ibv_mr* mr) const { ibv_dereg_mr(mr); }
};
using EventChannelPtr = std::unique_ptr<rdma_event_channel, EventChannelDeleter>;
using CmIdPtr = std::unique_ptr<rdma_cm_id, CmIdDeleter>;  // also destroys the id's QP
using QpPtr = std::unique_ptr<ibv_qp, QpDeleter>;  // a QP created without rdma_create_qp
using PdPtr = std::unique_ptr<ibv_pd, PdDeleter>;
using CompChannelPtr = std::unique_ptr<ibv_comp_channel, CompChannelDeleter>;
using CqPtr = std::unique_ptr<ibv_cq, CqDeleter>;
using MrPtr = std::unique_ptr<ibv_mr, MrDeleter>;

// A CQ with its completion channel, acknowledging events in batches.
// The channel's fd is non-blocking: an event loop polls it for readability.
class CompletionQueue {
 public:
  ~CompletionQueue();
  Status create(ibv_context* verbs, int entries);
  // Destroys the CQ, then its channel (what create() made); nothing if none.
  void reset();
  ibv_cq* cq() const { return cq_.get(); }
  int fd() const { return channel_ ? channel_->fd : -1; }
  // Takes one event off the channel, if there is one (without blocking), and
  // acknowledges events in batches; call when fd() is readable. One read, not
  // a loop until EAGAIN: each event needs an arm, and drain() arms once, so a
  // second event is rare (a completion that raced the arming) and leaves the
  // fd readable - it costs one more wake-up, where reading until EAGAIN would
  // cost a system call on every wake-up.
  void consume_event();
  // Re-arms notification. Callers poll again afterwards (poll, arm, poll) so a
  // completion that raced the arming is not left waiting for the next event.
  Status arm();
  // consume_event(), then every work completion to `fn`, in batches: poll
  // until empty, arm, poll again; ends armed. A template, so the callback
  // costs no allocation per batch.
  template <typename Fn>
  Status drain(Fn&& fn) {
    consume_event();
    ibv_wc wcs[32];
    bool armed = false;
    for (;;) {
      int n = ibv_poll_cq(cq_.get(), 32, wcs);
      if (n < 0) return Error(EIO, "ibv_poll_cq failed");
      if (n == 0) {
        if (armed) return Status::Ok();
        PBRICK_TRY(arm());
        armed = true;
        continue;
      }
      armed = false;
      for (int i = 0; i < n; i++) fn(wcs[i]);
    }
  }

 private:
  CompChannelPtr channel_;
  CqPtr cq_;
  unsigned unacked_ = 0;
};

// errno for a failed work completion: EKEYREJECTED for a remote access error
// (a dead or foreign rkey, or an access the handle does not allow), ECONNRESET
// for a flushed WR (the QP is being torn down), ETIMEDOUT when the peer stopped
// answering, ECONNRESET for any other (transport) failure - never EIO, which
// the gateway reads as the brick failing to make data durable.
int errno_from_wc(ibv_wc_status status);
std::string wc_error_text(const ibv_wc& wc);

// Posts one signalled SEND of [buf, buf + len) / one receive into it; the
// memory is in the region of `lkey`. The error carries the verbs return code.
Status post_send(ibv_qp* qp, uint64_t wr_id, const uint8_t* buf, uint32_t len, uint32_t lkey);
Status post_recv(ibv_qp* qp, uint64_t wr_id, uint8_t* buf, uint32_t len, uint32_t lkey);

// Resolves HOST:PORT to a socket address for RDMA CM. ENOENT when unknown.
Result<sockaddr_storage> resolve(const Endpoint& ep, bool passive);

// Waits for the next CM event on `channel` (a non-blocking fd) for at most
// `timeout_ms`; returns it unacknowledged, or ETIMEDOUT.
Result<rdma_cm_event*> next_cm_event(rdma_event_channel* channel, int timeout_ms);

struct LinkOptions {
  uint32_t one_sided_depth = 16;  // one-sided WRs in flight
  uint32_t max_sge = 1;           // SGEs per one-sided WR
};

class RdmaLink {
 public:
  struct Completion {
    enum class Kind { kMessage, kOneSided } kind;
    uint64_t cookie = 0;  // one-sided: the owner's cookie
    int status = 0;       // 0 or errno_from_wc()
    std::string error;    // wc_error_text() when status != 0
    std::span<const uint8_t> message;  // kMessage: valid during the callback only
  };

  RdmaLink();
  ~RdmaLink();
  RdmaLink(const RdmaLink&) = delete;
  RdmaLink& operator=(const RdmaLink&) = delete;

  // Memory that one-sided WRs use as local buffers. Registered at once when a
  // PD exists, else at the first connect(); kept for the link's lifetime.
  Status add_region(void* base, size_t len);
  // lkey of the registered region holding [p, p + len), or 0 when none does.
  uint32_t lkey(const void* p, size_t len) const;

  // Resolves, connects and posts the receives. The handshake (HELLO) is the
  // owner's business. ECONNREFUSED when nobody serves RDMA there.
  Status connect(const Endpoint& ep, const LinkOptions& options, int timeout_ms);
  void disconnect();
  bool connected() const { return id_ != nullptr; }
  uint32_t epoch() const { return epoch_; }

  int completion_fd() const { return cq_.fd(); }
  int cm_fd() const;

  // Copies `frame` into a send slot and posts it, after every one-sided WR
  // queued before it (post_queued() first): an RC queue pair executes WRs in
  // the order they are posted, and a message (a PERSIST) must reach the brick
  // after the WRITEs it covers. EAGAIN when every slot is waiting for its
  // completion (the owner keeps below kRdmaMaxOutstanding).
  Status send_message(std::span<const uint8_t> frame);

  // Queues a one-sided READ or WRITE; post_queued() hands every queued WR to
  // the NIC with one ibv_post_send. `sges` must point into added regions.
  void queue_rdma(ibv_wr_opcode opcode, const ibv_sge* sges, int nsge, uint32_t rkey, uint64_t remote_addr,
                  uint64_t cookie);
  Status post_queued();
  // One-sided WRs queued and not yet posted.
  size_t queued() const { return queued_.size(); }

  // Drains the CQ without blocking, calling `fn` for every message received
  // and every one-sided completion of this connection; message receives are
  // re-posted after `fn` returns. Ends armed (poll, arm, poll). Returns the
  // first fatal error (a failed receive or send: the connection is broken).
  Status poll(const std::function<void(const Completion&)>& fn);

  // Blocks until the CQ has an event or `timeout_ms` passes (ETIMEDOUT), then
  // polls. For one-at-a-time users.
  Status wait(int timeout_ms, const std::function<void(const Completion&)>& fn);

  // Handles pending CM events without blocking: ECONNRESET once the brick
  // disconnected (the owner tears down and reconnects).
  Status check_cm_events();

 private:
  struct Region {
    uint8_t* base;
    size_t len;
    MrPtr mr;
  };
  Status setup_device(ibv_context* verbs, const LinkOptions& options);
  Status try_setup_device(ibv_context* verbs, const LinkOptions& options);
  Status post_recv(uint32_t slot);

  EventChannelPtr events_;
  ibv_context* verbs_ = nullptr;
  PdPtr pd_;
  CompletionQueue cq_;
  std::vector<Region> regions_;
  std::vector<uint8_t> recv_bufs_, send_bufs_;
  MrPtr recv_mr_, send_mr_;
  std::vector<uint32_t> free_send_slots_;
  CmIdPtr id_;  // last: the QP goes before the CQ and PD it uses
  uint32_t epoch_ = 0;
  bool cm_disconnected_ = false;
  std::vector<ibv_send_wr> queued_;
  std::vector<ibv_sge> queued_sges_;
  uint32_t max_sge_ = 1;
};

}  // namespace rdma
}  // namespace pbrick
