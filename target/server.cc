#include "target/server.h"

#include <arpa/inet.h>
#include <liburing.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>

#include <endian.h>

#include <chrono>
#include <thread>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "common/log.h"
#include "common/protocol.h"
#include "common/units.h"
#include "common/uring.h"
#include "target/rdma_listener.h"
#include "target/tiering.h"

namespace pbrick {
namespace {

using proto::kHeaderSize;
using proto::Opcode;
using Clock = std::chrono::steady_clock;

enum class OpKind : uint8_t {
  kAccept = 1, kRecv, kSend, kFsync, kSignal, kTick, kCancel, kStop, kCmPoll, kCqPoll,
  kTierPoll, kTierWake,  // tiering: the mover's eventfd; a deferred wake of MAPs waiting for it
};

struct UserData {
  static uint64_t pack(OpKind kind, uint32_t generation, uint32_t index) {
    return (static_cast<uint64_t>(kind) << 56) | (static_cast<uint64_t>(generation & 0xFFFFFF) << 32) | index;
  }
  static OpKind kind(uint64_t v) { return static_cast<OpKind>(v >> 56); }
  static uint32_t generation(uint64_t v) { return static_cast<uint32_t>((v >> 32) & 0xFFFFFF); }
  static uint32_t index(uint64_t v) { return static_cast<uint32_t>(v); }
};

// Input holds at least one whole frame of the largest kind plus room to read
// ahead; output holds the largest reply (a READ of kMaxIoSize) plus a batch of
// small replies. Both are allocated once per connection; pages never touched
// are never committed.
constexpr size_t kInCapacity = kHeaderSize + proto::kMaxPayload + (64u << 10);
constexpr size_t kOutCapacity = kHeaderSize + proto::kMaxIoSize + (128u << 10);
// Until its handshake completes a connection may only send HELLO and AUTH
// (80 and 64 bytes with their headers; any other frame is refused on its
// header), so it gets buffers of one page each: a peer that has not proved
// anything cannot make the brick hold more (grow_buffers()).
constexpr size_t kHandshakeCapacity = 4096;
static_assert(kHeaderSize + proto::kHelloRequestSize <= kHandshakeCapacity);
static_assert(kHeaderSize + proto::kHelloReplySize + proto::kHelloRdmaTrailerSize <= kHandshakeCapacity);
static_assert(proto::kRdmaMessageSize <= kHandshakeCapacity);
constexpr size_t kListReplyMax = kHeaderSize + proto::kListReplyFixedSize + proto::kMaxListExtents * proto::kExtentSize;
constexpr unsigned kRingEntries = 1024;
constexpr long long kTickNanos = 1000ll * 1000 * 1000;
// An fdatasync's user_data: OpKind::kFsync in the top byte, its number below.
constexpr uint64_t kSyncNumberMask = (1ull << 56) - 1;

struct Connection {
  enum class State { kHello, kAuth, kReady };

  UniqueFd fd;
  uint32_t index = 0;
  uint32_t generation = 0;
  State state = State::kHello;
  bool closing = false;
  bool peer_eof = false;
  bool recv_inflight = false;
  bool send_inflight = false;
  // Persistence (see "Sync points" in Server::Impl): this connection's WRITEs
  // are durable once fdatasync number `needs_sync` (or a later one) succeeded;
  // 0: none is pending. The sync point (READ or PERSIST) at the head of `in`
  // waits for fdatasync number `sync_target` while `awaiting_sync`.
  uint64_t needs_sync = 0;
  uint64_t sync_target = 0;
  // Also set while a MAP at the head of `in` waits for its block's promotion
  // (tiering hooks below), which resumes it (pump) like a sync completion.
  bool awaiting_sync = false;
  uint64_t features = 0;  // negotiated in HELLO
  Clock::time_point accepted_at;
  std::string peer;
  bool counts_as_handshake = true;  // one of pending_handshakes_ (not yet ready, not evicted)
  std::unique_ptr<uint8_t[]> in{new uint8_t[kHandshakeCapacity]};
  size_t in_cap = kHandshakeCapacity;
  size_t in_start = 0, in_end = 0;
  std::unique_ptr<uint8_t[]> out{new uint8_t[kHandshakeCapacity]};
  size_t out_cap = kHandshakeCapacity;
  size_t out_start = 0, out_end = 0;
  Nonce client_nonce{}, server_nonce{};
  std::vector<uint32_t> rkeys;  // handles this connection mapped
  std::unique_ptr<RdmaConn> rdma;  // RDMA connections: QP and message buffers; no fd

  bool idle() const { return !recv_inflight && !send_inflight; }
};

struct Handle {
  uint64_t vaddr = 0;
  uint64_t remote_base = 0;
  uint64_t slot_offset = 0;
  uint32_t map_flags = 0;
  uint32_t owner = 0;
  rdma::MrPtr mr;  // RDMA: the registration; deregistering kills the rkey in the NIC
};

struct MapState {
  uint32_t count = 0;
  bool exclusive = false;
};

// The host's boot id (random per boot): a gateway that sees it unchanged after
// reconnecting knows the brick's memory, and so its unpersisted writes, survived.
std::array<uint8_t, proto::kUuidSize> read_boot_id() {
  std::array<uint8_t, proto::kUuidSize> id{};
  FILE* f = std::fopen("/proc/sys/kernel/random/boot_id", "r");
  if (f == nullptr) return id;
  char text[64] = {};
  size_t n = std::fread(text, 1, sizeof text - 1, f);
  std::fclose(f);
  size_t out = 0;
  for (size_t i = 0; i + 1 < n && out < id.size(); i++) {
    auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
    int hi = hex(text[i]), lo = hex(text[i + 1]);
    if (hi < 0 || lo < 0) continue;
    id[out++] = static_cast<uint8_t>(hi << 4 | lo);
    i++;
  }
  return id;
}

std::string peer_name(const sockaddr_storage& ss) {
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  if (::getnameinfo(reinterpret_cast<const sockaddr*>(&ss), sizeof ss, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "?";
  }
  return std::string(host) + ":" + serv;
}

}  // namespace

class Server::Impl {
 public:
  Impl(Store& store, const ServerOptions& options) : store_(store), options_(options) {}
  ~Impl() {
    if (ring_ready_) io_uring_queue_exit(&ring_);
  }

  Status init();
  Status listen_tcp();
  Status run();
  Status adopt(UniqueFd fd) {
    if (listener_) return Error(EINVAL, "adopt: an RDMA brick serves RDMA connections only");
    admit_handshake();
    add_stream_connection(std::move(fd), "adopted");
    return Status::Ok();
  }
  uint16_t port() const { return port_; }
  void stop() {
    uint64_t one = 1;
    ssize_t ignored = ::write(stop_fd_.get(), &one, sizeof one);
    (void)ignored;
  }

 private:
  io_uring_sqe* get_sqe();
  void arm_accept();
  void arm_signal();
  void arm_tick();
  void arm_recv(Connection& c);
  void flush_output(Connection& c);
  void pump(Connection& c);
  void maybe_close(Connection& c);
  void begin_close(Connection& c);
  void handle_cqe(io_uring_cqe* cqe);
  void on_accept(int res);
  // A new TCP (or socketpair) connection in its handshake: counted, buffered small, receiving.
  void add_stream_connection(UniqueFd fd, std::string peer);
  uint32_t take_slot();  // a free connection slot index (conns_ grows when none is free)
  // Makes room for one more connection in its handshake: when
  // max_handshakes are pending, the oldest of them is closed.
  void admit_handshake();
  // HELLO (no key) or AUTH succeeded: the connection takes one of
  // max_connections, or is refused with EAGAIN when all are taken. Over RDMA
  // its queue pair gets remote access only now. False when refused.
  bool complete_handshake(Connection& c, const proto::FrameHeader& h);
  // Full-size buffers for a ready connection, once no I/O uses the small ones.
  void grow_buffers(Connection& c);
  void on_tick();
  void update_status();

  bool out_room(Connection& c, size_t need);
  uint8_t* reply_header(Connection& c, const proto::FrameHeader& req, uint32_t payload_len);
  void reply_error(Connection& c, const proto::FrameHeader& req, const Error& e);
  // Returns false when the frame could not be handled yet (waiting for persistence).
  void handle_frame(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  void handle_hello(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  void handle_auth(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  void handle_map(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  void handle_unmap(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  void handle_io(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  // PERSIST: false when it waits for an fdatasync (pump resumes it).
  bool handle_persist(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  bool finish_persist(Connection& c, const proto::FrameHeader& h);
  enum class SyncResult { kDurable, kWaiting, kFailed };
  // The sync point at the head of c's input, covering what fdatasync number
  // `target` covers (0: nothing). kWaiting: c resumes (pump) when an
  // fdatasync completes.
  SyncResult sync_point(Connection& c, uint64_t target);
  void start_sync();
  void on_sync_done(uint64_t number, int res);
  void arm_rdma();
  void on_cm_events();
  void on_cq();
  void revoke(uint32_t rkey);
  Result<uint32_t> fresh_rkey();

  // ---- Tiering hooks (target/tiering.h) -------------------------------------
  enum class TierMap { kProceed, kWait, kReplied };
  // Before a MAP: promotes a slow block first (kWait: c waits, its MAP still at
  // the head of `in`), or answers ENOBUFS when every fast slot is mapped.
  TierMap tier_before_map(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload);
  void arm_tier_poll();
  void post_tier_wake();  // from Tiering's wake callback: resumes waiters from the loop, never nested
  void on_tier_wake();
  bool tier_poll_inflight_ = false;
  bool tier_wake_posted_ = false;
  std::vector<std::pair<uint32_t, uint32_t>> tier_waiters_;  // (slot, generation)
  std::vector<std::pair<uint32_t, uint32_t>> tier_waking_;

  Store& store_;
  ServerOptions options_;
  std::unique_ptr<RdmaListener> listener_;  // before conns_ and handles_: they go first
  bool cm_poll_inflight_ = false;
  std::vector<uint32_t> pending_;  // connections touched by the current CQ batch
  std::vector<uint64_t> revoked_dirty_;  // slots of writable RDMA handles revoked since the last PERSIST
  bool cq_poll_inflight_ = false;
  io_uring ring_{};
  bool ring_ready_ = false;
  UniqueFd listen_fd_;
  UniqueFd signal_fd_;
  UniqueFd stop_fd_;  // eventfd: stop() from another thread
  uint64_t stop_buf_ = 0;
  uint16_t port_ = 0;
  bool stopping_ = false;
  uint64_t inflight_ = 0;
  signalfd_siginfo siginfo_{};
  __kernel_timespec tick_ts_{};
  uint64_t watchdog_usec_ = 0;
  Clock::time_point last_watchdog_;
  sockaddr_storage accept_addr_{};
  socklen_t accept_addrlen_ = sizeof(sockaddr_storage);
  bool accept_inflight_ = false;
  std::array<uint8_t, proto::kUuidSize> boot_id_ = read_boot_id();
  // Sync points. fdatasyncs are numbered in the order they are prepared;
  // number n makes durable every WRITE replied to before it was prepared, so a
  // WRITE made while n runs needs n+1. A sync point completes once an
  // fdatasync that started after every WRITE it covers has succeeded - never
  // by riding one that was already running.
  uint64_t syncs_started_ = 0;
  uint64_t durable_through_ = 0;    // highest fdatasync number that succeeded
  uint64_t orphan_needs_sync_ = 0;  // WRITEs of closed connections need this one; 0: none
  std::vector<std::pair<uint32_t, uint32_t>> sync_waiters_;  // (slot, generation) awaiting_sync
  std::vector<std::pair<uint32_t, uint32_t>> sync_waking_;   // the waiters one completion resumes
  bool persist_failure_logged_ = false;

  std::vector<std::unique_ptr<Connection>> conns_;  // slot index -> connection or null
  std::vector<uint32_t> free_slots_;
  uint32_t next_generation_ = 1;
  size_t open_connections_ = 0;   // every connection object, also those closing
  size_t pending_handshakes_ = 0;  // connections in HELLO/AUTH that count against max_handshakes
  size_t ready_connections_ = 0;   // connections past the handshake: at most max_connections

  std::unordered_map<uint32_t, Handle> handles_;      // rkey -> handle
  std::unordered_map<uint64_t, MapState> map_state_;  // vaddr -> who maps it
  std::vector<uint8_t> rkey_pool_;                    // random bytes for rkeys/addresses
  size_t rkey_pool_pos_ = 0;
};

Status Server::Impl::init() {
  // docs/protocol.md §11: the whole store is persisted before any connection
  // is accepted, so a sync point on a new connection covers everything the
  // brick holds - WRITE data a previous brick process left in the page cache
  // (a file store) or in the CPU caches (pmem: a killed process's stores are
  // still only in the caches) included.
  PmemRegion& region = store_.region();
  auto started = Clock::now();
  Status persisted = region.persist(0, region.size());
  if (!persisted) return persisted.error().wrap("persisting the store before serving");
  PBRICK_LOG_INFO("persisted the whole store (%s) in %lld ms", format_size(region.size()).c_str(),
                  static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             Clock::now() - started).count()));
  if (options_.transport == Transport::kRdma) {
    auto l = RdmaListener::Create(options_.listen, store_.region().base(), store_.region().size(),
                                  options_.max_connections + options_.max_handshakes);
    if (!l) return l.error();
    listener_ = std::move(*l);
    port_ = listener_->port();
  }
  if (!listener_) PBRICK_TRY(listen_tcp());
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  signal_fd_.reset(::signalfd(-1, &mask, SFD_CLOEXEC));
  if (!signal_fd_.valid()) return errno_error("signalfd");
  stop_fd_.reset(::eventfd(0, EFD_CLOEXEC));
  if (!stop_fd_.valid()) return errno_error("eventfd");

  int err = init_event_ring(kRingEntries, &ring_);
  if (err < 0) return Error(-err, "io_uring_queue_init");
  ring_ready_ = true;
  if (options_.tiering) options_.tiering->set_wake([this] { post_tier_wake(); });  // tiering hook
  return Status::Ok();
}

Status Server::Impl::listen_tcp() {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port = std::to_string(options_.listen.port);
  const std::string where = "listen " + options_.listen.to_string();
  int rc = ::getaddrinfo(options_.listen.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) return Error(EINVAL, where + ": " + gai_strerror(rc));
  Error last(EADDRNOTAVAIL, where);
  for (addrinfo* ai = res; ai != nullptr && !listen_fd_.valid(); ai = ai->ai_next) {
    UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last = errno_error(where + ": socket");
      continue;
    }
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    // A brick restarted right after kill -9 can find its port still held by
    // the old process's io_uring, which the kernel tears down asynchronously:
    // SO_REUSEADDR does not help against a socket that is still listening.
    const auto deadline = Clock::now() + std::chrono::milliseconds(options_.bind_retry_ms);
    bool retrying = false;
    int rc_bind;
    while ((rc_bind = ::bind(fd.get(), ai->ai_addr, ai->ai_addrlen)) != 0 && errno == EADDRINUSE &&
           Clock::now() < deadline) {
      if (!retrying) {
        PBRICK_LOG_NOTICE("%s: address in use (a brick stopped a moment ago may still hold it); "
                          "retrying for up to %u ms", where.c_str(), options_.bind_retry_ms);
        retrying = true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (rc_bind != 0) {
      last = errno == EADDRINUSE
                 ? Error(EADDRINUSE, where + ": bind: address still in use after " +
                                         std::to_string(options_.bind_retry_ms) +
                                         " ms (is another brick serving this port?)")
                 : errno_error(where + ": bind");
      continue;
    }
    if (retrying) PBRICK_LOG_NOTICE("%s: bound after retrying", where.c_str());
    if (::listen(fd.get(), 128) != 0) {
      last = errno_error(where + ": listen");
      continue;
    }
    listen_fd_ = std::move(fd);
  }
  ::freeaddrinfo(res);
  if (!listen_fd_.valid()) return last;
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(listen_fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len);
  port_ = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                         : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return Status::Ok();
}


io_uring_sqe* Server::Impl::get_sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    // SQ full: hand what we have to the kernel and retry.
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  inflight_++;
  return sqe;
}

void Server::Impl::arm_accept() {
  if (listener_) return arm_rdma();
  if (stopping_ || accept_inflight_) return;
  accept_addrlen_ = sizeof accept_addr_;
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_accept(sqe, listen_fd_.get(), reinterpret_cast<sockaddr*>(&accept_addr_), &accept_addrlen_,
                       SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kAccept, 0, 0));
  accept_inflight_ = true;
}

void Server::Impl::arm_signal() {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_read(sqe, signal_fd_.get(), &siginfo_, sizeof siginfo_, 0);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kSignal, 0, 0));
  sqe = get_sqe();
  io_uring_prep_read(sqe, stop_fd_.get(), &stop_buf_, sizeof stop_buf_, 0);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kStop, 0, 0));
}

void Server::Impl::arm_tick() {
  tick_ts_.tv_sec = kTickNanos / 1000000000;
  tick_ts_.tv_nsec = kTickNanos % 1000000000;
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_timeout(sqe, &tick_ts_, 0, 0);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kTick, 0, 0));
}

void Server::Impl::arm_recv(Connection& c) {
  if (c.rdma || c.closing || c.peer_eof || c.recv_inflight) return;
  // Keep the unread bytes at the front when the tail gets short, so one
  // recv can bring in a whole frame; at most one frame's bytes are moved.
  if (c.in_start > 0 && c.in_cap - c.in_end < std::min<size_t>(64u << 10, c.in_cap / 2)) {
    std::memmove(c.in.get(), c.in.get() + c.in_start, c.in_end - c.in_start);
    c.in_end -= c.in_start;
    c.in_start = 0;
  }
  size_t room = c.in_cap - c.in_end;
  if (room == 0) return;  // a whole frame is buffered; pump() will consume it
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_recv(sqe, c.fd.get(), c.in.get() + c.in_end, room, 0);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kRecv, c.generation, c.index));
  c.recv_inflight = true;
}

void Server::Impl::flush_output(Connection& c) {
  if (c.rdma) {
    // One SEND per reply frame, as long as send buffers are free; the rest
    // goes out as sends complete (on_cq).
    while (c.out_end - c.out_start >= kHeaderSize) {
      uint32_t payload_len;
      std::memcpy(&payload_len, c.out.get() + c.out_start + 12, sizeof payload_len);
      size_t frame = kHeaderSize + le32toh(payload_len);
      Status error = Status::Ok();
      if (!c.rdma->send_frame({c.out.get() + c.out_start, frame}, &error)) break;
      if (!error) {
        PBRICK_LOG_WARN("%s: %s", c.peer.c_str(), error.error().message().c_str());
        c.out_start = c.out_end = 0;
        begin_close(c);
        break;
      }
      c.out_start += frame;
    }
    if (c.out_start == c.out_end) c.out_start = c.out_end = 0;
    c.send_inflight = c.rdma->sends_in_flight();
    return;
  }
  if (c.send_inflight || c.out_start == c.out_end) return;
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_send(sqe, c.fd.get(), c.out.get() + c.out_start, c.out_end - c.out_start, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kSend, c.generation, c.index));
  c.send_inflight = true;
}

bool Server::Impl::out_room(Connection& c, size_t need) {
  if (c.out_cap - c.out_end >= need) return true;
  if (!c.send_inflight && c.out_start > 0) {
    std::memmove(c.out.get(), c.out.get() + c.out_start, c.out_end - c.out_start);
    c.out_end -= c.out_start;
    c.out_start = 0;
    return c.out_cap - c.out_end >= need;
  }
  return false;
}

namespace {

// Replaces `buf` by one of `capacity` bytes holding its unread bytes
// [start, end) at the front.
void regrow(std::unique_ptr<uint8_t[]>& buf, size_t& cap, size_t& start, size_t& end, size_t capacity) {
  std::unique_ptr<uint8_t[]> bigger(new uint8_t[capacity]);
  std::memcpy(bigger.get(), buf.get() + start, end - start);
  end -= start;
  start = 0;
  buf = std::move(bigger);
  cap = capacity;
}

}  // namespace

void Server::Impl::grow_buffers(Connection& c) {
  if (c.state != Connection::State::kReady) return;
  // A TCP recv or send in flight holds a pointer into the old buffer; an
  // RDMA connection copies messages in and out, so nothing holds one.
  if (c.in_cap < kInCapacity && !c.recv_inflight) regrow(c.in, c.in_cap, c.in_start, c.in_end, kInCapacity);
  if (c.out_cap < kOutCapacity && (c.rdma || !c.send_inflight)) {
    regrow(c.out, c.out_cap, c.out_start, c.out_end, kOutCapacity);
  }
}

uint8_t* Server::Impl::reply_header(Connection& c, const proto::FrameHeader& req, uint32_t payload_len) {
  proto::FrameHeader h;
  h.opcode = req.opcode;
  h.flags = proto::kFlagReply;
  h.request_id = req.request_id;
  h.payload_len = payload_len;
  uint8_t* p = c.out.get() + c.out_end;
  proto::encode_header(h, p);
  c.out_end += kHeaderSize + payload_len;
  return p + kHeaderSize;
}

void Server::Impl::reply_error(Connection& c, const proto::FrameHeader& req, const Error& e) {
  PBRICK_LOG_DEBUG("%s: %s", c.peer.c_str(), e.message().c_str());
  proto::FrameHeader h;
  h.opcode = req.opcode;
  h.flags = proto::kFlagReply;
  h.request_id = req.request_id;
  h.status = proto::wire_status(e.errnum());
  proto::encode_header(h, c.out.get() + c.out_end);
  c.out_end += kHeaderSize;
}

// Called for each connection after any of its operations completes: consumes
// every whole frame that is buffered, as long as replies fit the output buffer.
void Server::Impl::pump(Connection& c) {
  bool blocked = false;  // stopped for output room or persistence, not for lack of input
  while (!c.closing && !c.awaiting_sync) {
    grow_buffers(c);
    size_t avail = c.in_end - c.in_start;
    if (avail < kHeaderSize) break;
    const uint8_t* frame = c.in.get() + c.in_start;
    // Every reply needs a header's worth of room, error replies included.
    if (!out_room(c, kHeaderSize)) {
      blocked = true;
      break;
    }
    auto hdr = proto::decode_header({frame, kHeaderSize}, /*expect_reply=*/false);
    if (!hdr) {
      // Framing can no longer be trusted: say why (echoing what looks like the
      // request id) and close once the reply is out.
      // A wrong magic means the peer does not speak this protocol at all:
      // nothing in the header can be believed, so no reply.
      PBRICK_LOG_WARN("%s: closing connection: %s", c.peer.c_str(), hdr.error().message().c_str());
      uint32_t magic;
      std::memcpy(&magic, frame, sizeof magic);
      if (le32toh(magic) == proto::kMagic) {
        proto::FrameHeader echo;
        std::memcpy(&echo.request_id, frame + 16, sizeof echo.request_id);
        echo.request_id = le64toh(echo.request_id);
        echo.opcode = static_cast<Opcode>(frame[5]);
        reply_error(c, echo, hdr.error());
      }
      begin_close(c);
      break;
    }
    if (c.state != Connection::State::kReady) {
      // Before the handshake completes only HELLO, then AUTH, may come. The
      // decision is made on the header alone: the payload of a frame refused
      // here is never read, so a peer that proved nothing cannot make the
      // brick wait for (and hold) up to 2 MiB of it.
      bool hello_state = c.state == Connection::State::kHello;
      Opcode expected = hello_state ? Opcode::kHello : Opcode::kAuth;
      if (hdr->opcode != expected) {
        Error e = hello_state ? Error(EPROTO, "first frame must be HELLO")
                              : Error(EACCES, std::string(proto::opcode_name(hdr->opcode)) + " before AUTH");
        PBRICK_LOG_WARN("%s: refused: %s before %s", c.peer.c_str(), proto::opcode_name(hdr->opcode),
                        hello_state ? "HELLO" : "authentication");
        reply_error(c, *hdr, e);
        begin_close(c);
        break;
      }
    }
    size_t total = kHeaderSize + hdr->payload_len;
    if (total > c.in_cap && (c.state != Connection::State::kReady || c.recv_inflight)) {
      // Only a ready connection gets the large buffer (grow_buffers(), once
      // its recv completed); a HELLO or AUTH frame always fits the small one.
      if (c.state != Connection::State::kReady) {
        PBRICK_LOG_WARN("%s: closing connection: a %zu-byte frame during the handshake", c.peer.c_str(), total);
        begin_close(c);
      }
      break;
    }
    if (avail < total) {
      // Never move bytes under a recv in flight: it writes at the old in_end.
      if (c.in_start + total > c.in_cap && !c.recv_inflight) {
        std::memmove(c.in.get(), frame, avail);
        c.in_start = 0;
        c.in_end = avail;
      }
      break;
    }
    size_t need = kHeaderSize;
    switch (hdr->opcode) {
      case Opcode::kRead: {
        uint32_t len;
        std::memcpy(&len, frame + kHeaderSize + 16, sizeof len);
        len = le32toh(len);
        need += len > proto::kMaxIoSize ? 0 : len;
        break;
      }
      case Opcode::kList: need = kListReplyMax; break;
      default: need += 256; break;  // HELLO's reply, the largest fixed one, is 136 bytes
    }
    if (!out_room(c, need)) {  // resumes when the pending send completes
      blocked = true;
      break;
    }
    if (hdr->opcode == Opcode::kPersist && c.state == Connection::State::kReady) {
      if (!handle_persist(c, *hdr, {frame + kHeaderSize, hdr->payload_len})) {
        blocked = true;
        break;
      }
      c.in_start += total;
      continue;
    }
    if (hdr->opcode == Opcode::kRead && !c.rdma && c.state == Connection::State::kReady) {
      // Sync-read: this READ is answered only once every earlier WRITE on this
      // connection, and every orphaned one, is durable - before any check of
      // the READ itself, so a READ through a dead handle is a sync point too
      // and only EIO means persistence failed (docs/protocol.md §11.1).
      uint64_t target = c.sync_target != 0 ? c.sync_target : std::max(c.needs_sync, orphan_needs_sync_);
      SyncResult sync = sync_point(c, target);
      if (sync == SyncResult::kWaiting) {
        blocked = true;
        break;
      }
      if (sync == SyncResult::kFailed) {
        reply_error(c, *hdr, Error(EIO, "READ: persisting earlier writes failed"));
        c.in_start += total;
        continue;
      }
    }
    if (hdr->opcode == Opcode::kMap && c.state == Connection::State::kReady && options_.tiering) {
      // Tiering hook: MAP of a slow block promotes it first.
      TierMap t = tier_before_map(c, *hdr, {frame + kHeaderSize, hdr->payload_len});
      if (t == TierMap::kWait) {
        blocked = true;
        break;
      }
      if (t == TierMap::kReplied) {
        c.in_start += total;
        continue;
      }
    }
    handle_frame(c, *hdr, {frame + kHeaderSize, hdr->payload_len});
    c.in_start += total;
  }
  if (c.in_start == c.in_end && !c.recv_inflight) c.in_start = c.in_end = 0;
  // A peer that half-closed after its last request still gets every reply;
  // once nothing more can be parsed, the connection winds down. A request
  // waiting for its sync point is not parsed yet: the end of the stream may
  // arrive before the fdatasync completes.
  if (c.peer_eof && !blocked && !c.awaiting_sync) c.closing = true;
  flush_output(c);
  arm_recv(c);
  maybe_close(c);
}

void Server::Impl::handle_frame(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  using State = Connection::State;
  PBRICK_LOG_DEBUG("%s: %s #%llu (%u bytes)", c.peer.c_str(), proto::opcode_name(h.opcode),
                   static_cast<unsigned long long>(h.request_id), h.payload_len);
  if (c.state == State::kHello) {
    handle_hello(c, h, payload);  // pump() refused anything but HELLO on its header
    return;
  }
  if (h.opcode == Opcode::kHello) {
    reply_error(c, h, Error(EPROTO, "second HELLO"));
    begin_close(c);
    return;
  }
  if (c.state == State::kAuth) {
    handle_auth(c, h, payload);  // pump() refused anything but AUTH on its header
    return;
  }

  switch (h.opcode) {
    case Opcode::kAuth:
      reply_error(c, h, Error(EPROTO, "AUTH without a key"));
      return;
    case Opcode::kStat: {
      StoreStats s = store_.stats();
      proto::StatReply r;
      r.capacity_blocks = s.capacity_blocks;
      r.free_blocks = s.free_blocks;
      r.allocated_blocks = s.allocated_blocks;
      r.mapped_blocks = s.mapped_blocks;
      r.brick_uuid = store_.uuid();
      r.store_kind = store_.region().is_pmem() ? proto::kStorePmem : proto::kStoreFile;
      if ((c.features & proto::kFeatureTiers) != 0) {  // tiering hook: per-tier counts
        r.slow_capacity_blocks = static_cast<uint32_t>(s.slow_capacity_blocks);
        r.slow_free_blocks = static_cast<uint32_t>(s.slow_free_blocks);
      }
      proto::encode_stat_reply(r, reply_header(c, h, proto::kStatReplySize));
      return;
    }
    case Opcode::kAlloc:
    case Opcode::kFree: {
      auto req = proto::decode_addr_request(payload);
      if (!req) return reply_error(c, h, req.error());
      Status st = h.opcode == Opcode::kAlloc ? store_.alloc(req->vaddr) : store_.free(req->vaddr);
      if (!st) return reply_error(c, h, st.error());
      reply_header(c, h, 0);
      return;
    }
    case Opcode::kMap:
      handle_map(c, h, payload);
      return;
    case Opcode::kUnmap:
      handle_unmap(c, h, payload);
      return;
    case Opcode::kList: {
      auto req = proto::decode_list_request(payload);
      if (!req) return reply_error(c, h, req.error());
      // Over RDMA a reply is one message: fewer extents per page, same paging.
      uint32_t max = c.rdma ? std::min(req->max_extents, proto::kRdmaMaxListExtents) : req->max_extents;
      proto::ListReply r = store_.list(req->cursor, max);
      size_t size = proto::list_reply_size(r.extents.size());
      proto::encode_list_reply(r, reply_header(c, h, static_cast<uint32_t>(size)));
      return;
    }
    case Opcode::kRead:
    case Opcode::kWrite:
      if (c.rdma) {
        return reply_error(c, h, Error(EOPNOTSUPP, "data moves by one-sided RDMA on an RDMA connection"));
      }
      handle_io(c, h, payload);
      return;
    case Opcode::kPersist:
      break;  // handled in pump()
    case Opcode::kHello:
      break;  // handled above
  }
}

void Server::Impl::handle_hello(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  auto req = proto::decode_hello_request(payload);
  if (!req) {
    reply_error(c, h, req.error());
    begin_close(c);
    return;
  }
  uint16_t version = std::min<uint16_t>(req->max_version, proto::kMaxVersion);
  if (version < req->min_version || version < proto::kMinVersion) {
    reply_error(c, h, Error(EPROTONOSUPPORT, "no common protocol version"));
    begin_close(c);
    return;
  }
  proto::HelloReply r;
  r.version = version;
  r.features = req->features & proto::kKnownFeatures;
  if (c.rdma) {
    if ((req->features & proto::kFeatureRdma) == 0) {
      reply_error(c, h, Error(EPROTONOSUPPORT, "RDMA connection without the RDMA feature"));
      begin_close(c);
      return;
    }
    if (options_.key && (req->features & proto::kFeatureAuthTrailer) == 0) {
      // Such a client expects the sync region in this reply, before it
      // proved the key: nothing of the brick's memory is named before AUTH.
      PBRICK_LOG_WARN("%s: refused: an RDMA client without AUTH_TRAILER (too old for a brick with a key)",
                      c.peer.c_str());
      reply_error(c, h, Error(EPROTONOSUPPORT, "RDMA with a cluster key needs AUTH_TRAILER"));
      begin_close(c);
      return;
    }
    if ((req->features & proto::kFeatureSyncRead) != 0 && options_.persistence != Persistence::kSyncRead) {
      PBRICK_LOG_WARN("%s: refused: sync-read persistence asked for, but this brick has not declared DDIO off "
                      "on its storage NIC (start it with --persistence sync-read once DDIO is off)",
                      c.peer.c_str());
      reply_error(c, h, Error(EOPNOTSUPP, "sync-read needs DDIO off"));
      begin_close(c);
      return;
    }
  } else {
    r.features &= ~(proto::kFeatureRdma | proto::kFeatureAuthTrailer);
  }
  r.brick_uuid = store_.uuid();
  r.boot_id = boot_id_;
  c.features = r.features;
  c.client_nonce = req->client_nonce;
  if (options_.key) {
    Status st = random_bytes(c.server_nonce.data(), c.server_nonce.size());
    if (!st) {
      reply_error(c, h, st.error());
      begin_close(c);
      return;
    }
    r.hello_flags |= proto::kHelloAuthRequired;
    r.server_nonce = c.server_nonce;
    r.server_proof = server_proof(*options_.key, c.client_nonce, c.server_nonce);
    c.state = Connection::State::kAuth;
  } else if (!complete_handshake(c, h)) {
    return;
  }
  if (proto::hello_has_rdma_trailer(r.features, r.hello_flags)) {
    r.has_rdma_trailer = true;
    r.sync_rkey = listener_->sync_rkey();
    r.sync_addr = listener_->sync_addr();
  }
  proto::encode_hello_reply(r, reply_header(c, h, static_cast<uint32_t>(proto::hello_reply_size(r))));
}

bool Server::Impl::complete_handshake(Connection& c, const proto::FrameHeader& h) {
  if (ready_connections_ >= options_.max_connections) {
    PBRICK_LOG_WARN("%s: refused: %u connections are open (--max-connections)", c.peer.c_str(),
                    options_.max_connections);
    reply_error(c, h, Error(EAGAIN, "the brick serves its maximum number of connections"));
    begin_close(c);
    return false;
  }
  if (c.rdma) {
    Status st = c.rdma->allow_remote_access();
    if (!st) {
      PBRICK_LOG_ERROR("%s: %s", c.peer.c_str(), st.error().message().c_str());
      reply_error(c, h, st.error());
      begin_close(c);
      return false;
    }
  }
  if (c.counts_as_handshake) {
    c.counts_as_handshake = false;
    pending_handshakes_--;
  }
  ready_connections_++;
  c.state = Connection::State::kReady;
  return true;
}

void Server::Impl::admit_handshake() {
  if (pending_handshakes_ < options_.max_handshakes) return;
  Connection* oldest = nullptr;
  for (auto& c : conns_) {
    if (c && c->counts_as_handshake && (oldest == nullptr || c->accepted_at < oldest->accepted_at)) {
      oldest = c.get();
    }
  }
  if (oldest == nullptr) return;
  PBRICK_LOG_WARN("%s: closing the oldest connection still in its handshake: %u are (max_handshakes)",
                  oldest->peer.c_str(), options_.max_handshakes);
  oldest->counts_as_handshake = false;
  pending_handshakes_--;
  oldest->out_start = oldest->out_end = 0;
  begin_close(*oldest);
  if (oldest->rdma) maybe_close(*oldest);
}

void Server::Impl::handle_auth(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  auto req = proto::decode_auth_request(payload);
  if (!req || !proofs_equal(req->client_proof, client_proof(*options_.key, c.server_nonce, c.client_nonce))) {
    PBRICK_LOG_WARN("%s: refused: wrong cluster key", c.peer.c_str());
    reply_error(c, h, Error(EACCES, "AUTH: wrong key"));
    begin_close(c);
    return;
  }
  if (!complete_handshake(c, h)) return;
  proto::AuthReply r;
  if (c.rdma) {
    // Only now, with the key proved, the sync region (AUTH_TRAILER, which an
    // RDMA client of a brick with a key must offer).
    r.has_rdma_trailer = true;
    r.sync_rkey = listener_->sync_rkey();
    r.sync_addr = listener_->sync_addr();
  }
  proto::encode_auth_reply(r, reply_header(c, h, static_cast<uint32_t>(proto::auth_reply_size(r))));
}

Result<uint32_t> Server::Impl::fresh_rkey() {
  for (int attempt = 0; attempt < 64; attempt++) {
    if (rkey_pool_pos_ + 4 > rkey_pool_.size()) {
      rkey_pool_.resize(4096);
      PBRICK_TRY(random_bytes(rkey_pool_.data(), rkey_pool_.size()));
      rkey_pool_pos_ = 0;
    }
    uint32_t rkey;
    std::memcpy(&rkey, rkey_pool_.data() + rkey_pool_pos_, sizeof rkey);
    rkey_pool_pos_ += sizeof rkey;
    if (rkey != 0 && handles_.find(rkey) == handles_.end()) return rkey;
  }
  return Error(EAGAIN, "map: could not draw a fresh rkey");
}

void Server::Impl::handle_map(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  auto req = proto::decode_map_request(payload);
  if (!req) return reply_error(c, h, req.error());
  const std::string what = "map " + format_hex(req->vaddr);
  auto slot = store_.slot_offset(req->vaddr);
  if (!slot) return reply_error(c, h, slot.error());
  for (uint32_t rkey : c.rkeys) {
    if (handles_[rkey].vaddr == req->vaddr) {
      return reply_error(c, h, Error(EEXIST, what + ": already mapped by this connection"));
    }
  }
  MapState& ms = map_state_[req->vaddr];
  bool shared = (req->map_flags & proto::kMapShared) != 0;
  if ((!shared && ms.count > 0) || (shared && ms.exclusive)) {
    if (ms.count == 0) map_state_.erase(req->vaddr);
    return reply_error(c, h, Error(EBUSY, what + ": mapped exclusively elsewhere"));
  }
  auto fail = [&](const Error& e) {
    if (ms.count == 0) map_state_.erase(req->vaddr);
    reply_error(c, h, e);
  };
  uint32_t rkey = 0;
  uint64_t remote_base = 0;
  rdma::MrPtr mr;
  if (c.rdma) {
    // A memory region with exactly the access the flags allow: the NIC itself
    // refuses a WRITE through a read-only handle, and UNMAP kills the rkey.
    auto reg = listener_->register_block(*slot, proto::kBlockSize, (req->map_flags & proto::kMapWrite) != 0);
    if (!reg) return fail(reg.error().wrap(what));
    mr = std::move(reg->mr);
    rkey = mr->rkey;
    remote_base = reg->remote_addr;
  } else {
    auto fresh = fresh_rkey();
    if (!fresh) return fail(fresh.error());
    rkey = *fresh;
    // The remote address is random too (like ibv_reg_mr_iova), 2 MiB aligned and
    // far enough from the top that base + length never wraps.
    Status st = random_bytes(reinterpret_cast<uint8_t*>(&remote_base), sizeof remote_base);
    if (!st) return fail(st.error());
    remote_base &= ~(proto::kBlockSize - 1);
    remote_base &= (1ull << 63) - 1;
  }
  Status st = store_.pin(req->vaddr);
  if (!st) return fail(st.error());
  ms.count++;
  ms.exclusive = !shared;
  handles_[rkey] = Handle{req->vaddr, remote_base, *slot, req->map_flags, c.index, std::move(mr)};
  c.rkeys.push_back(rkey);
  proto::MapReply r;
  r.rkey = rkey;
  r.map_flags = req->map_flags;
  r.remote_addr = remote_base;
  r.length = proto::kBlockSize;
  proto::encode_map_reply(r, reply_header(c, h, proto::kMapReplySize));
}

void Server::Impl::revoke(uint32_t rkey) {
  auto it = handles_.find(rkey);
  if (it == handles_.end()) return;
  uint64_t vaddr = it->second.vaddr;
  // Clients may have written through it without a PERSIST yet.
  if (it->second.mr && (it->second.map_flags & proto::kMapWrite) != 0) {
    revoked_dirty_.push_back(it->second.slot_offset);
    // Without PERSISTs (sync-read clients) the list would only grow: flush
    // the blocks' cache lines now.
    if (revoked_dirty_.size() >= 1024) {
      for (uint64_t offset : revoked_dirty_) {
        if (!store_.region().is_pmem()) break;
        Status st = store_.region().persist(offset, proto::kBlockSize);
        if (!st) PBRICK_LOG_ERROR("%s", st.error().message().c_str());
      }
      revoked_dirty_.clear();
    }
  }
  handles_.erase(it);
  store_.unpin(vaddr);
  auto ms = map_state_.find(vaddr);
  if (ms != map_state_.end() && --ms->second.count == 0) map_state_.erase(ms);
}

void Server::Impl::handle_unmap(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  auto req = proto::decode_addr_request(payload);
  if (!req) return reply_error(c, h, req.error());
  size_t revoked = 0;
  for (size_t i = 0; i < c.rkeys.size();) {
    auto it = handles_.find(c.rkeys[i]);
    if (it != handles_.end() && it->second.vaddr == req->vaddr) {
      revoke(c.rkeys[i]);
      c.rkeys[i] = c.rkeys.back();
      c.rkeys.pop_back();
      revoked++;
    } else {
      i++;
    }
  }
  if (revoked == 0) {
    auto slot = store_.slot_offset(req->vaddr);
    if (!slot) return reply_error(c, h, slot.error());
    return reply_error(c, h, Error(ENOENT, "unmap " + format_hex(req->vaddr) + ": not mapped by this connection"));
  }
  reply_header(c, h, 0);
}

void Server::Impl::handle_io(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  std::span<const uint8_t> data;
  auto req = proto::decode_io_request(payload, h.opcode, &data);
  if (!req) return reply_error(c, h, req.error());
  auto it = handles_.find(req->rkey);
  if (it == handles_.end()) {
    return reply_error(c, h, Error(EKEYREJECTED, "rkey " + format_hex(req->rkey) + " is not valid"));
  }
  const Handle& hd = it->second;
  if (req->remote_addr < hd.remote_base || req->remote_addr - hd.remote_base > proto::kBlockSize ||
      req->length > proto::kBlockSize - (req->remote_addr - hd.remote_base)) {
    return reply_error(c, h, Error(ERANGE, "access outside the mapped block"));
  }
  uint64_t offset = hd.slot_offset + (req->remote_addr - hd.remote_base);
  if (h.opcode == Opcode::kWrite) {
    if ((hd.map_flags & proto::kMapWrite) == 0) {
      return reply_error(c, h, Error(EACCES, "WRITE through a read-only mapping"));
    }
    store_.region().copy_nodrain(offset, data.data(), data.size());
    c.needs_sync = syncs_started_ + 1;
    reply_header(c, h, 0);
    return;
  }
  uint8_t* out = reply_header(c, h, req->length);
  std::memcpy(out, store_.region().base() + offset, req->length);
}

// PERSIST names ranges through live handles (or none: every writable
// mapping). pmem: cache flush + drain of each range (which never modifies the
// data, so writes other queue pairs make meanwhile are safe). A file store:
// one fdatasync through io_uring, the reply waiting for it. (Over RDMA a file
// store can only be tmpfs or hugetlbfs - the kernel refuses to let a NIC pin
// pages it tracks for writeback - so pages dirtied behind the kernel's back
// never need writing back.) Returns false while that fdatasync runs.
bool Server::Impl::handle_persist(Connection& c, const proto::FrameHeader& h, std::span<const uint8_t> payload) {
  if (c.sync_target != 0) return finish_persist(c, h);  // resumed after its fdatasync
  auto req = proto::decode_persist_request(payload);
  if (!req) {
    reply_error(c, h, req.error());
    return true;
  }
  struct Range {
    uint64_t offset, len;
  };
  std::vector<Range> ranges;
  if (req->ranges.empty()) {
    for (const auto& [rkey, hd] : handles_) {
      if ((hd.map_flags & proto::kMapWrite) != 0) ranges.push_back({hd.slot_offset, proto::kBlockSize});
    }
  } else {
    ranges.reserve(req->ranges.size() + revoked_dirty_.size());
    for (const proto::PersistRange& pr : req->ranges) {
      // A range through a handle revoked since (its rkey unknown, or reused
      // for another block) is skipped: revoking a writable RDMA handle put
      // its block on revoked_dirty_, persisted below.
      auto it = handles_.find(pr.rkey);
      if (it == handles_.end()) continue;
      const Handle& hd = it->second;
      if (pr.remote_addr < hd.remote_base || pr.remote_addr - hd.remote_base > proto::kBlockSize ||
          pr.length > proto::kBlockSize - (pr.remote_addr - hd.remote_base)) {
        continue;
      }
      ranges.push_back({hd.slot_offset + (pr.remote_addr - hd.remote_base), pr.length});
    }
  }
  for (uint64_t offset : revoked_dirty_) ranges.push_back({offset, proto::kBlockSize});
  revoked_dirty_.clear();
  PmemRegion& region = store_.region();
  for (const Range& r : ranges) {
    if (!region.is_pmem()) break;
    Status st = region.persist(r.offset, r.len);
    if (!st) {
      // The region is marked failed: sync_point() answers EIO from now on.
      PBRICK_LOG_ERROR("%s: PERSIST: %s", c.peer.c_str(), st.error().message().c_str());
      break;
    }
  }
  // pmem: the drain covers TCP WRITEs (non-temporal stores), also those
  // through handles that died since. A file store: one fdatasync that starts
  // now covers the ranges, and every earlier TCP WRITE too.
  if (region.sync_fd() < 0) region.drain();
  c.sync_target = region.sync_fd() < 0 ? 0 : syncs_started_ + 1;
  return finish_persist(c, h);
}

bool Server::Impl::finish_persist(Connection& c, const proto::FrameHeader& h) {
  switch (sync_point(c, c.sync_target)) {
    case SyncResult::kWaiting:
      return false;
    case SyncResult::kFailed:
      reply_error(c, h, Error(EIO, "PERSIST: persisting the store failed"));
      return true;
    case SyncResult::kDurable:
      reply_header(c, h, 0);
      return true;
  }
  return true;
}

Server::Impl::SyncResult Server::Impl::sync_point(Connection& c, uint64_t target) {
  PmemRegion& region = store_.region();
  if (target != 0 && region.sync_fd() < 0) {
    // pmem: TCP WRITEs are non-temporal stores of this thread; draining them
    // is all it takes, for orphaned ones too.
    region.drain();
    target = 0;
    orphan_needs_sync_ = 0;
  }
  if (region.persist_failed()) {
    // Which writes were lost is unknowable (Linux reports a failed write-back
    // once and marks the pages clean), so no later sync point can vouch for
    // them: the store stays failed until the brick restarts.
    if (!persist_failure_logged_) {
      PBRICK_LOG_ERROR("the store failed to persist written data: every sync point (READ over TCP, PERSIST) "
                       "answers EIO until the brick is restarted");
      persist_failure_logged_ = true;
    }
    c.sync_target = 0;
    return SyncResult::kFailed;
  }
  if (target <= durable_through_) {
    c.sync_target = 0;
    c.needs_sync = 0;
    return SyncResult::kDurable;
  }
  if (syncs_started_ < target) start_sync();
  c.sync_target = target;
  c.awaiting_sync = true;
  sync_waiters_.emplace_back(c.index, c.generation);
  return SyncResult::kWaiting;
}

void Server::Impl::start_sync() {
  uint64_t number = ++syncs_started_;
  io_uring_sqe* sqe = get_sqe();
  store_.region().prep_sync(sqe);
  io_uring_sqe_set_data64(sqe, (static_cast<uint64_t>(OpKind::kFsync) << 56) | (number & kSyncNumberMask));
}

void Server::Impl::on_sync_done(uint64_t number, int res) {
  Status st = store_.region().sync_done(res);
  if (st) {
    durable_through_ = std::max(durable_through_, number);
  } else {
    PBRICK_LOG_ERROR("%s", st.error().message().c_str());
  }
  if (orphan_needs_sync_ != 0 && orphan_needs_sync_ <= durable_through_) orphan_needs_sync_ = 0;
  // Waiters for a later fdatasync wait again (sync_point puts them back).
  sync_waking_.swap(sync_waiters_);
  for (auto [index, generation] : sync_waking_) {
    if (index >= conns_.size() || !conns_[index] || conns_[index]->generation != generation) continue;
    conns_[index]->awaiting_sync = false;
    pump(*conns_[index]);
  }
  sync_waking_.clear();
}

void Server::Impl::arm_rdma() {
  if (stopping_) return;
  if (!cm_poll_inflight_) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_poll_add(sqe, listener_->cm_fd(), POLLIN);
    io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kCmPoll, 0, 0));
    cm_poll_inflight_ = true;
  }
  if (!cq_poll_inflight_ && listener_->cq_fd() >= 0) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_poll_add(sqe, listener_->cq_fd(), POLLIN);
    io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kCqPoll, 0, 0));
    cq_poll_inflight_ = true;
  }
}

void Server::Impl::on_cm_events() {
  for (;;) {
    auto ev = listener_->next_event();
    if (!ev) {
      PBRICK_LOG_ERROR("rdma: %s", ev.error().message().c_str());
      break;
    }
    if (!*ev) break;
    const RdmaListener::Event& e = **ev;
    using Kind = RdmaListener::Event::Kind;
    if (e.kind == Kind::kConnectRequest) {
      admit_handshake();
      if (open_connections_ >= listener_->max_connections()) {
        PBRICK_LOG_WARN("refusing an RDMA connection: %u queue pairs open", listener_->max_connections());
        listener_->reject(e.id);
        continue;
      }
      uint32_t index = take_slot();
      uint32_t generation = next_generation_++ & 0xFFFFFF;
      auto rc = listener_->accept(e.id, generation, index);
      if (!rc) {
        PBRICK_LOG_WARN("refusing an RDMA connection: %s", rc.error().message().c_str());
        free_slots_.push_back(index);
        continue;
      }
      auto c = std::make_unique<Connection>();
      c->index = index;
      c->generation = generation;
      c->accepted_at = Clock::now();
      c->rdma = std::move(*rc);
      c->peer = c->rdma->peer();
      PBRICK_LOG_DEBUG("%s: connected", c->peer.c_str());
      conns_[index] = std::move(c);
      open_connections_++;
      pending_handshakes_++;
      continue;
    }
    uint32_t index = static_cast<uint32_t>(e.context);
    uint32_t generation = static_cast<uint32_t>(e.context >> 32);
    if (index >= conns_.size() || !conns_[index] || conns_[index]->generation != generation) continue;
    Connection& c = *conns_[index];
    if (e.kind == Kind::kDisconnected) {
      PBRICK_LOG_DEBUG("%s: %s", c.peer.c_str(), e.name.c_str());
      c.peer_eof = true;
      c.out_start = c.out_end = 0;  // nobody is left to read replies
      begin_close(c);
      maybe_close(c);
    }
  }
  arm_rdma();
}

void Server::Impl::on_cq() {
  Status st = listener_->poll_cq([this](const RdmaListener::Completion& wc) {
    if (wc.index >= conns_.size() || !conns_[wc.index] || conns_[wc.index]->generation != wc.generation) return;
    Connection& c = *conns_[wc.index];
    if (wc.status != 0) {
      // A flushed WR is the QP going down (we or the peer disconnected);
      // anything else breaks the connection.
      if (wc.status != ECONNRESET) PBRICK_LOG_WARN("%s: %s", c.peer.c_str(), wc.error.c_str());
      if (!wc.is_recv) c.rdma->on_send_done(wc.slot);
      c.peer_eof = true;
      c.out_start = c.out_end = 0;
      begin_close(c);
      c.send_inflight = c.rdma->sends_in_flight();
      pending_.push_back(wc.index);
      return;
    }
    if (wc.is_recv) {
      auto msg = c.rdma->received(wc.slot, wc.byte_len);
      if (c.in_cap - c.in_end < msg.size()) {
        grow_buffers(c);
        std::memmove(c.in.get(), c.in.get() + c.in_start, c.in_end - c.in_start);
        c.in_end -= c.in_start;
        c.in_start = 0;
      }
      if (c.in_cap - c.in_end < msg.size()) {
        PBRICK_LOG_WARN("%s: closing connection: %s", c.peer.c_str(),
                        c.state == Connection::State::kReady ? "more requests outstanding than allowed"
                                                              : "more than HELLO/AUTH before the handshake completed");
        begin_close(c);
      } else {
        std::memcpy(c.in.get() + c.in_end, msg.data(), msg.size());
        c.in_end += msg.size();
        Status rs = c.rdma->repost(wc.slot);
        if (!rs) {
          PBRICK_LOG_WARN("%s: %s", c.peer.c_str(), rs.error().message().c_str());
          begin_close(c);
        }
      }
    } else {
      c.rdma->on_send_done(wc.slot);
    }
    pending_.push_back(wc.index);
  });
  if (!st) PBRICK_LOG_ERROR("rdma: %s", st.error().message().c_str());
  // Each touched connection once, after the whole batch: frames are parsed
  // and replies sent per connection, not per completion.
  for (uint32_t index : pending_) {
    if (index < conns_.size() && conns_[index]) pump(*conns_[index]);
  }
  pending_.clear();
  arm_rdma();
}

void Server::Impl::begin_close(Connection& c) {
  if (c.closing) return;
  c.closing = true;
  // Wakes a pending recv (it completes with 0); output already queued still goes out.
  // An RDMA connection has no pending receive in the ring: maybe_close()
  // disconnects it once its replies are sent.
  if (!c.rdma) ::shutdown(c.fd.get(), SHUT_RD);
}

void Server::Impl::maybe_close(Connection& c) {
  if (!c.closing) return;
  if (!c.send_inflight && c.out_start != c.out_end && !stopping_) {
    flush_output(c);
    return;
  }
  if (!c.idle()) return;
  for (uint32_t rkey : c.rkeys) revoke(rkey);
  // Its unpersisted WRITEs are now covered by the next sync point of any connection.
  if (c.needs_sync > durable_through_) orphan_needs_sync_ = std::max(orphan_needs_sync_, c.needs_sync);
  if (c.rdma) c.rdma->disconnect();
  PBRICK_LOG_DEBUG("%s: connection closed (%zu mappings revoked)", c.peer.c_str(), c.rkeys.size());
  uint32_t index = c.index;
  if (c.counts_as_handshake) pending_handshakes_--;
  if (c.state == Connection::State::kReady) ready_connections_--;
  conns_[index].reset();
  free_slots_.push_back(index);
  open_connections_--;
  if (!stopping_) arm_accept();
}

uint32_t Server::Impl::take_slot() {
  if (!free_slots_.empty()) {
    uint32_t index = free_slots_.back();
    free_slots_.pop_back();
    return index;
  }
  conns_.emplace_back();
  return static_cast<uint32_t>(conns_.size() - 1);
}

void Server::Impl::on_accept(int res) {
  accept_inflight_ = false;
  if (res < 0) {
    if (!stopping_ && res != -EINVAL) {
      PBRICK_LOG_WARN("accept: %s", std::strerror(-res));
      // EMFILE and friends: don't spin; the tick re-arms.
      if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM) return;
    }
    if (!stopping_) arm_accept();
    return;
  }
  UniqueFd fd(res);
  if (stopping_) return;
  admit_handshake();
  // Connections that were evicted or refused are still closing; past this
  // many objects the brick stops accepting until they are gone.
  if (open_connections_ >= size_t{options_.max_connections} + 2 * size_t{options_.max_handshakes}) {
    PBRICK_LOG_WARN("refusing connection from %s: %zu connections open", peer_name(accept_addr_).c_str(),
                    open_connections_);
    arm_accept();
    return;
  }
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  add_stream_connection(std::move(fd), peer_name(accept_addr_));
  arm_accept();
}

void Server::Impl::add_stream_connection(UniqueFd fd, std::string peer) {
  uint32_t index = take_slot();
  auto c = std::make_unique<Connection>();
  c->fd = std::move(fd);
  c->index = index;
  c->generation = next_generation_++ & 0xFFFFFF;
  c->accepted_at = Clock::now();
  c->peer = std::move(peer);
  Connection& ref = *c;
  conns_[index] = std::move(c);
  open_connections_++;
  pending_handshakes_++;
  PBRICK_LOG_DEBUG("%s: connected", ref.peer.c_str());
  arm_recv(ref);
}

void Server::Impl::update_status() {
  StoreStats s = store_.stats();
  sd_notifyf(0, "STATUS=serving on %s: %zu connections, %llu/%llu blocks allocated, %llu mapped",
             Endpoint{options_.listen.host, port_}.to_string().c_str(), open_connections_,
             static_cast<unsigned long long>(s.allocated_blocks), static_cast<unsigned long long>(s.capacity_blocks),
             static_cast<unsigned long long>(s.mapped_blocks));
}

void Server::Impl::on_tick() {
  auto now = Clock::now();
  if (watchdog_usec_ != 0 &&
      now - last_watchdog_ >= std::chrono::microseconds(watchdog_usec_ / 2)) {
    sd_notify(0, "WATCHDOG=1");
    last_watchdog_ = now;
    update_status();
  }
  for (auto& c : conns_) {
    if (c && c->state != Connection::State::kReady && !c->closing &&
        now - c->accepted_at > std::chrono::milliseconds(options_.handshake_timeout_ms)) {
      PBRICK_LOG_WARN("%s: closing connection: no handshake within %u ms", c->peer.c_str(),
                      options_.handshake_timeout_ms);
      begin_close(*c);
      if (c->rdma) maybe_close(*c);
    }
  }
  if (!accept_inflight_) arm_accept();
  if (options_.tiering) options_.tiering->tick();  // tiering hook: background demotion step
}

void Server::Impl::handle_cqe(io_uring_cqe* cqe) {
  inflight_--;
  uint64_t ud = io_uring_cqe_get_data64(cqe);
  int res = cqe->res;
  OpKind kind = UserData::kind(ud);
  switch (kind) {
    case OpKind::kAccept:
      on_accept(res);
      return;
    case OpKind::kSignal:
      if (res == static_cast<int>(sizeof siginfo_)) {
        PBRICK_LOG_NOTICE("received %s, shutting down", strsignal(static_cast<int>(siginfo_.ssi_signo)));
        stopping_ = true;
      } else if (!stopping_) {
        arm_signal();
      }
      return;
    case OpKind::kStop:
      if (res == static_cast<int>(sizeof stop_buf_)) {
        PBRICK_LOG_NOTICE("stop requested, shutting down");
        stopping_ = true;
      }
      return;
    case OpKind::kTick:
      if (!stopping_) {
        on_tick();
        arm_tick();
      }
      return;
    case OpKind::kCancel:
      return;
    case OpKind::kCmPoll:
      cm_poll_inflight_ = false;
      if (!stopping_) on_cm_events();
      return;
    case OpKind::kCqPoll:
      cq_poll_inflight_ = false;
      if (!stopping_) on_cq();
      return;
    case OpKind::kFsync:
      on_sync_done(ud & kSyncNumberMask, res);
      return;
    case OpKind::kTierPoll:  // tiering hook
      tier_poll_inflight_ = false;
      if (!stopping_) {
        options_.tiering->on_event();
        arm_tier_poll();
      }
      return;
    case OpKind::kTierWake:  // tiering hook
      tier_wake_posted_ = false;
      on_tier_wake();
      return;
    case OpKind::kRecv:
    case OpKind::kSend:
      break;
  }
  uint32_t index = UserData::index(ud);
  if (index >= conns_.size() || !conns_[index] || conns_[index]->generation != UserData::generation(ud)) {
    PBRICK_LOG_ERROR("completion for a closed connection (slot %u)", index);
    return;
  }
  Connection& c = *conns_[index];
  if (kind == OpKind::kRecv) {
    c.recv_inflight = false;
    if (res <= 0) {
      if (res < 0) {
        if (res != -ECONNRESET) PBRICK_LOG_DEBUG("%s: recv: %s", c.peer.c_str(), std::strerror(-res));
        c.closing = true;
      }
      c.peer_eof = true;
    } else {
      c.in_end += static_cast<size_t>(res);
    }
  } else if (kind == OpKind::kSend) {
    c.send_inflight = false;
    if (res < 0) {
      PBRICK_LOG_DEBUG("%s: send: %s", c.peer.c_str(), std::strerror(-res));
      c.out_start = c.out_end = 0;
      begin_close(c);
    } else {
      c.out_start += static_cast<size_t>(res);
      if (c.out_start == c.out_end) c.out_start = c.out_end = 0;
    }
  }
  pump(c);
}

Status Server::Impl::run() {
  arm_signal();
  arm_tick();
  arm_accept();
  arm_tier_poll();  // tiering hook
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0) watchdog_usec_ = usec;
  last_watchdog_ = Clock::now();
  PBRICK_LOG_NOTICE("serving on %s (%s store, %s)", Endpoint{options_.listen.host, port_}.to_string().c_str(),
                    store_.region().is_pmem() ? "pmem" : "file",
                    options_.key ? "cluster key required" : "no authentication");
  sd_notify(0, "READY=1");
  update_status();
  if (watchdog_usec_ != 0) sd_notify(0, "WATCHDOG=1");

  bool shut = false;
  while (inflight_ > 0) {
    if (stopping_ && !shut) {
      shut = true;
      sd_notify(0, "STOPPING=1");
      // Wake every pending operation so the loop can drain: closed sockets
      // complete their recv/accept, the rest is cancelled.
      ::shutdown(listen_fd_.get(), SHUT_RDWR);
      for (auto& c : conns_) {
        if (c) {
          c->closing = true;
          if (!c->rdma) ::shutdown(c->fd.get(), SHUT_RDWR);
        }
      }
      io_uring_sqe* sqe = get_sqe();
      io_uring_prep_cancel64(sqe, UserData::pack(OpKind::kTick, 0, 0), 0);
      io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kCancel, 0, 0));
      sqe = get_sqe();
      io_uring_prep_cancel64(sqe, UserData::pack(OpKind::kSignal, 0, 0), 0);
      io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kCancel, 0, 0));
      sqe = get_sqe();
      io_uring_prep_cancel64(sqe, UserData::pack(OpKind::kStop, 0, 0), 0);
      io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kCancel, 0, 0));
      sqe = get_sqe();
      io_uring_prep_cancel64(sqe, UserData::pack(OpKind::kAccept, 0, 0), 0);
      io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kCancel, 0, 0));
      for (OpKind kind : {OpKind::kCmPoll, OpKind::kCqPoll, OpKind::kTierPoll}) {
        sqe = get_sqe();
        io_uring_prep_cancel64(sqe, UserData::pack(kind, 0, 0), 0);
        io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kCancel, 0, 0));
      }
    }
    int err = io_uring_submit_and_wait(&ring_, 1);
    if (err < 0 && err != -EINTR) return Error(-err, "io_uring_submit_and_wait");
    unsigned head;
    unsigned count = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      handle_cqe(cqe);
      count++;
    }
    io_uring_cq_advance(&ring_, count);
  }
  for (auto& c : conns_) {
    if (c) {
      for (uint32_t rkey : c->rkeys) revoke(rkey);
      c.reset();
    }
  }
  PBRICK_LOG_NOTICE("stopped");
  return Status::Ok();
}

// ---- Tiering hooks ---------------------------------------------------------------

Server::Impl::TierMap Server::Impl::tier_before_map(Connection& c, const proto::FrameHeader& h,
                                                    std::span<const uint8_t> payload) {
  auto req = proto::decode_map_request(payload);
  if (!req) return TierMap::kProceed;  // handle_map replies the error
  switch (options_.tiering->prepare_map(req->vaddr)) {
    case Tiering::MapReadiness::kReady:
      return TierMap::kProceed;
    case Tiering::MapReadiness::kWait:
      c.awaiting_sync = true;
      tier_waiters_.emplace_back(c.index, c.generation);
      return TierMap::kWait;
    case Tiering::MapReadiness::kNoFastSlot:
      break;
  }
  reply_error(c, h, Error(ENOBUFS, "map " + format_hex(req->vaddr) +
                                       ": the block is on the slow tier and every fast slot is mapped; "
                                       "unmap blocks and retry"));
  return TierMap::kReplied;
}

void Server::Impl::arm_tier_poll() {
  if (!options_.tiering || tier_poll_inflight_) return;
  tier_poll_inflight_ = true;
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_poll_add(sqe, options_.tiering->event_fd(), POLLIN);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kTierPoll, 0, 0));
}

void Server::Impl::post_tier_wake() {
  if (tier_wake_posted_ || tier_waiters_.empty()) return;
  tier_wake_posted_ = true;
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_nop(sqe);
  io_uring_sqe_set_data64(sqe, UserData::pack(OpKind::kTierWake, 0, 0));
}

void Server::Impl::on_tier_wake() {
  // Each waiter asks again (tier_before_map) and may wait again.
  tier_waking_.swap(tier_waiters_);
  for (auto [index, generation] : tier_waking_) {
    if (index >= conns_.size() || !conns_[index] || conns_[index]->generation != generation) continue;
    conns_[index]->awaiting_sync = false;
    pump(*conns_[index]);
  }
  tier_waking_.clear();
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() = default;

Result<std::unique_ptr<Server>> Server::Create(Store& store, const ServerOptions& options) {
  auto impl = std::make_unique<Impl>(store, options);
  PBRICK_TRY(impl->init());
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

uint16_t Server::port() const { return impl_->port(); }
Status Server::adopt(UniqueFd fd) { return impl_->adopt(std::move(fd)); }
Status Server::run() { return impl_->run(); }
void Server::stop() { impl_->stop(); }

}  // namespace pbrick
