// How a connection's bytes move, behind one interface:
//   TcpTransport   a stream socket; one recv and one send at a time through
//                  the Server's io_uring, straight into and out of the
//                  connection's buffers. Frames carry READ/WRITE data.
//   RdmaTransport  an RDMA queue pair (rdma_listener.h): each control frame
//                  is one SEND/RECV message, copied between the message
//                  buffers and the connection's; completions come from the
//                  shared CQ. Data moves by the clients' one-sided READ and
//                  WRITE, never through here.
//
// Threading: the Server's loop thread only. The Server calls arm_recv() and
// flush_output() after parsing a connection's input, hands each completion
// to on_ring_completion() (TCP: OpKind::kRecv / kSend) or
// on_work_completion() (RDMA), and pumps the connection afterwards.
#pragma once

#include <cstdint>
#include <memory>

#include "common/result.h"
#include "common/transport.h"
#include "common/unique_fd.h"
#include "target/connection.h"
#include "target/event_ring.h"
#include "target/rdma_listener.h"

namespace pbrick {

class ConnTransport {
 public:
  virtual ~ConnTransport() = default;

  virtual Transport kind() const = 0;
  // Whether READ and WRITE frames carry data on this connection (TCP); over
  // RDMA data moves by one-sided RDMA and such frames are refused.
  virtual bool carries_data() const = 0;
  // Starts receiving into the tail of c.in when nothing receives yet (TCP);
  // RDMA messages arrive on the CQ without asking.
  virtual void arm_recv(Connection& c, EventRing& ring) = 0;
  // Starts sending c.out's queued frames; on a send error the connection
  // begins closing.
  virtual void flush_output(Connection& c, EventRing& ring) = 0;
  // Whether a send in flight holds a pointer into c.out (so it cannot move).
  virtual bool pins_output(const Connection& c) const = 0;
  // The LIST reply size the transport can carry: at most `asked` extents.
  virtual uint32_t max_list_extents(uint32_t asked) const = 0;
  // Called when the handshake completes: RDMA grants its queue pair remote
  // read and write only now.
  virtual Status allow_remote_access() = 0;
  // Wakes a pending receive so the connection can wind down (TCP: it
  // completes with 0); half of begin_close().
  virtual void shutdown_read() = 0;
  // Stopping the brick: every pending operation of the connection completes.
  virtual void shutdown_all() = 0;
  // Another connection took this one's place (FENCE): the peer loses it now,
  // before the FENCE is answered; or the peer is gone (an RDMA disconnect),
  // and what it would have acknowledged must not hold the connection. TCP: both directions shut (the Server
  // parses nothing more of a closing connection); RDMA: the queue pair goes
  // to the error state, so no one-sided access of it lands any more.
  virtual void cut_off() = 0;
  // Whether a closing connection finishes through a completion in the ring
  // (TCP: the woken recv); otherwise the Server closes it at once once idle.
  virtual bool closes_in_ring() const = 0;
  // The connection is gone: tell the peer (RDMA: a disconnect request).
  virtual void disconnect() = 0;

  // A completion of this connection's recv or send SQE (TCP).
  virtual void on_ring_completion(Connection& c, OpKind kind, int res) {
    (void)c, (void)kind, (void)res;
  }
  // A work completion of this connection's queue pair (RDMA).
  virtual void on_work_completion(Connection& c, const RdmaListener::Completion& wc) { (void)c, (void)wc; }
};

class TcpTransport final : public ConnTransport {
 public:
  explicit TcpTransport(UniqueFd fd) : fd_(std::move(fd)) {}

  Transport kind() const override { return Transport::kTcp; }
  bool carries_data() const override { return true; }
  void arm_recv(Connection& c, EventRing& ring) override;
  void flush_output(Connection& c, EventRing& ring) override;
  bool pins_output(const Connection& c) const override { return c.send_inflight; }
  uint32_t max_list_extents(uint32_t asked) const override { return asked; }
  Status allow_remote_access() override { return Status::Ok(); }
  void shutdown_read() override;
  void shutdown_all() override;
  void cut_off() override { shutdown_all(); }
  bool closes_in_ring() const override { return true; }
  void disconnect() override {}
  void on_ring_completion(Connection& c, OpKind kind, int res) override;

 private:
  UniqueFd fd_;
};

class RdmaTransport final : public ConnTransport {
 public:
  explicit RdmaTransport(std::unique_ptr<RdmaConn> conn) : conn_(std::move(conn)) {}

  Transport kind() const override { return Transport::kRdma; }
  bool carries_data() const override { return false; }
  void arm_recv(Connection&, EventRing&) override {}
  void flush_output(Connection& c, EventRing& ring) override;
  bool pins_output(const Connection&) const override { return false; }  // messages are copies
  uint32_t max_list_extents(uint32_t asked) const override;
  Status allow_remote_access() override { return conn_->allow_remote_access(); }
  void shutdown_read() override {}
  void shutdown_all() override {}
  void cut_off() override { conn_->disconnect(); }
  bool closes_in_ring() const override { return false; }
  void disconnect() override { conn_->disconnect(); }
  void on_work_completion(Connection& c, const RdmaListener::Completion& wc) override;

 private:
  std::unique_ptr<RdmaConn> conn_;
};

}  // namespace pbrick
