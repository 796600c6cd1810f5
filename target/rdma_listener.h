// The brick's RDMA side: the listening RDMA CM id, one protection domain and
// one completion queue for every connection on the device, each connection's
// queue pair with its message buffers, the memory regions of mapped blocks and
// the read-only sync region.
//
// Nothing of the store is reachable before a connection's handshake: its queue
// pair is created and brought to RTS here without any remote access right
// (not through rdma_accept's defaults, which grant remote read and write), so
// the NIC refuses every RDMA READ and WRITE on it whatever rkey it names,
// until the Server calls allow_remote_access() after HELLO/AUTH. The sync
// region is a page of its own (not store memory), and it and every block are
// registered at random I/O virtual addresses, so no address the brick hands
// out says where anything lives. Data never passes through here: clients move it
// with one-sided READ/WRITE straight into the store's mapping, and the brick's
// CPU only sees control messages (HELLO, MAP, UNMAP, PERSIST, ...).
//
// The Server's io_uring loop drives it: it polls cm_fd() and cq_fd() for
// readability and calls next_event() / poll_cq(). Every object is owned by
// one RAII holder; a connection's QP and CM id go before the CQ and PD.
//
// wr_id of a connection's work requests (all signalled):
//   bits 63..60  1 receive, 2 send
//   bits 59..36  connection generation (low 24 bits)
//   bits 35..16  connection slot index
//   bits 15..0   message buffer index
//
// Threading: the Server's loop thread only.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/client.h"
#include "common/protocol.h"
#include "common/rdma.h"
#include "common/result.h"

namespace pbrick {

class RdmaListener;

// One accepted RDMA connection: its CM id and QP, and kRdmaMaxOutstanding
// receive and send buffers of one message each.
class RdmaConn {
 public:
  ~RdmaConn();
  // Copies one frame into a free send buffer and posts it; false when every
  // send buffer is in flight (the Server keeps the frame queued).
  bool send_frame(std::span<const uint8_t> frame, Status* error);
  void on_send_done(uint32_t slot) { free_send_.push_back(slot); }
  bool sends_in_flight() const { return free_send_.size() < proto::kRdmaMaxOutstanding; }
  std::span<const uint8_t> received(uint32_t slot, uint32_t len) const;
  Status repost(uint32_t slot);
  // Sends a disconnect request; the QP flushes, the peer sees DISCONNECTED.
  void disconnect();
  // Grants the queue pair remote read and write (RTS to RTS): called once the
  // peer completed its handshake. Until then the NIC refuses its RDMA READs
  // and WRITEs.
  Status allow_remote_access();
  std::string peer() const;

 private:
  friend class RdmaListener;
  RdmaConn() = default;

  uint64_t wr_base_ = 0;  // generation and slot bits of wr_id
  std::vector<uint8_t> recv_buf_, send_buf_;
  rdma::MrPtr recv_mr_, send_mr_;
  std::vector<uint32_t> free_send_;
  bool disconnected_ = false;
  rdma::QpPtr qp_;    // before the message buffers' regions go
  rdma::CmIdPtr id_;  // last: destroyed first (it does not own qp_)
};

class RdmaListener {
 public:
  // Binds RDMA CM to `listen` and listens. Port 0 picks a free port. The store
  // mapping [base, base + size) is what MAP registers blocks of.
  // At most `max_connections` (fewer when the device's CQ cannot hold their
  // completions: max_connections()). A port still in use is tried again for
  // `bind_retry_ms` (bind_with_retry).
  static Result<std::unique_ptr<RdmaListener>> Create(const Endpoint& listen, uint8_t* base, uint64_t size,
                                                      uint32_t max_connections, uint32_t bind_retry_ms);
  uint32_t max_connections() const { return max_connections_; }
  ~RdmaListener();

  uint16_t port() const;
  int cm_fd() const { return events_->fd; }
  // -1 until the first connection tells which device serves the address.
  int cq_fd() const { return cq_.fd(); }

  struct Event {
    // kDeviceRemoval: the RDMA device went away (a reset, a driver reload):
    // every id, the listening one included, is dead.
    enum class Kind { kConnectRequest, kEstablished, kDisconnected, kDeviceRemoval, kOther } kind;
    rdma_cm_id* id = nullptr;  // the connection's id
    uint64_t context = 0;      // what accept() stored in the id
    std::string name;          // rdma_event_str
  };
  // The next CM event, acknowledged, or nullopt when none is pending.
  Result<std::optional<Event>> next_event();

  // Accepts a CONNECT_REQUEST: creates the QP on the shared CQ, posts the
  // receives and answers. `context` comes back with the id's later events and
  // `wr_base` is packed into every wr_id of the connection.
  Result<std::unique_ptr<RdmaConn>> accept(rdma_cm_id* id, uint32_t generation, uint32_t index);
  void reject(rdma_cm_id* id);

  struct Completion {
    bool is_recv;
    uint32_t generation, index, slot;
    uint32_t byte_len;
    int status;  // 0 or errno_from_wc
    std::string error;
  };
  // Drains the shared CQ (poll, arm, poll) after consuming channel events.
  Status poll_cq(const std::function<void(const Completion&)>& fn);

  // Registers one mapped block for remote access: read-only, or read-write, at
  // a random I/O virtual address (remote_addr, 2 MiB aligned relative to the
  // block) that says nothing about where the store is mapped.
  struct Registration {
    rdma::MrPtr mr;
    uint64_t remote_addr = 0;
  };
  Result<Registration> register_block(uint64_t offset, uint64_t len, bool writable);

  // The read-only page a client's sync-read targets (RDMA trailer of the HELLO
  // or AUTH reply): brick memory of its own, never store memory.
  uint32_t sync_rkey() const { return sync_mr_ ? sync_mr_->rkey : 0; }
  uint64_t sync_addr() const { return sync_iova_; }

  // Whether the device serving the address is software (soft-RoCE, siw):
  // its "DMA" is the kernel's memcpy, which leaves what a client wrote in the
  // CPU caches whatever DDIO is (sync_read_persists_over_rdma). False until
  // the device is known (the first connection, for a wildcard address).
  bool cpu_copies() const { return cpu_copies_; }

 private:
  friend class RdmaConn;
  RdmaListener() = default;
  // The PD, CQ and sync region of the device the first connection came
  // through; verbs_ set only once all of it is, a failure leaves none of it.
  Status setup_device(ibv_context* verbs);
  Status try_setup_device(ibv_context* verbs);
  Status set_up(RdmaConn& conn, rdma_cm_id* id, uint32_t generation, uint32_t index);
  Status bring_up(RdmaConn& conn, rdma_cm_id* id, uint8_t responder_resources);

  uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  rdma::EventChannelPtr events_;
  ibv_context* verbs_ = nullptr;
  rdma::PdPtr pd_;
  rdma::CompletionQueue cq_;
  struct FreeDeleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, FreeDeleter> sync_page_;
  rdma::MrPtr sync_mr_;  // after sync_page_: deregistered before it is freed
  uint64_t sync_iova_ = 0;
  int max_rd_atom_ = 1;
  bool cpu_copies_ = false;
  uint32_t max_connections_ = 0;
  rdma::CmIdPtr listen_id_;
};

}  // namespace pbrick
