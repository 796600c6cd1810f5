// Server::Impl, the brick server's state, shared by the files that make it
// up (one concern each, every function a member run on the loop thread):
//   server.cc      the event loop: ring, signals, tick, watchdog and status,
//                  completion dispatch, the tier mover's poll and wake, stopping
//   listener.cc    accepting (TCP listen socket, RDMA CM events) and the
//                  connection slots: admission, handshake budget, closing
//   session.cc     the handshake: HELLO, AUTH, admission past it
//   request.cc     the frame pump and request dispatch (STAT, ALLOC, FREE,
//                  MAP, UNMAP, LIST, READ/WRITE over TCP, PERSIST)
// and the parts that keep their own state behind their own interface:
//   connection.h / conn_transport.h   a connection and how its bytes move
//   handle_table.h                    handles: rkeys, MRs, revocation
//   persistence_ledger.h              numbered fdatasyncs and sync points
//   event_ring.h                      the io_uring and user_data packing
//
// Threading: init() and adopt() on the thread that calls Server::Create(),
// before run(); run() and everything it calls on the loop thread; stop()
// from any thread.
#pragma once

#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <array>
#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/protocol.h"
#include "target/connection.h"
#include "target/conn_transport.h"
#include "target/event_ring.h"
#include "target/handle_table.h"
#include "target/persistence_ledger.h"
#include "target/rdma_listener.h"
#include "target/server.h"
#include "target/tiering.h"

namespace pbrick {

class Server::Impl final : private PersistenceLedger::SyncStarter {
 public:
  Impl(Store& store, const ServerOptions& options);
  ~Impl() override;

  Status init();
  Status run();
  Status adopt(UniqueFd fd);
  uint16_t port() const { return port_; }
  // The address served, with the port bound when the options asked for 0.
  Endpoint bound_endpoint() const {
    Endpoint e = options_.listen;
    if (!e.is_unix()) e.port = port_;
    return e;
  }
  void stop();

 private:
  using Clock = std::chrono::steady_clock;

  // ---- server.cc: the loop
  void arm_signal();
  void arm_stop();
  void arm_tick();
  void handle_cqe(io_uring_cqe* cqe);
  void on_tick();
  void update_status();
  void on_cq();
  void begin_stop();
  void start_sync(uint64_t number) override;  // PersistenceLedger::SyncStarter
  void on_sync_done(uint64_t number, int res);
  // The tier mover (options_.tiering, when the store has a slow tier): its
  // eventfd polled on the ring; its wake callback posts a NOP whose
  // completion resumes the MAPs waiting for a promotion, from the loop and
  // never nested inside the mover's own completion handling.
  void arm_tier_poll();
  void post_tier_wake();
  void on_tier_wake();

  // ---- listener.cc: accepting, slots, closing
  Status listen();
  void arm_accept();  // TCP: one accept in flight; RDMA: the CM and CQ polls
  void arm_rdma();
  void on_accept(int res);
  void on_cm_events();
  // A new connection in its handshake: counted, buffered small, receiving.
  Connection& add_connection(uint32_t index, uint32_t generation, std::unique_ptr<ConnTransport> transport,
                             std::string peer);
  uint32_t take_slot();  // a free connection slot index (conns_ grows when none is free)
  // The live connection in `index` of `generation`, or null.
  Connection* find(uint32_t index, uint32_t generation);
  // Makes room for one more connection in its handshake: when
  // max_handshakes are pending, the oldest of them is closed.
  void admit_handshake();
  // Closes a closing connection once nothing of it is in flight: revokes its
  // handles, hands its unpersisted WRITEs to the ledger, frees its slot.
  void maybe_close(Connection& c);
  // begin_close(), then maybe_close() for a transport whose closing no ring
  // completion finishes.
  void close_now(Connection& c);

  // ---- session.cc: HELLO and AUTH
  // Before the handshake completes only HELLO, then AUTH, may come: false
  // (and the connection closing) when `h` is another frame.
  bool handshake_allows(Connection& c, const proto::FrameHeader& h);
  void handle_hello(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  void handle_auth(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  // HELLO (no key) or AUTH succeeded: the connection takes one of
  // max_connections, or is refused with EAGAIN when all are taken. Over RDMA
  // its queue pair gets remote access only now. False when refused.
  bool complete_handshake(Connection& c, const proto::FrameHeader& h);

  // ---- request.cc: frames and requests
  // Called for each connection after any of its operations completes:
  // consumes every whole frame that is buffered, as long as replies fit the
  // output buffer, then sends, receives and closes as due.
  void pump(Connection& c);
  void handle_frame(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  void handle_map(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  void handle_unmap(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  void handle_io(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  // FENCE: closes the connections `c` takes the place of before it replies.
  void handle_fence(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  // PERSIST: false when it waits for an fdatasync (pump resumes it).
  bool handle_persist(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  bool finish_persist(Connection& c, const proto::FrameHeader& h);
  // Before a MAP when the store has a slow tier: kProceed; kWait when the
  // block is being promoted (c waits, its MAP still at the head of `in`);
  // kReplied when it answered ENOBUFS (every fast slot is mapped).
  enum class TierMap { kProceed, kWait, kReplied };
  TierMap tier_before_map(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  PersistenceLedger::Outcome sync_point(Connection& c, uint64_t target) {
    return ledger_.sync_point(c.sync, {c.index, c.generation}, target);
  }

  Store& store_;
  ServerOptions options_;
  std::unique_ptr<RdmaListener> listener_;  // before conns_ and handles_: they go first
  HandleTable handles_{store_, nullptr};  // given the listener in init()
  PersistenceLedger ledger_;

  // The loop.
  UniqueFd signal_fd_;
  UniqueFd stop_fd_;  // eventfd: stop() from another thread
  uint64_t stop_buf_ = 0;
  bool stopping_ = false;
  // What ends run() with an error once the loop drained (stopping_ set with it).
  std::optional<Error> fatal_;
  signalfd_siginfo siginfo_{};
  __kernel_timespec tick_ts_{};
  uint64_t watchdog_usec_ = 0;
  Clock::time_point last_watchdog_;
  std::array<uint8_t, proto::kUuidSize> boot_id_{};

  // Accepting.
  UniqueFd listen_fd_;
  // A unix socket's file as bound (st_dev, st_ino): removed at exit only
  // while the path still names it, not one a successor bound meanwhile.
  std::optional<std::pair<dev_t, ino_t>> unix_socket_file_;
  uint16_t port_ = 0;
  sockaddr_storage accept_addr_{};
  socklen_t accept_addrlen_ = sizeof(sockaddr_storage);
  bool accept_inflight_ = false;
  bool cm_poll_inflight_ = false;
  bool cq_poll_inflight_ = false;
  std::vector<uint32_t> pending_;  // connections touched by the current CQ batch

  // Tiering.
  bool tier_poll_inflight_ = false;
  bool tier_wake_posted_ = false;
  std::vector<std::pair<uint32_t, uint32_t>> tier_waiters_;  // (slot, generation) of MAPs waiting
  std::vector<std::pair<uint32_t, uint32_t>> tier_waking_;

  // Connections.
  std::vector<std::unique_ptr<Connection>> conns_;  // slot index -> connection or null
  std::vector<uint32_t> free_slots_;
  uint32_t next_generation_ = 1;
  size_t open_connections_ = 0;    // every connection object, also those closing
  size_t pending_handshakes_ = 0;  // connections in HELLO/AUTH that count against max_handshakes
  size_t ready_connections_ = 0;   // connections past the handshake: at most max_connections

  // Last: torn down first, before the buffers and sockets its operations name.
  EventRing ring_;
};

}  // namespace pbrick
